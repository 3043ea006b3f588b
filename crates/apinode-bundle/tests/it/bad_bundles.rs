//! Crafted and tampered archives: `Bundle::open` refuses each, naming the culprit.

use crate::common::*;
use apinode_bundle::*;
use bytes::Bytes;
use serde_json::json;
use std::io::{Cursor, Write};
use zip::write::SimpleFileOptions;

const MANIFEST: &str = "manifest.json";
const PARQUET: &str = "datasets/customers.parquet";

/// The base bundle's entries plus one more.
fn with_extra_entry(name: &str, content: &[u8]) -> Bytes {
    let mut entries = base_entries();
    entries.push((name.to_string(), content.to_vec()));
    rezip(&entries)
}

#[test]
fn base_bundle_rezipped_still_opens() {
    // The surgery below starts from this: it must be valid on its own.
    let bytes = rezip(&base_entries());
    let bundle = Bundle::from_bytes(bytes, "rezipped.zip", &Limits::default()).expect("valid");
    assert_eq!(bundle.manifest().service_id, "customers");
}

#[test]
fn not_a_zip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.zip");
    std::fs::write(&path, b"this is not a zip archive at all").unwrap();
    let err = Bundle::open(&path, &Limits::default()).unwrap_err();
    match &err {
        Error::NotAZip { origin, .. } => assert!(origin.ends_with("garbage.zip"), "{origin}"),
        other => panic!("expected NotAZip, got {other:?}"),
    }
    assert!(err.to_string().contains("garbage.zip"), "{err}");

    let err = open_err(Bytes::new());
    assert!(matches!(err, Error::NotAZip { .. }), "{err:?}");
}

#[test]
fn missing_archive_is_an_io_error() {
    let err = Bundle::open(
        std::path::Path::new("/nonexistent/b.zip"),
        &Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/b.zip"), "{err}");
}

#[test]
fn unsafe_entry_paths() {
    for (name, needle) in [
        ("../evil.txt", ".."),
        ("datasets/../../evil.txt", ".."),
        ("/etc/passwd", "absolute"),
        ("folders\\x\\evil.txt", "backslash"),
        ("C:/evil.txt", "drive letter"),
        ("./evil.txt", "`.`"),
    ] {
        let err = open_err(with_extra_entry(name, b"evil"));
        match &err {
            Error::UnsafePath {
                origin,
                entry,
                reason,
            } => {
                assert_eq!(entry, name);
                assert!(origin.contains("test.zip"), "{origin}");
                assert!(reason.contains(needle), "{name}: {reason}");
            }
            other => panic!("{name}: expected UnsafePath, got {other:?}"),
        }
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn symlink_entry() {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, content) in base_entries() {
        zip.start_file(name.as_str(), SimpleFileOptions::default())
            .unwrap();
        zip.write_all(&content).unwrap();
    }
    zip.add_symlink("folders/link", "/etc/passwd", SimpleFileOptions::default())
        .unwrap();
    let bytes = Bytes::from(zip.finish().unwrap().into_inner());
    let err = open_err(bytes);
    match &err {
        Error::UnsafePath { entry, reason, .. } => {
            assert_eq!(entry, "folders/link");
            assert!(reason.contains("symbolic link"), "{reason}");
        }
        other => panic!("expected UnsafePath, got {other:?}"),
    }
}

#[test]
fn checksum_mismatch() {
    let mut entries = base_entries();
    let parquet = entries.iter_mut().find(|(n, _)| n == PARQUET).unwrap();
    let last = parquet.1.len() - 9; // inside the data, not the footer length
    parquet.1[last] ^= 0xFF;
    let err = open_err(rezip(&entries));
    match &err {
        Error::ChecksumMismatch {
            entry,
            expected,
            actual,
            ..
        } => {
            assert_eq!(entry, PARQUET);
            assert_ne!(expected, actual);
        }
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains(PARQUET), "{err}");
}

#[test]
fn size_mismatch() {
    let mut entries = base_entries();
    let parquet = entries.iter_mut().find(|(n, _)| n == PARQUET).unwrap();
    parquet.1.push(0);
    let err = open_err(rezip(&entries));
    match &err {
        Error::SizeMismatch {
            entry,
            expected,
            actual,
            ..
        } => {
            assert_eq!(entry, PARQUET);
            assert_eq!(*actual, *expected + 1);
        }
        other => panic!("expected SizeMismatch, got {other:?}"),
    }
}

#[test]
fn missing_file() {
    let entries: Vec<_> = base_entries()
        .into_iter()
        .filter(|(n, _)| n != PARQUET)
        .collect();
    let err = open_err(rezip(&entries));
    match &err {
        Error::MissingFile {
            entry, needed_by, ..
        } => {
            assert_eq!(entry, PARQUET);
            assert!(needed_by.contains("files[0]"), "{needed_by}");
        }
        other => panic!("expected MissingFile, got {other:?}"),
    }
    assert!(err.to_string().contains(PARQUET), "{err}");
}

#[test]
fn missing_manifest() {
    let entries: Vec<_> = base_entries()
        .into_iter()
        .filter(|(n, _)| n != MANIFEST)
        .collect();
    let err = open_err(rezip(&entries));
    assert!(
        matches!(&err, Error::MissingFile { entry, .. } if entry == MANIFEST),
        "{err:?}"
    );
}

#[test]
fn extra_file() {
    let err = open_err(with_extra_entry("folders/res/smuggled.py", b"import os"));
    match &err {
        Error::ExtraFile { entry, .. } => assert_eq!(entry, "folders/res/smuggled.py"),
        other => panic!("expected ExtraFile, got {other:?}"),
    }
    assert!(err.to_string().contains("smuggled.py"), "{err}");
}

#[test]
fn directory_entries_are_ignored() {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    zip.add_directory("datasets/", SimpleFileOptions::default())
        .unwrap();
    for (name, content) in base_entries() {
        zip.start_file(name.as_str(), SimpleFileOptions::default())
            .unwrap();
        zip.write_all(&content).unwrap();
    }
    let bytes = Bytes::from(zip.finish().unwrap().into_inner());
    let bundle = Bundle::from_bytes(bytes, "dirs.zip", &Limits::default()).expect("opens");
    assert_eq!(bundle.files().count(), 1);
}

#[test]
fn bad_manifest_field_names_its_path() {
    let err = open_err(with_manifest(|m| {
        m["endpoints"][2]["lookup"]["keys"] = json!([]);
    }));
    assert_invalid(&err, MANIFEST, "endpoints[2].lookup.keys", "empty");
}

#[test]
fn manifest_type_errors_name_their_path() {
    let err = open_err(with_manifest(|m| {
        m["endpoints"][1]["lookup"]["on_no_match"] = json!(5);
    }));
    assert_invalid(
        &err,
        MANIFEST,
        "endpoints[1].lookup.on_no_match",
        "invalid type",
    );

    let err = open_err(with_manifest(|m| {
        m["endpoints"][0]["surprise"] = json!(true);
    }));
    match &err {
        Error::Invalid {
            file,
            path,
            message,
        } => {
            assert_eq!(file, MANIFEST);
            assert!(path.starts_with("endpoints[0]"), "{path}");
            assert!(message.contains("surprise"), "{message}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }

    let err = open_err(with_manifest(|m| {
        m["datasets"][0]["extra"] = json!(1);
    }));
    assert_invalid(&err, MANIFEST, "datasets[0].extra", "unknown field");

    let mut entries = base_entries();
    entries.last_mut().unwrap().1 = b"{ not json".to_vec();
    let err = open_err(rezip(&entries));
    assert_invalid(&err, MANIFEST, "", "not valid JSON");
}

#[test]
fn manifest_rules_at_open() {
    let err = open_err(with_manifest(|m| {
        m["endpoints"][1]["id"] = json!("by-id");
    }));
    assert!(
        matches!(&err, Error::DuplicateId { file, path, id } if file == MANIFEST && path == "endpoints[1].id" && id == "by-id"),
        "{err:?}"
    );

    let err = open_err(with_manifest(|m| {
        m["endpoints"][0]["lookup"]["keys"] = json!([{ "column": "nope", "input": "nope" }]);
    }));
    assert_invalid(&err, MANIFEST, "endpoints[0].lookup.keys[0]", "`nope`");

    let err = open_err(with_manifest(|m| {
        m["datasets"][0]["file"] = json!("datasets/other.parquet");
    }));
    assert!(
        matches!(&err, Error::MissingFile { entry, needed_by, .. } if entry == "datasets/other.parquet" && needed_by.contains("datasets[0].file")),
        "{err:?}"
    );

    let err = open_err(with_manifest(|m| {
        m["auth"]["keys"][0]["key_sha256"] = json!("secret-1");
    }));
    assert_invalid(&err, MANIFEST, "auth.keys[0].key_sha256", "SHA-256");

    let err = open_err(with_manifest(|m| {
        m["version"] = json!("../1");
    }));
    assert_invalid(&err, MANIFEST, "version", "../1");

    let err = open_err(with_manifest(|m| {
        m["files"][0]["sha256"] = json!("ABC");
    }));
    assert_invalid(&err, MANIFEST, "files[0].sha256", "SHA-256");
}

#[test]
fn manifest_files_must_be_sorted_and_unique() {
    let svc = Svc::base();
    svc.file("notes/a.txt", "a").file("notes/b.txt", "b");
    let toml = std::fs::read_to_string(svc.path().join("service.toml")).unwrap();
    std::fs::write(
        svc.path().join("service.toml"),
        toml.replace(
            "[[datasets]]\nname = \"customers\"",
            "[[folders]]\nname = \"notes\"\npath = \"notes\"\n\n[[datasets]]\nname = \"customers\"",
        ),
    )
    .unwrap();
    let (_, out) = svc.build_ok();
    let entries = unzip(&std::fs::read(out).unwrap());
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut entries = entries.clone();
        let manifest = entries.last_mut().unwrap();
        let mut value: serde_json::Value = serde_json::from_slice(&manifest.1).unwrap();
        f(&mut value);
        manifest.1 = serde_json::to_vec(&value).unwrap();
        open_err(rezip(&entries))
    };
    let err = edit(&|m| {
        let files = m["files"].as_array_mut().unwrap();
        files.swap(1, 2);
    });
    assert_invalid(&err, MANIFEST, "files[2].path", "sorted");
    let err = edit(&|m| {
        let files = m["files"].as_array_mut().unwrap();
        files[2] = files[1].clone();
    });
    assert!(
        matches!(&err, Error::DuplicateId { path, .. } if path == "files[2].path"),
        "{err:?}"
    );
    let err = edit(&|m| {
        m["files"][1]["path"] = json!("../notes/a.txt");
    });
    assert!(
        matches!(&err, Error::UnsafePath { entry, reason, .. } if entry == "../notes/a.txt" && reason.contains("files[1].path")),
        "{err:?}"
    );
}

#[test]
fn unsupported_format_version() {
    let err = open_err(with_manifest(|m| {
        m["format_version"] = json!(2);
        m["a_field_from_the_future"] = json!("x");
    }));
    match &err {
        Error::UnsupportedVersion { found, supported } => {
            assert_eq!((*found, *supported), (2, FORMAT_VERSION));
        }
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    assert!(err.to_string().contains("format_version 2"), "{err}");
    let mut manifest = Svc::base().build_ok().0.manifest;
    manifest.format_version = 0;
    assert!(matches!(
        validate_manifest(&manifest),
        Err(Error::UnsupportedVersion { found: 0, .. })
    ));
}

#[test]
fn limits_are_enforced_before_decompressing() {
    let bytes = rezip(&base_entries());
    let open = |limits: Limits| Bundle::from_bytes(bytes.clone(), "test.zip", &limits).unwrap_err();
    let defaults = Limits::default();

    let err = open(Limits {
        max_files: 1,
        ..defaults
    });
    assert!(
        matches!(&err, Error::TooLarge { what, limit: 1, actual: 2 } if what.contains("number of entries")),
        "{err:?}"
    );

    let err = open(Limits {
        max_file_size: 100,
        ..defaults
    });
    match &err {
        Error::TooLarge { what, limit, .. } => {
            assert!(what.contains(PARQUET), "{what}");
            assert_eq!(*limit, 100);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(err.to_string().contains(PARQUET), "{err}");

    let err = open(Limits {
        max_total_size: 100,
        ..defaults
    });
    assert!(
        matches!(&err, Error::TooLarge { what, .. } if what.contains("total size")),
        "{err:?}"
    );

    let err = open(Limits {
        max_manifest_size: 10,
        ..defaults
    });
    assert!(
        matches!(&err, Error::TooLarge { what, .. } if what.contains("manifest.json")),
        "{err:?}"
    );

    // Open from a file: the file's own size is bounded too.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.zip");
    std::fs::write(&path, &bytes).unwrap();
    let tiny = Limits {
        max_files: 0,
        max_file_size: 0,
        max_total_size: 0,
        max_manifest_size: 0,
    };
    let err = Bundle::open(&path, &tiny).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
}

/// Rewrites the uncompressed size of entry `name` in its local and central headers.
fn patch_declared_size(zip: &mut [u8], name: &str, size: u32) {
    let name = name.as_bytes();
    let mut patched = 0;
    for i in 0..zip.len().saturating_sub(46) {
        let sig = &zip[i..i + 4];
        if sig == [0x50, 0x4b, 0x03, 0x04] {
            let n = u16::from_le_bytes([zip[i + 26], zip[i + 27]]) as usize;
            if zip.get(i + 30..i + 30 + n) == Some(name) {
                zip[i + 22..i + 26].copy_from_slice(&size.to_le_bytes());
                patched += 1;
            }
        } else if sig == [0x50, 0x4b, 0x01, 0x02] {
            let n = u16::from_le_bytes([zip[i + 28], zip[i + 29]]) as usize;
            if zip.get(i + 46..i + 46 + n) == Some(name) {
                zip[i + 24..i + 28].copy_from_slice(&size.to_le_bytes());
                patched += 1;
            }
        }
    }
    assert_eq!(patched, 2, "both headers patched");
}

#[test]
fn entry_decompressing_beyond_its_declared_size_is_refused() {
    // A deflated 4 MiB of zeros that declares 10 bytes: reading stops after 11.
    let mut entries = base_entries();
    entries.push(("bomb.bin".to_string(), vec![0u8; 4 << 20]));
    let mut bytes = rezip(&entries).to_vec();
    patch_declared_size(&mut bytes, "bomb.bin", 10);
    let bundle_bytes = Bytes::from(bytes);
    // Declared sizes pass the limits; the unlisted entry is caught first...
    let err = open_err(bundle_bytes.clone());
    assert!(matches!(err, Error::ExtraFile { .. }), "{err:?}");

    // ...so list it with its declared size, as an attacker would.
    let mut entries = base_entries();
    entries.push(("bomb.bin".to_string(), vec![0u8; 4 << 20]));
    let manifest = entries.iter_mut().find(|(n, _)| n == MANIFEST).unwrap();
    let mut value: serde_json::Value = serde_json::from_slice(&manifest.1).unwrap();
    value["files"].as_array_mut().unwrap().insert(
        0,
        json!({ "path": "bomb.bin", "size": 10, "sha256": "0".repeat(64) }),
    );
    manifest.1 = serde_json::to_vec(&value).unwrap();
    let mut bytes = rezip(&entries).to_vec();
    patch_declared_size(&mut bytes, "bomb.bin", 10);
    let err = open_err(Bytes::from(bytes));
    match &err {
        Error::Corrupt { detail, .. } => {
            // The zip reader stops at the declared size, and so does the bundle reader.
            assert!(detail.contains("bomb.bin"), "{detail}");
            assert!(detail.contains("size"), "{detail}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn duplicate_entry_names_are_refused() {
    let mut bytes = rezip(&[
        ("manifest.json".to_string(), b"{}".to_vec()),
        ("aaaaaaaaaaaaa".to_string(), b"x".to_vec()),
    ])
    .to_vec();
    // Rename the second entry to `manifest.json` in both headers (same length).
    let from = b"aaaaaaaaaaaaa";
    let to = b"manifest.json";
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
        }
        i += 1;
    }
    let err = open_err(Bytes::from(bytes));
    assert!(
        matches!(&err, Error::Corrupt { detail, .. } if detail.contains("same name")),
        "{err:?}"
    );
}
