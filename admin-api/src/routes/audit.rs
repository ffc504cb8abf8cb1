//! `GET /api/admin/audit-logs`, `GET /api/admin/audit-logs/verify`.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    audit::{self, AuditEntry, Verification},
    auth::PlatformAdmin,
    error::{ApiError, ErrorEnvelope},
    extract::{Json, Query},
    ids::IdKind,
    models::{col, shown_email_sql, PersonRef},
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
    /// Only entries by this actor: a user id (`usr_…`, every entry the user made, with a
    /// session or any of their keys) or an API key id (`key_…`, the entries made with that
    /// key), i.e. any `actor.id` of a listed item.
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

/// What kind of caller made an audited change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorType {
    /// A user with a session (or an impersonation session: see `impersonated_by`).
    User,
    /// An API key (`/api/admin` or a `runs` key).
    ApiKey,
    /// The command line (`create-admin`, `rotate-secrets`): no actor.
    System,
}

/// Who made an audited change.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditActor {
    /// `usr_…` for a user, `key_…` for an API key, null for `system`.
    pub id: Option<String>,
    /// The user's email (for a key, its user's), read from `users` when answering: null for
    /// `system` and once that account is deleted or anonymised.
    pub email: Option<String>,
    #[serde(rename = "type")]
    pub actor_type: ActorType,
}

/// What an audited change was about.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditResource {
    /// e.g. `user`, `organization`, `api_key`.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// The resource's id; null when the change is about a singleton (e.g. `auth_config`).
    pub id: Option<String>,
}

/// One audit entry as listed: the stored row (whose fields the hash chain covers) plus the
/// people and the resource it names, resolved when answering.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditItem {
    #[serde(flatten)]
    pub entry: AuditEntry,
    pub actor: AuditActor,
    pub resource: AuditResource,
    /// The admin behind the impersonation session that acted; null otherwise.
    pub impersonated_by: Option<PersonRef>,
}

impl AuditItem {
    /// From a row of [`list_audit_logs`]' query: [`AuditEntry::COLUMNS`] plus `actor_email`
    /// and `impersonator_email`.
    fn from_row(row: &tokio_postgres::Row) -> Result<Self, ApiError> {
        let entry = AuditEntry::from_row(row)?;
        let actor_email: Option<String> = col(row, "actor_email")?;
        let actor = match (&entry.actor_api_key_id, &entry.actor_id) {
            (Some(key), _) => AuditActor {
                id: Some(key.clone()),
                email: actor_email,
                actor_type: ActorType::ApiKey,
            },
            (None, Some(user)) => AuditActor {
                id: Some(user.clone()),
                email: actor_email,
                actor_type: ActorType::User,
            },
            (None, None) => AuditActor {
                id: None,
                email: None,
                actor_type: ActorType::System,
            },
        };
        let impersonated_by = match &entry.impersonator_id {
            Some(id) => Some(PersonRef {
                id: id.clone(),
                email: col(row, "impersonator_email")?,
            }),
            None => None,
        };
        let resource = AuditResource {
            resource_type: entry.resource_type.clone(),
            id: entry.resource_id.clone(),
        };
        Ok(Self {
            entry,
            actor,
            resource,
            impersonated_by,
        })
    }
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

/// Audit entries, newest first. Each names its `actor` {id, email, type: user | api_key |
/// system}, its `resource` {type, id} and, for an impersonation, `impersonated_by` {id, email};
/// emails are read from the users table when answering (null once an account is deleted).
///
/// Personal fields (emails, usernames, names in `changes`, the
/// actor's `ip` and `user_agent`) are stored sealed under their user's key and shown opened;
/// those of an erased (deleted) user show as `null` and their entry has `erased: true`.
#[utoipa::path(
    get,
    path = "/audit-logs",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, body = Page<AuditItem>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope)
    )
)]
async fn list_audit_logs(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Page<AuditItem>>, ApiError> {
    let page = PageRequest::with_bounds(q.limit, q.cursor.as_deref(), 50, 500)?;
    let from = parse_time("from", q.from.as_deref())?;
    let to = parse_time("to", q.to.as_deref())?;
    // An actor id names a user or a key; each has its own column (and index).
    let (actor_user, actor_key) = match q.actor_id {
        Some(id) if IdKind::ApiKey.matches(&id) => (None, Some(id)),
        other => (other, None),
    };
    let conn = state.db().await?;
    let rows = conn
        .query(
            // The page is chosen first (indexes on audit_log only); the two user lookups by
            // primary key then run for its rows alone.
            &format!(
                "SELECT e.*, {actor_email} AS actor_email, \
                        {impersonator_email} AS impersonator_email \
                 FROM (SELECT {columns} FROM audit_log \
                 WHERE ($1::text IS NULL OR actor_id = $1) \
                   AND ($9::text IS NULL OR actor_api_key_id = $9) \
                   AND ($2::text IS NULL OR action = $2) \
                   AND ($3::text IS NULL OR resource_type = $3) \
                   AND ($4::timestamptz IS NULL OR created_at >= $4) \
                   AND ($5::timestamptz IS NULL OR created_at < $5) \
                   AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7::text)) \
                 ORDER BY created_at DESC, id DESC LIMIT $8) e \
                 LEFT JOIN users au ON au.id = e.actor_id \
                 LEFT JOIN users iu ON iu.id = e.impersonator_id \
                 ORDER BY e.created_at DESC, e.id DESC",
                columns = AuditEntry::COLUMNS,
                actor_email = shown_email_sql("au"),
                impersonator_email = shown_email_sql("iu"),
            ),
            &[
                &actor_user,
                &q.action,
                &q.resource_type,
                &from,
                &to,
                &page.after_time(),
                &page.after_id(),
                &page.fetch_limit(),
                &actor_key,
            ],
        )
        .await?;
    let mut items = rows
        .iter()
        .map(AuditItem::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    // Open the sealed personal fields of the stored rows (the chain covers their sealed form).
    let mut entries: Vec<AuditEntry> = items.iter().map(|i| i.entry.clone()).collect();
    crate::personal::reveal(&conn, state.config().secret_key.as_ref(), &mut entries).await?;
    for (item, entry) in items.iter_mut().zip(entries) {
        item.entry = entry;
    }
    Ok(Json(Page::from_rows(items, &page, |e| Cursor {
        created_at: e.entry.created_at,
        id: e.entry.id.clone(),
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
