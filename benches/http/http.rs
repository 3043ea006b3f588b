//! The node over HTTP, against the ceiling of this machine; its memory; its cold start.
//!
//! - **Throughput and latency**: the `lookup` endpoint of a real `apinode serve` (release
//!   binary, 1M-row table by default) against a bare hyper 1.x server that answers every
//!   request with the exact bytes of one real lookup answer (the ceiling: what HTTP alone costs
//!   on this box); then the same for the `predict` endpoint of a binary logistic model
//!   (`apinode_benches::write_churn_model`, features in the request) against a ceiling that
//!   answers with a real prediction's bytes. Both are driven by the same load generator, in this process (a minimal
//!   HTTP/1.1 client on a current-thread tokio runtime, 32 keep-alive connections, one request
//!   in flight per connection, the same keys): a closed loop at maximum load, then an open
//!   loop at half of the node's maximum rate, for both servers, latency measured from each
//!   request's scheduled send time (no coordinated omission).
//! - **Pinning**: both servers run on core 0 (`taskset -c 0`), the load generator on core 1
//!   (`taskset -a -p -c 1` on this process before any thread starts). A spinning probe first
//!   measures how much of each core the virtual machine loses on its own (pauses > 200 µs),
//!   the floor under every tail latency here.
//! - **Memory**: the node's resident set before and after the import, per row, against the
//!   Arrow size of the table; the table's and the index's own bytes of an identical lookup
//!   built in this process.
//! - **Cold start**: from the admin `create service` + `importFromArchive` + `switchToNewest`
//!   to the first 200 answer of a lookup.
//!
//! `cargo xtask bench http` (builds the release `apinode` first); the report goes to stdout
//! and to `target/bench-results/http.json`. Without `--bench` (that is, under
//! `cargo test --benches`) it runs every phase briefly on `APINODE_BENCH_ROWS` rows (10,000
//! unless set), writes `http-smoke.json` and checks only that it works: non-zero
//! throughput, no errors.
//!
//! Knobs: `APINODE_BENCH_ROWS` (table size, 1M by default in a full run),
//! `APINODE_BENCH_SECONDS` (length of each measured phase: 10 s, 1 s in smoke mode),
//! `APINODE_BENCH_PERF=1` (`perf record -g` each server during its max-load phase, into
//! `target/bench-results/http-<phase>.perf.data`; `=dwarf` for call graphs through code built
//! without frame pointers; it slows the server, so take figures from a run without it).

use apinode_bench_http::{
    ADMIN_KEY, CEILING_ENV, CLIENT_CORE, CONNECTIONS, Damon, KEYS, PREDICT_ENDPOINT, Phase,
    Pinning, Profiler, SERVER_CORE, SERVICE, STALL_THRESHOLD, Server, Settings,
    build_customers_bundle, call, core_count, cpu_model, deploy, describe_stalls, http_request,
    load, lookup_path, lookup_requests, machine, node_binary, pin_self, proc_status_bytes,
    reexecuted_role, stall_probes, write_report,
};
use apinode_benches::{CHURN_CATEGORIES, CHURN_NUMERIC};
use apinode_lookup::{Lookup, LookupConfig, Table};
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    if reexecuted_role() {
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    // Before any thread exists, so every thread of this process inherits the mask.
    let pinning = pin_self();
    let settings = Settings::new(full);
    eprintln!(
        "http bench ({}): {} rows, {CONNECTIONS} connections, {:?} phases; {}",
        settings.mode(),
        settings.rows,
        settings.phase,
        pinning.describe()
    );
    let report = run(&settings, &pinning);
    print!("{}", report.markdown);
    write_report("http", full, settings.perf.is_some(), &report.json);
    report.check(full);
}

fn predict_path() -> String {
    format!("/public/api/v1/{SERVICE}/{PREDICT_ENDPOINT}/predict")
}

/// `KEYS` predict requests in the official client's shape (features, and `explanations` with
/// nulls), random values (xorshift, fixed seed): some numbers missing, some categories
/// unseen. The first one's body is also returned.
fn predict_requests() -> (Arc<Vec<Bytes>>, String) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let path = predict_path();
    let bodies: Vec<String> = (0..KEYS)
        .map(|_| {
            let mut features = serde_json::Map::new();
            for (i, name) in CHURN_NUMERIC.iter().enumerate() {
                let r = next();
                let value = if r % 20 == 0 {
                    Value::Null
                } else {
                    json!((r % 100_000) as f64 / [10.0, 500.0, 100_000.0][i])
                };
                features.insert((*name).into(), value);
            }
            for (name, levels) in CHURN_CATEGORIES {
                let r = next() as usize % (levels.len() + 1);
                features.insert(name.into(), json!(levels.get(r).unwrap_or(&"unseen")));
            }
            json!({"features": features, "explanations": {"enabled": null, "method": null,
                   "nExplanations": null, "nMonteCarloSteps": null}})
            .to_string()
        })
        .collect();
    let requests = bodies
        .iter()
        .map(|body| Bytes::from(http_request("POST", &path, false, body.as_bytes())))
        .collect();
    (Arc::new(requests), bodies[0].clone())
}

// ---------------------------------------------------------------------------------------
// The run

struct Report {
    markdown: String,
    json: Value,
    ratio: f64,
    phases: Vec<(&'static str, Phase)>,
}

impl Report {
    fn check(&self, full: bool) {
        for (name, phase) in &self.phases {
            assert!(phase.requests > 0, "{name}: no request answered");
            assert_eq!(phase.errors, 0, "{name}: {} errors", phase.errors);
        }
        assert!(self.ratio > 0.0, "no throughput ratio");
        if full {
            eprintln!("full run: figures above; goals are judged in docs/benchmarks.md");
        }
    }
}

struct Memory {
    rss_before: u64,
    rss_after_import: u64,
    rss_after_load: u64,
    hwm_after_load: u64,
    node_resident_bytes: u64,
    arrow_bytes: usize,
    table_bytes: usize,
    index_bytes: usize,
}

fn run(settings: &Settings, pinning: &Pinning) -> Report {
    let node_bin = node_binary();
    let rows = settings.rows;
    let work = tempfile::tempdir().expect("a temp dir");

    let bundle = build_customers_bundle(&node_bin, work.path(), rows);

    // What the node holds, measured in process on an identical lookup.
    let (arrow_bytes, table_bytes, index_bytes) = {
        let data = Bytes::from(std::fs::read(&bundle.parquet).expect("read parquet"));
        let table = Arc::new(Table::from_parquet("customers", data).expect("load parquet"));
        let arrow = table.batch().get_array_memory_size();
        let resident = table.resident_bytes();
        let lookup =
            Lookup::new(table, LookupConfig::on_keys(&["key"])).expect("an index on `key`");
        (arrow, resident, lookup.index_bytes())
    };

    let mut node_command = pinning.server_command(&node_bin);
    node_command
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(work.path().join("data"))
        .env("APINODE_ADMIN_KEY", ADMIN_KEY)
        .env("APINODE_LOG", "warn");
    let node = Server::start(node_command, "apinode node");
    let (requests, first_body) = lookup_requests(rows);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");

    // Cold start, and memory around it.
    let rss_before = proc_status_bytes(node.pid(), "VmRSS");
    let addr = node.addr;
    let (cold_total, cold_import, real_answer) = runtime.block_on(async {
        let t0 = Instant::now();
        let import = deploy(addr, &bundle.path).await;
        let answer = call(addr, "POST", &lookup_path(), false, first_body.as_bytes()).await;
        (t0.elapsed(), import, answer)
    });
    let rss_after_import = proc_status_bytes(node.pid(), "VmRSS");
    let answer: Value = serde_json::from_slice(&real_answer).expect("a JSON answer");
    assert_eq!(
        answer["results"][0]["ignored"],
        json!(false),
        "the first lookup found its row: {answer}"
    );
    let metrics: Value = serde_json::from_slice(&runtime.block_on(call(
        addr,
        "GET",
        "/admin/api/metrics",
        true,
        b"",
    )))
    .expect("JSON metrics");
    let node_resident_bytes = metrics["services"][SERVICE]["residentBytes"]
        .as_u64()
        .unwrap_or(0);

    // The ceiling answers with the bytes of a real answer.
    let body_file = work.path().join("ceiling-body.json");
    std::fs::write(&body_file, &real_answer).expect("write the ceiling's body");
    let mut ceiling_command =
        pinning.server_command(&std::env::current_exe().expect("the bench knows its path"));
    ceiling_command.env(CEILING_ENV, &body_file);
    let ceiling = Server::start(ceiling_command, "hyper ceiling");

    let stalls = stall_probes(pinning, if settings.full { 5.0 } else { 0.5 });
    let damon = Damon::read();

    // Maximum load (closed loop), then half of the node's maximum (open loop), both servers;
    // each after a warm-up at the same load.
    let mut phases: Vec<(&'static str, Phase)> = Vec::new();
    let mut damon_ms: Vec<(&'static str, f64)> = Vec::new();
    let mut phase =
        |name: &'static str, server: &Server, requests: &Arc<Vec<Bytes>>, rate: Option<f64>| {
            let _ = runtime.block_on(load(server, requests, rate, settings.warm_up));
            let profile = settings
                .perf
                .filter(|_| rate.is_none())
                .map(|call_graph| Profiler::start(&format!("http-{name}"), server, call_graph));
            let damon_before = damon.cpu_ms();
            let result = runtime.block_on(load(server, requests, rate, settings.phase));
            damon_ms.push((name, damon.cpu_ms() - damon_before));
            drop(profile);
            eprintln!("{name}: {}", result.summary());
            let rate = result.rate();
            phases.push((name, result));
            rate
        };
    let node_max = phase("node_max", &node, &requests, None);
    let ceiling_max = phase("ceiling_max", &ceiling, &requests, None);
    let half = node_max / 2.0;
    phase("node_half", &node, &requests, Some(half));
    phase("ceiling_half", &ceiling, &requests, Some(half));
    drop(ceiling);

    // The same for predictions, against a ceiling answering with a real prediction.
    let (predict_requests, first_predict) = predict_requests();
    let predict_answer = runtime.block_on(call(
        addr,
        "POST",
        &predict_path(),
        false,
        first_predict.as_bytes(),
    ));
    let answer: Value = serde_json::from_slice(&predict_answer).expect("a JSON answer");
    assert!(
        answer["result"]["probas"]["churn"].is_f64(),
        "the first prediction has probabilities: {answer}"
    );
    std::fs::write(&body_file, &predict_answer).expect("write the ceiling's body");
    let mut ceiling_command =
        pinning.server_command(&std::env::current_exe().expect("the bench knows its path"));
    ceiling_command.env(CEILING_ENV, &body_file);
    let ceiling = Server::start(ceiling_command, "hyper ceiling (predict)");
    let node_predict_max = phase("node_predict_max", &node, &predict_requests, None);
    let ceiling_predict_max = phase("ceiling_predict_max", &ceiling, &predict_requests, None);
    let predict_half = node_predict_max / 2.0;
    phase(
        "node_predict_half",
        &node,
        &predict_requests,
        Some(predict_half),
    );
    phase(
        "ceiling_predict_half",
        &ceiling,
        &predict_requests,
        Some(predict_half),
    );

    let memory = Memory {
        rss_before,
        rss_after_import,
        rss_after_load: proc_status_bytes(node.pid(), "VmRSS"),
        hwm_after_load: proc_status_bytes(node.pid(), "VmHWM"),
        node_resident_bytes,
        arrow_bytes,
        table_bytes,
        index_bytes,
    };
    drop(ceiling);
    drop(node);
    let results = Results {
        ratio: node_max / ceiling_max,
        predict_ratio: node_predict_max / ceiling_predict_max,
        phases,
        half,
        predict_half,
        predict_body_bytes: predict_answer.len(),
        cold_total,
        cold_import,
        memory,
        body_bytes: real_answer.len(),
        stalls,
        damon: damon.description.clone(),
        damon_ms,
    };
    render(settings, pinning, results)
}

/// Everything measured, for the report.
struct Results {
    phases: Vec<(&'static str, Phase)>,
    /// Node / ceiling requests per second at maximum load.
    ratio: f64,
    /// The open loop's rate: half of the node's maximum.
    half: f64,
    /// Node / ceiling requests per second at maximum load, for `predict`.
    predict_ratio: f64,
    /// The open loop's rate for `predict`.
    predict_half: f64,
    predict_body_bytes: usize,
    cold_total: Duration,
    cold_import: Duration,
    memory: Memory,
    body_bytes: usize,
    /// The stall probe on the servers' core and on the load generator's.
    stalls: Option<[Value; 2]>,
    /// The kernel's DAMON monitors that were on, and their CPU in each measured phase (ms).
    damon: Option<String>,
    damon_ms: Vec<(&'static str, f64)>,
}

impl Results {
    fn phase(&self, name: &str) -> &Phase {
        &self
            .phases
            .iter()
            .find(|(n, _)| *n == name)
            .expect("a phase")
            .1
    }
}

fn render(settings: &Settings, pinning: &Pinning, results: Results) -> Report {
    let rows = settings.rows;
    let memory = &results.memory;
    let per_row = |bytes: f64| bytes / rows as f64;
    let rss_delta = memory.rss_after_import.saturating_sub(memory.rss_before) as f64;
    let arrow = memory.arrow_bytes as f64;
    let table_and_index = (memory.table_bytes + memory.index_bytes) as f64;
    let (node_max, ceiling_max) = (results.phase("node_max"), results.phase("ceiling_max"));
    let (node_half, ceiling_half) = (results.phase("node_half"), results.phase("ceiling_half"));
    let (node_predict_half, ceiling_predict_half) = (
        results.phase("node_predict_half"),
        results.phase("ceiling_predict_half"),
    );
    // Requests per second of server CPU: the ratio if both servers had had a full core.
    let per_cpu = |p: &Phase| p.rate() / p.server_cpu.max(f64::EPSILON);
    let cpu_ratio = per_cpu(node_max) / per_cpu(ceiling_max);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mib = |b: u64| b as f64 / 1_048_576.0;
    let (half, predict_half) = (results.half, results.predict_half);
    let nproc = core_count();

    let mut md = String::new();
    let mut line = |text: String| {
        md.push_str(&text);
        md.push('\n');
    };
    let mode = settings.mode();
    line(format!("\n## apinode HTTP benchmark ({mode})\n"));
    line(format!("- machine: {}", machine()));
    line(format!(
        "- table: {rows} rows; answer body {} bytes; {CONNECTIONS} keep-alive connections, one request in flight each; phases of {:.0} s, each after a {:.1} s warm-up at the same load",
        results.body_bytes,
        settings.phase.as_secs_f64(),
        settings.warm_up.as_secs_f64()
    ));
    line(format!("- pinning: {}", pinning.describe()));
    if let Some([core0, core1]) = &results.stalls {
        line(format!(
            "- the machine itself (a spinning loop, servers idle): core {SERVER_CORE}: {}; core {CLIENT_CORE}: {}",
            describe_stalls(core0),
            describe_stalls(core1)
        ));
    }
    if let Some(damon) = &results.damon {
        let per_phase: Vec<String> = results
            .damon_ms
            .iter()
            .map(|(name, ms)| format!("{name} {ms:.0} ms"))
            .collect();
        line(format!(
            "- the kernel's DAMON monitor (kdamond, a core for milliseconds at a time, either core): {damon}; its CPU in each measured phase: {}",
            per_phase.join(", ")
        ));
    }
    line(format!(
        "- predict: a binary logistic model over {} numeric and {} categorical features; answer body {} bytes",
        CHURN_NUMERIC.len(),
        CHURN_CATEGORIES.len(),
        results.predict_body_bytes
    ));
    line(
        "\n| route | load | server | req/s | p50 | p99 | p99.9 | errors | server CPU | load-gen CPU |"
            .to_owned(),
    );
    line("|---|---|---|---|---|---|---|---|---|---|".to_owned());
    for (name, phase) in &results.phases {
        let (route, rate) = match name.contains("predict") {
            true => ("predict", predict_half),
            false => ("lookup", half),
        };
        let load = match name.ends_with("_max") {
            true => "max (closed loop)".to_owned(),
            false => format!("{rate:.0} req/s (open loop)"),
        };
        let server = match name.starts_with("node") {
            true => "apinode",
            false => "hyper ceiling",
        };
        line(format!(
            "| {route} | {load} | {server} | {:.0} | {} µs | {} µs | {} µs | {} | {:.2} | {:.2} |",
            phase.rate(),
            phase.quantile_us(0.5),
            phase.quantile_us(0.99),
            phase.quantile_us(0.999),
            phase.errors,
            phase.server_cpu,
            phase.client_cpu
        ));
    }
    line(String::new());
    line(format!(
        "- throughput: apinode / ceiling = **{:.2}×** (goal ≥ 0.6×); per second of server CPU: {cpu_ratio:.2}×",
        results.ratio
    ));
    line(format!(
        "- latency at half load ({half:.0} req/s): apinode p50 {} µs, p99 **{} µs** (goal p99 ≤ 1 ms); the ceiling at the same rate: p50 {} µs, p99 {} µs",
        node_half.quantile_us(0.5),
        node_half.quantile_us(0.99),
        ceiling_half.quantile_us(0.5),
        ceiling_half.quantile_us(0.99),
    ));
    line(format!(
        "- predict throughput: apinode / ceiling = **{:.2}×** (goal ≥ 0.5×); at half load ({predict_half:.0} req/s): apinode p50 {} µs, p99 **{} µs**; the ceiling p50 {} µs, p99 {} µs",
        results.predict_ratio,
        node_predict_half.quantile_us(0.5),
        node_predict_half.quantile_us(0.99),
        ceiling_predict_half.quantile_us(0.5),
        ceiling_predict_half.quantile_us(0.99),
    ));
    line(format!(
        "- cold start: **{:.0} ms** from `create service` to the first answer, of which {:.0} ms create + import (goal ≤ 2 s)",
        ms(results.cold_total),
        ms(results.cold_import)
    ));
    line(format!(
        "- memory: node RSS {:.1} MiB before the import, {:.1} MiB after (+{:.1} B/row), {:.1} MiB after the load phases (peak {:.1} MiB)",
        mib(memory.rss_before),
        mib(memory.rss_after_import),
        per_row(rss_delta),
        mib(memory.rss_after_load),
        mib(memory.hwm_after_load),
    ));
    line(format!(
        "- memory: Arrow size {:.1} B/row; table {:.1} B/row, index {:.1} B/row: (table + index) / Arrow = **{:.2}×** (goal ≤ 1.5×); RSS delta / Arrow = {:.2}×; the node's metrics say {:.1} B/row",
        per_row(arrow),
        per_row(memory.table_bytes as f64),
        per_row(memory.index_bytes as f64),
        table_and_index / arrow,
        rss_delta / arrow,
        per_row(memory.node_resident_bytes as f64),
    ));

    let json = json!({
        "mode": mode,
        "machine": {"nproc": nproc, "cpu": cpu_model()},
        "rows": rows,
        "connections": CONNECTIONS,
        "phase_seconds": settings.phase.as_secs_f64(),
        "warm_up_seconds": settings.warm_up.as_secs_f64(),
        "pinning": pinning.describe(),
        "damon": results.damon.as_ref().map(|description| json!({
            "description": description,
            "phase_cpu_ms": results.damon_ms.iter().map(|(name, ms)| (name.to_string(), json!(ms))).collect::<serde_json::Map<_, _>>(),
        })),
        "stall_probe": results.stalls.as_ref().map(|[a, b]| json!({
            "server_core": a,
            "load_generator_core": b,
            "threshold_us": STALL_THRESHOLD.as_micros() as u64,
        })),
        "answer_body_bytes": results.body_bytes,
        "node_max": node_max.json(),
        "ceiling_max": ceiling_max.json(),
        "ratio_to_ceiling": results.ratio,
        "ratio_to_ceiling_per_server_cpu": cpu_ratio,
        "half_load_rate": half,
        "node_half": node_half.json(),
        "ceiling_half": ceiling_half.json(),
        "predict": {
            "answer_body_bytes": results.predict_body_bytes,
            "node_max": results.phase("node_predict_max").json(),
            "ceiling_max": results.phase("ceiling_predict_max").json(),
            "ratio_to_ceiling": results.predict_ratio,
            "half_load_rate": predict_half,
            "node_half": node_predict_half.json(),
            "ceiling_half": ceiling_predict_half.json(),
        },
        "cold_start_ms": ms(results.cold_total),
        "cold_start_create_and_import_ms": ms(results.cold_import),
        "memory": {
            "rss_before_bytes": memory.rss_before,
            "rss_after_import_bytes": memory.rss_after_import,
            "rss_after_load_bytes": memory.rss_after_load,
            "rss_peak_bytes": memory.hwm_after_load,
            "rss_delta_per_row": per_row(rss_delta),
            "arrow_bytes": memory.arrow_bytes,
            "arrow_per_row": per_row(arrow),
            "table_per_row": per_row(memory.table_bytes as f64),
            "index_per_row": per_row(memory.index_bytes as f64),
            "table_and_index_over_arrow": table_and_index / arrow,
            "rss_delta_over_arrow": rss_delta / arrow,
            "node_metrics_resident_bytes": memory.node_resident_bytes,
        },
    });
    Report {
        markdown: md,
        json,
        ratio: results.ratio,
        phases: results.phases,
    }
}
