//! Integration tests: real Python and R workers on code files the tests write.
//!
//! They need `python3` (with `venv` and network access to PyPI: the predictor tests build a
//! pandas environment through the crate's own [`PythonEnvs`], cached in
//! `<target>/workers-envs` or `$APINODE_WORKERS_TEST_ENVS`) and R with jsonlite. Missing
//! interpreters fail the tests with the command that installs them; nothing is skipped.

mod env;
mod function;
mod pool;
mod predictor;
mod r;

use apinode_workers::{Pool, PoolConfig, PythonEnvs, WorkerKind, WorkerSpec};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;
use tokio::sync::OnceCell;

const PYTHON_HOWTO: &str = "these tests need Python 3 with venv: on Debian \
`apt-get install python3 python3-venv` (or put a python3 in PATH)";
const R_HOWTO: &str = "these tests need R with jsonlite: on Debian \
`apt-get install r-base-core r-cran-jsonlite`";

/// Fails the test (never skips it) when python3 is missing.
pub(crate) fn require_python() {
    let ok = Command::new("python3")
        .args(["-c", "import venv"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "{PYTHON_HOWTO}");
}

/// Fails the test (never skips it) when Rscript or jsonlite is missing.
pub(crate) fn require_r() {
    let ok = Command::new("Rscript")
        .args(["--vanilla", "-e", "library(jsonlite)"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "{R_HOWTO}");
}

/// The target directory (`<target>/debug/deps/it-<hash>` is this executable).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.ancestors()
        .nth(3)
        .expect("the executable lives in <target>/debug/deps")
        .to_owned()
}

/// A python with pandas, built once through the crate's env builder and cached across runs.
pub(crate) async fn pandas_python() -> PathBuf {
    static PYTHON: OnceCell<PathBuf> = OnceCell::const_new();
    PYTHON
        .get_or_init(|| async {
            require_python();
            let cache = std::env::var_os("APINODE_WORKERS_TEST_ENVS")
                .map(PathBuf::from)
                .unwrap_or_else(|| target_dir().join("workers-envs"));
            let env = PythonEnvs::new(cache)
                .ensure("pandas\n")
                .await
                .unwrap_or_else(|e| {
                    panic!("building the pandas environment for the tests failed: {e}")
                });
            env.python
        })
        .await
        .clone()
}

/// A temporary directory holding one code file (removed when dropped).
pub(crate) struct Fixture {
    _dir: TempDir,
    pub(crate) file: PathBuf,
}

pub(crate) fn fixture(name: &str, code: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join(name);
    std::fs::write(&file, code).expect("writing the fixture");
    Fixture { _dir: dir, file }
}

/// Small, quick settings for tests.
pub(crate) fn config() -> PoolConfig {
    let mut config = PoolConfig::default();
    config.min_workers = 1;
    config.max_workers = 2;
    config.queue_capacity = 16;
    config.call_timeout = Duration::from_secs(20);
    config.start_timeout = Duration::from_secs(60);
    config.shutdown_grace = Duration::from_secs(10);
    config
}

pub(crate) fn python_function(file: &Path, function: &str) -> WorkerSpec {
    require_python();
    WorkerSpec::new(
        WorkerKind::PythonFunction {
            function: function.into(),
        },
        file,
    )
}

pub(crate) async fn start(spec: WorkerSpec, config: PoolConfig) -> Pool {
    Pool::start(spec, config)
        .await
        .unwrap_or_else(|e| panic!("the pool did not start: {e}"))
}

#[test]
fn a_pool_is_shared_between_tasks() {
    fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Pool>();
    send_and_sync::<apinode_workers::Error>();
}
