//! `/api/admin/runs…`: recorded runs and what they cost. Runs are created by users through
//! `POST /api/runs` (see `routes::redeem`).

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::PlatformAdmin,
    error::{ApiError, ErrorEnvelope},
    extract::{Json, Path, Query},
    ids::IdKind,
    ledger::CreditTransaction,
    models::col,
    pagination::{Cursor, Page, PageRequest},
    state::AppState,
};

/// Run statuses.
pub const RUN_STATUSES: [&str; 4] = ["pending", "running", "completed", "failed"];

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_runs))
        .routes(routes!(get_run))
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
    /// `pending`, `running`, `completed` or `failed`.
    pub status: String,
    /// Credits debited for it.
    pub credits_cost: i64,
    /// Its `execution` ledger row; null for a run that cost nothing.
    pub transaction_id: Option<String>,
    /// The caller's input, as given.
    pub input: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
}

impl Run {
    /// Columns for `SELECT {Run::COLUMNS} FROM runs`.
    pub const COLUMNS: &'static str = "id, organization_id, user_id, name, status, credits_cost, \
         transaction_id, input, created_at";

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
            input: col(row, "input")?,
            created_at: col(row, "created_at")?,
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
    /// `pending`, `running`, `completed` or `failed`.
    #[param(pattern = "^(pending|running|completed|failed)$")]
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
    if let Some(s) = q.status.as_deref() {
        if !RUN_STATUSES.contains(&s) {
            return Err(ApiError::bad_request(format!(
                "status must be one of {}",
                RUN_STATUSES.join(", ")
            )));
        }
    }
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
                &q.status,
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
