//! The spool: one open segment file per partition, records appended to it, segments sealed
//! by size or age and handed to the uploader.
//!
//! `write` and `async` records are group-committed without a thread of the log's own: the
//! caller serializes its record and appends it to the pending batch. The batch's first
//! `write` record spawns the flush on the caller's runtime, which yields once (so the records
//! of every query answered in the same scheduler pass join the batch), then writes the batch
//! with one `write` per segment and wakes the batch's `write` waiters. A batch of `async`
//! records only is flushed at the end of its window (`async_window`, 5 ms by default) or once
//! it holds `async_batch_bytes` (a MiB by default), whichever comes first, on the runtime's
//! blocking pool: nobody waits for it, larger batches make fewer, cheaper writes, and a write
//! the kernel holds up does not stall the runtime. Segments a flush fills are sealed on the
//! blocking pool too. `fsync` records are serialized by the caller too and queued to a writer
//! thread, which group-commits them (one `write` per segment per batch, one `fsync` per batch)
//! away from the runtime's workers; it also seals segments that grew old.
//!
//! Files in the spool directory: `<partition>~<segment>.open` (being written) and
//! `<partition>~<segment>.jsonl` (sealed, waiting for upload). Only the segments' owner
//! ([`Segments`], behind its lock) touches `.open` files; only the uploader deletes `.jsonl`
//! files.

use crate::direct;
use crate::error::{Error, Result};
use crate::record::{AuditRecord, Partition, RecordKey, RecordLine};
use crate::store::LogStore;
use crate::upload::Uploader;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub(crate) const OPEN: &str = "open";
pub(crate) const SEALED: &str = "jsonl";

/// How durable a record is when [`AuditLog::log`]'s [`Logged`] resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// At once: a crash loses the records of the last batch window
    /// ([`AuditConfig::async_window`], 5 ms by default).
    Async,
    /// Once written to the spool file, with the other records of the same instant: a killed
    /// process loses nothing (the kernel has the bytes).
    #[default]
    Write,
    /// Once the spool file is fsynced: a machine crash loses nothing.
    Fsync,
}

/// What to do with a record when the spool holds its cap already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// Refuse it ([`Error::SpoolFull`]): the query is answered 503, nothing is lost silently.
    #[default]
    Reject,
    /// Drop it and count it ([`AuditMetrics::dropped`]).
    Drop,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub spool_dir: PathBuf,
    /// Names this node's segments (`<node>-<seq>.jsonl`), so nodes sharing a store never
    /// overwrite each other.
    pub node_id: String,
    /// A segment is sealed (and uploaded) once it holds this many bytes...
    pub segment_max_bytes: u64,
    /// ... or once it is this old.
    pub segment_max_age: Duration,
    /// The most bytes the spool may hold (open and sealed segments).
    pub spool_cap_bytes: u64,
    pub on_full: FullPolicy,
    /// Records waiting for the writer; beyond it, `log` treats the spool as full.
    pub queue_capacity: usize,
    /// How long `async` records wait for their batch's `write` at most: the window a crash
    /// of the node may lose. Longer windows make larger batches (fewer, cheaper writes).
    pub async_window: Duration,
    /// An `async` batch this large is written at once, without waiting for the end of its
    /// window.
    pub async_batch_bytes: usize,
    /// Writes segments around the page cache (`O_DIRECT`, in whole blocks): a fraction of the
    /// kernel's cost per byte, but each write waits for the disk, so it suits logs whose writes
    /// are made off the request path (`async` batches on the blocking pool, `fsync` batches on
    /// the writer thread), not `write` batches, which run on the caller's runtime. A spool
    /// whose file system refuses direct writes is written through the page cache (warned once).
    pub direct_writes: bool,
}

impl AuditConfig {
    pub fn new(spool_dir: impl Into<PathBuf>, node_id: impl Into<String>) -> AuditConfig {
        AuditConfig {
            spool_dir: spool_dir.into(),
            node_id: node_id.into(),
            segment_max_bytes: 8 << 20,
            segment_max_age: Duration::from_secs(60),
            spool_cap_bytes: 1 << 30,
            on_full: FullPolicy::Reject,
            queue_capacity: 65_536,
            async_window: Duration::from_millis(5),
            async_batch_bytes: 1 << 20,
            direct_writes: false,
        }
    }
}

/// Counters of the log's life, for the node's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuditMetrics {
    /// Records accepted by `log`.
    pub queued: u64,
    /// Records written to the spool.
    pub written: u64,
    /// Records in segments uploaded to the store.
    pub uploaded: u64,
    /// Records dropped by the `drop` policy.
    pub dropped: u64,
    /// Records refused by the `reject` policy.
    pub rejected: u64,
    /// Bytes in the spool now.
    pub spool_bytes: u64,
    /// Upload attempts that failed (the store down or refusing).
    pub upload_failures: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) queued: AtomicU64,
    pub(crate) written: AtomicU64,
    pub(crate) uploaded: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) spool_bytes: AtomicU64,
    pub(crate) upload_failures: AtomicU64,
}

enum Job {
    /// An `fsync` record, serialized by the caller.
    Record {
        partition: Partition,
        line: Vec<u8>,
        done: oneshot::Sender<Result<()>>,
    },
    /// Seal every open segment and answer when they are sealed (shutdown, tests).
    SealAll(oneshot::Sender<()>),
}

/// The audit log of a node. Cheap to share behind an `Arc`; dropping it stops the writer
/// after what is queued (use [`AuditLog::close`] to also wait for the uploads).
#[derive(Debug)]
pub struct AuditLog {
    jobs: Mutex<Option<SyncSender<Job>>>,
    /// Set by [`AuditLog::close`] (with `jobs` taken): read without the queue's lock by every
    /// `write` and `async` record.
    closed: AtomicBool,
    /// `write` and `async` records not yet in their segment files.
    pending: Arc<Mutex<Pending>>,
    sealing: Arc<Sealing>,
    segments: Arc<Mutex<Segments>>,
    counters: Arc<Counters>,
    config: AuditConfig,
    uploader: Uploader,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Resolves when a record is as durable as asked; an error means it may not be.
#[derive(Debug)]
#[must_use = "the record is durable only once this resolves"]
pub struct Logged {
    state: LoggedState,
}

#[derive(Debug)]
enum LoggedState {
    Ready(Option<Result<()>>),
    Waiting(oneshot::Receiver<Result<()>>),
    /// A `write` record: resolves with its batch's outcome, once flushed.
    Flushing(Arc<Flushed>),
}

/// `write` waiters a batch has room for at first (at 100k queries/s, a batch holds about 13).
const WAITERS_PER_BATCH: usize = 32;

/// How a batch's flush ended, told to its `write` waiters: no future boxed per record, one
/// shared state per batch.
#[derive(Debug, Default)]
struct Flushed {
    state: Mutex<FlushState>,
}

#[derive(Debug, Default)]
struct FlushState {
    /// `None` until the flush ended: `Some(Ok)` written, `Some(Err(message))` not.
    outcome: Option<std::result::Result<(), Option<String>>>,
    waiters: Vec<std::task::Waker>,
}

impl Flushed {
    /// Tells the waiters; an error message of `None` means the batch was dropped unflushed.
    fn finish(&self, outcome: std::result::Result<(), Option<String>>) {
        let waiters = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.outcome.get_or_insert(outcome);
            std::mem::take(&mut state.waiters)
        };
        for waker in waiters {
            waker.wake();
        }
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &state.outcome {
            Some(Ok(())) => Poll::Ready(Ok(())),
            Some(Err(Some(message))) => Poll::Ready(Err(Error::io(
                "audit spool",
                std::io::Error::other(message.clone()),
            ))),
            Some(Err(None)) => Poll::Ready(Err(Error::Closed)),
            None => {
                if !state.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    if state.waiters.capacity() == 0 {
                        // Room for a busy batch's waiters at once: grown one by one, the
                        // list was reallocated four or five times per batch.
                        state.waiters.reserve(WAITERS_PER_BATCH);
                    }
                    state.waiters.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl Logged {
    /// The outcome, when it is already known (an `async` record, or one refused at once):
    /// taken without polling the future (an `async` query's state machine for nothing: 4% of
    /// the log's instructions per query). `None` when it is still to come; the future then
    /// resolves as usual.
    pub fn settled(&mut self) -> Option<Result<()>> {
        match &mut self.state {
            LoggedState::Ready(result) => Some(result.take().unwrap_or(Ok(()))),
            LoggedState::Waiting(_) | LoggedState::Flushing(_) => None,
        }
    }
}

impl Future for Logged {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match &mut self.state {
            LoggedState::Ready(result) => Poll::Ready(result.take().unwrap_or(Ok(()))),
            LoggedState::Waiting(receiver) => Pin::new(receiver)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(Error::Closed))),
            LoggedState::Flushing(flushed) => flushed.poll(cx),
        }
    }
}

/// The `write` and `async` records of the next flush, and the buffers of earlier batches,
/// kept for the next ones.
#[derive(Debug, Default)]
struct Pending {
    batch: Option<PendingBatch>,
    spare: Vec<Vec<u8>>,
}

/// The lines of a batch by segment, and who waits for its flush.
#[derive(Debug)]
struct PendingBatch {
    /// Each partition's lines, and how many.
    lines: Vec<(Partition, Vec<u8>, u64)>,
    /// The bytes of its lines.
    bytes: usize,
    /// Whether a flush that does not wait for the `async` window is scheduled.
    soon: bool,
    done: Arc<Flushed>,
}

/// When and where a pending batch is written.
enum Flush {
    /// On the caller's runtime, once the other queries of this scheduler pass joined it.
    AfterThisPass,
    /// On the runtime's blocking pool, after the `async` window (or at once).
    Blocking(Option<Duration>),
}

impl Drop for PendingBatch {
    /// A batch dropped unflushed (its runtime shut down first) fails its waiters.
    fn drop(&mut self) {
        self.done.finish(Err(None));
    }
}

/// Buffers kept for the next batches at most (a batch rarely has more than one partition).
const SPARE_BUFFERS: usize = 4;

/// Seals still running on the blocking pool, waited for by [`AuditLog::flush`].
type Sealing = Mutex<Vec<tokio::task::JoinHandle<()>>>;

/// Writes the pending batch, if any, into its segments (one `write` per segment), tells the
/// waiters, and seals the segments that grew full (see [`seal_away`]). The segments' lock is
/// taken before the batch, so batches reach the files in the order they were cut.
fn flush_pending(pending: &Mutex<Pending>, segments: &Mutex<Segments>, sealing: &Sealing) {
    let mut owner = lock(segments);
    let Some(mut batch) = pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .batch
        .take()
    else {
        return;
    };
    let mut to_seal = Vec::new();
    let mut outcome = Ok(());
    for (partition, bytes, records) in &batch.lines {
        match owner.append(partition, bytes, *records) {
            Ok(full) => to_seal.extend(full),
            Err(e) => {
                tracing::error!("audit records lost from the spool: {e}");
                outcome = Err(Some(e.to_string()));
            }
        }
    }
    let uploader = owner.uploader.clone();
    drop(owner);
    batch.done.finish(outcome);
    let buffers = std::mem::take(&mut batch.lines);
    {
        let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
        for (_, mut bytes, _) in buffers {
            if pending.spare.len() < SPARE_BUFFERS {
                bytes.clear();
                pending.spare.push(bytes);
            }
        }
    }
    seal_away(to_seal, uploader, sealing);
}

/// Seals full segments off the caller's thread when it is a runtime's: sealing fsyncs the
/// segment (8 MiB by default: tens of milliseconds), which on a runtime worker stalls every
/// query it serves. Without a runtime, here.
fn seal_away(segments: Vec<Segment>, uploader: Uploader, sealing: &Sealing) {
    if segments.is_empty() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        for segment in segments {
            seal(segment, &uploader);
        }
        return;
    };
    let handle = runtime.spawn_blocking(move || {
        for segment in segments {
            seal(segment, &uploader);
        }
    });
    let mut sealing = sealing.lock().unwrap_or_else(|p| p.into_inner());
    sealing.retain(|h| !h.is_finished());
    sealing.push(handle);
}

impl AuditLog {
    /// Opens the spool (creating it), recovers what an earlier run left (open segments are cut
    /// to their last whole line and sealed), and starts the writer thread and the uploader
    /// (on the current tokio runtime), which uploads leftover segments first.
    pub async fn open(config: AuditConfig, store: impl Into<LogStore>) -> Result<AuditLog> {
        std::fs::create_dir_all(&config.spool_dir).map_err(|e| Error::io(&config.spool_dir, e))?;
        let counters = Arc::new(Counters::default());
        let spool_bytes = recover(&config.spool_dir)?;
        counters.spool_bytes.store(spool_bytes, Ordering::Relaxed);
        let uploader = Uploader::start(config.spool_dir.clone(), store.into(), counters.clone());
        let (tx, rx) = std::sync::mpsc::sync_channel(config.queue_capacity);
        let segments = Arc::new(Mutex::new(Segments {
            config: config.clone(),
            counters: counters.clone(),
            open: HashMap::new(),
            last_segment: 0,
            uploader: uploader.clone(),
            direct_buffer: None,
            direct_refused: false,
        }));
        let writer = Writer {
            segments: segments.clone(),
            tick: config.segment_max_age.min(Duration::from_secs(1)),
        };
        let thread = std::thread::Builder::new()
            .name("apinode-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::io(&config.spool_dir, e))?;
        Ok(AuditLog {
            jobs: Mutex::new(Some(tx)),
            closed: AtomicBool::new(false),
            pending: Arc::new(Mutex::new(Pending::default())),
            sealing: Arc::default(),
            segments,
            counters,
            config,
            uploader,
            writer: Mutex::new(Some(thread)),
        })
    }

    /// Writes a record into its line now and queues the line; never blocks, and keeps nothing
    /// of `record`. The answer resolves when the record is as durable as `durability` asks.
    /// With the spool at its cap, or the queue full, the record is refused
    /// ([`Error::SpoolFull`]) or dropped, as the config says.
    pub fn log(&self, record: &AuditRecord<'_>, durability: Durability) -> Logged {
        self.log_with(record.key(), durability, |line| record.write_to(line))
    }

    /// As [`AuditLog::log`], for a record whose line `write` writes field by field from the
    /// caller's state ([`RecordLine`]): straight into the pending batch for `write` and
    /// `async`. `write` is not called when the record is refused or dropped. Should it panic,
    /// the line is taken out of the batch again.
    pub fn log_with(
        &self,
        key: RecordKey<'_>,
        durability: Durability,
        write: impl FnOnce(RecordLine<'_>),
    ) -> Logged {
        let ready = |result| Logged {
            state: LoggedState::Ready(Some(result)),
        };
        let used = self.counters.spool_bytes.load(Ordering::Relaxed);
        if used >= self.config.spool_cap_bytes {
            return ready(self.full(used));
        }
        if durability != Durability::Fsync {
            return self.batch(key, durability, write);
        }
        let (tx, rx) = oneshot::channel();
        let mut line = Vec::with_capacity(512);
        write(RecordLine::new(&mut line));
        let job = Job::Record {
            partition: key.partition(),
            line,
            done: tx,
        };
        let sent = match &*self.jobs.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(jobs) => jobs.try_send(job),
            None => return ready(Err(Error::Closed)),
        };
        match sent {
            Ok(()) => {
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
                Logged {
                    state: LoggedState::Waiting(rx),
                }
            }
            Err(TrySendError::Full(_)) => ready(self.full(used)),
            Err(TrySendError::Disconnected(_)) => ready(Err(Error::Closed)),
        }
    }

    /// Serializes a `write` or `async` record straight into the pending batch, and schedules
    /// the batch's flush on this thread's runtime (without one, it is flushed at once): after
    /// this scheduler pass for a `write` record, whose answer waits for it; at the end of the
    /// `async` window for a batch of `async` records only.
    fn batch(
        &self,
        key: RecordKey<'_>,
        durability: Durability,
        write: impl FnOnce(RecordLine<'_>),
    ) -> Logged {
        let ready = |result| Logged {
            state: LoggedState::Ready(Some(result)),
        };
        if self.closed.load(Ordering::Acquire) {
            return ready(Err(Error::Closed));
        }
        let (waiter, schedule) = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let Pending { batch, spare } = &mut *pending;
            let first = batch.is_none();
            let batch = batch.get_or_insert_with(|| PendingBatch {
                lines: Vec::with_capacity(1),
                bytes: 0,
                soon: false,
                done: Arc::default(),
            });
            // A batch holds one or two partitions: a scan beats hashing the service name.
            let at = match batch.lines.iter().position(|(p, ..)| key.belongs_to(p)) {
                Some(at) => at,
                None => {
                    let buffer = spare.pop().unwrap_or_else(|| Vec::with_capacity(16 << 10));
                    batch.lines.push((key.partition(), buffer, 0));
                    batch.lines.len() - 1
                }
            };
            let (_, bytes, records) = &mut batch.lines[at];
            let before = bytes.len();
            // A line cut short would break its segment: a panic takes it out again (the lock,
            // poisoned, is taken over by the next caller).
            let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                write(RecordLine::new(bytes))
            }));
            if let Err(panic) = written {
                bytes.truncate(before);
                drop(pending);
                std::panic::resume_unwind(panic);
            }
            *records += 1;
            batch.bytes += bytes.len() - before;
            let waiter = (durability == Durability::Write).then(|| batch.done.clone());
            // A `write` record's answer waits for the flush: it comes after this scheduler
            // pass, on this runtime. Nobody waits for an `async` batch: it is written at the end
            // of its window, or at once when large, on the blocking pool, so that a slow write
            // (the page cache throttled, a page under writeback) never stalls the runtime.
            let schedule = if batch.soon {
                None
            } else if durability == Durability::Write {
                batch.soon = true;
                Some(Flush::AfterThisPass)
            } else if batch.bytes >= self.config.async_batch_bytes {
                batch.soon = true;
                Some(Flush::Blocking(None))
            } else if first {
                Some(Flush::Blocking(Some(self.config.async_window)))
            } else {
                None
            };
            (waiter, schedule)
        };
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        if let Some(flush) = schedule {
            let pending = self.pending.clone();
            let (segments, sealing) = (self.segments.clone(), self.sealing.clone());
            let flush_now = move || flush_pending(&pending, &segments, &sealing);
            match (tokio::runtime::Handle::try_current(), flush) {
                (Ok(runtime), Flush::AfterThisPass) => {
                    runtime.spawn(async move {
                        // The other queries of this scheduler pass add their records first.
                        tokio::task::yield_now().await;
                        flush_now();
                    });
                }
                (Ok(runtime), Flush::Blocking(None)) => {
                    runtime.spawn_blocking(flush_now);
                }
                (Ok(runtime), Flush::Blocking(Some(window))) => {
                    runtime.spawn(async move {
                        tokio::time::sleep(window).await;
                        let _ = tokio::task::spawn_blocking(flush_now).await;
                    });
                }
                (Err(_), _) => flush_now(),
            }
        }
        match waiter {
            Some(flushed) => Logged {
                state: LoggedState::Flushing(flushed),
            },
            None => ready(Ok(())),
        }
    }

    fn full(&self, used: u64) -> Result<()> {
        match self.config.on_full {
            FullPolicy::Reject => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                Err(Error::SpoolFull {
                    used,
                    cap: self.config.spool_cap_bytes,
                })
            }
            FullPolicy::Drop => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    pub fn metrics(&self) -> AuditMetrics {
        let c = &self.counters;
        AuditMetrics {
            queued: c.queued.load(Ordering::Relaxed),
            written: c.written.load(Ordering::Relaxed),
            uploaded: c.uploaded.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            spool_bytes: c.spool_bytes.load(Ordering::Relaxed),
            upload_failures: c.upload_failures.load(Ordering::Relaxed),
        }
    }

    /// Seals every open segment now and waits until the spool is empty (every segment
    /// uploaded), or `timeout`. Returns whether it emptied.
    pub async fn flush(&self, timeout: Duration) -> bool {
        flush_pending(&self.pending, &self.segments, &self.sealing);
        let running = std::mem::take(&mut *self.sealing.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in running {
            let _ = handle.await;
        }
        let (tx, rx) = oneshot::channel();
        let sent = match &*self.jobs.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(jobs) => jobs.send(Job::SealAll(tx)).is_ok(),
            None => false,
        };
        if sent {
            let _ = rx.await;
        }
        self.uploader.wait_empty(timeout).await
    }

    /// Stops taking records, writes and seals what is queued, and waits up to `timeout` for
    /// the uploads. Returns whether the spool emptied; what remains is uploaded at next open.
    pub async fn close(&self, timeout: Duration) -> bool {
        let emptied = self.flush(timeout).await;
        self.closed.store(true, Ordering::Release);
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        self.uploader.stop();
        emptied
    }
}

impl Drop for AuditLog {
    /// The writer ends after what is queued (its channel closes); the uploader stops.
    fn drop(&mut self) {
        self.uploader.stop();
    }
}

/// Seals the `.open` segments a stopped run left (cut to their last whole line: a torn line
/// was never acknowledged) and returns the bytes the spool holds.
fn recover(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        match path.extension().and_then(|e| e.to_str()) {
            Some(OPEN) => {
                let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                if whole == 0 {
                    std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                    continue;
                }
                if whole < bytes.len() {
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| Error::io(&path, e))?;
                    file.set_len(whole as u64)
                        .map_err(|e| Error::io(&path, e))?;
                    file.sync_all().map_err(|e| Error::io(&path, e))?;
                }
                let sealed = path.with_extension(SEALED);
                std::fs::rename(&path, &sealed).map_err(|e| Error::io(&path, e))?;
                total += whole as u64;
            }
            Some(SEALED) => {
                total += std::fs::metadata(&path)
                    .map_err(|e| Error::io(&path, e))?
                    .len();
            }
            _ => {}
        }
    }
    Ok(total)
}

#[derive(Debug)]
struct Segment {
    file: File,
    path: PathBuf,
    /// The segment's bytes (a directly written file is longer: zeros up to a block).
    bytes: u64,
    /// Written around the page cache: its bytes after the last whole block.
    direct: Option<direct::Tail>,
    records: u64,
    opened: Instant,
}

/// The open segments, shared by the callers' threads (`write` records) and the writer
/// thread (queued records, sealing). Nothing slow happens under its lock: records are
/// serialized before, segments are fsynced and renamed after (see [`seal`]).
#[derive(Debug)]
struct Segments {
    config: AuditConfig,
    counters: Arc<Counters>,
    open: HashMap<Partition, Segment>,
    /// The last segment number used: microseconds since the epoch, kept increasing.
    last_segment: u64,
    uploader: Uploader,
    /// The aligned memory of direct writes, allocated at the first.
    direct_buffer: Option<direct::AlignedBuffer>,
    /// Whether the spool's file system refused direct writes (then warned about, once).
    direct_refused: bool,
}

fn lock(segments: &Mutex<Segments>) -> std::sync::MutexGuard<'_, Segments> {
    segments.lock().unwrap_or_else(|p| p.into_inner())
}

/// The writer thread: group-commits queued records and seals segments that grew old.
struct Writer {
    segments: Arc<Mutex<Segments>>,
    tick: Duration,
}

/// Records written together at most (the rest waits for the next round).
const BATCH: usize = 4096;

/// A batch of queued records, serialized: the lines of each partition, who waits for what,
/// and the requests to seal everything.
#[derive(Default)]
struct Batch {
    lines: HashMap<Partition, (Vec<u8>, u64)>,
    /// Every queued record asks for an fsync of its segment.
    waiters: Vec<(Partition, oneshot::Sender<Result<()>>)>,
    seal_requests: Vec<oneshot::Sender<()>>,
}

impl Batch {
    fn of(jobs: Vec<Job>) -> Batch {
        let mut batch = Batch::default();
        for job in jobs {
            match job {
                Job::Record {
                    partition,
                    line,
                    done,
                } => {
                    let entry = batch.lines.entry(partition.clone()).or_default();
                    entry.0.extend_from_slice(&line);
                    entry.1 += 1;
                    batch.waiters.push((partition, done));
                }
                Job::SealAll(done) => batch.seal_requests.push(done),
            }
        }
        batch
    }
}

impl Writer {
    fn run(self, jobs: Receiver<Job>) {
        loop {
            let first = match jobs.recv_timeout(self.tick) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    let old = lock(&self.segments).take_old();
                    self.seal(old);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut jobs_now = vec![first];
            while jobs_now.len() < BATCH {
                match jobs.try_recv() {
                    Ok(job) => jobs_now.push(job),
                    Err(_) => break,
                }
            }
            let mut batch = Batch::of(jobs_now);
            let seal_requests = std::mem::take(&mut batch.seal_requests);
            let mut to_seal = {
                let mut segments = lock(&self.segments);
                let mut to_seal = segments.commit(batch);
                to_seal.extend(segments.take_old());
                if !seal_requests.is_empty() {
                    to_seal.extend(segments.take_all());
                }
                to_seal
            };
            self.seal(std::mem::take(&mut to_seal));
            for done in seal_requests {
                let _ = done.send(());
            }
        }
        let all = lock(&self.segments).take_all();
        self.seal(all);
    }

    fn seal(&self, segments: Vec<Segment>) {
        if segments.is_empty() {
            return;
        }
        let uploader = lock(&self.segments).uploader.clone();
        for segment in segments {
            seal(segment, &uploader);
        }
    }
}

impl Segments {
    /// Writes a batch: one `write` per touched segment, one fsync per segment if any record
    /// asked for it, then the answers. Returns the segments that grew full, to seal.
    fn commit(&mut self, batch: Batch) -> Vec<Segment> {
        let Batch { lines, waiters, .. } = batch;
        let mut to_seal = Vec::new();
        let mut failed: HashMap<Partition, String> = HashMap::new();
        for (partition, (bytes, records)) in &lines {
            match self.append_synced(partition, bytes, *records, true) {
                Ok(full) => to_seal.extend(full),
                Err(e) => {
                    tracing::error!("audit records lost from the spool: {e}");
                    failed.insert(partition.clone(), e.to_string());
                }
            }
        }
        for (partition, done) in waiters {
            let result = match failed.get(&partition) {
                Some(message) => Err(Error::io(
                    &self.config.spool_dir,
                    std::io::Error::other(message.clone()),
                )),
                None => Ok(()),
            };
            let _ = done.send(result);
        }
        to_seal
    }

    /// Appends `records` lines to the partition's segment (opening one if needed); returns
    /// the segment if it is now full, taken out to be sealed.
    fn append(
        &mut self,
        partition: &Partition,
        bytes: &[u8],
        records: u64,
    ) -> Result<Option<Segment>> {
        self.append_synced(partition, bytes, records, false)
    }

    fn append_synced(
        &mut self,
        partition: &Partition,
        bytes: &[u8],
        records: u64,
        sync: bool,
    ) -> Result<Option<Segment>> {
        if !self.open.contains_key(partition) {
            let segment = self.create(partition)?;
            self.open.insert(partition.clone(), segment);
        }
        let Some(segment) = self.open.get_mut(partition) else {
            return Ok(None);
        };
        let written = match &mut segment.direct {
            Some(tail) => {
                let buffer = self
                    .direct_buffer
                    .get_or_insert_with(direct::AlignedBuffer::new);
                tail.append(&segment.file, segment.bytes, bytes, buffer)
            }
            None => segment.file.write_all(bytes),
        };
        written.map_err(|e| Error::io(&segment.path, e))?;
        segment.bytes += bytes.len() as u64;
        segment.records += records;
        if sync {
            segment
                .file
                .sync_data()
                .map_err(|e| Error::io(&segment.path, e))?;
        }
        self.counters
            .spool_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.counters.written.fetch_add(records, Ordering::Relaxed);
        if segment.bytes >= self.config.segment_max_bytes {
            return Ok(self.open.remove(partition));
        }
        Ok(None)
    }

    fn create(&mut self, partition: &Partition) -> Result<Segment> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.last_segment = now.max(self.last_segment + 1);
        let name = format!("{}-{:016}", self.config.node_id, self.last_segment);
        let path = self
            .config
            .spool_dir
            .join(format!("{}.{OPEN}", partition.spool_name(&name)));
        let mut options = OpenOptions::new();
        // A direct file is written at offsets: not in append mode, where Linux ignores them.
        options.create_new(true).append(!self.config.direct_writes);
        let file = options
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let direct = self.config.direct_writes && !self.direct_refused;
        let direct = direct
            && match direct::enable(&file) {
                Ok(()) => true,
                Err(e) => {
                    self.direct_refused = true;
                    tracing::warn!(
                        "the audit spool {} does not take direct writes ({e}): written through the page cache",
                        self.config.spool_dir.display()
                    );
                    false
                }
            };
        Ok(Segment {
            file,
            path,
            bytes: 0,
            direct: direct.then(direct::Tail::default),
            records: 0,
            opened: Instant::now(),
        })
    }

    /// The segments open for longer than the maximum age, taken out to be sealed.
    fn take_old(&mut self) -> Vec<Segment> {
        let max_age = self.config.segment_max_age;
        let old: Vec<Partition> = self
            .open
            .iter()
            .filter(|(_, s)| s.opened.elapsed() >= max_age)
            .map(|(p, _)| p.clone())
            .collect();
        old.iter().filter_map(|p| self.open.remove(p)).collect()
    }

    fn take_all(&mut self) -> Vec<Segment> {
        self.open.drain().map(|(_, s)| s).collect()
    }
}

/// Closes a segment and renames it sealed, so the uploader takes it. Done outside the
/// segments' lock: its fsync may take milliseconds.
fn seal(segment: Segment, uploader: &Uploader) {
    // A directly written file ends in zeros up to a block. Left uncut, it stays open: the
    // next start cuts it after its last line.
    if segment.direct.is_some()
        && let Err(e) = segment.file.set_len(segment.bytes)
    {
        tracing::error!(
            "cannot cut {} to its {} bytes: {e}; it is sealed at the next start",
            segment.path.display(),
            segment.bytes
        );
        return;
    }
    // Sealed segments are fsynced whatever the durability: the uploader may delete the
    // source of truth only after a complete copy exists somewhere.
    if let Err(e) = segment.file.sync_all() {
        tracing::warn!("cannot fsync {}: {e}", segment.path.display());
    }
    drop(segment.file);
    let sealed = segment.path.with_extension(SEALED);
    match std::fs::rename(&segment.path, &sealed) {
        Ok(()) => uploader.sealed(sealed, segment.records),
        Err(e) => tracing::error!(
            "cannot seal {} ({} records): {e}; it is sealed at the next start",
            segment.path.display(),
            segment.records
        ),
    }
}
