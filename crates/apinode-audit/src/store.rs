//! Where the logs go: a local directory, or S3 (and S3-compatible servers).

use crate::error::{Error, Result};
use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use std::path::PathBuf;
use std::sync::Arc;

/// Where a log goes: an object store, and, when the store is a local directory, that
/// directory, so that sealed segments are moved into it (a rename, when the spool is on the
/// same file system) rather than read and written again.
#[derive(Debug, Clone)]
pub struct LogStore {
    objects: Arc<dyn ObjectStore>,
    directory: Option<PathBuf>,
}

impl LogStore {
    /// The store, for readers.
    pub fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.objects
    }

    /// The local directory the store writes to, if it is one.
    pub(crate) fn directory(&self) -> Option<&std::path::Path> {
        self.directory.as_deref()
    }
}

/// Any object store; segments are uploaded with `put`.
impl From<Arc<dyn ObjectStore>> for LogStore {
    fn from(objects: Arc<dyn ObjectStore>) -> LogStore {
        LogStore {
            objects,
            directory: None,
        }
    }
}

/// Opens the log store named by `url`:
/// - a path, or `file:///abs/path`: a local directory (created if absent);
/// - `s3://bucket` or `s3://bucket/prefix`: S3, with credentials, region and endpoint from the
///   environment as the AWS tools read them (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
///   `AWS_REGION`, `AWS_ENDPOINT` for an S3-compatible server, `AWS_ALLOW_HTTP=true` for one
///   on plain HTTP), then `options` (object_store's keys: `aws_endpoint`, `aws_region`,
///   `aws_allow_http`, `aws_access_key_id`, ...), which win.
pub fn open_store(url: &str, options: &[(String, String)]) -> Result<LogStore> {
    let objects = open(url, options, true)?;
    let directory = local_directory(url)
        .map(|path| std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path)));
    Ok(LogStore { objects, directory })
}

/// The directory of a local store's URL (a path, or `file:///path`).
fn local_directory(url: &str) -> Option<&str> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    (!path.contains("://")).then_some(path)
}

/// Opens the log store named by `url` to read it, as [`open_store`] does, but a local
/// directory must exist already (a store that was never written is more likely a wrong path
/// than an empty log).
pub fn open_existing_store(
    url: &str,
    options: &[(String, String)],
) -> Result<Arc<dyn ObjectStore>> {
    open(url, options, false)
}

fn open(url: &str, options: &[(String, String)], create: bool) -> Result<Arc<dyn ObjectStore>> {
    let bad = |message: String| Error::Store {
        url: url.to_owned(),
        message,
    };
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad(
                "no bucket: use s3://bucket or s3://bucket/prefix".into()
            ));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (key, value) in options {
            let key: AmazonS3ConfigKey = key
                .parse()
                .map_err(|e| bad(format!("option `{key}`: {e}")))?;
            builder = builder.with_config(key, value);
        }
        let store = builder.build().map_err(|e| bad(e.to_string()))?;
        return Ok(with_prefix(Arc::new(store), prefix));
    }
    if !options.is_empty() {
        return Err(bad("store options apply to s3:// stores only".into()));
    }
    let Some(path) = local_directory(url) else {
        return Err(bad(
            "unknown scheme: use a directory path, file:///path or s3://bucket/prefix".into(),
        ));
    };
    if create {
        std::fs::create_dir_all(path)
            .map_err(|e| bad(format!("cannot create the directory: {e}")))?;
    } else if !std::path::Path::new(path).is_dir() {
        return Err(bad(
            "no such directory: no audit log was written there".into()
        ));
    }
    let store = LocalFileSystem::new_with_prefix(path).map_err(|e| bad(e.to_string()))?;
    Ok(Arc::new(store))
}

fn with_prefix(store: Arc<dyn ObjectStore>, prefix: &str) -> Arc<dyn ObjectStore> {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, StorePath::from(prefix)))
    }
}
