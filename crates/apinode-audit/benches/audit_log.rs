//! The audit log's own cost per record, in process: `AuditLog::log` with a record the size of
//! the HTTP bench's (a lookup's keys and its 366-byte answer), in each durability mode and,
//! for `async` and `fsync`, with segments written buffered or direct, side by side in one run.
//!
//! The figure is the **process's CPU time** per record (every thread: the caller, the blocking
//! pool's flushes and seals, the writer thread, the uploader moving segments into a local
//! store), not the caller's wall time: a flush on another thread costs a core all the same, and
//! CPU time moves less than throughput on a shared host. Records are logged 16 at a time and
//! then awaited (one scheduler pass's queries, group-committed as on a busy node).
//!
//! `cargo xtask bench audit_log` (`cargo bench -p apinode-audit --no-default-features --bench
//! audit_log`: without the reader, no DataFusion to build); CI runs it once in test mode. The spool and store go under `APINODE_BENCH_DIR` (default: the system's
//! temporary directory), which should be on the file system a node's spool would be on (one
//! without direct I/O, tmpfs before Linux 6.6, makes the `direct` cases buffered).

use apinode_audit::{AuditConfig, AuditLog, AuditRecord, Durability, Payload, Stream, open_store};
use chrono::Utc;
use cpu_time::ProcessTime;
use criterion::{Criterion, criterion_group, criterion_main};
use std::time::Duration;

/// A lookup's answer row, as the HTTP bench's table writes it (366 bytes).
const OUTPUT: &str = r#"{"customer_id":"C0012345","name":"Customer 12345","segment":"enterprise","country":"FR","signup_date":"2021-03-14","lifetime_value":18234.55,"orders":42,"active":true,"score":0.8731,"last_order_date":"2026-11-29","notes":"priority account, renewal in Q1, prefers email contact","region":"EU-West"}"#;

/// The records logged before they are awaited.
const GROUP: u64 = 16;

fn record() -> AuditRecord<'static> {
    let mut record = AuditRecord::new(
        Stream::Queries,
        Utc::now(),
        "5f0c1d2e3a4b5c6d7e8f90a1b2c3d4e5",
        "bench",
        200,
    );
    record.endpoint = Some("customers".into());
    record.endpoint_kind = Some("DATASET_LOOKUP".into());
    record.generation = Some("v1".into());
    record.client_address = Some("127.0.0.1:45678".parse().unwrap());
    record.inputs = Some(Payload::trusted(r#"{"customer_id":"C0012345"}"#));
    record.outputs = Some(Payload::trusted(OUTPUT));
    record.timing = &[("lookup", 3), ("total", 11)];
    record
}

/// The log's CPU time for `iterations` records in `durability`, on `runtime`.
fn cost(
    runtime: &tokio::runtime::Runtime,
    log: &AuditLog,
    durability: Durability,
    iterations: u64,
) -> Duration {
    let record = record();
    runtime.block_on(async {
        let start = ProcessTime::now();
        let mut left = iterations;
        while left > 0 {
            let group = left.min(GROUP);
            let logged: Vec<_> = (0..group).map(|_| log.log(&record, durability)).collect();
            for logged in logged {
                logged.await.expect("the record is logged");
            }
            // The end of a scheduler pass: the log's other tasks (the uploader) run too.
            tokio::task::yield_now().await;
            left -= group;
        }
        // The records written, and the segments they filled sealed and stored: what they cost
        // is theirs.
        assert!(
            log.flush(Duration::from_secs(60)).await,
            "the spool emptied"
        );
        start.elapsed()
    })
}

fn log_records(c: &mut Criterion) {
    // One thread answers and flushes, as a node's worker on a busy core: a `write` batch's
    // flush runs where its records were logged, without a cross-thread wake-up.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let parent = std::env::var_os("APINODE_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(parent).unwrap();
    let mut group = c.benchmark_group("audit_log_cpu_per_record");
    // A few GB of records per mode at most.
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    for (name, durability, direct) in [
        ("async_buffered", Durability::Async, false),
        ("async_direct", Durability::Async, true),
        ("write_buffered", Durability::Write, false),
        ("fsync_buffered", Durability::Fsync, false),
        ("fsync_direct", Durability::Fsync, true),
    ] {
        let mut config = AuditConfig::new(dir.path().join(name).join("spool"), "bench");
        config.direct_writes = direct;
        let store = dir.path().join(name).join("store");
        std::fs::create_dir_all(&store).unwrap();
        let store = open_store(store.to_str().unwrap(), &[]).unwrap();
        let log = runtime.block_on(AuditLog::open(config, store)).unwrap();
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| cost(&runtime, &log, durability, iterations))
        });
        assert!(runtime.block_on(log.close(Duration::from_secs(60))));
    }
    group.finish();
}

criterion_group!(benches, log_records);
criterion_main!(benches);
