//! Reading the logs back: the stored records as the tables `queries`, `auth` and `admin`, which
//! [`LogReader::query`] runs SQL over with DataFusion, and the last records of a stream as they
//! are stored ([`LogReader::tail`], [`LogReader::objects`]).
//!
//! Each table is a [`LogTable`]: the record's fields with fixed types whatever the store holds
//! (an empty store is an empty table, not an error about a schema), then the partition columns
//! of the object layout: `service` (the folder's, for `queries`; the record's for the others),
//! `date` and `hour`. A scan lists the stream's objects (under `service=<id>/date=<d>/` only,
//! when the query fixes them), keeps those whose partition values pass the query's filters on
//! `service`, `date` and `hour`, and parses their JSON lines into the columns the query reads.
//!
//! The payloads (`context`, `inputs`, `outputs`) differ from endpoint to endpoint, and one cut
//! to the payload cap is a string where the others are objects: no column type fits them all
//! (DataFusion's own JSON reader infers one from a sample and then fails on a record that
//! disagrees). They are JSON text columns, marked with [`JSON_COLUMN`] metadata; the SQL
//! function `json_get(json, '/json/pointer')` reads into them. `timing` is a map from step to
//! microseconds (`timing.total`).

use crate::error::{Error, Result};
use crate::record::Stream;
use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate};
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanBuilder, Date32Builder, Int32Builder, Int64Builder, MapBuilder,
    MapFieldNames, RecordBatch, RecordBatchOptions, StringArray, StringBuilder,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, DataFusionError, ScalarValue};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::expr_rewriter::unnormalize_col;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, TableProviderFilterPushDown, TableType, Volatility,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::{GetOptions, ObjectMeta, ObjectStore};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;

/// Field metadata key marking a column that holds JSON text (`context`, `inputs`, `outputs`):
/// [`QueryOutput::write_json_lines`] writes its values as JSON, not as strings.
pub const JSON_COLUMN: &str = "apinode.json";

/// The columns of every log table, in order.
const COLUMNS: [Column; 20] = [
    Column::Time,
    Column::RequestId,
    Column::Item,
    Column::Service,
    Column::Endpoint,
    Column::EndpointKind,
    Column::Generation,
    Column::DeploymentId,
    Column::ApiKeyId,
    Column::ClientAddress,
    Column::Status,
    Column::ErrorType,
    Column::ErrorMessage,
    Column::Truncated,
    Column::Context,
    Column::Inputs,
    Column::Outputs,
    Column::Timing,
    Column::Date,
    Column::Hour,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Time,
    RequestId,
    Item,
    Service,
    Endpoint,
    EndpointKind,
    Generation,
    DeploymentId,
    ApiKeyId,
    ClientAddress,
    Status,
    ErrorType,
    ErrorMessage,
    Truncated,
    Context,
    Inputs,
    Outputs,
    Timing,
    Date,
    Hour,
}

impl Column {
    fn name(self) -> &'static str {
        match self {
            Column::Time => "time",
            Column::RequestId => "request_id",
            Column::Item => "item",
            Column::Service => "service",
            Column::Endpoint => "endpoint",
            Column::EndpointKind => "endpoint_kind",
            Column::Generation => "generation",
            Column::DeploymentId => "deployment_id",
            Column::ApiKeyId => "api_key_id",
            Column::ClientAddress => "client_address",
            Column::Status => "status",
            Column::ErrorType => "error_type",
            Column::ErrorMessage => "error_message",
            Column::Truncated => "truncated",
            Column::Context => "context",
            Column::Inputs => "inputs",
            Column::Outputs => "outputs",
            Column::Timing => "timing",
            Column::Date => "date",
            Column::Hour => "hour",
        }
    }

    fn field(self) -> Field {
        let data_type = match self {
            Column::Time => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Column::Item => DataType::Int64,
            Column::Status | Column::Hour => DataType::Int32,
            Column::Truncated => DataType::Boolean,
            Column::Timing => timing_type(),
            Column::Date => DataType::Date32,
            _ => DataType::Utf8,
        };
        let field = Field::new(self.name(), data_type, true);
        match self {
            Column::Context | Column::Inputs | Column::Outputs => field.with_metadata(
                [(JSON_COLUMN.to_owned(), "true".to_owned())]
                    .into_iter()
                    .collect(),
            ),
            _ => field,
        }
    }

    /// Whether the object's path gives the value (the partition columns of the stream).
    fn in_path(self, stream: Stream) -> bool {
        match self {
            Column::Date | Column::Hour => true,
            Column::Service => stream == Stream::Queries,
            _ => false,
        }
    }
}

/// `timing`: a map from step name to microseconds.
fn timing_type() -> DataType {
    let entries = Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![
            Field::new("keys", DataType::Utf8, false),
            Field::new("values", DataType::Int64, true),
        ])),
        false,
    );
    DataType::Map(Arc::new(entries), false)
}

/// The schema of the log tables.
pub fn log_schema() -> SchemaRef {
    Arc::new(Schema::new(
        COLUMNS.iter().map(|c| c.field()).collect::<Vec<_>>(),
    ))
}

/// One stored log object (a sealed segment), with what its path says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogObject {
    /// Its path in the store (`service=<id>/date=<d>/hour=<h>/<node>-<seq>.jsonl`).
    pub path: String,
    /// The folder's service (the `queries` stream only).
    pub service: Option<String>,
    pub date: NaiveDate,
    pub hour: u32,
    /// The node that wrote it.
    pub node: String,
    /// The segment's number: when the node opened it, in microseconds since the epoch.
    pub sequence: u64,
    pub size: u64,
}

impl LogObject {
    /// Oldest first: by hour, then by when the segment was opened.
    fn order(&self) -> (NaiveDate, u32, u64, &str) {
        (self.date, self.hour, self.sequence, &self.node)
    }
}

/// The folder a stream's objects are under (`None`: the store's root, for queries).
fn stream_folder(stream: Stream) -> Option<&'static str> {
    match stream {
        Stream::Queries => None,
        Stream::Auth => Some("_auth"),
        Stream::Admin => Some("_admin"),
    }
}

/// The object at `location`, if it is one of `stream`'s in the layout.
fn parse_object(stream: Stream, meta: &ObjectMeta) -> Option<LogObject> {
    let path = meta.location.as_ref();
    let mut parts = path.split('/');
    let service = match stream_folder(stream) {
        None => Some(parts.next()?.strip_prefix("service=")?.to_owned()),
        Some(folder) => {
            if parts.next()? != folder {
                return None;
            }
            None
        }
    };
    let date = NaiveDate::parse_from_str(parts.next()?.strip_prefix("date=")?, "%Y-%m-%d").ok()?;
    let hour: u32 = parts.next()?.strip_prefix("hour=")?.parse().ok()?;
    let name = parts.next()?.strip_suffix(".jsonl")?;
    if parts.next().is_some() || hour > 23 || service.as_deref() == Some("") {
        return None;
    }
    let (node, sequence) = match name.rsplit_once('-') {
        Some((node, seq)) if !node.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()) => {
            (node, seq.parse().unwrap_or(0))
        }
        _ => (name, 0),
    };
    Some(LogObject {
        path: path.to_owned(),
        service,
        date,
        hour,
        node: node.to_owned(),
        sequence,
        size: meta.size,
    })
}

fn unavailable(e: object_store::Error) -> Error {
    Error::StoreUnavailable {
        message: e.to_string(),
    }
}

/// Every object of `stream` under `prefix` (relative to the store), in no order.
async fn list(
    store: &Arc<dyn ObjectStore>,
    stream: Stream,
    prefix: &str,
) -> Result<Vec<LogObject>> {
    let prefix = match StorePath::parse(prefix) {
        Ok(prefix) => prefix,
        // A value no object path can hold (`service = 'a/b'`): nothing is there.
        Err(_) => return Ok(Vec::new()),
    };
    let mut listing = store.list(Some(&prefix));
    let mut objects = Vec::new();
    while let Some(meta) = listing.next().await {
        match meta {
            Ok(meta) => objects.extend(parse_object(stream, &meta)),
            Err(object_store::Error::NotFound { .. }) => break,
            Err(e) => return Err(unavailable(e)),
        }
    }
    Ok(objects)
}

/// The folders right under `prefix` whose names start with `key=`, as their values.
async fn folders(store: &Arc<dyn ObjectStore>, prefix: &str, key: &str) -> Result<Vec<String>> {
    let prefix = match prefix {
        "" => None,
        p => match StorePath::parse(p) {
            Ok(p) => Some(p),
            Err(_) => return Ok(Vec::new()),
        },
    };
    let listing = match store.list_with_delimiter(prefix.as_ref()).await {
        Ok(listing) => listing,
        Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(unavailable(e)),
    };
    let wanted = format!("{key}=");
    Ok(listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename()?.strip_prefix(&wanted).map(str::to_owned))
        .collect())
}

fn join(prefix: &str, part: &str) -> String {
    if prefix.is_empty() {
        part.to_owned()
    } else {
        format!("{prefix}/{part}")
    }
}

/// Reads one object's bytes.
async fn read(store: &Arc<dyn ObjectStore>, path: &str) -> Result<bytes::Bytes> {
    let location = StorePath::parse(path).map_err(|e| Error::StoreUnavailable {
        message: format!("`{path}`: {e}"),
    })?;
    let got = store
        .get_opts(&location, GetOptions::default())
        .await
        .map_err(unavailable)?;
    got.bytes().await.map_err(unavailable)
}

/// The audit logs of a store, as SQL tables and as JSON lines.
#[derive(Clone)]
pub struct LogReader {
    store: Arc<dyn ObjectStore>,
    context: SessionContext,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader")
            .field("store", &self.store.to_string())
            .finish_non_exhaustive()
    }
}

/// A query's answer: its columns (also when no row matched) and its rows.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl LogReader {
    /// A reader of the logs in `store` (as [`crate::open_store`] opens it): a DataFusion session
    /// with the tables `queries`, `auth` and `admin`, the `information_schema` (`SHOW TABLES`,
    /// `SHOW COLUMNS FROM queries`) and the `json_get` function.
    pub fn new(store: Arc<dyn ObjectStore>) -> Result<LogReader> {
        let context = SessionContext::new_with_config(
            SessionConfig::new()
                .with_information_schema(true)
                .with_default_catalog_and_schema("apinode", "logs"),
        );
        for stream in [Stream::Queries, Stream::Auth, Stream::Admin] {
            let table = LogTable::new(store.clone(), stream);
            context
                .register_table(stream.as_str(), Arc::new(table))
                .map_err(|e| Error::QueryFailed {
                    message: format!("cannot register table `{}`: {e}", stream.as_str()),
                })?;
        }
        context.register_udf(ScalarUDF::from(JsonGet::new()));
        Ok(LogReader { store, context })
    }

    /// The DataFusion session, for callers that build their own plans or register more tables.
    pub fn context(&self) -> &SessionContext {
        &self.context
    }

    /// Runs one SQL statement and collects its answer.
    pub async fn query(&self, sql: &str) -> Result<QueryOutput> {
        let frame = self
            .context
            .sql(sql)
            .await
            .map_err(|e| from_datafusion(e, true))?;
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame
            .collect()
            .await
            .map_err(|e| from_datafusion(e, false))?;
        Ok(QueryOutput { schema, batches })
    }

    /// The objects of `stream` (of one service's queries when `service` is given) dated
    /// `since` or later, oldest first.
    pub async fn objects(
        &self,
        stream: Stream,
        service: Option<&str>,
        since: Option<NaiveDate>,
    ) -> Result<Vec<LogObject>> {
        let mut objects = Vec::new();
        for base in self.bases(stream, service).await? {
            let Some(since) = since else {
                objects.extend(list(&self.store, stream, &base).await?);
                continue;
            };
            for date in folders(&self.store, &base, "date").await? {
                if NaiveDate::parse_from_str(&date, "%Y-%m-%d").is_ok_and(|d| d >= since) {
                    let folder = join(&base, &format!("date={date}"));
                    objects.extend(list(&self.store, stream, &folder).await?);
                }
            }
        }
        objects.sort_by(|a, b| a.order().cmp(&b.order()));
        Ok(objects)
    }

    /// The folders holding the dates of `stream`: `_auth`, `_admin`, or one per service.
    async fn bases(&self, stream: Stream, service: Option<&str>) -> Result<Vec<String>> {
        Ok(match (stream_folder(stream), service) {
            (Some(folder), _) => vec![folder.to_owned()],
            (None, Some(service)) => vec![format!("service={service}")],
            (None, None) => folders(&self.store, "", "service")
                .await?
                .into_iter()
                .map(|s| format!("service={s}"))
                .collect(),
        })
    }

    /// The lines of one object, as stored (one JSON record each).
    pub async fn lines(&self, object: &LogObject) -> Result<Vec<String>> {
        let bytes = read(&self.store, &object.path).await?;
        let text = std::str::from_utf8(&bytes).map_err(|e| Error::CorruptLog {
            object: object.path.clone(),
            line: 0,
            message: format!("not UTF-8: {e}"),
        })?;
        Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// The last `n` records of `stream` (of one service's queries when `service` is given)
    /// dated before `before` (all when `None`), as stored, newest last: from the newest
    /// objects, listing a day at a time until there are `n`.
    pub async fn tail(
        &self,
        stream: Stream,
        service: Option<&str>,
        n: usize,
        before: Option<NaiveDate>,
    ) -> Result<Vec<String>> {
        let bases = self.bases(stream, service).await?;
        let mut dates = BTreeSet::new();
        for base in &bases {
            for date in folders(&self.store, base, "date").await? {
                if let Ok(day) = NaiveDate::parse_from_str(&date, "%Y-%m-%d")
                    && before.is_none_or(|before| day < before)
                {
                    dates.insert(date);
                }
            }
        }
        // Newest first: the last `n` lines are the first `n` in this order.
        let mut lines: Vec<String> = Vec::new();
        for date in dates.iter().rev() {
            if lines.len() >= n {
                break;
            }
            let mut objects = Vec::new();
            for base in &bases {
                let folder = join(base, &format!("date={date}"));
                objects.extend(list(&self.store, stream, &folder).await?);
            }
            objects.sort_by(|a, b| a.order().cmp(&b.order()));
            let older = self.last_lines(&objects, n - lines.len()).await?;
            lines.extend(older.into_iter().rev());
        }
        lines.reverse();
        Ok(lines)
    }

    /// The last `n` lines of `objects` (oldest first, as [`LogReader::objects`] gives them),
    /// newest last, reading only the newest objects that hold them.
    pub async fn last_lines(&self, objects: &[LogObject], n: usize) -> Result<Vec<String>> {
        let mut newest_first = Vec::new();
        for object in objects.iter().rev() {
            if newest_first.len() >= n {
                break;
            }
            let lines = self.lines(object).await?;
            newest_first.extend(lines.into_iter().rev().take(n - newest_first.len()));
        }
        newest_first.reverse();
        Ok(newest_first)
    }
}

/// A DataFusion error as the crate's: the reader's own errors come back as they were raised.
fn from_datafusion(error: DataFusionError, planning: bool) -> Error {
    if let DataFusionError::External(inner) = error.find_root()
        && let Some(own) = inner.downcast_ref::<Error>()
    {
        match own {
            Error::CorruptLog {
                object,
                line,
                message,
            } => {
                return Error::CorruptLog {
                    object: object.clone(),
                    line: *line,
                    message: message.clone(),
                };
            }
            Error::StoreUnavailable { message } => {
                return Error::StoreUnavailable {
                    message: message.clone(),
                };
            }
            _ => {}
        }
    }
    match error.find_root() {
        DataFusionError::ObjectStore(e) => Error::StoreUnavailable {
            message: e.to_string(),
        },
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_) => Error::InvalidQuery {
            message: error.find_root().to_string(),
        },
        _ if planning => Error::InvalidQuery {
            message: error.to_string(),
        },
        _ => Error::QueryFailed {
            message: error.to_string(),
        },
    }
}

fn external(error: Error) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}

/// One stream of the log as a table.
#[derive(Debug)]
pub struct LogTable {
    store: Arc<dyn ObjectStore>,
    stream: Stream,
    schema: SchemaRef,
}

impl LogTable {
    pub fn new(store: Arc<dyn ObjectStore>, stream: Stream) -> LogTable {
        LogTable {
            store,
            stream,
            schema: log_schema(),
        }
    }

    /// The columns the object paths give, in the layout's order.
    fn partition_columns(&self) -> Vec<Column> {
        COLUMNS
            .iter()
            .copied()
            .filter(|c| c.in_path(self.stream))
            .collect()
    }

    /// Whether `filter` reads only partition columns (so objects can be skipped on it).
    fn on_partitions(&self, filter: &Expr) -> bool {
        let partitions = self.partition_columns();
        let refs = filter.column_refs();
        !refs.is_empty()
            && refs
                .iter()
                .all(|c| partitions.iter().any(|p| p.name() == c.name))
    }

    /// The listing prefix: the stream's folder, then `service=<s>` and `date=<d>` as long as
    /// the filters fix them.
    fn prefix(&self, filters: &[Expr]) -> String {
        let mut prefix = stream_folder(self.stream).unwrap_or_default().to_owned();
        for column in self.partition_columns() {
            let Some(value) = filters.iter().find_map(|f| equal_to(f, column)) else {
                break;
            };
            prefix = join(&prefix, &format!("{}={value}", column.name()));
        }
        prefix
    }

    /// The objects whose partition values pass `filters` (the ones on partition columns).
    async fn objects(&self, state: &dyn Session, filters: &[Expr]) -> Result<Vec<LogObject>> {
        let objects = list(&self.store, self.stream, &self.prefix(filters)).await?;
        let filters: Vec<Expr> = filters
            .iter()
            .filter(|f| self.on_partitions(f))
            .map(|f| unnormalize_col(f.clone()))
            .collect();
        let Some(filter) = filters.into_iter().reduce(Expr::and) else {
            return Ok(objects);
        };
        let columns = self.partition_columns();
        let schema = Arc::new(Schema::new(
            columns.iter().map(|c| c.field()).collect::<Vec<_>>(),
        ));
        let values: Vec<ArrayRef> = columns
            .iter()
            .map(|&c| {
                let mut builder = Builder::new(c);
                for object in &objects {
                    builder.append_partition(c, object);
                }
                builder.finish()
            })
            .collect();
        let batch =
            RecordBatch::try_new(schema.clone(), values).map_err(|e| Error::QueryFailed {
                message: format!("partition values: {e}"),
            })?;
        let planned = DFSchema::try_from(schema.as_ref().clone())
            .and_then(|s| state.create_physical_expr(filter, &s))
            .and_then(|e| e.evaluate(&batch))
            .and_then(|v| v.into_array(batch.num_rows()));
        let keep = planned.map_err(|e| from_datafusion(e, false))?;
        let keep = keep
            .as_any()
            .downcast_ref::<datafusion::arrow::array::BooleanArray>()
            .ok_or_else(|| Error::InvalidQuery {
                message: "a filter on service, date or hour is not a condition".into(),
            })?;
        Ok(objects
            .into_iter()
            .enumerate()
            .filter(|(i, _)| keep.is_valid(*i) && keep.value(*i))
            .map(|(_, o)| o)
            .collect())
    }
}

/// The value `filter` fixes `column` to (`column = 'literal'`), as it appears in a path.
fn equal_to(filter: &Expr, column: Column) -> Option<String> {
    let Expr::BinaryExpr(BinaryExpr {
        left,
        op: Operator::Eq,
        right,
    }) = filter
    else {
        return None;
    };
    let ((Expr::Column(c), Expr::Literal(value, _)) | (Expr::Literal(value, _), Expr::Column(c))) =
        (left.as_ref(), right.as_ref())
    else {
        return None;
    };
    if c.name != column.name() {
        return None;
    }
    match (column, value) {
        (Column::Service, ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s))) => {
            Some(s.clone())
        }
        (Column::Date, ScalarValue::Date32(Some(days))) => {
            let date = NaiveDate::from_num_days_from_ce_opt(days + EPOCH_DAYS_FROM_CE)?;
            Some(date.format("%Y-%m-%d").to_string())
        }
        _ => None,
    }
}

/// Days from 0001-01-01 to 1970-01-01 (Date32 counts from the latter).
const EPOCH_DAYS_FROM_CE: i32 = 719_163;

#[async_trait]
impl TableProvider for LogTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.on_partitions(f) {
                    // Objects are skipped on it; DataFusion still applies it to the rows.
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let columns: Vec<Column> = match projection {
            Some(indexes) => indexes.iter().map(|&i| COLUMNS[i]).collect(),
            None => COLUMNS.to_vec(),
        };
        let schema = match projection {
            Some(indexes) => Arc::new(self.schema.project(indexes)?),
            None => self.schema.clone(),
        };
        let objects = self.objects(state, filters).await.map_err(external)?;
        // The objects dealt over the session's partitions, largest first, so they read in
        // parallel; at least one partition, so an empty store is an empty table.
        let partitions = state.config().target_partitions().max(1);
        let mut groups: Vec<Vec<LogObject>> =
            vec![Vec::new(); partitions.min(objects.len()).max(1)];
        let mut sized = objects;
        sized.sort_by_key(|o| std::cmp::Reverse(o.size));
        for (i, object) in sized.into_iter().enumerate() {
            let len = groups.len();
            groups[i % len].push(object);
        }
        let streams: Vec<Arc<dyn PartitionStream>> = groups
            .into_iter()
            .map(|objects| {
                Arc::new(ObjectsStream {
                    store: self.store.clone(),
                    stream: self.stream,
                    schema: schema.clone(),
                    columns: columns.clone(),
                    objects,
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        Ok(Arc::new(StreamingTableExec::try_new(
            schema,
            streams,
            None,
            Vec::new(),
            false,
            limit,
        )?))
    }
}

/// Some of a table's objects, read one after the other into batches of `columns`.
#[derive(Debug)]
struct ObjectsStream {
    store: Arc<dyn ObjectStore>,
    stream: Stream,
    schema: SchemaRef,
    columns: Vec<Column>,
    objects: Vec<LogObject>,
}

impl PartitionStream for ObjectsStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batch_size = ctx.session_config().batch_size().max(1);
        let store = self.store.clone();
        let (schema, columns, stream) = (self.schema.clone(), self.columns.clone(), self.stream);
        let batches = futures_util::stream::iter(self.objects.clone())
            .then(move |object| {
                let store = store.clone();
                async move {
                    let bytes = read(&store, &object.path).await?;
                    Ok::<_, Error>((object, bytes))
                }
            })
            .map(move |read| {
                let (object, bytes) = read?;
                decode(&schema, &columns, stream, &object, &bytes, batch_size)
            })
            .map_ok(|batches| futures_util::stream::iter(batches.into_iter().map(Ok)))
            .map_err(external)
            .try_flatten();
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), batches))
    }
}

/// One stored line. Fields a record leaves out are `None`; fields this reader does not know
/// (a newer writer's) are ignored.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    request_id: Option<Cow<'a, str>>,
    #[serde(default)]
    item: Option<i64>,
    #[serde(borrow, default)]
    service: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    endpoint: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    endpoint_kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    generation: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    deployment_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    api_key_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    client_address: Option<Cow<'a, str>>,
    #[serde(default)]
    status: Option<i32>,
    #[serde(borrow, default)]
    error_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    error_message: Option<Cow<'a, str>>,
    #[serde(default)]
    truncated: Option<bool>,
    #[serde(borrow, default)]
    context: Option<&'a RawValue>,
    #[serde(borrow, default)]
    inputs: Option<&'a RawValue>,
    #[serde(borrow, default)]
    outputs: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timing: Option<BTreeMap<Cow<'a, str>, i64>>,
}

/// Parses one object's lines into batches of at most `batch_size` rows of `columns`.
fn decode(
    schema: &SchemaRef,
    columns: &[Column],
    stream: Stream,
    object: &LogObject,
    bytes: &[u8],
    batch_size: usize,
) -> Result<Vec<RecordBatch>> {
    let corrupt = |line: usize, message: String| Error::CorruptLog {
        object: object.path.clone(),
        line,
        message,
    };
    let mut lines = Vec::new();
    for (i, text) in bytes.split(|&b| b == b'\n').enumerate() {
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line: Line<'_> =
            serde_json::from_slice(text).map_err(|e| corrupt(i + 1, e.to_string()))?;
        let time = match &line.time {
            Some(time) => Some(
                DateTime::parse_from_rfc3339(time)
                    .map_err(|e| corrupt(i + 1, format!("`time` {time:?}: {e}")))?
                    .timestamp_micros(),
            ),
            None => None,
        };
        lines.push((time, line));
    }
    let mut batches = Vec::new();
    for chunk in lines.chunks(batch_size) {
        let arrays: Vec<ArrayRef> = columns
            .iter()
            .map(|&column| {
                let mut builder = Builder::new(column);
                if column.in_path(stream) {
                    for _ in chunk {
                        builder.append_partition(column, object);
                    }
                } else {
                    for (time, line) in chunk {
                        builder.append(column, *time, line);
                    }
                }
                builder.finish()
            })
            .collect();
        let options = RecordBatchOptions::new().with_row_count(Some(chunk.len()));
        let batch =
            RecordBatch::try_new_with_options(schema.clone(), arrays, &options).map_err(|e| {
                Error::QueryFailed {
                    message: format!("{}: {e}", object.path),
                }
            })?;
        batches.push(batch);
    }
    Ok(batches)
}

/// Builds one column.
enum Builder {
    Text(StringBuilder),
    Time(TimestampMicrosecondBuilder),
    Int64(Int64Builder),
    Int32(Int32Builder),
    Bool(BooleanBuilder),
    Date(Date32Builder),
    Timing(Box<MapBuilder<StringBuilder, Int64Builder>>),
}

fn text<'a>(value: &'a Option<Cow<'_, str>>) -> Option<&'a str> {
    value.as_deref()
}

impl Builder {
    fn new(column: Column) -> Builder {
        match column.field().data_type() {
            DataType::Timestamp(..) => {
                Builder::Time(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
            }
            DataType::Int64 => Builder::Int64(Int64Builder::new()),
            DataType::Int32 => Builder::Int32(Int32Builder::new()),
            DataType::Boolean => Builder::Bool(BooleanBuilder::new()),
            DataType::Date32 => Builder::Date(Date32Builder::new()),
            DataType::Map(..) => Builder::Timing(Box::new(MapBuilder::new(
                Some(MapFieldNames {
                    entry: "entries".into(),
                    key: "keys".into(),
                    value: "values".into(),
                }),
                StringBuilder::new(),
                Int64Builder::new(),
            ))),
            _ => Builder::Text(StringBuilder::new()),
        }
    }

    fn append(&mut self, column: Column, time: Option<i64>, line: &Line<'_>) {
        match self {
            Builder::Text(b) => b.append_option(match column {
                Column::RequestId => text(&line.request_id),
                Column::Service => text(&line.service),
                Column::Endpoint => text(&line.endpoint),
                Column::EndpointKind => text(&line.endpoint_kind),
                Column::Generation => text(&line.generation),
                Column::DeploymentId => text(&line.deployment_id),
                Column::ApiKeyId => text(&line.api_key_id),
                Column::ClientAddress => text(&line.client_address),
                Column::ErrorType => text(&line.error_type),
                Column::ErrorMessage => text(&line.error_message),
                Column::Context => line.context.map(RawValue::get),
                Column::Inputs => line.inputs.map(RawValue::get),
                Column::Outputs => line.outputs.map(RawValue::get),
                _ => None,
            }),
            Builder::Time(b) => b.append_option(time),
            Builder::Int64(b) => b.append_option(line.item),
            Builder::Int32(b) => b.append_option(line.status),
            // Left out of a record when false.
            Builder::Bool(b) => b.append_value(line.truncated.unwrap_or(false)),
            Builder::Date(b) => b.append_null(),
            Builder::Timing(b) => match &line.timing {
                Some(timing) => {
                    for (step, micros) in timing {
                        b.keys().append_value(step);
                        b.values().append_value(*micros);
                    }
                    // Cannot fail: every key has its value.
                    let _ = b.append(true);
                }
                None => {
                    let _ = b.append(false);
                }
            },
        }
    }

    fn append_partition(&mut self, column: Column, object: &LogObject) {
        match (self, column) {
            (Builder::Text(b), Column::Service) => b.append_option(object.service.as_deref()),
            (Builder::Date(b), Column::Date) => {
                b.append_value(object.date.num_days_from_ce() - EPOCH_DAYS_FROM_CE)
            }
            (Builder::Int32(b), Column::Hour) => b.append_value(object.hour as i32),
            (builder, _) => builder.append_null(),
        }
    }

    fn append_null(&mut self) {
        match self {
            Builder::Text(b) => b.append_null(),
            Builder::Time(b) => b.append_null(),
            Builder::Int64(b) => b.append_null(),
            Builder::Int32(b) => b.append_null(),
            Builder::Bool(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Timing(b) => {
                let _ = b.append(false);
            }
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Builder::Text(mut b) => Arc::new(b.finish()),
            Builder::Time(mut b) => Arc::new(b.finish()),
            Builder::Int64(mut b) => Arc::new(b.finish()),
            Builder::Int32(mut b) => Arc::new(b.finish()),
            Builder::Bool(mut b) => Arc::new(b.finish()),
            Builder::Date(mut b) => Arc::new(b.finish()),
            Builder::Timing(mut b) => Arc::new(b.finish()),
        }
    }
}

/// `json_get(json, pointer)`: the value at a JSON pointer (`/features/age`, `/0/id`) in a JSON
/// text column, as text: a string's contents, a number or boolean as written, an object or
/// array as JSON; NULL where the text is not JSON or the pointer leads nowhere. `CAST` the
/// result for numbers: `CAST(json_get(inputs, '/features/age') AS DOUBLE) > 40`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonGet {
    signature: Signature,
}

impl JsonGet {
    fn new() -> JsonGet {
        JsonGet {
            signature: Signature::string(2, Volatility::Immutable),
        }
    }
}

/// The value at `pointer` in `json`, as `json_get` answers it.
fn json_get(json: &str, pointer: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    match value.pointer(pointer)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

impl ScalarUDFImpl for JsonGet {
    fn name(&self) -> &str {
        "json_get"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [json, pointer] = arrays.as_slice() else {
            return Err(DataFusionError::Plan(
                "json_get takes two arguments: a JSON text and a JSON pointer".into(),
            ));
        };
        let json = datafusion::arrow::compute::cast(json, &DataType::Utf8)?;
        let pointer = datafusion::arrow::compute::cast(pointer, &DataType::Utf8)?;
        let (json, pointer) = (
            json.as_any().downcast_ref::<StringArray>(),
            pointer.as_any().downcast_ref::<StringArray>(),
        );
        let (Some(json), Some(pointer)) = (json, pointer) else {
            return Err(DataFusionError::Plan(
                "json_get takes text arguments".into(),
            ));
        };
        let values: StringArray = json
            .iter()
            .zip(pointer.iter())
            .map(|(json, pointer)| json_get(json?, pointer?))
            .collect();
        if scalar {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &values, 0,
            )?));
        }
        Ok(ColumnarValue::Array(Arc::new(values)))
    }
}

impl QueryOutput {
    /// The rows as a text table with a header (also when there are no rows).
    pub fn to_table(&self) -> Result<String> {
        datafusion::arrow::util::pretty::pretty_format_batches_with_schema(
            self.schema.clone(),
            &self.batches,
        )
        .map(|table| table.to_string())
        .map_err(|e| Error::QueryFailed {
            message: format!("cannot format the answer: {e}"),
        })
    }

    /// The rows as JSON lines, one object per row; NULLs are left out, and JSON text columns
    /// ([`JSON_COLUMN`]) are written as the JSON they hold.
    pub fn write_json_lines(&self, out: &mut dyn Write) -> Result<()> {
        use datafusion::arrow::json::writer::{LineDelimited, WriterBuilder};
        let mut writer = WriterBuilder::new()
            .with_encoder_factory(Arc::new(RawJsonEncoders))
            .build::<_, LineDelimited>(out);
        for batch in &self.batches {
            writer.write(batch).map_err(write_error)?;
        }
        writer.finish().map_err(write_error)
    }

    /// The rows as CSV with a header; nested values (`timing`) as text.
    pub fn write_csv(&self, out: &mut dyn Write) -> Result<()> {
        let mut writer = datafusion::arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(out);
        if self.batches.is_empty() {
            // A header even without rows.
            let empty = RecordBatch::new_empty(self.schema.clone());
            return writer.write(&flat(&empty)?).map_err(write_error);
        }
        for batch in &self.batches {
            writer.write(&flat(batch)?).map_err(write_error)?;
        }
        Ok(())
    }
}

fn write_error(e: datafusion::arrow::error::ArrowError) -> Error {
    Error::QueryFailed {
        message: format!("cannot write the answer: {e}"),
    }
}

/// `batch` with its nested columns (maps, structs, lists) as text, which CSV can hold.
fn flat(batch: &RecordBatch) -> Result<RecordBatch> {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let mut fields = Vec::new();
    let mut arrays = Vec::new();
    for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
        if !field.data_type().is_nested() {
            fields.push(field.as_ref().clone());
            arrays.push(array.clone());
            continue;
        }
        let options = FormatOptions::default();
        let formatter = ArrayFormatter::try_new(array.as_ref(), &options).map_err(write_error)?;
        let text: StringArray = (0..array.len())
            .map(|i| array.is_valid(i).then(|| formatter.value(i).to_string()))
            .collect();
        fields.push(Field::new(field.name(), DataType::Utf8, true));
        arrays.push(Arc::new(text) as ArrayRef);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(write_error)
}

/// Writes the values of [`JSON_COLUMN`] fields as they are (they are JSON already).
#[derive(Debug)]
struct RawJsonEncoders;

impl datafusion::arrow::json::writer::EncoderFactory for RawJsonEncoders {
    fn make_default_encoder<'a>(
        &self,
        field: &'a datafusion::arrow::datatypes::FieldRef,
        array: &'a dyn Array,
        _options: &'a datafusion::arrow::json::writer::EncoderOptions,
    ) -> std::result::Result<
        Option<datafusion::arrow::json::writer::NullableEncoder<'a>>,
        datafusion::arrow::error::ArrowError,
    > {
        if !field.metadata().contains_key(JSON_COLUMN) {
            return Ok(None);
        }
        let Some(strings) = array.as_any().downcast_ref::<StringArray>() else {
            return Ok(None);
        };
        Ok(Some(datafusion::arrow::json::writer::NullableEncoder::new(
            Box::new(RawJson(strings)),
            strings.nulls().cloned(),
        )))
    }
}

struct RawJson<'a>(&'a StringArray);

impl datafusion::arrow::json::writer::Encoder for RawJson<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        let value = self.0.value(idx);
        // Written by the log (serde_json); anything else is quoted rather than trusted.
        if serde_json::from_str::<serde::de::IgnoredAny>(value).is_ok() {
            out.extend_from_slice(value.as_bytes());
        } else {
            let _ = serde_json::to_writer(out, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn meta(path: &str) -> ObjectMeta {
        ObjectMeta {
            location: StorePath::parse(path).unwrap(),
            last_modified: Utc::now(),
            size: 10,
            e_tag: None,
            version: None,
        }
    }

    #[test]
    fn object_paths_are_read_as_the_layout_says() {
        let object = parse_object(
            Stream::Queries,
            &meta("service=churn/date=2026-12-05/hour=07/node-a-0001767600000000.jsonl"),
        )
        .unwrap();
        assert_eq!(object.service.as_deref(), Some("churn"));
        assert_eq!(object.date, NaiveDate::from_ymd_opt(2026, 12, 5).unwrap());
        assert_eq!((object.hour, object.node.as_str()), (7, "node-a"));
        assert_eq!(object.sequence, 1_767_600_000_000);
        let auth = parse_object(
            Stream::Auth,
            &meta("_auth/date=2026-12-05/hour=23/n-1.jsonl"),
        );
        assert_eq!(auth.unwrap().service, None);
        for other in [
            "_auth/date=2026-12-05/hour=07/n-1.jsonl",
            "service=churn/date=2026-12-05/hour=07/n-1.json",
            "service=churn/date=2026-13-05/hour=07/n-1.jsonl",
            "service=churn/date=2026-12-05/hour=24/n-1.jsonl",
            "service=churn/date=2026-12-05/n-1.jsonl",
            "service=/date=2026-12-05/hour=07/n-1.jsonl",
        ] {
            assert_eq!(parse_object(Stream::Queries, &meta(other)), None, "{other}");
        }
    }

    #[test]
    fn json_get_follows_a_pointer() {
        let json = r#"{"features": {"age": 42, "city": "Paris", "tags": ["a"]}, "n": null}"#;
        assert_eq!(json_get(json, "/features/age").as_deref(), Some("42"));
        assert_eq!(json_get(json, "/features/city").as_deref(), Some("Paris"));
        assert_eq!(
            json_get(json, "/features/tags").as_deref(),
            Some(r#"["a"]"#)
        );
        assert_eq!(json_get(json, "/features/tags/0").as_deref(), Some("a"));
        assert_eq!(json_get(json, "/n"), None);
        assert_eq!(json_get(json, "/missing"), None);
        assert_eq!(json_get("\"cut {\"a\": 1", "/a"), None);
        assert_eq!(json_get(json, "").map(|s| s.starts_with('{')), Some(true));
    }
}
