//! The one mapping from `ServiceError` to HTTP: status, RFC 6749 §5.2 error code, a
//! short description, and `WWW-Authenticate` where RFC 6750/7235 want it. 5xx bodies
//! are generic; the cause was logged by the service.

use crate::service::ServiceError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Challenge sent with 401s: Basic for static introspection clients, Bearer for admin.
const CHALLENGE: &str = r#"Basic realm="tessera", Bearer realm="tessera""#;

pub fn status_and_code(e: &ServiceError) -> (StatusCode, &'static str) {
    use ServiceError as E;
    let status = match e {
        E::InvalidRequest(_)
        | E::UnsupportedGrantType
        | E::InvalidGrant(_)
        | E::InvalidTarget
        | E::InvalidScope(_)
        | E::UnauthorizedClient(_) => StatusCode::BAD_REQUEST,
        E::InvalidClient(_) | E::Unauthenticated => StatusCode::UNAUTHORIZED,
        E::SlowDown { .. } => StatusCode::TOO_MANY_REQUESTS,
        E::Forbidden => StatusCode::FORBIDDEN,
        E::NotFound(_) => StatusCode::NOT_FOUND,
        E::Conflict(_) => StatusCode::CONFLICT,
        E::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        E::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, e.oauth_code())
}

/// An error response with `Cache-Control: no-store`.
pub struct ApiError(pub ServiceError);

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = status_and_code(&self.0);
        let description = match &self.0 {
            ServiceError::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        // The description is what the client sees, so it is safe to log (contract §2:
        // never key material or the token); the secret scan in tests/adversarial.rs checks it.
        tracing::debug!(
            status = status.as_u16(),
            error = code,
            description,
            "request refused"
        );
        let body = serde_json::json!({"error": code, "error_description": description});
        let mut resp = (status, Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(CHALLENGE),
            );
        }
        if let ServiceError::SlowDown { retry_after } = self.0
            && let Ok(v) = HeaderValue::from_str(&retry_after.to_string())
        {
            h.insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// A body the transport refused before the service saw it (size, encoding).
pub fn payload_too_large() -> Response {
    let body = serde_json::json!({"error": "invalid_request", "error_description": "request body is larger than 64 KiB"});
    let mut resp = (StatusCode::PAYLOAD_TOO_LARGE, Json(body)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
