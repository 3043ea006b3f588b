//! The small tokio runtimes this crate runs its statements on, started on first use: a
//! caller's future only waits for them, so statements run the same from any runtime, or from
//! a plain thread (loading a generation).

use crate::error::{Error, Result};
use std::sync::OnceLock;

/// A one-thread runtime of this crate's own.
#[derive(Debug)]
pub(crate) struct Executor {
    name: &'static str,
    runtime: OnceLock<tokio::runtime::Runtime>,
}

/// PostgreSQL statements and the pools' connection tasks. Measured (`cargo xtask bench
/// referenced`, 2026-12-05): running them on the node's own runtime instead cut the
/// throughput by a fifth: a session's answer then waits behind the HTTP work queued on that
/// runtime before its next query goes out, and PostgreSQL idles; on a thread of their own,
/// the sessions are turned around as soon as their answers arrive.
pub(crate) static PG: Executor = Executor::new("apinode-pg");

/// DataFusion statements over bundled datasets: a long scan there never delays PostgreSQL.
#[cfg(feature = "datafusion")]
pub(crate) static SQL: Executor = Executor::new("apinode-sql");

impl Executor {
    const fn new(name: &'static str) -> Executor {
        Executor {
            name,
            runtime: OnceLock::new(),
        }
    }

    pub(crate) fn runtime(&self) -> Result<&tokio::runtime::Runtime> {
        if let Some(runtime) = self.runtime.get() {
            return Ok(runtime);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(self.name)
            .enable_all()
            .build()
            .map_err(|e| Error::Config(format!("cannot start the {} executor: {e}", self.name)))?;
        Ok(self.runtime.get_or_init(|| runtime))
    }

    /// Runs `work` here and waits for it (from any runtime, or none).
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T> {
        self.runtime()?
            .spawn(work)
            .await
            .map_err(|e| Error::Config(format!("a task of the {} executor failed: {e}", self.name)))
    }

    /// Runs `work` here and blocks the calling thread until it ends. Not from an
    /// asynchronous context: from a blocking thread or a plain one.
    pub(crate) fn block_on<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.runtime()?.spawn(async move {
            let _ = tx.send(work.await);
        });
        rx.recv()
            .map_err(|_| Error::Config(format!("the {} executor stopped", self.name)))
    }
}
