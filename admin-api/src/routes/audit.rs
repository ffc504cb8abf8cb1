//! `GET /api/admin/audit-logs`, `GET /api/admin/audit-logs/verify`.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    audit::{self, AuditEntry, Verification},
    auth::PlatformAdmin,
    error::{ApiError, ErrorEnvelope},
    extract::{Json, Query},
    pagination::{Cursor, Page, PageRequest},
    state::AppState,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_audit_logs))
        .routes(routes!(verify_audit_log))
}

/// Filters of the audit-log list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only entries by this actor.
    pub actor_id: Option<String>,
    /// Only this action, e.g. `user.updated`.
    pub action: Option<String>,
    /// Only this resource type, e.g. `user`.
    pub resource_type: Option<String>,
    /// Only entries at or after this time (RFC 3339).
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// Only entries before this time (RFC 3339).
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// Page size, default 50, at most 500.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn parse_time(field: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| ApiError::bad_request(format!("{field} must be an RFC 3339 time")))
        })
        .transpose()
}

/// Audit entries, newest first. Personal fields (emails, usernames, names in `changes`, the
/// actor's `ip` and `user_agent`) are stored sealed under their user's key and shown opened;
/// those of an erased (deleted) user show as `null` and their entry has `erased: true`.
#[utoipa::path(
    get,
    path = "/audit-logs",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, body = Page<AuditEntry>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope)
    )
)]
async fn list_audit_logs(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Page<AuditEntry>>, ApiError> {
    let page = PageRequest::with_bounds(q.limit, q.cursor.as_deref(), 50, 500)?;
    let from = parse_time("from", q.from.as_deref())?;
    let to = parse_time("to", q.to.as_deref())?;
    let conn = state.db().await?;
    let rows = conn
        .query(
            &format!(
                "SELECT {} FROM audit_log \
                 WHERE ($1::text IS NULL OR actor_id = $1) \
                   AND ($2::text IS NULL OR action = $2) \
                   AND ($3::text IS NULL OR resource_type = $3) \
                   AND ($4::timestamptz IS NULL OR created_at >= $4) \
                   AND ($5::timestamptz IS NULL OR created_at < $5) \
                   AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7::text)) \
                 ORDER BY created_at DESC, id DESC LIMIT $8",
                AuditEntry::COLUMNS
            ),
            &[
                &q.actor_id,
                &q.action,
                &q.resource_type,
                &from,
                &to,
                &page.after_time(),
                &page.after_id(),
                &page.fetch_limit(),
            ],
        )
        .await?;
    let mut items = rows
        .iter()
        .map(AuditEntry::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    crate::personal::reveal(&conn, state.config().secret_key.as_ref(), &mut items).await?;
    Ok(Json(Page::from_rows(items, &page, |e| Cursor {
        created_at: e.created_at,
        id: e.id.clone(),
    })))
}

/// Recomputes the hash chain over the whole log.
#[utoipa::path(
    get,
    path = "/audit-logs/verify",
    tag = "audit",
    responses(
        (status = 200, body = Verification),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope)
    )
)]
async fn verify_audit_log(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
) -> Result<Json<Verification>, ApiError> {
    let conn = state.db().await?;
    Ok(Json(audit::verify(&conn).await?))
}
