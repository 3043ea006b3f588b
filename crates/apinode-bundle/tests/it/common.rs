//! Fixtures: service folders written into temporary directories, and zip surgery.

use apinode_bundle::{BuildOptions, BuildReport, Bundle, Error, Limits};
use bytes::Bytes;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use tempfile::TempDir;
use zip::write::SimpleFileOptions;

/// The customers CSV of the base service: every inferred type, and some empty cells.
pub(crate) const CUSTOMERS_CSV: &str = "\
id,first,last,email,score,active,since,updated
1,Ada,Lovelace,ada@example.com,9.5,true,2020-01-02,2024-01-01T10:00:00
2,Alan,Turing,alan@example.com,,false,2021-03-04,2024-01-02T11:30:00.123
3,Grace,Hopper,,7,true,,2024-02-03T00:00:00
";

/// The base service: a CSV dataset, a referenced one, three lookup endpoints (the third one,
/// `endpoints[2]`, is the target of path tests) and api-keys auth.
pub(crate) const BASE_TOML: &str = r#"
[service]
id = "customers"
description = "Customer lookups"

[auth]
mode = "api-keys"
keys = [
    { key = "secret-1", label = "ci" },
    { id = "ops", key_sha256 = "SECRET2_SHA" },
]

[[datasets]]
name = "customers"
path = "data/customers.csv"

[[datasets]]
name = "warehouse"
table = "CUSTOMERS"

[[endpoints]]
id = "by-id"
kind = "dataset-lookup"
lookup = { dataset = "customers", keys = ["id"] }

[[endpoints]]
id = "by-name"
kind = "dataset-lookup"
[endpoints.lookup]
dataset = "customers"
keys = [{ column = "first", input = "first_name" }, { column = "last", input = "last_name" }]
columns = ["id", { column = "score", output = "customer_score" }]
on_missing_key = "null"
on_multiple_matches = "first"

[[endpoints]]
id = "by-email"
kind = "dataset-lookup"
lookup = { dataset = "customers", keys = ["email"] }
"#;

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The base service's TOML with the hash of `secret-2` filled in.
pub(crate) fn base_toml() -> String {
    BASE_TOML.replace("SECRET2_SHA", &sha256_hex(b"secret-2"))
}

/// A service folder in a temporary directory, and a separate one for outputs.
pub(crate) struct Svc {
    pub(crate) dir: TempDir,
    pub(crate) out: TempDir,
}

impl Svc {
    pub(crate) fn new(toml: &str) -> Svc {
        let svc = Svc {
            dir: tempfile::tempdir().expect("tempdir"),
            out: tempfile::tempdir().expect("tempdir"),
        };
        svc.file("service.toml", toml);
        svc
    }

    /// The base service with its CSV.
    pub(crate) fn base() -> Svc {
        let svc = Svc::new(&base_toml());
        svc.file("data/customers.csv", CUSTOMERS_CSV);
        svc
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn file(&self, rel: &str, content: impl AsRef<[u8]>) -> &Svc {
        let path = self.dir.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, content).expect("write");
        self
    }

    pub(crate) fn out_path(&self, name: &str) -> PathBuf {
        self.out.path().join(name)
    }

    pub(crate) fn build_with(&self, opts: &BuildOptions) -> Result<(BuildReport, PathBuf), Error> {
        let out = self.out_path("bundle.zip");
        apinode_bundle::build(self.path(), &out, opts).map(|r| (r, out))
    }

    pub(crate) fn build(&self) -> Result<(BuildReport, PathBuf), Error> {
        self.build_with(&BuildOptions::default())
    }

    /// Builds, panicking with the error's message on failure.
    pub(crate) fn build_ok(&self) -> (BuildReport, PathBuf) {
        match self.build() {
            Ok(ok) => ok,
            Err(e) => panic!("build failed: {e}"),
        }
    }

    /// Builds and opens with the default limits.
    pub(crate) fn build_and_open(&self) -> Bundle {
        let (_, out) = self.build_ok();
        match Bundle::open(&out, &Limits::default()) {
            Ok(bundle) => bundle,
            Err(e) => panic!("open failed: {e}"),
        }
    }
}

/// The entries of a zip, in order, with their content.
pub(crate) fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).expect("zip");
    (0..zip.len())
        .map(|i| {
            let mut file = zip.by_index(i).expect("entry");
            let mut content = Vec::new();
            file.read_to_end(&mut content).expect("read");
            (file.name().expect("name").to_string(), content)
        })
        .collect()
}

/// A zip of the given entries, deflated.
pub(crate) fn rezip(entries: &[(String, Vec<u8>)]) -> Bytes {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, content) in entries {
        zip.start_file(name.as_str(), SimpleFileOptions::default())
            .expect("start");
        zip.write_all(content).expect("write");
    }
    Bytes::from(zip.finish().expect("finish").into_inner())
}

/// Builds the base service and returns its archive's entries.
pub(crate) fn base_entries() -> Vec<(String, Vec<u8>)> {
    let svc = Svc::base();
    let (_, out) = svc.build_ok();
    unzip(&std::fs::read(out).expect("read"))
}

/// The base bundle with its manifest edited as JSON.
pub(crate) fn with_manifest(edit: impl FnOnce(&mut serde_json::Value)) -> Bytes {
    let mut entries = base_entries();
    let (_, content) = entries
        .iter_mut()
        .find(|(name, _)| name == "manifest.json")
        .expect("a manifest");
    let mut value: serde_json::Value = serde_json::from_slice(content).expect("json");
    edit(&mut value);
    *content = serde_json::to_vec_pretty(&value).expect("json");
    rezip(&entries)
}

/// Opens archive bytes with the default limits, expecting an error.
pub(crate) fn open_err(bytes: Bytes) -> Error {
    match Bundle::from_bytes(bytes, "test.zip", &Limits::default()) {
        Ok(bundle) => panic!("expected an error, opened {bundle:?}"),
        Err(e) => e,
    }
}

/// Runs a build expecting an error.
pub(crate) fn build_err(svc: &Svc) -> Error {
    match svc.build() {
        Ok((report, _)) => panic!("expected an error, built {:?}", report.manifest.version),
        Err(e) => e,
    }
}

/// Asserts the error is `Invalid` at `path` in `file`, with a message containing `needle`.
#[track_caller]
pub(crate) fn assert_invalid(err: &Error, file: &str, path: &str, needle: &str) {
    match err {
        Error::Invalid {
            file: f,
            path: p,
            message,
        } => {
            assert_eq!(f, file, "file of {err}");
            assert_eq!(p, path, "path of {err}");
            assert!(message.contains(needle), "`{needle}` not in: {err}");
            let shown = err.to_string();
            assert!(shown.contains(path), "path not shown in: {shown}");
        }
        other => panic!("expected Invalid at {path}, got {other:?}: {other}"),
    }
}
