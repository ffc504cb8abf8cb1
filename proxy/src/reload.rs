//! Reloading the upstream list and the `[risk]` settings without dropping connections
//! (SIGHUP to the binary, or [`crate::RunningProxy::reload`]).
//!
//! The new file is read and validated whole first; an invalid one is refused (logged) and
//! nothing changes. A valid one replaces the upstream list (the load balancer's selector is
//! rebuilt; connections and requests in flight keep their upstream) and the file's risk engine
//! (requests already scored keep their score), and the TLS certificates are re-read at once.
//! Every other key applies at the next restart.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};
use watchpost_risk::RiskEngine;

use crate::config::Settings;
use crate::error::ProxyError;
use crate::tls::CertStore;

/// The upstream list the load balancer discovers, replaceable.
#[derive(Default)]
pub struct UpstreamList {
    backends: ArcSwap<BTreeSet<Backend>>,
}

impl UpstreamList {
    /// A list of these addresses.
    pub fn new(addrs: &[std::net::SocketAddr]) -> Result<Self, ProxyError> {
        let list = Self::default();
        list.set(addrs)?;
        Ok(list)
    }

    fn set(&self, addrs: &[std::net::SocketAddr]) -> Result<(), ProxyError> {
        let mut set = BTreeSet::new();
        for a in addrs {
            set.insert(
                Backend::new(&a.to_string())
                    .map_err(|e| ProxyError::Start(format!("upstream {a}: {e}")))?,
            );
        }
        self.backends.store(Arc::new(set));
        Ok(())
    }
}

/// `ServiceDiscovery` is implemented on a shared handle so the list can be replaced while the
/// load balancer owns its discovery.
pub struct SharedList(pub Arc<UpstreamList>);

#[async_trait]
impl ServiceDiscovery for SharedList {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok((BTreeSet::clone(&self.0.backends.load()), HashMap::new()))
    }
}

/// What a reload replaces.
#[derive(Clone)]
pub struct Reloader {
    pub(crate) list: Arc<UpstreamList>,
    pub(crate) upstreams: Arc<LoadBalancer<RoundRobin>>,
    pub(crate) risk: Arc<ArcSwap<RiskEngine>>,
    pub(crate) certs: Option<Arc<CertStore>>,
    pub(crate) upstream_tls: Option<Arc<crate::gateway::UpstreamTls>>,
}

impl Reloader {
    /// Apply `settings` (already parsed and validated by [`Settings::load`]): the risk engine
    /// is built first, so an invalid `[risk]` changes nothing.
    pub async fn apply(&self, settings: &Settings) -> Result<(), ProxyError> {
        let risk =
            RiskEngine::new(&settings.file.risk).map_err(|e| ProxyError::Risk(e.to_string()))?;
        if let Some(tls) = &self.upstream_tls {
            // Names first, so a new upstream is never dialled without its name.
            tls.sni.store(Arc::new(crate::server::sni_map(settings)));
        }
        self.list.set(&settings.upstreams)?;
        self.upstreams
            .update()
            .await
            .map_err(|e| ProxyError::Start(format!("upstreams: {e}")))?;
        self.risk.store(Arc::new(risk));
        if let Some(certs) = &self.certs {
            let certs = certs.clone();
            let _ = tokio::task::spawn_blocking(move || certs.reload()).await;
        }
        tracing::info!(
            upstreams = ?settings.upstreams,
            "reloaded: upstream list and risk settings replaced (other keys apply at restart)"
        );
        Ok(())
    }
}

/// Re-read the config on every SIGHUP and apply it; an invalid file is refused and logged.
/// Runs on its own thread until the process exits.
pub fn on_sighup(reloader: Reloader, path: Option<String>, env: Vec<(String, String)>) {
    let spawned = std::thread::Builder::new()
        .name("wp-reload".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "reload: no runtime; SIGHUP is ignored");
                    return;
                }
            };
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let mut hup = match signal(SignalKind::hangup()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "reload: cannot watch SIGHUP");
                        return;
                    }
                };
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let result = match Settings::load(path.as_deref(), &env) {
                        Ok(settings) => reloader.apply(&settings).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = result {
                        tracing::error!(error = %e, "reload refused; the running configuration stays");
                    }
                }
            });
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "reload: cannot start the SIGHUP thread");
    }
}
