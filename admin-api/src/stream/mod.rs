//! Reading the access-log stream (SPEC §5): stream ids, filters, cursor pages, the windowed
//! summary and the live tail.
//!
//! Everything here reads the stream written by the proxies (`<prefix>access`) and never writes
//! to it. Each call is bounded: a page examines at most `[admin] access_log_scan_budget`
//! entries, a summary at most `[admin] access_log_summary_max_entries`.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;
use utoipa::ToSchema;
use watchpost_common::access_index::{risk_bucket_for, IndexTerm};
use watchpost_common::{AccessLogEntry, Decision};
use watchpost_risk::UaType;

use crate::error::ApiError;

pub mod export;
pub mod query;
pub mod shards;
pub mod summary;
pub mod tail;

/// Largest `limit` of an access-log page.
pub const MAX_PAGE: usize = 500;

/// Checks the `[admin] access_log_*` keys; the message names the key at fault.
pub fn validate_config(admin: &crate::config::AdminConfig) -> Result<(), String> {
    if admin.access_log_scan_budget <= MAX_PAGE {
        // An unfiltered page of the largest size must fit in one call's budget.
        return Err(format!(
            "[admin] access_log_scan_budget: must be more than {MAX_PAGE}"
        ));
    }
    if admin.access_log_summary_max_entries == 0 {
        return Err("[admin] access_log_summary_max_entries: must be positive".into());
    }
    if !(100..=60_000).contains(&admin.access_log_tail_block_ms) {
        return Err("[admin] access_log_tail_block_ms: must be between 100 and 60000".into());
    }
    if admin.access_log_tail_heartbeat_secs == 0 {
        return Err("[admin] access_log_tail_heartbeat_secs: must be positive".into());
    }
    if admin.access_log_max_tails == 0 {
        return Err("[admin] access_log_max_tails: must be positive".into());
    }
    Ok(())
}

/// A Redis stream id `<ms>-<seq>`. Ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl StreamId {
    /// The smallest id; nothing is older.
    pub const MIN: StreamId = StreamId { ms: 0, seq: 0 };
    /// The largest id; nothing is newer.
    pub const MAX: StreamId = StreamId {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    /// Parses `<digits>-<digits>` or `<digits>` (read as `<digits>-0`, the first id of that
    /// millisecond). Anything else, including signs, spaces and overflow, is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        fn digits(s: &str) -> Option<u64> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        }
        match text.split_once('-') {
            Some((ms, seq)) => Some(Self {
                ms: digits(ms)?,
                seq: digits(seq)?,
            }),
            None => Some(Self {
                ms: digits(text)?,
                seq: 0,
            }),
        }
    }

    /// Parses a query parameter, answering 400 naming it when malformed.
    pub fn param(name: &str, value: Option<&str>) -> Result<Option<Self>, ApiError> {
        value
            .map(|v| {
                Self::parse(v).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{name} must be a stream id like 1732000000000-0 (got {v:?})"
                    ))
                })
            })
            .transpose()
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The raw filter parameters shared by the list, the tail and (later) exports.
#[derive(Debug, Clone, Default)]
pub struct FilterParams {
    pub method: Option<String>,
    pub path: Option<String>,
    pub ip: Option<String>,
    pub country: Option<String>,
    pub risk_min: Option<String>,
    pub ua_type: Option<String>,
    pub decision: Option<String>,
    pub status: Option<String>,
    pub rule: Option<String>,
    pub host: Option<String>,
    pub request_id: Option<String>,
}

/// A status filter: one code, or a class (`4xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Exact(u16),
    /// The hundreds digit, 1..=5.
    Class(u8),
}

impl StatusFilter {
    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusFilter::Exact(s) => status == s,
            StatusFilter::Class(c) => status / 100 == u16::from(c) && (100..=599).contains(&status),
        }
    }
}

/// Validated filters; an entry must match every one that is set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    /// Upper-case method.
    pub method: Option<String>,
    /// Path prefix.
    pub path: Option<String>,
    /// Canonical text of the client IP (IPv4-mapped IPv6 as IPv4).
    pub ip: Option<String>,
    /// Upper-case ISO alpha-2 code.
    pub country: Option<String>,
    /// Smallest risk score, in [0, 1].
    pub risk_min: Option<f64>,
    pub ua_type: Option<UaType>,
    pub decision: Option<Decision>,
    pub status: Option<StatusFilter>,
    /// The deciding (or tagging) gateway rule's id, exact.
    pub rule: Option<String>,
    /// Host, case-insensitive, exact.
    pub host: Option<String>,
    /// Request id, exact.
    pub request_id: Option<String>,
}

impl Filters {
    /// Validates every parameter; the first bad one is a 400 naming it.
    pub fn parse(p: &FilterParams) -> Result<Self, ApiError> {
        let bad = |msg: String| ApiError::bad_request(msg);
        let method = match p.method.as_deref() {
            None => None,
            Some(m)
                if !m.is_empty() && m.len() <= 32 && m.bytes().all(|b| b.is_ascii_alphabetic()) =>
            {
                Some(m.to_ascii_uppercase())
            }
            Some(m) => {
                return Err(bad(format!(
                    "method must be an HTTP method name (got {m:?})"
                )))
            }
        };
        let path = match p.path.as_deref() {
            None => None,
            Some(s) if s.starts_with('/') => Some(s.to_string()),
            Some(s) => return Err(bad(format!("path must start with / (got {s:?})"))),
        };
        let ip = match p.ip.as_deref() {
            None => None,
            Some(s) => match s.trim().parse::<IpAddr>() {
                Ok(ip) => Some(ip.to_canonical().to_string()),
                Err(_) => {
                    return Err(bad(format!(
                        "ip must be an IPv4 or IPv6 address (got {s:?})"
                    )))
                }
            },
        };
        let country = match p.country.as_deref() {
            None => None,
            Some(c) if c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()) => {
                Some(c.to_ascii_uppercase())
            }
            Some(c) => {
                return Err(bad(format!(
                    "country must be a two-letter ISO 3166-1 code (got {c:?})"
                )))
            }
        };
        let risk_min = match p.risk_min.as_deref() {
            None => None,
            Some(r) => match r.trim().parse::<f64>() {
                Ok(v) if (0.0..=1.0).contains(&v) => Some(v),
                _ => {
                    return Err(bad(format!(
                        "risk_min must be a number between 0 and 1 (got {r:?})"
                    )))
                }
            },
        };
        let ua_type = match p.ua_type.as_deref() {
            None => None,
            Some(t) => match UaType::parse(&t.to_ascii_lowercase()) {
                Some(t) => Some(t),
                None => {
                    let names: Vec<&str> = UaType::ALL.iter().map(|t| t.as_str()).collect();
                    return Err(bad(format!(
                        "ua_type must be one of {} (got {t:?})",
                        names.join(", ")
                    )));
                }
            },
        };
        let decision = match p.decision.as_deref() {
            None => None,
            Some(d) => match Decision::parse(&d.to_ascii_lowercase()) {
                Some(d) => Some(d),
                None => {
                    return Err(bad(format!(
                        "decision must be allow, reject or flag (got {d:?})"
                    )))
                }
            },
        };
        let status = match p.status.as_deref() {
            None => None,
            Some(s) => {
                let t = s.trim().to_ascii_lowercase();
                let class = t
                    .strip_suffix("xx")
                    .and_then(|d| d.parse::<u8>().ok())
                    .filter(|d| (1..=5).contains(d) && t.len() == 3);
                match (class, t.parse::<u16>()) {
                    (Some(c), _) => Some(StatusFilter::Class(c)),
                    (None, Ok(v)) if (100..=599).contains(&v) => Some(StatusFilter::Exact(v)),
                    _ => {
                        return Err(bad(format!(
                            "status must be an integer between 100 and 599 or a class 1xx..5xx (got {s:?})"
                        )))
                    }
                }
            }
        };
        let host = match p.host.as_deref() {
            None => None,
            Some(h)
                if !h.is_empty()
                    && h.len() <= 255
                    && h.bytes().all(|b| b.is_ascii_graphic() && b != b'/') =>
            {
                Some(h.to_string())
            }
            Some(h) => {
                return Err(bad(format!(
                "host must be a host name (optionally with :port), 1 to 255 characters (got {h:?})"
            )))
            }
        };
        let request_id = match p.request_id.as_deref() {
            None => None,
            Some(r)
                if !r.is_empty() && r.len() <= 128 && r.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Some(r.to_string())
            }
            Some(r) => {
                return Err(bad(format!(
                    "request_id must be 1 to 128 printable characters (got {r:?})"
                )))
            }
        };
        let rule = match p.rule.as_deref() {
            None => None,
            Some(r) if watchpost_common::rules::is_rule_id(r) => Some(r.to_string()),
            Some(r) => {
                return Err(bad(format!(
                    "rule must be a rule id (rul_ followed by 26 upper-case Crockford base-32 characters; got {r:?})"
                )))
            }
        };
        Ok(Self {
            method,
            path,
            ip,
            country,
            risk_min,
            ua_type,
            decision,
            status,
            rule,
            host,
            request_id,
        })
    }

    /// The indexes that can drive a walk over these filters (each one a superset of the
    /// matches); empty when none applies. Unindexed values (`decision=allow`, `2xx`, exact 2xx
    /// statuses) are left out: their filter is checked on the entries of whatever walk runs.
    pub fn index_terms(&self) -> Vec<IndexTerm> {
        let mut out = Vec::new();
        if let Some(ip) = &self.ip {
            out.push(IndexTerm::ip(ip));
        }
        if let Some(c) = &self.country {
            out.push(IndexTerm::country(c));
        }
        match self.status {
            Some(StatusFilter::Exact(s)) => out.push(IndexTerm::status(s)),
            Some(StatusFilter::Class(c)) => out.push(IndexTerm::status_class(c)),
            None => {}
        }
        if let Some(d) = self.decision {
            out.push(IndexTerm::decision(d));
        }
        if let Some(t) = self.ua_type {
            out.push(IndexTerm::ua_type(t.as_str()));
        }
        if let Some(b) = self.risk_min.and_then(risk_bucket_for) {
            out.push(IndexTerm::risk(b));
        }
        if let Some(r) = &self.rule {
            out.push(IndexTerm::rule(r));
        }
        out.retain(IndexTerm::is_indexed);
        out
    }

    /// True when no filter is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether the entry matches every filter that is set.
    pub fn matches(&self, e: &AccessLogEntry) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| e.method.eq_ignore_ascii_case(m))
            && self.path.as_deref().is_none_or(|p| e.path.starts_with(p))
            && self.ip.as_deref().is_none_or(|ip| ip_matches(&e.ip, ip))
            && self
                .country
                .as_deref()
                .is_none_or(|c| e.country.eq_ignore_ascii_case(c))
            && self.risk_min.is_none_or(|r| e.risk >= r)
            && self.ua_type.is_none_or(|t| e.ua_type == t.as_str())
            && self.decision.is_none_or(|d| e.decision == d)
            && self.status.is_none_or(|s| s.matches(e.status))
            && self.rule.as_deref().is_none_or(|r| e.rule == r)
            && self
                .host
                .as_deref()
                .is_none_or(|h| e.host.eq_ignore_ascii_case(h))
            && self.request_id.as_deref().is_none_or(|r| e.request_id == r)
    }
}

/// Compares a logged IP with the canonical filter text; a logged IP in another spelling
/// (upper-case hex, IPv4-mapped) still matches.
fn ip_matches(logged: &str, canonical: &str) -> bool {
    if logged == canonical {
        return true;
    }
    // Dotted IPv4 has one spelling: another dotted address is another address. Only
    // spellings with a colon (IPv6, IPv4-mapped) need parsing.
    logged.contains(':')
        && logged
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().to_string() == canonical)
}

/// One entry as the API returns it: its stream id and typed fields.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Item {
    /// Stream id, e.g. `1732000000000-0`; pass it as `before` or `since` (with `shard`, as
    /// `<id>~<shard>`).
    pub id: String,
    /// The shard (`[access_log] shards`) holding the entry: a number, or `-` for the
    /// unsharded stream. Present only when the access log is sharded (more than one stream
    /// is read); ids are unique within a shard, and `<id>~<shard>` names an entry exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "3")]
    pub shard: Option<String>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub entry: AccessLogEntry,
}

/// One raw stream entry: id and field map.
pub(crate) type RawEntry = (String, Vec<(String, String)>);

/// Decodes an `XRANGE`/`XREVRANGE` reply (or the entries of one `XREAD` stream). Values that
/// are not UTF-8 are read lossily rather than failing the whole page.
pub(crate) fn decode_entries(value: redis::Value) -> Result<Vec<RawEntry>, ApiError> {
    use redis::Value;
    let items = match value {
        Value::Array(items) => items,
        Value::Nil => return Ok(Vec::new()),
        other => {
            return Err(ApiError::internal(format!(
                "unexpected stream reply {other:?}"
            )))
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(parts) = item else {
            return Err(ApiError::internal("stream entry is not an array"));
        };
        let mut parts = parts.into_iter();
        let id = parts.next().map(text).unwrap_or_default();
        let mut fields = Vec::with_capacity(watchpost_common::ACCESS_LOG_FIELDS.len());
        match parts.next() {
            Some(Value::Array(flat)) => {
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    fields.push((text(k), text(v)));
                }
            }
            Some(Value::Map(pairs)) => {
                for (k, v) in pairs {
                    fields.push((text(k), text(v)));
                }
            }
            _ => {}
        }
        out.push((id, fields));
    }
    Ok(out)
}

fn text(v: redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        redis::Value::SimpleString(s) => s,
        redis::Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

/// Turns a raw entry into an [`Item`]; an entry the proxy could not have written (an
/// unreadable number) is logged and skipped rather than failing the page.
pub(crate) fn to_item((id, fields): RawEntry) -> Option<Item> {
    match AccessLogEntry::from_pairs(fields) {
        Ok(entry) => Some(Item {
            id,
            shard: None,
            entry,
        }),
        Err(e) => {
            tracing::warn!(stream.id = %id, error = %e, "access log: skipping unreadable entry");
            None
        }
    }
}

/// The value of one raw field; a missing field reads as empty, as in
/// [`AccessLogEntry::from_fields`].
fn raw_field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

impl Filters {
    /// A cheap pre-check on the raw fields, before an entry is decoded: false only when the
    /// decoded entry could not match [`Filters::matches`] (or could not be decoded at all),
    /// so that most entries of a selective query are never decoded.
    pub(crate) fn may_match(&self, fields: &[(String, String)]) -> bool {
        let num = |name: &str| -> Option<f64> {
            let v = raw_field(fields, name);
            if v.is_empty() {
                Some(0.0)
            } else {
                v.parse().ok()
            }
        };
        self.ip
            .as_deref()
            .is_none_or(|ip| ip_matches(raw_field(fields, "ip"), ip))
            && self
                .risk_min
                .is_none_or(|r| num("risk").is_some_and(|v| v >= r))
            && self
                .path
                .as_deref()
                .is_none_or(|p| raw_field(fields, "path").starts_with(p))
            && self
                .country
                .as_deref()
                .is_none_or(|c| raw_field(fields, "country").eq_ignore_ascii_case(c))
            && self.status.is_none_or(|s| {
                raw_field(fields, "status").is_empty()
                    || raw_field(fields, "status")
                        .parse::<u16>()
                        .is_ok_and(|v| s.matches(v))
            })
            && self
                .request_id
                .as_deref()
                .is_none_or(|r| raw_field(fields, "request_id") == r)
            && self
                .rule
                .as_deref()
                .is_none_or(|r| raw_field(fields, "rule") == r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_parse_strictly() {
        assert_eq!(
            StreamId::parse("1732000000000-7"),
            Some(StreamId {
                ms: 1_732_000_000_000,
                seq: 7
            })
        );
        assert_eq!(StreamId::parse("5"), Some(StreamId { ms: 5, seq: 0 }));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-a",
            "1-2-3",
            " 1-2",
            "+1-2",
            "1.5",
            "$",
            "+",
            "99999999999999999999-0",
        ] {
            assert_eq!(StreamId::parse(bad), None, "{bad:?}");
        }
        assert!(StreamId::parse("2-0") > StreamId::parse("1-9"));
        assert_eq!(StreamId { ms: 3, seq: 4 }.to_string(), "3-4");
    }

    #[track_caller]
    fn refused(p: FilterParams) {
        let err = Filters::parse(&p).expect_err("should be refused");
        assert_eq!(err.code(), crate::error::ErrorCode::BadRequest);
    }

    #[test]
    fn bad_filters_are_refused() {
        let cases: Vec<FilterParams> = vec![
            FilterParams {
                method: Some("GE T".into()),
                ..Default::default()
            },
            FilterParams {
                path: Some("nope".into()),
                ..Default::default()
            },
            FilterParams {
                ip: Some("1.2.3".into()),
                ..Default::default()
            },
            FilterParams {
                country: Some("DEU".into()),
                ..Default::default()
            },
            FilterParams {
                country: Some("D1".into()),
                ..Default::default()
            },
            FilterParams {
                risk_min: Some("high".into()),
                ..Default::default()
            },
            FilterParams {
                risk_min: Some("1.5".into()),
                ..Default::default()
            },
            FilterParams {
                risk_min: Some("NaN".into()),
                ..Default::default()
            },
            FilterParams {
                ua_type: Some("robot".into()),
                ..Default::default()
            },
            FilterParams {
                decision: Some("maybe".into()),
                ..Default::default()
            },
            FilterParams {
                status: Some("99".into()),
                ..Default::default()
            },
            FilterParams {
                status: Some("6xx".into()),
                ..Default::default()
            },
            FilterParams {
                status: Some("4x".into()),
                ..Default::default()
            },
            FilterParams {
                host: Some("a/b".into()),
                ..Default::default()
            },
            FilterParams {
                request_id: Some("a b".into()),
                ..Default::default()
            },
        ];
        for p in cases {
            refused(p);
        }
    }

    #[test]
    fn filters_match_case_insensitively_and_canonically() {
        let f = Filters::parse(&FilterParams {
            method: Some("get".into()),
            path: Some("/api".into()),
            ip: Some("::ffff:203.0.113.7".into()),
            country: Some("de".into()),
            risk_min: Some("0.5".into()),
            ua_type: Some("cli".into()),
            decision: Some("reject".into()),
            status: Some("403".into()),
            ..Default::default()
        })
        .expect("valid");
        let mut e = AccessLogEntry {
            method: "GET".into(),
            path: "/api/x".into(),
            ip: "203.0.113.7".into(),
            country: "DE".into(),
            risk: 0.5,
            ua_type: "cli".into(),
            decision: Decision::Reject,
            status: 403,
            ..Default::default()
        };
        assert!(f.matches(&e));
        e.risk = 0.499;
        assert!(!f.matches(&e));
        e.risk = 0.9;
        e.path = "/ap".into();
        assert!(!f.matches(&e));
        assert!(Filters::default().matches(&e));
        assert!(Filters::default().is_empty());
        assert!(!f.is_empty());
    }

    #[test]
    fn rule_filter_takes_rule_ids_only_and_matches_exactly() {
        let id = "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0C";
        let f = Filters::parse(&FilterParams {
            rule: Some(id.into()),
            ..Default::default()
        })
        .expect("a rule id");
        let mut e = AccessLogEntry {
            rule: id.into(),
            ..Default::default()
        };
        assert!(f.matches(&e));
        assert!(f.may_match(&[("rule".into(), id.into())]));
        e.rule = String::new();
        assert!(!f.matches(&e));
        assert!(!f.may_match(&[]));
        for bad in [
            "",
            "rul_",
            "usr_01JDX3Q7Z5R8KX4W2M9T6V1B0C",
            "rul_01jdx3q7z5r8kx4w2m9t6v1b0c",
            "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0C\0",
        ] {
            refused(FilterParams {
                rule: Some(bad.into()),
                ..Default::default()
            });
        }
    }

    #[test]
    fn decision_flag_is_a_filter_value() {
        let f = Filters::parse(&FilterParams {
            decision: Some("FLAG".into()),
            ..Default::default()
        })
        .expect("flag is a decision");
        let mut e = AccessLogEntry {
            decision: Decision::Flag,
            ..Default::default()
        };
        assert!(f.matches(&e));
        e.decision = Decision::Reject;
        assert!(!f.matches(&e));
    }

    #[test]
    fn the_raw_pre_check_never_drops_a_match() {
        let filters: Vec<Filters> = [
            FilterParams::default(),
            FilterParams {
                ip: Some("::ffff:192.0.2.1".into()),
                ..Default::default()
            },
            FilterParams {
                risk_min: Some("0.5".into()),
                ..Default::default()
            },
            FilterParams {
                path: Some("/a".into()),
                country: Some("de".into()),
                ..Default::default()
            },
            FilterParams {
                status: Some("404".into()),
                ..Default::default()
            },
            FilterParams {
                method: Some("post".into()),
                ua_type: Some("bot".into()),
                ..Default::default()
            },
        ]
        .iter()
        .map(|p| Filters::parse(p).expect("valid"))
        .collect();
        let mut entries = Vec::new();
        for (i, ip) in ["192.0.2.1", "2001:db8::1", "10.0.0.1"]
            .into_iter()
            .enumerate()
        {
            for risk in [0.0, 0.5, 0.499, 1.0] {
                for status in [200, 404] {
                    entries.push(AccessLogEntry {
                        ip: ip.into(),
                        risk,
                        status,
                        path: if i == 0 { "/a/b".into() } else { "/b".into() },
                        country: if i == 1 { "DE".into() } else { String::new() },
                        method: if status == 404 {
                            "POST".into()
                        } else {
                            "GET".into()
                        },
                        ua_type: "bot".into(),
                        ..Default::default()
                    });
                }
            }
        }
        let mut matched = 0;
        for f in &filters {
            for e in &entries {
                let raw: Vec<(String, String)> = e
                    .to_fields()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                let decoded = to_item(("1-0".into(), raw.clone())).expect("decodes");
                assert_eq!(f.matches(&decoded.entry), f.matches(e));
                if f.matches(e) {
                    matched += 1;
                    assert!(f.may_match(&raw), "{f:?} dropped {e:?}");
                }
            }
        }
        assert!(matched > entries.len(), "the table must exercise matches");
        let only_risky = &filters[2];
        let calm = AccessLogEntry {
            risk: 0.1,
            ..Default::default()
        };
        let raw: Vec<(String, String)> = calm
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert!(!only_risky.may_match(&raw));
    }

    #[test]
    fn config_bounds_are_checked() {
        let ok = crate::config::AdminConfig::default();
        assert_eq!(validate_config(&ok), Ok(()));
        for (change, key) in [
            (
                (|c: &mut crate::config::AdminConfig| c.access_log_scan_budget = MAX_PAGE)
                    as fn(&mut crate::config::AdminConfig),
                "access_log_scan_budget",
            ),
            (
                |c| c.access_log_summary_max_entries = 0,
                "summary_max_entries",
            ),
            (|c| c.access_log_tail_block_ms = 99, "tail_block_ms"),
            (|c| c.access_log_tail_heartbeat_secs = 0, "heartbeat"),
            (|c| c.access_log_max_tails = 0, "max_tails"),
        ] {
            let mut c = ok.clone();
            change(&mut c);
            let err = validate_config(&c).expect_err(key);
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn ipv6_filter_matches_other_spellings() {
        let f = Filters::parse(&FilterParams {
            ip: Some("2001:DB8::1".into()),
            ..Default::default()
        })
        .expect("valid");
        let e = AccessLogEntry {
            ip: "2001:db8:0::1".into(),
            ..Default::default()
        };
        assert!(f.matches(&e));
    }
}
