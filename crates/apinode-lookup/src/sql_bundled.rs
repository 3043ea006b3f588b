//! SQL endpoints on bundled datasets, with DataFusion: each dataset is a table named after it
//! (zero-copy over the loaded Arrow batch); the statements are planned once, at load, with
//! PostgreSQL's dialect, and only queries are allowed (no DDL, DML or `SET`: bundled data is
//! immutable). A query binds its parameters into the plans and runs them on this crate's SQL
//! executor, one partition, so a long scan never delays PostgreSQL statements.

use crate::error::{Error, Result};
use crate::exec::SQL;
use crate::key::KeyType;
use crate::sql::{
    ParamValue, SqlAnswer, SqlColumn, SqlConfig, SqlQuery, render_bool, render_date, render_float,
    render_float32, render_timestamp,
};
use crate::table::Table;
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Float32Type, Float64Type, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use arrow_array::{Array, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, TimeUnit};
use datafusion::common::{DataFusionError, ParamValues, ScalarValue};
use datafusion::config::Dialect;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::logical_expr::LogicalPlan;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// A SQL endpoint on bundled datasets.
pub struct BundledSql {
    context: SessionContext,
    config: SqlConfig,
    /// One plan per statement, with its placeholders' inferred types (`$1` → type).
    plans: Vec<(LogicalPlan, HashMap<String, Option<DataType>>)>,
}

impl std::fmt::Debug for BundledSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundledSql")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl BundledSql {
    /// Registers `tables` (each under its name) and plans every statement; a statement that
    /// does not plan (syntax, an unknown table or column, a type mismatch, a statement that
    /// would change data) is refused here, naming it. Blocks.
    pub fn new(tables: &[Arc<Table>], config: SqlConfig) -> Result<BundledSql> {
        config.check()?;
        let mut session = SessionConfig::new().with_target_partitions(1);
        session.options_mut().sql_parser.dialect = Dialect::PostgreSQL;
        let context = SessionContext::new_with_config(session);
        for table in tables {
            context
                .register_batch(table.name(), table.batch().clone())
                .map_err(|e| Error::Config(format!("dataset `{}`: {e}", table.name())))?;
        }
        let statements = config.statements.clone();
        let state = context.state();
        let plans = SQL.block_on(async move {
            let options = SQLOptions::new()
                .with_allow_ddl(false)
                .with_allow_dml(false)
                .with_allow_statements(false);
            let mut plans = Vec::with_capacity(statements.len());
            for (i, statement) in statements.iter().enumerate() {
                let invalid = |e: DataFusionError| Error::InvalidStatement {
                    statement: i,
                    message: refusal(&e),
                };
                let plan = state
                    .create_logical_plan(&statement.sql)
                    .await
                    .map_err(invalid)?;
                options.verify_plan(&plan).map_err(invalid)?;
                let types = plan.get_parameter_types().map_err(invalid)?;
                plans.push((plan, types));
            }
            Ok::<_, Error>(plans)
        })??;
        Ok(BundledSql {
            context,
            config,
            plans,
        })
    }

    pub fn config(&self) -> &SqlConfig {
        &self.config
    }

    /// Binds the query's parameters (refusing a bad one now) and returns the query to run.
    pub fn query(self: &Arc<Self>, body: &Map<String, Value>) -> Result<SqlQuery> {
        let values = self.config.bind(body)?;
        let this = self.clone();
        Ok(SqlQuery::new(async move {
            SQL.run(async move { this.run(values).await }).await?
        }))
    }

    async fn run(&self, values: Vec<ParamValue>) -> Result<SqlAnswer> {
        let mut answer = SqlAnswer::Updated(0);
        for (i, (statement, (plan, types))) in
            self.config.statements.iter().zip(&self.plans).enumerate()
        {
            let rejected = |e: DataFusionError| Error::StatementRejected {
                statement: i,
                message: refusal(&e),
            };
            let mut scalars = Vec::with_capacity(statement.params.len());
            for (k, value) in self
                .config
                .placeholder_values(statement, &values)
                .into_iter()
                .enumerate()
            {
                let scalar = scalar(value);
                let scalar = match types.get(&format!("${}", k + 1)) {
                    Some(Some(wanted)) if wanted != &scalar.data_type() => {
                        scalar.cast_to(wanted).map_err(|e| Error::Parameter {
                            name: statement.params[k].clone(),
                            message: format!(
                                "cannot be used as {wanted} in statement {i}: {}",
                                refusal(&e)
                            ),
                        })?
                    }
                    _ => scalar,
                };
                scalars.push(scalar);
            }
            let plan = plan
                .clone()
                .with_param_values(ParamValues::from(scalars))
                .map_err(rejected)?;
            let frame = self
                .context
                .execute_logical_plan(plan)
                .await
                .map_err(rejected)?;
            let schema = frame.schema().as_arrow().clone();
            let batches = frame.collect().await.map_err(rejected)?;
            answer = rows_answer(&schema, &batches).map_err(rejected)?;
        }
        Ok(answer)
    }
}

/// DataFusion's message without its `Error during planning:` style prefixes repeated.
fn refusal(e: &DataFusionError) -> String {
    e.to_string()
}

fn scalar(value: &ParamValue) -> ScalarValue {
    match value {
        ParamValue::Null(key_type) => match key_type {
            KeyType::String => ScalarValue::Utf8(None),
            KeyType::Int64 => ScalarValue::Int64(None),
            KeyType::Float64 => ScalarValue::Float64(None),
            KeyType::Boolean => ScalarValue::Boolean(None),
            KeyType::Date => ScalarValue::Date32(None),
            KeyType::Timestamp => ScalarValue::TimestampMicrosecond(None, Some("UTC".into())),
        },
        ParamValue::Str(s) => ScalarValue::Utf8(Some(s.clone())),
        ParamValue::Int(i) => ScalarValue::Int64(Some(*i)),
        ParamValue::Float(f) => ScalarValue::Float64(Some(*f)),
        ParamValue::Bool(b) => ScalarValue::Boolean(Some(*b)),
        ParamValue::Date(days) => ScalarValue::Date32(Some(*days)),
        ParamValue::Timestamp(micros) => {
            ScalarValue::TimestampMicrosecond(Some(*micros), Some("UTC".into()))
        }
    }
}

/// The rows of a query's result, rendered as [`crate::sql`] says.
fn rows_answer(
    schema: &arrow_schema::Schema,
    batches: &[RecordBatch],
) -> std::result::Result<SqlAnswer, DataFusionError> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| SqlColumn {
            name: f.name().clone(),
            type_name: pg_type_name(f.data_type()),
        })
        .collect();
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut rows: Vec<Vec<Option<String>>> = Vec::with_capacity(total);
    let options = FormatOptions::default();
    for batch in batches {
        let start = rows.len();
        rows.extend((0..batch.num_rows()).map(|_| Vec::with_capacity(batch.num_columns())));
        for array in batch.columns() {
            let formatter = ArrayFormatter::try_new(array.as_ref(), &options)?;
            for row in 0..batch.num_rows() {
                let text = array
                    .is_valid(row)
                    .then(|| render(array.as_ref(), row, &formatter));
                rows[start + row].push(text);
            }
        }
    }
    Ok(SqlAnswer::Rows { columns, rows })
}

/// One value, as PostgreSQL's side renders the same type ([`crate::sql`]); other types as
/// Arrow displays them.
fn render(array: &dyn Array, row: usize, formatter: &ArrayFormatter<'_>) -> String {
    match array.data_type() {
        DataType::Float64 => render_float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Float32 => render_float32(array.as_primitive::<Float32Type>().value(row)),
        DataType::Boolean => render_bool(array.as_boolean().value(row)),
        DataType::Date32 => render_date(i64::from(array.as_primitive::<Date32Type>().value(row))),
        DataType::Date64 => render_date(
            array
                .as_primitive::<Date64Type>()
                .value(row)
                .div_euclid(86_400_000),
        ),
        DataType::Timestamp(unit, _) => {
            let micros = match unit {
                TimeUnit::Second => array
                    .as_primitive::<TimestampSecondType>()
                    .value(row)
                    .saturating_mul(1_000_000),
                TimeUnit::Millisecond => array
                    .as_primitive::<TimestampMillisecondType>()
                    .value(row)
                    .saturating_mul(1000),
                TimeUnit::Microsecond => {
                    array.as_primitive::<TimestampMicrosecondType>().value(row)
                }
                TimeUnit::Nanosecond => array
                    .as_primitive::<TimestampNanosecondType>()
                    .value(row)
                    .div_euclid(1000),
            };
            render_timestamp(micros)
        }
        _ => formatter.value(row).to_string(),
    }
}

/// The PostgreSQL name of the type an Arrow column would have there.
fn pg_type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "int2",
        DataType::Int32 | DataType::UInt16 => "int4",
        DataType::Int64 | DataType::UInt32 => "int8",
        DataType::UInt64 | DataType::Decimal32(..) | DataType::Decimal64(..) => "numeric",
        DataType::Decimal128(..) | DataType::Decimal256(..) => "numeric",
        DataType::Float16 | DataType::Float32 => "float4",
        DataType::Float64 => "float8",
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text",
        DataType::Boolean => "bool",
        DataType::Date32 | DataType::Date64 => "date",
        DataType::Timestamp(_, Some(_)) => "timestamptz",
        DataType::Timestamp(_, None) => "timestamp",
        DataType::Time32(_) | DataType::Time64(_) => "time",
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea",
        DataType::Null => "unknown",
        other => return other.to_string().to_lowercase(),
    }
    .to_owned()
}
