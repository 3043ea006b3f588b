//! Reading the export's JSON files as Python's `json` module does, with errors that name the
//! file and the field.
//!
//! Python writes `NaN` for a float NaN, which is not JSON; such tokens (outside strings) are read
//! as `null`, and every number field of the format reads `null` as NaN ([`Num`]).

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};

/// A number field: a JSON number, or `null` / `NaN` read as NaN.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Num(pub(crate) f64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumVisitor)
    }
}

struct NumVisitor;

impl serde::de::Visitor<'_> for NumVisitor {
    type Value = Num;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number (or null, NaN, Infinity)")
    }

    fn visit_f64<E>(self, v: f64) -> Result<Num, E> {
        Ok(Num(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Num, E> {
        Ok(Num(v as f64))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Num, E> {
        Ok(Num(v as f64))
    }

    fn visit_unit<E>(self) -> Result<Num, E> {
        Ok(Num(f64::NAN))
    }

    fn visit_none<E>(self) -> Result<Num, E> {
        Ok(Num(f64::NAN))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Num, E> {
        // Only the tokens the sanitizer writes for Python's bare `Infinity` / `-Infinity`.
        match v {
            INF => Ok(Num(f64::INFINITY)),
            NEG_INF => Ok(Num(f64::NEG_INFINITY)),
            _ => Err(E::invalid_type(serde::de::Unexpected::Str(v), &self)),
        }
    }
}

const INF: &str = "\u{1}Infinity";
const NEG_INF: &str = "\u{1}-Infinity";

pub(crate) fn nums(v: &[Num]) -> Vec<f64> {
    v.iter().map(|n| n.0).collect()
}

/// Parses `bytes` (the content of `file`) into `T`.
pub(crate) fn parse<T: DeserializeOwned>(file: &str, bytes: &[u8]) -> Result<T> {
    let text = nan_to_null(bytes);
    let mut de = serde_json::Deserializer::from_slice(&text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        Error::Json {
            file: file.to_owned(),
            field,
            detail: e.into_inner().to_string(),
        }
    })?;
    de.end().map_err(|e| Error::Json {
        file: file.to_owned(),
        field: String::new(),
        detail: e.to_string(),
    })?;
    Ok(value)
}

/// Rewrites the bare tokens Python writes for special floats, outside strings: `NaN` as `null`,
/// `Infinity` and `-Infinity` as marked strings that only [`Num`] reads (error columns after
/// one shift).
fn nan_to_null(bytes: &[u8]) -> Cow<'_, [u8]> {
    if !bytes.windows(3).any(|w| w == b"NaN" || w == b"Inf") {
        return Cow::Borrowed(bytes);
    }
    let mut out = bytes.to_vec();
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while i < out.len() {
        let c = out[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
        } else if c == b'"' {
            in_string = true;
        } else if out[i..].starts_with(b"NaN") {
            out.splice(i..i + 3, b"null".iter().copied());
            i += 4;
            continue;
        } else if out[i..].starts_with(b"-Infinity") || out[i..].starts_with(b"Infinity") {
            let neg = out[i] == b'-';
            let len = if neg { 9 } else { 8 };
            let marked = format!("\"\\u0001{}Infinity\"", if neg { "-" } else { "" });
            out.splice(i..i + len, marked.bytes());
            i += marked.len();
            continue;
        }
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_tokens_outside_strings_become_null() {
        let v: Vec<Num> = parse("x.json", br#"[1.5, NaN, null]"#).unwrap();
        assert_eq!(v[0].0, 1.5);
        assert!(v[1].0.is_nan() && v[2].0.is_nan());
        let v: Vec<Num> = parse("x.json", br#"[Infinity, -Infinity, 1]"#).unwrap();
        assert_eq!(v[0].0, f64::INFINITY);
        assert_eq!(v[1].0, f64::NEG_INFINITY);
        assert!(parse::<Vec<Num>>("x.json", br#"["Infinity"]"#).is_err());
        let s: Vec<String> = parse("x.json", br#"["NaN", "a\"NaN"]"#).unwrap();
        assert_eq!(s, vec!["NaN".to_owned(), "a\"NaN".to_owned()]);
    }

    #[test]
    fn errors_name_file_and_field() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            a: Vec<Num>,
        }
        let e = parse::<T>("f.json", br#"{"a": [1, "x"]}"#).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("f.json") && msg.contains("a[1]"), "{msg}");
        let e = parse::<T>("f.json", br#"{"a": [1, 2"#).unwrap_err();
        assert!(e.to_string().contains("EOF"), "{e}");
    }
}
