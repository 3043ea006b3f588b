//! The server's part of the query audit log (`apinode-audit` does the spool and the uploads):
//! whether a user query is logged (sampling, decided when it arrives, so a skipped query costs
//! one random number), its records built once the answer is computed, and logged at the node's
//! durability before the answer leaves; the auth stream (401s) and the admin stream (admin
//! mutations), logged by a middleware on the router.

use super::{ApiError, AppState};
use crate::config::{AuditSettings, ServicePolicy};
use anyhow::Context;
use apinode_audit::{AuditLog, AuditRecord, Durability, Payload, Stream};
use apinode_runtime::Action;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The response header carrying a logged query's request id (the record's `request_id`).
pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";

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
        endpoint: &str,
        client: Option<SocketAddr>,
    ) -> Option<QueryAudit> {
        let policy = self.policy(service);
        if policy.sample < 1.0 && rand::random::<f64>() >= policy.sample {
            return None;
        }
        Some(QueryAudit {
            node: self.clone(),
            request_id: request_id(),
            time: Utc::now(),
            client,
            policy,
            service: service.to_owned(),
            endpoint: endpoint.to_owned(),
            action: None,
            body: None,
            generation: None,
            key_id: None,
            kind: None,
            outputs: Vec::new(),
            timing: Vec::with_capacity(3),
            failure: None,
        })
    }

    /// Logs `records` and waits until they are as durable as the node's mode says. A spool
    /// that refuses them (full, with `reject`), or cannot write them, is a 503: the query is
    /// not answered without its record.
    async fn commit(&self, records: Vec<AuditRecord>) -> Result<(), ApiError> {
        let mut records = records.into_iter();
        let first = records.next().map(|r| self.log.log(r, self.durability));
        // Only a multi call's other items allocate.
        let others: Vec<_> = records.map(|r| self.log.log(r, self.durability)).collect();
        let mut first_error = None;
        for logged in first.into_iter().chain(others) {
            if let Err(e) = logged.await {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            None => Ok(()),
            Some(e @ apinode_audit::Error::SpoolFull { .. }) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("the audit log cannot keep up: {e}"),
            )),
            Some(e) => {
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
    async fn log_side(&self, record: AuditRecord) {
        if let Err(e) = self.log.log(record, self.durability).await {
            tracing::warn!("an audit record was not written: {e}");
        }
    }

    fn record(
        &self,
        stream: Stream,
        time: DateTime<Utc>,
        request_id: String,
        service: impl Into<String>,
        status: u16,
        client: Option<SocketAddr>,
    ) -> AuditRecord {
        let mut record = AuditRecord::new(stream, time, request_id, service, status);
        record.deployment_id = self.deployment_id.clone();
        record.client_address = client;
        record
    }
}

/// A random 128-bit id, as 32 hex digits.
fn request_id() -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for byte in rand::random::<[u8; 16]>() {
        id.push(char::from(DIGITS[usize::from(byte >> 4)]));
        id.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    id
}

/// What a logged user query collects on its way: filled by `user_api` as it answers.
pub(crate) struct QueryAudit {
    node: Arc<NodeAudit>,
    pub(super) request_id: String,
    time: DateTime<Utc>,
    client: Option<SocketAddr>,
    policy: ServicePolicy,
    service: String,
    endpoint: String,
    action: Option<Action>,
    body: Option<Value>,
    generation: Option<Arc<str>>,
    key_id: Option<String>,
    kind: Option<&'static str>,
    /// One per item of the answer (`None`: payloads are off), as JSON text.
    outputs: Vec<Option<(Payload, bool)>>,
    timing: Vec<(Cow<'static, str>, u64)>,
    failure: Option<(u16, String, String)>,
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

    /// An item's output as the response has it (JSON bytes), or `None` without payloads.
    pub(super) fn output(&mut self, bytes: &[u8]) {
        let output = self
            .policy
            .payloads
            .then(|| payload_of_bytes(bytes, self.policy.max_payload_bytes));
        self.outputs.push(output);
    }

    /// An item's output that is not in the response's bytes (an ignored lookup item).
    pub(super) fn output_value(&mut self, value: Value) {
        let max = self.policy.max_payload_bytes;
        let output = self.policy.payloads.then(|| payload_of_value(&value, max));
        self.outputs.push(output);
    }

    pub(super) fn timing(&mut self, step: &'static str, micros: u64) {
        self.timing.push((Cow::Borrowed(step), micros));
    }

    pub(super) fn fail(&mut self, error: &ApiError) {
        self.failure = Some((
            error.status().as_u16(),
            error.error_type(),
            error.message().to_owned(),
        ));
    }

    /// The query's records: one, or one per item of a multi call.
    fn records(self, status: StatusCode, start: Instant) -> Vec<AuditRecord> {
        let QueryAudit {
            node,
            request_id,
            time,
            client,
            policy,
            service,
            endpoint,
            action,
            body,
            generation,
            key_id,
            kind,
            outputs,
            mut timing,
            failure,
        } = self;
        timing.push(("total".into(), start.elapsed().as_micros() as u64));
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
        // What every record of the query shares: cloned for all but the last record (a
        // single query's only one), which takes it.
        let mut base = node.record(stream, time, request_id, service, status.as_u16(), client);
        base.endpoint = Some(endpoint);
        base.endpoint_kind = kind.map(Cow::Borrowed);
        base.generation = generation;
        base.api_key_id = key_id;
        base.context = body.as_ref().and_then(|b| b.get("context")).cloned();
        base.timing = timing;
        let multi = matches!(action, Some(Action::PredictMulti | Action::LookupMulti));
        if let Some((status, error_type, message)) = failure {
            let mut r = base;
            r.status = status;
            r.error_type = Some(error_type);
            r.error_message = Some(message);
            if policy.payloads
                && let (Some(action), Some(body)) = (action, &body)
            {
                let (inputs, cut) = if multi {
                    let all = (0..items_len(body))
                        .map(|i| inputs_of(action, body, Some(i)).into_owned())
                        .collect();
                    payload_of_value(&Value::Array(all), policy.max_payload_bytes)
                } else {
                    payload_of_value(&inputs_of(action, body, None), policy.max_payload_bytes)
                };
                r.inputs = Some(inputs);
                r.truncated = cut;
            }
            return vec![r];
        }
        let count = outputs.len();
        let mut records = Vec::with_capacity(count.max(1));
        let mut base = Some(base);
        for (i, output) in outputs.into_iter().enumerate() {
            let mut r = match i + 1 == count {
                true => base.take().expect("the last record takes the base"),
                false => base.clone().expect("kept until the last record"),
            };
            let item = multi.then_some(i);
            r.item = item;
            if multi
                && let Some(context) = body
                    .as_ref()
                    .and_then(|b| b.get("items")?.get(i)?.get("context"))
            {
                r.context = Some(context.clone());
            }
            if let Some((output, cut)) = output {
                r.outputs = Some(output);
                r.truncated |= cut;
                if let (Some(action), Some(body)) = (action, &body) {
                    let (inputs, cut) =
                        payload_of_value(&inputs_of(action, body, item), policy.max_payload_bytes);
                    r.inputs = Some(inputs);
                    r.truncated |= cut;
                }
            }
            records.push(r);
        }
        records
    }
}

fn items_len(body: &Value) -> usize {
    body.get("items")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

/// The inputs of a query (or of item `item` of a multi call): the features, the lookup keys,
/// or a function's arguments (the body without `dispatch` and `context`). Borrowed from the
/// body but for arguments.
fn inputs_of(action: Action, body: &Value, item: Option<usize>) -> Cow<'_, Value> {
    const NULL: &Value = &Value::Null;
    let source = match item {
        Some(i) => body.get("items").and_then(|items| items.get(i)),
        None => Some(body),
    };
    let Some(source) = source else {
        return Cow::Borrowed(NULL);
    };
    match action {
        Action::Predict | Action::PredictMulti => {
            Cow::Borrowed(source.get("features").unwrap_or(NULL))
        }
        Action::Lookup | Action::LookupMulti => Cow::Borrowed(source.get("data").unwrap_or(NULL)),
        Action::Query | Action::Run => {
            let mut args = source.as_object().cloned().unwrap_or_default();
            args.remove("dispatch");
            args.remove("context");
            Cow::Owned(Value::Object(args))
        }
    }
}

/// A payload within `max` bytes of JSON text: its text (serialized once), or that text cut to
/// `max` bytes as a JSON string, and `true`.
fn payload_of_value(value: &Value, max: usize) -> (Payload, bool) {
    match serde_json::to_string(value) {
        Ok(text) if text.len() <= max => (Payload::trusted(text), false),
        Ok(text) => (cut_payload(text.as_bytes(), max), true),
        Err(_) => (cut_payload(b"", 0), false),
    }
}

/// An answer's bytes as the node wrote them (JSON) as the payload: copied, not parsed again.
fn payload_of_bytes(bytes: &[u8], max: usize) -> (Payload, bool) {
    if bytes.len() > max {
        return (cut_payload(bytes, max), true);
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => (Payload::trusted(text.to_owned()), false),
        Err(_) => (cut_payload(bytes, max), false),
    }
}

/// The first `max` bytes of `text`, as a JSON string.
fn cut_payload(text: &[u8], max: usize) -> Payload {
    let text = serde_json::to_string(&cut(text, max)).unwrap_or_else(|_| "null".to_owned());
    Payload::trusted(text)
}

/// The first `max` bytes of UTF-8 text, cut at a character boundary.
fn cut(text: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(text);
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Logs a user query's records (or, when sampling skipped it and it failed authentication,
/// an auth record) and returns the answer to send: `response`, or a 503 when the spool
/// refused the records.
pub(super) async fn finish_query(
    state: &AppState,
    audit: Option<QueryAudit>,
    response: Response,
    start: Instant,
    (service, endpoint): (&str, &str),
    client: Option<SocketAddr>,
) -> Response {
    let Some(node) = &state.audit else {
        return response;
    };
    let Some(audit) = audit else {
        if response.status() == StatusCode::UNAUTHORIZED {
            let mut r = node.record(Stream::Auth, Utc::now(), request_id(), service, 401, client);
            r.endpoint = Some(endpoint.to_owned());
            r.error_type = Some("com.dataiku.dip.apinode.Unauthorized".into());
            node.log_side(r).await;
        }
        return response;
    };
    let id = HeaderValue::from_str(&audit.request_id).ok();
    let records = audit.records(response.status(), start);
    let mut response = match node.commit(records).await {
        Ok(()) => response,
        Err(refused) => axum::response::IntoResponse::into_response(refused),
    };
    if let Some(id) = id {
        response.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
    response
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
    let mut record = node.record(stream, time, request_id(), service, status.as_u16(), client);
    record.api_key_id = key_id;
    record.context = Some(json!({"method": method.as_str(), "path": path, "query": query}));
    if let Some(generation) = answer.get("generation").and_then(Value::as_str) {
        record.generation = Some(generation.into());
    }
    if !status.is_success() {
        record.error_type = answer
            .get("errorType")
            .and_then(Value::as_str)
            .map(str::to_owned);
        record.error_message = answer
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned);
    }
    node.log_side(record).await;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A payload's JSON text and whether it was cut.
    fn text((payload, cut): (Payload, bool)) -> (String, bool) {
        (payload.get().to_owned(), cut)
    }

    #[test]
    fn payloads_are_cut_to_the_cap_and_marked() {
        // An answer's bytes are kept as they are.
        assert_eq!(
            text(payload_of_bytes(br#"{"a": 1}"#, 100)),
            (r#"{"a": 1}"#.to_owned(), false)
        );
        assert_eq!(
            text(payload_of_bytes(br#"{"a":"xxxxxxxx"}"#, 5)),
            (r#""{\"a\":""#.to_owned(), true)
        );
        // Bytes that are not UTF-8 are kept as a string.
        assert_eq!(
            text(payload_of_bytes(b"caf\xe9", 100)),
            ("\"caf\u{fffd}\"".to_owned(), false)
        );
        let (cut_text, cut) = text(payload_of_value(&json!({"city": "Saint-Étienne"}), 16));
        assert!(cut);
        let cut_value: Value = serde_json::from_str(&cut_text).unwrap();
        assert!(cut_value.as_str().unwrap().len() <= 16);
        assert_eq!(
            text(payload_of_value(&json!([1, 2]), 5)),
            ("[1,2]".to_owned(), false)
        );
    }

    #[test]
    fn inputs_are_the_features_keys_or_arguments() {
        let body = json!({"items": [{"data": {"id": 1}}, {"data": {"id": 2}, "context": {"x": 1}}],
            "context": {"y": 2}});
        assert_eq!(
            *inputs_of(Action::LookupMulti, &body, Some(1)),
            json!({"id": 2})
        );
        let body = json!({"features": {"a": 1}, "dispatch": {}});
        assert_eq!(*inputs_of(Action::Predict, &body, None), json!({"a": 1}));
        let body = json!({"x": 1, "dispatch": {}, "context": {}});
        assert_eq!(*inputs_of(Action::Run, &body, None), json!({"x": 1}));
        let id = request_id();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
    }
}
