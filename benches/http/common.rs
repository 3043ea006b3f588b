//! What the HTTP benchmarks share (`http.rs`: lookup and predict against a bare hyper server;
//! `python.rs`: Python and R endpoints against FastAPI + uvicorn; `audit.rs`: the lookup
//! endpoint with the query audit log off and in each durability mode): pinning the servers and
//! the load generator to their cores, starting and stopping server processes, `perf`
//! recording, the bare hyper ceiling and the stall probe (both run by re-executing the bench
//! binary), the load generator itself (a minimal HTTP/1.1 client, closed or open loop,
//! hdrhistogram), and the generated customers service (its bundle, its deployment on a node,
//! its lookup requests).
//!
//! A library target of the `apinode-bench-http` package rather than a module each bench
//! includes, so an item only one bench uses is not dead code in the other.

use apinode_benches::{bench_rows, customer_key, customers_table, write_churn_model};
use base64::Engine;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Set on the re-executed bench process that serves as the hyper ceiling: the file holding
/// the body it answers with.
pub const CEILING_ENV: &str = "APINODE_BENCH_CEILING_BODY";
/// Set on a re-executed bench process that measures how often its core is taken away from
/// it (a spinning loop timing its own gaps): the seconds to run.
pub const STALL_PROBE_ENV: &str = "APINODE_BENCH_STALL_PROBE";
/// A gap in the spinning loop longer than this is a stall.
pub const STALL_THRESHOLD: Duration = Duration::from_micros(200);
pub const ADMIN_KEY: &str = "bench-admin-key";
pub const CONNECTIONS: usize = 32;
pub const SERVER_CORE: &str = "0";
pub const CLIENT_CORE: &str = "1";

/// Serves as the ceiling or runs the stall probe when this process is a re-executed bench
/// binary (see [`CEILING_ENV`], [`STALL_PROBE_ENV`]); returns `true` if it did, and the
/// bench's `main` must then return.
pub fn reexecuted_role() -> bool {
    if let Ok(body) = std::env::var(CEILING_ENV) {
        ceiling_server(Path::new(&body));
        return true;
    }
    if let Ok(seconds) = std::env::var(STALL_PROBE_ENV) {
        stall_probe(seconds.parse().expect("seconds"));
        return true;
    }
    false
}

/// How long a bench runs and on how much data: a full run (`--bench`, that is `cargo bench`)
/// or a smoke run (`cargo test --benches`), and the environment's knobs.
#[derive(Debug)]
pub struct Settings {
    pub full: bool,
    /// `APINODE_BENCH_ROWS`: the customers table's rows (1M in a full run, 10,000 in smoke).
    pub rows: usize,
    pub warm_up: Duration,
    /// `APINODE_BENCH_SECONDS`: each measured phase (10 s in a full run, 1 s in smoke).
    pub phase: Duration,
    /// `APINODE_BENCH_PERF`: `perf record` each server during its max-load phase, with
    /// these call-graph arguments (`=dwarf` for code built without frame pointers).
    pub perf: Option<&'static [&'static str]>,
    /// `APINODE_BENCH_ROUNDS`: rounds of the benches that alternate their order (2).
    pub rounds: usize,
}

impl Settings {
    pub fn new(full: bool) -> Settings {
        let seconds = env_var("APINODE_BENCH_SECONDS").and_then(|v| v.parse::<f64>().ok());
        let perf = env_var("APINODE_BENCH_PERF").filter(|v| v != "0").map(
            |v| -> &'static [&'static str] {
                if v == "dwarf" {
                    &["--call-graph", "dwarf,16384"]
                } else {
                    &["-g"]
                }
            },
        );
        let rounds = env_var("APINODE_BENCH_ROUNDS")
            .map(|v| {
                v.parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| panic!("APINODE_BENCH_ROUNDS={v}: expected a count"))
            })
            .unwrap_or(2);
        if full {
            Settings {
                full,
                rows: bench_rows(),
                warm_up: Duration::from_secs(2),
                phase: Duration::from_secs_f64(seconds.unwrap_or(10.0)),
                perf,
                rounds,
            }
        } else {
            Settings {
                full,
                rows: env_var("APINODE_BENCH_ROWS")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(10_000),
                warm_up: Duration::from_millis(200),
                phase: Duration::from_secs_f64(seconds.unwrap_or(1.0)),
                perf,
                rounds,
            }
        }
    }

    pub fn mode(&self) -> &'static str {
        if self.full { "full" } else { "smoke" }
    }
}

/// An environment variable, unless unset or empty.
pub fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

// ---------------------------------------------------------------------------------------
// Pinning and child processes

/// How the processes are pinned: `taskset` when there are two cores or more.
#[derive(Debug)]
pub struct Pinning {
    /// `None`: pinned as documented; `Some(reason)`: not pinned.
    pub skipped: Option<String>,
}

impl Pinning {
    pub fn describe(&self) -> String {
        let pinned = match &self.skipped {
            None => format!(
                "servers on core {SERVER_CORE}, load generator on core {CLIENT_CORE}, via taskset"
            ),
            Some(reason) => format!("not pinned: {reason}"),
        };
        // Run under `nice -n N`, the servers inherit it: say so, since it decides who waits
        // when a kernel thread (such as `kdamond`) wants the servers' core.
        match own_nice() {
            Some(nice) if nice != 0 => {
                format!("{pinned}; load generator and servers at nice {nice}")
            }
            _ => pinned,
        }
    }

    /// A command for a server: under `taskset -c 0` when pinning.
    pub fn server_command(&self, program: &Path) -> Command {
        if self.skipped.is_none() {
            let mut command = Command::new("taskset");
            command.args(["-c", SERVER_CORE]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }
}

/// This process's nice value (`/proc/self/stat`'s 19th field), which its children inherit.
fn own_nice() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command's closing parenthesis start at the 3rd.
    let after_command = &stat[stat.rfind(')')? + 1..];
    after_command.split_whitespace().nth(16)?.parse().ok()
}

pub fn pin_self() -> Pinning {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        return Pinning {
            skipped: Some(format!("{cores} core available")),
        };
    }
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", CLIENT_CORE])
        .arg(std::process::id().to_string())
        .stdout(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Pinning { skipped: None },
        Ok(s) => Pinning {
            skipped: Some(format!("taskset failed ({s})")),
        },
        Err(e) => Pinning {
            skipped: Some(format!("taskset cannot run ({e}); install util-linux")),
        },
    }
}

/// A server process: stopped with SIGTERM (then SIGKILL) when dropped, even on panic.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Spawns `command` and waits (up to 120 s) for its `... listening on http://ADDR` line.
    pub fn start(mut command: Command, what: &str) -> Server {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {what}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some((_, addr)) = line.split_once("listening on http://") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let addr = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|e| match e {
                RecvTimeoutError::Timeout => {
                    panic!("the {what} did not announce its address within 120 s")
                }
                RecvTimeoutError::Disconnected => {
                    panic!("the {what} exited before announcing its address (its stderr is above)")
                }
            });
        server.addr = addr.parse().expect("a socket address");
        server
    }

    /// Spawns `command`, a server told to listen on `addr` that announces nothing on stdout
    /// (uvicorn at `--log-level warning`), and waits (up to 120 s) until `addr` accepts a
    /// connection. Its stdout and stderr go to this process's stderr.
    pub fn start_on(mut command: Command, what: &str, addr: SocketAddr) -> Server {
        let child = command
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {what}: {e}"));
        let mut server = Server { child, addr };
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "the {what} exited ({status}) before listening on {addr} (its stderr is above)"
                );
            }
            assert!(
                Instant::now() < deadline,
                "the {what} did not listen on {addr} within 120 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's process and its descendants (an apinode node's Python and R workers,
    /// uvicorn's worker processes), from the parent links in `/proc`.
    pub fn pids(&self) -> Vec<u32> {
        let mut parents = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // stat(5): `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
        let mut tree = vec![self.pid()];
        let mut i = 0;
        while i < tree.len() {
            let parent = tree[i];
            tree.extend(
                parents
                    .iter()
                    .filter(|(_, p)| *p == parent)
                    .map(|(c, _)| *c),
            );
            i += 1;
        }
        tree
    }
}

impl Server {
    /// Stops the server with SIGTERM, waiting up to `grace` for it to exit before SIGKILL
    /// (a node drains its connections and closes its audit log first); returns whether it
    /// exited by itself.
    pub fn stop(mut self, grace: Duration) -> bool {
        self.terminate(grace)
    }

    fn terminate(&mut self, grace: Duration) -> bool {
        // Already reaped (by `stop`): the child's pid may belong to another process now.
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        // SIGTERM through the `kill` command: the workspace forbids unsafe code.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(10));
    }
}

/// `perf record` of a server (with its worker processes) for as long as it lives, into
/// `target/bench-results/<name>.perf.data` (read it with
/// `perf report --stdio --no-children -i FILE`).
#[derive(Debug)]
pub struct Profiler {
    child: Child,
}

impl Profiler {
    pub fn start(name: &str, server: &Server, call_graph: &[&str]) -> Profiler {
        let dir = results_dir();
        std::fs::create_dir_all(&dir).expect("create bench-results");
        let output = dir.join(format!("{name}.perf.data"));
        let pids: Vec<String> = server.pids().iter().map(u32::to_string).collect();
        let child = Command::new("perf")
            .args(["record", "-F", "999"])
            .args(call_graph)
            .arg("-p")
            .arg(pids.join(","))
            .arg("-o")
            .arg(&output)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("APINODE_BENCH_PERF needs `perf` (Debian: linux-perf)");
        eprintln!("recording {}", output.display());
        Profiler { child }
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        // perf writes its file on SIGINT.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// `target/<profile>/apinode`, beside this bench's `deps/` folder.
pub fn node_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench knows its path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the bench runs from target/<profile>/deps");
    let binary = profile_dir.join("apinode");
    if !binary.exists() {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        panic!(
            "{} is missing: run `cargo build{} -p apinode-server` first (`cargo xtask bench` does)",
            binary.display(),
            if release { " --release" } else { "" }
        );
    }
    binary
}

/// `target/bench-results`.
pub fn results_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench knows its path");
    exe.ancestors()
        .nth(3)
        .expect("the bench runs from target/<profile>/deps")
        .join("bench-results")
}

/// The knobs whose full runs are not the documented run (`APINODE_BENCH_PERF` has its own
/// report).
const CHANGING_KNOBS: [&str; 5] = [
    "APINODE_BENCH_SECONDS",
    "APINODE_BENCH_ROUNDS",
    "APINODE_BENCH_ROWS",
    "APINODE_BENCH_AUDIT_CONFIG",
    "APINODE_BENCH_WORKERS",
];

/// Writes a run's JSON report to `target/bench-results/<bench>.json`, or `<bench>-smoke.json`,
/// `<bench>-perf.json` and `<bench>-custom.json` for smoke runs, profiled runs and full runs
/// that a knob changed ([`CHANGING_KNOBS`]), so that none overwrites a documented run's
/// figures.
pub fn write_report(bench: &str, full: bool, profiled: bool, report: &Value) {
    let changed = CHANGING_KNOBS.iter().any(|knob| env_var(knob).is_some());
    let name = match (full, profiled, changed) {
        (false, _, _) => format!("{bench}-smoke.json"),
        (true, true, _) => format!("{bench}-perf.json"),
        (true, false, true) => format!("{bench}-custom.json"),
        (true, false, false) => format!("{bench}.json"),
    };
    let path = results_dir().join(name);
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("create bench-results");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(report).expect("serializes"),
    )
    .expect("write the JSON report");
    eprintln!("wrote {}", path.display());
}

/// A `/proc/<pid>/status` field in bytes (`VmRSS`, `VmHWM`).
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The kernel's DAMON monitors that are on (`kdamond` threads: a VM platform may run one for
/// proactive reclaim): what each watches and how often, and their threads' CPU time. Their
/// passes take a core for milliseconds at a time, which the half-load tail feels
/// (docs/benchmarks.md, "DAMON").
#[derive(Debug, Default)]
pub struct Damon {
    /// `None` when no monitor is on (or the kernel has no DAMON).
    pub description: Option<String>,
    pids: Vec<String>,
}

impl Damon {
    pub fn read() -> Damon {
        let read = |path: PathBuf| {
            std::fs::read_to_string(path)
                .ok()
                .map(|text| text.trim().to_owned())
        };
        let entries = |dir: PathBuf| {
            let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| path.is_dir())
                .collect();
            paths.sort();
            paths
        };
        let mut damon = Damon::default();
        let mut described = Vec::new();
        for monitor in entries(PathBuf::from("/sys/kernel/mm/damon/admin/kdamonds")) {
            if read(monitor.join("state")).as_deref() != Some("on") {
                continue;
            }
            damon.pids.extend(read(monitor.join("pid")));
            for context in entries(monitor.join("contexts")) {
                let every = |name: &str| {
                    let path = context.join("monitoring_attrs/intervals").join(name);
                    read(path)
                        .and_then(|us| us.parse::<f64>().ok())
                        .map_or("?".to_owned(), |us| format!("{:.0} ms", us / 1000.0))
                };
                let actions: Vec<String> = entries(context.join("schemes"))
                    .into_iter()
                    .filter_map(|scheme| read(scheme.join("action")))
                    .collect();
                described.push(format!(
                    "{} operations, sampling every {}, aggregating every {}, schemes: {}",
                    read(context.join("operations")).unwrap_or_default(),
                    every("sample_us"),
                    every("aggr_us"),
                    if actions.is_empty() {
                        "none".to_owned()
                    } else {
                        actions.join(", ")
                    }
                ));
            }
        }
        damon.description = (!described.is_empty()).then(|| described.join("; "));
        damon
    }

    /// The monitors' threads' CPU time so far, in milliseconds.
    pub fn cpu_ms(&self) -> f64 {
        self.pids.iter().map(|pid| cpu_seconds(pid) * 1000.0).sum()
    }
}

/// User + system CPU time of a process (`self` or a pid), in seconds.
pub fn cpu_seconds(pid: &str) -> f64 {
    let (user, system) = user_system_seconds(pid);
    user + system
}

/// User and system CPU time of a process (`self` or a pid), in seconds.
pub fn user_system_seconds(pid: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // Fields 14 and 15 of stat(5), counted from `state` (field 3) as index 0.
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => (u / clock_ticks(), s / clock_ticks()),
        _ => (0.0, 0.0),
    }
}

/// A core's busy time (user, system, interrupts) and the time the host stole from it, in
/// seconds since boot (`/proc/stat`).
pub fn core_seconds(core: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{core} ");
    let Some(line) = stat.lines().find(|l| l.starts_with(&name)) else {
        return (0.0, 0.0);
    };
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let field = |i: usize| ticks.get(i).copied().unwrap_or(0.0);
    // user nice system idle iowait irq softirq steal
    let busy = field(0) + field(1) + field(2) + field(5) + field(6);
    (busy / clock_ticks(), field(7) / clock_ticks())
}

pub fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            Some(
                l.strip_prefix("model name")?
                    .split_once(':')?
                    .1
                    .trim()
                    .to_owned(),
            )
        })
        .unwrap_or_else(|| "unknown".into())
}

/// `nproc --all`: the machine's cores, whatever this process is pinned to.
pub fn core_count() -> String {
    Command::new("nproc")
        .arg("--all")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "?".to_owned(), |s| s.trim().to_owned())
}

/// `2 × AMD EPYC ...`, for the reports.
pub fn machine() -> String {
    format!("{} × {}", core_count(), cpu_model())
}

// ---------------------------------------------------------------------------------------
// The ceiling: a bare hyper server, run by this same executable re-executed

pub fn ceiling_server(body_path: &Path) {
    let body = Bytes::from(std::fs::read(body_path).expect("read the ceiling's body"));
    // The node's runtime: multi-thread with the default worker count, which is one under
    // `taskset -c 0` (tokio counts the cores of the affinity mask).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!(
            "ceiling listening on http://{}",
            listener.local_addr().expect("an address")
        );
        let _ = std::io::stdout().flush();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let body = body.clone();
                    async move {
                        // Read the request as the node does (without parsing it).
                        let _ = request.into_body().collect().await;
                        Response::builder()
                            .header(CONTENT_TYPE, "application/json")
                            .body(Full::new(body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

// ---------------------------------------------------------------------------------------
// The stall probe: how much of a core this virtual machine loses, with nothing else to do

/// Spins for `seconds`, timing the gaps between consecutive clock reads; prints one JSON line.
pub fn stall_probe(seconds: f64) {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let (mut count, mut lost, mut longest) = (0u64, Duration::ZERO, Duration::ZERO);
    let mut last = Instant::now();
    while last < end {
        let now = Instant::now();
        let gap = now - last;
        if gap > STALL_THRESHOLD {
            count += 1;
            lost += gap;
            longest = longest.max(gap);
        }
        last = now;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "stalls_per_second": count as f64 / elapsed,
            "lost_ms_per_second": lost.as_secs_f64() * 1000.0 / elapsed,
            "longest_us": longest.as_micros() as u64,
        })
    );
}

/// Runs the stall probe on both cores at once (each a re-executed bench process under
/// `taskset`), while the servers are idle; `None` when not pinned.
pub fn stall_probes(pinning: &Pinning, seconds: f64) -> Option<[Value; 2]> {
    if pinning.skipped.is_some() {
        return None;
    }
    let exe = std::env::current_exe().expect("the bench knows its path");
    let children: Vec<Child> = [SERVER_CORE, CLIENT_CORE]
        .iter()
        .map(|core| {
            Command::new("taskset")
                .args(["-c", core])
                .arg(&exe)
                .env(STALL_PROBE_ENV, seconds.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start the stall probe")
        })
        .collect();
    let mut results = children.into_iter().map(|child| {
        let output = child.wait_with_output().expect("the stall probe ends");
        serde_json::from_slice(&output.stdout).expect("the stall probe's JSON")
    });
    Some([results.next()?, results.next()?])
}

/// One core's stall probe result, as the reports print it.
pub fn describe_stalls(probe: &Value) -> String {
    format!(
        "{:.1} pauses > {} µs per second, {:.1} ms/s lost, longest {} µs",
        probe["stalls_per_second"].as_f64().unwrap_or(0.0),
        STALL_THRESHOLD.as_micros(),
        probe["lost_ms_per_second"].as_f64().unwrap_or(0.0),
        probe["longest_us"]
    )
}

// ---------------------------------------------------------------------------------------
// HTTP client helpers

/// A whole HTTP/1.1 request, ready to write.
pub fn http_request(method: &str, path: &str, admin: bool, body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if admin {
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{ADMIN_KEY}:"));
        let _ = write!(head, "Authorization: Basic {credentials}\r\n");
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// One request on a fresh connection; panics unless the answer is 200. Returns the body.
pub async fn call(addr: SocketAddr, method: &str, path: &str, admin: bool, body: &[u8]) -> Vec<u8> {
    let mut connection = Connection::open(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    let status = connection
        .round_trip(&http_request(method, path, admin, body))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert_eq!(
        status,
        200,
        "{method} {path}: {}",
        String::from_utf8_lossy(connection.body())
    );
    connection.body().to_vec()
}

pub fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Load generation

/// The load generator's HTTP/1.1 client connection (keep-alive, one request at a time):
/// pre-serialized requests written whole, answers read up to their `Content-Length`, the
/// status taken from the status line. Much lighter than a general client, so the one
/// load-generator core outruns the servers' core: with hyper's client it saturated first
/// against the bare hyper server (124k req/s with the generator at 98% of its core).
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Where the last answer's body starts in `buf`.
    body_start: usize,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buf: Vec::with_capacity(4096),
            body_start: 0,
        })
    }

    /// The body of the last answer.
    pub fn body(&self) -> &[u8] {
        &self.buf[self.body_start..]
    }

    /// Writes one request and reads its whole answer; returns the status code.
    pub async fn round_trip(&mut self, request: &[u8]) -> std::io::Result<u16> {
        use std::io::{Error, ErrorKind};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stream.write_all(request).await?;
        self.buf.clear();
        let mut needed = usize::MAX;
        while self.buf.len() < needed {
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(4096);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(Error::new(ErrorKind::UnexpectedEof, "connection closed"));
            }
            if needed == usize::MAX
                && let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n")
            {
                self.body_start = end + 4;
                needed = end + 4 + content_length(&self.buf[..end])?;
            }
        }
        if self.buf.len() != needed {
            return Err(Error::new(ErrorKind::InvalidData, "bytes after the answer"));
        }
        std::str::from_utf8(self.buf.get(9..12).unwrap_or_default())
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::new(ErrorKind::InvalidData, "no status code"))
    }
}

/// The `Content-Length` of an answer's header block (both servers send one).
pub fn content_length(head: &[u8]) -> std::io::Result<usize> {
    let head = std::str::from_utf8(head)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    head.split("\r\n")
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("an answer without Content-Length: {head}"),
            )
        })
}

/// One phase's outcome.
#[derive(Debug)]
pub struct Phase {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency in µs: from send (closed loop) or from the scheduled send time (open loop).
    pub latency: Histogram<u64>,
    /// Open loop: how late the generator sent each request, in µs (its own scheduling error,
    /// already included in `latency`).
    pub lateness: Histogram<u64>,
    /// CPU used during the phase, in cores (1.0 = one core busy all the time).
    pub server_cpu: f64,
    /// The part of `server_cpu` spent in the kernel.
    pub server_system: f64,
    pub client_cpu: f64,
    /// The servers' core during the phase, in cores: busy with anything but the server
    /// (kernel threads, interrupts, other processes), and stolen by the host.
    pub server_core_others: f64,
    pub server_core_stolen: f64,
}

impl Phase {
    pub fn empty() -> Phase {
        Phase {
            requests: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency: histogram(),
            lateness: histogram(),
            server_cpu: 0.0,
            server_system: 0.0,
            client_cpu: 0.0,
            server_core_others: 0.0,
            server_core_stolen: 0.0,
        }
    }

    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn quantile_us(&self, q: f64) -> u64 {
        self.latency.value_at_quantile(q)
    }

    /// One line for the bench's progress on stderr.
    pub fn summary(&self) -> String {
        format!(
            "{:.0} req/s, p50 {} µs, p99 {} µs, {} errors, server {:.2} cores ({:.2} system), load generator {:.2} cores, server core also busy {:.3} and stolen {:.3}, send lateness p99 {} µs",
            self.rate(),
            self.quantile_us(0.5),
            self.quantile_us(0.99),
            self.errors,
            self.server_cpu,
            self.server_system,
            self.client_cpu,
            self.server_core_others,
            self.server_core_stolen,
            self.lateness.value_at_quantile(0.99),
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "seconds": self.elapsed.as_secs_f64(),
            "requests_per_second": self.rate().round(),
            "p50_us": self.quantile_us(0.50),
            "p99_us": self.quantile_us(0.99),
            "p999_us": self.quantile_us(0.999),
            "max_us": self.latency.max(),
            "send_lateness_p99_us": self.lateness.value_at_quantile(0.99),
            "server_cpu_cores": self.server_cpu,
            "server_system_cpu_cores": self.server_system,
            "load_generator_cpu_cores": self.client_cpu,
            "server_core_others_cores": self.server_core_others,
            "server_core_stolen_cores": self.server_core_stolen,
        })
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Load at `rate` requests/s in all (open loop), or as fast as answers come (closed loop,
/// `rate = None`), on `CONNECTIONS` connections for `duration`.
pub async fn load(
    server: &Server,
    requests: &Arc<Vec<Bytes>>,
    rate: Option<f64>,
    duration: Duration,
) -> Phase {
    let addr = server.addr;
    let mut connections = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        connections.push(Connection::open(addr).await.expect("connect"));
    }
    let server_pids: Vec<String> = server.pids().iter().map(u32::to_string).collect();
    let server_cpu = || {
        let times = server_pids.iter().map(|p| user_system_seconds(p));
        times.fold((0.0, 0.0), |(u, s), (pu, ps)| (u + pu, s + ps))
    };
    let (server_cpu0, client_cpu0) = (server_cpu(), cpu_seconds("self"));
    let core0 = core_seconds(SERVER_CORE);
    let start = Instant::now() + Duration::from_millis(5);
    let end = start + duration;
    let mut tasks = JoinSet::new();
    for (c, mut connection) in connections.into_iter().enumerate() {
        let requests = requests.clone();
        tasks.spawn(async move {
            let (mut latency, mut lateness) = (histogram(), histogram());
            let (mut sent, mut errors) = (0u64, 0u64);
            // Open loop: connection `c` sends its i-th request at start + (c + i·C)/rate.
            let interval = rate.map(|r| Duration::from_secs_f64(CONNECTIONS as f64 / r));
            let mut scheduled = match rate {
                Some(r) => start + Duration::from_secs_f64(c as f64 / r),
                None => start,
            };
            let mut i = c;
            loop {
                if interval.is_some() {
                    if scheduled >= end {
                        break;
                    }
                    wait_until(scheduled).await;
                    let late = scheduled.elapsed().as_micros() as u64;
                    lateness.saturating_record(late.max(1));
                } else {
                    wait_until(scheduled).await;
                    scheduled = Instant::now();
                    if scheduled >= end {
                        break;
                    }
                }
                let answer = connection.round_trip(&requests[i % requests.len()]).await;
                i += CONNECTIONS;
                let micros = scheduled.elapsed().as_micros() as u64;
                latency.saturating_record(micros.max(1));
                sent += 1;
                match answer {
                    Ok(200) => {}
                    Ok(_) => errors += 1,
                    Err(e) => {
                        eprintln!("load connection {c}: {e}");
                        errors += 1;
                        connection = Connection::open(addr).await.expect("reconnect");
                    }
                }
                if let Some(interval) = interval {
                    scheduled += interval;
                }
            }
            (sent, errors, latency, lateness)
        });
    }
    let mut phase = Phase::empty();
    while let Some(done) = tasks.join_next().await {
        let (sent, errors, latency, lateness) = done.expect("a load task");
        phase.requests += sent;
        phase.errors += errors;
        phase.latency.add(latency).expect("same bounds");
        phase.lateness.add(lateness).expect("same bounds");
    }
    phase.elapsed = start.elapsed();
    let seconds = phase.elapsed.as_secs_f64();
    let (user, system) = server_cpu();
    phase.server_cpu = (user + system - server_cpu0.0 - server_cpu0.1) / seconds;
    phase.server_system = (system - server_cpu0.1) / seconds;
    phase.client_cpu = (cpu_seconds("self") - client_cpu0) / seconds;
    let core = core_seconds(SERVER_CORE);
    phase.server_core_others = ((core.0 - core0.0) / seconds - phase.server_cpu).max(0.0);
    phase.server_core_stolen = (core.1 - core0.1) / seconds;
    phase
}

/// Waits until `t` without tokio's millisecond timer rounding: sleeps to 2 ms before, then
/// yields (other tasks and the I/O driver run in between) until the time has come.
pub async fn wait_until(t: Instant) {
    loop {
        let now = Instant::now();
        if now >= t {
            return;
        }
        if t - now > Duration::from_millis(3) {
            tokio::time::sleep_until((t - Duration::from_millis(2)).into()).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The customers service: the generated table behind a lookup endpoint, and the churn model

pub const SERVICE: &str = "bench";
pub const ENDPOINT: &str = "customer";
pub const PREDICT_ENDPOINT: &str = "churn";
/// Distinct request bodies, drawn once with a fixed seed; every run sends the same sequence.
pub const KEYS: usize = 100_000;

pub fn lookup_path() -> String {
    format!("/public/api/v1/{SERVICE}/{ENDPOINT}/lookup")
}

/// The customers service's bundle, built by the node's own `apinode bundle build`.
#[derive(Debug)]
pub struct CustomersBundle {
    pub path: PathBuf,
    /// The table as the bundle's Parquet source, for building an identical lookup in process.
    pub parquet: PathBuf,
}

/// Writes the service folder under `work` (`rows` generated customers as Parquet, a
/// `dataset-lookup` endpoint keyed on `key`, a `prediction` endpoint on the churn model) and
/// builds it into `work/bench-v1.zip`.
pub fn build_customers_bundle(node_bin: &Path, work: &Path, rows: usize) -> CustomersBundle {
    let started = Instant::now();
    let folder = work.join("service");
    std::fs::create_dir_all(&folder).expect("create the service folder");
    let parquet = folder.join("customers.parquet");
    write_customers_parquet(&parquet, rows);
    std::fs::write(
        folder.join("service.toml"),
        format!(
            r#"[service]
id = "{SERVICE}"

[auth]
mode = "public"

[[datasets]]
name = "customers"
path = "customers.parquet"

[[endpoints]]
id = "{ENDPOINT}"
kind = "dataset-lookup"
[endpoints.lookup]
dataset = "customers"
keys = ["key"]

[[endpoints]]
id = "{PREDICT_ENDPOINT}"
kind = "prediction"
model = {{ path = "model" }}
"#
        ),
    )
    .expect("write service.toml");
    write_churn_model(&folder.join("model")).expect("write the model export");
    let path = work.join("bench-v1.zip");
    build_bundle(node_bin, &folder, &path);
    eprintln!(
        "bundle of {rows} rows built in {:.1} s ({} bytes)",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&path).map_or(0, |m| m.len())
    );
    CustomersBundle { path, parquet }
}

/// Writes `rows` generated customers (`apinode_benches::customers_table`) as a Parquet file.
pub fn write_customers_parquet(path: &Path, rows: usize) {
    let table = customers_table(rows);
    let file = std::fs::File::create(path).expect("create the parquet file");
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, table.batch().schema(), None).expect("writer");
    writer.write(table.batch()).expect("write parquet");
    writer.close().expect("close parquet");
}

/// Builds the service folder `folder` into `archive` with the node's `apinode bundle build`.
pub fn build_bundle(node_bin: &Path, folder: &Path, archive: &Path) {
    let status = Command::new(node_bin)
        .args(["bundle", "build"])
        .arg(folder)
        .arg("-o")
        .arg(archive)
        .args(["--version", "v1"])
        .stdout(Stdio::null())
        .status()
        .expect("run apinode bundle build");
    assert!(status.success(), "apinode bundle build failed");
}

/// Creates the service on the node at `addr`, imports `bundle` (from its path) and activates
/// it. Returns how long the creation and the import took.
pub async fn deploy(addr: SocketAddr, bundle: &Path) -> Duration {
    let started = Instant::now();
    call(
        addr,
        "POST",
        "/admin/api/services",
        true,
        format!(r#"{{"serviceId": "{SERVICE}"}}"#).as_bytes(),
    )
    .await;
    let file_path = bundle.canonicalize().expect("an absolute bundle path");
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
    let import = started.elapsed();
    call(
        addr,
        "POST",
        &format!("/admin/api/services/{SERVICE}/actions/switchToNewest"),
        true,
        b"",
    )
    .await;
    import
}

/// `KEYS` lookup requests on random existing keys (xorshift, fixed seed), as whole HTTP/1.1
/// requests ready to write. The first one's body is also returned, for the cold start.
pub fn lookup_requests(rows: usize) -> (Arc<Vec<Bytes>>, String) {
    let bodies: Vec<String> = random_keys(rows)
        .iter()
        .map(|key| format!(r#"{{"data": {{"key": "{key}"}}}}"#))
        .collect();
    let path = lookup_path();
    let requests = bodies
        .iter()
        .map(|body| Bytes::from(http_request("POST", &path, false, body.as_bytes())))
        .collect();
    (Arc::new(requests), bodies[0].clone())
}

/// `KEYS` random existing customer keys (xorshift, fixed seed): every run and every bench
/// asks for the same sequence.
pub fn random_keys(rows: usize) -> Vec<String> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..KEYS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            customer_key((state % rows as u64) as usize)
        })
        .collect()
}
