//! Lookups against generated databases of each supported layout.

mod support;

use mmdb_writer::Value;
use support::{country, ip, TestDb, BUILD_EPOCH};
use watchpost_geo::{CountryCode, DbInfo, GeoDb};

fn open(db: &TestDb) -> (tempfile::TempDir, GeoDb) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("country.mmdb");
    db.install(&path);
    let geo = GeoDb::open(&path).unwrap();
    (dir, geo)
}

#[test]
fn maxmind_layout_ipv4_ipv6_and_mapped() {
    let (_dir, geo) = open(
        &TestDb::v6("GeoIP2-Country")
            .maxmind("81.2.69.0/24", "GB")
            .maxmind("89.160.20.112/28", "SE")
            .maxmind("2a02:2e0::/32", "DE")
            .maxmind_registered_only("2.125.160.0/19", "IT")
            .maxmind_registered_only("2001:4860::/32", "US"),
    );

    assert_eq!(country(&geo, "81.2.69.160").as_deref(), Some("GB"));
    assert_eq!(country(&geo, "81.2.69.0").as_deref(), Some("GB"));
    assert_eq!(country(&geo, "81.2.69.255").as_deref(), Some("GB"));
    assert_eq!(country(&geo, "89.160.20.120").as_deref(), Some("SE"));
    assert_eq!(
        country(&geo, "2a02:2e0:3fe:1001:302::1").as_deref(),
        Some("DE")
    );
    // Networks with only a registration fall back to `registered_country`.
    assert_eq!(country(&geo, "2.125.160.216").as_deref(), Some("IT"));
    assert_eq!(country(&geo, "2001:4860:4860::8888").as_deref(), Some("US"));

    // IPv4-mapped IPv6 addresses are looked up as IPv4.
    assert_eq!(country(&geo, "::ffff:81.2.69.160").as_deref(), Some("GB"));
    assert_eq!(country(&geo, "::ffff:89.160.20.120").as_deref(), Some("SE"));

    // Public addresses the database does not cover.
    assert_eq!(country(&geo, "81.2.70.1"), None);
    assert_eq!(country(&geo, "89.160.20.111"), None);
    assert_eq!(country(&geo, "8.8.8.8"), None);
    assert_eq!(country(&geo, "2a02:2e1::1"), None);
    assert_eq!(country(&geo, "::ffff:8.8.8.8"), None);
}

#[test]
fn flat_country_code_layout_in_an_ipv4_only_database() {
    // ip-location-db publishes `{ "country_code": "XX" }` records.
    let (_dir, geo) = open(
        &TestDb::v4("geo-whois-asn-country")
            .flat("1.0.0.0/24", "AU")
            .flat("5.1.0.0/16", "de") // lowercase in the file: normalised
            .flat("31.13.64.0/18", "IE"),
    );

    assert_eq!(country(&geo, "1.0.0.1").as_deref(), Some("AU"));
    assert_eq!(country(&geo, "5.1.2.3").as_deref(), Some("DE"));
    assert_eq!(country(&geo, "31.13.127.255").as_deref(), Some("IE"));
    assert_eq!(country(&geo, "::ffff:5.1.2.3").as_deref(), Some("DE"));
    assert_eq!(country(&geo, "31.13.128.0"), None);
    // An IPv4-only database has nothing for IPv6: no country, no error, no panic.
    assert_eq!(country(&geo, "2a02:2e0::1"), None);
    assert_eq!(geo.info().unwrap().ip_version, 4);
}

#[test]
fn flat_country_code_layout_with_ipv6_networks() {
    let (_dir, geo) = open(
        &TestDb::v6("geo-whois-asn-country")
            .flat("1.0.0.0/24", "AU")
            .flat("2400:cb00::/32", "US")
            .flat("2a00:1450::/32", "IE"),
    );
    assert_eq!(country(&geo, "1.0.0.200").as_deref(), Some("AU"));
    assert_eq!(country(&geo, "::ffff:1.0.0.200").as_deref(), Some("AU"));
    assert_eq!(country(&geo, "2400:cb00:2048::1").as_deref(), Some("US"));
    assert_eq!(
        country(&geo, "2a00:1450:4001:80b::200e").as_deref(),
        Some("IE")
    );
    assert_eq!(country(&geo, "2a00:1451::1"), None);
}

#[test]
fn ipinfo_layout_with_country_name_under_country() {
    let (_dir, geo) = open(
        &TestDb::v6("ipinfo lite")
            .ipinfo("1.1.1.0/24", "AU", "Australia")
            .ipinfo("2a03:2880::/29", "IE", "Ireland"),
    );
    assert_eq!(country(&geo, "1.1.1.1").as_deref(), Some("AU"));
    assert_eq!(country(&geo, "2a03:2880:f12f::1").as_deref(), Some("IE"));
}

#[test]
fn special_addresses_have_no_country_even_under_a_catch_all_network() {
    // Every address is covered; only the special-purpose check can produce `None`.
    let (_dir, geo) = open(
        &TestDb::v6("catch-all")
            .flat("::/0", "AQ")
            .flat("0.0.0.0/0", "AQ"),
    );
    assert_eq!(country(&geo, "8.8.8.8").as_deref(), Some("AQ"));
    assert_eq!(country(&geo, "2001:4860:4860::8888").as_deref(), Some("AQ"));
    assert_eq!(country(&geo, "::ffff:8.8.8.8").as_deref(), Some("AQ"));

    for addr in [
        "0.0.0.0",
        "10.1.2.3",
        "100.64.0.1",
        "127.0.0.1",
        "169.254.169.254",
        "172.16.5.4",
        "192.0.0.1",
        "192.0.2.1",
        "192.168.1.1",
        "198.18.0.1",
        "198.51.100.1",
        "203.0.113.1",
        "224.0.0.251",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
        "::ffff:192.168.0.1",
        "64:ff9b::a00:1",
        "100::1",
        "2001:db8::1",
        "2001:2::1",
        "3fff::1",
        "fc00::1",
        "fd00:1234::1",
        "fe80::1",
        "ff02::1",
    ] {
        assert_eq!(country(&geo, addr), None, "{addr}");
    }
}

#[test]
fn invalid_codes_in_the_database_are_not_reported() {
    let (_dir, geo) = open(
        &TestDb::v6("odd values")
            .flat("1.0.0.0/24", "--")
            .flat("1.0.1.0/24", "")
            .flat("1.0.2.0/24", "DEU")
            .flat("1.0.3.0/24", "D1")
            .record("1.0.4.0/24", Value::map([("country_code", 276_u32)]))
            .record(
                "1.0.5.0/24",
                Value::map([
                    ("country", Value::map([("iso_code", "??")])),
                    ("registered_country", Value::map([("iso_code", "NL")])),
                ]),
            )
            .record(
                "1.0.6.0/24",
                Value::map([("country", Value::array([Value::from("DE")]))]),
            )
            .record("1.0.7.0/24", Value::map([("asn", 3320_u32)])),
    );
    for addr in [
        "1.0.0.1", "1.0.1.1", "1.0.2.1", "1.0.3.1", "1.0.4.1", "1.0.6.1", "1.0.7.1",
    ] {
        assert_eq!(country(&geo, addr), None, "{addr}");
    }
    // A bad located country falls back to the registration.
    assert_eq!(country(&geo, "1.0.5.1").as_deref(), Some("NL"));
}

#[test]
fn info_reports_type_build_date_and_ip_version() {
    let (_dir, geo) = open(&TestDb::v6("GeoLite2-Country").maxmind("81.2.69.0/24", "GB"));
    assert_eq!(
        geo.info(),
        Some(DbInfo {
            database_type: "GeoLite2-Country".to_owned(),
            build_epoch: BUILD_EPOCH,
            build_date: "2024-05-06T07:08:09Z".to_owned(),
            ip_version: 6,
        })
    );
}

#[test]
fn disabled_database_answers_nothing() {
    let geo = GeoDb::disabled();
    assert_eq!(geo.lookup_country(ip("8.8.8.8")), None);
    assert_eq!(geo.lookup_country(ip("2001:4860:4860::8888")), None);
    assert_eq!(geo.info(), None);
    assert_eq!(geo.path(), None);
    geo.reload().unwrap();
    assert!(!geo.reload_if_changed().unwrap());
}

#[test]
fn handle_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<GeoDb>();
    assert_send_sync::<CountryCode>();

    let (_dir, geo) = open(&TestDb::v6("t").flat("1.0.0.0/24", "AU"));
    let geo = std::sync::Arc::new(geo);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let geo = std::sync::Arc::clone(&geo);
            std::thread::spawn(move || geo.lookup_country(ip("1.0.0.9")))
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap(), CountryCode::parse("AU"));
    }
}
