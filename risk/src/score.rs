//! Noisy-OR combination of signals into an explainable score (SPEC §3).

use serde::Serialize;

use crate::signal::{Signal, Signals, Weights};

/// One signal that fired and its share of the score.
#[derive(Copy, Clone, PartialEq, Debug, Serialize)]
pub struct Reason {
    /// Which signal.
    pub signal: Signal,
    /// Its weight w, in [0, 1].
    pub weight: f64,
    /// Its intensity s, in [0, 1].
    pub intensity: f64,
    /// `-ln(1 - w·s)`: contributions add up to `-ln(1 - score)`. `f64::INFINITY` when
    /// `w·s = 1` (the signal alone makes the score 1; a denylisted client, for one).
    pub contribution: f64,
}

/// A request's risk: the score and the reasons behind it.
#[derive(Clone, PartialEq, Debug, Default, Serialize)]
pub struct Assessment {
    /// `1 - Π(1 - w_i·s_i)`, always in [0, 1].
    pub score: f64,
    /// The signals that fired (`w·s > 0`), largest contribution first; ties keep the order
    /// of [`Signal::ALL`]. An allowlisted client has the single reason `allowlist` with
    /// weight 0 and contribution 0.
    pub reasons: Vec<Reason>,
}

impl Assessment {
    /// The reasons' names, largest contribution first: the access log's `reasons` list.
    pub fn reason_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.reasons.iter().map(|r| r.signal.name())
    }

    /// Whether the given signal is among the reasons.
    pub fn has(&self, signal: Signal) -> bool {
        self.reasons.iter().any(|r| r.signal == signal)
    }
}

/// Map anything into [0, 1]; NaN counts as "did not fire".
fn unit(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

/// Combine signals and weights into a score by noisy-OR: `score = 1 - Π(1 - w_i·s_i)`.
///
/// Total on every input: NaN weights or intensities count as 0, others are clamped into
/// [0, 1], so the score is always in [0, 1] and never decreases when any intensity or weight
/// rises. An allowlisted client scores 0 whatever else fired (allowlist beats denylist); a
/// denylisted one scores 1 (its weight is fixed at 1.0).
pub fn assess(signals: &Signals, weights: &Weights) -> Assessment {
    if signals.allowlisted {
        return Assessment {
            score: 0.0,
            reasons: vec![Reason {
                signal: Signal::Allowlist,
                weight: 0.0,
                intensity: 1.0,
                contribution: 0.0,
            }],
        };
    }
    // The product is kept directly rather than as exp(-Σ contributions) so that a certain
    // signal (w·s = 1) gives exactly 1 and the score is monotone under rounding.
    let mut survive = 1.0_f64;
    let mut reasons = Vec::new();
    for signal in Signal::SCORED {
        let weight = unit(weights.get(signal));
        let intensity = unit(signals.get(signal));
        let p = weight * intensity;
        if p > 0.0 {
            survive *= 1.0 - p;
            let contribution = if p >= 1.0 {
                f64::INFINITY
            } else {
                -(-p).ln_1p()
            };
            if reasons.capacity() == 0 {
                reasons.reserve_exact(Signal::SCORED.len());
            }
            reasons.push(Reason {
                signal,
                weight,
                intensity,
                contribution,
            });
        }
    }
    // Stable: equal contributions keep declaration order, so output is deterministic.
    reasons.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
    Assessment {
        score: (1.0 - survive).clamp(0.0, 1.0),
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(signal: Signal, intensity: f64) -> Signals {
        let mut s = Signals::default();
        s.set(signal, intensity);
        s
    }

    #[test]
    fn nothing_fired_scores_zero_without_reasons() {
        let a = assess(&Signals::default(), &Weights::default());
        assert_eq!(a.score, 0.0);
        assert!(a.reasons.is_empty());
        assert_eq!(a.reasons.capacity(), 0, "no allocation when nothing fired");
    }

    #[test]
    fn single_signal_scores_its_weight_times_intensity() {
        let w = Weights::default();
        for signal in Signal::SCORED {
            let a = assess(&only(signal, 0.5), &w);
            let p = w.get(signal) * 0.5;
            assert!((a.score - p).abs() < 1e-12, "{signal}: {}", a.score);
            assert_eq!(a.reasons.len(), 1);
            let r = a.reasons[0];
            assert_eq!(r.signal, signal);
            assert_eq!(r.intensity, 0.5);
            assert!((r.contribution - -(1.0 - p).ln()).abs() < 1e-12);
        }
    }

    #[test]
    fn noisy_or_combines_and_contributions_add_up() {
        let s = Signals {
            ua_cli: 1.0,     // 0.4
            path_probe: 1.0, // 0.9
            rate: 0.5,       // 0.45
            ..Signals::default()
        };
        let a = assess(&s, &Weights::default());
        let want = 1.0 - (1.0 - 0.4) * (1.0 - 0.9) * (1.0 - 0.45);
        assert!((a.score - want).abs() < 1e-12, "{}", a.score);
        let names: Vec<_> = a.reason_names().collect();
        assert_eq!(names, ["path_probe", "rate", "ua_cli"]);
        let total: f64 = a.reasons.iter().map(|r| r.contribution).sum();
        assert!((total - -(1.0 - a.score).ln()).abs() < 1e-9);
    }

    #[test]
    fn certain_signal_has_infinite_contribution_and_score_one() {
        let a = assess(&only(Signal::Denylist, 1.0), &Weights::default());
        assert_eq!(a.score, 1.0);
        assert_eq!(a.reasons[0].signal, Signal::Denylist);
        assert_eq!(a.reasons[0].weight, 1.0);
        assert_eq!(a.reasons[0].contribution, f64::INFINITY);

        let w = Weights {
            ua_cli: 1.0,
            ..Weights::default()
        };
        let mut s = only(Signal::UaCli, 1.0);
        s.rate = 1.0;
        let a = assess(&s, &w);
        assert_eq!(a.score, 1.0);
        assert_eq!(a.reason_names().collect::<Vec<_>>(), ["ua_cli", "rate"]);
    }

    #[test]
    fn allowlist_zeroes_everything_including_denylist() {
        let mut s = Signals::default();
        for signal in Signal::SCORED {
            s.set(signal, 1.0);
        }
        s.allowlisted = true;
        let a = assess(&s, &Weights::default());
        assert_eq!(a.score, 0.0);
        assert_eq!(a.reason_names().collect::<Vec<_>>(), ["allowlist"]);
        assert_eq!(a.reasons[0].contribution, 0.0);
    }

    #[test]
    fn garbage_inputs_are_sanitised() {
        let s = Signals {
            ua_cli: f64::NAN,
            rate: 7.0,
            country: -3.0,
            path_probe: f64::INFINITY,
            ..Signals::default()
        };
        let w = Weights {
            rate: f64::NAN,
            path_probe: 2.0,
            ..Weights::default()
        };
        let a = assess(&s, &w);
        // Only path_probe fires: NaN weight or intensity is 0, negatives clamp to 0,
        // and 2.0 × ∞ clamps to 1 × 1.
        assert_eq!(a.reason_names().collect::<Vec<_>>(), ["path_probe"]);
        assert_eq!(a.score, 1.0);
    }

    #[test]
    fn ties_keep_declaration_order() {
        // Both weigh 0.5 by default.
        let s = Signals {
            country: 1.0,
            ua_empty: 1.0,
            ..Signals::default()
        };
        let a = assess(&s, &Weights::default());
        assert_eq!(
            a.reason_names().collect::<Vec<_>>(),
            ["ua_empty", "country"]
        );
    }
}
