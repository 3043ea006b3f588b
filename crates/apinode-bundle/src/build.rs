//! Reading a service folder and building a bundle from it.

use crate::dataset;
use crate::error::{Error, Result};
use crate::manifest::*;
use crate::paths::{Expect, folder_origin, resolve_in_folder, walk_dir};
use crate::validate::{
    Context, DatasetInfo, SPEC_FILE, dataset_archive_path, dataset_format, default_key_id,
    folder_archive_path, is_valid_version, spec_path, validate_endpoints, validate_manifest,
    validate_spec,
};
use crate::{Limits, MANIFEST_FILE, sha256_hex};
use sha2::Digest;
use std::collections::btree_map::{BTreeMap, Entry};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Options of [`build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// The generation id, overriding `service.version` (`apinode bundle build --version`).
    pub version: Option<String>,
    /// Recorded as the manifest's `built_by`.
    pub built_by: String,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            version: None,
            built_by: format!("apinode-bundle {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// What [`build`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildReport {
    /// The manifest stored in the bundle.
    pub manifest: Manifest,
    /// The size of the archive in bytes.
    pub archive_size: u64,
}

/// Reads and validates `service_dir/service.toml`: its syntax and types (errors carry the field
/// path, and the line and column), every rule of the format, and the existence (without
/// symbolic links) of every file and folder it names. Dataset columns are checked against
/// lookups here only when the dataset has an explicit `schema`; [`build`] checks the rest once
/// it has read the data.
///
/// A `.tsv` dataset whose `csv.delimiter` is not set gets a tab delimiter in the returned spec.
pub fn load_spec(service_dir: &Path) -> Result<ServiceSpec> {
    let path = service_dir.join(SPEC_FILE);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::MissingFile {
                origin: folder_origin(service_dir),
                entry: SPEC_FILE.to_string(),
                needed_by: "every service folder".to_string(),
            });
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    if meta.file_type().is_symlink() || !meta.is_file() {
        return Err(Error::UnsafePath {
            origin: folder_origin(service_dir),
            entry: SPEC_FILE.to_string(),
            reason: "it is not a regular file (symbolic links are not followed)".to_string(),
        });
    }
    let limit = Limits::default().max_manifest_size;
    if meta.len() > limit {
        return Err(Error::TooLarge {
            what: format!("the size in bytes of `{}`", path.display()),
            limit,
            actual: meta.len(),
        });
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let spec = parse_spec(&text)?;
    validate_spec(&spec, Some(service_dir))?;
    Ok(spec)
}

/// Parses `service.toml` text (no validation but the types), with the `.tsv` default applied.
pub(crate) fn parse_spec(text: &str) -> Result<ServiceSpec> {
    let de = toml::Deserializer::parse(text)
        .map_err(|e| Error::invalid(SPEC_FILE, "", toml_message(text, &e)))?;
    let mut spec: ServiceSpec = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        Error::invalid(SPEC_FILE, path, toml_message(text, e.inner()))
    })?;
    apply_tsv_default(text, &mut spec);
    Ok(spec)
}

/// A TOML error's message with its line and column.
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let message = crate::friendly_serde_message(e.message().trim_end_matches('.'));
    match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let before = text.get(..start).unwrap_or("");
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("{message} (line {line}, column {column})")
        }
        None => message,
    }
}

/// `.tsv` files default to a tab delimiter when `csv.delimiter` is not written.
fn apply_tsv_default(text: &str, spec: &mut ServiceSpec) {
    let raw: Option<toml::Table> = toml::from_str(text).ok();
    let raw_datasets = raw
        .as_ref()
        .and_then(|t| t.get("datasets"))
        .and_then(|d| d.as_array());
    for (i, ds) in spec.datasets.iter_mut().enumerate() {
        let is_tsv = ds
            .path
            .as_deref()
            .is_some_and(|p| p.to_ascii_lowercase().ends_with(".tsv"));
        if !is_tsv || ds.format == Some(DatasetFormat::Parquet) {
            continue;
        }
        let delimiter_written = raw_datasets
            .and_then(|a| a.get(i))
            .and_then(|d| d.get("csv"))
            .and_then(|c| c.get("delimiter"))
            .is_some();
        if !delimiter_written {
            ds.csv.get_or_insert_with(CsvOptions::default).delimiter = '\t';
        }
    }
}

/// Where the content of an archive entry comes from.
enum Source {
    /// A file of the service folder.
    Disk(PathBuf),
    /// A converted dataset in an anonymous temporary file.
    Temp(File),
}

/// The archive's files, by archive path, with the spec field that put each there.
#[derive(Default)]
struct Plan {
    entries: BTreeMap<String, (Source, String)>,
}

impl Plan {
    fn add(&mut self, archive_path: String, source: Source, field: &str) -> Result<()> {
        if archive_path == MANIFEST_FILE {
            return Err(Error::invalid(
                SPEC_FILE,
                field,
                "names `manifest.json`, which the bundle reserves for its manifest; rename the \
                 file",
            ));
        }
        match self.entries.entry(archive_path) {
            Entry::Vacant(slot) => {
                slot.insert((source, field.to_string()));
                Ok(())
            }
            Entry::Occupied(slot) => {
                let (existing, first_field) = slot.get();
                match (existing, &source) {
                    (Source::Disk(a), Source::Disk(b)) if a == b => Ok(()),
                    _ => Err(Error::invalid(
                        SPEC_FILE,
                        field,
                        format!(
                            "would be stored at `{}`, where `{first_field}` already stores a \
                             different file; rename or move one of them",
                            slot.key()
                        ),
                    )),
                }
            }
        }
    }
}

/// Builds the bundle of `service_dir` at `out`.
///
/// Validates the folder ([`load_spec`]), converts bundled datasets to `datasets/<name>.parquet`
/// (zstd), copies folders to `folders/<name>/` and the other named files to their normalized
/// paths, computes the generation id (`opts.version`, else `service.version`, else a content
/// hash), and writes a reproducible zip: entries sorted by path, `manifest.json` last, Parquet
/// stored, everything else deflated, every timestamp 1980-01-01. The archive is written to a
/// temporary file beside `out` and renamed into place, so `out` is never half-written.
pub fn build(service_dir: &Path, out: &Path, opts: &BuildOptions) -> Result<BuildReport> {
    let spec = load_spec(service_dir)?;
    if let Some(version) = &opts.version
        && !is_valid_version(version)
    {
        return Err(Error::invalid(
            "build options",
            "version",
            format!(
                "`{version}` is not a valid version id; use 1 to 128 letters, digits, `.`, `_` \
                 or `-`, not starting with `.`"
            ),
        ));
    }
    let out_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let limits = Limits::default();
    let mut plan = Plan::default();

    // Folders first: walking the service folder is cheap, converting datasets is not.
    let mut folders = Vec::with_capacity(spec.folders.len());
    for (i, folder) in spec.folders.iter().enumerate() {
        let field = format!("folders[{i}].path");
        let rel = spec_path(&field, &folder.path)?;
        let needed_by = format!("service.toml `{field}`");
        resolve_in_folder(service_dir, &rel, Expect::Dir, &needed_by)?;
        let target = folder_archive_path(&folder.name);
        for (child, abs) in walk_dir(service_dir, &rel, &needed_by)? {
            let inner = child.get(rel.len() + 1..).unwrap_or(&child);
            plan.add(format!("{target}/{inner}"), Source::Disk(abs), &field)?;
        }
        folders.push(FolderSpec {
            name: folder.name.clone(),
            path: target,
        });
    }

    // Code, requirements and models, at their normalized paths.
    let mut endpoints = spec.endpoints.clone();
    for (i, ep) in endpoints.iter_mut().enumerate() {
        let p = format!("endpoints[{i}]");
        if let Some(model) = &mut ep.model {
            model.path = add_path(
                &mut plan,
                service_dir,
                &format!("{p}.model.path"),
                &model.path,
                Expect::FileOrDir,
            )?;
        }
        if let Some(python) = &mut ep.python {
            python.code = add_path(
                &mut plan,
                service_dir,
                &format!("{p}.python.code"),
                &python.code,
                Expect::File,
            )?;
            if let Some(requirements) = &mut python.requirements {
                *requirements = add_path(
                    &mut plan,
                    service_dir,
                    &format!("{p}.python.requirements"),
                    requirements,
                    Expect::File,
                )?;
            }
        }
        if let Some(r) = &mut ep.r {
            r.code = add_path(
                &mut plan,
                service_dir,
                &format!("{p}.r.code"),
                &r.code,
                Expect::File,
            )?;
        }
    }

    // Datasets.
    let mut datasets = Vec::with_capacity(spec.datasets.len());
    for (i, ds) in spec.datasets.iter().enumerate() {
        let source = match (&ds.path, &ds.table) {
            (Some(path), _) => {
                let field = format!("datasets[{i}].path");
                let rel = spec_path(&field, path)?;
                let abs = resolve_in_folder(
                    service_dir,
                    &rel,
                    Expect::File,
                    &format!("service.toml `{field}`"),
                )?;
                let Some(format) = dataset_format(ds, &rel) else {
                    return Err(Error::invalid(SPEC_FILE, field, "has no known format"));
                };
                let temp = tempfile::tempfile_in(&out_dir).map_err(|e| Error::io(&out_dir, e))?;
                let csv = ds.csv.clone().unwrap_or_default();
                let (converted, writer) = dataset::convert(
                    &abs,
                    format,
                    &csv,
                    ds.schema.as_deref(),
                    BufWriter::new(temp),
                )
                .map_err(|message| Error::dataset(&ds.name, &rel, message))?;
                let temp = writer
                    .into_inner()
                    .map_err(|e| Error::io(&out_dir, e.into_error()))?;
                let file = dataset_archive_path(&ds.name);
                plan.add(file.clone(), Source::Temp(temp), &field)?;
                DatasetSource::Bundled {
                    file,
                    rows: converted.rows,
                    columns: converted.columns,
                }
            }
            (None, Some(table)) => DatasetSource::Referenced {
                connection: ds
                    .connection
                    .clone()
                    .unwrap_or_else(|| DEFAULT_REFERENCED_CONNECTION.to_string()),
                table: table.clone(),
            },
            (None, None) => {
                return Err(Error::invalid(
                    SPEC_FILE,
                    format!("datasets[{i}]"),
                    "give `path` or `table`",
                ));
            }
        };
        datasets.push(DatasetManifest {
            name: ds.name.clone(),
            source,
        });
    }

    // Now that every bundled dataset's columns are known, check lookups against them.
    {
        let infos: HashMap<&str, DatasetInfo<'_>> = datasets
            .iter()
            .map(|d| {
                let info = match &d.source {
                    DatasetSource::Bundled { columns, .. } => DatasetInfo::Bundled(Some(
                        columns.iter().map(|c| c.name.as_str()).collect(),
                    )),
                    DatasetSource::Referenced { connection, table } => {
                        DatasetInfo::Referenced { connection, table }
                    }
                };
                (d.name.as_str(), info)
            })
            .collect();
        let no_file_check = |_: &str, _: &str, _: Expect| -> Result<()> { Ok(()) };
        let ctx = Context {
            file: SPEC_FILE,
            datasets: infos,
            folders: spec
                .folders
                .iter()
                .map(|f| f.name.as_str())
                .collect::<HashSet<_>>(),
            files: &no_file_check,
        };
        validate_endpoints(&ctx, &spec.endpoints)?;
    }

    check_no_file_is_a_directory(&plan)?;

    // Limits, from the sizes on disk.
    let mut sizes = Vec::with_capacity(plan.entries.len());
    let mut total: u64 = 0;
    for (path, (source, _)) in &plan.entries {
        let size = match source {
            Source::Disk(abs) => std::fs::metadata(abs).map_err(|e| Error::io(abs, e))?.len(),
            Source::Temp(file) => file.metadata().map_err(|e| Error::io(&out_dir, e))?.len(),
        };
        if size > limits.max_file_size {
            return Err(Error::TooLarge {
                what: format!("the size in bytes of `{path}` in the bundle"),
                limit: limits.max_file_size,
                actual: size,
            });
        }
        total = total.saturating_add(size);
        sizes.push(size);
    }
    let entry_count = plan.entries.len() + 1;
    if entry_count > limits.max_files {
        return Err(Error::TooLarge {
            what: "the number of files in the bundle".to_string(),
            limit: limits.max_files as u64,
            actual: entry_count as u64,
        });
    }
    if total > limits.max_total_size {
        return Err(Error::TooLarge {
            what: "the total size in bytes of the bundle's files".to_string(),
            limit: limits.max_total_size,
            actual: total,
        });
    }

    // Write the archive.
    let mut temp = tempfile::Builder::new()
        .prefix(".apinode-bundle-")
        .suffix(".tmp")
        .tempfile_in(&out_dir)
        .map_err(|e| Error::io(&out_dir, e))?;
    let temp_path = temp.path().to_path_buf();
    let zip_err = |e: zip::result::ZipError| match e {
        zip::result::ZipError::Io(source) => Error::io(&temp_path, source),
        other => Error::io(&temp_path, std::io::Error::other(other)),
    };
    let mut zip = zip::ZipWriter::new(BufWriter::new(temp.as_file_mut()));
    let mut files = Vec::with_capacity(plan.entries.len());
    for ((path, (source, _)), size) in plan.entries.iter_mut().zip(sizes) {
        let parquet = path.to_ascii_lowercase().ends_with(".parquet");
        zip.start_file(path.as_str(), entry_options(parquet, size))
            .map_err(zip_err)?;
        let (reader, origin): (Box<dyn Read + '_>, PathBuf) = match source {
            Source::Disk(abs) => (
                Box::new(File::open(&*abs).map_err(|e| Error::io(&*abs, e))?),
                abs.clone(),
            ),
            Source::Temp(file) => {
                file.seek(SeekFrom::Start(0))
                    .map_err(|e| Error::io(&out_dir, e))?;
                (Box::new(&*file), out_dir.clone())
            }
        };
        let mut hashing = HashingReader::new(reader);
        std::io::copy(&mut hashing, &mut zip).map_err(|e| Error::io(&origin, e))?;
        let (written, sha256) = hashing.finish();
        if written != size {
            return Err(Error::io(
                &origin,
                std::io::Error::other(format!(
                    "the file changed while the bundle was built ({size} bytes, then {written})"
                )),
            ));
        }
        files.push(FileEntry {
            path: path.clone(),
            size,
            sha256,
        });
    }

    let auth = AuthManifest {
        mode: spec.auth.mode,
        keys: spec
            .auth
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| ApiKeyManifest {
                id: k.id.clone().unwrap_or_else(|| default_key_id(i)),
                label: k.label.clone(),
                key_sha256: match (&k.key, &k.key_sha256) {
                    (Some(secret), _) => sha256_hex(secret.as_bytes()),
                    (None, Some(hash)) => hash.clone(),
                    (None, None) => String::new(),
                },
            })
            .collect(),
        oauth2: spec.auth.oauth2.clone(),
    };
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        service_id: spec.service.id.clone(),
        version: String::new(),
        description: spec.service.description.clone(),
        built_by: opts.built_by.clone(),
        auth,
        datasets,
        folders,
        endpoints,
        files,
    };
    manifest.version = match (&opts.version, &spec.service.version) {
        (Some(version), _) | (None, Some(version)) => version.clone(),
        (None, None) => content_version(&manifest)?,
    };
    validate_manifest(&manifest)?;

    let mut json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::io(&temp_path, std::io::Error::other(e)))?;
    json.push(b'\n');
    if json.len() as u64 > limits.max_manifest_size {
        return Err(Error::TooLarge {
            what: "the size in bytes of manifest.json".to_string(),
            limit: limits.max_manifest_size,
            actual: json.len() as u64,
        });
    }
    zip.start_file(MANIFEST_FILE, entry_options(false, json.len() as u64))
        .map_err(zip_err)?;
    zip.write_all(&json).map_err(|e| Error::io(&temp_path, e))?;
    let writer = zip.finish().map_err(zip_err)?;
    writer
        .into_inner()
        .map_err(|e| Error::io(&temp_path, e.into_error()))?;
    temp.as_file()
        .sync_all()
        .map_err(|e| Error::io(&temp_path, e))?;
    temp.persist(out).map_err(|e| Error::io(out, e.error))?;
    let archive_size = std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len();
    Ok(BuildReport {
        manifest,
        archive_size,
    })
}

/// Adds a file or directory named by a spec field to the plan; returns its normalized path.
fn add_path(
    plan: &mut Plan,
    service_dir: &Path,
    field: &str,
    value: &str,
    expect: Expect,
) -> Result<String> {
    let rel = spec_path(field, value)?;
    let needed_by = format!("service.toml `{field}`");
    let abs = resolve_in_folder(service_dir, &rel, expect, &needed_by)?;
    let meta = std::fs::metadata(&abs).map_err(|e| Error::io(&abs, e))?;
    if meta.is_dir() {
        let children = walk_dir(service_dir, &rel, &needed_by)?;
        if children.is_empty() {
            return Err(Error::MissingFile {
                origin: folder_origin(service_dir),
                entry: format!("{rel}/*"),
                needed_by: format!("{needed_by} (the directory is empty)"),
            });
        }
        for (child, abs) in children {
            plan.add(child, Source::Disk(abs), field)?;
        }
    } else {
        plan.add(rel.clone(), Source::Disk(abs), field)?;
    }
    Ok(rel)
}

/// A bundle cannot hold both `a` and `a/b`.
fn check_no_file_is_a_directory(plan: &Plan) -> Result<()> {
    for (path, (_, field)) in &plan.entries {
        let prefix = format!("{path}/");
        if let Some((other, (_, other_field))) = plan.entries.range(prefix.clone()..).next()
            && other.starts_with(&prefix)
        {
            return Err(Error::invalid(
                SPEC_FILE,
                other_field.as_str(),
                format!(
                    "would store `{other}` under `{path}`, which `{field}` stores as a file; \
                     rename or move one of them"
                ),
            ));
        }
    }
    Ok(())
}

fn entry_options(stored: bool, size: u64) -> zip::write::SimpleFileOptions {
    let method = if stored {
        zip::CompressionMethod::Stored
    } else {
        zip::CompressionMethod::Deflated
    };
    zip::write::SimpleFileOptions::default()
        .compression_method(method)
        .last_modified_time(zip::DateTime::default())
        .unix_permissions(0o644)
        .large_file(size >= u64::from(u32::MAX))
}

/// The generation id derived from the content: `g-` and 12 hex characters of a SHA-256 over
/// the sorted (path, SHA-256) pairs and the manifest without `version` and `built_by`.
fn content_version(manifest: &Manifest) -> Result<String> {
    let mut hasher = sha2::Sha256::new();
    for file in &manifest.files {
        hasher.update(file.path.as_bytes());
        hasher.update([0u8]);
        hasher.update(file.sha256.as_bytes());
        hasher.update(b"\n");
    }
    let mut normalized = manifest.clone();
    normalized.version = String::new();
    normalized.built_by = String::new();
    let json = serde_json::to_vec(&normalized)
        .map_err(|e| Error::invalid(MANIFEST_FILE, "", format!("cannot serialize: {e}")))?;
    hasher.update(b"\0manifest\0");
    hasher.update(&json);
    let digest = hex::encode(hasher.finalize());
    Ok(format!("g-{}", &digest[..12]))
}

/// Reads through, counting bytes and hashing them.
struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: sha2::Sha256::new(),
            count: 0,
        }
    }

    fn finish(self) -> (u64, String) {
        (self.count, hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_syntax_errors_carry_line_and_column() {
        let err = parse_spec("[service]\nid = \"a\"\nendpoints = [\n").unwrap_err();
        let Error::Invalid { file, message, .. } = &err else {
            panic!("unexpected {err:?}")
        };
        assert_eq!(file, "service.toml");
        assert!(message.contains("line "), "{message}");
    }

    #[test]
    fn tsv_defaults_to_tab_unless_written() {
        let spec = parse_spec(
            r#"
            [service]
            id = "s"
            [[datasets]]
            name = "a"
            path = "a.tsv"
            [[datasets]]
            name = "b"
            path = "b.TSV"
            csv = { delimiter = ";" }
            [[datasets]]
            name = "c"
            path = "c.csv"
            [[endpoints]]
            id = "e"
            kind = "dataset-lookup"
            lookup = { dataset = "a", keys = ["k"] }
            "#,
        )
        .unwrap();
        assert_eq!(
            spec.datasets[0].csv.as_ref().map(|c| c.delimiter),
            Some('\t')
        );
        assert_eq!(
            spec.datasets[1].csv.as_ref().map(|c| c.delimiter),
            Some(';')
        );
        assert_eq!(spec.datasets[2].csv, None);
    }

    #[test]
    fn default_options_name_the_crate() {
        let opts = BuildOptions::default();
        assert_eq!(opts.version, None);
        assert!(opts.built_by.starts_with("apinode-bundle "));
    }
}
