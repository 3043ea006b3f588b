//! The data model of a service: what `service.toml` says (the *spec*) and what a bundle's
//! `manifest.json` records (the *manifest*: the spec normalized, with every default explicit,
//! datasets resolved to bundled Parquet files, and a checksum per file).
//!
//! Endpoint kinds share one `EndpointSpec` shape: common fields plus one section named after
//! the kind (`lookup`, `prediction`, `python`, `r`, `sql`). A flat struct, rather than a tagged
//! enum, keeps serde's error paths exact (`endpoints[2].lookup.keys`) and lets validation say
//! "section `sql` is not allowed for kind `dataset-lookup`" instead of a generic parse error.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Version of the manifest layout written by this crate. Readers refuse newer versions.
pub const FORMAT_VERSION: u32 = 1;

/// The default connection name referenced datasets use (the name Dataiku Cloud syncs into).
pub const DEFAULT_REFERENCED_CONNECTION: &str = "api-node-referenced-data";

// ---------------------------------------------------------------------------------------------
// service.toml
// ---------------------------------------------------------------------------------------------

/// The contents of a service folder's `service.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub service: ServiceInfo,
    #[serde(default)]
    pub auth: AuthSpec,
    #[serde(default)]
    pub datasets: Vec<DatasetSpec>,
    /// Resource folders copied into the bundle (Dataiku's managed folders, seen by code as `folders`).
    #[serde(default)]
    pub folders: Vec<FolderSpec>,
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceInfo {
    /// The service id used in URLs: `[A-Za-z0-9_-]{1,64}`.
    pub id: String,
    /// The generation id; `apinode bundle build --version` overrides it. When neither is given
    /// the build derives one from the content hash, so identical inputs give the same id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// Anyone may query.
    #[default]
    Public,
    /// HTTP Basic with one of the service's keys as user name (Dataiku's `API_KEYS`).
    ApiKeys,
    /// JWT bearer tokens checked against a JWKS (Dataiku's `OAUTH2`); validated, not served yet.
    Oauth2,
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMode::Public => "public",
            AuthMode::ApiKeys => "api-keys",
            AuthMode::Oauth2 => "oauth2",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    #[serde(default)]
    pub mode: AuthMode,
    #[serde(default)]
    pub keys: Vec<ApiKeySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Spec>,
}

/// A service API key. `service.toml` gives the secret (`key`) or its hash (`key_sha256`);
/// the bundle only ever stores the SHA-256, so an archive does not leak the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    /// Identifier reported in logs in place of the secret; defaults to `key-<n>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Lower-case hex SHA-256 of the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Spec {
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_claim: Option<String>,
}

/// A dataset: bundled (`path`, CSV or Parquet, converted to Parquet at build) or referenced
/// (`table` on a named SQL connection; the data stays in the database).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// `[A-Za-z0-9_-]{1,64}`, unique among datasets.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Inferred from the extension (`.csv`, `.parquet`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DatasetFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<CsvOptions>,
    /// Explicit column types; inferred from the data when absent. With a schema, every listed
    /// column must exist and convert, and columns not listed are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Vec<ColumnSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetFormat {
    Csv,
    Parquet,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    #[serde(default = "default_true")]
    pub header: bool,
    /// Cell values read as NULL (default: the empty cell).
    #[serde(default = "default_null_values")]
    pub null_values: Vec<String>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            delimiter: default_delimiter(),
            header: true,
            null_values: default_null_values(),
        }
    }
}

fn default_delimiter() -> char {
    ','
}
fn default_true() -> bool {
    true
}
fn default_null_values() -> Vec<String> {
    vec![String::new()]
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
}

/// The column types a dataset may hold. Aliases accept Dataiku's and SQL's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    String,
    #[serde(alias = "int", alias = "bigint", alias = "integer", alias = "long")]
    Int64,
    #[serde(alias = "double", alias = "float", alias = "real")]
    Float64,
    #[serde(alias = "bool")]
    Boolean,
    Date,
    /// Microseconds since the epoch, UTC.
    Timestamp,
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ColumnType::String => "string",
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Boolean => "boolean",
            ColumnType::Date => "date",
            ColumnType::Timestamp => "timestamp",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderSpec {
    /// `[A-Za-z0-9_-]{1,64}`, unique among folders.
    pub name: String,
    /// A directory inside the service folder, copied recursively.
    pub path: String,
}

/// The eight endpoint kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointKind {
    Prediction,
    Clustering,
    PythonPrediction,
    RPrediction,
    PythonFunction,
    RFunction,
    SqlQuery,
    DatasetLookup,
}

impl EndpointKind {
    pub const ALL: [EndpointKind; 8] = [
        EndpointKind::Prediction,
        EndpointKind::Clustering,
        EndpointKind::PythonPrediction,
        EndpointKind::RPrediction,
        EndpointKind::PythonFunction,
        EndpointKind::RFunction,
        EndpointKind::SqlQuery,
        EndpointKind::DatasetLookup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Prediction => "prediction",
            EndpointKind::Clustering => "clustering",
            EndpointKind::PythonPrediction => "python-prediction",
            EndpointKind::RPrediction => "r-prediction",
            EndpointKind::PythonFunction => "python-function",
            EndpointKind::RFunction => "r-function",
            EndpointKind::SqlQuery => "sql-query",
            EndpointKind::DatasetLookup => "dataset-lookup",
        }
    }

    /// The section of `EndpointSpec` this kind requires.
    pub fn section(self) -> &'static str {
        match self {
            EndpointKind::Prediction | EndpointKind::Clustering => "model",
            EndpointKind::PythonPrediction | EndpointKind::PythonFunction => "python",
            EndpointKind::RPrediction | EndpointKind::RFunction => "r",
            EndpointKind::SqlQuery => "sql",
            EndpointKind::DatasetLookup => "lookup",
        }
    }

    /// The user-API routes (`/public/api/v1/{service}/{endpoint}/{route}`) this kind answers.
    pub fn routes(self) -> &'static [&'static str] {
        match self {
            EndpointKind::Prediction
            | EndpointKind::Clustering
            | EndpointKind::PythonPrediction
            | EndpointKind::RPrediction => &["predict", "predict-multi"],
            EndpointKind::PythonFunction | EndpointKind::RFunction => &["run"],
            EndpointKind::SqlQuery => &["query"],
            EndpointKind::DatasetLookup => &["lookup", "lookup-multi"],
        }
    }

    /// Whether records of this kind are predictions that may be enriched by lookups.
    pub fn is_prediction(self) -> bool {
        self.routes()[0] == "predict"
    }
}

impl fmt::Display for EndpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One endpoint. Exactly the section named by `kind.section()` must be present; `enrich` is
/// allowed on prediction kinds, `pool` on Python and R kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// `[A-Za-z0-9_-]{1,64}`, unique within the service.
    pub id: String,
    pub kind: EndpointKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup: Option<LookupSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<PythonSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<RSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<SqlSpec>,
    /// Lookups that fill or override features before a prediction, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enrich: Vec<LookupSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolSpec>,
    /// Example queries shipped with the service (request bodies as JSON).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test_queries: Vec<serde_json::Value>,
}

/// A key lookup in one dataset: the `dataset-lookup` endpoint's section and an enrichment step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupSpec {
    pub dataset: String,
    /// The key columns, at least one. `"col"` or `{ column = "col", input = "name" }` where
    /// `input` is the name in the query's `data` (or the record's features); default the column.
    pub keys: Vec<KeySpec>,
    /// Columns copied out, renamable: `"col"` or `{ column = "col", output = "name" }`.
    /// Empty means every column of the dataset, under its own name.
    #[serde(default)]
    pub columns: Vec<OutputColumnSpec>,
    #[serde(default = "LookupAction::default_missing_key")]
    pub on_missing_key: LookupAction,
    #[serde(default = "LookupAction::default_no_match")]
    pub on_no_match: LookupAction,
    #[serde(default = "LookupAction::default_multiple_matches")]
    pub on_multiple_matches: LookupAction,
}

/// What a lookup does when a key is missing from the input, matches nothing, or matches
/// several rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LookupAction {
    /// Answer the query with a 4xx error.
    Fail,
    /// Answer `ignored: true` with an `ignoreReason` for that record.
    Ignore,
    /// Keep the record; output columns are null.
    Null,
    /// Use the first matching row in dataset order (only for `on_multiple_matches`).
    First,
}

impl LookupAction {
    fn default_missing_key() -> Self {
        LookupAction::Fail
    }
    fn default_no_match() -> Self {
        LookupAction::Ignore
    }
    fn default_multiple_matches() -> Self {
        LookupAction::Ignore
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "KeySpecRepr", into = "KeySpecFull")]
pub struct KeySpec {
    pub column: String,
    pub input: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySpecFull {
    column: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum KeySpecRepr {
    Name(String),
    Full(KeySpecFull),
}

impl From<KeySpecRepr> for KeySpec {
    fn from(repr: KeySpecRepr) -> Self {
        match repr {
            KeySpecRepr::Name(column) => KeySpec {
                input: column.clone(),
                column,
            },
            KeySpecRepr::Full(KeySpecFull { column, input }) => KeySpec {
                input: input.unwrap_or_else(|| column.clone()),
                column,
            },
        }
    }
}

impl From<KeySpec> for KeySpecFull {
    fn from(key: KeySpec) -> Self {
        KeySpecFull {
            column: key.column,
            input: Some(key.input),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "OutputColumnRepr", into = "OutputColumnFull")]
pub struct OutputColumnSpec {
    pub column: String,
    pub output: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputColumnFull {
    column: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OutputColumnRepr {
    Name(String),
    Full(OutputColumnFull),
}

impl From<OutputColumnRepr> for OutputColumnSpec {
    fn from(repr: OutputColumnRepr) -> Self {
        match repr {
            OutputColumnRepr::Name(column) => OutputColumnSpec {
                output: column.clone(),
                column,
            },
            OutputColumnRepr::Full(OutputColumnFull { column, output }) => OutputColumnSpec {
                output: output.unwrap_or_else(|| column.clone()),
                column,
            },
        }
    }
}

impl From<OutputColumnSpec> for OutputColumnFull {
    fn from(col: OutputColumnSpec) -> Self {
        OutputColumnFull {
            column: col.column,
            output: Some(col.output),
        }
    }
}

/// A visual model export (`prediction`, `clustering`): a folder, a `model.zip` or an export zip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub path: String,
    /// Include the post-enrichment features in each result (`postEnrich`).
    #[serde(default)]
    pub return_post_enrich: bool,
}

/// User Python code: `python-prediction` names a predictor `class`, `python-function` a `function`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonSpec {
    /// A `.py` file in the service folder.
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// A `requirements.txt` in the service folder; the node builds a cached virtualenv from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirements: Option<String>,
    /// Names of `folders` the code may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folders: Vec<String>,
}

/// User R code: the `function` to call, and the R packages it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RSpec {
    /// A `.R` file in the service folder.
    pub code: String,
    pub function: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folders: Vec<String>,
}

/// A parameterised SQL endpoint over bundled datasets or a referenced connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSpec {
    /// A connection name (remappable on the node). Absent: the statements run on the bundled
    /// `datasets`, as tables named after them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<String>,
    /// Statements run in order; the last one's result is the answer.
    pub statements: Vec<SqlStatementSpec>,
    /// Declared parameters: every name used by a statement must be declared here.
    #[serde(default)]
    pub parameters: Vec<SqlParameterSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlStatementSpec {
    pub sql: String,
    /// One parameter name per `?` placeholder, in order; a name may repeat.
    #[serde(default)]
    pub params: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlParameterSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub param_type: ColumnType,
    #[serde(default = "default_true")]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
}

/// Worker pool settings for Python and R kinds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    #[serde(default = "PoolSpec::default_min")]
    pub min_workers: u32,
    #[serde(default = "PoolSpec::default_max")]
    pub max_workers: u32,
    /// Calls waiting for a worker beyond this answer 503.
    #[serde(default = "PoolSpec::default_queue")]
    pub queue: u32,
    #[serde(default = "PoolSpec::default_timeout_ms")]
    pub timeout_ms: u64,
}

impl PoolSpec {
    fn default_min() -> u32 {
        1
    }
    fn default_max() -> u32 {
        4
    }
    fn default_queue() -> u32 {
        64
    }
    fn default_timeout_ms() -> u64 {
        10_000
    }
}

impl Default for PoolSpec {
    fn default() -> Self {
        PoolSpec {
            min_workers: Self::default_min(),
            max_workers: Self::default_max(),
            queue: Self::default_queue(),
            timeout_ms: Self::default_timeout_ms(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// manifest.json
// ---------------------------------------------------------------------------------------------

/// The normalized manifest stored as `manifest.json` at the root of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub service_id: String,
    /// The generation id.
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The tool that built the bundle, e.g. `apinode 0.1.0`.
    pub built_by: String,
    pub auth: AuthManifest,
    pub datasets: Vec<DatasetManifest>,
    pub folders: Vec<FolderSpec>,
    pub endpoints: Vec<EndpointSpec>,
    /// Every file of the archive but `manifest.json`, sorted by path.
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthManifest {
    pub mode: AuthMode,
    pub keys: Vec<ApiKeyManifest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Spec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyManifest {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Lower-case hex SHA-256 of the secret.
    pub key_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetManifest {
    pub name: String,
    #[serde(flatten)]
    pub source: DatasetSource,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum DatasetSource {
    /// Converted to Parquet at `file` inside the bundle.
    Bundled {
        file: String,
        rows: u64,
        columns: Vec<ColumnSpec>,
    },
    /// Left in a SQL database, reached through a named connection.
    Referenced { connection: String, table: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative, `/`-separated, inside the bundle.
    pub path: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
}

impl Manifest {
    pub fn endpoint(&self, id: &str) -> Option<&EndpointSpec> {
        self.endpoints.iter().find(|e| e.id == id)
    }

    pub fn dataset(&self, name: &str) -> Option<&DatasetManifest> {
        self.datasets.iter().find(|d| d.name == name)
    }
}
