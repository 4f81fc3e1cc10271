//! A lane: a small runtime on a thread of its own, for work whose latency matters more
//! than its throughput (stopping dunning when a payment lands).
//!
//! A busy service runtime (firing thousands of steps, a dispatcher with a hundred calls
//! in flight) queues every task behind the others, and polls its sockets only between
//! them: a message or a query result can wait there for tens of milliseconds. Work on
//! a lane runs on its own thread, which the operating system wakes at once because it
//! is mostly idle, and its sockets (a NATS connection made on the lane, a pool whose
//! connections are opened there) are polled by that thread. Keep lane work small: it
//! is one thread.

use std::future::Future;
use std::thread;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

use crate::PlatformError;

/// A single-threaded runtime on its own thread; stops when dropped.
#[derive(Debug)]
pub struct Lane {
    handle: Handle,
    /// Dropping it ends the thread's runtime (and the tasks still on it).
    _stop: oneshot::Sender<()>,
}

impl Lane {
    /// Starts a lane on a new thread named `name`.
    pub fn start(name: &str) -> Result<Lane, PlatformError> {
        let runtime = Builder::new_current_thread()
            .enable_all()
            .thread_name(name)
            .build()
            .map_err(|e| PlatformError::Task(format!("starting lane {name}: {e}")))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // Runs the lane's tasks until the Lane is dropped.
                let _ = runtime.block_on(stopped);
            })
            .map_err(|e| PlatformError::Task(format!("starting lane {name}: {e}")))?;
        Ok(Lane {
            handle,
            _stop: stop,
        })
    }

    /// Runs `fut` on the lane; the returned handle can be awaited from any runtime.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }

    /// Runs `fut` on the lane and waits for its result (a connection made there
    /// belongs to the lane).
    pub async fn run<F>(&self, fut: F) -> Result<F::Output, PlatformError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn(fut)
            .await
            .map_err(|e| PlatformError::Task(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_the_lane_thread() {
        let lane = Lane::start("regua-lane-test").unwrap();
        let name = lane
            .run(async { thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("regua-lane-test"));
        assert_ne!(thread::current().name(), Some("regua-lane-test"));
    }
}
