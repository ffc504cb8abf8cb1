//! One Redis connection type for both binaries, whether `[redis]` names one node (`url`) or a
//! Redis Cluster (`cluster_nodes`).
//!
//! On one node it is redis-rs's [`ConnectionManager`] (reconnects by itself); on a cluster it is
//! redis-rs's cluster-async [`ClusterConnection`], which follows `MOVED`/`ASK` redirections,
//! refreshes the slot map and reconnects to masters that come back. Both are cheap to clone and
//! implement [`ConnectionLike`], so every caller sends commands the same way. On a cluster every
//! script, `MULTI` and pipeline must touch keys of one hash slot: [`Keys`] built by
//! [`RedisTarget::keys`] tags the keys that are written together.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::keys::Keys;

/// Where Redis is: one node, or the seed nodes of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `[redis] url`.
    Node(String),
    /// `[redis] cluster_nodes` (non-empty): any subset of the cluster's masters; the rest of the
    /// topology is discovered from them.
    Cluster(Vec<String>),
}

/// Why a `[redis]` section cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisTargetError {
    #[error("[redis] url: not a Redis URL ({0})")]
    Url(String),
    #[error("[redis] cluster_nodes[{index}]: not a Redis URL ({reason})")]
    ClusterNode { index: usize, reason: String },
}

/// Timeouts and retries of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnOptions {
    /// Bound on establishing one TCP connection.
    pub connect_timeout: Duration,
    /// Bound on one reply (on a cluster: on one attempt; redirections and retries are bounded by
    /// twice this).
    pub response_timeout: Duration,
    /// How many times a failed command is retried after a reconnect (on a cluster
    /// [`CLUSTER_REDIRECTIONS`] more, for redirections).
    pub retries: usize,
    /// Longest wait between reconnection attempts.
    pub max_delay: Duration,
}

impl RedisTarget {
    /// `cluster_nodes` wins when it is not empty; `url` is the single-node setting.
    pub fn from_config(url: &str, cluster_nodes: &[String]) -> Self {
        if cluster_nodes.is_empty() {
            Self::Node(url.to_string())
        } else {
            Self::Cluster(cluster_nodes.to_vec())
        }
    }

    /// Checks every URL parses (without connecting).
    pub fn validate(&self) -> Result<(), RedisTargetError> {
        match self {
            Self::Node(url) => redis::Client::open(url.as_str())
                .map(|_| ())
                .map_err(|e| RedisTargetError::Url(e.to_string())),
            Self::Cluster(nodes) => {
                for (index, node) in nodes.iter().enumerate() {
                    let reason = if node.trim().is_empty() {
                        Some("empty".to_string())
                    } else {
                        redis::Client::open(node.as_str())
                            .err()
                            .map(|e| e.to_string())
                    };
                    if let Some(reason) = reason {
                        return Err(RedisTargetError::ClusterNode { index, reason });
                    }
                }
                Ok(())
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Key names under `prefix` for this target: on a cluster, the access-log family shares one
    /// hash tag; on one node every name is the plain one of SPEC.
    pub fn keys(&self, prefix: impl Into<String>) -> Keys {
        if self.is_cluster() {
            Keys::for_cluster(prefix)
        } else {
            Keys::new(prefix)
        }
    }

    /// The URLs a pub/sub subscriber may connect to, in the order to try them. Classic
    /// `PUBLISH` on a cluster reaches the subscribers of every node, so any master will do; a
    /// subscriber whose node dies moves on to the next one.
    pub fn pubsub_urls(&self) -> &[String] {
        match self {
            Self::Node(url) => std::slice::from_ref(url),
            Self::Cluster(nodes) => nodes,
        }
    }

    /// A connection that is created without connecting (so the process starts while Redis is
    /// down) and reconnects by itself.
    pub fn connect_lazy(&self, opts: ConnOptions) -> RedisResult<RedisConn> {
        match self {
            Self::Node(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(opts.connect_timeout))
                    .set_response_timeout(Some(opts.response_timeout))
                    .set_number_of_retries(opts.retries)
                    .set_max_delay(opts.max_delay);
                Ok(RedisConn::Node(ConnectionManager::new_lazy_with_config(
                    client, config,
                )?))
            }
            Self::Cluster(nodes) => {
                let (client, config) = cluster_client(nodes, opts)?;
                Ok(RedisConn::Cluster(
                    client.get_pending_async_connection_with_config(config),
                ))
            }
        }
    }

    /// A connection established now (fails when Redis is unreachable); on one node a plain
    /// multiplexed connection that does not reconnect, for short-lived uses such as a tail's
    /// blocking reads.
    pub async fn connect(&self, opts: ConnOptions) -> RedisResult<RedisConn> {
        match self {
            Self::Node(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(opts.connect_timeout))
                    .set_response_timeout(Some(opts.response_timeout));
                Ok(RedisConn::Plain(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            Self::Cluster(nodes) => {
                let (client, config) = cluster_client(nodes, opts)?;
                Ok(RedisConn::Cluster(
                    client.get_async_connection_with_config(config).await?,
                ))
            }
        }
    }
}

/// Attempts a cluster command gets beyond [`ConnOptions::retries`]: a redirection (`MOVED`,
/// `ASK`) counts as a retry, and one often follows the reconnect to a master that came back.
pub const CLUSTER_REDIRECTIONS: usize = 2;

fn cluster_client(
    nodes: &[String],
    opts: ConnOptions,
) -> RedisResult<(redis::cluster::ClusterClient, ClusterConfig)> {
    let max_wait_ms = u64::try_from(opts.max_delay.as_millis()).unwrap_or(u64::MAX);
    let client = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
        .connection_timeout(opts.connect_timeout)
        .response_timeout(opts.response_timeout)
        // A master that died is retried (slot map refreshed, reconnect) a few times, then the
        // command fails: the callers already handle a failed command (drop, 503, retry later).
        // A redirection (`MOVED`/`ASK`) counts as a retry too, and one often follows the
        // reconnect to a master that came back (the command is routed again by a slot map
        // still being rebuilt): [`CLUSTER_REDIRECTIONS`] more attempts on top of the caller's,
        // all within `overall_response_timeout`.
        .retries(
            u32::try_from(opts.retries.max(1).saturating_add(CLUSTER_REDIRECTIONS))
                .unwrap_or(u32::MAX),
        )
        .min_retry_wait(10.min(max_wait_ms))
        .max_retry_wait(max_wait_ms.max(11))
        .overall_response_timeout(Some(opts.response_timeout * 2))
        .build()?;
    // The per-connection config replaces the builder's timeouts: give them again.
    let config = ClusterConfig::new()
        .set_connection_timeout(opts.connect_timeout)
        .set_response_timeout(opts.response_timeout);
    Ok((client, config))
}

/// A connection to one node or to a cluster; clone it freely (clones share the connection).
#[derive(Clone)]
pub enum RedisConn {
    /// One node, reconnecting.
    Node(ConnectionManager),
    /// One node, not reconnecting (see [`RedisTarget::connect`]).
    Plain(redis::aio::MultiplexedConnection),
    /// A cluster.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Node(_) => "RedisConn::Node",
            Self::Plain(_) => "RedisConn::Plain",
            Self::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

impl RedisConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Plain(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(c) => c.req_packed_commands(cmd, offset, count),
            Self::Plain(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Plain(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_win_over_url() {
        let nodes = vec!["redis://127.0.0.1:7000".to_string()];
        assert_eq!(
            RedisTarget::from_config("redis://h:1", &nodes),
            RedisTarget::Cluster(nodes.clone())
        );
        assert_eq!(
            RedisTarget::from_config("redis://h:1", &[]),
            RedisTarget::Node("redis://h:1".into())
        );
    }

    #[test]
    fn validation_names_the_bad_node() {
        let t = RedisTarget::Cluster(vec!["redis://127.0.0.1:7000".into(), "http://x".into()]);
        assert!(matches!(
            t.validate(),
            Err(RedisTargetError::ClusterNode { index: 1, .. })
        ));
        let t = RedisTarget::Cluster(vec![" ".into()]);
        assert!(matches!(
            t.validate(),
            Err(RedisTargetError::ClusterNode { index: 0, .. })
        ));
        assert!(RedisTarget::Node("nope://".into()).validate().is_err());
        assert!(RedisTarget::Node("redis://127.0.0.1:6379".into())
            .validate()
            .is_ok());
    }

    #[test]
    fn cluster_keys_tag_the_access_log_and_node_keys_do_not() {
        let node = RedisTarget::Node("redis://h".into()).keys("wp:");
        assert_eq!(node.access_stream(), "wp:access");
        let cluster = RedisTarget::Cluster(vec!["redis://h".into()]).keys("wp:");
        assert_eq!(cluster.access_stream(), "wp:access:{0}");
        assert_eq!(cluster.gateway_config(), "wp:gateway:config");
    }
}
