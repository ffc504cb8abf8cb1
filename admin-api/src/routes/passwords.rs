//! Passwords: set by an admin (`PUT /api/admin/users/{id}/password`), changed by their owner
//! (`POST /api/auth/password`), and reset by email (`POST /api/auth/password-reset`,
//! `POST /api/auth/password-reset/confirm`).
//!
//! Decisions:
//! - Every new password follows the policy of user creation (`password_min_length`, at most
//!   1024 bytes): 422 otherwise.
//! - A reset request answers 202 at once, whether or not the account exists, and does its
//!   work (look-up, token, audit row, mail) after the answer, so neither the status nor the
//!   response time tells whether an address has an account. Only active accounts get mail.
//! - The reset link is `<[admin] public_base_url>/reset-password?token=wpr_…`, never built
//!   from Host or X-Forwarded-Host. Without `public_base_url` or without email settings no
//!   token is made and the server logs why.
//! - A reset token is 256 random bits, stored as its SHA-256, valid 1 hour and used once:
//!   confirming consumes it (and every other outstanding token of the account) in the
//!   transaction that sets the password. Unknown, used and expired tokens are all 400.
//! - A wrong `current_password` is 422 (not 401: the session itself is fine). An
//!   impersonation session cannot change the password (403).

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    audit::{self, AuditCtx},
    auth::{
        password::{hash_password, verify_password},
        tokens::{hash_token, hashes_equal, is_reset_token, new_reset_token},
        AuthSettings, CurrentUser, PlatformAdmin,
    },
    email::{EmailError, EmailService, OutgoingEmail},
    error::{ApiError, ErrorEnvelope},
    extract::{Json, Path, RequestMeta},
    ids::IdKind,
    models::col,
    rate_limit::{self, Throttle},
    state::AppState,
    validate,
};

/// How long a reset token is valid.
pub const RESET_TOKEN_TTL_SECS: i64 = 3600;
/// Path of the reset page under `[admin] public_base_url`.
pub const RESET_PAGE: &str = "/reset-password";

pub(super) fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(set_password))
}

pub(super) fn public_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(change_password))
        .routes(routes!(request_reset))
        .routes(routes!(confirm_reset))
}

/// Checks the policy, then hashes (without holding a pooled connection while hashing).
async fn new_password_hash(state: &AppState, password: String) -> Result<String, ApiError> {
    let settings = {
        let conn = state.db().await?;
        AuthSettings::load(&conn).await?
    };
    settings.check_password(&password)?;
    hash_password(password).await
}

/// `PUT /users/{id}/password` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    /// At least `password_min_length` characters, at most 1024 bytes.
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
}

/// Sets a user's password (audited as `user.password_set`) and revokes all of their
/// sessions. API keys keep working.
#[utoipa::path(
    put,
    path = "/users/{id}/password",
    tag = "users",
    params(("id" = String, Path, description = "User id (usr_…)", pattern = "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$")),
    request_body = SetPassword,
    responses(
        (status = 204, description = "Set; the user's sessions are revoked"),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope, description = "The password breaks the policy")
    )
)]
async fn set_password(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path(id): Path<String>,
    Json(body): Json<SetPassword>,
) -> Result<StatusCode, ApiError> {
    if !IdKind::User.matches(&id) {
        return Err(ApiError::not_found("user not found"));
    }
    let hash = new_password_hash(&state, body.password).await?;
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let updated = tx
        .execute(
            "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1",
            &[&id, &hash],
        )
        .await?;
    if updated == 0 {
        return Err(ApiError::not_found("user not found"));
    }
    let revoked = revoke_sessions(&tx, &id, None).await?;
    audit::record(
        &tx,
        &admin.audit(),
        "user.password_set",
        "user",
        &id,
        json!({
            "password": {"before": null, "after": "changed"},
            "sessions_revoked": {"before": null, "after": revoked},
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes the user's active sessions but `keep`; returns how many.
async fn revoke_sessions(
    tx: &deadpool_postgres::Transaction<'_>,
    user_id: &str,
    keep: Option<&str>,
) -> Result<i64, ApiError> {
    let revoked = tx
        .execute(
            "UPDATE sessions SET revoked_at = now() \
             WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now() \
               AND ($2::text IS NULL OR id <> $2)",
            &[&user_id, &keep],
        )
        .await?;
    Ok(i64::try_from(revoked).unwrap_or(i64::MAX))
}

/// `POST /api/auth/password` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    #[schema(max_length = 1024)]
    pub current_password: String,
    /// At least `password_min_length` characters, at most 1024 bytes.
    #[schema(min_length = 8, max_length = 1024)]
    pub new_password: String,
}

/// Changes the caller's password (audited as `user.password_changed`); the caller's other
/// sessions are revoked, the one making the request stays. Needs a session of the user
/// (an API key or an impersonation session is 403). A wrong `current_password` is 422; more
/// than `[admin] sign_in_per_account_ip_per_minute` attempts per account in a minute are 429.
#[utoipa::path(
    post,
    path = "/api/auth/password",
    tag = "auth",
    request_body = ChangePassword,
    responses(
        (status = 204, description = "Changed; other sessions revoked"),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope)
    )
)]
async fn change_password(
    State(state): State<AppState>,
    CurrentUser(principal): CurrentUser,
    Json(body): Json<ChangePassword>,
) -> Result<StatusCode, ApiError> {
    let session_id = principal
        .session_id
        .clone()
        .ok_or_else(|| ApiError::forbidden("a session token is required"))?;
    if principal.impersonator_id.is_some() {
        return Err(ApiError::forbidden(
            "an impersonation session cannot change the password",
        ));
    }
    let subject = rate_limit::account_digest(&principal.user_id);
    rate_limit::throttle(&state, &[(Throttle::PasswordChange, &subject)]).await?;
    let stored: Option<String> = {
        let conn = state.db().await?;
        let row = conn
            .query_opt(
                "SELECT password_hash FROM users WHERE id = $1",
                &[&principal.user_id],
            )
            .await?
            .ok_or_else(|| ApiError::unauthorized("invalid or expired token"))?;
        col(&row, "password_hash")?
    };
    if body.current_password.len() > crate::auth::password::MAX_PASSWORD_BYTES
        || !verify_password(body.current_password, stored.clone()).await?
    {
        return Err(ApiError::unprocessable("current_password is incorrect"));
    }
    let hash = new_password_hash(&state, body.new_password).await?;
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    // Only if the password is still the one just verified (no concurrent change).
    let updated = tx
        .execute(
            "UPDATE users SET password_hash = $2, updated_at = now() \
             WHERE id = $1 AND password_hash IS NOT DISTINCT FROM $3",
            &[&principal.user_id, &hash, &stored],
        )
        .await?;
    if updated == 0 {
        return Err(ApiError::conflict(
            "the password was changed meanwhile; try again",
        ));
    }
    let revoked = revoke_sessions(&tx, &principal.user_id, Some(&session_id)).await?;
    audit::record(
        &tx,
        &principal.audit(),
        "user.password_changed",
        "user",
        &principal.user_id,
        json!({
            "password": {"before": null, "after": "changed"},
            "sessions_revoked": {"before": null, "after": revoked},
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/auth/password-reset` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetRequest {
    #[schema(format = "email", max_length = 254)]
    pub email: String,
}

/// Asks for a password-reset email. Always 202 for a well-formed address, whether or not it
/// has an account: when an active account has it, a message with a single-use link valid 1
/// hour goes out through the configured SMTP settings (the link is built from
/// `[admin] public_base_url`). More than `[admin] sign_in_per_ip_per_minute` requests per
/// client IP, or `sign_in_per_account_ip_per_minute` for one address, in a minute are 429.
#[utoipa::path(
    post,
    path = "/api/auth/password-reset",
    tag = "auth",
    security(()),
    request_body = PasswordResetRequest,
    responses(
        (status = 202, description = "Accepted; a message goes out if the account exists"),
        (status = 400, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope)
    )
)]
async fn request_reset(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(body): Json<PasswordResetRequest>,
) -> Result<StatusCode, ApiError> {
    let email = validate::email(&body.email)?;
    let ip_subject = rate_limit::client_subject(meta.ip);
    let account_subject = rate_limit::account_digest(&email);
    rate_limit::throttle(
        &state,
        &[
            (Throttle::PasswordReset, &ip_subject),
            (Throttle::PasswordResetAccount, &account_subject),
        ],
    )
    .await?;
    tokio::spawn(async move {
        if let Err(e) = send_reset(&state, &email, &meta).await {
            tracing::warn!(error = %e, request_id = %meta.request_id, "password reset: not sent");
        }
    });
    Ok(StatusCode::ACCEPTED)
}

/// The work behind a reset request: find the account, make and store a token (audited as
/// `user.password_reset_requested`), send the mail. Returns why nothing was sent, if so.
async fn send_reset(state: &AppState, email: &str, meta: &RequestMeta) -> Result<(), String> {
    let base = state.config().admin.public_base_url.trim_end_matches('/');
    let service = EmailService::from_state(state);
    let mut conn = state.db().await.map_err(|e| e.to_string())?;
    let Some(row) = conn
        .query_opt(
            "SELECT id, email FROM users WHERE lower(email) = lower($1) AND status = 'active'",
            &[&email],
        )
        .await
        .map_err(|e| e.to_string())?
    else {
        tracing::info!(request_id = %meta.request_id, "password reset: no active account with that email");
        return Ok(());
    };
    let user_id: String = col(&row, "id").map_err(|e| e.to_string())?;
    let to: String = col(&row, "email").map_err(|e| e.to_string())?;
    if base.is_empty() {
        return Err("[admin] public_base_url is not set, so no reset link can be built".into());
    }
    let settings = match service.resolve(&conn).await {
        Ok((_, settings)) => settings,
        Err(EmailError::NotConfigured) => {
            return Err("email is not configured (no saved settings, no [smtp] host)".into())
        }
        Err(e) => return Err(e.to_string()),
    };
    let (token, hash) = new_reset_token();
    let expires_at: DateTime<Utc> = Utc::now() + chrono::Duration::seconds(RESET_TOKEN_TTL_SECS);
    let tx = conn.transaction().await.map_err(|e| e.to_string())?;
    tx.execute(
        "INSERT INTO password_reset_tokens (user_id, token_hash, expires_at, ip) \
         VALUES ($1, $2, $3, $4)",
        &[&user_id, &hash, &expires_at, &meta.ip],
    )
    .await
    .map_err(|e| e.to_string())?;
    audit::record(
        &tx,
        &AuditCtx::new(&user_id, None, meta),
        "user.password_reset_requested",
        "user",
        &user_id,
        json!({"reset_expires_at": {"before": null, "after": expires_at}}),
    )
    .await
    .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    drop(conn);
    let link = format!("{base}{RESET_PAGE}?token={token}");
    let text = format!(
        "Someone (hopefully you) asked to reset the password of the Watchpost account for \
         {to}.\r\n\r\nTo choose a new password, open this link within an hour. It works once:\r\n\r\n\
         {link}\r\n\r\nIf you did not ask for this, ignore this message: your password stays \
         as it is.\r\n"
    );
    service
        .send_with(
            &settings,
            OutgoingEmail {
                to,
                subject: "Reset your Watchpost password".into(),
                text,
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(user_id, request_id = %meta.request_id, "password reset: message sent");
    Ok(())
}

/// `POST /api/auth/password-reset/confirm` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetConfirm {
    /// The token from the emailed link (`wpr_…`).
    #[schema(pattern = "^wpr_[A-Za-z0-9_-]{43}$")]
    pub token: String,
    /// At least `password_min_length` characters, at most 1024 bytes.
    #[schema(min_length = 8, max_length = 1024)]
    pub new_password: String,
}

/// Sets a new password with a reset token (audited as `user.password_reset`): the token and
/// every other outstanding one of the account are used up, and all of the account's
/// sessions are revoked. An unknown, used or expired token is 400; a password breaking the
/// policy is 422 and leaves the token usable.
#[utoipa::path(
    post,
    path = "/api/auth/password-reset/confirm",
    tag = "auth",
    security(()),
    request_body = PasswordResetConfirm,
    responses(
        (status = 204, description = "Password set; sessions revoked"),
        (status = 400, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope)
    )
)]
async fn confirm_reset(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(body): Json<PasswordResetConfirm>,
) -> Result<StatusCode, ApiError> {
    rate_limit::per_ip(&state, Throttle::PasswordReset, meta.ip).await?;
    let invalid = || ApiError::bad_request("the reset token is invalid, used or expired");
    let token = body.token.trim();
    if !is_reset_token(token) {
        return Err(invalid());
    }
    let hash = hash_token(token);
    {
        let conn = state.db().await?;
        let row = conn
            .query_opt(
                "SELECT token_hash FROM password_reset_tokens \
                 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()",
                &[&hash],
            )
            .await?
            .ok_or_else(invalid)?;
        let stored: String = col(&row, "token_hash")?;
        if !hashes_equal(&stored, &hash) {
            return Err(invalid());
        }
    }
    let password_hash = new_password_hash(&state, body.new_password).await?;
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    // Consuming the token is the guard: of concurrent confirmations, one wins.
    let user_id: String = tx
        .query_opt(
            "UPDATE password_reset_tokens SET used_at = now() \
             WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() \
             RETURNING user_id",
            &[&hash],
        )
        .await?
        .ok_or_else(invalid)
        .and_then(|row| col(&row, "user_id"))?;
    tx.execute(
        "UPDATE password_reset_tokens SET used_at = now() \
         WHERE user_id = $1 AND used_at IS NULL",
        &[&user_id],
    )
    .await?;
    tx.execute(
        "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1",
        &[&user_id, &password_hash],
    )
    .await?;
    let revoked = revoke_sessions(&tx, &user_id, None).await?;
    audit::record(
        &tx,
        &AuditCtx::new(&user_id, None, &meta),
        "user.password_reset",
        "user",
        &user_id,
        json!({
            "password": {"before": null, "after": "changed"},
            "sessions_revoked": {"before": null, "after": revoked},
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
