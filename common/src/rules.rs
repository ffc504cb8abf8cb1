//! Gateway rules (fleet-wide block / allow / rate-limit / log-only rules): the wire form that
//! the admin API stores and publishes inside the gateway config document, and the one
//! validation both sides run, so that a rule the admin API accepts is a rule every proxy
//! applies.
//!
//! A rule matches a request when every part of its `match` that is given holds (an empty list
//! is "any"); rules are tried in `priority` order (lower first, then by id), and the first
//! *deciding* rule wins: `block`, `allow`, and `rate_limit` once its rate is exceeded.
//! `log_only` rules never decide; they tag the entry when no rule decides.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::gateway::parse_cidr;

/// Prefix of every rule id (`rul_` + a ULID).
pub const RULE_ID_PREFIX: &str = "rul_";

/// At most this many rules in one gateway config.
pub const MAX_RULES: usize = 10_000;
/// At most this many values in one list of a rule's `match`.
pub const MAX_MATCH_VALUES: usize = 10_000;
/// Longest `reason`, in bytes.
pub const MAX_REASON_BYTES: usize = 500;
/// Longest `path_prefixes` / `hosts` entry, in bytes.
pub const MAX_MATCH_TEXT_BYTES: usize = 1024;
/// Longest `rate_limit` window.
pub const MAX_RATE_WINDOW_SECS: u64 = 86_400;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleAction {
    /// Answer 403 (error envelope, code `BLOCKED`); the upstream is never contacted.
    Block,
    /// Let the request through without risk scoring.
    Allow,
    /// Count the client IP's requests per `rate.window_secs`; past `rate.requests` answer 429
    /// with `Retry-After`. Within its rate the rule does not decide.
    RateLimit,
    /// Decide nothing; a request no rule decides is tagged with the first `log_only` rule it
    /// matched.
    LogOnly,
}

impl RuleAction {
    pub const ALL: [RuleAction; 4] = [
        RuleAction::Block,
        RuleAction::Allow,
        RuleAction::RateLimit,
        RuleAction::LogOnly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::Block => "block",
            RuleAction::Allow => "allow",
            RuleAction::RateLimit => "rate_limit",
            RuleAction::LogOnly => "log_only",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for RuleAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `ua_types` a rule may name (the risk engine's UA classes).
pub const UA_TYPES: [&str; 6] = ["browser", "bot", "cli", "library", "empty", "unknown"];

/// What a request must look like for a rule to apply: every non-empty list must hold (one of
/// its values matches); empty lists match anything.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleMatch {
    /// Client-IP ranges (CIDRs or single addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<String>,
    /// ISO 3166-1 alpha-2 country codes of the client IP (any case on input).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub countries: Vec<String>,
    /// Path prefixes (case-sensitive, matched against the request path before the query).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_prefixes: Vec<String>,
    /// Exact hosts (case-insensitive, port ignored), or `*.example.com` for any subdomain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// HTTP methods (upper-case tokens; input of any case is upper-cased).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// UA classes: `browser`, `bot`, `cli`, `library`, `empty`, `unknown`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ua_types: Vec<String>,
}

impl RuleMatch {
    /// Whether no part is given (the rule would match every request).
    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty()
            && self.countries.is_empty()
            && self.path_prefixes.is_empty()
            && self.hosts.is_empty()
            && self.methods.is_empty()
            && self.ua_types.is_empty()
    }
}

/// A `rate_limit` rule's rate: at most `requests` per `window_secs` per client IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleRate {
    pub requests: u64,
    pub window_secs: u64,
}

/// One rule as stored and published (inside the gateway config document's `rules`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleDoc {
    /// `rul_…`.
    pub id: String,
    /// `block`, `allow`, `rate_limit` or `log_only`.
    pub action: String,
    #[serde(rename = "match", default)]
    pub match_: RuleMatch,
    /// Required for `rate_limit`, refused for the other actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RuleRate>,
    /// Lower first; ties by id.
    #[serde(default)]
    pub priority: i32,
    /// A disabled rule is kept but never applied.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Milliseconds since the Unix epoch after which the rule no longer applies (the proxies
    /// check it per request, so it lapses on time without a write); `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Why the rule exists (shown to operators, never to clients).
    #[serde(default)]
    pub reason: String,
}

fn yes() -> bool {
    true
}

/// One thing wrong with a rule. `Display` names the rule (when it has an id) and the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleProblem {
    InvalidId(String),
    DuplicateId(String),
    UnknownAction(String),
    InvalidCidrs(Vec<String>),
    UnknownCountries(Vec<String>),
    InvalidPathPrefixes(Vec<String>),
    InvalidHosts(Vec<String>),
    InvalidMethods(Vec<String>),
    UnknownUaTypes(Vec<String>),
    TooManyValues(&'static str),
    EmptyMatch,
    RateRequired,
    RateNotAllowed,
    InvalidRate(String),
    ReasonTooLong,
    InvalidReason,
    TooManyRules(usize),
}

impl fmt::Display for RuleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleProblem::InvalidId(id) => write!(f, "rule id {id:?} is not a rul_ id"),
            RuleProblem::DuplicateId(id) => write!(f, "rule id {id} appears twice"),
            RuleProblem::UnknownAction(a) => write!(
                f,
                "action {a:?} is not one of block, allow, rate_limit, log_only"
            ),
            RuleProblem::InvalidCidrs(v) => {
                write!(f, "match.cidrs has invalid CIDRs: {}", v.join(", "))
            }
            RuleProblem::UnknownCountries(v) => write!(
                f,
                "match.countries has unknown ISO 3166-1 alpha-2 codes: {}",
                v.join(", ")
            ),
            RuleProblem::InvalidPathPrefixes(v) => write!(
                f,
                "match.path_prefixes must start with / and hold no control characters: {}",
                v.join(", ")
            ),
            RuleProblem::InvalidHosts(v) => {
                write!(f, "match.hosts has invalid host names: {}", v.join(", "))
            }
            RuleProblem::InvalidMethods(v) => {
                write!(f, "match.methods has invalid methods: {}", v.join(", "))
            }
            RuleProblem::UnknownUaTypes(v) => write!(
                f,
                "match.ua_types has unknown UA types (browser, bot, cli, library, empty, unknown): {}",
                v.join(", ")
            ),
            RuleProblem::TooManyValues(list) => {
                write!(f, "match.{list} has more than {MAX_MATCH_VALUES} values")
            }
            RuleProblem::EmptyMatch => write!(
                f,
                "match must give at least one of cidrs, countries, path_prefixes, hosts, methods, ua_types"
            ),
            RuleProblem::RateRequired => {
                write!(f, "rate {{requests, window_secs}} is required for rate_limit")
            }
            RuleProblem::RateNotAllowed => write!(f, "rate is only allowed with rate_limit"),
            RuleProblem::InvalidRate(why) => write!(f, "rate: {why}"),
            RuleProblem::ReasonTooLong => {
                write!(f, "reason is longer than {MAX_REASON_BYTES} bytes")
            }
            RuleProblem::InvalidReason => write!(f, "reason must not hold control characters"),
            RuleProblem::TooManyRules(n) => {
                write!(f, "{n} rules is more than the {MAX_RULES} allowed")
            }
        }
    }
}

/// Whether `code` is an assigned ISO 3166-1 alpha-2 code (upper-case), or `XK` (Kosovo, which
/// GeoIP databases use).
pub fn is_known_country(code: &str) -> bool {
    code.len() == 2 && ISO_3166_ALPHA2.split(' ').any(|c| c == code) || code == "XK"
}

/// The assigned ISO 3166-1 alpha-2 codes.
const ISO_3166_ALPHA2: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG \
BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX \
CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN \
GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI \
KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ \
MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR \
PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC \
TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT \
ZA ZM ZW";

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// A host pattern: a DNS name (letters, digits, `-`, `.`), optionally `*.` in front.
fn valid_host_pattern(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl RuleDoc {
    /// Normalise in place (country codes and methods upper-cased, hosts lower-cased, CIDRs in
    /// canonical form, values trimmed) and list every problem. A rule with no problems is one
    /// every proxy can apply.
    pub fn normalize(&mut self) -> Vec<RuleProblem> {
        let mut problems = Vec::new();
        if !is_rule_id(&self.id) {
            problems.push(RuleProblem::InvalidId(self.id.clone()));
        }
        let action = RuleAction::parse(self.action.trim());
        match action {
            None => problems.push(RuleProblem::UnknownAction(self.action.clone())),
            Some(a) => self.action = a.as_str().to_string(),
        }
        let m = &mut self.match_;
        for (name, list) in [
            ("cidrs", &m.cidrs),
            ("countries", &m.countries),
            ("path_prefixes", &m.path_prefixes),
            ("hosts", &m.hosts),
            ("methods", &m.methods),
            ("ua_types", &m.ua_types),
        ] {
            if list.len() > MAX_MATCH_VALUES {
                problems.push(RuleProblem::TooManyValues(name));
            }
        }
        if m.is_empty() {
            problems.push(RuleProblem::EmptyMatch);
        }
        let mut bad = Vec::new();
        let mut cidrs = Vec::with_capacity(m.cidrs.len());
        for raw in &m.cidrs {
            match parse_cidr(raw) {
                Some(n) => cidrs.push(n.to_string()),
                None => bad.push(raw.clone()),
            }
        }
        if bad.is_empty() {
            m.cidrs = cidrs;
        } else {
            problems.push(RuleProblem::InvalidCidrs(bad));
        }
        let (ok, bad) = split(&m.countries, |raw| {
            let c = raw.trim().to_ascii_uppercase();
            is_known_country(&c).then_some(c)
        });
        if bad.is_empty() {
            m.countries = ok;
        } else {
            problems.push(RuleProblem::UnknownCountries(bad));
        }
        let (ok, bad) = split(&m.path_prefixes, |raw| {
            (raw.starts_with('/') && raw.len() <= MAX_MATCH_TEXT_BYTES && !has_control(raw))
                .then(|| raw.clone())
        });
        if bad.is_empty() {
            m.path_prefixes = ok;
        } else {
            problems.push(RuleProblem::InvalidPathPrefixes(bad));
        }
        let (ok, bad) = split(&m.hosts, |raw| {
            let h = raw.trim().to_ascii_lowercase();
            valid_host_pattern(&h).then_some(h)
        });
        if bad.is_empty() {
            m.hosts = ok;
        } else {
            problems.push(RuleProblem::InvalidHosts(bad));
        }
        let (ok, bad) = split(&m.methods, |raw| {
            let up = raw.trim().to_ascii_uppercase();
            (!up.is_empty() && up.len() <= 32 && http::Method::from_bytes(up.as_bytes()).is_ok())
                .then_some(up)
        });
        if bad.is_empty() {
            m.methods = ok;
        } else {
            problems.push(RuleProblem::InvalidMethods(bad));
        }
        let (ok, bad) = split(&m.ua_types, |raw| {
            let t = raw.trim().to_ascii_lowercase();
            UA_TYPES.contains(&t.as_str()).then_some(t)
        });
        if bad.is_empty() {
            m.ua_types = ok;
        } else {
            problems.push(RuleProblem::UnknownUaTypes(bad));
        }
        match (action, self.rate) {
            (Some(RuleAction::RateLimit), None) => problems.push(RuleProblem::RateRequired),
            (Some(RuleAction::RateLimit), Some(r)) => {
                if r.requests == 0 {
                    problems.push(RuleProblem::InvalidRate(
                        "requests must be at least 1".into(),
                    ));
                }
                if !(1..=MAX_RATE_WINDOW_SECS).contains(&r.window_secs) {
                    problems.push(RuleProblem::InvalidRate(format!(
                        "window_secs must be between 1 and {MAX_RATE_WINDOW_SECS}"
                    )));
                }
            }
            (Some(_), Some(_)) => problems.push(RuleProblem::RateNotAllowed),
            _ => {}
        }
        if self.reason.len() > MAX_REASON_BYTES {
            problems.push(RuleProblem::ReasonTooLong);
        }
        if has_control(&self.reason) {
            problems.push(RuleProblem::InvalidReason);
        }
        problems
    }

    /// The parsed action (call after [`Self::normalize`] found no problems).
    pub fn action(&self) -> Option<RuleAction> {
        RuleAction::parse(&self.action)
    }

    /// The parsed CIDRs (call after [`Self::normalize`] found no problems).
    pub fn cidrs(&self) -> Vec<IpNet> {
        self.match_
            .cidrs
            .iter()
            .filter_map(|c| parse_cidr(c))
            .collect()
    }

    /// Whether the rule applies at `now_ms`: enabled and not expired.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.enabled && self.expires_at_ms.is_none_or(|t| now_ms < t)
    }
}

/// Normalise a whole rule list: every rule's problems (prefixed with its id), duplicate ids,
/// and the overall count.
pub fn normalize_rules(rules: &mut [RuleDoc]) -> Vec<String> {
    let mut out = Vec::new();
    if rules.len() > MAX_RULES {
        out.push(RuleProblem::TooManyRules(rules.len()).to_string());
    }
    let mut seen = std::collections::HashSet::new();
    for r in rules.iter_mut() {
        if !seen.insert(r.id.clone()) {
            out.push(RuleProblem::DuplicateId(r.id.clone()).to_string());
        }
        for p in r.normalize() {
            out.push(format!("rule {}: {p}", r.id));
        }
    }
    out
}

/// `rul_` followed by 26 Crockford base-32 characters (a ULID).
pub fn is_rule_id(id: &str) -> bool {
    id.strip_prefix(RULE_ID_PREFIX).is_some_and(|rest| {
        rest.len() == 26
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b.is_ascii_uppercase() && !b"ILOU".contains(&b)))
    })
}

fn split(raw: &[String], f: impl Fn(&String) -> Option<String>) -> (Vec<String>, Vec<String>) {
    let mut ok = Vec::with_capacity(raw.len());
    let mut bad = Vec::new();
    for r in raw {
        match f(r) {
            Some(v) => ok.push(v),
            None => bad.push(r.clone()),
        }
    }
    (ok, bad)
}

/// What a rule is matched against: the request as the proxy decided it (or as an access-log
/// entry recorded it).
#[derive(Debug, Clone, Copy)]
pub struct RuleRequest<'a> {
    /// The client IP (normalised).
    pub ip: IpAddr,
    /// The client's country code (upper-case), or `""`.
    pub country: &'a str,
    /// The request path, without the query.
    pub path: &'a str,
    /// The `Host` (any case, with or without a port), or `""`.
    pub host: &'a str,
    /// The method, upper-case.
    pub method: &'a str,
    /// The UA class name (`browser`, `bot`, …).
    pub ua_type: &'a str,
}

/// One rule ready to match.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledRule {
    pub id: Arc<str>,
    pub action: RuleAction,
    pub rate: Option<RuleRate>,
    pub priority: i32,
    pub expires_at_ms: Option<u64>,
    cidrs: Vec<IpNet>,
    countries: Vec<[u8; 2]>,
    path_prefixes: Vec<String>,
    /// Exact hosts, lower-case.
    hosts: Vec<String>,
    /// `*.example.com` patterns, stored as `.example.com`.
    host_suffixes: Vec<String>,
    methods: Vec<String>,
    ua_types: Vec<String>,
}

impl CompiledRule {
    /// Whether every given part of the rule's `match` holds for `req`.
    pub fn matches(&self, req: &RuleRequest<'_>) -> bool {
        (self.cidrs.is_empty() || self.cidrs.iter().any(|n| n.contains(&req.ip)))
            && self.matches_except_ip(req)
    }

    /// Whether every part but `cidrs` holds (for a caller that matched the IP already).
    pub fn matches_except_ip(&self, req: &RuleRequest<'_>) -> bool {
        (self.countries.is_empty()
            || matches!(req.country.as_bytes(), &[a, b] if self.countries.contains(&[a.to_ascii_uppercase(), b.to_ascii_uppercase()])))
            && (self.path_prefixes.is_empty()
                || self
                    .path_prefixes
                    .iter()
                    .any(|p| req.path.starts_with(p.as_str())))
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == req.method))
            && (self.ua_types.is_empty() || self.ua_types.iter().any(|t| t == req.ua_type))
            && ((self.hosts.is_empty() && self.host_suffixes.is_empty())
                || self.host_matches(req.host))
    }

    fn host_matches(&self, host: &str) -> bool {
        let host = strip_port(host);
        let eq = |h: &String| h.len() == host.len() && h.eq_ignore_ascii_case(host);
        self.hosts.iter().any(eq)
            || self.host_suffixes.iter().any(|s| {
                host.len() > s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            })
    }

    /// The CIDRs this rule is limited to (empty: any IP).
    pub fn cidrs(&self) -> &[IpNet] {
        &self.cidrs
    }

    /// Whether the rule applies at `now_ms` (not expired; disabled rules are never compiled).
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|t| now_ms < t)
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

/// The enabled rules of a config, in the order they are tried (priority, then id).
///
/// Rules with `cidrs` are found through a prefix trie per address family (every prefix
/// covering the client IP, in one walk of at most 32 / 128 levels), so their number does not
/// matter per request; rules without `cidrs` are checked one by one. Both are merged back into
/// the order the rules are tried.
#[derive(Clone, Default)]
pub struct CompiledRules {
    rules: Vec<CompiledRule>,
    /// Positions in `rules` of the rules without `cidrs`, ascending.
    any_ip: Vec<u32>,
    /// Every IPv4 CIDR of a rule → the positions of the rules naming it, ascending.
    v4: PrefixMap<Ipv4Net, Vec<u32>>,
    /// Every IPv6 CIDR of a rule → the positions of the rules naming it, ascending.
    v6: PrefixMap<Ipv6Net, Vec<u32>>,
}

impl PartialEq for CompiledRules {
    fn eq(&self, other: &Self) -> bool {
        // The index is derived from the rules.
        self.rules == other.rules
    }
}

impl fmt::Debug for CompiledRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledRules")
            .field("rules", &self.rules)
            .field("v4_prefixes", &self.v4.len())
            .field("v6_prefixes", &self.v6.len())
            .finish()
    }
}

impl CompiledRules {
    /// Compile normalised rules (see [`normalize_rules`]); disabled rules and rules whose
    /// values do not parse are left out.
    pub fn compile(docs: &[RuleDoc]) -> Self {
        let mut rules: Vec<CompiledRule> = docs
            .iter()
            .filter(|d| d.enabled)
            .filter_map(|d| {
                let action = d.action()?;
                let (suffixes, hosts): (Vec<String>, Vec<String>) = d
                    .match_
                    .hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .partition(|h| h.starts_with("*."));
                Some(CompiledRule {
                    id: Arc::from(d.id.as_str()),
                    action,
                    rate: d.rate,
                    priority: d.priority,
                    expires_at_ms: d.expires_at_ms,
                    cidrs: d.cidrs(),
                    countries: d
                        .match_
                        .countries
                        .iter()
                        .filter_map(|c| match c.as_bytes() {
                            &[a, b] => Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()]),
                            _ => None,
                        })
                        .collect(),
                    path_prefixes: d.match_.path_prefixes.clone(),
                    hosts,
                    host_suffixes: suffixes.into_iter().map(|s| s[1..].to_string()).collect(),
                    methods: d.match_.methods.clone(),
                    ua_types: d.match_.ua_types.clone(),
                })
            })
            .collect();
        rules.sort_by(|a, b| a.priority.cmp(&b.priority).then_with(|| a.id.cmp(&b.id)));
        // At most MAX_RULES rules are accepted, far below u32::MAX; a longer list (which
        // validation refuses) is cut rather than mis-indexed.
        rules.truncate(u32::MAX as usize);
        let mut any_ip = Vec::new();
        let mut v4: PrefixMap<Ipv4Net, Vec<u32>> = PrefixMap::new();
        let mut v6: PrefixMap<Ipv6Net, Vec<u32>> = PrefixMap::new();
        for (i, rule) in rules.iter().enumerate() {
            let i = i as u32;
            if rule.cidrs.is_empty() {
                any_ip.push(i);
                continue;
            }
            for net in &rule.cidrs {
                // Positions are visited in ascending order, so every list stays sorted; a
                // rule naming one network twice is listed once.
                let list = match net.trunc() {
                    IpNet::V4(n) => v4.entry(n).or_default(),
                    IpNet::V6(n) => v6.entry(n).or_default(),
                };
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        Self {
            rules,
            any_ip,
            v4,
            v6,
        }
    }

    /// Every rule, in the order they are tried.
    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The live rules matching `req`, in the order they are tried.
    pub fn matching<'s>(
        &'s self,
        req: &'s RuleRequest<'s>,
        now_ms: u64,
    ) -> impl Iterator<Item = &'s CompiledRule> + 's {
        self.matching_indexed(req, now_ms).map(|(_, r)| r)
    }

    /// [`Self::matching`] with each rule's position in [`Self::rules`] (for a caller keeping
    /// per-rule state alongside).
    pub fn matching_indexed<'s>(
        &'s self,
        req: &'s RuleRequest<'s>,
        now_ms: u64,
    ) -> impl Iterator<Item = (usize, &'s CompiledRule)> + 's {
        let by_ip = self.covering(req.ip);
        Merge::new(by_ip.into_iter(), self.any_ip.iter().copied()).filter_map(move |i| {
            let i = i as usize;
            let rule = self.rules.get(i)?;
            (rule.is_live(now_ms) && rule.matches_except_ip(req)).then_some((i, rule))
        })
    }

    /// The same as [`Self::matching`] by testing every rule in turn: the reference the trie
    /// is checked (and benchmarked) against.
    pub fn matching_linear<'s>(
        &'s self,
        req: &'s RuleRequest<'s>,
        now_ms: u64,
    ) -> impl Iterator<Item = &'s CompiledRule> + 's {
        self.rules
            .iter()
            .filter(move |r| r.is_live(now_ms) && r.matches(req))
    }

    /// Positions of the rules with a CIDR covering `ip`, ascending, without repeats (on the
    /// stack unless more than a few rules cover it).
    fn covering(&self, ip: IpAddr) -> SmallVec<[u32; 8]> {
        let mut hits = SmallVec::new();
        let mut lists = 0;
        let mut add = |ids: &Vec<u32>| {
            hits.extend_from_slice(ids);
            lists += 1;
        };
        match ip {
            IpAddr::V4(a) => {
                if !self.v4.is_empty() {
                    self.v4
                        .cover(&Ipv4Net::from(a))
                        .for_each(|(_, ids)| add(ids));
                }
            }
            IpAddr::V6(a) => {
                if !self.v6.is_empty() {
                    self.v6
                        .cover(&Ipv6Net::from(a))
                        .for_each(|(_, ids)| add(ids));
                }
            }
        }
        if lists > 1 {
            hits.sort_unstable();
            hits.dedup();
        }
        hits
    }
}

/// Two ascending sequences merged into one (a value in both is yielded once).
struct Merge<A: Iterator<Item = u32>, B: Iterator<Item = u32>> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
}

impl<A: Iterator<Item = u32>, B: Iterator<Item = u32>> Merge<A, B> {
    fn new(a: A, b: B) -> Self {
        Self {
            a: a.peekable(),
            b: b.peekable(),
        }
    }
}

impl<A: Iterator<Item = u32>, B: Iterator<Item = u32>> Iterator for Merge<A, B> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        match (self.a.peek().copied(), self.b.peek().copied()) {
            (Some(x), Some(y)) if x < y => self.a.next(),
            (Some(x), Some(y)) if y < x => self.b.next(),
            (Some(_), Some(_)) => {
                self.b.next();
                self.a.next()
            }
            (Some(_), None) => self.a.next(),
            (None, _) => self.b.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0C";

    fn rule(action: &str) -> RuleDoc {
        RuleDoc {
            id: ID.into(),
            action: action.into(),
            match_: RuleMatch {
                cidrs: vec!["203.0.113.9/24".into()],
                ..RuleMatch::default()
            },
            rate: None,
            priority: 0,
            enabled: true,
            expires_at_ms: None,
            reason: "scanner".into(),
        }
    }

    #[test]
    fn a_valid_rule_is_normalised() {
        let mut r = rule("block");
        r.match_.countries = vec![" de".into(), "US".into()];
        r.match_.methods = vec!["post".into()];
        r.match_.hosts = vec!["API.Example.com".into(), "*.example.org".into()];
        r.match_.ua_types = vec!["CLI".into()];
        r.match_.path_prefixes = vec!["/wp-admin".into()];
        assert_eq!(r.normalize(), vec![]);
        assert_eq!(r.match_.cidrs, ["203.0.113.0/24"]);
        assert_eq!(r.match_.countries, ["DE", "US"]);
        assert_eq!(r.match_.methods, ["POST"]);
        assert_eq!(r.match_.hosts, ["api.example.com", "*.example.org"]);
        assert_eq!(r.match_.ua_types, ["cli"]);
        assert_eq!(r.action(), Some(RuleAction::Block));
    }

    #[test]
    fn every_bad_value_is_listed() {
        let mut r = rule("rate_limit");
        r.match_.cidrs = vec!["10.0.0.0/8".into(), "10.0.0.0/33".into(), "nope".into()];
        r.match_.countries = vec!["DE".into(), "ZZ".into(), "Germany".into()];
        r.match_.path_prefixes = vec!["admin".into(), "/ok".into(), "/a\u{0}b".into()];
        r.match_.ua_types = vec!["robot".into()];
        r.match_.methods = vec!["GE T".into()];
        r.match_.hosts = vec!["exa mple.com".into()];
        r.reason = "x".repeat(MAX_REASON_BYTES + 1);
        let problems: Vec<String> = r.normalize().iter().map(ToString::to_string).collect();
        let all = problems.join("; ");
        for part in [
            "10.0.0.0/33",
            "nope",
            "ZZ",
            "Germany",
            "admin",
            "robot",
            "GE T",
            "exa mple.com",
            "rate {requests, window_secs} is required",
            "reason is longer",
        ] {
            assert!(all.contains(part), "{part} missing from {all}");
        }
        assert!(
            !all.contains("10.0.0.0/8,") && !all.contains("\"DE\""),
            "{all}"
        );
    }

    #[test]
    fn rate_belongs_to_rate_limit_only() {
        let mut r = rule("rate_limit");
        r.rate = Some(RuleRate {
            requests: 10,
            window_secs: 60,
        });
        assert_eq!(r.normalize(), vec![]);
        let mut r = rule("block");
        r.rate = Some(RuleRate {
            requests: 10,
            window_secs: 60,
        });
        assert_eq!(r.normalize(), vec![RuleProblem::RateNotAllowed]);
        let mut r = rule("rate_limit");
        r.rate = Some(RuleRate {
            requests: 0,
            window_secs: 0,
        });
        assert_eq!(r.normalize().len(), 2);
    }

    #[test]
    fn an_empty_match_and_a_bad_id_are_refused() {
        let mut r = rule("allow");
        r.match_ = RuleMatch::default();
        r.id = "rul_short".into();
        let p = r.normalize();
        assert!(p.contains(&RuleProblem::EmptyMatch), "{p:?}");
        assert!(
            p.contains(&RuleProblem::InvalidId("rul_short".into())),
            "{p:?}"
        );
        assert!(is_rule_id(ID));
        assert!(!is_rule_id("usr_01JDX3Q7Z5R8KX4W2M9T6V1B0C"));
        assert!(!is_rule_id("rul_01JDX3Q7Z5R8KX4W2M9T6V1B0c"));
    }

    #[test]
    fn liveness_follows_enabled_and_expiry() {
        let mut r = rule("block");
        assert!(r.is_live(u64::MAX));
        r.expires_at_ms = Some(1_000);
        assert!(r.is_live(999));
        assert!(!r.is_live(1_000));
        r.expires_at_ms = None;
        r.enabled = false;
        assert!(!r.is_live(0));
    }

    #[test]
    fn compiled_rules_match_in_priority_order() {
        let mut a = rule("block");
        a.id = "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0D".into();
        a.priority = 5;
        let mut b = rule("allow");
        b.priority = 1;
        b.match_.hosts = vec!["*.example.com".into(), "shop.test".into()];
        b.match_.methods = vec!["GET".into()];
        let mut c = rule("log_only");
        c.id = "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0E".into();
        c.match_ = RuleMatch {
            countries: vec!["KP".into()],
            path_prefixes: vec!["/admin".into()],
            ua_types: vec!["cli".into()],
            ..RuleMatch::default()
        };
        c.expires_at_ms = Some(100);
        c.priority = 9;
        let mut off = rule("block");
        off.id = "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0F".into();
        off.enabled = false;
        let compiled = CompiledRules::compile(&[a, b, c, off]);
        assert_eq!(compiled.rules().len(), 3);
        let req = |ip: &str, host: &'static str, method: &'static str| RuleRequest {
            ip: ip.parse().expect("ip"),
            country: "KP",
            path: "/admin/x",
            host,
            method,
            ua_type: "cli",
        };
        let ids = |r: &RuleRequest<'_>, now: u64| -> Vec<String> {
            compiled
                .matching(r, now)
                .map(|m| m.id.to_string())
                .collect()
        };
        let r = req("203.0.113.50", "api.example.com:8443", "GET");
        assert_eq!(
            ids(&r, 0),
            [
                ID,
                "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0D",
                "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0E"
            ]
        );
        // The log_only rule expired at 100; the apex is not a subdomain; POST is not GET.
        assert_eq!(ids(&r, 100), [ID, "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0D"]);
        assert_eq!(
            ids(&req("203.0.113.50", "example.com", "GET"), 100),
            ["rul_01JDX3Q7Z5R8KX4W2M9T6V1B0D"]
        );
        assert_eq!(
            ids(&req("203.0.113.50", "SHOP.test", "POST"), 100),
            ["rul_01JDX3Q7Z5R8KX4W2M9T6V1B0D"]
        );
        assert_eq!(
            ids(&req("203.0.113.50", "SHOP.test", "GET"), 100),
            [ID, "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0D"]
        );
        assert!(ids(&req("198.51.100.1", "shop.test", "GET"), 100).is_empty());
    }

    #[test]
    fn the_trie_finds_what_the_linear_scan_finds() {
        // A deterministic mix: nested and overlapping v4/v6 ranges, rules naming several
        // ranges, rules without ranges, all priorities tied or not.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut docs = Vec::new();
        for n in 0..600u32 {
            let mut r = rule(["block", "allow", "log_only"][(next() % 3) as usize]);
            r.id = format!("rul_{:026}", n);
            r.priority = (next() % 7) as i32;
            let mut cidrs = Vec::new();
            for _ in 0..(next() % 3) {
                let v = next();
                cidrs.push(if v % 4 == 0 {
                    format!("2001:db8:{:x}::/{}", v % 4, 32 + (v >> 8) % 33)
                } else {
                    format!(
                        "10.{}.{}.0/{}",
                        (v >> 8) % 4,
                        (v >> 16) % 4,
                        8 + (v >> 24) % 25
                    )
                });
            }
            r.match_.cidrs = cidrs;
            if r.match_.cidrs.is_empty() || next() % 5 == 0 {
                r.match_.methods = vec![["GET", "POST"][(next() % 2) as usize].into()];
            }
            if next() % 9 == 0 {
                r.expires_at_ms = Some(50);
            }
            docs.push(r);
        }
        assert_eq!(normalize_rules(&mut docs), Vec::<String>::new());
        let compiled = CompiledRules::compile(&docs);
        let mut checked = 0;
        for _ in 0..2_000 {
            let v = next();
            let ip: IpAddr = if v % 4 == 0 {
                format!("2001:db8:{:x}::{:x}", v % 4, (v >> 40) & 0xffff)
                    .parse()
                    .expect("v6")
            } else {
                format!("10.{}.{}.{}", (v >> 8) % 4, (v >> 16) % 4, (v >> 24) % 256)
                    .parse()
                    .expect("v4")
            };
            let req = RuleRequest {
                ip,
                country: "",
                path: "/",
                host: "",
                method: ["GET", "POST"][(v >> 32) as usize % 2],
                ua_type: "browser",
            };
            let now = [0, 100][(v >> 33) as usize % 2];
            let trie: Vec<&Arc<str>> = compiled.matching(&req, now).map(|r| &r.id).collect();
            let linear: Vec<&Arc<str>> =
                compiled.matching_linear(&req, now).map(|r| &r.id).collect();
            assert_eq!(trie, linear, "{ip}");
            checked += trie.len();
        }
        assert!(checked > 1_000, "the mix should match often: {checked}");
        let indexed: Vec<usize> = compiled
            .matching_indexed(
                &RuleRequest {
                    ip: "10.1.1.1".parse().expect("ip"),
                    country: "",
                    path: "/",
                    host: "",
                    method: "GET",
                    ua_type: "",
                },
                0,
            )
            .map(|(i, r)| {
                assert_eq!(&compiled.rules()[i], r);
                i
            })
            .collect();
        assert!(indexed.windows(2).all(|w| w[0] < w[1]), "{indexed:?}");
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let mut rules = vec![rule("block"), rule("allow")];
        let p = normalize_rules(&mut rules);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("appears twice"));
    }

    #[test]
    fn the_wire_form_round_trips() {
        let mut r = rule("rate_limit");
        r.rate = Some(RuleRate {
            requests: 5,
            window_secs: 10,
        });
        r.expires_at_ms = Some(1_800_000_000_000);
        let json = serde_json::to_string(&r).expect("json");
        assert!(json.contains("\"match\":{\"cidrs\""), "{json}");
        let back: RuleDoc = serde_json::from_str(&json).expect("back");
        assert_eq!(back, r);
        let minimal: RuleDoc = serde_json::from_str(
            r#"{"id":"rul_01JDX3Q7Z5R8KX4W2M9T6V1B0C","action":"block","match":{"countries":["KP"]}}"#,
        )
        .expect("minimal");
        assert!(minimal.enabled);
        assert_eq!(minimal.priority, 0);
        assert!(serde_json::from_str::<RuleDoc>(
            r#"{"id":"x","action":"block","match":{"country":["KP"]}}"#
        )
        .is_err());
    }
}
