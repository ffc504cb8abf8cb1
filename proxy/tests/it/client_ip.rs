//! What the origin receives in each `ip_mode`, and what a client cannot make it receive.

use crate::support::{Origin, TestProxy, BROWSER};

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut h = BROWSER.to_vec();
    h.extend_from_slice(extra);
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_mode_sends_the_peer_and_strips_forged_headers() {
    let origin = Origin::start().await;
    let mut p = TestProxy::start("direct", &[origin.addr], "").await;
    let r = p
        .get(
            "/hello?x=1",
            &with(&[
                ("X-Forwarded-For", "198.51.100.1"),
                ("X-Client-IP", "6.6.6.6"),
                ("X-Client-Country", "ZZ"),
                ("X-Risk-Score", "0.000"),
                ("X-Request-Id", "forged"),
                ("Forwarded", "for=6.6.6.6"),
                ("X-Real-IP", "6.6.6.6"),
            ]),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "origin ok");
    let got = origin.last();
    assert_eq!(got.header("x-client-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(got.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(got.header("x-client-country").as_deref(), Some(""));
    assert_eq!(got.header("x-risk-score").as_deref(), Some("0.000"));
    for h in [
        "x-client-ip",
        "x-forwarded-for",
        "x-request-id",
        "x-risk-score",
        "x-client-country",
    ] {
        assert_eq!(got.count(h), 1, "{h} must arrive exactly once");
    }
    assert_eq!(got.header("forwarded"), None);
    assert_eq!(got.header("x-real-ip"), None);
    let id = got.header("x-request-id").expect("request id");
    assert_ne!(id, "forged");
    assert_eq!(r.header("x-request-id"), Some(id.as_str()));
    let entry = p.entry_for(&id).await;
    assert_eq!(entry["ip"], "127.0.0.1");
    assert_eq!(entry["ip_source"], "peer");
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_believes_a_trusted_peer_and_reads_every_header_line() {
    let origin = Origin::start().await;
    let gw = "[gateway]\nip_mode = \"proxy\"\ntrusted_cidrs = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n";
    let mut p = TestProxy::start("proxy-mode", &[origin.addr], gw).await;
    // Two X-Forwarded-For lines form one chain: 198.51.100.7, 203.0.113.9, 10.0.0.1.
    let r = p
        .get(
            "/",
            &with(&[
                ("X-Forwarded-For", "198.51.100.7, 203.0.113.9"),
                ("X-Forwarded-For", "10.0.0.1"),
            ]),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = origin.last();
    assert_eq!(got.header("x-client-ip").as_deref(), Some("203.0.113.9"));
    assert_eq!(
        got.header("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 10.0.0.1, 127.0.0.1")
    );
    let entry = p.entry_for(r.header("x-request-id").expect("id")).await;
    assert_eq!(entry["ip"], "203.0.113.9");
    assert_eq!(entry["ip_source"], "x-forwarded-for");
    assert_eq!(entry["peer"], "127.0.0.1");
    assert!(!entry["reasons"].contains("spoofed_forwarded"), "{entry:?}");
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdn_mode_takes_the_cdn_header_from_a_trusted_peer() {
    let origin = Origin::start().await;
    let gw = "[gateway]\nip_mode = \"cdn\"\ntrusted_cidrs = [\"127.0.0.0/8\"]\n";
    let mut p = TestProxy::start("cdn-mode", &[origin.addr], gw).await;
    let r = p
        .get(
            "/",
            &with(&[
                ("CF-Connecting-IP", "198.51.100.20"),
                ("X-Forwarded-For", "192.0.2.1"),
            ]),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = origin.last();
    assert_eq!(got.header("x-client-ip").as_deref(), Some("198.51.100.20"));
    assert_eq!(
        got.header("x-forwarded-for").as_deref(),
        Some("198.51.100.20, 127.0.0.1")
    );
    // From a trusted CDN the CDN's own header may pass.
    assert_eq!(
        got.header("cf-connecting-ip").as_deref(),
        Some("198.51.100.20")
    );
    let entry = p.entry_for(r.header("x-request-id").expect("id")).await;
    assert_eq!(entry["ip_source"], "cf-connecting-ip");
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarding_from_an_untrusted_peer_is_ignored_and_logged() {
    let origin = Origin::start().await;
    // The peer (127.0.0.1) is not trusted; threshold 1.0 so the request still goes through.
    let gw = "[gateway]\nip_mode = \"cdn\"\ntrusted_cidrs = [\"10.0.0.0/8\"]\nrisk_reject_threshold = 1.0\n";
    let mut p = TestProxy::start("spoofed", &[origin.addr], gw).await;
    let r = p
        .get(
            "/",
            &with(&[
                ("X-Forwarded-For", "203.0.113.66"),
                ("CF-Connecting-IP", "203.0.113.67"),
            ]),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = origin.last();
    assert_eq!(got.header("x-client-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(got.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    // An untrusted peer's CDN header does not reach the app either.
    assert_eq!(got.header("cf-connecting-ip"), None);
    let score: f64 = got
        .header("x-risk-score")
        .expect("score")
        .parse()
        .expect("number");
    assert!(score > 0.0, "spoofing must raise the score");
    let entry = p.entry_for(r.header("x-request-id").expect("id")).await;
    assert_eq!(entry["ip"], "127.0.0.1");
    assert_eq!(entry["ip_source"], "peer");
    assert!(
        entry["reasons"]
            .split(',')
            .any(|r| r == "spoofed_forwarded"),
        "{entry:?}"
    );
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_header_cannot_strip_the_proxys_headers() {
    let origin = Origin::start().await;
    let gw = "[gateway]\nip_mode = \"proxy\"\ntrusted_cidrs = [\"127.0.0.0/8\"]\n";
    let mut p = TestProxy::start("connection", &[origin.addr], gw).await;
    let r = p
        .get(
            "/",
            &with(&[
                ("X-Forwarded-For", "203.0.113.5"),
                ("X-Hop", "drop me"),
                (
                    "Connection",
                    "X-Client-IP, X-Forwarded-For, X-Request-Id, X-Risk-Score, X-Client-Country, Forwarded, X-Hop, close",
                ),
            ]),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = origin.last();
    assert_eq!(got.header("x-client-ip").as_deref(), Some("203.0.113.5"));
    assert_eq!(
        got.header("x-forwarded-for").as_deref(),
        Some("203.0.113.5, 127.0.0.1")
    );
    assert!(got.header("x-request-id").is_some());
    assert!(got.header("x-risk-score").is_some());
    assert!(got.header("x-client-country").is_some());
    // A genuine hop-by-hop nomination is still honoured.
    assert_eq!(got.header("x-hop"), None);
    // A quoted (invalid) token would make Pingora refuse the request; the proxy drops it.
    let r = p
        .get("/", &with(&[("Connection", "\"X-Forwarded-For\", close")]))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(origin.last().header("x-forwarded-for").is_some());
    p.cleanup().await;
}
