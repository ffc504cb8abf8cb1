//! Extractors whose rejections are [`ApiError`]s, so that malformed JSON, bad query strings
//! and bad path parameters get the envelope with a message saying what was wrong.
//!
//! Use `crate::extract::{Json, Query, Path}` in handlers instead of axum's.
//!
//! These three extractors also hold the one rule on control characters (see
//! [`forbidden_char`]): a string with a NUL or another control character never reaches a
//! handler, so it can neither reach PostgreSQL (which refuses NUL in `text` with a 500-worthy
//! error) nor be stored. In a JSON body (every string at any depth, object keys included) tab,
//! line feed and carriage return stay allowed, as free text may span lines; in query and path
//! parameters, which are single-line identifiers and filters, no control character is.
//! Headers used as input need no such rule: `HeaderValue::to_str` already refuses every
//! control character but tab, and the bearer token is only hashed.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    body::Bytes,
    extract::{
        rejection::{JsonRejection, PathRejection, QueryRejection},
        ConnectInfo, FromRequest, FromRequestParts, RawPathParams, Request, State,
    },
    http::{header, request::Parts, HeaderMap, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;
use watchpost_common::{
    client_ip::resolve_client_ip,
    gateway::{GatewayConfig, IpMode},
};

use crate::error::ApiError;

/// Where a string came from, which decides whether tab, line feed and carriage return pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A JSON string: multi-line text is allowed.
    JsonText,
    /// A query or path parameter: one line.
    Param,
}

/// The control-character rule: the C0 controls U+0000–U+001F and DEL (U+007F) are refused,
/// except tab, line feed and carriage return inside JSON strings.
fn forbidden_char(c: char, source: Source) -> bool {
    let allowed_whitespace = source == Source::JsonText && matches!(c, '\t' | '\n' | '\r');
    (c <= '\u{1f}' || c == '\u{7f}') && !allowed_whitespace
}

/// Whether `text` breaks the rule for single-line values (any C0 control or DEL). For strings
/// that come in encoded inside another parameter, such as the parts of a decoded cursor.
pub fn has_control_char(text: &str) -> bool {
    text.chars().any(|c| forbidden_char(c, Source::Param))
}

/// Checks the strings of a JSON document without parsing it again: in valid JSON a control
/// character can only appear inside a string as a `\uXXXX` escape (raw C0 bytes there are a
/// syntax error), and DEL only as itself.
fn json_has_forbidden_char(body: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        match b {
            b'\\' if body.get(i + 1) == Some(&b'u') => {
                let escaped = body
                    .get(i + 2..i + 6)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                    .and_then(char::from_u32);
                if escaped.is_some_and(|c| forbidden_char(c, Source::JsonText)) {
                    return true;
                }
                i += 6;
            }
            // Any other escape (`\\`, `\"`, `\n`, …) is two bytes.
            b'\\' => i += 2,
            0x7f => return true,
            _ => i += 1,
        }
    }
    false
}

fn control_char_error(what: &str) -> ApiError {
    ApiError::bad_request(format!(
        "{what} must not contain control characters (U+0000-U+001F, U+007F)"
    ))
}

/// Whether the request says its body is JSON (`application/json` or `application/*+json`),
/// as axum's own `Json` decides.
fn has_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", subtype)) => subtype == "json" || subtype.ends_with("+json"),
        _ => false,
    }
}

/// JSON body extractor (and response) with [`ApiError`] rejections: 400 for malformed JSON,
/// wrong field types or missing fields (with serde's message), 400 for a missing
/// `Content-Type: application/json`, 400 for a string holding a control character (see the
/// module docs), 413 for a body over the limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(req.headers()) {
            return Err(ApiError::bad_request(
                "expected a JSON body with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("request body too large".into())
            } else {
                ApiError::bad_request(format!("cannot read body: {}", rejection.body_text()))
            }
        })?;
        // Checked before the body is read into `T`, so that no other rejection (an unknown
        // field, a wrong type) echoes the control character back.
        if json_has_forbidden_char(&bytes) {
            return Err(control_char_error(
                "JSON strings (other than tab, line feed and carriage return)",
            ));
        }
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(Self(value))
    }
}

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

/// Query-string extractor with 400 rejections naming the bad parameter, including a
/// parameter (name or value) holding a control character.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(pairs) =
            axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)?;
        for (name, value) in &pairs {
            if has_control_char(name) || has_control_char(value) {
                let shown: String = name.chars().filter(|c| !c.is_control()).collect();
                return Err(control_char_error(&format!("query parameter `{shown}`")));
            }
        }
        let axum::extract::Query(value) = axum::extract::Query::<T>::try_from_uri(&parts.uri)?;
        Ok(Self(value))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request(format!("invalid query string: {}", rejection.body_text()))
    }
}

/// Path-parameter extractor with 400 rejections, including a parameter holding a control
/// character.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                ApiError::bad_request(format!("invalid path: {}", rejection.body_text()))
            })?;
        if let Some((name, _)) = raw.iter().find(|(_, value)| has_control_char(value)) {
            return Err(control_char_error(&format!("path parameter `{name}`")));
        }
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

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
    /// The server's secret key ([`AuditKey`]), for sealing the audit row's personal fields.
    pub secret_key: Option<std::sync::Arc<crate::email::SecretKey>>,
}

/// Request extension carrying the server's secret key (`WATCHPOST_SECRET_KEY`) to
/// [`RequestMeta`], so that every audit context can seal personal fields.
#[derive(Clone, Default)]
pub struct AuditKey(pub Option<std::sync::Arc<crate::email::SecretKey>>);

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
        let secret_key = parts.extensions.get::<AuditKey>().and_then(|k| k.0.clone());
        Self {
            ip,
            user_agent,
            request_id,
            secret_key,
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
    fn control_characters_in_json_strings() {
        let cases: &[(&str, bool)] = &[
            (r#"{"email":"a@example.com"}"#, false),
            (r#"{"email":"a\u0000@example.com"}"#, true),
            (r#"{"a":{"b":["x","\u001F"]}}"#, true),
            (r#"{"k\u0000":1}"#, true),
            (r#"{"t":"line\nnext\ttab\r\u000a\u0009"}"#, false),
            (r#"{"t":"\u007f"}"#, true),
            ("{\"t\":\"\u{7f}\"}", true),
            // An escaped backslash followed by `u0000` is text, not an escape.
            (r#"{"t":"\\u0000"}"#, false),
            (r#"{"t":"\"\u0001"}"#, true),
            (r#"{"t":"\u00e9\u2028"}"#, false),
        ];
        for (body, forbidden) in cases {
            assert_eq!(
                json_has_forbidden_char(body.as_bytes()),
                *forbidden,
                "{body}"
            );
        }
    }

    #[test]
    fn params_refuse_every_control_character() {
        for c in ['\0', '\t', '\n', '\r', '\u{1b}', '\u{7f}'] {
            assert!(forbidden_char(c, Source::Param), "{c:?}");
        }
        for c in ['a', ' ', 'é', '\u{80}'] {
            assert!(!forbidden_char(c, Source::Param), "{c:?}");
        }
    }

    #[test]
    fn json_content_types() {
        for (value, ok) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/merge-patch+json", true),
            ("text/json", false),
            ("text/plain", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().expect("header"));
            assert_eq!(has_json_content_type(&headers), ok, "{value}");
        }
        assert!(!has_json_content_type(&HeaderMap::new()));
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
