//! SQL query endpoints: parameterised statements run on a PostgreSQL connection
//! ([`ReferencedSql`], prepared statements from the connection's pool) or on bundled datasets
//! ([`crate::BundledSql`], DataFusion), answered as `{"columns": [...], "rows": [[...]]}` or
//! `{"updatedRows": n}`.
//!
//! Statements take positional placeholders `$1`, `$2`, ... (the runtime numbers the bundle's
//! `?`s); each placeholder is bound to a declared, typed parameter, by name (a name may be
//! used by several placeholders and statements). Values are always bound, never spliced into
//! the SQL. [`SqlConfig::bind`] reads a query's parameters and refuses a missing, unknown or
//! ill-typed one, naming it, before anything runs.
//!
//! Values are answered as strings, rendered the same way by both engines so that the same
//! statement on the same data answers the same bytes: integers in decimal, floats in their
//! shortest round-trip form (`NaN`, `Infinity`, `-Infinity` for the others), booleans as
//! `true` / `false`, dates as `YYYY-MM-DD`, timestamps as ISO 8601 in UTC (as lookups answer
//! them), NULL as JSON `null`. Column types are named as PostgreSQL names them (`int8`,
//! `float8`, `text`, `bool`, `date`, `timestamptz`, ...).

use crate::error::{Error, Result};
use crate::exec::PG;
use crate::json::{write_date, write_str, write_timestamp};
use crate::key::{Converted, KeyType, convert};
use crate::pg::{PgConnection, describe, pg_type};
use bytes::BytesMut;
use deadpool_postgres::GenericClient;
use serde_json::{Map, Value};
use std::error::Error as StdError;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

/// A declared parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlParam {
    pub name: String,
    pub param_type: KeyType,
    /// A query that omits a required parameter without a default is refused.
    pub required: bool,
    /// Used when the query omits the parameter.
    pub default: Option<Value>,
}

/// One statement: SQL with `$1`, `$2`, ... placeholders, and the parameter bound to each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlStatement {
    pub sql: String,
    /// `params[k]` is bound to `$k+1`.
    pub params: Vec<String>,
}

/// A SQL endpoint's statements and parameters. Statements run in order, on one session, and
/// the last one's result is the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlConfig {
    pub statements: Vec<SqlStatement>,
    pub parameters: Vec<SqlParam>,
}

/// A parameter's value, in its declared type.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// SQL NULL (an explicit `null` for a parameter that is not required).
    Null(KeyType),
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since the epoch, UTC.
    Timestamp(i64),
}

impl SqlConfig {
    /// Checks that every placeholder names a declared parameter and that the statements are
    /// there.
    pub fn check(&self) -> Result<()> {
        if self.statements.is_empty() {
            return Err(Error::Config(
                "a SQL endpoint needs at least one statement".into(),
            ));
        }
        for (i, statement) in self.statements.iter().enumerate() {
            for name in &statement.params {
                if !self.parameters.iter().any(|p| &p.name == name) {
                    return Err(Error::InvalidStatement {
                        statement: i,
                        message: format!("binds `{name}`, which is not a declared parameter"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Reads a query's parameters (the body's top-level fields) into one value per declared
    /// parameter, in declaration order.
    pub fn bind(&self, body: &Map<String, Value>) -> Result<Vec<ParamValue>> {
        if let Some(unknown) = body
            .keys()
            .find(|k| !self.parameters.iter().any(|p| &p.name == *k))
        {
            return Err(Error::Parameter {
                name: unknown.clone(),
                message: format!(
                    "is not a parameter of this endpoint (its parameters: {})",
                    self.parameter_names()
                ),
            });
        }
        self.parameters
            .iter()
            .map(
                |param| match body.get(&param.name).or(param.default.as_ref()) {
                    None if param.required => Err(Error::Parameter {
                        name: param.name.clone(),
                        message: format!("is required ({})", param.param_type.describe()),
                    }),
                    None | Some(Value::Null) if !param.required => {
                        Ok(ParamValue::Null(param.param_type))
                    }
                    None | Some(Value::Null) => Err(Error::Parameter {
                        name: param.name.clone(),
                        message: format!(
                            "is required and cannot be null ({})",
                            param.param_type.describe()
                        ),
                    }),
                    Some(value) => param_value(param, value),
                },
            )
            .collect()
    }

    fn parameter_names(&self) -> String {
        if self.parameters.is_empty() {
            return "none".into();
        }
        self.parameters
            .iter()
            .map(|p| format!("`{}`", p.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The values of a statement's placeholders, in order.
    pub(crate) fn placeholder_values<'a>(
        &self,
        statement: &SqlStatement,
        values: &'a [ParamValue],
    ) -> Vec<&'a ParamValue> {
        statement
            .params
            .iter()
            .map(|name| {
                let index = self
                    .parameters
                    .iter()
                    .position(|p| &p.name == name)
                    .expect("checked by SqlConfig::check");
                &values[index]
            })
            .collect()
    }

    /// The declared type of each of a statement's placeholders.
    pub(crate) fn placeholder_types(&self, statement: &SqlStatement) -> Vec<KeyType> {
        statement
            .params
            .iter()
            .map(|name| {
                self.parameters
                    .iter()
                    .find(|p| &p.name == name)
                    .map_or(KeyType::String, |p| p.param_type)
            })
            .collect()
    }
}

/// Converts a JSON value to the parameter's type, with the conversions lookup keys accept
/// (numbers, booleans and dates may come as strings).
fn param_value(param: &SqlParam, value: &Value) -> Result<ParamValue> {
    let converted = convert(&param.name, param.param_type, value).map_err(|e| match e {
        Error::InvalidKey { expected, got, .. } => Error::Parameter {
            name: param.name.clone(),
            message: format!("expects {expected}, got {got}"),
        },
        other => other,
    })?;
    use crate::KeyValue as V;
    Ok(match (param.param_type, converted) {
        (_, Converted::NeverMatches) => ParamValue::Float(f64::NAN),
        (KeyType::String, Converted::Value(V::Str(s))) => ParamValue::Str(s.into_owned()),
        (KeyType::Date, Converted::Value(V::Int(days))) => {
            ParamValue::Date(i32::try_from(days).map_err(|_| Error::Parameter {
                name: param.name.clone(),
                message: "the date is out of range".into(),
            })?)
        }
        (KeyType::Timestamp, Converted::Value(V::Int(micros))) => ParamValue::Timestamp(micros),
        (_, Converted::Value(V::Int(i))) => ParamValue::Int(i),
        (_, Converted::Value(V::Float(f))) => ParamValue::Float(f),
        (_, Converted::Value(V::Bool(b))) => ParamValue::Bool(b),
        (_, Converted::Value(V::Str(s))) => ParamValue::Str(s.into_owned()),
    })
}

/// A column of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlColumn {
    pub name: String,
    /// The type as PostgreSQL names it (`int8`, `text`, ...).
    pub type_name: String,
}

/// What a SQL query answers: the last statement's rows, or the number of rows it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlAnswer {
    Rows {
        columns: Vec<SqlColumn>,
        /// Each value rendered as a string; `None` is NULL.
        rows: Vec<Vec<Option<String>>>,
    },
    Updated(u64),
}

impl SqlAnswer {
    /// `{"columns":[{"name":..,"type":..}],"rows":[["..",null]]}` or `{"updatedRows":n}`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            SqlAnswer::Updated(n) => {
                out.extend_from_slice(b"{\"updatedRows\":");
                out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes());
                out.push(b'}');
            }
            SqlAnswer::Rows { columns, rows } => {
                out.extend_from_slice(b"{\"columns\":[");
                for (i, column) in columns.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(b"{\"name\":");
                    write_str(out, &column.name);
                    out.extend_from_slice(b",\"type\":");
                    write_str(out, &column.type_name);
                    out.push(b'}');
                }
                out.extend_from_slice(b"],\"rows\":[");
                for (i, row) in rows.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.push(b'[');
                    for (j, value) in row.iter().enumerate() {
                        if j > 0 {
                            out.push(b',');
                        }
                        match value {
                            Some(text) => write_str(out, text),
                            None => out.extend_from_slice(b"null"),
                        }
                    }
                    out.push(b']');
                }
                out.extend_from_slice(b"]}");
            }
        }
    }
}

/// A SQL query ready to run: await [`SqlQuery::finish`].
pub struct SqlQuery {
    running: Pin<Box<dyn Future<Output = Result<SqlAnswer>> + Send>>,
}

impl std::fmt::Debug for SqlQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlQuery").finish_non_exhaustive()
    }
}

impl SqlQuery {
    pub(crate) fn new(running: impl Future<Output = Result<SqlAnswer>> + Send + 'static) -> Self {
        SqlQuery {
            running: Box::pin(running),
        }
    }

    /// Runs the statements (on this crate's executor) and answers the last one's result.
    pub async fn finish(self) -> Result<SqlAnswer> {
        self.running.await
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering values
// ---------------------------------------------------------------------------------------------

pub(crate) fn render_float(f: f64) -> String {
    if f.is_finite() {
        zmij::Buffer::new().format_finite(f).to_owned()
    } else if f.is_nan() {
        "NaN".to_owned()
    } else if f > 0.0 {
        "Infinity".to_owned()
    } else {
        "-Infinity".to_owned()
    }
}

pub(crate) fn render_float32(f: f32) -> String {
    if f.is_finite() {
        zmij::Buffer::new().format_finite(f).to_owned()
    } else {
        render_float(f64::from(f))
    }
}

pub(crate) fn render_date(days: i64) -> String {
    let mut out = Vec::with_capacity(10);
    write_date(&mut out, days);
    String::from_utf8(out).expect("dates are ASCII")
}

pub(crate) fn render_timestamp(micros: i64) -> String {
    let mut out = Vec::with_capacity(27);
    write_timestamp(&mut out, micros);
    String::from_utf8(out).expect("timestamps are ASCII")
}

pub(crate) fn render_bool(b: bool) -> String {
    if b { "true" } else { "false" }.to_owned()
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/// A SQL endpoint on a PostgreSQL connection. Statements are prepared (typed with the
/// declared parameter types) once per pooled session and cached there; several statements
/// run in one transaction, committed after the last, so a failure leaves nothing half done.
#[derive(Debug)]
pub struct ReferencedSql {
    connection: Arc<PgConnection>,
    config: SqlConfig,
}

impl ReferencedSql {
    pub fn new(connection: Arc<PgConnection>, config: SqlConfig) -> Result<ReferencedSql> {
        config.check()?;
        Ok(ReferencedSql { connection, config })
    }

    pub fn config(&self) -> &SqlConfig {
        &self.config
    }

    pub fn connection(&self) -> &Arc<PgConnection> {
        &self.connection
    }

    /// Prepares every statement on a session, which checks the SQL, the tables and columns
    /// it names, the parameters' types and that every result column can be rendered; blocks.
    /// `Unavailable` when the database cannot be reached: the statements are then checked
    /// by the first query.
    pub fn check(self: &Arc<Self>) -> Result<()> {
        let this = self.clone();
        PG.block_on(async move {
            let client = this.connection.client().await?;
            for (i, statement) in this.config.statements.iter().enumerate() {
                let prepared = this.prepare(&client, i, statement).await?;
                for column in prepared.columns() {
                    if !renders(column.type_()) {
                        return Err(Error::InvalidStatement {
                            statement: i,
                            message: unrenderable(column.name(), column.type_()),
                        });
                    }
                }
            }
            Ok(())
        })?
    }

    /// Binds the query's parameters (refusing a bad one now) and returns the query to run.
    pub fn query(self: &Arc<Self>, body: &Map<String, Value>) -> Result<SqlQuery> {
        let values = self.config.bind(body)?;
        let this = self.clone();
        Ok(SqlQuery::new(async move {
            PG.run(async move { this.run(values).await }).await?
        }))
    }

    async fn prepare(
        &self,
        client: &impl GenericClient,
        index: usize,
        statement: &SqlStatement,
    ) -> Result<tokio_postgres::Statement> {
        let types: Vec<Type> = self
            .config
            .placeholder_types(statement)
            .into_iter()
            .map(pg_type)
            .collect();
        client
            .prepare_typed_cached(&statement.sql, &types)
            .await
            .map_err(|e| self.statement_error(index, e))
    }

    /// An error the database answered about statement `index`: the values or data at fault
    /// (data exceptions, constraint violations) is the query's; the statement itself (syntax,
    /// unknown table, types) the endpoint's; anything else is the connection's.
    fn statement_error(&self, index: usize, e: tokio_postgres::Error) -> Error {
        let class = e.code().map(|c| c.code()[..2].to_owned());
        let message = format!("connection `{}`: {}", self.connection.name(), describe(&e));
        match class.as_deref() {
            Some("22" | "23") => Error::StatementRejected {
                statement: index,
                message,
            },
            Some("42") => Error::InvalidStatement {
                statement: index,
                message,
            },
            _ => self.connection.error(e),
        }
    }

    async fn run(&self, values: Vec<ParamValue>) -> Result<SqlAnswer> {
        let mut client = self.connection.client().await?;
        if self.config.statements.len() == 1 {
            return self.run_statement(&client, 0, &values).await;
        }
        let transaction = client
            .transaction()
            .await
            .map_err(|e| self.connection.error(e))?;
        let mut answer = SqlAnswer::Updated(0);
        for i in 0..self.config.statements.len() {
            answer = self.run_statement(&transaction, i, &values).await?;
        }
        transaction
            .commit()
            .await
            .map_err(|e| self.statement_error(self.config.statements.len() - 1, e))?;
        Ok(answer)
    }

    async fn run_statement(
        &self,
        client: &impl GenericClient,
        index: usize,
        values: &[ParamValue],
    ) -> Result<SqlAnswer> {
        let statement = &self.config.statements[index];
        let prepared = self.prepare(client, index, statement).await?;
        let bound = self.config.placeholder_values(statement, values);
        let params: Vec<&(dyn ToSql + Sync)> =
            bound.iter().map(|v| *v as &(dyn ToSql + Sync)).collect();
        if prepared.columns().is_empty() {
            let updated = client
                .execute(&prepared, &params)
                .await
                .map_err(|e| self.statement_error(index, e))?;
            return Ok(SqlAnswer::Updated(updated));
        }
        let rows = client
            .query(&prepared, &params)
            .await
            .map_err(|e| self.statement_error(index, e))?;
        let columns = prepared
            .columns()
            .iter()
            .map(|c| SqlColumn {
                name: c.name().to_owned(),
                type_name: c.type_().name().to_owned(),
            })
            .collect();
        let mut texts = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut values = Vec::with_capacity(row.len());
            for (c, column) in row.columns().iter().enumerate() {
                let Text(text) = row.try_get(c).map_err(|e| Error::InvalidStatement {
                    statement: index,
                    message: match e.source().and_then(|s| s.downcast_ref::<Unrenderable>()) {
                        Some(_) => unrenderable(column.name(), column.type_()),
                        None => format!("column `{}`: {}", column.name(), describe(&e)),
                    },
                })?;
                values.push(text);
            }
            texts.push(values);
        }
        Ok(SqlAnswer::Rows {
            columns,
            rows: texts,
        })
    }
}

fn unrenderable(column: &str, ty: &Type) -> String {
    format!(
        "column `{column}` has type `{}`, which the SQL endpoint cannot render; cast it in \
         the statement (`{column}::text`)",
        ty.name()
    )
}

/// 2000-01-01, PostgreSQL's epoch, in days and microseconds after 1970-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;
const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS * 86_400_000_000;

impl ToSql for ParamValue {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            ParamValue::Null(_) => Ok(IsNull::Yes),
            ParamValue::Str(s) => s.to_sql(ty, out),
            ParamValue::Int(i) => i.to_sql(ty, out),
            ParamValue::Float(f) => f.to_sql(ty, out),
            ParamValue::Bool(b) => b.to_sql(ty, out),
            ParamValue::Date(days) => {
                let since = i64::from(*days) - PG_EPOCH_DAYS;
                out.extend_from_slice(&i32::try_from(since)?.to_be_bytes());
                Ok(IsNull::No)
            }
            ParamValue::Timestamp(micros) => {
                out.extend_from_slice(&(micros - PG_EPOCH_MICROS).to_be_bytes());
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(ty: &Type) -> bool {
        [
            Type::TEXT,
            Type::INT8,
            Type::FLOAT8,
            Type::BOOL,
            Type::DATE,
            Type::TIMESTAMPTZ,
            Type::TIMESTAMP,
        ]
        .contains(ty)
    }

    to_sql_checked!();
}

/// Whether [`Text`] renders values of this type.
fn renders(ty: &Type) -> bool {
    [
        Type::BOOL,
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::OID,
        Type::FLOAT4,
        Type::FLOAT8,
        Type::NUMERIC,
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::UNKNOWN,
        Type::CHAR,
        Type::JSON,
        Type::JSONB,
        Type::DATE,
        Type::TIME,
        Type::TIMESTAMP,
        Type::TIMESTAMPTZ,
        Type::UUID,
        Type::BYTEA,
    ]
    .contains(ty)
        || matches!(ty.kind(), tokio_postgres::types::Kind::Enum(_))
}

/// A type [`Text`] does not render.
#[derive(Debug)]
struct Unrenderable;

impl std::fmt::Display for Unrenderable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unrenderable type")
    }
}

impl StdError for Unrenderable {}

/// A value of any renderable type, read from PostgreSQL's binary format and rendered as the
/// bundled engine renders the same value.
struct Text(Option<String>);

impl<'a> FromSql<'a> for Text {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn StdError + Sync + Send>> {
        let text = match *ty {
            Type::BOOL => render_bool(bool::from_sql(ty, raw)?),
            Type::INT2 => i16::from_sql(ty, raw)?.to_string(),
            Type::INT4 => i32::from_sql(ty, raw)?.to_string(),
            Type::INT8 => i64::from_sql(ty, raw)?.to_string(),
            Type::OID => u32::from_sql(ty, raw)?.to_string(),
            Type::FLOAT4 => render_float32(f32::from_sql(ty, raw)?),
            Type::FLOAT8 => render_float(f64::from_sql(ty, raw)?),
            Type::NUMERIC => numeric_text(raw).ok_or("malformed numeric value")?,
            Type::CHAR => char::from(i8::from_sql(ty, raw)? as u8).to_string(),
            Type::JSONB => {
                std::str::from_utf8(raw.get(1..).ok_or("empty jsonb value")?)?.to_owned()
            }
            Type::DATE => match i32::from_sql(&Type::INT4, raw)? {
                i32::MAX => "infinity".to_owned(),
                i32::MIN => "-infinity".to_owned(),
                days => render_date(i64::from(days) + PG_EPOCH_DAYS),
            },
            Type::TIMESTAMP | Type::TIMESTAMPTZ => match i64::from_sql(&Type::INT8, raw)? {
                i64::MAX => "infinity".to_owned(),
                i64::MIN => "-infinity".to_owned(),
                micros => render_timestamp(micros.saturating_add(PG_EPOCH_MICROS)),
            },
            Type::TIME => {
                let micros = i64::from_sql(&Type::INT8, raw)?;
                let (seconds, fraction) = (micros / 1_000_000, micros % 1_000_000);
                let mut text = format!(
                    "{:02}:{:02}:{:02}",
                    seconds / 3600,
                    seconds / 60 % 60,
                    seconds % 60
                );
                if fraction != 0 {
                    let _ = write!(text, ".{fraction:06}");
                }
                text
            }
            Type::UUID => {
                let hex = hex_of(raw);
                if hex.len() != 32 {
                    return Err("malformed uuid value".into());
                }
                format!(
                    "{}-{}-{}-{}-{}",
                    &hex[..8],
                    &hex[8..12],
                    &hex[12..16],
                    &hex[16..20],
                    &hex[20..]
                )
            }
            Type::BYTEA => format!("\\x{}", hex_of(raw)),
            // The text types, json (sent as text) and enums.
            _ if renders(ty) => std::str::from_utf8(raw)?.to_owned(),
            _ => return Err(Box::new(Unrenderable)),
        };
        Ok(Text(Some(text)))
    }

    fn from_sql_null(_: &Type) -> std::result::Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Text(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn hex_of(raw: &[u8]) -> String {
    let mut text = String::with_capacity(raw.len() * 2);
    for b in raw {
        let _ = write!(text, "{b:02x}");
    }
    text
}

/// PostgreSQL's binary `numeric` as its exact decimal text (`-12.3400` keeps its scale).
fn numeric_text(raw: &[u8]) -> Option<String> {
    let word =
        |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*raw.get(i)?, *raw.get(i + 1)?])) };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(2)? as i16);
    let sign = word(4)?;
    let scale = usize::from(word(6)?);
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => {}
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|k| word(8 + 2 * k))
        .collect::<Option<_>>()?;
    // Base-10000 digit `g` (0 = the most significant stored) has weight `weight - g`.
    let digit_at = |g: i64| -> u16 {
        usize::try_from(g)
            .ok()
            .and_then(|g| digits.get(g).copied())
            .unwrap_or(0)
    };
    let mut text = String::new();
    if sign == 0x4000 {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        for g in 0..=weight {
            if g == 0 {
                let _ = write!(text, "{}", digit_at(g));
            } else {
                let _ = write!(text, "{:04}", digit_at(g));
            }
        }
    }
    if scale > 0 {
        text.push('.');
        let mut fraction = String::with_capacity(scale + 4);
        let mut g = weight + 1;
        while fraction.len() < scale {
            let _ = write!(fraction, "{:04}", digit_at(g));
            g += 1;
        }
        fraction.truncate(scale);
        text.push_str(&fraction);
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> SqlConfig {
        SqlConfig {
            statements: vec![SqlStatement {
                sql: "SELECT * FROM t WHERE a = $1 AND b > $2 AND a <> $3".into(),
                params: vec!["a".into(), "since".into(), "a".into()],
            }],
            parameters: vec![
                SqlParam {
                    name: "a".into(),
                    param_type: KeyType::Int64,
                    required: true,
                    default: None,
                },
                SqlParam {
                    name: "since".into(),
                    param_type: KeyType::Date,
                    required: false,
                    default: Some(json!("2024-01-01")),
                },
                SqlParam {
                    name: "tag".into(),
                    param_type: KeyType::String,
                    required: false,
                    default: None,
                },
            ],
        }
    }

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn binds_declared_parameters_with_defaults_and_nulls() {
        let config = config();
        let values = config.bind(&body(json!({"a": "42"}))).unwrap();
        assert_eq!(
            values,
            vec![
                ParamValue::Int(42),
                ParamValue::Date(19_723),
                ParamValue::Null(KeyType::String)
            ]
        );
        let statement = &config.statements[0];
        let placeholders = config.placeholder_values(statement, &values);
        assert_eq!(placeholders, vec![&values[0], &values[1], &values[0]]);
    }

    #[test]
    fn refuses_missing_unknown_and_ill_typed_parameters_by_name() {
        let config = config();
        let e = config.bind(&body(json!({}))).unwrap_err().to_string();
        assert_eq!(e, "parameter `a`: is required (an integer)");
        let e = config
            .bind(&body(json!({"a": null})))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`a`: is required and cannot be null"), "{e}");
        let e = config
            .bind(&body(json!({"a": 1, "b": 2})))
            .unwrap_err()
            .to_string();
        assert!(e.contains("parameter `b`: is not a parameter"), "{e}");
        assert!(e.contains("`a`, `since`, `tag`"), "{e}");
        let e = config
            .bind(&body(json!({"a": "x1"})))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "parameter `a`: expects an integer, got \"x1\"");
        let e = config
            .bind(&body(json!({"a": 1, "since": "yesterday"})))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("parameter `since`: expects a date"), "{e}");
    }

    #[test]
    fn answers_are_written_as_the_client_reads_them() {
        let mut out = Vec::new();
        SqlAnswer::Rows {
            columns: vec![SqlColumn {
                name: "e\"mail".into(),
                type_name: "text".into(),
            }],
            rows: vec![vec![Some("a@b".into())], vec![None]],
        }
        .write_json(&mut out);
        let parsed: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            parsed,
            json!({"columns": [{"name": "e\"mail", "type": "text"}], "rows": [["a@b"], [null]]})
        );
        out.clear();
        SqlAnswer::Updated(3).write_json(&mut out);
        assert_eq!(out, b"{\"updatedRows\":3}");
    }

    #[test]
    fn numerics_keep_their_digits_and_scale() {
        fn numeric(ndigits: u16, weight: i16, sign: u16, scale: u16, digits: &[u16]) -> Vec<u8> {
            let mut raw = Vec::new();
            for w in [ndigits, weight as u16, sign, scale].iter().chain(digits) {
                raw.extend_from_slice(&w.to_be_bytes());
            }
            raw
        }
        // 12345.6780
        let raw = numeric(3, 1, 0, 4, &[1, 2345, 6780]);
        assert_eq!(numeric_text(&raw).unwrap(), "12345.6780");
        // -0.00012: 1 × 10000^-1 + 2000 × 10000^-2
        let raw = numeric(2, -1, 0x4000, 5, &[1, 2000]);
        assert_eq!(numeric_text(&raw).unwrap(), "-0.00012");
        // 0.0012 cut to a scale of 5
        let raw = numeric(1, -1, 0, 5, &[12]);
        assert_eq!(numeric_text(&raw).unwrap(), "0.00120");
        // 10000 (one digit of weight 1)
        let raw = numeric(1, 1, 0, 0, &[1]);
        assert_eq!(numeric_text(&raw).unwrap(), "10000");
        assert_eq!(numeric_text(&numeric(0, 0, 0xC000, 0, &[])).unwrap(), "NaN");
        assert_eq!(numeric_text(&numeric(0, 0, 0, 2, &[])).unwrap(), "0.00");
        assert!(numeric_text(&[0, 1]).is_none());
    }

    #[test]
    fn floats_render_shortest_and_name_the_non_finite() {
        assert_eq!(render_float(0.1), "0.1");
        assert_eq!(render_float(f64::NAN), "NaN");
        assert_eq!(render_float(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(render_float32(0.1), "0.1");
    }
}
