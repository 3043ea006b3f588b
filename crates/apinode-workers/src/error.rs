//! The crate's one error type. Each variant says what the caller can do about it; the doc of each
//! one suggests the HTTP status a server would answer with.

use std::path::PathBuf;
use std::time::Duration;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong starting a pool, calling it, or preparing a code environment.
///
/// Start-time variants (`Spawn`, `LoadFailed`, `StartFailed`) mean the endpoint cannot be served:
/// the generation should not be activated. Call-time variants are per call: the pool goes on
/// serving (a dead or hung worker has already been replaced when the error is returned).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The interpreter could not be started at all (not installed, not executable). Fix the
    /// configuration or install it; nothing was loaded.
    #[error("cannot start `{program}`: {source}{hint}")]
    Spawn {
        program: String,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The user's code failed while the worker loaded it (a `SyntaxError`, an `ImportError`,
    /// a missing function or predictor class, an R parse error): fix the code. Not servable.
    #[error("`{}` failed to load: {exception}: {message}", file.display())]
    LoadFailed {
        file: PathBuf,
        /// The exception's type (`SyntaxError`, `ModuleNotFoundError`, R's `simpleError`).
        exception: String,
        message: String,
        /// The interpreter's traceback, for the log.
        traceback: String,
    },

    /// The worker process ended or stalled before it reported ready, without a structured error
    /// (a broken interpreter, R without `jsonlite`, a warm-up longer than the start timeout).
    /// `stderr` holds its last lines. Not servable.
    #[error("the worker did not start: {reason}{}", stderr_suffix(stderr))]
    StartFailed { reason: String, stderr: String },

    /// All workers are busy and the queue of waiting calls is full: retry later (503).
    #[error("the endpoint is overloaded: {capacity} calls are already waiting for a worker")]
    QueueFull { capacity: usize },

    /// The pool is draining or shut down and takes no new calls (503).
    #[error("the endpoint is shutting down")]
    ShuttingDown,

    /// The call ran longer than the pool's call timeout. Its worker was killed and is being
    /// replaced (504 or 503).
    #[error("the call timed out after {} ms; its worker was killed", after.as_millis())]
    Timeout { after: Duration },

    /// The worker died during the call (`sys.exit`, `quit()`, `os._exit`, a segfault, the OOM
    /// killer). It is being replaced; the call may be retried if it is idempotent (500).
    #[error("the worker died during the call ({status}){}", stderr_suffix(stderr))]
    WorkerDied {
        /// "exited with status 3", "killed by signal 11 (SIGSEGV)".
        status: String,
        /// The worker's last stderr lines (a Python fatal-error dump, an R message).
        stderr: String,
    },

    /// The user code raised (or returned something the contract does not allow). The worker is
    /// fine. 500, or `http_status` when the code asked for one (Dataiku's
    /// `DkuCustomApiException(message, http_status_code=...)`).
    #[error("{exception}: {message}")]
    UserCode {
        exception: String,
        message: String,
        traceback: String,
        http_status: Option<u16>,
    },

    /// The call does not fit the pool: arguments that are not a JSON object, `predict` on a
    /// function pool, `run` on a predictor pool (400, or a wiring bug).
    #[error("invalid call: {detail}")]
    InvalidCall { detail: String },

    /// The worker broke the frame protocol (a bug in this crate or a worker script); the worker
    /// was killed and is being replaced (500).
    #[error("worker protocol error: {detail}")]
    Protocol { detail: String },

    /// A Python code environment could not be built: `output` is the failing command's own
    /// output (pip's error). Fix the requirements; nothing was cached.
    #[error("building the Python environment failed at `{step}`:\n{output}")]
    EnvBuild { step: String, output: String },

    /// R packages the code needs are not installed. This node installs nothing from CRAN:
    /// install them on the machine (Debian's `r-cran-*` packages) and restart.
    #[error(
        "R packages not installed: {}. This node does not install R packages (no CRAN access): \
         install them on the machine, e.g. `apt-get install {}`. R said: {message}",
        packages.join(", "),
        packages.iter().map(|p| format!("r-cran-{}", p.to_lowercase())).collect::<Vec<_>>().join(" ")
    )]
    MissingRPackages {
        packages: Vec<String>,
        message: String,
    },

    /// Reading or writing a file or directory this crate manages (the scripts directory, the
    /// environment cache) failed.
    #[error("`{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; its last output:\n{stderr}")
    }
}

impl Error {
    /// Whether the failure is the node's load or capacity rather than the call itself
    /// (`QueueFull`, `ShuttingDown`): a server answers 503 and the client may retry elsewhere.
    pub fn is_overload(&self) -> bool {
        matches!(self, Error::QueueFull { .. } | Error::ShuttingDown)
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
