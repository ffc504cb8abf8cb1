//! The access-log secondary index (SPEC §5): per-batch postings kept beside the access-log
//! stream, written by the proxy's writer in the same script call as the entries (so a reader
//! never sees an entry without its postings).
//!
//! Contiguous ids: the append script gives a batch's entries contiguous ids in one millisecond
//! (`ms-s`, `ms-(s+1)`, …), so an entry is named by its batch's base id (the first entry's id)
//! and its offset in the batch. For each index stream the batch touches, the script appends ONE
//! entry with the batch's base id whose fields carry the offsets of the batch's entries having
//! that value ([`encode_offsets`]: ascending, runs compressed, `0,3,5-9`). A reader walks an
//! index stream with `XREVRANGE` between the same bounds as the log (a posting's ids all share
//! its base's millisecond, so the lower bound is that millisecond's `-0`), expands postings into
//! ids and fetches the entries by contiguous runs.
//!
//! Names ([`IndexTerm::key`]):
//! - low-cardinality fields (country, status, class, decision, UA type, risk bucket, rule): one
//!   postings stream per value, `<prefix>access:px:<field>:<value>`, field [`POSTING_FIELD`];
//! - client IP: [`IP_BUCKETS`] bucket streams, `<prefix>access:px:ipb64:<bucket>`, the bucket
//!   being [`fnv1a32`] of the canonical IP text modulo [`IP_BUCKETS`]; a posting's field names
//!   are the canonical IPs of the bucket present in the batch. Two IPs of one bucket never mix:
//!   each has its own field.
//!
//! Every postings stream is listed in the registry `<prefix>access:ixset` (a set), which the
//! sweep walks to trim each stream to the log's first millisecond and to drop the empty ones.
//! The previous format (one stream per value, one member per entry, `access:ix:…` listed in the
//! sorted set `access:ixkeys`) is never read: the sweep deletes it.
//!
//! Values too common to be worth an index are not indexed ([`IndexTerm::is_indexed`]):
//! `decision=allow`, status class `2xx` and the exact 2xx statuses. A filter on them alone is
//! served by the bounded scan of the log, which finds a page of them within a few entries more
//! than the page; combined with an indexed filter, the index drives and they are checked on the
//! entries.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::access_log::{AccessLogEntry, Decision};
use crate::keys::AccessKeys;

/// The field name of a low-cardinality posting (its value is the offsets).
pub const POSTING_FIELD: &str = "p";

/// Number of client-IP bucket streams. Part of the key names (`ipb64:`): changing it needs a new
/// name, never a runtime setting.
pub const IP_BUCKETS: u32 = 64;

/// Most offsets one posting may expand to (a batch is far smaller): a reader refuses a posting
/// claiming more, so that a corrupt posting can never make it allocate without bound.
pub const MAX_POSTING_OFFSETS: usize = 1 << 20;

/// FNV-1a, 32 bits.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The bucket of a canonical IP text ([`canonical_ip`]).
pub fn ip_bucket(canonical: &str) -> u32 {
    fnv1a32(canonical.as_bytes()) % IP_BUCKETS
}

/// Ascending offsets as text, runs of consecutive offsets compressed: `[0, 3, 5, 6, 7]` →
/// `0,3,5-7`. `offsets` must be strictly ascending.
pub fn encode_offsets(offsets: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < offsets.len() {
        let start = offsets[i];
        let mut end = start;
        while i + 1 < offsets.len() && offsets[i + 1] == end.wrapping_add(1) {
            end = offsets[i + 1];
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&start.to_string());
        if end != start {
            out.push('-');
            out.push_str(&end.to_string());
        }
        i += 1;
    }
    out
}

/// The offsets of an [`encode_offsets`] text, ascending; `None` when the text is malformed
/// (empty, not ascending, a bad number, more than [`MAX_POSTING_OFFSETS`]).
pub fn decode_offsets(text: &str) -> Option<Vec<u32>> {
    let mut out: Vec<u32> = Vec::new();
    for part in text.split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (parse_offset(a)?, parse_offset(b)?),
            None => {
                let a = parse_offset(part)?;
                (a, a)
            }
        };
        if b < a || out.last().is_some_and(|l| *l >= a) {
            return None;
        }
        if out.len() + (b - a) as usize >= MAX_POSTING_OFFSETS {
            return None;
        }
        out.extend(a..=b);
    }
    Some(out)
}

fn parse_offset(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// One postings stream's posting for a batch: the stream and its fields (a field name and the
/// encoded offsets of the batch's entries having that value), in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    pub key: String,
    pub fields: Vec<(String, String)>,
}

/// The postings of a batch (entry `i` of `batch` at offset `i`), one per postings stream the
/// batch touches, ordered by key.
pub fn batch_postings(keys: &AccessKeys, batch: &[AccessLogEntry]) -> Vec<Posting> {
    // key -> field -> offsets
    let mut by_key: BTreeMap<String, BTreeMap<String, Vec<u32>>> = BTreeMap::new();
    let mut terms = Vec::new();
    for (i, entry) in batch.iter().enumerate() {
        terms.clear();
        entry_terms(entry, &mut terms);
        let offset = u32::try_from(i).unwrap_or(u32::MAX);
        for term in &terms {
            let offsets = by_key
                .entry(term.key(keys))
                .or_default()
                .entry(term.posting_field().to_string())
                .or_default();
            // An entry may list a term once only, but stay strictly ascending regardless.
            if offsets.last() != Some(&offset) {
                offsets.push(offset);
            }
        }
    }
    by_key
        .into_iter()
        .map(|(key, fields)| Posting {
            key,
            fields: fields
                .into_iter()
                .map(|(f, offsets)| (f, encode_offsets(&offsets)))
                .collect(),
        })
        .collect()
}

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

    /// The postings stream of this index: the IP's bucket stream for an IP, the value's own
    /// stream otherwise.
    pub fn key(&self, keys: &AccessKeys) -> String {
        match self.field {
            IndexField::Ip => keys.ip_bucket(ip_bucket(&self.value)),
            f => keys.postings(f.as_str(), &self.value),
        }
    }

    /// The field holding this value's offsets in a posting of [`Self::key`]: the canonical IP
    /// for an IP, [`POSTING_FIELD`] otherwise.
    pub fn posting_field(&self) -> &str {
        match self.field {
            IndexField::Ip => &self.value,
            _ => POSTING_FIELD,
        }
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
    use crate::keys::Keys;

    #[test]
    fn keys_and_terms() {
        let k = Keys::new("t:").access();
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
                "t:access:px:ipb64:32",
                "t:access:px:country:DE",
                "t:access:px:status:404",
                "t:access:px:class:4xx",
                "t:access:px:decision:reject",
                "t:access:px:ua:cli",
                "t:access:px:risk:0.5",
                "t:access:px:risk:0.8",
            ]
        );
        assert_eq!(terms[0].posting_field(), "203.0.113.7");
        assert_eq!(terms[1].posting_field(), POSTING_FIELD);
        assert_eq!(k.postings_registry(), "t:access:ixset");
    }

    #[test]
    fn common_values_are_not_indexed() {
        let k = Keys::new("t:").access();
        let e = AccessLogEntry {
            ip: "203.0.113.7".into(),
            status: 200,
            decision: Decision::Allow,
            ..Default::default()
        };
        let mut terms = Vec::new();
        entry_terms(&e, &mut terms);
        let keys: Vec<String> = terms.iter().map(|t| t.key(&k)).collect();
        assert_eq!(keys, ["t:access:px:ipb64:32"]);
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

    #[test]
    fn fnv1a32_test_vectors_and_buckets() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
        assert_eq!(fnv1a32(b"203.0.113.7"), 0x8fcf_70e0);
        assert_eq!(ip_bucket("203.0.113.7"), 32);
        // Any spelling of one address lands in one bucket.
        assert_eq!(
            IndexTerm::ip("::ffff:203.0.113.7").key(&Keys::default().access()),
            "wp:access:px:ipb64:32"
        );
    }

    #[test]
    fn offsets_encode_runs() {
        assert_eq!(encode_offsets(&[]), "");
        assert_eq!(encode_offsets(&[0]), "0");
        assert_eq!(encode_offsets(&[0, 3, 5, 6, 7, 8, 9]), "0,3,5-9");
        assert_eq!(encode_offsets(&(0..512).collect::<Vec<_>>()), "0-511");
        assert_eq!(decode_offsets("0,3,5-9"), Some(vec![0, 3, 5, 6, 7, 8, 9]));
    }

    #[test]
    fn malformed_offsets_are_refused() {
        for bad in [
            "",
            ",",
            "1,",
            ",1",
            "a",
            "-1",
            "1-",
            "5-3",
            "3,3",
            "4,2",
            "0-3,3",
            "1--2",
            " 1",
            "1 ",
            "+1",
            "99999999999",
            "0-4294967295",
            "1,2-1",
        ] {
            assert_eq!(decode_offsets(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn batch_postings_group_offsets_by_stream_and_field() {
        let k = Keys::new("t:").access();
        let e = |ip: &str, status: u16| AccessLogEntry {
            ip: ip.into(),
            status,
            ..Default::default()
        };
        let batch = [
            e("203.0.113.7", 404),
            e("203.0.113.7", 200),
            e("::ffff:203.0.113.7", 404),
            e("198.51.100.10", 404),
        ];
        let postings = batch_postings(&k, &batch);
        let get = |key: &str| {
            postings
                .iter()
                .find(|p| p.key == key)
                .map(|p| p.fields.clone())
                .unwrap_or_default()
        };
        assert_eq!(
            get("t:access:px:ipb64:32"),
            [("203.0.113.7".to_string(), "0-2".to_string())]
        );
        assert_eq!(
            get("t:access:px:ipb64:57"),
            [("198.51.100.10".to_string(), "3".to_string())]
        );
        assert_eq!(
            get("t:access:px:status:404"),
            [("p".to_string(), "0,2-3".to_string())]
        );
        let mut sorted: Vec<&str> = postings.iter().map(|p| p.key.as_str()).collect();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            postings.iter().map(|p| p.key.as_str()).collect::<Vec<_>>()
        );
    }

    proptest::proptest! {
        #[test]
        fn offsets_round_trip(set in proptest::collection::btree_set(0u32..2000, 0..300)) {
            let offsets: Vec<u32> = set.into_iter().collect();
            let text = encode_offsets(&offsets);
            if offsets.is_empty() {
                proptest::prop_assert_eq!(decode_offsets(&text), None);
            } else {
                proptest::prop_assert_eq!(decode_offsets(&text), Some(offsets));
            }
        }

        #[test]
        fn decoding_never_panics(text in "[0-9,\\- ]{0,40}") {
            if let Some(v) = decode_offsets(&text) {
                proptest::prop_assert!(v.windows(2).all(|w| w[0] < w[1]));
            }
        }
    }
}
