//! Reading a sharded access log (`[access_log] shards`): every reader runs the single-stream
//! reader ([`super::query`]) on each shard's family concurrently and merges the results by
//! entry id.
//!
//! **Order.** Stream ids collide across shards (two shards can append in the same millisecond
//! with the same sequence), so the merged log is ordered by (id, shard), newest first: the
//! unsharded family (read only when entries remain from a time it was written) before shard 0,
//! shard 0 before shard 1, and so on, at equal ids.
//!
//! **Cursors.** With more than one family, cursors are `<id>~<shard>` (`1732000000000-4~2`;
//! `-` names the unsharded family): `before=<id>~<s>` means every position below (id, s) in that
//! order, `since=<id>~<s>` every position above it. Each shard's reader gets exclusive id
//! bounds derived from the cursor ([`bounds_for`]): below `id` for shards at or after `s`, at
//! or below it (below the id's successor) for shards before `s`. A bare id is accepted too and
//! means the same id in every shard; with one family cursors stay bare ids, as they always
//! were.
//!
//! **Exactness while entries arrive.** Redis gives an entry an id at least its own clock's
//! current millisecond, but another shard may still append in a millisecond that already
//! holds entries, with a lower sequence: a position just below entries already returned. So a
//! merged read (more than one family) returns only entries *older than the millisecond
//! Redis's clock is in* when the read starts ([`settled_below`]: the smallest `TIME` of the
//! shards' servers): every entry appended later sorts after everything returned, a `since`
//! poll never misses one, and a `before` walk sees exactly the entries that existed when it
//! began, whatever arrives meanwhile. The newest millisecond shows up a millisecond later.
//!
//! **Pages.** Each shard is read (a small share of the page first, the rest only where it can
//! still belong to the page: [`page`]; the same filters, and the budget over all its reads) from
//! the top of its range down to its own cursor (the last id it read); the merged page is
//! exact down to the highest of those cursors ([`merge_pages`]): what lies below it in some
//! shard is unknown yet, so the merged cursor stops there. An indexed or unfiltered page is
//! therefore still full unless it is the last; a budgeted one may be short, as on one stream.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::future::try_join_all;
use futures::stream::{BoxStream, StreamExt};
use watchpost_common::keys::access_families;
use watchpost_common::AccessKeys;

use crate::{error::ApiError, state::AppState};

use super::export::OlderEntries;
use super::query::{self, Bounds, PageRequest, Walk};
use super::{Filters, Item, StreamId};

/// The rank of a family in the merged order: the unsharded family first, then shard numbers.
pub fn rank(family: &AccessKeys) -> u32 {
    family.shard().map_or(0, |s| u32::from(s) + 1)
}

/// A position in the merged order: (id, shard rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub id: StreamId,
    pub rank: u32,
}

/// A `before`/`since` cursor: an id alone (the same id in every shard) or `<id>~<shard>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub id: StreamId,
    /// The shard rank ([`rank`]); `None` for a bare id.
    pub rank: Option<u32>,
}

impl Cursor {
    /// Parses `<id>` or `<id>~<shard>` (`<shard>` a number below 256, or `-`).
    pub fn parse(text: &str) -> Option<Self> {
        match text.split_once('~') {
            None => StreamId::parse(text).map(|id| Self { id, rank: None }),
            Some((id, shard)) => {
                let id = StreamId::parse(id)?;
                let rank = if shard == "-" {
                    0
                } else if !shard.is_empty() && shard.bytes().all(|b| b.is_ascii_digit()) {
                    let n: u16 = shard.parse().ok()?;
                    if n >= watchpost_common::keys::MAX_ACCESS_SHARDS {
                        return None;
                    }
                    u32::from(n) + 1
                } else {
                    return None;
                };
                Some(Self {
                    id,
                    rank: Some(rank),
                })
            }
        }
    }

    /// Parses a query parameter, answering 400 naming it when malformed.
    pub fn param(name: &str, value: Option<&str>) -> Result<Option<Self>, ApiError> {
        value
            .map(|v| {
                Self::parse(v).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{name} must be a stream id like 1732000000000-0, or with its shard like 1732000000000-0~3 (got {v:?})"
                    ))
                })
            })
            .transpose()
    }
}

/// Text of a position: the bare id with one family, `<id>~<shard>` otherwise.
pub fn format_pos(pos: Pos, sharded: bool) -> String {
    if !sharded {
        return pos.id.to_string();
    }
    match pos.rank {
        0 => format!("{}~-", pos.id),
        r => format!("{}~{}", pos.id, r - 1),
    }
}

/// The next id up (`None` past the largest).
fn successor(id: StreamId) -> Option<StreamId> {
    match id.seq.checked_add(1) {
        Some(seq) => Some(StreamId { ms: id.ms, seq }),
        None => id.ms.checked_add(1).map(|ms| StreamId { ms, seq: 0 }),
    }
}

/// The next id down (`None` below the smallest).
fn predecessor(id: StreamId) -> Option<StreamId> {
    match id.seq.checked_sub(1) {
        Some(seq) => Some(StreamId { ms: id.ms, seq }),
        None => id
            .ms
            .checked_sub(1)
            .map(|ms| StreamId { ms, seq: u64::MAX }),
    }
}

/// The exclusive id bounds of the shard of rank `rank` for the positions strictly between
/// `since` and `before`, within the time range and below `settled` (exclusive). `None` when
/// the shard has nothing in range.
pub fn bounds_for(
    rank: u32,
    before: Option<Cursor>,
    since: Option<Cursor>,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    settled: Option<StreamId>,
) -> Option<Bounds> {
    // Positions below (id, r): in shards ranked before r the id itself is below, so the shard's
    // exclusive upper bound is the id's successor (none past the largest id).
    let below = match before {
        None => None,
        Some(Cursor { id, rank: Some(r) }) if rank < r => successor(id),
        Some(c) => Some(c.id),
    };
    let above = since.and_then(|c| since_for(rank, c));
    let below = match (below, settled) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let b = Bounds::new(below, above, from_ms, to_ms);
    (!b.is_empty()).then_some(b)
}

/// The exclusive lower id bound, in the shard of rank `rank`, of the positions above `since`:
/// in shards ranked after the cursor's the id itself is above, so the bound is its
/// predecessor (`None`: from the smallest id up).
pub fn since_for(rank: u32, since: Cursor) -> Option<StreamId> {
    match since.rank {
        Some(r) if rank > r => predecessor(since.id),
        _ => Some(since.id),
    }
}

/// One shard's page, newest first, with its cursor (`None`: nothing more in its range).
#[derive(Debug, Clone)]
pub struct ShardPage<T> {
    pub rank: u32,
    pub items: Vec<(StreamId, T)>,
    pub next: Option<StreamId>,
}

/// Merges shard pages into one page of at most `limit` items, newest first by (id, rank), and
/// its cursor. Each shard's page is exact from the top of its range down to its own cursor, so
/// the merge is exact down to the highest shard cursor: the items at or above it are kept, and
/// the merged cursor is the last item kept when more than `limit` remain, else that highest
/// shard cursor (`None` when every shard is exhausted).
pub fn merge_pages<T>(pages: Vec<ShardPage<T>>, limit: usize) -> (Vec<(Pos, T)>, Option<Pos>) {
    let cut = pages
        .iter()
        .filter_map(|p| p.next.map(|id| Pos { id, rank: p.rank }))
        .max();
    let mut items: Vec<(Pos, T)> = pages
        .into_iter()
        .flat_map(|p| {
            let rank = p.rank;
            p.items
                .into_iter()
                .map(move |(id, t)| (Pos { id, rank }, t))
        })
        .filter(|(pos, _)| cut.is_none_or(|c| *pos >= c))
        .collect();
    items.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
    if items.len() > limit {
        items.truncate(limit);
        let last = items.last().map(|(p, _)| *p);
        return (items, last);
    }
    (items, cut)
}

/// The families to read: the configured ones ([`access_families`]) and every family still
/// registered by the proxies (entries written under an earlier `shards`), in merged order.
pub async fn families(state: &AppState) -> Result<Vec<AccessKeys>, ApiError> {
    let keys = state.keys();
    let mut out = access_families(keys, state.config().access_log.shard_count());
    let registered: Vec<String> = state
        .redis_timeout(
            redis::cmd("SMEMBERS")
                .arg(keys.access_family_registry())
                .query_async(&mut state.redis()),
        )
        .await?;
    for label in registered {
        if let Some(f) = keys.access_family(&label) {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    out.sort_by_key(rank);
    Ok(out)
}

/// The smallest current millisecond of the servers holding `families`, as an exclusive upper
/// bound (`<ms>-0`): every entry appended from now on has an id at or above it. `None` with a
/// single family (no merge, no bound needed).
pub async fn settled_below(
    state: &AppState,
    families: &[AccessKeys],
) -> Result<Option<StreamId>, ApiError> {
    if families.len() < 2 {
        return Ok(None);
    }
    // The script runs on the server of the stream's slot, so on a cluster each shard's own
    // clock is asked.
    let script = redis::Script::new("return redis.call('TIME')");
    let script = &script;
    let times = try_join_all(families.iter().map(|f| async move {
        let mut con = state.redis();
        let call = script.key(f.stream());
        state
            .redis_timeout(call.invoke_async::<(u64, u64)>(&mut con))
            .await
    }))
    .await?;
    Ok(times
        .into_iter()
        .map(|(secs, micros)| secs.saturating_mul(1000) + micros / 1000)
        .min()
        .map(|ms| StreamId { ms, seq: 0 }))
}

/// Tags an item with its shard (only when the log is sharded).
fn tag(mut item: Item, family: &AccessKeys, sharded: bool) -> Item {
    if sharded {
        item.shard = Some(family.label());
    }
    item
}

/// What a merged page asks for.
#[derive(Debug, Clone)]
pub struct MergedRequest {
    pub limit: usize,
    pub before: Option<Cursor>,
    pub since: Option<Cursor>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub filters: Filters,
    pub budget: usize,
}

/// One shard's part of a merged page being read: its bounds, what it gave so far, its cursor.
struct ShardRead<'a> {
    family: &'a AccessKeys,
    rank: u32,
    /// `None`: nothing of this shard is in range.
    bounds: Option<Bounds>,
    items: Vec<(StreamId, Item)>,
    /// Where the shard's next read starts (exclusive); `None` once it has nothing more.
    next: Option<StreamId>,
    /// Entries examined in this shard so far.
    scanned: usize,
    /// Its reads are budgeted (unindexed filters): it examines at most the page's budget in
    /// all, so a shard out of budget is not read again.
    budgeted: bool,
    /// Read at least once.
    read: bool,
}

impl ShardRead<'_> {
    /// Reads up to `limit` more of this shard, below its cursor.
    async fn extend(
        &mut self,
        state: &AppState,
        req: &MergedRequest,
        limit: usize,
        sharded: bool,
    ) -> Result<(), ApiError> {
        let Some(bounds) = self.bounds else {
            self.read = true;
            return Ok(());
        };
        let bounds = match (self.read, self.next) {
            (false, _) => bounds,
            (true, Some(next)) => Bounds {
                below: Some(next),
                ..bounds
            },
            (true, None) => return Ok(()),
        };
        let request = PageRequest {
            limit,
            bounds,
            filters: req.filters.clone(),
            budget: req.budget.saturating_sub(self.scanned),
        };
        let page = query::page(state, self.family, &request).await?;
        self.read = true;
        self.scanned += page.scanned;
        self.budgeted = page.index.is_none() && !req.filters.is_empty();
        self.next = match page.next_cursor.as_deref() {
            None => None,
            Some(c) => Some(StreamId::parse(c).ok_or_else(|| {
                ApiError::internal(format!("stream returned a malformed id {c:?}"))
            })?),
        };
        let family = self.family;
        self.items.extend(
            page.items
                .into_iter()
                .filter_map(|i| StreamId::parse(&i.id).map(|id| (id, tag(i, family, sharded)))),
        );
        Ok(())
    }
}

/// One page over every family, merged by [`merge_pages`]. Items carry `shard` and the cursor is
/// `<id>~<shard>` when more than one family is read.
///
/// With several families, each shard is first asked for a small share of the page
/// (`limit / shards + 2`), concurrently; a shard whose cursor is still above the page's
/// `limit`-th position (its unread entries could belong to the page) is then asked, again
/// concurrently, for the rest of a full page. A batch lands whole in one shard, so the newest
/// entries usually sit in one or two shards: this reads about `limit` entries of those and a
/// few of every other one, instead of a full page of each. Each shard's reads cover its range
/// from the top down to its cursor, so the merge is exact whatever was read (see
/// [`merge_pages`]).
pub async fn page(
    state: &AppState,
    families: &[AccessKeys],
    req: &MergedRequest,
) -> Result<(Vec<Item>, Option<String>), ApiError> {
    let sharded = families.len() > 1;
    let settled = settled_below(state, families).await?;
    let mut shards: Vec<ShardRead<'_>> = families
        .iter()
        .map(|family| {
            let rank = rank(family);
            ShardRead {
                family,
                rank,
                bounds: bounds_for(rank, req.before, req.since, req.from_ms, req.to_ms, settled),
                items: Vec::new(),
                next: None,
                scanned: 0,
                budgeted: false,
                read: false,
            }
        })
        .collect();
    let first = if sharded {
        (req.limit / families.len() + 2).min(req.limit)
    } else {
        req.limit
    };
    try_join_all(
        shards
            .iter_mut()
            .map(|s| s.extend(state, req, first, sharded)),
    )
    .await?;
    if sharded {
        // The page's `limit`-th position among everything read (none when fewer were read).
        let mut positions: Vec<Pos> = shards
            .iter()
            .flat_map(|s| {
                s.items.iter().map(|(id, _)| Pos {
                    id: *id,
                    rank: s.rank,
                })
            })
            .collect();
        positions.sort_unstable_by(|a, b| b.cmp(a));
        let floor = positions.get(req.limit.saturating_sub(1)).copied();
        let wanted = shards.iter_mut().filter(|s| {
            let above_floor = match (s.next, floor) {
                (Some(next), Some(f)) => {
                    Pos {
                        id: next,
                        rank: s.rank,
                    } > f
                }
                (Some(_), None) => true,
                (None, _) => false,
            };
            above_floor && !(s.budgeted && s.scanned >= req.budget)
        });
        try_join_all(wanted.map(|s| {
            let rest = req.limit.saturating_sub(s.items.len()).max(1);
            s.extend(state, req, rest, sharded)
        }))
        .await?;
    }
    let pages = shards
        .into_iter()
        .map(|s| ShardPage {
            rank: s.rank,
            items: s.items,
            next: s.next,
        })
        .collect();
    let (items, cursor) = merge_pages(pages, req.limit);
    Ok((
        items.into_iter().map(|(_, i)| i).collect(),
        cursor.map(|c| format_pos(c, sharded)),
    ))
}

/// The entry at `cursor`: with a shard, that shard's entry; with a bare id, the entry of the
/// only family holding that id, and 409 when several shards hold one (ask again with
/// `<id>~<shard>`).
pub async fn by_id(
    state: &AppState,
    families: &[AccessKeys],
    cursor: Cursor,
) -> Result<Option<Item>, ApiError> {
    let sharded = families.len() > 1;
    let wanted: Vec<&AccessKeys> = families
        .iter()
        .filter(|f| cursor.rank.is_none_or(|r| rank(f) == r))
        .collect();
    let found = try_join_all(
        wanted
            .iter()
            .map(|f| async move { query::by_id(state, &f.stream(), cursor.id).await }),
    )
    .await?;
    let mut hits: Vec<Item> = wanted
        .into_iter()
        .zip(found)
        .filter_map(|(f, i)| i.map(|i| tag(i, f, sharded)))
        .collect();
    if hits.len() > 1 {
        let shards: Vec<String> = hits.iter().filter_map(|i| i.shard.clone()).collect();
        return Err(ApiError::conflict(format!(
            "entry {} exists in several shards ({}): ask for <id>~<shard>",
            cursor.id,
            shards.join(", ")
        )));
    }
    Ok(hits.pop())
}

/// The entry with this request id (the oldest, should several shards hold one), searched in
/// every family concurrently with [`query::by_request_id`].
pub async fn by_request_id(
    state: &AppState,
    families: &[AccessKeys],
    request_id: &str,
    bounds: Bounds,
) -> Result<Option<Item>, ApiError> {
    let sharded = families.len() > 1;
    let found = try_join_all(families.iter().map(|f| async move {
        query::by_request_id(state, &f.stream(), request_id, bounds).await
    }))
    .await?;
    Ok(families
        .iter()
        .zip(found)
        .filter_map(|(f, i)| {
            i.and_then(|i| {
                let pos = Pos {
                    id: StreamId::parse(&i.id)?,
                    rank: rank(f),
                };
                Some((pos, tag(i, f, sharded)))
            })
        })
        .min_by_key(|(p, _)| *p)
        .map(|(_, i)| i))
}

/// What a shard of a [`MergedWalk`] reads once its stream walk is exhausted.
enum Older {
    /// Nothing (no source, or the source is exhausted).
    Done,
    /// The source, not asked yet: asked once the walk is exhausted, for the matches below the
    /// stream's first id at that time and below the oldest match the walk gave.
    Waiting(Arc<dyn OlderEntries>),
    /// The source's chunks of matches, newest first.
    Reading(BoxStream<'static, Result<Vec<Item>, ApiError>>),
}

/// One shard's walk in a [`MergedWalk`], with the matches it read but has not handed out.
struct ShardWalk {
    family: AccessKeys,
    rank: u32,
    walk: Walk,
    older: Older,
    /// The oldest match the stream walk gave: the older source starts below it.
    lowest: Option<StreamId>,
    buffered: VecDeque<(StreamId, Item)>,
}

impl ShardWalk {
    /// True while the stream walk or the older source may still give matches.
    fn live(&self) -> bool {
        !self.walk.is_done() || !matches!(self.older, Older::Done)
    }

    /// Reads the next chunk into `buffered`: from the stream walk, else from the older source
    /// (started on the first call after the walk). Returns the entries (or index ids) read
    /// from the stream.
    async fn fill(
        &mut self,
        state: &AppState,
        count: usize,
        sharded: bool,
        bounds: Bounds,
        filters: &Filters,
    ) -> Result<usize, ApiError> {
        if !self.walk.is_done() {
            let before = self.walk.scanned;
            let got = self.walk.next(state, count).await?;
            for item in got {
                if let Some(id) = StreamId::parse(&item.id) {
                    self.lowest = Some(self.lowest.map_or(id, |l| l.min(id)));
                    self.buffered
                        .push_back((id, tag(item, &self.family, sharded)));
                }
            }
            return Ok(self.walk.scanned - before);
        }
        match std::mem::replace(&mut self.older, Older::Done) {
            Older::Done => {}
            Older::Waiting(src) => {
                // Below the stream's first id now (everything the stream still holds was
                // examined; entries trimmed while the walk ran are below it) and below the
                // oldest match written from the stream (nothing twice, even an entry trimmed
                // after the walk gave it). Not the oldest id the walk read: an index walk may
                // read postings of trimmed entries far below the stream, which the older
                // source must still answer for.
                let first = first_ids(state, &[self.family.stream()])
                    .await?
                    .pop()
                    .flatten();
                let below = [first, self.lowest, bounds.below]
                    .into_iter()
                    .flatten()
                    .min();
                let b = Bounds {
                    above: bounds.above,
                    below,
                };
                if !b.is_empty() {
                    self.older = Older::Reading(src.matches(&self.family, b, filters.clone()));
                }
            }
            Older::Reading(mut src) => match src.next().await {
                Some(Ok(items)) => {
                    for item in items {
                        if let Some(id) = StreamId::parse(&item.id) {
                            self.buffered
                                .push_back((id, tag(item, &self.family, sharded)));
                        }
                    }
                    self.older = Older::Reading(src);
                }
                Some(Err(e)) => return Err(e),
                None => {}
            },
        }
        Ok(0)
    }
}

/// A walk over every family, newest first by (id, shard): a k-way merge of one [`Walk`] per
/// shard, each continued, when a source of older entries is given
/// ([`MergedWalk::continue_into`], the archive), by that shard's older entries below its
/// stream. Memory holds at most one chunk per shard (and what the older source holds).
pub struct MergedWalk {
    shards: Vec<ShardWalk>,
    sharded: bool,
    /// The bounds every shard was planned over.
    bounds: Bounds,
    filters: Filters,
    /// Entries (or index ids) read so far from the streams, all shards.
    pub scanned: usize,
}

impl MergedWalk {
    /// Plans one walk per family over `bounds` (capped below the settled millisecond when
    /// sharded).
    pub async fn plan(
        state: &AppState,
        families: &[AccessKeys],
        bounds: Bounds,
        filters: Filters,
    ) -> Result<Self, ApiError> {
        let settled = settled_below(state, families).await?;
        let bounds = Bounds {
            below: match (bounds.below, settled) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            ..bounds
        };
        let walks = try_join_all(
            families
                .iter()
                .map(|f| Walk::plan(state, f, bounds, filters.clone())),
        )
        .await?;
        Ok(Self {
            shards: families
                .iter()
                .zip(walks)
                .map(|(f, walk)| ShardWalk {
                    family: f.clone(),
                    rank: rank(f),
                    walk,
                    older: Older::Done,
                    lowest: None,
                    buffered: VecDeque::new(),
                })
                .collect(),
            sharded: families.len() > 1,
            bounds,
            filters,
            scanned: 0,
        })
    }

    /// Continues each shard, once its stream walk is exhausted, with `older`'s matches of that
    /// shard below the stream (see [`Older::Waiting`]), merged like the streams.
    pub fn continue_into(&mut self, older: Arc<dyn OlderEntries>) {
        for s in &mut self.shards {
            s.older = Older::Waiting(older.clone());
        }
    }

    /// True once every shard is exhausted and handed out.
    pub fn is_done(&self) -> bool {
        self.shards
            .iter()
            .all(|s| !s.live() && s.buffered.is_empty())
    }

    /// The next matches, at most `count`, newest first by (id, shard). Reads a chunk of
    /// `count` from each shard whose buffer ran dry (concurrently), then hands out items while
    /// every shard not yet exhausted has one buffered.
    pub async fn next(&mut self, state: &AppState, count: usize) -> Result<Vec<Item>, ApiError> {
        let sharded = self.sharded;
        let bounds = self.bounds;
        let filters = &self.filters;
        loop {
            let dry: Vec<&mut ShardWalk> = self
                .shards
                .iter_mut()
                .filter(|s| s.buffered.is_empty() && s.live())
                .collect();
            if dry.is_empty() {
                break;
            }
            let reads = dry
                .into_iter()
                .map(|s| s.fill(state, count, sharded, bounds, filters));
            let scanned: Vec<usize> = try_join_all(reads).await?;
            self.scanned += scanned.iter().sum::<usize>();
            // A shard may have read only non-matching entries: read again until every shard
            // has a match buffered or is exhausted.
        }
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            // Every live shard has a head here (or is exhausted); take the highest.
            if self
                .shards
                .iter()
                .any(|s| s.buffered.is_empty() && s.live())
            {
                break;
            }
            let best = self
                .shards
                .iter_mut()
                .filter(|s| !s.buffered.is_empty())
                .max_by_key(|s| {
                    s.buffered.front().map(|(id, _)| Pos {
                        id: *id,
                        rank: s.rank,
                    })
                });
            match best.and_then(|s| s.buffered.pop_front()) {
                Some((_, item)) => out.push(item),
                None => break,
            }
        }
        Ok(out)
    }
}

/// The first id of each stream (`None` for an empty or missing one), read concurrently.
pub async fn first_ids(
    state: &AppState,
    streams: &[String],
) -> Result<Vec<Option<StreamId>>, ApiError> {
    let replies = try_join_all(streams.iter().map(|key| {
        let mut con = state.redis();
        async move {
            let reply: redis::Value = state
                .redis_timeout(
                    redis::cmd("XRANGE")
                        .arg(key)
                        .arg("-")
                        .arg("+")
                        .arg("COUNT")
                        .arg(1)
                        .query_async(&mut con),
                )
                .await?;
            Ok::<_, ApiError>(
                super::decode_entries(reply)?
                    .first()
                    .and_then(|(id, _)| StreamId::parse(id)),
            )
        }
    }))
    .await?;
    Ok(replies)
}

/// How long a tail waits before reading again when every new entry was still in the current
/// millisecond (not yet settled).
pub const UNSETTLED_PAUSE: Duration = Duration::from_millis(2);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(ms: u64, seq: u64) -> StreamId {
        StreamId { ms, seq }
    }

    #[test]
    fn cursors_parse_strictly() {
        assert_eq!(
            Cursor::parse("5-1~3"),
            Some(Cursor {
                id: id(5, 1),
                rank: Some(4)
            })
        );
        assert_eq!(
            Cursor::parse("5-1~-"),
            Some(Cursor {
                id: id(5, 1),
                rank: Some(0)
            })
        );
        assert_eq!(
            Cursor::parse("5-1"),
            Some(Cursor {
                id: id(5, 1),
                rank: None
            })
        );
        for bad in [
            "5-1~", "5-1~256", "5-1~x", "5-1~+1", "~1", "5-1~1~2", "5-1~ 1",
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            format_pos(
                Pos {
                    id: id(5, 1),
                    rank: 4
                },
                true
            ),
            "5-1~3"
        );
        assert_eq!(
            format_pos(
                Pos {
                    id: id(5, 1),
                    rank: 0
                },
                true
            ),
            "5-1~-"
        );
        assert_eq!(
            format_pos(
                Pos {
                    id: id(5, 1),
                    rank: 4
                },
                false
            ),
            "5-1"
        );
    }

    /// Whether the model entry at `id` matches the model filter (one in three do not).
    fn model_match(id: StreamId, filtered: bool) -> bool {
        !filtered || (id.ms + id.seq) % 3 != 0
    }

    /// The positions of a model log in each shard's exclusive bounds, paged as
    /// [`query::page`] does (at most `budget` ids examined when `budget` is set, the cursor at
    /// the last id read; otherwise `limit` matches and the last as cursor), merged and paged
    /// through: every matching position exactly once, in (id, rank) order, newest first.
    fn walk_model(
        shards: &[Vec<StreamId>],
        limit: usize,
        since: Option<Cursor>,
        budget: Option<usize>,
    ) -> Vec<Pos> {
        let filtered = budget.is_some();
        let mut out = Vec::new();
        let mut before: Option<Cursor> = None;
        for _ in 0..10_000 {
            let pages: Vec<ShardPage<()>> = shards
                .iter()
                .enumerate()
                .map(|(r, ids)| {
                    let r = r as u32;
                    let empty = ShardPage {
                        rank: r,
                        items: Vec::new(),
                        next: None,
                    };
                    let Some(b) = bounds_for(r, before, since, None, None, None) else {
                        return empty;
                    };
                    let mut range: Vec<StreamId> = ids
                        .iter()
                        .copied()
                        .filter(|i| b.above.is_none_or(|a| *i > a))
                        .filter(|i| b.below.is_none_or(|x| *i < x))
                        .collect();
                    range.sort_by_key(|i| std::cmp::Reverse(*i));
                    let mut items = Vec::new();
                    let mut next = None;
                    for (n, id) in range.iter().enumerate() {
                        if model_match(*id, filtered) {
                            items.push((*id, ()));
                        }
                        if items.len() > limit {
                            items.truncate(limit);
                            next = items.last().map(|(i, _)| *i);
                            break;
                        }
                        if budget.is_some_and(|b| n + 1 == b) && n + 1 < range.len() {
                            next = Some(*id);
                            break;
                        }
                    }
                    ShardPage {
                        rank: r,
                        items,
                        next,
                    }
                })
                .collect();
            let (items, cursor) = merge_pages(pages, limit);
            assert!(items.len() <= limit);
            if budget.is_none() && cursor.is_some() {
                assert_eq!(items.len(), limit, "an unbudgeted page is full unless last");
            }
            out.extend(items.into_iter().map(|(p, _)| p));
            match cursor {
                Some(c) => {
                    before = Some(Cursor {
                        id: c.id,
                        rank: Some(c.rank),
                    })
                }
                None => return out,
            }
        }
        panic!("paging did not end");
    }

    proptest! {
        #[test]
        fn merged_paging_returns_every_position_once_in_order(
            raw in prop::collection::vec(
                prop::collection::btree_set((0u64..4, 0u64..4), 0..12), 1..5),
            limit in 1usize..6,
            since in prop::option::of((0u64..4, 0u64..4, prop::option::of(0u32..5))),
            budget in prop::option::of(1usize..8),
        ) {
            let shards: Vec<Vec<StreamId>> = raw
                .iter()
                .map(|s| s.iter().map(|(ms, seq)| id(*ms, *seq)).collect())
                .collect();
            let since = since.map(|(ms, seq, rank)| Cursor { id: id(ms, seq), rank });
            let got = walk_model(&shards, limit, since, budget);
            let mut want: Vec<Pos> = shards
                .iter()
                .enumerate()
                .flat_map(|(r, ids)| ids.iter().map(move |i| Pos { id: *i, rank: r as u32 }))
                .filter(|p| model_match(p.id, budget.is_some()))
                .filter(|p| match since {
                    None => true,
                    Some(Cursor { id, rank: None }) => p.id > id,
                    Some(Cursor { id, rank: Some(r) }) => *p > Pos { id, rank: r },
                })
                .collect();
            want.sort_by_key(|p| std::cmp::Reverse(*p));
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn bounds_at_the_edges_of_the_id_space() {
        let top = Cursor {
            id: StreamId::MAX,
            rank: Some(2),
        };
        // Shards before the cursor's have no upper bound beyond the largest id.
        assert_eq!(
            bounds_for(1, Some(top), None, None, None, None),
            Some(Bounds::default())
        );
        let bottom = Cursor {
            id: StreamId::MIN,
            rank: Some(2),
        };
        // Shards after the cursor's start at the smallest id itself.
        assert_eq!(
            bounds_for(3, None, Some(bottom), None, None, None),
            Some(Bounds::default())
        );
        assert_eq!(
            bounds_for(1, Some(bottom), None, None, None, None).map(|b| b.below),
            Some(Some(id(0, 1)))
        );
        assert_eq!(bounds_for(2, Some(bottom), None, None, None, None), None);
    }
}
