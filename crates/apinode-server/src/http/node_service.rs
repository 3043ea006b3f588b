//! The node's HTTP/1.1 server: hyper connections, the user API's hot route answered
//! directly, everything else through the axum router.
//!
//! Why not axum for everything: a user query through the router paid for route matching, the
//! path extractor's strings, two middleware layers and a boxed future per layer; measured
//! over HTTP that was most of the node's time per request beyond the bare hyper ceiling
//! (docs/benchmarks.md). `POST /public/api/v1/{service}/{endpoint}/{action}` with a plain path
//! (no `//`, no trailing slash, no percent-escapes) goes straight to
//! [`user_api::answer`], the same function the axum route calls, so both answer alike.

use super::audit::{ClientAddr, QueryAudit, log_query};
use super::auth::PresentedCredentials;
use super::user_api;
use super::{ApiError, AppState, add_version_headers, normalize_path, panic_response};
use axum::Router;
use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tower::ServiceExt;

const USER_API_PREFIX: &str = "/public/api/v1/";
/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What every connection shares: the state and the router for everything but the hot route.
#[derive(Clone)]
pub(crate) struct NodeService {
    state: AppState,
    router: Router,
    max_body_bytes: usize,
}

impl NodeService {
    pub(crate) fn new(state: AppState, router: Router, max_body_bytes: usize) -> NodeService {
        NodeService {
            state,
            router,
            max_body_bytes,
        }
    }

    /// Answers one request; never fails (errors are JSON answers). `peer` is the client's
    /// address (for the audit log).
    pub(crate) async fn handle(
        self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let start = Instant::now();
        let (mut parts, body) = request.into_parts();
        if let Some(route) = hot_route(&parts.method, &parts.uri) {
            let mut audit = self
                .state
                .audit
                .as_ref()
                .and_then(|a| a.begin(route.0, Some(peer)));
            let response = self
                .user_query(&parts, route, body, start, audit.as_mut())
                .await
                .unwrap_or_else(|e| {
                    if let Some(audit) = audit.as_mut() {
                        audit.fail(&e);
                    }
                    axum::response::IntoResponse::into_response(e)
                });
            let status = response.status();
            let logged = log_query(
                &self.state,
                audit,
                status,
                start,
                (route.0, route.1),
                Some(peer),
            );
            // The request's head holds hyper's read buffer: let it go before waiting.
            drop(parts);
            let mut response = match logged {
                Some(logged) => logged.answer(response).await,
                None => response,
            };
            add_version_headers(&mut response);
            return response;
        }
        parts.extensions.insert(ClientAddr(peer));
        let request = normalize_path(Request::from_parts(parts, Body::new(body)));
        match self.router.oneshot(request).await {
            Ok(response) => response,
            Err(infallible) => match infallible {},
        }
    }

    async fn user_query(
        &self,
        parts: &Parts,
        (service, endpoint, action): (&str, &str, &str),
        body: Incoming,
        start: Instant,
        mut audit: Option<&mut QueryAudit>,
    ) -> Result<Response<Body>, ApiError> {
        let credentials = PresentedCredentials::from_headers(&parts.headers)?;
        let body = Limited::new(body, self.max_body_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "PayloadTooLarge",
                        format!(
                            "the request body is larger than the {} bytes a user query may have",
                            self.max_body_bytes
                        ),
                    )
                } else {
                    ApiError::bad_request(format!("cannot read the request body: {e}"))
                }
            })?
            .to_bytes();
        // The runtime and the writers are synchronous: a panic there is caught here, as the
        // router's catch-panic layer does for the other routes.
        let answered = std::panic::catch_unwind(AssertUnwindSafe(|| {
            user_api::answer(
                &self.state,
                (service, endpoint, action),
                &credentials,
                &body,
                start,
                audit.as_deref_mut(),
            )
        }))
        .unwrap_or_else(|panic| Ok(user_api::Answered::Now(panic_response(panic))))?;
        match answered {
            user_api::Answered::Now(response) => Ok(response),
            user_api::Answered::Later(pending) => pending.finish(audit).await,
        }
    }
}

/// `(service, endpoint, action)` of a `POST /public/api/v1/{service}/{endpoint}/{action}`
/// whose path needs no normalizing or decoding; `None` sends the request to the router.
fn hot_route<'a>(method: &Method, uri: &'a Uri) -> Option<(&'a str, &'a str, &'a str)> {
    if method != Method::POST {
        return None;
    }
    let rest = uri.path().strip_prefix(USER_API_PREFIX)?;
    if rest.contains('%') {
        return None;
    }
    let mut segments = rest.split('/');
    let (service, endpoint, action) = (segments.next()?, segments.next()?, segments.next()?);
    let plain = segments.next().is_none()
        && !service.is_empty()
        && !endpoint.is_empty()
        && !action.is_empty();
    plain.then_some((service, endpoint, action))
}

/// Accepts connections until `shutdown` completes, then lets in-flight requests finish (up to
/// [`DRAIN_TIMEOUT`]).
pub(crate) async fn serve_connections(
    listener: TcpListener,
    service: NodeService,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: the listener stays usable.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers are written whole; waiting for an ACK before the next segment only adds
        // latency.
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let connection = http1::Builder::new().serve_connection(
            TokioIo::new(stream),
            hyper::service::service_fn(move |request| {
                let service = service.clone();
                async move { Ok::<_, Infallible>(service.handle(request, peer).await) }
            }),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still running {} s after the shutdown signal were cut",
            DRAIN_TIMEOUT.as_secs()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: &str, uri: &str) -> Option<(String, String, String)> {
        let uri: Uri = uri.parse().unwrap();
        hot_route(&method.parse().unwrap(), &uri)
            .map(|(s, e, a)| (s.to_owned(), e.to_owned(), a.to_owned()))
    }

    #[test]
    fn only_plain_user_queries_take_the_direct_path() {
        assert_eq!(
            route("POST", "/public/api/v1/svc/ep/lookup"),
            Some(("svc".into(), "ep".into(), "lookup".into()))
        );
        assert_eq!(
            route("POST", "/public/api/v1/svc/ep/predict?x=1"),
            Some(("svc".into(), "ep".into(), "predict".into()))
        );
        for (method, uri) in [
            ("GET", "/public/api/v1/svc/ep/lookup"),
            ("POST", "//public/api/v1/svc/ep/lookup"),
            ("POST", "/public/api/v1/svc/ep/lookup/"),
            ("POST", "/public/api/v1/svc//lookup"),
            ("POST", "/public/api/v1/svc/ep"),
            ("POST", "/public/api/v1/svc/e%70/lookup"),
            ("POST", "/admin/api/services"),
        ] {
            assert_eq!(route(method, uri), None, "{method} {uri}");
        }
    }
}
