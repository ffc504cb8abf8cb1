//! The live tail: new stream entries as Server-Sent Events.
//!
//! Each tail owns a Redis connection of its own and loops on `XREAD BLOCK`. A blocking read
//! must not run on the shared connection manager (it would hold up every other request's
//! commands behind it, and its 1 s response timeout is shorter than the block), so the
//! dedicated connection gets a response timeout longer than the block time. When the client
//! goes away, axum drops the event stream, which drops the pending read and the connection,
//! and releases the tail's slot.
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

use super::{decode_entries, to_item, Filters, StreamId};

/// Most entries taken per `XREAD`.
const READ_COUNT: usize = 500;
/// Extra response time granted beyond the block time before a read counts as failed.
const RESPONSE_SLACK: Duration = Duration::from_secs(5);
/// Longest wait to open the tail's connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an open tail checks that its credential still holds (one indexed query).
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(2);

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
    pub key: String,
    /// Start after this id; `None` starts at the newest entry (only later ones are sent).
    pub since: Option<StreamId>,
    pub filters: Filters,
    /// `XREAD BLOCK` time.
    pub block: Duration,
    /// The caller, re-checked while the tail is open.
    pub principal: Principal,
}

struct Tail {
    con: RedisConn,
    key: String,
    last_id: String,
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
    let last_id = match req.since {
        Some(id) => id.to_string(),
        None => {
            // Resolve "$" once: re-sending "$" on every read would miss entries added
            // between two reads.
            let newest: redis::Value = state
                .redis_timeout(
                    redis::cmd("XREVRANGE")
                        .arg(&req.key)
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
    let tail = Tail {
        con,
        key: req.key,
        last_id,
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

/// One `XREAD BLOCK`: the matching entries as events (often none); after a failure, one
/// `error` event and the end of the stream.
async fn next_events(mut tail: Tail) -> Option<(Vec<Event>, Tail)> {
    if tail.failed {
        return None;
    }
    let reply: redis::RedisResult<redis::Value> = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(READ_COUNT)
        .arg("BLOCK")
        .arg(tail.block_ms)
        .arg("STREAMS")
        .arg(&tail.key)
        .arg(&tail.last_id)
        .query_async(&mut tail.con)
        .await;
    let entries = match reply.map_err(ApiError::from).and_then(stream_entries) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "access-log tail: read failed, ending the stream");
            tail.failed = true;
            let event = Event::default()
                .event("error")
                .data(r#"{"code":"UNAVAILABLE","message":"the access log is unavailable"}"#);
            return Some((vec![event], tail));
        }
    };
    let mut events = Vec::new();
    for entry in entries {
        tail.last_id.clone_from(&entry.0);
        if !tail.filters.may_match(&entry.1) {
            continue;
        }
        let Some(item) = to_item(entry) else { continue };
        if !tail.filters.matches(&item.entry) {
            continue;
        }
        match Event::default()
            .event("entry")
            .id(item.id.clone())
            .json_data(&item)
        {
            Ok(event) => events.push(event),
            Err(e) => tracing::warn!(error = %e, "access-log tail: cannot encode entry"),
        }
    }
    Some((events, tail))
}

/// The entries of the single stream in an `XREAD` reply (`Nil` when the block timed out).
fn stream_entries(reply: redis::Value) -> Result<Vec<super::RawEntry>, ApiError> {
    use redis::Value;
    let first = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams.into_iter().next(),
        Value::Map(streams) => streams
            .into_iter()
            .next()
            .map(|(k, v)| Value::Array(vec![k, v])),
        other => {
            return Err(ApiError::internal(format!(
                "unexpected XREAD reply {other:?}"
            )))
        }
    };
    match first {
        None => Ok(Vec::new()),
        Some(Value::Array(parts)) => match parts.into_iter().nth(1) {
            Some(entries) => decode_entries(entries),
            None => Ok(Vec::new()),
        },
        Some(other) => Err(ApiError::internal(format!(
            "unexpected XREAD stream {other:?}"
        ))),
    }
}
