//! Per-column JSON writers, chosen once per lookup: a row is written straight into the
//! response buffer, with types preserved (integers stay integers, NULL is `null`, dates are
//! `YYYY-MM-DD`, timestamps ISO 8601 in UTC).

use crate::error::{Error, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Date32Array, Float64Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use arrow_schema::{DataType, TimeUnit};
use chrono::{DateTime, NaiveDate, TimeDelta};
use std::io::Write;

#[derive(Debug)]
pub(crate) struct ColumnWriter {
    /// `"name":`, escaped once.
    prefix: Vec<u8>,
    values: Values,
}

#[derive(Debug)]
enum Values {
    Str(StringArray),
    Int(Int64Array),
    Float(Float64Array),
    Bool(BooleanArray),
    Date(Date32Array),
    Timestamp(TimestampMicrosecondArray),
}

impl ColumnWriter {
    pub(crate) fn new(dataset: &str, column: &str, output: &str, array: &ArrayRef) -> Result<Self> {
        let values = match array.data_type() {
            DataType::Utf8 => Values::Str(array.as_string::<i32>().clone()),
            DataType::Int64 => Values::Int(array.as_primitive::<Int64Type>().clone()),
            DataType::Float64 => Values::Float(array.as_primitive::<Float64Type>().clone()),
            DataType::Boolean => Values::Bool(array.as_boolean().clone()),
            DataType::Date32 => Values::Date(array.as_primitive::<Date32Type>().clone()),
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                Values::Timestamp(array.as_primitive::<TimestampMicrosecondType>().clone())
            }
            other => {
                return Err(Error::UnsupportedType {
                    dataset: dataset.to_owned(),
                    column: column.to_owned(),
                    data_type: other.to_string(),
                });
            }
        };
        let mut prefix = serde_json::to_vec(output).expect("a string serializes");
        prefix.push(b':');
        Ok(ColumnWriter { prefix, values })
    }

    pub(crate) fn output_name(&self) -> &[u8] {
        &self.prefix[..self.prefix.len() - 1]
    }

    /// Writes `"name":value`; `row` None writes `null`.
    pub(crate) fn write(&self, row: Option<usize>, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix);
        match row {
            Some(row) => self.write_value(row, out),
            None => out.extend_from_slice(b"null"),
        }
    }

    fn write_value(&self, row: usize, out: &mut Vec<u8>) {
        // Writing into a Vec<u8> cannot fail, hence the ignored io results.
        match &self.values {
            Values::Str(a) if a.is_valid(row) => {
                let _ = serde_json::to_writer(&mut *out, a.value(row));
            }
            Values::Int(a) if a.is_valid(row) => {
                let _ = write!(out, "{}", a.value(row));
            }
            Values::Float(a) if a.is_valid(row) && a.value(row).is_finite() => {
                let _ = serde_json::to_writer(&mut *out, &a.value(row));
            }
            Values::Bool(a) if a.is_valid(row) => {
                out.extend_from_slice(if a.value(row) { b"true" } else { b"false" });
            }
            Values::Date(a) if a.is_valid(row) => match format_date(a.value(row)) {
                Some(date) => {
                    let _ = write!(out, "\"{date}\"");
                }
                None => out.extend_from_slice(b"null"),
            },
            Values::Timestamp(a) if a.is_valid(row) => match format_timestamp(a.value(row)) {
                Some(ts) => {
                    let _ = write!(out, "\"{ts}\"");
                }
                None => out.extend_from_slice(b"null"),
            },
            _ => out.extend_from_slice(b"null"),
        }
    }
}

fn format_date(days: i32) -> Option<String> {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)?;
    let date = epoch.checked_add_signed(TimeDelta::try_days(i64::from(days))?)?;
    Some(date.format("%Y-%m-%d").to_string())
}

fn format_timestamp(micros: i64) -> Option<String> {
    let t = DateTime::from_timestamp_micros(micros)?;
    Some(if micros % 1000 == 0 {
        t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates_and_timestamps() {
        assert_eq!(format_date(0).unwrap(), "1970-01-01");
        assert_eq!(format_date(-1).unwrap(), "1969-12-31");
        assert_eq!(
            format_timestamp(1_500).unwrap(),
            "1970-01-01T00:00:00.001500Z"
        );
        assert_eq!(
            format_timestamp(86_400_000_000).unwrap(),
            "1970-01-02T00:00:00.000Z"
        );
    }
}
