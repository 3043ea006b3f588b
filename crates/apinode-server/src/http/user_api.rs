//! `POST /public/api/v1/{service}/{endpoint}/{action}`: parse the body, call the runtime,
//! write the protocol's response.

use super::auth::PresentedCredentials;
use super::{ApiError, AppState};
use apinode_runtime::{Action, CallRequest, CallResponse, Dispatch, LookupItem, Output};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use std::io::Write;
use std::time::Instant;

/// The axum route, for requests the direct path ([`super::node_service`]) leaves to the
/// router (paths that needed normalizing or percent-decoding).
pub(super) async fn call(
    State(state): State<AppState>,
    Path((service, endpoint, route)): Path<(String, String, String)>,
    credentials: PresentedCredentials,
    body: Bytes,
) -> Result<Response, ApiError> {
    answer(
        &state,
        &service,
        &endpoint,
        &route,
        &credentials,
        &body,
        Instant::now(),
    )
}

/// Answers one user query: parses the body, calls the runtime, writes the protocol's
/// response. `start` is when the request reached the node (for `timing.total`).
pub(super) fn answer(
    state: &AppState,
    service: &str,
    endpoint: &str,
    route: &str,
    credentials: &PresentedCredentials,
    body: &[u8],
    start: Instant,
) -> Result<Response, ApiError> {
    let action = Action::from_route(route).ok_or_else(|| {
        ApiError::not_found(format!(
            "unknown action `{route}`: use predict, predict-multi, lookup, lookup-multi, query or run"
        ))
    })?;
    let body = parse_body(body)?;
    let dispatch = parse_dispatch(&body)?;
    let request = CallRequest {
        service,
        endpoint,
        action,
        body: &body,
        dispatch,
        credentials: credentials.as_credentials(),
    };
    let response = match state.runtime.call(&request) {
        Ok(response) => response,
        Err(e) => {
            if matches!(e, apinode_runtime::Error::Unauthorized(_)) {
                tracing::warn!(target: "apinode::audit::auth", service, endpoint, "{e}");
            }
            return Err(e.into());
        }
    };
    Ok(write_response(service, endpoint, &response, start, action))
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

fn write_response(
    service: &str,
    endpoint: &str,
    response: &CallResponse,
    start: Instant,
    action: Action,
) -> Response {
    let mut out = Vec::with_capacity(match &response.output {
        Output::Lookup(lookup) => lookup.buffer.len() + 64 * lookup.items.len() + 192,
        Output::Predict(predict) => predict.buffer.len() + 8 * predict.items.len() + 256,
    });
    match &response.output {
        Output::Lookup(lookup) => {
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
                "],\"timing\":{{\"lookup\":{},\"total\":{}}}",
                response.endpoint_micros,
                start.elapsed().as_micros()
            );
        }
        Output::Predict(predict) => {
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
    let _ = serde_json::to_writer(&mut out, &*response.generation);
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
