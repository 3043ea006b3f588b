//! The eight endpoint kinds: each valid, each with a wrong or a missing section, and the rules
//! of each section.

use crate::common::*;
use apinode_bundle::*;

const SPEC: &str = "service.toml";

/// A valid section for `kind`, as the TOML of an inline table assignment.
fn section_for(kind: EndpointKind) -> &'static str {
    match kind {
        EndpointKind::Prediction => r#"model = { path = "model", return_post_enrich = true }"#,
        EndpointKind::Clustering => r#"model = { path = "clusters.zip" }"#,
        EndpointKind::PythonPrediction => {
            r#"python = { code = "predict.py", class = "Predictor", requirements = "requirements.txt", folders = ["res"] }"#
        }
        EndpointKind::RPrediction => {
            r#"r = { code = "predict.R", function = "predict", packages = ["jsonlite"] }"#
        }
        EndpointKind::PythonFunction => r#"python = { code = "fn.py", function = "run" }"#,
        EndpointKind::RFunction => r#"r = { code = "fn.R", function = "run", folders = ["res"] }"#,
        EndpointKind::SqlQuery => {
            r#"sql = { datasets = ["customers"], statements = [{ sql = "SELECT * FROM customers WHERE id = ? AND last <> '?'", params = ["id"] }], parameters = [{ name = "id", type = "int64" }] }"#
        }
        EndpointKind::DatasetLookup => r#"lookup = { dataset = "customers", keys = ["id"] }"#,
    }
}

/// A service with one endpoint (`kind`, then `body` lines) and every file any kind needs.
fn one_endpoint(kind: EndpointKind, body: &str) -> Svc {
    let svc = Svc::new(&format!(
        r#"
        [service]
        id = "svc"
        [[datasets]]
        name = "customers"
        path = "customers.csv"
        [[folders]]
        name = "res"
        path = "resources"
        [[endpoints]]
        id = "ep"
        kind = "{kind}"
        {body}
        "#
    ));
    svc.file("customers.csv", CUSTOMERS_CSV)
        .file("resources/table.txt", "x")
        .file("model/model.json", "{}")
        .file("model/weights/w.bin", [0u8, 1, 2])
        .file("clusters.zip", "PK")
        .file("predict.py", "class Predictor: pass\n")
        .file("requirements.txt", "scikit-learn\n")
        .file("predict.R", "predict <- function(x) x\n")
        .file("fn.py", "def run(): return 1\n")
        .file("fn.R", "run <- function() 1\n");
    svc
}

#[test]
fn every_kind_builds_and_opens() {
    for kind in EndpointKind::ALL {
        let svc = one_endpoint(kind, section_for(kind));
        let bundle = svc.build_and_open();
        let endpoint = bundle.manifest().endpoint("ep").expect("endpoint");
        assert_eq!(endpoint.kind, kind);
        match kind {
            EndpointKind::Prediction => {
                assert!(bundle.file("model/model.json").is_some());
                assert!(bundle.file("model/weights/w.bin").is_some());
                assert!(endpoint.model.as_ref().unwrap().return_post_enrich);
            }
            EndpointKind::Clustering => assert!(bundle.file("clusters.zip").is_some()),
            EndpointKind::PythonPrediction => {
                assert!(bundle.file("predict.py").is_some());
                assert!(bundle.file("requirements.txt").is_some());
                assert!(bundle.file("folders/res/table.txt").is_some());
            }
            EndpointKind::RPrediction => assert!(bundle.file("predict.R").is_some()),
            EndpointKind::PythonFunction => assert!(bundle.file("fn.py").is_some()),
            EndpointKind::RFunction => assert!(bundle.file("fn.R").is_some()),
            EndpointKind::SqlQuery => {
                assert_eq!(
                    endpoint.sql.as_ref().unwrap().statements[0].params,
                    vec!["id"]
                )
            }
            EndpointKind::DatasetLookup => {
                assert_eq!(endpoint.lookup.as_ref().unwrap().keys[0].column, "id")
            }
        }
        // Nothing unneeded is bundled.
        if kind != EndpointKind::Prediction {
            assert!(bundle.file("model/model.json").is_none(), "{kind}");
        }
    }
}

#[test]
fn every_kind_refuses_another_kinds_section() {
    for kind in EndpointKind::ALL {
        // The section of some other kind, added to a valid endpoint.
        let other = EndpointKind::ALL
            .into_iter()
            .find(|k| k.section() != kind.section())
            .unwrap();
        let body = format!("{}\n{}", section_for(kind), section_for(other));
        let err = build_err(&one_endpoint(kind, &body));
        assert_invalid(
            &err,
            SPEC,
            &format!("endpoints[0].{}", other.section()),
            &format!("not allowed for kind `{kind}`"),
        );
    }
}

#[test]
fn every_kind_requires_its_section() {
    for kind in EndpointKind::ALL {
        let err = build_err(&one_endpoint(kind, ""));
        assert_invalid(
            &err,
            SPEC,
            &format!("endpoints[0].{}", kind.section()),
            &format!("kind `{kind}` needs"),
        );
    }
}

#[test]
fn wrong_section_alone_names_the_wrong_one() {
    let err = build_err(&one_endpoint(
        EndpointKind::DatasetLookup,
        section_for(EndpointKind::SqlQuery),
    ));
    assert_invalid(&err, SPEC, "endpoints[0].sql", "takes a `lookup` section");
}

#[test]
fn python_class_and_function_follow_the_kind() {
    let err = build_err(&one_endpoint(
        EndpointKind::PythonPrediction,
        r#"python = { code = "predict.py", function = "predict" }"#,
    ));
    assert_invalid(&err, SPEC, "endpoints[0].python.function", "takes `class`");

    let err = build_err(&one_endpoint(
        EndpointKind::PythonFunction,
        r#"python = { code = "fn.py" }"#,
    ));
    assert_invalid(
        &err,
        SPEC,
        "endpoints[0].python.function",
        "needs `function`",
    );

    let err = build_err(&one_endpoint(
        EndpointKind::PythonPrediction,
        r#"python = { code = "predict.py", class = "P", requirements = "missing.txt" }"#,
    ));
    assert!(
        matches!(&err, Error::MissingFile { entry, needed_by, .. } if entry == "missing.txt" && needed_by.contains("python.requirements")),
        "{err:?}"
    );
}

#[test]
fn model_directory_must_hold_files() {
    let svc = one_endpoint(EndpointKind::Prediction, r#"model = { path = "empty" }"#);
    std::fs::create_dir(svc.path().join("empty")).unwrap();
    let err = build_err(&svc);
    assert!(
        matches!(&err, Error::MissingFile { needed_by, .. } if needed_by.contains("endpoints[0].model.path")),
        "{err:?}"
    );
}

#[test]
fn enrich_only_on_prediction_kinds() {
    let enrich = r#"
        [[endpoints.enrich]]
        dataset = "customers"
        keys = [{ column = "id", input = "customer_id" }]
        columns = [{ column = "score", output = "customer_score" }]
        on_no_match = "null"
    "#;
    let body = format!("{}\n{enrich}", section_for(EndpointKind::PythonPrediction));
    let bundle = one_endpoint(EndpointKind::PythonPrediction, &body).build_and_open();
    let endpoint = bundle.manifest().endpoint("ep").unwrap();
    assert_eq!(endpoint.enrich.len(), 1);
    assert_eq!(endpoint.enrich[0].keys[0].input, "customer_id");

    let body = format!("{}\n{enrich}", section_for(EndpointKind::PythonFunction));
    let err = build_err(&one_endpoint(EndpointKind::PythonFunction, &body));
    assert_invalid(&err, SPEC, "endpoints[0].enrich", "python-function");

    let bad = enrich.replace("\"score\"", "\"points\"");
    let body = format!("{}\n{bad}", section_for(EndpointKind::Prediction));
    let err = build_err(&one_endpoint(EndpointKind::Prediction, &body));
    assert_invalid(&err, SPEC, "endpoints[0].enrich[0].columns[0]", "`points`");
}

#[test]
fn pool_rules() {
    let with_pool = |kind: EndpointKind, pool: &str| {
        one_endpoint(kind, &format!("{}\npool = {pool}", section_for(kind)))
    };
    let bundle = with_pool(EndpointKind::RFunction, "{ min_workers = 2 }").build_and_open();
    let pool = bundle
        .manifest()
        .endpoint("ep")
        .unwrap()
        .pool
        .clone()
        .unwrap();
    assert_eq!(
        (
            pool.min_workers,
            pool.max_workers,
            pool.queue,
            pool.timeout_ms
        ),
        (2, 4, 64, 10_000),
        "defaults are explicit"
    );

    let err = build_err(&with_pool(EndpointKind::DatasetLookup, "{}"));
    assert_invalid(&err, SPEC, "endpoints[0].pool", "dataset-lookup");
    let err = build_err(&with_pool(
        EndpointKind::PythonFunction,
        "{ min_workers = 0 }",
    ));
    assert_invalid(&err, SPEC, "endpoints[0].pool.min_workers", "at least 1");
    let err = build_err(&with_pool(
        EndpointKind::PythonFunction,
        "{ max_workers = 300 }",
    ));
    assert_invalid(&err, SPEC, "endpoints[0].pool.max_workers", "256");
    let err = build_err(&with_pool(
        EndpointKind::PythonFunction,
        "{ min_workers = 5, max_workers = 2 }",
    ));
    assert_invalid(&err, SPEC, "endpoints[0].pool.max_workers", "min_workers");
    let err = build_err(&with_pool(
        EndpointKind::PythonFunction,
        "{ timeout_ms = 0 }",
    ));
    assert_invalid(&err, SPEC, "endpoints[0].pool.timeout_ms", "at least 1");
}

#[test]
fn sql_rules() {
    let sql = |body: &str| {
        build_err(&one_endpoint(
            EndpointKind::SqlQuery,
            &format!("sql = {body}"),
        ))
    };

    let err = sql(r#"{ datasets = ["customers"], statements = [] }"#);
    assert_invalid(&err, SPEC, "endpoints[0].sql.statements", "at least one");

    let err = sql(
        r#"{ datasets = ["customers"], statements = [{ sql = "SELECT * FROM customers WHERE id = ? OR id = ?", params = ["id"] }], parameters = [{ name = "id", type = "int64" }] }"#,
    );
    assert_invalid(
        &err,
        SPEC,
        "endpoints[0].sql.statements[0].params",
        "2 `?` placeholder",
    );

    let err = sql(
        r#"{ datasets = ["customers"], statements = [{ sql = "SELECT 1", params = [] }, { sql = "SELECT ?", params = ["who"] }] }"#,
    );
    assert_invalid(
        &err,
        SPEC,
        "endpoints[0].sql.statements[1].params[0]",
        "`who`",
    );

    let err = sql(
        r#"{ connection = "db", datasets = ["customers"], statements = [{ sql = "SELECT 1" }] }"#,
    );
    assert_invalid(&err, SPEC, "endpoints[0].sql", "not both");

    let err = sql(r#"{ statements = [{ sql = "SELECT 1" }] }"#);
    assert_invalid(&err, SPEC, "endpoints[0].sql.datasets", "connection");

    let err = sql(r#"{ datasets = ["nope"], statements = [{ sql = "SELECT 1" }] }"#);
    assert_invalid(&err, SPEC, "endpoints[0].sql.datasets[0]", "`nope`");

    let err = sql(
        r#"{ connection = "db", statements = [{ sql = "SELECT ?", params = ["a"] }], parameters = [{ name = "a", type = "string" }, { name = "a", type = "int64" }] }"#,
    );
    assert!(
        matches!(&err, Error::DuplicateId { path, id, .. } if path == "endpoints[0].sql.parameters[1].name" && id == "a"),
        "{err:?}"
    );

    let err = sql(
        r#"{ connection = "db", statements = [{ sql = "SELECT ?", params = ["a"] }], parameters = [{ name = "a", type = "int64", default = "ten" }] }"#,
    );
    assert_invalid(
        &err,
        SPEC,
        "endpoints[0].sql.parameters[0].default",
        "int64",
    );

    // SQL over a referenced dataset must go through its connection.
    let svc = Svc::new(
        r#"
        [service]
        id = "svc"
        [[datasets]]
        name = "remote"
        table = "T"
        connection = "warehouse"
        [[endpoints]]
        id = "q"
        kind = "sql-query"
        sql = { datasets = ["remote"], statements = [{ sql = "SELECT 1" }] }
        "#,
    );
    assert_invalid(
        &build_err(&svc),
        SPEC,
        "endpoints[0].sql.datasets[0]",
        "warehouse",
    );

    // A connection-based query is valid without datasets.
    let bundle = one_endpoint(
        EndpointKind::SqlQuery,
        r#"sql = { connection = "db", statements = [{ sql = "SELECT * FROM t WHERE a = ?", params = ["a"] }], parameters = [{ name = "a", type = "string", required = false, default = "x" }] }"#,
    )
    .build_and_open();
    let sql = bundle
        .manifest()
        .endpoint("ep")
        .unwrap()
        .sql
        .clone()
        .unwrap();
    assert_eq!(sql.connection.as_deref(), Some("db"));
    assert!(!sql.parameters[0].required);
}
