//! The `[risk]` section of the Watchpost TOML file.

use serde::{Deserialize, Serialize};

use crate::cidr::CidrSet;
use crate::error::RiskError;
use crate::signal::{Signal, Weights};

/// Paths that scanners request looking for secrets, version-control data, admin consoles and
/// known-vulnerable endpoints. Matched ASCII case-insensitively anywhere in the path, so
/// `/.env` also catches `/app/.env.production`.
///
/// Some of these are real pages on some sites (`/wp-login.php` and `/xmlrpc.php` on WordPress,
/// `/phpmyadmin` where it is deployed, `/actuator/…` on Spring Boot): operators of such sites
/// set their own `probe_paths`.
pub const DEFAULT_PROBE_PATHS: &[&str] = &[
    "/.env",
    "/.git/",
    "/.gitconfig",
    "/.svn/",
    "/.hg/",
    "/.ds_store",
    "/.aws/",
    "/.ssh/",
    "/.docker/",
    "/.kube/",
    "/.htpasswd",
    "/.htaccess",
    "/.vscode/sftp.json",
    "/sftp-config.json",
    "/wp-login.php",
    "/wp-config.php",
    "/wp-admin/",
    "/xmlrpc.php",
    "/phpmyadmin",
    "/pma/",
    "/config.php",
    "/phpinfo.php",
    "/info.php",
    "/eval-stdin.php",
    "/vendor/phpunit/",
    "/server-status",
    "/actuator/env",
    "/actuator/heapdump",
    "/cgi-bin/",
    "/boaform/",
    "/hnap1",
    "/manager/html",
    "/solr/admin",
    "/etc/passwd",
    "/../",
    "/docker-compose.yml",
    "/id_rsa",
    "/backup.sql",
    "/dump.sql",
];

/// The longest `rate_window_secs`: a day. Longer windows make little sense for a request rate
/// and would overflow the counter's millisecond arithmetic.
pub const MAX_RATE_WINDOW_SECS: u64 = 86_400;

/// Configuration of the risk engine: the `[risk]` TOML section. Every field has a default, so
/// an absent section is a working configuration. [`crate::RiskEngine::new`] validates it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RiskConfig {
    /// Signal weights, each in [0, 1] (`[risk.weights]`).
    pub weights: Weights,
    /// The sliding window over which a client's requests are counted, in seconds, 1 ..=
    /// [`MAX_RATE_WINDOW_SECS`]. Default 10.
    pub rate_window_secs: u64,
    /// Requests per window (this one included) a client may send before `rate` fires; its
    /// intensity grows linearly with the excess and is 1 at twice the limit. Default 50.
    pub rate_limit: f64,
    /// ISO 3166-1 alpha-2 codes (any case) whose clients raise `country`. Default empty.
    pub countries: Vec<String>,
    /// CIDRs (or bare addresses) whose clients always score 0. Default empty.
    pub allowlist: Vec<String>,
    /// CIDRs (or bare addresses) whose clients always score 1, unless also allowlisted.
    /// Default empty.
    pub denylist: Vec<String>,
    /// Substrings of the path (ASCII case-insensitive, also matched against the
    /// percent-decoded path) that raise `path_probe`. Default [`DEFAULT_PROBE_PATHS`].
    pub probe_paths: Vec<String>,
}

impl Default for RiskConfig {
    fn default() -> Self {
        RiskConfig {
            weights: Weights::default(),
            rate_window_secs: 10,
            rate_limit: 50.0,
            countries: Vec::new(),
            allowlist: Vec::new(),
            denylist: Vec::new(),
            probe_paths: DEFAULT_PROBE_PATHS.iter().map(|p| p.to_string()).collect(),
        }
    }
}

impl RiskConfig {
    /// Every problem of this configuration, one error per bad value (an empty list: valid).
    /// [`crate::RiskEngine::new`] stops at the first; an operator fixing a runtime config
    /// wants them all at once.
    pub fn problems(&self) -> Vec<RiskError> {
        let mut out = Vec::new();
        for signal in Signal::SCORED {
            let value = self.weights.get(signal);
            if !(0.0..=1.0).contains(&value) {
                out.push(RiskError::InvalidWeight {
                    signal: signal.name(),
                    value,
                });
            }
        }
        if !(self.rate_limit.is_finite() && self.rate_limit > 0.0) {
            out.push(RiskError::InvalidRateLimit(self.rate_limit));
        }
        if !(1..=MAX_RATE_WINDOW_SECS).contains(&self.rate_window_secs) {
            out.push(RiskError::InvalidRateWindow(self.rate_window_secs));
        }
        for (list, raw) in [("allowlist", &self.allowlist), ("denylist", &self.denylist)] {
            if let Err(values) = CidrSet::parse(raw) {
                out.push(RiskError::InvalidCidrs { list, values });
            }
        }
        for raw in &self.countries {
            if !is_country_code(raw) {
                out.push(RiskError::InvalidCountry(raw.clone()));
            }
        }
        for p in self.probe_paths.iter().filter(|p| p.is_empty()) {
            out.push(RiskError::EmptyProbePath(p.clone()));
        }
        out
    }
}

/// Two ASCII letters, surrounding whitespace allowed (any case).
pub(crate) fn is_country_code(raw: &str) -> bool {
    matches!(raw.trim().as_bytes(), &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_section_is_the_default() {
        let cfg: RiskConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, RiskConfig::default());
        assert_eq!(cfg.rate_window_secs, 10);
        assert_eq!(cfg.probe_paths.len(), DEFAULT_PROBE_PATHS.len());
    }

    #[test]
    fn partial_section_keeps_other_defaults() {
        let cfg: RiskConfig = toml::from_str(
            r#"
            rate_limit = 120
            countries = ["KP"]
            denylist = ["203.0.113.0/24"]
            [weights]
            ua_cli = 0.7
            "#,
        )
        .unwrap();
        assert_eq!(cfg.rate_limit, 120.0);
        assert_eq!(cfg.countries, ["KP"]);
        assert_eq!(cfg.weights.ua_cli, 0.7);
        assert_eq!(cfg.weights.ua_library, Weights::default().ua_library);
        assert_eq!(cfg.probe_paths.len(), DEFAULT_PROBE_PATHS.len());
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = toml::from_str::<RiskConfig>("rate_limt = 5").unwrap_err();
        assert!(err.to_string().contains("rate_limt"), "{err}");
        // The denylist weight is fixed by SPEC §3, so it is not a key.
        let err = toml::from_str::<RiskConfig>("[weights]\ndenylist = 0.5").unwrap_err();
        assert!(err.to_string().contains("denylist"), "{err}");
    }

    #[test]
    fn problems_lists_every_bad_value() {
        assert!(RiskConfig::default().problems().is_empty());
        let mut cfg = RiskConfig::default();
        cfg.weights.ua_cli = 1.5;
        cfg.weights.rate = -0.1;
        cfg.rate_limit = 0.0;
        cfg.countries = vec!["KP".into(), "Korea".into(), "1X".into()];
        cfg.denylist = vec!["203.0.113.0/24".into(), "nope".into()];
        cfg.probe_paths = vec![String::new()];
        let msgs: Vec<String> = cfg.problems().iter().map(ToString::to_string).collect();
        let all = msgs.join("; ");
        for part in [
            "ua_cli",
            "1.5",
            "risk.weights.rate",
            "rate_limit",
            "Korea",
            "1X",
            "nope",
        ] {
            assert!(all.contains(part), "{part} missing from {all}");
        }
        assert!(
            !all.contains("KP") && !all.contains("203.0.113.0/24"),
            "{all}"
        );
        assert_eq!(msgs.len(), 7, "{all}");
        assert!(crate::RiskEngine::new(&cfg).is_err());

        for (secs, ok) in [
            (0, false),
            (1, true),
            (MAX_RATE_WINDOW_SECS, true),
            (MAX_RATE_WINDOW_SECS + 1, false),
            (u64::MAX, false),
        ] {
            let cfg = RiskConfig {
                rate_window_secs: secs,
                ..RiskConfig::default()
            };
            assert_eq!(cfg.problems().is_empty(), ok, "{secs}");
            assert_eq!(crate::RiskEngine::new(&cfg).is_ok(), ok, "{secs}");
        }
    }

    #[test]
    fn default_probe_paths_are_distinct_and_rooted() {
        for (i, p) in DEFAULT_PROBE_PATHS.iter().enumerate() {
            assert!(p.starts_with('/'), "{p}");
            assert_eq!(*p, p.to_ascii_lowercase());
            assert!(!DEFAULT_PROBE_PATHS[..i].contains(p), "duplicate {p}");
        }
    }
}
