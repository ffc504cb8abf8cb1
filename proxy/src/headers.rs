//! What reaches the upstream: the headers the proxy owns and the `Connection` sanitiser (the
//! rewritten `X-Forwarded-For` comes from `watchpost_common::client_ip`). Pure functions over header maps, so every rule is unit-tested.
//!
//! Decisions (SPEC §2 leaves these to us):
//! - Removed from every upstream request before ours are set: `X-Client-IP`,
//!   `X-Client-Country`, `X-Risk-Score`, `X-Request-Id`, `X-Forwarded-For`, and also
//!   `Forwarded` and `X-Real-IP`: the proxy's answer is in `X-Client-IP` and the rewritten
//!   `X-Forwarded-For`, and a stale copy of another forwarding header is exactly what an app
//!   must not be able to believe by mistake.
//! - Other client-IP claims are removed from every upstream request: `X-Original-Forwarded-For`,
//!   `Client-IP`, `X-Cluster-Client-IP`, and the CDN client headers (`True-Client-IP`,
//!   `CF-Connecting-IP`, `Fastly-Client-IP` and the configured `cdn_headers`) unless it is a
//!   configured CDN header and the peer is in `cdn_cidrs` (`cdn` mode). Apps read
//!   `X-Client-IP`; a stale claim is exactly what they must not believe by mistake.
//! - `X-Forwarded-Host`, `X-Forwarded-Proto` and `X-Forwarded-Port` describe the original
//!   request. From a trusted hop (a peer in `trusted_cidrs`, or in `cdn_cidrs` in `cdn` mode;
//!   never in `direct` mode) they pass as they are; from anyone else they are removed. Then,
//!   when absent, the proxy sets `X-Forwarded-Proto` (`http`, or `https` on a TLS connection)
//!   and `X-Forwarded-Host` (the request's `Host`) from what it saw itself.
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
/// The host the client asked for; a trusted hop's value passes, else the proxy sets it.
pub const X_FORWARDED_HOST: &str = "x-forwarded-host";
/// The scheme the client used; a trusted hop's value passes, else the proxy sets it.
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
/// The port the client used; passes only from a trusted hop.
pub const X_FORWARDED_PORT: &str = "x-forwarded-port";

/// Describe the original request: kept only from a trusted hop.
pub const FORWARDED_REQUEST: [&str; 3] = [X_FORWARDED_HOST, X_FORWARDED_PROTO, X_FORWARDED_PORT];

/// Client-IP claims no rule believes: removed from every upstream request.
pub const CLIENT_IP_CLAIMS: [&str; 3] = [
    "x-original-forwarded-for",
    "client-ip",
    "x-cluster-client-ip",
];

/// Well-known CDN client headers: removed unless configured in `cdn_headers` and sent by a
/// peer in `cdn_cidrs` in `cdn` mode.
pub const CDN_CLIENT_HEADERS: [&str; 3] =
    ["true-client-ip", "cf-connecting-ip", "fastly-client-ip"];

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
const PROTECTED: [&str; 5] = [
    "host",
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    X_FORWARDED_PORT,
    "te",
];

/// Most extension `Connection` tokens kept besides `close`, `keep-alive` and `upgrade`
/// (Pingora refuses a request with ten tokens or more).
pub const MAX_CONNECTION_TOKENS: usize = 6;

/// `Connection` options that are not header names.
const OPTIONS: [&str; 3] = ["close", "keep-alive", "upgrade"];

/// Whether the configured CDN headers may pass to the upstream: `cdn` mode and a peer in
/// `cdn_cidrs`.
pub fn keep_cdn_headers(peer: IpAddr, config: &GatewayConfig) -> bool {
    config.ip_mode == IpMode::Cdn && config.is_cdn(peer)
}

/// Whether the peer is a hop whose description of the original request
/// ([`FORWARDED_REQUEST`]) passes: a trusted peer, or a CDN peer in `cdn` mode.
pub fn from_trusted_hop(peer: IpAddr, config: &GatewayConfig) -> bool {
    match config.ip_mode {
        IpMode::Direct => false,
        IpMode::Proxy => config.is_trusted(peer),
        IpMode::Cdn => config.is_trusted(peer) || config.is_cdn(peer),
    }
}

/// The upstream request's headers besides the ones the proxy always sets: remove what a client
/// may have forged, keep what a trusted hop (or the CDN) vouches for, and set
/// `X-Forwarded-Proto` / `X-Forwarded-Host` from what the proxy saw when no trusted hop did.
/// Returns the names to remove and the values to set (in that order).
pub fn plan_forwarding(
    headers: &HeaderMap,
    peer: IpAddr,
    config: &GatewayConfig,
    tls: bool,
) -> (Vec<HeaderName>, Vec<(&'static str, HeaderValue)>) {
    let mut remove: Vec<HeaderName> = Vec::new();
    let mut removing = |name: &str| {
        if headers.contains_key(name) && !remove.iter().any(|r| r.as_str() == name) {
            if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                remove.push(n);
            }
        }
    };
    STRIPPED_NOT_SET.iter().for_each(|h| removing(h));
    CLIENT_IP_CLAIMS.iter().for_each(|h| removing(h));
    let keep_cdn = keep_cdn_headers(peer, config);
    for h in CDN_CLIENT_HEADERS {
        if !keep_cdn || !config.cdn_headers.iter().any(|c| c.as_str() == h) {
            removing(h);
        }
    }
    if !keep_cdn {
        config.cdn_headers.iter().for_each(|h| removing(h.as_str()));
    }
    let trusted_hop = from_trusted_hop(peer, config);
    if !trusted_hop {
        FORWARDED_REQUEST.iter().for_each(|h| removing(h));
    }

    let mut set = Vec::new();
    if !trusted_hop || !headers.contains_key(X_FORWARDED_PROTO) {
        let proto = if tls { "https" } else { "http" };
        set.push((X_FORWARDED_PROTO, HeaderValue::from_static(proto)));
    }
    if !trusted_hop || !headers.contains_key(X_FORWARDED_HOST) {
        if let Some(host) = headers.get(http::header::HOST) {
            set.push((X_FORWARDED_HOST, host.clone()));
        }
    }
    (remove, set)
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
            client_ip_header: "x-forwarded-for".into(),
            cdn_cidrs: vec!["10.1.0.0/16".into()],
            risk: None,
            risk_mode: "enforce".into(),
            rules: Vec::new(),
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
    fn cdn_headers_pass_only_from_a_cdn_peer() {
        let peer_in: IpAddr = "10.1.2.3".parse().expect("ip");
        let peer_out: IpAddr = "192.0.2.1".parse().expect("ip");
        let trusted_not_cdn: IpAddr = "10.2.0.1".parse().expect("ip");
        assert!(keep_cdn_headers(peer_in, &config("cdn", &["10.0.0.0/8"])));
        assert!(keep_cdn_headers(peer_in, &config("cdn", &[])));
        assert!(!keep_cdn_headers(
            trusted_not_cdn,
            &config("cdn", &["10.0.0.0/8"])
        ));
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

    /// The plan as (removed names, set pairs) of strings.
    fn forwarding(
        pairs: &[(&str, &str)],
        peer: &str,
        cfg: &GatewayConfig,
    ) -> (Vec<String>, Vec<(String, String)>) {
        let (remove, set) = plan_forwarding(&headers(pairs), peer.parse().expect("ip"), cfg, false);
        (
            remove.iter().map(|h| h.as_str().to_string()).collect(),
            set.iter()
                .map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").to_string()))
                .collect(),
        )
    }

    #[test]
    fn forged_forwarding_metadata_is_removed_and_replaced() {
        let all = [
            ("host", "app.example"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-port", "443"),
            ("x-original-forwarded-for", "6.6.6.6"),
            ("client-ip", "6.6.6.6"),
            ("x-cluster-client-ip", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("cf-connecting-ip", "6.6.6.6"),
            ("fastly-client-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
        ];
        let every_claim = [
            "forwarded",
            "x-real-ip",
            "x-original-forwarded-for",
            "client-ip",
            "x-cluster-client-ip",
            "true-client-ip",
            "cf-connecting-ip",
            "fastly-client-ip",
        ];
        let ours = vec![
            ("x-forwarded-proto".to_string(), "http".to_string()),
            ("x-forwarded-host".to_string(), "app.example".to_string()),
        ];
        // An untrusted peer, in every mode: everything goes, the proxy's own values come.
        for mode in ["direct", "proxy", "cdn"] {
            let (removed, set) = forwarding(&all, "192.0.2.1", &config(mode, &["10.0.0.0/8"]));
            let mut want: Vec<&str> = every_claim.to_vec();
            want.extend(FORWARDED_REQUEST);
            let mut removed_sorted = removed.clone();
            removed_sorted.sort();
            want.sort();
            assert_eq!(removed_sorted, want, "{mode}");
            assert_eq!(set, ours, "{mode}");
        }
        // Direct mode believes nobody, not even a peer listed as trusted.
        let (removed, set) = forwarding(&all, "10.0.0.1", &config("direct", &["10.0.0.0/8"]));
        assert!(removed.contains(&"x-forwarded-host".to_string()));
        assert_eq!(set, ours);
        // A trusted hop's description of the request passes; the claims still go.
        let (removed, set) = forwarding(&all, "10.0.0.1", &config("proxy", &["10.0.0.0/8"]));
        let mut removed_sorted = removed.clone();
        removed_sorted.sort();
        let mut want = every_claim.to_vec();
        want.sort();
        assert_eq!(removed_sorted, want);
        assert!(set.is_empty(), "{set:?}");
        // A trusted hop that sent no X-Forwarded-Proto/Host gets the proxy's.
        let (_, set) = forwarding(
            &[("host", "app.example")],
            "10.0.0.1",
            &config("proxy", &["10.0.0.0/8"]),
        );
        assert_eq!(set, ours);
        // The CDN's configured header passes from a CDN peer; the unconfigured ones do not.
        let (removed, set) = forwarding(&all, "10.1.0.1", &config("cdn", &[]));
        assert!(!removed.contains(&"cf-connecting-ip".to_string()));
        assert!(!removed.contains(&"true-client-ip".to_string()));
        assert!(removed.contains(&"fastly-client-ip".to_string()));
        assert!(!removed.contains(&"x-forwarded-host".to_string()));
        assert!(set.is_empty(), "{set:?}");
        // ... and not from a trusted hop that is not the CDN.
        let (removed, _) = forwarding(&all, "10.2.0.1", &config("cdn", &["10.0.0.0/8"]));
        assert!(removed.contains(&"cf-connecting-ip".to_string()));
        assert!(!removed.contains(&"x-forwarded-host".to_string()));
        // No Host (HTTP/1.0): no X-Forwarded-Host is invented.
        let (_, set) = forwarding(&[], "192.0.2.1", &config("direct", &[]));
        assert_eq!(set, vec![("x-forwarded-proto".into(), "http".into())]);
    }
}
