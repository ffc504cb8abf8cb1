//! NUL and other control characters in JSON strings, query and path parameters are refused at
//! the edge with 400, and nothing is read from or written to the stores for them.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use serde_json::{json, Value};

use crate::common::{assert_error, json_of, TestApp, PASSWORD};

/// Row counts of every table a refused request could have written to, and the users' statuses.
async fn snapshot(app: &TestApp) -> Value {
    let conn = app.db().await;
    let mut counts = serde_json::Map::new();
    for table in [
        "users",
        "organizations",
        "memberships",
        "sessions",
        "sign_in_events",
        "audit_log",
        "credit_transactions",
        "runs",
        "api_keys",
        "invitation_codes",
        "redemptions",
    ] {
        let row = conn
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap_or_else(|e| panic!("count {table}: {e}"));
        counts.insert(table.to_string(), json!(row.get::<_, i64>(0)));
    }
    let statuses: Vec<Value> = conn
        .query("SELECT id, status FROM users ORDER BY id", &[])
        .await
        .expect("statuses")
        .iter()
        .map(|r| json!([r.get::<_, String>(0), r.get::<_, String>(1)]))
        .collect();
    counts.insert("statuses".into(), Value::Array(statuses));
    Value::Object(counts)
}

/// A cursor in the format of `pagination::Cursor` whose id carries `id`.
fn cursor_with_id(id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("2026-01-01T00:00:00.000000Z|{id}"))
}

#[tokio::test]
async fn control_characters_are_refused_at_the_edge_and_change_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let user = app.create_user().await;
    let before = snapshot(&app).await;

    let nul_cursor = cursor_with_id("usr_\u{0}");
    let nul_search_cursor =
        URL_SAFE_NO_PAD.encode(format!("email|asc|{}|a\u{0}b@example.com", user.id));
    // (method, path, bearer token, JSON body)
    let cases: Vec<(&str, String, Option<&str>, Option<Value>)> = vec![
        (
            "POST",
            "/api/auth/sessions".into(),
            None,
            Some(json!({"email": "a\u{0}@example.com", "password": PASSWORD})),
        ),
        (
            "POST",
            "/api/auth/sessions".into(),
            None,
            Some(json!({"email": user.email, "password": format!("{PASSWORD}\u{0}")})),
        ),
        (
            "POST",
            "/api/auth/register".into(),
            None,
            Some(
                json!({"email": "new@example.com", "username": "new\u{1b}user", "password": PASSWORD}),
            ),
        ),
        (
            "GET",
            "/api/admin/users?q=%00".into(),
            Some(&admin.key),
            None,
        ),
        (
            "GET",
            "/api/admin/users?q=a%09b".into(),
            Some(&admin.key),
            None,
        ),
        (
            "GET",
            "/api/admin/users?q%00=a".into(),
            Some(&admin.key),
            None,
        ),
        (
            "GET",
            "/api/admin/credits/transactions?organization_id=%00".into(),
            Some(&admin.key),
            None,
        ),
        (
            "GET",
            format!("/api/admin/users?cursor={nul_cursor}"),
            Some(&admin.key),
            None,
        ),
        (
            "GET",
            format!("/api/admin/organizations?cursor={nul_cursor}"),
            Some(&admin.key),
            None,
        ),
        (
            "POST",
            "/api/admin/users/search".into(),
            Some(&admin.key),
            Some(
                json!({"sort": {"field": "email", "direction": "asc"}, "cursor": nul_search_cursor}),
            ),
        ),
        (
            "POST",
            "/api/admin/users/bulk-disable".into(),
            Some(&admin.key),
            Some(json!({"user_ids": [user.id, "usr_\u{0}"], "reason": "spam"})),
        ),
        (
            "POST",
            "/api/admin/users/bulk-disable".into(),
            Some(&admin.key),
            Some(json!({"user_ids": [user.id], "reason": "spam\u{7f}"})),
        ),
        (
            "POST",
            "/api/admin/users".into(),
            Some(&admin.key),
            Some(
                json!({"email": "b@example.com", "username": "bob", "name": {"x": 1}, "n\u{0}": 1}),
            ),
        ),
        (
            "GET",
            "/api/admin/users/usr_%00".into(),
            Some(&admin.key),
            None,
        ),
        (
            "PATCH",
            format!("/api/admin/users/{}%00", user.id),
            Some(&admin.key),
            Some(json!({"status": "disabled"})),
        ),
        (
            "POST",
            "/api/runs".into(),
            Some(&user.token),
            Some(json!({"name": "r", "credits": 1, "input": {"deep": ["ok", {"k": "v\u{0}"}]}})),
        ),
        (
            "POST",
            "/api/runs".into(),
            Some(&user.token),
            Some(json!({"name": "r", "credits": 1, "input": {"k\u{0}": "v"}})),
        ),
    ];
    for (method, path, token, body) in cases {
        let mut request = app
            .client
            .request(method.parse().expect("method"), app.url(&path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = &body {
            request = request.json(body);
        }
        let (status, error) = json_of(request.send().await.expect("request")).await;
        assert_error(status, &error, 400, "BAD_REQUEST");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("control character") || m.contains("cursor")),
            "{method} {path}: {error}"
        );
    }
    assert_eq!(
        snapshot(&app).await,
        before,
        "refused requests change nothing"
    );
}

#[tokio::test]
async fn line_breaks_and_tabs_stay_allowed_in_json_text() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    // A password may hold a tab; the request is read (and refused only as a wrong password).
    let (status, error) = json_of(
        app.post("/api/auth/sessions")
            .json(&json!({"email": user.email, "password": "tab\there\nnewline"}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_error(status, &error, 401, "UNAUTHORIZED");
}
