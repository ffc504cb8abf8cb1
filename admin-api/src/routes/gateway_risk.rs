//! The `risk` object and `risk_mode` of the gateway config (`GET/PUT /api/admin/gateway/config`):
//! the proxies' `[risk]` settings, changed at runtime. The API shape mirrors
//! [`watchpost_risk::RiskConfig`] field for field so the OpenAPI document states every bound the
//! validation enforces.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use watchpost_common::RiskMode;
use watchpost_risk::{RiskConfig, Weights};

/// Signal weights, each in [0, 1]. A weight left out takes its built-in default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RiskWeights {
    /// No `User-Agent`. Default 0.5.
    #[schema(minimum = 0, maximum = 1)]
    pub ua_empty: f64,
    /// curl, Wget, HTTPie… Default 0.4.
    #[schema(minimum = 0, maximum = 1)]
    pub ua_cli: f64,
    /// python-requests, Go-http-client, okhttp… Default 0.3.
    #[schema(minimum = 0, maximum = 1)]
    pub ua_library: f64,
    /// Bots (a declared well-known crawler weighs a fifth). Default 0.5.
    #[schema(minimum = 0, maximum = 1)]
    pub ua_bot: f64,
    /// Forwarding headers from an untrusted peer. Default 0.6.
    #[schema(minimum = 0, maximum = 1)]
    pub spoofed_forwarded: f64,
    /// Unparseable forwarding header entry. Default 0.4.
    #[schema(minimum = 0, maximum = 1)]
    pub malformed_forwarded: f64,
    /// Over the rate limit. Default 0.9.
    #[schema(minimum = 0, maximum = 1)]
    pub rate: f64,
    /// A probe path. Default 0.9.
    #[schema(minimum = 0, maximum = 1)]
    pub path_probe: f64,
    /// Headers inconsistent with the UA. Default 0.4.
    #[schema(minimum = 0, maximum = 1)]
    pub header_anomaly: f64,
    /// Country in `countries`. Default 0.5.
    #[schema(minimum = 0, maximum = 1)]
    pub country: f64,
}

impl Default for RiskWeights {
    fn default() -> Self {
        Weights::default().into()
    }
}

impl From<Weights> for RiskWeights {
    fn from(w: Weights) -> Self {
        Self {
            ua_empty: w.ua_empty,
            ua_cli: w.ua_cli,
            ua_library: w.ua_library,
            ua_bot: w.ua_bot,
            spoofed_forwarded: w.spoofed_forwarded,
            malformed_forwarded: w.malformed_forwarded,
            rate: w.rate,
            path_probe: w.path_probe,
            header_anomaly: w.header_anomaly,
            country: w.country,
        }
    }
}

impl From<RiskWeights> for Weights {
    fn from(w: RiskWeights) -> Self {
        Self {
            ua_empty: w.ua_empty,
            ua_cli: w.ua_cli,
            ua_library: w.ua_library,
            ua_bot: w.ua_bot,
            spoofed_forwarded: w.spoofed_forwarded,
            malformed_forwarded: w.malformed_forwarded,
            rate: w.rate,
            path_probe: w.path_probe,
            header_anomaly: w.header_anomaly,
            country: w.country,
        }
    }
}

/// The proxies' risk settings (the `[risk]` section, at runtime). A field left out takes the
/// built-in default of `[risk]`, not the proxy file's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RiskSettings {
    /// Signal weights.
    pub weights: RiskWeights,
    /// The sliding window over which a client's requests are counted, in seconds (at most a
    /// day). Default 10.
    #[schema(minimum = 1, maximum = 86400)]
    pub rate_window_secs: u64,
    /// Requests per window a client may send before `rate` fires. Default 50.
    #[schema(exclusive_minimum = 0)]
    pub rate_limit: f64,
    /// ISO 3166-1 alpha-2 codes (any case) whose clients raise `country`; every bad entry is
    /// listed in the 400.
    #[schema(example = json!(["KP"]))]
    pub countries: Vec<String>,
    /// CIDRs (or single addresses) whose clients always score 0.
    pub allowlist: Vec<String>,
    /// CIDRs (or single addresses) whose clients always score 1, unless also allowlisted.
    #[schema(example = json!(["203.0.113.0/24"]))]
    pub denylist: Vec<String>,
    /// Path substrings (ASCII case-insensitive) that raise `path_probe`; none may be empty.
    /// Default: the built-in list of scanner paths.
    pub probe_paths: Vec<String>,
}

impl Default for RiskSettings {
    fn default() -> Self {
        RiskConfig::default().into()
    }
}

impl From<RiskConfig> for RiskSettings {
    fn from(c: RiskConfig) -> Self {
        Self {
            weights: c.weights.into(),
            rate_window_secs: c.rate_window_secs,
            rate_limit: c.rate_limit,
            countries: c.countries,
            allowlist: c.allowlist,
            denylist: c.denylist,
            probe_paths: c.probe_paths,
        }
    }
}

impl From<RiskSettings> for RiskConfig {
    fn from(s: RiskSettings) -> Self {
        Self {
            weights: s.weights.into(),
            rate_window_secs: s.rate_window_secs,
            rate_limit: s.rate_limit,
            countries: s.countries,
            allowlist: s.allowlist,
            denylist: s.denylist,
            probe_paths: s.probe_paths,
        }
    }
}

/// `risk_mode` in the OpenAPI document: one of the names the validation accepts.
pub(super) fn risk_mode_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(RiskMode::ALL.map(RiskMode::as_str)))
        .default(Some(RiskMode::default().as_str().into()))
        .build()
}
