//! `apinode-scoring`: a native scorer for Dataiku "visual ML" model exports, giving the
//! predictions the official Python reader `dataiku-scoring` gives, without Python.
//!
//! [`Model::load`] reads a model folder, a `model.zip`, or an export zip (or folder) holding a
//! `model.zip`, and compiles it: the preprocessing becomes steps over slot indexes, trees become
//! flat arrays. [`Model::predict`] scores one [`Record`] (a JSON object, or a positional row);
//! [`Model::predict_batch`] scores a columnar [`Batch`], resolving column names once and reusing
//! its buffers row after row. [`Model::describe`] tells what the model is.
//!
//! What it is not: it does no I/O beyond reading the model, runs no async code, and knows
//! nothing of HTTP, bundles or services. It does not score MLflow imports, custom Python models,
//! deep learning, SVMs, KNN or naive Bayes (neither does `dataiku-scoring`).
//!
//! Invariants: a loaded [`Model`] is immutable and `Send + Sync`; every final feature of the
//! algorithm has a producer (checked at load, where the reference silently scores with NaN);
//! load errors name the file and field, the algorithm or the preprocessing at fault. Where the
//! reference behaves oddly, this crate copies it unless it is a plain bug; `docs/scoring.md`
//! lists each case.

mod algo;
mod archive;
mod dates;
mod error;
mod input;
mod json;
mod mathf;
mod model;
mod pipeline;
mod text;
mod tree;

pub use error::{Error, Result};
pub use input::{Batch, Cell, Column, Record};
pub use model::{
    IgnoreReason, InputFeature, Model, ModelSummary, PredictedValue, Prediction, Predictions, Task,
};
pub use pipeline::StepSummary;

/// The reference's names for the preprocessing steps, in the order they run.
pub const PREPROCESSING_STEPS: &[&str] = pipeline::STEP_KINDS;

#[cfg(test)]
mod tests {
    #[test]
    fn a_model_is_shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<super::Model>();
        send_sync::<super::Predictions>();
    }
}
