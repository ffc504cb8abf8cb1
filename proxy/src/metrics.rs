//! Prometheus metrics. Each proxy instance owns its own registry (no global registration), so
//! several instances can live in one process, as they do in the integration tests.

use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use watchpost_common::Decision;

/// Every metric the proxy exports, under the `watchpost_proxy_` namespace.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `requests_total{decision, status_class}`.
    pub requests: IntCounterVec,
    /// `risk_score`: the score of every request.
    pub risk_score: Histogram,
    /// `request_duration_seconds{decision}`: from the request head to the end of the response.
    pub request_duration: HistogramVec,
    /// `access_log_written_total`: entries Redis acknowledged.
    pub log_written: IntCounter,
    /// `access_log_dropped_total`: entries lost (buffer full, Redis down or refusing).
    pub log_dropped: IntCounter,
    /// `access_log_buffer_depth`: entries waiting in memory (set when scraped).
    pub log_buffer_depth: IntGauge,
    /// `gateway_config_version`: the applied config version.
    pub config_version: IntGauge,
    /// `gateway_config_refused_total`: configs from Redis refused as invalid.
    pub config_refused: IntCounter,
    /// `upstream_errors_total{kind}`: `connect`, `timeout`, `no_healthy_upstream`, `tls`, `other`.
    pub upstream_errors: IntCounterVec,
    /// `upstreams_healthy`: upstreams passing their health check (set when scraped).
    pub upstreams_healthy: IntGauge,
    /// `redis_up`: 1 when the last Redis operation succeeded.
    pub redis_up: IntGauge,
    /// `access_log_oldest_entry_age_seconds`: age of the oldest entry the writer holds
    /// unwritten (0 when none; set when scraped).
    pub log_oldest_age: Gauge,
    /// `access_log_write_errors_total{kind}`: failed access-log writes to Redis (the batch's
    /// `XADD` script, or the read of its sequence's high-water mark) by [`WriteErrorKind`].
    pub log_write_errors: IntCounterVec,
    /// `gateway_config_source{source}`: 1 for the source of the applied config (`redis`,
    /// `cache` or `file`), 0 for the others (set when scraped).
    pub config_source: IntGaugeVec,
    /// `tls_cert_expiry_seconds{cert}`: each served certificate's `notAfter` (unix seconds),
    /// labelled with its certificate file.
    pub tls_cert_expiry: IntGaugeVec,
    /// `tls_cert_reload_failures_total`: replaced certificate files refused as invalid (the
    /// previous pair kept serving).
    pub tls_reload_failures: IntCounter,
    /// `rule_hits_total{rule, action}`: requests a gateway rule decided or tagged (counted
    /// when the hits are flushed, every second; series of rules gone from the config are
    /// dropped).
    pub rule_hits: IntCounterVec,
    /// `rule_hits_flush_errors_total`: failed writes of rule hit counts to Redis.
    pub rule_hits_flush_errors: IntCounter,
    /// The children of `requests_total` and `request_duration_seconds`, resolved once.
    outcomes: Arc<Outcomes>,
}

/// Every label set of the per-request metrics, looked up at start so that the request path
/// only increments (a label lookup hashes the values and takes a lock). Their series are
/// exported from the start, at 0.
struct Outcomes {
    /// `[decision][status class]`.
    requests: [[IntCounter; STATUS_CLASSES.len()]; 3],
    /// `[decision]`.
    durations: [Histogram; 3],
    /// `[WriteErrorKind as usize]`.
    write_errors: [IntCounter; WRITE_ERROR_KINDS.len()],
}

/// Why an access-log batch write failed, for `access_log_write_errors_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteErrorKind {
    /// No answer within the write timeout.
    Timeout = 0,
    /// The connection could not be made or broke.
    Connection = 1,
    /// Redis refused the write for lack of memory (the batch is dropped).
    Oom = 2,
    /// Anything else Redis answered with.
    Other = 3,
}

/// The `kind` label values, in [`WriteErrorKind`] order.
const WRITE_ERROR_KINDS: [&str; 4] = ["timeout", "connection", "oom", "other"];

impl WriteErrorKind {
    /// The `kind` label value.
    pub fn as_str(self) -> &'static str {
        WRITE_ERROR_KINDS[self as usize]
    }
}

/// The `source` label values of `gateway_config_source`.
const CONFIG_SOURCES: [&str; 3] = ["redis", "cache", "file"];

/// The `status_class` label values, in [`status_class_index`] order.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("watchpost_proxy".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests by decision and status class"),
            &["decision", "status_class"],
        )?;
        let risk_score = Histogram::with_opts(
            HistogramOpts::new("risk_score", "Risk score of each request").buckets(vec![
                0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0,
            ]),
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from request head to the end of the response",
            )
            .buckets(vec![
                0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                2.5, 10.0,
            ]),
            &["decision"],
        )?;
        let log_written = IntCounter::new(
            "access_log_written_total",
            "Access-log entries written to the Redis stream",
        )?;
        let log_dropped = IntCounter::new(
            "access_log_dropped_total",
            "Access-log entries dropped (buffer full or Redis unavailable)",
        )?;
        let log_buffer_depth = IntGauge::new(
            "access_log_buffer_depth",
            "Access-log entries waiting in memory",
        )?;
        let config_version = IntGauge::new(
            "gateway_config_version",
            "Version of the applied gateway config",
        )?;
        let config_refused = IntCounter::new(
            "gateway_config_refused_total",
            "Gateway configs from Redis refused as invalid",
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new("upstream_errors_total", "Failed upstream requests by kind"),
            &["kind"],
        )?;
        let upstreams_healthy =
            IntGauge::new("upstreams_healthy", "Upstreams passing their health check")?;
        let redis_up = IntGauge::new("redis_up", "1 when the last Redis operation succeeded")?;
        let log_oldest_age = Gauge::new(
            "access_log_oldest_entry_age_seconds",
            "Age of the oldest access-log entry held unwritten (0 when none)",
        )?;
        let log_write_errors = IntCounterVec::new(
            Opts::new(
                "access_log_write_errors_total",
                "Failed access-log batch writes to Redis by kind",
            ),
            &["kind"],
        )?;
        let config_source = IntGaugeVec::new(
            Opts::new(
                "gateway_config_source",
                "1 for the source of the applied gateway config (redis, cache or file)",
            ),
            &["source"],
        )?;
        let rule_hits = IntCounterVec::new(
            Opts::new(
                "rule_hits_total",
                "Requests a gateway rule decided or tagged, by rule id and action",
            ),
            &["rule", "action"],
        )?;
        let rule_hits_flush_errors = IntCounter::new(
            "rule_hits_flush_errors_total",
            "Failed writes of gateway rule hit counts to Redis",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(rule_hits.clone()))?;
        registry.register(Box::new(rule_hits_flush_errors.clone()))?;
        registry.register(Box::new(risk_score.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(log_written.clone()))?;
        registry.register(Box::new(log_dropped.clone()))?;
        registry.register(Box::new(log_buffer_depth.clone()))?;
        registry.register(Box::new(config_version.clone()))?;
        registry.register(Box::new(config_refused.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(upstreams_healthy.clone()))?;
        registry.register(Box::new(redis_up.clone()))?;
        registry.register(Box::new(log_oldest_age.clone()))?;
        registry.register(Box::new(log_write_errors.clone()))?;
        registry.register(Box::new(config_source.clone()))?;
        let tls_cert_expiry = IntGaugeVec::new(
            Opts::new(
                "tls_cert_expiry_seconds",
                "notAfter of each served TLS certificate, unix seconds",
            ),
            &["cert"],
        )?;
        let tls_reload_failures = IntCounter::new(
            "tls_cert_reload_failures_total",
            "Replaced TLS certificate files refused as invalid (the previous pair kept)",
        )?;
        registry.register(Box::new(tls_cert_expiry.clone()))?;
        registry.register(Box::new(tls_reload_failures.clone()))?;
        let decisions = [Decision::Allow, Decision::Reject, Decision::Flag];
        let outcomes = Arc::new(Outcomes {
            requests: decisions
                .map(|d| STATUS_CLASSES.map(|c| requests.with_label_values(&[d.as_str(), c]))),
            durations: decisions.map(|d| request_duration.with_label_values(&[d.as_str()])),
            write_errors: WRITE_ERROR_KINDS.map(|k| log_write_errors.with_label_values(&[k])),
        });
        for kind in ["connect", "timeout", "no_healthy_upstream", "tls", "other"] {
            upstream_errors.with_label_values(&[kind]);
        }
        for source in CONFIG_SOURCES {
            config_source.with_label_values(&[source]);
        }
        Ok(Self {
            registry,
            requests,
            risk_score,
            request_duration,
            log_written,
            log_dropped,
            log_buffer_depth,
            config_version,
            config_refused,
            upstream_errors,
            upstreams_healthy,
            redis_up,
            log_oldest_age,
            log_write_errors,
            config_source,
            tls_cert_expiry,
            tls_reload_failures,
            rule_hits,
            rule_hits_flush_errors,
            outcomes,
        })
    }

    /// Count one failed access-log batch write.
    pub fn log_write_error(&self, kind: WriteErrorKind) {
        self.outcomes.write_errors[kind as usize].inc();
    }

    /// Mark `source` (`redis`, `cache` or `file`) as the applied config's source.
    pub fn set_config_source(&self, source: &str) {
        for s in CONFIG_SOURCES {
            self.config_source
                .with_label_values(&[s])
                .set(i64::from(s == source));
        }
    }

    /// Count one finished request and its duration.
    pub fn observe_request(&self, decision: Decision, status: u16, seconds: f64) {
        let d = match decision {
            Decision::Allow => 0,
            Decision::Reject => 1,
            Decision::Flag => 2,
        };
        self.outcomes.requests[d][status_class_index(status)].inc();
        self.outcomes.durations[d].observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on metric families that are malformed, which ours
        // cannot be; an empty page is the harmless answer if it ever happens.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// `2xx`, `4xx`, … for a status code; `none` when no response was sent.
pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_class_index(status)]
}

fn status_class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_instances_do_not_collide_and_render() {
        let a = Metrics::new().expect("first");
        let b = Metrics::new().expect("second");
        a.requests.with_label_values(&["allow", "2xx"]).inc();
        a.risk_score.observe(0.42);
        let text = a.render();
        assert!(
            text.contains(
                "watchpost_proxy_requests_total{decision=\"allow\",status_class=\"2xx\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("watchpost_proxy_risk_score_bucket"), "{text}");
        // Every label set is exported from the start, at 0, and instances count apart.
        a.observe_request(Decision::Reject, 403, 0.001);
        let text = a.render();
        assert!(
            text.contains(
                "watchpost_proxy_requests_total{decision=\"reject\",status_class=\"4xx\"} 1"
            ),
            "{text}"
        );
        a.observe_request(Decision::Flag, 200, 0.001);
        assert!(a
            .render()
            .contains("watchpost_proxy_requests_total{decision=\"flag\",status_class=\"2xx\"} 1"));
        let other = b.render();
        for (d, c) in [
            ("allow", "2xx"),
            ("reject", "4xx"),
            ("reject", "none"),
            ("flag", "2xx"),
        ] {
            let line = format!(
                "watchpost_proxy_requests_total{{decision=\"{d}\",status_class=\"{c}\"}} 0"
            );
            assert!(other.contains(&line), "{line} in {other}");
        }
        assert!(
            other.contains("watchpost_proxy_request_duration_seconds_count{decision=\"reject\"} 0")
        );
    }

    #[test]
    fn status_classes() {
        for (s, c) in [
            (0, "none"),
            (101, "1xx"),
            (200, "2xx"),
            (304, "3xx"),
            (403, "4xx"),
            (502, "5xx"),
            (600, "none"),
        ] {
            assert_eq!(status_class(s), c, "{s}");
        }
    }
}
