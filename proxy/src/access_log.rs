//! The access-log pipeline (SPEC §5): a bounded in-memory buffer filled by the request path and
//! drained into the Redis Stream by one writer task.
//!
//! Pingora awaits the `logging` phase before it reuses a keep-alive connection, so the request
//! path only ever calls [`LogSink::push`], a non-blocking `try_send`: when the buffer is full
//! the entry is dropped and counted, and request latency never depends on Redis. The
//! [`LogWriter`] owns its Redis connection and sends each batch as one pipeline of
//! `XADD <stream> MAXLEN ~ N * <fields in fixed order>` plus the per-minute request and
//! reject counters. A failed batch (Redis down, OOM, timeout) is dropped and counted, never
//! retried; the writer then backs off so an outage costs no CPU, and resumes by itself.
//!
//! While it backs off, the writer keeps draining the channel into a queue of its own (the
//! `held` entries), so during an outage the channel stays as small as in normal operation and
//! the growing buffer's memory is taken on the writer's thread, never on the request path.
//! Channel plus held entries never exceed `buffer_entries`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, timeout, Instant};
use watchpost_common::keys::MINUTE_COUNTER_TTL_SECS;
use watchpost_common::{AccessLogEntry, Decision, Keys};

use crate::metrics::Metrics;

/// Longest a batch may take before it is given up as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// First pause after a failed batch; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between attempts while Redis is down.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

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

/// The request path's handle on the buffer. Cloning is cheap.
#[derive(Clone)]
pub struct LogSink {
    tx: mpsc::Sender<AccessLogEntry>,
    held: Arc<AtomicUsize>,
    metrics: Metrics,
}

impl LogSink {
    /// Enqueue an entry without waiting; a full buffer drops it and counts the drop.
    pub fn push(&self, entry: AccessLogEntry) -> bool {
        // During an outage the writer holds part of the buffer: the bound covers both, so the
        // channel may only fill the room the held entries leave.
        if self.held.load(Ordering::Relaxed) >= self.tx.capacity() {
            self.metrics.log_dropped.inc();
            return false;
        }
        match self.tx.try_send(entry) {
            Ok(()) => true,
            Err(_) => {
                self.metrics.log_dropped.inc();
                false
            }
        }
    }

    /// Entries waiting in the buffer (in the channel, or held by the writer during an outage).
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity() + self.held.load(Ordering::Relaxed)
    }
}

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// `[redis] url`.
    pub redis_url: String,
    /// Key names under `[redis] key_prefix`.
    pub keys: Keys,
    /// `XADD … MAXLEN ~` bound.
    pub stream_max_len: u64,
    /// Most entries per pipeline.
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
    /// `held.len()`, for [`LogSink::depth`].
    held_len: Arc<AtomicUsize>,
    cfg: WriterConfig,
    metrics: Metrics,
    status: Arc<RedisStatus>,
}

/// A buffer of `capacity` entries: the sink for the request path and the writer that drains it.
pub fn channel(
    capacity: usize,
    cfg: WriterConfig,
    metrics: Metrics,
    status: Arc<RedisStatus>,
) -> (LogSink, LogWriter) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let held_len = Arc::new(AtomicUsize::new(0));
    (
        LogSink {
            tx,
            held: held_len.clone(),
            metrics: metrics.clone(),
        },
        LogWriter {
            rx,
            held: VecDeque::new(),
            held_len,
            cfg,
            metrics,
            status,
        },
    )
}

/// A Redis connection that reconnects by itself and is created without connecting, so the
/// proxy starts while Redis is down.
pub fn lazy_connection(url: &str) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
}

impl LogWriter {
    /// Drain the buffer until `shutdown` turns true, then flush what is left within the
    /// configured deadline. Entries still buffered after it are counted as dropped.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut conn = match lazy_connection(&self.cfg.redis_url) {
            Ok(c) => c,
            Err(e) => {
                // The URL was validated at start, so this is unexpected; without a connection
                // every entry is dropped (and counted) rather than blocking anyone.
                tracing::error!(error = %e, "access log: cannot create Redis client; entries will be dropped");
                self.drop_until_shutdown(shutdown).await;
                return;
            }
        };
        let batch_max = self.cfg.batch_max_entries.max(1);
        let mut batch: Vec<AccessLogEntry> = Vec::with_capacity(batch_max);
        let mut backoff = MIN_BACKOFF;
        let mut down_since: Option<Instant> = None;
        loop {
            batch.clear();
            if !self.held.is_empty() {
                // Held entries are older than anything in the channel: they go first.
                self.take_held(&mut batch, batch_max);
            } else {
                tokio::select! {
                    biased;
                    _ = wait_true(&mut shutdown) => break,
                    n = self.rx.recv_many(&mut batch, batch_max) => {
                        if n == 0 {
                            break;
                        }
                    }
                }
            }
            if batch.len() < batch_max && !self.cfg.flush_interval.is_zero() {
                // Give a burst a moment to arrive so it goes out as one pipeline (shutdown
                // cuts the wait short: the final flush takes over).
                tokio::select! {
                    _ = wait_true(&mut shutdown) => {}
                    _ = sleep(self.cfg.flush_interval) => {}
                }
                while batch.len() < batch_max {
                    match self.rx.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
            }
            match self.write(&mut conn, &batch).await {
                Ok(()) => {
                    self.metrics.log_written.inc_by(batch.len() as u64);
                    if let Some(since) = down_since.take() {
                        tracing::info!(
                            outage_ms = since.elapsed().as_millis() as u64,
                            "access log: Redis is back, writing resumed"
                        );
                    }
                    self.status.set(true, &self.metrics);
                    backoff = MIN_BACKOFF;
                }
                Err(e) => {
                    self.metrics.log_dropped.inc_by(batch.len() as u64);
                    self.status.set(false, &self.metrics);
                    if down_since.is_none() {
                        down_since = Some(Instant::now());
                        tracing::warn!(
                            error = %e,
                            dropped = batch.len(),
                            "access log: Redis write failed; dropping batches until it recovers"
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

    /// Keep `incoming` for later, within `buffer_entries` (channel and held together); what
    /// does not fit is dropped and counted, as a full channel would have.
    fn hold(&mut self, incoming: &mut Vec<AccessLogEntry>) {
        let room = self
            .rx
            .max_capacity()
            .saturating_sub(self.held.len() + self.rx.len());
        let keep = room.min(incoming.len());
        let dropped = incoming.len() - keep;
        self.held.extend(incoming.drain(..keep));
        incoming.clear();
        if dropped > 0 {
            self.metrics.log_dropped.inc_by(dropped as u64);
        }
        self.held_len.store(self.held.len(), Ordering::Relaxed);
    }

    /// Move up to `max` held entries, oldest first, into `batch`.
    fn take_held(&mut self, batch: &mut Vec<AccessLogEntry>, max: usize) {
        let n = max.saturating_sub(batch.len()).min(self.held.len());
        batch.extend(self.held.drain(..n));
        self.held_len.store(self.held.len(), Ordering::Relaxed);
    }

    /// Final flush at shutdown: everything still buffered, within the deadline.
    async fn flush(&mut self, conn: &mut ConnectionManager) {
        let deadline = Instant::now() + self.cfg.shutdown_flush;
        let batch_max = self.cfg.batch_max_entries.max(1);
        let mut batch = Vec::with_capacity(batch_max);
        let mut flushed = 0u64;
        loop {
            batch.clear();
            self.take_held(&mut batch, batch_max);
            while batch.len() < batch_max {
                match self.rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.write(conn, &batch)).await {
                Ok(Ok(())) => {
                    flushed += batch.len() as u64;
                    self.metrics.log_written.inc_by(batch.len() as u64);
                }
                _ => {
                    self.metrics.log_dropped.inc_by(batch.len() as u64);
                    let rest = self.discard();
                    tracing::warn!(
                        dropped = batch.len() as u64 + rest,
                        "access log: shutdown flush failed or ran out of time"
                    );
                    return;
                }
            }
        }
        tracing::info!(flushed, "access log: flushed on shutdown");
    }

    fn discard(&mut self) -> u64 {
        let mut n = self.held.len() as u64;
        self.held.clear();
        self.held_len.store(0, Ordering::Relaxed);
        while self.rx.try_recv().is_ok() {
            n += 1;
        }
        self.metrics.log_dropped.inc_by(n);
        n
    }

    async fn drop_until_shutdown(&mut self, mut shutdown: watch::Receiver<bool>) {
        let mut batch = Vec::new();
        loop {
            batch.clear();
            tokio::select! {
                _ = wait_true(&mut shutdown) => break,
                n = self.rx.recv_many(&mut batch, 1024) => {
                    if n == 0 { break; }
                    self.metrics.log_dropped.inc_by(n as u64);
                }
            }
        }
        self.discard();
    }

    async fn write(
        &self,
        conn: &mut ConnectionManager,
        batch: &[AccessLogEntry],
    ) -> redis::RedisResult<()> {
        let pipe = build_pipeline(&self.cfg.keys, self.cfg.stream_max_len, batch);
        match timeout(WRITE_TIMEOUT, pipe.query_async::<()>(conn)).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "access-log batch timed out",
            ))),
        }
    }
}

/// One pipeline for a batch: an `XADD` per entry, fields in the fixed order, then the
/// per-minute request and reject counters, each with its TTL refreshed.
pub fn build_pipeline(keys: &Keys, max_len: u64, batch: &[AccessLogEntry]) -> redis::Pipeline {
    let stream = keys.access_stream();
    let mut pipe = redis::pipe();
    // minute -> (requests, rejects)
    let mut minutes: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut scratch = String::new();
    for entry in batch {
        let cmd = pipe
            .cmd("XADD")
            .arg(&stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(max_len)
            .arg("*");
        entry.write_fields(&mut scratch, |field, value| {
            cmd.arg(field).arg(value);
        });
        cmd.ignore();
        let counts = minutes.entry(entry.ts / 60_000).or_default();
        counts.0 += 1;
        if entry.decision == Decision::Reject {
            counts.1 += 1;
        }
    }
    for (minute, (requests, rejects)) in minutes {
        let key = keys.requests_in_minute(minute);
        pipe.cmd("INCRBY").arg(&key).arg(requests).ignore();
        pipe.cmd("EXPIRE")
            .arg(&key)
            .arg(MINUTE_COUNTER_TTL_SECS)
            .ignore();
        if rejects > 0 {
            let key = keys.rejects_in_minute(minute);
            pipe.cmd("INCRBY").arg(&key).arg(rejects).ignore();
            pipe.cmd("EXPIRE")
                .arg(&key)
                .arg(MINUTE_COUNTER_TTL_SECS)
                .ignore();
        }
    }
    pipe
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

    #[test]
    fn pipeline_writes_fixed_fields_and_minute_counters() {
        let keys = Keys::new("t:");
        let batch = [
            entry(60_000, Decision::Allow),
            entry(60_001, Decision::Reject),
            entry(120_000, Decision::Allow),
        ];
        let pipe = build_pipeline(&keys, 1000, &batch);
        let packed = String::from_utf8_lossy(&pipe.get_packed_pipeline()).to_string();
        assert_eq!(packed.matches("XADD").count(), 3);
        assert!(packed.contains("t:access"));
        // Counters: minute 1 has two requests and one reject, minute 2 one request.
        assert!(packed.contains("t:gw:req:1\r\n$1\r\n2"), "{packed}");
        assert!(packed.contains("t:gw:rej:1\r\n$1\r\n1"), "{packed}");
        assert!(packed.contains("t:gw:req:2\r\n$1\r\n1"), "{packed}");
        assert!(!packed.contains("t:gw:rej:2"), "{packed}");
        // Field names appear in the shared fixed order.
        let mut at = 0;
        for f in watchpost_common::ACCESS_LOG_FIELDS {
            let needle = format!("\r\n{f}\r\n");
            let pos = packed[at..].find(&needle).map(|p| p + at);
            assert!(pos.is_some(), "field {f} missing or out of order");
            at = pos.unwrap_or(at);
        }
    }

    #[tokio::test]
    async fn full_buffer_drops_and_counts() {
        let metrics = Metrics::new().expect("metrics");
        let cfg = WriterConfig {
            redis_url: "redis://127.0.0.1:1".into(),
            keys: Keys::default(),
            stream_max_len: 10,
            batch_max_entries: 10,
            flush_interval: Duration::ZERO,
            shutdown_flush: Duration::from_millis(10),
        };
        let (sink, _writer) = channel(2, cfg, metrics.clone(), Arc::default());
        assert!(sink.push(entry(1, Decision::Allow)));
        assert!(sink.push(entry(2, Decision::Allow)));
        assert!(!sink.push(entry(3, Decision::Allow)));
        assert_eq!(sink.depth(), 2);
        assert_eq!(metrics.log_dropped.get(), 1);
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
    async fn an_outage_moves_the_buffer_off_the_channel_within_its_bound() {
        let metrics = Metrics::new().expect("metrics");
        let cfg = WriterConfig {
            // Nothing listens on port 1: every write fails at once.
            redis_url: "redis://127.0.0.1:1".into(),
            keys: Keys::default(),
            stream_max_len: 10,
            batch_max_entries: 10,
            flush_interval: Duration::ZERO,
            shutdown_flush: Duration::from_millis(10),
        };
        let (sink, writer) = channel(100, cfg, metrics.clone(), Arc::default());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(writer.run(stop_rx));
        let in_channel = |s: &LogSink| s.tx.max_capacity() - s.tx.capacity();

        // The first batch fails and is dropped; the writer then holds what follows.
        for i in 0..30 {
            assert!(sink.push(entry(i, Decision::Allow)));
        }
        eventually("the first batch to fail and the rest to be held", || {
            metrics.log_dropped.get() == 10 && in_channel(&sink) == 0 && sink.depth() == 20
        })
        .await;

        // More than the buffer holds: channel and held entries together stay within 100, and
        // every entry is either still buffered or counted as dropped.
        let mut accepted = 30;
        for i in 0..300 {
            if sink.push(entry(1000 + i, Decision::Allow)) {
                accepted += 1;
            }
            assert!(sink.depth() <= 100, "depth {}", sink.depth());
            if i % 50 == 0 {
                sleep(Duration::from_millis(20)).await;
            }
        }
        assert!(
            accepted > 100,
            "the writer kept draining the channel ({accepted})"
        );
        eventually("the accounting to settle", || {
            sink.depth() as u64 + metrics.log_dropped.get() == 330
        })
        .await;
        assert_eq!(metrics.log_written.get(), 0);

        // At shutdown the flush fails too: everything left is counted as dropped.
        let _ = stop.send(true);
        task.await.expect("writer");
        assert_eq!(metrics.log_dropped.get(), 330);
        assert_eq!(sink.depth(), 0);
    }
}
