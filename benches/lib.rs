//! Shared fixtures of apinode's benchmarks: generated tables and keys.
//! Not a library for anyone else; the benchmarks themselves are in this folder's `*.rs`.

use apinode_lookup::Table;
use arrow_array::{
    ArrayRef, BooleanArray, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray,
};
use std::sync::Arc;

/// Rows of the generated table: `APINODE_BENCH_ROWS`, else 1,000,000 (CI's smoke run sets a
/// small value).
pub fn bench_rows() -> usize {
    std::env::var("APINODE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// The key of row `i`: `C` and nine digits.
pub fn customer_key(i: usize) -> String {
    format!("C{i:09}")
}

/// A customers table of ten columns of mixed types, keyed by the string column `key`.
pub fn customers_table(rows: usize) -> Table {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let countries = ["FR", "US", "DE", "JP", "BR", "IT"];
    let segments = ["bronze", "silver", "gold", "platinum"];
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "key",
            Arc::new(StringArray::from_iter_values((0..rows).map(customer_key))),
        ),
        (
            "customer_id",
            Arc::new(Int64Array::from_iter_values(0..rows as i64)),
        ),
        (
            "email",
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|i| format!("customer.{i}@example.com")),
            )),
        ),
        (
            "country",
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|_| countries[next() as usize % countries.len()]),
            )),
        ),
        (
            "segment",
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|_| segments[next() as usize % segments.len()]),
            )),
        ),
        (
            "lifetime_value",
            Arc::new(Float64Array::from_iter_values(
                (0..rows).map(|_| (next() % 1_000_000) as f64 / 100.0),
            )),
        ),
        (
            "orders",
            Arc::new(Int64Array::from_iter((0..rows).map(|_| {
                let n = next() % 200;
                (n != 0).then_some(n as i64)
            }))),
        ),
        (
            "is_active",
            Arc::new(BooleanArray::from_iter(
                (0..rows).map(|_| Some(next() % 10 < 8)),
            )),
        ),
        (
            "signup_date",
            Arc::new(Date32Array::from_iter_values(
                (0..rows).map(|_| 16_000 + (next() % 4000) as i32),
            )),
        ),
        (
            "score",
            Arc::new(Float64Array::from_iter_values(
                (0..rows).map(|_| (next() % 10_000) as f64 / 10_000.0),
            )),
        ),
    ];
    let batch = RecordBatch::try_from_iter(columns).expect("columns of equal length");
    Table::from_batch("customers", batch).expect("a valid table")
}
