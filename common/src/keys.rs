//! Every Redis key and channel name, in one place, so that the proxy and the admin API can
//! never spell one differently.

/// Default prefix of every key and channel (`[redis] key_prefix`).
pub const DEFAULT_PREFIX: &str = "wp:";

/// Suffix of the access-log stream.
pub const ACCESS_STREAM: &str = "access";
/// Suffix of the hash beside the stream holding each proxy's access-log high-water mark (field
/// `proxy_id`, value the sequence of the last batch appended). A later cluster sharding moves
/// the stream and this hash into one hash slot together (a shared `{…}` tag).
pub const ACCESS_HWM: &str = "access:hwm";
/// Suffix of the per-minute access-log rollups (`<prefix>access:rollup:<unix minute>`, a hash,
/// with the sorted sets `…:ip` and `…:path` beside it; see [`crate::rollup`]).
pub const ACCESS_ROLLUP: &str = "access:rollup:";
/// Suffix of the access-log index streams (`<prefix>access:ix:<field>:<value>`, see
/// [`crate::access_index`]).
pub const ACCESS_INDEX: &str = "access:ix:";
/// Suffix of the registry of access-log index keys (a sorted set: member the index key, score
/// the millisecond of its newest member).
pub const ACCESS_INDEX_REGISTRY: &str = "access:ixkeys";
/// Suffix of the JSON gateway config written by the admin API.
pub const GATEWAY_CONFIG: &str = "gateway:config";
/// Suffix of the pub/sub channel announcing a new gateway config.
pub const GATEWAY_CONFIG_CHANGED: &str = "gateway:config:changed";
/// Suffix of the per-minute request counters (`<prefix>gw:req:<unix minute>`).
pub const GATEWAY_REQUESTS_PER_MINUTE: &str = "gw:req:";
/// Suffix of the per-minute reject counters (`<prefix>gw:rej:<unix minute>`).
pub const GATEWAY_REJECTS_PER_MINUTE: &str = "gw:rej:";
/// How long per-minute counters live (two hours covers the admin's "last hour" block).
pub const MINUTE_COUNTER_TTL_SECS: u64 = 2 * 60 * 60;
/// Suffix of admin rate-limit counters (`<prefix>rl:<actor>:<window>:<bucket>`).
pub const ADMIN_RATE_LIMIT: &str = "rl:";
/// Suffix of the admin API's per-client throttles on its public endpoints
/// (`<prefix>throttle:<scope>:<subject>:<unix minute>`; the subject is a client IP, an IPv6
/// /64, or a client IP with an account digest).
pub const PUBLIC_THROTTLE: &str = "throttle:";

/// Suffix of the per-rule, per-minute hit counters the proxies keep
/// (`<prefix>rule:hits:<rule id>:<unix minute>`, living [`MINUTE_COUNTER_TTL_SECS`]).
pub const RULE_HITS_PER_MINUTE: &str = "rule:hits:";
/// Suffix of each rule's last hit (`<prefix>rule:last_hit:<rule id>`, milliseconds since the
/// Unix epoch, kept as the maximum any proxy reported).
pub const RULE_LAST_HIT: &str = "rule:last_hit:";

/// Key names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{}", self.prefix, suffix)
    }

    /// The access-log stream, `wp:access` by default.
    pub fn access_stream(&self) -> String {
        self.key(ACCESS_STREAM)
    }

    /// The access-log high-water marks, `wp:access:hwm` by default.
    pub fn access_hwm(&self) -> String {
        self.key(ACCESS_HWM)
    }

    /// The exact per-minute access-log counts of one unix minute (a hash).
    pub fn access_rollup(&self, unix_minute: u64) -> String {
        format!("{}{}{}", self.prefix, ACCESS_ROLLUP, unix_minute)
    }

    /// Hits per client IP in one unix minute (a bounded sorted set).
    pub fn access_rollup_ips(&self, unix_minute: u64) -> String {
        format!("{}{}{}:ip", self.prefix, ACCESS_ROLLUP, unix_minute)
    }

    /// Hits per path in one unix minute (a bounded sorted set).
    pub fn access_rollup_paths(&self, unix_minute: u64) -> String {
        format!("{}{}{}:path", self.prefix, ACCESS_ROLLUP, unix_minute)
    }

    /// One access-log index stream (`field` one of [`crate::access_index::IndexField`]'s
    /// names, `value` canonical); build it through [`crate::access_index::IndexTerm::key`].
    /// A later cluster sharding puts the stream, the marks and the index under one hash tag.
    pub fn access_index(&self, field: &str, value: &str) -> String {
        format!("{}{}{}:{}", self.prefix, ACCESS_INDEX, field, value)
    }

    /// The registry of access-log index keys, `wp:access:ixkeys` by default.
    pub fn access_index_registry(&self) -> String {
        self.key(ACCESS_INDEX_REGISTRY)
    }

    /// The current gateway config (JSON), `wp:gateway:config` by default.
    pub fn gateway_config(&self) -> String {
        self.key(GATEWAY_CONFIG)
    }

    /// The channel on which a new gateway config is announced.
    pub fn gateway_config_changed(&self) -> String {
        self.key(GATEWAY_CONFIG_CHANGED)
    }

    /// Requests counted in the given unix minute.
    pub fn requests_in_minute(&self, unix_minute: u64) -> String {
        format!(
            "{}{}{}",
            self.prefix, GATEWAY_REQUESTS_PER_MINUTE, unix_minute
        )
    }

    /// Rejected requests counted in the given unix minute.
    pub fn rejects_in_minute(&self, unix_minute: u64) -> String {
        format!(
            "{}{}{}",
            self.prefix, GATEWAY_REJECTS_PER_MINUTE, unix_minute
        )
    }

    /// Hits of one rule counted in the given unix minute.
    pub fn rule_hits_in_minute(&self, rule_id: &str, unix_minute: u64) -> String {
        format!(
            "{}{}{}:{}",
            self.prefix, RULE_HITS_PER_MINUTE, rule_id, unix_minute
        )
    }

    /// When one rule last matched (milliseconds since the Unix epoch).
    pub fn rule_last_hit(&self, rule_id: &str) -> String {
        format!("{}{}{}", self.prefix, RULE_LAST_HIT, rule_id)
    }

    /// An admin rate-limit bucket.
    pub fn admin_rate_limit(&self, actor: &str, window: &str, bucket: u64) -> String {
        format!(
            "{}{}{}:{}:{}",
            self.prefix, ADMIN_RATE_LIMIT, actor, window, bucket
        )
    }

    /// A public-endpoint throttle bucket (`scope` names the endpoint, e.g. `sign_in`).
    pub fn public_throttle(&self, scope: &str, subject: &str, unix_minute: u64) -> String {
        format!(
            "{}{}{}:{}:{}",
            self.prefix, PUBLIC_THROTTLE, scope, subject, unix_minute
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_match_the_spec() {
        let k = Keys::default();
        assert_eq!(k.access_stream(), "wp:access");
        assert_eq!(k.access_hwm(), "wp:access:hwm");
        assert_eq!(k.gateway_config(), "wp:gateway:config");
        assert_eq!(k.gateway_config_changed(), "wp:gateway:config:changed");
        assert_eq!(k.requests_in_minute(7), "wp:gw:req:7");
        assert_eq!(k.rejects_in_minute(7), "wp:gw:rej:7");
        assert_eq!(k.access_rollup(7), "wp:access:rollup:7");
        assert_eq!(k.access_rollup_ips(7), "wp:access:rollup:7:ip");
        assert_eq!(k.access_rollup_paths(7), "wp:access:rollup:7:path");
    }

    #[test]
    fn prefix_applies_to_every_name() {
        let k = Keys::new("t42:");
        for name in [
            k.access_stream(),
            k.access_hwm(),
            k.gateway_config(),
            k.gateway_config_changed(),
            k.requests_in_minute(1),
            k.rejects_in_minute(1),
            k.admin_rate_limit("usr_1", "m", 1),
            k.public_throttle("sign_in", "127.0.0.1", 1),
            k.rule_hits_in_minute("rul_1", 1),
            k.rule_last_hit("rul_1"),
        ] {
            assert!(name.starts_with("t42:"), "{name}");
        }
    }
}
