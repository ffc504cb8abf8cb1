//! Field checks shared by the endpoints that create or change users and organizations.
//! Each returns the normalized value or a 400 naming the field.

use crate::error::ApiError;

/// Trims and checks an email address (one `@`, a dotted domain, no spaces, ≤ 254 bytes).
/// Case is kept; uniqueness and lookups ignore case.
pub fn email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim();
    let bad = || ApiError::bad_request("email must be a valid address like name@example.com");
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (local, domain) = email.split_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || domain.contains('@')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
    {
        return Err(bad());
    }
    Ok(email.to_string())
}

/// Checks a username: 3–32 of `a-z A-Z 0-9 _ . -`, starting with a letter or digit.
pub fn username(raw: &str) -> Result<String, ApiError> {
    let name = raw.trim();
    let ok = (3..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(name.to_string())
    } else {
        Err(ApiError::bad_request(
            "username must be 3-32 characters of letters, digits, '_', '.' or '-', starting with a letter or digit",
        ))
    }
}

/// Checks an organization slug: 2–63 of `a-z 0-9 -`, not starting or ending with `-`.
pub fn slug(raw: &str) -> Result<String, ApiError> {
    let s = raw.trim();
    let ok = (2..=63).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(ApiError::bad_request(
            "name must be a slug: 2-63 lowercase letters, digits or '-', not starting or ending with '-'",
        ))
    }
}

/// Checks free text such as a display name or a reason: trimmed, 1..=`max` characters, no
/// control characters.
pub fn text(field: &str, raw: &str, max: usize) -> Result<String, ApiError> {
    let t = raw.trim();
    if t.is_empty() || t.chars().count() > max || t.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{field} must be 1-{max} characters without control characters"
        )));
    }
    Ok(t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(email("  Ann@Example.com ").expect("ok"), "Ann@Example.com");
        for bad in [
            "",
            "ann",
            "ann@",
            "@x.com",
            "a@b",
            "a b@x.com",
            "a@x.com@y.com",
            "a@.com",
        ] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn usernames() {
        assert!(username("ann_1.x-y").is_ok());
        for bad in ["ab", "_ann", "ann!", &"a".repeat(33), "añn"] {
            assert!(username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slugs_and_text() {
        assert!(slug("acme-42").is_ok());
        for bad in ["A", "Acme", "-acme", "acme-", "ac me"] {
            assert!(slug(bad).is_err(), "{bad}");
        }
        assert_eq!(text("name", " Ann ", 10).expect("ok"), "Ann");
        assert!(text("name", "", 10).is_err());
        assert!(text("name", "a\u{0}b", 10).is_err());
        assert!(text("name", "abcdefghijk", 10).is_err());
    }
}
