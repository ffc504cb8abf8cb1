//! The access-log entry (SPEC §5): one per request, written by the proxy to the Redis Stream
//! and read back by the admin API. Fields are always written in [`FIELDS`] order: a stream's
//! listpack node stores repeated field names once only when they match the node's first
//! entry, so a fixed layout saves memory.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Field names, in the order in which they are written.
pub const FIELDS: [&str; 22] = [
    "ts",
    "method",
    "host",
    "path",
    "query",
    "status",
    "ip",
    "ip_source",
    "peer",
    "country",
    "risk",
    "reasons",
    "ua",
    "ua_type",
    "decision",
    "latency_us",
    "bytes_out",
    "upstream",
    "request_id",
    "proxy_id",
    "rule",
    "proto",
];

/// Whether the request was forwarded, rejected, or forwarded and flagged (`log_only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    #[default]
    Allow,
    Reject,
    /// Would have been rejected, but `risk_mode` is `log_only`: forwarded and flagged.
    Flag,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Reject => "reject",
            Decision::Flag => "flag",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "allow" => Some(Decision::Allow),
            "reject" => Some(Decision::Reject),
            "flag" => Some(Decision::Flag),
            _ => None,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One access-log entry with typed fields.
///
/// The proxy builds one per request and hands it to another thread, so the fields whose values
/// come from a small fixed set (`method` for the standard methods, `ip_source`, `ua_type`,
/// `proto`, the reason names) are `Cow`s that borrow a `&'static str`, and `proxy_id`, the same
/// for every entry of an instance, is shared: none of them costs an allocation per request.
/// Entries read back from the stream own their text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AccessLogEntry {
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    pub method: Cow<'static, str>,
    pub host: String,
    pub path: String,
    pub query: String,
    pub status: u16,
    pub ip: String,
    pub ip_source: Cow<'static, str>,
    pub peer: String,
    /// ISO 3166-1 alpha-2, or empty.
    pub country: String,
    /// Risk score in [0, 1], written with 3 decimals.
    pub risk: f64,
    /// Names of the reasons that fired.
    pub reasons: Vec<Cow<'static, str>>,
    pub ua: String,
    pub ua_type: Cow<'static, str>,
    pub decision: Decision,
    pub latency_us: u64,
    pub bytes_out: u64,
    /// The upstream address the request went to, or empty.
    pub upstream: String,
    pub request_id: String,
    #[serde(with = "shared_str")]
    pub proxy_id: Arc<str>,
    /// The id of the gateway rule that decided the request (`rul_…`), else of the first
    /// `log_only` rule it matched; empty when no rule matched. Entries written before rules
    /// existed read as empty.
    pub rule: String,
    /// The downstream protocol: `http/1.1` or `h2`. Entries written before this field read as
    /// empty.
    pub proto: Cow<'static, str>,
}

/// (De)serialises an `Arc<str>` as a string (serde's own impl needs its `rc` feature).
mod shared_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(d).map(Arc::from)
    }
}

/// A stream entry that cannot be read back as an [`AccessLogEntry`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("access-log field {field:?} has unreadable value {value:?}")]
pub struct DecodeError {
    pub field: &'static str,
    pub value: String,
}

impl AccessLogEntry {
    /// Field values in [`FIELDS`] order, ready for `XADD`.
    pub fn to_fields(&self) -> [(&'static str, String); 22] {
        let mut out: [(&'static str, String); 22] = Default::default();
        let mut slots = out.iter_mut();
        self.write_fields(&mut String::new(), |name, value| {
            if let Some(slot) = slots.next() {
                *slot = (name, value.to_string());
            }
        });
        out
    }

    /// Call `f` with each field name and its text value, in [`FIELDS`] order, without
    /// allocating per field: text fields are lent as they are, numbers and the reason list
    /// are formatted into `scratch`, which a caller reuses from entry to entry.
    pub fn write_fields(&self, scratch: &mut String, mut f: impl FnMut(&'static str, &str)) {
        fn show<'s>(scratch: &'s mut String, value: fmt::Arguments<'_>) -> &'s str {
            use fmt::Write as _;
            scratch.clear();
            // Formatting into a String cannot fail.
            let _ = scratch.write_fmt(value);
            scratch
        }
        f("ts", show(scratch, format_args!("{}", self.ts)));
        f("method", &self.method);
        f("host", &self.host);
        f("path", &self.path);
        f("query", &self.query);
        f("status", show(scratch, format_args!("{}", self.status)));
        f("ip", &self.ip);
        f("ip_source", &self.ip_source);
        f("peer", &self.peer);
        f("country", &self.country);
        f("risk", show(scratch, format_args!("{:.3}", self.risk)));
        scratch.clear();
        for (i, reason) in self.reasons.iter().enumerate() {
            if i > 0 {
                scratch.push(',');
            }
            scratch.push_str(reason);
        }
        f("reasons", scratch);
        f("ua", &self.ua);
        f("ua_type", &self.ua_type);
        f("decision", self.decision.as_str());
        f(
            "latency_us",
            show(scratch, format_args!("{}", self.latency_us)),
        );
        f(
            "bytes_out",
            show(scratch, format_args!("{}", self.bytes_out)),
        );
        f("upstream", &self.upstream);
        f("request_id", &self.request_id);
        f("proxy_id", &self.proxy_id);
        f("rule", &self.rule);
        f("proto", &self.proto);
    }

    /// Read an entry back from its stream fields. Missing text fields read as empty and
    /// missing numbers as 0 (entries written by an older proxy stay readable); a present but
    /// unreadable number or decision is an error.
    pub fn from_fields(fields: &HashMap<String, String>) -> Result<Self, DecodeError> {
        Self::from_pairs(fields.iter().map(|(k, v)| (k.as_str(), v.clone())))
    }

    /// [`Self::from_fields`] over the (name, value) pairs of a stream entry as Redis returns
    /// them, taking the values without copying them: no map, no allocation per text field.
    /// Unknown names are ignored; a name given twice keeps its last value, as in a map.
    pub fn from_pairs<K: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, String)>,
    ) -> Result<Self, DecodeError> {
        fn num<T: std::str::FromStr + Default>(
            field: &'static str,
            value: String,
        ) -> Result<T, DecodeError> {
            if value.is_empty() {
                return Ok(T::default());
            }
            value.parse().map_err(|_| DecodeError { field, value })
        }
        let mut e = Self::default();
        for (name, value) in pairs {
            match name.as_ref() {
                "ts" => e.ts = num("ts", value)?,
                "method" => e.method = Cow::Owned(value),
                "host" => e.host = value,
                "path" => e.path = value,
                "query" => e.query = value,
                "status" => e.status = num("status", value)?,
                "ip" => e.ip = value,
                "ip_source" => e.ip_source = Cow::Owned(value),
                "peer" => e.peer = value,
                "country" => e.country = value,
                "risk" => e.risk = num("risk", value)?,
                "reasons" => {
                    e.reasons = value
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| Cow::Owned(s.to_string()))
                        .collect();
                }
                "ua" => e.ua = value,
                "ua_type" => e.ua_type = Cow::Owned(value),
                "decision" => {
                    e.decision = Decision::parse(&value).ok_or(DecodeError {
                        field: "decision",
                        value,
                    })?;
                }
                "latency_us" => e.latency_us = num("latency_us", value)?,
                "bytes_out" => e.bytes_out = num("bytes_out", value)?,
                "upstream" => e.upstream = value,
                "request_id" => e.request_id = value,
                "proxy_id" => e.proxy_id = Arc::from(value),
                "rule" => e.rule = value,
                "proto" => e.proto = Cow::Owned(value),
                _ => {}
            }
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AccessLogEntry {
        AccessLogEntry {
            ts: 1_732_000_000_123,
            method: "GET".into(),
            host: "example.test".into(),
            path: "/a".into(),
            query: "x=1".into(),
            status: 200,
            ip: "203.0.113.7".into(),
            ip_source: "x-forwarded-for".into(),
            peer: "10.0.0.1".into(),
            country: "DE".into(),
            risk: 0.25,
            reasons: vec!["ua_cli".into(), "rate".into()],
            ua: "curl/8".into(),
            ua_type: "cli".into(),
            decision: Decision::Allow,
            latency_us: 1234,
            bytes_out: 99,
            upstream: "127.0.0.1:3000".into(),
            request_id: "req-1".into(),
            proxy_id: "proxy-1".into(),
            rule: "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0C".into(),
            proto: "h2".into(),
        }
    }

    #[test]
    fn fields_come_in_the_fixed_order() {
        let names: Vec<&str> = sample().to_fields().iter().map(|(k, _)| *k).collect();
        assert_eq!(names, FIELDS);
    }

    #[test]
    fn round_trip() {
        let e = sample();
        let map: HashMap<String, String> = e
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(map["risk"], "0.250");
        assert_eq!(map["reasons"], "ua_cli,rate");
        assert_eq!(AccessLogEntry::from_fields(&map), Ok(e.clone()));
        let pairs = e.to_fields().into_iter().map(|(k, v)| (k.to_string(), v));
        assert_eq!(AccessLogEntry::from_pairs(pairs), Ok(e));
    }

    #[test]
    fn pairs_read_like_a_map() {
        // Missing fields are empty or 0, unknown ones ignored, a repeated one keeps its last
        // value, an empty number is 0.
        let pairs = [
            ("status", "404"),
            ("x-unknown", "1"),
            ("status", "500"),
            ("risk", ""),
            ("ip", "192.0.2.1"),
        ];
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let from_pairs = AccessLogEntry::from_pairs(pairs.iter().map(|(k, v)| (*k, v.to_string())));
        assert_eq!(from_pairs, AccessLogEntry::from_fields(&map));
        let e = from_pairs.expect("readable");
        assert_eq!((e.status, e.risk, e.ip.as_str()), (500, 0.0, "192.0.2.1"));
        assert_eq!(e.decision, Decision::Allow);
        assert!(e.method.is_empty() && e.reasons.is_empty());
        for bad in [("ts", "-1"), ("decision", ""), ("latency_us", "1.5")] {
            let err =
                AccessLogEntry::from_pairs([(bad.0, bad.1.to_string())]).expect_err("unreadable");
            assert_eq!(err.field, bad.0);
        }
    }

    #[test]
    fn unreadable_numbers_are_errors() {
        let mut map = HashMap::new();
        map.insert("status".to_string(), "two hundred".to_string());
        let err = AccessLogEntry::from_fields(&map).expect_err("bad status");
        assert_eq!(err.field, "status");
        let mut map = HashMap::new();
        map.insert("decision".to_string(), "maybe".to_string());
        assert!(AccessLogEntry::from_fields(&map).is_err());
    }
}
