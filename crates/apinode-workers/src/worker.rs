//! One worker process: start it, hand it the init frame, exchange call frames, and tell how it
//! ended. Its stderr (the interpreter's messages and everything the user code prints) is
//! logged line by line under the pool's span; the last lines are kept for error messages.

use crate::error::{Error, Result};
use crate::protocol::{self, Init, MAX_FRAME, Reply};
use crate::scripts::Scripts;
use crate::spec::{Language, WorkerKind, WorkerSpec};
use serde_json::Value;
use std::collections::VecDeque;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;
use tracing::Span;

/// The tracing target of lines a worker writes to stderr.
pub const OUTPUT_TARGET: &str = "apinode_workers::output";
/// How many stderr lines a worker keeps for error messages.
const TAIL_LINES: usize = 20;
/// How long to wait for a worker that closed its pipes to exit, before killing it.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// R has no `dup`, so `sh` moves the protocol off the standard streams before `Rscript` starts:
/// frames go out on fd 3 and come in on fd 4, fd 1 becomes stderr and fd 0 /dev/null.
const R_LAUNCHER: &str = r#"exec 3>&1 1>&2 4<&0 0</dev/null; exec "$0" "$@""#;

#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) id: u64,
    child: Child,
    /// `None` once closed: EOF asks the worker to end.
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    buf: Vec<u8>,
    tail: Arc<Mutex<VecDeque<String>>>,
    stderr_task: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts a worker and waits until it has loaded the user code.
    pub(crate) async fn start(
        spec: &WorkerSpec,
        scripts: &Scripts,
        id: u64,
        span: &Span,
        timeout: Duration,
    ) -> Result<Worker> {
        let started = Instant::now();
        let code_file =
            std::path::absolute(&spec.code_file).map_err(|e| Error::io(&spec.code_file, e))?;
        let mut command = match spec.kind.language() {
            Language::Python => {
                let mut c = Command::new(&spec.interpreter);
                c.arg("-u").arg(scripts.python_worker());
                c
            }
            Language::R => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(R_LAUNCHER)
                    .arg(&spec.interpreter)
                    .arg("--vanilla");
                c.arg(scripts.r_worker());
                c
            }
        };
        let working_dir = match &spec.working_dir {
            Some(dir) => dir.clone(),
            None => code_file
                .parent()
                .map(ToOwned::to_owned)
                .unwrap_or_else(|| ".".into()),
        };
        command
            .current_dir(working_dir)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C in the node's terminal goes to the node, which
            // drains its pools, instead of interrupting user code in every worker at once.
            .process_group(0);
        let program = match spec.kind.language() {
            Language::Python => spec.interpreter.display().to_string(),
            Language::R => "sh".to_owned(),
        };
        let mut child = command.spawn().map_err(|source| Error::Spawn {
            hint: spawn_hint(&source, spec.kind.language()),
            program,
            source,
        })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            unreachable!("all three pipes were requested");
        };
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let stderr_task = tokio::spawn(log_output(stderr, tail.clone(), span.clone(), id));
        let mut worker = Worker {
            id,
            child,
            stdin: Some(stdin),
            stdout: BufReader::with_capacity(64 * 1024, stdout),
            buf: Vec::new(),
            tail,
            stderr_task: Some(stderr_task),
        };

        let init = protocol::init_frame(&Init {
            kind: if spec.kind.is_predictor() {
                "predictor"
            } else {
                "function"
            },
            code_file: &code_file,
            entry: spec.kind.entry(),
            folders: &spec.folders,
            data_folder: spec.data_folder.as_deref(),
        })?;
        let handshake = async {
            worker.send(&init).await?;
            worker.read_frame().await.map(<[u8]>::to_vec)
        };
        let reply = match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => {
                let (status, stderr) = worker.reap().await;
                return Err(Error::StartFailed {
                    reason: start_exit_reason(status, spec),
                    stderr,
                });
            }
            Err(_) => {
                worker.kill();
                let (_, stderr) = worker.reap().await;
                return Err(Error::StartFailed {
                    reason: format!(
                        "it was not ready after {} s (the start timeout)",
                        timeout.as_secs_f64()
                    ),
                    stderr,
                });
            }
        };
        match serde_json::from_slice::<Reply<Value>>(&reply) {
            Ok(Reply::Ready(info)) => {
                tracing::debug!(parent: span, worker = id, ?info,
                    elapsed_ms = started.elapsed().as_millis() as u64, "worker ready");
                Ok(worker)
            }
            Ok(Reply::Error(e)) => {
                worker.kill();
                let _ = worker.reap().await;
                Err(Error::LoadFailed {
                    file: code_file,
                    exception: e.exception,
                    message: e.message,
                    traceback: e.traceback,
                })
            }
            _ => {
                worker.kill();
                let (_, stderr) = worker.reap().await;
                Err(Error::StartFailed {
                    reason: format!("unexpected first frame: {}", protocol::preview(&reply)),
                    stderr,
                })
            }
        }
    }

    /// Sends one call frame and reads the reply frame. An error means the worker is gone or
    /// unusable (EOF: it died; `InvalidData`: it wrote garbage).
    pub(crate) async fn call(&mut self, frame: &[u8]) -> io::Result<&[u8]> {
        self.send(frame).await?;
        self.read_frame().await
    }

    async fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match &mut self.stdin {
            Some(stdin) => stdin.write_all(frame).await,
            None => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    async fn read_frame(&mut self) -> io::Result<&[u8]> {
        let mut header = [0u8; 4];
        self.stdout.read_exact(&mut header).await?;
        let len = u32::from_be_bytes(header) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a frame of {len} bytes (header {header:02x?})"),
            ));
        }
        self.buf.resize(len, 0);
        self.stdout.read_exact(&mut self.buf).await?;
        Ok(&self.buf)
    }

    /// Sends SIGKILL; [`Worker::reap`] collects it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    /// Waits for the process to end (killing it if it lingers) and for its stderr to drain;
    /// returns how it ended and its last stderr lines.
    pub(crate) async fn reap(&mut self) -> (Option<ExitStatus>, String) {
        let status = match tokio::time::timeout(EXIT_WAIT, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                self.kill();
                self.child.wait().await.ok()
            }
        };
        if let Some(task) = self.stderr_task.take() {
            // A grandchild may hold stderr open: do not wait for it forever.
            let _ = tokio::time::timeout(Duration::from_millis(500), task).await;
        }
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        (
            status,
            tail.iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }

    /// Ends an idle worker politely: EOF on its input ends its loop; killed after `grace`.
    pub(crate) async fn retire(mut self, grace: Duration) {
        // Closing the pipe (not `shutdown`, a no-op on a pipe) is the EOF the worker waits for.
        drop(self.stdin.take());
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.kill();
        }
        let _ = self.reap().await;
    }
}

/// The error for a call whose worker vanished: how it ended and what it last printed.
pub(crate) fn died(status: Option<ExitStatus>, stderr: String) -> Error {
    Error::WorkerDied {
        status: describe_exit(status),
        stderr,
    }
}

pub(crate) fn describe_exit(status: Option<ExitStatus>) -> String {
    let Some(status) = status else {
        return "its exit status is unknown".into();
    };
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(signal) => format!("killed by signal {signal} ({})", signal_name(signal)),
        None => status.to_string(),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "unknown signal",
    }
}

fn start_exit_reason(status: Option<ExitStatus>, spec: &WorkerSpec) -> String {
    // `sh` answers 127 when it cannot find the program it was asked to exec (Rscript).
    if spec.kind.language() == Language::R && status.and_then(|s| s.code()) == Some(127) {
        return format!(
            "`{}` was not found: install R (Debian: apt-get install r-base-core r-cran-jsonlite)",
            spec.interpreter.display()
        );
    }
    format!("it {} before it was ready", describe_exit(status))
}

fn spawn_hint(error: &io::Error, language: Language) -> &'static str {
    match (error.kind(), language) {
        (io::ErrorKind::NotFound, Language::Python) => {
            " (is Python 3 installed? Debian: apt-get install python3 python3-venv)"
        }
        (io::ErrorKind::NotFound, Language::R) => " (`sh` is needed to start R workers)",
        _ => "",
    }
}

async fn log_output(
    stderr: tokio::process::ChildStderr,
    tail: Arc<Mutex<VecDeque<String>>>,
    span: Span,
    worker: u64,
) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        tracing::info!(target: OUTPUT_TARGET, parent: &span, worker, "{text}");
        let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(text.to_owned());
    }
}

impl WorkerKind {
    /// The kind's name in log lines and messages.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            WorkerKind::PythonFunction { .. } => "python function",
            WorkerKind::PythonPredictor { .. } => "python predictor",
            WorkerKind::RFunction { .. } => "R function",
            WorkerKind::RPredictor { .. } => "R predictor",
        }
    }
}
