//! Totals over the newest entries of a time window, for the operator dashboard.
//!
//! The scan runs `XREVRANGE key + <now - window>-0` in chunks, newest first, and stops after
//! `max_entries`; `truncated` then says the window held more than was counted.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;
use utoipa::ToSchema;
use watchpost_common::AccessLogEntry;

use crate::{error::ApiError, state::AppState};

use super::{decode_entries, to_item};

/// Entries read per round trip.
const CHUNK: usize = 2000;
/// How many values the top lists hold.
pub const TOP_N: usize = 10;
/// Longest accepted window.
pub const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// Parses `30s`, `15m`, `1h`, `24h`, `7d` (1 s ..= 7 d).
pub fn parse_window(text: &str) -> Option<Duration> {
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
    let d = Duration::from_secs(secs);
    (secs >= 1 && d <= MAX_WINDOW).then_some(d)
}

/// One value of a top list.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Count {
    pub value: String,
    pub count: u64,
}

/// The summary of one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct Summary {
    /// The window in seconds.
    pub window_secs: u64,
    /// Oldest id the window covers (`<now - window>-0`).
    pub from_id: String,
    /// Entries counted.
    pub scanned: u64,
    /// True when the window held more than `[admin] access_log_summary_max_entries` entries;
    /// the totals then cover only the newest ones.
    pub truncated: bool,
    /// `allow` / `reject` / `flag`.
    pub by_decision: BTreeMap<String, u64>,
    /// `1xx` … `5xx`.
    pub by_status_class: BTreeMap<String, u64>,
    pub by_method: BTreeMap<String, u64>,
    pub by_ua_type: BTreeMap<String, u64>,
    /// Most frequent client IPs, most first (ties by value).
    pub top_ips: Vec<Count>,
    /// Most frequent countries (`""` is unknown).
    pub top_countries: Vec<Count>,
    pub top_paths: Vec<Count>,
    /// Ten buckets over [0, 1]: `[0, 0.1)`, …, `[0.9, 1]`.
    pub risk_histogram: [u64; 10],
}

/// Running totals.
#[derive(Debug, Default)]
pub struct Accumulator {
    summary: Summary,
    ips: HashMap<String, u64>,
    countries: HashMap<String, u64>,
    paths: HashMap<String, u64>,
}

impl Accumulator {
    /// Counts one entry.
    pub fn add(&mut self, e: &AccessLogEntry) {
        let s = &mut self.summary;
        s.scanned += 1;
        *s.by_decision
            .entry(e.decision.as_str().to_string())
            .or_default() += 1;
        let class = match e.status {
            100..=599 => format!("{}xx", e.status / 100),
            _ => "other".to_string(),
        };
        *s.by_status_class.entry(class).or_default() += 1;
        *s.by_method.entry(e.method.clone()).or_default() += 1;
        *s.by_ua_type.entry(e.ua_type.clone()).or_default() += 1;
        // Scores are in [0, 1]; 1.0 belongs to the last bucket.
        let bucket = ((e.risk.clamp(0.0, 1.0) * 10.0) as usize).min(9);
        s.risk_histogram[bucket] += 1;
        *self.ips.entry(e.ip.clone()).or_default() += 1;
        *self.countries.entry(e.country.clone()).or_default() += 1;
        *self.paths.entry(e.path.clone()).or_default() += 1;
    }

    /// The summary with its top lists.
    pub fn finish(mut self, window: Duration, from_id: String, truncated: bool) -> Summary {
        self.summary.window_secs = window.as_secs();
        self.summary.from_id = from_id;
        self.summary.truncated = truncated;
        self.summary.top_ips = top(self.ips);
        self.summary.top_countries = top(self.countries);
        self.summary.top_paths = top(self.paths);
        self.summary
    }
}

fn top(counts: HashMap<String, u64>) -> Vec<Count> {
    let mut all: Vec<Count> = counts
        .into_iter()
        .map(|(value, count)| Count { value, count })
        .collect();
    all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
    all.truncate(TOP_N);
    all
}

/// Summarises the newest entries of `key` newer than `now_ms - window`, at most `max_entries`.
pub async fn summarize(
    state: &AppState,
    key: &str,
    window: Duration,
    now_ms: u64,
    max_entries: usize,
) -> Result<Summary, ApiError> {
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    let from_id = format!("{}-0", now_ms.saturating_sub(window_ms));
    let mut acc = Accumulator::default();
    let mut upper = "+".to_string();
    let mut con = state.redis();
    let mut read = 0usize;
    let mut truncated = false;
    loop {
        let left = max_entries - read;
        if left == 0 {
            // Full: the window holds more only if something older than the last entry
            // read is still inside it.
            let more: redis::Value = state
                .redis_timeout(
                    redis::cmd("XREVRANGE")
                        .arg(key)
                        .arg(&upper)
                        .arg(&from_id)
                        .arg("COUNT")
                        .arg(1)
                        .query_async(&mut con),
                )
                .await?;
            truncated = !decode_entries(more)?.is_empty();
            break;
        }
        let count = left.min(CHUNK);
        let reply: redis::Value = state
            .redis_timeout(
                redis::cmd("XREVRANGE")
                    .arg(key)
                    .arg(&upper)
                    .arg(&from_id)
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut con),
            )
            .await?;
        let raw = decode_entries(reply)?;
        let got = raw.len();
        read += got;
        let last = raw.last().map(|(id, _)| id.clone());
        for entry in raw {
            if let Some(item) = to_item(entry) {
                acc.add(&item.entry);
            }
        }
        match last {
            Some(id) if got == count => upper = format!("({id}"),
            _ => break,
        }
    }
    Ok(acc.finish(window, from_id, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;
    use watchpost_common::Decision;

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_window("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_window("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_window("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_window("7d"), Some(MAX_WINDOW));
        for bad in [
            "",
            "15",
            "m",
            "0s",
            "8d",
            "1.5h",
            "-1h",
            "15M",
            "1w",
            "15 m",
            "99999999999999999999h",
        ] {
            assert_eq!(parse_window(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn totals_and_tops() {
        let mut acc = Accumulator::default();
        let e = |ip: &str, status: u16, risk: f64, decision: Decision| AccessLogEntry {
            ip: ip.into(),
            status,
            risk,
            decision,
            method: "GET".into(),
            path: "/".into(),
            ua_type: "browser".into(),
            ..Default::default()
        };
        acc.add(&e("1.1.1.1", 200, 0.0, Decision::Allow));
        acc.add(&e("1.1.1.1", 404, 0.95, Decision::Allow));
        acc.add(&e("2.2.2.2", 403, 1.0, Decision::Reject));
        let s = acc.finish(Duration::from_secs(60), "0-0".into(), false);
        assert_eq!(s.scanned, 3);
        assert_eq!(s.by_decision["allow"], 2);
        assert_eq!(s.by_decision["reject"], 1);
        assert_eq!(s.by_status_class["4xx"], 2);
        assert_eq!(s.risk_histogram[0], 1);
        assert_eq!(s.risk_histogram[9], 2);
        assert_eq!(
            s.top_ips,
            vec![
                Count {
                    value: "1.1.1.1".into(),
                    count: 2
                },
                Count {
                    value: "2.2.2.2".into(),
                    count: 1
                }
            ]
        );
    }
}
