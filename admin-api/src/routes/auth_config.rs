//! `GET/PATCH /api/admin/config`: the authentication settings.

use axum::extract::State;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    audit,
    auth::{
        settings::{check_duration, parse_duration, PASSWORD_MIN_LENGTH_RANGE},
        AuthSettings, PlatformAdmin,
    },
    error::{ApiError, ErrorEnvelope},
    extract::Json,
    state::AppState,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_config, patch_config))
}

/// A session duration: seconds, or text like `"14d"`, `"12h"`, `"30m"`, `"600s"`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum DurationInput {
    Seconds(i64),
    Text(String),
}

/// `PATCH /api/admin/config` body; absent fields are unchanged.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfigPatch {
    /// 8..=128.
    #[schema(minimum = 8, maximum = 128)]
    pub password_min_length: Option<i64>,
    /// 5 minutes ..= 365 days.
    pub session_duration: Option<DurationInput>,
    pub mfa_required: Option<bool>,
    pub registration_requires_invitation: Option<bool>,
}

/// The authentication settings.
#[utoipa::path(
    get,
    path = "/config",
    tag = "config",
    responses(
        (status = 200, body = AuthSettings),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope)
    )
)]
async fn get_config(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
) -> Result<Json<AuthSettings>, ApiError> {
    let conn = state.db().await?;
    Ok(Json(AuthSettings::load(&conn).await?))
}

/// Changes authentication settings (audited as `auth_config.updated`). Invalid values are 400
/// and change nothing.
#[utoipa::path(
    patch,
    path = "/config",
    tag = "config",
    request_body = AuthConfigPatch,
    responses(
        (status = 200, body = AuthSettings),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope)
    )
)]
async fn patch_config(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Json(patch): Json<AuthConfigPatch>,
) -> Result<Json<AuthSettings>, ApiError> {
    let min_length = patch
        .password_min_length
        .map(|n| {
            i32::try_from(n)
                .ok()
                .filter(|n| PASSWORD_MIN_LENGTH_RANGE.contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request("password_min_length must be between 8 and 128")
                })
        })
        .transpose()?;
    let duration = patch
        .session_duration
        .map(|d| match d {
            DurationInput::Seconds(s) => check_duration(s),
            DurationInput::Text(t) => parse_duration(&t),
        })
        .transpose()
        .map_err(|why| ApiError::bad_request(format!("session_duration {why}")))?;

    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    // Lock the row so concurrent patches apply one after the other.
    tx.execute("SELECT 1 FROM auth_config WHERE id FOR UPDATE", &[])
        .await?;
    let before = AuthSettings::load(&tx).await?;
    tx.execute(
        "UPDATE auth_config SET \
           password_min_length = COALESCE($1, password_min_length), \
           session_duration_secs = COALESCE($2, session_duration_secs), \
           mfa_required = COALESCE($3, mfa_required), \
           registration_requires_invitation = COALESCE($4, registration_requires_invitation), \
           updated_at = now() \
         WHERE id",
        &[
            &min_length,
            &duration,
            &patch.mfa_required,
            &patch.registration_requires_invitation,
        ],
    )
    .await?;
    let after = AuthSettings::load(&tx).await?;
    let mut changes = audit::diff(&audit::snapshot(&before)?, &audit::snapshot(&after)?);
    if let Some(map) = changes.as_object_mut() {
        map.remove("updated_at");
    }
    if changes.as_object().is_some_and(|m| m.is_empty()) {
        // Nothing changed: no mutation, no audit row.
        tx.rollback().await?;
        return Ok(Json(before));
    }
    audit::record(
        &tx,
        &admin.audit(),
        "auth_config.updated",
        "auth_config",
        "auth_config",
        changes,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(after))
}
