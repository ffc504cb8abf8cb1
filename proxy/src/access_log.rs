//! The access-log pipeline (SPEC §5): a bounded in-memory buffer filled by the request path and
//! drained into the Redis Stream by one writer task.
//!
//! Pingora awaits the `logging` phase before it reuses a keep-alive connection, so the request
//! path only ever calls [`LogSink::push`], which never waits: it redacts the secret query
//! parameters (`[access_log] redact_query_params`), then enqueues the entry with `try_send`.
//!
//! Delivery: every batch goes out exactly once. The [`LogWriter`] owns its Redis connection and
//! sends each batch as one call of [`APPEND_SCRIPT`] (`EVALSHA`, loading the script when Redis
//! does not know it): the batch carries this proxy's `proxy_id` and a batch sequence number, and
//! the script appends the batch (one `XADD` per entry, `<fields in fixed order>` under contiguous
//! ids of one millisecond, then `XTRIM MAXLEN ~ N`, the index postings and the per-minute
//! request and reject counters) only if the sequence is above the proxy's
//! high-water mark kept beside the stream (`<prefix>access:hwm`, field `proxy_id`), which it then
//! raises, all atomically. A failed batch (Redis down, timeout, reply lost) is kept and sent
//! again with the same sequence, with backoff, until Redis takes it; when the first attempt had
//! in fact been applied and only its reply was lost, the retry adds nothing. Sequences never go
//! back: the writer reads the high-water mark before its first batch, and a fresh batch refused
//! as already seen (another writer under the same `proxy_id`) is renumbered above the mark and
//! sent again, so no entry is silently discarded as a duplicate.
//!
//! The one exception is Redis refusing the write for lack of memory (`OOM`, `maxmemory` with
//! `noeviction`): that batch is dropped and counted, because retrying cannot succeed until an
//! operator acts, and holding it would stall every later entry behind it.
//!
//! Bounds: the buffer holds at most `buffer_entries` entries and `buffer_bytes` bytes (the
//! channel, the entries the writer holds during an outage and the batch being sent, together).
//! When a bound is reached, the newest entries are dropped and counted (`log_dropped`): entries
//! already buffered keep their place and their order. During an outage the writer keeps
//! draining the channel into a queue of its own (the `held` entries), so the channel stays as
//! small as in normal operation and the growing buffer's memory is taken on the writer's
//! thread, never on the request path.
//!
//! Shards (`[access_log] shards`, see [`watchpost_common::keys::access_families`]): the log may
//! be several streams, each with its own family of keys (high-water marks, counters, index,
//! rollups) under one hash tag. Each batch goes to one shard, all its keys from that shard's
//! family, so the script touches one slot. The writer picks shards round-robin, batch after
//! batch, starting at a hash (FNV-1a) of `proxy_id` modulo the number of shards ([`first_shard`]):
//! a single proxy spreads its batches evenly over every shard, and proxies started together do
//! not all begin on shard 0. A batch that fails is sent again to the same shard under the same
//! sequence, so exactly-once holds per shard's high-water mark; sequences stay monotonic per
//! proxy across all shards (a shard's mark only ever sees increasing sequences), and the first
//! sequence is above the highest mark of this proxy in any shard. `stream_max_len` and
//! `max_memory_mb` bound the whole log: each shard is trimmed to its share (divided by the
//! number of shards, rounded up). Every writer adds its families to the registry of families
//! ([`Keys::access_family_registry`]) and sweeps the index of each; a family no longer
//! configured (after `shards` changed) is still swept, trimmed by `retention`, and leaves the
//! registry once its stream is gone.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::Script;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, timeout, Instant};
use watchpost_common::access_index::batch_postings;
use watchpost_common::keys::AccessKeys;
use watchpost_common::keys::MINUTE_COUNTER_TTL_SECS;
use watchpost_common::rollup;
use watchpost_common::{
    AccessLogEntry, ConnOptions, Decision, Keys, RedisConn, RedisTarget, ACCESS_LOG_FIELDS,
};

use crate::metrics::{Metrics, WriteErrorKind};
use crate::redact::QueryRedactor;

/// Longest a batch may take before it is treated as failed (and sent again).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// First pause after a failed batch; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between attempts while Redis is down.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The server-side append of one batch (see the module docs).
///
/// `KEYS`: the stream, the high-water-mark hash, the per-minute counter keys, the postings
/// registry, the batch's postings streams ([`watchpost_common::access_index`]), then the
/// rollup keys (`nr` of them, see the trailer).
/// `ARGV`: proxy id, batch sequence, `MAXLEN ~` bound, counter TTL, number of fields, the
/// field names, one increment per counter key, then per entry its field values in order, then
/// the postings block (per postings stream, in `KEYS` order: its count `m` of fields, then `m`
/// pairs of field and encoded offsets), then the number of postings streams and the postings
/// block's length, then the retention-and-rollup trailer, read from the end: `min_id` (`0` = no
/// age trim), rollup TTL (seconds), top-list size kept after a trim, `nr`, then per rollup key
/// its kind (`h` hash, `z` sorted set), its count `m` of pairs and `m` pairs (field or member,
/// increment); the very last argument is the trailer's length (everything from `min_id` up to
/// it). Returns the number of entries added: 0 when the sequence is not above the mark.
///
/// Contiguous ids: the batch's first entry is appended with `*`; entry `i` then gets the
/// explicit id `ms-(seq+i)` of the first one's `ms-seq` (nothing interleaves in a script), so
/// an entry is named by the batch's base id and its offset. Each postings stream gets ONE entry
/// under the base id (`redis.pcall`: an index write can never fail the batch halfway), and one
/// variadic `SADD` lists the streams in the registry. The stream is trimmed by `MAXLEN ~` once
/// per batch, after its entries.
///
/// Sequences (batch and id) stay below 2^53, so Lua's numbers hold them exactly. The script's
/// first write is its first `XADD`: a Redis out of memory refuses the script before anything
/// is written.
pub const APPEND_SCRIPT: &str = r"
local hwm = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0') or 0
local seq = tonumber(ARGV[2])
if not seq or seq <= hwm then return 0 end
-- BEGIN retention and rollups: the trailer's header
local t0 = #ARGV - tonumber(ARGV[#ARGV])
local nr = tonumber(ARGV[t0 + 3])
-- END retention and rollups
local nf = tonumber(ARGV[5])
-- index: the two arguments before the trailer count the postings streams and the postings
-- block's arguments; the registry precedes the streams in KEYS, the rollup keys follow them
local ni = tonumber(ARGV[t0 - 2])
local pstart = t0 - 2 - tonumber(ARGV[t0 - 1])
local ixbase = #KEYS - nr - ni
local nc = ixbase - 3
-- end index
local xadd = {KEYS[1], '*'}
for i = 1, nf do xadd[1 + 2 * i] = ARGV[5 + i] end
local at = 6 + nf + nc
local n = 0
local base, ms, s0
while at + nf - 1 < pstart do
  for i = 1, nf do xadd[2 + 2 * i] = ARGV[at + i - 1] end
  if n == 0 then
    base = redis.call('XADD', unpack(xadd))
    ms, s0 = string.match(base, '^(%d+)-(%d+)$')
    s0 = tonumber(s0)
  else
    xadd[2] = ms .. '-' .. string.format('%d', s0 + n)
    redis.call('XADD', unpack(xadd))
  end
  at = at + nf
  n = n + 1
end
if n > 0 then
  redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[3])
end
-- index: one posting per postings stream under the base id, then the registry
if n > 0 and ni > 0 then
  local p = pstart
  local reg = {}
  for r = 1, ni do
    local m = tonumber(ARGV[p])
    local post = {KEYS[ixbase + r], base}
    for j = 1, 2 * m do post[2 + j] = ARGV[p + j] end
    p = p + 1 + 2 * m
    redis.pcall('XADD', unpack(post))
    reg[r] = KEYS[ixbase + r]
  end
  redis.call('SADD', KEYS[ixbase], unpack(reg))
end
-- end index
for i = 1, nc do
  redis.call('INCRBY', KEYS[2 + i], ARGV[5 + nf + i])
  redis.call('EXPIRE', KEYS[2 + i], ARGV[4])
end
-- BEGIN retention and rollups: age trim, then the per-minute rollups of the batch
if ARGV[t0] ~= '0' then redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[t0]) end
local rttl = ARGV[t0 + 1]
local keep = tonumber(ARGV[t0 + 2])
local r = t0 + 4
for k = #KEYS - nr + 1, #KEYS do
  local kind = ARGV[r]
  local m = tonumber(ARGV[r + 1])
  r = r + 2
  if kind == 'h' then
    for j = 1, m do
      redis.call('HINCRBY', KEYS[k], ARGV[r], ARGV[r + 1])
      r = r + 2
    end
  else
    for j = 1, m do
      redis.call('ZINCRBY', KEYS[k], ARGV[r + 1], ARGV[r])
      r = r + 2
    end
    if redis.call('ZCARD', KEYS[k]) > 2 * keep then
      redis.call('ZREMRANGEBYRANK', KEYS[k], 0, -keep - 1)
    end
  end
  redis.call('EXPIRE', KEYS[k], rttl)
end
-- END retention and rollups
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return n
";

/// How often each writer sweeps the access-log index: index members older than the stream's
/// first id are gone within this interval (plus one sweep's run time) of the stream losing them.
pub const INDEX_SWEEP_INTERVAL: Duration = Duration::from_secs(15);
/// Postings streams (and old-format index keys) handled per sweep call (each call is one short
/// script).
pub const INDEX_SWEEP_CHUNK: usize = 500;

/// One step of the index sweep (see [`sweep_index`]).
///
/// `KEYS`: the stream, the postings registry (a set), the old-format registry (a sorted set).
/// `ARGV`: the registry's `SSCAN` cursor, most keys to handle. Reads the stream's first id,
/// whatever trimmed it (`MAXLEN`, `MINID`, a manual `XTRIM`); `XTRIM … MINID <first ms>-0` each
/// postings stream of one `SSCAN` step (a posting's ids all share its base's millisecond, so a
/// posting at the first millisecond stays and the reader skips its trimmed entries), and `DEL`s
/// and `SREM`s the ones left empty. With the stream empty or gone, every postings stream goes.
/// It also deletes up to `ARGV[2]` keys of the old format (one stream per value, one member per
/// entry) listed in the old registry, which nothing writes any more. Returns `{next cursor,
/// deleted, trimmed}`.
///
/// The postings streams come from the registry, not `KEYS`: the whole access-log family lives in
/// one slot (a cluster sharding gives it one hash tag), which is what a script needs.
pub const SWEEP_SCRIPT: &str = r"
local limit = tonumber(ARGV[2])
local deleted, trimmed = 0, 0
local old = redis.call('ZRANGE', KEYS[3], 0, limit - 1)
for _, k in ipairs(old) do
  redis.call('DEL', k)
  redis.call('ZREM', KEYS[3], k)
  deleted = deleted + 1
end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local scan = redis.call('SSCAN', KEYS[2], ARGV[1], 'COUNT', limit)
local min_id
if #first > 0 then min_id = string.match(first[1][1], '^%d+') .. '-0' end
for _, k in ipairs(scan[2]) do
  local empty = true
  if min_id then
    redis.pcall('XTRIM', k, 'MINID', min_id)
    trimmed = trimmed + 1
    local len = redis.pcall('XLEN', k)
    empty = type(len) == 'number' and len == 0
  end
  if empty then
    redis.call('DEL', k)
    redis.call('SREM', KEYS[2], k)
    deleted = deleted + 1
  end
end
return {scan[1], deleted, trimmed}
";

/// One full sweep of one access-log stream's index: trims every postings stream to the
/// stream's first millisecond, drops the empty ones and the old-format index. Returns
/// (keys deleted, streams trimmed).
pub async fn sweep_index<C: ConnectionLike>(
    conn: &mut C,
    keys: &AccessKeys,
) -> redis::RedisResult<(u64, u64)> {
    let script = Script::new(SWEEP_SCRIPT);
    let (mut deleted, mut trimmed) = (0u64, 0u64);
    let mut cursor = "0".to_string();
    // Bounded: the registry holds IP_BUCKETS streams plus one per indexed value; the old
    // registry is emptied a chunk per call.
    for _ in 0..10_000 {
        let (next, dead, live): (String, u64, u64) = script
            .key(keys.stream())
            .key(keys.postings_registry())
            .key(keys.index_registry())
            .arg(&cursor)
            .arg(INDEX_SWEEP_CHUNK)
            .invoke_async(conn)
            .await?;
        deleted += dead;
        trimmed += live;
        cursor = next;
        if cursor == "0" && dead < INDEX_SWEEP_CHUNK as u64 {
            break;
        }
    }
    Ok((deleted, trimmed))
}

/// Sweeps the index of every family every [`INDEX_SWEEP_INTERVAL`] until shutdown. Every
/// proxy runs one: a sweep is idempotent, and the index is trimmed even while this proxy writes
/// nothing. Each round also registers this proxy's families and looks after the retired ones
/// (see [`sweep_families`]).
async fn sweep_index_loop(
    redis: RedisTarget,
    keys: Keys,
    families: Vec<AccessKeys>,
    retention: Option<Duration>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn = match lazy_connection(&redis) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "access log: cannot create Redis client for the index sweep");
            return;
        }
    };
    // Registered at once, so that readers find the families before the first sweep.
    if let Ok(Err(e)) = timeout(
        WRITE_TIMEOUT,
        register_families(&mut conn, &keys, &families),
    )
    .await
    {
        tracing::debug!(error = %e, "access log: cannot register the families yet");
    }
    loop {
        tokio::select! {
            _ = wait_true(&mut shutdown) => return,
            _ = sleep(INDEX_SWEEP_INTERVAL) => {}
        }
        let sweep = sweep_families(&mut conn, &keys, &families, retention);
        match timeout(WRITE_TIMEOUT * 6, sweep).await {
            Ok(Ok((deleted, trimmed))) => {
                tracing::debug!(deleted, trimmed, "access log: index swept");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "access log: index sweep failed"),
            Err(_) => tracing::warn!("access log: index sweep timed out"),
        }
    }
}

/// Adds `families` to the registry of families ([`Keys::access_family_registry`]).
pub async fn register_families<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    families: &[AccessKeys],
) -> redis::RedisResult<()> {
    let labels: Vec<String> = families.iter().map(AccessKeys::label).collect();
    redis::cmd("SADD")
        .arg(keys.access_family_registry())
        .arg(labels)
        .query_async::<()>(conn)
        .await
}

/// One round of upkeep over every family: registers `families`, sweeps the index of each, and
/// of each retired family (registered, no longer configured): trims its stream by `retention`
/// exactly (nothing else trims a stream no one writes), sweeps its index, and once its stream
/// is empty or gone deletes it and its marks and removes it from the registry (the sweep then
/// deleted its last index streams).
/// Returns (index streams deleted, index streams trimmed).
pub async fn sweep_families<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    families: &[AccessKeys],
    retention: Option<Duration>,
) -> redis::RedisResult<(u64, u64)> {
    register_families(conn, keys, families).await?;
    let registered: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.access_family_registry())
        .query_async(conn)
        .await?;
    let (mut deleted, mut trimmed) = (0, 0);
    for family in families {
        let (d, t) = sweep_index(conn, family).await?;
        deleted += d;
        trimmed += t;
    }
    for label in registered {
        let Some(family) = keys.access_family(&label) else {
            continue;
        };
        if families.contains(&family) {
            continue;
        }
        if let Some(r) = retention {
            // Exact, so that an expired shard empties entirely (no one appends to it).
            let min_ms = unix_ms().saturating_sub(u64::try_from(r.as_millis()).unwrap_or(u64::MAX));
            redis::cmd("XTRIM")
                .arg(family.stream())
                .arg("MINID")
                .arg(min_ms.max(1))
                .query_async::<()>(conn)
                .await?;
        }
        let (d, t) = sweep_index(conn, &family).await?;
        deleted += d;
        trimmed += t;
        let len: u64 = redis::cmd("XLEN")
            .arg(family.stream())
            .query_async(conn)
            .await?;
        if len == 0 {
            // Empty or gone: the sweep above deleted its index; its marks go with it.
            redis::cmd("DEL")
                .arg(family.stream())
                .arg(family.hwm())
                .query_async::<()>(conn)
                .await?;
            redis::cmd("SREM")
                .arg(keys.access_family_registry())
                .arg(&label)
                .query_async::<()>(conn)
                .await?;
            tracing::info!(family = %label, "access log: retired shard is empty, unregistered");
        }
    }
    Ok((deleted, trimmed))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The shard of a proxy's first batch: FNV-1a of `proxy_id` modulo `shards` (stable across
/// processes and builds, unlike the standard library's hasher).
pub fn first_shard(proxy_id: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in proxy_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    usize::try_from(h % shards.max(1) as u64).unwrap_or(0)
}

/// A whole-log bound split over `shards` (rounded up, at least 1).
pub fn per_shard(total: u64, shards: usize) -> u64 {
    total.div_ceil(shards.max(1) as u64).max(1)
}

/// Whether Redis answered the last time anyone asked (the writer or the config watcher).
#[derive(Debug, Default)]
pub struct RedisStatus {
    up: AtomicBool,
}

impl RedisStatus {
    /// Record the outcome of a Redis operation (also the `redis_up` gauge).
    pub fn set(&self, up: bool, metrics: &Metrics) {
        self.up.store(up, Ordering::Relaxed);
        metrics.redis_up.set(i64::from(up));
    }

    /// Whether the last Redis operation succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

/// The memory an entry takes in the buffer, estimated from its fields: the struct itself plus
/// the bytes of every text field and reason.
pub fn entry_bytes(e: &AccessLogEntry) -> usize {
    let texts: [&str; 13] = [
        &e.method,
        &e.host,
        &e.path,
        &e.query,
        &e.ip,
        &e.ip_source,
        &e.peer,
        &e.country,
        &e.ua,
        &e.ua_type,
        &e.upstream,
        &e.request_id,
        &e.proxy_id,
    ];
    std::mem::size_of::<AccessLogEntry>()
        + texts.iter().map(|s| s.len()).sum::<usize>()
        + e.reasons
            .iter()
            .map(|r| r.len() + std::mem::size_of::<std::borrow::Cow<'static, str>>())
            .sum::<usize>()
}

/// The request path's handle on the buffer. Cloning is cheap.
#[derive(Clone)]
pub struct LogSink {
    tx: mpsc::Sender<AccessLogEntry>,
    /// Entries out of the channel but not yet written: held during an outage, or in the batch
    /// being sent.
    held: Arc<AtomicUsize>,
    /// [`entry_bytes`] of every buffered entry.
    bytes: Arc<AtomicUsize>,
    /// `ts` (ms) of the oldest entry the writer holds unwritten; 0 when it holds none.
    oldest_ts: Arc<AtomicU64>,
    max_bytes: usize,
    redactor: Arc<QueryRedactor>,
    metrics: Metrics,
}

impl LogSink {
    /// Redact the entry's query, then enqueue it without waiting; a full buffer (in entries or
    /// in bytes) drops it, the newest, and counts the drop.
    pub fn push(&self, mut entry: AccessLogEntry) -> bool {
        if let Some(q) = self.redactor.redact(&entry.query) {
            entry.query = q;
        }
        // The bound covers the channel and what the writer holds, so the channel may only fill
        // the room the held entries leave.
        if self.held.load(Ordering::Relaxed) >= self.tx.capacity() {
            self.metrics.log_dropped.inc();
            return false;
        }
        let size = entry_bytes(&entry);
        let before = self.bytes.fetch_add(size, Ordering::Relaxed);
        if before.saturating_add(size) > self.max_bytes {
            self.bytes.fetch_sub(size, Ordering::Relaxed);
            self.metrics.log_dropped.inc();
            return false;
        }
        match self.tx.try_send(entry) {
            Ok(()) => true,
            Err(_) => {
                self.bytes.fetch_sub(size, Ordering::Relaxed);
                self.metrics.log_dropped.inc();
                false
            }
        }
    }

    /// Entries waiting in the buffer (in the channel, held by the writer, or being sent).
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity() + self.held.load(Ordering::Relaxed)
    }

    /// Seconds since the oldest entry the writer holds unwritten was recorded, at `now_ms`;
    /// 0 when it holds none. Entries still in the channel are newer than those the writer
    /// holds, and the writer takes them at once while Redis answers.
    pub fn oldest_age_secs(&self, now_ms: u64) -> f64 {
        match self.oldest_ts.load(Ordering::Relaxed) {
            0 => 0.0,
            ts => now_ms.saturating_sub(ts) as f64 / 1000.0,
        }
    }

    /// Estimated bytes of the buffered entries (never above `buffer_bytes`).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Tuning of the buffer and the writer (`[access_log]`).
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// `[redis] url` or `cluster_nodes`.
    pub redis: RedisTarget,
    /// Key names under `[redis] key_prefix`.
    pub keys: Keys,
    /// The access-log families (shards) this writer spreads its batches over, from
    /// [`watchpost_common::keys::access_families`]; empty means the unsharded family.
    pub families: Vec<AccessKeys>,
    /// `[proxy] proxy_id`: the field of this proxy's high-water mark.
    pub proxy_id: String,
    /// `XADD … MAXLEN ~` bound of the whole log (each shard gets its share).
    pub stream_max_len: u64,
    /// `[access_log] retention`: entries older than this are trimmed (`XTRIM MINID ~`).
    pub retention: Option<Duration>,
    /// `[access_log] max_memory_mb` in bytes: the log is trimmed by count to stay under it
    /// (each shard under its share, see [`LogWriter::effective_max_len`]).
    pub max_memory_bytes: Option<u64>,
    /// `[access_log] rollup_retention`: TTL of the per-minute rollups.
    pub rollup_retention: Duration,
    /// Most bytes the buffer holds (`buffer_bytes`).
    pub buffer_bytes: usize,
    /// Query parameters whose values are redacted (`redact_query_params`).
    pub redact_query_params: Vec<String>,
    /// Most entries per batch.
    pub batch_max_entries: usize,
    /// Wait for a partial batch to fill.
    pub flush_interval: Duration,
    /// Deadline of the final flush.
    pub shutdown_flush: Duration,
}

/// The single task that owns the stream connection.
pub struct LogWriter {
    rx: mpsc::Receiver<AccessLogEntry>,
    /// Entries taken out of the channel while Redis was failing, oldest first.
    held: VecDeque<AccessLogEntry>,
    /// The batch being sent (kept, with its sequence, until Redis takes it).
    batch: Vec<AccessLogEntry>,
    /// The sequence assigned to `batch`, once it was first sent.
    seq: Option<u64>,
    /// Whether `batch` was already sent once with `seq` (a refusal is then a lost reply).
    attempted: bool,
    /// The next fresh sequence; `None` until the high-water mark was read.
    next_seq: Option<u64>,
    /// The families batches go to (at least one).
    families: Vec<AccessKeys>,
    /// Index in `families` of the current batch's shard (kept with `seq` for retries).
    shard: usize,
    /// Index in `families` of the next fresh batch's shard (round-robin).
    next_shard: usize,
    /// `held.len() + batch.len()`, for [`LogSink::depth`] and the bound.
    held_len: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
    oldest_ts: Arc<AtomicU64>,
    script: Script,
    cfg: WriterConfig,
    metrics: Metrics,
    status: Arc<RedisStatus>,
    /// Bytes per entry of each shard's stream, last measured (`MEMORY USAGE` / `XLEN`), and
    /// when.
    memory_sample: HashMap<usize, (f64, Instant)>,
}

/// A buffer of `capacity` entries (and `cfg.buffer_bytes` bytes): the sink for the request
/// path and the writer that drains it.
pub fn channel(
    capacity: usize,
    cfg: WriterConfig,
    metrics: Metrics,
    status: Arc<RedisStatus>,
) -> (LogSink, LogWriter) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let held_len = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicUsize::new(0));
    let oldest_ts = Arc::new(AtomicU64::new(0));
    let families = if cfg.families.is_empty() {
        vec![cfg.keys.access()]
    } else {
        cfg.families.clone()
    };
    let next_shard = first_shard(&cfg.proxy_id, families.len());
    (
        LogSink {
            tx,
            held: held_len.clone(),
            bytes: bytes.clone(),
            oldest_ts: oldest_ts.clone(),
            max_bytes: cfg.buffer_bytes,
            redactor: Arc::new(QueryRedactor::new(&cfg.redact_query_params)),
            metrics: metrics.clone(),
        },
        LogWriter {
            rx,
            held: VecDeque::new(),
            batch: Vec::new(),
            seq: None,
            attempted: false,
            next_seq: None,
            families,
            shard: next_shard,
            next_shard,
            held_len,
            bytes,
            oldest_ts,
            script: Script::new(APPEND_SCRIPT),
            cfg,
            metrics,
            status,
            memory_sample: HashMap::new(),
        },
    )
}

/// A Redis connection that reconnects by itself and is created without connecting, so the
/// proxy starts while Redis is down.
pub fn lazy_connection(target: &RedisTarget) -> redis::RedisResult<RedisConn> {
    target.connect_lazy(ConnOptions {
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(2),
        retries: 1,
        max_delay: Duration::from_millis(500),
    })
}

/// How often the writer measures the stream's bytes per entry for `max_memory_mb`.
const MEMORY_SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// The `MAXLEN` that keeps a stream of `bytes_per_entry` under `max_memory_bytes`, never above
/// `stream_max_len` nor below 1.
pub fn memory_max_len(stream_max_len: u64, max_memory_bytes: u64, bytes_per_entry: f64) -> u64 {
    if !(bytes_per_entry.is_finite() && bytes_per_entry > 0.0) {
        return stream_max_len;
    }
    let cap = (max_memory_bytes as f64 / bytes_per_entry).floor();
    if cap >= stream_max_len as f64 {
        stream_max_len
    } else {
        (cap as u64).max(1)
    }
}

/// The `kind` of a failed batch write that is not an out-of-memory refusal.
fn write_error_kind(e: &redis::RedisError) -> WriteErrorKind {
    if e.is_timeout() {
        WriteErrorKind::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        WriteErrorKind::Connection
    } else {
        WriteErrorKind::Other
    }
}

/// Whether Redis refused the write for lack of memory: the one failure after which a batch is
/// dropped rather than sent again.
pub fn is_out_of_memory(e: &redis::RedisError) -> bool {
    e.code() == Some("OOM") || e.to_string().contains("OOM command not allowed")
}

/// What sending the current batch did.
enum Sent {
    /// Redis took it (or had taken it before and only the reply was lost).
    Written,
    /// Redis refused it for lack of memory; it was dropped and counted.
    Dropped(redis::RedisError),
}

impl LogWriter {
    /// Drain the buffer until `shutdown` turns true, then flush what is left within the
    /// configured deadline. Entries still buffered after it are counted as dropped.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut conn = match lazy_connection(&self.cfg.redis) {
            Ok(c) => c,
            Err(e) => {
                // The URL was validated at start, so this is unexpected; without a connection
                // every entry is dropped (and counted) rather than blocking anyone.
                tracing::error!(error = %e, "access log: cannot create Redis client; entries will be dropped");
                self.drop_until_shutdown(shutdown).await;
                return;
            }
        };
        tokio::spawn(sweep_index_loop(
            self.cfg.redis.clone(),
            self.cfg.keys.clone(),
            self.families.clone(),
            self.cfg.retention,
            shutdown.clone(),
        ));
        let batch_max = self.cfg.batch_max_entries.max(1);
        let mut backoff = MIN_BACKOFF;
        let mut down_since: Option<Instant> = None;
        loop {
            if self.batch.is_empty() {
                if !self.held.is_empty() {
                    // Held entries are older than anything in the channel: they go first.
                    self.take_held(batch_max);
                } else {
                    // Into the (empty) batch itself: its allocation is kept from batch to
                    // batch instead of a fresh `batch_max` entries' worth (hundreds of KB)
                    // being allocated and freed for each one.
                    tokio::select! {
                        biased;
                        _ = wait_true(&mut shutdown) => break,
                        n = self.rx.recv_many(&mut self.batch, batch_max) => {
                            if n == 0 {
                                break;
                            }
                        }
                    }
                }
                if self.batch.len() < batch_max && !self.cfg.flush_interval.is_zero() {
                    // Give a burst a moment to arrive so it goes out as one call (shutdown
                    // cuts the wait short: the final flush takes over).
                    tokio::select! {
                        _ = wait_true(&mut shutdown) => {}
                        _ = sleep(self.cfg.flush_interval) => {}
                    }
                    while self.batch.len() < batch_max {
                        match self.rx.try_recv() {
                            Ok(e) => self.batch.push(e),
                            Err(_) => break,
                        }
                    }
                }
                self.sync_len();
            }
            match self.send(&mut conn).await {
                Ok(Sent::Written) => {
                    if let Some(since) = down_since.take() {
                        tracing::info!(
                            outage_ms = since.elapsed().as_millis() as u64,
                            held = self.held.len(),
                            "access log: Redis is back, writing resumed"
                        );
                    }
                    self.status.set(true, &self.metrics);
                    backoff = MIN_BACKOFF;
                }
                Ok(Sent::Dropped(e)) => {
                    self.status.set(true, &self.metrics);
                    tracing::warn!(error = %e, "access log: Redis is out of memory; batch dropped");
                    if !self.back_off(backoff, &mut shutdown, batch_max).await {
                        break;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    self.status.set(false, &self.metrics);
                    if down_since.is_none() {
                        down_since = Some(Instant::now());
                        tracing::warn!(
                            error = %e,
                            "access log: Redis write failed; holding entries and retrying"
                        );
                    }
                    if !self.back_off(backoff, &mut shutdown, batch_max).await {
                        break;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.flush(&mut conn).await;
    }

    /// Send the current batch once: exactly-once append under its sequence. `Err` means it is
    /// still pending and must be sent again.
    async fn send(&mut self, conn: &mut RedisConn) -> redis::RedisResult<Sent> {
        if self.batch.is_empty() {
            return Ok(Sent::Written);
        }
        loop {
            let seq = match self.seq {
                Some(s) => s,
                None => {
                    let next = match self.next_seq {
                        Some(n) => n,
                        None => {
                            let hwm = self.read_hwm(conn).await?;
                            hwm.saturating_add(1)
                        }
                    };
                    self.seq = Some(next);
                    self.next_seq = Some(next.saturating_add(1));
                    self.attempted = false;
                    // A fresh batch takes the next shard; a retry keeps its shard with its seq.
                    self.shard = self.next_shard;
                    self.next_shard = (self.next_shard + 1) % self.families.len();
                    next
                }
            };
            let limits = self.limits(conn).await;
            let call = append_batch_with(
                conn,
                &self.script,
                &self.families[self.shard],
                &self.cfg.proxy_id,
                seq,
                limits,
                &self.batch,
            );
            let (result, timed_out) = match timeout(WRITE_TIMEOUT, call).await {
                Ok(r) => (r, false),
                Err(_) => (
                    Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "access-log batch timed out",
                    ))),
                    true,
                ),
            };
            match result {
                Ok(0) if !self.attempted => {
                    // A fresh sequence at or below the mark: another writer advanced it (two
                    // proxies sharing a proxy_id). Renumber above the mark and send again.
                    tracing::warn!(
                        proxy_id = %self.cfg.proxy_id,
                        seq,
                        "access log: batch sequence already used (is proxy_id shared?); renumbering"
                    );
                    self.seq = None;
                    self.next_seq = None;
                }
                Ok(_) => {
                    // Added now, or (0 after an earlier attempt) added by that attempt whose
                    // reply was lost.
                    self.metrics.log_written.inc_by(self.batch.len() as u64);
                    self.finish_batch();
                    return Ok(Sent::Written);
                }
                Err(e) if is_out_of_memory(&e) => {
                    self.metrics.log_write_error(WriteErrorKind::Oom);
                    self.metrics.log_dropped.inc_by(self.batch.len() as u64);
                    self.finish_batch();
                    return Ok(Sent::Dropped(e));
                }
                Err(e) => {
                    self.metrics.log_write_error(if timed_out {
                        WriteErrorKind::Timeout
                    } else {
                        write_error_kind(&e)
                    });
                    self.attempted = true;
                    return Err(e);
                }
            }
        }
    }

    /// The trim bounds and rollup settings of the next batch: `MINID` from `retention` and the
    /// clock, `MAXLEN` from `stream_max_len` and `max_memory_mb`.
    async fn limits(&mut self, conn: &mut RedisConn) -> AppendLimits {
        let now_ms = unix_ms();
        let min_id_ms = self.cfg.retention.map_or(0, |r| {
            now_ms
                .saturating_sub(u64::try_from(r.as_millis()).unwrap_or(u64::MAX))
                .max(1)
        });
        AppendLimits {
            max_len: self.effective_max_len(conn).await,
            min_id_ms,
            rollup_ttl_secs: self.cfg.rollup_retention.as_secs().max(1),
            top_keep: rollup::DEFAULT_TOP_KEEP,
            rollups: true,
        }
    }

    /// The current shard's share of `stream_max_len`, lowered to stay under its share of
    /// `max_memory_mb`: the shard stream's bytes per entry are measured with
    /// `MEMORY USAGE <stream>` (Redis samples a few listpack nodes) divided by `XLEN`, every
    /// [`MEMORY_SAMPLE_INTERVAL`], and the bound is `max_memory_bytes / bytes_per_entry`. A
    /// failed sample keeps the last one.
    pub async fn effective_max_len(&mut self, conn: &mut RedisConn) -> u64 {
        let n = self.families.len();
        let max_len = per_shard(self.cfg.stream_max_len, n);
        let Some(max_bytes) = self.cfg.max_memory_bytes.map(|b| per_shard(b, n)) else {
            return max_len;
        };
        let shard = self.shard;
        let due = self
            .memory_sample
            .get(&shard)
            .is_none_or(|(_, at)| at.elapsed() >= MEMORY_SAMPLE_INTERVAL);
        if due {
            let stream = self.families[shard].stream();
            let mut pipe = redis::pipe();
            pipe.cmd("MEMORY")
                .arg("USAGE")
                .arg(&stream)
                .cmd("XLEN")
                .arg(&stream);
            let sampled =
                timeout(WRITE_TIMEOUT, pipe.query_async::<(Option<u64>, u64)>(conn)).await;
            match sampled {
                Ok(Ok((Some(bytes), len))) if len > 0 => {
                    self.memory_sample
                        .insert(shard, (bytes as f64 / len as f64, Instant::now()));
                }
                Ok(Ok(_)) => {
                    // No stream yet: nothing to bound.
                    self.memory_sample.remove(&shard);
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "access log: stream memory sample failed");
                }
                Err(_) => tracing::debug!("access log: stream memory sample timed out"),
            }
        }
        match self.memory_sample.get(&shard) {
            Some((per_entry, _)) => memory_max_len(max_len, max_bytes, *per_entry),
            None => max_len,
        }
    }

    /// This proxy's highest high-water mark over every shard (one concurrent `HGET` each):
    /// the next fresh sequence goes above it, so sequences stay monotonic per proxy.
    async fn read_hwm(&self, conn: &mut RedisConn) -> redis::RedisResult<u64> {
        let reads = self.families.iter().map(|family| {
            let mut conn = conn.clone();
            let mut cmd = redis::cmd("HGET");
            cmd.arg(family.hwm()).arg(&self.cfg.proxy_id);
            async move { cmd.query_async::<Option<u64>>(&mut conn).await }
        });
        match timeout(WRITE_TIMEOUT, futures::future::join_all(reads)).await {
            Ok(marks) => {
                let mut hwm = 0;
                for mark in marks {
                    let mark = mark.inspect_err(|e| {
                        self.metrics.log_write_error(write_error_kind(e));
                    })?;
                    hwm = hwm.max(mark.unwrap_or_default());
                }
                Ok(hwm)
            }
            Err(_) => {
                self.metrics.log_write_error(WriteErrorKind::Timeout);
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "access-log high-water mark read timed out",
                )))
            }
        }
    }

    /// The batch left the buffer (written or dropped): release its room.
    fn finish_batch(&mut self) {
        let bytes: usize = self.batch.iter().map(entry_bytes).sum();
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.batch.clear();
        self.seq = None;
        self.attempted = false;
        self.sync_len();
    }

    fn sync_len(&self) {
        self.held_len
            .store(self.held.len() + self.batch.len(), Ordering::Relaxed);
        // The batch is older than anything held, and both are older than the channel.
        let oldest = self
            .batch
            .first()
            .or(self.held.front())
            .map_or(0, |e| e.ts.max(1));
        self.oldest_ts.store(oldest, Ordering::Relaxed);
    }

    /// Wait `pause` before the next attempt, moving what arrives meanwhile from the channel
    /// into `held`. False when shutdown was signalled (or every sender is gone).
    async fn back_off(
        &mut self,
        pause: Duration,
        shutdown: &mut watch::Receiver<bool>,
        batch_max: usize,
    ) -> bool {
        let until = Instant::now() + pause;
        let mut incoming = Vec::with_capacity(batch_max);
        loop {
            incoming.clear();
            tokio::select! {
                biased;
                _ = wait_true(shutdown) => return false,
                _ = tokio::time::sleep_until(until) => return true,
                n = self.rx.recv_many(&mut incoming, batch_max) => {
                    if n == 0 {
                        return false;
                    }
                    self.hold(&mut incoming);
                }
            }
        }
    }

    /// Keep `incoming` for later. The sink admitted every entry within both bounds, so all of
    /// it fits; the check only guards the entry bound against a race with the sink.
    fn hold(&mut self, incoming: &mut Vec<AccessLogEntry>) {
        let room = self
            .rx
            .max_capacity()
            .saturating_sub(self.held.len() + self.batch.len() + self.rx.len());
        let keep = room.min(incoming.len());
        let dropped: Vec<AccessLogEntry> = incoming.drain(keep..).collect();
        self.held.extend(incoming.drain(..));
        if !dropped.is_empty() {
            self.discard_entries(&dropped);
        }
        self.sync_len();
    }

    /// Move up to `max` held entries, oldest first, into the batch.
    fn take_held(&mut self, max: usize) {
        let n = max.saturating_sub(self.batch.len()).min(self.held.len());
        self.batch.extend(self.held.drain(..n));
        self.sync_len();
    }

    /// Final flush at shutdown: everything still buffered, retried within the deadline.
    async fn flush(&mut self, conn: &mut RedisConn) {
        let deadline = Instant::now() + self.cfg.shutdown_flush;
        let batch_max = self.cfg.batch_max_entries.max(1);
        let written_before = self.metrics.log_written.get();
        loop {
            if self.batch.is_empty() {
                self.take_held(batch_max);
                while self.batch.len() < batch_max {
                    match self.rx.try_recv() {
                        Ok(e) => self.batch.push(e),
                        Err(_) => break,
                    }
                }
                self.sync_len();
            }
            if self.batch.is_empty() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let sent = if left.is_zero() {
                None
            } else {
                timeout(left, self.send(conn)).await.ok()
            };
            match sent {
                Some(Ok(Sent::Written)) => {}
                Some(Ok(Sent::Dropped(e))) => {
                    tracing::warn!(error = %e, "access log: Redis is out of memory; batch dropped");
                }
                Some(Err(_)) if Instant::now() + MIN_BACKOFF < deadline => {
                    sleep(MIN_BACKOFF).await;
                }
                _ => {
                    let rest = self.discard();
                    tracing::warn!(
                        dropped = rest,
                        "access log: shutdown flush failed or ran out of time"
                    );
                    return;
                }
            }
        }
        tracing::info!(
            flushed = self.metrics.log_written.get() - written_before,
            "access log: flushed on shutdown"
        );
    }

    /// Count entries as dropped and release their room.
    fn discard_entries(&self, entries: &[AccessLogEntry]) {
        let bytes: usize = entries.iter().map(entry_bytes).sum();
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.metrics.log_dropped.inc_by(entries.len() as u64);
    }

    /// Drop everything still buffered (counted); returns how many.
    fn discard(&mut self) -> u64 {
        let mut all: Vec<AccessLogEntry> = std::mem::take(&mut self.batch);
        all.extend(self.held.drain(..));
        while let Ok(e) = self.rx.try_recv() {
            all.push(e);
        }
        self.discard_entries(&all);
        self.seq = None;
        self.sync_len();
        all.len() as u64
    }

    async fn drop_until_shutdown(&mut self, mut shutdown: watch::Receiver<bool>) {
        let mut batch = Vec::new();
        loop {
            batch.clear();
            tokio::select! {
                _ = wait_true(&mut shutdown) => break,
                n = self.rx.recv_many(&mut batch, 1024) => {
                    if n == 0 { break; }
                    self.discard_entries(&batch);
                }
            }
        }
        self.discard();
    }
}

/// How a batch trims the stream and keeps its rollups (the script's `MAXLEN`, trailer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendLimits {
    /// `XADD … MAXLEN ~` bound.
    pub max_len: u64,
    /// `XTRIM … MINID ~ <min_id_ms>`: entries older than this (ms since the epoch) go; 0 keeps
    /// them (no `[access_log] retention`).
    pub min_id_ms: u64,
    /// TTL of the rollup keys (`[access_log] rollup_retention`).
    pub rollup_ttl_secs: u64,
    /// Members each top-list sorted set keeps when it is trimmed.
    pub top_keep: u64,
    /// Whether the batch adds to the per-minute rollups (always in the proxy; benchmarks turn
    /// them off to measure what they cost).
    pub rollups: bool,
}

impl AppendLimits {
    /// A `MAXLEN` bound only, with the default rollup retention and top-list size.
    pub fn max_len(max_len: u64) -> Self {
        Self {
            max_len,
            min_id_ms: 0,
            rollup_ttl_secs: rollup::DEFAULT_ROLLUP_RETENTION.as_secs(),
            top_keep: rollup::DEFAULT_TOP_KEEP,
            rollups: true,
        }
    }
}

/// Append one batch with [`APPEND_SCRIPT`] under `(proxy_id, seq)`; returns the entries added
/// (0 when `seq` is not above the proxy's high-water mark, e.g. a retry of a batch that was
/// applied but whose reply was lost).
pub async fn append_batch<C: ConnectionLike>(
    conn: &mut C,
    script: &Script,
    keys: &AccessKeys,
    proxy_id: &str,
    seq: u64,
    max_len: u64,
    batch: &[AccessLogEntry],
) -> redis::RedisResult<u64> {
    append_batch_with(
        conn,
        script,
        keys,
        proxy_id,
        seq,
        AppendLimits::max_len(max_len),
        batch,
    )
    .await
}

/// [`append_batch`] with every trim and rollup setting.
pub async fn append_batch_with<C: ConnectionLike>(
    conn: &mut C,
    script: &Script,
    keys: &AccessKeys,
    proxy_id: &str,
    seq: u64,
    limits: AppendLimits,
    batch: &[AccessLogEntry],
) -> redis::RedisResult<u64> {
    let call = invocation_with(script, keys, proxy_id, seq, limits, batch);
    match call.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            // Redis restarted (or flushed its scripts) since the last batch: load the script
            // and send the same call again.
            script.load_async(conn).await?;
            call.query_async(conn).await
        }
        r => r,
    }
}

/// The script call for a batch (`EVALSHA` of `script`): keys, header arguments, the
/// per-minute counters, then every entry's values in the fixed field order.
///
/// Built as one [`redis::Cmd`], whose arguments share one buffer: a `ScriptInvocation` would
/// allocate every one of a batch's 20 × N values separately and copy them all again into
/// the command it sends.
pub fn invocation(
    script: &Script,
    keys: &AccessKeys,
    proxy_id: &str,
    seq: u64,
    max_len: u64,
    batch: &[AccessLogEntry],
) -> redis::Cmd {
    invocation_with(
        script,
        keys,
        proxy_id,
        seq,
        AppendLimits::max_len(max_len),
        batch,
    )
}

/// [`invocation`] with every trim and rollup setting. Every key is of `keys`, one access-log
/// family (stream, marks, counters, index, rollups): on a cluster, one slot.
pub fn invocation_with(
    script: &Script,
    keys: &AccessKeys,
    proxy_id: &str,
    seq: u64,
    limits: AppendLimits,
    batch: &[AccessLogEntry],
) -> redis::Cmd {
    // minute -> (requests, rejects)
    let mut minutes: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for entry in batch {
        let counts = minutes.entry(entry.ts / 60_000).or_default();
        counts.0 += 1;
        if entry.decision == Decision::Reject {
            counts.1 += 1;
        }
    }
    let mut counters: Vec<(String, u64)> = Vec::with_capacity(minutes.len() * 2);
    for (minute, (requests, rejects)) in minutes {
        counters.push((keys.requests_in_minute(minute), requests));
        if rejects > 0 {
            counters.push((keys.rejects_in_minute(minute), rejects));
        }
    }
    // BEGIN retention and rollups: one hash and two sorted sets per minute of the batch.
    let rollups = if limits.rollups {
        rollup::aggregate(batch)
    } else {
        BTreeMap::new()
    };
    // END retention and rollups
    // Index: one posting per postings stream the batch touches, computed here; the script
    // only puts them under the batch's base id.
    let postings = batch_postings(keys, batch);
    let postings_args: usize = postings.iter().map(|p| 1 + 2 * p.fields.len()).sum();
    let mut inv = redis::Cmd::with_capacity(
        16 + 2 * counters.len()
            + postings.len()
            + ACCESS_LOG_FIELDS.len() * (1 + batch.len())
            + postings_args,
        256 + 400 * batch.len(),
    );
    inv.arg("EVALSHA")
        .arg(script.get_hash())
        .arg(3 + counters.len() + postings.len() + 3 * rollups.len())
        .arg(keys.stream())
        .arg(keys.hwm());
    for (key, _) in &counters {
        inv.arg(key);
    }
    inv.arg(keys.postings_registry());
    for p in &postings {
        inv.arg(&p.key);
    }
    // BEGIN retention and rollups
    for minute in rollups.keys() {
        inv.arg(keys.rollup(*minute))
            .arg(keys.rollup_ips(*minute))
            .arg(keys.rollup_paths(*minute));
    }
    // END retention and rollups
    inv.arg(proxy_id)
        .arg(seq)
        .arg(limits.max_len)
        .arg(MINUTE_COUNTER_TTL_SECS)
        .arg(ACCESS_LOG_FIELDS.len());
    for name in ACCESS_LOG_FIELDS {
        inv.arg(name);
    }
    for (_, n) in &counters {
        inv.arg(*n);
    }
    let mut scratch = String::new();
    for entry in batch {
        entry.write_fields(&mut scratch, |_, value| {
            inv.arg(value);
        });
    }
    for p in &postings {
        inv.arg(p.fields.len());
        for (field, offsets) in &p.fields {
            inv.arg(field).arg(offsets);
        }
    }
    inv.arg(postings.len()).arg(postings_args);
    // BEGIN retention and rollups: the trailer (see APPEND_SCRIPT).
    let mut trailer_len = 4usize;
    inv.arg(limits.min_id_ms)
        .arg(limits.rollup_ttl_secs.max(1))
        .arg(limits.top_keep.max(1))
        .arg(rollups.len() * 3);
    for r in rollups.values() {
        for (kind, pairs) in [("h", &r.counts), ("z", &r.ips), ("z", &r.paths)] {
            inv.arg(kind).arg(pairs.len());
            for (field, n) in pairs {
                inv.arg(field).arg(*n);
            }
            trailer_len += 2 + 2 * pairs.len();
        }
    }
    inv.arg(trailer_len);
    // END retention and rollups
    inv
}

/// Resolves once the watched flag is true (or its sender is gone).
pub async fn wait_true(rx: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: treat that as shutdown too.
    let _ = rx.wait_for(|v| *v).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ts: u64, decision: Decision) -> AccessLogEntry {
        AccessLogEntry {
            ts,
            decision,
            ..AccessLogEntry::default()
        }
    }

    /// Nothing listens on port 1: every write fails at once.
    fn unreachable(buffer_bytes: usize) -> WriterConfig {
        WriterConfig {
            redis: RedisTarget::Node("redis://127.0.0.1:1".into()),
            keys: Keys::default(),
            families: Vec::new(),
            proxy_id: "p".into(),
            stream_max_len: 10,
            retention: None,
            max_memory_bytes: None,
            rollup_retention: rollup::DEFAULT_ROLLUP_RETENTION,
            buffer_bytes,
            redact_query_params: vec!["token".into()],
            batch_max_entries: 10,
            flush_interval: Duration::ZERO,
            shutdown_flush: Duration::from_millis(10),
        }
    }

    #[test]
    fn shards_are_picked_from_a_stable_hash_and_bounds_are_shared() {
        // FNV-1a of "" is its offset basis: fixed across processes and builds.
        assert_eq!(
            first_shard("", 1 << 20),
            (0xcbf2_9ce4_8422_2325u64 % (1 << 20)) as usize
        );
        assert_eq!(first_shard("proxy-a", 1), 0);
        let starts: std::collections::HashSet<usize> = (0..64)
            .map(|i| first_shard(&format!("proxy-{i}"), 16))
            .collect();
        assert!(starts.iter().all(|s| *s < 16));
        assert!(starts.len() > 8, "proxies start on many shards: {starts:?}");
        assert_eq!(per_shard(1_000_000, 1), 1_000_000);
        assert_eq!(per_shard(1_000_000, 3), 333_334);
        assert_eq!(per_shard(2, 16), 1);
    }

    #[tokio::test]
    async fn full_buffer_drops_the_newest_and_counts() {
        let metrics = Metrics::new().expect("metrics");
        let (sink, _writer) = channel(2, unreachable(1 << 20), metrics.clone(), Arc::default());
        assert!(sink.push(entry(1, Decision::Allow)));
        assert!(sink.push(entry(2, Decision::Allow)));
        assert!(!sink.push(entry(3, Decision::Allow)));
        assert_eq!(sink.depth(), 2);
        assert_eq!(metrics.log_dropped.get(), 1);
    }

    #[tokio::test]
    async fn the_bytes_bound_drops_and_counts() {
        let metrics = Metrics::new().expect("metrics");
        let big = |n: u64| AccessLogEntry {
            ts: n,
            ua: "x".repeat(10_000),
            ..AccessLogEntry::default()
        };
        let one = entry_bytes(&big(0));
        assert!(one > 10_000);
        // Room for three such entries in bytes, a thousand in entries.
        let (sink, _writer) = channel(
            1000,
            unreachable(one * 3 + one / 2),
            metrics.clone(),
            Arc::default(),
        );
        for n in 0..3 {
            assert!(sink.push(big(n)), "entry {n} fits");
        }
        assert!(!sink.push(big(3)), "the fourth is over the bytes bound");
        assert_eq!(sink.depth(), 3);
        assert_eq!(sink.bytes(), one * 3);
        assert_eq!(metrics.log_dropped.get(), 1);
        // Small entries still fit in what is left.
        assert!(sink.push(entry(9, Decision::Allow)));
        assert_eq!(metrics.log_dropped.get(), 1);
    }

    #[tokio::test]
    async fn secret_query_parameters_are_redacted_on_push() {
        let metrics = Metrics::new().expect("metrics");
        let (sink, mut writer) = channel(10, unreachable(1 << 20), metrics, Arc::default());
        let mut e = entry(1, Decision::Allow);
        e.query = "a=1&TOKEN=s3cret".into();
        assert!(sink.push(e));
        let got = writer.rx.recv().await.expect("entry");
        assert_eq!(got.query, "a=1&TOKEN=REDACTED");
    }

    /// Poll `cond` for up to 10 s.
    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn an_outage_holds_every_entry_off_the_channel_within_its_bound() {
        let metrics = Metrics::new().expect("metrics");
        let (sink, writer) = channel(100, unreachable(1 << 20), metrics.clone(), Arc::default());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(writer.run(stop_rx));
        let in_channel = |s: &LogSink| s.tx.max_capacity() - s.tx.capacity();

        // The first batch fails and is kept for a retry; the writer holds what follows.
        for i in 0..30 {
            assert!(sink.push(entry(i, Decision::Allow)));
        }
        eventually("every entry to be held by the writer", || {
            in_channel(&sink) == 0 && sink.depth() == 30
        })
        .await;
        assert_eq!(
            metrics.log_dropped.get(),
            0,
            "a failed batch is not dropped"
        );

        // More than the buffer holds: channel and held entries together stay within 100, and
        // every entry is either still buffered or counted as dropped.
        for i in 0..300 {
            let _ = sink.push(entry(1000 + i, Decision::Allow));
            assert!(sink.depth() <= 100, "depth {}", sink.depth());
            if i % 50 == 0 {
                sleep(Duration::from_millis(20)).await;
            }
        }
        eventually("the accounting to settle", || {
            sink.depth() == 100 && metrics.log_dropped.get() == 230
        })
        .await;
        assert_eq!(metrics.log_written.get(), 0);

        // At shutdown the flush fails too: everything left is counted as dropped.
        let _ = stop.send(true);
        task.await.expect("writer");
        assert_eq!(metrics.log_dropped.get(), 330);
        assert_eq!(sink.depth(), 0);
        assert_eq!(sink.bytes(), 0);
    }
}
