//! What a worker runs ([`WorkerSpec`], [`WorkerKind`]) and how a pool behaves ([`PoolConfig`]).

use std::path::PathBuf;
use std::time::Duration;

/// The four kinds of worker: a language and a contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerKind {
    /// A Python function called with the request's top-level keys as keyword arguments; its
    /// return value is the answer. Served by [`Pool::run`](crate::Pool::run).
    PythonFunction { function: String },
    /// A Python predictor class (Dataiku's `ClassificationPredictor` / `RegressionPredictor`
    /// contract). `class: None` picks the one predictor class the file defines. Served by
    /// [`Pool::predict`](crate::Pool::predict).
    PythonPredictor { class: Option<String> },
    /// An R function called with the request's top-level keys as named arguments.
    RFunction { function: String },
    /// An R function taking a data.frame and returning a vector of predictions, or a list with
    /// `prediction`, and optionally `probas` (a data.frame, one column per class) and
    /// `customKeys` (one list per row).
    RPredictor { function: String },
}

/// The interpreter family of a [`WorkerKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Python,
    R,
}

impl WorkerKind {
    pub fn language(&self) -> Language {
        match self {
            WorkerKind::PythonFunction { .. } | WorkerKind::PythonPredictor { .. } => {
                Language::Python
            }
            WorkerKind::RFunction { .. } | WorkerKind::RPredictor { .. } => Language::R,
        }
    }

    /// Predictors answer [`Pool::predict`](crate::Pool::predict); functions answer
    /// [`Pool::run`](crate::Pool::run).
    pub fn is_predictor(&self) -> bool {
        matches!(
            self,
            WorkerKind::PythonPredictor { .. } | WorkerKind::RPredictor { .. }
        )
    }

    /// The function or class name given to the worker (`None`: find the predictor class).
    pub(crate) fn entry(&self) -> Option<&str> {
        match self {
            WorkerKind::PythonFunction { function }
            | WorkerKind::RFunction { function }
            | WorkerKind::RPredictor { function } => Some(function),
            WorkerKind::PythonPredictor { class } => class.as_deref(),
        }
    }
}

/// What every worker of a pool runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerSpec {
    pub kind: WorkerKind,
    /// The user's `.py` or `.R` file, loaded once per worker at start.
    pub code_file: PathBuf,
    /// The interpreter: `python3` by default, or a code environment's
    /// [`PythonEnv::python`](crate::PythonEnv); `Rscript` by default for R.
    pub interpreter: PathBuf,
    /// Resource folders, visible to the code as the global `folders` (a list of paths), set
    /// before the file's first line runs.
    pub folders: Vec<PathBuf>,
    /// The managed folder a predictor's constructor receives (`data_folder=None` when absent).
    pub data_folder: Option<PathBuf>,
    /// The workers' current directory; the code file's directory when `None`.
    pub working_dir: Option<PathBuf>,
    /// Extra environment variables, on top of the node's own environment.
    pub env: Vec<(String, String)>,
}

impl WorkerSpec {
    /// A spec with the language's default interpreter, no folders and no extra environment.
    pub fn new(kind: WorkerKind, code_file: impl Into<PathBuf>) -> Self {
        let interpreter = match kind.language() {
            Language::Python => "python3",
            Language::R => "Rscript",
        };
        WorkerSpec {
            kind,
            code_file: code_file.into(),
            interpreter: interpreter.into(),
            folders: Vec::new(),
            data_folder: None,
            working_dir: None,
            env: Vec::new(),
        }
    }
}

/// Tags carried by every log line of a pool (worker output, deaths, timeouts, user errors).
#[derive(Debug, Clone, Default)]
pub struct LogTags {
    pub service: String,
    pub endpoint: String,
    pub generation: String,
}

/// How a pool sizes itself, queues calls and gives up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Workers started (and warm) before [`Pool::start`](crate::Pool::start) returns, and kept
    /// alive when idle. At least one worker is always started, to prove the code loads.
    pub min_workers: usize,
    /// The most workers the pool runs at once (at least 1); more are started under load.
    pub max_workers: usize,
    /// Calls that may wait for a busy worker; one more is refused with
    /// [`Error::QueueFull`](crate::Error::QueueFull).
    pub queue_capacity: usize,
    /// The longest a call may run in a worker; past it the worker is killed and replaced and
    /// the call fails with [`Error::Timeout`](crate::Error::Timeout). Waiting in the queue does
    /// not count (bound the whole call with `tokio::time::timeout` if needed: cancelling a call
    /// is safe).
    pub call_timeout: Duration,
    /// The longest a worker may take to start and load the code (imports such as pandas count).
    pub start_timeout: Duration,
    /// Workers above `min_workers` idle for this long are stopped; `None` keeps them.
    pub idle_timeout: Option<Duration>,
    /// How long [`Pool::shutdown`](crate::Pool::shutdown) lets in-flight calls finish before it
    /// kills the workers.
    pub shutdown_grace: Duration,
    pub tags: LogTags,
}

impl Default for PoolConfig {
    /// Dataiku's API node defaults where it has one (queue 16, timeout 10 s).
    fn default() -> Self {
        PoolConfig {
            min_workers: 1,
            max_workers: 4,
            queue_capacity: 16,
            call_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(60),
            idle_timeout: Some(Duration::from_secs(300)),
            shutdown_grace: Duration::from_secs(10),
            tags: LogTags::default(),
        }
    }
}
