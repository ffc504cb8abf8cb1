//! `[proxy] max_header_bytes`: oversized request headers are answered 431 with the JSON
//! envelope, logged, and never reach an origin; Pingora's own refusals come before any hook.

use crate::support::{redis_url, send, send_raw, Origin, TestProxy, BROWSER};

/// Bytes the header lines of [`send`] take, counted as the proxy counts them (`name: value`
/// plus CRLF for every line, `Host` and `Connection` included).
fn sent_header_bytes(headers: &[(&str, &str)]) -> usize {
    let ours = [("Host", "test.local"), ("Connection", "close")];
    ours.iter()
        .chain(headers)
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum()
}

/// The browser headers plus one `X-Pad` line that brings the total to exactly `total` bytes.
fn padded_to(total: usize) -> (Vec<(&'static str, &'static str)>, String) {
    let base = sent_header_bytes(BROWSER) + "X-Pad".len() + 4;
    let pad = "p".repeat(total - base);
    (BROWSER.to_vec(), pad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_kb_header_is_refused_with_431_and_logged() {
    let origin = Origin::start().await;
    let mut p = TestProxy::start("hdr-200k", &[origin.addr], "").await;
    let big = "a".repeat(200 * 1024);
    let mut headers = BROWSER.to_vec();
    headers.push(("X-Forwarded-For", "198.51.100.1"));
    headers.push(("X-Big", big.as_str()));
    let r = p.get("/big", &headers).await;
    assert_eq!(r.status, 431, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(
        body["error"]["code"], "REQUEST_HEADER_FIELDS_TOO_LARGE",
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("32768")),
        "{body}"
    );
    let id = r.header("x-request-id").expect("request id");
    assert_eq!(body["error"]["request_id"], id);
    let entry = p.entry_for(id).await;
    assert_eq!(entry["status"], "431");
    assert_eq!(entry["decision"], "reject");
    assert_eq!(entry["path"], "/big");
    // Logged before any header is interpreted: the peer is the client.
    assert_eq!(entry["ip"], "127.0.0.1");
    assert_eq!(entry["ip_source"], "peer");
    assert_eq!(entry["upstream"], "");
    // Many lines that are small one by one count together.
    let line = "b".repeat(1000);
    let mut headers = BROWSER.to_vec();
    for _ in 0..40 {
        headers.push(("X-Many", line.as_str()));
    }
    let r = p.get("/many", &headers).await;
    assert_eq!(r.status, 431, "{r:?}");
    // A normal request still passes; nothing refused ever reached the origin.
    assert_eq!(p.get("/small", BROWSER).await.status, 200);
    let paths: Vec<String> = origin.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/small"]);
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_is_inclusive_and_configurable() {
    let origin = Origin::start().await;
    let mut p = TestProxy::start_with(
        "hdr-limit",
        &[origin.addr],
        &redis_url(),
        "max_header_bytes = 4096",
        "",
    )
    .await;
    let (mut at_limit, pad) = padded_to(4096);
    at_limit.push(("X-Pad", pad.as_str()));
    assert_eq!(sent_header_bytes(&at_limit), 4096);
    let r = p.get("/at-limit", &at_limit).await;
    assert_eq!(r.status, 200, "{r:?}");

    let (mut over, pad) = padded_to(4097);
    over.push(("X-Pad", pad.as_str()));
    let r = p.get("/over", &over).await;
    assert_eq!(r.status, 431, "{r:?}");
    assert!(r.body.contains("4096"), "{}", r.body);
    let paths: Vec<String> = origin.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/at-limit"]);
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingoras_own_refusals_come_before_any_hook() {
    // Pingora parses at most 256 header lines and refuses more with a bare 400 before any
    // phase of the proxy runs (proxy/README.md lists what it refuses this way).
    let origin = Origin::start().await;
    let mut p = TestProxy::start("hdr-lines", &[origin.addr], "").await;
    let mut raw = String::from("GET /lines HTTP/1.1\r\nHost: test.local\r\n");
    for i in 0..300 {
        raw.push_str(&format!("X-Line-{i}: 1\r\n"));
    }
    raw.push_str("Connection: close\r\n\r\n");
    let r = send_raw(p.addr, &raw).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(send(p.addr, "GET", "/ok", BROWSER).await.status, 200);
    let paths: Vec<String> = origin.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/ok"]);
    p.cleanup().await;
}
