//! End-to-end tests of the `apinode` binary: build a bundle with the CLI, serve it on a free
//! loopback port, query over HTTP, restart on the same data directory; `apinode model` on the
//! Dataiku exports generated for the scoring differential test.

mod audit;

use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_apinode");
const ADMIN_KEY: &str = "e2e-admin-key";

struct Node {
    child: Child,
    url: String,
}

impl Node {
    /// Starts `apinode serve` on a free port and waits for its "listening" line.
    fn start(data_dir: &Path) -> Node {
        Node::spawn("serve", data_dir, &[]).0
    }

    /// Starts `apinode <command>` on a free port; returns the node and the stdout lines
    /// printed before the "listening" line.
    fn spawn(command: &str, data_dir: &Path, extra: &[&str]) -> (Node, Vec<String>) {
        let mut child = Command::new(BIN)
            .args([command, "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("APINODE_ADMIN_KEY", ADMIN_KEY)
            .env("APINODE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the apinode binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut before = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("apinode listening on ") {
                    let _ = tx.send((url.trim().to_owned(), std::mem::take(&mut before)));
                } else {
                    before.push(line);
                }
            }
        });
        let (url, printed) = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the node announces its address within 120 s");
        (Node { child, url }, printed)
    }

    fn stop(mut self) {
        // SIGTERM through the `kill` command keeps the test free of unsafe code.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn build_bundle(dir: &Path, version: &str, city: &str) -> PathBuf {
    let service = dir.join(format!("svc-{version}"));
    std::fs::create_dir_all(&service).unwrap();
    std::fs::write(
        service.join("customers.csv"),
        format!("id,name,city,joined\n1,Ann,{city},2024-01-31\n2,Bob,Lyon,\n"),
    )
    .unwrap();
    std::fs::write(
        service.join("service.toml"),
        r#"
[service]
id = "shop"

[[datasets]]
name = "customers"
path = "customers.csv"

[[endpoints]]
id = "customer"
kind = "dataset-lookup"
[endpoints.lookup]
dataset = "customers"
keys = ["id"]
"#,
    )
    .unwrap();
    let out = dir.join(format!("{version}.zip"));
    let status = Command::new(BIN)
        .args(["bundle", "build"])
        .arg(&service)
        .arg("-o")
        .arg(&out)
        .args(["--version", version])
        .status()
        .unwrap();
    assert!(status.success(), "bundle build failed");
    out
}

fn admin(
    client: &Client,
    method: reqwest::Method,
    url: String,
) -> reqwest::blocking::RequestBuilder {
    client.request(method, url).basic_auth(ADMIN_KEY, Some(""))
}

fn json_of(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.text().unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn lookup(client: &Client, url: &str, body: &str) -> (u16, Value) {
    json_of(
        client
            .post(format!("{url}/public/api/v1/shop/customer/lookup"))
            .body(body.to_owned())
            .send()
            .unwrap(),
    )
}

#[test]
fn serve_import_query_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let v1 = build_bundle(dir.path(), "v1", "Paris");
    let client = Client::new();

    let node = Node::start(&data_dir);
    let url = node.url.clone();
    assert_eq!(
        client
            .get(format!("{url}/isAlive/"))
            .send()
            .unwrap()
            .status(),
        200
    );

    // The admin API wants the admin key.
    let (status, body) = json_of(
        client
            .get(format!("{url}/admin/api/services"))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 401);
    assert_eq!(body["errorType"], "com.dataiku.dip.apinode.Unauthorized");

    let (status, _) = json_of(
        admin(
            &client,
            reqwest::Method::POST,
            format!("{url}//admin/api/services/"),
        )
        .body(r#"{"serviceId": "shop"}"#)
        .send()
        .unwrap(),
    );
    assert_eq!(status, 200);
    let (status, generation) = json_of(
        admin(
            &client,
            reqwest::Method::POST,
            format!("{url}/admin/api/services/shop/generations/actions/upload"),
        )
        .body(std::fs::read(&v1).unwrap())
        .send()
        .unwrap(),
    );
    assert_eq!(
        (status, generation["generation"].as_str()),
        (200, Some("v1"))
    );

    // Not active yet: 503 with the error shape.
    let (status, body) = lookup(&client, &url, r#"{"data": {"id": 1}}"#);
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no active generation")
    );

    let (status, body) = json_of(
        admin(
            &client,
            reqwest::Method::POST,
            format!("{url}/admin/api/services/shop/actions/switchToNewest"),
        )
        .send()
        .unwrap(),
    );
    assert_eq!((status, &body["generation"]), (200, &json!("v1")));

    let response = client
        .post(format!("{url}//public/api/v1/shop/customer/lookup/"))
        .body(r#"{"data": {"id": 1}, "dispatch": {"dispatchKey": "u1"}}"#)
        .send()
        .unwrap();
    assert!(response.headers().contains_key("DSS-API-Version"));
    assert!(response.headers().contains_key("DSS-Version"));
    let (status, body) = json_of(response);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["results"][0],
        json!({"data": {"id": 1, "name": "Ann", "city": "Paris", "joined": "2024-01-31"}, "ignored": false})
    );
    assert_eq!(
        body["apiContext"],
        json!({"serviceId": "shop", "endpointId": "customer", "serviceGeneration": "v1"})
    );
    assert!(body["timing"]["total"].is_u64());

    // Client mistakes are 4xx with a message that says what was wrong.
    let (status, body) = lookup(&client, &url, "");
    assert_eq!(status, 400);
    assert_eq!(body["errorType"], "com.dataiku.dip.apinode.InvalidQuery");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("data: required"),
        "{body}"
    );
    let (status, body) = lookup(&client, &url, "{nope");
    assert_eq!(status, 400);
    assert!(
        body["detailedMessage"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{body}"
    );
    let (status, body) = lookup(&client, &url, r#"{"data": {"id": "x"}}"#);
    assert_eq!(
        (status, body["errorType"].as_str()),
        (400, Some("com.dataiku.dip.apinode.InvalidLookupKey"))
    );
    let (status, _) = json_of(
        client
            .post(format!("{url}/public/api/v1/shop/customer/explode"))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 404);

    // Restart on the same data directory: no re-import, same answers.
    node.stop();
    let node = Node::start(&data_dir);
    let (status, body) = lookup(&client, &node.url, r#"{"data": {"id": 2}}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["data"]["joined"], Value::Null);
    assert_eq!(body["apiContext"]["serviceGeneration"], "v1");

    // A second generation through importFromArchive, then forced dispatch.
    let v2 = build_bundle(dir.path(), "v2", "Nice");
    let (status, _) = json_of(
        admin(
            &client,
            reqwest::Method::POST,
            format!(
                "{}/admin/api/services/shop/generations/actions/importFromArchive?filePath={}",
                node.url,
                v2.display()
            ),
        )
        .send()
        .unwrap(),
    );
    assert_eq!(status, 200);
    let (_, body) = lookup(
        &client,
        &node.url,
        r#"{"data": {"id": 1}, "dispatch": {"forcedGeneration": "v2"}}"#,
    );
    assert_eq!(body["results"][0]["data"]["city"], "Nice");
    let (_, body) = lookup(&client, &node.url, r#"{"data": {"id": 1}}"#);
    assert_eq!(body["results"][0]["data"]["city"], "Paris");
    node.stop();
}

#[test]
fn bundle_cli_reports_bad_input_and_inspects() {
    let dir = tempfile::tempdir().unwrap();
    let archive = build_bundle(dir.path(), "v1", "Paris");
    let out = Command::new(BIN)
        .args(["bundle", "inspect"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("generation v1"), "{text}");
    assert!(
        text.contains("customers") && text.contains("2 rows"),
        "{text}"
    );

    let junk = dir.path().join("junk.zip");
    std::fs::write(&junk, b"not a zip").unwrap();
    let out = Command::new(BIN)
        .args(["bundle", "inspect"])
        .arg(&junk)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("junk.zip"), "{err}");
}

#[test]
fn demo_serves_the_example_service_and_prints_working_commands() {
    let dir = tempfile::tempdir().unwrap();
    let (node, printed) = Node::spawn("demo", &dir.path().join("data"), &["--rows", "1000"]);
    let tour = printed.join("\n");
    assert!(
        tour.contains(&format!(
            "{}/public/api/v1/customers/customer-by-id/lookup",
            node.url
        )),
        "{tour}"
    );
    assert!(
        tour.contains(ADMIN_KEY),
        "the tour shows the admin key in use: {tour}"
    );

    let client = Client::new();
    let (status, body) = json_of(
        client
            .post(format!(
                "{}/public/api/v1/customers/customer-by-id/lookup",
                node.url
            ))
            .basic_auth("customers-demo-key", Some(""))
            .body(r#"{"data": {"customer_id": 42}}"#)
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    let data = &body["results"][0]["data"];
    assert_eq!(data["customer_id"], 42);
    assert!(
        data["email"].as_str().unwrap().ends_with(".42@example.com"),
        "{data}"
    );
    assert!(
        data["lifetime_value"].is_f64() && data["is_active"].is_boolean(),
        "{data}"
    );

    // The composite-key endpoint: account numbers restart in each country.
    let (status, body) = json_of(
        client
            .post(format!(
                "{}/public/api/v1/customers/account/lookup",
                node.url
            ))
            .basic_auth("customers-demo-key", Some(""))
            .body(r#"{"data": {"country": "FR", "account": 7}}"#)
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body["results"][0]["data"]["customer_id"].is_i64(), "{body}");
    node.stop();
}

/// The generated Dataiku exports and dataiku-scoring's answers (`cargo xtask ci` sets this).
fn scoring_cases() -> PathBuf {
    PathBuf::from(std::env::var_os("APINODE_SCORING_CASES").expect(
        "APINODE_SCORING_CASES is not set: `cargo xtask ci` generates the model exports; \
         see crates/apinode-scoring/tests/it/differential.rs",
    ))
}

/// The generated cases of a model (`cases.jsonl`: each an `input` and what dataiku-scoring
/// predicted for it).
fn scoring_cases_of(model: &str) -> Vec<Value> {
    std::fs::read_to_string(scoring_cases().join(model).join("cases.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `apinode model predict` on a model, with the first `n` inputs of its cases on stdin.
fn model_predict(model: &str, n: usize) -> (Vec<Value>, Vec<Value>) {
    let dir = scoring_cases().join(model);
    let info: Value =
        serde_json::from_slice(&std::fs::read(dir.join("info.json")).unwrap()).unwrap();
    let cases: Vec<Value> = scoring_cases_of(model).into_iter().take(n).collect();
    // Interleave blank lines: they are skipped.
    let stdin: String = cases
        .iter()
        .map(|c| format!("{}\n\n", c["input"]))
        .collect();
    let (ok, stdout, stderr) =
        model_predict_stdin(&dir.join(info["path"].as_str().unwrap()), &stdin);
    assert!(ok, "{stderr}");
    let results = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (cases, results)
}

/// Runs `apinode model predict MODEL` with `stdin`: (success, stdout, stderr).
fn model_predict_stdin(model: &Path, stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .args(["model", "predict"])
        .arg(model)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-300)
}

#[test]
fn model_cli_predicts_what_dataiku_scoring_predicts() {
    // Binary classification: label and probabilities keyed by class.
    let (cases, results) = model_predict("binary_logistic", 50);
    assert_eq!(results.len(), cases.len());
    for (case, result) in cases.iter().zip(&results) {
        assert_eq!(result["prediction"], case["prediction"], "{case}");
        assert_eq!(result["ignored"], json!(false));
        for (class, p) in case["probabilities"].as_object().unwrap() {
            let got = result["probas"][class].as_f64().unwrap();
            assert!(close(got, p.as_f64().unwrap()), "{class}: {got} vs {p}");
        }
    }
    // Regression with drop rows: a number, or ignored where the reference gives nothing.
    let (cases, results) = model_predict("rf_regressor_drop_rows", 300);
    let mut ignored = 0;
    for (case, result) in cases.iter().zip(&results) {
        match case["prediction"].as_f64() {
            Some(expected) => {
                assert!(
                    close(result["prediction"].as_f64().unwrap(), expected),
                    "{case} {result}"
                );
                assert!(result.get("probas").is_none());
            }
            None => {
                ignored += 1;
                assert_eq!(result["ignored"], json!(true), "{case} {result}");
                assert_eq!(result["ignoreReason"], json!("ROW_DROPPED_BY_MODEL"));
            }
        }
    }
    assert!(ignored > 0, "the cases include dropped rows");
    // Clustering: the (renamed) cluster label.
    let (cases, results) = model_predict("kmeans", 50);
    for (case, result) in cases.iter().zip(&results) {
        assert_eq!(result["prediction"], case["prediction"], "{case}");
    }
}

#[test]
fn model_cli_names_the_bad_line_and_inspects() {
    let dir = scoring_cases().join("binary_logistic/model");
    let run = |stdin: &str| model_predict_stdin(&dir, stdin);
    let (ok, _, stderr) = run("{\"num1\": 1}\nnot json\n");
    assert!(!ok);
    assert!(
        stderr.contains("stdin line 2: expected a JSON object"),
        "{stderr}"
    );
    let (ok, _, stderr) = run("{\"num1\": 1}\n\n{\"num1\": \"abc\"}\n");
    assert!(!ok);
    assert!(stderr.contains("stdin line 3"), "{stderr}");
    assert!(stderr.contains("`num1`"), "{stderr}");

    let output = Command::new(BIN)
        .args(["model", "inspect"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("task: BINARY_PROBABILISTIC"), "{text}");
    assert!(text.contains("classes: no, yes"), "{text}");
    let output = Command::new(BIN)
        .args(["model", "inspect", "/nonexistent/model"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/model"));
}

/// Copies a generated model folder into `service/models/<name>`.
fn copy_model(model: &str, service: &Path, name: &str) {
    let from = scoring_cases().join(model).join("model");
    let to = service.join("models").join(name);
    for entry in walk(&from) {
        let target = to.join(entry.strip_prefix(&from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&entry, target).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
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

/// `apinode bundle <args>`: (success, stdout, stderr).
fn bundle_cli(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("bundle")
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bundle_build_loads_every_model_and_inspect_describes_them() {
    let dir = tempfile::tempdir().unwrap();
    let service = dir.path().join("svc");
    copy_model("binary_logistic", &service, "churn");
    copy_model("kmeans", &service, "segments");
    let write_toml = |segments_kind: &str| {
        std::fs::write(
            service.join("service.toml"),
            format!(
                "[service]\nid = \"models\"\n\n\
                 [[endpoints]]\nid = \"churn\"\nkind = \"prediction\"\nmodel = {{ path = \"models/churn\" }}\n\n\
                 [[endpoints]]\nid = \"segments\"\nkind = \"{segments_kind}\"\nmodel = {{ path = \"models/segments\" }}\n"
            ),
        )
        .unwrap();
    };
    let archive = dir.path().join("models.zip");
    let build = || {
        bundle_cli(&[
            "build".as_ref(),
            service.as_os_str(),
            "-o".as_ref(),
            archive.as_os_str(),
        ])
    };

    write_toml("clustering");
    let (ok, _, stderr) = build();
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = bundle_cli(&["inspect".as_ref(), archive.as_os_str()]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("model      churn: BINARY_PROBABILISTIC LOGISTIC")
            && stdout.contains("classes: no, yes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("model      segments: CLUSTERING"),
        "{stdout}"
    );

    // A clustering model declared as a prediction: refused at build, nothing written.
    std::fs::remove_file(&archive).unwrap();
    write_toml("prediction");
    let (ok, _, stderr) = build();
    assert!(!ok);
    assert!(
        stderr.contains(
            "endpoint `segments` is a `prediction` endpoint but its model is a clustering model"
        ),
        "{stderr}"
    );
    assert!(
        !archive.exists(),
        "a bundle that cannot serve is not left behind"
    );

    // A damaged export: the error names the file.
    write_toml("clustering");
    let gz = service.join("models/churn/dss_pipeline_model.gz");
    let bytes = std::fs::read(&gz).unwrap();
    std::fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, _, stderr) = build();
    assert!(!ok);
    assert!(
        stderr.contains("endpoint `churn`") && stderr.contains("dss_pipeline_model.gz"),
        "{stderr}"
    );
}

/// `bundle build` plans SQL statements on bundled datasets as a node would: one naming an
/// unknown column fails the build, names the endpoint, the statement and the column, and
/// leaves no archive.
#[test]
fn bundle_build_plans_sql_on_bundled_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let service = dir.path().join("svc");
    std::fs::create_dir_all(&service).unwrap();
    std::fs::write(
        service.join("customers.csv"),
        "id,name,city\n1,Ann,Paris\n2,Bob,Lyon\n",
    )
    .unwrap();
    let write_toml = |column: &str| {
        std::fs::write(
            service.join("service.toml"),
            format!(
                "[service]\nid = \"sql\"\n\n[[datasets]]\nname = \"customers\"\npath = \"customers.csv\"\n\n\
                 [[endpoints]]\nid = \"by-city\"\nkind = \"sql-query\"\n[endpoints.sql]\ndatasets = [\"customers\"]\n\
                 statements = [{{ sql = \"SELECT 1\" }}, {{ sql = \"SELECT {column} FROM customers WHERE city = ?\", params = [\"city\"] }}]\n\
                 parameters = [{{ name = \"city\", type = \"string\" }}]\n"
            ),
        )
        .unwrap();
    };
    let archive = dir.path().join("sql.zip");
    let build = || {
        bundle_cli(&[
            "build".as_ref(),
            service.as_os_str(),
            "-o".as_ref(),
            archive.as_os_str(),
        ])
    };
    write_toml("nickname");
    let (ok, _, stderr) = build();
    assert!(!ok);
    assert!(
        stderr.contains("a SQL statement does not run on the bundled datasets")
            && stderr.contains("endpoint `by-city`: statements[1]")
            && stderr.contains("nickname"),
        "{stderr}"
    );
    assert!(!archive.exists());
    write_toml("name");
    let (ok, stdout, stderr) = build();
    assert!(ok, "{stderr}");
    assert!(stdout.contains("1 endpoint(s)"), "{stdout}");
}
