//! Prefixed, time-ordered IDs (SPEC §6): `usr_01JD…`, a type prefix and a ULID.
//!
//! ULIDs start with the millisecond timestamp, so IDs of one kind sort in creation order
//! (within a millisecond the order is random, which keyset pagination tolerates because it
//! pages on `(created_at, id)`).

/// The kinds of IDs and their prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    User,
    Organization,
    Group,
    Audit,
    ApiKey,
    Session,
    Transaction,
    Run,
}

impl IdKind {
    /// The prefix without the underscore, e.g. `usr`.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::User => "usr",
            Self::Organization => "org",
            Self::Group => "grp",
            Self::Audit => "aud",
            Self::ApiKey => "key",
            Self::Session => "ses",
            Self::Transaction => "txn",
            Self::Run => "run",
        }
    }

    /// A new ID of this kind.
    pub fn new_id(self) -> String {
        format!("{}_{}", self.prefix(), ulid::Ulid::new())
    }

    /// Whether `id` looks like an ID of this kind (prefix and a valid ULID). Handlers use it to
    /// answer 404 early for malformed IDs instead of querying.
    pub fn matches(self, id: &str) -> bool {
        id.strip_prefix(self.prefix())
            .and_then(|rest| rest.strip_prefix('_'))
            .is_some_and(|u| ulid::Ulid::from_string(u).is_ok())
    }
}

/// Shorthand for [`IdKind::new_id`].
pub fn new_id(kind: IdKind) -> String {
    kind.new_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_and_recognised() {
        for kind in [
            IdKind::User,
            IdKind::Organization,
            IdKind::Group,
            IdKind::Audit,
            IdKind::ApiKey,
            IdKind::Session,
            IdKind::Transaction,
            IdKind::Run,
        ] {
            let id = kind.new_id();
            assert!(id.starts_with(&format!("{}_", kind.prefix())), "{id}");
            assert_eq!(id.len(), kind.prefix().len() + 1 + 26, "{id}");
            assert!(kind.matches(&id));
        }
        assert!(!IdKind::User.matches(&IdKind::Organization.new_id()));
        assert!(!IdKind::User.matches("usr_notaulid"));
        assert!(!IdKind::User.matches("usr"));
    }

    #[test]
    fn ids_sort_by_creation_time() {
        let a = IdKind::User.new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = IdKind::User.new_id();
        assert!(a < b, "{a} !< {b}");
    }
}
