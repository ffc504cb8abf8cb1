//! Assembling and running one proxy instance.
//!
//! An instance is two threads: the Pingora server (its own runtimes for the proxy service and
//! the upstream health check) and a control runtime that owns everything talking to Redis (the
//! access-log writer, the gateway-config watcher), the GeoIP reloader and the health
//! listener. The request path and the control side share only lock-free handles (an mpsc
//! sender, an `ArcSwap`, atomics), so nothing on one runtime waits on the other, and several
//! instances can run in one process (the integration tests do).
//!
//! Shutdown: Pingora stops accepting, lets in-flight requests finish (grace period), stops;
//! then the control side stops and the writer flushes what is buffered within
//! `[access_log] shutdown_flush_ms`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::lb::health_check::TcpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use watchpost_geo::GeoDb;
use watchpost_risk::RiskEngine;

use crate::access_log::{self, wait_true, RedisStatus, WriterConfig};
use crate::config::Settings;
use crate::error::ProxyError;
use crate::gateway::{Gateway, UpstreamTls};
use crate::health::{self, HealthLimits, HealthState};
use crate::live_config::{self, LiveConfig};
use crate::metrics::Metrics;
use crate::reload::{Reloader, SharedList, UpstreamList};
use crate::rules::{self, RuleRuntime};
use crate::tls::CertStore;
use arc_swap::ArcSwap;
use futures::FutureExt as _;
use pingora::apps::HttpServerOptions;
use pingora::lb::Backends;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::http::v2::server::default_h2_options;

/// How often the gateway config is re-read even without an announcement (SPEC §4: a change
/// applies within 1 s).
pub const CONFIG_POLL: Duration = Duration::from_secs(1);
/// How long the proxy listener may take to accept connections after start.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How the instance learns that it should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOn {
    /// SIGTERM (graceful), SIGINT (fast), SIGQUIT (graceful upgrade), as Pingora handles them.
    Signals,
    /// Only [`RunningProxy::shutdown`] (or dropping the handle).
    Handle,
}

/// A running proxy instance.
pub struct RunningProxy {
    listen: SocketAddr,
    tls_listen: Option<SocketAddr>,
    health: SocketAddr,
    metrics: Metrics,
    reloader: Reloader,
    stop: Option<oneshot::Sender<()>>,
    pingora: Option<JoinHandle<()>>,
    control_stop: watch::Sender<bool>,
    control: Option<JoinHandle<()>>,
}

struct HandleSignal(tokio::sync::Mutex<Option<oneshot::Receiver<()>>>);

#[async_trait]
impl ShutdownSignalWatch for HandleSignal {
    async fn recv(&self) -> ShutdownSignal {
        if let Some(rx) = self.0.lock().await.take() {
            // A dropped sender means the handle is gone: stop as well.
            let _ = rx.await;
        }
        ShutdownSignal::GracefulTerminate
    }
}

/// Validate the environment the settings describe (GeoIP file, risk config, listen address
/// free), then start the instance and wait until its listener accepts connections.
pub fn start(settings: Settings, stop_on: StopOn) -> Result<RunningProxy, ProxyError> {
    start_with(settings, stop_on, false)
}

/// [`start`]; with `upgrade`, take the listening sockets over from the running proxy (the
/// binary's `--upgrade`): wait on `[proxy] upgrade_sock` until the old process, sent SIGQUIT,
/// hands them over, then serve while it drains and exits.
pub fn start_with(
    settings: Settings,
    stop_on: StopOn,
    upgrade: bool,
) -> Result<RunningProxy, ProxyError> {
    let metrics = Metrics::new().map_err(|e| ProxyError::Start(format!("metrics: {e}")))?;
    let (geo, risk) = check(&settings)?;
    let certs = check_tls(&settings, Some(&metrics))?;
    // Pingora binds inside its own runtime and cannot report a failure back, so make sure the
    // addresses are free (and allowed) now, with a clear message if one is not. (An upgrade
    // receives them from the running process instead.)
    for (what, addr) in [
        ("proxy.listen", settings.listen),
        ("proxy.tls_listen", settings.tls_listen),
    ] {
        if let Some(addr) = addr.filter(|_| !upgrade) {
            std::net::TcpListener::bind(addr).map_err(|source| ProxyError::Bind {
                what,
                addr,
                source,
            })?;
        }
    }

    // The upstream list is replaceable (SIGHUP); the balancer discovers it from a shared list.
    let list = Arc::new(UpstreamList::new(&settings.upstreams)?);
    let mut lb = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(SharedList(
        list.clone(),
    ))));
    match lb.update().now_or_never() {
        Some(Ok(())) => {}
        Some(Err(e)) => return Err(ProxyError::Start(format!("upstreams: {e}"))),
        None => return Err(ProxyError::Start("upstreams: discovery blocked".into())),
    }
    lb.set_health_check(TcpHealthCheck::new());
    lb.health_check_frequency = Some(Duration::from_millis(
        settings.file.proxy.health_check_interval_ms,
    ));
    let hc_service = background_service("upstream health check", lb);
    let upstreams = hc_service.task();

    let status = Arc::new(RedisStatus::default());
    let redis_target = settings.file.redis.target();
    let keys = redis_target.keys(settings.file.redis.key_prefix.clone());
    let a = &settings.file.access_log;
    let (log, writer) = access_log::channel(
        a.buffer_entries,
        WriterConfig {
            redis: redis_target.clone(),
            keys: keys.clone(),
            // Validated at load: 1..=256, or unset (1 on one node, 16 on a cluster).
            families: watchpost_common::keys::access_families(&keys, a.shard_count()),
            proxy_id: settings.file.proxy.proxy_id.clone(),
            stream_max_len: a.stream_max_len,
            retention: watchpost_common::rollup::parse_duration(&a.retention),
            max_memory_bytes: (a.max_memory_mb > 0).then_some(a.max_memory_mb << 20),
            rollup_retention: watchpost_common::rollup::parse_duration(&a.rollup_retention)
                .unwrap_or(watchpost_common::rollup::DEFAULT_ROLLUP_RETENTION),
            buffer_bytes: a.buffer_bytes,
            redact_query_params: a.redact_query_params.clone(),
            batch_max_entries: a.batch_max_entries,
            flush_interval: Duration::from_millis(a.flush_interval_ms),
            shutdown_flush: Duration::from_millis(a.shutdown_flush_ms),
        },
        metrics.clone(),
        status.clone(),
    );
    let proxy_id: Arc<str> = Arc::from(settings.file.proxy.proxy_id.as_str());
    let rule_runtime = Arc::new(RuleRuntime::default());

    // Control side.
    let (control_stop, control_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let control = {
        let settings = settings.clone();
        let redis_target = redis_target.clone();
        let certs = certs.clone();
        let (metrics, log, status, upstreams, geo, proxy_id, rule_runtime) = (
            metrics.clone(),
            log.clone(),
            status.clone(),
            upstreams.clone(),
            geo.clone(),
            proxy_id.clone(),
            rule_runtime.clone(),
        );
        std::thread::Builder::new()
            .name("wp-control".into())
            .spawn(move || {
                // One thread: the writer, the config watcher, the health listener and the geo
                // reloader are light, and a second thread only adds wake-ups between them.
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("wp-control")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(source) => {
                        let _ = ready_tx.send(Err(ProxyError::Runtime {
                            what: "control runtime",
                            source,
                        }));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match bind_shared(settings.health_listen) {
                        Ok(l) => l,
                        Err(source) => {
                            let _ = ready_tx.send(Err(ProxyError::Bind {
                                what: "proxy.health_listen",
                                addr: settings.health_listen,
                                source,
                            }));
                            return;
                        }
                    };
                    let health_addr = listener.local_addr().unwrap_or(settings.health_listen);
                    let url = redis_target;
                    let cache = Some(settings.file.gateway.cache_path.as_str())
                        .filter(|p| !p.is_empty())
                        .map(std::path::PathBuf::from);
                    let (initial, source) = live_config::initial(
                        &url,
                        &keys,
                        settings.gateway.clone(),
                        cache.as_deref(),
                        &metrics,
                        &status,
                    )
                    .await;
                    let live = Arc::new(LiveConfig::new(initial, source, metrics.clone()));
                    let writer_task = tokio::spawn(writer.run(control_rx.clone()));
                    let hits_task = tokio::spawn(rules::flush_hits(
                        rule_runtime,
                        live.clone(),
                        url.clone(),
                        keys.clone(),
                        metrics.clone(),
                        control_rx.clone(),
                    ));
                    tokio::spawn(live_config::watch(
                        live.clone(),
                        url,
                        keys,
                        cache,
                        CONFIG_POLL,
                        status.clone(),
                        control_rx.clone(),
                    ));
                    if let Some(certs) = certs {
                        tokio::spawn(crate::tls::watch(
                            certs,
                            crate::tls::RELOAD_INTERVAL,
                            control_rx.clone(),
                        ));
                    }
                    tokio::spawn(reload_geo(
                        geo.clone(),
                        Duration::from_secs(settings.file.geo.reload_interval_secs),
                        control_rx.clone(),
                    ));
                    let state = HealthState {
                        live: live.clone(),
                        metrics,
                        log,
                        redis: status,
                        upstreams,
                        geo,
                        proxy_id,
                    };
                    let limits = HealthLimits {
                        header_read_timeout: Duration::from_millis(
                            settings.file.proxy.health_header_read_timeout_ms,
                        ),
                        max_connections: settings.file.proxy.health_max_connections,
                    };
                    tokio::spawn(health::serve(listener, state, limits, control_rx.clone()));
                    if ready_tx.send(Ok((live, health_addr))).is_err() {
                        return;
                    }
                    // The writer returns once shutdown is signalled and the buffer is flushed;
                    // the hit flusher once it wrote the last hits.
                    let _ = writer_task.await;
                    let _ = hits_task.await;
                });
            })
            .map_err(|source| ProxyError::Runtime {
                what: "control thread",
                source,
            })?
    };
    let (live, health) = match ready_rx.recv() {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            let _ = control.join();
            return Err(e);
        }
        Err(_) => {
            let _ = control.join();
            return Err(ProxyError::Start("control runtime exited".into()));
        }
    };

    let risk = Arc::new(ArcSwap::new(risk));
    let upstream_tls = upstream_tls(&settings);
    let reloader = Reloader {
        upstream_tls: upstream_tls.clone(),
        list,
        upstreams: upstreams.clone(),
        risk: risk.clone(),
        certs: certs.clone(),
    };
    let gateway = Gateway::new(
        live,
        geo,
        risk,
        upstreams,
        log,
        metrics.clone(),
        &proxy_id,
        settings.connect_timeout(),
        settings.read_timeout(),
    )
    .with_max_header_bytes(settings.file.proxy.max_header_bytes)
    .with_upstream_tls(upstream_tls)
    .with_max_body_bytes(settings.file.proxy.max_body_bytes)
    .with_rule_runtime(rule_runtime);

    // Pingora side.
    let (stop, stop_rx) = oneshot::channel();
    let p = &settings.file.proxy;
    let conf = ServerConf {
        threads: p.threads,
        work_stealing: p.work_stealing,
        grace_period_seconds: Some(p.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(p.shutdown_timeout_secs),
        // The root store of upstream TLS verification (Pingora's connector reads it once).
        ca_file: Some(p.upstream_ca_path.clone()).filter(|c| !c.is_empty()),
        upgrade_sock: p.upgrade_sock.clone(),
        ..ServerConf::default()
    };
    let (listen, tls_listen) = (settings.listen, settings.tls_listen);
    let mut server_options = HttpServerOptions::default();
    server_options.h2c = p.h2c;
    let mut h2 = default_h2_options();
    h2.max_concurrent_streams(p.h2_max_concurrent_streams)
        .max_header_list_size(p.h2_max_header_list_bytes)
        .max_pending_accept_reset_streams(p.h2_max_pending_reset_streams);
    let tls_settings = match &certs {
        Some(store) => {
            let mut tls = TlsSettings::intermediate("", "")
                .map_err(|e| ProxyError::Start(format!("proxy.tls_listen: {e}")))?;
            tls.set_cert_resolver(store.clone());
            // ALPN: h2 preferred, http/1.1 allowed.
            tls.enable_h2();
            Some(tls)
        }
        None => None,
    };
    let (bootstrapped_tx, bootstrapped_rx) = std::sync::mpsc::channel();
    let pingora = std::thread::Builder::new()
        .name("wp-pingora".into())
        .spawn(move || {
            let opt = upgrade.then(|| pingora::server::configuration::Opt {
                upgrade: true,
                ..Default::default()
            });
            let mut server = Server::new_with_opt_and_conf(opt, conf);
            // With `upgrade`, this returns once the running process handed its listening
            // sockets over (Pingora exits the process when none arrive).
            server.bootstrap();
            let _ = bootstrapped_tx.send(());
            let mut proxy = pingora::proxy::http_proxy_service_with_name(
                &server.configuration,
                gateway,
                "watchpost-proxy",
            );
            if let Some(app) = proxy.app_logic_mut() {
                app.server_options = Some(server_options);
                app.h2_options = Some(h2);
            }
            if let Some(listen) = listen {
                proxy.add_tcp(&listen.to_string());
            }
            if let (Some(addr), Some(tls)) = (tls_listen, tls_settings) {
                proxy.add_tls_with_settings(&addr.to_string(), None, tls);
            }
            server.add_service(proxy);
            server.add_service(hc_service);
            let run_args = match stop_on {
                StopOn::Signals => RunArgs::default(),
                StopOn::Handle => RunArgs {
                    shutdown_signal: Box::new(HandleSignal(tokio::sync::Mutex::new(Some(stop_rx)))),
                },
            };
            server.run(run_args);
        })
        .map_err(|source| ProxyError::Runtime {
            what: "proxy thread",
            source,
        })?;

    // One of the two is set (validated); either way the first listener is probed.
    let Some(probe) = listen.or(tls_listen) else {
        return Err(ProxyError::Start("no listener configured".into()));
    };
    let running = RunningProxy {
        listen: probe,
        tls_listen,
        health,
        metrics,
        reloader,
        stop: Some(stop),
        pingora: Some(pingora),
        control_stop,
        control: Some(control),
    };
    // An upgrade is ready once it holds the sockets (the old process accepts on them too, so
    // the probe alone would pass before the hand-over).
    if bootstrapped_rx.recv().is_err() {
        return Err(ProxyError::Start(
            "the proxy thread exited during bootstrap".into(),
        ));
    }
    let stopped = || running.pingora.as_ref().is_none_or(|h| h.is_finished());
    if wait_accepting(probe, stopped)? == Readiness::StoppedFirst {
        // A signal that arrives while we are still probing our own listener is an ordinary
        // stop, not a failed start: the caller's `wait` flushes the access log as usual.
        tracing::info!("watchpost-proxy stopped before it reported ready");
        return Ok(running);
    }
    tracing::info!(
        listen = ?listen,
        tls_listen = ?tls_listen,
        health = %health,
        upstreams = ?settings.upstreams,
        "watchpost-proxy is serving"
    );
    Ok(running)
}

/// Open what the settings point at: the GeoIP database and the risk engine (whose lists and
/// weights are validated here). `--check` runs exactly this.
pub fn check(settings: &Settings) -> Result<(Arc<GeoDb>, Arc<RiskEngine>), ProxyError> {
    let geo = Arc::new(if settings.file.geo.mmdb_path.is_empty() {
        GeoDb::disabled()
    } else {
        GeoDb::open(&settings.file.geo.mmdb_path)?
    });
    let risk = RiskEngine::new(&settings.file.risk).map_err(|e| ProxyError::Risk(e.to_string()))?;
    Ok((geo, Arc::new(risk)))
}

/// Bind the health listener with `SO_REUSEPORT`, so that during a binary upgrade the new
/// process can serve `/healthz` while the old one drains.
fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Load the TLS certificates (`None` without `tls_listen`) and check `upstream_ca_path`, so a
/// bad file is reported before anything binds. `--check` runs this too.
pub fn check_tls(
    settings: &Settings,
    metrics: Option<&Metrics>,
) -> Result<Option<Arc<CertStore>>, ProxyError> {
    let p = &settings.file.proxy;
    if !p.upstream_ca_path.is_empty() {
        let pem = std::fs::read(&p.upstream_ca_path).map_err(|e| ProxyError::Config {
            path: None,
            key: "proxy.upstream_ca_path".into(),
            message: format!("cannot read {}: {e}", p.upstream_ca_path),
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let added = cert
                .map_err(|e| e.to_string())
                .and_then(|c| roots.add(c).map_err(|e| e.to_string()));
            if let Err(e) = added {
                return Err(ProxyError::Config {
                    path: None,
                    key: "proxy.upstream_ca_path".into(),
                    message: format!("{}: {e}", p.upstream_ca_path),
                });
            }
        }
        if roots.is_empty() {
            return Err(ProxyError::Config {
                path: None,
                key: "proxy.upstream_ca_path".into(),
                message: format!("{}: no CA certificate in the file", p.upstream_ca_path),
            });
        }
    }
    if settings.tls_listen.is_none() {
        return Ok(None);
    }
    // rustls needs a process-wide crypto provider; Pingora installs the same one (ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    CertStore::load(settings.tls_certs.clone(), metrics.cloned())
        .map(|s| Some(Arc::new(s)))
        .map_err(|(i, message)| {
            // The default pair (`tls_cert_path`) comes first when it is set.
            let key = match (p.tls_cert_path.trim().is_empty(), i) {
                (false, 0) => "proxy.tls_cert_path".to_string(),
                (false, i) => format!("proxy.tls_certs[{}]", i - 1),
                (true, i) => format!("proxy.tls_certs[{i}]"),
            };
            ProxyError::Config {
                path: None,
                key,
                message,
            }
        })
}

/// The gateway's upstream TLS settings: `None` for cleartext upstreams.
fn upstream_tls(settings: &Settings) -> Option<Arc<UpstreamTls>> {
    if !settings.file.proxy.upstream_tls {
        return None;
    }
    Some(Arc::new(UpstreamTls {
        sni: ArcSwap::from_pointee(sni_map(settings)),
    }))
}

/// SNI (and the name verified) of each upstream: `upstream_sni`, else its host as written.
pub(crate) fn sni_map(settings: &Settings) -> std::collections::HashMap<SocketAddr, String> {
    let p = &settings.file.proxy;
    settings
        .upstreams
        .iter()
        .zip(&p.upstreams)
        .map(|(addr, raw)| {
            let host = if p.upstream_sni.is_empty() {
                host_of(raw)
            } else {
                p.upstream_sni.clone()
            };
            (*addr, host)
        })
        .collect()
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn host_of(raw: &str) -> String {
    let raw = raw.trim();
    let host = raw.rsplit_once(':').map_or(raw, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// How waiting for the listener ended.
#[derive(Debug, PartialEq, Eq)]
enum Readiness {
    Accepting,
    /// The server stopped (a shutdown signal) before the probe got through.
    StoppedFirst,
}

/// Poll until the listener accepts a connection, or the server has already stopped.
fn wait_accepting(listen: SocketAddr, stopped: impl Fn() -> bool) -> Result<Readiness, ProxyError> {
    let target = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port())
        }
        _ => listen,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok() {
            return Ok(Readiness::Accepting);
        }
        if stopped() {
            return Ok(Readiness::StoppedFirst);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(ProxyError::Start(format!(
        "{listen} did not accept connections within {START_TIMEOUT:?}"
    )))
}

/// Check the GeoIP file for a newer version now and then (file I/O, so off the async threads).
async fn reload_geo(geo: Arc<GeoDb>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    if geo.path().is_none() {
        return;
    }
    loop {
        tokio::select! {
            _ = wait_true(&mut shutdown) => return,
            _ = tokio::time::sleep(every) => {}
        }
        let g = geo.clone();
        match tokio::task::spawn_blocking(move || g.reload_if_changed()).await {
            Ok(Ok(true)) => tracing::info!("geo: database reloaded"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "geo: reload failed; keeping the loaded database")
            }
            Err(e) => tracing::warn!(error = %e, "geo: reload task failed"),
        }
    }
}

impl RunningProxy {
    /// The client-facing address: the cleartext listener, or the TLS one when there is no
    /// cleartext listener.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// What replaces the upstream list and risk settings of this instance (SIGHUP in the
    /// binary).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// The TLS listener, when configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_listen
    }

    /// The bound `/healthz` + `/metrics` address (the real port when configured with port 0).
    pub fn health_addr(&self) -> SocketAddr {
        self.health
    }

    /// This instance's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stop gracefully: stop accepting, finish in-flight requests, flush the access log.
    pub fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.finish();
    }

    /// Block until the Pingora server stops (on a signal), then flush the access log.
    pub fn wait(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(p) = self.pingora.take() {
            let _ = p.join();
        }
        let _ = self.control_stop.send(true);
        if let Some(c) = self.control.take() {
            let _ = c.join();
        }
        tracing::info!(
            log_written = self.metrics.log_written.get(),
            log_dropped = self.metrics.log_dropped.get(),
            "watchpost-proxy stopped"
        );
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        // A handle dropped without `shutdown` (a failing test) still stops the instance, in the
        // background, without blocking the dropper.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.control_stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_opens_the_geo_file_and_validates_risk_settings() {
        let ok = Settings::load_str("", None, &[]).expect("defaults");
        assert!(check(&ok).is_ok());
        let missing = Settings::load_str(
            "[geo]\nmmdb_path = \"/nonexistent/country.mmdb\"\n",
            None,
            &[],
        )
        .expect("paths are checked by `check`, not by parsing");
        let Err(err) = check(&missing) else {
            panic!("a missing database is refused")
        };
        assert!(err.to_string().contains("geo.mmdb_path"), "{err}");
        let bad_risk = Settings::load_str("[risk.weights]\nrate = 2.0\n", None, &[])
            .expect("weights are checked by the engine");
        let Err(err) = check(&bad_risk) else {
            panic!("a weight above 1 is refused")
        };
        assert!(err.to_string().starts_with("risk:"), "{err}");
    }
}
