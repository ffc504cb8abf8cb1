//! `/api/admin/organizations…`: CRUD, stats, users, groups and members.

use std::collections::HashSet;

use crate::common::{assert_error, json_of, send, TestApp, PASSWORD};
use serde_json::{json, Value};

const UNKNOWN_ORG: &str = "org_01JD0000000000000000000000";
const UNKNOWN_USER: &str = "usr_01JD0000000000000000000000";

async fn create_org(app: &TestApp, key: &str, name: &str) -> String {
    let (status, org) = send(
        app,
        "POST",
        "/organizations",
        key,
        Some(json!({"name": name, "display_name": format!("{name} Inc."), "plan": "pro"})),
    )
    .await;
    assert_eq!(status, 201, "{org}");
    org["id"].as_str().expect("id").to_string()
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
async fn every_organization_endpoint_requires_a_platform_admin() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let user = app.create_user().await;
    let org = create_org(&app, &admin.key, "acme").await;
    let uid = &user.id;
    let endpoints: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/organizations".into(), None),
        (
            "POST",
            "/organizations".into(),
            Some(json!({"name": "x1", "display_name": "X"})),
        ),
        ("GET", format!("/organizations/{org}"), None),
        (
            "PATCH",
            format!("/organizations/{org}"),
            Some(json!({"enabled": false})),
        ),
        ("DELETE", format!("/organizations/{org}"), None),
        ("GET", format!("/organizations/{org}/stats"), None),
        ("GET", format!("/organizations/{org}/users"), None),
        ("GET", format!("/organizations/{org}/groups"), None),
        (
            "POST",
            format!("/organizations/{org}/groups"),
            Some(json!({"name": "g"})),
        ),
        (
            "POST",
            format!("/organizations/{org}/members"),
            Some(json!({"user_id": uid, "role": "owner"})),
        ),
        (
            "PATCH",
            format!("/organizations/{org}/members/{uid}"),
            Some(json!({"role": "admin"})),
        ),
        (
            "DELETE",
            format!("/organizations/{org}/members/{uid}"),
            None,
        ),
    ];
    for (method, path, body) in endpoints {
        let (status, err) = send(&app, method, &path, "", body.clone()).await;
        assert_error(status, &err, 401, "UNAUTHORIZED");
        let (status, err) = send(&app, method, &path, "wps_bogus", body.clone()).await;
        assert_error(status, &err, 401, "UNAUTHORIZED");
        let (status, err) = send(&app, method, &path, &user.token, body).await;
        assert_error(status, &err, 403, "FORBIDDEN");
    }
    let (status, got) = send(
        &app,
        "GET",
        &format!("/organizations/{org}"),
        &admin.key,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(got["enabled"], true, "nothing changed");
    assert_eq!(app.audit_rows("organization.updated").await.len(), 0);
    assert_eq!(app.audit_rows("membership.created").await.len(), 0);
}

#[tokio::test]
async fn organization_crud_with_audit_and_disabled_sign_in() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let key = &admin.key;

    let (status, org) = send(
        &app,
        "POST",
        "/organizations",
        key,
        Some(json!({"name": "acme", "display_name": "Acme Corp"})),
    )
    .await;
    assert_eq!(status, 201, "{org}");
    let id = org["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("org_"));
    assert_eq!(org["plan"], "free");
    assert_eq!(org["enabled"], true);
    assert_eq!(org["credits_balance"], 0);
    let rows = app.audit_rows("organization.created").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["resource_id"], id.as_str());
    assert_eq!(rows[0]["actor_id"], admin.id.as_str());
    assert_eq!(
        rows[0]["changes"]["name"],
        json!({"before": null, "after": "acme"})
    );

    for (body, want, code) in [
        (
            json!({"name": "Acme!", "display_name": "A"}),
            400,
            "BAD_REQUEST",
        ),
        (
            json!({"name": "a", "display_name": "A"}),
            400,
            "BAD_REQUEST",
        ),
        (
            json!({"name": "beta", "display_name": ""}),
            400,
            "BAD_REQUEST",
        ),
        (json!({"name": "beta"}), 400, "BAD_REQUEST"),
        (
            json!({"name": "beta", "display_name": "B", "plan": 3}),
            400,
            "BAD_REQUEST",
        ),
        (
            json!({"name": "acme", "display_name": "Again"}),
            409,
            "CONFLICT",
        ),
    ] {
        let (status, err) = send(&app, "POST", "/organizations", key, Some(body.clone())).await;
        assert_error(status, &err, want, code);
    }
    assert_eq!(app.audit_rows("organization.created").await.len(), 1);

    let other = create_org(&app, key, "zenith").await;
    let (status, page) = send(&app, "GET", "/organizations?q=ZEN", key, None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids_of(&page), vec![other.clone()]);
    let (_, page) = send(&app, "GET", "/organizations?limit=1", key, None).await;
    assert_eq!(ids_of(&page), vec![other.clone()], "newest first");
    let cursor = page["next_cursor"].as_str().expect("more");
    let (_, page) = send(
        &app,
        "GET",
        &format!("/organizations?limit=1&cursor={cursor}"),
        key,
        None,
    )
    .await;
    assert_eq!(ids_of(&page), vec![id.clone()]);
    assert_eq!(page["next_cursor"], Value::Null);
    for query in ["limit=0", "limit=500", "cursor=%%%", "color=red"] {
        let (status, err) = send(&app, "GET", &format!("/organizations?{query}"), key, None).await;
        assert_error(status, &err, 400, "BAD_REQUEST");
    }

    let (status, got) = send(&app, "GET", &format!("/organizations/{id}"), key, None).await;
    assert_eq!(status, 200);
    assert_eq!(got["display_name"], "Acme Corp");
    for bad in [UNKNOWN_ORG, "acme", UNKNOWN_USER] {
        let (status, err) = send(&app, "GET", &format!("/organizations/{bad}"), key, None).await;
        assert_error(status, &err, 404, "NOT_FOUND");
    }

    // A member can sign in until the organization is disabled.
    let member = app.create_user().await;
    let (status, _) = send(
        &app,
        "POST",
        &format!("/organizations/{id}/members"),
        key,
        Some(json!({"user_id": member.id, "role": "member"})),
    )
    .await;
    assert_eq!(status, 201);

    let (status, patched) = send(
        &app,
        "PATCH",
        &format!("/organizations/{id}"),
        key,
        Some(json!({"display_name": "Acme Ltd", "plan": "enterprise", "enabled": false})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["plan"], "enterprise");
    let rows = app.audit_rows("organization.updated").await;
    assert_eq!(rows.len(), 1);
    let mut fields: Vec<&String> = rows[0]["changes"]
        .as_object()
        .expect("changes")
        .keys()
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["display_name", "enabled", "plan", "status"]);
    assert_eq!(
        rows[0]["changes"]["enabled"],
        json!({"before": true, "after": false})
    );

    let (status, err) = json_of(
        app.get("/api/me")
            .bearer_auth(&member.token)
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_error(status, &err, 401, "UNAUTHORIZED");
    let (status, err) = json_of(
        app.post("/api/auth/sessions")
            .json(&json!({"username": member.username, "password": PASSWORD}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_error(status, &err, 403, "FORBIDDEN");

    for (body, want, code) in [
        (json!({"enabled": "no"}), 400, "BAD_REQUEST"),
        (json!({"display_name": ""}), 400, "BAD_REQUEST"),
        (json!({"name": "renamed"}), 400, "BAD_REQUEST"),
    ] {
        let (status, err) = send(
            &app,
            "PATCH",
            &format!("/organizations/{id}"),
            key,
            Some(body.clone()),
        )
        .await;
        assert_error(status, &err, want, code);
    }
    let (status, err) = send(
        &app,
        "PATCH",
        &format!("/organizations/{UNKNOWN_ORG}"),
        key,
        Some(json!({"enabled": true})),
    )
    .await;
    assert_error(status, &err, 404, "NOT_FOUND");

    // Re-enabling lets the member back in.
    let (status, _) = send(
        &app,
        "PATCH",
        &format!("/organizations/{id}"),
        key,
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = json_of(
        app.get("/api/me")
            .bearer_auth(&member.token)
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, 200);

    // No history: a hard delete (an organization with history is archived: see erasure.rs).
    let (status, _) = send(&app, "DELETE", &format!("/organizations/{id}"), key, None).await;
    assert_eq!(status, 204);
    let (status, err) = send(&app, "GET", &format!("/organizations/{id}"), key, None).await;
    assert_error(status, &err, 404, "NOT_FOUND");
    let (status, err) = send(&app, "DELETE", &format!("/organizations/{id}"), key, None).await;
    assert_error(status, &err, 404, "NOT_FOUND");
    let rows = app.audit_rows("organization.deleted").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0]["changes"]["name"],
        json!({"before": "acme", "after": null})
    );
    // The member's account stays, without the membership.
    let (status, me) = json_of(
        app.get("/api/me")
            .bearer_auth(&member.token)
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["organizations"], json!([]));
}

#[tokio::test]
async fn members_users_list_and_roles() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let key = &admin.key;
    let org = create_org(&app, key, "acme").await;
    let users = [
        app.create_user().await,
        app.create_user().await,
        app.create_user().await,
    ];
    let members = format!("/organizations/{org}/members");

    for (i, (u, role)) in users.iter().zip(["owner", "admin", "member"]).enumerate() {
        let (status, m) = send(
            &app,
            "POST",
            &members,
            key,
            Some(json!({"user_id": u.id, "role": role})),
        )
        .await;
        assert_eq!(status, 201, "{m}");
        assert_eq!(m["role"], role);
        assert_eq!(m["organization_id"], org.as_str());
        let rows = app.audit_rows("membership.created").await;
        assert_eq!(rows.len(), i + 1);
        assert_eq!(rows[i]["resource_id"], format!("{org}/{}", u.id));
    }
    for (body, want, code) in [
        (
            json!({"user_id": users[0].id, "role": "member"}),
            409,
            "CONFLICT",
        ),
        (
            json!({"user_id": users[0].id, "role": "king"}),
            400,
            "BAD_REQUEST",
        ),
        (json!({"user_id": users[0].id}), 400, "BAD_REQUEST"),
        (
            json!({"user_id": UNKNOWN_USER, "role": "member"}),
            404,
            "NOT_FOUND",
        ),
        (
            json!({"user_id": "garbage", "role": "member"}),
            404,
            "NOT_FOUND",
        ),
    ] {
        let (status, err) = send(&app, "POST", &members, key, Some(body.clone())).await;
        assert_error(status, &err, want, code);
    }
    let (status, err) = send(
        &app,
        "POST",
        &format!("/organizations/{UNKNOWN_ORG}/members"),
        key,
        Some(json!({"user_id": users[0].id, "role": "member"})),
    )
    .await;
    assert_error(status, &err, 404, "NOT_FOUND");
    assert_eq!(app.audit_rows("membership.created").await.len(), 3);

    // GET /users/{id} shows the membership and role.
    let (_, user) = send(&app, "GET", &format!("/users/{}", users[1].id), key, None).await;
    assert_eq!(user["organizations"][0]["id"], org.as_str());
    assert_eq!(user["organizations"][0]["role"], "admin");

    // The users list, paged two at a time, newest member first.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/organizations/{org}/users?limit=2&cursor={c}"),
            None => format!("/organizations/{org}/users?limit=2"),
        };
        let (status, page) = send(&app, "GET", &path, key, None).await;
        assert_eq!(status, 200, "{page}");
        for item in page["items"].as_array().expect("items") {
            seen.push((
                item["id"].as_str().expect("id").to_string(),
                item["organization_role"]
                    .as_str()
                    .expect("role")
                    .to_string(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let want: Vec<(String, String)> = users
        .iter()
        .zip(["owner", "admin", "member"])
        .rev()
        .map(|(u, r)| (u.id.clone(), r.to_string()))
        .collect();
    assert_eq!(seen, want);
    let (status, err) = send(
        &app,
        "GET",
        &format!("/organizations/{UNKNOWN_ORG}/users"),
        key,
        None,
    )
    .await;
    assert_error(status, &err, 404, "NOT_FOUND");
    let (status, err) = send(
        &app,
        "GET",
        &format!("/organizations/{org}/users?limit=0"),
        key,
        None,
    )
    .await;
    assert_error(status, &err, 400, "BAD_REQUEST");

    // Change a role.
    let member_path = format!("{members}/{}", users[2].id);
    let (status, m) = send(
        &app,
        "PATCH",
        &member_path,
        key,
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["role"], "admin");
    let rows = app.audit_rows("membership.updated").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0]["changes"],
        json!({"role": {"before": "member", "after": "admin"}})
    );
    let (status, err) = send(
        &app,
        "PATCH",
        &member_path,
        key,
        Some(json!({"role": "boss"})),
    )
    .await;
    assert_error(status, &err, 400, "BAD_REQUEST");
    let (status, err) = send(
        &app,
        "PATCH",
        &format!("{members}/{UNKNOWN_USER}"),
        key,
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_error(status, &err, 404, "NOT_FOUND");
    let (status, err) = send(
        &app,
        "PATCH",
        &format!("/organizations/{UNKNOWN_ORG}/members/{}", users[2].id),
        key,
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_error(status, &err, 404, "NOT_FOUND");

    // Remove.
    let (status, _) = send(&app, "DELETE", &member_path, key, None).await;
    assert_eq!(status, 204);
    let (status, err) = send(&app, "DELETE", &member_path, key, None).await;
    assert_error(status, &err, 404, "NOT_FOUND");
    let rows = app.audit_rows("membership.deleted").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["resource_id"], format!("{org}/{}", users[2].id));
    let (_, page) = send(
        &app,
        "GET",
        &format!("/organizations/{org}/users"),
        key,
        None,
    )
    .await;
    assert_eq!(
        ids_of(&page).into_iter().collect::<HashSet<_>>(),
        HashSet::from([users[0].id.clone(), users[1].id.clone()])
    );
}

#[tokio::test]
async fn groups_are_unique_per_organization() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let key = &admin.key;
    let acme = create_org(&app, key, "acme").await;
    let beta = create_org(&app, key, "beta").await;

    let (status, group) = send(
        &app,
        "POST",
        &format!("/organizations/{acme}/groups"),
        key,
        Some(json!({"name": "Ops"})),
    )
    .await;
    assert_eq!(status, 201, "{group}");
    assert!(group["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("grp_")));
    assert_eq!(group["name"], "Ops");
    assert_eq!(group["organization_id"], acme.as_str());
    assert_eq!(group["member_count"], 0);
    let rows = app.audit_rows("group.created").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["resource_id"], group["id"]);

    // Same name in another organization is fine; same name (any case) in the same one is 409.
    let (status, _) = send(
        &app,
        "POST",
        &format!("/organizations/{beta}/groups"),
        key,
        Some(json!({"name": "Ops"})),
    )
    .await;
    assert_eq!(status, 201);
    for (body, want, code) in [
        (json!({"name": "ops"}), 409, "CONFLICT"),
        (json!({"name": ""}), 400, "BAD_REQUEST"),
        (json!({"name": "x".repeat(101)}), 400, "BAD_REQUEST"),
        (json!({}), 400, "BAD_REQUEST"),
    ] {
        let (status, err) = send(
            &app,
            "POST",
            &format!("/organizations/{acme}/groups"),
            key,
            Some(body.clone()),
        )
        .await;
        assert_error(status, &err, want, code);
    }
    let (status, err) = send(
        &app,
        "POST",
        &format!("/organizations/{UNKNOWN_ORG}/groups"),
        key,
        Some(json!({"name": "x"})),
    )
    .await;
    assert_error(status, &err, 404, "NOT_FOUND");
    assert_eq!(app.audit_rows("group.created").await.len(), 2);

    let (status, _) = send(
        &app,
        "POST",
        &format!("/organizations/{acme}/groups"),
        key,
        Some(json!({"name": "Dev"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, page) = send(
        &app,
        "GET",
        &format!("/organizations/{acme}/groups"),
        key,
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let names: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(names, ["Dev", "Ops"]);
    let (_, page) = send(
        &app,
        "GET",
        &format!("/organizations/{acme}/groups?limit=1"),
        key,
        None,
    )
    .await;
    assert_eq!(page["items"].as_array().expect("items").len(), 1);
    assert!(page["next_cursor"].is_string());
    let (status, err) = send(
        &app,
        "GET",
        &format!("/organizations/{UNKNOWN_ORG}/groups"),
        key,
        None,
    )
    .await;
    assert_error(status, &err, 404, "NOT_FOUND");
}

#[tokio::test]
async fn organization_stats_follow_the_data() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let key = &admin.key;
    let org = create_org(&app, key, "acme").await;
    let stats_path = format!("/organizations/{org}/stats");

    let (status, stats) = send(&app, "GET", &stats_path, key, None).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["user_count"], 0);
    assert_eq!(stats["group_count"], 0);
    assert_eq!(stats["credits_balance"], 0);
    assert_eq!(stats["active_users_7d"], 0);
    assert_eq!(stats["sessions_active"], 0);

    let a = app.create_user().await;
    let b = app.create_user().await;
    let _outsider = app.create_user().await;
    for (u, role) in [(&a, "owner"), (&b, "member")] {
        let (status, _) = send(
            &app,
            "POST",
            &format!("/organizations/{org}/members"),
            key,
            Some(json!({"user_id": u.id, "role": role})),
        )
        .await;
        assert_eq!(status, 201);
    }
    let (status, _) = send(
        &app,
        "POST",
        &format!("/organizations/{org}/groups"),
        key,
        Some(json!({"name": "Ops"})),
    )
    .await;
    assert_eq!(status, 201);
    let conn = app.db().await;
    conn.execute(
        "UPDATE organizations SET credits_balance = 250 WHERE id = $1",
        &[&org],
    )
    .await
    .expect("credits");
    conn.execute(
        "UPDATE users SET last_active_at = now() - interval '1 day' WHERE id = $1",
        &[&a.id],
    )
    .await
    .expect("active");
    conn.execute(
        "UPDATE users SET last_active_at = now() - interval '20 days' WHERE id = $1",
        &[&b.id],
    )
    .await
    .expect("inactive");
    // b's registration session is revoked.
    conn.execute(
        "UPDATE sessions SET revoked_at = now() WHERE user_id = $1",
        &[&b.id],
    )
    .await
    .expect("revoke");

    let (status, stats) = send(&app, "GET", &stats_path, key, None).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["user_count"], 2);
    assert_eq!(stats["group_count"], 1);
    assert_eq!(stats["credits_balance"], 250);
    assert_eq!(stats["active_users_7d"], 1);
    assert_eq!(stats["sessions_active"], 1);
    assert_eq!(stats["owner_count"], 1);
    let (status, err) = send(
        &app,
        "GET",
        &format!("/organizations/{UNKNOWN_ORG}/stats"),
        key,
        None,
    )
    .await;
    assert_error(status, &err, 404, "NOT_FOUND");
}

#[tokio::test]
async fn an_admin_cannot_disable_an_organization_they_belong_to() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let mine = create_org(&app, &admin.key, "mine").await;
    let theirs = create_org(&app, &admin.key, "theirs").await;
    let (s, b) = send(
        &app,
        "POST",
        &format!("/organizations/{mine}/members"),
        &admin.key,
        Some(json!({"user_id": admin.id, "role": "member"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, e) = send(
        &app,
        "PATCH",
        &format!("/organizations/{mine}"),
        &admin.key,
        Some(json!({"enabled": false, "display_name": "Changed"})),
    )
    .await;
    assert_error(s, &e, 422, "UNPROCESSABLE");
    // Nothing changed, and the admin still gets in.
    let (s, org) = send(
        &app,
        "GET",
        &format!("/organizations/{mine}"),
        &admin.key,
        None,
    )
    .await;
    assert_eq!(s, 200, "{org}");
    assert_eq!(org["enabled"], true);
    assert_eq!(org["display_name"], "mine Inc.");
    assert_eq!(app.audit_rows("organization.updated").await.len(), 0);
    // Other changes to one's own organization, and disabling another, are fine.
    let (s, b) = send(
        &app,
        "PATCH",
        &format!("/organizations/{mine}"),
        &admin.key,
        Some(json!({"display_name": "Changed"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = send(
        &app,
        "PATCH",
        &format!("/organizations/{theirs}"),
        &admin.key,
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["enabled"], false);
}
