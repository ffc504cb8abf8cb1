//! Per-minute rollups of the access log, kept beside the stream (issue 16).
//!
//! The proxy's log writer aggregates every batch per unix minute in memory and adds the totals
//! to Redis inside the same exactly-once script call that appends the batch, so a retried
//! batch is never counted twice. Per minute `M` there are three keys:
//!
//! - `<prefix>access:rollup:M` (hash): exact counts. Field `n` is the number of entries,
//!   `d:<decision>`, `s:<status class>` (`1xx` … `5xx`, `other`), `m:<method>`,
//!   `c:<country>` (`c:` alone is unknown), `u:<ua_type>` and `r:<0..9>` (risk bucket
//!   `[0, 0.1)` … `[0.9, 1]`) count entries by that value.
//! - `<prefix>access:rollup:M:ip` and `<prefix>access:rollup:M:path` (sorted sets): hits per
//!   client IP and per path. They are bounded: when one holds more than twice
//!   [`DEFAULT_TOP_KEEP`] members (the writer's `top_keep`), the least frequent are removed
//!   down to `top_keep`. Their counts are exact for every value of a minute with at most
//!   `2 × top_keep` distinct values; beyond that a value removed and seen again restarts from
//!   its later hits, so rare values are undercounted (frequent ones, the top lists, stay
//!   right).
//!
//! Every rollup key lives `[access_log] rollup_retention` (refreshed on each write).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::access_log::AccessLogEntry;

/// Field of the entry count.
pub const FIELD_TOTAL: &str = "n";
/// Prefix of the per-decision fields.
pub const FIELD_DECISION: &str = "d:";
/// Prefix of the per-status-class fields.
pub const FIELD_STATUS_CLASS: &str = "s:";
/// Prefix of the per-method fields.
pub const FIELD_METHOD: &str = "m:";
/// Prefix of the per-country fields.
pub const FIELD_COUNTRY: &str = "c:";
/// Prefix of the per-UA-type fields.
pub const FIELD_UA_TYPE: &str = "u:";
/// Prefix of the per-risk-bucket fields.
pub const FIELD_RISK: &str = "r:";

/// Members each top-list sorted set keeps after a trim (trimmed when it holds twice this).
pub const DEFAULT_TOP_KEEP: u64 = 1000;
/// Default `[access_log] rollup_retention`: 7 days.
pub const DEFAULT_ROLLUP_RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// `1xx` … `5xx`, or `other`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// The risk bucket 0..=9 of a score in [0, 1] (1.0 belongs to the last bucket).
pub fn risk_bucket(risk: f64) -> usize {
    if risk.is_nan() {
        return 0;
    }
    ((risk.clamp(0.0, 1.0) * 10.0) as usize).min(9)
}

/// The totals of one minute of one batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MinuteRollup {
    /// Hash field → increment (see the module docs).
    pub counts: BTreeMap<String, u64>,
    /// Client IP → hits.
    pub ips: BTreeMap<String, u64>,
    /// Path → hits.
    pub paths: BTreeMap<String, u64>,
}

impl MinuteRollup {
    /// Count one entry.
    pub fn add(&mut self, e: &AccessLogEntry) {
        // The key is built in a reused buffer and allocated only for a value new to the batch.
        fn bump(map: &mut BTreeMap<String, u64>, key: &mut String, prefix: &str, value: &str) {
            key.clear();
            key.push_str(prefix);
            key.push_str(value);
            match map.get_mut(key.as_str()) {
                Some(n) => *n += 1,
                None => {
                    map.insert(key.clone(), 1);
                }
            }
        }
        let key = &mut String::with_capacity(32);
        let counts = &mut self.counts;
        bump(counts, key, FIELD_TOTAL, "");
        bump(counts, key, FIELD_DECISION, e.decision.as_str());
        bump(counts, key, FIELD_STATUS_CLASS, status_class(e.status));
        bump(counts, key, FIELD_METHOD, &e.method);
        bump(counts, key, FIELD_COUNTRY, &e.country);
        bump(counts, key, FIELD_UA_TYPE, &e.ua_type);
        const BUCKETS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
        bump(counts, key, FIELD_RISK, BUCKETS[risk_bucket(e.risk)]);
        bump(&mut self.ips, key, "", &e.ip);
        bump(&mut self.paths, key, "", &e.path);
    }
}

/// The rollups of a batch, per unix minute (of each entry's `ts`).
pub fn aggregate<'a>(
    entries: impl IntoIterator<Item = &'a AccessLogEntry>,
) -> BTreeMap<u64, MinuteRollup> {
    let mut out: BTreeMap<u64, MinuteRollup> = BTreeMap::new();
    for e in entries {
        out.entry(e.ts / 60_000).or_default().add(e);
    }
    out
}

/// Parses a duration written as a whole number and a unit: `90s`, `90m`, `24h`, `7d`.
/// `None` for anything else (no unit, a fraction, a sign, spaces, 0 or an overflow).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let unit = text.chars().last()?;
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let secs = match unit {
        's' => n,
        'm' => n.checked_mul(60)?,
        'h' => n.checked_mul(3600)?,
        'd' => n.checked_mul(86_400)?,
        _ => return None,
    };
    // Milliseconds must fit a u64 for the MINID arithmetic.
    (1..=u64::MAX / 1000)
        .contains(&secs)
        .then(|| Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Decision;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        for bad in [
            "",
            "h",
            "24",
            "0h",
            "-1h",
            "1.5h",
            "24 h",
            "1w",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_batch_aggregates_per_minute() {
        let e = |ts: u64, ip: &str, status: u16, risk: f64, decision: Decision| AccessLogEntry {
            ts,
            ip: ip.into(),
            status,
            risk,
            decision,
            method: "GET".into(),
            path: "/a".into(),
            country: "DE".into(),
            ua_type: "browser".into(),
            ..Default::default()
        };
        let batch = [
            e(60_000, "1.1.1.1", 200, 0.0, Decision::Allow),
            e(60_001, "1.1.1.1", 404, 0.95, Decision::Reject),
            e(120_000, "2.2.2.2", 503, 1.0, Decision::Flag),
        ];
        let r = aggregate(&batch);
        assert_eq!(r.len(), 2);
        let m1 = &r[&1];
        assert_eq!(m1.counts["n"], 2);
        assert_eq!(m1.counts["d:allow"], 1);
        assert_eq!(m1.counts["d:reject"], 1);
        assert_eq!(m1.counts["s:2xx"], 1);
        assert_eq!(m1.counts["s:4xx"], 1);
        assert_eq!(m1.counts["r:0"], 1);
        assert_eq!(m1.counts["r:9"], 1);
        assert_eq!(m1.counts["c:DE"], 2);
        assert_eq!(m1.ips["1.1.1.1"], 2);
        assert_eq!(m1.paths["/a"], 2);
        assert_eq!(r[&2].counts["s:5xx"], 1);
        assert_eq!(r[&2].counts["r:9"], 1);
    }
}
