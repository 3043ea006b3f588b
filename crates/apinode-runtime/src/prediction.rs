//! The `predict` and `predict-multi` routes of `prediction` and `clustering` endpoints:
//! enrichment, scoring, and the protocol's `result` objects written straight to bytes (also
//! what `apinode model predict` prints).

use crate::error::{Error, Result};
use crate::generation::PredictEndpoint;
use apinode_lookup::{EnrichError, Enriched, Enrichment, JsonRef};
use apinode_scoring::{Cell, IgnoreReason, PredictedValue, Prediction, Predictions};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::ops::Range;
use std::time::Instant;

/// Prediction results: one `result` object per queried record, written into `buffer` and
/// referenced by byte range, with the time spent enriching and scoring.
#[derive(Debug, Default)]
pub struct PredictOutput {
    pub buffer: Vec<u8>,
    pub items: Vec<Range<usize>>,
    pub enrich_micros: u64,
    pub predict_micros: u64,
}

impl PredictOutput {
    /// The `result` object of item `i`.
    pub fn result(&self, i: usize) -> &[u8] {
        &self.buffer[self.items[i].clone()]
    }
}

/// The protocol's `ignoreReason` for a row the model itself refuses.
pub fn ignore_reason_code(reason: &IgnoreReason) -> &'static str {
    match reason {
        IgnoreReason::DropRows { .. } => "ROW_DROPPED_BY_MODEL",
        IgnoreReason::UnknownPartition { .. } => "UNKNOWN_PARTITION",
        _ => "IGNORED_BY_MODEL",
    }
}

/// Writes a scored row's `result` object: `{"prediction": ..., "probas": {class: p},
/// "ignored": false}` (no `probas` for regression; the cluster label as `prediction` for
/// clustering, with `anomalyScore` for isolation forests), or `{"ignored": true,
/// "ignoreReason": CODE, "ignoreMessage": TEXT}` for a row the model refuses. With
/// `post_enrich`, the features the model saw follow as `postEnrich`. NaN and infinities,
/// which JSON lacks, are `null`.
pub fn write_result(
    prediction: &Prediction,
    post_enrich: Option<&Map<String, Value>>,
    out: &mut Vec<u8>,
) {
    if let Some(reason) = &prediction.ignored {
        write_ignored(
            ignore_reason_code(reason),
            &reason.to_string(),
            post_enrich,
            out,
        );
        return;
    }
    out.extend_from_slice(b"{\"prediction\":");
    match &prediction.prediction {
        Some(PredictedValue::Class(label) | PredictedValue::Cluster(label)) => {
            write_json(out, &**label)
        }
        Some(PredictedValue::Value(v)) => write_json(out, v),
        Some(PredictedValue::ClusterIndex(i)) => write_json(out, &format!("cluster_{i}")),
        None => out.extend_from_slice(b"null"),
    }
    if !prediction.probabilities.is_empty() {
        out.extend_from_slice(b",\"probas\":{");
        for (k, (class, p)) in prediction.probabilities.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            write_json(out, &**class);
            out.push(b':');
            write_json(out, p);
        }
        out.push(b'}');
    }
    if let Some(score) = prediction.anomaly_score {
        out.extend_from_slice(b",\"anomalyScore\":");
        write_json(out, &score);
    }
    out.extend_from_slice(b",\"ignored\":false");
    write_post_enrich(post_enrich, out);
    out.push(b'}');
}

/// Writes the `result` of a record answered without a prediction.
pub(crate) fn write_ignored(
    code: &str,
    message: &str,
    post_enrich: Option<&Map<String, Value>>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"{\"ignored\":true,\"ignoreReason\":");
    write_json(out, code);
    out.extend_from_slice(b",\"ignoreMessage\":");
    write_json(out, message);
    write_post_enrich(post_enrich, out);
    out.push(b'}');
}

fn write_post_enrich(post_enrich: Option<&Map<String, Value>>, out: &mut Vec<u8>) {
    if let Some(features) = post_enrich {
        out.extend_from_slice(b",\"postEnrich\":");
        write_json(out, features);
    }
}

/// Serializing into a `Vec` cannot fail for these types (string keys, finite or null floats).
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let _ = serde_json::to_writer(&mut *out, value);
}

/// What enrichment made of a record: the features to score (borrowed when there is nothing
/// to enrich), or the reason it is answered `ignored`.
#[derive(Debug)]
pub(crate) enum Prepared<'a> {
    Score(Cow<'a, Map<String, Value>>),
    Ignored(&'static str, Map<String, Value>),
}

impl Prepared<'_> {
    /// The same, owning its features (for a call that outlives the request body).
    pub(crate) fn into_owned(self) -> Prepared<'static> {
        match self {
            Prepared::Score(features) => Prepared::Score(Cow::Owned(features.into_owned())),
            Prepared::Ignored(code, features) => Prepared::Ignored(code, features),
        }
    }
}

/// Applies an endpoint's enrichment to a record's features; a copy is made only when there
/// are steps. An error names the step that failed.
pub(crate) fn enrich_record<'a>(
    enrichment: &Enrichment,
    features: &'a Map<String, Value>,
) -> std::result::Result<Prepared<'a>, (usize, apinode_lookup::Error)> {
    if enrichment.is_empty() {
        return Ok(Prepared::Score(Cow::Borrowed(features)));
    }
    let mut owned = features.clone();
    Ok(match enrichment.apply(&mut owned)? {
        Enriched::Applied => Prepared::Score(Cow::Owned(owned)),
        Enriched::Ignored(reason) => Prepared::Ignored(reason.as_str(), owned),
    })
}

/// Enriches owned records through every step, waiting for the database on referenced steps
/// (one statement per step for the whole batch); returns them prepared, with the time taken.
/// An error names the item (`multi`) and the step; a database that cannot be reached fails
/// the whole query (`Unavailable`: the server answers 503).
pub(crate) async fn enrich_batch(
    enrichment: &Enrichment,
    mut records: Vec<Map<String, Value>>,
    multi: bool,
) -> Result<(Vec<Prepared<'static>>, u64)> {
    let start = Instant::now();
    let outcomes = enrichment.apply_batch(&mut records).await.map_err(
        |EnrichError {
             record,
             step,
             source,
         }| Error::Enrichment {
            item: record.filter(|_| multi),
            step,
            source,
        },
    )?;
    let prepared = records
        .into_iter()
        .zip(outcomes)
        .map(|(features, outcome)| match outcome {
            Enriched::Applied => Prepared::Score(Cow::Owned(features)),
            Enriched::Ignored(reason) => Prepared::Ignored(reason.as_str(), features),
        })
        .collect();
    Ok((prepared, start.elapsed().as_micros() as u64))
}

impl PredictEndpoint {
    /// `predict`: `{"features": {...}}`.
    pub(crate) fn predict(&self, body: &Value) -> Result<PredictOutput> {
        refuse_explanations(body)?;
        let features = features_of(body, "features")?;
        self.answer(&[features], false)
    }

    /// `predict` of features read without a tree (`CallBody::PredictFeatures`): scored
    /// straight from `features` when there is nothing to enrich and no `postEnrich` to answer;
    /// otherwise from the `Map` they make. Either way the answer is the tree's, byte for byte.
    pub(crate) fn predict_features(
        &self,
        features: &dyn apinode_lookup::Record,
    ) -> Result<PredictOutput> {
        if !self.enrichment.is_empty() || self.return_post_enrich {
            let features = features.to_map();
            return self.answer(&[&features], false);
        }
        let start = Instant::now();
        let prediction = self
            .model
            .predict(&FeatureCells(features))
            .map_err(|source| Error::Scoring { item: None, source })?;
        let mut buffer = Vec::with_capacity(96 + 32 * prediction.probabilities.len());
        write_result(&prediction, None, &mut buffer);
        Ok(PredictOutput {
            items: std::iter::once(0..buffer.len()).collect(),
            buffer,
            enrich_micros: 0,
            predict_micros: start.elapsed().as_micros() as u64,
        })
    }

    /// `predict-multi` of items' features read without a tree (`CallBody::PredictItems`):
    /// scored as one batch straight from them when there is nothing to enrich and no
    /// `postEnrich` to answer; otherwise from the `Map`s they make. Either way the answer is
    /// the tree's, byte for byte.
    pub(crate) fn predict_multi_features(
        &self,
        items: &[&dyn apinode_lookup::Record],
    ) -> Result<PredictOutput> {
        if !self.enrichment.is_empty() || self.return_post_enrich {
            let maps: Vec<Map<String, Value>> = items.iter().map(|r| r.to_map()).collect();
            let records: Vec<&Map<String, Value>> = maps.iter().collect();
            return self.answer(&records, true);
        }
        let start = Instant::now();
        let cells: Vec<FeatureCells<'_>> = items.iter().map(|r| FeatureCells(*r)).collect();
        let predictions = self.score(&cells).map_err(|(i, source)| Error::Scoring {
            item: Some(i),
            source,
        })?;
        let mut out = PredictOutput {
            buffer: Vec::with_capacity(items.len() * (96 + 32 * predictions.classes().len())),
            items: Vec::with_capacity(items.len()),
            enrich_micros: 0,
            predict_micros: 0,
        };
        for i in 0..items.len() {
            let start = out.buffer.len();
            write_result(&predictions.get(i), None, &mut out.buffer);
            out.items.push(start..out.buffer.len());
        }
        out.predict_micros = start.elapsed().as_micros() as u64;
        Ok(out)
    }

    /// `predict-multi`: `{"items": [{"features": {...}}, ...]}`, scored as one batch.
    pub(crate) fn predict_multi(&self, body: &Value) -> Result<PredictOutput> {
        refuse_explanations(body)?;
        let items =
            body.get("items")
                .and_then(Value::as_array)
                .ok_or_else(|| Error::InvalidQuery {
                    location: "items".into(),
                    message: "required: an array of {\"features\": {...}} objects".into(),
                })?;
        let mut records = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            records.push(features_of(item, &format!("items[{i}].features"))?);
        }
        self.answer(&records, true)
    }

    /// Enriches and scores `records`; `multi` says whether errors name the item.
    fn answer(&self, records: &[&Map<String, Value>], multi: bool) -> Result<PredictOutput> {
        let item = |i: usize| multi.then_some(i);
        let start = Instant::now();
        let mut prepared = Vec::with_capacity(records.len());
        for (i, features) in records.iter().enumerate() {
            prepared.push(enrich_record(&self.enrichment, features).map_err(
                |(step, source)| Error::Enrichment {
                    item: item(i),
                    step,
                    source,
                },
            )?);
        }
        let enrich_micros = start.elapsed().as_micros() as u64;
        self.score_prepared(&prepared, enrich_micros, multi)
    }

    /// Scores enriched records as one batch and writes their results.
    pub(crate) fn score_prepared(
        &self,
        prepared: &[Prepared<'_>],
        enrich_micros: u64,
        multi: bool,
    ) -> Result<PredictOutput> {
        let item = |i: usize| multi.then_some(i);
        let start = Instant::now();
        let to_score: Vec<&Map<String, Value>> = prepared
            .iter()
            .filter_map(|p| match p {
                Prepared::Score(features) => Some(&**features),
                Prepared::Ignored(..) => None,
            })
            .collect();
        let predictions = self.score(&to_score).map_err(|(k, source)| {
            // `k` counts scored records only: find the item it was.
            let i = prepared
                .iter()
                .enumerate()
                .filter(|(_, p)| matches!(p, Prepared::Score(_)))
                .nth(k)
                .map_or(k, |(i, _)| i);
            Error::Scoring {
                item: item(i),
                source,
            }
        })?;

        let mut out = PredictOutput {
            buffer: Vec::with_capacity(prepared.len() * (96 + 32 * predictions.classes().len())),
            items: Vec::with_capacity(prepared.len()),
            enrich_micros,
            predict_micros: 0,
        };
        let mut scored = 0;
        for p in prepared {
            let start = out.buffer.len();
            match p {
                Prepared::Score(features) => {
                    let post_enrich = self.return_post_enrich.then_some(&**features);
                    write_result(&predictions.get(scored), post_enrich, &mut out.buffer);
                    scored += 1;
                }
                Prepared::Ignored(code, features) => {
                    let post_enrich = self.return_post_enrich.then_some(features);
                    write_ignored(
                        code,
                        "the record was ignored by enrichment",
                        post_enrich,
                        &mut out.buffer,
                    );
                }
            }
            out.items.push(start..out.buffer.len());
        }
        out.predict_micros = start.elapsed().as_micros() as u64;
        Ok(out)
    }

    /// Scores the records as one batch; an error names the first record that fails (index
    /// in `records`).
    fn score<R: apinode_scoring::Record>(
        &self,
        records: &[R],
    ) -> std::result::Result<Predictions, (usize, apinode_scoring::Error)> {
        match self.model.predict_records(records) {
            Ok(predictions) => Ok(predictions),
            Err(error) => {
                // The error path only: score one by one to name the record without the
                // batch's row prefix.
                for (i, record) in records.iter().enumerate() {
                    if let Err(e) = self.model.predict(record) {
                        return Err((i, e));
                    }
                }
                Err((0, error))
            }
        }
    }
}

/// A record's features as the model reads them, from a record parsed without a tree: the same
/// cells as the `Map` of the same JSON gives (`Cell::Json` flattened).
struct FeatureCells<'a>(&'a dyn apinode_lookup::Record);

impl apinode_scoring::Record for FeatureCells<'_> {
    fn cell(&self, column: &str, _: usize) -> Cell<'_> {
        match self.0.field(column) {
            None | Some(JsonRef::Null) => Cell::Null,
            Some(JsonRef::Bool(b)) => Cell::Bool(b),
            Some(JsonRef::Number(n)) => match n.as_i64() {
                Some(i) => Cell::Int(i),
                None => Cell::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Some(JsonRef::Str(s)) => Cell::Str(s),
            Some(JsonRef::Other(v)) => Cell::Json(v),
        }
    }
}

/// The official client always sends `explanations`, with nulls when the caller did not ask;
/// an explicit request for them is refused rather than silently answered without them.
pub(crate) fn refuse_explanations(body: &Value) -> Result<()> {
    match body.pointer("/explanations/enabled") {
        None | Some(Value::Null | Value::Bool(false)) => Ok(()),
        Some(_) => Err(Error::InvalidQuery {
            location: "explanations.enabled".into(),
            message: "individual explanations are not computed by this node; send null or \
                      false"
                .into(),
        }),
    }
}

/// The `features` object of a query or an item; `location` names it in the error.
pub(crate) fn features_of<'a>(value: &'a Value, location: &str) -> Result<&'a Map<String, Value>> {
    value
        .get("features")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::InvalidQuery {
            location: location.to_owned(),
            message: "required: an object of feature values".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn result(prediction: &Prediction, post_enrich: Option<&Map<String, Value>>) -> Value {
        let mut out = Vec::new();
        write_result(prediction, post_enrich, &mut out);
        serde_json::from_slice(&out).expect("a result is valid JSON")
    }

    #[test]
    fn results_have_the_protocol_shape() {
        let class = Prediction {
            prediction: Some(PredictedValue::Class(Arc::from("y\"es"))),
            probabilities: vec![(Arc::from("no"), 0.25), (Arc::from("y\"es"), 0.75)],
            anomaly_score: None,
            ignored: None,
        };
        assert_eq!(
            result(&class, None),
            json!({"prediction": "y\"es", "probas": {"no": 0.25, "y\"es": 0.75}, "ignored": false})
        );
        let value = Prediction {
            prediction: Some(PredictedValue::Value(f64::NAN)),
            probabilities: vec![],
            anomaly_score: None,
            ignored: None,
        };
        assert_eq!(
            result(&value, None),
            json!({"prediction": null, "ignored": false})
        );
        let cluster = Prediction {
            prediction: Some(PredictedValue::ClusterIndex(2)),
            probabilities: vec![],
            anomaly_score: Some(-0.125),
            ignored: None,
        };
        let features = json!({"age": 3}).as_object().unwrap().clone();
        assert_eq!(
            result(&cluster, Some(&features)),
            json!({"prediction": "cluster_2", "anomalyScore": -0.125, "ignored": false,
                   "postEnrich": {"age": 3}})
        );
        let dropped = Prediction {
            prediction: None,
            probabilities: vec![],
            anomaly_score: None,
            ignored: Some(IgnoreReason::DropRows {
                column: "age".into(),
            }),
        };
        let json = result(&dropped, None);
        assert_eq!(json["ignored"], json!(true));
        assert_eq!(json["ignoreReason"], json!("ROW_DROPPED_BY_MODEL"));
        assert!(json["ignoreMessage"].as_str().unwrap().contains("`age`"));
    }
}
