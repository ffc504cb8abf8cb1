//! The operations listener (`[proxy] health_listen`): `GET /healthz` (JSON) and `GET /metrics`
//! (Prometheus text). A small hyper server on the proxy's control runtime, apart from the
//! traffic listener so a scrape never competes with client requests.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use tokio::net::TcpListener;
use tokio::sync::watch;
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

/// Serve until `shutdown` turns true.
pub async fn serve(listener: TcpListener, state: HealthState, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            _ = wait_true(&mut shutdown) => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "health listener: accept failed");
                    continue;
                }
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "health listener: connection error");
            }
        });
    }
}
