//! `/api/admin/referrals…`: referrals recorded at registration, the list and the bounded tree.

use crate::common::{assert_error, json_of, short_id, TestApp, PASSWORD};
use serde_json::{json, Value};

/// Registers a user with `code` and returns (user id, session token).
async fn register_with(app: &TestApp, code: Option<&str>) -> (String, String) {
    let username = format!("r-{}", short_id());
    let mut body = json!({"email": format!("{username}@example.com"), "username": username,
                          "password": PASSWORD});
    if let Some(code) = code {
        body["invitation_code"] = json!(code);
    }
    let (s, b) = json_of(
        app.post("/api/auth/register")
            .json(&body)
            .send()
            .await
            .expect("register"),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    (
        b["user"]["id"].as_str().expect("id").to_string(),
        b["token"].as_str().expect("token").to_string(),
    )
}

async fn my_code(app: &TestApp, token: &str) -> String {
    let (s, b) = json_of(
        app.post("/api/me/invitation-codes")
            .bearer_auth(token)
            .send()
            .await
            .expect("code"),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    b["code"].as_str().expect("code").to_string()
}

fn depth_of(node: &Value) -> usize {
    node["invitees"]
        .as_array()
        .map(|kids| kids.iter().map(depth_of).max().map_or(0, |d| d + 1))
        .unwrap_or(0)
}

#[tokio::test]
async fn referral_tree_follows_registrations_to_a_bounded_depth() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;

    // root -> a -> b -> c -> d, and root -> a2.
    let (root, root_token) = register_with(&app, None).await;
    let root_code = my_code(&app, &root_token).await;
    let mut chain = vec![root.clone()];
    let mut code = root_code.clone();
    for _ in 0..4 {
        let (id, t) = register_with(&app, Some(&code)).await;
        code = my_code(&app, &t).await;
        chain.push(id);
    }
    let (a2, _) = register_with(&app, Some(&root_code)).await;

    let tree = |depth: Option<i64>, user: &str| {
        let mut url = format!("/api/admin/referrals/tree?user_id={user}");
        if let Some(d) = depth {
            url.push_str(&format!("&depth={d}"));
        }
        let request = app.get(&url).bearer_auth(&admin.key);
        async move { json_of(request.send().await.expect("tree")).await }
    };
    let (s, t) = tree(None, &root).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["user_id"], root.as_str());
    assert!(t["username"].as_str().is_some_and(|u| u.starts_with("r-")));
    assert_eq!(depth_of(&t), 3, "default depth 3: {t}");
    let firsts: Vec<&str> = t["invitees"]
        .as_array()
        .expect("invitees")
        .iter()
        .map(|n| n["user_id"].as_str().expect("id"))
        .collect();
    assert_eq!(firsts.len(), 2);
    assert!(firsts.contains(&chain[1].as_str()) && firsts.contains(&a2.as_str()));
    let (_, t) = tree(Some(1), &root).await;
    assert_eq!(depth_of(&t), 1);
    let (_, t) = tree(Some(10), &root).await;
    assert_eq!(depth_of(&t), 4);
    let (_, t) = tree(Some(2), &chain[2]).await;
    assert_eq!(t["invitees"][0]["user_id"], chain[3].as_str());
    assert_eq!(
        t["invitees"][0]["invitees"][0]["user_id"],
        chain[4].as_str()
    );
    let (_, t) = tree(None, &chain[4]).await;
    assert_eq!(t["invitees"], json!([]));

    for (depth, user, status, code) in [
        (Some(0), root.clone(), 400, "BAD_REQUEST"),
        (Some(11), root.clone(), 400, "BAD_REQUEST"),
        (None, "usr_nope".to_string(), 404, "NOT_FOUND"),
        (None, format!("usr_{}", ulid::Ulid::new()), 404, "NOT_FOUND"),
    ] {
        let (s, e) = tree(depth, &user).await;
        assert_error(s, &e, status, code);
    }
    let (s, e) = json_of(
        app.get("/api/admin/referrals/tree")
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("tree"),
    )
    .await;
    assert_error(s, &e, 400, "BAD_REQUEST");
    let (s, e) = json_of(
        app.get(&format!("/api/admin/referrals/tree?user_id={root}"))
            .bearer_auth(&root_token)
            .send()
            .await
            .expect("tree"),
    )
    .await;
    assert_error(s, &e, 403, "FORBIDDEN");
    let (s, e) = json_of(app.get("/api/admin/referrals").send().await.expect("list")).await;
    assert_error(s, &e, 401, "UNAUTHORIZED");

    // The list, by inviter, paged.
    let (s, page) = json_of(
        app.get(&format!(
            "/api/admin/referrals?inviter_user_id={root}&limit=1"
        ))
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("list"),
    )
    .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["items"][0]["invitee_user_id"], a2.as_str());
    assert_eq!(page["items"][0]["code"], root_code.as_str());
    let cursor = page["next_cursor"].as_str().expect("cursor").to_string();
    let (_, page) = json_of(
        app.get(&format!(
            "/api/admin/referrals?inviter_user_id={root}&limit=1&cursor={cursor}"
        ))
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("list"),
    )
    .await;
    assert_eq!(page["items"][0]["invitee_user_id"], chain[1].as_str());
    assert_eq!(page["next_cursor"], Value::Null);
    let (_, page) = json_of(
        app.get("/api/admin/referrals")
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(5));

    // The schema refuses self-referral and a second inviter.
    let db = app.db().await;
    assert!(db
        .execute(
            "INSERT INTO referrals (invitee_user_id, inviter_user_id, code) VALUES ($1, $1, 'X')",
            &[&root],
        )
        .await
        .is_err());
    assert!(db
        .execute(
            "INSERT INTO referrals (invitee_user_id, inviter_user_id, code) VALUES ($1, $2, 'X')",
            &[&chain[2], &root],
        )
        .await
        .is_err());
    // A user cannot join through their own code either (the code's owner already exists, and
    // an existing user never registers again), so the chain has exactly one inviter each.
    let inviters: i64 = db
        .query_one("SELECT count(DISTINCT invitee_user_id) FROM referrals", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(inviters, 5);
}
