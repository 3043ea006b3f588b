//! Behaviour of lookups: key types, composite keys, NULLs, the missing / no match / several
//! matches behaviours, renamed outputs and JSON typing, Parquet loading.

mod pg;
mod sql;

use apinode_lookup::{
    Error, IgnoreReason, KeyColumn, KeyValue, Lookup, LookupAction, LookupConfig, Match,
    OutputColumn, Table,
};
use arrow_array::{
    ArrayRef, BooleanArray, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use std::sync::Arc;

fn customers() -> Arc<Table> {
    let batch = RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(Int64Array::from(vec![
                Some(1),
                Some(2),
                Some(3),
                None,
                Some(5),
            ])) as ArrayRef,
        ),
        (
            "email",
            Arc::new(StringArray::from(vec![
                Some("a@x.io"),
                Some("b@x.io"),
                Some("c@x.io"),
                Some("d@x.io"),
                None,
            ])),
        ),
        (
            "country",
            Arc::new(StringArray::from(vec!["FR", "FR", "US", "US", "FR"])),
        ),
        (
            "city",
            Arc::new(StringArray::from(vec![
                "Paris", "Lyon", "Austin", "Austin", "Paris",
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
            ])),
        ),
        (
            "active",
            Arc::new(BooleanArray::from(vec![true, false, true, true, false])),
        ),
        (
            "since",
            Arc::new(Date32Array::from(vec![0, 1, 19_000, 19_001, -1])),
        ),
        (
            "seen",
            Arc::new(
                TimestampMicrosecondArray::from(vec![0, 1_000, 1_000_000, 2, 3])
                    .with_timezone("UTC"),
            ),
        ),
    ])
    .unwrap();
    Arc::new(Table::from_batch("customers", batch).unwrap())
}

fn data(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn row_json(lookup: &Lookup, m: Match) -> Value {
    match m {
        Match::Row(r) => lookup.row_to_value(Some(r)),
        Match::Nulls => lookup.row_to_value(None),
        Match::Ignored(reason) => json!({"ignored": reason.as_str()}),
    }
}

#[test]
fn single_integer_key_returns_every_column_with_json_types() {
    let lookup = Lookup::new(customers(), LookupConfig::on_keys(&["id"])).unwrap();
    let m = lookup.find(&data(json!({"id": 1}))).unwrap();
    assert_eq!(
        row_json(&lookup, m),
        json!({"id": 1, "email": "a@x.io", "country": "FR", "city": "Paris", "score": 1.5,
               "active": true, "since": "1970-01-01", "seen": "1970-01-01T00:00:00.000Z"})
    );
    // Integers sent as strings or integral floats still match.
    assert_eq!(
        lookup.find(&data(json!({"id": "2"}))).unwrap(),
        Match::Row(1)
    );
    assert_eq!(
        lookup.find(&data(json!({"id": 3.0}))).unwrap(),
        Match::Row(2)
    );
}

#[test]
fn nulls_are_written_as_null_and_null_keys_never_match() {
    let lookup = Lookup::new(customers(), LookupConfig::on_keys(&["id"])).unwrap();
    let m = lookup.find(&data(json!({"id": 3}))).unwrap();
    assert_eq!(row_json(&lookup, m)["score"], Value::Null);
    // Row 3 has a NULL id: nothing can reach it.
    assert_eq!(lookup.distinct_keys(), 4);
    let by_email = Lookup::new(customers(), LookupConfig::on_keys(&["email"])).unwrap();
    assert_eq!(by_email.distinct_keys(), 4);
    assert_eq!(
        by_email.find(&data(json!({"email": "d@x.io"}))).unwrap(),
        Match::Row(3)
    );
}

#[test]
fn composite_keys_with_renamed_inputs_and_outputs() {
    let config = LookupConfig {
        keys: vec![
            KeyColumn {
                column: "country".into(),
                input: "cc".into(),
            },
            KeyColumn {
                column: "city".into(),
                input: "town".into(),
            },
        ],
        columns: vec![
            OutputColumn {
                column: "email".into(),
                output: "mail".into(),
            },
            OutputColumn {
                column: "id".into(),
                output: "customer".into(),
            },
        ],
        on_missing_key: LookupAction::Fail,
        on_no_match: LookupAction::Ignore,
        on_multiple_matches: LookupAction::Ignore,
    };
    let lookup = Lookup::new(customers(), config).unwrap();
    let m = lookup
        .find(&data(json!({"cc": "FR", "town": "Lyon"})))
        .unwrap();
    assert_eq!(
        row_json(&lookup, m),
        json!({"mail": "b@x.io", "customer": 2})
    );
    // ("FR","Paris") is rows 0 and 4.
    assert_eq!(
        lookup
            .find(&data(json!({"cc": "FR", "town": "Paris"})))
            .unwrap(),
        Match::Ignored(IgnoreReason::MultipleMatches)
    );
    // The order of the parts matters.
    assert_eq!(
        lookup
            .find(&data(json!({"cc": "Lyon", "town": "FR"})))
            .unwrap(),
        Match::Ignored(IgnoreReason::NoMatch)
    );
}

fn with_actions(missing: LookupAction, none: LookupAction, several: LookupAction) -> Lookup {
    let mut config = LookupConfig::on_keys(&["country"]);
    config.columns = vec![OutputColumn {
        column: "id".into(),
        output: "id".into(),
    }];
    config.on_missing_key = missing;
    config.on_no_match = none;
    config.on_multiple_matches = several;
    Lookup::new(customers(), config).unwrap()
}

#[test]
fn missing_key_behaviours() {
    use LookupAction::*;
    let err = with_actions(Fail, Fail, Fail)
        .find(&data(json!({})))
        .unwrap_err();
    assert!(
        matches!(err, Error::MissingKey { ref input } if input == "country"),
        "{err}"
    );
    assert_eq!(
        with_actions(Ignore, Fail, Fail)
            .find(&data(json!({"country": null})))
            .unwrap(),
        Match::Ignored(IgnoreReason::MissingKey)
    );
    assert_eq!(
        with_actions(Null, Fail, Fail)
            .find(&data(json!({})))
            .unwrap(),
        Match::Nulls
    );
}

#[test]
fn no_match_behaviours() {
    use LookupAction::*;
    let err = with_actions(Fail, Fail, Fail)
        .find(&data(json!({"country": "DE"})))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no row of dataset `customers` matches country=\"DE\""
    );
    assert_eq!(
        with_actions(Fail, Ignore, Fail)
            .find(&data(json!({"country": "DE"})))
            .unwrap(),
        Match::Ignored(IgnoreReason::NoMatch)
    );
    let lookup = with_actions(Fail, Null, Fail);
    let m = lookup.find(&data(json!({"country": "DE"}))).unwrap();
    assert_eq!(row_json(&lookup, m), json!({"id": null}));
}

#[test]
fn several_matches_behaviours() {
    use LookupAction::*;
    let err = with_actions(Fail, Fail, Fail)
        .find(&data(json!({"country": "FR"})))
        .unwrap_err();
    assert!(
        matches!(err, Error::MultipleMatches { count: 3, .. }),
        "{err}"
    );
    assert_eq!(
        with_actions(Fail, Fail, Ignore)
            .find(&data(json!({"country": "US"})))
            .unwrap(),
        Match::Ignored(IgnoreReason::MultipleMatches)
    );
    assert_eq!(
        with_actions(Fail, Fail, Null)
            .find(&data(json!({"country": "US"})))
            .unwrap(),
        Match::Nulls
    );
    // `first` takes the first row in table order.
    assert_eq!(
        with_actions(Fail, Fail, First)
            .find(&data(json!({"country": "US"})))
            .unwrap(),
        Match::Row(2)
    );
}

#[test]
fn typed_keys_float_boolean_date_timestamp() {
    let by_score = Lookup::new(customers(), LookupConfig::on_keys(&["score"])).unwrap();
    assert_eq!(
        by_score.find(&data(json!({"score": 1.5}))).unwrap(),
        Match::Row(0)
    );
    assert_eq!(
        by_score.find(&data(json!({"score": "2"}))).unwrap(),
        Match::Row(1)
    );
    // -0.0 in the table equals 0.0 in the query; NaN never matches.
    assert_eq!(
        by_score.find(&data(json!({"score": 0}))).unwrap(),
        Match::Row(3)
    );
    assert_eq!(by_score.distinct_keys(), 3);

    let by_active = Lookup::new(customers(), {
        let mut c = LookupConfig::on_keys(&["active"]);
        c.on_multiple_matches = LookupAction::First;
        c
    })
    .unwrap();
    assert_eq!(
        by_active.find(&data(json!({"active": false}))).unwrap(),
        Match::Row(1)
    );

    let by_date = Lookup::new(customers(), LookupConfig::on_keys(&["since"])).unwrap();
    assert_eq!(
        by_date.find(&data(json!({"since": "1969-12-31"}))).unwrap(),
        Match::Row(4)
    );

    let by_seen = Lookup::new(customers(), LookupConfig::on_keys(&["seen"])).unwrap();
    assert_eq!(
        by_seen
            .find(&data(json!({"seen": "1970-01-01T00:00:01Z"})))
            .unwrap(),
        Match::Row(2)
    );
    assert_eq!(
        by_seen
            .find(&data(json!({"seen": "1970-01-01 00:00:00.001"})))
            .unwrap(),
        Match::Row(1)
    );
}

#[test]
fn typed_keys_through_find_key_agree_with_json_keys() {
    let composite = Lookup::new(customers(), LookupConfig::on_keys(&["country", "city"])).unwrap();
    assert_eq!(
        composite
            .find_key(&[KeyValue::Str("FR".into()), KeyValue::Str("Lyon".into())])
            .unwrap(),
        composite
            .find(&data(json!({"country": "FR", "city": "Lyon"})))
            .unwrap()
    );
    assert_eq!(
        composite
            .find_key(&[KeyValue::Str("FR".into()), KeyValue::Str("Paris".into())])
            .unwrap(),
        Match::Ignored(IgnoreReason::MultipleMatches)
    );
    let by_score = Lookup::new(customers(), LookupConfig::on_keys(&["score"])).unwrap();
    assert_eq!(
        by_score.find_key(&[KeyValue::Float(-0.0)]).unwrap(),
        Match::Row(3)
    );
    assert_eq!(
        by_score.find_key(&[KeyValue::Float(f64::NAN)]).unwrap(),
        Match::Ignored(IgnoreReason::NoMatch)
    );
    let by_date = Lookup::new(customers(), LookupConfig::on_keys(&["since"])).unwrap();
    assert_eq!(
        by_date.find_key(&[KeyValue::Int(-1)]).unwrap(),
        Match::Row(4)
    );
    let by_active = Lookup::new(customers(), LookupConfig::on_keys(&["active"])).unwrap();
    assert_eq!(
        by_active.find_key(&[KeyValue::Bool(false)]).unwrap(),
        Match::Ignored(IgnoreReason::MultipleMatches)
    );

    // The wrong number of values, or a value of the wrong type, is an error naming the key.
    let by_id = Lookup::new(customers(), {
        let mut c = LookupConfig::on_keys(&["id"]);
        c.on_no_match = LookupAction::Fail;
        c
    })
    .unwrap();
    let arity = by_id.find_key(&[]).unwrap_err();
    assert!(
        matches!(
            arity,
            Error::KeyArity {
                expected: 1,
                got: 0
            }
        ),
        "{arity}"
    );
    let wrong = by_id.find_key(&[KeyValue::Str("1".into())]).unwrap_err();
    assert!(
        wrong
            .to_string()
            .contains("lookup key `id` expects an integer"),
        "{wrong}"
    );
    let none = by_id.find_key(&[KeyValue::Int(42)]).unwrap_err();
    assert!(none.to_string().contains("id=Int(42)"), "{none}");
}

#[test]
fn invalid_key_values_and_configurations_are_named() {
    let lookup = Lookup::new(customers(), LookupConfig::on_keys(&["id"])).unwrap();
    let err = lookup.find(&data(json!({"id": [1]}))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "lookup key `id` expects an integer, got [1]"
    );

    let err = Lookup::new(customers(), LookupConfig::on_keys(&["nope"])).unwrap_err();
    assert!(err.to_string().contains("no column `nope`"), "{err}");

    let mut config = LookupConfig::on_keys(&["id"]);
    config.on_no_match = LookupAction::First;
    assert!(matches!(
        Lookup::new(customers(), config),
        Err(Error::Config(_))
    ));

    let mut config = LookupConfig::on_keys(&["id"]);
    config.columns = vec![
        OutputColumn {
            column: "id".into(),
            output: "x".into(),
        },
        OutputColumn {
            column: "email".into(),
            output: "x".into(),
        },
    ];
    assert!(matches!(
        Lookup::new(customers(), config),
        Err(Error::Config(_))
    ));
}

#[test]
fn loads_parquet_and_reports_memory() {
    use parquet::arrow::ArrowWriter;
    let table = customers();
    let mut buf = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buf, table.batch().schema(), None).unwrap();
    writer.write(table.batch()).unwrap();
    writer.close().unwrap();
    let loaded = Arc::new(Table::from_parquet("customers", Bytes::from(buf)).unwrap());
    assert_eq!(loaded.num_rows(), 5);
    let lookup = Lookup::new(loaded.clone(), LookupConfig::on_keys(&["email"])).unwrap();
    assert_eq!(
        lookup.find(&data(json!({"email": "c@x.io"}))).unwrap(),
        Match::Row(2)
    );
    assert!(lookup.index_bytes() > 0 && loaded.resident_bytes() > 0);

    let err = Table::from_parquet("broken", Bytes::from_static(b"not parquet")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot read dataset `broken` as Parquet"),
        "{err}"
    );
}

#[test]
fn output_strings_are_escaped() {
    let batch = RecordBatch::try_from_iter([
        ("k", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
        (
            "v",
            Arc::new(StringArray::from(vec![
                "quote \" backslash \\ newline \n é",
            ])),
        ),
    ])
    .unwrap();
    let lookup = Lookup::new(
        Arc::new(Table::from_batch("t", batch).unwrap()),
        LookupConfig::on_keys(&["k"]),
    )
    .unwrap();
    assert_eq!(
        lookup.row_to_value(Some(0))["v"],
        json!("quote \" backslash \\ newline \n é")
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // A batch answers exactly what one-by-one lookups answer, errors included.
        #[test]
        fn batch_agrees_with_single(
            keys in proptest::collection::vec(proptest::option::of(0i64..10), 1..100),
            probes in proptest::collection::vec(proptest::option::of(0i64..12), 1..50),
            several in prop_oneof![Just(LookupAction::First), Just(LookupAction::Ignore), Just(LookupAction::Fail)],
            missing in prop_oneof![Just(LookupAction::Null), Just(LookupAction::Ignore), Just(LookupAction::Fail)],
        ) {
            let batch = RecordBatch::try_from_iter([
                ("k", Arc::new(Int64Array::from(keys)) as ArrayRef),
            ]).unwrap();
            let mut config = LookupConfig::on_keys(&["k"]);
            config.on_multiple_matches = several;
            config.on_missing_key = missing;
            let lookup = Lookup::new(Arc::new(Table::from_batch("t", batch).unwrap()), config).unwrap();
            let records: Vec<Map<String, Value>> = probes
                .iter()
                .map(|p| data(p.map_or(json!({}), |k| json!({"k": k}))))
                .collect();
            let refs: Vec<&Map<String, Value>> = records.iter().collect();
            let single: Result<Vec<Match>, (usize, String)> = records
                .iter()
                .enumerate()
                .map(|(i, r)| lookup.find(r).map_err(|e| (i, e.to_string())))
                .collect();
            let batched = lookup.find_batch(&refs).map_err(|(i, e)| (i, e.to_string()));
            prop_assert_eq!(&batched, &single);
            // A typed key answers what the same key in JSON answers.
            for (probe, record) in probes.iter().zip(&records) {
                if let Some(k) = probe {
                    let typed = lookup.find_key(&[KeyValue::Int(*k)]).map_err(|e| e.to_string());
                    let json = lookup.find(record).map_err(|e| e.to_string());
                    prop_assert_eq!(typed.is_ok(), json.is_ok());
                    if let (Ok(typed), Ok(json)) = (typed, json) {
                        prop_assert_eq!(typed, json);
                    }
                }
            }
            // Written as a batch (gathered columns) or one by one, the answers are the same.
            if let Ok(matches) = batched {
                let mut together = Vec::new();
                let ranges = lookup.write_matches(&matches, &mut together);
                for (found, range) in matches.iter().zip(ranges) {
                    let alone = match found {
                        Match::Row(row) => Some(lookup.row_to_value(Some(*row))),
                        Match::Nulls => Some(lookup.row_to_value(None)),
                        Match::Ignored(_) => None,
                    };
                    let written = range.map(|r| serde_json::from_slice::<Value>(&together[r]).unwrap());
                    prop_assert_eq!(written, alone);
                }
            }
        }

        // The index agrees with a linear scan for any table of small keys.
        #[test]
        fn index_agrees_with_scan(keys in proptest::collection::vec(proptest::option::of(0i64..20), 0..200), probe in 0i64..25) {
            let batch = RecordBatch::try_from_iter([
                ("k", Arc::new(Int64Array::from(keys.clone())) as ArrayRef),
            ]).unwrap();
            let mut config = LookupConfig::on_keys(&["k"]);
            config.on_multiple_matches = LookupAction::First;
            let lookup = Lookup::new(Arc::new(Table::from_batch("t", batch).unwrap()), config).unwrap();
            let expected = keys.iter().position(|k| *k == Some(probe));
            let got = match lookup.find(&data(json!({"k": probe}))).unwrap() {
                Match::Row(r) => Some(r),
                Match::Ignored(IgnoreReason::NoMatch) => None,
                other => panic!("unexpected {other:?}"),
            };
            prop_assert_eq!(got, expected);
        }
    }
}

#[test]
fn enrichment_fills_and_overrides_features_in_order() {
    use apinode_lookup::{Enriched, Enrichment};
    // Step 1: by id, copy the email and the city (overriding a stale city).
    let mut by_id = LookupConfig::on_keys(&["id"]);
    by_id.columns = vec![
        OutputColumn {
            column: "email".into(),
            output: "email".into(),
        },
        OutputColumn {
            column: "city".into(),
            output: "city".into(),
        },
    ];
    // Step 2: by the email the first step filled, copy the score.
    let mut by_email = LookupConfig::on_keys(&["email"]);
    by_email.columns = vec![OutputColumn {
        column: "score".into(),
        output: "score".into(),
    }];
    by_email.on_no_match = LookupAction::Null;
    let enrichment = Enrichment::new(vec![
        Lookup::new(customers(), by_id).unwrap(),
        Lookup::new(customers(), by_email).unwrap(),
    ]);

    let mut features = data(json!({"id": 2, "city": "stale", "basket": 3}));
    assert_eq!(enrichment.apply(&mut features).unwrap(), Enriched::Applied);
    assert_eq!(
        Value::Object(features),
        json!({"id": 2, "city": "Lyon", "basket": 3, "email": "b@x.io", "score": 2.0})
    );

    // No match on the first step: ignored, with the reason.
    let mut features = data(json!({"id": 42}));
    assert_eq!(
        enrichment.apply(&mut features).unwrap(),
        Enriched::Ignored(IgnoreReason::NoMatch)
    );
    // A missing key fails and names the step.
    let mut features = data(json!({}));
    let (step, err) = enrichment.apply(&mut features).unwrap_err();
    assert_eq!(step, 0);
    assert!(matches!(err, Error::MissingKey { .. }));
}

mod serializer {
    //! The fast row writer against the straightforward one: build a `serde_json::Value` per
    //! value with chrono for dates, on random tables.
    use super::*;
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
    use proptest::prelude::*;

    fn straightforward(batch: &RecordBatch, row: usize) -> Value {
        let mut object = Map::new();
        for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
            let value = if column.is_null(row) {
                Value::Null
            } else {
                match column.data_type() {
                    arrow_schema::DataType::Utf8 => json!(column.as_string::<i32>().value(row)),
                    arrow_schema::DataType::Int64 => {
                        json!(column.as_primitive::<Int64Type>().value(row))
                    }
                    arrow_schema::DataType::Float64 => {
                        let f = column.as_primitive::<Float64Type>().value(row);
                        if f.is_finite() { json!(f) } else { Value::Null }
                    }
                    arrow_schema::DataType::Boolean => json!(column.as_boolean().value(row)),
                    arrow_schema::DataType::Date32 => {
                        let days = column.as_primitive::<Date32Type>().value(row);
                        let date = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()
                            + chrono::TimeDelta::try_days(days.into()).unwrap();
                        json!(date.format("%Y-%m-%d").to_string())
                    }
                    _ => {
                        let micros = column.as_primitive::<TimestampMicrosecondType>().value(row);
                        let t = chrono::DateTime::from_timestamp_micros(micros).unwrap();
                        let format = if micros % 1000 == 0 {
                            "%Y-%m-%dT%H:%M:%S%.3fZ"
                        } else {
                            "%Y-%m-%dT%H:%M:%S%.6fZ"
                        };
                        json!(t.format(format).to_string())
                    }
                }
            };
            object.insert(field.name().clone(), value);
        }
        Value::Object(object)
    }

    prop_compose! {
        fn table()(rows in proptest::collection::vec((
            proptest::option::of(any::<String>()),
            proptest::option::of(any::<i64>()),
            proptest::option::of(prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY), Just(-0.0)]),
            proptest::option::of(any::<bool>()),
            proptest::option::of(-719_528i32..2_932_896),
            proptest::option::of(-62_135_596_800_000_000i64..253_402_300_799_000_000),
        ), 1..40)) -> RecordBatch {
            let (s, i, f, b, d, t): (Vec<_>, Vec<_>, Vec<_>, Vec<_>, Vec<_>, Vec<_>) =
                rows.into_iter().fold(Default::default(), |mut acc, r| {
                    acc.0.push(r.0); acc.1.push(r.1); acc.2.push(r.2); acc.3.push(r.3); acc.4.push(r.4); acc.5.push(r.5);
                    acc
                });
            let n = i.len() as i64;
            RecordBatch::try_from_iter([
                ("row", Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef),
                ("s \"quoted\"", Arc::new(StringArray::from(s))),
                ("i", Arc::new(Int64Array::from(i))),
                ("f", Arc::new(Float64Array::from(f))),
                ("b", Arc::new(BooleanArray::from(b))),
                ("d", Arc::new(Date32Array::from(d))),
                ("t", Arc::new(TimestampMicrosecondArray::from(t).with_timezone("UTC"))),
            ]).unwrap()
        }
    }

    proptest! {
        #[test]
        fn fast_writer_equals_straightforward(batch in table()) {
            let table = Arc::new(Table::from_batch("t", batch.clone()).unwrap());
            let lookup = Lookup::new(table, LookupConfig::on_keys(&["row"])).unwrap();
            for row in 0..batch.num_rows() {
                let mut out = Vec::new();
                lookup.write_row(Some(row), &mut out);
                let fast: Value = serde_json::from_slice(&out).expect("valid JSON");
                prop_assert_eq!(&fast, &straightforward(&batch, row));
                prop_assert_eq!(lookup.row_to_value(Some(row)), fast);
            }
            // The batch writer (gathered columns beyond a few rows) writes the same objects.
            let matches: Vec<Match> = (0..batch.num_rows()).map(Match::Row).collect();
            let mut together = Vec::new();
            let ranges = lookup.write_matches(&matches, &mut together);
            for (row, range) in ranges.into_iter().enumerate() {
                let written: Value = serde_json::from_slice(&together[range.unwrap()]).unwrap();
                prop_assert_eq!(written, straightforward(&batch, row));
            }
        }
    }
}
