//! The log reader over what the real `AuditLog` wrote: the tables and their partition columns,
//! filters (and the objects they skip), payloads of every shape, the output formats, an empty
//! store, bad SQL and a corrupt object, and `tail`.

use super::{config, store};
use apinode_audit::{
    AuditLog, AuditRecord, Durability, Error, LogReader, QueryOutput, Stream, open_existing_store,
};
use chrono::{TimeZone, Utc};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// 60 queries: `churn` (ids 0, 2, ...) and `fraud` (1, 3, ...), hours 7, 8, 9 by `id % 3`,
/// with payloads that disagree in shape from record to record; one auth failure; no admin.
async fn write_logs(root: &Path, spool: &Path) {
    // One object per stream, service and hour (sealed at close), so the order is known.
    let mut config = config(spool);
    config.segment_max_age = Duration::from_secs(3600);
    let log = AuditLog::open(config, store(root)).await.unwrap();
    for id in 0..60 {
        let service = if id % 2 == 0 { "churn" } else { "fraud" };
        let hour = 7 + (id % 3) as u32;
        let time = Utc
            .with_ymd_and_hms(2026, 12, 5, hour, 15, id as u32)
            .unwrap();
        let mut r = AuditRecord::new(Stream::Queries, time, format!("req-{id}"), service, 200);
        r.endpoint = Some("score".into());
        r.endpoint_kind = Some("prediction".into());
        r.generation = Some("v1".into());
        let timing = [("total", 100 + id as u64), ("prediction", id as u64)];
        r.timing = &timing;
        match id % 4 {
            0 => {
                r.inputs = Some(
                    serde_json::value::to_raw_value(
                        &json!({"features": {"n": id, "city": "Paris"}}),
                    )
                    .unwrap()
                    .into(),
                );
                r.outputs = Some(
                    serde_json::value::to_raw_value(
                        &json!({"prediction": "yes", "probas": {"yes": 0.75}}),
                    )
                    .unwrap()
                    .into(),
                );
            }
            1 => {
                // A multi call's item, its outputs a number.
                r.item = Some(1);
                r.inputs = Some(
                    serde_json::value::to_raw_value(&json!({"features": {"n": id}}))
                        .unwrap()
                        .into(),
                );
                r.outputs = Some(serde_json::value::to_raw_value(&json!(id)).unwrap().into());
            }
            2 => {
                // Cut to the payload cap: the inputs are a string.
                r.inputs = Some(
                    serde_json::value::to_raw_value(&json!("{\"features\": {\"n\": 12"))
                        .unwrap()
                        .into(),
                );
                r.truncated = true;
                r.outputs = Some(
                    serde_json::value::to_raw_value(&json!([1, 2]))
                        .unwrap()
                        .into(),
                );
            }
            _ => {
                r.status = 400;
                r.error_type = Some("InvalidRequest".into());
                r.error_message = Some("no such feature".into());
            }
        }
        log.log(&r, Durability::Write).await.unwrap();
    }
    let time = Utc.with_ymd_and_hms(2026, 12, 6, 1, 0, 0).unwrap();
    let mut auth = AuditRecord::new(Stream::Auth, time, "req-auth", "churn", 401);
    auth.error_message = Some("invalid API key".into());
    log.log(&auth, Durability::Write).await.unwrap();
    assert!(log.close(Duration::from_secs(10)).await);
}

async fn reader(root: &Path) -> LogReader {
    LogReader::new(open_existing_store(root.to_str().unwrap(), &[]).unwrap()).unwrap()
}

/// The answer as JSON objects, one per row.
fn rows(output: &QueryOutput) -> Vec<Value> {
    let mut bytes = Vec::new();
    output.write_json_lines(&mut bytes).unwrap();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn query(reader: &LogReader, sql: &str) -> Vec<Value> {
    rows(
        &reader
            .query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}")),
    )
}

#[tokio::test]
async fn records_are_read_back_as_tables_with_their_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    write_logs(&root, &dir.path().join("spool")).await;
    let reader = reader(&root).await;

    assert_eq!(
        query(
            &reader,
            "SELECT service, count(*) AS n FROM queries GROUP BY service ORDER BY service"
        )
        .await,
        vec![
            json!({"service": "churn", "n": 30}),
            json!({"service": "fraud", "n": 30})
        ]
    );
    let one = query(&reader, "SELECT * FROM queries WHERE request_id = 'req-5'").await;
    assert_eq!(one.len(), 1, "{one:?}");
    let one = &one[0];
    assert_eq!(one["service"], "fraud");
    assert_eq!(
        (&one["date"], &one["hour"]),
        (&json!("2026-12-05"), &json!(9))
    );
    assert_eq!(one["time"], "2026-12-05T09:15:05Z");
    assert_eq!((&one["status"], &one["item"]), (&json!(200), &json!(1)));
    assert_eq!(one["inputs"], json!({"features": {"n": 5}}));
    assert_eq!(one["outputs"], json!(5));
    assert_eq!(one["timing"], json!({"prediction": 5, "total": 105}));
    assert_eq!(one["truncated"], false);
    assert_eq!(one["generation"], "v1");

    // Partition columns and record columns in one filter.
    assert_eq!(
        query(
            &reader,
            "SELECT count(*) AS n FROM queries WHERE service = 'churn' AND hour = 8 \
             AND date = '2026-12-05' AND status = 200"
        )
        .await,
        // churn ids with id % 3 == 1: 4, 10, 16, ..., 58 (10 of them), minus the id % 4 == 3.
        vec![json!({"n": 10 - (4..60).step_by(6).filter(|i| i % 4 == 3).count()})]
    );
    assert_eq!(
        query(
            &reader,
            "SELECT count(*) AS n FROM queries WHERE time >= '2026-12-05T09:00:00Z'"
        )
        .await,
        vec![json!({"n": 20})]
    );
    // Payloads of every shape: objects, a cut string, numbers, arrays.
    assert_eq!(
        query(
            &reader,
            "SELECT request_id, json_get(inputs, '/features/city') AS city FROM queries \
             WHERE CAST(json_get(inputs, '/features/n') AS BIGINT) < 9 ORDER BY request_id"
        )
        .await,
        vec![
            json!({"request_id": "req-0", "city": "Paris"}),
            json!({"request_id": "req-1"}),
            json!({"request_id": "req-4", "city": "Paris"}),
            json!({"request_id": "req-5"}),
            json!({"request_id": "req-8", "city": "Paris"}),
        ]
    );
    assert_eq!(
        query(
            &reader,
            "SELECT count(*) AS n, sum(timing.total) AS total FROM queries \
             WHERE truncated"
        )
        .await,
        vec![json!({"n": 15, "total": (2..60).step_by(4).map(|i| 100 + i).sum::<i64>()})]
    );
    assert_eq!(
        query(
            &reader,
            "SELECT error_type, count(*) AS n FROM queries WHERE error_type IS NOT NULL \
             GROUP BY error_type"
        )
        .await,
        vec![json!({"error_type": "InvalidRequest", "n": 15})]
    );
    // The other streams: the record's service, the date and hour of the folder.
    assert_eq!(
        query(&reader, "SELECT service, status, date, hour FROM auth").await,
        vec![json!({"service": "churn", "status": 401, "date": "2026-12-06", "hour": 1})]
    );
    assert_eq!(
        query(&reader, "SELECT count(*) AS n FROM admin").await,
        vec![json!({"n": 0})]
    );
    assert_eq!(
        query(&reader, "SELECT count(*) AS n FROM queries LIMIT 1").await,
        vec![json!({"n": 60})]
    );
    // A service or a day with no folder: nothing, not an error.
    assert_eq!(
        query(
            &reader,
            "SELECT count(*) AS n FROM queries WHERE service = 'nope' AND date = '2026-12-05'"
        )
        .await,
        vec![json!({"n": 0})]
    );
}

#[tokio::test]
async fn an_empty_store_is_empty_tables() {
    let dir = tempfile::tempdir().unwrap();
    let reader = reader(dir.path()).await;
    assert_eq!(
        query(&reader, "SELECT count(*) AS n FROM queries").await,
        vec![json!({"n": 0})]
    );
    let all = reader.query("SELECT * FROM queries").await.unwrap();
    assert_eq!(all.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    assert_eq!(all.schema.fields().len(), 20);
    let table = all.to_table().unwrap();
    assert!(
        table.contains("request_id") && table.contains("hour"),
        "{table}"
    );
    let mut csv = Vec::new();
    all.write_csv(&mut csv).unwrap();
    assert!(
        String::from_utf8(csv)
            .unwrap()
            .starts_with("time,request_id,item,service")
    );
    assert!(
        reader
            .tail(Stream::Queries, None, 10, None)
            .await
            .unwrap()
            .is_empty()
    );

    // A directory that is not there is more likely a wrong path than an empty log.
    let missing = dir.path().join("nowhere");
    match open_existing_store(missing.to_str().unwrap(), &[]) {
        Err(Error::Store { url, message }) => {
            assert!(url.ends_with("nowhere") && message.contains("no such directory"));
        }
        other => panic!("{other:?}"),
    }
    assert!(!missing.exists());
}

#[tokio::test]
async fn bad_sql_is_an_invalid_query() {
    let dir = tempfile::tempdir().unwrap();
    let reader = reader(dir.path()).await;
    for (sql, says) in [
        ("SELECT nope FROM queries", "nope"),
        ("SELECT * FROM requests", "requests"),
        ("SELEC 1", "SELEC"),
    ] {
        match reader.query(sql).await {
            Err(Error::InvalidQuery { message }) => assert!(message.contains(says), "{message}"),
            other => panic!("{sql}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_corrupt_object_is_named_and_filters_skip_objects() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    write_logs(&root, &dir.path().join("spool")).await;
    let bad = root.join("service=other/date=2026-12-04/hour=03");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("n9-0000000000000001.jsonl"),
        "{\"request_id\": \"ok\", \"time\": \"2026-12-04T03:00:00Z\"}\nnot json\n",
    )
    .unwrap();
    // Files outside the layout are not the log's.
    std::fs::write(root.join("README.txt"), "not a log").unwrap();
    std::fs::write(root.join("service=churn/notes.jsonl"), "not a log").unwrap();
    let reader = reader(&root).await;
    match reader.query("SELECT count(*) FROM queries").await {
        Err(Error::CorruptLog { object, line, .. }) => {
            assert_eq!(
                object,
                "service=other/date=2026-12-04/hour=03/n9-0000000000000001.jsonl"
            );
            assert_eq!(line, 2);
        }
        other => panic!("{other:?}"),
    }
    // Filters on the partition columns never open that object.
    for filter in [
        "service = 'churn'",
        "service IN ('churn', 'fraud')",
        "date = '2026-12-05'",
        "hour > 5",
    ] {
        assert_eq!(
            query(
                &reader,
                &format!("SELECT count(*) AS n FROM queries WHERE {filter}")
            )
            .await,
            vec![json!({"n": if filter.starts_with("service = ") { 30 } else { 60 }})],
            "{filter}"
        );
    }
}

#[tokio::test]
async fn tail_gives_the_last_records_newest_last() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    write_logs(&root, &dir.path().join("spool")).await;
    let reader = reader(&root).await;
    let ids = |lines: Vec<String>| -> Vec<String> {
        lines
            .iter()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["request_id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    // The newest objects are hour 9's: churn's (ids 2, 8, ..., 56), then fraud's (5, 11,
    // ..., 59), opened when their first record came.
    assert_eq!(
        ids(reader.tail(Stream::Queries, None, 3, None).await.unwrap()),
        ["req-47", "req-53", "req-59"]
    );
    assert_eq!(
        ids(reader.tail(Stream::Queries, None, 12, None).await.unwrap())[..3],
        ["req-50", "req-56", "req-5"]
    );
    assert_eq!(
        ids(reader
            .tail(Stream::Queries, Some("churn"), 2, None)
            .await
            .unwrap()),
        ["req-50", "req-56"]
    );
    assert_eq!(
        reader
            .tail(Stream::Queries, None, 1000, None)
            .await
            .unwrap()
            .len(),
        60
    );
    assert_eq!(
        ids(reader.tail(Stream::Auth, None, 5, None).await.unwrap()),
        ["req-auth"]
    );
    assert!(
        reader
            .tail(Stream::Queries, Some("nope"), 5, None)
            .await
            .unwrap()
            .is_empty()
    );

    let objects = reader.objects(Stream::Queries, None, None).await.unwrap();
    assert_eq!(objects.len(), 6, "{objects:?}");
    assert!(objects.windows(2).all(|w| w[0].hour <= w[1].hour));
    let since = chrono::NaiveDate::from_ymd_opt(2026, 12, 6).unwrap();
    assert!(
        reader
            .objects(Stream::Queries, None, Some(since))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        reader
            .objects(Stream::Auth, None, Some(since))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        ids(reader.last_lines(&objects, 2).await.unwrap()),
        ["req-53", "req-59"]
    );
    // Only what is dated before a day (what `logs tail --follow` prints before following).
    assert!(
        reader
            .tail(Stream::Auth, None, 5, Some(since))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(reader
            .tail(Stream::Queries, None, 3, Some(since))
            .await
            .unwrap()),
        ["req-47", "req-53", "req-59"]
    );
    let day = chrono::NaiveDate::from_ymd_opt(2026, 12, 5).unwrap();
    assert!(
        reader
            .tail(Stream::Queries, None, 3, Some(day))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn answers_are_written_as_a_table_json_lines_or_csv() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    write_logs(&root, &dir.path().join("spool")).await;
    let reader = reader(&root).await;
    let output = reader
        .query(
            "SELECT request_id, hour, inputs, outputs, timing FROM queries \
             WHERE request_id IN ('req-0', 'req-2') ORDER BY request_id",
        )
        .await
        .unwrap();
    let table = output.to_table().unwrap();
    assert!(table.contains("| req-0"), "{table}");
    assert!(
        table.contains(r#"{"features":{"city":"Paris","n":0}}"#),
        "{table}"
    );

    // JSON lines: the payloads as JSON, not as strings holding JSON.
    assert_eq!(
        rows(&output),
        vec![
            json!({"request_id": "req-0", "hour": 7,
                "inputs": {"features": {"n": 0, "city": "Paris"}},
                "outputs": {"prediction": "yes", "probas": {"yes": 0.75}},
                "timing": {"prediction": 0, "total": 100}}),
            json!({"request_id": "req-2", "hour": 9,
                "inputs": "{\"features\": {\"n\": 12", "outputs": [1, 2],
                "timing": {"prediction": 2, "total": 102}}),
        ]
    );

    let mut csv = Vec::new();
    output.write_csv(&mut csv).unwrap();
    let csv = String::from_utf8(csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "request_id,hour,inputs,outputs,timing");
    assert!(lines[1].starts_with("req-0,7,"), "{csv}");
    assert!(
        lines[1].ends_with("\"{prediction: 0, total: 100}\""),
        "{csv}"
    );
    assert_eq!(lines.len(), 3);
}
