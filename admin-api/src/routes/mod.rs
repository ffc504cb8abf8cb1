//! The route tree, one module per URL group, and the OpenAPI document generated from it.
//!
//! Each module exposes `pub fn routes() -> OpenApiRouter<AppState>` registering its handlers
//! with `utoipa_axum::routes!`, so a route cannot exist without its OpenAPI entry. Admin
//! modules are merged into [`admin_routes`] (mounted under `/api/admin` behind
//! [`crate::auth::admin_guard`]); user-facing ones into [`public_routes`].

use std::sync::Arc;

use axum::{middleware, Extension};
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{auth::admin_guard, error::ErrorEnvelope, state::AppState};

pub mod access_log;
pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod auth_config;
pub mod credits;
pub mod email;
pub mod gateway;
pub mod gateway_preview;
pub mod gateway_risk;
pub mod gateway_rules;
pub mod groups;
pub mod health;
pub mod invitation_codes;
pub mod mfa;
pub mod organizations;
pub mod passwords;
pub mod redeem;
pub mod redemption_codes;
pub mod referrals;
pub mod runs;
pub mod sessions;
pub mod stats;
pub mod users;

/// Base path of the admin API.
pub const ADMIN_BASE: &str = "/api/admin";

/// Every `/api/admin` route group; paths inside are relative to [`ADMIN_BASE`].
/// One line per module.
pub fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(audit::routes())
        .merge(auth_config::routes())
        .merge(users::routes())
        .merge(mfa::admin_routes())
        .merge(sessions::routes())
        .merge(api_keys::routes())
        .merge(passwords::admin_routes())
        .merge(organizations::routes())
        .merge(groups::routes())
        .merge(stats::routes())
        .merge(gateway::routes())
        .merge(gateway_rules::routes())
        .merge(access_log::routes())
        .merge(email::routes())
        .merge(credits::routes())
        .merge(runs::routes())
        .merge(invitation_codes::routes())
        .merge(referrals::routes())
        .merge(redemption_codes::routes())
}

/// Routes outside `/api/admin` (sign-up, sign-in, `/api/me`, health).
pub fn public_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(auth::routes())
        .merge(passwords::public_routes())
        .merge(sessions::me_routes())
        .merge(mfa::routes())
        .merge(health::routes())
        .merge(redeem::routes())
        .merge(runs::public_routes())
        .routes(routes!(openapi_json))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Watchpost admin API",
        description = "Users, organizations, gateway config, access log, codes, credits and audit log. \
            Errors are always {\"error\":{\"code\",\"message\",\"request_id\"}}."
    ),
    modifiers(&BearerAuth),
    components(schemas(ErrorEnvelope)),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key (wpk_…) or a session token (wps_…)"))
                    .build(),
            ),
        );
    }
}

/// The whole application router (without the server-wide layers of [`crate::server`]).
pub fn router(state: AppState) -> axum::Router {
    let admin =
        admin_routes().route_layer(middleware::from_fn_with_state(state.clone(), admin_guard));
    let (router, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest(ADMIN_BASE, admin)
        .merge(public_routes())
        .split_for_parts();
    let mut document = serde_json::to_value(&openapi).unwrap_or_default();
    document_error_responses(&mut document);
    document_control_character_rule(&mut document);
    let document = Arc::new(OpenApiDocument(document));
    router.layer(Extension(document)).with_state(state)
}

/// Adds to every operation the error answers that come from the layers around the handlers
/// rather than from the handler itself, each with the error envelope (handlers document their
/// own 404, 409 and 422):
///
/// - 400 where the operation reads parameters or a body (the extractors' rules, control
///   characters included);
/// - 401 and 403 where a bearer token is required (every `/api/admin` operation needs a
///   platform admin);
/// - 404 where a path parameter names a resource;
/// - 413 where there is a body (`[admin] body_limit_bytes`);
/// - 429 where a per-caller throttle applies (authenticated operations and public writes);
/// - 503 everywhere (PostgreSQL or Redis unavailable, or `[admin] request_timeout_ms` passed).
fn document_error_responses(document: &mut serde_json::Value) {
    use serde_json::{json, Value};
    const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];
    let envelope = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}
        })
    };
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let has_path_param = path.contains('{');
        for method in METHODS {
            let Some(op) = item.get_mut(method).and_then(Value::as_object_mut) else {
                continue;
            };
            // No `security` means the document-wide bearer requirement; `[{}]` means none.
            let secured = op
                .get("security")
                .and_then(Value::as_array)
                .is_none_or(|reqs| {
                    reqs.iter()
                        .any(|r| r.as_object().is_some_and(|o| !o.is_empty()))
                });
            let has_params = op
                .get("parameters")
                .and_then(Value::as_array)
                .is_some_and(|p| !p.is_empty());
            let has_body = op.contains_key("requestBody");
            let mut add = vec![(
                "503",
                "PostgreSQL or Redis unavailable, or the request timed out",
            )];
            if has_params || has_body {
                add.push((
                    "400",
                    "Malformed input: the message says which field and why",
                ));
            }
            if secured {
                add.push(("401", "Missing, unknown, expired or revoked token"));
                add.push(("403", "The token's user may not do this"));
            }
            if has_path_param {
                add.push(("404", "No such resource"));
            }
            if has_body {
                add.push(("413", "Request body over the size limit"));
            }
            if secured || has_body {
                add.push((
                    "429",
                    "Rate limited: retry after the Retry-After header's seconds",
                ));
            }
            let responses = op.entry("responses").or_insert_with(|| json!({}));
            let Some(responses) = responses.as_object_mut() else {
                continue;
            };
            for (status, description) in add {
                responses
                    .entry(status)
                    .or_insert_with(|| envelope(description));
            }
        }
    }
}

/// States the extractors' control-character rule (see [`crate::extract`]) in the document: every
/// string query or path parameter, and every string property of a request body's schema,
/// that has no pattern, format or enum of its own gets a pattern refusing the characters the
/// API refuses (all C0 controls and DEL in parameters; the same but tab, line feed and
/// carriage return in JSON).
fn document_control_character_rule(document: &mut serde_json::Value) {
    use serde_json::Value;
    const PARAM_TEXT: &str = "^[^\\u0000-\\u001F\\u007F]*$";
    const JSON_TEXT: &str = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F]*$";

    fn constrain(schema: &mut Value, pattern: &str) {
        let Some(object) = schema.as_object_mut() else {
            return;
        };
        let is_string = match object.get("type") {
            Some(Value::String(t)) => t == "string",
            Some(Value::Array(types)) => types.iter().any(|t| t == "string"),
            _ => false,
        };
        if is_string
            && !["pattern", "format", "enum", "const"]
                .iter()
                .any(|k| object.contains_key(*k))
        {
            object.insert("pattern".into(), Value::from(pattern));
        }
        for key in ["properties", "patternProperties"] {
            if let Some(props) = object.get_mut(key).and_then(Value::as_object_mut) {
                props.values_mut().for_each(|p| constrain(p, pattern));
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(inner) = object.get_mut(key) {
                constrain(inner, pattern);
            }
        }
        for key in ["oneOf", "anyOf", "allOf"] {
            if let Some(list) = object.get_mut(key).and_then(Value::as_array_mut) {
                list.iter_mut().for_each(|p| constrain(p, pattern));
            }
        }
    }

    fn refs(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(object) => {
                if let Some(Value::String(r)) = object.get("$ref") {
                    if let Some(name) = r.strip_prefix("#/components/schemas/") {
                        found.push(name.to_string());
                    }
                }
                object.values().for_each(|v| refs(v, found));
            }
            Value::Array(list) => list.iter().for_each(|v| refs(v, found)),
            _ => {}
        }
    }

    // Request bodies and parameters, collecting the component schemas bodies refer to.
    let mut pending = Vec::new();
    if let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for op in item.values_mut() {
                if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                    for param in params {
                        let located = param
                            .get("in")
                            .and_then(Value::as_str)
                            .is_some_and(|at| at == "query" || at == "path");
                        if located {
                            if let Some(schema) = param.get_mut("schema") {
                                constrain(schema, PARAM_TEXT);
                            }
                        }
                    }
                }
                if let Some(body) = op.get_mut("requestBody") {
                    refs(body, &mut pending);
                    if let Some(content) = body.get_mut("content").and_then(Value::as_object_mut) {
                        for media in content.values_mut() {
                            if let Some(schema) = media.get_mut("schema") {
                                constrain(schema, JSON_TEXT);
                            }
                        }
                    }
                }
            }
        }
    }
    let Some(schemas) = document
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let mut done = std::collections::BTreeSet::new();
    while let Some(name) = pending.pop() {
        if !done.insert(name.clone()) {
            continue;
        }
        if let Some(schema) = schemas.get_mut(&name) {
            refs(schema, &mut pending);
            constrain(schema, JSON_TEXT);
        }
    }
}

/// The generated OpenAPI document, served as JSON.
#[derive(Debug)]
pub struct OpenApiDocument(pub serde_json::Value);

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get,
    path = "/api/admin/openapi.json",
    tag = "meta",
    security(()),
    responses((status = 200, description = "OpenAPI document", content_type = "application/json"))
)]
async fn openapi_json(
    Extension(doc): Extension<Arc<OpenApiDocument>>,
) -> axum::Json<serde_json::Value> {
    axum::Json(doc.0.clone())
}
