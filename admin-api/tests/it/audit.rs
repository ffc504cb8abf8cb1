//! The audit log (rows, append-only, hash chain, listing), the auth config, and the admin
//! rate limits.

use crate::common::{
    assert_error, json_of, seed_member, seed_org, short_id, TestAdmin, TestApp, PASSWORD,
};
use serde_json::{json, Value};

async fn patch_config(app: &TestApp, admin: &TestAdmin, body: Value) -> (u16, Value) {
    json_of(
        app.patch("/api/admin/config")
            .bearer_auth(&admin.key)
            .header("user-agent", "audit-test/1")
            .header("x-request-id", "req-patch-1")
            .json(&body)
            .send()
            .await
            .expect("request"),
    )
    .await
}

async fn get_json(app: &TestApp, admin: &TestAdmin, path: &str) -> (u16, Value) {
    json_of(
        app.get(path)
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("request"),
    )
    .await
}

#[tokio::test]
async fn auth_config_get_and_patch_are_validated_and_audited() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let (s, cfg) = get_json(&app, &admin, "/api/admin/config").await;
    assert_eq!(s, 200, "{cfg}");
    assert_eq!(cfg["password_min_length"], 12);
    assert_eq!(cfg["session_duration"], "14d");
    assert_eq!(cfg["session_duration_secs"], 1_209_600);
    assert_eq!(cfg["mfa_required"], false);
    assert_eq!(cfg["registration_requires_invitation"], false);

    for bad in [
        json!({"password_min_length": 7}),
        json!({"password_min_length": 129}),
        json!({"session_duration": "1w"}),
        json!({"session_duration": "2m"}),
        json!({"session_duration": -5}),
        json!({"mfa_required": "yes"}),
        json!({"colour": "blue"}),
        json!({"password_min_length": 20, "session_duration": "forever"}),
    ] {
        let (s, b) = patch_config(&app, &admin, bad.clone()).await;
        assert_error(s, &b, 400, "BAD_REQUEST");
    }
    // Refused patches changed nothing and wrote nothing.
    assert_eq!(
        get_json(&app, &admin, "/api/admin/config").await.1["password_min_length"],
        12
    );
    assert!(app.audit_rows("auth_config.updated").await.is_empty());

    let (s, cfg) = patch_config(
        &app,
        &admin,
        json!({"password_min_length": 16, "session_duration": "12h"}),
    )
    .await;
    assert_eq!(s, 200, "{cfg}");
    assert_eq!(cfg["password_min_length"], 16);
    assert_eq!(cfg["session_duration"], "12h");
    let (_, cfg) = patch_config(&app, &admin, json!({"session_duration": 5400})).await;
    assert_eq!(cfg["session_duration"], "90m");

    let rows = app.audit_rows("auth_config.updated").await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["actor_id"], admin.id.as_str());
    assert_eq!(rows[0]["resource_type"], "auth_config");
    assert_eq!(rows[0]["user_agent"], "audit-test/1");
    assert_eq!(rows[0]["request_id"], "req-patch-1");
    assert_eq!(rows[0]["ip"], "127.0.0.1");
    assert_eq!(
        rows[0]["changes"]["password_min_length"],
        json!({"before": 12, "after": 16})
    );
    assert_eq!(
        rows[0]["changes"]["session_duration"],
        json!({"before": "14d", "after": "12h"})
    );
    assert!(rows[0]["changes"].get("mfa_required").is_none());

    // A patch that changes nothing writes no audit row.
    let (s, _) = patch_config(&app, &admin, json!({"password_min_length": 16})).await;
    assert_eq!(s, 200);
    assert_eq!(app.audit_rows("auth_config.updated").await.len(), 2);
}

#[tokio::test]
async fn auth_config_is_enforced_by_registration() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    patch_config(
        &app,
        &admin,
        json!({"password_min_length": 40, "session_duration": "30m"}),
    )
    .await;
    let register = |body: Value| {
        let app = &app;
        async move {
            json_of(
                app.post("/api/auth/register")
                    .json(&body)
                    .send()
                    .await
                    .expect("request"),
            )
            .await
        }
    };
    let (s, b) = register(json!({"email": "a@example.com", "username": "aaa",
                                 "password": PASSWORD}))
    .await;
    assert_error(s, &b, 422, "UNPROCESSABLE");
    let long = "x".repeat(40);
    let (s, b) =
        register(json!({"email": "a@example.com", "username": "aaa", "password": long})).await;
    assert_eq!(s, 201, "{b}");
    let expires = chrono::DateTime::parse_from_rfc3339(b["expires_at"].as_str().expect("time"))
        .expect("rfc3339");
    let minutes = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_minutes();
    assert!((28..=30).contains(&minutes), "session lasts {minutes} min");

    patch_config(
        &app,
        &admin,
        json!({"registration_requires_invitation": true}),
    )
    .await;
    let (s, b) =
        register(json!({"email": "b@example.com", "username": "bbb", "password": long})).await;
    assert_error(s, &b, 422, "UNPROCESSABLE");
    assert_eq!(b["error"]["message"], "an invitation code is required");
}

#[tokio::test]
async fn registration_and_create_admin_are_audited() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let user = app.create_user().await;
    let rows = app.audit_rows("user.registered").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["actor_id"], user.id.as_str());
    assert_eq!(rows[0]["resource_id"], user.id.as_str());
    assert_eq!(
        rows[0]["changes"]["email"],
        json!({"before": null, "after": user.email})
    );
    assert!(rows[0]["changes"].get("password_hash").is_none());
    assert!(rows[0]["request_id"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));

    let created = app.audit_rows("user.created").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["resource_id"], admin.id.as_str());
    assert_eq!(created[0]["actor_id"], Value::Null);
    assert_eq!(app.audit_rows("api_key.created").await.len(), 1);

    // Promoting an existing user is an update.
    watchpost_admin::cli::create_admin(&app.pool, &user.email, None)
        .await
        .expect("promote");
    let updated = app.audit_rows("user.updated").await;
    assert_eq!(updated.len(), 1);
    assert_eq!(
        updated[0]["changes"],
        json!({"role": {"before": "user", "after": "platform_admin"}})
    );
}

#[tokio::test]
async fn audit_log_refuses_update_and_delete() {
    let app = TestApp::spawn().await;
    app.create_admin().await;
    let conn = app.db().await;
    for sql in [
        "UPDATE audit_log SET action = 'x'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let err = conn.batch_execute(sql).await.expect_err(sql);
        assert!(
            err.to_string().contains("append-only") || format!("{err:?}").contains("append-only"),
            "{sql}: {err:?}"
        );
    }
    let count: i64 = conn
        .query_one("SELECT count(*) FROM audit_log", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 2);
}

#[tokio::test]
async fn verify_detects_tampering() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    for n in [20, 21, 22] {
        patch_config(&app, &admin, json!({"password_min_length": n})).await;
    }
    let (s, v) = get_json(&app, &admin, "/api/admin/audit-logs/verify").await;
    assert_eq!(s, 200);
    assert_eq!(v, json!({"ok": true, "checked": 5, "first_bad_id": null}));

    // The table owner can bypass the trigger; the chain still shows it.
    let target = app.audit_rows("auth_config.updated").await[1]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let conn = app.db().await;
    conn.batch_execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        .await
        .expect("disable trigger");
    conn.execute(
        "UPDATE audit_log SET changes = '{}'::jsonb WHERE id = $1",
        &[&target],
    )
    .await
    .expect("tamper");
    conn.batch_execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
        .await
        .expect("enable trigger");
    let (_, v) = get_json(&app, &admin, "/api/admin/audit-logs/verify").await;
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_bad_id"], target.as_str());
    assert_eq!(v["checked"], 4);
}

#[tokio::test]
async fn concurrent_writers_keep_one_chain() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let mut tasks = Vec::new();
    for n in 0..12 {
        let (client, url, key) = (
            app.client.clone(),
            app.url("/api/admin/config"),
            admin.key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            client
                .patch(url)
                .bearer_auth(key)
                .json(&json!({"password_min_length": 20 + n}))
                .send()
                .await
                .expect("request")
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
    let (_, v) = get_json(&app, &admin, "/api/admin/audit-logs/verify").await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["checked"], 14);
}

#[tokio::test]
async fn audit_logs_filter_and_page_without_gaps() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    for n in 0..5 {
        patch_config(&app, &admin, json!({"password_min_length": 20 + n})).await;
    }
    let (s, page) = get_json(
        &app,
        &admin,
        "/api/admin/audit-logs?action=auth_config.updated",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(5));
    assert_eq!(page["next_cursor"], Value::Null);
    // Newest first.
    assert_eq!(
        page["items"][0]["changes"]["password_min_length"]["after"],
        24
    );

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/api/admin/audit-logs?limit=2".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        // A row written between pages is newer than the cursor and never shows up later.
        patch_config(&app, &admin, json!({"mfa_required": seen.len() % 2 == 0})).await;
        let (s, page) = get_json(&app, &admin, &path).await;
        assert_eq!(s, 200, "{page}");
        for item in page["items"].as_array().expect("items") {
            seen.push(item["id"].as_str().expect("id").to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "a row was repeated");
    // 7 rows existed before the walk (user, key, 5 patches) plus the patch written just
    // before the first page; later ones are newer than every cursor.
    assert_eq!(seen.len(), 8, "rows were skipped or repeated");

    let (_, by_actor) = get_json(
        &app,
        &admin,
        &format!(
            "/api/admin/audit-logs?actor_id={}&resource_type=auth_config",
            admin.id
        ),
    )
    .await;
    assert!(by_actor["items"]
        .as_array()
        .expect("items")
        .iter()
        .all(|i| i["actor_id"] == admin.id.as_str() && i["resource_type"] == "auth_config"));
    let (_, future) = get_json(
        &app,
        &admin,
        "/api/admin/audit-logs?from=2999-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(future["items"], json!([]));
    let (_, past) = get_json(
        &app,
        &admin,
        "/api/admin/audit-logs?to=2000-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(past["items"], json!([]));
}

#[tokio::test]
async fn rate_limit_answers_429_with_headers() {
    let app = TestApp::builder()
        .configure(|c| {
            c.admin.rate_limit_per_minute = 3;
            c.admin.rate_limit_per_hour = 100;
        })
        .spawn()
        .await;
    let admin = app.create_admin().await;
    let other = app.create_admin().await;
    // The windows are fixed minutes: start early in one so that all requests share it.
    let second = chrono::Utc::now().timestamp() % 60;
    if second >= 50 {
        let wait = u64::try_from(61 - second).unwrap_or(11);
        tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    }
    for expected_remaining in ["2", "1", "0"] {
        let response = app
            .get("/api/admin/config")
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["ratelimit-limit"], "3");
        assert_eq!(
            response.headers()["ratelimit-remaining"],
            expected_remaining
        );
        assert!(response.headers().contains_key("ratelimit-reset"));
    }
    let response = app
        .get("/api/admin/config")
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("request");
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("header")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after));
    assert_eq!(response.headers()["ratelimit-remaining"], "0");
    let (s, b) = json_of(response).await;
    assert_error(s, &b, 429, "RATE_LIMITED");
    // Limits are per admin.
    let response = app
        .get("/api/admin/config")
        .bearer_auth(&other.key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn rate_limiter_fails_open_when_redis_is_down() {
    let app = TestApp::builder()
        .configure(|c| {
            // Nothing listens on port 1.
            c.redis.url = "redis://127.0.0.1:1".into();
            c.admin.rate_limit_per_minute = 1;
        })
        .spawn()
        .await;
    let admin = app.create_admin().await;
    for _ in 0..3 {
        let response = app
            .get("/api/admin/config")
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        assert!(!response.headers().contains_key("ratelimit-limit"));
    }
    let (s, body) = json_of(app.get("/healthz").send().await.expect("request")).await;
    assert_eq!(s, 200);
    assert_eq!(body["redis"], "down");
    assert_eq!(body["status"], "degraded");
}

async fn audit_count(app: &TestApp) -> i64 {
    app.db()
        .await
        .query_one("SELECT count(*) FROM audit_log", &[])
        .await
        .expect("count")
        .get(0)
}

/// One request of the mixed load below: (method, path, bearer token, body), and the status it
/// must answer.
type Call = (&'static str, String, Option<String>, Value, u16);

#[tokio::test]
async fn user_writes_and_admin_mutations_in_parallel_keep_one_chain() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let inviter = app.create_user().await;
    let (s, invitation) = json_of(
        app.post("/api/me/invitation-codes")
            .bearer_auth(&inviter.token)
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(s, 201, "{invitation}");
    let invitation = invitation["code"].as_str().expect("code").to_string();
    let org = seed_org(&app).await;
    let (_, member_key) = seed_member(&app, &org).await;
    let (s, b) = json_of(
        app.post("/api/admin/credits/adjust")
            .bearer_auth(&admin.key)
            .json(&json!({"organization_id": org, "credits_amount": 1000, "description": "seed"}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = json_of(
        app.post("/api/admin/redemption-codes/bulk")
            .bearer_auth(&admin.key)
            .json(&json!({"count": 6, "type": "credits", "value": 1}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let redemption_codes: Vec<String> = b["codes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|c| c.as_str().expect("code").to_string())
        .collect();

    let before = audit_count(&app).await;

    let mut calls: Vec<Call> = Vec::new();
    for n in 0..10 {
        let name = format!("u-{}", short_id());
        let mut body = json!({"email": format!("{name}@example.com"), "username": name,
                              "password": PASSWORD});
        if n < 5 {
            body["invitation_code"] = json!(invitation);
        }
        calls.push(("POST", "/api/auth/register".into(), None, body, 201));
    }
    for code in &redemption_codes {
        calls.push((
            "POST",
            "/api/redeem".into(),
            Some(member_key.clone()),
            json!({"code": code}),
            201,
        ));
    }
    for n in 0..8 {
        calls.push((
            "POST",
            "/api/runs".into(),
            Some(member_key.clone()),
            json!({"name": format!("job {n}"), "credits": 1}),
            201,
        ));
        calls.push((
            "PATCH",
            "/api/admin/config".into(),
            Some(admin.key.clone()),
            json!({"password_min_length": 20 + n}),
            200,
        ));
    }
    let tasks: Vec<_> = calls
        .into_iter()
        .map(|(method, path, token, body, want)| {
            let client = app.client.clone();
            let url = app.url(&path);
            tokio::spawn(async move {
                let builder = match method {
                    "POST" => client.post(url),
                    _ => client.patch(url),
                };
                let builder = match token {
                    Some(t) => builder.bearer_auth(t),
                    None => builder,
                };
                let (status, body) =
                    json_of(builder.json(&body).send().await.expect("request")).await;
                assert_eq!(status, want, "{method} {path}: {body}");
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let rows = audit_count(&app).await;
    // 10 registrations (5 with a code: 2 rows each), 6 redemptions, 8 runs, 8 config changes.
    assert_eq!(rows - before, 15 + 6 + 8 + 8);
    let (_, v) = get_json(&app, &admin, "/api/admin/audit-logs/verify").await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["checked"], rows);
}
