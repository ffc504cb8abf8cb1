//! The one error type of the HTTP API and its JSON envelope.
//!
//! Handlers return `Result<_, ApiError>`. [`ApiError::into_response`] only sets the status and
//! stores the error in the response extensions; the envelope middleware
//! ([`render_errors`]) then writes `{"error":{"code","message","request_id"}}` with the request
//! id, logs internal details once, and also wraps every error response that did not come from
//! an `ApiError` (unknown route, wrong method, body limit, panic) in the same envelope.

use std::fmt;

use axum::{
    body::Body,
    extract::Request,
    http::{header, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

/// Machine-readable error codes of the envelope (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    /// 401: the password was right, but the account has MFA: sign in again with `totp_code`
    /// or `recovery_code`.
    MfaRequired,
    Forbidden,
    /// 403: `mfa_required` is on and the caller has not enrolled in MFA yet; only `/api/me`
    /// and `/api/me/mfa/*` answer.
    MfaEnrollmentRequired,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    Unprocessable,
    RateLimited,
    InternalError,
    BadGateway,
    Unavailable,
    Timeout,
}

impl ErrorCode {
    /// The HTTP status that goes with the code.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized | Self::MfaRequired => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::MfaEnrollmentRequired => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The code used for an error response that did not come from an [`ApiError`].
    pub fn from_status(status: StatusCode) -> Self {
        match status {
            StatusCode::BAD_REQUEST => Self::BadRequest,
            StatusCode::UNAUTHORIZED => Self::Unauthorized,
            StatusCode::FORBIDDEN => Self::Forbidden,
            StatusCode::NOT_FOUND => Self::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed,
            StatusCode::CONFLICT => Self::Conflict,
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNPROCESSABLE_ENTITY => Self::Unprocessable,
            StatusCode::TOO_MANY_REQUESTS => Self::RateLimited,
            StatusCode::BAD_GATEWAY => Self::BadGateway,
            StatusCode::SERVICE_UNAVAILABLE => Self::Unavailable,
            StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => Self::Timeout,
            s if s.is_client_error() => Self::BadRequest,
            _ => Self::InternalError,
        }
    }

    fn default_message(self) -> &'static str {
        match self {
            Self::BadRequest => "bad request",
            Self::Unauthorized => "authentication required",
            Self::MfaRequired => "a second factor is required",
            Self::Forbidden => "forbidden",
            Self::MfaEnrollmentRequired => "MFA enrollment is required",
            Self::NotFound => "not found",
            Self::MethodNotAllowed => "method not allowed",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "request body too large",
            Self::Unprocessable => "unprocessable request",
            Self::RateLimited => "rate limit exceeded",
            Self::InternalError => "internal error",
            Self::BadGateway => "upstream service failed",
            Self::Unavailable => "a backing store is unavailable",
            Self::Timeout => "request timed out",
        }
    }
}

/// An API failure. Build it with the named constructors; `Internal` and `Unavailable` keep
/// their detail for the log only.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 401 `MFA_REQUIRED`.
    #[error("mfa required: {0}")]
    MfaRequired(String),
    /// 403 `MFA_ENROLLMENT_REQUIRED`.
    #[error("mfa enrollment required: {0}")]
    MfaEnrollmentRequired(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("unprocessable: {0}")]
    Unprocessable(String),
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    #[error("rate limited, retry after {retry_after_secs}s")]
    RateLimited { retry_after_secs: u64 },
    /// A dependency outside the stores failed (for example SMTP); the message is shown.
    #[error("bad gateway: {0}")]
    BadGateway(String),
    /// A bug or unexpected failure; the detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
    /// PostgreSQL or Redis is unreachable; the detail is logged, never sent.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request took longer than `[admin] request_timeout_ms`.
    #[error("request timed out")]
    Timeout,
}

impl ApiError {
    /// 400 `BAD_REQUEST` with a message saying what was wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }
    /// 401 `UNAUTHORIZED`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::Unauthorized(message.into())
    }
    /// 403 `FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Forbidden(message.into())
    }
    /// 401 `MFA_REQUIRED`: the sign-in needs `totp_code` or `recovery_code`.
    pub fn mfa_required(message: impl Into<String>) -> Self {
        Self::MfaRequired(message.into())
    }
    /// 403 `MFA_ENROLLMENT_REQUIRED`: the caller must enroll in MFA first.
    pub fn mfa_enrollment_required(message: impl Into<String>) -> Self {
        Self::MfaEnrollmentRequired(message.into())
    }
    /// 404 `NOT_FOUND`, e.g. `ApiError::not_found("user not found")`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }
    /// 409 `CONFLICT`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict(message.into())
    }
    /// 422 `UNPROCESSABLE`: well-formed but semantically refused.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::Unprocessable(message.into())
    }
    /// 429 `RATE_LIMITED` with `Retry-After`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self::RateLimited { retry_after_secs }
    }
    /// 502 `BAD_GATEWAY` with a message for the client.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::BadGateway(message.into())
    }
    /// 500 `INTERNAL_ERROR`; `detail` is logged with the request id and never returned.
    pub fn internal(detail: impl fmt::Display) -> Self {
        Self::Internal(detail.to_string())
    }
    /// 503 `UNAVAILABLE`; `detail` is logged and never returned.
    pub fn unavailable(detail: impl fmt::Display) -> Self {
        Self::Unavailable(detail.to_string())
    }

    /// The envelope code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::Unauthorized(_) => ErrorCode::Unauthorized,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::MfaRequired(_) => ErrorCode::MfaRequired,
            Self::MfaEnrollmentRequired(_) => ErrorCode::MfaEnrollmentRequired,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::Unprocessable(_) => ErrorCode::Unprocessable,
            Self::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::BadGateway(_) => ErrorCode::BadGateway,
            Self::Internal(_) => ErrorCode::InternalError,
            // A timeout is reported as the SPEC's "a backing store is unavailable": in this
            // service only a slow store makes a request run that long.
            Self::Unavailable(_) | Self::Timeout => ErrorCode::Unavailable,
        }
    }

    /// The message shown to the client.
    pub fn public_message(&self) -> String {
        match self {
            Self::BadRequest(m)
            | Self::Unauthorized(m)
            | Self::Forbidden(m)
            | Self::MfaRequired(m)
            | Self::MfaEnrollmentRequired(m)
            | Self::NotFound(m)
            | Self::Conflict(m)
            | Self::Unprocessable(m)
            | Self::PayloadTooLarge(m)
            | Self::BadGateway(m) => m.clone(),
            Self::RateLimited { retry_after_secs } => {
                format!("rate limit exceeded; retry in {retry_after_secs}s")
            }
            Self::Internal(_) => ErrorCode::InternalError.default_message().to_string(),
            Self::Unavailable(_) => ErrorCode::Unavailable.default_message().to_string(),
            Self::Timeout => ErrorCode::Timeout.default_message().to_string(),
        }
    }

    fn log_detail(&self) -> Option<&str> {
        match self {
            Self::Internal(d) | Self::Unavailable(d) => Some(d),
            _ => None,
        }
    }
}

/// What the envelope middleware needs from an [`ApiError`]: stored in response extensions.
#[derive(Debug, Clone)]
struct PendingError {
    code: ErrorCode,
    message: String,
    detail: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        let mut response = Response::new(Body::empty());
        *response.status_mut() = code.status();
        if let Self::RateLimited { retry_after_secs } = &self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        response.extensions_mut().insert(PendingError {
            code,
            message: self.public_message(),
            detail: self.log_detail().map(str::to_string),
        });
        response
    }
}

/// The JSON error envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

/// Inside the envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// e.g. `NOT_FOUND`.
    pub code: ErrorCode,
    pub message: String,
    /// The request's `X-Request-Id`.
    pub request_id: String,
}

/// Middleware: turns every error response into the JSON envelope carrying the request id.
///
/// Error responses that already are JSON (and did not come from `ApiError`) are left alone, so
/// that a handler may answer a deliberate JSON error body (such as `/healthz` when down).
pub async fn render_errors(request: Request, next: Next) -> Response {
    let request_id = request_id_of(&request);
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let mut response = next.run(request).await;
    let status = response.status();
    let pending = response.extensions_mut().remove::<PendingError>();
    let pending = match pending {
        Some(p) => p,
        None if status.is_client_error() || status.is_server_error() => {
            let is_json = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            if is_json {
                return response;
            }
            let code = ErrorCode::from_status(status);
            let message = match code {
                ErrorCode::NotFound => format!("no route for {method} {path}"),
                ErrorCode::MethodNotAllowed => format!("{method} is not allowed on {path}"),
                _ => code.default_message().to_string(),
            };
            PendingError {
                code,
                message,
                detail: None,
            }
        }
        None => return response,
    };
    if let Some(detail) = &pending.detail {
        if pending.code == ErrorCode::InternalError {
            tracing::error!(request_id = %request_id, %method, %path, error = %detail, "request failed");
        } else {
            tracing::warn!(request_id = %request_id, %method, %path, error = %detail, "store unavailable");
        }
    } else if pending.code == ErrorCode::InternalError {
        tracing::error!(request_id = %request_id, %method, %path, "request failed (panic or internal error)");
    }
    let body = ErrorEnvelope {
        error: ErrorBody {
            code: pending.code,
            message: pending.message,
            request_id,
        },
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.remove(header::CONTENT_LENGTH);
    *response.body_mut() = Body::from(bytes);
    response
}

/// The request id set by the request-id layer (empty when somehow absent).
pub fn request_id_of<B>(request: &http::Request<B>) -> String {
    request
        .headers()
        .get(crate::server::REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError;
        match err {
            PoolError::Backend(e) => e.into(),
            // Timeouts and failed creates mean PostgreSQL is unreachable or saturated.
            other => Self::unavailable(format!("postgres pool: {other}")),
        }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(err: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        match err.code() {
            Some(c) if *c == SqlState::UNIQUE_VIOLATION => {
                let what = err
                    .as_db_error()
                    .and_then(|d| d.constraint())
                    .map(crate::db::describe_constraint)
                    .unwrap_or("a unique value");
                Self::conflict(format!("{what} is already taken"))
            }
            Some(c)
                if *c == SqlState::ADMIN_SHUTDOWN
                    || *c == SqlState::CANNOT_CONNECT_NOW
                    || *c == SqlState::TOO_MANY_CONNECTIONS
                    || *c == SqlState::CRASH_SHUTDOWN =>
            {
                Self::unavailable(format!("postgres: {err}"))
            }
            Some(_) => Self::internal(format!("postgres: {err}")),
            // No SQLSTATE: either the connection broke, timed out or was closed (the store is
            // unavailable), or a row did not convert (a bug).
            None if is_connection_error(&err) => Self::unavailable(format!("postgres: {err}")),
            None => Self::internal(format!("postgres: {err}")),
        }
    }
}

/// Whether a tokio-postgres error without SQLSTATE is about the connection rather than our
/// code (row conversion, parameter types).
fn is_connection_error(err: &tokio_postgres::Error) -> bool {
    use std::error::Error as _;
    if err.is_closed() || err.source().is_some_and(|s| s.is::<std::io::Error>()) {
        return true;
    }
    let text = err.to_string();
    [
        "error connecting",
        "timeout",
        "error communicating",
        "connection",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

impl From<redis::RedisError> for ApiError {
    fn from(err: redis::RedisError) -> Self {
        Self::unavailable(format!("redis: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_the_spec_status() {
        let cases = [
            (ApiError::bad_request("x"), 400, "BAD_REQUEST"),
            (ApiError::unauthorized("x"), 401, "UNAUTHORIZED"),
            (ApiError::forbidden("x"), 403, "FORBIDDEN"),
            (ApiError::not_found("x"), 404, "NOT_FOUND"),
            (ApiError::conflict("x"), 409, "CONFLICT"),
            (ApiError::unprocessable("x"), 422, "UNPROCESSABLE"),
            (ApiError::rate_limited(3), 429, "RATE_LIMITED"),
            (ApiError::internal("boom"), 500, "INTERNAL_ERROR"),
            (ApiError::bad_gateway("smtp"), 502, "BAD_GATEWAY"),
            (ApiError::unavailable("down"), 503, "UNAVAILABLE"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.code().status().as_u16(), status, "{err}");
            assert_eq!(
                serde_json::to_value(err.code()).expect("serializes"),
                serde_json::json!(code)
            );
        }
    }

    #[test]
    fn internal_detail_is_never_public() {
        let err = ApiError::internal("password=hunter2 at db.rs:12");
        assert_eq!(err.public_message(), "internal error");
        let err = ApiError::unavailable("connection refused 10.0.0.5:5432");
        assert!(!err.public_message().contains("10.0.0.5"));
    }

    #[test]
    fn rate_limited_sets_retry_after() {
        let response = ApiError::rate_limited(17).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from(17u64))
        );
    }
}
