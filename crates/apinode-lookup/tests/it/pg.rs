//! Referenced lookups against the real PostgreSQL (`APINODE_TEST_PG_URL`; the tests fail when
//! it is unset or unreachable): a table loaded with `TableLoader` answers every query with
//! the same bytes, ignore reasons and errors as the same data in a bundled `Lookup`.

use apinode_lookup::{
    Answer, KeyColumn, KeyType, Lookup, LookupAction, LookupConfig, OutputColumn, PgConfig,
    PgConnection, ReferencedLookup, Table, TableLoader,
};
use arrow_array::{
    ArrayRef, BooleanArray, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// The test database's URL; panics (the test fails) when it is unset or does not answer.
pub(crate) fn pg_url() -> String {
    let url = std::env::var("APINODE_TEST_PG_URL").unwrap_or_default();
    assert!(
        !url.is_empty(),
        "APINODE_TEST_PG_URL is not set: point it at a PostgreSQL database the tests may \
         create tables in, e.g. postgres://postgres@127.0.0.1:5432/test (`cargo xtask ci` sets it)"
    );
    url
}

pub(crate) fn connection(name: &str) -> Arc<PgConnection> {
    let url = pg_url();
    let connection = Arc::new(PgConnection::new(name, &PgConfig::new(&url)).unwrap());
    if let Err(e) = connection.check() {
        panic!("APINODE_TEST_PG_URL={url} does not answer: {e}");
    }
    connection
}

/// A table name no other test (or run) uses.
pub(crate) fn unique_table(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

pub(crate) fn people() -> RecordBatch {
    RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(Int64Array::from(vec![
                Some(1),
                Some(2),
                Some(3),
                None,
                Some(5),
                Some(6),
            ])) as ArrayRef,
        ),
        (
            "email",
            Arc::new(StringArray::from(vec![
                Some("a@x.io"),
                Some("quote\"back\\slash\nnew é"),
                Some("c@x.io"),
                Some("d@x.io"),
                None,
                Some("f@x.io"),
            ])),
        ),
        (
            "country",
            Arc::new(StringArray::from(vec!["FR", "FR", "US", "US", "FR", "JP"])),
        ),
        (
            "city",
            Arc::new(StringArray::from(vec![
                "Paris", "Lyon", "Austin", "Austin", "Paris", "Tokyo",
            ])),
        ),
        (
            "score",
            Arc::new(Float64Array::from(vec![
                Some(1.5),
                Some(2.0),
                None,
                Some(-0.0),
                Some(f64::NAN),
                Some(1e-300),
            ])),
        ),
        (
            "active",
            Arc::new(BooleanArray::from(vec![
                Some(true),
                Some(false),
                Some(true),
                Some(true),
                None,
                Some(false),
            ])),
        ),
        (
            "since",
            Arc::new(Date32Array::from(vec![
                Some(0),
                Some(1),
                Some(19_000),
                Some(19_001),
                Some(-1),
                None,
            ])),
        ),
        (
            "seen",
            Arc::new(
                TimestampMicrosecondArray::from(vec![
                    Some(0),
                    Some(1_000),
                    Some(1_000_000),
                    Some(2),
                    Some(-3),
                    None,
                ])
                .with_timezone("UTC"),
            ),
        ),
    ])
    .unwrap()
}

/// Loads `batch` into a new table; returns its name.
pub(crate) fn load(connection: &Arc<PgConnection>, batch: &RecordBatch) -> String {
    let table = unique_table("lookup_it");
    let columns: Vec<(String, KeyType)> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), KeyType::of(f.data_type()).unwrap()))
        .collect();
    let mut loader = TableLoader::start(connection, &table, &columns, false, &[]).unwrap();
    // Two batches, so row numbering and ctid order span them.
    loader.write(batch.slice(0, 3)).unwrap();
    loader.write(batch.slice(3, batch.num_rows() - 3)).unwrap();
    assert_eq!(loader.finish().unwrap(), batch.num_rows() as u64);
    table
}

/// Each record's answer: its `data` JSON text, or its ignore reason; or the first error.
type Answers = Result<Vec<Result<String, &'static str>>, (Option<usize>, String)>;

fn bundled(lookup: &Lookup, records: &[&Map<String, Value>]) -> Answers {
    let matches = lookup
        .find_batch(records)
        .map_err(|(i, e)| (Some(i), e.to_string()))?;
    let mut buffer = Vec::new();
    let ranges = lookup.write_matches(&matches, &mut buffer);
    Ok(matches
        .iter()
        .zip(ranges)
        .map(|(m, r)| match (m, r) {
            (apinode_lookup::Match::Ignored(reason), _) => Err(reason.as_str()),
            (_, r) => Ok(String::from_utf8(buffer[r.unwrap()].to_vec()).unwrap()),
        })
        .collect())
}

fn referenced(lookup: &Arc<ReferencedLookup>, records: &[&Map<String, Value>]) -> Answers {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let written = runtime
        .block_on(lookup.query(records).finish())
        .map_err(|(i, e)| (i, e.to_string()))?;
    Ok(written
        .answers
        .iter()
        .map(|a| match a {
            Answer::Data(r) => Ok(String::from_utf8(written.buffer[r.clone()].to_vec()).unwrap()),
            Answer::Ignored(reason) => Err(reason.as_str()),
        })
        .collect())
}

fn config(
    keys: &[(&str, &str)],
    columns: &[(&str, &str)],
    actions: [LookupAction; 3],
) -> LookupConfig {
    LookupConfig {
        keys: keys
            .iter()
            .map(|(c, i)| KeyColumn {
                column: (*c).into(),
                input: (*i).into(),
            })
            .collect(),
        columns: columns
            .iter()
            .map(|(c, o)| OutputColumn {
                column: (*c).into(),
                output: (*o).into(),
            })
            .collect(),
        on_missing_key: actions[0],
        on_no_match: actions[1],
        on_multiple_matches: actions[2],
    }
}

#[test]
fn referenced_lookups_answer_exactly_what_bundled_ones_do() {
    use LookupAction::{Fail, First, Ignore, Null};
    let connection = connection("api-node-referenced-data");
    let batch = people();
    let table_name = load(&connection, &batch);
    let table = Arc::new(Table::from_batch("people", batch).unwrap());

    let all = [Ignore, Null, First, Fail];
    let mut configs = Vec::new();
    for missing in [Fail, Ignore, Null] {
        for none in [Fail, Ignore, Null] {
            for several in all {
                configs.push(config(
                    &[("country", "c"), ("city", "town")],
                    &[],
                    [missing, none, several],
                ));
            }
        }
    }
    let renamed = [
        ("email", "mail"),
        ("score", "s"),
        ("since", "since"),
        ("seen", "when"),
    ];
    configs.push(config(&[("id", "id")], &renamed, [Ignore, Null, First]));
    configs.push(config(
        &[("score", "score")],
        &[("id", "id")],
        [Ignore, Null, First],
    ));
    configs.push(config(
        &[("active", "active")],
        &[("id", "id")],
        [Ignore, Ignore, First],
    ));
    configs.push(config(
        &[("since", "since")],
        &renamed,
        [Null, Ignore, Ignore],
    ));
    configs.push(config(
        &[("seen", "seen")],
        &renamed,
        [Null, Ignore, Ignore],
    ));
    configs.push(config(
        &[("email", "email")],
        &[("id", "i")],
        [Null, Ignore, Ignore],
    ));

    let records: Vec<Map<String, Value>> = [
        json!({"c": "FR", "town": "Paris"}),
        json!({"c": "FR", "town": "Lyon", "id": 2}),
        json!({"c": "US", "town": "Austin", "id": "3", "score": -0.0}),
        json!({"c": "DE", "town": "Berlin", "id": 99, "score": 0.0}),
        json!({"town": "Paris", "id": 5, "score": 1.5}),
        json!({"c": null, "town": "Paris", "id": null, "score": "NaN"}),
        json!({"c": "JP", "town": "Tokyo", "id": 6.0, "score": 1e-300, "active": false}),
        json!({"active": "true", "since": "1970-01-02", "seen": "1970-01-01T00:00:00.001Z"}),
        json!({"since": "2022-01-08", "seen": "1969-12-31T23:59:59.999997Z", "email": "quote\"back\\slash\nnew é"}),
        json!({"since": "1969-12-31", "seen": "1970-01-01 00:00:01", "email": "nobody"}),
        json!({"c": 7, "town": true, "id": 1, "email": 42}),
    ]
    .iter()
    .map(|v| v.as_object().unwrap().clone())
    .collect();
    let refs: Vec<&Map<String, Value>> = records.iter().collect();
    let bad_key: Map<String, Value> = json!({"c": "FR", "town": "Paris", "id": "x", "score": "y", "active": "maybe", "since": "2024-13-01", "seen": "never", "email": "ok"})
        .as_object()
        .unwrap()
        .clone();

    let mut compared = 0;
    let mut rows_found = 0;
    for config in configs {
        let bundled_lookup = Lookup::new(table.clone(), config.clone()).unwrap();
        let referenced_lookup = Arc::new(
            ReferencedLookup::new(connection.clone(), "people", &table_name, config.clone())
                .unwrap(),
        );
        referenced_lookup.resolve().unwrap();
        // Every record alone (`lookup`), all of them at once (`lookup-multi`, over the
        // gathering threshold), and a batch ending on an invalid key.
        for record in &refs {
            assert_eq!(
                referenced(&referenced_lookup, &[record]),
                bundled(&bundled_lookup, &[record]),
                "{config:?} {record:?}"
            );
            compared += 1;
        }
        let answers = referenced(&referenced_lookup, &refs);
        assert_eq!(answers, bundled(&bundled_lookup, &refs), "{config:?}");
        if let Ok(answers) = &answers {
            rows_found += answers
                .iter()
                .filter(|a| a.as_ref().is_ok_and(|d| !d.contains(":null")))
                .count();
        }
        let mut with_bad = refs.clone();
        with_bad.insert(3, &bad_key);
        assert_eq!(
            referenced(&referenced_lookup, &with_bad),
            bundled(&bundled_lookup, &with_bad),
            "{config:?}"
        );
        compared += 2;
    }
    assert!(compared > 300, "{compared}");
    assert!(rows_found > 20, "{rows_found}");
}

#[test]
fn unknown_columns_and_tables_are_named() {
    let connection = connection("api-node-referenced-data");
    let table = load(&connection, &people());
    let lookup = Arc::new(
        ReferencedLookup::new(
            connection.clone(),
            "people",
            &table,
            LookupConfig::on_keys(&["nope"]),
        )
        .unwrap(),
    );
    let err = lookup.resolve().unwrap_err().to_string();
    assert!(
        err.contains("no column `nope`") && err.contains("country"),
        "{err}"
    );

    let missing = Arc::new(
        ReferencedLookup::new(
            connection,
            "people",
            "no_such_table_xyz",
            LookupConfig::on_keys(&["id"]),
        )
        .unwrap(),
    );
    let err = missing.resolve().unwrap_err().to_string();
    assert!(
        err.contains("api-node-referenced-data") && err.contains("no_such_table_xyz"),
        "{err}"
    );
}

#[test]
fn loading_refuses_an_existing_table_unless_replacing() {
    let connection = connection("api-node-referenced-data");
    let batch = people();
    let table = load(&connection, &batch);
    let columns = vec![("id".to_owned(), KeyType::Int64)];
    let err = TableLoader::start(&connection, &table, &columns, false, &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already exists") && err.contains("--replace"),
        "{err}"
    );

    let mut loader = TableLoader::start(&connection, &table, &columns, true, &[]).unwrap();
    loader
        .write(
            RecordBatch::try_from_iter([(
                "id",
                Arc::new(Int64Array::from(vec![7, 8])) as ArrayRef,
            )])
            .unwrap(),
        )
        .unwrap();
    assert_eq!(loader.finish().unwrap(), 2);

    // A NUL in a string names the column and row; nothing is committed.
    let columns = vec![("s".to_owned(), KeyType::String)];
    let mut loader = TableLoader::start(&connection, &table, &columns, true, &[]).unwrap();
    let bad = RecordBatch::try_from_iter([(
        "s",
        Arc::new(StringArray::from(vec!["ok", "b\0d"])) as ArrayRef,
    )])
    .unwrap();
    let err = match loader.write(bad) {
        Err(e) => e.to_string(),
        Ok(()) => loader.finish().unwrap_err().to_string(),
    };
    assert!(
        err.contains("column `s` row 2") && err.contains("NUL"),
        "{err}"
    );
    let lookup = Arc::new(
        ReferencedLookup::new(connection, "t", &table, LookupConfig::on_keys(&["id"])).unwrap(),
    );
    lookup.resolve().unwrap();
}

/// Sessions the server terminated (`pg_terminate_backend`, an administrator's or a
/// failover's doing) are noticed closed and replaced when next taken from the pool: the
/// next query succeeds (one racing the termination may answer `Unavailable`), nothing
/// restarted.
#[test]
fn terminated_sessions_are_replaced() {
    let name = unique_table("apinode_terminated");
    let url = pg_url();
    let separator = if url.contains('?') { '&' } else { '?' };
    let mut config = PgConfig::new(format!("{url}{separator}application_name={name}"));
    config.pool_size = 2;
    let connection = Arc::new(PgConnection::new("terminated", &config).unwrap());
    connection.check().unwrap();
    let table = load(&connection, &people());
    let lookup = Arc::new(
        ReferencedLookup::new(
            connection.clone(),
            "people",
            &table,
            LookupConfig::on_keys(&["id"]),
        )
        .unwrap(),
    );
    let data = json!({"id": 2}).as_object().cloned().unwrap();
    let expected = referenced(&lookup, &[&data]).unwrap();

    let killer = std::process::Command::new("psql")
        .arg(&url)
        .args(["-tA", "-c"])
        .arg(format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = '{name}'"
        ))
        .output()
        .unwrap_or_else(|e| panic!("psql is needed to terminate the sessions: {e}"));
    let stdout = String::from_utf8_lossy(&killer.stdout);
    assert!(
        killer.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&killer.stderr)
    );
    let terminated: u32 = stdout.trim().parse().unwrap();
    assert!(terminated >= 1, "no session to terminate: {stdout}");
    let mut failures = 0;
    let mut answer = referenced(&lookup, &[&data]);
    while let Err((_, message)) = &answer {
        assert!(message.contains("unavailable"), "{message}");
        failures += 1;
        assert!(
            failures <= 2,
            "a terminated session is not replaced: {message}"
        );
        answer = referenced(&lookup, &[&data]);
    }
    assert_eq!(answer.unwrap(), expected);
}

/// `--index`: each index is created with the table, in its transaction, and the table is
/// analyzed; an index on a column the table lacks is refused before anything is created.
#[test]
fn loading_creates_the_indexes_asked_for() {
    let connection = connection("api-node-referenced-data");
    let table = unique_table("lookup_indexed");
    let columns = vec![
        ("id".to_owned(), KeyType::Int64),
        ("email".to_owned(), KeyType::String),
    ];
    let err = TableLoader::start(&connection, &table, &columns, false, &[vec!["mail".into()]])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("index on `mail`") && err.contains("columns: id, email"),
        "{err}"
    );

    let indexes = [
        vec!["id".to_owned()],
        vec!["email".to_owned(), "id".to_owned()],
    ];
    let mut loader = TableLoader::start(&connection, &table, &columns, false, &indexes).unwrap();
    loader
        .write(
            RecordBatch::try_from_iter([
                ("id", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
                (
                    "email",
                    Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
                ),
            ])
            .unwrap(),
        )
        .unwrap();
    assert_eq!(loader.finish().unwrap(), 2);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (definitions, analyzed) = runtime.block_on(async {
        let (client, session) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(session);
        let rows = client
            .query(
                "SELECT indexdef FROM pg_indexes WHERE tablename = $1 ORDER BY indexdef",
                &[&table],
            )
            .await
            .unwrap();
        // ANALYZE writes the column statistics (transactionally, unlike the activity stats).
        let analyzed: bool = client
            .query_one(
                "SELECT count(*) = 2 FROM pg_stats WHERE tablename = $1",
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        let definitions: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        (definitions, analyzed)
    });
    assert_eq!(definitions.len(), 2, "{definitions:?}");
    assert!(
        definitions[0].ends_with("USING btree (email, id)"),
        "{definitions:?}"
    );
    assert!(
        definitions[1].ends_with("USING btree (id)"),
        "{definitions:?}"
    );
    assert!(analyzed, "the table was not analyzed");
}
