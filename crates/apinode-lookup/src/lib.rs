//! `apinode-lookup`: key lookups in in-memory Arrow tables.
//!
//! A [`Table`] is a dataset loaded from Parquet into one Arrow record batch, its columns
//! normalized to the handful of types lookups understand (string, int64, float64, boolean,
//! date, timestamp). A [`Lookup`] indexes a table on one or more key columns and answers
//! queries given as JSON objects: it finds the matching row, applies the configured behaviour
//! for a missing key, no match or several matches, and writes the selected (renamed) output
//! columns as a JSON object straight into a byte buffer. Programs that hold typed keys rather
//! than JSON use [`Lookup::find_key`], which skips the JSON reading and conversion. A query's
//! JSON object is any [`Record`]: a `serde_json::Map`, or a [`JsonRecord`] deserialized from
//! the request's text without a `Value` tree (what the HTTP server does for a `lookup`).
//!
//! Referenced data stays in PostgreSQL: a [`PgConnection`] is a named pool, a
//! [`ReferencedLookup`] answers the same queries as a [`Lookup`] (same configuration,
//! behaviours, errors and JSON bytes) in one round trip per query, on this crate's own small
//! runtime, and a [`TableLoader`] loads record batches into a new table with `COPY`.
//!
//! What it is not: it knows nothing about bundles, HTTP or services; the runtime turns a
//! bundle's lookup sections into [`LookupConfig`]s and resolves connection names.
//!
//! Invariants: tables are immutable once loaded and shared by `Arc`; the index stores row ids
//! only (keys are compared against the Arrow arrays, never copied); a NULL in a key column
//! never matches; a query allocates nothing proportional to the table.

mod error;
mod exec;
mod index;
mod json;
mod key;
mod lookup;
mod pg;
mod record;
mod sql;
#[cfg(feature = "datafusion")]
mod sql_bundled;
mod table;

pub use error::{Error, Result};
pub use key::{KeyType, KeyValue};
pub use lookup::{
    EnrichError, EnrichStep, Enriched, Enrichment, IgnoreReason, KeyColumn, Lookup, LookupAction,
    LookupConfig, Match, OutputColumn,
};
pub use pg::{
    Answer, DEFAULT_CONNECTION, ItemError, PgConfig, PgConnection, ReferencedLookup,
    ReferencedQuery, TableLoader, Written, pg_type_name, quote_table,
};
pub use record::{JsonRecord, JsonRef, Record};
pub use sql::{
    ParamValue, ReferencedSql, SqlAnswer, SqlColumn, SqlConfig, SqlParam, SqlQuery, SqlStatement,
};
#[cfg(feature = "datafusion")]
pub use sql_bundled::BundledSql;
pub use table::{MAX_ROWS, Table};
