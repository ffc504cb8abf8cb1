//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
///
/// File errors carry the path they concern, so a log line alone tells an operator which
/// file to look at.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// The database file could not be opened, inspected or read.
    #[error("cannot read GeoIP database {}: {source}", path.display())]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a usable MaxMind DB (truncated, corrupt, wrong format).
    #[error("invalid GeoIP database {}: {source}", path.display())]
    InvalidDatabase {
        /// The file that was being read.
        path: PathBuf,
        /// What the MaxMind DB reader reported.
        #[source]
        source: maxminddb::MaxMindDbError,
    },
    /// A string that should be an ISO 3166-1 alpha-2 country code is not two ASCII letters.
    #[error("invalid country code {input:?}: expected two ASCII letters such as \"DE\"")]
    InvalidCountryCode {
        /// The rejected input (as given).
        input: String,
    },
}
