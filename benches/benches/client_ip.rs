//! Client-IP resolution (`watchpost_common::client_ip`), per request shape.
//!
//! ```sh
//! cargo bench -p watchpost-benches --bench client_ip
//! ```

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};
use watchpost_common::client_ip::{resolve_client_ip, resolve_with_forwarded_for};
use watchpost_common::gateway::GatewayConfigDoc;
use watchpost_common::GatewayConfig;

fn config(mode: &str, trusted: &[&str], client_ip_header: &str) -> GatewayConfig {
    GatewayConfig::from_doc(&GatewayConfigDoc {
        ip_mode: mode.to_string(),
        trusted_cidrs: trusted.iter().map(|s| s.to_string()).collect(),
        risk_reject_threshold: 0.8,
        cdn_headers: None,
        client_ip_header: client_ip_header.to_string(),
        // The CDN connects from the trusted range in these benches.
        cdn_cidrs: trusted.iter().map(|s| s.to_string()).collect(),
        risk: None,
        risk_mode: "enforce".into(),
        rules: Vec::new(),
        version: 1,
        updated_at: None,
        updated_by: None,
    })
    .unwrap_or_else(|e| panic!("bench config: {e}"))
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    map
}

fn bench(c: &mut Criterion) {
    let peer_trusted: IpAddr = "10.0.0.7".parse().unwrap_or(IpAddr::from([10, 0, 0, 7]));
    let peer_public: IpAddr = "198.51.100.9"
        .parse()
        .unwrap_or(IpAddr::from([198, 51, 100, 9]));
    let browser = headers(&[
        ("user-agent", "Mozilla/5.0"),
        ("accept", "text/html"),
        ("accept-language", "en"),
    ]);
    let xff_chain = headers(&[
        ("x-forwarded-for", "203.0.113.5, 10.1.1.1"),
        ("x-forwarded-for", "10.2.2.2:8080"),
        ("accept", "*/*"),
    ]);
    let forwarded = headers(&[(
        "forwarded",
        "for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.9.9.9",
    )]);
    let cdn = headers(&[
        ("cf-connecting-ip", "203.0.113.77"),
        ("x-forwarded-for", "1.1.1.1"),
    ]);

    let direct = config("direct", &[], "x-forwarded-for");
    let proxy = config("proxy", &["10.0.0.0/8", "fd00::/8"], "x-forwarded-for");
    let proxy_forwarded = config("proxy", &["10.0.0.0/8", "fd00::/8"], "forwarded");
    let cdn_mode = config("cdn", &["10.0.0.0/8"], "x-forwarded-for");

    let mut g = c.benchmark_group("client_ip");
    g.bench_function("direct", |b| {
        b.iter(|| resolve_client_ip(black_box(peer_public), black_box(&browser), &direct))
    });
    g.bench_function("proxy_xff_two_lines", |b| {
        b.iter(|| resolve_client_ip(black_box(peer_trusted), black_box(&xff_chain), &proxy))
    });
    g.bench_function("proxy_xff_with_rewrite", |b| {
        b.iter(|| {
            resolve_with_forwarded_for(black_box(peer_trusted), black_box(&xff_chain), &proxy)
        })
    });
    g.bench_function("proxy_forwarded_rfc7239", |b| {
        b.iter(|| {
            resolve_client_ip(
                black_box(peer_trusted),
                black_box(&forwarded),
                &proxy_forwarded,
            )
        })
    });
    g.bench_function("cdn_header", |b| {
        b.iter(|| resolve_client_ip(black_box(peer_trusted), black_box(&cdn), &cdn_mode))
    });
    g.bench_function("spoofed_from_untrusted_peer", |b| {
        b.iter(|| resolve_client_ip(black_box(peer_public), black_box(&xff_chain), &proxy))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
