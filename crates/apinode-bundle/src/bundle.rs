//! Opening a bundle: every check, then the verified contents in memory.

use crate::error::{Error, Result};
use crate::manifest::*;
use crate::paths::archive_path_problem;
use crate::validate::validate_manifest;
use crate::{Limits, MANIFEST_FILE, sha256_hex};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{Cursor, Read};
use std::path::Path;
use std::sync::Arc;

/// Bytes an archive may hold beyond its files' content: per entry (headers, names) and overall.
const ENTRY_OVERHEAD: u64 = 4096;
const ARCHIVE_OVERHEAD: u64 = 1 << 20;
/// Decompression buffers start no larger than this, whatever an entry declares.
const MAX_INITIAL_CAPACITY: u64 = 64 << 20;

/// An opened, fully verified bundle: its manifest and the content of every file, in memory.
///
/// Cloning is cheap (shared). [`Bundle::open`] and [`Bundle::from_bytes`] check, in order:
/// the zip structure; the [`Limits`] from the central directory, before decompressing; every
/// entry's path (relative, no `..`, no backslash, no drive letter) and kind (no symbolic link);
/// `manifest.json` (format version, types and unknown fields with their path, then
/// [`validate_manifest`]); that the entries are exactly the listed files; and each file's size
/// and SHA-256.
#[derive(Clone)]
pub struct Bundle {
    inner: Arc<Inner>,
}

struct Inner {
    origin: String,
    manifest: Manifest,
    files: BTreeMap<String, Bytes>,
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes: usize = self.inner.files.values().map(Bytes::len).sum();
        f.debug_struct("Bundle")
            .field("origin", &self.inner.origin)
            .field("service_id", &self.inner.manifest.service_id)
            .field("version", &self.inner.manifest.version)
            .field("files", &self.inner.files.len())
            .field("bytes", &bytes)
            .finish()
    }
}

/// What the central directory says about an entry.
struct EntryInfo {
    index: usize,
    size: u64,
    stored: bool,
}

impl Bundle {
    /// Reads and verifies the bundle at `path`. Errors name the file as origin.
    pub fn open(path: &Path, limits: &Limits) -> Result<Bundle> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let max_archive = limits
            .max_total_size
            .saturating_add(limits.max_manifest_size)
            .saturating_add((limits.max_files as u64).saturating_mul(ENTRY_OVERHEAD))
            .saturating_add(ARCHIVE_OVERHEAD);
        if meta.len() > max_archive {
            return Err(Error::TooLarge {
                what: format!("the size in bytes of bundle `{}`", path.display()),
                limit: max_archive,
                actual: meta.len(),
            });
        }
        let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Bundle::from_bytes(Bytes::from(data), &path.display().to_string(), limits)
    }

    /// Verifies a bundle held in memory. `origin` names it in error messages (a file name, an
    /// upload id).
    pub fn from_bytes(data: Bytes, origin: &str, limits: &Limits) -> Result<Bundle> {
        let place = format!("bundle `{origin}`");
        let mut zip =
            zip::ZipArchive::new(Cursor::new(data.clone())).map_err(|e| Error::NotAZip {
                origin: origin.to_string(),
                detail: e.to_string(),
            })?;
        if zip.has_duplicate_names() {
            return Err(Error::Corrupt {
                origin: place,
                detail: "two entries have the same name".to_string(),
            });
        }
        if zip.len() > limits.max_files {
            return Err(Error::TooLarge {
                what: format!("the number of entries in {place}"),
                limit: limits.max_files as u64,
                actual: zip.len() as u64,
            });
        }

        // The central directory: paths, kinds and sizes, before any decompression.
        let mut entries: BTreeMap<String, EntryInfo> = BTreeMap::new();
        let mut total: u64 = 0;
        for index in 0..zip.len() {
            let entry = zip.by_index_data(index).map_err(|e| Error::Corrupt {
                origin: place.clone(),
                detail: format!("entry #{index} cannot be read: {e}"),
            })?;
            let name = entry
                .name()
                .map_err(|e| Error::Corrupt {
                    origin: place.clone(),
                    detail: format!("entry #{index} has an unreadable name: {e}"),
                })?
                .into_owned();
            let unsafe_path = |reason: String| Error::UnsafePath {
                origin: place.clone(),
                entry: name.clone(),
                reason,
            };
            if entry.is_symlink() {
                return Err(unsafe_path(
                    "it is a symbolic link; a bundle holds only regular files".to_string(),
                ));
            }
            let is_dir = name.ends_with('/');
            let checked = if is_dir {
                &name[..name.len() - 1]
            } else {
                &name[..]
            };
            if let Some(reason) = archive_path_problem(checked) {
                return Err(unsafe_path(reason));
            }
            if is_dir {
                continue;
            }
            if entry.encrypted() {
                return Err(Error::Corrupt {
                    origin: place,
                    detail: format!("entry `{name}` is encrypted, which bundles never are"),
                });
            }
            let size = entry.size();
            let (limit, what) = if name == MANIFEST_FILE {
                (
                    limits.max_manifest_size,
                    format!("the size in bytes of manifest.json in {place}"),
                )
            } else {
                (
                    limits.max_file_size,
                    format!("the size in bytes of `{name}` in {place}"),
                )
            };
            if size > limit {
                return Err(Error::TooLarge {
                    what,
                    limit,
                    actual: size,
                });
            }
            total = total.saturating_add(size);
            if total > limits.max_total_size {
                return Err(Error::TooLarge {
                    what: format!("the total size in bytes of the files in {place}"),
                    limit: limits.max_total_size,
                    actual: total,
                });
            }
            let stored = entry.compression() == zip::CompressionMethod::Stored
                && entry.compressed_size() == size;
            entries.insert(
                name,
                EntryInfo {
                    index,
                    size,
                    stored,
                },
            );
        }

        // The manifest.
        let Some(manifest_entry) = entries.remove(MANIFEST_FILE) else {
            return Err(Error::MissingFile {
                origin: place,
                entry: MANIFEST_FILE.to_string(),
                needed_by: "every bundle".to_string(),
            });
        };
        let manifest_bytes = read_entry(&mut zip, &data, MANIFEST_FILE, &manifest_entry, &place)?;
        let manifest = parse_manifest(&manifest_bytes)?;
        validate_manifest(&manifest)?;

        // Exactly the listed files.
        for (i, listed) in manifest.files.iter().enumerate() {
            let Some(entry) = entries.get(&listed.path) else {
                return Err(Error::MissingFile {
                    origin: place,
                    entry: listed.path.clone(),
                    needed_by: format!("manifest.json `files[{i}]`"),
                });
            };
            if entry.size != listed.size {
                return Err(Error::SizeMismatch {
                    origin: place,
                    entry: listed.path.clone(),
                    expected: listed.size,
                    actual: entry.size,
                });
            }
        }
        if entries.len() != manifest.files.len() {
            for name in entries.keys() {
                let listed = manifest
                    .files
                    .binary_search_by(|f| f.path.as_str().cmp(name.as_str()))
                    .is_ok();
                if !listed {
                    return Err(Error::ExtraFile {
                        origin: place,
                        entry: name.clone(),
                    });
                }
            }
        }

        // Contents and checksums.
        let mut files = BTreeMap::new();
        for listed in &manifest.files {
            let Some(entry) = entries.get(&listed.path) else {
                continue; // unreachable: checked above
            };
            let content = read_entry(&mut zip, &data, &listed.path, entry, &place)?;
            let actual = sha256_hex(&content);
            if actual != listed.sha256 {
                return Err(Error::ChecksumMismatch {
                    origin: place,
                    entry: listed.path.clone(),
                    expected: listed.sha256.clone(),
                    actual,
                });
            }
            files.insert(listed.path.clone(), content);
        }

        Ok(Bundle {
            inner: Arc::new(Inner {
                origin: origin.to_string(),
                manifest,
                files,
            }),
        })
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// Where the bundle came from, as given to [`Bundle::open`] or [`Bundle::from_bytes`].
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// The verified content of a listed file (`manifest.json` itself is not a listed file).
    pub fn file(&self, path: &str) -> Option<&Bytes> {
        self.inner.files.get(path)
    }

    /// Every listed file and its content, sorted by path.
    pub fn files(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.inner.files.iter().map(|(p, b)| (p.as_str(), b))
    }

    /// The files under a directory of the bundle (such as a folder's `folders/<name>`), with
    /// their paths relative to it, sorted.
    pub fn files_under(&self, dir: &str) -> impl Iterator<Item = (&str, &Bytes)> {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        let cut = prefix.len();
        self.inner
            .files
            .range(prefix.clone()..)
            .take_while(move |(p, _)| p.starts_with(&prefix))
            .filter_map(move |(p, b)| p.get(cut..).map(|rel| (rel, b)))
    }

    /// The Parquet file of a bundled dataset. Fails with [`Error::UnknownDataset`] for a name
    /// the manifest does not declare and [`Error::NotBundled`] for a referenced dataset.
    pub fn dataset_parquet(&self, name: &str) -> Result<&Bytes> {
        let Some(dataset) = self.inner.manifest.dataset(name) else {
            return Err(Error::UnknownDataset {
                dataset: name.to_string(),
            });
        };
        match &dataset.source {
            DatasetSource::Bundled { file, .. } => {
                self.inner
                    .files
                    .get(file)
                    .ok_or_else(|| Error::MissingFile {
                        origin: format!("bundle `{}`", self.inner.origin),
                        entry: file.clone(),
                        needed_by: format!("dataset `{name}`"),
                    })
            }
            DatasetSource::Referenced { connection, table } => Err(Error::NotBundled {
                dataset: name.to_string(),
                connection: connection.clone(),
                table: table.clone(),
            }),
        }
    }
}

/// Reads one entry's content: stored entries are sliced out of `data` without a copy, others
/// are decompressed, never beyond the size the central directory declares.
fn read_entry(
    zip: &mut zip::ZipArchive<Cursor<Bytes>>,
    data: &Bytes,
    name: &str,
    entry: &EntryInfo,
    place: &str,
) -> Result<Bytes> {
    let corrupt = |detail: String| Error::Corrupt {
        origin: place.to_string(),
        detail,
    };
    if entry.stored {
        let raw = zip
            .by_index_raw(entry.index)
            .map_err(|e| corrupt(format!("entry `{name}` cannot be read: {e}")))?;
        let start = raw
            .data_start()
            .ok_or_else(|| corrupt(format!("entry `{name}` has no data offset")))?;
        let end = start.checked_add(entry.size);
        return match end {
            Some(end) if end <= data.len() as u64 => Ok(data.slice(start as usize..end as usize)),
            _ => Err(corrupt(format!(
                "entry `{name}` runs past the end of the archive"
            ))),
        };
    }
    let file = zip
        .by_index(entry.index)
        .map_err(|e| corrupt(format!("entry `{name}` cannot be read: {e}")))?;
    let mut content = Vec::with_capacity(entry.size.min(MAX_INITIAL_CAPACITY) as usize);
    file.take(entry.size.saturating_add(1))
        .read_to_end(&mut content)
        .map_err(|e| corrupt(format!("entry `{name}` cannot be decompressed: {e}")))?;
    if content.len() as u64 != entry.size {
        return Err(corrupt(format!(
            "entry `{name}` decompresses to {}{} bytes but the archive declares {}",
            content.len(),
            if content.len() as u64 > entry.size {
                " or more"
            } else {
                ""
            },
            entry.size
        )));
    }
    Ok(Bytes::from(content))
}

/// Fields a manifest dataset entry may have, by `mode` (serde's `flatten` cannot refuse
/// unknown fields, so they are checked on the raw JSON).
fn dataset_fields(mode: &str) -> Option<&'static [&'static str]> {
    match mode {
        "bundled" => Some(&["name", "mode", "file", "rows", "columns"]),
        "referenced" => Some(&["name", "mode", "connection", "table"]),
        _ => None,
    }
}

/// Parses `manifest.json`: the format version first (so a newer format says so rather than
/// failing on a new field), then unknown dataset fields, then the typed manifest with the path
/// of any error.
pub(crate) fn parse_manifest(bytes: &[u8]) -> Result<Manifest> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(MANIFEST_FILE, "", format!("it is not valid JSON: {e}")))?;
    if let Some(found) = value
        .get("format_version")
        .and_then(serde_json::Value::as_u64)
        && found != u64::from(FORMAT_VERSION)
    {
        return Err(Error::UnsupportedVersion {
            found,
            supported: FORMAT_VERSION,
        });
    }
    if let Some(datasets) = value.get("datasets").and_then(serde_json::Value::as_array) {
        for (i, dataset) in datasets.iter().enumerate() {
            let Some(object) = dataset.as_object() else {
                continue;
            };
            let Some(allowed) = object
                .get("mode")
                .and_then(serde_json::Value::as_str)
                .and_then(dataset_fields)
            else {
                continue;
            };
            if let Some(key) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
                return Err(Error::invalid(
                    MANIFEST_FILE,
                    format!("datasets[{i}].{key}"),
                    format!(
                        "unknown field `{key}`, expected one of {}",
                        allowed
                            .iter()
                            .map(|f| format!("`{f}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    }
    // From the parsed value rather than the text: serde_json's messages are clearer there
    // ("invalid type: integer `5`, expected ..."), and the field path locates the error.
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        Error::invalid(
            MANIFEST_FILE,
            path,
            crate::friendly_serde_message(&e.inner().to_string()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_format_version_wins_over_unknown_fields() {
        let err =
            parse_manifest(br#"{ "format_version": 9, "from_the_future": true }"#).unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnsupportedVersion {
                    found: 9,
                    supported: FORMAT_VERSION
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn type_errors_carry_their_path() {
        let err = parse_manifest(br#"{ "format_version": 1, "service_id": 5 }"#).unwrap_err();
        match err {
            Error::Invalid {
                file,
                path,
                message,
            } => {
                assert_eq!(
                    (file.as_str(), path.as_str()),
                    ("manifest.json", "service_id")
                );
                assert!(message.contains("invalid type"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_dataset_fields_are_refused() {
        let err = parse_manifest(
            br#"{ "format_version": 1, "datasets": [{ "name": "d", "mode": "referenced", "connection": "c", "table": "t", "cache": true }] }"#,
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { path, .. } if path == "datasets[0].cache"),
            "{err:?}"
        );
    }

    #[test]
    fn friendly_messages_for_key_and_column_shapes() {
        let message = crate::friendly_serde_message(
            "data did not match any variant of untagged enum KeySpecRepr",
        );
        assert!(message.contains("input"), "{message}");
    }
}
