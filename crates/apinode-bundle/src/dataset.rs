//! Converting a bundled dataset (CSV or Parquet) to the normalized Parquet file a bundle holds.
//!
//! Data streams through in batches of [`BATCH_ROWS`] rows. Column types are normalized to the
//! six [`ColumnType`]s; a value that does not convert is an error naming the column and the
//! 1-based data row (the header line is not counted), never a silent null.

use crate::manifest::{ColumnSpec, ColumnType, CsvOptions, DatasetFormat};
use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_cast::{CastOptions, cast_with_options};
use arrow_csv::reader::Format;
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

/// Rows per batch read and written.
pub(crate) const BATCH_ROWS: usize = 8192;
/// Rows per Parquet row group of a bundled dataset.
const ROW_GROUP_ROWS: usize = 128 * 1024;
/// The zstd level bundled Parquet files are compressed with.
const ZSTD_LEVEL: i32 = 3;

/// The outcome of a conversion.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Converted {
    pub(crate) rows: u64,
    pub(crate) columns: Vec<ColumnSpec>,
}

/// What went wrong: a message naming the column and row when it can. The caller wraps it in
/// [`Error::Dataset`](crate::Error::Dataset) with the dataset name and file.
pub(crate) type ConvResult<T> = std::result::Result<T, String>;

/// The Arrow type a bundled column of type `t` has.
pub fn arrow_type(t: ColumnType) -> DataType {
    match t {
        ColumnType::String => DataType::Utf8,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Date => DataType::Date32,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
    }
}

/// The [`ColumnType`] an Arrow type normalizes to, or `None` when it has none: strings of any
/// layout become `string`, integers `int64`, floats and decimals `float64`, dates `date`,
/// timestamps of any unit and zone `timestamp` (UTC), and an all-null column `string`.
pub fn column_type_of(data_type: &DataType) -> Option<ColumnType> {
    Some(match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => {
            ColumnType::String
        }
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => ColumnType::Int64,
        DataType::Float16
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal32(_, _)
        | DataType::Decimal64(_, _)
        | DataType::Decimal128(_, _)
        | DataType::Decimal256(_, _) => ColumnType::Float64,
        DataType::Boolean => ColumnType::Boolean,
        DataType::Date32 | DataType::Date64 => ColumnType::Date,
        DataType::Timestamp(_, _) => ColumnType::Timestamp,
        DataType::Dictionary(_, values) => return column_type_of(values),
        _ => return None,
    })
}

fn unsupported_type(column: &str, data_type: &DataType) -> String {
    format!(
        "column `{column}` has Arrow type {data_type}, which has no apinode column type; \
         convert it to string, int64, float64, boolean, date or timestamp, or leave it out \
         with an explicit `schema`"
    )
}

/// Casts `array` to `to`, failing on any value that does not convert (a safe cast turns such
/// values into nulls; a null that was not there before names the culprit).
fn strict_cast(
    array: &ArrayRef,
    to: ColumnType,
    column: &str,
    row_offset: u64,
) -> ConvResult<ArrayRef> {
    let target = arrow_type(to);
    if array.data_type() == &target {
        return Ok(array.clone());
    }
    let options = CastOptions {
        safe: true,
        format_options: FormatOptions::default(),
    };
    // Timestamps are cast without a zone, then labelled UTC: Arrow keeps zoned values as UTC
    // instants and reads zone-less ones as UTC, and this needs no time zone database.
    let cast_to = match to {
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        _ => target,
    };
    let out = cast_with_options(array.as_ref(), &cast_to, &options).map_err(|e| {
        format!(
            "column `{column}`: cannot convert Arrow type {} to {to}: {e}",
            array.data_type()
        )
    })?;
    if out.logical_null_count() != array.logical_null_count() {
        let before = array.logical_nulls();
        let after = out.logical_nulls();
        for i in 0..array.len() {
            let was_valid = before.as_ref().is_none_or(|n| n.is_valid(i));
            let now_null = after.as_ref().is_some_and(|n| n.is_null(i));
            if was_valid && now_null {
                let value = display_value(array.as_ref(), i);
                let verb = if matches!(
                    array.data_type(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                ) {
                    "parse"
                } else {
                    "convert"
                };
                return Err(format!(
                    "column `{column}` row {}: cannot {verb} `{value}` as {to}",
                    row_offset + i as u64 + 1
                ));
            }
        }
    }
    if to == ColumnType::Timestamp {
        let micros = out
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| {
                format!(
                    "column `{column}`: the timestamp cast gave {}",
                    out.data_type()
                )
            })?
            .clone()
            .with_timezone("UTC");
        return Ok(Arc::new(micros));
    }
    Ok(out)
}

fn display_value(array: &dyn Array, i: usize) -> String {
    let text = match ArrayFormatter::try_new(array, &FormatOptions::default()) {
        Ok(formatter) => formatter.value(i).to_string(),
        Err(_) => "?".to_string(),
    };
    const MAX: usize = 80;
    if text.chars().count() > MAX {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// Writes normalized batches to a Parquet file.
struct Sink<W: Write + Send> {
    writer: ArrowWriter<W>,
    schema: SchemaRef,
    columns: Vec<ColumnSpec>,
    rows: u64,
}

impl<W: Write + Send> Sink<W> {
    fn new(out: W, columns: Vec<ColumnSpec>) -> ConvResult<Self> {
        let fields: Vec<Field> = columns
            .iter()
            .map(|c| Field::new(&c.name, arrow_type(c.column_type), true))
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let level = ZstdLevel::try_new(ZSTD_LEVEL).map_err(|e| format!("zstd: {e}"))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let writer = ArrowWriter::try_new(out, schema.clone(), Some(props))
            .map_err(|e| format!("cannot start the Parquet file: {e}"))?;
        Ok(Sink {
            writer,
            schema,
            columns,
            rows: 0,
        })
    }

    fn write(&mut self, arrays: Vec<ArrayRef>) -> ConvResult<()> {
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| format!("cannot assemble a batch: {e}"))?;
        self.rows += batch.num_rows() as u64;
        self.writer
            .write(&batch)
            .map_err(|e| format!("cannot write the Parquet file: {e}"))
    }

    fn finish(self) -> ConvResult<(Converted, W)> {
        let out = self
            .writer
            .into_inner()
            .map_err(|e| format!("cannot finish the Parquet file: {e}"))?;
        Ok((
            Converted {
                rows: self.rows,
                columns: self.columns,
            },
            out,
        ))
    }
}

/// Reads a CSV or Parquet file (by its extension, `.csv` or `.parquet`) with the build's
/// type inference and default CSV options, and returns it as the normalized Parquet a bundle
/// holds, with its row count. `apinode data sync` loads referenced tables through it, so a
/// table synced from a file has the column types a bundled copy of that file would have.
pub fn normalize_dataset(source: &Path) -> crate::Result<(Vec<u8>, u64)> {
    let error = |message: String| crate::Error::Dataset {
        dataset: source
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned()),
        file: source.display().to_string(),
        message,
    };
    let format = match source
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("csv") => DatasetFormat::Csv,
        Some("parquet") => DatasetFormat::Parquet,
        _ => {
            return Err(error(
                "the file must end in .csv or .parquet, which says how to read it".into(),
            ));
        }
    };
    let (converted, out) =
        convert(source, format, &CsvOptions::default(), None, Vec::new()).map_err(error)?;
    Ok((out, converted.rows))
}

/// Converts the dataset at `source` to normalized Parquet written to `out`.
pub(crate) fn convert<W: Write + Send>(
    source: &Path,
    format: DatasetFormat,
    csv: &CsvOptions,
    schema: Option<&[ColumnSpec]>,
    out: W,
) -> ConvResult<(Converted, W)> {
    match format {
        DatasetFormat::Csv => convert_csv(source, csv, schema, out),
        DatasetFormat::Parquet => convert_parquet(source, schema, out),
    }
}

/// Opens a CSV file, skipping a UTF-8 byte order mark.
fn open_csv(path: &Path) -> ConvResult<BufReader<File>> {
    let io = |e: std::io::Error| format!("cannot read the file: {e}");
    let mut file = File::open(path).map_err(io)?;
    let mut head = [0u8; 3];
    let mut read = 0;
    while read < head.len() {
        let n = file.read(&mut head[read..]).map_err(io)?;
        if n == 0 {
            break;
        }
        read += n;
    }
    if head[..read] != [0xEF, 0xBB, 0xBF] {
        file.seek(SeekFrom::Start(0)).map_err(io)?;
    }
    Ok(BufReader::new(file))
}

fn csv_format(csv: &CsvOptions) -> ConvResult<Format> {
    // The delimiter was validated as ASCII.
    let delimiter = u8::try_from(csv.delimiter).map_err(|_| {
        format!(
            "the delimiter {:?} is not one ASCII character",
            csv.delimiter
        )
    })?;
    let mut format = Format::default()
        .with_header(csv.header)
        .with_delimiter(delimiter);
    if csv.null_values != [""] {
        let pattern = if csv.null_values.is_empty() {
            // Nothing is null: a class that matches no character.
            r"[^\s\S]".to_string()
        } else {
            let alternatives: Vec<String> =
                csv.null_values.iter().map(|v| regex::escape(v)).collect();
            format!("^(?:{})$", alternatives.join("|"))
        };
        let regex = regex::Regex::new(&pattern)
            .map_err(|e| format!("cannot use `null_values` as a pattern: {e}"))?;
        format = format.with_null_regex(regex);
    }
    Ok(format)
}

fn csv_error(e: impl std::fmt::Display) -> String {
    format!("cannot read the CSV: {e}")
}

fn convert_csv<W: Write + Send>(
    source: &Path,
    csv: &CsvOptions,
    schema: Option<&[ColumnSpec]>,
    out: W,
) -> ConvResult<(Converted, W)> {
    let format = csv_format(csv)?;
    // Without a schema, inference reads the whole file; with one, only the header (or the
    // first row, to count columns).
    let max_records = if schema.is_some() { Some(0) } else { None };
    let (inferred, _) = format
        .infer_schema(open_csv(source)?, max_records)
        .map_err(csv_error)?;
    if inferred.fields().is_empty() {
        return Err("the file has no columns (is it empty?)".to_string());
    }
    let names: Vec<&str> = inferred
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();

    // (index in the file, output column)
    let selected: Vec<(usize, ColumnSpec)> = match schema {
        None => {
            check_unique_names(&names)?;
            every_column(inferred.fields())?
        }
        Some(columns) if csv.header => columns
            .iter()
            .map(|c| {
                let mut hits = names.iter().enumerate().filter(|(_, n)| **n == c.name);
                match (hits.next(), hits.next()) {
                    (Some((i, _)), None) => Ok((i, c.clone())),
                    (Some(_), Some(_)) => Err(format!(
                        "the header names column `{}` more than once, so the schema cannot \
                         pick one",
                        c.name
                    )),
                    (None, _) => Err(format!(
                        "column `{}` of the schema is not in the header (its columns: {})",
                        c.name,
                        quote_names(&names)
                    )),
                }
            })
            .collect::<ConvResult<_>>()?,
        Some(columns) => {
            if columns.len() > names.len() {
                return Err(format!(
                    "the schema lists {} columns but the rows have {}; with `header = false` \
                     schema columns match file columns by position",
                    columns.len(),
                    names.len()
                ));
            }
            columns.iter().cloned().enumerate().collect()
        }
    };

    // Read with the inferred types, or as strings to cast strictly to the schema's.
    let read_fields: Vec<Field> = inferred
        .fields()
        .iter()
        .map(|f| {
            let data_type = if schema.is_some() || f.data_type() == &DataType::Null {
                DataType::Utf8
            } else {
                f.data_type().clone()
            };
            Field::new(f.name(), data_type, true)
        })
        .collect();
    let reader = arrow_csv::ReaderBuilder::new(Arc::new(Schema::new(read_fields)))
        .with_format(format)
        .with_batch_size(BATCH_ROWS)
        .build(open_csv(source)?)
        .map_err(csv_error)?;

    let columns: Vec<ColumnSpec> = selected.iter().map(|(_, c)| c.clone()).collect();
    let mut sink = Sink::new(out, columns)?;
    for batch in reader {
        let batch = batch.map_err(csv_error)?;
        let offset = sink.rows;
        let arrays = selected
            .iter()
            .map(|(i, c)| {
                let array = batch
                    .columns()
                    .get(*i)
                    .ok_or_else(|| format!("column `{}` is missing from a batch", c.name))?;
                strict_cast(array, c.column_type, &c.name, offset)
            })
            .collect::<ConvResult<Vec<_>>>()?;
        sink.write(arrays)?;
    }
    sink.finish()
}

fn convert_parquet<W: Write + Send>(
    source: &Path,
    schema: Option<&[ColumnSpec]>,
    out: W,
) -> ConvResult<(Converted, W)> {
    let file = File::open(source).map_err(|e| format!("cannot read the file: {e}"))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format!("not a readable Parquet file: {e}"))?;
    let file_schema = builder.schema().clone();
    let names: Vec<&str> = file_schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    let selected: Vec<(usize, ColumnSpec)> = match schema {
        None => {
            check_unique_names(&names)?;
            every_column(file_schema.fields())?
        }
        Some(columns) => columns
            .iter()
            .map(|c| match names.iter().position(|n| *n == c.name) {
                Some(i) => Ok((i, c.clone())),
                None => Err(format!(
                    "column `{}` of the schema is not in the file (its columns: {})",
                    c.name,
                    quote_names(&names)
                )),
            })
            .collect::<ConvResult<_>>()?,
    };
    if selected.is_empty() {
        return Err("the file has no columns".to_string());
    }
    let mut roots: Vec<usize> = selected.iter().map(|(i, _)| *i).collect();
    roots.sort_unstable();
    roots.dedup();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| format!("cannot read the Parquet file: {e}"))?;

    let columns: Vec<ColumnSpec> = selected.iter().map(|(_, c)| c.clone()).collect();
    let mut sink = Sink::new(out, columns)?;
    for batch in reader {
        let batch = batch.map_err(|e| format!("cannot read the Parquet file: {e}"))?;
        let offset = sink.rows;
        let arrays = selected
            .iter()
            .map(|(i, c)| {
                // The projected batch holds the selected roots in file order.
                let position = roots
                    .binary_search(i)
                    .map_err(|_| format!("column `{}` is missing from a batch", c.name))?;
                let array = batch
                    .columns()
                    .get(position)
                    .ok_or_else(|| format!("column `{}` is missing from a batch", c.name))?;
                strict_cast(array, c.column_type, &c.name, offset)
            })
            .collect::<ConvResult<Vec<_>>>()?;
        sink.write(arrays)?;
    }
    sink.finish()
}

fn check_unique_names(names: &[&str]) -> ConvResult<()> {
    let mut seen = std::collections::HashSet::new();
    for name in names {
        if !seen.insert(*name) {
            return Err(format!(
                "the file names column `{name}` more than once; rename one of them or list the \
                 columns to keep in `schema`"
            ));
        }
    }
    Ok(())
}

fn quote_names(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every column of a file, in file order, with its normalized type; an unsupported type is an
/// error naming the column.
fn every_column(fields: &arrow_schema::Fields) -> ConvResult<Vec<(usize, ColumnSpec)>> {
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let column_type = column_type_of(f.data_type())
                .ok_or_else(|| unsupported_type(f.name(), f.data_type()))?;
            Ok((
                i,
                ColumnSpec {
                    name: f.name().clone(),
                    column_type,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray, UInt64Array};

    #[test]
    fn normalizes_types() {
        assert_eq!(column_type_of(&DataType::UInt8), Some(ColumnType::Int64));
        assert_eq!(
            column_type_of(&DataType::Float16),
            Some(ColumnType::Float64)
        );
        assert_eq!(
            column_type_of(&DataType::Decimal128(10, 2)),
            Some(ColumnType::Float64)
        );
        assert_eq!(
            column_type_of(&DataType::Timestamp(
                TimeUnit::Nanosecond,
                Some("+02:00".into())
            )),
            Some(ColumnType::Timestamp)
        );
        assert_eq!(
            column_type_of(&DataType::Dictionary(
                Box::new(DataType::Int32),
                Box::new(DataType::Utf8)
            )),
            Some(ColumnType::String)
        );
        assert_eq!(column_type_of(&DataType::Binary), None);
    }

    #[test]
    fn strict_cast_names_the_row() {
        let array: ArrayRef = Arc::new(StringArray::from(vec![Some("1"), None, Some("x")]));
        let err = strict_cast(&array, ColumnType::Int64, "age", 10).unwrap_err();
        assert_eq!(err, "column `age` row 13: cannot parse `x` as int64");
        let ok = strict_cast(&array.slice(0, 2), ColumnType::Int64, "age", 0).unwrap();
        let ok = ok.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ok.value(0), 1);
        assert!(ok.is_null(1));
    }

    #[test]
    fn strict_cast_refuses_u64_overflow() {
        let array: ArrayRef = Arc::new(UInt64Array::from(vec![1, u64::MAX]));
        let err = strict_cast(&array, ColumnType::Int64, "n", 0).unwrap_err();
        assert!(err.contains("row 2"), "{err}");
        assert!(err.contains("18446744073709551615"), "{err}");
    }

    #[test]
    fn null_values_become_a_regex() {
        let csv = CsvOptions {
            null_values: vec!["NA".into(), "n/a".into(), "(none)".into()],
            ..CsvOptions::default()
        };
        assert!(csv_format(&csv).is_ok());
        let none = CsvOptions {
            null_values: vec![],
            ..CsvOptions::default()
        };
        assert!(csv_format(&none).is_ok());
    }
}
