//! Prometheus metrics of the admin API, served at `GET /metrics`.
//!
//! Each [`crate::AppState`] owns its own registry (nothing is registered globally), so several
//! servers can live in one process, as they do in the integration tests. Requests are counted
//! by their matched route template (`/api/admin/users/{id}`), never the raw path, so the number
//! of series stays bounded whatever clients send.

use std::{net::IpAddr, time::Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{header, HeaderValue},
    middleware::Next,
    response::{IntoResponse, Response},
};
use ipnet::IpNet;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::{
    auth::principal::{authenticate, require_admin},
    error::ApiError,
    extract::ClientAddr,
    state::AppState,
};

/// The path the metrics are served at (outside the OpenAPI document: it answers Prometheus
/// text, not JSON).
pub const METRICS_PATH: &str = "/metrics";

/// The `route` label of a request that matched no route.
const UNMATCHED: &str = "unmatched";

/// Every metric the admin API exports, under the `watchpost_admin_` namespace.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `http_requests_total{route, method, status}`.
    pub requests: IntCounterVec,
    /// `http_request_duration_seconds{route, method}`.
    pub request_duration: HistogramVec,
    /// `pg_pool_size`: connections the pool holds (set when scraped).
    pub pg_pool_size: IntGauge,
    /// `pg_pool_in_use`: connections handed out (set when scraped).
    pub pg_pool_in_use: IntGauge,
    /// `pg_pool_waiting`: callers waiting for a connection (set when scraped).
    pub pg_pool_waiting: IntGauge,
    /// `pg_pool_max_size`: `[postgres] pool_size`.
    pub pg_pool_max_size: IntGauge,
    /// `pg_pool_wait_seconds`: time to obtain a pooled connection.
    pub pg_pool_wait: Histogram,
    /// `pg_pool_errors_total`: failures to obtain a pooled connection.
    pub pg_pool_errors: IntCounter,
    /// `redis_errors_total`: Redis commands that failed or timed out.
    pub redis_errors: IntCounter,
    /// `throttle_hits_total{throttle}`: requests refused 429 by a throttle (`admin` is the
    /// per-admin limit, the others the public endpoints' per-client throttles).
    pub throttle_hits: IntCounterVec,
    /// `sign_in_failures_total{reason}`: failed sign-ins that reached the password check.
    pub sign_in_failures: IntCounterVec,
    /// `access_log_tails_open`: live tails currently open.
    pub tails_open: IntGauge,
    /// `access_log_exports_open`: access-log exports currently streaming.
    pub exports_open: IntGauge,
    /// `access_log_export_entries_read_total`: entries (or index ids) exports read from Redis;
    /// it stops rising when a client closes an export.
    pub export_entries_read: IntCounter,
    /// `gateway_config_version`: the current gateway config version (rules included), as
    /// last read from PostgreSQL.
    pub gateway_config_version: IntGauge,
    /// `gateway_rules`: the gateway rules in the published document (enabled and not expired
    /// when it was last written or checked).
    pub gateway_rules: IntGauge,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("watchpost_admin".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "Requests by matched route template, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time to answer a request, by matched route template and method",
            )
            .buckets(vec![
                0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["route", "method"],
        )?;
        let pg_pool_size = IntGauge::new("pg_pool_size", "PostgreSQL connections in the pool")?;
        let pg_pool_in_use = IntGauge::new(
            "pg_pool_in_use",
            "PostgreSQL connections handed out to requests",
        )?;
        let pg_pool_waiting = IntGauge::new(
            "pg_pool_waiting",
            "Callers waiting for a PostgreSQL connection",
        )?;
        let pg_pool_max_size = IntGauge::new(
            "pg_pool_max_size",
            "Most PostgreSQL connections the pool holds",
        )?;
        let pg_pool_wait = Histogram::with_opts(
            HistogramOpts::new(
                "pg_pool_wait_seconds",
                "Time to obtain a pooled PostgreSQL connection",
            )
            .buckets(vec![
                0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        let pg_pool_errors = IntCounter::new(
            "pg_pool_errors_total",
            "Failures to obtain a pooled PostgreSQL connection",
        )?;
        let redis_errors = IntCounter::new(
            "redis_errors_total",
            "Redis commands that failed or timed out",
        )?;
        let throttle_hits = IntCounterVec::new(
            Opts::new("throttle_hits_total", "Requests refused 429 by a throttle"),
            &["throttle"],
        )?;
        let sign_in_failures = IntCounterVec::new(
            Opts::new("sign_in_failures_total", "Failed sign-ins by reason"),
            &["reason"],
        )?;
        let tails_open = IntGauge::new("access_log_tails_open", "Live access-log tails open")?;
        let exports_open = IntGauge::new(
            "access_log_exports_open",
            "Access-log exports currently streaming",
        )?;
        let export_entries_read = IntCounter::new(
            "access_log_export_entries_read_total",
            "Entries (or index ids) read from Redis by access-log exports",
        )?;
        let gateway_config_version = IntGauge::new(
            "gateway_config_version",
            "Current gateway config version (rules included)",
        )?;
        let gateway_rules = IntGauge::new(
            "gateway_rules",
            "Gateway rules in the published config (enabled, not expired)",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(pg_pool_size.clone()))?;
        registry.register(Box::new(pg_pool_in_use.clone()))?;
        registry.register(Box::new(pg_pool_waiting.clone()))?;
        registry.register(Box::new(pg_pool_max_size.clone()))?;
        registry.register(Box::new(pg_pool_wait.clone()))?;
        registry.register(Box::new(pg_pool_errors.clone()))?;
        registry.register(Box::new(redis_errors.clone()))?;
        registry.register(Box::new(throttle_hits.clone()))?;
        registry.register(Box::new(sign_in_failures.clone()))?;
        registry.register(Box::new(tails_open.clone()))?;
        registry.register(Box::new(exports_open.clone()))?;
        registry.register(Box::new(export_entries_read.clone()))?;
        registry.register(Box::new(gateway_config_version.clone()))?;
        registry.register(Box::new(gateway_rules.clone()))?;
        // Export the labelled series from the start, at 0, so that alert expressions over
        // `rate()` see a first sample before the first event.
        for t in crate::rate_limit::THROTTLE_LABELS {
            throttle_hits.with_label_values(&[t]);
        }
        for reason in SIGN_IN_FAILURE_REASONS {
            sign_in_failures.with_label_values(&[reason]);
        }
        Ok(Self {
            registry,
            requests,
            request_duration,
            pg_pool_size,
            pg_pool_in_use,
            pg_pool_waiting,
            pg_pool_max_size,
            pg_pool_wait,
            pg_pool_errors,
            redis_errors,
            throttle_hits,
            sign_in_failures,
            tails_open,
            exports_open,
            export_entries_read,
            gateway_config_version,
            gateway_rules,
        })
    }

    /// Counts one refusal by `throttle`.
    pub fn throttled(&self, throttle: &str) {
        self.throttle_hits.with_label_values(&[throttle]).inc();
    }

    /// Counts one failed sign-in.
    pub fn sign_in_failed(&self, reason: &str) {
        self.sign_in_failures.with_label_values(&[reason]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on malformed metric families, which ours cannot be.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The `reason` values of `sign_in_failures_total`, as recorded in `sign_in_events`.
pub const SIGN_IN_FAILURE_REASONS: [&str; 3] =
    ["bad_credentials", "user_disabled", "organization_disabled"];

/// An open-tail count that goes down when the tail ends, however it ends.
pub struct OpenTail(IntGauge);

impl OpenTail {
    /// Counts a tail as open until the returned guard is dropped.
    pub fn open(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenTail {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Middleware: counts every request by its matched route template, method and status, and
/// observes its duration.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| UNMATCHED.to_owned());
    let method = request.method().clone();
    let response = next.run(request).await;
    let metrics = state.metrics();
    let method = method_label(&method);
    metrics
        .requests
        .with_label_values(&[&route, method, response.status().as_str()])
        .inc();
    metrics
        .request_duration
        .with_label_values(&[&route, method])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Standard methods by name; anything else as `other` (a client chooses the method).
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `[admin] metrics_cidrs`, parsed (already validated; an entry that does not parse is left
/// out).
#[derive(Debug, Clone)]
pub struct MetricsAccess {
    cidrs: Vec<IpNet>,
}

impl MetricsAccess {
    /// The rule for `[admin] metrics_cidrs`.
    pub fn new(cidrs: &[String]) -> Self {
        Self {
            cidrs: cidrs
                .iter()
                .filter_map(|c| watchpost_common::gateway::parse_cidr(c))
                .collect(),
        }
    }

    /// Whether `ip` may scrape without a token.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.cidrs.iter().any(|n| n.contains(&ip))
    }
}

/// `GET /metrics`: the Prometheus text exposition. Without a token only from a client IP in
/// `[admin] metrics_cidrs` (403 otherwise); with a bearer token of a platform admin from
/// anywhere (401 for a bad token, 403 for a non-admin).
pub async fn serve(State(state): State<AppState>, request: Request) -> Response {
    let (parts, _body) = request.into_parts();
    let from_allowed = parts
        .extensions
        .get::<ClientAddr>()
        .is_some_and(|ClientAddr(ip)| state.metrics_access().allows(*ip));
    if !from_allowed {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return ApiError::forbidden(
                "metrics are served without a token only to [admin] metrics_cidrs",
            )
            .into_response();
        }
        let principal = match authenticate(&state, &parts).await {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        if let Err(e) = require_admin(&principal) {
            return e.into_response();
        }
    }
    let metrics = state.metrics();
    let status = state.pool().status();
    metrics
        .pg_pool_size
        .set(i64::try_from(status.size).unwrap_or(i64::MAX));
    metrics
        .pg_pool_in_use
        .set(i64::try_from(status.size.saturating_sub(status.available)).unwrap_or(i64::MAX));
    metrics
        .pg_pool_waiting
        .set(i64::try_from(status.waiting).unwrap_or(i64::MAX));
    metrics
        .pg_pool_max_size
        .set(i64::try_from(status.max_size).unwrap_or(i64::MAX));
    let mut response = metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_registries_count_apart_and_export_labels_from_the_start() {
        let a = Metrics::new().expect("first");
        let b = Metrics::new().expect("second");
        a.throttled("sign_in");
        let text = a.render();
        assert!(
            text.contains("watchpost_admin_throttle_hits_total{throttle=\"sign_in\"} 1"),
            "{text}"
        );
        let other = b.render();
        assert!(
            other.contains("watchpost_admin_throttle_hits_total{throttle=\"sign_in\"} 0"),
            "{other}"
        );
        assert!(
            other.contains("watchpost_admin_sign_in_failures_total{reason=\"bad_credentials\"} 0"),
            "{other}"
        );
    }

    #[test]
    fn metrics_access_by_cidr() {
        let access = MetricsAccess::new(&["127.0.0.0/8".into(), "::1/128".into()]);
        assert!(access.allows("127.0.0.1".parse().expect("ip")));
        assert!(access.allows("::1".parse().expect("ip")));
        assert!(!access.allows("10.0.0.1".parse().expect("ip")));
        assert!(!MetricsAccess::new(&[]).allows("127.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn open_tails_go_down_when_dropped() {
        let m = Metrics::new().expect("metrics");
        let tail = OpenTail::open(&m.tails_open);
        assert_eq!(m.tails_open.get(), 1);
        drop(tail);
        assert_eq!(m.tails_open.get(), 0);
    }
}
