//! Deleting what has history: users are anonymised, organizations archived, and the erasure
//! reaches the audit log (crypto-shredding) while its hash chain still verifies.

use serde_json::{json, Value};
use watchpost_admin::email::SecretKey;

use crate::common::{
    assert_error, json_of, seed_member, seed_org, send, TestAdmin, TestApp, PASSWORD,
};

const PASSPHRASE: &str = "erasure test passphrase";

async fn app_with_key() -> TestApp {
    TestApp::builder()
        .configure(|c| c.secret_key = Some(SecretKey::from_text(PASSPHRASE).expect("key")))
        .spawn()
        .await
}

async fn create_org(app: &TestApp, admin: &TestAdmin, name: &str) -> String {
    let (s, org) = send(
        app,
        "POST",
        "/organizations",
        &admin.key,
        Some(json!({"name": name, "display_name": name})),
    )
    .await;
    assert_eq!(s, 201, "{org}");
    org["id"].as_str().expect("id").to_string()
}

async fn add_member(app: &TestApp, admin: &TestAdmin, org: &str, user_id: &str) {
    let (s, b) = send(
        app,
        "POST",
        &format!("/organizations/{org}/members"),
        &admin.key,
        Some(json!({"user_id": user_id, "role": "member"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
}

async fn credit(app: &TestApp, admin: &TestAdmin, org: &str, amount: i64) {
    let (s, b) = send(
        app,
        "POST",
        "/credits/adjust",
        &admin.key,
        Some(json!({"organization_id": org, "credits_amount": amount, "description": "grant"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
}

async fn sign_in(app: &TestApp, body: Value) -> (u16, Value) {
    json_of(
        app.post("/api/auth/sessions")
            .header("user-agent", "erasure-test-agent/1.0")
            .json(&body)
            .send()
            .await
            .expect("sign in"),
    )
    .await
}

async fn count(app: &TestApp, sql: &str, id: &str) -> i64 {
    app.db()
        .await
        .query_one(sql, &[&id])
        .await
        .expect("count")
        .get(0)
}

/// Every organization's balance equals the sum of its ledger.
async fn assert_balances_equal_ledgers(app: &TestApp) {
    let rows = app
        .db()
        .await
        .query(
            "SELECT o.id, o.credits_balance, \
               COALESCE((SELECT sum(credits_amount) FROM credit_transactions t \
                         WHERE t.organization_id = o.id), 0)::bigint AS total \
             FROM organizations o",
            &[],
        )
        .await
        .expect("ledger query");
    assert!(!rows.is_empty());
    for row in rows {
        let (id, balance, total): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(balance, total, "{id}: balance vs ledger");
    }
}

/// Every audit entry through the list endpoint, all pages.
async fn all_audit_items(app: &TestApp, admin: &TestAdmin) -> Vec<Value> {
    let mut items = Vec::new();
    let mut path = "/audit-logs?limit=500".to_string();
    loop {
        let (s, page) = send(app, "GET", &path, &admin.key, None).await;
        assert_eq!(s, 200, "{page}");
        items.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/audit-logs?limit=500&cursor={c}"),
            None => return items,
        }
    }
}

/// The JSON answers of every list or detail endpoint that could show a user.
async fn every_answer(app: &TestApp, admin: &TestAdmin, user_id: &str, org: &str) -> Vec<Value> {
    let mut answers = Vec::new();
    for path in [
        "/users?limit=100".to_string(),
        format!("/users/{user_id}"),
        format!("/users/{user_id}/sessions"),
        format!("/organizations/{org}/users"),
        format!("/organizations/{org}"),
        "/organizations".to_string(),
        "/invitation-codes".to_string(),
        "/referrals".to_string(),
        "/credits/transactions".to_string(),
        "/api-keys".to_string(),
        format!("/api-keys?user_id={user_id}"),
        "/stats".to_string(),
        "/access-log?limit=100".to_string(),
        format!("/runs?user_id={user_id}"),
    ] {
        let (s, body) = send(app, "GET", &path, &admin.key, None).await;
        assert_eq!(s, 200, "GET {path}: {body}");
        answers.push(json!({"path": path, "status": s, "body": body}));
    }
    let (s, body) = send(
        app,
        "POST",
        "/users/search",
        &admin.key,
        Some(json!({"limit": 100})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    answers.push(body);
    answers.push(Value::Array(all_audit_items(app, admin).await));
    answers
}

#[tokio::test]
async fn deleting_a_user_with_history_anonymises_them_and_erases_them_from_the_audit_log() {
    let app = app_with_key().await;
    let admin = app.create_admin().await;
    let user = app.create_user().await; // audited as user.registered, with email, IP, agent
    let org = create_org(&app, &admin, "erasure-org").await;
    add_member(&app, &admin, &org, &user.id).await;
    credit(&app, &admin, &org, 100).await;

    // History: a run (debits the organization: a ledger row), an invitation code.
    let (s, run) = json_of(
        app.post("/api/runs")
            .bearer_auth(&user.token)
            .json(&json!({"name": "crawl", "credits": 30}))
            .send()
            .await
            .expect("run"),
    )
    .await;
    assert_eq!(s, 201, "{run}");
    let (s, code) = json_of(
        app.post("/api/me/invitation-codes")
            .bearer_auth(&user.token)
            .send()
            .await
            .expect("code"),
    )
    .await;
    assert_eq!(s, 201, "{code}");
    // Sign-in events (one failed, one successful) and a second session.
    let (s, _) = sign_in(
        &app,
        json!({"email": user.email, "password": "wrong password!"}),
    )
    .await;
    assert_eq!(s, 401);
    let (s, session) = sign_in(&app, json!({"email": user.email, "password": PASSWORD})).await;
    assert_eq!(s, 201, "{session}");
    // An admin change with the name in it, and an API key of the user.
    let (s, b) = send(
        &app,
        "PATCH",
        &format!("/users/{}", user.id),
        &admin.key,
        Some(json!({"name": "Ada Erasable"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, key) = send(
        &app,
        "POST",
        "/api-keys",
        &admin.key,
        Some(json!({"name": "svc", "user_id": user.id, "scopes": ["runs"]})),
    )
    .await;
    assert_eq!(s, 201, "{key}");

    // Before: the API shows the email (the search below can fail), the database holds it only
    // in the users table: audit rows keep it sealed.
    let before = serde_json::to_string(&all_audit_items(&app, &admin).await).expect("json");
    assert!(before.contains(&user.email), "audit items show the email");
    assert!(before.contains("Ada Erasable"));
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM audit_log WHERE changes::text LIKE '%' || $1 || '%' \
               OR user_agent IS NOT NULL OR ip IS NOT NULL",
            &user.email,
        )
        .await,
        0,
        "personal fields are stored sealed"
    );
    let balance_before: i64 = app
        .db()
        .await
        .query_one(
            "SELECT credits_balance FROM organizations WHERE id = $1",
            &[&org],
        )
        .await
        .expect("balance")
        .get(0);
    assert_eq!(balance_before, 70);

    let (s, b) = send(
        &app,
        "DELETE",
        &format!("/users/{}", user.id),
        &admin.key,
        None,
    )
    .await;
    assert_eq!(s, 204, "{b}");

    // Anonymised, history kept.
    let (s, u) = send(
        &app,
        "GET",
        &format!("/users/{}", user.id),
        &admin.key,
        None,
    )
    .await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["status"], "deleted");
    assert_eq!(u["name"], Value::Null);
    assert_eq!(u["mfa_enrolled"], false);
    assert_ne!(u["email"], user.email.as_str());
    assert_ne!(u["username"], user.username.as_str());
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM runs WHERE user_id = $1",
            &user.id
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM invitation_codes WHERE user_id = $1",
            &user.id
        )
        .await,
        1
    );
    for (table, sql) in [
        (
            "sessions",
            "SELECT count(*) FROM sessions WHERE user_id = $1",
        ),
        (
            "api_keys",
            "SELECT count(*) FROM api_keys WHERE user_id = $1",
        ),
        (
            "user_data_keys",
            "SELECT count(*) FROM user_data_keys WHERE user_id = $1",
        ),
        (
            "memberships",
            "SELECT count(*) FROM memberships WHERE user_id = $1",
        ),
        (
            "sign_in_events with an IP",
            "SELECT count(*) FROM sign_in_events WHERE user_id = $1 AND ip IS NOT NULL",
        ),
        (
            "users holding the password",
            "SELECT count(*) FROM users WHERE id = $1 AND password_hash IS NOT NULL",
        ),
    ] {
        assert_eq!(count(&app, sql, &user.id).await, 0, "{table}");
    }
    assert!(
        count(
            &app,
            "SELECT count(*) FROM sign_in_events WHERE user_id = $1",
            &user.id
        )
        .await
            >= 1,
        "sign-in events stay (counted by stats), without their IP"
    );
    assert_balances_equal_ledgers(&app).await;
    assert_eq!(
        count(
            &app,
            "SELECT credits_balance FROM organizations WHERE id = $1",
            &org
        )
        .await,
        70
    );

    // Cannot sign in, old session and key refused.
    let (s, _) = sign_in(&app, json!({"email": user.email, "password": PASSWORD})).await;
    assert_eq!(s, 401);
    let (s, _) = json_of(
        app.get("/api/me")
            .bearer_auth(&user.token)
            .send()
            .await
            .expect("me"),
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = json_of(
        app.get("/api/me")
            .bearer_auth(key["key"].as_str().expect("key"))
            .send()
            .await
            .expect("me"),
    )
    .await;
    assert_eq!(s, 401);

    // No answer shows the email, the name or the user agent any more.
    let answers =
        serde_json::to_string(&every_answer(&app, &admin, &user.id, &org).await).expect("json");
    for secret in [
        user.email.as_str(),
        user.username.as_str(),
        "Ada Erasable",
        "erasure-test-agent/1.0",
    ] {
        assert!(
            !answers.contains(secret),
            "{secret} still shown after deletion"
        );
    }
    // The audit entries about the user say what was erased.
    let items = all_audit_items(&app, &admin).await;
    let registered = items
        .iter()
        .find(|i| i["action"] == "user.registered" && i["resource_id"] == user.id.as_str())
        .expect("user.registered");
    assert_eq!(registered["erased"], true);
    assert_eq!(registered["changes"]["email"]["after"], Value::Null);
    assert_eq!(registered["ip"], Value::Null);
    // Entries of others are intact.
    let org_created = items
        .iter()
        .find(|i| i["action"] == "organization.created")
        .expect("organization.created");
    assert_eq!(org_created["erased"], false);
    assert_eq!(org_created["changes"]["name"]["after"], "erasure-org");
    assert_eq!(org_created["ip"], "127.0.0.1");

    // The chain still verifies.
    let (s, v) = send(&app, "GET", "/audit-logs/verify", &admin.key, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");

    // A second DELETE changes nothing; a deleted user cannot be changed.
    let deleted_rows = app.audit_rows("user.deleted").await.len();
    assert_eq!(deleted_rows, 1);
    let (s, _) = send(
        &app,
        "DELETE",
        &format!("/users/{}", user.id),
        &admin.key,
        None,
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(app.audit_rows("user.deleted").await.len(), 1);
    let (s, e) = send(
        &app,
        "PATCH",
        &format!("/users/{}", user.id),
        &admin.key,
        Some(json!({"status": "active"})),
    )
    .await;
    assert_error(s, &e, 409, "CONFLICT");
    let (s, e) = send(
        &app,
        "PATCH",
        &format!("/users/{}", admin.id),
        &admin.key,
        Some(json!({"status": "deleted"})),
    )
    .await;
    assert_error(s, &e, 422, "UNPROCESSABLE");
    // Listed as deleted, not as active.
    let (s, page) = send(&app, "GET", "/users?status=active", &admin.key, None).await;
    assert_eq!(s, 200);
    assert!(!page.to_string().contains(&user.id));
    let (s, page) = send(&app, "GET", "/users?status=deleted", &admin.key, None).await;
    assert_eq!(s, 200);
    assert!(page.to_string().contains(&user.id));
}

#[tokio::test]
async fn deleting_an_organization_with_history_archives_it_and_blocks_its_members() {
    let app = app_with_key().await;
    let admin = app.create_admin().await;
    let member = app.create_user().await;
    let org = create_org(&app, &admin, "archive-me").await;
    add_member(&app, &admin, &org, &member.id).await;
    credit(&app, &admin, &org, 40).await;

    let (s, b) = send(
        &app,
        "DELETE",
        &format!("/organizations/{org}"),
        &admin.key,
        None,
    )
    .await;
    assert_eq!(s, 204, "{b}");
    let (s, o) = send(
        &app,
        "GET",
        &format!("/organizations/{org}"),
        &admin.key,
        None,
    )
    .await;
    assert_eq!(s, 200, "{o}");
    assert_eq!(o["status"], "archived");
    assert_eq!(o["enabled"], false);
    assert!(o["archived_at"].is_string());
    assert_eq!(o["credits_balance"], 40);
    assert_balances_equal_ledgers(&app).await;
    assert_eq!(app.audit_rows("organization.archived").await.len(), 1);
    assert!(app.audit_rows("organization.deleted").await.is_empty());

    // Its members are blocked: their token and their sign-in.
    let (s, _) = json_of(
        app.get("/api/me")
            .bearer_auth(&member.token)
            .send()
            .await
            .expect("me"),
    )
    .await;
    assert_eq!(s, 401);
    let (s, e) = sign_in(&app, json!({"email": member.email, "password": PASSWORD})).await;
    assert_error(s, &e, 403, "FORBIDDEN");

    // Archived is final: PATCH is 409, DELETE again is 204 and changes nothing.
    let (s, e) = send(
        &app,
        "PATCH",
        &format!("/organizations/{org}"),
        &admin.key,
        Some(json!({"enabled": true})),
    )
    .await;
    assert_error(s, &e, 409, "CONFLICT");
    let (s, _) = send(
        &app,
        "DELETE",
        &format!("/organizations/{org}"),
        &admin.key,
        None,
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(app.audit_rows("organization.archived").await.len(), 1);

    // Removed from it, the member signs in again.
    let (s, _) = send(
        &app,
        "DELETE",
        &format!("/organizations/{org}/members/{}", member.id),
        &admin.key,
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, b) = sign_in(&app, json!({"email": member.email, "password": PASSWORD})).await;
    assert_eq!(s, 201, "{b}");

    // Without history: a hard delete.
    let empty = create_org(&app, &admin, "no-history").await;
    let (s, _) = send(
        &app,
        "DELETE",
        &format!("/organizations/{empty}"),
        &admin.key,
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, e) = send(
        &app,
        "GET",
        &format!("/organizations/{empty}"),
        &admin.key,
        None,
    )
    .await;
    assert_error(s, &e, 404, "NOT_FOUND");
}

#[tokio::test]
async fn rotating_the_secret_key_wraps_and_rewraps_the_personal_data_keys() {
    // A server without a secret key stores the data keys unwrapped.
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM user_data_keys WHERE user_id = $1 AND NOT wrapped",
            &user.id
        )
        .await,
        1
    );
    let email_shown = |rows: &[Value]| {
        serde_json::to_string(rows)
            .expect("json")
            .contains(&user.email)
    };
    assert!(email_shown(&app.audit_rows("user.registered").await));

    // rotate-secrets wraps them with the key...
    let first = SecretKey::from_text("first").expect("key");
    let report = watchpost_admin::email::rotate_secrets(&app.pool, &first)
        .await
        .expect("rotate");
    assert!(report.data_keys_rewrapped >= 1, "{report:?}");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM user_data_keys WHERE user_id = $1 AND wrapped",
            &user.id
        )
        .await,
        1
    );
    let reveal = |key: Option<SecretKey>| {
        let app = &app;
        async move {
            let conn = app.db().await;
            let rows = conn
                .query(
                    &format!(
                        "SELECT {} FROM audit_log WHERE action = 'user.registered'",
                        watchpost_admin::audit::AuditEntry::COLUMNS
                    ),
                    &[],
                )
                .await
                .expect("rows");
            let mut entries = rows
                .iter()
                .map(watchpost_admin::audit::AuditEntry::from_row)
                .collect::<Result<Vec<_>, _>>()
                .expect("entries");
            watchpost_admin::personal::reveal(&conn, key.as_ref(), &mut entries)
                .await
                .expect("reveal");
            serde_json::to_string(&entries).expect("json")
        }
    };
    assert!(reveal(Some(first.clone())).await.contains(&user.email));
    assert!(!reveal(None).await.contains(&user.email));

    // ...and re-wraps them with the next one; the previous key is then no longer needed.
    let second = SecretKey::from_text("second")
        .expect("key")
        .with_previous("first")
        .expect("previous");
    let report = watchpost_admin::email::rotate_secrets(&app.pool, &second)
        .await
        .expect("rotate");
    assert!(report.data_keys_rewrapped >= 1, "{report:?}");
    let only_second = SecretKey::from_text("second").expect("key");
    assert!(reveal(Some(only_second)).await.contains(&user.email));
    assert!(!reveal(Some(first)).await.contains(&user.email));
    let report = watchpost_admin::email::rotate_secrets(&app.pool, &second)
        .await
        .expect("rotate again");
    assert_eq!(report.data_keys_rewrapped, 0, "{report:?}");
    assert!(report.data_keys_already_current >= 1, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_and_deletion_keep_the_chain_and_leave_nothing_personal() {
    let app = TestApp::builder()
        .configure(|c| {
            c.secret_key = Some(SecretKey::from_text(PASSPHRASE).expect("key"));
            c.postgres.pool_size = 16;
            c.admin.rate_limit_per_minute = 100_000;
            c.admin.rate_limit_per_hour = 100_000;
        })
        .spawn()
        .await;
    let admin = app.create_admin().await;
    let org = seed_org(&app).await;
    // Seeded without an audit row, as users from before sealed audit fields: no data key yet,
    // so the concurrent writers below race to create it.
    let (user_id, token) = seed_member(&app, &org).await;
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM user_data_keys WHERE user_id = $1",
            &user_id
        )
        .await,
        0
    );
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (base, key, uid) = (app.base_url.clone(), admin.key.clone(), user_id.clone());
        tasks.push(tokio::spawn(async move {
            let r = reqwest::Client::new()
                .patch(format!("{base}/api/admin/users/{uid}"))
                .bearer_auth(key)
                .json(&json!({"name": format!("Concurrent Name {i}")}))
                .send()
                .await
                .expect("patch");
            ("patch", r.status().as_u16())
        }));
        let (base, token) = (app.base_url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(format!("{base}/api/me/invitation-codes"))
                .bearer_auth(token)
                .send()
                .await
                .expect("mint");
            ("mint", r.status().as_u16())
        }));
    }
    let (base, key, uid) = (app.base_url.clone(), admin.key.clone(), user_id.clone());
    tasks.push(tokio::spawn(async move {
        let r = reqwest::Client::new()
            .delete(format!("{base}/api/admin/users/{uid}"))
            .bearer_auth(key)
            .send()
            .await
            .expect("delete");
        ("delete", r.status().as_u16())
    }));
    for task in tasks {
        let (what, status) = task.await.expect("task");
        match what {
            // Before the deletion 200; after it 409 (anonymised: a code was minted first) or
            // 404 (hard-deleted: nothing was).
            "patch" => assert!([200, 404, 409].contains(&status), "patch: {status}"),
            // Minted before the deletion (201, history), or refused after it (401), or over
            // the per-user cap (422).
            "mint" => assert!([201, 401, 422].contains(&status), "mint: {status}"),
            _ => assert_eq!(status, 204, "delete"),
        }
    }
    let (s, u) = send(&app, "GET", &format!("/users/{user_id}"), &admin.key, None).await;
    if s == 200 {
        assert_eq!(u["status"], "deleted");
    } else {
        assert_error(s, &u, 404, "NOT_FOUND");
    }
    let items = serde_json::to_string(&all_audit_items(&app, &admin).await).expect("json");
    assert!(!items.contains("Concurrent Name"), "a name survived");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM user_data_keys WHERE user_id = $1",
            &user_id
        )
        .await,
        0
    );
    let (s, v) = send(&app, "GET", "/audit-logs/verify", &admin.key, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
}
