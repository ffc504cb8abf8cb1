//! The access-log stream (SPEC §5): every field, typed; flushing on shutdown; surviving a
//! Redis outage without failing a single client request.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use watchpost_common::{AccessLogEntry, Decision, ACCESS_LOG_FIELDS};

use crate::support::{eventually, read_stream, Origin, OwnRedis, TestProxy, BROWSER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_is_present_in_order_and_typed() {
    let origin = Origin::start().await;
    let mut p = TestProxy::start("fields", &[origin.addr], "").await;
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let r = p.get("/items/7?sort=asc&x=%20y", BROWSER).await;
    assert_eq!(r.status, 200);
    let id = r.header("x-request-id").expect("request id").to_string();
    let entries = p.wait_entries(1).await;
    let fields = entries.into_iter().next().expect("one entry");
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ACCESS_LOG_FIELDS, "fields in the fixed order");
    let f: HashMap<String, String> = fields.into_iter().collect();
    let ts: u64 = f["ts"].parse().expect("ts is an integer of milliseconds");
    assert!(ts >= before && ts < before + 60_000, "ts {ts} vs {before}");
    assert_eq!(f["method"], "GET");
    assert_eq!(f["host"], "test.local");
    assert_eq!(f["path"], "/items/7");
    assert_eq!(f["query"], "sort=asc&x=%20y");
    assert_eq!(f["status"], "200");
    assert_eq!(f["ip"], "127.0.0.1");
    assert_eq!(f["ip_source"], "peer");
    assert_eq!(f["peer"], "127.0.0.1");
    assert_eq!(f["country"], "");
    let risk = &f["risk"];
    assert!(
        risk.len() == 5 && risk.as_bytes()[1] == b'.' && risk.parse::<f64>().is_ok(),
        "risk with 3 decimals: {risk}"
    );
    assert_eq!(f["reasons"], "");
    assert!(f["ua"].starts_with("Mozilla/5.0"));
    assert_eq!(f["ua_type"], "browser");
    assert_eq!(f["decision"], "allow");
    f["latency_us"]
        .parse::<u64>()
        .expect("latency_us is an integer");
    assert_eq!(f["bytes_out"], "9", "the body was 'origin ok'");
    assert_eq!(f["upstream"], origin.addr.to_string());
    assert_eq!(f["request_id"], id);
    assert_eq!(f["proxy_id"], "test-proxy");
    // The admin API's decoder reads it back.
    let e = AccessLogEntry::from_fields(&f).expect("decodes");
    assert_eq!(e.decision, Decision::Allow);
    assert_eq!(e.status, 200);
    // The per-minute request counter was incremented in the same pipeline.
    let mut redis = p.redis().await;
    let minute = ts / 60_000;
    let n: Option<u64> = redis::cmd("GET")
        .arg(format!("{}gw:req:{minute}", p.prefix))
        .query_async(&mut redis)
        .await
        .expect("GET");
    assert_eq!(n, Some(1));
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{}gw:req:{minute}", p.prefix))
        .query_async(&mut redis)
        .await
        .expect("TTL");
    assert!(ttl > 0, "counters expire");
    let h = p.healthz().await;
    assert_eq!(h["status"], "ok");
    assert_eq!(h["redis"], "up");
    assert_eq!(h["log_written"], 1);
    assert_eq!(h["log_dropped"], 0);
    assert_eq!(h["buffer_depth"], 0);
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_the_buffer() {
    let origin = Origin::start().await;
    // The writer would hold a partial batch for a minute; shutdown must not wait for that.
    let mut p = TestProxy::start(
        "flush",
        &[origin.addr],
        "[access_log]\nflush_interval_ms = 60000\nbatch_max_entries = 100\n",
    )
    .await;
    for _ in 0..5 {
        assert_eq!(p.get("/", BROWSER).await.status, 200);
    }
    assert!(p.entries().await.len() < 5, "entries are still buffered");
    p.shutdown().await;
    assert_eq!(p.entries().await.len(), 5);
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_never_fails_a_request_and_writing_resumes() {
    let origin = Origin::start().await;
    let mut redis = OwnRedis::start().await;
    let mut p = TestProxy::start_on("outage", &[origin.addr], &redis.url(), "").await;
    let key = p.stream_key();

    for _ in 0..20 {
        assert_eq!(p.get("/", BROWSER).await.status, 200);
    }
    eventually("the first entries", Duration::from_secs(10), || async {
        (read_stream(&redis.url(), &key).await.len() == 20).then_some(())
    })
    .await;

    redis.stop();
    // Keep sending until the writer has noticed and dropped something; every request succeeds.
    let mut sent = 0;
    eventually("drops to be counted", Duration::from_secs(20), || {
        sent += 1;
        let p = &p;
        async move {
            let r = p.get("/", BROWSER).await;
            assert_eq!(r.status, 200, "requests must not fail while Redis is down");
            (p.metrics().log_dropped.get() > 0).then_some(())
        }
    })
    .await;
    assert!(sent > 0);
    let h = p.healthz().await;
    assert_eq!(h["redis"], "down");
    assert!(h["log_dropped"].as_u64().expect("number") > 0);

    // Same port, empty data set: whatever lands now was written after the restart.
    redis.restart().await;
    eventually("writing to resume", Duration::from_secs(20), || {
        let p = &p;
        let url = redis.url();
        let key = key.clone();
        async move {
            assert_eq!(p.get("/", BROWSER).await.status, 200);
            (!read_stream(&url, &key).await.is_empty()).then_some(())
        }
    })
    .await;
    eventually(
        "health to report Redis up",
        Duration::from_secs(10),
        || async { (p.healthz().await["redis"] == "up").then_some(()) },
    )
    .await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_and_serves_while_redis_is_down_then_writes_when_it_appears() {
    let origin = Origin::start().await;
    let mut redis = OwnRedis::not_started();
    let mut p = TestProxy::start_on("cold", &[origin.addr], &redis.url(), "").await;
    let h = p.healthz().await;
    assert_eq!(h["redis"], "down");
    assert_eq!(h["config_version"], 0, "the file's [gateway] applies");
    for _ in 0..5 {
        assert_eq!(p.get("/", BROWSER).await.status, 200);
    }
    eventually("drops to be counted", Duration::from_secs(20), || async {
        (p.metrics().log_dropped.get() > 0).then_some(())
    })
    .await;

    redis.restart().await;
    let key = p.stream_key();
    eventually("writing to start", Duration::from_secs(20), || {
        let p = &p;
        let url = redis.url();
        let key = key.clone();
        async move {
            assert_eq!(p.get("/", BROWSER).await.status, 200);
            (!read_stream(&url, &key).await.is_empty()).then_some(())
        }
    })
    .await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_is_capped_near_stream_max_len() {
    let origin = Origin::start().await;
    let extra = "[access_log]\nstream_max_len = 10\n[risk]\nrate_limit = 1000000.0\n";
    let mut p = TestProxy::start("maxlen", &[origin.addr], extra).await;
    for _ in 0..300 {
        assert_eq!(p.get("/", BROWSER).await.status, 200);
    }
    eventually("every entry written", Duration::from_secs(10), || async {
        (p.metrics().log_written.get() == 300).then_some(())
    })
    .await;
    // `MAXLEN ~` trims whole stream nodes (100 entries by default), never below the cap.
    let len = p.entries().await.len();
    assert!((10..300).contains(&len), "XLEN {len}");
    p.cleanup().await;
}
