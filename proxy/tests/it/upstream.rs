//! Upstream failures and balancing.

use crate::support::{free_port, Origin, TestProxy, BROWSER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_answers_502_and_is_logged() {
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut p = TestProxy::start("down", &[dead], "").await;
    let r = p.get("/", BROWSER).await;
    assert_eq!(r.status, 502, "{r:?}");
    let id = r.header("x-request-id").expect("request id").to_string();
    assert_eq!(r.json()["error"]["code"], "BAD_GATEWAY");
    assert_eq!(r.json()["error"]["request_id"], id.as_str());
    let entry = p.entry_for(&id).await;
    assert_eq!(entry["status"], "502");
    assert_eq!(entry["decision"], "allow");
    let errors: u64 = ["connect", "no_healthy_upstream", "other"]
        .iter()
        .map(|k| p.metrics().upstream_errors.with_label_values(&[k]).get())
        .sum();
    assert!(errors >= 1);
    let metrics = crate::support::send(p.health, "GET", "/metrics", &[])
        .await
        .body;
    assert!(
        metrics.contains("watchpost_proxy_upstream_errors_total"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("watchpost_proxy_requests_total{decision=\"allow\",status_class=\"5xx\"} 1"),
        "{metrics}"
    );
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_spread_round_robin() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    let mut p = TestProxy::start("rr", &[a.addr, b.addr], "").await;
    for _ in 0..6 {
        assert_eq!(p.get("/", BROWSER).await.status, 200);
    }
    assert_eq!(a.received().len(), 3);
    assert_eq!(b.received().len(), 3);
    let h = p.healthz().await;
    assert_eq!(h["upstreams_total"], 2);
    assert_eq!(h["upstreams_healthy"], 2);
    p.cleanup().await;
}
