//! Single-key and batch lookups on a generated customers table (1M rows by default, string
//! keys), side by side in one run with:
//! - SQLite (rusqlite, in-memory, an index on the key column, a prepared statement), each
//!   answer written as JSON like ours;
//! - DataFusion, `SELECT * FROM customers WHERE key = $1` on a MemTable per key, and a join
//!   with a 1,000-key table for the batch;
//! - the straightforward baseline a first implementation would write: a
//!   `HashMap<String, usize>` from owned key to row, and a `serde_json::Value` object built and
//!   serialized per answer.
//!
//! `cargo bench -p apinode-benches --bench lookup`; CI runs it once as a smoke test with
//! `APINODE_BENCH_ROWS=10000 cargo test --benches`.

use apinode_benches::{bench_rows, customer_key, customers_table};
use apinode_lookup::{Lookup, LookupConfig, Match};
use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use rusqlite::types::ValueRef;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;

/// The baseline: a std HashMap of owned keys, and a JSON tree per answer.
struct Naive {
    batch: RecordBatch,
    index: HashMap<String, usize>,
}

impl Naive {
    fn new(batch: RecordBatch) -> Naive {
        let keys = batch.column(0).as_string::<i32>();
        let index = (0..keys.len())
            .map(|i| (keys.value(i).to_owned(), i))
            .collect();
        Naive { batch, index }
    }

    fn lookup(&self, data: &Map<String, Value>, out: &mut Vec<u8>) -> bool {
        let Some(row) = data
            .get("key")
            .and_then(Value::as_str)
            .and_then(|k| self.index.get(k))
        else {
            return false;
        };
        let mut object = Map::new();
        for (field, column) in self
            .batch
            .schema()
            .fields()
            .iter()
            .zip(self.batch.columns())
        {
            let value = if column.is_null(*row) {
                Value::Null
            } else {
                match column.data_type() {
                    DataType::Int64 => json!(column.as_primitive::<Int64Type>().value(*row)),
                    DataType::Float64 => json!(column.as_primitive::<Float64Type>().value(*row)),
                    DataType::Date32 => json!(column.as_primitive::<Date32Type>().value(*row)),
                    DataType::Boolean => json!(column.as_boolean().value(*row)),
                    _ => json!(column.as_string::<i32>().value(*row)),
                }
            };
            object.insert(field.name().clone(), value);
        }
        serde_json::to_writer(out, &Value::Object(object)).expect("serializes");
        true
    }
}

/// SQLite in memory, with the same rows and an index on the key.
struct Sqlite {
    connection: rusqlite::Connection,
    /// `"name":` per column, escaped once, as our writer does.
    prefixes: Vec<Vec<u8>>,
}

impl Sqlite {
    fn new(batch: &RecordBatch) -> Sqlite {
        let connection = rusqlite::Connection::open_in_memory().expect("sqlite opens");
        let schema = batch.schema();
        let columns: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| {
                let sql_type = match f.data_type() {
                    DataType::Int64 | DataType::Date32 | DataType::Boolean => "INTEGER",
                    DataType::Float64 => "REAL",
                    _ => "TEXT",
                };
                format!("\"{}\" {sql_type}", f.name())
            })
            .collect();
        connection
            .execute_batch(&format!("CREATE TABLE customers ({})", columns.join(", ")))
            .expect("create table");
        let placeholders = vec!["?"; columns.len()].join(", ");
        let tx = connection.unchecked_transaction().expect("transaction");
        {
            let mut insert = tx
                .prepare(&format!("INSERT INTO customers VALUES ({placeholders})"))
                .expect("prepare insert");
            for row in 0..batch.num_rows() {
                let values: Vec<rusqlite::types::Value> = batch
                    .columns()
                    .iter()
                    .map(|column| {
                        use rusqlite::types::Value as V;
                        if column.is_null(row) {
                            return V::Null;
                        }
                        match column.data_type() {
                            DataType::Int64 => {
                                V::Integer(column.as_primitive::<Int64Type>().value(row))
                            }
                            DataType::Date32 => {
                                V::Integer(column.as_primitive::<Date32Type>().value(row).into())
                            }
                            DataType::Boolean => V::Integer(column.as_boolean().value(row).into()),
                            DataType::Float64 => {
                                V::Real(column.as_primitive::<Float64Type>().value(row))
                            }
                            _ => V::Text(column.as_string::<i32>().value(row).to_owned()),
                        }
                    })
                    .collect();
                insert
                    .execute(rusqlite::params_from_iter(values))
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
        connection
            .execute_batch("CREATE INDEX customers_key ON customers (key)")
            .expect("index");
        let prefixes = schema
            .fields()
            .iter()
            .map(|f| {
                let mut p = serde_json::to_vec(f.name()).expect("serializes");
                p.push(b':');
                p
            })
            .collect();
        Sqlite {
            connection,
            prefixes,
        }
    }

    fn lookup(&self, data: &Map<String, Value>, out: &mut Vec<u8>) -> bool {
        let Some(key) = data.get("key").and_then(Value::as_str) else {
            return false;
        };
        let mut statement = self
            .connection
            .prepare_cached("SELECT * FROM customers WHERE key = ?1")
            .expect("prepare");
        let mut rows = statement.query([key]).expect("query");
        let Some(row) = rows.next().expect("step") else {
            return false;
        };
        out.push(b'{');
        for (i, prefix) in self.prefixes.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(prefix);
            match row.get_ref(i).expect("column") {
                ValueRef::Null => out.extend_from_slice(b"null"),
                ValueRef::Integer(v) => {
                    let _ = write!(out, "{v}");
                }
                ValueRef::Real(v) => {
                    let _ = serde_json::to_writer(&mut *out, &v);
                }
                ValueRef::Text(t) | ValueRef::Blob(t) => {
                    let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(t));
                }
            }
        }
        out.push(b'}');
        true
    }
}

impl Sqlite {
    /// The probe alone: the key's rowid through the index, no row read.
    fn probe(&self, data: &Map<String, Value>) -> Option<i64> {
        let key = data.get("key").and_then(Value::as_str)?;
        let mut statement = self
            .connection
            .prepare_cached("SELECT rowid FROM customers WHERE key = ?1")
            .expect("prepare");
        let mut rows = statement.query([key]).expect("query");
        rows.next()
            .expect("step")
            .map(|row| row.get(0).expect("rowid"))
    }
}

fn queries(rows: usize, count: usize) -> Vec<Map<String, Value>> {
    // A fixed stride over the table: deterministic, spread, and every key exists.
    (0..count)
        .map(|i| {
            let row = (i * 7_919 + 13) % rows;
            let mut data = Map::new();
            data.insert("key".into(), Value::String(customer_key(row)));
            data
        })
        .collect()
}

fn lookups(c: &mut Criterion) {
    let rows = bench_rows();
    let table = Arc::new(customers_table(rows));
    let lookup = Lookup::new(table.clone(), LookupConfig::on_keys(&["key"])).expect("indexes");
    let naive = Naive::new(table.batch().clone());
    let sqlite = Sqlite::new(table.batch());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let datafusion = SessionContext::new();
    datafusion
        .register_batch("customers", table.batch().clone())
        .expect("register the table");
    let queries = queries(rows, 4096);
    let mut out = Vec::with_capacity(1 << 20);

    let mut group = c.benchmark_group(format!("lookup_single_{rows}_rows"));
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("apinode", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            out.clear();
            if let Match::Row(row) = lookup.find(&queries[i]).expect("valid key") {
                lookup.write_row(Some(row), &mut out);
            }
            black_box(out.len())
        })
    });
    group.bench_function("naive_hashmap_json_tree", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            out.clear();
            black_box(naive.lookup(&queries[i], &mut out))
        })
    });
    group.bench_function("sqlite_indexed", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            out.clear();
            black_box(sqlite.lookup(&queries[i], &mut out))
        })
    });
    group.bench_function("datafusion_where_key", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            let key = queries[i]["key"].as_str().expect("string key").to_owned();
            let batches = runtime.block_on(async {
                datafusion
                    .sql("SELECT * FROM customers WHERE key = $1")
                    .await
                    .expect("plans")
                    .with_param_values(vec![ScalarValue::Utf8(Some(key))])
                    .expect("binds")
                    .collect()
                    .await
                    .expect("runs")
            });
            black_box(batches.len())
        })
    });
    group.finish();

    // The probe alone (key to row id), without reading or writing the row.
    let mut group = c.benchmark_group(format!("lookup_probe_{rows}_rows"));
    group.throughput(Throughput::Elements(1));
    group.bench_function("apinode_find", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            black_box(lookup.find(&queries[i]).expect("valid key"))
        })
    });
    group.bench_function("sqlite_indexed_rowid", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            black_box(sqlite.probe(&queries[i]))
        })
    });
    group.finish();

    let batch = &queries[..1000];
    let mut group = c.benchmark_group(format!("lookup_batch_1000_of_{rows}_rows"));
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("apinode", |b| {
        b.iter(|| {
            out.clear();
            for data in batch {
                if let Match::Row(row) = lookup.find(data).expect("valid key") {
                    lookup.write_row(Some(row), &mut out);
                }
            }
            black_box(out.len())
        })
    });
    let refs: Vec<&Map<String, Value>> = batch.iter().collect();
    group.bench_function("apinode_find_batch", |b| {
        b.iter(|| {
            out.clear();
            for found in lookup.find_batch(&refs).expect("valid keys") {
                if let Match::Row(row) = found {
                    lookup.write_row(Some(row), &mut out);
                }
            }
            black_box(out.len())
        })
    });
    group.bench_function("apinode_find_batch_write_matches", |b| {
        b.iter(|| {
            out.clear();
            let matches = lookup.find_batch(&refs).expect("valid keys");
            black_box(lookup.write_matches(&matches, &mut out).len())
        })
    });
    group.bench_function("naive_hashmap_json_tree", |b| {
        b.iter(|| {
            out.clear();
            for data in batch {
                naive.lookup(data, &mut out);
            }
            black_box(out.len())
        })
    });
    let keys = arrow_array::StringArray::from_iter_values(
        batch.iter().map(|d| d["key"].as_str().expect("string key")),
    );
    let keys = RecordBatch::try_from_iter([("k", Arc::new(keys) as arrow_array::ArrayRef)])
        .expect("a key batch");
    datafusion
        .register_batch("wanted", keys)
        .expect("register the keys");
    group.bench_function("datafusion_join", |b| {
        b.iter(|| {
            let batches = runtime.block_on(async {
                datafusion
                    .sql("SELECT c.* FROM wanted w JOIN customers c ON c.key = w.k")
                    .await
                    .expect("plans")
                    .collect()
                    .await
                    .expect("runs")
            });
            black_box(batches.len())
        })
    });
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
