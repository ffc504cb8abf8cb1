//! TOTP MFA: enrollment under `/api/me/mfa/totp`, the second factor at sign-in (codes computed
//! here from the secret the API handed out), replay refusal, recovery codes, the
//! `mfa_required` gate, the admin reset, stats and search, and key rotation of the secret.

use serde_json::{json, Value};
use totp_rs::{Algorithm, Secret, TOTP};
use watchpost_admin::email::SecretKey;

use crate::common::{assert_error, json_of, send, TestApp, TestUser, PASSWORD};

const KEY: &str = "mfa test secret key";

async fn app_with_key() -> TestApp {
    TestApp::builder()
        .configure(|c| c.secret_key = Some(SecretKey::from_text(KEY).expect("key")))
        .spawn()
        .await
}

/// The code of the step `offset_steps` from now, computed from the base32 secret.
fn code(secret_b32: &str, offset_steps: i64) -> String {
    let bytes = Secret::Encoded(secret_b32.to_string())
        .to_bytes()
        .expect("base32 secret");
    let totp = TOTP::new(Algorithm::SHA1, 6, 1, 30, bytes, None, "t".to_string()).expect("totp");
    let now = chrono::Utc::now().timestamp() + offset_steps * 30;
    totp.generate(u64::try_from(now).expect("time"))
}

async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let builder = match method {
        "POST" => app.post(path),
        "DELETE" => app.delete(path),
        "GET" => app.get(path),
        other => panic!("method {other}"),
    };
    let builder = builder.bearer_auth(token);
    let builder = match body {
        Some(b) => builder.json(&b),
        None => builder,
    };
    json_of(builder.send().await.expect("request")).await
}

async fn sign_in(app: &TestApp, user: &TestUser, extra: Value) -> (u16, Value) {
    let mut body = json!({"email": user.email, "password": PASSWORD});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    json_of(
        app.post("/api/auth/sessions")
            .json(&body)
            .send()
            .await
            .expect("sign in"),
    )
    .await
}

/// Enrolls `user` and answers (base32 secret, recovery codes).
async fn enroll(app: &TestApp, user: &TestUser) -> (String, Vec<String>) {
    let (s, started) = call(app, "POST", "/api/me/mfa/totp", &user.token, None).await;
    assert_eq!(s, 201, "{started}");
    let secret = started["secret"].as_str().expect("secret").to_string();
    let (s, confirmed) = call(
        app,
        "POST",
        "/api/me/mfa/totp/confirm",
        &user.token,
        Some(json!({"code": code(&secret, 0)})),
    )
    .await;
    assert_eq!(s, 200, "{confirmed}");
    let codes = confirmed["recovery_codes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|c| c.as_str().expect("code").to_string())
        .collect();
    (secret, codes)
}

async fn failed_events(app: &TestApp, user_id: &str, reason: &str) -> i64 {
    app.db()
        .await
        .query_one(
            "SELECT count(*) FROM sign_in_events WHERE user_id = $1 AND NOT success \
             AND reason = $2",
            &[&user_id, &reason],
        )
        .await
        .expect("events")
        .get(0)
}

#[tokio::test]
async fn enrollment_makes_sign_in_need_a_one_time_second_factor() {
    let app = app_with_key().await;
    let admin = app.create_admin().await;
    let user = app.create_user().await;

    // Start: a base32 secret and its otpauth URL; stored sealed, not in clear.
    let (s, started) = call(&app, "POST", "/api/me/mfa/totp", &user.token, None).await;
    assert_eq!(s, 201, "{started}");
    let secret = started["secret"].as_str().expect("secret").to_string();
    let url = started["otpauth_url"].as_str().expect("url");
    assert!(url.starts_with("otpauth://totp/"), "{url}");
    assert!(url.contains(&format!("secret={secret}")), "{url}");
    let raw = Secret::Encoded(secret.clone()).to_bytes().expect("raw");
    let sealed: Vec<u8> = app
        .db()
        .await
        .query_one(
            "SELECT secret_encrypted FROM user_totp WHERE user_id = $1",
            &[&user.id],
        )
        .await
        .expect("row")
        .get(0);
    assert!(!sealed.windows(raw.len()).any(|w| w == raw.as_slice()));
    assert!(!String::from_utf8_lossy(&sealed).contains(&secret));
    assert_eq!(app.audit_rows("user.mfa_enrollment_started").await.len(), 1);

    // Pending: sign-in still needs only the password.
    let (s, body) = sign_in(&app, &user, json!({})).await;
    assert_eq!(s, 201, "{body}");

    // Confirm: bad shape 400, wrong code 422, then the right one.
    let (s, e) = call(
        &app,
        "POST",
        "/api/me/mfa/totp/confirm",
        &user.token,
        Some(json!({"code": "12ab56"})),
    )
    .await;
    assert_error(s, &e, 400, "BAD_REQUEST");
    let current = code(&secret, 0);
    let wrong = if current == "000000" {
        "111111"
    } else {
        "000000"
    };
    let (s, e) = call(
        &app,
        "POST",
        "/api/me/mfa/totp/confirm",
        &user.token,
        Some(json!({"code": wrong})),
    )
    .await;
    assert_error(s, &e, 422, "UNPROCESSABLE");
    let (s, confirmed) = call(
        &app,
        "POST",
        "/api/me/mfa/totp/confirm",
        &user.token,
        Some(json!({"code": current})),
    )
    .await;
    assert_eq!(s, 200, "{confirmed}");
    let recovery: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|c| c.as_str().expect("code").to_string())
        .collect();
    assert_eq!(recovery.len(), 10);
    let stored: Vec<String> = app
        .db()
        .await
        .query(
            "SELECT code_hash FROM mfa_recovery_codes WHERE user_id = $1",
            &[&user.id],
        )
        .await
        .expect("codes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored.len(), 10);
    assert!(
        recovery.iter().all(|c| !stored.contains(c)),
        "stored hashed"
    );
    let (_, me) = call(&app, "GET", "/api/me", &user.token, None).await;
    assert_eq!(me["mfa_enrolled"], true, "{me}");
    assert_eq!(app.audit_rows("user.mfa_enrolled").await.len(), 1);
    // Enrolling again while enrolled is 409.
    let (s, e) = call(&app, "POST", "/api/me/mfa/totp", &user.token, None).await;
    assert_error(s, &e, 409, "CONFLICT");

    // Sign-in: no code → MFA_REQUIRED; a wrong one → UNAUTHORIZED, recorded.
    let (s, e) = sign_in(&app, &user, json!({})).await;
    assert_error(s, &e, 401, "MFA_REQUIRED");
    let (s, e) = sign_in(&app, &user, json!({"totp_code": wrong})).await;
    assert_error(s, &e, 401, "UNAUTHORIZED");
    assert_eq!(failed_events(&app, &user.id, "bad_mfa_code").await, 1);
    let (s, e) = sign_in(
        &app,
        &user,
        json!({"totp_code": current, "recovery_code": recovery[0]}),
    )
    .await;
    assert_error(s, &e, 400, "BAD_REQUEST");
    // The code that confirmed the enrollment was used: it does not sign in.
    let (s, e) = sign_in(&app, &user, json!({"totp_code": current})).await;
    assert_error(s, &e, 401, "UNAUTHORIZED");
    // The next step's code (within the ±1 step window) signs in once; replayed, it is refused.
    let next = code(&secret, 1);
    let (s, body) = sign_in(&app, &user, json!({"totp_code": next})).await;
    assert_eq!(s, 201, "{body}");
    assert!(body["token"]
        .as_str()
        .is_some_and(|t| t.starts_with("wps_")));
    let (s, e) = sign_in(&app, &user, json!({"totp_code": next})).await;
    assert_error(s, &e, 401, "UNAUTHORIZED");
    // A stale code (far outside the window) is refused.
    let (s, e) = sign_in(&app, &user, json!({"totp_code": code(&secret, -10)})).await;
    assert_error(s, &e, 401, "UNAUTHORIZED");

    // Recovery codes: each once, in any case and with or without the dash.
    let (s, body) = sign_in(&app, &user, json!({"recovery_code": recovery[0]})).await;
    assert_eq!(s, 201, "{body}");
    let (s, e) = sign_in(&app, &user, json!({"recovery_code": recovery[0]})).await;
    assert_error(s, &e, 401, "UNAUTHORIZED");
    let variant = recovery[1].to_uppercase().replace('-', "");
    let (s, body) = sign_in(&app, &user, json!({"recovery_code": variant})).await;
    assert_eq!(s, 201, "{body}");

    // Stats and search see the enrollment.
    let (s, stats) = send(&app, "GET", "/stats", &admin.key, None).await;
    assert_eq!(s, 200, "{stats}");
    assert_eq!(stats["mfa"]["enrolled_users"], 1, "{stats}");
    let total = stats["total_users"].as_f64().expect("total");
    let rate = stats["mfa"]["enrollment_rate"].as_f64().expect("rate");
    assert!((rate - 1.0 / total).abs() < 1e-9, "{stats}");
    let (s, found) = send(
        &app,
        "POST",
        "/users/search",
        &admin.key,
        Some(json!({"filters": {"mfa_enrolled": true}})),
    )
    .await;
    assert_eq!(s, 200, "{found}");
    let ids: Vec<&str> = found["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|u| u["id"].as_str())
        .collect();
    assert_eq!(ids, vec![user.id.as_str()]);

    // Only the user's own session manages MFA.
    let (s, e) = call(&app, "POST", "/api/me/mfa/totp", &admin.key, None).await;
    assert_error(s, &e, 403, "FORBIDDEN");

    // Removal needs a valid code: a wrong one is 422 and changes nothing; a recovery code works.
    let (s, e) = call(
        &app,
        "DELETE",
        "/api/me/mfa/totp",
        &user.token,
        Some(json!({"code": recovery[0]})),
    )
    .await;
    assert_error(s, &e, 422, "UNPROCESSABLE");
    let (s, body) = call(
        &app,
        "DELETE",
        "/api/me/mfa/totp",
        &user.token,
        Some(json!({"code": recovery[2]})),
    )
    .await;
    assert_eq!(s, 204, "{body}");
    assert_eq!(app.audit_rows("user.mfa_disabled").await.len(), 1);
    let (s, body) = sign_in(&app, &user, json!({})).await;
    assert_eq!(s, 201, "{body}");
    let (_, me) = call(&app, "GET", "/api/me", &user.token, None).await;
    assert_eq!(me["mfa_enrolled"], false, "{me}");
    let leftover: i64 = app
        .db()
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM user_totp WHERE user_id = $1) \
                  + (SELECT count(*) FROM mfa_recovery_codes WHERE user_id = $1)",
            &[&user.id],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(leftover, 0);
    let (s, e) = call(
        &app,
        "DELETE",
        "/api/me/mfa/totp",
        &user.token,
        Some(json!({"code": "123456"})),
    )
    .await;
    assert_error(s, &e, 404, "NOT_FOUND");
}

#[tokio::test]
async fn mfa_required_confines_sessions_of_users_not_enrolled() {
    let app = app_with_key().await;
    let admin = app.create_admin().await;
    let user = app.create_user().await;
    let (s, body) = send(
        &app,
        "PATCH",
        "/config",
        &admin.key,
        Some(json!({"mfa_required": true})),
    )
    .await;
    assert_eq!(s, 200, "{body}");

    // The existing session reaches /api/me and /api/me/mfa/*, nothing else.
    let (s, me) = call(&app, "GET", "/api/me", &user.token, None).await;
    assert_eq!(s, 200, "{me}");
    let (s, e) = json_of(
        app.post("/api/runs")
            .bearer_auth(&user.token)
            .json(&json!({"name": "x", "credits": 0}))
            .send()
            .await
            .expect("run"),
    )
    .await;
    assert_error(s, &e, 403, "MFA_ENROLLMENT_REQUIRED");
    let (s, e) = call(&app, "POST", "/api/me/invitation-codes", &user.token, None).await;
    assert_error(s, &e, 403, "MFA_ENROLLMENT_REQUIRED");
    // A fresh sign-in gets a session just as confined.
    let (s, signed) = sign_in(&app, &user, json!({})).await;
    assert_eq!(s, 201, "{signed}");
    let fresh = signed["token"].as_str().expect("token").to_string();
    let (s, e) = call(&app, "POST", "/api/me/invitation-codes", &fresh, None).await;
    assert_error(s, &e, 403, "MFA_ENROLLMENT_REQUIRED");
    // API keys are not sessions: the admin's key still works.
    let (s, body) = send(&app, "GET", "/stats", &admin.key, None).await;
    assert_eq!(s, 200, "{body}");

    // Enrolling through the allowed paths lifts the gate.
    enroll(&app, &user).await;
    let (s, body) = call(&app, "POST", "/api/me/invitation-codes", &user.token, None).await;
    assert_eq!(s, 201, "{body}");

    // Turning the setting off lifts it for everyone.
    let other = app.create_user().await;
    let (s, e) = call(&app, "POST", "/api/me/invitation-codes", &other.token, None).await;
    assert_error(s, &e, 403, "MFA_ENROLLMENT_REQUIRED");
    send(
        &app,
        "PATCH",
        "/config",
        &admin.key,
        Some(json!({"mfa_required": false})),
    )
    .await;
    let (s, body) = call(&app, "POST", "/api/me/invitation-codes", &other.token, None).await;
    assert_eq!(s, 201, "{body}");
}

#[tokio::test]
async fn an_admin_resets_a_users_mfa() {
    let app = app_with_key().await;
    let admin = app.create_admin().await;
    let user = app.create_user().await;
    enroll(&app, &user).await;
    let (s, e) = sign_in(&app, &user, json!({})).await;
    assert_error(s, &e, 401, "MFA_REQUIRED");

    let path = format!("/users/{}/mfa", user.id);
    let (s, e) = json_of(
        app.delete(&format!("/api/admin{path}"))
            .bearer_auth(&user.token)
            .send()
            .await
            .expect("delete"),
    )
    .await;
    assert_error(s, &e, 403, "FORBIDDEN");
    let (s, e) = send(
        &app,
        "DELETE",
        &format!("/users/usr_{}/mfa", ulid::Ulid::new()),
        &admin.key,
        None,
    )
    .await;
    assert_error(s, &e, 404, "NOT_FOUND");
    let (s, body) = send(&app, "DELETE", &path, &admin.key, None).await;
    assert_eq!(s, 204, "{body}");
    let audit = app.audit_rows("user.mfa_reset").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["actor_id"], admin.id.as_str());
    assert_eq!(audit[0]["resource_id"], user.id.as_str());
    let (s, body) = sign_in(&app, &user, json!({})).await;
    assert_eq!(s, 201, "{body}");
    let (_, me) = call(&app, "GET", "/api/me", &user.token, None).await;
    assert_eq!(me["mfa_enrolled"], false, "{me}");
    // Again: nothing to remove, 204, no second audit row.
    let (s, _) = send(&app, "DELETE", &path, &admin.key, None).await;
    assert_eq!(s, 204);
    assert_eq!(app.audit_rows("user.mfa_reset").await.len(), 1);
}

#[tokio::test]
async fn without_a_secret_key_enrollment_is_refused() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let (s, e) = call(&app, "POST", "/api/me/mfa/totp", &user.token, None).await;
    assert_error(s, &e, 422, "UNPROCESSABLE");
    let rows: i64 = app
        .db()
        .await
        .query_one("SELECT count(*) FROM user_totp", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn rotate_secrets_moves_totp_secrets_to_the_new_key() {
    const NEW: &str = "the next mfa key";
    let app = app_with_key().await;
    let user = app.create_user().await;
    let (secret, _) = enroll(&app, &user).await;
    let rotating = SecretKey::from_text(NEW)
        .expect("key")
        .with_previous(KEY)
        .expect("previous");
    let report = watchpost_admin::email::rotate_secrets(&app.pool, &rotating)
        .await
        .expect("rotate");
    assert_eq!(report.reencrypted, 1);
    let sealed: Vec<u8> = app
        .db()
        .await
        .query_one(
            "SELECT secret_encrypted FROM user_totp WHERE user_id = $1",
            &[&user.id],
        )
        .await
        .expect("row")
        .get(0);
    let opened = SecretKey::from_text(NEW)
        .expect("key")
        .decrypt(watchpost_admin::auth::mfa::TOTP_PURPOSE, &sealed)
        .expect("the new key alone opens it");
    assert_eq!(
        opened,
        Secret::Encoded(secret).to_bytes().expect("raw secret")
    );
}

#[tokio::test]
async fn openapi_documents_mfa_and_run_lifecycle_routes() {
    let app = TestApp::spawn().await;
    let doc = app.openapi().await;
    let paths = &doc["paths"];
    for (path, method) in [
        ("/api/me/mfa/totp", "post"),
        ("/api/me/mfa/totp", "delete"),
        ("/api/me/mfa/totp/confirm", "post"),
        ("/api/admin/users/{id}/mfa", "delete"),
        ("/api/runs/{id}", "patch"),
        ("/api/admin/runs/{id}", "patch"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    assert_eq!(
        paths["/api/admin/users/{id}/mfa"]["delete"]["parameters"][0]["schema"]["pattern"],
        "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$"
    );
    assert_eq!(
        paths["/api/runs/{id}"]["patch"]["parameters"][0]["schema"]["pattern"],
        "^run_[0-7][0-9A-HJKMNP-TV-Z]{25}$"
    );
    assert!(paths["/api/runs/{id}"]["patch"]["responses"]["409"].is_object());
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["PatchRun"]["properties"]["status"]["pattern"],
        "^(running|succeeded|failed|cancelled)$"
    );
    assert_eq!(
        schemas["PatchRun"]["properties"]["error"]["maxLength"],
        4000
    );
    assert_eq!(
        schemas["ConfirmTotp"]["properties"]["code"]["pattern"],
        "^[0-9]{6}$"
    );
    assert_eq!(
        schemas["SignInRequest"]["properties"]["totp_code"]["pattern"],
        "^[0-9]{6}$"
    );
    let codes = schemas["ErrorCode"].to_string();
    assert!(
        codes.contains("MFA_REQUIRED") && codes.contains("MFA_ENROLLMENT_REQUIRED"),
        "{codes}"
    );
}
