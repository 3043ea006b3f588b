//! Referenced data on PostgreSQL: named connections ([`PgConnection`], a pool each), lookups
//! on a table that stays in the database ([`ReferencedLookup`]), and loading a dataset into a
//! table ([`TableLoader`], what `apinode data sync` uses).
//!
//! Every statement runs on one small tokio runtime of this crate's own (the *executor*,
//! started on first use), whatever runtime the caller is on: a query's future only waits for
//! it, and the pools' connection tasks live there, so loading a generation works from a
//! blocking thread and a query from any runtime.
//!
//! Types: a column's PostgreSQL type maps to one of the six lookup types (integers to int64,
//! `real`, `double precision` and `numeric` to float64, the text types to string, `boolean`,
//! `date`, `timestamp` and `timestamptz` to timestamp, read as UTC); the values are fetched
//! into Arrow arrays of those types and written by the same JSON writers as bundled tables,
//! so a referenced lookup answers byte for byte what a bundled one does on the same data.
//! [`pg_type_name`] is the reverse mapping, used to create tables.

use crate::error::{Error, Result};
use crate::exec::PG;
use crate::json::{Cell, write_cell};
use crate::key::KeyType;
use crate::lookup::{
    IgnoreReason, Key, LookupAction, LookupConfig, Match, OutputColumn, Outputs, check_config,
    decide, describe_keys, key_of, output_columns,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::{Map, Value};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{NoTls, Row};

/// The connection name bundles use when they name none.
pub const DEFAULT_CONNECTION: &str = "api-node-referenced-data";

/// How to reach a PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// `postgres://user:password@host:port/database?...` (or the key=value form).
    pub url: String,
    /// Connections kept open at most.
    pub pool_size: usize,
    /// Longest a statement may run (the server cancels it); also how long a query waits for
    /// a free connection or for a new one to open.
    pub statement_timeout: Duration,
}

impl PgConfig {
    /// A pool of 8 connections, statements limited to 5 seconds.
    pub fn new(url: impl Into<String>) -> PgConfig {
        PgConfig {
            url: url.into(),
            pool_size: 8,
            statement_timeout: Duration::from_secs(5),
        }
    }
}

/// A named PostgreSQL connection: a pool of sessions opened on demand. A session that the
/// server closed (restart, `pg_terminate_backend`) is replaced on its next use, so queries
/// work again as soon as the database does, without restarting anything.
#[derive(Debug)]
pub struct PgConnection {
    name: String,
    pool: Pool,
    timeout: Duration,
}

impl PgConnection {
    /// Parses the URL and prepares the pool; opens nothing yet. Sessions are named
    /// `apinode` (`application_name`) unless the URL says otherwise, run in UTC and with the
    /// configured statement timeout.
    pub fn new(name: &str, config: &PgConfig) -> Result<PgConnection> {
        let mut pg: tokio_postgres::Config = config.url.parse().map_err(|e| {
            Error::Config(format!("connection `{name}`: invalid PostgreSQL URL: {e}"))
        })?;
        if pg.get_application_name().is_none() {
            pg.application_name("apinode");
        }
        let ms = config.statement_timeout.as_millis().max(1);
        let options = format!("-c statement_timeout={ms} -c TimeZone=UTC");
        let options = match pg.get_options() {
            Some(given) if !given.is_empty() => format!("{given} {options}"),
            _ => options,
        };
        pg.options(options);
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(config.statement_timeout);
        }
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let timeout = Some(config.statement_timeout);
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(timeout)
            .create_timeout(timeout)
            .recycle_timeout(timeout)
            .build()
            .map_err(|e| Error::Config(format!("connection `{name}`: {e}")))?;
        Ok(PgConnection {
            name: name.to_owned(),
            pool,
            timeout: config.statement_timeout,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens a session (or takes an idle one) and runs `SELECT 1`; blocks.
    pub fn check(self: &Arc<Self>) -> Result<()> {
        let connection = self.clone();
        PG.block_on(async move {
            let client = connection.client().await?;
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| connection.error(e))?;
            Ok(())
        })?
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(|e| {
            let message = match e {
                deadpool_postgres::PoolError::Backend(e) => describe(&e),
                deadpool_postgres::PoolError::Timeout(_) => format!(
                    "no session could be opened or freed within {} ms",
                    self.timeout.as_millis()
                ),
                other => other.to_string(),
            };
            Error::Unavailable {
                connection: self.name.clone(),
                message,
            }
        })
    }

    /// An error of a statement: the database being unreachable (or shutting down, or the
    /// statement timing out) is `Unavailable`; an error the database answered is `Database`.
    pub(crate) fn error(&self, e: tokio_postgres::Error) -> Error {
        let message = describe(&e);
        let class = e.code().map(|c| &c.code()[..2]);
        match class {
            // Connection exceptions, insufficient resources, operator intervention (shutdown,
            // terminated session, statement timeout): the database, not the query.
            None | Some("08" | "53" | "57") => Error::Unavailable {
                connection: self.name.clone(),
                message,
            },
            Some(_) => Error::Database {
                connection: self.name.clone(),
                message,
            },
        }
    }
}

/// A tokio-postgres error with the server's message, detail and SQLSTATE when there are.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str(": ");
            text.push_str(detail);
        }
        return text;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The PostgreSQL type a lookup type is written and bound as.
pub(crate) fn pg_type(key_type: KeyType) -> Type {
    match key_type {
        KeyType::String => Type::TEXT,
        KeyType::Int64 => Type::INT8,
        KeyType::Float64 => Type::FLOAT8,
        KeyType::Boolean => Type::BOOL,
        KeyType::Date => Type::DATE,
        KeyType::Timestamp => Type::TIMESTAMPTZ,
    }
}

/// `schema.table` or `table`, each part quoted as an identifier.
pub fn quote_table(table: &str) -> String {
    table
        .split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The PostgreSQL type a column of a lookup type is created with (`apinode data sync`).
pub fn pg_type_name(key_type: KeyType) -> &'static str {
    match key_type {
        KeyType::String => "text",
        KeyType::Int64 => "bigint",
        KeyType::Float64 => "double precision",
        KeyType::Boolean => "boolean",
        KeyType::Date => "date",
        KeyType::Timestamp => "timestamptz",
    }
}

/// The lookup type a PostgreSQL column is read as, if any.
fn key_type_of(pg: &Type) -> Option<KeyType> {
    Some(match *pg {
        Type::INT2 | Type::INT4 | Type::INT8 => KeyType::Int64,
        Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => KeyType::Float64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => KeyType::String,
        Type::BOOL => KeyType::Boolean,
        Type::DATE => KeyType::Date,
        Type::TIMESTAMP | Type::TIMESTAMPTZ => KeyType::Timestamp,
        _ => return None,
    })
}

/// The cast that reads a column as its lookup type, and the array type of a key parameter.
fn canonical(key_type: KeyType) -> &'static str {
    match key_type {
        KeyType::String => "text",
        KeyType::Int64 => "int8",
        KeyType::Float64 => "float8",
        KeyType::Boolean => "bool",
        KeyType::Date => "date",
        KeyType::Timestamp => "timestamptz",
    }
}

const EPOCH: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");

/// A lookup on a table in PostgreSQL, with [`crate::Lookup`]'s configuration, behaviours and
/// JSON. A query is one round trip whatever the number of records: the keys travel as one
/// array per key column, joined to the table through `unnest(...) WITH ORDINALITY`, and the
/// rows come back in record order, then (when `first` takes one of several) in table order
/// (`ctid`: the order a table was loaded in). A single record's keys travel as scalars instead, in a
/// plain `WHERE` the database answers from an index at a third of the join's cost.
#[derive(Debug)]
pub struct ReferencedLookup {
    connection: Arc<PgConnection>,
    dataset: String,
    table: String,
    config: LookupConfig,
    /// Read from the database on first need (at load when it answers, else on the first query).
    shape: tokio::sync::OnceCell<Arc<Shape>>,
}

/// What a referenced lookup learnt of its table: the key and output columns' types, and its
/// statement.
#[derive(Debug)]
struct Shape {
    keys: Vec<(String, KeyType)>,
    outputs: Vec<(OutputColumn, KeyType)>,
    /// The output columns' JSON writers (names escaped once), put over each answer's rows.
    writers: Outputs,
    /// For any number of records: the keys as arrays, joined through `unnest`.
    sql: String,
    /// For one record to look up (a `lookup`, or one record to enrich): the keys as scalar
    /// parameters, a plain index scan. The same rows in the same order, with `i` = 1; about
    /// three times cheaper for the database than the `unnest` join of one element.
    single_sql: String,
}

/// Where a record's answer is: its `data` object in the buffer, or the reason it is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Data(Range<usize>),
    Ignored(IgnoreReason),
}

/// A lookup's answers: one per record, `data` objects written one after the other in
/// `buffer`.
#[derive(Debug, Default)]
pub struct Written {
    pub buffer: Vec<u8>,
    pub answers: Vec<Answer>,
}

/// A lookup error: `item` is the record it concerns (none for a database error).
pub type ItemError = (Option<usize>, Error);

impl ReferencedLookup {
    /// A lookup of `dataset` (its name in errors) on `table` (`name` or `schema.name`)
    /// through `connection`. Checks the configuration; reads nothing yet.
    pub fn new(
        connection: Arc<PgConnection>,
        dataset: &str,
        table: &str,
        config: LookupConfig,
    ) -> Result<ReferencedLookup> {
        check_config(&config)?;
        Ok(ReferencedLookup {
            connection,
            dataset: dataset.to_owned(),
            table: table.to_owned(),
            config,
            shape: tokio::sync::OnceCell::new(),
        })
    }

    pub fn config(&self) -> &LookupConfig {
        &self.config
    }

    pub fn connection(&self) -> &Arc<PgConnection> {
        &self.connection
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Reads the table's columns and checks the configuration against them (blocks): an
    /// unknown column or an unsupported type is an error, as for a bundled table;
    /// `Unavailable` when the database cannot be reached (the lookup then reads them on its
    /// first query).
    pub fn resolve(self: &Arc<Self>) -> Result<()> {
        let lookup = self.clone();
        PG.block_on(async move { lookup.shape().await.map(|_| ()) })?
    }

    /// Names of the output columns, once resolved.
    pub fn output_names(&self) -> Option<Vec<&str>> {
        self.shape
            .get()
            .map(|s| s.outputs.iter().map(|(c, _)| c.output.as_str()).collect())
    }

    async fn shape(&self) -> Result<Arc<Shape>> {
        self.shape
            .get_or_try_init(|| async { self.read_shape().await.map(Arc::new) })
            .await
            .cloned()
    }

    async fn read_shape(&self) -> Result<Shape> {
        let table = quote_table(&self.table);
        let client = self.connection.client().await?;
        let statement = client
            .prepare(&format!("SELECT * FROM {table} LIMIT 0"))
            .await
            .map_err(|e| match self.connection.error(e) {
                Error::Database {
                    connection,
                    message,
                } => Error::Database {
                    connection,
                    message: format!(
                        "dataset `{}`: table `{}`: {message}",
                        self.dataset, self.table
                    ),
                },
                other => other,
            })?;
        let columns: Vec<(&str, &Type)> = statement
            .columns()
            .iter()
            .map(|c| (c.name(), c.type_()))
            .collect();
        let find = |column: &str| -> Result<KeyType> {
            let (_, pg) = columns
                .iter()
                .find(|(name, _)| *name == column)
                .ok_or_else(|| Error::UnknownColumn {
                    dataset: self.dataset.clone(),
                    column: column.to_owned(),
                    available: columns
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            key_type_of(pg).ok_or_else(|| Error::UnsupportedType {
                dataset: self.dataset.clone(),
                column: column.to_owned(),
                data_type: format!("{pg} (PostgreSQL)"),
            })
        };
        let mut keys = Vec::with_capacity(self.config.keys.len());
        for key in &self.config.keys {
            keys.push((key.input.clone(), find(&key.column)?));
        }
        let mut outputs = Vec::new();
        for column in output_columns(&self.config, columns.iter().map(|(n, _)| *n)) {
            if outputs
                .iter()
                .any(|(c, _): &(OutputColumn, KeyType)| c.output == column.output)
            {
                return Err(Error::Config(format!(
                    "output column `{}` is named twice",
                    column.output
                )));
            }
            let key_type = find(&column.column)?;
            outputs.push((column, key_type));
        }
        let select: Vec<String> = std::iter::once("q.i".to_owned())
            .chain(
                outputs
                    .iter()
                    .map(|(c, t)| format!("t.{}::{}", quote_ident(&c.column), canonical(*t))),
            )
            .collect();
        let arrays: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, (_, t))| format!("${}::{}[]", i + 1, canonical(*t)))
            .collect();
        let names: Vec<String> = (0..keys.len()).map(|i| format!("k{i}")).collect();
        let on: Vec<String> = self
            .config
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("t.{} = q.k{i}", quote_ident(&k.column)))
            .collect();
        // Table order among a key's rows matters only when the first one is taken; a sort
        // costs the database more than the index scan itself.
        let first = self.config.on_multiple_matches == LookupAction::First;
        let sql = format!(
            "SELECT {} FROM unnest({}) WITH ORDINALITY AS q({}, i) JOIN {table} AS t ON {} \
             ORDER BY q.i{}",
            select.join(", "),
            arrays.join(", "),
            names.join(", "),
            on.join(" AND "),
            if first { ", t.ctid" } else { "" }
        );
        let single_select: Vec<String> = std::iter::once("1::int8 AS i".to_owned())
            .chain(select.iter().skip(1).cloned())
            .collect();
        let single_where: Vec<String> = self
            .config
            .keys
            .iter()
            .zip(&keys)
            .enumerate()
            .map(|(i, (k, (_, t)))| {
                format!(
                    "t.{} = ${}::{}",
                    quote_ident(&k.column),
                    i + 1,
                    canonical(*t)
                )
            })
            .collect();
        let single_sql = format!(
            "SELECT {} FROM {table} AS t WHERE {}{}",
            single_select.join(", "),
            single_where.join(" AND "),
            if first { " ORDER BY t.ctid" } else { "" }
        );
        let columns: Vec<OutputColumn> = outputs.iter().map(|(c, _)| c.clone()).collect();
        // Writers over empty arrays of the output types: only their escaped names serve.
        let empty: Vec<ArrayRef> = outputs
            .iter()
            .map(|(_, key_type)| arrow_array::new_empty_array(&key_type.data_type()))
            .collect();
        let writers = Outputs::new(&self.dataset, &columns, &empty)?;
        Ok(Shape {
            keys,
            outputs,
            writers,
            sql,
            single_sql,
        })
    }

    /// Starts a query for `records` (the `data` objects of a lookup, or the features of
    /// records to enrich): copies their key fields, so the query owns what it needs.
    pub fn query(self: &Arc<Self>, records: &[&Map<String, Value>]) -> ReferencedQuery {
        let inputs: Vec<&str> = self.config.keys.iter().map(|k| k.input.as_str()).collect();
        let records = records
            .iter()
            .map(|data| {
                inputs
                    .iter()
                    .filter_map(|input| data.get(*input).map(|v| ((*input).to_owned(), v.clone())))
                    .collect()
            })
            .collect();
        ReferencedQuery {
            lookup: self.clone(),
            records,
        }
    }
}

/// A referenced lookup's query, ready to run: await [`ReferencedQuery::finish`].
#[derive(Debug)]
pub struct ReferencedQuery {
    lookup: Arc<ReferencedLookup>,
    /// Each record's key fields.
    records: Vec<Map<String, Value>>,
}

impl ReferencedQuery {
    /// Runs the query (on the executor) and writes the answers. The same answers, errors and
    /// bytes as [`crate::Lookup::find_batch`] and [`crate::Lookup::write_matches`] on the
    /// same rows: an error names its record, the first in record order.
    pub async fn finish(self) -> std::result::Result<Written, ItemError> {
        let ReferencedQuery { lookup, records } = self;
        PG.run(async move { run(&lookup, &records).await })
            .await
            .map_err(|e| (None, e))?
    }
}

async fn run(
    lookup: &ReferencedLookup,
    records: &[Map<String, Value>],
) -> std::result::Result<Written, ItemError> {
    let shape = lookup.shape().await.map_err(|e| (None, e))?;
    let config = &lookup.config;
    let mut keys = Vec::with_capacity(records.len());
    // As for a bundled lookup, a key error stops the conversion, the records before it are
    // answered first, and the error reported is the first in record order.
    let mut pending = None;
    for (i, data) in records.iter().enumerate() {
        match key_of(&shape.keys, config, data) {
            Ok(key) => keys.push(key),
            Err(e) => {
                pending = Some((Some(i), e));
                break;
            }
        }
    }
    let mut params: Vec<KeyParams> = shape.keys.iter().map(|(_, t)| KeyParams::new(*t)).collect();
    let mut probes = 0;
    for key in &keys {
        if let Key::Values(values) = key {
            for (param, value) in params.iter_mut().zip(values) {
                param.push(value);
            }
            probes += 1;
        }
    }
    let rows = if probes == 0 {
        Vec::new()
    } else {
        let connection = &lookup.connection;
        let client = connection.client().await.map_err(|e| (None, e))?;
        let (sql, values): (&str, Vec<&(dyn ToSql + Sync)>) = if probes == 1 {
            (
                &shape.single_sql,
                params.iter().map(KeyParams::first).collect(),
            )
        } else {
            (&shape.sql, params.iter().map(KeyParams::as_sql).collect())
        };
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(|e| (None, connection.error(e)))?;
        client
            .query(&statement, &values)
            .await
            .map_err(|e| (None, connection.error(e)))?
    };
    let mut matches = Vec::with_capacity(keys.len());
    let mut probe: i64 = 0;
    let mut cursor = 0;
    for (i, key) in keys.iter().enumerate() {
        let describe = || describe_keys(&shape.keys, &records[i]);
        let found = match key {
            Key::Values(_) => {
                probe += 1;
                let start = cursor;
                while cursor < rows.len() && rows[cursor].get::<_, i64>(0) == probe {
                    cursor += 1;
                }
                decide(config, &lookup.dataset, describe, start..cursor)
            }
            Key::Decided(decided) => Ok(*decided),
            Key::NeverMatches => decide(config, &lookup.dataset, describe, std::iter::empty()),
        };
        matches.push(found.map_err(|e| (Some(i), e))?);
    }
    if let Some(error) = pending {
        return Err(error);
    }
    write_rows(lookup, &shape, &rows, &matches).map_err(|e| (None, e))
}

/// Writes each match's answer straight from the rows fetched (`Match::Row` indexes `rows`),
/// with the bundled writers' leaf functions: the same bytes, without building Arrow arrays
/// for one query's few rows.
fn write_rows(
    lookup: &ReferencedLookup,
    shape: &Shape,
    rows: &[Row],
    matches: &[Match],
) -> Result<Written> {
    let mut written = Written {
        buffer: Vec::with_capacity(matches.len() * 128),
        answers: Vec::with_capacity(matches.len()),
    };
    let out = &mut written.buffer;
    for found in matches {
        let row = match found {
            Match::Row(row) => Some(&rows[*row]),
            Match::Nulls => None,
            Match::Ignored(reason) => {
                written.answers.push(Answer::Ignored(*reason));
                continue;
            }
        };
        let start = out.len();
        out.push(b'{');
        for (c, (prefix, (column, key_type))) in
            shape.writers.prefixes().zip(&shape.outputs).enumerate()
        {
            if c > 0 {
                out.push(b',');
            }
            out.extend_from_slice(prefix);
            let value = match row {
                Some(row) => cell(row, c + 1, *key_type).map_err(|e| Error::Database {
                    connection: lookup.connection.name.clone(),
                    message: format!(
                        "dataset `{}`: column `{}`: {}",
                        lookup.dataset,
                        column.column,
                        describe(&e)
                    ),
                })?,
                None => Cell::Null,
            };
            write_cell(out, value);
        }
        out.push(b'}');
        written.answers.push(Answer::Data(start..out.len()));
    }
    Ok(written)
}

/// The value of column `index` of `row`, read as `key_type` (the statement casts each
/// output column to its lookup type's canonical PostgreSQL type); strings borrowed.
fn cell(
    row: &Row,
    index: usize,
    key_type: KeyType,
) -> std::result::Result<Cell<'_>, tokio_postgres::Error> {
    Ok(match key_type {
        KeyType::String => row
            .try_get::<_, Option<&str>>(index)?
            .map_or(Cell::Null, Cell::Str),
        KeyType::Int64 => row
            .try_get::<_, Option<i64>>(index)?
            .map_or(Cell::Null, Cell::Int),
        KeyType::Float64 => row
            .try_get::<_, Option<f64>>(index)?
            .map_or(Cell::Null, Cell::Float),
        KeyType::Boolean => row
            .try_get::<_, Option<bool>>(index)?
            .map_or(Cell::Null, Cell::Bool),
        KeyType::Date => row
            .try_get::<_, Option<NaiveDate>>(index)?
            .map_or(Cell::Null, |d| Cell::Date((d - EPOCH).num_days())),
        KeyType::Timestamp => row
            .try_get::<_, Option<DateTime<Utc>>>(index)?
            .map_or(Cell::Null, |t| Cell::Timestamp(t.timestamp_micros())),
    })
}

/// The values of one key column, as the array parameter the statement takes.
#[derive(Debug)]
enum KeyParams {
    Str(Vec<String>),
    Int(Vec<i64>),
    Float(Vec<f64>),
    Bool(Vec<bool>),
    Date(Vec<NaiveDate>),
    Timestamp(Vec<DateTime<Utc>>),
}

impl KeyParams {
    fn new(key_type: KeyType) -> KeyParams {
        match key_type {
            KeyType::String => KeyParams::Str(Vec::new()),
            KeyType::Int64 => KeyParams::Int(Vec::new()),
            KeyType::Float64 => KeyParams::Float(Vec::new()),
            KeyType::Boolean => KeyParams::Bool(Vec::new()),
            KeyType::Date => KeyParams::Date(Vec::new()),
            KeyType::Timestamp => KeyParams::Timestamp(Vec::new()),
        }
    }

    /// Adds a converted key value (of this column's type: `key_of` converted it).
    fn push(&mut self, value: &crate::KeyValue<'_>) {
        use crate::KeyValue as V;
        match (self, value) {
            (KeyParams::Str(v), V::Str(s)) => v.push(s.to_string()),
            (KeyParams::Int(v), V::Int(i)) => v.push(*i),
            (KeyParams::Float(v), V::Float(f)) => v.push(*f),
            (KeyParams::Bool(v), V::Bool(b)) => v.push(*b),
            (KeyParams::Date(v), V::Int(days)) => {
                v.push(EPOCH + chrono::TimeDelta::days(*days));
            }
            (KeyParams::Timestamp(v), V::Int(micros)) => {
                v.push(DateTime::from_timestamp_micros(*micros).unwrap_or_default());
            }
            // Not reached: key_of converts each value to its column's type.
            _ => {}
        }
    }

    /// The first value alone, for the single-record statement (one value was pushed).
    fn first(&self) -> &(dyn ToSql + Sync) {
        match self {
            KeyParams::Str(v) => &v[0],
            KeyParams::Int(v) => &v[0],
            KeyParams::Float(v) => &v[0],
            KeyParams::Bool(v) => &v[0],
            KeyParams::Date(v) => &v[0],
            KeyParams::Timestamp(v) => &v[0],
        }
    }

    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            KeyParams::Str(v) => v,
            KeyParams::Int(v) => v,
            KeyParams::Float(v) => v,
            KeyParams::Bool(v) => v,
            KeyParams::Date(v) => v,
            KeyParams::Timestamp(v) => v,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading a table
// ---------------------------------------------------------------------------------------------

/// Loads record batches into a new table with binary `COPY`, in one transaction: the table is
/// created (dropped first with `replace`), filled and committed by [`TableLoader::finish`];
/// anything failing before that leaves the database as it was.
#[derive(Debug)]
pub struct TableLoader {
    batches: Option<tokio::sync::mpsc::Sender<RecordBatch>>,
    done: Option<tokio::task::JoinHandle<Result<u64>>>,
}

impl TableLoader {
    /// Opens the transaction and creates `table` with `columns` (name, type, in order;
    /// [`pg_type_name`] gives each column's type). Refuses an existing table unless
    /// `replace`, and an index on a column the table does not have. Each of `indexes` (the
    /// columns of one B-tree index, such as a lookup's keys) is created after the rows are
    /// in, and the table analyzed, in the same transaction. Blocks until the table is
    /// created.
    pub fn start(
        connection: &Arc<PgConnection>,
        table: &str,
        columns: &[(String, KeyType)],
        replace: bool,
        indexes: &[Vec<String>],
    ) -> Result<TableLoader> {
        for index in indexes {
            if index.is_empty() {
                return Err(Error::Config("an index needs at least one column".into()));
            }
            if let Some(unknown) = index.iter().find(|c| !columns.iter().any(|(n, _)| n == *c)) {
                return Err(Error::Config(format!(
                    "index on `{unknown}`: table `{table}` has no such column (columns: {})",
                    columns
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<RecordBatch>(2);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let connection = connection.clone();
        let table = table.to_owned();
        let columns = columns.to_vec();
        let indexes = indexes.to_vec();
        let done = PG.runtime()?.spawn(async move {
            load(connection, table, columns, replace, indexes, rx, ready_tx).await
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(TableLoader {
                batches: Some(tx),
                done: Some(done),
            }),
            Ok(Err(e)) => Err(e),
            // The task ended without saying: its own error.
            Err(_) => Err(PG
                .block_on(done)?
                .map_err(|e| Error::Config(format!("the load task failed: {e}")))?
                .err()
                .unwrap_or_else(|| Error::Config("the load task stopped".into()))),
        }
    }

    /// Sends a batch to the `COPY` (blocks while two are waiting). Its columns are in the
    /// table's order and of their lookup types.
    pub fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let sent = self
            .batches
            .as_ref()
            .is_some_and(|tx| tx.blocking_send(batch).is_ok());
        if sent {
            return Ok(());
        }
        // The task stopped: its error says why.
        self.batches = None;
        match self.done.take() {
            Some(done) => match PG.block_on(done)? {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => Err(Error::Config("the load ended early".into())),
                Err(e) => Err(Error::Config(format!("the load task failed: {e}"))),
            },
            None => Err(Error::Config("the load already failed".into())),
        }
    }

    /// Ends the `COPY` and commits; returns the rows loaded.
    pub fn finish(mut self) -> Result<u64> {
        self.batches = None;
        let done = self
            .done
            .take()
            .ok_or_else(|| Error::Config("the load already failed".into()))?;
        PG.block_on(done)?
            .map_err(|e| Error::Config(format!("the load task failed: {e}")))?
    }
}

async fn load(
    connection: Arc<PgConnection>,
    table: String,
    columns: Vec<(String, KeyType)>,
    replace: bool,
    indexes: Vec<Vec<String>>,
    mut batches: tokio::sync::mpsc::Receiver<RecordBatch>,
    ready: std::sync::mpsc::Sender<Result<()>>,
) -> Result<u64> {
    let quoted = quote_table(&table);
    let err = |e| connection.error(e);
    let prepared = async {
        let client = connection.client().await?;
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&quoted])
            .await
            .map_err(err)?
            .get(0);
        if exists && !replace {
            return Err(Error::Config(format!(
                "table `{table}` already exists on connection `{}`: pass --replace to replace it",
                connection.name
            )));
        }
        Ok((client, exists))
    }
    .await;
    let (mut client, exists) = match prepared {
        Ok(ok) => ok,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(0);
        }
    };
    let transaction = async {
        let transaction = client.transaction().await.map_err(err)?;
        if exists {
            transaction
                .batch_execute(&format!("DROP TABLE {quoted}"))
                .await
                .map_err(err)?;
        }
        let definition: Vec<String> = columns
            .iter()
            .map(|(name, t)| format!("{} {}", quote_ident(name), pg_type_name(*t)))
            .collect();
        transaction
            .batch_execute(&format!(
                "CREATE TABLE {quoted} ({})",
                definition.join(", ")
            ))
            .await
            .map_err(err)?;
        Ok::<_, Error>(transaction)
    }
    .await;
    let transaction = match transaction {
        Ok(t) => {
            let _ = ready.send(Ok(()));
            t
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(0);
        }
    };
    let names: Vec<String> = columns.iter().map(|(n, _)| quote_ident(n)).collect();
    let sink = transaction
        .copy_in(&format!(
            "COPY {quoted} ({}) FROM STDIN (FORMAT binary)",
            names.join(", ")
        ))
        .await
        .map_err(err)?;
    let types: Vec<Type> = columns.iter().map(|(_, t)| pg_type(*t)).collect();
    let writer = tokio_postgres::binary_copy::BinaryCopyInWriter::new(sink, &types);
    futures_util::pin_mut!(writer);
    let mut rows: u64 = 0;
    while let Some(batch) = batches.recv().await {
        let cells = batch_cells(&batch, &columns, rows)?;
        for row in 0..batch.num_rows() {
            let values: Vec<&(dyn ToSql + Sync)> = cells.iter().map(|c| c.value(row)).collect();
            writer.as_mut().write(&values).await.map_err(|e| {
                let mut e = connection.error(e);
                if let Error::Database { message, .. } | Error::Unavailable { message, .. } = &mut e
                {
                    *message = format!("row {}: {message}", rows + row as u64 + 1);
                }
                e
            })?;
        }
        rows += batch.num_rows() as u64;
    }
    writer.as_mut().finish().await.map_err(err)?;
    // Built once the rows are in: faster than maintaining the index row by row.
    for index in &indexes {
        let on: Vec<String> = index.iter().map(|c| quote_ident(c)).collect();
        transaction
            .batch_execute(&format!("CREATE INDEX ON {quoted} ({})", on.join(", ")))
            .await
            .map_err(err)?;
    }
    // Statistics now, so the first lookups are planned on the index, not on a guess.
    transaction
        .batch_execute(&format!("ANALYZE {quoted}"))
        .await
        .map_err(err)?;
    transaction.commit().await.map_err(err)?;
    Ok(rows)
}

/// A batch's columns as values `COPY` can write, checked: PostgreSQL text cannot hold a NUL.
fn batch_cells(
    batch: &RecordBatch,
    columns: &[(String, KeyType)],
    offset: u64,
) -> Result<Vec<Cells>> {
    use crate::key::TypedColumn as C;
    if batch.num_columns() != columns.len() {
        return Err(Error::Config(format!(
            "a batch has {} columns, the table {}",
            batch.num_columns(),
            columns.len()
        )));
    }
    let mut cells = Vec::with_capacity(columns.len());
    for ((name, key_type), array) in columns.iter().zip(batch.columns()) {
        let wrong = || {
            Error::Config(format!(
                "column `{name}` has Arrow type {}, not the table's {}",
                array.data_type(),
                pg_type_name(*key_type)
            ))
        };
        let typed = C::new(array).ok_or_else(wrong)?;
        if typed.key_type() != *key_type {
            return Err(wrong());
        }
        let valid = |row: usize| array.is_valid(row);
        let rows = 0..array.len();
        cells.push(match &typed {
            C::Str(a) => Cells::Str(
                rows.map(|row| {
                    if !valid(row) {
                        return Ok(None);
                    }
                    let s = a.value(row);
                    if s.contains('\0') {
                        return Err(Error::InvalidValue {
                            column: name.clone(),
                            row: offset + row as u64 + 1,
                            message: "PostgreSQL text cannot hold a NUL character".into(),
                        });
                    }
                    Ok(Some(s.to_owned()))
                })
                .collect::<Result<_>>()?,
            ),
            C::Int(a) => Cells::Int(rows.map(|r| valid(r).then(|| a.value(r))).collect()),
            C::Float(a) => Cells::Float(rows.map(|r| valid(r).then(|| a.value(r))).collect()),
            C::Bool(a) => Cells::Bool(rows.map(|r| valid(r).then(|| a.value(r))).collect()),
            C::Date(a) => Cells::Date(
                rows.map(|r| {
                    valid(r).then(|| EPOCH + chrono::TimeDelta::days(i64::from(a.value(r))))
                })
                .collect(),
            ),
            C::Timestamp(a) => Cells::Timestamp(
                rows.map(|row| {
                    if !valid(row) {
                        return Ok(None);
                    }
                    DateTime::from_timestamp_micros(a.value(row))
                        .map(Some)
                        .ok_or_else(|| Error::InvalidValue {
                            column: name.clone(),
                            row: offset + row as u64 + 1,
                            message: "timestamp out of range".into(),
                        })
                })
                .collect::<Result<_>>()?,
            ),
        });
    }
    Ok(cells)
}

/// One column of a batch, typed for `COPY`.
#[derive(Debug)]
enum Cells {
    Str(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Date(Vec<Option<NaiveDate>>),
    Timestamp(Vec<Option<DateTime<Utc>>>),
}

impl Cells {
    fn value(&self, row: usize) -> &(dyn ToSql + Sync) {
        match self {
            Cells::Str(v) => &v[row],
            Cells::Int(v) => &v[row],
            Cells::Float(v) => &v[row],
            Cells::Bool(v) => &v[row],
            Cells::Date(v) => &v[row],
            Cells::Timestamp(v) => &v[row],
        }
    }
}
