//! The risk settings and `risk_mode` of the runtime gateway config (pushed to Redis as the
//! admin API does) apply to the next request without a restart.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{eventually, Origin, TestProxy, BROWSER};

/// What the admin API does: SET the document, PUBLISH the announcement; then wait until the
/// proxy reports the version applied.
async fn push(p: &TestProxy, version: u64, mut doc: Value) {
    doc["ip_mode"] = json!("direct");
    doc["version"] = json!(version);
    if doc.get("risk_reject_threshold").is_none() {
        doc["risk_reject_threshold"] = json!(0.8);
    }
    let mut redis = p.redis().await;
    let _: () = redis::cmd("SET")
        .arg(format!("{}gateway:config", p.prefix))
        .arg(doc.to_string())
        .query_async(&mut redis)
        .await
        .expect("SET");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{}gateway:config:changed", p.prefix))
        .arg(version)
        .query_async(&mut redis)
        .await
        .expect("PUBLISH");
    eventually(
        &format!("version {version} applied"),
        Duration::from_secs(5),
        || async { (p.healthz().await["config_version"] == version).then_some(()) },
    )
    .await;
}

fn origin_score(origin: &Origin) -> String {
    origin.last().header("x-risk-score").expect("x-risk-score")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_changed_at_runtime_changes_the_next_requests_score() {
    let origin = Origin::start().await;
    // The file's `[risk]` weighs a command-line client 0.4.
    let mut p = TestProxy::start("risk-weights", &[origin.addr], "").await;
    let cli = [("User-Agent", "curl/8.5.0"), ("Accept", "*/*")];
    assert_eq!(p.get("/", &cli).await.status, 200);
    assert_eq!(origin_score(&origin), "0.400");

    push(&p, 5, json!({"risk": {"weights": {"ua_cli": 0.25}}})).await;
    let r = p.get("/", &cli).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(origin_score(&origin), "0.250");
    let request_id = r.header("x-request-id").expect("request id").to_string();
    let entry = p.entry_for(&request_id).await;
    assert_eq!(entry["risk"], "0.250", "{entry:?}");
    assert_eq!(entry["reasons"], "ua_cli", "{entry:?}");

    // Enough weight to reach the threshold: the next request is rejected.
    push(&p, 6, json!({"risk": {"weights": {"ua_cli": 0.85}}})).await;
    let seen = origin.received().len();
    let r = p.get("/", &cli).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(
        origin.received().len(),
        seen,
        "a rejected request reached the origin"
    );

    // The lists are runtime settings too: a denylist on the client's range rejects a browser.
    push(&p, 7, json!({"risk": {"denylist": ["127.0.0.0/8"]}})).await;
    assert_eq!(p.get("/", BROWSER).await.status, 403);

    // A config without `risk` goes back to the file's `[risk]`.
    push(&p, 8, json!({})).await;
    assert_eq!(p.get("/", BROWSER).await.status, 200);
    assert_eq!(p.get("/", &cli).await.status, 200);
    assert_eq!(origin_score(&origin), "0.400");
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_only_lets_would_be_rejects_through_flagged_and_enforce_rejects_again() {
    let origin = Origin::start().await;
    let mut p = TestProxy::start("risk-mode", &[origin.addr], "").await;
    // A probe path scores 0.9 with the file's weights: rejected under `enforce`.
    assert_eq!(p.get("/.env", BROWSER).await.status, 403);

    push(&p, 3, json!({"risk_mode": "log_only"})).await;
    let seen = origin.received().len();
    let r = p.get("/.env", BROWSER).await;
    assert_eq!(r.status, 200, "log_only must let it through: {r:?}");
    assert_eq!(origin.received().len(), seen + 1);
    assert_eq!(origin.last().path, "/.env");
    let entry = p
        .entry_for(r.header("x-request-id").expect("request id"))
        .await;
    assert_eq!(entry["decision"], "flag", "{entry:?}");
    assert_eq!(entry["risk"], "0.900", "{entry:?}");
    assert_eq!(entry["reasons"], "path_probe", "{entry:?}");
    // A request under the threshold is still a plain allow.
    let r = p.get("/", BROWSER).await;
    let entry = p
        .entry_for(r.header("x-request-id").expect("request id"))
        .await;
    assert_eq!(entry["decision"], "allow", "{entry:?}");

    // Back to enforcing: rejected again, and the upstream is not contacted.
    push(&p, 4, json!({"risk_mode": "enforce"})).await;
    let seen = origin.received().len();
    let r = p.get("/.env", BROWSER).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(origin.received().len(), seen);
    let entry = p
        .entry_for(r.header("x-request-id").expect("request id"))
        .await;
    assert_eq!(entry["decision"], "reject", "{entry:?}");
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_and_window_apply_at_runtime() {
    let origin = Origin::start().await;
    let mut p = TestProxy::start("risk-rate", &[origin.addr], "").await;
    // The file allows 50 requests per 10 s window: a handful pass.
    for _ in 0..3 {
        assert_eq!(p.get("/", BROWSER).await.status, 200);
    }
    // One request per minute, weighed fully: the second request of the window is at twice
    // the limit, so it scores 1.
    push(
        &p,
        2,
        json!({"risk": {"rate_limit": 1, "rate_window_secs": 60, "weights": {"rate": 1.0}}}),
    )
    .await;
    assert_eq!(
        p.get("/", BROWSER).await.status,
        200,
        "the first request of the new window"
    );
    let r = p.get("/", BROWSER).await;
    assert_eq!(r.status, 403, "{r:?}");
    let entry = p
        .entry_for(r.header("x-request-id").expect("request id"))
        .await;
    assert_eq!(entry["reasons"], "rate", "{entry:?}");
    p.cleanup().await;
}
