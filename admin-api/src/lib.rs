#![doc = include_str!("../README.md")]

pub mod archive;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod console;
pub mod db;
pub mod email;
pub mod error;
pub mod extract;
pub mod gateway_doc;
pub mod gateway_sync;
pub mod ids;
pub mod invitations;
pub mod ledger;
pub mod metrics;
pub mod models;
pub mod pagination;
pub mod personal;
pub mod rate_limit;
pub mod routes;
pub mod server;
pub mod sign_in_events;
pub mod state;
pub mod stream;
pub mod validate;

pub use config::Config;
pub use error::ApiError;
pub use state::AppState;

/// Failures before or outside request handling (config, database set-up, binding).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Config(String),
    #[error("postgres: {0}")]
    Postgres(String),
    #[error("redis: {0}")]
    Redis(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl From<watchpost_common::config::ConfigError> for StartupError {
    fn from(e: watchpost_common::config::ConfigError) -> Self {
        Self::Config(e.to_string())
    }
}
