//! `GET/PUT /api/admin/gateway/config` and `GET /api/admin/gateway/config/versions` (SPEC §4).
//!
//! PostgreSQL keeps every version (`gateway_config_versions`); Redis holds the current one
//! (`<prefix>gateway:config`), which the proxies load, re-read periodically and are told about
//! on `<prefix>gateway:config:changed`.
//!
//! Order of a PUT, chosen so that a version is never half-applied: in one transaction, under
//! a lock that serialises PUTs, insert the version row and its audit row; then, still before
//! committing, write Redis (`SET` + `PUBLISH`, one `MULTI`); commit last. When Redis fails
//! the transaction rolls back and the answer is 503: nothing changed anywhere. The remaining
//! window is a commit that fails after Redis was written: the handler then puts the previous
//! document back into Redis (best effort) and answers 503. Should that also fail, proxies run a
//! version PostgreSQL does not list until the next PUT, which always carries a new version
//! number (versions come from a sequence and are never reused), so proxies apply it.

use axum::extract::State;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use watchpost_common::gateway::{GatewayConfigDoc, DEFAULT_CDN_HEADERS};
use watchpost_common::{ClientIpHeader, GatewayConfig, RiskMode};

use super::gateway_risk::{risk_mode_schema, RiskSettings};

use crate::{
    audit,
    auth::PlatformAdmin,
    error::{ApiError, ErrorEnvelope},
    extract::{Json, Query},
    gateway_doc::{self, Published, GATEWAY_LOCK_KEY},
    models::col,
    state::AppState,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_gateway_config, put_gateway_config))
        .routes(routes!(list_gateway_config_versions))
        .merge(super::gateway_preview::routes())
}

/// `change` of the versions a config `PUT` makes.
const CHANGE_CONFIG_UPDATED: &str = "config updated";

/// The gateway config as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GatewayConfigView {
    /// `direct`, `proxy` or `cdn`.
    pub ip_mode: String,
    /// Normalised CIDRs whose forwarding headers are believed.
    pub trusted_cidrs: Vec<String>,
    /// Requests scoring at least this are rejected.
    pub risk_reject_threshold: f64,
    /// Headers consulted in `cdn` mode, in order.
    pub cdn_headers: Vec<String>,
    /// The one forwarding header trusted hops set and the proxies believe.
    #[schema(schema_with = client_ip_header_schema)]
    pub client_ip_header: String,
    /// `cdn` mode: normalised CIDRs (the CDN's own ranges) whose CDN header is believed.
    pub cdn_cidrs: Vec<String>,
    /// The proxies' risk settings; null: each proxy uses its file's `[risk]`.
    pub risk: Option<RiskSettings>,
    /// `enforce`: requests scoring at least the threshold are rejected; `log_only`: they pass
    /// and are logged with `decision` = `flag`.
    #[schema(schema_with = risk_mode_schema)]
    pub risk_mode: String,
    /// 0 until the first PUT.
    pub version: u64,
    /// RFC 3339; null until the first PUT.
    pub updated_at: Option<String>,
    /// The admin who made this version.
    pub updated_by: Option<String>,
}

impl From<GatewayConfigDoc> for GatewayConfigView {
    fn from(d: GatewayConfigDoc) -> Self {
        Self {
            ip_mode: d.ip_mode,
            trusted_cidrs: d.trusted_cidrs,
            risk_reject_threshold: d.risk_reject_threshold,
            cdn_headers: d
                .cdn_headers
                .unwrap_or_else(|| DEFAULT_CDN_HEADERS.iter().map(|h| h.to_string()).collect()),
            client_ip_header: d.client_ip_header,
            cdn_cidrs: d.cdn_cidrs,
            risk: d.risk.map(Into::into),
            risk_mode: d.risk_mode,
            version: d.version,
            updated_at: d.updated_at,
            updated_by: d.updated_by,
        }
    }
}

/// `PUT /api/admin/gateway/config` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfigInput {
    /// `direct`, `proxy` or `cdn`.
    pub ip_mode: String,
    /// CIDRs (or single addresses); every unparseable one is listed in the 400.
    #[serde(default)]
    pub trusted_cidrs: Vec<String>,
    /// In [0, 1].
    pub risk_reject_threshold: f64,
    /// Headers consulted in `cdn` mode; default `cf-connecting-ip`, `true-client-ip`.
    pub cdn_headers: Option<Vec<String>>,
    /// The one forwarding header trusted hops set (like nginx's `real_ip_header`); the others
    /// are never believed. Default `x-forwarded-for`.
    #[schema(schema_with = client_ip_header_schema)]
    pub client_ip_header: Option<String>,
    /// `cdn` mode: the CDN's own ranges (CIDRs or single addresses), apart from
    /// `trusted_cidrs`; a CDN header from any other peer is ignored. Default empty (no CDN
    /// header believed); every unparseable entry is listed in the 400.
    #[serde(default)]
    #[schema(example = json!(["173.245.48.0/20", "2400:cb00::/32"]))]
    pub cdn_cidrs: Vec<String>,
    /// The proxies' risk settings (the `[risk]` section, at runtime); fields left out take
    /// the built-in defaults. Absent or null: each proxy uses its own file's `[risk]`. Every
    /// bad weight, country code and CIDR is listed in the 400.
    pub risk: Option<RiskSettings>,
    /// `enforce` (default) or `log_only` (would-be rejects pass, logged as `flag`).
    #[schema(schema_with = risk_mode_schema)]
    pub risk_mode: Option<String>,
    /// The version this change was based on; a different current version is 409.
    pub version: Option<u64>,
}

impl GatewayConfigInput {
    /// The wire document this input describes, defaults filled in (not yet validated; no
    /// version, no rules).
    pub(super) fn into_doc(self) -> GatewayConfigDoc {
        GatewayConfigDoc {
            ip_mode: self.ip_mode,
            trusted_cidrs: self.trusted_cidrs,
            risk_reject_threshold: self.risk_reject_threshold,
            cdn_headers: self.cdn_headers,
            client_ip_header: self
                .client_ip_header
                .unwrap_or_else(|| ClientIpHeader::default().as_str().to_string()),
            cdn_cidrs: self.cdn_cidrs,
            risk: self.risk.map(Into::into),
            risk_mode: self
                .risk_mode
                .unwrap_or_else(|| RiskMode::default().as_str().to_string()),
            rules: Vec::new(),
            version: 0,
            updated_at: None,
            updated_by: None,
        }
    }
}

/// `client_ip_header` in the OpenAPI document: one of the names the validation accepts.
pub(super) fn client_ip_header_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(ClientIpHeader::ALL.map(ClientIpHeader::as_str)))
        .default(Some(ClientIpHeader::default().as_str().into()))
        .build()
}

/// One version of the history.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GatewayConfigVersion {
    pub version: u64,
    pub config: GatewayConfigView,
    /// RFC 3339.
    pub created_at: String,
    pub created_by: Option<String>,
    /// What this version changed: `config updated` (a `PUT /gateway/config`), or
    /// `rule rul_… created` / `updated` / `deleted`; null for versions stored before rules
    /// existed. `config` is the gateway config of the version (rules are listed by
    /// `GET /gateway/rules`).
    pub change: Option<String>,
}

/// A page of the history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct GatewayConfigVersionPage {
    pub items: Vec<GatewayConfigVersion>,
    /// Pass back as `cursor`; null on the last page.
    pub next_cursor: Option<String>,
}

/// Query of the history list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VersionsQuery {
    /// Page size, default 20, at most 100.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A stored version row.
struct Row {
    version: u64,
    doc: GatewayConfigDoc,
    created_at: DateTime<Utc>,
    created_by: Option<String>,
    change: Option<String>,
}

impl Row {
    fn from_row(row: &tokio_postgres::Row) -> Result<Self, ApiError> {
        let version: i64 = col(row, "version")?;
        let config: serde_json::Value = col(row, "config")?;
        let doc: GatewayConfigDoc = serde_json::from_value(config)
            .map_err(|e| ApiError::internal(format!("stored gateway config: {e}")))?;
        Ok(Self {
            version: u64::try_from(version).unwrap_or_default(),
            doc,
            created_at: col(row, "created_at")?,
            created_by: col(row, "created_by")?,
            change: col(row, "change")?,
        })
    }
}

const ROW_COLUMNS: &str = "version, config, created_at, created_by, change";

async fn latest(client: &impl deadpool_postgres::GenericClient) -> Result<Option<Row>, ApiError> {
    client
        .query_opt(
            &format!(
                "SELECT {ROW_COLUMNS} FROM gateway_config_versions ORDER BY version DESC LIMIT 1"
            ),
            &[],
        )
        .await?
        .map(|r| Row::from_row(&r))
        .transpose()
}

/// The document of the newest version, or the built-in default (version 0).
fn current_doc(row: Option<&Row>) -> GatewayConfigDoc {
    row.map_or_else(|| GatewayConfig::default().to_doc(), |r| r.doc.clone())
}

/// The current gateway config: the newest version, or the default (version 0) before the first
/// PUT.
#[utoipa::path(
    get,
    path = "/gateway/config",
    tag = "gateway",
    responses(
        (status = 200, body = GatewayConfigView),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope)
    )
)]
async fn get_gateway_config(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
) -> Result<Json<GatewayConfigView>, ApiError> {
    let conn = state.db().await?;
    let row = latest(&conn).await?;
    Ok(Json(current_doc(row.as_ref()).into()))
}

/// Replaces the gateway config: a new version, audited as `gateway_config.updated`, written to
/// Redis and announced to the proxies. Invalid input is 400 listing every problem; a stale
/// `version` is 409; Redis down is 503. In every error case nothing changes.
#[utoipa::path(
    put,
    path = "/gateway/config",
    tag = "gateway",
    request_body = GatewayConfigInput,
    responses(
        (status = 200, body = GatewayConfigView),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope)
    )
)]
async fn put_gateway_config(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Json(input): Json<GatewayConfigInput>,
) -> Result<Json<GatewayConfigView>, ApiError> {
    let expected_version = input.version;
    let mut doc = input.into_doc();
    GatewayConfig::from_doc(&doc).map_err(|e| ApiError::bad_request(e.to_string()))?;

    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&GATEWAY_LOCK_KEY])
        .await?;
    let previous = gateway_doc::load(&tx).await?;
    let current_version = previous.as_ref().map_or(0, |p| p.version);
    if let Some(expected) = expected_version {
        if expected != current_version {
            return Err(ApiError::conflict(format!(
                "gateway config is at version {current_version}, not {expected}"
            )));
        }
    }
    let version: i64 = tx
        .query_one("SELECT nextval('gateway_config_version_seq') AS v", &[])
        .await?
        .try_get("v")?;
    let now = Utc::now();
    // Stored with microsecond precision; show exactly what PostgreSQL keeps.
    let created_at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
    doc.version = u64::try_from(version).unwrap_or_default();
    doc.updated_at = Some(rfc3339(created_at));
    doc.updated_by = Some(admin.id().to_string());
    // Validated above; re-validating gives the normalised form (CIDR host bits cleared).
    let config = GatewayConfig::from_doc(&doc).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let doc = config.to_doc();
    let stored = serde_json::to_value(&doc).map_err(ApiError::internal)?;
    tx.execute(
        "INSERT INTO gateway_config_versions (version, config, created_at, created_by, change) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &version,
            &stored,
            &created_at,
            &doc.updated_by,
            &CHANGE_CONFIG_UPDATED,
        ],
    )
    .await?;
    let before = GatewayConfigView::from(
        previous
            .as_ref()
            .map_or_else(|| GatewayConfig::default().to_doc(), |p| p.stored.clone()),
    );
    let after = GatewayConfigView::from(doc.clone());
    // The proxies get the new config with the live rules.
    let next = Published::compose(doc.clone(), gateway_doc::live_rules(&tx).await?)?;
    audit::record(
        &tx,
        &admin.audit(),
        "gateway_config.updated",
        "gateway_config",
        &doc.version.to_string(),
        audit::diff(&audit::snapshot(&before)?, &audit::snapshot(&after)?),
    )
    .await?;

    // Redis before the commit: if it fails, the transaction rolls back.
    gateway_doc::publish_and_commit(&state, tx, previous.as_ref(), &next).await?;
    tracing::info!(
        gateway.version = doc.version,
        "gateway config: new version applied"
    );
    Ok(Json(after))
}

/// The history of the gateway config, newest first.
#[utoipa::path(
    get,
    path = "/gateway/config/versions",
    tag = "gateway",
    params(VersionsQuery),
    responses(
        (status = 200, body = GatewayConfigVersionPage),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope)
    )
)]
async fn list_gateway_config_versions(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Query(q): Query<VersionsQuery>,
) -> Result<Json<GatewayConfigVersionPage>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 100"));
    }
    let before: Option<i64> = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            c.parse::<i64>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| ApiError::bad_request("cursor is not a valid cursor"))?,
        ),
    };
    let conn = state.db().await?;
    let rows = conn
        .query(
            &format!(
                "SELECT {ROW_COLUMNS} FROM gateway_config_versions \
                 WHERE ($1::bigint IS NULL OR version < $1) ORDER BY version DESC LIMIT $2"
            ),
            &[&before, &(limit + 1)],
        )
        .await?;
    let mut items = rows
        .iter()
        .map(|r| {
            Row::from_row(r).map(|r| GatewayConfigVersion {
                version: r.version,
                config: r.doc.into(),
                created_at: rfc3339(r.created_at),
                created_by: r.created_by,
                change: r.change,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let limit = usize::try_from(limit).unwrap_or(20);
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|v| v.version.to_string())
    } else {
        None
    };
    Ok(Json(GatewayConfigVersionPage { items, next_cursor }))
}
