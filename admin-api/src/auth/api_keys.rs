//! API keys: creating them and their listed form (never the key itself).

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use serde::Serialize;
use tokio_postgres::Row;
use utoipa::ToSchema;

use super::tokens::{new_api_key, API_KEY_VISIBLE_PREFIX};
use crate::{error::ApiError, ids::IdKind, models::col};

/// A key just created; `key` is shown once and never stored.
#[derive(Debug, Clone)]
pub struct IssuedApiKey {
    pub id: String,
    pub key: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
}

/// An API key as listed: everything but the secret.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiKey {
    /// `key_…`.
    pub id: String,
    /// The key's first characters (`wpk_` and 8 more), to tell keys apart.
    pub prefix: String,
    pub name: String,
    /// The user the key acts as.
    pub user_id: String,
    /// `admin`, `admin:read`, `runs`.
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// Null: never expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// Last authenticated request, recorded at most once a minute.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Set once the key is revoked; it answers 401 from then on.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// Columns for `SELECT {ApiKey::COLUMNS} FROM api_keys`.
    pub const COLUMNS: &'static str =
        "id, prefix, name, user_id, scopes, created_at, expires_at, last_used_at, revoked_at";

    /// Builds a key from a row selected with [`ApiKey::COLUMNS`].
    pub fn from_row(row: &Row) -> Result<Self, ApiError> {
        Ok(Self {
            id: col(row, "id")?,
            prefix: col(row, "prefix")?,
            name: col(row, "name")?,
            user_id: col(row, "user_id")?,
            scopes: col(row, "scopes")?,
            created_at: col(row, "created_at")?,
            expires_at: col(row, "expires_at")?,
            last_used_at: col(row, "last_used_at")?,
            revoked_at: col(row, "revoked_at")?,
        })
    }
}

/// Creates an API key for `user_id` with `scopes` (already validated) and an optional expiry
/// (the caller writes the audit row in the same `tx`).
pub async fn create_api_key(
    tx: &Transaction<'_>,
    user_id: &str,
    name: &str,
    scopes: &[&str],
    expires_at: Option<DateTime<Utc>>,
) -> Result<IssuedApiKey, ApiError> {
    let (key, hash) = new_api_key();
    let id = IdKind::ApiKey.new_id();
    let prefix: String = key.chars().take(API_KEY_VISIBLE_PREFIX).collect();
    let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_string()).collect();
    let row = tx
        .query_one(
            "INSERT INTO api_keys (id, user_id, key_hash, name, prefix, scopes, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING created_at",
            &[&id, &user_id, &hash, &name, &prefix, &scopes, &expires_at],
        )
        .await?;
    Ok(IssuedApiKey {
        id,
        key,
        prefix,
        created_at: col(&row, "created_at")?,
    })
}
