//! `GET /api/admin/stats`: platform-wide figures.
//!
//! Everything but the gateway block comes from one PostgreSQL statement. The gateway block sums
//! the proxy's per-minute Redis counters (`Keys::requests_in_minute` /
//! `Keys::rejects_in_minute`) over the last 60 minutes, the current one included, with one
//! `MGET` per access-log shard (each shard's counters share its hash tag), summed over the
//! shards; absent minutes count 0.
//!
//! Decision: when Redis is unreachable the endpoint still answers 200 with the PostgreSQL
//! figures and a gateway block of zeros with `available: false`, because most of the page does
//! not need Redis (SPEC §7: only what needs the missing store fails). When PostgreSQL is down
//! the whole endpoint is 503.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::PlatformAdmin,
    error::{ApiError, ErrorEnvelope},
    extract::Json,
    models::col,
    state::AppState,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_stats))
}

/// Minutes summed by the gateway block.
pub const GATEWAY_WINDOW_MINUTES: u64 = 60;

/// Platform-wide figures.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    pub total_organizations: i64,
    pub total_users: i64,
    /// Runs recorded.
    pub total_executions: i64,
    /// Credits spent by runs: minus the sum of `execution` ledger rows.
    pub total_credits_used: i64,
    /// Organizations with at least one member active in the last 7 days.
    pub active_organizations_7d: i64,
    pub organizations: OrganizationTotals,
    pub users: UserStats,
    pub sessions: SessionStats,
    pub auth: AuthStats,
    pub mfa: MfaStats,
    pub gateway: GatewayStats,
}

/// Organization figures.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrganizationTotals {
    /// Every organization, enabled or not.
    pub total: i64,
    /// Organizations with activity in the last 30 days: a member made an authenticated request
    /// (`last_active_at`) or signed in (a session created, impersonations excluded), or a run
    /// or a credit ledger row was recorded for the organization.
    pub active_last_30d: i64,
}

/// MFA adoption.
#[derive(Debug, Serialize, ToSchema)]
pub struct MfaStats {
    /// Users with a confirmed TOTP enrollment.
    pub enrolled_users: i64,
    /// `enrolled_users / total users`, 0..=1 (0 when there are no users).
    #[schema(minimum = 0, maximum = 1)]
    pub enrollment_rate: f64,
}

/// User figures (activity is `last_active_at`, updated at most once a minute).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserStats {
    pub total: i64,
    pub active_last_7d: i64,
    pub active_last_30d: i64,
    pub new_last_7d: i64,
    pub new_last_30d: i64,
}

/// Session figures.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionStats {
    /// Not revoked and not expired.
    pub active: i64,
    pub created_last_24h: i64,
}

/// Sign-in attempts (`POST /api/auth/sessions`).
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthStats {
    pub sign_ins_last_24h: i64,
    pub failed_sign_ins_last_24h: i64,
}

/// The proxy's counters over the last hour.
#[derive(Debug, Serialize, ToSchema)]
pub struct GatewayStats {
    pub requests_last_hour: i64,
    pub rejected_last_hour: i64,
    /// `false` when Redis could not be read: the counts are then 0 and mean nothing.
    pub available: bool,
}

const STATS_QUERY: &str = "\
SELECT
  (SELECT count(*) FROM organizations) AS total_organizations,
  (SELECT count(*) FROM users) AS total_users,
  (SELECT count(DISTINCT m.organization_id) FROM memberships m JOIN users u ON u.id = m.user_id
     WHERE u.last_active_at >= now() - interval '7 days') AS active_organizations_7d,
  -- Each EXISTS is an index probe: memberships (organization_id, …), sessions (user_id,
  -- created_at …), runs (organization_id, created_at …), credit_transactions
  -- (organization_id, created_at …).
  (SELECT count(*) FROM organizations o WHERE
     EXISTS (SELECT 1 FROM memberships m JOIN users u ON u.id = m.user_id
             WHERE m.organization_id = o.id
               AND (u.last_active_at >= now() - interval '30 days'
                    OR EXISTS (SELECT 1 FROM sessions s
                               WHERE s.user_id = u.id AND s.impersonator_id IS NULL
                                 AND s.created_at >= now() - interval '30 days')))
     OR EXISTS (SELECT 1 FROM runs r
                WHERE r.organization_id = o.id AND r.created_at >= now() - interval '30 days')
     OR EXISTS (SELECT 1 FROM credit_transactions t
                WHERE t.organization_id = o.id AND t.created_at >= now() - interval '30 days'))
     AS active_organizations_30d,
  (SELECT count(*) FROM users WHERE last_active_at >= now() - interval '7 days') AS active_7d,
  (SELECT count(*) FROM users WHERE last_active_at >= now() - interval '30 days') AS active_30d,
  (SELECT count(*) FROM users WHERE created_at >= now() - interval '7 days') AS new_7d,
  (SELECT count(*) FROM users WHERE created_at >= now() - interval '30 days') AS new_30d,
  (SELECT count(*) FROM sessions WHERE revoked_at IS NULL AND expires_at > now()) AS sessions_active,
  (SELECT count(*) FROM sessions WHERE created_at >= now() - interval '24 hours') AS sessions_24h,
  (SELECT count(*) FROM sign_in_events WHERE success AND created_at >= now() - interval '24 hours')
     AS sign_ins_24h,
  (SELECT count(*) FROM sign_in_events WHERE NOT success AND created_at >= now() - interval '24 hours')
     AS failed_24h,
  (SELECT count(*) FROM users WHERE mfa_enrolled) AS mfa_enrolled,
  (SELECT count(*) FROM runs) AS total_executions,
  -- Execution debits are stored negative; purchases, refunds and adjustments are not usage.
  (SELECT COALESCE(-sum(credits_amount), 0)::bigint FROM credit_transactions
     WHERE transaction_type = 'execution') AS total_credits_used";

/// Sums the last hour of per-minute counters with one `MGET` per shard, concurrently.
async fn gateway_stats(state: &AppState) -> GatewayStats {
    let now_minute = chrono::Utc::now().timestamp().max(0).unsigned_abs() / 60;
    let minutes: Vec<u64> = (0..GATEWAY_WINDOW_MINUTES)
        .map(|i| now_minute.saturating_sub(i))
        .collect();
    let totals = async {
        let families = crate::stream::shards::families(state).await?;
        let reads = families.iter().map(|family| {
            let names: Vec<String> = minutes
                .iter()
                .map(|m| family.requests_in_minute(*m))
                .chain(minutes.iter().map(|m| family.rejects_in_minute(*m)))
                .collect();
            let mut redis = state.redis();
            async move {
                state
                    .redis_timeout(
                        redis::cmd("MGET")
                            .arg(&names)
                            .query_async::<Vec<Option<i64>>>(&mut redis),
                    )
                    .await
            }
        });
        let per_shard = futures::future::try_join_all(reads).await?;
        let window = minutes.len();
        let sum = |vs: &[Option<i64>]| vs.iter().flatten().copied().sum::<i64>();
        let (mut requests, mut rejects) = (0i64, 0i64);
        for values in per_shard {
            let (req, rej) = values.split_at(window.min(values.len()));
            requests += sum(req);
            rejects += sum(rej);
        }
        Ok::<_, ApiError>((requests, rejects))
    };
    match totals.await {
        Ok((requests, rejects)) => GatewayStats {
            requests_last_hour: requests,
            rejected_last_hour: rejects,
            available: true,
        },
        Err(e) => {
            tracing::warn!(error = %e.public_message(), "stats: gateway counters unavailable");
            GatewayStats {
                requests_last_hour: 0,
                rejected_last_hour: 0,
                available: false,
            }
        }
    }
}

/// Platform-wide figures (SPEC §6).
#[utoipa::path(
    get,
    path = "/stats",
    tag = "stats",
    responses(
        (status = 200, body = Stats),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope)
    )
)]
async fn get_stats(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
) -> Result<Json<Stats>, ApiError> {
    let conn = state.db().await?;
    let row = conn.query_one(STATS_QUERY, &[]).await?;
    let gateway = gateway_stats(&state).await;
    let total_users: i64 = col(&row, "total_users")?;
    let mfa_enrolled: i64 = col(&row, "mfa_enrolled")?;
    // Counts far below 2^52: exact as f64.
    let enrollment_rate = if total_users > 0 {
        mfa_enrolled as f64 / total_users as f64
    } else {
        0.0
    };
    Ok(Json(Stats {
        total_organizations: col(&row, "total_organizations")?,
        total_users: col(&row, "total_users")?,
        total_executions: col(&row, "total_executions")?,
        total_credits_used: col(&row, "total_credits_used")?,
        active_organizations_7d: col(&row, "active_organizations_7d")?,
        organizations: OrganizationTotals {
            total: col(&row, "total_organizations")?,
            active_last_30d: col(&row, "active_organizations_30d")?,
        },
        users: UserStats {
            total: col(&row, "total_users")?,
            active_last_7d: col(&row, "active_7d")?,
            active_last_30d: col(&row, "active_30d")?,
            new_last_7d: col(&row, "new_7d")?,
            new_last_30d: col(&row, "new_30d")?,
        },
        sessions: SessionStats {
            active: col(&row, "sessions_active")?,
            created_last_24h: col(&row, "sessions_24h")?,
        },
        auth: AuthStats {
            sign_ins_last_24h: col(&row, "sign_ins_24h")?,
            failed_sign_ins_last_24h: col(&row, "failed_24h")?,
        },
        mfa: MfaStats {
            enrolled_users: mfa_enrolled,
            enrollment_rate,
        },
        gateway,
    }))
}
