//! The server's part of the query audit log (`apinode-audit` does the spool and the uploads):
//! whether a user query is logged (sampling, decided when it arrives, so a skipped query costs
//! one random number), its records built once the answer is computed, and logged at the node's
//! durability before the answer leaves; the auth stream (401s) and the admin stream (admin
//! mutations), logged by a middleware on the router.

use super::{ApiError, AppState};
use crate::config::{AuditSettings, ServicePolicy};
use anyhow::Context;
use apinode_audit::{
    AuditLog, AuditRecord, Durability, Logged, Names, Payload, PayloadField, RecordKey, RecordLine,
    Stream, write_json_str,
};
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
            scratch: Scratch::default(),
            logged: None,
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
    /// The records, when they were written as the answer was ([`QueryAudit::log_answered`]).
    logged: Option<Logging>,
}

/// An item's output, as [`QueryAudit::log_answered`] takes it.
pub(super) enum ItemOutput<'b> {
    /// The item's JSON as the answer has it.
    Answer(&'b [u8]),
    /// A lookup item the lookup ignored, and why.
    Ignored(&'static str),
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
    /// This thread's spare buffers, the first time a query needs them: a query whose records
    /// are written as its answer is ([`QueryAudit::log_answered`]) never does.
    fn ready(&mut self) -> &mut Scratch {
        if self.text.capacity() == 0 {
            *self = Scratch::take();
        }
        self
    }

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
        let text = &mut self.scratch.ready().text;
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
        let scratch = self.scratch.ready();
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

    /// Writes the records of a call read without a tree and answered at once, as its answer is
    /// written (`total`, the answer's own `timing.total`): each line straight into the log's
    /// batch from the request's records and the answer's items (`outputs(i)` for item `i` of
    /// `count`), with nothing copied into the scratch text first, for [`QueryAudit::log`] to
    /// hand on. The lines are those [`QueryAudit::log`] writes from what
    /// [`QueryAudit::plain_request`] and [`QueryAudit::output`] collect (a test holds the two to
    /// the same lines).
    pub(super) fn log_answered<'b>(
        &mut self,
        (service, endpoint, action): (&str, &str, Action),
        (items, context): (&[PlainItem<'_, '_>], Option<&RawValue>),
        (count, outputs): (usize, &dyn Fn(usize) -> ItemOutput<'b>),
        steps: &[(&'static str, u64)],
        total: u64,
    ) {
        let node = &*self.node;
        let mut timing = [("", 0); TIMING_STEPS];
        // One slot stays for `total`.
        debug_assert!(
            steps.len() < TIMING_STEPS,
            "too many timing steps: {steps:?}"
        );
        let given = steps.len().min(TIMING_STEPS - 1);
        timing[..given].copy_from_slice(&steps[..given]);
        timing[given] = ("total", total);
        let timing = &timing[..=given];
        let key = RecordKey {
            stream: Stream::Queries,
            time: self.time,
            service,
        };
        let names: Names<'_> = [
            Some(service),
            Some(endpoint),
            self.kind,
            self.generation.as_deref(),
            node.deployment_id.as_deref(),
            self.key_id.as_deref(),
        ];
        self.action = Some(action);
        let multi = matches!(action, Action::PredictMulti | Action::LookupMulti);
        let (payloads, max) = (self.policy.payloads, self.policy.max_payload_bytes);
        // Parsed (only when there is one) to be written as the tree's records write it.
        let parse = |raw: &RawValue| serde_json::from_str::<Value>(raw.get()).ok();
        let call_context = context.and_then(parse);
        let mut logging = Logging::default();
        for i in 0..count {
            let input = items.get(i);
            let own_context = input.and_then(|(_, own)| *own).filter(|_| multi);
            let own_context = own_context.and_then(parse);
            let context = own_context.as_ref().or(call_context.as_ref());
            let write = |mut line: RecordLine<'_>| {
                line.start(&self.time, self.request_id.as_str(), multi.then_some(i));
                line.names(names);
                line.client_address(self.client.as_ref());
                line.context(context);
                let mut truncated = false;
                if payloads {
                    if let Some((record, _)) = input {
                        truncated |= line.trusted_payload(PayloadField::Inputs, |out| {
                            write_capped(out, max, |out| write_record(out, record))
                        });
                    }
                    truncated |=
                        line.trusted_payload(PayloadField::Outputs, |out| match outputs(i) {
                            ItemOutput::Answer(bytes) => write_answer(out, bytes, max),
                            ItemOutput::Ignored(reason) => write_capped(out, max, |out| {
                                write_json(out, &json!({"ignored": true, "ignoreReason": reason}))
                            }),
                        });
                }
                line.end(truncated, StatusCode::OK.as_u16(), (None, None), timing);
            };
            logging.push(node.log.log_with(key, node.durability, write));
        }
        self.logged = Some(logging);
    }

    /// Writes the query's records (one, or one per item of a multi call) into the log now;
    /// the answer may leave once the returned [`Logging`] resolves.
    fn log(self, status: StatusCode, start: Instant, (service, endpoint): (&str, &str)) -> Logging {
        if let Some(logging) = self.logged {
            return logging;
        }
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
            logged: _,
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
/// a name given twice the last; names, strings and integers written by hand (serde_json's
/// writer per field was most of a logged lookup's inputs), byte for byte as serde_json writes
/// them.
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
        write_json_str(text, name);
        text.push(b':');
        match value {
            JsonRef::Str(s) => write_json_str(text, s),
            JsonRef::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => text.extend_from_slice(itoa::Buffer::new().format(u).as_bytes()),
                (None, Some(i)) => text.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
                // A float, as serde_json writes it.
                (None, None) => write_json(text, n),
            },
            JsonRef::Null => text.extend_from_slice(b"null"),
            JsonRef::Bool(b) => text.extend_from_slice(if *b { b"true" } else { b"false" }),
            other => write_json(text, other),
        }
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
    use apinode_audit::AuditConfig;

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
            r#"{"n": -7, "u": 18446744073709551615, "i": -9223372036854775808, "f": 1e3}"#,
            r#"{"e": 1.5e-7, "b": false, "s": "q\"\\\u0001", "k\n": null, "": 0}"#,
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

    /// Every line of the records under `dir`, by request id and item.
    fn lines_by_request(dir: &std::path::Path) -> BTreeMap<(String, u64), Vec<String>> {
        let mut lines: BTreeMap<_, Vec<_>> = BTreeMap::new();
        let mut folders = vec![dir.to_owned()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    folders.push(path);
                    continue;
                }
                for line in std::fs::read_to_string(&path).unwrap().lines() {
                    let record: Value = serde_json::from_str(line).unwrap();
                    let id = record["request_id"].as_str().unwrap().to_owned();
                    let item = record["item"].as_u64().unwrap_or(u64::MAX);
                    lines.entry((id, item)).or_default().push(line.to_owned());
                }
            }
        }
        lines
    }

    /// A line without its `timing.total` (the one field the two ways take from different
    /// clock reads).
    fn without_total(line: &str) -> String {
        let at = line.find("\"total\":").unwrap() + "\"total\":".len();
        let end = at + line[at..].find('}').unwrap();
        format!("{}{}", &line[..at], &line[end..])
    }

    /// A call read without a tree and answered at once has its records written as its answer
    /// is (`log_answered`); they are the lines the records collected to the end would be
    /// (`plain_request`, `output`, `log`), byte for byte: single and multi calls, with and
    /// without contexts, lookup items ignored, payloads off, and payloads cut to a cap.
    #[tokio::test]
    async fn records_written_as_the_answer_is_are_those_collected_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        const ANSWER: &[u8] =
            "{\"id\":1,\"name\":\"Saint-\u{c9}tienne\",\"tags\":[1,2]}".as_bytes();
        // Action, body (data or features, and contexts), the items' outputs (`None`: ignored).
        type Case = (Action, &'static str, &'static [Option<&'static [u8]>]);
        let cases: [Case; 5] = [
            (
                Action::Lookup,
                r#"{"data": {"id": 1}, "context": {"rid": "one"}}"#,
                &[Some(ANSWER)],
            ),
            (
                Action::Lookup,
                r#"{"data": {"id": "x\n", "b": 2}}"#,
                &[None],
            ),
            (
                Action::LookupMulti,
                r#"{"items": [{"data": {"id": 1}}, {"data": {"id": 9}, "context": {"own": [1]}},
                    {"data": {"z": null, "a": 1.5}}], "context": {"rid": "multi"}}"#,
                &[Some(ANSWER), None, Some(b"{}")],
            ),
            (
                Action::Predict,
                r#"{"features": {"age": 40, "city": "Lyon"}, "context": null}"#,
                &[Some(
                    br#"{"prediction":"yes","probas":{"yes":0.75,"no":0.25}}"#,
                )],
            ),
            (
                Action::PredictMulti,
                r#"{"items": [{"features": {"age": 1}}, {"features": {"age": 2}, "context": {"x": 1}}]}"#,
                &[
                    Some(br#"{"prediction":"no"}"#),
                    Some(br#"{"prediction":"yes"}"#),
                ],
            ),
        ];
        let policies = [
            ServicePolicy::default(),
            ServicePolicy {
                max_payload_bytes: 12,
                ..ServicePolicy::default()
            },
            ServicePolicy {
                payloads: false,
                ..ServicePolicy::default()
            },
        ];
        for (p, policy) in policies.into_iter().enumerate() {
            let settings = AuditSettings {
                store: dir.path().join(format!("store-{p}")).display().to_string(),
                options: Vec::new(),
                store_origin: "a test".into(),
                durability: Durability::Write,
                log: AuditConfig::new(dir.path().join(format!("spool-{p}")), "n1"),
                deployment_id: Some("prod".into()),
                services: BTreeMap::from([("shop".to_owned(), policy)]),
            };
            let node = Arc::new(NodeAudit::open(&settings).await.unwrap());
            let client: SocketAddr = "10.1.2.3:4567".parse().unwrap();
            let generation: Arc<str> = Arc::from("g-1");
            for (action, body, outputs) in cases {
                let body: Value = serde_json::from_str(body).unwrap();
                let field = match action {
                    Action::Lookup | Action::LookupMulti => "data",
                    _ => "features",
                };
                let text = |value: &Value| serde_json::to_string(value).unwrap();
                let sources: Vec<(String, Option<String>)> = match body.get("items") {
                    Some(items) => items
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|item| (text(&item[field]), item.get("context").map(text)))
                        .collect(),
                    None => vec![(text(&body[field]), None)],
                };
                let records: Vec<JsonRecord<'_>> = sources
                    .iter()
                    .map(|(data, _)| serde_json::from_str(data).unwrap())
                    .collect();
                let own: Vec<Option<&RawValue>> = sources
                    .iter()
                    .map(|(_, context)| {
                        context.as_deref().map(|c| serde_json::from_str(c).unwrap())
                    })
                    .collect();
                let items: Vec<PlainItem<'_, '_>> =
                    records.iter().zip(own.iter().copied()).collect();
                let context_text = body.get("context").map(text);
                let context: Option<&RawValue> = context_text
                    .as_deref()
                    .map(|c| serde_json::from_str(c).unwrap());
                let item_output = |i: usize| match outputs[i] {
                    Some(bytes) => ItemOutput::Answer(bytes),
                    None => ItemOutput::Ignored("no row matched"),
                };
                let start = Instant::now();
                let route = ("shop", "by-id");
                let mut collected = node.begin("shop", Some(client)).unwrap();
                let mut at_once = node.begin("shop", Some(client)).unwrap();
                at_once.request_id = collected.request_id;
                at_once.time = collected.time;
                for audit in [&mut collected, &mut at_once] {
                    audit.answered_by(&generation, Some("key-1".into()), "model");
                }
                collected.plain_request(action, &items, context);
                collected.timing("lookup", 7);
                for i in 0..outputs.len() {
                    match item_output(i) {
                        ItemOutput::Answer(bytes) => collected.output(bytes),
                        ItemOutput::Ignored(reason) if collected.wants_payloads() => collected
                            .output_value(&json!({"ignored": true, "ignoreReason": reason})),
                        ItemOutput::Ignored(_) => collected.output_value(&Value::Null),
                    }
                }
                let outputs = (
                    outputs.len(),
                    &item_output as &dyn Fn(usize) -> ItemOutput<'static>,
                );
                at_once.log_answered(
                    (route.0, route.1, action),
                    (&items, context),
                    outputs,
                    &[("lookup", 7)],
                    0,
                );
                for audit in [collected, at_once] {
                    let logging = audit.log(StatusCode::OK, start, route);
                    logging.wait().await.unwrap();
                }
            }
            assert!(node.close(Duration::from_secs(30)).await);
            let lines = lines_by_request(&dir.path().join(format!("store-{p}")));
            let items: usize = cases.iter().map(|(_, _, outputs)| outputs.len()).sum();
            assert_eq!(lines.len(), items, "policy {policy:?}");
            for ((id, item), pair) in lines {
                assert_eq!(pair.len(), 2, "{id} item {item}: {pair:?}");
                assert_eq!(
                    without_total(&pair[0]),
                    without_total(&pair[1]),
                    "policy {policy:?}"
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
