//! Tables: a dataset held as one Arrow record batch with normalized column types.

use crate::error::{Error, Result};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::sync::Arc;

/// The most rows a table may hold: row ids are `u32` to keep the index small.
pub const MAX_ROWS: usize = u32::MAX as usize - 1;

/// An immutable dataset in memory, shared by every lookup built on it.
#[derive(Debug)]
pub struct Table {
    name: String,
    batch: RecordBatch,
}

impl Table {
    /// Loads a Parquet file's content. Columns are normalized: integers to int64, floats to
    /// float64, string variants to utf8, dates to date32, timestamps to microseconds UTC.
    /// Other types are kept and rejected only if a lookup uses them.
    pub fn from_parquet(name: &str, data: Bytes) -> Result<Table> {
        let parquet_err = |source| Error::Parquet {
            dataset: name.to_owned(),
            source,
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(data).map_err(parquet_err)?;
        // One batch for the whole file: the rows are decoded straight into their final
        // arrays, with no concatenation copy afterwards.
        let rows = usize::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        let reader = builder
            .with_batch_size(rows.max(1))
            .build()
            .map_err(parquet_err)?;
        let schema = arrow_array::RecordBatchReader::schema(&reader);
        let mut batches = Vec::new();
        for batch in reader {
            batches.push(batch.map_err(|source| Error::Arrow {
                dataset: name.to_owned(),
                source,
            })?);
        }
        let batch = if batches.len() == 1 {
            batches.remove(0)
        } else {
            arrow_select::concat::concat_batches(&schema, &batches).map_err(|source| {
                Error::Arrow {
                    dataset: name.to_owned(),
                    source,
                }
            })?
        };
        Table::from_batch(name, batch)
    }

    /// Wraps a record batch, normalizing its column types.
    pub fn from_batch(name: &str, batch: RecordBatch) -> Result<Table> {
        if batch.num_rows() > MAX_ROWS {
            return Err(Error::TooManyRows {
                dataset: name.to_owned(),
                rows: batch.num_rows(),
                max: MAX_ROWS,
            });
        }
        let mut fields = Vec::with_capacity(batch.num_columns());
        let mut columns = Vec::with_capacity(batch.num_columns());
        for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
            let column = normalize(column).map_err(|source| Error::Arrow {
                dataset: name.to_owned(),
                source,
            })?;
            fields.push(Field::new(field.name(), column.data_type().clone(), true));
            columns.push(column);
        }
        let batch =
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|source| {
                Error::Arrow {
                    dataset: name.to_owned(),
                    source,
                }
            })?;
        Ok(Table {
            name: name.to_owned(),
            batch,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn batch(&self) -> &RecordBatch {
        &self.batch
    }

    /// Column names in table order.
    pub fn column_names(&self) -> Vec<&str> {
        self.batch
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect()
    }

    pub(crate) fn column_index(&self, column: &str) -> Result<usize> {
        self.batch
            .schema_ref()
            .index_of(column)
            .map_err(|_| Error::UnknownColumn {
                dataset: self.name.clone(),
                column: column.to_owned(),
                available: self.column_names().join(", "),
            })
    }

    /// Bytes held by the table's Arrow buffers.
    pub fn resident_bytes(&self) -> usize {
        self.batch.get_array_memory_size()
    }
}

fn normalize(column: &ArrayRef) -> std::result::Result<ArrayRef, arrow_schema::ArrowError> {
    let target = match column.data_type() {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => DataType::Int64,
        DataType::Float16 | DataType::Float32 | DataType::Decimal128(..) => DataType::Float64,
        DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(..) => DataType::Utf8,
        DataType::Date64 => DataType::Date32,
        DataType::Timestamp(unit, tz)
            if *unit != TimeUnit::Microsecond || tz.as_deref() != Some("UTC") =>
        {
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        }
        _ => return Ok(column.clone()),
    };
    if let DataType::Dictionary(_, value) = column.data_type()
        && !matches!(
            **value,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        )
    {
        return Ok(column.clone());
    }
    let options = arrow_cast::CastOptions {
        safe: false,
        ..Default::default()
    };
    arrow_cast::cast_with_options(column.as_ref(), &target, &options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int32Array, LargeStringArray};

    #[test]
    fn normalizes_integer_and_string_variants() {
        let batch = RecordBatch::try_from_iter([
            ("a", Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef),
            (
                "b",
                Arc::new(LargeStringArray::from(vec!["x", "y"])) as ArrayRef,
            ),
        ])
        .unwrap();
        let table = Table::from_batch("t", batch).unwrap();
        assert_eq!(table.batch().column(0).data_type(), &DataType::Int64);
        assert_eq!(table.batch().column(1).data_type(), &DataType::Utf8);
        assert_eq!(table.num_rows(), 2);
        assert!(table.resident_bytes() > 0);
    }

    #[test]
    fn unknown_column_lists_the_available_ones() {
        let batch =
            RecordBatch::try_from_iter([("a", Arc::new(Int32Array::from(vec![1])) as ArrayRef)])
                .unwrap();
        let table = Table::from_batch("t", batch).unwrap();
        let err = table.column_index("zz").unwrap_err().to_string();
        assert!(err.contains("`zz`") && err.contains("columns: a"), "{err}");
    }
}
