//! The runtime gateway config (SPEC §4): loaded from Redis at start, then kept current by a subscription to `<prefix>gateway:config:changed` on a
//! dedicated connection and by a periodic re-read, so a missed message costs at most one poll
//! interval.
//!
//! Every request takes an `Arc` of the config at its start ([`LiveConfig::current`]); a new
//! config is swapped in atomically and only new requests see it. A config in Redis that does
//! not validate is refused with a warning and the last good one stays; so does an unreachable
//! Redis.
//!
//! Surviving Redis faults: with `[gateway] cache_path` set, every config taken from Redis is
//! also written to that file (a temporary file in the same directory, renamed into place, so a
//! reader never sees half a document). At start, when Redis is unreachable, holds no config or
//! an invalid one, the proxy runs the cached config; without a usable cache, the file's
//! `[gateway]`. `/healthz` reports which (`config_source`: `redis`, `cache` or `file`); the
//! source turns to `redis` as soon as Redis serves a config again.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt;
use tokio::sync::{watch, Notify};
use tokio::time::{sleep, timeout};
use watchpost_common::{ConnOptions, GatewayConfig, Keys, RedisConn, RedisTarget};

use crate::access_log::{lazy_connection, wait_true, RedisStatus};
use crate::metrics::Metrics;

/// How long a read of the config may take before Redis is treated as unreachable.
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the applied gateway config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// Read from Redis (the admin API's current version).
    Redis,
    /// The local cache (`[gateway] cache_path`), Redis being unreachable or empty.
    Cache,
    /// The config file's `[gateway]`.
    File,
}

impl ConfigSource {
    /// `redis`, `cache` or `file`, as `/healthz` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Cache => "cache",
            Self::File => "file",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Redis,
            1 => Self::Cache,
            _ => Self::File,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Redis => 0,
            Self::Cache => 1,
            Self::File => 2,
        }
    }
}

/// The applied gateway config.
pub struct LiveConfig {
    current: ArcSwap<GatewayConfig>,
    source: AtomicU8,
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
    /// Start with `initial`, taken from `source`, applied.
    pub fn new(initial: GatewayConfig, source: ConfigSource, metrics: Metrics) -> Self {
        metrics.config_version.set(version_gauge(initial.version));
        Self {
            current: ArcSwap::from_pointee(initial),
            source: AtomicU8::new(source.to_u8()),
            metrics,
        }
    }

    /// Where the applied config came from.
    pub fn source(&self) -> ConfigSource {
        ConfigSource::from_u8(self.source.load(Ordering::Relaxed))
    }

    /// The config for a request starting now.
    pub fn current(&self) -> Arc<GatewayConfig> {
        self.current.load_full()
    }

    /// Validate a JSON document from Redis and apply it when its version differs. A valid
    /// document makes Redis the config's source, changed or not.
    pub fn apply_json(&self, json: &str) -> Applied {
        let next = match GatewayConfig::from_json(json) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.config_refused.inc();
                return Applied::Refused(e.to_string());
            }
        };
        self.source
            .store(ConfigSource::Redis.to_u8(), Ordering::Relaxed);
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

/// The config to start with and where it came from: Redis's when it is there and valid (then
/// also written to the cache), else the cache's, else the file's.
pub async fn initial(
    redis: &RedisTarget,
    keys: &Keys,
    file: GatewayConfig,
    cache: Option<&Path>,
    metrics: &Metrics,
    status: &RedisStatus,
) -> (GatewayConfig, ConfigSource) {
    let read = async {
        let mut conn = redis
            .connect(ConnOptions {
                connect_timeout: READ_TIMEOUT,
                response_timeout: READ_TIMEOUT,
                retries: 1,
                max_delay: READ_TIMEOUT,
            })
            .await?;
        redis::cmd("GET")
            .arg(keys.gateway_config())
            .query_async::<Option<String>>(&mut conn)
            .await
    };
    let why = match timeout(READ_TIMEOUT, read).await {
        Ok(Ok(Some(json))) => {
            status.set(true, metrics);
            match GatewayConfig::from_json(&json) {
                Ok(c) => {
                    tracing::info!(version = c.version, "gateway config: loaded from Redis");
                    if let Some(path) = cache {
                        write_cache(path, &c).await;
                    }
                    return (c, ConfigSource::Redis);
                }
                Err(e) => {
                    metrics.config_refused.inc();
                    tracing::warn!(error = %e, "gateway config in Redis is invalid");
                    "the config in Redis is invalid"
                }
            }
        }
        Ok(Ok(None)) => {
            status.set(true, metrics);
            "Redis holds no config yet"
        }
        Ok(Err(e)) => {
            status.set(false, metrics);
            tracing::warn!(error = %e, "gateway config: Redis unreachable");
            "Redis is unreachable"
        }
        Err(_) => {
            status.set(false, metrics);
            "Redis timed out"
        }
    };
    if let Some(path) = cache {
        match read_cache(path).await {
            Ok(c) => {
                tracing::info!(
                    version = c.version,
                    cache = %path.display(),
                    reason = why,
                    "gateway config: starting from the cached config"
                );
                return (c, ConfigSource::Cache);
            }
            Err(e) => {
                tracing::warn!(cache = %path.display(), error = %e, "gateway config: no usable cache");
            }
        }
    }
    tracing::info!(reason = why, "gateway config: using the file's [gateway]");
    (file, ConfigSource::File)
}

/// Read and validate the cached config.
pub async fn read_cache(path: &Path) -> Result<GatewayConfig, String> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| e.to_string())?;
    GatewayConfig::from_json(&text).map_err(|e| e.to_string())
}

/// Write `config` to the cache atomically (temporary file in the same directory, flushed, then
/// renamed over the old one). A failure is logged; the proxy runs on regardless.
pub async fn write_cache(path: &Path, config: &GatewayConfig) {
    let path: PathBuf = path.to_path_buf();
    let json = config.to_json();
    let version = config.version;
    let written = tokio::task::spawn_blocking(move || -> std::io::Result<PathBuf> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
        tmp.write_all(json.as_bytes())?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(path)
    })
    .await;
    match written {
        Ok(Ok(path)) => {
            tracing::debug!(version, cache = %path.display(), "gateway config: cache written")
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "gateway config: cannot write the cache"),
        Err(e) => tracing::warn!(error = %e, "gateway config: cache write task failed"),
    }
}

/// Keep `live` current until `shutdown` turns true: re-read on every announcement and every
/// `poll` interval.
pub async fn watch(
    live: Arc<LiveConfig>,
    redis: RedisTarget,
    keys: Keys,
    cache: Option<PathBuf>,
    poll: Duration,
    status: Arc<RedisStatus>,
    shutdown: watch::Receiver<bool>,
) {
    let changed = Arc::new(Notify::new());
    let subscriber = tokio::spawn(subscribe(
        redis.pubsub_urls().to_vec(),
        keys.gateway_config_changed(),
        changed.clone(),
        shutdown.clone(),
    ));
    poll_loop(
        live,
        &redis,
        &keys,
        cache.as_deref(),
        poll,
        status,
        changed,
        shutdown,
    )
    .await;
    subscriber.abort();
}

#[allow(clippy::too_many_arguments)]
async fn poll_loop(
    live: Arc<LiveConfig>,
    redis: &RedisTarget,
    keys: &Keys,
    cache: Option<&Path>,
    poll: Duration,
    status: Arc<RedisStatus>,
    changed: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn = match lazy_connection(redis) {
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
                        if let Some(path) = cache {
                            write_cache(path, &live.current()).await;
                        }
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

async fn read(conn: &mut RedisConn, key: &str) -> redis::RedisResult<Option<String>> {
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
/// every fresh subscription, which may have missed some) wakes the reader. On a cluster
/// `urls` are its seed nodes: classic `PUBLISH` reaches the subscribers of every node, so the
/// subscription lives on one of them and moves to the next when that one fails.
async fn subscribe(
    urls: Vec<String>,
    channel: String,
    changed: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut next = 0usize;
    loop {
        let Some(url) = urls.get(next % urls.len().max(1)).cloned() else {
            return;
        };
        next = next.wrapping_add(1);
        let attempt = async {
            let client = redis::Client::open(url.as_str())?;
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
        // Stay on this node while it holds the subscription.
        next = next.wrapping_sub(1);
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
        // Lost: try the next node first (this one may be down).
        next = next.wrapping_add(1);
        tracing::debug!("gateway config: subscription lost; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a cluster the subscription lives on one of the seed nodes: a node that cannot be
    /// reached is passed over for the next (real Redis at `REDIS_URL`).
    #[tokio::test]
    async fn the_subscription_moves_past_a_dead_node() {
        let live = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let channel = format!("wpt:subscribe:{}", ulid::Ulid::new());
        let changed = Arc::new(Notify::new());
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(subscribe(
            vec!["redis://127.0.0.1:1".into(), live.clone()],
            channel.clone(),
            changed.clone(),
            shutdown,
        ));
        let client = redis::Client::open(live.as_str()).expect("REDIS_URL");
        let mut con = timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .expect("Redis answers within 5 s")
        .expect("Redis at REDIS_URL");
        // The fresh subscription wakes the reader once; then a message reaches it.
        timeout(Duration::from_secs(10), changed.notified())
            .await
            .expect("subscribed on the live node");
        let heard = timeout(Duration::from_secs(10), async {
            loop {
                let receivers: u64 = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(1)
                    .query_async(&mut con)
                    .await
                    .expect("PUBLISH");
                if receivers == 1 {
                    changed.notified().await;
                    return;
                }
                sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        let _ = stop.send(true);
        let _ = task.await;
        heard.expect("the message reached the subscriber");
    }

    fn json(version: u64, threshold: f64) -> String {
        format!(
            "{{\"ip_mode\":\"direct\",\"trusted_cidrs\":[],\"risk_reject_threshold\":{threshold},\"version\":{version}}}"
        )
    }

    #[test]
    fn applies_new_versions_and_refuses_invalid_ones() {
        let metrics = Metrics::new().expect("metrics");
        let live = LiveConfig::new(
            GatewayConfig::default(),
            ConfigSource::File,
            metrics.clone(),
        );
        assert_eq!(live.source(), ConfigSource::File);
        let before = live.current();
        assert_eq!(
            live.apply_json(&json(3, 0.5)),
            Applied::Applied { from: 0, to: 3 }
        );
        assert_eq!(live.current().risk_reject_threshold, 0.5);
        assert_eq!(live.source(), ConfigSource::Redis);
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
