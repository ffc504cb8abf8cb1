//! `/api/admin/redemption-codes…`: bulk creation, listing and (de)activation. Users redeem
//! codes with `POST /api/redeem` (see `routes::redeem`).
//!
//! Codes are 10 Crockford Base32 characters (50 random bits), shown as `XXXXX-XXXXX` and stored
//! normalised (upper case, no separators). Input is normalised the Crockford way: case is
//! ignored, dashes and spaces are dropped, `I`/`L` read as `1` and `O` as `0`.

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    audit,
    auth::PlatformAdmin,
    error::{ApiError, ErrorEnvelope},
    extract::{Json, Path, Query},
    models::col,
    pagination::{Cursor, Page, PageRequest},
    state::AppState,
    validate,
};

/// Crockford's Base32 alphabet (no I, L, O, U).
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters of a redemption code (5 bits each: 50 bits).
pub const REDEMPTION_CODE_LEN: usize = 10;
/// Most codes per bulk request.
pub const MAX_BULK: i64 = 10_000;
/// Code types; `credits` adds `value` credits to the redeemer's organization.
pub const CODE_TYPES: [&str; 1] = ["credits"];

/// A random code of `len` Crockford Base32 characters (normalised form).
pub fn generate_code(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(CROCKFORD[rng.gen_range(0..CROCKFORD.len())]))
        .collect()
}

/// Normalises user input to the stored form, or None when it cannot be a code.
pub fn normalize_code(raw: &str) -> Option<String> {
    if raw.len() > 64 {
        return None;
    }
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        let c = match c.to_ascii_uppercase() {
            '-' | ' ' => continue,
            'I' | 'L' => '1',
            'O' => '0',
            c if c.is_ascii() && CROCKFORD.contains(&(c as u8)) => c,
            _ => return None,
        };
        out.push(c);
    }
    (!out.is_empty()).then_some(out)
}

/// The display form: groups of five separated by dashes.
pub fn display_code(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    chars
        .chunks(5)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(bulk_create))
        .routes(routes!(list_codes))
        .routes(routes!(patch_code))
}

/// A redemption code.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RedemptionCode {
    /// `XXXXX-XXXXX`.
    pub code: String,
    pub batch_id: String,
    /// `credits`.
    #[serde(rename = "type")]
    pub code_type: String,
    /// Credits granted per redemption.
    pub value: i64,
    pub max_uses: i32,
    pub uses: i32,
    pub is_active: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl RedemptionCode {
    /// Columns for `SELECT {RedemptionCode::COLUMNS} FROM redemption_codes`.
    pub const COLUMNS: &'static str =
        "code, batch_id, code_type, value, max_uses, uses, is_active, expires_at, created_at";

    /// Builds a code from a row selected with [`RedemptionCode::COLUMNS`].
    pub fn from_row(row: &Row) -> Result<Self, ApiError> {
        Ok(Self {
            code: display_code(&col::<String>(row, "code")?),
            batch_id: col(row, "batch_id")?,
            code_type: col(row, "code_type")?,
            value: col(row, "value")?,
            max_uses: col(row, "max_uses")?,
            uses: col(row, "uses")?,
            is_active: col(row, "is_active")?,
            expires_at: col(row, "expires_at")?,
            created_at: col(row, "created_at")?,
        })
    }
}

/// `POST /redemption-codes/bulk` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkCreate {
    /// 1..=10000.
    #[schema(minimum = 1, maximum = 10000)]
    pub count: i64,
    /// `credits`.
    #[serde(rename = "type")]
    #[schema(pattern = "^credits$")]
    pub code_type: String,
    /// Credits per redemption: a positive integer, as a number or a numeric string.
    #[schema(value_type = String)]
    pub value: serde_json::Value,
    /// Redemptions allowed in total (default 1).
    pub max_uses: Option<i32>,
    /// RFC 3339, in the future; none means the codes never expire.
    pub expires_at: Option<String>,
    /// Groups the codes; generated when absent.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub batch_id: Option<String>,
}

/// The created batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkCreated {
    pub batch_id: String,
    pub count: usize,
    /// The codes, `XXXXX-XXXXX`.
    pub codes: Vec<String>,
}

fn positive_value(v: &serde_json::Value) -> Result<i64, ApiError> {
    let bad = || ApiError::bad_request("value must be a positive integer (number or string)");
    let n = match v {
        serde_json::Value::Number(n) => n.as_i64().ok_or_else(bad)?,
        serde_json::Value::String(s) => s.trim().parse::<i64>().map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    if n > 0 {
        Ok(n)
    } else {
        Err(bad())
    }
}

/// Creates `count` codes in one batch (audited once as `redemption_codes.created`).
#[utoipa::path(
    post,
    path = "/redemption-codes/bulk",
    tag = "redemption-codes",
    request_body = BulkCreate,
    responses(
        (status = 201, body = BulkCreated),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope)
    )
)]
async fn bulk_create(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Json(body): Json<BulkCreate>,
) -> Result<(StatusCode, Json<BulkCreated>), ApiError> {
    if !(1..=MAX_BULK).contains(&body.count) {
        return Err(ApiError::bad_request(format!(
            "count must be between 1 and {MAX_BULK}"
        )));
    }
    if !CODE_TYPES.contains(&body.code_type.as_str()) {
        return Err(ApiError::bad_request("type must be one of: credits"));
    }
    let value = positive_value(&body.value)?;
    let max_uses = body.max_uses.unwrap_or(1);
    if max_uses < 1 {
        return Err(ApiError::bad_request("max_uses must be at least 1"));
    }
    let expires_at = match body.expires_at.as_deref() {
        None => None,
        Some(t) => {
            let at = DateTime::parse_from_rfc3339(t)
                .map_err(|_| ApiError::bad_request("expires_at must be an RFC 3339 time"))?
                .with_timezone(&Utc);
            if at <= Utc::now() {
                return Err(ApiError::bad_request("expires_at must be in the future"));
            }
            Some(at)
        }
    };
    let batch_id = match body.batch_id.as_deref() {
        Some(b) => validate::text("batch_id", b, 64)?,
        None => format!("batch_{}", ulid::Ulid::new()),
    };
    let wanted = usize::try_from(body.count).map_err(ApiError::internal)?;
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let mut codes: Vec<String> = Vec::with_capacity(wanted);
    // One multi-row INSERT per attempt; a collision (with an existing code or within the
    // batch) is skipped by ON CONFLICT and regenerated in the next round.
    for _ in 0..8 {
        let missing = wanted - codes.len();
        if missing == 0 {
            break;
        }
        let candidates: Vec<String> = (0..missing)
            .map(|_| generate_code(REDEMPTION_CODE_LEN))
            .collect();
        let rows = tx
            .query(
                "INSERT INTO redemption_codes (code, batch_id, code_type, value, max_uses, \
                 expires_at, created_by) \
                 SELECT c, $2, $3, $4, $5, $6, $7 FROM unnest($1::text[]) AS c \
                 ON CONFLICT (code) DO NOTHING RETURNING code",
                &[
                    &candidates,
                    &batch_id,
                    &body.code_type,
                    &value,
                    &max_uses,
                    &expires_at,
                    &admin.id(),
                ],
            )
            .await?;
        for row in &rows {
            codes.push(col(row, "code")?);
        }
    }
    if codes.len() != wanted {
        return Err(ApiError::internal("could not generate enough unique codes"));
    }
    audit::record(
        &tx,
        &admin.audit(),
        "redemption_codes.created",
        "redemption_code_batch",
        &batch_id,
        audit::created(&serde_json::json!({
            "count": wanted,
            "type": body.code_type,
            "value": value,
            "max_uses": max_uses,
            "expires_at": expires_at,
        })),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(BulkCreated {
            batch_id,
            count: codes.len(),
            codes: codes.iter().map(|c| display_code(c)).collect(),
        }),
    ))
}

/// Filters of `GET /redemption-codes`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListCodesQuery {
    /// Part of the code (normalised like input codes).
    pub q: Option<String>,
    /// `credits`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    #[param(pattern = "^credits$")]
    pub code_type: Option<String>,
    pub batch_id: Option<String>,
    /// Page size, default 20, at most 100.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Redemption codes, newest first.
#[utoipa::path(
    get,
    path = "/redemption-codes",
    tag = "redemption-codes",
    params(ListCodesQuery),
    responses(
        (status = 200, body = Page<RedemptionCode>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope)
    )
)]
async fn list_codes(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Query(q): Query<ListCodesQuery>,
) -> Result<Json<Page<RedemptionCode>>, ApiError> {
    let page = PageRequest::new(q.limit, q.cursor.as_deref())?;
    let pattern = match q.q.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(format!(
            "%{}%",
            normalize_code(s).ok_or_else(|| ApiError::bad_request("q is not part of a code"))?
        )),
    };
    if let Some(t) = q.code_type.as_deref() {
        if !CODE_TYPES.contains(&t) {
            return Err(ApiError::bad_request("type must be one of: credits"));
        }
    }
    let conn = state.db().await?;
    let rows = conn
        .query(
            &format!(
                "SELECT {} FROM redemption_codes \
                 WHERE ($1::text IS NULL OR code LIKE $1) \
                   AND ($2::text IS NULL OR code_type = $2) \
                   AND ($3::text IS NULL OR batch_id = $3) \
                   AND ($4::timestamptz IS NULL OR (created_at, code) < ($4, $5::text)) \
                 ORDER BY created_at DESC, code DESC LIMIT $6",
                RedemptionCode::COLUMNS
            ),
            &[
                &pattern,
                &q.code_type,
                &q.batch_id,
                &page.after_time(),
                &page.after_id(),
                &page.fetch_limit(),
            ],
        )
        .await?;
    let items = rows
        .iter()
        .map(RedemptionCode::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page::from_rows(items, &page, |c| Cursor {
        created_at: c.created_at,
        id: c.code.replace('-', ""),
    })))
}

/// `PATCH /redemption-codes/{code}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RedemptionCodePatch)]
pub struct PatchCode {
    pub is_active: bool,
}

/// Activates or deactivates a code (audited as `redemption_code.updated`).
#[utoipa::path(
    patch,
    path = "/redemption-codes/{code}",
    tag = "redemption-codes",
    params(("code" = String, Path, description = "The code, any case, dashes optional")),
    request_body = PatchCode,
    responses(
        (status = 200, body = RedemptionCode),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)
    )
)]
async fn patch_code(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Path(code): Path<String>,
    Json(body): Json<PatchCode>,
) -> Result<Json<RedemptionCode>, ApiError> {
    let not_found = || ApiError::not_found("redemption code not found");
    let code = normalize_code(&code).ok_or_else(not_found)?;
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let sql = format!(
        "SELECT {} FROM redemption_codes WHERE code = $1 FOR UPDATE",
        RedemptionCode::COLUMNS
    );
    let before =
        RedemptionCode::from_row(&tx.query_opt(&sql, &[&code]).await?.ok_or_else(not_found)?)?;
    let row = tx
        .query_one(
            &format!(
                "UPDATE redemption_codes SET is_active = $2, updated_at = now() WHERE code = $1 \
                 RETURNING {}",
                RedemptionCode::COLUMNS
            ),
            &[&code, &body.is_active],
        )
        .await?;
    let after = RedemptionCode::from_row(&row)?;
    audit::record(
        &tx,
        &admin.audit(),
        "redemption_code.updated",
        "redemption_code",
        &code,
        audit::diff(&audit::snapshot(&before)?, &audit::snapshot(&after)?),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_follows_crockford() {
        assert_eq!(normalize_code("abcde-fghjk").as_deref(), Some("ABCDEFGHJK"));
        assert_eq!(normalize_code(" oil0 1 ").as_deref(), Some("01101"));
        assert_eq!(normalize_code("ABCDU"), None);
        assert_eq!(normalize_code("--"), None);
        assert_eq!(normalize_code("é"), None);
    }

    #[test]
    fn generated_codes_round_trip() {
        let code = generate_code(REDEMPTION_CODE_LEN);
        assert_eq!(code.len(), REDEMPTION_CODE_LEN);
        let shown = display_code(&code);
        assert_eq!(shown.len(), 11);
        assert_eq!(normalize_code(&shown.to_lowercase()), Some(code));
    }
}
