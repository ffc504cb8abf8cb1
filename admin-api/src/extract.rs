//! Extractors whose rejections are [`ApiError`]s, so that malformed JSON, bad query strings
//! and bad path parameters get the envelope with a message saying what was wrong.
//!
//! Use `crate::extract::{Json, Query, Path}` in handlers instead of axum's.

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::{
        rejection::{JsonRejection, PathRejection, QueryRejection},
        ConnectInfo, FromRequest, FromRequestParts,
    },
    http::{header, request::Parts, StatusCode},
    response::{IntoResponse, Response},
};

use crate::error::ApiError;

/// JSON body extractor (and response) with [`ApiError`] rejections: 400 for malformed JSON,
/// wrong field types or missing fields (with serde's message), 400 for a missing
/// `Content-Type: application/json`, 413 for a body over the limit.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => {
                ApiError::bad_request(format!("invalid JSON body: {}", e.body_text()))
            }
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::bad_request(format!("malformed JSON body: {}", e.body_text()))
            }
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::bad_request("expected a JSON body with Content-Type: application/json")
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("request body too large".into())
            }
            other => ApiError::bad_request(format!("cannot read body: {}", other.body_text())),
        }
    }
}

/// Query-string extractor with 400 rejections naming the bad parameter.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request(format!("invalid query string: {}", rejection.body_text()))
    }
}

/// Path-parameter extractor with 400 rejections.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request(format!("invalid path: {}", rejection.body_text()))
    }
}

/// Who sent the request, for the audit log and sessions.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    /// The socket peer (the admin API is not behind the Watchpost proxy's client-IP logic).
    pub ip: Option<IpAddr>,
    /// `User-Agent`, truncated to 512 bytes.
    pub user_agent: Option<String>,
    /// `X-Request-Id`.
    pub request_id: String,
}

impl RequestMeta {
    /// Reads the metadata from request parts.
    pub fn from_parts(parts: &Parts) -> Self {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| canonical_ip(addr.ip()));
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| truncate(ua, 512).to_string());
        let request_id = parts
            .headers
            .get(crate::server::REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Self {
            ip,
            user_agent,
            request_id,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::from_parts(parts))
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ipv6_becomes_ipv4() {
        let ip: IpAddr = "::ffff:10.1.2.3".parse().expect("ip");
        assert_eq!(canonical_ip(ip), "10.1.2.3".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
