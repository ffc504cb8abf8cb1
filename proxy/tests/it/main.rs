//! Integration tests of watchpost-proxy against real Redis and a mock origin. Every test
//! starts its own proxy instance (own ports, own Redis key prefix).

mod access_log;
mod access_log_retention;
mod binary;
mod bodies;
mod client_ip;
mod geo;
mod h2;
mod header_limits;
mod health;
mod live_config;
mod metrics;
mod reject;
mod reload;
mod risk_runtime;
mod rules;
mod support;
mod tls;
mod upgrade;
mod upstream;
mod websocket;
