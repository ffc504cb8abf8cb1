//! The invariants of SPEC §3, over arbitrary inputs.

use std::net::IpAddr;

use proptest::prelude::*;
use watchpost_risk::{
    assess, classify_ua_bytes, Recorded, RequestFacts, RiskConfig, RiskEngine, Signal, Signals,
    UaType, Weights,
};

/// Any f64 at all, the awkward ones included.
fn wild() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => 0.0..=1.0f64,
        1 => any::<f64>(),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(0.0),
        1 => Just(1.0),
    ]
}

fn unit() -> impl Strategy<Value = f64> {
    prop_oneof![3 => 0.0..=1.0f64, 1 => Just(0.0), 1 => Just(1.0)]
}

fn signals_from(values: &[f64], allowlisted: bool) -> Signals {
    let mut s = Signals::default();
    for (sig, v) in Signal::SCORED.into_iter().zip(values) {
        s.set(sig, *v);
    }
    s.allowlisted = allowlisted;
    s
}

fn weights_from(values: &[f64]) -> Weights {
    let mut w = Weights::default();
    for (sig, v) in Signal::SCORED.into_iter().zip(values) {
        w.set(sig, *v);
    }
    w
}

fn any_signal() -> impl Strategy<Value = Signal> {
    prop::sample::select(Signal::SCORED.to_vec())
}

proptest! {
    #[test]
    fn score_is_always_within_unit_interval(
        s in prop::collection::vec(wild(), 11),
        w in prop::collection::vec(wild(), 11),
        allow in any::<bool>(),
    ) {
        let a = assess(&signals_from(&s, allow), &weights_from(&w));
        prop_assert!((0.0..=1.0).contains(&a.score), "score {}", a.score);
        for r in &a.reasons {
            prop_assert!((0.0..=1.0).contains(&r.weight));
            prop_assert!((0.0..=1.0).contains(&r.intensity));
            prop_assert!(r.contribution >= 0.0);
        }
        for pair in a.reasons.windows(2) {
            prop_assert!(pair[0].contribution >= pair[1].contribution, "sorted desc");
        }
    }

    #[test]
    fn score_is_monotone_in_every_signal(
        s in prop::collection::vec(unit(), 11),
        w in prop::collection::vec(unit(), 11),
        signal in any_signal(),
        raise in unit(),
    ) {
        let w = weights_from(&w);
        let before = signals_from(&s, false);
        let mut after = before;
        let old = before.get(signal);
        after.set(signal, old + (1.0 - old) * raise);
        prop_assert!(after.get(signal) >= old);
        let (a, b) = (assess(&before, &w).score, assess(&after, &w).score);
        prop_assert!(b >= a, "{signal}: {old} -> {} lowered {a} to {b}", after.get(signal));
    }

    #[test]
    fn score_is_monotone_in_every_weight(
        s in prop::collection::vec(unit(), 11),
        w in prop::collection::vec(unit(), 11),
        signal in any_signal(),
        raise in unit(),
    ) {
        let sig = signals_from(&s, false);
        let before = weights_from(&w);
        let mut after = before;
        let old = before.get(signal);
        after.set(signal, old + (1.0 - old) * raise);
        prop_assert!(assess(&sig, &after).score >= assess(&sig, &before).score);
    }

    #[test]
    fn allowlist_always_scores_zero(
        s in prop::collection::vec(wild(), 11),
        w in prop::collection::vec(wild(), 11),
    ) {
        let a = assess(&signals_from(&s, true), &weights_from(&w));
        prop_assert_eq!(a.score, 0.0);
        prop_assert_eq!(a.reason_names().collect::<Vec<_>>(), vec!["allowlist"]);
    }

    #[test]
    fn denylist_always_scores_one_unless_allowlisted(
        s in prop::collection::vec(wild(), 11),
        w in prop::collection::vec(wild(), 11),
    ) {
        let mut sig = signals_from(&s, false);
        sig.denylist = 1.0;
        let a = assess(&sig, &weights_from(&w));
        prop_assert_eq!(a.score, 1.0);
        prop_assert!(a.has(Signal::Denylist));
        // Certain reasons (w·s = 1) sort first; denylist is one of them.
        prop_assert_eq!(a.reasons[0].contribution, f64::INFINITY);
    }

    #[test]
    fn contributions_explain_the_score(
        s in prop::collection::vec(unit(), 11),
        w in prop::collection::vec(0.0..0.99f64, 11),
    ) {
        let a = assess(&signals_from(&s, false), &weights_from(&w));
        let total: f64 = a.reasons.iter().map(|r| r.contribution).sum();
        let want = -(1.0 - a.score).ln();
        // A denylist reason (weight fixed at 1) may be infinite; both sides then are.
        if want.is_finite() {
            prop_assert!((total - want).abs() <= 1e-9 * (1.0 + want), "{total} vs {want}");
        } else {
            prop_assert_eq!(total, f64::INFINITY);
        }
    }

    #[test]
    fn classification_never_panics(ua in prop::collection::vec(any::<u8>(), 0..700)) {
        let c = classify_ua_bytes(&ua);
        prop_assert!(!c.known_crawler || c.ua_type == UaType::Bot);
        prop_assert_eq!(c.ua_type == UaType::Empty, ua.trim_ascii().is_empty());
    }

    #[test]
    fn evaluate_is_total_and_agrees_with_assess(
        ip in any::<IpAddr>(),
        ua in prop::option::of(prop::collection::vec(any::<u8>(), 0..300)),
        path in ".{0,80}",
        country in ".{0,3}",
        recent in wild(),
        flags in any::<[bool; 4]>(),
    ) {
        let engine = RiskEngine::new(&RiskConfig {
            countries: vec!["KP".into(), "ru".into()],
            allowlist: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
            denylist: vec!["0.0.0.0/2".into(), "fc00::/7".into()],
            ..RiskConfig::default()
        }).unwrap();
        let facts = RequestFacts {
            ip,
            user_agent: ua.as_deref(),
            path: &path,
            has_accept: flags[0],
            has_accept_language: flags[1],
            spoofed_forwarded: flags[2],
            malformed_forwarded: flags[3],
            country: &country,
            recent_requests: recent,
        };
        let ev = engine.evaluate(&facts);
        prop_assert!((0.0..=1.0).contains(&ev.assessment.score));
        let signals = engine.signals(&facts);
        for sig in Signal::ALL {
            prop_assert!((0.0..=1.0).contains(&signals.get(sig)), "{sig}");
        }
        prop_assert_eq!(ev.assessment, assess(&signals, engine.weights()));
        prop_assert_eq!(ev.ua_type, classify_ua_bytes(ua.as_deref().unwrap_or_default()).ua_type);
    }

    #[test]
    fn engine_new_never_panics(
        allow in prop::collection::vec(".{0,20}", 0..4),
        deny in prop::collection::vec("[0-9a-f.:/]{0,20}", 0..4),
        countries in prop::collection::vec(".{0,3}", 0..3),
        probes in prop::collection::vec(".{0,10}", 0..3),
        rate_limit in wild(),
        weight in wild(),
    ) {
        let mut cfg = RiskConfig { allowlist: allow, denylist: deny, countries, probe_paths: probes, rate_limit, ..RiskConfig::default() };
        cfg.weights.rate = weight;
        if let Err(e) = RiskEngine::new(&cfg) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

/// What the access log keeps of one request, rescored under `candidate`.
fn rescore_logged(
    recorder: &RiskEngine,
    candidate: &RiskEngine,
    facts: &RequestFacts<'_>,
    ua: &str,
) -> (f64, f64) {
    let ev = recorder.evaluate(facts);
    let logged: f64 = format!("{:.3}", ev.assessment.score)
        .parse()
        .expect("a logged score parses");
    let reasons: Vec<&str> = ev.assessment.reason_names().collect();
    let rec = Recorded {
        ip: facts.ip,
        ua,
        path: facts.path,
        country: facts.country,
        reasons: &reasons,
        score: logged,
    };
    (candidate.rescore(recorder, &rec).assessment.score, logged)
}

const REPLAY_UAS: [&str; 8] = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "curl/8.4.0",
    "python-requests/2.31.0",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "",
    "curl/8.4.0 \u{1}",
    // A browser with an odd byte: whether it also lacked `Accept` is not recorded.
    "Mozilla/5.0 (X11) Gecko/1\u{1} Firefox/1",
];
const REPLAY_PATHS: [&str; 4] = ["/", "/.env", "/wp-login.php", "/shop/item"];
const REPLAY_IPS: [&str; 3] = ["198.51.100.7", "203.0.113.9", "10.1.2.3"];

fn replay_config(w: &[f64], rate_limit: f64) -> RiskConfig {
    RiskConfig {
        weights: weights_from(w),
        rate_limit,
        countries: vec!["KP".into()],
        denylist: vec!["203.0.113.0/24".into()],
        allowlist: vec!["10.0.0.0/8".into()],
        ..RiskConfig::default()
    }
}

proptest! {
    /// Rescoring a logged request under the engine that logged it gives back the logged score.
    #[test]
    fn rescoring_under_the_recording_engine_reproduces_the_logged_score(
        w in prop::collection::vec(unit(), 11),
        rate_limit in 1.0..100.0f64,
        recent in 0.0..300.0f64,
        ua in 0..REPLAY_UAS.len(),
        path in 0..REPLAY_PATHS.len(),
        ip in 0..REPLAY_IPS.len(),
        kp in any::<bool>(),
        flags in any::<[bool; 4]>(),
    ) {
        let engine = RiskEngine::new(&replay_config(&w, rate_limit)).unwrap();
        let ua = REPLAY_UAS[ua];
        let facts = RequestFacts {
            ip: REPLAY_IPS[ip].parse().unwrap(),
            user_agent: (!ua.is_empty()).then_some(ua.as_bytes()),
            path: REPLAY_PATHS[path],
            has_accept: flags[0],
            has_accept_language: flags[1],
            spoofed_forwarded: flags[2],
            malformed_forwarded: flags[3],
            country: if kp { "KP" } else { "DE" },
            recent_requests: recent,
        };
        let (again, logged) = rescore_logged(&engine, &engine, &facts, ua);
        prop_assert!((again - logged).abs() <= 0.0005 + 1e-9, "{again} vs logged {logged}");
        let truth = engine.evaluate(&facts).assessment.score;
        prop_assert!((again - truth).abs() <= 0.001 + 1e-9, "{again} vs {truth}");
    }

    /// When every signal that fired is one the log records (no rate, and a browser sent its
    /// headers), rescoring under other weights and lists is a fresh evaluation.
    #[test]
    fn rescoring_recorded_signals_under_new_weights_is_exact(
        w in prop::collection::vec(0.01..=1.0f64, 11),
        w2 in prop::collection::vec(unit(), 11),
        rate_limit in 1.0..100.0f64,
        ua in 0..REPLAY_UAS.len() - 1,
        path in 0..REPLAY_PATHS.len(),
        ip in 0..REPLAY_IPS.len(),
        kp in any::<bool>(),
        flags in any::<[bool; 2]>(),
    ) {
        let recorder = RiskEngine::new(&replay_config(&w, rate_limit)).unwrap();
        let mut changed = replay_config(&w2, rate_limit);
        changed.countries.clear();
        changed.denylist = vec!["198.51.100.0/24".into()];
        let candidate = RiskEngine::new(&changed).unwrap();
        let ua = REPLAY_UAS[ua];
        let facts = RequestFacts {
            ip: REPLAY_IPS[ip].parse().unwrap(),
            user_agent: (!ua.is_empty()).then_some(ua.as_bytes()),
            path: REPLAY_PATHS[path],
            has_accept: true,
            has_accept_language: true,
            spoofed_forwarded: flags[0],
            malformed_forwarded: flags[1],
            country: if kp { "KP" } else { "DE" },
            recent_requests: rate_limit,
        };
        let (again, _) = rescore_logged(&recorder, &candidate, &facts, ua);
        let fresh = candidate.evaluate(&facts).assessment.score;
        // Spoofed and malformed headers are recovered from the reasons only when the
        // recording engine listed them, which it does for weights > 0.
        prop_assert!((again - fresh).abs() <= 1e-12, "{again} vs {fresh}");
    }
}
