//! `POST /public/api/v1/{service}/{endpoint}/{action}`: parse the body, call the runtime,
//! write the protocol's response.

use super::audit::{ClientAddr, ItemOutput, PlainItem, QueryAudit, finish_query};
use super::auth::PresentedCredentials;
use super::{ApiError, AppState};
use apinode_lookup::{JsonRecord, Record, SqlAnswer};
use apinode_runtime::{
    Action, CallBody, CallRequest, Dispatch, LookupItem, LookupOutput, Output, PendingOutput,
    PredictOutput, Resolved, WorkerCall, WorkerOutput,
};
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use smallvec::{SmallVec, smallvec};
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

/// The axum route, for requests the direct path ([`super::node_service`]) leaves to the
/// router (paths that needed normalizing or percent-decoding).
pub(super) async fn call(
    State(state): State<AppState>,
    Path((service, endpoint, route)): Path<(String, String, String)>,
    credentials: Result<PresentedCredentials, ApiError>,
    client: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Response {
    let start = Instant::now();
    let client = client.map(|c| c.0.0);
    let mut audit = state.audit.as_ref().and_then(|a| a.begin(&service, client));
    let answered = match credentials {
        Ok(credentials) => answer(
            &state,
            (&service, &endpoint, &route),
            &credentials,
            &body,
            start,
            audit.as_mut(),
        ),
        Err(e) => Err(e),
    };
    let response = match answered {
        Ok(Answered::Now(response)) => Ok(response),
        Ok(Answered::Later(pending)) => pending.finish(audit.as_mut()).await,
        Err(e) => Err(e),
    };
    let response = response.unwrap_or_else(|e| {
        if let Some(audit) = audit.as_mut() {
            audit.fail(&e);
        }
        e.into_response()
    });
    finish_query(
        &state,
        audit,
        response,
        start,
        (&service, &endpoint),
        client,
    )
    .await
}

/// A user query's answer: written already, or waiting on a Python or R endpoint's workers
/// or on a database.
pub(super) enum Answered {
    Now(Response),
    Later(PendingAnswer),
}

/// What a pending answer waits on.
enum Waiting {
    Worker(WorkerCall),
    Output(PendingOutput),
}

/// A query handed to workers (or waiting on I/O), with what its response needs once answered.
pub(super) struct PendingAnswer {
    call: Waiting,
    service: String,
    endpoint: String,
    generation: Arc<str>,
    action: Action,
    start: Instant,
}

impl PendingAnswer {
    /// Waits for the workers (or the I/O) and writes the response (or returns the error).
    pub(super) async fn finish(
        self,
        mut audit: Option<&mut QueryAudit>,
    ) -> Result<Response, ApiError> {
        let PendingAnswer {
            call,
            service,
            endpoint,
            generation,
            action,
            start,
        } = self;
        let mut write = |body: Body<'_>| {
            record_outputs(audit.as_deref_mut(), &body);
            let total = elapsed_micros(start);
            write_response(&service, &endpoint, &generation, body, total, action)
        };
        let call = match call {
            Waiting::Worker(call) => call,
            Waiting::Output(pending) => {
                return match pending.finish().await? {
                    Resolved {
                        output: Output::Lookup(lookup),
                        endpoint_micros,
                    } => Ok(write(Body::Lookup(&lookup, endpoint_micros))),
                    Resolved {
                        output: Output::Predict(predict),
                        ..
                    } => Ok(write(Body::Predict(&predict))),
                    Resolved {
                        output: Output::Sql(answer),
                        endpoint_micros,
                    } => Ok(write(Body::Sql(&answer, endpoint_micros))),
                    _ => Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "InternalError",
                        "a pending answer resolved to another pending answer",
                    )),
                };
            }
        };
        Ok(match call.finish().await? {
            WorkerOutput::Run {
                response,
                execution_micros,
            } => write(Body::Run(&response, execution_micros)),
            WorkerOutput::Predict(predict) => write(Body::Predict(&predict)),
        })
    }
}

/// Hands a logged query's outputs (per item) and timing to its audit.
fn record_outputs(audit: Option<&mut QueryAudit>, body: &Body<'_>) {
    let Some(audit) = audit else {
        return;
    };
    match body {
        Body::Lookup(lookup, micros) => {
            audit.timing("lookup", *micros);
            for item in &lookup.items {
                match item {
                    LookupItem::Data(_) => audit.output(lookup.data(item).unwrap_or(b"null")),
                    LookupItem::Ignored { reason } if audit.wants_payloads() => {
                        audit.output_value(&json!({"ignored": true, "ignoreReason": reason}))
                    }
                    LookupItem::Ignored { .. } => audit.output_value(&Value::Null),
                }
            }
        }
        Body::Predict(predict) => {
            audit.timing("enrich", predict.enrich_micros);
            audit.timing("prediction", predict.predict_micros);
            for i in 0..predict.items.len() {
                audit.output(predict.result(i));
            }
        }
        Body::Run(response, micros) => {
            audit.timing("execution", *micros);
            audit.output(response.get().as_bytes());
        }
        Body::Sql(answer, micros) => {
            audit.timing("execution", *micros);
            let mut json = Vec::new();
            answer.write_json(&mut json);
            audit.output(&json);
        }
    }
}

/// Hands a logged call read without a tree, and answered at once, its answer: its records
/// are written now, from the request's records and the answer's items
/// ([`QueryAudit::log_answered`]).
fn log_answered<'b>(
    audit: &mut QueryAudit,
    route: (&str, &str, Action),
    plain: &PlainBody<'_>,
    body: &Body<'b>,
    total: u64,
) {
    let (items, context) = plain.logged_inputs();
    let inputs = (&items[..], context);
    match *body {
        Body::Lookup(lookup, micros) => {
            let output = |i: usize| match lookup.items.get(i) {
                Some(LookupItem::Ignored { reason }) => ItemOutput::Ignored(reason),
                Some(item) => ItemOutput::Answer(lookup.data(item).unwrap_or(b"null")),
                None => ItemOutput::Answer(b"null"),
            };
            let outputs = (
                lookup.items.len(),
                &output as &dyn Fn(usize) -> ItemOutput<'b>,
            );
            audit.log_answered(route, inputs, outputs, &[("lookup", micros)], total);
        }
        Body::Predict(predict) => {
            let output = |i: usize| ItemOutput::Answer(predict.result(i));
            let outputs = (
                predict.items.len(),
                &output as &dyn Fn(usize) -> ItemOutput<'b>,
            );
            let steps = [
                ("enrich", predict.enrich_micros),
                ("prediction", predict.predict_micros),
            ];
            audit.log_answered(route, inputs, outputs, &steps, total);
        }
        // Never read without a tree (`answer` sends them the collecting way); collected all
        // the same should that change.
        Body::Run(..) | Body::Sql(..) => {
            audit.plain_request(route.2, &items, context);
            record_outputs(Some(audit), body);
        }
    }
}

/// Microseconds since `start`.
fn elapsed_micros(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Answers one user query: parses the body, calls the runtime, writes the protocol's
/// response. `start` is when the request reached the node (for `timing.total`); `audit`, the
/// query's audit when it is logged, gets the parsed body and the outputs.
pub(super) fn answer(
    state: &AppState,
    (service, endpoint, route): (&str, &str, &str),
    credentials: &PresentedCredentials,
    body: &[u8],
    start: Instant,
    mut audit: Option<&mut QueryAudit>,
) -> Result<Answered, ApiError> {
    let action = Action::from_route(route).ok_or_else(|| {
        ApiError::not_found(format!(
            "unknown action `{route}`: use predict, predict-multi, lookup, lookup-multi, query or run"
        ))
    })?;
    // A lookup reads its keys, a prediction its features, straight from the body's text (and
    // its audit records, if any, their inputs), one item or many. Anything else, and any body
    // that path does not take, is parsed into a tree.
    let plain_body = PlainBody::parse(action, body);
    let items = plain_body
        .as_ref()
        .map_or_else(Vec::new, PlainBody::item_records);
    let mut tree = None;
    let (body, dispatch) = match &plain_body {
        Some(plain) => (plain.call_body(action, &items), Dispatch::default()),
        None => {
            let parsed = tree.insert(parse_body(body)?);
            let dispatch = parse_dispatch(parsed)?;
            (CallBody::Json(parsed), dispatch)
        }
    };
    let request = CallRequest {
        service,
        endpoint,
        action,
        body,
        dispatch,
        credentials: credentials.as_credentials(),
    };
    let called = state.runtime.call(&request);
    // A logged call read without a tree and answered at once has its records written as its
    // answer is, from the request's records and the answer's items; any other keeps what its
    // records need until the end.
    let answered_now =
        matches!(&called, Ok(r) if matches!(r.output, Output::Lookup(_) | Output::Predict(_)));
    let logged_as_answered = plain_body
        .as_ref()
        .filter(|_| answered_now && audit.is_some());
    if let Some(audit) = audit.as_deref_mut() {
        match (tree, &plain_body) {
            (Some(tree), _) => audit.request(action, tree),
            (None, Some(plain)) if logged_as_answered.is_none() => {
                let (items, context) = plain.logged_inputs();
                audit.plain_request(action, &items, context);
            }
            (None, _) => {}
        }
    }
    let response = match called {
        Ok(response) => response,
        Err(e) => {
            if matches!(e, apinode_runtime::Error::Unauthorized(_)) {
                tracing::warn!(target: "apinode::audit::auth", service, endpoint, "{e}");
            }
            return Err(e.into());
        }
    };
    let generation = response.generation;
    if let Some(audit) = audit.as_deref_mut() {
        audit.answered_by(&generation, response.key_id, response.endpoint_kind);
    }
    let write = |body: Body<'_>| {
        // One clock read for the answer's `timing.total` and its records'.
        let total = elapsed_micros(start);
        match (audit, logged_as_answered) {
            (Some(audit), Some(plain)) => {
                log_answered(audit, (service, endpoint, action), plain, &body, total)
            }
            (audit, _) => record_outputs(audit, &body),
        }
        write_response(service, endpoint, &generation, body, total, action)
    };
    Ok(match response.output {
        Output::Lookup(lookup) => {
            Answered::Now(write(Body::Lookup(&lookup, response.endpoint_micros)))
        }
        Output::Predict(predict) => Answered::Now(write(Body::Predict(&predict))),
        Output::Sql(answer) => Answered::Now(write(Body::Sql(&answer, response.endpoint_micros))),
        Output::Worker(call) => Answered::Later(PendingAnswer {
            call: Waiting::Worker(call),
            service: service.to_owned(),
            endpoint: endpoint.to_owned(),
            generation: generation.clone(),
            action,
            start,
        }),
        Output::Pending(pending) => Answered::Later(PendingAnswer {
            call: Waiting::Output(pending),
            service: service.to_owned(),
            endpoint: endpoint.to_owned(),
            generation: generation.clone(),
            action,
            start,
        }),
    })
}

/// The fields of a body read without a tree: the record the runtime reads (a lookup's
/// `data`, a prediction's `features`) or a multi call's items', the `context`s the audit log
/// records, what says whether explanations are asked for, and whatever else nobody reads.
/// Which of them a call needs is its action's ([`PlainBody::parse`]).
#[derive(serde::Deserialize)]
struct PlainFields<'a> {
    #[serde(default, borrow)]
    data: Option<JsonRecord<'a>>,
    #[serde(default, borrow)]
    features: Option<JsonRecord<'a>>,
    #[serde(default, borrow)]
    items: Option<Vec<PlainItemFields<'a>>>,
    /// A `null` context is kept: the record says `"context": null`, as the tree's does.
    #[serde(default, borrow, deserialize_with = "null_kept")]
    context: Option<&'a RawValue>,
    /// The official client always sends it with a prediction, with nulls.
    #[serde(default, borrow)]
    explanations: Option<Explanations<'a>>,
    #[serde(default, borrow)]
    dispatch: Option<&'a RawValue>,
}

/// A multi call's item, read without a tree.
#[derive(serde::Deserialize)]
struct PlainItemFields<'a> {
    #[serde(default, borrow)]
    data: Option<JsonRecord<'a>>,
    #[serde(default, borrow)]
    features: Option<JsonRecord<'a>>,
    #[serde(default, borrow, deserialize_with = "null_kept")]
    context: Option<&'a RawValue>,
}

/// Of a query's `explanations`, what says whether they are asked for.
#[derive(serde::Deserialize)]
struct Explanations<'a> {
    #[serde(default, borrow)]
    enabled: Option<&'a RawValue>,
}

impl Explanations<'_> {
    /// Whether a query's `explanations` ask for them (the runtime refuses them, and says so).
    fn asked(explanations: Option<&Explanations<'_>>) -> bool {
        explanations
            .and_then(|e| e.enabled)
            .is_some_and(|enabled| enabled.get() != "false")
    }
}

/// A body read without a tree: a `lookup`'s or `predict`'s record, or a multi call's items'
/// records with their own `context`s; and the call's `context`.
// The single call's record stays inline: it lives on the stack for one request, and boxing it
// would allocate on the lookup's hot path.
#[allow(clippy::large_enum_variant)]
enum PlainBody<'a> {
    Single(JsonRecord<'a>, Option<&'a RawValue>),
    Multi(
        Vec<(JsonRecord<'a>, Option<&'a RawValue>)>,
        Option<&'a RawValue>,
    ),
}

impl<'a> PlainBody<'a> {
    /// `None` for a body this path leaves to the tree, which answers it or says what is wrong
    /// with it: not JSON; without the call's object (`data`, `features`, `items`, each item's);
    /// a field given twice; one of the fields this path knows in another shape (a prediction's
    /// `data` that is not an object, say); a `dispatch`; a prediction asking for explanations;
    /// and every body of the actions without this path (`query`, `run`).
    fn parse(action: Action, body: &'a [u8]) -> Option<PlainBody<'a>> {
        let predict = match action {
            Action::Lookup | Action::LookupMulti => false,
            Action::Predict | Action::PredictMulti => true,
            Action::Query | Action::Run => return None,
        };
        let fields = serde_json::from_slice::<PlainFields<'a>>(body).ok()?;
        if fields.dispatch.is_some() || predict && Explanations::asked(fields.explanations.as_ref())
        {
            return None;
        }
        let pick = |data, features| if predict { features } else { data };
        Some(match action {
            Action::Lookup | Action::Predict => {
                PlainBody::Single(pick(fields.data, fields.features)?, fields.context)
            }
            _ => PlainBody::Multi(
                fields
                    .items?
                    .into_iter()
                    .map(|item| Some((pick(item.data, item.features)?, item.context)))
                    .collect::<Option<_>>()?,
                fields.context,
            ),
        })
    }

    /// What the runtime reads; `items`, a multi call's items' records.
    fn call_body<'b>(&'b self, action: Action, items: &'b [&'b dyn Record]) -> CallBody<'b> {
        match (self, action) {
            (PlainBody::Single(record, _), Action::Lookup) => CallBody::LookupData(record),
            (PlainBody::Single(record, _), _) => CallBody::PredictFeatures(record),
            (PlainBody::Multi(..), Action::LookupMulti) => CallBody::LookupItems(items),
            (PlainBody::Multi(..), _) => CallBody::PredictItems(items),
        }
    }

    /// A multi call's items' records, for [`PlainBody::call_body`]; none for a single call.
    fn item_records(&self) -> Vec<&dyn Record> {
        match self {
            PlainBody::Single(..) => Vec::new(),
            PlainBody::Multi(items, _) => items.iter().map(|(r, _)| r as &dyn Record).collect(),
        }
    }

    /// What a logged query's records take from the body: per item (one for a single call),
    /// the record the runtime reads and the item's own `context`; the call's `context`.
    fn logged_inputs(&self) -> (SmallVec<[PlainItem<'_, 'a>; 1]>, Option<&'a RawValue>) {
        match self {
            PlainBody::Single(record, context) => (smallvec![(record, None)], *context),
            PlainBody::Multi(items, context) => (
                items.iter().map(|(record, own)| (record, *own)).collect(),
                *context,
            ),
        }
    }
}

fn null_kept<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    serde::Deserialize::deserialize(deserializer).map(Some)
}

/// An empty body is `{}` (the official client sends none when there is nothing to send).
fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

fn parse_dispatch(body: &Value) -> Result<Dispatch, ApiError> {
    let Some(dispatch) = body.get("dispatch") else {
        return Ok(Dispatch::default());
    };
    if dispatch.is_null() {
        return Ok(Dispatch::default());
    }
    let object = dispatch
        .as_object()
        .ok_or_else(|| ApiError::bad_request("`dispatch` must be an object"))?;
    let field = |name: &str| -> Result<Option<String>, ApiError> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) if name == "dispatchKey" => Ok(Some(n.to_string())),
            Some(other) => Err(ApiError::bad_request(format!(
                "`dispatch.{name}` must be a string, got {other}"
            ))),
        }
    };
    Ok(Dispatch {
        forced_generation: field("forcedGeneration")?,
        dispatch_key: field("dispatchKey")?,
    })
}

/// What an answer carries before `apiContext`.
enum Body<'a> {
    /// The rows, and the microseconds spent in the lookup.
    Lookup(&'a LookupOutput, u64),
    Predict(&'a PredictOutput),
    /// A function's return value, and the microseconds its worker took.
    Run(&'a RawValue, u64),
    /// A SQL query's answer, and the microseconds its statements took.
    Sql(&'a SqlAnswer, u64),
}

fn write_response(
    service: &str,
    endpoint: &str,
    generation: &str,
    body: Body<'_>,
    total_micros: u64,
    action: Action,
) -> Response {
    let mut out = Vec::with_capacity(match &body {
        Body::Lookup(lookup, _) => lookup.buffer.len() + 64 * lookup.items.len() + 192,
        Body::Predict(predict) => predict.buffer.len() + 8 * predict.items.len() + 256,
        Body::Run(response, _) => response.get().len() + 192,
        Body::Sql(..) => 1024,
    });
    match body {
        Body::Lookup(lookup, lookup_micros) => {
            out.extend_from_slice(b"{\"results\":[");
            for (i, item) in lookup.items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match item {
                    LookupItem::Data(_) => {
                        out.extend_from_slice(b"{\"data\":");
                        out.extend_from_slice(lookup.data(item).unwrap_or(b"null"));
                        out.extend_from_slice(b",\"ignored\":false}");
                    }
                    LookupItem::Ignored { reason } => {
                        let _ = write!(out, "{{\"ignored\":true,\"ignoreReason\":\"{reason}\"}}");
                    }
                }
            }
            let _ = write!(
                out,
                "],\"timing\":{{\"lookup\":{lookup_micros},\"total\":{total_micros}}}"
            );
        }
        Body::Sql(answer, execution_micros) => {
            // The answer's object, left open for `timing`.
            answer.write_json(&mut out);
            out.pop();
            let _ = write!(
                out,
                ",\"timing\":{{\"execution\":{execution_micros},\"total\":{total_micros}}}"
            );
        }
        Body::Run(response, execution_micros) => {
            out.extend_from_slice(b"{\"response\":");
            out.extend_from_slice(response.get().as_bytes());
            let _ = write!(
                out,
                ",\"timing\":{{\"execution\":{execution_micros},\"total\":{total_micros}}}"
            );
        }
        Body::Predict(predict) => {
            if action == Action::Predict {
                out.extend_from_slice(b"{\"result\":");
                out.extend_from_slice(predict.result(0));
            } else {
                out.extend_from_slice(b"{\"results\":[");
                for i in 0..predict.items.len() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(predict.result(i));
                }
                out.push(b']');
            }
            let _ = write!(
                out,
                ",\"timing\":{{\"enrich\":{},\"prediction\":{},\"total\":{total_micros}}}",
                predict.enrich_micros, predict.predict_micros,
            );
        }
    }
    // Written field by field: no JSON tree per request.
    out.extend_from_slice(b",\"apiContext\":{\"serviceId\":");
    let _ = serde_json::to_writer(&mut out, service);
    out.extend_from_slice(b",\"endpointId\":");
    let _ = serde_json::to_writer(&mut out, endpoint);
    out.extend_from_slice(b",\"serviceGeneration\":");
    let _ = serde_json::to_writer(&mut out, generation);
    out.extend_from_slice(b"}}");
    let mut http = (StatusCode::OK, out).into_response();
    http.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    http
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A body read without a tree, as JSON: `{"record": ..., "context": ...}` for a single
    /// call, `{"items": [{"record": ..., "context": ...}], "context": ...}` for a multi call
    /// (contexts as their text); `None` when it is left to the tree.
    fn plain(action: Action, body: &[u8]) -> Option<Value> {
        let text = |raw: Option<&RawValue>| raw.map(|r| r.get().to_owned());
        Some(match PlainBody::parse(action, body)? {
            PlainBody::Single(record, context) => {
                json!({"record": record.to_map(), "context": text(context)})
            }
            PlainBody::Multi(items, context) => {
                let items: Vec<Value> = items
                    .iter()
                    .map(|(record, own)| json!({"record": record.to_map(), "context": text(*own)}))
                    .collect();
                json!({"items": items, "context": text(context)})
            }
        })
    }

    /// Bodies every action leaves to the tree, which answers them or says what is wrong.
    const NOT_PLAIN: [&[u8]; 5] = [
        b"",
        b"[1]",
        br#"{"data": {}, "features": {}, "items": []"#,
        br#"{"data": {}, "features": {}, "items": []} x"#,
        br#"{"data": {}, "features": {}, "items": [], "dispatch": {"forcedGeneration": "v1"}}"#,
    ];

    #[test]
    fn lookup_bodies_without_a_tree_are_the_plain_ones() {
        assert_eq!(
            plain(
                Action::Lookup,
                br#"{"data": {"key": "C1", "n": 2}, "context": {"a": [1]}, "dispatch": null}"#
            ),
            Some(json!({"record": {"key": "C1", "n": 2}, "context": r#"{"a": [1]}"#}))
        );
        assert_eq!(
            plain(Action::Lookup, br#"{"data": {}, "context": null}"#),
            Some(json!({"record": {}, "context": "null"}))
        );
        assert_eq!(
            plain(Action::Lookup, br#"{"data": {}}"#),
            Some(json!({"record": {}, "context": null}))
        );
        assert_eq!(
            plain(
                Action::Lookup,
                br#"{"data": {}, "explanations": {"enabled": true}}"#
            ),
            Some(json!({"record": {}, "context": null}))
        );
        for body in NOT_PLAIN.into_iter().chain([
            &b"{}"[..],
            br#"{"data": null}"#,
            br#"{"data": [1]}"#,
            br#"{"features": {}}"#,
            br#"{"data": {"key": "C1"}, "data": {"key": "C2"}}"#,
            br#"{"data": {"key": "C1"}, "items": 1}"#,
        ]) {
            assert_eq!(
                plain(Action::Lookup, body),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(plain(Action::Run, br#"{"data": {}}"#), None);
        assert_eq!(plain(Action::Query, br#"{"data": {}}"#), None);
    }

    #[test]
    fn predict_bodies_without_a_tree_are_the_plain_ones() {
        // The official client's shape: explanations sent, with nulls.
        assert_eq!(
            plain(
                Action::Predict,
                br#"{"features": {"a": 1, "b": "x"}, "explanations": {"enabled": null,
                    "method": null, "nExplanations": null}, "context": {"c": 2}}"#
            ),
            Some(json!({"record": {"a": 1, "b": "x"}, "context": r#"{"c": 2}"#}))
        );
        for body in [
            &br#"{"features": {}}"#[..],
            br#"{"features": {}, "explanations": null}"#,
            br#"{"features": {}, "explanations": {"enabled": false}}"#,
            br#"{"features": {}, "dispatch": null}"#,
        ] {
            assert!(
                plain(Action::Predict, body).is_some(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        for body in NOT_PLAIN.into_iter().chain([
            &b"{}"[..],
            br#"{"features": null}"#,
            br#"{"features": [1]}"#,
            br#"{"data": {}}"#,
            br#"{"features": {}, "explanations": {"enabled": true}}"#,
            br#"{"features": {}, "explanations": {"enabled": "yes"}}"#,
            br#"{"features": {}, "explanations": "no"}"#,
            br#"{"features": {}, "features": {}}"#,
            br#"{"features": {}, "dispatch": {"dispatchKey": "k"}}"#,
        ]) {
            assert_eq!(
                plain(Action::Predict, body),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn multi_bodies_without_a_tree_are_the_plain_ones() {
        assert_eq!(
            plain(
                Action::LookupMulti,
                br#"{"items": [{"data": {"key": "C1"}, "context": 1}, {"data": {"n": 2}}],
                    "context": {"a": 1}, "dispatch": null}"#
            ),
            Some(json!({"items": [{"record": {"key": "C1"}, "context": "1"},
                                  {"record": {"n": 2}, "context": null}],
                        "context": r#"{"a": 1}"#}))
        );
        assert_eq!(
            plain(
                Action::PredictMulti,
                br#"{"items": [{"features": {"a": 1}, "context": {"c": 1}}, {"features": {}}],
                    "explanations": {"enabled": null, "method": null, "nExplanations": null}}"#
            ),
            Some(
                json!({"items": [{"record": {"a": 1}, "context": r#"{"c": 1}"#},
                                  {"record": {}, "context": null}],
                        "context": null})
            )
        );
        assert_eq!(
            plain(Action::LookupMulti, br#"{"items": []}"#),
            Some(json!({"items": [], "context": null}))
        );
        for (action, body) in [
            (Action::LookupMulti, &br#"{}"#[..]),
            (Action::LookupMulti, br#"{"items": null}"#),
            (Action::LookupMulti, br#"{"items": {}}"#),
            (Action::LookupMulti, br#"{"items": [1]}"#),
            (Action::LookupMulti, br#"{"items": [{}]}"#),
            (Action::LookupMulti, br#"{"items": [{"features": {}}]}"#),
            (Action::LookupMulti, br#"{"items": [{"data": null}]}"#),
            (
                Action::LookupMulti,
                br#"{"items": [{"data": {}, "data": {}}]}"#,
            ),
            (Action::LookupMulti, br#"{"items": [], "items": []}"#),
            (Action::PredictMulti, br#"{"items": [{"data": {}}]}"#),
            (Action::PredictMulti, br#"{"items": [{"features": [1]}]}"#),
            (
                Action::PredictMulti,
                br#"{"items": [], "explanations": {"enabled": true}}"#,
            ),
            (Action::PredictMulti, br#"{}"#),
            (
                Action::PredictMulti,
                br#"{"items": [], "dispatch": {"dispatchKey": "k"}}"#,
            ),
            (
                Action::PredictMulti,
                br#"{"items": [{"features": {}, "features": {}}]}"#,
            ),
        ]
        .into_iter()
        .chain(NOT_PLAIN.map(|body| (Action::LookupMulti, body)))
        .chain(NOT_PLAIN.map(|body| (Action::PredictMulti, body)))
        {
            assert_eq!(
                plain(action, body),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn empty_bodies_are_empty_objects() {
        assert_eq!(parse_body(b"").unwrap(), json!({}));
        assert_eq!(parse_body(b"  \n").unwrap(), json!({}));
        assert!(parse_body(b"[1]").is_err());
        assert!(parse_body(b"{").is_err());
    }

    #[test]
    fn dispatch_is_read_from_the_body() {
        let d = parse_dispatch(&json!({"dispatch": {"forcedGeneration": "v2"}})).unwrap();
        assert_eq!(d.forced_generation.as_deref(), Some("v2"));
        let d = parse_dispatch(&json!({"dispatch": {"dispatchKey": 42}})).unwrap();
        assert_eq!(d.dispatch_key.as_deref(), Some("42"));
        assert!(parse_dispatch(&json!({"dispatch": "v2"})).is_err());
        assert_eq!(parse_dispatch(&json!({})).unwrap(), Dispatch::default());
    }
}
