//! Identity lifecycle: API keys (scopes, listing, revocation, expiry), passwords (set by an
//! admin, changed by their owner, reset by email through the in-test SMTP server) and
//! sessions (listed and revoked by an admin and by their owner).

use std::time::Duration;

use serde_json::{json, Value};
use watchpost_admin::auth::tokens::hash_token;

use crate::{
    common::{assert_error, json_of, seed_org, TestApp, TestUser, PASSWORD},
    email::{Behaviour, SmtpServer},
};

const NEW_PASSWORD: &str = "a brand new password here";
const PUBLIC_BASE: &str = "https://app.watchpost.test";

/// `method path` with `token` (none when empty) and an optional JSON body.
async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let builder = match method {
        "GET" => app.get(path),
        "POST" => app.post(path),
        "PUT" => app.put(path),
        "PATCH" => app.patch(path),
        "DELETE" => app.delete(path),
        other => panic!("method {other}"),
    };
    let builder = if token.is_empty() {
        builder
    } else {
        builder.bearer_auth(token)
    };
    let builder = match body {
        Some(b) => builder.json(&b),
        None => builder,
    };
    json_of(builder.send().await.expect("request")).await
}

async fn sign_in(app: &TestApp, email: &str, password: &str) -> (u16, Value) {
    call(
        app,
        "POST",
        "/api/auth/sessions",
        "",
        Some(json!({"email": email, "password": password})),
    )
    .await
}

/// A new session of `user` (signs in again).
async fn another_session(app: &TestApp, user: &TestUser) -> String {
    let (s, b) = sign_in(app, &user.email, PASSWORD).await;
    assert_eq!(s, 201, "{b}");
    b["token"].as_str().expect("token").to_string()
}

async fn me_status(app: &TestApp, token: &str) -> u16 {
    call(app, "GET", "/api/me", token, None).await.0
}

/// Polls until `f` is true (at most 15 s).
async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    tokio::time::timeout(Duration::from_secs(15), async {
        while !f().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

// ---------------------------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn api_keys_are_shown_once_scoped_listed_and_revoked() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;

    // admin:read: the GETs of /api/admin only.
    let (s, created) = call(
        &app,
        "POST",
        "/api/admin/api-keys",
        &admin.key,
        Some(json!({"name": "dashboards", "scopes": ["admin:read"], "expires_in": "30d"})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let key = created["key"].as_str().expect("key").to_string();
    let id = created["id"].as_str().expect("id").to_string();
    assert!(key.starts_with("wpk_"), "{created}");
    assert_eq!(created["prefix"].as_str(), Some(&key[..12]));
    assert_eq!(created["user_id"], admin.id.as_str());
    assert_eq!(created["scopes"], json!(["admin:read"]));
    assert!(created["expires_at"].is_string(), "{created}");
    // Only the hash is stored.
    let stored: i64 = app
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM api_keys WHERE id = $1 AND key_hash = $2",
            &[&id, &hash_token(&key)],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(stored, 1);

    let (s, b) = call(&app, "GET", "/api/admin/users", &key, None).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = call(
        &app,
        "POST",
        "/api/admin/users",
        &key,
        Some(json!({"email": "x@example.com", "username": "xyz"})),
    )
    .await;
    assert_error(s, &b, 403, "FORBIDDEN");
    let (s, b) = call(
        &app,
        "POST",
        "/api/admin/api-keys",
        &key,
        Some(json!({"name": "escalate", "scopes": ["admin"]})),
    )
    .await;
    assert_error(s, &b, 403, "FORBIDDEN");
    // Routes no scope names need a session.
    let (s, b) = call(&app, "GET", "/api/me/sessions", &key, None).await;
    assert_error(s, &b, 403, "FORBIDDEN");
    assert_eq!(me_status(&app, &key).await, 200);

    // last_used_at is recorded (in the background).
    let conn = app.db().await;
    wait_until("last_used_at", || async {
        conn.query_one(
            "SELECT last_used_at IS NOT NULL FROM api_keys WHERE id = $1",
            &[&id],
        )
        .await
        .expect("query")
        .get::<_, bool>(0)
    })
    .await;
    let (s, list) = call(&app, "GET", "/api/admin/api-keys", &admin.key, None).await;
    assert_eq!(s, 200, "{list}");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{list}");
    assert!(!list.to_string().contains(&key[12..]), "{list}");
    let listed = items
        .iter()
        .find(|k| k["id"] == id.as_str())
        .expect("listed");
    assert!(listed.get("key").is_none(), "{listed}");
    assert!(listed["last_used_at"].is_string(), "{listed}");
    assert_eq!(listed["name"], "dashboards");
    assert!(listed["revoked_at"].is_null());
    // Filtered by user, and paged.
    let (s, page) = call(
        &app,
        "GET",
        &format!("/api/admin/api-keys?user_id={}&limit=1", admin.id),
        &admin.key,
        None,
    )
    .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["items"][0]["id"], id.as_str(), "newest first: {page}");
    let cursor = page["next_cursor"].as_str().expect("a second page");
    let (s, page2) = call(
        &app,
        "GET",
        &format!(
            "/api/admin/api-keys?user_id={}&limit=1&cursor={cursor}",
            admin.id
        ),
        &admin.key,
        None,
    )
    .await;
    assert_eq!(s, 200, "{page2}");
    assert_ne!(page2["items"][0]["id"], id.as_str());
    assert!(page2["next_cursor"].is_null());

    // Revoked: 401 from the next request on.
    let (s, b) = call(
        &app,
        "DELETE",
        &format!("/api/admin/api-keys/{id}"),
        &admin.key,
        None,
    )
    .await;
    assert_eq!(s, 204, "{b}");
    let (s, b) = call(&app, "GET", "/api/admin/users", &key, None).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    let (s, _) = call(
        &app,
        "DELETE",
        &format!("/api/admin/api-keys/{id}"),
        &admin.key,
        None,
    )
    .await;
    assert_eq!(s, 204, "revoking again changes nothing");
    let (s, b) = call(
        &app,
        "DELETE",
        "/api/admin/api-keys/key_01JDAAAAAAAAAAAAAAAAAAAAAA",
        &admin.key,
        None,
    )
    .await;
    assert_error(s, &b, 404, "NOT_FOUND");

    let created_rows = app.audit_rows("api_key.created").await;
    let row = created_rows
        .iter()
        .find(|r| r["resource_id"] == id.as_str())
        .expect("api_key.created");
    assert_eq!(row["actor_id"], admin.id.as_str());
    assert_eq!(row["changes"]["scopes"]["after"], json!(["admin:read"]));
    assert!(!row.to_string().contains(&key), "the key is never audited");
    let revoked = app.audit_rows("api_key.revoked").await;
    assert_eq!(revoked.len(), 1, "one revocation audited: {revoked:?}");
    assert_eq!(revoked[0]["resource_id"], id.as_str());
}

#[tokio::test]
async fn a_runs_key_acts_for_its_user_on_api_runs_only() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let user = app.create_user().await;
    let org = seed_org(&app).await;
    app.db()
        .await
        .execute(
            "INSERT INTO memberships (organization_id, user_id, role) VALUES ($1, $2, 'member')",
            &[&org, &user.id],
        )
        .await
        .expect("membership");

    // Admin scopes are for platform admins only.
    for scope in ["admin", "admin:read"] {
        let (s, b) = call(
            &app,
            "POST",
            "/api/admin/api-keys",
            &admin.key,
            Some(json!({"name": "n", "user_id": user.id, "scopes": [scope]})),
        )
        .await;
        assert_error(s, &b, 422, "UNPROCESSABLE");
    }
    // Malformed requests change nothing.
    for body in [
        json!({"name": "n", "user_id": user.id, "scopes": []}),
        json!({"name": "n", "user_id": user.id, "scopes": ["root"]}),
        json!({"name": "", "user_id": user.id, "scopes": ["runs"]}),
        json!({"name": "n", "user_id": user.id, "scopes": ["runs"], "expires_in": 10}),
        json!({"name": "n", "user_id": user.id, "scopes": ["runs"], "expires_in": "400d"}),
        json!({"name": "n", "scopes": ["runs"], "extra": 1}),
    ] {
        let (s, b) = call(
            &app,
            "POST",
            "/api/admin/api-keys",
            &admin.key,
            Some(body.clone()),
        )
        .await;
        assert_error(s, &b, 400, "BAD_REQUEST");
    }
    let (s, b) = call(
        &app,
        "POST",
        "/api/admin/api-keys",
        &admin.key,
        Some(json!({"name": "n", "user_id": "usr_01JDAAAAAAAAAAAAAAAAAAAAAA", "scopes": ["runs"]})),
    )
    .await;
    assert_error(s, &b, 404, "NOT_FOUND");
    let keys: i64 = app
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM api_keys WHERE user_id = $1",
            &[&user.id],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(keys, 0);

    let (s, created) = call(
        &app,
        "POST",
        "/api/admin/api-keys",
        &admin.key,
        Some(json!({"name": "worker", "user_id": user.id, "scopes": ["runs", "runs"]})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["scopes"], json!(["runs"]));
    assert!(created["expires_at"].is_null());
    let key = created["key"].as_str().expect("key").to_string();

    let (s, run) = call(
        &app,
        "POST",
        "/api/runs",
        &key,
        Some(json!({"name": "nightly", "credits": 0})),
    )
    .await;
    assert_eq!(s, 201, "{run}");
    assert_eq!(
        run["user_id"],
        user.id.as_str(),
        "the run is the key's user's"
    );
    for (method, path, body) in [
        ("POST", "/api/redeem", Some(json!({"code": "AAAAA-BBBBB"}))),
        ("POST", "/api/me/invitation-codes", None),
        ("GET", "/api/admin/runs", None),
        ("DELETE", "/api/auth/sessions/current", None),
        (
            "POST",
            "/api/auth/password",
            Some(json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD})),
        ),
    ] {
        let (s, b) = call(&app, method, path, &key, body).await;
        assert_error(s, &b, 403, "FORBIDDEN");
    }

    // An expired key is 401.
    app.db()
        .await
        .execute(
            "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE user_id = $1",
            &[&user.id],
        )
        .await
        .expect("expire");
    let (s, b) = call(
        &app,
        "POST",
        "/api/runs",
        &key,
        Some(json!({"name": "late", "credits": 0})),
    )
    .await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
}

// ---------------------------------------------------------------------------------------------
// Passwords
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_admin_sets_a_password_and_the_users_sessions_end() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let user = app.create_user().await;
    let second = another_session(&app, &user).await;
    let path = format!("/api/admin/users/{}/password", user.id);

    let (s, b) = call(
        &app,
        "PUT",
        &path,
        &admin.key,
        Some(json!({"password": "short"})),
    )
    .await;
    assert_error(s, &b, 422, "UNPROCESSABLE");
    assert_eq!(me_status(&app, &user.token).await, 200, "nothing changed");
    let (s, b) = call(
        &app,
        "PUT",
        "/api/admin/users/usr_01JDAAAAAAAAAAAAAAAAAAAAAA/password",
        &admin.key,
        Some(json!({"password": NEW_PASSWORD})),
    )
    .await;
    assert_error(s, &b, 404, "NOT_FOUND");

    let (s, b) = call(
        &app,
        "PUT",
        &path,
        &admin.key,
        Some(json!({"password": NEW_PASSWORD})),
    )
    .await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(me_status(&app, &user.token).await, 401);
    assert_eq!(me_status(&app, &second).await, 401);
    assert_eq!(sign_in(&app, &user.email, PASSWORD).await.0, 401);
    assert_eq!(sign_in(&app, &user.email, NEW_PASSWORD).await.0, 201);

    let rows = app.audit_rows("user.password_set").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["resource_id"], user.id.as_str());
    assert_eq!(rows[0]["changes"]["sessions_revoked"]["after"], 2);
    assert!(!rows[0].to_string().contains(NEW_PASSWORD));
}

#[tokio::test]
async fn changing_ones_password_keeps_only_the_current_session() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let other = another_session(&app, &user).await;
    let change =
        |current: &str, new: &str| json!({"current_password": current, "new_password": new});

    let (s, b) = call(
        &app,
        "POST",
        "/api/auth/password",
        &user.token,
        Some(change("not the password", NEW_PASSWORD)),
    )
    .await;
    assert_error(s, &b, 422, "UNPROCESSABLE");
    let (s, b) = call(
        &app,
        "POST",
        "/api/auth/password",
        &user.token,
        Some(change(PASSWORD, "short")),
    )
    .await;
    assert_error(s, &b, 422, "UNPROCESSABLE");
    assert_eq!(me_status(&app, &other).await, 200, "nothing changed");

    let (s, b) = call(
        &app,
        "POST",
        "/api/auth/password",
        &user.token,
        Some(change(PASSWORD, NEW_PASSWORD)),
    )
    .await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(
        me_status(&app, &user.token).await,
        200,
        "the current session stays"
    );
    assert_eq!(me_status(&app, &other).await, 401, "other sessions end");
    assert_eq!(sign_in(&app, &user.email, PASSWORD).await.0, 401);
    assert_eq!(sign_in(&app, &user.email, NEW_PASSWORD).await.0, 201);
    let rows = app.audit_rows("user.password_changed").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["actor_id"], user.id.as_str());
    assert_eq!(rows[0]["changes"]["sessions_revoked"]["after"], 1);

    // Without a token: 401.
    let (s, b) = call(
        &app,
        "POST",
        "/api/auth/password",
        "",
        Some(change(NEW_PASSWORD, PASSWORD)),
    )
    .await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
}

/// An app whose `[smtp]` points at `server` and whose public base URL is [`PUBLIC_BASE`].
async fn app_with_mail(server: &SmtpServer) -> TestApp {
    let port = server.port;
    TestApp::builder()
        .configure(move |c| {
            c.smtp.host = "127.0.0.1".into();
            c.smtp.port = Some(port);
            c.smtp.from = "Watchpost <noreply@watchpost.test>".into();
            c.smtp.tls_mode = "none".into();
            c.smtp.timeout_ms = 5000;
            c.admin.public_base_url = format!("{PUBLIC_BASE}/");
        })
        .spawn()
        .await
}

/// The message body as text: quoted-printable soft breaks and `=3D` undone.
fn body_text(data: &str) -> String {
    data.replace("=\r\n", "").replace("=3D", "=")
}

/// The reset link of a message.
fn reset_link(data: &str) -> String {
    let text = body_text(data);
    let start = text.find("https://").expect("a link in the message");
    text[start..]
        .split_whitespace()
        .next()
        .expect("link")
        .to_string()
}

#[tokio::test]
async fn a_password_is_reset_through_the_emailed_link() {
    let server = SmtpServer::start(Behaviour::default()).await;
    let app = app_with_mail(&server).await;
    let user = app.create_user().await;
    let second = another_session(&app, &user).await;

    // Unknown accounts answer the same.
    let (s, b) = call(
        &app,
        "POST",
        "/api/auth/password-reset",
        "",
        Some(json!({"email": "nobody-here@example.com"})),
    )
    .await;
    assert_eq!(s, 202, "{b}");
    // Host and X-Forwarded-Host do not shape the link.
    let response = app
        .post("/api/auth/password-reset")
        .header("Host", "evil.example")
        .header("X-Forwarded-Host", "evil.example")
        .header("Forwarded", "host=evil.example")
        .json(&json!({"email": user.email.to_uppercase()}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 202);

    wait_until("the reset message", || async {
        !server.messages().is_empty()
    })
    .await;
    let messages = server.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0].rcpt_to, vec![user.email.clone()]);
    let link = reset_link(&messages[0].data);
    assert!(
        !messages[0].data.contains("evil.example"),
        "{}",
        messages[0].data
    );
    let token = link
        .strip_prefix(&format!("{PUBLIC_BASE}/reset-password?token="))
        .unwrap_or_else(|| panic!("link from public_base_url: {link}"))
        .to_string();
    assert!(token.starts_with("wpr_"), "{token}");
    // Stored hashed, valid one hour.
    let conn = app.db().await;
    let row = conn
        .query_one(
            "SELECT token_hash, extract(epoch FROM expires_at - created_at)::float8 AS ttl \
             FROM password_reset_tokens WHERE user_id = $1",
            &[&user.id],
        )
        .await
        .expect("token row");
    assert_eq!(row.get::<_, String>("token_hash"), hash_token(&token));
    let ttl: f64 = row.get("ttl");
    assert!((3590.0..=3610.0).contains(&ttl), "{ttl}");

    // A password breaking the policy leaves the token usable.
    let confirm = |new: &str| json!({"token": token, "new_password": new});
    let (s, b) = call(
        &app,
        "POST",
        "/api/auth/password-reset/confirm",
        "",
        Some(confirm("short")),
    )
    .await;
    assert_error(s, &b, 422, "UNPROCESSABLE");
    assert_eq!(me_status(&app, &user.token).await, 200);

    let (s, b) = call(
        &app,
        "POST",
        "/api/auth/password-reset/confirm",
        "",
        Some(confirm(NEW_PASSWORD)),
    )
    .await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(me_status(&app, &user.token).await, 401);
    assert_eq!(me_status(&app, &second).await, 401);
    assert_eq!(sign_in(&app, &user.email, PASSWORD).await.0, 401);
    assert_eq!(sign_in(&app, &user.email, NEW_PASSWORD).await.0, 201);

    // Single use.
    let (s, b) = call(
        &app,
        "POST",
        "/api/auth/password-reset/confirm",
        "",
        Some(confirm("yet another new password")),
    )
    .await;
    assert_error(s, &b, 400, "BAD_REQUEST");
    assert_eq!(sign_in(&app, &user.email, NEW_PASSWORD).await.0, 201);

    let requested = app.audit_rows("user.password_reset_requested").await;
    assert_eq!(requested.len(), 1);
    assert_eq!(requested[0]["resource_id"], user.id.as_str());
    let reset = app.audit_rows("user.password_reset").await;
    assert_eq!(reset.len(), 1);
    assert_eq!(reset[0]["changes"]["sessions_revoked"]["after"], 2);
    for row in requested.iter().chain(&reset) {
        assert!(
            !row.to_string().contains(&token[4..]),
            "token in the audit log"
        );
    }
    // Still only the one message: nothing went to the unknown address.
    assert!(server
        .messages()
        .iter()
        .all(|m| m.rcpt_to == vec![user.email.clone()]));
}

#[tokio::test]
async fn reset_tokens_that_are_unknown_or_expired_are_400() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let (s, b) = call(
        &app,
        "POST",
        "/api/auth/password-reset",
        "",
        Some(json!({"email": "not an email"})),
    )
    .await;
    assert_error(s, &b, 400, "BAD_REQUEST");
    // Email not configured: still 202.
    let (s, b) = call(
        &app,
        "POST",
        "/api/auth/password-reset",
        "",
        Some(json!({"email": user.email})),
    )
    .await;
    assert_eq!(s, 202, "{b}");

    let expired = format!("wpr_{}", "A".repeat(43));
    app.db()
        .await
        .execute(
            "INSERT INTO password_reset_tokens (user_id, token_hash, expires_at) \
             VALUES ($1, $2, now() - interval '1 second')",
            &[&user.id, &hash_token(&expired)],
        )
        .await
        .expect("token");
    for token in [
        expired.clone(),
        format!("wpr_{}", "B".repeat(43)),
        "wpr_short".to_string(),
        "wps_whatever".to_string(),
    ] {
        let (s, b) = call(
            &app,
            "POST",
            "/api/auth/password-reset/confirm",
            "",
            Some(json!({"token": token, "new_password": NEW_PASSWORD})),
        )
        .await;
        assert_error(s, &b, 400, "BAD_REQUEST");
    }
    assert_eq!(me_status(&app, &user.token).await, 200);
    assert_eq!(sign_in(&app, &user.email, PASSWORD).await.0, 201);
}

#[tokio::test]
async fn reset_requests_are_throttled_per_account() {
    let app = TestApp::builder()
        .configure(|c| c.admin.sign_in_per_account_ip_per_minute = 2)
        .spawn()
        .await;
    let body = json!({"email": "someone@example.com"});
    for _ in 0..2 {
        let (s, b) = call(
            &app,
            "POST",
            "/api/auth/password-reset",
            "",
            Some(body.clone()),
        )
        .await;
        assert_eq!(s, 202, "{b}");
    }
    let (s, b) = call(&app, "POST", "/api/auth/password-reset", "", Some(body)).await;
    assert_error(s, &b, 429, "RATE_LIMITED");
    // Another account is counted on its own.
    let (s, _) = call(
        &app,
        "POST",
        "/api/auth/password-reset",
        "",
        Some(json!({"email": "other@example.com"})),
    )
    .await;
    assert_eq!(s, 202);
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sessions_are_listed_without_secrets_and_revoked_one_by_one() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let user = app.create_user().await;
    let stranger = app.create_user().await;
    let second = another_session(&app, &user).await;

    let (s, mine) = call(&app, "GET", "/api/me/sessions", &user.token, None).await;
    assert_eq!(s, 200, "{mine}");
    let items = mine["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{mine}");
    let current: Vec<&Value> = items.iter().filter(|i| i["current"] == true).collect();
    assert_eq!(current.len(), 1, "{mine}");
    for item in items {
        for field in ["id", "created_at", "expires_at", "ip"] {
            assert!(!item[field].is_null(), "{field}: {item}");
        }
        for field in ["last_seen_at", "user_agent", "impersonated_by"] {
            assert!(item.get(field).is_some(), "{field}: {item}");
        }
        assert!(item.get("token").is_none() && item.get("token_hash").is_none());
    }
    for secret in [&user.token, &second] {
        assert!(!mine.to_string().contains(&hash_token(secret)));
        assert!(!mine.to_string().contains(&secret[4..]));
    }
    let current_id = current[0]["id"].as_str().expect("id").to_string();
    let other_id = items
        .iter()
        .find(|i| i["current"] == false)
        .and_then(|i| i["id"].as_str())
        .expect("other")
        .to_string();

    let (s, listed) = call(
        &app,
        "GET",
        &format!("/api/admin/users/{}/sessions", user.id),
        &admin.key,
        None,
    )
    .await;
    assert_eq!(s, 200, "{listed}");
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(2));
    assert!(listed["items"][0].get("current").is_none());

    // Someone else's session is not yours to revoke.
    let (s, b) = call(
        &app,
        "DELETE",
        &format!("/api/me/sessions/{other_id}"),
        &stranger.token,
        None,
    )
    .await;
    assert_error(s, &b, 404, "NOT_FOUND");
    assert_eq!(me_status(&app, &second).await, 200);

    let (s, b) = call(
        &app,
        "DELETE",
        &format!("/api/me/sessions/{other_id}"),
        &user.token,
        None,
    )
    .await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(me_status(&app, &second).await, 401);
    assert_eq!(me_status(&app, &user.token).await, 200);

    let path = format!("/api/admin/users/{}/sessions/{current_id}", user.id);
    let (s, b) = call(&app, "DELETE", &path, &admin.key, None).await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(me_status(&app, &user.token).await, 401);
    let (s, b) = call(&app, "DELETE", &path, &admin.key, None).await;
    assert_error(s, &b, 404, "NOT_FOUND");
    let (s, b) = call(
        &app,
        "GET",
        "/api/admin/users/usr_01JDAAAAAAAAAAAAAAAAAAAAAA/sessions",
        &admin.key,
        None,
    )
    .await;
    assert_error(s, &b, 404, "NOT_FOUND");

    let rows = app.audit_rows("session.revoked").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["actor_id"], user.id.as_str());
    assert_eq!(rows[0]["resource_id"], other_id.as_str());
    assert_eq!(rows[1]["actor_id"], admin.id.as_str());
    assert_eq!(rows[1]["resource_id"], current_id.as_str());
}

#[tokio::test]
async fn last_seen_at_is_recorded() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    assert_eq!(me_status(&app, &user.token).await, 200);
    let conn = app.db().await;
    wait_until("last_seen_at", || async {
        conn.query_one(
            "SELECT last_seen_at IS NOT NULL FROM sessions WHERE user_id = $1",
            &[&user.id],
        )
        .await
        .expect("query")
        .get::<_, bool>(0)
    })
    .await;
    let (_, mine) = call(&app, "GET", "/api/me/sessions", &user.token, None).await;
    assert!(mine["items"][0]["last_seen_at"].is_string(), "{mine}");
}
