//! The differential test: every model that `tests/python/make_models.py` generated is loaded and
//! scored three ways (row by row, as a list of records, as a columnar batch), and each result is
//! compared with what dataiku-scoring returned for the same batch.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use apinode_scoring::{
    Batch, Column, Model, PREPROCESSING_STEPS, PredictedValue, Prediction, Predictions, Task,
};
use serde_json::{Map, Value};

const HOW_TO: &str = "APINODE_SCORING_CASES is not set. Generate the cases and point to them:
    python3 -m venv /var/tmp/scoring-venv
    /var/tmp/scoring-venv/bin/pip install -r crates/apinode-scoring/tests/python/requirements.txt
    /var/tmp/scoring-venv/bin/python crates/apinode-scoring/tests/python/make_models.py target/scoring-cases
    APINODE_SCORING_CASES=$PWD/target/scoring-cases cargo test -p apinode-scoring
(`cargo xtask ci` does this.)";

/// Relative tolerance of the float64 paths and of the float32 (XGBoost) path.
const TOL_F64: f64 = 1e-9;
const TOL_F32: f64 = 1e-6;
/// Absolute floor: values this close count as equal whatever their size (probabilities like
/// `1 - p` with `p` near 1 lose their relative precision in both implementations).
const ABS_F64: f64 = 1e-15;
const ABS_F32: f64 = 1e-7;

struct Case {
    input: Map<String, Value>,
    prediction: Value,
    probabilities: Option<Map<String, Value>>,
    anomaly_score: Option<f64>,
}

fn num(v: &Value) -> f64 {
    match v {
        Value::String(s) if s == "NaN" => f64::NAN,
        Value::Number(n) => n.as_f64().unwrap(),
        other => panic!("expected a number, got {other}"),
    }
}

fn read_cases(dir: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(dir.join("cases.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            Case {
                input: v["input"].as_object().unwrap().clone(),
                prediction: v["prediction"].clone(),
                probabilities: v["probabilities"].as_object().cloned(),
                anomaly_score: (!v["anomaly_score"].is_null()).then(|| num(&v["anomaly_score"])),
            }
        })
        .collect()
}

#[derive(Default)]
struct Stats {
    max_rel: f64,
    max_abs: f64,
    values: usize,
    near_threshold: usize,
}

struct Checker<'a> {
    model: &'a str,
    how: &'a str,
    tol: f64,
    abs: f64,
    threshold: Option<f64>,
    stats: &'a mut Stats,
    failures: &'a mut Vec<String>,
}

impl Checker<'_> {
    fn close(&mut self, row: usize, what: &str, got: f64, want: f64) -> bool {
        if got.is_nan() && want.is_nan() {
            return true;
        }
        self.stats.values += 1;
        let diff = (got - want).abs();
        let scale = got.abs().max(want.abs());
        let rel = if diff == 0.0 { 0.0 } else { diff / scale };
        if rel.is_nan() || rel > self.stats.max_rel {
            self.stats.max_rel = rel;
        }
        if diff.is_nan() || diff > self.stats.max_abs {
            self.stats.max_abs = diff;
        }
        // NaN against a number fails both comparisons.
        let ok = diff <= self.abs || rel <= self.tol;
        if !ok {
            self.fail(
                row,
                format!("{what}: got {got:e}, dataiku-scoring {want:e} (relative {rel:.2e})"),
            );
        }
        ok
    }

    fn fail(&mut self, row: usize, msg: String) {
        if self.failures.len() < 60 {
            self.failures
                .push(format!("{} [{}] row {row}: {msg}", self.model, self.how));
        }
    }

    fn check(&mut self, row: usize, got: &Prediction, case: &Case) {
        match (&case.prediction, &got.prediction) {
            (Value::Null, None) => {
                if got.ignored.is_none() {
                    self.fail(row, "no prediction and no ignore reason".into());
                }
                return;
            }
            (Value::Null, Some(p)) => {
                self.fail(
                    row,
                    format!("dataiku-scoring gives no prediction, got {p:?}"),
                );
                return;
            }
            (want, None) => {
                self.fail(
                    row,
                    format!(
                        "ignored ({:?}), dataiku-scoring predicts {want}",
                        got.ignored
                    ),
                );
                return;
            }
            (Value::String(s), Some(PredictedValue::Class(c) | PredictedValue::Cluster(c)))
                if s != "NaN" =>
            {
                if s.as_str() != c.as_ref() {
                    // A binary label may flip when p1 is within tolerance of the threshold.
                    let near = match (self.threshold, got.probabilities.get(1)) {
                        (Some(t), Some((_, p))) => (p - t).abs() <= self.tol.max(self.abs) * 10.0,
                        _ => false,
                    };
                    if near {
                        self.stats.near_threshold += 1;
                    } else {
                        self.fail(row, format!("label {c:?}, dataiku-scoring {s:?}"));
                    }
                }
            }
            (Value::Number(_), Some(PredictedValue::ClusterIndex(i))) => {
                if case.prediction.as_u64() != Some(*i as u64) {
                    self.fail(
                        row,
                        format!("cluster {i}, dataiku-scoring {}", case.prediction),
                    );
                }
            }
            (want @ (Value::Number(_) | Value::String(_)), Some(PredictedValue::Value(v))) => {
                let w = num(want);
                self.close(row, "prediction", *v, w);
            }
            (want, Some(p)) => self.fail(row, format!("got {p:?}, dataiku-scoring {want}")),
        }
        if let Some(probs) = &case.probabilities {
            if probs.len() != got.probabilities.len() {
                self.fail(
                    row,
                    format!(
                        "{} probabilities, dataiku-scoring {}",
                        got.probabilities.len(),
                        probs.len()
                    ),
                );
                return;
            }
            for (label, p) in &got.probabilities {
                match probs.get(label.as_ref()) {
                    Some(w) => {
                        let w = num(w);
                        self.close(row, &format!("P({label})"), *p, w);
                    }
                    None => self.fail(row, format!("class {label:?} unknown to dataiku-scoring")),
                }
            }
        }
        if let Some(s) = case.anomaly_score {
            match got.anomaly_score {
                Some(g) => {
                    self.close(row, "anomaly score", g, s);
                }
                None => self.fail(row, "no anomaly score".into()),
            }
        }
    }
}

fn batch_of<'a>(model: &Model, cols: &'a [(String, Vec<Value>)], n: usize) -> Batch<'a> {
    let mut b = Batch::new(n);
    let wanted: BTreeSet<&str> = model.input_columns().collect();
    for (name, values) in cols {
        if wanted.contains(name.as_str()) {
            b.push(name, Column::Json(values)).unwrap();
        }
    }
    b
}

/// Every input column of a valid row, in turn, gets values of every JSON type and odd numbers:
/// scoring answers or fails with an error, and never panics.
fn hostile_values_do_not_panic(model: &Model, base: &Map<String, Value>) {
    let hostile = [
        Value::Bool(true),
        serde_json::json!(-1e308),
        serde_json::json!(1e308),
        serde_json::json!(-0.0),
        serde_json::json!(u64::MAX),
        serde_json::json!(i64::MIN),
        serde_json::json!(""),
        serde_json::json!("x"),
        serde_json::json!("9999-12-31T23:59:59.999999Z"),
        serde_json::json!("0001-01-01"),
        serde_json::json!("[1e308, -1e308, null]"),
        serde_json::json!([1, 2]),
        serde_json::json!({"a": 1}),
        serde_json::json!("ÉTÉ naïve ß ǅ ٣ 𝟘𝟙"),
    ];
    let columns: Vec<String> = model.input_columns().map(str::to_owned).collect();
    for c in &columns {
        for h in &hostile {
            let mut r = base.clone();
            r.insert(c.clone(), h.clone());
            let _ = model.predict(&r);
        }
    }
    let positional: Vec<Value> = vec![Value::Null; columns.len() + 2];
    let _ = model.predict(positional.as_slice());
}

#[test]
fn differential_against_dataiku_scoring() {
    let Some(root) = std::env::var_os("APINODE_SCORING_CASES").map(PathBuf::from) else {
        panic!("{HOW_TO}");
    };
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(root.join("manifest.json")).unwrap_or_else(|e| {
            panic!(
                "cannot read {}/manifest.json ({e}); {HOW_TO}",
                root.display()
            )
        }),
    )
    .unwrap();
    let models: Vec<String> = manifest["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    assert!(models.len() >= 30, "only {} models generated", models.len());

    let mut failures = Vec::new();
    let mut steps_seen = BTreeSet::new();
    let mut algos_seen = BTreeSet::new();
    let mut report = BTreeMap::new();
    let mut partitioned = false;
    let mut tasks = BTreeSet::new();
    let mut calibrations = BTreeSet::new();
    for name in &models {
        let dir = root.join(name);
        let info: Value =
            serde_json::from_slice(&std::fs::read(dir.join("info.json")).unwrap()).unwrap();
        let path = dir.join(info["path"].as_str().unwrap());
        let model = match Model::load(&path) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{name}: load failed: {e}"));
                continue;
            }
        };
        let f32 = info["float32"].as_bool().unwrap();
        assert_eq!(model.is_float32(), f32, "{name}: float32 path");
        let summary = model.describe();
        steps_seen.extend(summary.preprocessing.iter().map(|s| s.kind));
        if !summary.drop_rows.is_empty() {
            steps_seen.insert("DropRows");
        }
        algos_seen.insert(format!(
            "{}{}",
            summary.algorithm,
            if f32 { " (float32)" } else { "" }
        ));
        partitioned |= !summary.partitions.is_empty();
        tasks.insert(summary.task.as_str());
        if let Some(c) = &summary.calibration {
            calibrations.insert(c.clone());
        }

        let cases = read_cases(&dir);
        hostile_values_do_not_panic(&model, &cases[0].input);
        let records: Vec<Map<String, Value>> = cases.iter().map(|c| c.input.clone()).collect();
        let (tol, abs) = if f32 {
            (TOL_F32, ABS_F32)
        } else {
            (TOL_F64, ABS_F64)
        };
        let mut stats = Stats::default();
        let mut check =
            |how: &str, get: &dyn Fn(usize) -> Prediction, failures: &mut Vec<String>| {
                let mut c = Checker {
                    model: name,
                    how,
                    tol,
                    abs,
                    threshold: summary.threshold,
                    stats: &mut stats,
                    failures,
                };
                for (i, case) in cases.iter().enumerate() {
                    c.check(i, &get(i), case);
                }
            };

        // Row by row.
        let rows: Vec<Prediction> = records
            .iter()
            .map(|r| model.predict(r).unwrap_or_else(|e| panic!("{name}: {e}")))
            .collect();
        check("row", &|i| rows[i].clone(), &mut failures);
        // A list of records.
        let list: Predictions = model
            .predict_records(&records)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        check("records", &|i| list.get(i), &mut failures);
        // A columnar batch.
        let mut names: Vec<String> = Vec::new();
        for r in &records {
            for k in r.keys() {
                if !names.contains(k) {
                    names.push(k.clone());
                }
            }
        }
        let cols: Vec<(String, Vec<Value>)> = names
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    records
                        .iter()
                        .map(|r| r.get(n).cloned().unwrap_or(Value::Null))
                        .collect(),
                )
            })
            .collect();
        let batch = batch_of(&model, &cols, records.len());
        let columnar = model
            .predict_batch(&batch)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        check("batch", &|i| columnar.get(i), &mut failures);
        assert_eq!(columnar.len(), cases.len());
        if summary.task == Task::Regression {
            for i in 0..columnar.len() {
                assert_eq!(
                    columnar.value(i).map(f64::to_bits),
                    list.value(i).map(f64::to_bits)
                );
            }
        }
        report.insert(
            name.clone(),
            format!(
                "{:>4} rows, {:>5} values, max diff {:.1e} relative, {:.1e} absolute{}",
                cases.len(),
                stats.values,
                stats.max_rel,
                stats.max_abs,
                if stats.near_threshold > 0 {
                    format!(", {} labels at the threshold", stats.near_threshold)
                } else {
                    String::new()
                }
            ),
        );
    }

    // The word-count quirk: the reference's single-row predictions are NaN; ours are the batch
    // values (checked above, row by row).
    if let Ok(q) = std::fs::read(root.join("text_word_counts/quirk_single_row.json")) {
        let q: Value = serde_json::from_slice(&q).unwrap();
        eprintln!(
            "word counts: dataiku-scoring gives NaN for {}/{} single-row calls; apinode-scoring \
             gives the batch values",
            q["nan_predictions"], q["rows"]
        );
    }

    eprintln!(
        "differential test against dataiku-scoring ({} models):",
        report.len()
    );
    for (m, r) in &report {
        eprintln!("  {m:<40} {r}");
    }
    eprintln!("algorithms: {algos_seen:?}");
    eprintln!("calibrations: {calibrations:?}");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Coverage: every preprocessing step and algorithm appears in some generated model.
    let missing: Vec<&&str> = PREPROCESSING_STEPS
        .iter()
        .chain(&["DropRows", "Selection"])
        .filter(|s| !steps_seen.contains(**s))
        .collect();
    assert!(missing.is_empty(), "no generated model covers {missing:?}");
    for a in [
        "LINEAR",
        "LOGISTIC",
        "DECISION_TREE",
        "FOREST_REGRESSOR",
        "FOREST_CLASSIFIER",
        "GRADIENT_BOOSTING_CLASSIFIER",
        "GRADIENT_BOOSTING_REGRESSOR",
        "GRADIENT_BOOSTING_CLASSIFIER (float32)",
        "GRADIENT_BOOSTING_REGRESSOR (float32)",
        "MULTI_LAYER_PERCEPTRON",
        "KMEANS",
        "ISOLATION_FOREST",
    ] {
        assert!(algos_seen.contains(a), "no generated model covers {a}");
    }
    assert!(partitioned, "no generated partitioned model");
    assert_eq!(tasks.len(), 4, "tasks covered: {tasks:?}");
    assert!(
        calibrations.iter().any(|c| c.starts_with("sigmoid"))
            && calibrations.iter().any(|c| c.starts_with("isotonic")),
        "calibrations covered: {calibrations:?}"
    );
}
