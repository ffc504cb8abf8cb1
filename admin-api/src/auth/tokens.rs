//! Bearer credentials: generation and hashing.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of API keys.
pub const API_KEY_PREFIX: &str = "wpk_";
/// Prefix of session tokens.
pub const SESSION_PREFIX: &str = "wps_";
/// Prefix of password-reset tokens (never bearer credentials).
pub const RESET_PREFIX: &str = "wpr_";
/// Characters of an API key shown in lists (`wpk_` and the first 8 of the secret).
pub const API_KEY_VISIBLE_PREFIX: usize = 12;
/// Random bytes in a credential (256 bits).
const SECRET_BYTES: usize = 32;

/// What a bearer token claims to be, from its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    ApiKey,
    Session,
}

impl TokenKind {
    /// Classifies a presented token; None when it has neither prefix or a wrong length.
    pub fn of(token: &str) -> Option<Self> {
        let expected = API_KEY_PREFIX.len() + URL_SAFE_NO_PAD.encode([0u8; SECRET_BYTES]).len();
        if token.len() != expected {
            return None;
        }
        if token.starts_with(API_KEY_PREFIX) {
            Some(Self::ApiKey)
        } else if token.starts_with(SESSION_PREFIX) {
            Some(Self::Session)
        } else {
            None
        }
    }
}

fn generate(prefix: &str) -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A new API key (shown once) and the hash to store.
pub fn new_api_key() -> (String, String) {
    let key = generate(API_KEY_PREFIX);
    let hash = hash_token(&key);
    (key, hash)
}

/// A new session token (shown once) and the hash to store.
pub fn new_session_token() -> (String, String) {
    let token = generate(SESSION_PREFIX);
    let hash = hash_token(&token);
    (token, hash)
}

/// A new password-reset token (sent once, by email) and the hash to store.
pub fn new_reset_token() -> (String, String) {
    let token = generate(RESET_PREFIX);
    let hash = hash_token(&token);
    (token, hash)
}

/// Whether `token` has the shape of a password-reset token (prefix and length).
pub fn is_reset_token(token: &str) -> bool {
    token.starts_with(RESET_PREFIX)
        && token.len() == RESET_PREFIX.len() + URL_SAFE_NO_PAD.encode([0u8; SECRET_BYTES]).len()
}

/// SHA-256 of the whole token, hex. High-entropy tokens need no salt or slow hash.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time equality of two hashes (the final check after the indexed lookup).
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_their_prefix_and_enough_entropy() {
        let (key, hash) = new_api_key();
        assert!(key.starts_with("wpk_"));
        assert_eq!(TokenKind::of(&key), Some(TokenKind::ApiKey));
        assert_eq!(hash, hash_token(&key));
        assert_eq!(hash.len(), 64);
        let (token, _) = new_session_token();
        assert_eq!(TokenKind::of(&token), Some(TokenKind::Session));
        // 32 random bytes → 43 base64url characters.
        assert_eq!(token.len(), 4 + 43);
        assert_ne!(new_api_key().0, key);
    }

    #[test]
    fn foreign_or_truncated_tokens_are_not_classified() {
        let (key, _) = new_api_key();
        assert_eq!(TokenKind::of(&key[..key.len() - 1]), None);
        assert_eq!(TokenKind::of(&format!("xyz_{}", &key[4..])), None);
        assert_eq!(TokenKind::of(""), None);
    }

    #[test]
    fn hash_comparison() {
        assert!(hashes_equal(&hash_token("a"), &hash_token("a")));
        assert!(!hashes_equal(&hash_token("a"), &hash_token("b")));
    }
}
