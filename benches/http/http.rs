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

use apinode_benches::{
    CHURN_CATEGORIES, CHURN_NUMERIC, bench_rows, customer_key, customers_table, write_churn_model,
};
use apinode_lookup::{Lookup, LookupConfig, Table};
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
const CEILING_ENV: &str = "APINODE_BENCH_CEILING_BODY";
/// Set on a re-executed bench process that measures how often its core is taken away from
/// it (a spinning loop timing its own gaps): the seconds to run.
const STALL_PROBE_ENV: &str = "APINODE_BENCH_STALL_PROBE";
/// A gap in the spinning loop longer than this is a stall.
const STALL_THRESHOLD: Duration = Duration::from_micros(200);
const ADMIN_KEY: &str = "bench-admin-key";
const SERVICE: &str = "bench";
const ENDPOINT: &str = "customer";
const PREDICT_ENDPOINT: &str = "churn";
const CONNECTIONS: usize = 32;
/// Distinct request bodies, drawn once with a fixed seed; every run sends the same sequence.
const KEYS: usize = 100_000;
const SERVER_CORE: &str = "0";
const CLIENT_CORE: &str = "1";

fn main() {
    if let Ok(body) = std::env::var(CEILING_ENV) {
        return ceiling_server(Path::new(&body));
    }
    if let Ok(seconds) = std::env::var(STALL_PROBE_ENV) {
        return stall_probe(seconds.parse().expect("seconds"));
    }
    let full = std::env::args().any(|a| a == "--bench");
    // Before any thread exists, so every thread of this process inherits the mask.
    let pinning = pin_self();
    let settings = Settings::new(full);
    eprintln!(
        "http bench ({}): {} rows, {CONNECTIONS} connections, {:?} phases; {}",
        if full { "full" } else { "smoke" },
        settings.rows,
        settings.phase,
        pinning.describe()
    );
    let report = run(&settings, &pinning);
    print!("{}", report.markdown);
    // Neither the smoke run (CI's) nor a profiled run overwrites the figures of a full run.
    let name = match (full, settings.perf.is_some()) {
        (false, _) => "http-smoke.json",
        (true, true) => "http-perf.json",
        (true, false) => "http.json",
    };
    let path = results_dir().join(name);
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("create bench-results");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&report.json).expect("serializes"),
    )
    .expect("write the JSON report");
    eprintln!("wrote {}", path.display());
    report.check(full);
}

struct Settings {
    full: bool,
    rows: usize,
    warm_up: Duration,
    phase: Duration,
    /// `APINODE_BENCH_PERF`: `perf record` each server during its max-load phase, with
    /// these call-graph arguments.
    perf: Option<&'static [&'static str]>,
}

impl Settings {
    fn new(full: bool) -> Settings {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let seconds = env("APINODE_BENCH_SECONDS").and_then(|v| v.parse::<f64>().ok());
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
        if full {
            Settings {
                full,
                rows: bench_rows(),
                warm_up: Duration::from_secs(2),
                phase: Duration::from_secs_f64(seconds.unwrap_or(10.0)),
                perf,
            }
        } else {
            Settings {
                full,
                rows: env("APINODE_BENCH_ROWS")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(10_000),
                warm_up: Duration::from_millis(200),
                phase: Duration::from_secs_f64(seconds.unwrap_or(1.0)),
                perf,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Pinning and child processes

/// How the processes are pinned: `taskset` when there are two cores or more.
struct Pinning {
    /// `None`: pinned as documented; `Some(reason)`: not pinned.
    skipped: Option<String>,
}

impl Pinning {
    fn describe(&self) -> String {
        match &self.skipped {
            None => format!(
                "servers on core {SERVER_CORE}, load generator on core {CLIENT_CORE}, via taskset"
            ),
            Some(reason) => format!("not pinned: {reason}"),
        }
    }

    /// A command for a server: under `taskset -c 0` when pinning.
    fn server_command(&self, program: &Path) -> Command {
        if self.skipped.is_none() {
            let mut command = Command::new("taskset");
            command.args(["-c", SERVER_CORE]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }
}

fn pin_self() -> Pinning {
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
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Spawns `command` and waits (up to 120 s) for its `... listening on http://ADDR` line.
    fn start(mut command: Command, what: &str) -> Server {
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

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM through the `kill` command: the workspace forbids unsafe code.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `perf record` of a server for as long as it lives, into
/// `target/bench-results/http-<phase>.perf.data` (read it with
/// `perf report --stdio --no-children -i FILE`).
struct Profiler {
    child: Child,
}

impl Profiler {
    fn start(phase: &str, server: &Server, call_graph: &[&str]) -> Profiler {
        let dir = results_dir();
        std::fs::create_dir_all(&dir).expect("create bench-results");
        let output = dir.join(format!("http-{phase}.perf.data"));
        let child = Command::new("perf")
            .args(["record", "-F", "999"])
            .args(call_graph)
            .arg("-p")
            .arg(server.pid().to_string())
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
fn node_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench knows its path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the bench runs from target/<profile>/deps");
    let binary = profile_dir.join("apinode");
    if !binary.exists() {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        panic!(
            "{} is missing: run `cargo build{} -p apinode-server` first (`cargo xtask bench http` does)",
            binary.display(),
            if release { " --release" } else { "" }
        );
    }
    binary
}

/// `target/bench-results`.
fn results_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench knows its path");
    exe.ancestors()
        .nth(3)
        .expect("the bench runs from target/<profile>/deps")
        .join("bench-results")
}

/// A `/proc/<pid>/status` field in bytes (`VmRSS`, `VmHWM`).
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// User + system CPU time of a process (`self` or a pid), in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // Fields 14 and 15 of stat(5), counted from `state` (field 3) as index 0.
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => (u + s) / clock_ticks(),
        _ => 0.0,
    }
}

fn clock_ticks() -> f64 {
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

fn cpu_model() -> String {
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

// ---------------------------------------------------------------------------------------
// The ceiling: a bare hyper server, run by this same executable re-executed

fn ceiling_server(body_path: &Path) {
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
fn stall_probe(seconds: f64) {
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
fn stall_probes(pinning: &Pinning, seconds: f64) -> Option<[Value; 2]> {
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

// ---------------------------------------------------------------------------------------
// HTTP client helpers

/// A whole HTTP/1.1 request, ready to write.
fn http_request(method: &str, path: &str, admin: bool, body: &[u8]) -> Vec<u8> {
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
async fn call(addr: SocketAddr, method: &str, path: &str, admin: bool, body: &[u8]) -> Vec<u8> {
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

fn lookup_path() -> String {
    format!("/public/api/v1/{SERVICE}/{ENDPOINT}/lookup")
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

fn percent_encode(text: &str) -> String {
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

/// `KEYS` lookup requests on random existing keys (xorshift, fixed seed), as whole HTTP/1.1
/// requests ready to write. The first one's body is also returned, for the cold start.
fn lookup_requests(rows: usize) -> (Arc<Vec<Bytes>>, String) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let path = lookup_path();
    let bodies: Vec<String> = (0..KEYS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let key = customer_key((state % rows as u64) as usize);
            format!(r#"{{"data": {{"key": "{key}"}}}}"#)
        })
        .collect();
    let requests = bodies
        .iter()
        .map(|body| Bytes::from(http_request("POST", &path, false, body.as_bytes())))
        .collect();
    (Arc::new(requests), bodies[0].clone())
}

// ---------------------------------------------------------------------------------------
// Load generation

/// The load generator's HTTP/1.1 client connection (keep-alive, one request at a time):
/// pre-serialized requests written whole, answers read up to their `Content-Length`, the
/// status taken from the status line. Much lighter than a general client, so the one
/// load-generator core outruns the servers' core: with hyper's client it saturated first
/// against the bare hyper server (124k req/s with the generator at 98% of its core).
struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Where the last answer's body starts in `buf`.
    body_start: usize,
}

impl Connection {
    async fn open(addr: SocketAddr) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buf: Vec::with_capacity(4096),
            body_start: 0,
        })
    }

    /// The body of the last answer.
    fn body(&self) -> &[u8] {
        &self.buf[self.body_start..]
    }

    /// Writes one request and reads its whole answer; returns the status code.
    async fn round_trip(&mut self, request: &[u8]) -> std::io::Result<u16> {
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
fn content_length(head: &[u8]) -> std::io::Result<usize> {
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
struct Phase {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    /// Latency in µs: from send (closed loop) or from the scheduled send time (open loop).
    latency: Histogram<u64>,
    /// Open loop: how late the generator sent each request, in µs (its own scheduling error,
    /// already included in `latency`).
    lateness: Histogram<u64>,
    /// CPU used during the phase, in cores (1.0 = one core busy all the time).
    server_cpu: f64,
    client_cpu: f64,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn quantile_us(&self, q: f64) -> u64 {
        self.latency.value_at_quantile(q)
    }

    fn json(&self) -> Value {
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
            "load_generator_cpu_cores": self.client_cpu,
        })
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Load at `rate` requests/s in all (open loop), or as fast as answers come (closed loop,
/// `rate = None`), on `CONNECTIONS` connections for `duration`.
async fn load(
    addr: SocketAddr,
    server_pid: u32,
    requests: &Arc<Vec<Bytes>>,
    rate: Option<f64>,
    duration: Duration,
) -> Phase {
    let mut connections = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        connections.push(Connection::open(addr).await.expect("connect"));
    }
    let server_pid = server_pid.to_string();
    let (server_cpu0, client_cpu0) = (cpu_seconds(&server_pid), cpu_seconds("self"));
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
    let mut phase = Phase {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: histogram(),
        lateness: histogram(),
        server_cpu: 0.0,
        client_cpu: 0.0,
    };
    while let Some(done) = tasks.join_next().await {
        let (sent, errors, latency, lateness) = done.expect("a load task");
        phase.requests += sent;
        phase.errors += errors;
        phase.latency.add(latency).expect("same bounds");
        phase.lateness.add(lateness).expect("same bounds");
    }
    phase.elapsed = start.elapsed();
    let seconds = phase.elapsed.as_secs_f64();
    phase.server_cpu = (cpu_seconds(&server_pid) - server_cpu0) / seconds;
    phase.client_cpu = (cpu_seconds("self") - client_cpu0) / seconds;
    phase
}

/// Waits until `t` without tokio's millisecond timer rounding: sleeps to 2 ms before, then
/// yields (other tasks and the I/O driver run in between) until the time has come.
async fn wait_until(t: Instant) {
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

    // The service folder and its bundle.
    let started = Instant::now();
    let table = customers_table(rows);
    let folder = work.path().join("service");
    std::fs::create_dir_all(&folder).expect("create the service folder");
    let parquet_path = folder.join("customers.parquet");
    {
        let file = std::fs::File::create(&parquet_path).expect("create the parquet file");
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, table.batch().schema(), None)
            .expect("writer");
        writer.write(table.batch()).expect("write parquet");
        writer.close().expect("close parquet");
    }
    drop(table);
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
    let bundle = work.path().join("bench-v1.zip");
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
    eprintln!(
        "bundle of {rows} rows built in {:.1} s ({} bytes)",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&bundle).map_or(0, |m| m.len())
    );

    // What the node holds, measured in process on an identical lookup.
    let (arrow_bytes, table_bytes, index_bytes) = {
        let data = Bytes::from(std::fs::read(&parquet_path).expect("read parquet"));
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
        let import = t0.elapsed();
        call(
            addr,
            "POST",
            &format!("/admin/api/services/{SERVICE}/actions/switchToNewest"),
            true,
            b"",
        )
        .await;
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

    // Maximum load (closed loop), then half of the node's maximum (open loop), both servers;
    // each after a warm-up at the same load.
    let mut phases: Vec<(&'static str, Phase)> = Vec::new();
    let mut phase = |name: &'static str,
                     server: &Server,
                     requests: &Arc<Vec<Bytes>>,
                     rate: Option<f64>| {
        let _ = runtime.block_on(load(
            server.addr,
            server.pid(),
            requests,
            rate,
            settings.warm_up,
        ));
        let profile = settings
            .perf
            .filter(|_| rate.is_none())
            .map(|call_graph| Profiler::start(name, server, call_graph));
        let result = runtime.block_on(load(
            server.addr,
            server.pid(),
            requests,
            rate,
            settings.phase,
        ));
        drop(profile);
        eprintln!(
            "{name}: {:.0} req/s, p50 {} µs, p99 {} µs, {} errors, server {:.2} cores, load generator {:.2} cores, send lateness p99 {} µs",
            result.rate(),
            result.quantile_us(0.5),
            result.quantile_us(0.99),
            result.errors,
            result.server_cpu,
            result.client_cpu,
            result.lateness.value_at_quantile(0.99),
        );
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
    let nproc = Command::new("nproc")
        .arg("--all")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "?".to_owned(), |s| s.trim().to_owned());
    let machine = format!("{nproc} × {}", cpu_model());

    let mut md = String::new();
    let mut line = |text: String| {
        md.push_str(&text);
        md.push('\n');
    };
    let mode = if settings.full { "full" } else { "smoke" };
    line(format!("\n## apinode HTTP benchmark ({mode})\n"));
    line(format!("- machine: {machine}"));
    line(format!(
        "- table: {rows} rows; answer body {} bytes; {CONNECTIONS} keep-alive connections, one request in flight each; phases of {:.0} s, each after a {:.1} s warm-up at the same load",
        results.body_bytes,
        settings.phase.as_secs_f64(),
        settings.warm_up.as_secs_f64()
    ));
    line(format!("- pinning: {}", pinning.describe()));
    if let Some([core0, core1]) = &results.stalls {
        let describe = |v: &Value| {
            format!(
                "{:.1} pauses > {} µs per second, {:.1} ms/s lost, longest {} µs",
                v["stalls_per_second"].as_f64().unwrap_or(0.0),
                STALL_THRESHOLD.as_micros(),
                v["lost_ms_per_second"].as_f64().unwrap_or(0.0),
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
