//! Reading the country out of one database record, whatever the database's layout.
//!
//! Supported layouts:
//! - MaxMind's GeoIP2/GeoLite2 (and DB-IP's compatible ones): `country.iso_code`, with
//!   `registered_country.iso_code` as a fallback for networks that have no location;
//! - community databases with a flat `country_code` field (ip-location-db, IPinfo Lite).
//!
//! The record is walked once with hand-written visitors rather than a derived struct so
//! that a field of an unexpected type (IPinfo Lite stores the country *name* as a plain
//! string under `country`) is skipped instead of failing the whole record. Strings are
//! borrowed from the database buffer; nothing is allocated per lookup.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::CountryCode;

/// The country fields of one record; each is `Some` only when present and a valid code.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CountryRecord {
    country: Option<CountryCode>,
    registered_country: Option<CountryCode>,
    country_code: Option<CountryCode>,
}

impl CountryRecord {
    /// The best country for the record: where the network is, before where it is registered.
    pub(crate) fn best(&self) -> Option<CountryCode> {
        self.country
            .or(self.country_code)
            .or(self.registered_country)
    }
}

/// Implements the visitor methods for every non-map, non-string value as "no country".
/// Sequences are drained so the decoder stays positioned at the next map entry.
macro_rules! ignore_other_values {
    () => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }
        fn visit_i128<E: de::Error>(self, _: i128) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }
        fn visit_u128<E: de::Error>(self, _: u128) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }
        fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Self::Value::default())
        }
    };
}

/// A value that should be a country-code string; anything else counts as absent.
#[derive(Default)]
struct CodeValue(Option<CountryCode>);

impl<'de> Deserialize<'de> for CodeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CodeVisitor)
    }
}

struct CodeVisitor;

impl<'de> Visitor<'de> for CodeVisitor {
    type Value = CodeValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a country code string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<CodeValue, E> {
        Ok(CodeValue(CountryCode::parse(v)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CodeValue, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(CodeValue(None))
    }

    ignore_other_values!();
}

/// A MaxMind-style `{ "iso_code": "DE", ... }` map; any other shape counts as absent.
#[derive(Default)]
struct NestedIso(Option<CountryCode>);

impl<'de> Deserialize<'de> for NestedIso {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NestedIsoVisitor)
    }
}

/// Keys of a MaxMind country map that we care about.
#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum NestedKey {
    IsoCode,
    #[serde(other)]
    Other,
}

struct NestedIsoVisitor;

impl<'de> Visitor<'de> for NestedIsoVisitor {
    type Value = NestedIso;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a country map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NestedIso, A::Error> {
        let mut code = None;
        while let Some(key) = map.next_key::<NestedKey>()? {
            match key {
                NestedKey::IsoCode => code = map.next_value::<CodeValue>()?.0,
                NestedKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(NestedIso(code))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<NestedIso, E> {
        Ok(NestedIso(None))
    }

    ignore_other_values!();
}

/// Top-level keys that carry a country.
#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum RecordKey {
    Country,
    RegisteredCountry,
    CountryCode,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for CountryRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RecordVisitor)
    }
}

struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = CountryRecord;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CountryRecord, A::Error> {
        let mut record = CountryRecord::default();
        while let Some(key) = map.next_key::<RecordKey>()? {
            match key {
                RecordKey::Country => record.country = map.next_value::<NestedIso>()?.0,
                RecordKey::RegisteredCountry => {
                    record.registered_country = map.next_value::<NestedIso>()?.0;
                }
                RecordKey::CountryCode => record.country_code = map.next_value::<CodeValue>()?.0,
                RecordKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn best_of(json: &str) -> Option<String> {
        // serde_json drives the same visitors as the MaxMind decoder does.
        let record: CountryRecord = serde_json::from_str(json).unwrap();
        record.best().map(|c| c.to_string())
    }

    #[test]
    fn layouts() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                r#"{"country":{"iso_code":"DE","names":{"en":"Germany"}}}"#,
                Some("DE"),
            ),
            (r#"{"registered_country":{"iso_code":"FR"}}"#, Some("FR")),
            (
                r#"{"registered_country":{"iso_code":"FR"},"country":{"iso_code":"DE"}}"#,
                Some("DE"),
            ),
            (r#"{"country_code":"jp"}"#, Some("JP")),
            // IPinfo Lite: `country` is the name, `country_code` the code.
            (
                r#"{"country":"Japan","country_code":"JP","asn":"AS1"}"#,
                Some("JP"),
            ),
            // The located country wins over the flat code and the registration.
            (
                r#"{"country_code":"US","country":{"iso_code":"CA"}}"#,
                Some("CA"),
            ),
            (
                r#"{"country_code":"US","registered_country":{"iso_code":"CA"}}"#,
                Some("US"),
            ),
            // Invalid or oddly typed values are skipped, not fatal.
            (
                r#"{"country":{"iso_code":"--"},"registered_country":{"iso_code":"NL"}}"#,
                Some("NL"),
            ),
            (
                r#"{"country":{"iso_code":7},"country_code":["x"],"registered_country":[1,{"a":2}]}"#,
                None,
            ),
            (r#"{"country_code":{"iso_code":"DE"}}"#, None),
            (r#"{"country":null,"country_code":true}"#, None),
            (r#"{"continent":{"code":"EU"},"asn":3320}"#, None),
            (r#"{}"#, None),
        ];
        for (json, expected) in cases {
            assert_eq!(best_of(json).as_deref(), *expected, "{json}");
        }
    }

    #[test]
    fn non_map_record_is_an_error() {
        assert!(serde_json::from_str::<CountryRecord>(r#""DE""#).is_err());
    }
}
