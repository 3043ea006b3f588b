//! Python and R endpoints over HTTP: apinode's `python-function` against FastAPI + uvicorn
//! serving the same function, and apinode's `r-function`, in one run (issue 5).
//!
//! - **Servers**, each with the same number of Python processes (1, then 2 in a full run;
//!   `APINODE_BENCH_WORKERS=1,2,4` to choose), all pinned to core 0 (`taskset -c 0`, which the
//!   workers inherit), the load generator on core 1:
//!   - the release `apinode serve` with a bundle of two endpoints, `add` (`python-function`,
//!     `benches/http/python/functions.py`: `return a + b`) and `r-add` (`r-function`,
//!     `functions.R`), each with a pool of exactly N workers;
//!   - FastAPI + uvicorn (`benches/http/python/fastapi_app.py`: the same function as an
//!     `async def` POST route on the same path, the same JSON body, answering
//!     `{"response": ...}`), `uvicorn --workers N --http httptools --loop uvloop --log-level
//!     warning --no-access-log`, from the virtualenv of `benches/http/python-requirements.txt`
//!     (`APINODE_BENCH_PYTHON` is its python; `cargo xtask bench python` creates it);
//!   - at low load only, the bare hyper ceiling answering with the bytes of apinode's answer:
//!     what HTTP and the load generator alone cost on this box.
//! - **Load**: the same load generator as the HTTP bench (32 keep-alive connections, one
//!   request in flight each, the same bodies `{"a": INT, "b": INT}` for every server): a closed
//!   loop at maximum load for each server, then an open loop at a low rate (1,000 req/s, or a
//!   quarter of the slowest server's maximum if that is lower) for the latency figures.
//! - **In-process reference**: `benches/http/python/in_process.py` times `add(1, 2)` in the
//!   same CPython (`timeit`), and the JSON round trip a server cannot avoid
//!   (`json.dumps({"response": add(**json.loads(body))})`); `in_process.R` does the same in R
//!   with jsonlite. The **added latency** is a server's p50 at low load minus the call alone.
//!
//! Goals (docs/benchmarks.md): apinode ≥ 2× FastAPI's requests/s; ≤ 0.3 ms added p50.
//!
//! `cargo xtask bench python`; the report goes to stdout and to
//! `target/bench-results/python.json`. Without `--bench` (under `cargo test --benches`) it
//! runs every phase briefly with one worker against the debug binary, writes
//! `python-smoke.json` and checks only that it works: non-zero throughput, no errors, right
//! answers. Knobs: `APINODE_BENCH_SECONDS` (each measured phase: 10 s, 1 s in smoke mode),
//! `APINODE_BENCH_WORKERS`, `APINODE_BENCH_PERF=1` or `dwarf` (`perf record` each server and
//! its workers during its max-load phase, into `target/bench-results/python-<phase>.perf.data`).

use apinode_bench_http::{
    ADMIN_KEY, CEILING_ENV, CLIENT_CORE, CONNECTIONS, Phase, Pinning, Profiler, SERVER_CORE,
    STALL_THRESHOLD, Server, call, cpu_model, http_request, load, node_binary, percent_encode,
    pin_self, reexecuted_role, stall_probes, write_report,
};
use bytes::Bytes;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The bench virtualenv's python (FastAPI, uvicorn, httptools, uvloop).
const BENCH_PYTHON_ENV: &str = "APINODE_BENCH_PYTHON";
const SERVICE: &str = "bench";
const PYTHON_ENDPOINT: &str = "add";
const R_ENDPOINT: &str = "r-add";
/// Distinct request bodies, drawn once with a fixed seed; every server gets the same sequence.
const BODIES: usize = 10_000;
/// The low-load phase's rate, unless a quarter of the slowest server's maximum is lower.
const LOW_RATE: f64 = 1_000.0;

fn main() {
    if reexecuted_role() {
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    // Before any thread exists, so every thread of this process inherits the mask.
    let pinning = pin_self();
    let settings = Settings::new(full);
    eprintln!(
        "python bench ({}): workers {:?}, {CONNECTIONS} connections, {:?} phases; {}",
        if full { "full" } else { "smoke" },
        settings.workers,
        settings.phase,
        pinning.describe()
    );
    let report = run(&settings, &pinning);
    print!("{}", report.markdown);
    write_report("python", full, settings.perf.is_some(), &report.json);
    for (name, phase) in &report.phases {
        assert!(phase.requests > 0, "{name}: no request answered");
        assert_eq!(phase.errors, 0, "{name}: {} errors", phase.errors);
    }
    if full {
        eprintln!("full run: figures above; goals are judged in docs/benchmarks.md");
    }
}

struct Settings {
    full: bool,
    /// Python (and R) processes per server, one round of phases each.
    workers: Vec<usize>,
    warm_up: Duration,
    phase: Duration,
    /// The in-process timings' budget, per language.
    in_process_seconds: f64,
    perf: Option<&'static [&'static str]>,
    python: PathBuf,
}

impl Settings {
    fn new(full: bool) -> Settings {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let seconds = env("APINODE_BENCH_SECONDS").and_then(|v| v.parse::<f64>().ok());
        let workers = match env("APINODE_BENCH_WORKERS") {
            Some(list) => list
                .split(',')
                .map(|n| {
                    n.trim().parse().ok().filter(|n| *n > 0).unwrap_or_else(|| {
                        panic!("APINODE_BENCH_WORKERS={list}: expected worker counts like 1,2")
                    })
                })
                .collect(),
            None if full => vec![1, 2],
            None => vec![1],
        };
        let perf =
            env("APINODE_BENCH_PERF")
                .filter(|v| v != "0")
                .map(|v| -> &'static [&'static str] {
                    if v == "dwarf" {
                        &["--call-graph", "dwarf,16384"]
                    } else {
                        &["-g"]
                    }
                });
        let python = PathBuf::from(env(BENCH_PYTHON_ENV).unwrap_or_else(|| {
            panic!(
                "{BENCH_PYTHON_ENV} is not set: it must name the python of a virtualenv with \
                 benches/http/python-requirements.txt installed (FastAPI, uvicorn). \
                 `cargo xtask bench python` and `cargo xtask ci` create it and set the variable"
            )
        }));
        Settings {
            full,
            workers,
            warm_up: Duration::from_millis(if full { 2000 } else { 200 }),
            phase: Duration::from_secs_f64(seconds.unwrap_or(if full { 10.0 } else { 1.0 })),
            in_process_seconds: if full { 4.0 } else { 0.4 },
            perf,
            python,
        }
    }
}

/// `benches/http/python`: the function, the FastAPI app, the in-process timers.
fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

fn run_path(endpoint: &str) -> String {
    format!("/public/api/v1/{SERVICE}/{endpoint}/run")
}

/// `BODIES` bodies `{"a": INT, "b": INT}` (xorshift, fixed seed).
fn bodies() -> Vec<String> {
    let mut state = 0x6a09_e667_f3bc_c908u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % 1000
    };
    (0..BODIES)
        .map(|_| format!(r#"{{"a": {}, "b": {}}}"#, next(), next()))
        .collect()
}

fn requests(path: &str, bodies: &[String]) -> Arc<Vec<Bytes>> {
    Arc::new(
        bodies
            .iter()
            .map(|body| Bytes::from(http_request("POST", path, false, body.as_bytes())))
            .collect(),
    )
}

/// Fails the bench, saying how to fix it, when the virtualenv lacks the FastAPI side.
fn check_bench_python(python: &Path) {
    let out = Command::new(python)
        .args([
            "-c",
            "import fastapi, uvicorn, httptools, uvloop; print(fastapi.__version__, uvicorn.__version__)",
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{BENCH_PYTHON_ENV}={}: cannot run it ({e}); `cargo xtask bench python` creates the virtualenv",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "{BENCH_PYTHON_ENV}={}: FastAPI, uvicorn, httptools or uvloop is missing ({}); install \
         benches/http/python-requirements.txt into that virtualenv (`cargo xtask bench python` does)",
        python.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Runs an in-process timer pinned to the servers' core; its one line of JSON.
fn in_process(pinning: &Pinning, program: &Path, args: &[&str], what: &str) -> Value {
    let out = pinning
        .server_command(program)
        .args(args)
        .current_dir(python_dir())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the {what} in-process timer: {e}"));
    assert!(
        out.status.success(),
        "the {what} in-process timer failed ({}): its stderr is above",
        out.status
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the {what} in-process timer printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A free port on the loopback for a server that cannot report the one it bound.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
}

/// Builds the bundle with pools of exactly `workers` processes, starts a node on it.
fn start_node(
    pinning: &Pinning,
    runtime: &tokio::runtime::Runtime,
    work: &Path,
    workers: usize,
) -> Server {
    let node_bin = node_binary();
    let folder = work.join(format!("service-{workers}"));
    std::fs::create_dir_all(&folder).expect("create the service folder");
    for file in ["functions.py", "functions.R"] {
        std::fs::copy(python_dir().join(file), folder.join(file))
            .unwrap_or_else(|e| panic!("copy {file}: {e}"));
    }
    let pool = format!(
        "pool = {{ min_workers = {workers}, max_workers = {workers}, queue = 256, timeout_ms = 10000 }}"
    );
    std::fs::write(
        folder.join("service.toml"),
        format!(
            r#"[service]
id = "{SERVICE}"

[auth]
mode = "public"

[[endpoints]]
id = "{PYTHON_ENDPOINT}"
kind = "python-function"
python = {{ code = "functions.py", function = "add" }}
{pool}

[[endpoints]]
id = "{R_ENDPOINT}"
kind = "r-function"
r = {{ code = "functions.R", function = "add" }}
{pool}
"#
        ),
    )
    .expect("write service.toml");
    let bundle = work.join(format!("bench-{workers}.zip"));
    let status = Command::new(&node_bin)
        .args(["bundle", "build"])
        .arg(&folder)
        .arg("-o")
        .arg(&bundle)
        .args(["--version", "v1"])
        .stdout(Stdio::null())
        .status()
        .expect("run apinode bundle build");
    assert!(status.success(), "apinode bundle build failed");

    let mut command = pinning.server_command(&node_bin);
    command
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(work.join(format!("data-{workers}")))
        .env("APINODE_ADMIN_KEY", ADMIN_KEY)
        .env("APINODE_LOG", "warn");
    let node = Server::start(command, "apinode node");
    let addr = node.addr;
    let file_path = bundle.canonicalize().expect("an absolute bundle path");
    runtime.block_on(async {
        call(
            addr,
            "POST",
            "/admin/api/services",
            true,
            format!(r#"{{"serviceId": "{SERVICE}"}}"#).as_bytes(),
        )
        .await;
        // Returns once the generation is loaded: its pools started and warm.
        call(
            addr,
            "POST",
            &format!(
                "/admin/api/services/{SERVICE}/generations/actions/importFromArchive?filePath={}",
                percent_encode(&file_path.to_string_lossy())
            ),
            true,
            b"",
        )
        .await;
        call(
            addr,
            "POST",
            &format!("/admin/api/services/{SERVICE}/actions/switchToNewest"),
            true,
            b"",
        )
        .await;
    });
    node
}

fn start_fastapi(pinning: &Pinning, python: &Path, workers: usize) -> Server {
    let addr = free_addr();
    let mut command = pinning.server_command(python);
    command
        .args(["-m", "uvicorn", "fastapi_app:app", "--app-dir"])
        .arg(python_dir())
        .args(["--host", "127.0.0.1", "--port"])
        .arg(addr.port().to_string())
        .args(["--workers", &workers.to_string()])
        .args(["--http", "httptools", "--loop", "uvloop"])
        .args(["--log-level", "warning", "--no-access-log"]);
    Server::start_on(command, "FastAPI + uvicorn", addr)
}

/// One POST of `body`; panics unless the answer is 200 with `{"response": expected, ...}`.
/// Returns the answer's bytes.
fn check_answer(
    runtime: &tokio::runtime::Runtime,
    server: &Server,
    path: &str,
    body: &str,
    expected: &Value,
    what: &str,
) -> Vec<u8> {
    // uvicorn's workers may still be importing FastAPI when the socket already accepts.
    let answer = runtime.block_on(call(server.addr, "POST", path, false, body.as_bytes()));
    let value: Value = serde_json::from_slice(&answer).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}): {}",
            String::from_utf8_lossy(&answer)
        )
    });
    assert_eq!(&value["response"], expected, "{what} answered {value}");
    answer
}

struct Report {
    markdown: String,
    json: Value,
    phases: Vec<(String, Phase)>,
}

fn run(settings: &Settings, pinning: &Pinning) -> Report {
    check_bench_python(&settings.python);
    let work = tempfile::tempdir().expect("a temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let bodies = bodies();
    let python_requests = requests(&run_path(PYTHON_ENDPOINT), &bodies);
    let r_requests = requests(&run_path(R_ENDPOINT), &bodies);
    let first: Value = serde_json::from_str(&bodies[0]).expect("a JSON body");
    let expected = json!(first["a"].as_u64().expect("a") + first["b"].as_u64().expect("b"));

    // The in-process references, on the servers' core with nothing else running.
    let seconds = settings.in_process_seconds.to_string();
    let python_in = in_process(
        pinning,
        &settings.python,
        &["in_process.py", &seconds, &bodies[0]],
        "Python",
    );
    let r_in = in_process(
        pinning,
        Path::new("Rscript"),
        &["in_process.R", &seconds, &bodies[0], "functions.R"],
        "R",
    );
    eprintln!("in process: Python {python_in}; R {r_in}");
    let stalls = settings.full.then(|| stall_probes(pinning, 5.0)).flatten();

    let mut phases: Vec<(String, Phase)> = Vec::new();
    let mut phase = |name: String,
                     server: &Server,
                     requests: &Arc<Vec<Bytes>>,
                     rate: Option<f64>| {
        let _ = runtime.block_on(load(server, requests, rate, settings.warm_up));
        let profile = settings
            .perf
            .filter(|_| rate.is_none())
            .map(|graph| Profiler::start(&format!("python-{name}"), server, graph));
        let result = runtime.block_on(load(server, requests, rate, settings.phase));
        drop(profile);
        eprintln!(
            "{name}: {:.0} req/s, p50 {} µs, p99 {} µs, {} errors, server {:.2} cores, load generator {:.2} cores",
            result.rate(),
            result.quantile_us(0.5),
            result.quantile_us(0.99),
            result.errors,
            result.server_cpu,
            result.client_cpu,
        );
        let measured = (result.rate(), result.server_cpu);
        phases.push((name, result));
        measured
    };

    let mut rounds = Vec::new();
    let mut low_rate = None;
    for (round, &workers) in settings.workers.iter().enumerate() {
        let node = start_node(pinning, &runtime, work.path(), workers);
        let fastapi = start_fastapi(pinning, &settings.python, workers);
        let py_path = run_path(PYTHON_ENDPOINT);
        let node_answer = check_answer(
            &runtime,
            &node,
            &py_path,
            &bodies[0],
            &expected,
            "apinode python-function",
        );
        check_answer(
            &runtime, &fastapi, &py_path, &bodies[0], &expected, "FastAPI",
        );
        let r_path = run_path(R_ENDPOINT);
        check_answer(
            &runtime,
            &node,
            &r_path,
            &bodies[0],
            &expected,
            "apinode r-function",
        );

        let node_max = phase(
            format!("node_python_w{workers}_max"),
            &node,
            &python_requests,
            None,
        );
        let fastapi_max = phase(
            format!("fastapi_w{workers}_max"),
            &fastapi,
            &python_requests,
            None,
        );
        let r_max = phase(format!("node_r_w{workers}_max"), &node, &r_requests, None);
        // Requests per second of server CPU: the ratio had both servers had all of core 0
        // (another process on this shared machine may take some of it from one of them).
        let per_cpu = |(rate, cpu): (f64, f64)| rate / cpu.max(f64::EPSILON);
        let cpu_ratio = per_cpu(node_max) / per_cpu(fastapi_max);
        let (node_max, fastapi_max, r_max) = (node_max.0, fastapi_max.0, r_max.0);
        rounds.push(json!({
            "workers": workers,
            "node_python_rps": node_max,
            "fastapi_rps": fastapi_max,
            "node_r_rps": r_max,
            "ratio_node_over_fastapi": node_max / fastapi_max,
            "ratio_per_server_cpu": cpu_ratio,
        }));

        // Latency at low load: the first round only (one worker is busy at a time there).
        if round == 0 {
            let rate = LOW_RATE.min(node_max.min(fastapi_max).min(r_max) / 4.0);
            low_rate = Some(rate);
            phase(
                format!("node_python_w{workers}_low"),
                &node,
                &python_requests,
                Some(rate),
            );
            phase(
                format!("fastapi_w{workers}_low"),
                &fastapi,
                &python_requests,
                Some(rate),
            );
            phase(
                format!("node_r_w{workers}_low"),
                &node,
                &r_requests,
                Some(rate),
            );
            drop(fastapi);
            drop(node);
            let body_file = work.path().join("ceiling-body.json");
            std::fs::write(&body_file, &node_answer).expect("write the ceiling's body");
            let mut command =
                pinning.server_command(&std::env::current_exe().expect("the bench knows its path"));
            command.env(CEILING_ENV, &body_file);
            let ceiling = Server::start(command, "hyper ceiling");
            phase("ceiling_low".into(), &ceiling, &python_requests, Some(rate));
        }
    }
    let results = Results {
        phases,
        rounds,
        low_rate: low_rate.expect("at least one worker count"),
        python_in,
        r_in,
        stalls,
    };
    render(settings, pinning, results)
}

struct Results {
    phases: Vec<(String, Phase)>,
    rounds: Vec<Value>,
    low_rate: f64,
    python_in: Value,
    r_in: Value,
    stalls: Option<[Value; 2]>,
}

fn render(settings: &Settings, pinning: &Pinning, results: Results) -> Report {
    let phase = |name: &str| -> &Phase {
        &results
            .phases
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no phase {name}"))
            .1
    };
    let first = settings.workers[0];
    let ns = |v: &Value, key: &str| v[key].as_f64().unwrap_or(f64::NAN);
    let (py_call_us, py_json_us) = (
        ns(&results.python_in, "call_ns") / 1000.0,
        ns(&results.python_in, "json_round_trip_ns") / 1000.0,
    );
    let (r_call_us, r_json_us) = (
        ns(&results.r_in, "call_ns") / 1000.0,
        ns(&results.r_in, "json_round_trip_ns") / 1000.0,
    );
    let p50 = |name: &str| phase(name).quantile_us(0.5) as f64;
    let node_low = p50(&format!("node_python_w{first}_low"));
    let fastapi_low = p50(&format!("fastapi_w{first}_low"));
    let r_low = p50(&format!("node_r_w{first}_low"));
    let ceiling_low = p50("ceiling_low");
    let nproc = Command::new("nproc")
        .arg("--all")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "?".to_owned(), |s| s.trim().to_owned());
    let machine = format!("{nproc} × {}", cpu_model());
    let mode = if settings.full { "full" } else { "smoke" };

    let mut md = String::new();
    let mut line = |text: String| {
        md.push_str(&text);
        md.push('\n');
    };
    line(format!(
        "\n## Python and R endpoints vs FastAPI + uvicorn ({mode})\n"
    ));
    line(format!("- machine: {machine}"));
    line(format!("- pinning: {}", pinning.describe()));
    line(format!(
        "- {CONNECTIONS} keep-alive connections, one request in flight each; {BODIES} bodies `{{\"a\": INT, \"b\": INT}}`; phases of {:.0} s, each after a {:.1} s warm-up at the same load",
        settings.phase.as_secs_f64(),
        settings.warm_up.as_secs_f64()
    ));
    if let Some([core0, core1]) = &results.stalls {
        let describe = |v: &Value| {
            format!(
                "{:.1} ms/s lost in pauses > {} µs, longest {} µs",
                v["lost_ms_per_second"].as_f64().unwrap_or(0.0),
                STALL_THRESHOLD.as_micros(),
                v["longest_us"]
            )
        };
        line(format!(
            "- the machine itself (a spinning loop, servers idle): core {SERVER_CORE}: {}; core {CLIENT_CORE}: {}",
            describe(core0),
            describe(core1)
        ));
    }
    line(format!(
        "- in process ({} {}): `add(1, 2)` {:.3} µs; with the JSON round trip {:.2} µs. R {}: {:.3} µs; with jsonlite {:.1} µs",
        "CPython",
        results.python_in["python"].as_str().unwrap_or("?"),
        py_call_us,
        py_json_us,
        results.r_in["r"].as_str().unwrap_or("?"),
        r_call_us,
        r_json_us,
    ));
    line("\n| workers | server | load | req/s | p50 | p99 | p99.9 | errors | server CPU | load-gen CPU |".to_owned());
    line("|---|---|---|---|---|---|---|---|---|---|".to_owned());
    for (name, p) in &results.phases {
        let server = if name.starts_with("node_python") {
            "apinode python-function"
        } else if name.starts_with("node_r") {
            "apinode r-function"
        } else if name.starts_with("fastapi") {
            "FastAPI + uvicorn"
        } else {
            "hyper ceiling (apinode's answer bytes)"
        };
        let workers = name
            .split('_')
            .find_map(|part| part.strip_prefix('w'))
            .unwrap_or("-");
        let load = if name.ends_with("_max") {
            "max (closed loop)".to_owned()
        } else {
            format!("{:.0} req/s (open loop)", results.low_rate)
        };
        line(format!(
            "| {workers} | {server} | {load} | {:.0} | {} µs | {} µs | {} µs | {} | {:.2} | {:.2} |",
            p.rate(),
            p.quantile_us(0.5),
            p.quantile_us(0.99),
            p.quantile_us(0.999),
            p.errors,
            p.server_cpu,
            p.client_cpu
        ));
    }
    line(String::new());
    for round in &results.rounds {
        line(format!(
            "- {} worker(s): apinode / FastAPI requests/s = **{:.2}×** (goal ≥ 2×); per second of server CPU {:.2}×; R: {:.0} req/s ({:.2}× FastAPI's Python)",
            round["workers"],
            round["ratio_node_over_fastapi"].as_f64().unwrap_or(0.0),
            round["ratio_per_server_cpu"].as_f64().unwrap_or(0.0),
            round["node_r_rps"].as_f64().unwrap_or(0.0),
            round["node_r_rps"].as_f64().unwrap_or(0.0)
                / round["fastapi_rps"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    line(format!(
        "- added p50 at {:.0} req/s ({first} worker(s)), the server's p50 minus the call in process: apinode **{:.0} µs** (goal ≤ 300 µs; {:.0} µs over the JSON round trip); FastAPI {:.0} µs; the hyper ceiling (HTTP and the load generator alone) p50 {:.0} µs, so apinode adds {:.0} µs over bare HTTP and FastAPI {:.0} µs",
        results.low_rate,
        node_low - py_call_us,
        node_low - py_json_us,
        fastapi_low - py_call_us,
        ceiling_low,
        node_low - ceiling_low,
        fastapi_low - ceiling_low,
    ));
    line(format!(
        "- R: added p50 {:.0} µs over the call in process ({:.0} µs over jsonlite's round trip); {:.0} µs over bare HTTP",
        r_low - r_call_us,
        r_low - r_json_us,
        r_low - ceiling_low,
    ));

    let json = json!({
        "mode": mode,
        "machine": {"nproc": nproc, "cpu": cpu_model()},
        "connections": CONNECTIONS,
        "bodies": BODIES,
        "phase_seconds": settings.phase.as_secs_f64(),
        "warm_up_seconds": settings.warm_up.as_secs_f64(),
        "pinning": pinning.describe(),
        "stall_probe": results.stalls.as_ref().map(|[a, b]| json!({
            "server_core": a,
            "load_generator_core": b,
            "threshold_us": STALL_THRESHOLD.as_micros() as u64,
        })),
        "in_process": {"python": results.python_in, "r": results.r_in},
        "rounds": results.rounds,
        "low_load": {
            "rate": results.low_rate,
            "workers": first,
            "node_python_p50_us": node_low,
            "fastapi_p50_us": fastapi_low,
            "node_r_p50_us": r_low,
            "ceiling_p50_us": ceiling_low,
            "node_python_added_p50_us": node_low - py_call_us,
            "node_python_added_p50_over_json_us": node_low - py_json_us,
            "fastapi_added_p50_us": fastapi_low - py_call_us,
            "node_r_added_p50_us": r_low - r_call_us,
            "node_python_over_ceiling_p50_us": node_low - ceiling_low,
            "fastapi_over_ceiling_p50_us": fastapi_low - ceiling_low,
        },
        "phases": results.phases.iter().map(|(n, p)| (n.clone(), p.json())).collect::<serde_json::Map<_, _>>(),
    });
    Report {
        markdown: md,
        json,
        phases: results.phases,
    }
}
