//! The operations listener's `GET /metrics`: the access-log buffer's age, write errors by
//! kind, and the applied config's version and source.

use std::time::Duration;

use crate::support::{eventually, send, Origin, OwnRedis, TestProxy, BROWSER};

async fn scrape(p: &TestProxy) -> String {
    let reply = send(p.health, "GET", "/metrics", &[]).await;
    assert_eq!(reply.status, 200);
    reply.body
}

/// The value of the series `series` (name and labels exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

const AGE: &str = "watchpost_proxy_access_log_oldest_entry_age_seconds";
const CONNECTION_ERRORS: &str =
    "watchpost_proxy_access_log_write_errors_total{kind=\"connection\"}";
const OOM_ERRORS: &str = "watchpost_proxy_access_log_write_errors_total{kind=\"oom\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_age_write_errors_and_config_source_are_exported() {
    let origin = Origin::start().await;
    let mut redis = OwnRedis::start().await;
    let mut p = TestProxy::start_on("metrics", &[origin.addr], &redis.url(), "").await;

    let text = scrape(&p).await;
    assert_eq!(sample(&text, AGE), Some(0.0), "{text}");
    for kind in ["timeout", "connection", "oom", "other"] {
        let series = format!("watchpost_proxy_access_log_write_errors_total{{kind=\"{kind}\"}}");
        assert_eq!(sample(&text, &series), Some(0.0), "{series} in\n{text}");
    }
    let source = p.healthz().await["config_source"]
        .as_str()
        .expect("config_source")
        .to_string();
    for s in ["redis", "cache", "file"] {
        let series = format!("watchpost_proxy_gateway_config_source{{source=\"{s}\"}}");
        let want = if s == source { 1.0 } else { 0.0 };
        assert_eq!(sample(&text, &series), Some(want), "{series} in\n{text}");
    }
    assert!(
        sample(&text, "watchpost_proxy_gateway_config_version").is_some(),
        "{text}"
    );

    // Redis goes away: the held entries age and the failed writes are counted as connection
    // errors.
    redis.stop();
    assert_eq!(p.get("/", BROWSER).await.status, 200);
    eventually(
        "held entries to age and write errors to be counted",
        Duration::from_secs(10),
        || async {
            let text = scrape(&p).await;
            let age = sample(&text, AGE).unwrap_or_default();
            let errors = sample(&text, CONNECTION_ERRORS).unwrap_or_default();
            (age > 0.0 && errors >= 1.0).then_some(())
        },
    )
    .await;

    // Back: the buffer drains and its age returns to 0.
    redis.restart().await;
    eventually("the buffer to drain", Duration::from_secs(10), || async {
        (sample(&scrape(&p).await, AGE) == Some(0.0)).then_some(())
    })
    .await;

    // Out of memory: the batch is dropped and counted as `oom`.
    let mut c = p.redis().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut c)
        .await
        .expect("CONFIG SET");
    assert_eq!(p.get("/", BROWSER).await.status, 200);
    eventually(
        "the refusal to be counted",
        Duration::from_secs(10),
        || async { (sample(&scrape(&p).await, OOM_ERRORS) == Some(1.0)).then_some(()) },
    )
    .await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query_async(&mut c)
        .await
        .expect("CONFIG SET");
    p.shutdown().await;
}
