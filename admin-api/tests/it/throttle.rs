//! The admin API's own client IP (`[admin] trusted_cidrs`), the per-client throttles of the
//! public endpoints, and the retention of sign-in events.

use crate::common::{assert_error, json_of, seed_member, seed_org, short_id, TestApp, PASSWORD};
use serde_json::{json, Value};

/// A forwarding chain a client claims.
const XFF: &str = "x-forwarded-for";

async fn post_from(
    app: &TestApp,
    path: &str,
    xff: Option<&str>,
    token: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut builder = app.post(path).json(&body);
    if let Some(chain) = xff {
        builder = builder.header(XFF, chain);
    }
    if let Some(t) = token {
        builder = builder.bearer_auth(t);
    }
    builder.send().await.expect("request")
}

/// Sends requests until one is refused with 429 (at most `2 * limit + 1`: a fixed window may
/// roll over once mid-test) and returns how many were let through before it.
async fn allowed_before_429<F, Fut>(limit: usize, mut send: F) -> usize
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    for n in 0..=2 * limit {
        let response = send(n).await;
        if response.status() == 429 {
            let retry_after: u64 = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .expect("Retry-After on a 429");
            assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
            let (status, body) = json_of(response).await;
            assert_error(status, &body, 429, "RATE_LIMITED");
            return n;
        }
        assert_ne!(response.status(), 500);
    }
    panic!("no 429 after {} requests (limit {limit})", 2 * limit + 1);
}

#[track_caller]
fn assert_throttled_at(allowed: usize, limit: usize) {
    // At least `limit` pass in one window; more only if the window rolled over once.
    assert!(
        (limit..=2 * limit).contains(&allowed),
        "{allowed} allowed, limit {limit}"
    );
}

async fn register(app: &TestApp, xff: Option<&str>) -> (u16, Value) {
    let name = format!("u-{}", short_id());
    json_of(
        post_from(
            app,
            "/api/auth/register",
            xff,
            None,
            json!({"email": format!("{name}@example.com"), "username": name, "password": PASSWORD}),
        )
        .await,
    )
    .await
}

async fn scalar_ip(app: &TestApp, sql: &str, id: &str) -> Option<String> {
    app.db()
        .await
        .query_one(sql, &[&id])
        .await
        .expect("query")
        .get(0)
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_peer_is_the_recorded_client() {
    let app = TestApp::builder()
        .configure(|c| c.admin.trusted_cidrs = vec!["127.0.0.0/8".into()])
        .spawn()
        .await;
    // The client's own claim (left) is ignored: the walk stops at the first untrusted hop.
    let (status, body) = register(&app, Some("192.0.2.1, 203.0.113.50, 127.0.0.9")).await;
    assert_eq!(status, 201, "{body}");
    let user_id = body["user"]["id"].as_str().expect("id").to_string();
    let rows = app.audit_rows("user.registered").await;
    assert_eq!(rows[0]["ip"], "203.0.113.50", "{rows:?}");
    let session_ip = scalar_ip(
        &app,
        "SELECT host(ip) FROM sessions WHERE user_id = $1",
        &user_id,
    )
    .await;
    assert_eq!(session_ip.as_deref(), Some("203.0.113.50"));

    let email = body["user"]["email"].as_str().expect("email").to_string();
    let response = post_from(
        &app,
        "/api/auth/sessions",
        Some("198.51.100.23"),
        None,
        json!({"email": email, "password": "wrong password!"}),
    )
    .await;
    assert_eq!(response.status(), 401);
    let event_ip = scalar_ip(
        &app,
        "SELECT host(ip) FROM sign_in_events WHERE user_id IS NULL OR user_id = $1 \
         ORDER BY id DESC LIMIT 1",
        &user_id,
    )
    .await;
    assert_eq!(event_ip.as_deref(), Some("198.51.100.23"));

    // Admin mutations are audited with the forwarded client too.
    let admin = app.create_admin().await;
    let response = app
        .patch("/api/admin/config")
        .bearer_auth(&admin.key)
        .header(XFF, "198.51.100.77")
        .json(&json!({"password_min_length": 14}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let rows = app.audit_rows("auth_config.updated").await;
    assert_eq!(rows[0]["ip"], "198.51.100.77", "{rows:?}");
}

#[tokio::test]
async fn forwarded_for_is_ignored_without_trusted_cidrs() {
    let app = TestApp::spawn().await;
    let (status, body) = register(&app, Some("203.0.113.50")).await;
    assert_eq!(status, 201, "{body}");
    let user_id = body["user"]["id"].as_str().expect("id").to_string();
    assert_eq!(
        app.audit_rows("user.registered").await[0]["ip"],
        "127.0.0.1"
    );
    let session_ip = scalar_ip(
        &app,
        "SELECT host(ip) FROM sessions WHERE user_id = $1",
        &user_id,
    )
    .await;
    assert_eq!(session_ip.as_deref(), Some("127.0.0.1"));
}

#[tokio::test]
async fn sign_in_is_throttled_per_client_ip() {
    const LIMIT: usize = 4;
    let app = TestApp::builder()
        .configure(|c| {
            c.admin.trusted_cidrs = vec!["127.0.0.0/8".into()];
            c.admin.sign_in_per_ip_per_minute = LIMIT as u64;
        })
        .spawn()
        .await;
    let user = app.create_user().await;
    // Different accounts from one address: the per-IP throttle.
    let allowed = allowed_before_429(LIMIT, |n| {
        post_from(
            &app,
            "/api/auth/sessions",
            Some("198.51.100.66"),
            None,
            json!({"email": format!("nobody-{n}@example.com"), "password": "guess guess guess"}),
        )
    })
    .await;
    assert_throttled_at(allowed, LIMIT);
    // Refused attempts were never checked, so never recorded.
    let recorded: i64 = app
        .db()
        .await
        .query_one("SELECT count(*) FROM sign_in_events", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(recorded, allowed as i64);
    // Another address signs in.
    let response = post_from(
        &app,
        "/api/auth/sessions",
        Some("203.0.113.5"),
        None,
        json!({"email": user.email, "password": PASSWORD}),
    )
    .await;
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn attempts_from_elsewhere_never_lock_the_owner_out() {
    const LIMIT: usize = 3;
    let app = TestApp::builder()
        .configure(|c| {
            c.admin.trusted_cidrs = vec!["127.0.0.0/8".into()];
            c.admin.sign_in_per_ip_per_minute = 1000;
            c.admin.sign_in_per_account_ip_per_minute = LIMIT as u64;
        })
        .spawn()
        .await;
    let owner = app.create_user().await;
    let other = app.create_user().await;
    let attacker = Some("198.51.100.66");
    // The attacker guesses the owner's password, by email and by username alike.
    let allowed = allowed_before_429(LIMIT, |n| {
        let who = if n % 2 == 0 {
            json!({"email": owner.email, "password": "guess guess guess"})
        } else {
            json!({"username": owner.username, "password": "guess guess guess"})
        };
        post_from(&app, "/api/auth/sessions", attacker, None, who)
    })
    .await;
    assert_throttled_at(allowed, LIMIT);
    // The attacker's address may still try another account…
    let response = post_from(
        &app,
        "/api/auth/sessions",
        attacker,
        None,
        json!({"email": other.email, "password": "guess guess guess"}),
    )
    .await;
    assert_eq!(response.status(), 401);
    // …and the owner, from their own address, is not locked out.
    let home = Some("203.0.113.5");
    for _ in 0..LIMIT - 1 {
        let response = post_from(
            &app,
            "/api/auth/sessions",
            home,
            None,
            json!({"email": owner.email, "password": "typo typo typo"}),
        )
        .await;
        assert_eq!(response.status(), 401);
    }
    let response = post_from(
        &app,
        "/api/auth/sessions",
        home,
        None,
        json!({"email": owner.email, "password": PASSWORD}),
    )
    .await;
    assert_eq!(response.status(), 201);
    // A success clears the owner's count at that address.
    for _ in 0..LIMIT {
        let response = post_from(
            &app,
            "/api/auth/sessions",
            home,
            None,
            json!({"email": owner.email, "password": "typo typo typo"}),
        )
        .await;
        assert_eq!(response.status(), 401);
    }
}

#[tokio::test]
async fn registration_is_throttled_per_client_ip() {
    const LIMIT: usize = 3;
    let app = TestApp::builder()
        .configure(|c| {
            c.admin.trusted_cidrs = vec!["127.0.0.0/8".into()];
            c.admin.register_per_ip_per_minute = LIMIT as u64;
        })
        .spawn()
        .await;
    let allowed = allowed_before_429(LIMIT, |_| {
        let name = format!("u-{}", short_id());
        post_from(
            &app,
            "/api/auth/register",
            Some("198.51.100.66"),
            None,
            json!({"email": format!("{name}@example.com"), "username": name, "password": PASSWORD}),
        )
    })
    .await;
    assert_throttled_at(allowed, LIMIT);
    let (status, body) = register(&app, Some("203.0.113.5")).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn redeem_runs_and_invitation_minting_are_throttled_per_client_ip() {
    const LIMIT: usize = 3;
    let app = TestApp::builder()
        .configure(|c| {
            c.admin.trusted_cidrs = vec!["127.0.0.0/8".into()];
            c.admin.public_per_ip_per_minute = LIMIT as u64;
        })
        .spawn()
        .await;
    let org = seed_org(&app).await;
    let (_, key) = seed_member(&app, &org).await;
    let from = Some("198.51.100.66");
    for (path, body) in [
        ("/api/redeem", json!({"code": "AAAAA-BBBBB"})),
        ("/api/runs", json!({"name": "job", "credits": 0})),
        ("/api/me/invitation-codes", Value::Null),
    ] {
        let allowed = allowed_before_429(LIMIT, |_| {
            post_from(&app, path, from, Some(key.as_str()), body.clone())
        })
        .await;
        assert_throttled_at(allowed, LIMIT);
    }
    // Each endpoint counts on its own, per address.
    let response = post_from(
        &app,
        "/api/runs",
        Some("203.0.113.5"),
        Some(key.as_str()),
        json!({"name": "job", "credits": 0}),
    )
    .await;
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn throttles_let_requests_through_while_redis_is_down() {
    // Nothing listens on the port of a listener that was bound and dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let app = TestApp::builder()
        .configure(move |c| {
            c.redis.url = format!("redis://127.0.0.1:{port}");
            c.admin.sign_in_per_ip_per_minute = 1;
            c.admin.register_per_ip_per_minute = 1;
        })
        .spawn()
        .await;
    let user = app.create_user().await;
    for _ in 0..2 {
        let response = app
            .post("/api/auth/sessions")
            .json(&json!({"email": user.email, "password": PASSWORD}))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 201);
    }
}

#[tokio::test]
async fn old_sign_in_events_are_deleted_in_batches() {
    // The server's own retention task purges once at start: with a century's retention it
    // keeps every seeded row, so the explicit purge below is the only one that deletes.
    let app = TestApp::builder()
        .configure(|c| c.admin.sign_in_events_retention_days = 36_500)
        .spawn()
        .await;
    let conn = app.db().await;
    for (count, age_days) in [(25, 91), (5, 89), (5, 0)] {
        conn.execute(
            "INSERT INTO sign_in_events (success, reason, created_at) \
             SELECT false, 'bad_credentials', now() - make_interval(days => $2) \
             FROM generate_series(1, $1)",
            &[&count, &age_days],
        )
        .await
        .expect("seed events");
    }
    let deleted = watchpost_admin::sign_in_events::purge(&conn, 90, 10)
        .await
        .expect("purge");
    assert_eq!(deleted, 25);
    let ages: Vec<i32> = conn
        .query(
            "SELECT extract(day FROM now() - created_at)::int FROM sign_in_events",
            &[],
        )
        .await
        .expect("left")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ages.len(), 10);
    assert!(ages.iter().all(|&d| d <= 89), "{ages:?}");
    // Nothing more to do the second time.
    let again = watchpost_admin::sign_in_events::purge(&conn, 90, 10)
        .await
        .expect("purge");
    assert_eq!(again, 0);
}
