//! Authentication settings (`GET/PATCH /api/admin/config`), one row in `auth_config`.
//!
//! `session_duration` is written as a whole number of seconds or as a number with one unit
//! suffix: `s`, `m`, `h`, `d` (`"14d"`, `"12h"`, `"30m"`, `3600`), between 5 minutes and 365
//! days. It is shown in the largest unit that divides it exactly, with the seconds beside it.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use utoipa::ToSchema;

use crate::{error::ApiError, models::col};

/// Bounds of `password_min_length`.
pub const PASSWORD_MIN_LENGTH_RANGE: std::ops::RangeInclusive<i32> = 8..=128;
/// Bounds of the session duration, in seconds (5 minutes ..= 365 days).
pub const SESSION_DURATION_RANGE: std::ops::RangeInclusive<i64> = 300..=31_536_000;

/// The authentication settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AuthSettings {
    /// Shortest accepted password (characters), 8..=128.
    pub password_min_length: i32,
    /// Session lifetime, e.g. `"14d"`.
    pub session_duration: String,
    /// The same in seconds.
    pub session_duration_secs: i64,
    /// When true, a session of a user not enrolled in MFA reaches only `GET /api/me`,
    /// `/api/me/mfa/*` and sign-out (403 `MFA_ENROLLMENT_REQUIRED` elsewhere).
    pub mfa_required: bool,
    /// When true, `POST /api/auth/register` requires an invitation code.
    pub registration_requires_invitation: bool,
    pub updated_at: DateTime<Utc>,
}

impl AuthSettings {
    /// Reads the single row.
    pub async fn load(client: &impl GenericClient) -> Result<Self, ApiError> {
        let row = client
            .query_one(
                "SELECT password_min_length, session_duration_secs, mfa_required, \
                 registration_requires_invitation, updated_at FROM auth_config WHERE id",
                &[],
            )
            .await?;
        let secs: i64 = col(&row, "session_duration_secs")?;
        Ok(Self {
            password_min_length: col(&row, "password_min_length")?,
            session_duration: format_duration(secs),
            session_duration_secs: secs,
            mfa_required: col(&row, "mfa_required")?,
            registration_requires_invitation: col(&row, "registration_requires_invitation")?,
            updated_at: col(&row, "updated_at")?,
        })
    }

    /// The session lifetime.
    pub fn session_ttl(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.session_duration_secs)
    }

    /// 422 when the password is shorter than the minimum (or absurdly long).
    pub fn check_password(&self, password: &str) -> Result<(), ApiError> {
        let chars = password.chars().count();
        let min = usize::try_from(self.password_min_length).unwrap_or(8);
        if chars < min {
            return Err(ApiError::unprocessable(format!(
                "password must be at least {min} characters"
            )));
        }
        if password.len() > super::password::MAX_PASSWORD_BYTES {
            return Err(ApiError::unprocessable(format!(
                "password must be at most {} bytes",
                super::password::MAX_PASSWORD_BYTES
            )));
        }
        Ok(())
    }
}

/// Parses `"14d"`, `"12h"`, `"30m"`, `"45s"` or `"3600"` into seconds and checks the bounds.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let factor = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("unknown unit '{unit}' (use s, m, h or d)")),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a whole number with an optional unit s, m, h or d".into());
    }
    let n: i64 = digits.parse().map_err(|_| "number too large".to_string())?;
    let secs = n.checked_mul(factor).ok_or("number too large")?;
    check_duration(secs)
}

/// Checks a duration in seconds against [`SESSION_DURATION_RANGE`].
pub fn check_duration(secs: i64) -> Result<i64, String> {
    if SESSION_DURATION_RANGE.contains(&secs) {
        Ok(secs)
    } else {
        Err("must be between 5 minutes and 365 days".into())
    }
}

/// Seconds in the largest unit that divides them exactly (`1209600` → `"14d"`).
pub fn format_duration(secs: i64) -> String {
    for (factor, unit) in [(86_400, 'd'), (3600, 'h'), (60, 'm')] {
        if secs % factor == 0 {
            return format!("{}{unit}", secs / factor);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        for (text, secs) in [
            ("14d", 1_209_600),
            ("12h", 43_200),
            ("30m", 1800),
            ("600s", 600),
            ("3600", 3600),
            (" 1d ", 86_400),
        ] {
            assert_eq!(parse_duration(text), Ok(secs), "{text}");
        }
        for bad in [
            "",
            "d",
            "1w",
            "-5m",
            "1.5h",
            "4m",
            "366d",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_format_in_the_largest_exact_unit() {
        assert_eq!(format_duration(1_209_600), "14d");
        assert_eq!(format_duration(5400), "90m");
        assert_eq!(format_duration(3600), "1h");
        assert_eq!(format_duration(301), "301s");
        for secs in [300, 301, 5400, 86_400 * 3] {
            assert_eq!(parse_duration(&format_duration(secs)), Ok(secs));
        }
    }
}
