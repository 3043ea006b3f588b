//! Key columns and key values: conversion of JSON inputs to a column's type, hashing that
//! gives a table row and a query value of the same key the same hash, and equality.

use crate::error::{Error, Result};
use crate::record::JsonRef;
use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Date32Array, Float64Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use arrow_schema::{DataType, TimeUnit};
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use std::borrow::Cow;
use std::hash::Hasher;

/// The column types a key may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    String,
    Int64,
    Float64,
    Boolean,
    Date,
    Timestamp,
}

impl KeyType {
    pub fn of(data_type: &DataType) -> Option<KeyType> {
        Some(match data_type {
            DataType::Utf8 => KeyType::String,
            DataType::Int64 => KeyType::Int64,
            DataType::Float64 => KeyType::Float64,
            DataType::Boolean => KeyType::Boolean,
            DataType::Date32 => KeyType::Date,
            DataType::Timestamp(TimeUnit::Microsecond, _) => KeyType::Timestamp,
            _ => return None,
        })
    }

    /// The Arrow type a column of this type has in a bundled table.
    pub fn data_type(self) -> DataType {
        match self {
            KeyType::String => DataType::Utf8,
            KeyType::Int64 => DataType::Int64,
            KeyType::Float64 => DataType::Float64,
            KeyType::Boolean => DataType::Boolean,
            KeyType::Date => DataType::Date32,
            KeyType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }

    /// Whether `value` is of the variant this key type takes in [`crate::Lookup::find_key`].
    pub fn accepts(self, value: &KeyValue<'_>) -> bool {
        matches!(
            (self, value),
            (KeyType::String, KeyValue::Str(_))
                | (
                    KeyType::Int64 | KeyType::Date | KeyType::Timestamp,
                    KeyValue::Int(_)
                )
                | (KeyType::Float64, KeyValue::Float(_))
                | (KeyType::Boolean, KeyValue::Bool(_))
        )
    }

    pub fn describe(self) -> &'static str {
        match self {
            KeyType::String => "a string",
            KeyType::Int64 => "an integer",
            KeyType::Float64 => "a number",
            KeyType::Boolean => "a boolean",
            KeyType::Date => "a date (YYYY-MM-DD)",
            KeyType::Timestamp => "a timestamp (ISO 8601)",
        }
    }
}

/// A key value in its column's type, for [`crate::Lookup::find_key`]: strings for string
/// columns, `Int` for integer columns, dates (days since 1970-01-01) and timestamps
/// (microseconds since the epoch, UTC), `Float` for float columns, `Bool` for booleans.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyValue<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// Outcome of converting an input: a usable value, or one that can never match (NaN).
pub(crate) enum Converted<'a> {
    Value(KeyValue<'a>),
    NeverMatches,
}

/// Converts a JSON value to a key of `key_type`. Strings holding numbers, booleans or dates
/// are accepted, because clients often send every feature as a string; numbers are accepted
/// for string keys under their JSON text.
pub(crate) fn convert<'a>(
    input: &str,
    key_type: KeyType,
    value: impl Into<JsonRef<'a>>,
) -> Result<Converted<'a>> {
    let value = value.into();
    let invalid = || Error::InvalidKey {
        input: input.to_owned(),
        expected: key_type.describe(),
        got: describe_json(value),
    };
    let converted = match (key_type, value) {
        (KeyType::String, JsonRef::Str(s)) => KeyValue::Str(Cow::Borrowed(s)),
        (KeyType::String, JsonRef::Number(n)) => KeyValue::Str(Cow::Owned(n.to_string())),
        (KeyType::String, JsonRef::Bool(b)) => {
            KeyValue::Str(Cow::Borrowed(if b { "true" } else { "false" }))
        }
        (KeyType::Int64, JsonRef::Number(n)) => {
            if let Some(i) = n.as_i64() {
                KeyValue::Int(i)
            } else {
                let f = n.as_f64().ok_or_else(invalid)?;
                if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 {
                    KeyValue::Int(f as i64)
                } else {
                    return Err(invalid());
                }
            }
        }
        (KeyType::Int64, JsonRef::Str(s)) => {
            KeyValue::Int(s.trim().parse().map_err(|_| invalid())?)
        }
        (KeyType::Float64, JsonRef::Number(n)) => KeyValue::Float(n.as_f64().ok_or_else(invalid)?),
        (KeyType::Float64, JsonRef::Str(s)) => {
            KeyValue::Float(s.trim().parse().map_err(|_| invalid())?)
        }
        (KeyType::Boolean, JsonRef::Bool(b)) => KeyValue::Bool(b),
        (KeyType::Boolean, JsonRef::Str(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => KeyValue::Bool(true),
            "false" => KeyValue::Bool(false),
            _ => return Err(invalid()),
        },
        (KeyType::Date, JsonRef::Str(s)) => KeyValue::Int(parse_date(s).ok_or_else(invalid)?),
        (KeyType::Timestamp, JsonRef::Str(s)) => {
            KeyValue::Int(parse_timestamp(s).ok_or_else(invalid)?)
        }
        _ => return Err(invalid()),
    };
    if let KeyValue::Float(f) = converted
        && f.is_nan()
    {
        return Ok(Converted::NeverMatches);
    }
    Ok(Converted::Value(converted))
}

fn describe_json(value: JsonRef<'_>) -> String {
    let text = value.to_string();
    if text.len() > 80 {
        let cut = text.char_indices().nth(77).map_or(text.len(), |(i, _)| i);
        format!("{}...", &text[..cut])
    } else {
        text
    }
}

const EPOCH: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");

pub(crate) fn parse_date(s: &str) -> Option<i64> {
    let date = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()?;
    Some((date - EPOCH).num_days())
}

pub(crate) fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    let days = parse_date(s)?;
    days.checked_mul(86_400_000_000)
}

/// A column of one of the types lookups support, downcast once: key columns and output
/// columns alike.
#[derive(Debug, Clone)]
pub(crate) enum TypedColumn {
    Str(StringArray),
    Int(Int64Array),
    Float(Float64Array),
    Bool(BooleanArray),
    Date(Date32Array),
    Timestamp(TimestampMicrosecondArray),
}

impl TypedColumn {
    pub(crate) fn new(array: &ArrayRef) -> Option<TypedColumn> {
        Some(match KeyType::of(array.data_type())? {
            KeyType::String => TypedColumn::Str(array.as_string::<i32>().clone()),
            KeyType::Int64 => TypedColumn::Int(array.as_primitive::<Int64Type>().clone()),
            KeyType::Float64 => TypedColumn::Float(array.as_primitive::<Float64Type>().clone()),
            KeyType::Boolean => TypedColumn::Bool(array.as_boolean().clone()),
            KeyType::Date => TypedColumn::Date(array.as_primitive::<Date32Type>().clone()),
            KeyType::Timestamp => {
                TypedColumn::Timestamp(array.as_primitive::<TimestampMicrosecondType>().clone())
            }
        })
    }

    pub(crate) fn array(&self) -> ArrayRef {
        match self {
            TypedColumn::Str(a) => std::sync::Arc::new(a.clone()),
            TypedColumn::Int(a) => std::sync::Arc::new(a.clone()),
            TypedColumn::Float(a) => std::sync::Arc::new(a.clone()),
            TypedColumn::Bool(a) => std::sync::Arc::new(a.clone()),
            TypedColumn::Date(a) => std::sync::Arc::new(a.clone()),
            TypedColumn::Timestamp(a) => std::sync::Arc::new(a.clone()),
        }
    }

    pub(crate) fn key_type(&self) -> KeyType {
        match self {
            TypedColumn::Str(_) => KeyType::String,
            TypedColumn::Int(_) => KeyType::Int64,
            TypedColumn::Float(_) => KeyType::Float64,
            TypedColumn::Bool(_) => KeyType::Boolean,
            TypedColumn::Date(_) => KeyType::Date,
            TypedColumn::Timestamp(_) => KeyType::Timestamp,
        }
    }

    /// Whether the row can be a key: not NULL, not NaN.
    pub(crate) fn is_indexable(&self, row: usize) -> bool {
        match self {
            TypedColumn::Str(a) => a.is_valid(row),
            TypedColumn::Int(a) => a.is_valid(row),
            TypedColumn::Float(a) => a.is_valid(row) && !a.value(row).is_nan(),
            TypedColumn::Bool(a) => a.is_valid(row),
            TypedColumn::Date(a) => a.is_valid(row),
            TypedColumn::Timestamp(a) => a.is_valid(row),
        }
    }

    pub(crate) fn hash_row(&self, row: usize, hasher: &mut impl Hasher) {
        match self {
            TypedColumn::Str(a) => hash_str(a.value(row), hasher),
            TypedColumn::Int(a) => hasher.write_i64(a.value(row)),
            TypedColumn::Float(a) => hasher.write_u64(float_bits(a.value(row))),
            TypedColumn::Bool(a) => hasher.write_u8(a.value(row) as u8),
            TypedColumn::Date(a) => hasher.write_i64(i64::from(a.value(row))),
            TypedColumn::Timestamp(a) => hasher.write_i64(a.value(row)),
        }
    }

    pub(crate) fn rows_equal(&self, a: usize, b: usize) -> bool {
        match self {
            TypedColumn::Str(x) => x.value(a) == x.value(b),
            TypedColumn::Int(x) => x.value(a) == x.value(b),
            TypedColumn::Float(x) => float_bits(x.value(a)) == float_bits(x.value(b)),
            TypedColumn::Bool(x) => x.value(a) == x.value(b),
            TypedColumn::Date(x) => x.value(a) == x.value(b),
            TypedColumn::Timestamp(x) => x.value(a) == x.value(b),
        }
    }

    pub(crate) fn equals(&self, row: usize, value: &KeyValue<'_>) -> bool {
        match (self, value) {
            (TypedColumn::Str(a), KeyValue::Str(s)) => a.value(row) == s.as_ref(),
            (TypedColumn::Int(a), KeyValue::Int(i)) => a.value(row) == *i,
            (TypedColumn::Float(a), KeyValue::Float(f)) => {
                float_bits(a.value(row)) == float_bits(*f)
            }
            (TypedColumn::Bool(a), KeyValue::Bool(b)) => a.value(row) == *b,
            (TypedColumn::Date(a), KeyValue::Int(i)) => i64::from(a.value(row)) == *i,
            (TypedColumn::Timestamp(a), KeyValue::Int(i)) => a.value(row) == *i,
            _ => false,
        }
    }
}

/// `a == b`, without a `memcmp` call for keys of 4 to 16 bytes (most keys): two overlapping
/// word compares. Confirming a probe's key is on the hot path of every lookup.
#[inline]
fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    fn word<const N: usize>(s: &[u8], at: usize) -> [u8; N] {
        s.get(at..at + N)
            .and_then(|w| w.try_into().ok())
            .unwrap_or([0; N])
    }
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        8..=16 => word::<8>(a, 0) == word::<8>(b, 0) && word::<8>(a, n - 8) == word::<8>(b, n - 8),
        4..=7 => word::<4>(a, 0) == word::<4>(b, 0) && word::<4>(a, n - 4) == word::<4>(b, n - 4),
        _ => a == b,
    }
}

/// A string key's location in its array's value buffer, for the index's slot: offset in the
/// high half, length in the low half (Arrow's `i32` offsets fit both).
fn string_locator(offset: i32, length: i32) -> u64 {
    (offset as u32 as u64) << 32 | length as u32 as u64
}

impl TypedColumn {
    /// What the index keeps in a row's slot so that a single-column key can be confirmed
    /// without reading the row's offsets: the value's bits for a fixed-width key (as
    /// [`KeyValue`] carries them), the byte range of a string.
    pub(crate) fn locator(&self, row: usize) -> u64 {
        match self {
            TypedColumn::Str(a) => {
                let offsets = a.value_offsets();
                string_locator(offsets[row], offsets[row + 1] - offsets[row])
            }
            TypedColumn::Int(a) => a.value(row) as u64,
            TypedColumn::Float(a) => float_bits(a.value(row)),
            TypedColumn::Bool(a) => u64::from(a.value(row)),
            TypedColumn::Date(a) => i64::from(a.value(row)) as u64,
            TypedColumn::Timestamp(a) => a.value(row) as u64,
        }
    }

    /// Whether `value` is the key a slot's `locator` describes: [`TypedColumn::equals`] on the
    /// row, without reading the row's offsets.
    #[inline]
    pub(crate) fn matches_locator(&self, locator: u64, value: &KeyValue<'_>) -> bool {
        match (self, value) {
            (TypedColumn::Str(a), KeyValue::Str(s)) => {
                let (offset, length) = ((locator >> 32) as usize, (locator as u32) as usize);
                length == s.len()
                    && a.value_data()
                        .get(offset..offset + length)
                        .is_some_and(|stored| bytes_eq(stored, s.as_bytes()))
            }
            (
                TypedColumn::Int(_) | TypedColumn::Date(_) | TypedColumn::Timestamp(_),
                KeyValue::Int(i),
            ) => locator == *i as u64,
            (TypedColumn::Float(_), KeyValue::Float(f)) => locator == float_bits(*f),
            (TypedColumn::Bool(_), KeyValue::Bool(b)) => locator == u64::from(*b),
            _ => false,
        }
    }
}

pub(crate) fn hash_value(value: &KeyValue<'_>, hasher: &mut impl Hasher) {
    match value {
        KeyValue::Str(s) => hash_str(s, hasher),
        KeyValue::Int(i) => hasher.write_i64(*i),
        KeyValue::Float(f) => hasher.write_u64(float_bits(*f)),
        KeyValue::Bool(b) => hasher.write_u8(*b as u8),
    }
}

fn hash_str(s: &str, hasher: &mut impl Hasher) {
    hasher.write(s.as_bytes());
    // A terminator keeps ("ab", "c") and ("a", "bc") apart in composite keys.
    hasher.write_u8(0xff);
}

/// Bits of a float with -0.0 folded into 0.0, so the two compare equal as SQL does.
fn float_bits(f: f64) -> u64 {
    if f == 0.0 { 0 } else { f.to_bits() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn conv(t: KeyType, v: Value) -> Result<KeyValue<'static>> {
        let leaked: &'static Value = Box::leak(Box::new(v));
        match convert("k", t, leaked)? {
            Converted::Value(v) => Ok(v),
            Converted::NeverMatches => Ok(KeyValue::Str(Cow::Borrowed("<never>"))),
        }
    }

    #[test]
    fn converts_lenient_inputs() {
        assert_eq!(
            conv(KeyType::Int64, json!("42")).unwrap(),
            KeyValue::Int(42)
        );
        assert_eq!(
            conv(KeyType::Int64, json!(42.0)).unwrap(),
            KeyValue::Int(42)
        );
        assert_eq!(
            conv(KeyType::String, json!(7)).unwrap(),
            KeyValue::Str("7".into())
        );
        assert_eq!(
            conv(KeyType::Boolean, json!("TRUE")).unwrap(),
            KeyValue::Bool(true)
        );
        assert_eq!(
            conv(KeyType::Date, json!("1970-01-02")).unwrap(),
            KeyValue::Int(1)
        );
        assert_eq!(
            conv(KeyType::Timestamp, json!("1970-01-01T00:00:01Z")).unwrap(),
            KeyValue::Int(1_000_000)
        );
    }

    #[test]
    fn rejects_what_cannot_be_a_key_and_says_why() {
        let err = conv(KeyType::Int64, json!("abc")).unwrap_err().to_string();
        assert_eq!(err, "lookup key `k` expects an integer, got \"abc\"");
        assert!(conv(KeyType::Int64, json!(1.5)).is_err());
        assert!(conv(KeyType::Date, json!("2024-13-01")).is_err());
        assert!(conv(KeyType::Boolean, json!({"a": 1})).is_err());
    }

    #[test]
    fn short_and_long_byte_strings_compare_exactly() {
        let texts: Vec<String> = (0..40)
            .map(|n| "abcdefghij".repeat(4)[..n].to_owned())
            .collect();
        for a in &texts {
            for b in &texts {
                assert_eq!(bytes_eq(a.as_bytes(), b.as_bytes()), a == b, "{a:?} {b:?}");
            }
            // One byte changed anywhere is seen.
            for i in 0..a.len() {
                let mut c = a.clone().into_bytes();
                c[i] ^= 1;
                assert!(!bytes_eq(a.as_bytes(), &c), "{a:?} byte {i}");
            }
        }
    }

    #[test]
    fn zero_and_negative_zero_hash_alike() {
        assert_eq!(float_bits(0.0), float_bits(-0.0));
    }
}
