//! Password hashing with argon2id, off the async runtime (`spawn_blocking`): one hash costs
//! tens of milliseconds of CPU. At most one hash per core runs at a time ([`HASH_PERMITS`]);
//! callers beyond that wait their turn, so a sign-in flood queues instead of taking every
//! core (and every pooled database connection: callers hold none while they hash).

use std::sync::{LazyLock, OnceLock};

use tokio::sync::Semaphore;

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};

use crate::error::ApiError;

/// Longest accepted password, in bytes (argon2 takes any length; this bounds the work).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Bounds concurrent argon2 work to the number of cores.
pub static HASH_PERMITS: LazyLock<Semaphore> = LazyLock::new(|| {
    Semaphore::new(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
});

async fn hash_permit() -> Result<tokio::sync::SemaphorePermit<'static>, ApiError> {
    HASH_PERMITS
        .acquire()
        .await
        .map_err(|e| ApiError::internal(format!("hashing semaphore: {e}")))
}

/// Hashes a password (PHC string).
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    let permit = hash_permit().await?;
    // The permit moves into the task: it is held until the work ends, even when the caller
    // gives up waiting.
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ApiError::internal(format!("argon2 hash: {e}")))
    })
    .await
    .map_err(|e| ApiError::internal(format!("hashing task: {e}")))?
}

/// Checks a password against a stored hash. With no stored hash (unknown user, or a user
/// without a password) a dummy hash is verified anyway, so the response time does not reveal
/// which accounts exist.
pub async fn verify_password(password: String, stored: Option<String>) -> Result<bool, ApiError> {
    let permit = hash_permit().await?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let (phc, real) = match stored {
            Some(s) => (s, true),
            None => (dummy_hash().to_string(), false),
        };
        let Ok(parsed) = PasswordHash::new(&phc) else {
            return false;
        };
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        ok && real
    })
    .await
    .map_err(|e| ApiError::internal(format!("verifying task: {e}")))
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"watchpost-dummy-password", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let h = hash_password("correct horse battery".into())
            .await
            .expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(
            verify_password("correct horse battery".into(), Some(h.clone()))
                .await
                .expect("verify")
        );
        assert!(!verify_password("wrong".into(), Some(h))
            .await
            .expect("verify"));
        assert!(!verify_password("watchpost-dummy-password".into(), None)
            .await
            .expect("verify"));
    }
}
