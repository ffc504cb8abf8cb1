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
        fn text(f: &HashMap<String, String>, k: &str) -> String {
            f.get(k).cloned().unwrap_or_default()
        }
        fn num<T: std::str::FromStr + Default>(
            f: &HashMap<String, String>,
            k: &'static str,
        ) -> Result<T, DecodeError> {
            match f.get(k) {
                None => Ok(T::default()),
                Some(v) if v.is_empty() => Ok(T::default()),
                Some(v) => v.parse().map_err(|_| DecodeError {
                    field: k,
                    value: v.clone(),
                }),
            }
        }
        let decision = match fields.get("decision") {
            None => Decision::Allow,
            Some(v) => Decision::parse(v).ok_or_else(|| DecodeError {
                field: "decision",
                value: v.clone(),
            })?,
        };
        let reasons = fields
            .get("reasons")
            .map(|r| {
                r.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| Cow::Owned(s.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            ts: num(fields, "ts")?,
            method: Cow::Owned(text(fields, "method")),
            host: text(fields, "host"),
            path: text(fields, "path"),
            query: text(fields, "query"),
            status: num(fields, "status")?,
            ip: text(fields, "ip"),
            ip_source: Cow::Owned(text(fields, "ip_source")),
            peer: text(fields, "peer"),
            country: text(fields, "country"),
            risk: num(fields, "risk")?,
            reasons,
            ua: text(fields, "ua"),
            ua_type: Cow::Owned(text(fields, "ua_type")),
            decision,
            latency_us: num(fields, "latency_us")?,
            bytes_out: num(fields, "bytes_out")?,
            upstream: text(fields, "upstream"),
            request_id: text(fields, "request_id"),
            proxy_id: Arc::from(text(fields, "proxy_id")),
            rule: text(fields, "rule"),
            proto: Cow::Owned(text(fields, "proto")),
        })
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
        assert_eq!(AccessLogEntry::from_fields(&map), Ok(e));
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
