//! Sessions: `POST /api/admin/sessions/revoke-all` (sign everybody out), a user's sessions
//! (`/api/admin/users/{id}/sessions…`) and the caller's own (`/api/me/sessions…`).

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    audit,
    auth::{CurrentUser, PlatformAdmin, Principal},
    error::{ApiError, ErrorEnvelope},
    extract::{Json, Path, Query},
    ids::IdKind,
    models::{col, shown_email_sql, PersonRef},
    pagination::{Cursor, Page, PageRequest},
    state::AppState,
    validate,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(revoke_all))
        .routes(routes!(user_sessions))
        .routes(routes!(revoke_user_session))
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

/// `/api/me/sessions…`: the caller's own sessions (a session token is needed; API keys are
/// 403).
pub(super) fn me_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(my_sessions))
        .routes(routes!(revoke_my_session))
}

/// One active session. Neither the token nor its hash is ever shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionInfo {
    /// `ses_…`.
    pub id: String,
    pub created_at: DateTime<Utc>,
    /// Last request made with it, recorded at most once a minute; null before the first.
    pub last_seen_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    /// Client IP at sign-in.
    pub ip: Option<String>,
    /// User agent at sign-in.
    pub user_agent: Option<String>,
    /// The admin who obtained it by impersonation ({id, email}, the email read from the users
    /// table when answering); null otherwise.
    pub impersonated_by: Option<PersonRef>,
    /// In `/api/me/sessions`: whether this is the session making the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<bool>,
}

/// Paging of session lists.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SessionsQuery {
    /// Page size, default 20, at most 100.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A user's active (neither revoked nor expired) sessions, newest first.
async fn active_sessions(
    client: &impl GenericClient,
    user_id: &str,
    page: &PageRequest,
    current: Option<&str>,
) -> Result<Page<SessionInfo>, ApiError> {
    let rows = client
        .query(
            &format!(
                "SELECT s.id, s.created_at, s.last_seen_at, s.expires_at, host(s.ip) AS ip, \
                        s.user_agent, s.impersonator_id, {} AS impersonator_email \
                 FROM sessions s LEFT JOIN users iu ON iu.id = s.impersonator_id \
                 WHERE s.user_id = $1 AND s.revoked_at IS NULL AND s.expires_at > now() \
                   AND ($2::timestamptz IS NULL OR (s.created_at, s.id) < ($2, $3::text)) \
                 ORDER BY s.created_at DESC, s.id DESC LIMIT $4",
                shown_email_sql("iu")
            ),
            &[
                &user_id,
                &page.after_time(),
                &page.after_id(),
                &page.fetch_limit(),
            ],
        )
        .await?;
    let items = rows
        .iter()
        .map(|row| {
            let id: String = col(row, "id")?;
            Ok(SessionInfo {
                current: current.map(|c| c == id),
                id,
                created_at: col(row, "created_at")?,
                last_seen_at: col(row, "last_seen_at")?,
                expires_at: col(row, "expires_at")?,
                ip: col(row, "ip")?,
                user_agent: col(row, "user_agent")?,
                impersonated_by: col::<Option<String>>(row, "impersonator_id")?
                    .map(|id| {
                        Ok::<_, ApiError>(PersonRef {
                            id,
                            email: col(row, "impersonator_email")?,
                        })
                    })
                    .transpose()?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Page::from_rows(items, page, |s| Cursor {
        created_at: s.created_at,
        id: s.id.clone(),
    }))
}

/// Revokes one active session of `user_id` and audits it (`session.revoked`) in one
/// transaction; 404 when it is not an active session of that user.
async fn revoke_one(
    state: &AppState,
    ctx: &audit::AuditCtx,
    user_id: &str,
    session_id: &str,
) -> Result<(), ApiError> {
    if !IdKind::Session.matches(session_id) {
        return Err(ApiError::not_found("session not found"));
    }
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let row = tx
        .query_opt(
            "UPDATE sessions SET revoked_at = now() \
             WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL AND expires_at > now() \
             RETURNING revoked_at",
            &[&session_id, &user_id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("session not found"))?;
    let revoked_at: DateTime<Utc> = col(&row, "revoked_at")?;
    audit::record(
        &tx,
        ctx,
        "session.revoked",
        "session",
        session_id,
        json!({
            "user_id": {"before": null, "after": user_id},
            "revoked_at": {"before": null, "after": revoked_at},
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A user's active sessions, newest first.
#[utoipa::path(
    get,
    path = "/users/{id}/sessions",
    tag = "sessions",
    params(
        ("id" = String, Path, description = "User id (usr_…)", pattern = "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$"),
        SessionsQuery
    ),
    responses(
        (status = 200, body = Page<SessionInfo>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)
    )
)]
async fn user_sessions(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Path(id): Path<String>,
    Query(q): Query<SessionsQuery>,
) -> Result<Json<Page<SessionInfo>>, ApiError> {
    let page = PageRequest::new(q.limit, q.cursor.as_deref())?;
    if !IdKind::User.matches(&id) {
        return Err(ApiError::not_found("user not found"));
    }
    let conn = state.db().await?;
    if conn
        .query_opt("SELECT 1 FROM users WHERE id = $1", &[&id])
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("user not found"));
    }
    Ok(Json(active_sessions(&conn, &id, &page, None).await?))
}

/// Revokes one of a user's sessions (audited as `session.revoked`); the token answers 401
/// from the next request on.
#[utoipa::path(
    delete,
    path = "/users/{id}/sessions/{sid}",
    tag = "sessions",
    params(
        ("id" = String, Path, description = "User id (usr_…)", pattern = "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$"),
        ("sid" = String, Path, description = "Session id (ses_…)", pattern = "^ses_[0-7][0-9A-HJKMNP-TV-Z]{25}$")
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope, description = "No such active session of this user")
    )
)]
async fn revoke_user_session(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path((id, sid)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    if !IdKind::User.matches(&id) {
        return Err(ApiError::not_found("user not found"));
    }
    revoke_one(&state, &admin.audit(), &id, &sid).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn session_of(principal: &Principal) -> Result<&str, ApiError> {
    principal
        .session_id
        .as_deref()
        .ok_or_else(|| ApiError::forbidden("a session token is required"))
}

/// The caller's active sessions, newest first; `current` marks the one making the request.
#[utoipa::path(
    get,
    path = "/api/me/sessions",
    tag = "auth",
    params(SessionsQuery),
    responses(
        (status = 200, body = Page<SessionInfo>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope, description = "An API key, not a session")
    )
)]
async fn my_sessions(
    State(state): State<AppState>,
    CurrentUser(principal): CurrentUser,
    Query(q): Query<SessionsQuery>,
) -> Result<Json<Page<SessionInfo>>, ApiError> {
    let current = session_of(&principal)?;
    let page = PageRequest::new(q.limit, q.cursor.as_deref())?;
    let conn = state.db().await?;
    Ok(Json(
        active_sessions(&conn, &principal.user_id, &page, Some(current)).await?,
    ))
}

/// Revokes one of the caller's sessions (audited as `session.revoked`); the current one
/// too (that signs out).
#[utoipa::path(
    delete,
    path = "/api/me/sessions/{sid}",
    tag = "auth",
    params(("sid" = String, Path, description = "Session id (ses_…)", pattern = "^ses_[0-7][0-9A-HJKMNP-TV-Z]{25}$")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope, description = "An API key, not a session"),
        (status = 404, body = ErrorEnvelope, description = "No such active session of the caller")
    )
)]
async fn revoke_my_session(
    State(state): State<AppState>,
    CurrentUser(principal): CurrentUser,
    Path(sid): Path<String>,
) -> Result<StatusCode, ApiError> {
    session_of(&principal)?;
    revoke_one(&state, &principal.audit(), &principal.user_id, &sid).await?;
    Ok(StatusCode::NO_CONTENT)
}
