//! What reaches the upstream: the headers the proxy owns and the `Connection` sanitiser (the
//! rewritten `X-Forwarded-For` comes from `watchpost_common::client_ip`). Pure functions over header maps, so every rule is unit-tested.
//!
//! Decisions (SPEC §2 leaves these to us):
//! - Removed from every upstream request before ours are set: `X-Client-IP`,
//!   `X-Client-Country`, `X-Risk-Score`, `X-Request-Id`, `X-Forwarded-For`, and also
//!   `Forwarded` and `X-Real-IP`: the proxy's answer is in `X-Client-IP` and the rewritten
//!   `X-Forwarded-For`, and a stale copy of another forwarding header is exactly what an app
//!   must not be able to believe by mistake. The configured CDN headers are removed unless
//!   the request came from a trusted peer in `cdn` mode.
//! - `Connection:` may nominate hop-by-hop headers for removal. A client must not be able to
//!   make the proxy drop forwarding headers that way (Traefik CVE-2021-32813), and Pingora
//!   refuses a request whose `Connection` names `X-Forwarded-For`, so the proxy rewrites the
//!   downstream `Connection` header first: tokens naming a protected header, tokens that are
//!   not valid HTTP tokens, and extension tokens beyond the sixth are removed (the headers nominated by
//!   the latter are removed directly, which is what nominating them asks for).

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION};
use watchpost_common::{GatewayConfig, IpMode};

/// The client IP as the proxy decided it.
pub const X_CLIENT_IP: &str = "x-client-ip";
/// ISO country code of the client, or empty.
pub const X_CLIENT_COUNTRY: &str = "x-client-country";
/// Risk score with three decimals.
pub const X_RISK_SCORE: &str = "x-risk-score";
/// Unique id of the request, also in the access log and the response.
pub const X_REQUEST_ID: &str = "x-request-id";
/// Rewritten by the proxy.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
/// RFC 7239; removed from upstream requests.
pub const FORWARDED: &str = "forwarded";
/// Removed from upstream requests.
pub const X_REAL_IP: &str = "x-real-ip";

/// Removed from every upstream request before the proxy sets its own.
pub const STRIPPED: [&str; 7] = [
    X_CLIENT_IP,
    X_CLIENT_COUNTRY,
    X_RISK_SCORE,
    X_REQUEST_ID,
    X_FORWARDED_FOR,
    FORWARDED,
    X_REAL_IP,
];

/// The stripped headers the proxy does not set itself (those it sets replace any incoming
/// copy).
pub const STRIPPED_NOT_SET: [&str; 2] = [FORWARDED, X_REAL_IP];

/// Never honoured as a `Connection` nomination.
const PROTECTED: [&str; 4] = ["host", "x-forwarded-host", "x-forwarded-proto", "te"];

/// Most extension `Connection` tokens kept besides `close`, `keep-alive` and `upgrade`
/// (Pingora refuses a request with ten tokens or more).
pub const MAX_CONNECTION_TOKENS: usize = 6;

/// `Connection` options that are not header names.
const OPTIONS: [&str; 3] = ["close", "keep-alive", "upgrade"];

/// Whether the configured CDN headers may pass to the upstream.
pub fn keep_cdn_headers(peer: IpAddr, config: &GatewayConfig) -> bool {
    config.ip_mode == IpMode::Cdn && config.is_trusted(peer)
}

/// How to rewrite a request's `Connection` header.
#[derive(Debug, Default, PartialEq)]
pub struct ConnectionPlan {
    /// The new `Connection` value, or `None` to remove the header.
    pub value: Option<String>,
    /// Headers nominated beyond the token limit, removed directly.
    pub remove: Vec<HeaderName>,
    /// Whether anything differs from what the client sent.
    pub changed: bool,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Plan the `Connection` rewrite; `extra_protected` are further names (the CDN headers).
pub fn plan_connection(headers: &HeaderMap, extra_protected: &[HeaderName]) -> ConnectionPlan {
    let values: Vec<&HeaderValue> = headers.get_all(CONNECTION).iter().collect();
    if values.is_empty() {
        return ConnectionPlan::default();
    }
    let mut options: Vec<String> = Vec::new();
    let mut keep: Vec<String> = Vec::new();
    let mut remove = Vec::new();
    let mut changed = values.len() > 1;
    for token in values
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
    {
        if !token.iter().all(|b| is_tchar(*b)) {
            changed = true;
            continue;
        }
        let lower = String::from_utf8_lossy(token).to_ascii_lowercase();
        let protected = STRIPPED.contains(&lower.as_str())
            || PROTECTED.contains(&lower.as_str())
            || extra_protected.iter().any(|h| h.as_str() == lower);
        if protected || keep.contains(&lower) || options.contains(&lower) {
            changed = true;
            continue;
        }
        if OPTIONS.contains(&lower.as_str()) {
            options.push(lower);
            continue;
        }
        if keep.len() >= MAX_CONNECTION_TOKENS {
            changed = true;
            if let Ok(name) = HeaderName::from_bytes(lower.as_bytes()) {
                remove.push(name);
            }
            continue;
        }
        keep.push(lower);
    }
    options.extend(keep);
    let value = (!options.is_empty()).then(|| options.join(", "));
    ConnectionPlan {
        value,
        remove,
        changed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use watchpost_common::gateway::GatewayConfigDoc;

    fn config(mode: &str, trusted: &[&str]) -> GatewayConfig {
        GatewayConfig::from_doc(&GatewayConfigDoc {
            ip_mode: mode.into(),
            trusted_cidrs: trusted.iter().map(|s| s.to_string()).collect(),
            risk_reject_threshold: 0.8,
            cdn_headers: None,
            version: 1,
            updated_at: None,
            updated_by: None,
        })
        .expect("valid config")
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[track_caller]
    fn conn(values: &[&str], want: Option<&str>, removed: &[&str]) {
        let pairs: Vec<(&str, &str)> = values.iter().map(|v| ("connection", *v)).collect();
        let cdn = [HeaderName::from_static("cf-connecting-ip")];
        let plan = plan_connection(&headers(&pairs), &cdn);
        assert_eq!(plan.value.as_deref(), want);
        let got: Vec<&str> = plan.remove.iter().map(|h| h.as_str()).collect();
        assert_eq!(got, removed);
    }

    #[test]
    fn connection_cannot_nominate_protected_headers() {
        conn(&["keep-alive"], Some("keep-alive"), &[]);
        conn(&["close, X-Forwarded-For"], Some("close"), &[]);
        conn(
            &[
                "X-Client-IP, x-risk-score",
                "X-Request-Id, X-Client-Country",
            ],
            None,
            &[],
        );
        conn(
            &["forwarded, X-Real-IP, Host, CF-Connecting-IP, x-forwarded-proto"],
            None,
            &[],
        );
        conn(
            &["\"X-Forwarded-For\", :authority, keep-alive"],
            Some("keep-alive"),
            &[],
        );
        conn(
            &["x-custom-hop, keep-alive"],
            Some("keep-alive, x-custom-hop"),
            &[],
        );
        conn(
            &["a, b, c, d, e, f, g, h, close"],
            Some("close, a, b, c, d, e, f"),
            &["g", "h"],
        );
    }

    #[test]
    fn untouched_connection_is_not_rewritten() {
        let plan = plan_connection(&headers(&[("connection", "keep-alive")]), &[]);
        assert!(!plan.changed);
        let plan = plan_connection(&headers(&[]), &[]);
        assert_eq!(plan, ConnectionPlan::default());
        let plan = plan_connection(&headers(&[("connection", "close, x-forwarded-for")]), &[]);
        assert!(plan.changed);
    }

    #[test]
    fn cdn_headers_pass_only_from_a_trusted_cdn() {
        let peer_in: IpAddr = "10.1.2.3".parse().expect("ip");
        let peer_out: IpAddr = "192.0.2.1".parse().expect("ip");
        assert!(keep_cdn_headers(peer_in, &config("cdn", &["10.0.0.0/8"])));
        assert!(!keep_cdn_headers(peer_out, &config("cdn", &["10.0.0.0/8"])));
        assert!(!keep_cdn_headers(
            peer_in,
            &config("proxy", &["10.0.0.0/8"])
        ));
        assert!(!keep_cdn_headers(
            peer_in,
            &config("direct", &["10.0.0.0/8"])
        ));
    }
}
