//! Every Redis key and channel name, in one place, so that the proxy and the admin API can
//! never spell one differently.

/// Default prefix of every key and channel (`[redis] key_prefix`).
pub const DEFAULT_PREFIX: &str = "wp:";

/// Suffix of the access-log stream.
pub const ACCESS_STREAM: &str = "access";
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

/// The keys of one access-log shard: its stream and everything the append script writes in the
/// same call (high-water marks, per-minute counters, index streams and their registry, rollups).
///
/// Every name of the family comes from here, so that on a Redis Cluster all of them can carry the
/// shard's hash tag and share one slot (a script may only touch keys of one slot). The
/// unsharded family ([`Keys::access`]) keeps the single-node names of SPEC (`wp:access`,
/// `wp:access:hwm`, `wp:gw:req:<minute>`, …); a tagged family ([`Keys::access_shard`]) puts
/// `{<shard>}` after `access` and after the counters' name: `wp:access:{3}`, `wp:access:{3}:hwm`,
/// `wp:access:{3}:ix:ip:…`, `wp:gw:req:{3}:<minute>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKeys {
    prefix: String,
    /// `""` unsharded, `:{<shard>}` tagged.
    tag: String,
    shard: Option<u16>,
}

impl AccessKeys {
    /// The shard number of a tagged family, `None` for the unsharded one.
    pub fn shard(&self) -> Option<u16> {
        self.shard
    }

    /// The access-log stream, `wp:access` unsharded.
    pub fn stream(&self) -> String {
        format!("{}{}{}", self.prefix, ACCESS_STREAM, self.tag)
    }

    /// The high-water marks of the proxies' batches, `wp:access:hwm` unsharded.
    pub fn hwm(&self) -> String {
        format!("{}{}:hwm", self.prefix, self.base())
    }

    fn base(&self) -> String {
        format!("{ACCESS_STREAM}{}", self.tag)
    }

    /// The exact per-minute access-log counts of one unix minute (a hash).
    pub fn rollup(&self, unix_minute: u64) -> String {
        format!("{}{}:rollup:{}", self.prefix, self.base(), unix_minute)
    }

    /// Hits per client IP in one unix minute (a bounded sorted set).
    pub fn rollup_ips(&self, unix_minute: u64) -> String {
        format!("{}:ip", self.rollup(unix_minute))
    }

    /// Hits per path in one unix minute (a bounded sorted set).
    pub fn rollup_paths(&self, unix_minute: u64) -> String {
        format!("{}:path", self.rollup(unix_minute))
    }

    /// One index stream of the old format (one member per entry), `wp:access:ix:<field>:<value>`
    /// unsharded. Nothing writes these any more: the sweep deletes the keys listed in
    /// [`Self::index_registry`].
    pub fn index(&self, field: &str, value: &str) -> String {
        format!("{}{}:ix:{}:{}", self.prefix, self.base(), field, value)
    }

    /// The registry of the old-format index keys (a sorted set), `wp:access:ixkeys` unsharded;
    /// only the sweep reads it, to delete what it lists.
    pub fn index_registry(&self) -> String {
        format!("{}{}:ixkeys", self.prefix, self.base())
    }

    /// The postings stream of one low-cardinality index value (`field` one of
    /// [`crate::access_index::IndexField`]'s names, `value` canonical),
    /// `wp:access:px:<field>:<value>` unsharded; build it through
    /// [`crate::access_index::IndexTerm::key`].
    pub fn postings(&self, field: &str, value: &str) -> String {
        format!("{}{}:px:{}:{}", self.prefix, self.base(), field, value)
    }

    /// The postings stream of one client-IP bucket ([`crate::access_index::IP_BUCKETS`] of
    /// them), `wp:access:px:ipb64:<bucket>` unsharded. The bucket count is part of the name.
    pub fn ip_bucket(&self, bucket: u32) -> String {
        format!(
            "{}{}:px:ipb{}:{}",
            self.prefix,
            self.base(),
            crate::access_index::IP_BUCKETS,
            bucket
        )
    }

    /// The registry of this family's postings streams (a set), `wp:access:ixset` unsharded.
    pub fn postings_registry(&self) -> String {
        format!("{}{}:ixset", self.prefix, self.base())
    }

    /// Requests this shard counted in the given unix minute, `wp:gw:req:<minute>` unsharded.
    pub fn requests_in_minute(&self, unix_minute: u64) -> String {
        format!(
            "{}{}{}{}",
            self.prefix,
            GATEWAY_REQUESTS_PER_MINUTE,
            self.counter_tag(),
            unix_minute
        )
    }

    /// Rejects this shard counted in the given unix minute, `wp:gw:rej:<minute>` unsharded.
    pub fn rejects_in_minute(&self, unix_minute: u64) -> String {
        format!(
            "{}{}{}{}",
            self.prefix,
            GATEWAY_REJECTS_PER_MINUTE,
            self.counter_tag(),
            unix_minute
        )
    }

    /// `{3}:` tagged, empty unsharded (the counter suffixes end with `:` already).
    fn counter_tag(&self) -> String {
        self.shard.map_or_else(String::new, |s| format!("{{{s}}}:"))
    }
}

/// Most access-log shards (`[access_log] shards`).
pub const MAX_ACCESS_SHARDS: u16 = 256;

/// Checks `[access_log] shards`: a whole number from 1 to [`MAX_ACCESS_SHARDS`]. The message
/// says what is wrong (the caller names the key).
pub fn validate_access_shards(shards: u64) -> Result<u16, String> {
    u16::try_from(shards)
        .ok()
        .filter(|n| (1..=MAX_ACCESS_SHARDS).contains(n))
        .ok_or_else(|| {
            format!("must be a whole number from 1 to {MAX_ACCESS_SHARDS} (got {shards})")
        })
}

/// `[access_log] shards` when it is not set on a Redis Cluster: enough streams to spread the
/// log over the masters of a usual cluster (3 to 16 of them). On a single node the default is 1.
pub const DEFAULT_CLUSTER_ACCESS_SHARDS: u16 = 16;

/// Which access-log families exist: the one place that decides it, for the proxies (which
/// write them) and the admin API (which reads and merges them).
///
/// `shards` is `[access_log] shards` (validated, 1..=[`MAX_ACCESS_SHARDS`]); `None` when it is
/// not set, which is [`Keys::default_access_shards`]: 1 on a single node,
/// [`DEFAULT_CLUSTER_ACCESS_SHARDS`] on a Redis Cluster. One shard on a single Redis is the
/// unsharded family ([`Keys::access`], the SPEC names, `wp:access`…), so a single-node install
/// keeps its keys. Any other count, and any count on a Redis Cluster ([`Keys::for_cluster`]),
/// is `shards` tagged families [`Keys::access_shard`]`(0..shards)`, each in its own slot so that
/// they spread over the cluster's masters; shard 0 is the family a cluster without shards used
/// (`{0}`), so its entries stay in the log.
pub fn access_families(keys: &Keys, shards: Option<u16>) -> Vec<AccessKeys> {
    let shards = shards
        .unwrap_or_else(|| keys.default_access_shards())
        .max(1);
    if shards == 1 && !keys.is_cluster() {
        vec![keys.access()]
    } else {
        (0..shards).map(|n| keys.access_shard(n)).collect()
    }
}

impl AccessKeys {
    /// How the family is named in the registry of families ([`Keys::access_family_registry`])
    /// and in cursors: `-` unsharded, the shard number otherwise.
    pub fn label(&self) -> String {
        self.shard
            .map_or_else(|| "-".to_string(), |s| s.to_string())
    }
}

/// Key names under one prefix. The `access_*` and per-minute counter methods name the keys of
/// the unsharded access-log family ([`Keys::access`]); code that may run sharded takes an
/// [`AccessKeys`] instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    /// On a Redis Cluster the access-log family is the tagged family of shard 0, so that the
    /// append script and the admin's index reads touch one slot.
    cluster: bool,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Keys {
    /// Names for one Redis node: the names of SPEC.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            cluster: false,
        }
    }

    /// Names for a Redis Cluster: as [`Keys::new`], except that the access-log family
    /// ([`Keys::access`]) is shard 0's, every name carrying the hash tag `{0}`.
    pub fn for_cluster(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            cluster: true,
        }
    }

    /// Whether these names are for a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// How many access-log shards there are when `[access_log] shards` is not set: 1 on a
    /// single node, [`DEFAULT_CLUSTER_ACCESS_SHARDS`] on a cluster (see [`access_families`]).
    pub fn default_access_shards(&self) -> u16 {
        if self.cluster {
            DEFAULT_CLUSTER_ACCESS_SHARDS
        } else {
            1
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{}", self.prefix, suffix)
    }

    /// The access-log family: the single-node names of SPEC, or on a cluster shard 0's tagged
    /// family (one hash slot for the stream and everything written with it).
    ///
    /// This is the whole log only when there is one shard: code that writes or reads the log
    /// takes its families from [`access_families`] (on a cluster the log has
    /// [`DEFAULT_CLUSTER_ACCESS_SHARDS`] shards unless `[access_log] shards` says otherwise).
    pub fn access(&self) -> AccessKeys {
        if self.cluster {
            return self.access_shard(0);
        }
        AccessKeys {
            prefix: self.prefix.clone(),
            tag: String::new(),
            shard: None,
        }
    }

    /// The access-log family of one shard, every name carrying the hash tag `{<shard>}`.
    pub fn access_shard(&self, shard: u16) -> AccessKeys {
        AccessKeys {
            prefix: self.prefix.clone(),
            tag: format!(":{{{shard}}}"),
            shard: Some(shard),
        }
    }

    /// The family a [`AccessKeys::label`] names (`-` or a shard number below
    /// [`MAX_ACCESS_SHARDS`]); `None` for anything else, and for `-` on a cluster (which has no
    /// unsharded family: every family there is tagged).
    pub fn access_family(&self, label: &str) -> Option<AccessKeys> {
        if label == "-" {
            return (!self.cluster).then(|| self.access());
        }
        if label.is_empty() || !label.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        label
            .parse::<u16>()
            .ok()
            .filter(|n| *n < MAX_ACCESS_SHARDS)
            .map(|n| self.access_shard(n))
    }

    /// The set of every access-log family ever written under this prefix (members are
    /// [`AccessKeys::label`]s), `wp:access:families` by default. Proxies add their families at
    /// start; readers merge the configured families with these, so that entries written under
    /// an earlier `[access_log] shards` stay readable. A family whose stream is gone leaves
    /// the set.
    pub fn access_family_registry(&self) -> String {
        format!("{}{}:families", self.prefix, ACCESS_STREAM)
    }

    /// The access-log stream, `wp:access` by default.
    pub fn access_stream(&self) -> String {
        self.access().stream()
    }

    /// The access-log high-water marks, `wp:access:hwm` by default.
    pub fn access_hwm(&self) -> String {
        self.access().hwm()
    }

    /// The exact per-minute access-log counts of one unix minute (a hash).
    pub fn access_rollup(&self, unix_minute: u64) -> String {
        self.access().rollup(unix_minute)
    }

    /// Hits per client IP in one unix minute (a bounded sorted set).
    pub fn access_rollup_ips(&self, unix_minute: u64) -> String {
        self.access().rollup_ips(unix_minute)
    }

    /// Hits per path in one unix minute (a bounded sorted set).
    pub fn access_rollup_paths(&self, unix_minute: u64) -> String {
        self.access().rollup_paths(unix_minute)
    }

    /// One access-log index stream (`field` one of [`crate::access_index::IndexField`]'s
    /// names, `value` canonical); build it through [`crate::access_index::IndexTerm::key`].
    /// A later cluster sharding puts the stream, the marks and the index under one hash tag.
    pub fn access_index(&self, field: &str, value: &str) -> String {
        self.access().index(field, value)
    }

    /// The registry of access-log index keys, `wp:access:ixkeys` by default.
    pub fn access_index_registry(&self) -> String {
        self.access().index_registry()
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
        self.access().requests_in_minute(unix_minute)
    }

    /// Rejected requests counted in the given unix minute.
    pub fn rejects_in_minute(&self, unix_minute: u64) -> String {
        self.access().rejects_in_minute(unix_minute)
    }

    /// Hits of one rule counted in the given unix minute. On a cluster the rule id is the hash
    /// tag (`<prefix>rule:hits:{<rule id>}:<minute>`): one rule's counters and last hit share a
    /// slot, so they are written and read together.
    pub fn rule_hits_in_minute(&self, rule_id: &str, unix_minute: u64) -> String {
        format!(
            "{}{}{}:{}",
            self.prefix,
            RULE_HITS_PER_MINUTE,
            self.tagged(rule_id),
            unix_minute
        )
    }

    /// When one rule last matched (milliseconds since the Unix epoch); on a cluster
    /// `<prefix>rule:last_hit:{<rule id>}`.
    pub fn rule_last_hit(&self, rule_id: &str) -> String {
        format!("{}{}{}", self.prefix, RULE_LAST_HIT, self.tagged(rule_id))
    }

    /// `{part}` on a cluster (a hash tag), `part` on one node.
    fn tagged(&self, part: &str) -> String {
        if self.cluster {
            format!("{{{part}}}")
        } else {
            part.to_string()
        }
    }

    /// An admin rate-limit bucket. On a cluster the actor is the hash tag
    /// (`<prefix>rl:{<actor>}:<window>:<bucket>`), so that one `MULTI` counts both windows.
    pub fn admin_rate_limit(&self, actor: &str, window: &str, bucket: u64) -> String {
        if self.cluster {
            return format!(
                "{}{}{}:{}:{}",
                self.prefix,
                ADMIN_RATE_LIMIT,
                self.tagged(actor),
                window,
                bucket
            );
        }
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
    fn the_unsharded_family_keeps_the_single_node_names() {
        let k = Keys::default();
        let a = k.access();
        assert_eq!(a.shard(), None);
        assert_eq!(a.stream(), k.access_stream());
        assert_eq!(a.hwm(), k.access_hwm());
        assert_eq!(a.rollup(7), k.access_rollup(7));
        assert_eq!(a.rollup_ips(7), k.access_rollup_ips(7));
        assert_eq!(a.rollup_paths(7), k.access_rollup_paths(7));
        assert_eq!(a.index("ip", "1.2.3.4"), k.access_index("ip", "1.2.3.4"));
        assert_eq!(a.index_registry(), k.access_index_registry());
        assert_eq!(a.requests_in_minute(7), k.requests_in_minute(7));
        assert_eq!(a.rejects_in_minute(7), k.rejects_in_minute(7));
    }

    #[test]
    fn a_shard_family_shares_one_hash_tag() {
        let a = Keys::default().access_shard(3);
        assert_eq!(a.shard(), Some(3));
        let names = [
            a.stream(),
            a.hwm(),
            a.rollup(7),
            a.rollup_ips(7),
            a.rollup_paths(7),
            a.index("ip", "1.2.3.4"),
            a.index_registry(),
            a.requests_in_minute(7),
            a.rejects_in_minute(7),
        ];
        assert_eq!(
            names,
            [
                "wp:access:{3}",
                "wp:access:{3}:hwm",
                "wp:access:{3}:rollup:7",
                "wp:access:{3}:rollup:7:ip",
                "wp:access:{3}:rollup:7:path",
                "wp:access:{3}:ix:ip:1.2.3.4",
                "wp:access:{3}:ixkeys",
                "wp:gw:req:{3}:7",
                "wp:gw:rej:{3}:7",
            ]
        );
        for n in names {
            // The first `{…}` of the name is the tag Redis Cluster hashes.
            let tag = n.split('{').nth(1).and_then(|t| t.split('}').next());
            assert_eq!(tag, Some("3"), "{n}");
        }
    }

    #[test]
    fn cluster_names_share_a_slot_where_they_are_written_together() {
        let k = Keys::for_cluster("wp:");
        assert_eq!(k.access_stream(), "wp:access:{0}");
        assert_eq!(k.access_hwm(), "wp:access:{0}:hwm");
        assert_eq!(k.requests_in_minute(7), "wp:gw:req:{0}:7");
        assert_eq!(k.rule_hits_in_minute("rul_1", 7), "wp:rule:hits:{rul_1}:7");
        assert_eq!(k.rule_last_hit("rul_1"), "wp:rule:last_hit:{rul_1}");
        assert_eq!(k.admin_rate_limit("usr_1", "m", 7), "wp:rl:{usr_1}:m:7");
        assert_eq!(k.admin_rate_limit("usr_1", "h", 1), "wp:rl:{usr_1}:h:1");
        // Single keys keep their names.
        assert_eq!(k.gateway_config(), "wp:gateway:config");
        assert_eq!(k.gateway_config_changed(), "wp:gateway:config:changed");
        assert_eq!(
            k.public_throttle("sign_in", "1.2.3.4", 7),
            "wp:throttle:sign_in:1.2.3.4:7"
        );
        // One node: the names of SPEC.
        let n = Keys::new("wp:");
        assert_eq!(n.rule_hits_in_minute("rul_1", 7), "wp:rule:hits:rul_1:7");
        assert_eq!(n.rule_last_hit("rul_1"), "wp:rule:last_hit:rul_1");
        assert_eq!(n.admin_rate_limit("usr_1", "m", 7), "wp:rl:usr_1:m:7");
    }

    #[test]
    fn families_are_decided_in_one_place() {
        let k = Keys::default();
        assert_eq!(k.default_access_shards(), 1);
        assert_eq!(access_families(&k, None), vec![k.access()]);
        assert_eq!(access_families(&k, Some(1)), vec![k.access()]);
        assert_eq!(
            access_families(&k, Some(3)),
            vec![k.access_shard(0), k.access_shard(1), k.access_shard(2)]
        );
        assert_eq!(access_families(&k, Some(256)).len(), 256);
        for f in access_families(&k, Some(3)).into_iter().chain([k.access()]) {
            assert_eq!(k.access_family(&f.label()), Some(f));
        }
        for bad in ["", "x", "256", "+1", "-1", " 1", "99999"] {
            assert_eq!(k.access_family(bad), None, "{bad:?}");
        }
        assert_eq!(validate_access_shards(1), Ok(1));
        assert_eq!(validate_access_shards(256), Ok(256));
        for bad in [0, 257, 65_536, u64::MAX] {
            assert!(validate_access_shards(bad).is_err(), "{bad}");
        }
        assert_eq!(k.access_family_registry(), "wp:access:families");
    }

    #[test]
    fn a_cluster_has_sixteen_tagged_shards_unless_told_otherwise() {
        let k = Keys::for_cluster("wp:");
        assert_eq!(k.default_access_shards(), DEFAULT_CLUSTER_ACCESS_SHARDS);
        let all = access_families(&k, None);
        assert_eq!(all.len(), usize::from(DEFAULT_CLUSTER_ACCESS_SHARDS));
        for (n, f) in all.iter().enumerate() {
            assert_eq!(*f, k.access_shard(u16::try_from(n).unwrap()));
            assert_eq!(k.access_family(&f.label()).as_ref(), Some(f));
            // Every name the append script and the index reads touch shares the shard's tag.
            let tag = format!("{{{n}}}");
            for name in [
                f.stream(),
                f.hwm(),
                f.rollup(7),
                f.rollup_ips(7),
                f.rollup_paths(7),
                f.postings("country", "DE"),
                f.ip_bucket(3),
                f.postings_registry(),
                f.index("ip", "1.2.3.4"),
                f.index_registry(),
                f.requests_in_minute(7),
                f.rejects_in_minute(7),
            ] {
                let first = name.split('{').nth(1).and_then(|t| t.split('}').next());
                assert_eq!(
                    first.map(|t| format!("{{{t}}}")),
                    Some(tag.clone()),
                    "{name}"
                );
            }
        }
        // One shard on a cluster is still tagged: shard 0, where the log of a cluster lived
        // before it was sharded.
        assert_eq!(access_families(&k, Some(1)), vec![k.access_shard(0)]);
        assert_eq!(k.access(), k.access_shard(0));
        assert_eq!(access_families(&k, Some(3)).len(), 3);
        // A cluster has no unsharded family.
        assert_eq!(k.access_family("-"), None);
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
