//! The credit ledger: every change of an organization's `credits_balance` is one append-only
//! `credit_transactions` row written in the same database transaction as the balance change.
//!
//! The balance changes through one guarded statement,
//! `UPDATE organizations SET credits_balance = credits_balance + $d WHERE id = $1 AND
//! credits_balance + $d >= 0 RETURNING credits_balance`, never read-modify-write: concurrent
//! debits queue on the row lock and each sees the balance left by the previous one, so the
//! balance can never go below zero and every row's `balance_after` is exact.

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use utoipa::ToSchema;

use crate::{error::ApiError, ids::IdKind, models::col};

/// The kinds of ledger rows (SPEC §6).
pub const TRANSACTION_TYPES: [&str; 6] = [
    "purchase",
    "execution",
    "sale_earning",
    "withdrawal",
    "refund",
    "adjustment",
];

/// One ledger row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreditTransaction {
    /// `txn_…`.
    pub id: String,
    pub organization_id: String,
    /// Signed: credits added (> 0) or taken (< 0).
    pub credits_amount: i64,
    /// One of `purchase`, `execution`, `sale_earning`, `withdrawal`, `refund`, `adjustment`.
    pub transaction_type: String,
    /// The organization's balance right after this row.
    pub balance_after: i64,
    pub description: String,
    /// Who caused it (a user id), if anyone.
    pub actor_id: Option<String>,
    /// What it is about: a run id, a redemption code, ….
    pub reference: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl CreditTransaction {
    /// Columns for `SELECT {CreditTransaction::COLUMNS} FROM credit_transactions`.
    pub const COLUMNS: &'static str = "id, organization_id, credits_amount, transaction_type, \
         balance_after, description, actor_id, reference, created_at";

    /// Builds a row selected with [`CreditTransaction::COLUMNS`].
    pub fn from_row(row: &Row) -> Result<Self, ApiError> {
        Ok(Self {
            id: col(row, "id")?,
            organization_id: col(row, "organization_id")?,
            credits_amount: col(row, "credits_amount")?,
            transaction_type: col(row, "transaction_type")?,
            balance_after: col(row, "balance_after")?,
            description: col(row, "description")?,
            actor_id: col(row, "actor_id")?,
            reference: col(row, "reference")?,
            created_at: col(row, "created_at")?,
        })
    }

    /// Loads one row by id.
    pub async fn load(client: &impl GenericClient, id: &str) -> Result<Option<Self>, ApiError> {
        client
            .query_opt(
                &format!(
                    "SELECT {} FROM credit_transactions WHERE id = $1",
                    Self::COLUMNS
                ),
                &[&id],
            )
            .await?
            .as_ref()
            .map(Self::from_row)
            .transpose()
    }
}

/// A change to apply with [`apply`].
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub organization_id: &'a str,
    /// Signed, never 0.
    pub credits_amount: i64,
    /// One of [`TRANSACTION_TYPES`].
    pub transaction_type: &'a str,
    pub description: &'a str,
    pub actor_id: Option<&'a str>,
    pub reference: Option<&'a str>,
}

/// Changes the organization's balance by `entry.credits_amount` and appends the ledger row, in
/// the caller's transaction (which also writes the audit row and commits).
///
/// 404 when the organization does not exist, 409 when a debit would make the balance
/// negative (nothing is changed; the caller's transaction should be dropped), 400 for an amount
/// of 0 or an unknown type.
pub async fn apply(tx: &Transaction<'_>, entry: &Entry<'_>) -> Result<CreditTransaction, ApiError> {
    if entry.credits_amount == 0 {
        return Err(ApiError::bad_request("credits_amount must not be 0"));
    }
    if !TRANSACTION_TYPES.contains(&entry.transaction_type) {
        return Err(ApiError::bad_request("unknown transaction_type"));
    }
    let row = tx
        .query_opt(
            "UPDATE organizations SET credits_balance = credits_balance + $2, updated_at = now() \
             WHERE id = $1 AND credits_balance + $2 >= 0 RETURNING credits_balance",
            &[&entry.organization_id, &entry.credits_amount],
        )
        .await
        .map_err(out_of_range)?;
    let Some(row) = row else {
        // The guarded UPDATE matched nothing: either there is no such organization, or the
        // debit is larger than the balance. Only now ask which.
        let exists = tx
            .query_opt(
                "SELECT 1 FROM organizations WHERE id = $1",
                &[&entry.organization_id],
            )
            .await?
            .is_some();
        return Err(if exists {
            ApiError::conflict("insufficient credits")
        } else {
            ApiError::not_found("organization not found")
        });
    };
    let balance_after: i64 = col(&row, "credits_balance")?;
    let id = IdKind::Transaction.new_id();
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO credit_transactions (id, organization_id, credits_amount, \
                 transaction_type, balance_after, description, actor_id, reference) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {}",
                CreditTransaction::COLUMNS
            ),
            &[
                &id,
                &entry.organization_id,
                &entry.credits_amount,
                &entry.transaction_type,
                &balance_after,
                &entry.description,
                &entry.actor_id,
                &entry.reference,
            ],
        )
        .await?;
    CreditTransaction::from_row(&row)
}

/// A balance overflowing bigint is a client asking for an absurd amount: 422, not 500.
fn out_of_range(err: tokio_postgres::Error) -> ApiError {
    if err.code() == Some(&tokio_postgres::error::SqlState::NUMERIC_VALUE_OUT_OF_RANGE) {
        ApiError::unprocessable("the balance would exceed the largest storable amount")
    } else {
        err.into()
    }
}
