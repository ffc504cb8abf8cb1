//! The live tail: new stream entries as Server-Sent Events.
//!
//! Each tail owns a Redis connection of its own and loops on `XREAD BLOCK`. A blocking read
//! must not run on the shared connection manager (it would hold up every other request's
//! commands behind it, and its 1 s response timeout is shorter than the block), so the
//! dedicated connection gets a response timeout longer than the block time. When the client
//! goes away, axum drops the event stream, which drops the pending read and the connection,
//! and releases the tail's slot.
//!
//! A sharded log (`[access_log] shards`) is read with one `XREAD` naming every shard's stream,
//! each from its own last id, and the entries are sent in (id, shard) order. An entry is sent
//! only once it is settled: older than the millisecond Redis's clock is in (`TIME`, read after
//! each `XREAD`), and not above the last entry read from a shard whose reply was cut at the
//! read count. Every later entry then sorts after it, so the event id `<id>~<shard>` is an
//! exact resume point for `Last-Event-ID`. Unsettled entries are read again by the next
//! `XREAD`, which answers at once (after a pause of [`super::shards::UNSETTLED_PAUSE`]).
//!
//! On a Redis Cluster the shards' streams are in different slots, and one command may only name
//! keys of one slot: each shard is read with its own `XREAD` (without `BLOCK`, all shards
//! concurrently; a blocking read would hold up the cluster connection's other commands to that
//! master), every [`CLUSTER_POLL_INTERVAL`] while nothing arrives. The clock that settles
//! entries is then the smallest of the shards' servers' (`TIME` run by a script on each
//! stream's slot). A log of one stream is read with `XREAD BLOCK` on a cluster too.
//!
//! A tail outlives the request that authenticated it, so its credential is checked again
//! every [`RECHECK_INTERVAL`]: once the API key or session is revoked or deleted, the user or
//! an impersonating admin is disabled, or the user is no longer a platform admin, the tail
//! sends one `error` event (`UNAUTHORIZED` or `FORBIDDEN`) and ends. While PostgreSQL is
//! unreachable the tail goes on (no credential can be revoked meanwhile) and the next check
//! that reaches it decides.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::Event;
use futures::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use watchpost_common::{ConnOptions, RedisConn};

use crate::{
    auth::{admin_credential_withdrawn, Principal},
    error::ApiError,
    state::AppState,
};

use watchpost_common::AccessKeys;

use super::shards::{self, format_pos, Cursor, Pos};
use super::{decode_entries, to_item, Filters, StreamId};

/// Most entries taken per `XREAD`.
const READ_COUNT: usize = 500;
/// Extra response time granted beyond the block time before a read counts as failed.
const RESPONSE_SLACK: Duration = Duration::from_secs(5);
/// Longest wait to open the tail's connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an open tail checks that its credential still holds (one indexed query).
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How often a tail of a sharded log on a Redis Cluster reads every shard again while no entry
/// arrives (one non-blocking `XREAD` per shard).
pub const CLUSTER_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Bounds the number of concurrent tails of one server.
#[derive(Debug, Clone)]
pub struct TailSlots(Arc<Semaphore>);

impl TailSlots {
    /// Room for `max` tails.
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(max)))
    }

    /// A slot, or 429 when every slot is taken.
    pub fn acquire(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.0
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::rate_limited(5))
    }
}

/// How a tail reads.
#[derive(Debug, Clone)]
pub struct TailRequest {
    /// The families (shards) to read, from [`shards::families`].
    pub families: Vec<AccessKeys>,
    /// Start after this position; `None` starts at the newest entry (only later ones are sent).
    pub since: Option<Cursor>,
    pub filters: Filters,
    /// `XREAD BLOCK` time.
    pub block: Duration,
    /// The caller, re-checked while the tail is open.
    pub principal: Principal,
}

/// One shard being tailed.
struct TailShard {
    key: String,
    rank: u32,
    /// The last id read and settled (sent or filtered out).
    last_id: String,
}

struct Tail {
    con: RedisConn,
    shards: Vec<TailShard>,
    sharded: bool,
    /// Several shards on a Redis Cluster: one non-blocking `XREAD` per shard (see the module
    /// docs).
    per_shard: bool,
    filters: Filters,
    block_ms: u64,
    failed: bool,
    _slot: OwnedSemaphorePermit,
    _open: crate::metrics::OpenTail,
}

/// Opens the tail's own connection and resolves its starting point; 503 when Redis is down.
pub async fn open(
    state: &AppState,
    req: TailRequest,
    slot: OwnedSemaphorePermit,
) -> Result<impl Stream<Item = Result<Event, Infallible>>, ApiError> {
    let options = ConnOptions {
        connect_timeout: CONNECT_TIMEOUT,
        response_timeout: req.block + RESPONSE_SLACK,
        retries: 1,
        max_delay: CONNECT_TIMEOUT,
    };
    let mut con = tokio::time::timeout(
        CONNECT_TIMEOUT + Duration::from_millis(500),
        state.config().redis.target().connect(options),
    )
    .await
    .map_err(|_| ApiError::unavailable("redis: tail connection timed out"))??;
    let mut tail_shards = Vec::with_capacity(req.families.len());
    for family in &req.families {
        let key = family.stream();
        let rank = shards::rank(family);
        let last_id = match req.since {
            Some(since) => shards::since_for(rank, since)
                .map_or_else(|| "0-0".to_string(), |id| id.to_string()),
            None => {
                // Resolve "$" once: re-sending "$" on every read would miss entries added
                // between two reads.
                let newest: redis::Value = state
                    .redis_timeout(
                        redis::cmd("XREVRANGE")
                            .arg(&key)
                            .arg("+")
                            .arg("-")
                            .arg("COUNT")
                            .arg(1)
                            .query_async(&mut con),
                    )
                    .await?;
                decode_entries(newest)?
                    .into_iter()
                    .next()
                    .map_or_else(|| "0-0".to_string(), |(id, _)| id)
            }
        };
        tail_shards.push(TailShard { key, rank, last_id });
    }
    let tail = Tail {
        per_shard: con.is_cluster() && tail_shards.len() > 1,
        con,
        sharded: tail_shards.len() > 1,
        shards: tail_shards,
        filters: req.filters,
        block_ms: u64::try_from(req.block.as_millis()).unwrap_or(u64::MAX),
        failed: false,
        _slot: slot,
        _open: crate::metrics::OpenTail::open(&state.metrics().tails_open),
    };
    // The closing event of a withdrawn credential. When the tail ends otherwise, the watch is
    // dropped with its sender and nothing more is sent.
    let (closing_tx, closing_rx) = tokio::sync::oneshot::channel::<Event>();
    let watch = {
        let state = state.clone();
        let principal = req.principal;
        async move {
            let event = credential_withdrawn(&state, &principal).await;
            let _ = closing_tx.send(event);
        }
    };
    let closing = futures::stream::once(closing_rx)
        .filter_map(|event| std::future::ready(event.ok().map(Ok)));
    Ok(futures::stream::unfold(tail, next_events)
        .flat_map(|events| futures::stream::iter(events.into_iter().map(Ok)))
        // A tail never ends by itself; graceful shutdown waits for open responses, so end
        // it when the process is asked to stop, or when its credential no longer holds.
        .take_until(async move {
            tokio::select! {
                () = stop_requested() => {},
                () = watch => {},
            }
        })
        .chain(closing))
}

/// Resolves, with the `error` event to send last, once `principal`'s credential no longer
/// grants the tail: checked every [`RECHECK_INTERVAL`].
async fn credential_withdrawn(state: &AppState, principal: &Principal) -> Event {
    let e = admin_credential_withdrawn(state, principal, RECHECK_INTERVAL).await;
    tracing::info!(user_id = %principal.user_id, "access-log tail: ending the stream");
    let body = serde_json::json!({"code": e.code(), "message": e.public_message()});
    Event::default().event("error").data(body.to_string())
}

/// Resolves on SIGINT or SIGTERM (every listener is notified; the server has its own). A
/// signal that cannot be listened for never resolves, rather than ending tails at once.
async fn stop_requested() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// One `XREAD BLOCK` over every shard: the settled matching entries as events, in (id, shard)
/// order (often none); after a failure, one `error` event and the end of the stream.
async fn next_events(mut tail: Tail) -> Option<(Vec<Event>, Tail)> {
    if tail.failed {
        return None;
    }
    let read = if tail.per_shard {
        read_each_shard(&tail).await
    } else {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(tail.block_ms)
            .arg("STREAMS");
        for s in &tail.shards {
            cmd.arg(&s.key);
        }
        for s in &tail.shards {
            cmd.arg(&s.last_id);
        }
        let reply: redis::RedisResult<redis::Value> = cmd.query_async(&mut tail.con).await;
        reply.map_err(ApiError::from).and_then(stream_entries)
    };
    let read = match read {
        Ok(r) => r,
        Err(e) => return Some(failed(tail, &e)),
    };
    if tail.per_shard && read.iter().all(|(_, raw)| raw.is_empty()) {
        // Nothing new in any shard: read again after a pause, as a blocking read would.
        let pause = CLUSTER_POLL_INTERVAL.min(Duration::from_millis(tail.block_ms.max(1)));
        tokio::time::sleep(pause).await;
        return Some((Vec::new(), tail));
    }
    // The settled limit: below the current millisecond, at or below the last entry of a cut
    // reply. One family: everything read is settled, as on an unsharded log.
    let mut now_ms: Option<u64> = None;
    let mut cut: Option<Pos> = None;
    if tail.sharded && !read.is_empty() {
        match servers_now_ms(&tail).await {
            Ok(ms) => now_ms = Some(ms),
            Err(e) => return Some(failed(tail, &ApiError::from(e))),
        }
    }
    let mut entries: Vec<(Pos, usize, super::RawEntry)> = Vec::new();
    for (key, raw) in read {
        let Some(i) = tail.shards.iter().position(|s| s.key == key) else {
            continue;
        };
        let rank = tail.shards[i].rank;
        let full = raw.len() >= READ_COUNT;
        for entry in raw {
            let Some(id) = StreamId::parse(&entry.0) else {
                continue;
            };
            entries.push((Pos { id, rank }, i, entry));
        }
        if full {
            if let Some(last) = entries.iter().filter(|e| e.1 == i).map(|e| e.0).max() {
                cut = Some(cut.map_or(last, |c| c.min(last)));
            }
        }
    }
    entries.sort_by_key(|e| e.0);
    let total = entries.len();
    let mut events = Vec::new();
    let mut sent = 0usize;
    for (pos, i, entry) in entries {
        if now_ms.is_some_and(|now| pos.id.ms >= now) || cut.is_some_and(|c| pos > c) {
            // Not settled yet: the next read returns it again.
            break;
        }
        sent += 1;
        tail.shards[i].last_id.clone_from(&entry.0);
        if !tail.filters.may_match(&entry.1) {
            continue;
        }
        let Some(mut item) = to_item(entry) else {
            continue;
        };
        if !tail.filters.matches(&item.entry) {
            continue;
        }
        if tail.sharded {
            item.shard = Some(if pos.rank == 0 {
                "-".to_string()
            } else {
                (pos.rank - 1).to_string()
            });
        }
        match Event::default()
            .event("entry")
            .id(format_pos(pos, tail.sharded))
            .json_data(&item)
        {
            Ok(event) => events.push(event),
            Err(e) => tracing::warn!(error = %e, "access-log tail: cannot encode entry"),
        }
    }
    if sent < total && sent == 0 {
        // Everything read is in the current millisecond: the next read would return it at once.
        tokio::time::sleep(shards::UNSETTLED_PAUSE).await;
    }
    Some((events, tail))
}

/// One non-blocking `XREAD` per shard, concurrently (a sharded log on a cluster): the entries
/// of each shard after its last id, by key.
async fn read_each_shard(tail: &Tail) -> Result<Vec<(String, Vec<super::RawEntry>)>, ApiError> {
    let reads = tail.shards.iter().map(|s| {
        let mut con = tail.con.clone();
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(READ_COUNT)
            .arg("STREAMS")
            .arg(&s.key)
            .arg(&s.last_id);
        async move {
            let reply: redis::Value = cmd.query_async(&mut con).await?;
            stream_entries(reply)
        }
    });
    Ok(futures::future::try_join_all(reads)
        .await?
        .into_iter()
        .flatten()
        .collect())
}

/// The current millisecond of Redis's clock, as the settled limit: on a cluster the smallest of
/// the clocks of the servers holding the shards (`TIME` by a script on each stream's slot),
/// on one node its `TIME`.
async fn servers_now_ms(tail: &Tail) -> redis::RedisResult<u64> {
    let to_ms = |(secs, micros): (u64, u64)| secs.saturating_mul(1000) + micros / 1000;
    if !tail.per_shard {
        let mut con = tail.con.clone();
        return redis::cmd("TIME")
            .query_async::<(u64, u64)>(&mut con)
            .await
            .map(to_ms);
    }
    let script = redis::Script::new("return redis.call('TIME')");
    let script = &script;
    let times = futures::future::try_join_all(tail.shards.iter().map(|s| {
        let mut con = tail.con.clone();
        async move {
            script
                .key(&s.key)
                .invoke_async::<(u64, u64)>(&mut con)
                .await
        }
    }))
    .await?;
    Ok(times.into_iter().map(to_ms).min().unwrap_or(0))
}

/// The `error` event that ends a tail whose read failed.
fn failed(mut tail: Tail, e: &ApiError) -> (Vec<Event>, Tail) {
    tracing::warn!(error = %e, "access-log tail: read failed, ending the stream");
    tail.failed = true;
    let event = Event::default()
        .event("error")
        .data(r#"{"code":"UNAVAILABLE","message":"the access log is unavailable"}"#);
    (vec![event], tail)
}

/// The entries of each stream in an `XREAD` reply (`Nil` when the block timed out), by key.
fn stream_entries(reply: redis::Value) -> Result<Vec<(String, Vec<super::RawEntry>)>, ApiError> {
    use redis::Value;
    let streams: Vec<(Value, Value)> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => {
            let mut out = Vec::with_capacity(streams.len());
            for s in streams {
                match s {
                    Value::Array(parts) => {
                        let mut parts = parts.into_iter();
                        if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
                            out.push((k, v));
                        }
                    }
                    other => {
                        return Err(ApiError::internal(format!(
                            "unexpected XREAD stream {other:?}"
                        )))
                    }
                }
            }
            out
        }
        Value::Map(streams) => streams,
        other => {
            return Err(ApiError::internal(format!(
                "unexpected XREAD reply {other:?}"
            )))
        }
    };
    streams
        .into_iter()
        .map(|(k, v)| {
            let key = match k {
                Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                Value::SimpleString(s) => s,
                _ => String::new(),
            };
            Ok((key, decode_entries(v)?))
        })
        .collect()
}
