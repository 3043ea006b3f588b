//! The HTTP surface: the user API (`/public/api/v1/...`), the admin API (`/admin/api/...`)
//! and `/isAlive`. Handlers parse and write JSON and call the runtime; nothing else.

mod admin_api;
mod audit;
mod auth;
mod error;
mod node_service;
mod user_api;

use apinode_runtime::Runtime;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;
use tower_http::catch_panic::CatchPanicLayer;

pub(crate) use audit::NodeAudit;
pub(crate) use error::ApiError;
pub(crate) use node_service::{NodeService, serve_connections};

/// What every handler shares.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) runtime: Arc<Runtime>,
    /// `None`: the audit log is disabled.
    pub(crate) audit: Option<Arc<NodeAudit>>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpLimits {
    /// Largest user-API or admin JSON body.
    pub(crate) max_body_bytes: usize,
    /// Largest archive accepted by the upload route.
    pub(crate) max_archive_bytes: usize,
}

/// The node's service: the user API's hot route answered directly ([`NodeService`]), the
/// rest through the router, with path normalization in front of it so that the official
/// client's `//public/...` and trailing slashes reach the same routes.
pub(crate) fn node_service(
    runtime: Arc<Runtime>,
    audit: Option<Arc<NodeAudit>>,
    limits: HttpLimits,
) -> NodeService {
    let state = AppState { runtime, audit };
    let router = Router::new()
        .route("/isAlive", get(is_alive))
        .route(
            "/public/api/v1/{service}/{endpoint}/{action}",
            post(user_api::call),
        )
        .merge(admin_api::routes(limits.max_archive_bytes))
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::admin_middleware,
        ))
        .with_state(state.clone());
    NodeService::new(state, router, limits.max_body_bytes)
}

async fn is_alive(State(state): State<AppState>) -> Response {
    // Operators force a node out of a load balancer by creating this file (as Dataiku's does).
    if state
        .runtime
        .data_dir()
        .join("apinode-not-alive.txt")
        .exists()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "forced down by apinode-not-alive.txt",
        )
            .into_response();
    }
    (StatusCode::OK, "OK").into_response()
}

/// Errors produced by axum itself (a body over the limit, a wrong method, an unreadable body)
/// come as plain text; give them the protocol's JSON error shape like every other error.
/// Every response also gets the version headers here (one middleware per request, not two).
async fn json_errors(request: Request, next: axum::middleware::Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let mut response = next.run(request).await;
    add_version_headers(&mut response);
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let (error_type, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "MethodNotAllowed",
            format!("method {method} is not allowed on {}", uri.path()),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "PayloadTooLarge",
            format!(
                "the request body is larger than {} accepts ({text})",
                uri.path()
            ),
        ),
        _ if text.is_empty() => (
            "HttpError",
            status.canonical_reason().unwrap_or("error").to_owned(),
        ),
        StatusCode::NOT_FOUND => ("NotFound", text),
        _ if status.is_client_error() => ("BadRequest", text),
        _ => ("InternalError", text),
    };
    let mut json = ApiError::new(status, error_type, message).into_response();
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json
}

async fn unknown_route(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalError",
        "the node hit an internal error while answering; see its log",
    )
    .into_response()
}

/// Header names are case-insensitive; built once rather than parsed from text per answer
/// (the parse showed in the node's profile).
const DSS_API_VERSION: HeaderName = HeaderName::from_static("dss-api-version");
const DSS_VERSION: HeaderName = HeaderName::from_static("dss-version");

fn add_version_headers(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(DSS_API_VERSION, HeaderValue::from_static("1"));
    headers.insert(
        DSS_VERSION,
        HeaderValue::from_static(concat!("apinode-", env!("CARGO_PKG_VERSION"))),
    );
}

/// Collapses repeated slashes and drops a trailing slash: `//admin/api/services/` becomes
/// `/admin/api/services`.
fn normalize_path(mut request: Request) -> Request {
    let path = request.uri().path();
    if !path.contains("//") && (path.len() <= 1 || !path.ends_with('/')) {
        return request;
    }
    let mut normalized = String::with_capacity(path.len());
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        normalized.push('/');
        normalized.push_str(segment);
    }
    if normalized.is_empty() {
        normalized.push('/');
    }
    if let Some(query) = request.uri().query() {
        normalized.push('?');
        normalized.push_str(query);
    }
    let mut parts = request.uri().clone().into_parts();
    if let Ok(path_and_query) = normalized.parse() {
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(uri: &str) -> String {
        let request = Request::builder()
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap();
        normalize_path(request).uri().to_string()
    }

    #[test]
    fn paths_are_normalized() {
        assert_eq!(
            normalized("//public/api/v1/s/e/lookup"),
            "/public/api/v1/s/e/lookup"
        );
        assert_eq!(normalized("/admin/api/services/"), "/admin/api/services");
        assert_eq!(normalized("/isAlive/"), "/isAlive");
        assert_eq!(normalized("/"), "/");
        assert_eq!(
            normalized("//admin//api/x?filePath=/a//b"),
            "/admin/api/x?filePath=/a//b"
        );
    }
}
