//! Keyset pagination: `limit` + opaque `cursor` in, `{"items": […], "next_cursor": …}` out.
//!
//! The cursor is base64url (no padding) of `"<created_at as RFC 3339 µs>|<id>"`: the position
//! of the last item of the previous page. Lists are ordered newest first by
//! `(created_at DESC, id DESC)` and a page is
//!
//! ```sql
//! WHERE ($1::timestamptz IS NULL OR (created_at, id) < ($1, $2))
//! ORDER BY created_at DESC, id DESC
//! LIMIT $3            -- PageRequest::fetch_limit() = limit + 1
//! ```
//!
//! Rows inserted while a client pages are newer than its cursor, so they never shift the pages
//! still to come: nothing is skipped or repeated.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;

/// Default and maximum page size of ordinary lists (SPEC §6).
pub const DEFAULT_LIMIT: i64 = 20;
/// See [`DEFAULT_LIMIT`].
pub const MAX_LIMIT: i64 = 100;

/// A position in a `(created_at, id)` ordered list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: String,
}

impl Cursor {
    /// The opaque string form.
    pub fn encode(&self) -> String {
        let raw = format!(
            "{}|{}",
            self.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            self.id
        );
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Parses a cursor from a client; any malformation is a 400.
    pub fn decode(text: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::bad_request("cursor is not valid");
        let raw = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let (time, id) = raw.split_once('|').ok_or_else(bad)?;
        // The id goes to PostgreSQL as text, which refuses NUL.
        if id.is_empty() || id.len() > 64 || crate::extract::has_control_char(id) {
            return Err(bad());
        }
        let created_at = DateTime::parse_from_rfc3339(time)
            .map_err(|_| bad())?
            .with_timezone(&Utc);
        Ok(Self {
            created_at,
            id: id.to_string(),
        })
    }
}

/// A validated page request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Items per page.
    pub limit: i64,
    /// Where the previous page ended.
    pub after: Option<Cursor>,
}

impl PageRequest {
    /// Validates `limit` (default 20, 1..=100) and `cursor` from the query string.
    pub fn new(limit: Option<i64>, cursor: Option<&str>) -> Result<Self, ApiError> {
        Self::with_bounds(limit, cursor, DEFAULT_LIMIT, MAX_LIMIT)
    }

    /// Like [`PageRequest::new`] with another default and maximum (the audit log takes 50/500).
    pub fn with_bounds(
        limit: Option<i64>,
        cursor: Option<&str>,
        default: i64,
        max: i64,
    ) -> Result<Self, ApiError> {
        let limit = limit.unwrap_or(default);
        if !(1..=max).contains(&limit) {
            return Err(ApiError::bad_request(format!(
                "limit must be between 1 and {max}"
            )));
        }
        let after = match cursor {
            None | Some("") => None,
            Some(c) => Some(Cursor::decode(c)?),
        };
        Ok(Self { limit, after })
    }

    /// `LIMIT` for the query: one more row than the page, to know whether a next page exists.
    pub fn fetch_limit(&self) -> i64 {
        self.limit + 1
    }

    /// The cursor's time, or None on the first page (bind as `$n::timestamptz`).
    pub fn after_time(&self) -> Option<DateTime<Utc>> {
        self.after.as_ref().map(|c| c.created_at)
    }

    /// The cursor's id, or None on the first page (bind as `$n::text`).
    pub fn after_id(&self) -> Option<&str> {
        self.after.as_ref().map(|c| c.id.as_str())
    }
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass back as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` fetched rows; `position` gives an item's
    /// `(created_at, id)`.
    pub fn from_rows(
        mut rows: Vec<T>,
        request: &PageRequest,
        position: impl Fn(&T) -> Cursor,
    ) -> Self {
        let limit = usize::try_from(request.limit).unwrap_or(usize::MAX);
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|last| position(last).encode())
        } else {
            None
        };
        Self {
            items: rows,
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[track_caller]
    fn bad(limit: Option<i64>, cursor: Option<&str>) {
        let err = PageRequest::new(limit, cursor).expect_err("should be refused");
        assert_eq!(err.code(), crate::error::ErrorCode::BadRequest);
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(PageRequest::new(None, None).expect("default").limit, 20);
        assert_eq!(PageRequest::new(Some(100), None).expect("max").limit, 100);
        bad(Some(0), None);
        bad(Some(101), None);
        bad(Some(-1), None);
        let audit = PageRequest::with_bounds(None, None, 50, 500).expect("audit");
        assert_eq!(audit.limit, 50);
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor {
            created_at: Utc
                .timestamp_micros(1_732_000_000_123_456)
                .single()
                .expect("time"),
            id: "usr_01JD".into(),
        };
        let back = Cursor::decode(&c.encode()).expect("round trip");
        assert_eq!(back, c);
        bad(None, Some("not base64 !!"));
        bad(None, Some(&URL_SAFE_NO_PAD.encode("no-separator")));
        bad(None, Some(&URL_SAFE_NO_PAD.encode("yesterday|usr_1")));
        bad(None, Some(&URL_SAFE_NO_PAD.encode("2024-01-01T00:00:00Z|")));
        bad(
            None,
            Some(&URL_SAFE_NO_PAD.encode("2024-01-01T00:00:00Z|usr_\u{0}")),
        );
    }

    #[test]
    fn pages_stop_at_limit_and_point_at_the_last_item() {
        let req = PageRequest::new(Some(2), None).expect("req");
        let pos = |n: &i64| Cursor {
            created_at: Utc.timestamp_opt(*n, 0).single().expect("time"),
            id: n.to_string(),
        };
        let page = Page::from_rows(vec![5, 4, 3], &req, pos);
        assert_eq!(page.items, vec![5, 4]);
        let next = Cursor::decode(page.next_cursor.as_deref().expect("more")).expect("cursor");
        assert_eq!(next.id, "4");
        let last = Page::from_rows(vec![2, 1], &req, pos);
        assert_eq!(last.next_cursor, None);
    }
}
