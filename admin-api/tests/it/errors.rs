//! The error envelope everywhere, the OpenAPI document, health, and PostgreSQL outages.

use crate::common::{assert_error, json_of, ChaosProxy, TestApp};
use serde_json::json;

#[tokio::test]
async fn unknown_route_is_404_envelope_with_request_id() {
    let app = TestApp::spawn().await;
    let response = app
        .get("/api/admin/nope")
        .header("x-request-id", "trace-abc")
        .send()
        .await
        .expect("request");
    assert_eq!(response.headers()["x-request-id"], "trace-abc");
    let (status, body) = json_of(response).await;
    assert_error(status, &body, 404, "NOT_FOUND");
    assert_eq!(body["error"]["request_id"], "trace-abc");
}

#[tokio::test]
async fn generated_request_id_is_echoed_and_in_the_envelope() {
    let app = TestApp::spawn().await;
    let response = app.get("/nowhere").send().await.expect("request");
    let id = response.headers()["x-request-id"]
        .to_str()
        .expect("header")
        .to_string();
    let (status, body) = json_of(response).await;
    assert_error(status, &body, 404, "NOT_FOUND");
    assert_eq!(body["error"]["request_id"], id.as_str());
}

#[tokio::test]
async fn wrong_method_is_405_envelope() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let (status, body) = json_of(
        app.put("/api/admin/audit-logs")
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_error(status, &body, 405, "METHOD_NOT_ALLOWED");
    let (status, body) = json_of(app.get("/api/auth/register").send().await.expect("req")).await;
    assert_error(status, &body, 405, "METHOD_NOT_ALLOWED");
}

#[tokio::test]
async fn malformed_json_is_400_saying_what_was_wrong() {
    let app = TestApp::spawn().await;
    let (status, body) = json_of(
        app.post("/api/auth/register")
            .header("content-type", "application/json")
            .body("{\"email\": ")
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_error(status, &body, 400, "BAD_REQUEST");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("malformed JSON")),
        "{body}"
    );
    // Well-formed JSON with a missing field names the field.
    let (status, body) = json_of(
        app.post("/api/auth/register")
            .json(&json!({"email": "a@example.com"}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_error(status, &body, 400, "BAD_REQUEST");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("password")),
        "{body}"
    );
    // Without a JSON content type.
    let (status, body) = json_of(
        app.post("/api/auth/register")
            .body("{}")
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_error(status, &body, 400, "BAD_REQUEST");
}

#[tokio::test]
async fn oversized_body_is_413_envelope() {
    let app = TestApp::builder()
        .configure(|c| c.admin.body_limit_bytes = 2048)
        .spawn()
        .await;
    let big = "x".repeat(10_000);
    let (status, body) = json_of(
        app.post("/api/auth/register")
            .json(&json!({"email": big, "username": "u", "password": "p"}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_error(status, &body, 413, "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn bad_query_strings_are_400() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    for query in [
        "limit=abc",
        "limit=0",
        "limit=501",
        "cursor=%%%",
        "from=yesterday",
        "unknown_filter=1",
    ] {
        let (status, body) = json_of(
            app.get(&format!("/api/admin/audit-logs?{query}"))
                .bearer_auth(&admin.key)
                .send()
                .await
                .expect("request"),
        )
        .await;
        assert_error(status, &body, 400, "BAD_REQUEST");
    }
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let app = TestApp::spawn().await;
    let doc = app.openapi().await;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/api/admin/audit-logs", "get"),
        ("/api/admin/audit-logs/verify", "get"),
        ("/api/admin/config", "get"),
        ("/api/admin/config", "patch"),
        ("/api/admin/openapi.json", "get"),
        ("/api/auth/register", "post"),
        ("/api/auth/sessions", "post"),
        ("/api/auth/sessions/current", "delete"),
        ("/api/me", "get"),
        ("/healthz", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn openapi_document_states_constraints_and_error_responses() {
    let app = TestApp::spawn().await;
    let doc = app.openapi().await;
    let envelope = json!({"$ref": "#/components/schemas/ErrorEnvelope"});
    let user = &doc["paths"]["/api/admin/users/{id}"]["get"];
    assert_eq!(
        user["parameters"][0]["schema"]["pattern"], "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$",
        "{user}"
    );
    for code in ["400", "401", "403", "404", "429", "503"] {
        assert_eq!(
            user["responses"][code]["content"]["application/json"]["schema"], envelope,
            "GET /users/{{id}} {code}: {user}"
        );
    }
    let list = &doc["paths"]["/api/admin/users"]["get"];
    let param = |name: &str| {
        list["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .map(|p| p["schema"].clone())
            .unwrap_or_else(|| panic!("parameter {name}: {list}"))
    };
    // The extractors' control-character rule, stated on free-text parameters.
    assert_eq!(param("q")["pattern"], "^[^\\u0000-\\u001F\\u007F]*$");
    assert_eq!(param("limit")["minimum"], 1);
    assert_eq!(param("limit")["maximum"], 100);
    let register = &doc["paths"]["/api/auth/register"]["post"]["responses"];
    for code in ["400", "413", "429", "503"] {
        assert!(register[code].is_object(), "register {code}: {register}");
    }
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["CreateUser"]["properties"]["username"]["pattern"],
        "^[A-Za-z0-9][A-Za-z0-9_.-]{2,31}$"
    );
    assert_eq!(
        schemas["CreateOrganization"]["properties"]["name"]["pattern"],
        "^[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$"
    );
    // JSON strings allow tab, line feed and carriage return.
    assert_eq!(
        schemas["SearchUsers"]["properties"]["query"]["pattern"],
        "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F]*$"
    );
    // Two different bodies, two schemas.
    assert!(schemas["InvitationCodePatch"]["properties"]["max_uses"].is_object());
    assert!(schemas["RedemptionCodePatch"]["properties"]["is_active"].is_object());
}

#[tokio::test]
async fn healthz_reports_both_stores() {
    let app = TestApp::spawn().await;
    let (status, body) = json_of(app.get("/healthz").send().await.expect("request")).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status": "ok", "postgres": "up", "redis": "up"})
    );
}

#[tokio::test]
async fn postgres_outage_is_503_and_recovers() {
    let proxy = ChaosProxy::start(ChaosProxy::postgres_target()).await;
    let app = TestApp::builder().postgres_via(proxy.addr).spawn().await;
    let admin = app.create_admin().await;
    let get_config = || async {
        json_of(
            app.get("/api/admin/config")
                .bearer_auth(&admin.key)
                .send()
                .await
                .expect("request"),
        )
        .await
    };
    let (status, _) = get_config().await;
    assert_eq!(status, 200);

    proxy.cut();
    let (status, body) = get_config().await;
    assert_error(status, &body, 503, "UNAVAILABLE");
    assert!(
        !body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("127.0.0.1"),
        "internal detail leaked: {body}"
    );
    let (status, body) = json_of(app.get("/healthz").send().await.expect("request")).await;
    assert_eq!(status, 503);
    assert_eq!(body["postgres"], "down");

    proxy.restore();
    // Recovery needs no restart: poll until the pool has reconnected.
    let mut recovered = false;
    for _ in 0..50 {
        if get_config().await.0 == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "the API did not recover after PostgreSQL came back"
    );
}
