//! Ordered, graceful shutdown in two stages. First the *work* stage (consumers, HTTP)
//! stops taking new work and finishes what it has in hand; only then is the *flush*
//! stage (outbox relays) told to stop, so it publishes everything the work stage
//! committed, including its last batch, before the process exits.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The shutdown groups of a process: spawn through it, then [`Shutdown::drain`].
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    work: Stage,
    flush: Stage,
}

#[derive(Debug, Clone, Default)]
struct Stage {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Stage {
    async fn stop(&self, deadline: tokio::time::Instant) -> bool {
        self.token.cancel();
        self.tracker.close();
        tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_ok()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancelled when work should stop.
    pub fn token(&self) -> CancellationToken {
        self.work.token.clone()
    }

    /// Spawns work (a consumer, a server) that the drain waits for first.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.work.tracker.spawn(fut)
    }

    /// Cancelled only once all work has stopped.
    pub fn flush_token(&self) -> CancellationToken {
        self.flush.token.clone()
    }

    /// Spawns a flusher (an outbox relay) that outlives the work stage.
    pub fn spawn_flusher<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.flush.tracker.spawn(fut)
    }

    /// Stops work and waits for it, then stops the flushers and waits for them, all
    /// within `timeout`. Returns false when the timeout ran out first.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let work_done = self.work.stop(deadline).await;
        let flushed = self.flush.stop(deadline).await;
        work_done && flushed
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// The pause between retries of a failing loop: `first`, doubled after each failure up
/// to 5 s, back to `first` after a success.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    first: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration) -> Self {
        Backoff { first, next: first }
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps the current pause (doubling it for the next failure); false when `cancel`
    /// fired first.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let pause = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        tokio::select! {
            () = cancel.cancelled() => false,
            () = tokio::time::sleep(pause) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn flushers_stop_only_after_work_has_finished() {
        let shutdown = Shutdown::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (work, work_log) = (shutdown.token(), Arc::clone(&log));
        shutdown.spawn(async move {
            work.cancelled().await;
            // The batch in hand takes a while to commit.
            tokio::time::sleep(Duration::from_millis(50)).await;
            work_log.lock().unwrap().push("work committed");
        });
        let (flush, flush_log) = (shutdown.flush_token(), Arc::clone(&log));
        shutdown.spawn_flusher(async move {
            flush.cancelled().await;
            flush_log.lock().unwrap().push("flushed");
        });
        assert!(shutdown.drain(Duration::from_secs(5)).await);
        assert_eq!(*log.lock().unwrap(), ["work committed", "flushed"]);
    }

    #[tokio::test]
    async fn drain_reports_a_timeout() {
        let shutdown = Shutdown::new();
        shutdown.spawn(std::future::pending::<()>());
        assert!(!shutdown.drain(Duration::from_millis(50)).await);
    }
}
