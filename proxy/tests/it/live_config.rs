//! The gateway config follows Redis at runtime (SPEC §4).

use std::time::Duration;

use crate::support::{eventually, Origin, TestProxy};

fn doc(version: u64, threshold: f64) -> String {
    format!(
        r#"{{"ip_mode":"direct","trusted_cidrs":[],"risk_reject_threshold":{threshold},"version":{version},"updated_at":"2026-11-20T10:00:00Z","updated_by":"usr_test"}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_change_through_redis_applies_without_restart() {
    let origin = Origin::start().await;
    let mut p = TestProxy::start("live", &[origin.addr], "").await;
    // A command-line client scores above 0 but below the file's threshold of 0.8.
    let cli = [("User-Agent", "curl/8.5.0"), ("Accept", "*/*")];
    let r = p.get("/", &cli).await;
    assert_eq!(r.status, 200, "{r:?}");
    let score: f64 = origin
        .last()
        .header("x-risk-score")
        .expect("score")
        .parse()
        .expect("number");
    assert!(score > 0.0 && score < 0.8, "score {score}");
    assert_eq!(p.healthz().await["config_version"], 0);

    // What the admin API does: SET the document, then PUBLISH the announcement.
    let mut redis = p.redis().await;
    let key = format!("{}gateway:config", p.prefix);
    let channel = format!("{}gateway:config:changed", p.prefix);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(doc(5, score / 2.0))
        .query_async(&mut redis)
        .await
        .expect("SET");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg("5")
        .query_async(&mut redis)
        .await
        .expect("PUBLISH");
    eventually("version 5 applied", Duration::from_secs(5), || async {
        (p.healthz().await["config_version"] == 5).then_some(())
    })
    .await;
    let r = p.get("/", &cli).await;
    assert_eq!(r.status, 403, "the lowered threshold must apply: {r:?}");

    // An invalid document is refused; the last good config stays.
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(r#"{"ip_mode":"sideways","trusted_cidrs":["nope"],"risk_reject_threshold":7,"version":6}"#)
        .query_async(&mut redis)
        .await
        .expect("SET");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg("6")
        .query_async(&mut redis)
        .await
        .expect("PUBLISH");
    eventually(
        "the invalid config to be refused",
        Duration::from_secs(5),
        || async { (p.metrics().config_refused.get() > 0).then_some(()) },
    )
    .await;
    assert_eq!(p.healthz().await["config_version"], 5);
    assert_eq!(p.get("/", &cli).await.status, 403);

    // Without any announcement, the periodic re-read still picks up a change.
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(doc(7, 1.0))
        .query_async(&mut redis)
        .await
        .expect("SET");
    eventually(
        "version 7 applied by polling",
        Duration::from_secs(5),
        || async { (p.healthz().await["config_version"] == 7).then_some(()) },
    )
    .await;
    assert_eq!(p.get("/", &cli).await.status, 200);
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_in_redis_at_start_wins_over_the_file() {
    let origin = Origin::start().await;
    // Seed the config under the prefix the proxy will use, then start the proxy on it.
    let prefix = crate::support::unique_prefix("seeded");
    let url = crate::support::redis_url();
    let mut c = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must be reachable");
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}gateway:config"))
        .arg(doc(9, 0.01))
        .query_async(&mut c)
        .await
        .expect("SET");
    let text = crate::support::config_text(&[origin.addr], &url, &prefix, "");
    let settings = watchpost_proxy::Settings::load_str(&text, None, &[]).expect("valid");
    let proxy = tokio::task::spawn_blocking(move || {
        watchpost_proxy::start(settings, watchpost_proxy::StopOn::Handle)
    })
    .await
    .expect("task")
    .expect("starts");
    let mut p = TestProxy {
        addr: proxy.listen_addr(),
        health: proxy.health_addr(),
        proxy: Some(proxy),
        prefix,
        redis_url: url,
    };
    assert_eq!(p.healthz().await["config_version"], 9);
    // Threshold 0.01: a command-line client is rejected from the very first request.
    assert_eq!(
        p.get("/", &[("User-Agent", "curl/8.5.0")]).await.status,
        403
    );
    p.cleanup().await;
}

/// Start a proxy on `redis` under `prefix` with this `[gateway]` cache file.
async fn start_with_cache(
    origin: &Origin,
    redis: &str,
    prefix: &str,
    cache: &std::path::Path,
) -> TestProxy {
    let extra = format!(
        "[gateway]\ncache_path = {:?}\n",
        cache.display().to_string()
    );
    let text = crate::support::config_text(&[origin.addr], redis, prefix, &extra);
    let settings = watchpost_proxy::Settings::load_str(&text, None, &[]).expect("valid");
    let proxy = tokio::task::spawn_blocking(move || {
        watchpost_proxy::start(settings, watchpost_proxy::StopOn::Handle)
    })
    .await
    .expect("task")
    .expect("starts");
    TestProxy {
        addr: proxy.listen_addr(),
        health: proxy.health_addr(),
        proxy: Some(proxy),
        prefix: prefix.to_string(),
        redis_url: redis.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_config_from_redis_is_cached_and_used_when_redis_is_down() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("gateway.json");
    let url = crate::support::redis_url();
    let prefix = crate::support::unique_prefix("cache");

    // Redis holds no config yet, and there is no cache: the file's [gateway] applies.
    let mut p = start_with_cache(&origin, &url, &prefix, &cache).await;
    let h = p.healthz().await;
    assert_eq!(h["config_version"], 0);
    assert_eq!(h["config_source"], "file");
    assert!(!cache.exists());

    // A version arrives through Redis: applied, and written to the cache.
    let mut redis = p.redis().await;
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}gateway:config"))
        .arg(doc(11, 0.01))
        .query_async(&mut redis)
        .await
        .expect("SET");
    eventually("version 11 cached", Duration::from_secs(10), || async {
        let text = tokio::fs::read_to_string(&cache).await.ok()?;
        let cached = watchpost_common::GatewayConfig::from_json(&text).ok()?;
        (cached.version == 11).then_some(())
    })
    .await;
    let h = p.healthz().await;
    assert_eq!(h["config_version"], 11);
    assert_eq!(h["config_source"], "redis");
    p.shutdown().await;
    // No temporary file is left beside the cache.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["gateway.json"]);

    // Redis is unreachable: the next proxy starts from the cache.
    let down = crate::support::OwnRedis::not_started();
    let mut q = start_with_cache(&origin, &down.url(), &prefix, &cache).await;
    let h = q.healthz().await;
    assert_eq!(h["redis"], "down");
    assert_eq!(h["config_version"], 11);
    assert_eq!(h["config_source"], "cache");
    // Threshold 0.01 from the cache: a command-line client is rejected.
    assert_eq!(
        q.get("/", &[("User-Agent", "curl/8.5.0")]).await.status,
        403
    );
    q.shutdown().await;

    // Redis is up but was flushed (no config): the cache still wins over the file.
    let mut r = start_with_cache(
        &origin,
        &url,
        &crate::support::unique_prefix("flushed"),
        &cache,
    )
    .await;
    let h = r.healthz().await;
    assert_eq!(h["config_version"], 11);
    assert_eq!(h["config_source"], "cache");
    r.cleanup().await;
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_and_no_usable_cache_the_file_gateway_applies() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let down = crate::support::OwnRedis::not_started();
    let prefix = crate::support::unique_prefix("nocache");

    let missing = dir.path().join("missing.json");
    let mut p = start_with_cache(&origin, &down.url(), &prefix, &missing).await;
    let h = p.healthz().await;
    assert_eq!(h["config_version"], 0);
    assert_eq!(h["config_source"], "file");
    p.shutdown().await;

    // A corrupt cache is refused the same way.
    let corrupt = dir.path().join("corrupt.json");
    std::fs::write(&corrupt, "{\"version\": ").expect("write");
    let mut p = start_with_cache(&origin, &down.url(), &prefix, &corrupt).await;
    let h = p.healthz().await;
    assert_eq!(h["config_version"], 0);
    assert_eq!(h["config_source"], "file");
    p.shutdown().await;
}
