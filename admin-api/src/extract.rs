//! Extractors whose rejections are [`ApiError`]s, so that malformed JSON, bad query strings
//! and bad path parameters get the envelope with a message saying what was wrong.
//!
//! Use `crate::extract::{Json, Query, Path}` in handlers instead of axum's.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    extract::{
        rejection::{JsonRejection, PathRejection, QueryRejection},
        ConnectInfo, FromRequest, FromRequestParts, Request, State,
    },
    http::{header, request::Parts, HeaderMap, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use watchpost_common::{
    client_ip::resolve_client_ip,
    gateway::{GatewayConfig, IpMode},
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

/// The client address of a request, decided once per request by [`client_addr`] from the
/// socket peer, `X-Forwarded-For` and `[admin] trusted_cidrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// How the admin API finds its own client's IP: SPEC §2's `proxy` rules over
/// `[admin] trusted_cidrs`, by the same function the proxy uses
/// ([`watchpost_common::client_ip::resolve_client_ip`]). Only from a trusted peer is
/// `X-Forwarded-For` believed; the walk goes right to left and skips trusted addresses. With no
/// trusted CIDRs the socket peer is the client and forwarding headers are ignored.
#[derive(Debug, Clone)]
pub struct ClientIpRule {
    gateway: Arc<GatewayConfig>,
}

impl ClientIpRule {
    /// The rule for `[admin] trusted_cidrs` (already validated; an entry that does not parse
    /// is left out).
    pub fn new(trusted_cidrs: &[String]) -> Self {
        let trusted: Vec<_> = trusted_cidrs
            .iter()
            .filter_map(|c| watchpost_common::gateway::parse_cidr(c))
            .collect();
        let ip_mode = if trusted.is_empty() {
            IpMode::Direct
        } else {
            IpMode::Proxy
        };
        Self {
            gateway: Arc::new(GatewayConfig {
                ip_mode,
                trusted_cidrs: trusted,
                ..GatewayConfig::default()
            }),
        }
    }

    /// The client IP of a request from `peer` with `headers`.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        resolve_client_ip(peer, headers, &self.gateway).ip
    }
}

/// Middleware: records the request's [`ClientAddr`] (when the socket peer is known) for
/// [`RequestMeta`].
pub async fn client_addr(
    State(rule): State<ClientIpRule>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    if let Some(peer) = peer {
        let ip = rule.resolve(peer, request.headers());
        request.extensions_mut().insert(ClientAddr(ip));
    }
    next.run(request).await
}

/// Who sent the request, for the audit log, sessions and throttles.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    /// The client IP ([`ClientAddr`]: the socket peer, or from `X-Forwarded-For` when the
    /// peer is in `[admin] trusted_cidrs`).
    pub ip: Option<IpAddr>,
    /// `User-Agent`, truncated to 512 bytes.
    pub user_agent: Option<String>,
    /// `X-Request-Id`.
    pub request_id: String,
}

impl RequestMeta {
    /// Reads the metadata from request parts.
    pub fn from_parts(parts: &Parts) -> Self {
        let ip = match parts.extensions.get::<ClientAddr>() {
            Some(ClientAddr(ip)) => Some(*ip),
            None => parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| canonical_ip(addr.ip())),
        };
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

    #[track_caller]
    fn client(trusted: &[&str], peer: &str, xff: &[&str]) -> IpAddr {
        let trusted: Vec<String> = trusted.iter().map(|s| s.to_string()).collect();
        let mut headers = HeaderMap::new();
        for line in xff {
            headers.append("x-forwarded-for", line.parse().expect("header"));
        }
        ClientIpRule::new(&trusted).resolve(peer.parse().expect("peer"), &headers)
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        // No trusted CIDRs: the header is ignored.
        assert_eq!(client(&[], "127.0.0.1", &["203.0.113.9"]), ip("127.0.0.1"));
        // Untrusted peer: ignored.
        assert_eq!(
            client(&["10.0.0.0/8"], "198.51.100.1", &["203.0.113.9"]),
            ip("198.51.100.1")
        );
        // Trusted peer: right to left, skipping trusted hops, every header line counted.
        assert_eq!(
            client(
                &["10.0.0.0/8"],
                "10.0.0.1",
                &["1.1.1.1, 203.0.113.9", "10.0.0.7"]
            ),
            ip("203.0.113.9")
        );
        // Every hop trusted: the leftmost.
        assert_eq!(
            client(&["10.0.0.0/8"], "10.0.0.1", &["10.1.1.1, 10.2.2.2"]),
            ip("10.1.1.1")
        );
        // Mapped IPv6 peers are IPv4.
        assert_eq!(
            client(&["127.0.0.0/8"], "::ffff:127.0.0.1", &["2001:db8::1"]),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
