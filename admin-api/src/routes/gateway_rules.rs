//! `POST/GET /api/admin/gateway/rules` and `GET/PATCH/DELETE /api/admin/gateway/rules/{id}`:
//! the fleet-wide gateway rules (block / allow / rate_limit / log_only).
//!
//! Rules are versioned with the gateway config: a rule change takes the next gateway config
//! version (the same sequence `PUT /gateway/config` uses, under the same lock), records a
//! `gateway_config_versions` row holding the config unchanged with `change` saying what
//! happened, audits `gateway_rule.created|updated|deleted`, and publishes the document (the
//! config plus every live rule, see [`crate::gateway_doc`]) to Redis before it commits, like
//! a config `PUT`. A failure anywhere leaves nothing changed.
//!
//! `hits_last_hour` and `last_hit_at` are read from the counters the proxies keep in Redis
//! (`rule:hits:<id>:<unix minute>`, `rule:last_hit:<id>`; on a Redis Cluster the id is their hash
//! tag, `rule:hits:{<id>}:<unix minute>`).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use watchpost_common::gateway::GatewayConfigDoc;
use watchpost_common::rules::{
    is_rule_id, RuleAction, RuleDoc, RuleMatch, RuleRate, MAX_RULES, RULE_ID_PREFIX,
};

use crate::{
    audit,
    auth::PlatformAdmin,
    error::{ApiError, ErrorEnvelope},
    extract::{Json, Path, Query},
    gateway_doc::{self, rule_doc_from_row, Published, GATEWAY_LOCK_KEY},
    models::col,
    pagination::{Cursor, Page, PageRequest},
    state::AppState,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_rule, list_rules))
        .routes(routes!(get_rule, patch_rule, delete_rule))
}

/// Longest `expires_in`: one year.
pub const MAX_EXPIRES_IN_SECS: u64 = 366 * 86_400;

/// What a request must look like for the rule to apply. Every list that is given must hold
/// (one of its values matches); empty or absent lists match anything; at least one list must
/// be non-empty. Each list holds at most 10,000 values; every bad value is listed in the 400.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleMatchBody {
    /// Client-IP ranges: IPv4 or IPv6 CIDRs, or single addresses (a /32 or /128). Stored
    /// normalised (host bits cleared, IPv4-mapped IPv6 as IPv4).
    #[serde(default)]
    #[schema(max_items = 10000, example = json!(["203.0.113.0/24", "2001:db8::/32"]))]
    pub cidrs: Vec<String>,
    /// ISO 3166-1 alpha-2 country codes of the client IP (any case; stored upper-case). `XK`
    /// (Kosovo) is accepted; unassigned codes are refused.
    #[serde(default)]
    #[schema(max_items = 10000, example = json!(["RU", "KP"]))]
    pub countries: Vec<String>,
    /// Path prefixes, matched case-sensitively against the path without the query. Each
    /// starts with `/`, is at most 1024 bytes and holds no control characters.
    #[serde(default)]
    #[schema(max_items = 10000, example = json!(["/wp-login.php", "/api/search"]))]
    pub path_prefixes: Vec<String>,
    /// Hosts (case-insensitive, the port ignored): a DNS name, or `*.example.com` for any
    /// subdomain of `example.com`. Stored lower-case.
    #[serde(default)]
    #[schema(max_items = 10000, example = json!(["shop.example.com", "*.example.org"]))]
    pub hosts: Vec<String>,
    /// HTTP methods (tokens of at most 32 characters; stored upper-case).
    #[serde(default)]
    #[schema(max_items = 10000, example = json!(["POST"]))]
    pub methods: Vec<String>,
    /// UA classes of the risk engine: `browser`, `bot`, `cli`, `library`, `empty`,
    /// `unknown`.
    #[serde(default)]
    #[schema(max_items = 10000, example = json!(["cli", "library"]))]
    pub ua_types: Vec<String>,
}

impl From<RuleMatchBody> for RuleMatch {
    fn from(b: RuleMatchBody) -> Self {
        Self {
            cidrs: b.cidrs,
            countries: b.countries,
            path_prefixes: b.path_prefixes,
            hosts: b.hosts,
            methods: b.methods,
            ua_types: b.ua_types,
        }
    }
}

impl From<RuleMatch> for RuleMatchBody {
    fn from(m: RuleMatch) -> Self {
        Self {
            cidrs: m.cidrs,
            countries: m.countries,
            path_prefixes: m.path_prefixes,
            hosts: m.hosts,
            methods: m.methods,
            ua_types: m.ua_types,
        }
    }
}

/// A `rate_limit` rule's rate: at most `requests` per `window_secs` per client IP; past it
/// the proxies answer 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleRateBody {
    /// At least 1.
    #[schema(minimum = 1)]
    pub requests: u64,
    /// 1 to 86,400 (one day).
    #[schema(minimum = 1, maximum = 86400)]
    pub window_secs: u64,
}

impl From<RuleRateBody> for RuleRate {
    fn from(r: RuleRateBody) -> Self {
        Self {
            requests: r.requests,
            window_secs: r.window_secs,
        }
    }
}

impl From<RuleRate> for RuleRateBody {
    fn from(r: RuleRate) -> Self {
        Self {
            requests: r.requests,
            window_secs: r.window_secs,
        }
    }
}

/// `action` in the OpenAPI document: one of the actions the validation accepts.
fn action_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(RuleAction::ALL.map(RuleAction::as_str)))
        .description(Some(
            "`block`: 403 (error envelope, code `BLOCKED`); `allow`: passes without risk \
             scoring; `rate_limit`: past `rate` per client IP, 429 with `Retry-After`; \
             `log_only`: nothing enforced, matching entries are tagged with the rule id.",
        ))
        .build()
}

/// `POST /api/admin/gateway/rules` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRuleInput {
    #[schema(schema_with = action_schema)]
    pub action: String,
    /// What the rule applies to (all given parts must hold).
    #[serde(rename = "match")]
    pub match_: RuleMatchBody,
    /// Required for `rate_limit`; refused with the other actions.
    pub rate: Option<RuleRateBody>,
    /// Rules are tried lowest first (ties by id); the first deciding rule wins. Default 0.
    pub priority: Option<i32>,
    /// Seconds from now after which the rule stops applying (1 to 31,622,400, one year).
    /// Not together with `expires_at`. Absent (and no `expires_at`): never expires.
    #[schema(minimum = 1, maximum = 31622400)]
    pub expires_in: Option<u64>,
    /// RFC 3339 time, in the future, after which the rule stops applying. Not together with
    /// `expires_in`.
    #[schema(format = DateTime, example = "2026-12-01T00:00:00Z")]
    pub expires_at: Option<String>,
    /// Why the rule exists (shown to operators only): 1 to 500 bytes, no control characters.
    #[schema(min_length = 1, max_length = 500)]
    pub reason: String,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// `PATCH /api/admin/gateway/rules/{id}` body: the fields to change; the rule is then
/// validated as a whole, as on creation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchRuleInput {
    #[schema(schema_with = action_schema)]
    pub action: Option<String>,
    /// Replaces the whole `match`.
    #[serde(rename = "match")]
    pub match_: Option<RuleMatchBody>,
    /// Replaces the rate; `null` removes it (needed when `action` leaves `rate_limit`).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<RuleRateBody>)]
    pub rate: Option<Option<RuleRateBody>>,
    pub priority: Option<i32>,
    /// A disabled rule is kept but not applied.
    pub enabled: Option<bool>,
    /// RFC 3339 time in the future; `null` clears the expiry. Not together with `expires_in`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Option<String>>,
    /// Seconds from now (1 to 31,622,400). Not together with `expires_at`.
    #[schema(minimum = 1, maximum = 31622400)]
    pub expires_in: Option<u64>,
    /// 1 to 500 bytes, no control characters.
    #[schema(min_length = 1, max_length = 500)]
    pub reason: Option<String>,
}

/// A rule as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RuleView {
    /// `rul_` + a ULID.
    #[schema(pattern = "^rul_[0-9A-HJKMNP-TV-Z]{26}$")]
    pub id: String,
    #[schema(schema_with = action_schema)]
    pub action: String,
    /// Normalised.
    #[serde(rename = "match")]
    pub match_: RuleMatchBody,
    /// Set for `rate_limit` only.
    pub rate: Option<RuleRateBody>,
    pub priority: i32,
    pub enabled: bool,
    /// RFC 3339; null: never expires.
    pub expires_at: Option<String>,
    /// Whether `expires_at` has passed (the rule no longer applies).
    pub expired: bool,
    pub reason: String,
    /// RFC 3339.
    pub created_at: String,
    pub created_by: Option<String>,
    /// RFC 3339.
    pub updated_at: String,
    pub updated_by: Option<String>,
    /// The gateway config version that last changed the rule.
    pub version: u64,
    /// Requests the rule decided or tagged in the last 60 minutes (whole minutes, as counted
    /// by the proxies); null when Redis could not be read.
    pub hits_last_hour: Option<u64>,
    /// RFC 3339 of the newest hit; null when none is recorded (or Redis could not be read).
    pub last_hit_at: Option<String>,
}

/// Query of the rule list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RulesQuery {
    /// Page size, default 20, at most 100.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only rules with this action.
    pub action: Option<ActionFilter>,
    /// Only enabled (`true`) or disabled (`false`) rules.
    pub enabled: Option<bool>,
}

/// The `action` filter of the rule list.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionFilter {
    Block,
    Allow,
    RateLimit,
    LogOnly,
}

impl ActionFilter {
    fn action(self) -> RuleAction {
        match self {
            Self::Block => RuleAction::Block,
            Self::Allow => RuleAction::Allow,
            Self::RateLimit => RuleAction::RateLimit,
            Self::LogOnly => RuleAction::LogOnly,
        }
    }
}

/// A page of rules, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RulePage {
    pub items: Vec<RuleView>,
    /// Pass back as `cursor`; null on the last page.
    pub next_cursor: Option<String>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Now, at the microsecond precision PostgreSQL keeps.
fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// A stored rule.
#[derive(Debug, Clone)]
struct StoredRule {
    doc: RuleDoc,
    expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    created_by: Option<String>,
    updated_at: DateTime<Utc>,
    updated_by: Option<String>,
    version: u64,
}

const RULE_COLUMNS: &str = "id, action, match, rate, priority, enabled, expires_at, reason, \
                            created_at, created_by, updated_at, updated_by, version";

impl StoredRule {
    fn from_row(row: &tokio_postgres::Row) -> Result<Self, ApiError> {
        let version: i64 = col(row, "version")?;
        Ok(Self {
            doc: rule_doc_from_row(row)?,
            expires_at: col(row, "expires_at")?,
            created_at: col(row, "created_at")?,
            created_by: col(row, "created_by")?,
            updated_at: col(row, "updated_at")?,
            updated_by: col(row, "updated_by")?,
            version: u64::try_from(version).unwrap_or_default(),
        })
    }

    fn view(&self, hits: Hits) -> RuleView {
        RuleView {
            id: self.doc.id.clone(),
            action: self.doc.action.clone(),
            match_: self.doc.match_.clone().into(),
            rate: self.doc.rate.map(Into::into),
            priority: self.doc.priority,
            enabled: self.doc.enabled,
            expires_at: self.expires_at.map(rfc3339),
            expired: self.expires_at.is_some_and(|t| t <= Utc::now()),
            reason: self.doc.reason.clone(),
            created_at: rfc3339(self.created_at),
            created_by: self.created_by.clone(),
            updated_at: rfc3339(self.updated_at),
            updated_by: self.updated_by.clone(),
            version: self.version,
            hits_last_hour: hits.last_hour,
            last_hit_at: hits.last_at,
        }
    }

    /// What the audit log records of the rule: its stored fields (no counters).
    fn audit_snapshot(&self) -> Result<serde_json::Value, ApiError> {
        let mut v = audit::snapshot(&self.view(Hits::default()))?;
        if let Some(o) = v.as_object_mut() {
            for k in ["expired", "hits_last_hour", "last_hit_at"] {
                o.remove(k);
            }
        }
        Ok(v)
    }
}

/// A rule's counters.
#[derive(Debug, Clone, Default)]
struct Hits {
    last_hour: Option<u64>,
    last_at: Option<String>,
}

/// The counters of `ids` in one pipelined round trip (per rule: one `MGET` of the last 60
/// minute keys, one of the last-hit key). Redis failing is logged and shows as null counters:
/// the rules themselves come from PostgreSQL and stay readable.
async fn hits(state: &AppState, ids: &[&str]) -> Vec<Hits> {
    if ids.is_empty() {
        return Vec::new();
    }
    let keys = state.keys();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let minute = now_ms / 60_000;
    let add = |pipe: &mut redis::Pipeline, id: &str| {
        let minute_keys: Vec<String> = (0..60)
            .map(|back| keys.rule_hits_in_minute(id, minute.saturating_sub(back)))
            .collect();
        pipe.cmd("MGET").arg(minute_keys);
        pipe.cmd("MGET").arg(keys.rule_last_hit(id));
    };
    let con = state.redis();
    let read = if con.is_cluster() {
        // A pipeline may touch one slot only; each rule's keys share one (its id is their hash
        // tag): one pipeline per rule, all at once.
        let per_rule = ids.iter().map(|id| {
            let mut pipe = redis::pipe();
            add(&mut pipe, id);
            let mut con = con.clone();
            async move {
                state
                    .redis_timeout(pipe.query_async::<Vec<Vec<Option<String>>>>(&mut con))
                    .await
            }
        });
        futures::future::try_join_all(per_rule)
            .await
            .map(|r| r.into_iter().flatten().collect::<Vec<_>>())
    } else {
        let mut pipe = redis::pipe();
        for id in ids {
            add(&mut pipe, id);
        }
        let mut con = con;
        state.redis_timeout(pipe.query_async(&mut con)).await
    };
    let replies: Vec<Vec<Option<String>>> = match read {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "gateway rules: could not read hit counters");
            return vec![Hits::default(); ids.len()];
        }
    };
    let number = |v: &Option<String>| v.as_deref().and_then(|s| s.trim().parse::<u64>().ok());
    replies
        .chunks(2)
        .map(|pair| {
            let last_hour = pair.first().map(|vals| {
                vals.iter()
                    .filter_map(number)
                    .fold(0u64, u64::saturating_add)
            });
            let last_at = pair
                .get(1)
                .and_then(|v| v.first())
                .and_then(number)
                .and_then(|ms| i64::try_from(ms).ok())
                .and_then(DateTime::from_timestamp_millis)
                .map(rfc3339);
            Hits { last_hour, last_at }
        })
        .collect()
}

/// The problems of an expiry given as `expires_in` / `expires_at`; the new expiry (`Some(None)`
/// clears it) when there are none to report. `None`: neither was given.
fn expiry(
    expires_in: Option<u64>,
    expires_at: Option<Option<&str>>,
    now: DateTime<Utc>,
    problems: &mut Vec<String>,
) -> Option<Option<DateTime<Utc>>> {
    match (expires_in, expires_at) {
        (Some(_), Some(_)) => {
            problems.push("give expires_in or expires_at, not both".into());
            None
        }
        (Some(secs), None) => {
            if !(1..=MAX_EXPIRES_IN_SECS).contains(&secs) {
                problems.push(format!(
                    "expires_in must be between 1 and {MAX_EXPIRES_IN_SECS} seconds"
                ));
                return None;
            }
            let secs = i64::try_from(secs).unwrap_or(i64::MAX);
            Some(Some(now + chrono::Duration::seconds(secs)))
        }
        (None, Some(None)) => Some(None),
        (None, Some(Some(text))) => match DateTime::parse_from_rfc3339(text.trim()) {
            Err(_) => {
                problems.push(format!("expires_at {text:?} is not an RFC 3339 time"));
                None
            }
            Ok(t) => {
                let t = t.with_timezone(&Utc);
                if t <= now {
                    problems.push(format!("expires_at {text} is not in the future"));
                    None
                } else if t.timestamp_millis() > 253_402_300_799_000 {
                    problems.push(format!("expires_at {text} is after the year 9999"));
                    None
                } else {
                    // PostgreSQL keeps microseconds.
                    Some(Some(
                        DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t),
                    ))
                }
            }
        },
        (None, None) => None,
    }
}

fn reason_problems(reason: &str, problems: &mut Vec<String>) {
    if reason.trim().is_empty() {
        problems.push("reason must not be empty".into());
    }
}

/// Validates a rule as a whole: every problem (those of `problems` first), or the normalised
/// rule.
fn validate(rule: &mut RuleDoc, mut problems: Vec<String>) -> Result<(), ApiError> {
    reason_problems(&rule.reason, &mut problems);
    problems.extend(rule.normalize().iter().map(ToString::to_string));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid rule: {}",
            problems.join("; ")
        )))
    }
}

/// A rule id from the path: malformed is 400.
fn rule_id(id: &str) -> Result<(), ApiError> {
    if is_rule_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{id:?} is not a rule id ({RULE_ID_PREFIX} followed by 26 upper-case Crockford base-32 characters)"
        )))
    }
}

fn not_found() -> ApiError {
    ApiError::not_found("rule not found")
}

fn ms(t: Option<DateTime<Utc>>) -> Option<u64> {
    t.map(|t| u64::try_from(t.timestamp_millis()).unwrap_or(0))
}

/// The new version of a rule change and its time.
struct VersionStep {
    version: i64,
    at: DateTime<Utc>,
}

/// Take the lock serialising gateway writes (config and rules) until the transaction ends.
async fn lock(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), ApiError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&GATEWAY_LOCK_KEY])
        .await?;
    Ok(())
}

/// Under the lock: read what is published (a rule change needs a stored config) and take the
/// next version.
async fn begin(
    tx: &deadpool_postgres::Transaction<'_>,
) -> Result<(Published, VersionStep), ApiError> {
    let previous = gateway_doc::load(tx).await?.ok_or_else(|| {
        ApiError::conflict(
            "no gateway config is stored yet: PUT /api/admin/gateway/config first \
             (rules are published inside it, and until then each proxy runs its file's [gateway])",
        )
    })?;
    let version: i64 = tx
        .query_one("SELECT nextval('gateway_config_version_seq') AS v", &[])
        .await?
        .try_get("v")?;
    Ok((
        previous,
        VersionStep {
            version,
            at: now_micros(),
        },
    ))
}

/// Record the version row (the config as it was, at the new version) and compose the
/// document to publish (after the rule's own statement ran).
async fn finish_version(
    tx: &deadpool_postgres::Transaction<'_>,
    previous: &Published,
    step: &VersionStep,
    admin: &PlatformAdmin,
    change: &str,
) -> Result<Published, ApiError> {
    let mut stored: GatewayConfigDoc = previous.stored.clone();
    stored.version = u64::try_from(step.version).unwrap_or_default();
    stored.updated_at = Some(rfc3339(step.at));
    stored.updated_by = Some(admin.id().to_string());
    stored.rules.clear();
    let json = serde_json::to_value(&stored).map_err(ApiError::internal)?;
    tx.execute(
        "INSERT INTO gateway_config_versions (version, config, created_at, created_by, change) \
         VALUES ($1, $2, $3, $4, $5)",
        &[&step.version, &json, &step.at, &stored.updated_by, &change],
    )
    .await?;
    let rules = gateway_doc::live_rules(tx).await?;
    if rules.len() > MAX_RULES {
        return Err(ApiError::conflict(format!(
            "at most {MAX_RULES} rules may apply at once ({} would); disable, expire or delete some first",
            rules.len()
        )));
    }
    Published::compose(stored, rules)
}

async fn load_rule(
    client: &impl deadpool_postgres::GenericClient,
    id: &str,
    for_update: bool,
) -> Result<Option<StoredRule>, ApiError> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    client
        .query_opt(
            &format!("SELECT {RULE_COLUMNS} FROM gateway_rules WHERE id = $1{lock}"),
            &[&id],
        )
        .await?
        .map(|r| StoredRule::from_row(&r))
        .transpose()
}

async fn store_rule(
    tx: &deadpool_postgres::Transaction<'_>,
    rule: &StoredRule,
    insert: bool,
) -> Result<(), ApiError> {
    let match_ = serde_json::to_value(&rule.doc.match_).map_err(ApiError::internal)?;
    let rate = rule
        .doc
        .rate
        .map(|r| serde_json::to_value(r).map_err(ApiError::internal))
        .transpose()?;
    let version = i64::try_from(rule.version).unwrap_or(i64::MAX);
    if insert {
        tx.execute(
            "INSERT INTO gateway_rules (id, action, match, rate, priority, enabled, expires_at, \
             reason, created_at, created_by, updated_at, updated_by, version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            &[
                &rule.doc.id,
                &rule.doc.action,
                &match_,
                &rate,
                &rule.doc.priority,
                &rule.doc.enabled,
                &rule.expires_at,
                &rule.doc.reason,
                &rule.created_at,
                &rule.created_by,
                &rule.updated_at,
                &rule.updated_by,
                &version,
            ],
        )
        .await?;
    } else {
        tx.execute(
            "UPDATE gateway_rules SET action = $2, match = $3, rate = $4, priority = $5, \
             enabled = $6, expires_at = $7, reason = $8, updated_at = $9, updated_by = $10, \
             version = $11 WHERE id = $1",
            &[
                &rule.doc.id,
                &rule.doc.action,
                &match_,
                &rate,
                &rule.doc.priority,
                &rule.doc.enabled,
                &rule.expires_at,
                &rule.doc.reason,
                &rule.updated_at,
                &rule.updated_by,
                &version,
            ],
        )
        .await?;
    }
    Ok(())
}

/// Creates a rule: a new gateway config version, audited as `gateway_rule.created`, published
/// to Redis and announced to the proxies. Invalid input is 400 listing every problem (each bad
/// CIDR, country code, path prefix, host, method and UA type; a missing or superfluous rate;
/// both or a bad expiry; an empty reason). 409 when no gateway config is stored yet (`PUT
/// /gateway/config` first) or when more than 10,000 rules would apply at once. Redis down is
/// 503. In every error case nothing changes.
#[utoipa::path(
    post,
    path = "/gateway/rules",
    tag = "gateway",
    request_body = CreateRuleInput,
    responses(
        (status = 201, body = RuleView),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 409, description = "No gateway config stored yet, or more than 10,000 live rules", body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope)
    )
)]
async fn create_rule(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Json(input): Json<CreateRuleInput>,
) -> Result<(StatusCode, Json<RuleView>), ApiError> {
    let now = now_micros();
    let mut problems = Vec::new();
    let expires_at = expiry(
        input.expires_in,
        input.expires_at.as_deref().map(Some),
        now,
        &mut problems,
    )
    .flatten();
    let mut doc = RuleDoc {
        id: format!("{RULE_ID_PREFIX}{}", ulid::Ulid::new()),
        action: input.action,
        match_: input.match_.into(),
        rate: input.rate.map(Into::into),
        priority: input.priority.unwrap_or(0),
        enabled: true,
        expires_at_ms: ms(expires_at),
        reason: input.reason,
    };
    validate(&mut doc, problems)?;

    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    lock(&tx).await?;
    let (previous, step) = begin(&tx).await?;
    let rule = StoredRule {
        doc,
        expires_at,
        created_at: step.at,
        created_by: Some(admin.id().to_string()),
        updated_at: step.at,
        updated_by: Some(admin.id().to_string()),
        version: u64::try_from(step.version).unwrap_or_default(),
    };
    store_rule(&tx, &rule, true).await?;
    let change = format!("rule {} created", rule.doc.id);
    let next = finish_version(&tx, &previous, &step, &admin, &change).await?;
    audit::record(
        &tx,
        &admin.audit(),
        "gateway_rule.created",
        "gateway_rule",
        &rule.doc.id,
        audit::created(&rule.audit_snapshot()?),
    )
    .await?;
    gateway_doc::publish_and_commit(&state, tx, Some(&previous), &next).await?;
    tracing::info!(gateway.version = next.version, rule.id = %rule.doc.id, "gateway rule created");
    let view = rule.view(Hits {
        last_hour: Some(0),
        last_at: None,
    });
    Ok((StatusCode::CREATED, Json(view)))
}

/// The rules, newest first (by creation), with their hit counters.
#[utoipa::path(
    get,
    path = "/gateway/rules",
    tag = "gateway",
    params(RulesQuery),
    responses(
        (status = 200, body = RulePage),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope)
    )
)]
async fn list_rules(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Query(q): Query<RulesQuery>,
) -> Result<Json<RulePage>, ApiError> {
    let page = PageRequest::new(q.limit, q.cursor.as_deref())?;
    let action = q.action.map(|a| a.action().as_str());
    let conn = state.db().await?;
    let rows = conn
        .query(
            &format!(
                "SELECT {RULE_COLUMNS} FROM gateway_rules \
                 WHERE ($1::text IS NULL OR action = $1) \
                   AND ($2::bool IS NULL OR enabled = $2) \
                   AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::text)) \
                 ORDER BY created_at DESC, id DESC LIMIT $5"
            ),
            &[
                &action,
                &q.enabled,
                &page.after_time(),
                &page.after_id(),
                &page.fetch_limit(),
            ],
        )
        .await?;
    drop(conn);
    let rules = rows
        .iter()
        .map(StoredRule::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let page = Page::from_rows(rules, &page, |r| Cursor {
        created_at: r.created_at,
        id: r.doc.id.clone(),
    });
    let ids: Vec<&str> = page.items.iter().map(|r| r.doc.id.as_str()).collect();
    let counters = hits(&state, &ids).await;
    let items = page
        .items
        .iter()
        .zip(
            counters
                .into_iter()
                .chain(std::iter::repeat(Hits::default())),
        )
        .map(|(r, h)| r.view(h))
        .collect();
    Ok(Json(RulePage {
        items,
        next_cursor: page.next_cursor,
    }))
}

/// One rule with its hit counters. A malformed id is 400, an unknown one 404.
#[utoipa::path(
    get,
    path = "/gateway/rules/{id}",
    tag = "gateway",
    params(("id" = String, Path, description = "Rule id (rul_…)", pattern = "^rul_[0-9A-HJKMNP-TV-Z]{26}$")),
    responses(
        (status = 200, body = RuleView),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope)
    )
)]
async fn get_rule(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Path(id): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    rule_id(&id)?;
    let conn = state.db().await?;
    let rule = load_rule(&conn, &id, false).await?.ok_or_else(not_found)?;
    drop(conn);
    let h = hits(&state, &[id.as_str()]).await;
    Ok(Json(rule.view(h.into_iter().next().unwrap_or_default())))
}

/// Changes a rule: the given fields, then the rule is validated as a whole (400 listing every
/// problem, as on creation). A change is a new gateway config version, audited as
/// `gateway_rule.updated` (before/after) and published; a body that changes nothing answers
/// the rule as it is, without a new version. A malformed id is 400, an unknown one 404.
#[utoipa::path(
    patch,
    path = "/gateway/rules/{id}",
    tag = "gateway",
    params(("id" = String, Path, description = "Rule id (rul_…)", pattern = "^rul_[0-9A-HJKMNP-TV-Z]{26}$")),
    request_body = PatchRuleInput,
    responses(
        (status = 200, body = RuleView),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "More than 10,000 live rules", body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope)
    )
)]
async fn patch_rule(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path(id): Path<String>,
    Json(input): Json<PatchRuleInput>,
) -> Result<Json<RuleView>, ApiError> {
    rule_id(&id)?;
    let now = now_micros();
    let mut problems = Vec::new();
    let new_expiry = expiry(
        input.expires_in,
        input.expires_at.as_ref().map(Option::as_deref),
        now,
        &mut problems,
    );

    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    lock(&tx).await?;
    let before = load_rule(&tx, &id, true).await?.ok_or_else(not_found)?;
    let mut after = before.clone();
    if let Some(a) = input.action {
        after.doc.action = a;
    }
    if let Some(m) = input.match_ {
        after.doc.match_ = m.into();
    }
    if let Some(r) = input.rate {
        after.doc.rate = r.map(Into::into);
    }
    if let Some(p) = input.priority {
        after.doc.priority = p;
    }
    if let Some(e) = input.enabled {
        after.doc.enabled = e;
    }
    if let Some(e) = new_expiry {
        after.expires_at = e;
        after.doc.expires_at_ms = ms(e);
    }
    if let Some(r) = input.reason {
        after.doc.reason = r;
    }
    validate(&mut after.doc, problems)?;
    if after.doc == before.doc && after.expires_at == before.expires_at {
        drop(tx);
        drop(conn);
        let h = hits(&state, &[id.as_str()]).await;
        return Ok(Json(before.view(h.into_iter().next().unwrap_or_default())));
    }
    let (previous, step) = begin(&tx).await?;
    after.updated_at = step.at;
    after.updated_by = Some(admin.id().to_string());
    after.version = u64::try_from(step.version).unwrap_or_default();
    store_rule(&tx, &after, false).await?;
    let change = format!("rule {id} updated");
    let next = finish_version(&tx, &previous, &step, &admin, &change).await?;
    audit::record(
        &tx,
        &admin.audit(),
        "gateway_rule.updated",
        "gateway_rule",
        &id,
        audit::diff(&before.audit_snapshot()?, &after.audit_snapshot()?),
    )
    .await?;
    gateway_doc::publish_and_commit(&state, tx, Some(&previous), &next).await?;
    drop(conn);
    tracing::info!(gateway.version = next.version, rule.id = %id, "gateway rule updated");
    let h = hits(&state, &[id.as_str()]).await;
    Ok(Json(after.view(h.into_iter().next().unwrap_or_default())))
}

/// Deletes a rule: a new gateway config version, audited as `gateway_rule.deleted`,
/// published without the rule. A malformed id is 400, an unknown one 404.
#[utoipa::path(
    delete,
    path = "/gateway/rules/{id}",
    tag = "gateway",
    params(("id" = String, Path, description = "Rule id (rul_…)", pattern = "^rul_[0-9A-HJKMNP-TV-Z]{26}$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope)
    )
)]
async fn delete_rule(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    rule_id(&id)?;
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    lock(&tx).await?;
    let before = load_rule(&tx, &id, true).await?.ok_or_else(not_found)?;
    let (previous, step) = begin(&tx).await?;
    tx.execute("DELETE FROM gateway_rules WHERE id = $1", &[&id])
        .await?;
    let change = format!("rule {id} deleted");
    let next = finish_version(&tx, &previous, &step, &admin, &change).await?;
    audit::record(
        &tx,
        &admin.audit(),
        "gateway_rule.deleted",
        "gateway_rule",
        &id,
        audit::deleted(&before.audit_snapshot()?),
    )
    .await?;
    gateway_doc::publish_and_commit(&state, tx, Some(&previous), &next).await?;
    // The per-minute hit counters expire on their own; the last-hit time would not. Best
    // effort: the rule is gone either way, and a stale key only costs a few bytes.
    let mut con = state.redis();
    let last_hit = state.keys().rule_last_hit(&id);
    if let Err(e) = state
        .redis_timeout(redis::cmd("DEL").arg(&last_hit).query_async::<()>(&mut con))
        .await
    {
        tracing::warn!(error = %e, rule.id = %id, "gateway rule deleted: its last-hit key stays");
    }
    tracing::info!(gateway.version = next.version, rule.id = %id, "gateway rule deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use watchpost_common::rules::{
        MAX_MATCH_TEXT_BYTES, MAX_MATCH_VALUES, MAX_RATE_WINDOW_SECS, MAX_REASON_BYTES, UA_TYPES,
    };

    #[test]
    fn documented_bounds_are_the_enforced_ones() {
        assert_eq!(MAX_MATCH_VALUES, 10_000);
        assert_eq!(MAX_REASON_BYTES, 500);
        assert_eq!(MAX_MATCH_TEXT_BYTES, 1024);
        assert_eq!(MAX_RATE_WINDOW_SECS, 86_400);
        assert_eq!(MAX_RULES, 10_000);
        assert_eq!(MAX_EXPIRES_IN_SECS, 31_622_400);
        assert_eq!(UA_TYPES.len(), 6);
    }

    #[test]
    fn expiry_takes_one_of_two_forms() {
        let now = Utc::now();
        let mut p = Vec::new();
        assert_eq!(expiry(None, None, now, &mut p), None);
        assert_eq!(expiry(None, Some(None), now, &mut p), Some(None));
        let in_a_minute = expiry(Some(60), None, now, &mut p).flatten();
        assert_eq!(in_a_minute, Some(now + chrono::Duration::seconds(60)));
        assert!(p.is_empty(), "{p:?}");
        for (secs, at) in [
            (Some(0), None),
            (Some(MAX_EXPIRES_IN_SECS + 1), None),
            (Some(5), Some(Some("2999-01-01T00:00:00Z"))),
            (None, Some(Some("tomorrow"))),
            (None, Some(Some("2000-01-01T00:00:00Z"))),
        ] {
            let mut p = Vec::new();
            assert_eq!(expiry(secs, at, now, &mut p), None, "{secs:?} {at:?}");
            assert_eq!(p.len(), 1, "{secs:?} {at:?}: {p:?}");
        }
    }
}
