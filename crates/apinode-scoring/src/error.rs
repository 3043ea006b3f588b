//! The crate's one error type. Load errors name the file and the field (or the algorithm, the
//! preprocessing, the feature) at fault; scoring errors name the input column and the value.

use std::path::PathBuf;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong loading a model export or scoring a record.
///
/// Variants whose name starts with a file problem (`Io`, `NotAZip`, `MissingFile`, `Json`, `Gzip`)
/// mean the export is damaged or incomplete: export it again. `Unsupported*` means the export is
/// well-formed but uses something this scorer does not implement. `Invalid` means the files
/// disagree with each other. `InvalidInput` is the caller's record, not the model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading a file of the file system failed.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A zip archive (the export, or the `model.zip` inside it) cannot be read.
    #[error("`{origin}` is not a readable zip archive: {detail}")]
    NotAZip { origin: String, detail: String },

    /// The path is neither a model folder, nor a `model.zip`, nor an export holding one.
    #[error(
        "`{origin}` is not a Dataiku model export: it holds neither `dss_pipeline_meta.json` \
         (a model folder or model.zip) nor `model.zip` (an export)"
    )]
    NotAModel { origin: String },

    /// A file the model needs is absent.
    #[error("`{file}` is missing from {origin}; it is needed for {needed_for}")]
    MissingFile {
        origin: String,
        file: String,
        needed_for: String,
    },

    /// A JSON file is truncated, is not JSON, or has a field of the wrong type.
    #[error("`{file}`: {detail}{}", field_suffix(field))]
    Json {
        file: String,
        /// The path of the offending field (`trees[3].threshold[7]`), empty for syntax errors.
        field: String,
        detail: String,
    },

    /// `dss_pipeline_model.gz` is not a readable gzip stream.
    #[error("`{file}` is not a readable gzip stream: {detail}")]
    Gzip { file: String, detail: String },

    /// The model's algorithm is not one this scorer implements.
    #[error(
        "`{file}`: algorithm `{name}` is not supported (supported: {supported}); \
         dataiku-scoring does not support it either unless listed"
    )]
    UnsupportedAlgorithm {
        file: String,
        name: String,
        supported: &'static str,
    },

    /// The model's task (`type`) is not one this scorer implements.
    #[error("`{file}`: prediction type `{name}` is not supported (supported: {supported})")]
    UnsupportedTask {
        file: String,
        name: String,
        supported: &'static str,
    },

    /// A preprocessing or option is present that this scorer does not implement.
    #[error("`{file}`: {what} is not supported")]
    UnsupportedPreprocessing { file: String, what: String },

    /// The model is an MLflow import, which only MLflow itself can score.
    #[error("`{origin}` is an MLflow model (mlflow_imported_model.json); score it with MLflow")]
    MlflowModel { origin: String },

    /// The files are well-formed but inconsistent (lengths differ, a tree lacks a child, ...).
    #[error("`{file}`{}: {reason}", field_suffix(field))]
    Invalid {
        file: String,
        field: String,
        reason: String,
    },

    /// A final feature of the algorithm is produced by no preprocessing step: the export uses a
    /// preprocessing this scorer (and dataiku-scoring) does not know, and would score with NaN.
    #[error(
        "feature `{feature}` (listed in {listed_in}) is produced by no preprocessing step of \
         the export; the model would see it as missing on every row"
    )]
    UnproducedFeature { feature: String, listed_in: String },

    /// A binary classifier without `user_meta.json` has no decision threshold.
    #[error(
        "binary classification model has no decision threshold: `user_meta.json` (with \
         `activeClassifierThreshold`) is missing from {origin}"
    )]
    MissingThreshold { origin: String },

    /// A record's value cannot be used for its column.
    #[error("{}input column `{column}`: {reason} (got {value})", row_prefix(*row))]
    InvalidInput {
        /// The row of the batch, when scoring a batch.
        row: Option<usize>,
        column: String,
        value: String,
        reason: String,
    },

    /// A positional row does not have one value per input column.
    #[error("{}a positional row has {len} values; the model's input columns are {columns}", row_prefix(*row))]
    RowLength {
        row: Option<usize>,
        len: usize,
        columns: String,
    },

    /// A batch's columns disagree about the number of rows.
    #[error("batch column `{column}` has {len} rows, but the batch has {expected}")]
    BatchShape {
        column: String,
        len: usize,
        expected: usize,
    },
}

fn field_suffix(field: &str) -> String {
    if field.is_empty() || field == "." {
        String::new()
    } else {
        format!(", field `{field}`")
    }
}

fn row_prefix(row: Option<usize>) -> String {
    match row {
        Some(r) => format!("row {r}, "),
        None => String::new(),
    }
}

impl Error {
    /// Sets the batch row of an [`Error::InvalidInput`]; other errors are returned unchanged.
    pub(crate) fn at_row(self, r: usize) -> Self {
        match self {
            Error::InvalidInput {
                column,
                value,
                reason,
                ..
            } => Error::InvalidInput {
                row: Some(r),
                column,
                value,
                reason,
            },
            Error::RowLength { len, columns, .. } => Error::RowLength {
                row: Some(r),
                len,
                columns,
            },
            other => other,
        }
    }

    pub(crate) fn invalid(file: &str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            file: file.to_owned(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}
