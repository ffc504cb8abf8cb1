#![doc = include_str!("../README.md")]

mod cidr;
mod config;
mod engine;
mod error;
mod rescore;
mod score;
mod signal;
mod ua;

pub use cidr::{rate_key, rate_key_addr};
pub use config::{RiskConfig, DEFAULT_PROBE_PATHS, MAX_RATE_WINDOW_SECS};
pub use engine::{Evaluation, RequestFacts, RiskEngine, KNOWN_CRAWLER_INTENSITY};
pub use error::RiskError;
pub use rescore::Recorded;
pub use score::{assess, Assessment, Reason};
pub use signal::{Signal, Signals, Weights};
pub use ua::{classify_ua, classify_ua_bytes, UaClass, UaType, MAX_UA_SCAN};
