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
pub mod audit;
pub mod auth;
pub mod auth_config;
pub mod credits;
pub mod email;
pub mod gateway;
pub mod health;
pub mod invitation_codes;
pub mod organizations;
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
        .merge(sessions::routes())
        .merge(organizations::routes())
        .merge(stats::routes())
        .merge(gateway::routes())
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
        .merge(health::routes())
        .merge(redeem::routes())
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
    let document = Arc::new(OpenApiDocument(
        serde_json::to_value(&openapi).unwrap_or_default(),
    ));
    router.layer(Extension(document)).with_state(state)
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
