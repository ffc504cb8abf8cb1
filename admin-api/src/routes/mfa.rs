//! TOTP multi-factor authentication: enrollment by the user (`/api/me/mfa/totp…`) and reset
//! by an admin (`DELETE /api/admin/users/{id}/mfa`). See [`crate::auth::mfa`] for the codes.
//!
//! Decisions:
//! - Only the user's own session manages their MFA: an API key or an impersonation session
//!   gets 403 (an impersonating admin must not be able to enroll a device of theirs, or remove
//!   the user's).
//! - Enrolling again while a previous enrollment is still pending replaces its secret; while
//!   one is confirmed it is 409 (remove it first).
//! - A wrong code in confirm or removal is 422 and counts against the per-account sign-in
//!   throttle (`[admin] sign_in_per_account_ip_per_minute`), so a stolen session cannot guess
//!   its way to disabling MFA.
//! - Removal takes a TOTP code or one of the recovery codes (for a lost device).
//! - An admin reset of a user without MFA is 204 and changes nothing (not audited).

use axum::{extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    audit,
    auth::{mfa, CurrentUser, PlatformAdmin, Principal},
    error::{ApiError, ErrorEnvelope},
    extract::{Json, Path},
    ids::IdKind,
    models::col,
    rate_limit::{self, Throttle},
    state::AppState,
};

/// User-facing routes (`/api/me/mfa/…`).
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_totp, remove_totp))
        .routes(routes!(confirm_totp))
}

/// Admin routes (relative to `/api/admin`).
pub(super) fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(reset_user_mfa))
}

/// A pending TOTP enrollment: what the authenticator app needs.
#[derive(Debug, Serialize, ToSchema)]
pub struct TotpEnrollment {
    /// The shared secret, base32 (RFC 4648, no padding).
    #[schema(pattern = "^[A-Z2-7]+$")]
    pub secret: String,
    /// `otpauth://totp/Watchpost:<email>?secret=…&issuer=Watchpost` (SHA1, 6 digits, 30 s), for
    /// a QR code.
    pub otpauth_url: String,
}

/// `POST /api/me/mfa/totp/confirm` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmTotp {
    /// The app's current 6-digit code.
    #[schema(pattern = "^[0-9]{6}$")]
    pub code: String,
}

/// `DELETE /api/me/mfa/totp` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveTotp {
    /// The app's current 6-digit code, or an unused recovery code.
    #[schema(pattern = "^([0-9]{6}|[A-Za-z2-7]{5}-?[A-Za-z2-7]{5})$")]
    pub code: String,
}

/// The one-time recovery codes, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryCodes {
    /// Ten codes (`abcde-fghij`); each signs in once in place of a TOTP code.
    #[schema(min_items = 10, max_items = 10)]
    pub recovery_codes: Vec<String>,
}

/// 403 unless the caller is a user's own session.
fn own_session(principal: &Principal) -> Result<(), ApiError> {
    if principal.session_id.is_none() {
        return Err(ApiError::forbidden(
            "MFA is managed with the user's own session, not an API key",
        ));
    }
    if principal.impersonator_id.is_some() {
        return Err(ApiError::forbidden(
            "an impersonation session cannot manage the user's MFA",
        ));
    }
    Ok(())
}

/// Counts a failed code against the per-account throttle (429 once over the limit).
async fn count_code_attempt(state: &AppState, principal: &Principal) -> Result<(), ApiError> {
    let subject = rate_limit::account_subject(principal.meta.ip, &principal.user_id);
    rate_limit::throttle(state, &[(Throttle::SignInAccount, &subject)]).await
}

fn is_totp_shaped(code: &str) -> bool {
    let code = code.trim();
    code.len() == mfa::DIGITS && code.bytes().all(|b| b.is_ascii_digit())
}

/// Starts a TOTP enrollment: a new secret, pending until confirmed (audited as
/// `user.mfa_enrollment_started`, without the secret). 409 when already enrolled; 422 when the
/// server has no `WATCHPOST_SECRET_KEY` to encrypt the secret with.
#[utoipa::path(
    post,
    path = "/api/me/mfa/totp",
    tag = "mfa",
    responses(
        (status = 201, body = TotpEnrollment),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope)
    )
)]
async fn start_totp(
    State(state): State<AppState>,
    CurrentUser(principal): CurrentUser,
) -> Result<(StatusCode, Json<TotpEnrollment>), ApiError> {
    own_session(&principal)?;
    let key = state.config().secret_key.as_ref().ok_or_else(|| {
        ApiError::unprocessable(
            "WATCHPOST_SECRET_KEY is not set, so the server cannot store a TOTP secret",
        )
    })?;
    let secret = mfa::new_secret();
    let sealed = key
        .encrypt(mfa::TOTP_PURPOSE, &secret)
        .map_err(ApiError::internal)?;
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let user = tx
        .query_opt(
            "SELECT email FROM users WHERE id = $1 FOR UPDATE",
            &[&principal.user_id],
        )
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid or expired token"))?;
    let email: String = col(&user, "email")?;
    let before = tx
        .query_opt(
            "SELECT confirmed_at IS NOT NULL AS confirmed FROM user_totp WHERE user_id = $1",
            &[&principal.user_id],
        )
        .await?;
    let pending_before = match before {
        Some(row) if col::<bool>(&row, "confirmed")? => {
            return Err(ApiError::conflict(
                "MFA is already enabled; remove it with DELETE /api/me/mfa/totp first",
            ))
        }
        Some(_) => true,
        None => false,
    };
    tx.execute(
        "INSERT INTO user_totp (user_id, secret_encrypted) VALUES ($1, $2) \
         ON CONFLICT (user_id) DO UPDATE SET secret_encrypted = EXCLUDED.secret_encrypted, \
           confirmed_at = NULL, last_used_step = NULL, created_at = now()",
        &[&principal.user_id, &sealed],
    )
    .await?;
    let (secret_b32, otpauth_url) = mfa::provisioning(&secret, &email)?;
    audit::record(
        &tx,
        &principal.audit(),
        "user.mfa_enrollment_started",
        "user",
        &principal.user_id,
        json!({"mfa": {"before": if pending_before { "pending" } else { "none" }, "after": "pending"}}),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(TotpEnrollment {
            secret: secret_b32,
            otpauth_url,
        }),
    ))
}

/// Confirms the pending enrollment with a current code from the app: MFA is on from now, and
/// the answer carries ten one-time recovery codes (stored hashed; shown only here). Audited
/// as `user.mfa_enrolled`. 409 when nothing is pending; 422 for a wrong code.
#[utoipa::path(
    post,
    path = "/api/me/mfa/totp/confirm",
    tag = "mfa",
    request_body = ConfirmTotp,
    responses(
        (status = 200, body = RecoveryCodes),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope)
    )
)]
async fn confirm_totp(
    State(state): State<AppState>,
    CurrentUser(principal): CurrentUser,
    Json(body): Json<ConfirmTotp>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    own_session(&principal)?;
    if !is_totp_shaped(&body.code) {
        return Err(ApiError::bad_request("code must be 6 digits"));
    }
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let enrollment = mfa::Enrollment::load(
        &tx,
        state.config().secret_key.as_ref(),
        &principal.user_id,
        true,
    )
    .await?
    .ok_or_else(|| ApiError::conflict("no pending enrollment: POST /api/me/mfa/totp first"))?;
    if enrollment.confirmed {
        return Err(ApiError::conflict("MFA is already enabled"));
    }
    let step = mfa::matching_step(&enrollment.secret, &body.code, mfa::now_unix());
    let accepted = match step {
        Some(step) => mfa::accept_step(&tx, &principal.user_id, step, false).await?,
        None => false,
    };
    if !accepted {
        drop(tx);
        count_code_attempt(&state, &principal).await?;
        return Err(ApiError::unprocessable("wrong or expired code"));
    }
    tx.execute(
        "UPDATE user_totp SET confirmed_at = now() WHERE user_id = $1",
        &[&principal.user_id],
    )
    .await?;
    tx.execute(
        "DELETE FROM mfa_recovery_codes WHERE user_id = $1",
        &[&principal.user_id],
    )
    .await?;
    let codes = mfa::new_recovery_codes();
    let hashes = codes
        .iter()
        .map(|c| mfa::recovery_code_hash(c).ok_or_else(|| ApiError::internal("recovery code")))
        .collect::<Result<Vec<_>, _>>()?;
    tx.execute(
        "INSERT INTO mfa_recovery_codes (user_id, code_hash) SELECT $1, unnest($2::text[])",
        &[&principal.user_id, &hashes],
    )
    .await?;
    tx.execute(
        "UPDATE users SET mfa_enrolled = true, updated_at = now() WHERE id = $1",
        &[&principal.user_id],
    )
    .await?;
    audit::record(
        &tx,
        &principal.audit(),
        "user.mfa_enrolled",
        "user",
        &principal.user_id,
        json!({"mfa_enrolled": {"before": false, "after": true}}),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(RecoveryCodes {
        recovery_codes: codes,
    }))
}

/// Turns MFA off (or drops a pending enrollment) after checking a current TOTP code or an
/// unused recovery code; the secret and recovery codes are deleted. Audited as
/// `user.mfa_disabled`. 404 when there is no enrollment; 422 for a wrong code.
#[utoipa::path(
    delete,
    path = "/api/me/mfa/totp",
    tag = "mfa",
    request_body = RemoveTotp,
    responses(
        (status = 204, description = "MFA removed"),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope)
    )
)]
async fn remove_totp(
    State(state): State<AppState>,
    CurrentUser(principal): CurrentUser,
    Json(body): Json<RemoveTotp>,
) -> Result<StatusCode, ApiError> {
    own_session(&principal)?;
    let as_totp = is_totp_shaped(&body.code);
    if !as_totp && mfa::recovery_code_hash(&body.code).is_none() {
        return Err(ApiError::bad_request(
            "code must be 6 digits or a recovery code",
        ));
    }
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let enrollment = mfa::Enrollment::load(
        &tx,
        state.config().secret_key.as_ref(),
        &principal.user_id,
        true,
    )
    .await?
    .ok_or_else(|| ApiError::not_found("MFA is not enabled"))?;
    let (totp_code, recovery_code) = if as_totp {
        (Some(body.code.as_str()), None)
    } else {
        (None, Some(body.code.as_str()))
    };
    let ok = if enrollment.confirmed {
        mfa::verify_and_spend(
            &tx,
            &enrollment,
            &principal.user_id,
            totp_code,
            recovery_code,
        )
        .await?
    } else {
        // A pending enrollment has no recovery codes yet; its code proves the app has it.
        totp_code
            .and_then(|c| mfa::matching_step(&enrollment.secret, c, mfa::now_unix()))
            .is_some()
    };
    if !ok {
        drop(tx);
        count_code_attempt(&state, &principal).await?;
        return Err(ApiError::unprocessable("wrong, expired or used code"));
    }
    mfa::remove(&tx, &principal.user_id).await?;
    audit::record(
        &tx,
        &principal.audit(),
        "user.mfa_disabled",
        "user",
        &principal.user_id,
        json!({"mfa": {
            "before": if enrollment.confirmed { "enabled" } else { "pending" },
            "after": "none"
        }}),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a user's MFA (a lost device): their secret and recovery codes are deleted and they
/// sign in with the password alone (or must enroll again when `mfa_required`). Audited as
/// `user.mfa_reset`. 404 for an unknown user; 204 without change when none was set up.
#[utoipa::path(
    delete,
    path = "/users/{id}/mfa",
    tag = "users",
    params(("id" = String, Path, description = "User id (usr_…)", pattern = "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$")),
    responses(
        (status = 204, description = "MFA removed (or there was none)"),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)
    )
)]
async fn reset_user_mfa(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !IdKind::User.matches(&id) {
        return Err(ApiError::not_found("user not found"));
    }
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    tx.query_opt("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&id])
        .await?
        .ok_or_else(|| ApiError::not_found("user not found"))?;
    let before = tx
        .query_opt(
            "SELECT confirmed_at IS NOT NULL AS confirmed FROM user_totp WHERE user_id = $1",
            &[&id],
        )
        .await?;
    let Some(before) = before else {
        return Ok(StatusCode::NO_CONTENT);
    };
    let confirmed: bool = col(&before, "confirmed")?;
    mfa::remove(&tx, &id).await?;
    audit::record(
        &tx,
        &admin.audit(),
        "user.mfa_reset",
        "user",
        &id,
        json!({"mfa": {
            "before": if confirmed { "enabled" } else { "pending" },
            "after": "none"
        }}),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
