#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod access_log;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod error;
pub mod gateway;
pub mod headers;
pub mod health;
pub mod live_config;
pub mod metrics;
pub mod redact;
pub mod reload;
pub mod rules;
pub mod server;
pub mod tls;

pub use config::Settings;
pub use error::ProxyError;
pub use server::{start, RunningProxy, StopOn};
