//! `GET/PUT /api/admin/gateway/config` and `/gateway/config/versions` against real PostgreSQL
//! and Redis (each test with its own database and key prefix).

use crate::common::{assert_error, json_of, TestApp};
use futures::StreamExt;
use serde_json::{json, Value};
use watchpost_common::{GatewayConfig, Keys};

async fn redis_con(app: &TestApp) -> redis::aio::MultiplexedConnection {
    redis::Client::open(app.config.redis.url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must be reachable")
}

async fn stored_config(app: &TestApp) -> Option<String> {
    let mut con = redis_con(app).await;
    redis::cmd("GET")
        .arg(Keys::new(app.key_prefix.clone()).gateway_config())
        .query_async(&mut con)
        .await
        .expect("GET")
}

async fn get_config(app: &TestApp, key: &str) -> Value {
    let (status, body) = json_of(
        app.get("/api/admin/gateway/config")
            .bearer_auth(key)
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn put_config(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    json_of(
        app.put("/api/admin/gateway/config")
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("request"),
    )
    .await
}

#[tokio::test]
async fn default_then_versions_applied_announced_and_audited() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;

    let current = get_config(&app, &admin.key).await;
    assert_eq!(current["version"], 0, "{current}");
    assert_eq!(current["ip_mode"], "direct");
    assert_eq!(current["risk_reject_threshold"], 0.8);
    assert_eq!(current["updated_at"], Value::Null);
    assert_eq!(stored_config(&app).await, None);

    // Listen for the announcement the proxies subscribe to.
    let client = redis::Client::open(app.config.redis.url.as_str()).expect("url");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    let channel = Keys::new(app.key_prefix.clone()).gateway_config_changed();
    pubsub.subscribe(&channel).await.expect("subscribe");

    let (status, first) = put_config(
        &app,
        &admin.key,
        json!({"ip_mode": "proxy", "trusted_cidrs": ["10.1.2.3/8", "2001:db8::/32"], "risk_reject_threshold": 0.5}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let v1 = first["version"].as_u64().expect("version");
    assert!(v1 >= 1, "{first}");
    assert_eq!(
        first["trusted_cidrs"],
        json!(["10.0.0.0/8", "2001:db8::/32"])
    );
    assert_eq!(first["updated_by"], admin.id.as_str());
    assert!(first["updated_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    let message = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        pubsub.on_message().next().await
    })
    .await
    .expect("announcement within 5 s")
    .expect("a message");
    let payload: String = message.get_payload().expect("payload");
    assert_eq!(payload, v1.to_string());
    drop(pubsub);

    // Redis holds exactly what a proxy validates and applies.
    let json = stored_config(&app).await.expect("config in Redis");
    let applied = GatewayConfig::from_json(&json).expect("valid for the proxy");
    assert_eq!(applied.version, v1);
    assert_eq!(applied.risk_reject_threshold, 0.5);
    assert_eq!(get_config(&app, &admin.key).await, first);

    // A change based on the current version is accepted, a stale one is 409.
    let (status, second) = put_config(
        &app,
        &admin.key,
        json!({"ip_mode": "cdn", "trusted_cidrs": ["192.0.2.0/24"], "risk_reject_threshold": 0.7,
               "cdn_headers": ["X-CDN-Client"], "version": v1}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    let v2 = second["version"].as_u64().expect("version");
    assert!(v2 > v1);
    assert_eq!(second["cdn_headers"], json!(["x-cdn-client"]));
    let (status, body) = put_config(
        &app,
        &admin.key,
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.1, "version": v1}),
    )
    .await;
    assert_error(status, &body, 409, "CONFLICT");
    assert_eq!(get_config(&app, &admin.key).await, second);
    let applied = GatewayConfig::from_json(&stored_config(&app).await.expect("set")).expect("ok");
    assert_eq!(applied.version, v2);

    // History, newest first, one page at a time.
    let (status, page) = json_of(
        app.get("/api/admin/gateway/config/versions?limit=1")
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"][0]["version"], v2);
    assert_eq!(page["items"][0]["config"], second);
    assert_eq!(page["items"][0]["created_by"], admin.id.as_str());
    let cursor = page["next_cursor"].as_str().expect("cursor").to_string();
    let (_, page) = json_of(
        app.get(&format!(
            "/api/admin/gateway/config/versions?limit=1&cursor={cursor}"
        ))
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("request"),
    )
    .await;
    assert_eq!(page["items"][0]["version"], v1);
    assert_eq!(page["items"][0]["config"], first);
    assert_eq!(page["next_cursor"], Value::Null);

    // One audit row per accepted PUT, with before/after.
    let rows = app.audit_rows("gateway_config.updated").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["actor_id"], admin.id.as_str());
    assert_eq!(rows[0]["resource_type"], "gateway_config");
    assert_eq!(rows[0]["resource_id"], v1.to_string());
    assert_eq!(
        rows[0]["changes"]["risk_reject_threshold"],
        json!({"before": 0.8, "after": 0.5})
    );
    assert_eq!(
        rows[1]["changes"]["ip_mode"],
        json!({"before": "proxy", "after": "cdn"})
    );
}

#[tokio::test]
async fn invalid_configs_are_refused_with_every_problem_and_change_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let (status, body) = put_config(
        &app,
        &admin.key,
        json!({"ip_mode": "sideways", "trusted_cidrs": ["10.0.0.0/8", "nope", "1.2.3.4/33"],
               "risk_reject_threshold": 1.5}),
    )
    .await;
    assert_error(status, &body, 400, "BAD_REQUEST");
    let message = body["error"]["message"].as_str().expect("message");
    for part in ["sideways", "nope", "1.2.3.4/33", "1.5"] {
        assert!(message.contains(part), "{part} missing from {message}");
    }
    assert!(!message.contains("10.0.0.0/8"), "{message}");

    for bad in [
        json!({"ip_mode": "direct", "risk_reject_threshold": -0.01}),
        json!({"ip_mode": "direct", "risk_reject_threshold": 1.01}),
        json!({"ip_mode": "Direct ", "risk_reject_threshold": 0.5, "trusted_cidrs": []}),
        json!({"ip_mode": "direct"}),
        json!({"risk_reject_threshold": 0.5}),
        json!({"ip_mode": "direct", "risk_reject_threshold": "0.5"}),
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.5, "trusted_cidrs": "10.0.0.0/8"}),
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.5, "extra": true}),
        json!({"ip_mode": "cdn", "risk_reject_threshold": 0.5, "cdn_headers": ["bad header"]}),
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.5, "version": -1}),
    ] {
        let (status, body) = put_config(&app, &admin.key, bad.clone()).await;
        assert_error(status, &body, 400, "BAD_REQUEST");
    }
    let current = get_config(&app, &admin.key).await;
    assert_eq!(current["version"], 0, "{current}");
    assert_eq!(stored_config(&app).await, None);
    assert!(app.audit_rows("gateway_config.updated").await.is_empty());
    let (_, page) = json_of(
        app.get("/api/admin/gateway/config/versions")
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(page["items"], json!([]));

    for q in [
        "limit=0",
        "limit=101",
        "limit=x",
        "cursor=abc",
        "cursor=-3",
        "other=1",
    ] {
        let (status, body) = json_of(
            app.get(&format!("/api/admin/gateway/config/versions?{q}"))
                .bearer_auth(&admin.key)
                .send()
                .await
                .expect("request"),
        )
        .await;
        assert_error(status, &body, 400, "BAD_REQUEST");
    }
}

#[tokio::test]
async fn only_platform_admins_may_read_or_change_it() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let body = json!({"ip_mode": "direct", "risk_reject_threshold": 0.1});
    for (token, want, code) in [
        (None, 401, "UNAUTHORIZED"),
        (Some("wpk_not_a_key"), 401, "UNAUTHORIZED"),
        (Some(user.token.as_str()), 403, "FORBIDDEN"),
    ] {
        let with = |rb: reqwest::RequestBuilder| match token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        };
        for rb in [
            app.get("/api/admin/gateway/config"),
            app.put("/api/admin/gateway/config").json(&body),
            app.get("/api/admin/gateway/config/versions"),
        ] {
            let (status, body) = json_of(with(rb).send().await.expect("request")).await;
            assert_error(status, &body, want, code);
        }
    }
    assert_eq!(stored_config(&app).await, None);
}

#[tokio::test]
async fn redis_down_answers_503_and_applies_nothing() {
    // A port nothing listens on: bind one, then free it.
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
    let (status, body) = put_config(
        &app,
        &admin.key,
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.2}),
    )
    .await;
    assert_error(status, &body, 503, "UNAVAILABLE");
    // PostgreSQL (still up) shows that no version was recorded, and nothing was audited.
    let current = get_config(&app, &admin.key).await;
    assert_eq!(current["version"], 0, "{current}");
    assert_eq!(current["risk_reject_threshold"], 0.8);
    let conn = app.db().await;
    let n: i64 = conn
        .query_one("SELECT count(*) FROM gateway_config_versions", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0);
    assert!(app.audit_rows("gateway_config.updated").await.is_empty());
}

#[tokio::test]
async fn client_ip_header_and_cdn_cidrs_round_trip_and_reach_the_proxies() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;

    // Before the first PUT: the defaults.
    let current = get_config(&app, &admin.key).await;
    assert_eq!(current["client_ip_header"], "x-forwarded-for", "{current}");
    assert_eq!(current["cdn_cidrs"], json!([]));

    let (status, put) = put_config(
        &app,
        &admin.key,
        json!({"ip_mode": "cdn", "trusted_cidrs": ["10.0.0.0/8"], "risk_reject_threshold": 0.8,
               "client_ip_header": "x-real-ip", "cdn_cidrs": ["192.0.2.7/24", "2001:db8:cd::1"]}),
    )
    .await;
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["client_ip_header"], "x-real-ip");
    assert_eq!(
        put["cdn_cidrs"],
        json!(["192.0.2.0/24", "2001:db8:cd::1/128"])
    );
    assert_eq!(get_config(&app, &admin.key).await, put);

    // Redis holds exactly what the proxies apply.
    let applied = GatewayConfig::from_json(&stored_config(&app).await.expect("in Redis"))
        .expect("valid for the proxy");
    assert_eq!(
        applied.client_ip_header,
        watchpost_common::ClientIpHeader::XRealIp
    );
    assert!(applied.is_cdn("192.0.2.200".parse().expect("ip")));
    assert!(!applied.is_cdn("10.0.0.1".parse().expect("ip")));

    // Versioned and audited like every other field.
    let rows = app.audit_rows("gateway_config.updated").await;
    assert_eq!(
        rows[0]["changes"]["client_ip_header"],
        json!({"before": "x-forwarded-for", "after": "x-real-ip"})
    );

    // A PUT without them goes back to the defaults (the body is the whole config).
    let (status, again) = put_config(
        &app,
        &admin.key,
        json!({"ip_mode": "proxy", "trusted_cidrs": ["10.0.0.0/8"], "risk_reject_threshold": 0.8}),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["client_ip_header"], "x-forwarded-for");
    assert_eq!(again["cdn_cidrs"], json!([]));
}

#[tokio::test]
async fn bad_client_ip_header_or_cdn_cidrs_are_400_listing_every_problem() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let (status, body) = put_config(
        &app,
        &admin.key,
        json!({"ip_mode": "cdn", "risk_reject_threshold": 0.5, "trusted_cidrs": ["bad-trusted"],
               "client_ip_header": "true-client-ip",
               "cdn_cidrs": ["192.0.2.0/24", "cdn.example", "198.51.100.0/33"]}),
    )
    .await;
    assert_error(status, &body, 400, "BAD_REQUEST");
    let message = body["error"]["message"].as_str().expect("message");
    for part in [
        "client_ip_header",
        "true-client-ip",
        "cdn_cidrs",
        "cdn.example",
        "198.51.100.0/33",
        "bad-trusted",
    ] {
        assert!(message.contains(part), "{part} missing from {message}");
    }
    assert!(!message.contains("192.0.2.0/24"), "{message}");

    for bad in [
        json!({"ip_mode": "proxy", "risk_reject_threshold": 0.5, "client_ip_header": "X-Forwarded-For"}),
        json!({"ip_mode": "proxy", "risk_reject_threshold": 0.5, "client_ip_header": ""}),
        json!({"ip_mode": "proxy", "risk_reject_threshold": 0.5, "client_ip_header": 7}),
        json!({"ip_mode": "proxy", "risk_reject_threshold": 0.5, "cdn_cidrs": "192.0.2.0/24"}),
        json!({"ip_mode": "proxy", "risk_reject_threshold": 0.5, "cdn_cidrs": [""]}),
    ] {
        let (status, body) = put_config(&app, &admin.key, bad.clone()).await;
        assert_error(status, &body, 400, "BAD_REQUEST");
    }
    assert_eq!(get_config(&app, &admin.key).await["version"], 0);
    assert_eq!(stored_config(&app).await, None);
}

#[tokio::test]
async fn versions_stored_before_the_new_fields_read_with_defaults() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let old = json!({"ip_mode": "cdn", "trusted_cidrs": ["10.0.0.0/8"], "risk_reject_threshold": 0.6,
                     "version": 1, "updated_at": "2026-11-20T10:00:00.000Z", "updated_by": admin.id});
    let db = app.db().await;
    db.execute("SELECT nextval('gateway_config_version_seq')", &[])
        .await
        .expect("take version 1");
    db.execute(
        "INSERT INTO gateway_config_versions (version, config, created_at, created_by) \
         VALUES (1, $1, now(), $2)",
        &[&old, &admin.id],
    )
    .await
    .expect("insert an old version");
    let current = get_config(&app, &admin.key).await;
    assert_eq!(current["version"], 1, "{current}");
    assert_eq!(current["client_ip_header"], "x-forwarded-for");
    assert_eq!(current["cdn_cidrs"], json!([]));
    // And a PUT based on it works as usual.
    let (status, body) = put_config(
        &app,
        &admin.key,
        json!({"ip_mode": "cdn", "risk_reject_threshold": 0.6, "cdn_cidrs": ["192.0.2.0/24"], "version": 1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn openapi_states_the_client_ip_header_choices() {
    let app = TestApp::spawn().await;
    let doc = app.openapi().await;
    for schema in ["GatewayConfigInput", "GatewayConfigView"] {
        let props = &doc["components"]["schemas"][schema]["properties"];
        assert_eq!(
            props["client_ip_header"]["enum"],
            json!(["x-forwarded-for", "forwarded", "x-real-ip"]),
            "{schema}: {props}"
        );
        assert_eq!(props["cdn_cidrs"]["type"], "array", "{schema}: {props}");
    }
    let required = &doc["components"]["schemas"]["GatewayConfigInput"]["required"];
    assert!(
        !required.as_array().is_some_and(|r| r
            .iter()
            .any(|f| f == "client_ip_header" || f == "cdn_cidrs")),
        "{required}"
    );
}

/// The version of the config Redis holds, if any.
async fn stored_version(app: &TestApp) -> Option<u64> {
    let json = stored_config(app).await?;
    Some(
        GatewayConfig::from_json(&json)
            .expect("valid config in Redis")
            .version,
    )
}

#[tokio::test]
async fn redis_is_repaired_when_it_lacks_the_current_version_or_holds_an_older_one() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let keys = Keys::new(app.key_prefix.clone());
    let mut con = redis_con(&app).await;

    let (status, first) = put_config(
        &app,
        &admin.key,
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.5}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let old_json = stored_config(&app).await.expect("written by the PUT");
    let (status, second) = put_config(
        &app,
        &admin.key,
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.6}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    let current = second["version"].as_u64().expect("version");
    assert_eq!(stored_version(&app).await, Some(current));

    let client = redis::Client::open(app.config.redis.url.as_str()).expect("url");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub
        .subscribe(keys.gateway_config_changed())
        .await
        .expect("subscribe");

    // A flushed Redis (here: the key deleted) gets the current version back, announced.
    let _: () = redis::cmd("DEL")
        .arg(keys.gateway_config())
        .query_async(&mut con)
        .await
        .expect("DEL");
    let announced: String = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        pubsub
            .on_message()
            .next()
            .await
            .expect("message")
            .get_payload()
            .expect("payload")
    })
    .await
    .expect("the repair is announced within a few seconds");
    assert_eq!(announced, current.to_string());
    assert_eq!(stored_version(&app).await, Some(current));
    let repaired =
        GatewayConfig::from_json(&stored_config(&app).await.expect("stored")).expect("valid");
    assert_eq!(repaired.risk_reject_threshold, 0.6);

    // An older version in Redis is replaced by the current one.
    let _: () = redis::cmd("SET")
        .arg(keys.gateway_config())
        .arg(&old_json)
        .query_async(&mut con)
        .await
        .expect("SET");
    let mut waited = 0;
    while stored_version(&app).await != Some(current) {
        assert!(waited < 750, "the older version was not replaced");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        waited += 1;
    }

    // A newer version in Redis (a PUT about to commit) is left alone.
    let newer = old_json.replace(
        &format!("\"version\":{}", first["version"]),
        &format!("\"version\":{}", current + 100),
    );
    assert_ne!(newer, old_json, "the version was rewritten");
    let _: () = redis::cmd("SET")
        .arg(keys.gateway_config())
        .arg(&newer)
        .query_async(&mut con)
        .await
        .expect("SET");
    let state = watchpost_admin::AppState::new(app.config.clone()).expect("state");
    let once = watchpost_admin::gateway_sync::sync_once(
        &state,
        &redis::Script::new(watchpost_admin::gateway_sync::REPAIR_SCRIPT),
    )
    .await
    .expect("sync");
    assert_eq!(
        once,
        watchpost_admin::gateway_sync::Synced::Current(current)
    );
    assert_eq!(stored_version(&app).await, Some(current + 100));
}

#[tokio::test]
async fn risk_settings_and_risk_mode_round_trip_versioned_audited_and_reach_redis() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;

    // Before the first PUT: no runtime risk settings (each proxy's file `[risk]`), enforcing.
    let current = get_config(&app, &admin.key).await;
    assert_eq!(current["risk"], Value::Null, "{current}");
    assert_eq!(current["risk_mode"], "enforce");

    let (status, put) = put_config(
        &app,
        &admin.key,
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.8, "risk_mode": "log_only",
               "risk": {"weights": {"ua_cli": 0.95}, "countries": ["kp"],
                        "denylist": ["203.0.113.9/24"], "rate_limit": 120, "rate_window_secs": 30,
                        "probe_paths": ["/secret-admin"]}}),
    )
    .await;
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["risk_mode"], "log_only");
    let risk = &put["risk"];
    assert_eq!(risk["weights"]["ua_cli"], 0.95, "{put}");
    // Fields left out take the built-in defaults.
    assert_eq!(risk["weights"]["ua_library"], 0.3, "{put}");
    assert_eq!(risk["allowlist"], json!([]));
    assert_eq!(risk["countries"], json!(["kp"]));
    assert_eq!(risk["rate_limit"], 120.0);
    assert_eq!(risk["rate_window_secs"], 30);
    assert_eq!(risk["probe_paths"], json!(["/secret-admin"]));
    assert_eq!(get_config(&app, &admin.key).await, put);

    // Redis holds what the proxies apply: the compiled engine included.
    let applied = GatewayConfig::from_json(&stored_config(&app).await.expect("in Redis"))
        .expect("valid for the proxy");
    assert_eq!(applied.risk_mode, watchpost_common::RiskMode::LogOnly);
    let engine = &applied
        .risk_engine
        .as_ref()
        .expect("risk engine compiled")
        .0;
    assert_eq!(engine.weights().ua_cli, 0.95);
    assert_eq!(engine.rate_window_secs(), 30);

    // Audited like every other field.
    let rows = app.audit_rows("gateway_config.updated").await;
    assert_eq!(
        rows[0]["changes"]["risk_mode"],
        json!({"before": "enforce", "after": "log_only"}),
        "{}",
        rows[0]
    );
    assert_eq!(rows[0]["changes"]["risk"]["before"], Value::Null);

    // The body is the whole config: without `risk` and `risk_mode`, the proxies go back to
    // their file's `[risk]`, enforcing.
    let (status, again) = put_config(
        &app,
        &admin.key,
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.8}),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["risk"], Value::Null);
    assert_eq!(again["risk_mode"], "enforce");
    assert!(again["version"].as_u64() > put["version"].as_u64());
    let applied =
        GatewayConfig::from_json(&stored_config(&app).await.expect("in Redis")).expect("valid");
    assert!(applied.risk_engine.is_none());
}

#[tokio::test]
async fn bad_risk_settings_are_400_listing_every_problem_and_change_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let (status, body) = put_config(
        &app,
        &admin.key,
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.8, "risk_mode": "trial",
               "risk": {"weights": {"ua_cli": 1.5, "country": -0.2},
                        "countries": ["DE", "Germany", "1X"],
                        "allowlist": ["10.0.0.0/8", "allow.example"],
                        "denylist": ["198.51.100.0/33"]}}),
    )
    .await;
    assert_error(status, &body, 400, "BAD_REQUEST");
    let message = body["error"]["message"].as_str().expect("message");
    for part in [
        "risk_mode",
        "trial",
        "weights.ua_cli",
        "1.5",
        "weights.country",
        "Germany",
        "1X",
        "allow.example",
        "198.51.100.0/33",
    ] {
        assert!(message.contains(part), "{part} missing from {message}");
    }
    assert!(!message.contains("10.0.0.0/8"), "{message}");

    for bad in [
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.5, "risk_mode": "LOG_ONLY"}),
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.5, "risk": {"rate_limit": 0}}),
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.5, "risk": {"rate_window_secs": 0}}),
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.5, "risk": {"rate_window_secs": -1}}),
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.5, "risk": {"rate_window_secs": 86401}}),
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.5, "risk": {"rate_window_secs": u64::MAX}}),
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.5, "risk": {"probe_paths": [""]}}),
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.5, "risk": {"weights": {"denylist": 0.5}}}),
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.5, "risk": {"colour": "red"}}),
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.5, "risk": "strict"}),
    ] {
        let (status, body) = put_config(&app, &admin.key, bad.clone()).await;
        assert_error(status, &body, 400, "BAD_REQUEST");
    }
    assert_eq!(get_config(&app, &admin.key).await["version"], 0);
    assert_eq!(stored_config(&app).await, None);
}

#[tokio::test]
async fn openapi_states_the_risk_settings_and_modes() {
    let app = TestApp::spawn().await;
    let doc = app.openapi().await;
    for schema in ["GatewayConfigInput", "GatewayConfigView"] {
        let props = &doc["components"]["schemas"][schema]["properties"];
        assert_eq!(
            props["risk_mode"]["enum"],
            json!(["enforce", "log_only"]),
            "{schema}: {props}"
        );
    }
    let weights = &doc["components"]["schemas"]["RiskWeights"]["properties"];
    assert_eq!(weights["ua_cli"]["minimum"], 0.0, "{weights}");
    assert_eq!(weights["ua_cli"]["maximum"], 1.0, "{weights}");
    let settings = &doc["components"]["schemas"]["RiskSettings"]["properties"];
    assert_eq!(settings["rate_window_secs"]["minimum"], 1.0, "{settings}");
    assert_eq!(
        settings["rate_window_secs"]["maximum"], 86400.0,
        "{settings}"
    );
}
