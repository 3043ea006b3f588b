//! Serve key lookups from a Parquet file inside your own program, with `apinode-lookup`.
//!
//! ```sh
//! cargo run --release -p apinode-examples --example lookup_embedded -- FILE.parquet KEY_COLUMN KEY...
//! cargo run --release -p apinode-examples --example lookup_embedded    # on a generated file
//! ```
//!
//! The table is loaded once into Arrow and indexed on the key column; each lookup is a hash
//! probe and writes the matching row as JSON, without copying the table or the keys.

use apinode_lookup::{KeyValue, Lookup, LookupAction, LookupConfig, Match, Table};
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use bytes::Bytes;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, key_column, keys) = match args.as_slice() {
        [path, column, keys @ ..] if !keys.is_empty() => {
            (path.clone(), column.clone(), keys.to_vec())
        }
        [] => {
            let path = std::env::temp_dir().join("apinode-lookup-example.parquet");
            write_example_file(&path)?;
            let keys = vec!["sku-000042".to_owned(), "sku-999999".to_owned()];
            (path.display().to_string(), "sku".to_owned(), keys)
        }
        _ => return Err("usage: lookup_embedded [FILE.parquet KEY_COLUMN KEY...]".into()),
    };

    // 1. Load: Parquet bytes into one Arrow batch (column types normalized).
    let start = Instant::now();
    let table = Arc::new(Table::from_parquet(
        &path,
        Bytes::from(std::fs::read(&path)?),
    )?);

    // 2. Index on the key column. Every column is returned; a key that matches nothing gives
    //    an ignored answer rather than an error; several matches take the first row.
    let mut config = LookupConfig::on_keys(&[key_column.as_str()]);
    config.on_multiple_matches = LookupAction::First;
    let lookup = Lookup::new(table.clone(), config)?;
    println!(
        "{} rows, {} distinct keys, loaded and indexed in {:.1?} ({} KiB of Arrow data, {} KiB of index)",
        table.num_rows(),
        lookup.distinct_keys(),
        start.elapsed(),
        table.resident_bytes() / 1024,
        lookup.index_bytes() / 1024,
    );

    // 3. Look keys up. Queries are JSON objects keyed by input name (here the column name);
    //    strings holding numbers match integer keys.
    let mut out = Vec::new();
    for key in keys {
        let mut query = Map::new();
        query.insert(key_column.clone(), Value::String(key.clone()));
        match lookup.find(&query)? {
            Match::Row(row) => {
                out.clear();
                lookup.write_row(Some(row), &mut out);
                println!("{key}: {}", String::from_utf8_lossy(&out));
            }
            Match::Nulls => println!("{key}: (no row; null outputs)"),
            Match::Ignored(reason) => println!("{key}: ignored ({})", reason.as_str()),
        }
        // 4. A program that already holds typed keys skips the JSON: `find_key` takes one
        //    value per key column (the example file's key column holds strings).
        if let Ok(found) = lookup.find_key(&[KeyValue::Str(key.as_str().into())]) {
            println!("{key}: find_key gives {found:?}");
        }
    }
    Ok(())
}

/// A small product catalogue, so the example runs without arguments.
fn write_example_file(path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let rows = 100_000;
    let batch = RecordBatch::try_from_iter([
        (
            "sku",
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|i| format!("sku-{i:06}")),
            )) as ArrayRef,
        ),
        (
            "stock",
            Arc::new(Int64Array::from_iter_values((0..rows).map(|i| i % 97))),
        ),
        (
            "price",
            Arc::new(Float64Array::from_iter_values(
                (0..rows).map(|i| (i % 1000) as f64 / 10.0),
            )),
        ),
    ])?;
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path)?, batch.schema(), None)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(())
}
