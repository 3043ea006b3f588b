//! Single-key and batch lookups on a generated customers table (1M rows by default), against
//! the straightforward baseline a first implementation would write: a
//! `HashMap<String, usize>` from owned key to row, and a `serde_json::Value` object built and
//! serialized per answer.
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
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::hint::black_box;
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
    group.bench_function("naive_hashmap_json_tree", |b| {
        b.iter(|| {
            out.clear();
            for data in batch {
                naive.lookup(data, &mut out);
            }
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
