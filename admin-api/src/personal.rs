//! Crypto-shredding of the personal data in the audit log.
//!
//! The audit log is append-only and hash-chained, so a row can never be edited to forget a
//! person. Instead, the personal fields of a row are stored sealed (AES-256-GCM) under a
//! random data key of the person they belong to (`user_data_keys`), and the chain hashes the
//! sealed form. Erasing a user deletes their data key ([`erase`]): what was sealed under it can
//! no longer be read, and the chain still verifies because no stored byte changed.
//!
//! What is sealed, and under whose key:
//! - the actor's IP and user agent (column `sealed_meta`; `ip` and `user_agent` stay NULL),
//!   under the key of the user who acted (the impersonating admin when there is one). Rows
//!   without a user actor (the command line) keep them in clear (they have none today).
//! - in `changes`, the values of [`PERSONAL_FIELDS`] at the top level, under the key of the
//!   row's subject: the resource itself for `resource_type = "user"`, else the `user_id` the
//!   changes name. Changes with no subject user (organizations, codes, gateway rules) stay in
//!   clear: their `name` is not a person's.
//!
//! A sealed value is `{"$sealed": {"subject": "usr_…", "data": base64(nonce || ciphertext)}}`,
//! the plaintext being the JSON of the original value; the subject is bound as associated data.
//! When the subject has no key that can be obtained (the user was deleted, or a wrapped key
//! and no `WATCHPOST_SECRET_KEY`), the value is stored as `null`.
//!
//! Data keys are stored wrapped by the server's secret key (`WATCHPOST_SECRET_KEY`, purpose
//! [`DATA_KEY_PURPOSE`]; re-wrapped by `rotate-secrets`). A server without a secret key stores
//! them unwrapped (`wrapped = false`), which still allows erasure but not protection of a copy
//! of the database; `rotate-secrets` wraps them once a key is configured.
//!
//! Reading ([`reveal`]) opens every sealed value whose key still exists; the others show as
//! `null`, and the item carries `"erased": true`.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use aes_gcm::{
    aead::{Aead, KeyInit, Payload},
    Aes256Gcm, Nonce,
};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use deadpool_postgres::GenericClient;
use serde_json::{json, Map, Value};

use crate::{audit::AuditEntry, email::SecretKey, error::ApiError, models::col};

/// Associated data of data keys wrapped by the server's secret key.
pub const DATA_KEY_PURPOSE: &str = "watchpost/user-data-key";
/// Prefix of the associated data of sealed personal values (followed by the subject id).
const SEAL_AAD: &str = "watchpost/audit-personal/v1:";
/// The JSON key marking a sealed value.
pub const SEALED_TAG: &str = "$sealed";
/// Top-level fields of audit `changes` that identify a person.
pub const PERSONAL_FIELDS: &[&str] = &[
    "email",
    "username",
    "name",
    "first_name",
    "last_name",
    "ip",
    "user_agent",
];
const NONCE_LEN: usize = 12;

/// A user's plaintext data key.
type DataKey = [u8; 32];

fn is_user_id(id: &str) -> bool {
    crate::ids::IdKind::User.matches(id)
}

/// Opens a stored data key: unwrapped, or with the server key. None (and a warning) when it is
/// wrapped and no configured key opens it.
fn unwrap_key(
    master: Option<&SecretKey>,
    user_id: &str,
    stored: &[u8],
    wrapped: bool,
) -> Option<DataKey> {
    let plain = if wrapped {
        let Some(master) = master else {
            tracing::warn!(
                user_id,
                "a personal-data key is wrapped but WATCHPOST_SECRET_KEY is not set"
            );
            return None;
        };
        match master.decrypt(DATA_KEY_PURPOSE, stored) {
            Ok(plain) => plain,
            Err(e) => {
                tracing::warn!(user_id, error = %e, "cannot unwrap a personal-data key");
                return None;
            }
        }
    } else {
        stored.to_vec()
    };
    DataKey::try_from(plain.as_slice()).ok()
}

/// The data key of `user_id`, created when missing and the user exists and is not deleted;
/// None when there is none to be had. Called with the audit lock held: every key insert and
/// every erasure (with the deletion of a user row) happens under it, so the existence check
/// holds until the commit, and no writer waits on another's key or users row while holding
/// the lock (there is no foreign key to check).
pub async fn key_for_writing(
    client: &impl GenericClient,
    master: Option<&SecretKey>,
    user_id: &str,
) -> Result<Option<DataKey>, ApiError> {
    if let Some(row) = client
        .query_opt(
            "SELECT key_sealed, wrapped FROM user_data_keys WHERE user_id = $1",
            &[&user_id],
        )
        .await?
    {
        let stored: Vec<u8> = col(&row, "key_sealed")?;
        return Ok(unwrap_key(master, user_id, &stored, col(&row, "wrapped")?));
    }
    let key: DataKey = rand::random();
    let (stored, wrapped) = match master {
        Some(master) => (
            master
                .encrypt(DATA_KEY_PURPOSE, &key)
                .map_err(ApiError::internal)?,
            true,
        ),
        None => (key.to_vec(), false),
    };
    let inserted = client
        .execute(
            "INSERT INTO user_data_keys (user_id, key_sealed, wrapped) \
             SELECT id, $2, $3 FROM users WHERE id = $1 AND status <> 'deleted' \
             ON CONFLICT (user_id) DO NOTHING",
            &[&user_id, &stored, &wrapped],
        )
        .await?;
    Ok((inserted == 1).then_some(key))
}

/// Deletes the data key of `user_id`: everything sealed under it becomes unreadable.
/// Take the audit lock ([`crate::audit::lock`]) first.
pub async fn erase(client: &impl GenericClient, user_id: &str) -> Result<u64, ApiError> {
    Ok(client
        .execute("DELETE FROM user_data_keys WHERE user_id = $1", &[&user_id])
        .await?)
}

/// `{"$sealed": {"subject", "data"}}` of `value` under `key`.
fn seal(key: &DataKey, subject: &str, value: &Value) -> Result<Value, ApiError> {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let aad = format!("{SEAL_AAD}{subject}");
    let plain = serde_json::to_vec(value).map_err(ApiError::internal)?;
    let sealed = Aes256Gcm::new(key.into())
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &plain,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| ApiError::internal("cannot seal a personal field"))?;
    let mut data = nonce.to_vec();
    data.extend_from_slice(&sealed);
    Ok(json!({SEALED_TAG: {"subject": subject, "data": STANDARD.encode(data)}}))
}

/// The subject and data of a sealed value.
fn sealed_parts(value: &Value) -> Option<(&str, &str)> {
    let inner = value.as_object()?.get(SEALED_TAG)?.as_object()?;
    Some((
        inner.get("subject")?.as_str()?,
        inner.get("data")?.as_str()?,
    ))
}

fn open(key: &DataKey, subject: &str, data: &str) -> Option<Value> {
    let bytes = STANDARD.decode(data).ok()?;
    if bytes.len() <= NONCE_LEN {
        return None;
    }
    let (nonce, sealed) = bytes.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    let aad = format!("{SEAL_AAD}{subject}");
    let plain = Aes256Gcm::new(key.into())
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: sealed,
                aad: aad.as_bytes(),
            },
        )
        .ok()?;
    serde_json::from_slice(&plain).ok()
}

/// Whose personal fields `changes` of a row about `resource_type`/`resource_id` carry.
fn changes_subject(resource_type: &str, resource_id: &str, changes: &Value) -> Option<String> {
    if resource_type == "user" && is_user_id(resource_id) {
        return Some(resource_id.to_string());
    }
    let field = changes.as_object()?.get("user_id")?;
    let id = match field {
        Value::String(s) => Some(s.as_str()),
        Value::Object(m) => m
            .get("after")
            .and_then(Value::as_str)
            .or_else(|| m.get("before").and_then(Value::as_str)),
        _ => None,
    }?;
    is_user_id(id).then(|| id.to_string())
}

/// Seals what is personal in one audit row about to be written: the changes' personal fields
/// and the actor's IP and user agent. Returns `(changes, sealed_meta, ip, user_agent)` as they
/// are to be stored.
#[allow(clippy::too_many_arguments)]
pub async fn seal_row(
    client: &impl GenericClient,
    master: Option<&SecretKey>,
    actor_subject: Option<&str>,
    resource_type: &str,
    resource_id: &str,
    mut changes: Value,
    ip: Option<IpAddr>,
    user_agent: Option<String>,
) -> Result<(Value, Option<Value>, Option<IpAddr>, Option<String>), ApiError> {
    let mut keys: HashMap<String, Option<DataKey>> = HashMap::new();
    if let Some(subject) = changes_subject(resource_type, resource_id, &changes) {
        if let Some(map) = changes.as_object_mut() {
            if PERSONAL_FIELDS
                .iter()
                .any(|f| map.get(*f).is_some_and(|v| !v.is_null()))
            {
                let key = key_for_writing(client, master, &subject).await?;
                keys.insert(subject.clone(), key);
                for field in PERSONAL_FIELDS {
                    if let Some(value) = map.get_mut(*field) {
                        seal_field(value, key.as_ref(), &subject)?;
                    }
                }
            }
        }
    }
    let Some(actor) = actor_subject.filter(|a| is_user_id(a)) else {
        return Ok((changes, None, ip, user_agent));
    };
    if ip.is_none() && user_agent.is_none() {
        return Ok((changes, None, None, None));
    }
    let key = match keys.get(actor) {
        Some(key) => *key,
        None => key_for_writing(client, master, actor).await?,
    };
    let sealed_meta = match key {
        Some(key) => Some(seal(
            &key,
            actor,
            &json!({"ip": ip.map(|ip| ip.to_string()), "user_agent": user_agent}),
        )?),
        None => None,
    };
    Ok((changes, sealed_meta, None, None))
}

/// Seals a field's value: each non-null `before`/`after` of a `{before, after}` pair, or the
/// whole value otherwise; without a key the values become null.
fn seal_field(value: &mut Value, key: Option<&DataKey>, subject: &str) -> Result<(), ApiError> {
    let seal_one = |v: &mut Value| -> Result<(), ApiError> {
        if !v.is_null() {
            *v = match key {
                Some(key) => seal(key, subject, v)?,
                None => Value::Null,
            };
        }
        Ok(())
    };
    match value {
        Value::Object(pair) if pair.contains_key("before") || pair.contains_key("after") => {
            for side in ["before", "after"] {
                if let Some(v) = pair.get_mut(side) {
                    seal_one(v)?;
                }
            }
            Ok(())
        }
        other => seal_one(other),
    }
}

fn collect_subjects(value: &Value, out: &mut HashSet<String>) {
    if let Some((subject, _)) = sealed_parts(value) {
        out.insert(subject.to_string());
        return;
    }
    match value {
        Value::Object(map) => map.values().for_each(|v| collect_subjects(v, out)),
        Value::Array(items) => items.iter().for_each(|v| collect_subjects(v, out)),
        _ => {}
    }
}

/// Replaces every sealed value by its plaintext, or null when its key is gone; returns
/// whether anything could not be opened.
fn open_all(value: &mut Value, keys: &HashMap<String, DataKey>) -> bool {
    if let Some((subject, data)) = sealed_parts(value) {
        let opened = keys.get(subject).and_then(|k| open(k, subject, data));
        let erased = opened.is_none();
        *value = opened.unwrap_or(Value::Null);
        return erased;
    }
    match value {
        Value::Object(map) => map
            .values_mut()
            .fold(false, |acc, v| open_all(v, keys) | acc),
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |acc, v| open_all(v, keys) | acc),
        _ => false,
    }
}

/// Opens the sealed personal fields of listed audit entries in place (`changes`, `ip`,
/// `user_agent`); what cannot be opened (the key was erased) shows as null and the entry is
/// marked `erased`. The stored form is what [`AuditEntry::compute_hash`] covers, so call this
/// only on entries being shown.
pub async fn reveal(
    client: &impl GenericClient,
    master: Option<&SecretKey>,
    entries: &mut [AuditEntry],
) -> Result<(), ApiError> {
    let mut subjects = HashSet::new();
    for e in entries.iter() {
        collect_subjects(&e.changes, &mut subjects);
        if let Some(meta) = &e.sealed_meta {
            collect_subjects(meta, &mut subjects);
        }
    }
    let mut keys = HashMap::new();
    if !subjects.is_empty() {
        let ids: Vec<String> = subjects.into_iter().collect();
        let rows = client
            .query(
                "SELECT user_id, key_sealed, wrapped FROM user_data_keys \
                 WHERE user_id = ANY($1)",
                &[&ids],
            )
            .await?;
        for row in rows {
            let user_id: String = col(&row, "user_id")?;
            let stored: Vec<u8> = col(&row, "key_sealed")?;
            if let Some(key) = unwrap_key(master, &user_id, &stored, col(&row, "wrapped")?) {
                keys.insert(user_id, key);
            }
        }
    }
    for e in entries.iter_mut() {
        let mut erased = open_all(&mut e.changes, &keys);
        if let Some(mut meta) = e.sealed_meta.clone() {
            erased |= open_all(&mut meta, &keys);
            let obj = meta.as_object().cloned().unwrap_or_else(Map::new);
            e.ip = obj
                .get("ip")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok());
            e.user_agent = obj
                .get("user_agent")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        e.erased = erased;
    }
    Ok(())
}

/// What [`rewrap_keys`] did: keys wrapped again with the current key, and keys left as they
/// were.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RewrapReport {
    pub rewrapped: u64,
    pub already_current: u64,
}

/// Wraps every data key with the current server key: unwrapped ones (stored while the server
/// had no key) and those wrapped by `WATCHPOST_SECRET_KEY_PREVIOUS` or in the legacy format.
/// Fails (the caller rolls back) when a wrapped key opens with neither key.
pub async fn rewrap_keys(
    client: &impl GenericClient,
    master: &SecretKey,
) -> Result<RewrapReport, String> {
    let rows = client
        .query(
            "SELECT user_id, key_sealed, wrapped FROM user_data_keys ORDER BY user_id FOR UPDATE",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut report = RewrapReport::default();
    for row in rows {
        let user_id: String = row.try_get("user_id").map_err(|e| e.to_string())?;
        let stored: Vec<u8> = row.try_get("key_sealed").map_err(|e| e.to_string())?;
        let wrapped: bool = row.try_get("wrapped").map_err(|e| e.to_string())?;
        let plain = if wrapped {
            let (plain, opened) = master
                .open(DATA_KEY_PURPOSE, &stored)
                .map_err(|e| format!("user_data_keys.key_sealed ({user_id}): {e}"))?;
            if opened == crate::email::crypto::Opened::Current {
                report.already_current += 1;
                continue;
            }
            plain
        } else {
            stored
        };
        let sealed = master
            .encrypt(DATA_KEY_PURPOSE, &plain)
            .map_err(|e| format!("user_data_keys.key_sealed: {e}"))?;
        client
            .execute(
                "UPDATE user_data_keys SET key_sealed = $1, wrapped = true WHERE user_id = $2",
                &[&sealed, &user_id],
            )
            .await
            .map_err(|e| e.to_string())?;
        report.rewrapped += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_subject() {
        let key: DataKey = rand::random();
        let v = json!("ada@example.com");
        let sealed = seal(&key, "usr_a", &v).expect("seal");
        assert!(!sealed.to_string().contains("ada@"));
        let (subject, data) = sealed_parts(&sealed).expect("parts");
        assert_eq!(subject, "usr_a");
        assert_eq!(open(&key, "usr_a", data), Some(v));
        assert_eq!(open(&key, "usr_b", data), None);
        assert_eq!(open(&rand::random(), "usr_a", data), None);
    }

    #[test]
    fn open_all_marks_erased_values() {
        let key: DataKey = rand::random();
        let mut changes = json!({
            "email": {"before": null, "after": seal(&key, "usr_a", &json!("a@x")).expect("seal")},
            "status": {"before": null, "after": "active"}
        });
        let mut keys = HashMap::new();
        let mut copy = changes.clone();
        assert!(open_all(&mut copy, &keys));
        assert_eq!(copy["email"]["after"], Value::Null);
        keys.insert("usr_a".to_string(), key);
        assert!(!open_all(&mut changes, &keys));
        assert_eq!(changes["email"]["after"], json!("a@x"));
        assert_eq!(changes["status"]["after"], json!("active"));
    }

    #[test]
    fn the_subject_is_the_user_resource_or_the_named_user() {
        let id = crate::ids::IdKind::User.new_id();
        assert_eq!(changes_subject("user", &id, &json!({})), Some(id.clone()));
        assert_eq!(
            changes_subject(
                "membership",
                "x",
                &json!({"user_id": {"before": null, "after": id}})
            ),
            Some(id.clone())
        );
        assert_eq!(
            changes_subject("organization", "org_x", &json!({"name": {"after": "Acme"}})),
            None
        );
    }
}
