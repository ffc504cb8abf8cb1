//! `/api/admin/users…`: list, search, get, create, patch, delete, bulk-disable, impersonate.
//!
//! Decisions:
//! - An admin cannot disable, demote or delete themself (422): the API would lock them out,
//!   possibly leaving no admin.
//! - Impersonation is refused (422) for disabled users and members of a disabled organization
//!   (the token could not work), for platform admins (an admin acting as another admin would
//!   hide who did what) and for oneself. Its lifetime is 5 minutes ..= 24 hours, default 1 hour.
//! - `POST /users/search` pages by keyset on `(sort value, id)`. `last_active_at` is NULL for
//!   users never seen; those sort as the oldest time (last in `desc`, first in `asc`), so the
//!   keyset stays total. Emails and usernames sort case-insensitively (`lower(…)`), matching
//!   their uniqueness. A cursor is bound to the sort it was made with (400 otherwise).

use axum::{extract::State, http::StatusCode};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_postgres::types::ToSql;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    audit,
    auth::{issue_session, password::hash_password, AuthSettings, PlatformAdmin},
    error::{ApiError, ErrorEnvelope},
    extract::{Json, Path, Query},
    ids::IdKind,
    models::{col, PersonRef, Role, User, UserOrganization},
    pagination::{Cursor, Page, PageRequest},
    state::AppState,
    validate,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, patch_user, delete_user))
        .routes(routes!(search_users))
        .routes(routes!(bulk_disable))
        .routes(routes!(impersonate))
}

/// Most ids one bulk request may name.
pub const BULK_MAX: usize = 100;
/// Default impersonation token lifetime.
pub const IMPERSONATION_DEFAULT_SECS: i64 = 3600;
/// Longest impersonation token lifetime.
pub const IMPERSONATION_MAX_SECS: i64 = 24 * 3600;

/// `users.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Active,
    Disabled,
    /// Anonymised by `DELETE /users/{id}` (it had history).
    Deleted,
}

impl UserStatus {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::Deleted => "deleted",
        }
    }
}

/// A `LIKE` pattern matching `q` anywhere, with `%`, `_` and `\` taken literally; None for an
/// absent or blank `q`. Over-long searches are 400.
pub(crate) fn contains_pattern(q: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(q) = q.map(str::trim).filter(|q| !q.is_empty()) else {
        return Ok(None);
    };
    if q.chars().count() > 200 {
        return Err(ApiError::bad_request("q must be at most 200 characters"));
    }
    let escaped = q
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    Ok(Some(format!("%{escaped}%")))
}

/// Answers 404 for an id that cannot name a user, without querying.
fn check_user_id(id: &str) -> Result<(), ApiError> {
    if IdKind::User.matches(id) {
        Ok(())
    } else {
        Err(ApiError::not_found("user not found"))
    }
}

async fn load_user(client: &impl GenericClient, id: &str, lock: bool) -> Result<User, ApiError> {
    check_user_id(id)?;
    let sql = format!(
        "SELECT {} FROM users WHERE id = $1{}",
        User::COLUMNS,
        if lock { " FOR UPDATE" } else { "" }
    );
    let row = client
        .query_opt(&sql, &[&id])
        .await?
        .ok_or_else(|| ApiError::not_found("user not found"))?;
    User::from_row(&row)
}

/// Filters of `GET /users`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListUsersQuery {
    /// Substring of username, email or name (case-insensitive).
    pub q: Option<String>,
    /// `active`, `disabled` or `deleted` (anonymised by `DELETE /users/{id}`).
    pub status: Option<UserStatus>,
    /// Only members of this organization.
    #[param(pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub organization_id: Option<String>,
    /// Page size, default 20, at most 100.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A user as lists show it: the user and the ids of the organizations they belong to.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserListItem {
    #[serde(flatten)]
    pub user: User,
    /// Ids (`org_…`) of the user's organizations, in id order; empty when none.
    pub organization_ids: Vec<String>,
}

/// SQL selecting [`UserListItem::from_row`]'s extra column for the `users` row aliased `u`
/// (one index scan of `memberships (user_id, organization_id)` per listed user).
const ORGANIZATION_IDS_SQL: &str = "ARRAY(SELECT m.organization_id FROM memberships m \
     WHERE m.user_id = u.id ORDER BY m.organization_id) AS organization_ids";

impl UserListItem {
    fn from_row(row: &tokio_postgres::Row) -> Result<Self, ApiError> {
        Ok(Self {
            user: User::from_row(row)?,
            organization_ids: col(row, "organization_ids")?,
        })
    }
}

/// Users, newest first, each with `organization_ids`.
#[utoipa::path(
    get,
    path = "/users",
    tag = "users",
    params(ListUsersQuery),
    responses(
        (status = 200, body = Page<UserListItem>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope)
    )
)]
async fn list_users(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Query(q): Query<ListUsersQuery>,
) -> Result<Json<Page<UserListItem>>, ApiError> {
    let page = PageRequest::new(q.limit, q.cursor.as_deref())?;
    let pattern = contains_pattern(q.q.as_deref())?;
    let status = q.status.map(UserStatus::as_str);
    let conn = state.db().await?;
    let rows = conn
        .query(
            &format!(
                "SELECT {}, {ORGANIZATION_IDS_SQL} FROM users u \
                 WHERE ($1::text IS NULL OR u.username ILIKE $1 OR u.email ILIKE $1 \
                        OR u.name ILIKE $1) \
                   AND ($2::text IS NULL OR u.status = $2) \
                   AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM memberships m \
                        WHERE m.user_id = u.id AND m.organization_id = $3)) \
                   AND ($4::timestamptz IS NULL OR (u.created_at, u.id) < ($4, $5::text)) \
                 ORDER BY u.created_at DESC, u.id DESC LIMIT $6",
                User::COLUMNS
            ),
            &[
                &pattern,
                &status,
                &q.organization_id,
                &page.after_time(),
                &page.after_id(),
                &page.fetch_limit(),
            ],
        )
        .await?;
    let items = rows
        .iter()
        .map(UserListItem::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page::from_rows(items, &page, |u| Cursor {
        created_at: u.user.created_at,
        id: u.user.id.clone(),
    })))
}

/// `POST /users` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    #[schema(format = "email", max_length = 254)]
    pub email: String,
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{2,31}$")]
    pub username: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: Option<String>,
    /// Without a password the user cannot sign in until one is set.
    pub password: Option<String>,
    /// Default `user`.
    pub role: Option<Role>,
}

/// Creates a user (audited as `user.created`). A password shorter than the configured minimum
/// is 422; a taken email or username is 409.
#[utoipa::path(
    post,
    path = "/users",
    tag = "users",
    request_body = CreateUser,
    responses(
        (status = 201, body = User),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope)
    )
)]
async fn create_user(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Json(body): Json<CreateUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let email = validate::email(&body.email)?;
    let username = validate::username(&body.username)?;
    let name = body
        .name
        .as_deref()
        .map(|n| validate::text("name", n, 200))
        .transpose()?;
    let role = body.role.unwrap_or(Role::User).as_str();
    let mut conn = state.db().await?;
    let password_hash = match body.password {
        Some(password) => {
            AuthSettings::load(&conn).await?.check_password(&password)?;
            Some(hash_password(password).await?)
        }
        None => None,
    };
    let tx = conn.transaction().await?;
    let id = IdKind::User.new_id();
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO users (id, email, username, name, password_hash, role) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING {}",
                User::COLUMNS
            ),
            &[&id, &email, &username, &name, &password_hash, &role],
        )
        .await?;
    let user = User::from_row(&row)?;
    audit::record(
        &tx,
        &admin.audit(),
        "user.created",
        "user",
        &id,
        audit::created(&audit::snapshot(&user)?),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// A user with their organizations and roles.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserDetail {
    #[serde(flatten)]
    pub user: User,
    pub organizations: Vec<UserOrganization>,
}

/// One user with their organizations.
#[utoipa::path(
    get,
    path = "/users/{id}",
    tag = "users",
    params(("id" = String, Path, description = "User id (usr_…)", pattern = "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$")),
    responses(
        (status = 200, body = UserDetail),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)
    )
)]
async fn get_user(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Path(id): Path<String>,
) -> Result<Json<UserDetail>, ApiError> {
    let conn = state.db().await?;
    let user = load_user(&conn, &id, false).await?;
    let organizations = UserOrganization::for_user(&conn, &id).await?;
    Ok(Json(UserDetail {
        user,
        organizations,
    }))
}

/// `PATCH /users/{id}` body; absent fields are unchanged.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchUser {
    pub status: Option<UserStatus>,
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{2,31}$")]
    pub username: Option<String>,
    #[schema(format = "email", max_length = 254)]
    pub email: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: Option<String>,
    pub email_verified: Option<bool>,
    /// A language tag such as `en-GB` (letters, digits, `-`, `_`; ≤ 35).
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_-]{0,34}$")]
    pub locale: Option<String>,
    /// An IANA zone name such as `Europe/Paris` (letters, digits, `/ _ + -`; ≤ 64).
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9/_+-]{0,63}$")]
    pub timezone: Option<String>,
    pub role: Option<Role>,
}

fn token_field(field: &str, raw: &str, max: usize, extra: &[char]) -> Result<String, ApiError> {
    let v = raw.trim();
    let ok = (1..=max).contains(&v.len())
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c));
    if ok {
        Ok(v.to_string())
    } else {
        Err(ApiError::bad_request(format!(
            "{field} must be 1-{max} ASCII letters, digits or {}",
            extra
                .iter()
                .map(|c| format!("'{c}'"))
                .collect::<Vec<_>>()
                .join(" ")
        )))
    }
}

/// Changes a user (audited as `user.updated` with the changed fields). Disabling the user makes
/// their sessions and keys fail on their next request. 409 on a taken email or username or a
/// deleted user; 422 when an admin would disable or demote themself or when `status` is
/// `deleted` (only `DELETE /users/{id}` deletes).
#[utoipa::path(
    patch,
    path = "/users/{id}",
    tag = "users",
    params(("id" = String, Path, description = "User id (usr_…)", pattern = "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$")),
    request_body = PatchUser,
    responses(
        (status = 200, body = User),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope)
    )
)]
async fn patch_user(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path(id): Path<String>,
    Json(patch): Json<PatchUser>,
) -> Result<Json<User>, ApiError> {
    check_user_id(&id)?;
    let username = patch
        .username
        .as_deref()
        .map(validate::username)
        .transpose()?;
    let email = patch.email.as_deref().map(validate::email).transpose()?;
    let name = patch
        .name
        .as_deref()
        .map(|n| validate::text("name", n, 200))
        .transpose()?;
    let locale = patch
        .locale
        .as_deref()
        .map(|l| token_field("locale", l, 35, &['-', '_']))
        .transpose()?;
    let timezone = patch
        .timezone
        .as_deref()
        .map(|t| token_field("timezone", t, 64, &['/', '_', '+', '-']))
        .transpose()?;
    if patch.status == Some(UserStatus::Deleted) {
        return Err(ApiError::unprocessable(
            "status deleted is set by DELETE /users/{id}",
        ));
    }
    if id == admin.id()
        && (patch.status == Some(UserStatus::Disabled) || patch.role == Some(Role::User))
    {
        return Err(ApiError::unprocessable(
            "you cannot disable or demote yourself",
        ));
    }
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let before = load_user(&tx, &id, true).await?;
    if before.status == UserStatus::Deleted.as_str() {
        return Err(ApiError::conflict("user is deleted and cannot be changed"));
    }
    let row = tx
        .query_one(
            &format!(
                "UPDATE users SET \
                   status = COALESCE($2, status), \
                   username = COALESCE($3, username), \
                   email = COALESCE($4, email), \
                   name = COALESCE($5, name), \
                   email_verified = COALESCE($6, email_verified), \
                   locale = COALESCE($7, locale), \
                   timezone = COALESCE($8, timezone), \
                   role = COALESCE($9, role), \
                   updated_at = now() \
                 WHERE id = $1 RETURNING {}",
                User::COLUMNS
            ),
            &[
                &id,
                &patch.status.map(UserStatus::as_str),
                &username,
                &email,
                &name,
                &patch.email_verified,
                &locale,
                &timezone,
                &patch.role.map(Role::as_str),
            ],
        )
        .await?;
    let after = User::from_row(&row)?;
    let mut changes = audit::diff(&audit::snapshot(&before)?, &audit::snapshot(&after)?);
    if let Some(map) = changes.as_object_mut() {
        map.remove("updated_at");
    }
    if changes.as_object().is_none_or(|m| m.is_empty()) {
        // Nothing changed: no mutation, no audit row.
        tx.rollback().await?;
        return Ok(Json(before));
    }
    audit::record(&tx, &admin.audit(), "user.updated", "user", &id, changes).await?;
    tx.commit().await?;
    Ok(Json(after))
}

/// Deletes a user (audited as `user.deleted`).
///
/// - Without history, the user is deleted with their memberships, sessions and keys.
/// - With history (runs, invitation codes, referrals, redemptions, anything that must keep
///   pointing at the account), the account is anonymised instead, in one transaction: email
///   and username replaced by placeholders (`{id}@deleted.invalid`, `deleted-{id}`), name,
///   password, locale and timezone cleared, MFA (TOTP secret and recovery codes), sessions
///   (including impersonation sessions they opened), API keys, password-reset tokens,
///   memberships and group memberships removed, the IPs of their sign-in events cleared, and
///   `status` set to `deleted`. Their history (runs, ledger rows, codes, referrals) stays, so
///   every organization's balance still equals its ledger.
/// - Either way the user's personal-data key is deleted, which erases their emails, names and
///   IPs from the audit log while its hash chain still verifies.
///
/// A deleted user cannot sign in, cannot be changed (PATCH is 409) and is listed with
/// `status: deleted`. Deleting a deleted user again is 204 and changes nothing.
#[utoipa::path(
    delete,
    path = "/users/{id}",
    tag = "users",
    params(("id" = String, Path, description = "User id (usr_…)", pattern = "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$")),
    responses(
        (status = 204, description = "Deleted, or anonymised (`status: deleted`) when it has history"),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope, description = "Deleting oneself")
    )
)]
async fn delete_user(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_user_id(&id)?;
    if id == admin.id() {
        return Err(ApiError::unprocessable("you cannot delete yourself"));
    }
    let mut conn = state.db().await?;
    let mut tx = conn.transaction().await?;
    let before = load_user(&tx, &id, true).await?;
    if before.status == UserStatus::Deleted.as_str() {
        return Ok(StatusCode::NO_CONTENT);
    }
    // Erasure deletes the user's data key: take the audit lock first (see `audit::lock`).
    audit::lock(&tx).await?;
    let hard = {
        let sp = tx.savepoint("hard_delete").await?;
        match sp.execute("DELETE FROM users WHERE id = $1", &[&id]).await {
            Ok(_) => {
                sp.commit().await?;
                true
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) => {
                sp.rollback().await?;
                false
            }
            Err(e) => return Err(e.into()),
        }
    };
    let changes = if hard {
        audit::deleted(&audit::snapshot(&before)?)
    } else {
        let after = anonymise(&tx, &id).await?;
        let mut changes = audit::diff(&audit::snapshot(&before)?, &audit::snapshot(&after)?);
        if let Some(map) = changes.as_object_mut() {
            map.remove("updated_at");
        }
        changes
    };
    crate::personal::erase(&tx, &id).await?;
    // The user has no key any more: the personal fields of these changes are stored as null.
    audit::record(&tx, &admin.audit(), "user.deleted", "user", &id, changes).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Anonymises a user that has history (see [`delete_user`]) inside `tx`; returns the user as
/// it now is.
async fn anonymise(tx: &deadpool_postgres::Transaction<'_>, id: &str) -> Result<User, ApiError> {
    let row = tx
        .query_one(
            &format!(
                "UPDATE users SET email = id || '@deleted.invalid', username = 'deleted-' || id, \
                   name = NULL, password_hash = NULL, status = 'deleted', \
                   email_verified = false, mfa_enrolled = false, locale = NULL, \
                   timezone = NULL, updated_at = now() \
                 WHERE id = $1 RETURNING {}",
                User::COLUMNS
            ),
            &[&id],
        )
        .await?;
    for sql in [
        "DELETE FROM sessions WHERE user_id = $1 OR impersonator_id = $1",
        "DELETE FROM api_keys WHERE user_id = $1",
        "DELETE FROM password_reset_tokens WHERE user_id = $1",
        "DELETE FROM user_totp WHERE user_id = $1",
        "DELETE FROM mfa_recovery_codes WHERE user_id = $1",
        "DELETE FROM group_members WHERE user_id = $1",
        "DELETE FROM memberships WHERE user_id = $1",
        "UPDATE sign_in_events SET ip = NULL WHERE user_id = $1 AND ip IS NOT NULL",
    ] {
        tx.execute(sql, &[&id]).await?;
    }
    User::from_row(&row)
}

/// Sort fields of `POST /users/search`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortField {
    #[default]
    CreatedAt,
    LastActiveAt,
    Email,
    Username,
}

impl SortField {
    fn name(self) -> &'static str {
        match self {
            Self::CreatedAt => "created_at",
            Self::LastActiveAt => "last_active_at",
            Self::Email => "email",
            Self::Username => "username",
        }
    }

    /// The sort expression (never NULL) and its SQL type.
    fn expr(self) -> (&'static str, &'static str) {
        match self {
            Self::CreatedAt => ("created_at", "timestamptz"),
            Self::LastActiveAt => (
                "COALESCE(last_active_at, '-infinity'::timestamptz)",
                "timestamptz",
            ),
            Self::Email => ("lower(email)", "text"),
            Self::Username => ("lower(username)", "text"),
        }
    }
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortDirection {
    Asc,
    #[default]
    Desc,
}

impl SortDirection {
    fn name(self) -> &'static str {
        match self {
            Self::Asc => "asc",
            Self::Desc => "desc",
        }
    }
}

/// Sort of `POST /users/search`; default newest first.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchSort {
    #[serde(default)]
    pub field: SortField,
    #[serde(default)]
    pub direction: SortDirection,
}

/// Filters of `POST /users/search`; all optional and combined with AND.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchFilters {
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub last_active_after: Option<DateTime<Utc>>,
    pub email_verified: Option<bool>,
    pub mfa_enrolled: Option<bool>,
    pub status: Option<UserStatus>,
    #[schema(pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub organization_id: Option<String>,
    pub role: Option<Role>,
}

/// `POST /users/search` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchUsers {
    /// Substring of username, email or name.
    pub query: Option<String>,
    #[serde(default)]
    pub filters: SearchFilters,
    #[serde(default)]
    pub sort: SearchSort,
    /// Page size, default 20, at most 100.
    #[schema(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page (only valid with the same sort).
    pub cursor: Option<String>,
}

/// A position in a search ordered by `sort`: `(sort value as text, id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SearchCursor {
    key: String,
    id: String,
}

impl SearchCursor {
    fn encode(&self, sort: SearchSort) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{}|{}|{}|{}",
            sort.field.name(),
            sort.direction.name(),
            self.id,
            self.key
        ))
    }

    fn decode(text: &str, sort: SearchSort) -> Result<Self, ApiError> {
        let bad = || ApiError::bad_request("cursor is not valid for this search's sort");
        let raw = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let mut parts = raw.splitn(4, '|');
        let (field, direction, id, key) = (
            parts.next().ok_or_else(bad)?,
            parts.next().ok_or_else(bad)?,
            parts.next().ok_or_else(bad)?,
            parts.next().ok_or_else(bad)?,
        );
        if field != sort.field.name() || direction != sort.direction.name() {
            return Err(bad());
        }
        // The key goes to PostgreSQL as text, which refuses NUL.
        if !IdKind::User.matches(id) || crate::extract::has_control_char(key) {
            return Err(bad());
        }
        if sort.field.expr().1 == "timestamptz"
            && key != "-infinity"
            && DateTime::parse_from_rfc3339(key).is_err()
        {
            return Err(bad());
        }
        Ok(Self {
            key: key.to_string(),
            id: id.to_string(),
        })
    }
}

/// Searches users with filters and a sort, paged by keyset on `(sort value, id)`.
#[utoipa::path(
    post,
    path = "/users/search",
    tag = "users",
    request_body = SearchUsers,
    responses(
        (status = 200, body = Page<UserListItem>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope)
    )
)]
async fn search_users(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Json(body): Json<SearchUsers>,
) -> Result<Json<Page<UserListItem>>, ApiError> {
    let limit = PageRequest::new(body.limit, None)?.limit;
    let sort = body.sort;
    let after = match body.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(SearchCursor::decode(c, sort)?),
    };
    let pattern = contains_pattern(body.query.as_deref())?;
    let f = &body.filters;
    let (expr, ty) = sort.field.expr();
    let (cmp, dir) = match sort.direction {
        SortDirection::Asc => (">", "ASC"),
        SortDirection::Desc => ("<", "DESC"),
    };
    // Timestamps go into the cursor as RFC 3339 text (microseconds, UTC) and come back
    // through a cast, so the comparison is exact.
    let key_text = if ty == "timestamptz" {
        format!(
            "CASE WHEN {expr} = '-infinity' THEN '-infinity' \
             ELSE to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') END"
        )
    } else {
        expr.to_string()
    };
    let sql = format!(
        "SELECT {cols}, {ORGANIZATION_IDS_SQL}, {key_text} AS sort_key FROM users u \
         WHERE ($1::text IS NULL OR u.username ILIKE $1 OR u.email ILIKE $1 OR u.name ILIKE $1) \
           AND ($2::timestamptz IS NULL OR u.created_at >= $2) \
           AND ($3::timestamptz IS NULL OR u.created_at < $3) \
           AND ($4::timestamptz IS NULL OR u.last_active_at >= $4) \
           AND ($5::boolean IS NULL OR u.email_verified = $5) \
           AND ($6::boolean IS NULL OR u.mfa_enrolled = $6) \
           AND ($7::text IS NULL OR u.status = $7) \
           AND ($8::text IS NULL OR EXISTS (SELECT 1 FROM memberships m \
                WHERE m.user_id = u.id AND m.organization_id = $8)) \
           AND ($9::text IS NULL OR u.role = $9) \
           AND ($10::text IS NULL OR ({expr}, u.id) {cmp} ($10::text::{ty}, $11::text)) \
         ORDER BY {expr} {dir}, u.id {dir} LIMIT $12",
        cols = User::COLUMNS,
    );
    let after_key = after.as_ref().map(|c| c.key.as_str());
    let after_id = after.as_ref().map(|c| c.id.as_str());
    let status = f.status.map(UserStatus::as_str);
    let role = f.role.map(Role::as_str);
    let fetch = limit + 1;
    let params: [&(dyn ToSql + Sync); 12] = [
        &pattern,
        &f.created_after,
        &f.created_before,
        &f.last_active_after,
        &f.email_verified,
        &f.mfa_enrolled,
        &status,
        &f.organization_id,
        &role,
        &after_key,
        &after_id,
        &fetch,
    ];
    let conn = state.db().await?;
    let rows = conn.query(&sql, &params).await?;
    let mut items = Vec::with_capacity(rows.len());
    let mut keys = Vec::with_capacity(rows.len());
    for row in &rows {
        items.push(UserListItem::from_row(row)?);
        keys.push(col::<String>(row, "sort_key")?);
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().zip(keys.get(limit - 1)).map(|(u, key)| {
            SearchCursor {
                key: key.clone(),
                id: u.user.id.clone(),
            }
            .encode(sort)
        })
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}

/// `POST /users/bulk-disable` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkDisable {
    /// 1..=100 user ids; unknown ids are ignored.
    #[schema(min_items = 1, max_items = 100)]
    pub user_ids: Vec<String>,
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub reason: String,
    /// Also revoke the users' sessions (default true). Their API keys stop working anyway,
    /// because every request re-checks the user's status.
    pub revoke_sessions: Option<bool>,
}

/// Result of a bulk disable.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkDisableResult {
    /// Users that were active and are now disabled.
    pub disabled: i64,
    /// Sessions revoked.
    pub sessions_revoked: i64,
}

/// Disables up to 100 users at once, in one transaction with one `user.disabled` audit row
/// per user changed. More than 100 ids, or the caller's own id, is refused.
#[utoipa::path(
    post,
    path = "/users/bulk-disable",
    tag = "users",
    request_body = BulkDisable,
    responses(
        (status = 200, body = BulkDisableResult),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope)
    )
)]
async fn bulk_disable(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Json(body): Json<BulkDisable>,
) -> Result<Json<BulkDisableResult>, ApiError> {
    if body.user_ids.is_empty() || body.user_ids.len() > BULK_MAX {
        return Err(ApiError::bad_request(format!(
            "user_ids must hold 1 to {BULK_MAX} ids"
        )));
    }
    let reason = validate::text("reason", &body.reason, 500)?;
    if body.user_ids.iter().any(|id| id == admin.id()) {
        return Err(ApiError::unprocessable("you cannot disable yourself"));
    }
    let mut ids = body.user_ids.clone();
    ids.sort();
    ids.dedup();
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let changed = tx
        .query(
            "UPDATE users SET status = 'disabled', updated_at = now() \
             WHERE id = ANY($1) AND status = 'active' RETURNING id",
            &[&ids],
        )
        .await?;
    let sessions_revoked = if body.revoke_sessions.unwrap_or(true) {
        tx.execute(
            "UPDATE sessions SET revoked_at = now() \
             WHERE user_id = ANY($1) AND revoked_at IS NULL AND expires_at > now()",
            &[&ids],
        )
        .await?
    } else {
        0
    };
    let ctx = admin.audit();
    for row in &changed {
        let id: String = col(row, "id")?;
        audit::record(
            &tx,
            &ctx,
            "user.disabled",
            "user",
            &id,
            json!({
                "status": {"before": "active", "after": "disabled"},
                "reason": {"before": null, "after": reason},
            }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Json(BulkDisableResult {
        disabled: i64::try_from(changed.len()).unwrap_or(i64::MAX),
        sessions_revoked: i64::try_from(sessions_revoked).unwrap_or(i64::MAX),
    }))
}

/// An impersonation lifetime: seconds, or text like `"1h"`, `"30m"`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ExpiresIn {
    Seconds(i64),
    Text(String),
}

/// `POST /users/impersonate` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Impersonate {
    #[schema(pattern = "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub user_id: String,
    /// Why; recorded on the session and in the audit log.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub reason: String,
    /// 5 minutes ..= 24 hours; default `"1h"`.
    pub expires_in: Option<ExpiresIn>,
}

/// A new impersonation token.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImpersonationToken {
    /// Session token (`wps_…`) acting as the user; shown once.
    pub access_token: String,
    pub user_id: String,
    /// Lifetime in seconds.
    pub expires_in: i64,
    pub expires_at: DateTime<Utc>,
    /// The admin who obtained it ({id, email}).
    pub impersonated_by: PersonRef,
    /// The `user.impersonated` audit entry.
    pub audit_id: String,
}

/// Issues a short-lived session token acting as a user; `/api/me` with it shows
/// `impersonated_by`, and audit rows written with it carry the impersonator. Refused (422) for
/// disabled users, members of a disabled organization, platform admins and oneself.
#[utoipa::path(
    post,
    path = "/users/impersonate",
    tag = "users",
    request_body = Impersonate,
    responses(
        (status = 201, body = ImpersonationToken),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope)
    )
)]
async fn impersonate(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Json(body): Json<Impersonate>,
) -> Result<(StatusCode, Json<ImpersonationToken>), ApiError> {
    let reason = validate::text("reason", &body.reason, 500)?;
    let secs = match body.expires_in {
        None => IMPERSONATION_DEFAULT_SECS,
        Some(ExpiresIn::Seconds(s)) => s,
        Some(ExpiresIn::Text(t)) => crate::auth::settings::parse_duration(&t)
            .map_err(|why| ApiError::bad_request(format!("expires_in {why}")))?,
    };
    if !(300..=IMPERSONATION_MAX_SECS).contains(&secs) {
        return Err(ApiError::bad_request(
            "expires_in must be between 5 minutes and 24 hours",
        ));
    }
    if body.user_id == admin.id() {
        return Err(ApiError::unprocessable("you cannot impersonate yourself"));
    }
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let target = load_user(&tx, &body.user_id, true).await?;
    if target.status != UserStatus::Active.as_str() {
        return Err(ApiError::unprocessable(
            "cannot impersonate a disabled user",
        ));
    }
    let org_disabled = tx
        .query_opt(
            "SELECT 1 FROM memberships m JOIN organizations o ON o.id = m.organization_id \
             WHERE m.user_id = $1 AND NOT o.enabled LIMIT 1",
            &[&target.id],
        )
        .await?
        .is_some();
    if org_disabled {
        return Err(ApiError::unprocessable(
            "cannot impersonate a member of a disabled organization",
        ));
    }
    if target.role == Role::PlatformAdmin.as_str() {
        return Err(ApiError::unprocessable(
            "cannot impersonate a platform admin",
        ));
    }
    let meta = &admin.0.meta;
    let session = issue_session(
        &tx,
        &target.id,
        chrono::Duration::seconds(secs),
        Some((admin.id(), &reason)),
        meta.ip,
        meta.user_agent.as_deref(),
    )
    .await?;
    let impersonated_by = PersonRef::load(&tx, admin.id()).await?;
    let audit_id = audit::record(
        &tx,
        &admin.audit(),
        "user.impersonated",
        "user",
        &target.id,
        json!({
            "session_id": {"before": null, "after": session.id},
            "reason": {"before": null, "after": reason},
            "expires_at": {"before": null, "after": session.expires_at},
        }),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(ImpersonationToken {
            access_token: session.token,
            user_id: target.id,
            expires_in: secs,
            expires_at: session.expires_at,
            impersonated_by,
            audit_id,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(contains_pattern(None).expect("none"), None);
        assert_eq!(contains_pattern(Some("  ")).expect("blank"), None);
        assert_eq!(
            contains_pattern(Some("a_b%c\\")).expect("ok").as_deref(),
            Some("%a\\_b\\%c\\\\%")
        );
        assert!(contains_pattern(Some(&"x".repeat(201))).is_err());
    }

    #[test]
    fn search_cursors_are_bound_to_their_sort() {
        let sort = SearchSort {
            field: SortField::Email,
            direction: SortDirection::Asc,
        };
        let c = SearchCursor {
            key: "a|b@example.com".into(),
            id: IdKind::User.new_id(),
        };
        assert_eq!(SearchCursor::decode(&c.encode(sort), sort).expect("ok"), c);
        let other = SearchSort {
            field: SortField::Email,
            direction: SortDirection::Desc,
        };
        assert!(SearchCursor::decode(&c.encode(sort), other).is_err());
        let time = SearchSort {
            field: SortField::LastActiveAt,
            direction: SortDirection::Desc,
        };
        let bad_time = SearchCursor {
            key: "yesterday".into(),
            id: IdKind::User.new_id(),
        };
        assert!(SearchCursor::decode(&bad_time.encode(time), time).is_err());
        assert!(SearchCursor::decode("!!", sort).is_err());
    }
}
