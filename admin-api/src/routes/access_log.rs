//! `GET /api/admin/access-log`, `/access-log/tail` (Server-Sent Events) and
//! `/access-log/summary` over the proxies' Redis Stream (SPEC §5).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::{
    extract::{Path, State},
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
        export::{self, Format},
        query::Bounds,
        shards::{self, Cursor, MergedRequest, MergedWalk},
        summary::{self, Summary},
        tail::{self, TailRequest, TailSlots},
        FilterParams, Filters, Item, MAX_PAGE,
    },
};

/// The tail slots of one router, created on first use from the config.
#[derive(Debug, Clone, Default)]
struct Slots(Arc<OnceLock<TailSlots>>);

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_access_log))
        .routes(routes!(get_access_log_entry))
        .routes(routes!(get_access_log_by_request_id))
        .routes(routes!(export_access_log))
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
    /// Cursor, exclusive: only older entries (feed `next_cursor` here). A stream id, or when
    /// the log is sharded `<id>~<shard>` (a bare id then means that id in every shard).
    #[param(pattern = "^[0-9]+(-[0-9]+)?(~([0-9]+|-))?$")]
    pub before: Option<String>,
    /// Cursor, exclusive: only newer entries (an item's `id`, or `<id>~<shard>` when it has a
    /// `shard`).
    #[param(pattern = "^[0-9]+(-[0-9]+)?(~([0-9]+|-))?$")]
    pub since: Option<String>,
    /// Start of a time range, inclusive: RFC 3339 (`2026-12-01T10:00:00Z`) or milliseconds
    /// since the Unix epoch. Compared with the stream id's millisecond (when Redis appended
    /// the entry).
    pub from: Option<String>,
    /// End of a time range, exclusive: RFC 3339 or milliseconds since the Unix epoch.
    pub to: Option<String>,
    /// HTTP method, case-insensitive.
    pub method: Option<String>,
    /// Path prefix, e.g. `/api/` (same as `path_prefix`; give one of them).
    pub path: Option<String>,
    /// Path prefix, e.g. `/api/`.
    pub path_prefix: Option<String>,
    /// Host, exact, case-insensitive (with `:port` if the client sent one).
    pub host: Option<String>,
    /// Request id (the `x-request-id` the proxy answered with), exact: at most one entry,
    /// found from the time in the id (a ULID) without a scan budget.
    pub request_id: Option<String>,
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
    /// Response status: a code 100..=599, or a class `1xx`..`5xx`.
    pub status: Option<String>,
    /// Gateway rule id (`rul_…`), exact: entries that rule decided or tagged.
    #[param(pattern = "^rul_[0-9A-HJKMNP-TV-Z]{26}$")]
    pub rule: Option<String>,
}

/// Query of `GET /api/admin/access-log/export`: the list's filters and time range, no paging.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `ndjson` (default) or `csv`.
    pub format: Option<String>,
    /// Start, inclusive: RFC 3339 or milliseconds since the Unix epoch (stream id time).
    pub from: Option<String>,
    /// End, exclusive: RFC 3339 or milliseconds since the Unix epoch.
    pub to: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub host: Option<String>,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub country: Option<String>,
    pub risk_min: Option<String>,
    pub ua_type: Option<String>,
    pub decision: Option<String>,
    /// A code 100..=599, or a class `1xx`..`5xx`.
    pub status: Option<String>,
    #[param(pattern = "^rul_[0-9A-HJKMNP-TV-Z]{26}$")]
    pub rule: Option<String>,
}

/// Query of `GET /api/admin/access-log/tail`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TailQuery {
    /// Stream id (`<id>~<shard>` when the log is sharded), exclusive: start after it instead
    /// of at the newest entry. A `Last-Event-ID` header (sent by reconnecting browsers) does the
    /// same.
    #[param(pattern = "^[0-9]+(-[0-9]+)?(~([0-9]+|-))?$")]
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
    /// Pass back as `before` (with the same filters and range) to continue exactly after this
    /// page; null when no older match is left in the range. A stream id, or `<id>~<shard>`
    /// when the log is sharded (pages are then ordered by id, then shard, newest first, and
    /// hold only entries older than the millisecond Redis's clock was in when the page was
    /// read, so that no later entry can sort among them). A page whose filters include an
    /// indexed one (`ip`, `country`, `status` other than 2xx, `decision` other than `allow`,
    /// `ua_type`, `risk_min` ≥ 0.5, `rule`) is always full unless it is the last. A page
    /// filtered only by unindexed ones (`method`, `path`, `host`, `risk_min` < 0.5, and the
    /// common `decision=allow`, `status=2xx` or an exact 2xx status) examines at most
    /// `[admin] access_log_scan_budget` entries and may be short (even empty) with a cursor.
    pub next_cursor: Option<String>,
}

/// The filters of [`AccessLogQuery`] and [`ExportQuery`], which carry the same filter fields
/// (two structs, because `deny_unknown_fields` does not combine with a flattened one).
macro_rules! list_filters {
    ($q:ident) => {
        path_filter($q.path, $q.path_prefix).and_then(|path| {
            Filters::parse(&FilterParams {
                method: $q.method,
                path,
                ip: $q.ip,
                country: $q.country,
                risk_min: $q.risk_min,
                ua_type: $q.ua_type,
                decision: $q.decision,
                status: $q.status,
                rule: $q.rule,
                host: $q.host,
                request_id: $q.request_id,
            })
        })
    };
}

/// Parses `from`/`to`: RFC 3339 or milliseconds since the Unix epoch.
fn parse_time(name: &str, raw: Option<&str>) -> Result<Option<u64>, ApiError> {
    let Some(v) = raw else { return Ok(None) };
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(ms) = v.parse::<u64>() {
            if ms <= MAX_TIME_MS {
                return Ok(Some(ms));
            }
        }
    } else if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        if let Ok(ms) = u64::try_from(t.timestamp_millis()) {
            return Ok(Some(ms));
        }
    }
    Err(ApiError::bad_request(format!(
        "{name} must be an RFC 3339 time (e.g. 2026-12-01T10:00:00Z) or milliseconds since the Unix epoch, not before 1970 (got {v:?})"
    )))
}

/// Latest accepted `from`/`to` (year 9999).
const MAX_TIME_MS: u64 = 253_402_300_799_999;

/// `path` and `path_prefix` are one filter.
fn path_filter(
    path: Option<String>,
    path_prefix: Option<String>,
) -> Result<Option<String>, ApiError> {
    match (path, path_prefix) {
        (Some(_), Some(_)) => Err(ApiError::bad_request("give path or path_prefix, not both")),
        (a, b) => Ok(a.or(b)),
    }
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
    let before = Cursor::param("before", q.before.as_deref())?;
    let since = Cursor::param("since", q.since.as_deref())?;
    let from = parse_time("from", q.from.as_deref())?;
    let to = parse_time("to", q.to.as_deref())?;
    let filters = list_filters!(q)?;
    let families = shards::families(&state).await?;
    if let Some(rid) = filters.request_id.clone() {
        // One request, one entry: a lookup, then the other filters. The cursors bound it by
        // id alone (a request id names one entry whichever shard holds it).
        let bounds = Bounds::new(before.map(|c| c.id), since.map(|c| c.id), from, to);
        let found = shards::by_request_id(&state, &families, &rid, bounds).await?;
        return Ok(Json(AccessLogPage {
            items: found
                .filter(|i| filters.matches(&i.entry))
                .into_iter()
                .collect(),
            next_cursor: None,
        }));
    }
    let request = MergedRequest {
        limit,
        before,
        since,
        from_ms: from,
        to_ms: to,
        filters,
        budget: state.config().admin.access_log_scan_budget,
    };
    let (items, next_cursor) = shards::page(&state, &families, &request).await?;
    Ok(Json(AccessLogPage { items, next_cursor }))
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
        Some(s) => Cursor::param("since", Some(s))?,
        None => Cursor::param("Last-Event-ID", last_event_id)?,
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
        host: None,
        request_id: None,
    })?;
    let admin_config = &state.config().admin;
    let slot = slots
        .0
        .get_or_init(|| TailSlots::new(admin_config.access_log_max_tails))
        .acquire()?;
    let request = TailRequest {
        families: shards::families(&state).await?,
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
    let families = shards::families(&state).await?;
    let max = state.config().admin.access_log_summary_max_entries;
    Ok(Json(
        summary::summarize(&state, &families, window, now_ms, max).await?,
    ))
}

/// One access-log entry by its stream id.
#[utoipa::path(
    get,
    path = "/access-log/{id}",
    tag = "access-log",
    params(("id" = String, Path, description = "Stream id, `<ms>-<seq>` (e.g. `1732000000000-0`); `<ms>` alone means `<ms>-0`. When the log is sharded, `<id>~<shard>` (e.g. `1732000000000-0~3`) names the entry of one shard; a bare id answers the one shard holding it, or 409 when several do.", pattern = "^[0-9]+(-[0-9]+)?(~([0-9]+|-))?$")),
    responses(
        (status = 200, body = Item),
        (status = 400, description = "Malformed id", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, description = "No such entry (never written, or trimmed)", body = ErrorEnvelope),
        (status = 409, description = "A bare id held by several shards: ask for `<id>~<shard>`", body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope)
    )
)]
async fn get_access_log_entry(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Path(id): Path<String>,
) -> Result<Json<Item>, ApiError> {
    let cursor =
        Cursor::param("id", Some(&id))?.ok_or_else(|| ApiError::bad_request("id is required"))?;
    let families = shards::families(&state).await?;
    shards::by_id(&state, &families, cursor)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no access-log entry {id}")))
}

/// The access-log entry of one request, by the request id the proxy answered with
/// (`x-request-id`). Proxy request ids are ULIDs: the entry is looked up from the time in the
/// id, so the answer is exact and quick however long the stream is.
#[utoipa::path(
    get,
    path = "/access-log/by-request-id/{request_id}",
    tag = "access-log",
    params(("request_id" = String, Path, description = "Request id, 1 to 128 printable characters")),
    responses(
        (status = 200, body = Item),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, description = "No entry with this request id (never written, or trimmed)", body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope)
    )
)]
async fn get_access_log_by_request_id(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Path(request_id): Path<String>,
) -> Result<Json<Item>, ApiError> {
    let filters = Filters::parse(&FilterParams {
        request_id: Some(request_id),
        ..Default::default()
    })?;
    let rid = filters.request_id.unwrap_or_default();
    let families = shards::families(&state).await?;
    shards::by_request_id(&state, &families, &rid, Bounds::default())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no access-log entry with request id {rid:?}")))
}

/// Every matching entry in the range, newest first, streamed as NDJSON (one entry per line, as
/// in the list) or CSV (a header row `id,ts,method,…` in stream field order, RFC 4180 quoting,
/// `reasons` comma-joined). The last line says how many entries were written:
/// `{"export":"end","count":N}` / `#count,N`. An export is complete only if its last line is
/// that trailer: one cut short ends with `{"export":"error","count":N,"error":{"code",
/// "message"}}` / `#error,<message>` instead (`UNAVAILABLE` when Redis failed, `UNAUTHORIZED` /
/// `FORBIDDEN` when the credential was withdrawn), and a broken connection ends with no trailer.
/// The caller's credential is checked again every 2 s, whether or not the client is reading:
/// once the API key or session is revoked, or the user is disabled or no longer a platform
/// admin, reading stops, chunks not yet sent are dropped and the error trailer ends the body.
/// Memory stays flat whatever the size; closing the connection stops the export. When `[archive] dir` is set, the export continues,
/// after the stream's oldest entry, with the archived entries older than it (newest first, same
/// filters and range, each entry once; the count includes them); a sharded log, each shard
/// below its own stream, merged by (id, shard), lines carrying `shard`.
/// No scan budget: every match is written. Counts as
/// one call against the admin rate limit.
#[utoipa::path(
    get,
    path = "/access-log/export",
    tag = "access-log",
    params(ExportQuery),
    responses(
        (status = 200, description = "NDJSON (`application/x-ndjson`) or CSV (`text/csv`) of entries, then a trailer", content_type = "application/x-ndjson"),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope)
    )
)]
async fn export_access_log(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let format = match q.format.as_deref() {
        None => Format::Ndjson,
        Some(f) => Format::parse(f).ok_or_else(|| {
            ApiError::bad_request(format!("format must be ndjson or csv (got {f:?})"))
        })?,
    };
    let from = parse_time("from", q.from.as_deref())?;
    let to = parse_time("to", q.to.as_deref())?;
    let filters = list_filters!(q)?;
    let bounds = Bounds::new(None, None, from, to);
    let mut families = shards::families(&state).await?;
    // Entries older than the streams come from the archive, when one is configured: each
    // shard's own directory, and shards only the archive still has are read too.
    let archive = {
        let dir = state.config().archive.dir.trim();
        (!dir.is_empty()).then(|| {
            let configured = watchpost_common::keys::access_families(
                state.keys(),
                state.config().access_log.shard_count(),
            );
            export::ArchivedEntries::new(dir, configured)
        })
    };
    if let Some(archive) = &archive {
        archive.add_archived_families(state.keys(), &mut families);
    }
    let older = archive.map(|a| Arc::new(a) as Arc<dyn export::OlderEntries>);
    // Planned before the response starts, so that Redis being down is a 503, not a cut body.
    let walk = MergedWalk::plan(&state, &families, bounds, filters).await?;
    let body = export::body(state, admin.0, walk, format, older);
    let mut response = axum::body::Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(format.content_type()),
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!(
        "attachment; filename=\"access-log.{}\"",
        format.extension()
    )) {
        headers.insert(axum::http::header::CONTENT_DISPOSITION, v);
    }
    headers.insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    Ok(response)
}
