//! Builds small `.mmdb` files for the tests with the `mmdb-writer` crate.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use mmdb_writer::ipnet::IpNet;
use mmdb_writer::{IpVersion, Value, Writer};

/// The build time written into generated databases: 2024-05-06T07:08:09Z.
pub const BUILD_EPOCH: u64 = 1_714_979_289;

/// A database under construction.
pub struct TestDb {
    writer: Writer,
}

impl TestDb {
    /// An IPv6 database (answers IPv4 too, through the `::/96` subtree and its aliases).
    pub fn v6(database_type: &str) -> TestDb {
        TestDb::new(database_type, IpVersion::V6)
    }

    /// An IPv4-only database.
    pub fn v4(database_type: &str) -> TestDb {
        TestDb::new(database_type, IpVersion::V4)
    }

    fn new(database_type: &str, ip_version: IpVersion) -> TestDb {
        let writer = Writer::builder(database_type)
            .ip_version(ip_version)
            .description(&[("en", "Watchpost test database")])
            .build_epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(BUILD_EPOCH))
            .build();
        TestDb { writer }
    }

    /// A MaxMind GeoIP2-Country style record, `country` and `registered_country` both set.
    pub fn maxmind(self, network: &str, iso_code: &str) -> TestDb {
        let country = || {
            Value::map([
                ("geoname_id", Value::from(1_u32)),
                ("iso_code", Value::from(iso_code)),
                ("names", Value::map([("en", format!("Country {iso_code}"))])),
            ])
        };
        self.record(
            network,
            Value::map([
                ("continent", Value::map([("code", Value::from("EU"))])),
                ("country", country()),
                ("registered_country", country()),
            ]),
        )
    }

    /// A MaxMind record for a network with a registration but no located country
    /// (anycast and satellite ranges look like this).
    pub fn maxmind_registered_only(self, network: &str, iso_code: &str) -> TestDb {
        self.record(
            network,
            Value::map([(
                "registered_country",
                Value::map([("iso_code", Value::from(iso_code))]),
            )]),
        )
    }

    /// An ip-location-db style record: `{ "country_code": "DE" }`.
    pub fn flat(self, network: &str, country_code: &str) -> TestDb {
        self.record(network, Value::map([("country_code", country_code)]))
    }

    /// An IPinfo Lite style record: the country *name* under `country`, the code under
    /// `country_code`.
    pub fn ipinfo(self, network: &str, country_code: &str, name: &str) -> TestDb {
        self.record(
            network,
            Value::map([
                ("asn", Value::from("AS64500")),
                ("country", Value::from(name)),
                ("country_code", Value::from(country_code)),
                ("continent_code", Value::from("EU")),
            ]),
        )
    }

    /// Any record.
    pub fn record(mut self, network: &str, value: Value) -> TestDb {
        let network: IpNet = network.parse().unwrap();
        self.writer.insert_value(network, value).unwrap();
        self
    }

    /// The encoded database.
    pub fn bytes(&self) -> Vec<u8> {
        self.writer.to_bytes().unwrap()
    }

    /// Writes the database to `path` by renaming a finished file over it, as operators
    /// are told to, so a concurrent reader never sees a partial file.
    pub fn install(&self, path: &Path) {
        install_bytes(path, &self.bytes());
    }
}

/// Atomically replaces `path` with `bytes`.
pub fn install_bytes(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("mmdb.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Parses an address literal.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Looks `addr` up and renders the answer as a string (`None` for no country).
pub fn country(db: &watchpost_geo::GeoDb, addr: &str) -> Option<String> {
    db.lookup_country(ip(addr)).map(|code| code.to_string())
}
