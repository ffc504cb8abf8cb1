//! The proxy's one error type. Request-path failures never surface as these: they are mapped
//! to deliberate statuses in [`crate::gateway`]. These are start-up and operational failures.

use watchpost_common::config::ConfigError;

/// Why the proxy cannot start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The file or environment could not be read or parsed.
    #[error(transparent)]
    Load(#[from] ConfigError),
    /// A value is invalid; `key` is the dotted path (`proxy.upstreams[1]`).
    #[error("invalid config{}: {key}: {message}", .path.as_deref().map(|p| format!(" in {p}")).unwrap_or_default())]
    Config {
        /// The file, when there is one.
        path: Option<String>,
        /// Dotted key path.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The GeoIP database could not be opened.
    #[error("geo.mmdb_path: {0}")]
    Geo(#[from] watchpost_geo::GeoError),
    /// The risk weights or lists are invalid.
    #[error("risk: {0}")]
    Risk(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The config key of the address.
        what: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The operating system's answer.
        source: std::io::Error,
    },
    /// The proxy did not start serving in time.
    #[error("proxy did not start: {0}")]
    Start(String),
    /// A thread or runtime could not be created.
    #[error("cannot start {what}: {source}")]
    Runtime {
        /// Which one.
        what: &'static str,
        /// The operating system's answer.
        source: std::io::Error,
    },
}
