//! Lookups against a real public database: ip-location-db's geo-whois-asn-country
//! (flat `country_code` records, IPv4 + IPv6), fetched by `deploy/fetch-geo-db.sh`.
//!
//! The file is not committed. Without it these tests fail with instructions; set
//! `WATCHPOST_SKIP_REAL_GEO=1` to skip them explicitly, or `WATCHPOST_TEST_MMDB` to use a
//! copy elsewhere.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use watchpost_geo::GeoDb;

const SKIP_VAR: &str = "WATCHPOST_SKIP_REAL_GEO";
const PATH_VAR: &str = "WATCHPOST_TEST_MMDB";
const FILE: &str = "geo-whois-asn-country.mmdb";

fn db_path() -> PathBuf {
    match std::env::var_os(PATH_VAR) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(".cache")
            .join("geo")
            .join(FILE),
    }
}

/// The real database, or `None` (after saying so) when skipping was asked for explicitly.
fn real_db(test: &str) -> Option<&'static GeoDb> {
    if std::env::var(SKIP_VAR).is_ok_and(|v| v == "1") {
        println!("SKIPPED {test}: {SKIP_VAR}=1, the real GeoIP database was not checked");
        return None;
    }
    static DB: OnceLock<GeoDb> = OnceLock::new();
    Some(DB.get_or_init(|| {
        let path = db_path();
        if !path.is_file() {
            panic!(
                "the public GeoIP test database is missing: {}\n\
                 Fetch it with `deploy/fetch-geo-db.sh` (needs npm and access to the npm \
                 registry), or point {PATH_VAR} at a copy of {FILE}, \
                 or set {SKIP_VAR}=1 to skip this test explicitly.",
                path.display()
            );
        }
        GeoDb::open(&path).unwrap_or_else(|err| panic!("{err}"))
    }))
}

#[track_caller]
fn assert_country(geo: &GeoDb, addr: &str, expected: Option<&str>) {
    let ip: IpAddr = addr.parse().unwrap();
    let got = geo.lookup_country(ip);
    assert_eq!(got.as_ref().map(|c| c.as_str()), expected, "{addr}");
}

#[test]
fn well_known_assignments() {
    let Some(geo) = real_db("well_known_assignments") else {
        return;
    };
    // Ranges whose country does not move: registries' own networks, national incumbents
    // and a few large anycast operators, as this database records them.
    let cases = [
        ("8.8.8.8", "US"),                   // Google, ARIN
        ("2001:4860:4860::8888", "US"),      // Google, ARIN
        ("2606:4700:4700::1111", "US"),      // Cloudflare, ARIN
        ("1.1.1.1", "AU"),                   // APNIC research prefix
        ("202.12.29.175", "AU"),             // APNIC, Brisbane
        ("2001:dd8:8:701::2", "AU"),         // APNIC
        ("193.0.6.139", "NL"),               // RIPE NCC, Amsterdam
        ("2001:67c:2e8:22::c100:68b", "NL"), // RIPE NCC
        ("194.25.134.0", "DE"),              // Deutsche Telekom
        ("2003::1", "DE"),                   // Deutsche Telekom
        ("212.27.48.10", "FR"),              // Free (Proxad)
        ("2a01:e00::1", "FR"),               // Free (Proxad)
        ("133.242.0.1", "JP"),               // 133.0.0.0/8, Japan
        ("2400:4000::1", "JP"),              // JPNIC allocation
        ("::ffff:8.8.8.8", "US"),            // IPv4-mapped
        ("::ffff:193.0.6.139", "NL"),
    ];
    for (addr, country) in cases {
        assert_country(geo, addr, Some(country));
    }
}

#[test]
fn special_addresses_have_no_country() {
    let Some(geo) = real_db("special_addresses_have_no_country") else {
        return;
    };
    // This database itself has records for some of these (the pinned version maps
    // 192.168.0.0/16 to a country); the answer must still be `None`.
    for addr in [
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "127.0.0.1",
        "169.254.169.254",
        "192.0.2.1",
        "198.51.100.1",
        "203.0.113.1",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::ffff:192.168.1.1",
        "2001:db8::1",
        "fc00::1",
        "fd00::1",
        "fe80::1",
        "ff02::1",
    ] {
        assert_country(geo, addr, None);
    }
}

#[test]
fn metadata_and_reload() {
    let Some(geo) = real_db("metadata_and_reload") else {
        return;
    };
    let info = geo.info().expect("an opened database has metadata");
    assert!(!info.database_type.is_empty());
    assert_eq!(info.ip_version, 6, "the combined IPv4+IPv6 file");
    // Built after 2024-01-01, and the date agrees with the epoch's day.
    assert!(info.build_epoch > 1_704_067_200, "{info:?}");
    assert_eq!(
        info.build_date.len(),
        "2026-06-17T19:51:40Z".len(),
        "{info:?}"
    );
    assert!(info.build_date.ends_with('Z'));
    // Nothing touches the file during the test.
    assert!(!geo.reload_if_changed().unwrap());
}
