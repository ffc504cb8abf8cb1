//! The gateway document the proxies read from Redis (`<prefix>gateway:config`): the newest
//! stored config version plus the live rules (enabled, not expired).
//!
//! PostgreSQL keeps the config versions without their rules (`gateway_config_versions`, which
//! would otherwise grow with every rule change) and the rules in `gateway_rules`. Every writer
//! of the Redis document — `PUT /gateway/config`, the rule endpoints, the restore after a
//! failed write and the start-up / periodic re-sync ([`crate::gateway_sync`]) — composes it
//! here, so that none of them can publish a config without its rules.
//!
//! Expired rules are left out when the document is composed; a rule that expires later is
//! published with its `expires_at_ms` and the proxies stop applying it on time without a write.

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use watchpost_common::gateway::GatewayConfigDoc;
use watchpost_common::rules::{RuleDoc, RuleMatch, RuleRate};
use watchpost_common::GatewayConfig;

use crate::{error::ApiError, models::col, state::AppState};

/// Advisory-lock key serialising every gateway write, config and rules ("gwconfig").
pub const GATEWAY_LOCK_KEY: i64 = 0x6777_636f_6e66_6967;

/// The document published for one version.
#[derive(Debug, Clone)]
pub struct Published {
    /// The version (of the newest `gateway_config_versions` row).
    pub version: u64,
    /// The stored config document, without rules.
    pub stored: GatewayConfigDoc,
    /// The validated config with its live rules: what a proxy applies.
    pub config: GatewayConfig,
    /// `config` as the JSON written to Redis.
    pub json: String,
}

impl Published {
    /// The stored config document plus `rules`, validated.
    pub fn compose(stored: GatewayConfigDoc, rules: Vec<RuleDoc>) -> Result<Self, ApiError> {
        let mut doc = stored.clone();
        doc.rules = rules;
        let config = GatewayConfig::from_doc(&doc)
            .map_err(|e| ApiError::internal(format!("gateway document: {e}")))?;
        Ok(Self {
            version: stored.version,
            json: config.to_json(),
            stored,
            config,
        })
    }

    /// How many rules the document carries.
    pub fn rule_count(&self) -> usize {
        self.config.rules.len()
    }
}

/// Columns of `gateway_rules` that make a [`RuleDoc`].
pub const RULE_DOC_COLUMNS: &str = "id, action, match, rate, priority, enabled, expires_at, reason";

/// A stored rule row (selected with at least [`RULE_DOC_COLUMNS`]) as its wire form.
pub fn rule_doc_from_row(row: &tokio_postgres::Row) -> Result<RuleDoc, ApiError> {
    let match_: serde_json::Value = col(row, "match")?;
    let match_: RuleMatch = serde_json::from_value(match_)
        .map_err(|e| ApiError::internal(format!("stored rule match: {e}")))?;
    let rate: Option<serde_json::Value> = col(row, "rate")?;
    let rate: Option<RuleRate> = rate
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| ApiError::internal(format!("stored rule rate: {e}")))?;
    let expires_at: Option<DateTime<Utc>> = col(row, "expires_at")?;
    Ok(RuleDoc {
        id: col(row, "id")?,
        action: col(row, "action")?,
        match_,
        rate,
        priority: col(row, "priority")?,
        enabled: col(row, "enabled")?,
        expires_at_ms: expires_at.map(|t| u64::try_from(t.timestamp_millis()).unwrap_or(0)),
        reason: col(row, "reason")?,
    })
}

/// The rules to publish: enabled and not expired (at the transaction's time), in the order
/// the proxies try them (priority, then id). A stored rule that no longer validates (never
/// expected: every write validates) is logged and left out rather than blocking every write.
pub async fn live_rules(client: &impl GenericClient) -> Result<Vec<RuleDoc>, ApiError> {
    let rows = client
        .query(
            &format!(
                "SELECT {RULE_DOC_COLUMNS} FROM gateway_rules \
                 WHERE enabled AND (expires_at IS NULL OR expires_at > now()) \
                 ORDER BY priority, id"
            ),
            &[],
        )
        .await?;
    let mut rules = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut rule = rule_doc_from_row(row)?;
        let problems = rule.normalize();
        if problems.is_empty() {
            rules.push(rule);
        } else {
            let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
            tracing::warn!(rule.id = %rule.id, problems = %problems.join("; "), "gateway rules: stored rule no longer validates; not published");
        }
    }
    Ok(rules)
}

/// The newest stored config document (without rules), or None before the first `PUT`.
pub async fn newest_stored(
    client: &impl GenericClient,
) -> Result<Option<GatewayConfigDoc>, ApiError> {
    let Some(row) = client
        .query_opt(
            "SELECT version, config FROM gateway_config_versions ORDER BY version DESC LIMIT 1",
            &[],
        )
        .await?
    else {
        return Ok(None);
    };
    let version: i64 = col(&row, "version")?;
    let config: serde_json::Value = col(&row, "config")?;
    let mut doc: GatewayConfigDoc = serde_json::from_value(config)
        .map_err(|e| ApiError::internal(format!("stored gateway config: {e}")))?;
    doc.version = u64::try_from(version).unwrap_or_default();
    // Versions never store rules; should one ever hold some, the table is the record.
    doc.rules.clear();
    Ok(Some(doc))
}

/// The document currently published (newest version + live rules), or None before the first
/// `PUT`. Run it in one snapshot (a transaction) so the version and the rules agree.
pub async fn load(client: &impl GenericClient) -> Result<Option<Published>, ApiError> {
    let Some(stored) = newest_stored(client).await? else {
        return Ok(None);
    };
    let rules = live_rules(client).await?;
    Published::compose(stored, rules).map(Some)
}

/// Write `next` to Redis (`SET` + `PUBLISH`, one `MULTI`), then commit `tx`. When either
/// fails, the transaction rolls back and `previous` is put back into Redis (best effort), so
/// nothing changed anywhere; the error is the answer (503 for Redis).
pub async fn publish_and_commit(
    state: &AppState,
    tx: Transaction<'_>,
    previous: Option<&Published>,
    next: &Published,
) -> Result<(), ApiError> {
    let keys = state.keys();
    let mut con = state.redis();
    let mut pipe = redis::pipe();
    pipe.atomic()
        .set(keys.gateway_config(), &next.json)
        .ignore();
    let written = write_and_announce(state, &mut con, pipe, next.version).await;
    if let Err(e) = written {
        drop(tx);
        restore(state, previous).await;
        return Err(e);
    }
    if let Err(e) = tx.commit().await {
        restore(state, previous).await;
        return Err(e.into());
    }
    record_metrics(state, next);
    Ok(())
}

/// Set the admin metrics of the published document.
pub fn record_metrics(state: &AppState, published: &Published) {
    let metrics = state.metrics();
    metrics
        .gateway_config_version
        .set(i64::try_from(published.version).unwrap_or(i64::MAX));
    metrics
        .gateway_rules
        .set(i64::try_from(published.rule_count()).unwrap_or(i64::MAX));
}

/// Best effort: put the previous document back into Redis (or remove the key when there was
/// none) after a write failed half-way, and announce it.
async fn restore(state: &AppState, previous: Option<&Published>) {
    let keys = state.keys();
    let mut pipe = redis::pipe();
    pipe.atomic();
    match previous {
        Some(p) => pipe.set(keys.gateway_config(), &p.json).ignore(),
        None => pipe.del(keys.gateway_config()).ignore(),
    };
    let version = previous.map_or(0, |p| p.version);
    let mut con = state.redis();
    if let Err(e) = write_and_announce(state, &mut con, pipe, version).await {
        tracing::warn!(error = %e, "gateway config: could not restore the previous version in Redis");
    }
}

/// Runs `write` (a `MULTI` on the config key) and announces `version` on the change channel. On
/// one node the announcement joins the `MULTI`; on a cluster the channel hashes to another slot
/// than the key, so it is published right after the write (classic `PUBLISH` reaches every
/// node's subscribers; a proxy that misses it still finds the new version by polling).
async fn write_and_announce(
    state: &AppState,
    con: &mut watchpost_common::RedisConn,
    mut write: redis::Pipeline,
    version: u64,
) -> Result<(), ApiError> {
    let channel = state.keys().gateway_config_changed();
    if !con.is_cluster() {
        write.publish(channel, version).ignore();
        return state.redis_timeout(write.query_async::<()>(con)).await;
    }
    state.redis_timeout(write.query_async::<()>(con)).await?;
    state
        .redis_timeout(
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(version)
                .query_async::<()>(con),
        )
        .await
}
