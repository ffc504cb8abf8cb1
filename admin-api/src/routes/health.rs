//! `GET /healthz`.

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz))
}

/// Store reachability.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` when both stores answer, `degraded` otherwise.
    pub status: &'static str,
    /// `up` or `down`.
    pub postgres: &'static str,
    /// `up` or `down`.
    pub redis: &'static str,
}

fn up(ok: bool) -> &'static str {
    if ok {
        "up"
    } else {
        "down"
    }
}

/// Liveness and store reachability. 200 while PostgreSQL answers (Redis down is `degraded`:
/// the API still serves PostgreSQL-backed requests), 503 when PostgreSQL does not.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "meta",
    security(()),
    responses(
        (status = 200, body = Health),
        (status = 503, body = Health, description = "PostgreSQL unreachable")
    )
)]
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let pg = async {
        let conn = state.db().await.ok()?;
        conn.query_one("SELECT 1", &[]).await.ok()
    };
    let pg_ok = tokio::time::timeout(std::time::Duration::from_secs(2), pg)
        .await
        .ok()
        .flatten()
        .is_some();
    let mut con = state.redis();
    let redis_ok = state
        .redis_timeout(redis::cmd("PING").query_async::<String>(&mut con))
        .await
        .is_ok();
    let body = Health {
        status: if pg_ok && redis_ok { "ok" } else { "degraded" },
        postgres: up(pg_ok),
        redis: up(redis_ok),
    };
    let status = if pg_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}
