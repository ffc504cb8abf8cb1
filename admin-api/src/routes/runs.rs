//! `/api/admin/runs…` and `PATCH /api/runs/{id}`: recorded runs, what they cost, and how they
//! finish. Runs are created by users through `POST /api/runs` (see `routes::redeem`).
//!
//! Lifecycle: `pending → running → succeeded | failed | cancelled`; `pending` may also end
//! directly (`succeeded`, `failed`, `cancelled`). The three end states are final: any other
//! change is 409. `started_at` is set when the run leaves `pending`, `finished_at` and
//! `duration_ms` (`finished_at - started_at`, null when it never started) when it ends.
//!
//! Refunds: a run with a cost that ends `failed` or `cancelled` gives its debit back as one
//! `refund` ledger row (reference: the run id), written in the same transaction as the status
//! change while the run's row is locked (`SELECT … FOR UPDATE`). Concurrent PATCHes queue on
//! that lock; the second sees a final state and gets 409, so the refund happens once. The
//! `runs.refund_transaction_id` column is UNIQUE as a second guard.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    audit::{self, AuditCtx},
    auth::{CurrentUser, PlatformAdmin, Principal},
    error::{ApiError, ErrorEnvelope},
    extract::{Json, Path, Query},
    ids::IdKind,
    ledger::{self, CreditTransaction},
    models::col,
    pagination::{Cursor, Page, PageRequest},
    rate_limit::{self, Throttle},
    state::AppState,
};

/// Run statuses.
pub const RUN_STATUSES: [&str; 5] = ["pending", "running", "succeeded", "failed", "cancelled"];
/// Statuses a PATCH may set.
pub const PATCH_STATUSES: [&str; 4] = ["running", "succeeded", "failed", "cancelled"];
/// The final statuses.
pub const FINAL_STATUSES: [&str; 3] = ["succeeded", "failed", "cancelled"];
/// Longest `error` text.
pub const MAX_ERROR_CHARS: usize = 4000;

/// A status as stored: `completed`, the name before `succeeded`, is still accepted as input.
pub fn parse_status(text: &str) -> Result<&'static str, ApiError> {
    let text = if text == "completed" {
        "succeeded"
    } else {
        text
    };
    RUN_STATUSES
        .iter()
        .find(|s| **s == text)
        .copied()
        .ok_or_else(|| {
            ApiError::bad_request(format!("status must be one of {}", RUN_STATUSES.join(", ")))
        })
}

/// Whether a run may go from `from` to `to`.
pub fn legal_transition(from: &str, to: &str) -> bool {
    match from {
        "pending" => PATCH_STATUSES.contains(&to),
        "running" => FINAL_STATUSES.contains(&to),
        _ => false,
    }
}

/// Admin routes (relative to `/api/admin`).
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_runs))
        .routes(routes!(get_run, admin_patch_run))
}

/// User-facing routes.
pub(super) fn public_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(patch_run))
}

/// A recorded run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Run {
    /// `run_…`.
    pub id: String,
    pub organization_id: String,
    /// Who started it.
    pub user_id: String,
    pub name: String,
    /// `pending`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// Credits debited for it.
    pub credits_cost: i64,
    /// Its `execution` ledger row; null for a run that cost nothing.
    pub transaction_id: Option<String>,
    /// Its `refund` ledger row, once it ended `failed` or `cancelled` with a cost.
    pub refund_transaction_id: Option<String>,
    /// The caller's input, as given.
    pub input: Option<serde_json::Value>,
    /// What the run produced, as reported.
    pub output: Option<serde_json::Value>,
    /// Why it failed, as reported.
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When it left `pending`.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final status.
    pub finished_at: Option<DateTime<Utc>>,
    /// `finished_at - started_at` in milliseconds; null until it finished after starting.
    pub duration_ms: Option<i64>,
    pub updated_at: DateTime<Utc>,
}

impl Run {
    /// Columns for `SELECT {Run::COLUMNS} FROM runs`.
    pub const COLUMNS: &'static str = "id, organization_id, user_id, name, status, credits_cost, \
         transaction_id, refund_transaction_id, input, output, error, created_at, started_at, \
         finished_at, duration_ms, updated_at";

    /// Builds a run from a row selected with [`Run::COLUMNS`].
    pub fn from_row(row: &Row) -> Result<Self, ApiError> {
        Ok(Self {
            id: col(row, "id")?,
            organization_id: col(row, "organization_id")?,
            user_id: col(row, "user_id")?,
            name: col(row, "name")?,
            status: col(row, "status")?,
            credits_cost: col(row, "credits_cost")?,
            transaction_id: col(row, "transaction_id")?,
            refund_transaction_id: col(row, "refund_transaction_id")?,
            input: col(row, "input")?,
            output: col(row, "output")?,
            error: col(row, "error")?,
            created_at: col(row, "created_at")?,
            started_at: col(row, "started_at")?,
            finished_at: col(row, "finished_at")?,
            duration_ms: col(row, "duration_ms")?,
            updated_at: col(row, "updated_at")?,
        })
    }
}

/// A run with its ledger row.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: Run,
    /// The `execution` debit; null for a run that cost nothing.
    pub transaction: Option<CreditTransaction>,
}

/// Filters of `GET /runs`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListRunsQuery {
    #[param(pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub organization_id: Option<String>,
    #[param(pattern = "^usr_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub user_id: Option<String>,
    /// `pending`, `running`, `succeeded`, `failed` or `cancelled` (`completed` means
    /// `succeeded`).
    #[param(pattern = "^(pending|running|succeeded|failed|cancelled|completed)$")]
    pub status: Option<String>,
    /// Page size, default 20, at most 100.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Runs, newest first.
#[utoipa::path(
    get,
    path = "/runs",
    tag = "runs",
    params(ListRunsQuery),
    responses(
        (status = 200, body = Page<Run>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope)
    )
)]
async fn list_runs(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Query(q): Query<ListRunsQuery>,
) -> Result<Json<Page<Run>>, ApiError> {
    let page = PageRequest::new(q.limit, q.cursor.as_deref())?;
    let status = q.status.as_deref().map(parse_status).transpose()?;
    let conn = state.db().await?;
    let rows = conn
        .query(
            &format!(
                "SELECT {} FROM runs \
                 WHERE ($1::text IS NULL OR organization_id = $1) \
                   AND ($2::text IS NULL OR user_id = $2) \
                   AND ($3::text IS NULL OR status = $3) \
                   AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5::text)) \
                 ORDER BY created_at DESC, id DESC LIMIT $6",
                Run::COLUMNS
            ),
            &[
                &q.organization_id,
                &q.user_id,
                &status,
                &page.after_time(),
                &page.after_id(),
                &page.fetch_limit(),
            ],
        )
        .await?;
    let items = rows
        .iter()
        .map(Run::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page::from_rows(items, &page, |r| Cursor {
        created_at: r.created_at,
        id: r.id.clone(),
    })))
}

/// One run with its ledger row.
#[utoipa::path(
    get,
    path = "/runs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "Run id (run_…)", pattern = "^run_[0-7][0-9A-HJKMNP-TV-Z]{25}$")),
    responses(
        (status = 200, body = RunDetail),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)
    )
)]
async fn get_run(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Path(id): Path<String>,
) -> Result<Json<RunDetail>, ApiError> {
    if !IdKind::Run.matches(&id) {
        return Err(ApiError::not_found("run not found"));
    }
    let conn = state.db().await?;
    let row = conn
        .query_opt(
            &format!("SELECT {} FROM runs WHERE id = $1", Run::COLUMNS),
            &[&id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("run not found"))?;
    let run = Run::from_row(&row)?;
    let transaction = match run.transaction_id.as_deref() {
        Some(t) => CreditTransaction::load(&conn, t).await?,
        None => None,
    };
    Ok(Json(RunDetail { run, transaction }))
}

/// `PATCH /api/runs/{id}` and `PATCH /api/admin/runs/{id}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchRun {
    /// The new status; only legal transitions are accepted (see the module docs).
    #[schema(pattern = "^(running|succeeded|failed|cancelled)$")]
    pub status: String,
    /// What the run produced (any JSON), replacing what was stored.
    pub output: Option<serde_json::Value>,
    /// Why it failed; only with `failed` or `cancelled`.
    #[schema(min_length = 1, max_length = 4000)]
    pub error: Option<String>,
}

/// Whether this caller may PATCH runs through the user-facing `/api/runs/{id}`: a session (for
/// its own runs) or an API key with the `runs` scope. Authentication already refuses a key whose
/// scopes do not cover `/api/runs`; this keeps the handler safe on its own.
fn runs_scope_allows(principal: &Principal) -> Result<(), ApiError> {
    match &principal.scopes {
        Some(scopes)
            if !scopes
                .iter()
                .any(|s| s == crate::auth::principal::SCOPE_RUNS) =>
        {
            Err(ApiError::forbidden(
                "this API key's scopes do not cover /api/runs",
            ))
        }
        _ => Ok(()),
    }
}

/// Who is changing the run.
enum Changer<'a> {
    /// The run's owner (or a `runs` key acting for them): only their own runs.
    Owner(&'a Principal),
    /// A platform admin: any run.
    Admin(&'a Principal),
}

/// Applies a PATCH: checks the transition under the run's row lock, records the times, refunds
/// a failed or cancelled run's debit once, audits `run.updated` (and the refund as
/// `run.refunded`), all in one transaction.
async fn apply_patch(
    state: &AppState,
    changer: Changer<'_>,
    id: &str,
    body: PatchRun,
) -> Result<Run, ApiError> {
    if !IdKind::Run.matches(id) {
        return Err(ApiError::not_found("run not found"));
    }
    if !PATCH_STATUSES.contains(&body.status.as_str()) {
        return Err(ApiError::bad_request(format!(
            "status must be one of {}",
            PATCH_STATUSES.join(", ")
        )));
    }
    let to = body.status.as_str();
    let error = body.error.as_deref().map(validate_error_text).transpose()?;
    if error.is_some() && !matches!(to, "failed" | "cancelled") {
        return Err(ApiError::bad_request(
            "error may only be given with status failed or cancelled",
        ));
    }
    let (principal, owner_only) = match changer {
        Changer::Owner(p) => (p, true),
        Changer::Admin(p) => (p, false),
    };
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let row = tx
        .query_opt(
            &format!("SELECT {} FROM runs WHERE id = $1 FOR UPDATE", Run::COLUMNS),
            &[&id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("run not found"))?;
    let before = Run::from_row(&row)?;
    if owner_only && before.user_id != principal.user_id {
        // Someone else's run: not found, so that run ids of others are not confirmed.
        return Err(ApiError::not_found("run not found"));
    }
    if !legal_transition(&before.status, to) {
        return Err(ApiError::conflict(format!(
            "a {} run cannot become {to}",
            before.status
        )));
    }
    let refund = if matches!(to, "failed" | "cancelled")
        && before.credits_cost > 0
        && before.transaction_id.is_some()
        && before.refund_transaction_id.is_none()
    {
        Some(
            ledger::apply(
                &tx,
                &ledger::Entry {
                    organization_id: &before.organization_id,
                    credits_amount: before.credits_cost,
                    transaction_type: "refund",
                    description: &format!("refund of run {} ({to})", before.name),
                    actor_id: Some(&principal.user_id),
                    reference: Some(id),
                },
            )
            .await?,
        )
    } else {
        None
    };
    let refund_id = refund.as_ref().map(|t| t.id.clone());
    let row = tx
        .query_one(
            &format!(
                "UPDATE runs SET status = $2, \
                   output = COALESCE($3, output), \
                   error = COALESCE($4, error), \
                   started_at = CASE WHEN started_at IS NULL AND $2 = 'running' \
                                     THEN now() ELSE started_at END, \
                   finished_at = CASE WHEN $2 <> 'running' THEN now() ELSE finished_at END, \
                   duration_ms = CASE WHEN $2 <> 'running' AND started_at IS NOT NULL \
                       THEN GREATEST(0, floor(extract(epoch FROM (now() - started_at)) * 1000))::bigint \
                       ELSE duration_ms END, \
                   refund_transaction_id = COALESCE($5, refund_transaction_id), \
                   updated_at = now() \
                 WHERE id = $1 RETURNING {}",
                Run::COLUMNS
            ),
            &[&id, &to, &body.output, &error, &refund_id],
        )
        .await?;
    let after = Run::from_row(&row)?;
    let ctx: AuditCtx = principal.audit();
    audit::record(
        &tx,
        &ctx,
        "run.updated",
        "run",
        id,
        audit::diff(&audit::snapshot(&before)?, &audit::snapshot(&after)?),
    )
    .await?;
    if let Some(refund) = &refund {
        audit::record(
            &tx,
            &ctx,
            "run.refunded",
            "organization",
            &before.organization_id,
            serde_json::json!({
                "credits_balance": {
                    "before": refund.balance_after - refund.credits_amount,
                    "after": refund.balance_after
                },
                "transaction_id": {"before": null, "after": refund.id},
                "run_id": {"before": null, "after": id}
            }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(after)
}

/// `error`: 1..=[`MAX_ERROR_CHARS`] characters; line breaks and tabs allowed (stack traces),
/// other control characters not.
fn validate_error_text(text: &str) -> Result<String, ApiError> {
    let t = text.trim();
    let bad = t
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'));
    if t.is_empty() || t.chars().count() > MAX_ERROR_CHARS || bad {
        return Err(ApiError::bad_request(format!(
            "error must be 1-{MAX_ERROR_CHARS} characters without control characters other \
             than line breaks and tabs"
        )));
    }
    Ok(t.to_string())
}

/// Reports progress or the end of one of the caller's runs: `running`, then `succeeded`,
/// `failed` or `cancelled` (with `output` and, when it failed, `error`). A run that ends
/// `failed` or `cancelled` gets its debit back once, as a `refund` ledger row. Audited as
/// `run.updated` (and `run.refunded`). 404 for a run that is not the caller's; 409 for an
/// illegal transition (a final status never changes). Counted with `POST /api/runs` against
/// `[admin] public_per_ip_per_minute` (429 beyond).
#[utoipa::path(
    patch,
    path = "/api/runs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "Run id (run_…)", pattern = "^run_[0-7][0-9A-HJKMNP-TV-Z]{25}$")),
    request_body = PatchRun,
    responses(
        (status = 200, body = Run),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope)
    )
)]
async fn patch_run(
    State(state): State<AppState>,
    CurrentUser(principal): CurrentUser,
    Path(id): Path<String>,
    Json(body): Json<PatchRun>,
) -> Result<Json<Run>, ApiError> {
    runs_scope_allows(&principal)?;
    rate_limit::per_ip(&state, Throttle::Runs, principal.meta.ip).await?;
    apply_patch(&state, Changer::Owner(&principal), &id, body)
        .await
        .map(Json)
}

/// Changes any run's status as `PATCH /api/runs/{id}` does for its owner (same transitions,
/// times and refund). Audited as `run.updated` (and `run.refunded`).
#[utoipa::path(
    patch,
    path = "/runs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "Run id (run_…)", pattern = "^run_[0-7][0-9A-HJKMNP-TV-Z]{25}$")),
    request_body = PatchRun,
    responses(
        (status = 200, body = Run),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope)
    )
)]
async fn admin_patch_run(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path(id): Path<String>,
    Json(body): Json<PatchRun>,
) -> Result<Json<Run>, ApiError> {
    apply_patch(&state, Changer::Admin(&admin.0), &id, body)
        .await
        .map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        for (from, to, ok) in [
            ("pending", "running", true),
            ("pending", "succeeded", true),
            ("pending", "failed", true),
            ("pending", "cancelled", true),
            ("pending", "pending", false),
            ("running", "running", false),
            ("running", "succeeded", true),
            ("running", "failed", true),
            ("running", "cancelled", true),
            ("running", "pending", false),
            ("succeeded", "failed", false),
            ("succeeded", "cancelled", false),
            ("failed", "failed", false),
            ("failed", "running", false),
            ("cancelled", "succeeded", false),
        ] {
            assert_eq!(legal_transition(from, to), ok, "{from} -> {to}");
        }
    }

    #[test]
    fn statuses_parse_with_the_old_name() {
        assert_eq!(parse_status("completed").expect("alias"), "succeeded");
        assert_eq!(parse_status("cancelled").expect("ok"), "cancelled");
        assert!(parse_status("done").is_err());
    }
}
