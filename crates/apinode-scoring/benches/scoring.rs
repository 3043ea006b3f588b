//! apinode-scoring against `dataiku-scoring` (the Python reference scorer), side by side in one
//! run: the same model files, the same rows, per record and per batch of 10,000, for a binary
//! logistic regression and a 300-tree scikit-learn gradient-boosting classifier.
//!
//! For each model, criterion times `Model::predict` on one `serde_json::Map` record (the rows
//! in turn), then `Model::predict_batch` on the rows as a columnar `Batch` and
//! `Model::predict_records` on them as maps. Then `tests/python/bench_dataiku_scoring.py` times
//! `predict_proba` on the same model and rows with the virtualenv's python. The summary (Rust
//! time, Python time, ratio, goal met?) is printed and written to
//! `<target>/bench-results/scoring.json`. Goals: ≥ 100× per record, ≥ 5× per batch.
//!
//! Inputs come from the environment, set by `cargo xtask bench scoring`:
//! `APINODE_PYTHON` (a python with dataiku-scoring) and `APINODE_SCORING_BENCH` (the directory
//! `tests/python/make_bench_models.py` wrote). Without them the bench fails and says so.
//!
//! Under `cargo test --benches` (criterion's test mode; `cargo xtask ci` runs it as the
//! benchmark smoke) each benchmark runs once on 100 rows and the Python script runs in its
//! `--quick` mode, so neither side rots; that summary goes to `scoring-smoke.json` and is no
//! measurement.

use apinode_scoring::{Batch, Column, Model};
use criterion::{BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use serde_json::{Map, Value, json};
use std::cell::RefCell;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const HOW_TO: &str = "run it with `cargo xtask bench scoring` (it prepares the virtualenv and \
the bench models), or set APINODE_PYTHON to a python with dataiku-scoring (the `py-venv` that \
`cargo xtask ci` builds in the target directory) and APINODE_SCORING_BENCH to a directory written \
by `python crates/apinode-scoring/tests/python/make_bench_models.py DIR`";
const PYTHON_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/python/bench_dataiku_scoring.py"
);
/// The benchmark's models, as `make_bench_models.py` names them.
const MODELS: &[&str] = &["binary_logistic", "gbt_binary_300"];
const GOAL_PER_RECORD: f64 = 100.0;
const GOAL_PER_BATCH: f64 = 5.0;
/// Rows per batch in the smoke test.
const SMOKE_ROWS: usize = 100;

/// One benchmark's samples as criterion took them: (iterations, elapsed) per call.
type Samples = RefCell<Vec<(u64, Duration)>>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Criterion's own rule: without `--bench` (as under `cargo test`) it runs in test mode.
    let full = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    let mut c = Criterion::default().configure_from_args();
    let summary = run(&mut c, full);
    c.final_summary();
    write_summary(&summary, full);
}

fn env_path(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => panic!("the scoring benchmark needs {name}: {HOW_TO}"),
    }
}

fn read_rows(path: &Path) -> Vec<Map<String, Value>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "cannot read the bench rows {}: {e}; {HOW_TO}",
            path.display()
        )
    });
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(m)) => m,
            _ => panic!("{} line {}: not a JSON object", path.display(), i + 1),
        })
        .collect()
}

/// The rows as columns, the way a caller holding columnar data passes them: numbers as `f64`
/// (NaN for null), strings as `&str`.
enum Owned<'a> {
    Float(Vec<f64>),
    Str(Vec<Option<&'a str>>),
    Json(Vec<Value>),
}

fn columns(rows: &[Map<String, Value>]) -> Vec<(&str, Owned<'_>)> {
    let names: Vec<&str> = rows.first().map_or(Vec::new(), |r| {
        r.keys().map(String::as_str).collect::<Vec<_>>()
    });
    names
        .into_iter()
        .map(|name| {
            let cells = rows.iter().map(|r| r.get(name).unwrap_or(&Value::Null));
            let column = if cells.clone().all(|v| v.is_null() || v.is_number()) {
                Owned::Float(cells.map(|v| v.as_f64().unwrap_or(f64::NAN)).collect())
            } else if cells.clone().all(|v| v.is_null() || v.is_string()) {
                Owned::Str(cells.map(Value::as_str).collect())
            } else {
                Owned::Json(cells.cloned().collect())
            };
            (name, column)
        })
        .collect()
}

fn batch<'a>(n: usize, cols: &'a [(&'a str, Owned<'a>)]) -> Batch<'a> {
    let mut batch = Batch::new(n);
    for (name, col) in cols {
        let column = match col {
            Owned::Float(v) => Column::Float(v),
            Owned::Str(v) => Column::Str(v),
            Owned::Json(v) => Column::Json(v),
        };
        batch
            .push(name, column)
            .expect("columns of the batch's length");
    }
    batch
}

/// Times `routine` with criterion, keeping criterion's samples so the summary reports the
/// figure criterion computed (the median time per iteration over its samples).
fn bench(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    samples: &Samples,
    mut routine: impl FnMut() -> u64,
) {
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut keep = 0u64;
            for _ in 0..iters {
                keep = keep.wrapping_add(routine());
            }
            black_box(keep);
            let elapsed = start.elapsed();
            samples.borrow_mut().push((iters, elapsed));
            elapsed
        })
    });
}

/// Criterion's median per iteration, in ns: its last `sample_size` calls are the measurement
/// (the calls before them are the warm-up). `None` when the benchmark did not run (filtered).
fn median_ns(samples: &Samples, sample_size: usize) -> Option<f64> {
    let s = samples.borrow();
    let measured = &s[s.len().saturating_sub(sample_size)..];
    let mut per_iter: Vec<f64> = measured
        .iter()
        .map(|(n, d)| d.as_nanos() as f64 / *n as f64)
        .collect();
    per_iter.sort_by(f64::total_cmp);
    per_iter.get(per_iter.len() / 2).copied()
}

fn run(c: &mut Criterion, full: bool) -> Value {
    let python = env_path("APINODE_PYTHON");
    let dir = env_path("APINODE_SCORING_BENCH");
    let mut rows = read_rows(&dir.join("rows.jsonl"));
    if !full {
        rows.truncate(SMOKE_ROWS);
    }
    let n = rows.len();
    assert!(
        n > 0,
        "{}: no rows; {HOW_TO}",
        dir.join("rows.jsonl").display()
    );
    let cols = columns(&rows);
    let batch = batch(n, &cols);
    let generated: Value = std::fs::read(dir.join("bench.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| panic!("cannot read {}; {HOW_TO}", dir.join("bench.json").display()));

    let mut results = Vec::new();
    let mut python_runs = Map::new();
    for name in MODELS {
        let path = dir.join(name).join("model");
        let model = Model::load(&path)
            .unwrap_or_else(|e| panic!("cannot load the bench model: {e}; {HOW_TO}"));
        let (record, batched, records) =
            (Samples::default(), Samples::default(), Samples::default());

        let mut group = c.benchmark_group(format!("scoring_{name}"));
        let record_samples = 100;
        group.sample_size(record_samples);
        let mut i = 0;
        bench(&mut group, "per_record/predict", &record, || {
            let p = model.predict(&rows[i % n]).expect("scores");
            i += 1;
            p.probabilities.len() as u64
        });
        // A batch takes milliseconds: fewer samples keep each benchmark within seconds.
        let batch_samples = 20;
        group.sample_size(batch_samples);
        group.throughput(Throughput::Elements(n as u64));
        bench(
            &mut group,
            &format!("batch_{n}/predict_batch"),
            &batched,
            || model.predict_batch(&batch).expect("scores").len() as u64,
        );
        bench(
            &mut group,
            &format!("batch_{n}/predict_records"),
            &records,
            || model.predict_records(&rows).expect("scores").len() as u64,
        );
        group.finish();

        let rust = [
            ("per_record", "predict", median_ns(&record, record_samples)),
            (
                "per_batch",
                "predict_batch",
                median_ns(&batched, batch_samples),
            ),
            (
                "per_batch",
                "predict_records",
                median_ns(&records, batch_samples),
            ),
        ];
        if rust.iter().all(|r| r.2.is_none()) {
            continue; // filtered out on the command line: no Python run either
        }
        let py = time_python(&python, &path, &dir.join("rows.jsonl"), n, full);
        check_same_work(name, &model, &batch, &py);
        for (mode, function, rust_ns) in rust {
            let side = &py[mode];
            let form = side["best"]
                .as_str()
                .expect("the script names its fastest form");
            let python_ns = side["forms"][form]["median_ns"].as_f64().expect("a median");
            let goal = if mode == "per_record" {
                GOAL_PER_RECORD
            } else {
                GOAL_PER_BATCH
            };
            let ratio = rust_ns.map(|r| python_ns / r);
            results.push(json!({
                "model": name, "mode": mode, "rust": format!("Model::{function}"),
                "rust_ns": rust_ns, "python": format!("predict_proba, {form}"),
                "python_ns": python_ns, "ratio": ratio, "goal": goal,
                // A smoke run times one iteration: no goal is judged on it.
                "met": ratio.filter(|_| full).map(|r| r >= goal),
            }));
        }
        python_runs.insert((*name).to_owned(), py);
    }

    println!(
        "\nscoring: apinode-scoring vs dataiku-scoring ({n} rows{})",
        if full {
            ""
        } else {
            "; smoke test, one iteration: not a measurement"
        }
    );
    println!("| model | mode | Rust | Python | ratio | goal | met? |");
    println!("|---|---|---|---|---|---|---|");
    for r in &results {
        let rust_ns = r["rust_ns"].as_f64();
        println!(
            "| {} | {} | {} {} | {} {} | {} | ≥ {}× | {} |",
            r["model"].as_str().unwrap_or_default(),
            r["mode"].as_str().unwrap_or_default(),
            r["rust"].as_str().unwrap_or_default(),
            rust_ns.map_or("not run".into(), fmt_ns),
            r["python"].as_str().unwrap_or_default(),
            fmt_ns(r["python_ns"].as_f64().unwrap_or(f64::NAN)),
            r["ratio"]
                .as_f64()
                .map_or("-".into(), |x| format!("{x:.1}×")),
            r["goal"],
            match r["met"].as_bool() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            },
        );
    }
    json!({
        "rows": n,
        "smoke": !full,
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "rust_figure": "criterion: median time per iteration over its samples",
        "generated": generated,
        "results": results,
        "python_runs": python_runs,
    })
}

/// Runs the Python timing script on the same model and rows; returns what it printed.
fn time_python(python: &Path, model: &Path, rows: &Path, n: usize, full: bool) -> Value {
    let mut command = Command::new(python);
    command
        .arg(PYTHON_SCRIPT)
        .arg("--model")
        .arg(model)
        .arg("--rows")
        .arg(rows)
        .arg("--limit")
        .arg(n.to_string());
    if !full {
        command.arg("--quick");
    }
    eprintln!("timing dataiku-scoring: {command:?}");
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {HOW_TO}", python.display()));
    if !out.status.success() {
        panic!(
            "{command:?} failed ({}):\n{}\n{HOW_TO}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the Python timing script printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Both sides must have scored the same rows to the same probabilities, or the ratio compares
/// different work: the per-class sums over the batch agree to 1e-9 relative (the differential
/// test's tolerance), and so does the count of rows without a prediction.
fn check_same_work(name: &str, model: &Model, batch: &Batch<'_>, py: &Value) {
    let out = model.predict_batch(batch).expect("scores");
    let ignored = (0..out.len()).filter(|&i| out.ignored(i).is_some()).count();
    assert_eq!(
        py["check"]["ignored_rows"].as_u64(),
        Some(ignored as u64),
        "{name}: rows without a prediction differ from dataiku-scoring's"
    );
    for (k, class) in out.classes().iter().enumerate() {
        let ours: f64 = (0..out.len())
            .filter_map(|i| out.probabilities(i).map(|p| p[k]))
            .filter(|p| !p.is_nan())
            .sum();
        let theirs = py["check"]["probability_sums"][class.as_ref()]
            .as_f64()
            .unwrap_or_else(|| panic!("{name}: the Python side has no class {class}"));
        assert!(
            (ours - theirs).abs() <= 1e-9 * theirs.abs().max(1.0),
            "{name}: the sum of P({class}) is {ours} here and {theirs} in dataiku-scoring: \
             the two sides do not compute the same thing"
        );
    }
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn write_summary(summary: &Value, full: bool) {
    let path = std::env::current_exe()
        .expect("the bench knows its path")
        .ancestors()
        .nth(3)
        .expect("the bench runs from target/<profile>/deps")
        .join("bench-results")
        .join(if full {
            "scoring.json"
        } else {
            "scoring-smoke.json"
        });
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("create bench-results");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(summary).expect("serializes"),
    )
    .expect("write the summary");
    println!("summary written to {}", path.display());
}
