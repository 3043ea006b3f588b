//! Prediction results in the protocol's `result` shape, shared by the `predict` routes and
//! `apinode model predict`.

use apinode_scoring::{IgnoreReason, PredictedValue, Prediction};
use serde_json::{Map, Value, json};

/// The protocol's `ignoreReason` for a row the model itself refuses.
pub fn ignore_reason_code(reason: &IgnoreReason) -> &'static str {
    match reason {
        IgnoreReason::DropRows { .. } => "ROW_DROPPED_BY_MODEL",
        IgnoreReason::UnknownPartition { .. } => "UNKNOWN_PARTITION",
        _ => "IGNORED_BY_MODEL",
    }
}

/// `{"prediction": ..., "probas": {class: p}, "ignored": false}` for a scored row (no `probas`
/// for regression; the cluster label as `prediction` for clustering, with `anomalyScore` for
/// isolation forests); `{"ignored": true, "ignoreReason": CODE, "ignoreMessage": TEXT}` for a
/// row the model refuses.
pub fn result_json(prediction: &Prediction) -> Value {
    let mut result = Map::new();
    if let Some(reason) = &prediction.ignored {
        result.insert("ignored".into(), Value::Bool(true));
        result.insert("ignoreReason".into(), json!(ignore_reason_code(reason)));
        result.insert("ignoreMessage".into(), json!(reason.to_string()));
        return Value::Object(result);
    }
    let value = match &prediction.prediction {
        Some(PredictedValue::Class(label) | PredictedValue::Cluster(label)) => json!(&**label),
        Some(PredictedValue::Value(v)) => finite(*v),
        Some(PredictedValue::ClusterIndex(i)) => json!(format!("cluster_{i}")),
        None => Value::Null,
    };
    result.insert("prediction".into(), value);
    if !prediction.probabilities.is_empty() {
        let probas: Map<String, Value> = prediction
            .probabilities
            .iter()
            .map(|(class, p)| (class.to_string(), finite(*p)))
            .collect();
        result.insert("probas".into(), Value::Object(probas));
    }
    if let Some(score) = prediction.anomaly_score {
        result.insert("anomalyScore".into(), finite(score));
    }
    result.insert("ignored".into(), Value::Bool(false));
    Value::Object(result)
}

/// JSON has no NaN or infinity: those are `null`.
fn finite(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn results_have_the_protocol_shape() {
        let class = Prediction {
            prediction: Some(PredictedValue::Class(Arc::from("yes"))),
            probabilities: vec![(Arc::from("no"), 0.25), (Arc::from("yes"), 0.75)],
            anomaly_score: None,
            ignored: None,
        };
        assert_eq!(
            result_json(&class),
            json!({"prediction": "yes", "probas": {"no": 0.25, "yes": 0.75}, "ignored": false})
        );
        let value = Prediction {
            prediction: Some(PredictedValue::Value(f64::NAN)),
            probabilities: vec![],
            anomaly_score: None,
            ignored: None,
        };
        assert_eq!(
            result_json(&value),
            json!({"prediction": null, "ignored": false})
        );
        let dropped = Prediction {
            prediction: None,
            probabilities: vec![],
            anomaly_score: None,
            ignored: Some(IgnoreReason::DropRows {
                column: "age".into(),
            }),
        };
        let json = result_json(&dropped);
        assert_eq!(json["ignored"], json!(true));
        assert_eq!(json["ignoreReason"], json!("ROW_DROPPED_BY_MODEL"));
        assert!(json["ignoreMessage"].as_str().unwrap().contains("`age`"));
    }
}
