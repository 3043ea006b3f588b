//! A generation loaded for serving: every endpoint built (datasets read from Parquet and
//! indexed, models loaded), its auth settings ready. Loading is all-or-nothing: a generation
//! that cannot serve every endpoint is refused with the reason.

use crate::error::{Error, Result};
use crate::metrics::EndpointStats;
use crate::referenced::{Connections, load_referenced, load_referenced_sql};
use crate::workers::{WorkerContext, WorkerEndpoint, extract_files, load_worker_endpoint};
use apinode_bundle::{
    AuthMode, Bundle, ColumnType, DatasetSource, EndpointKind, EndpointSpec,
    LookupAction as SpecAction, LookupSpec, Manifest, SqlSpec,
};
use apinode_lookup::{
    BundledSql, EnrichStep, Enrichment, KeyColumn, KeyType, Lookup, LookupAction, LookupConfig,
    OutputColumn, ReferencedLookup, ReferencedSql, SqlConfig, SqlParam, SqlQuery, SqlStatement,
    Table,
};
use apinode_scoring::{Model, ModelSummary, Task};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The endpoint kinds this node serves today.
pub const SERVED_KINDS: &[EndpointKind] = &[
    EndpointKind::DatasetLookup,
    EndpointKind::Prediction,
    EndpointKind::Clustering,
    EndpointKind::PythonFunction,
    EndpointKind::PythonPrediction,
    EndpointKind::RFunction,
    EndpointKind::RPrediction,
    EndpointKind::SqlQuery,
];

#[derive(Debug)]
pub(crate) struct LoadedGeneration {
    pub(crate) id: Arc<str>,
    pub(crate) manifest: Manifest,
    pub(crate) auth: ServiceAuth,
    pub(crate) endpoints: HashMap<String, Endpoint>,
}

#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) kind: EndpointKind,
    pub(crate) handler: Handler,
    pub(crate) stats: EndpointStats,
}

#[derive(Debug)]
pub(crate) enum Handler {
    Lookup(Lookup),
    /// A lookup on a referenced dataset (PostgreSQL): answered asynchronously.
    Referenced(Arc<ReferencedLookup>),
    Predict(PredictEndpoint),
    Worker(WorkerEndpoint),
    Sql(SqlEndpoint),
}

/// A `sql-query` endpoint: DataFusion over bundled datasets, or a PostgreSQL connection.
#[derive(Debug)]
pub(crate) enum SqlEndpoint {
    Bundled(Arc<BundledSql>),
    Referenced(Arc<ReferencedSql>),
}

impl SqlEndpoint {
    /// Binds the query's parameters (the body's fields; `dispatch` is the node's, unless the
    /// endpoint declares a parameter of that name) and returns the statements to run.
    pub(crate) fn query(&self, body: &Value) -> apinode_lookup::Result<SqlQuery> {
        let config = match self {
            SqlEndpoint::Bundled(sql) => sql.config(),
            SqlEndpoint::Referenced(sql) => sql.config(),
        };
        let empty = serde_json::Map::new();
        let fields = body.as_object().unwrap_or(&empty);
        let trimmed;
        let fields = if fields.contains_key("dispatch")
            && !config.parameters.iter().any(|p| p.name == "dispatch")
        {
            trimmed = fields
                .iter()
                .filter(|(k, _)| *k != "dispatch")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            &trimmed
        } else {
            fields
        };
        match self {
            SqlEndpoint::Bundled(sql) => sql.query(fields),
            SqlEndpoint::Referenced(sql) => sql.query(fields),
        }
    }
}

/// A `prediction` or `clustering` endpoint: a visual model, and the lookups that enrich each
/// record before it is scored.
#[derive(Debug)]
pub(crate) struct PredictEndpoint {
    pub(crate) model: Model,
    pub(crate) enrichment: Enrichment,
    /// Answer each record's features after enrichment as `postEnrich`.
    pub(crate) return_post_enrich: bool,
}

impl Handler {
    /// Every lookup the endpoint uses: its own, or its enrichment steps.
    fn lookups(&self) -> Vec<&Lookup> {
        match self {
            Handler::Lookup(lookup) => vec![lookup],
            Handler::Referenced(_) | Handler::Sql(_) => Vec::new(),
            Handler::Predict(predict) => predict.enrichment.lookups().collect(),
            Handler::Worker(worker) => worker.enrichment.lookups().collect(),
        }
    }
}

impl LoadedGeneration {
    /// Loads every endpoint; Python and R endpoints start their worker pools, reading the
    /// generation's files from `workers.files_dir` (written here); referenced datasets are
    /// reached through the node's `connections`.
    pub(crate) fn load(
        bundle: &Bundle,
        workers: &WorkerContext<'_>,
        connections: &Connections,
    ) -> Result<LoadedGeneration> {
        let manifest = bundle.manifest().clone();
        let generation = manifest.version.clone();
        let unservable = |message: String| Error::Unservable {
            generation: generation.clone(),
            message,
        };
        let auth = ServiceAuth::from_manifest(&manifest).map_err(unservable)?;
        if manifest
            .endpoints
            .iter()
            .any(|e| matches!(e.kind.section(), "python" | "r"))
        {
            extract_files(bundle, &workers.files_dir).map_err(&unservable)?;
        }
        let mut tables: HashMap<String, Arc<Table>> = HashMap::new();
        let mut endpoints = HashMap::with_capacity(manifest.endpoints.len());
        for spec in &manifest.endpoints {
            if !SERVED_KINDS.contains(&spec.kind) {
                return Err(unservable(format!(
                    "endpoint `{}` is of kind `{}`, which this node cannot serve yet (it serves: {})",
                    spec.id,
                    spec.kind,
                    SERVED_KINDS
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let handler = match spec.kind {
                EndpointKind::DatasetLookup => {
                    let lookup_spec = spec.lookup.as_ref().ok_or_else(|| {
                        unservable(format!("endpoint `{}` has no `lookup` section", spec.id))
                    })?;
                    let in_endpoint =
                        |m: String| unservable(format!("endpoint `{}`: {m}", spec.id));
                    let dataset = &lookup_spec.dataset;
                    match bundle.manifest().dataset(dataset).map(|d| &d.source) {
                        Some(DatasetSource::Referenced { connection, table }) => {
                            Handler::Referenced(
                                load_referenced(
                                    connections,
                                    workers.service,
                                    dataset,
                                    connection,
                                    table,
                                    lookup_config(lookup_spec),
                                )
                                .map_err(in_endpoint)?,
                            )
                        }
                        _ => {
                            let table =
                                table_for(bundle, &mut tables, dataset).map_err(in_endpoint)?;
                            let lookup = Lookup::new(table, lookup_config(lookup_spec))
                                .map_err(|e| in_endpoint(e.to_string()))?;
                            Handler::Lookup(lookup)
                        }
                    }
                }
                EndpointKind::Prediction | EndpointKind::Clustering => Handler::Predict(
                    load_predict(bundle, &mut tables, spec, workers.service, connections)
                        .map_err(unservable)?,
                ),
                EndpointKind::PythonFunction
                | EndpointKind::PythonPrediction
                | EndpointKind::RFunction
                | EndpointKind::RPrediction => {
                    let enrichment =
                        load_enrichment(bundle, &mut tables, spec, workers.service, connections)
                            .map_err(unservable)?;
                    Handler::Worker(
                        load_worker_endpoint(bundle, spec, workers, enrichment)
                            .map_err(unservable)?,
                    )
                }
                EndpointKind::SqlQuery => Handler::Sql(
                    load_sql(bundle, &mut tables, spec, workers.service, connections)
                        .map_err(unservable)?,
                ),
            };
            endpoints.insert(
                spec.id.clone(),
                Endpoint {
                    kind: spec.kind,
                    handler,
                    stats: EndpointStats::default(),
                },
            );
        }
        Ok(LoadedGeneration {
            id: Arc::from(generation.as_str()),
            manifest,
            auth,
            endpoints,
        })
    }

    /// Starts draining every worker pool of the generation (in the background): no new calls,
    /// in-flight ones finish, then the processes end.
    pub(crate) fn drain_workers(&self) {
        for endpoint in self.endpoints.values() {
            if let Handler::Worker(worker) = &endpoint.handler {
                worker.drain();
            }
        }
    }

    /// Bytes held in memory by the generation's tables and indexes.
    pub(crate) fn resident_bytes(&self) -> usize {
        let mut seen = Vec::new();
        let mut total = 0;
        for lookup in self.endpoints.values().flat_map(|e| e.handler.lookups()) {
            total += lookup.index_bytes();
            let table = Arc::as_ptr(lookup.table());
            if !seen.contains(&table) {
                seen.push(table);
                total += lookup.table().resident_bytes();
            }
        }
        total
    }
}

/// Loads a `prediction` or `clustering` endpoint: its model and its enrichment lookups.
fn load_predict(
    bundle: &Bundle,
    tables: &mut HashMap<String, Arc<Table>>,
    spec: &EndpointSpec,
    service: &str,
    connections: &Connections,
) -> std::result::Result<PredictEndpoint, String> {
    let id = &spec.id;
    let model_spec = spec
        .model
        .as_ref()
        .ok_or_else(|| format!("endpoint `{id}` has no `model` section"))?;
    let model = load_model(bundle, spec)?;
    Ok(PredictEndpoint {
        model,
        enrichment: load_enrichment(bundle, tables, spec, service, connections)?,
        return_post_enrich: model_spec.return_post_enrich,
    })
}

/// The enrichment steps of a prediction endpoint: bundled datasets indexed, referenced ones
/// reached through the node's connections.
fn load_enrichment(
    bundle: &Bundle,
    tables: &mut HashMap<String, Arc<Table>>,
    spec: &EndpointSpec,
    service: &str,
    connections: &Connections,
) -> std::result::Result<Enrichment, String> {
    let id = &spec.id;
    let mut steps = Vec::with_capacity(spec.enrich.len());
    for (i, step) in spec.enrich.iter().enumerate() {
        let in_step = |m: String| format!("endpoint `{id}` enrich[{i}]: {m}");
        let source = bundle.manifest().dataset(&step.dataset).map(|d| &d.source);
        if let Some(DatasetSource::Referenced { connection, table }) = source {
            let lookup = load_referenced(
                connections,
                service,
                &step.dataset,
                connection,
                table,
                lookup_config(step),
            )
            .map_err(in_step)?;
            steps.push(EnrichStep::Referenced(lookup));
            continue;
        }
        let table = table_for(bundle, tables, &step.dataset).map_err(in_step)?;
        steps.push(EnrichStep::Bundled(
            Lookup::new(table, lookup_config(step)).map_err(|e| in_step(e.to_string()))?,
        ));
    }
    Ok(Enrichment::with_steps(steps))
}

/// Loads the model of a `prediction` or `clustering` endpoint from the bundle's copy of the
/// export (a folder, or a zip) and checks that it fits the kind.
fn load_model(bundle: &Bundle, spec: &EndpointSpec) -> std::result::Result<Model, String> {
    let id = &spec.id;
    let model_spec = spec
        .model
        .as_ref()
        .ok_or_else(|| format!("endpoint `{id}` has no `model` section"))?;
    let path = model_spec.path.trim_end_matches('/');
    // Errors read `endpoint `id`: `path` ...`: the origin is the path in the bundle.
    let origin = path.to_owned();
    let model = match bundle.file(path) {
        Some(zip) => Model::from_zip(origin, zip),
        None => {
            let files: HashMap<String, Vec<u8>> = bundle
                .files_under(path)
                .map(|(name, bytes)| (name.to_owned(), bytes.to_vec()))
                .collect();
            if files.is_empty() {
                return Err(format!(
                    "endpoint `{id}`: the bundle holds no model at `{path}`"
                ));
            }
            Model::from_files(origin, files)
        }
    }
    .map_err(|e| format!("endpoint `{id}`: {e}"))?;
    let clustering = model.task() == Task::Clustering;
    match (spec.kind, clustering) {
        (EndpointKind::Prediction, true) => {
            return Err(format!(
                "endpoint `{id}` is a `prediction` endpoint but its model is a clustering \
                 model: declare it with kind = \"clustering\""
            ));
        }
        (EndpointKind::Clustering, false) => {
            return Err(format!(
                "endpoint `{id}` is a `clustering` endpoint but its model predicts ({}): \
                 declare it with kind = \"prediction\"",
                model.task().as_str()
            ));
        }
        _ => {}
    }
    Ok(model)
}

/// Loads a `sql-query` endpoint: its statements prepared on its connection, or planned over
/// its bundled datasets.
fn load_sql(
    bundle: &Bundle,
    tables: &mut HashMap<String, Arc<Table>>,
    spec: &EndpointSpec,
    service: &str,
    connections: &Connections,
) -> std::result::Result<SqlEndpoint, String> {
    let id = &spec.id;
    let sql = spec
        .sql
        .as_ref()
        .ok_or_else(|| format!("endpoint `{id}` has no `sql` section"))?;
    let config = sql_config(sql);
    // Statement errors read `endpoint `q`: sql.statements[1]: ...`, the manifest's path.
    let in_endpoint = |m: String| {
        let section = if m.starts_with("statements[") {
            "sql."
        } else {
            ""
        };
        format!("endpoint `{id}`: {section}{m}")
    };
    match &sql.connection {
        Some(connection) => Ok(SqlEndpoint::Referenced(
            load_referenced_sql(connections, service, connection, config).map_err(in_endpoint)?,
        )),
        None => {
            let datasets = sql
                .datasets
                .iter()
                .map(|d| table_for(bundle, tables, d))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(in_endpoint)?;
            let planned =
                BundledSql::new(&datasets, config).map_err(|e| in_endpoint(e.to_string()))?;
            Ok(SqlEndpoint::Bundled(Arc::new(planned)))
        }
    }
}

/// The bundle's `sql` section for `apinode-lookup`: `?` placeholders numbered `$1`, `$2`, ...
fn sql_config(spec: &SqlSpec) -> SqlConfig {
    SqlConfig {
        statements: spec
            .statements
            .iter()
            .map(|s| SqlStatement {
                sql: apinode_bundle::number_sql_placeholders(&s.sql),
                params: s.params.clone(),
            })
            .collect(),
        parameters: spec
            .parameters
            .iter()
            .map(|p| SqlParam {
                name: p.name.clone(),
                param_type: key_type(p.param_type),
                required: p.required,
                default: p.default.clone().filter(|d| !d.is_null()),
            })
            .collect(),
    }
}

fn key_type(column_type: ColumnType) -> KeyType {
    match column_type {
        ColumnType::String => KeyType::String,
        ColumnType::Int64 => KeyType::Int64,
        ColumnType::Float64 => KeyType::Float64,
        ColumnType::Boolean => KeyType::Boolean,
        ColumnType::Date => KeyType::Date,
        ColumnType::Timestamp => KeyType::Timestamp,
    }
}

/// Loads every model of a bundle's `prediction` and `clustering` endpoints, as a node would
/// at import, and describes each: `apinode bundle build` checks models with it, so a broken
/// export is found before the bundle travels.
pub fn model_reports(bundle: &Bundle) -> Result<Vec<(String, ModelSummary)>> {
    let manifest = bundle.manifest();
    let mut reports = Vec::new();
    for spec in &manifest.endpoints {
        if matches!(
            spec.kind,
            EndpointKind::Prediction | EndpointKind::Clustering
        ) {
            let model = load_model(bundle, spec).map_err(|message| Error::Unservable {
                generation: manifest.version.clone(),
                message,
            })?;
            reports.push((spec.id.clone(), model.describe()));
        }
    }
    Ok(reports)
}

/// Plans the statements of every `sql-query` endpoint on bundled datasets, as a node would
/// at import, and returns those endpoints' ids: `apinode bundle build` checks them with it,
/// so a statement that names an unknown column (or would change bundled data) is found
/// before the bundle travels. Endpoints on a connection are checked by the node that has it.
pub fn check_bundled_sql(bundle: &Bundle) -> Result<Vec<String>> {
    let manifest = bundle.manifest();
    let mut tables = HashMap::new();
    let mut checked = Vec::new();
    for spec in &manifest.endpoints {
        let Some(sql) = spec.sql.as_ref().filter(|s| s.connection.is_none()) else {
            continue;
        };
        let unservable = |message: String| Error::Unservable {
            generation: manifest.version.clone(),
            message: format!("endpoint `{}`: {message}", spec.id),
        };
        let datasets = sql
            .datasets
            .iter()
            .map(|d| table_for(bundle, &mut tables, d))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(unservable)?;
        BundledSql::new(&datasets, sql_config(sql)).map_err(|e| unservable(e.to_string()))?;
        checked.push(spec.id.clone());
    }
    Ok(checked)
}

fn table_for(
    bundle: &Bundle,
    tables: &mut HashMap<String, Arc<Table>>,
    dataset: &str,
) -> std::result::Result<Arc<Table>, String> {
    if let Some(table) = tables.get(dataset) {
        return Ok(table.clone());
    }
    let entry = bundle
        .manifest()
        .dataset(dataset)
        .ok_or_else(|| format!("dataset `{dataset}` is not declared"))?;
    if let DatasetSource::Referenced { connection, table } = &entry.source {
        return Err(format!(
            "dataset `{dataset}` is referenced (table `{table}` on connection `{connection}`) \
             and has no rows in the bundle"
        ));
    }
    let bytes = bundle.dataset_parquet(dataset).map_err(|e| e.to_string())?;
    let table = Arc::new(Table::from_parquet(dataset, bytes.clone()).map_err(|e| e.to_string())?);
    tables.insert(dataset.to_owned(), table.clone());
    Ok(table)
}

pub(crate) fn lookup_config(spec: &LookupSpec) -> LookupConfig {
    LookupConfig {
        keys: spec
            .keys
            .iter()
            .map(|k| KeyColumn {
                column: k.column.clone(),
                input: k.input.clone(),
            })
            .collect(),
        columns: spec
            .columns
            .iter()
            .map(|c| OutputColumn {
                column: c.column.clone(),
                output: c.output.clone(),
            })
            .collect(),
        on_missing_key: action(spec.on_missing_key),
        on_no_match: action(spec.on_no_match),
        on_multiple_matches: action(spec.on_multiple_matches),
    }
}

fn action(action: SpecAction) -> LookupAction {
    match action {
        SpecAction::Fail => LookupAction::Fail,
        SpecAction::Ignore => LookupAction::Ignore,
        SpecAction::Null => LookupAction::Null,
        SpecAction::First => LookupAction::First,
    }
}

/// Credentials presented with a user query.
#[derive(Debug, Clone, Copy)]
pub enum Credentials<'a> {
    None,
    /// HTTP Basic: the key is the user name.
    ApiKey(&'a str),
    Bearer(&'a str),
}

#[derive(Debug)]
pub(crate) struct ServiceAuth {
    mode: AuthMode,
    keys: Vec<(String, [u8; 32])>,
}

impl ServiceAuth {
    fn from_manifest(manifest: &Manifest) -> std::result::Result<ServiceAuth, String> {
        let mut keys = Vec::with_capacity(manifest.auth.keys.len());
        for key in &manifest.auth.keys {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&key.key_sha256, &mut hash)
                .map_err(|e| format!("API key `{}` has an invalid key_sha256: {e}", key.id))?;
            keys.push((key.id.clone(), hash));
        }
        match manifest.auth.mode {
            AuthMode::Public | AuthMode::ApiKeys => Ok(ServiceAuth {
                mode: manifest.auth.mode,
                keys,
            }),
            AuthMode::Oauth2 => Err(
                "auth mode `oauth2` is not served by this node yet (use `public` or `api-keys`)"
                    .to_owned(),
            ),
        }
    }

    /// Checks the credentials; returns the id of the key used, if any. Every key is compared,
    /// in constant time, so timing does not reveal which key (or how much of one) matched.
    pub(crate) fn check(&self, credentials: Credentials<'_>) -> Result<Option<String>> {
        match self.mode {
            AuthMode::Public => Ok(None),
            AuthMode::ApiKeys | AuthMode::Oauth2 => {
                let secret = match credentials {
                    Credentials::ApiKey(secret) => secret,
                    Credentials::None => {
                        return Err(Error::Unauthorized(
                            "this service requires an API key (HTTP Basic, the key as user name)"
                                .into(),
                        ));
                    }
                    Credentials::Bearer(_) => {
                        return Err(Error::Unauthorized(
                            "this service takes API keys, not bearer tokens".into(),
                        ));
                    }
                };
                let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
                let mut found = None;
                for (id, hash) in &self.keys {
                    if bool::from(hash.ct_eq(&presented)) {
                        found = Some(id.clone());
                    }
                }
                found
                    .map(Some)
                    .ok_or_else(|| Error::Unauthorized("invalid API key".into()))
            }
        }
    }
}

/// Memory a bundle's lookups take once loaded, as a node would hold them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryReport {
    /// Per bundled dataset used by a lookup: (name, rows, Arrow bytes).
    pub tables: Vec<(String, usize, usize)>,
    /// Per lookup (an endpoint's lookup, or `endpoint/enrich[i]`): (name, distinct keys, index bytes).
    pub indexes: Vec<(String, usize, usize)>,
}

/// Loads and indexes every lookup of a bundle (endpoints and enrichment steps) and reports
/// the memory it takes, without serving it.
pub fn memory_report(bundle: &Bundle) -> Result<MemoryReport> {
    let generation = &bundle.manifest().version;
    let unservable = |message: String| Error::Unservable {
        generation: generation.clone(),
        message,
    };
    let mut tables: HashMap<String, Arc<Table>> = HashMap::new();
    let mut report = MemoryReport {
        tables: Vec::new(),
        indexes: Vec::new(),
    };
    for endpoint in &bundle.manifest().endpoints {
        let lookups = endpoint
            .lookup
            .iter()
            .map(|l| (endpoint.id.clone(), l))
            .chain(
                endpoint
                    .enrich
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (format!("{}/enrich[{i}]", endpoint.id), l)),
            );
        for (name, spec) in lookups {
            if matches!(
                bundle.manifest().dataset(&spec.dataset).map(|d| &d.source),
                Some(DatasetSource::Referenced { .. })
            ) {
                // Held by the database, not the node.
                continue;
            }
            let known = tables.contains_key(&spec.dataset);
            let table = table_for(bundle, &mut tables, &spec.dataset)
                .map_err(|m| unservable(format!("{name}: {m}")))?;
            if !known {
                report.tables.push((
                    spec.dataset.clone(),
                    table.num_rows(),
                    table.resident_bytes(),
                ));
            }
            let lookup = Lookup::new(table, lookup_config(spec))
                .map_err(|e| unservable(format!("{name}: {e}")))?;
            report
                .indexes
                .push((name, lookup.distinct_keys(), lookup.index_bytes()));
        }
    }
    Ok(report)
}
