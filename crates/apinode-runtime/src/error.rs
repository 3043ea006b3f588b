use std::path::PathBuf;
use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in a runtime operation. The variants group by what the caller can do:
/// fix the request (`NotFound`, `Conflict`, `Invalid*`, `Lookup`, `Enrichment`, `Scoring`
/// when its source is an input error), fix the bundle (`Bundle`,
/// `Unservable`), authenticate (`Unauthorized`), wait or activate (`Unavailable`), or look at
/// the node's storage (`Storage`).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A service, endpoint, generation or key does not exist.
    #[error("{what} not found: {id}")]
    NotFound { what: &'static str, id: String },
    /// The object already exists (with different content, for generations).
    #[error("{0}")]
    Conflict(String),
    /// An admin request is malformed (bad id, bad mapping, bad parameter).
    #[error("{0}")]
    InvalidRequest(String),
    /// A user query is malformed: `location` names the offending field (e.g. `items[2].data`).
    #[error("{location}: {message}")]
    InvalidQuery { location: String, message: String },
    /// The route does not fit the endpoint's kind.
    #[error("endpoint `{endpoint}` is a {kind} endpoint: it answers {routes}, not `{action}`")]
    WrongRoute {
        endpoint: String,
        kind: &'static str,
        routes: String,
        action: String,
    },
    /// A lookup rejected the query (missing or invalid key, no match or several matches when
    /// the endpoint is configured to fail). `item` is the index in a multi query.
    #[error("{}{source}", item.map(|i| format!("items[{i}]: ")).unwrap_or_default())]
    Lookup {
        item: Option<usize>,
        #[source]
        source: apinode_lookup::Error,
    },
    /// An enrichment lookup rejected a prediction record (missing or invalid key, no match or
    /// several matches when the step is configured to fail). `step` indexes `enrich`.
    #[error("{}enrich[{step}]: {source}", item_prefix(*item))]
    Enrichment {
        item: Option<usize>,
        step: usize,
        #[source]
        source: apinode_lookup::Error,
    },
    /// A SQL endpoint's query failed: a parameter missing or ill-typed, values the statement
    /// rejects (fix the query), a connection down (retry), or a statement that no longer runs.
    #[error("{source}")]
    Sql {
        #[source]
        source: apinode_lookup::Error,
    },
    /// The model cannot score a record (a feature value of the wrong type, for instance).
    #[error("{}features: {source}", item_prefix(*item))]
    Scoring {
        item: Option<usize>,
        #[source]
        source: apinode_scoring::Error,
    },
    /// A Python or R endpoint's workers could not answer: overloaded or draining (retry
    /// later), a timeout or a dead worker (the worker is replaced), or the user code raised.
    #[error("{source}")]
    Worker {
        #[source]
        source: apinode_workers::Error,
    },
    /// The archive is not a valid bundle.
    #[error("invalid bundle {origin}: {source}")]
    Bundle {
        origin: String,
        #[source]
        source: apinode_bundle::Error,
    },
    /// The bundle is valid but this node cannot serve it (an endpoint kind or feature it does
    /// not run yet, a dataset that does not load).
    #[error("generation `{generation}` cannot be served: {message}")]
    Unservable { generation: String, message: String },
    /// Missing or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// The service cannot answer now: disabled, or no generation activated.
    #[error("{0}")]
    Unavailable(String),
    /// The node's data directory could not be read or written.
    #[error("node storage error at {}: {source}", path.display())]
    Storage {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The node's state file is unreadable.
    #[error("node state file {} is corrupt: {message}", path.display())]
    CorruptState { path: PathBuf, message: String },
}

/// `items[i].` for an item of a multi query, nothing for a single one.
fn item_prefix(item: Option<usize>) -> String {
    item.map(|i| format!("items[{i}].")).unwrap_or_default()
}

impl Error {
    pub(crate) fn not_found(what: &'static str, id: impl Into<String>) -> Error {
        Error::NotFound {
            what,
            id: id.into(),
        }
    }

    pub(crate) fn storage(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Storage {
            path: path.into(),
            source,
        }
    }
}
