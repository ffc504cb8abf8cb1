//! Registration, sign-in, `/api/me`, sign-out, tokens, and who may call `/api/admin`.

use crate::common::{assert_error, json_of, TestApp, PASSWORD};
use serde_json::{json, Value};

async fn me(app: &TestApp, token: &str) -> (u16, Value) {
    json_of(
        app.get("/api/me")
            .bearer_auth(token)
            .send()
            .await
            .expect("request"),
    )
    .await
}

async fn sign_in(app: &TestApp, body: Value) -> (u16, Value) {
    json_of(
        app.post("/api/auth/sessions")
            .json(&body)
            .send()
            .await
            .expect("request"),
    )
    .await
}

#[tokio::test]
async fn register_sign_in_me_sign_out() {
    let app = TestApp::spawn().await;
    let (status, body) = json_of(
        app.post("/api/auth/register")
            .json(
                &json!({"email": "Ann@Example.com", "username": "ann", "name": "Ann",
                          "password": PASSWORD}),
            )
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().expect("token").to_string();
    assert!(token.starts_with("wps_"));
    assert!(body["expires_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert_eq!(body["user"]["email"], "Ann@Example.com");
    assert_eq!(body["user"]["role"], "user");
    assert!(body["user"]["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("usr_")));
    assert!(body["user"].get("password_hash").is_none());

    // Sign in by email (any case) and by username.
    let (status, by_email) = sign_in(
        &app,
        json!({"email": "ann@example.COM", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 201, "{by_email}");
    let (status, by_name) = sign_in(&app, json!({"username": "ann", "password": PASSWORD})).await;
    assert_eq!(status, 201, "{by_name}");
    let session = by_name["token"].as_str().expect("token").to_string();
    assert_ne!(session, token);

    let (status, me_body) = me(&app, &session).await;
    assert_eq!(status, 200, "{me_body}");
    assert_eq!(me_body["username"], "ann");
    assert_eq!(me_body["organizations"], json!([]));
    assert!(me_body.get("impersonated_by").is_none());

    let response = app
        .delete("/api/auth/sessions/current")
        .bearer_auth(&session)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 204);
    let (status, body) = me(&app, &session).await;
    assert_error(status, &body, 401, "UNAUTHORIZED");
    // Other sessions are unaffected.
    assert_eq!(me(&app, &token).await.0, 200);
}

#[tokio::test]
async fn sign_in_failures_are_401_and_recorded() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let (status, body) = sign_in(
        &app,
        json!({"email": user.email, "password": "wrong password!"}),
    )
    .await;
    assert_error(status, &body, 401, "UNAUTHORIZED");
    let (status, body) = sign_in(
        &app,
        json!({"email": "nobody@example.com", "password": PASSWORD}),
    )
    .await;
    assert_error(status, &body, 401, "UNAUTHORIZED");
    let (status, body) = sign_in(
        &app,
        json!({"email": user.email, "username": user.username, "password": PASSWORD}),
    )
    .await;
    assert_error(status, &body, 400, "BAD_REQUEST");
    let (status, _) = sign_in(&app, json!({"email": user.email, "password": PASSWORD})).await;
    assert_eq!(status, 201);

    let conn = app.db().await;
    let row = conn
        .query_one(
            "SELECT count(*) FILTER (WHERE success) AS ok, \
                    count(*) FILTER (WHERE NOT success) AS failed, \
                    count(*) FILTER (WHERE NOT success AND user_id IS NULL) AS unknown \
             FROM sign_in_events",
            &[],
        )
        .await
        .expect("query");
    assert_eq!(row.get::<_, i64>("ok"), 1);
    assert_eq!(row.get::<_, i64>("failed"), 2);
    assert_eq!(row.get::<_, i64>("unknown"), 2);
}

#[tokio::test]
async fn registration_is_validated() {
    let app = TestApp::spawn().await;
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
    let (s, b) = register(json!({"email": "nope", "username": "bob", "password": PASSWORD})).await;
    assert_error(s, &b, 400, "BAD_REQUEST");
    let (s, b) =
        register(json!({"email": "b@example.com", "username": "b!", "password": PASSWORD})).await;
    assert_error(s, &b, 400, "BAD_REQUEST");
    let (s, b) =
        register(json!({"email": "b@example.com", "username": "bob", "password": "short"})).await;
    assert_error(s, &b, 422, "UNPROCESSABLE");
    let (s, b) = register(json!({"email": "b@example.com", "username": "bob",
                                 "password": PASSWORD, "role": "platform_admin"}))
    .await;
    assert_error(s, &b, 400, "BAD_REQUEST");
    let (s, b) = register(json!({"email": "b@example.com", "username": "bob",
                                 "password": PASSWORD, "invitation_code": "INV-1"}))
    .await;
    assert_error(s, &b, 422, "UNPROCESSABLE");
    assert_eq!(b["error"]["message"], "invitation code is not valid");

    let (s, b) =
        register(json!({"email": "b@example.com", "username": "bob", "password": PASSWORD})).await;
    assert_eq!(s, 201, "{b}");
    let (s, b) =
        register(json!({"email": "B@EXAMPLE.com", "username": "bob2", "password": PASSWORD})).await;
    assert_error(s, &b, 409, "CONFLICT");
    assert!(b["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("email"));
    let (s, b) =
        register(json!({"email": "c@example.com", "username": "BOB", "password": PASSWORD})).await;
    assert_error(s, &b, 409, "CONFLICT");

    // Nothing from the refused attempts was written (the invitation refusal rolled back).
    let conn = app.db().await;
    let users: i64 = conn
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(users, 1);
}

#[tokio::test]
async fn missing_or_bad_tokens_are_401_and_non_admins_403() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let (s, b) = json_of(app.get("/api/admin/config").send().await.expect("req")).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    for header in [
        "Bearer wpk_doesnotexist",
        "Bearer wps_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "Basic dXNlcjpwYXNz",
        "Bearer",
    ] {
        let (s, b) = json_of(
            app.get("/api/admin/config")
                .header("authorization", header)
                .send()
                .await
                .expect("req"),
        )
        .await;
        assert_error(s, &b, 401, "UNAUTHORIZED");
    }
    let (s, b) = me(&app, "wpk_nope").await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    let (s, b) = json_of(
        app.get("/api/admin/config")
            .bearer_auth(&user.token)
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_error(s, &b, 403, "FORBIDDEN");
}

#[tokio::test]
async fn api_keys_authenticate_until_revoked() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    assert!(admin.key.starts_with("wpk_"));
    let (s, body) = me(&app, &admin.key).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["role"], "platform_admin");
    let conn = app.db().await;
    // Only the hash is stored.
    let stored: i64 = conn
        .query_one(
            "SELECT count(*) FROM api_keys WHERE key_hash = $1 OR key_hash = $2",
            &[
                &admin.key,
                &watchpost_admin::auth::tokens::hash_token(&admin.key),
            ],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(stored, 1);
    let plain: i64 = conn
        .query_one(
            "SELECT count(*) FROM api_keys WHERE key_hash = $1",
            &[&admin.key],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(plain, 0);
    // Signing out needs a session, not a key: no key scope covers it.
    let (s, b) = json_of(
        app.delete("/api/auth/sessions/current")
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_error(s, &b, 403, "FORBIDDEN");
    conn.execute("UPDATE api_keys SET revoked_at = now()", &[])
        .await
        .expect("revoke");
    let (s, b) = me(&app, &admin.key).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
}

#[tokio::test]
async fn disabled_user_is_refused_and_loses_sessions_at_once() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    assert_eq!(me(&app, &user.token).await.0, 200);
    let conn = app.db().await;
    conn.execute(
        "UPDATE users SET status = 'disabled' WHERE id = $1",
        &[&user.id],
    )
    .await
    .expect("disable");
    let (s, b) = me(&app, &user.token).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    let (s, b) = sign_in(&app, json!({"email": user.email, "password": PASSWORD})).await;
    assert_error(s, &b, 403, "FORBIDDEN");
    // A wrong password still says nothing about the account's state.
    let (s, b) = sign_in(
        &app,
        json!({"email": user.email, "password": "not it at all"}),
    )
    .await;
    assert_error(s, &b, 401, "UNAUTHORIZED");

    conn.execute(
        "UPDATE users SET status = 'active' WHERE id = $1",
        &[&user.id],
    )
    .await
    .expect("enable");
    assert_eq!(me(&app, &user.token).await.0, 200);
}

#[tokio::test]
async fn members_of_a_disabled_organization_are_refused() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let admin = app.create_admin().await;
    let conn = app.db().await;
    conn.batch_execute(
        "INSERT INTO organizations (id, name, display_name) VALUES \
         ('org_01JDAAAAAAAAAAAAAAAAAAAAAA', 'acme', 'Acme'), \
         ('org_01JDBBBBBBBBBBBBBBBBBBBBBB', 'other', 'Other')",
    )
    .await
    .expect("orgs");
    for (org, who) in [
        ("org_01JDAAAAAAAAAAAAAAAAAAAAAA", &user.id),
        ("org_01JDBBBBBBBBBBBBBBBBBBBBBB", &user.id),
        ("org_01JDAAAAAAAAAAAAAAAAAAAAAA", &admin.id),
    ] {
        conn.execute(
            "INSERT INTO memberships (organization_id, user_id, role) VALUES ($1, $2, 'member')",
            &[&org, who],
        )
        .await
        .expect("membership");
    }
    let (s, body) = me(&app, &user.token).await;
    assert_eq!(s, 200);
    assert_eq!(body["organizations"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["organizations"][0]["role"], "member");

    conn.execute(
        "UPDATE organizations SET enabled = false WHERE name = 'acme'",
        &[],
    )
    .await
    .expect("disable org");
    let (s, b) = me(&app, &user.token).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    let (s, b) = me(&app, &admin.key).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    let (s, b) = sign_in(&app, json!({"email": user.email, "password": PASSWORD})).await;
    assert_error(s, &b, 403, "FORBIDDEN");
    assert_eq!(b["error"]["message"], "organization is disabled");
}

#[tokio::test]
async fn expired_sessions_stop_working() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let conn = app.db().await;
    conn.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE user_id = $1",
        &[&user.id],
    )
    .await
    .expect("expire");
    let (s, b) = me(&app, &user.token).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
}

#[tokio::test]
async fn impersonation_sessions_name_the_impersonator() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let user = app.create_user().await;
    let mut conn = app.db().await;
    let tx = conn.transaction().await.expect("tx");
    let issued = watchpost_admin::auth::issue_session(
        &tx,
        &user.id,
        chrono::Duration::hours(1),
        Some((admin.id.as_str(), "support ticket 42")),
        None,
        None,
    )
    .await
    .expect("issue");
    tx.commit().await.expect("commit");
    let (s, body) = me(&app, &issued.token).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["id"], user.id.as_str());
    assert_eq!(body["impersonated_by"]["id"], admin.id.as_str());
    assert_eq!(body["impersonated_by"]["email"], admin.email.as_str());
    // Disabling the impersonating admin ends the impersonation.
    conn.execute(
        "UPDATE users SET status = 'disabled' WHERE id = $1",
        &[&admin.id],
    )
    .await
    .expect("disable admin");
    assert_eq!(me(&app, &issued.token).await.0, 401);
}

#[tokio::test]
async fn activity_is_recorded() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    assert_eq!(me(&app, &user.token).await.0, 200);
    let conn = app.db().await;
    // The update runs in the background: poll for it.
    let mut seen = false;
    for _ in 0..50 {
        let row = conn
            .query_one(
                "SELECT last_active_at IS NOT NULL FROM users WHERE id = $1",
                &[&user.id],
            )
            .await
            .expect("query");
        if row.get::<_, bool>(0) {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(seen, "last_active_at was never set");
}
