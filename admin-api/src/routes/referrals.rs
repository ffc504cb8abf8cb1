//! `/api/admin/referrals…`: who invited whom (written at registration with an invitation
//! code, see `crate::invitations`), as a list and as a bounded-depth tree.

use std::collections::HashMap;

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::PlatformAdmin,
    error::{ApiError, ErrorEnvelope},
    extract::{Json, Query},
    ids::IdKind,
    models::col,
    pagination::{Cursor, Page, PageRequest},
    state::AppState,
};

/// Default depth of `GET /referrals/tree`.
pub const DEFAULT_TREE_DEPTH: i32 = 3;
/// Largest depth of `GET /referrals/tree`.
pub const MAX_TREE_DEPTH: i32 = 10;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_referrals))
        .routes(routes!(referral_tree))
}

/// One referral.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Referral {
    pub inviter_user_id: String,
    pub invitee_user_id: String,
    /// The invitation code used.
    pub code: String,
    pub created_at: DateTime<Utc>,
}

impl Referral {
    fn from_row(row: &Row) -> Result<Self, ApiError> {
        Ok(Self {
            inviter_user_id: col(row, "inviter_user_id")?,
            invitee_user_id: col(row, "invitee_user_id")?,
            code: col(row, "code")?,
            created_at: col(row, "created_at")?,
        })
    }
}

/// Filters of `GET /referrals`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListReferralsQuery {
    #[param(pattern = "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub inviter_user_id: Option<String>,
    /// Page size, default 20, at most 100.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Referrals, newest first.
#[utoipa::path(
    get,
    path = "/referrals",
    tag = "referrals",
    params(ListReferralsQuery),
    responses(
        (status = 200, body = Page<Referral>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope)
    )
)]
async fn list_referrals(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Query(q): Query<ListReferralsQuery>,
) -> Result<Json<Page<Referral>>, ApiError> {
    let page = PageRequest::new(q.limit, q.cursor.as_deref())?;
    let conn = state.db().await?;
    let rows = conn
        .query(
            "SELECT inviter_user_id, invitee_user_id, code, created_at FROM referrals \
             WHERE ($1::text IS NULL OR inviter_user_id = $1) \
               AND ($2::timestamptz IS NULL OR (created_at, invitee_user_id) < ($2, $3::text)) \
             ORDER BY created_at DESC, invitee_user_id DESC LIMIT $4",
            &[
                &q.inviter_user_id,
                &page.after_time(),
                &page.after_id(),
                &page.fetch_limit(),
            ],
        )
        .await?;
    let items = rows
        .iter()
        .map(Referral::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page::from_rows(items, &page, |r| Cursor {
        created_at: r.created_at,
        id: r.invitee_user_id.clone(),
    })))
}

/// Query of `GET /referrals/tree`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TreeQuery {
    /// The root.
    #[param(pattern = "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub user_id: String,
    /// Levels below the root, 1..=10 (default 3).
    #[param(minimum = 1, maximum = 10)]
    pub depth: Option<i32>,
}

/// A user and the users they invited.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReferralNode {
    pub user_id: String,
    pub username: String,
    #[schema(no_recursion)]
    pub invitees: Vec<ReferralNode>,
}

/// The users invited by `user_id`, recursively, down to `depth` levels.
#[utoipa::path(
    get,
    path = "/referrals/tree",
    tag = "referrals",
    params(TreeQuery),
    responses(
        (status = 200, body = ReferralNode),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)
    )
)]
async fn referral_tree(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Query(q): Query<TreeQuery>,
) -> Result<Json<ReferralNode>, ApiError> {
    let depth = q.depth.unwrap_or(DEFAULT_TREE_DEPTH);
    if !(1..=MAX_TREE_DEPTH).contains(&depth) {
        return Err(ApiError::bad_request(format!(
            "depth must be between 1 and {MAX_TREE_DEPTH}"
        )));
    }
    let not_found = || ApiError::not_found("user not found");
    if !IdKind::User.matches(&q.user_id) {
        return Err(not_found());
    }
    let conn = state.db().await?;
    let root = conn
        .query_opt("SELECT username FROM users WHERE id = $1", &[&q.user_id])
        .await?
        .ok_or_else(not_found)?;
    // The depth bound also ends the recursion should a cycle ever exist.
    let rows = conn
        .query(
            "WITH RECURSIVE tree (inviter, invitee, depth, created_at) AS ( \
               SELECT inviter_user_id, invitee_user_id, 1, created_at FROM referrals \
               WHERE inviter_user_id = $1 \
               UNION ALL \
               SELECT r.inviter_user_id, r.invitee_user_id, t.depth + 1, r.created_at \
               FROM referrals r JOIN tree t ON r.inviter_user_id = t.invitee \
               WHERE t.depth < $2) \
             SELECT t.inviter, t.invitee, u.username FROM tree t \
             JOIN users u ON u.id = t.invitee ORDER BY t.created_at, t.invitee",
            &[&q.user_id, &depth],
        )
        .await?;
    let mut children: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for row in &rows {
        children
            .entry(col(row, "inviter")?)
            .or_default()
            .push((col(row, "invitee")?, col(row, "username")?));
    }
    Ok(Json(build_node(
        q.user_id.clone(),
        col(&root, "username")?,
        &children,
        depth,
    )))
}

fn build_node(
    user_id: String,
    username: String,
    children: &HashMap<String, Vec<(String, String)>>,
    depth: i32,
) -> ReferralNode {
    let invitees = if depth > 0 {
        children
            .get(&user_id)
            .map(|kids| {
                kids.iter()
                    .map(|(id, name)| build_node(id.clone(), name.clone(), children, depth - 1))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    ReferralNode {
        user_id,
        username,
        invitees,
    }
}
