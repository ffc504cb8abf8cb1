//! Rejection: a request scoring at least the threshold gets the 403 envelope and never
//! reaches the origin, and is still logged.

use crate::support::{Origin, TestProxy, BROWSER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_request_never_reaches_the_origin_and_is_logged() {
    let origin = Origin::start().await;
    let mut p = TestProxy::start("reject", &[origin.addr], "").await;
    let r = p.get("/.env", &[("User-Agent", "curl/8.5.0")]).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let id = r.header("x-request-id").expect("request id").to_string();
    assert_eq!(
        r.json(),
        serde_json::json!({"error":{"code":"FORBIDDEN","message":"request rejected","request_id": id}})
    );
    let entry = p.entry_for(&id).await;
    assert_eq!(entry["decision"], "reject");
    assert_eq!(entry["status"], "403");
    assert_eq!(entry["upstream"], "");
    let reasons: Vec<&str> = entry["reasons"].split(',').collect();
    assert!(reasons.contains(&"path_probe"), "{entry:?}");
    assert!(entry["risk"].parse::<f64>().expect("risk") >= 0.8);
    // An allowed request afterwards does reach it: the origin really was reachable.
    let ok = p.get("/fine", BROWSER).await;
    assert_eq!(ok.status, 200);
    let seen: Vec<String> = origin.received().into_iter().map(|r| r.path).collect();
    assert_eq!(seen, vec!["/fine".to_string()]);
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_client_raises_the_rate_signal_until_rejected() {
    let origin = Origin::start().await;
    let extra = "[risk]\nrate_limit = 3.0\nrate_window_secs = 60\n[risk.weights]\nrate = 0.9\n";
    let mut p = TestProxy::start("rate", &[origin.addr], extra).await;
    let first = p.get("/", BROWSER).await;
    assert_eq!(first.status, 200);
    let first_entry = p.entry_for(first.header("x-request-id").expect("id")).await;
    assert!(!first_entry["reasons"].contains("rate"), "{first_entry:?}");
    // Twice the limit and more: intensity 1, score 0.9 ≥ 0.8.
    let mut last = None;
    for _ in 0..7 {
        last = Some(p.get("/", BROWSER).await);
    }
    let last = last.expect("responses");
    assert_eq!(last.status, 403, "{last:?}");
    let entry = p.entry_for(last.header("x-request-id").expect("id")).await;
    assert_eq!(entry["reasons"], "rate");
    assert_eq!(entry["decision"], "reject");
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_request_with_a_body_closes_the_connection() {
    let origin = Origin::start().await;
    let mut p = TestProxy::start("reject-body", &[origin.addr], "").await;
    let raw = "POST /wp-login.php HTTP/1.1\r\nHost: test.local\r\nUser-Agent: curl/8.5.0\r\n\
               Content-Length: 11\r\nConnection: keep-alive\r\n\r\nhello world";
    let r = crate::support::send_raw(p.addr, raw).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(origin.received().is_empty());
    let entry = p.entry_for(r.header("x-request-id").expect("id")).await;
    assert_eq!(entry["method"], "POST");
    assert_eq!(entry["decision"], "reject");
    p.cleanup().await;
}
