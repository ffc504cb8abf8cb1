//! `watchpost-admin rotate-secrets`: re-encrypts every stored secret with the current key.
//!
//! Every value that the current key did not seal in the current format (sealed with
//! `WATCHPOST_SECRET_KEY_PREVIOUS`, or stored in the legacy format) is decrypted and encrypted
//! again with `WATCHPOST_SECRET_KEY`, all in one transaction: either every value is rotated
//! or, when one cannot be decrypted with either key, nothing changes. Running it again
//! re-encrypts nothing. Afterwards `WATCHPOST_SECRET_KEY_PREVIOUS` can be removed.
//!
//! The per-user data keys that seal personal fields of the audit log (`user_data_keys`) are
//! re-wrapped the same way, and those stored unwrapped (while the server had no key) are
//! wrapped.

use deadpool_postgres::Pool;
use serde_json::json;

use super::{crypto::Opened, SecretKey, PASSWORD_PURPOSE};
use crate::{
    audit::{self, AuditCtx},
    error::ApiError,
    StartupError,
};

/// A column that holds values encrypted with [`SecretKey`].
struct EncryptedColumn {
    table: &'static str,
    /// Primary key, read and matched as text.
    id: &'static str,
    column: &'static str,
    /// The associated data the values are bound to.
    purpose: &'static str,
}

/// Every column holding encrypted secrets. A new encrypted column is added here, so that
/// rotation covers it.
const ENCRYPTED_COLUMNS: &[EncryptedColumn] = &[
    EncryptedColumn {
        table: "email_settings",
        id: "id",
        column: "smtp_pass_encrypted",
        purpose: PASSWORD_PURPOSE,
    },
    EncryptedColumn {
        table: "user_totp",
        id: "user_id",
        column: "secret_encrypted",
        purpose: crate::auth::mfa::TOTP_PURPOSE,
    },
];

/// What [`rotate_secrets`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RotationReport {
    /// Values encrypted again with the current key.
    pub reencrypted: u64,
    /// Values already sealed with the current key in the current format (left as they are).
    pub already_current: u64,
    /// Per-user data keys (sealing personal fields of the audit log) wrapped again with the
    /// current key, or wrapped for the first time.
    pub data_keys_rewrapped: u64,
    /// Per-user data keys already wrapped with the current key.
    pub data_keys_already_current: u64,
}

/// Re-encrypts every stored secret that is not yet sealed with the current key. Audited as
/// `secrets.rotated` (counts only) when anything changed. Fails, changing nothing, when a
/// value opens with neither key; the message names the column, never a value.
pub async fn rotate_secrets(pool: &Pool, key: &SecretKey) -> Result<RotationReport, StartupError> {
    let fail = |e: ApiError| StartupError::Postgres(e.to_string());
    let mut conn = pool.get().await.map_err(|e| fail(e.into()))?;
    let tx = conn.transaction().await.map_err(|e| fail(e.into()))?;
    let mut report = RotationReport::default();
    let mut per_column = serde_json::Map::new();
    for c in ENCRYPTED_COLUMNS {
        let select = format!(
            "SELECT {id}::text AS id, {col} AS value FROM {table} WHERE {col} IS NOT NULL \
             ORDER BY 1 FOR UPDATE",
            id = c.id,
            col = c.column,
            table = c.table
        );
        let update = format!(
            "UPDATE {table} SET {col} = $1 WHERE {id}::text = $2",
            id = c.id,
            col = c.column,
            table = c.table
        );
        let rows = tx.query(&select, &[]).await.map_err(|e| fail(e.into()))?;
        let mut rotated = 0u64;
        for row in rows {
            let id: String = row.try_get("id").map_err(|e| fail(e.into()))?;
            let value: Vec<u8> = row.try_get("value").map_err(|e| fail(e.into()))?;
            let (plain, opened) = key.open(c.purpose, &value).map_err(|e| {
                StartupError::Config(format!("{}.{} ({id}): {e}", c.table, c.column))
            })?;
            if opened == Opened::Current {
                report.already_current += 1;
                continue;
            }
            let sealed = key
                .encrypt(c.purpose, &plain)
                .map_err(|e| StartupError::Config(format!("{}.{}: {e}", c.table, c.column)))?;
            tx.execute(&update, &[&sealed, &id])
                .await
                .map_err(|e| fail(e.into()))?;
            rotated += 1;
        }
        if rotated > 0 {
            per_column.insert(
                format!("{}.{}", c.table, c.column),
                json!({"before": null, "after": rotated}),
            );
        }
        report.reencrypted += rotated;
    }
    // The per-user keys sealing personal fields of the audit log: wrapped again with the
    // current key (and wrapped for the first time when stored while no key was set).
    let keys = crate::personal::rewrap_keys(&tx, key)
        .await
        .map_err(StartupError::Config)?;
    if keys.rewrapped > 0 {
        per_column.insert(
            "user_data_keys.key_sealed".to_string(),
            json!({"before": null, "after": keys.rewrapped}),
        );
    }
    report.data_keys_rewrapped = keys.rewrapped;
    report.data_keys_already_current = keys.already_current;
    if report.reencrypted > 0 || keys.rewrapped > 0 {
        audit::record(
            &tx,
            &AuditCtx::system_with_key(Some(key.clone())),
            "secrets.rotated",
            "secrets",
            "secrets",
            serde_json::Value::Object(per_column),
        )
        .await
        .map_err(fail)?;
    }
    tx.commit().await.map_err(|e| fail(e.into()))?;
    Ok(report)
}
