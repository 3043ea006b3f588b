//! SQL endpoints: the same statements on bundled data (DataFusion) and on PostgreSQL answer
//! the same bytes; parameters are typed, bound (never spliced) and named in errors; several
//! statements run in one transaction; what a statement cannot do is refused before it runs.

use crate::pg::{connection, load, people, unique_table};
use apinode_lookup::{
    BundledSql, Error, KeyType, PgConnection, ReferencedSql, SqlAnswer, SqlConfig, SqlParam,
    SqlStatement, Table,
};
use serde_json::{Map, Value, json};
use std::sync::Arc;

fn param(name: &str, param_type: KeyType) -> SqlParam {
    SqlParam {
        name: name.into(),
        param_type,
        required: true,
        default: None,
    }
}

fn statement(sql: &str, params: &[&str]) -> SqlStatement {
    SqlStatement {
        sql: sql.into(),
        params: params.iter().map(|p| (*p).into()).collect(),
    }
}

fn one(sql: &str, params: &[&str], parameters: Vec<SqlParam>) -> SqlConfig {
    SqlConfig {
        statements: vec![statement(sql, params)],
        parameters,
    }
}

fn body(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap()
}

fn block_on<T>(work: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(work)
}

fn json_of(answer: &SqlAnswer) -> String {
    let mut out = Vec::new();
    answer.write_json(&mut out);
    String::from_utf8(out).unwrap()
}

fn run_bundled(sql: &Arc<BundledSql>, query: Value) -> Result<String, Error> {
    let query = sql.query(&body(query))?;
    block_on(query.finish()).map(|a| json_of(&a))
}

fn run_referenced(sql: &Arc<ReferencedSql>, query: Value) -> Result<String, Error> {
    let query = sql.query(&body(query))?;
    block_on(query.finish()).map(|a| json_of(&a))
}

/// The people table in both engines, under the same name.
fn both() -> (Arc<PgConnection>, String, Arc<Table>) {
    let pg = connection("sql-it");
    let batch = people();
    let name = load(&pg, &batch);
    let table = Arc::new(Table::from_batch(&name, batch).unwrap());
    (pg, name, table)
}

#[test]
fn the_same_select_answers_the_same_bytes_in_both_engines() {
    let (pg, name, table) = both();
    let cases: Vec<(SqlConfig, Vec<Value>)> = vec![
        (
            one(
                &format!(
                    "SELECT id, email, country, score, active, since, seen FROM {name} \
                     WHERE country = $1 ORDER BY id NULLS LAST"
                ),
                &["country"],
                vec![param("country", KeyType::String)],
            ),
            vec![
                json!({"country": "FR"}),
                json!({"country": "US"}),
                json!({"country": "nowhere"}),
                // An injection attempt is a value like any other: no row has that country.
                json!({"country": "FR' OR '1'='1"}),
                json!({"country": "x'; DROP TABLE people; --"}),
            ],
        ),
        (
            one(
                &format!(
                    "SELECT email, since FROM {name} WHERE since >= $1 AND id <> $2 \
                     AND id < $2 + 10 ORDER BY id"
                ),
                &["since", "skip", "skip"],
                vec![param("since", KeyType::Date), param("skip", KeyType::Int64)],
            ),
            vec![
                json!({"since": "1970-01-02", "skip": 3}),
                json!({"since": "1969-12-31", "skip": "1"}),
            ],
        ),
        (
            one(
                &format!(
                    "SELECT count(*) AS n, max(score) AS top FROM {name} \
                     WHERE active = $1 AND seen > $2"
                ),
                &["active", "after"],
                vec![
                    param("active", KeyType::Boolean),
                    param("after", KeyType::Timestamp),
                ],
            ),
            vec![
                json!({"active": true, "after": "1969-12-31T00:00:00Z"}),
                json!({"active": "false", "after": "1970-01-01 00:00:00"}),
            ],
        ),
        (
            one(
                &format!("SELECT city FROM {name} WHERE score < $1 ORDER BY city"),
                &["limit"],
                vec![param("limit", KeyType::Float64)],
            ),
            vec![json!({"limit": 1.75}), json!({"limit": "1e9"})],
        ),
    ];
    for (config, queries) in cases {
        let bundled =
            Arc::new(BundledSql::new(std::slice::from_ref(&table), config.clone()).unwrap());
        let referenced = Arc::new(ReferencedSql::new(pg.clone(), config.clone()).unwrap());
        referenced.check().unwrap();
        for query in queries {
            let a = run_bundled(&bundled, query.clone()).unwrap();
            let b = run_referenced(&referenced, query.clone()).unwrap();
            assert_eq!(a, b, "{} with {query}", config.statements[0].sql);
        }
    }
    // One answer spelled out, so "the same" is also "right".
    let config = one(
        &format!("SELECT id, email, score, active, since, seen FROM {name} WHERE id = $1"),
        &["id"],
        vec![param("id", KeyType::Int64)],
    );
    let bundled = Arc::new(BundledSql::new(&[table], config).unwrap());
    let answer: Value =
        serde_json::from_str(&run_bundled(&bundled, json!({"id": 2})).unwrap()).unwrap();
    assert_eq!(
        answer,
        json!({
            "columns": [
                {"name": "id", "type": "int8"}, {"name": "email", "type": "text"},
                {"name": "score", "type": "float8"}, {"name": "active", "type": "bool"},
                {"name": "since", "type": "date"}, {"name": "seen", "type": "timestamptz"}
            ],
            "rows": [["2", "quote\"back\\slash\nnew é", "2.0", "false", "1970-01-02",
                      "1970-01-01T00:00:00.001Z"]]
        })
    );
}

#[test]
fn parameters_are_checked_before_anything_runs() {
    let (pg, name, _) = both();
    let config = SqlConfig {
        statements: vec![statement(
            &format!(
                "SELECT email FROM {name} WHERE id = $1 OR ($2::text IS NOT NULL AND city = $2)"
            ),
            &["id", "city"],
        )],
        parameters: vec![
            param("id", KeyType::Int64),
            SqlParam {
                required: false,
                ..param("city", KeyType::String)
            },
        ],
    };
    let sql = Arc::new(ReferencedSql::new(pg, config).unwrap());
    let e = sql.query(&body(json!({}))).unwrap_err();
    assert_eq!(e.to_string(), "parameter `id`: is required (an integer)");
    let e = sql.query(&body(json!({"id": "one"}))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "parameter `id`: expects an integer, got \"one\""
    );
    let e = sql
        .query(&body(json!({"id": 1, "cty": "Paris"})))
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("parameter `cty`: is not a parameter"),
        "{e}"
    );
    // An optional parameter left out is NULL.
    let answer = run_referenced(&sql, json!({"id": 1})).unwrap();
    assert_eq!(
        answer,
        r#"{"columns":[{"name":"email","type":"text"}],"rows":[["a@x.io"]]}"#
    );
    let answer = run_referenced(&sql, json!({"id": 0, "city": "Tokyo"})).unwrap();
    assert!(answer.ends_with(r#""rows":[["f@x.io"]]}"#), "{answer}");
}

#[test]
fn several_statements_run_in_one_transaction() {
    let pg = connection("sql-it");
    let table = unique_table("sql_tx");
    let setup = Arc::new(
        ReferencedSql::new(
            pg.clone(),
            one(
                &format!("CREATE TABLE {table} (k text PRIMARY KEY, n int8 NOT NULL)"),
                &[],
                vec![],
            ),
        )
        .unwrap(),
    );
    assert_eq!(
        run_referenced(&setup, json!({})).unwrap(),
        r#"{"updatedRows":0}"#
    );
    let config = SqlConfig {
        statements: vec![
            statement(
                &format!("INSERT INTO {table} (k, n) VALUES ($1, $2)"),
                &["k", "n"],
            ),
            statement(
                &format!("UPDATE {table} SET n = n + $1 WHERE k = $2"),
                &["n", "k"],
            ),
            statement(&format!("SELECT k, n FROM {table} ORDER BY k"), &[]),
        ],
        parameters: vec![param("k", KeyType::String), param("n", KeyType::Int64)],
    };
    let sql = Arc::new(ReferencedSql::new(pg.clone(), config).unwrap());
    sql.check().unwrap();
    assert_eq!(
        run_referenced(&sql, json!({"k": "a", "n": 20})).unwrap(),
        r#"{"columns":[{"name":"k","type":"text"},{"name":"n","type":"int8"}],"rows":[["a","40"]]}"#
    );
    // The second run's INSERT violates the key: nothing of it stays, and the values are at
    // fault (a 400 for the client), not the endpoint.
    let e = run_referenced(&sql, json!({"k": "a", "n": 1})).unwrap_err();
    assert!(
        matches!(e, Error::StatementRejected { statement: 0, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("23505"), "{e}");
    let count = Arc::new(
        ReferencedSql::new(
            pg,
            one(
                &format!("UPDATE {table} SET n = n WHERE n = $1"),
                &["n"],
                vec![param("n", KeyType::Int64)],
            ),
        )
        .unwrap(),
    );
    assert_eq!(
        run_referenced(&count, json!({"n": 40})).unwrap(),
        r#"{"updatedRows":1}"#
    );
}

#[test]
fn statements_that_cannot_run_are_refused_before_serving() {
    let (pg, name, table) = both();
    let tables = std::slice::from_ref(&table);
    // Bundled data is immutable: no DML, no DDL.
    let e = BundledSql::new(
        tables,
        one(&format!("DELETE FROM {name} WHERE id = 1"), &[], vec![]),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::InvalidStatement { statement: 0, .. }),
        "{e:?}"
    );
    let e = BundledSql::new(tables, one("CREATE TABLE x (a int)", &[], vec![])).unwrap_err();
    assert!(matches!(e, Error::InvalidStatement { .. }), "{e:?}");
    let e = BundledSql::new(tables, one("SELECT * FROM nowhere", &[], vec![])).unwrap_err();
    assert!(e.to_string().contains("nowhere"), "{e}");
    let e = BundledSql::new(
        tables,
        one(&format!("SELECT nope FROM {name}"), &[], vec![]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");

    let check = |sql: &str| {
        Arc::new(ReferencedSql::new(pg.clone(), one(sql, &[], vec![])).unwrap())
            .check()
            .unwrap_err()
    };
    let e = check("SELECT * FROM nowhere_at_all");
    assert!(
        matches!(e, Error::InvalidStatement { statement: 0, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("nowhere_at_all"), "{e}");
    let e = check("SELEC 1");
    assert!(e.to_string().contains("syntax error"), "{e}");
    let e = check("SELECT interval '1 day' AS d");
    assert!(e.to_string().contains("`d::text`"), "{e}");
    // A placeholder bound to an undeclared parameter is the endpoint's mistake.
    let e = ReferencedSql::new(pg, one("SELECT $1", &["ghost"], vec![])).unwrap_err();
    assert!(e.to_string().contains("`ghost`"), "{e}");
}

#[test]
fn values_that_make_a_statement_fail_are_the_query_s_fault() {
    let (pg, name, table) = both();
    let config = one(
        &format!("SELECT id / $1 AS q FROM {name} WHERE id = 1"),
        &["d"],
        vec![param("d", KeyType::Int64)],
    );
    let bundled = Arc::new(BundledSql::new(&[table], config.clone()).unwrap());
    let referenced = Arc::new(ReferencedSql::new(pg, config).unwrap());
    assert_eq!(
        run_bundled(&bundled, json!({"d": 1})).unwrap(),
        run_referenced(&referenced, json!({"d": 1})).unwrap()
    );
    for e in [
        run_bundled(&bundled, json!({"d": 0})).unwrap_err(),
        run_referenced(&referenced, json!({"d": 0})).unwrap_err(),
    ] {
        assert!(
            matches!(e, Error::StatementRejected { statement: 0, .. }),
            "{e:?}"
        );
        assert!(e.to_string().to_lowercase().contains("divi"), "{e}");
    }
}

#[test]
fn postgres_types_render_as_text() {
    let pg = connection("sql-it");
    let sql = Arc::new(
        ReferencedSql::new(
            pg,
            one(
                "SELECT 12.50::numeric AS price, -0.00012::numeric AS tiny, \
                 123456789.000001::numeric AS big, 10000::numeric AS round, 7::int2 AS small, 1.5::float4 AS f4, \
                 'x'::varchar(3) AS v, 'ab'::char(3) AS c, '{\"a\": 1}'::jsonb AS j, \
                 '12:34:56.5'::time AS t, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, \
                 '\\x0aff'::bytea AS b, 'infinity'::date AS inf, NULL::text AS nothing, \
                 '2024-02-29 10:00:00+02'::timestamptz AS ts",
                &[],
                vec![],
            ),
        )
        .unwrap(),
    );
    sql.check().unwrap();
    let answer: Value = serde_json::from_str(&run_referenced(&sql, json!({})).unwrap()).unwrap();
    assert_eq!(
        answer["rows"],
        json!([[
            "12.50",
            "-0.00012",
            "123456789.000001",
            "10000",
            "7",
            "1.5",
            "x",
            "ab ",
            "{\"a\": 1}",
            "12:34:56.500000",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "\\x0aff",
            "infinity",
            null,
            "2024-02-29T08:00:00.000Z"
        ]])
    );
    assert_eq!(
        answer["columns"][0],
        json!({"name": "price", "type": "numeric"})
    );
}
