//! The signals of SPEC §3, their per-request intensities, and their configurable weights.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::RiskError;

/// One reason a request may be risky. Names are the snake_case ones of SPEC §3, as written into
/// the access log's `reasons` field.
#[derive(Copy, Clone, PartialEq, Eq, Debug, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// No `User-Agent`, or only whitespace.
    UaEmpty,
    /// A command-line tool's UA (curl, Wget, HTTPie…).
    UaCli,
    /// An HTTP library's UA (python-requests, Go-http-client, okhttp…).
    UaLibrary,
    /// A bot's UA; declared well-known crawlers fire with a lower intensity.
    UaBot,
    /// Forwarding headers sent by a peer that is not trusted (SPEC §2).
    SpoofedForwarded,
    /// A forwarding header entry that does not parse (SPEC §2).
    MalformedForwarded,
    /// The client exceeds the request rate limit, growing with the excess.
    Rate,
    /// The path is a well-known vulnerability or secret probe (`/.env`, `/.git/`…).
    PathProbe,
    /// Headers inconsistent with the claimed client (a browser without `Accept`…).
    HeaderAnomaly,
    /// The client's country is in the configured list.
    Country,
    /// The client IP is in a denylisted CIDR: weight 1.0, so the score is 1.
    Denylist,
    /// The client IP is in an allowlisted CIDR: the score is 0, whatever else fired.
    Allowlist,
}

impl Signal {
    /// Every signal, in declaration order.
    pub const ALL: [Signal; 12] = [
        Signal::UaEmpty,
        Signal::UaCli,
        Signal::UaLibrary,
        Signal::UaBot,
        Signal::SpoofedForwarded,
        Signal::MalformedForwarded,
        Signal::Rate,
        Signal::PathProbe,
        Signal::HeaderAnomaly,
        Signal::Country,
        Signal::Denylist,
        Signal::Allowlist,
    ];

    /// The signals that add to the score (all but [`Signal::Allowlist`]).
    pub const SCORED: [Signal; 11] = [
        Signal::UaEmpty,
        Signal::UaCli,
        Signal::UaLibrary,
        Signal::UaBot,
        Signal::SpoofedForwarded,
        Signal::MalformedForwarded,
        Signal::Rate,
        Signal::PathProbe,
        Signal::HeaderAnomaly,
        Signal::Country,
        Signal::Denylist,
    ];

    /// The snake_case name of SPEC §3.
    pub fn name(self) -> &'static str {
        match self {
            Signal::UaEmpty => "ua_empty",
            Signal::UaCli => "ua_cli",
            Signal::UaLibrary => "ua_library",
            Signal::UaBot => "ua_bot",
            Signal::SpoofedForwarded => "spoofed_forwarded",
            Signal::MalformedForwarded => "malformed_forwarded",
            Signal::Rate => "rate",
            Signal::PathProbe => "path_probe",
            Signal::HeaderAnomaly => "header_anomaly",
            Signal::Country => "country",
            Signal::Denylist => "denylist",
            Signal::Allowlist => "allowlist",
        }
    }

    /// The inverse of [`Signal::name`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.name() == s)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The intensity of every signal for one request, each in [0, 1] (0: did not fire), plus
/// whether the client is allowlisted. [`crate::RiskEngine::signals`] computes them from a
/// request; tests and callers with their own signals can fill them in directly.
/// [`crate::assess`] treats NaN as 0 and clamps everything else into [0, 1].
#[derive(Copy, Clone, PartialEq, Debug, Default)]
pub struct Signals {
    pub ua_empty: f64,
    pub ua_cli: f64,
    pub ua_library: f64,
    pub ua_bot: f64,
    pub spoofed_forwarded: f64,
    pub malformed_forwarded: f64,
    pub rate: f64,
    pub path_probe: f64,
    pub header_anomaly: f64,
    pub country: f64,
    pub denylist: f64,
    /// The client IP is in an allowlisted CIDR: the score is 0.
    pub allowlisted: bool,
}

impl Signals {
    /// The intensity of one signal (`Allowlist`: 1.0 when allowlisted, else 0.0).
    pub fn get(&self, signal: Signal) -> f64 {
        match signal {
            Signal::UaEmpty => self.ua_empty,
            Signal::UaCli => self.ua_cli,
            Signal::UaLibrary => self.ua_library,
            Signal::UaBot => self.ua_bot,
            Signal::SpoofedForwarded => self.spoofed_forwarded,
            Signal::MalformedForwarded => self.malformed_forwarded,
            Signal::Rate => self.rate,
            Signal::PathProbe => self.path_probe,
            Signal::HeaderAnomaly => self.header_anomaly,
            Signal::Country => self.country,
            Signal::Denylist => self.denylist,
            Signal::Allowlist => f64::from(u8::from(self.allowlisted)),
        }
    }

    /// Set one signal's intensity (`Allowlist`: allowlisted iff `intensity > 0`).
    pub fn set(&mut self, signal: Signal, intensity: f64) {
        let slot = match signal {
            Signal::UaEmpty => &mut self.ua_empty,
            Signal::UaCli => &mut self.ua_cli,
            Signal::UaLibrary => &mut self.ua_library,
            Signal::UaBot => &mut self.ua_bot,
            Signal::SpoofedForwarded => &mut self.spoofed_forwarded,
            Signal::MalformedForwarded => &mut self.malformed_forwarded,
            Signal::Rate => &mut self.rate,
            Signal::PathProbe => &mut self.path_probe,
            Signal::HeaderAnomaly => &mut self.header_anomaly,
            Signal::Country => &mut self.country,
            Signal::Denylist => &mut self.denylist,
            Signal::Allowlist => {
                self.allowlisted = intensity > 0.0;
                return;
            }
        };
        *slot = intensity;
    }
}

/// The weight of each signal, each in [0, 1]: the probability that a request showing the
/// signal at full intensity is bad (noisy-OR, SPEC §3). The `[risk.weights]` TOML section.
///
/// `denylist` has no entry: SPEC §3 fixes its weight at 1.0 (a denylisted client always scores
/// 1). `allowlist` has none either: it does not add to the score, it zeroes it.
#[derive(Serialize, Deserialize, Copy, Clone, PartialEq, Debug)]
#[serde(default, deny_unknown_fields)]
pub struct Weights {
    /// No `User-Agent`. Default 0.5.
    pub ua_empty: f64,
    /// curl, Wget, HTTPie… Default 0.4.
    pub ua_cli: f64,
    /// python-requests, Go-http-client, okhttp… Default 0.3.
    pub ua_library: f64,
    /// Bots. A declared well-known crawler fires at intensity
    /// [`crate::KNOWN_CRAWLER_INTENSITY`], so weighs a fifth of this. Default 0.5.
    pub ua_bot: f64,
    /// Forwarding headers from an untrusted peer. Default 0.6.
    pub spoofed_forwarded: f64,
    /// Unparseable forwarding header entry. Default 0.4.
    pub malformed_forwarded: f64,
    /// Over the rate limit; at twice the limit the intensity is 1. Default 0.9.
    pub rate: f64,
    /// A probe path: alone enough to reach the default reject threshold 0.8. Default 0.9.
    pub path_probe: f64,
    /// Headers inconsistent with the UA. Default 0.4.
    pub header_anomaly: f64,
    /// Country in the configured list. Default 0.5.
    pub country: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            ua_empty: 0.5,
            ua_cli: 0.4,
            ua_library: 0.3,
            ua_bot: 0.5,
            spoofed_forwarded: 0.6,
            malformed_forwarded: 0.4,
            rate: 0.9,
            path_probe: 0.9,
            header_anomaly: 0.4,
            country: 0.5,
        }
    }
}

impl Weights {
    /// The weight of one signal: `Denylist` is always 1.0 and `Allowlist` 0.0 (it does not
    /// add to the score).
    pub fn get(&self, signal: Signal) -> f64 {
        match signal {
            Signal::UaEmpty => self.ua_empty,
            Signal::UaCli => self.ua_cli,
            Signal::UaLibrary => self.ua_library,
            Signal::UaBot => self.ua_bot,
            Signal::SpoofedForwarded => self.spoofed_forwarded,
            Signal::MalformedForwarded => self.malformed_forwarded,
            Signal::Rate => self.rate,
            Signal::PathProbe => self.path_probe,
            Signal::HeaderAnomaly => self.header_anomaly,
            Signal::Country => self.country,
            Signal::Denylist => 1.0,
            Signal::Allowlist => 0.0,
        }
    }

    /// Set one configurable weight. Returns false (and changes nothing) for `Denylist` and
    /// `Allowlist`, whose weights are fixed.
    pub fn set(&mut self, signal: Signal, weight: f64) -> bool {
        let slot = match signal {
            Signal::UaEmpty => &mut self.ua_empty,
            Signal::UaCli => &mut self.ua_cli,
            Signal::UaLibrary => &mut self.ua_library,
            Signal::UaBot => &mut self.ua_bot,
            Signal::SpoofedForwarded => &mut self.spoofed_forwarded,
            Signal::MalformedForwarded => &mut self.malformed_forwarded,
            Signal::Rate => &mut self.rate,
            Signal::PathProbe => &mut self.path_probe,
            Signal::HeaderAnomaly => &mut self.header_anomaly,
            Signal::Country => &mut self.country,
            Signal::Denylist | Signal::Allowlist => return false,
        };
        *slot = weight;
        true
    }

    /// Check that every weight is a number in [0, 1]; the error names the first bad one.
    pub fn validate(&self) -> Result<(), RiskError> {
        for signal in Signal::SCORED {
            let value = self.get(signal);
            if !(0.0..=1.0).contains(&value) {
                return Err(RiskError::InvalidWeight {
                    signal: signal.name(),
                    value,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for s in Signal::ALL {
            assert_eq!(Signal::parse(s.name()), Some(s));
            assert_eq!(s.to_string(), s.name());
            assert_eq!(
                toml::Value::try_from(s).ok(),
                Some(toml::Value::String(s.name().to_string()))
            );
        }
        assert_eq!(Signal::parse("UaEmpty"), None);
    }

    #[test]
    fn scored_is_all_but_allowlist() {
        let rest: Vec<Signal> = Signal::ALL
            .into_iter()
            .filter(|s| *s != Signal::Allowlist)
            .collect();
        assert_eq!(rest, Signal::SCORED);
    }

    #[test]
    fn get_set_cover_every_signal() {
        for (i, s) in Signal::SCORED.into_iter().enumerate() {
            let mut sig = Signals::default();
            let v = (i as f64 + 1.0) / 16.0;
            sig.set(s, v);
            assert_eq!(sig.get(s), v, "{s}");
            for other in Signal::SCORED.into_iter().filter(|o| *o != s) {
                assert_eq!(sig.get(other), 0.0, "setting {s} changed {other}");
            }
            let mut w = Weights::default();
            if s == Signal::Denylist {
                assert!(!w.set(s, v));
                assert_eq!(w.get(s), 1.0);
            } else {
                assert!(w.set(s, v));
                assert_eq!(w.get(s), v, "{s}");
            }
        }
        let mut sig = Signals::default();
        sig.set(Signal::Allowlist, 1.0);
        assert!(sig.allowlisted);
        assert_eq!(sig.get(Signal::Allowlist), 1.0);
    }

    #[test]
    fn default_weights_are_valid() {
        assert_eq!(Weights::default().validate(), Ok(()));
    }

    #[test]
    fn invalid_weights_are_named() {
        for (signal, bad) in [
            (Signal::UaCli, f64::NAN),
            (Signal::Rate, -0.1),
            (Signal::Country, 1.5),
            (Signal::PathProbe, f64::INFINITY),
        ] {
            let mut w = Weights::default();
            w.set(signal, bad);
            let err = w.validate().unwrap_err();
            match &err {
                RiskError::InvalidWeight {
                    signal: name,
                    value,
                } => {
                    assert_eq!(*name, signal.name());
                    assert!(value.is_nan() && bad.is_nan() || *value == bad);
                }
                other => panic!("unexpected error {other:?}"),
            }
            let msg = err.to_string();
            assert!(msg.contains(signal.name()), "{msg}");
            assert!(msg.contains(&format!("{bad}")), "{msg}");
        }
    }
}
