//! Credentials from the `Authorization` header: HTTP Basic with the key as user name (the
//! official client's scheme) or a bearer token; and the admin-key extractor.

use super::{ApiError, AppState};
use apinode_runtime::Credentials;
use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use base64::Engine;

/// The presented credentials, owned (they outlive the header map borrow in handlers).
#[derive(Debug, Clone)]
pub(crate) enum PresentedCredentials {
    None,
    ApiKey(String),
    Bearer(String),
}

impl PresentedCredentials {
    pub(crate) fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Ok(PresentedCredentials::None);
        };
        let value = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("the Authorization header is not ASCII"))?;
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .map_err(|_| {
                    ApiError::unauthorized("the Basic credentials are not valid base64")
                })?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| ApiError::unauthorized("the Basic credentials are not UTF-8"))?;
            // The key is the user name; the password is ignored (the client sends it empty).
            let user = decoded.split_once(':').map_or(decoded.as_str(), |(u, _)| u);
            Ok(PresentedCredentials::ApiKey(user.to_owned()))
        } else if scheme.eq_ignore_ascii_case("bearer") {
            Ok(PresentedCredentials::Bearer(rest.trim().to_owned()))
        } else {
            Err(ApiError::unauthorized(format!(
                "unsupported Authorization scheme `{scheme}`: use Basic (API key as user name) or Bearer"
            )))
        }
    }

    pub(crate) fn as_credentials(&self) -> Credentials<'_> {
        match self {
            PresentedCredentials::None => Credentials::None,
            PresentedCredentials::ApiKey(k) => Credentials::ApiKey(k),
            PresentedCredentials::Bearer(t) => Credentials::Bearer(t),
        }
    }
}

/// Read from the request's headers by reference: the user API needs the credentials, not a
/// copy of the whole header map.
impl<S: Send + Sync> FromRequestParts<S> for PresentedCredentials {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        PresentedCredentials::from_headers(&parts.headers)
    }
}

/// An authenticated admin: the id of the admin key used (logged with every mutation).
#[derive(Debug, Clone)]
pub(crate) struct AdminKey(pub(crate) String);

impl FromRequestParts<AppState> for AdminKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match PresentedCredentials::from_headers(&parts.headers)? {
            PresentedCredentials::ApiKey(secret) => state
                .runtime
                .authenticate_admin(&secret)
                .map(AdminKey)
                .ok_or_else(|| {
                    tracing::warn!(target: "apinode::audit::auth", "admin API: invalid admin key");
                    ApiError::unauthorized("invalid admin API key")
                }),
            _ => Err(ApiError::unauthorized(
                "the admin API requires an admin key (HTTP Basic, the key as user name)",
            )),
        }
    }
}
