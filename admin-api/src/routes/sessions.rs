//! `POST /api/admin/sessions/revoke-all`: sign everybody out.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    audit,
    auth::PlatformAdmin,
    error::{ApiError, ErrorEnvelope},
    extract::Json,
    ids::IdKind,
    state::AppState,
    validate,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(revoke_all))
}

/// `POST /sessions/revoke-all` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeAll {
    /// Why; recorded in the audit log.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub reason: String,
    /// Keep this user's sessions (typically the calling admin's own).
    #[schema(pattern = "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub exclude_user_id: Option<String>,
}

/// Result of a revoke-all.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevokeAllResult {
    /// Sessions revoked (those still active before the call).
    pub revoked: i64,
}

/// Revokes every active session (except `exclude_user_id`'s), audited as
/// `sessions.revoked_all`. API keys are not sessions and keep working. Takes effect on the next
/// request, because every request looks its session up.
#[utoipa::path(
    post,
    path = "/sessions/revoke-all",
    tag = "sessions",
    request_body = RevokeAll,
    responses(
        (status = 200, body = RevokeAllResult),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope, description = "exclude_user_id names no user")
    )
)]
async fn revoke_all(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Json(body): Json<RevokeAll>,
) -> Result<Json<RevokeAllResult>, ApiError> {
    let reason = validate::text("reason", &body.reason, 500)?;
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    if let Some(id) = &body.exclude_user_id {
        let exists = IdKind::User.matches(id)
            && tx
                .query_opt("SELECT 1 FROM users WHERE id = $1", &[id])
                .await?
                .is_some();
        if !exists {
            return Err(ApiError::not_found("exclude_user_id: user not found"));
        }
    }
    let revoked = tx
        .execute(
            "UPDATE sessions SET revoked_at = now() \
             WHERE revoked_at IS NULL AND expires_at > now() \
               AND ($1::text IS NULL OR user_id <> $1)",
            &[&body.exclude_user_id],
        )
        .await?;
    let revoked = i64::try_from(revoked).unwrap_or(i64::MAX);
    audit::record(
        &tx,
        &admin.audit(),
        "sessions.revoked_all",
        "session",
        "*",
        json!({
            "revoked": {"before": null, "after": revoked},
            "reason": {"before": null, "after": reason},
            "exclude_user_id": {"before": null, "after": body.exclude_user_id},
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(RevokeAllResult { revoked }))
}
