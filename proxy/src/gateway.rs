//! The request lifecycle: one method per Pingora phase (see the phase chart in the README).
//!
//! - `request_filter`: take the gateway config for this request, decide the client IP and its
//!   country, apply the config's gateway rules (`block` answers 403, `rate_limit` past its
//!   rate 429 with `Retry-After`, `allow` skips scoring, `log_only` only tags; see
//!   [`crate::rules`]), then count the request rate, score the request with the risk engine of that config (its
//!   `risk` settings, else the file's `[risk]`), and either answer 403 (the upstream is never
//!   contacted) or let it through; with `risk_mode = log_only` a request that would be
//!   rejected is let through and logged with `decision=flag`. Request header fields larger than `[proxy]
//!   max_header_bytes` in total are answered 431 first, before any header is interpreted
//!   (logged with the peer as client and `decision=reject`). The `Connection` header is sanitised here, before Pingora
//!   builds the upstream request from it.
//!   A `Content-Length` above `[proxy] max_body_bytes` is answered 413 here.
//! - `request_body_filter`: count a streamed body against `max_body_bytes`; past it, 413.
//! - `upstream_peer`: the next healthy upstream, round-robin (over verified TLS with
//!   `upstream_tls`).
//! - `upstream_request_filter`: remove incoming copies of the proxy's headers and forged
//!   forwarding metadata, set ours.
//! - `response_filter`: add `X-Request-Id` to the response; on a `101` (WebSocket upgrade) log
//!   the entry now, once, rather than when the upgraded connection ends.
//! - `fail_to_connect` / `fail_to_proxy`: retry another upstream when one refuses; map
//!   failures to deliberate statuses (502, 504) with a JSON error body.
//! - `logging`: enqueue the access-log entry (never waits) and count metrics.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::modules::http::HttpModules;
use pingora::prelude::{HttpPeer, RequestHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};
use pingora_limits::rate::Rate;
use watchpost_common::client_ip::{normalize_ip, resolve_with_forwarded_for};
use watchpost_common::rules::RuleRequest;
use watchpost_common::{AccessLogEntry, ClientIp, Decision, GatewayConfig, IpSource, RiskMode};
use watchpost_geo::GeoDb;
use watchpost_risk::{classify_ua_bytes, RequestFacts, RiskEngine, UaType};

use crate::access_log::LogSink;
use crate::headers::{self, plan_connection, plan_forwarding};
use crate::live_config::LiveConfig;
use crate::metrics::Metrics;
use crate::rules::{client_key, RuleRuntime, Verdict};

/// Longest `path` and `query` kept in an access-log entry.
const MAX_PATH_BYTES: usize = 2048;
/// Longest `ua` kept in an access-log entry.
const MAX_UA_BYTES: usize = 512;
/// Longest `host` kept in an access-log entry.
const MAX_HOST_BYTES: usize = 255;
/// Count-min sketch size of the per-client rate estimator: enough columns that thousands of
/// concurrently active clients rarely share a cell (collisions only ever inflate a count).
const RATE_HASHES: usize = 4;
const RATE_SLOTS: usize = 65_536;
/// `[proxy] max_header_bytes` unless set otherwise.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32_768;

/// Everything the phases share; one per proxy instance.
pub struct Gateway {
    live: Arc<LiveConfig>,
    geo: Arc<GeoDb>,
    /// The file's `[risk]` engine, replaced on reload.
    risk: Arc<ArcSwap<RiskEngine>>,
    upstreams: Arc<LoadBalancer<RoundRobin>>,
    log: LogSink,
    metrics: Metrics,
    proxy_id: Arc<str>,
    connect_timeout: Duration,
    read_timeout: Duration,
    rate: ArcSwap<RateWindow>,
    /// Held only while a new rate window is built.
    rate_swap: std::sync::Mutex<()>,
    max_header_bytes: usize,
    /// The gateway rules' state (rate windows, hit counts), shared with the hit flusher.
    rules: Arc<RuleRuntime>,
    upstream_tls: Option<Arc<UpstreamTls>>,
    max_body_bytes: Option<u64>,
}

/// How the upstreams are reached over TLS (`[proxy] upstream_tls`).
#[derive(Debug, Default)]
pub struct UpstreamTls {
    /// The server name sent and verified for each upstream address (replaced on reload).
    pub sni: ArcSwap<std::collections::HashMap<std::net::SocketAddr, String>>,
}

/// The per-client request counter and the window it counts over. A runtime config with another
/// `rate_window_secs` replaces it (counting restarts from zero under the new window).
struct RateWindow {
    secs: u64,
    rate: Rate,
}

impl RateWindow {
    fn new(secs: u64) -> Self {
        let secs = secs.max(1);
        Self {
            secs,
            rate: Rate::new_with_estimator_config(
                Duration::from_secs(secs),
                RATE_HASHES,
                RATE_SLOTS,
            ),
        }
    }
}

impl Gateway {
    /// Wire the phases to the instance's shared parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        live: Arc<LiveConfig>,
        geo: Arc<GeoDb>,
        risk: Arc<ArcSwap<RiskEngine>>,
        upstreams: Arc<LoadBalancer<RoundRobin>>,
        log: LogSink,
        metrics: Metrics,
        proxy_id: &str,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Self {
        let window = RateWindow::new(risk.load().rate_window_secs());
        Self {
            live,
            geo,
            risk,
            upstreams,
            log,
            metrics,
            proxy_id: Arc::from(proxy_id),
            connect_timeout,
            read_timeout,
            rate: ArcSwap::from_pointee(window),
            rate_swap: std::sync::Mutex::new(()),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            rules: Arc::default(),
            upstream_tls: None,
            max_body_bytes: None,
        }
    }

    /// Reach the upstreams over TLS, verifying their certificates (`None`: cleartext).
    pub fn with_upstream_tls(mut self, tls: Option<Arc<UpstreamTls>>) -> Self {
        self.upstream_tls = tls;
        self
    }

    /// Answer 413 to request bodies larger than `max` bytes (`[proxy] max_body_bytes`).
    pub fn with_max_body_bytes(mut self, max: Option<u64>) -> Self {
        self.max_body_bytes = max;
        self
    }

    /// Keep the gateway rules' state in `rules` (whose hit counts a
    /// [`crate::rules::flush_hits`] task writes to Redis).
    pub fn with_rule_runtime(mut self, rules: Arc<RuleRuntime>) -> Self {
        self.rules = rules;
        self
    }

    /// Answer 431 to requests whose header fields exceed `max` bytes (`[proxy]
    /// max_header_bytes`).
    pub fn with_max_header_bytes(mut self, max: usize) -> Self {
        self.max_header_bytes = max;
        self
    }

    /// Requests of the client's rate key over the last window, counting this one: the
    /// previous window's count weighted by how much of it still overlaps, plus the current.
    fn observe_rate(&self, ip: IpAddr, window_secs: u64) -> f64 {
        let key = watchpost_risk::rate_key(ip);
        let window_secs = window_secs.max(1);
        let mut rate = self.rate.load();
        if rate.secs != window_secs {
            // The first request under a new window builds the new counter (a few MB, so
            // once, under the lock); the others waiting on the lock then find it in place.
            let _one = self
                .rate_swap
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if self.rate.load().secs != window_secs {
                self.rate.store(Arc::new(RateWindow::new(window_secs)));
            }
            rate = self.rate.load();
        }
        let rate = &rate.rate;
        rate.observe(&key, 1);
        rate.rate_with(&key, |c| {
            c.prev_samples as f64 * (1.0 - c.current_interval_fraction) + c.curr_samples as f64
        })
    }

    fn body_limit_message(&self) -> String {
        format!(
            "request body exceeds {} bytes",
            self.max_body_bytes.unwrap_or_default()
        )
    }

    /// Answer 431 to a request whose header fields exceed `max_header_bytes`, before any of
    /// them is interpreted: the client is the peer, nothing is scored, and the entry is logged
    /// with `decision=reject`.
    async fn refuse_oversized(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        gateway: Arc<GatewayConfig>,
        peer: IpAddr,
    ) -> pingora::Result<bool> {
        let country = self.geo.lookup_country(peer);
        ctx.decided = Some(Decided {
            gateway,
            peer,
            client: ClientIp {
                ip: peer,
                source: IpSource::Peer,
                spoofed_forwarded: false,
                malformed_forwarded: false,
            },
            forwarded_for: peer.to_string(),
            country: country
                .as_ref()
                .map(|c| c.as_str())
                .unwrap_or("")
                .to_string(),
            score: 0.0,
            reasons: Vec::new(),
            ua_type: UaType::Unknown.as_str(),
            decision: Decision::Reject,
            rule: None,
        });
        // A client sending this much is not one whose next request we want to parse.
        session.set_keepalive(None);
        let message = format!(
            "request header fields exceed {} bytes",
            self.max_header_bytes
        );
        let body = error_body("REQUEST_HEADER_FIELDS_TOO_LARGE", &message, &ctx.request_id);
        // A client that went away while we answered is not our failure to report.
        let _ = respond_json(session, 431, body, &ctx.request_id).await;
        Ok(true)
    }
}

/// What one request carries from phase to phase.
pub struct RequestCtx {
    start: Instant,
    ts_ms: u64,
    request_id: String,
    decided: Option<Decided>,
    upstream: String,
    /// The status to log when no response was written yet: what `fail_to_proxy` or a body
    /// limit answered, or 101 for an upgrade logged when it happens.
    error_status: Option<u16>,
    connect_failures: usize,
    /// Request body bytes read so far (counted against `max_body_bytes`).
    body_bytes: u64,
    /// The entry is already logged (an upgrade is logged when the upstream answers 101, not
    /// when the upgraded connection ends).
    logged: bool,
}

/// The outcome of `request_filter`.
struct Decided {
    gateway: Arc<GatewayConfig>,
    peer: IpAddr,
    client: ClientIp,
    forwarded_for: String,
    country: String,
    score: f64,
    reasons: Vec<Cow<'static, str>>,
    ua_type: &'static str,
    decision: Decision,
    /// The rule that decided the request, else the first `log_only` rule it matched.
    rule: Option<Arc<str>>,
}

impl RequestCtx {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            ts_ms: now_ms(),
            request_id: ulid::Ulid::new().to_string(),
            decided: None,
            upstream: String::new(),
            error_status: None,
            connect_failures: 0,
            body_bytes: 0,
            logged: false,
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The socket peer, canonicalised (IPv4-mapped IPv6 becomes IPv4). A non-IP peer (a Unix
/// socket, which this proxy does not listen on) reads as 0.0.0.0.
fn peer_ip(session: &Session) -> IpAddr {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| normalize_ip(a.ip()))
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// The method's name, borrowed from a constant for the standard methods (the only ones most
/// requests use), copied otherwise.
fn method_text(method: &http::Method) -> Cow<'static, str> {
    use http::Method;
    Cow::Borrowed(match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return Cow::Owned(method.as_str().to_string()),
    })
}

/// Lossy UTF-8, cut to at most `max` bytes on a character boundary.
fn text(bytes: &[u8], max: usize) -> String {
    let cut = &bytes[..bytes.len().min(max)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Remove each named header the request carries.
fn remove_present<S: AsRef<str>>(request: &mut RequestHeader, names: &[S]) {
    for name in names {
        let name = name.as_ref();
        if request.headers.contains_key(name) {
            request.remove_header(name);
        }
    }
}

/// Bytes of the request's header fields as they came on the wire: `name: value` plus CRLF for
/// every line (the request line is not counted).
pub fn header_bytes(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// The error envelope the proxy answers with (SPEC §6's shape).
pub fn error_body(code: &str, message: &str, request_id: &str) -> Bytes {
    let body = serde_json::json!({
        "error": { "code": code, "message": message, "request_id": request_id }
    });
    Bytes::from(body.to_string())
}

async fn respond_json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    request_id: &str,
) -> pingora::Result<()> {
    respond_json_with(session, status, body, request_id, None).await
}

/// [`respond_json`] with a `Retry-After` of `retry_after` seconds, when given.
async fn respond_json_with(
    session: &mut Session,
    status: u16,
    body: Bytes,
    request_id: &str,
    retry_after: Option<u64>,
) -> pingora::Result<()> {
    let mut resp = pingora::http::ResponseHeader::build(status, Some(5))?;
    if let Some(secs) = retry_after {
        resp.insert_header(header::RETRY_AFTER, secs.to_string())?;
    }
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    resp.insert_header(headers::X_REQUEST_ID, request_id)?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {
        // None: the proxy passes bodies through as they are. (Pingora's default installs a
        // response-compression module that is disabled but still runs on every request.)
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        let gateway = self.live.current();
        let peer = peer_ip(session);
        let req = session.req_header();
        if header_bytes(&req.headers) > self.max_header_bytes {
            return self.refuse_oversized(session, ctx, gateway, peer).await;
        }
        let declared_too_large = self.max_body_bytes.is_some_and(|max| {
            req.headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some_and(|len| len > max)
        });
        let (client, forwarded_for) = resolve_with_forwarded_for(peer, &req.headers, &gateway);
        let country = self.geo.lookup_country(client.ip);
        let country = country.as_ref().map(|c| c.as_str()).unwrap_or("");
        let user_agent = req.headers.get(header::USER_AGENT).map(|v| v.as_bytes());
        // Classified once, for the rules and the risk engine.
        let ua = classify_ua_bytes(user_agent.unwrap_or_default());

        // The gateway rules first (a config without rules costs this one check).
        let verdict = if gateway.compiled_rules.is_empty() {
            Verdict::None
        } else {
            let host = req
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri.host())
                .unwrap_or("");
            let rule_req = RuleRequest {
                ip: client.ip,
                country,
                path: req.uri.path(),
                host,
                method: req.method.as_str(),
                ua_type: ua.ua_type.as_str(),
            };
            self.rules.evaluate(
                &gateway.compiled_rules,
                gateway.version,
                &rule_req,
                ctx.ts_ms,
                client_key(client.ip),
            )
        };
        // What the client is answered when the request stops here.
        let mut refusal: Option<(u16, &str, &str, Option<u64>)> = None;
        let (score, reasons, decision) = match &verdict {
            Verdict::Block(_) => {
                // Never the rule's reason: that is for operators.
                refusal = Some((403, "BLOCKED", "request blocked", None));
                (0.0, Vec::new(), Decision::Reject)
            }
            Verdict::RateLimited(_, retry_after) => {
                refusal = Some((429, "RATE_LIMITED", "too many requests", Some(*retry_after)));
                (0.0, Vec::new(), Decision::Reject)
            }
            Verdict::Allow(_) => (0.0, Vec::new(), Decision::Allow),
            Verdict::None | Verdict::Tagged(_) => {
                let file_risk = self.risk.load();
                let engine = gateway.risk_engine(&file_risk);
                let recent_requests = self.observe_rate(client.ip, engine.rate_window_secs());
                let facts = RequestFacts {
                    ip: client.ip,
                    user_agent,
                    path: req.uri.path(),
                    has_accept: req.headers.contains_key(header::ACCEPT),
                    has_accept_language: req.headers.contains_key(header::ACCEPT_LANGUAGE),
                    spoofed_forwarded: client.spoofed_forwarded,
                    malformed_forwarded: client.malformed_forwarded,
                    country,
                    recent_requests,
                };
                let eval = engine.evaluate_classified(&facts, ua);
                let score = eval.assessment.score;
                let decision = match (score >= gateway.risk_reject_threshold, gateway.risk_mode) {
                    (false, _) => Decision::Allow,
                    (true, RiskMode::Enforce) => Decision::Reject,
                    (true, RiskMode::LogOnly) => Decision::Flag,
                };
                if decision == Decision::Reject {
                    refusal = Some((403, "FORBIDDEN", "request rejected", None));
                }
                let reasons = eval.assessment.reason_names().map(Cow::Borrowed).collect();
                (score, reasons, decision)
            }
        };

        // Rewrite `Connection` before Pingora derives the upstream request from it.
        let plan = plan_connection(&req.headers, &gateway.cdn_headers);
        if plan.changed {
            let req = session.req_header_mut();
            req.remove_header(&header::CONNECTION);
            for name in &plan.remove {
                req.remove_header(name);
            }
            if let Some(v) = plan.value {
                req.insert_header(header::CONNECTION, v)?;
            }
        }

        ctx.decided = Some(Decided {
            gateway,
            peer,
            client,
            forwarded_for,
            country: country.to_string(),
            score,
            reasons,
            ua_type: ua.ua_type.as_str(),
            decision,
            rule: verdict.rule().cloned(),
        });
        if let Some((status, code, message, retry_after)) = refusal {
            if !session.is_body_empty() {
                // Keeping the connection would mean reading the rejected body to its end;
                // closing is cheaper and gives a hostile client nothing to hold open.
                session.set_keepalive(None);
            }
            let body = error_body(code, message, &ctx.request_id);
            // A client that went away while we answered is not our failure to report.
            let _ = respond_json_with(session, status, body, &ctx.request_id, retry_after).await;
            return Ok(true);
        }
        if declared_too_large {
            // Announced up front: answer before reading a byte of it, and close (the body
            // is not read to its end).
            session.set_keepalive(None);
            let body = error_body(
                "PAYLOAD_TOO_LARGE",
                &self.body_limit_message(),
                &ctx.request_id,
            );
            let _ = respond_json(session, 413, body, &ctx.request_id).await;
            ctx.error_status = Some(413);
            return Ok(true);
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // Chunked (or HTTP/2) bodies of unannounced length: counted as they stream through.
        if let (Some(max), Some(chunk)) = (self.max_body_bytes, body.as_ref()) {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > max {
                let mut e = Error::explain(ErrorType::HTTPStatus(413), self.body_limit_message());
                e.esource = ErrorSource::Downstream;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let Some(backend) = self.upstreams.select(b"", 256) else {
            return Err(Error::explain(
                ErrorType::ConnectNoRoute,
                "no healthy upstream",
            ))
            .map_err(|mut e| {
                e.esource = ErrorSource::Upstream;
                e
            });
        };
        ctx.upstream = backend.addr.to_string();
        let mut peer = match &self.upstream_tls {
            None => HttpPeer::new(backend.addr, false, String::new()),
            Some(tls) => {
                // An empty SNI would make Pingora skip verification, so it is never empty: the
                // configured name, else the address (verified against the certificate's IP
                // names). Verification of chain and name stays on.
                let sni = match backend.addr.as_inet() {
                    Some(a) => tls
                        .sni
                        .load()
                        .get(a)
                        .cloned()
                        .unwrap_or_else(|| a.ip().to_string()),
                    None => String::from("localhost"),
                };
                HttpPeer::new(backend.addr, true, sni)
            }
        };
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the upstream, so another one may take the request.
        ctx.connect_failures += 1;
        if ctx.connect_failures < self.upstreams.backends().get_backend().len() {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // `insert_header` below replaces every incoming copy of the headers it sets; the
        // rest are removed only when present (a lookup is cheaper than a removal, which also
        // rewrites Pingora's case-preserving name map).
        let Some(d) = &ctx.decided else {
            remove_present(upstream_request, &headers::STRIPPED);
            remove_present(upstream_request, &headers::CLIENT_IP_CLAIMS);
            remove_present(upstream_request, &headers::CDN_CLIENT_HEADERS);
            remove_present(upstream_request, &headers::FORWARDED_REQUEST);
            return Ok(());
        };
        let tls = session
            .digest()
            .is_some_and(|digest| digest.ssl_digest.is_some());
        let (remove, set) = plan_forwarding(&upstream_request.headers, d.peer, &d.gateway, tls);
        for name in &remove {
            upstream_request.remove_header(name);
        }
        for (name, value) in set {
            upstream_request.insert_header(name, value)?;
        }
        upstream_request.insert_header(headers::X_CLIENT_IP, d.client.ip.to_string())?;
        upstream_request.insert_header(headers::X_CLIENT_COUNTRY, d.country.as_str())?;
        upstream_request.insert_header(headers::X_RISK_SCORE, format!("{:.3}", d.score))?;
        upstream_request.insert_header(headers::X_REQUEST_ID, ctx.request_id.as_str())?;
        upstream_request.insert_header(headers::X_FORWARDED_FOR, d.forwarded_for.as_str())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut pingora::http::ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        upstream_response.insert_header(headers::X_REQUEST_ID, ctx.request_id.as_str())?;
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS {
            // An upgraded connection (WebSocket) may stay open for hours: log it now, once,
            // with status 101, rather than when it ends.
            ctx.error_status = Some(101);
            let request_id = ctx.request_id.clone();
            self.logging(session, None, ctx).await;
            ctx.request_id = request_id;
            ctx.logged = true;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (status, code, message, kind) = classify(e);
        if kind == Some("tls") {
            tracing::warn!(error = %e, upstream = %ctx.upstream, "upstream TLS failed");
        }
        if let Some(kind) = kind {
            self.metrics
                .upstream_errors
                .with_label_values(&[kind])
                .inc();
        }
        if status > 0 {
            let body = error_body(code, message, &ctx.request_id);
            let _ = respond_json(session, status, body, &ctx.request_id).await;
            ctx.error_status = Some(status);
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.logged {
            return;
        }
        let latency = ctx.start.elapsed();
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.error_status)
            .unwrap_or(0);
        let req = session.req_header();
        let host = req
            .headers
            .get(header::HOST)
            .map(|h| h.as_bytes())
            .or_else(|| req.uri.host().map(str::as_bytes))
            .unwrap_or_default();
        let mut entry = AccessLogEntry {
            ts: ctx.ts_ms,
            method: method_text(&req.method),
            host: text(host, MAX_HOST_BYTES),
            path: text(req.uri.path().as_bytes(), MAX_PATH_BYTES),
            query: text(req.uri.query().unwrap_or("").as_bytes(), MAX_PATH_BYTES),
            status,
            ua: text(
                req.headers
                    .get(header::USER_AGENT)
                    .map(|v| v.as_bytes())
                    .unwrap_or_default(),
                MAX_UA_BYTES,
            ),
            latency_us: latency.as_micros() as u64,
            bytes_out: session.body_bytes_sent() as u64,
            upstream: std::mem::take(&mut ctx.upstream),
            request_id: std::mem::take(&mut ctx.request_id),
            proxy_id: Arc::clone(&self.proxy_id),
            proto: Cow::Borrowed(if session.is_http2() { "h2" } else { "http/1.1" }),
            ..AccessLogEntry::default()
        };
        match ctx.decided.take() {
            Some(d) => {
                entry.ip = d.client.ip.to_string();
                entry.ip_source = d.client.source.to_text();
                entry.peer = d.peer.to_string();
                entry.country = d.country;
                entry.risk = d.score;
                entry.reasons = d.reasons;
                entry.ua_type = Cow::Borrowed(d.ua_type);
                entry.decision = d.decision;
                if let Some(rule) = d.rule {
                    entry.rule = rule.to_string();
                }
                self.metrics.risk_score.observe(d.score);
            }
            None => {
                // The request failed before it was scored (e.g. a malformed request).
                let peer = peer_ip(session).to_string();
                entry.ip = peer.clone();
                entry.ip_source = IpSource::Peer.to_text();
                entry.peer = peer;
            }
        }
        self.metrics
            .observe_request(entry.decision, status, latency.as_secs_f64());
        self.log.push(entry);
    }
}

/// Status, error code, message and upstream-error kind for a failed request.
fn classify(e: &Error) -> (u16, &'static str, &'static str, Option<&'static str>) {
    use ErrorType::*;
    match (e.etype(), e.esource()) {
        (HTTPStatus(413), _) => (413, "PAYLOAD_TOO_LARGE", "request body too large", None),
        (HTTPStatus(code), _) => (*code, "UPSTREAM_ERROR", "request failed", None),
        (ConnectTimedout | ReadTimedout | WriteTimedout, ErrorSource::Upstream) => (
            504,
            "GATEWAY_TIMEOUT",
            "upstream timed out",
            Some("timeout"),
        ),
        (ConnectNoRoute, ErrorSource::Upstream) => (
            502,
            "BAD_GATEWAY",
            "no upstream available",
            Some("no_healthy_upstream"),
        ),
        (TLSHandshakeFailure | InvalidCert | HandshakeError, ErrorSource::Upstream) => (
            502,
            "BAD_GATEWAY",
            "upstream TLS handshake failed",
            Some("tls"),
        ),
        (ConnectRefused | ConnectError | SocketError, ErrorSource::Upstream) => {
            (502, "BAD_GATEWAY", "upstream unavailable", Some("connect"))
        }
        (_, ErrorSource::Upstream) => (502, "BAD_GATEWAY", "upstream failed", Some("other")),
        (WriteError | ReadError | ConnectionClosed, ErrorSource::Downstream) => {
            // The client is gone; there is nobody to answer.
            (0, "", "", None)
        }
        (_, ErrorSource::Downstream) => (400, "BAD_REQUEST", "malformed request", None),
        (_, _) => (500, "INTERNAL_ERROR", "internal error", None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_truncates_on_char_boundaries() {
        assert_eq!(text(b"abc", 10), "abc");
        assert_eq!(text(b"abcdef", 3), "abc");
        assert_eq!(text("aé".as_bytes(), 2), "a");
        assert_eq!(text(&[0xff, b'a'], 10), "\u{fffd}a");
    }

    #[test]
    fn header_bytes_count_every_line_as_sent() {
        let mut h = http::HeaderMap::new();
        assert_eq!(header_bytes(&h), 0);
        h.append("host", http::HeaderValue::from_static("a.example"));
        assert_eq!(header_bytes(&h), "host: a.example\r\n".len());
        h.append("x-pad", http::HeaderValue::from_static("1"));
        h.append("x-pad", http::HeaderValue::from_static("22"));
        assert_eq!(
            header_bytes(&h),
            "host: a.example\r\nx-pad: 1\r\nx-pad: 22\r\n".len()
        );
    }

    #[test]
    fn error_body_is_the_spec_envelope() {
        let b = error_body("FORBIDDEN", "request rejected", "01ABC");
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"error":{"code":"FORBIDDEN","message":"request rejected","request_id":"01ABC"}})
        );
    }

    #[test]
    fn failures_map_to_deliberate_statuses() {
        let up = |t: ErrorType| {
            let mut e = Error::new(t);
            e.esource = ErrorSource::Upstream;
            classify(&e).0
        };
        assert_eq!(up(ErrorType::ConnectRefused), 502);
        assert_eq!(up(ErrorType::ConnectNoRoute), 502);
        assert_eq!(up(ErrorType::ConnectTimedout), 504);
        assert_eq!(up(ErrorType::ReadTimedout), 504);
        assert_eq!(up(ErrorType::ConnectionClosed), 502);
        let mut e = Error::new(ErrorType::ConnectionClosed);
        e.esource = ErrorSource::Downstream;
        assert_eq!(classify(&e).0, 0);
        assert_eq!(classify(&Error::new(ErrorType::InternalError)).0, 500);
    }
}
