//! ISO 3166-1 alpha-2 country codes.

use std::fmt;
use std::str::FromStr;

use crate::GeoError;

/// An ISO 3166-1 alpha-2 country code such as `DE`, always two uppercase ASCII letters.
///
/// Stored inline as two bytes, so it is `Copy` and costs nothing to pass around on the
/// request path. Parsing accepts either case (`"de"` and `"DE"` give the same code) and
/// rejects anything that is not exactly two ASCII letters.
///
/// ```
/// use watchpost_geo::CountryCode;
///
/// let de: CountryCode = "de".parse()?;
/// assert_eq!(de.as_str(), "DE");
/// assert_eq!(de.to_string(), "DE");
/// assert!("D1".parse::<CountryCode>().is_err());
/// # Ok::<(), watchpost_geo::GeoError>(())
/// ```
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// Builds a code from two bytes, or `None` unless both are ASCII letters.
    pub const fn from_bytes(bytes: [u8; 2]) -> Option<CountryCode> {
        let [a, b] = bytes;
        if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() {
            Some(CountryCode([
                a.to_ascii_uppercase(),
                b.to_ascii_uppercase(),
            ]))
        } else {
            None
        }
    }

    /// Parses a code, or `None` unless `s` is exactly two ASCII letters.
    ///
    /// This is the allocation-free form of [`FromStr`], used on the lookup path.
    pub fn parse(s: &str) -> Option<CountryCode> {
        match *s.as_bytes() {
            [a, b] => CountryCode::from_bytes([a, b]),
            _ => None,
        }
    }

    /// The code as a string slice, e.g. `"DE"`.
    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII letters by construction, so this cannot fail; the fallback
        // only exists to keep the function panic-free.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    /// The two uppercase ASCII bytes.
    pub const fn as_bytes(&self) -> [u8; 2] {
        self.0
    }
}

impl FromStr for CountryCode {
    type Err = GeoError;

    fn from_str(s: &str) -> Result<CountryCode, GeoError> {
        CountryCode::parse(s).ok_or_else(|| GeoError::InvalidCountryCode {
            input: s.to_owned(),
        })
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl AsRef<str> for CountryCode {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl serde::Serialize for CountryCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for CountryCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CodeVisitor;

        impl serde::de::Visitor<'_> for CodeVisitor {
            type Value = CountryCode;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a two-letter ISO 3166-1 alpha-2 country code")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CountryCode, E> {
                CountryCode::parse(v)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }

        deserializer.deserialize_str(CodeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn parses_to(input: &str, expected: Option<&str>) {
        let got = CountryCode::parse(input);
        assert_eq!(
            got.as_ref().map(CountryCode::as_str),
            expected,
            "input {input:?}"
        );
        // FromStr must agree with `parse` and name the input when it rejects it.
        match input.parse::<CountryCode>() {
            Ok(code) => assert_eq!(Some(code), got),
            Err(err) => {
                assert!(got.is_none());
                assert!(err.to_string().contains(&format!("{input:?}")), "{err}");
            }
        }
    }

    #[test]
    fn parse_table() {
        parses_to("DE", Some("DE"));
        parses_to("de", Some("DE"));
        parses_to("dE", Some("DE"));
        parses_to("us", Some("US"));
        parses_to("", None);
        parses_to("D", None);
        parses_to("DEU", None);
        parses_to("D1", None);
        parses_to("--", None);
        parses_to(" D", None);
        parses_to("D ", None);
        // Non-ASCII letters are rejected even when they are alphabetic.
        parses_to("DÉ", None);
        parses_to("ßa", None);
        parses_to("é", None);
    }

    #[test]
    fn display_and_bytes() {
        let code = CountryCode::parse("fr").unwrap();
        assert_eq!(code.to_string(), "FR");
        assert_eq!(format!("{code:>4}"), "  FR");
        assert_eq!(code.as_bytes(), *b"FR");
        assert_eq!(CountryCode::from_bytes(*b"jp"), CountryCode::parse("JP"));
        assert_eq!(CountryCode::from_bytes([b'J', 0]), None);
    }

    #[test]
    fn serde_round_trip() {
        let code = CountryCode::parse("nz").unwrap();
        assert_eq!(serde_json::to_string(&code).unwrap(), r#""NZ""#);
        let back: CountryCode = serde_json::from_str(r#""nz""#).unwrap();
        assert_eq!(back, code);
        assert!(serde_json::from_str::<CountryCode>(r#""x1""#).is_err());
        assert!(serde_json::from_str::<CountryCode>("12").is_err());
    }
}
