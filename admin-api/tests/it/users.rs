//! `/api/admin/users…` and `/api/admin/sessions/revoke-all`.

use std::collections::{HashMap, HashSet};

use crate::common::{assert_error, json_of, send, TestAdmin, TestApp, PASSWORD};
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

/// Inserts users straight into the database (fast seeding); returns their ids.
async fn seed_users(app: &TestApp, tag: &str, n: usize, created_at: Option<&str>) -> Vec<String> {
    let conn = app.db().await;
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("usr_{}", ulid::Ulid::new());
        let name = format!("{tag}{i:04}");
        conn.execute(
            "INSERT INTO users (id, email, username, created_at) \
             VALUES ($1, $2 || '@example.com', $2, COALESCE($3::text::timestamptz, now()))",
            &[&id, &name, &created_at],
        )
        .await
        .expect("seed user");
        ids.push(id);
    }
    ids
}

fn ids_of(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|u| u["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test]
async fn every_user_endpoint_requires_a_platform_admin() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let id = &user.id;
    let endpoints: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/users".into(), None),
        (
            "POST",
            "/users".into(),
            Some(json!({"email": "x@example.com", "username": "xxx"})),
        ),
        ("GET", format!("/users/{id}"), None),
        (
            "PATCH",
            format!("/users/{id}"),
            Some(json!({"locale": "fr"})),
        ),
        ("DELETE", format!("/users/{id}"), None),
        ("POST", "/users/search".into(), Some(json!({}))),
        (
            "POST",
            "/users/bulk-disable".into(),
            Some(json!({"user_ids": [id], "reason": "x"})),
        ),
        (
            "POST",
            "/users/impersonate".into(),
            Some(json!({"user_id": id, "reason": "x"})),
        ),
        (
            "POST",
            "/sessions/revoke-all".into(),
            Some(json!({"reason": "x"})),
        ),
    ];
    for (method, path, body) in endpoints {
        let (status, err) = send(&app, method, &path, "", body.clone()).await;
        assert_error(status, &err, 401, "UNAUTHORIZED");
        let (status, err) = send(&app, method, &path, "wpk_not-a-real-key", body.clone()).await;
        assert_error(status, &err, 401, "UNAUTHORIZED");
        let (status, err) = send(&app, method, &path, &user.token, body).await;
        assert_error(status, &err, 403, "FORBIDDEN");
    }
    // Nothing above changed the user.
    let (status, me_body) = me(&app, &user.token).await;
    assert_eq!(status, 200, "{me_body}");
    assert_eq!(me_body["status"], "active");
    assert!(app.audit_rows("user.updated").await.is_empty());
}

#[tokio::test]
async fn create_get_patch_delete_with_audit() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let key = &admin.key;

    let (status, created) = send(
        &app,
        "POST",
        "/users",
        key,
        Some(json!({"email": "Bob@Example.com", "username": "bob", "name": "Bob", "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("usr_"));
    assert_eq!(created["role"], "user");
    assert_eq!(created["status"], "active");
    assert!(created.get("password_hash").is_none());
    let rows = app.audit_rows("user.created").await;
    let row = rows
        .iter()
        .find(|r| r["resource_id"] == id.as_str())
        .expect("audit row");
    assert_eq!(row["actor_id"], admin.id.as_str());
    assert_eq!(row["changes"]["email"]["after"], "Bob@Example.com");
    assert_eq!(row["changes"]["email"]["before"], Value::Null);
    // The password set by the admin works.
    let (status, signed) = json_of(
        app.post("/api/auth/sessions")
            .json(&json!({"username": "bob", "password": PASSWORD}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, 201, "{signed}");
    let bob_token = signed["token"].as_str().expect("token").to_string();

    // Bad input.
    for (body, want, code) in [
        (
            json!({"email": "nope", "username": "bobby"}),
            400,
            "BAD_REQUEST",
        ),
        (
            json!({"email": "b@example.com", "username": "b!"}),
            400,
            "BAD_REQUEST",
        ),
        (
            json!({"email": "b@example.com", "username": "bobby", "role": "god"}),
            400,
            "BAD_REQUEST",
        ),
        (
            json!({"email": "b@example.com", "username": "bobby", "extra": 1}),
            400,
            "BAD_REQUEST",
        ),
        (
            json!({"email": "b@example.com", "username": "bobby", "password": "short"}),
            422,
            "UNPROCESSABLE",
        ),
        (
            json!({"email": "BOB@example.com", "username": "bobby"}),
            409,
            "CONFLICT",
        ),
        (
            json!({"email": "b@example.com", "username": "BOB"}),
            409,
            "CONFLICT",
        ),
    ] {
        let (status, err) = send(&app, "POST", "/users", key, Some(body.clone())).await;
        assert_error(status, &err, want, code);
    }
    assert_eq!(
        app.audit_rows("user.created").await.len(),
        2,
        "one for the admin, one for bob"
    );

    // GET with organizations and roles.
    let conn = app.db().await;
    conn.execute(
        "INSERT INTO organizations (id, name, display_name) VALUES ('org_01JD0000000000000000000000', 'acme', 'Acme')",
        &[],
    )
    .await
    .expect("org");
    conn.execute(
        "INSERT INTO memberships (organization_id, user_id, role) VALUES ('org_01JD0000000000000000000000', $1, 'admin')",
        &[&id],
    )
    .await
    .expect("membership");
    let (status, got) = send(&app, "GET", &format!("/users/{id}"), key, None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["username"], "bob");
    assert_eq!(got["organizations"][0]["name"], "acme");
    assert_eq!(got["organizations"][0]["role"], "admin");
    for missing in [
        "usr_01JD0000000000000000000000",
        "nope",
        "org_01JD0000000000000000000000",
    ] {
        let (status, err) = send(&app, "GET", &format!("/users/{missing}"), key, None).await;
        assert_error(status, &err, 404, "NOT_FOUND");
    }

    // PATCH: changed fields only in the audit row.
    let (status, patched) = send(
        &app,
        "PATCH",
        &format!("/users/{id}"),
        key,
        Some(json!({"email_verified": true, "locale": "en-GB", "timezone": "Europe/Paris", "username": "bob2"})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["email_verified"], true);
    assert_eq!(patched["locale"], "en-GB");
    assert_eq!(patched["timezone"], "Europe/Paris");
    let rows = app.audit_rows("user.updated").await;
    assert_eq!(rows.len(), 1);
    let changes = rows[0]["changes"].as_object().expect("changes");
    let mut fields: Vec<&str> = changes.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["email_verified", "locale", "timezone", "username"]);
    assert_eq!(
        changes["username"],
        json!({"before": "bob", "after": "bob2"})
    );
    // The same patch again changes nothing and writes no audit row.
    let (status, _) = send(
        &app,
        "PATCH",
        &format!("/users/{id}"),
        key,
        Some(json!({"locale": "en-GB"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(app.audit_rows("user.updated").await.len(), 1);

    for (body, want, code) in [
        (json!({"status": "sleeping"}), 400, "BAD_REQUEST"),
        (json!({"email": "not-an-email"}), 400, "BAD_REQUEST"),
        (json!({"locale": "en GB"}), 400, "BAD_REQUEST"),
        (
            json!({"timezone": "Europe/Paris; DROP"}),
            400,
            "BAD_REQUEST",
        ),
        (json!({"role": "root"}), 400, "BAD_REQUEST"),
        (json!({"unknown": 1}), 400, "BAD_REQUEST"),
        (json!({"email": admin.email}), 409, "CONFLICT"),
    ] {
        let (status, err) = send(
            &app,
            "PATCH",
            &format!("/users/{id}"),
            key,
            Some(body.clone()),
        )
        .await;
        assert_error(status, &err, want, code);
    }
    let (status, err) = send(
        &app,
        "PATCH",
        "/users/usr_01JD0000000000000000000000",
        key,
        Some(json!({"locale": "fr"})),
    )
    .await;
    assert_error(status, &err, 404, "NOT_FOUND");
    // An admin cannot lock themself out.
    let (status, err) = send(
        &app,
        "PATCH",
        &format!("/users/{}", admin.id),
        key,
        Some(json!({"status": "disabled"})),
    )
    .await;
    assert_error(status, &err, 422, "UNPROCESSABLE");
    assert_eq!(
        app.audit_rows("user.updated").await.len(),
        1,
        "refused patches audit nothing"
    );

    // Disabling takes effect on the next request and refuses sign-in.
    let (status, _) = me(&app, &bob_token).await;
    assert_eq!(status, 200);
    let (status, patched) = send(
        &app,
        "PATCH",
        &format!("/users/{id}"),
        key,
        Some(json!({"status": "disabled"})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["status"], "disabled");
    let (status, err) = me(&app, &bob_token).await;
    assert_error(status, &err, 401, "UNAUTHORIZED");
    let (status, err) = json_of(
        app.post("/api/auth/sessions")
            .json(&json!({"username": "bob2", "password": PASSWORD}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_error(status, &err, 403, "FORBIDDEN");
    let rows = app.audit_rows("user.updated").await;
    assert_eq!(
        rows[1]["changes"]["status"],
        json!({"before": "active", "after": "disabled"})
    );

    // DELETE (no history: a hard delete).
    let (status, _) = send(&app, "DELETE", &format!("/users/{id}"), key, None).await;
    assert_eq!(status, 204);
    let (status, err) = send(&app, "GET", &format!("/users/{id}"), key, None).await;
    assert_error(status, &err, 404, "NOT_FOUND");
    let (status, err) = send(&app, "DELETE", &format!("/users/{id}"), key, None).await;
    assert_error(status, &err, 404, "NOT_FOUND");
    let (status, err) = send(&app, "DELETE", &format!("/users/{}", admin.id), key, None).await;
    assert_error(status, &err, 422, "UNPROCESSABLE");
    let rows = app.audit_rows("user.deleted").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["resource_id"], id.as_str());
    // Deleting the user erased their personal fields from the audit log.
    assert_eq!(
        rows[0]["changes"]["username"],
        json!({"before": null, "after": null})
    );
}

#[tokio::test]
async fn list_filters_and_limits() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let key = &admin.key;
    let alpha = seed_users(&app, "alpha", 3, None).await;
    let beta = seed_users(&app, "beta", 2, None).await;
    let conn = app.db().await;
    conn.execute(
        "UPDATE users SET status = 'disabled', name = 'Percent 100% Sure' WHERE id = $1",
        &[&beta[0]],
    )
    .await
    .expect("disable");
    conn.execute(
        "INSERT INTO organizations (id, name, display_name) VALUES ('org_01JD0000000000000000000000', 'acme', 'Acme')",
        &[],
    )
    .await
    .expect("org");
    conn.execute(
        "INSERT INTO memberships (organization_id, user_id, role) VALUES ('org_01JD0000000000000000000000', $1, 'member')",
        &[&alpha[1]],
    )
    .await
    .expect("membership");

    let set = |page: &Value| ids_of(page).into_iter().collect::<HashSet<_>>();
    let (status, page) = send(&app, "GET", "/users?q=ALPHA", key, None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(set(&page), alpha.iter().cloned().collect());
    let (_, page) = send(&app, "GET", "/users?status=disabled", key, None).await;
    assert_eq!(ids_of(&page), vec![beta[0].clone()]);
    let (_, page) = send(&app, "GET", "/users?q=100%25", key, None).await;
    assert_eq!(ids_of(&page), vec![beta[0].clone()], "% is literal");
    let (_, page) = send(&app, "GET", "/users?q=alpha_", key, None).await;
    assert!(ids_of(&page).is_empty(), "_ is literal: {page}");
    let (_, page) = send(
        &app,
        "GET",
        "/users?organization_id=org_01JD0000000000000000000000",
        key,
        None,
    )
    .await;
    assert_eq!(ids_of(&page), vec![alpha[1].clone()]);
    let (_, page) = send(&app, "GET", "/users?q=alpha&limit=2", key, None).await;
    assert_eq!(page["items"].as_array().expect("items").len(), 2);
    assert!(page["next_cursor"].is_string());
    let (_, all) = send(&app, "GET", "/users", key, None).await;
    assert_eq!(
        all["items"].as_array().expect("items").len(),
        6,
        "5 seeded + the admin"
    );
    assert_eq!(all["next_cursor"], Value::Null);

    for query in [
        "limit=0",
        "limit=101",
        "limit=x",
        "cursor=garbage!",
        "status=sleeping",
        "nope=1",
    ] {
        let (status, err) = send(&app, "GET", &format!("/users?{query}"), key, None).await;
        assert_error(status, &err, 400, "BAD_REQUEST");
    }
}

#[tokio::test]
async fn paging_under_concurrent_inserts_neither_skips_nor_repeats() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let mut existing = seed_users(&app, "old", 40, None).await;
    // Ties on created_at are broken by id.
    existing.extend(seed_users(&app, "tie", 15, Some("2026-01-01T00:00:00Z")).await);
    existing.push(admin.id.clone());

    let pool = app.pool.clone();
    let writer = tokio::spawn(async move {
        let conn = pool.get().await.expect("conn");
        for i in 0..60 {
            let id = format!("usr_{}", ulid::Ulid::new());
            let name = format!("new{i:04}");
            conn.execute(
                "INSERT INTO users (id, email, username) VALUES ($1, $2 || '@example.com', $2)",
                &[&id, &name],
            )
            .await
            .expect("insert");
            tokio::task::yield_now().await;
        }
    });

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/users?limit=7&cursor={c}"),
            None => "/users?limit=7".to_string(),
        };
        let (status, page) = send(&app, "GET", &path, &admin.key, None).await;
        assert_eq!(status, 200, "{page}");
        for id in ids_of(&page) {
            *seen.entry(id).or_default() += 1;
        }
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 100, "paging does not end");
    }
    writer.await.expect("writer");
    for id in &existing {
        assert_eq!(seen.get(id), Some(&1), "{id} seen {:?} times", seen.get(id));
    }
    assert!(seen.values().all(|n| *n == 1), "an item was repeated");
}

#[tokio::test]
async fn search_filters_sorts_and_pages_every_sort() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let key = &admin.key;
    let ids = seed_users(&app, "s", 12, None).await;
    let conn = app.db().await;
    // Varied activity (some never active, two equal), verification, MFA and creation times.
    for (i, id) in ids.iter().enumerate() {
        let active = match i % 4 {
            0 => None,
            1 => Some(format!("2026-03-0{}T10:00:00Z", 1 + i % 7)),
            2 => Some("2026-02-01T00:00:00Z".to_string()),
            _ => Some(format!("2026-01-1{}T00:00:00.123456Z", i % 10)),
        };
        conn.execute(
            "UPDATE users SET last_active_at = $2::text::timestamptz, email_verified = $3, \
             mfa_enrolled = $4, created_at = '2025-06-01'::timestamptz + $5 * interval '1 day' \
             WHERE id = $1",
            &[&id, &active, &(i % 2 == 0), &(i % 3 == 0), &(i as f64)],
        )
        .await
        .expect("update");
    }
    let rows = conn
        .query(
            // The admin is left out: its own requests move its last_active_at.
            "SELECT id, email, username, created_at, last_active_at FROM users WHERE role = 'user'",
            &[],
        )
        .await
        .expect("users");
    let all: Vec<(String, String, String, i64, Option<i64>)> = rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>("id"),
                r.get::<_, String>("email").to_lowercase(),
                r.get::<_, String>("username").to_lowercase(),
                r.get::<_, chrono::DateTime<chrono::Utc>>("created_at")
                    .timestamp_micros(),
                r.get::<_, Option<chrono::DateTime<chrono::Utc>>>("last_active_at")
                    .map(|t| t.timestamp_micros()),
            )
        })
        .collect();
    assert_eq!(all.len(), 12);

    for field in ["created_at", "last_active_at", "email", "username"] {
        for direction in ["asc", "desc"] {
            let mut expected = all.clone();
            expected.sort_by(|a, b| {
                let ord = match field {
                    "created_at" => a.3.cmp(&b.3),
                    // Never active sorts as the oldest time.
                    "last_active_at" => a.4.unwrap_or(i64::MIN).cmp(&b.4.unwrap_or(i64::MIN)),
                    "email" => a.1.cmp(&b.1),
                    _ => a.2.cmp(&b.2),
                }
                .then_with(|| a.0.cmp(&b.0));
                if direction == "desc" {
                    ord.reverse()
                } else {
                    ord
                }
            });
            let expected: Vec<String> = expected.into_iter().map(|u| u.0).collect();
            let mut got = Vec::new();
            let mut cursor = Value::Null;
            for _ in 0..20 {
                let (status, page) = send(
                    &app,
                    "POST",
                    "/users/search",
                    key,
                    Some(
                        json!({"sort": {"field": field, "direction": direction}, "limit": 3,
                            "cursor": cursor, "filters": {"role": "user"}}),
                    ),
                )
                .await;
                assert_eq!(status, 200, "{field} {direction}: {page}");
                got.extend(ids_of(&page));
                cursor = page["next_cursor"].clone();
                if cursor.is_null() {
                    break;
                }
            }
            assert_eq!(got, expected, "{field} {direction}");
        }
    }

    let search = |body: Value| send(&app, "POST", "/users/search", key, Some(body));
    let (_, page) =
        search(json!({"filters": {"email_verified": true, "mfa_enrolled": true}, "limit": 100}))
            .await;
    let want: HashSet<String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 6 == 0)
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(ids_of(&page).into_iter().collect::<HashSet<_>>(), want);
    let (_, page) =
        search(json!({"filters": {"last_active_after": "2026-02-15T00:00:00Z", "role": "user"}}))
            .await;
    let want: HashSet<String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 4 == 1)
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(ids_of(&page).into_iter().collect::<HashSet<_>>(), want);
    let (_, page) = search(json!({"filters": {"created_after": "2025-06-03T00:00:00Z", "created_before": "2025-06-05T00:00:00Z"}})).await;
    assert_eq!(
        ids_of(&page).into_iter().collect::<HashSet<_>>(),
        ids[2..4].iter().cloned().collect()
    );
    let (_, page) = search(json!({"filters": {"role": "platform_admin"}})).await;
    assert_eq!(ids_of(&page), vec![admin.id.clone()]);
    let (_, page) = search(json!({"query": "s0011", "filters": {"status": "active"}})).await;
    assert_eq!(ids_of(&page), vec![ids[11].clone()]);
    let (_, page) =
        search(json!({"filters": {"organization_id": "org_01JD0000000000000000000000"}})).await;
    assert!(ids_of(&page).is_empty());
    conn.batch_execute(&format!(
        "INSERT INTO organizations (id, name, display_name) \
           VALUES ('org_01JD0000000000000000000000', 'acme', 'Acme'); \
         INSERT INTO memberships (organization_id, user_id, role) \
           VALUES ('org_01JD0000000000000000000000', '{}', 'member'), \
                  ('org_01JD0000000000000000000000', '{}', 'owner')",
        ids[3], ids[5]
    ))
    .await
    .expect("memberships");
    let (_, page) = search(
        json!({"filters": {"organization_id": "org_01JD0000000000000000000000",
                                              "status": "active"},
                                  "sort": {"field": "username", "direction": "asc"}}),
    )
    .await;
    assert_eq!(ids_of(&page), vec![ids[3].clone(), ids[5].clone()]);

    // A cursor made for one sort is refused by another.
    let (_, page) = search(json!({"sort": {"field": "email"}, "limit": 2})).await;
    let cursor = page["next_cursor"].clone();
    for body in [
        json!({"sort": {"field": "username"}, "cursor": cursor}),
        json!({"sort": {"field": "email", "direction": "asc"}, "cursor": cursor}),
        json!({"sort": {"field": "password"}}),
        json!({"sort": {"direction": "up"}}),
        json!({"filters": {"created_after": "yesterday"}}),
        json!({"filters": {"color": "red"}}),
        json!({"limit": 101}),
        json!({"cursor": "garbage!"}),
    ] {
        let (status, err) = search(body.clone()).await;
        assert_error(status, &err, 400, "BAD_REQUEST");
    }
}

#[tokio::test]
async fn bulk_disable_counts_audits_and_takes_effect() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let key = &admin.key;
    let a = app.create_user().await;
    let b = app.create_user().await;
    let c = app.create_user().await;
    let bystander = app.create_user().await;
    // b has a second session.
    let (status, _) = json_of(
        app.post("/api/auth/sessions")
            .json(&json!({"username": b.username, "password": PASSWORD}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, 201);

    let too_many: Vec<String> = (0..101)
        .map(|_| format!("usr_{}", ulid::Ulid::new()))
        .collect();
    for (body, want, code) in [
        (
            json!({"user_ids": too_many, "reason": "spam"}),
            400,
            "BAD_REQUEST",
        ),
        (
            json!({"user_ids": [], "reason": "spam"}),
            400,
            "BAD_REQUEST",
        ),
        (
            json!({"user_ids": [a.id], "reason": ""}),
            400,
            "BAD_REQUEST",
        ),
        (json!({"user_ids": [a.id]}), 400, "BAD_REQUEST"),
        (
            json!({"user_ids": [a.id, admin.id], "reason": "spam"}),
            422,
            "UNPROCESSABLE",
        ),
    ] {
        let (status, err) =
            send(&app, "POST", "/users/bulk-disable", key, Some(body.clone())).await;
        assert_error(status, &err, want, code);
    }
    let (status, _) = me(&app, &a.token).await;
    assert_eq!(status, 200, "refused requests change nothing");

    let (status, result) = send(
        &app,
        "POST",
        "/users/bulk-disable",
        key,
        Some(json!({"user_ids": [a.id, b.id, b.id, "usr_01JD0000000000000000000000"], "reason": "spam wave"})),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result, json!({"disabled": 2, "sessions_revoked": 3}));
    for token in [&a.token, &b.token] {
        let (status, err) = me(&app, token).await;
        assert_error(status, &err, 401, "UNAUTHORIZED");
    }
    let (status, _) = me(&app, &bystander.token).await;
    assert_eq!(status, 200);
    let rows = app.audit_rows("user.disabled").await;
    assert_eq!(rows.len(), 2);
    let audited: HashSet<&str> = rows
        .iter()
        .filter_map(|r| r["resource_id"].as_str())
        .collect();
    assert_eq!(audited, HashSet::from([a.id.as_str(), b.id.as_str()]));
    assert_eq!(rows[0]["actor_id"], admin.id.as_str());
    assert_eq!(
        rows[0]["changes"]["status"],
        json!({"before": "active", "after": "disabled"})
    );
    assert_eq!(rows[0]["changes"]["reason"]["after"], "spam wave");

    // Already disabled: not counted, not audited again. Without revoking, sessions stay (but
    // cannot be used while the user is disabled).
    let (status, result) = send(
        &app,
        "POST",
        "/users/bulk-disable",
        key,
        Some(json!({"user_ids": [a.id, c.id], "reason": "again", "revoke_sessions": false})),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result, json!({"disabled": 1, "sessions_revoked": 0}));
    assert_eq!(app.audit_rows("user.disabled").await.len(), 3);
    let (status, _) = me(&app, &c.token).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn impersonation_issues_a_token_that_shows_the_admin() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let key = &admin.key;
    let user = app.create_user().await;

    let (status, token) = send(
        &app,
        "POST",
        "/users/impersonate",
        key,
        Some(json!({"user_id": user.id, "reason": "ticket 42"})),
    )
    .await;
    assert_eq!(status, 201, "{token}");
    assert_eq!(token["user_id"], user.id.as_str());
    assert_eq!(
        token["impersonated_by"],
        json!({"id": admin.id, "email": admin.email})
    );
    assert_eq!(token["expires_in"], 3600);
    let access = token["access_token"].as_str().expect("token");
    assert!(access.starts_with("wps_"));
    let (status, me_body) = me(&app, access).await;
    assert_eq!(status, 200, "{me_body}");
    assert_eq!(me_body["id"], user.id.as_str());
    assert_eq!(
        me_body["impersonated_by"],
        json!({"id": admin.id, "email": admin.email})
    );
    let rows = app.audit_rows("user.impersonated").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], token["audit_id"]);
    assert_eq!(rows[0]["resource_id"], user.id.as_str());
    assert_eq!(rows[0]["actor_id"], admin.id.as_str());
    assert_eq!(rows[0]["changes"]["reason"]["after"], "ticket 42");
    // The impersonation token is not an admin token.
    let (status, err) = send(&app, "GET", "/users", access, None).await;
    assert_error(status, &err, 403, "FORBIDDEN");

    let (status, short) = send(
        &app,
        "POST",
        "/users/impersonate",
        key,
        Some(json!({"user_id": user.id, "reason": "x", "expires_in": "30m"})),
    )
    .await;
    assert_eq!(status, 201, "{short}");
    assert_eq!(short["expires_in"], 1800);

    let other_admin = app.create_admin().await;
    let disabled = app.create_user().await;
    app.db()
        .await
        .execute(
            "UPDATE users SET status = 'disabled' WHERE id = $1",
            &[&disabled.id],
        )
        .await
        .expect("disable");
    let in_disabled_org = app.create_user().await;
    app.db()
        .await
        .batch_execute(&format!(
            "INSERT INTO organizations (id, name, display_name, enabled) \
               VALUES ('org_01JD0000000000000000000000', 'off', 'Off', false); \
             INSERT INTO memberships (organization_id, user_id, role) \
               VALUES ('org_01JD0000000000000000000000', '{}', 'member')",
            in_disabled_org.id
        ))
        .await
        .expect("disabled org");
    for (body, want, code) in [
        (
            json!({"user_id": user.id, "reason": "x", "expires_in": "48h"}),
            400,
            "BAD_REQUEST",
        ),
        (
            json!({"user_id": user.id, "reason": "x", "expires_in": "1y"}),
            400,
            "BAD_REQUEST",
        ),
        (
            json!({"user_id": user.id, "reason": "x", "expires_in": 10}),
            400,
            "BAD_REQUEST",
        ),
        (json!({"user_id": user.id}), 400, "BAD_REQUEST"),
        (
            json!({"user_id": user.id, "reason": "  "}),
            400,
            "BAD_REQUEST",
        ),
        (
            json!({"user_id": "usr_01JD0000000000000000000000", "reason": "x"}),
            404,
            "NOT_FOUND",
        ),
        (
            json!({"user_id": disabled.id, "reason": "x"}),
            422,
            "UNPROCESSABLE",
        ),
        (
            json!({"user_id": in_disabled_org.id, "reason": "x"}),
            422,
            "UNPROCESSABLE",
        ),
        (
            json!({"user_id": other_admin.id, "reason": "x"}),
            422,
            "UNPROCESSABLE",
        ),
        (
            json!({"user_id": admin.id, "reason": "x"}),
            422,
            "UNPROCESSABLE",
        ),
    ] {
        let (status, err) = send(&app, "POST", "/users/impersonate", key, Some(body.clone())).await;
        assert_error(status, &err, want, code);
    }
    assert_eq!(app.audit_rows("user.impersonated").await.len(), 2);
}

/// Impersonates `user_id` as `admin_key`; the access token.
async fn impersonate(app: &TestApp, admin_key: &str, user_id: &str) -> String {
    let (status, token) = send(
        app,
        "POST",
        "/users/impersonate",
        admin_key,
        Some(json!({"user_id": user_id, "reason": "support ticket"})),
    )
    .await;
    assert_eq!(status, 201, "{token}");
    token["access_token"].as_str().expect("token").to_string()
}

#[tokio::test]
async fn an_impersonation_token_never_acts_above_the_role_at_issue_time() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let user = app.create_user().await;
    let access = impersonate(&app, &admin.key, &user.id).await;
    let stored: Option<String> = app
        .db()
        .await
        .query_one(
            "SELECT impersonated_role FROM sessions WHERE impersonator_id = $1",
            &[&admin.id],
        )
        .await
        .expect("session")
        .get(0);
    assert_eq!(stored.as_deref(), Some("user"));

    // The target is promoted afterwards: their own session now acts as an admin, the
    // impersonation token still does not.
    let (status, body) = send(
        &app,
        "PATCH",
        &format!("/users/{}", user.id),
        &admin.key,
        Some(json!({"role": "platform_admin"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(&app, "GET", "/users", &user.token, None).await;
    assert_eq!(status, 200, "{body}");
    for (method, path, body) in [
        ("GET", "/users".to_string(), None),
        ("GET", "/stats".to_string(), None),
        (
            "PATCH",
            format!("/users/{}", admin.id),
            Some(json!({"status": "disabled"})),
        ),
    ] {
        let (status, err) = send(&app, method, &path, &access, body).await;
        assert_error(status, &err, 403, "FORBIDDEN");
    }
    // It still works as the user it impersonates.
    let (status, body) = me(&app, &access).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["impersonated_by"]["id"], admin.id.as_str());
}

#[tokio::test]
async fn an_impersonation_token_dies_when_its_admin_is_demoted_or_disabled() {
    let app = TestApp::spawn().await;
    let boss = app.create_admin().await;
    let demoted = app.create_admin().await;
    let disabled = app.create_admin().await;
    let user = app.create_user().await;
    let by_demoted = impersonate(&app, &demoted.key, &user.id).await;
    let by_disabled = impersonate(&app, &disabled.key, &user.id).await;
    assert_eq!(me(&app, &by_demoted).await.0, 200);
    assert_eq!(me(&app, &by_disabled).await.0, 200);

    let (status, body) = send(
        &app,
        "PATCH",
        &format!("/users/{}", demoted.id),
        &boss.key,
        Some(json!({"role": "user"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, err) = me(&app, &by_demoted).await;
    assert_error(status, &err, 401, "UNAUTHORIZED");
    assert_eq!(
        me(&app, &by_disabled).await.0,
        200,
        "the other admin's token lives"
    );

    let (status, body) = send(
        &app,
        "PATCH",
        &format!("/users/{}", disabled.id),
        &boss.key,
        Some(json!({"status": "disabled"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, err) = me(&app, &by_disabled).await;
    assert_error(status, &err, 401, "UNAUTHORIZED");
    // The user's own session is untouched.
    assert_eq!(me(&app, &user.token).await.0, 200);
}

async fn second_session(app: &TestApp, admin: &TestAdmin) -> String {
    // An admin session token, to check that exclude_user_id keeps it.
    let conn = app.db().await;
    conn.execute(
        "UPDATE users SET password_hash = (SELECT password_hash FROM users WHERE password_hash IS NOT NULL LIMIT 1) WHERE id = $1",
        &[&admin.id],
    )
    .await
    .expect("password");
    let (status, body) = json_of(
        app.post("/api/auth/sessions")
            .json(&json!({"email": admin.email, "password": PASSWORD}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().expect("token").to_string()
}

#[tokio::test]
async fn revoke_all_signs_everybody_out_on_the_next_request() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let a = app.create_user().await;
    let b = app.create_user().await;
    let admin_session = second_session(&app, &admin).await;

    for body in [
        json!({}),
        json!({"reason": ""}),
        json!({"reason": "x", "other": 1}),
    ] {
        let (status, err) =
            send(&app, "POST", "/sessions/revoke-all", &admin.key, Some(body)).await;
        assert_error(status, &err, 400, "BAD_REQUEST");
    }
    let (status, err) = send(
        &app,
        "POST",
        "/sessions/revoke-all",
        &admin.key,
        Some(json!({"reason": "x", "exclude_user_id": "usr_01JD0000000000000000000000"})),
    )
    .await;
    assert_error(status, &err, 404, "NOT_FOUND");
    let (status, _) = me(&app, &a.token).await;
    assert_eq!(status, 200, "refused requests revoke nothing");

    let (status, result) = send(
        &app,
        "POST",
        "/sessions/revoke-all",
        &admin_session,
        Some(json!({"reason": "key leak", "exclude_user_id": admin.id})),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result, json!({"revoked": 2}));
    for token in [&a.token, &b.token] {
        let (status, err) = me(&app, token).await;
        assert_error(status, &err, 401, "UNAUTHORIZED");
    }
    let (status, _) = me(&app, &admin_session).await;
    assert_eq!(status, 200, "excluded user's session survives");
    let rows = app.audit_rows("sessions.revoked_all").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["actor_id"], admin.id.as_str());
    assert_eq!(rows[0]["changes"]["revoked"]["after"], 2);
    assert_eq!(rows[0]["changes"]["reason"]["after"], "key leak");

    // Without exclusion the admin's own session goes too; API keys keep working.
    let (status, result) = send(
        &app,
        "POST",
        "/sessions/revoke-all",
        &admin.key,
        Some(json!({"reason": "all"})),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result, json!({"revoked": 1}));
    let (status, _) = me(&app, &admin_session).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn openapi_documents_every_route_of_this_module() {
    let app = TestApp::spawn().await;
    let doc = app.openapi().await;
    for (path, methods) in [
        ("/api/admin/users", &["get", "post"][..]),
        ("/api/admin/users/{id}", &["get", "patch", "delete"]),
        ("/api/admin/users/search", &["post"]),
        ("/api/admin/users/bulk-disable", &["post"]),
        ("/api/admin/users/impersonate", &["post"]),
        ("/api/admin/sessions/revoke-all", &["post"]),
        ("/api/admin/organizations", &["get", "post"]),
        ("/api/admin/organizations/{id}", &["get", "patch", "delete"]),
        ("/api/admin/organizations/{id}/stats", &["get"]),
        ("/api/admin/organizations/{id}/users", &["get"]),
        ("/api/admin/organizations/{id}/groups", &["get", "post"]),
        ("/api/admin/organizations/{id}/members", &["post"]),
        (
            "/api/admin/organizations/{id}/members/{user_id}",
            &["patch", "delete"],
        ),
        ("/api/admin/stats", &["get"]),
    ] {
        for method in methods {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} missing from the OpenAPI document"
            );
        }
    }
}
