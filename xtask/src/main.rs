//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! - `ci`: everything CI checks, in order: fmt, build, lint, the Python virtualenvs (the tests'
//!   and the Python benchmark's), R (from Debian's packages when missing), the scoring
//!   differential cases (models trained and scored by `dataiku-scoring`), the scoring
//!   benchmark's models, Rust tests, benchmark smoke (each benchmark once on small inputs, the
//!   scoring one with a short `dataiku-scoring` run, the Python one against FastAPI from the
//!   bench virtualenv), Python conformance tests against the debug binary. If it passes
//!   locally, CI passes.
//! - `lint`: clippy with `-D warnings`, plus the architecture rules (only `apinode-lookup` and
//!   `apinode-audit` bring in DataFusion; libraries don't use anyhow; every crate root has `//!`
//!   docs).
//! - `fmt`: `cargo fmt --all`.
//! - `bench [NAME] [-- ARGS]`: the benchmarks, in release: all of them, or one by name.
//!   `lookup` (`benches/lookup.rs`) and `http` (`benches/http`: lookup and predict over HTTP,
//!   against the release `apinode` binary built first); `python` (`benches/http/python.rs`:
//!   the Python and R endpoints of the release binary against FastAPI + uvicorn, from a
//!   virtualenv of `benches/http/python-requirements.txt`, `<target>/py-bench-venv`); `audit`
//!   (`benches/http/audit.rs`: the lookup endpoint with the query audit log off, `async`,
//!   `write` and `fsync`); `referenced` (`benches/http/referenced.rs`: the lookup and SQL
//!   endpoints on a PostgreSQL table against a bare tokio-postgres loop; the database from
//!   `APINODE_BENCH_PG_URL`, else `APINODE_TEST_PG_URL`, else the local `test` database);
//!   `audit_log` (`crates/apinode-audit/benches/audit_log.rs`: the log's own CPU per record in
//!   process, per durability mode, buffered or direct; built without the log reader, and without
//!   the release `apinode`, which only the HTTP benchmarks drive); `scoring` (`crates/apinode-scoring/benches/scoring.rs`): apinode-scoring against
//!   `dataiku-scoring` in the Python virtualenv, on the models and rows
//!   `crates/apinode-scoring/tests/python/make_bench_models.py` generates. ARGS go to the
//!   benchmark (a criterion filter, for instance).

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Crates allowed to depend on DataFusion: the lookup/SQL engine and the audit log's reader.
/// Crates that depend on them (the runtime, the server binary that wires them) get DataFusion
/// through them, which is fine; any other way in is not. Dev-dependencies do not count: the
/// benchmarks compare against DataFusion.
const DATAFUSION_ALLOWED: &[&str] = &["apinode-lookup", "apinode-audit"];
/// Pinned Python requirements, installed into one virtualenv: the conformance tests' (the
/// official client) and the scoring differential tests' (dataiku-scoring and the libraries
/// that train the models it reads).
const PYTHON_REQUIREMENTS: &[&str] = &[
    "crates/apinode-server/tests/python/requirements.txt",
    "crates/apinode-scoring/tests/python/requirements.txt",
    "crates/apinode-audit/tests/python/requirements.txt",
];
/// Pinned requirements of the Python benchmark's FastAPI + uvicorn side, in a virtualenv of
/// their own (`py-bench-venv`): the bench compares against exactly these versions.
const BENCH_PYTHON_REQUIREMENTS: &[&str] = &["benches/http/python-requirements.txt"];
const PYTHON_TESTS: &str = "crates/apinode-server/tests/python";
/// Writes model exports and dataiku-scoring's predictions on them for the differential test.
const SCORING_GENERATOR: &str = "crates/apinode-scoring/tests/python/make_models.py";
/// Writes the scoring benchmark's models and rows (it imports `SCORING_GENERATOR`'s helpers).
const SCORING_BENCH_GENERATOR: &str = "crates/apinode-scoring/tests/python/make_bench_models.py";
/// The benchmarks and their packages: those in `benches/` (`http` is its own package so its
/// release build does not compile DataFusion), and the audit log's in its crate; `scoring`,
/// which needs its models generated first, apart.
const BENCHES: &[(&str, &str)] = &[
    ("lookup", "apinode-benches"),
    ("http", "apinode-bench-http"),
    ("python", "apinode-bench-http"),
    ("audit", "apinode-bench-http"),
    ("referenced", "apinode-bench-http"),
    ("audit_log", "apinode-audit"),
];

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    let root = project_root();
    std::env::set_current_dir(&root)?;
    match task.as_str() {
        "ci" => ci(&root),
        "lint" => lint(&root),
        "fmt" => run(cargo().args(["fmt", "--all"])),
        "bench" => {
            let name = std::env::args().nth(2).filter(|n| n != "--");
            let rest: Vec<String> = std::env::args()
                .skip(2)
                .skip_while(|a| a != "--")
                .skip(1)
                .collect();
            match name.as_deref() {
                Some("scoring") => bench_scoring(&root, &rest),
                None => {
                    bench_apinode(&root, None, &rest)?;
                    bench_scoring(&root, &rest)
                }
                Some(name) if BENCHES.iter().any(|(b, _)| *b == name) => {
                    bench_apinode(&root, Some(name), &rest)
                }
                Some(other) => bail!(
                    "no benchmark named `{other}`: the benchmarks are lookup, http, python, audit, referenced, audit_log and scoring"
                ),
            }
        }
        _ => bail!("usage: cargo xtask <ci | lint | fmt | bench [NAME] [-- ARGS]>"),
    }
}

/// The benchmarks in `benches/`, one or all, after the release `apinode` binary.
fn bench_apinode(root: &Path, name: Option<&str>, args: &[String]) -> anyhow::Result<()> {
    // The HTTP benchmarks drive the release `apinode` binary: build it first (the others run
    // in process and do not need it).
    let drives_the_binary = BENCHES.iter().any(|(bench, package)| {
        *package == "apinode-bench-http" && name.is_none_or(|n| n == *bench)
    });
    if drives_the_binary {
        run(cargo().args(["build", "--release", "--locked", "-p", "apinode-server"]))?;
    }
    let bench_python = match name {
        None | Some("python") => Some(step("bench virtualenv (FastAPI + uvicorn)", || {
            bench_python_venv(root)
        })?),
        Some(_) => None,
    };
    for (bench, package) in BENCHES {
        if name.is_some_and(|n| n != *bench) {
            continue;
        }
        let mut command = cargo();
        command.args(["bench", "--locked", "-p", package, "--bench", bench]);
        if *bench == "lookup" {
            // Both engines in the process get malloc's transparent huge pages, as `apinode
            // serve` gives itself (crates/apinode-server/src/huge_pages.rs).
            command.env("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1");
        }
        if *bench == "audit_log" {
            // It only writes the log: without the reader, its release build skips DataFusion.
            command.arg("--no-default-features");
        }
        if let Some(python) = bench_python.as_ref().filter(|_| *bench == "python") {
            command.env("APINODE_BENCH_PYTHON", python);
        }
        if !args.is_empty() {
            command.arg("--").args(args);
        }
        run(&mut command)?;
    }
    Ok(())
}

/// apinode-scoring against dataiku-scoring: the virtualenv and the bench models first. Builds
/// only apinode-scoring (no DataFusion, no server).
fn bench_scoring(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let python = step("python virtualenv", || python_venv(root))?;
    let models = step("scoring bench models", || {
        scoring_bench_models(root, &python)
    })?;
    let mut command = cargo();
    command
        .args([
            "bench",
            "--locked",
            "-p",
            "apinode-scoring",
            "--bench",
            "scoring",
        ])
        .env("APINODE_PYTHON", &python)
        .env("APINODE_SCORING_BENCH", &models);
    if !args.is_empty() {
        command.arg("--").args(args);
    }
    run(&mut command)
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// A cargo command with the environment of a shell's: without the variables `cargo run` set
/// for xtask itself. `ring`'s build script reruns when `CARGO_MANIFEST_DIR` changes, so
/// leaving it set made every CI run rebuild `ring` and all above it (DataFusion included)
/// after a plain `cargo build`, and the other way round.
fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let set_by_cargo_run = name.to_str().is_some_and(|name| {
            name.starts_with("CARGO_PKG_")
                || matches!(
                    name,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                )
        });
        if set_by_cargo_run {
            command.env_remove(name);
        }
    }
    command
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{command:?}");
    eprintln!("$ {shown}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn output(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .output()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn step<T>(name: &str, work: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    eprintln!("\n== {name}");
    let start = Instant::now();
    let result = work().with_context(|| format!("step `{name}` failed"));
    eprintln!("== {name}: {:.1}s", start.elapsed().as_secs_f64());
    result
}

fn ci(root: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    step("fmt", || {
        run(cargo().args(["fmt", "--all", "--", "--check"]))
    })?;
    step("build", || {
        run(cargo().args(["build", "--workspace", "--all-targets", "--locked"]))
    })?;
    step("lint", || lint(root))?;
    let python = step("python virtualenv", || python_venv(root))?;
    let bench_python = step("bench virtualenv (FastAPI + uvicorn)", || {
        bench_python_venv(root)
    })?;
    step("R for the R endpoints", ensure_r)?;
    let cases = step("scoring cases from dataiku-scoring", || {
        scoring_cases(root, &python)
    })?;
    let bench_models = step("scoring bench models", || {
        scoring_bench_models(root, &python)
    })?;
    let pg_url = step("postgresql for referenced data", postgres_url)?;
    step("rust tests", || {
        run(cargo()
            .args(["test", "--workspace", "--locked"])
            .env("APINODE_SCORING_CASES", &cases)
            .env("APINODE_TEST_PG_URL", &pg_url)
            // The audit log's S3 tests start moto (an S3-compatible server) with it.
            .env("APINODE_PYTHON", &python))
    })?;
    // Each benchmark once, on a small table, so they never rot (figures come from `bench`);
    // the scoring one also runs its Python timing script briefly.
    step("benchmark smoke", || {
        run(cargo()
            .args(["test", "--workspace", "--benches", "--locked"])
            .env("APINODE_BENCH_ROWS", "10000")
            .env("APINODE_TEST_PG_URL", &pg_url)
            .env("APINODE_PYTHON", &python)
            .env("APINODE_BENCH_PYTHON", &bench_python)
            .env("APINODE_SCORING_BENCH", &bench_models))
    })?;
    step("python conformance tests", || {
        python_tests(root, &python, &cases, &pg_url)
    })?;
    eprintln!("\nci passed in {:.0}s", start.elapsed().as_secs_f64());
    Ok(())
}

fn lint(root: &Path) -> anyhow::Result<()> {
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    check_layering()?;
    check_tidy(root)
}

fn workspace_metadata() -> anyhow::Result<serde_json::Value> {
    let text = output(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
    Ok(serde_json::from_str(&text)?)
}

fn workspace_crates() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let metadata = workspace_metadata()?;
    let packages = metadata["packages"].as_array().context("no packages")?;
    Ok(packages
        .iter()
        .filter_map(|p| {
            let name = p["name"].as_str()?.to_owned();
            let manifest = PathBuf::from(p["manifest_path"].as_str()?);
            Some((name, manifest.parent()?.to_path_buf()))
        })
        .collect())
}

/// DataFusion comes into a crate only through the allowed crates: each other crate's
/// dependency tree, with the allowed crates it has pruned from it, holds no DataFusion.
fn check_layering() -> anyhow::Result<()> {
    let is_datafusion = |l: &str| l.starts_with("datafusion ") || l.starts_with("datafusion-");
    let tree = |name: &str, prune: &[&str]| -> anyhow::Result<String> {
        let mut command = cargo();
        command.args([
            "tree",
            "--locked",
            "-p",
            name,
            "-e",
            "normal,build",
            "--prefix",
            "none",
        ]);
        for crate_name in prune {
            command.args(["--prune", crate_name]);
        }
        output(&mut command)
    };
    for (name, _) in workspace_crates()? {
        if DATAFUSION_ALLOWED.contains(&name.as_str()) {
            continue;
        }
        let full = tree(&name, &[])?;
        if !full.lines().any(is_datafusion) {
            continue;
        }
        // `--prune` refuses a crate that is not in the tree: only those that are.
        let through: Vec<&str> = DATAFUSION_ALLOWED
            .iter()
            .copied()
            .filter(|allowed| full.lines().any(|l| l.starts_with(&format!("{allowed} "))))
            .collect();
        if through.is_empty() || tree(&name, &through)?.lines().any(is_datafusion) {
            bail!(
                "crate `{name}` depends on DataFusion other than through {DATAFUSION_ALLOWED:?} \
                 (see docs/architecture.md)"
            );
        }
    }
    eprintln!("layering: DataFusion only through {DATAFUSION_ALLOWED:?}: ok");
    Ok(())
}

/// Every crate root documents itself; libraries do not use anyhow.
fn check_tidy(root: &Path) -> anyhow::Result<()> {
    for (name, dir) in workspace_crates()? {
        for root_file in ["src/lib.rs", "src/main.rs"] {
            let path = dir.join(root_file);
            if let Ok(text) = std::fs::read_to_string(&path)
                && !text.trim_start().starts_with("//!")
            {
                bail!(
                    "{} must start with `//!` docs saying what the crate is and is not",
                    path.strip_prefix(root).unwrap_or(&path).display()
                );
            }
        }
        let is_library = dir.join("src/lib.rs").exists();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))?;
        let deps = manifest.split("[dev-dependencies]").next().unwrap_or("");
        if is_library && deps.lines().any(|l| l.trim_start().starts_with("anyhow")) {
            bail!("library crate `{name}` depends on anyhow: use its thiserror enum");
        }
    }
    eprintln!("tidy: crate docs and error-type rules: ok");
    Ok(())
}

fn target_dir() -> anyhow::Result<PathBuf> {
    let metadata = workspace_metadata()?;
    Ok(PathBuf::from(
        metadata["target_directory"]
            .as_str()
            .context("cargo metadata has no target_directory")?,
    ))
}

/// Creates (or reuses) the virtualenv with every pinned requirement; returns its python.
/// Fails, never skips, when Python is missing.
fn python_venv(root: &Path) -> anyhow::Result<PathBuf> {
    venv(root, "py-venv", PYTHON_REQUIREMENTS)
}

/// The Python benchmark's virtualenv (FastAPI, uvicorn), apart from the tests' so that
/// neither's pins move the other's.
fn bench_python_venv(root: &Path) -> anyhow::Result<PathBuf> {
    venv(root, "py-bench-venv", BENCH_PYTHON_REQUIREMENTS)
}

/// Creates (or reuses, while the requirement files are unchanged) `<target>/<dir>` with
/// `requirements` installed; returns its python.
fn venv(root: &Path, dir: &str, requirements: &[&str]) -> anyhow::Result<PathBuf> {
    let venv = target_dir()?.join(dir);
    let python = venv.join("bin/python");
    let mut hasher = Sha256::new();
    for file in requirements {
        hasher
            .update(std::fs::read(root.join(file)).with_context(|| format!("cannot read {file}"))?);
    }
    let wanted = hex::encode(hasher.finalize());
    let stamp = venv.join("requirements.sha256");
    let current = std::fs::read_to_string(&stamp).unwrap_or_default();
    if python.exists() && current.trim() == wanted {
        return Ok(python);
    }
    let system_python = which_python()?;
    if venv.exists() {
        std::fs::remove_dir_all(&venv)?;
    }
    run(Command::new(&system_python)
        .arg("-m")
        .arg("venv")
        .arg(&venv))?;
    let mut install = Command::new(&python);
    install.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    for file in requirements {
        install.arg("-r").arg(root.join(file));
    }
    run(&mut install)?;
    std::fs::write(&stamp, &wanted)?;
    Ok(python)
}

/// Generates the scoring differential test's models and reference predictions, again only
/// when the generator or the requirements changed; returns the cases directory.
fn scoring_cases(root: &Path, python: &Path) -> anyhow::Result<PathBuf> {
    let cases = target_dir()?.join("scoring-cases");
    let mut hasher = Sha256::new();
    for file in PYTHON_REQUIREMENTS.iter().chain([&SCORING_GENERATOR]) {
        hasher
            .update(std::fs::read(root.join(file)).with_context(|| format!("cannot read {file}"))?);
    }
    let wanted = hex::encode(hasher.finalize());
    let stamp = target_dir()?.join("scoring-cases.sha256");
    if cases.join("manifest.json").exists()
        && std::fs::read_to_string(&stamp).unwrap_or_default().trim() == wanted
    {
        eprintln!("scoring cases up to date in {}", cases.display());
        return Ok(cases);
    }
    run(Command::new(python)
        .arg(root.join(SCORING_GENERATOR))
        .arg(&cases))?;
    std::fs::write(&stamp, &wanted)?;
    Ok(cases)
}

/// Generates the scoring benchmark's models and rows (a few seconds), again only when a
/// generator or the requirements changed; returns their directory.
fn scoring_bench_models(root: &Path, python: &Path) -> anyhow::Result<PathBuf> {
    let dir = target_dir()?.join("scoring-bench");
    let mut hasher = Sha256::new();
    for file in PYTHON_REQUIREMENTS
        .iter()
        .chain([&SCORING_GENERATOR, &SCORING_BENCH_GENERATOR])
    {
        hasher
            .update(std::fs::read(root.join(file)).with_context(|| format!("cannot read {file}"))?);
    }
    let wanted = hex::encode(hasher.finalize());
    let stamp = target_dir()?.join("scoring-bench.sha256");
    if dir.join("bench.json").exists()
        && std::fs::read_to_string(&stamp).unwrap_or_default().trim() == wanted
    {
        eprintln!("scoring bench models up to date in {}", dir.display());
        return Ok(dir);
    }
    run(Command::new(python)
        .arg(root.join(SCORING_BENCH_GENERATOR))
        .arg(&dir))?;
    std::fs::write(&stamp, &wanted)?;
    Ok(dir)
}

/// Runs pytest against the debug binary (the prediction tests serve the scoring cases).
fn python_tests(root: &Path, python: &Path, cases: &Path, pg_url: &str) -> anyhow::Result<()> {
    let binary = target_dir()?.join("debug/apinode");
    if !binary.exists() {
        bail!(
            "{} is missing: the build step should have produced it",
            binary.display()
        );
    }
    run(Command::new(python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(root.join(PYTHON_TESTS))
        .env("APINODE_BIN", &binary)
        .env("APINODE_SCORING_CASES", cases)
        .env("APINODE_TEST_PG_URL", pg_url)
        // The nodes' Python code environments (pandas for predictors), built once per
        // machine like the workers crate's own test environments beside them.
        .env("APINODE_ENVS_DIR", target_dir()?.join("workers-envs")))
}

/// The PostgreSQL the referenced-data tests use: `APINODE_TEST_PG_URL` when set, else the
/// server on 127.0.0.1:5432 (database `test`, trust auth). Fails, never skips, when it does
/// not accept connections.
fn postgres_url() -> anyhow::Result<String> {
    const DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";
    let url = std::env::var("APINODE_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT.to_owned());
    // host:port of a `postgres://[user@]host[:port]/db` URL.
    let rest = url.split("://").nth(1).unwrap_or(&url);
    let host_port = rest.rsplit('@').next().unwrap_or(rest);
    let host_port = host_port.split(['/', '?']).next().unwrap_or(host_port);
    let address = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(&address)
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| {
            std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(3)).is_ok()
        });
    if !reachable {
        bail!(
            "PostgreSQL does not accept connections at {address} ({url}): start it, or point \
             APINODE_TEST_PG_URL at a database the tests may create tables in"
        );
    }
    eprintln!("referenced-data tests use {url}");
    Ok(url)
}

/// The R endpoints' tests need `Rscript` with jsonlite: installs Debian's r-base-core and
/// r-cran-jsonlite when they are missing, and fails (never skips) if that does not work.
fn ensure_r() -> anyhow::Result<()> {
    let has_r = || {
        Command::new("Rscript")
            .args(["-e", "library(jsonlite)"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has_r() {
        return Ok(());
    }
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "r-base-core", "r-cran-jsonlite"])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    if install().is_err() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        install()?;
    }
    if !has_r() {
        bail!("R with jsonlite is still missing after installing r-base-core and r-cran-jsonlite");
    }
    Ok(())
}

fn which_python() -> anyhow::Result<PathBuf> {
    for candidate in ["python3", "python"] {
        if Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(PathBuf::from(candidate));
        }
    }
    bail!(
        "Python 3 is required for the conformance tests and was not found on PATH (install python3 and python3-venv)"
    )
}
