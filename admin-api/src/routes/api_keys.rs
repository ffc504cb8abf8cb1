//! `/api/admin/api-keys…`: create (the key is shown once), list (never the key), revoke.
//!
//! Decisions:
//! - `admin` and `admin:read` are for platform admins only (422 for anyone else): they reach
//!   `/api/admin`, which answers platform admins only. A key also loses them in effect when
//!   its user is later demoted (the admin guard checks the role on every request).
//! - `user_id` defaults to the calling admin. Revoking an already revoked key is 204 and
//!   changes (and audits) nothing.

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    audit,
    auth::{create_api_key, ApiKey, PlatformAdmin, SCOPE_ADMIN, SCOPE_ADMIN_READ, SCOPE_RUNS},
    error::{ApiError, ErrorEnvelope},
    extract::{Json, Path, Query},
    ids::IdKind,
    models::{col, Role},
    pagination::{Cursor, Page, PageRequest},
    routes::users::ExpiresIn,
    state::AppState,
    validate,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_api_keys, create_api_key_route))
        .routes(routes!(revoke_api_key))
}

/// Shortest key lifetime (`expires_in`), in seconds: 5 minutes.
pub const API_KEY_MIN_SECS: i64 = 300;
/// Longest key lifetime (`expires_in`), in seconds: 365 days.
pub const API_KEY_MAX_SECS: i64 = 365 * 24 * 3600;

/// What a key may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub enum Scope {
    /// All of `/api/admin` (platform admins only).
    #[serde(rename = "admin")]
    Admin,
    /// The `GET`s of `/api/admin` (platform admins only).
    #[serde(rename = "admin:read")]
    AdminRead,
    /// The user-facing `/api/runs`, acting as the key's user.
    #[serde(rename = "runs")]
    Runs,
}

impl Scope {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => SCOPE_ADMIN,
            Self::AdminRead => SCOPE_ADMIN_READ,
            Self::Runs => SCOPE_RUNS,
        }
    }

    fn needs_platform_admin(self) -> bool {
        matches!(self, Self::Admin | Self::AdminRead)
    }
}

/// `POST /api-keys` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// What the key is for.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: String,
    /// The user the key acts as; default the calling admin.
    #[schema(pattern = "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub user_id: Option<String>,
    /// At least one; duplicates are ignored.
    #[schema(min_items = 1)]
    pub scopes: Vec<Scope>,
    /// Lifetime: seconds or `"90d"`, `"12h"`, `"30m"`; 5 minutes ..= 365 days. Absent: the
    /// key does not expire.
    pub expires_in: Option<ExpiresIn>,
}

/// A new key: `key` is shown only in this answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    pub id: String,
    /// The bearer credential (`wpk_…`); store it now, it cannot be shown again.
    pub key: String,
    pub prefix: String,
    pub name: String,
    pub user_id: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Creates an API key (audited as `api_key.created`, without the key). `admin` and
/// `admin:read` for a user who is not a platform admin are 422; an unknown `user_id` is 404.
#[utoipa::path(
    post,
    path = "/api-keys",
    tag = "api-keys",
    request_body = CreateApiKey,
    responses(
        (status = 201, body = CreatedApiKey),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope, description = "user_id names no user"),
        (status = 422, body = ErrorEnvelope)
    )
)]
async fn create_api_key_route(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Json(body): Json<CreateApiKey>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    let name = validate::text("name", &body.name, 100)?;
    let mut scopes: Vec<Scope> = Vec::new();
    for scope in body.scopes {
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(ApiError::bad_request("scopes must name at least one scope"));
    }
    let expires_at = match body.expires_in {
        None => None,
        Some(expires_in) => {
            let secs = match expires_in {
                ExpiresIn::Seconds(s) => s,
                ExpiresIn::Text(t) => crate::auth::settings::parse_duration(&t)
                    .map_err(|why| ApiError::bad_request(format!("expires_in {why}")))?,
            };
            if !(API_KEY_MIN_SECS..=API_KEY_MAX_SECS).contains(&secs) {
                return Err(ApiError::bad_request(
                    "expires_in must be between 5 minutes and 365 days",
                ));
            }
            Some(Utc::now() + chrono::Duration::seconds(secs))
        }
    };
    let user_id = body.user_id.unwrap_or_else(|| admin.id().to_string());
    if !IdKind::User.matches(&user_id) {
        return Err(ApiError::not_found("user_id: user not found"));
    }
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let role: String = tx
        .query_opt("SELECT role FROM users WHERE id = $1", &[&user_id])
        .await?
        .ok_or_else(|| ApiError::not_found("user_id: user not found"))
        .and_then(|row| col(&row, "role"))?;
    if role != Role::PlatformAdmin.as_str() {
        if let Some(s) = scopes.iter().find(|s| s.needs_platform_admin()) {
            return Err(ApiError::unprocessable(format!(
                "scope {} is only for platform admins",
                s.as_str()
            )));
        }
    }
    let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let issued = create_api_key(&tx, &user_id, &name, &names, expires_at).await?;
    audit::record(
        &tx,
        &admin.audit(),
        "api_key.created",
        "api_key",
        &issued.id,
        json!({
            "name": {"before": null, "after": name},
            "user_id": {"before": null, "after": user_id},
            "prefix": {"before": null, "after": issued.prefix},
            "scopes": {"before": null, "after": names},
            "expires_at": {"before": null, "after": expires_at},
        }),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            id: issued.id,
            key: issued.key,
            prefix: issued.prefix,
            name,
            user_id,
            scopes: names.iter().map(|s| (*s).to_string()).collect(),
            created_at: issued.created_at,
            expires_at,
        }),
    ))
}

/// Filters of `GET /api-keys`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListApiKeysQuery {
    /// Only this user's keys.
    #[param(pattern = "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub user_id: Option<String>,
    /// Page size, default 20, at most 100.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// API keys, newest first, revoked ones included (`revoked_at`); never the key itself.
#[utoipa::path(
    get,
    path = "/api-keys",
    tag = "api-keys",
    params(ListApiKeysQuery),
    responses(
        (status = 200, body = Page<ApiKey>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope)
    )
)]
async fn list_api_keys(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Query(q): Query<ListApiKeysQuery>,
) -> Result<Json<Page<ApiKey>>, ApiError> {
    let page = PageRequest::new(q.limit, q.cursor.as_deref())?;
    if q.user_id
        .as_deref()
        .is_some_and(|id| !IdKind::User.matches(id))
    {
        return Err(ApiError::bad_request("user_id must be a user id (usr_…)"));
    }
    let conn = state.db().await?;
    let rows = conn
        .query(
            &format!(
                "SELECT {} FROM api_keys \
                 WHERE ($1::text IS NULL OR user_id = $1) \
                   AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::text)) \
                 ORDER BY created_at DESC, id DESC LIMIT $4",
                ApiKey::COLUMNS
            ),
            &[
                &q.user_id,
                &page.after_time(),
                &page.after_id(),
                &page.fetch_limit(),
            ],
        )
        .await?;
    let items = rows
        .iter()
        .map(ApiKey::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page::from_rows(items, &page, |k| Cursor {
        created_at: k.created_at,
        id: k.id.clone(),
    })))
}

/// Revokes a key (audited as `api_key.revoked`): it answers 401 from the next request on,
/// and an open access-log tail opened with it ends at its next credential check.
#[utoipa::path(
    delete,
    path = "/api-keys/{id}",
    tag = "api-keys",
    params(("id" = String, Path, description = "API key id (key_…)", pattern = "^key_[0-7][0-9A-HJKMNP-TV-Z]{25}$")),
    responses(
        (status = 204, description = "Revoked (or already revoked)"),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)
    )
)]
async fn revoke_api_key(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !IdKind::ApiKey.matches(&id) {
        return Err(ApiError::not_found("API key not found"));
    }
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT revoked_at FROM api_keys WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("API key not found"))?;
    if col::<Option<DateTime<Utc>>>(&row, "revoked_at")?.is_some() {
        return Ok(StatusCode::NO_CONTENT);
    }
    let revoked_at: DateTime<Utc> = tx
        .query_one(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 RETURNING revoked_at",
            &[&id],
        )
        .await
        .and_then(|r| r.try_get("revoked_at"))?;
    audit::record(
        &tx,
        &admin.audit(),
        "api_key.revoked",
        "api_key",
        &id,
        json!({
            "revoked_at": {"before": null, "after": revoked_at},
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
