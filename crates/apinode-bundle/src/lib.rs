//! The apinode bundle format.
//!
//! A *service folder* holds a `service.toml` (the [`ServiceSpec`]) and the files it names:
//! datasets (CSV or Parquet), resource folders, model exports, Python and R code. [`build`]
//! validates the folder, converts every bundled dataset to normalized Parquet and writes a
//! *bundle*: a reproducible zip archive with a `manifest.json` (the [`Manifest`]: the spec
//! normalized, with every default explicit) and the files, each listed with its size and
//! SHA-256. [`Bundle::open`] reads a bundle back and verifies everything (safe paths, no
//! symbolic links, sizes, checksums, no unlisted file, every manifest rule) within [`Limits`],
//! naming the culprit on failure.
//!
//! This crate is the format only: the spec, its validation and the archive. It serves nothing:
//! no HTTP, no query engine (DataFusion), no async runtime, no model or code execution. The
//! node and the lookup engine build on it. `docs/bundle-format.md` in the repository describes
//! the format for users.
//!
//! ```no_run
//! use apinode_bundle::{build, BuildOptions, Bundle, Limits};
//! use std::path::Path;
//!
//! # fn main() -> apinode_bundle::Result<()> {
//! let report = build(Path::new("examples/customers"), Path::new("customers.zip"), &BuildOptions::default())?;
//! println!("built {} version {}", report.manifest.service_id, report.manifest.version);
//! let bundle = Bundle::open(Path::new("customers.zip"), &Limits::default())?;
//! let parquet = bundle.dataset_parquet("customers")?;
//! # let _ = parquet;
//! # Ok(())
//! # }
//! ```

pub mod manifest;
pub use manifest::*;

mod build;
mod bundle;
mod dataset;
mod error;
mod paths;
mod validate;

pub use build::{BuildOptions, BuildReport, build, load_spec};
pub use bundle::Bundle;
pub use dataset::{arrow_type, column_type_of, normalize_dataset};
pub use error::{Error, Result};
pub use validate::{
    count_sql_placeholders, is_sha256_hex, is_valid_id, is_valid_version, number_sql_placeholders,
    sql_placeholders, validate_manifest,
};

/// The name of the spec file at the root of a service folder.
pub const SERVICE_FILE: &str = "service.toml";
/// The name of the manifest at the root of a bundle.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Bounds [`Bundle::open`] enforces before decompressing anything (from the zip's central
/// directory) and again while decompressing, so a crafted archive cannot exhaust memory.
/// [`build`] refuses to write a bundle over the default limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Entries in the archive, `manifest.json` and directory entries included.
    pub max_files: usize,
    /// Uncompressed bytes of any one file.
    pub max_file_size: u64,
    /// Uncompressed bytes of all files together.
    pub max_total_size: u64,
    /// Bytes of `manifest.json`.
    pub max_manifest_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: 10_000,
            max_file_size: 2 << 30,
            max_total_size: 8 << 30,
            max_manifest_size: 16 << 20,
        }
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Replaces serde's messages about the manifest's private helper types with what to write.
pub(crate) fn friendly_serde_message(message: &str) -> String {
    if message.contains("untagged enum KeySpecRepr") {
        "expected a key column name, or a table like { column = \"id\", input = \"customer_id\" }"
            .to_string()
    } else if message.contains("untagged enum OutputColumnRepr") {
        "expected a column name, or a table like { column = \"score\", output = \"customer_score\" }"
            .to_string()
    } else {
        message.to_string()
    }
}
