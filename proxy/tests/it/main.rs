//! Integration tests of watchpost-proxy against real Redis and a mock origin. Every test
//! starts its own proxy instance (own ports, own Redis key prefix).

mod access_log;
mod binary;
mod client_ip;
mod geo;
mod header_limits;
mod health;
mod live_config;
mod metrics;
mod reject;
mod risk_runtime;
mod rules;
mod support;
mod upstream;
