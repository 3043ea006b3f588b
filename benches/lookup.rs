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
//! Groups: `lookup_single` (JSON key in, JSON row out, the HTTP endpoint's work),
//! `lookup_probe` (key to row id), `lookup_row_values` (an embedding program's lookup: a typed
//! key in, every column's value of the row read, no JSON), `lookup_write` (the JSON writing
//! alone), `lookup_batch_1000`.
//!
//! `cargo bench -p apinode-benches --bench lookup`; CI runs it once as a smoke test with
//! `APINODE_BENCH_ROWS=10000 cargo test --benches`.

use apinode_benches::{bench_rows, customer_key, customers_table};
use apinode_lookup::{KeyValue, Lookup, LookupConfig, Match};
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
    fn probe(&self, key: &str) -> Option<i64> {
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

impl Sqlite {
    /// An embedding program's lookup: every column of the key's row read (folded into a
    /// checksum so nothing is optimized away), no JSON.
    fn row_values(&self, key: &str) -> u64 {
        let mut statement = self
            .connection
            .prepare_cached("SELECT * FROM customers WHERE key = ?1")
            .expect("prepare");
        let mut rows = statement.query([key]).expect("query");
        let Some(row) = rows.next().expect("step") else {
            return 0;
        };
        let mut sum = 0u64;
        for i in 0..self.prefixes.len() {
            sum = sum.wrapping_add(match row.get_ref(i).expect("column") {
                ValueRef::Null => 1,
                ValueRef::Integer(v) => v as u64,
                ValueRef::Real(v) => v.to_bits(),
                ValueRef::Text(t) | ValueRef::Blob(t) => t.len() as u64,
            });
        }
        sum
    }
}

/// The same for apinode: the table's columns downcast once, as an embedding program would.
enum TypedArray<'a> {
    Int(&'a arrow_array::Int64Array),
    Float(&'a arrow_array::Float64Array),
    Date(&'a arrow_array::Date32Array),
    Bool(&'a arrow_array::BooleanArray),
    Str(&'a arrow_array::StringArray),
}

/// The next query index, wrapping: a compare instead of a division, so the loop costs both
/// engines next to nothing (a `%` by a runtime length is a ~25-cycle `div`, a third of a
/// cache-hot probe).
#[inline]
fn next_index(i: usize, len: usize) -> usize {
    if i + 1 >= len { 0 } else { i + 1 }
}

fn typed_arrays(batch: &RecordBatch) -> Vec<TypedArray<'_>> {
    batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Int64 => TypedArray::Int(c.as_primitive::<Int64Type>()),
            DataType::Float64 => TypedArray::Float(c.as_primitive::<Float64Type>()),
            DataType::Date32 => TypedArray::Date(c.as_primitive::<Date32Type>()),
            DataType::Boolean => TypedArray::Bool(c.as_boolean()),
            _ => TypedArray::Str(c.as_string::<i32>()),
        })
        .collect()
}

fn apinode_row_values(lookup: &Lookup, columns: &[TypedArray<'_>], key: &str) -> u64 {
    let Ok(Match::Row(row)) = lookup.find_key(&[KeyValue::Str(key.into())]) else {
        return 0;
    };
    let mut sum = 0u64;
    for column in columns {
        sum = sum.wrapping_add(match column {
            TypedArray::Int(a) if a.is_valid(row) => a.value(row) as u64,
            TypedArray::Float(a) if a.is_valid(row) => a.value(row).to_bits(),
            TypedArray::Date(a) if a.is_valid(row) => a.value(row) as u64,
            TypedArray::Bool(a) if a.is_valid(row) => a.value(row) as u64,
            TypedArray::Str(a) if a.is_valid(row) => a.value(row).len() as u64,
            _ => 1,
        });
    }
    sum
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
            i = next_index(i, queries.len());
            out.clear();
            if let Match::Row(row) = lookup.find(&queries[i]).expect("valid key") {
                lookup.write_row(Some(row), &mut out);
            }
            black_box(out.len())
        })
    });
    group.bench_function("naive_hashmap_json_tree", |b| {
        b.iter(|| {
            i = next_index(i, queries.len());
            out.clear();
            black_box(naive.lookup(&queries[i], &mut out))
        })
    });
    group.bench_function("sqlite_indexed", |b| {
        b.iter(|| {
            i = next_index(i, queries.len());
            out.clear();
            black_box(sqlite.lookup(&queries[i], &mut out))
        })
    });
    group.bench_function("datafusion_where_key", |b| {
        b.iter(|| {
            i = next_index(i, queries.len());
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
    let keys: Vec<&str> = queries
        .iter()
        .map(|q| q["key"].as_str().expect("string key"))
        .collect();
    let mut group = c.benchmark_group(format!("lookup_probe_{rows}_rows"));
    group.throughput(Throughput::Elements(1));
    group.bench_function("apinode_find", |b| {
        b.iter(|| {
            i = next_index(i, queries.len());
            black_box(lookup.find(&queries[i]).expect("valid key"))
        })
    });
    group.bench_function("apinode_find_key", |b| {
        b.iter(|| {
            i = next_index(i, keys.len());
            black_box(
                lookup
                    .find_key(&[KeyValue::Str(keys[i].into())])
                    .expect("valid key"),
            )
        })
    });
    group.bench_function("sqlite_indexed_rowid", |b| {
        b.iter(|| {
            i = next_index(i, keys.len());
            black_box(sqlite.probe(keys[i]))
        })
    });
    group.finish();

    // An embedding program's lookup: typed key in, every column of the row read, no JSON.
    let columns = typed_arrays(table.batch());
    let mut group = c.benchmark_group(format!("lookup_row_values_{rows}_rows"));
    group.throughput(Throughput::Elements(1));
    group.bench_function("apinode_find_key", |b| {
        b.iter(|| {
            i = next_index(i, keys.len());
            black_box(apinode_row_values(&lookup, &columns, keys[i]))
        })
    });
    group.bench_function("sqlite_indexed", |b| {
        b.iter(|| {
            i = next_index(i, keys.len());
            black_box(sqlite.row_values(keys[i]))
        })
    });
    group.finish();
    assert_eq!(
        apinode_row_values(&lookup, &columns, keys[7]),
        sqlite.row_values(keys[7]),
        "both engines read the same row"
    );

    // The JSON writing alone, on the rows the queries find.
    let found: Vec<usize> = queries
        .iter()
        .map(|q| match lookup.find(q).expect("valid key") {
            Match::Row(row) => row,
            other => panic!("every query key exists, got {other:?}"),
        })
        .collect();
    let mut group = c.benchmark_group(format!("lookup_write_{rows}_rows"));
    group.throughput(Throughput::Elements(1));
    group.bench_function("apinode_write_row", |b| {
        b.iter(|| {
            i = next_index(i, found.len());
            out.clear();
            lookup.write_row(Some(found[i]), &mut out);
            black_box(out.len())
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
    let wanted = arrow_array::StringArray::from_iter_values(
        batch.iter().map(|d| d["key"].as_str().expect("string key")),
    );
    let wanted = RecordBatch::try_from_iter([("k", Arc::new(wanted) as arrow_array::ArrayRef)])
        .expect("a key batch");
    datafusion
        .register_batch("wanted", wanted)
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

    side_by_side(&lookup, &sqlite, &columns, &queries, &keys);
}

/// One engine's way of answering the `i`-th query, returning something to keep.
type Engine<'a> = Box<dyn FnMut(usize) -> u64 + 'a>;

/// The ratios against SQLite measured interleaved: each round times a block of every query
/// on apinode then on SQLite (the order alternating between rounds), so the machine's drift
/// over minutes (10-40% on this shared VM) hits both sides of each ratio alike. Reports each
/// engine's median time per lookup and the median, lowest and highest per-round ratio, and
/// writes them to `target/bench-results/lookup-side-by-side.json`. Runs unless a filter is
/// given that does not mention `side` (`cargo bench --bench lookup -- side`).
fn side_by_side(
    lookup: &Lookup,
    sqlite: &Sqlite,
    columns: &[TypedArray<'_>],
    queries: &[Map<String, Value>],
    keys: &[&str],
) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let filter = args.iter().find(|a| !a.starts_with('-'));
    if filter.is_some_and(|f| !f.contains("side")) {
        return;
    }
    let rounds = if full { 31 } else { 1 };
    let mut out = Vec::with_capacity(1 << 16);
    let mut pairs: Vec<(&str, &str, Engine<'_>, Engine<'_>)> = vec![
        (
            "json_answer",
            "JSON key in, the row written as JSON (find + write_row vs SELECT * + JSON)",
            Box::new(|i| {
                out.clear();
                if let Match::Row(row) = lookup.find(&queries[i]).expect("valid key") {
                    lookup.write_row(Some(row), &mut out);
                }
                out.len() as u64
            }),
            Box::new(|i| {
                let mut out = Vec::with_capacity(512);
                sqlite.lookup(&queries[i], &mut out);
                out.len() as u64
            }),
        ),
        (
            "row_values",
            "typed key in, every column of the row read, no JSON (find_key vs SELECT *)",
            Box::new(|i| apinode_row_values(lookup, columns, keys[i])),
            Box::new(|i| sqlite.row_values(keys[i])),
        ),
        (
            "probe_typed",
            "typed key to row id (find_key vs SELECT rowid)",
            Box::new(
                |i| match lookup.find_key(&[KeyValue::Str(keys[i].into())]) {
                    Ok(Match::Row(row)) => row as u64,
                    _ => 0,
                },
            ),
            Box::new(|i| sqlite.probe(keys[i]).unwrap_or(0) as u64),
        ),
        (
            "probe_json",
            "JSON key to row id (find vs SELECT rowid)",
            Box::new(|i| match lookup.find(&queries[i]) {
                Ok(Match::Row(row)) => row as u64,
                _ => 0,
            }),
            Box::new(|i| sqlite.probe(keys[i]).unwrap_or(0) as u64),
        ),
    ];
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut report = Vec::new();
    println!(
        "\nlookup_side_by_side ({} rows, {rounds} interleaved rounds of {} lookups per engine)",
        lookup.table().num_rows(),
        keys.len()
    );
    println!("| comparison | apinode | SQLite | ratio (median) | ratio (min..max) |");
    println!("|---|---|---|---|---|");
    for (name, what, apinode, sqlite) in pairs.iter_mut() {
        let mut ours = Vec::with_capacity(rounds);
        let mut theirs = Vec::with_capacity(rounds);
        let mut ratios = Vec::with_capacity(rounds);
        for round in 0..=rounds {
            let time = |engine: &mut Engine<'_>| {
                let start = std::time::Instant::now();
                let mut keep = 0u64;
                for i in 0..keys.len() {
                    keep = keep.wrapping_add(engine(i));
                }
                black_box(keep);
                start.elapsed().as_nanos() as f64 / keys.len() as f64
            };
            let (a, b) = if round % 2 == 0 {
                let a = time(apinode);
                (a, time(sqlite))
            } else {
                let b = time(sqlite);
                (time(apinode), b)
            };
            if round == 0 {
                continue; // warm-up
            }
            ours.push(a);
            theirs.push(b);
            ratios.push(b / a);
        }
        let (low, high) = ratios
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), r| (l.min(*r), h.max(*r)));
        let (ours, theirs, ratio) = (median(ours), median(theirs), median(ratios));
        println!(
            "| {name}: {what} | {ours:.0} ns | {theirs:.0} ns | {ratio:.1}x | {low:.1}..{high:.1}x |"
        );
        report.push(json!({
            "comparison": name, "what": what, "apinode_ns": ours, "sqlite_ns": theirs,
            "ratio_median": ratio, "ratio_min": low, "ratio_max": high, "rounds": rounds,
        }));
    }
    let path = std::env::current_exe()
        .expect("the bench knows its path")
        .ancestors()
        .nth(3)
        .expect("the bench runs from target/<profile>/deps")
        .join("bench-results")
        .join(if full {
            "lookup-side-by-side.json"
        } else {
            "lookup-side-by-side-smoke.json"
        });
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("create bench-results");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&json!({
            "rows": lookup.table().num_rows(), "lookups_per_round": keys.len(), "results": report,
        }))
        .expect("serializes"),
    )
    .expect("write the report");
}

criterion_group!(benches, lookups);
criterion_main!(benches);
