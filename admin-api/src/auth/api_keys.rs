//! Creating API keys.

use deadpool_postgres::Transaction;

use super::tokens::new_api_key;
use crate::{error::ApiError, ids::IdKind};

/// A key just created; `key` is shown once and never stored.
#[derive(Debug, Clone)]
pub struct IssuedApiKey {
    pub id: String,
    pub key: String,
}

/// Creates an API key for `user_id` (the caller writes the audit row in the same `tx`).
pub async fn create_api_key(
    tx: &Transaction<'_>,
    user_id: &str,
    name: &str,
) -> Result<IssuedApiKey, ApiError> {
    let (key, hash) = new_api_key();
    let id = IdKind::ApiKey.new_id();
    tx.execute(
        "INSERT INTO api_keys (id, user_id, key_hash, name) VALUES ($1, $2, $3, $4)",
        &[&id, &user_id, &hash, &name],
    )
    .await?;
    Ok(IssuedApiKey { id, key })
}
