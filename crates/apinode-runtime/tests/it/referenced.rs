//! Referenced datasets against the real PostgreSQL (`APINODE_TEST_PG_URL`; fails when unset
//! or unreachable): connection names resolved through the remap, refused when unknown, and
//! `lookup` / `lookup-multi` answering the same bytes as the same data bundled.

use apinode_bundle::{BuildOptions, Bundle, DatasetSource, Limits};
use apinode_lookup::JsonRecord;
use apinode_lookup::{KeyType, PgConfig, PgConnection, TableLoader};
use apinode_runtime::{
    Action, CallBody, CallRequest, Credentials, Dispatch, Error, LookupItem, Output, Runtime,
    RuntimeConfig,
};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn pg_url() -> String {
    let url = std::env::var("APINODE_TEST_PG_URL").unwrap_or_default();
    assert!(
        !url.is_empty(),
        "APINODE_TEST_PG_URL is not set: point it at a PostgreSQL database the tests may create \
         tables in, e.g. postgres://postgres@127.0.0.1:5432/test (`cargo xtask ci` sets it)"
    );
    url
}

fn unique_table(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

const CSV: &str = "id,email,country,city,score,active,since,seen\n\
1,a@x.io,FR,Paris,1.5,true,2021-03-14,2021-03-14T10:00:00Z\n\
2,\"quote\"\"d, é\",FR,Lyon,2,false,2020-11-02,2020-11-02 08:30:00.123456\n\
3,c@x.io,US,Austin,,true,2022-01-30,\n\
4,d@x.io,US,Austin,-4.25,,1969-07-20,1969-07-20T20:17:40Z\n\
5,,FR,Paris,1e-7,true,,2024-02-29T23:59:59.999Z\n";

/// A service whose `customers` dataset is `dataset` (a TOML fragment), with lookups on it,
/// and SQL endpoints on `sql_source` (a TOML fragment) reading `sql_table`.
fn build(dir: &Path, name: &str, dataset: &str, (sql_source, sql_table): (&str, &str)) -> PathBuf {
    let service = dir.join(name);
    std::fs::create_dir_all(service.join("data")).unwrap();
    std::fs::write(service.join("data/customers.csv"), CSV).unwrap();
    std::fs::write(
        service.join("service.toml"),
        format!(
            r#"
[service]
id = "{name}"

[[datasets]]
name = "customers"
{dataset}

[[endpoints]]
id = "by-id"
kind = "dataset-lookup"
lookup = {{ dataset = "customers", keys = [{{ column = "id", input = "customer" }}] }}

[[endpoints]]
id = "by-place"
kind = "dataset-lookup"
[endpoints.lookup]
dataset = "customers"
keys = ["country", "city"]
columns = ["id", {{ column = "email", output = "mail" }}, "seen"]
on_no_match = "null"
on_multiple_matches = "first"

[[endpoints]]
id = "strict"
kind = "dataset-lookup"
[endpoints.lookup]
dataset = "customers"
keys = ["country", "city"]
columns = ["id"]
on_no_match = "fail"
on_multiple_matches = "fail"

[[endpoints]]
id = "sql"
kind = "sql-query"
[endpoints.sql]
{sql_source}
statements = [{{ sql = "SELECT id, email AS mail, score, active, since, seen FROM {sql_table} WHERE (country = ? OR id = ?) AND coalesce(city, '?') <> ? ORDER BY id", params = ["country", "id", "not_city"] }}]
parameters = [
  {{ name = "country", type = "string" }},
  {{ name = "id", type = "int64", required = false }},
  {{ name = "not_city", type = "string", default = "Atlantis" }},
]

[[endpoints]]
id = "stats"
kind = "sql-query"
[endpoints.sql]
{sql_source}
statements = [{{ sql = "SELECT country, count(*) AS n, sum(score) AS total, min(since) AS first FROM {sql_table} WHERE seen >= ? GROUP BY country ORDER BY country", params = ["after"] }}]
parameters = [{{ name = "after", type = "timestamp" }}]

# Two enrichment steps, the second keyed on what the first filled.
[[endpoints]]
id = "spend"
kind = "prediction"
model = {{ path = "models/spend", return_post_enrich = true }}
[[endpoints.enrich]]
dataset = "customers"
keys = [{{ column = "id", input = "customer" }}]
columns = ["score", "country", "city"]
on_no_match = "null"
[[endpoints.enrich]]
dataset = "customers"
keys = ["country", "city"]
columns = [{{ column = "active", output = "first_active" }}, {{ column = "seen", output = "first_seen" }}]
on_multiple_matches = "first"
on_missing_key = "ignore"

[[endpoints]]
id = "spend-strict"
kind = "prediction"
model = {{ path = "models/spend" }}
[[endpoints.enrich]]
dataset = "customers"
keys = [{{ column = "id", input = "customer" }}]
columns = ["score"]
on_no_match = "fail"
"#
        ),
    )
    .unwrap();
    crate::predict::write_spend_model(&service.join("models/spend"));
    let out = dir.join(format!("{name}.zip"));
    apinode_bundle::build(&service, &out, &BuildOptions::default()).unwrap();
    out
}

/// Loads the bundled archive's dataset (the very rows a bundled lookup serves) into `table`.
fn sync_from_bundle(archive: &Path, table: &str) {
    let bundle = Bundle::open(archive, &Limits::default()).unwrap();
    let parquet = bundle.dataset_parquet("customers").unwrap().clone();
    let data = apinode_lookup::Table::from_parquet("customers", parquet).unwrap();
    let columns: Vec<(String, KeyType)> = data
        .batch()
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), KeyType::of(f.data_type()).unwrap()))
        .collect();
    let connection = Arc::new(PgConnection::new("sync", &PgConfig::new(pg_url())).unwrap());
    connection
        .check()
        .unwrap_or_else(|e| panic!("APINODE_TEST_PG_URL does not answer: {e}"));
    let mut loader = TableLoader::start(&connection, table, &columns, false, &[]).unwrap();
    loader.write(data.batch().clone()).unwrap();
    loader.finish().unwrap();
}

fn runtime(dir: &Path, remap: &[(&str, &str)]) -> Runtime {
    let mut config = RuntimeConfig::new(dir.join("data"));
    config
        .connections
        .insert("node-pg".into(), PgConfig::new(pg_url()));
    for (from, to) in remap {
        config.connection_remap.insert((*from).into(), (*to).into());
    }
    Runtime::open(config).unwrap()
}

/// The answer of a call as the server would see it: each item's data bytes or ignore reason,
/// or the error text.
fn answer(runtime: &Runtime, service: &str, endpoint: &str, action: Action, body: Value) -> String {
    answer_to(runtime, service, endpoint, action, CallBody::Json(&body))
}

/// The same; a `lookup` whose `data` is an object is also asked with that object parsed as a
/// `JsonRecord` (as the server parses a plain lookup body), and must get the same answer.
fn answer_both_ways(
    runtime: &Runtime,
    service: &str,
    endpoint: &str,
    action: Action,
    body: Value,
) -> String {
    let by_tree = answer_to(runtime, service, endpoint, action, CallBody::Json(&body));
    if action == Action::Lookup && body["data"].is_object() {
        let text = body["data"].to_string();
        let data: JsonRecord<'_> = serde_json::from_str(&text).unwrap();
        let by_record = answer_to(
            runtime,
            service,
            endpoint,
            action,
            CallBody::LookupData(&data),
        );
        assert_eq!(by_record, by_tree, "{body}");
    }
    by_tree
}

fn answer_to(
    runtime: &Runtime,
    service: &str,
    endpoint: &str,
    action: Action,
    body: CallBody<'_>,
) -> String {
    let request = CallRequest {
        service,
        endpoint,
        action,
        body,
        dispatch: Dispatch::default(),
        credentials: Credentials::None,
    };
    let response = match runtime.call(&request) {
        Ok(response) => response,
        Err(e) => return format!("error: {e}"),
    };
    let output = match response.output {
        Output::Pending(pending) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            match rt.block_on(pending.finish()) {
                Ok(resolved) => resolved.output,
                Err(e) => return format!("error: {e}"),
            }
        }
        other => other,
    };
    let lookup = match output {
        Output::Lookup(lookup) => lookup,
        Output::Predict(predict) => {
            return (0..predict.items.len())
                .map(|i| String::from_utf8(predict.result(i).to_vec()).unwrap())
                .collect::<Vec<_>>()
                .join("\n");
        }
        Output::Sql(answer) => {
            let mut json = Vec::new();
            answer.write_json(&mut json);
            return String::from_utf8(json).unwrap();
        }
        _ => panic!("not a lookup or SQL answer"),
    };
    lookup
        .items
        .iter()
        .map(|item| match item {
            LookupItem::Data(_) => String::from_utf8(lookup.data(item).unwrap().to_vec()).unwrap(),
            LookupItem::Ignored { reason } => format!("ignored {reason}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn referenced_and_bundled_generations_answer_identically() {
    let dir = tempfile::tempdir().unwrap();
    let table = unique_table("runtime_it");
    let bundled = build(
        dir.path(),
        "bundled",
        r#"path = "data/customers.csv""#,
        (r#"datasets = ["customers"]"#, "customers"),
    );
    sync_from_bundle(&bundled, &table);
    let referenced = build(
        dir.path(),
        "referenced",
        &format!("connection = \"dss-conn\"\ntable = \"{table}\""),
        (r#"connection = "dss-conn""#, &table),
    );
    let manifest = Bundle::open(&referenced, &Limits::default())
        .unwrap()
        .manifest()
        .clone();
    assert!(matches!(
        &manifest.dataset("customers").unwrap().source,
        DatasetSource::Referenced { connection, .. } if connection == "dss-conn"
    ));

    let runtime = runtime(dir.path(), &[("dss-conn", "node-pg")]);
    for (service, archive) in [("bundled", &bundled), ("referenced", &referenced)] {
        runtime.create_service(service, "admin").unwrap();
        runtime
            .import_generation_from_file(service, archive, "admin")
            .unwrap();
        runtime.switch_to_newest(service, "admin").unwrap();
    }
    let queries = [
        ("by-id", Action::Lookup, json!({"data": {"customer": 2}})),
        ("by-id", Action::Lookup, json!({"data": {"customer": "4"}})),
        ("by-id", Action::Lookup, json!({"data": {"customer": 99}})),
        ("by-id", Action::Lookup, json!({"data": {}})),
        ("by-id", Action::Lookup, json!({"data": {"customer": "x"}})),
        ("by-id", Action::Lookup, json!({})),
        (
            "by-id",
            Action::LookupMulti,
            json!({"items": (0..12).map(|i| json!({"data": {"customer": i % 7}})).collect::<Vec<_>>()}),
        ),
        (
            "by-id",
            Action::LookupMulti,
            json!({"items": [{"data": {"customer": 1}}, {"data": {"customer": [1]}}]}),
        ),
        (
            "by-id",
            Action::LookupMulti,
            json!({"items": [{"nodata": 1}]}),
        ),
        (
            "by-place",
            Action::LookupMulti,
            json!({"items": [
                {"data": {"country": "FR", "city": "Paris"}},
                {"data": {"country": "US", "city": "Austin"}},
                {"data": {"country": "FR", "city": "Nice"}},
                {"data": {"country": "FR"}},
                {"data": {"country": "FR", "city": "Lyon"}},
            ]}),
        ),
        (
            "strict",
            Action::Lookup,
            json!({"data": {"country": "US", "city": "Austin"}}),
        ),
        (
            "strict",
            Action::Lookup,
            json!({"data": {"country": "DE", "city": "Bonn"}}),
        ),
        (
            "strict",
            Action::LookupMulti,
            json!({"items": [{"data": {"country": "FR", "city": "Lyon"}}, {"data": {"country": "FR", "city": "Paris"}}]}),
        ),
        ("strict", Action::Predict, json!({"features": {}})),
        ("sql", Action::Query, json!({"country": "FR"})),
        (
            "sql",
            Action::Query,
            json!({"country": "US", "id": "1", "not_city": "Paris"}),
        ),
        (
            "sql",
            Action::Query,
            json!({"country": "FR' OR 1=1 --", "id": null}),
        ),
        (
            "sql",
            Action::Query,
            json!({"country": "FR", "dispatch": {"dispatchKey": "k"}}),
        ),
        ("sql", Action::Query, json!({})),
        ("sql", Action::Query, json!({"country": "FR", "id": "two"})),
        ("sql", Action::Query, json!({"country": "FR", "ctry": "US"})),
        ("sql", Action::Lookup, json!({"data": {}})),
        (
            "spend",
            Action::Predict,
            json!({"features": {"customer": 2, "basket": 3}}),
        ),
        (
            "spend",
            Action::Predict,
            json!({"features": {"customer": 99, "basket": 1}}),
        ),
        ("spend", Action::Predict, json!({"features": {"basket": 1}})),
        (
            "spend",
            Action::Predict,
            json!({"features": {"customer": "x", "basket": 1}}),
        ),
        (
            "spend",
            Action::PredictMulti,
            json!({"items": (0..8).map(|i| json!({"features": {"customer": i, "basket": i}})).collect::<Vec<_>>()}),
        ),
        (
            "spend-strict",
            Action::PredictMulti,
            json!({"items": [
                {"features": {"customer": 1, "basket": 1}},
                {"features": {"customer": 3, "basket": 1}},
                {"features": {"customer": 42, "basket": 1}},
                {"features": {"customer": "bad", "basket": 1}},
            ]}),
        ),
        (
            "spend-strict",
            Action::PredictMulti,
            json!({"items": [
                {"features": {"customer": 1, "basket": 1}},
                {"features": {"customer": "bad", "basket": 1}},
                {"features": {"customer": 42, "basket": 1}},
            ]}),
        ),
        (
            "spend-strict",
            Action::Predict,
            json!({"features": {"customer": 5, "basket": 2}}),
        ),
        ("stats", Action::Query, json!({"after": "1970-01-01"})),
        (
            "stats",
            Action::Query,
            json!({"after": "2021-01-01T00:00:00Z"}),
        ),
    ];
    let mut rows = 0;
    for (endpoint, action, body) in queries {
        let expected = answer_both_ways(&runtime, "bundled", endpoint, action, body.clone());
        let got = answer_both_ways(&runtime, "referenced", endpoint, action, body.clone());
        assert_eq!(got, expected, "{endpoint} {action:?} {body}");
        rows += expected.matches("\"id\":").count();
    }
    assert!(rows >= 10, "{rows}");
    let fr = answer(
        &runtime,
        "referenced",
        "sql",
        Action::Query,
        json!({"country": "FR"}),
    );
    assert!(
        fr.contains(r#""rows":[["1","a@x.io","1.5","true","2021-03-14""#),
        "{fr}"
    );

    // The generation survives a restart: loaded again through the same connection.
    drop(runtime);
    let runtime = self::runtime(dir.path(), &[("dss-conn", "node-pg")]);
    let body = json!({"data": {"customer": 2}});
    assert_eq!(
        answer(
            &runtime,
            "referenced",
            "by-id",
            Action::Lookup,
            body.clone()
        ),
        answer(&runtime, "bundled", "by-id", Action::Lookup, body)
    );
}

#[test]
fn an_undeclared_connection_refuses_the_generation_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let archive = build(
        dir.path(),
        "orphan",
        "connection = \"warehouse\"\ntable = \"whatever\"",
        (r#"connection = "warehouse""#, "whatever"),
    );
    let runtime = runtime(dir.path(), &[]);
    runtime.create_service("orphan", "admin").unwrap();
    let err = runtime
        .import_generation_from_file("orphan", &archive, "admin")
        .unwrap_err();
    assert!(matches!(err, Error::Unservable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("connection `warehouse`") && text.contains("`node-pg`"),
        "{text}"
    );

    // The default connection name, remapped to a declared connection whose table is missing:
    // refused naming the table.
    let archive = build(
        dir.path(),
        "missing",
        "table = \"no_such_table_here\"",
        (
            r#"connection = "api-node-referenced-data""#,
            "no_such_table_here",
        ),
    );
    let runtime = self::runtime(
        &dir.path().join("second"),
        &[("api-node-referenced-data", "node-pg")],
    );
    runtime.create_service("missing", "admin").unwrap();
    let text = runtime
        .import_generation_from_file("missing", &archive, "admin")
        .unwrap_err()
        .to_string();
    assert!(text.contains("no_such_table_here"), "{text}");

    // A remap to an undeclared connection is refused when the node opens.
    let mut config = RuntimeConfig::new(dir.path().join("third"));
    config.connection_remap.insert("a".into(), "nowhere".into());
    let err = Runtime::open(config).unwrap_err().to_string();
    assert!(err.contains("`nowhere`"), "{err}");
}

/// A TCP proxy to the test database that can stop (closing every connection and refusing new
/// ones) and start again on the same port: an outage and a recovery.
struct Proxy {
    runtime: tokio::runtime::Runtime,
    port: u16,
    upstream: String,
    accepting: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    fn new(upstream: String) -> Proxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let port = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut proxy = Proxy {
            runtime,
            port,
            upstream,
            accepting: None,
        };
        proxy.start();
        proxy
    }

    fn start(&mut self) {
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", self.port)))
            .unwrap();
        let upstream = self.upstream.clone();
        self.accepting = Some(self.runtime.spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Closes every proxied connection and the listener.
    fn stop(&mut self) {
        if let Some(accepting) = self.accepting.take() {
            accepting.abort();
            let _ = self.runtime.block_on(accepting);
        }
    }
}

/// `host:port` of a `postgres://[user@]host[:port]/db` URL, and the URL with another one.
fn split_url(url: &str) -> (String, impl Fn(&str) -> String + use<>) {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let at = rest.rfind('@').map_or(0, |i| i + 1);
    let end = rest[at..].find(['/', '?']).map_or(rest.len(), |i| at + i);
    let host_port = &rest[at..end];
    let address = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    let (before, after) = (
        url[..scheme_end + at].to_owned(),
        url[scheme_end + end..].to_owned(),
    );
    (address, move |with: &str| format!("{before}{with}{after}"))
}

#[test]
fn a_database_outage_answers_unavailable_and_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let table = unique_table("outage_it");
    let bundled = build(
        dir.path(),
        "bundled",
        r#"path = "data/customers.csv""#,
        (r#"datasets = ["customers"]"#, "customers"),
    );
    sync_from_bundle(&bundled, &table);
    let referenced = build(
        dir.path(),
        "referenced",
        &format!("table = \"{table}\""),
        (r#"connection = "api-node-referenced-data""#, &table),
    );

    let (upstream, with_address) = split_url(&pg_url());
    let mut proxy = Proxy::new(upstream);
    let mut config = RuntimeConfig::new(dir.path().join("data"));
    let mut pg = PgConfig::new(with_address(&format!("127.0.0.1:{}", proxy.port)));
    pg.statement_timeout = std::time::Duration::from_secs(2);
    config
        .connections
        .insert("api-node-referenced-data".into(), pg);
    let runtime = Runtime::open(config).unwrap();
    for (service, archive) in [("bundled", &bundled), ("referenced", &referenced)] {
        runtime.create_service(service, "admin").unwrap();
        runtime
            .import_generation_from_file(service, archive, "admin")
            .unwrap();
        runtime.switch_to_newest(service, "admin").unwrap();
    }
    let query = |service: &str| {
        answer(
            &runtime,
            service,
            "by-id",
            Action::Lookup,
            json!({"data": {"customer": 2}}),
        )
    };
    let expected = query("bundled");
    assert!(expected.contains("\"id\":2"), "{expected}");
    assert_eq!(query("referenced"), expected);
    let sql = |service: &str| {
        answer(
            &runtime,
            service,
            "sql",
            Action::Query,
            json!({"country": "FR"}),
        )
    };
    let expected_sql = sql("bundled");
    assert!(expected_sql.contains("\"rows\":[[\"1\""), "{expected_sql}");
    assert_eq!(sql("referenced"), expected_sql);

    proxy.stop();
    for _ in 0..3 {
        let down = query("referenced");
        assert!(
            down.starts_with("error: connection `api-node-referenced-data` is unavailable"),
            "{down}"
        );
        let down = answer(
            &runtime,
            "referenced",
            "spend",
            Action::Predict,
            json!({"features": {"customer": 2, "basket": 3}}),
        );
        assert!(
            down.starts_with(
                "error: enrich[0]: connection `api-node-referenced-data` is unavailable"
            ),
            "{down}"
        );
        let down = sql("referenced");
        assert!(
            down.starts_with("error: connection `api-node-referenced-data` is unavailable"),
            "{down}"
        );
        // Everything else keeps serving.
        assert_eq!(query("bundled"), expected);
        assert_eq!(sql("bundled"), expected_sql);
    }
    // The error is the lookup's `Unavailable` (the server answers it 503).
    let body = json!({"data": {"customer": 2}});
    let request = CallRequest {
        service: "referenced",
        endpoint: "by-id",
        action: Action::Lookup,
        body: CallBody::Json(&body),
        dispatch: Dispatch::default(),
        credentials: Credentials::None,
    };
    let Output::Pending(pending) = runtime.call(&request).unwrap().output else {
        panic!("a referenced lookup answers later");
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(pending.finish()).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Lookup {
                item: None,
                source: apinode_lookup::Error::Unavailable { connection, .. }
            } if connection == "api-node-referenced-data"
        ),
        "{err:?}"
    );

    proxy.start();
    assert_eq!(query("referenced"), expected);
    assert_eq!(sql("referenced"), expected_sql);
}
