//! `GET /api/admin/access-log`, `/access-log/tail` and `/access-log/summary` over synthetic
//! entries XADDed into the test's own stream key.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{assert_error, json_of, TestAdmin, TestApp};
use serde_json::Value;
use watchpost_common::{AccessLogEntry, Decision, Keys};

/// An app whose admins are not rate-limited by the long walks below.
async fn spawn_app() -> TestApp {
    TestApp::builder()
        .configure(|c| {
            c.admin.rate_limit_per_minute = 1_000_000;
            c.admin.rate_limit_per_hour = 1_000_000;
        })
        .spawn()
        .await
}

/// Like [`spawn_app`], for tests that read tens of thousands of entries: a Redis command may
/// take up to 20 s. On a loaded machine (load average above 10 on 2 cores) a debug build
/// decoding a 1,000-entry reply, or a pipeline of 1,000 fetches, can exceed the default
/// second, and the page would be a 503 although nothing is wrong. These tests check which
/// entries come back, not how fast; Redis being unreachable is tested by `redis_down_is_503`.
async fn spawn_patient_app() -> TestApp {
    TestApp::builder()
        .configure(|c| {
            c.admin.rate_limit_per_minute = 1_000_000;
            c.admin.rate_limit_per_hour = 1_000_000;
            c.admin.redis_timeout_ms = 20_000;
        })
        .spawn()
        .await
}

/// The test's own connection, patient for the same reason as [`spawn_patient_app`] (pipelines
/// of 1,000 `XADD`s with their index members).
pub(crate) async fn redis_con(app: &TestApp) -> redis::aio::MultiplexedConnection {
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    redis::Client::open(app.config.redis.url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("Redis must be reachable")
}

pub(crate) fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

/// Synthetic entry number `i`: 1 in 100 from France with a bot UA, a few hundred IPs.
pub(crate) fn synthetic(i: u64) -> AccessLogEntry {
    let rare = i % 100 == 7;
    AccessLogEntry {
        ts: i,
        method: if i % 3 == 0 { "POST" } else { "GET" }.into(),
        host: "app.test".into(),
        path: format!("/p/{}", i % 10),
        query: String::new(),
        status: if i % 10 == 9 { 404 } else { 200 },
        ip: format!("10.0.{}.{}", (i / 250) % 4, i % 250),
        ip_source: "peer".into(),
        peer: "10.0.0.1".into(),
        country: if rare { "FR" } else { "DE" }.into(),
        risk: if rare { 0.95 } else { 0.1 },
        reasons: if rare { vec!["ua_bot".into()] } else { vec![] },
        ua: if rare { "Googlebot/2.1" } else { "Mozilla/5.0" }.into(),
        ua_type: if rare { "bot" } else { "browser" }.into(),
        decision: if rare {
            Decision::Reject
        } else {
            Decision::Allow
        },
        latency_us: 100 + i,
        bytes_out: 10,
        upstream: "127.0.0.1:3000".into(),
        request_id: format!("req-{i}"),
        proxy_id: "p1".into(),
        rule: String::new(),
        proto: "http/1.1".into(),
    }
}

/// XADDs entries with explicit ids (and their index members) through pipelines of 1000.
async fn xadd_all(app: &TestApp, entries: &[(String, AccessLogEntry)]) {
    let mut con = redis_con(app).await;
    let keys = Keys::new(app.key_prefix.clone());
    for chunk in entries.chunks(1000) {
        let mut pipe = redis::pipe();
        for (id, e) in chunk {
            crate::common::xadd_indexed(&mut pipe, &keys, id, e);
        }
        let () = pipe.query_async(&mut con).await.expect("XADD pipeline");
    }
}

pub(crate) async fn get_json(
    app: &TestApp,
    admin: &TestAdmin,
    path_and_query: &str,
) -> (u16, Value) {
    json_of(
        app.get(path_and_query)
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("request"),
    )
    .await
}

/// Follows `next_cursor` from the top; returns the ids in visit order and the number of calls.
async fn walk(
    app: &TestApp,
    admin: &TestAdmin,
    query: &str,
    start_before: Option<String>,
) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut before = start_before;
    let mut calls = 0;
    loop {
        let mut url = format!("/api/admin/access-log?{query}");
        if let Some(b) = &before {
            url.push_str(&format!("&before={b}"));
        }
        let (status, page) = get_json(app, admin, &url).await;
        assert_eq!(status, 200, "{page}");
        calls += 1;
        for item in page["items"].as_array().expect("items") {
            ids.push(item["id"].as_str().expect("id").to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => before = Some(c.to_string()),
            None => return (ids, calls),
        }
        assert!(calls < 10_000, "walk does not end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_walks_visit_every_entry_exactly_once_in_order() {
    let app = spawn_patient_app().await;
    let admin = app.create_admin().await;
    const N: u64 = 20_000;
    let base = 1_700_000_000_000u64;
    let entries: Vec<(String, AccessLogEntry)> = (0..N)
        .map(|i| (format!("{}-{}", base + i / 4, i % 4), synthetic(i)))
        .collect();
    xadd_all(&app, &entries).await;
    let newest_first: Vec<String> = entries.iter().rev().map(|(id, _)| id.clone()).collect();
    let top = newest_first[0].clone();

    // Unfiltered, largest pages; entries arriving mid-walk are newer than the walk's start
    // and so never appear in it.
    let mut ids = Vec::new();
    let mut before: Option<String> = None;
    let mut calls = 0;
    let late: Vec<(String, AccessLogEntry)> = (0..50)
        .map(|i| (format!("{}-{}", base + N, i), synthetic(1_000_000 + i)))
        .collect();
    loop {
        let mut url = "/api/admin/access-log?limit=500".to_string();
        if let Some(b) = &before {
            url.push_str(&format!("&before={b}"));
        }
        let (status, page) = get_json(&app, &admin, &url).await;
        assert_eq!(status, 200, "{page}");
        calls += 1;
        if calls == 3 {
            xadd_all(&app, &late).await;
        }
        let items = page["items"].as_array().expect("items");
        for item in items {
            ids.push(item["id"].as_str().expect("id").to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(items.len(), 500, "only the last page may be short");
                before = Some(c.to_string());
            }
            None => break,
        }
    }
    assert_eq!(calls as u64, N / 500);
    assert_eq!(ids.len(), newest_first.len());
    assert!(
        ids == newest_first,
        "the walk must follow the stream exactly"
    );

    // `since` the walk's top: exactly the late entries, newest first, and nothing more.
    let (status, page) = get_json(
        &app,
        &admin,
        &format!("/api/admin/access-log?limit=500&since={top}"),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let got: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().expect("id"))
        .collect();
    let want: Vec<&str> = late.iter().rev().map(|(id, _)| id.as_str()).collect();
    assert_eq!(got, want);
    assert_eq!(page["next_cursor"], Value::Null);

    // Filtered by an index (1 %): full pages, every match exactly once, in order.
    let all: Vec<(String, AccessLogEntry)> = entries.iter().chain(late.iter()).cloned().collect();
    let want_fr: Vec<String> = all
        .iter()
        .rev()
        .filter(|(_, e)| e.country == "FR")
        .map(|(id, _)| id.clone())
        .collect();
    let (got_fr, calls) = walk(&app, &admin, "limit=100&country=fr", None).await;
    assert_eq!(got_fr.len(), want_fr.len());
    assert!(
        got_fr == want_fr,
        "filtered walk must match the stream's order"
    );
    assert_eq!(calls, want_fr.len().div_ceil(100), "indexed pages are full");

    // Filtered without an index (~3 %): each call examines at most the scan budget, so pages
    // come back short, and following the cursor still yields every match once, in order.
    let want_post: Vec<String> = all
        .iter()
        .rev()
        .filter(|(_, e)| e.method == "POST" && e.path.starts_with("/p/7"))
        .map(|(id, _)| id.clone())
        .collect();
    let (got_post, calls) = walk(&app, &admin, "limit=100&method=post&path=/p/7", None).await;
    assert!(
        got_post == want_post,
        "unindexed walk must match the stream"
    );
    let budget = app.config.admin.access_log_scan_budget;
    assert!(
        calls >= (N as usize) / budget,
        "{calls} calls cannot have examined {N} entries within a budget of {budget}"
    );
    let unique: HashSet<&String> = got_fr.iter().collect();
    assert_eq!(unique.len(), got_fr.len());

    // Two filters together, with a cursor taken from the middle of the stream.
    let mid = &newest_first[newest_first.len() / 2];
    let want_mid: Vec<String> = entries
        .iter()
        .rev()
        .filter(|(id, e)| {
            id_lt(id, mid) && e.risk >= 0.9 && e.method == "POST" && e.path.starts_with("/p/")
        })
        .map(|(id, _)| id.clone())
        .collect();
    let (got_mid, _) = walk(
        &app,
        &admin,
        "limit=7&risk_min=0.9&method=post&path=/p/",
        Some(mid.clone()),
    )
    .await;
    assert!(!want_mid.is_empty());
    assert_eq!(got_mid, want_mid);
}

fn id_lt(a: &str, b: &str) -> bool {
    let parse = |s: &str| {
        let (ms, seq) = s.split_once('-').expect("id");
        (
            ms.parse::<u64>().expect("ms"),
            seq.parse::<u64>().expect("seq"),
        )
    };
    parse(a) < parse(b)
}

#[tokio::test]
async fn filters_select_and_fields_are_typed() {
    let app = spawn_app().await;
    let admin = app.create_admin().await;
    let base = now_ms();
    let mk = |i: u64, f: &dyn Fn(&mut AccessLogEntry)| {
        let mut e = synthetic(i);
        e.country = "DE".into();
        e.ua_type = "browser".into();
        e.risk = 0.1;
        e.decision = Decision::Allow;
        e.status = 200;
        e.method = "GET".into();
        e.path = "/home".into();
        e.ip = "192.0.2.1".into();
        f(&mut e);
        (format!("{}-0", base + i), e)
    };
    let entries = vec![
        mk(1, &|e| e.method = "DELETE".into()),
        mk(2, &|e| e.path = "/admin/users".into()),
        mk(3, &|e| e.ip = "2001:db8::7".into()),
        mk(4, &|e| e.country = "JP".into()),
        mk(5, &|e| {
            e.risk = 0.97;
            e.reasons = vec!["ua_cli".into(), "rate".into()];
        }),
        mk(6, &|e| e.ua_type = "library".into()),
        mk(7, &|e| e.decision = Decision::Reject),
        mk(8, &|e| e.status = 503),
        mk(9, &|_| {}),
    ];
    xadd_all(&app, &entries).await;
    for (query, want) in [
        ("method=delete", 1),
        ("path=/admin", 2),
        ("ip=2001:DB8:0::7", 3),
        ("country=jp", 4),
        ("risk_min=0.95", 5),
        ("ua_type=library", 6),
        ("decision=reject", 7),
        ("status=503", 8),
    ] {
        let (status, page) =
            get_json(&app, &admin, &format!("/api/admin/access-log?{query}")).await;
        assert_eq!(status, 200, "{query}: {page}");
        let items = page["items"].as_array().expect("items");
        assert_eq!(items.len(), 1, "{query}: {page}");
        assert_eq!(items[0]["id"], format!("{}-0", base + want), "{query}");
        assert_eq!(page["next_cursor"], Value::Null, "{query}");
    }
    let (_, page) = get_json(&app, &admin, "/api/admin/access-log?risk_min=0.95").await;
    let item = &page["items"][0];
    assert_eq!(item["risk"], 0.97);
    assert_eq!(item["reasons"], serde_json::json!(["ua_cli", "rate"]));
    assert_eq!(item["status"], 200);
    assert_eq!(item["ts"], 5);
    assert_eq!(item["decision"], "allow");
    assert!(item["latency_us"].is_u64());

    // Default limit, order, exclusive bounds.
    let (_, page) = get_json(&app, &admin, "/api/admin/access-log").await;
    assert_eq!(page["items"].as_array().expect("items").len(), 9);
    assert_eq!(page["items"][0]["id"], format!("{}-0", base + 9));
    let (_, page) = get_json(
        &app,
        &admin,
        &format!(
            "/api/admin/access-log?before={}-0&since={}",
            base + 6,
            base + 3
        ),
    )
    .await;
    let ids: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [format!("{}-0", base + 5), format!("{}-0", base + 4)]);
    let (_, page) = get_json(&app, &admin, "/api/admin/access-log?limit=2").await;
    assert_eq!(page["next_cursor"], format!("{}-0", base + 8));
    let (_, page) = get_json(&app, &admin, "/api/admin/access-log?before=0-0").await;
    assert_eq!(page["items"], serde_json::json!([]));
    assert_eq!(page["next_cursor"], Value::Null);
}

#[tokio::test]
async fn every_bad_parameter_is_a_400_envelope() {
    let app = spawn_app().await;
    let admin = app.create_admin().await;
    for query in [
        "limit=0",
        "limit=501",
        "limit=ten",
        "limit=-1",
        "before=abc",
        "before=1-2-3",
        "before=-5",
        "before=$",
        "since=12x",
        "since=1-",
        "risk_min=high",
        "risk_min=1.5",
        "risk_min=-0.1",
        "ua_type=robot",
        "decision=maybe",
        "status=99",
        "status=600",
        "status=7xx",
        "status=2x",
        "from=yesterday",
        "to=-5",
        "path=/a&path_prefix=/b",
        "host=a/b",
        "country=DEU",
        "country=1",
        "ip=1.2.3",
        "ip=localhost",
        "method=GE%20T",
        "path=noslash",
        "unknown=1",
    ] {
        let (status, body) =
            get_json(&app, &admin, &format!("/api/admin/access-log?{query}")).await;
        assert_error(status, &body, 400, "BAD_REQUEST");
    }
    for query in ["since=bad", "ua_type=robot", "risk_min=x", "limit=5"] {
        let (status, body) =
            get_json(&app, &admin, &format!("/api/admin/access-log/tail?{query}")).await;
        assert_error(status, &body, 400, "BAD_REQUEST");
    }
    for query in [
        "window=15",
        "window=15x",
        "window=0s",
        "window=8d",
        "window=",
        "w=1h",
    ] {
        let (status, body) = get_json(
            &app,
            &admin,
            &format!("/api/admin/access-log/summary?{query}"),
        )
        .await;
        assert_error(status, &body, 400, "BAD_REQUEST");
    }
}

#[tokio::test]
async fn only_platform_admins_may_read_the_access_log() {
    let app = spawn_app().await;
    let user = app.create_user().await;
    for path in [
        "/api/admin/access-log",
        "/api/admin/access-log/tail",
        "/api/admin/access-log/summary",
    ] {
        let (status, body) = json_of(app.get(path).send().await.expect("request")).await;
        assert_error(status, &body, 401, "UNAUTHORIZED");
        let (status, body) = json_of(
            app.get(path)
                .bearer_auth(&user.token)
                .send()
                .await
                .expect("request"),
        )
        .await;
        assert_error(status, &body, 403, "FORBIDDEN");
    }
}

#[tokio::test]
async fn redis_down_is_503() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let app = TestApp::builder()
        .configure(move |c| c.redis.url = format!("redis://127.0.0.1:{port}"))
        .spawn()
        .await;
    let admin = app.create_admin().await;
    for path in [
        "/api/admin/access-log",
        "/api/admin/access-log?country=DE",
        "/api/admin/access-log/tail",
        "/api/admin/access-log/summary",
    ] {
        let (status, body) = get_json(&app, &admin, path).await;
        assert_error(status, &body, 503, "UNAVAILABLE");
    }
}

/// One Server-Sent Event.
#[derive(Debug, Default)]
pub(crate) struct SseEvent {
    pub(crate) event: String,
    pub(crate) id: String,
    pub(crate) data: String,
}

/// Reads events from an SSE response until `want` entry events arrived (heartbeats skipped).
pub(crate) async fn read_entries(
    response: &mut reqwest::Response,
    buf: &mut String,
    want: usize,
) -> Vec<SseEvent> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let mut ev = SseEvent::default();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        ev.id = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        ev.data.push_str(v.trim());
                    }
                }
                if !ev.event.is_empty() {
                    out.push(ev);
                }
                if out.len() == want {
                    return;
                }
            }
            let chunk = response
                .chunk()
                .await
                .expect("read the event stream")
                .expect("the stream stays open");
            buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("events within 15 s");
    out
}

pub(crate) async fn open_tail(app: &TestApp, admin: &TestAdmin, query: &str) -> reqwest::Response {
    let response = app
        .get(&format!("/api/admin/access-log/tail?{query}"))
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("tail request");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_streams_new_matching_entries() {
    let app = TestApp::builder()
        .configure(|c| {
            c.admin.access_log_tail_block_ms = 300;
            c.admin.access_log_tail_heartbeat_secs = 1;
            c.admin.access_log_max_tails = 2;
        })
        .spawn()
        .await;
    let admin = app.create_admin().await;
    let base = now_ms();
    let old = synthetic(1);
    xadd_all(&app, &[(format!("{base}-0"), old)]).await;

    // From now: only later entries, and only bots.
    let mut live = open_tail(&app, &admin, "ua_type=bot").await;
    // From a stream id: everything after it, filtered the same way.
    let mut replay = open_tail(&app, &admin, &format!("since={base}-0&decision=allow")).await;
    // Two tails are the configured maximum.
    let (status, body) = get_json(&app, &admin, "/api/admin/access-log/tail").await;
    assert_error(status, &body, 429, "RATE_LIMITED");

    let browser = synthetic(2);
    let bot = synthetic(7);
    assert_eq!(bot.ua_type, "bot");
    xadd_all(
        &app,
        &[
            (format!("{}-0", base + 1), browser.clone()),
            (format!("{}-0", base + 2), bot.clone()),
        ],
    )
    .await;
    let mut buf = String::new();
    let events = read_entries(&mut live, &mut buf, 1).await;
    assert_eq!(events[0].event, "entry");
    assert_eq!(events[0].id, format!("{}-0", base + 2));
    let data: Value = serde_json::from_str(&events[0].data).expect("JSON data");
    assert_eq!(data["request_id"], bot.request_id);
    assert_eq!(data["risk"], 0.95);

    let mut buf2 = String::new();
    let events = read_entries(&mut replay, &mut buf2, 1).await;
    assert_eq!(events[0].id, format!("{}-0", base + 1));

    // Closing a tail frees its slot (noticed at the next heartbeat at the latest).
    drop(live);
    common_eventually(|| async {
        let r = app
            .get("/api/admin/access-log/tail")
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("request");
        r.status() == 200
    })
    .await;
    drop(replay);
}

async fn common_eventually<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if f().await {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn summary_counts_a_known_window() {
    let app = spawn_app().await;
    let admin = app.create_admin().await;
    let now = now_ms();
    let mut entries = Vec::new();
    // Two hours old: outside a 1 h window.
    for i in 0..5u64 {
        entries.push((format!("{}-{i}", now - 2 * 3600 * 1000), synthetic(7)));
    }
    // 30 recent entries, all browsers from Germany; the last five rejected.
    for i in 0..30u64 {
        let mut e = synthetic(i);
        e.country = "DE".into();
        e.ua_type = "browser".into();
        e.decision = Decision::Allow;
        e.ip = if i < 12 {
            "198.51.100.1".into()
        } else {
            format!("198.51.100.{}", i)
        };
        e.risk = i as f64 / 30.0;
        if i >= 25 {
            e.decision = Decision::Reject;
            e.status = 403;
        }
        entries.push((format!("{}-{i}", now - 60_000), e));
    }
    xadd_all(&app, &entries).await;
    let (status, s) = get_json(&app, &admin, "/api/admin/access-log/summary?window=15m").await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["scanned"], 30, "{s}");
    assert_eq!(s["truncated"], false);
    assert_eq!(s["source"], "scan");
    assert_eq!(s["window_secs"], 900);
    assert_eq!(s["by_decision"]["allow"], 25);
    assert_eq!(s["by_decision"]["reject"], 5);
    // Statuses: 403 for 25..30; 404 for i % 10 == 9 below 25 (9, 19); 200 otherwise.
    assert_eq!(s["by_status_class"]["4xx"], 7);
    assert_eq!(s["by_status_class"]["2xx"], 23);
    assert_eq!(s["by_method"]["POST"], 10);
    assert_eq!(s["by_method"]["GET"], 20);
    assert_eq!(s["by_ua_type"]["browser"], 30);
    assert_eq!(
        s["top_ips"][0],
        serde_json::json!({"value": "198.51.100.1", "count": 12})
    );
    assert_eq!(s["top_ips"].as_array().expect("tops").len(), 10);
    assert_eq!(
        s["top_countries"][0],
        serde_json::json!({"value": "DE", "count": 30})
    );
    assert_eq!(s["top_paths"].as_array().expect("paths").len(), 10);
    let hist: Vec<u64> = s["risk_histogram"]
        .as_array()
        .expect("histogram")
        .iter()
        .map(|v| v.as_u64().expect("count"))
        .collect();
    assert_eq!(hist, vec![3; 10]);

    // Longer windows are answered from the rollups, which these hand-written entries lack.
    let (_, s) = get_json(&app, &admin, "/api/admin/access-log/summary?window=3h").await;
    assert_eq!(s["source"], "rollups");
    assert_eq!(s["scanned"], 0);
    let (_, s) = get_json(&app, &admin, "/api/admin/access-log/summary?window=30s").await;
    assert_eq!(s["scanned"], 0);
    assert_eq!(s["truncated"], false);

    // A smaller bound: counts the newest entries only and says so.
    let capped = TestApp::builder()
        .configure(|c| c.admin.access_log_summary_max_entries = 10)
        .spawn()
        .await;
    let admin2 = capped.create_admin().await;
    xadd_all(&capped, &entries).await;
    let (_, s) = get_json(&capped, &admin2, "/api/admin/access-log/summary?window=15m").await;
    assert_eq!(s["scanned"], 10);
    assert_eq!(s["truncated"], true);
    assert_eq!(s["by_decision"]["reject"], 5);
}

/// Entries written the way the proxy writes them (the append script with its rollups), over
/// three hours; then the raw stream is trimmed away entirely. The summary still answers from
/// the rollups, with counts equal to those computed from the stream before it was trimmed.
#[tokio::test]
async fn summary_answers_from_rollups_beyond_the_raw_stream() {
    use watchpost_common::rollup;
    use watchpost_proxy::access_log::{append_batch_with, AppendLimits, APPEND_SCRIPT};

    let app = spawn_app().await;
    let admin = app.create_admin().await;
    let keys = Keys::new(app.key_prefix.clone());
    // A loaded machine can take longer than the default 500 ms to read 3000 entries.
    let mut con = redis::Client::open(app.config.redis.url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("Redis must be reachable");
    let script = redis::Script::new(APPEND_SCRIPT);
    let now = now_ms();
    // 3000 entries spread over the last three hours, oldest first, in batches of 100.
    let span = 3 * 3600 * 1000 - 60_000;
    let all: Vec<AccessLogEntry> = (0..3000u64)
        .map(|i| {
            let mut e = synthetic(i);
            e.ts = now - span + i * (span / 3000);
            e
        })
        .collect();
    for (seq, batch) in all.chunks(100).enumerate() {
        let added = append_batch_with(
            &mut con,
            &script,
            &keys.access(),
            "p1",
            seq as u64 + 1,
            AppendLimits::max_len(1_000_000),
            batch,
        )
        .await
        .expect("append");
        assert_eq!(added, 100);
    }
    // The reference: what the stream holds, counted entry by entry.
    let raw: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(keys.access_stream())
        .arg("-")
        .arg("+")
        .query_async(&mut con)
        .await
        .expect("XRANGE");
    assert_eq!(raw.len(), 3000);
    let in_window = |hours: u64| {
        let start_minute = (now - hours * 3600 * 1000) / 60_000;
        let mut want = rollup::MinuteRollup::default();
        for (_, f) in &raw {
            let e = AccessLogEntry::from_fields(f).expect("entry");
            if e.ts / 60_000 >= start_minute {
                want.add(&e);
            }
        }
        want
    };
    let want = in_window(24);
    // Raw retention exceeded: the stream is gone, the rollups remain.
    let _: () = redis::cmd("DEL")
        .arg(keys.access_stream())
        .query_async(&mut con)
        .await
        .expect("DEL");

    let (status, s) = get_json(&app, &admin, "/api/admin/access-log/summary?window=24h").await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["source"], "rollups", "{s}");
    assert_eq!(s["scanned"], 3000);
    assert_eq!(s["truncated"], false);
    let count = |prefix: &str, v: &str| {
        want.counts
            .get(&format!("{prefix}{v}"))
            .copied()
            .unwrap_or(0)
    };
    for d in ["allow", "reject"] {
        assert_eq!(s["by_decision"][d], count("d:", d), "{d}");
    }
    for c in ["2xx", "4xx"] {
        assert_eq!(s["by_status_class"][c], count("s:", c), "{c}");
    }
    for m in ["GET", "POST"] {
        assert_eq!(s["by_method"][m], count("m:", m), "{m}");
    }
    for u in ["browser", "bot"] {
        assert_eq!(s["by_ua_type"][u], count("u:", u), "{u}");
    }
    let hist: Vec<u64> = s["risk_histogram"]
        .as_array()
        .expect("histogram")
        .iter()
        .map(|v| v.as_u64().expect("count"))
        .collect();
    let want_hist: Vec<u64> = (0..10).map(|b| count("r:", &b.to_string())).collect();
    assert_eq!(hist, want_hist);
    assert_eq!(
        s["top_countries"][0],
        serde_json::json!({"value": "DE", "count": count("c:", "DE")})
    );
    let mut paths: Vec<(&String, &u64)> = want.paths.iter().collect();
    paths.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    assert_eq!(
        s["top_paths"][0],
        serde_json::json!({"value": paths[0].0, "count": paths[0].1})
    );

    // One hour: only the rollups of its minutes. The server reads its clock when it answers,
    // so the window's first minute is the one of a moment between these two readings (a
    // minute may begin in between).
    let before = now_ms();
    let (_, s) = get_json(&app, &admin, "/api/admin/access-log/summary?window=1h").await;
    let after = now_ms();
    assert_eq!(s["source"], "rollups");
    let want: Vec<u64> = [before, after]
        .iter()
        .map(|t| in_window_minutes(&raw, *t, 60))
        .collect();
    assert!(
        want.contains(&s["scanned"].as_u64().expect("scanned")),
        "{s} {want:?}"
    );
    assert!(want[0] > 0 && want[0] < 3000);

    // A short window whose entries were trimmed away is answered from the rollups as well.
    let before = now_ms();
    let (_, s) = get_json(&app, &admin, "/api/admin/access-log/summary?window=15m").await;
    let after = now_ms();
    assert_eq!(s["source"], "rollups", "{s}");
    let want: Vec<u64> = [before, after]
        .iter()
        .map(|t| in_window_minutes(&raw, *t, 15))
        .collect();
    assert!(
        want.contains(&s["scanned"].as_u64().expect("scanned")),
        "{s} {want:?}"
    );
}

/// Entries of `raw` from the start of the minute holding `now - minutes` on.
fn in_window_minutes(
    raw: &[(String, std::collections::HashMap<String, String>)],
    now: u64,
    minutes: u64,
) -> u64 {
    let start_minute = (now - minutes * 60_000) / 60_000;
    raw.iter()
        .filter(|(_, f)| {
            f.get("ts")
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|ts| ts / 60_000 >= start_minute)
        })
        .count() as u64
}

/// Opens a tail with any bearer token.
async fn open_tail_as(app: &TestApp, token: &str) -> reqwest::Response {
    let response = app
        .get("/api/admin/access-log/tail")
        .bearer_auth(token)
        .send()
        .await
        .expect("tail request");
    assert_eq!(response.status(), 200);
    response
}

/// Reads an SSE response until the server ends it (at most 15 s) and returns its named
/// events (heartbeat comments skipped).
async fn read_to_end(mut response: reqwest::Response) -> Vec<SseEvent> {
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(chunk) = response.chunk().await.expect("read the event stream") {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the tail ends within 15 s");
    text.split("\n\n")
        .filter_map(|block| {
            let mut ev = SseEvent::default();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    ev.event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    ev.data.push_str(v.trim());
                }
            }
            (!ev.event.is_empty()).then_some(ev)
        })
        .collect()
}

#[track_caller]
fn assert_closed_with(events: &[SseEvent], code: &str, case: &str) {
    let last = events.last().unwrap_or_else(|| panic!("{case}: no event"));
    assert_eq!(last.event, "error", "{case}: {events:?}");
    let data: Value = serde_json::from_str(&last.data).expect("JSON data");
    assert_eq!(data["code"], code, "{case}: {data}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_ends_when_its_credential_is_revoked_or_its_user_disabled_or_demoted() {
    let app = TestApp::builder()
        .configure(|c| {
            c.admin.access_log_tail_block_ms = 300;
            c.admin.access_log_tail_heartbeat_secs = 1;
        })
        .spawn()
        .await;
    let boss = app.create_admin().await;
    let key_deleted = app.create_admin().await;
    let disabled = app.create_admin().await;
    let demoted = app.create_admin().await;
    // A platform admin signed in with a session token.
    let session_admin = app.create_user().await;
    app.db()
        .await
        .execute(
            "UPDATE users SET role = 'platform_admin' WHERE id = $1",
            &[&session_admin.id],
        )
        .await
        .expect("promote");

    let control = open_tail_as(&app, &boss.key).await;
    let tails = [
        open_tail_as(&app, &key_deleted.key).await,
        open_tail_as(&app, &disabled.key).await,
        open_tail_as(&app, &demoted.key).await,
        open_tail_as(&app, &session_admin.token).await,
    ];

    // The API key is deleted outright.
    app.db()
        .await
        .execute(
            "DELETE FROM api_keys WHERE user_id = $1",
            &[&key_deleted.id],
        )
        .await
        .expect("delete key");
    for (user, change) in [
        (&disabled.id, serde_json::json!({"status": "disabled"})),
        (&demoted.id, serde_json::json!({"role": "user"})),
    ] {
        let response = app
            .patch(&format!("/api/admin/users/{user}"))
            .bearer_auth(&boss.key)
            .json(&change)
            .send()
            .await
            .expect("patch");
        assert_eq!(response.status(), 200, "{change}");
    }
    let response = app
        .delete("/api/auth/sessions/current")
        .bearer_auth(&session_admin.token)
        .send()
        .await
        .expect("sign out");
    assert_eq!(response.status(), 204);

    let [a, b, c, d] = tails;
    let (a, b, c, d) = tokio::join!(
        read_to_end(a),
        read_to_end(b),
        read_to_end(c),
        read_to_end(d)
    );
    assert_closed_with(&a, "UNAUTHORIZED", "API key deleted");
    assert_closed_with(&b, "UNAUTHORIZED", "user disabled");
    assert_closed_with(&c, "FORBIDDEN", "user demoted");
    assert_closed_with(&d, "UNAUTHORIZED", "session revoked");

    // A tail whose credential still holds goes on through the same re-checks.
    let mut control = control;
    let entry = synthetic(3);
    xadd_all(&app, &[(format!("{}-0", now_ms()), entry.clone())]).await;
    let mut buf = String::new();
    let events = read_entries(&mut control, &mut buf, 1).await;
    let data: Value = serde_json::from_str(&events[0].data).expect("JSON data");
    assert_eq!(data["request_id"], entry.request_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_ends_when_its_key_is_revoked_through_the_api() {
    let app = TestApp::builder()
        .configure(|c| {
            c.admin.access_log_tail_block_ms = 300;
            c.admin.access_log_tail_heartbeat_secs = 1;
        })
        .spawn()
        .await;
    let boss = app.create_admin().await;
    let response = app
        .post("/api/admin/api-keys")
        .bearer_auth(&boss.key)
        .json(&serde_json::json!({"name": "tail", "scopes": ["admin:read"]}))
        .send()
        .await
        .expect("create key");
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.expect("body");
    let key = created["key"].as_str().expect("key").to_string();
    let tail = open_tail_as(&app, &key).await;
    let response = app
        .delete(&format!(
            "/api/admin/api-keys/{}",
            created["id"].as_str().expect("id")
        ))
        .bearer_auth(&boss.key)
        .send()
        .await
        .expect("revoke");
    assert_eq!(response.status(), 204);
    let events = read_to_end(tail).await;
    assert_closed_with(&events, "UNAUTHORIZED", "API key revoked");
}

/// The access-log page counts against the admin rate limit like every other admin call: past
/// the limit it is a 429 envelope with the limit headers and no entries.
#[tokio::test]
async fn the_access_log_page_is_rate_limited_like_other_admin_calls() {
    let app = TestApp::builder()
        .configure(|c| {
            c.admin.rate_limit_per_minute = 2;
            c.admin.rate_limit_per_hour = 100;
        })
        .spawn()
        .await;
    let admin = app.create_admin().await;
    xadd_all(&app, &[(format!("{}-0", now_ms()), synthetic(1))]).await;
    // The windows are fixed minutes: start early in one so that all requests share it.
    let second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        % 60;
    if second >= 50 {
        tokio::time::sleep(Duration::from_secs(61 - second)).await;
    }
    for expected_remaining in ["1", "0"] {
        let response = app
            .get("/api/admin/access-log")
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("request");
        assert_eq!(
            response.headers()["ratelimit-remaining"],
            expected_remaining
        );
        let (status, page) = json_of(response).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["items"].as_array().expect("items").len(), 1);
    }
    let response = app
        .get("/api/admin/access-log")
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("request");
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(response.headers()["ratelimit-remaining"], "0");
    let (status, body) = json_of(response).await;
    assert_error(status, &body, 429, "RATE_LIMITED");
    assert!(body.get("items").is_none(), "{body}");
}
