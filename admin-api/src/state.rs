//! Shared state handed to every handler.

use std::{sync::Arc, time::Duration};

use deadpool_postgres::{Object, Pool};
use watchpost_common::{ConnOptions, Keys, RedisConn};

use crate::{
    config::Config,
    error::ApiError,
    metrics::{Metrics, MetricsAccess},
    StartupError,
};

/// Cheap to clone; everything lives behind one `Arc`.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    pool: Pool,
    redis: RedisConn,
    keys: Keys,
    metrics: Metrics,
    metrics_access: MetricsAccess,
}

impl AppState {
    /// Builds the state without touching the network: the pool and the Redis connection
    /// manager both connect lazily, so the server starts (and answers 503 where needed) while
    /// a store is down.
    pub fn new(config: Config) -> Result<Self, StartupError> {
        let pool = crate::db::create_pool(&config.postgres)?;
        let target = config.redis.target();
        target
            .validate()
            .map_err(|e| StartupError::Config(e.to_string()))?;
        let redis = target
            .connect_lazy(ConnOptions {
                connect_timeout: Duration::from_millis(1000),
                response_timeout: Duration::from_millis(config.admin.redis_timeout_ms),
                // Fail the current command quickly; the connection keeps reconnecting in the
                // background, so the next request finds Redis as soon as it is back.
                retries: 1,
                max_delay: Duration::from_millis(1000),
            })
            .map_err(|e| StartupError::Redis(e.to_string()))?;
        let keys = target.keys(config.redis.key_prefix.clone());
        let metrics = Metrics::new().map_err(|e| StartupError::Config(format!("metrics: {e}")))?;
        let metrics_access = MetricsAccess::new(&config.admin.metrics_cidrs);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                pool,
                redis,
                keys,
                metrics,
                metrics_access,
            }),
        })
    }

    /// The loaded config.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The PostgreSQL pool (for background tasks; handlers use [`AppState::db`]).
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// A pooled PostgreSQL connection; 503 `UNAVAILABLE` when PostgreSQL is unreachable.
    pub async fn db(&self) -> Result<Object, ApiError> {
        let started = std::time::Instant::now();
        let got = self.inner.pool.get().await;
        let metrics = &self.inner.metrics;
        metrics
            .pg_pool_wait
            .observe(started.elapsed().as_secs_f64());
        if got.is_err() {
            metrics.pg_pool_errors.inc();
        }
        Ok(got?)
    }

    /// A handle on the shared, reconnecting Redis connection. Wrap commands in
    /// [`AppState::redis_timeout`].
    pub fn redis(&self) -> RedisConn {
        self.inner.redis.clone()
    }

    /// Runs a Redis future with `[admin] redis_timeout_ms`; a timeout or error is 503.
    pub async fn redis_timeout<T, F>(&self, fut: F) -> Result<T, ApiError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let timeout = Duration::from_millis(self.inner.config.admin.redis_timeout_ms);
        let result = match tokio::time::timeout(timeout, fut).await {
            Ok(result) => result.map_err(ApiError::from),
            Err(_) => Err(ApiError::unavailable("redis: command timed out")),
        };
        if result.is_err() {
            self.inner.metrics.redis_errors.inc();
        }
        result
    }

    /// The admin API's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Who may scrape [`crate::metrics::METRICS_PATH`] without a token.
    pub fn metrics_access(&self) -> &MetricsAccess {
        &self.inner.metrics_access
    }

    /// Redis key names under the configured prefix.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }
}
