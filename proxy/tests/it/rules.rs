//! Gateway rules pushed to Redis as the admin API does (inside the gateway config document)
//! apply on every proxy of the prefix: block, allow, rate_limit and log_only, expiry without a
//! write, hit counters in Redis and the per-rule metric.
//!
//! (A weight changed at runtime changing the next request's score is covered by
//! `risk_runtime::a_weight_changed_at_runtime_changes_the_next_requests_score`.)

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use watchpost_proxy::{Settings, StopOn};

use crate::support::{config_text, eventually, Origin, Reply, TestProxy, BROWSER};

/// Clients are named by `X-Forwarded-For`, believed from the local test client.
const TRUST_LOCAL: &str = "[gateway]\nip_mode = \"proxy\"\ntrusted_cidrs = [\"127.0.0.0/8\"]\n";
const CURL: (&str, &str) = ("User-Agent", "curl/8.5.0");

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn rule_id() -> String {
    format!("rul_{}", ulid::Ulid::new())
}

/// The config document the admin API would publish, with these rules (and `extra` keys).
fn doc(version: u64, rules: Value, extra: Value) -> Value {
    let mut d = json!({
        "ip_mode": "proxy",
        "trusted_cidrs": ["127.0.0.0/8"],
        "risk_reject_threshold": 0.8,
        "version": version,
        "rules": rules,
    });
    if let (Some(d), Some(extra)) = (d.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            d.insert(k.clone(), v.clone());
        }
    }
    d
}

/// SET the document and PUBLISH the announcement, as the admin API does.
async fn publish(p: &TestProxy, doc: &Value) {
    let mut redis = p.redis().await;
    let _: () = redis::cmd("SET")
        .arg(format!("{}gateway:config", p.prefix))
        .arg(doc.to_string())
        .query_async(&mut redis)
        .await
        .expect("SET");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{}gateway:config:changed", p.prefix))
        .arg(doc["version"].as_u64().expect("version"))
        .query_async(&mut redis)
        .await
        .expect("PUBLISH");
}

/// Publish and wait until the proxy reports the version applied.
async fn push(p: &TestProxy, doc: Value) {
    publish(p, &doc).await;
    let version = doc["version"].clone();
    eventually(
        &format!("version {version} applied"),
        Duration::from_secs(5),
        || async { (p.healthz().await["config_version"] == version).then_some(()) },
    )
    .await;
}

async fn get_as(p: &TestProxy, ip: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut h = headers.to_vec();
    h.push(("X-Forwarded-For", ip));
    p.get(path, &h).await
}

async fn entry(p: &TestProxy, r: &Reply) -> HashMap<String, String> {
    p.entry_for(r.header("x-request-id").expect("x-request-id"))
        .await
}

/// A second proxy on `first`'s key prefix (another proxy id, its own ports).
async fn start_second(first: &TestProxy, origin: &Origin, extra: &str) -> TestProxy {
    let text = config_text(&[origin.addr], &first.redis_url, &first.prefix, extra)
        .replace("proxy_id = \"test-proxy\"", "proxy_id = \"test-proxy-b\"");
    let settings = Settings::load_str(&text, None, &[]).expect("valid config");
    let proxy =
        tokio::task::spawn_blocking(move || watchpost_proxy::start(settings, StopOn::Handle))
            .await
            .expect("start task")
            .expect("second proxy starts");
    TestProxy {
        addr: proxy.listen_addr(),
        health: proxy.health_addr(),
        proxy: Some(proxy),
        prefix: first.prefix.clone(),
        redis_url: first.redis_url.clone(),
    }
}

/// Every hit counted in Redis for `id`, over all its minute keys, and its `last_hit`.
async fn hits_in_redis(p: &TestProxy, id: &str) -> (u64, Option<u64>) {
    let mut redis = p.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}rule:hits:{id}:*", p.prefix))
        .query_async(&mut redis)
        .await
        .expect("KEYS");
    let mut total = 0;
    for k in keys {
        let n: u64 = redis::cmd("GET")
            .arg(&k)
            .query_async(&mut redis)
            .await
            .expect("GET");
        let ttl: i64 = redis::cmd("TTL")
            .arg(&k)
            .query_async(&mut redis)
            .await
            .expect("TTL");
        assert!(
            ttl > 0 && ttl <= 7_200,
            "{k} must expire within two hours: {ttl}"
        );
        total += n;
    }
    let last: Option<u64> = redis::cmd("GET")
        .arg(format!("{}rule:last_hit:{id}", p.prefix))
        .query_async(&mut redis)
        .await
        .expect("GET last_hit");
    (total, last)
}

/// `watchpost_proxy_rule_hits_total` of one rule on one proxy (0 when the series is absent).
fn metric_hits(p: &TestProxy, id: &str, action: &str) -> u64 {
    let (rule, action) = (format!("rule=\"{id}\""), format!("action=\"{action}\""));
    p.metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with("watchpost_proxy_rule_hits_total{"))
        .find(|l| l.contains(&rule) && l.contains(&action))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().expect("counter value"))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_rule_stops_a_range_on_two_proxies_within_a_second_and_counts_hits() {
    let origin = Origin::start().await;
    let mut a = TestProxy::start("rules-block", &[origin.addr], TRUST_LOCAL).await;
    let mut b = start_second(&a, &origin, TRUST_LOCAL).await;
    for p in [&a, &b] {
        assert_eq!(get_as(p, "198.51.100.7", "/", BROWSER).await.status, 200);
    }
    let id = rule_id();
    let rules = json!([{
        "id": id, "action": "block", "match": {"cidrs": ["198.51.100.0/24"]},
        "reason": "scanner range seen in the incident SECRET-REASON"
    }]);
    let published_at = now_ms();
    publish(&a, &doc(2, rules, json!({}))).await;
    // Every proxy refuses the range within a second of the announcement.
    let mut blocked = [0u64; 2];
    for (i, p) in [&a, &b].into_iter().enumerate() {
        let reply = eventually(
            "the block rule to apply",
            Duration::from_secs(1),
            || async {
                let r = get_as(p, "198.51.100.7", "/", BROWSER).await;
                (r.status == 403).then_some(r)
            },
        )
        .await;
        blocked[i] += 1;
        let body = reply.json();
        assert_eq!(body["error"]["code"], "BLOCKED", "{body}");
        assert!(
            !reply.body.contains("SECRET-REASON"),
            "the rule's reason is never shown to clients: {body}"
        );
    }
    // The upstream is never contacted for the range; other clients pass.
    let seen = origin.received().len();
    for p in [&a, &b] {
        let r = get_as(p, "198.51.100.200", "/x", BROWSER).await;
        assert_eq!(r.status, 403, "{r:?}");
        let e = entry(p, &r).await;
        assert_eq!(e["rule"], id, "{e:?}");
        assert_eq!(e["decision"], "reject", "{e:?}");
        assert_eq!(e["status"], "403", "{e:?}");
        assert_eq!(e["risk"], "0.000", "{e:?}");
        assert_eq!(get_as(p, "198.51.101.1", "/", BROWSER).await.status, 200);
    }
    blocked[0] += 1;
    blocked[1] += 1;
    assert_eq!(
        origin.received().len(),
        seen + 2,
        "only the two requests from outside the range reached the origin"
    );
    let allowed = a
        .entry_for(
            get_as(&a, "203.0.113.1", "/", BROWSER)
                .await
                .header("x-request-id")
                .expect("id"),
        )
        .await;
    assert_eq!(allowed["rule"], "", "{allowed:?}");

    // Both proxies' hits reach Redis (flushed every second), and each counts its own.
    let want = blocked[0] + blocked[1];
    let (total, last) = eventually("the hits in Redis", Duration::from_secs(10), || async {
        let (n, last) = hits_in_redis(&a, &id).await;
        (n == want).then_some((n, last))
    })
    .await;
    assert_eq!(total, want);
    let last = last.expect("last_hit is set");
    assert!(last >= published_at && last <= now_ms(), "{last}");
    assert_eq!(metric_hits(&a, &id, "block"), blocked[0]);
    assert_eq!(metric_hits(&b, &id, "block"), blocked[1]);

    // Removing the rule lifts the block, and its metric series goes.
    push(&a, doc(3, json!([]), json!({}))).await;
    push(&b, doc(3, json!([]), json!({}))).await;
    assert_eq!(get_as(&a, "198.51.100.7", "/", BROWSER).await.status, 200);
    eventually(
        "the removed rule's series to go",
        Duration::from_secs(5),
        || async { (!a.metrics().render().contains(id.as_str())).then_some(()) },
    )
    .await;
    b.shutdown().await;
    a.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_rule_lapses_on_time_without_a_write() {
    let origin = Origin::start().await;
    let mut p = TestProxy::start("rules-expiry", &[origin.addr], TRUST_LOCAL).await;
    let id = rule_id();
    let expires_at = now_ms() + 3_000;
    let rules = json!([{
        "id": id, "action": "block", "match": {"cidrs": ["192.0.2.0/24"]},
        "expires_at_ms": expires_at, "reason": "for three seconds"
    }]);
    push(&p, doc(4, rules, json!({}))).await;
    let r = get_as(&p, "192.0.2.10", "/", BROWSER).await;
    assert_eq!(r.status, 403, "the rule applies before it expires: {r:?}");
    let r = eventually("the rule to lapse", Duration::from_secs(10), || async {
        let r = get_as(&p, "192.0.2.10", "/", BROWSER).await;
        (r.status == 200).then_some(r)
    })
    .await;
    // It lapsed on time, not early, and nothing was written in between.
    assert!(now_ms() >= expires_at, "the rule lapsed before its expiry");
    let e = entry(&p, &r).await;
    assert_eq!(e["rule"], "", "{e:?}");
    assert_eq!(p.healthz().await["config_version"], 4);
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_past_its_rate_and_not_before() {
    let origin = Origin::start().await;
    let mut p = TestProxy::start("rules-rate", &[origin.addr], TRUST_LOCAL).await;
    let id = rule_id();
    // Windows are aligned to the clock: an hour-long one, started well inside a window, so
    // that the test's requests all fall in one.
    let window_ms = 3_600_000;
    if window_ms - now_ms() % window_ms < 30_000 {
        tokio::time::sleep(Duration::from_millis(
            window_ms - now_ms() % window_ms + 100,
        ))
        .await;
    }
    let rules = json!([{
        "id": id, "action": "rate_limit", "match": {"cidrs": ["198.51.100.0/24"]},
        "rate": {"requests": 3, "window_secs": 3600}, "reason": "slow down"
    }]);
    push(&p, doc(2, rules, json!({}))).await;
    for n in 1..=3 {
        let r = get_as(&p, "198.51.100.7", "/", BROWSER).await;
        assert_eq!(r.status, 200, "request {n} is within the rate: {r:?}");
        assert!(r.header("retry-after").is_none());
        let e = entry(&p, &r).await;
        assert_eq!(
            e["rule"], "",
            "within its rate the rule decides nothing: {e:?}"
        );
    }
    let seen = origin.received().len();
    let before = now_ms();
    let r = get_as(&p, "198.51.100.7", "/", BROWSER).await;
    let after = now_ms();
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.json()["error"]["code"], "RATE_LIMITED");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    let end = (before / window_ms + 1) * window_ms;
    let (lo, hi) = (
        (end.saturating_sub(after)).div_ceil(1000).max(1),
        (end - before).div_ceil(1000).max(1),
    );
    assert!(
        (lo..=hi).contains(&retry),
        "Retry-After {retry} is the rest of the window ({lo}..={hi})"
    );
    assert_eq!(
        origin.received().len(),
        seen,
        "a 429 never reaches the origin"
    );
    let e = entry(&p, &r).await;
    assert_eq!(e["rule"], id, "{e:?}");
    assert_eq!(e["decision"], "reject", "{e:?}");
    assert_eq!(e["status"], "429", "{e:?}");
    // The rate is per client: another client in the range, and one outside it, pass.
    assert_eq!(get_as(&p, "198.51.100.8", "/", BROWSER).await.status, 200);
    assert_eq!(get_as(&p, "203.0.113.9", "/", BROWSER).await.status, 200);
    // A new config version with the same rule keeps counting the client.
    let rules = json!([{
        "id": id, "action": "rate_limit", "match": {"cidrs": ["198.51.100.0/24"]},
        "rate": {"requests": 3, "window_secs": 3600}, "reason": "slow down, edited"
    }]);
    push(&p, doc(3, rules, json!({"risk_reject_threshold": 0.9}))).await;
    assert_eq!(get_as(&p, "198.51.100.7", "/", BROWSER).await.status, 429);
    p.cleanup().await;
}

/// A database in the flat `country_code` layout: 81.2.69.0/24 is GB.
fn write_geo_db(dir: &std::path::Path) -> std::path::PathBuf {
    use mmdb_writer::{IpVersion, Value as MmdbValue, Writer};
    let mut w = Writer::builder("Watchpost-Proxy-Test")
        .ip_version(IpVersion::V6)
        .build();
    let net: mmdb_writer::ipnet::IpNet = "81.2.69.0/24".parse().expect("network");
    w.insert_value(net, MmdbValue::map([("country_code", "GB")]))
        .expect("insert");
    let path = dir.join("country.mmdb");
    std::fs::write(&path, w.to_bytes().expect("encode")).expect("write mmdb");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_only_tags_entries_and_enforces_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = write_geo_db(dir.path());
    let origin = Origin::start().await;
    let extra = format!("[geo]\nmmdb_path = \"{}\"\n{TRUST_LOCAL}", db.display());
    let mut p = TestProxy::start("rules-log-only", &[origin.addr], &extra).await;
    let id = rule_id();
    let later = rule_id();
    let rules = json!([
        {"id": id, "action": "log_only", "match": {"countries": ["gb"]}, "priority": 1},
        // Matches too, but only the first log_only rule tags.
        {"id": later, "action": "log_only", "match": {"ua_types": ["cli"]}, "priority": 2},
    ]);
    push(&p, doc(2, rules, json!({}))).await;
    // A command-line client from GB is scored as usual (0.4) and passes, tagged.
    let r = get_as(&p, "81.2.69.142", "/", &[CURL, ("Accept", "*/*")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        origin.last().header("x-risk-score").as_deref(),
        Some("0.400")
    );
    let e = entry(&p, &r).await;
    assert_eq!(e["rule"], id, "{e:?}");
    assert_eq!(e["country"], "GB", "{e:?}");
    assert_eq!(e["decision"], "allow", "{e:?}");
    assert_eq!(e["reasons"], "ua_cli", "{e:?}");
    // A probe from GB is still rejected by its risk score: log_only decides nothing.
    let r = get_as(&p, "81.2.69.142", "/.env", BROWSER).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.json()["error"]["code"], "FORBIDDEN");
    let e = entry(&p, &r).await;
    assert_eq!(e["rule"], id, "{e:?}");
    assert_eq!(e["risk"], "0.900", "{e:?}");
    // The second rule tags a CLI client from elsewhere.
    let r = get_as(&p, "203.0.113.5", "/", &[CURL]).await;
    assert_eq!(r.status, 200);
    assert_eq!(entry(&p, &r).await["rule"], later);
    // A browser from elsewhere matches nothing.
    let r = get_as(&p, "203.0.113.5", "/", BROWSER).await;
    assert_eq!(entry(&p, &r).await["rule"], "");
    let (tagged, _) = eventually("the tags in Redis", Duration::from_secs(10), || async {
        let h = hits_in_redis(&p, &id).await;
        (h.0 == 2).then_some(h)
    })
    .await;
    assert_eq!(tagged, 2);
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_skips_risk_scoring() {
    let origin = Origin::start().await;
    let mut p = TestProxy::start("rules-allow", &[origin.addr], TRUST_LOCAL).await;
    let allow = rule_id();
    let block = rule_id();
    let rules = json!([
        {"id": allow, "action": "allow", "match": {"cidrs": ["198.51.100.9/32"], "ua_types": ["cli"]},
         "priority": 1, "reason": "partner's monitoring"},
        // Also matches, but comes later: the first deciding rule wins.
        {"id": block, "action": "block", "match": {"cidrs": ["198.51.100.0/24"]}, "priority": 5},
    ]);
    // The range is denylisted (1.0 with the default weights) and curl weighs 0.4.
    let risk = json!({"risk": {"denylist": ["198.51.100.0/24"]}});
    push(&p, doc(2, rules, risk)).await;
    let r = get_as(&p, "198.51.100.9", "/.env", &[CURL]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        origin.last().header("x-risk-score").as_deref(),
        Some("0.000")
    );
    let e = entry(&p, &r).await;
    assert_eq!(e["rule"], allow, "{e:?}");
    assert_eq!(e["risk"], "0.000", "{e:?}");
    assert_eq!(e["reasons"], "", "{e:?}");
    assert_eq!(e["decision"], "allow", "{e:?}");
    assert_eq!(e["ua_type"], "cli", "{e:?}");
    // The same client with a browser is not allowed by the rule: the block rule decides.
    let r = get_as(&p, "198.51.100.9", "/", BROWSER).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "BLOCKED");
    // Without rules the denylist rejects that client by its risk score.
    push(
        &p,
        doc(
            3,
            json!([]),
            json!({"risk": {"denylist": ["198.51.100.0/24"]}}),
        ),
    )
    .await;
    let r = get_as(&p, "198.51.100.9", "/", &[CURL]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "FORBIDDEN");
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_mode_log_only_flags_risk_rejects_but_rules_still_enforce() {
    let origin = Origin::start().await;
    let mut p = TestProxy::start("rules-risk-mode", &[origin.addr], TRUST_LOCAL).await;
    let block = rule_id();
    let rules = json!([
        {"id": block, "action": "block", "match": {"path_prefixes": ["/wp-admin"], "methods": ["get"]}},
    ]);
    push(&p, doc(2, rules, json!({"risk_mode": "log_only"}))).await;
    // A probe (0.9) would be rejected: it passes, flagged.
    let r = get_as(&p, "203.0.113.7", "/.env", BROWSER).await;
    assert_eq!(r.status, 200, "{r:?}");
    let e = entry(&p, &r).await;
    assert_eq!(e["decision"], "flag", "{e:?}");
    assert_eq!(e["risk"], "0.900", "{e:?}");
    assert_eq!(e["rule"], "", "{e:?}");
    // The block rule is enforced whatever the risk mode.
    let seen = origin.received().len();
    let r = get_as(&p, "203.0.113.7", "/wp-admin/setup.php", BROWSER).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.json()["error"]["code"], "BLOCKED");
    assert_eq!(origin.received().len(), seen);
    let e = entry(&p, &r).await;
    assert_eq!(e["decision"], "reject", "{e:?}");
    assert_eq!(e["rule"], block, "{e:?}");
    // Another method is not matched by the rule.
    let r = crate::support::send(
        p.addr,
        "POST",
        "/wp-admin/",
        &[
            ("X-Forwarded-For", "203.0.113.7"),
            BROWSER[0],
            BROWSER[1],
            BROWSER[2],
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    p.cleanup().await;
}
