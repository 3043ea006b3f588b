//! The query audit log's cost (issue 7): the `lookup` endpoint of `apinode serve` with the log
//! off and in each durability mode (`async`, `write`, `fsync`), in one run.
//!
//! - **Nodes**: four release `apinode serve` processes serving the HTTP bench's customers
//!   bundle (a generated 1M-row table by default), started together and kept for the whole
//!   run: one without an `[audit]` section (logging off, the node's default) and one per
//!   durability mode, each with its own data directory, spool and store (a local directory),
//!   all under one temporary directory on local disk. The log keeps its defaults otherwise:
//!   every query logged, with its inputs and outputs.
//! - **Load**: the HTTP bench's load generator, the same requests on the same 32 connections
//!   for every node: per mode, a closed loop at maximum load, then an open loop at half of the
//!   logging-off maximum (measured in the run's first slot; one rate for every mode), latency
//!   from each request's scheduled send time. Each phase follows a warm-up at the same load.
//! - **Drift**: the modes run in rounds, each in the reverse order of the one before (off,
//!   async, write, fsync, then fsync, write, async, off), so the host slowing down or speeding
//!   up during the run weighs on every mode alike. Ratios to logging off are given per round
//!   and over the rounds (mean rates).
//! - **Pinning**: the nodes on core 0, the load generator on core 1, as in the HTTP bench;
//!   the stall probe first measures what the machine takes from each core on its own.
//! - **Records**: after the rounds each logging node is stopped (it seals its last segments
//!   and uploads them), then the query records in its store and spool are counted. Every
//!   answered query must have left exactly one, or the run fails: a mode that logs nothing
//!   would measure nothing.
//!
//! Goals (docs/benchmarks.md): throughput with `async` ≥ 0.95×, with `write` ≥ 0.9× of logging
//! off. `cargo xtask bench audit`; the report goes to stdout and to
//! `target/bench-results/audit.json` (`audit-custom.json` when a knob below changed the run). Without `--bench` (under `cargo test --benches`) every
//! phase is short, on `APINODE_BENCH_ROWS` rows (10,000 unless set), against the debug binary;
//! it writes `audit-smoke.json` and checks that it works: throughput, no errors, every record.
//!
//! Knobs: `APINODE_BENCH_ROWS`, `APINODE_BENCH_SECONDS` (each measured phase: 10 s, 1 s in
//! smoke mode), `APINODE_BENCH_ROUNDS` (2), `APINODE_BENCH_AUDIT_CONFIG` (lines added to every
//! logging node's `[audit]` section, `;` for a newline: `direct_writes = false;async_window_ms = 1`),
//! `APINODE_BENCH_PERF=1` or `dwarf` (`perf record`
//! each node during its max-load phases, into
//! `target/bench-results/audit-<mode>_max.perf.data`, `..._max-round2.perf.data` and so on;
//! it slows the nodes, so take figures from a run without it).

use apinode_bench_http::{
    ADMIN_KEY, CLIENT_CORE, CONNECTIONS, Damon, Phase, Pinning, Profiler, SERVER_CORE, SERVICE,
    Server, Settings, build_customers_bundle, call, core_count, cpu_model, deploy, describe_stalls,
    load, lookup_path, lookup_requests, machine, node_binary, pin_self, reexecuted_role,
    stall_probes, write_report,
};
use bytes::Bytes;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
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
    let rounds = settings.rounds;
    eprintln!(
        "audit bench ({}): {} rows, {CONNECTIONS} connections, {:?} phases, {rounds} rounds; {}",
        settings.mode(),
        settings.rows,
        settings.phase,
        pinning.describe()
    );
    let results = run(&settings, &pinning, rounds);
    let report = render(&settings, &pinning, &results);
    print!("{}", report.markdown);
    write_report("audit", full, settings.perf.is_some(), &report.json);
    results.check(full);
}

/// The log off, then its durability modes, in the order of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    Async,
    Write,
    Fsync,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Off, Mode::Async, Mode::Write, Mode::Fsync];

    fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Async => "async",
            Mode::Write => "write",
            Mode::Fsync => "fsync",
        }
    }

    /// The least throughput, as a fraction of logging off's, issue 7 asks of the mode.
    fn goal(self) -> Option<f64> {
        match self {
            Mode::Async => Some(0.95),
            Mode::Write => Some(0.9),
            Mode::Off | Mode::Fsync => None,
        }
    }

    /// The modes of round `round`: forward, then backward, alternately.
    fn order(round: usize) -> Vec<Mode> {
        let mut modes = Mode::ALL.to_vec();
        if round % 2 == 1 {
            modes.reverse();
        }
        modes
    }
}

/// One node and what it was asked.
struct Node {
    mode: Mode,
    server: Server,
    /// Its data directory, and its spool and store when logging.
    dir: PathBuf,
    /// Queries it answered, warm-ups included: each leaves one record when logging.
    answered: u64,
}

impl Node {
    fn spool(&self) -> PathBuf {
        self.dir.join("spool")
    }

    fn store(&self) -> PathBuf {
        self.dir.join("store")
    }
}

/// Starts a node for `mode` under `work/<mode>/` and deploys the bundle on it.
fn start_node(
    mode: Mode,
    pinning: &Pinning,
    runtime: &tokio::runtime::Runtime,
    work: &Path,
    bundle: &Path,
) -> Node {
    let dir = work.join(mode.name());
    std::fs::create_dir_all(&dir).expect("create the node's directory");
    let mut command = pinning.server_command(&node_binary());
    command
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .env("APINODE_ADMIN_KEY", ADMIN_KEY)
        .env("APINODE_LOG", "warn");
    if mode != Mode::Off {
        // TOML literal strings: the paths are taken as they are.
        let mut config = format!(
            "[audit]\ndurability = '{}'\nstore = '{}'\nspool_dir = '{}'\nnode_id = 'bench-{}'\n",
            mode.name(),
            dir.join("store").display(),
            dir.join("spool").display(),
            mode.name(),
        );
        // Settings to compare, for every logging node (e.g. `async_window_ms = 1`).
        if let Ok(extra) = std::env::var("APINODE_BENCH_AUDIT_CONFIG") {
            config.push_str(&extra.replace(';', "\n"));
            config.push('\n');
        }
        let config_path = dir.join("node.toml");
        std::fs::write(&config_path, config).expect("write the node's configuration");
        command.arg("--config").arg(config_path);
    }
    let server = Server::start(command, &format!("apinode node (audit {})", mode.name()));
    runtime.block_on(deploy(server.addr, bundle));
    Node {
        mode,
        server,
        dir,
        answered: 0,
    }
}

/// What one node did in one round.
struct Slot {
    round: usize,
    mode: Mode,
    max: Phase,
    half: Phase,
}

/// The query records a stopped node left, and what its metrics said before it stopped.
struct Records {
    mode: Mode,
    answered: u64,
    /// Lines of the service's query segments, in the store and left in the spool.
    in_store: u64,
    in_spool: u64,
    /// The node's `audit` metrics just before it stopped.
    metrics: Value,
    /// Whether it stopped by itself within the grace period (drained, log closed).
    stopped_cleanly: bool,
    /// The first record found, to show what a record holds.
    sample: Option<Value>,
}

impl Records {
    fn counted(&self) -> u64 {
        self.in_store + self.in_spool
    }
}

struct Results {
    slots: Vec<Slot>,
    rounds: usize,
    /// The open loop's rate: half of logging off's first maximum.
    half_rate: f64,
    records: Vec<Records>,
    stalls: Option<[Value; 2]>,
    /// The kernel's DAMON monitors that were on, their CPU through the rounds (ms), and the
    /// rounds' length (s).
    damon: Option<(String, f64, f64)>,
    answer_bytes: usize,
    work_filesystem: String,
    /// `/proc/loadavg` before the rounds and after: other work on the machine.
    load_average: [String; 2],
}

impl Results {
    fn slots_of(&self, mode: Mode) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(move |s| s.mode == mode)
    }

    /// The mean of a figure over a mode's rounds.
    fn mean(&self, mode: Mode, figure: impl Fn(&Slot) -> f64) -> f64 {
        let values: Vec<f64> = self.slots_of(mode).map(figure).collect();
        values.iter().sum::<f64>() / values.len().max(1) as f64
    }

    fn max_rate(&self, mode: Mode) -> f64 {
        self.mean(mode, |s| s.max.rate())
    }

    /// Throughput over logging off's, per round.
    fn round_ratios(&self, mode: Mode) -> Vec<f64> {
        (0..self.rounds)
            .filter_map(|round| {
                let rate = |m: Mode| {
                    self.slots
                        .iter()
                        .find(|s| s.round == round && s.mode == m)
                        .map(|s| s.max.rate())
                };
                Some(rate(mode)? / rate(Mode::Off)?)
            })
            .collect()
    }

    fn check(&self, full: bool) {
        for slot in &self.slots {
            let name = format!("round {} {}", slot.round + 1, slot.mode.name());
            for (which, phase) in [("max", &slot.max), ("open loop", &slot.half)] {
                assert!(phase.requests > 0, "{name} {which}: no request answered");
                assert_eq!(phase.errors, 0, "{name} {which}: {} errors", phase.errors);
            }
        }
        for records in &self.records {
            let mode = records.mode.name();
            if records.mode == Mode::Off {
                assert_eq!(records.counted(), 0, "logging off left records");
                continue;
            }
            assert_eq!(
                records.counted(),
                records.answered,
                "{mode}: {} records in the store and spool for {} answered queries (metrics: {})",
                records.counted(),
                records.answered,
                records.metrics
            );
            let sample = records.sample.as_ref().expect("a record to look at");
            assert!(
                sample["outputs"].is_object() && sample["inputs"]["key"].is_string(),
                "{mode}: a record without the lookup's inputs and outputs: {sample}"
            );
        }
        if full {
            eprintln!("full run: figures above; goals are judged in docs/benchmarks.md");
        }
    }
}

fn run(settings: &Settings, pinning: &Pinning, rounds: usize) -> Results {
    let work = tempfile::tempdir().expect("a temp dir");
    let bundle = build_customers_bundle(&node_binary(), work.path(), settings.rows);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut nodes: Vec<Node> = Mode::ALL
        .iter()
        .map(|&mode| start_node(mode, pinning, &runtime, work.path(), &bundle.path))
        .collect();

    // Every node finds the first key (and logs it).
    let (requests, first_body) = lookup_requests(settings.rows);
    let mut answer_bytes = 0;
    for node in &mut nodes {
        let answer = runtime.block_on(call(
            node.server.addr,
            "POST",
            &lookup_path(),
            false,
            first_body.as_bytes(),
        ));
        node.answered += 1;
        answer_bytes = answer.len();
        let answer: Value = serde_json::from_slice(&answer).expect("a JSON answer");
        assert_eq!(
            answer["results"][0]["ignored"],
            json!(false),
            "the first lookup found its row ({}): {answer}",
            node.mode.name()
        );
    }

    let stalls = stall_probes(pinning, if settings.full { 5.0 } else { 0.5 });
    let load_before = load_average();
    let damon = Damon::read();
    let (damon_before, rounds_start) = (damon.cpu_ms(), Instant::now());

    let mut slots = Vec::new();
    let mut half_rate = None;
    for round in 0..rounds {
        for mode in Mode::order(round) {
            let node = nodes
                .iter_mut()
                .find(|n| n.mode == mode)
                .expect("a node per mode");
            let max = measure(settings, &runtime, node, &requests, None, Some(round));
            // The first slot is logging off's: its maximum sets the open loop's rate.
            let rate = *half_rate.get_or_insert(max.rate() / 2.0);
            let half = measure(settings, &runtime, node, &requests, Some(rate), None);
            eprintln!(
                "round {} {}: max {}; at {rate:.0} req/s: {}",
                round + 1,
                mode.name(),
                max.summary(),
                half.summary()
            );
            slots.push(Slot {
                round,
                mode,
                max,
                half,
            });
        }
    }

    let load_after = load_average();
    let damon_ms = damon.cpu_ms() - damon_before;
    let rounds_seconds = rounds_start.elapsed().as_secs_f64();
    let records = nodes
        .into_iter()
        .map(|node| stop_and_count(&runtime, node))
        .collect();
    let work_filesystem = Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE", "-T"])
        .arg(work.path())
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "?".to_owned(), |s| s.trim().to_owned());
    Results {
        slots,
        rounds,
        half_rate: half_rate.unwrap_or(0.0),
        records,
        stalls,
        damon: damon
            .description
            .map(|description| (description, damon_ms, rounds_seconds)),
        answer_bytes,
        work_filesystem,
        load_average: [load_before, load_after],
    }
}

/// The 1, 5 and 15-minute load averages.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A warm-up then a measured phase at `rate` (`None`: maximum load) on `node`, counting what
/// it answered; `perf record` of the measured phase at maximum load when asked.
fn measure(
    settings: &Settings,
    runtime: &tokio::runtime::Runtime,
    node: &mut Node,
    requests: &Arc<Vec<Bytes>>,
    rate: Option<f64>,
    // The phase's round, to name its profile (with `APINODE_BENCH_PERF`): the first round's
    // is `audit-<mode>_max`, a later round's `audit-<mode>_max-round<n>`; `None`: no profile.
    profile: Option<usize>,
) -> Phase {
    let warm_up = runtime.block_on(load(&node.server, requests, rate, settings.warm_up));
    node.answered += warm_up.requests;
    let profiler =
        settings
            .perf
            .filter(|_| rate.is_none())
            .zip(profile)
            .map(|(call_graph, round)| {
                let suffix = match round {
                    0 => String::new(),
                    later => format!("-round{}", later + 1),
                };
                Profiler::start(
                    &format!("audit-{}_max{suffix}", node.mode.name()),
                    &node.server,
                    call_graph,
                )
            });
    let phase = runtime.block_on(load(&node.server, requests, rate, settings.phase));
    drop(profiler);
    node.answered += phase.requests;
    phase
}

/// Stops `node` (a logging node seals and uploads its last segments) and counts the query
/// records it left in its store and spool.
fn stop_and_count(runtime: &tokio::runtime::Runtime, node: Node) -> Records {
    let metrics: Value = serde_json::from_slice(&runtime.block_on(call(
        node.server.addr,
        "GET",
        "/admin/api/metrics",
        true,
        b"",
    )))
    .expect("JSON metrics");
    let (spool, store) = (node.spool(), node.store());
    // The shutdown waits up to 10 s for the last uploads, after the HTTP drain.
    let stopped_cleanly = node.server.stop(Duration::from_secs(30));
    let mut sample = None;
    let mut in_store = 0;
    for file in files_under(&store.join(format!("service={SERVICE}"))) {
        in_store += count_lines(&file, &mut sample);
    }
    let mut in_spool = 0;
    for file in files_under(&spool) {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(&format!("queries~{SERVICE}~")) {
            in_spool += count_lines(&file, &mut sample);
        }
    }
    Records {
        mode: node.mode,
        answered: node.answered,
        in_store,
        in_spool,
        metrics: metrics["audit"].clone(),
        stopped_cleanly,
        sample,
    }
}

/// Every file under `dir`, recursively (none if it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The JSON lines of a segment; the first one seen is kept in `sample`.
fn count_lines(file: &Path, sample: &mut Option<Value>) -> u64 {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    if sample.is_none()
        && let Some(line) = bytes
            .split(|&b| b == b'\n')
            .next()
            .filter(|l| !l.is_empty())
    {
        *sample = Some(serde_json::from_slice(line).expect("a JSON record"));
    }
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

// ---------------------------------------------------------------------------------------
// The report

struct Report {
    markdown: String,
    json: Value,
}

/// Microseconds of server CPU per request.
fn cpu_per_request_us(phase: &Phase) -> f64 {
    phase.server_cpu * 1e6 / phase.rate().max(f64::EPSILON)
}

fn render(settings: &Settings, pinning: &Pinning, results: &Results) -> Report {
    let mode = settings.mode();
    let half_rate = results.half_rate;
    let off_rate = results.max_rate(Mode::Off);
    let off_half_p99 = results.mean(Mode::Off, |s| s.half.quantile_us(0.99) as f64);
    let order: Vec<&str> = (0..results.rounds.min(2))
        .flat_map(Mode::order)
        .map(Mode::name)
        .collect();

    let mut md = String::new();
    let mut line = |text: String| {
        md.push_str(&text);
        md.push('\n');
    };
    line(format!("\n## apinode audit log benchmark ({mode})\n"));
    line(format!("- machine: {}", machine()));
    line(format!(
        "- table: {} rows; the `lookup` answer {} bytes; {CONNECTIONS} keep-alive connections, one request in flight each; phases of {:.0} s, each after a {:.1} s warm-up at the same load",
        settings.rows,
        results.answer_bytes,
        settings.phase.as_secs_f64(),
        settings.warm_up.as_secs_f64()
    ));
    line(format!(
        "- {} rounds, in the order {}{}; the open loop at {half_rate:.0} req/s for every mode (half of logging off's first maximum)",
        results.rounds,
        order.join(", "),
        if results.rounds > 2 { ", ..." } else { "" }
    ));
    line(format!(
        "- each node's data directory, spool and store on local disk ({}); the log's defaults otherwise (every query, with payloads)",
        results.work_filesystem
    ));
    line(format!(
        "- pinning: {}; load average before the rounds {}, after {}",
        pinning.describe(),
        results.load_average[0],
        results.load_average[1]
    ));
    if let Some([core0, core1]) = &results.stalls {
        line(format!(
            "- the machine itself (a spinning loop, nodes idle): core {SERVER_CORE}: {}; core {CLIENT_CORE}: {}",
            describe_stalls(core0),
            describe_stalls(core1)
        ));
    }
    if let Some((damon, ms, seconds)) = &results.damon {
        line(format!(
            "- the kernel's DAMON monitor (kdamond, a core for milliseconds at a time, either core): {damon}; its CPU through the rounds: {ms:.0} ms in {seconds:.0} s"
        ));
    }

    line(
        "\n| round | audit log | max req/s | p50 | p99 | server CPU (system) | CPU per request | server core: other work, stolen | open loop p50 | p99 | p99.9 | errors |"
            .to_owned(),
    );
    line("|---|---|---|---|---|---|---|---|---|---|---|---|".to_owned());
    for slot in &results.slots {
        line(format!(
            "| {} | {} | {:.0} | {} µs | {} µs | {:.2} ({:.2}) | {:.1} µs | {:.3}, {:.3} | {} µs | {} µs | {} µs | {} |",
            slot.round + 1,
            slot.mode.name(),
            slot.max.rate(),
            slot.max.quantile_us(0.5),
            slot.max.quantile_us(0.99),
            slot.max.server_cpu,
            slot.max.server_system,
            cpu_per_request_us(&slot.max),
            slot.max.server_core_others,
            slot.max.server_core_stolen,
            slot.half.quantile_us(0.5),
            slot.half.quantile_us(0.99),
            slot.half.quantile_us(0.999),
            slot.max.errors + slot.half.errors,
        ));
    }

    line(
        "\n| audit log | max req/s (mean) | ratio to off | per round | goal | met? | max-load p99 | open-loop p99 | p99 / off's | records / answered |"
            .to_owned(),
    );
    line("|---|---|---|---|---|---|---|---|---|---|".to_owned());
    let mut modes_json = serde_json::Map::new();
    for mode in Mode::ALL {
        let rate = results.max_rate(mode);
        let ratio = rate / off_rate.max(f64::EPSILON);
        let per_round = results.round_ratios(mode);
        let max_p99 = results.mean(mode, |s| s.max.quantile_us(0.99) as f64);
        let half_p99 = results.mean(mode, |s| s.half.quantile_us(0.99) as f64);
        let records = results.records.iter().find(|r| r.mode == mode);
        let (goal, met) = match mode.goal() {
            Some(goal) => (
                format!("≥ {goal}×"),
                if ratio >= goal { "yes" } else { "**no**" },
            ),
            None => (String::new(), ""),
        };
        let records_cell = match records {
            Some(r) if mode != Mode::Off => format!("{} / {}", r.counted(), r.answered),
            _ => "none (off)".to_owned(),
        };
        line(format!(
            "| {} | {rate:.0} | **{ratio:.2}×** | {} | {goal} | {met} | {max_p99:.0} µs | {half_p99:.0} µs | {:.2}× | {records_cell} |",
            mode.name(),
            per_round
                .iter()
                .map(|r| format!("{r:.2}×"))
                .collect::<Vec<_>>()
                .join(", "),
            half_p99 / off_half_p99.max(f64::EPSILON),
        ));
        modes_json.insert(
            mode.name().to_owned(),
            json!({
                "max_requests_per_second_mean": rate,
                "ratio_to_off": ratio,
                "ratio_to_off_per_round": per_round,
                "goal": mode.goal(),
                "max_p99_us_mean": max_p99,
                "open_loop_p99_us_mean": half_p99,
                "open_loop_p99_over_off": half_p99 / off_half_p99.max(f64::EPSILON),
                "cpu_us_per_request_mean": results.mean(mode, |s| cpu_per_request_us(&s.max)),
                "records": records.map(|r| json!({
                    "answered": r.answered,
                    "in_store": r.in_store,
                    "in_spool": r.in_spool,
                    "metrics_before_stop": r.metrics,
                    "stopped_cleanly": r.stopped_cleanly,
                })),
            }),
        );
    }
    line(String::new());
    for records in results.records.iter().filter(|r| r.mode != Mode::Off) {
        line(format!(
            "- {}: {} records in the store and {} left in the spool for {} answered queries; metrics before the stop: {}{}",
            records.mode.name(),
            records.in_store,
            records.in_spool,
            records.answered,
            records.metrics,
            if records.stopped_cleanly {
                ""
            } else {
                "; the node did not stop within 30 s (killed)"
            }
        ));
    }

    let json = json!({
        "mode": mode,
        "machine": {"nproc": core_count(), "cpu": cpu_model()},
        "rows": settings.rows,
        "connections": CONNECTIONS,
        "phase_seconds": settings.phase.as_secs_f64(),
        "warm_up_seconds": settings.warm_up.as_secs_f64(),
        "rounds": results.rounds,
        "open_loop_rate": half_rate,
        "pinning": pinning.describe(),
        "work_filesystem": results.work_filesystem,
        "load_average_before_and_after": results.load_average,
        "damon": results.damon.as_ref().map(|(description, ms, seconds)| json!({
            "description": description,
            "rounds_cpu_ms": ms,
            "rounds_seconds": seconds,
        })),
        "stall_probe": results.stalls.as_ref().map(|[a, b]| json!({
            "server_core": a,
            "load_generator_core": b,
        })),
        "answer_body_bytes": results.answer_bytes,
        "slots": results.slots.iter().map(|s| json!({
            "round": s.round + 1,
            "audit": s.mode.name(),
            "max": s.max.json(),
            "open_loop": s.half.json(),
        })).collect::<Vec<_>>(),
        "modes": modes_json,
        "record_sample": results.records.iter().find_map(|r| r.sample.clone()),
    });
    Report { markdown: md, json }
}
