//! Shared fixtures of apinode's benchmarks: generated tables, keys and a model export.
//! Not a library for anyone else; the benchmarks themselves are in this folder's `*.rs`.

use apinode_lookup::Table;
use arrow_array::{
    ArrayRef, BooleanArray, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray,
};
use serde_json::json;
use std::io::Write;
use std::path::Path;
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

/// The churn model's numeric inputs (imputed with the mean, rescaled) and categorical inputs
/// (dummy-encoded, with an "others" level), all columns of [`customers_table`].
pub const CHURN_NUMERIC: [&str; 3] = ["lifetime_value", "orders", "score"];
pub const CHURN_CATEGORIES: [(&str, &[&str]); 2] = [
    ("country", &["FR", "US", "DE", "JP", "BR"]),
    ("segment", &["bronze", "silver", "gold"]),
];

/// Writes a binary logistic regression over [`CHURN_NUMERIC`] and [`CHURN_CATEGORIES`] in
/// Dataiku's model export format (the files `dataiku-scoring` reads), classes `stay` and
/// `churn`: the prediction endpoint the HTTP benchmark serves.
pub fn write_churn_model(dir: &Path) -> std::io::Result<()> {
    let mut columns: Vec<String> = CHURN_NUMERIC.iter().map(|c| c.to_string()).collect();
    let mut per_feature = serde_json::Map::new();
    let mut schema = Vec::new();
    for name in CHURN_NUMERIC {
        per_feature.insert(name.into(), json!({"role": "INPUT", "type": "NUMERIC"}));
        schema.push(json!({"name": name, "type": "double"}));
    }
    let mut dummies = serde_json::Map::new();
    for (name, levels) in CHURN_CATEGORIES {
        per_feature.insert(name.into(), json!({"role": "INPUT", "type": "CATEGORY"}));
        schema.push(json!({"name": name, "type": "string"}));
        dummies.insert(name.into(), json!({"levels": levels, "with_others": true}));
        columns.extend(levels.iter().map(|l| format!("dummy:{name}:{l}")));
        columns.push(format!("dummy:{name}:__Others__"));
    }
    per_feature.insert(
        "churned".into(),
        json!({"role": "TARGET", "type": "CATEGORY"}),
    );
    schema.push(json!({"name": "churned", "type": "string"}));
    let coefficients: Vec<f64> = (0..columns.len())
        .map(|i| ((i * 7919) % 13) as f64 / 10.0 - 0.6)
        .collect();
    let files = [
        (
            "dss_pipeline_meta.json",
            json!({"type": "BINARY_PROBABILISTIC", "algorithm_name": "LOGISTIC",
                   "columns": columns, "classes": ["stay", "churn"]}),
        ),
        (
            "rpreprocessing_params.json",
            json!({"per_feature": per_feature}),
        ),
        ("split/split.json", json!({"schema": {"columns": schema}})),
        ("rmodeling_params.json", json!({})),
        ("user_meta.json", json!({"activeClassifierThreshold": 0.45})),
        (
            "imputed.json",
            json!({"num_columns": CHURN_NUMERIC, "num_values": [5000.0, 100.0, 0.5],
                   "cat_columns": [], "cat_values": []}),
        ),
        (
            "rescalers.json",
            json!({"columns": CHURN_NUMERIC, "shifts": [5000.0, 100.0, 0.5],
                   "inv_scales": [1.0 / 2900.0, 1.0 / 58.0, 1.0 / 0.29]}),
        ),
        ("dummies.json", json!({"details": dummies})),
    ];
    for (name, content) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("a parent"))?;
        std::fs::write(path, content.to_string())?;
    }
    let model = json!({"policy": "MULTINOMIAL",
        "coefficients": [vec![0.0; coefficients.len()], coefficients],
        "intercept": [0.0, -0.3]});
    let file = std::fs::File::create(dir.join("dss_pipeline_model.gz"))?;
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    gz.write_all(model.to_string().as_bytes())?;
    gz.finish()?;
    Ok(())
}
