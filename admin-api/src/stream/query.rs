//! Walks over the stream, newest first, and the cursor pages built on them.
//!
//! A walk reads between two exclusive id bounds ([`Bounds`]: `before`/`since` cursors and the
//! `from`/`to` time range folded together) in chunks. When filters have indexes
//! ([`Filters::index_terms`]), the walk reads their postings streams
//! ([`watchpost_common::access_index`]) downwards with `XREVRANGE <index> <upper> <lower ms>-0`
//! (a posting whose base is below the lower bound's millisecond holds no id above it; one whose
//! base is below an exact cursor may hold ids above it, so every id is checked against the
//! exact bounds) and merges them by base id: a batch qualifies only when every index has a
//! posting with its base, and its ids are the intersection of the postings' offsets. The work
//! is bounded by the postings read, not by the entries of the most common value. The entries
//! are then fetched by contiguous id runs (one pipelined `XRANGE <a> <b>` per run) and every
//! filter is checked on them. Ids are the log's own, so cursors mean the same either way, and a
//! batch arriving meanwhile has a higher base id than anything a walk downwards has left to
//! read: nothing is skipped or read twice. An id whose entry was trimmed meanwhile is skipped;
//! a malformed posting is skipped and logged.
//!
//! Without an index (no filter, or only `method`, `path`, `host`, `risk_min` below the lowest
//! bucket) a page reads the log itself and examines at most `[admin] access_log_scan_budget`
//! entries: it may end short with a `next_cursor` at the last id read. Indexed pages have no
//! budget: they end with `limit` items or at the end of the range.

use std::collections::VecDeque;

use watchpost_common::access_index::decode_offsets;
use watchpost_common::keys::AccessKeys;
use watchpost_common::RedisConn;

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

/// Most postings read from one index stream in one round trip.
const MAX_POSTINGS_READ: usize = 1000;

/// One index stream being read downwards.
struct PostingsCursor {
    key: String,
    /// The posting field holding this index's offsets.
    field: String,
    /// Exclusive upper bound of the next read: the last base read (initially the walk's).
    upper: Option<StreamId>,
    /// Postings read and not yet merged, highest base first; offsets ascending.
    buf: VecDeque<(StreamId, Vec<u32>)>,
    /// Nothing is left below `upper`.
    exhausted: bool,
}

/// The index side of a walk: the merged postings streams and the ids found but not yet
/// fetched.
struct IndexWalk {
    cursors: Vec<PostingsCursor>,
    /// Matching ids within the bounds, highest first, not yet fetched.
    pending: VecDeque<StreamId>,
    /// No posting is left to merge.
    merged: bool,
    /// Postings per stream per read; doubles up to [`MAX_POSTINGS_READ`].
    read: usize,
}

/// A walk over matches, newest first, one chunk at a time.
pub struct Walk {
    con: RedisConn,
    stream: String,
    /// The index streams driving the walk, if any.
    index: Option<IndexWalk>,
    /// Their names, for the page's `index`.
    label: Option<String>,
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
    /// Plans a walk over the stream of one access-log family (shard): every indexed filter's
    /// postings stream of that family takes part in the merge.
    pub async fn plan(
        state: &AppState,
        family: &AccessKeys,
        bounds: Bounds,
        filters: Filters,
    ) -> Result<Self, ApiError> {
        let mut cursors: Vec<PostingsCursor> = Vec::new();
        for term in filters.index_terms() {
            let key = term.key(family);
            let field = term.posting_field().to_string();
            if cursors.iter().any(|c| c.key == key && c.field == field) {
                continue;
            }
            cursors.push(PostingsCursor {
                key,
                field,
                upper: bounds.below,
                buf: VecDeque::new(),
                exhausted: false,
            });
        }
        let label = (!cursors.is_empty()).then(|| {
            cursors
                .iter()
                .map(|c| c.key.as_str())
                .collect::<Vec<_>>()
                .join(" & ")
        });
        let index = (!cursors.is_empty()).then(|| IndexWalk {
            cursors,
            pending: VecDeque::new(),
            merged: false,
            read: 0,
        });
        Ok(Self {
            con: state.redis(),
            stream: family.stream(),
            index,
            label,
            done: bounds.is_empty(),
            bounds,
            filters,
            scanned: 0,
            last_read: None,
        })
    }

    /// The index streams driving the walk.
    pub fn driver(&self) -> Option<&str> {
        self.label.as_deref()
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Reads the next `count` entries (or, with an index, up to `count` matching ids) below the
    /// last one read and returns the matches among them, newest first. With an index it may
    /// return nothing and not be done (postings read, no id of them matched yet).
    pub async fn next(&mut self, state: &AppState, count: usize) -> Result<Vec<Item>, ApiError> {
        if self.done {
            return Ok(Vec::new());
        }
        let count = count.max(1);
        let entries = if self.index.is_some() {
            let ids = self.next_ids(state, count).await?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            self.fetch(state, &ids).await?
        } else {
            let reply: redis::Value = state
                .redis_timeout(
                    redis::cmd("XREVRANGE")
                        .arg(&self.stream)
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

    /// Up to `count` matching ids from the index, highest first (reading one round of postings
    /// when fewer are pending); lowers the walk's upper bound to the last one.
    async fn next_ids(
        &mut self,
        state: &AppState,
        count: usize,
    ) -> Result<Vec<StreamId>, ApiError> {
        let Some(ix) = self.index.as_mut() else {
            return Ok(Vec::new());
        };
        if ix.pending.len() < count && !ix.merged {
            ix.read = (ix.read * 2).max(count).clamp(16, MAX_POSTINGS_READ);
            let lower = self
                .bounds
                .above
                .map_or_else(|| "-".to_string(), |a| format!("{}-0", a.ms));
            let mut pipe = redis::pipe();
            let mut reading = Vec::new();
            for (i, c) in ix.cursors.iter().enumerate() {
                if c.buf.is_empty() && !c.exhausted {
                    let upper = c.upper.map_or_else(|| "+".to_string(), |u| format!("({u}"));
                    pipe.cmd("XREVRANGE")
                        .arg(&c.key)
                        .arg(upper)
                        .arg(&lower)
                        .arg("COUNT")
                        .arg(ix.read);
                    reading.push(i);
                }
            }
            if !reading.is_empty() {
                let replies: Vec<redis::Value> =
                    state.redis_timeout(pipe.query_async(&mut self.con)).await?;
                for (i, reply) in reading.into_iter().zip(replies) {
                    let postings = decode_entries(reply)?;
                    let c = &mut ix.cursors[i];
                    if postings.len() < ix.read {
                        c.exhausted = true;
                    }
                    for (id, fields) in postings {
                        let Some(base) = StreamId::parse(&id) else {
                            tracing::warn!(key = %c.key, id = %id, "access log: posting with a malformed id skipped");
                            c.exhausted = true;
                            break;
                        };
                        c.upper = Some(base);
                        let Some((_, text)) = fields.iter().find(|(f, _)| *f == c.field) else {
                            // A bucket posting without this IP.
                            continue;
                        };
                        match decode_offsets(text) {
                            Some(offsets) => c.buf.push_back((base, offsets)),
                            None => {
                                tracing::warn!(key = %c.key, id = %id, "access log: malformed posting skipped");
                            }
                        }
                    }
                }
            }
            merge(ix, self.bounds);
        }
        let take = count.min(ix.pending.len());
        let ids: Vec<StreamId> = ix.pending.drain(..take).collect();
        if let Some(last) = ids.last() {
            self.bounds.below = Some(*last);
            self.last_read = Some(last.to_string());
        }
        self.scanned += ids.len();
        if ix.merged && ix.pending.is_empty() {
            self.done = true;
        }
        Ok(ids)
    }

    /// The log entries of `ids` (highest first), in the same order, one `XRANGE` per run of
    /// consecutive ids; trimmed ones are left out.
    async fn fetch(
        &mut self,
        state: &AppState,
        ids: &[StreamId],
    ) -> Result<Vec<RawEntry>, ApiError> {
        let mut pipe = redis::pipe();
        let mut i = 0;
        while i < ids.len() {
            let hi = ids[i];
            let mut lo = hi;
            while i + 1 < ids.len()
                && ids[i + 1].ms == lo.ms
                && lo.seq.checked_sub(1) == Some(ids[i + 1].seq)
            {
                lo = ids[i + 1];
                i += 1;
            }
            pipe.cmd("XRANGE")
                .arg(&self.stream)
                .arg(lo.to_string())
                .arg(hi.to_string())
                .arg("COUNT")
                .arg(hi.seq - lo.seq + 1);
            i += 1;
        }
        let replies: Vec<redis::Value> =
            state.redis_timeout(pipe.query_async(&mut self.con)).await?;
        let mut out = Vec::with_capacity(ids.len());
        for reply in replies {
            let mut run = decode_entries(reply)?;
            run.reverse();
            out.extend(run);
        }
        Ok(out)
    }
}

/// Merges the cursors' buffered postings by base id, highest first, into `pending` (ids within
/// `bounds`, highest first) until a cursor needs more postings read or one has none left.
fn merge(ix: &mut IndexWalk, bounds: Bounds) {
    loop {
        if ix.cursors.iter().any(|c| c.buf.is_empty()) {
            if ix.cursors.iter().any(|c| c.buf.is_empty() && c.exhausted) {
                ix.merged = true;
                for c in &mut ix.cursors {
                    c.buf.clear();
                }
            }
            return;
        }
        let Some(top) = ix
            .cursors
            .iter()
            .filter_map(|c| c.buf.front().map(|(b, _)| *b))
            .max()
        else {
            return;
        };
        if ix
            .cursors
            .iter()
            .all(|c| c.buf.front().map(|(b, _)| *b) == Some(top))
        {
            let mut offsets: Vec<u32> = Vec::new();
            for (n, c) in ix.cursors.iter_mut().enumerate() {
                let Some((_, mine)) = c.buf.pop_front() else {
                    continue;
                };
                offsets = if n == 0 {
                    mine
                } else {
                    intersect(&offsets, &mine)
                };
            }
            for off in offsets.into_iter().rev() {
                let Some(seq) = top.seq.checked_add(u64::from(off)) else {
                    continue;
                };
                let id = StreamId { ms: top.ms, seq };
                if bounds.above.is_none_or(|a| id > a) && bounds.below.is_none_or(|b| id < b) {
                    ix.pending.push_back(id);
                }
            }
        } else {
            for c in &mut ix.cursors {
                if c.buf.front().map(|(b, _)| *b) == Some(top) {
                    c.buf.pop_front();
                }
            }
        }
    }
}

/// The common elements of two ascending lists.
fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
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
                index: walk.label.clone(),
            });
        }
        if walk.is_done() {
            return Ok(PageResult {
                items,
                next_cursor: None,
                scanned: walk.scanned,
                index: walk.label.clone(),
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

    fn cursor(postings: &[((u64, u64), &[u32])], exhausted: bool) -> PostingsCursor {
        PostingsCursor {
            key: String::new(),
            field: String::new(),
            upper: None,
            buf: postings
                .iter()
                .map(|((ms, seq), offs)| (id(*ms, *seq), offs.to_vec()))
                .collect(),
            exhausted,
        }
    }

    #[test]
    fn merge_intersects_postings_by_base_within_the_bounds() {
        let mut ix = IndexWalk {
            cursors: vec![
                cursor(
                    &[((9, 0), &[0, 1, 2]), ((7, 4), &[1, 3]), ((5, 0), &[0])],
                    true,
                ),
                cursor(
                    &[((9, 0), &[1, 2, 5]), ((8, 0), &[0]), ((7, 4), &[0, 3])],
                    false,
                ),
            ],
            pending: VecDeque::new(),
            merged: false,
            read: 0,
        };
        // Below 9-2 (exclusive): 9-1 only from the first batch.
        let bounds = Bounds {
            above: None,
            below: Some(id(9, 2)),
        };
        merge(&mut ix, bounds);
        // 9-0 (offsets 1, 2 in both; 9-2 is out of bounds), 8-0 (second only: out), 7-4
        // (offset 3 in both: 7-7); then the second cursor needs more postings read.
        assert_eq!(ix.pending, [id(9, 1), id(7, 7)]);
        assert!(!ix.merged);
        assert_eq!(ix.cursors[0].buf.len(), 1);
        // The second cursor has nothing left: no batch can qualify any more.
        ix.cursors[1].exhausted = true;
        merge(&mut ix, bounds);
        assert!(ix.merged);
        assert_eq!(ix.pending.len(), 2);
        assert_eq!(intersect(&[1, 2, 4, 9], &[0, 2, 3, 9, 10]), [2, 9]);
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
