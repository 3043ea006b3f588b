//! The frames between the node and a worker: a 4-byte big-endian length, then that many bytes
//! of UTF-8 JSON, both ways over the worker's pipes.
//!
//! Length prefixes rather than newline-delimited JSON: the reader knows each frame's size before
//! reading it (one `read_exact`, no scanning for a delimiter), a frame cut short by a dying
//! worker is detected as such, and a frame can hold any bytes. Both scripts (Python, R) frame
//! the same way.
//!
//! Node → worker: first `{"kind", "code_file", "entry", "folders", "data_folder"}` (init), then
//! `{"args": {...}}` (functions) or `{"records": [...]}` (predictors), one at a time.
//! Worker → node: `{"ready": {...}}` or `{"error": {...}}` for the init, then exactly one
//! `{"ok": ...}` or `{"error": {"type", "message", "traceback", "http_status"}}` per call.

use crate::error::{Error, Result};
use crate::predict::{PredictedRow, Predictions};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::path::Path;

/// Frames longer than this are a broken worker, not a big answer.
pub(crate) const MAX_FRAME: usize = 1 << 30;

#[derive(Serialize)]
pub(crate) struct Init<'a> {
    pub(crate) kind: &'static str,
    pub(crate) code_file: &'a Path,
    pub(crate) entry: Option<&'a str>,
    pub(crate) folders: &'a [std::path::PathBuf],
    pub(crate) data_folder: Option<&'a Path>,
}

/// A frame `{"<field>": <payload>}`, length prefix included, ready to write in one call.
/// `opening` is the byte the payload must start with (`{` for arguments, `[` for records).
pub(crate) fn frame<P: Serialize + ?Sized>(
    field: &str,
    payload: &P,
    opening: u8,
) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(128);
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(b"{\"");
    buf.extend_from_slice(field.as_bytes());
    buf.extend_from_slice(b"\":");
    let start = buf.len();
    serde_json::to_writer(&mut buf, payload).map_err(|e| Error::InvalidCall {
        detail: format!("`{field}` cannot be serialized: {e}"),
    })?;
    if buf.get(start) != Some(&opening) {
        let what = if opening == b'{' {
            "a JSON object"
        } else {
            "a JSON array"
        };
        return Err(Error::InvalidCall {
            detail: format!("`{field}` must be {what}"),
        });
    }
    buf.push(b'}');
    seal(buf)
}

/// Writes the length prefix of a frame built behind 4 placeholder bytes.
pub(crate) fn seal(mut buf: Vec<u8>) -> Result<Vec<u8>> {
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(Error::InvalidCall {
            detail: format!("a call of {len} bytes is too large"),
        });
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

pub(crate) fn init_frame(init: &Init<'_>) -> Result<Vec<u8>> {
    let mut buf = vec![0; 4];
    serde_json::to_writer(&mut buf, init).map_err(|e| Error::InvalidCall {
        detail: format!("worker settings: {e}"),
    })?;
    seal(buf)
}

/// A worker's reply; `T` is what `ok` holds for the call's kind.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Reply<T> {
    Ok(T),
    Error(ErrorReply),
    Ready(Value),
}

#[derive(Debug, Deserialize)]
pub(crate) struct ErrorReply {
    #[serde(rename = "type")]
    pub(crate) exception: String,
    pub(crate) message: String,
    #[serde(default)]
    pub(crate) traceback: String,
    #[serde(default)]
    pub(crate) http_status: Option<u16>,
}

impl ErrorReply {
    pub(crate) fn into_error(self) -> Error {
        Error::UserCode {
            exception: self.exception,
            message: self.message,
            traceback: self.traceback,
            http_status: self.http_status,
        }
    }
}

/// What parsing a call's reply can give: the answer, the user code's error (the worker is
/// fine), or a protocol violation (the worker must go).
pub(crate) enum Parsed<T> {
    Answer(T),
    UserError(Error),
    Broken(String),
}

pub(crate) fn parse_reply<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Parsed<T> {
    match serde_json::from_slice::<Reply<T>>(bytes) {
        Ok(Reply::Ok(value)) => Parsed::Answer(value),
        Ok(Reply::Error(error)) => Parsed::UserError(error.into_error()),
        Ok(Reply::Ready(_)) => Parsed::Broken("a `ready` frame in answer to a call".into()),
        Err(e) => Parsed::Broken(format!("unreadable reply ({e}): {}", preview(bytes))),
    }
}

pub(crate) fn parse_run(bytes: &[u8]) -> Parsed<Box<RawValue>> {
    parse_reply(bytes)
}

/// The predictor's answer as the worker sends it: columns, validated into rows here.
#[derive(Deserialize)]
pub(crate) struct PredictReply {
    predictions: Vec<Value>,
    #[serde(default)]
    classes: Option<Vec<String>>,
    #[serde(default)]
    probas: Option<Vec<Vec<Option<f64>>>>,
    #[serde(default)]
    custom_keys: Option<Vec<Option<Map<String, Value>>>>,
}

pub(crate) fn parse_predict(bytes: &[u8], rows: usize) -> Parsed<Predictions> {
    let reply: PredictReply = match parse_reply(bytes) {
        Parsed::Answer(reply) => reply,
        Parsed::UserError(e) => return Parsed::UserError(e),
        Parsed::Broken(detail) => return Parsed::Broken(detail),
    };
    // The worker scripts check these lengths and report them as user errors; a mismatch here
    // is a worker bug.
    if reply.predictions.len() != rows {
        return Parsed::Broken(format!(
            "{} predictions for {rows} rows",
            reply.predictions.len()
        ));
    }
    let classes = reply.classes.unwrap_or_default();
    let mut probas = reply.probas.map(Vec::into_iter);
    let mut custom_keys = reply.custom_keys.map(Vec::into_iter);
    let mut out = Vec::with_capacity(rows);
    for prediction in reply.predictions {
        let row_probas = match probas.as_mut().map(Iterator::next) {
            None => Vec::new(),
            Some(Some(p)) if p.len() == classes.len() => p,
            Some(_) => return Parsed::Broken("probabilities do not match the classes".into()),
        };
        let keys = match custom_keys.as_mut().map(Iterator::next) {
            None => None,
            Some(Some(keys)) => keys,
            Some(None) => return Parsed::Broken("fewer custom keys than rows".into()),
        };
        out.push(PredictedRow {
            prediction: if prediction.is_null() {
                None
            } else {
                Some(prediction)
            },
            probas: row_probas,
            custom_keys: keys,
        });
    }
    Parsed::Answer(Predictions { classes, rows: out })
}

/// The start of a frame, for error messages.
pub(crate) fn preview(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
    if bytes.len() > 200 {
        format!("{text}...")
    } else {
        text.into_owned()
    }
}

#[cfg(test)]
mod tests;
