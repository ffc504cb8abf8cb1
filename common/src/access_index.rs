//! The access-log secondary index (SPEC §5): for each indexed field value, a small Redis
//! Stream beside the access-log stream whose entries carry the *same ids* as the access-log
//! entries having that value. The proxy's writer appends them in the same script call as the
//! entry itself (so a reader never sees an entry without its index members), and readers walk
//! an index stream with `XREVRANGE` exactly as they walk the log: ids, cursors and time ranges
//! mean the same thing in both.
//!
//! Why streams: an index member costs ~10–20 bytes inside a stream listpack (the id is
//! delta-encoded against the node's first id and the one field name is shared), where a sorted
//! set member costs ~60–80; and `XTRIM MINID` trims an index by the log's first id whatever
//! trimmed the log (count, age or memory).
//!
//! Names: `<prefix>access:ix:<field>:<value>`, e.g. `wp:access:ix:ip:203.0.113.7`,
//! `wp:access:ix:status:404`, `wp:access:ix:class:4xx`, `wp:access:ix:risk:0.8`. Every index
//! key ever written is listed in the registry `<prefix>access:ixkeys` (a sorted set scored by
//! the millisecond of the newest member written), which the sweep uses to trim or drop index
//! streams older than the log's first id. Key names are built only by [`Keys`].
//!
//! Values too common to be worth an index are not indexed ([`IndexTerm::is_indexed`]):
//! `decision=allow`, status class `2xx` and the exact 2xx statuses. A filter on them alone is
//! served by the bounded scan of the log, which finds a page of them within a few entries more
//! than the page; combined with an indexed filter, the index drives and they are checked on the
//! entries.

use std::net::IpAddr;

use crate::access_log::{AccessLogEntry, Decision};
use crate::keys::Keys;

/// The field name of every index member (its value is [`INDEX_MEMBER_VALUE`]): one short name
/// shared by the whole listpack node.
pub const INDEX_MEMBER_FIELD: &str = "i";
/// The value of every index member.
pub const INDEX_MEMBER_VALUE: &str = "1";

/// Risk buckets, in thousandths: an entry whose written risk (3 decimals) is at or above a
/// bucket is indexed under it. A `risk_min` filter is served by the highest bucket not above it
/// (and checked on the entries).
pub const RISK_BUCKETS: [u16; 2] = [500, 800];

/// An indexed field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IndexField {
    /// Client IP, canonical text (IPv4-mapped IPv6 as IPv4, lower-case compressed IPv6).
    Ip,
    /// ISO alpha-2 country, upper case.
    Country,
    /// Exact status code.
    Status,
    /// Status class, `1xx`..`5xx`.
    StatusClass,
    /// `allow`, `reject` or `flag`.
    Decision,
    /// UA type as written.
    UaType,
    /// Risk at or above a bucket (`0.5`, `0.8`).
    Risk,
    /// Deciding (or tagging) gateway rule id.
    Rule,
}

impl IndexField {
    /// The name inside the key.
    pub fn as_str(self) -> &'static str {
        match self {
            IndexField::Ip => "ip",
            IndexField::Country => "country",
            IndexField::Status => "status",
            IndexField::StatusClass => "class",
            IndexField::Decision => "decision",
            IndexField::UaType => "ua",
            IndexField::Risk => "risk",
            IndexField::Rule => "rule",
        }
    }
}

/// One index: a field and a value in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndexTerm {
    pub field: IndexField,
    pub value: String,
}

impl IndexTerm {
    pub fn new(field: IndexField, value: impl Into<String>) -> Self {
        Self {
            field,
            value: value.into(),
        }
    }

    /// The client-IP index of an address in any spelling.
    pub fn ip(ip: &str) -> Self {
        Self::new(IndexField::Ip, canonical_ip(ip))
    }

    /// The country index (any case).
    pub fn country(code: &str) -> Self {
        Self::new(IndexField::Country, code.to_ascii_uppercase())
    }

    pub fn status(status: u16) -> Self {
        Self::new(IndexField::Status, status.to_string())
    }

    /// The class of `class`xx (1..=5).
    pub fn status_class(class: u8) -> Self {
        Self::new(IndexField::StatusClass, format!("{class}xx"))
    }

    pub fn decision(d: Decision) -> Self {
        Self::new(IndexField::Decision, d.as_str())
    }

    pub fn ua_type(t: &str) -> Self {
        Self::new(IndexField::UaType, t)
    }

    /// The risk bucket of `bucket` thousandths (one of [`RISK_BUCKETS`]).
    pub fn risk(bucket: u16) -> Self {
        Self::new(IndexField::Risk, bucket_label(bucket))
    }

    pub fn rule(id: &str) -> Self {
        Self::new(IndexField::Rule, id)
    }

    /// Whether entries with this value are indexed: every term but the common ones
    /// (`decision=allow`, class `2xx`, exact 2xx statuses), which no index exists for. Readers
    /// must not look an unindexed term up (its index is always empty).
    pub fn is_indexed(&self) -> bool {
        match self.field {
            IndexField::Decision => self.value != Decision::Allow.as_str(),
            IndexField::StatusClass => self.value != "2xx",
            IndexField::Status => !self.value.starts_with('2') || self.value.len() != 3,
            _ => true,
        }
    }

    /// The Redis key of this index.
    pub fn key(&self, keys: &Keys) -> String {
        self.key_in(&keys.access())
    }

    /// The Redis key of this index in one access-log family (shard).
    pub fn key_in(&self, family: &crate::keys::AccessKeys) -> String {
        family.index(self.field.as_str(), &self.value)
    }
}

/// `500` → `0.5`, `800` → `0.8`, `950` → `0.95`.
fn bucket_label(thousandths: u16) -> String {
    let s = format!("{}.{:03}", thousandths / 1000, thousandths % 1000);
    let s = s.trim_end_matches('0');
    s.strip_suffix('.').unwrap_or(s).to_string()
}

/// Canonical text of an IP (IPv4-mapped IPv6 as IPv4); unparsable text stays as it is.
pub fn canonical_ip(ip: &str) -> String {
    ip.parse::<IpAddr>()
        .map_or_else(|_| ip.to_string(), |a| a.to_canonical().to_string())
}

/// The risk as written to the stream (3 decimals), in thousandths.
pub fn risk_thousandths(risk: f64) -> u16 {
    let r = format!("{risk:.3}").parse::<f64>().unwrap_or(0.0);
    // In [0, 1] by contract; clamp anything else.
    (r * 1000.0).round().clamp(0.0, 1000.0) as u16
}

/// The highest risk bucket at or below `risk_min`, if any.
pub fn risk_bucket_for(risk_min: f64) -> Option<u16> {
    let want = (risk_min * 1000.0).ceil();
    RISK_BUCKETS
        .iter()
        .rev()
        .copied()
        .find(|b| f64::from(*b) <= want)
}

/// Every index an entry belongs to. Empty text values and the common values
/// ([`IndexTerm::is_indexed`]) are not indexed.
pub fn entry_terms(e: &AccessLogEntry, out: &mut Vec<IndexTerm>) {
    if !e.ip.is_empty() {
        out.push(IndexTerm::ip(&e.ip));
    }
    if !e.country.is_empty() {
        out.push(IndexTerm::country(&e.country));
    }
    // 2xx (the common case) is not indexed, neither exactly nor as a class.
    if (100..=599).contains(&e.status) && !(200..=299).contains(&e.status) {
        out.push(IndexTerm::status(e.status));
        // 100..=599, so the class is 1..=5.
        out.push(IndexTerm::status_class((e.status / 100) as u8));
    }
    if e.decision != Decision::Allow {
        out.push(IndexTerm::decision(e.decision));
    }
    if !e.ua_type.is_empty() {
        out.push(IndexTerm::ua_type(&e.ua_type));
    }
    let risk = risk_thousandths(e.risk);
    for b in RISK_BUCKETS {
        if risk >= b {
            out.push(IndexTerm::risk(b));
        }
    }
    if !e.rule.is_empty() {
        out.push(IndexTerm::rule(&e.rule));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_terms() {
        let k = Keys::new("t:");
        let e = AccessLogEntry {
            ip: "::ffff:203.0.113.7".into(),
            country: "de".into(),
            status: 404,
            decision: Decision::Reject,
            ua_type: "cli".into(),
            risk: 0.8,
            ..Default::default()
        };
        let mut terms = Vec::new();
        entry_terms(&e, &mut terms);
        let keys: Vec<String> = terms.iter().map(|t| t.key(&k)).collect();
        assert_eq!(
            keys,
            [
                "t:access:ix:ip:203.0.113.7",
                "t:access:ix:country:DE",
                "t:access:ix:status:404",
                "t:access:ix:class:4xx",
                "t:access:ix:decision:reject",
                "t:access:ix:ua:cli",
                "t:access:ix:risk:0.5",
                "t:access:ix:risk:0.8",
            ]
        );
        assert_eq!(k.access_index_registry(), "t:access:ixkeys");
    }

    #[test]
    fn common_values_are_not_indexed() {
        let k = Keys::new("t:");
        let e = AccessLogEntry {
            ip: "203.0.113.7".into(),
            status: 200,
            decision: Decision::Allow,
            ..Default::default()
        };
        let mut terms = Vec::new();
        entry_terms(&e, &mut terms);
        let keys: Vec<String> = terms.iter().map(|t| t.key(&k)).collect();
        assert_eq!(keys, ["t:access:ix:ip:203.0.113.7"]);
        assert!(!IndexTerm::decision(Decision::Allow).is_indexed());
        assert!(IndexTerm::decision(Decision::Flag).is_indexed());
        assert!(!IndexTerm::status_class(2).is_indexed());
        assert!(IndexTerm::status_class(3).is_indexed());
        for s in [200, 201, 204, 299] {
            assert!(!IndexTerm::status(s).is_indexed(), "{s}");
        }
        for s in [101, 302, 404, 503] {
            assert!(IndexTerm::status(s).is_indexed(), "{s}");
        }
        // Whatever entry_terms writes is indexed.
        for status in [100, 200, 204, 301, 404, 500, 599] {
            for decision in [Decision::Allow, Decision::Reject, Decision::Flag] {
                let e = AccessLogEntry {
                    status,
                    decision,
                    ..Default::default()
                };
                terms.clear();
                entry_terms(&e, &mut terms);
                assert!(terms.iter().all(IndexTerm::is_indexed), "{terms:?}");
                assert_eq!(
                    terms.iter().any(|t| t.field == IndexField::Status),
                    !(200..=299).contains(&status)
                );
            }
        }
    }

    #[test]
    fn risk_buckets_follow_the_written_value() {
        assert_eq!(risk_thousandths(0.4996), 500);
        assert_eq!(risk_thousandths(0.4994), 499);
        assert_eq!(risk_bucket_for(0.5), Some(500));
        assert_eq!(risk_bucket_for(0.79), Some(500));
        assert_eq!(risk_bucket_for(0.8), Some(800));
        assert_eq!(risk_bucket_for(1.0), Some(800));
        assert_eq!(risk_bucket_for(0.49), None);
        assert_eq!(bucket_label(500), "0.5");
        assert_eq!(bucket_label(950), "0.95");
    }
}
