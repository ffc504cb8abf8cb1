//! `GET /api/admin/access-log`, `/access-log/tail` (Server-Sent Events) and
//! `/access-log/summary` over the proxies' Redis Stream (SPEC §5).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::{
    extract::State,
    http::HeaderMap,
    response::{
        sse::{KeepAlive, Sse},
        IntoResponse, Response,
    },
    Extension,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::PlatformAdmin,
    error::{ApiError, ErrorEnvelope},
    extract::{Json, Query},
    state::AppState,
    stream::{
        query::{self, PageRequest},
        summary::{self, Summary},
        tail::{self, TailRequest, TailSlots},
        FilterParams, Filters, Item, StreamId, MAX_PAGE,
    },
};

/// The tail slots of one router, created on first use from the config.
#[derive(Debug, Clone, Default)]
struct Slots(Arc<OnceLock<TailSlots>>);

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_access_log))
        .routes(routes!(tail_access_log))
        .routes(routes!(summarize_access_log))
        .layer(Extension(Slots::default()))
}

/// Default page size.
const DEFAULT_LIMIT: usize = 50;

/// Query of `GET /api/admin/access-log`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AccessLogQuery {
    /// Items per page, default 50, at most 500.
    pub limit: Option<String>,
    /// Stream id, exclusive: only older entries (feed `next_cursor` here).
    pub before: Option<String>,
    /// Stream id, exclusive: only newer entries.
    pub since: Option<String>,
    /// HTTP method, case-insensitive.
    pub method: Option<String>,
    /// Path prefix, e.g. `/api/`.
    pub path: Option<String>,
    /// Client IP, exact.
    pub ip: Option<String>,
    /// ISO alpha-2 country code, case-insensitive.
    pub country: Option<String>,
    /// Smallest risk score, 0..=1.
    pub risk_min: Option<String>,
    /// `browser`, `bot`, `cli`, `library`, `empty` or `unknown`.
    pub ua_type: Option<String>,
    /// `allow`, `reject` or `flag` (would have been rejected; `risk_mode` = `log_only`).
    pub decision: Option<String>,
    /// Response status, 100..=599.
    pub status: Option<String>,
    /// Gateway rule id (`rul_…`), exact: entries that rule decided or tagged.
    #[param(pattern = "^rul_[0-9A-HJKMNP-TV-Z]{26}$")]
    pub rule: Option<String>,
}

/// Query of `GET /api/admin/access-log/tail`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TailQuery {
    /// Stream id, exclusive: start after it instead of at the newest entry. A
    /// `Last-Event-ID` header (sent by reconnecting browsers) does the same.
    pub since: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub ip: Option<String>,
    pub country: Option<String>,
    pub risk_min: Option<String>,
    pub ua_type: Option<String>,
    pub decision: Option<String>,
    pub status: Option<String>,
    /// Gateway rule id (`rul_…`), exact.
    #[param(pattern = "^rul_[0-9A-HJKMNP-TV-Z]{26}$")]
    pub rule: Option<String>,
}

/// Query of `GET /api/admin/access-log/summary`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SummaryQuery {
    /// `30s`, `15m`, `1h`, `24h`, `7d`… (1 s to 7 d). Default `15m`.
    pub window: Option<String>,
}

/// A page of the access log, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessLogPage {
    pub items: Vec<Item>,
    /// Pass back as `before` to continue exactly after this page; null when nothing older is
    /// left (or the `since` bound was reached). A filtered page may be short (even empty)
    /// with a cursor: it examined its share of entries and stopped.
    pub next_cursor: Option<String>,
}

fn parse_limit(raw: Option<&str>) -> Result<usize, ApiError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit must be an integer between 1 and {MAX_PAGE}"))
            }),
    }
}

/// Access-log entries, newest first, with cursor paging and filters.
#[utoipa::path(
    get,
    path = "/access-log",
    tag = "access-log",
    params(AccessLogQuery),
    responses(
        (status = 200, body = AccessLogPage),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope)
    )
)]
async fn list_access_log(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Query(q): Query<AccessLogQuery>,
) -> Result<Json<AccessLogPage>, ApiError> {
    let limit = parse_limit(q.limit.as_deref())?;
    let before = StreamId::param("before", q.before.as_deref())?;
    let since = StreamId::param("since", q.since.as_deref())?;
    let filters = Filters::parse(&FilterParams {
        method: q.method,
        path: q.path,
        ip: q.ip,
        country: q.country,
        risk_min: q.risk_min,
        ua_type: q.ua_type,
        decision: q.decision,
        status: q.status,
        rule: q.rule,
    })?;
    let request = PageRequest {
        limit,
        before,
        since,
        filters,
        budget: state.config().admin.access_log_scan_budget,
    };
    let key = state.keys().access_stream();
    let page = query::page(&state, &key, &request).await?;
    Ok(Json(AccessLogPage {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

/// New access-log entries as Server-Sent Events (`event: entry`, `id: <stream id>`, data: the
/// entry as in the list), with the list's filters, from now or after `since`. Heartbeat
/// comments keep idle connections open. If Redis fails mid-stream, one `event: error` is sent
/// and the stream ends; reconnecting with `Last-Event-ID` resumes without a gap. The caller's
/// credential is checked again every 2 s: once it is revoked, or the user is disabled or no
/// longer a platform admin, an `event: error` (`UNAUTHORIZED` / `FORBIDDEN`) is sent and the
/// stream ends.
#[utoipa::path(
    get,
    path = "/access-log/tail",
    tag = "access-log",
    params(TailQuery),
    responses(
        (status = 200, description = "text/event-stream of entries", content_type = "text/event-stream"),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope)
    )
)]
async fn tail_access_log(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Extension(slots): Extension<Slots>,
    headers: HeaderMap,
    Query(q): Query<TailQuery>,
) -> Result<Response, ApiError> {
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let since = match q.since.as_deref() {
        Some(s) => StreamId::param("since", Some(s))?,
        None => StreamId::param("Last-Event-ID", last_event_id)?,
    };
    let filters = Filters::parse(&FilterParams {
        method: q.method,
        path: q.path,
        ip: q.ip,
        country: q.country,
        risk_min: q.risk_min,
        ua_type: q.ua_type,
        decision: q.decision,
        status: q.status,
        rule: q.rule,
    })?;
    let admin_config = &state.config().admin;
    let slot = slots
        .0
        .get_or_init(|| TailSlots::new(admin_config.access_log_max_tails))
        .acquire()?;
    let request = TailRequest {
        key: state.keys().access_stream(),
        since,
        filters,
        block: Duration::from_millis(admin_config.access_log_tail_block_ms),
        principal: admin.0,
    };
    let events = tail::open(&state, request, slot).await?;
    let keep_alive = KeepAlive::new()
        .interval(Duration::from_secs(
            admin_config.access_log_tail_heartbeat_secs,
        ))
        .text("heartbeat");
    let mut response = Sse::new(events).keep_alive(keep_alive).into_response();
    // Ask reverse proxies in front of the API not to buffer the stream.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    Ok(response)
}

/// Totals over a time window. Windows up to 15 min are scanned from the stream (at most
/// `[admin] access_log_summary_max_entries` entries; `truncated` says when the window held
/// more); longer windows, and short ones whose scan was truncated or reached trimmed entries,
/// are summed from the per-minute rollups (whole minutes, beyond the raw stream's retention).
/// `source` says which (`scan` or `rollups`).
#[utoipa::path(
    get,
    path = "/access-log/summary",
    tag = "access-log",
    params(SummaryQuery),
    responses(
        (status = 200, body = Summary),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope)
    )
)]
async fn summarize_access_log(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Query(q): Query<SummaryQuery>,
) -> Result<Json<Summary>, ApiError> {
    let raw = q.window.as_deref().unwrap_or("15m");
    let window = summary::parse_window(raw).ok_or_else(|| {
        ApiError::bad_request(format!(
            "window must be a duration like 30s, 15m, 1h or 24h, at most 7d (got {raw:?})"
        ))
    })?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let keys = state.keys().clone();
    let max = state.config().admin.access_log_summary_max_entries;
    Ok(Json(
        summary::summarize(&state, &keys, window, now_ms, max).await?,
    ))
}
