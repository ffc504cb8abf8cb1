//! Re-scoring a recorded access-log entry under another engine: the engine of a candidate
//! gateway config, previewed against past traffic before it is enforced.
//!
//! An entry records the client IP, the `User-Agent` (cut to 512 bytes), the path, the country,
//! the names of the reasons that fired and the score (3 decimals). Signals that follow from
//! those fields are recomputed under the candidate engine. The others were known only to the
//! proxy at the time (the request rate, the forwarding headers, whether a browser sent
//! `Accept` and `Accept-Language`); they are recovered from the recorded reasons and score,
//! which needs the engine that recorded the entry. See [`RiskEngine::rescore`].

use std::net::IpAddr;

use crate::engine::{Evaluation, RiskEngine};
use crate::score::assess;
use crate::signal::{Signal, Signals};
use crate::ua::{classify_ua, has_odd_bytes, UaClass, UaType};

/// What an access-log entry recorded about one request, borrowed from it.
#[derive(Copy, Clone, Debug)]
pub struct Recorded<'a> {
    /// The client IP.
    pub ip: IpAddr,
    /// The `User-Agent` as logged (empty when absent).
    pub ua: &'a str,
    /// The request path.
    pub path: &'a str,
    /// The client's country code, or `""`.
    pub country: &'a str,
    /// The names of the reasons that fired (the log's `reasons`).
    pub reasons: &'a [&'a str],
    /// The score as logged (rounded to 3 decimals).
    pub score: f64,
}

impl Recorded<'_> {
    fn listed(&self, signal: Signal) -> bool {
        self.reasons.iter().any(|r| *r == signal.name())
    }
}

/// The signals an entry does not record, as recovered from its reasons and score.
#[derive(Copy, Clone, Debug, Default, PartialEq)]
struct Hidden {
    spoofed_forwarded: f64,
    malformed_forwarded: f64,
    /// The client's requests in the rate window, estimated; 0 when `rate` did not fire.
    recent_requests: f64,
    /// The whole `header_anomaly` intensity.
    header_anomaly: f64,
}

/// `x` in [0, 1], NaN as 0 (as [`assess`] reads weights and intensities).
fn unit(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

impl RiskEngine {
    /// Score a recorded request under this engine, as [`RiskEngine::evaluate`] would have
    /// scored the original request, as far as the record allows. `recorded_by` is the engine
    /// that scored the request when it was logged (the risk settings then in force).
    ///
    /// Recomputed under `self` from the recorded fields: `ua_empty`, `ua_cli`, `ua_library`,
    /// `ua_bot` (from the UA string), `path_probe`, `country`, `denylist`, the allowlist, and
    /// the odd-byte part of `header_anomaly`.
    ///
    /// Recovered from the recorded reasons and score (`recorded_by` is needed for this):
    /// - `spoofed_forwarded` and `malformed_forwarded` fire at intensity 1 when they do, so
    ///   their presence among the reasons gives them exactly.
    /// - `rate` and a browser's `header_anomaly` (0.5 for each of `Accept` and
    ///   `Accept-Language` missing, plus odd bytes, capped at 1): the recorded engine's
    ///   factors `1 − w·s` of every other listed signal are recomputed and divided out of
    ///   `1 − score`, leaving the product of the unknown factors. With one unknown, that
    ///   solves it exactly (a browser's `header_anomaly` is 0.5 or 1: the value that best
    ///   reproduces the score). With both, each `header_anomaly` value is tried with the
    ///   `rate` that then solves the rest; the one reproducing the score best wins, and when
    ///   both do, the one splitting the unknown log-contribution most evenly. The request
    ///   count is then `rate_limit · (1 + s)` of the recorded engine and is re-read against
    ///   this engine's `rate_limit`.
    ///
    /// Approximations:
    /// - The score is logged with 3 decimals, so recovered intensities are only as exact as
    ///   that (re-scoring under `recorded_by` itself reproduces the logged score within
    ///   0.0005). A score logged as `1.000` hides how far past 1 the unknowns went; so does a
    ///   certain signal (a denylisted client): unknowns then take their largest value.
    /// - A signal that did not fire, or fired with weight 0, is not among the reasons: it is
    ///   taken as 0. A client under the recorded `rate_limit` may exceed a lower one; a
    ///   different `rate_window_secs` would have counted differently. Neither can be replayed.
    /// - An allowlisted request records no other reason: only the field-derived signals can
    ///   be recomputed for it.
    /// - A UA longer than 512 bytes is logged cut (and non-UTF-8 bytes replaced), so tokens
    ///   or odd bytes past the cut are not seen.
    /// - A reason listed by a field-derived signal that `recorded_by` does not fire (the
    ///   settings changed since the entry was written) counts at full intensity when
    ///   dividing out; one that `recorded_by` fires but the entry does not list is left out.
    pub fn rescore(&self, recorded_by: &RiskEngine, entry: &Recorded<'_>) -> Evaluation {
        let ua = classify_ua(entry.ua);
        let hidden = recover(recorded_by, entry, ua);
        let signals = if self.allowlists(entry.ip) {
            Signals {
                allowlisted: true,
                ..Signals::default()
            }
        } else {
            Signals {
                spoofed_forwarded: hidden.spoofed_forwarded,
                malformed_forwarded: hidden.malformed_forwarded,
                rate: self.rate_intensity(hidden.recent_requests),
                header_anomaly: hidden.header_anomaly,
                ..self.field_signals(entry.ip, ua, entry.path, entry.country)
            }
        };
        Evaluation {
            assessment: assess(&signals, self.weights()),
            ua_type: ua.ua_type,
        }
    }
}

/// Recover the signals the entry does not record (see [`RiskEngine::rescore`]).
fn recover(engine: &RiskEngine, entry: &Recorded<'_>, ua: UaClass) -> Hidden {
    if entry.listed(Signal::Allowlist) {
        return Hidden::default();
    }
    let flag = |s: Signal| f64::from(u8::from(entry.listed(s)));
    let odd: f64 = if has_odd_bytes(entry.ua.as_bytes()) {
        0.5
    } else {
        0.0
    };
    let anomaly_listed = entry.listed(Signal::HeaderAnomaly);
    let mut hidden = Hidden {
        spoofed_forwarded: flag(Signal::SpoofedForwarded),
        malformed_forwarded: flag(Signal::MalformedForwarded),
        recent_requests: 0.0,
        // Outside browsers only odd bytes count, and they are 0.5; a listed anomaly the
        // logged UA does not show had its odd bytes past the cut.
        header_anomaly: if anomaly_listed { odd.max(0.5) } else { odd },
    };
    let rate_unknown = entry.listed(Signal::Rate);
    let anomaly_unknown = anomaly_listed && ua.ua_type == UaType::Browser;
    if !rate_unknown && !anomaly_unknown {
        return hidden;
    }

    // The recorded engine's factors of every listed signal but the unknowns.
    let weights = engine.weights();
    let mut known = engine.field_signals(entry.ip, ua, entry.path, entry.country);
    known.spoofed_forwarded = hidden.spoofed_forwarded;
    known.malformed_forwarded = hidden.malformed_forwarded;
    known.header_anomaly = hidden.header_anomaly;
    let mut survive = 1.0_f64;
    for signal in Signal::SCORED {
        let unknown = (signal == Signal::Rate && rate_unknown)
            || (signal == Signal::HeaderAnomaly && anomaly_unknown);
        if unknown || !entry.listed(signal) {
            continue;
        }
        let s = known.get(signal);
        let s = if s > 0.0 { s } else { 1.0 };
        survive *= 1.0 - unit(weights.get(signal)) * unit(s);
    }
    // 1 − score = survive · (product of the unknown factors).
    let target = 1.0 - unit(entry.score);
    let unknown_product = if survive > 0.0 {
        unit(target / survive)
    } else {
        // A certain known signal: the score says nothing about the rest.
        0.0
    };
    let w_rate = unit(weights.get(Signal::Rate));
    let w_anomaly = unit(weights.get(Signal::HeaderAnomaly));
    // The rate intensity making `(1 − w·s) · rest = unknown_product`.
    let solve_rate = |rest: f64| -> f64 {
        if w_rate <= 0.0 || rest <= 0.0 {
            return 1.0;
        }
        unit((1.0 - unknown_product / rest) / w_rate)
    };
    let (rate, anomaly) = match (rate_unknown, anomaly_unknown) {
        (true, false) => (solve_rate(1.0), hidden.header_anomaly),
        (false, _) => {
            let a = best_of([0.5, 1.0], |h| {
                ((1.0 - w_anomaly * h) - unknown_product).abs()
            });
            (0.0, a)
        }
        (true, true) => {
            let total = -unknown_product.ln();
            let error = |h: f64| {
                let rest = 1.0 - w_anomaly * h;
                let rate = solve_rate(rest);
                let got = rest * (1.0 - w_rate * rate);
                // Ties on the error go to the most even split in log space.
                let share = -rest.ln();
                let evenness = if total.is_finite() {
                    (share - total / 2.0).abs()
                } else {
                    -h
                };
                ((got - unknown_product).abs(), evenness)
            };
            let a = best_of2([0.5, 1.0], error);
            (solve_rate(1.0 - w_anomaly * a), a)
        }
    };
    hidden.header_anomaly = anomaly;
    if rate_unknown {
        // s = (n − limit) / limit, so n = limit · (1 + s); s = 1 means at least twice.
        hidden.recent_requests = engine.rate_limit() * (1.0 + rate);
        if rate <= 0.0 {
            // Listed, so it fired: just over the limit.
            hidden.recent_requests = engine.rate_limit() * (1.0 + f64::EPSILON);
        }
    }
    hidden
}

/// The candidate with the smallest `cost` (the first on ties).
fn best_of(candidates: [f64; 2], cost: impl Fn(f64) -> f64) -> f64 {
    let [a, b] = candidates;
    if cost(b) < cost(a) - 1e-12 {
        b
    } else {
        a
    }
}

/// The candidate with the smallest error, then the smallest tie-breaker; errors within
/// floating-point noise are equal.
fn best_of2(candidates: [f64; 2], cost: impl Fn(f64) -> (f64, f64)) -> f64 {
    let [a, b] = candidates;
    let (ea, ta) = cost(a);
    let (eb, tb) = cost(b);
    if eb < ea - 1e-9 || ((eb - ea).abs() <= 1e-9 && tb < ta) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RiskConfig;
    use crate::engine::RequestFacts;

    const BROWSER: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

    fn engine(f: impl FnOnce(&mut RiskConfig)) -> RiskEngine {
        let mut cfg = RiskConfig::default();
        f(&mut cfg);
        RiskEngine::new(&cfg).unwrap()
    }

    fn facts(ua: &'static str) -> RequestFacts<'static> {
        RequestFacts {
            ip: "198.51.100.7".parse().unwrap(),
            user_agent: Some(ua.as_bytes()),
            path: "/",
            has_accept: true,
            has_accept_language: true,
            spoofed_forwarded: false,
            malformed_forwarded: false,
            country: "DE",
            recent_requests: 1.0,
        }
    }

    /// Evaluate `f` under `recorder`, log it (3 decimals), rescore it under `candidate`.
    #[track_caller]
    fn replay(recorder: &RiskEngine, candidate: &RiskEngine, f: &RequestFacts<'_>) -> (f64, f64) {
        let ev = recorder.evaluate(f);
        let logged: f64 = format!("{:.3}", ev.assessment.score).parse().unwrap();
        let reasons: Vec<&str> = ev.assessment.reason_names().collect();
        let ua = std::str::from_utf8(f.user_agent.unwrap_or_default()).unwrap();
        let rec = Recorded {
            ip: f.ip,
            ua,
            path: f.path,
            country: f.country,
            reasons: &reasons,
            score: logged,
        };
        let again = candidate.rescore(recorder, &rec);
        (
            again.assessment.score,
            candidate.evaluate(f).assessment.score,
        )
    }

    #[test]
    fn field_signals_follow_the_candidate() {
        let recorder = engine(|_| {});
        let candidate = engine(|c| {
            c.weights.ua_cli = 0.9;
            c.countries = vec!["DE".into()];
            c.probe_paths = vec!["/admin".into()];
        });
        type Edit = fn(&mut RequestFacts<'static>);
        let rows: &[(&str, Edit)] = &[
            ("curl", |f| f.user_agent = Some(b"curl/8.4.0")),
            ("probe no longer", |f| f.path = "/.env"),
            ("probe now", |f| f.path = "/admin/x"),
            ("country", |f| f.country = "DE"),
            ("library + spoofed", |f| {
                f.user_agent = Some(b"python-requests/2.31");
                f.spoofed_forwarded = true;
            }),
            ("malformed", |f| f.malformed_forwarded = true),
            ("odd bytes", |f| f.user_agent = Some(b"curl/8\x01")),
        ];
        for (name, edit) in rows {
            let mut f = facts(BROWSER);
            edit(&mut f);
            let (got, want) = replay(&recorder, &candidate, &f);
            assert!((got - want).abs() < 1e-12, "{name}: {got} vs {want}");
        }
    }

    #[test]
    fn rate_is_recovered_and_reread_against_the_new_limit() {
        let recorder = engine(|c| c.rate_limit = 10.0);
        for n in [12.0, 15.0, 19.0] {
            let mut f = facts("curl/8.4.0");
            f.recent_requests = n;
            // Same engine: the logged score comes back.
            let (got, want) = replay(&recorder, &recorder, &f);
            assert!((got - want).abs() <= 0.0005 + 1e-9, "{n}: {got} vs {want}");
            // A lower limit: the recovered count is read against it.
            let stricter = engine(|c| c.rate_limit = 8.0);
            let (got, want) = replay(&recorder, &stricter, &f);
            assert!((got - want).abs() < 0.01, "{n}: {got} vs {want}");
        }
    }

    #[test]
    fn browser_missing_headers_are_recovered() {
        let recorder = engine(|_| {});
        let heavier = engine(|c| c.weights.header_anomaly = 0.9);
        for (accept, lang) in [(false, true), (true, false), (false, false)] {
            let mut f = facts(BROWSER);
            f.has_accept = accept;
            f.has_accept_language = lang;
            let (got, want) = replay(&recorder, &heavier, &f);
            assert!(
                (got - want).abs() < 1e-9,
                "{accept} {lang}: {got} vs {want}"
            );
            // With a rate on top, both unknowns come back.
            f.recent_requests = 70.0;
            let (got, want) = replay(&recorder, &recorder, &f);
            assert!((got - want).abs() <= 0.0005 + 1e-9, "{got} vs {want}");
        }
    }

    #[test]
    fn allowlist_and_denylist() {
        let recorder = engine(|c| c.allowlist = vec!["198.51.100.0/24".into()]);
        let open = engine(|_| {});
        let f = facts("curl/8.4.0");
        // Allowlisted when logged: the field signals still apply once the allowlist goes.
        let (got, want) = replay(&recorder, &open, &f);
        assert!((got - want).abs() < 1e-12);
        let deny = engine(|c| c.denylist = vec!["198.51.100.7".into()]);
        let (got, _) = replay(&open, &deny, &f);
        assert_eq!(got, 1.0);
        // Denylisted when logged, with a rate hidden behind the certainty: taken at its most.
        let mut f = facts(BROWSER);
        f.recent_requests = 60.0;
        let (got, _) = replay(&deny, &open, &f);
        assert!((got - 0.9).abs() < 1e-12, "{got}");
    }

    #[test]
    fn reasons_missing_from_the_engine_count_in_full() {
        // Logged under settings where `/old` was a probe; the recorder given no longer has it.
        let then = engine(|c| c.probe_paths = vec!["/old".into()]);
        let now = engine(|c| c.probe_paths = vec![]);
        let mut f = facts("curl/8.4.0");
        f.path = "/old";
        f.recent_requests = 75.0;
        let ev = then.evaluate(&f);
        let reasons: Vec<&str> = ev.assessment.reason_names().collect();
        let rec = Recorded {
            ip: f.ip,
            ua: "curl/8.4.0",
            path: f.path,
            country: f.country,
            reasons: &reasons,
            score: ev.assessment.score,
        };
        let again = now.rescore(&now, &rec);
        // The probe no longer counts; the rate is recovered as if the probe had (0.5 → 0.45).
        let want = 1.0 - (1.0 - 0.4) * (1.0 - 0.9 * 0.5);
        assert!((again.assessment.score - want).abs() < 1e-9, "{again:?}");
    }
}
