//! Risk engine: user-agent classification (our token matcher against the `woothee` parser, as
//! the alternative the risk crate's README weighs) and the full per-request `evaluate()`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use watchpost_risk::{classify_ua, RequestFacts, RiskConfig, RiskEngine};

/// A traffic-like mix: mostly browsers, then crawlers, tools, libraries and odd ones.
const UAS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "curl/8.4.0",
    "Wget/1.21.3",
    "python-requests/2.31.0",
    "Go-http-client/1.1",
    "okhttp/4.12.0",
    "",
    "MyApp/1.0 CFNetwork/1410.0.3 Darwin/22.6.0",
];

fn classify(c: &mut Criterion) {
    let mut g = c.benchmark_group("risk/classify_ua");
    g.throughput(Throughput::Elements(UAS.len() as u64));
    g.bench_function("token_matcher", |b| {
        b.iter(|| {
            for ua in UAS {
                black_box(classify_ua(black_box(ua)));
            }
        })
    });
    let parser = woothee::parser::Parser::new();
    g.bench_function("woothee", |b| {
        b.iter(|| {
            for ua in UAS {
                black_box(parser.parse(black_box(ua)).map(|r| r.category));
            }
        })
    });
    g.finish();
}

fn facts(ua: &'static str, path: &'static str, ip: IpAddr) -> RequestFacts<'static> {
    RequestFacts {
        ip,
        user_agent: Some(ua.as_bytes()),
        path,
        has_accept: true,
        has_accept_language: !ua.starts_with("Mozilla/5.0 (X11"),
        spoofed_forwarded: false,
        malformed_forwarded: false,
        country: "DE",
        recent_requests: 12.0,
    }
}

fn evaluate(c: &mut Criterion) {
    let mut g = c.benchmark_group("risk/evaluate");
    let cfg = RiskConfig {
        countries: vec!["KP".into(), "IR".into()],
        allowlist: vec!["10.0.0.0/8".into()],
        denylist: vec!["203.0.113.0/24".into(), "2001:db8::/32".into()],
        ..RiskConfig::default()
    };
    let engine = RiskEngine::new(&cfg).expect("bench config is valid");
    let client = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));

    let clean = facts(UAS[0], "/products/42", client);
    g.bench_function("browser_clean", |b| {
        b.iter(|| black_box(engine.evaluate(black_box(&clean))))
    });
    let probe = facts("curl/8.4.0", "/.env", client);
    g.bench_function("curl_probe", |b| {
        b.iter(|| black_box(engine.evaluate(black_box(&probe))))
    });
    let allowed = facts(
        "curl/8.4.0",
        "/.env",
        IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
    );
    g.bench_function("allowlisted", |b| {
        b.iter(|| black_box(engine.evaluate(black_box(&allowed))))
    });

    // The same mix through an engine with a 10,000-entry denylist: the binary search.
    let mut big = cfg.clone();
    big.denylist = (0..10_000u32)
        .map(|i| format!("{}.{}.{}.0/24", 100 + (i >> 16), (i >> 8) & 0xff, i & 0xff))
        .collect();
    let big_engine = RiskEngine::new(&big).expect("bench config is valid");
    let paths = ["/", "/api/items?page=2", "/static/app.js", "/wp-login.php"];
    let mix: Vec<RequestFacts<'static>> = UAS
        .iter()
        .zip(paths.iter().cycle())
        .enumerate()
        .map(|(i, (ua, path))| {
            let ip = IpAddr::V4(Ipv4Addr::new(100, 0, i as u8, 9));
            facts(ua, path, ip)
        })
        .collect();
    g.throughput(Throughput::Elements(mix.len() as u64));
    g.bench_function("mix", |b| {
        b.iter(|| {
            for f in &mix {
                black_box(engine.evaluate(black_box(f)));
            }
        })
    });
    g.bench_function("mix_denylist_10k", |b| {
        b.iter(|| {
            for f in &mix {
                black_box(big_engine.evaluate(black_box(f)));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, classify, evaluate);
criterion_main!(benches);
