//! The append-only, hash-chained audit log.
//!
//! Every mutation calls [`record`] inside its own transaction, so the audit row commits or
//! rolls back with the change it describes. Writers take a transaction-scoped advisory lock
//! ([`AUDIT_LOCK_KEY`]) before reading the chain head, so concurrent writers never fork the
//! chain: `hash = sha256(prev_hash || canonical content)` in `seq` order.
//!
//! The lock is held from [`record`] until the transaction ends, so [`record`] is the last
//! thing a transaction does before its commit: every other statement (the mutation itself,
//! ledger rows, sessions, and anything slow such as password hashing, which runs before the
//! transaction and without a pooled connection) happens before the lock is taken. The
//! lock is then held for three short statements (lock, read the head, insert) and the commit,
//! whatever the request does; user-facing writes (registration, redemption, runs) and admin
//! mutations wait on one another only for that window. A registration that consumes an
//! invitation code writes both of its audit rows at its end. The table refuses
//! UPDATE, DELETE and TRUNCATE (trigger), and [`verify`] recomputes the chain. (Removing the
//! newest rows by bypassing the trigger is not detectable from the chain alone; anchor the
//! head hash elsewhere if that matters.)
//!
//! Personal fields (the actor's IP and user agent, emails, usernames and names in `changes`)
//! are stored sealed under a per-user data key and the chain hashes the sealed form: erasing a
//! user deletes the key and leaves the chain verifiable (see [`crate::personal`]).

use std::{net::IpAddr, sync::Arc};

use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::{
    email::SecretKey, error::ApiError, extract::RequestMeta, ids::IdKind, models::col, personal,
};

/// Advisory lock key serializing audit writers (`pg_advisory_xact_lock`).
pub const AUDIT_LOCK_KEY: i64 = 0x5750_4155_4449; // "WPAUDI"

/// `prev_hash` of the first row.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who did it, from where: everything an audit row records besides the change itself.
#[derive(Debug, Clone, Default)]
pub struct AuditCtx {
    /// The authenticated user; None for the command line (`create-admin`).
    pub actor_id: Option<String>,
    /// The admin behind an impersonation token.
    pub impersonator_id: Option<String>,
    /// The API key the actor authenticated with (`key_…`); None for a session or the command
    /// line.
    pub api_key_id: Option<String>,
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    /// The server's secret key, which wraps the per-user keys that seal personal fields.
    pub secret_key: Option<Arc<SecretKey>>,
}

impl AuditCtx {
    /// An actor acting over HTTP.
    pub fn new(actor_id: &str, impersonator_id: Option<&str>, meta: &RequestMeta) -> Self {
        Self {
            actor_id: Some(actor_id.to_string()),
            impersonator_id: impersonator_id.map(str::to_string),
            api_key_id: None,
            ip: meta.ip,
            user_agent: meta.user_agent.clone(),
            request_id: (!meta.request_id.is_empty()).then(|| meta.request_id.clone()),
            secret_key: meta.secret_key.clone(),
        }
    }

    /// The same context, naming the API key the actor authenticated with.
    pub fn with_api_key(mut self, api_key_id: Option<&str>) -> Self {
        self.api_key_id = api_key_id.map(str::to_string);
        self
    }

    /// The command line (no actor, no request).
    pub fn system() -> Self {
        Self::default()
    }

    /// The command line, sealing personal fields with the server's secret key when set.
    pub fn system_with_key(secret_key: Option<SecretKey>) -> Self {
        Self {
            secret_key: secret_key.map(Arc::new),
            ..Self::default()
        }
    }
}

/// `{field: {before, after}}` for every top-level field that differs between two JSON objects
/// (typically a model serialized before and after the change).
pub fn diff(before: &Value, after: &Value) -> Value {
    let empty = Map::new();
    let b = before.as_object().unwrap_or(&empty);
    let a = after.as_object().unwrap_or(&empty);
    let mut out = Map::new();
    for key in b.keys().chain(a.keys()) {
        if out.contains_key(key) {
            continue;
        }
        let (old, new) = (
            b.get(key).unwrap_or(&Value::Null),
            a.get(key).unwrap_or(&Value::Null),
        );
        if old != new {
            out.insert(
                key.clone(),
                serde_json::json!({"before": old, "after": new}),
            );
        }
    }
    Value::Object(out)
}

/// Changes for a created resource: every field with `before: null`.
pub fn created(after: &Value) -> Value {
    diff(&Value::Object(Map::new()), after)
}

/// Changes for a deleted resource: every field with `after: null`.
pub fn deleted(before: &Value) -> Value {
    diff(before, &Value::Object(Map::new()))
}

/// Serializes a model for [`diff`]; a failure (never expected) is a 500.
pub fn snapshot<T: Serialize>(value: &T) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(|e| ApiError::internal(format!("audit snapshot: {e}")))
}

/// One audit row as stored and listed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub actor_id: Option<String>,
    pub impersonator_id: Option<String>,
    /// The API key the actor used (`key_…`); null for a session or the command line.
    pub actor_api_key_id: Option<String>,
    /// e.g. `user.updated`.
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    /// `{field: {before, after}}`.
    #[schema(value_type = Object)]
    pub changes: Value,
    #[schema(value_type = Option<String>)]
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub prev_hash: String,
    /// Covers the stored form, in which personal fields are sealed: recompute it with
    /// `GET /audit-logs/verify`, not from the opened fields shown here.
    pub hash: String,
    /// The sealed IP and user agent of the actor, as stored (shown opened in `ip` and
    /// `user_agent`).
    #[serde(skip)]
    pub sealed_meta: Option<Value>,
    /// True when personal fields of this entry were erased with the user they belong to: they
    /// show as null.
    pub erased: bool,
}

impl AuditEntry {
    /// Columns for `SELECT {AuditEntry::COLUMNS} FROM audit_log`.
    pub const COLUMNS: &'static str = "id, created_at, actor_id, impersonator_id, action, \
         resource_type, resource_id, changes, ip, user_agent, request_id, prev_hash, hash, \
         actor_api_key_id, sealed_meta";

    /// Builds an entry from a row selected with [`AuditEntry::COLUMNS`].
    pub fn from_row(row: &tokio_postgres::Row) -> Result<Self, ApiError> {
        Ok(Self {
            id: col(row, "id")?,
            created_at: col(row, "created_at")?,
            actor_id: col(row, "actor_id")?,
            impersonator_id: col(row, "impersonator_id")?,
            actor_api_key_id: col(row, "actor_api_key_id")?,
            action: col(row, "action")?,
            resource_type: col(row, "resource_type")?,
            resource_id: col(row, "resource_id")?,
            changes: col(row, "changes")?,
            ip: col(row, "ip")?,
            user_agent: col(row, "user_agent")?,
            request_id: col(row, "request_id")?,
            prev_hash: col(row, "prev_hash")?,
            hash: col(row, "hash")?,
            sealed_meta: col(row, "sealed_meta")?,
            erased: false,
        })
    }

    /// The hash this row must carry given its `prev_hash`.
    pub fn compute_hash(&self) -> String {
        let mut content = vec![
            Value::from(self.id.as_str()),
            Value::from(self.created_at.to_rfc3339_opts(SecondsFormat::Micros, true)),
            opt(&self.actor_id),
            opt(&self.impersonator_id),
            Value::from(self.action.as_str()),
            Value::from(self.resource_type.as_str()),
            opt(&self.resource_id),
            self.changes.clone(),
            self.ip
                .map_or(Value::Null, |ip| Value::from(ip.to_string())),
            opt(&self.user_agent),
            opt(&self.request_id),
        ];
        // Appended only when set, so rows written before the column existed hash as they did.
        if let Some(key) = &self.actor_api_key_id {
            content.push(serde_json::json!({ "actor_api_key_id": key }));
        }
        // Rows written before sealed personal fields existed hash as they always did.
        if let Some(sealed) = &self.sealed_meta {
            content.push(sealed.clone());
        }
        chain_hash(&self.prev_hash, &canonical_json(&Value::Array(content)))
    }
}

fn opt(v: &Option<String>) -> Value {
    v.as_deref().map_or(Value::Null, Value::from)
}

/// `hex(sha256(prev_hash || content))`.
pub fn chain_hash(prev_hash: &str, content: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(content.as_bytes());
    hex::encode(hasher.finalize())
}

/// JSON with object keys sorted at every level and no whitespace, so that a value read back
/// from `jsonb` (which reorders keys) hashes the same as the value written.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(key.as_str()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Appends an audit row inside `tx` (the transaction of the mutation it describes) and returns
/// its id (`aud_…`).
///
/// ```ignore
/// let mut conn = state.db().await?;
/// let tx = conn.transaction().await?;
/// // … the mutation …
/// audit::record(&tx, &admin.audit(), "user.updated", "user", &id, audit::diff(&before, &after)).await?;
/// tx.commit().await?;
/// ```
pub async fn record(
    tx: &Transaction<'_>,
    ctx: &AuditCtx,
    action: &str,
    resource_type: &str,
    resource_id: &str,
    changes: Value,
) -> Result<String, ApiError> {
    lock(tx).await?;
    // Data keys are created under the lock, so key inserts never wait on each other.
    let actor_subject = ctx.impersonator_id.as_deref().or(ctx.actor_id.as_deref());
    let (changes, sealed_meta, ip, user_agent) = personal::seal_row(
        tx,
        ctx.secret_key.as_deref(),
        actor_subject,
        resource_type,
        resource_id,
        changes,
        ctx.ip,
        ctx.user_agent.clone(),
    )
    .await?;
    let prev_hash: String = match tx
        .query_opt("SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1", &[])
        .await?
    {
        Some(row) => col(&row, "hash")?,
        None => GENESIS_HASH.to_string(),
    };
    let now = Utc::now();
    // Stored with microsecond precision: hash exactly what PostgreSQL will give back.
    let created_at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
    let mut entry = AuditEntry {
        id: IdKind::Audit.new_id(),
        created_at,
        actor_id: ctx.actor_id.clone(),
        impersonator_id: ctx.impersonator_id.clone(),
        actor_api_key_id: ctx.api_key_id.clone(),
        action: action.to_string(),
        resource_type: resource_type.to_string(),
        resource_id: (!resource_id.is_empty()).then(|| resource_id.to_string()),
        changes,
        ip,
        user_agent,
        request_id: ctx.request_id.clone(),
        prev_hash,
        hash: String::new(),
        sealed_meta,
        erased: false,
    };
    entry.hash = entry.compute_hash();
    tx.execute(
        "INSERT INTO audit_log (id, created_at, actor_id, impersonator_id, action, \
         resource_type, resource_id, changes, ip, user_agent, request_id, prev_hash, hash, \
         actor_api_key_id, sealed_meta) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        &[
            &entry.id,
            &entry.created_at,
            &entry.actor_id,
            &entry.impersonator_id,
            &entry.action,
            &entry.resource_type,
            &entry.resource_id,
            &entry.changes,
            &entry.ip,
            &entry.user_agent,
            &entry.request_id,
            &entry.prev_hash,
            &entry.hash,
            &entry.actor_api_key_id,
            &entry.sealed_meta,
        ],
    )
    .await?;
    Ok(entry.id)
}

/// Takes the audit writers' lock for the rest of `tx` ([`record`] does; taking it again is a
/// no-op). Erasure takes it before deleting a data key, so that it never waits on a writer
/// that holds the lock while creating the same key.
pub async fn lock(tx: &Transaction<'_>) -> Result<(), ApiError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK_KEY])
        .await?;
    Ok(())
}

/// The result of [`verify`].
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Verification {
    /// True when every row links to its predecessor and hashes to its stored hash.
    pub ok: bool,
    /// Rows examined.
    pub checked: u64,
    /// The first row (in chain order) that does not verify.
    pub first_bad_id: Option<String>,
}

/// Recomputes the whole chain in `seq` order, in batches.
pub async fn verify(client: &impl GenericClient) -> Result<Verification, ApiError> {
    const BATCH: i64 = 1000;
    let mut checked = 0u64;
    let mut expected_prev = GENESIS_HASH.to_string();
    let mut last_seq = 0i64;
    loop {
        let rows = client
            .query(
                &format!(
                    "SELECT seq, {} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                    AuditEntry::COLUMNS
                ),
                &[&last_seq, &BATCH],
            )
            .await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            last_seq = col(row, "seq")?;
            let entry = AuditEntry::from_row(row)?;
            checked += 1;
            if entry.prev_hash != expected_prev || entry.compute_hash() != entry.hash {
                return Ok(Verification {
                    ok: false,
                    checked,
                    first_bad_id: Some(entry.id),
                });
            }
            expected_prev = entry.hash;
        }
    }
    Ok(Verification {
        ok: true,
        checked,
        first_bad_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry() -> AuditEntry {
        AuditEntry {
            id: "aud_01".into(),
            created_at: DateTime::from_timestamp_micros(1_732_000_000_123_456).expect("time"),
            actor_id: Some("usr_1".into()),
            impersonator_id: None,
            actor_api_key_id: None,
            action: "user.updated".into(),
            resource_type: "user".into(),
            resource_id: Some("usr_2".into()),
            changes: json!({"status": {"before": "active", "after": "disabled"}}),
            ip: Some("10.0.0.1".parse().expect("ip")),
            user_agent: Some("curl/8".into()),
            request_id: Some("req-1".into()),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
            sealed_meta: None,
            erased: false,
        }
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": null}});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":null,"y":[1,{"c":3,"d":2}]},"b":1}"#
        );
    }

    #[test]
    fn hash_covers_every_field_and_the_link() {
        let base = entry();
        let h = base.compute_hash();
        assert_eq!(h.len(), 64);
        type Mutation = Box<dyn Fn(&mut AuditEntry)>;
        let mutations: Vec<Mutation> = vec![
            Box::new(|e| e.id = "aud_02".into()),
            Box::new(|e| e.created_at += chrono::Duration::microseconds(1)),
            Box::new(|e| e.actor_id = None),
            Box::new(|e| e.impersonator_id = Some("usr_9".into())),
            Box::new(|e| e.actor_api_key_id = Some("key_1".into())),
            Box::new(|e| e.action = "user.deleted".into()),
            Box::new(|e| e.resource_type = "org".into()),
            Box::new(|e| e.resource_id = Some("usr_3".into())),
            Box::new(|e| e.changes = json!({})),
            Box::new(|e| e.ip = None),
            Box::new(|e| e.user_agent = None),
            Box::new(|e| e.request_id = None),
            Box::new(|e| e.prev_hash = "1".repeat(64)),
            Box::new(|e| e.sealed_meta = Some(json!({"$sealed": {}}))),
        ];
        for (i, mutate) in mutations.iter().enumerate() {
            let mut e = entry();
            mutate(&mut e);
            assert_ne!(e.compute_hash(), h, "mutation {i} not covered");
        }
    }

    #[test]
    fn rows_without_an_api_key_hash_as_before_the_column_existed() {
        let e = entry();
        let legacy = Value::Array(vec![
            json!("aud_01"),
            json!(e.created_at.to_rfc3339_opts(SecondsFormat::Micros, true)),
            json!("usr_1"),
            Value::Null,
            json!("user.updated"),
            json!("user"),
            json!("usr_2"),
            e.changes.clone(),
            json!("10.0.0.1"),
            json!("curl/8"),
            json!("req-1"),
        ]);
        assert_eq!(
            e.compute_hash(),
            chain_hash(GENESIS_HASH, &canonical_json(&legacy))
        );
    }

    #[test]
    fn diff_lists_only_changed_fields() {
        let before = json!({"status": "active", "email": "a@x", "name": null});
        let after = json!({"status": "disabled", "email": "a@x", "name": "A"});
        assert_eq!(
            diff(&before, &after),
            json!({
                "status": {"before": "active", "after": "disabled"},
                "name": {"before": null, "after": "A"}
            })
        );
        assert_eq!(
            created(&json!({"id": "x"})),
            json!({"id": {"before": null, "after": "x"}})
        );
        assert_eq!(
            deleted(&json!({"id": "x"})),
            json!({"id": {"before": "x", "after": null}})
        );
    }
}
