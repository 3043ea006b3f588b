//! Dataset conversion: CSV (inferred and explicit schemas, delimiters, headers, null values)
//! and Parquet input, and the errors that name the column and row.

use crate::common::*;
use crate::roundtrip::read_dataset;
use apinode_bundle::*;
use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date64Array, Decimal128Array, DictionaryArray,
    Float32Array, Int32Array, LargeStringArray, RecordBatch, TimestampNanosecondArray, UInt16Array,
    UInt64Array,
};
use parquet::arrow::ArrowWriter;
use std::sync::Arc;

fn lookup_service(datasets: &str, dataset: &str, key: &str) -> String {
    format!(
        r#"
        [service]
        id = "svc"
        {datasets}
        [[endpoints]]
        id = "lookup"
        kind = "dataset-lookup"
        lookup = {{ dataset = "{dataset}", keys = ["{key}"] }}
        "#
    )
}

fn columns_of(bundle: &Bundle, name: &str) -> Vec<(String, ColumnType)> {
    match &bundle.manifest().dataset(name).expect("dataset").source {
        DatasetSource::Bundled { columns, .. } => columns
            .iter()
            .map(|c| (c.name.clone(), c.column_type))
            .collect(),
        other => panic!("not bundled: {other:?}"),
    }
}

fn parquet_bytes(batch: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), None).expect("writer");
    writer.write(batch).expect("write");
    writer.close().expect("close");
    out
}

#[test]
fn csv_with_explicit_schema_semicolons_and_null_values() {
    let svc = Svc::new(&lookup_service(
        r#"
        [[datasets]]
        name = "orders"
        path = "orders.txt"
        format = "csv"
        csv = { delimiter = ";", null_values = ["NA", ""] }
        schema = [
            { name = "order_id", type = "bigint" },
            { name = "amount", type = "double" },
            { name = "paid", type = "bool" },
            { name = "day", type = "date" },
            { name = "at", type = "timestamp" },
            { name = "note", type = "string" },
        ]
        "#,
        "orders",
        "order_id",
    ));
    svc.file(
        "orders.txt",
        "order_id;ignored;amount;paid;day;at;note\n\
         10;x;12.5;true;2024-05-01;2024-05-01T12:00:00Z;first\n\
         11;y;NA;no;NA;2024-05-02 08:00:00;\n\
         12;z;3;1;2024-05-03;NA;NA\n",
    );
    let bundle = svc.build_and_open();
    assert_eq!(
        columns_of(&bundle, "orders"),
        vec![
            ("order_id".into(), ColumnType::Int64),
            ("amount".into(), ColumnType::Float64),
            ("paid".into(), ColumnType::Boolean),
            ("day".into(), ColumnType::Date),
            ("at".into(), ColumnType::Timestamp),
            ("note".into(), ColumnType::String),
        ],
        "schema order, unlisted column dropped"
    );
    let batch = read_dataset(&bundle, "orders");
    assert_eq!(batch.num_columns(), 6);
    assert_eq!(
        batch
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec(),
        vec![10, 11, 12]
    );
    let amount = batch.column(1).as_primitive::<Float64Type>();
    assert!(amount.is_null(1), "NA is null");
    assert_eq!(amount.value(2), 3.0);
    let paid = batch.column(2).as_boolean();
    assert_eq!(
        (paid.value(0), paid.value(1), paid.value(2)),
        (true, false, true)
    );
    let day = batch.column(3).as_primitive::<Date32Type>();
    assert!(day.is_null(1));
    assert_eq!(day.value(0), 19844, "2024-05-01 is day 19844");
    let at = batch.column(4).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(at.value(0), 1_714_564_800_000_000);
    assert!(at.is_null(2));
    let note = batch.column(5).as_string::<i32>();
    assert_eq!(note.value(0), "first");
    assert!(note.is_null(1), "the empty cell is a listed null value");
    assert!(note.is_null(2));
}

#[test]
fn null_values_replace_the_empty_default() {
    let svc = Svc::new(&lookup_service(
        r#"
        [[datasets]]
        name = "d"
        path = "d.csv"
        csv = { null_values = ["-"] }
        "#,
        "d",
        "k",
    ));
    svc.file("d.csv", "k,v\na,-\nb,\n");
    let bundle = svc.build_and_open();
    let batch = read_dataset(&bundle, "d");
    let v = batch.column(1).as_string::<i32>();
    assert!(v.is_null(0), "`-` is null");
    assert!(
        v.is_valid(1),
        "the empty cell is an empty string when not listed"
    );
    assert_eq!(v.value(1), "");
}

#[test]
fn csv_without_header_gets_positional_names() {
    let svc = Svc::new(
        r#"
        [service]
        id = "svc"
        [[datasets]]
        name = "plain"
        path = "plain.csv"
        csv = { header = false }
        [[datasets]]
        name = "named"
        path = "plain.csv"
        csv = { header = false }
        schema = [{ name = "code", type = "string" }, { name = "value", type = "int64" }]
        [[endpoints]]
        id = "plain"
        kind = "dataset-lookup"
        lookup = { dataset = "plain", keys = ["column_1"], columns = [{ column = "column_2", output = "value" }] }
        [[endpoints]]
        id = "named"
        kind = "dataset-lookup"
        lookup = { dataset = "named", keys = ["code"] }
        "#,
    );
    svc.file("plain.csv", "a,1,x\nb,2,y\n");
    let bundle = svc.build_and_open();
    assert_eq!(
        columns_of(&bundle, "plain"),
        vec![
            ("column_1".into(), ColumnType::String),
            ("column_2".into(), ColumnType::Int64),
            ("column_3".into(), ColumnType::String),
        ]
    );
    assert_eq!(
        columns_of(&bundle, "named"),
        vec![
            ("code".into(), ColumnType::String),
            ("value".into(), ColumnType::Int64)
        ]
    );
    let batch = read_dataset(&bundle, "named");
    assert_eq!(batch.num_rows(), 2, "no row is taken as a header");
    assert_eq!(batch.column(0).as_string::<i32>().value(0), "a");
}

#[test]
fn tsv_files_default_to_tabs_and_bom_is_skipped() {
    let svc = Svc::new(&lookup_service(
        r#"
        [[datasets]]
        name = "t"
        path = "data.TSV"
        "#,
        "t",
        "id",
    ));
    svc.file("data.TSV", "\u{feff}id\tname\n1\tone, with a comma\n");
    let bundle = svc.build_and_open();
    assert_eq!(
        columns_of(&bundle, "t"),
        vec![
            ("id".into(), ColumnType::Int64),
            ("name".into(), ColumnType::String)
        ]
    );
    let batch = read_dataset(&bundle, "t");
    assert_eq!(
        batch.column(1).as_string::<i32>().value(0),
        "one, with a comma"
    );
}

#[test]
fn parquet_input_is_normalized() {
    let dict: DictionaryArray<arrow_array::types::Int32Type> =
        vec!["red", "green", "red"].into_iter().collect();
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("id", Arc::new(Int32Array::from(vec![1, 2, 3]))),
        (
            "small",
            Arc::new(UInt16Array::from(vec![Some(7), None, Some(9)])),
        ),
        ("ratio", Arc::new(Float32Array::from(vec![0.5, 1.5, 2.5]))),
        (
            "name",
            Arc::new(LargeStringArray::from(vec!["a", "b", "c"])),
        ),
        (
            "at",
            Arc::new(
                TimestampNanosecondArray::from(vec![1_000_000_123_456_789, 0, 5])
                    .with_timezone("+02:00"),
            ),
        ),
        (
            "day",
            Arc::new(Date64Array::from(vec![86_400_000, 0, 172_800_000])),
        ),
        (
            "price",
            Arc::new(
                Decimal128Array::from(vec![12345, 100, 0])
                    .with_precision_and_scale(10, 2)
                    .unwrap(),
            ),
        ),
        (
            "flag",
            Arc::new(BooleanArray::from(vec![true, false, true])),
        ),
        ("color", Arc::new(dict)),
    ];
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let svc = Svc::new(&lookup_service(
        r#"
        [[datasets]]
        name = "p"
        path = "in/p.parquet"
        [[datasets]]
        name = "picked"
        path = "in/p.parquet"
        schema = [{ name = "name", type = "string" }, { name = "id", type = "string" }, { name = "small", type = "float64" }]
        "#,
        "p",
        "id",
    ));
    svc.file("in/p.parquet", parquet_bytes(&batch));
    let bundle = svc.build_and_open();
    assert_eq!(
        columns_of(&bundle, "p"),
        vec![
            ("id".into(), ColumnType::Int64),
            ("small".into(), ColumnType::Int64),
            ("ratio".into(), ColumnType::Float64),
            ("name".into(), ColumnType::String),
            ("at".into(), ColumnType::Timestamp),
            ("day".into(), ColumnType::Date),
            ("price".into(), ColumnType::Float64),
            ("flag".into(), ColumnType::Boolean),
            ("color".into(), ColumnType::String),
        ]
    );
    let out = read_dataset(&bundle, "p");
    for (i, column) in columns_of(&bundle, "p").iter().enumerate() {
        assert_eq!(
            out.column(i).data_type(),
            &arrow_type(column.1),
            "{}",
            column.0
        );
    }
    assert!(out.column(1).is_null(1));
    let at = out.column(4).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(
        at.value(0),
        1_000_000_123_456,
        "nanoseconds truncated to microseconds"
    );
    assert_eq!(out.column(5).as_primitive::<Date32Type>().value(0), 1);
    assert_eq!(out.column(6).as_primitive::<Float64Type>().value(0), 123.45);
    assert_eq!(out.column(8).as_string::<i32>().value(2), "red");

    assert_eq!(
        columns_of(&bundle, "picked"),
        vec![
            ("name".into(), ColumnType::String),
            ("id".into(), ColumnType::String),
            ("small".into(), ColumnType::Float64),
        ]
    );
    let picked = read_dataset(&bundle, "picked");
    assert_eq!(picked.column(1).as_string::<i32>().value(2), "3");
}

#[test]
fn csv_value_failing_the_schema_names_column_and_row() {
    let svc = Svc::new(&lookup_service(
        r#"
        [[datasets]]
        name = "people"
        path = "people.csv"
        schema = [{ name = "id", type = "int64" }, { name = "age", type = "int64" }]
        "#,
        "people",
        "id",
    ));
    let mut csv = String::from("id,age\n");
    for i in 1..=20 {
        let age = if i == 17 {
            "abc".to_string()
        } else {
            (20 + i).to_string()
        };
        csv.push_str(&format!("{i},{age}\n"));
    }
    svc.file("people.csv", csv);
    let err = build_err(&svc);
    match &err {
        Error::Dataset {
            dataset,
            file,
            message,
        } => {
            assert_eq!(dataset, "people");
            assert_eq!(file, "people.csv");
            assert_eq!(message, "column `age` row 17: cannot parse `abc` as int64");
        }
        other => panic!("expected Dataset, got {other:?}"),
    }
    let shown = err.to_string();
    assert!(shown.contains("people") && shown.contains("`age`") && shown.contains("row 17"));
}

#[test]
fn failing_row_is_counted_across_batches() {
    let svc = Svc::new(&lookup_service(
        r#"
        [[datasets]]
        name = "big"
        path = "big.csv"
        schema = [{ name = "id", type = "int64" }, { name = "day", type = "date" }]
        "#,
        "big",
        "id",
    ));
    let mut csv = String::from("id,day\n");
    for i in 1..=20_000 {
        let day = if i == 19_999 {
            "2024-13-45"
        } else {
            "2024-01-01"
        };
        csv.push_str(&format!("{i},{day}\n"));
    }
    svc.file("big.csv", csv);
    let err = build_err(&svc);
    assert!(matches!(err, Error::Dataset { .. }), "{err:?}");
    assert!(err.to_string().contains("column `day` row 19999"), "{err}");
}

#[test]
fn schema_column_missing_from_the_file_is_named() {
    let svc = Svc::new(&lookup_service(
        r#"
        [[datasets]]
        name = "d"
        path = "d.csv"
        schema = [{ name = "id", type = "int64" }, { name = "zip", type = "string" }]
        "#,
        "d",
        "id",
    ));
    svc.file("d.csv", "id,city\n1,Paris\n");
    let err = build_err(&svc);
    assert!(matches!(err, Error::Dataset { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(
        shown.contains("`zip`") && shown.contains("`city`"),
        "{shown}"
    );
}

#[test]
fn unsupported_parquet_type_names_the_column() {
    let batch = RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int32Array::from(vec![1])) as ArrayRef),
        (
            "blob",
            Arc::new(BinaryArray::from(vec![&b"\x00\x01"[..]])) as ArrayRef,
        ),
    ])
    .unwrap();
    let svc = Svc::new(&lookup_service(
        "[[datasets]]\nname = \"p\"\npath = \"p.parquet\"\n",
        "p",
        "id",
    ));
    svc.file("p.parquet", parquet_bytes(&batch));
    let err = build_err(&svc);
    match &err {
        Error::Dataset { message, .. } => {
            assert!(
                message.contains("`blob`") && message.contains("Binary"),
                "{message}"
            )
        }
        other => panic!("expected Dataset, got {other:?}"),
    }
}

#[test]
fn unsigned_overflow_is_an_error_not_a_null() {
    let batch = RecordBatch::try_from_iter(vec![(
        "id",
        Arc::new(UInt64Array::from(vec![1, u64::MAX])) as ArrayRef,
    )])
    .unwrap();
    let svc = Svc::new(&lookup_service(
        "[[datasets]]\nname = \"p\"\npath = \"p.parquet\"\n",
        "p",
        "id",
    ));
    svc.file("p.parquet", parquet_bytes(&batch));
    let err = build_err(&svc);
    assert!(matches!(err, Error::Dataset { .. }), "{err:?}");
    assert!(err.to_string().contains("column `id` row 2"), "{err}");
}

#[test]
fn not_a_parquet_file_is_a_dataset_error() {
    let svc = Svc::new(&lookup_service(
        "[[datasets]]\nname = \"p\"\npath = \"p.parquet\"\n",
        "p",
        "id",
    ));
    svc.file("p.parquet", "id\n1\n");
    let err = build_err(&svc);
    match &err {
        Error::Dataset { dataset, file, .. } => {
            assert_eq!((dataset.as_str(), file.as_str()), ("p", "p.parquet"))
        }
        other => panic!("expected Dataset, got {other:?}"),
    }
}

#[test]
fn ragged_csv_is_a_dataset_error() {
    let svc = Svc::new(&lookup_service(
        "[[datasets]]\nname = \"d\"\npath = \"d.csv\"\n",
        "d",
        "a",
    ));
    svc.file("d.csv", "a,b\n1,2\n3,4,5\n");
    let err = build_err(&svc);
    assert!(matches!(err, Error::Dataset { .. }), "{err:?}");
    assert!(err.to_string().contains("`d`"), "{err}");
}

#[test]
fn duplicate_header_names_are_refused() {
    let svc = Svc::new(&lookup_service(
        "[[datasets]]\nname = \"d\"\npath = \"d.csv\"\n",
        "d",
        "a",
    ));
    svc.file("d.csv", "a,b,a\n1,2,3\n");
    let err = build_err(&svc);
    assert!(matches!(err, Error::Dataset { .. }), "{err:?}");
    assert!(
        err.to_string().contains("column `a` more than once"),
        "{err}"
    );
}

#[test]
fn empty_data_and_all_null_columns() {
    let svc = Svc::new(
        r#"
        [service]
        id = "svc"
        [[datasets]]
        name = "empty"
        path = "empty.csv"
        [[datasets]]
        name = "nulls"
        path = "nulls.csv"
        [[endpoints]]
        id = "e"
        kind = "dataset-lookup"
        lookup = { dataset = "nulls", keys = ["k"] }
        "#,
    );
    svc.file("empty.csv", "k,v\n")
        .file("nulls.csv", "k,v\na,\nb,\n");
    let bundle = svc.build_and_open();
    match &bundle.manifest().dataset("empty").unwrap().source {
        DatasetSource::Bundled { rows, .. } => assert_eq!(*rows, 0),
        other => panic!("{other:?}"),
    }
    assert!(!bundle.dataset_parquet("empty").unwrap().is_empty());
    assert_eq!(
        columns_of(&bundle, "nulls")[1],
        ("v".into(), ColumnType::String)
    );
    assert_eq!(read_dataset(&bundle, "nulls").column(1).null_count(), 2);
}

#[test]
fn one_million_rows() {
    let svc = Svc::new(&lookup_service(
        "[[datasets]]\nname = \"big\"\npath = \"big.csv\"\n",
        "big",
        "id",
    ));
    let mut csv = String::with_capacity(16 << 20);
    csv.push_str("id,group\n");
    for i in 0..1_000_000u32 {
        csv.push_str(&format!("{i},{}\n", i % 97));
    }
    svc.file("big.csv", csv);
    let bundle = svc.build_and_open();
    match &bundle.manifest().dataset("big").unwrap().source {
        DatasetSource::Bundled { rows, .. } => assert_eq!(*rows, 1_000_000),
        other => panic!("{other:?}"),
    }
    let bytes = bundle.dataset_parquet("big").unwrap().clone();
    let meta = parquet::file::reader::SerializedFileReader::new(bytes).unwrap();
    use parquet::file::reader::FileReader;
    assert_eq!(meta.metadata().file_metadata().num_rows(), 1_000_000);
    assert!(
        meta.metadata().num_row_groups() > 1,
        "row groups are bounded"
    );
}

#[test]
fn inferred_timestamps_with_zones_are_utc_instants() {
    let svc = Svc::new(&lookup_service(
        "[[datasets]]\nname = \"t\"\npath = \"t.csv\"\n",
        "t",
        "id",
    ));
    svc.file(
        "t.csv",
        "id,at\n1,2024-01-01T00:00:00Z\n2,2024-01-01T02:00:00+02:00\n3,2024-01-01 00:00:00\n",
    );
    let bundle = svc.build_and_open();
    assert_eq!(
        columns_of(&bundle, "t")[1],
        ("at".into(), ColumnType::Timestamp)
    );
    let batch = read_dataset(&bundle, "t");
    let at = batch.column(1).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(at.values().to_vec(), vec![1_704_067_200_000_000; 3]);
}
