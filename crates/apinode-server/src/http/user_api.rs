//! `POST /public/api/v1/{service}/{endpoint}/{action}`: parse the body, call the runtime,
//! write the protocol's response.

use super::audit::{ClientAddr, PlainItem, QueryAudit, finish_query};
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
            write_response(&service, &endpoint, &generation, body, start, action)
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
    let items: Vec<&dyn Record> = match &plain_body {
        Some(PlainBody::LookupMulti(multi)) => multi
            .items
            .iter()
            .map(|item| &item.data as &dyn Record)
            .collect(),
        Some(PlainBody::PredictMulti(multi)) => multi
            .items
            .iter()
            .map(|item| &item.features as &dyn Record)
            .collect(),
        _ => Vec::new(),
    };
    let mut tree = None;
    let (body, dispatch) = match &plain_body {
        Some(plain) => (plain.call_body(&items), Dispatch::default()),
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
    if let Some(audit) = audit.as_deref_mut() {
        match (tree, &plain_body) {
            (Some(tree), _) => audit.request(action, tree),
            (None, Some(plain)) => {
                let (items, context) = plain.logged_inputs();
                audit.plain_request(action, &items, context);
            }
            (None, None) => {}
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
        record_outputs(audit, &body);
        write_response(service, endpoint, &generation, body, start, action)
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

/// A `lookup` body read without a tree: `{"data": {...}}`, the `context` the audit log
/// records, and whatever else nobody reads.
#[derive(serde::Deserialize)]
struct LookupBody<'a> {
    #[serde(borrow)]
    data: JsonRecord<'a>,
    /// A `null` context is kept: the record says `"context": null`, as the tree's does.
    #[serde(default, borrow, deserialize_with = "null_kept")]
    context: Option<&'a RawValue>,
    #[serde(default, borrow)]
    dispatch: Option<&'a RawValue>,
}

/// A `predict` body read without a tree: `{"features": {...}}`, the `context` the audit log
/// records, `explanations` (the official client always sends the object, with nulls), and
/// whatever else nobody reads.
#[derive(serde::Deserialize)]
struct PredictBody<'a> {
    #[serde(borrow)]
    features: JsonRecord<'a>,
    #[serde(default, borrow, deserialize_with = "null_kept")]
    context: Option<&'a RawValue>,
    #[serde(default, borrow)]
    explanations: Option<Explanations<'a>>,
    #[serde(default, borrow)]
    dispatch: Option<&'a RawValue>,
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

impl<'a> PredictBody<'a> {
    /// `None` for a body this path leaves to the tree: as [`LookupBody::parse`], and a body
    /// that asks for explanations.
    fn parse(body: &'a [u8]) -> Option<PredictBody<'a>> {
        let predict = serde_json::from_slice::<PredictBody<'a>>(body).ok()?;
        let asked = Explanations::asked(predict.explanations.as_ref());
        (predict.dispatch.is_none() && !asked).then_some(predict)
    }
}

/// A `predict-multi` body read without a tree: its items' `features` objects, the call's and
/// the items' `context`s, `explanations`, and whatever else nobody reads.
#[derive(serde::Deserialize)]
struct PredictMultiBody<'a> {
    #[serde(borrow)]
    items: Vec<PredictMultiItem<'a>>,
    #[serde(default, borrow, deserialize_with = "null_kept")]
    context: Option<&'a RawValue>,
    #[serde(default, borrow)]
    explanations: Option<Explanations<'a>>,
    #[serde(default, borrow)]
    dispatch: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct PredictMultiItem<'a> {
    #[serde(borrow)]
    features: JsonRecord<'a>,
    #[serde(default, borrow, deserialize_with = "null_kept")]
    context: Option<&'a RawValue>,
}

impl<'a> PredictMultiBody<'a> {
    /// `None` for a body this path leaves to the tree: as [`PredictBody::parse`], for the body
    /// and for each item.
    fn parse(body: &'a [u8]) -> Option<PredictMultiBody<'a>> {
        let multi = serde_json::from_slice::<PredictMultiBody<'a>>(body).ok()?;
        let asked = Explanations::asked(multi.explanations.as_ref());
        (multi.dispatch.is_none() && !asked).then_some(multi)
    }
}

/// A `lookup-multi` body read without a tree: its items' `data` objects, the call's and the
/// items' `context`s the audit log records, and whatever else nobody reads.
#[derive(serde::Deserialize)]
struct LookupMultiBody<'a> {
    #[serde(borrow)]
    items: Vec<LookupMultiItem<'a>>,
    #[serde(default, borrow, deserialize_with = "null_kept")]
    context: Option<&'a RawValue>,
    #[serde(default, borrow)]
    dispatch: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct LookupMultiItem<'a> {
    #[serde(borrow)]
    data: JsonRecord<'a>,
    #[serde(default, borrow, deserialize_with = "null_kept")]
    context: Option<&'a RawValue>,
}

impl<'a> LookupMultiBody<'a> {
    /// `None` for a body this path leaves to the tree: as [`LookupBody::parse`], for the body
    /// and for each item.
    fn parse(body: &'a [u8]) -> Option<LookupMultiBody<'a>> {
        serde_json::from_slice::<LookupMultiBody<'a>>(body)
            .ok()
            .filter(|multi| multi.dispatch.is_none())
    }
}

/// A body read without a tree, for the actions that have such a path.
enum PlainBody<'a> {
    Lookup(LookupBody<'a>),
    Predict(PredictBody<'a>),
    LookupMulti(LookupMultiBody<'a>),
    PredictMulti(PredictMultiBody<'a>),
}

impl<'a> PlainBody<'a> {
    fn parse(action: Action, body: &'a [u8]) -> Option<PlainBody<'a>> {
        match action {
            Action::Lookup => LookupBody::parse(body).map(PlainBody::Lookup),
            Action::Predict => PredictBody::parse(body).map(PlainBody::Predict),
            Action::LookupMulti => LookupMultiBody::parse(body).map(PlainBody::LookupMulti),
            Action::PredictMulti => PredictMultiBody::parse(body).map(PlainBody::PredictMulti),
            _ => None,
        }
    }

    /// What the runtime reads; `items`, a multi call's items' records.
    fn call_body<'b>(&'b self, items: &'b [&'b dyn Record]) -> CallBody<'b> {
        match self {
            PlainBody::Lookup(lookup) => CallBody::LookupData(&lookup.data),
            PlainBody::Predict(predict) => CallBody::PredictFeatures(&predict.features),
            PlainBody::LookupMulti(_) => CallBody::LookupItems(items),
            PlainBody::PredictMulti(_) => CallBody::PredictItems(items),
        }
    }

    /// What a logged query's records take from the body: per item (one for a single call),
    /// the record the runtime reads (`data`, `features`) and the item's `context`; the call's
    /// `context`.
    fn logged_inputs(&self) -> (SmallVec<[PlainItem<'_, 'a>; 1]>, Option<&'a RawValue>) {
        match self {
            PlainBody::Lookup(lookup) => (smallvec![(&lookup.data, None)], lookup.context),
            PlainBody::Predict(predict) => (smallvec![(&predict.features, None)], predict.context),
            PlainBody::LookupMulti(multi) => (
                multi.items.iter().map(|i| (&i.data, i.context)).collect(),
                multi.context,
            ),
            PlainBody::PredictMulti(multi) => (
                multi
                    .items
                    .iter()
                    .map(|i| (&i.features, i.context))
                    .collect(),
                multi.context,
            ),
        }
    }
}

fn null_kept<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    serde::Deserialize::deserialize(deserializer).map(Some)
}

impl<'a> LookupBody<'a> {
    /// `None` for a body this path leaves to the tree: not JSON, no `data` object, a field
    /// given twice, or a `dispatch` (the tree's path reads it, and says what is wrong with it).
    fn parse(body: &'a [u8]) -> Option<LookupBody<'a>> {
        serde_json::from_slice::<LookupBody<'a>>(body)
            .ok()
            .filter(|lookup| lookup.dispatch.is_none())
    }
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
    start: Instant,
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
                "],\"timing\":{{\"lookup\":{lookup_micros},\"total\":{}}}",
                start.elapsed().as_micros()
            );
        }
        Body::Sql(answer, execution_micros) => {
            // The answer's object, left open for `timing`.
            answer.write_json(&mut out);
            out.pop();
            let _ = write!(
                out,
                ",\"timing\":{{\"execution\":{execution_micros},\"total\":{}}}",
                start.elapsed().as_micros()
            );
        }
        Body::Run(response, execution_micros) => {
            out.extend_from_slice(b"{\"response\":");
            out.extend_from_slice(response.get().as_bytes());
            let _ = write!(
                out,
                ",\"timing\":{{\"execution\":{execution_micros},\"total\":{}}}",
                start.elapsed().as_micros()
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
                ",\"timing\":{{\"enrich\":{},\"prediction\":{},\"total\":{}}}",
                predict.enrich_micros,
                predict.predict_micros,
                start.elapsed().as_micros()
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

    #[test]
    fn lookup_bodies_without_a_tree_are_the_plain_ones() {
        let taken = LookupBody::parse(
            br#"{"data": {"key": "C1", "n": 2}, "context": {"a": [1]}, "dispatch": null}"#,
        )
        .unwrap();
        assert_eq!(
            Value::Object(taken.data.to_map()),
            json!({"key": "C1", "n": 2})
        );
        assert_eq!(taken.context.map(RawValue::get), Some(r#"{"a": [1]}"#));
        let null_context = LookupBody::parse(br#"{"data": {}, "context": null}"#).unwrap();
        assert_eq!(null_context.context.map(RawValue::get), Some("null"));
        assert!(
            LookupBody::parse(br#"{"data": {}}"#)
                .unwrap()
                .context
                .is_none()
        );
        // Left to the tree, which answers them or says what is wrong.
        for body in [
            &b""[..],
            b"{}",
            b"[1]",
            br#"{"data": null}"#,
            br#"{"data": [1]}"#,
            br#"{"data": {"key": "C1"}"#,
            br#"{"data": {"key": "C1"}} x"#,
            br#"{"data": {"key": "C1"}, "data": {"key": "C2"}}"#,
            br#"{"data": {"key": "C1"}, "dispatch": {"forcedGeneration": "v1"}}"#,
        ] {
            assert!(
                LookupBody::parse(body).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn predict_bodies_without_a_tree_are_the_plain_ones() {
        // The official client's shape: explanations sent, with nulls.
        let taken = PredictBody::parse(
            br#"{"features": {"a": 1, "b": "x"}, "explanations": {"enabled": null,
                "method": null, "nExplanations": null}, "context": {"c": 2}}"#,
        )
        .unwrap();
        assert_eq!(
            Value::Object(taken.features.to_map()),
            json!({"a": 1, "b": "x"})
        );
        assert_eq!(taken.context.map(RawValue::get), Some(r#"{"c": 2}"#));
        for body in [
            &br#"{"features": {}}"#[..],
            br#"{"features": {}, "explanations": null}"#,
            br#"{"features": {}, "explanations": {"enabled": false}}"#,
            br#"{"features": {}, "dispatch": null}"#,
        ] {
            assert!(
                PredictBody::parse(body).is_some(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Left to the tree, which answers them or says what is wrong.
        for body in [
            &b""[..],
            b"{}",
            br#"{"features": null}"#,
            br#"{"features": [1]}"#,
            br#"{"features": {}, "explanations": {"enabled": true}}"#,
            br#"{"features": {}, "explanations": {"enabled": "yes"}}"#,
            br#"{"features": {}, "explanations": "no"}"#,
            br#"{"features": {}, "features": {}}"#,
            br#"{"features": {}, "dispatch": {"dispatchKey": "k"}}"#,
        ] {
            assert!(
                PredictBody::parse(body).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn lookup_multi_bodies_without_a_tree_are_the_plain_ones() {
        let taken = LookupMultiBody::parse(
            br#"{"items": [{"data": {"key": "C1"}, "context": 1}, {"data": {"key": "C2", "n": 2}}],
                "context": {"a": 1}, "dispatch": null}"#,
        )
        .unwrap();
        let items: Vec<Value> = taken
            .items
            .iter()
            .map(|item| Value::Object(item.data.to_map()))
            .collect();
        assert_eq!(items, [json!({"key": "C1"}), json!({"key": "C2", "n": 2})]);
        assert!(LookupMultiBody::parse(br#"{"items": []}"#).is_some());
        assert_eq!(taken.context.map(RawValue::get), Some(r#"{"a": 1}"#));
        let contexts: Vec<_> = taken
            .items
            .iter()
            .map(|i| i.context.map(RawValue::get))
            .collect();
        assert_eq!(contexts, [Some("1"), None]);
        // Left to the tree, which answers them or says what is wrong.
        for body in [
            &b""[..],
            b"{}",
            br#"{"items": null}"#,
            br#"{"items": {}}"#,
            br#"{"items": [1]}"#,
            br#"{"items": [{}]}"#,
            br#"{"items": [{"data": null}]}"#,
            br#"{"items": [{"data": {"key": "C1"}, "data": {"key": "C2"}}]}"#,
            br#"{"items": [], "items": []}"#,
            br#"{"items": [], "dispatch": {"forcedGeneration": "v1"}}"#,
        ] {
            assert!(
                LookupMultiBody::parse(body).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn predict_multi_bodies_without_a_tree_are_the_plain_ones() {
        // The official client's shape: explanations sent, with nulls; an item's context.
        let taken = PredictMultiBody::parse(
            br#"{"items": [{"features": {"a": 1}, "context": {"c": 1}}, {"features": {"b": "x"}}],
                "explanations": {"enabled": null, "method": null, "nExplanations": null}}"#,
        )
        .unwrap();
        let items: Vec<Value> = taken
            .items
            .iter()
            .map(|item| Value::Object(item.features.to_map()))
            .collect();
        assert_eq!(items, [json!({"a": 1}), json!({"b": "x"})]);
        assert_eq!(
            taken.items[0].context.map(RawValue::get),
            Some(r#"{"c": 1}"#)
        );
        let body = br#"{"items": [{"features": {}}], "explanations": {"enabled": false}}"#;
        assert!(PlainBody::parse(Action::PredictMulti, body).is_some());
        // Left to the tree, which answers them or says what is wrong.
        for body in [
            &b"{}"[..],
            br#"{"items": [{"data": {}}]}"#,
            br#"{"items": [{"features": [1]}]}"#,
            br#"{"items": [], "explanations": {"enabled": true}}"#,
            br#"{"items": [], "dispatch": {"dispatchKey": "k"}}"#,
            br#"{"items": [{"features": {}, "features": {}}]}"#,
        ] {
            assert!(
                PredictMultiBody::parse(body).is_none(),
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
