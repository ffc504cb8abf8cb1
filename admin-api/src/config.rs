//! The admin API's sections of the shared TOML file: `[admin]`, `[redis]`, `[postgres]`, and
//! `[archive]` (read by `watchpost-admin archive`; `dir` also by `serve`, for exports).
//!
//! Other sections (the proxy's) are ignored; inside each of ours an unknown key is an error,
//! so that a typo never silently falls back to a default. [`Config::validate`] runs before
//! any port is bound.

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

use crate::StartupError;

/// Sections this binary reads (and whose `WATCHPOST_<SECTION>_*` variables it claims).
pub const SECTIONS: &[&str] = &["admin", "redis", "postgres", "archive", "access_log"];

/// Everything the admin API reads from the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    pub admin: AdminConfig,
    pub redis: RedisConfig,
    pub postgres: PostgresConfig,
    /// `[archive]`: the access-log archiver (`watchpost-admin archive`).
    pub archive: ArchiveConfig,
    /// `[access_log]` (the proxy's section): the admin reads `shards` only.
    pub access_log: AccessLogConfig,
    /// `[smtp]` and `WATCHPOST_SMTP_*`: the fallback email server.
    pub smtp: crate::email::SmtpConfig,
    /// From `WATCHPOST_SECRET_KEY` and `WATCHPOST_SECRET_KEY_PREVIOUS` (never from the file):
    /// encrypts stored secrets.
    #[serde(skip)]
    pub secret_key: Option<crate::email::SecretKey>,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// HTTP listener. Default `127.0.0.1:8081`.
    pub listen: String,
    /// Largest accepted request body in bytes. Default 1 MiB.
    pub body_limit_bytes: usize,
    /// A request taking longer is answered 503 `UNAVAILABLE`. Default 30 000 ms.
    pub request_timeout_ms: u64,
    /// Longest wait for one Redis command (or pipeline) of a request before it treats Redis as
    /// down (503 `UNAVAILABLE`; the rate limiter lets the request through). Default 1000 ms.
    pub redis_timeout_ms: u64,
    /// Requests per admin per fixed minute window. Default 500.
    pub rate_limit_per_minute: u64,
    /// Requests per admin per fixed hour window. Default 5000.
    pub rate_limit_per_hour: u64,
    /// Most stream entries one filtered access-log page examines. Default 5000.
    pub access_log_scan_budget: usize,
    /// Most entries one access-log summary counts. Default 100 000.
    pub access_log_summary_max_entries: usize,
    /// `XREAD BLOCK` time of a live tail. Default 5000 ms.
    pub access_log_tail_block_ms: u64,
    /// Interval of a live tail's heartbeat comments. Default 15 s.
    pub access_log_tail_heartbeat_secs: u64,
    /// Most concurrent live tails per server (each holds a Redis connection). Default 32.
    pub access_log_max_tails: usize,
    /// Peers (CIDRs or bare addresses) whose `X-Forwarded-For` is believed, as in SPEC §2's
    /// `proxy` mode: the client IP used by throttles, sessions and the audit log is found by
    /// walking the header right to left, skipping trusted addresses. Default `[]`: the socket
    /// peer is the client and forwarding headers are ignored.
    pub trusted_cidrs: Vec<String>,
    /// Client IPs (CIDRs or bare addresses, matched against the client IP decided by
    /// `trusted_cidrs`) that may scrape `GET /metrics` without a token; from elsewhere it needs
    /// a platform admin's bearer token. Default `["127.0.0.0/8", "::1/128"]` (loopback).
    pub metrics_cidrs: Vec<String>,
    /// Sign-in attempts (`POST /api/auth/sessions`) per client IP per fixed minute, counted
    /// before the password is checked. Default 30.
    pub sign_in_per_ip_per_minute: u64,
    /// Sign-in attempts per (account, client IP) per fixed minute; a successful sign-in clears
    /// the count. Never per account alone, so attempts from elsewhere cannot lock the owner
    /// out from the owner's own addresses. Default 10.
    pub sign_in_per_account_ip_per_minute: u64,
    /// Registrations (`POST /api/auth/register`) per client IP per fixed minute. Default 10.
    pub register_per_ip_per_minute: u64,
    /// Requests per client IP per fixed minute to each of `POST /api/redeem`, `POST /api/runs`
    /// and `POST /api/me/invitation-codes` (each endpoint counted on its own). Default 120.
    pub public_per_ip_per_minute: u64,
    /// Sign-in events older than this many days are deleted (hourly, in batches). Default 90.
    pub sign_in_events_retention_days: u32,
    /// Most active invitation codes (enabled, with uses left) one user may mint for themself
    /// with `POST /api/me/invitation-codes`. Default 20.
    pub max_active_invitation_codes_per_user: u32,
    /// Public base URL of the web application (`https://watchpost.example.com`): links sent by
    /// email, such as password resets (`<public_base_url>/reset-password?token=…`), are built
    /// from it and never from the request's Host or X-Forwarded-Host. Default empty: no such
    /// links are sent (a reset request is still 202 and the server logs why).
    pub public_base_url: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8081".into(),
            body_limit_bytes: 1024 * 1024,
            request_timeout_ms: 30_000,
            redis_timeout_ms: 1000,
            rate_limit_per_minute: 500,
            rate_limit_per_hour: 5000,
            access_log_scan_budget: 5000,
            access_log_summary_max_entries: 100_000,
            access_log_tail_block_ms: 5000,
            access_log_tail_heartbeat_secs: 15,
            access_log_max_tails: 32,
            trusted_cidrs: Vec::new(),
            metrics_cidrs: vec!["127.0.0.0/8".into(), "::1/128".into()],
            sign_in_per_ip_per_minute: 30,
            sign_in_per_account_ip_per_minute: 10,
            register_per_ip_per_minute: 10,
            public_per_ip_per_minute: 120,
            sign_in_events_retention_days: 90,
            max_active_invitation_codes_per_user: 20,
            public_base_url: String::new(),
        }
    }
}

/// `[access_log]`, the proxy's section: the admin API reads `shards` (how many streams it merges)
/// and leaves the proxy's other keys alone (the proxy checks them).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AccessLogConfig {
    /// 1..=256; unset (the default): 1 on a single Redis, 16 on a Redis Cluster (see
    /// `watchpost_common::keys::access_families`).
    pub shards: Option<u64>,
}

impl AccessLogConfig {
    /// The validated shard count; `None` when it is not set (the Redis target's default).
    pub fn shard_count(&self) -> Option<u16> {
        self.shards
            .and_then(|n| watchpost_common::keys::validate_access_shards(n).ok())
    }
}

/// `[redis]` (shared with the proxy).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// One node. Default `redis://127.0.0.1:6379`; `REDIS_URL` overrides it.
    pub url: String,
    /// Seed nodes of a Redis Cluster (`["redis://host:port", …]`); when not empty it wins over
    /// `url`.
    pub cluster_nodes: Vec<String>,
    /// Prefix of every key and channel. Default `wp:`.
    pub key_prefix: String,
}

impl RedisConfig {
    /// The node or cluster this section names.
    pub fn target(&self) -> watchpost_common::RedisTarget {
        watchpost_common::RedisTarget::from_config(&self.url, &self.cluster_nodes)
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            cluster_nodes: Vec::new(),
            key_prefix: watchpost_common::keys::DEFAULT_PREFIX.into(),
        }
    }
}

/// `[archive]`: `watchpost-admin archive` copies the access-log stream into hourly, gzipped
/// NDJSON files.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Directory of the archive files (`access-YYYY-MM-DDTHH.ndjson.gz`, one per UTC hour of
    /// the entries' stream ids). Required by `archive`; default empty. When set, `serve` reads
    /// it too: exports continue into the archive below the stream.
    pub dir: String,
    /// Consumer group the archiver reads the stream through. Default `archiver`.
    pub group: String,
    /// This archiver's consumer name in the group; keep it stable across restarts so that
    /// entries delivered but not yet acknowledged are taken up again. Default `archiver-1`.
    pub consumer: String,
    /// Most entries read (and written as one gzip member per hour) per round. Default 1000.
    pub batch: usize,
    /// `XREADGROUP BLOCK` time while the stream has nothing new. Default 1000 ms.
    pub block_ms: u64,
    /// Address of the archiver's Prometheus `GET /metrics`; empty disables it. Default
    /// `127.0.0.1:9188`.
    pub metrics_listen: String,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            dir: String::new(),
            group: "archiver".into(),
            consumer: "archiver-1".into(),
            batch: 1000,
            block_ms: 1000,
            metrics_listen: "127.0.0.1:9188".into(),
        }
    }
}

/// `[postgres]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Default `postgres://watchpost:watchpost@127.0.0.1:5432/watchpost`; `DATABASE_URL`
    /// overrides it. The database is created when missing.
    pub url: String,
    /// Most connections held by the pool. Default 16.
    pub pool_size: usize,
    /// Longest wait for a free pooled connection. Default 2000 ms.
    pub wait_timeout_ms: u64,
    /// Longest time to open a new connection. Default 2000 ms.
    pub connect_timeout_ms: u64,
    /// Longest time to check a pooled connection before reuse. Default 2000 ms.
    pub recycle_timeout_ms: u64,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: "postgres://watchpost:watchpost@127.0.0.1:5432/watchpost".into(),
            pool_size: 16,
            wait_timeout_ms: 2000,
            connect_timeout_ms: 2000,
            recycle_timeout_ms: 2000,
        }
    }
}

impl Config {
    /// Reads the file (if any) and the environment, then validates.
    pub fn load(path: Option<&str>, env: &[(String, String)]) -> Result<Self, StartupError> {
        let mut config: Self = watchpost_common::config::load(path, SECTIONS, env)?;
        config.smtp.apply_env(env).map_err(StartupError::Config)?;
        config.secret_key = crate::email::SecretKey::from_env(env)
            .map_err(|e| StartupError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; the message names the key at fault.
    pub fn validate(&self) -> Result<(), StartupError> {
        let bad = |key: &str, why: &str| Err(StartupError::Config(format!("{key}: {why}")));
        if self.admin.listen.parse::<SocketAddr>().is_err() {
            return bad("[admin] listen", "must be an address like 127.0.0.1:8081");
        }
        if self.admin.body_limit_bytes < 1024 {
            return bad("[admin] body_limit_bytes", "must be at least 1024");
        }
        if let Some(Err(e)) = self
            .access_log
            .shards
            .map(watchpost_common::keys::validate_access_shards)
        {
            return bad("[access_log] shards", &e);
        }
        if self.archive.group.trim().is_empty() {
            return bad("[archive] group", "must not be empty");
        }
        if self.archive.consumer.trim().is_empty() {
            return bad("[archive] consumer", "must not be empty");
        }
        if self.archive.batch == 0 || self.archive.batch > 100_000 {
            return bad("[archive] batch", "must be between 1 and 100000");
        }
        if self.archive.block_ms == 0 {
            return bad("[archive] block_ms", "must be positive");
        }
        if !self.archive.metrics_listen.is_empty()
            && self.archive.metrics_listen.parse::<SocketAddr>().is_err()
        {
            return bad(
                "[archive] metrics_listen",
                "must be an address like 127.0.0.1:9188, or empty",
            );
        }
        if self.admin.request_timeout_ms == 0 {
            return bad("[admin] request_timeout_ms", "must be positive");
        }
        if !(10..=60_000).contains(&self.admin.redis_timeout_ms) {
            return bad("[admin] redis_timeout_ms", "must be between 10 and 60000");
        }
        if self.admin.rate_limit_per_minute == 0 || self.admin.rate_limit_per_hour == 0 {
            return bad("[admin] rate_limit_per_*", "must be positive");
        }
        for (key, cidrs) in [
            ("[admin] trusted_cidrs", &self.admin.trusted_cidrs),
            ("[admin] metrics_cidrs", &self.admin.metrics_cidrs),
        ] {
            let bad_cidrs: Vec<&str> = cidrs
                .iter()
                .filter(|c| watchpost_common::gateway::parse_cidr(c).is_none())
                .map(String::as_str)
                .collect();
            if !bad_cidrs.is_empty() {
                return bad(key, &format!("invalid CIDRs: {}", bad_cidrs.join(", ")));
            }
        }
        for (key, v) in [
            (
                "[admin] sign_in_per_ip_per_minute",
                self.admin.sign_in_per_ip_per_minute,
            ),
            (
                "[admin] sign_in_per_account_ip_per_minute",
                self.admin.sign_in_per_account_ip_per_minute,
            ),
            (
                "[admin] register_per_ip_per_minute",
                self.admin.register_per_ip_per_minute,
            ),
            (
                "[admin] public_per_ip_per_minute",
                self.admin.public_per_ip_per_minute,
            ),
            (
                "[admin] sign_in_events_retention_days",
                u64::from(self.admin.sign_in_events_retention_days),
            ),
            (
                "[admin] max_active_invitation_codes_per_user",
                u64::from(self.admin.max_active_invitation_codes_per_user),
            ),
        ] {
            if v == 0 {
                return bad(key, "must be positive");
            }
        }
        if let Err(why) = check_public_base_url(&self.admin.public_base_url) {
            return bad("[admin] public_base_url", why);
        }
        crate::stream::validate_config(&self.admin).map_err(StartupError::Config)?;
        self.smtp.validate().map_err(StartupError::Config)?;
        if !self.redis.url.starts_with("redis://") && !self.redis.url.starts_with("rediss://") {
            return bad("[redis] url", "must start with redis:// or rediss://");
        }
        for (i, node) in self.redis.cluster_nodes.iter().enumerate() {
            if !node.starts_with("redis://") && !node.starts_with("rediss://") {
                return bad(
                    &format!("[redis] cluster_nodes[{i}]"),
                    "must start with redis:// or rediss://",
                );
            }
        }
        if let Err(e) = self.redis.target().validate() {
            return Err(StartupError::Config(e.to_string()));
        }
        if let Err(e) = self.postgres.url.parse::<tokio_postgres::Config>() {
            return bad("[postgres] url", &e.to_string());
        }
        if crate::db::database_name(&self.postgres.url).is_none() {
            return bad("[postgres] url", "must name a database");
        }
        if self.postgres.pool_size == 0 {
            return bad("[postgres] pool_size", "must be positive");
        }
        for (key, v) in [
            ("[postgres] wait_timeout_ms", self.postgres.wait_timeout_ms),
            (
                "[postgres] connect_timeout_ms",
                self.postgres.connect_timeout_ms,
            ),
            (
                "[postgres] recycle_timeout_ms",
                self.postgres.recycle_timeout_ms,
            ),
        ] {
            if v == 0 {
                return bad(key, "must be positive");
            }
        }
        Ok(())
    }

    /// The listener address (validated).
    pub fn listen_addr(&self) -> Result<SocketAddr, StartupError> {
        self.admin
            .listen
            .parse()
            .map_err(|_| StartupError::Config("[admin] listen: invalid address".into()))
    }

    /// `[admin] request_timeout_ms` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.admin.request_timeout_ms)
    }
}

/// Empty, or an absolute `http`/`https` URL with a host, no query, fragment or user info.
fn check_public_base_url(text: &str) -> Result<(), &'static str> {
    if text.is_empty() {
        return Ok(());
    }
    let why = "must be an absolute http:// or https:// URL without query or fragment";
    let uri: http::Uri = text.parse().map_err(|_| why)?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let authority_ok = uri
        .authority()
        .is_some_and(|a| !a.host().is_empty() && !a.as_str().contains('@'));
    if !scheme_ok || !authority_ok || uri.query().is_some() || text.contains('#') {
        return Err(why);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, StartupError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let c: Config = watchpost_common::config::load_str(text, Some("t.toml"), SECTIONS, &env)?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_are_valid_and_match_the_spec() {
        let c = load("", &[]).expect("defaults");
        assert_eq!(c.admin.listen, "127.0.0.1:8081");
        assert_eq!(c.admin.rate_limit_per_minute, 500);
        assert_eq!(c.admin.rate_limit_per_hour, 5000);
        assert!(c.admin.trusted_cidrs.is_empty());
        assert_eq!(c.admin.sign_in_events_retention_days, 90);
        assert_eq!(c.admin.max_active_invitation_codes_per_user, 20);
        assert_eq!(c.redis.key_prefix, "wp:");
    }

    #[test]
    fn access_log_shards_are_read_beside_the_proxy_keys() {
        let c = load("[access_log]\nshards = 3\nbuffer_entries = 5\n", &[]).expect("valid");
        assert_eq!(c.access_log.shard_count(), Some(3));
        // Unset: the Redis target decides (1 on one node, 16 on a cluster).
        assert_eq!(
            load("", &[]).expect("defaults").access_log.shard_count(),
            None
        );
        let c = load("", &[("WATCHPOST_ACCESS_LOG_SHARDS", "4")]).expect("env");
        assert_eq!(c.access_log.shard_count(), Some(4));
        for bad in ["0", "257"] {
            let err = load(&format!("[access_log]\nshards = {bad}\n"), &[]).expect_err(bad);
            assert!(err.to_string().contains("[access_log] shards"), "{err}");
        }
    }

    #[test]
    fn other_sections_are_ignored_but_typos_are_not() {
        load("[proxy]\nanything = 1\n[gateway]\nip_mode = \"cdn\"\n", &[]).expect("ignored");
        let err = load("[admin]\nlistn = \"x\"\n", &[]).expect_err("typo");
        assert!(err.to_string().contains("listn"), "{err}");
    }

    #[test]
    fn env_overrides_apply() {
        let c = load(
            "",
            &[
                ("DATABASE_URL", "postgres://a:b@h:1/other"),
                ("WATCHPOST_ADMIN_RATE_LIMIT_PER_MINUTE", "3"),
            ],
        )
        .expect("env");
        assert_eq!(c.postgres.url, "postgres://a:b@h:1/other");
        assert_eq!(c.admin.rate_limit_per_minute, 3);
    }

    #[test]
    fn invalid_values_are_named() {
        for (text, key) in [
            ("[admin]\nlisten = \"nope\"\n", "listen"),
            ("[admin]\nrate_limit_per_hour = 0\n", "rate_limit"),
            (
                "[admin]\ntrusted_cidrs = [\"10.0.0.0/8\", \"nope\"]\n",
                "trusted_cidrs",
            ),
            (
                "[admin]\nsign_in_per_ip_per_minute = 0\n",
                "sign_in_per_ip_per_minute",
            ),
            ("[redis]\nurl = \"http://x\"\n", "[redis] url"),
            (
                "[redis]\ncluster_nodes = [\"redis://127.0.0.1:7000\", \"\"]\n",
                "[redis] cluster_nodes[1]",
            ),
            (
                "[admin]\npublic_base_url = \"watchpost.example.com\"\n",
                "public_base_url",
            ),
            (
                "[admin]\npublic_base_url = \"https://x.example/?a=1\"\n",
                "public_base_url",
            ),
            ("[postgres]\npool_size = 0\n", "pool_size"),
            (
                "[postgres]\nurl = \"postgres://u@h:5432\"\n",
                "[postgres] url",
            ),
        ] {
            let err = load(text, &[]).expect_err(text);
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }
}
