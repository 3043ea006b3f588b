//! The worker scripts shipped in the crate, written into a private temporary directory per pool.
//!
//! Files rather than `-c`: tracebacks through the worker show file names and lines, `ps` shows
//! a readable command line, and the `dataiku` shim is an ordinary package on the worker's
//! `sys.path`. A fresh `0700` directory per pool (not a shared, predictable path) means no other
//! user of the machine can plant a script the node would run, and nothing stale survives an
//! upgrade; writing six small files costs microseconds.

use crate::error::{Error, Result};
use std::path::PathBuf;

/// (path inside the scripts directory, content).
const FILES: &[(&str, &str)] = &[
    (
        "python/worker.py",
        include_str!("../scripts/python/worker.py"),
    ),
    (
        "python/shim/dataiku/__init__.py",
        include_str!("../scripts/python/shim/dataiku/__init__.py"),
    ),
    (
        "python/shim/dataiku/apinode/__init__.py",
        include_str!("../scripts/python/shim/dataiku/apinode/__init__.py"),
    ),
    (
        "python/shim/dataiku/apinode/predict/__init__.py",
        include_str!("../scripts/python/shim/dataiku/apinode/predict/__init__.py"),
    ),
    (
        "python/shim/dataiku/apinode/predict/predictor.py",
        include_str!("../scripts/python/shim/dataiku/apinode/predict/predictor.py"),
    ),
    ("r/worker.R", include_str!("../scripts/r/worker.R")),
];

/// The installed scripts; the directory is removed when the pool that owns it is dropped.
#[derive(Debug)]
pub(crate) struct Scripts {
    dir: tempfile::TempDir,
}

impl Scripts {
    pub(crate) fn install() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("apinode-workers-")
            .tempdir()
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        for (name, content) in FILES {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            std::fs::write(&path, content).map_err(|e| Error::io(&path, e))?;
        }
        Ok(Scripts { dir })
    }

    pub(crate) fn python_worker(&self) -> PathBuf {
        self.dir.path().join("python/worker.py")
    }

    pub(crate) fn r_worker(&self) -> PathBuf {
        self.dir.path().join("r/worker.R")
    }
}
