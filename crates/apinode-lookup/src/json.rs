//! Per-column JSON writers, chosen once per lookup: a row is written straight into the
//! response buffer, with types preserved (integers stay integers, NULL is `null`, dates are
//! `YYYY-MM-DD`, timestamps ISO 8601 in UTC). No intermediate `serde_json::Value`, no
//! allocation per value: integers through `itoa`, floats through `zmij`, strings copied as is
//! unless they need escaping, dates formatted from the day number by hand.

use crate::error::{Error, Result};
use crate::key::TypedColumn;
use arrow_array::{Array, ArrayRef};
use serde_json::Value;
use std::sync::Arc;

#[derive(Debug)]
pub(crate) struct ColumnWriter {
    /// `"name":`, escaped once (shared by the writers of the same column over other rows).
    prefix: Arc<[u8]>,
    name: Arc<str>,
    values: TypedColumn,
}

impl ColumnWriter {
    pub(crate) fn new(dataset: &str, column: &str, output: &str, array: &ArrayRef) -> Result<Self> {
        let values = TypedColumn::new(array).ok_or_else(|| Error::UnsupportedType {
            dataset: dataset.to_owned(),
            column: column.to_owned(),
            data_type: array.data_type().to_string(),
        })?;
        let mut prefix = Vec::with_capacity(output.len() + 3);
        write_str(&mut prefix, output);
        prefix.push(b':');
        Ok(ColumnWriter {
            prefix: prefix.into(),
            name: output.into(),
            values,
        })
    }

    /// The same writer over `indices`' rows of this column, gathered with Arrow's `take`.
    pub(crate) fn gathered(&self, indices: &arrow_array::UInt32Array) -> ColumnWriter {
        let array = self.values.array();
        let taken = arrow_select::take::take(array.as_ref(), indices, None)
            .expect("indices are in bounds and the type is supported");
        ColumnWriter {
            prefix: self.prefix.clone(),
            name: self.name.clone(),
            values: TypedColumn::new(&taken).expect("take keeps the type"),
        }
    }

    /// The output name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// `"name":`, escaped.
    pub(crate) fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// Writes `"name":value`; `row` None writes `null`.
    #[inline]
    pub(crate) fn write(&self, row: Option<usize>, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix);
        match row {
            Some(row) => self.write_value(row, out),
            None => out.extend_from_slice(b"null"),
        }
    }

    /// Loads what writing `row` will read, and returns something derived from it so the load
    /// is not optimized away. Touching every column of a row first lets their cache misses
    /// overlap; writing column by column would wait for each in turn.
    #[inline]
    pub(crate) fn touch(&self, row: usize) -> u64 {
        match &self.values {
            TypedColumn::Str(a) => {
                let value = a.value(row);
                value.len() as u64 + u64::from(value.as_bytes().first().copied().unwrap_or(0))
            }
            TypedColumn::Int(a) => a.value(row) as u64,
            TypedColumn::Float(a) => a.value(row).to_bits(),
            TypedColumn::Bool(a) => u64::from(a.value(row)),
            TypedColumn::Date(a) => a.value(row) as u64,
            TypedColumn::Timestamp(a) => a.value(row) as u64,
        }
    }

    #[inline]
    fn write_value(&self, row: usize, out: &mut Vec<u8>) {
        write_cell(out, self.cell(row));
    }

    #[inline]
    fn cell(&self, row: usize) -> Cell<'_> {
        match &self.values {
            TypedColumn::Str(a) if a.is_valid(row) => Cell::Str(a.value(row)),
            TypedColumn::Int(a) if a.is_valid(row) => Cell::Int(a.value(row)),
            TypedColumn::Float(a) if a.is_valid(row) => Cell::Float(a.value(row)),
            TypedColumn::Bool(a) if a.is_valid(row) => Cell::Bool(a.value(row)),
            TypedColumn::Date(a) if a.is_valid(row) => Cell::Date(i64::from(a.value(row))),
            TypedColumn::Timestamp(a) if a.is_valid(row) => Cell::Timestamp(a.value(row)),
            _ => Cell::Null,
        }
    }

    /// The value at `row` as a JSON tree (for enrichment, where features are a map).
    pub(crate) fn value(&self, row: Option<usize>) -> Value {
        let Some(row) = row else {
            return Value::Null;
        };
        match self.cell(row) {
            Cell::Str(s) => Value::String(s.to_owned()),
            Cell::Int(i) => Value::from(i),
            Cell::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
            Cell::Bool(b) => Value::Bool(b),
            Cell::Date(days) => {
                let mut text = Vec::with_capacity(10);
                write_date(&mut text, days);
                Value::String(String::from_utf8(text).expect("dates are ASCII"))
            }
            Cell::Timestamp(micros) => {
                let mut text = Vec::with_capacity(27);
                write_timestamp(&mut text, micros);
                Value::String(String::from_utf8(text).expect("timestamps are ASCII"))
            }
            Cell::Null => Value::Null,
        }
    }
}

/// One value in its lookup type, wherever it was read from (an Arrow array, or a row a
/// database returned): what a lookup answers, written by [`write_cell`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Cell<'a> {
    Null,
    Str(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Days since 1970-01-01.
    Date(i64),
    /// Microseconds since the epoch, UTC.
    Timestamp(i64),
}

/// Writes `cell` as JSON: a float that is not finite (JSON has no NaN) as `null`, dates and
/// timestamps as strings.
#[inline]
pub(crate) fn write_cell(out: &mut Vec<u8>, cell: Cell<'_>) {
    match cell {
        Cell::Str(s) => write_str(out, s),
        Cell::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        Cell::Float(f) if f.is_finite() => {
            out.extend_from_slice(zmij::Buffer::new().format_finite(f).as_bytes());
        }
        Cell::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        Cell::Date(days) => {
            out.push(b'"');
            write_date(out, days);
            out.push(b'"');
        }
        Cell::Timestamp(micros) => {
            out.push(b'"');
            write_timestamp(out, micros);
            out.push(b'"');
        }
        Cell::Null | Cell::Float(_) => out.extend_from_slice(b"null"),
    }
}

/// A JSON string: copied as is when nothing needs escaping (the common case), else escaped by
/// serde_json.
#[inline]
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
    }
}

/// Year, month, day of a day number (days since 1970-01-01), proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe as i64 + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn push_2(out: &mut Vec<u8>, n: u32) {
    out.push(b'0' + (n / 10) as u8);
    out.push(b'0' + (n % 10) as u8);
}

/// `YYYY-MM-DD`; years outside 0..=9999 as ISO 8601's expanded form (`+12345`, `-0001`).
pub(crate) fn write_date(out: &mut Vec<u8>, days: i64) {
    let (year, month, day) = civil_from_days(days);
    let digit = |n: u32| b'0' + (n % 10) as u8;
    if (0..=9999).contains(&year) {
        let y = year as u32;
        out.extend_from_slice(&[digit(y / 1000), digit(y / 100), digit(y / 10), digit(y)]);
    } else {
        out.push(if year < 0 { b'-' } else { b'+' });
        let digits = itoa::Buffer::new().format(year.unsigned_abs()).to_owned();
        for _ in digits.len()..4 {
            out.push(b'0');
        }
        out.extend_from_slice(digits.as_bytes());
    }
    // One copy rather than six pushes.
    out.extend_from_slice(&[
        b'-',
        digit(month / 10),
        digit(month),
        b'-',
        digit(day / 10),
        digit(day),
    ]);
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, or with microseconds when they are not whole milliseconds.
pub(crate) fn write_timestamp(out: &mut Vec<u8>, micros: i64) {
    const DAY: i64 = 86_400_000_000;
    write_date(out, micros.div_euclid(DAY));
    let in_day = micros.rem_euclid(DAY) as u64;
    let seconds = in_day / 1_000_000;
    let fraction = (in_day % 1_000_000) as u32;
    out.push(b'T');
    push_2(out, (seconds / 3600) as u32);
    out.push(b':');
    push_2(out, (seconds / 60 % 60) as u32);
    out.push(b':');
    push_2(out, (seconds % 60) as u32);
    out.push(b'.');
    if fraction.is_multiple_of(1000) {
        let millis = fraction / 1000;
        out.push(b'0' + (millis / 100) as u8);
        push_2(out, millis % 100);
    } else {
        out.push(b'0' + (fraction / 100_000) as u8);
        push_2(out, fraction / 1000 % 100);
        push_2(out, fraction / 10 % 100);
        out.push(b'0' + (fraction % 10) as u8);
    }
    out.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, NaiveDate, TimeDelta};
    use proptest::prelude::*;

    fn date(days: i64) -> String {
        let mut out = Vec::new();
        write_date(&mut out, days);
        String::from_utf8(out).unwrap()
    }

    fn timestamp(micros: i64) -> String {
        let mut out = Vec::new();
        write_timestamp(&mut out, micros);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn formats_dates_and_timestamps() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(-1), "1969-12-31");
        assert_eq!(date(19_782), "2024-02-29");
        // Years outside 0..=9999 in ISO 8601's expanded form.
        assert_eq!(date(-719_529), "-0001-12-31");
        assert_eq!(date(2_932_897), "+10000-01-01");
        assert_eq!(timestamp(1_500), "1970-01-01T00:00:00.001500Z");
        assert_eq!(timestamp(86_400_000_000), "1970-01-02T00:00:00.000Z");
        assert_eq!(timestamp(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn strings_are_escaped_only_when_needed() {
        let mut out = Vec::new();
        write_str(&mut out, "plain é");
        write_str(&mut out, "q\"b\\n\n\u{1}");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"plain é\"\"q\\\"b\\\\n\\n\\u0001\""
        );
    }

    proptest! {
        // The hand-written calendar agrees with chrono from year 0 to 9999.
        #[test]
        fn dates_agree_with_chrono(days in -719_528i64..2_932_897) {
            let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
            let expected = epoch + TimeDelta::try_days(days).unwrap();
            prop_assert_eq!(date(days), expected.format("%Y-%m-%d").to_string());
        }

        #[test]
        fn timestamps_agree_with_chrono(micros in -253_402_300_799_000_000i64..253_402_300_799_000_000) {
            let t = DateTime::from_timestamp_micros(micros).unwrap();
            let expected = if micros % 1000 == 0 {
                t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
            } else {
                t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
            };
            prop_assert_eq!(timestamp(micros), expected);
        }
    }
}
