//! `/api/admin/gateway/rules` against real PostgreSQL and Redis: versioned with the gateway
//! config, audited, published inside the document the proxies read, and the access-log
//! `rule` filter.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{assert_error, json_of, TestAdmin, TestApp};
use futures::StreamExt;
use serde_json::{json, Value};
use watchpost_common::rules::is_rule_id;
use watchpost_common::{AccessLogEntry, GatewayConfig, Keys};

async fn redis_con(app: &TestApp) -> redis::aio::MultiplexedConnection {
    redis::Client::open(app.config.redis.url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must be reachable")
}

/// An app whose admin is not rate-limited by the many calls below.
async fn spawn_app() -> TestApp {
    TestApp::builder()
        .configure(|c| {
            c.admin.rate_limit_per_minute = 1_000_000;
            c.admin.rate_limit_per_hour = 1_000_000;
        })
        .spawn()
        .await
}

fn keys(app: &TestApp) -> Keys {
    Keys::new(app.key_prefix.clone())
}

/// The document the proxies read, raw.
async fn redis_doc(app: &TestApp) -> Option<String> {
    let mut con = redis_con(app).await;
    redis::cmd("GET")
        .arg(keys(app).gateway_config())
        .query_async(&mut con)
        .await
        .expect("GET")
}

/// The document the proxies read, validated as a proxy validates it.
async fn applied(app: &TestApp) -> GatewayConfig {
    GatewayConfig::from_json(&redis_doc(app).await.expect("a document in Redis"))
        .expect("valid for the proxies")
}

fn rule_ids(config: &GatewayConfig) -> Vec<String> {
    config.rules.iter().map(|r| r.id.clone()).collect()
}

async fn call(admin: &TestAdmin, rb: reqwest::RequestBuilder) -> (u16, Value) {
    json_of(rb.bearer_auth(&admin.key).send().await.expect("request")).await
}

async fn put_config(app: &TestApp, admin: &TestAdmin, body: Value) -> Value {
    let (status, body) = call(admin, app.put("/api/admin/gateway/config").json(&body)).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn create(app: &TestApp, admin: &TestAdmin, body: Value) -> (u16, Value) {
    call(admin, app.post("/api/admin/gateway/rules").json(&body)).await
}

async fn versions(app: &TestApp, admin: &TestAdmin) -> Vec<Value> {
    let (status, page) = call(
        admin,
        app.get("/api/admin/gateway/config/versions?limit=100"),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().expect("items").clone()
}

async fn count(app: &TestApp, table: &str) -> i64 {
    app.db()
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0)
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

#[tokio::test]
async fn rules_are_versioned_with_the_config_audited_and_published() {
    let app = spawn_app().await;
    let admin = app.create_admin().await;
    let config = put_config(
        &app,
        &admin,
        json!({"ip_mode": "proxy", "trusted_cidrs": ["10.0.0.0/8"], "risk_reject_threshold": 0.7}),
    )
    .await;
    let v1 = config["version"].as_u64().expect("version");

    let client = redis::Client::open(app.config.redis.url.as_str()).expect("url");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub
        .subscribe(keys(&app).gateway_config_changed())
        .await
        .expect("subscribe");

    // Create: normalised, at the next version of the one sequence, announced.
    let (status, block) = create(
        &app,
        &admin,
        json!({"action": "block", "match": {"cidrs": ["203.0.113.7/24"], "countries": ["ru"]},
               "expires_in": 3600, "reason": "credential stuffing"}),
    )
    .await;
    assert_eq!(status, 201, "{block}");
    let block_id = block["id"].as_str().expect("id").to_string();
    assert!(is_rule_id(&block_id), "{block_id}");
    assert_eq!(block["match"]["cidrs"], json!(["203.0.113.0/24"]));
    assert_eq!(block["match"]["countries"], json!(["RU"]));
    assert_eq!(block["rate"], Value::Null);
    assert_eq!(block["priority"], 0);
    assert_eq!(block["enabled"], true);
    assert_eq!(block["expired"], false);
    assert_eq!(block["created_by"], admin.id.as_str());
    assert_eq!(block["hits_last_hour"], 0);
    assert_eq!(block["last_hit_at"], Value::Null);
    let expires_at = block["expires_at"].as_str().expect("expires_at");
    let expires_at = chrono::DateTime::parse_from_rfc3339(expires_at).expect("RFC 3339");
    let in_an_hour = chrono::Utc::now() + chrono::Duration::seconds(3600);
    assert!((in_an_hour - expires_at.to_utc()).num_seconds().abs() < 120);
    let v2 = block["version"].as_u64().expect("version");
    assert!(v2 > v1, "{v2} after {v1}");

    let payload: String = tokio::time::timeout(Duration::from_secs(5), async {
        pubsub
            .on_message()
            .next()
            .await
            .expect("message")
            .get_payload()
            .expect("payload")
    })
    .await
    .expect("announced");
    assert_eq!(payload, v2.to_string());
    let doc = applied(&app).await;
    assert_eq!(doc.version, v2);
    assert_eq!(doc.risk_reject_threshold, 0.7, "the config is unchanged");
    assert_eq!(rule_ids(&doc), vec![block_id.clone()]);
    assert_eq!(
        doc.rules[0].expires_at_ms,
        Some(u64::try_from(expires_at.timestamp_millis()).expect("ms"))
    );

    // The config's version follows the rules'; the history says what each version changed,
    // and its documents carry no rules.
    let (_, current) = call(&admin, app.get("/api/admin/gateway/config")).await;
    assert_eq!(current["version"], v2);
    assert_eq!(current["ip_mode"], "proxy");
    let history = versions(&app, &admin).await;
    assert_eq!(history[0]["version"], v2);
    assert_eq!(
        history[0]["change"],
        format!("rule {block_id} created").as_str()
    );
    assert_eq!(history[0]["config"]["version"], v2);
    assert_eq!(history[1]["change"], "config updated");
    let stored: Value = app
        .db()
        .await
        .query_one(
            "SELECT config FROM gateway_config_versions WHERE version = $1",
            &[&i64::try_from(v2).expect("i64")],
        )
        .await
        .expect("row")
        .get(0);
    assert!(stored.get("rules").is_none(), "{stored}");

    // A second rule; the list is newest first and filters.
    let (status, limit) = create(
        &app,
        &admin,
        json!({"action": "rate_limit", "match": {"path_prefixes": ["/login"], "methods": ["post"]},
               "rate": {"requests": 5, "window_secs": 60}, "priority": -5, "reason": "slow down"}),
    )
    .await;
    assert_eq!(status, 201, "{limit}");
    let limit_id = limit["id"].as_str().expect("id").to_string();
    assert_eq!(limit["match"]["methods"], json!(["POST"]));
    assert_eq!(limit["rate"], json!({"requests": 5, "window_secs": 60}));
    assert_eq!(limit["expires_at"], Value::Null);
    let doc = applied(&app).await;
    assert_eq!(
        rule_ids(&doc),
        vec![limit_id.clone(), block_id.clone()],
        "published in priority order"
    );

    let (status, page) = call(&admin, app.get("/api/admin/gateway/rules")).await;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(ids, vec![limit_id.as_str(), block_id.as_str()]);
    let (_, page) = call(&admin, app.get("/api/admin/gateway/rules?limit=1")).await;
    assert_eq!(page["items"][0]["id"], limit_id.as_str());
    let cursor = page["next_cursor"].as_str().expect("cursor").to_string();
    let (_, page) = call(
        &admin,
        app.get(&format!("/api/admin/gateway/rules?limit=1&cursor={cursor}")),
    )
    .await;
    assert_eq!(page["items"][0]["id"], block_id.as_str());
    assert_eq!(page["next_cursor"], Value::Null);
    let (_, page) = call(&admin, app.get("/api/admin/gateway/rules?action=block")).await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["items"][0]["id"], block_id.as_str());
    let (_, page) = call(&admin, app.get("/api/admin/gateway/rules?enabled=false")).await;
    assert_eq!(page["items"], json!([]));

    // Hit counters come from the keys the proxies write: the last 60 minutes, summed.
    let k = keys(&app);
    let minute = now_ms() / 60_000;
    let last_hit = now_ms() - 5_000;
    let mut con = redis_con(&app).await;
    let () = redis::pipe()
        .set(k.rule_hits_in_minute(&block_id, minute), 3)
        .ignore()
        .set(k.rule_hits_in_minute(&block_id, minute - 30), 4)
        .ignore()
        .set(k.rule_hits_in_minute(&block_id, minute - 61), 100)
        .ignore()
        .set(k.rule_last_hit(&block_id), last_hit)
        .ignore()
        .query_async(&mut con)
        .await
        .expect("write counters");
    let (status, one) = call(
        &admin,
        app.get(&format!("/api/admin/gateway/rules/{block_id}")),
    )
    .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["hits_last_hour"], 7, "{one}");
    let seen = chrono::DateTime::parse_from_rfc3339(one["last_hit_at"].as_str().expect("set"))
        .expect("RFC 3339");
    assert_eq!(
        u64::try_from(seen.timestamp_millis()).expect("ms"),
        last_hit
    );
    let (_, page) = call(&admin, app.get("/api/admin/gateway/rules")).await;
    assert_eq!(page["items"][1]["hits_last_hour"], 7);
    assert_eq!(page["items"][0]["hits_last_hour"], 0);
    assert_eq!(page["items"][0]["last_hit_at"], Value::Null);

    // Disabling takes the rule out of the document; it stays listed.
    let (status, disabled) = call(
        &admin,
        app.patch(&format!("/api/admin/gateway/rules/{block_id}"))
            .json(&json!({"enabled": false, "expires_at": null, "reason": "paused"})),
    )
    .await;
    assert_eq!(status, 200, "{disabled}");
    assert_eq!(disabled["enabled"], false);
    assert_eq!(disabled["expires_at"], Value::Null);
    assert_eq!(disabled["reason"], "paused");
    assert_eq!(disabled["hits_last_hour"], 7);
    let v4 = disabled["version"].as_u64().expect("version");
    let doc = applied(&app).await;
    assert_eq!(doc.version, v4);
    assert_eq!(rule_ids(&doc), vec![limit_id.clone()]);
    let updated = app.audit_rows("gateway_rule.updated").await;
    assert_eq!(updated.len(), 1, "{updated:?}");
    assert_eq!(updated[0]["resource_id"], block_id.as_str());
    assert_eq!(
        updated[0]["changes"]["enabled"],
        json!({"before": true, "after": false})
    );
    assert_eq!(updated[0]["changes"]["reason"]["after"], "paused");
    assert!(updated[0]["changes"].get("hits_last_hour").is_none());

    // A PATCH that changes nothing makes no version.
    let (status, same) = call(
        &admin,
        app.patch(&format!("/api/admin/gateway/rules/{block_id}"))
            .json(&json!({"enabled": false})),
    )
    .await;
    assert_eq!(status, 200, "{same}");
    assert_eq!(same["version"], v4);
    assert_eq!(applied(&app).await.version, v4);

    // A config PUT keeps the rules in the document.
    let config = put_config(
        &app,
        &admin,
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.9}),
    )
    .await;
    let v5 = config["version"].as_u64().expect("version");
    assert!(v5 > v4);
    let doc = applied(&app).await;
    assert_eq!(doc.version, v5);
    assert_eq!(doc.risk_reject_threshold, 0.9);
    assert_eq!(rule_ids(&doc), vec![limit_id.clone()]);

    // Re-enabling publishes it again, under the new config.
    let (status, enabled) = call(
        &admin,
        app.patch(&format!("/api/admin/gateway/rules/{block_id}"))
            .json(&json!({"enabled": true, "priority": -10})),
    )
    .await;
    assert_eq!(status, 200, "{enabled}");
    let doc = applied(&app).await;
    assert_eq!(doc.risk_reject_threshold, 0.9);
    assert_eq!(rule_ids(&doc), vec![block_id.clone(), limit_id.clone()]);

    // Delete: 204, gone from the document and the API, audited, in the history; its
    // last-hit key (which has no TTL) goes with it.
    let () = redis::cmd("SET")
        .arg(k.rule_last_hit(&limit_id))
        .arg(last_hit)
        .query_async(&mut con)
        .await
        .expect("write last hit");
    let response = app
        .delete(&format!("/api/admin/gateway/rules/{limit_id}"))
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 204);
    let doc = applied(&app).await;
    assert_eq!(rule_ids(&doc), vec![block_id.clone()]);
    let exists: bool = redis::cmd("EXISTS")
        .arg(k.rule_last_hit(&limit_id))
        .query_async(&mut con)
        .await
        .expect("exists");
    assert!(!exists, "the deleted rule's last-hit key is removed");
    let (status, body) = call(
        &admin,
        app.get(&format!("/api/admin/gateway/rules/{limit_id}")),
    )
    .await;
    assert_error(status, &body, 404, "NOT_FOUND");
    let deleted = app.audit_rows("gateway_rule.deleted").await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["resource_id"], limit_id.as_str());
    assert_eq!(
        deleted[0]["changes"]["action"],
        json!({"before": "rate_limit", "after": null})
    );
    let history = versions(&app, &admin).await;
    assert_eq!(
        history[0]["change"],
        format!("rule {limit_id} deleted").as_str()
    );
    assert_eq!(history[0]["version"], doc.version);
    let created = app.audit_rows("gateway_rule.created").await;
    assert_eq!(created.len(), 2);
    assert_eq!(created[0]["resource_type"], "gateway_rule");
    assert_eq!(
        created[0]["changes"]["match"]["after"]["cidrs"],
        json!(["203.0.113.0/24"])
    );
    // Every version row but the first PUT's came with exactly one audit row.
    assert_eq!(
        count(&app, "gateway_config_versions").await,
        2 + 2 + 2 + 1,
        "two PUTs, two creations, two effective PATCHes, one deletion"
    );

    // The admin metrics show the published version and its rule count.
    let text = app
        .get("/metrics")
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    let sample = |name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    assert_eq!(sample("watchpost_admin_gateway_rules"), Some(1.0), "{text}");
    assert_eq!(
        sample("watchpost_admin_gateway_config_version"),
        Some(doc.version as f64),
        "{text}"
    );

    // The start-up / periodic re-sync writes the rules too.
    let () = redis::cmd("DEL")
        .arg(k.gateway_config())
        .query_async(&mut con)
        .await
        .expect("DEL");
    let state = watchpost_admin::AppState::new(app.config.clone()).expect("state");
    watchpost_admin::gateway_sync::sync_once(
        &state,
        &redis::Script::new(watchpost_admin::gateway_sync::REPAIR_SCRIPT),
    )
    .await
    .expect("sync");
    assert_eq!(rule_ids(&applied(&app).await), vec![block_id.clone()]);
}

#[tokio::test]
async fn expired_rules_leave_the_document_at_the_next_write() {
    let app = spawn_app().await;
    let admin = app.create_admin().await;
    put_config(
        &app,
        &admin,
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.8}),
    )
    .await;
    let (status, rule) = create(
        &app,
        &admin,
        json!({"action": "log_only", "match": {"ua_types": ["cli"]}, "expires_in": 1, "reason": "trial"}),
    )
    .await;
    assert_eq!(status, 201, "{rule}");
    let id = rule["id"].as_str().expect("id").to_string();
    let doc = applied(&app).await;
    assert_eq!(rule_ids(&doc), vec![id.clone()]);
    // The proxies stop applying it at expires_at_ms on their own.
    let expires = doc.rules[0].expires_at_ms.expect("expiry");
    assert!(doc.rules[0].is_live(expires - 1));
    assert!(!doc.rules[0].is_live(expires));
    // Once it has expired, the API says so and the next document leaves it out.
    let mut polls = 0;
    loop {
        let (_, now) = call(&admin, app.get(&format!("/api/admin/gateway/rules/{id}"))).await;
        if now["expired"] == true {
            break;
        }
        polls += 1;
        assert!(polls < 300, "never expired: {now}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    put_config(
        &app,
        &admin,
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.7}),
    )
    .await;
    assert!(applied(&app).await.rules.is_empty());
}

#[tokio::test]
async fn invalid_rules_are_400_listing_every_problem_and_change_nothing() {
    let app = spawn_app().await;
    let admin = app.create_admin().await;

    // Before any config is stored there is nothing to publish the rule in.
    let valid = json!({"action": "block", "match": {"cidrs": ["192.0.2.0/24"]}, "reason": "x"});
    let (status, body) = create(&app, &admin, valid.clone()).await;
    assert_error(status, &body, 409, "CONFLICT");
    assert_eq!(redis_doc(&app).await, None);
    assert_eq!(count(&app, "gateway_rules").await, 0);

    put_config(
        &app,
        &admin,
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.8}),
    )
    .await;
    let (status, existing) = create(&app, &admin, valid.clone()).await;
    assert_eq!(status, 201, "{existing}");
    let id = existing["id"].as_str().expect("id").to_string();
    let before_doc = redis_doc(&app).await.expect("doc");
    let before_versions = count(&app, "gateway_config_versions").await;
    let before_audit = count(&app, "audit_log").await;

    let (status, body) = create(
        &app,
        &admin,
        json!({"action": "block",
               "match": {"cidrs": ["10.0.0.0/8", "nope", "1.2.3.4/33"], "countries": ["DE", "ZZ"],
                         "ua_types": ["robot"], "path_prefixes": ["no-slash"]},
               "rate": {"requests": 1, "window_secs": 1},
               "expires_in": 60, "expires_at": "2999-01-01T00:00:00Z", "reason": "r"}),
    )
    .await;
    assert_error(status, &body, 400, "BAD_REQUEST");
    let message = body["error"]["message"].as_str().expect("message");
    for part in [
        "nope",
        "1.2.3.4/33",
        "ZZ",
        "robot",
        "no-slash",
        "rate is only allowed",
        "not both",
    ] {
        assert!(message.contains(part), "{part} missing from {message}");
    }
    assert!(!message.contains("10.0.0.0/8"), "{message}");
    assert!(!message.contains("\"DE\""), "{message}");

    let nul_reason =
        json!({"action": "block", "match": {"cidrs": ["192.0.2.0/24"]}, "reason": "a\u{0}b"});
    let nul_cidr =
        json!({"action": "block", "match": {"cidrs": ["192.0.2.0/24\u{0}"]}, "reason": "x"});
    for bad in [
        json!({"action": "nuke", "match": {"cidrs": ["192.0.2.0/24"]}, "reason": "x"}),
        json!({"action": "block", "match": {}, "reason": "x"}),
        json!({"action": "block", "match": {"cidrs": ["192.0.2.0/24"]}, "reason": " "}),
        json!({"action": "block", "match": {"cidrs": ["192.0.2.0/24"]}}),
        json!({"action": "block", "reason": "x"}),
        json!({"action": "rate_limit", "match": {"cidrs": ["192.0.2.0/24"]}, "reason": "x"}),
        json!({"action": "rate_limit", "match": {"cidrs": ["192.0.2.0/24"]}, "reason": "x",
               "rate": {"requests": 0, "window_secs": 100000}}),
        json!({"action": "block", "match": {"cidrs": ["192.0.2.0/24"]}, "reason": "x", "expires_in": 0}),
        json!({"action": "block", "match": {"cidrs": ["192.0.2.0/24"]}, "reason": "x", "expires_in": -5}),
        json!({"action": "block", "match": {"cidrs": ["192.0.2.0/24"]}, "reason": "x",
               "expires_at": "2000-01-01T00:00:00Z"}),
        json!({"action": "block", "match": {"cidrs": ["192.0.2.0/24"]}, "reason": "x",
               "expires_at": "tomorrow"}),
        json!({"action": "block", "match": {"cidrs": "192.0.2.0/24"}, "reason": "x"}),
        json!({"action": 1, "match": {"cidrs": ["192.0.2.0/24"]}, "reason": "x"}),
        json!({"action": "block", "match": {"cidrs": ["192.0.2.0/24"], "asn": [1]}, "reason": "x"}),
        json!({"action": "block", "match": {"cidrs": ["192.0.2.0/24"]}, "reason": "x", "id": id}),
        json!({"action": "block", "match": {"cidrs": ["192.0.2.0/24"]}, "reason": "x",
               "priority": 3_000_000_000u64}),
        json!({"action": "block", "match": {"hosts": ["bad host"]}, "reason": "x"}),
        json!({"action": "block", "match": {"methods": ["GE T"]}, "reason": "x"}),
        json!({"action": "block", "match": {"cidrs": ["192.0.2.0/24"]}, "reason": "x".repeat(501)}),
        nul_reason,
        nul_cidr,
    ] {
        let (status, body) = create(&app, &admin, bad.clone()).await;
        assert_error(status, &body, 400, "BAD_REQUEST");
    }
    for bad in [
        json!({"match": {"cidrs": ["bad"]}}),
        json!({"action": "rate_limit"}),
        json!({"rate": {"requests": 5, "window_secs": 5}}),
        json!({"expires_in": 10, "expires_at": null}),
        json!({"expires_at": "2001-01-01T00:00:00Z"}),
        json!({"enabled": "yes"}),
        json!({"reason": ""}),
        json!({"reason": "a\u{0}"}),
        json!({"colour": "red"}),
    ] {
        let (status, body) = call(
            &admin,
            app.patch(&format!("/api/admin/gateway/rules/{id}"))
                .json(&bad),
        )
        .await;
        assert_error(status, &body, 400, "BAD_REQUEST");
    }
    // Ids: malformed 400, unknown 404, on every method.
    let unknown = "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0C";
    for path in [
        "nope",
        "rul_01jdx3q7z5r8kx4w2m9t6v1b0c",
        "usr_01JDX3Q7Z5R8KX4W2M9T6V1B0C",
    ] {
        let url = format!("/api/admin/gateway/rules/{path}");
        for rb in [
            app.get(&url),
            app.patch(&url).json(&json!({"enabled": false})),
            app.delete(&url),
        ] {
            let (status, body) = call(&admin, rb).await;
            assert_error(status, &body, 400, "BAD_REQUEST");
        }
    }
    let url = format!("/api/admin/gateway/rules/{unknown}");
    for rb in [
        app.get(&url),
        app.patch(&url).json(&json!({"enabled": false})),
        app.delete(&url),
    ] {
        let (status, body) = call(&admin, rb).await;
        assert_error(status, &body, 404, "NOT_FOUND");
    }
    for q in [
        "limit=0",
        "limit=101",
        "cursor=abc",
        "action=nuke",
        "enabled=maybe",
        "other=1",
    ] {
        let (status, body) = call(&admin, app.get(&format!("/api/admin/gateway/rules?{q}"))).await;
        assert_error(status, &body, 400, "BAD_REQUEST");
    }

    // Nothing changed: no version, no audit row, the same document, the same rule.
    assert_eq!(redis_doc(&app).await.as_deref(), Some(before_doc.as_str()));
    assert_eq!(
        count(&app, "gateway_config_versions").await,
        before_versions
    );
    assert_eq!(count(&app, "audit_log").await, before_audit);
    assert_eq!(count(&app, "gateway_rules").await, 1);
    let (_, now) = call(&admin, app.get(&url.replace(unknown, &id))).await;
    assert_eq!(now["version"], existing["version"]);
    assert_eq!(now["enabled"], true);
}

#[tokio::test]
async fn redis_down_answers_503_and_changes_nothing() {
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
    // A stored config (PUT cannot succeed without Redis).
    let db = app.db().await;
    db.execute("SELECT nextval('gateway_config_version_seq')", &[])
        .await
        .expect("take version 1");
    db.execute(
        "INSERT INTO gateway_config_versions (version, config, created_at, created_by, change) \
         VALUES (1, $1, now(), $2, 'config updated')",
        &[
            &json!({"ip_mode": "direct", "risk_reject_threshold": 0.8, "version": 1}),
            &admin.id,
        ],
    )
    .await
    .expect("insert a version");
    let (status, body) = create(
        &app,
        &admin,
        json!({"action": "block", "match": {"cidrs": ["192.0.2.0/24"]}, "reason": "x"}),
    )
    .await;
    assert_error(status, &body, 503, "UNAVAILABLE");
    assert_eq!(count(&app, "gateway_rules").await, 0);
    assert_eq!(count(&app, "gateway_config_versions").await, 1);
    assert!(app.audit_rows("gateway_rule.created").await.is_empty());

    // An existing rule (inserted directly) is neither changed nor deleted.
    let id = "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0C";
    db.execute(
        "INSERT INTO gateway_rules (id, action, match, priority, enabled, reason, version) \
         VALUES ($1, 'block', '{\"cidrs\": [\"192.0.2.0/24\"]}', 0, true, 'x', 1)",
        &[&id],
    )
    .await
    .expect("insert a rule");
    let url = format!("/api/admin/gateway/rules/{id}");
    let (status, body) = call(&admin, app.patch(&url).json(&json!({"enabled": false}))).await;
    assert_error(status, &body, 503, "UNAVAILABLE");
    let (status, body) = call(&admin, app.delete(&url)).await;
    assert_error(status, &body, 503, "UNAVAILABLE");
    let enabled: bool = db
        .query_one("SELECT enabled FROM gateway_rules WHERE id = $1", &[&id])
        .await
        .expect("still there")
        .get(0);
    assert!(enabled);
    assert_eq!(count(&app, "gateway_config_versions").await, 1);
    assert!(app.audit_rows("gateway_rule.updated").await.is_empty());
    assert!(app.audit_rows("gateway_rule.deleted").await.is_empty());
    // Reading still works, without counters.
    let (status, one) = call(&admin, app.get(&url)).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["hits_last_hour"], Value::Null);
}

#[tokio::test]
async fn only_platform_admins_may_manage_rules() {
    let app = spawn_app().await;
    let user = app.create_user().await;
    let url = "/api/admin/gateway/rules/rul_01JDX3Q7Z5R8KX4W2M9T6V1B0C";
    let body = json!({"action": "block", "match": {"cidrs": ["192.0.2.0/24"]}, "reason": "x"});
    for (token, want, code) in [
        (None, 401, "UNAUTHORIZED"),
        (Some(user.token.as_str()), 403, "FORBIDDEN"),
    ] {
        for rb in [
            app.post("/api/admin/gateway/rules").json(&body),
            app.get("/api/admin/gateway/rules"),
            app.get(url),
            app.patch(url).json(&json!({"enabled": false})),
            app.delete(url),
        ] {
            let rb = match token {
                Some(t) => rb.bearer_auth(t),
                None => rb,
            };
            let (status, body) = json_of(rb.send().await.expect("request")).await;
            assert_error(status, &body, want, code);
        }
    }
    assert_eq!(count(&app, "gateway_rules").await, 0);
}

#[tokio::test]
async fn the_access_log_filters_on_the_deciding_rule() {
    let app = spawn_app().await;
    let admin = app.create_admin().await;
    let rule = "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0C";
    let other = "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0D";
    let key = keys(&app).access_stream();
    let mut con = redis_con(&app).await;
    let mut pipe = redis::pipe();
    for i in 0..30u64 {
        let e = AccessLogEntry {
            ts: 1_000 + i,
            method: "GET".into(),
            path: format!("/p/{i}"),
            ip: "192.0.2.1".into(),
            status: 200,
            rule: match i % 3 {
                0 => rule.into(),
                1 => other.into(),
                _ => String::new(),
            },
            ..Default::default()
        };
        crate::common::xadd_indexed(&mut pipe, &keys(&app), &format!("{}-0", 1_000 + i), &e);
    }
    let () = pipe.query_async(&mut con).await.expect("XADD");

    let (status, page) = call(
        &admin,
        app.get(&format!("/api/admin/access-log?rule={rule}&limit=500")),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 10, "{page}");
    assert!(items.iter().all(|i| i["rule"] == rule), "{page}");
    let (_, all) = call(&admin, app.get("/api/admin/access-log?limit=500")).await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(30));

    for bad in [
        "nope",
        "rul_",
        "rul_01jdx3q7z5r8kx4w2m9t6v1b0c",
        "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0C%00",
    ] {
        for path in ["/api/admin/access-log", "/api/admin/access-log/tail"] {
            let (status, body) = call(&admin, app.get(&format!("{path}?rule={bad}"))).await;
            assert_error(status, &body, 400, "BAD_REQUEST");
        }
    }
    // The tail takes the filter: an entry of the rule arrives, one of another rule does not.
    let response = app
        .get(&format!(
            "/api/admin/access-log/tail?rule={rule}&since=1029-0"
        ))
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("tail");
    assert_eq!(response.status().as_u16(), 200);
    for (id, r) in [("2000-0", other), ("2001-0", rule)] {
        let e = AccessLogEntry {
            ts: 2_000,
            path: "/tail".into(),
            rule: r.into(),
            ..Default::default()
        };
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&key).arg(id);
        for (k, v) in e.to_fields() {
            cmd.arg(k).arg(v);
        }
        let _: String = cmd.query_async(&mut con).await.expect("XADD");
    }
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !text.contains("id: 2001-0") {
            let chunk = stream.next().await.expect("open").expect("chunk");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the matching entry arrives");
    assert!(!text.contains("2000-0"), "{text}");
}

#[tokio::test]
async fn openapi_documents_the_rule_endpoints_and_constraints() {
    let app = spawn_app().await;
    let doc = app.openapi().await;
    let paths = &doc["paths"];
    for (path, methods) in [
        ("/api/admin/gateway/rules", &["get", "post"][..]),
        (
            "/api/admin/gateway/rules/{id}",
            &["get", "patch", "delete"][..],
        ),
    ] {
        for m in methods {
            assert!(paths[path][m].is_object(), "{path} {m}");
        }
    }
    assert!(paths["/api/admin/gateway/rules"]["post"]["responses"]["409"].is_object());
    assert!(paths["/api/admin/gateway/rules"]["post"]["responses"]["201"].is_object());
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["CreateRuleInput"]["properties"]["action"]["enum"],
        json!(["block", "allow", "rate_limit", "log_only"])
    );
    assert_eq!(
        schemas["RuleRateBody"]["properties"]["window_secs"]["maximum"],
        86400
    );
    assert_eq!(
        schemas["RuleMatchBody"]["properties"]["cidrs"]["maxItems"],
        10000
    );
    assert!(schemas["GatewayConfigVersion"]["properties"]["change"].is_object());
    let params = paths["/api/admin/access-log"]["get"]["parameters"]
        .as_array()
        .expect("parameters");
    assert!(params.iter().any(|p| p["name"] == "rule"));
}

#[tokio::test]
async fn more_than_max_rules_live_is_409_and_changes_nothing() {
    let app = spawn_app().await;
    let admin = app.create_admin().await;
    let config = put_config(
        &app,
        &admin,
        json!({"ip_mode": "direct", "risk_reject_threshold": 0.8}),
    )
    .await;
    let version = i64::try_from(config["version"].as_u64().expect("version")).expect("i64");
    // MAX_RULES live rules, stored directly (valid ids: `rul_` and 26 digits).
    let inserted = app
        .db()
        .await
        .execute(
            "INSERT INTO gateway_rules (id, action, match, priority, enabled, reason, version) \
             SELECT 'rul_' || lpad(n::text, 26, '0'), 'block', \
                    jsonb_build_object('cidrs', jsonb_build_array('10.0.0.' || (n % 250))), \
                    0, true, 'bulk', $1 \
             FROM generate_series(1, $2::int) AS n",
            &[
                &version,
                &i32::try_from(watchpost_common::rules::MAX_RULES).expect("i32"),
            ],
        )
        .await
        .expect("insert");
    assert_eq!(
        inserted,
        u64::try_from(watchpost_common::rules::MAX_RULES).expect("u64")
    );
    let before_doc = redis_doc(&app).await.expect("doc");
    let before_versions = count(&app, "gateway_config_versions").await;
    let (status, body) = create(
        &app,
        &admin,
        json!({"action": "block", "match": {"cidrs": ["192.0.2.0/24"]}, "reason": "one more"}),
    )
    .await;
    assert_error(status, &body, 409, "CONFLICT");
    assert_eq!(redis_doc(&app).await.as_deref(), Some(before_doc.as_str()));
    assert_eq!(
        count(&app, "gateway_config_versions").await,
        before_versions
    );
    assert!(app.audit_rows("gateway_rule.created").await.is_empty());
    // A disabled rule does not count: disabling one makes room.
    let (status, body) = call(
        &admin,
        app.patch(&format!("/api/admin/gateway/rules/rul_{:0>26}", 7))
            .json(&json!({"enabled": false})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = create(
        &app,
        &admin,
        json!({"action": "block", "match": {"cidrs": ["192.0.2.0/24"]}, "reason": "one more"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        applied(&app).await.rules.len(),
        watchpost_common::rules::MAX_RULES
    );
}
