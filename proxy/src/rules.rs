//! Gateway rules in the proxy: walking the config's compiled rules for one request, the state
//! kept beside them (each `rate_limit` rule's per-client windows, each rule's hit count), and
//! the task that flushes the hit counts to Redis.
//!
//! The request path never waits: the state is swapped in with an `ArcSwap` when a request
//! first sees a new config (rebuilt under a lock that only such a first request takes); rate
//! windows are count-min sketches of atomics; hits are atomic counters that the flush task
//! (every second, on the control runtime) drains into Redis.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora_limits::estimator::Estimator;
use redis::Script;
use tokio::sync::watch;
use watchpost_common::keys::MINUTE_COUNTER_TTL_SECS;
use watchpost_common::rules::{CompiledRule, CompiledRules, RuleAction, RuleRate, RuleRequest};
use watchpost_common::{Keys, RedisConn, RedisTarget};

use crate::access_log::{lazy_connection, wait_true};
use crate::live_config::LiveConfig;
use crate::metrics::Metrics;

/// How often hit counts go to Redis.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Memory all `rate_limit` rules' sketches of one config may take together (a sketch is only
/// allocated when its rule first matches). More rules: smaller sketches, down to
/// [`MIN_SLOTS`].
const RATE_BUDGET_BYTES: usize = 64 << 20;
const RATE_HASHES: usize = 4;
const MIN_SLOTS: usize = 256;
const MAX_SLOTS: usize = 16_384;

/// `last_hit` = max(stored, given): several proxies report, and their flushes interleave.
const LAST_HIT_SCRIPT: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local new = tonumber(ARGV[1])
if new > cur then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 0
";

/// What the rules decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No rule matched.
    None,
    /// Only `log_only` rules (or `rate_limit` rules within their rate) matched: the request
    /// goes on to risk scoring, tagged with the first `log_only` rule.
    Tagged(Arc<str>),
    /// A `block` rule: 403.
    Block(Arc<str>),
    /// An `allow` rule: no risk scoring.
    Allow(Arc<str>),
    /// A `rate_limit` rule past its rate: 429, retry after this many seconds (>= 1).
    RateLimited(Arc<str>, u64),
}

impl Verdict {
    /// The rule an access-log entry names.
    pub fn rule(&self) -> Option<&Arc<str>> {
        match self {
            Verdict::None => None,
            Verdict::Tagged(id)
            | Verdict::Block(id)
            | Verdict::Allow(id)
            | Verdict::RateLimited(id, _) => Some(id),
        }
    }
}

/// Hits of one rule not yet flushed.
struct Hits {
    id: Arc<str>,
    action: RuleAction,
    pending: AtomicU64,
    /// Milliseconds since the Unix epoch of the latest hit.
    last_ms: AtomicU64,
}

impl Hits {
    fn new(rule: &CompiledRule) -> Self {
        Self {
            id: rule.id.clone(),
            action: rule.action,
            pending: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    fn hit(&self, now_ms: u64) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.last_ms.fetch_max(now_ms, Ordering::Relaxed);
    }
}

/// One `rate_limit` rule's requests per client in fixed windows of `window_secs` (aligned to
/// the Unix epoch, so every proxy's windows end at the same moments).
///
/// Two sketches alternate: the one of window `w` is `sketches[w % 2]`, keyed by (client, w);
/// whoever moves the window on to `w` clears the other one, which window `w + 1` will use.
/// Estimates only ever err upwards (on collisions), never below the true count.
struct FixedWindow {
    rate: RuleRate,
    window_ms: u64,
    current: AtomicU64,
    sketches: [Estimator; 2],
}

impl FixedWindow {
    fn new(rate: RuleRate, slots: usize) -> Self {
        Self {
            rate,
            window_ms: rate.window_secs.max(1).saturating_mul(1000),
            current: AtomicU64::new(0),
            sketches: [
                Estimator::new(RATE_HASHES, slots),
                Estimator::new(RATE_HASHES, slots),
            ],
        }
    }

    /// Count one request of `key`; past the rate, the whole seconds to the window's end.
    fn observe(&self, key: impl Hash, now_ms: u64) -> Option<u64> {
        let w = now_ms / self.window_ms;
        let seen = self.current.load(Ordering::Acquire);
        if w > seen
            && self
                .current
                .compare_exchange(seen, w, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            if w > seen + 1 {
                // Windows passed without a request: this one's sketch holds an older window.
                self.sketches[(w % 2) as usize].reset();
            }
            self.sketches[((w + 1) % 2) as usize].reset();
        }
        let count = self.sketches[(w % 2) as usize].incr((key, w), 1);
        if u64::try_from(count).unwrap_or(0) <= self.rate.requests {
            return None;
        }
        let end = w.saturating_add(1).saturating_mul(self.window_ms);
        Some(end.saturating_sub(now_ms).div_ceil(1000).max(1))
    }
}

/// A rule's state, carried over to the next config while the rule is in it.
struct Slot {
    /// Carried while the id and action stay.
    hits: Arc<Hits>,
    /// `rate_limit` rules only; carried while the id and rate stay. Allocated when first used.
    window: Option<Arc<OnceLock<FixedWindow>>>,
}

/// The state of one config's rules, in the order of `rules.rules()`.
struct RuleState {
    rules: Arc<CompiledRules>,
    version: u64,
    slots: Vec<Slot>,
    by_id: HashMap<Arc<str>, usize>,
    /// Sketch size for windows allocated under this config.
    slots_per_sketch: usize,
}

impl RuleState {
    fn empty() -> Self {
        Self {
            rules: Arc::default(),
            version: 0,
            slots: Vec::new(),
            by_id: HashMap::new(),
            slots_per_sketch: MIN_SLOTS,
        }
    }

    fn build(rules: Arc<CompiledRules>, version: u64, prev: &RuleState) -> Self {
        let rate_rules = rules
            .rules()
            .iter()
            .filter(|r| r.action == RuleAction::RateLimit)
            .count()
            .max(1);
        let slots_per_sketch =
            (RATE_BUDGET_BYTES / (rate_rules * 2 * RATE_HASHES * 8)).clamp(MIN_SLOTS, MAX_SLOTS);
        let mut by_id = HashMap::with_capacity(rules.rules().len());
        let slots = rules
            .rules()
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                by_id.insert(rule.id.clone(), i);
                let old = prev.by_id.get(&rule.id).and_then(|&j| prev.slots.get(j));
                let hits = match old {
                    Some(o) if o.hits.action == rule.action => o.hits.clone(),
                    _ => Arc::new(Hits::new(rule)),
                };
                let window = (rule.action == RuleAction::RateLimit).then(|| {
                    old.and_then(|o| o.window.as_ref())
                        .filter(|w| w.get().is_none_or(|w| Some(w.rate) == rule.rate))
                        .cloned()
                        .unwrap_or_default()
                });
                Slot { hits, window }
            })
            .collect();
        Self {
            rules,
            version,
            slots,
            by_id,
            slots_per_sketch,
        }
    }
}

/// The rules' state for the config in force, shared by the request path and the flush task.
pub struct RuleRuntime {
    state: ArcSwap<RuleState>,
    /// Held only while a new state is built.
    rebuild: Mutex<()>,
}

impl Default for RuleRuntime {
    fn default() -> Self {
        Self {
            state: ArcSwap::from_pointee(RuleState::empty()),
            rebuild: Mutex::new(()),
        }
    }
}

impl std::fmt::Debug for RuleRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.load();
        f.debug_struct("RuleRuntime")
            .field("version", &s.version)
            .field("rules", &s.slots.len())
            .finish()
    }
}

impl RuleRuntime {
    /// Walk `rules` (of config `version`) for `req` at `now_ms`: the first deciding rule wins;
    /// a `rate_limit` rule counts the client (`rate_key`, see `watchpost_risk::rate_key`) and
    /// decides only past its rate. Counts one hit for the rule that decides or tags.
    pub fn evaluate(
        &self,
        rules: &Arc<CompiledRules>,
        version: u64,
        req: &RuleRequest<'_>,
        now_ms: u64,
        rate_key: u128,
    ) -> Verdict {
        let state = self.state_for(rules, version, false);
        // A request still holding an older config than the state's (a config arrived while it
        // was on its way) finds its rules' state by id.
        let fresh = Arc::ptr_eq(&state.rules, rules);
        let slot = |i: usize, rule: &CompiledRule| -> Option<&Slot> {
            if fresh {
                state.slots.get(i)
            } else {
                state.by_id.get(&rule.id).and_then(|&j| state.slots.get(j))
            }
        };
        let hit = |s: Option<&Slot>| {
            if let Some(s) = s {
                s.hits.hit(now_ms);
            }
        };
        let mut tag: Option<(usize, &CompiledRule)> = None;
        for (i, rule) in rules.matching_indexed(req, now_ms) {
            match rule.action {
                RuleAction::Block => {
                    hit(slot(i, rule));
                    return Verdict::Block(rule.id.clone());
                }
                RuleAction::Allow => {
                    hit(slot(i, rule));
                    return Verdict::Allow(rule.id.clone());
                }
                RuleAction::RateLimit => {
                    let (Some(s), Some(rate)) = (slot(i, rule), rule.rate) else {
                        continue;
                    };
                    let Some(window) = &s.window else { continue };
                    let window =
                        window.get_or_init(|| FixedWindow::new(rate, state.slots_per_sketch));
                    if let Some(retry_after) = window.observe(rate_key, now_ms) {
                        s.hits.hit(now_ms);
                        return Verdict::RateLimited(rule.id.clone(), retry_after);
                    }
                }
                RuleAction::LogOnly => {
                    if tag.is_none() {
                        tag = Some((i, rule));
                    }
                }
            }
        }
        match tag {
            Some((i, rule)) => {
                hit(slot(i, rule));
                Verdict::Tagged(rule.id.clone())
            }
            None => Verdict::None,
        }
    }

    /// The state of `rules`, built from the current one when `rules` is another config's
    /// (unless that config is older than the state's and `always` is false: a request still
    /// holding the previous config must not swap the state back).
    fn state_for(
        &self,
        rules: &Arc<CompiledRules>,
        version: u64,
        always: bool,
    ) -> arc_swap::Guard<Arc<RuleState>> {
        let keep = |s: &RuleState| Arc::ptr_eq(&s.rules, rules) || (!always && version < s.version);
        let state = self.state.load();
        if keep(&state) {
            return state;
        }
        drop(state);
        let _one = self.rebuild.lock().unwrap_or_else(PoisonError::into_inner);
        let state = self.state.load();
        if keep(&state) {
            return state;
        }
        let next = RuleState::build(rules.clone(), version, &state);
        self.state.store(Arc::new(next));
        self.state.load()
    }

    /// Make the state that of `rules` (config `version`, the one applied, even when its
    /// version is lower than the state's). The flush task does this every second, so that
    /// requests seldom have to and a config without rules drops the old state.
    pub fn sync(&self, rules: &Arc<CompiledRules>, version: u64) {
        drop(self.state_for(rules, version, true));
    }

    /// Take every rule's unflushed hits: (id, action, hits, latest hit in ms).
    fn drain(&self) -> Vec<Hit> {
        let state = self.state.load();
        let mut out = Vec::new();
        for s in &state.slots {
            let n = s.hits.pending.swap(0, Ordering::Relaxed);
            if n > 0 {
                let last = s.hits.last_ms.load(Ordering::Relaxed);
                out.push((s.hits.id.clone(), s.hits.action, n, last));
            }
        }
        out
    }

    /// The ids of the rules in the state.
    fn ids(&self) -> HashSet<Arc<str>> {
        self.state.load().by_id.keys().cloned().collect()
    }
}

/// Hits of one rule since the last flush: (rule id, action, count, last hit in ms).
type Hit = (Arc<str>, RuleAction, u64, u64);

/// Flush hit counts to Redis every [`FLUSH_EVERY`] until shutdown, then once more; bring the
/// rules' state up to the config in force each time.
pub async fn flush_hits(
    runtime: Arc<RuleRuntime>,
    live: Arc<LiveConfig>,
    redis: RedisTarget,
    keys: Keys,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn = match lazy_connection(&redis) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(error = %e, "rules: bad Redis URL; rule hits are not counted in Redis");
            None
        }
    };
    let mut flusher = Flusher {
        keys,
        metrics,
        script: Script::new(LAST_HIT_SCRIPT),
        labelled: HashSet::new(),
    };
    loop {
        let stop = tokio::select! {
            _ = wait_true(&mut shutdown) => true,
            _ = tokio::time::sleep(FLUSH_EVERY) => false,
        };
        flusher.flush(&runtime, &live, conn.as_mut()).await;
        if stop {
            return;
        }
    }
}

struct Flusher {
    keys: Keys,
    metrics: Metrics,
    script: Script,
    /// `rule_hits_total` label sets exported so far.
    labelled: HashSet<(Arc<str>, RuleAction)>,
}

impl Flusher {
    async fn flush(
        &mut self,
        runtime: &RuleRuntime,
        config: &LiveConfig,
        conn: Option<&mut RedisConn>,
    ) {
        let hits = runtime.drain();
        let current = config.current();
        runtime.sync(&current.compiled_rules, current.version);
        let live = runtime.ids();
        for (id, action, n, _) in &hits {
            self.metrics
                .rule_hits
                .with_label_values(&[id, action.as_str()])
                .inc_by(*n);
            self.labelled.insert((id.clone(), *action));
        }
        // Series of rules no longer in the config go (bounded by the config's rules).
        let metrics = &self.metrics;
        self.labelled.retain(|(id, action)| {
            let keep = live.contains(id);
            if !keep {
                let _ = metrics
                    .rule_hits
                    .remove_label_values(&[id, action.as_str()]);
            }
            keep
        });
        let (Some(conn), false) = (conn, hits.is_empty()) else {
            return;
        };
        let minute = crate::gateway::now_ms() / 60_000;
        let written = if conn.is_cluster() {
            self.write_per_rule(conn, &hits, minute).await
        } else {
            self.write_pipelined(conn, &hits, minute).await
        };
        if let Err(e) = written {
            let dropped: u64 = hits.iter().map(|h| h.2).sum();
            self.metrics.rule_hits_flush_errors.inc();
            tracing::warn!(error = %e, dropped, "rules: writing hit counts to Redis failed");
        }
    }

    /// One node: every rule's counters and last hit in one pipeline.
    async fn write_pipelined(
        &self,
        conn: &mut RedisConn,
        hits: &[Hit],
        minute: u64,
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.load_script(&self.script).ignore();
        for (id, _, n, last_ms) in hits {
            let key = self.keys.rule_hits_in_minute(id, minute);
            pipe.incr(&key, *n)
                .ignore()
                .expire(&key, MINUTE_COUNTER_TTL_SECS as i64)
                .ignore()
                .invoke_script(self.script.key(self.keys.rule_last_hit(id)).arg(*last_ms))
                .ignore();
        }
        pipe.query_async::<()>(conn).await
    }

    /// A cluster: a rule's minute counter and its last hit live in different slots, and a
    /// pipeline may only touch one, so each goes on its own (a handful of rules per flush).
    async fn write_per_rule(
        &self,
        conn: &mut RedisConn,
        hits: &[Hit],
        minute: u64,
    ) -> redis::RedisResult<()> {
        for (id, _, n, last_ms) in hits {
            let key = self.keys.rule_hits_in_minute(id, minute);
            redis::pipe()
                .incr(&key, *n)
                .ignore()
                .expire(&key, MINUTE_COUNTER_TTL_SECS as i64)
                .ignore()
                .query_async::<()>(conn)
                .await?;
            self.script
                .key(self.keys.rule_last_hit(id))
                .arg(*last_ms)
                .invoke_async::<()>(conn)
                .await?;
        }
        Ok(())
    }
}

/// The per-client key rate windows count under (IPv6 clients by /64).
pub fn client_key(ip: IpAddr) -> u128 {
    watchpost_risk::rate_key(ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use watchpost_common::rules::{RuleDoc, RuleMatch};

    fn doc(id: &str, action: &str, rate: Option<RuleRate>) -> RuleDoc {
        RuleDoc {
            id: id.into(),
            action: action.into(),
            match_: RuleMatch {
                cidrs: vec!["10.0.0.0/8".into()],
                ..RuleMatch::default()
            },
            rate,
            priority: 0,
            enabled: true,
            expires_at_ms: None,
            reason: String::new(),
        }
    }

    const A: &str = "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0A";
    const B: &str = "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0B";
    const C: &str = "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0C";

    fn req(ip: &str) -> RuleRequest<'static> {
        RuleRequest {
            ip: ip.parse().expect("ip"),
            country: "",
            path: "/",
            host: "",
            method: "GET",
            ua_type: "browser",
        }
    }

    fn rate(requests: u64, window_secs: u64) -> Option<RuleRate> {
        Some(RuleRate {
            requests,
            window_secs,
        })
    }

    #[test]
    fn a_fixed_window_limits_past_its_rate_until_the_window_ends() {
        let w = FixedWindow::new(
            RuleRate {
                requests: 2,
                window_secs: 10,
            },
            MIN_SLOTS,
        );
        let t = 1_000_000_000_000; // a window boundary
        assert_eq!(w.observe(1u128, t), None);
        assert_eq!(w.observe(1u128, t + 1), None);
        assert_eq!(w.observe(1u128, t + 2_500), Some(8));
        assert_eq!(w.observe(1u128, t + 9_999), Some(1));
        // Another client has its own count.
        assert_eq!(w.observe(2u128, t + 9_999), None);
        // The next window starts from zero, and so does one after idle windows.
        assert_eq!(w.observe(1u128, t + 10_000), None);
        assert_eq!(w.observe(1u128, t + 10_001), None);
        assert_eq!(w.observe(1u128, t + 10_002), Some(10));
        assert_eq!(w.observe(1u128, t + 50_000), None);
    }

    #[test]
    fn the_first_deciding_rule_wins_and_log_only_tags() {
        let rt = RuleRuntime::default();
        let mut log = doc(A, "log_only", None);
        log.priority = 0;
        let mut limit = doc(B, "rate_limit", rate(1, 60));
        limit.priority = 1;
        let mut block = doc(C, "block", None);
        block.priority = 2;
        block.match_.methods = vec!["POST".into()];
        let rules = Arc::new(CompiledRules::compile(&[log, limit, block]));
        let now = 1_800_000_000_000; // a minute boundary
        let r = req("10.1.2.3");
        // Within the rate: nothing decides, the log_only rule tags.
        assert_eq!(
            rt.evaluate(&rules, 1, &r, now, client_key(r.ip)),
            Verdict::Tagged(A.into())
        );
        assert_eq!(
            rt.evaluate(&rules, 1, &r, now, client_key(r.ip)),
            Verdict::RateLimited(B.into(), 60)
        );
        let mut post = req("10.1.2.4");
        post.method = "POST";
        // The rate_limit rule decides nothing within the rate; the block rule after it does.
        assert_eq!(
            rt.evaluate(&rules, 1, &post, now, client_key(post.ip)),
            Verdict::Block(C.into())
        );
        assert_eq!(
            rt.evaluate(&rules, 1, &req("192.0.2.1"), now, 7),
            Verdict::None
        );
        let mut hits: Vec<_> = rt
            .drain()
            .into_iter()
            .map(|(id, _, n, _)| (id, n))
            .collect();
        hits.sort();
        assert_eq!(hits, vec![(A.into(), 1), (B.into(), 1), (C.into(), 1)]);
        assert_eq!(rt.ids().len(), 3);
        assert!(rt.drain().is_empty(), "drained hits are gone");
        // A config without rules, applied by the flush task, drops the state, even with a
        // lower version (a config from the file after one from Redis).
        rt.sync(&Arc::default(), 0);
        assert!(rt.ids().is_empty());
    }

    #[test]
    fn rate_windows_survive_a_new_config_while_the_rule_and_rate_stay() {
        let rt = RuleRuntime::default();
        let now = 1_000_000_000_000;
        let r = req("10.0.0.1");
        let key = client_key(r.ip);
        let v1 = Arc::new(CompiledRules::compile(&[doc(B, "rate_limit", rate(1, 60))]));
        assert_eq!(rt.evaluate(&v1, 1, &r, now, key), Verdict::None);
        // Same rule, same rate, another config version: the count goes on.
        let mut other = doc(A, "block", None);
        other.match_.cidrs = vec!["192.0.2.0/24".into()];
        let v2 = Arc::new(CompiledRules::compile(&[
            doc(B, "rate_limit", rate(1, 60)),
            other,
        ]));
        assert!(matches!(
            rt.evaluate(&v2, 2, &r, now, key),
            Verdict::RateLimited(..)
        ));
        // A request still holding version 1 uses the version-2 state by id.
        assert!(matches!(
            rt.evaluate(&v1, 1, &r, now, key),
            Verdict::RateLimited(..)
        ));
        // Another rate: counting starts again.
        let v3 = Arc::new(CompiledRules::compile(&[doc(B, "rate_limit", rate(2, 60))]));
        assert_eq!(rt.evaluate(&v3, 3, &r, now, key), Verdict::None);
        assert_eq!(rt.evaluate(&v3, 3, &r, now, key), Verdict::None);
        assert!(matches!(
            rt.evaluate(&v3, 3, &r, now, key),
            Verdict::RateLimited(..)
        ));
        // Hits carried across versions: 2 under v2/v1 plus 1 under v3.
        assert_eq!(rt.drain().iter().map(|h| h.2).sum::<u64>(), 3);
    }

    #[test]
    fn expired_rules_stop_applying() {
        let rt = RuleRuntime::default();
        let mut block = doc(C, "block", None);
        block.expires_at_ms = Some(2_000);
        let rules = Arc::new(CompiledRules::compile(&[block]));
        let r = req("10.9.9.9");
        assert_eq!(
            rt.evaluate(&rules, 1, &r, 1_999, 0),
            Verdict::Block(C.into())
        );
        assert_eq!(rt.evaluate(&rules, 1, &r, 2_000, 0), Verdict::None);
    }
}
