//! The runtime gateway config (SPEC §4): loaded from Redis at start (else the file's
//! `[gateway]`), then kept current by a subscription to `<prefix>gateway:config:changed` on a
//! dedicated connection and by a periodic re-read, so a missed message costs at most one poll
//! interval.
//!
//! Every request takes an `Arc` of the config at its start ([`LiveConfig::current`]); a new
//! config is swapped in atomically and only new requests see it. A config in Redis that does
//! not validate is refused with a warning and the last good one stays; so does an unreachable
//! Redis.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt;
use redis::aio::ConnectionManager;
use tokio::sync::{watch, Notify};
use tokio::time::{sleep, timeout};
use watchpost_common::{GatewayConfig, Keys};

use crate::access_log::{lazy_connection, wait_true, RedisStatus};
use crate::metrics::Metrics;

/// How long a read of the config may take before Redis is treated as unreachable.
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// The applied gateway config.
pub struct LiveConfig {
    current: ArcSwap<GatewayConfig>,
    metrics: Metrics,
}

/// What [`LiveConfig::apply_json`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The version equals the applied one; nothing changed.
    Unchanged,
    /// The new config is live.
    Applied {
        /// The version replaced.
        from: u64,
        /// The version now live.
        to: u64,
    },
    /// The document does not validate; the last good config stays.
    Refused(String),
}

impl LiveConfig {
    /// Start with `initial` applied.
    pub fn new(initial: GatewayConfig, metrics: Metrics) -> Self {
        metrics.config_version.set(version_gauge(initial.version));
        Self {
            current: ArcSwap::from_pointee(initial),
            metrics,
        }
    }

    /// The config for a request starting now.
    pub fn current(&self) -> Arc<GatewayConfig> {
        self.current.load_full()
    }

    /// Validate a JSON document from Redis and apply it when its version differs.
    pub fn apply_json(&self, json: &str) -> Applied {
        let next = match GatewayConfig::from_json(json) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.config_refused.inc();
                return Applied::Refused(e.to_string());
            }
        };
        let from = self.current.load().version;
        if next.version == from {
            return Applied::Unchanged;
        }
        let to = next.version;
        self.current.store(Arc::new(next));
        self.metrics.config_version.set(version_gauge(to));
        Applied::Applied { from, to }
    }
}

fn version_gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The config to start with: Redis's when it is there and valid, else the file's.
pub async fn initial(
    redis_url: &str,
    keys: &Keys,
    file: GatewayConfig,
    metrics: &Metrics,
    status: &RedisStatus,
) -> GatewayConfig {
    let read = async {
        let client = redis::Client::open(redis_url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("GET")
            .arg(keys.gateway_config())
            .query_async::<Option<String>>(&mut conn)
            .await
    };
    match timeout(READ_TIMEOUT, read).await {
        Ok(Ok(Some(json))) => {
            status.set(true, metrics);
            match GatewayConfig::from_json(&json) {
                Ok(c) => {
                    tracing::info!(version = c.version, "gateway config: loaded from Redis");
                    c
                }
                Err(e) => {
                    metrics.config_refused.inc();
                    tracing::warn!(error = %e, "gateway config in Redis is invalid; using the file's [gateway]");
                    file
                }
            }
        }
        Ok(Ok(None)) => {
            status.set(true, metrics);
            tracing::info!("gateway config: none in Redis yet; using the file's [gateway]");
            file
        }
        Ok(Err(e)) => {
            status.set(false, metrics);
            tracing::warn!(error = %e, "gateway config: Redis unreachable; using the file's [gateway]");
            file
        }
        Err(_) => {
            status.set(false, metrics);
            tracing::warn!("gateway config: Redis timed out; using the file's [gateway]");
            file
        }
    }
}

/// Keep `live` current until `shutdown` turns true: re-read on every announcement and every
/// `poll` interval.
pub async fn watch(
    live: Arc<LiveConfig>,
    redis_url: String,
    keys: Keys,
    poll: Duration,
    status: Arc<RedisStatus>,
    shutdown: watch::Receiver<bool>,
) {
    let changed = Arc::new(Notify::new());
    let subscriber = tokio::spawn(subscribe(
        redis_url.clone(),
        keys.gateway_config_changed(),
        changed.clone(),
        shutdown.clone(),
    ));
    poll_loop(live, &redis_url, &keys, poll, status, changed, shutdown).await;
    subscriber.abort();
}

async fn poll_loop(
    live: Arc<LiveConfig>,
    redis_url: &str,
    keys: &Keys,
    poll: Duration,
    status: Arc<RedisStatus>,
    changed: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn = match lazy_connection(redis_url) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "gateway config: cannot create Redis client; keeping the current config");
            return;
        }
    };
    let key = keys.gateway_config();
    let mut reachable = true;
    loop {
        tokio::select! {
            biased;
            _ = wait_true(&mut shutdown) => return,
            _ = changed.notified() => {}
            _ = sleep(poll) => {}
        }
        match read(&mut conn, &key).await {
            Ok(json) => {
                status.set(true, &live.metrics);
                if !reachable {
                    tracing::info!("gateway config: Redis reachable again");
                    reachable = true;
                }
                let Some(json) = json else { continue };
                match live.apply_json(&json) {
                    Applied::Unchanged => {}
                    Applied::Applied { from, to } => {
                        tracing::info!(from, to, "gateway config: applied new version");
                    }
                    Applied::Refused(e) => {
                        tracing::warn!(error = %e, "gateway config in Redis refused; keeping the last good one");
                    }
                }
            }
            Err(e) => {
                status.set(false, &live.metrics);
                if reachable {
                    tracing::warn!(error = %e, "gateway config: Redis unreachable; keeping the last good config");
                    reachable = false;
                }
            }
        }
    }
}

async fn read(conn: &mut ConnectionManager, key: &str) -> redis::RedisResult<Option<String>> {
    match timeout(
        READ_TIMEOUT,
        redis::cmd("GET")
            .arg(key)
            .query_async::<Option<String>>(conn),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "gateway config read timed out",
        ))),
    }
}

/// Hold a subscription on its own connection, reconnecting with backoff; every message (and
/// every fresh subscription, which may have missed some) wakes the reader.
async fn subscribe(
    redis_url: String,
    channel: String,
    changed: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let client = redis::Client::open(redis_url.as_str())?;
            let mut pubsub = timeout(READ_TIMEOUT * 2, client.get_async_pubsub())
                .await
                .map_err(|_| {
                    redis::RedisError::from((redis::ErrorKind::Io, "pub/sub connect timed out"))
                })??;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let mut pubsub = tokio::select! {
            _ = wait_true(&mut shutdown) => return,
            r = attempt => match r {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(error = %e, "gateway config: subscribe failed; retrying");
                    tokio::select! {
                        _ = wait_true(&mut shutdown) => return,
                        _ = sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        };
        backoff = Duration::from_millis(100);
        tracing::debug!(channel = %channel, "gateway config: subscribed");
        changed.notify_one();
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                _ = wait_true(&mut shutdown) => return,
                m = messages.next() => match m {
                    Some(_) => changed.notify_one(),
                    None => break,
                }
            }
        }
        tracing::debug!("gateway config: subscription lost; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(version: u64, threshold: f64) -> String {
        format!(
            "{{\"ip_mode\":\"direct\",\"trusted_cidrs\":[],\"risk_reject_threshold\":{threshold},\"version\":{version}}}"
        )
    }

    #[test]
    fn applies_new_versions_and_refuses_invalid_ones() {
        let metrics = Metrics::new().expect("metrics");
        let live = LiveConfig::new(GatewayConfig::default(), metrics.clone());
        let before = live.current();
        assert_eq!(
            live.apply_json(&json(3, 0.5)),
            Applied::Applied { from: 0, to: 3 }
        );
        assert_eq!(live.current().risk_reject_threshold, 0.5);
        // A request that started before keeps its snapshot.
        assert_eq!(before.risk_reject_threshold, 0.8);
        assert_eq!(live.apply_json(&json(3, 0.1)), Applied::Unchanged);
        assert_eq!(live.current().risk_reject_threshold, 0.5);
        assert!(matches!(
            live.apply_json(&json(4, 7.0)),
            Applied::Refused(_)
        ));
        assert!(matches!(live.apply_json("{"), Applied::Refused(_)));
        assert_eq!(live.current().version, 3);
        assert_eq!(metrics.config_version.get(), 3);
        assert_eq!(metrics.config_refused.get(), 2);
    }
}
