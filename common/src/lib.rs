#![doc = include_str!("../README.md")]

pub mod access_index;
pub mod access_log;
pub mod client_ip;
pub mod config;
pub mod gateway;
pub mod keys;
pub mod redis_conn;
pub mod rollup;
pub mod rules;

pub use access_log::{AccessLogEntry, Decision, FIELDS as ACCESS_LOG_FIELDS};
pub use client_ip::{resolve_client_ip, ClientIp, IpSource};
pub use gateway::{ClientIpHeader, GatewayConfig, GatewayConfigError, IpMode, RiskMode};
pub use keys::{AccessKeys, Keys};
pub use redis_conn::{ConnOptions, RedisConn, RedisTarget, RedisTargetError};
pub use rules::{RuleAction, RuleDoc, RuleMatch, RuleRate};
