//! `apinode-lookup`: key lookups in in-memory Arrow tables.
//!
//! A [`Table`] is a dataset loaded from Parquet into one Arrow record batch, its columns
//! normalized to the handful of types lookups understand (string, int64, float64, boolean,
//! date, timestamp). A [`Lookup`] indexes a table on one or more key columns and answers
//! queries given as JSON objects: it finds the matching row, applies the configured behaviour
//! for a missing key, no match or several matches, and writes the selected (renamed) output
//! columns as a JSON object straight into a byte buffer. Programs that hold typed keys rather
//! than JSON use [`Lookup::find_key`], which skips the JSON reading and conversion.
//!
//! What it is not: it knows nothing about bundles, HTTP or services; the runtime turns a
//! bundle's lookup sections into [`LookupConfig`]s. It does not run SQL.
//!
//! Invariants: tables are immutable once loaded and shared by `Arc`; the index stores row ids
//! only (keys are compared against the Arrow arrays, never copied); a NULL in a key column
//! never matches; a query allocates nothing proportional to the table.

mod error;
mod index;
mod json;
mod key;
mod lookup;
mod table;

pub use error::{Error, Result};
pub use key::{KeyType, KeyValue};
pub use lookup::{
    Enriched, Enrichment, IgnoreReason, KeyColumn, Lookup, LookupAction, LookupConfig, Match,
    OutputColumn,
};
pub use table::{MAX_ROWS, Table};
