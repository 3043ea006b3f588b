//! A predictor's answer, row by row.

use serde_json::{Map, Value};

/// What a predictor returned for a batch of records, in the records' order.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// The class labels (the probas columns), in the order of every row's `probas`; empty when
    /// the predictor gave no probabilities (regression).
    pub classes: Vec<String>,
    pub rows: Vec<PredictedRow>,
}

/// One record's result.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictedRow {
    /// The prediction (a label, a number); `None` when the predictor returned NaN, None or NA
    /// for the row: "not predicted".
    pub prediction: Option<Value>,
    /// One probability per class of [`Predictions::classes`]; `None` where it was NaN. Empty
    /// when there are no probabilities.
    pub probas: Vec<Option<f64>>,
    /// The row's custom keys (Dataiku's `customKeys`), when the predictor returned some.
    pub custom_keys: Option<Map<String, Value>>,
}

impl Predictions {
    /// Row `row`'s probabilities with their class labels.
    pub fn probas(&self, row: usize) -> impl Iterator<Item = (&str, Option<f64>)> {
        let probas = self.rows.get(row).map_or(&[][..], |r| &r.probas[..]);
        self.classes
            .iter()
            .map(String::as_str)
            .zip(probas.iter().copied())
    }
}
