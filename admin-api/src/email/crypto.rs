//! Encryption of stored secrets (the SMTP password) with AES-256-GCM.
//!
//! The key is derived from the passphrase in `WATCHPOST_SECRET_KEY` with argon2id (fixed
//! parameters and a fixed, versioned salt; see [`derive_v2`]), so a short passphrase does not
//! give away a key that a copy of the database can be tried against cheaply. Every encryption
//! draws a fresh random 96-bit nonce; a stored value is `v2:` || nonce || ciphertext (the
//! ciphertext ends with the 16-byte tag). A purpose string is bound as associated data, so a
//! value encrypted for one column cannot be replayed into another.
//!
//! Rotation: `WATCHPOST_SECRET_KEY_PREVIOUS` names the passphrase being retired. Decryption
//! tries the current key, then the previous one; encryption always uses the current one, and
//! `watchpost-admin rotate-secrets` re-encrypts every stored value with it.
//!
//! Values stored before the `v2:` format (no prefix: nonce || ciphertext, under a key that
//! was the raw 32 bytes of a 64-hex-digit or base64 passphrase, else its SHA-256) still
//! decrypt; they are re-encrypted by `rotate-secrets` and on the next save.

use std::fmt;

use aes_gcm::{
    aead::{Aead, KeyInit, Payload},
    Aes256Gcm, Nonce,
};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use watchpost_common::config::{ENV_SECRET_KEY, ENV_SECRET_KEY_PREVIOUS};

/// Length of the random nonce stored before each ciphertext.
pub const NONCE_LEN: usize = 12;
/// Prefix of values encrypted under the argon2id-derived key.
pub const V2_TAG: &[u8] = b"v2:";
/// Salt of the argon2id derivation: fixed (one key per passphrase, so every admin instance
/// derives the same key) and versioned, so that a future derivation gets a different key.
const V2_SALT: &[u8] = b"watchpost/stored-secrets/v2";
/// argon2id memory cost in KiB (19 MiB), iterations and lanes: OWASP's minimum for argon2id,
/// fixed here so that a change of the crate's defaults never changes the key.
const V2_M_COST_KIB: u32 = 19 * 1024;
const V2_T_COST: u32 = 2;
const V2_P_COST: u32 = 1;

/// A failure of key derivation, [`SecretKey::encrypt`] or [`SecretKey::decrypt`]. No variant
/// carries key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Only possible beyond AES-GCM's message size limit.
    #[error("cannot encrypt the secret")]
    Encrypt,
    /// No configured key opens the value, or the data was altered.
    #[error(
        "cannot decrypt the stored secret with WATCHPOST_SECRET_KEY or \
         WATCHPOST_SECRET_KEY_PREVIOUS (the key changed without keeping the old one as \
         WATCHPOST_SECRET_KEY_PREVIOUS, or the value is damaged)"
    )]
    Decrypt,
    /// The passphrase is empty (after trimming).
    #[error("{0} is empty")]
    EmptyKey(&'static str),
    /// `WATCHPOST_SECRET_KEY_PREVIOUS` without `WATCHPOST_SECRET_KEY`.
    #[error(
        "WATCHPOST_SECRET_KEY_PREVIOUS is set but WATCHPOST_SECRET_KEY is not: set the new \
         key too (the previous one only decrypts)"
    )]
    PreviousWithoutCurrent,
    /// The derivation refused its input (not expected with the fixed parameters).
    #[error("{0}: cannot derive the key: {1}")]
    Derive(&'static str, String),
}

/// The keys one passphrase gives: the current derivation and the legacy one.
#[derive(Clone)]
struct Derived {
    v2: [u8; 32],
    legacy: [u8; 32],
}

impl Derived {
    fn new(var: &'static str, text: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(CryptoError::EmptyKey(var));
        }
        Ok(Self {
            v2: derive_v2(text.as_bytes()).map_err(|e| CryptoError::Derive(var, e))?,
            legacy: derive_legacy(text),
        })
    }
}

/// The argon2id key of a passphrase (the `v2:` format).
fn derive_v2(passphrase: &[u8]) -> Result<[u8; 32], String> {
    let params =
        Params::new(V2_M_COST_KIB, V2_T_COST, V2_P_COST, Some(32)).map_err(|e| e.to_string())?;
    let mut key = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase, V2_SALT, &mut key)
        .map_err(|e| e.to_string())?;
    Ok(key)
}

/// The key of values stored before the `v2:` format: 64 hex digits or the standard base64
/// of exactly 32 bytes were the raw key, any other text its SHA-256.
fn derive_legacy(text: &str) -> [u8; 32] {
    if text.len() == 64 {
        if let Ok(bytes) = hex::decode(text) {
            if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
                return key;
            }
        }
    }
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text) {
        if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return key;
        }
    }
    Sha256::digest(text.as_bytes()).into()
}

/// How [`SecretKey::open`] opened a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// `v2:` under the current key: nothing to re-encrypt.
    Current,
    /// `v2:` under `WATCHPOST_SECRET_KEY_PREVIOUS`.
    Previous,
    /// The legacy format (under either passphrase).
    Legacy,
}

/// The keys that encrypt stored secrets: the current one (`WATCHPOST_SECRET_KEY`) and, during
/// a rotation, the previous one. `Debug` never shows them.
#[derive(Clone)]
pub struct SecretKey {
    current: Derived,
    previous: Option<Derived>,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("current", &"<redacted>")
            .field("previous", &self.previous.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl SecretKey {
    /// The key derived from a passphrase (the text of `WATCHPOST_SECRET_KEY`); refused when
    /// empty. Costs one argon2id derivation (tens of milliseconds): derive once at start.
    pub fn from_text(text: &str) -> Result<Self, CryptoError> {
        Ok(Self {
            current: Derived::new(ENV_SECRET_KEY, text)?,
            previous: None,
        })
    }

    /// Adds the passphrase being retired (`WATCHPOST_SECRET_KEY_PREVIOUS`), tried after the
    /// current one when decrypting.
    pub fn with_previous(mut self, text: &str) -> Result<Self, CryptoError> {
        self.previous = Some(Derived::new(ENV_SECRET_KEY_PREVIOUS, text)?);
        Ok(self)
    }

    /// The keys named by `WATCHPOST_SECRET_KEY` and `WATCHPOST_SECRET_KEY_PREVIOUS` in `env`
    /// (the pairs given to the config loader); `None` when the first is unset or empty. An
    /// empty `…_PREVIOUS` counts as unset.
    pub fn from_env(env: &[(String, String)]) -> Result<Option<Self>, CryptoError> {
        let var = |name: &str| {
            env.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim())
                .filter(|v| !v.is_empty())
        };
        match (var(ENV_SECRET_KEY), var(ENV_SECRET_KEY_PREVIOUS)) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(CryptoError::PreviousWithoutCurrent),
            (Some(current), None) => Self::from_text(current).map(Some),
            (Some(current), Some(previous)) => {
                Self::from_text(current)?.with_previous(previous).map(Some)
            }
        }
    }

    /// Whether a previous key is configured.
    pub fn has_previous(&self) -> bool {
        self.previous.is_some()
    }

    /// `v2:` || nonce || ciphertext of `plaintext` under the current key, bound to `purpose`.
    pub fn encrypt(&self, purpose: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let sealed = seal(&self.current.v2, purpose, plaintext)?;
        let mut out = Vec::with_capacity(V2_TAG.len() + sealed.len());
        out.extend_from_slice(V2_TAG);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a stored value with the same `purpose`: see [`SecretKey::open`].
    pub fn decrypt(&self, purpose: &str, stored: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.open(purpose, stored).map(|(plain, _)| plain)
    }

    /// Opens a stored value: a `v2:` one with the current key, then the previous one; a
    /// legacy one with either passphrase's legacy key. Also says which key opened it, so that
    /// rotation knows what to re-encrypt.
    pub fn open(&self, purpose: &str, stored: &[u8]) -> Result<(Vec<u8>, Opened), CryptoError> {
        if let Some(body) = stored.strip_prefix(V2_TAG) {
            if let Ok(plain) = unseal(&self.current.v2, purpose, body) {
                return Ok((plain, Opened::Current));
            }
            if let Some(previous) = &self.previous {
                if let Ok(plain) = unseal(&previous.v2, purpose, body) {
                    return Ok((plain, Opened::Previous));
                }
            }
            // A legacy value's random nonce starts with the tag once in 2^24: fall through.
        }
        for derived in std::iter::once(&self.current).chain(self.previous.as_ref()) {
            if let Ok(plain) = unseal(&derived.legacy, purpose, stored) {
                return Ok((plain, Opened::Legacy));
            }
        }
        Err(CryptoError::Decrypt)
    }
}

/// nonce || ciphertext of `plaintext` under `key`.
fn seal(key: &[u8; 32], purpose: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce_bytes: [u8; NONCE_LEN] = rand::random();
    let sealed = Aes256Gcm::new(key.into())
        .encrypt(
            &Nonce::from(nonce_bytes),
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

/// Opens nonce || ciphertext under `key`.
fn unseal(key: &[u8; 32], purpose: &str, stored: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if stored.len() <= NONCE_LEN {
        return Err(CryptoError::Decrypt);
    }
    let (nonce_bytes, sealed) = stored.split_at(NONCE_LEN);
    let nonce_bytes: [u8; NONCE_LEN] = nonce_bytes.try_into().map_err(|_| CryptoError::Decrypt)?;
    Aes256Gcm::new(key.into())
        .decrypt(
            &Nonce::from(nonce_bytes),
            Payload {
                msg: sealed,
                aad: purpose.as_bytes(),
            },
        )
        .map_err(|_| CryptoError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> SecretKey {
        SecretKey::from_text(text).expect("key")
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn round_trip_with_fresh_nonces_and_the_v2_tag() {
        let key = key("a passphrase");
        let a = key.encrypt("p", b"hunter2").expect("seal");
        let b = key.encrypt("p", b"hunter2").expect("seal");
        assert_ne!(a, b, "each encryption uses its own nonce");
        assert!(a.starts_with(V2_TAG));
        assert_eq!(a.len(), V2_TAG.len() + NONCE_LEN + 7 + 16);
        assert_eq!(
            key.open("p", &a).expect("open"),
            (b"hunter2".to_vec(), Opened::Current)
        );
    }

    #[test]
    fn wrong_key_purpose_or_damage_is_refused() {
        let key1 = key("one");
        let other = key("two");
        let mut sealed = key1.encrypt("p", b"secret").expect("seal");
        assert!(matches!(
            other.decrypt("p", &sealed),
            Err(CryptoError::Decrypt)
        ));
        assert!(key1.decrypt("q", &sealed).is_err());
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(key1.decrypt("p", &sealed).is_err());
        assert!(key1.decrypt("p", &[0; NONCE_LEN]).is_err());
        assert!(key1.decrypt("p", V2_TAG).is_err());
        assert!(key1.decrypt("p", &[]).is_err());
        let message = CryptoError::Decrypt.to_string();
        assert!(
            message.contains("WATCHPOST_SECRET_KEY_PREVIOUS"),
            "{message}"
        );
    }

    #[test]
    fn the_v2_key_is_argon2id_of_the_passphrase_not_its_hash() {
        let k = key("  correct horse  ");
        let expected = derive_v2(b"correct horse").expect("derive");
        assert_eq!(k.current.v2, expected);
        assert_ne!(
            k.current.v2,
            <[u8; 32]>::from(Sha256::digest(b"correct horse"))
        );
        assert_ne!(key("correct horsf").current.v2, expected);
        assert_eq!(format!("{k:?}"), format!("{:?}", key("other")));
        assert!(!format!("{k:?}").contains("horse"));
    }

    #[test]
    fn legacy_values_of_every_key_form_still_open() {
        let raw = [7u8; 32];
        for text in [
            hex::encode(raw),
            base64::engine::general_purpose::STANDARD.encode(raw),
            "correct horse".to_string(),
        ] {
            let legacy_key = derive_legacy(&text);
            if text != "correct horse" {
                assert_eq!(legacy_key, raw, "{text}");
            } else {
                assert_eq!(
                    legacy_key,
                    <[u8; 32]>::from(Sha256::digest(b"correct horse"))
                );
            }
            let stored = seal(&legacy_key, "p", b"old secret").expect("seal");
            assert_eq!(
                key(&text).open("p", &stored).expect("legacy opens"),
                (b"old secret".to_vec(), Opened::Legacy)
            );
            // And through the previous passphrase.
            let rotated = key("new key").with_previous(&text).expect("previous");
            assert_eq!(
                rotated.open("p", &stored).expect("legacy via previous"),
                (b"old secret".to_vec(), Opened::Legacy)
            );
        }
    }

    #[test]
    fn the_previous_key_opens_what_it_sealed() {
        let old = key("old");
        let sealed = old.encrypt("p", b"s").expect("seal");
        let rotated = key("new").with_previous("old").expect("previous");
        assert_eq!(
            rotated.open("p", &sealed).expect("open"),
            (b"s".to_vec(), Opened::Previous)
        );
        let resealed = rotated.encrypt("p", b"s").expect("seal");
        assert_eq!(
            key("new").open("p", &resealed).expect("current only"),
            (b"s".to_vec(), Opened::Current)
        );
        assert!(old.decrypt("p", &resealed).is_err());
    }

    #[test]
    fn keys_from_the_environment() {
        assert!(SecretKey::from_env(&[]).expect("none").is_none());
        assert!(SecretKey::from_env(&env(&[(ENV_SECRET_KEY, "  ")]))
            .expect("blank")
            .is_none());
        let k = SecretKey::from_env(&env(&[(ENV_SECRET_KEY, "k")]))
            .expect("ok")
            .expect("some");
        assert!(!k.has_previous());
        let k = SecretKey::from_env(&env(&[
            (ENV_SECRET_KEY, "k"),
            (ENV_SECRET_KEY_PREVIOUS, "old"),
        ]))
        .expect("ok")
        .expect("some");
        assert!(k.has_previous());
        let k = SecretKey::from_env(&env(&[
            (ENV_SECRET_KEY, "k"),
            (ENV_SECRET_KEY_PREVIOUS, ""),
        ]))
        .expect("ok")
        .expect("some");
        assert!(!k.has_previous(), "an empty previous key counts as unset");
        let err = SecretKey::from_env(&env(&[(ENV_SECRET_KEY_PREVIOUS, "old")]))
            .expect_err("previous alone");
        assert!(matches!(err, CryptoError::PreviousWithoutCurrent));
        assert!(matches!(
            SecretKey::from_text(" "),
            Err(CryptoError::EmptyKey(ENV_SECRET_KEY))
        ));
    }
}
