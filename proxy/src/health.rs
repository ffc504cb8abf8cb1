//! The operations listener (`[proxy] health_listen`): `GET /healthz` (JSON) and `GET /metrics`
//! (Prometheus text). A small hyper server on the proxy's control runtime, apart from the
//! traffic listener so a scrape never competes with client requests.
//!
//! Hardened so that a hostile or broken client cannot take it away from the monitoring that
//! depends on it: a client gets `health_header_read_timeout_ms` to send its request head and
//! the whole connection (one request, no keep-alive) ends by twice that; at most
//! `health_max_connections` are open at once and further ones are closed as soon as they are
//! accepted; a failing `accept` (out of file descriptors) backs off from 5 ms doubling to 1 s
//! instead of spinning.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use watchpost_geo::GeoDb;

use crate::access_log::{wait_true, LogSink, RedisStatus};
use crate::live_config::LiveConfig;
use crate::metrics::Metrics;

/// What the endpoints report on.
#[derive(Clone)]
pub struct HealthState {
    /// The applied gateway config.
    pub live: Arc<LiveConfig>,
    /// The instance's metrics.
    pub metrics: Metrics,
    /// The access-log buffer (for its depth).
    pub log: LogSink,
    /// Whether Redis answered last time.
    pub redis: Arc<RedisStatus>,
    /// Upstreams and their health.
    pub upstreams: Arc<LoadBalancer<RoundRobin>>,
    /// The GeoIP database.
    pub geo: Arc<GeoDb>,
    /// `proxy.proxy_id`.
    pub proxy_id: Arc<str>,
}

impl HealthState {
    /// Refresh the gauges that are only computed on demand.
    fn refresh(&self) -> (usize, usize) {
        let backends = self.upstreams.backends().get_backend();
        let healthy = backends
            .iter()
            .filter(|b| self.upstreams.backends().ready(b))
            .count();
        self.metrics.upstreams_healthy.set(healthy as i64);
        self.metrics.log_buffer_depth.set(self.log.depth() as i64);
        self.metrics
            .log_oldest_age
            .set(self.log.oldest_age_secs(crate::gateway::now_ms()));
        self.metrics.set_config_source(self.live.source().as_str());
        (healthy, backends.len())
    }

    /// The `/healthz` document.
    pub fn healthz(&self) -> serde_json::Value {
        let (healthy, total) = self.refresh();
        let config = self.live.current();
        serde_json::json!({
            "status": "ok",
            "proxy_id": &*self.proxy_id,
            "config_version": config.version,
            "config_source": self.live.source().as_str(),
            "ip_mode": config.ip_mode.as_str(),
            "risk_reject_threshold": config.risk_reject_threshold,
            "redis": if self.redis.is_up() { "up" } else { "down" },
            "log_written": self.metrics.log_written.get(),
            "log_dropped": self.metrics.log_dropped.get(),
            "buffer_depth": self.log.depth(),
            "buffer_bytes": self.log.bytes(),
            "upstreams_healthy": healthy,
            "upstreams_total": total,
            "geo": if self.geo.info().is_some() { "enabled" } else { "disabled" },
        })
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

async fn handle(state: HealthState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => respond(
            StatusCode::OK,
            "application/json",
            state.healthz().to_string(),
        ),
        (&Method::GET, "/metrics") => {
            state.refresh();
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                state.metrics.render(),
            )
        }
        (_, "/healthz" | "/metrics") => respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "application/json",
            r#"{"error":{"code":"METHOD_NOT_ALLOWED","message":"use GET"}}"#.into(),
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":{"code":"NOT_FOUND","message":"try /healthz or /metrics"}}"#.into(),
        ),
    }
}

/// Limits of the operations listener (`[proxy] health_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthLimits {
    /// Time a client gets to send a complete request head.
    pub header_read_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// First pause after a failed `accept`.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause between `accept` attempts while they keep failing.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The pause after consecutive `accept` failures: doubling from [`ACCEPT_BACKOFF_MIN`] to
/// [`ACCEPT_BACKOFF_MAX`], back to the start after a success.
#[derive(Debug)]
struct AcceptBackoff {
    next: Duration,
}

impl AcceptBackoff {
    fn new() -> Self {
        Self {
            next: ACCEPT_BACKOFF_MIN,
        }
    }

    fn failed(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(ACCEPT_BACKOFF_MAX);
        pause
    }

    fn succeeded(&mut self) {
        self.next = ACCEPT_BACKOFF_MIN;
    }
}

/// Serve until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: HealthState,
    limits: HealthLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = AcceptBackoff::new();
    // One request per connection, so a connection's whole life is bounded.
    let lifetime = limits.header_read_timeout * 2;
    loop {
        let (stream, _) = tokio::select! {
            _ = wait_true(&mut shutdown) => return,
            r = listener.accept() => match r {
                Ok(s) => {
                    backoff.succeeded();
                    s
                }
                Err(e) => {
                    let pause = backoff.failed();
                    tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "health listener: accept failed");
                    tokio::select! {
                        _ = wait_true(&mut shutdown) => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Full: closing at once costs nothing and tells the client to go away.
            tracing::debug!(
                max_connections = limits.max_connections,
                "health listener: connection limit reached; closing a new connection"
            );
            drop(stream);
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(false);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            match tokio::time::timeout(lifetime, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "health listener: connection error"),
                Err(_) => tracing::debug!("health listener: connection outlived its deadline"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_back_off_doubling_to_a_cap_and_reset() {
        let mut b = AcceptBackoff::new();
        let pauses: Vec<u64> = (0..10).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(), ACCEPT_BACKOFF_MIN);
    }
}
