//! Scores a Dataiku model export from another Rust program.
//!
//! ```text
//! cargo run -p apinode-scoring --example score_dss_model -- MODEL_PATH '{"num1": 3.5, "cat1": "red"}'
//! ```
//!
//! MODEL_PATH is a model folder, a `model.zip` or an export zip. The record is a JSON object of
//! feature values; absent columns are missing.

use apinode_scoring::{Model, PredictedValue};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(record)) = (args.next(), args.next()) else {
        return Err("usage: score_dss_model MODEL_PATH JSON_RECORD".into());
    };
    let model = Model::load(&path)?;
    let summary = model.describe();
    eprintln!("{summary}");
    let record: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&record)?;
    let p = model.predict(&record)?;
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    match (&p.prediction, &p.ignored) {
        (Some(PredictedValue::Value(v)), _) => writeln!(out, "prediction: {v}")?,
        (Some(PredictedValue::Class(c) | PredictedValue::Cluster(c)), _) => {
            writeln!(out, "prediction: {c}")?
        }
        (Some(PredictedValue::ClusterIndex(i)), _) => writeln!(out, "cluster: {i}")?,
        (None, Some(reason)) => writeln!(out, "ignored: {reason}")?,
        (None, None) => writeln!(out, "no prediction")?,
    }
    for (label, p) in &p.probabilities {
        writeln!(out, "  P({label}) = {p}")?;
    }
    if let Some(s) = p.anomaly_score {
        writeln!(out, "anomaly score: {s}")?;
    }
    Ok(())
}
