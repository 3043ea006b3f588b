//! Behaviour of the runtime through its public API: the service and generation lifecycle,
//! dispatch, auth, lookups, persistence across restarts, and refusal of bad generations.

use apinode_bundle::BuildOptions;
use apinode_lookup::{JsonRecord, Record};
use apinode_runtime::{
    Action, CallBody, CallRequest, CallResponse, Credentials, Dispatch, Error, LookupItem, Mapping,
    MappingEntry, Output, Runtime, RuntimeConfig,
};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

mod predict;
mod referenced;

const ADMIN: &str = "test-admin";
const KEY: &str = "secret-key-1";

/// Writes a service folder with a small customers dataset and two lookup endpoints, then
/// builds it as generation `version`. `extra` is appended to service.toml.
fn build_bundle(dir: &Path, version: &str, city_of_1: &str, extra: &str) -> PathBuf {
    let service = dir.join(format!("svc-{version}"));
    std::fs::create_dir_all(service.join("data")).unwrap();
    // Files the endpoints in `extra` can name: a model, and something that is not one.
    predict::write_spend_model(&service.join("models/spend"));
    std::fs::write(service.join("model.bin"), b"model").unwrap();
    std::fs::write(
        service.join("data/customers.csv"),
        format!(
            "id,email,country,city,score\n\
             1,a@x.io,FR,{city_of_1},1.5\n\
             2,b@x.io,FR,Lyon,2\n\
             3,c@x.io,US,Austin,\n\
             4,d@x.io,US,Austin,4.25\n"
        ),
    )
    .unwrap();
    std::fs::write(
        service.join("service.toml"),
        format!(
            r#"
[service]
id = "customers"

[auth]
mode = "api-keys"
keys = [{{ id = "k1", key = "{KEY}" }}]

[[datasets]]
name = "customers"
path = "data/customers.csv"

[[endpoints]]
id = "by-id"
kind = "dataset-lookup"
[endpoints.lookup]
dataset = "customers"
keys = [{{ column = "id", input = "customer" }}]
columns = ["email", {{ column = "city", output = "town" }}, "score"]

[[endpoints]]
id = "by-place"
kind = "dataset-lookup"
[endpoints.lookup]
dataset = "customers"
keys = ["country", "city"]
columns = ["id"]
on_no_match = "null"
on_multiple_matches = "fail"
{extra}
"#
        ),
    )
    .unwrap();
    let out = dir.join(format!("{version}.zip"));
    apinode_bundle::build(
        &service,
        &out,
        &BuildOptions {
            version: Some(version.to_owned()),
            ..BuildOptions::default()
        },
    )
    .unwrap();
    out
}

struct Node {
    _dir: tempfile::TempDir,
    data_dir: PathBuf,
    work: PathBuf,
    runtime: Runtime,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let runtime = Runtime::open(RuntimeConfig::new(&data_dir)).unwrap();
        Node {
            _dir: dir,
            data_dir,
            work,
            runtime,
        }
    }

    /// A node whose `customers` service answers with generation `v1` (city of 1: Paris).
    fn serving_v1() -> Node {
        let node = Node::new();
        node.runtime.create_service("customers", ADMIN).unwrap();
        node.import("v1", "Paris").unwrap();
        node.runtime.switch_to_newest("customers", ADMIN).unwrap();
        node
    }

    fn restart(&mut self) {
        self.runtime = Runtime::open(RuntimeConfig::new(&self.data_dir)).unwrap();
    }

    fn import(&self, version: &str, city_of_1: &str) -> apinode_runtime::Result<String> {
        let archive = build_bundle(&self.work, version, city_of_1, "");
        self.runtime
            .import_generation_from_file("customers", &archive, ADMIN)
            .map(|g| g.id)
    }

    fn call(
        &self,
        endpoint: &str,
        action: Action,
        body: Value,
        dispatch: Dispatch,
    ) -> apinode_runtime::Result<CallResponse> {
        self.runtime.call(&CallRequest {
            service: "customers",
            endpoint,
            action,
            body: CallBody::Json(&body),
            dispatch,
            credentials: Credentials::ApiKey(KEY),
        })
    }

    fn lookup(&self, customer: Value) -> apinode_runtime::Result<(String, Value)> {
        let response = self.call(
            "by-id",
            Action::Lookup,
            json!({"data": {"customer": customer}}),
            Dispatch::default(),
        )?;
        Ok((response.generation.to_string(), first_result(&response)))
    }
}

fn first_result(response: &CallResponse) -> Value {
    results(response).into_iter().next().unwrap()
}

fn results(response: &CallResponse) -> Vec<Value> {
    let Output::Lookup(output) = &response.output else {
        panic!("not a lookup answer: {:?}", response.output);
    };
    output
        .items
        .iter()
        .map(|item| match item {
            LookupItem::Data(_) => serde_json::from_slice(output.data(item).unwrap()).unwrap(),
            LookupItem::Ignored { reason } => json!({"ignored": reason}),
        })
        .collect()
}

fn town_of_1(node: &Node, dispatch: Dispatch) -> String {
    let response = node
        .call(
            "by-id",
            Action::Lookup,
            json!({"data": {"customer": 1}}),
            dispatch,
        )
        .unwrap();
    first_result(&response)["town"].as_str().unwrap().to_owned()
}

#[test]
fn lifecycle_from_import_to_delete() {
    let node = Node::new();
    node.runtime.create_service("customers", ADMIN).unwrap();
    assert!(matches!(
        node.runtime.create_service("customers", ADMIN),
        Err(Error::Conflict(_))
    ));
    assert_eq!(node.import("v1", "Paris").unwrap(), "v1");

    // Imported is not active.
    let err = node.lookup(json!(1)).unwrap_err();
    assert!(
        matches!(err, Error::Unavailable(ref m) if m.contains("no active generation")),
        "{err}"
    );

    assert_eq!(
        node.runtime.switch_to_newest("customers", ADMIN).unwrap(),
        "v1"
    );
    let (generation, row) = node.lookup(json!(1)).unwrap();
    assert_eq!(generation, "v1");
    assert_eq!(
        row,
        json!({"email": "a@x.io", "town": "Paris", "score": 1.5})
    );
    // Types survive: a NULL score is null.
    assert_eq!(node.lookup(json!("3")).unwrap().1["score"], Value::Null);
    assert_eq!(
        node.lookup(json!(99)).unwrap().1,
        json!({"ignored": "NO_LOOKUP_MATCH"})
    );

    node.runtime.set_enabled("customers", false, ADMIN).unwrap();
    assert!(matches!(node.lookup(json!(1)), Err(Error::Unavailable(m)) if m.contains("disabled")));
    node.runtime.set_enabled("customers", true, ADMIN).unwrap();
    assert!(node.lookup(json!(1)).is_ok());

    node.runtime.delete_service("customers", ADMIN).unwrap();
    assert!(matches!(
        node.lookup(json!(1)),
        Err(Error::NotFound {
            what: "service",
            ..
        })
    ));
    assert!(node.runtime.list_services().is_empty());
    assert!(!node.data_dir.join("services/customers").exists());
}

/// A lookup's keys read from its `data` parsed as a `JsonRecord` (what the server does for a
/// plain lookup body, and for each item of a `lookup-multi` one) give the answer, or the
/// error, they give read from the tree.
#[test]
fn a_lookup_reads_its_keys_from_a_record_as_from_a_tree() {
    let node = Node::serving_v1();
    let call = |action: Action, body: CallBody<'_>| match node.runtime.call(&CallRequest {
        service: "customers",
        endpoint: "by-id",
        action,
        body,
        dispatch: Dispatch::default(),
        credentials: Credentials::ApiKey(KEY),
    }) {
        Ok(response) => format!("{} {:?}", response.generation, results(&response)),
        Err(e) => format!("error: {e}"),
    };
    let answer = |body: CallBody<'_>| call(Action::Lookup, body);
    let datas = [
        r#"{"customer": 1}"#,
        r#"{"customer": "3"}"#,
        r#"{"customer": 1.0}"#,
        r#"{"customer": 99}"#,
        r#"{"customer": "x"}"#,
        r#"{"customer": null}"#,
        r#"{}"#,
        r#"{"customer": true}"#,
        r#"{"customer": [1]}"#,
        r#"{"customer": {"id": 1}}"#,
        r#"{"customer": 2, "customer": 1, "other": "\u00e9"}"#,
    ];
    let records: Vec<JsonRecord<'_>> = datas
        .iter()
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let trees: Vec<Value> = datas
        .iter()
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    for ((data, record), tree) in datas.iter().zip(&records).zip(&trees) {
        let body = json!({ "data": tree });
        let by_tree = answer(CallBody::Json(&body));
        assert_eq!(answer(CallBody::LookupData(record)), by_tree, "{data}");
        if *data == r#"{"customer": 1}"# {
            assert!(by_tree.contains("Paris"), "{by_tree}");
        }
    }
    // `lookup-multi`: each record after a found one, then all of them (the first error wins),
    // then none.
    let multi = |indexes: &[usize]| {
        let items: Vec<Value> = indexes.iter().map(|&i| json!({"data": trees[i]})).collect();
        let body = json!({ "items": items });
        let by_tree = call(Action::LookupMulti, CallBody::Json(&body));
        let items: Vec<&dyn Record> = indexes
            .iter()
            .map(|&i| &records[i] as &dyn Record)
            .collect();
        let by_records = call(Action::LookupMulti, CallBody::LookupItems(&items));
        assert_eq!(by_records, by_tree, "{indexes:?}");
        by_tree
    };
    for i in 1..datas.len() {
        multi(&[0, i]);
    }
    let all: Vec<usize> = (0..datas.len()).collect();
    assert!(
        multi(&all).contains("items[4]"),
        "the first bad item is named"
    );
    assert!(multi(&[]).contains("[]"));
}

#[test]
fn lookup_multi_composite_keys_and_behaviours() {
    let node = Node::serving_v1();

    let response = node
        .call(
            "by-place",
            Action::LookupMulti,
            json!({"items": [
                {"data": {"country": "FR", "city": "Lyon"}},
                {"data": {"country": "DE", "city": "Berlin"}},
            ]}),
            Dispatch::default(),
        )
        .unwrap();
    assert_eq!(
        results(&response),
        vec![json!({"id": 2}), json!({"id": null})]
    );

    // Several matches are configured to fail; the error names the item.
    let err = node
        .call(
            "by-place",
            Action::LookupMulti,
            json!({"items": [{"data": {"country": "FR", "city": "Lyon"}}, {"data": {"country": "US", "city": "Austin"}}]}),
            Dispatch::default(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Lookup { item: Some(1), .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("items[1]: 2 rows of dataset `customers`"),
        "{err}"
    );

    // Missing key fails by default, naming the input.
    let err = node
        .call(
            "by-id",
            Action::Lookup,
            json!({"data": {}}),
            Dispatch::default(),
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "missing lookup key `customer`");
    // Malformed bodies name the field.
    let err = node
        .call(
            "by-id",
            Action::Lookup,
            json!({"items": []}),
            Dispatch::default(),
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidQuery { ref location, .. } if location == "data"),
        "{err}"
    );
    let err = node
        .call(
            "by-id",
            Action::LookupMulti,
            json!({"items": [{"data": 1}]}),
            Dispatch::default(),
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidQuery { ref location, .. } if location == "items[0].data"),
        "{err}"
    );
    // A route the kind does not answer.
    let err = node
        .call("by-id", Action::Predict, json!({}), Dispatch::default())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "endpoint `by-id` is a dataset-lookup endpoint: it answers `lookup` and `lookup-multi`, not `predict`"
    );
    let err = node
        .call("nope", Action::Lookup, json!({}), Dispatch::default())
        .unwrap_err();
    assert!(matches!(
        err,
        Error::NotFound {
            what: "endpoint",
            ..
        }
    ));
}

#[test]
fn api_keys_are_checked() {
    let node = Node::serving_v1();
    let body = json!({"data": {"customer": 1}});
    let call = |credentials| {
        node.runtime.call(&CallRequest {
            service: "customers",
            endpoint: "by-id",
            action: Action::Lookup,
            body: CallBody::Json(&body),
            dispatch: Dispatch::default(),
            credentials,
        })
    };
    assert!(matches!(
        call(Credentials::None),
        Err(Error::Unauthorized(_))
    ));
    assert!(matches!(
        call(Credentials::ApiKey("wrong")),
        Err(Error::Unauthorized(_))
    ));
    assert!(matches!(
        call(Credentials::Bearer(KEY)),
        Err(Error::Unauthorized(_))
    ));
    assert_eq!(
        call(Credentials::ApiKey(KEY)).unwrap().key_id.as_deref(),
        Some("k1")
    );
}

#[test]
fn mapping_dispatch_hash_based_and_forced() {
    let node = Node::new();
    node.runtime.create_service("customers", ADMIN).unwrap();
    node.import("v1", "Paris").unwrap();
    node.import("v2", "Nice").unwrap();
    node.runtime
        .set_mapping(
            "customers",
            Mapping {
                entries: vec![
                    MappingEntry {
                        generation: "v1".into(),
                        proba: 0.5,
                    },
                    MappingEntry {
                        generation: "v2".into(),
                        proba: 0.5,
                    },
                ],
                hash_based: true,
            },
            ADMIN,
        )
        .unwrap();
    let keyed = |key: &str| Dispatch {
        dispatch_key: Some(key.into()),
        ..Dispatch::default()
    };
    let mut seen = std::collections::HashSet::new();
    for i in 0..40 {
        let key = format!("user-{i}");
        let first = town_of_1(&node, keyed(&key));
        for _ in 0..5 {
            assert_eq!(
                town_of_1(&node, keyed(&key)),
                first,
                "key {key} changed generation"
            );
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "40 keys should reach both generations");

    let forced = |g: &str| Dispatch {
        forced_generation: Some(g.into()),
        ..Dispatch::default()
    };
    assert_eq!(town_of_1(&node, forced("v2")), "Nice");
    assert_eq!(town_of_1(&node, forced("v1")), "Paris");
    let err = node
        .call(
            "by-id",
            Action::Lookup,
            json!({"data": {"customer": 1}}),
            forced("v9"),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotFound {
                what: "generation",
                ..
            }
        ),
        "{err}"
    );

    // Mappings are checked.
    let bad = Mapping {
        entries: vec![MappingEntry {
            generation: "v7".into(),
            proba: 1.0,
        }],
        hash_based: false,
    };
    assert!(matches!(
        node.runtime.set_mapping("customers", bad, ADMIN),
        Err(Error::InvalidRequest(_))
    ));
    node.runtime.switch_to("customers", "v1", ADMIN).unwrap();
    assert_eq!(town_of_1(&node, Dispatch::default()), "Paris");
    assert!(matches!(
        node.runtime.switch_to("customers", "v8", ADMIN),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn state_survives_a_restart_without_reimport() {
    let mut node = Node::new();
    node.runtime.create_service("customers", ADMIN).unwrap();
    node.import("v1", "Paris").unwrap();
    node.import("v2", "Nice").unwrap();
    node.runtime.switch_to("customers", "v2", ADMIN).unwrap();
    node.runtime.ensure_admin_key(Some("admin-secret")).unwrap();
    node.restart();
    assert_eq!(town_of_1(&node, Dispatch::default()), "Nice");
    let view = node.runtime.list_generations("customers").unwrap();
    assert_eq!(
        view.generations
            .iter()
            .map(|g| g.id.as_str())
            .collect::<Vec<_>>(),
        ["v1", "v2"]
    );
    assert!(view.generations.iter().all(|g| g.loaded));
    assert_eq!(view.mapping, Some(Mapping::single("v2")));
    assert_eq!(
        node.runtime.authenticate_admin("admin-secret").as_deref(),
        Some("env")
    );
}

#[test]
fn a_bad_generation_never_replaces_a_good_one() {
    let node = Node::serving_v1();

    // Not a bundle at all.
    let junk = node.work.join("junk.zip");
    std::fs::write(&junk, b"this is not a zip").unwrap();
    let err = node
        .runtime
        .import_generation_from_file("customers", &junk, ADMIN)
        .unwrap_err();
    assert!(matches!(err, Error::Bundle { .. }), "{err}");

    // A valid bundle whose SQL endpoint would change bundled (read-only) data: refused at
    // import, naming the statement.
    let refused = |version: &str, extra: &str| {
        let archive = build_bundle(&node.work, version, "Paris", extra);
        node.runtime
            .import_generation_from_file("customers", &archive, ADMIN)
            .unwrap_err()
    };
    let err = refused(
        "v3",
        "[[endpoints]]\nid = \"q\"\nkind = \"sql-query\"\n[endpoints.sql]\ndatasets = [\"customers\"]\nstatements = [{ sql = \"SELECT 1\" }, { sql = \"DELETE FROM customers\" }]\n",
    );
    assert!(
        err.to_string()
            .contains("endpoint `q`: sql.statements[1]: "),
        "{err}"
    );
    assert!(matches!(err, Error::Unservable { .. }));

    // A valid bundle whose model file is not a model: the error names the file and why.
    let err = refused(
        "v4",
        "[[endpoints]]\nid = \"score\"\nkind = \"prediction\"\n[endpoints.model]\npath = \"model.bin\"\n",
    );
    assert!(
        err.to_string()
            .contains("endpoint `score`: `model.bin` is not a readable zip archive"),
        "{err}"
    );

    // Same id, different content: refused. Same content again: accepted, nothing changes.
    let err = node.import("v1", "Nice").unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    assert_eq!(node.import("v1", "Paris").unwrap(), "v1");

    // A relative path is refused (the client sends absolute paths).
    let err = node
        .runtime
        .import_generation_from_file("customers", Path::new("v1.zip"), ADMIN)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)));

    // Through all of it, v1 kept serving.
    assert_eq!(town_of_1(&node, Dispatch::default()), "Paris");
    assert_eq!(
        node.runtime
            .list_generations("customers")
            .unwrap()
            .generations
            .len(),
        1
    );
    assert_eq!(
        node.runtime.switch_to_newest("customers", ADMIN).unwrap(),
        "v1"
    );
}

#[test]
fn admin_keys_are_generated_once_and_stored_hashed() {
    let node = Node::new();
    let secret = node
        .runtime
        .ensure_admin_key(None)
        .unwrap()
        .expect("a first key is generated");
    assert!(node.runtime.ensure_admin_key(None).unwrap().is_none());
    assert_eq!(
        node.runtime.authenticate_admin(&secret).as_deref(),
        Some("initial")
    );
    assert!(node.runtime.authenticate_admin("nope").is_none());
    let state = std::fs::read_to_string(node.data_dir.join("state.json")).unwrap();
    assert!(!state.contains(&secret), "the secret must not be stored");

    let (info, new_secret) = node
        .runtime
        .create_admin_key(Some("ci".into()), None, Some("me".into()), None, ADMIN)
        .unwrap();
    assert_eq!(
        node.runtime.authenticate_admin(&new_secret),
        Some(info.id.clone())
    );
    assert_eq!(node.runtime.list_admin_keys().len(), 2);
    node.runtime.delete_admin_key(&new_secret, ADMIN).unwrap();
    assert!(node.runtime.authenticate_admin(&new_secret).is_none());
    node.runtime
        .delete_admin_key_by_id("initial", ADMIN)
        .unwrap();
    assert!(matches!(
        node.runtime.delete_admin_key_by_id("initial", ADMIN),
        Err(Error::NotFound { .. })
    ));

    // An expired key is refused.
    let (_, expired) = node
        .runtime
        .create_admin_key(None, None, None, Some(json!(1000)), ADMIN)
        .unwrap();
    assert!(node.runtime.authenticate_admin(&expired).is_none());
}

#[test]
fn metrics_count_requests_per_endpoint() {
    let node = Node::serving_v1();
    node.lookup(json!(1)).unwrap();
    node.lookup(json!(2)).unwrap();
    let _ = node.call(
        "by-id",
        Action::Lookup,
        json!({"data": {}}),
        Dispatch::default(),
    );
    let metrics = node.runtime.metrics();
    let service = &metrics.services[0];
    assert_eq!(service.active_generations, ["v1"]);
    assert!(service.resident_bytes > 0);
    let (_, by_id) = service
        .endpoints
        .iter()
        .find(|(id, _)| id == "by-id")
        .unwrap();
    assert_eq!((by_id.requests, by_id.errors, by_id.items), (3, 1, 3));
}
