//! The crate's one error type.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong writing or reading the audit log. `SpoolFull` and `Closed` are per
/// record: the caller answers the query accordingly (503 with `reject`); `Io` at open means the
/// spool directory is unusable: fix its path or permissions. Reading: `InvalidQuery` (fix the
/// SQL), `StoreUnavailable` (the store cannot be listed or read: retry, or fix its address or
/// credentials), `CorruptLog` (an object in the store is not the log's: move it away).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The spool holds `cap` bytes already (the store is down or slow) and the policy is
    /// `reject`: the query should not be answered without its record.
    #[error(
        "the audit spool is full ({used} of {cap} bytes waiting for upload): the log store is \
         down or too slow"
    )]
    SpoolFull { used: u64, cap: u64 },
    /// The store's URL or settings are unusable (a scheme other than a path, `file://` or
    /// `s3://`, a bucket missing, credentials the builder rejects).
    #[error("cannot use the log store `{url}`: {message}")]
    Store { url: String, message: String },
    /// The log is closed (the node is shutting down).
    #[error("the audit log is closed")]
    Closed,
    /// The SQL does not parse or does not fit the log tables (a column or table that does not
    /// exist, types that do not compare).
    #[error("invalid query over the audit log: {message}")]
    InvalidQuery { message: String },
    /// A valid query failed while it ran (a value that does not cast, memory).
    #[error("the query over the audit log failed: {message}")]
    QueryFailed { message: String },
    /// Listing or reading the log store failed (down, unreachable, access refused).
    #[error("cannot read the log store: {message}")]
    StoreUnavailable { message: String },
    /// A stored object in the log's layout holds a line that is not an audit record (line 0:
    /// the object as a whole).
    #[error("the log object `{object}` is not an audit log (line {line}): {message}")]
    CorruptLog {
        object: String,
        line: usize,
        message: String,
    },
    /// The writer could not write the spool: the record may not be durable.
    #[error("cannot write the audit spool at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
