//! TLS termination: the certificates served on `[proxy] tls_listen`, chosen by SNI, and their
//! reload from disk.
//!
//! - The default certificate is `tls_cert_path` + `tls_key_path` (PEM; the certificate file may
//!   hold the whole chain, leaf first). Each `[[proxy.tls_certs]]` entry adds a certificate
//!   served to clients whose SNI matches one of its `server_names` (exact, case-insensitive, or
//!   `*.example.com` for one label). Without `tls_cert_path` the first entry is the default.
//! - Protocols and ciphers are rustls' (ring provider): TLS 1.2 and 1.3 only, key exchange
//!   always ECDHE (X25519, P-256, P-384), ciphers always AEAD (AES-GCM, ChaCha20-Poly1305).
//!   rustls implements nothing weaker, so nothing weaker can be negotiated.
//! - [`CertStore`] is the rustls certificate resolver. It holds the loaded pairs behind an
//!   `ArcSwap`, so a handshake never waits on a reload. [`watch`] re-reads every pair's files
//!   every [`RELOAD_INTERVAL`]; a pair whose bytes changed (replaced in place or renamed over)
//!   is loaded and, when valid (parseable, key matching the certificate), served to new
//!   connections. An invalid pair is refused, logged and counted; the old one stays.
//! - `watchpost_proxy_tls_cert_expiry_seconds{cert}` gives each served certificate's
//!   `notAfter` (unix seconds), `cert` being its file path.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::access_log::wait_true;
use crate::metrics::Metrics;

/// How often the certificate files are re-read (a change is served within twice this).
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// One certificate/key pair as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    /// PEM certificate chain, leaf first.
    pub cert_path: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: String,
    /// SNI names this pair serves; empty for the default pair.
    pub server_names: Vec<String>,
}

/// A pair loaded and checked.
#[derive(Clone)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The leaf's `notAfter`, unix seconds.
    not_after: i64,
    /// The file bytes it was built from, to notice a change.
    source: (Vec<u8>, Vec<u8>),
}

/// What the resolver serves: the default pair and the SNI table.
struct Snapshot {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

/// The certificate resolver of the TLS listener, reloadable.
pub struct CertStore {
    specs: Vec<CertSpec>,
    loaded: std::sync::Mutex<Vec<Loaded>>,
    current: ArcSwap<Snapshot>,
    metrics: Option<Metrics>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("specs", &self.specs)
            .finish_non_exhaustive()
    }
}

/// Read and check one pair: the certificate chain parses, the key parses and matches the leaf.
fn load_pair(spec: &CertSpec) -> Result<Loaded, String> {
    let cert_pem = std::fs::read(&spec.cert_path)
        .map_err(|e| format!("cannot read {}: {e}", spec.cert_path))?;
    let key_pem =
        std::fs::read(&spec.key_path).map_err(|e| format!("cannot read {}: {e}", spec.key_path))?;
    build_pair(spec, cert_pem, key_pem)
}

fn build_pair(spec: &CertSpec, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<Loaded, String> {
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", spec.cert_path))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{}: no certificate in the file", spec.cert_path));
    };
    let not_after = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("{}: the certificate does not parse: {e}", spec.cert_path))?
        .1
        .validity()
        .not_after
        .timestamp();
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("{}: not a PEM private key: {e}", spec.key_path))?
        .ok_or_else(|| format!("{}: no private key in the file", spec.key_path))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("{}: unsupported private key: {e}", spec.key_path))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "{} and {} do not belong together: {e}",
            spec.cert_path, spec.key_path
        )
    })?;
    Ok(Loaded {
        key: Arc::new(certified),
        not_after,
        source: (cert_pem, key_pem),
    })
}

/// Lower-case, without a trailing dot.
fn normalize_name(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Check the names of a `[[proxy.tls_certs]]` entry.
pub fn check_server_name(name: &str) -> Result<(), String> {
    let n = normalize_name(name);
    let host = n.strip_prefix("*.").unwrap_or(&n);
    let ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a DNS name (or *.name wildcard)"))
    }
}

impl CertStore {
    /// Load every pair (the first is the default). Any invalid pair fails the whole load,
    /// with its index: at start the proxy refuses to run with a certificate it cannot serve.
    pub fn load(specs: Vec<CertSpec>, metrics: Option<Metrics>) -> Result<Self, (usize, String)> {
        if specs.is_empty() {
            return Err((0, "no certificate configured".into()));
        }
        let loaded = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| load_pair(spec).map_err(|e| (i, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let store = Self {
            current: ArcSwap::from_pointee(Self::snapshot(&specs, &loaded)),
            specs,
            loaded: std::sync::Mutex::new(Vec::new()),
            metrics,
        };
        store.publish(loaded);
        Ok(store)
    }

    fn snapshot(specs: &[CertSpec], loaded: &[Loaded]) -> Snapshot {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (spec, l) in specs.iter().zip(loaded) {
            for name in &spec.server_names {
                let n = normalize_name(name);
                match n.strip_prefix("*.") {
                    Some(rest) => wildcard.entry(rest.to_string()),
                    None => exact.entry(n),
                }
                // The first entry naming a host keeps it.
                .or_insert_with(|| l.key.clone());
            }
        }
        Snapshot {
            default: loaded[0].key.clone(),
            exact,
            wildcard,
        }
    }

    fn publish(&self, loaded: Vec<Loaded>) {
        self.current
            .store(Arc::new(Self::snapshot(&self.specs, &loaded)));
        if let Some(m) = &self.metrics {
            for (spec, l) in self.specs.iter().zip(&loaded) {
                m.tls_cert_expiry
                    .with_label_values(&[spec.cert_path.as_str()])
                    .set(l.not_after);
            }
        }
        *self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = loaded;
    }

    /// Re-read every pair's files; serve the changed pairs that are valid. Returns how many
    /// pairs were replaced; an invalid changed pair is logged, counted and left as it was
    /// (it is tried again on the next call, so fixing the files is enough).
    pub fn reload(&self) -> usize {
        let previous = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut next = previous.clone();
        let mut replaced = 0;
        for (i, spec) in self.specs.iter().enumerate() {
            let read = std::fs::read(&spec.cert_path)
                .map_err(|e| format!("cannot read {}: {e}", spec.cert_path))
                .and_then(|c| {
                    std::fs::read(&spec.key_path)
                        .map(|k| (c, k))
                        .map_err(|e| format!("cannot read {}: {e}", spec.key_path))
                });
            let (cert_pem, key_pem) = match read {
                Ok(v) => v,
                Err(e) => {
                    // A file briefly missing while it is replaced is not yet an error worth
                    // more than a warning; the old pair keeps serving.
                    tracing::warn!(error = %e, "tls: certificate files unreadable; keeping the loaded pair");
                    continue;
                }
            };
            if previous[i].source.0 == cert_pem && previous[i].source.1 == key_pem {
                continue;
            }
            match build_pair(spec, cert_pem.clone(), key_pem.clone()) {
                Ok(l) => {
                    tracing::info!(cert = %spec.cert_path, not_after = l.not_after, "tls: certificate reloaded");
                    next[i] = l;
                    replaced += 1;
                }
                Err(e) => {
                    if let Some(m) = &self.metrics {
                        m.tls_reload_failures.inc();
                    }
                    tracing::error!(error = %e, "tls: new certificate refused; keeping the loaded pair");
                    // Remember the refused bytes so the same broken files are not parsed and
                    // logged again every interval; the served key stays the old one.
                    next[i].source = (cert_pem, key_pem);
                }
            }
        }
        if replaced > 0
            || next
                .iter()
                .zip(&previous)
                .any(|(a, b)| a.source != b.source)
        {
            self.publish(next);
        }
        replaced
    }

    /// The leaf's `notAfter` (unix seconds) of every configured pair, in configuration order.
    pub fn expiries(&self) -> Vec<(String, i64)> {
        let loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.specs
            .iter()
            .zip(loaded.iter())
            .map(|(s, l)| (s.cert_path.clone(), l.not_after))
            .collect()
    }

    fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let snap = self.current.load();
        if let Some(name) = server_name {
            let name = normalize_name(name);
            if let Some(k) = snap.exact.get(&name) {
                return k.clone();
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(k) = snap.wildcard.get(parent) {
                    return k.clone();
                }
            }
        }
        snap.default.clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// Reload the certificates every `every` until shutdown (file reads, so off the async threads).
pub async fn watch(store: Arc<CertStore>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = wait_true(&mut shutdown) => return,
            _ = tokio::time::sleep(every) => {}
        }
        let s = store.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || s.reload()).await {
            tracing::warn!(error = %e, "tls: reload task failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_checked() {
        assert!(check_server_name("a.example").is_ok());
        assert!(check_server_name("*.example.com").is_ok());
        assert!(check_server_name("Example.COM.").is_ok());
        assert!(check_server_name("").is_err());
        assert!(check_server_name("a..b").is_err());
        assert!(check_server_name("a b").is_err());
        assert!(check_server_name("*.").is_err());
    }

    #[test]
    fn a_missing_file_is_a_clear_error() {
        let Err((0, e)) = CertStore::load(
            vec![CertSpec {
                cert_path: "/nonexistent/cert.pem".into(),
                key_path: "/nonexistent/key.pem".into(),
                server_names: Vec::new(),
            }],
            None,
        ) else {
            panic!("a missing file is refused")
        };
        assert!(e.contains("/nonexistent/cert.pem"), "{e}");
    }
}
