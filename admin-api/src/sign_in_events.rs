//! Retention of sign-in events (`[admin] sign_in_events_retention_days`).
//!
//! Every sign-in attempt that reaches the password check is a row in `sign_in_events` (the
//! stats count them). A background task started with the server deletes rows older than the
//! retention every hour, in batches of [`BATCH_ROWS`] rows per statement, so that a large
//! backlog never becomes one long transaction holding locks and bloating the WAL.

use std::time::Duration;

use deadpool_postgres::GenericClient;

use crate::{error::ApiError, state::AppState};

/// Rows deleted per statement.
pub const BATCH_ROWS: i64 = 10_000;
/// How often the task runs (first at start).
pub const INTERVAL: Duration = Duration::from_secs(3600);

/// Deletes events older than `retention_days`, `batch` rows per statement, until none is
/// left; returns how many went.
pub async fn purge(
    client: &impl GenericClient,
    retention_days: u32,
    batch: i64,
) -> Result<u64, ApiError> {
    let days = i32::try_from(retention_days).unwrap_or(i32::MAX);
    let mut total = 0u64;
    loop {
        let deleted = client
            .execute(
                "DELETE FROM sign_in_events WHERE id IN ( \
                   SELECT id FROM sign_in_events \
                   WHERE created_at < now() - make_interval(days => $1) LIMIT $2)",
                &[&days, &batch],
            )
            .await?;
        total += deleted;
        if deleted < u64::try_from(batch).unwrap_or(u64::MAX) {
            return Ok(total);
        }
    }
}

/// The background task: [`purge`] every [`INTERVAL`]; failures are logged and retried at the
/// next tick.
pub async fn run(state: AppState) {
    let days = state.config().admin.sign_in_events_retention_days;
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = match state.db().await {
            Ok(conn) => purge(&conn, days, BATCH_ROWS).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(0) => {}
            Ok(deleted) => {
                tracing::info!(deleted, retention_days = days, "old sign-in events deleted")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot delete old sign-in events; retrying in an hour")
            }
        }
    }
}
