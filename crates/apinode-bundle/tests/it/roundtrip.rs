//! Valid services: build, open, and what the bundle holds.

use crate::common::*;
use apinode_bundle::*;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// All rows of a (small) bundled dataset, as one batch.
pub(crate) fn read_dataset(bundle: &Bundle, name: &str) -> RecordBatch {
    let bytes = bundle.dataset_parquet(name).expect("dataset").clone();
    let mut reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .expect("parquet")
        .with_batch_size(1 << 20)
        .build()
        .expect("reader");
    let batch = reader.next().expect("a batch").expect("readable");
    assert!(reader.next().is_none(), "expected a single batch");
    batch
}

#[test]
fn base_service_roundtrip() {
    let svc = Svc::base();
    let (report, out) = svc.build_ok();
    assert_eq!(report.archive_size, std::fs::metadata(&out).unwrap().len());
    let bundle = Bundle::open(&out, &Limits::default()).expect("open");
    let m = bundle.manifest();
    assert_eq!(m, &report.manifest);
    assert_eq!(m.format_version, FORMAT_VERSION);
    assert_eq!(m.service_id, "customers");
    assert_eq!(m.description.as_deref(), Some("Customer lookups"));
    assert!(m.built_by.starts_with("apinode-bundle "));

    // Auth: secrets hashed, default ids.
    assert_eq!(m.auth.mode, AuthMode::ApiKeys);
    assert_eq!(m.auth.keys.len(), 2);
    assert_eq!(m.auth.keys[0].id, "key-1");
    assert_eq!(m.auth.keys[0].label.as_deref(), Some("ci"));
    assert_eq!(m.auth.keys[0].key_sha256, sha256_hex(b"secret-1"));
    assert_eq!(m.auth.keys[1].id, "ops");
    assert_eq!(m.auth.keys[1].key_sha256, sha256_hex(b"secret-2"));
    let json = String::from_utf8(
        unzip(&std::fs::read(&out).unwrap())
            .last()
            .unwrap()
            .1
            .clone(),
    )
    .unwrap();
    assert!(
        !json.contains("secret-1"),
        "the secret leaked into manifest.json"
    );

    // Datasets: inferred types, normalized.
    let customers = m.dataset("customers").expect("customers");
    let DatasetSource::Bundled {
        file,
        rows,
        columns,
    } = &customers.source
    else {
        panic!("customers should be bundled")
    };
    assert_eq!(file, "datasets/customers.parquet");
    assert_eq!(*rows, 3);
    let types: Vec<(&str, ColumnType)> = columns
        .iter()
        .map(|c| (c.name.as_str(), c.column_type))
        .collect();
    assert_eq!(
        types,
        vec![
            ("id", ColumnType::Int64),
            ("first", ColumnType::String),
            ("last", ColumnType::String),
            ("email", ColumnType::String),
            ("score", ColumnType::Float64),
            ("active", ColumnType::Boolean),
            ("since", ColumnType::Date),
            ("updated", ColumnType::Timestamp),
        ]
    );
    assert_eq!(
        m.dataset("warehouse").unwrap().source,
        DatasetSource::Referenced {
            connection: DEFAULT_REFERENCED_CONNECTION.to_string(),
            table: "CUSTOMERS".to_string()
        }
    );

    // The Parquet content, with the empty cells as nulls.
    let batch = read_dataset(&bundle, "customers");
    assert_eq!(batch.num_rows(), 3);
    let ids = batch.column(0).as_primitive::<Int64Type>();
    assert_eq!(ids.values().to_vec(), vec![1, 2, 3]);
    let score = batch.column(4).as_primitive::<Float64Type>();
    assert!(score.is_null(1));
    assert_eq!(score.value(2), 7.0);
    assert!(batch.column(3).is_null(2), "empty email should be null");
    let updated = batch.column(7).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(
        updated.data_type(),
        &arrow_type(ColumnType::Timestamp),
        "timestamps are microseconds in UTC"
    );
    assert_eq!(updated.value(1), 1_704_195_000_123_000);

    // Files: every listed file verified and available; the manifest lists itself nowhere.
    assert_eq!(m.files.len(), 1);
    assert_eq!(m.files[0].path, "datasets/customers.parquet");
    assert_eq!(
        bundle
            .file("datasets/customers.parquet")
            .map(|b| b.len() as u64),
        Some(m.files[0].size)
    );
    assert!(bundle.file("manifest.json").is_none());

    // Lookup specs keep their explicit behaviours.
    let by_name = m.endpoint("by-name").unwrap().lookup.as_ref().unwrap();
    assert_eq!(by_name.keys[0].input, "first_name");
    assert_eq!(by_name.columns[1].output, "customer_score");
    assert_eq!(by_name.on_missing_key, LookupAction::Null);
    assert_eq!(by_name.on_no_match, LookupAction::Ignore);
    assert_eq!(by_name.on_multiple_matches, LookupAction::First);
}

#[test]
fn dataset_parquet_errors_name_the_dataset() {
    let bundle = Svc::base().build_and_open();
    match bundle.dataset_parquet("nope") {
        Err(e @ Error::UnknownDataset { .. }) => assert!(e.to_string().contains("nope")),
        other => panic!("expected UnknownDataset, got {other:?}"),
    }
    match bundle.dataset_parquet("warehouse") {
        Err(e @ Error::NotBundled { .. }) => {
            let shown = e.to_string();
            assert!(
                shown.contains("warehouse") && shown.contains("CUSTOMERS"),
                "{shown}"
            );
        }
        other => panic!("expected NotBundled, got {other:?}"),
    }
}

#[test]
fn bundle_debug_is_short_and_clone_shares() {
    let bundle = Svc::base().build_and_open();
    let shown = format!("{bundle:?}");
    assert!(shown.contains("customers"), "{shown}");
    assert!(shown.len() < 300, "Debug dumps too much: {shown}");
    let clone = bundle.clone();
    let a = bundle.file("datasets/customers.parquet").unwrap();
    let b = clone.file("datasets/customers.parquet").unwrap();
    assert_eq!(a.as_ptr(), b.as_ptr(), "clones share their contents");
}

#[test]
fn content_version_is_deterministic_and_builds_are_reproducible() {
    let svc = Svc::base();
    let first = svc.out_path("a.zip");
    let second = svc.out_path("b.zip");
    let opts = BuildOptions::default();
    let a = build(svc.path(), &first, &opts).expect("build a");
    let b = build(svc.path(), &second, &opts).expect("build b");
    assert!(
        a.manifest.version.starts_with("g-"),
        "{}",
        a.manifest.version
    );
    assert_eq!(a.manifest.version.len(), 14);
    assert_eq!(a.manifest.version, b.manifest.version);
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap(),
        "two builds of the same folder should be byte-identical"
    );

    // A different built_by does not change the id; different data does.
    let other_tool = BuildOptions {
        built_by: "someone else".into(),
        ..BuildOptions::default()
    };
    let c = build(svc.path(), &svc.out_path("c.zip"), &other_tool).expect("build c");
    assert_eq!(c.manifest.version, a.manifest.version);
    svc.file(
        "data/customers.csv",
        format!("{CUSTOMERS_CSV}4,Tim,Berners-Lee,,1,true,,\n"),
    );
    let d = build(svc.path(), &svc.out_path("d.zip"), &opts).expect("build d");
    assert_ne!(d.manifest.version, a.manifest.version);
}

#[test]
fn version_comes_from_options_then_spec() {
    let svc = Svc::base();
    let opts = BuildOptions {
        version: Some("2024-06-01.1".into()),
        ..BuildOptions::default()
    };
    let (report, out) = svc.build_with(&opts).expect("build");
    assert_eq!(report.manifest.version, "2024-06-01.1");
    let bundle = Bundle::open(&out, &Limits::default()).expect("open");
    assert_eq!(bundle.manifest().version, "2024-06-01.1");

    let svc =
        Svc::new(&base_toml().replace("description = \"Customer lookups\"", "version = \"v7\""));
    svc.file("data/customers.csv", CUSTOMERS_CSV);
    assert_eq!(svc.build_ok().0.manifest.version, "v7");
    let (report, _) = svc.build_with(&opts).expect("build");
    assert_eq!(
        report.manifest.version, "2024-06-01.1",
        "--version wins over the spec"
    );

    let bad = BuildOptions {
        version: Some(".hidden".into()),
        ..BuildOptions::default()
    };
    let err = svc.build_with(&bad).unwrap_err();
    assert_invalid(&err, "build options", "version", ".hidden");
}

#[test]
fn failed_build_leaves_no_archive_and_no_temp_file() {
    let svc = Svc::new(&base_toml());
    // The CSV is missing: the build fails.
    let err = build_err(&svc);
    assert!(matches!(err, Error::MissingFile { .. }), "{err:?}");
    let left: Vec<_> = std::fs::read_dir(svc.out.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // A successful build replaces the archive and leaves nothing else.
    svc.file("data/customers.csv", CUSTOMERS_CSV);
    std::fs::write(svc.out_path("bundle.zip"), b"old").unwrap();
    svc.build_ok();
    let names: Vec<String> = std::fs::read_dir(svc.out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["bundle.zip".to_string()]);
}

#[test]
fn archive_layout_is_sorted_with_fixed_times_and_stored_parquet() {
    let svc = Svc::new(
        r#"
        [service]
        id = "s"
        [[datasets]]
        name = "customers"
        path = "customers.csv"
        [[folders]]
        name = "res"
        path = "./resources/"
        [[endpoints]]
        id = "fn"
        kind = "python-function"
        python = { code = "./code/fn.py", function = "run", requirements = "requirements.txt", folders = ["res"] }
        [[endpoints]]
        id = "lookup"
        kind = "dataset-lookup"
        lookup = { dataset = "customers", keys = ["id"] }
        "#,
    );
    svc.file("customers.csv", CUSTOMERS_CSV)
        .file("resources/a.txt", "a")
        .file("resources/deep/b.json", "{}")
        .file("code/fn.py", "def run(): return 1\n")
        .file("requirements.txt", "numpy\n")
        .file("unrelated.txt", "not bundled");
    let (report, out) = svc.build_ok();
    let m = &report.manifest;
    assert_eq!(
        m.folders,
        vec![FolderSpec {
            name: "res".into(),
            path: "folders/res".into()
        }]
    );
    let python = m.endpoints[0].python.as_ref().unwrap();
    assert_eq!(python.code, "code/fn.py", "paths are normalized");
    let paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "code/fn.py",
            "datasets/customers.parquet",
            "folders/res/a.txt",
            "folders/res/deep/b.json",
            "requirements.txt",
        ]
    );
    for f in &m.files {
        assert_eq!(f.sha256.len(), 64);
    }

    let data = std::fs::read(&out).unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&data)).unwrap();
    let mut names = Vec::new();
    for i in 0..zip.len() {
        let entry = zip.by_index(i).unwrap();
        names.push(entry.name().unwrap().to_string());
        let time = entry.last_modified().expect("a time");
        assert_eq!((time.year(), time.month(), time.day()), (1980, 1, 1));
        let expected = if entry.name().unwrap().ends_with(".parquet") {
            zip::CompressionMethod::Stored
        } else {
            zip::CompressionMethod::Deflated
        };
        assert_eq!(entry.compression(), expected, "{}", entry.name().unwrap());
    }
    let mut expected: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
    expected.push("manifest.json".into());
    assert_eq!(names, expected);

    let bundle = Bundle::from_bytes(data.into(), "layout.zip", &Limits::default()).unwrap();
    assert_eq!(bundle.origin(), "layout.zip");
    assert_eq!(
        bundle.file("folders/res/a.txt").map(|b| &b[..]),
        Some(&b"a"[..])
    );
    let under: Vec<&str> = bundle.files_under("folders/res").map(|(p, _)| p).collect();
    assert_eq!(under, vec!["a.txt", "deep/b.json"]);
    assert_eq!(bundle.files().count(), 5);
}

#[test]
fn load_spec_returns_the_parsed_spec() {
    let svc = Svc::base();
    let spec = load_spec(svc.path()).expect("spec");
    assert_eq!(spec.service.id, "customers");
    assert_eq!(spec.endpoints.len(), 3);
    assert_eq!(spec.auth.keys[0].key.as_deref(), Some("secret-1"));
}

#[test]
fn validate_manifest_accepts_built_manifests_and_reports_paths() {
    let (report, _) = Svc::base().build_ok();
    validate_manifest(&report.manifest).expect("valid");
    let mut m = report.manifest.clone();
    m.endpoints[2].lookup.as_mut().unwrap().keys.clear();
    let err = validate_manifest(&m).unwrap_err();
    assert_invalid(&err, "manifest.json", "endpoints[2].lookup.keys", "empty");
}
