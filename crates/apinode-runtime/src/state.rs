//! The node's persisted state: services, their generations, mappings, enabled flags and
//! admin keys, in `<data-dir>/state.json`; generation archives in
//! `<data-dir>/services/<service>/generations/<generation>.zip`.
//! Every change is written to a temporary file, synced, then renamed over the old one, so a
//! crash leaves either the old or the new state, never a torn one.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeState {
    pub(crate) version: u32,
    pub(crate) services: BTreeMap<String, ServiceState>,
    pub(crate) admin_keys: Vec<AdminKeyRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceState {
    pub(crate) enabled: bool,
    /// In import order: the last one is the newest.
    pub(crate) generations: Vec<GenerationRecord>,
    pub(crate) mapping: Option<Mapping>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GenerationRecord {
    pub(crate) id: String,
    /// Milliseconds since the epoch.
    pub(crate) imported_on: i64,
    pub(crate) archive_sha256: String,
    pub(crate) archive_size: u64,
}

/// How queries are spread over generations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    pub entries: Vec<MappingEntry>,
    /// Pick by a hash of the query's dispatch key (same key, same generation) rather than at
    /// random.
    pub hash_based: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingEntry {
    pub generation: String,
    pub proba: f64,
}

impl Mapping {
    pub fn single(generation: &str) -> Mapping {
        Mapping {
            entries: vec![MappingEntry {
                generation: generation.to_owned(),
                proba: 1.0,
            }],
            hash_based: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminKeyRecord {
    pub(crate) id: String,
    pub(crate) label: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) created_by: Option<String>,
    pub(crate) created_on: i64,
    pub(crate) expiry: Option<serde_json::Value>,
    pub(crate) key_sha256: String,
}

pub(crate) fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join("state.json")
}

/// Where a generation's files live on disk for its Python and R workers (code, requirements,
/// folders), rewritten from the archive each time the generation loads.
pub(crate) fn generation_files_dir(data_dir: &Path, service: &str, generation: &str) -> PathBuf {
    data_dir
        .join("services")
        .join(service)
        .join("generations")
        .join(format!("{generation}.files"))
}

pub(crate) fn archive_path(data_dir: &Path, service: &str, generation: &str) -> PathBuf {
    data_dir
        .join("services")
        .join(service)
        .join("generations")
        .join(format!("{generation}.zip"))
}

pub(crate) fn load(data_dir: &Path) -> Result<NodeState> {
    let path = state_path(data_dir);
    match fs::read(&path) {
        Ok(bytes) => {
            let state: NodeState =
                serde_json::from_slice(&bytes).map_err(|e| Error::CorruptState {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            if state.version != STATE_VERSION {
                return Err(Error::CorruptState {
                    path,
                    message: format!(
                        "state version {} is not supported (this node reads version {STATE_VERSION})",
                        state.version
                    ),
                });
            }
            Ok(state)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NodeState {
            version: STATE_VERSION,
            ..NodeState::default()
        }),
        Err(e) => Err(Error::storage(path, e)),
    }
}

pub(crate) fn save(data_dir: &Path, state: &NodeState) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(state).expect("node state serializes");
    write_atomically(&state_path(data_dir), &bytes)
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| Error::storage(dir, e))?;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // Persist the rename itself.
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| Error::storage(path, e))
}
