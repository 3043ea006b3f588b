//! Input records: row-at-a-time ([`Record`]) and columnar ([`Batch`]), and how a cell becomes a
//! numeric or a categorical value (format doc §3).

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// One input value.
///
/// JSON values are read as they are: a JSON integer and a JSON float differ only when the
/// number lands in a categorical column (`1` becomes `"1"`, `1.0` becomes `"1.0"`, as Python's
/// `str` writes them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    /// Missing.
    Null,
    Bool(bool),
    Int(i64),
    /// A float; NaN is missing.
    Float(f64),
    /// A string; the empty string is missing (as in DSS).
    Str(&'a str),
    /// A JSON value (arrays are vectors for VECTOR columns).
    Json(&'a Value),
}

impl<'a> Cell<'a> {
    /// Unwraps JSON scalars into the other variants.
    pub(crate) fn flatten(self) -> Cell<'a> {
        match self {
            Cell::Json(v) => match v {
                Value::Null => Cell::Null,
                Value::Bool(b) => Cell::Bool(*b),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => Cell::Int(i),
                    None => Cell::Float(n.as_f64().unwrap_or(f64::NAN)),
                },
                Value::String(s) => Cell::Str(s),
                _ => Cell::Json(v),
            },
            other => other,
        }
    }
}

/// A record scored one row at a time: the model asks for each input column by name and by its
/// position in the input schema (the training schema minus the target).
pub trait Record {
    /// The value of `column`; `position` is its index in [`crate::Model::input_columns`].
    /// An absent column is [`Cell::Null`].
    fn cell(&self, column: &str, position: usize) -> Cell<'_>;

    /// For positional records, the number of values (checked against the input columns).
    fn positional_len(&self) -> Option<usize> {
        None
    }
}

/// A borrowed record, so a batch can be a slice of references.
impl<R: Record + ?Sized> Record for &R {
    fn cell(&self, column: &str, position: usize) -> Cell<'_> {
        (**self).cell(column, position)
    }

    fn positional_len(&self) -> Option<usize> {
        (**self).positional_len()
    }
}

impl Record for Map<String, Value> {
    fn cell(&self, column: &str, _: usize) -> Cell<'_> {
        self.get(column).map_or(Cell::Null, Cell::Json)
    }
}

impl<S: std::hash::BuildHasher> Record for HashMap<String, Value, S> {
    fn cell(&self, column: &str, _: usize) -> Cell<'_> {
        self.get(column).map_or(Cell::Null, Cell::Json)
    }
}

/// A positional row, in input-schema order (the length is checked by the model).
impl Record for [Value] {
    fn cell(&self, _: &str, position: usize) -> Cell<'_> {
        self.get(position).map_or(Cell::Null, Cell::Json)
    }

    fn positional_len(&self) -> Option<usize> {
        Some(self.len())
    }
}

/// A positional row, as for `[Value]`.
impl Record for Vec<Value> {
    fn cell(&self, column: &str, position: usize) -> Cell<'_> {
        self.as_slice().cell(column, position)
    }

    fn positional_len(&self) -> Option<usize> {
        Some(self.len())
    }
}

/// One column of a [`Batch`], borrowed from the caller.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Column<'a> {
    /// Floats; NaN is missing.
    Float(&'a [f64]),
    OptFloat(&'a [Option<f64>]),
    Int(&'a [Option<i64>]),
    Bool(&'a [Option<bool>]),
    Str(&'a [Option<&'a str>]),
    String(&'a [Option<String>]),
    Json(&'a [Value]),
}

impl<'a> Column<'a> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Column::Float(v) => v.len(),
            Column::OptFloat(v) => v.len(),
            Column::Int(v) => v.len(),
            Column::Bool(v) => v.len(),
            Column::Str(v) => v.len(),
            Column::String(v) => v.len(),
            Column::Json(v) => v.len(),
        }
    }

    pub(crate) fn get(&self, row: usize) -> Cell<'a> {
        match *self {
            Column::Float(v) => Cell::Float(v[row]),
            Column::OptFloat(v) => v[row].map_or(Cell::Null, Cell::Float),
            Column::Int(v) => v[row].map_or(Cell::Null, Cell::Int),
            Column::Bool(v) => v[row].map_or(Cell::Null, Cell::Bool),
            Column::Str(v) => v[row].map_or(Cell::Null, Cell::Str),
            Column::String(v) => v[row].as_deref().map_or(Cell::Null, Cell::Str),
            Column::Json(v) => Cell::Json(&v[row]),
        }
    }
}

/// Columnar input: named columns of equal length. Columns the model does not read are ignored;
/// input columns the batch lacks are missing on every row.
#[derive(Debug, Clone, Default)]
pub struct Batch<'a> {
    pub(crate) n_rows: usize,
    pub(crate) columns: Vec<(&'a str, Column<'a>)>,
}

impl<'a> Batch<'a> {
    /// An empty batch of `n_rows` rows.
    pub fn new(n_rows: usize) -> Self {
        Batch {
            n_rows,
            columns: Vec::new(),
        }
    }

    /// Adds a column; fails when its length is not the batch's.
    pub fn with(mut self, name: &'a str, column: Column<'a>) -> Result<Self> {
        self.push(name, column)?;
        Ok(self)
    }

    /// Adds a column; fails when its length is not the batch's.
    pub fn push(&mut self, name: &'a str, column: Column<'a>) -> Result<()> {
        if column.len() != self.n_rows {
            return Err(Error::BatchShape {
                column: name.to_owned(),
                len: column.len(),
                expected: self.n_rows,
            });
        }
        self.columns.push((name, column));
        Ok(())
    }

    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    pub(crate) fn find(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|(n, _)| *n == name)
    }
}

/// A non-numeric value after input preparation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val<'a> {
    Null,
    Str(Cow<'a, str>),
    Num(f64),
    Bool(bool),
    /// A JSON array or object (vector columns).
    Json(&'a Value),
}

impl Val<'_> {
    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }

    /// Python `==` against a level of the model (a JSON value).
    pub(crate) fn eq_level(&self, level: &Level) -> bool {
        match (self, level) {
            (Val::Str(a), Level::Str(b)) => a.as_ref() == b.as_str(),
            (Val::Num(a), Level::Num(b)) => a == b,
            (Val::Bool(a), Level::Num(b)) => f64::from(u8::from(*a)) == *b,
            (Val::Null, Level::Null) => true,
            _ => false,
        }
    }

    /// The string compared against level strings, or `None` when the value is not a string.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The text of a TEXT cell for tokenizing; null is "".
    pub(crate) fn text(&self) -> Cow<'_, str> {
        match self {
            Val::Null => Cow::Borrowed(""),
            Val::Str(s) => Cow::Borrowed(s),
            Val::Num(x) => Cow::Owned(py_float_str(*x)),
            Val::Bool(b) => Cow::Borrowed(if *b { "True" } else { "False" }),
            Val::Json(v) => Cow::Owned(v.to_string()),
        }
    }
}

/// A level, category value or impute value read from the model: compared with Python's `==`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Level {
    Null,
    Str(String),
    /// Numbers and booleans (Python's `True == 1`).
    Num(f64),
    Other,
}

impl Level {
    pub(crate) fn from_json(v: &Value) -> Level {
        match v {
            Value::Null => Level::Null,
            Value::Bool(b) => Level::Num(f64::from(u8::from(*b))),
            Value::Number(n) => Level::Num(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => Level::Str(s.clone()),
            _ => Level::Other,
        }
    }

    pub(crate) fn to_val(&self) -> Val<'_> {
        match self {
            Level::Null => Val::Null,
            Level::Str(s) => Val::Str(Cow::Borrowed(s)),
            Level::Num(x) => Val::Num(*x),
            Level::Other => Val::Null,
        }
    }
}

/// Python's `str(v)` of a JSON value read by `json.loads`, as used in generated feature names.
pub(crate) fn py_str(v: &Value) -> String {
    match v {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.to_string(),
            None => match n.as_u64() {
                Some(u) => u.to_string(),
                None => py_float_str(n.as_f64().unwrap_or(f64::NAN)),
            },
        },
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Python's `repr(float)` (`str` is the same): shortest round-trip digits, fixed notation for
/// decimal exponents in (-4, 16], scientific (`1e+16`, `1.5e-05`) otherwise, `.0` on integers.
pub(crate) fn py_float_str(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let decpt = exp + 1;
    let mut out = String::new();
    if x < 0.0 {
        out.push('-');
    }
    let n = digits.len() as i32;
    if decpt > -4 && decpt <= 16 {
        if decpt <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-decpt) as usize));
            out.push_str(&digits);
        } else if decpt >= n {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', (decpt - n) as usize));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..decpt as usize]);
            out.push('.');
            out.push_str(&digits[decpt as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = decpt - 1;
        out.push_str(&format!("e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs()));
    }
    out
}

/// Reads a cell for a numeric slot (format doc §3): numbers as they are, `""` and null as NaN,
/// other strings parsed as Python's `float()` does.
pub(crate) fn to_numeric(cell: Cell<'_>, column: &str) -> Result<f64> {
    match cell.flatten() {
        Cell::Null => Ok(f64::NAN),
        Cell::Bool(b) => Ok(f64::from(u8::from(b))),
        Cell::Int(i) => Ok(i as f64),
        Cell::Float(x) => Ok(x),
        Cell::Str(s) => {
            if s.is_empty() {
                return Ok(f64::NAN);
            }
            s.trim().parse::<f64>().map_err(|_| Error::InvalidInput {
                row: None,
                column: column.to_owned(),
                value: format!("{s:?}"),
                reason: "a numeric column needs a number or a string that parses as one".into(),
            })
        }
        Cell::Json(v) => Err(Error::InvalidInput {
            row: None,
            column: column.to_owned(),
            value: v.to_string(),
            reason: "a numeric column needs a number".into(),
        }),
    }
}

/// Reads a cell for a non-numeric slot. Categorical columns get numbers as Python `str` would
/// write them (what the reference does when the whole batch column is numeric).
pub(crate) fn to_value(cell: Cell<'_>, categorical: bool) -> Val<'_> {
    match cell.flatten() {
        Cell::Null => Val::Null,
        Cell::Str("") => Val::Null,
        Cell::Str(s) => Val::Str(Cow::Borrowed(s)),
        Cell::Bool(b) => Val::Bool(b),
        Cell::Int(i) => {
            if categorical {
                Val::Str(Cow::Owned(i.to_string()))
            } else {
                Val::Num(i as f64)
            }
        }
        Cell::Float(x) => {
            if x.is_nan() {
                Val::Null
            } else if categorical {
                Val::Str(Cow::Owned(py_float_str(x)))
            } else {
                Val::Num(x)
            }
        }
        Cell::Json(v) => Val::Json(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        for (x, s) in [
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123.456, "123.456"),
            (1e300, "1e+300"),
            (50.0, "50.0"),
            (0.30000000000000004, "0.30000000000000004"),
        ] {
            assert_eq!(py_float_str(x), s, "{x}");
        }
    }

    #[test]
    fn numeric_cells() {
        assert!(to_numeric(Cell::Str(""), "c").unwrap().is_nan());
        assert_eq!(to_numeric(Cell::Str("11.0"), "c").unwrap(), 11.0);
        let e = to_numeric(Cell::Str("abc"), "num1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("num1") && e.contains("abc"), "{e}");
    }

    #[test]
    fn categorical_numbers_become_python_strings() {
        let one = Value::from(1);
        let onef = Value::from(1.0);
        assert_eq!(to_value(Cell::Json(&one), true), Val::Str("1".into()));
        assert_eq!(to_value(Cell::Json(&onef), true), Val::Str("1.0".into()));
        assert_eq!(to_value(Cell::Str(""), true), Val::Null);
    }
}
