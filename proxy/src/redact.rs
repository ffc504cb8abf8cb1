//! Secrets in URLs (`[access_log] redact_query_params`): before an access-log entry leaves the
//! proxy, the value of every query parameter whose name is on the list becomes `REDACTED`.
//!
//! Names match case-insensitively and after percent-decoding (`%74oken` and `TOKEN` are both
//! `token`; `+` decodes to a space as in forms). Parameters are separated by `&` or `;` (some
//! servers accept either, so both are treated as separators here: at worst a value is redacted
//! that the upstream would not have split off). Everything else is kept byte for byte,
//! including the parameter's name as the client spelled it. The upstream always receives the
//! original query; only the log entry is rewritten.

use percent_encoding::percent_decode_str;

/// What replaces a secret value.
pub const REDACTED: &str = "REDACTED";

/// The default `[access_log] redact_query_params`.
pub const DEFAULT_PARAMS: [&str; 10] = [
    "token",
    "access_token",
    "id_token",
    "key",
    "api_key",
    "password",
    "secret",
    "code",
    "signature",
    "sig",
];

/// Rewrites query strings, redacting the values of the listed parameters.
#[derive(Debug, Clone, Default)]
pub struct QueryRedactor {
    /// Lower-cased names.
    names: Vec<String>,
}

impl QueryRedactor {
    /// A redactor for these parameter names (any case).
    pub fn new<S: AsRef<str>>(names: &[S]) -> Self {
        Self {
            names: names
                .iter()
                .map(|n| n.as_ref().to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether no name is listed (then nothing is ever rewritten).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn is_secret(&self, raw_name: &str) -> bool {
        let spaced;
        let raw = if raw_name.contains('+') {
            spaced = raw_name.replace('+', " ");
            spaced.as_str()
        } else {
            raw_name
        };
        let name = percent_decode_str(raw).decode_utf8_lossy();
        self.names.iter().any(|n| n.eq_ignore_ascii_case(&name))
    }

    /// The query with every listed parameter's value replaced by [`REDACTED`], or `None`
    /// when nothing needed redacting (the common case allocates nothing).
    pub fn redact(&self, query: &str) -> Option<String> {
        if self.names.is_empty() || !query.contains('=') {
            return None;
        }
        let mut out: Option<String> = None;
        let mut start = 0;
        let bytes = query.as_bytes();
        for end in
            (0..=bytes.len()).filter(|&i| i == bytes.len() || matches!(bytes[i], b'&' | b';'))
        {
            let part = &query[start..end];
            let redact = part
                .split_once('=')
                .is_some_and(|(name, _)| self.is_secret(name));
            if redact {
                let o = out.get_or_insert_with(|| {
                    let mut s = String::with_capacity(query.len());
                    s.push_str(&query[..start]);
                    s
                });
                if let Some((name, _)) = part.split_once('=') {
                    o.push_str(name);
                    o.push('=');
                    o.push_str(REDACTED);
                }
            } else if let Some(o) = out.as_mut() {
                o.push_str(part);
            }
            if let Some(o) = out.as_mut() {
                if end < bytes.len() {
                    o.push(char::from(bytes[end]));
                }
            }
            start = end + 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(query: &str, want: &str) {
        let r = QueryRedactor::new(&DEFAULT_PARAMS);
        let got = r.redact(query).unwrap_or_else(|| query.to_string());
        assert_eq!(got, want, "query {query:?}");
    }

    #[test]
    fn secret_values_are_redacted_and_the_rest_kept_byte_for_byte() {
        for (query, want) in [
            ("", ""),
            ("page=2&sort=asc", "page=2&sort=asc"),
            ("token=abc", "token=REDACTED"),
            ("a=1&token=abc&b=%20x", "a=1&token=REDACTED&b=%20x"),
            (
                "access_token=x.y.z&id_token=q",
                "access_token=REDACTED&id_token=REDACTED",
            ),
            (
                "api_key=k1&key=k2&password=p&secret=s",
                "api_key=REDACTED&key=REDACTED&password=REDACTED&secret=REDACTED",
            ),
            ("code=123&state=xyz", "code=REDACTED&state=xyz"),
            (
                "signature=abc&sig=def&x-sig=keep",
                "signature=REDACTED&sig=REDACTED&x-sig=keep",
            ),
            // Case-insensitive names, the client's spelling kept.
            ("Token=abc&API_KEY=k", "Token=REDACTED&API_KEY=REDACTED"),
            // Percent-encoded names, also in upper/lower hex, and `+` as a space.
            ("%74oken=abc", "%74oken=REDACTED"),
            (
                "api%5Fkey=k&api%5fkey=k",
                "api%5Fkey=REDACTED&api%5fkey=REDACTED",
            ),
            ("my+token=x", "my+token=x"),
            // `;` separates too; a value with `=` in it is redacted whole.
            ("a=1;sig=abc==", "a=1;sig=REDACTED"),
            // Repeated and empty values, bare names, empty parts.
            ("token=a&token=b", "token=REDACTED&token=REDACTED"),
            ("token=&x=1", "token=REDACTED&x=1"),
            ("token&x=1", "token&x=1"),
            ("&&token=a&", "&&token=REDACTED&"),
            // A name that only contains a listed one is not a match.
            ("tokens=a&mykey=b&keyword=c", "tokens=a&mykey=b&keyword=c"),
            // Non-UTF-8 escapes do not panic.
            ("%ff%fe=1&code=2", "%ff%fe=1&code=REDACTED"),
        ] {
            check(query, want);
        }
    }

    #[test]
    fn nothing_to_redact_allocates_nothing() {
        let r = QueryRedactor::new(&DEFAULT_PARAMS);
        assert_eq!(r.redact("page=2&sort=asc"), None);
        assert_eq!(r.redact("no-equals-sign"), None);
        assert_eq!(QueryRedactor::new::<&str>(&[]).redact("token=x"), None);
    }

    #[test]
    fn a_custom_list_replaces_the_default() {
        let r = QueryRedactor::new(&["Session"]);
        assert_eq!(
            r.redact("session=1&token=2").as_deref(),
            Some("session=REDACTED&token=2")
        );
    }
}
