//! `prediction` and `clustering` endpoints through the runtime: enrichment from a bundled
//! dataset, the missing / no match / several matches behaviours, `predict-multi` order, the
//! `result` shape, errors that name the item and the feature, and features read without a
//! tree answered as from one.

use super::{ADMIN, KEY, Node, build_bundle};
use apinode_lookup::{JsonRecord, Record};
use apinode_runtime::{
    Action, CallBody, CallRequest, CallResponse, Credentials, Dispatch, Error, Output,
};
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;

/// A linear regression `spend = 10 + 2 * score + basket`, in the export format.
pub(crate) fn write_spend_model(dir: &Path) {
    let write = |name: &str, content: &str| {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    };
    write(
        "dss_pipeline_meta.json",
        r#"{"type": "REGRESSION", "algorithm_name": "LINEAR", "columns": ["score", "basket"]}"#,
    );
    write(
        "rpreprocessing_params.json",
        r#"{"per_feature": {"score": {"role": "INPUT", "type": "NUMERIC"},
            "basket": {"role": "INPUT", "type": "NUMERIC"},
            "spend": {"role": "TARGET", "type": "NUMERIC"}}}"#,
    );
    write(
        "split/split.json",
        r#"{"schema": {"columns": [{"name": "score", "type": "double"},
            {"name": "basket", "type": "double"}, {"name": "spend", "type": "double"}]}}"#,
    );
    write("rmodeling_params.json", "{}");
    let file = std::fs::File::create(dir.join("dss_pipeline_model.gz")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    gz.write_all(br#"{"coefficients": [2.0, 1.0], "intercept": 10.0}"#)
        .unwrap();
    gz.finish().unwrap();
}

/// `spend` enriched from `customers` by id (no match ignored), `spend-strict` failing on a
/// missing key and returning the features it scored, `spend-by-country` enriched on a key
/// that matches several rows.
const ENDPOINTS: &str = r#"
[[endpoints]]
id = "spend"
kind = "prediction"
model = { path = "models/spend" }
[[endpoints.enrich]]
dataset = "customers"
keys = [{ column = "id", input = "customer" }]
columns = ["score"]

[[endpoints]]
id = "spend-strict"
kind = "prediction"
model = { path = "models/spend", return_post_enrich = true }
[[endpoints.enrich]]
dataset = "customers"
keys = [{ column = "id", input = "customer" }]
columns = ["score", { column = "city", output = "town" }]
on_no_match = "null"

[[endpoints]]
id = "spend-plain"
kind = "prediction"
model = { path = "models/spend" }

[[endpoints]]
id = "spend-by-country"
kind = "prediction"
model = { path = "models/spend" }
[[endpoints.enrich]]
dataset = "customers"
keys = ["country"]
columns = ["score"]
"#;

fn serving(extra: &str) -> Node {
    let node = Node::new();
    node.runtime.create_service("customers", ADMIN).unwrap();
    let archive = build_bundle(&node.work, "v1", "Paris", extra);
    node.runtime
        .import_generation_from_file("customers", &archive, ADMIN)
        .unwrap();
    node.runtime.switch_to_newest("customers", ADMIN).unwrap();
    node
}

fn predict(node: &Node, endpoint: &str, body: Value) -> apinode_runtime::Result<Value> {
    node.call(endpoint, Action::Predict, body, Dispatch::default())
        .map(|r| results(&r).remove(0))
}

fn results(response: &CallResponse) -> Vec<Value> {
    let Output::Predict(output) = &response.output else {
        panic!("not a prediction: {:?}", response.output);
    };
    (0..output.items.len())
        .map(|i| serde_json::from_slice(output.result(i)).unwrap())
        .collect()
}

#[test]
fn predictions_are_enriched_then_scored() {
    let node = serving(ENDPOINTS);
    // Customer 2 has score 2: 10 + 2 * 2 + 3.
    assert_eq!(
        predict(
            &node,
            "spend",
            json!({"features": {"customer": 2, "basket": 3}})
        )
        .unwrap(),
        json!({"prediction": 17.0, "ignored": false})
    );
    // Enrichment overrides a feature the query sent.
    assert_eq!(
        predict(
            &node,
            "spend",
            json!({"features": {"customer": 4, "basket": 0, "score": 100}})
        )
        .unwrap(),
        json!({"prediction": 18.5, "ignored": false})
    );
    // No match: ignored by default, with the lookup's reason.
    let ignored = predict(
        &node,
        "spend",
        json!({"features": {"customer": 99, "basket": 1}}),
    )
    .unwrap();
    assert_eq!(ignored["ignored"], json!(true));
    assert_eq!(ignored["ignoreReason"], json!("NO_LOOKUP_MATCH"));
    // Several matches: ignored by default.
    let ignored = predict(
        &node,
        "spend-by-country",
        json!({"features": {"country": "FR", "basket": 1}}),
    )
    .unwrap();
    assert_eq!(ignored["ignoreReason"], json!("MULTIPLE_LOOKUP_MATCHES"));

    // `null` on no match keeps the record: the missing score makes the prediction missing.
    // `postEnrich` shows the features the model saw.
    assert_eq!(
        predict(
            &node,
            "spend-strict",
            json!({"features": {"customer": 1, "basket": 1}})
        )
        .unwrap(),
        json!({"prediction": 14.0, "ignored": false,
               "postEnrich": {"customer": 1, "basket": 1, "score": 1.5, "town": "Paris"}})
    );
    let nulls = predict(
        &node,
        "spend-strict",
        json!({"features": {"customer": 99, "basket": 1}}),
    )
    .unwrap();
    assert_eq!(nulls["prediction"], json!(null));
    assert_eq!(
        nulls["postEnrich"],
        json!({"customer": 99, "basket": 1, "score": null, "town": null})
    );
    // A missing key fails by default, naming the step and the input.
    let err = predict(&node, "spend-strict", json!({"features": {"basket": 1}})).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Enrichment {
                item: None,
                step: 0,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.to_string(), "enrich[0]: missing lookup key `customer`");
}

/// The answer of a prediction call as text (each item's result on its line), or its error.
fn answer_text(node: &Node, endpoint: &str, action: Action, body: CallBody<'_>) -> String {
    let request = CallRequest {
        service: "customers",
        endpoint,
        action,
        body,
        dispatch: Dispatch::default(),
        credentials: Credentials::ApiKey(KEY),
    };
    match node.runtime.call(&request) {
        Ok(response) => {
            let Output::Predict(output) = &response.output else {
                panic!("not a prediction: {:?}", response.output);
            };
            let results: Vec<String> = (0..output.items.len())
                .map(|i| String::from_utf8(output.result(i).to_vec()).unwrap())
                .collect();
            results.join("\n")
        }
        Err(e) => format!("error: {e}"),
    }
}

/// `predict` with its features in a `JsonRecord` (the server's path for a plain body): scored
/// straight from it by a model without enrichment, through the tree's `Map` otherwise; the
/// answer, or the error, is the one the tree gives, byte for byte.
#[test]
fn a_prediction_reads_its_features_from_a_record_as_from_a_tree() {
    let node = serving(ENDPOINTS);
    let answer =
        |endpoint: &str, body: CallBody<'_>| answer_text(&node, endpoint, Action::Predict, body);
    for features in [
        r#"{"score": 2, "basket": 3}"#,
        r#"{"score": 2.5, "basket": -1e3}"#,
        r#"{"score": "4", "basket": " 1.5 "}"#,
        r#"{"score": 9007199254740993, "basket": 18446744073709551615}"#,
        r#"{"score": null, "basket": 1}"#,
        r#"{"score": "", "basket": true}"#,
        r#"{"score": false}"#,
        r#"{}"#,
        r#"{"score": "x", "basket": 1}"#,
        r#"{"score": [1], "basket": 1}"#,
        r#"{"score": {"a": 1}, "basket": 1}"#,
        r#"{"score": 1, "score": 3, "basket": 1, "other": "\u00e9\n"}"#,
        r#"{"customer": 2, "basket": 3}"#,
        r#"{"customer": 99, "basket": 3}"#,
        r#"{"basket": 3}"#,
    ] {
        let record: JsonRecord<'_> = serde_json::from_str(features).unwrap();
        let tree: Value = serde_json::from_str(features).unwrap();
        let body = json!({ "features": tree });
        for endpoint in ["spend-plain", "spend", "spend-strict"] {
            let by_tree = answer(endpoint, CallBody::Json(&body));
            let by_record = answer(endpoint, CallBody::PredictFeatures(&record));
            assert_eq!(by_record, by_tree, "{endpoint} {features}");
        }
    }
    let plain: JsonRecord<'_> = serde_json::from_str(r#"{"score": 2, "basket": 3}"#).unwrap();
    assert_eq!(
        answer("spend-plain", CallBody::PredictFeatures(&plain)),
        r#"{"prediction":17.0,"ignored":false}"#
    );
}

/// `predict-multi` with its items' features in `JsonRecord`s: the answer, or the error (which
/// names the item), is the one the tree gives, byte for byte.
#[test]
fn a_multi_prediction_reads_its_features_from_records_as_from_a_tree() {
    let node = serving(ENDPOINTS);
    let answer = |endpoint: &str, body: CallBody<'_>| {
        answer_text(&node, endpoint, Action::PredictMulti, body)
    };
    let features = [
        r#"{"score": 2, "basket": 3, "customer": 2}"#,
        r#"{"score": 2.5, "basket": -1e3, "customer": 4}"#,
        r#"{"score": "4", "basket": " 1.5 ", "customer": 99}"#,
        r#"{"score": null, "basket": 1}"#,
        r#"{"score": "x", "basket": 1}"#,
        r#"{"score": 1, "score": 3, "basket": 1, "other": "\u00e9\n"}"#,
    ];
    let records: Vec<JsonRecord<'_>> = features
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    let trees: Vec<Value> = features
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    let mut seen_error = false;
    for indexes in [
        vec![0, 1, 2],
        vec![0, 3, 5],
        vec![0, 4],
        (0..6).collect(),
        vec![],
    ] {
        let items: Vec<Value> = indexes
            .iter()
            .map(|&i| json!({"features": trees[i]}))
            .collect();
        let body = json!({ "items": items });
        let items: Vec<&dyn Record> = indexes
            .iter()
            .map(|&i| &records[i] as &dyn Record)
            .collect();
        for endpoint in ["spend-plain", "spend", "spend-strict"] {
            let by_tree = answer(endpoint, CallBody::Json(&body));
            let by_records = answer(endpoint, CallBody::PredictItems(&items));
            assert_eq!(by_records, by_tree, "{endpoint} {indexes:?}");
            seen_error |= by_tree.starts_with("error: items[");
        }
    }
    assert!(seen_error, "an item's error is among the cases");
}

#[test]
fn predict_multi_keeps_the_order_and_names_the_bad_item() {
    let node = serving(ENDPOINTS);
    let response = node
        .call(
            "spend",
            Action::PredictMulti,
            json!({"items": [
                {"features": {"customer": 2, "basket": 3}},
                {"features": {"customer": 99, "basket": 3}},
                {"features": {"customer": 4, "basket": 1}, "context": {"caller": "t"}},
            ]}),
            Dispatch::default(),
        )
        .unwrap();
    let results = results(&response);
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["prediction"], json!(17.0));
    assert_eq!(results[1]["ignoreReason"], json!("NO_LOOKUP_MATCH"));
    assert_eq!(results[2]["prediction"], json!(19.5));

    // A feature the model cannot read: a client error naming the item and the column.
    let err = node
        .call(
            "spend",
            Action::PredictMulti,
            json!({"items": [
                {"features": {"customer": 99, "basket": 3}},
                {"features": {"customer": 2, "basket": 3}},
                {"features": {"customer": 2, "basket": [1, 2]}},
            ]}),
            Dispatch::default(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Scoring { item: Some(2), .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("items[2].features: input column `basket`"),
        "{err}"
    );
    // Malformed bodies name the field; explanations are refused, not silently left out.
    for (body, location) in [
        (json!({"features": 1}), "features"),
        (json!({}), "features"),
        (
            json!({"features": {}, "explanations": {"enabled": true}}),
            "explanations.enabled",
        ),
    ] {
        let err = predict(&node, "spend", body).unwrap_err();
        assert!(
            matches!(err, Error::InvalidQuery { location: ref l, .. } if l == location),
            "{err}"
        );
    }
    let err = node
        .call(
            "spend",
            Action::PredictMulti,
            json!({"items": [{"features": {}}, {"feature": {}}]}),
            Dispatch::default(),
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidQuery { ref location, .. } if location == "items[1].features"),
        "{err}"
    );
    // The metrics count every call and every item, failed ones too.
    let metrics = node.runtime.metrics();
    let (_, spend) = metrics.services[0]
        .endpoints
        .iter()
        .find(|(id, _)| id == "spend")
        .unwrap();
    assert_eq!((spend.requests, spend.errors, spend.items), (6, 5, 11));
}

#[test]
fn the_model_must_fit_the_kind() {
    let node = Node::new();
    node.runtime.create_service("customers", ADMIN).unwrap();
    let archive = build_bundle(
        &node.work,
        "v1",
        "Paris",
        "[[endpoints]]\nid = \"seg\"\nkind = \"clustering\"\nmodel = { path = \"models/spend\" }\n",
    );
    let err = node
        .runtime
        .import_generation_from_file("customers", &archive, ADMIN)
        .unwrap_err();
    assert!(matches!(err, Error::Unservable { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("endpoint `seg` is a `clustering` endpoint but its model predicts (REGRESSION): declare it with kind = \"prediction\""),
        "{err}"
    );
}
