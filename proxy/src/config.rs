//! The proxy's configuration: the `[proxy]`, `[redis]`, `[access_log]`, `[geo]`, `[gateway]`
//! and `[risk]` sections of the shared TOML file, with `WATCHPOST_*` overrides.
//!
//! Everything is read and validated here, once, before any port is bound: [`Settings::load`]
//! either returns a config the proxy can run with or an error that names the section and key
//! at fault. Sections the proxy does not read (`[admin]`, `[postgres]`) are ignored, because
//! the admin API reads the same file; inside the proxy's own sections an unknown key is an
//! error, because a typo silently falling back to a default is worse than refusing to start.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use watchpost_common::gateway::GatewayConfigDoc;
use watchpost_common::rollup::parse_duration;
use watchpost_common::GatewayConfig;
use watchpost_risk::RiskConfig;

use crate::error::ProxyError;

/// The sections this binary reads (and whose `WATCHPOST_<SECTION>_<KEY>` variables it claims).
pub const SECTIONS: [&str; 6] = ["proxy", "redis", "access_log", "geo", "gateway", "risk"];

/// `[proxy]`: listeners, upstreams and server tuning.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProxySection {
    /// Client-facing cleartext HTTP listener; empty for none (then `tls_listen` is required).
    pub listen: String,
    /// Client-facing TLS listener (HTTP/1.1 and HTTP/2 by ALPN); empty (the default) for none.
    pub tls_listen: String,
    /// PEM certificate chain (leaf first) of the default certificate on `tls_listen`.
    pub tls_cert_path: String,
    /// PEM private key of `tls_cert_path`.
    pub tls_key_path: String,
    /// Further certificates, each served to clients whose SNI matches one of its
    /// `server_names`.
    pub tls_certs: Vec<TlsCertSection>,
    /// Accept HTTP/2 without TLS (prior knowledge, "h2c") on `listen`; off by default.
    pub h2c: bool,
    /// HTTP/2: most concurrent streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: most bytes of one request's decoded header list (HEADERS plus CONTINUATION
    /// frames); a larger header block ends the stream before it is buffered whole.
    pub h2_max_header_list_bytes: u32,
    /// HTTP/2: most streams a client may reset before the proxy accepted them (rapid reset);
    /// past it the connection gets GOAWAY (ENHANCE_YOUR_CALM).
    pub h2_max_pending_reset_streams: usize,
    /// Connect to the upstreams over TLS (certificate verified).
    pub upstream_tls: bool,
    /// Server name sent (SNI) and verified in the upstreams' certificate; empty: the
    /// upstream's host as written in `upstreams`.
    pub upstream_sni: String,
    /// PEM file of the CA certificates upstream certificates must chain to; empty: the
    /// system's roots.
    pub upstream_ca_path: String,
    /// Largest request body accepted; a larger one is answered 413. Unset: no limit.
    pub max_body_bytes: Option<u64>,
    /// Unix socket over which a running proxy hands its listening sockets to a new binary
    /// started with `--upgrade` (zero-downtime upgrade).
    pub upgrade_sock: String,
    /// Upstream origins (`host:port`), balanced round-robin and health-checked over TCP.
    pub upstreams: Vec<String>,
    /// Listener for `GET /healthz` and `GET /metrics`.
    pub health_listen: String,
    /// Written into every access-log entry so entries of several proxies can be told apart.
    pub proxy_id: String,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Whether the worker threads share one work-stealing runtime (`true`) or each run their
    /// own event loop with the connections it accepted, as nginx workers do (`false`, the
    /// default: fewer cross-thread wake-ups per request; see `benches/RESULTS.md`).
    pub work_stealing: bool,
    /// Timeout for connecting to an upstream; past it the request fails with 502.
    pub connect_timeout_ms: u64,
    /// Timeout for each read from an upstream; past it the request fails with 504.
    pub read_timeout_ms: u64,
    /// How often every upstream is probed with a TCP connect.
    pub health_check_interval_ms: u64,
    /// On SIGTERM, how long in-flight requests get to finish after the listener stops accepting.
    pub grace_period_secs: u64,
    /// After the grace period, how long the runtimes get to stop before they are dropped.
    pub shutdown_timeout_secs: u64,
    /// Most bytes of request header fields (each counted as `name: value` plus CRLF), all
    /// lines together; a larger request is answered `431` and never reaches an upstream.
    pub max_header_bytes: usize,
    /// Health listener: how long a client gets to send a complete request head; a slower one
    /// is disconnected.
    pub health_header_read_timeout_ms: u64,
    /// Health listener: most connections open at once; further ones are closed at once.
    pub health_max_connections: usize,
}

impl Default for ProxySection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            tls_listen: String::new(),
            tls_cert_path: String::new(),
            tls_key_path: String::new(),
            tls_certs: Vec::new(),
            h2c: false,
            h2_max_concurrent_streams: 100,
            h2_max_header_list_bytes: 65_536,
            h2_max_pending_reset_streams: 20,
            upstream_tls: false,
            upstream_sni: String::new(),
            upstream_ca_path: String::new(),
            max_body_bytes: None,
            upgrade_sock: "/tmp/watchpost-proxy-upgrade.sock".into(),
            upstreams: vec!["127.0.0.1:3000".into()],
            health_listen: "127.0.0.1:9090".into(),
            proxy_id: "proxy-1".into(),
            threads: 2,
            work_stealing: false,
            connect_timeout_ms: 2_000,
            read_timeout_ms: 30_000,
            health_check_interval_ms: 1_000,
            grace_period_secs: 1,
            shutdown_timeout_secs: 5,
            max_header_bytes: 32_768,
            health_header_read_timeout_ms: 5_000,
            health_max_connections: 64,
        }
    }
}

/// One `[[proxy.tls_certs]]` entry.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsCertSection {
    /// PEM certificate chain, leaf first.
    pub cert_path: String,
    /// PEM private key.
    pub key_path: String,
    /// SNI names served with this certificate (`a.example`, or `*.example` for one label).
    pub server_names: Vec<String>,
}

/// `[redis]`: where the access log and the gateway config live.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSection {
    /// Redis URL of one node; `REDIS_URL` overrides it.
    pub url: String,
    /// Seed nodes of a Redis Cluster (`["redis://host:port", …]`). When not empty it wins over
    /// `url`: both binaries talk to the cluster (redirections and reconnection handled).
    pub cluster_nodes: Vec<String>,
    /// Prefix of every key and channel.
    pub key_prefix: String,
}

impl RedisSection {
    /// The node or cluster this section names.
    pub fn target(&self) -> watchpost_common::RedisTarget {
        watchpost_common::RedisTarget::from_config(&self.url, &self.cluster_nodes)
    }
}

impl Default for RedisSection {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            cluster_nodes: Vec::new(),
            key_prefix: watchpost_common::keys::DEFAULT_PREFIX.into(),
        }
    }
}

/// `[access_log]`: the Redis Stream writer.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogSection {
    /// How many streams (shards) the log is split into, 1 to 256 (read by the admin API too,
    /// which merges them). Unset (the default): 1 on a single Redis, 16 on a Redis Cluster.
    /// One on a single Redis is the unsharded `<prefix>access` of SPEC; more, or any count on a
    /// cluster, give `<prefix>access:{0}`…, each with its own index, counters and rollups
    /// (see [`watchpost_common::keys::access_families`]).
    pub shards: Option<u64>,
    /// `XADD … MAXLEN ~ N`: the log is trimmed to about this many entries (each shard to its
    /// share).
    pub stream_max_len: u64,
    /// Entries older than this are trimmed (`XTRIM MINID ~`, once per batch): a whole number
    /// and a unit, `90s`, `90m`, `24h`, `7d`. Empty (the default): no age bound.
    pub retention: String,
    /// The stream is trimmed by count to stay under this many MiB (its bytes per entry are
    /// measured with `MEMORY USAGE` every 10 s). 0 (the default): no memory bound. Whichever of
    /// `stream_max_len`, `retention` and `max_memory_mb` bites first wins.
    pub max_memory_mb: u64,
    /// How long the per-minute rollups (counts by decision, status class, country, UA type,
    /// risk bucket, top IPs and paths) live; they answer `/access-log/summary` beyond the raw
    /// stream. Same format as `retention`. Default `7d`.
    pub rollup_retention: String,
    /// Entries held in memory while Redis is slow or down; past it the newest entries are
    /// dropped (and counted).
    pub buffer_entries: usize,
    /// Bytes held in memory (estimated from each entry's fields), a second bound beside
    /// `buffer_entries`; past it the newest entries are dropped (and counted).
    pub buffer_bytes: usize,
    /// Query parameters whose values are replaced by `REDACTED` in the logged `query` (names
    /// match case-insensitively and percent-decoded); the upstream still gets the original.
    pub redact_query_params: Vec<String>,
    /// Most entries sent in one pipeline.
    pub batch_max_entries: usize,
    /// After the first entry of a batch arrives, how long to wait for more before sending a
    /// batch that is not full (0 sends at once).
    pub flush_interval_ms: u64,
    /// On shutdown, how long the writer gets to flush what is buffered.
    pub shutdown_flush_ms: u64,
}

impl AccessLogSection {
    /// `shards` once validated; `None` when it is not set (the default of the Redis target,
    /// see [`watchpost_common::keys::access_families`]).
    pub fn shard_count(&self) -> Option<u16> {
        self.shards
            .and_then(|n| watchpost_common::keys::validate_access_shards(n).ok())
    }
}

impl Default for AccessLogSection {
    fn default() -> Self {
        Self {
            shards: None,
            stream_max_len: 1_000_000,
            retention: String::new(),
            max_memory_mb: 0,
            rollup_retention: "7d".into(),
            buffer_entries: 100_000,
            buffer_bytes: 64 * 1024 * 1024,
            redact_query_params: crate::redact::DEFAULT_PARAMS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            batch_max_entries: 512,
            flush_interval_ms: 2,
            shutdown_flush_ms: 5_000,
        }
    }
}

/// `[geo]`: the GeoIP database.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GeoSection {
    /// MaxMind-format `.mmdb` file; empty disables GeoIP (every country is "").
    pub mmdb_path: String,
    /// How often the file is checked for a newer version.
    pub reload_interval_secs: u64,
}

impl Default for GeoSection {
    fn default() -> Self {
        Self {
            mmdb_path: String::new(),
            reload_interval_secs: 5,
        }
    }
}

/// `[gateway]`: the gateway config used until Redis holds one (SPEC §4).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySection {
    /// `direct`, `proxy` or `cdn`.
    pub ip_mode: String,
    /// Peers whose forwarding headers are believed.
    pub trusted_cidrs: Vec<String>,
    /// Requests scoring at least this are rejected with 403.
    pub risk_reject_threshold: f64,
    /// Headers naming the client in `cdn` mode, in order (default
    /// `CF-Connecting-IP`, `True-Client-IP`).
    pub cdn_headers: Option<Vec<String>>,
    /// The one forwarding header trusted hops set and the proxy believes:
    /// `x-forwarded-for`, `forwarded` or `x-real-ip`.
    pub client_ip_header: String,
    /// `cdn` mode: peers (the CDN's own ranges) whose CDN header is believed; empty: none.
    pub cdn_cidrs: Vec<String>,
    /// Local file keeping the last good gateway config read from Redis (written atomically on
    /// every change); the proxy starts from it when Redis is unreachable or holds no config.
    /// Empty (the default) keeps no cache.
    pub cache_path: String,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            ip_mode: "direct".into(),
            trusted_cidrs: Vec::new(),
            risk_reject_threshold: 0.8,
            cdn_headers: None,
            client_ip_header: watchpost_common::ClientIpHeader::default()
                .as_str()
                .to_string(),
            cdn_cidrs: Vec::new(),
            cache_path: String::new(),
        }
    }
}

/// The proxy's sections of the config file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct FileConfig {
    /// `[proxy]`.
    pub proxy: ProxySection,
    /// `[redis]`.
    pub redis: RedisSection,
    /// `[access_log]`.
    pub access_log: AccessLogSection,
    /// `[geo]`.
    pub geo: GeoSection,
    /// `[gateway]`, as written.
    pub gateway: GatewaySection,
    /// `[risk]`, validated by `RiskEngine::new`.
    pub risk: RiskConfig,
}

/// A validated config, ready to run with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `proxy.listen`, parsed; `None` when empty (TLS only).
    pub listen: Option<SocketAddr>,
    /// `proxy.tls_listen`, parsed; `None` when empty.
    pub tls_listen: Option<SocketAddr>,
    /// The TLS certificates, the default first (`tls_cert_path`, else the first
    /// `tls_certs` entry). Their files are read by `server::check`.
    pub tls_certs: Vec<crate::tls::CertSpec>,
    /// `proxy.upstreams`, parsed (host names resolved once).
    pub upstreams: Vec<SocketAddr>,
    /// `proxy.health_listen`, parsed.
    pub health_listen: SocketAddr,
    /// Every section as read.
    pub file: FileConfig,
    /// The `[gateway]` section, validated.
    pub gateway: GatewayConfig,
}

impl Settings {
    /// Read the file (or only defaults and environment when `path` is `None`), apply the
    /// environment overrides and validate everything.
    pub fn load(path: Option<&str>, env: &[(String, String)]) -> Result<Self, ProxyError> {
        let root: toml::Table = watchpost_common::config::load(path, &SECTIONS, env)?;
        Self::from_table(root, path)
    }

    /// [`Settings::load`] on text already read; `path` is only used in messages.
    pub fn load_str(
        text: &str,
        path: Option<&str>,
        env: &[(String, String)],
    ) -> Result<Self, ProxyError> {
        let root: toml::Table = watchpost_common::config::load_str(text, path, &SECTIONS, env)?;
        Self::from_table(root, path)
    }

    fn from_table(mut root: toml::Table, path: Option<&str>) -> Result<Self, ProxyError> {
        let file = FileConfig {
            proxy: section(&mut root, "proxy", path)?,
            redis: section(&mut root, "redis", path)?,
            access_log: section(&mut root, "access_log", path)?,
            geo: section(&mut root, "geo", path)?,
            gateway: section(&mut root, "gateway", path)?,
            risk: section(&mut root, "risk", path)?,
        };
        Self::validate(file, path)
    }

    /// Check every value that deserialising alone cannot.
    pub fn validate(file: FileConfig, path: Option<&str>) -> Result<Self, ProxyError> {
        let bad = |key: &str, message: String| ProxyError::Config {
            path: path.map(str::to_string),
            key: key.to_string(),
            message,
        };
        let p = &file.proxy;
        let optional_addr = |key: &str, raw: &str| -> Result<Option<SocketAddr>, ProxyError> {
            if raw.trim().is_empty() {
                Ok(None)
            } else {
                parse_addr(raw).map(Some).map_err(|m| bad(key, m))
            }
        };
        let listen = optional_addr("proxy.listen", &p.listen)?;
        let tls_listen = optional_addr("proxy.tls_listen", &p.tls_listen)?;
        if listen.is_none() && tls_listen.is_none() {
            return Err(bad(
                "proxy.listen",
                "empty, and so is proxy.tls_listen: at least one listener is required".into(),
            ));
        }
        if listen.is_some() && listen == tls_listen {
            return Err(bad(
                "proxy.tls_listen",
                "must differ from proxy.listen".into(),
            ));
        }
        let tls_certs = tls_specs(p).map_err(|(k, m)| bad(&k, m))?;
        if tls_listen.is_some() && tls_certs.is_empty() {
            return Err(bad(
                "proxy.tls_cert_path",
                "proxy.tls_listen needs a certificate: set tls_cert_path and tls_key_path, or [[proxy.tls_certs]]".into(),
            ));
        }
        if tls_listen.is_none() && !tls_certs.is_empty() {
            return Err(bad(
                "proxy.tls_listen",
                "certificates are configured but proxy.tls_listen is empty".into(),
            ));
        }
        let tls_keys_set = !p.upstream_sni.is_empty() || !p.upstream_ca_path.is_empty();
        if tls_keys_set && !p.upstream_tls {
            return Err(bad(
                "proxy.upstream_tls",
                "upstream_sni and upstream_ca_path need upstream_tls = true".into(),
            ));
        }
        if !p.upstream_sni.is_empty() {
            crate::tls::check_server_name(&p.upstream_sni)
                .map_err(|m| bad("proxy.upstream_sni", m))?;
        }
        if p.upgrade_sock.trim().is_empty() {
            return Err(bad("proxy.upgrade_sock", "must not be empty".into()));
        }
        if p.max_body_bytes == Some(0) {
            return Err(bad(
                "proxy.max_body_bytes",
                "must be greater than 0 (leave it unset for no limit)".into(),
            ));
        }
        let health_listen =
            parse_addr(&p.health_listen).map_err(|m| bad("proxy.health_listen", m))?;
        if p.upstreams.is_empty() {
            return Err(bad(
                "proxy.upstreams",
                "at least one upstream is required".into(),
            ));
        }
        let mut upstreams = Vec::with_capacity(p.upstreams.len());
        for (i, u) in p.upstreams.iter().enumerate() {
            let addr = parse_addr(u).map_err(|m| bad(&format!("proxy.upstreams[{i}]"), m))?;
            upstreams.push(addr);
        }
        if p.proxy_id.trim().is_empty() {
            return Err(bad("proxy.proxy_id", "must not be empty".into()));
        }
        if p.threads == 0 {
            return Err(bad("proxy.threads", "must be at least 1".into()));
        }
        for (key, v) in [
            ("proxy.connect_timeout_ms", p.connect_timeout_ms),
            ("proxy.read_timeout_ms", p.read_timeout_ms),
            ("proxy.health_check_interval_ms", p.health_check_interval_ms),
            (
                "proxy.health_header_read_timeout_ms",
                p.health_header_read_timeout_ms,
            ),
            ("proxy.max_header_bytes", p.max_header_bytes as u64),
            (
                "proxy.h2_max_concurrent_streams",
                p.h2_max_concurrent_streams as u64,
            ),
            (
                "proxy.h2_max_header_list_bytes",
                p.h2_max_header_list_bytes as u64,
            ),
            (
                "proxy.h2_max_pending_reset_streams",
                p.h2_max_pending_reset_streams as u64,
            ),
            (
                "proxy.health_max_connections",
                p.health_max_connections as u64,
            ),
        ] {
            if v == 0 {
                return Err(bad(key, "must be greater than 0".into()));
            }
        }
        if let Err(e) = redis::Client::open(file.redis.url.as_str()) {
            return Err(bad("redis.url", format!("not a valid Redis URL: {e}")));
        }
        for (i, node) in file.redis.cluster_nodes.iter().enumerate() {
            let why = if node.trim().is_empty() {
                Some("empty".to_string())
            } else {
                redis::Client::open(node.as_str())
                    .err()
                    .map(|e| e.to_string())
            };
            if let Some(why) = why {
                return Err(bad(
                    &format!("redis.cluster_nodes[{i}]"),
                    format!("not a valid Redis URL: {why}"),
                ));
            }
        }
        let a = &file.access_log;
        if let Some(Err(e)) = a.shards.map(watchpost_common::keys::validate_access_shards) {
            return Err(bad("access_log.shards", e));
        }
        if a.stream_max_len == 0 {
            return Err(bad(
                "access_log.stream_max_len",
                "must be greater than 0".into(),
            ));
        }
        if !a.retention.is_empty() && parse_duration(&a.retention).is_none() {
            return Err(bad(
                "access_log.retention",
                format!(
                    "{:?} is not a duration: write a whole number and a unit s, m, h or d \
                     (e.g. \"24h\"), or leave it empty for no age bound",
                    a.retention
                ),
            ));
        }
        if parse_duration(&a.rollup_retention).is_none() {
            return Err(bad(
                "access_log.rollup_retention",
                format!(
                    "{:?} is not a duration: write a whole number and a unit s, m, h or d \
                     (e.g. \"7d\")",
                    a.rollup_retention
                ),
            ));
        }
        if a.max_memory_mb > u64::MAX >> 20 {
            return Err(bad("access_log.max_memory_mb", "is too large".into()));
        }
        if a.buffer_entries == 0 {
            return Err(bad(
                "access_log.buffer_entries",
                "must be greater than 0".into(),
            ));
        }
        if a.buffer_bytes == 0 {
            return Err(bad(
                "access_log.buffer_bytes",
                "must be greater than 0".into(),
            ));
        }
        if let Some(i) = a
            .redact_query_params
            .iter()
            .position(|n| n.trim().is_empty())
        {
            return Err(bad(
                &format!("access_log.redact_query_params[{i}]"),
                "must not be empty".into(),
            ));
        }
        if a.batch_max_entries == 0 {
            return Err(bad(
                "access_log.batch_max_entries",
                "must be greater than 0".into(),
            ));
        }
        if file.geo.reload_interval_secs == 0 {
            return Err(bad(
                "geo.reload_interval_secs",
                "must be greater than 0".into(),
            ));
        }
        let g = &file.gateway;
        let gateway = GatewayConfig::from_doc(&GatewayConfigDoc {
            ip_mode: g.ip_mode.clone(),
            trusted_cidrs: g.trusted_cidrs.clone(),
            risk_reject_threshold: g.risk_reject_threshold,
            cdn_headers: g.cdn_headers.clone(),
            client_ip_header: g.client_ip_header.clone(),
            cdn_cidrs: g.cdn_cidrs.clone(),
            // The proxy's own `[risk]` applies until a runtime config sets `risk`.
            risk: None,
            risk_mode: watchpost_common::RiskMode::default().as_str().into(),
            rules: Vec::new(),
            version: 0,
            updated_at: None,
            updated_by: None,
        })
        .map_err(|e| bad("gateway", e.to_string()))?;
        Ok(Self {
            listen,
            tls_listen,
            tls_certs,
            upstreams,
            health_listen,
            file,
            gateway,
        })
    }

    /// `proxy.connect_timeout_ms`.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.file.proxy.connect_timeout_ms)
    }

    /// `proxy.read_timeout_ms`.
    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.file.proxy.read_timeout_ms)
    }
}

/// The certificate pairs of `[proxy]`, the default first; an error names the key at fault.
fn tls_specs(p: &ProxySection) -> Result<Vec<crate::tls::CertSpec>, (String, String)> {
    let mut specs = Vec::new();
    match (p.tls_cert_path.trim(), p.tls_key_path.trim()) {
        ("", "") => {}
        ("", _) => {
            return Err((
                "proxy.tls_cert_path".into(),
                "empty while tls_key_path is set".into(),
            ))
        }
        (_, "") => {
            return Err((
                "proxy.tls_key_path".into(),
                "empty while tls_cert_path is set".into(),
            ))
        }
        (cert, key) => specs.push(crate::tls::CertSpec {
            cert_path: cert.to_string(),
            key_path: key.to_string(),
            server_names: Vec::new(),
        }),
    }
    for (i, c) in p.tls_certs.iter().enumerate() {
        let key = |k: &str| format!("proxy.tls_certs[{i}].{k}");
        if c.cert_path.trim().is_empty() {
            return Err((key("cert_path"), "must not be empty".into()));
        }
        if c.key_path.trim().is_empty() {
            return Err((key("key_path"), "must not be empty".into()));
        }
        if c.server_names.is_empty() {
            return Err((key("server_names"), "at least one name is required".into()));
        }
        for (j, name) in c.server_names.iter().enumerate() {
            crate::tls::check_server_name(name)
                .map_err(|m| (format!("proxy.tls_certs[{i}].server_names[{j}]"), m))?;
        }
        specs.push(crate::tls::CertSpec {
            cert_path: c.cert_path.trim().to_string(),
            key_path: c.key_path.trim().to_string(),
            server_names: c.server_names.clone(),
        });
    }
    Ok(specs)
}

/// Deserialise one section, naming the section and the key path in any error.
fn section<T: DeserializeOwned + Default>(
    root: &mut toml::Table,
    name: &str,
    path: Option<&str>,
) -> Result<T, ProxyError> {
    let Some(value) = root.remove(name) else {
        return Ok(T::default());
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let key = if inner == "." || inner.is_empty() {
            name.to_string()
        } else {
            format!("{name}.{inner}")
        };
        ProxyError::Config {
            path: path.map(str::to_string),
            key,
            message: e.inner().message().to_string(),
        }
    })
}

/// A socket address, resolving a host name once at start (`localhost:3000` is fine).
fn parse_addr(raw: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = raw.trim().parse::<SocketAddr>() {
        return Ok(a);
    }
    match raw.trim().to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| format!("{raw:?} resolves to no address")),
        Err(e) => Err(format!("{raw:?} is not a host:port address ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn rejects(text: &str, key: &str, mention: &str) {
        let err = Settings::load_str(text, Some("wp.toml"), &[]).expect_err("must be refused");
        let msg = err.to_string();
        assert!(msg.contains(key), "{msg:?} should name {key:?}");
        assert!(msg.contains(mention), "{msg:?} should mention {mention:?}");
        assert!(msg.contains("wp.toml"), "{msg:?} should name the file");
    }

    #[test]
    fn defaults_are_valid_and_match_the_spec() {
        let s = Settings::load_str("", None, &[]).expect("defaults");
        assert_eq!(s.listen, Some("127.0.0.1:8080".parse().expect("addr")));
        assert_eq!(s.tls_listen, None);
        assert!(s.tls_certs.is_empty());
        assert_eq!(s.file.proxy.max_body_bytes, None);
        assert!(!s.file.proxy.h2c);
        assert_eq!(s.health_listen, "127.0.0.1:9090".parse().expect("addr"));
        assert_eq!(s.upstreams, vec!["127.0.0.1:3000".parse().expect("addr")]);
        assert_eq!(s.file.redis.key_prefix, "wp:");
        assert_eq!(s.file.access_log.stream_max_len, 1_000_000);
        // Unset: the Redis target decides (1 on one node, 16 on a cluster).
        assert_eq!(s.file.access_log.shards, None);
        assert_eq!(s.file.access_log.shard_count(), None);
        let three = Settings::load_str("[access_log]\nshards = 3\n", None, &[]).expect("3");
        assert_eq!(three.file.access_log.shard_count(), Some(3));
        assert_eq!(s.file.access_log.buffer_entries, 100_000);
        assert_eq!(s.file.access_log.buffer_bytes, 67_108_864);
        assert_eq!(
            s.file.access_log.redact_query_params,
            [
                "token",
                "access_token",
                "id_token",
                "key",
                "api_key",
                "password",
                "secret",
                "code",
                "signature",
                "sig"
            ]
        );
        assert_eq!(s.file.gateway.cache_path, "");
        assert_eq!(s.gateway.risk_reject_threshold, 0.8);
        assert_eq!(s.file.geo.mmdb_path, "");
    }

    #[test]
    fn other_binaries_sections_are_ignored() {
        let text = "[admin]\nlisten = \"127.0.0.1:8081\"\nwhatever = 1\n[postgres]\nurl = \"x\"\n";
        assert!(Settings::load_str(text, None, &[]).is_ok());
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        rejects("[proxy]\nlistne = \"x\"\n", "proxy", "listne");
        rejects("[proxy]\nlisten = \"nowhere\"\n", "proxy.listen", "nowhere");
        rejects(
            "[proxy]\nupstreams = []\n",
            "proxy.upstreams",
            "at least one",
        );
        rejects(
            "[proxy]\nupstreams = [\"127.0.0.1:1\", \"bad host\"]\n",
            "proxy.upstreams[1]",
            "bad host",
        );
        rejects(
            "[proxy]\nthreads = \"many\"\n",
            "proxy.threads",
            "invalid type",
        );
        rejects(
            "[proxy]\nhealth_listen = \"1.2.3.4\"\n",
            "proxy.health_listen",
            "1.2.3.4",
        );
        rejects("[redis]\nurl = \"http://x\"\n", "redis.url", "Redis URL");
        rejects(
            "[redis]\ncluster_nodes = [\"redis://127.0.0.1:7000\", \"http://x\"]\n",
            "redis.cluster_nodes[1]",
            "Redis URL",
        );
        rejects(
            "[redis]\ncluster_nodes = [\"\"]\n",
            "redis.cluster_nodes[0]",
            "empty",
        );
        rejects(
            "[access_log]\nbuffer_entries = 0\n",
            "access_log.buffer_entries",
            "0",
        );
        rejects("[access_log]\nbatch = 5\n", "access_log", "batch");
        rejects(
            "[access_log]\nshards = 0\n",
            "access_log.shards",
            "from 1 to 256",
        );
        rejects(
            "[access_log]\nshards = 257\n",
            "access_log.shards",
            "from 1 to 256",
        );
        rejects(
            "[access_log]\nretention = \"24 hours\"\n",
            "access_log.retention",
            "not a duration",
        );
        rejects(
            "[access_log]\nretention = \"0h\"\n",
            "access_log.retention",
            "not a duration",
        );
        rejects(
            "[access_log]\nrollup_retention = \"\"\n",
            "access_log.rollup_retention",
            "not a duration",
        );
        rejects(
            "[access_log]\nbuffer_bytes = 0\n",
            "access_log.buffer_bytes",
            "0",
        );
        rejects(
            "[access_log]\nredact_query_params = [\"token\", \" \"]\n",
            "access_log.redact_query_params[1]",
            "empty",
        );
        rejects("[geo]\nmmdb = \"x\"\n", "geo", "mmdb");
    }

    #[test]
    fn tls_keys_are_checked_before_anything_binds() {
        rejects(
            "[proxy]\nlisten = \"\"\n",
            "proxy.listen",
            "at least one listener",
        );
        rejects(
            "[proxy]\ntls_listen = \"127.0.0.1:8443\"\n",
            "proxy.tls_cert_path",
            "needs a certificate",
        );
        rejects(
            "[proxy]\ntls_listen = \"127.0.0.1:8443\"\ntls_cert_path = \"c.pem\"\n",
            "proxy.tls_key_path",
            "empty",
        );
        rejects(
            "[proxy]\ntls_cert_path = \"c.pem\"\ntls_key_path = \"k.pem\"\n",
            "proxy.tls_listen",
            "empty",
        );
        rejects(
            "[proxy]\ntls_listen = \"127.0.0.1:8443\"\n[[proxy.tls_certs]]\ncert_path = \"c.pem\"\nkey_path = \"k.pem\"\n",
            "proxy.tls_certs[0].server_names",
            "at least one",
        );
        rejects(
            "[proxy]\ntls_listen = \"127.0.0.1:8443\"\n[[proxy.tls_certs]]\ncert_path = \"c.pem\"\nkey_path = \"k.pem\"\nserver_names = [\"a b\"]\n",
            "proxy.tls_certs[0].server_names[0]",
            "not a DNS name",
        );
        rejects(
            "[proxy]\nupstream_ca_path = \"ca.pem\"\n",
            "proxy.upstream_tls",
            "upstream_tls = true",
        );
        rejects(
            "[proxy]\nmax_body_bytes = 0\n",
            "proxy.max_body_bytes",
            "greater than 0",
        );
        rejects(
            "[proxy]\nh2_max_concurrent_streams = 0\n",
            "proxy.h2_max_concurrent_streams",
            "greater than 0",
        );
        let s = Settings::load_str(
            "[proxy]\nlisten = \"\"\ntls_listen = \"127.0.0.1:8443\"\ntls_cert_path = \"c.pem\"\ntls_key_path = \"k.pem\"\n\
             [[proxy.tls_certs]]\ncert_path = \"b.pem\"\nkey_path = \"bk.pem\"\nserver_names = [\"b.example\", \"*.b.example\"]\n",
            None,
            &[],
        )
        .expect("TLS only is valid");
        assert_eq!(s.listen, None);
        assert_eq!(s.tls_listen, Some("127.0.0.1:8443".parse().expect("addr")));
        assert_eq!(s.tls_certs.len(), 2);
        assert_eq!(s.tls_certs[0].cert_path, "c.pem");
        assert_eq!(s.tls_certs[1].server_names, ["b.example", "*.b.example"]);
    }

    #[test]
    fn bad_gateway_section_names_every_problem() {
        rejects(
            "[gateway]\ntrusted_cidrs = [\"10.0.0.0/8\", \"10.0.0.300/8\"]\n",
            "gateway",
            "10.0.0.300/8",
        );
        rejects("[gateway]\nip_mode = \"sideways\"\n", "gateway", "sideways");
        rejects("[gateway]\nrisk_reject_threshold = 1.5\n", "gateway", "1.5");
        rejects("[gateway]\ntrusted = []\n", "gateway", "trusted");
        rejects(
            "[gateway]\nclient_ip_header = \"x-client-ip\"\n",
            "gateway",
            "x-client-ip",
        );
        rejects(
            "[gateway]\ncdn_cidrs = [\"192.0.2.0/24\", \"cdn\"]\n",
            "gateway",
            "cdn_cidrs has invalid CIDRs: cdn",
        );
        rejects(
            "[proxy]\nmax_header_bytes = 0\n",
            "proxy.max_header_bytes",
            "greater than 0",
        );
        rejects(
            "[proxy]\nhealth_max_connections = 0\n",
            "proxy.health_max_connections",
            "greater than 0",
        );
    }

    #[test]
    fn gateway_file_keys_reach_the_config() {
        let s = Settings::load_str(
            "[gateway]\nip_mode = \"cdn\"\nclient_ip_header = \"x-real-ip\"\ncdn_cidrs = [\"192.0.2.0/24\"]\n",
            None,
            &[],
        )
        .expect("valid");
        assert_eq!(
            s.gateway.client_ip_header,
            watchpost_common::ClientIpHeader::XRealIp
        );
        assert!(s.gateway.is_cdn("192.0.2.7".parse().expect("ip")));
        let d = Settings::load_str("", None, &[]).expect("defaults");
        assert_eq!(d.file.proxy.max_header_bytes, 32_768);
        assert_eq!(
            d.gateway.client_ip_header,
            watchpost_common::ClientIpHeader::XForwardedFor
        );
        assert!(d.gateway.cdn_cidrs.is_empty());
    }

    #[test]
    fn environment_overrides_apply_before_validation() {
        let env = vec![
            (
                "WATCHPOST_PROXY_LISTEN".to_string(),
                "127.0.0.1:18080".to_string(),
            ),
            (
                "REDIS_URL".to_string(),
                "redis://127.0.0.1:6390".to_string(),
            ),
            (
                "WATCHPOST_GATEWAY_TRUSTED_CIDRS".to_string(),
                "[\"10.0.0.0/8\"]".to_string(),
            ),
        ];
        let s =
            Settings::load_str("[proxy]\nlisten = \"127.0.0.1:1\"\n", None, &env).expect("valid");
        assert_eq!(s.listen.map(|a| a.port()), Some(18080));
        assert_eq!(s.file.redis.url, "redis://127.0.0.1:6390");
        assert_eq!(s.gateway.trusted_cidrs.len(), 1);
        let env = vec![(
            "WATCHPOST_GATEWAY_TRUSTED_CIDRS".to_string(),
            "[\"nope\"]".to_string(),
        )];
        let err = Settings::load_str("", None, &env).expect_err("bad cidr from env");
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
