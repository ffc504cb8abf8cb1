//! Walks over the stream, newest first, and the cursor pages built on them.
//!
//! A walk reads between two exclusive id bounds ([`Bounds`]: `before`/`since` cursors and the
//! `from`/`to` time range folded together) in chunks. When a filter has an index
//! ([`Filters::index_terms`]), the most selective of those indexes (the shortest index stream,
//! by `XLEN`) drives the walk: its ids come from `XREVRANGE` over the index stream between the
//! same bounds, the entries are fetched by id from the log, and every filter is checked on
//! them. Index ids are the log's own ids, so cursors mean the same either way, and an entry
//! arriving meanwhile has a newer id than anything a walk downwards has left to read: nothing
//! is skipped or read twice. An id whose entry was trimmed meanwhile is skipped.
//!
//! Without an index (no filter, or only `method`, `path`, `host`, `risk_min` below the lowest
//! bucket) a page reads the log itself and examines at most `[admin] access_log_scan_budget`
//! entries: it may end short with a `next_cursor` at the last id read. Indexed pages have no
//! budget: they end with `limit` items or at the end of the range.

use redis::aio::ConnectionManager;
use watchpost_common::AccessKeys;

use crate::{error::ApiError, state::AppState};

use super::{decode_entries, to_item, Filters, Item, RawEntry, StreamId};

/// Most entries read in one round trip.
pub const CHUNK: usize = 1000;

/// Exclusive id bounds: only ids strictly above `above` and strictly below `below`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bounds {
    pub above: Option<StreamId>,
    pub below: Option<StreamId>,
}

impl Bounds {
    /// Folds the cursors (exclusive ids) and the time range (`from` inclusive, `to` exclusive,
    /// milliseconds of the stream ids) into one pair of bounds.
    pub fn new(
        before: Option<StreamId>,
        since: Option<StreamId>,
        from_ms: Option<u64>,
        to_ms: Option<u64>,
    ) -> Self {
        // id >= from-0  <=>  id > (from-1)-MAX.
        let from = from_ms.and_then(|f| f.checked_sub(1).map(|ms| StreamId { ms, seq: u64::MAX }));
        let to = to_ms.map(|ms| StreamId { ms, seq: 0 });
        let above = match (since, from) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let below = match (before, to) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Self { above, below }
    }

    /// True when no id can lie between the bounds.
    pub fn is_empty(&self) -> bool {
        if self.below == Some(StreamId::MIN) || self.above == Some(StreamId::MAX) {
            return true;
        }
        matches!((self.above, self.below), (Some(a), Some(b)) if b <= a || (b.ms == a.ms && b.seq == a.seq + 1) || (b.seq == 0 && a.seq == u64::MAX && b.ms == a.ms + 1))
    }

    fn lower_arg(&self) -> String {
        self.above
            .map_or_else(|| "-".to_string(), |s| format!("({s}"))
    }

    fn upper_arg(&self) -> String {
        self.below
            .map_or_else(|| "+".to_string(), |b| format!("({b}"))
    }
}

/// What to read.
#[derive(Debug, Clone)]
pub struct PageRequest {
    /// Items wanted, 1..=500.
    pub limit: usize,
    pub bounds: Bounds,
    pub filters: Filters,
    /// Most entries examined by an unindexed call.
    pub budget: usize,
}

/// A page of matches.
#[derive(Debug, Clone)]
pub struct PageResult {
    /// Newest first.
    pub items: Vec<Item>,
    /// Feed back as `before`; `None` when nothing older (and newer than `since`) is left.
    pub next_cursor: Option<String>,
    /// Entries examined (index ids count as examined entries).
    pub scanned: usize,
    /// The index stream that drove the walk, if any.
    pub index: Option<String>,
}

/// A walk over matches, newest first, one chunk at a time.
pub struct Walk {
    con: ConnectionManager,
    stream: String,
    /// The index stream driving the walk, if any.
    driver: Option<String>,
    bounds: Bounds,
    filters: Filters,
    /// Nothing is left below the current upper bound.
    done: bool,
    /// Entries (or index ids) read so far.
    pub scanned: usize,
    /// The last id read (matching or not).
    pub last_read: Option<String>,
}

impl Walk {
    /// Plans a walk: picks the shortest applicable index stream.
    pub async fn plan(
        state: &AppState,
        family: &AccessKeys,
        bounds: Bounds,
        filters: Filters,
    ) -> Result<Self, ApiError> {
        let mut con = state.redis();
        let stream = family.stream();
        let candidates: Vec<String> = filters
            .index_terms()
            .iter()
            .map(|t| t.key_in(family))
            .collect();
        let driver = match candidates.len() {
            0 => None,
            1 => candidates.into_iter().next(),
            _ => {
                let mut pipe = redis::pipe();
                for k in &candidates {
                    pipe.cmd("XLEN").arg(k);
                }
                let lens: Vec<u64> = state.redis_timeout(pipe.query_async(&mut con)).await?;
                candidates
                    .into_iter()
                    .zip(lens)
                    .min_by_key(|(_, n)| *n)
                    .map(|(k, _)| k)
            }
        };
        Ok(Self {
            con,
            stream,
            driver,
            done: bounds.is_empty(),
            bounds,
            filters,
            scanned: 0,
            last_read: None,
        })
    }

    /// The index stream driving the walk.
    pub fn driver(&self) -> Option<&str> {
        self.driver.as_deref()
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Reads the next `count` entries (or index ids) below the last one read and returns the
    /// matches among them, newest first.
    pub async fn next(&mut self, state: &AppState, count: usize) -> Result<Vec<Item>, ApiError> {
        if self.done {
            return Ok(Vec::new());
        }
        let count = count.max(1);
        let source = self.driver.as_deref().unwrap_or(&self.stream);
        let reply: redis::Value = state
            .redis_timeout(
                redis::cmd("XREVRANGE")
                    .arg(source)
                    .arg(self.bounds.upper_arg())
                    .arg(self.bounds.lower_arg())
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut self.con),
            )
            .await?;
        let raw = decode_entries(reply)?;
        if raw.len() < count {
            self.done = true;
        }
        let Some((last, _)) = raw.last() else {
            self.done = true;
            return Ok(Vec::new());
        };
        match StreamId::parse(last) {
            Some(id) => self.bounds.below = Some(id),
            None => {
                return Err(ApiError::internal(format!(
                    "stream returned a malformed id {last:?}"
                )))
            }
        }
        self.scanned += raw.len();
        self.last_read = Some(last.clone());
        if self.bounds.is_empty() {
            self.done = true;
        }
        let entries = if self.driver.is_some() {
            self.fetch(state, raw.into_iter().map(|(id, _)| id).collect())
                .await?
        } else {
            raw
        };
        let mut out = Vec::new();
        for entry in entries {
            if self.filters.may_match(&entry.1) {
                if let Some(item) = to_item(entry) {
                    if self.filters.matches(&item.entry) {
                        out.push(item);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The log entries of `ids` (index ids), in the same order; trimmed ones are left out.
    async fn fetch(
        &mut self,
        state: &AppState,
        ids: Vec<String>,
    ) -> Result<Vec<RawEntry>, ApiError> {
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("XRANGE")
                .arg(&self.stream)
                .arg(id)
                .arg(id)
                .arg("COUNT")
                .arg(1);
        }
        let replies: Vec<redis::Value> =
            state.redis_timeout(pipe.query_async(&mut self.con)).await?;
        let mut out = Vec::with_capacity(ids.len());
        for reply in replies {
            out.extend(decode_entries(reply)?);
        }
        Ok(out)
    }
}

/// Reads one page of one family (shard).
pub async fn page(
    state: &AppState,
    family: &AccessKeys,
    req: &PageRequest,
) -> Result<PageResult, ApiError> {
    let mut walk = Walk::plan(state, family, req.bounds, req.filters.clone()).await?;
    let indexed = walk.driver().is_some();
    let unfiltered = req.filters.is_empty();
    let mut items: Vec<Item> = Vec::new();
    // Read until one match beyond the page is found (then the cursor is the page's last id)
    // or the range is exhausted (then there is no cursor).
    let mut chunk = if unfiltered || indexed {
        req.limit + 1
    } else {
        CHUNK
    };
    loop {
        if items.len() > req.limit {
            items.truncate(req.limit);
            let next_cursor = items.last().map(|i| i.id.clone());
            return Ok(PageResult {
                items,
                next_cursor,
                scanned: walk.scanned,
                index: walk.driver.clone(),
            });
        }
        if walk.is_done() {
            return Ok(PageResult {
                items,
                next_cursor: None,
                scanned: walk.scanned,
                index: walk.driver.clone(),
            });
        }
        if !indexed && !unfiltered {
            let left = req.budget.saturating_sub(walk.scanned);
            if left == 0 {
                // Out of budget: a short page that resumes right after the last entry read.
                return Ok(PageResult {
                    items,
                    next_cursor: walk.last_read.clone(),
                    scanned: walk.scanned,
                    index: None,
                });
            }
            chunk = chunk.min(left);
        }
        let got = walk.next(state, chunk).await?;
        items.extend(got);
        if indexed || unfiltered {
            // The other filters turned some down: read more at a time, up to a full chunk.
            let wanted = req.limit + 1 - items.len().min(req.limit + 1);
            chunk = (chunk * 2).max(wanted).min(CHUNK);
        }
    }
}

/// The entry with this id, if the stream still holds it.
pub async fn by_id(state: &AppState, key: &str, id: StreamId) -> Result<Option<Item>, ApiError> {
    let mut con = state.redis();
    let reply: redis::Value = state
        .redis_timeout(
            redis::cmd("XRANGE")
                .arg(key)
                .arg(id.to_string())
                .arg(id.to_string())
                .arg("COUNT")
                .arg(1)
                .query_async(&mut con),
        )
        .await?;
    Ok(decode_entries(reply)?.into_iter().find_map(to_item))
}

/// How far before its ULID time an entry's stream id may lie (the proxy's clock ahead of
/// Redis's): a lookup by request id starts this much earlier.
pub const REQUEST_ID_CLOCK_SKEW_MS: u64 = 60_000;

/// The oldest entry with this request id within `bounds`. Request ids minted by the proxy are
/// ULIDs: the search reads the log forwards from the ULID's millisecond (less
/// [`REQUEST_ID_CLOCK_SKEW_MS`]), where the entry is almost always found within the first
/// chunk; any other id is searched from the start of the range. Exact: the search ends at the
/// entry or at the end of the range, never at a budget.
pub async fn by_request_id(
    state: &AppState,
    key: &str,
    request_id: &str,
    bounds: Bounds,
) -> Result<Option<Item>, ApiError> {
    let mut bounds = bounds;
    if let Ok(ulid) = ulid::Ulid::from_string(request_id) {
        let start = Bounds::new(
            None,
            None,
            Some(ulid.timestamp_ms().saturating_sub(REQUEST_ID_CLOCK_SKEW_MS)),
            None,
        );
        bounds.above = match (bounds.above, start.above) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let mut con = state.redis();
    loop {
        if bounds.is_empty() {
            return Ok(None);
        }
        let reply: redis::Value = state
            .redis_timeout(
                redis::cmd("XRANGE")
                    .arg(key)
                    .arg(bounds.lower_arg())
                    .arg(bounds.upper_arg())
                    .arg("COUNT")
                    .arg(CHUNK)
                    .query_async(&mut con),
            )
            .await?;
        let raw = decode_entries(reply)?;
        let n = raw.len();
        let last = raw.last().and_then(|(id, _)| StreamId::parse(id));
        for entry in raw {
            if super::raw_field(&entry.1, "request_id") == request_id {
                if let Some(item) = to_item(entry) {
                    return Ok(Some(item));
                }
            }
        }
        match last {
            Some(id) if n == CHUNK => bounds.above = Some(id),
            _ => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64, seq: u64) -> StreamId {
        StreamId { ms, seq }
    }

    #[test]
    fn bounds_fold_cursors_and_time() {
        let b = Bounds::new(Some(id(50, 0)), Some(id(10, 3)), Some(20), Some(40));
        assert_eq!(b.above, Some(id(19, u64::MAX)));
        assert_eq!(b.below, Some(id(40, 0)));
        let b = Bounds::new(Some(id(30, 0)), Some(id(25, 1)), Some(20), Some(40));
        assert_eq!(b.above, Some(id(25, 1)));
        assert_eq!(b.below, Some(id(30, 0)));
        assert!(Bounds::new(None, None, Some(40), Some(40)).is_empty());
        assert!(!Bounds::new(None, None, Some(40), Some(41)).is_empty());
        assert!(Bounds::new(None, None, None, Some(0)).is_empty());
        assert!(Bounds::new(Some(id(5, 1)), Some(id(5, 0)), None, None).is_empty());
        assert!(!Bounds::new(Some(id(5, 2)), Some(id(5, 0)), None, None).is_empty());
        assert_eq!(Bounds::new(None, None, Some(0), None), Bounds::default());
    }
}
