//! What every whole-platform scenario shares: the admin token and a configuration on
//! the test's own broker and database.
#![allow(dead_code)]

use std::sync::Arc;

use regua::{Platform, Services};
use regua_platform::SystemClock;

use regua_platform::{Config, Secret};
use sqlx::PgPool;

pub const ADMIN: &str = "e2e-admin-token-0123456789";

/// The platform's configuration on `nats_url` and the database `#[sqlx::test]` created
/// for this test, with short waits so scenarios run quickly, and tenant administration
/// open with [`ADMIN`].
pub fn config(nats_url: &str, pool: &PgPool) -> Config {
    Config {
        admin_token: Some(Secret::new(ADMIN)),
        ..regua_testkit::service::config(nats_url, pool)
    }
}

/// A platform process in a runtime of its own, so a test can kill it outright or
/// drain it as SIGTERM does.
pub struct Running {
    rt: Option<tokio::runtime::Runtime>,
    drain: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::sync::oneshot::Receiver<bool>>,
}

impl Running {
    pub async fn start(config: &Config, services: Services) -> Running {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let config = config.clone();
        rt.spawn(async move {
            let platform = Platform::start(&config, Arc::new(SystemClock), services)
                .await
                .unwrap();
            ready_tx.send(()).unwrap();
            let _ = drain_rx.await;
            // What `regua` does on SIGTERM.
            let clean = platform.drain(&config).await;
            let _ = done_tx.send(clean);
        });
        ready_rx.await.unwrap();
        Running {
            rt: Some(rt),
            drain: Some(drain_tx),
            done: Some(done_rx),
        }
    }

    /// No drain: tasks stop mid-work, transactions are cut, acks never sent.
    pub fn kill(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// Stops fetching, finishes in-flight work, flushes; true when it finished in time.
    pub async fn terminate(mut self) -> bool {
        self.drain.take().unwrap().send(()).unwrap();
        let clean = self.done.take().unwrap().await.unwrap();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        clean
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
