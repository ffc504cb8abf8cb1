//! Issuing session tokens.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;

use super::tokens::new_session_token;
use crate::{error::ApiError, ids::IdKind};

/// A session just created; `token` is shown to the client once and never stored.
#[derive(Debug, Clone)]
pub struct IssuedSession {
    pub id: String,
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Creates a session for `user_id` valid for `ttl`. For an impersonation token pass the admin's
/// id and their reason as `impersonator`: the user's role now is stored with the session, and
/// the session never acts above it (nor outlives the admin's own standing).
pub async fn issue_session(
    tx: &Transaction<'_>,
    user_id: &str,
    ttl: chrono::Duration,
    impersonator: Option<(&str, &str)>,
    ip: Option<IpAddr>,
    user_agent: Option<&str>,
) -> Result<IssuedSession, ApiError> {
    let (token, hash) = new_session_token();
    let id = IdKind::Session.new_id();
    let expires_at = Utc::now() + ttl;
    let (impersonator_id, reason) = impersonator.unzip();
    let inserted = tx
        .execute(
        "INSERT INTO sessions (id, user_id, token_hash, impersonator_id, reason, expires_at, ip, \
         user_agent, impersonated_role) \
         SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::timestamptz, $7::inet, \
                $8::text, \
                CASE WHEN $4::text IS NULL THEN NULL ELSE u.role END \
         FROM users u WHERE u.id = $2",
        &[
            &id,
            &user_id,
            &hash,
            &impersonator_id,
            &reason,
            &expires_at,
            &ip,
            &user_agent,
        ],
    )
    .await?;
    if inserted != 1 {
        return Err(ApiError::not_found("user not found"));
    }
    Ok(IssuedSession {
        id,
        token,
        expires_at,
    })
}
