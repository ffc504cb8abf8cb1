//! The compiled risk engine: turns one request's facts into signals and an assessment.

use std::net::IpAddr;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::cidr::CidrSet;
use crate::config::RiskConfig;
use crate::error::RiskError;
use crate::score::{assess, Assessment};
use crate::signal::{Signals, Weights};
use crate::ua::{classify_ua_bytes, has_odd_bytes, UaClass, UaType};

/// The `ua_bot` intensity of a declared well-known crawler (Googlebot, bingbot…); other bots
/// fire at 1.0. Declared crawlers say who they are and can be verified, so they weigh a fifth.
pub const KNOWN_CRAWLER_INTENSITY: f64 = 0.2;

/// Paths longer than this are percent-decoded only up to it for probe matching (the raw path
/// is always matched whole). Keeps decoding on the stack.
const MAX_DECODED_PATH: usize = 1024;

/// What the proxy knows about one request, borrowed from it: no copies.
#[derive(Copy, Clone, Debug)]
pub struct RequestFacts<'a> {
    /// The resolved client IP (SPEC §2).
    pub ip: IpAddr,
    /// The raw `User-Agent` header, `None` when absent. Need not be UTF-8.
    pub user_agent: Option<&'a [u8]>,
    /// The request path (a query string, if included, is ignored).
    pub path: &'a str,
    /// The request has an `Accept` header.
    pub has_accept: bool,
    /// The request has an `Accept-Language` header.
    pub has_accept_language: bool,
    /// Forwarding headers came from an untrusted peer (SPEC §2).
    pub spoofed_forwarded: bool,
    /// A forwarding header entry did not parse (SPEC §2).
    pub malformed_forwarded: bool,
    /// The client's ISO country code, or `""`.
    pub country: &'a str,
    /// This client's requests in the rate window, this one included (see [`crate::rate_key`]).
    pub recent_requests: f64,
}

/// The engine's verdict on one request.
#[derive(Clone, PartialEq, Debug)]
pub struct Evaluation {
    /// The score and its reasons.
    pub assessment: Assessment,
    /// The class of the request's `User-Agent`, for the access log.
    pub ua_type: UaType,
}

/// A validated, compiled [`RiskConfig`]. Cheap to share (`Send + Sync`); build a new one and
/// swap it in to change configuration.
#[derive(Clone, Debug)]
pub struct RiskEngine {
    weights: Weights,
    rate_window_secs: u64,
    rate_limit: f64,
    /// Uppercase ASCII codes.
    countries: Vec<[u8; 2]>,
    allow: CidrSet,
    deny: CidrSet,
    /// `None` when the list is empty.
    probes: Option<AhoCorasick>,
}

impl RiskEngine {
    /// Validate and compile a configuration. The error names the first bad field's value
    /// (for CIDR lists: every bad entry of the list).
    pub fn new(cfg: &RiskConfig) -> Result<RiskEngine, RiskError> {
        cfg.weights.validate()?;
        if !(cfg.rate_limit.is_finite() && cfg.rate_limit > 0.0) {
            return Err(RiskError::InvalidRateLimit(cfg.rate_limit));
        }
        if !(1..=crate::config::MAX_RATE_WINDOW_SECS).contains(&cfg.rate_window_secs) {
            return Err(RiskError::InvalidRateWindow(cfg.rate_window_secs));
        }
        let allow = CidrSet::parse(&cfg.allowlist).map_err(|values| RiskError::InvalidCidrs {
            list: "allowlist",
            values,
        })?;
        let deny = CidrSet::parse(&cfg.denylist).map_err(|values| RiskError::InvalidCidrs {
            list: "denylist",
            values,
        })?;
        let mut countries = Vec::with_capacity(cfg.countries.len());
        for raw in &cfg.countries {
            match raw.trim().as_bytes() {
                &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                    countries.push([a.to_ascii_uppercase(), b.to_ascii_uppercase()]);
                }
                _ => return Err(RiskError::InvalidCountry(raw.clone())),
            }
        }
        countries.sort_unstable();
        countries.dedup();
        if let Some(empty) = cfg.probe_paths.iter().find(|p| p.is_empty()) {
            return Err(RiskError::EmptyProbePath(empty.clone()));
        }
        let probes = if cfg.probe_paths.is_empty() {
            None
        } else {
            let matcher = AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::LeftmostFirst)
                .build(&cfg.probe_paths)
                .map_err(|e| RiskError::ProbeMatcher(e.to_string()))?;
            Some(matcher)
        };
        Ok(RiskEngine {
            weights: cfg.weights,
            rate_window_secs: cfg.rate_window_secs,
            rate_limit: cfg.rate_limit,
            countries,
            allow,
            deny,
            probes,
        })
    }

    /// The weights in force.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// The rate window the proxy should count `recent_requests` over, in seconds.
    pub fn rate_window_secs(&self) -> u64 {
        self.rate_window_secs
    }

    /// The requests per window before `rate` fires.
    pub fn rate_limit(&self) -> f64 {
        self.rate_limit
    }

    /// Score one request. Allocates only the reasons list, and only when a signal fired.
    pub fn evaluate(&self, facts: &RequestFacts<'_>) -> Evaluation {
        let ua = classify_ua_bytes(facts.user_agent.unwrap_or_default());
        self.evaluate_classified(facts, ua)
    }

    /// [`Self::evaluate`] for a caller that classified `facts.user_agent` already (with
    /// [`classify_ua_bytes`]), so that it is not classified twice.
    pub fn evaluate_classified(&self, facts: &RequestFacts<'_>, ua: UaClass) -> Evaluation {
        // The allowlist short-circuits: nothing else needs computing.
        let signals = if self.allow.contains(facts.ip) {
            Signals {
                allowlisted: true,
                ..Signals::default()
            }
        } else {
            self.signals_for(facts, ua)
        };
        Evaluation {
            assessment: assess(&signals, &self.weights),
            ua_type: ua.ua_type,
        }
    }

    /// Every signal's intensity for one request (for explaining or testing; [`Self::evaluate`]
    /// is what the proxy calls).
    pub fn signals(&self, facts: &RequestFacts<'_>) -> Signals {
        let ua = classify_ua_bytes(facts.user_agent.unwrap_or_default());
        let mut s = self.signals_for(facts, ua);
        s.allowlisted = self.allow.contains(facts.ip);
        s
    }

    fn signals_for(&self, facts: &RequestFacts<'_>, ua: UaClass) -> Signals {
        let flag = |b: bool| f64::from(u8::from(b));
        let raw_ua = facts.user_agent.unwrap_or_default();
        Signals {
            spoofed_forwarded: flag(facts.spoofed_forwarded),
            malformed_forwarded: flag(facts.malformed_forwarded),
            rate: self.rate_intensity(facts.recent_requests),
            header_anomaly: header_anomaly(ua, raw_ua, facts),
            ..self.field_signals(facts.ip, ua, facts.path, facts.country)
        }
    }

    /// The signals that follow from the client IP, the UA class, the path and the country
    /// alone (what an access-log entry records); the others are left at 0.
    pub(crate) fn field_signals(
        &self,
        ip: IpAddr,
        ua: UaClass,
        path: &str,
        country: &str,
    ) -> Signals {
        let flag = |b: bool| f64::from(u8::from(b));
        Signals {
            ua_empty: flag(ua.ua_type == UaType::Empty),
            ua_cli: flag(ua.ua_type == UaType::Cli),
            ua_library: flag(ua.ua_type == UaType::Library),
            ua_bot: match ua.ua_type {
                UaType::Bot if ua.known_crawler => KNOWN_CRAWLER_INTENSITY,
                UaType::Bot => 1.0,
                _ => 0.0,
            },
            path_probe: flag(self.is_probe(path)),
            country: flag(self.country_listed(country)),
            denylist: flag(self.deny.contains(ip)),
            ..Signals::default()
        }
    }

    /// Whether `ip` lies in the allowlist.
    pub(crate) fn allowlists(&self, ip: IpAddr) -> bool {
        self.allow.contains(ip)
    }

    /// 0 up to the limit, then linear in the excess: 1 at twice the limit. NaN counts as 0.
    pub(crate) fn rate_intensity(&self, recent: f64) -> f64 {
        if recent > self.rate_limit {
            ((recent - self.rate_limit) / self.rate_limit).min(1.0)
        } else {
            0.0
        }
    }

    fn is_probe(&self, path: &str) -> bool {
        let Some(probes) = &self.probes else {
            return false;
        };
        let path = path.split(['?', '#']).next().unwrap_or_default().as_bytes();
        if probes.is_match(path) {
            return true;
        }
        // Scanners encode to slip past naive filters (`/%2eenv`); the upstream decodes.
        if path.contains(&b'%') {
            let mut buf = [0u8; MAX_DECODED_PATH];
            let decoded = percent_decode_into(path, &mut buf);
            return probes.is_match(decoded);
        }
        false
    }

    fn country_listed(&self, country: &str) -> bool {
        match country.as_bytes() {
            &[a, b] => {
                let code = [a.to_ascii_uppercase(), b.to_ascii_uppercase()];
                self.countries.contains(&code)
            }
            _ => false,
        }
    }
}

/// Headers inconsistent with the UA. Browsers always send `Accept` and `Accept-Language`
/// (on navigations and subresources alike) and only ever printable ASCII in the UA, so each
/// deviation adds 0.5, up to 1. Non-browser clients legitimately omit those headers, so only
/// odd bytes count for them.
fn header_anomaly(ua: UaClass, raw_ua: &[u8], facts: &RequestFacts<'_>) -> f64 {
    let mut x = 0.0;
    if ua.ua_type == UaType::Browser {
        if !facts.has_accept {
            x += 0.5;
        }
        if !facts.has_accept_language {
            x += 0.5;
        }
    }
    if has_odd_bytes(raw_ua) {
        x += 0.5;
    }
    f64::min(x, 1.0)
}

/// Percent-decode `src` into `buf`, stopping when `buf` is full; invalid escapes are kept
/// as they are. Returns the decoded prefix.
fn percent_decode_into<'b>(src: &[u8], buf: &'b mut [u8]) -> &'b [u8] {
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let mut i = 0;
    let mut n = 0;
    while i < src.len() && n < buf.len() {
        let escaped = match src.get(i..i + 3) {
            Some(&[b'%', h, l]) => hex(h).zip(hex(l)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match escaped {
            Some(b) => {
                buf[n] = b;
                i += 3;
            }
            None => {
                buf[n] = src[i];
                i += 1;
            }
        }
        n += 1;
    }
    &buf[..n]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::Signal;

    const BROWSER: &[u8] = b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

    fn facts() -> RequestFacts<'static> {
        RequestFacts {
            ip: "198.51.100.7".parse().unwrap(),
            user_agent: Some(BROWSER),
            path: "/index.html",
            has_accept: true,
            has_accept_language: true,
            spoofed_forwarded: false,
            malformed_forwarded: false,
            country: "DE",
            recent_requests: 1.0,
        }
    }

    fn engine(f: impl FnOnce(&mut RiskConfig)) -> RiskEngine {
        let mut cfg = RiskConfig::default();
        f(&mut cfg);
        RiskEngine::new(&cfg).unwrap()
    }

    #[test]
    fn engine_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RiskEngine>();
    }

    #[test]
    fn clean_browser_request_fires_nothing() {
        let e = engine(|_| {});
        let ev = e.evaluate(&facts());
        assert_eq!(ev.ua_type, UaType::Browser);
        assert_eq!(ev.assessment.score, 0.0);
        assert!(ev.assessment.reasons.is_empty());
        assert_eq!(e.signals(&facts()), Signals::default());
    }

    /// Each row changes the clean request and expects exactly one signal at an intensity.
    #[test]
    fn each_signal_fires() {
        let e = engine(|c| {
            c.countries = vec!["kp".into(), " RU ".into()];
            c.denylist = vec!["203.0.113.0/24".into()];
            c.rate_limit = 10.0;
        });
        type Edit = fn(&mut RequestFacts<'static>);
        let rows: &[(&str, Edit, Signal, f64)] = &[
            ("absent UA", |f| f.user_agent = None, Signal::UaEmpty, 1.0),
            (
                "blank UA",
                |f| f.user_agent = Some(b"  "),
                Signal::UaEmpty,
                1.0,
            ),
            (
                "curl",
                |f| f.user_agent = Some(b"curl/8.4.0"),
                Signal::UaCli,
                1.0,
            ),
            (
                "requests",
                |f| f.user_agent = Some(b"python-requests/2.31.0"),
                Signal::UaLibrary,
                1.0,
            ),
            (
                "unknown bot",
                |f| {
                    f.user_agent =
                        Some(b"Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)")
                },
                Signal::UaBot,
                1.0,
            ),
            (
                "googlebot",
                |f| {
                    f.user_agent = Some(
                        b"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
                    )
                },
                Signal::UaBot,
                KNOWN_CRAWLER_INTENSITY,
            ),
            (
                "spoofed",
                |f| f.spoofed_forwarded = true,
                Signal::SpoofedForwarded,
                1.0,
            ),
            (
                "malformed",
                |f| f.malformed_forwarded = true,
                Signal::MalformedForwarded,
                1.0,
            ),
            ("rate 1.5x", |f| f.recent_requests = 15.0, Signal::Rate, 0.5),
            ("rate 2x", |f| f.recent_requests = 20.0, Signal::Rate, 1.0),
            (
                "rate 100x",
                |f| f.recent_requests = 1000.0,
                Signal::Rate,
                1.0,
            ),
            (
                "rate inf",
                |f| f.recent_requests = f64::INFINITY,
                Signal::Rate,
                1.0,
            ),
            ("/.env", |f| f.path = "/.env", Signal::PathProbe, 1.0),
            (
                "nested .env",
                |f| f.path = "/app/.env.production",
                Signal::PathProbe,
                1.0,
            ),
            (
                "/.git/",
                |f| f.path = "/.git/config",
                Signal::PathProbe,
                1.0,
            ),
            (
                "wp-login",
                |f| f.path = "/blog/WP-LOGIN.php",
                Signal::PathProbe,
                1.0,
            ),
            (
                "phpmyadmin",
                |f| f.path = "/phpMyAdmin/index.php",
                Signal::PathProbe,
                1.0,
            ),
            (
                "aws",
                |f| f.path = "/.aws/credentials",
                Signal::PathProbe,
                1.0,
            ),
            (
                "config.php",
                |f| f.path = "/config.php?x=1",
                Signal::PathProbe,
                1.0,
            ),
            ("xmlrpc", |f| f.path = "/xmlrpc.php", Signal::PathProbe, 1.0),
            ("encoded", |f| f.path = "/%2Eenv", Signal::PathProbe, 1.0),
            (
                "encoded traversal",
                |f| f.path = "/static/%2e%2e/%2e%2e/etc/passwd",
                Signal::PathProbe,
                1.0,
            ),
            (
                "no Accept",
                |f| f.has_accept = false,
                Signal::HeaderAnomaly,
                0.5,
            ),
            (
                "no Accept-Language",
                |f| f.has_accept_language = false,
                Signal::HeaderAnomaly,
                0.5,
            ),
            (
                "neither",
                |f| {
                    f.has_accept = false;
                    f.has_accept_language = false
                },
                Signal::HeaderAnomaly,
                1.0,
            ),
            (
                "control byte in UA",
                |f| f.user_agent = Some(b"Mozilla/5.0 (X11) Gecko/1\x01 Firefox/1"),
                Signal::HeaderAnomaly,
                0.5,
            ),
            ("country", |f| f.country = "KP", Signal::Country, 1.0),
            (
                "country any case",
                |f| f.country = "ru",
                Signal::Country,
                1.0,
            ),
            (
                "denylist",
                |f| f.ip = "203.0.113.200".parse().unwrap(),
                Signal::Denylist,
                1.0,
            ),
            (
                "denylist mapped",
                |f| f.ip = "::ffff:203.0.113.1".parse().unwrap(),
                Signal::Denylist,
                1.0,
            ),
        ];
        for (name, edit, signal, intensity) in rows {
            let mut f = facts();
            edit(&mut f);
            let mut want = Signals::default();
            want.set(*signal, *intensity);
            assert_eq!(e.signals(&f), want, "{name}");
            let ev = e.evaluate(&f);
            assert_eq!(
                ev.assessment.reason_names().collect::<Vec<_>>(),
                [signal.name()],
                "{name}"
            );
            let p = e.weights().get(*signal) * intensity;
            assert!((ev.assessment.score - p).abs() < 1e-12, "{name}");
        }
    }

    #[test]
    fn non_signals_stay_quiet() {
        let e = engine(|c| {
            c.countries = vec!["KP".into()];
            c.rate_limit = 10.0;
        });
        type Edit = fn(&mut RequestFacts<'static>);
        let rows: &[(&str, Edit)] = &[
            ("at the limit", |f| f.recent_requests = 10.0),
            ("NaN rate", |f| f.recent_requests = f64::NAN),
            ("negative rate", |f| f.recent_requests = -5.0),
            ("harmless path", |f| f.path = "/environment/overview"),
            ("env in query only", |f| f.path = "/search?q=/.env"),
            ("git in fragment only", |f| f.path = "/doc#/.git/"),
            ("bad escape", |f| f.path = "/%zz%2"),
            ("other country", |f| f.country = "DE"),
            ("empty country", |f| f.country = ""),
            ("long country", |f| f.country = "KPX"),
            ("non-ASCII country", |f| f.country = "ö"),
            ("curl without Accept", |f| {
                f.user_agent = Some(b"curl/8.4.0");
                f.has_accept = false;
                f.has_accept_language = false;
            }),
        ];
        for (name, edit) in rows {
            let mut f = facts();
            edit(&mut f);
            let s = e.signals(&f);
            let fired: Vec<_> = Signal::SCORED
                .into_iter()
                .filter(|g| s.get(*g) > 0.0 && *g != Signal::UaCli)
                .collect();
            assert!(fired.is_empty(), "{name}: {fired:?}");
        }
    }

    #[test]
    fn allowlist_beats_everything_and_still_reports_ua_type() {
        let e = engine(|c| {
            c.allowlist = vec!["2001:db8::/32".into(), "198.51.100.7".into()];
            c.denylist = vec!["198.51.100.0/24".into(), "2001:db8:1::/48".into()];
        });
        let mut f = facts();
        f.user_agent = Some(b"curl/8.0");
        f.path = "/.env";
        f.spoofed_forwarded = true;
        for ip in ["198.51.100.7", "::ffff:198.51.100.7", "2001:db8:1::5"] {
            f.ip = ip.parse().unwrap();
            let ev = e.evaluate(&f);
            assert_eq!(ev.assessment.score, 0.0, "{ip}");
            assert_eq!(
                ev.assessment.reason_names().collect::<Vec<_>>(),
                ["allowlist"]
            );
            assert_eq!(ev.ua_type, UaType::Cli);
            let s = e.signals(&f);
            assert!(s.allowlisted && s.denylist == 1.0 && s.ua_cli == 1.0);
        }
        f.ip = "198.51.100.8".parse().unwrap();
        let ev = e.evaluate(&f);
        assert_eq!(ev.assessment.score, 1.0);
        assert_eq!(ev.assessment.reasons[0].signal, Signal::Denylist);
    }

    #[test]
    fn default_weights_reject_probes_and_floods_but_not_mere_tools() {
        let e = engine(|_| {});
        let threshold = 0.8;
        let mut f = facts();
        f.path = "/.env";
        assert!(e.evaluate(&f).assessment.score >= threshold);
        let mut f = facts();
        f.recent_requests = 100.0;
        assert!(e.evaluate(&f).assessment.score >= threshold);
        for ua in [
            &b"curl/8.4.0"[..],
            b"python-requests/2.31.0",
            b"Googlebot/2.1",
            b"AhrefsBot",
        ] {
            let mut f = facts();
            f.user_agent = Some(ua);
            f.has_accept_language = false;
            assert!(e.evaluate(&f).assessment.score < threshold);
        }
        let mut f = facts();
        f.user_agent = None;
        f.spoofed_forwarded = true;
        assert!(e.evaluate(&f).assessment.score >= threshold);
    }

    #[test]
    fn empty_probe_list_disables_the_signal() {
        let e = engine(|c| c.probe_paths.clear());
        let mut f = facts();
        f.path = "/.env";
        assert_eq!(e.signals(&f).path_probe, 0.0);
    }

    #[test]
    fn invalid_configs_are_rejected_naming_the_value() {
        type Edit = fn(&mut RiskConfig);
        let rows: &[(Edit, &str)] = &[
            (
                |c| c.allowlist = vec!["10.0.0.0/8".into(), "10.0.0.0/33".into()],
                "\"10.0.0.0/33\"",
            ),
            (
                |c| c.denylist = vec!["bogus".into(), "1.2.3".into()],
                "\"bogus\", \"1.2.3\"",
            ),
            (|c| c.denylist = vec!["".into()], "risk.denylist"),
            (|c| c.weights.rate = f64::NAN, "risk.weights.rate = NaN"),
            (|c| c.weights.ua_bot = -0.5, "risk.weights.ua_bot = -0.5"),
            (|c| c.weights.country = 1.01, "risk.weights.country = 1.01"),
            (|c| c.rate_limit = 0.0, "risk.rate_limit = 0"),
            (|c| c.rate_limit = f64::INFINITY, "risk.rate_limit = inf"),
            (|c| c.rate_window_secs = 0, "risk.rate_window_secs = 0"),
            (|c| c.countries = vec!["USA".into()], "\"USA\""),
            (|c| c.countries = vec!["1A".into()], "\"1A\""),
            (
                |c| c.probe_paths = vec!["/.env".into(), String::new()],
                "probe_paths",
            ),
        ];
        for (edit, needle) in rows {
            let mut cfg = RiskConfig::default();
            edit(&mut cfg);
            let err = RiskEngine::new(&cfg).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should contain {needle:?}");
        }
    }

    #[test]
    fn percent_decoding() {
        let mut buf = [0u8; 8];
        assert_eq!(percent_decode_into(b"/%2e%2Fa", &mut buf), b"/./a");
        assert_eq!(percent_decode_into(b"%zz%4", &mut buf), b"%zz%4");
        assert_eq!(percent_decode_into(b"/aaaaaaaaaaaa", &mut buf), b"/aaaaaaa");
        assert_eq!(percent_decode_into(b"%", &mut buf), b"%");
        // A multi-byte char split by the buffer end must not panic.
        assert_eq!(percent_decode_into("/ééééé".as_bytes(), &mut buf).len(), 8);
    }
}
