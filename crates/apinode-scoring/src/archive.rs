//! Where the model's files come from: a model folder, a `model.zip`, or an export (zip or
//! folder) holding `model.zip`. Everything else reads files through [`Files`].

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

pub(crate) const META: &str = "dss_pipeline_meta.json";
const MLFLOW: &str = "mlflow_imported_model.json";

/// A read-only view of one model folder (or a sub-folder of it, for partitions).
#[derive(Debug, Clone)]
pub(crate) struct Files {
    /// Printable description of the container, e.g. ``folder `models/churn` ``.
    origin: String,
    source: Source,
    /// Prefix inside the container, empty or ending with `/`.
    prefix: String,
}

#[derive(Debug, Clone)]
enum Source {
    Dir(PathBuf),
    Mem(Arc<HashMap<String, Vec<u8>>>),
}

impl Files {
    /// Opens a model folder, a `model.zip`, or an export (zip or folder) that holds `model.zip`.
    pub(crate) fn open(path: &Path) -> Result<Files> {
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let files = if meta.is_dir() {
            let inner = path.join("model.zip");
            if inner.is_file() {
                let bytes = read_path(&inner)?;
                let origin = format!("`model.zip` of export folder `{shown}`");
                Files::mem(origin.clone(), unzip(&bytes, &origin)?)
            } else {
                Files {
                    origin: format!("model folder `{shown}`"),
                    source: Source::Dir(path.to_owned()),
                    prefix: String::new(),
                }
            }
        } else {
            Files::from_zip(format!("zip `{shown}`"), &read_path(path)?)?
        };
        files.check_is_model()
    }

    /// A `model.zip`, or an export zip holding one, already in memory.
    pub(crate) fn from_zip(origin: String, bytes: &[u8]) -> Result<Files> {
        let entries = unzip(bytes, &origin)?;
        Files::from_entries(origin, entries)
    }

    /// The files of a model folder, or of an export folder holding `model.zip`, already in
    /// memory (keys are paths relative to the folder, `/`-separated).
    pub(crate) fn from_entries(origin: String, entries: HashMap<String, Vec<u8>>) -> Result<Files> {
        let files = if entries.contains_key(META) || entries.contains_key(MLFLOW) {
            Files::mem(origin, entries)
        } else if let Some(inner) = entries.get("model.zip") {
            let origin = format!("`model.zip` of {origin}");
            Files::mem(origin.clone(), unzip(inner, &origin)?)
        } else {
            return Err(Error::NotAModel { origin });
        };
        files.check_is_model()
    }

    fn check_is_model(self) -> Result<Files> {
        if self.exists(MLFLOW) {
            return Err(Error::MlflowModel {
                origin: self.origin,
            });
        }
        if !self.exists(META) {
            return Err(Error::NotAModel {
                origin: self.origin,
            });
        }
        Ok(self)
    }

    fn mem(origin: String, entries: HashMap<String, Vec<u8>>) -> Files {
        Files {
            origin,
            source: Source::Mem(Arc::new(entries)),
            prefix: String::new(),
        }
    }

    /// The same container, rooted at `dir` (a partition's folder).
    pub(crate) fn sub(&self, dir: &str) -> Files {
        Files {
            origin: self.origin.clone(),
            source: self.source.clone(),
            prefix: format!("{}{dir}/", self.prefix),
        }
    }

    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    /// The name of a file as shown in errors: its path inside the model, with the partition
    /// folder if any.
    pub(crate) fn shown(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub(crate) fn exists(&self, name: &str) -> bool {
        match &self.source {
            Source::Dir(dir) => dir.join(format!("{}{name}", self.prefix)).is_file(),
            Source::Mem(map) => map.contains_key(&format!("{}{name}", self.prefix)),
        }
    }

    /// The bytes of `name`, or `None` when the file does not exist.
    pub(crate) fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let full = format!("{}{name}", self.prefix);
        match &self.source {
            Source::Dir(dir) => {
                let p = dir.join(&full);
                if !p.is_file() {
                    return Ok(None);
                }
                read_path(&p).map(Some)
            }
            Source::Mem(map) => Ok(map.get(&full).cloned()),
        }
    }

    /// The bytes of `name`, which must exist.
    pub(crate) fn require(&self, name: &str, needed_for: &str) -> Result<Vec<u8>> {
        self.read(name)?.ok_or_else(|| Error::MissingFile {
            origin: self.origin.clone(),
            file: self.shown(name),
            needed_for: needed_for.to_owned(),
        })
    }
}

fn read_path(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|source| Error::Io {
        path: p.to_owned(),
        source,
    })
}

/// Every file entry of a zip, by its normalised name (no leading `./` or `/`).
fn unzip(bytes: &[u8], origin: &str) -> Result<HashMap<String, Vec<u8>>> {
    let bad = |e: zip::result::ZipError| Error::NotAZip {
        origin: origin.to_owned(),
        detail: e.to_string(),
    };
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(bad)?;
    let mut out = HashMap::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(bad)?;
        if entry.is_dir() {
            continue;
        }
        let raw = entry.name().map_err(bad)?;
        let name = raw
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_owned();
        let mut data = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0).min(1 << 30));
        entry.read_to_end(&mut data).map_err(|e| Error::NotAZip {
            origin: origin.to_owned(),
            detail: format!("entry `{name}`: {e}"),
        })?;
        out.insert(name, data);
    }
    Ok(out)
}
