//! Cursor pages over the stream, newest first, with a bounded scan per call.
//!
//! A page walks `XREVRANGE key (before (since COUNT chunk` downwards in chunks. Every entry it
//! reads counts against the scan budget whether it matches or not. The page ends when it has
//! `limit` matches, when the stream (or the `since` bound) is exhausted, or when the budget
//! runs out; in the last case it is a short page whose `next_cursor` is the last id *read*,
//! so that the next call starts exactly after it: nothing is skipped or read twice.

use crate::{error::ApiError, state::AppState};

use super::{decode_entries, to_item, Filters, Item, StreamId};

/// Most entries read in one round trip.
pub const CHUNK: usize = 1000;

/// What to read.
#[derive(Debug, Clone)]
pub struct PageRequest {
    /// Items wanted, 1..=500.
    pub limit: usize,
    /// Only entries older than this id.
    pub before: Option<StreamId>,
    /// Only entries newer than this id.
    pub since: Option<StreamId>,
    pub filters: Filters,
    /// Most entries examined by this call.
    pub budget: usize,
}

/// A page of matches.
#[derive(Debug, Clone)]
pub struct PageResult {
    /// Newest first.
    pub items: Vec<Item>,
    /// Feed back as `before`; `None` when nothing older (and newer than `since`) is left.
    pub next_cursor: Option<String>,
    /// Entries examined.
    pub scanned: usize,
}

/// Reads one page from `key`.
pub async fn page(state: &AppState, key: &str, req: &PageRequest) -> Result<PageResult, ApiError> {
    let mut result = PageResult {
        items: Vec::new(),
        next_cursor: None,
        scanned: 0,
    };
    // Bounds Redis cannot express as exclusive ids: nothing can lie outside them.
    if req.before == Some(StreamId::MIN) || req.since == Some(StreamId::MAX) {
        return Ok(result);
    }
    if let (Some(b), Some(s)) = (req.before, req.since) {
        if b <= s {
            return Ok(result);
        }
    }
    let lower = req
        .since
        .map_or_else(|| "-".to_string(), |s| format!("({s}"));
    let mut upper = req
        .before
        .map_or_else(|| "+".to_string(), |b| format!("({b}"));
    let mut con = state.redis();
    // Unfiltered pages read one entry more than they return, to know whether another page
    // exists; filtered ones learn it from a chunk that comes back short.
    let unfiltered = req.filters.is_empty();
    let mut last_read: Option<String> = None;
    loop {
        let remaining_budget = req.budget.saturating_sub(result.scanned);
        if remaining_budget == 0 {
            // Out of budget: a short page that resumes right after the last entry read.
            result.next_cursor = last_read;
            return Ok(result);
        }
        let wanted = if unfiltered {
            req.limit - result.items.len() + 1
        } else {
            CHUNK
        };
        let count = wanted.min(remaining_budget);
        let reply: redis::Value = state
            .redis_timeout(
                redis::cmd("XREVRANGE")
                    .arg(key)
                    .arg(&upper)
                    .arg(&lower)
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut con),
            )
            .await?;
        let raw = decode_entries(reply)?;
        let got = raw.len();
        let exhausted = got < count;
        for (i, entry) in raw.into_iter().enumerate() {
            if result.items.len() == req.limit {
                // The look-ahead entry of an unfiltered page: more exist beyond the page.
                result.next_cursor = result.items.last().map(|i| i.id.clone());
                return Ok(result);
            }
            result.scanned += 1;
            last_read = Some(entry.0.clone());
            if req.filters.may_match(&entry.1) {
                if let Some(item) = to_item(entry) {
                    if req.filters.matches(&item.entry) {
                        result.items.push(item);
                    }
                }
            }
            if !unfiltered && result.items.len() == req.limit {
                let read_everything = exhausted && i + 1 == got;
                result.next_cursor = if read_everything { None } else { last_read };
                return Ok(result);
            }
        }
        if exhausted {
            return Ok(result);
        }
        match &last_read {
            Some(id) => upper = format!("({id}"),
            None => return Ok(result),
        }
    }
}
