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
async fn cdn_mode_takes_the_cdn_header_from_a_cdn_peer() {
    let origin = Origin::start().await;
    let gw = "[gateway]\nip_mode = \"cdn\"\ntrusted_cidrs = [\"127.0.0.0/8\"]\ncdn_cidrs = [\"127.0.0.1\"]\n";
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
    // From the CDN the CDN's own header may pass.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unterminated_forwarded_quote_does_not_hide_the_hops_element() {
    let origin = Origin::start().await;
    // The peer (127.0.0.1) plays the trusted load balancer that appended `for=198.51.100.7`
    // to what the client sent.
    let gw = "[gateway]\nip_mode = \"proxy\"\ntrusted_cidrs = [\"127.0.0.0/8\"]\nclient_ip_header = \"forwarded\"\n";
    let mut p = TestProxy::start("fwd-quote", &[origin.addr], gw).await;
    for forwarded in [
        "for=\"x, for=198.51.100.7",
        "for=\"x, for=\"198.51.100.7\";proto=https",
    ] {
        let r = p.get("/", &with(&[("Forwarded", forwarded)])).await;
        assert_eq!(r.status, 200, "{r:?}");
        let got = origin.last();
        assert_eq!(
            got.header("x-client-ip").as_deref(),
            Some("198.51.100.7"),
            "{forwarded}"
        );
        assert_eq!(
            got.header("x-forwarded-for").as_deref(),
            Some("198.51.100.7, 127.0.0.1")
        );
        let entry = p.entry_for(r.header("x-request-id").expect("id")).await;
        assert_eq!(entry["ip"], "198.51.100.7", "{forwarded}: {entry:?}");
        assert_eq!(entry["ip_source"], "forwarded");
        assert_eq!(entry["peer"], "127.0.0.1");
    }
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_configured_header_is_believed() {
    let origin = Origin::start().await;
    // A hop that sets X-Real-IP only: whatever X-Forwarded-For the client wrote passes it.
    let gw = "[gateway]\nip_mode = \"proxy\"\ntrusted_cidrs = [\"127.0.0.0/8\"]\nclient_ip_header = \"x-real-ip\"\n";
    let mut p = TestProxy::start("real-ip-hop", &[origin.addr], gw).await;
    let r = p
        .get(
            "/",
            &with(&[
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Real-IP", "198.51.100.3"),
                ("Forwarded", "for=6.6.6.7"),
            ]),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = origin.last();
    assert_eq!(got.header("x-client-ip").as_deref(), Some("198.51.100.3"));
    assert_eq!(
        got.header("x-forwarded-for").as_deref(),
        Some("198.51.100.3, 127.0.0.1")
    );
    assert_eq!(got.header("x-real-ip"), None);
    assert_eq!(got.header("forwarded"), None);
    let entry = p.entry_for(r.header("x-request-id").expect("id")).await;
    assert_eq!(entry["ip"], "198.51.100.3");
    assert_eq!(entry["ip_source"], "x-real-ip");
    // Without X-Real-IP the client-sent X-Forwarded-For still counts for nothing.
    let r = p.get("/", &with(&[("X-Forwarded-For", "6.6.6.6")])).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        origin.last().header("x-client-ip").as_deref(),
        Some("127.0.0.1")
    );
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cdn_header_from_a_trusted_hop_that_is_not_the_cdn_is_ignored_and_removed() {
    let origin = Origin::start().await;
    // 127.0.0.1 is a trusted load balancer, but the CDN's ranges are elsewhere.
    let gw = "[gateway]\nip_mode = \"cdn\"\ntrusted_cidrs = [\"127.0.0.0/8\"]\ncdn_cidrs = [\"192.0.2.0/24\"]\nrisk_reject_threshold = 1.0\n";
    let mut p = TestProxy::start("cdn-spoof", &[origin.addr], gw).await;
    let r = p
        .get(
            "/",
            &with(&[
                ("CF-Connecting-IP", "6.6.6.6"),
                ("True-Client-IP", "6.6.6.7"),
                ("X-Forwarded-For", "198.51.100.9"),
            ]),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = origin.last();
    assert_eq!(got.header("x-client-ip").as_deref(), Some("198.51.100.9"));
    assert_eq!(got.header("cf-connecting-ip"), None);
    assert_eq!(got.header("true-client-ip"), None);
    let entry = p.entry_for(r.header("x-request-id").expect("id")).await;
    assert_eq!(entry["ip"], "198.51.100.9");
    assert_eq!(entry["ip_source"], "x-forwarded-for");
    assert!(
        entry["reasons"]
            .split(',')
            .any(|r| r == "spoofed_forwarded"),
        "{entry:?}"
    );
    p.cleanup().await;
}

/// What a client may claim about the original request or the client, and may not.
const FORGED_METADATA: &[(&str, &str)] = &[
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Port", "443"),
    ("X-Original-Forwarded-For", "6.6.6.6"),
    ("Client-IP", "6.6.6.6"),
    ("X-Cluster-Client-IP", "6.6.6.6"),
    ("True-Client-IP", "6.6.6.6"),
    ("CF-Connecting-IP", "6.6.6.6"),
    ("Fastly-Client-IP", "6.6.6.6"),
];

const CLIENT_IP_CLAIMS: [&str; 6] = [
    "x-original-forwarded-for",
    "client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarding_metadata_never_reaches_the_origin() {
    let origin = Origin::start().await;
    let mut p = TestProxy::start("fwd-metadata", &[origin.addr], "").await;
    let r = p.get("/", &with(FORGED_METADATA)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = origin.last();
    // What the proxy saw itself.
    assert_eq!(got.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        got.header("x-forwarded-host").as_deref(),
        Some("test.local")
    );
    assert_eq!(got.count("x-forwarded-proto"), 1);
    assert_eq!(got.count("x-forwarded-host"), 1);
    assert_eq!(got.header("x-forwarded-port"), None);
    for h in CLIENT_IP_CLAIMS {
        assert_eq!(got.header(h), None, "{h} must not reach the origin");
    }
    // A client cannot keep them by nominating them in `Connection` either.
    let mut headers = with(FORGED_METADATA);
    headers.push(("Connection", "X-Forwarded-Proto, X-Forwarded-Host, close"));
    let r = p.get("/", &headers).await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = origin.last();
    assert_eq!(got.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        got.header("x-forwarded-host").as_deref(),
        Some("test.local")
    );
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_hops_request_metadata_passes_but_client_ip_claims_do_not() {
    let origin = Origin::start().await;
    let gw = "[gateway]\nip_mode = \"proxy\"\ntrusted_cidrs = [\"127.0.0.0/8\"]\n";
    let mut p = TestProxy::start("fwd-trusted", &[origin.addr], gw).await;
    let r = p.get("/", &with(FORGED_METADATA)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = origin.last();
    assert_eq!(got.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(
        got.header("x-forwarded-host").as_deref(),
        Some("evil.example")
    );
    assert_eq!(got.header("x-forwarded-port").as_deref(), Some("443"));
    for h in CLIENT_IP_CLAIMS {
        assert_eq!(got.header(h), None, "{h} must not reach the origin");
    }
    // A trusted hop that set none of them: the proxy's own.
    let r = p.get("/", BROWSER).await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = origin.last();
    assert_eq!(got.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        got.header("x-forwarded-host").as_deref(),
        Some("test.local")
    );
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_header_and_cdn_cidrs_apply_at_runtime_from_redis() {
    use crate::support::eventually;
    use std::time::Duration;

    let origin = Origin::start().await;
    let mut p = TestProxy::start("runtime-ip-header", &[origin.addr], "").await;
    // What the admin API stores: the new fields, validated by the same code.
    let mut redis = p.redis().await;
    let doc = r#"{"ip_mode":"cdn","trusted_cidrs":["127.0.0.0/8"],"risk_reject_threshold":1.0,
                  "client_ip_header":"x-real-ip","cdn_cidrs":["192.0.2.0/24"],"version":9}"#;
    let _: () = redis::cmd("SET")
        .arg(format!("{}gateway:config", p.prefix))
        .arg(doc)
        .query_async(&mut redis)
        .await
        .expect("SET");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{}gateway:config:changed", p.prefix))
        .arg("9")
        .query_async(&mut redis)
        .await
        .expect("PUBLISH");
    eventually("version 9 applied", Duration::from_secs(10), || async {
        (p.healthz().await["config_version"] == 9).then_some(())
    })
    .await;
    let r = p
        .get(
            "/",
            &with(&[
                ("X-Forwarded-For", "6.6.6.6"),
                ("CF-Connecting-IP", "6.6.6.7"),
                ("X-Real-IP", "198.51.100.4"),
            ]),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = origin.last();
    assert_eq!(got.header("x-client-ip").as_deref(), Some("198.51.100.4"));
    assert_eq!(got.header("cf-connecting-ip"), None);
    let entry = p.entry_for(r.header("x-request-id").expect("id")).await;
    assert_eq!(entry["ip_source"], "x-real-ip");
    p.cleanup().await;
}
