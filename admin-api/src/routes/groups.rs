//! One group of an organization and its members:
//! `/api/admin/organizations/{id}/groups/{gid}` (get, rename, delete) and `…/members`.
//!
//! Decisions: only members of the organization can join its groups (422 otherwise; an unknown
//! user is 404); leaving the organization leaves its groups (see `organizations`). Adding a
//! user twice is 409. `member_count` counts `group_members`.

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    audit,
    auth::PlatformAdmin,
    error::{ApiError, ErrorEnvelope},
    extract::{Json, Path, Query},
    ids::IdKind,
    models::{col, User},
    pagination::{Cursor, Page, PageRequest},
    routes::organizations::{check_org_id, load_org, Group, PageQuery, GROUP_COLUMNS},
    state::AppState,
    validate,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_group, patch_group, delete_group))
        .routes(routes!(list_group_members, add_group_member))
        .routes(routes!(remove_group_member))
}

/// The group `gid` of organization `org` (404 when either is unknown or they do not match).
async fn load_group(
    client: &impl GenericClient,
    org: &str,
    gid: &str,
    lock: bool,
) -> Result<Group, ApiError> {
    check_org_id(org)?;
    if !IdKind::Group.matches(gid) {
        return Err(ApiError::not_found("group not found"));
    }
    let row = client
        .query_opt(
            &format!(
                "SELECT {GROUP_COLUMNS} FROM groups g WHERE g.id = $1 AND g.organization_id = $2{}",
                if lock { " FOR UPDATE OF g" } else { "" }
            ),
            &[&gid, &org],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("group not found"))?;
    Group::from_row(&row)
}

/// One group with its member count.
#[utoipa::path(
    get,
    path = "/organizations/{id}/groups/{gid}",
    tag = "organizations",
    params(
        ("id" = String, Path, description = "Organization id (org_…)", pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$"),
        ("gid" = String, Path, description = "Group id (grp_…)", pattern = "^grp_[0-7][0-9A-HJKMNP-TV-Z]{25}$")
    ),
    responses(
        (status = 200, body = Group),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)
    )
)]
async fn get_group(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Path((id, gid)): Path<(String, String)>,
) -> Result<Json<Group>, ApiError> {
    let conn = state.db().await?;
    Ok(Json(load_group(&conn, &id, &gid, false).await?))
}

/// `PATCH /organizations/{id}/groups/{gid}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchGroup {
    /// Unique within the organization, ignoring case.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: Option<String>,
}

/// Renames a group (audited as `group.updated`); a taken name in the organization is 409.
#[utoipa::path(
    patch,
    path = "/organizations/{id}/groups/{gid}",
    tag = "organizations",
    params(
        ("id" = String, Path, description = "Organization id (org_…)", pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$"),
        ("gid" = String, Path, description = "Group id (grp_…)", pattern = "^grp_[0-7][0-9A-HJKMNP-TV-Z]{25}$")
    ),
    request_body = PatchGroup,
    responses(
        (status = 200, body = Group),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope)
    )
)]
async fn patch_group(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path((id, gid)): Path<(String, String)>,
    Json(body): Json<PatchGroup>,
) -> Result<Json<Group>, ApiError> {
    let name = body
        .name
        .as_deref()
        .map(|n| validate::text("name", n, 100))
        .transpose()?;
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let before = load_group(&tx, &id, &gid, true).await?;
    let Some(name) = name.filter(|n| *n != before.name) else {
        return Ok(Json(before));
    };
    tx.execute("UPDATE groups SET name = $2 WHERE id = $1", &[&gid, &name])
        .await?;
    let after = load_group(&tx, &id, &gid, false).await?;
    audit::record(
        &tx,
        &admin.audit(),
        "group.updated",
        "group",
        &gid,
        audit::diff(&audit::snapshot(&before)?, &audit::snapshot(&after)?),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(after))
}

/// Deletes a group and its memberships (audited as `group.deleted`); the users stay members
/// of the organization.
#[utoipa::path(
    delete,
    path = "/organizations/{id}/groups/{gid}",
    tag = "organizations",
    params(
        ("id" = String, Path, description = "Organization id (org_…)", pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$"),
        ("gid" = String, Path, description = "Group id (grp_…)", pattern = "^grp_[0-7][0-9A-HJKMNP-TV-Z]{25}$")
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)
    )
)]
async fn delete_group(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path((id, gid)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let before = load_group(&tx, &id, &gid, true).await?;
    tx.execute("DELETE FROM groups WHERE id = $1", &[&gid])
        .await?;
    audit::record(
        &tx,
        &admin.audit(),
        "group.deleted",
        "group",
        &gid,
        audit::deleted(&audit::snapshot(&before)?),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A member of a group.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupMember {
    #[serde(flatten)]
    pub user: User,
    /// When the user joined the group.
    pub added_at: DateTime<Utc>,
}

/// The group's members, newest first.
#[utoipa::path(
    get,
    path = "/organizations/{id}/groups/{gid}/members",
    tag = "organizations",
    params(
        ("id" = String, Path, description = "Organization id (org_…)", pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$"),
        ("gid" = String, Path, description = "Group id (grp_…)", pattern = "^grp_[0-7][0-9A-HJKMNP-TV-Z]{25}$"),
        PageQuery
    ),
    responses(
        (status = 200, body = Page<GroupMember>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)
    )
)]
async fn list_group_members(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Path((id, gid)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Page<GroupMember>>, ApiError> {
    let page = PageRequest::new(q.limit, q.cursor.as_deref())?;
    let conn = state.db().await?;
    load_group(&conn, &id, &gid, false).await?;
    let rows = conn
        .query(
            &format!(
                "SELECT u.*, gm.created_at AS added_at \
                 FROM group_members gm \
                 JOIN LATERAL (SELECT {} FROM users WHERE users.id = gm.user_id) u ON true \
                 WHERE gm.group_id = $1 \
                   AND ($2::timestamptz IS NULL OR (gm.created_at, gm.user_id) < ($2, $3::text)) \
                 ORDER BY gm.created_at DESC, gm.user_id DESC LIMIT $4",
                User::COLUMNS
            ),
            &[
                &gid,
                &page.after_time(),
                &page.after_id(),
                &page.fetch_limit(),
            ],
        )
        .await?;
    let items = rows
        .iter()
        .map(|row| {
            Ok(GroupMember {
                user: User::from_row(row)?,
                added_at: col(row, "added_at")?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(Page::from_rows(items, &page, |m| Cursor {
        created_at: m.added_at,
        id: m.user.id.clone(),
    })))
}

/// `POST /organizations/{id}/groups/{gid}/members` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddGroupMember {
    #[schema(pattern = "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub user_id: String,
}

/// Adds a member of the organization to the group (audited as `group_member.added`). A user
/// who is not a member of the organization is 422; an unknown user 404; already in the
/// group 409.
#[utoipa::path(
    post,
    path = "/organizations/{id}/groups/{gid}/members",
    tag = "organizations",
    params(
        ("id" = String, Path, description = "Organization id (org_…)", pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$"),
        ("gid" = String, Path, description = "Group id (grp_…)", pattern = "^grp_[0-7][0-9A-HJKMNP-TV-Z]{25}$")
    ),
    request_body = AddGroupMember,
    responses(
        (status = 201, body = GroupMember),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope)
    )
)]
async fn add_group_member(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path((id, gid)): Path<(String, String)>,
    Json(body): Json<AddGroupMember>,
) -> Result<(StatusCode, Json<GroupMember>), ApiError> {
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    load_org(&tx, &id, false).await?;
    load_group(&tx, &id, &gid, true).await?;
    if !IdKind::User.matches(&body.user_id) {
        return Err(ApiError::not_found("user_id: user not found"));
    }
    let row = tx
        .query_opt(
            &format!(
                "SELECT {}, EXISTS (SELECT 1 FROM memberships m \
                        WHERE m.organization_id = $2 AND m.user_id = users.id) AS is_member \
                 FROM users WHERE id = $1 FOR SHARE",
                User::COLUMNS
            ),
            &[&body.user_id, &id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("user_id: user not found"))?;
    if !col::<bool>(&row, "is_member")? {
        return Err(ApiError::unprocessable(
            "the user is not a member of this organization",
        ));
    }
    let user = User::from_row(&row)?;
    let added_at: DateTime<Utc> = tx
        .query_one(
            "INSERT INTO group_members (group_id, user_id) VALUES ($1, $2) RETURNING created_at",
            &[&gid, &body.user_id],
        )
        .await
        .and_then(|r| r.try_get("created_at"))?;
    audit::record(
        &tx,
        &admin.audit(),
        "group_member.added",
        "group",
        &gid,
        json!({"user_id": {"before": null, "after": body.user_id}}),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(GroupMember { user, added_at })))
}

/// Removes a user from the group (audited as `group_member.removed`); they stay in the
/// organization.
#[utoipa::path(
    delete,
    path = "/organizations/{id}/groups/{gid}/members/{user_id}",
    tag = "organizations",
    params(
        ("id" = String, Path, description = "Organization id (org_…)", pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$"),
        ("gid" = String, Path, description = "Group id (grp_…)", pattern = "^grp_[0-7][0-9A-HJKMNP-TV-Z]{25}$"),
        ("user_id" = String, Path, description = "User id (usr_…)", pattern = "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$")
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope, description = "No such group, or the user is not in it")
    )
)]
async fn remove_group_member(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path((id, gid, user_id)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    load_group(&tx, &id, &gid, true).await?;
    if !IdKind::User.matches(&user_id) {
        return Err(ApiError::not_found("the user is not in this group"));
    }
    let removed = tx
        .execute(
            "DELETE FROM group_members WHERE group_id = $1 AND user_id = $2",
            &[&gid, &user_id],
        )
        .await?;
    if removed == 0 {
        return Err(ApiError::not_found("the user is not in this group"));
    }
    audit::record(
        &tx,
        &admin.audit(),
        "group_member.removed",
        "group",
        &gid,
        json!({"user_id": {"before": user_id, "after": null}}),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
