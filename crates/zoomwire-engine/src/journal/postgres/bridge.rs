//! The journal's own small tokio runtime, on which every PostgreSQL
//! connection lives and every query runs.
//!
//! The journal is called from three kinds of threads: the daemon's async
//! tasks, the sandbox's script threads (an effect's record, rule state),
//! and blocking readers (the admin page's history through
//! `spawn_blocking`, commands). Queries started on the caller's runtime
//! would tie the pool's connections to it, and a thread blocked waiting for
//! an answer could be the very thread that must drive the connection (a
//! `current_thread` runtime blocked in `StateStore::get`). On a runtime of
//! its own, an async caller awaits the query's task and a blocking caller
//! waits on a channel, and neither can starve the other.

use std::future::Future;

use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

use crate::engine::journal::JournalError;

/// Threads of the journal's runtime: queries are I/O, not computation.
const THREADS: usize = 2;

pub(crate) struct Bridge {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl Bridge {
    pub fn new() -> std::io::Result<Bridge> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(THREADS)
            .thread_name("zoomwire-postgres")
            .enable_all()
            .build()?;
        Ok(Bridge {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// Runs `query` on the journal's runtime and awaits its answer.
    pub async fn run<T, F>(&self, query: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, JournalError>> + Send + 'static,
    {
        self.handle.spawn(query).await.map_err(stopped)?
    }

    /// Runs `query` on the journal's runtime and blocks this thread until it
    /// answers. Never call it from the journal's own runtime.
    pub fn block<T, F>(&self, query: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, JournalError>> + Send + 'static,
    {
        self.wait_later(query)()
    }

    /// Starts `query` now; the returned function blocks until it answers.
    pub fn wait_later<T, F>(&self, query: F) -> impl FnOnce() -> Result<T, JournalError> + Send
    where
        T: Send + 'static,
        F: Future<Output = Result<T, JournalError>> + Send + 'static,
    {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = sender.send(query.await);
        });
        move || {
            receiver
                .recv()
                .map_err(|_| JournalError("the postgres journal stopped before answering".into()))?
        }
    }

    /// Starts a task on the journal's runtime.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }
}

impl Drop for Bridge {
    /// Without waiting: the journal may be dropped on an async thread, where
    /// waiting is not allowed. Queries still in flight are abandoned (a
    /// transaction not committed is rolled back by the server).
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn stopped(error: tokio::task::JoinError) -> JournalError {
    JournalError(format!("the postgres journal's task failed: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_callers_and_async_callers_both_get_answers() {
        let bridge = Bridge::new().unwrap();
        assert_eq!(bridge.block(async { Ok(2) }).unwrap(), 2);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let answer = runtime.block_on(async {
            // A current-thread caller that blocks still gets its answer:
            // the query runs on the journal's threads.
            let blocked = bridge.block(async { Ok(3) }).unwrap();
            let awaited = bridge.run(async { Ok(4) }).await.unwrap();
            blocked + awaited
        });
        assert_eq!(answer, 7);
    }

    #[tokio::test]
    async fn a_bridge_dropped_on_an_async_thread_does_not_panic() {
        let bridge = Bridge::new().unwrap();
        bridge.spawn(std::future::pending::<()>());
        drop(bridge);
    }
}
