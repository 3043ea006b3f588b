//! Code environments: a Python virtualenv per `requirements.txt`, built once and cached by
//! content hash; for R, a check that the packages the code needs are installed.
//!
//! A Python environment lives in `<cache>/py-<key>`, where the key is the SHA-256 of the
//! requirements text and the base interpreter's identity (real path and `sys.version`). It is
//! built in a temporary sibling directory and renamed into place only once pip succeeded, with a
//! `.apinode-env.json` marker written last; a directory without the marker is never used. Builders
//! of the same key take an exclusive file lock (`<cache>/py-<key>.lock`, across processes), so a
//! second builder waits for the first and reuses its result instead of running pip again.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Output;
use tokio::process::Command;

/// Bumped when the way environments are built changes, so old ones are not reused.
const LAYOUT_VERSION: &str = "apinode-workers python env v1";
const MARKER: &str = ".apinode-env.json";
/// Keep this much of a failing command's output in the error (pip can be verbose).
const OUTPUT_LIMIT: usize = 16 * 1024;

/// Builds and caches Python virtualenvs under one directory.
#[derive(Debug, Clone)]
pub struct PythonEnvs {
    cache_dir: PathBuf,
    base_interpreter: PathBuf,
    /// Asked once: starting the interpreter costs tens of milliseconds.
    identity: tokio::sync::OnceCell<String>,
}

/// A ready virtualenv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonEnv {
    /// The environment's directory (`<cache>/py-<key>`).
    pub dir: PathBuf,
    /// Its interpreter: put it in [`WorkerSpec::interpreter`](crate::WorkerSpec).
    pub python: PathBuf,
    /// The content key (hex SHA-256) the directory is named after.
    pub key: String,
    /// Whether it already existed (`false`: this call built it).
    pub reused: bool,
}

impl PythonEnvs {
    /// Environments under `cache_dir` (created when needed), built from `python3`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        PythonEnvs {
            cache_dir: cache_dir.into(),
            base_interpreter: "python3".into(),
            identity: tokio::sync::OnceCell::new(),
        }
    }

    /// Builds from another interpreter (a path, or a name looked up in `PATH`).
    pub fn with_base_interpreter(mut self, python: impl Into<PathBuf>) -> Self {
        self.base_interpreter = python.into();
        self.identity = tokio::sync::OnceCell::new();
        self
    }

    /// The environment for `requirements` (the text of a `requirements.txt`): the cached one,
    /// or a new one built with `python -m venv` and `pip install -r`. A failing install is an
    /// [`Error::EnvBuild`] holding pip's output; nothing is cached then.
    pub async fn ensure(&self, requirements: &str) -> Result<PythonEnv> {
        let identity = self
            .identity
            .get_or_try_init(|| self.interpreter_identity())
            .await?;
        let key = env_key(identity, requirements);
        let dir = self.cache_dir.join(format!("py-{key}"));
        let ready = |reused| PythonEnv {
            python: dir.join("bin").join("python"),
            dir: dir.clone(),
            key: key.clone(),
            reused,
        };
        if dir.join(MARKER).is_file() {
            return Ok(ready(true));
        }
        tokio::fs::create_dir_all(&self.cache_dir)
            .await
            .map_err(|e| Error::io(&self.cache_dir, e))?;
        let lock_path = self.cache_dir.join(format!("py-{key}.lock"));
        let lock = lock_exclusive(lock_path).await?;
        if dir.join(MARKER).is_file() {
            return Ok(ready(true));
        }
        let result = self.build(&dir, &key, identity, requirements).await;
        drop(lock);
        result.map(|()| ready(false))
    }

    /// The base interpreter's real path and version: two interpreters never share a key.
    async fn interpreter_identity(&self) -> Result<String> {
        let script = "import os, sys; print(os.path.realpath(sys.executable)); print(sys.version)";
        let mut command = Command::new(&self.base_interpreter);
        command.arg("-c").arg(script);
        let output = run(
            command,
            &self.base_interpreter.display().to_string(),
            "-c <version>",
        )
        .await?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    async fn build(&self, dir: &Path, key: &str, identity: &str, requirements: &str) -> Result<()> {
        let started = std::time::Instant::now();
        let staging = self.cache_dir.join(format!(".py-{key}.building"));
        // Under the lock, a leftover staging directory is a builder that died: start over.
        remove_dir_if_present(&staging).await?;
        remove_dir_if_present(dir).await?;
        let built = async {
            let python = self.base_interpreter.display().to_string();
            let mut venv = Command::new(&self.base_interpreter);
            venv.arg("-m").arg("venv").arg(&staging);
            run(venv, &python, "-m venv").await?;

            let requirements_file = staging.join("requirements.txt");
            tokio::fs::write(&requirements_file, requirements)
                .await
                .map_err(|e| Error::io(&requirements_file, e))?;
            let mut pip = Command::new(staging.join("bin").join("python"));
            pip.args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
            ])
            .arg(&requirements_file)
            .env("PIP_NO_INPUT", "1");
            run(pip, "pip", "install -r requirements.txt").await?;

            let marker = staging.join(MARKER);
            let about = serde_json::json!({
                "layout": LAYOUT_VERSION,
                "interpreter": identity,
                "requirements": requirements,
            });
            tokio::fs::write(&marker, about.to_string())
                .await
                .map_err(|e| Error::io(&marker, e))?;
            // The venv's interpreter finds its site-packages relative to itself, so the
            // environment works from its final name.
            tokio::fs::rename(&staging, dir)
                .await
                .map_err(|e| Error::io(dir, e))
        }
        .await;
        if built.is_err() {
            let _ = tokio::fs::remove_dir_all(&staging).await;
        } else {
            tracing::info!(dir = %dir.display(), elapsed_ms = started.elapsed().as_millis() as u64,
                "built a Python environment");
        }
        built
    }
}

fn env_key(identity: &str, requirements: &str) -> String {
    let mut hash = Sha256::new();
    for part in [LAYOUT_VERSION, identity, requirements] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(&hash.finalize()[..16])
}

/// Checks that every R package in `packages` can be loaded by `rscript`. A missing one is an
/// [`Error::MissingRPackages`] with R's own message; nothing is installed (no CRAN here).
pub async fn check_r_packages(rscript: impl AsRef<Path>, packages: &[String]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    let script = r#"for (p in commandArgs(TRUE)) {
  problem <- tryCatch({ loadNamespace(p); NULL }, error = function(e) conditionMessage(e))
  if (!is.null(problem)) cat(p, "\t", gsub("[\r\n]+", " ", problem), "\n", sep = "")
}"#;
    let rscript = rscript.as_ref();
    let mut command = Command::new(rscript);
    command.args(["--vanilla", "-e", script]).args(packages);
    let output = run(
        command,
        &rscript.display().to_string(),
        "-e <requireNamespace>",
    )
    .await?;
    let report = String::from_utf8_lossy(&output.stdout);
    let (missing, messages): (Vec<String>, Vec<String>) = report
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(package, message)| (package.to_owned(), message.trim().to_owned()))
        .unzip();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::MissingRPackages {
            packages: missing,
            message: messages.join("; "),
        })
    }
}

/// Runs a command to completion; a failure to start is [`Error::Spawn`], a non-zero exit is
/// [`Error::EnvBuild`] with its output.
async fn run(mut command: Command, program: &str, step: &str) -> Result<Output> {
    command
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = command.output().await.map_err(|source| Error::Spawn {
        program: program.to_owned(),
        hint: if source.kind() == std::io::ErrorKind::NotFound {
            " (is it installed and in PATH?)"
        } else {
            ""
        },
        source,
    })?;
    if output.status.success() {
        return Ok(output);
    }
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    if text.trim().is_empty() {
        text = String::from_utf8_lossy(&output.stdout).into_owned();
    }
    if text.len() > OUTPUT_LIMIT {
        let mut cut = text.len() - OUTPUT_LIMIT;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text = format!("[...]{}", &text[cut..]);
    }
    Err(Error::EnvBuild {
        step: format!(
            "{program} {step} ({})",
            crate::worker::describe_exit(Some(output.status))
        ),
        output: text.trim_end().to_owned(),
    })
}

async fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match tokio::fs::remove_dir_all(dir).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(dir, e)),
        _ => Ok(()),
    }
}

/// An exclusive lock on `path` (created if needed), held until the returned file is dropped.
async fn lock_exclusive(path: PathBuf) -> Result<std::fs::File> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.lock().map_err(|e| Error::io(&path, e))?;
        Ok(file)
    })
    .await
    .expect("the lock task does not panic")
}

#[cfg(test)]
mod tests {
    use super::env_key;

    #[test]
    fn the_key_depends_on_the_interpreter_and_the_requirements() {
        let base = env_key("/usr/bin/python3.11\n3.11.7", "six\n");
        assert_eq!(base.len(), 32);
        assert_eq!(base, env_key("/usr/bin/python3.11\n3.11.7", "six\n"));
        assert_ne!(base, env_key("/usr/bin/python3.12\n3.12.1", "six\n"));
        assert_ne!(base, env_key("/usr/bin/python3.11\n3.11.7", "six==1.16\n"));
    }
}
