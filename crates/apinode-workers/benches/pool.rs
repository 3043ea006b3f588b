//! The round trip of a trivial call through a worker pool: what a Python or R endpoint costs
//! over calling the function in-process (the function itself takes well under a microsecond).
//!
//! `python_echo` runs `def echo(i): return i` in one Python worker; `python_echo_64_args` sends a
//! 64-key argument object and gets it back; `r_echo` is the R worker. Each call goes through the
//! whole path: serializing the arguments, the pool's queue, the task that owns the exchange, the
//! pipes, the worker's JSON decoding and encoding, and the reply's parsing.
//!
//! Needs `python3` and `Rscript` with jsonlite (the bench fails and says so without them). Under
//! `cargo test --benches` (criterion's test mode) each benchmark runs once, as a smoke test.

use apinode_workers::{Pool, PoolConfig, WorkerKind, WorkerSpec};
use criterion::Criterion;
use serde_json::{Map, Value, json};
use std::hint::black_box;
use std::path::Path;

const PYTHON: &str = "def echo(**kwargs):\n    return kwargs\n";
const R: &str = "echo <- function(...) list(...)\n";

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let python_file = dir.path().join("echo.py");
    let r_file = dir.path().join("echo.R");
    std::fs::write(&python_file, PYTHON).unwrap();
    std::fs::write(&r_file, R).unwrap();

    let python = start(
        &runtime,
        WorkerKind::PythonFunction {
            function: "echo".into(),
        },
        &python_file,
    );
    let r = start(
        &runtime,
        WorkerKind::RFunction {
            function: "echo".into(),
        },
        &r_file,
    );
    let small = json!({"i": 1});
    let wide: Map<String, Value> = (0..64)
        .map(|i| (format!("feature_{i}"), json!(i as f64 * 0.5)))
        .collect();

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("pool_round_trip");
    group.bench_function("python_echo", |b| {
        b.iter(|| runtime.block_on(python.run(black_box(&small))).unwrap())
    });
    group.bench_function("python_echo_64_args", |b| {
        b.iter(|| runtime.block_on(python.run(black_box(&wide))).unwrap())
    });
    group.bench_function("r_echo", |b| {
        b.iter(|| runtime.block_on(r.run(black_box(&small))).unwrap())
    });
    group.finish();
    c.final_summary();
    runtime.block_on(async {
        python.shutdown().await;
        r.shutdown().await;
    });
}

fn start(runtime: &tokio::runtime::Runtime, kind: WorkerKind, file: &Path) -> Pool {
    let mut config = PoolConfig::default();
    config.max_workers = 1;
    let what = format!("{kind:?}");
    runtime
        .block_on(Pool::start(WorkerSpec::new(kind, file), config))
        .unwrap_or_else(|e| {
            panic!(
                "{what}: {e}\nthe pool bench needs python3 and R with jsonlite \
             (Debian: apt-get install python3 r-base-core r-cran-jsonlite)"
            )
        })
}
