//! The one place that turns errors into HTTP statuses and the protocol's error body
//! `{"errorType", "message", "detailedMessage"}`.

use apinode_runtime::Error;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::borrow::Cow;

const ERROR_PREFIX: &str = "com.dataiku.dip.apinode.";

#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    /// The suffix after `com.dataiku.dip.apinode.`, or the whole type of a user exception.
    error_type: Cow<'static, str>,
    /// Whether `error_type` is one of the node's (prefixed) or a user exception's own.
    prefixed: bool,
    message: String,
    detailed: String,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        error_type: &'static str,
        message: impl Into<String>,
    ) -> Self {
        let message = message.into();
        ApiError {
            status,
            error_type: Cow::Borrowed(error_type),
            prefixed: true,
            detailed: message.clone(),
            message,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// `errorType` as the body says it.
    pub(crate) fn error_type(&self) -> String {
        if self.prefixed {
            format!("{ERROR_PREFIX}{}", self.error_type)
        } else {
            self.error_type.clone().into_owned()
        }
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        if let Error::Worker { source } = &error
            && let Some(user) = user_exception(source)
        {
            return user;
        }
        let (status, error_type) = match &error {
            Error::NotFound { .. } => (StatusCode::NOT_FOUND, "NotFound"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            Error::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            Error::InvalidQuery { .. } => (StatusCode::BAD_REQUEST, "InvalidQuery"),
            Error::WrongRoute { .. } => (StatusCode::BAD_REQUEST, "WrongRoute"),
            Error::Lookup { source, .. } | Error::Enrichment { source, .. } => {
                classify_lookup(source)
            }
            Error::Scoring { source, .. } => classify_scoring(source),
            Error::Sql { source } => classify_sql(source),
            Error::Worker { source } => classify_worker(source),
            Error::Bundle { .. } => (StatusCode::BAD_REQUEST, "InvalidBundle"),
            Error::Unservable { .. } => (StatusCode::BAD_REQUEST, "UnservableGeneration"),
            Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        };
        let message = error.to_string();
        let mut detailed = message.clone();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !detailed.contains(&text) {
                detailed.push_str(": ");
                detailed.push_str(&text);
            }
            source = cause.source();
        }
        if status.is_server_error() {
            tracing::error!("{detailed}");
        }
        ApiError {
            status,
            error_type: Cow::Borrowed(error_type),
            prefixed: true,
            message,
            detailed,
        }
    }
}

/// A user exception is answered with its own type as `errorType` and its message as
/// `message` (500, or the status the code asked for); the traceback goes to the log.
fn user_exception(error: &apinode_workers::Error) -> Option<ApiError> {
    let apinode_workers::Error::UserCode {
        exception,
        message,
        traceback,
        http_status,
    } = error
    else {
        return None;
    };
    let status = http_status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    tracing::warn!(target: "apinode::user_code", %status, "{exception}: {message}\n{traceback}");
    Some(ApiError {
        status,
        error_type: Cow::Owned(exception.clone()),
        prefixed: false,
        message: message.clone(),
        detailed: format!("{exception}: {message}"),
    })
}

/// Worker failures other than user exceptions: overload is retryable, the rest is the node's.
fn classify_worker(error: &apinode_workers::Error) -> (StatusCode, &'static str) {
    use apinode_workers::Error as W;
    match error {
        W::QueueFull { .. } => (StatusCode::SERVICE_UNAVAILABLE, "EndpointOverloaded"),
        W::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        W::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "WorkerTimeout"),
        W::WorkerDied { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "WorkerDied"),
        W::InvalidCall { .. } => (StatusCode::BAD_REQUEST, "InvalidQuery"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
    }
}

/// Lookup failures are the client's (the status says which kind), but for a referenced
/// dataset's database being unreachable (503, naming the connection) or failing (500).
fn classify_lookup(error: &apinode_lookup::Error) -> (StatusCode, &'static str) {
    match error {
        apinode_lookup::Error::Unavailable { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
        }
        apinode_lookup::Error::NoMatch { .. } => (StatusCode::NOT_FOUND, "NoLookupMatch"),
        apinode_lookup::Error::MultipleMatches { .. } => {
            (StatusCode::CONFLICT, "MultipleLookupMatches")
        }
        apinode_lookup::Error::MissingKey { .. } | apinode_lookup::Error::InvalidKey { .. } => {
            (StatusCode::BAD_REQUEST, "InvalidLookupKey")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
    }
}

/// A parameter or values the statement rejects are the client's; a connection down is a
/// 503; a statement that no longer runs (its table dropped since the import) is the node's.
fn classify_sql(error: &apinode_lookup::Error) -> (StatusCode, &'static str) {
    match error {
        apinode_lookup::Error::Parameter { .. } => (StatusCode::BAD_REQUEST, "InvalidParameter"),
        apinode_lookup::Error::StatementRejected { .. } => {
            (StatusCode::BAD_REQUEST, "SqlStatementRejected")
        }
        apinode_lookup::Error::Unavailable { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
        }
        apinode_lookup::Error::InvalidStatement { .. } => {
            (StatusCode::INTERNAL_SERVER_ERROR, "InvalidStatement")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "SqlQueryFailed"),
    }
}

/// A record the model cannot read is the client's; anything else is the node's.
fn classify_scoring(error: &apinode_scoring::Error) -> (StatusCode, &'static str) {
    match error {
        apinode_scoring::Error::InvalidInput { .. } | apinode_scoring::Error::RowLength { .. } => {
            (StatusCode::BAD_REQUEST, "InvalidFeatures")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error_type = self.error_type();
        let body = serde_json::json!({
            "errorType": error_type,
            "message": self.message,
            "detailedMessage": self.detailed,
        });
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}
