//! JSON shapes shared by several endpoints, with the SQL column lists that fill them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use utoipa::ToSchema;

use crate::error::ApiError;

/// Reads a column, turning a conversion failure into a 500 (it means the code and the schema
/// disagree, never bad input).
pub fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    name: &str,
) -> Result<T, ApiError> {
    row.try_get(name)
        .map_err(|e| ApiError::internal(format!("column {name}: {e}")))
}

/// `users.role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    PlatformAdmin,
}

impl Role {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::PlatformAdmin => "platform_admin",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Self::User),
            "platform_admin" => Some(Self::PlatformAdmin),
            _ => None,
        }
    }
}

/// `memberships.role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrgRole {
    Owner,
    Admin,
    Member,
}

impl OrgRole {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }
}

/// A user as every endpoint shows it (never the password hash).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct User {
    pub id: String,
    pub email: String,
    pub username: String,
    pub name: Option<String>,
    /// `user` or `platform_admin`.
    pub role: String,
    /// `active`, `disabled` or `deleted` (anonymised: deleted while it had history).
    pub status: String,
    pub email_verified: bool,
    pub mfa_enrolled: bool,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_active_at: Option<DateTime<Utc>>,
}

impl User {
    /// Columns for `SELECT {User::COLUMNS} FROM users`.
    pub const COLUMNS: &'static str = "id, email, username, name, role, status, email_verified, \
         mfa_enrolled, locale, timezone, created_at, updated_at, last_active_at";

    /// Builds a user from a row selected with [`User::COLUMNS`].
    pub fn from_row(row: &Row) -> Result<Self, ApiError> {
        Ok(Self {
            id: col(row, "id")?,
            email: col(row, "email")?,
            username: col(row, "username")?,
            name: col(row, "name")?,
            role: col(row, "role")?,
            status: col(row, "status")?,
            email_verified: col(row, "email_verified")?,
            mfa_enrolled: col(row, "mfa_enrolled")?,
            locale: col(row, "locale")?,
            timezone: col(row, "timezone")?,
            created_at: col(row, "created_at")?,
            updated_at: col(row, "updated_at")?,
            last_active_at: col(row, "last_active_at")?,
        })
    }
}

/// An organization.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Organization {
    pub id: String,
    /// Unique slug.
    pub name: String,
    pub display_name: String,
    pub plan: String,
    /// `false` blocks its members' sign-in and requests.
    pub enabled: bool,
    /// `active`, `disabled` (`enabled: false`) or `archived` (deleted while it had history:
    /// disabled for good, its ledger kept).
    #[schema(pattern = "^(active|disabled|archived)$")]
    pub status: String,
    /// When it was archived.
    pub archived_at: Option<DateTime<Utc>>,
    pub credits_balance: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Organization {
    /// Columns for `SELECT {Organization::COLUMNS} FROM organizations`.
    pub const COLUMNS: &'static str =
        "id, name, display_name, plan, enabled, archived_at, credits_balance, created_at, \
         updated_at";

    /// Builds an organization from a row selected with [`Organization::COLUMNS`].
    pub fn from_row(row: &Row) -> Result<Self, ApiError> {
        let enabled: bool = col(row, "enabled")?;
        let archived_at: Option<DateTime<Utc>> = col(row, "archived_at")?;
        Ok(Self {
            id: col(row, "id")?,
            name: col(row, "name")?,
            display_name: col(row, "display_name")?,
            plan: col(row, "plan")?,
            enabled,
            status: match (archived_at.is_some(), enabled) {
                (true, _) => "archived",
                (false, true) => "active",
                (false, false) => "disabled",
            }
            .to_string(),
            archived_at,
            credits_balance: col(row, "credits_balance")?,
            created_at: col(row, "created_at")?,
            updated_at: col(row, "updated_at")?,
        })
    }
}

/// A user's membership as shown with the user (`GET /api/me`, `GET /users/{id}`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserOrganization {
    pub id: String,
    pub name: String,
    pub display_name: String,
    pub enabled: bool,
    /// `owner`, `admin` or `member`.
    pub role: String,
}

impl UserOrganization {
    /// The memberships of one user, oldest first.
    pub async fn for_user(
        client: &impl deadpool_postgres::GenericClient,
        user_id: &str,
    ) -> Result<Vec<Self>, ApiError> {
        let rows = client
            .query(
                "SELECT o.id, o.name, o.display_name, o.enabled, m.role \
                 FROM memberships m JOIN organizations o ON o.id = m.organization_id \
                 WHERE m.user_id = $1 ORDER BY m.created_at, o.id",
                &[&user_id],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Self {
                    id: col(row, "id")?,
                    name: col(row, "name")?,
                    display_name: col(row, "display_name")?,
                    enabled: col(row, "enabled")?,
                    role: col(row, "role")?,
                })
            })
            .collect()
    }
}

/// A person named beside an id in an answer (`impersonated_by`, an audit `actor`): the email
/// is read from `users` when answering, never copied, so it is null once the account is gone
/// or erased.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PersonRef {
    /// `usr_…`.
    pub id: String,
    /// Null when the account no longer exists or was deleted (anonymised).
    pub email: Option<String>,
}

/// SQL for the email of the `users` row aliased `alias`, as answers show it: NULL for a
/// deleted (anonymised) account, and NULL through a LEFT JOIN that found no row.
pub fn shown_email_sql(alias: &str) -> String {
    format!("CASE WHEN {alias}.status = 'deleted' THEN NULL ELSE {alias}.email END")
}

impl PersonRef {
    /// The user `id` as answers show it (email null when the account is gone or deleted).
    pub async fn load(
        client: &impl deadpool_postgres::GenericClient,
        id: &str,
    ) -> Result<Self, ApiError> {
        let row = client
            .query_opt(
                &format!(
                    "SELECT {} AS email FROM users u WHERE u.id = $1",
                    shown_email_sql("u")
                ),
                &[&id],
            )
            .await?;
        Ok(Self {
            id: id.to_string(),
            email: match row {
                Some(row) => col(&row, "email")?,
                None => None,
            },
        })
    }
}
