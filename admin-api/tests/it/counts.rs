//! Counts and people, not ids: `user_count` of organizations, `session_count_today` of their
//! stats, `stats.organizations`, `organization_ids` of listed users, and the `actor`,
//! `resource` and `impersonated_by` that audit items and session lists name.

use serde_json::{json, Value};

use crate::common::{json_of, seed_member, seed_org, send, TestApp};

/// `method path` with `token` (none when empty) and an optional JSON body, outside
/// `/api/admin`.
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

/// `GET /organizations/{id}`, `user_count` of the organization in `GET /organizations`, and
/// `user_count` of `GET /organizations/{id}/stats`, checked to agree.
async fn user_count(app: &TestApp, key: &str, org: &str) -> i64 {
    let (s, detail) = send(app, "GET", &format!("/organizations/{org}"), key, None).await;
    assert_eq!(s, 200, "{detail}");
    let (s, list) = send(app, "GET", "/organizations?limit=100", key, None).await;
    assert_eq!(s, 200, "{list}");
    let listed = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|o| o["id"] == org)
        .expect("listed")
        .clone();
    let (s, stats) = send(
        app,
        "GET",
        &format!("/organizations/{org}/stats"),
        key,
        None,
    )
    .await;
    assert_eq!(s, 200, "{stats}");
    let count = detail["user_count"].as_i64().expect("user_count");
    assert_eq!(listed["user_count"], count, "{listed}");
    assert_eq!(stats["user_count"], count, "{stats}");
    count
}

#[tokio::test]
async fn user_count_follows_members_added_and_removed() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let (s, org) = send(
        &app,
        "POST",
        "/organizations",
        &admin.key,
        Some(
            json!({"name": format!("acme-{}", crate::common::short_id()), "display_name": "Acme"}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{org}");
    assert_eq!(org["user_count"], 0, "{org}");
    let org = org["id"].as_str().expect("id").to_string();
    assert_eq!(user_count(&app, &admin.key, &org).await, 0);

    let alice = app.create_user().await;
    let bob = app.create_user().await;
    for user in [&alice.id, &bob.id] {
        let (s, b) = send(
            &app,
            "POST",
            &format!("/organizations/{org}/members"),
            &admin.key,
            Some(json!({"user_id": user, "role": "member"})),
        )
        .await;
        assert_eq!(s, 201, "{b}");
    }
    assert_eq!(user_count(&app, &admin.key, &org).await, 2);
    // A PATCH answers the organization with its count too.
    let (s, patched) = send(
        &app,
        "PATCH",
        &format!("/organizations/{org}"),
        &admin.key,
        Some(json!({"display_name": "Acme Inc"})),
    )
    .await;
    assert_eq!(s, 200, "{patched}");
    assert_eq!(patched["user_count"], 2, "{patched}");

    let (s, b) = send(
        &app,
        "DELETE",
        &format!("/organizations/{org}/members/{}", bob.id),
        &admin.key,
        None,
    )
    .await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(user_count(&app, &admin.key, &org).await, 1);
    // Another organization's members do not count.
    let other = seed_org(&app).await;
    seed_member(&app, &other).await;
    assert_eq!(user_count(&app, &admin.key, &org).await, 1);
    assert_eq!(user_count(&app, &admin.key, &other).await, 1);
}

async fn sessions_today(app: &TestApp, key: &str, org: &str) -> i64 {
    let path = format!("/organizations/{org}/stats");
    let (s, stats) = send(app, "GET", &path, key, None).await;
    assert_eq!(s, 200, "{stats}");
    stats["session_count_today"]
        .as_i64()
        .expect("session_count_today")
}

#[tokio::test]
async fn session_count_today_counts_sessions_created_since_midnight_utc() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let org = seed_org(&app).await;
    let today = || sessions_today(&app, &admin.key, &org);
    assert_eq!(today().await, 0);
    // seed_member signs its member in once.
    let (member, token) = seed_member(&app, &org).await;
    assert_eq!(today().await, 1);
    // A revoked session created today still counts: it is a sign-in of today.
    let (s, b) = call(&app, "DELETE", "/api/auth/sessions/current", &token, None).await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(today().await, 1);
    let conn = app.db().await;
    // A session from yesterday (UTC) does not; nor does a non-member's session.
    conn.execute(
        "INSERT INTO sessions (id, user_id, token_hash, created_at, expires_at) \
         VALUES ('ses_' || md5(random()::text), $1, md5(random()::text), \
                 date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' \
                   - interval '1 hour', now() + interval '1 day')",
        &[&member],
    )
    .await
    .expect("old session");
    let outsider = app.create_user().await;
    assert!(!outsider.token.is_empty());
    assert_eq!(today().await, 1);
    let (_, second) = seed_member(&app, &org).await;
    assert!(!second.is_empty());
    assert_eq!(today().await, 2);
}

async fn org_totals(app: &TestApp, key: &str) -> Value {
    let (s, stats) = send(app, "GET", "/stats", key, None).await;
    assert_eq!(s, 200, "{stats}");
    stats["organizations"].clone()
}

#[tokio::test]
async fn stats_organizations_count_the_active_ones_of_the_last_30_days() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    assert_eq!(
        org_totals(&app, &admin.key).await,
        json!({"total": 0, "active_last_30d": 0})
    );
    // Idle: no member, no run, no ledger row.
    let _idle = seed_org(&app).await;
    // A member who was last seen, and last signed in, 40 days ago.
    let dormant = seed_org(&app).await;
    let (old_member, _) = seed_member(&app, &dormant).await;
    let conn = app.db().await;
    conn.execute(
        "UPDATE users SET last_active_at = now() - interval '40 days' WHERE id = $1",
        &[&old_member],
    )
    .await
    .expect("age user");
    conn.execute(
        "UPDATE sessions SET created_at = now() - interval '40 days' WHERE user_id = $1",
        &[&old_member],
    )
    .await
    .expect("age session");
    assert_eq!(
        org_totals(&app, &admin.key).await,
        json!({"total": 2, "active_last_30d": 0})
    );
    // Signing in (a session created) makes an organization active.
    let signed_in = seed_org(&app).await;
    seed_member(&app, &signed_in).await;
    assert_eq!(
        org_totals(&app, &admin.key).await,
        json!({"total": 3, "active_last_30d": 1})
    );
    // So does a ledger row: the dormant organization gets credits.
    let (s, b) = send(
        &app,
        "POST",
        "/credits/adjust",
        &admin.key,
        Some(json!({"organization_id": dormant, "credits_amount": 10, "description": "gift"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        org_totals(&app, &admin.key).await,
        json!({"total": 3, "active_last_30d": 2})
    );
    // A member's recent request (last_active_at) alone is enough too.
    let requested = seed_org(&app).await;
    let (recent, _) = seed_member(&app, &requested).await;
    conn.execute(
        "UPDATE sessions SET created_at = now() - interval '40 days' WHERE user_id = $1",
        &[&recent],
    )
    .await
    .expect("age session");
    assert_eq!(
        org_totals(&app, &admin.key).await,
        json!({"total": 4, "active_last_30d": 2})
    );
    conn.execute(
        "UPDATE users SET last_active_at = now() - interval '2 days' WHERE id = $1",
        &[&recent],
    )
    .await
    .expect("recent activity");
    assert_eq!(
        org_totals(&app, &admin.key).await,
        json!({"total": 4, "active_last_30d": 3})
    );
}

/// `organization_ids` of the one user matching `username`, in `GET /users` and in
/// `POST /users/search` (checked to agree).
async fn organization_ids(app: &TestApp, key: &str, username: &str) -> Value {
    let (s, list) = send(app, "GET", &format!("/users?q={username}"), key, None).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    let (s, found) = send(
        app,
        "POST",
        "/users/search",
        key,
        Some(json!({"query": username})),
    )
    .await;
    assert_eq!(s, 200, "{found}");
    assert_eq!(
        found["items"][0]["organization_ids"], list["items"][0]["organization_ids"],
        "search and list agree"
    );
    list["items"][0]["organization_ids"].clone()
}

#[tokio::test]
async fn listed_users_carry_their_organization_ids() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let user = app.create_user().await;
    let (a, b) = (seed_org(&app).await, seed_org(&app).await);
    let listed = || organization_ids(&app, &admin.key, &user.username);
    assert_eq!(listed().await, json!([]));
    for org in [&b, &a] {
        let (s, body) = send(
            &app,
            "POST",
            &format!("/organizations/{org}/members"),
            &admin.key,
            Some(json!({"user_id": user.id, "role": "member"})),
        )
        .await;
        assert_eq!(s, 201, "{body}");
    }
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(listed().await, json!(both));
    let (s, body) = send(
        &app,
        "DELETE",
        &format!("/organizations/{a}/members/{}", user.id),
        &admin.key,
        None,
    )
    .await;
    assert_eq!(s, 204, "{body}");
    assert_eq!(listed().await, json!([b]));
}

/// The newest audit item with this action.
async fn audit_item(app: &TestApp, key: &str, action: &str) -> Value {
    let (s, page) = send(
        app,
        "GET",
        &format!("/audit-logs?action={action}&limit=1"),
        key,
        None,
    )
    .await;
    assert_eq!(s, 200, "{page}");
    page["items"][0].clone()
}

#[tokio::test]
async fn audit_items_name_the_actor_the_resource_and_the_impersonator() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let key_id: String = app
        .db()
        .await
        .query_one("SELECT id FROM api_keys WHERE user_id = $1", &[&admin.id])
        .await
        .expect("key id")
        .get(0);

    // The command line (create-admin) is the system actor.
    let created = audit_item(&app, &admin.key, "api_key.created").await;
    assert_eq!(
        created["actor"],
        json!({"id": null, "email": null, "type": "system"}),
        "{created}"
    );
    assert_eq!(created["resource"]["type"], "api_key");

    // An admin acting with an API key: the key, and the email of the key's user.
    let (s, org) = send(
        &app,
        "POST",
        "/organizations",
        &admin.key,
        Some(json!({"name": format!("o-{}", crate::common::short_id()), "display_name": "O"})),
    )
    .await;
    assert_eq!(s, 201, "{org}");
    let item = audit_item(&app, &admin.key, "organization.created").await;
    assert_eq!(
        item["actor"],
        json!({"id": key_id, "email": admin.email, "type": "api_key"}),
        "{item}"
    );
    assert_eq!(
        item["resource"],
        json!({"type": "organization", "id": org["id"]})
    );
    assert_eq!(item["impersonated_by"], Value::Null);
    // Existing fields stay.
    assert_eq!(item["actor_id"], admin.id.as_str());
    assert_eq!(item["actor_api_key_id"], key_id.as_str());
    assert_eq!(item["resource_type"], "organization");
    // `actor.id` works as the `actor_id` filter: a key's entries alone.
    let (s, by_key) = send(
        &app,
        "GET",
        &format!("/audit-logs?actor_id={key_id}"),
        &admin.key,
        None,
    )
    .await;
    assert_eq!(s, 200, "{by_key}");
    let by_key = by_key["items"].as_array().expect("items").clone();
    assert!(!by_key.is_empty());
    assert!(by_key.iter().all(|i| i["actor"]["id"] == key_id.as_str()));
    assert!(!by_key.iter().any(|i| i["action"] == "api_key.created"));

    // A user acting with a session.
    let user = app.create_user().await;
    let (s, b) = call(
        &app,
        "POST",
        "/api/auth/sessions",
        "",
        Some(json!({"email": user.email, "password": crate::common::PASSWORD})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let second = b["token"].as_str().expect("token").to_string();
    let (s, mine) = call(&app, "GET", "/api/me/sessions", &second, None).await;
    assert_eq!(s, 200, "{mine}");
    let first_id = mine["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["current"] == false)
        .and_then(|i| i["id"].as_str())
        .expect("first session")
        .to_string();
    let (s, b) = call(
        &app,
        "DELETE",
        &format!("/api/me/sessions/{first_id}"),
        &second,
        None,
    )
    .await;
    assert_eq!(s, 204, "{b}");
    let item = audit_item(&app, &admin.key, "session.revoked").await;
    assert_eq!(
        item["actor"],
        json!({"id": user.id, "email": user.email, "type": "user"}),
        "{item}"
    );
    assert_eq!(item["resource"], json!({"type": "session", "id": first_id}));

    // An impersonation session: the user acts, `impersonated_by` names the admin, in the
    // audit item and in both session lists.
    let (s, token) = send(
        &app,
        "POST",
        "/users/impersonate",
        &admin.key,
        Some(json!({"user_id": user.id, "reason": "ticket 7"})),
    )
    .await;
    assert_eq!(s, 201, "{token}");
    let admin_ref = json!({"id": admin.id, "email": admin.email});
    assert_eq!(token["impersonated_by"], admin_ref);
    let access = token["access_token"].as_str().expect("token").to_string();
    let (s, me) = call(&app, "GET", "/api/me", &access, None).await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["impersonated_by"], admin_ref);
    let (s, sessions) = send(
        &app,
        "GET",
        &format!("/users/{}/sessions", user.id),
        &admin.key,
        None,
    )
    .await;
    assert_eq!(s, 200, "{sessions}");
    let items = sessions["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{sessions}");
    let impersonation: Vec<&Value> = items
        .iter()
        .filter(|i| !i["impersonated_by"].is_null())
        .collect();
    assert_eq!(impersonation.len(), 1, "{sessions}");
    assert_eq!(impersonation[0]["impersonated_by"], admin_ref);
    let (s, mine) = call(&app, "GET", "/api/me/sessions", &second, None).await;
    assert_eq!(s, 200, "{mine}");
    assert!(
        mine["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|i| i["impersonated_by"] == admin_ref),
        "{mine}"
    );
    let own = items
        .iter()
        .find(|i| i["impersonated_by"].is_null())
        .and_then(|i| i["id"].as_str())
        .expect("own session");
    let (s, b) = call(
        &app,
        "DELETE",
        &format!("/api/me/sessions/{own}"),
        &access,
        None,
    )
    .await;
    assert_eq!(s, 204, "{b}");
    let item = audit_item(&app, &admin.key, "session.revoked").await;
    assert_eq!(item["actor"]["type"], "user", "{item}");
    assert_eq!(item["actor"]["id"], user.id.as_str());
    assert_eq!(item["impersonated_by"], admin_ref, "{item}");

    // Emails are read when answering: once the user's row is gone, the items that name
    // them show the id alone.
    let conn = app.db().await;
    conn.execute("DELETE FROM users WHERE id = $1", &[&user.id])
        .await
        .expect("delete user");
    let item = audit_item(&app, &admin.key, "session.revoked").await;
    assert_eq!(
        item["actor"],
        json!({"id": user.id, "email": null, "type": "user"}),
        "{item}"
    );
    assert!(!item.to_string().contains(&user.email), "{item}");

    // The chain still verifies with rows that name a key.
    let (s, verify) = send(&app, "GET", "/audit-logs/verify", &admin.key, None).await;
    assert_eq!(s, 200, "{verify}");
    assert_eq!(verify["ok"], true, "{verify}");
}

#[tokio::test]
async fn openapi_documents_counts_and_people() {
    let app = TestApp::spawn().await;
    let doc = app.openapi().await;
    let schemas = &doc["components"]["schemas"];
    let props = |name: &str| -> Value {
        let schema = &schemas[name];
        // Flattened structs are documented as allOf [base, extra].
        match schema.get("allOf") {
            Some(parts) => {
                let mut all = serde_json::Map::new();
                for part in parts.as_array().expect("allOf") {
                    let part = match part.get("$ref").and_then(Value::as_str) {
                        Some(r) => &schemas[r.trim_start_matches("#/components/schemas/")],
                        None => part,
                    };
                    if let Some(p) = part["properties"].as_object() {
                        all.extend(p.clone());
                    }
                }
                Value::Object(all)
            }
            None => schema["properties"].clone(),
        }
    };
    assert!(!props("OrganizationView")["user_count"].is_null());
    assert!(!props("OrganizationStats")["session_count_today"].is_null());
    assert!(!props("OrganizationTotals")["active_last_30d"].is_null());
    assert!(!props("Stats")["organizations"].is_null());
    assert!(!props("UserListItem")["organization_ids"].is_null());
    for field in ["actor", "resource", "impersonated_by", "actor_id", "hash"] {
        assert!(!props("AuditItem")[field].is_null(), "AuditItem.{field}");
    }
    for field in ["id", "email", "type"] {
        assert!(!props("AuditActor")[field].is_null(), "AuditActor.{field}");
    }
    assert!(!props("PersonRef")["email"].is_null());
}
