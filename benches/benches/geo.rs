//! GeoIP country lookups (`watchpost_geo::GeoDb::lookup_country`).
//!
//! Runs against the public ip-location-db country database when `deploy/fetch-geo-db.sh`
//! has fetched it (or `WATCHPOST_TEST_MMDB` points at a copy), otherwise against a
//! generated database of similar shape (50 000 IPv4 and 50 000 IPv6 networks). The bench
//! names say which one was used.
//!
//! ```sh
//! cargo bench -p watchpost-benches --bench geo
//! ```

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mmdb_writer::ipnet::{IpNet, Ipv4Net, Ipv6Net};
use mmdb_writer::{Value, Writer};
use watchpost_geo::GeoDb;

/// One bench input: a database plus addresses known to hit and to miss it.
struct Subject {
    source: &'static str,
    geo: GeoDb,
    v4_hit: IpAddr,
    v4_miss: IpAddr,
    v6_hit: IpAddr,
    v6_miss: IpAddr,
    /// Kept so the generated file outlives the benches; removed on drop.
    _generated: Option<TempFile>,
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn real_db_path() -> PathBuf {
    match std::env::var_os("WATCHPOST_TEST_MMDB") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../.cache/geo/geo-whois-asn-country.mmdb"),
    }
}

fn subject() -> Subject {
    let path = real_db_path();
    if path.is_file() {
        let geo = GeoDb::open(&path).unwrap_or_else(|err| panic!("{err}"));
        return Subject {
            source: "real",
            geo,
            v4_hit: ip("8.8.8.8"),
            // 5.249.168.0/21 and 2c0f:f000::/20 have no record in the pinned version.
            v4_miss: ip("5.249.168.1"),
            v6_hit: ip("2001:4860:4860::8888"),
            v6_miss: ip("2c0f:ffff::1"),
            _generated: None,
        };
    }
    eprintln!(
        "geo bench: {} not found (run deploy/fetch-geo-db.sh); using a generated database",
        path.display()
    );
    generated()
}

/// A deterministic database with one /24 per 1024 IPv4 addresses and one /48 per /40 of
/// IPv6 space in 2a00::/16, alternating between a few countries.
fn generated() -> Subject {
    const COUNTRIES: [&str; 8] = ["DE", "FR", "US", "JP", "BR", "AU", "IN", "ZA"];
    let mut writer = Writer::new("Watchpost-Bench-Country");
    for i in 0..50_000_u32 {
        let code = COUNTRIES[i as usize % COUNTRIES.len()];
        let value = || Value::map([("country_code", code)]);
        // 11.0.0.0 upwards, every fourth /24.
        let v4 = Ipv4Net::new(Ipv4Addr::from(0x0B00_0000 + (i << 10)), 24).unwrap();
        writer.insert_value(IpNet::V4(v4), value()).unwrap();
        let v6 = Ipv6Net::new(
            Ipv6Addr::from((0x2a00_u128 << 112) + (u128::from(i) << 88)),
            48,
        )
        .unwrap();
        writer.insert_value(IpNet::V6(v6), value()).unwrap();
    }
    let path =
        std::env::temp_dir().join(format!("watchpost-geo-bench-{}.mmdb", std::process::id()));
    std::fs::write(&path, writer.to_bytes().unwrap()).unwrap();
    let file = TempFile(path);
    let geo = GeoDb::open(&file.0).unwrap_or_else(|err| panic!("{err}"));
    Subject {
        source: "generated",
        geo,
        v4_hit: ip("11.0.0.1"),
        v4_miss: ip("11.0.1.1"),
        v6_hit: ip("2a00::1"),
        v6_miss: ip("2a00:0:1::1"),
        _generated: Some(file),
    }
}

/// Public addresses spread over the whole space, deterministic (xorshift), none special.
fn mixed_v4(count: usize) -> Vec<IpAddr> {
    let mut state = 0x9E37_79B9_u32;
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let addr = Ipv4Addr::from(state);
        if (1..224).contains(&addr.octets()[0]) && !addr.is_private() && !addr.is_loopback() {
            out.push(IpAddr::V4(addr));
        }
    }
    out
}

fn lookups(c: &mut Criterion) {
    let s = subject();
    // Check the labels are honest before measuring anything.
    for (name, addr, hit) in [
        ("v4_hit", s.v4_hit, true),
        ("v4_miss", s.v4_miss, false),
        ("v6_hit", s.v6_hit, true),
        ("v6_miss", s.v6_miss, false),
    ] {
        let answer = s.geo.lookup_country(addr);
        assert_eq!(
            answer.is_some(),
            hit,
            "{name} {addr} answered {answer:?} in the {} db",
            s.source
        );
    }

    let mut group = c.benchmark_group("geo/lookup_country");
    group.throughput(Throughput::Elements(1));
    let singles = [
        ("v4_hit", s.v4_hit),
        ("v4_miss", s.v4_miss),
        ("v6_hit", s.v6_hit),
        ("v6_miss", s.v6_miss),
        (
            "v4_mapped_hit",
            IpAddr::V6(match s.v4_hit {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            }),
        ),
        // Answered by the special-purpose filter without touching the database.
        ("private", ip("192.168.1.1")),
    ];
    for (name, addr) in singles {
        group.bench_with_input(BenchmarkId::new(s.source, name), &addr, |b, &addr| {
            b.iter(|| s.geo.lookup_country(black_box(addr)));
        });
    }

    let mixed = mixed_v4(1024);
    group.throughput(Throughput::Elements(mixed.len() as u64));
    group.bench_with_input(
        BenchmarkId::new(s.source, "v4_mixed_1024"),
        &mixed,
        |b, mixed| {
            b.iter(|| {
                mixed
                    .iter()
                    .filter(|&&addr| s.geo.lookup_country(black_box(addr)).is_some())
                    .count()
            });
        },
    );
    group.finish();

    // The proxy polls this every few seconds: one `stat` when nothing changed.
    c.bench_function(
        &format!("geo/reload_if_changed/{}/unchanged", s.source),
        |b| {
            b.iter(|| s.geo.reload_if_changed().unwrap());
        },
    );
}

criterion_group!(benches, lookups);
criterion_main!(benches);
