use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of table loading (the dataset is unusable), configuration (the endpoint is
/// misconfigured) and queries (the caller sent a key that cannot be used).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The Parquet data could not be read.
    #[error("cannot read dataset `{dataset}` as Parquet: {source}")]
    Parquet {
        dataset: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// An Arrow operation on the dataset failed (concatenation, type conversion).
    #[error("cannot load dataset `{dataset}`: {source}")]
    Arrow {
        dataset: String,
        #[source]
        source: arrow_schema::ArrowError,
    },
    /// The dataset has more rows than a table can index.
    #[error("dataset `{dataset}` has {rows} rows; a lookup table holds at most {max}")]
    TooManyRows {
        dataset: String,
        rows: usize,
        max: usize,
    },
    /// The lookup configuration names a column the table does not have.
    #[error("dataset `{dataset}` has no column `{column}` (columns: {available})")]
    UnknownColumn {
        dataset: String,
        column: String,
        available: String,
    },
    /// A column's type cannot be used for lookups.
    #[error(
        "column `{column}` of dataset `{dataset}` has type {data_type}, which lookups do not support"
    )]
    UnsupportedType {
        dataset: String,
        column: String,
        data_type: String,
    },
    /// The configuration itself is inconsistent.
    #[error("invalid lookup configuration: {0}")]
    Config(String),
    /// The query lacks a key and the endpoint is configured to fail on that.
    #[error("missing lookup key `{input}`")]
    MissingKey { input: String },
    /// A key value cannot be converted to the key column's type.
    #[error("lookup key `{input}` expects {expected}, got {got}")]
    InvalidKey {
        input: String,
        expected: &'static str,
        got: String,
    },
    /// A typed key has the wrong number of values for the lookup's key columns.
    #[error("the lookup has {expected} key column(s), the key has {got} value(s)")]
    KeyArity { expected: usize, got: usize },
    /// No row matches and the endpoint is configured to fail on that.
    #[error("no row of dataset `{dataset}` matches {keys}")]
    NoMatch { dataset: String, keys: String },
    /// The database behind a connection cannot be reached, is shutting down, or did not
    /// answer in time: retry later.
    #[error("connection `{connection}` is unavailable: {message}")]
    Unavailable { connection: String, message: String },
    /// The database answered a statement with an error (a table or column that does not
    /// exist, a type it cannot convert, ...).
    #[error("connection `{connection}`: {message}")]
    Database { connection: String, message: String },
    /// A value cannot be stored (loading a table); `row` is 1-based.
    #[error("column `{column}` row {row}: {message}")]
    InvalidValue {
        column: String,
        row: u64,
        message: String,
    },
    /// Several rows match and the endpoint is configured to fail on that.
    #[error("{count} rows of dataset `{dataset}` match {keys}; at most one was expected")]
    MultipleMatches {
        dataset: String,
        keys: String,
        count: usize,
    },
    /// A SQL query's parameter is missing, not declared, or not of its declared type: fix
    /// the query.
    #[error("parameter `{name}`: {message}")]
    Parameter { name: String, message: String },
    /// A SQL statement cannot run as written (syntax, an unknown table or column, a type
    /// mismatch, a statement bundled data does not allow): fix the endpoint. `statement`
    /// indexes the endpoint's statements.
    #[error("statements[{statement}]: {message}")]
    InvalidStatement { statement: usize, message: String },
    /// A SQL statement failed on the values it was given (a data exception, a constraint
    /// violated): fix the query's values.
    #[error("statements[{statement}]: {message}")]
    StatementRejected { statement: usize, message: String },
}
