//! Nothing panics on any input: arbitrary addresses, arbitrary or damaged files.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use proptest::prelude::*;
use support::{install_bytes, TestDb};
use watchpost_geo::{CountryCode, GeoDb};

/// A database in which every address has a country (so `None` can only come from the
/// special-purpose filter), plus some more specific networks.
fn catch_all() -> &'static (tempfile::TempDir, GeoDb) {
    static DB: OnceLock<(tempfile::TempDir, GeoDb)> = OnceLock::new();
    DB.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catch-all.mmdb");
        sample().install(&path);
        let geo = GeoDb::open(&path).unwrap();
        (dir, geo)
    })
}

fn sample() -> TestDb {
    TestDb::v6("catch-all")
        .flat("::/0", "AQ")
        .flat("0.0.0.0/0", "AQ")
        .maxmind("81.2.69.0/24", "GB")
        .maxmind("2a02:2e0::/32", "DE")
        .maxmind_registered_only("2.125.160.0/19", "IT")
        .ipinfo("1.1.1.0/24", "AU", "Australia")
}

fn allowed(code: Option<CountryCode>) -> bool {
    code.is_none_or(|c| ["AQ", "GB", "DE", "IT", "AU"].contains(&c.as_str()))
}

proptest! {
    #[test]
    fn any_ipv4_address(bits: u32) {
        let geo = &catch_all().1;
        let v4 = Ipv4Addr::from(bits);
        let answer = geo.lookup_country(IpAddr::V4(v4));
        prop_assert!(allowed(answer));
        // The IPv4-mapped form always gets the same answer.
        prop_assert_eq!(geo.lookup_country(IpAddr::V6(v4.to_ipv6_mapped())), answer);
        // Private ranges never get a country, though the database covers them.
        if v4.is_private() || v4.is_loopback() || v4.is_link_local() || v4.is_multicast()
            || v4.is_broadcast() || v4.is_unspecified() || v4.is_documentation()
        {
            prop_assert_eq!(answer, None);
        }
    }

    #[test]
    fn any_ipv6_address(bits: u128) {
        let geo = &catch_all().1;
        let v6 = Ipv6Addr::from(bits);
        let answer = geo.lookup_country(IpAddr::V6(v6));
        prop_assert!(allowed(answer));
        if v6.is_loopback() || v6.is_multicast() || v6.is_unspecified()
            || (bits >> 121) == 0x7e  // fc00::/7
            || (bits >> 118) == 0x3fa // fe80::/10
        {
            prop_assert_eq!(answer, None);
        }
    }

    #[test]
    fn any_string_as_a_country_code(s in "\\PC{0,4}") {
        match CountryCode::parse(&s) {
            Some(code) => {
                prop_assert_eq!(code.as_str(), s.to_ascii_uppercase());
                prop_assert!(s.len() == 2 && s.bytes().all(|b| b.is_ascii_alphabetic()));
            }
            None => prop_assert!(s.parse::<CountryCode>().is_err()),
        }
    }
}

/// Opening damaged bytes may fail, but nothing may panic, and a database that does open
/// must answer lookups (with anything) without panicking.
fn exercise(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.mmdb");
    install_bytes(&path, bytes);
    if let Ok(geo) = GeoDb::open(&path) {
        let _ = geo.info();
        for addr in [
            "81.2.69.160",
            "2.125.160.216",
            "1.1.1.1",
            "8.8.8.8",
            "2a02:2e0::1",
            "2001:4860::1",
            "::ffff:81.2.69.1",
        ] {
            let _ = geo.lookup_country(addr.parse().unwrap());
        }
        let _ = geo.reload_if_changed();
    }
}

fn sample_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| sample().bytes())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn damaged_databases_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        cut in any::<prop::sample::Index>(),
        truncate: bool,
    ) {
        let mut bytes = sample_bytes().to_vec();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        exercise(&bytes);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        exercise(&bytes);
    }
}
