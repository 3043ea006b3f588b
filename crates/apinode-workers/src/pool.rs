//! A pool of workers for one endpoint: warm-up, a bounded queue, per-call timeouts, replacement
//! of dead and hung workers, scaling between `min_workers` and `max_workers`, and drain.
//!
//! The state (idle workers, waiting calls, the worker count) sits behind one `std` mutex that is
//! never held across an `await`. A call takes an idle worker, or queues a oneshot sender and, when
//! the pool is below `max_workers`, starts a worker in the background; a worker coming free (a
//! finished call, a fresh start) goes to the oldest waiter first. Each exchange with a worker runs
//! in its own task, so a caller that gives up (a dropped future) never leaves a worker half-way
//! through a call: the task finishes it and gives the worker back.

use crate::error::{Error, Result};
use crate::predict::Predictions;
use crate::protocol::{self, Parsed};
use crate::scripts::Scripts;
use crate::spec::{PoolConfig, WorkerSpec};
use crate::worker::{self, Worker};
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tracing::Span;

/// A pool of worker processes running one [`WorkerSpec`]. Calls may come from many tasks at
/// once (`&self`); dropping the pool kills its workers.
#[derive(Debug)]
pub struct Pool {
    inner: Arc<Inner>,
}

/// A snapshot of a pool's occupancy, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Worker processes alive or starting (at most `max_workers`, plus any being retired).
    pub workers: usize,
    /// Workers waiting for a call.
    pub idle: usize,
    /// Calls waiting for a worker.
    pub waiting: usize,
    /// Calls accepted and not answered yet (running or waiting).
    pub calls: usize,
    /// Whether [`Pool::shutdown`] has begun.
    pub draining: bool,
}

type Waiter = oneshot::Sender<Result<Lease>>;

/// A worker handed to a waiting call. If the call was cancelled after the hand-over but before
/// it took the worker, dropping the lease gives the worker back instead of losing its slot.
#[derive(Debug)]
struct Lease {
    worker: Option<Worker>,
    pool: Weak<Inner>,
}

impl Lease {
    fn take(mut self) -> Worker {
        self.worker
            .take()
            .expect("a lease holds its worker until taken")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let (Some(worker), Some(pool)) = (self.worker.take(), self.pool.upgrade()) else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            pool.give_back(worker);
        }
    }
}

#[derive(Debug)]
struct Inner {
    spec: WorkerSpec,
    config: PoolConfig,
    scripts: Scripts,
    span: Span,
    state: Mutex<State>,
    /// The number of worker processes not yet reaped; the drain waits for zero.
    workers_tx: watch::Sender<usize>,
    /// Set when the drain's grace period is over: every exchange and start gives up.
    kill_tx: watch::Sender<bool>,
    next_id: AtomicU64,
    calls: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    /// Idle workers, the most recently used last (reused first, so the oldest ones age out).
    idle: Vec<(Worker, Instant)>,
    waiters: VecDeque<Waiter>,
    /// Workers starting, idle, busy or retiring: counted from spawn until reaped.
    workers: usize,
    /// Workers being started in the background; a waiting call starts another only when the
    /// waiting calls outnumber them.
    starting: usize,
    draining: bool,
}

impl Pool {
    /// Starts `max(min_workers, 1)` workers and returns once all have loaded the code, or fails
    /// with the first worker's error (a [`Error::LoadFailed`] naming the file for a
    /// `SyntaxError` or an `ImportError`). Must run inside a tokio runtime.
    pub async fn start(spec: WorkerSpec, mut config: PoolConfig) -> Result<Pool> {
        config.max_workers = config.max_workers.max(1);
        config.min_workers = config.min_workers.min(config.max_workers);
        let span = tracing::info_span!(
            "worker_pool",
            service = %config.tags.service,
            endpoint = %config.tags.endpoint,
            generation = %config.tags.generation,
            kind = spec.kind.label(),
        );
        let warm = config.min_workers.max(1);
        let inner = Arc::new(Inner {
            scripts: Scripts::install()?,
            spec,
            config,
            span,
            state: Mutex::new(State {
                workers: warm,
                ..State::default()
            }),
            workers_tx: watch::Sender::new(warm),
            kill_tx: watch::Sender::new(false),
            next_id: AtomicU64::new(1),
            calls: AtomicUsize::new(0),
        });
        let mut starting = tokio::task::JoinSet::new();
        for _ in 0..warm {
            let inner = inner.clone();
            starting.spawn(async move { inner.start_worker().await });
        }
        let mut failure = None;
        while let Some(started) = starting.join_next().await {
            match started.expect("a worker start task panicked") {
                Ok(worker) => inner.lock().idle.push((worker, Instant::now())),
                Err(e) => {
                    // Not `worker_reaped`: a pool that fails to start starts no replacement.
                    inner.lock().workers -= 1;
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            // Dropping the pool kills the workers that did start.
            return Err(e);
        }
        tracing::info!(parent: &inner.span, workers = warm, "worker pool ready");
        if let Some(idle_timeout) = inner.config.idle_timeout {
            tokio::spawn(retire_idle_workers(Arc::downgrade(&inner), idle_timeout));
        }
        Ok(Pool { inner })
    }

    /// Calls the function with `args` (a JSON object: its keys become keyword / named
    /// arguments) and returns the function's return value as JSON text.
    pub async fn run<A: Serialize + ?Sized>(&self, args: &A) -> Result<Box<RawValue>> {
        if self.inner.spec.kind.is_predictor() {
            return Err(self.wrong_call("run"));
        }
        let frame = protocol::frame("args", args, b'{')?;
        self.inner.call(frame, protocol::parse_run).await
    }

    /// Scores `records` (each a JSON object of features) as ONE batch: one DataFrame for a
    /// Python predictor, one data.frame for R. The answer has one row per record, in order.
    pub async fn predict<R: Serialize>(&self, records: &[R]) -> Result<Predictions> {
        if !self.inner.spec.kind.is_predictor() {
            return Err(self.wrong_call("predict"));
        }
        let rows = records.len();
        let frame = protocol::frame("records", records, b'[')?;
        self.inner
            .call(frame, move |bytes| protocol::parse_predict(bytes, rows))
            .await
    }

    /// Stops taking calls, lets the accepted ones (running or queued) finish, then ends the
    /// workers. After [`PoolConfig::shutdown_grace`] whatever still runs is killed and its calls
    /// fail with [`Error::ShuttingDown`]. Returns when every worker process has been reaped.
    /// Calling it again waits for the same end.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        let idle = {
            let mut state = inner.lock();
            state.draining = true;
            std::mem::take(&mut state.idle)
        };
        if !idle.is_empty() {
            tracing::info!(parent: &inner.span, "draining the worker pool");
        }
        for (worker, _) in idle {
            inner.clone().retire(worker);
        }
        let mut workers = inner.workers_tx.subscribe();
        let grace = inner.config.shutdown_grace;
        if tokio::time::timeout(grace, workers.wait_for(|&n| n == 0))
            .await
            .is_err()
        {
            tracing::warn!(parent: &inner.span, grace_ms = grace.as_millis() as u64,
                "calls still running after the shutdown grace period: killing their workers");
            inner.kill_tx.send_replace(true);
            let waiters = std::mem::take(&mut inner.lock().waiters);
            for waiter in waiters {
                let _ = waiter.send(Err(Error::ShuttingDown));
            }
            let _ = workers.wait_for(|&n| n == 0).await;
        }
    }

    pub fn stats(&self) -> PoolStats {
        let state = self.inner.lock();
        PoolStats {
            workers: state.workers,
            idle: state.idle.len(),
            waiting: state.waiters.iter().filter(|w| !w.is_closed()).count(),
            calls: self.inner.calls.load(Ordering::Relaxed),
            draining: state.draining,
        }
    }

    pub fn spec(&self) -> &WorkerSpec {
        &self.inner.spec
    }

    fn wrong_call(&self, call: &str) -> Error {
        Error::InvalidCall {
            detail: format!("`{call}` on a {} pool", self.inner.spec.kind.label()),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; recover the state rather than cascade.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn start_worker(&self) -> Result<Worker> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let start = Worker::start(
            &self.spec,
            &self.scripts,
            id,
            &self.span,
            self.config.start_timeout,
        );
        let mut killed = self.kill_tx.subscribe();
        tokio::select! {
            started = start => started,
            () = until_killed(&mut killed) => Err(Error::ShuttingDown),
        }
    }

    /// One call: get a worker (idle, or queue for one), exchange in a task of its own.
    async fn call<T, F>(self: &Arc<Self>, frame: Vec<u8>, parse: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&[u8]) -> Parsed<T> + Send + 'static,
    {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let _counted = Counted(&self.calls);
        let worker = match self.acquire()? {
            Acquired::Idle(worker) => worker,
            Acquired::Queued(rx) => rx.await.map_err(|_| Error::ShuttingDown)??.take(),
        };
        let inner = self.clone();
        tokio::spawn(async move { inner.exchange(worker, frame, parse).await })
            .await
            .unwrap_or_else(|e| {
                Err(Error::Protocol {
                    detail: format!("the call's task failed: {e}"),
                })
            })
    }

    fn acquire(self: &Arc<Self>) -> Result<Acquired> {
        let mut state = self.lock();
        if state.draining {
            return Err(Error::ShuttingDown);
        }
        if let Some((worker, _)) = state.idle.pop() {
            return Ok(Acquired::Idle(worker));
        }
        state.waiters.retain(|w| !w.is_closed());
        if state.waiters.len() >= self.config.queue_capacity {
            return Err(Error::QueueFull {
                capacity: self.config.queue_capacity,
            });
        }
        let (tx, rx) = oneshot::channel();
        state.waiters.push_back(tx);
        // Scale up: this call waits for whichever comes first, a new worker or a busy one.
        if state.workers < self.config.max_workers && state.waiters.len() > state.starting {
            self.spawn_replacement(&mut state);
        }
        Ok(Acquired::Queued(rx))
    }

    async fn exchange<T, F>(
        self: Arc<Self>,
        mut worker: Worker,
        frame: Vec<u8>,
        parse: F,
    ) -> Result<T>
    where
        F: FnOnce(&[u8]) -> Parsed<T>,
    {
        let timeout = self.config.call_timeout;
        let mut killed = self.kill_tx.subscribe();
        let outcome = tokio::select! {
            reply = tokio::time::timeout(timeout, worker.call(&frame)) => match reply {
                Ok(Ok(bytes)) => Outcome::Reply(parse(bytes)),
                Ok(Err(io)) if io.kind() == std::io::ErrorKind::InvalidData => {
                    Outcome::Reply(Parsed::Broken(io.to_string()))
                }
                Ok(Err(_eof_or_broken_pipe)) => Outcome::Died,
                Err(_elapsed) => Outcome::TimedOut,
            },
            () = until_killed(&mut killed) => Outcome::Killed,
        };
        match outcome {
            Outcome::Reply(Parsed::Answer(answer)) => {
                self.give_back(worker);
                Ok(answer)
            }
            Outcome::Reply(Parsed::UserError(error)) => {
                if let Error::UserCode {
                    exception,
                    message,
                    traceback,
                    ..
                } = &error
                {
                    tracing::info!(parent: &self.span, worker = worker.id, %exception, %message,
                        "the user code raised:\n{traceback}");
                }
                self.give_back(worker);
                Err(error)
            }
            Outcome::Reply(Parsed::Broken(detail)) => {
                tracing::error!(parent: &self.span, worker = worker.id, %detail,
                    "worker broke the protocol; replacing it");
                self.discard(worker, "protocol violation").await;
                Err(Error::Protocol { detail })
            }
            Outcome::Died => {
                let id = worker.id;
                let (status, stderr) = worker.reap().await;
                let error = worker::died(status, stderr);
                tracing::warn!(parent: &self.span, worker = id, "worker died during a call: {error}");
                self.worker_reaped();
                Err(error)
            }
            Outcome::TimedOut => {
                tracing::warn!(parent: &self.span, worker = worker.id,
                    timeout_ms = timeout.as_millis() as u64, "call timed out; killing its worker");
                self.discard(worker, "call timeout").await;
                Err(Error::Timeout { after: timeout })
            }
            Outcome::Killed => {
                self.discard(worker, "the shutdown grace period is over")
                    .await;
                Err(Error::ShuttingDown)
            }
        }
    }

    /// A worker came free: to the oldest waiting call, else idle (or retired when draining).
    fn give_back(self: &Arc<Self>, mut worker: Worker) {
        let mut state = self.lock();
        while let Some(waiter) = state.waiters.pop_front() {
            let lease = Lease {
                worker: Some(worker),
                pool: Arc::downgrade(self),
            };
            match waiter.send(Ok(lease)) {
                Ok(()) => return,
                Err(Ok(back)) => worker = back.take(),
                Err(Err(_)) => unreachable!("a lease was sent"),
            }
        }
        if state.draining {
            drop(state);
            self.clone().retire(worker);
        } else {
            state.idle.push((worker, Instant::now()));
        }
    }

    /// Kills a worker that cannot be trusted any more, reaps it and starts a replacement.
    async fn discard(self: &Arc<Self>, mut worker: Worker, why: &str) {
        tracing::debug!(parent: &self.span, worker = worker.id, why, "killing worker");
        worker.kill();
        let _ = worker.reap().await;
        self.worker_reaped();
    }

    /// Ends an idle worker in the background; it counts until reaped.
    fn retire(self: Arc<Self>, worker: Worker) {
        tokio::spawn(async move {
            worker.retire(self.config.shutdown_grace).await;
            self.worker_reaped();
        });
    }

    /// A worker process is gone. Start another if the pool is below `min_workers` or calls
    /// are waiting; tell the drain when the last one has gone.
    fn worker_reaped(self: &Arc<Self>) {
        let mut state = self.lock();
        state.workers -= 1;
        self.workers_tx.send_replace(state.workers);
        state.waiters.retain(|w| !w.is_closed());
        let below_min = !state.draining && state.workers < self.config.min_workers;
        let calls_unserved =
            state.waiters.len() > state.starting && state.workers < self.config.max_workers;
        if (below_min || calls_unserved) && !*self.kill_tx.borrow() {
            self.spawn_replacement(&mut state);
        }
    }

    /// Starts one worker in the background (the caller has checked the bounds). A start that
    /// fails is answered to the oldest waiting call, or to all of them when no worker is left.
    fn spawn_replacement(self: &Arc<Self>, state: &mut State) {
        state.workers += 1;
        state.starting += 1;
        self.workers_tx.send_replace(state.workers);
        let inner = self.clone();
        tokio::spawn(async move {
            let started = inner.start_worker().await;
            inner.lock().starting -= 1;
            match started {
                Ok(worker) => inner.give_back(worker),
                Err(error) => {
                    tracing::error!(parent: &inner.span, "could not start a worker: {error}");
                    let mut state = inner.lock();
                    state.workers -= 1;
                    inner.workers_tx.send_replace(state.workers);
                    let first = state.waiters.pop_front();
                    let rest = if state.workers == 0 {
                        std::mem::take(&mut state.waiters)
                    } else {
                        VecDeque::new()
                    };
                    drop(state);
                    let summary = error.to_string();
                    if let Some(waiter) = first {
                        let _ = waiter.send(Err(error));
                    }
                    for waiter in rest {
                        let _ = waiter.send(Err(Error::StartFailed {
                            reason: summary.clone(),
                            stderr: String::new(),
                        }));
                    }
                }
            }
        });
    }
}

/// Decrements a counter when dropped (a call answered, failed or cancelled).
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How an exchange with a worker ended.
enum Outcome<T> {
    Reply(Parsed<T>),
    /// EOF or a broken pipe: the process is gone (or going).
    Died,
    TimedOut,
    /// The drain's grace period ended during the call.
    Killed,
}

/// Resolves once the pool's kill switch is set (never, if the pool goes away first).
async fn until_killed(killed: &mut watch::Receiver<bool>) {
    if killed.wait_for(|&k| k).await.is_err() {
        std::future::pending::<()>().await;
    }
}

// Lives for one `match` on the call path; boxing the worker would cost an allocation per call.
#[allow(clippy::large_enum_variant)]
enum Acquired {
    Idle(Worker),
    Queued(oneshot::Receiver<Result<Lease>>),
}

/// Stops workers above `min_workers` that have been idle for `idle_timeout`. Ends with the pool.
async fn retire_idle_workers(pool: Weak<Inner>, idle_timeout: Duration) {
    let period = (idle_timeout / 2).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = pool.upgrade() else { return };
        let expired = {
            let mut state = inner.lock();
            if state.draining {
                return;
            }
            let surplus = state.workers.saturating_sub(inner.config.min_workers);
            let old = state
                .idle
                .iter()
                .take(surplus)
                .take_while(|(_, since)| since.elapsed() >= idle_timeout)
                .count();
            state
                .idle
                .drain(..old)
                .map(|(worker, _)| worker)
                .collect::<Vec<_>>()
        };
        if !expired.is_empty() {
            tracing::debug!(parent: &inner.span, count = expired.len(), "stopping idle workers");
        }
        for worker in expired {
            inner.clone().retire(worker);
        }
    }
}
