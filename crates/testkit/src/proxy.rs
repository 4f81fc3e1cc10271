//! A TCP proxy a test can cut: a service is pointed at it instead of its server (say,
//! Postgres), and `cut` makes that server unreachable, at once and for every
//! connection, until `restore`. A real outage, as the service sees one, without
//! touching the server the other tests share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::fail;

/// A running proxy to one upstream address.
pub struct TcpProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Bumped on every cut: connections open at that moment are closed.
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free local port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| fail(&format!("proxy bind: {e}")));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| fail(&format!("proxy address: {e}")));
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let task = tokio::spawn(accept(
            listener,
            upstream,
            Arc::clone(&cut),
            generation.clone(),
        ));
        TcpProxy {
            addr,
            cut,
            generation,
            task,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
) {
    while let Ok((mut client, _)) = listener.accept().await {
        if cut.load(Ordering::SeqCst) {
            // Refused: the client sees its connection closed at once.
            drop(client);
            continue;
        }
        let mut cuts = generation.subscribe();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = cuts.changed() => {}
            }
        });
    }
}
