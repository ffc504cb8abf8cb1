//! Per-admin rate limits in Redis, shared by every admin instance.
//!
//! Two fixed windows (a minute and an hour) per actor. One pipeline per request does
//! `INCR` + `EXPIRE` on both window keys. When Redis is unreachable the limiter fails open
//! (the request proceeds, a warning is logged): the admin API must stay usable for
//! PostgreSQL-only work while Redis is down.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::{error::ApiError, state::AppState};

/// `RateLimit-Limit`.
pub const LIMIT_HEADER: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`.
pub const REMAINING_HEADER: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset` (seconds until the window resets).
pub const RESET_HEADER: HeaderName = HeaderName::from_static("ratelimit-reset");

/// One window's state after counting a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: u64,
    pub count: u64,
    pub reset_secs: u64,
}

impl Window {
    fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.count)
    }
    fn exceeded(&self) -> bool {
        self.count > self.limit
    }
}

/// The verdict for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The window reported in the headers: the exceeded one, else the one with the least left.
    pub window: Window,
    pub allowed: bool,
}

impl Decision {
    /// Decides from both windows.
    pub fn from_windows(minute: Window, hour: Window) -> Self {
        let window = match (minute.exceeded(), hour.exceeded()) {
            // Both exceeded: the client must wait for the later reset.
            (true, true) => {
                if hour.reset_secs >= minute.reset_secs {
                    hour
                } else {
                    minute
                }
            }
            (true, false) => minute,
            (false, true) => hour,
            (false, false) => {
                if hour.remaining() < minute.remaining() {
                    hour
                } else {
                    minute
                }
            }
        };
        Self {
            window,
            allowed: !(minute.exceeded() || hour.exceeded()),
        }
    }

    /// Adds the `RateLimit-*` headers.
    pub fn apply_headers(&self, headers: &mut HeaderMap) {
        headers.insert(LIMIT_HEADER, HeaderValue::from(self.window.limit));
        headers.insert(REMAINING_HEADER, HeaderValue::from(self.window.remaining()));
        headers.insert(RESET_HEADER, HeaderValue::from(self.window.reset_secs));
    }

    /// The 429 for a refused request.
    pub fn error(&self) -> ApiError {
        ApiError::rate_limited(self.window.reset_secs.max(1))
    }
}

/// Counts one request of `actor`. `Ok(None)` means Redis was unreachable and the request is
/// let through.
pub async fn check(state: &AppState, actor: &str) -> Option<Decision> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let cfg = &state.config().admin;
    let (minute_bucket, hour_bucket) = (now / 60, now / 3600);
    let keys = state.keys();
    let minute_key = keys.admin_rate_limit(actor, "m", minute_bucket);
    let hour_key = keys.admin_rate_limit(actor, "h", hour_bucket);
    let mut pipe = redis::pipe();
    pipe.atomic()
        .incr(&minute_key, 1u64)
        .expire(&minute_key, 120)
        .ignore()
        .incr(&hour_key, 1u64)
        .expire(&hour_key, 7200)
        .ignore();
    let mut con = state.redis();
    let counts: Result<(u64, u64), ApiError> = state
        .redis_timeout(pipe.query_async::<(u64, u64)>(&mut con))
        .await;
    match counts {
        Ok((minute_count, hour_count)) => Some(Decision::from_windows(
            Window {
                limit: cfg.rate_limit_per_minute,
                count: minute_count,
                reset_secs: 60 - now % 60,
            },
            Window {
                limit: cfg.rate_limit_per_hour,
                count: hour_count,
                reset_secs: 3600 - now % 3600,
            },
        )),
        Err(e) => {
            tracing::warn!(actor, error = %e, "rate limiter cannot reach redis; allowing the request");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(limit: u64, count: u64, reset_secs: u64) -> Window {
        Window {
            limit,
            count,
            reset_secs,
        }
    }

    #[test]
    fn under_both_limits_reports_the_tighter_window() {
        let d = Decision::from_windows(w(500, 10, 30), w(5000, 4995, 900));
        assert!(d.allowed);
        assert_eq!(d.window.limit, 5000);
        let d = Decision::from_windows(w(500, 10, 30), w(5000, 20, 900));
        assert_eq!(d.window.limit, 500);
        assert_eq!(d.window.remaining(), 490);
    }

    #[test]
    fn the_exact_limit_is_allowed_and_one_more_is_not() {
        assert!(Decision::from_windows(w(3, 3, 10), w(100, 3, 100)).allowed);
        let d = Decision::from_windows(w(3, 4, 10), w(100, 4, 100));
        assert!(!d.allowed);
        assert_eq!(d.window.reset_secs, 10);
        assert_eq!(d.error().code(), crate::error::ErrorCode::RateLimited);
    }

    #[test]
    fn hour_window_refusal_waits_for_the_hour() {
        let d = Decision::from_windows(w(500, 1, 10), w(5, 6, 1200));
        assert!(!d.allowed);
        assert_eq!(d.window.reset_secs, 1200);
        let mut headers = HeaderMap::new();
        d.apply_headers(&mut headers);
        assert_eq!(headers[&REMAINING_HEADER], "0");
        assert_eq!(headers[&LIMIT_HEADER], "5");
    }
}
