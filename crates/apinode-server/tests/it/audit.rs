//! The query audit log end to end: records of each route, of auth failures and of admin
//! mutations in the store's layout; nothing lost across a `kill -9`; the spool cap's policies.

use super::{Node, admin, build_bundle, json_of, lookup};
use reqwest::blocking::Client;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Starts a node with `config` (TOML) as its configuration file.
fn start_with(data_dir: &Path, config: &str) -> Node {
    std::fs::create_dir_all(data_dir).unwrap();
    let path = data_dir.with_extension("toml");
    std::fs::write(&path, config).unwrap();
    Node::spawn("serve", data_dir, &["--config", path.to_str().unwrap()]).0
}

/// Creates the `shop` service from a fresh bundle and activates it.
fn shop(client: &Client, dir: &Path, url: &str) {
    activate(client, url, "shop", &build_bundle(dir, "v1", "Paris"));
}

/// Creates the service `id`, uploads `bundle` to it and switches it to that generation.
fn activate(client: &Client, url: &str, id: &str, bundle: &Path) {
    let (status, body) = json_of(
        admin(
            client,
            reqwest::Method::POST,
            format!("{url}/admin/api/services"),
        )
        .body(json!({"serviceId": id}).to_string())
        .send()
        .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = json_of(
        admin(
            client,
            reqwest::Method::POST,
            format!("{url}/admin/api/services/{id}/generations/actions/upload"),
        )
        .body(std::fs::read(bundle).unwrap())
        .send()
        .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = json_of(
        admin(
            client,
            reqwest::Method::POST,
            format!("{url}/admin/api/services/{id}/actions/switchToNewest"),
        )
        .send()
        .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
}

fn audit_metrics(client: &Client, url: &str) -> Value {
    let (status, body) = json_of(
        admin(
            client,
            reqwest::Method::GET,
            format!("{url}/admin/api/metrics"),
        )
        .send()
        .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    body["audit"].clone()
}

/// Waits until the spool is empty (everything uploaded).
fn wait_drained(client: &Client, url: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = audit_metrics(client, url);
        if metrics["spoolBytes"] == 0 && metrics["queued"] == metrics["written"] {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "the spool did not drain: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every record in the store, with the file it is in (relative to the store).
fn store_records(store: &Path) -> Vec<(String, Value)> {
    let mut records = Vec::new();
    for path in super::walk(store) {
        let relative = path
            .strip_prefix(store)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            records.push((relative.clone(), serde_json::from_str(line).unwrap()));
        }
    }
    records
}

/// `service=shop/date=YYYY-MM-DD/hour=HH/<node>-<seq>.jsonl` (or `_auth/...`, `_admin/...`).
fn well_placed(file: &str, folder: &str, node: &str, record: &Value) -> bool {
    let parts: Vec<&str> = file.split('/').collect();
    let time = record["time"].as_str().unwrap();
    parts.len() == 4
        && parts[0] == folder
        && parts[1] == format!("date={}", &time[..10])
        && parts[2] == format!("hour={}", &time[11..13])
        && parts[3].starts_with(&format!("{node}-"))
        && parts[3].ends_with(".jsonl")
}

#[test]
fn queries_auth_failures_and_admin_mutations_are_logged() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let node = start_with(
        &data_dir,
        "[audit]\nnode_id = \"n1\"\ndeployment_id = \"prod\"\nsegment_max_age_ms = 100\n",
    );
    let url = node.url.clone();
    let client = Client::new();
    shop(&client, dir.path(), &url);

    let response = client
        .post(format!("{url}/public/api/v1/shop/customer/lookup"))
        .body(r#"{"data": {"id": 1}, "context": {"rid": "one"}}"#)
        .send()
        .unwrap();
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(request_id.len(), 32);
    assert_eq!(response.status(), 200);
    // Through the router (a path that needs normalizing) too.
    let (status, _) = json_of(
        client
            .post(format!("{url}//public/api/v1/shop/customer/lookup-multi/"))
            .body(r#"{"items": [{"data": {"id": 2}}, {"data": {"id": 9}}], "context": {"rid": "multi"}}"#)
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200);
    let (status, _) = lookup(
        &client,
        &url,
        r#"{"data": {"id": "x"}, "context": {"rid": "bad"}}"#,
    );
    assert_eq!(status, 400);
    // A failed multi call: one record, with every item's inputs.
    let (status, _) = json_of(
        client
            .post(format!("{url}/public/api/v1/shop/customer/lookup-multi"))
            .body(r#"{"items": [{"data": {"id": 1}}, {"data": {"id": "x"}}], "context": {"rid": "multi-bad"}}"#)
            .send()
            .unwrap(),
    );
    assert_eq!(status, 400);
    // An admin request without the key.
    let (status, _) = json_of(
        client
            .post(format!("{url}/admin/api/services/shop/actions/disable"))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 401);

    let metrics = wait_drained(&client, &url);
    assert!(metrics["uploaded"].as_u64().unwrap() >= 8, "{metrics}");
    let records = store_records(&data_dir.join("audit-logs"));
    let queries: HashMap<&str, Vec<&Value>> =
        records
            .iter()
            .fold(HashMap::new(), |mut by_rid, (file, record)| {
                if let Some(rid) = record["context"]["rid"].as_str() {
                    assert!(
                        well_placed(file, "service=shop", "n1", record),
                        "{file}: {record}"
                    );
                    by_rid.entry(rid).or_default().push(record);
                }
                by_rid
            });

    let one = queries["one"][0];
    assert_eq!(queries["one"].len(), 1);
    assert_eq!(one["request_id"], request_id.as_str());
    assert_eq!(
        (
            &one["service"],
            &one["endpoint"],
            &one["endpoint_kind"],
            &one["generation"],
            &one["deployment_id"],
            &one["status"],
        ),
        (
            &json!("shop"),
            &json!("customer"),
            &json!("dataset-lookup"),
            &json!("v1"),
            &json!("prod"),
            &json!(200)
        )
    );
    assert_eq!(one["inputs"], json!({"id": 1}));
    assert_eq!(
        one["outputs"],
        json!({"id": 1, "name": "Ann", "city": "Paris", "joined": "2024-01-31"})
    );
    assert!(
        one["client_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(one["timing"]["total"].is_u64() && one["timing"]["lookup"].is_u64());
    assert!(one.get("item").is_none() && one.get("error_type").is_none());

    let multi = &queries["multi"];
    assert_eq!(multi.len(), 2);
    assert_eq!(multi[0]["request_id"], multi[1]["request_id"]);
    let mut items: Vec<_> = multi.iter().map(|r| r["item"].as_u64().unwrap()).collect();
    items.sort();
    assert_eq!(items, [0, 1]);
    let by_item = |i: u64| multi.iter().find(|r| r["item"] == i).unwrap();
    assert_eq!(by_item(0)["inputs"], json!({"id": 2}));
    assert_eq!(by_item(0)["outputs"]["name"], "Bob");
    assert_eq!(by_item(1)["inputs"], json!({"id": 9}));
    assert_eq!(by_item(1)["outputs"]["ignored"], true);

    let bad = queries["bad"][0];
    assert_eq!(bad["status"], 400);
    assert_eq!(
        bad["error_type"],
        "com.dataiku.dip.apinode.InvalidLookupKey"
    );
    assert!(bad["error_message"].as_str().unwrap().contains("id"));
    // A failed lookup's record keeps its inputs, read without a tree as the answered one's.
    assert_eq!(bad["inputs"], json!({"id": "x"}));
    assert_eq!(queries["multi-bad"].len(), 1);
    let multi_bad = queries["multi-bad"][0];
    assert_eq!(multi_bad["status"], 400);
    assert!(multi_bad.get("item").is_none(), "{multi_bad}");
    assert_eq!(multi_bad["inputs"], json!([{"id": 1}, {"id": "x"}]));

    let auth: Vec<_> = records
        .iter()
        .filter(|(file, _)| file.starts_with("_auth/"))
        .collect();
    assert_eq!(auth.len(), 1, "{auth:?}");
    let (file, record) = auth[0];
    assert!(well_placed(file, "_auth", "n1", record), "{file}");
    assert_eq!(record["status"], 401);
    assert_eq!(
        record["context"]["path"],
        "/admin/api/services/shop/actions/disable"
    );

    let admin: Vec<&Value> = records
        .iter()
        .filter(|(file, _)| file.starts_with("_admin/"))
        .map(|(_, r)| r)
        .collect();
    let paths: Vec<&str> = admin
        .iter()
        .map(|r| r["context"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/admin/api/services",
            "/admin/api/services/shop/generations/actions/upload",
            "/admin/api/services/shop/actions/switchToNewest"
        ]
    );
    assert!(admin.iter().all(|r| r["api_key_id"].is_string()
        && r["status"] == 200
        && r["service"] == "shop"
        || r["context"]["path"] == "/admin/api/services"));
    assert_eq!(admin[1]["generation"], "v1");
    node.stop();

    // `apinode logs query` reads the same records where the node's data directory says.
    let query = |sql: &str| -> Vec<Value> {
        let out = std::process::Command::new(super::BIN)
            .args(["logs", "query", "--format", "json", "--data-dir"])
            .arg(&data_dir)
            .arg(sql)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{sql}: {stderr}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert_eq!(
        query("SELECT service, count(*) AS n FROM queries GROUP BY service"),
        [json!({"service": "shop", "n": 5})]
    );
    let hour = &one["time"].as_str().unwrap()[11..13];
    assert_eq!(
        query(
            "SELECT request_id, endpoint_kind, hour, outputs FROM queries \
             WHERE json_get(context, '/rid') = 'one'"
        ),
        [
            json!({"request_id": request_id, "endpoint_kind": "dataset-lookup",
            "hour": hour.parse::<u32>().unwrap(), "outputs": one["outputs"]})
        ]
    );
    assert_eq!(
        query("SELECT count(*) AS n FROM auth WHERE status = 401"),
        [json!({"n": 1})]
    );
    assert_eq!(query("SELECT count(*) AS n FROM admin"), [json!({"n": 3})]);
}

/// A logged prediction's record holds the features it was asked with (each body read without
/// a tree), the result its answer carries, and a multi call's item its own context.
#[test]
fn a_logged_prediction_holds_its_features_and_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let service = dir.path().join("models");
    super::copy_model("binary_logistic", &service, "churn");
    std::fs::write(
        service.join("service.toml"),
        "[service]\nid = \"models\"\n\n[[endpoints]]\nid = \"churn\"\nkind = \"prediction\"\n\
         model = { path = \"models/churn\" }\n",
    )
    .unwrap();
    let bundle = dir.path().join("models.zip");
    let (ok, _, stderr) = super::bundle_cli(&[
        "build".as_ref(),
        service.as_os_str(),
        "-o".as_ref(),
        bundle.as_os_str(),
        "--version".as_ref(),
        "m1".as_ref(),
    ]);
    assert!(ok, "{stderr}");
    let data_dir = dir.path().join("data");
    let node = start_with(
        &data_dir,
        "[audit]\nnode_id = \"n3\"\nsegment_max_age_ms = 50\n",
    );
    let url = node.url.clone();
    let client = Client::new();
    activate(&client, &url, "models", &bundle);
    let features: Vec<Value> = super::scoring_cases_of("binary_logistic")
        .into_iter()
        .take(3)
        .map(|case| case["input"].clone())
        .collect();
    let post = |action: &str, body: Value| {
        json_of(
            client
                .post(format!("{url}/public/api/v1/models/churn/{action}"))
                .body(body.to_string())
                .send()
                .unwrap(),
        )
    };
    let (status, one) = post(
        "predict",
        json!({"features": features[0], "context": {"rid": "one"}}),
    );
    assert_eq!(status, 200, "{one}");
    let (status, multi) = post(
        "predict-multi",
        json!({"items": [{"features": features[1]},
                         {"features": features[2], "context": {"rid": "multi", "own": 2}}],
               "context": {"rid": "multi"}}),
    );
    assert_eq!(status, 200, "{multi}");

    wait_drained(&client, &url);
    let records = store_records(&data_dir.join("audit-logs"));
    let by_rid = |rid: &str| -> Vec<&Value> {
        records
            .iter()
            .filter(|(file, record)| {
                record["context"]["rid"] == rid && well_placed(file, "service=models", "n3", record)
            })
            .map(|(_, record)| record)
            .collect()
    };
    let logged = by_rid("one");
    assert_eq!(logged.len(), 1, "{records:?}");
    let record = logged[0];
    assert_eq!(
        (
            &record["endpoint"],
            &record["endpoint_kind"],
            &record["generation"],
            &record["status"]
        ),
        (
            &json!("churn"),
            &json!("prediction"),
            &json!("m1"),
            &json!(200)
        )
    );
    assert_eq!(record["inputs"], features[0]);
    assert_eq!(record["outputs"], one["result"]);
    assert!(record["timing"]["total"].is_u64(), "{record}");

    let logged = by_rid("multi");
    assert_eq!(logged.len(), 2, "{records:?}");
    for item in 0..2 {
        let record = logged
            .iter()
            .find(|r| r["item"] == item)
            .unwrap_or_else(|| panic!("no record of item {item}: {logged:?}"));
        assert_eq!(record["inputs"], features[item + 1]);
        assert_eq!(record["outputs"], multi["results"][item]);
        // An item's own context is its record's; the call's otherwise.
        let own = if item == 1 { json!(2) } else { Value::Null };
        assert_eq!(
            record["context"].get("own").cloned().unwrap_or(Value::Null),
            own
        );
    }
    node.stop();
}

/// Every answered query (a 200 the clients got) has exactly one record in the store, though
/// the node was killed with SIGKILL in the middle of the load and restarted.
#[test]
fn nothing_answered_is_lost_when_the_node_is_killed() {
    const QUERIES: usize = 2000;
    const CLIENTS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // Segments stay open for the whole run: what the clients got back is only in `.open`
    // spool files when the node dies.
    let config = "[audit]\nnode_id = \"n1\"\ndurability = \"write\"\nsegment_max_age_ms = 600000\n";
    let mut node = start_with(&data_dir, config);
    let url = node.url.clone();
    let client = Client::new();
    shop(&client, dir.path(), &url);

    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, answered, stop, url) =
                (next.clone(), answered.clone(), stop.clone(), url.clone());
            std::thread::spawn(move || {
                let client = Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= QUERIES {
                        break;
                    }
                    let rid = format!("q{i}");
                    let body = json!({"data": {"id": 1 + i % 2}, "context": {"rid": rid}});
                    match client
                        .post(format!("{url}/public/api/v1/shop/customer/lookup"))
                        .body(body.to_string())
                        .send()
                    {
                        Ok(response) if response.status() == 200 => {
                            answered.lock().unwrap().push(rid)
                        }
                        Ok(response) => panic!("query {i}: {}", response.status()),
                        // The node is gone.
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    while next.load(Ordering::Relaxed) < QUERIES / 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    node.child.kill().unwrap(); // SIGKILL
    node.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    assert!(
        answered.len() >= QUERIES / 4,
        "only {} answered",
        answered.len()
    );
    assert!(
        answered.len() < QUERIES,
        "the node was killed before the end"
    );

    let node = start_with(&data_dir, config);
    wait_drained(&client, &node.url);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (_, record) in store_records(&data_dir.join("audit-logs")) {
        if let Some(rid) = record["context"]["rid"].as_str() {
            *counts.entry(rid.to_owned()).or_default() += 1;
        }
    }
    let missing: Vec<_> = answered
        .iter()
        .filter(|r| !counts.contains_key(*r))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered queries have no record: {:?}",
        missing.len(),
        answered.len(),
        &missing[..missing.len().min(10)]
    );
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "records written twice: {twice:?}");
    eprintln!(
        "{} answered before the kill, {} records in the store",
        answered.len(),
        counts.len()
    );
    node.stop();
}

/// A store that fails every put for the service (its folder is a file): with a tiny spool
/// cap, `reject` answers 503 and `drop` answers and counts.
#[test]
fn a_full_spool_rejects_or_drops() {
    for policy in ["reject", "drop"] {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let store: PathBuf = dir.path().join("store");
        std::fs::create_dir_all(&store).unwrap();
        std::fs::write(store.join("service=shop"), "in the way").unwrap();
        let node = start_with(
            &data_dir,
            &format!(
                "[audit]\nstore = \"{}\"\non_full = \"{policy}\"\nspool_cap_bytes = 1\n\
                 segment_max_age_ms = 50\n",
                store.display()
            ),
        );
        let client = Client::new();
        shop(&client, dir.path(), &node.url);
        // The admin records drain (their folder is fine); the first query's record does not.
        wait_drained(&client, &node.url);
        let statuses: Vec<(u16, Value)> = (0..5)
            .map(|_| lookup(&client, &node.url, r#"{"data": {"id": 1}}"#))
            .collect();
        let metrics = audit_metrics(&client, &node.url);
        assert_eq!(statuses[0].0, 200, "{statuses:?}");
        match policy {
            "reject" => {
                let (status, body) = &statuses[4];
                assert_eq!(*status, 503, "{statuses:?}");
                assert_eq!(
                    body["errorType"],
                    "com.dataiku.dip.apinode.ServiceUnavailable"
                );
                assert!(
                    body["message"]
                        .as_str()
                        .unwrap()
                        .starts_with("the audit log cannot keep up: "),
                    "{body}"
                );
                assert!(metrics["rejected"].as_u64().unwrap() >= 4, "{metrics}");
            }
            _ => {
                assert!(statuses.iter().all(|(s, _)| *s == 200), "{statuses:?}");
                assert!(metrics["dropped"].as_u64().unwrap() >= 4, "{metrics}");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while audit_metrics(&client, &node.url)["uploadFailures"] == 0 {
            assert!(Instant::now() < deadline, "no upload failed");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(node);
    }
}

/// A service with API keys (`shop`, key `k-secret` with id `crm`), imported and activated.
fn keyed_shop(client: &Client, dir: &Path, url: &str) {
    let service = dir.join("keyed");
    std::fs::create_dir_all(&service).unwrap();
    std::fs::write(
        service.join("customers.csv"),
        "id,name,city\n1,Ann,Paris\n2,Bob,Lyon\n",
    )
    .unwrap();
    std::fs::write(
        service.join("service.toml"),
        r#"
[service]
id = "shop"

[auth]
mode = "api-keys"
keys = [{ id = "crm", key = "k-secret" }]

[[datasets]]
name = "customers"
path = "customers.csv"

[[endpoints]]
id = "customer"
kind = "dataset-lookup"
lookup = { dataset = "customers", keys = ["id"] }
"#,
    )
    .unwrap();
    let archive = dir.join("keyed.zip");
    let status = std::process::Command::new(super::BIN)
        .args(["bundle", "build"])
        .arg(&service)
        .arg("-o")
        .arg(&archive)
        .args(["--version", "v1"])
        .status()
        .unwrap();
    assert!(status.success());
    for (path, body) in [
        (
            "services",
            Some(r#"{"serviceId": "shop"}"#.as_bytes().to_vec()),
        ),
        (
            "services/shop/generations/actions/upload",
            Some(std::fs::read(&archive).unwrap()),
        ),
        ("services/shop/actions/switchToNewest", None),
    ] {
        let request = admin(
            client,
            reqwest::Method::POST,
            format!("{url}/admin/api/{path}"),
        );
        let request = match body {
            Some(body) => request.body(body),
            None => request,
        };
        assert_eq!(request.send().unwrap().status(), 200, "{path}");
    }
}

/// Per-service policies and the other durability modes: `payloads = false` keeps inputs and
/// outputs out, `max_payload_bytes` cuts them and marks the record, `sample = 0` logs nothing
/// (and answers without `X-Request-Id`); `async` and `fsync` lose nothing on a clean run; a
/// user query with a wrong key is an auth record, with the key id of a right one in the
/// query's record.
#[test]
fn service_policies_and_durability_modes() {
    struct Case {
        config: &'static str,
        expect: fn(&[(String, Value)]),
    }
    let cases = [
        Case {
            config: "durability = \"async\"\n[audit.services.shop]\npayloads = false\n",
            expect: |records| {
                let queries: Vec<_> = records
                    .iter()
                    .filter(|(f, _)| f.starts_with("service=shop/"))
                    .collect();
                assert_eq!(queries.len(), 3, "{queries:?}");
                for (_, record) in queries {
                    assert!(record.get("inputs").is_none_or(Value::is_null), "{record}");
                    assert!(record.get("outputs").is_none_or(Value::is_null), "{record}");
                    assert_eq!(record["api_key_id"], "crm");
                }
                let auth: Vec<_> = records
                    .iter()
                    .filter(|(f, _)| f.starts_with("_auth/"))
                    .map(|(_, r)| r)
                    .collect();
                assert_eq!(auth.len(), 1, "{auth:?}");
                assert_eq!(auth[0]["status"], 401);
                assert_eq!(auth[0]["endpoint"], "customer");
                assert!(!auth[0].to_string().contains("wrong-key"), "{}", auth[0]);
            },
        },
        Case {
            config: "durability = \"fsync\"\n[audit.services.shop]\nmax_payload_bytes = 8\n",
            expect: |records| {
                let queries: Vec<_> = records
                    .iter()
                    .filter(|(f, _)| f.starts_with("service=shop/"))
                    .map(|(_, r)| r)
                    .collect();
                assert_eq!(queries.len(), 3, "{queries:?}");
                assert!(
                    queries
                        .iter()
                        .all(|r| r["truncated"] == true && r["outputs"].to_string().len() < 64),
                    "{queries:?}"
                );
            },
        },
        Case {
            config: "[audit.services.shop]\nsample = 0\n",
            expect: |records| {
                assert!(
                    records.iter().all(|(f, _)| !f.starts_with("service=shop/")),
                    "{records:?}"
                );
            },
        },
    ];
    for case in cases {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let config = format!(
            "[audit]\nnode_id = \"n2\"\nsegment_max_age_ms = 50\n{}",
            case.config
        );
        let node = start_with(&data_dir, &config);
        let url = node.url.clone();
        let client = Client::new();
        keyed_shop(&client, dir.path(), &url);
        let sampled_out = case.config.contains("sample = 0");
        for id in 1..=3 {
            let response = client
                .post(format!("{url}/public/api/v1/shop/customer/lookup"))
                .basic_auth("k-secret", Some(""))
                .body(format!(r#"{{"data": {{"id": {id}}}}}"#))
                .send()
                .unwrap();
            assert_eq!(response.status(), 200, "{config}");
            assert_eq!(
                response.headers().contains_key("x-request-id"),
                !sampled_out,
                "{config}"
            );
        }
        let response = client
            .post(format!("{url}/public/api/v1/shop/customer/lookup"))
            .basic_auth("wrong-key", Some(""))
            .body(r#"{"data": {"id": 1}}"#)
            .send()
            .unwrap();
        assert_eq!(response.status(), 401);
        wait_drained(&client, &url);
        (case.expect)(&store_records(&data_dir.join("audit-logs")));
        node.stop();
    }
}

/// moto, an S3-compatible server (from PyPI, in the tests' virtualenv: `APINODE_PYTHON`), on
/// `port`, with a bucket `audit`; killed when dropped. moto keeps its objects in memory, so a
/// restarted one starts empty.
struct Moto {
    child: std::process::Child,
    python: std::ffi::OsString,
    endpoint: String,
}

impl Moto {
    fn start(port: u16) -> Moto {
        let python = std::env::var_os("APINODE_PYTHON").expect(
            "APINODE_PYTHON is not set: `cargo xtask ci` sets it to the virtualenv's python, \
             which has moto[server]",
        );
        let child = std::process::Command::new(&python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto starts");
        let moto = Moto {
            child,
            python,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        // Ready when the bucket can be created (accepting connections can precede the app).
        let deadline = Instant::now() + Duration::from_secs(60);
        while moto.boto("s3.create_bucket(Bucket='audit')").is_none() {
            assert!(Instant::now() < deadline, "moto did not start within 60 s");
        }
        moto
    }

    /// Runs `statement` with `s3` a boto3 client of this server; its stdout, or `None` if it
    /// failed.
    fn boto(&self, statement: &str) -> Option<String> {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1')\n{statement}\n",
            self.endpoint
        );
        let out = std::process::Command::new(&self.python)
            .args(["-c", &script])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every record under `logs/service=shop/`, one JSON line each.
    fn query_records(&self) -> Vec<Value> {
        let listing = self
            .boto(
                "pages = s3.get_paginator('list_objects_v2').paginate(Bucket='audit', \
                 Prefix='logs/service=shop/')\n\
                 for page in pages:\n    for o in page.get('Contents', []):\n        \
                 print(s3.get_object(Bucket='audit', Key=o['Key'])['Body'].read().decode(), end='')",
            )
            .expect("the store lists");
        listing
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The S3 store down in the middle of the load: queries keep being answered, the spool
/// grows, and once the store is back every answered query has exactly one record in it.
#[test]
fn nothing_answered_is_lost_through_an_s3_outage() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let moto = Moto::start(port);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let node = start_with(
        &data_dir,
        &format!(
            "[audit]\nnode_id = \"s3n\"\nstore = \"s3://audit/logs\"\nsegment_max_age_ms = 50\n\
             [audit.options]\naws_endpoint = \"{}\"\naws_allow_http = \"true\"\n\
             aws_region = \"us-east-1\"\naws_access_key_id = \"test\"\n\
             aws_secret_access_key = \"test\"\n",
            moto.endpoint
        ),
    );
    let url = node.url.clone();
    let client = Client::new();
    shop(&client, dir.path(), &url);
    let query = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| {
                let response = client
                    .post(format!("{url}/public/api/v1/shop/customer/lookup"))
                    .body(format!(r#"{{"data": {{"id": {}}}}}"#, 1 + i % 2))
                    .send()
                    .unwrap();
                assert_eq!(response.status(), 200);
                response.headers()["x-request-id"]
                    .to_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let before = query(20);
    wait_drained(&client, &url);
    let uploaded_before = moto.query_records();

    drop(moto);
    let during = query(30);
    let metrics = audit_metrics(&client, &url);
    assert!(metrics["spoolBytes"].as_u64().unwrap() > 0, "{metrics}");
    // Let the uploader fail and back off at least once.
    let deadline = Instant::now() + Duration::from_secs(30);
    while audit_metrics(&client, &url)["uploadFailures"] == 0 {
        assert!(
            Instant::now() < deadline,
            "no upload failed while S3 was down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let moto = Moto::start(port);
    wait_drained(&client, &url);
    let uploaded_after = moto.query_records();
    let mut ids: Vec<String> = uploaded_before
        .iter()
        .chain(&uploaded_after)
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut answered: Vec<String> = before.into_iter().chain(during).collect();
    answered.sort();
    assert_eq!(ids, answered, "each answered query has exactly one record");
    node.stop();
}
