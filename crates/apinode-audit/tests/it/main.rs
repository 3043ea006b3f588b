//! The audit log through its public API, on a real file-system store: the layout, the
//! durability levels, recovery of a spool a stopped run left, a store that is down then back,
//! and the spool cap's policies; the log reader (`reader`) on what the log wrote.

#[cfg(feature = "reader")]
mod reader;

use apinode_audit::{
    AuditConfig, AuditLog, AuditRecord, Durability, Error, FullPolicy, LogStore, Stream, open_store,
};
use chrono::{TimeZone, Utc};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

fn record(service: &str, id: usize, hour: u32) -> AuditRecord<'static> {
    let time = Utc.with_ymd_and_hms(2026, 12, 5, hour, 15, 0).unwrap();
    let mut record = AuditRecord::new(
        Stream::Queries,
        time,
        format!("req-{id}"),
        service.to_owned(),
        200,
    );
    record.endpoint = Some("churn".into());
    record.inputs = Some(
        serde_json::value::to_raw_value(&serde_json::json!({"features": {"n": id}}))
            .unwrap()
            .into(),
    );
    record
}

fn store(root: &Path) -> Arc<dyn ObjectStore> {
    std::fs::create_dir_all(root).unwrap();
    Arc::new(LocalFileSystem::new_with_prefix(root).unwrap())
}

/// Every JSON line under `root`, with the file's path relative to `root`.
fn stored(root: &Path) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for path in walk(root) {
        let relative = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            out.push((relative.clone(), serde_json::from_str(line).unwrap()));
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn config(spool: &Path) -> AuditConfig {
    let mut config = AuditConfig::new(spool, "node1");
    config.segment_max_age = Duration::from_millis(200);
    config
}

/// A log whose segments are sealed by size only (an hour is never reached), its spool under
/// `dir`, `tune`d.
async fn log_in(dir: &Path, tune: impl FnOnce(&mut AuditConfig)) -> (AuditLog, PathBuf) {
    let spool = dir.join("spool");
    let mut config = config(&spool);
    config.segment_max_age = Duration::from_secs(3600);
    tune(&mut config);
    let log = AuditLog::open(config, store(&dir.join("store")))
        .await
        .unwrap();
    (log, spool)
}

#[tokio::test]
async fn records_reach_the_store_partitioned_by_service_and_hour() {
    records_reach_the_store(false).await;
}

/// The same, into a local directory opened by its path: segments are moved there, not copied.
#[tokio::test]
async fn records_are_moved_into_a_local_store() {
    records_reach_the_store(true).await;
}

async fn records_reach_the_store(by_path: bool) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let log_store: LogStore = match by_path {
        true => open_store(root.to_str().unwrap(), &[]).unwrap(),
        false => store(&root).into(),
    };
    let log = AuditLog::open(config(&dir.path().join("spool")), log_store)
        .await
        .unwrap();
    for i in 0..100 {
        let service = if i % 2 == 0 { "churn" } else { "fraud" };
        log.log(&record(service, i, 7 + (i % 3) as u32), Durability::Write)
            .await
            .unwrap();
    }
    let mut auth = AuditRecord::new(Stream::Auth, Utc::now(), "req-x", "churn", 401);
    auth.error_message = Some("invalid API key".into());
    log.log(&auth, Durability::Fsync).await.unwrap();
    assert!(
        log.close(Duration::from_secs(10)).await,
        "the spool emptied"
    );

    let lines = stored(&root);
    assert_eq!(lines.len(), 101, "every record, once");
    let mut ids: Vec<&str> = lines
        .iter()
        .filter_map(|(_, v)| v["request_id"].as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 101);
    for (path, value) in &lines {
        if value["status"] == 401 {
            assert!(path.starts_with("_auth/date="), "{path}");
            continue;
        }
        let hour = &value["time"].as_str().unwrap()[11..13];
        let expected = format!(
            "service={}/date=2026-12-05/hour={hour}/node1-",
            value["service"].as_str().unwrap()
        );
        assert!(path.starts_with(&expected), "{path} vs {expected}");
        assert!(path.ends_with(".jsonl"), "{path}");
    }
    let metrics = log.metrics();
    assert_eq!((metrics.written, metrics.uploaded), (101, 101));
    assert_eq!(metrics.spool_bytes, 0);
}

/// Segments that fill up are sealed on the blocking pool, not on the worker that flushed the
/// batch (sealing fsyncs); `flush` waits for those seals, so nothing is left behind.
#[tokio::test]
async fn full_segments_are_sealed_away_and_flush_waits_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let mut config = config(&dir.path().join("spool"));
    config.segment_max_bytes = 2 << 10;
    config.segment_max_age = Duration::from_secs(3600);
    let log = AuditLog::open(config, store(&root)).await.unwrap();
    for i in 0..300 {
        log.log(&record("churn", i, 7), Durability::Write)
            .await
            .unwrap();
    }
    assert!(log.flush(Duration::from_secs(10)).await);
    let records = stored(&root);
    assert_eq!(records.len(), 300);
    let objects: std::collections::BTreeSet<_> = records.iter().map(|(path, _)| path).collect();
    assert!(objects.len() > 10, "{} objects", objects.len());
    assert_eq!(log.metrics().spool_bytes, 0);
}

/// A caller's line writer that panics halfway leaves nothing of its line in the batch: the
/// records around it reach the store whole, each line JSON.
#[tokio::test]
async fn a_line_writer_that_panics_leaves_no_part_of_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = log_in(dir.path(), |_| {}).await;
    log.log(&record("churn", 1, 7), Durability::Write)
        .await
        .unwrap();
    let torn = record("churn", 2, 7);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(log.log_with(torn.key(), Durability::Async, |mut line| {
            line.start(&torn.time, "req-2", None);
            panic!("a writer failing halfway");
        }));
    }));
    assert!(panicked.is_err());
    log.log(&record("churn", 3, 7), Durability::Write)
        .await
        .unwrap();
    assert!(log.flush(Duration::from_secs(10)).await);
    let ids: Vec<_> = stored(&dir.path().join("store"))
        .into_iter()
        .map(|(_, record)| record["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["req-1", "req-3"]);
}

#[tokio::test]
async fn a_written_record_is_in_the_spool_before_any_upload() {
    let dir = tempfile::tempdir().unwrap();
    let (log, spool) = log_in(dir.path(), |_| {}).await;
    log.log(&record("churn", 1, 9), Durability::Write)
        .await
        .unwrap();
    // Acknowledged: the bytes are in the open segment (a killed process would keep them).
    let open: Vec<PathBuf> = walk(&spool)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "open"))
        .collect();
    assert_eq!(open.len(), 1);
    assert!(
        std::fs::read_to_string(&open[0])
            .unwrap()
            .contains("\"req-1\"")
    );
    // Async: accepted at once, written by the next batch.
    log.log(&record("churn", 2, 9), Durability::Async)
        .await
        .unwrap();
    assert!(log.close(Duration::from_secs(10)).await);
    assert_eq!(log.metrics().uploaded, 2);
}

/// The lines in the spool's open segments.
fn open_lines(spool: &Path) -> usize {
    walk(spool)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "open"))
        .map(|p| std::fs::read_to_string(p).unwrap().lines().count())
        .sum()
}

/// Lets the runtime run the log's flushes until the open segments hold `lines` lines.
async fn until_open_lines(spool: &Path, lines: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open_lines(spool) < lines {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {lines} lines written",
            open_lines(spool)
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn async_records_wait_for_their_window_but_never_hold_a_written_one() {
    let dir = tempfile::tempdir().unwrap();
    let (log, spool) = log_in(dir.path(), |c| c.async_window = Duration::from_secs(3600)).await;
    for id in 0..3 {
        log.log(&record("churn", id, 9), Durability::Async)
            .await
            .unwrap();
    }
    tokio::task::yield_now().await;
    assert_eq!(open_lines(&spool), 0, "written before the window's end");
    // A `write` record joining the batch is written after this pass, the async ones with it.
    log.log(&record("churn", 3, 9), Durability::Write)
        .await
        .unwrap();
    assert_eq!(open_lines(&spool), 4);
    // An async batch of a MiB does not wait for its window. The 16th record is the one that
    // crosses the MiB: a 17th could race the flush it started and wait for the next window.
    let mut large = record("churn", 4, 9);
    large.error_message = Some("x".repeat(64 << 10).into());
    for _ in 0..16 {
        log.log(&large, Durability::Async).await.unwrap();
    }
    until_open_lines(&spool, 20).await;
    assert!(log.close(Duration::from_secs(10)).await);
    assert_eq!(log.metrics().uploaded, 20);
}

#[tokio::test]
async fn async_records_are_written_at_the_end_of_their_window() {
    let dir = tempfile::tempdir().unwrap();
    let (log, spool) = log_in(dir.path(), |c| c.async_window = Duration::from_millis(20)).await;
    log.log(&record("churn", 1, 9), Durability::Async)
        .await
        .unwrap();
    until_open_lines(&spool, 1).await;
    assert_eq!(log.metrics().written, 1);
    assert!(log.close(Duration::from_secs(10)).await);
}

/// Segments written around the page cache (`direct_writes`): every record reaches the store
/// once, at every durability, through batches larger than one direct write and segments
/// sealed by size; each stored segment ends with its last line (the padding to a block cut).
#[tokio::test]
async fn directly_written_segments_reach_the_store_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (log, spool) = log_in(dir.path(), |c| {
        c.direct_writes = true;
        c.segment_max_bytes = 1 << 20;
    })
    .await;
    let mut large = record("churn", 0, 9);
    large.error_message = Some("x".repeat(300 << 10).into());
    // More than a MiB of `async` records: one batch, written in two chunks.
    for id in 0..5 {
        large.request_id = format!("req-{id}").into();
        log.log(&large, Durability::Async).await.unwrap();
    }
    for id in 5..60 {
        let durability = [Durability::Async, Durability::Write, Durability::Fsync][id % 3];
        log.log(&record("churn", id, 9), durability).await.unwrap();
        if durability == Durability::Write {
            // Acknowledged: in the open segment's file, before the zeros that pad it. The
            // segment the large records filled may still be `.open` while it is sealed off
            // the runtime (and gone by the time it is read), so every open file is searched.
            let open: Vec<_> = walk(&spool)
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "open"))
                .collect();
            let found = open.iter().any(|path| {
                let text = std::fs::read(path).unwrap_or_default();
                String::from_utf8_lossy(&text).contains(&format!("\"req-{id}\""))
            });
            assert!(found, "req-{id} not in {open:?}");
        }
    }
    assert!(log.close(Duration::from_secs(10)).await);
    let root = dir.path().join("store");
    let lines = stored(&root);
    let mut ids: Vec<&str> = lines
        .iter()
        .map(|(_, v)| v["request_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!((lines.len(), ids.len()), (60, 60));
    let objects = walk(&root);
    assert!(objects.len() >= 2, "sealed by size: {objects:?}");
    for object in objects {
        let bytes = std::fs::read(&object).unwrap();
        assert!(bytes.ends_with(b"\n"), "{object:?} ends mid-line");
        assert!(!bytes.contains(&0), "{object:?} keeps its padding");
    }
    let metrics = log.metrics();
    assert_eq!(
        (metrics.written, metrics.uploaded, metrics.spool_bytes),
        (60, 60, 0)
    );
}

#[tokio::test]
async fn a_spool_left_by_a_stopped_run_is_recovered_and_uploaded() {
    a_spool_left_by_a_stopped_run_is_recovered(false).await;
}

/// The same into a local directory opened by its path: a leftover segment is moved there,
/// not copied, and its records are counted all the same.
#[tokio::test]
async fn a_spool_left_by_a_stopped_run_is_moved_into_a_local_store() {
    a_spool_left_by_a_stopped_run_is_recovered(true).await;
}

async fn a_spool_left_by_a_stopped_run_is_recovered(by_path: bool) {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    // What a killed node leaves: an open segment whose last line was being written, and a
    // sealed one whose upload had not happened.
    std::fs::write(
        spool.join("queries~churn~2026-12-05~07~node1-0000000000000001.open"),
        "{\"request_id\":\"a\"}\n{\"request_id\":\"b\"}\n{\"request_id\":\"tor",
    )
    .unwrap();
    std::fs::write(
        spool.join("queries~churn~2026-12-05~06~node1-0000000000000000.jsonl"),
        "{\"request_id\":\"c\"}\n",
    )
    .unwrap();
    // An open segment written around the page cache: its lines, then zeros to a block.
    let mut padded = b"{\"request_id\":\"d\"}\n".to_vec();
    padded.resize(4096, 0);
    std::fs::write(
        spool.join("queries~churn~2026-12-05~08~node1-0000000000000002.open"),
        padded,
    )
    .unwrap();
    let sealed_inode =
        std::fs::metadata(spool.join("queries~churn~2026-12-05~06~node1-0000000000000000.jsonl"))
            .unwrap()
            .ino();
    let root = dir.path().join("store");
    let log_store: LogStore = match by_path {
        true => open_store(root.to_str().unwrap(), &[]).unwrap(),
        false => store(&root).into(),
    };
    let log = AuditLog::open(config(&spool), log_store).await.unwrap();
    assert!(log.close(Duration::from_secs(10)).await);
    let lines = stored(&root);
    let ids: Vec<&str> = lines
        .iter()
        .map(|(_, v)| v["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{ids:?}");
    let uploaded = root.join("service=churn/date=2026-12-05/hour=06/node1-0000000000000000.jsonl");
    assert_eq!(
        std::fs::metadata(&uploaded).unwrap().ino() == sealed_inode,
        by_path,
        "moved into a store opened by its path, copied into any other"
    );
    let metrics = log.metrics();
    assert_eq!((metrics.uploaded, metrics.spool_bytes), (4, 0));
}

#[tokio::test]
async fn a_store_that_is_down_fills_the_spool_which_drains_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    std::fs::create_dir_all(&root).unwrap();
    let store = store(&root);
    // The store is down: its root is replaced by a file, so every put fails.
    std::fs::remove_dir(&root).unwrap();
    std::fs::write(&root, "not a directory").unwrap();
    let log = AuditLog::open(config(&dir.path().join("spool")), store)
        .await
        .unwrap();
    for i in 0..20 {
        log.log(&record("churn", i, 8), Durability::Write)
            .await
            .unwrap();
    }
    assert!(
        !log.flush(Duration::from_millis(600)).await,
        "nothing can upload"
    );
    let metrics = log.metrics();
    assert!(
        metrics.upload_failures > 0 && metrics.spool_bytes > 0,
        "{metrics:?}"
    );
    assert_eq!(metrics.uploaded, 0);
    // Back: the spool drains, nothing lost.
    std::fs::remove_file(&root).unwrap();
    std::fs::create_dir_all(&root).unwrap();
    assert!(
        log.close(Duration::from_secs(15)).await,
        "{:?}",
        log.metrics()
    );
    assert_eq!(stored(&root).len(), 20);
}

#[tokio::test]
async fn the_spool_cap_rejects_or_drops() {
    for policy in [FullPolicy::Reject, FullPolicy::Drop] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        std::fs::create_dir_all(&root).unwrap();
        let store = store(&root);
        std::fs::remove_dir(&root).unwrap();
        std::fs::write(&root, "down").unwrap();
        let mut config = config(&dir.path().join("spool"));
        config.spool_cap_bytes = 1_000;
        config.on_full = policy;
        let log = AuditLog::open(config, store).await.unwrap();
        let mut refused = 0;
        for i in 0..50 {
            match log.log(&record("churn", i, 8), Durability::Write).await {
                Ok(()) => {}
                Err(Error::SpoolFull { cap, .. }) => {
                    assert_eq!(cap, 1_000);
                    refused += 1;
                }
                Err(other) => panic!("{other}"),
            }
        }
        let metrics = log.metrics();
        match policy {
            FullPolicy::Reject => {
                assert!(refused > 0 && metrics.rejected == refused, "{metrics:?}");
                assert_eq!(metrics.dropped, 0);
            }
            FullPolicy::Drop => {
                assert_eq!(refused, 0);
                assert!(metrics.dropped > 0, "{metrics:?}");
            }
        }
        assert_eq!(metrics.written + metrics.rejected + metrics.dropped, 50);
    }
}

/// moto (an S3-compatible server, from PyPI) on a free loopback port, with a bucket `audit`;
/// killed when dropped.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Moto {
    fn start(port: u16) -> Moto {
        let python = std::env::var_os("APINODE_PYTHON").expect(
            "APINODE_PYTHON is not set: `cargo xtask ci` sets it to the virtualenv's python, \
             which has moto[server] (crates/apinode-audit/tests/python/requirements.txt)",
        );
        let child = std::process::Command::new(&python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto starts");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        // Ready when it creates the bucket (connecting alone can precede the app).
        loop {
            let created = std::process::Command::new(&python)
                .args([
                    "-c",
                    &format!(
                        "import boto3; boto3.client('s3', endpoint_url='{endpoint}', \
                         aws_access_key_id='test', aws_secret_access_key='test', \
                         region_name='us-east-1').create_bucket(Bucket='audit')"
                    ),
                ])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if created {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "moto did not start within 60 s"
            );
        }
        Moto { child, endpoint }
    }

    fn options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every object name in the store, walking its folders.
async fn listed(store: &Arc<dyn ObjectStore>) -> Vec<String> {
    let mut names = Vec::new();
    let mut folders = vec![None];
    while let Some(folder) = folders.pop() {
        let listing = store
            .list_with_delimiter(folder.as_ref())
            .await
            .expect("listing works");
        names.extend(listing.objects.into_iter().map(|o| o.location.to_string()));
        folders.extend(listing.common_prefixes.into_iter().map(Some));
    }
    names.sort();
    names
}

#[tokio::test]
async fn records_reach_s3_and_survive_its_outage() {
    let port = free_port();
    let moto = Moto::start(port);
    let store = open_store("s3://audit/logs", &moto.options())
        .unwrap()
        .objects()
        .clone();
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(config(&dir.path().join("spool")), store.clone())
        .await
        .unwrap();
    for i in 0..10 {
        log.log(&record("churn", i, 7), Durability::Write)
            .await
            .unwrap();
    }
    assert!(
        log.flush(Duration::from_secs(20)).await,
        "{:?}",
        log.metrics()
    );
    let names = listed(&store).await;
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        names[0].starts_with("service=churn/date=2026-12-05/hour=07/node1-"),
        "{names:?}"
    );

    // The server goes away: records wait in the spool.
    drop(moto);
    for i in 10..20 {
        log.log(&record("churn", i, 8), Durability::Write)
            .await
            .unwrap();
    }
    assert!(!log.flush(Duration::from_millis(800)).await);
    // (The S3 client retries a failed put itself, so the attempt may still be running.)
    let waiting = log.metrics();
    assert!(
        waiting.spool_bytes > 0 && waiting.uploaded == 10,
        "{waiting:?}"
    );
    // Back (moto keeps nothing: the bucket is created again), the spool drains.
    let _moto = Moto::start(port);
    assert!(
        log.close(Duration::from_secs(30)).await,
        "{:?}",
        log.metrics()
    );
    let names = listed(&store).await;
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].contains("hour=08"), "{names:?}");
    assert_eq!(log.metrics().uploaded, 20);
    // What is there reads back through the same store (moto kept the second run's records).
    #[cfg(feature = "reader")]
    {
        let reader = apinode_audit::LogReader::new(store.clone()).unwrap();
        let output = reader
            .query("SELECT hour, count(*) AS n FROM queries WHERE service = 'churn' GROUP BY hour")
            .await
            .unwrap();
        let table = output.to_table().unwrap();
        assert!(table.contains("| 8    | 10 |"), "{table}");
        assert_eq!(
            reader
                .tail(Stream::Queries, Some("churn"), 3, None)
                .await
                .unwrap()
                .len(),
            3
        );
    }
}
