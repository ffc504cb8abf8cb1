//! End to end: the real proxy (in process, same Redis and key prefix as the admin API) in front
//! of a mock origin. Traffic sent through the proxy is found through the admin API's
//! access-log query, and gateway config changes made through the admin API reach the running
//! proxy without a restart.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::{json_of, TestAdmin, TestApp};
use serde_json::{json, Value};
use watchpost_proxy::{RunningProxy, Settings, StopOn};

const BROWSER_UA: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36";

/// A mock origin answering 200 `origin ok` to everything.
pub(crate) async fn start_origin() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind origin");
    let addr = listener.local_addr().expect("origin addr");
    let app = axum::Router::new().fallback(|| async { "origin ok" });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// A port that was free a moment ago, for listeners the test cannot bind itself (Pingora binds
/// its own). It is drawn from below the kernel's ephemeral range (32768-60999 by default), so
/// no `bind(":0")` or outgoing connection elsewhere in the test run can be handed the same
/// port between this check and the proxy's bind.
pub(crate) fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..200 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found in 20000-31999");
}

/// Starts the proxy on the admin API's Redis and key prefix.
/// (`work_stealing = true`: see `config_text` in the proxy's own test support.)
pub(crate) async fn start_proxy(app: &TestApp, origin: SocketAddr) -> RunningProxy {
    start_proxy_with(app, origin, "").await
}

/// [`start_proxy`] with more config sections appended (`[geo]`, …).
pub(crate) async fn start_proxy_with(
    app: &TestApp,
    origin: SocketAddr,
    extra: &str,
) -> RunningProxy {
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\nupstreams = [\"{origin}\"]\n\
         health_listen = \"127.0.0.1:0\"\nproxy_id = \"e2e-proxy\"\nthreads = 1\n\
         work_stealing = true\n\
         grace_period_secs = 0\nshutdown_timeout_secs = 1\nconnect_timeout_ms = 1000\n\
         health_check_interval_ms = 200\n\
         [redis]\nurl = \"{redis}\"\nkey_prefix = \"{prefix}\"\n{extra}",
        port = free_port(),
        redis = app.config.redis.url,
        prefix = app.key_prefix,
    );
    let settings = Settings::load_str(&text, None, &[]).expect("proxy config is valid");
    // Starting blocks until the listener is up: keep it off the async worker threads.
    tokio::task::spawn_blocking(move || watchpost_proxy::start(settings, StopOn::Handle))
        .await
        .expect("start task")
        .expect("the proxy starts")
}

/// Polls until `f` returns `Some`, failing after `within`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

struct Client {
    http: reqwest::Client,
    proxy: SocketAddr,
}

impl Client {
    /// GET through the proxy with exactly these headers; returns the status.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> u16 {
        let mut rb = self.http.get(format!("http://{}{path}", self.proxy));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        rb.send()
            .await
            .expect("request through the proxy")
            .status()
            .as_u16()
    }
}

/// The access-log entries matching `query`, through the admin API.
async fn query(app: &TestApp, admin: &TestAdmin, query: &str) -> Vec<Value> {
    let (status, page) = json_of(
        app.get(&format!("/api/admin/access-log?{query}"))
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("query"),
    )
    .await;
    assert_eq!(status, 200, "{query}: {page}");
    page["items"].as_array().expect("items").clone()
}

/// Waits until exactly one entry matches `q` and returns it.
async fn find_one(app: &TestApp, admin: &TestAdmin, q: &str) -> Value {
    eventually(
        &format!("an entry for {q}"),
        Duration::from_secs(10),
        || async {
            let items = query(app, admin, q).await;
            assert!(
                items.len() <= 1,
                "{q} matched more than one entry: {items:?}"
            );
            items.into_iter().next()
        },
    )
    .await
}

async fn put_config(app: &TestApp, admin: &TestAdmin, body: Value) -> Value {
    let (status, body) = json_of(
        app.put("/api/admin/gateway/config")
            .bearer_auth(&admin.key)
            .json(&body)
            .send()
            .await
            .expect("PUT"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

pub(crate) async fn proxy_config_version(http: &reqwest::Client, health: SocketAddr) -> u64 {
    let body: Value = http
        .get(format!("http://{health}/healthz"))
        .send()
        .await
        .expect("healthz")
        .json()
        .await
        .expect("healthz JSON");
    body["config_version"].as_u64().expect("config_version")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_is_queryable_and_config_changes_apply_live() {
    let app = TestApp::builder()
        .configure(|c| {
            c.admin.rate_limit_per_minute = 1_000_000;
            c.admin.rate_limit_per_hour = 1_000_000;
        })
        .spawn()
        .await;
    let admin = app.create_admin().await;
    let origin = start_origin().await;
    let proxy = start_proxy(&app, origin).await;
    let health = proxy.health_addr();
    let client = Client {
        http: reqwest::Client::new(),
        proxy: proxy.listen_addr(),
    };

    // Various clients; each found again through the query API by its own filters.
    let browser = [
        ("User-Agent", BROWSER_UA),
        ("Accept", "text/html"),
        ("Accept-Language", "en"),
    ];
    let cli = [("User-Agent", "curl/8.5.0"), ("Accept", "*/*")];
    assert_eq!(client.get("/e2e/browser?page=2", &browser).await, 200);
    assert_eq!(client.get("/e2e/cli", &cli).await, 200);
    assert_eq!(
        client
            .get("/e2e/library", &[("User-Agent", "python-requests/2.31.0")])
            .await,
        200
    );
    // Direct mode: a forwarding header is not believed; the peer is the client.
    assert_eq!(
        client
            .get(
                "/e2e/spoof",
                &[
                    ("User-Agent", BROWSER_UA),
                    ("Accept", "text/html"),
                    ("Accept-Language", "en"),
                    ("X-Forwarded-For", "198.51.100.23"),
                ]
            )
            .await,
        200
    );

    let e = find_one(
        &app,
        &admin,
        "path=/e2e/browser&ua_type=browser&method=get&ip=127.0.0.1&decision=allow&status=200",
    )
    .await;
    assert_eq!(e["query"], "page=2");
    assert_eq!(e["proxy_id"], "e2e-proxy");
    assert_eq!(e["ip_source"], "peer");
    assert_eq!(e["risk"], 0.0);
    assert_eq!(e["upstream"], origin.to_string());
    let cli_entry = find_one(&app, &admin, "path=/e2e/cli&ua_type=cli&decision=allow").await;
    let cli_score = cli_entry["risk"].as_f64().expect("risk");
    assert!(cli_score > 0.0 && cli_score < 0.8, "{cli_entry}");
    assert!(
        cli_entry["reasons"]
            .as_array()
            .expect("reasons")
            .iter()
            .any(|r| r == "ua_cli"),
        "{cli_entry}"
    );
    find_one(
        &app,
        &admin,
        &format!("path=/e2e/cli&risk_min={cli_score}&status=200"),
    )
    .await;
    find_one(&app, &admin, "path=/e2e/library&ua_type=library").await;
    let spoof = find_one(&app, &admin, "path=/e2e/spoof&ip=127.0.0.1").await;
    assert_eq!(spoof["ip_source"], "peer");
    assert!(query(&app, &admin, "ip=198.51.100.23").await.is_empty());

    // Lower the threshold below the CLI's score: the same request, allowed before, is now
    // rejected by the running proxy.
    let current = put_config(
        &app,
        &admin,
        json!({"ip_mode": "direct", "trusted_cidrs": [], "risk_reject_threshold": cli_score / 2.0,
               "version": 0}),
    )
    .await;
    let v1 = current["version"].as_u64().expect("version");
    let mut attempt = 0;
    eventually(
        "the lowered threshold to apply",
        Duration::from_secs(10),
        || {
            attempt += 1;
            let path = format!("/e2e/cli-after/{attempt}");
            let client = &client;
            async move { (client.get(&path, &cli).await == 403).then_some(()) }
        },
    )
    .await;
    assert_eq!(proxy_config_version(&client.http, health).await, v1);
    let rejected = find_one(
        &app,
        &admin,
        &format!("path=/e2e/cli-after/{attempt}&decision=reject&status=403&ua_type=cli"),
    )
    .await;
    assert!(
        rejected["risk"].as_f64().expect("risk") >= cli_score / 2.0,
        "{rejected}"
    );
    // Browsers still pass.
    assert_eq!(client.get("/e2e/browser-after", &browser).await, 200);

    // Behind a trusted load balancer: X-Forwarded-For from 127.0.0.0/8 is believed.
    let current = put_config(
        &app,
        &admin,
        json!({"ip_mode": "proxy", "trusted_cidrs": ["127.0.0.0/8"], "risk_reject_threshold": 0.8,
               "version": v1}),
    )
    .await;
    let v2 = current["version"].as_u64().expect("version");
    eventually(
        "version 2 on the proxy",
        Duration::from_secs(10),
        || async { (proxy_config_version(&client.http, health).await == v2).then_some(()) },
    )
    .await;
    assert_eq!(
        client
            .get(
                "/e2e/forwarded",
                &[
                    ("User-Agent", BROWSER_UA),
                    ("Accept", "text/html"),
                    ("Accept-Language", "en"),
                    ("X-Forwarded-For", "203.0.113.9, 127.0.0.5"),
                ]
            )
            .await,
        200
    );
    let fwd = find_one(&app, &admin, "ip=203.0.113.9").await;
    assert_eq!(fwd["path"], "/e2e/forwarded");
    assert_eq!(fwd["ip_source"], "x-forwarded-for");
    assert_eq!(fwd["peer"], "127.0.0.1");
    // The CLI is allowed again at 0.8.
    assert_eq!(client.get("/e2e/cli-again", &cli).await, 200);

    tokio::task::spawn_blocking(move || proxy.shutdown())
        .await
        .expect("proxy shutdown");
}
