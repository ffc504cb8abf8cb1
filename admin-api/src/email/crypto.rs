//! Encryption of stored secrets (the SMTP password) with AES-256-GCM.
//!
//! The key comes from `WATCHPOST_SECRET_KEY`: 64 hex digits or the standard base64 of exactly
//! 32 bytes are used as the raw key; any other non-empty text is hashed with SHA-256 (so a
//! passphrase works too, though a random 32-byte key is what quickstart generates). Every
//! encryption draws a fresh random 96-bit nonce; the stored value is `nonce || ciphertext`
//! (the ciphertext ends with the 16-byte tag). A purpose string is bound as associated data,
//! so a value encrypted for one column cannot be replayed into another.

use std::fmt;

use aes_gcm::{
    aead::{Aead, KeyInit, Payload},
    Aes256Gcm, Nonce,
};
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Length of the random nonce stored before each ciphertext.
pub const NONCE_LEN: usize = 12;

/// A failure of [`SecretKey::encrypt`] or [`SecretKey::decrypt`].
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Only possible beyond AES-GCM's message size limit.
    #[error("cannot encrypt the secret")]
    Encrypt,
    /// The key differs from the one that encrypted, or the data was altered.
    #[error(
        "cannot decrypt the stored secret (WATCHPOST_SECRET_KEY changed, or the value is damaged)"
    )]
    Decrypt,
}

/// The 256-bit key that encrypts stored secrets. `Debug` never shows it.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// Derives the key from the text of `WATCHPOST_SECRET_KEY`; `None` when it is empty.
    pub fn from_text(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        if text.len() == 64 {
            if let Ok(bytes) = hex::decode(text) {
                if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
                    return Some(Self(key));
                }
            }
        }
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text) {
            if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
                return Some(Self(key));
            }
        }
        Some(Self(Sha256::digest(text.as_bytes()).into()))
    }

    /// The key named by `WATCHPOST_SECRET_KEY` in `env` (the pairs given to the config loader).
    pub fn from_env(env: &[(String, String)]) -> Option<Self> {
        env.iter()
            .find(|(k, _)| k == watchpost_common::config::ENV_SECRET_KEY)
            .and_then(|(_, v)| Self::from_text(v))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.0.into())
    }

    /// `nonce || ciphertext` of `plaintext`, bound to `purpose`.
    pub fn encrypt(&self, purpose: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = Nonce::from(nonce_bytes);
        let sealed = self
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: purpose.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Encrypt)?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a value made by [`SecretKey::encrypt`] with the same `purpose`.
    pub fn decrypt(&self, purpose: &str, stored: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if stored.len() <= NONCE_LEN {
            return Err(CryptoError::Decrypt);
        }
        let (nonce_bytes, sealed) = stored.split_at(NONCE_LEN);
        let nonce_bytes: [u8; NONCE_LEN] =
            nonce_bytes.try_into().map_err(|_| CryptoError::Decrypt)?;
        self.cipher()
            .decrypt(
                &Nonce::from(nonce_bytes),
                Payload {
                    msg: sealed,
                    aad: purpose.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_fresh_nonces() {
        let key = SecretKey::from_text("a passphrase").expect("key");
        let a = key.encrypt("p", b"hunter2").expect("seal");
        let b = key.encrypt("p", b"hunter2").expect("seal");
        assert_ne!(a, b, "each encryption uses its own nonce");
        assert_eq!(a.len(), NONCE_LEN + 7 + 16);
        assert_eq!(key.decrypt("p", &a).expect("open"), b"hunter2");
    }

    #[test]
    fn wrong_key_purpose_or_damage_is_refused() {
        let key = SecretKey::from_text("one").expect("key");
        let other = SecretKey::from_text("two").expect("key");
        let mut sealed = key.encrypt("p", b"secret").expect("seal");
        assert!(other.decrypt("p", &sealed).is_err());
        assert!(key.decrypt("q", &sealed).is_err());
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(key.decrypt("p", &sealed).is_err());
        assert!(key.decrypt("p", &[0; NONCE_LEN]).is_err());
    }

    #[test]
    fn key_text_forms() {
        assert!(SecretKey::from_text("  ").is_none());
        let raw = [7u8; 32];
        let hex_key = SecretKey::from_text(&hex::encode(raw)).expect("hex");
        let b64_key = SecretKey::from_text(&base64::engine::general_purpose::STANDARD.encode(raw))
            .expect("base64");
        assert_eq!(hex_key.0, raw);
        assert_eq!(b64_key.0, raw);
        let phrase = SecretKey::from_text("correct horse").expect("phrase");
        assert_eq!(phrase.0, <[u8; 32]>::from(Sha256::digest(b"correct horse")));
        assert_eq!(format!("{phrase:?}"), "SecretKey(<redacted>)");
    }
}
