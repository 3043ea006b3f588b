//! Load errors name their cause; input errors name the column; the documented differences from
//! the reference behave as documented.

use apinode_scoring::{Batch, Column, Error, IgnoreReason, Model, PredictedValue};
use serde_json::{Map, Value, json};

use crate::fixture::{Fixture, LOGISTIC};

fn load_err(f: &Fixture) -> String {
    match Model::load(f.path()) {
        Ok(_) => panic!("the model loaded"),
        Err(e) => e.to_string(),
    }
}

fn rec(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn the_fixture_scores() {
    let f = Fixture::binary();
    let m = Model::load(f.path()).unwrap();
    // num1: (3 - 1) * 0.5 = 1; cat1 "a"; day 1900-01-01 -> (0 - 3.7e9) * 1e-8 = -37.
    let p = m
        .predict(&rec(json!({"num1": 3, "cat1": "a", "day": "1900-01-01"})))
        .unwrap();
    let z: f64 = -0.2 + 0.5 * 1.0 + 1.0 * 1.0 - 1.0 * 0.0 + 0.25 * -37.0;
    let p1 = z.exp() / (1.0 + z.exp());
    assert_eq!(p.probabilities.len(), 2);
    assert!((p.probabilities[1].1 - p1).abs() < 1e-15);
    assert_eq!(
        p.prediction,
        Some(PredictedValue::Class(
            if p1 > 0.3 { "yes" } else { "no" }.into()
        ))
    );
    let s = m.describe();
    assert_eq!(s.threshold, Some(0.3));
    assert_eq!(s.classes, vec!["no", "yes"]);
    assert_eq!(
        s.inputs.len(),
        3,
        "the target is not an input: {:?}",
        s.inputs
    );
    let text = s.to_string();
    assert!(
        text.contains("LOGISTIC") && text.contains("Dummify"),
        "{text}"
    );
}

#[test]
fn model_zip_and_export_zip_load() {
    let f = Fixture::binary();
    let out = tempfile::tempdir().unwrap();
    let model_zip = out.path().join("model.zip");
    f.zip_to(&model_zip);
    let r = rec(json!({"num1": 1.5, "cat1": "zz", "day": "2001-02-03"}));
    let want = Model::load(f.path()).unwrap().predict(&r).unwrap();
    assert_eq!(Model::load(&model_zip).unwrap().predict(&r).unwrap(), want);
    // An export folder holding model.zip.
    assert_eq!(Model::load(out.path()).unwrap().predict(&r).unwrap(), want);
}

#[test]
fn models_load_from_files_in_memory() {
    let f = Fixture::binary();
    let r = rec(json!({"num1": 1.5, "cat1": "zz", "day": "2001-02-03"}));
    let want = Model::load(f.path()).unwrap().predict(&r).unwrap();
    // A model folder's files, as a bundle holds them.
    let mut files = std::collections::HashMap::new();
    for entry in walk(f.path()) {
        let name = entry
            .strip_prefix(f.path())
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        files.insert(name, std::fs::read(&entry).unwrap());
    }
    let model = Model::from_files("bundle model `churn`", files.clone()).unwrap();
    assert_eq!(model.predict(&r).unwrap(), want);
    // An unpacked export: a folder holding only model.zip.
    let out = tempfile::tempdir().unwrap();
    f.zip_to(&out.path().join("model.zip"));
    let zipped = std::collections::HashMap::from([(
        "model.zip".to_owned(),
        std::fs::read(out.path().join("model.zip")).unwrap(),
    )]);
    assert_eq!(
        Model::from_files("export", zipped)
            .unwrap()
            .predict(&r)
            .unwrap(),
        want
    );
    // The zip's bytes themselves, as a bundle holds a zipped model.
    let bytes = std::fs::read(out.path().join("model.zip")).unwrap();
    let from_zip = Model::from_zip("bundle model `churn.zip`", &bytes).unwrap();
    assert_eq!(from_zip.predict(&r).unwrap(), want);
    let err = Model::from_zip("bundle model `churn.zip`", &bytes[..bytes.len() / 2])
        .unwrap_err()
        .to_string();
    assert!(err.contains("bundle model `churn.zip`"), "{err}");
    // Neither: the error names the origin.
    files.retain(|name, _| !name.starts_with("dss_pipeline_meta"));
    let err = Model::from_files("bundle model `churn`", files)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bundle model `churn`"), "{err}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn missing_and_truncated_files() {
    let f = Fixture::binary();
    f.remove("split/split.json");
    let e = load_err(&f);
    assert!(
        e.contains("split/split.json") && e.contains("missing"),
        "{e}"
    );

    let f = Fixture::binary();
    f.write(
        "dummies.json",
        r#"{"details": {"cat1": {"levels": ["a", "b"#,
    );
    let e = load_err(&f);
    assert!(e.contains("dummies.json") && e.contains("EOF"), "{e}");

    let f = Fixture::binary();
    f.write("dss_pipeline_model.gz", "not gzip at all");
    let e = load_err(&f);
    assert!(
        e.contains("dss_pipeline_model.gz") && e.contains("gzip"),
        "{e}"
    );

    let f = Fixture::binary();
    let full = {
        let mut v = Vec::new();
        let mut gz = flate2::write::GzEncoder::new(&mut v, flate2::Compression::default());
        std::io::Write::write_all(&mut gz, LOGISTIC.as_bytes()).unwrap();
        gz.finish().unwrap();
        v
    };
    std::fs::write(
        f.path().join("dss_pipeline_model.gz"),
        &full[..full.len() / 2],
    )
    .unwrap();
    let e = load_err(&f);
    assert!(e.contains("dss_pipeline_model.gz"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let z = dir.path().join("x.zip");
    std::fs::write(&z, b"PK\x03\x04 truncated").unwrap();
    let e = Model::load(&z).unwrap_err();
    assert!(matches!(e, Error::NotAZip { .. }), "{e}");
    assert!(e.to_string().contains("x.zip"), "{e}");

    let e = Model::load(dir.path()).unwrap_err();
    assert!(matches!(e, Error::NotAModel { .. }), "{e}");
}

#[test]
fn wrong_json_types_name_the_field() {
    let f = Fixture::binary();
    f.write(
        "rescalers.json",
        r#"{"columns": ["num1"], "shifts": ["one"], "inv_scales": [0.5]}"#,
    );
    let e = load_err(&f);
    assert!(
        e.contains("rescalers.json") && e.contains("shifts[0]"),
        "{e}"
    );

    let f = Fixture::binary();
    f.write_gz(r#"{"policy": "MULTINOMIAL", "coefficients": [[0, 0, 0, 0], [1, "x", 0, 0]], "intercept": [0, 0]}"#);
    let e = load_err(&f);
    assert!(
        e.contains("dss_pipeline_model.gz") && e.contains("coefficients[1][1]"),
        "{e}"
    );

    let f = Fixture::binary();
    f.write(
        "rescalers.json",
        r#"{"columns": ["num1"], "shifts": [1, 2], "inv_scales": [0.5]}"#,
    );
    let e = load_err(&f);
    assert!(e.contains("rescalers.json") && e.contains("shifts"), "{e}");
}

#[test]
fn a_feature_without_producer_is_refused() {
    let f = Fixture::binary();
    f.write(
        "dss_pipeline_meta.json",
        r#"{"type": "BINARY_PROBABILISTIC", "algorithm_name": "LOGISTIC",
            "columns": ["num1", "dummy:cat1:a", "dummy:cat1:__Others__", "hashing:text:17"],
            "classes": ["no", "yes"]}"#,
    );
    let e = Model::load(f.path()).unwrap_err();
    assert!(matches!(e, Error::UnproducedFeature { .. }), "{e}");
    assert!(e.to_string().contains("hashing:text:17"), "{e}");
}

#[test]
fn a_binary_model_needs_its_threshold_file() {
    let f = Fixture::binary();
    f.remove("user_meta.json");
    let e = Model::load(f.path()).unwrap_err();
    assert!(matches!(e, Error::MissingThreshold { .. }), "{e}");
    assert!(e.to_string().contains("user_meta.json"), "{e}");
    // The file without the key means 0.5, as in the reference.
    f.write("user_meta.json", "{}");
    assert_eq!(
        Model::load(f.path()).unwrap().describe().threshold,
        Some(0.5)
    );
}

#[test]
fn unknown_algorithm_and_task() {
    let f = Fixture::binary();
    f.write(
        "dss_pipeline_meta.json",
        r#"{"type": "BINARY_PROBABILISTIC", "algorithm_name": "SVC_CLASSIFIER",
            "columns": ["num1"], "classes": ["no", "yes"]}"#,
    );
    let e = Model::load(f.path()).unwrap_err();
    assert!(matches!(e, Error::UnsupportedAlgorithm { .. }), "{e}");
    assert!(e.to_string().contains("SVC_CLASSIFIER"), "{e}");

    f.write(
        "dss_pipeline_meta.json",
        r#"{"type": "CAUSAL_PREDICTION", "algorithm_name": "LOGISTIC", "columns": ["num1"]}"#,
    );
    let e = load_err(&f);
    assert!(e.contains("CAUSAL_PREDICTION"), "{e}");

    f.write("mlflow_imported_model.json", "{}");
    assert!(matches!(
        Model::load(f.path()).unwrap_err(),
        Error::MlflowModel { .. }
    ));
}

#[test]
fn a_step_reading_an_unknown_column_is_refused() {
    let f = Fixture::binary();
    f.write(
        "dummies.json",
        r#"{"details": {"cat9": {"levels": ["a"], "with_others": false}}}"#,
    );
    let e = load_err(&f);
    assert!(e.contains("dummies.json") && e.contains("cat9"), "{e}");
}

#[test]
fn bad_input_values_name_the_column() {
    let m = Model::load(Fixture::binary().path()).unwrap();
    let e = m
        .predict(&rec(json!({"num1": "abc"})))
        .unwrap_err()
        .to_string();
    assert!(e.contains("num1") && e.contains("abc"), "{e}");
    let e = m
        .predict(&rec(json!({"day": "2020/01/01"})))
        .unwrap_err()
        .to_string();
    assert!(e.contains("day") && e.contains("%Y-%m-%d"), "{e}");
    let rows = vec![rec(json!({"num1": 1})), rec(json!({"num1": [1]}))];
    let e = m.predict_records(&rows).unwrap_err().to_string();
    assert!(e.contains("row 1") && e.contains("num1"), "{e}");
}

#[test]
fn positional_rows_and_typed_batches() {
    let m = Model::load(Fixture::binary().path()).unwrap();
    assert_eq!(
        m.input_columns().collect::<Vec<_>>(),
        vec!["num1", "cat1", "day"]
    );
    let by_name = m
        .predict(&rec(json!({"num1": 4.0, "cat1": "b", "day": "2001-02-03"})))
        .unwrap();
    let positional: Vec<Value> = vec![json!(4.0), json!("b"), json!("2001-02-03")];
    assert_eq!(m.predict(positional.as_slice()).unwrap(), by_name);
    let short: Vec<Value> = vec![json!(4.0), json!("b")];
    let e = m.predict(short.as_slice()).unwrap_err();
    assert!(matches!(e, Error::RowLength { len: 2, .. }), "{e}");
    assert!(e.to_string().contains("num1, cat1, day"), "{e}");
    let rows = vec![positional.clone(), short];
    let e = m.predict_records(&rows).unwrap_err().to_string();
    assert!(e.contains("row 1") && e.contains("2 values"), "{e}");

    let num1 = [4.0, f64::NAN];
    let cat1 = [Some("b"), None];
    let day = [Some("2001-02-03".to_owned()), Some("2001-02-03".to_owned())];
    let batch = Batch::new(2)
        .with("num1", Column::Float(&num1))
        .unwrap()
        .with("cat1", Column::Str(&cat1))
        .unwrap()
        .with("day", Column::String(&day))
        .unwrap();
    let out = m.predict_batch(&batch).unwrap();
    assert_eq!(out.get(0), by_name);
    let nulls = m.predict(&rec(json!({"day": "2001-02-03"}))).unwrap();
    assert_eq!(out.get(1), nulls);
    assert!(Batch::new(3).with("num1", Column::Float(&num1)).is_err());
}

#[test]
fn drop_rows_are_ignored_with_the_reason() {
    let f = Fixture::binary();
    f.write("drop_rows.json", r#"{"columns": ["cat1"]}"#);
    let m = Model::load(f.path()).unwrap();
    let p = m.predict(&rec(json!({"num1": 1, "cat1": ""}))).unwrap();
    assert_eq!(p.prediction, None);
    assert!(p.probabilities.is_empty());
    assert_eq!(
        p.ignored,
        Some(IgnoreReason::DropRows {
            column: "cat1".into()
        })
    );
    assert!(
        m.predict(&rec(json!({"cat1": "a"})))
            .unwrap()
            .prediction
            .is_some()
    );
}

/// Numbers in categorical columns become Python's `str` of them.
#[test]
fn numbers_in_category_columns() {
    let f = Fixture::binary();
    f.write(
        "dummies.json",
        r#"{"details": {"cat1": {"levels": ["1", "2.5"], "with_others": true}}}"#,
    );
    f.write(
        "dss_pipeline_meta.json",
        r#"{"type": "BINARY_PROBABILISTIC", "algorithm_name": "LOGISTIC",
            "columns": ["num1", "dummy:cat1:1", "dummy:cat1:2.5", "day"], "classes": ["no", "yes"]}"#,
    );
    let m = Model::load(f.path()).unwrap();
    let p = |v: Value| {
        m.predict(&rec(json!({"cat1": v, "day": "2001-02-03"})))
            .unwrap()
    };
    let as_str = p(json!("1"));
    assert_eq!(p(json!(1)), as_str);
    assert_ne!(p(json!(1.0)), as_str); // "1.0" is not "1"
    assert_eq!(p(json!(2.5)), p(json!("2.5")));
}

/// Word counts: the reference leaves a vocabulary column NaN when its token occurs in no row
/// of the batch, so one row scored alone gets NaN; here the column is the unrecorded value.
#[test]
fn word_counts_do_not_depend_on_the_batch() {
    let f = Fixture::binary();
    f.write(
        "dss_pipeline_meta.json",
        r#"{"type": "REGRESSION", "algorithm_name": "LINEAR",
            "columns": ["countvec:text:apple", "countvec:text:late delivery"]}"#,
    );
    f.write(
        "rpreprocessing_params.json",
        r#"{"per_feature": {"text": {"role": "INPUT", "type": "TEXT"}}}"#,
    );
    f.write(
        "split/split.json",
        r#"{"schema": {"columns": [{"name": "text", "type": "string"}]}}"#,
    );
    for n in ["imputed.json", "rescalers.json", "dummies.json"] {
        f.remove(n);
    }
    f.write(
        "word_counts.json",
        r#"{"column": ["text"], "vocabulary": [["apple", "late delivery"]], "stop_words": [[]],
            "min_n_grams": [1], "max_n_grams": [2]}"#,
    );
    f.write_gz(r#"{"coefficients": [1.0, 10.0], "intercept": 0.5}"#);
    let m = Model::load(f.path()).unwrap();
    let v = |t: &str| match m.predict(&rec(json!({"text": t}))).unwrap().prediction {
        Some(PredictedValue::Value(v)) => v,
        other => panic!("{other:?}"),
    };
    // The reference gives NaN for the first (no "late delivery" in a one-row batch).
    assert_eq!(v("Apple, apple!"), 2.5);
    assert_eq!(v("Late delivery of an APPLE"), 11.5);
    assert_eq!(v(""), 0.5);
}

/// A missing date in a cyclical encoding, and a missing vector: the reference raises for the
/// whole batch; here the features are NaN (missing) for that row.
#[test]
fn missing_cyclical_dates_and_vectors_are_missing_features() {
    let f = Fixture::binary();
    f.write(
        "dss_pipeline_meta.json",
        r#"{"type": "REGRESSION", "algorithm_name": "DECISION_TREE",
            "columns": ["datetime_cyclical:day:week:sin", "unfold:v:1"]}"#,
    );
    f.write(
        "rpreprocessing_params.json",
        r#"{"per_feature": {"day": {"role": "INPUT", "type": "NUMERIC"},
            "v": {"role": "INPUT", "type": "VECTOR"}}}"#,
    );
    f.write(
        "split/split.json",
        r#"{"schema": {"columns": [{"name": "day", "type": "dateonly"}, {"name": "v", "type": "string"}]}}"#,
    );
    for n in ["imputed.json", "rescalers.json", "dummies.json"] {
        f.remove(n);
    }
    f.write(
        "datetime_cyclical.json",
        r#"{"mapping": {"day": ["WEEK"]}}"#,
    );
    f.write("vectors-unfold.json", r#"{"vector_lengths": {"v": 2}}"#);
    // Left if the feature is missing, else by value.
    f.write_gz(
        r#"{"node_id": [0, 2], "feature": [0, 1], "threshold": [0.5, 0.0], "missing": ["l", "r"],
            "leaf_id": [1, 5, 6], "label": [1.0, 2.0, 3.0]}"#,
    );
    let m = Model::load(f.path()).unwrap();
    let v = |r: Value| match m.predict(&rec(r)).unwrap().prediction {
        Some(PredictedValue::Value(v)) => v,
        other => panic!("{other:?}"),
    };
    // 2024-01-06 is a Saturday: sin(5/7·2π) < 0.5 → left.
    assert_eq!(v(json!({"day": null, "v": "[1, 2]"})), 1.0);
    // A Thursday: sin(3/7 · 2π) = 0.43 ≤ 0.5 → left; a Tuesday: sin(1/7·2π) = 0.78 → right.
    assert_eq!(v(json!({"day": "2024-01-02", "v": "[1, 2]"})), 3.0);
    assert_eq!(v(json!({"day": "2024-01-02", "v": "[1, -2]"})), 2.0);
    assert_eq!(v(json!({"day": "2024-01-02", "v": null})), 3.0);
    assert_eq!(v(json!({"day": "2024-01-02", "v": [0.0, -1.0]})), 2.0);
    let e = m
        .predict(&rec(json!({"day": "2024-01-02", "v": "[1]"})))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`v`") && e.contains("element 1"), "{e}");
}

#[test]
fn calibration_must_fit_the_classes() {
    let f = Fixture::binary();
    f.write_gz(
        r#"{"policy": "MULTINOMIAL", "coefficients": [[0, 0, 0, 0], [0.5, 1.0, -1.0, 0.25]],
            "intercept": [0, -0.2], "calibrator": {"method": "SIGMOID", "from_proba": true,
            "a_array": [1, 2, 3], "b_array": [0, 0, 0]}}"#,
    );
    let e = load_err(&f);
    assert!(e.contains("calibrator") && e.contains("3 classes"), "{e}");
    f.write_gz(
        r#"{"policy": "MULTINOMIAL", "coefficients": [[0, 0, 0, 0], [0.5, 1.0, -1.0, 0.25]],
            "intercept": [0, -0.2], "calibrator": {"method": "BETA", "from_proba": true}}"#,
    );
    let e = load_err(&f);
    assert!(e.contains("BETA"), "{e}");
}

#[test]
fn tree_errors_name_the_tree() {
    let f = Fixture::binary();
    f.write(
        "dss_pipeline_meta.json",
        r#"{"type": "BINARY_PROBABILISTIC", "algorithm_name": "FOREST_CLASSIFIER",
            "columns": ["num1", "dummy:cat1:a", "dummy:cat1:__Others__", "day"], "classes": ["no", "yes"]}"#,
    );
    f.write_gz(
        r#"{"trees": [
            {"node_id": [0], "feature": [0], "threshold": [1.0], "leaf_id": [1, 2], "label": [[1, 0], [0, 1]]},
            {"node_id": [0], "feature": [7], "threshold": [1.0], "leaf_id": [1, 2], "label": [[1, 0], [0, 1]]}]}"#,
    );
    let e = load_err(&f);
    assert!(e.contains("feature 7") && e.contains("produces 4"), "{e}");
    f.write_gz(
        r#"{"trees": [
            {"node_id": [0], "feature": [0], "threshold": [1.0], "leaf_id": [1, 2], "label": [[1, 0], null]}]}"#,
    );
    let e = load_err(&f);
    assert!(
        e.contains("trees[0].label[1]") && e.contains("no label"),
        "{e}"
    );
}
