//! The uploader: copies sealed segments to the store, oldest first, and deletes each only once
//! its upload succeeded. A store that fails is retried with a growing pause (100 ms to 5 s);
//! the spool keeps growing meanwhile and drains when the store is back. Into a local
//! directory on the spool's file system, a segment is moved (renamed), not copied, and then
//! dropped from the page cache.

use crate::record::Partition;
use crate::spool::{Counters, SEALED};
use crate::store::LogStore;
use object_store::ObjectStoreExt;
use object_store::path::Path as StorePath;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(5);
/// Sealed segments are looked for at least this often, even without a wake-up.
const RESCAN: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub(crate) struct Uploader {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    wake: Notify,
    stop: AtomicBool,
    counters: Arc<Counters>,
    /// The records of each segment sealed by this run (a segment left by an earlier run is
    /// counted when it is read).
    records: Mutex<HashMap<PathBuf, u64>>,
}

impl Uploader {
    /// Starts the upload task on the current tokio runtime.
    pub(crate) fn start(dir: PathBuf, store: LogStore, counters: Arc<Counters>) -> Uploader {
        let shared = Arc::new(Shared {
            wake: Notify::new(),
            stop: AtomicBool::new(false),
            counters,
            records: Mutex::new(HashMap::new()),
        });
        tokio::spawn(run(dir, store, shared.clone()));
        Uploader { shared }
    }

    /// A segment was sealed (`path`, holding `records`): look now rather than at the next
    /// rescan.
    pub(crate) fn sealed(&self, path: PathBuf, records: u64) {
        self.shared
            .records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path, records);
        self.wake();
    }

    fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Waits until the spool holds nothing, or `timeout`; returns whether it emptied.
    pub(crate) async fn wait_empty(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.shared.counters.spool_bytes.load(Ordering::Relaxed) == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            self.wake();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.wake();
    }
}

async fn run(dir: PathBuf, store: LogStore, shared: Arc<Shared>) {
    let mut pause = FIRST_PAUSE;
    while !shared.stop.load(Ordering::Relaxed) {
        let listing = dir.clone();
        let sealed = tokio::task::spawn_blocking(move || sealed_segments(&listing))
            .await
            .unwrap_or_default();
        let mut failed = false;
        for path in &sealed {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            match upload(&store, path, &shared).await {
                Ok(()) => pause = FIRST_PAUSE,
                Err(e) => {
                    shared
                        .counters
                        .upload_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "audit log upload of {} failed (retrying in {} ms): {e}",
                        path.display(),
                        pause.as_millis()
                    );
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LONGEST_PAUSE);
        } else {
            let _ = tokio::time::timeout(RESCAN, shared.wake.notified()).await;
        }
    }
}

/// Sealed segment files, oldest segment first (their names end with an increasing number).
fn sealed_segments(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut sealed: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == SEALED))
        .collect();
    sealed.sort_by_cached_key(|p| segment_of(p));
    sealed
}

fn segment_of(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.rsplit('~').next())
        .unwrap_or_default()
        .to_owned()
}

async fn upload(store: &LogStore, path: &Path, shared: &Shared) -> Result<(), String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or("a spool file name that is not UTF-8")?;
    let (partition, segment) = Partition::from_spool_name(stem)
        .ok_or_else(|| format!("`{stem}` is not an audit segment name"))?;
    let folder = partition.folder();
    let known = shared
        .records
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(path)
        .copied();
    let (size, records) = match store.directory() {
        Some(directory) => {
            let target = directory.join(&folder).join(format!("{segment}.jsonl"));
            // Off the runtime: a rename waits for the file system's journal, which a segment's
            // seal (an fsync) may hold for milliseconds.
            let (from, to) = (path.to_owned(), target.clone());
            let moved = tokio::task::spawn_blocking(move || {
                let size = std::fs::metadata(&from)
                    .map_err(|e| format!("cannot read it: {e}"))?
                    .len();
                // A segment left by an earlier run: its records are its lines.
                let records = match known {
                    Some(records) => records,
                    None => count_lines(
                        &std::fs::read(&from).map_err(|e| format!("cannot read it: {e}"))?,
                    ),
                };
                move_into(&from, &to)
                    .map(|moved| moved.then_some((size, records)))
                    .map_err(|e| format!("cannot move it to {}: {e}", to.display()))
            })
            .await
            .map_err(|e| format!("the move failed: {e}"))??;
            match moved {
                Some(moved) => moved,
                None => put(store, path, &folder, &segment).await?,
            }
        }
        None => put(store, path, &folder, &segment).await?,
    };
    shared
        .records
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(path);
    let counters = &shared.counters;
    counters.spool_bytes.fetch_sub(size, Ordering::Relaxed);
    counters.uploaded.fetch_add(records, Ordering::Relaxed);
    Ok(())
}

/// Renames the segment at `path` to `target` (creating its folders): whole or not at all, as
/// a `put` is. `Ok(false)` when the two are on different file systems (copy instead).
fn move_into(path: &Path, target: &Path) -> std::io::Result<bool> {
    if let Some(folder) = target.parent() {
        std::fs::create_dir_all(folder)?;
    }
    match std::fs::rename(path, target) {
        Ok(()) => {
            drop_from_page_cache(target);
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => Ok(false),
        Err(e) => Err(e),
    }
}

/// Asks the kernel to drop the moved segment's pages from its cache. They are clean (the
/// segment was fsynced when sealed), the store's files are read rarely, and left cached the
/// log's tens of MB/s would grow the page cache without end: every spool write would then take
/// a never-used page, which in a VM that hands free memory back to its host costs a host fault
/// (about 1 µs per record measured; docs/benchmarks.md, "The second round"). Dropped, the
/// pages are free again for the next segment. Only advice: a failure costs nothing but that.
fn drop_from_page_cache(path: &Path) {
    let dropped = std::fs::File::open(path).and_then(|file| {
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).map_err(Into::into)
    });
    if let Err(e) = dropped {
        tracing::debug!("cannot drop {} from the page cache: {e}", path.display());
    }
}

/// A segment's records: its lines (a recovered segment's torn last line was cut).
fn count_lines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Copies the segment at `path` to the store with a `put`, then deletes it; returns its bytes
/// and records.
async fn put(
    store: &LogStore,
    path: &Path,
    folder: &str,
    segment: &str,
) -> Result<(u64, u64), String> {
    let location = StorePath::parse(format!("{folder}/{segment}.jsonl"))
        .map_err(|e| format!("invalid store path: {e}"))?;
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read it: {e}"))?;
    let (size, records) = (bytes.len() as u64, count_lines(&bytes));
    store
        .objects()
        .put(&location, bytes.into())
        .await
        .map_err(|e| format!("cannot put {location}: {e}"))?;
    // Deleted only now: a crash before this line uploads the same object again, under the
    // same name, which leaves the store as it is.
    tokio::fs::remove_file(path)
        .await
        .map_err(|e| format!("uploaded, but cannot remove it from the spool: {e}"))?;
    Ok((size, records))
}
