//! `GET /api/admin/stats`.

use crate::common::{assert_error, json_of, TestApp, PASSWORD};
use serde_json::{json, Value};

async fn stats(app: &TestApp, token: &str) -> (u16, Value) {
    json_of(
        app.get("/api/admin/stats")
            .bearer_auth(token)
            .send()
            .await
            .expect("request"),
    )
    .await
}

async fn sign_in(app: &TestApp, username: &str, password: &str) -> u16 {
    app.post("/api/auth/sessions")
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

#[tokio::test]
async fn stats_require_a_platform_admin() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let (status, err) = json_of(app.get("/api/admin/stats").send().await.expect("request")).await;
    assert_error(status, &err, 401, "UNAUTHORIZED");
    let (status, err) = stats(&app, "wpk_bogus").await;
    assert_error(status, &err, 401, "UNAUTHORIZED");
    let (status, err) = stats(&app, &user.token).await;
    assert_error(status, &err, 403, "FORBIDDEN");
    let admin = app.create_admin().await;
    let response = app
        .get("/api/admin/stats?extra=1")
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.status(),
        200,
        "unknown query parameters are ignored"
    );
}

#[tokio::test]
async fn stats_numbers_follow_the_data() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let conn = app.db().await;
    // Mark the admin active now, so its own requests do not change the activity figures
    // (activity is recorded at most once a minute).
    conn.execute(
        "UPDATE users SET last_active_at = now() WHERE id = $1",
        &[&admin.id],
    )
    .await
    .expect("admin activity");

    let (status, empty) = stats(&app, &admin.key).await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(
        empty,
        json!({
            "total_organizations": 0,
            "total_users": 1,
            "total_executions": 0,
            "total_credits_used": 0,
            "active_organizations_7d": 0,
            "organizations": {"total": 0, "active_last_30d": 0},
            "users": {"total": 1, "active_last_7d": 1, "active_last_30d": 1,
                      "new_last_7d": 1, "new_last_30d": 1},
            "sessions": {"active": 0, "created_last_24h": 0},
            "auth": {"sign_ins_last_24h": 0, "failed_sign_ins_last_24h": 0},
            "mfa": {"enrolled_users": 0, "enrollment_rate": 0.0},
            "gateway": {"requests_last_hour": 0, "rejected_last_hour": 0, "available": true},
        })
    );

    // Three users (three registration sessions); one signs in again, two attempts fail.
    let a = app.create_user().await;
    let b = app.create_user().await;
    let c = app.create_user().await;
    assert_eq!(sign_in(&app, &a.username, PASSWORD).await, 201);
    assert_eq!(sign_in(&app, &a.username, "wrong password!!").await, 401);
    assert_eq!(sign_in(&app, "nobody-here", PASSWORD).await, 401);
    // a: active yesterday; b: created 10 days ago, active 20 days ago; c: created 40 days ago,
    // never active, its session revoked.
    conn.execute(
        "UPDATE users SET last_active_at = now() - interval '1 day' WHERE id = $1",
        &[&a.id],
    )
    .await
    .expect("a");
    conn.execute(
        "UPDATE users SET created_at = now() - interval '10 days', \
         last_active_at = now() - interval '20 days' WHERE id = $1",
        &[&b.id],
    )
    .await
    .expect("b");
    conn.execute(
        "UPDATE users SET created_at = now() - interval '40 days' WHERE id = $1",
        &[&c.id],
    )
    .await
    .expect("c");
    conn.execute(
        "UPDATE sessions SET revoked_at = now() WHERE user_id = $1",
        &[&c.id],
    )
    .await
    .expect("revoke");
    // Two organizations; only acme has a member active in the last 7 days.
    for (id, name, member) in [
        ("org_01JD0000000000000000000001", "acme", &a.id),
        ("org_01JD0000000000000000000002", "beta", &b.id),
    ] {
        conn.execute(
            "INSERT INTO organizations (id, name, display_name) VALUES ($1, $2, $2)",
            &[&id, &name],
        )
        .await
        .expect("org");
        conn.execute(
            "INSERT INTO memberships (organization_id, user_id, role) VALUES ($1, $2, 'member')",
            &[&id, member],
        )
        .await
        .expect("membership");
    }

    // The proxy's per-minute counters: the last 60 minutes count, older ones do not.
    let minute = u64::try_from(chrono::Utc::now().timestamp() / 60).expect("minute");
    let keys = app.state.keys();
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| crate::common::DEFAULT_REDIS_URL.into());
    let client = redis::Client::open(redis_url).expect("redis url");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis reachable");
    let counters = [
        (keys.requests_in_minute(minute - 1), 5),
        (keys.requests_in_minute(minute - 30), 7),
        (keys.requests_in_minute(minute - 58), 11),
        (keys.requests_in_minute(minute - 70), 1000),
        (keys.rejects_in_minute(minute - 2), 3),
        (keys.rejects_in_minute(minute - 90), 1000),
    ];
    for (key, value) in &counters {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("EX")
            .arg(600)
            .query_async::<()>(&mut redis)
            .await
            .expect("set counter");
    }

    // One of the four users has MFA.
    conn.execute(
        "UPDATE users SET mfa_enrolled = true WHERE id = $1",
        &[&b.id],
    )
    .await
    .expect("mfa");
    let (status, now) = stats(&app, &admin.key).await;
    assert_eq!(status, 200, "{now}");
    assert_eq!(
        now,
        json!({
            "total_organizations": 2,
            "total_users": 4,
            "total_executions": 0,
            "total_credits_used": 0,
            "active_organizations_7d": 1,
            // beta's member was active 20 days ago: within 30 days.
            "organizations": {"total": 2, "active_last_30d": 2},
            "users": {"total": 4, "active_last_7d": 2, "active_last_30d": 3,
                      "new_last_7d": 2, "new_last_30d": 3},
            "sessions": {"active": 3, "created_last_24h": 4},
            "auth": {"sign_ins_last_24h": 1, "failed_sign_ins_last_24h": 2},
            "mfa": {"enrolled_users": 1, "enrollment_rate": 0.25},
            "gateway": {"requests_last_hour": 23, "rejected_last_hour": 3, "available": true},
        })
    );
}

#[tokio::test]
async fn stats_answer_without_redis_and_say_so() {
    // A port nothing listens on.
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
    let (status, body) = stats(&app, &admin.key).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total_users"], 1);
    assert_eq!(
        body["gateway"],
        json!({"requests_last_hour": 0, "rejected_last_hour": 0, "available": false})
    );
}

#[tokio::test]
async fn executions_and_credits_used_come_from_the_ledger() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let conn = app.db().await;
    conn.batch_execute(&format!(
        "INSERT INTO organizations (id, name, display_name, credits_balance) \
           VALUES ('org_01JD0000000000000000000001', 'acme', 'Acme', 100); \
         INSERT INTO credit_transactions \
           (id, organization_id, credits_amount, transaction_type, balance_after, description) \
         VALUES ('txn_01JD0000000000000000000001', 'org_01JD0000000000000000000001', 200, \
                 'purchase', 200, 'bought'), \
                ('txn_01JD0000000000000000000002', 'org_01JD0000000000000000000001', -60, \
                 'execution', 140, 'run'), \
                ('txn_01JD0000000000000000000003', 'org_01JD0000000000000000000001', -40, \
                 'execution', 100, 'run'); \
         INSERT INTO runs (id, organization_id, user_id, name, credits_cost, transaction_id) \
         VALUES ('run_01JD0000000000000000000001', 'org_01JD0000000000000000000001', '{id}', \
                 'a', 60, 'txn_01JD0000000000000000000002'), \
                ('run_01JD0000000000000000000002', 'org_01JD0000000000000000000001', '{id}', \
                 'b', 40, 'txn_01JD0000000000000000000003'), \
                ('run_01JD0000000000000000000003', 'org_01JD0000000000000000000001', '{id}', \
                 'free', 0, NULL)",
        id = admin.id
    ))
    .await
    .expect("ledger rows");
    let (status, body) = stats(&app, &admin.key).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total_executions"], 3);
    // Purchases are not usage: only execution debits count.
    assert_eq!(body["total_credits_used"], 100);
}
