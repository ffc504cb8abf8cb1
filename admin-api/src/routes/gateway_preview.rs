//! `POST /api/admin/gateway/config/preview`: what a candidate gateway config would have done to
//! the newest access-log entries, before it is enforced. Nothing is written or announced.
//!
//! Each entry is replayed as the proxy decides a request: the currently published rules first
//! (`block` rejects, `allow` allows, `log_only` only tags, `rate_limit` cannot be replayed and
//! is passed over, counted), then the candidate's risk settings on the entry re-scored by
//! [`watchpost_risk::RiskEngine::rescore`] against the engine that recorded it (the published
//! config's `risk`, or the built-in `[risk]` defaults when it sets none: the admin API cannot
//! see a proxy's file), then the candidate's threshold and `risk_mode`. The work is O(N) in the
//! entries read, N at most [`MAX_ENTRIES`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use watchpost_common::rules::{RuleAction, RuleRequest};
use watchpost_common::{AccessLogEntry, Decision, GatewayConfig, GatewayConfigError, RiskMode};
use watchpost_risk::{Recorded, RiskConfig, RiskEngine};

use super::gateway::{client_ip_header_schema, GatewayConfigInput};
use super::gateway_risk::{risk_mode_schema, RiskSettings};

use crate::{
    auth::PlatformAdmin,
    error::{ApiError, ErrorEnvelope},
    extract::Json,
    state::AppState,
    stream::{decode_entries, to_item},
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(preview_gateway_config))
}

/// Entries replayed unless `entries` says otherwise.
pub const DEFAULT_ENTRIES: u32 = 10_000;
/// The most entries one preview replays.
pub const MAX_ENTRIES: u32 = 100_000;
/// Entries read per `XREVRANGE`: small enough that one reply arrives well within the Redis
/// command timeout (1 s) even on a busy host.
const CHUNK: u32 = 500;
/// How many values the top lists hold.
const TOP_N: usize = 10;

/// `POST /api/admin/gateway/config/preview` body: a candidate config, exactly as
/// `PUT /api/admin/gateway/config` takes it (validated the same way), plus `entries`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewInput {
    /// `direct`, `proxy` or `cdn`.
    pub ip_mode: String,
    /// CIDRs (or single addresses); every unparseable one is listed in the 400.
    #[serde(default)]
    pub trusted_cidrs: Vec<String>,
    /// In [0, 1].
    #[schema(minimum = 0, maximum = 1)]
    pub risk_reject_threshold: f64,
    /// Headers consulted in `cdn` mode; default `cf-connecting-ip`, `true-client-ip`.
    pub cdn_headers: Option<Vec<String>>,
    /// The forwarding header trusted hops set. Default `x-forwarded-for`.
    #[schema(schema_with = client_ip_header_schema)]
    pub client_ip_header: Option<String>,
    /// `cdn` mode: the CDN's own ranges.
    #[serde(default)]
    pub cdn_cidrs: Vec<String>,
    /// The candidate risk settings; fields left out take the built-in defaults. Absent or
    /// null: the built-in `[risk]` defaults (a proxy's own file is not visible here).
    pub risk: Option<RiskSettings>,
    /// `enforce` (default) or `log_only`.
    #[schema(schema_with = risk_mode_schema)]
    pub risk_mode: Option<String>,
    /// Accepted for symmetry with the PUT body and ignored: a preview changes nothing.
    pub version: Option<u64>,
    /// How many of the newest access-log entries to replay. Default 10,000.
    #[schema(minimum = 1, maximum = 100000, default = 10000)]
    pub entries: Option<u32>,
}

impl PreviewInput {
    /// The wire document of the candidate, and the entry count (or every problem of both).
    fn into_parts(self) -> Result<(GatewayConfig, u32), ApiError> {
        let entries = self.entries;
        // The candidate is read exactly as the PUT body is.
        let doc = GatewayConfigInput {
            ip_mode: self.ip_mode,
            trusted_cidrs: self.trusted_cidrs,
            risk_reject_threshold: self.risk_reject_threshold,
            cdn_headers: self.cdn_headers,
            client_ip_header: self.client_ip_header,
            cdn_cidrs: self.cdn_cidrs,
            risk: self.risk,
            risk_mode: self.risk_mode,
            version: self.version,
        }
        .into_doc();
        let entries = entries.unwrap_or(DEFAULT_ENTRIES);
        let entries_problem = (!(1..=MAX_ENTRIES).contains(&entries))
            .then(|| format!("entries {entries} is outside 1..={MAX_ENTRIES}"));
        match (GatewayConfig::from_doc(&doc), entries_problem) {
            (Ok(config), None) => Ok((config, entries)),
            (Ok(_), Some(p)) => Err(ApiError::bad_request(p)),
            (Err(e), p) => {
                let mut message = invalid_message(&e);
                if let Some(p) = p {
                    message.push_str("; ");
                    message.push_str(&p);
                }
                Err(ApiError::bad_request(message))
            }
        }
    }
}

/// The 400 message of an invalid candidate: the same text a PUT answers.
fn invalid_message(e: &GatewayConfigError) -> String {
    e.to_string()
}

/// One value of a top list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PreviewCount {
    pub value: String,
    pub count: u64,
}

/// What the candidate would have done to the newest entries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct Preview {
    /// Entries read, newest first (skipped ones included).
    pub examined: u64,
    /// Entries that never reached scoring (431 answers, requests that failed before they
    /// were decided, unreadable entries): not replayed.
    pub skipped: u64,
    /// Replayed entries the candidate would reject (403).
    pub would_reject: u64,
    /// Replayed entries the candidate would let through flagged (`risk_mode = log_only`).
    pub would_flag: u64,
    /// Replayed entries the candidate would allow.
    pub would_allow: u64,
    /// Replayed entries whose decision differs from the recorded one.
    pub changed: u64,
    /// Replayed entries rejected under the candidate but not when recorded.
    pub newly_rejected: u64,
    /// Replayed entries rejected when recorded but not under the candidate.
    pub no_longer_rejected: u64,
    /// Replayed entries that matched a published `rate_limit` rule, passed over because a
    /// request rate cannot be replayed (the later rules and the score then decided).
    pub rate_limit_rules_ignored: u64,
    /// Most frequent client IPs among the would-be rejected and flagged entries.
    pub top_ips: Vec<PreviewCount>,
    /// Most frequent paths among them.
    pub top_paths: Vec<PreviewCount>,
    /// Most frequent countries among them (`""`: unknown).
    pub top_countries: Vec<PreviewCount>,
    /// `ts` (ms since the epoch) of the oldest entry read; null when none was.
    pub oldest_ts: Option<u64>,
    /// `ts` of the newest entry read; null when none was.
    pub newest_ts: Option<u64>,
}

/// The published config and the candidate, with the engines each scores with.
pub struct Replay {
    published: GatewayConfig,
    recorded_by: Arc<RiskEngine>,
    candidate: GatewayConfig,
    candidate_engine: Arc<RiskEngine>,
}

/// What replaying one entry gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The entry never reached scoring.
    Skipped,
    Decided {
        decision: Decision,
        /// A `rate_limit` rule matched and was passed over.
        rate_limit_ignored: bool,
    },
}

impl Replay {
    /// Replays entries recorded under `published` as `candidate` would decide them. A config
    /// without `risk` scores with the built-in `[risk]` defaults.
    pub fn new(published: GatewayConfig, candidate: GatewayConfig) -> Result<Self, ApiError> {
        let default_engine = Arc::new(
            RiskEngine::new(&RiskConfig::default())
                .map_err(|e| ApiError::internal(format!("built-in risk settings: {e}")))?,
        );
        let engine_of = |c: &GatewayConfig| {
            c.risk_engine
                .as_ref()
                .map_or_else(|| default_engine.clone(), |e| e.0.clone())
        };
        Ok(Self {
            recorded_by: engine_of(&published),
            candidate_engine: engine_of(&candidate),
            published,
            candidate,
        })
    }

    /// How the candidate decides one recorded entry; rules are live as of `now_ms`.
    pub fn judge(&self, e: &AccessLogEntry, now_ms: u64) -> Outcome {
        // Requests that failed before `request_filter` decided them carry no UA class; 431s
        // are answered before any header is read (no reasons, UA class `unknown`).
        let oversized = e.status == 431 && e.reasons.is_empty() && e.ua_type == "unknown";
        let Ok(ip) = e.ip.parse::<IpAddr>() else {
            return Outcome::Skipped;
        };
        if e.ua_type.is_empty() || oversized {
            return Outcome::Skipped;
        }
        let req = RuleRequest {
            ip,
            country: &e.country,
            path: &e.path,
            host: &e.host,
            method: &e.method,
            ua_type: &e.ua_type,
        };
        let mut rate_limit_ignored = false;
        for rule in self.published.compiled_rules.matching(&req, now_ms) {
            match rule.action {
                RuleAction::Block => {
                    return Outcome::Decided {
                        decision: Decision::Reject,
                        rate_limit_ignored,
                    }
                }
                RuleAction::Allow => {
                    return Outcome::Decided {
                        decision: Decision::Allow,
                        rate_limit_ignored,
                    }
                }
                RuleAction::RateLimit => rate_limit_ignored = true,
                RuleAction::LogOnly => {}
            }
        }
        let reasons: Vec<&str> = e.reasons.iter().map(|r| r.as_ref()).collect();
        let recorded = Recorded {
            ip,
            ua: &e.ua,
            path: &e.path,
            country: &e.country,
            reasons: &reasons,
            score: e.risk,
        };
        let score = self
            .candidate_engine
            .rescore(&self.recorded_by, &recorded)
            .assessment
            .score;
        let decision = match (
            score >= self.candidate.risk_reject_threshold,
            self.candidate.risk_mode,
        ) {
            (false, _) => Decision::Allow,
            (true, RiskMode::Enforce) => Decision::Reject,
            (true, RiskMode::LogOnly) => Decision::Flag,
        };
        Outcome::Decided {
            decision,
            rate_limit_ignored,
        }
    }
}

/// Running totals of a preview.
#[derive(Debug, Default)]
pub struct Tally {
    preview: Preview,
    ips: HashMap<String, u64>,
    paths: HashMap<String, u64>,
    countries: HashMap<String, u64>,
}

impl Tally {
    /// Counts one entry read (`None`: unreadable) and its outcome.
    pub fn add(&mut self, e: Option<&AccessLogEntry>, outcome: Outcome) {
        let p = &mut self.preview;
        p.examined += 1;
        if let Some(e) = e {
            p.oldest_ts = Some(p.oldest_ts.map_or(e.ts, |t| t.min(e.ts)));
            p.newest_ts = Some(p.newest_ts.map_or(e.ts, |t| t.max(e.ts)));
        }
        let (e, decision, rate_limit_ignored) = match (e, outcome) {
            (
                Some(e),
                Outcome::Decided {
                    decision,
                    rate_limit_ignored,
                },
            ) => (e, decision, rate_limit_ignored),
            _ => {
                p.skipped += 1;
                return;
            }
        };
        if rate_limit_ignored {
            p.rate_limit_rules_ignored += 1;
        }
        match decision {
            Decision::Allow => p.would_allow += 1,
            Decision::Reject => p.would_reject += 1,
            Decision::Flag => p.would_flag += 1,
        }
        if decision != e.decision {
            p.changed += 1;
        }
        match (e.decision == Decision::Reject, decision == Decision::Reject) {
            (false, true) => p.newly_rejected += 1,
            (true, false) => p.no_longer_rejected += 1,
            _ => {}
        }
        if decision != Decision::Allow {
            *self.ips.entry(e.ip.clone()).or_default() += 1;
            *self.paths.entry(e.path.clone()).or_default() += 1;
            *self.countries.entry(e.country.clone()).or_default() += 1;
        }
    }

    /// The preview with its top lists.
    pub fn finish(mut self) -> Preview {
        self.preview.top_ips = top(self.ips);
        self.preview.top_paths = top(self.paths);
        self.preview.top_countries = top(self.countries);
        self.preview
    }
}

/// Most first, ties by value.
fn top(counts: HashMap<String, u64>) -> Vec<PreviewCount> {
    let mut all: Vec<PreviewCount> = counts
        .into_iter()
        .map(|(value, count)| PreviewCount { value, count })
        .collect();
    all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
    all.truncate(TOP_N);
    all
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The config the proxies run now: Redis's copy, or the built-in default before the first PUT.
async fn published(state: &AppState) -> Result<GatewayConfig, ApiError> {
    let mut con = state.redis();
    let raw: Option<String> = state
        .redis_timeout(
            redis::cmd("GET")
                .arg(state.keys().gateway_config())
                .query_async(&mut con),
        )
        .await?;
    match raw {
        None => Ok(GatewayConfig::default()),
        Some(json) => GatewayConfig::from_json(&json)
            .map_err(|e| ApiError::internal(format!("published gateway config: {e}"))),
    }
}

/// Replays the newest access-log entries under a candidate gateway config and counts what it
/// would reject, flag and allow; nothing is enforced or written. The candidate is validated
/// like a PUT (400 listing every problem); `entries` (default 10,000) must be 1..=100,000.
/// The published rules apply first (`rate_limit` rules cannot be replayed and are counted in
/// `rate_limit_rules_ignored`); signals an entry does not record (request rate, forwarding
/// headers, a browser's missing headers) are recovered from its recorded reasons and score.
#[utoipa::path(
    post,
    path = "/gateway/config/preview",
    tag = "gateway",
    request_body = PreviewInput,
    responses(
        (status = 200, body = Preview),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope)
    )
)]
async fn preview_gateway_config(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Json(input): Json<PreviewInput>,
) -> Result<Json<Preview>, ApiError> {
    let (candidate, entries) = input.into_parts()?;
    let replay = Replay::new(published(&state).await?, candidate)?;
    let now = now_ms();
    let families = crate::stream::shards::families(&state).await?;
    let mut tally = Tally::default();
    if families.len() > 1 {
        // Sharded: the newest entries of every shard, merged by (id, shard).
        let mut walk = crate::stream::shards::MergedWalk::plan(
            &state,
            &families,
            crate::stream::query::Bounds::default(),
            crate::stream::Filters::default(),
        )
        .await?;
        let mut left = usize::try_from(entries).unwrap_or(usize::MAX);
        while left > 0 && !walk.is_done() {
            let items = walk.next(&state, left.min(CHUNK as usize)).await?;
            left = left.saturating_sub(items.len());
            for item in items {
                tally.add(Some(&item.entry), replay.judge(&item.entry, now));
            }
        }
        return Ok(Json(tally.finish()));
    }
    let key = families
        .first()
        .map_or_else(|| state.keys().access_stream(), |f| f.stream());
    let mut con = state.redis();
    let mut upper = "+".to_string();
    let mut left = entries;
    while left > 0 {
        let count = left.min(CHUNK);
        let reply: redis::Value = state
            .redis_timeout(
                redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg(&upper)
                    .arg("-")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut con),
            )
            .await?;
        let raw = decode_entries(reply)?;
        let got = u32::try_from(raw.len()).unwrap_or(u32::MAX);
        let last = raw.last().map(|(id, _)| id.clone());
        for entry in raw {
            match to_item(entry) {
                Some(item) => tally.add(Some(&item.entry), replay.judge(&item.entry, now)),
                None => tally.add(None, Outcome::Skipped),
            }
        }
        left = left.saturating_sub(got);
        match last {
            Some(id) if got == count => upper = format!("({id}"),
            _ => break,
        }
    }
    Ok(Json(tally.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use watchpost_common::rules::RuleMatch;
    use watchpost_common::RuleDoc;
    use watchpost_risk::UaType;

    const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36";

    fn config(threshold: f64, mode: RiskMode, risk: Option<RiskConfig>) -> GatewayConfig {
        let mut doc = GatewayConfig::default().to_doc();
        doc.risk_reject_threshold = threshold;
        doc.risk_mode = mode.as_str().to_string();
        doc.risk = risk;
        GatewayConfig::from_doc(&doc).expect("valid config")
    }

    /// Score `ua`/`path` under the default engine and log it as the proxy would.
    fn logged(ip: &str, ua: &str, path: &str, threshold: f64) -> AccessLogEntry {
        let engine = RiskEngine::new(&RiskConfig::default()).expect("engine");
        let ev = engine.evaluate(&watchpost_risk::RequestFacts {
            ip: ip.parse().expect("ip"),
            user_agent: (!ua.is_empty()).then_some(ua.as_bytes()),
            path,
            has_accept: true,
            has_accept_language: true,
            spoofed_forwarded: false,
            malformed_forwarded: false,
            country: "",
            recent_requests: 1.0,
        });
        let risk: f64 = format!("{:.3}", ev.assessment.score)
            .parse()
            .expect("score");
        AccessLogEntry {
            ts: 1_700_000_000_000,
            method: "GET".into(),
            host: "example.test".into(),
            path: path.into(),
            status: 200,
            ip: ip.into(),
            risk,
            reasons: ev.assessment.reason_names().map(Into::into).collect(),
            ua: ua.into(),
            ua_type: ev.ua_type.as_str().into(),
            decision: if risk >= threshold {
                Decision::Reject
            } else {
                Decision::Allow
            },
            ..AccessLogEntry::default()
        }
    }

    fn decided(decision: Decision) -> Outcome {
        Outcome::Decided {
            decision,
            rate_limit_ignored: false,
        }
    }

    #[test]
    fn a_lower_threshold_and_a_heavier_weight_reject_more() {
        let published = config(0.8, RiskMode::Enforce, None);
        let mut risk = RiskConfig::default();
        risk.weights.ua_cli = 0.9;
        let candidate = config(0.5, RiskMode::Enforce, Some(risk));
        let replay = Replay::new(published, candidate).expect("engines");
        let rows = [
            (
                "browser",
                logged("198.51.100.1", BROWSER, "/", 0.8),
                Decision::Allow,
            ),
            (
                "curl",
                logged("198.51.100.2", "curl/8.4.0", "/", 0.8),
                Decision::Reject,
            ),
            // python-requests scores 0.3 under both: allowed.
            (
                "library",
                logged("198.51.100.3", "python-requests/2.31", "/", 0.8),
                Decision::Allow,
            ),
            // A bot scores 0.5: at the new threshold.
            (
                "bot",
                logged("198.51.100.4", "AhrefsBot/7.0", "/", 0.8),
                Decision::Reject,
            ),
            (
                "probe",
                logged("198.51.100.5", BROWSER, "/.env", 0.8),
                Decision::Reject,
            ),
        ];
        let mut tally = Tally::default();
        for (name, e, want) in &rows {
            let got = replay.judge(e, 0);
            assert_eq!(got, decided(*want), "{name}");
            tally.add(Some(e), got);
        }
        let p = tally.finish();
        assert_eq!((p.examined, p.skipped), (5, 0));
        assert_eq!((p.would_reject, p.would_flag, p.would_allow), (3, 0, 2));
        assert_eq!(
            (p.changed, p.newly_rejected, p.no_longer_rejected),
            (2, 2, 0)
        );
        assert_eq!(
            p.top_paths[0],
            PreviewCount {
                value: "/".into(),
                count: 2
            }
        );
        assert_eq!(p.top_ips.len(), 3);
        assert_eq!(p.oldest_ts, Some(1_700_000_000_000));
    }

    #[test]
    fn log_only_flags_instead() {
        let replay = Replay::new(
            config(0.8, RiskMode::Enforce, None),
            config(0.3, RiskMode::LogOnly, None),
        )
        .expect("engines");
        let e = logged("198.51.100.2", "curl/8.4.0", "/", 0.8);
        assert_eq!(replay.judge(&e, 0), decided(Decision::Flag));
        let e = logged("198.51.100.2", "curl/8.4.0", "/.env", 0.8);
        let mut tally = Tally::default();
        tally.add(Some(&e), replay.judge(&e, 0));
        let p = tally.finish();
        assert_eq!((p.would_flag, p.changed, p.no_longer_rejected), (1, 1, 1));
    }

    #[test]
    fn unscored_entries_are_skipped() {
        let replay =
            Replay::new(GatewayConfig::default(), GatewayConfig::default()).expect("engines");
        let mut oversized = logged("198.51.100.2", "", "/", 0.8);
        oversized.status = 431;
        oversized.reasons.clear();
        oversized.ua_type = UaType::Unknown.as_str().into();
        let mut failed = logged("198.51.100.2", "curl/8", "/", 0.8);
        failed.ua_type = Default::default();
        let mut bad_ip = logged("198.51.100.2", "curl/8", "/", 0.8);
        bad_ip.ip = "nope".into();
        let mut tally = Tally::default();
        for e in [&oversized, &failed, &bad_ip] {
            assert_eq!(replay.judge(e, 0), Outcome::Skipped);
            tally.add(Some(e), Outcome::Skipped);
        }
        tally.add(None, Outcome::Skipped);
        let p = tally.finish();
        assert_eq!((p.examined, p.skipped, p.would_allow), (4, 4, 0));
        assert!(p.top_ips.is_empty());
    }

    #[test]
    fn published_rules_decide_first() {
        let rule = |id: &str, action: &str, prefix: &str, priority: i32| RuleDoc {
            id: id.into(),
            action: action.into(),
            match_: RuleMatch {
                path_prefixes: vec![prefix.into()],
                ..RuleMatch::default()
            },
            rate: (action == "rate_limit").then_some(watchpost_common::RuleRate {
                requests: 1,
                window_secs: 1,
            }),
            priority,
            enabled: true,
            expires_at_ms: None,
            reason: "test".into(),
        };
        let mut doc = GatewayConfig::default().to_doc();
        doc.rules = vec![
            rule("rul_01JDX3Q7Z5R8KX4W2M9T6V1B0A", "block", "/blocked", 10),
            rule(
                "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0B",
                "allow",
                "/.env-allowed",
                10,
            ),
            rule("rul_01JDX3Q7Z5R8KX4W2M9T6V1B0C", "rate_limit", "/api", 1),
            rule("rul_01JDX3Q7Z5R8KX4W2M9T6V1B0D", "log_only", "/", 0),
        ];
        let published = GatewayConfig::from_doc(&doc).expect("valid rules");
        let replay = Replay::new(published, GatewayConfig::default()).expect("engines");
        let browser = |path| logged("198.51.100.1", BROWSER, path, 0.8);
        assert_eq!(
            replay.judge(&browser("/blocked/x"), 0),
            decided(Decision::Reject)
        );
        assert_eq!(
            replay.judge(&browser("/.env-allowed"), 0),
            decided(Decision::Allow)
        );
        assert_eq!(
            replay.judge(&browser("/.env"), 0),
            decided(Decision::Reject)
        );
        assert_eq!(
            replay.judge(&browser("/api/x"), 0),
            Outcome::Decided {
                decision: Decision::Allow,
                rate_limit_ignored: true
            }
        );
    }

    #[test]
    fn bad_candidates_list_every_problem() {
        let input: PreviewInput = serde_json::from_value(serde_json::json!({
            "ip_mode": "sideways",
            "trusted_cidrs": ["10.0.0.0/33"],
            "risk_reject_threshold": 1.5,
            "risk": {"weights": {"ua_cli": 2.0}, "countries": ["XX1"]},
            "risk_mode": "maybe",
            "entries": 0
        }))
        .expect("shape");
        let err = input.into_parts().expect_err("invalid");
        let message = err.public_message();
        for part in [
            "sideways",
            "10.0.0.0/33",
            "1.5",
            "ua_cli",
            "XX1",
            "maybe",
            "entries 0",
        ] {
            assert!(message.contains(part), "{part} missing from {message}");
        }
        for (entries, ok) in [(1, true), (100_000, true), (100_001, false)] {
            let input: PreviewInput = serde_json::from_value(serde_json::json!({
                "ip_mode": "direct", "risk_reject_threshold": 0.8, "entries": entries
            }))
            .expect("shape");
            assert_eq!(input.into_parts().is_ok(), ok, "{entries}");
        }
    }
}
