//! `/api/admin/credits…`: the ledger (`GET /credits/transactions`) and manual adjustments
//! (`POST /credits/adjust`, honouring `Idempotency-Key`).
//!
//! Idempotency keys are scoped per admin (the actor) and kept indefinitely. The key row is
//! inserted first in the request's transaction: a concurrent duplicate blocks on that insert
//! until the first request commits, then replays the stored answer, so one key never applies
//! twice. Refusals by policy (404, 409, 422) are stored and replayed too; malformed requests
//! (400) and store failures (5xx) store nothing, so they can be retried with the same key.

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    audit,
    auth::PlatformAdmin,
    error::{ApiError, ErrorEnvelope},
    extract::{Json, Query},
    ids::IdKind,
    ledger::{self, CreditTransaction, TRANSACTION_TYPES},
    models::col,
    pagination::{Cursor, Page, PageRequest},
    state::AppState,
    validate,
};

/// The header naming an idempotent request.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_transactions))
        .routes(routes!(adjust))
}

/// Filters of `GET /credits/transactions`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListTransactionsQuery {
    /// Only this organization's rows.
    #[param(pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub organization_id: Option<String>,
    /// `purchase`, `execution`, `sale_earning`, `withdrawal`, `refund` or `adjustment`.
    #[param(pattern = "^(purchase|execution|sale_earning|withdrawal|refund|adjustment)$")]
    pub transaction_type: Option<String>,
    /// Page size, default 20, at most 100.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Ledger rows, newest first.
#[utoipa::path(
    get,
    path = "/credits/transactions",
    tag = "credits",
    params(ListTransactionsQuery),
    responses(
        (status = 200, body = Page<CreditTransaction>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope)
    )
)]
async fn list_transactions(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Query(q): Query<ListTransactionsQuery>,
) -> Result<Json<Page<CreditTransaction>>, ApiError> {
    let page = PageRequest::new(q.limit, q.cursor.as_deref())?;
    if let Some(t) = q.transaction_type.as_deref() {
        if !TRANSACTION_TYPES.contains(&t) {
            return Err(ApiError::bad_request(format!(
                "transaction_type must be one of {}",
                TRANSACTION_TYPES.join(", ")
            )));
        }
    }
    let conn = state.db().await?;
    let rows = conn
        .query(
            &format!(
                "SELECT {} FROM credit_transactions \
                 WHERE ($1::text IS NULL OR organization_id = $1) \
                   AND ($2::text IS NULL OR transaction_type = $2) \
                   AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::text)) \
                 ORDER BY created_at DESC, id DESC LIMIT $5",
                CreditTransaction::COLUMNS
            ),
            &[
                &q.organization_id,
                &q.transaction_type,
                &page.after_time(),
                &page.after_id(),
                &page.fetch_limit(),
            ],
        )
        .await?;
    let items = rows
        .iter()
        .map(CreditTransaction::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page::from_rows(items, &page, |t| Cursor {
        created_at: t.created_at,
        id: t.id.clone(),
    })))
}

/// `POST /credits/adjust` body.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustCredits {
    #[schema(pattern = "^org_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub organization_id: String,
    /// Signed integer, not 0: credits added (> 0) or taken (< 0).
    pub credits_amount: i64,
    /// Why (required).
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub description: String,
}

/// Adds or takes credits (an `adjustment` ledger row, audited as `credits.adjusted`).
///
/// With an `Idempotency-Key` header, a repeat with the same key and body answers the first
/// result and changes nothing; the same key with another body is 422. A deduction that would
/// make the balance negative is 409 and changes nothing.
#[utoipa::path(
    post,
    path = "/credits/adjust",
    tag = "credits",
    request_body = AdjustCredits,
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters")),
    responses(
        (status = 201, body = CreditTransaction),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope, description = "Insufficient credits"),
        (status = 422, body = ErrorEnvelope, description = "Idempotency-Key reused with another body")
    )
)]
async fn adjust(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    headers: HeaderMap,
    Json(body): Json<AdjustCredits>,
) -> Result<(StatusCode, Json<CreditTransaction>), ApiError> {
    let key = idempotency_key(&headers)?;
    if body.credits_amount == 0 {
        return Err(ApiError::bad_request("credits_amount must not be 0"));
    }
    let description = validate::text("description", &body.description, 500)?;
    if !IdKind::Organization.matches(&body.organization_id) {
        return Err(ApiError::not_found("organization not found"));
    }
    let request_hash = hex::encode(Sha256::digest(
        serde_json::to_vec(&body).map_err(ApiError::internal)?,
    ));
    let mut conn = state.db().await?;
    let mut tx = conn.transaction().await?;
    if let Some(key) = key.as_deref() {
        let claimed = tx
            .execute(
                "INSERT INTO credit_idempotency_keys (actor_id, idempotency_key, request_hash) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&admin.id(), &key, &request_hash],
            )
            .await?
            == 1;
        if !claimed {
            return replay(&tx, admin.id(), key, &request_hash).await;
        }
    }
    // The work runs in a savepoint so that a refusal can be rolled back while the key row
    // (with the refusal stored on it) still commits.
    let outcome = {
        let work = tx.transaction().await?;
        let result = ledger::apply(
            &work,
            &ledger::Entry {
                organization_id: &body.organization_id,
                credits_amount: body.credits_amount,
                transaction_type: "adjustment",
                description: &description,
                actor_id: Some(admin.id()),
                reference: key.as_deref(),
            },
        )
        .await;
        match result {
            Ok(txn) => {
                audit::record(
                    &work,
                    &admin.audit(),
                    "credits.adjusted",
                    "credit_transaction",
                    &txn.id,
                    audit::created(&audit::snapshot(&txn)?),
                )
                .await?;
                work.commit().await?;
                Ok(txn)
            }
            Err(e) => Err(e),
        }
    };
    let Some(key) = key.as_deref() else {
        let txn = outcome?;
        tx.commit().await?;
        return Ok((StatusCode::CREATED, Json(txn)));
    };
    let (status, stored) = match &outcome {
        Ok(txn) => (201, audit::snapshot(txn)?),
        Err(e) if is_replayable(e) => (
            i32::from(e.code().status().as_u16()),
            serde_json::json!({ "message": e.public_message() }),
        ),
        // Malformed input or a store failure: forget the key so a retry can run.
        Err(_) => return outcome.map(|txn| (StatusCode::CREATED, Json(txn))),
    };
    tx.execute(
        "UPDATE credit_idempotency_keys SET response_status = $3, response_body = $4 \
         WHERE actor_id = $1 AND idempotency_key = $2",
        &[&admin.id(), &key, &status, &stored],
    )
    .await?;
    tx.commit().await?;
    outcome.map(|txn| (StatusCode::CREATED, Json(txn)))
}

/// Refusals whose answer is stored under an idempotency key.
fn is_replayable(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::NotFound(_) | ApiError::Conflict(_) | ApiError::Unprocessable(_)
    )
}

/// The `Idempotency-Key` header: absent, or 1-255 visible ASCII characters (400 otherwise).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else {
        return Ok(None);
    };
    let bad = || ApiError::bad_request("Idempotency-Key must be 1-255 visible ASCII characters");
    let text = value.to_str().map_err(|_| bad())?;
    if text.is_empty() || text.len() > 255 || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(text.to_string()))
}

/// Answers a repeated key: the stored result when the body matches, 422 otherwise.
async fn replay(
    tx: &deadpool_postgres::Transaction<'_>,
    actor_id: &str,
    key: &str,
    request_hash: &str,
) -> Result<(StatusCode, Json<CreditTransaction>), ApiError> {
    let row = tx
        .query_one(
            "SELECT request_hash, response_status, response_body FROM credit_idempotency_keys \
             WHERE actor_id = $1 AND idempotency_key = $2",
            &[&actor_id, &key],
        )
        .await?;
    let stored_hash: String = col(&row, "request_hash")?;
    if stored_hash != request_hash {
        return Err(ApiError::unprocessable(
            "Idempotency-Key was already used with a different request body",
        ));
    }
    let status: Option<i32> = col(&row, "response_status")?;
    let body: Option<serde_json::Value> = col(&row, "response_body")?;
    let (Some(status), Some(body)) = (status, body) else {
        return Err(ApiError::internal(
            "idempotency key without a stored response",
        ));
    };
    let message = body
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_string();
    match status {
        201 => {
            let txn: CreditTransaction =
                serde_json::from_value(body).map_err(ApiError::internal)?;
            Ok((StatusCode::CREATED, Json(txn)))
        }
        404 => Err(ApiError::not_found(message)),
        409 => Err(ApiError::conflict(message)),
        422 => Err(ApiError::unprocessable(message)),
        other => Err(ApiError::internal(format!(
            "unexpected stored idempotent status {other}"
        ))),
    }
}
