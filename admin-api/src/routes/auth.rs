//! User-facing authentication: `POST /api/auth/register`, `POST /api/auth/sessions`,
//! `DELETE /api/auth/sessions/current`, `GET /api/me`.

use std::net::IpAddr;

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    audit::{self, AuditCtx},
    auth::{
        issue_session, mfa,
        password::{hash_password, verify_password},
        AuthSettings, CurrentUser,
    },
    error::{ApiError, ErrorEnvelope},
    extract::{Json, RequestMeta},
    ids::IdKind,
    invitations,
    models::{col, PersonRef, User, UserOrganization},
    rate_limit::{self, Throttle},
    state::AppState,
    validate,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(sign_in))
        .routes(routes!(sign_out))
        .routes(routes!(me))
}

/// `POST /api/auth/register` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[schema(format = "email", max_length = 254)]
    pub email: String,
    pub password: String,
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{2,31}$")]
    pub username: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: Option<String>,
    pub invitation_code: Option<String>,
}

/// `POST /api/auth/sessions` body: `email` or `username`, and `password`; for an account
/// enrolled in MFA also `totp_code` or `recovery_code` (not both).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInRequest {
    #[schema(min_length = 1)]
    pub email: Option<String>,
    #[schema(min_length = 1)]
    pub username: Option<String>,
    pub password: String,
    /// The current 6-digit code of the authenticator app.
    #[schema(pattern = "^[0-9]{6}$")]
    pub totp_code: Option<String>,
    /// One of the recovery codes given at enrollment (`abcde-fghij`); each works once.
    #[schema(pattern = "^[A-Za-z2-7]{5}-?[A-Za-z2-7]{5}$")]
    pub recovery_code: Option<String>,
}

/// A new session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionResponse {
    /// Bearer token (`wps_…`), shown once.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub user: User,
}

/// The caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    #[serde(flatten)]
    pub user: User,
    pub organizations: Vec<UserOrganization>,
    /// The admin who obtained this impersonation token ({id, email}); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impersonated_by: Option<PersonRef>,
}

/// Creates an account and signs it in.
///
/// Field formats are checked first (400); then policy: a password shorter than
/// `password_min_length`, a missing invitation code when `registration_requires_invitation`,
/// or a refused code (unknown, disabled, used up, or owned by a disabled account) are 422. A
/// taken email or username is 409. More than `[admin] register_per_ip_per_minute` attempts
/// from one client IP in a minute are 429.
#[utoipa::path(
    post,
    path = "/api/auth/register",
    tag = "auth",
    security(()),
    request_body = RegisterRequest,
    responses(
        (status = 201, body = SessionResponse),
        (status = 400, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope)
    )
)]
async fn register(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(body): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<SessionResponse>), ApiError> {
    rate_limit::per_ip(&state, Throttle::Register, meta.ip).await?;
    let email = validate::email(&body.email)?;
    let username = validate::username(&body.username)?;
    let name = body
        .name
        .as_deref()
        .map(|n| validate::text("name", n, 200))
        .transpose()?;
    let code = body
        .invitation_code
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    // The pooled connection goes back before argon2 runs and is taken again after.
    let settings = {
        let conn = state.db().await?;
        AuthSettings::load(&conn).await?
    };
    settings.check_password(&body.password)?;
    if settings.registration_requires_invitation && code.is_none() {
        return Err(ApiError::unprocessable("an invitation code is required"));
    }
    let password_hash = hash_password(body.password).await?;
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let id = IdKind::User.new_id();
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO users (id, email, username, name, password_hash) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING {}",
                User::COLUMNS
            ),
            &[&id, &email, &username, &name, &password_hash],
        )
        .await?;
    let user = User::from_row(&row)?;
    let invitation = match code {
        Some(code) => Some(invitations::redeem_for_registration(&tx, code, &id).await?),
        None => None,
    };
    let session = issue_session(
        &tx,
        &id,
        settings.session_ttl(),
        None,
        meta.ip,
        meta.user_agent.as_deref(),
    )
    .await?;
    // Audit rows last, right before the commit: the audit chain's lock is held only for
    // these inserts and the commit.
    let ctx = AuditCtx::new(&id, None, &meta);
    audit::record(
        &tx,
        &ctx,
        "user.registered",
        "user",
        &id,
        audit::created(&audit::snapshot(&user)?),
    )
    .await?;
    if let Some(invitation) = invitation {
        invitation.record(&tx, &ctx).await?;
    }
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(SessionResponse {
            token: session.token,
            expires_at: session.expires_at,
            user,
        }),
    ))
}

async fn record_sign_in(
    state: &AppState,
    client: &impl GenericClient,
    user_id: Option<&str>,
    success: bool,
    reason: Option<&str>,
    ip: Option<IpAddr>,
) -> Result<(), ApiError> {
    client
        .execute(
            "INSERT INTO sign_in_events (user_id, success, reason, ip) VALUES ($1, $2, $3, $4)",
            &[&user_id, &success, &reason, &ip],
        )
        .await?;
    if !success {
        state.metrics().sign_in_failed(reason.unwrap_or("other"));
    }
    Ok(())
}

/// Signs in with email or username and password.
///
/// Wrong credentials are 401. With the right password, a disabled account or a member of any
/// disabled organization is refused with 403. An account enrolled in MFA also needs
/// `totp_code` or `recovery_code`: without either the answer is 401 `MFA_REQUIRED`; a wrong,
/// expired or already used one is 401 `UNAUTHORIZED` (recorded as a failed sign-in). Every
/// attempt that reaches the password check counts against the throttles; every decided one
/// is recorded for the stats. More than `[admin] sign_in_per_ip_per_minute` attempts from one
/// client IP, or `[admin] sign_in_per_account_ip_per_minute` on one account from one client
/// IP, in a minute are 429 before any password is checked.
#[utoipa::path(
    post,
    path = "/api/auth/sessions",
    tag = "auth",
    security(()),
    request_body = SignInRequest,
    responses(
        (status = 201, body = SessionResponse),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope, description = "Wrong credentials or second factor \
            (`UNAUTHORIZED`), or a second factor is needed (`MFA_REQUIRED`)"),
        (status = 403, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope)
    )
)]
async fn sign_in(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(body): Json<SignInRequest>,
) -> Result<(StatusCode, Json<SessionResponse>), ApiError> {
    let (column, identifier) = match (body.email.as_deref(), body.username.as_deref()) {
        (Some(e), None) => ("email", e.trim()),
        (None, Some(u)) => ("username", u.trim()),
        _ => return Err(ApiError::bad_request("give either email or username")),
    };
    if identifier.is_empty() || identifier.len() > 254 {
        return Err(ApiError::bad_request(format!("{column} must not be empty")));
    }
    if body.totp_code.is_some() && body.recovery_code.is_some() {
        return Err(ApiError::bad_request(
            "give either totp_code or recovery_code, not both",
        ));
    }
    rate_limit::per_ip(&state, Throttle::SignIn, meta.ip).await?;
    // The pooled connection goes back before argon2 runs and is taken again after.
    let row = state
        .db()
        .await?
        .query_opt(
            &format!(
                "SELECT {}, password_hash, \
                 EXISTS (SELECT 1 FROM memberships m JOIN organizations o \
                         ON o.id = m.organization_id \
                         WHERE m.user_id = users.id AND NOT o.enabled) AS org_disabled \
                 FROM users WHERE lower({column}) = lower($1)",
                User::COLUMNS
            ),
            &[&identifier],
        )
        .await?;
    // The account is the user (however named), or the identifier when there is no such user.
    let account = match &row {
        Some(r) => col::<String>(r, "id")?,
        None => format!("{column}:{identifier}"),
    };
    let account_subject = rate_limit::account_subject(meta.ip, &account);
    rate_limit::throttle(&state, &[(Throttle::SignInAccount, &account_subject)]).await?;
    let stored_hash: Option<String> = match &row {
        Some(r) => col(r, "password_hash")?,
        None => None,
    };
    let password_ok = verify_password(body.password, stored_hash).await?;
    let mut conn = state.db().await?;
    let Some(row) = row.filter(|_| password_ok) else {
        record_sign_in(&state, &conn, None, false, Some("bad_credentials"), meta.ip).await?;
        return Err(ApiError::unauthorized("invalid credentials"));
    };
    let user = User::from_row(&row)?;
    if user.status != "active" {
        record_sign_in(
            &state,
            &conn,
            Some(&user.id),
            false,
            Some("user_disabled"),
            meta.ip,
        )
        .await?;
        return Err(ApiError::forbidden("account is disabled"));
    }
    if col::<bool>(&row, "org_disabled")? {
        record_sign_in(
            &state,
            &conn,
            Some(&user.id),
            false,
            Some("organization_disabled"),
            meta.ip,
        )
        .await?;
        return Err(ApiError::forbidden("organization is disabled"));
    }
    let settings = AuthSettings::load(&conn).await?;
    let enrollment =
        mfa::Enrollment::load_confirmed(&conn, state.config().secret_key.as_ref(), &user.id)
            .await?;
    if enrollment.is_some() && body.totp_code.is_none() && body.recovery_code.is_none() {
        return Err(ApiError::mfa_required(
            "this account uses multi-factor authentication: sign in again with totp_code \
             or recovery_code",
        ));
    }
    let tx = conn.transaction().await?;
    if let Some(enrollment) = &enrollment {
        let ok = mfa::verify_and_spend(
            &tx,
            enrollment,
            &user.id,
            body.totp_code.as_deref(),
            body.recovery_code.as_deref(),
        )
        .await?;
        if !ok {
            tx.rollback().await?;
            record_sign_in(
                &state,
                &conn,
                Some(&user.id),
                false,
                Some("bad_mfa_code"),
                meta.ip,
            )
            .await?;
            return Err(ApiError::unauthorized(
                "invalid, expired or already used second-factor code",
            ));
        }
    }
    let session = issue_session(
        &tx,
        &user.id,
        settings.session_ttl(),
        None,
        meta.ip,
        meta.user_agent.as_deref(),
    )
    .await?;
    record_sign_in(&state, &tx, Some(&user.id), true, None, meta.ip).await?;
    tx.commit().await?;
    rate_limit::clear(&state, Throttle::SignInAccount, &account_subject).await;
    Ok((
        StatusCode::CREATED,
        Json(SessionResponse {
            token: session.token,
            expires_at: session.expires_at,
            user,
        }),
    ))
}

/// Signs out: revokes the session whose token authenticates this request.
#[utoipa::path(
    delete,
    path = "/api/auth/sessions/current",
    tag = "auth",
    responses(
        (status = 204, description = "Signed out"),
        (status = 400, body = ErrorEnvelope, description = "The token is an API key"),
        (status = 401, body = ErrorEnvelope)
    )
)]
async fn sign_out(
    State(state): State<AppState>,
    CurrentUser(principal): CurrentUser,
) -> Result<StatusCode, ApiError> {
    let session_id = principal
        .session_id
        .ok_or_else(|| ApiError::bad_request("this token is an API key, not a session"))?;
    let conn = state.db().await?;
    conn.execute(
        "UPDATE sessions SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
        &[&session_id],
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The authenticated user with their organizations (and `impersonated_by` for an
/// impersonation token).
#[utoipa::path(
    get,
    path = "/api/me",
    tag = "auth",
    responses((status = 200, body = Me), (status = 401, body = ErrorEnvelope))
)]
async fn me(
    State(state): State<AppState>,
    CurrentUser(principal): CurrentUser,
) -> Result<Json<Me>, ApiError> {
    let conn = state.db().await?;
    let row = conn
        .query_opt(
            &format!("SELECT {} FROM users WHERE id = $1", User::COLUMNS),
            &[&principal.user_id],
        )
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid or expired token"))?;
    let user = User::from_row(&row)?;
    let organizations = UserOrganization::for_user(&conn, &user.id).await?;
    let impersonated_by = match principal.impersonator_id.as_deref() {
        Some(id) => Some(PersonRef::load(&conn, id).await?),
        None => None,
    };
    Ok(Json(Me {
        user,
        organizations,
        impersonated_by,
    }))
}
