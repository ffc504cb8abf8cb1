//! Totals over a time window, for the operator dashboard, computed from one of two sources
//! (the answer's `source` says which):
//!
//! - `scan`: windows up to [`SCAN_MAX_WINDOW`] run `XREVRANGE key + <now - window>-0` in
//!   chunks, newest first, and stop after `max_entries`; `truncated` then says the window held
//!   more than was counted. Exact to the millisecond.
//! - `rollups`: longer windows, and short ones whose scan was truncated or reached entries
//!   already trimmed from the stream (when the rollups counted more), are summed from the
//!   per-minute rollups the proxies write beside the stream ([`watchpost_common::rollup`]),
//!   which outlive the raw entries (`[access_log] rollup_retention`). They cover whole
//!   minutes: from the start of the minute holding `now - window` (`from_id`) to now. The
//!   counts by decision, status class, method, UA type, country and risk bucket are exact; the
//!   top IP and path lists sum each minute's [`ROLLUP_TOP_PER_MINUTE`] most frequent values,
//!   so a value frequent over the window but never among a minute's most frequent is missed.
//!
//! A sharded log (`[access_log] shards`) is summed over every shard: the scan reads each shard
//! concurrently (each at most its share of `max_entries`), the rollups of every shard are
//! added up, minute by minute.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;
use utoipa::ToSchema;
use watchpost_common::rollup::{
    self, FIELD_COUNTRY, FIELD_DECISION, FIELD_METHOD, FIELD_RISK, FIELD_STATUS_CLASS, FIELD_TOTAL,
    FIELD_UA_TYPE,
};
use watchpost_common::{AccessKeys, AccessLogEntry};

use crate::{error::ApiError, state::AppState};

use super::{decode_entries, to_item};

/// Entries read per round trip.
const CHUNK: usize = 2000;
/// How many values the top lists hold.
pub const TOP_N: usize = 10;
/// Longest window answered by a scan; longer ones are answered from the rollups.
pub const SCAN_MAX_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Values read from each minute's top-IP and top-path rollups.
pub const ROLLUP_TOP_PER_MINUTE: usize = 100;
/// Minutes of rollups read per pipelined round trip.
const ROLLUP_CHUNK: u64 = 240;
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
    /// Oldest id the window covers: `<now - window>-0` for a scan, the start of that minute
    /// for rollups.
    pub from_id: String,
    /// What the totals were computed from: `scan` (the raw stream) or `rollups` (the
    /// per-minute rollups, whole minutes; see the module docs of `summary`).
    #[schema(example = "scan")]
    pub source: String,
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
        *s.by_status_class
            .entry(rollup::status_class(e.status).to_string())
            .or_default() += 1;
        *s.by_method.entry(e.method.to_string()).or_default() += 1;
        *s.by_ua_type.entry(e.ua_type.to_string()).or_default() += 1;
        s.risk_histogram[rollup::risk_bucket(e.risk)] += 1;
        *self.ips.entry(e.ip.clone()).or_default() += 1;
        *self.countries.entry(e.country.clone()).or_default() += 1;
        *self.paths.entry(e.path.clone()).or_default() += 1;
    }

    /// Adds another accumulator's counts (another shard's).
    pub fn merge(&mut self, other: Accumulator) {
        let (s, o) = (&mut self.summary, other.summary);
        s.scanned += o.scanned;
        for (mine, theirs) in [
            (&mut s.by_decision, o.by_decision),
            (&mut s.by_status_class, o.by_status_class),
            (&mut s.by_method, o.by_method),
            (&mut s.by_ua_type, o.by_ua_type),
        ] {
            for (k, n) in theirs {
                *mine.entry(k).or_default() += n;
            }
        }
        for (slot, n) in s.risk_histogram.iter_mut().zip(o.risk_histogram) {
            *slot += n;
        }
        for (mine, theirs) in [
            (&mut self.ips, other.ips),
            (&mut self.countries, other.countries),
            (&mut self.paths, other.paths),
        ] {
            for (k, n) in theirs {
                *mine.entry(k).or_default() += n;
            }
        }
    }

    /// The summary with its top lists.
    pub fn finish(mut self, window: Duration, from_id: String, truncated: bool) -> Summary {
        self.summary.window_secs = window.as_secs();
        self.summary.from_id = from_id;
        if self.summary.source.is_empty() {
            self.summary.source = "scan".into();
        }
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

/// Summarises the window `now_ms - window ..= now_ms` of the access log in `families`: windows
/// up to [`SCAN_MAX_WINDOW`] by a scan of at most `max_entries` (unless the scan was
/// truncated or reached trimmed entries and the rollups counted more), longer ones from the
/// rollups.
pub async fn summarize(
    state: &AppState,
    families: &[AccessKeys],
    window: Duration,
    now_ms: u64,
    max_entries: usize,
) -> Result<Summary, ApiError> {
    if window > SCAN_MAX_WINDOW {
        return summarize_rollups(state, families, window, now_ms).await;
    }
    let streams: Vec<String> = families.iter().map(AccessKeys::stream).collect();
    let scanned = summarize_scan(state, &streams, window, now_ms, max_entries).await?;
    let incomplete = scanned.truncated || {
        // Did a stream lose part of the window to trimming? Its first entry is then newer
        // than the window's start (while the rollups may still count the lost part).
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let start = now_ms.saturating_sub(window_ms);
        super::shards::first_ids(state, &streams)
            .await?
            .into_iter()
            .any(|first| first.is_none_or(|f| f.ms > start))
    };
    if incomplete {
        let rolled = summarize_rollups(state, families, window, now_ms).await?;
        if rolled.scanned > scanned.scanned {
            return Ok(rolled);
        }
    }
    Ok(scanned)
}

/// Sums the rollups of every minute from the one holding `now_ms - window` to `now_ms`.
pub async fn summarize_rollups(
    state: &AppState,
    families: &[AccessKeys],
    window: Duration,
    now_ms: u64,
) -> Result<Summary, ApiError> {
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    let first = now_ms.saturating_sub(window_ms) / 60_000;
    let last = now_ms / 60_000;
    let mut summary = Summary {
        window_secs: window.as_secs(),
        from_id: format!("{}-0", first.saturating_mul(60_000)),
        source: "rollups".into(),
        ..Summary::default()
    };
    let mut countries: HashMap<String, u64> = HashMap::new();
    let mut ips: HashMap<String, u64> = HashMap::new();
    let mut paths: HashMap<String, u64> = HashMap::new();
    let mut minute = first;
    while minute <= last {
        let end = last.min(minute.saturating_add(ROLLUP_CHUNK - 1));
        // One pipeline per shard (its keys share a slot), all shards concurrently.
        let reads = families.iter().map(|keys| {
            let mut pipe = redis::pipe();
            for m in minute..=end {
                pipe.cmd("HGETALL").arg(keys.rollup(m));
                for key in [keys.rollup_ips(m), keys.rollup_paths(m)] {
                    pipe.cmd("ZRANGE")
                        .arg(key)
                        .arg(0)
                        .arg(ROLLUP_TOP_PER_MINUTE - 1)
                        .arg("REV")
                        .arg("WITHSCORES");
                }
            }
            let mut con = state.redis();
            async move {
                state
                    .redis_timeout(pipe.query_async::<Vec<redis::Value>>(&mut con))
                    .await
            }
        });
        let replies: Vec<redis::Value> = futures::future::try_join_all(reads)
            .await?
            .into_iter()
            .flatten()
            .collect();
        type Minute = (HashMap<String, u64>, Vec<(String, f64)>, Vec<(String, f64)>);
        let bad = |e: redis::ParsingError| {
            ApiError::unavailable(format!("redis: unreadable access-log rollup: {e}"))
        };
        for chunk in replies.chunks(3) {
            let parsed: Minute = match chunk {
                [h, i, p] => (
                    redis::from_redis_value(h.clone()).map_err(bad)?,
                    redis::from_redis_value(i.clone()).map_err(bad)?,
                    redis::from_redis_value(p.clone()).map_err(bad)?,
                ),
                _ => continue,
            };
            let (counts, top_ips, top_paths) = parsed;
            for (field, n) in counts {
                add_field(&mut summary, &mut countries, &field, n);
            }
            for (v, n) in top_ips {
                *ips.entry(v).or_default() += n.max(0.0) as u64;
            }
            for (v, n) in top_paths {
                *paths.entry(v).or_default() += n.max(0.0) as u64;
            }
        }
        minute = end + 1;
    }
    summary.top_ips = top(ips);
    summary.top_countries = top(countries);
    summary.top_paths = top(paths);
    Ok(summary)
}

/// Adds one rollup hash field to the totals.
fn add_field(s: &mut Summary, countries: &mut HashMap<String, u64>, field: &str, n: u64) {
    if field == FIELD_TOTAL {
        s.scanned += n;
    } else if let Some(v) = field.strip_prefix(FIELD_DECISION) {
        *s.by_decision.entry(v.to_string()).or_default() += n;
    } else if let Some(v) = field.strip_prefix(FIELD_STATUS_CLASS) {
        *s.by_status_class.entry(v.to_string()).or_default() += n;
    } else if let Some(v) = field.strip_prefix(FIELD_METHOD) {
        *s.by_method.entry(v.to_string()).or_default() += n;
    } else if let Some(v) = field.strip_prefix(FIELD_UA_TYPE) {
        *s.by_ua_type.entry(v.to_string()).or_default() += n;
    } else if let Some(v) = field.strip_prefix(FIELD_COUNTRY) {
        *countries.entry(v.to_string()).or_default() += n;
    } else if let Some(v) = field.strip_prefix(FIELD_RISK) {
        if let Ok(b) = v.parse::<usize>() {
            if let Some(slot) = s.risk_histogram.get_mut(b) {
                *slot += n;
            }
        }
    }
}

/// Summarises the newest entries of `streams` (the shards) newer than `now_ms - window`, at
/// most `max_entries` in all: each shard is scanned concurrently, up to its share.
pub async fn summarize_scan(
    state: &AppState,
    streams: &[String],
    window: Duration,
    now_ms: u64,
    max_entries: usize,
) -> Result<Summary, ApiError> {
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    let from_id = format!("{}-0", now_ms.saturating_sub(window_ms));
    let share = max_entries.div_ceil(streams.len().max(1)).max(1);
    let scans = futures::future::try_join_all(
        streams
            .iter()
            .map(|key| scan_stream(state, key, &from_id, share)),
    )
    .await?;
    let mut acc = Accumulator::default();
    let mut truncated = false;
    for (one, cut) in scans {
        acc.merge(one);
        truncated |= cut;
    }
    Ok(acc.finish(window, from_id, truncated))
}

/// Counts the newest entries of one stream down to `from_id`, at most `max_entries`; true
/// when the stream held more in the window.
async fn scan_stream(
    state: &AppState,
    key: &str,
    from_id: &str,
    max_entries: usize,
) -> Result<(Accumulator, bool), ApiError> {
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
                        .arg(from_id)
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
                    .arg(from_id)
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
    Ok((acc, truncated))
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
