//! `GET /metrics`: who may scrape it (`[admin] metrics_cidrs`, or a platform admin's token)
//! and the series it exports after some traffic.

use crate::common::{assert_error, json_of, TestApp};
use serde_json::json;

/// The value of the series `line` (its name and labels exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[track_caller]
fn assert_sample_at_least(text: &str, series: &str, min: f64) {
    let value = sample(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert!(value >= min, "{series} = {value}, want >= {min}");
}

#[tokio::test]
async fn loopback_scrapes_without_a_token_and_sees_routes_throttles_and_sign_in_failures() {
    let app = TestApp::builder()
        .configure(|c| c.admin.sign_in_per_ip_per_minute = 1)
        .spawn()
        .await;
    let admin = app.create_admin().await;
    let listed = app
        .get("/api/admin/users")
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("list users");
    assert_eq!(listed.status(), 200);
    let missing = app
        .get("/api/admin/users/usr_01J0000000000000000000NONE")
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("get user");
    assert_eq!(missing.status(), 404);
    // A wrong password, then attempts past the per-IP sign-in limit of 1 a minute (a fixed
    // window may roll over once between them).
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = app
            .post("/api/auth/sessions")
            .json(&json!({"email": admin.email, "password": "wrong password, surely"}))
            .send()
            .await
            .expect("sign in");
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            break;
        }
    }
    assert_eq!(statuses.first(), Some(&401), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");

    let response = app.get("/metrics").send().await.expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.expect("body");

    // Requests by route template, never the raw path.
    assert_sample_at_least(
        &text,
        "watchpost_admin_http_requests_total{method=\"GET\",route=\"/api/admin/users\",status=\"200\"}",
        1.0,
    );
    assert_sample_at_least(
        &text,
        "watchpost_admin_http_requests_total{method=\"GET\",route=\"/api/admin/users/{id}\",status=\"404\"}",
        1.0,
    );
    assert!(
        !text.contains("NONE"),
        "a raw path leaked into a label:\n{text}"
    );
    assert_sample_at_least(
        &text,
        "watchpost_admin_http_request_duration_seconds_count{method=\"GET\",route=\"/api/admin/users/{id}\"}",
        1.0,
    );
    assert_sample_at_least(
        &text,
        "watchpost_admin_http_requests_total{method=\"POST\",route=\"/api/auth/sessions\",status=\"429\"}",
        1.0,
    );
    assert_sample_at_least(
        &text,
        "watchpost_admin_sign_in_failures_total{reason=\"bad_credentials\"}",
        1.0,
    );
    assert_sample_at_least(
        &text,
        "watchpost_admin_throttle_hits_total{throttle=\"sign_in\"}",
        1.0,
    );
    // The pool has served the requests above; its size is at most the configured maximum.
    let max = sample(&text, "watchpost_admin_pg_pool_max_size").expect("pool max size");
    let size = sample(&text, "watchpost_admin_pg_pool_size").expect("pool size");
    assert!((1.0..=max).contains(&size), "pool size {size}, max {max}");
    assert!(
        sample(&text, "watchpost_admin_pg_pool_in_use").is_some(),
        "{text}"
    );
    assert_sample_at_least(&text, "watchpost_admin_pg_pool_wait_seconds_count", 1.0);
    for series in [
        "watchpost_admin_redis_errors_total",
        "watchpost_admin_access_log_tails_open",
        "watchpost_admin_gateway_config_version",
        "watchpost_admin_pg_pool_waiting",
    ] {
        assert!(sample(&text, series).is_some(), "no {series} in\n{text}");
    }
}

#[tokio::test]
async fn outside_metrics_cidrs_a_token_of_a_platform_admin_is_needed() {
    let app = TestApp::builder()
        .configure(|c| c.admin.metrics_cidrs = vec!["10.0.0.0/8".into()])
        .spawn()
        .await;
    let (status, body) = json_of(app.get("/metrics").send().await.expect("scrape")).await;
    assert_error(status, &body, 403, "FORBIDDEN");

    let user = app.create_user().await;
    let response = app
        .get("/metrics")
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("scrape as user");
    let (status, body) = json_of(response).await;
    assert_error(status, &body, 403, "FORBIDDEN");

    let response = app
        .get("/metrics")
        .bearer_auth("wpk_not_a_real_key")
        .send()
        .await
        .expect("scrape with a bad key");
    let (status, body) = json_of(response).await;
    assert_error(status, &body, 401, "UNAUTHORIZED");

    let admin = app.create_admin().await;
    let response = app
        .get("/metrics")
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("scrape as admin");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    assert!(
        text.contains("watchpost_admin_http_requests_total"),
        "{text}"
    );
}

/// Every `watchpost_admin_*` / `watchpost_proxy_*` metric name in `text`, without the
/// histogram suffixes (`_bucket`, `_count`, `_sum`).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for prefix in ["watchpost_admin_", "watchpost_proxy_"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            // A bare prefix is prose (`watchpost_proxy_*`), not a name.
            if end > prefix.len() {
                names.insert(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
    }
    names
}

/// The names a registry exposes, from its `# TYPE` lines (a histogram `h` exposes `h_bucket`,
/// `h_count` and `h_sum`).
fn exposed_names(exposition: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in exposition.lines() {
        let mut parts = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            names.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_count", "_sum"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// The Grafana dashboard parses, and every metric it or the alert rules query is exported by
/// a live admin API or a live proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_rules_query_only_exported_metrics() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let dashboard_text =
        std::fs::read_to_string(format!("{root}/grafana/watchpost.json")).expect("dashboard");
    let dashboard: serde_json::Value =
        serde_json::from_str(&dashboard_text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(
        panels
            .iter()
            .any(|p| p["targets"].as_array().is_some_and(|t| !t.is_empty())),
        "the dashboard queries something"
    );
    let rules = std::fs::read_to_string(format!("{root}/prometheus/alerts.yml")).expect("rules");

    let app = TestApp::spawn().await;
    let origin = crate::end_to_end::start_origin().await;
    let proxy = crate::end_to_end::start_proxy(&app, origin).await;
    // The per-route series exist once a request was answered (the first scrape is one).
    let first = app.get("/metrics").send().await.expect("first scrape");
    assert_eq!(first.status(), 200);
    let mut exposed = exposed_names(
        &app.get("/metrics")
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body"),
    );
    exposed.extend(exposed_names(&proxy.metrics().render()));
    tokio::task::spawn_blocking(move || proxy.shutdown())
        .await
        .expect("proxy shutdown");

    for (file, text) in [
        ("grafana/watchpost.json", &dashboard_text),
        ("prometheus/alerts.yml", &rules),
    ] {
        let queried = metric_names(text);
        assert!(!queried.is_empty(), "{file} queries no metric");
        let missing: Vec<_> = queried.difference(&exposed).collect();
        assert!(
            missing.is_empty(),
            "{file} queries metrics nobody exports: {missing:?}"
        );
    }
}
