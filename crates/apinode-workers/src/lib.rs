//! `apinode-workers`: runs user Python and R code for real-time endpoints in pools of worker
//! processes, so that user code never runs inside the node and a misbehaving worker costs one
//! call, never the node.
//!
//! A [`Pool`] runs one [`WorkerSpec`]: a [`WorkerKind`] (Python function, Python predictor with
//! Dataiku's `ClassificationPredictor` / `RegressionPredictor` contract, R function, R predictor),
//! the user's code file, and an interpreter. [`Pool::start`] warms `min_workers` up (each loads
//! the code once) and fails with the interpreter's own error when the code does not load;
//! [`Pool::run`] and [`Pool::predict`] call it; [`Pool::shutdown`] drains it. A worker that
//! hangs past the call timeout is killed, one that dies is reaped; both are replaced and their
//! call gets its own [`Error`] variant. [`PythonEnvs`] turns a `requirements.txt` into a
//! virtualenv cached by content hash; [`check_r_packages`] checks an R package list.
//!
//! What it is not: it knows nothing of bundles, HTTP, services or generations (the caller passes
//! file paths and [`LogTags`]); it does not sandbox user code (a worker runs with the node's
//! user and environment); it installs no R package (no CRAN).
//!
//! Invariants: one call at a time per worker; user output never reaches the protocol pipe (it
//! is moved to stderr inside the worker and logged under target [`OUTPUT_TARGET`]); a pool never
//! runs more than `max_workers` workers nor queues more than `queue_capacity` calls; a caller
//! that cancels a call never leaves a worker in an unknown state. `docs/workers.md` describes the
//! protocol and the worker contracts.

mod env;
mod error;
mod pool;
mod predict;
mod protocol;
mod scripts;
mod spec;
mod worker;

pub use env::{PythonEnv, PythonEnvs, check_r_packages};
pub use error::{Error, Result};
pub use pool::{Pool, PoolStats};
pub use predict::{PredictedRow, Predictions};
pub use spec::{Language, LogTags, PoolConfig, WorkerKind, WorkerSpec};
pub use worker::OUTPUT_TARGET;
