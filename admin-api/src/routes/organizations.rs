//! `/api/admin/organizations…`: CRUD, stats, users, groups and members.
//!
//! Memberships are audited as resource type `membership` with id `<organization id>/<user id>`.
//! Disabling an organization (`enabled: false`) makes its members' sign-in and existing tokens
//! fail (the auth layer checks it on every request).

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::users::contains_pattern;
use crate::{
    audit,
    auth::PlatformAdmin,
    error::{ApiError, ErrorEnvelope},
    extract::{Json, Path, Query},
    ids::IdKind,
    models::{col, OrgRole, Organization, User},
    pagination::{Cursor, Page, PageRequest},
    state::AppState,
    validate,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_organizations, create_organization))
        .routes(routes!(
            get_organization,
            patch_organization,
            delete_organization
        ))
        .routes(routes!(organization_stats))
        .routes(routes!(organization_users))
        .routes(routes!(list_groups, create_group))
        .routes(routes!(add_member))
        .routes(routes!(patch_member, remove_member))
}

pub(crate) fn check_org_id(id: &str) -> Result<(), ApiError> {
    if IdKind::Organization.matches(id) {
        Ok(())
    } else {
        Err(ApiError::not_found("organization not found"))
    }
}

pub(crate) async fn load_org(
    client: &impl GenericClient,
    id: &str,
    lock: bool,
) -> Result<Organization, ApiError> {
    check_org_id(id)?;
    let sql = format!(
        "SELECT {} FROM organizations WHERE id = $1{}",
        Organization::COLUMNS,
        if lock { " FOR UPDATE" } else { "" }
    );
    let row = client
        .query_opt(&sql, &[&id])
        .await?
        .ok_or_else(|| ApiError::not_found("organization not found"))?;
    Organization::from_row(&row)
}

/// An organization as answered: the stored organization and how many people belong to it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrganizationView {
    #[serde(flatten)]
    pub organization: Organization,
    /// Members of the organization (memberships of accounts that are not deleted).
    #[schema(minimum = 0)]
    pub user_count: i64,
}

/// The member count of the `organizations` row aliased `o` (an index scan of
/// `memberships (organization_id, …)` plus primary-key lookups of the members).
const USER_COUNT_SQL: &str =
    "(SELECT count(*) FROM memberships m JOIN users mu ON mu.id = m.user_id \
     WHERE m.organization_id = o.id AND mu.status <> 'deleted')";

/// `organization` with its current member count.
async fn with_user_count(
    client: &impl GenericClient,
    organization: Organization,
) -> Result<OrganizationView, ApiError> {
    let row = client
        .query_one(
            &format!("SELECT {USER_COUNT_SQL} AS user_count FROM organizations o WHERE o.id = $1"),
            &[&organization.id],
        )
        .await?;
    Ok(OrganizationView {
        user_count: col(&row, "user_count")?,
        organization,
    })
}

fn plan(raw: &str) -> Result<String, ApiError> {
    validate::text("plan", raw, 32)
}

/// Filters of `GET /organizations`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListOrganizationsQuery {
    /// Substring of name or display name (case-insensitive).
    pub q: Option<String>,
    /// Page size, default 20, at most 100.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Organizations, newest first, each with its `user_count`.
#[utoipa::path(
    get,
    path = "/organizations",
    tag = "organizations",
    params(ListOrganizationsQuery),
    responses(
        (status = 200, body = Page<OrganizationView>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope)
    )
)]
async fn list_organizations(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Query(q): Query<ListOrganizationsQuery>,
) -> Result<Json<Page<OrganizationView>>, ApiError> {
    let page = PageRequest::new(q.limit, q.cursor.as_deref())?;
    let pattern = contains_pattern(q.q.as_deref())?;
    let conn = state.db().await?;
    let rows = conn
        .query(
            &format!(
                "SELECT {}, {USER_COUNT_SQL} AS user_count FROM organizations o \
                 WHERE ($1::text IS NULL OR o.name ILIKE $1 OR o.display_name ILIKE $1) \
                   AND ($2::timestamptz IS NULL OR (o.created_at, o.id) < ($2, $3::text)) \
                 ORDER BY o.created_at DESC, o.id DESC LIMIT $4",
                Organization::COLUMNS
            ),
            &[
                &pattern,
                &page.after_time(),
                &page.after_id(),
                &page.fetch_limit(),
            ],
        )
        .await?;
    let items = rows
        .iter()
        .map(|row| {
            Ok(OrganizationView {
                organization: Organization::from_row(row)?,
                user_count: col(row, "user_count")?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(Page::from_rows(items, &page, |o| Cursor {
        created_at: o.organization.created_at,
        id: o.organization.id.clone(),
    })))
}

/// `POST /organizations` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrganization {
    /// Unique slug: 2-63 of `a-z 0-9 -`.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$")]
    pub name: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub display_name: String,
    /// Default `free`.
    #[schema(
        min_length = 1,
        max_length = 32,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub plan: Option<String>,
}

/// Creates an organization (audited as `organization.created`); a taken name is 409.
#[utoipa::path(
    post,
    path = "/organizations",
    tag = "organizations",
    request_body = CreateOrganization,
    responses(
        (status = 201, body = OrganizationView),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope)
    )
)]
async fn create_organization(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Json(body): Json<CreateOrganization>,
) -> Result<(StatusCode, Json<OrganizationView>), ApiError> {
    let name = validate::slug(&body.name)?;
    let display_name = validate::text("display_name", &body.display_name, 200)?;
    let plan = plan(body.plan.as_deref().unwrap_or("free"))?;
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let id = IdKind::Organization.new_id();
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO organizations (id, name, display_name, plan) \
                 VALUES ($1, $2, $3, $4) RETURNING {}",
                Organization::COLUMNS
            ),
            &[&id, &name, &display_name, &plan],
        )
        .await?;
    let org = Organization::from_row(&row)?;
    audit::record(
        &tx,
        &admin.audit(),
        "organization.created",
        "organization",
        &id,
        audit::created(&audit::snapshot(&org)?),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(OrganizationView {
            organization: org,
            user_count: 0,
        }),
    ))
}

/// One organization, with its `user_count`.
#[utoipa::path(
    get,
    path = "/organizations/{id}",
    tag = "organizations",
    params(("id" = String, Path, description = "Organization id (org_…)", pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$")),
    responses(
        (status = 200, body = OrganizationView),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)
    )
)]
async fn get_organization(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Path(id): Path<String>,
) -> Result<Json<OrganizationView>, ApiError> {
    let conn = state.db().await?;
    let org = load_org(&conn, &id, false).await?;
    Ok(Json(with_user_count(&conn, org).await?))
}

/// `PATCH /organizations/{id}` body; absent fields are unchanged.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchOrganization {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub display_name: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 32,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub plan: Option<String>,
    /// `false` blocks the members' sign-in and makes their tokens fail on the next request.
    pub enabled: Option<bool>,
}

/// Changes an organization (audited as `organization.updated`). Disabling an organization the
/// calling admin belongs to is refused with 422, as disabling oneself is; an archived
/// organization cannot be changed (409).
#[utoipa::path(
    patch,
    path = "/organizations/{id}",
    tag = "organizations",
    params(("id" = String, Path, description = "Organization id (org_…)", pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$")),
    request_body = PatchOrganization,
    responses(
        (status = 200, body = OrganizationView),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope, description = "The organization is archived"),
        (status = 422, body = ErrorEnvelope, description = "Disabling an organization the caller belongs to")
    )
)]
async fn patch_organization(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path(id): Path<String>,
    Json(patch): Json<PatchOrganization>,
) -> Result<Json<OrganizationView>, ApiError> {
    check_org_id(&id)?;
    let display_name = patch
        .display_name
        .as_deref()
        .map(|d| validate::text("display_name", d, 200))
        .transpose()?;
    let plan = patch.plan.as_deref().map(plan).transpose()?;
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let before = load_org(&tx, &id, true).await?;
    if before.archived_at.is_some() {
        return Err(ApiError::conflict(
            "organization is archived and cannot be changed",
        ));
    }
    if patch.enabled == Some(false) && is_member(&tx, &id, admin.id()).await? {
        // Like disabling oneself: the admin's own tokens would stop working.
        return Err(ApiError::unprocessable(
            "you cannot disable an organization you belong to",
        ));
    }
    let row = tx
        .query_one(
            &format!(
                "UPDATE organizations SET \
                   display_name = COALESCE($2, display_name), \
                   plan = COALESCE($3, plan), \
                   enabled = COALESCE($4, enabled), \
                   updated_at = now() \
                 WHERE id = $1 RETURNING {}",
                Organization::COLUMNS
            ),
            &[&id, &display_name, &plan, &patch.enabled],
        )
        .await?;
    let after = Organization::from_row(&row)?;
    let mut changes = audit::diff(&audit::snapshot(&before)?, &audit::snapshot(&after)?);
    if let Some(map) = changes.as_object_mut() {
        map.remove("updated_at");
    }
    if changes.as_object().is_none_or(|m| m.is_empty()) {
        let view = with_user_count(&tx, before).await?;
        tx.rollback().await?;
        return Ok(Json(view));
    }
    let view = with_user_count(&tx, after).await?;
    audit::record(
        &tx,
        &admin.audit(),
        "organization.updated",
        "organization",
        &id,
        changes,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(view))
}

async fn is_member(
    client: &impl GenericClient,
    organization_id: &str,
    user_id: &str,
) -> Result<bool, ApiError> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM memberships WHERE organization_id = $1 AND user_id = $2",
            &[&organization_id, &user_id],
        )
        .await?
        .is_some())
}

/// Deletes an organization. Without history it is deleted with its memberships and groups
/// (audited as `organization.deleted`). With history (credit transactions, runs, redemptions:
/// anything that must keep pointing at it) it is archived instead (audited as
/// `organization.archived`): `enabled` false for good, `status: archived`, ledger, memberships
/// and groups kept. Its members cannot sign in while they are members of it (the rule of
/// disabled organizations: any membership in a disabled or archived organization blocks the
/// account); removing them from it gives them their access back. Deleting an archived
/// organization again is 204 and changes nothing.
#[utoipa::path(
    delete,
    path = "/organizations/{id}",
    tag = "organizations",
    params(("id" = String, Path, description = "Organization id (org_…)", pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$")),
    responses(
        (status = 204, description = "Deleted, or archived when it has history"),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope, description = "Archiving an organization the caller belongs to")
    )
)]
async fn delete_organization(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut conn = state.db().await?;
    let mut tx = conn.transaction().await?;
    let before = load_org(&tx, &id, true).await?;
    if before.archived_at.is_some() {
        return Ok(StatusCode::NO_CONTENT);
    }
    let hard = {
        let sp = tx.savepoint("hard_delete").await?;
        match sp
            .execute("DELETE FROM organizations WHERE id = $1", &[&id])
            .await
        {
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
    if hard {
        audit::record(
            &tx,
            &admin.audit(),
            "organization.deleted",
            "organization",
            &id,
            audit::deleted(&audit::snapshot(&before)?),
        )
        .await?;
    } else {
        if is_member(&tx, &id, admin.id()).await? {
            // Like disabling it: the admin's own tokens would stop working.
            return Err(ApiError::unprocessable(
                "you cannot archive an organization you belong to",
            ));
        }
        let row = tx
            .query_one(
                &format!(
                    "UPDATE organizations SET enabled = false, archived_at = now(), \
                       updated_at = now() WHERE id = $1 RETURNING {}",
                    Organization::COLUMNS
                ),
                &[&id],
            )
            .await?;
        let after = Organization::from_row(&row)?;
        let mut changes = audit::diff(&audit::snapshot(&before)?, &audit::snapshot(&after)?);
        if let Some(map) = changes.as_object_mut() {
            map.remove("updated_at");
        }
        audit::record(
            &tx,
            &admin.audit(),
            "organization.archived",
            "organization",
            &id,
            changes,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Figures of one organization.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrganizationStats {
    pub organization_id: String,
    /// Members (memberships of accounts that are not deleted), as `user_count` of the
    /// organization.
    pub user_count: i64,
    pub group_count: i64,
    pub credits_balance: i64,
    /// Members active in the last 7 days.
    pub active_users_7d: i64,
    /// Members' sessions not revoked and not expired.
    pub sessions_active: i64,
    /// Sessions created since 00:00 UTC today for the organization's members (sign-ins and
    /// impersonations; revoked or expired ones included).
    pub session_count_today: i64,
    pub owner_count: i64,
    pub admin_count: i64,
    pub enabled: bool,
}

/// Figures of one organization.
#[utoipa::path(
    get,
    path = "/organizations/{id}/stats",
    tag = "organizations",
    params(("id" = String, Path, description = "Organization id (org_…)", pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$")),
    responses(
        (status = 200, body = OrganizationStats),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)
    )
)]
async fn organization_stats(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Path(id): Path<String>,
) -> Result<Json<OrganizationStats>, ApiError> {
    let conn = state.db().await?;
    let org = load_org(&conn, &id, false).await?;
    let row = conn
        .query_one(
            "SELECT \
               (SELECT count(*) FROM memberships m JOIN users mu ON mu.id = m.user_id \
                  WHERE m.organization_id = $1 AND mu.status <> 'deleted') AS users, \
               (SELECT count(*) FROM groups WHERE organization_id = $1) AS groups, \
               (SELECT count(*) FROM memberships m JOIN users u ON u.id = m.user_id \
                  WHERE m.organization_id = $1 \
                    AND u.last_active_at >= now() - interval '7 days') AS active_7d, \
               (SELECT count(*) FROM sessions s JOIN memberships m ON m.user_id = s.user_id \
                  WHERE m.organization_id = $1 AND s.revoked_at IS NULL \
                    AND s.expires_at > now()) AS sessions_active, \
               (SELECT count(*) FROM sessions s JOIN memberships m ON m.user_id = s.user_id \
                  WHERE m.organization_id = $1 \
                    AND s.created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') \
                                        AT TIME ZONE 'UTC') AS sessions_today, \
               (SELECT count(*) FROM memberships WHERE organization_id = $1 AND role = 'owner') \
                  AS owners, \
               (SELECT count(*) FROM memberships WHERE organization_id = $1 AND role = 'admin') \
                  AS admins",
            &[&id],
        )
        .await?;
    Ok(Json(OrganizationStats {
        organization_id: org.id,
        user_count: col(&row, "users")?,
        group_count: col(&row, "groups")?,
        credits_balance: org.credits_balance,
        active_users_7d: col(&row, "active_7d")?,
        sessions_active: col(&row, "sessions_active")?,
        session_count_today: col(&row, "sessions_today")?,
        owner_count: col(&row, "owners")?,
        admin_count: col(&row, "admins")?,
        enabled: org.enabled,
    }))
}

/// Page parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, default 20, at most 100.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A member of an organization: the user, their role and when they joined.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrganizationUser {
    #[serde(flatten)]
    pub user: User,
    /// `owner`, `admin` or `member`.
    pub organization_role: String,
    pub joined_at: DateTime<Utc>,
}

/// Members of an organization with their roles, newest members first.
#[utoipa::path(
    get,
    path = "/organizations/{id}/users",
    tag = "organizations",
    params(("id" = String, Path, description = "Organization id (org_…)", pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$"), PageQuery),
    responses(
        (status = 200, body = Page<OrganizationUser>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)
    )
)]
async fn organization_users(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Page<OrganizationUser>>, ApiError> {
    let page = PageRequest::new(q.limit, q.cursor.as_deref())?;
    let conn = state.db().await?;
    load_org(&conn, &id, false).await?;
    let columns = User::COLUMNS
        .split(", ")
        .map(|c| format!("u.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = conn
        .query(
            &format!(
                "SELECT {columns}, m.role AS organization_role, m.created_at AS joined_at \
                 FROM memberships m JOIN users u ON u.id = m.user_id \
                 WHERE m.organization_id = $1 \
                   AND ($2::timestamptz IS NULL OR (m.created_at, m.user_id) < ($2, $3::text)) \
                 ORDER BY m.created_at DESC, m.user_id DESC LIMIT $4"
            ),
            &[
                &id,
                &page.after_time(),
                &page.after_id(),
                &page.fetch_limit(),
            ],
        )
        .await?;
    let items = rows
        .iter()
        .map(|row| {
            Ok(OrganizationUser {
                user: User::from_row(row)?,
                organization_role: col(row, "organization_role")?,
                joined_at: col(row, "joined_at")?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(Page::from_rows(items, &page, |m| Cursor {
        created_at: m.joined_at,
        id: m.user.id.clone(),
    })))
}

/// A group of an organization.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Group {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub member_count: i64,
    pub created_at: DateTime<Utc>,
}

pub(crate) const GROUP_COLUMNS: &str = "g.id, g.organization_id, g.name, g.created_at, \
     (SELECT count(*) FROM group_members gm WHERE gm.group_id = g.id) AS member_count";

impl Group {
    pub(crate) fn from_row(row: &tokio_postgres::Row) -> Result<Self, ApiError> {
        Ok(Self {
            id: col(row, "id")?,
            organization_id: col(row, "organization_id")?,
            name: col(row, "name")?,
            member_count: col(row, "member_count")?,
            created_at: col(row, "created_at")?,
        })
    }
}

/// Groups of an organization, newest first.
#[utoipa::path(
    get,
    path = "/organizations/{id}/groups",
    tag = "organizations",
    params(("id" = String, Path, description = "Organization id (org_…)", pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$"), PageQuery),
    responses(
        (status = 200, body = Page<Group>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)
    )
)]
async fn list_groups(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Page<Group>>, ApiError> {
    let page = PageRequest::new(q.limit, q.cursor.as_deref())?;
    let conn = state.db().await?;
    load_org(&conn, &id, false).await?;
    let rows = conn
        .query(
            &format!(
                "SELECT {GROUP_COLUMNS} FROM groups g WHERE g.organization_id = $1 \
                   AND ($2::timestamptz IS NULL OR (g.created_at, g.id) < ($2, $3::text)) \
                 ORDER BY g.created_at DESC, g.id DESC LIMIT $4"
            ),
            &[
                &id,
                &page.after_time(),
                &page.after_id(),
                &page.fetch_limit(),
            ],
        )
        .await?;
    let items = rows
        .iter()
        .map(Group::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page::from_rows(items, &page, |g| Cursor {
        created_at: g.created_at,
        id: g.id.clone(),
    })))
}

/// `POST /organizations/{id}/groups` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    /// Unique within the organization, ignoring case.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: String,
}

/// Creates a group (audited as `group.created`); a taken name in the organization is 409.
#[utoipa::path(
    post,
    path = "/organizations/{id}/groups",
    tag = "organizations",
    params(("id" = String, Path, description = "Organization id (org_…)", pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$")),
    request_body = CreateGroup,
    responses(
        (status = 201, body = Group),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope)
    )
)]
async fn create_group(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path(id): Path<String>,
    Json(body): Json<CreateGroup>,
) -> Result<(StatusCode, Json<Group>), ApiError> {
    check_org_id(&id)?;
    let name = validate::text("name", &body.name, 100)?;
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    load_org(&tx, &id, false).await?;
    let group_id = IdKind::Group.new_id();
    tx.execute(
        "INSERT INTO groups (id, organization_id, name) VALUES ($1, $2, $3)",
        &[&group_id, &id, &name],
    )
    .await?;
    let row = tx
        .query_one(
            &format!("SELECT {GROUP_COLUMNS} FROM groups g WHERE g.id = $1"),
            &[&group_id],
        )
        .await?;
    let group = Group::from_row(&row)?;
    audit::record(
        &tx,
        &admin.audit(),
        "group.created",
        "group",
        &group_id,
        audit::created(&audit::snapshot(&group)?),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(group)))
}

/// A membership.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Membership {
    pub organization_id: String,
    pub user_id: String,
    /// `owner`, `admin` or `member`.
    pub role: String,
    pub created_at: DateTime<Utc>,
}

impl Membership {
    const COLUMNS: &'static str = "organization_id, user_id, role, created_at";

    fn from_row(row: &tokio_postgres::Row) -> Result<Self, ApiError> {
        Ok(Self {
            organization_id: col(row, "organization_id")?,
            user_id: col(row, "user_id")?,
            role: col(row, "role")?,
            created_at: col(row, "created_at")?,
        })
    }

    fn resource_id(&self) -> String {
        format!("{}/{}", self.organization_id, self.user_id)
    }
}

/// `POST /organizations/{id}/members` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    #[schema(pattern = "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub user_id: String,
    pub role: OrgRole,
}

/// Adds a user to an organization (audited as `membership.created`); already a member is 409.
#[utoipa::path(
    post,
    path = "/organizations/{id}/members",
    tag = "organizations",
    params(("id" = String, Path, description = "Organization id (org_…)", pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$")),
    request_body = AddMember,
    responses(
        (status = 201, body = Membership),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope)
    )
)]
async fn add_member(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path(id): Path<String>,
    Json(body): Json<AddMember>,
) -> Result<(StatusCode, Json<Membership>), ApiError> {
    check_org_id(&id)?;
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    load_org(&tx, &id, false).await?;
    let user_exists = IdKind::User.matches(&body.user_id)
        && tx
            .query_opt("SELECT 1 FROM users WHERE id = $1", &[&body.user_id])
            .await?
            .is_some();
    if !user_exists {
        return Err(ApiError::not_found("user not found"));
    }
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO memberships (organization_id, user_id, role) VALUES ($1, $2, $3) \
                 RETURNING {}",
                Membership::COLUMNS
            ),
            &[&id, &body.user_id, &body.role.as_str()],
        )
        .await?;
    let membership = Membership::from_row(&row)?;
    audit::record(
        &tx,
        &admin.audit(),
        "membership.created",
        "membership",
        &membership.resource_id(),
        audit::created(&audit::snapshot(&membership)?),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(membership)))
}

async fn load_membership(
    client: &impl GenericClient,
    org_id: &str,
    user_id: &str,
) -> Result<Membership, ApiError> {
    check_org_id(org_id)?;
    let row = client
        .query_opt(
            &format!(
                "SELECT {} FROM memberships WHERE organization_id = $1 AND user_id = $2 \
                 FOR UPDATE",
                Membership::COLUMNS
            ),
            &[&org_id, &user_id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("membership not found"))?;
    Membership::from_row(&row)
}

/// `PATCH /organizations/{id}/members/{user_id}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchMember {
    pub role: OrgRole,
}

/// Changes a member's role (audited as `membership.updated`).
#[utoipa::path(
    patch,
    path = "/organizations/{id}/members/{user_id}",
    tag = "organizations",
    params(
        ("id" = String, Path, description = "Organization id (org_…)", pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$"),
        ("user_id" = String, Path, description = "User id (usr_…)", pattern = "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$")
    ),
    request_body = PatchMember,
    responses(
        (status = 200, body = Membership),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)
    )
)]
async fn patch_member(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path((id, user_id)): Path<(String, String)>,
    Json(body): Json<PatchMember>,
) -> Result<Json<Membership>, ApiError> {
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let before = load_membership(&tx, &id, &user_id).await?;
    let row = tx
        .query_one(
            &format!(
                "UPDATE memberships SET role = $3 WHERE organization_id = $1 AND user_id = $2 \
                 RETURNING {}",
                Membership::COLUMNS
            ),
            &[&id, &user_id, &body.role.as_str()],
        )
        .await?;
    let after = Membership::from_row(&row)?;
    let changes = audit::diff(&audit::snapshot(&before)?, &audit::snapshot(&after)?);
    if changes.as_object().is_none_or(|m| m.is_empty()) {
        tx.rollback().await?;
        return Ok(Json(before));
    }
    audit::record(
        &tx,
        &admin.audit(),
        "membership.updated",
        "membership",
        &after.resource_id(),
        changes,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(after))
}

/// Removes a member (audited as `membership.deleted`); their group memberships in this
/// organization go too.
#[utoipa::path(
    delete,
    path = "/organizations/{id}/members/{user_id}",
    tag = "organizations",
    params(
        ("id" = String, Path, description = "Organization id (org_…)", pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$"),
        ("user_id" = String, Path, description = "User id (usr_…)", pattern = "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$")
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)
    )
)]
async fn remove_member(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let before = load_membership(&tx, &id, &user_id).await?;
    tx.execute(
        "DELETE FROM group_members gm USING groups g \
         WHERE gm.group_id = g.id AND g.organization_id = $1 AND gm.user_id = $2",
        &[&id, &user_id],
    )
    .await?;
    tx.execute(
        "DELETE FROM memberships WHERE organization_id = $1 AND user_id = $2",
        &[&id, &user_id],
    )
    .await?;
    audit::record(
        &tx,
        &admin.audit(),
        "membership.deleted",
        "membership",
        &before.resource_id(),
        audit::deleted(&audit::snapshot(&before)?),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
