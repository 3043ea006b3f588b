//! Referenced data's cost (issue 6): the node's `dataset-lookup` and `sql-query` endpoints on
//! a PostgreSQL table, against a bare tokio-postgres loop running the same queries, in one
//! run.
//!
//! - **Data**: the HTTP bench's generated customers table (1M rows by default), loaded into
//!   PostgreSQL by the node's own `apinode data sync --replace --index key` into
//!   `apinode_bench_customers`.
//! - **Node**: a release `apinode serve` whose `api-node-referenced-data` connection is that
//!   database with a pool of `POOL` sessions, serving a bundle with a `dataset-lookup`
//!   endpoint keyed on `key` and a `sql-query` endpoint running `SELECT * FROM ... WHERE key
//!   = ?`. The HTTP bench's load generator drives it on 32 keep-alive connections, closed
//!   loop.
//! - **Bare loop**: `POOL` tokio-postgres sessions of this process, each preparing the
//!   statement once and then running it for the next key as soon as the last answer is in
//!   (rows decoded, the key checked). For the lookup, the statement a user would write,
//!   `SELECT * FROM ... WHERE key = $1`; for the SQL endpoint, the endpoint's own statement.
//!   Both sides ask for the same random keys in the same order, and at most `POOL` queries
//!   are in PostgreSQL at once on either side.
//! - **Pinning** (full run, two cores or more): PostgreSQL (its postmaster and every
//!   backend, restored afterwards) on core 0; the node, the load generator and the bare
//!   loop on core 1, so the database has a core to itself on both sides, as it would have
//!   its own machine. The smoke run leaves PostgreSQL alone.
//! - **Drift**: the four phases (node lookup, bare lookup, node SQL, bare SQL) run in rounds,
//!   each in the reverse order of the one before; ratios are given per round and over the
//!   rounds (mean rates).
//!
//! Goal (docs/benchmarks.md): the node's throughput ≥ 0.8× the bare loop's, for the lookup
//! and for the SQL endpoint. `cargo xtask bench referenced`; the report goes to stdout and to
//! `target/bench-results/referenced.json`. Without `--bench` (under `cargo test --benches`)
//! every phase is short, on `APINODE_BENCH_ROWS` rows (10,000 unless set), against the debug
//! binary; it writes `referenced-smoke.json` and checks that both sides answer, without
//! errors.
//!
//! The database: `APINODE_BENCH_PG_URL`, else `APINODE_TEST_PG_URL`, else
//! `postgres://postgres@127.0.0.1:5432/test`; the bench fails when it does not answer.
//! Knobs: `APINODE_BENCH_ROWS`, `APINODE_BENCH_SECONDS` (each measured phase: 10 s, 1 s in
//! smoke mode), `APINODE_BENCH_ROUNDS` (2), `APINODE_BENCH_PERF=1` or `dwarf` (`perf record`
//! the node during its first max-load phase of each endpoint).

use apinode_bench_http::{
    ADMIN_KEY, CLIENT_CORE, CONNECTIONS, Phase, Pinning, Profiler, SERVER_CORE, SERVICE, Server,
    Settings, build_bundle, call, core_count, cpu_model, cpu_seconds, deploy, env_var, histogram,
    http_request, load, machine, node_binary, pin_self, random_keys, reexecuted_role,
    write_customers_parquet, write_report,
};
use bytes::Bytes;
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// PostgreSQL sessions on each side: the node's pool size and the bare loop's sessions.
const POOL: usize = 8;
const TABLE: &str = "apinode_bench_customers";
const LOOKUP_ENDPOINT: &str = "customer";
const SQL_ENDPOINT: &str = "customer-sql";
/// The bare loop's statement for both endpoints: what a user writes for the lookup, and the
/// SQL endpoint's own statement (with `$1` for its `?`).
const BARE_STATEMENT: &str = "SELECT * FROM apinode_bench_customers WHERE key = $1";

fn main() {
    if reexecuted_role() {
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    // Before any thread exists, so every thread of this process inherits the mask.
    let pinning = pin_self();
    let settings = Settings::new(full);
    let rounds = settings.rounds;
    let url = env_var("APINODE_BENCH_PG_URL")
        .or_else(|| env_var("APINODE_TEST_PG_URL"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let database = DatabasePinning::new(full && pinning.skipped.is_none());
    eprintln!(
        "referenced bench ({}): {} rows, {CONNECTIONS} HTTP connections, {POOL} PostgreSQL sessions a side, {:?} phases, {rounds} rounds; {}; {}",
        settings.mode(),
        settings.rows,
        settings.phase,
        describe_pinning(&pinning),
        database.describe(),
    );
    let results = run(&settings, &pinning, &url, rounds);
    drop(database);
    let report = render(&settings, &pinning, &results);
    print!("{}", report.markdown);
    write_report("referenced", full, settings.perf.is_some(), &report.json);
    results.check();
}

fn describe_pinning(pinning: &Pinning) -> String {
    match &pinning.skipped {
        None => format!(
            "node, load generator and bare loop on core {CLIENT_CORE}, PostgreSQL on core {SERVER_CORE}, via taskset"
        ),
        Some(reason) => format!("not pinned: {reason}"),
    }
}

// ---------------------------------------------------------------------------------------
// PostgreSQL's processes

/// The PostgreSQL server's processes (`postgres`: the postmaster, its helpers and backends).
fn postgres_pids() -> Vec<u32> {
    let output = Command::new("pgrep").args(["-x", "postgres"]).output();
    output
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// CPU seconds used so far by PostgreSQL's processes.
fn postgres_cpu() -> f64 {
    postgres_pids()
        .iter()
        .map(|pid| cpu_seconds(&pid.to_string()))
        .sum()
}

/// PostgreSQL pinned to core 0 for the run (backends forked later inherit the postmaster's
/// mask); every process found is given all the cores back when dropped, even on panic.
struct DatabasePinning {
    /// Why it is not pinned, or `None`.
    skipped: Option<String>,
}

impl DatabasePinning {
    fn new(pin: bool) -> DatabasePinning {
        if !pin {
            return DatabasePinning {
                skipped: Some("smoke run or this process not pinned".to_owned()),
            };
        }
        let pids = postgres_pids();
        if pids.is_empty() {
            return DatabasePinning {
                skipped: Some("no `postgres` process visible (another host?)".to_owned()),
            };
        }
        for pid in &pids {
            let pinned = Command::new("taskset")
                .args(["-a", "-p", "-c", SERVER_CORE])
                .arg(pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !pinned {
                // Not ours to pin (another user's): give back the cores of those pinned.
                drop(DatabasePinning { skipped: None });
                return DatabasePinning {
                    skipped: Some(format!("taskset refused on postgres process {pid}")),
                };
            }
        }
        DatabasePinning { skipped: None }
    }

    fn describe(&self) -> String {
        match &self.skipped {
            None => format!("PostgreSQL pinned to core {SERVER_CORE} for the run"),
            Some(reason) => format!("PostgreSQL not pinned ({reason})"),
        }
    }
}

impl Drop for DatabasePinning {
    fn drop(&mut self) {
        if self.skipped.is_some() {
            return;
        }
        let all = format!(
            "0-{}",
            core_count().parse::<usize>().unwrap_or(1).max(1) - 1
        );
        for pid in postgres_pids() {
            let _ = Command::new("taskset")
                .args(["-a", "-p", "-c", &all])
                .arg(pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The run

/// The two endpoints measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Query {
    Lookup,
    Sql,
}

impl Query {
    const ALL: [Query; 2] = [Query::Lookup, Query::Sql];

    fn name(self) -> &'static str {
        match self {
            Query::Lookup => "lookup",
            Query::Sql => "sql-query",
        }
    }

    fn path(self) -> String {
        match self {
            Query::Lookup => format!("/public/api/v1/{SERVICE}/{LOOKUP_ENDPOINT}/lookup"),
            Query::Sql => format!("/public/api/v1/{SERVICE}/{SQL_ENDPOINT}/query"),
        }
    }

    /// The request body asking for `key`.
    fn body(self, key: &str) -> String {
        match self {
            Query::Lookup => format!(r#"{{"data": {{"key": "{key}"}}}}"#),
            Query::Sql => format!(r#"{{"key": "{key}"}}"#),
        }
    }

    fn http_requests(self, keys: &[String]) -> Arc<Vec<Bytes>> {
        let path = self.path();
        Arc::new(
            keys.iter()
                .map(|key| {
                    Bytes::from(http_request(
                        "POST",
                        &path,
                        false,
                        self.body(key).as_bytes(),
                    ))
                })
                .collect(),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Node,
    Bare,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Node => "node",
            Side::Bare => "bare tokio-postgres",
        }
    }
}

/// The phases of round `round`: forward, then backward, alternately.
fn order(round: usize) -> Vec<(Query, Side)> {
    let mut slots: Vec<(Query, Side)> = Query::ALL
        .iter()
        .flat_map(|&q| [(q, Side::Node), (q, Side::Bare)])
        .collect();
    if round % 2 == 1 {
        slots.reverse();
    }
    slots
}

struct Slot {
    round: usize,
    query: Query,
    side: Side,
    phase: Phase,
    /// PostgreSQL's CPU during the phase, in cores.
    database_cpu: f64,
}

struct Results {
    slots: Vec<Slot>,
    rounds: usize,
    sync_output: String,
    /// One answer of each endpoint, to show what the node sends.
    samples: Vec<(Query, Value)>,
}

impl Results {
    fn slots_of(&self, query: Query, side: Side) -> impl Iterator<Item = &Slot> {
        self.slots
            .iter()
            .filter(move |s| s.query == query && s.side == side)
    }

    fn mean(&self, query: Query, side: Side, figure: impl Fn(&Slot) -> f64) -> f64 {
        let values: Vec<f64> = self.slots_of(query, side).map(figure).collect();
        values.iter().sum::<f64>() / values.len().max(1) as f64
    }

    fn rate(&self, query: Query, side: Side) -> f64 {
        self.mean(query, side, |s| s.phase.rate())
    }

    fn ratio(&self, query: Query) -> f64 {
        self.rate(query, Side::Node) / self.rate(query, Side::Bare).max(f64::EPSILON)
    }

    fn round_ratios(&self, query: Query) -> Vec<f64> {
        (0..self.rounds)
            .filter_map(|round| {
                let rate = |side: Side| {
                    self.slots
                        .iter()
                        .find(|s| s.round == round && s.query == query && s.side == side)
                        .map(|s| s.phase.rate())
                };
                Some(rate(Side::Node)? / rate(Side::Bare)?)
            })
            .collect()
    }

    fn check(&self) {
        for slot in &self.slots {
            let name = format!(
                "round {} {} {}",
                slot.round + 1,
                slot.query.name(),
                slot.side.name()
            );
            assert!(slot.phase.requests > 0, "{name}: no query answered");
            assert_eq!(slot.phase.errors, 0, "{name}: {} errors", slot.phase.errors);
        }
    }
}

fn run(settings: &Settings, pinning: &Pinning, url: &str, rounds: usize) -> Results {
    let work = tempfile::tempdir().expect("a temp dir");
    let node_bin = node_binary();
    let folder = work.path().join("service");
    std::fs::create_dir_all(&folder).expect("create the service folder");
    let parquet = work.path().join("customers.parquet");
    write_customers_parquet(&parquet, settings.rows);

    let started = Instant::now();
    let synced = Command::new(&node_bin)
        .args(["data", "sync"])
        .arg(&parquet)
        .args([
            "--url",
            url,
            "--table",
            TABLE,
            "--replace",
            "--index",
            "key",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("run apinode data sync");
    let sync_output = String::from_utf8_lossy(&synced.stdout).trim().to_owned();
    assert!(
        synced.status.success(),
        "apinode data sync into {url} failed (is PostgreSQL up? set APINODE_BENCH_PG_URL): {sync_output}"
    );
    eprintln!(
        "{sync_output} ({:.1} s with the file)",
        started.elapsed().as_secs_f64()
    );

    std::fs::write(
        folder.join("service.toml"),
        format!(
            r#"[service]
id = "{SERVICE}"

[auth]
mode = "public"

[[datasets]]
name = "customers"
table = "{TABLE}"

[[endpoints]]
id = "{LOOKUP_ENDPOINT}"
kind = "dataset-lookup"
[endpoints.lookup]
dataset = "customers"
keys = ["key"]

[[endpoints]]
id = "{SQL_ENDPOINT}"
kind = "sql-query"
[endpoints.sql]
connection = "api-node-referenced-data"
statements = [{{ sql = "SELECT * FROM {TABLE} WHERE key = ?", params = ["key"] }}]
parameters = [{{ name = "key", type = "string" }}]
"#
        ),
    )
    .expect("write service.toml");
    let bundle = work.path().join("referenced-v1.zip");
    build_bundle(&node_bin, &folder, &bundle);

    let config = work.path().join("node.toml");
    std::fs::write(
        &config,
        format!("[connections.api-node-referenced-data]\nurl = '{url}'\npool_size = {POOL}\n"),
    )
    .expect("write the node's configuration");
    let mut command = if pinning.skipped.is_none() {
        let mut command = Command::new("taskset");
        command.args(["-c", CLIENT_CORE]).arg(&node_bin);
        command
    } else {
        Command::new(&node_bin)
    };
    command
        .args(["serve", "--bind", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(work.path().join("data"))
        .env("APINODE_ADMIN_KEY", ADMIN_KEY)
        .env("APINODE_LOG", "warn");
    let server = Server::start(command, "apinode node (referenced data)");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(deploy(server.addr, &bundle));

    let keys = random_keys(settings.rows);
    let requests: Vec<(Query, Arc<Vec<Bytes>>)> = Query::ALL
        .iter()
        .map(|&q| (q, q.http_requests(&keys)))
        .collect();
    let requests_of = |query: Query| {
        requests
            .iter()
            .find(|(q, _)| *q == query)
            .map(|(_, r)| r.clone())
            .expect("requests for every query")
    };
    // Each endpoint finds the first key, and answers it as expected.
    let samples = Query::ALL
        .iter()
        .map(|&query| {
            let answer = runtime.block_on(call(
                server.addr,
                "POST",
                &query.path(),
                false,
                query.body(&keys[0]).as_bytes(),
            ));
            let answer: Value = serde_json::from_slice(&answer).expect("a JSON answer");
            let found = match query {
                Query::Lookup => answer["results"][0]["data"]["email"].is_string(),
                Query::Sql => answer["rows"].as_array().is_some_and(|r| r.len() == 1),
            };
            assert!(found, "{}: the first key's row: {answer}", query.name());
            (query, answer)
        })
        .collect();

    let bare = runtime.block_on(BareLoop::connect(url));
    let mut slots = Vec::new();
    let mut profiled = Vec::new();
    for round in 0..rounds {
        for (query, side) in order(round) {
            let measure = |duration: Duration, profile: bool| {
                let cpu0 = postgres_cpu();
                let phase = match side {
                    Side::Node => {
                        let profiler =
                            profile
                                .then_some(settings.perf)
                                .flatten()
                                .map(|call_graph| {
                                    Profiler::start(
                                        &format!("referenced-{}", query.name()),
                                        &server,
                                        call_graph,
                                    )
                                });
                        let phase =
                            runtime.block_on(load(&server, &requests_of(query), None, duration));
                        drop(profiler);
                        phase
                    }
                    Side::Bare => runtime.block_on(bare.run(&keys, duration)),
                };
                let database_cpu = (postgres_cpu() - cpu0) / phase.elapsed.as_secs_f64();
                (phase, database_cpu)
            };
            measure(settings.warm_up, false);
            let profile = side == Side::Node && !profiled.contains(&query);
            if profile {
                profiled.push(query);
            }
            let (phase, database_cpu) = measure(settings.phase, profile);
            eprintln!(
                "round {} {} {}: {}, PostgreSQL {database_cpu:.2} cores",
                round + 1,
                query.name(),
                side.name(),
                phase.summary()
            );
            slots.push(Slot {
                round,
                query,
                side,
                phase,
                database_cpu,
            });
        }
    }
    server.stop(Duration::from_secs(10));
    Results {
        slots,
        rounds,
        sync_output,
        samples,
    }
}

// ---------------------------------------------------------------------------------------
// The bare loop

/// `POOL` sessions of this process, with the statements prepared on each.
struct BareLoop {
    sessions: Vec<Arc<tokio_postgres::Client>>,
    statements: Vec<tokio_postgres::Statement>,
}

impl BareLoop {
    async fn connect(url: &str) -> BareLoop {
        let mut sessions = Vec::with_capacity(POOL);
        let mut statements = Vec::with_capacity(POOL);
        for _ in 0..POOL {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
            tokio::spawn(connection);
            let statement = client
                .prepare(BARE_STATEMENT)
                .await
                .expect("prepare the bare statement");
            sessions.push(Arc::new(client));
            statements.push(statement);
        }
        BareLoop {
            sessions,
            statements,
        }
    }

    /// Each session runs the statement for its share of `keys` (session `s` takes keys `s`,
    /// `s + POOL`, ...), one at a time, for `duration`.
    async fn run(&self, keys: &[String], duration: Duration) -> Phase {
        let cpu0 = cpu_seconds("self");
        let start = Instant::now();
        let end = start + duration;
        let keys: Arc<Vec<String>> = Arc::new(keys.to_vec());
        let mut tasks = JoinSet::new();
        for (s, (client, statement)) in self.sessions.iter().zip(&self.statements).enumerate() {
            let (client, statement, keys) = (client.clone(), statement.clone(), keys.clone());
            tasks.spawn(async move {
                let mut latency = histogram();
                let (mut done, mut errors) = (0u64, 0u64);
                let mut i = s;
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let key = &keys[i % keys.len()];
                    i += POOL;
                    match client.query(&statement, &[key]).await {
                        Ok(rows) if rows.len() == 1 => {
                            let found: &str = rows[0].get("key");
                            if found != key {
                                errors += 1;
                            }
                            // Every column decoded, as a client using the row would.
                            let _email: Option<&str> = rows[0].get("email");
                            let _value: Option<f64> = rows[0].get("lifetime_value");
                            let _orders: Option<i64> = rows[0].get("orders");
                        }
                        Ok(_) | Err(_) => errors += 1,
                    }
                    done += 1;
                    latency.saturating_record((sent.elapsed().as_micros() as u64).max(1));
                }
                (done, errors, latency)
            });
        }
        let mut phase = Phase::empty();
        while let Some(joined) = tasks.join_next().await {
            let (done, errors, latency) = joined.expect("a bare loop task");
            phase.requests += done;
            phase.errors += errors;
            phase.latency.add(latency).expect("same bounds");
        }
        phase.elapsed = start.elapsed();
        phase.client_cpu = (cpu_seconds("self") - cpu0) / phase.elapsed.as_secs_f64();
        phase
    }
}

// ---------------------------------------------------------------------------------------
// The report

struct Report {
    markdown: String,
    json: Value,
}

fn render(settings: &Settings, pinning: &Pinning, results: &Results) -> Report {
    let mode = settings.mode();
    let mut md = String::new();
    let mut line = |text: String| {
        md.push_str(&text);
        md.push('\n');
    };
    line(format!("\n## apinode referenced data benchmark ({mode})\n"));
    line(format!("- machine: {}", machine()));
    line(format!(
        "- table: {} rows in PostgreSQL ({}); {CONNECTIONS} HTTP keep-alive connections to the node, closed loop; {POOL} PostgreSQL sessions on each side; phases of {:.0} s after a {:.1} s warm-up",
        settings.rows,
        results.sync_output,
        settings.phase.as_secs_f64(),
        settings.warm_up.as_secs_f64()
    ));
    line(format!(
        "- {} rounds, each in the reverse order of the one before; pinning: {}",
        results.rounds,
        describe_pinning(pinning)
    ));
    line(
        "\n| round | endpoint | side | queries/s | p50 | p99 | node CPU | client CPU | PostgreSQL CPU | errors |"
            .to_owned(),
    );
    line("|---|---|---|---|---|---|---|---|---|---|".to_owned());
    for slot in &results.slots {
        line(format!(
            "| {} | {} | {} | {:.0} | {} µs | {} µs | {} | {:.2} | {:.2} | {} |",
            slot.round + 1,
            slot.query.name(),
            slot.side.name(),
            slot.phase.rate(),
            slot.phase.quantile_us(0.5),
            slot.phase.quantile_us(0.99),
            match slot.side {
                Side::Node => format!("{:.2}", slot.phase.server_cpu),
                Side::Bare => "—".to_owned(),
            },
            slot.phase.client_cpu,
            slot.database_cpu,
            slot.phase.errors,
        ));
    }
    line(
        "\n| endpoint | node queries/s (mean) | bare loop queries/s (mean) | ratio | per round | goal | met? |"
            .to_owned(),
    );
    line("|---|---|---|---|---|---|---|".to_owned());
    let mut endpoints = serde_json::Map::new();
    for query in Query::ALL {
        let ratio = results.ratio(query);
        let per_round = results.round_ratios(query);
        line(format!(
            "| {} | {:.0} | {:.0} | **{ratio:.2}×** | {} | ≥ 0.8× | {} |",
            query.name(),
            results.rate(query, Side::Node),
            results.rate(query, Side::Bare),
            per_round
                .iter()
                .map(|r| format!("{r:.2}×"))
                .collect::<Vec<_>>()
                .join(", "),
            if ratio >= 0.8 { "yes" } else { "**no**" },
        ));
        endpoints.insert(
            query.name().to_owned(),
            json!({
                "node_queries_per_second_mean": results.rate(query, Side::Node),
                "bare_queries_per_second_mean": results.rate(query, Side::Bare),
                "ratio": ratio,
                "ratio_per_round": per_round,
                "goal": 0.8,
                "node_p99_us_mean": results.mean(query, Side::Node, |s| s.phase.quantile_us(0.99) as f64),
                "bare_p99_us_mean": results.mean(query, Side::Bare, |s| s.phase.quantile_us(0.99) as f64),
            }),
        );
    }
    let json = json!({
        "mode": mode,
        "machine": {"nproc": core_count(), "cpu": cpu_model()},
        "rows": settings.rows,
        "http_connections": CONNECTIONS,
        "postgres_sessions_per_side": POOL,
        "phase_seconds": settings.phase.as_secs_f64(),
        "warm_up_seconds": settings.warm_up.as_secs_f64(),
        "rounds": results.rounds,
        "pinning": describe_pinning(pinning),
        "sync": results.sync_output,
        "slots": results.slots.iter().map(|s| json!({
            "round": s.round + 1,
            "endpoint": s.query.name(),
            "side": s.side.name(),
            "phase": s.phase.json(),
            "postgres_cpu_cores": s.database_cpu,
        })).collect::<Vec<_>>(),
        "endpoints": endpoints,
        "samples": results.samples.iter().map(|(q, a)| json!({"endpoint": q.name(), "answer": a})).collect::<Vec<_>>(),
    });
    Report { markdown: md, json }
}
