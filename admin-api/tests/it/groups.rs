//! One group of an organization and its members.

use serde_json::{json, Value};

use crate::common::{assert_error, seed_org, send, TestApp};

#[tokio::test]
async fn groups_hold_members_of_their_organization_only() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let org = seed_org(&app).await;
    let other_org = seed_org(&app).await;
    let member = app.create_user().await;
    let outsider = app.create_user().await;
    let key = admin.key.as_str();
    let (s, b) = send(
        &app,
        "POST",
        &format!("/organizations/{org}/members"),
        key,
        Some(json!({"user_id": member.id, "role": "member"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, group) = send(
        &app,
        "POST",
        &format!("/organizations/{org}/groups"),
        key,
        Some(json!({"name": "Ops"})),
    )
    .await;
    assert_eq!(s, 201, "{group}");
    let gid = group["id"].as_str().expect("id").to_string();
    let base = format!("/organizations/{org}/groups/{gid}");

    let (s, got) = send(&app, "GET", &base, key, None).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["member_count"], 0);
    // The group is not found under another organization.
    let (s, b) = send(
        &app,
        "GET",
        &format!("/organizations/{other_org}/groups/{gid}"),
        key,
        None,
    )
    .await;
    assert_error(s, &b, 404, "NOT_FOUND");

    // Members.
    let members = format!("{base}/members");
    let (s, b) = send(
        &app,
        "POST",
        &members,
        key,
        Some(json!({"user_id": outsider.id})),
    )
    .await;
    assert_error(s, &b, 422, "UNPROCESSABLE");
    let (s, b) = send(
        &app,
        "POST",
        &members,
        key,
        Some(json!({"user_id": "usr_01JDAAAAAAAAAAAAAAAAAAAAAA"})),
    )
    .await;
    assert_error(s, &b, 404, "NOT_FOUND");
    let (s, added) = send(
        &app,
        "POST",
        &members,
        key,
        Some(json!({"user_id": member.id})),
    )
    .await;
    assert_eq!(s, 201, "{added}");
    assert_eq!(added["id"], member.id.as_str());
    assert!(added["added_at"].is_string());
    let (s, b) = send(
        &app,
        "POST",
        &members,
        key,
        Some(json!({"user_id": member.id})),
    )
    .await;
    assert_error(s, &b, 409, "CONFLICT");
    let (s, list) = send(&app, "GET", &members, key, None).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["items"][0]["email"], member.email.as_str());
    let (_, got) = send(&app, "GET", &base, key, None).await;
    assert_eq!(got["member_count"], 1, "{got}");
    let (_, groups) = send(
        &app,
        "GET",
        &format!("/organizations/{org}/groups"),
        key,
        None,
    )
    .await;
    assert_eq!(groups["items"][0]["member_count"], 1, "{groups}");

    // Rename; a taken name is 409.
    send(
        &app,
        "POST",
        &format!("/organizations/{org}/groups"),
        key,
        Some(json!({"name": "Dev"})),
    )
    .await;
    let (s, b) = send(&app, "PATCH", &base, key, Some(json!({"name": "dev"}))).await;
    assert_error(s, &b, 409, "CONFLICT");
    let (s, b) = send(&app, "PATCH", &base, key, Some(json!({"name": ""}))).await;
    assert_error(s, &b, 400, "BAD_REQUEST");
    let (s, renamed) = send(
        &app,
        "PATCH",
        &base,
        key,
        Some(json!({"name": "Operations"})),
    )
    .await;
    assert_eq!(s, 200, "{renamed}");
    assert_eq!(renamed["name"], "Operations");
    assert_eq!(renamed["member_count"], 1);

    // Remove the member, then the group.
    let one = format!("{members}/{}", member.id);
    let (s, b) = send(&app, "DELETE", &one, key, None).await;
    assert_eq!(s, 204, "{b}");
    let (s, b) = send(&app, "DELETE", &one, key, None).await;
    assert_error(s, &b, 404, "NOT_FOUND");
    let (s, b) = send(&app, "DELETE", &base, key, None).await;
    assert_eq!(s, 204, "{b}");
    let (s, b) = send(&app, "GET", &base, key, None).await;
    assert_error(s, &b, 404, "NOT_FOUND");
    // The user is still a member of the organization.
    let (_, users) = send(
        &app,
        "GET",
        &format!("/organizations/{org}/users"),
        key,
        None,
    )
    .await;
    assert!(users.to_string().contains(&member.id), "{users}");

    for action in [
        "group.updated",
        "group_member.added",
        "group_member.removed",
        "group.deleted",
    ] {
        let rows: Vec<Value> = app.audit_rows(action).await;
        assert_eq!(rows.len(), 1, "{action}: {rows:?}");
        assert_eq!(rows[0]["resource_id"], gid.as_str(), "{action}");
        assert_eq!(rows[0]["actor_id"], admin.id.as_str(), "{action}");
    }
}

#[tokio::test]
async fn leaving_the_organization_leaves_its_groups() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let key = admin.key.as_str();
    let org = seed_org(&app).await;
    let (stays, leaves) = (app.create_user().await, app.create_user().await);
    let (s, group) = send(
        &app,
        "POST",
        &format!("/organizations/{org}/groups"),
        key,
        Some(json!({"name": "Ops"})),
    )
    .await;
    assert_eq!(s, 201, "{group}");
    let base = format!(
        "/organizations/{org}/groups/{}",
        group["id"].as_str().expect("id")
    );
    for user in [&stays, &leaves] {
        let (s, b) = send(
            &app,
            "POST",
            &format!("/organizations/{org}/members"),
            key,
            Some(json!({"user_id": user.id, "role": "member"})),
        )
        .await;
        assert_eq!(s, 201, "{b}");
        let (s, b) = send(
            &app,
            "POST",
            &format!("{base}/members"),
            key,
            Some(json!({"user_id": user.id})),
        )
        .await;
        assert_eq!(s, 201, "{b}");
    }
    let (s, got) = send(&app, "GET", &base, key, None).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["member_count"], 2, "{got}");
    let (s, b) = send(
        &app,
        "DELETE",
        &format!("/organizations/{org}/members/{}", leaves.id),
        key,
        None,
    )
    .await;
    assert_eq!(s, 204, "{b}");
    let (s, got) = send(&app, "GET", &base, key, None).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["member_count"], 1, "{got}");
    let (s, list) = send(&app, "GET", &format!("{base}/members"), key, None).await;
    assert_eq!(s, 200, "{list}");
    let ids: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|u| u["id"].as_str())
        .collect();
    assert_eq!(ids, vec![stays.id.as_str()]);
}
