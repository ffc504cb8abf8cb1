//! `/api/admin/invitation-codes…`: invitation codes owned by users. Users get one on request
//! with `POST /api/me/invitation-codes`; admins create them for any user here. Registration
//! consumes a use (see `crate::invitations`).
//!
//! Codes are 8 Crockford Base32 characters (40 random bits), stored upper-case and matched
//! case-insensitively (the same normalisation as redemption codes).

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::redemption_codes::{generate_code, normalize_code};
use crate::{
    audit::{self, AuditCtx},
    auth::PlatformAdmin,
    error::{ApiError, ErrorEnvelope},
    extract::{Json, Path, Query},
    ids::IdKind,
    models::col,
    pagination::{Cursor, Page, PageRequest},
    state::AppState,
};

/// Characters of an invitation code (40 bits).
pub const INVITATION_CODE_LEN: usize = 8;
/// `max_uses` of a code a user creates for themselves.
pub const USER_CODE_MAX_USES: i32 = 5;
/// Largest `max_uses` an admin may set.
pub const MAX_USES_LIMIT: i32 = 1_000_000;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_codes, create_code))
        .routes(routes!(get_code, patch_code))
}

/// An invitation code.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InvitationCode {
    pub code: String,
    /// The owner: registrations with this code are referred by them.
    pub user_id: String,
    pub max_uses: i32,
    pub uses: i32,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
}

impl InvitationCode {
    /// Columns for `SELECT {InvitationCode::COLUMNS} FROM invitation_codes`.
    pub const COLUMNS: &'static str = "code, user_id, max_uses, uses, is_active, created_at";

    /// Builds a code from a row selected with [`InvitationCode::COLUMNS`].
    pub fn from_row(row: &Row) -> Result<Self, ApiError> {
        Ok(Self {
            code: col(row, "code")?,
            user_id: col(row, "user_id")?,
            max_uses: col(row, "max_uses")?,
            uses: col(row, "uses")?,
            is_active: col(row, "is_active")?,
            created_at: col(row, "created_at")?,
        })
    }
}

/// Creates a code for `user_id` in `tx` and audits it (`invitation_code.created`). 404 when
/// the user does not exist.
pub async fn create_invitation_code(
    tx: &Transaction<'_>,
    ctx: &AuditCtx,
    user_id: &str,
    max_uses: i32,
) -> Result<InvitationCode, ApiError> {
    if !IdKind::User.matches(user_id) {
        return Err(ApiError::not_found("user not found"));
    }
    // A collision with an existing code is skipped by ON CONFLICT and retried.
    for _ in 0..8 {
        let code = generate_code(INVITATION_CODE_LEN);
        let row = tx
            .query_opt(
                &format!(
                    "INSERT INTO invitation_codes (code, user_id, max_uses) \
                     SELECT $1, id, $3 FROM users WHERE id = $2 \
                     ON CONFLICT (code) DO NOTHING RETURNING {}",
                    InvitationCode::COLUMNS
                ),
                &[&code, &user_id, &max_uses],
            )
            .await?;
        if let Some(row) = row {
            let created = InvitationCode::from_row(&row)?;
            audit::record(
                tx,
                ctx,
                "invitation_code.created",
                "invitation_code",
                &created.code,
                audit::created(&audit::snapshot(&created)?),
            )
            .await?;
            return Ok(created);
        }
        let exists = tx
            .query_opt("SELECT 1 FROM users WHERE id = $1", &[&user_id])
            .await?
            .is_some();
        if !exists {
            return Err(ApiError::not_found("user not found"));
        }
    }
    Err(ApiError::internal(
        "could not generate a unique invitation code",
    ))
}

fn check_max_uses(max_uses: i32) -> Result<i32, ApiError> {
    if (1..=MAX_USES_LIMIT).contains(&max_uses) {
        Ok(max_uses)
    } else {
        Err(ApiError::bad_request(format!(
            "max_uses must be between 1 and {MAX_USES_LIMIT}"
        )))
    }
}

/// Filters of `GET /invitation-codes`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListCodesQuery {
    /// Part of the code, or the owner's user id.
    pub q: Option<String>,
    /// Page size, default 20, at most 100.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Invitation codes, newest first.
#[utoipa::path(
    get,
    path = "/invitation-codes",
    tag = "invitation-codes",
    params(ListCodesQuery),
    responses(
        (status = 200, body = Page<InvitationCode>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope)
    )
)]
async fn list_codes(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Query(q): Query<ListCodesQuery>,
) -> Result<Json<Page<InvitationCode>>, ApiError> {
    let page = PageRequest::new(q.limit, q.cursor.as_deref())?;
    let q_text = q.q.as_deref().map(str::trim).filter(|s| !s.is_empty());
    if q_text.is_some_and(|s| s.len() > 64) {
        return Err(ApiError::bad_request("q must be at most 64 characters"));
    }
    let owner = q_text
        .filter(|s| IdKind::User.matches(s))
        .map(str::to_string);
    let pattern = match (q_text, &owner) {
        (Some(s), None) => Some(format!(
            "%{}%",
            normalize_code(s).ok_or_else(|| ApiError::bad_request("q is not part of a code"))?
        )),
        _ => None,
    };
    let conn = state.db().await?;
    let rows = conn
        .query(
            &format!(
                "SELECT {} FROM invitation_codes \
                 WHERE ($1::text IS NULL OR code LIKE $1) \
                   AND ($2::text IS NULL OR user_id = $2) \
                   AND ($3::timestamptz IS NULL OR (created_at, code) < ($3, $4::text)) \
                 ORDER BY created_at DESC, code DESC LIMIT $5",
                InvitationCode::COLUMNS
            ),
            &[
                &pattern,
                &owner,
                &page.after_time(),
                &page.after_id(),
                &page.fetch_limit(),
            ],
        )
        .await?;
    let items = rows
        .iter()
        .map(InvitationCode::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page::from_rows(items, &page, |c| Cursor {
        created_at: c.created_at,
        id: c.code.clone(),
    })))
}

/// `POST /invitation-codes` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCode {
    /// The owner.
    #[schema(pattern = "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub user_id: String,
    /// Default 5; 1..=1000000.
    #[schema(minimum = 1, maximum = 1000000)]
    pub max_uses: Option<i32>,
}

/// Creates an invitation code for a user (audited as `invitation_code.created`).
#[utoipa::path(
    post,
    path = "/invitation-codes",
    tag = "invitation-codes",
    request_body = CreateCode,
    responses(
        (status = 201, body = InvitationCode),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)
    )
)]
async fn create_code(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Json(body): Json<CreateCode>,
) -> Result<(StatusCode, Json<InvitationCode>), ApiError> {
    let max_uses = check_max_uses(body.max_uses.unwrap_or(USER_CODE_MAX_USES))?;
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let code = create_invitation_code(&tx, &admin.audit(), &body.user_id, max_uses).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(code)))
}

async fn load_code(
    client: &impl deadpool_postgres::GenericClient,
    raw: &str,
    lock: bool,
) -> Result<InvitationCode, ApiError> {
    let not_found = || ApiError::not_found("invitation code not found");
    let code = normalize_code(raw).ok_or_else(not_found)?;
    let sql = format!(
        "SELECT {} FROM invitation_codes WHERE code = $1{}",
        InvitationCode::COLUMNS,
        if lock { " FOR UPDATE" } else { "" }
    );
    InvitationCode::from_row(
        &client
            .query_opt(&sql, &[&code])
            .await?
            .ok_or_else(not_found)?,
    )
}

/// One invitation code.
#[utoipa::path(
    get,
    path = "/invitation-codes/{code}",
    tag = "invitation-codes",
    params(("code" = String, Path, description = "The code, any case")),
    responses(
        (status = 200, body = InvitationCode),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)
    )
)]
async fn get_code(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Path(code): Path<String>,
) -> Result<Json<InvitationCode>, ApiError> {
    let conn = state.db().await?;
    Ok(Json(load_code(&conn, &code, false).await?))
}

/// `PATCH /invitation-codes/{code}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = InvitationCodePatch)]
pub struct PatchCode {
    /// Not below the uses already made (422 otherwise).
    #[schema(minimum = 1, maximum = 1000000)]
    pub max_uses: Option<i32>,
    pub is_active: Option<bool>,
}

/// Changes `max_uses` or `is_active` (audited as `invitation_code.updated`).
#[utoipa::path(
    patch,
    path = "/invitation-codes/{code}",
    tag = "invitation-codes",
    params(("code" = String, Path, description = "The code, any case")),
    request_body = PatchCode,
    responses(
        (status = 200, body = InvitationCode),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope)
    )
)]
async fn patch_code(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path(code): Path<String>,
    Json(body): Json<PatchCode>,
) -> Result<Json<InvitationCode>, ApiError> {
    let max_uses = body.max_uses.map(check_max_uses).transpose()?;
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    // Locked, so a registration cannot take a use between the check and the update.
    let before = load_code(&tx, &code, true).await?;
    if max_uses.is_some_and(|m| m < before.uses) {
        return Err(ApiError::unprocessable(format!(
            "max_uses cannot be below the {} uses already made",
            before.uses
        )));
    }
    let row = tx
        .query_one(
            &format!(
                "UPDATE invitation_codes SET max_uses = COALESCE($2, max_uses), \
                 is_active = COALESCE($3, is_active), updated_at = now() WHERE code = $1 \
                 RETURNING {}",
                InvitationCode::COLUMNS
            ),
            &[&before.code, &max_uses, &body.is_active],
        )
        .await?;
    let after = InvitationCode::from_row(&row)?;
    audit::record(
        &tx,
        &admin.audit(),
        "invitation_code.updated",
        "invitation_code",
        &after.code,
        audit::diff(&audit::snapshot(&before)?, &audit::snapshot(&after)?),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(after))
}
