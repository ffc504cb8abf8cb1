//! Rate limits in Redis, shared by every admin instance.
//!
//! - Per admin ([`check`]): two fixed windows (a minute and an hour) per actor. One pipeline
//!   per request does `INCR` + `EXPIRE` on both window keys.
//! - Per client on the public endpoints ([`Throttle`]): fixed one-minute windows per client
//!   IP (an IPv6 client counts by its /64), and for sign-in also per (account, client IP), so
//!   that attempts from elsewhere never lock an owner out from the owner's own addresses.
//!   Refusals are 429 `RATE_LIMITED` with `Retry-After` (seconds to the window's end).
//!
//! When Redis is unreachable both fail open (the request proceeds, a warning is logged): the
//! admin API must stay usable for PostgreSQL-only work while Redis is down, and sign-in keeps
//! working for the people who need it then. Password hashing stays bounded meanwhile by the
//! hashing semaphore ([`crate::auth::password`]), so a flood during an outage costs latency,
//! not the server.

use std::{
    net::IpAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use sha2::{Digest, Sha256};

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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The `throttle` label of the per-admin limit ([`check`]) in the throttle metrics.
pub const ADMIN_THROTTLE: &str = "admin";

/// Every `throttle` label value of the throttle metrics: [`ADMIN_THROTTLE`] and each
/// [`Throttle::scope`].
pub const THROTTLE_LABELS: [&str; 7] = [
    ADMIN_THROTTLE,
    "sign_in",
    "sign_in_account",
    "register",
    "redeem",
    "runs",
    "invitation_codes",
];

/// A per-client throttle on a public endpoint; each counts on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// `POST /api/auth/sessions` per client IP (`sign_in_per_ip_per_minute`).
    SignIn,
    /// `POST /api/auth/sessions` per (account, client IP)
    /// (`sign_in_per_account_ip_per_minute`). Failed second factors (TOTP, recovery codes)
    /// belong here too once they exist.
    SignInAccount,
    /// `POST /api/auth/register` (`register_per_ip_per_minute`).
    Register,
    /// `POST /api/redeem` (`public_per_ip_per_minute`).
    Redeem,
    /// `POST /api/runs` and `PATCH /api/runs/{id}` (`public_per_ip_per_minute`).
    Runs,
    /// `POST /api/me/invitation-codes` (`public_per_ip_per_minute`).
    InvitationCodes,
    /// `POST /api/auth/password-reset` and `…/confirm` per client IP
    /// (`sign_in_per_ip_per_minute`).
    PasswordReset,
    /// `POST /api/auth/password-reset` per account, from anywhere
    /// (`sign_in_per_account_ip_per_minute`): bounds the mail one inbox can be sent. Refusing
    /// more resets of one account locks nobody out of signing in.
    PasswordResetAccount,
    /// `POST /api/auth/password` per account (`sign_in_per_account_ip_per_minute`): a stolen
    /// session must not become a fast oracle for the current password.
    PasswordChange,
}

impl Throttle {
    /// The scope part of the Redis key.
    pub fn scope(self) -> &'static str {
        match self {
            Throttle::SignIn => "sign_in",
            Throttle::SignInAccount => "sign_in_account",
            Throttle::Register => "register",
            Throttle::Redeem => "redeem",
            Throttle::Runs => "runs",
            Throttle::InvitationCodes => "invitation_codes",
            Throttle::PasswordReset => "password_reset",
            Throttle::PasswordResetAccount => "password_reset_account",
            Throttle::PasswordChange => "password_change",
        }
    }

    /// Requests allowed per minute.
    pub fn limit(self, cfg: &crate::config::AdminConfig) -> u64 {
        match self {
            Throttle::SignIn | Throttle::PasswordReset => cfg.sign_in_per_ip_per_minute,
            Throttle::SignInAccount | Throttle::PasswordResetAccount | Throttle::PasswordChange => {
                cfg.sign_in_per_account_ip_per_minute
            }
            Throttle::Register => cfg.register_per_ip_per_minute,
            Throttle::Redeem | Throttle::Runs | Throttle::InvitationCodes => {
                cfg.public_per_ip_per_minute
            }
        }
    }
}

/// What a throttle counts for a client address: the IPv4 address, or the /64 of an IPv6
/// address (one host usually holds a whole /64). `unknown` without an address.
pub fn client_subject(ip: Option<IpAddr>) -> String {
    match ip {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        None => "unknown".into(),
    }
}

/// The subject of [`Throttle::SignInAccount`]: the client and a digest of the account (so
/// that no email address is written to Redis).
pub fn account_subject(ip: Option<IpAddr>, account: &str) -> String {
    let digest = Sha256::digest(account.trim().to_lowercase().as_bytes());
    format!("{}|{}", client_subject(ip), hex::encode(&digest[..12]))
}

/// A digest of an account identifier (an email, a user id), for throttles counted per account
/// from anywhere; no address is written to Redis.
pub fn account_digest(account: &str) -> String {
    let digest = Sha256::digest(account.trim().to_lowercase().as_bytes());
    hex::encode(&digest[..12])
}

/// Counts one request against every `(throttle, subject)`; 429 when any is over its limit.
/// Fails open (with a warning) when Redis is unreachable.
pub async fn throttle(state: &AppState, items: &[(Throttle, &str)]) -> Result<(), ApiError> {
    let now = unix_now();
    let minute = now / 60;
    let cfg = &state.config().admin;
    let mut con = state.redis();
    let counts: Vec<u64> = match count_throttles(state, &mut con, items, minute).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "throttle cannot reach redis; allowing the request");
            return Ok(());
        }
    };
    let over = items
        .iter()
        .zip(&counts)
        .find(|((t, _), count)| **count > t.limit(cfg));
    match over {
        Some(((t, _), _)) => {
            tracing::info!(throttle = t.scope(), "client throttled");
            state.metrics().throttled(t.scope());
            Err(ApiError::rate_limited((60 - now % 60).max(1)))
        }
        None => Ok(()),
    }
}

/// `INCR` + `EXPIRE` of every throttle's key: one `MULTI` on one node; on a cluster the keys
/// hash to different slots, so one `MULTI` per key.
async fn count_throttles(
    state: &AppState,
    con: &mut watchpost_common::RedisConn,
    items: &[(Throttle, &str)],
    minute: u64,
) -> Result<Vec<u64>, ApiError> {
    let key =
        |(t, subject): &(Throttle, &str)| state.keys().public_throttle(t.scope(), subject, minute);
    if con.is_cluster() {
        let mut counts = Vec::with_capacity(items.len());
        for item in items {
            let key = key(item);
            let mut pipe = redis::pipe();
            pipe.atomic().incr(&key, 1u64).expire(&key, 120).ignore();
            let (n,): (u64,) = state.redis_timeout(pipe.query_async(con)).await?;
            counts.push(n);
        }
        return Ok(counts);
    }
    let mut pipe = redis::pipe();
    pipe.atomic();
    for item in items {
        let key = key(item);
        pipe.incr(&key, 1u64).expire(&key, 120).ignore();
    }
    state.redis_timeout(pipe.query_async::<Vec<u64>>(con)).await
}

/// Counts one request of the client `ip` against a per-IP `throttle`.
pub async fn per_ip(
    state: &AppState,
    throttle_kind: Throttle,
    ip: Option<IpAddr>,
) -> Result<(), ApiError> {
    let subject = client_subject(ip);
    throttle(state, &[(throttle_kind, &subject)]).await
}

/// Forgets the (account, client) count after a successful sign-in. Best effort.
pub async fn clear(state: &AppState, throttle_kind: Throttle, subject: &str) {
    let key = state
        .keys()
        .public_throttle(throttle_kind.scope(), subject, unix_now() / 60);
    let mut con = state.redis();
    let mut cmd = redis::cmd("DEL");
    cmd.arg(&key);
    if let Err(e) = state.redis_timeout(cmd.query_async::<u64>(&mut con)).await {
        tracing::warn!(error = %e, "cannot clear a sign-in throttle");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_subjects() {
        assert_eq!(
            client_subject(Some("192.0.2.7".parse().expect("ip"))),
            "192.0.2.7"
        );
        assert_eq!(
            client_subject(Some("2001:db8:1:2:3:4:5:6".parse().expect("ip"))),
            "2001:db8:1:2::/64"
        );
        assert_eq!(client_subject(None), "unknown");
        let ip = Some("192.0.2.7".parse().expect("ip"));
        assert_eq!(
            account_subject(ip, " Owner@Example.com"),
            account_subject(ip, "owner@example.com")
        );
        assert_ne!(
            account_subject(ip, "a@example.com"),
            account_subject(ip, "b@example.com")
        );
        assert!(account_subject(ip, "a@example.com").starts_with("192.0.2.7|"));
    }

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
