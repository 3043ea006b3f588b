//! The runtime: services, generations, the active sets, queries and admin operations.

use crate::error::{Error, Result};
use crate::generation::{Credentials, Endpoint, Handler, LoadedGeneration};
use crate::metrics::{EndpointMetrics, Metrics, ServiceMetrics};
use crate::prediction::{PredictOutput, enrich_batch, features_of, refuse_explanations};
use crate::referenced::{Connections, PendingOutput};
use crate::state::{self, GenerationRecord, Mapping, NodeState, ServiceState};
use crate::workers::{WorkerCall, WorkerContext, WorkerHost, WorkerOutput};
use apinode_bundle::{Bundle, EndpointKind, Limits};
use apinode_lookup::{Match, Record, SqlAnswer};
use arc_swap::ArcSwap;
use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where state and generation archives live; created if absent.
    pub data_dir: PathBuf,
    pub limits: Limits,
    /// Where Python code environments (one virtualenv per `requirements.txt` content) are
    /// built and kept; `<data_dir>/envs` when `None`.
    pub envs_dir: Option<PathBuf>,
    /// The Python that runs Python endpoints, or builds their environments (`python3`).
    pub python: PathBuf,
    /// The `Rscript` that runs R endpoints.
    pub rscript: PathBuf,
    /// The node's PostgreSQL connections, by name, for referenced datasets.
    pub connections: BTreeMap<String, apinode_lookup::PgConfig>,
    /// A bundle's connection name → the node's (names not listed are used as they are).
    pub connection_remap: BTreeMap<String, String>,
    /// Per service id, the same; wins over `connection_remap` for that service's bundles.
    pub service_connection_remap: BTreeMap<String, BTreeMap<String, String>>,
}

impl RuntimeConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> RuntimeConfig {
        RuntimeConfig {
            data_dir: data_dir.into(),
            limits: Limits::default(),
            envs_dir: None,
            python: PathBuf::from("python3"),
            rscript: PathBuf::from("Rscript"),
            connections: BTreeMap::new(),
            connection_remap: BTreeMap::new(),
            service_connection_remap: BTreeMap::new(),
        }
    }
}

/// The user-API routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Predict,
    PredictMulti,
    Lookup,
    LookupMulti,
    Query,
    Run,
}

impl Action {
    pub fn from_route(route: &str) -> Option<Action> {
        Some(match route {
            "predict" => Action::Predict,
            "predict-multi" => Action::PredictMulti,
            "lookup" => Action::Lookup,
            "lookup-multi" => Action::LookupMulti,
            "query" => Action::Query,
            "run" => Action::Run,
            _ => return None,
        })
    }

    pub fn route(self) -> &'static str {
        match self {
            Action::Predict => "predict",
            Action::PredictMulti => "predict-multi",
            Action::Lookup => "lookup",
            Action::LookupMulti => "lookup-multi",
            Action::Query => "query",
            Action::Run => "run",
        }
    }
}

/// The query's `dispatch` object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dispatch {
    /// Answer with this generation, whatever the mapping says.
    pub forced_generation: Option<String>,
    /// With a hash-based mapping, the same key always reaches the same generation.
    pub dispatch_key: Option<String>,
}

#[derive(Debug)]
pub struct CallRequest<'a> {
    pub service: &'a str,
    pub endpoint: &'a str,
    pub action: Action,
    pub body: CallBody<'a>,
    pub dispatch: Dispatch,
    pub credentials: Credentials<'a>,
}

/// A query's body, as its caller parsed it.
#[derive(Debug, Clone, Copy)]
pub enum CallBody<'a> {
    /// The whole body as a JSON tree (an empty body is `{}`).
    Json(&'a Value),
    /// A `lookup` call's `data` object, parsed without a tree (an `apinode_lookup::JsonRecord`),
    /// for a body that holds nothing else the runtime reads. An in-memory lookup reads its
    /// keys straight from it; any other endpoint gets the tree `{"data": ...}` built from it.
    LookupData(&'a (dyn Record + 'a)),
    /// A `predict` call's `features` object, parsed without a tree, for a body that holds
    /// nothing else the runtime reads (no `dispatch`, explanations not asked for). A model
    /// scored here without enrichment reads its features straight from it; any other endpoint
    /// gets the tree `{"features": ...}` built from it.
    PredictFeatures(&'a (dyn Record + 'a)),
    /// A `lookup-multi` call's items' `data` objects, parsed without a tree, for a body that
    /// holds nothing else the runtime reads. An in-memory lookup reads every item's keys
    /// straight from them; any other endpoint gets the tree `{"items": [{"data": ...}, ...]}`.
    LookupItems(&'a [&'a (dyn Record + 'a)]),
    /// A `predict-multi` call's items' `features` objects, parsed without a tree, for a body
    /// that holds nothing else the runtime reads (no `dispatch`, explanations not asked for).
    /// A model scored here without enrichment reads them straight; any other endpoint gets the
    /// tree `{"items": [{"features": ...}, ...]}`.
    PredictItems(&'a [&'a (dyn Record + 'a)]),
}

impl CallBody<'_> {
    /// The body as a JSON tree: borrowed, or built from the records read without one.
    fn json(&self) -> Cow<'_, Value> {
        match self {
            CallBody::Json(body) => Cow::Borrowed(body),
            CallBody::LookupData(record) | CallBody::PredictFeatures(record) => {
                let name = match self {
                    CallBody::LookupData(_) => "data",
                    _ => "features",
                };
                let mut body = serde_json::Map::new();
                body.insert(name.into(), Value::Object(record.to_map()));
                Cow::Owned(Value::Object(body))
            }
            CallBody::LookupItems(records) | CallBody::PredictItems(records) => {
                let name = match self {
                    CallBody::LookupItems(_) => "data",
                    _ => "features",
                };
                let items = records
                    .iter()
                    .map(|record| {
                        let mut item = serde_json::Map::new();
                        item.insert(name.into(), Value::Object(record.to_map()));
                        Value::Object(item)
                    })
                    .collect();
                let mut body = serde_json::Map::new();
                body.insert("items".into(), Value::Array(items));
                Cow::Owned(Value::Object(body))
            }
        }
    }

    /// The number of items of a multi call's body (0 when it has no `items` array), without
    /// building a tree.
    fn items(&self) -> usize {
        match self {
            CallBody::Json(body) => body
                .get("items")
                .and_then(Value::as_array)
                .map_or(0, Vec::len),
            CallBody::LookupItems(records) | CallBody::PredictItems(records) => records.len(),
            CallBody::LookupData(_) | CallBody::PredictFeatures(_) => 0,
        }
    }
}

#[derive(Debug)]
pub struct CallResponse {
    /// The generation that answered (`apiContext.serviceGeneration`).
    pub generation: Arc<str>,
    /// The id of the API key that authenticated the query, if any.
    pub key_id: Option<String>,
    /// The kind of the endpoint that answered (`dataset-lookup`, `prediction`, ...).
    pub endpoint_kind: &'static str,
    pub output: Output,
    /// Time spent in the endpoint, in microseconds.
    pub endpoint_micros: u64,
}

#[derive(Debug)]
pub enum Output {
    Lookup(LookupOutput),
    Predict(PredictOutput),
    /// A Python or R endpoint's call, handed to its workers: await [`WorkerCall::finish`].
    /// Its metrics are recorded when it finishes.
    Worker(WorkerCall),
    /// An answer that needs I/O (a lookup on a referenced dataset): await
    /// [`PendingOutput::finish`]. Its metrics are recorded when it finishes.
    Pending(PendingOutput),
    /// A SQL query's answer (what a pending SQL query resolves to).
    Sql(SqlAnswer),
}

/// Lookup results: one item per queried record; matched rows are JSON objects written into
/// `buffer`, referenced by byte range.
#[derive(Debug, Default)]
pub struct LookupOutput {
    pub buffer: Vec<u8>,
    pub items: Vec<LookupItem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupItem {
    /// The record's `data` object is `buffer[range]`.
    Data(std::ops::Range<usize>),
    Ignored {
        reason: &'static str,
    },
}

impl LookupOutput {
    pub fn data(&self, item: &LookupItem) -> Option<&[u8]> {
        match item {
            LookupItem::Data(range) => Some(&self.buffer[range.clone()]),
            LookupItem::Ignored { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSummary {
    pub id: String,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationInfo {
    pub id: String,
    /// Milliseconds since the epoch.
    pub imported_on: i64,
    pub archive_size: u64,
    pub archive_sha256: String,
    /// Whether the generation is loaded and can answer (false only if it failed to load at
    /// start-up).
    pub loaded: bool,
    pub endpoints: Vec<(String, EndpointKind)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationsView {
    pub generations: Vec<GenerationInfo>,
    pub mapping: Option<Mapping>,
    pub enabled: bool,
}

/// What a query reads with one atomic load.
#[derive(Debug, Default)]
struct ActiveSet {
    enabled: bool,
    hash_based: bool,
    /// Generations of the mapping with the upper bound of their cumulative probability.
    entries: Vec<(Arc<LoadedGeneration>, f64)>,
    /// Every loaded generation, for forced dispatch.
    all: HashMap<String, Arc<LoadedGeneration>>,
}

#[derive(Debug)]
struct ServiceHandle {
    active: ArcSwap<ActiveSet>,
    /// Loaded generations; changed under the runtime's state lock only.
    loaded: Mutex<HashMap<String, Arc<LoadedGeneration>>>,
}

/// An API node's services and generations. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Runtime {
    data_dir: PathBuf,
    limits: Limits,
    /// Serializes admin changes; never taken by queries.
    state: Mutex<NodeState>,
    services: ArcSwap<HashMap<String, Arc<ServiceHandle>>>,
    started: Instant,
    /// PostgreSQL connections for referenced datasets.
    connections: Connections,
    /// Python and R workers; last, so pools end before their runtime.
    workers: WorkerHost,
}

impl Runtime {
    /// Opens (or creates) the data directory and loads every imported generation. Slow for
    /// big datasets: call it from a blocking context.
    pub fn open(config: RuntimeConfig) -> Result<Runtime> {
        let data_dir = config.data_dir;
        fs::create_dir_all(&data_dir).map_err(|e| Error::storage(&data_dir, e))?;
        let workers = WorkerHost::new(
            config.envs_dir.unwrap_or_else(|| data_dir.join("envs")),
            config.python,
            config.rscript,
        );
        let connections = Connections::new(
            &config.connections,
            &config.connection_remap,
            &config.service_connection_remap,
        )?;
        let node_state = state::load(&data_dir)?;
        let mut services = HashMap::new();
        for (service_id, service_state) in &node_state.services {
            let mut loaded = HashMap::new();
            for record in &service_state.generations {
                let loading = (&workers, &connections);
                match load_archive(&data_dir, &config.limits, loading, service_id, record) {
                    Ok(generation) => {
                        loaded.insert(record.id.clone(), Arc::new(generation));
                    }
                    Err(e) => tracing::error!(
                        service = %service_id, generation = %record.id,
                        "generation failed to load at start-up and will not serve: {e}"
                    ),
                }
            }
            let handle = ServiceHandle {
                active: ArcSwap::from_pointee(ActiveSet::default()),
                loaded: Mutex::new(loaded),
            };
            handle.publish(service_id, service_state);
            services.insert(service_id.clone(), Arc::new(handle));
        }
        Ok(Runtime {
            data_dir,
            limits: config.limits,
            state: Mutex::new(node_state),
            services: ArcSwap::from_pointee(services),
            started: Instant::now(),
            connections,
            workers,
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub(crate) fn lock_state(&self) -> MutexGuard<'_, NodeState> {
        // A panic while holding the lock cannot leave the state half-changed on disk (every
        // change is saved atomically), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn save(&self, state: &NodeState) -> Result<()> {
        state::save(&self.data_dir, state)
    }

    // -----------------------------------------------------------------------------------------
    // Queries
    // -----------------------------------------------------------------------------------------

    /// Answers a user query.
    pub fn call(&self, request: &CallRequest<'_>) -> Result<CallResponse> {
        let services = self.services.load();
        let handle = services
            .get(request.service)
            .ok_or_else(|| Error::not_found("service", request.service))?;
        let active = handle.active.load();
        if !active.enabled {
            return Err(Error::Unavailable(format!(
                "service `{}` is disabled",
                request.service
            )));
        }
        let generation = match active.pick(request.service, &request.dispatch) {
            Ok(generation) => generation,
            Err(e) => {
                // Authenticate before saying which generations exist.
                if let Some(any) = active.entries.first().map(|(g, _)| g) {
                    any.auth.check(request.credentials)?;
                }
                return Err(e);
            }
        };
        let key_id = generation.auth.check(request.credentials)?;
        let endpoint = generation.endpoints.get(request.endpoint).ok_or_else(|| {
            Error::not_found(
                "endpoint",
                format!("{}/{}", request.service, request.endpoint),
            )
        })?;
        if !endpoint.kind.routes().contains(&request.action.route()) {
            return Err(Error::WrongRoute {
                endpoint: request.endpoint.to_owned(),
                kind: endpoint.kind.as_str(),
                routes: endpoint
                    .kind
                    .routes()
                    .iter()
                    .map(|r| format!("`{r}`"))
                    .collect::<Vec<_>>()
                    .join(" and "),
                action: request.action.route().to_owned(),
            });
        }
        let start = Instant::now();
        let items = match request.action {
            Action::Lookup | Action::Predict | Action::Run | Action::Query => 1,
            _ => request.body.items(),
        };
        if let Some(later) = answer_later(generation, endpoint, request) {
            let output = later.inspect_err(|_| endpoint.stats.record(items, 0, false))?;
            return Ok(CallResponse {
                generation: generation.id.clone(),
                key_id,
                endpoint_kind: endpoint.kind.as_str(),
                output,
                endpoint_micros: 0,
            });
        }
        let result = match (&endpoint.handler, request.action) {
            (Handler::Lookup(lookup), Action::Lookup) => lookup_single(lookup, request.body),
            (Handler::Lookup(lookup), _) => lookup_multi(lookup, request.body),
            (Handler::Predict(predict), Action::Predict) => match request.body {
                CallBody::PredictFeatures(features) => predict.predict_features(features),
                _ => predict.predict(&request.body.json()),
            }
            .map(Output::Predict),
            (Handler::Predict(predict), _) => match request.body {
                CallBody::PredictItems(items) => predict.predict_multi_features(items),
                _ => predict.predict_multi(&request.body.json()),
            }
            .map(Output::Predict),
            (Handler::Worker(_) | Handler::Referenced(_) | Handler::Sql(_), _) => {
                unreachable_worker()
            }
        };
        let endpoint_micros = start.elapsed().as_micros() as u64;
        endpoint
            .stats
            .record(items, endpoint_micros, result.is_ok());
        Ok(CallResponse {
            generation: generation.id.clone(),
            key_id,
            endpoint_kind: endpoint.kind.as_str(),
            output: result?,
            endpoint_micros,
        })
    }

    // -----------------------------------------------------------------------------------------
    // Services
    // -----------------------------------------------------------------------------------------

    pub fn list_services(&self) -> Vec<ServiceSummary> {
        let state = self.lock_state();
        state
            .services
            .iter()
            .map(|(id, s)| ServiceSummary {
                id: id.clone(),
                enabled: s.enabled,
            })
            .collect()
    }

    pub fn create_service(&self, service: &str, actor: &str) -> Result<()> {
        check_id("service id", service)?;
        let mut state = self.lock_state();
        if state.services.contains_key(service) {
            return Err(Error::Conflict(format!(
                "service `{service}` already exists"
            )));
        }
        let service_state = ServiceState {
            enabled: true,
            generations: Vec::new(),
            mapping: None,
        };
        let mut next = state.clone();
        next.services
            .insert(service.to_owned(), service_state.clone());
        self.save(&next)?;
        *state = next;
        let handle = ServiceHandle {
            active: ArcSwap::from_pointee(ActiveSet::default()),
            loaded: Mutex::new(HashMap::new()),
        };
        handle.publish(service, &service_state);
        let mut services = HashMap::clone(&self.services.load());
        services.insert(service.to_owned(), Arc::new(handle));
        self.services.store(Arc::new(services));
        audit(actor, "create-service", service, None);
        Ok(())
    }

    pub fn delete_service(&self, service: &str, actor: &str) -> Result<()> {
        let mut state = self.lock_state();
        if !state.services.contains_key(service) {
            return Err(Error::not_found("service", service));
        }
        let mut next = state.clone();
        next.services.remove(service);
        self.save(&next)?;
        *state = next;
        let mut services = HashMap::clone(&self.services.load());
        let removed = services.remove(service);
        self.services.store(Arc::new(services));
        // Worker pools stop taking calls, finish those in flight, then end their processes.
        if let Some(handle) = removed {
            for generation in handle
                .loaded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
            {
                generation.drain_workers();
            }
        }
        // Queries in flight keep their generation alive until they end; the files can go.
        let dir = self.data_dir.join("services").join(service);
        if let Err(e) = fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(service, "could not remove {}: {e}", dir.display());
        }
        audit(actor, "delete-service", service, None);
        Ok(())
    }

    pub fn set_enabled(&self, service: &str, enabled: bool, actor: &str) -> Result<()> {
        self.change_service(
            service,
            actor,
            if enabled { "enable" } else { "disable" },
            |s| {
                s.enabled = enabled;
                Ok(())
            },
        )
    }

    // -----------------------------------------------------------------------------------------
    // Generations
    // -----------------------------------------------------------------------------------------

    /// Imports an archive the node reads from its own filesystem (`importFromArchive`).
    pub fn import_generation_from_file(
        &self,
        service: &str,
        path: &Path,
        actor: &str,
    ) -> Result<GenerationInfo> {
        if !path.is_absolute() {
            return Err(Error::InvalidRequest(format!(
                "filePath must be an absolute path on the node, got `{}`",
                path.display()
            )));
        }
        let data = fs::read(path).map_err(|e| {
            Error::InvalidRequest(format!("cannot read archive {}: {e}", path.display()))
        })?;
        self.import_generation(
            service,
            Bytes::from(data),
            &path.display().to_string(),
            actor,
        )
    }

    /// Imports an archive: verifies it, loads it fully, then records it. The new generation
    /// is available but not active; the active set changes only by an explicit switch.
    pub fn import_generation(
        &self,
        service: &str,
        archive: Bytes,
        origin: &str,
        actor: &str,
    ) -> Result<GenerationInfo> {
        self.handle(service)?;
        let archive_sha256 = hex::encode(Sha256::digest(&archive));
        let bundle =
            Bundle::from_bytes(archive.clone(), origin, &self.limits).map_err(|source| {
                Error::Bundle {
                    origin: origin.to_owned(),
                    source,
                }
            })?;
        let generation_id = bundle.manifest().version.clone();
        if let Some(existing) = self.existing_generation(service, &generation_id)? {
            return if existing.archive_sha256 == archive_sha256 {
                Ok(self.generation_info(service, &existing))
            } else {
                Err(Error::Conflict(format!(
                    "service `{service}` already has a generation `{generation_id}` with \
                     different content; build the new bundle with another version id"
                )))
            };
        }
        let loaded = Arc::new(LoadedGeneration::load(
            &bundle,
            &WorkerContext {
                host: &self.workers,
                service,
                files_dir: state::generation_files_dir(&self.data_dir, service, &generation_id),
            },
            &self.connections,
        )?);
        drop(bundle);

        let mut state = self.lock_state();
        let handle = self.handle(service)?;
        let Some(service_state) = state.services.get(service) else {
            return Err(Error::not_found("service", service));
        };
        if service_state
            .generations
            .iter()
            .any(|g| g.id == generation_id)
        {
            return Err(Error::Conflict(format!(
                "generation `{generation_id}` of service `{service}` was imported concurrently"
            )));
        }
        let path = state::archive_path(&self.data_dir, service, &generation_id);
        state::write_atomically(&path, &archive)?;
        let record = GenerationRecord {
            id: generation_id.clone(),
            imported_on: now_millis(),
            archive_sha256,
            archive_size: archive.len() as u64,
        };
        let mut next = state.clone();
        let next_service = next
            .services
            .get_mut(service)
            .expect("checked under the same lock");
        next_service.generations.push(record.clone());
        self.save(&next)?;
        *state = next;
        handle
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(generation_id.clone(), loaded);
        handle.publish(service, &state.services[service]);
        drop(state);
        audit(actor, "import-generation", service, Some(&generation_id));
        Ok(self.generation_info(service, &record))
    }

    fn existing_generation(
        &self,
        service: &str,
        generation: &str,
    ) -> Result<Option<GenerationRecord>> {
        let state = self.lock_state();
        let service_state = state
            .services
            .get(service)
            .ok_or_else(|| Error::not_found("service", service))?;
        Ok(service_state
            .generations
            .iter()
            .find(|g| g.id == generation)
            .cloned())
    }

    fn generation_info(&self, service: &str, record: &GenerationRecord) -> GenerationInfo {
        let loaded = self.handle(service).ok().and_then(|h| {
            h.loaded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&record.id)
                .cloned()
        });
        GenerationInfo {
            id: record.id.clone(),
            imported_on: record.imported_on,
            archive_size: record.archive_size,
            archive_sha256: record.archive_sha256.clone(),
            loaded: loaded.is_some(),
            endpoints: loaded
                .map(|g| {
                    g.manifest
                        .endpoints
                        .iter()
                        .map(|e| (e.id.clone(), e.kind))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    pub fn list_generations(&self, service: &str) -> Result<GenerationsView> {
        let (records, mapping, enabled) = {
            let state = self.lock_state();
            let s = state
                .services
                .get(service)
                .ok_or_else(|| Error::not_found("service", service))?;
            (s.generations.clone(), s.mapping.clone(), s.enabled)
        };
        Ok(GenerationsView {
            generations: records
                .iter()
                .map(|r| self.generation_info(service, r))
                .collect(),
            mapping,
            enabled,
        })
    }

    /// Every imported generation is loaded at import (and at start-up), so preloading only
    /// checks that the generation exists and is loaded.
    pub fn preload_generation(&self, service: &str, generation: &str) -> Result<()> {
        let handle = self.handle(service)?;
        let loaded = handle
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(generation);
        if loaded {
            Ok(())
        } else if self.existing_generation(service, generation)?.is_some() {
            Err(Error::Unservable {
                generation: generation.to_owned(),
                message: "it failed to load when the node started; see the node log".into(),
            })
        } else {
            Err(Error::not_found(
                "generation",
                format!("{service}/{generation}"),
            ))
        }
    }

    /// Sets the mapping and enables the service.
    pub fn set_mapping(&self, service: &str, mapping: Mapping, actor: &str) -> Result<()> {
        let handle = self.handle(service)?;
        validate_mapping(&mapping)?;
        {
            let loaded = handle.loaded.lock().unwrap_or_else(|p| p.into_inner());
            for entry in &mapping.entries {
                if !loaded.contains_key(&entry.generation) {
                    return Err(Error::InvalidRequest(format!(
                        "mapping names generation `{}`, which service `{service}` has not \
                         imported (or could not load)",
                        entry.generation
                    )));
                }
            }
        }
        self.change_service(service, actor, "set-mapping", |s| {
            s.mapping = Some(mapping);
            s.enabled = true;
            Ok(())
        })
    }

    /// Activates the most recently imported generation alone; returns its id.
    pub fn switch_to_newest(&self, service: &str, actor: &str) -> Result<String> {
        let newest = {
            let state = self.lock_state();
            let s = state
                .services
                .get(service)
                .ok_or_else(|| Error::not_found("service", service))?;
            s.generations.last().map(|g| g.id.clone()).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "service `{service}` has no generation to switch to: import one first"
                ))
            })?
        };
        self.set_mapping(service, Mapping::single(&newest), actor)?;
        Ok(newest)
    }

    pub fn switch_to(&self, service: &str, generation: &str, actor: &str) -> Result<()> {
        if self.existing_generation(service, generation)?.is_none() {
            return Err(Error::not_found(
                "generation",
                format!("{service}/{generation}"),
            ));
        }
        self.set_mapping(service, Mapping::single(generation), actor)
    }

    fn change_service(
        &self,
        service: &str,
        actor: &str,
        action: &str,
        change: impl FnOnce(&mut ServiceState) -> Result<()>,
    ) -> Result<()> {
        let mut state = self.lock_state();
        let handle = self.handle(service)?;
        let mut next = state.clone();
        let service_state = next
            .services
            .get_mut(service)
            .ok_or_else(|| Error::not_found("service", service))?;
        change(service_state)?;
        self.save(&next)?;
        *state = next;
        handle.publish(service, &state.services[service]);
        drop(state);
        audit(actor, action, service, None);
        Ok(())
    }

    fn handle(&self, service: &str) -> Result<Arc<ServiceHandle>> {
        self.services
            .load()
            .get(service)
            .cloned()
            .ok_or_else(|| Error::not_found("service", service))
    }

    pub fn metrics(&self) -> Metrics {
        let states: BTreeMap<String, (bool, usize)> = self
            .lock_state()
            .services
            .iter()
            .map(|(id, s)| (id.clone(), (s.enabled, s.generations.len())))
            .collect();
        let services = self.services.load();
        let mut out = Vec::with_capacity(states.len());
        for (id, (enabled, generations)) in states {
            let Some(handle) = services.get(&id) else {
                continue;
            };
            let active = handle.active.load();
            let mut endpoints: BTreeMap<String, EndpointMetrics> = BTreeMap::new();
            let mut resident_bytes = 0;
            for generation in active.all.values() {
                resident_bytes += generation.resident_bytes();
                for (endpoint_id, endpoint) in &generation.endpoints {
                    endpoint
                        .stats
                        .add_to(endpoints.entry(endpoint_id.clone()).or_default());
                }
            }
            out.push(ServiceMetrics {
                service: id,
                enabled,
                generations,
                active_generations: active
                    .entries
                    .iter()
                    .map(|(g, _)| g.id.to_string())
                    .collect(),
                resident_bytes,
                endpoints: endpoints.into_iter().collect(),
            });
        }
        Metrics {
            uptime_seconds: self.started.elapsed().as_secs(),
            services: out,
        }
    }
}

impl ServiceHandle {
    /// Builds the active set from the service's state and swaps it in.
    fn publish(&self, service: &str, service_state: &ServiceState) {
        let all = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut entries = Vec::new();
        let mut cumulative = 0.0;
        if let Some(mapping) = &service_state.mapping {
            let usable: Vec<_> = mapping
                .entries
                .iter()
                .filter_map(|e| all.get(&e.generation).map(|g| (g.clone(), e.proba)))
                .collect();
            if usable.len() < mapping.entries.len() {
                tracing::error!(
                    service,
                    "the mapping names generations that are not loaded; the others share their traffic"
                );
            }
            let total: f64 = usable.iter().map(|(_, p)| p).sum();
            for (generation, proba) in usable {
                cumulative += if total > 0.0 { proba / total } else { 0.0 };
                entries.push((generation, cumulative));
            }
        }
        self.active.store(Arc::new(ActiveSet {
            enabled: service_state.enabled,
            hash_based: service_state.mapping.as_ref().is_some_and(|m| m.hash_based),
            entries,
            all,
        }));
    }
}

impl ActiveSet {
    fn pick(&self, service: &str, dispatch: &Dispatch) -> Result<&Arc<LoadedGeneration>> {
        if let Some(forced) = &dispatch.forced_generation {
            return self
                .all
                .get(forced)
                .ok_or_else(|| Error::not_found("generation", format!("{service}/{forced}")));
        }
        let (last, _) = self.entries.last().ok_or_else(|| {
            Error::Unavailable(format!(
                "service `{service}` has no active generation: activate one with \
                 switchToNewest, switchTo or setMapping"
            ))
        })?;
        if self.entries.len() == 1 {
            return Ok(last);
        }
        let point = match (&dispatch.dispatch_key, self.hash_based) {
            (Some(key), true) => hash_point(key),
            _ => rand::random::<f64>(),
        };
        Ok(self
            .entries
            .iter()
            .find(|(_, upper)| point < *upper)
            .map_or(last, |(g, _)| g))
    }
}

/// A point in [0, 1) from a dispatch key, stable across nodes and restarts.
fn hash_point(key: &str) -> f64 {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

fn validate_mapping(mapping: &Mapping) -> Result<()> {
    if mapping.entries.is_empty() {
        return Err(Error::InvalidRequest(
            "mapping `entries` is empty: name at least one generation".into(),
        ));
    }
    let mut sum = 0.0;
    for (i, entry) in mapping.entries.iter().enumerate() {
        if !entry.proba.is_finite() || entry.proba < 0.0 {
            return Err(Error::InvalidRequest(format!(
                "mapping entries[{i}].proba must be a number between 0 and 1, got {}",
                entry.proba
            )));
        }
        if mapping.entries[..i]
            .iter()
            .any(|e| e.generation == entry.generation)
        {
            return Err(Error::InvalidRequest(format!(
                "mapping entries[{i}] names generation `{}` a second time",
                entry.generation
            )));
        }
        sum += entry.proba;
    }
    if (sum - 1.0).abs() > 1e-6 {
        return Err(Error::InvalidRequest(format!(
            "mapping probabilities must sum to 1, they sum to {}",
            (sum * 1e6).round() / 1e6
        )));
    }
    Ok(())
}

/// A `lookup` body's `data` object.
fn lookup_data(body: &Value) -> Result<&serde_json::Map<String, Value>> {
    body.get("data")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::InvalidQuery {
            location: "data".into(),
            message: "required: an object with the lookup keys".into(),
        })
}

/// The `data` object of every item of a `lookup-multi` body.
fn lookup_items(body: &Value) -> Result<Vec<&serde_json::Map<String, Value>>> {
    let items = body
        .get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::InvalidQuery {
            location: "items".into(),
            message: "required: an array of {\"data\": {...}} objects".into(),
        })?;
    let mut records = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        records.push(item.get("data").and_then(Value::as_object).ok_or_else(|| {
            Error::InvalidQuery {
                location: format!("items[{i}].data"),
                message: "required: an object with the lookup keys".into(),
            }
        })?);
    }
    Ok(records)
}

fn lookup_single(lookup: &apinode_lookup::Lookup, body: CallBody<'_>) -> Result<Output> {
    let found = match body {
        CallBody::LookupData(data) => lookup.find(data),
        CallBody::Json(body) => lookup.find(lookup_data(body)?),
        // Not a lookup's body: read as its tree, which says what is missing.
        other @ (CallBody::PredictFeatures(_)
        | CallBody::LookupItems(_)
        | CallBody::PredictItems(_)) => lookup.find(lookup_data(&other.json())?),
    }
    .map_err(|source| Error::Lookup { item: None, source })?;
    let mut out = LookupOutput {
        buffer: Vec::with_capacity(512),
        items: Vec::with_capacity(1),
    };
    let item = write_match(lookup, found, &mut out.buffer);
    out.items.push(item);
    Ok(Output::Lookup(out))
}

fn lookup_multi(lookup: &apinode_lookup::Lookup, body: CallBody<'_>) -> Result<Output> {
    let matches = match body {
        CallBody::LookupItems(records) => lookup.find_batch(records),
        CallBody::Json(body) => lookup.find_batch(&lookup_items(body)?),
        // Not a `lookup-multi` body: read as its tree, which says what is missing.
        other => lookup.find_batch(&lookup_items(&other.json())?),
    }
    .map_err(|(i, source)| Error::Lookup {
        item: Some(i),
        source,
    })?;
    let mut buffer = Vec::with_capacity(matches.len() * 128);
    let ranges = lookup.write_matches(&matches, &mut buffer);
    let items = matches
        .iter()
        .zip(ranges)
        .map(|(found, range)| match (found, range) {
            (Match::Ignored(reason), _) => LookupItem::Ignored {
                reason: reason.as_str(),
            },
            (_, range) => LookupItem::Data(range.unwrap_or(0..0)),
        })
        .collect();
    Ok(Output::Lookup(LookupOutput { buffer, items }))
}

fn write_match(lookup: &apinode_lookup::Lookup, found: Match, buffer: &mut Vec<u8>) -> LookupItem {
    let row = match found {
        Match::Row(row) => Some(row),
        Match::Nulls => None,
        Match::Ignored(reason) => {
            return LookupItem::Ignored {
                reason: reason.as_str(),
            };
        }
    };
    let start = buffer.len();
    lookup.write_row(row, buffer);
    LookupItem::Data(start..buffer.len())
}

/// Records an asynchronous answer in its endpoint's metrics when it is done (the generation
/// is held until then, like the answer itself).
fn record_when_done(generation: &Arc<LoadedGeneration>, endpoint: &str) -> crate::workers::OnDone {
    let (held, name) = (generation.clone(), endpoint.to_owned());
    Box::new(move |items, micros, ok| {
        if let Some(endpoint) = held.endpoints.get(&name) {
            endpoint.stats.record(items, micros, ok);
        }
    })
}

/// The answer of an endpoint that waits for I/O (a worker, a database), or `None` for one
/// answered now. Its metrics are recorded when it finishes.
fn answer_later(
    generation: &Arc<LoadedGeneration>,
    endpoint: &Endpoint,
    request: &CallRequest<'_>,
) -> Option<Result<Output>> {
    let when_done = || record_when_done(generation, request.endpoint);
    let multi = matches!(request.action, Action::PredictMulti | Action::LookupMulti);
    let referenced_enrichment = match &endpoint.handler {
        Handler::Predict(predict) => predict.enrichment.is_referenced(),
        Handler::Worker(worker) => worker.enrichment.is_referenced(),
        _ => false,
    };
    let answered_now = match &endpoint.handler {
        Handler::Lookup(_) => true,
        Handler::Predict(_) => !referenced_enrichment || request.action == Action::Run,
        _ => false,
    };
    if answered_now {
        return None;
    }
    let body = request.body.json();
    let body: &Value = &body;
    Some(match &endpoint.handler {
        _ if referenced_enrichment && request.action != Action::Run => owned_records(body, multi)
            .map(|records| {
                Output::Pending(PendingOutput::later(
                    records.len(),
                    when_done(),
                    enrich_then_answer(
                        generation.clone(),
                        request.endpoint.to_owned(),
                        records,
                        multi,
                    ),
                ))
            }),
        Handler::Worker(worker) => {
            let call = match request.action {
                Action::Run => worker.run_call(body),
                Action::Predict => refuse_explanations(body)
                    .and_then(|()| features_of(body, "features"))
                    .and_then(|features| worker.predict_call(&[features], false)),
                _ => refuse_explanations(body)
                    .and_then(|()| multi_features(body))
                    .and_then(|records| worker.predict_call(&records, true)),
            };
            call.map(|mut call| {
                call.on_done = when_done();
                Output::Worker(call)
            })
        }
        Handler::Sql(sql) => sql
            .query(body)
            .map(|query| Output::Pending(PendingOutput::sql(query, when_done())))
            .map_err(|source| Error::Sql { source }),
        Handler::Referenced(lookup) => match request.action {
            Action::Lookup => lookup_data(body).map(|data| vec![data]),
            _ => lookup_items(body),
        }
        .map(|records| {
            Output::Pending(PendingOutput::lookup(
                lookup.query(&records),
                records.len(),
                multi,
                when_done(),
            ))
        }),
        Handler::Lookup(_) | Handler::Predict(_) => return None,
    })
}

/// The records of a `predict` (one) or `predict-multi` body, copied for an answer that
/// outlives the request.
fn owned_records(body: &Value, multi: bool) -> Result<Vec<serde_json::Map<String, Value>>> {
    refuse_explanations(body)?;
    let records = if multi {
        multi_features(body)?
    } else {
        vec![features_of(body, "features")?]
    };
    Ok(records.into_iter().cloned().collect())
}

/// A prediction whose enrichment reads a referenced table: enriched once the database
/// answers, then scored (visual models) or handed to the workers (Python, R).
async fn enrich_then_answer(
    generation: Arc<LoadedGeneration>,
    endpoint: String,
    records: Vec<serde_json::Map<String, Value>>,
    multi: bool,
) -> Result<Output> {
    let handler = &generation
        .endpoints
        .get(&endpoint)
        .ok_or_else(|| Error::not_found("endpoint", endpoint.clone()))?
        .handler;
    match handler {
        Handler::Predict(predict) => {
            let (prepared, micros) = enrich_batch(&predict.enrichment, records, multi).await?;
            predict
                .score_prepared(&prepared, micros, multi)
                .map(Output::Predict)
        }
        Handler::Worker(worker) => {
            let (prepared, micros) = enrich_batch(&worker.enrichment, records, multi).await?;
            match worker.predict_prepared(prepared, micros).finish().await? {
                WorkerOutput::Predict(predict) => Ok(Output::Predict(predict)),
                WorkerOutput::Run { .. } => Err(Error::Unavailable(format!(
                    "endpoint `{endpoint}`: its workers answered a prediction as a function call"
                ))),
            }
        }
        _ => Err(Error::Unavailable(format!(
            "endpoint `{endpoint}` takes no enrichment"
        ))),
    }
}

/// The `features` of every item of a `predict-multi` body.
fn multi_features(body: &Value) -> Result<Vec<&serde_json::Map<String, Value>>> {
    let items = body
        .get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::InvalidQuery {
            location: "items".into(),
            message: "required: an array of {\"features\": {...}} objects".into(),
        })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| features_of(item, &format!("items[{i}].features")))
        .collect()
}

/// Worker endpoints return before the synchronous handlers run.
fn unreachable_worker() -> Result<Output> {
    Err(Error::Unavailable(
        "internal: a worker endpoint reached the synchronous path".into(),
    ))
}

fn load_archive(
    data_dir: &Path,
    limits: &Limits,
    (workers, connections): (&WorkerHost, &Connections),
    service: &str,
    record: &GenerationRecord,
) -> Result<LoadedGeneration> {
    let path = state::archive_path(data_dir, service, &record.id);
    let data = fs::read(&path).map_err(|e| Error::storage(&path, e))?;
    let sha = hex::encode(Sha256::digest(&data));
    if sha != record.archive_sha256 {
        return Err(Error::CorruptState {
            path,
            message: format!(
                "archive checksum {sha} differs from the recorded {}",
                record.archive_sha256
            ),
        });
    }
    let origin = path.display().to_string();
    let bundle = Bundle::from_bytes(Bytes::from(data), &origin, limits)
        .map_err(|source| Error::Bundle { origin, source })?;
    LoadedGeneration::load(
        &bundle,
        &WorkerContext {
            host: workers,
            service,
            files_dir: state::generation_files_dir(data_dir, service, &record.id),
        },
        connections,
    )
}

/// Service ids travel in URLs and file names: `[A-Za-z0-9_-]{1,64}`.
pub(crate) fn check_id(what: &str, id: &str) -> Result<()> {
    if apinode_bundle::is_valid_id(id) {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "invalid {what} `{id}`: use 1 to 64 letters, digits, `_` or `-`"
        )))
    }
}

pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Admin mutations are logged with the key that made them (target `apinode::audit::admin`).
pub(crate) fn audit(actor: &str, action: &str, service: &str, generation: Option<&str>) {
    tracing::info!(
        target: "apinode::audit::admin",
        actor, action, service, generation = generation.unwrap_or(""),
        "admin change"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_points_are_stable_and_spread() {
        assert_eq!(hash_point("user-42"), hash_point("user-42"));
        let below = (0..1000)
            .filter(|i| hash_point(&format!("k{i}")) < 0.5)
            .count();
        assert!((400..600).contains(&below), "{below}");
    }

    #[test]
    fn mappings_are_validated() {
        let m = |entries: &[(&str, f64)]| Mapping {
            entries: entries
                .iter()
                .map(|(g, p)| crate::MappingEntry {
                    generation: (*g).into(),
                    proba: *p,
                })
                .collect(),
            hash_based: false,
        };
        assert!(validate_mapping(&m(&[("a", 0.7), ("b", 0.3)])).is_ok());
        let err = validate_mapping(&m(&[("a", 0.7), ("b", 0.2)])).unwrap_err();
        assert!(err.to_string().contains("sum to 0.9"), "{err}");
        assert!(validate_mapping(&m(&[])).is_err());
        assert!(validate_mapping(&m(&[("a", 0.5), ("a", 0.5)])).is_err());
        assert!(validate_mapping(&m(&[("a", -1.0), ("b", 2.0)])).is_err());
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("service id", "churn-v2_x").is_ok());
        assert!(check_id("service id", "../etc").is_err());
        assert!(check_id("service id", "").is_err());
    }
}
