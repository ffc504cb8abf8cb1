//! User-facing credits endpoints: `POST /api/redeem` (a redemption code credits the caller's
//! organization), `POST /api/runs` (records a run and debits its cost) and
//! `POST /api/me/invitation-codes` (the caller gets an invitation code of their own).
//!
//! The organization is the body's `organization_id` (the caller must be a member; platform
//! admins may name any), or else the caller's only organization (400 when they have several,
//! 422 when they have none).

use axum::{extract::State, http::StatusCode};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    invitation_codes::{create_invitation_code, InvitationCode, USER_CODE_MAX_USES},
    redemption_codes::{display_code, normalize_code},
    runs::{self, Run},
};
use crate::{
    audit,
    auth::{CurrentUser, Principal},
    error::{ApiError, ErrorEnvelope},
    extract::Json,
    ids::IdKind,
    ledger::{self, CreditTransaction},
    models::col,
    rate_limit::{self, Throttle},
    state::AppState,
    validate,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(redeem))
        .routes(routes!(create_run))
        .routes(routes!(create_my_invitation_code))
}

/// The organization a user-facing credits request acts on.
async fn caller_org(
    client: &impl GenericClient,
    principal: &Principal,
    requested: Option<&str>,
) -> Result<String, ApiError> {
    if let Some(org) = requested {
        let not_member = || ApiError::forbidden("you are not a member of this organization");
        if !IdKind::Organization.matches(org) {
            return Err(ApiError::not_found("organization not found"));
        }
        let row = client
            .query_opt(
                "SELECT EXISTS (SELECT 1 FROM memberships WHERE organization_id = $1 \
                 AND user_id = $2) AS member FROM organizations WHERE id = $1",
                &[&org, &principal.user_id],
            )
            .await?
            .ok_or_else(|| ApiError::not_found("organization not found"))?;
        if col::<bool>(&row, "member")? || principal.is_platform_admin() {
            return Ok(org.to_string());
        }
        return Err(not_member());
    }
    let rows = client
        .query(
            "SELECT organization_id FROM memberships WHERE user_id = $1 LIMIT 2",
            &[&principal.user_id],
        )
        .await?;
    match rows.as_slice() {
        [one] => col(one, "organization_id"),
        [] => Err(ApiError::unprocessable(
            "you are not a member of any organization",
        )),
        _ => Err(ApiError::bad_request(
            "organization_id is required: you are a member of several organizations",
        )),
    }
}

/// `POST /api/redeem` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeemRequest {
    /// The code, any case, dashes optional.
    pub code: String,
    /// The organization to credit; default: the caller's only organization.
    #[schema(pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub organization_id: Option<String>,
}

/// What a redemption did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Redemption {
    /// `XXXXX-XXXXX`.
    pub code: String,
    pub organization_id: String,
    pub credits_added: i64,
    /// The `purchase` ledger row (its `balance_after` is the new balance).
    pub transaction: CreditTransaction,
}

/// Redeems a code for the caller's organization (a `purchase` ledger row, audited as
/// `redemption_code.redeemed`).
///
/// At most `max_uses` redemptions in total and one per user, under any concurrency: one
/// guarded UPDATE takes a use only while the code is active, unexpired and not exhausted, and
/// a unique (code, user) row refuses a second redemption by the same user (rolling the use
/// back). Unknown code 404; inactive or expired 422; exhausted or already redeemed 409.
#[utoipa::path(
    post,
    path = "/api/redeem",
    tag = "credits",
    request_body = RedeemRequest,
    responses(
        (status = 201, body = Redemption),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope)
    )
)]
async fn redeem(
    State(state): State<AppState>,
    CurrentUser(principal): CurrentUser,
    Json(body): Json<RedeemRequest>,
) -> Result<(StatusCode, Json<Redemption>), ApiError> {
    rate_limit::per_ip(&state, Throttle::Redeem, principal.meta.ip).await?;
    let unknown = || ApiError::not_found("redemption code not found");
    let code = normalize_code(&body.code).ok_or_else(unknown)?;
    let mut conn = state.db().await?;
    let org = caller_org(&conn, &principal, body.organization_id.as_deref()).await?;
    let tx = conn.transaction().await?;
    let taken = tx
        .query_opt(
            "UPDATE redemption_codes SET uses = uses + 1, updated_at = now() \
             WHERE code = $1 AND uses < max_uses AND is_active \
               AND (expires_at IS NULL OR expires_at > now()) \
             RETURNING value, code_type",
            &[&code],
        )
        .await?;
    let Some(taken) = taken else {
        return Err(refusal(&tx, &code, &principal.user_id).await?);
    };
    let value: i64 = col(&taken, "value")?;
    let shown = display_code(&code);
    let txn = ledger::apply(
        &tx,
        &ledger::Entry {
            organization_id: &org,
            credits_amount: value,
            transaction_type: "purchase",
            description: &format!("redemption code {shown}"),
            actor_id: Some(&principal.user_id),
            reference: Some(&shown),
        },
    )
    .await?;
    tx.execute(
        "INSERT INTO redemptions (code, user_id, organization_id, transaction_id) \
         VALUES ($1, $2, $3, $4)",
        &[&code, &principal.user_id, &org, &txn.id],
    )
    .await
    .map_err(|e| {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
            ApiError::conflict("you have already redeemed this code")
        } else {
            e.into()
        }
    })?;
    audit::record(
        &tx,
        &principal.audit(),
        "redemption_code.redeemed",
        "redemption_code",
        &code,
        serde_json::json!({
            "organization_id": org,
            "credits": value,
            "transaction_id": txn.id,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(Redemption {
            code: shown,
            organization_id: org,
            credits_added: value,
            transaction: txn,
        }),
    ))
}

/// Why the guarded UPDATE matched nothing (asked only after it did).
async fn refusal(
    tx: &deadpool_postgres::Transaction<'_>,
    code: &str,
    user_id: &str,
) -> Result<ApiError, ApiError> {
    let Some(row) = tx
        .query_opt(
            "SELECT is_active, uses >= max_uses AS exhausted, \
             (expires_at IS NOT NULL AND expires_at <= now()) AS expired, \
             EXISTS (SELECT 1 FROM redemptions r WHERE r.code = c.code AND r.user_id = $2) \
               AS redeemed \
             FROM redemption_codes c WHERE code = $1",
            &[&code, &user_id],
        )
        .await?
    else {
        return Ok(ApiError::not_found("redemption code not found"));
    };
    Ok(if col::<bool>(&row, "redeemed")? {
        ApiError::conflict("you have already redeemed this code")
    } else if !col::<bool>(&row, "is_active")? {
        ApiError::unprocessable("this redemption code is disabled")
    } else if col::<bool>(&row, "expired")? {
        ApiError::unprocessable("this redemption code has expired")
    } else if col::<bool>(&row, "exhausted")? {
        ApiError::conflict("this redemption code has no uses left")
    } else {
        // Changed between the UPDATE and this SELECT (e.g. re-activated): ask to retry.
        ApiError::conflict("this redemption code changed meanwhile; try again")
    })
}

/// `POST /api/runs` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    /// Default: the caller's only organization.
    #[schema(pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub organization_id: Option<String>,
    /// What ran (1-200 characters).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: String,
    /// Its cost in credits (≥ 0), debited as an `execution` ledger row.
    #[schema(minimum = 0)]
    pub credits: i64,
    /// `pending`, `running`, `succeeded` (default), `failed` or `cancelled`; `completed` is
    /// the old name of `succeeded`. Move it on with `PATCH /api/runs/{id}`.
    #[schema(pattern = "^(pending|running|succeeded|failed|cancelled|completed)$")]
    pub status: Option<String>,
    /// Anything the caller wants kept with the run.
    pub input: Option<serde_json::Value>,
}

/// Records a run and debits its cost atomically (audited as `run.created`); 409 when the
/// organization's credits are insufficient, in which case no run is recorded.
#[utoipa::path(
    post,
    path = "/api/runs",
    tag = "runs",
    request_body = CreateRun,
    responses(
        (status = 201, body = Run),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope)
    )
)]
async fn create_run(
    State(state): State<AppState>,
    CurrentUser(principal): CurrentUser,
    Json(body): Json<CreateRun>,
) -> Result<(StatusCode, Json<Run>), ApiError> {
    rate_limit::per_ip(&state, Throttle::Runs, principal.meta.ip).await?;
    let name = validate::text("name", &body.name, 200)?;
    if body.credits < 0 {
        return Err(ApiError::bad_request("credits must be 0 or more"));
    }
    let status = runs::parse_status(body.status.as_deref().unwrap_or("succeeded"))?;
    let mut conn = state.db().await?;
    let org = caller_org(&conn, &principal, body.organization_id.as_deref()).await?;
    let tx = conn.transaction().await?;
    let id = IdKind::Run.new_id();
    let txn = if body.credits > 0 {
        Some(
            ledger::apply(
                &tx,
                &ledger::Entry {
                    organization_id: &org,
                    credits_amount: -body.credits,
                    transaction_type: "execution",
                    description: &format!("run {name}"),
                    actor_id: Some(&principal.user_id),
                    reference: Some(&id),
                },
            )
            .await?,
        )
    } else {
        None
    };
    let txn_id = txn.as_ref().map(|t| t.id.clone());
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO runs (id, organization_id, user_id, name, status, credits_cost, \
                 transaction_id, input, started_at, finished_at, duration_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
                   CASE WHEN $5 <> 'pending' THEN now() END, \
                   CASE WHEN $5 NOT IN ('pending', 'running') THEN now() END, \
                   CASE WHEN $5 NOT IN ('pending', 'running') THEN 0::bigint END) \
                 RETURNING {}",
                Run::COLUMNS
            ),
            &[
                &id,
                &org,
                &principal.user_id,
                &name,
                &status,
                &body.credits,
                &txn_id,
                &body.input,
            ],
        )
        .await?;
    let run = Run::from_row(&row)?;
    audit::record(
        &tx,
        &principal.audit(),
        "run.created",
        "run",
        &id,
        audit::created(&audit::snapshot(&run)?),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(run)))
}

/// Gives the caller a new invitation code of their own (`max_uses` 5), audited as
/// `invitation_code.created`. A user holding `[admin] max_active_invitation_codes_per_user`
/// active codes (enabled, with uses left) gets 422 until one is used up or disabled.
#[utoipa::path(
    post,
    path = "/api/me/invitation-codes",
    tag = "invitation-codes",
    responses(
        (status = 201, body = InvitationCode),
        (status = 401, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope)
    )
)]
async fn create_my_invitation_code(
    State(state): State<AppState>,
    CurrentUser(principal): CurrentUser,
) -> Result<(StatusCode, Json<InvitationCode>), ApiError> {
    rate_limit::per_ip(&state, Throttle::InvitationCodes, principal.meta.ip).await?;
    let cap = i64::from(state.config().admin.max_active_invitation_codes_per_user);
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    // The user's row lock serializes their concurrent mints; the count runs as a statement of
    // its own after it, so its snapshot sees every mint committed before the lock was granted.
    tx.query_opt(
        "SELECT 1 FROM users WHERE id = $1 FOR UPDATE",
        &[&principal.user_id],
    )
    .await?
    .ok_or_else(|| ApiError::unauthorized("invalid or expired token"))?;
    let active: i64 = col(
        &tx.query_one(
            "SELECT count(*) AS active FROM invitation_codes \
             WHERE user_id = $1 AND is_active AND uses < max_uses",
            &[&principal.user_id],
        )
        .await?,
        "active",
    )?;
    if active >= cap {
        return Err(ApiError::unprocessable(format!(
            "you already have {active} active invitation codes, the most allowed ({cap})"
        )));
    }
    let code = create_invitation_code(
        &tx,
        &principal.audit(),
        &principal.user_id,
        USER_CODE_MAX_USES,
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(code)))
}
