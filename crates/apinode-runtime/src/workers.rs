//! Python and R endpoints (`python-function`, `r-function`, `python-prediction`,
//! `r-prediction`): each endpoint of a generation gets a pool of worker processes
//! (`apinode-workers`), started when the generation loads; a query is answered by a
//! [`WorkerCall`] that the caller awaits.
//!
//! Why a runtime of its own: the pools' processes and pipes live on a small tokio runtime the
//! node owns ([`WorkerHost`]), so loading a generation works from any thread (an admin import
//! runs on a blocking thread, `Runtime::open` before any server exists) and a query awaits its
//! call from whatever runtime serves HTTP.

use crate::error::{Error, Result};
use crate::prediction::{Prepared, enrich_record, write_ignored};
use apinode_bundle::{Bundle, EndpointKind, EndpointSpec, PoolSpec};
use apinode_lookup::Enrichment;
use apinode_workers::{
    LogTags, Pool, PoolConfig, PythonEnvs, WorkerKind, WorkerSpec, check_r_packages,
};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Where workers run and what they run with; one per node.
#[derive(Debug)]
pub(crate) struct WorkerHost {
    /// Started on first use: a node without Python or R endpoints runs no extra threads.
    runtime: OnceLock<tokio::runtime::Runtime>,
    /// Code environments built from `requirements.txt`, by content hash.
    envs_dir: PathBuf,
    python: PathBuf,
    rscript: PathBuf,
}

impl WorkerHost {
    pub(crate) fn new(envs_dir: PathBuf, python: PathBuf, rscript: PathBuf) -> WorkerHost {
        WorkerHost {
            runtime: OnceLock::new(),
            envs_dir,
            python,
            rscript,
        }
    }

    fn handle(&self) -> Result<tokio::runtime::Handle> {
        if let Some(runtime) = self.runtime.get() {
            return Ok(runtime.handle().clone());
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("apinode-workers")
            .enable_all()
            .build()
            .map_err(|e| Error::Unavailable(format!("cannot start the worker runtime: {e}")))?;
        Ok(self.runtime.get_or_init(|| runtime).handle().clone())
    }

    /// Runs `work` on the workers' runtime and waits for it, from a thread that is not
    /// driving a runtime (loading happens on blocking threads).
    fn block_on<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T> {
        let handle = self.handle()?;
        let (tx, rx) = std::sync::mpsc::channel();
        handle.spawn(async move {
            let _ = tx.send(work.await);
        });
        rx.recv().map_err(|_| Error::Unservable {
            generation: String::new(),
            message: "the worker runtime stopped while starting a pool".into(),
        })
    }
}

impl Drop for WorkerHost {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio forbids inside another runtime (the server's
        // may be where the node is dropped): let its threads end on their own.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A Python or R endpoint: its pool and, for the prediction kinds, its enrichment.
#[derive(Debug)]
pub(crate) struct WorkerEndpoint {
    pool: Arc<Pool>,
    handle: tokio::runtime::Handle,
    pub(crate) enrichment: Enrichment,
}

/// What a generation's workers need from the node: where to put its files and who it is.
pub(crate) struct WorkerContext<'a> {
    pub(crate) host: &'a WorkerHost,
    pub(crate) service: &'a str,
    /// The generation's files (code, requirements, folders) are written under this folder.
    pub(crate) files_dir: PathBuf,
}

/// Writes the files worker endpoints read (everything but the bundled datasets, which the
/// node holds in memory) into `dir`, replacing what an earlier start left there.
pub(crate) fn extract_files(bundle: &Bundle, dir: &Path) -> std::result::Result<(), String> {
    let datasets: Vec<&str> = bundle
        .manifest()
        .datasets
        .iter()
        .filter_map(|d| match &d.source {
            apinode_bundle::DatasetSource::Bundled { file, .. } => Some(file.as_str()),
            apinode_bundle::DatasetSource::Referenced { .. } => None,
        })
        .collect();
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    for (path, bytes) in bundle.files() {
        if datasets.contains(&path) {
            continue;
        }
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&target, bytes)
            .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    }
    Ok(())
}

/// Starts the pool of a Python or R endpoint: its code environment first (a virtualenv built
/// from `requirements`, cached by content; R packages checked), then `min_workers` workers
/// that load the code. Fails with the interpreter's, pip's or R's own error.
pub(crate) fn load_worker_endpoint(
    bundle: &Bundle,
    spec: &EndpointSpec,
    context: &WorkerContext<'_>,
    enrichment: Enrichment,
) -> std::result::Result<WorkerEndpoint, String> {
    let id = &spec.id;
    let host = context.host;
    let files = &context.files_dir;
    let folder_path = |name: &String| -> std::result::Result<PathBuf, String> {
        bundle
            .manifest()
            .folders
            .iter()
            .find(|f| &f.name == name)
            .map(|f| files.join(&f.path))
            .ok_or_else(|| format!("endpoint `{id}` names folder `{name}`, which is not declared"))
    };
    let (kind, code, folders, interpreter) =
        match (spec.kind, &spec.python, &spec.r) {
            (EndpointKind::PythonFunction | EndpointKind::PythonPrediction, Some(python), _) => {
                let kind = if spec.kind == EndpointKind::PythonFunction {
                    WorkerKind::PythonFunction {
                        function: python.function.clone().ok_or_else(|| {
                            format!("endpoint `{id}`: `python.function` is required")
                        })?,
                    }
                } else {
                    WorkerKind::PythonPredictor {
                        class: python.class.clone(),
                    }
                };
                let mut requirements = match &python.requirements {
                    Some(path) => String::from_utf8_lossy(bundle.file(path).ok_or_else(|| {
                        format!("endpoint `{id}`: `{path}` is not in the bundle")
                    })?)
                    .into_owned(),
                    None => String::new(),
                };
                // A predictor receives a pandas DataFrame: its environment always has pandas, as
                // Dataiku's code environments do.
                if kind.is_predictor() && !mentions_package(&requirements, "pandas") {
                    requirements.push_str("\npandas\n");
                }
                let interpreter = if requirements.trim().is_empty() {
                    host.python.clone()
                } else {
                    let envs = PythonEnvs::new(host.envs_dir.clone())
                        .with_base_interpreter(host.python.clone());
                    let env = host
                        .block_on(async move { envs.ensure(&requirements).await })
                        .map_err(|e| e.to_string())?
                        .map_err(|e| format!("endpoint `{id}`: {e}"))?;
                    env.python
                };
                (kind, &python.code, &python.folders, interpreter)
            }
            (EndpointKind::RFunction | EndpointKind::RPrediction, _, Some(r)) => {
                let kind = if spec.kind == EndpointKind::RFunction {
                    WorkerKind::RFunction {
                        function: r.function.clone(),
                    }
                } else {
                    WorkerKind::RPredictor {
                        function: r.function.clone(),
                    }
                };
                if !r.packages.is_empty() {
                    let (rscript, packages) = (host.rscript.clone(), r.packages.clone());
                    host.block_on(async move { check_r_packages(rscript, &packages).await })
                        .map_err(|e| e.to_string())?
                        .map_err(|e| format!("endpoint `{id}`: {e}"))?;
                }
                (kind, &r.code, &r.folders, host.rscript.clone())
            }
            _ => {
                return Err(format!(
                    "endpoint `{id}` of kind `{}` has no `{}` section",
                    spec.kind,
                    spec.kind.section()
                ));
            }
        };
    let mut worker = WorkerSpec::new(kind, files.join(code));
    worker.interpreter = interpreter;
    worker.folders = folders
        .iter()
        .map(folder_path)
        .collect::<std::result::Result<_, _>>()?;
    // Dataiku hands a predictor the managed folder of the endpoint: its first folder here.
    worker.data_folder = worker.folders.first().cloned();
    worker.working_dir = Some(files.clone());
    let config = pool_config(
        spec.pool.as_ref().cloned().unwrap_or_default(),
        LogTags {
            service: context.service.to_owned(),
            endpoint: id.clone(),
            generation: bundle.manifest().version.clone(),
        },
    );
    let pool = host
        .block_on(async move { Pool::start(worker, config).await })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("endpoint `{id}`: {e}"))?;
    Ok(WorkerEndpoint {
        pool: Arc::new(pool),
        handle: host.handle().map_err(|e| e.to_string())?,
        enrichment,
    })
}

fn pool_config(spec: PoolSpec, tags: LogTags) -> PoolConfig {
    let mut config = PoolConfig::default();
    config.min_workers = spec.min_workers as usize;
    config.max_workers = spec.max_workers.max(1) as usize;
    config.queue_capacity = spec.queue as usize;
    config.call_timeout = Duration::from_millis(spec.timeout_ms);
    config.tags = tags;
    config
}

/// Whether a requirements text names `package` (any version specifier, any case).
fn mentions_package(requirements: &str, package: &str) -> bool {
    requirements.lines().any(|line| {
        let name: String = line
            .trim()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .collect();
        name.eq_ignore_ascii_case(package)
    })
}

/// Reports a finished call to the endpoint's metrics: items, microseconds, success.
pub(crate) type OnDone = Box<dyn FnOnce(usize, u64, bool) + Send + Sync>;

/// A query handed to an endpoint's workers: await [`WorkerCall::finish`].
pub struct WorkerCall {
    pool: Arc<Pool>,
    handle: tokio::runtime::Handle,
    request: WorkerRequest,
    pub(crate) on_done: OnDone,
}

impl std::fmt::Debug for WorkerCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerCall")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum WorkerRequest {
    /// `run`: the keyword arguments.
    Run(Map<String, Value>),
    /// `predict` / `predict-multi`: every record, enriched; those enrichment ignored are
    /// answered without the workers.
    Predict {
        records: Vec<Prepared<'static>>,
        enrich_micros: u64,
    },
}

/// A worker endpoint's answer.
#[derive(Debug)]
pub enum WorkerOutput {
    /// `run`: the function's return value, as JSON text.
    Run {
        response: Box<RawValue>,
        execution_micros: u64,
    },
    /// `predict` / `predict-multi`: result objects, as for visual models.
    Predict(crate::PredictOutput),
}

impl WorkerEndpoint {
    /// Drains the pool in the background (see [`Pool::shutdown`]).
    pub(crate) fn drain(&self) {
        let pool = self.pool.clone();
        self.handle.spawn(async move { pool.shutdown().await });
    }

    /// A `run` query: the body's keys, but `dispatch`, are the function's arguments.
    pub(crate) fn run_call(&self, body: &Value) -> Result<WorkerCall> {
        let mut args = body.as_object().cloned().unwrap_or_default();
        args.remove("dispatch");
        Ok(self.call(WorkerRequest::Run(args)))
    }

    /// A `predict` or `predict-multi` query: records enriched now, scored by the workers.
    pub(crate) fn predict_call(
        &self,
        records: &[&Map<String, Value>],
        multi: bool,
    ) -> Result<WorkerCall> {
        let start = Instant::now();
        let mut prepared = Vec::with_capacity(records.len());
        for (i, features) in records.iter().enumerate() {
            let record = enrich_record(&self.enrichment, features).map_err(|(step, source)| {
                Error::Enrichment {
                    item: multi.then_some(i),
                    step,
                    source,
                }
            })?;
            prepared.push(record.into_owned());
        }
        Ok(self.predict_prepared(prepared, start.elapsed().as_micros() as u64))
    }

    /// A prediction call on records already enriched.
    pub(crate) fn predict_prepared(
        &self,
        records: Vec<Prepared<'static>>,
        enrich_micros: u64,
    ) -> WorkerCall {
        self.call(WorkerRequest::Predict {
            records,
            enrich_micros,
        })
    }

    fn call(&self, request: WorkerRequest) -> WorkerCall {
        WorkerCall {
            pool: self.pool.clone(),
            handle: self.handle.clone(),
            request,
            on_done: Box::new(|_, _, _| {}),
        }
    }
}

impl WorkerCall {
    /// Runs the call on the workers and waits for the answer. The call runs on the workers'
    /// runtime; the caller's future only waits, so it may be polled by any runtime.
    pub async fn finish(self) -> Result<WorkerOutput> {
        let WorkerCall {
            pool,
            handle,
            request,
            on_done,
        } = self;
        let start = Instant::now();
        let items = match &request {
            WorkerRequest::Run(_) => 1,
            WorkerRequest::Predict { records, .. } => records.len(),
        };
        let outcome = handle
            .spawn(async move { answer(&pool, request).await })
            .await
            .unwrap_or_else(|join| {
                Err(Error::Unavailable(format!(
                    "the worker call was interrupted: {join}"
                )))
            });
        on_done(items, start.elapsed().as_micros() as u64, outcome.is_ok());
        outcome
    }
}

async fn answer(pool: &Pool, request: WorkerRequest) -> Result<WorkerOutput> {
    let start = Instant::now();
    match request {
        WorkerRequest::Run(args) => {
            let response = pool.run(&args).await.map_err(worker_error)?;
            Ok(WorkerOutput::Run {
                response,
                execution_micros: start.elapsed().as_micros() as u64,
            })
        }
        WorkerRequest::Predict {
            records,
            enrich_micros,
        } => {
            let to_score: Vec<&Map<String, Value>> = records
                .iter()
                .filter_map(|p| match p {
                    Prepared::Score(features) => Some(&**features),
                    Prepared::Ignored(..) => None,
                })
                .collect();
            // A worker error concerns the whole batch: no item to name.
            let predictions = if to_score.is_empty() {
                None
            } else {
                Some(pool.predict(&to_score).await.map_err(worker_error)?)
            };
            let mut out = crate::PredictOutput {
                buffer: Vec::with_capacity(records.len() * 128),
                items: Vec::with_capacity(records.len()),
                enrich_micros,
                predict_micros: 0,
            };
            let mut scored = 0;
            for record in &records {
                let begin = out.buffer.len();
                match (record, &predictions) {
                    (Prepared::Score(_), Some(predictions)) => {
                        write_worker_result(predictions, scored, &mut out.buffer);
                        scored += 1;
                    }
                    (Prepared::Ignored(code, _), _) => write_ignored(
                        code,
                        "the record was ignored by enrichment",
                        None,
                        &mut out.buffer,
                    ),
                    // Not reached: a record to score means the workers were called.
                    (Prepared::Score(_), None) => write_ignored(
                        "IGNORED_BY_MODEL",
                        "the predictor returned no prediction for this record",
                        None,
                        &mut out.buffer,
                    ),
                }
                out.items.push(begin..out.buffer.len());
            }
            out.predict_micros = start.elapsed().as_micros() as u64;
            Ok(WorkerOutput::Predict(out))
        }
    }
}

fn worker_error(source: apinode_workers::Error) -> Error {
    Error::Worker { source }
}

/// Writes one row of a predictor's answer: `{"prediction": ..., "probas": {...},
/// "customKeys": {...}, "ignored": false}`, or `ignored` when the predictor returned no
/// prediction for it (NaN or None).
fn write_worker_result(predictions: &apinode_workers::Predictions, row: usize, out: &mut Vec<u8>) {
    let predicted = &predictions.rows[row];
    let Some(prediction) = &predicted.prediction else {
        write_ignored(
            "IGNORED_BY_MODEL",
            "the predictor returned no prediction for this record",
            None,
            out,
        );
        return;
    };
    out.extend_from_slice(b"{\"prediction\":");
    let _ = serde_json::to_writer(&mut *out, prediction);
    if !predictions.classes.is_empty() {
        out.extend_from_slice(b",\"probas\":{");
        for (k, (class, p)) in predictions.probas(row).enumerate() {
            if k > 0 {
                out.push(b',');
            }
            let _ = serde_json::to_writer(&mut *out, class);
            out.push(b':');
            let _ = serde_json::to_writer(&mut *out, &p);
        }
        out.push(b'}');
    }
    if let Some(keys) = &predicted.custom_keys {
        out.extend_from_slice(b",\"customKeys\":");
        let _ = serde_json::to_writer(&mut *out, keys);
    }
    out.extend_from_slice(b",\"ignored\":false}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_are_read_for_a_package_name() {
        assert!(mentions_package("numpy\nPandas>=2.0\n", "pandas"));
        assert!(mentions_package(
            "  pandas ; python_version > '3'",
            "pandas"
        ));
        assert!(!mentions_package("pandas-stubs\n# pandas\n", "pandas"));
        assert!(!mentions_package("", "pandas"));
    }
}
