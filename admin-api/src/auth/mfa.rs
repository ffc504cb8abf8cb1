//! The TOTP second factor (RFC 6238: HMAC-SHA1, 30-second steps, 6 digits, one step of clock
//! skew either way) and one-time recovery codes.
//!
//! The secret is stored sealed with the server's [`SecretKey`] (purpose [`TOTP_PURPOSE`],
//! re-sealed by `rotate-secrets`). A code is accepted once: the step it matched is remembered
//! in `user_totp.last_used_step` by a conditional `UPDATE`, and only a later step is accepted
//! after it, so neither a replay nor two concurrent sign-ins with the same code both succeed.
//! Recovery codes are random (50 bits), stored as their SHA-256 and spent by a conditional
//! `UPDATE … WHERE used_at IS NULL`.

use deadpool_postgres::GenericClient;
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};

use crate::{email::SecretKey, error::ApiError, models::col};

/// Associated data binding the sealed TOTP secret to its column.
pub const TOTP_PURPOSE: &str = "user_totp.secret";
/// Seconds per TOTP step.
pub const STEP_SECS: u64 = 30;
/// Digits of a TOTP code.
pub const DIGITS: usize = 6;
/// Random bytes of a new secret (160 bits, RFC 4226's recommendation).
pub const SECRET_BYTES: usize = 20;
/// Recovery codes issued at confirmation.
pub const RECOVERY_CODES: usize = 10;
/// Issuer shown by authenticator apps.
pub const ISSUER: &str = "Watchpost";

/// Alphabet of recovery codes (lower-case base32: no 0/1/8/9 to confuse with letters).
const RECOVERY_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Characters of a recovery code (shown as two groups of five: `abcde-fghij`).
const RECOVERY_LEN: usize = 10;

/// A fresh random secret.
pub fn new_secret() -> Vec<u8> {
    let mut secret = vec![0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill(secret.as_mut_slice());
    secret
}

/// The TOTP generator of a secret, labelled with `account` for the `otpauth://` URL.
fn generator(secret: &[u8], account: &str) -> Result<TOTP, ApiError> {
    // The URL format forbids ':' in the label and issuer.
    let account = account.replace(':', "_");
    TOTP::new(
        Algorithm::SHA1,
        DIGITS,
        1,
        STEP_SECS,
        secret.to_vec(),
        Some(ISSUER.to_string()),
        account,
    )
    .map_err(|e| ApiError::internal(format!("totp: {e:?}")))
}

/// What an authenticator app needs: the base32 secret and the `otpauth://totp/…` URL.
pub fn provisioning(secret: &[u8], account: &str) -> Result<(String, String), ApiError> {
    let totp = generator(secret, account)?;
    Ok((totp.get_secret_base32(), totp.get_url()))
}

/// The 30-second step of a Unix time.
pub fn step_of(unix_secs: u64) -> u64 {
    unix_secs / STEP_SECS
}

/// The current Unix time in seconds.
pub fn now_unix() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0)
}

/// The step (of `now - 1`, `now`, `now + 1`) whose code `code` is, the latest if several;
/// `None` when the code is not 6 digits or matches none of them.
pub fn matching_step(secret: &[u8], code: &str, unix_secs: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let totp = generator(secret, "").ok()?;
    let now = step_of(unix_secs);
    let mut found = None;
    for step in [now.saturating_sub(1), now, now.saturating_add(1)] {
        let expected = totp.generate(step * STEP_SECS);
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) {
            found = Some(step);
        }
    }
    found
}

/// Ten new recovery codes, as shown to the user (`abcde-fghij`).
pub fn new_recovery_codes() -> Vec<String> {
    let mut rng = rand::rngs::OsRng;
    (0..RECOVERY_CODES)
        .map(|_| {
            let chars: String = (0..RECOVERY_LEN)
                .map(|_| char::from(RECOVERY_ALPHABET[rng.gen_range(0..RECOVERY_ALPHABET.len())]))
                .collect();
            format!("{}-{}", &chars[..5], &chars[5..])
        })
        .collect()
}

/// The stored form of a recovery code: SHA-256 hex of the code without separators or case;
/// `None` when the text cannot be a recovery code.
pub fn recovery_code_hash(code: &str) -> Option<String> {
    let normalized: String = code
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if normalized.len() != RECOVERY_LEN
        || !normalized.bytes().all(|b| RECOVERY_ALPHABET.contains(&b))
    {
        return None;
    }
    Some(hex::encode(Sha256::digest(normalized.as_bytes())))
}

/// The server key, needed to read or store a TOTP secret. Reading one without a key is a
/// server misconfiguration (500, logged); storing one is refused with 422 by the caller.
pub fn key_of(key: Option<&SecretKey>) -> Result<&SecretKey, ApiError> {
    key.ok_or_else(|| {
        ApiError::internal(
            "WATCHPOST_SECRET_KEY is not set: stored TOTP secrets cannot be read; restore the key",
        )
    })
}

/// A user's TOTP enrollment as stored.
#[derive(Debug)]
pub struct Enrollment {
    /// The secret, decrypted.
    pub secret: Vec<u8>,
    pub confirmed: bool,
    pub last_used_step: Option<i64>,
}

impl Enrollment {
    /// The user's enrollment, if any (`FOR UPDATE` when `lock`), with the secret decrypted.
    pub async fn load(
        client: &impl GenericClient,
        key: Option<&SecretKey>,
        user_id: &str,
        lock: bool,
    ) -> Result<Option<Self>, ApiError> {
        let sql = if lock {
            "SELECT secret_encrypted, confirmed_at IS NOT NULL AS confirmed, last_used_step \
             FROM user_totp WHERE user_id = $1 FOR UPDATE"
        } else {
            "SELECT secret_encrypted, confirmed_at IS NOT NULL AS confirmed, last_used_step \
             FROM user_totp WHERE user_id = $1"
        };
        Self::load_with(client, key, user_id, sql).await
    }

    /// The user's confirmed enrollment, if any (a pending one is not read, nor decrypted).
    pub async fn load_confirmed(
        client: &impl GenericClient,
        key: Option<&SecretKey>,
        user_id: &str,
    ) -> Result<Option<Self>, ApiError> {
        let sql = "SELECT secret_encrypted, true AS confirmed, last_used_step \
                   FROM user_totp WHERE user_id = $1 AND confirmed_at IS NOT NULL";
        Self::load_with(client, key, user_id, sql).await
    }

    async fn load_with(
        client: &impl GenericClient,
        key: Option<&SecretKey>,
        user_id: &str,
        sql: &str,
    ) -> Result<Option<Self>, ApiError> {
        let Some(row) = client.query_opt(sql, &[&user_id]).await? else {
            return Ok(None);
        };
        let sealed: Vec<u8> = col(&row, "secret_encrypted")?;
        let secret = key_of(key)?
            .decrypt(TOTP_PURPOSE, &sealed)
            .map_err(ApiError::internal)?;
        Ok(Some(Self {
            secret,
            confirmed: col(&row, "confirmed")?,
            last_used_step: col(&row, "last_used_step")?,
        }))
    }
}

/// Records `step` as the user's last accepted step, only if it is later than the one stored
/// (and the enrollment is confirmed when `confirmed`): false when the code was already used.
pub async fn accept_step(
    client: &impl GenericClient,
    user_id: &str,
    step: u64,
    confirmed: bool,
) -> Result<bool, ApiError> {
    let step = i64::try_from(step).map_err(ApiError::internal)?;
    let updated = client
        .execute(
            "UPDATE user_totp SET last_used_step = $2 \
             WHERE user_id = $1 AND (confirmed_at IS NOT NULL) = $3 \
               AND (last_used_step IS NULL OR last_used_step < $2)",
            &[&user_id, &step, &confirmed],
        )
        .await?;
    Ok(updated == 1)
}

/// Spends one of the user's unused recovery codes: false when the code is unknown or used.
pub async fn spend_recovery_code(
    client: &impl GenericClient,
    user_id: &str,
    code: &str,
) -> Result<bool, ApiError> {
    let Some(hash) = recovery_code_hash(code) else {
        return Ok(false);
    };
    let updated = client
        .execute(
            "UPDATE mfa_recovery_codes SET used_at = now() \
             WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
            &[&user_id, &hash],
        )
        .await?;
    Ok(updated == 1)
}

/// Checks a confirmed enrollment's second factor, a TOTP code or a recovery code, and spends
/// it (in the caller's transaction): false when it is wrong or already used.
pub async fn verify_and_spend(
    client: &impl GenericClient,
    enrollment: &Enrollment,
    user_id: &str,
    totp_code: Option<&str>,
    recovery_code: Option<&str>,
) -> Result<bool, ApiError> {
    if let Some(code) = totp_code {
        let Some(step) = matching_step(&enrollment.secret, code, now_unix()) else {
            return Ok(false);
        };
        return accept_step(client, user_id, step, true).await;
    }
    if let Some(code) = recovery_code {
        return spend_recovery_code(client, user_id, code).await;
    }
    Ok(false)
}

/// Removes a user's enrollment and recovery codes and clears `users.mfa_enrolled`; true when
/// there was anything to remove.
pub async fn remove(client: &impl GenericClient, user_id: &str) -> Result<bool, ApiError> {
    let removed = client
        .execute("DELETE FROM user_totp WHERE user_id = $1", &[&user_id])
        .await?;
    client
        .execute(
            "DELETE FROM mfa_recovery_codes WHERE user_id = $1",
            &[&user_id],
        )
        .await?;
    client
        .execute(
            "UPDATE users SET mfa_enrolled = false, updated_at = now() \
             WHERE id = $1 AND mfa_enrolled",
            &[&user_id],
        )
        .await?;
    Ok(removed > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_their_step_and_its_neighbours_only() {
        let secret = new_secret();
        let totp = generator(&secret, "ann").expect("totp");
        let now = 1_700_000_015;
        let step = step_of(now);
        let code = totp.generate(now);
        assert_eq!(matching_step(&secret, &code, now), Some(step));
        assert_eq!(
            matching_step(&secret, &code, now + STEP_SECS),
            Some(step),
            "one step late is accepted"
        );
        let later = totp.generate(now + STEP_SECS);
        assert_eq!(matching_step(&secret, &later, now), Some(step + 1));
        let far = totp.generate(now + 3 * STEP_SECS);
        if far != code && far != later && far != totp.generate(now - STEP_SECS) {
            assert_eq!(matching_step(&secret, &far, now), None);
        }
        for bad in ["", "12345", "1234567", "abcdef", "12 456"] {
            assert_eq!(matching_step(&secret, bad, now), None, "{bad}");
        }
    }

    #[test]
    fn rfc_6238_sha1_vector() {
        // RFC 6238 appendix B, SHA1, T = 59: 94287082 (8 digits); the last 6 are ours.
        let secret = b"12345678901234567890".to_vec();
        assert_eq!(matching_step(&secret, "287082", 59), Some(1));
    }

    #[test]
    fn provisioning_gives_base32_and_an_otpauth_url() {
        let secret = new_secret();
        let (b32, url) = provisioning(&secret, "ann:x").expect("provisioning");
        assert_eq!(b32.len(), 32);
        assert!(url.starts_with("otpauth://totp/Watchpost:ann_x?"), "{url}");
        assert!(url.contains(&format!("secret={b32}")), "{url}");
    }

    #[test]
    fn recovery_codes_are_distinct_and_normalise() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let unique: std::collections::BTreeSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), RECOVERY_CODES);
        let code = &codes[0];
        assert_eq!(code.len(), 11);
        let hash = recovery_code_hash(code).expect("hash");
        assert_eq!(
            recovery_code_hash(&code.to_uppercase().replace('-', "")),
            Some(hash)
        );
        for bad in ["", "abc", "abcde-fghi1", "abcde-fghijk"] {
            assert_eq!(recovery_code_hash(bad), None, "{bad}");
        }
    }
}
