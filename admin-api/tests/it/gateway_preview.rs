//! `POST /api/admin/gateway/config/preview`: a candidate config replayed over the access log
//! predicts what enforcing it then does to the same traffic.

use std::net::SocketAddr;
use std::time::Duration;

use mmdb_writer::ipnet::IpNet;
use mmdb_writer::{IpVersion, Value as MmdbValue, Writer};
use serde_json::{json, Value};

use crate::common::{assert_error, json_of, short_id, TestAdmin, TestApp};
use crate::end_to_end::{eventually, proxy_config_version, start_origin, start_proxy_with};

const BROWSER_UA: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36";
const BOT_UA: &str = "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)";

/// A GeoIP database in the flat `country_code` layout where 81.2.69.0/24 is GB.
fn write_geo_db() -> std::path::PathBuf {
    let mut w = Writer::builder("Watchpost-Admin-Test")
        .ip_version(IpVersion::V6)
        .build();
    let net: IpNet = "81.2.69.0/24".parse().expect("network");
    w.insert_value(net, MmdbValue::map([("country_code", "GB")]))
        .expect("insert");
    let path = std::env::temp_dir().join(format!("watchpost-preview-{}.mmdb", short_id()));
    std::fs::write(&path, w.to_bytes().expect("encode")).expect("write mmdb");
    path
}

/// A path and the headers it is sent with.
type Request = (&'static str, Vec<(&'static str, &'static str)>);

/// The traffic mix, each from its own client IP (forwarded by the trusted loopback peer).
fn mix() -> Vec<Request> {
    let browser = |ip| {
        vec![
            ("User-Agent", BROWSER_UA),
            ("Accept", "text/html"),
            ("Accept-Language", "en"),
            ("X-Forwarded-For", ip),
        ]
    };
    let ua = |ua, ip| {
        vec![
            ("User-Agent", ua),
            ("Accept", "*/*"),
            ("X-Forwarded-For", ip),
        ]
    };
    vec![
        ("/p/home", browser("198.51.100.1")),
        ("/p/curl", ua("curl/8.5.0", "198.51.100.2")),
        ("/p/lib", ua("python-requests/2.31.0", "198.51.100.3")),
        ("/p/bot", ua(BOT_UA, "198.51.100.4")),
        ("/.env", browser("198.51.100.5")),
        ("/.env", ua("curl/8.5.0", "198.51.100.6")),
        ("/p/gb", browser("81.2.69.10")),
        (
            "/p/no-language",
            vec![
                ("User-Agent", BROWSER_UA),
                ("Accept", "text/html"),
                ("X-Forwarded-For", "198.51.100.8"),
            ],
        ),
    ]
}

/// Sends the mix through the proxy; returns how many were answered 403.
async fn send_mix(http: &reqwest::Client, proxy: SocketAddr) -> u64 {
    let mut rejected = 0;
    for (path, headers) in mix() {
        let mut rb = http.get(format!("http://{proxy}{path}"));
        for (k, v) in headers {
            rb = rb.header(k, v);
        }
        let status = rb.send().await.expect("request").status().as_u16();
        assert!(status == 200 || status == 403, "{path}: {status}");
        rejected += u64::from(status == 403);
    }
    rejected
}

/// Access-log entries (newest 500) matching `query`.
async fn entries(app: &TestApp, admin: &TestAdmin, query: &str) -> Vec<Value> {
    let (status, page) = json_of(
        app.get(&format!("/api/admin/access-log?limit=500&{query}"))
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("query"),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().expect("items").clone()
}

async fn wait_for_entries(app: &TestApp, admin: &TestAdmin, n: usize) {
    eventually(
        &format!("{n} access-log entries"),
        Duration::from_secs(10),
        || async { (entries(app, admin, "").await.len() >= n).then_some(()) },
    )
    .await;
}

async fn preview(app: &TestApp, key: &str, body: &Value) -> (u16, Value) {
    json_of(
        app.post("/api/admin/gateway/config/preview")
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("preview"),
    )
    .await
}

/// PUTs `body` and waits until the proxy runs the new version.
async fn apply(
    app: &TestApp,
    admin: &TestAdmin,
    http: &reqwest::Client,
    health: SocketAddr,
    body: &Value,
) {
    let (status, view) = json_of(
        app.put("/api/admin/gateway/config")
            .bearer_auth(&admin.key)
            .json(body)
            .send()
            .await
            .expect("PUT"),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    let version = view["version"].as_u64().expect("version");
    eventually(
        "the proxy to apply the config",
        Duration::from_secs(10),
        || async { (proxy_config_version(http, health).await == version).then_some(()) },
    )
    .await;
}

fn count(list: &Value, value: &str) -> u64 {
    list.as_array()
        .expect("top list")
        .iter()
        .find(|c| c["value"] == value)
        .and_then(|c| c["count"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_predicts_what_enforcing_then_does() {
    let app = TestApp::builder()
        .configure(|c| {
            c.admin.rate_limit_per_minute = 1_000_000;
            c.admin.rate_limit_per_hour = 1_000_000;
        })
        .spawn()
        .await;
    let admin = app.create_admin().await;
    let origin = start_origin().await;
    let db = write_geo_db();
    let proxy = start_proxy_with(
        &app,
        origin,
        &format!("[geo]\nmmdb_path = \"{}\"\n", db.display()),
    )
    .await;
    let health = proxy.health_addr();
    let http = reqwest::Client::new();
    let n = mix().len() as u64;

    // Permissive: behind the loopback "load balancer", nothing below a certain score rejected.
    let permissive = json!({"ip_mode": "proxy", "trusted_cidrs": ["127.0.0.0/8"],
                            "risk_reject_threshold": 1.0});
    apply(&app, &admin, &http, health, &permissive).await;
    assert_eq!(send_mix(&http, proxy.listen_addr()).await, 0);
    wait_for_entries(&app, &admin, n as usize).await;

    // Stricter: a lower threshold, a heavier CLI weight, GB listed.
    let strict = json!({"ip_mode": "proxy", "trusted_cidrs": ["127.0.0.0/8"],
                        "risk_reject_threshold": 0.5,
                        "risk": {"weights": {"ua_cli": 0.9}, "countries": ["GB"]}});
    let mut body = strict.clone();
    body["entries"] = json!(n);
    let (status, p) = preview(&app, &admin.key, &body).await;
    assert_eq!(status, 200, "{p}");
    // curl ×2, the bot (0.5), the browser probing /.env (0.9) and the GB browser (0.5).
    assert_eq!(p["examined"], n, "{p}");
    assert_eq!(p["skipped"], 0, "{p}");
    assert_eq!(p["would_reject"], 5, "{p}");
    assert_eq!(p["would_flag"], 0, "{p}");
    assert_eq!(p["would_allow"], 3, "{p}");
    assert_eq!(p["changed"], 5, "{p}");
    assert_eq!(p["newly_rejected"], 5, "{p}");
    assert_eq!(p["no_longer_rejected"], 0, "{p}");
    assert_eq!(p["rate_limit_rules_ignored"], 0, "{p}");
    assert_eq!(count(&p["top_paths"], "/.env"), 2, "{p}");
    assert_eq!(count(&p["top_countries"], "GB"), 1, "{p}");
    assert_eq!(count(&p["top_ips"], "198.51.100.2"), 1, "{p}");
    assert_eq!(count(&p["top_ips"], "198.51.100.1"), 0, "{p}");
    assert!(p["oldest_ts"].as_u64() <= p["newest_ts"].as_u64(), "{p}");
    assert!(p["oldest_ts"].as_u64().is_some(), "{p}");
    let would_reject = p["would_reject"].as_u64().expect("count");

    // Enforce it and replay the same traffic: the proxy rejects exactly what was predicted.
    apply(&app, &admin, &http, health, &strict).await;
    assert_eq!(send_mix(&http, proxy.listen_addr()).await, would_reject);
    wait_for_entries(&app, &admin, 2 * n as usize).await;

    // The same settings in log_only, previewed over what was just enforced: all flags.
    let mut log_only = strict.clone();
    log_only["risk_mode"] = json!("log_only");
    let mut body = log_only.clone();
    body["entries"] = json!(n);
    let (status, p) = preview(&app, &admin.key, &body).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["would_reject"], 0, "{p}");
    assert_eq!(p["would_flag"], would_reject, "{p}");
    assert_eq!(p["no_longer_rejected"], would_reject, "{p}");
    assert_eq!(p["changed"], would_reject, "{p}");
    let would_flag = p["would_flag"].as_u64().expect("count");
    apply(&app, &admin, &http, health, &log_only).await;
    assert_eq!(send_mix(&http, proxy.listen_addr()).await, 0);
    wait_for_entries(&app, &admin, 3 * n as usize).await;
    let flagged = entries(&app, &admin, "decision=flag").await;
    assert_eq!(flagged.len() as u64, would_flag);

    // Previewing wrote nothing: the stream holds only the traffic.
    assert_eq!(entries(&app, &admin, "").await.len() as u64, 3 * n);
    tokio::task::spawn_blocking(move || proxy.shutdown())
        .await
        .expect("proxy shutdown");
    let _ = std::fs::remove_file(db);
}

#[tokio::test]
async fn preview_rejects_bad_input_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;

    // Every problem of the candidate is listed, the bad `entries` with them.
    let (status, body) = preview(
        &app,
        &admin.key,
        &json!({"ip_mode": "sideways", "trusted_cidrs": ["10.0.0.0/33"],
                "risk_reject_threshold": 1.5,
                "risk": {"weights": {"ua_cli": 2.0}, "countries": ["XX1"],
                         "denylist": ["nope"]},
                "risk_mode": "maybe", "entries": 0}),
    )
    .await;
    assert_error(status, &body, 400, "BAD_REQUEST");
    let message = body["error"]["message"].as_str().expect("message");
    for part in [
        "sideways",
        "10.0.0.0/33",
        "1.5",
        "ua_cli",
        "XX1",
        "nope",
        "maybe",
        "entries",
    ] {
        assert!(message.contains(part), "{part} missing from {message}");
    }
    let ok = json!({"ip_mode": "direct", "risk_reject_threshold": 0.8});
    for bad in [
        json!(0),
        json!(100_001),
        json!(-1),
        json!("ten"),
        json!(1.5),
    ] {
        let mut body = ok.clone();
        body["entries"] = bad.clone();
        let (status, body) = preview(&app, &admin.key, &body).await;
        assert_error(status, &body, 400, "BAD_REQUEST");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("entries")),
            "{bad}: {body}"
        );
    }
    let mut unknown = ok.clone();
    unknown["entires"] = json!(10);
    let (status, body) = preview(&app, &admin.key, &unknown).await;
    assert_error(status, &body, 400, "BAD_REQUEST");

    // Only platform admins.
    let user = app.create_user().await;
    let (status, body) = preview(&app, &user.token, &ok).await;
    assert_error(status, &body, 403, "FORBIDDEN");
    let (status, body) = json_of(
        app.post("/api/admin/gateway/config/preview")
            .json(&ok)
            .send()
            .await
            .expect("preview"),
    )
    .await;
    assert_error(status, &body, 401, "UNAUTHORIZED");

    // An empty stream: zeros, no timestamps.
    let (status, p) = preview(&app, &admin.key, &ok).await;
    assert_eq!(status, 200, "{p}");
    for field in [
        "examined",
        "skipped",
        "would_reject",
        "would_flag",
        "would_allow",
        "changed",
        "newly_rejected",
        "no_longer_rejected",
        "rate_limit_rules_ignored",
    ] {
        assert_eq!(p[field], 0, "{field}: {p}");
    }
    assert!(p["oldest_ts"].is_null() && p["newest_ts"].is_null(), "{p}");
    assert_eq!(p["top_ips"], json!([]), "{p}");

    // The bounds are in the OpenAPI document.
    let doc = app.openapi().await;
    assert!(
        doc["paths"]["/api/admin/gateway/config/preview"]["post"].is_object(),
        "preview missing from the OpenAPI document"
    );
    let props = &doc["components"]["schemas"]["PreviewInput"]["properties"];
    assert_eq!(props["entries"]["minimum"], 1.0, "{props}");
    assert_eq!(props["entries"]["maximum"], 100_000.0, "{props}");
    assert_eq!(props["risk_reject_threshold"]["maximum"], 1.0, "{props}");
    assert_eq!(
        props["client_ip_header"]["enum"],
        json!(["x-forwarded-for", "forwarded", "x-real-ip"]),
        "{props}"
    );
    assert_eq!(
        props["risk_mode"]["enum"],
        json!(["enforce", "log_only"]),
        "{props}"
    );
    assert!(doc["components"]["schemas"]["Preview"]["properties"]["would_reject"].is_object());

    // Nothing was written: still the default config, no version, no audit row.
    let (status, config) = json_of(
        app.get("/api/admin/gateway/config")
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["version"], 0, "{config}");
    assert!(app.audit_rows("gateway_config.updated").await.is_empty());
}

/// Entries written straight into the stream: more than one page of `XREVRANGE`.
const SEEDED: usize = 2_500;
/// How many of them the preview asks for.
const PREVIEWED: usize = 2_100;

#[tokio::test]
async fn preview_reads_only_the_newest_entries_and_applies_published_rules() {
    use watchpost_common::{AccessLogEntry, Decision, Keys};

    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let keys = Keys::new(app.key_prefix.clone());
    let mut con = redis::Client::open(app.config.redis.url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must be reachable");

    // Published: an `allow` rule for /allowed and a `rate_limit` rule for /api.
    let published = json!({
        "ip_mode": "direct", "trusted_cidrs": [], "risk_reject_threshold": 0.8,
        "risk_mode": "enforce", "version": 7,
        "rules": [
            {"id": "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0B", "action": "allow",
             "match": {"path_prefixes": ["/allowed"]}, "priority": 1, "reason": "partner"},
            {"id": "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0C", "action": "rate_limit",
             "match": {"path_prefixes": ["/api"]}, "rate": {"requests": 5, "window_secs": 1},
             "priority": 0, "reason": "api"}
        ]
    });
    let _: () = redis::cmd("SET")
        .arg(keys.gateway_config())
        .arg(published.to_string())
        .query_async(&mut con)
        .await
        .expect("SET");

    // curl from distinct clients, scored 0.4 under the defaults; the newest two never
    // reached scoring.
    let mut pipe = redis::pipe();
    for i in 0..SEEDED {
        let path = match i % 10 {
            0 => "/allowed/x",
            1 => "/api/v1",
            _ => "/x",
        };
        let mut e = AccessLogEntry {
            ts: 1_700_000_000_000 + i as u64,
            method: "GET".into(),
            path: path.into(),
            status: 200,
            ip: format!("198.51.{}.{}", i / 256, i % 256),
            risk: 0.4,
            reasons: vec!["ua_cli".into()],
            ua: "curl/8.5.0".into(),
            ua_type: "cli".into(),
            decision: Decision::Allow,
            ..AccessLogEntry::default()
        };
        if i == SEEDED - 1 {
            e.status = 431;
            e.reasons.clear();
            e.risk = 0.0;
            e.ua_type = "unknown".into();
            e.decision = Decision::Reject;
        } else if i == SEEDED - 2 {
            e.ua_type = Default::default();
            e.reasons.clear();
            e.status = 400;
        }
        let fields = e.to_fields();
        pipe.cmd("XADD").arg(keys.access_stream()).arg("*");
        for (name, value) in &fields {
            pipe.arg(*name).arg(value.as_str());
        }
        pipe.ignore();
    }
    let _: () = pipe.query_async(&mut con).await.expect("XADD");

    let (status, p) = preview(
        &app,
        &admin.key,
        &json!({"ip_mode": "direct", "risk_reject_threshold": 0.3, "entries": PREVIEWED}),
    )
    .await;
    assert_eq!(status, 200, "{p}");
    let oldest = SEEDED - PREVIEWED;
    let replayed: Vec<usize> = (oldest..SEEDED - 2).collect();
    let allowed = replayed.iter().filter(|i| *i % 10 == 0).count() as u64;
    let limited = replayed.iter().filter(|i| *i % 10 == 1).count() as u64;
    assert_eq!(p["examined"], PREVIEWED as u64, "{p}");
    assert_eq!(p["skipped"], 2, "{p}");
    assert_eq!(p["would_allow"], allowed, "{p}");
    assert_eq!(p["would_reject"], replayed.len() as u64 - allowed, "{p}");
    assert_eq!(p["newly_rejected"], p["would_reject"], "{p}");
    assert_eq!(p["rate_limit_rules_ignored"], limited, "{p}");
    assert_eq!(p["oldest_ts"], 1_700_000_000_000 + oldest as u64, "{p}");
    assert_eq!(p["newest_ts"], 1_700_000_000_000 + SEEDED as u64 - 1, "{p}");
    assert_eq!(
        count(&p["top_paths"], "/x"),
        replayed.len() as u64 - allowed - limited
    );
    assert_eq!(count(&p["top_paths"], "/allowed/x"), 0, "{p}");
}
