//! Invalid service folders: every error names its culprit (field path, file, column).

use crate::common::*;
use apinode_bundle::*;

const SPEC: &str = "service.toml";

/// The base service with `from` replaced by `to` in its TOML (which must change it).
fn base_with(from: &str, to: &str) -> Svc {
    let toml = base_toml();
    assert!(toml.contains(from), "fixture does not contain {from:?}");
    let svc = Svc::new(&toml.replacen(from, to, 1));
    svc.file("data/customers.csv", CUSTOMERS_CSV);
    svc
}

/// A minimal service with one endpoint given as TOML, and the base CSV.
fn service(extra: &str) -> Svc {
    let svc = Svc::new(&format!(
        r#"
        [service]
        id = "svc"
        [[datasets]]
        name = "customers"
        path = "customers.csv"
        {extra}
        "#
    ));
    svc.file("customers.csv", CUSTOMERS_CSV);
    svc
}

#[test]
fn empty_keys_name_their_path() {
    let svc = base_with(r#"keys = ["email"]"#, "keys = []");
    let err = build_err(&svc);
    assert_invalid(&err, SPEC, "endpoints[2].lookup.keys", "empty");
    // load_spec reports the same.
    let err = load_spec(svc.path()).unwrap_err();
    assert_invalid(&err, SPEC, "endpoints[2].lookup.keys", "empty");
}

#[test]
fn toml_type_error_names_its_path_and_line() {
    let svc = base_with(r#"keys = ["email"]"#, r#"keys = "email""#);
    let err = build_err(&svc);
    assert_invalid(&err, SPEC, "endpoints[2].lookup.keys", "line ");
}

#[test]
fn toml_type_error_in_a_table_array() {
    let svc = base_with(r#"name = "warehouse""#, "name = 12");
    let err = build_err(&svc);
    assert_invalid(&err, SPEC, "datasets[1].name", "invalid type");
}

#[test]
fn toml_syntax_error_names_line_and_column() {
    let svc = Svc::new("[service]\nid = \"x\"\n[[endpoints]\n");
    let err = build_err(&svc);
    assert_invalid(&err, SPEC, "", "line 3");
    assert!(
        err.to_string().starts_with("service.toml is invalid:"),
        "{err}"
    );
}

#[test]
fn unknown_field_is_refused() {
    let svc = base_with("on_missing_key = \"null\"", "on_missing = \"null\"");
    let err = build_err(&svc);
    match &err {
        Error::Invalid { path, message, .. } => {
            assert!(path.starts_with("endpoints[1].lookup"), "{path}");
            assert!(message.contains("on_missing"), "{message}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn duplicate_endpoint_ids() {
    let svc = base_with(r#"id = "by-email""#, r#"id = "by-id""#);
    let err = build_err(&svc);
    match &err {
        Error::DuplicateId { file, path, id } => {
            assert_eq!(
                (file.as_str(), path.as_str(), id.as_str()),
                (SPEC, "endpoints[2].id", "by-id")
            );
        }
        other => panic!("expected DuplicateId, got {other:?}"),
    }
    assert!(err.to_string().contains("endpoints[2].id"));
}

#[test]
fn duplicate_dataset_names_and_key_ids() {
    let svc = base_with(r#"name = "warehouse""#, r#"name = "customers""#);
    let err = build_err(&svc);
    assert!(
        matches!(&err, Error::DuplicateId { path, id, .. } if path == "datasets[1].name" && id == "customers"),
        "{err:?}"
    );
    let svc = base_with(r#"id = "ops""#, r#"id = "key-1""#);
    let err = build_err(&svc);
    assert!(
        matches!(&err, Error::DuplicateId { path, id, .. } if path == "auth.keys[1].id" && id == "key-1"),
        "{err:?}"
    );
}

#[test]
fn invalid_ids() {
    let err = build_err(&base_with(r#"id = "customers""#, r#"id = "my service""#));
    assert_invalid(&err, SPEC, "service.id", "my service");
    let err = build_err(&base_with(r#"id = "by-id""#, r#"id = "by/id""#));
    assert_invalid(&err, SPEC, "endpoints[0].id", "by/id");
    let err = build_err(&base_with(
        r#"id = "customers""#,
        "id = \"customers\"\nversion = \".v1\"",
    ));
    assert_invalid(&err, SPEC, "service.version", ".v1");
}

#[test]
fn key_column_absent_from_the_dataset() {
    // Inferred schema: caught once the data is read.
    let svc = base_with(r#"keys = ["email"]"#, r#"keys = ["mail"]"#);
    let err = build_err(&svc);
    assert_invalid(&err, SPEC, "endpoints[2].lookup.keys[0]", "`mail`");
    assert!(err.to_string().contains("`customers`"), "{err}");
    // load_spec alone cannot know the inferred columns.
    assert!(load_spec(svc.path()).is_ok());

    // Output column renamed from a missing column.
    let svc = base_with(r#"column = "score""#, r#"column = "points""#);
    let err = build_err(&svc);
    assert_invalid(&err, SPEC, "endpoints[1].lookup.columns[1]", "`points`");
}

#[test]
fn key_column_absent_from_an_explicit_schema_is_caught_by_load_spec() {
    let svc = service(
        r#"
        schema = [{ name = "id", type = "int64" }]
        [[endpoints]]
        id = "e"
        kind = "dataset-lookup"
        lookup = { dataset = "customers", keys = ["email"] }
        "#,
    );
    let err = load_spec(svc.path()).unwrap_err();
    assert_invalid(&err, SPEC, "endpoints[0].lookup.keys[0]", "`email`");
}

#[test]
fn lookup_rules() {
    let err = build_err(&base_with(
        r#"dataset = "customers", keys = ["id"]"#,
        r#"dataset = "nope", keys = ["id"]"#,
    ));
    assert_invalid(&err, SPEC, "endpoints[0].lookup.dataset", "`nope`");

    let err = build_err(&base_with(
        "on_missing_key = \"null\"",
        "on_missing_key = \"first\"",
    ));
    assert_invalid(&err, SPEC, "endpoints[1].lookup.on_missing_key", "first");

    let err = build_err(&base_with(
        "on_multiple_matches = \"first\"",
        "on_no_match = \"first\"",
    ));
    assert_invalid(&err, SPEC, "endpoints[1].lookup.on_no_match", "first");

    let err = build_err(&base_with(
        r#"{ column = "last", input = "last_name" }"#,
        r#"{ column = "first", input = "last_name" }"#,
    ));
    assert!(
        matches!(&err, Error::DuplicateId { path, id, .. } if path == "endpoints[1].lookup.keys[1]" && id == "first"),
        "{err:?}"
    );

    let err = build_err(&base_with(
        r#"columns = ["id", { column = "score", output = "customer_score" }]"#,
        r#"columns = ["id", { column = "score", output = "id" }]"#,
    ));
    assert!(
        matches!(&err, Error::DuplicateId { path, id, .. } if path == "endpoints[1].lookup.columns[1]" && id == "id"),
        "{err:?}"
    );

    // A referenced dataset's columns are unknown: lookups on it are accepted.
    let svc = base_with(
        r#"dataset = "customers", keys = ["email"]"#,
        r#"dataset = "warehouse", keys = ["ANY_COLUMN"]"#,
    );
    svc.build_ok();
}

#[test]
fn dataset_rules() {
    let err = build_err(&base_with(
        r#"table = "CUSTOMERS""#,
        "table = \"CUSTOMERS\"\npath = \"x.csv\"",
    ));
    assert_invalid(&err, SPEC, "datasets[1]", "not both");

    let err = build_err(&base_with(
        r#"table = "CUSTOMERS""#,
        "table = \"CUSTOMERS\"\nschema = []",
    ));
    assert_invalid(&err, SPEC, "datasets[1].schema", "only bundled");

    let err = build_err(&base_with(r#"table = "CUSTOMERS""#, "description = \"x\""));
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");

    let svc = base_with(
        r#"path = "data/customers.csv""#,
        r#"path = "data/customers.txt""#,
    );
    svc.file("data/customers.txt", CUSTOMERS_CSV);
    let err = build_err(&svc);
    assert_invalid(&err, SPEC, "datasets[0].path", "format");

    let err = build_err(&base_with(
        r#"path = "data/customers.csv""#,
        "path = \"data/customers.csv\"\ncsv = { delimiter = \"é\" }",
    ));
    assert_invalid(&err, SPEC, "datasets[0].csv.delimiter", "delimiter");

    let err = build_err(&base_with(
        r#"path = "data/customers.csv""#,
        "path = \"data/customers.csv\"\nschema = [{ name = \"id\", type = \"int64\" }, { name = \"id\", type = \"string\" }]",
    ));
    assert!(
        matches!(&err, Error::DuplicateId { path, .. } if path == "datasets[0].schema[1].name"),
        "{err:?}"
    );

    let err = build_err(&base_with(
        r#"path = "data/customers.csv""#,
        "path = \"data/customers.csv\"\nschema = [{ name = \"id\", type = \"uuid\" }]",
    ));
    assert_invalid(&err, SPEC, "datasets[0].schema[0].type", "uuid");
}

#[test]
fn auth_rules() {
    // Dropping the first key leaves a valid service with one key.
    let svc = base_with(
        "keys = [\n    { key = \"secret-1\", label = \"ci\" },",
        "keys = [",
    );
    let (report, _) = svc.build_ok();
    assert_eq!(report.manifest.auth.keys.len(), 1);
    assert_eq!(report.manifest.auth.keys[0].id, "ops");

    let no_keys = Svc::new(
        "[service]\nid = \"s\"\n[auth]\nmode = \"api-keys\"\n[[endpoints]]\nid = \"e\"\nkind = \"sql-query\"\nsql = { connection = \"db\", statements = [{ sql = \"SELECT 1\" }] }\n",
    );
    assert_invalid(&build_err(&no_keys), SPEC, "auth.keys", "at least one key");

    let err = build_err(&base_with(
        r#"{ key = "secret-1", label = "ci" }"#,
        r#"{ key = "secret-1", key_sha256 = "abc" }"#,
    ));
    assert_invalid(&err, SPEC, "auth.keys[0]", "not both");

    let err = build_err(&base_with(
        r#"{ key = "secret-1", label = "ci" }"#,
        r#"{ label = "ci" }"#,
    ));
    assert_invalid(&err, SPEC, "auth.keys[0]", "key_sha256");

    let err = build_err(&base_with(
        r#"{ key = "secret-1", label = "ci" }"#,
        r#"{ key_sha256 = "ABCDEF" }"#,
    ));
    assert_invalid(&err, SPEC, "auth.keys[0].key_sha256", "64");

    let err = build_err(&base_with(
        r#"{ key = "secret-1", label = "ci" }"#,
        r#"{ key = "secret-2" }"#,
    ));
    assert_invalid(&err, SPEC, "auth.keys[1]", "same secret");

    let err = build_err(&base_with(r#"mode = "api-keys""#, r#"mode = "public""#));
    assert_invalid(&err, SPEC, "auth.keys", "api-keys");

    let oauth = |section: &str| {
        let svc = Svc::new(&format!(
            "[service]\nid = \"s\"\n[auth]\nmode = \"oauth2\"\n{section}\n[[endpoints]]\nid = \"e\"\nkind = \"sql-query\"\nsql = {{ connection = \"db\", statements = [{{ sql = \"SELECT 1\" }}] }}\n"
        ));
        svc.build()
    };
    assert_invalid(&oauth("").unwrap_err(), SPEC, "auth.oauth2", "issuer");
    assert_invalid(
        &oauth("oauth2 = { issuer = \"https://idp\" }").unwrap_err(),
        SPEC,
        "auth.oauth2",
        "jwks_uri",
    );
    assert_invalid(
        &oauth("oauth2 = { issuer = \"\", jwks_uri = \"https://idp/jwks\" }").unwrap_err(),
        SPEC,
        "auth.oauth2.issuer",
        "empty",
    );
    let (report, _) = oauth("oauth2 = { issuer = \"https://idp\", jwks_uri = \"https://idp/jwks\", audience = \"api\" }")
        .expect("valid oauth2");
    assert_eq!(report.manifest.auth.mode, AuthMode::Oauth2);
    assert_eq!(
        report.manifest.auth.oauth2.as_ref().unwrap().issuer,
        "https://idp"
    );
}

#[test]
fn unsafe_paths_in_the_spec() {
    for (path, needle) in [
        ("../customers.csv", ".."),
        ("/etc/passwd.csv", "absolute"),
        ("data\\\\customers.csv", "backslash"),
        ("C:/data/customers.csv", "drive letter"),
    ] {
        let err = build_err(&base_with(
            r#"path = "data/customers.csv""#,
            &format!("path = \"{path}\""),
        ));
        match &err {
            Error::UnsafePath { reason, .. } => {
                assert!(reason.contains(needle), "{path}: {reason}");
                assert!(reason.contains("datasets[0].path"), "{reason}");
            }
            other => panic!("{path}: expected UnsafePath, got {other:?}"),
        }
    }
}

#[cfg(unix)]
#[test]
fn symlinks_in_the_service_folder_are_refused() {
    // A symlinked dataset.
    let svc = base_with(r#"path = "data/customers.csv""#, r#"path = "link.csv""#);
    std::os::unix::fs::symlink(
        svc.path().join("data/customers.csv"),
        svc.path().join("link.csv"),
    )
    .unwrap();
    let err = build_err(&svc);
    assert!(
        matches!(&err, Error::UnsafePath { entry, reason, .. } if entry == "link.csv" && reason.contains("symbolic link")),
        "{err:?}"
    );

    // A symlinked directory on the way.
    let svc = base_with(
        r#"path = "data/customers.csv""#,
        r#"path = "alias/customers.csv""#,
    );
    std::os::unix::fs::symlink(svc.path().join("data"), svc.path().join("alias")).unwrap();
    let err = build_err(&svc);
    assert!(
        matches!(&err, Error::UnsafePath { reason, .. } if reason.contains("`alias`")),
        "{err:?}"
    );

    // A symlink inside a copied folder.
    let svc = service(
        r#"
        [[folders]]
        name = "res"
        path = "res"
        [[endpoints]]
        id = "e"
        kind = "dataset-lookup"
        lookup = { dataset = "customers", keys = ["id"] }
        "#,
    );
    svc.file("res/ok.txt", "ok");
    std::os::unix::fs::symlink("/etc/hostname", svc.path().join("res/escape")).unwrap();
    let err = build_err(&svc);
    assert!(
        matches!(&err, Error::UnsafePath { entry, .. } if entry == "res/escape"),
        "{err:?}"
    );
}

#[test]
fn missing_files_name_the_field() {
    let svc = Svc::new(&base_toml());
    let err = build_err(&svc);
    match &err {
        Error::MissingFile {
            entry, needed_by, ..
        } => {
            assert_eq!(entry, "data/customers.csv");
            assert!(needed_by.contains("datasets[0].path"), "{needed_by}");
        }
        other => panic!("expected MissingFile, got {other:?}"),
    }

    let svc = service(
        r#"
        [[endpoints]]
        id = "fn"
        kind = "python-function"
        python = { code = "fn.py", function = "run" }
        "#,
    );
    let err = build_err(&svc);
    assert!(
        matches!(&err, Error::MissingFile { entry, needed_by, .. } if entry == "fn.py" && needed_by.contains("endpoints[0].python.code")),
        "{err:?}"
    );

    let empty = tempfile::tempdir().unwrap();
    let err = load_spec(empty.path()).unwrap_err();
    assert!(
        matches!(&err, Error::MissingFile { entry, .. } if entry == "service.toml"),
        "{err:?}"
    );
}

#[test]
fn folder_rules() {
    let svc = service(
        r#"
        [[folders]]
        name = "res"
        path = "res"
        [[endpoints]]
        id = "fn"
        kind = "python-function"
        python = { code = "fn.py", function = "run", folders = ["other"] }
        "#,
    );
    svc.file("res/a.txt", "a")
        .file("fn.py", "def run(): pass\n");
    assert_invalid(
        &build_err(&svc),
        SPEC,
        "endpoints[0].python.folders[0]",
        "`other`",
    );

    let svc = service(
        r#"
        [[folders]]
        name = "res"
        path = "res.txt"
        [[endpoints]]
        id = "e"
        kind = "dataset-lookup"
        lookup = { dataset = "customers", keys = ["id"] }
        "#,
    );
    svc.file("res.txt", "not a directory");
    let err = build_err(&svc);
    assert!(
        matches!(&err, Error::MissingFile { needed_by, .. } if needed_by.contains("folders[0].path") && needed_by.contains("directory")),
        "{err:?}"
    );
}

#[test]
fn archive_path_collisions_are_refused() {
    let svc = service(
        r#"
        [[endpoints]]
        id = "fn"
        kind = "python-function"
        python = { code = "manifest.json", function = "run" }
        "#,
    );
    svc.file("manifest.json", "{}");
    assert_invalid(
        &build_err(&svc),
        SPEC,
        "endpoints[0].python.code",
        "reserves",
    );

    let svc = service(
        r#"
        [[endpoints]]
        id = "fn"
        kind = "python-function"
        python = { code = "datasets/customers.parquet", function = "run" }
        "#,
    );
    svc.file("datasets/customers.parquet", "not really");
    // Files are planned before datasets are converted: the dataset is the second claimant.
    assert_invalid(
        &build_err(&svc),
        SPEC,
        "datasets[0].path",
        "endpoints[0].python.code",
    );
}

#[test]
fn size_limits_are_enforced_at_build() {
    // Over the default file count: 10 000 entries in a folder.
    let svc = service(
        r#"
        [[folders]]
        name = "many"
        path = "many"
        [[endpoints]]
        id = "e"
        kind = "dataset-lookup"
        lookup = { dataset = "customers", keys = ["id"] }
        "#,
    );
    for i in 0..Limits::default().max_files {
        svc.file(&format!("many/{i}.txt"), "");
    }
    let err = build_err(&svc);
    assert!(
        matches!(&err, Error::TooLarge { what, limit, .. } if what.contains("number of files") && *limit == 10_000),
        "{err:?}"
    );
}
