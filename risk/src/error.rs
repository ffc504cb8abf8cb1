//! The crate's one error type: what is wrong with a `[risk]` configuration.

/// A rejected `[risk]` configuration. Every variant names the offending value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RiskError {
    /// Entries of `allowlist` or `denylist` that are neither a CIDR nor an IP address.
    #[error("risk.{list}: invalid CIDR(s): {}", quoted(.values))]
    InvalidCidrs {
        /// `"allowlist"` or `"denylist"`.
        list: &'static str,
        /// Every entry that did not parse, as given.
        values: Vec<String>,
    },
    /// A weight that is NaN or outside [0, 1].
    #[error("risk.weights.{signal} = {value}: a weight must be a number in [0, 1]")]
    InvalidWeight {
        /// The signal's snake_case name.
        signal: &'static str,
        /// The value given.
        value: f64,
    },
    /// `rate_limit` is not a finite number above 0.
    #[error("risk.rate_limit = {0}: must be a finite number greater than 0")]
    InvalidRateLimit(f64),
    /// `rate_window_secs` is 0 or more than a day.
    #[error("risk.rate_window_secs = {0}: must be between 1 and 86400")]
    InvalidRateWindow(u64),
    /// A `countries` entry that is not a two-letter ISO 3166-1 alpha-2 code.
    #[error("risk.countries: {0:?} is not a two-letter ISO 3166-1 alpha-2 code")]
    InvalidCountry(String),
    /// An empty `probe_paths` entry (it would match every path).
    #[error("risk.probe_paths: {0:?} is empty and would match every path")]
    EmptyProbePath(String),
    /// The probe-path matcher could not be built (only for absurdly large lists).
    #[error("risk.probe_paths: cannot build the matcher: {0}")]
    ProbeMatcher(String),
}

fn quoted(values: &[String]) -> String {
    values
        .iter()
        .map(|v| format!("{v:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}
