//! Integration tests of watchpost-admin against real PostgreSQL and Redis, in one test binary
//! (one link instead of one per file). Every test starts its own server with its own database
//! and Redis key prefix, so they run in parallel.

mod access_log;
mod access_log_index;
mod access_log_shards;
mod archive;
mod archive_shards;
mod audit;
mod auth;
mod cli;
mod cluster;
mod codes;
mod common;
mod console;
mod control_bytes;
mod counts;
mod credits;
mod email;
mod end_to_end;
mod erasure;
mod errors;
mod example_config;
mod gateway;
mod gateway_preview;
mod gateway_rules;
mod groups;
mod identity;
mod metrics;
mod mfa;
mod organizations;
mod referrals;
mod run_lifecycle;
mod runs;
mod stats;
mod throttle;
mod users;
