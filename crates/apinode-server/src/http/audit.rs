//! The server's part of the query audit log (`apinode-audit` does the spool and the uploads):
//! whether a user query is logged (sampling, decided when it arrives, so a skipped query costs
//! one random number), its records built once the answer is computed, and logged at the node's
//! durability before the answer leaves; the auth stream (401s) and the admin stream (admin
//! mutations), logged by a middleware on the router.

use super::{ApiError, AppState};
use crate::config::{AuditSettings, ServicePolicy};
use anyhow::Context;
use apinode_audit::{AuditLog, AuditRecord, Durability, Logged, Payload, Stream};
use apinode_lookup::{JsonRecord, JsonRef};
use apinode_runtime::Action;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The response header carrying a logged query's request id (the record's `request_id`).
pub(crate) static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The TCP peer of a request, put in its extensions by the connection loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub(crate) SocketAddr);

/// The node's audit log and what it logs.
#[derive(Debug)]
pub(crate) struct NodeAudit {
    log: AuditLog,
    durability: Durability,
    deployment_id: Option<String>,
    services: BTreeMap<String, ServicePolicy>,
}

impl NodeAudit {
    /// Opens the store and the spool (uploading what an earlier run left) on the current
    /// tokio runtime.
    pub(crate) async fn open(settings: &AuditSettings) -> anyhow::Result<NodeAudit> {
        let store = apinode_audit::open_store(&settings.store, &settings.options)?;
        let log = AuditLog::open(settings.log.clone(), store)
            .await
            .with_context(|| {
                format!(
                    "cannot open the audit spool {}",
                    settings.log.spool_dir.display()
                )
            })?;
        Ok(NodeAudit {
            log,
            durability: settings.durability,
            deployment_id: settings.deployment_id.clone(),
            services: settings.services.clone(),
        })
    }

    /// Seals what is left and waits up to `timeout` for the uploads; returns whether the
    /// spool emptied (what remains goes at the next start).
    pub(crate) async fn close(&self, timeout: Duration) -> bool {
        self.log.close(timeout).await
    }

    /// The `audit` object of `GET /admin/api/metrics`.
    pub(crate) fn metrics_json(&self) -> Value {
        let m = self.log.metrics();
        json!({
            "queued": m.queued,
            "written": m.written,
            "uploaded": m.uploaded,
            "dropped": m.dropped,
            "rejected": m.rejected,
            "spoolBytes": m.spool_bytes,
            "uploadFailures": m.upload_failures,
        })
    }

    fn policy(&self, service: &str) -> ServicePolicy {
        self.services.get(service).copied().unwrap_or_default()
    }

    /// A user query's audit, or `None` when sampling skips it.
    pub(super) fn begin(
        self: &Arc<Self>,
        service: &str,
        client: Option<SocketAddr>,
    ) -> Option<QueryAudit> {
        let policy = self.policy(service);
        if policy.sample < 1.0 && rand::random::<f64>() >= policy.sample {
            return None;
        }
        Some(QueryAudit {
            node: self.clone(),
            request_id: RequestId::next(),
            time: Utc::now(),
            client,
            policy,
            action: None,
            body: None,
            plain: None,
            generation: None,
            key_id: None,
            kind: None,
            scratch: Scratch::take(),
            timing: [("", 0); TIMING_STEPS],
            steps: 0,
            failure: None,
        })
    }

    /// Waits until a query's records are as durable as the node's mode says. A spool that
    /// refused them (full, with `reject`), or cannot write them, is a 503: the query is not
    /// answered without its record.
    async fn commit(&self, mut logging: Logging) -> Result<(), ApiError> {
        let outcome = match logging.settled() {
            Some(outcome) => outcome,
            None => logging.wait().await,
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(e @ apinode_audit::Error::SpoolFull { .. }) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("the audit log cannot keep up: {e}"),
            )),
            Err(e) => {
                tracing::error!("a query's audit record could not be written: {e}");
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    format!("the audit log cannot write this query's record: {e}"),
                ))
            }
        }
    }

    /// Logs a record whose answer does not depend on it (auth failures, admin mutations):
    /// waits for durability, warns on failure.
    async fn log_side(&self, record: &AuditRecord<'_>) {
        settle_side(self.log.log(record, self.durability)).await;
    }

    fn record<'a>(
        &'a self,
        stream: Stream,
        time: DateTime<Utc>,
        request_id: impl Into<Cow<'a, str>>,
        service: impl Into<Cow<'a, str>>,
        status: u16,
        client: Option<SocketAddr>,
    ) -> AuditRecord<'a> {
        let mut record = AuditRecord::new(stream, time, request_id, service, status);
        record.deployment_id = self.deployment_id.as_deref().map(Cow::Borrowed);
        record.client_address = client;
        record
    }
}

/// Waits for a record the answer does not depend on; warns when it was not written.
async fn settle_side(logged: impl std::future::Future<Output = apinode_audit::Result<()>>) {
    if let Err(e) = logged.await {
        tracing::warn!("an audit record was not written: {e}");
    }
}

/// A logged query's request id: 128 bits as 32 hex digits, kept inline. Unique, not secret:
/// each thread counts, and the count goes through two keyed bijections (the thread's keys are
/// random), so ids look random and a thread never repeats one. A cryptographic generator per
/// id was a twentieth of the log's cost per query.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestId([u8; 32]);

thread_local! {
    /// The thread's keys and its count of ids.
    static REQUEST_IDS: Cell<Option<([u64; 2], u64)>> = const { Cell::new(None) };
}

impl RequestId {
    fn next() -> RequestId {
        let (keys, count) = REQUEST_IDS
            .try_with(|ids| {
                let (keys, count) = ids.get().unwrap_or_else(|| (rand::random(), 0));
                ids.set(Some((keys, count.wrapping_add(1))));
                (keys, count)
            })
            .unwrap_or_else(|_| (rand::random(), 0));
        let mut id = [0; 32];
        for (half, key) in id.chunks_exact_mut(16).zip(keys) {
            let bits = mix(count ^ key);
            for (pair, byte) in half.chunks_exact_mut(2).zip(bits.to_be_bytes()) {
                pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
            }
        }
        RequestId(id)
    }

    pub(crate) fn as_str(&self) -> &str {
        // Hex digits only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A bijection of `u64` that scatters every input bit (splitmix64's finalizer).
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Each byte's two hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    pairs
};

/// The most timing steps a query records: `total` and up to three of its endpoint's.
const TIMING_STEPS: usize = 4;

/// What a logged user query collects on its way: filled by `user_api` as it answers, written
/// into the log's lines by [`QueryAudit::log`]. Nothing here is allocated per query once the
/// thread is warm: the records borrow from it, its text lives in a reused [`Scratch`].
pub(crate) struct QueryAudit {
    node: Arc<NodeAudit>,
    request_id: RequestId,
    time: DateTime<Utc>,
    client: Option<SocketAddr>,
    policy: ServicePolicy,
    action: Option<Action>,
    body: Option<Value>,
    plain: Option<PlainRequest>,
    generation: Option<Arc<str>>,
    key_id: Option<String>,
    kind: Option<&'static str>,
    scratch: Scratch,
    timing: [(&'static str, u64); TIMING_STEPS],
    steps: usize,
    failure: Option<(u16, String, String)>,
}

/// A call read without a tree ([`QueryAudit::plain_request`]).
struct PlainRequest {
    /// Per item (one for a single call), where its inputs are in the scratch text, written
    /// whole: cut to the payload cap as its record is written, as the tree's are. `None` with
    /// payloads off.
    inputs: Option<SmallVec<[Range<usize>; 1]>>,
    /// The call's `context`.
    context: Option<Value>,
    /// A multi call's items' own `context`s, as the tree's records take them; empty for a
    /// single call.
    item_contexts: Vec<Option<Value>>,
}

/// What a logged call read without a tree hands its audit, per item (one for a single call):
/// the record the runtime read (`data`, `features`) and the item's own `context`.
pub(super) type PlainItem<'r, 'a> = (&'r JsonRecord<'a>, Option<&'a RawValue>);

/// The text a logged query's records point into: each item's output as the answer has it,
/// then the inputs of the record being written. Reused from query to query on a thread, so a
/// logged query allocates nothing once warm: the records' own small allocations and frees
/// were what made the request path's allocations several times costlier (docs/benchmarks.md).
#[derive(Debug, Default)]
struct Scratch {
    /// UTF-8 JSON only, so the log takes its parts unchecked (`Payload::trusted_bytes`): an
    /// answer is checked once as it is copied in ([`write_answer`]), inputs are written by
    /// serde_json, and a cut payload is cut at a character boundary ([`write_cut`]).
    text: Vec<u8>,
    /// Per item: where its output is in `text`, and whether it was cut; `None` when payloads
    /// are off.
    outputs: Vec<Option<(Range<usize>, bool)>>,
}

thread_local! {
    static SPARE_SCRATCH: RefCell<Vec<Scratch>> = const { RefCell::new(Vec::new()) };
}

/// Scratch buffers a thread keeps at most, and the largest it keeps (a big multi call's is
/// let go, not held for the next small query): at most about 1 MiB a thread. A thread rarely
/// has more than a few logged queries between their start and their records.
const SPARE_SCRATCH_MAX: usize = 16;
const SCRATCH_KEPT_BYTES: usize = 64 << 10;
const SCRATCH_KEPT_ITEMS: usize = 1024;

impl Scratch {
    fn take() -> Scratch {
        SPARE_SCRATCH
            .try_with(|spare| spare.try_borrow_mut().ok()?.pop())
            .ok()
            .flatten()
            .unwrap_or_default()
    }
}

/// Back to this thread's spares (not during the thread's exit, nor beyond the cap).
impl Drop for Scratch {
    fn drop(&mut self) {
        let capacity = self.text.capacity();
        if capacity == 0
            || capacity > SCRATCH_KEPT_BYTES
            || self.outputs.capacity() > SCRATCH_KEPT_ITEMS
        {
            return;
        }
        let _ = SPARE_SCRATCH.try_with(|spare| {
            if let Ok(mut spare) = spare.try_borrow_mut()
                && spare.len() < SPARE_SCRATCH_MAX
            {
                self.text.clear();
                self.outputs.clear();
                spare.push(Scratch {
                    text: std::mem::take(&mut self.text),
                    outputs: std::mem::take(&mut self.outputs),
                });
            }
        });
    }
}

impl QueryAudit {
    pub(super) fn wants_payloads(&self) -> bool {
        self.policy.payloads
    }

    /// The parsed request, once the runtime is done with it.
    pub(super) fn request(&mut self, action: Action, body: Value) {
        self.action = Some(action);
        self.body = Some(body);
    }

    /// A call whose body was read without a tree: each item's `data` or `features` (its
    /// record's inputs, written now, as the tree's would be) and own `context` (a multi call's
    /// items only), and the call's `context`, if any. A single call is one item.
    pub(super) fn plain_request(
        &mut self,
        action: Action,
        items: &[PlainItem<'_, '_>],
        context: Option<&RawValue>,
    ) {
        self.action = Some(action);
        let parse = |raw: &RawValue| serde_json::from_str(raw.get()).ok();
        let text = &mut self.scratch.text;
        let inputs = self.policy.payloads.then(|| {
            items
                .iter()
                .map(|(data, _)| {
                    let start = text.len();
                    write_record(text, data);
                    start..text.len()
                })
                .collect()
        });
        let multi = matches!(action, Action::PredictMulti | Action::LookupMulti);
        let item_contexts = if multi {
            items
                .iter()
                .map(|(_, context)| context.and_then(parse))
                .collect()
        } else {
            Vec::new()
        };
        self.plain = Some(PlainRequest {
            inputs,
            context: context.and_then(parse),
            item_contexts,
        });
    }

    pub(super) fn answered_by(
        &mut self,
        generation: &Arc<str>,
        key_id: Option<String>,
        kind: &'static str,
    ) {
        self.generation = Some(generation.clone());
        self.key_id = key_id;
        self.kind = Some(kind);
    }

    /// An item's output as the response has it (JSON bytes): copied, not parsed again.
    pub(super) fn output(&mut self, bytes: &[u8]) {
        self.push_output(|text, max| write_answer(text, bytes, max));
    }

    /// An item's output that is not in the response's bytes (an ignored lookup item).
    pub(super) fn output_value(&mut self, value: &Value) {
        self.push_output(|text, max| write_capped(text, max, |text| write_json(text, value)));
    }

    /// Adds an item's output, written by `write` (which says whether it cut it), or `None`
    /// when payloads are off.
    fn push_output(&mut self, write: impl FnOnce(&mut Vec<u8>, usize) -> bool) {
        let scratch = &mut self.scratch;
        let output = self.policy.payloads.then(|| {
            let start = scratch.text.len();
            let cut = write(&mut scratch.text, self.policy.max_payload_bytes);
            (start..scratch.text.len(), cut)
        });
        scratch.outputs.push(output);
    }

    pub(super) fn timing(&mut self, step: &'static str, micros: u64) {
        // One slot stays for `total`.
        debug_assert!(
            self.steps < TIMING_STEPS - 1,
            "too many timing steps: {step}"
        );
        if self.steps < TIMING_STEPS - 1 {
            self.timing[self.steps] = (step, micros);
            self.steps += 1;
        }
    }

    pub(super) fn fail(&mut self, error: &ApiError) {
        self.failure = Some((
            error.status().as_u16(),
            error.error_type(),
            error.message().to_owned(),
        ));
    }

    /// Writes the query's records (one, or one per item of a multi call) into the log now;
    /// the answer may leave once the returned [`Logging`] resolves.
    fn log(self, status: StatusCode, start: Instant, (service, endpoint): (&str, &str)) -> Logging {
        let QueryAudit {
            node,
            request_id,
            time,
            client,
            policy,
            action,
            body,
            plain,
            generation,
            key_id,
            kind,
            mut scratch,
            mut timing,
            mut steps,
            failure,
        } = self;
        timing[steps] = ("total", start.elapsed().as_micros() as u64);
        steps += 1;
        let failure = failure.or_else(|| {
            (status != StatusCode::OK).then(|| {
                (
                    status.as_u16(),
                    "InternalError".to_owned(),
                    "the node failed while answering; see its log".to_owned(),
                )
            })
        });
        let stream = match &failure {
            Some((401, _, _)) => Stream::Auth,
            _ => Stream::Queries,
        };
        let mut base = node.record(
            stream,
            time,
            request_id.as_str(),
            service,
            status.as_u16(),
            client,
        );
        base.endpoint = Some(endpoint.into());
        base.endpoint_kind = kind.map(Cow::Borrowed);
        base.generation = generation.as_deref().map(Cow::Borrowed);
        base.api_key_id = key_id.as_deref().map(Cow::Borrowed);
        let PlainRequest {
            inputs: plain_inputs,
            context: plain_context,
            item_contexts,
        } = plain.unwrap_or_else(|| PlainRequest {
            inputs: None,
            context: None,
            item_contexts: Vec::new(),
        });
        base.context = body
            .as_ref()
            .and_then(|b| b.get("context"))
            .or(plain_context.as_ref())
            .map(Cow::Borrowed);
        base.timing = &timing[..steps];
        let multi = matches!(action, Some(Action::PredictMulti | Action::LookupMulti));
        let mut logging = Logging::default();
        let Scratch { text, outputs } = &mut scratch;
        if let Some((status, error_type, message)) = &failure {
            let mut r = base;
            r.status = *status;
            r.error_type = Some(error_type.into());
            r.error_message = Some(message.into());
            if policy.payloads
                && let (Some(action), Some(body)) = (action, &body)
            {
                text.clear();
                r.truncated = write_capped(text, policy.max_payload_bytes, |text| {
                    if multi {
                        text.push(b'[');
                        for i in 0..items_len(body) {
                            if i > 0 {
                                text.push(b',');
                            }
                            write_inputs(text, action, body, Some(i));
                        }
                        text.push(b']');
                    } else {
                        write_inputs(text, action, body, None);
                    }
                });
                r.inputs = Some(Payload::trusted_bytes(&text[..]));
            } else if let Some(plain_inputs) = &plain_inputs {
                // As the tree's: a multi call's items as one array, cut as a whole.
                let start = text.len();
                r.truncated = write_capped(text, policy.max_payload_bytes, |text| {
                    if multi {
                        text.push(b'[');
                    }
                    for (i, range) in plain_inputs.iter().enumerate() {
                        if i > 0 {
                            text.push(b',');
                        }
                        text.extend_from_within(range.clone());
                    }
                    if multi {
                        text.push(b']');
                    }
                });
                r.inputs = Some(Payload::trusted_bytes(&text[start..]));
            }
            logging.push(node.log.log(&r, node.durability));
            return logging;
        }
        let outputs_end = text.len();
        for (i, output) in outputs.iter().enumerate() {
            let item = multi.then_some(i);
            text.truncate(outputs_end);
            let inputs_cut = match (output, action, &body) {
                (Some(_), Some(action), Some(body)) => {
                    Some(write_capped(text, policy.max_payload_bytes, |text| {
                        write_inputs(text, action, body, item)
                    }))
                }
                _ => None,
            };
            let plain_range = plain_inputs.as_ref().and_then(|inputs| inputs.get(i));
            let plain_cut = match (output, plain_range) {
                (Some(_), Some(range)) if inputs_cut.is_none() => {
                    Some(cap_written(text, range.clone(), policy.max_payload_bytes))
                }
                _ => None,
            };
            let mut r = base.clone();
            r.item = item;
            let item_context = match &body {
                Some(body) => body
                    .get("items")
                    .and_then(|items| items.get(i)?.get("context")),
                None => item_contexts.get(i).and_then(Option::as_ref),
            };
            if multi && let Some(context) = item_context {
                r.context = Some(Cow::Borrowed(context));
            }
            if let Some((range, cut)) = output {
                r.outputs = Some(Payload::trusted_bytes(&text[range.clone()]));
                r.truncated |= cut;
            }
            if let Some(cut) = inputs_cut {
                r.inputs = Some(Payload::trusted_bytes(&text[outputs_end..]));
                r.truncated |= cut;
            } else if let Some((range, cut)) = plain_cut {
                r.inputs = Some(Payload::trusted_bytes(&text[range]));
                r.truncated |= cut;
            }
            logging.push(node.log.log(&r, node.durability));
        }
        logging
    }
}

/// The records of a query on their way to the spool: one, or a multi call's items (only they
/// allocate).
#[derive(Default)]
#[must_use = "the records are durable only once this resolves"]
struct Logging {
    first: Option<Logged>,
    others: Vec<Logged>,
}

impl Logging {
    fn one(logged: Logged) -> Logging {
        Logging {
            first: Some(logged),
            others: Vec::new(),
        }
    }

    fn push(&mut self, logged: Logged) {
        match self.first {
            None => self.first = Some(logged),
            Some(_) => self.others.push(logged),
        }
    }

    /// The outcome of a single record already known (an `async` log's): the common case,
    /// taken without polling.
    fn settled(&mut self) -> Option<Result<(), apinode_audit::Error>> {
        match (&mut self.first, self.others.is_empty()) {
            (Some(first), true) => first.settled(),
            (None, true) => Some(Ok(())),
            _ => None,
        }
    }

    /// Resolves when every record is durable; the first error otherwise.
    async fn wait(self) -> Result<(), apinode_audit::Error> {
        let mut first_error = None;
        for logged in self.first.into_iter().chain(self.others) {
            if let Err(e) = logged.await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn items_len(body: &Value) -> usize {
    body.get("items")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

/// Writes the inputs of a query (or of item `item` of a multi call): the features, the lookup
/// keys, or a function's arguments (the body without `dispatch` and `context`).
fn write_inputs(text: &mut Vec<u8>, action: Action, body: &Value, item: Option<usize>) {
    const NULL: &Value = &Value::Null;
    let source = match item {
        Some(i) => body.get("items").and_then(|items| items.get(i)),
        None => Some(body),
    };
    let Some(source) = source else {
        return write_json(text, NULL);
    };
    match action {
        Action::Predict | Action::PredictMulti => {
            write_json(text, source.get("features").unwrap_or(NULL))
        }
        Action::Lookup | Action::LookupMulti => {
            write_json(text, source.get("data").unwrap_or(NULL))
        }
        Action::Query | Action::Run => {
            text.push(b'{');
            let arguments = source.as_object().into_iter().flatten();
            let arguments = arguments.filter(|(name, _)| *name != "dispatch" && *name != "context");
            for (i, (name, value)) in arguments.enumerate() {
                if i > 0 {
                    text.push(b',');
                }
                write_json(text, name);
                text.push(b':');
                write_json(text, value);
            }
            text.push(b'}');
        }
    }
}

/// A lookup's `data` read without a tree, written as the tree would be: names in order, of
/// a name given twice the last.
fn write_record(text: &mut Vec<u8>, data: &JsonRecord<'_>) {
    let mut fields: SmallVec<[(&str, JsonRef<'_>); 8]> = data.fields().collect();
    // Stable: of equal names, the last in the text stays last.
    fields.sort_by(|a, b| a.0.cmp(b.0));
    text.push(b'{');
    let mut first = true;
    for (i, (name, value)) in fields.iter().enumerate() {
        if fields.get(i + 1).is_some_and(|next| next.0 == *name) {
            continue;
        }
        if !first {
            text.push(b',');
        }
        first = false;
        write_json(text, name);
        text.push(b':');
        write_json(text, value);
    }
    text.push(b'}');
}

fn write_json<T: serde::Serialize + ?Sized>(text: &mut Vec<u8>, value: &T) {
    // Serializing a JSON value or a string into a Vec cannot fail.
    let _ = serde_json::to_writer(text, value);
}

/// Appends what `write` writes, or, beyond `max` bytes, its first `max` bytes as a JSON string;
/// returns whether it was cut.
fn write_capped(text: &mut Vec<u8>, max: usize, write: impl FnOnce(&mut Vec<u8>)) -> bool {
    let start = text.len();
    write(text);
    if text.len() - start <= max {
        return false;
    }
    let written = text.split_off(start);
    write_cut(text, &written, max);
    true
}

/// The first `max` bytes of `bytes` (UTF-8, cut at a character boundary), as a JSON string.
fn write_cut(text: &mut Vec<u8>, bytes: &[u8], max: usize) {
    let whole = String::from_utf8_lossy(bytes);
    let mut end = max.min(whole.len());
    while !whole.is_char_boundary(end) {
        end -= 1;
    }
    write_json(text, &whole[..end]);
}

/// Inputs written whole at `range` of `text`: there, when within `max` bytes; else their first
/// `max` bytes as a JSON string, appended. Returns where they are and whether they were cut.
fn cap_written(text: &mut Vec<u8>, range: Range<usize>, max: usize) -> (Range<usize>, bool) {
    if range.len() <= max {
        return (range, false);
    }
    let whole = text[range].to_vec();
    let start = text.len();
    write_cut(text, &whole, max);
    (start..text.len(), true)
}

/// Appends an answer's bytes (JSON the node wrote) as they are, or cut to `max` bytes as a
/// JSON string (then returns `true`); bytes that are not UTF-8 become a string.
fn write_answer(text: &mut Vec<u8>, bytes: &[u8], max: usize) -> bool {
    if bytes.len() > max {
        write_cut(text, bytes, max);
        return true;
    }
    match std::str::from_utf8(bytes) {
        Ok(_) => text.extend_from_slice(bytes),
        Err(_) => write_cut(text, bytes, max),
    }
    false
}

/// Logs a user query's records and returns the answer to send: `response`, or a 503 when the
/// spool refused the records. [`log_query`] then [`LoggedQuery::answer`], for callers that hold
/// nothing of the request.
pub(super) async fn finish_query(
    state: &AppState,
    audit: Option<QueryAudit>,
    response: Response,
    start: Instant,
    route: (&str, &str),
    client: Option<SocketAddr>,
) -> Response {
    match log_query(state, audit, response.status(), start, route, client) {
        Some(logged) => logged.answer(response).await,
        None => response,
    }
}

/// Writes a user query's records into the log now (or, when sampling skipped it and it failed
/// authentication, an auth record); `None` when nothing was logged. The request may be
/// dropped before the returned [`LoggedQuery`] is awaited, and should be: its head holds
/// hyper's read buffer, which would otherwise be allocated anew for the connection's next
/// read while the answer waits for its record.
pub(super) fn log_query(
    state: &AppState,
    audit: Option<QueryAudit>,
    status: StatusCode,
    start: Instant,
    (service, endpoint): (&str, &str),
    client: Option<SocketAddr>,
) -> Option<LoggedQuery> {
    let node = state.audit.as_ref()?;
    let Some(audit) = audit else {
        if status != StatusCode::UNAUTHORIZED {
            return None;
        }
        let id = RequestId::next();
        let mut r = node.record(Stream::Auth, Utc::now(), id.as_str(), service, 401, client);
        r.endpoint = Some(endpoint.into());
        r.error_type = Some("com.dataiku.dip.apinode.Unauthorized".into());
        return Some(LoggedQuery {
            node: node.clone(),
            logging: Logging::one(node.log.log(&r, node.durability)),
            query: None,
        });
    };
    let request_id = audit.request_id;
    Some(LoggedQuery {
        node: node.clone(),
        logging: audit.log(status, start, (service, endpoint)),
        query: Some(request_id),
    })
}

/// A query's records, written, on their way to the node's durability.
#[must_use = "the answer may leave only once its records are durable"]
pub(super) struct LoggedQuery {
    node: Arc<NodeAudit>,
    logging: Logging,
    /// The logged query's request id, for its answer; `None` for the auth record of a query
    /// sampling skipped (its failure is only warned about: the answer is a 401 either way).
    query: Option<RequestId>,
}

impl LoggedQuery {
    /// `response` once the records are as durable as the node's mode says, with the request
    /// id header; a 503 when the spool refused them.
    pub(super) async fn answer(self, response: Response) -> Response {
        let LoggedQuery {
            node,
            logging,
            query,
        } = self;
        let Some(request_id) = query else {
            settle_side(logging.wait()).await;
            return response;
        };
        let mut response = match node.commit(logging).await {
            Ok(()) => response,
            Err(refused) => axum::response::IntoResponse::into_response(refused),
        };
        // 32 hex digits: always a valid header value.
        if let Ok(id) = HeaderValue::from_str(request_id.as_str()) {
            response.headers_mut().insert(REQUEST_ID_HEADER.clone(), id);
        }
        response
    }
}

/// The router's middleware for the auth and admin streams: every 401 of the admin API goes
/// to the auth stream, every other admin request but a `GET` to the admin stream, with the
/// admin key's id, the method and path, the status and the error.
pub(super) async fn admin_middleware(
    State(state): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(node) = state.audit.clone() else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if !path.starts_with("/admin/") {
        return next.run(request).await;
    }
    let time = Utc::now();
    let method = request.method().clone();
    let path = path.to_owned();
    let query = request.uri().query().map(str::to_owned);
    let client = request.extensions().get::<ClientAddr>().map(|c| c.0);
    let key_id = match super::auth::PresentedCredentials::from_headers(request.headers()) {
        Ok(super::auth::PresentedCredentials::ApiKey(secret)) => {
            state.runtime.authenticate_admin(&secret)
        }
        _ => None,
    };
    let response = next.run(request).await;
    let status = response.status();
    let stream = if status == StatusCode::UNAUTHORIZED {
        Stream::Auth
    } else if method != Method::GET && method != Method::HEAD {
        Stream::Admin
    } else {
        return response;
    };
    // Admin answers are small JSON documents: read for the error or the generation.
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let response = Response::from_parts(parts, axum::body::Body::from(bytes));
    let service = path
        .strip_prefix("/admin/api/services/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("");
    let id = RequestId::next();
    let mut record = node.record(stream, time, id.as_str(), service, status.as_u16(), client);
    record.api_key_id = key_id.as_deref().map(Cow::Borrowed);
    let context = json!({"method": method.as_str(), "path": path, "query": query});
    record.context = Some(Cow::Owned(context));
    if let Some(generation) = answer.get("generation").and_then(Value::as_str) {
        record.generation = Some(generation.into());
    }
    if !status.is_success() {
        record.error_type = answer
            .get("errorType")
            .and_then(Value::as_str)
            .map(Cow::Borrowed);
        record.error_message = answer
            .get("message")
            .and_then(Value::as_str)
            .map(Cow::Borrowed);
    }
    node.log_side(&record).await;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `write` appends, as text, and whether it cut it.
    fn written(write: impl FnOnce(&mut Vec<u8>) -> bool) -> (String, bool) {
        let mut text = b"before".to_vec();
        let cut = write(&mut text);
        let text = String::from_utf8(text).unwrap();
        (text.strip_prefix("before").unwrap().to_owned(), cut)
    }

    #[test]
    fn payloads_are_cut_to_the_cap_and_marked() {
        // An answer's bytes are kept as they are.
        assert_eq!(
            written(|t| write_answer(t, br#"{"a": 1}"#, 100)),
            (r#"{"a": 1}"#.to_owned(), false)
        );
        assert_eq!(
            written(|t| write_answer(t, br#"{"a":"xxxxxxxx"}"#, 5)),
            (r#""{\"a\":""#.to_owned(), true)
        );
        // Bytes that are not UTF-8 are kept as a string.
        assert_eq!(
            written(|t| write_answer(t, b"caf\xe9", 100)),
            ("\"caf\u{fffd}\"".to_owned(), false)
        );
        let city = json!({"city": "Saint-Étienne"});
        let (cut_text, cut) = written(|t| write_capped(t, 16, |t| write_json(t, &city)));
        assert!(cut);
        let cut_value: Value = serde_json::from_str(&cut_text).unwrap();
        assert!(cut_value.as_str().unwrap().len() <= 16);
        assert_eq!(
            written(|t| write_capped(t, 5, |t| write_json(t, &json!([1, 2])))),
            ("[1,2]".to_owned(), false)
        );
        // Inputs written whole first (a body read without a tree), then cut: as if cut when
        // written.
        for max in [0, 5, 13, 16, 40] {
            let mut text = b"earlier".to_vec();
            write_json(&mut text, &city);
            let whole = 7..text.len();
            let (at, cut) = cap_written(&mut text, whole, max);
            let later = (String::from_utf8(text[at].to_vec()).unwrap(), cut);
            let at_once = written(|t| write_capped(t, max, |t| write_json(t, &city)));
            assert_eq!(later, at_once, "max {max}");
        }
    }

    #[test]
    fn inputs_are_the_features_keys_or_arguments() {
        let inputs = |action, body: &Value, item| {
            let mut text = Vec::new();
            write_inputs(&mut text, action, body, item);
            serde_json::from_slice::<Value>(&text).unwrap()
        };
        let body = json!({"items": [{"data": {"id": 1}}, {"data": {"id": 2}, "context": {"x": 1}}],
            "context": {"y": 2}});
        assert_eq!(
            inputs(Action::LookupMulti, &body, Some(1)),
            json!({"id": 2})
        );
        assert_eq!(inputs(Action::LookupMulti, &body, Some(5)), Value::Null);
        let body = json!({"features": {"a": 1}, "dispatch": {}});
        assert_eq!(inputs(Action::Predict, &body, None), json!({"a": 1}));
        let body = json!({"x": 1, "dispatch": {}, "context": {}, "y": [2]});
        assert_eq!(inputs(Action::Run, &body, None), json!({"x": 1, "y": [2]}));
        assert_eq!(
            inputs(Action::Query, &json!({"dispatch": {}}), None),
            json!({})
        );
    }

    #[test]
    fn request_ids_are_hex_and_never_repeat_on_a_thread_or_across_threads() {
        let ids_of_a_thread = || {
            (0..10_000)
                .map(|_| RequestId::next().as_str().to_owned())
                .collect::<Vec<_>>()
        };
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(ids_of_a_thread))
            .collect();
        let mut all = ids_of_a_thread();
        // Consecutive ids share no visible pattern: no digit position is constant.
        for position in 0..32 {
            let digit = |id: &String| id.as_bytes()[position];
            assert!(
                all[..64].iter().any(|id| digit(id) != digit(&all[0])),
                "digit {position} is the same in every id"
            );
        }
        for thread in threads {
            all.extend(thread.join().unwrap());
        }
        for id in &all {
            assert!(
                id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
        }
        let count = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), count, "a request id repeated");
    }

    #[test]
    fn a_body_read_without_a_tree_has_the_inputs_the_tree_has() {
        for data in [
            r#"{}"#,
            r#"{"key": "C1"}"#,
            r#"{"z": 1, "a": [1, {"b": null}], "m": "\u00e9\n", "a": true, "z": 2.5}"#,
        ] {
            let record: JsonRecord<'_> = serde_json::from_str(data).unwrap();
            let value = serde_json::from_str::<Value>(data).unwrap();
            for (action, field) in [(Action::Lookup, "data"), (Action::Predict, "features")] {
                let tree = json!({ field: value });
                let (mut by_record, mut by_tree) = (Vec::new(), Vec::new());
                write_record(&mut by_record, &record);
                write_inputs(&mut by_tree, action, &tree, None);
                assert_eq!(
                    String::from_utf8(by_record).unwrap(),
                    String::from_utf8(by_tree).unwrap(),
                    "{field}: {data}"
                );
            }
        }
    }

    #[test]
    fn scratch_buffers_are_reused_on_a_thread() {
        let mut scratch = Scratch::take();
        scratch.text.extend_from_slice(b"an answer");
        let buffer = scratch.text.as_ptr();
        drop(scratch);
        let again = Scratch::take();
        assert!(again.text.is_empty());
        assert_eq!(again.text.as_ptr(), buffer);
    }
}
