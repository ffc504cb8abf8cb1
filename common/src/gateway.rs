//! The runtime gateway config (SPEC §4): what the admin API stores and announces, what every
//! proxy applies. One validation routine serves both sides, so a config the admin API accepts
//! is exactly a config the proxy applies.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use watchpost_risk::{RiskConfig, RiskEngine};

use crate::rules::{normalize_rules, CompiledRules, RuleDoc};

/// The CDN headers consulted in `cdn` mode when none are configured, in order.
pub const DEFAULT_CDN_HEADERS: [&str; 2] = ["cf-connecting-ip", "true-client-ip"];

/// How the proxy decides the client IP (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpMode {
    /// The socket peer is the client; forwarding headers are ignored.
    Direct,
    /// Forwarding headers are believed from trusted peers only.
    Proxy,
    /// A CDN header from a trusted peer names the client; otherwise the `proxy` rules.
    Cdn,
}

impl IpMode {
    pub const ALL: [IpMode; 3] = [IpMode::Direct, IpMode::Proxy, IpMode::Cdn];

    pub fn as_str(self) -> &'static str {
        match self {
            IpMode::Direct => "direct",
            IpMode::Proxy => "proxy",
            IpMode::Cdn => "cdn",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl fmt::Display for IpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one forwarding header a trusted hop sets, and the only one believed (like nginx's
/// `real_ip_header`): there is no precedence between headers for a client to exploit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For` (the default).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded` (its `for=` nodes).
    Forwarded,
    /// `X-Real-IP`.
    XRealIp,
}

impl ClientIpHeader {
    pub const ALL: [ClientIpHeader; 3] = [
        ClientIpHeader::XForwardedFor,
        ClientIpHeader::Forwarded,
        ClientIpHeader::XRealIp,
    ];

    /// The header name, lower-case; also the config value and the `ip_source` it yields.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientIpHeader::XForwardedFor => "x-forwarded-for",
            ClientIpHeader::Forwarded => "forwarded",
            ClientIpHeader::XRealIp => "x-real-ip",
        }
    }

    /// Parse a config value: exactly one of the lower-case names.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.as_str() == s)
    }
}

impl fmt::Display for ClientIpHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the proxy does with a request whose risk score reaches `risk_reject_threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RiskMode {
    /// Reject it (403), the default.
    #[default]
    Enforce,
    /// Let it through to the upstream and log it with `decision` = `flag`: a trial of the
    /// current risk settings that enforces nothing.
    LogOnly,
}

impl RiskMode {
    pub const ALL: [RiskMode; 2] = [RiskMode::Enforce, RiskMode::LogOnly];

    /// `enforce` or `log_only`, as the config document spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RiskMode::Enforce => "enforce",
            RiskMode::LogOnly => "log_only",
        }
    }

    /// Parse a config value: exactly one of the names.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl fmt::Display for RiskMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_risk_mode() -> String {
    RiskMode::default().as_str().to_string()
}

/// A risk engine compiled from a config's `risk` settings, built once when the config is
/// validated and shared by every request that takes the config. Two configs are equal when
/// their `risk` settings are: the engine is a pure function of them, so it is not compared.
#[derive(Debug, Clone)]
pub struct CompiledRisk(pub Arc<RiskEngine>);

impl PartialEq for CompiledRisk {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

fn default_client_ip_header() -> String {
    ClientIpHeader::default().as_str().to_string()
}

/// The wire form of the gateway config: what is stored in Redis and Postgres and sent over
/// the admin API. Everything is a plain string or number so that validation can report every
/// problem at once instead of failing on the first bad field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayConfigDoc {
    pub ip_mode: String,
    #[serde(default)]
    pub trusted_cidrs: Vec<String>,
    pub risk_reject_threshold: f64,
    /// Headers consulted in `cdn` mode, in order (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdn_headers: Option<Vec<String>>,
    /// The forwarding header trusted hops set: `x-forwarded-for` (default), `forwarded` or
    /// `x-real-ip`. Documents stored before this field existed read as the default.
    #[serde(default = "default_client_ip_header")]
    pub client_ip_header: String,
    /// `cdn` mode: peers whose CDN header is believed (the CDN's own ranges), apart from
    /// `trusted_cidrs`. Empty (the default, and what older documents read as): no CDN header
    /// is believed.
    #[serde(default)]
    pub cdn_cidrs: Vec<String>,
    /// The `[risk]` settings (weights, countries, allowlist, denylist, rate limit and window,
    /// probe paths). `null` or absent: each proxy uses its own file's `[risk]`. Fields left out
    /// of the object take the built-in defaults of `[risk]`.
    #[serde(default)]
    pub risk: Option<RiskConfig>,
    /// `enforce` (default) or `log_only`. Documents stored before this field existed read as
    /// `enforce`.
    #[serde(default = "default_risk_mode")]
    pub risk_mode: String,
    /// The gateway rules (`/api/admin/gateway/rules`), tried before the risk score. Written by
    /// the admin API into the document it publishes to Redis; the stored config versions
    /// leave it out. Absent: no rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleDoc>,
    #[serde(default)]
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
}

/// One thing wrong with a gateway config.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    UnknownIpMode(String),
    InvalidCidrs(Vec<String>),
    ThresholdOutOfRange(f64),
    InvalidCdnHeaders(Vec<String>),
    UnknownClientIpHeader(String),
    InvalidCdnCidrs(Vec<String>),
    /// One bad value of the `risk` settings.
    Risk(watchpost_risk::RiskError),
    UnknownRiskMode(String),
    /// Problems of the `rules`, each naming its rule.
    Rules(Vec<String>),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::UnknownIpMode(m) => {
                write!(f, "ip_mode {m:?} is not one of direct, proxy, cdn")
            }
            Problem::InvalidCidrs(c) => {
                write!(f, "trusted_cidrs has invalid CIDRs: {}", c.join(", "))
            }
            Problem::ThresholdOutOfRange(t) => {
                write!(f, "risk_reject_threshold {t} is outside [0, 1]")
            }
            Problem::InvalidCdnHeaders(h) => {
                write!(f, "cdn_headers has invalid header names: {}", h.join(", "))
            }
            Problem::UnknownClientIpHeader(h) => write!(
                f,
                "client_ip_header {h:?} is not one of x-forwarded-for, forwarded, x-real-ip"
            ),
            Problem::InvalidCdnCidrs(c) => {
                write!(f, "cdn_cidrs has invalid CIDRs: {}", c.join(", "))
            }
            Problem::Risk(e) => e.fmt(f),
            Problem::UnknownRiskMode(m) => {
                write!(f, "risk_mode {m:?} is not one of enforce, log_only")
            }
            Problem::Rules(p) => f.write_str(&p.join("; ")),
        }
    }
}

/// A gateway config that failed validation, with every problem found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GatewayConfigError {
    #[error("invalid gateway config: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
    #[error("gateway config is not valid JSON: {0}")]
    Json(String),
}

impl GatewayConfigError {
    /// The individual problems (empty for a JSON syntax error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            GatewayConfigError::Invalid(p) => p,
            GatewayConfigError::Json(_) => &[],
        }
    }
}

/// A validated gateway config, ready to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    pub ip_mode: IpMode,
    pub trusted_cidrs: Vec<IpNet>,
    pub risk_reject_threshold: f64,
    /// Lower-case header names, in order.
    pub cdn_headers: Vec<http::HeaderName>,
    /// The one forwarding header believed from trusted peers.
    pub client_ip_header: ClientIpHeader,
    /// `cdn` mode: peers whose CDN header is believed.
    pub cdn_cidrs: Vec<IpNet>,
    /// The runtime `[risk]` settings; `None`: the proxy's file `[risk]`.
    pub risk: Option<RiskConfig>,
    /// The engine compiled from `risk`, when set.
    pub risk_engine: Option<CompiledRisk>,
    /// Enforce rejects, or only flag them.
    pub risk_mode: RiskMode,
    /// The rules, normalised, in the order they were given (not yet sorted by priority).
    pub rules: Vec<RuleDoc>,
    /// The enabled rules, ready to match, in the order they are tried.
    pub compiled_rules: Arc<CompiledRules>,
    pub version: u64,
    pub updated_at: Option<String>,
    pub updated_by: Option<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            ip_mode: IpMode::Direct,
            trusted_cidrs: Vec::new(),
            risk_reject_threshold: 0.8,
            cdn_headers: default_cdn_headers(),
            client_ip_header: ClientIpHeader::default(),
            cdn_cidrs: Vec::new(),
            risk: None,
            risk_engine: None,
            risk_mode: RiskMode::default(),
            rules: Vec::new(),
            compiled_rules: Arc::default(),
            version: 0,
            updated_at: None,
            updated_by: None,
        }
    }
}

fn default_cdn_headers() -> Vec<http::HeaderName> {
    DEFAULT_CDN_HEADERS
        .iter()
        .map(|h| http::HeaderName::from_static(h))
        .collect()
}

/// Parse one CIDR. A bare address is taken as a host route (/32 or /128); host bits are
/// cleared; IPv4-mapped IPv6 networks become the IPv4 network they denote.
pub fn parse_cidr(raw: &str) -> Option<IpNet> {
    let s = raw.trim();
    if s.is_empty() {
        return None;
    }
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => IpNet::from(s.parse::<IpAddr>().ok()?),
    };
    let net = match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).ok()?,
            None => net,
        },
        _ => net,
    };
    Some(net.trunc())
}

/// Parse a list of CIDRs, listing every entry that does not parse.
pub fn parse_cidrs<S: AsRef<str>>(raw: &[S]) -> Result<Vec<IpNet>, Vec<String>> {
    let mut ok = Vec::with_capacity(raw.len());
    let mut bad = Vec::new();
    for r in raw {
        match parse_cidr(r.as_ref()) {
            Some(n) => ok.push(n),
            None => bad.push(r.as_ref().to_string()),
        }
    }
    if bad.is_empty() {
        Ok(ok)
    } else {
        Err(bad)
    }
}

impl GatewayConfig {
    /// Validate a wire document, reporting every problem at once.
    pub fn from_doc(doc: &GatewayConfigDoc) -> Result<Self, GatewayConfigError> {
        let mut problems = Vec::new();
        let ip_mode = IpMode::parse(doc.ip_mode.trim());
        if ip_mode.is_none() {
            problems.push(Problem::UnknownIpMode(doc.ip_mode.clone()));
        }
        let trusted = match parse_cidrs(&doc.trusted_cidrs) {
            Ok(t) => t,
            Err(bad) => {
                problems.push(Problem::InvalidCidrs(bad));
                Vec::new()
            }
        };
        let t = doc.risk_reject_threshold;
        if !(0.0..=1.0).contains(&t) {
            problems.push(Problem::ThresholdOutOfRange(t));
        }
        let cdn_headers = match &doc.cdn_headers {
            None => default_cdn_headers(),
            Some(list) => {
                let mut ok = Vec::new();
                let mut bad = Vec::new();
                for h in list {
                    match http::HeaderName::from_bytes(h.trim().as_bytes()) {
                        Ok(n) => ok.push(n),
                        Err(_) => bad.push(h.clone()),
                    }
                }
                if !bad.is_empty() {
                    problems.push(Problem::InvalidCdnHeaders(bad));
                }
                ok
            }
        };
        let client_ip_header = ClientIpHeader::parse(&doc.client_ip_header);
        if client_ip_header.is_none() {
            problems.push(Problem::UnknownClientIpHeader(doc.client_ip_header.clone()));
        }
        let cdn_cidrs = match parse_cidrs(&doc.cdn_cidrs) {
            Ok(c) => c,
            Err(bad) => {
                problems.push(Problem::InvalidCdnCidrs(bad));
                Vec::new()
            }
        };
        let risk_engine = match &doc.risk {
            None => None,
            Some(risk) => {
                let bad = risk.problems();
                if bad.is_empty() {
                    match RiskEngine::new(risk) {
                        Ok(engine) => Some(CompiledRisk(Arc::new(engine))),
                        Err(e) => {
                            problems.push(Problem::Risk(e));
                            None
                        }
                    }
                } else {
                    problems.extend(bad.into_iter().map(Problem::Risk));
                    None
                }
            }
        };
        let risk_mode = RiskMode::parse(&doc.risk_mode);
        if risk_mode.is_none() {
            problems.push(Problem::UnknownRiskMode(doc.risk_mode.clone()));
        }
        let mut rules = doc.rules.clone();
        let rule_problems = normalize_rules(&mut rules);
        if !rule_problems.is_empty() {
            problems.push(Problem::Rules(rule_problems));
        }
        match (ip_mode, client_ip_header, risk_mode, problems.is_empty()) {
            (Some(ip_mode), Some(client_ip_header), Some(risk_mode), true) => Ok(Self {
                ip_mode,
                trusted_cidrs: trusted,
                risk_reject_threshold: t,
                cdn_headers,
                client_ip_header,
                cdn_cidrs,
                risk: doc.risk.clone(),
                risk_engine,
                risk_mode,
                compiled_rules: Arc::new(CompiledRules::compile(&rules)),
                rules,
                version: doc.version,
                updated_at: doc.updated_at.clone(),
                updated_by: doc.updated_by.clone(),
            }),
            _ => Err(GatewayConfigError::Invalid(problems)),
        }
    }

    /// Parse and validate the JSON stored in Redis.
    pub fn from_json(json: &str) -> Result<Self, GatewayConfigError> {
        let doc: GatewayConfigDoc =
            serde_json::from_str(json).map_err(|e| GatewayConfigError::Json(e.to_string()))?;
        Self::from_doc(&doc)
    }

    /// The wire document for this config.
    pub fn to_doc(&self) -> GatewayConfigDoc {
        let cdn: Vec<String> = self
            .cdn_headers
            .iter()
            .map(|h| h.as_str().to_string())
            .collect();
        let default_cdn = cdn.iter().map(String::as_str).eq(DEFAULT_CDN_HEADERS);
        GatewayConfigDoc {
            ip_mode: self.ip_mode.as_str().to_string(),
            trusted_cidrs: self.trusted_cidrs.iter().map(ToString::to_string).collect(),
            risk_reject_threshold: self.risk_reject_threshold,
            cdn_headers: if default_cdn { None } else { Some(cdn) },
            client_ip_header: self.client_ip_header.as_str().to_string(),
            cdn_cidrs: self.cdn_cidrs.iter().map(ToString::to_string).collect(),
            risk: self.risk.clone(),
            risk_mode: self.risk_mode.as_str().to_string(),
            rules: self.rules.clone(),
            version: self.version,
            updated_at: self.updated_at.clone(),
            updated_by: self.updated_by.clone(),
        }
    }

    /// The JSON stored in Redis.
    pub fn to_json(&self) -> String {
        // Serializing a struct of strings and numbers cannot fail; fall back to an empty
        // object rather than panic if serde ever disagrees.
        serde_json::to_string(&self.to_doc()).unwrap_or_else(|_| "{}".to_string())
    }

    /// Whether `ip` (already normalised) lies in a trusted CIDR.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_cidrs.iter().any(|n| n.contains(&ip))
    }

    /// The risk engine this config sets, or `file` (the proxy's own `[risk]`) when it sets
    /// none.
    pub fn risk_engine<'a>(&'a self, file: &'a RiskEngine) -> &'a RiskEngine {
        self.risk_engine.as_ref().map_or(file, |c| &c.0)
    }

    /// Whether `ip` (already normalised) lies in a CDN range (`cdn_cidrs`).
    pub fn is_cdn(&self, ip: IpAddr) -> bool {
        self.cdn_cidrs.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(mode: &str, cidrs: &[&str], t: f64) -> GatewayConfigDoc {
        GatewayConfigDoc {
            ip_mode: mode.into(),
            trusted_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            risk_reject_threshold: t,
            cdn_headers: None,
            client_ip_header: "x-forwarded-for".into(),
            cdn_cidrs: Vec::new(),
            risk: None,
            risk_mode: "enforce".into(),
            rules: Vec::new(),
            version: 3,
            updated_at: None,
            updated_by: None,
        }
    }

    #[test]
    fn valid_doc_round_trips() {
        let c = GatewayConfig::from_doc(&doc("proxy", &["10.0.0.0/8", "2001:db8::/32"], 0.5))
            .expect("valid");
        assert_eq!(c.ip_mode, IpMode::Proxy);
        assert_eq!(c.version, 3);
        let again = GatewayConfig::from_json(&c.to_json()).expect("round trip");
        assert_eq!(again, c);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err =
            GatewayConfig::from_doc(&doc("sideways", &["10.0.0.0/8", "nope", "1.2.3.4/33"], 1.5))
                .expect_err("invalid");
        let msg = err.to_string();
        assert!(msg.contains("sideways"), "{msg}");
        assert!(msg.contains("nope") && msg.contains("1.2.3.4/33"), "{msg}");
        assert!(msg.contains("1.5"), "{msg}");
        assert_eq!(err.problems().len(), 3);
    }

    #[test]
    fn nan_threshold_is_refused() {
        assert!(GatewayConfig::from_doc(&doc("direct", &[], f64::NAN)).is_err());
        assert!(GatewayConfig::from_doc(&doc("direct", &[], -0.01)).is_err());
        assert!(GatewayConfig::from_doc(&doc("direct", &[], 0.0)).is_ok());
        assert!(GatewayConfig::from_doc(&doc("direct", &[], 1.0)).is_ok());
    }

    #[test]
    fn cidr_parsing_normalises() {
        assert_eq!(parse_cidr("10.1.2.3/8"), "10.0.0.0/8".parse().ok());
        assert_eq!(parse_cidr(" 192.0.2.1 "), "192.0.2.1/32".parse().ok());
        assert_eq!(parse_cidr("::ffff:10.0.0.0/104"), "10.0.0.0/8".parse().ok());
        assert_eq!(parse_cidr("2001:db8::1"), "2001:db8::1/128".parse().ok());
        for bad in ["", "10.0.0.0/", "300.1.1.1/8", "x", "10.0.0.0/8/8"] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
    }

    #[test]
    fn client_ip_header_and_cdn_cidrs_are_validated_with_the_rest() {
        let mut d = doc("cdn", &["10.0.0.0/8"], 0.5);
        d.client_ip_header = "x-real-ip".into();
        d.cdn_cidrs = vec!["192.0.2.9/24".into(), "2001:db8::/32".into()];
        let c = GatewayConfig::from_doc(&d).expect("valid");
        assert_eq!(c.client_ip_header, ClientIpHeader::XRealIp);
        assert!(c.is_cdn("192.0.2.200".parse().expect("ip")));
        assert!(!c.is_cdn("10.0.0.1".parse().expect("ip")));
        let again = GatewayConfig::from_json(&c.to_json()).expect("round trip");
        assert_eq!(again, c);
        assert_eq!(again.to_doc().client_ip_header, "x-real-ip");
        assert_eq!(again.to_doc().cdn_cidrs, ["192.0.2.0/24", "2001:db8::/32"]);

        for bad in ["X-Real-IP", " forwarded", "", "x-client-ip"] {
            let mut d = doc("direct", &[], 0.5);
            d.client_ip_header = bad.into();
            assert!(GatewayConfig::from_doc(&d).is_err(), "{bad:?}");
        }
        let mut d = doc("sideways", &[], 0.5);
        d.client_ip_header = "x-client-ip".into();
        d.cdn_cidrs = vec!["192.0.2.0/24".into(), "cdn.example".into(), "".into()];
        let err = GatewayConfig::from_doc(&d).expect_err("invalid");
        let msg = err.to_string();
        for part in ["sideways", "x-client-ip", "cdn.example", "cdn_cidrs"] {
            assert!(msg.contains(part), "{part} missing from {msg}");
        }
        assert!(!msg.contains("192.0.2.0/24"), "{msg}");
        assert_eq!(err.problems().len(), 3);
    }

    #[test]
    fn documents_stored_before_the_new_fields_load_with_defaults() {
        let old = r#"{"ip_mode":"cdn","trusted_cidrs":["10.0.0.0/8"],"risk_reject_threshold":0.7,
                      "version":4,"updated_at":"2026-11-20T10:00:00.000Z","updated_by":"usr_1"}"#;
        let c = GatewayConfig::from_json(old).expect("old document loads");
        assert_eq!(c.client_ip_header, ClientIpHeader::XForwardedFor);
        assert!(c.cdn_cidrs.is_empty());
        assert_eq!(c.version, 4);
    }

    #[test]
    fn risk_settings_and_mode_round_trip() {
        let mut d = doc("direct", &[], 0.5);
        let mut risk = RiskConfig::default();
        risk.weights.ua_cli = 0.95;
        risk.countries = vec!["KP".into()];
        risk.denylist = vec!["203.0.113.0/24".into()];
        d.risk = Some(risk.clone());
        d.risk_mode = "log_only".into();
        let c = GatewayConfig::from_doc(&d).expect("valid");
        assert_eq!(c.risk_mode, RiskMode::LogOnly);
        assert_eq!(c.risk.as_ref(), Some(&risk));
        let file = RiskEngine::new(&RiskConfig::default()).expect("default engine");
        assert_eq!(c.risk_engine(&file).weights().ua_cli, 0.95);
        let again = GatewayConfig::from_json(&c.to_json()).expect("round trip");
        assert_eq!(again, c);
        assert_eq!(again.to_doc().risk_mode, "log_only");
        assert_eq!(again.risk_engine(&file).weights().ua_cli, 0.95);

        // Without `risk`, the proxy's own engine applies; a partial object takes defaults.
        let plain = GatewayConfig::from_doc(&doc("direct", &[], 0.5)).expect("valid");
        assert!(std::ptr::eq(plain.risk_engine(&file), &file));
        let partial = r#"{"ip_mode":"direct","risk_reject_threshold":0.8,
                          "risk":{"weights":{"rate":0.2}},"risk_mode":"enforce"}"#;
        let p = GatewayConfig::from_json(partial).expect("partial risk");
        let r = p.risk.expect("risk set");
        assert_eq!(r.weights.rate, 0.2);
        assert_eq!(r.rate_limit, RiskConfig::default().rate_limit);
        assert_eq!(r.probe_paths, RiskConfig::default().probe_paths);
    }

    #[test]
    fn risk_problems_are_listed_with_the_rest() {
        let mut d = doc("sideways", &[], 0.5);
        let mut risk = RiskConfig::default();
        risk.weights.country = 2.0;
        risk.countries = vec!["DE".into(), "Germany".into(), "X".into()];
        risk.allowlist = vec!["10.0.0.0/33".into()];
        d.risk = Some(risk);
        d.risk_mode = "trial".into();
        let err = GatewayConfig::from_doc(&d).expect_err("invalid");
        let msg = err.to_string();
        for part in [
            "sideways",
            "weights.country",
            "Germany",
            "\"X\"",
            "10.0.0.0/33",
            "trial",
        ] {
            assert!(msg.contains(part), "{part} missing from {msg}");
        }
        assert!(!msg.contains("DE\""), "{msg}");
        assert_eq!(err.problems().len(), 6, "{msg}");
    }

    #[test]
    fn documents_without_risk_read_as_enforce_with_the_file_risk() {
        let old = r#"{"ip_mode":"direct","risk_reject_threshold":0.7,"version":2}"#;
        let c = GatewayConfig::from_json(old).expect("old document loads");
        assert_eq!(c.risk_mode, RiskMode::Enforce);
        assert!(c.risk.is_none() && c.risk_engine.is_none());
        assert!(c.to_json().contains("\"risk\":null"));
    }

    #[test]
    fn bad_json_is_an_error_not_a_panic() {
        assert!(matches!(
            GatewayConfig::from_json("{"),
            Err(GatewayConfigError::Json(_))
        ));
        assert!(GatewayConfig::from_json("{\"ip_mode\":\"direct\"}").is_err());
    }
}
