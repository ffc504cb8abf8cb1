//! Gateway rules: finding the rules that match one request among 10,000 CIDR rules, through
//! the prefix trie `CompiledRules::matching` uses, side by side with testing every rule in turn
//! (`CompiledRules::matching_linear`, what the matcher did before the trie), and the proxy's
//! whole per-request rule step (`RuleRuntime::evaluate`).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use watchpost_common::rules::{normalize_rules, CompiledRules, RuleDoc, RuleMatch, RuleRequest};
use watchpost_proxy::rules::{client_key, RuleRuntime};

/// CIDR rules in the big set.
const CIDR_RULES: usize = 10_000;
/// Rules without `cidrs` (paths, hosts, methods) in the mixed case, which keeps the total at
/// the 10,000 rules a config may hold.
const OTHER_RULES: usize = 50;

fn id(n: usize) -> String {
    format!("rul_{n:026}")
}

fn doc(n: usize, action: &str, m: RuleMatch) -> RuleDoc {
    RuleDoc {
        id: id(n),
        action: action.into(),
        match_: m,
        rate: None,
        priority: (n % 10) as i32,
        enabled: true,
        expires_at_ms: None,
        reason: "bench".into(),
    }
}

/// Up to 10,000 distinct ranges spread over 11.0.0.0/8-110.0.0.0/8: /24s, a few /16s and single
/// addresses, a tenth of them IPv6 /48s.
fn cidr_rules(count: usize) -> Vec<RuleDoc> {
    (0..count)
        .map(|n| {
            let a = 11 + (n % 100);
            let b = (n / 100) % 256;
            let cidr = match n % 10 {
                0 => format!("2001:db8:{:x}::/48", n),
                1 => format!("{a}.{b}.0.0/16"),
                2 => format!("{a}.{b}.7.9/32"),
                _ => format!("{a}.{b}.{}.0/24", n % 200),
            };
            let action = if n % 3 == 0 { "log_only" } else { "block" };
            doc(
                n,
                action,
                RuleMatch {
                    cidrs: vec![cidr],
                    ..RuleMatch::default()
                },
            )
        })
        .collect()
}

fn other_rules() -> Vec<RuleDoc> {
    (0..OTHER_RULES)
        .map(|n| {
            let m = match n % 3 {
                0 => RuleMatch {
                    path_prefixes: vec![format!("/probe-{n}/")],
                    ..RuleMatch::default()
                },
                1 => RuleMatch {
                    hosts: vec![format!("*.tenant{n}.example")],
                    ..RuleMatch::default()
                },
                _ => RuleMatch {
                    methods: vec!["DELETE".into()],
                    ua_types: vec!["cli".into()],
                    ..RuleMatch::default()
                },
            };
            doc(CIDR_RULES + n, "block", m)
        })
        .collect()
}

fn compiled(mut docs: Vec<RuleDoc>) -> CompiledRules {
    let problems = normalize_rules(&mut docs);
    assert!(problems.is_empty(), "{problems:?}");
    CompiledRules::compile(&docs)
}

fn req(ip: IpAddr) -> RuleRequest<'static> {
    RuleRequest {
        ip,
        country: "DE",
        path: "/api/orders",
        host: "shop.example",
        method: "GET",
        ua_type: "browser",
    }
}

fn matching(c: &mut Criterion) {
    let only_cidr = compiled(cidr_rules(CIDR_RULES));
    let mut docs = cidr_rules(CIDR_RULES - OTHER_RULES);
    docs.extend(other_rules());
    let mixed = compiled(docs);
    // 37.42.26.1 lies in rule 4,226's /24; 37.42.27.1 lies next to it, in no range (the trie
    // walk goes as deep as for the hit); 2001:db8:a::1 lies in rule 10's /48.
    let hit = req(IpAddr::V4(Ipv4Addr::new(37, 42, 26, 1)));
    let miss = req(IpAddr::V4(Ipv4Addr::new(37, 42, 27, 1)));
    let v6_hit = req("2001:db8:a::1".parse().expect("v6"));
    assert_eq!(only_cidr.matching(&hit, 0).count(), 1);
    assert_eq!(only_cidr.matching(&miss, 0).count(), 0);
    assert_eq!(only_cidr.matching(&v6_hit, 0).count(), 1);
    for r in [&hit, &miss, &v6_hit] {
        let trie: Vec<_> = mixed.matching(r, 0).map(|m| m.id.clone()).collect();
        let linear: Vec<_> = mixed.matching_linear(r, 0).map(|m| m.id.clone()).collect();
        assert_eq!(trie, linear);
    }

    let mut g = c.benchmark_group("rules/10k_cidr");
    let cases: [(&str, &CompiledRules, &RuleRequest<'static>); 5] = [
        ("v4_hit", &only_cidr, &hit),
        ("v4_miss", &only_cidr, &miss),
        ("v6_hit", &only_cidr, &v6_hit),
        ("mixed_9950_cidr_50_other_v4_hit", &mixed, &hit),
        ("mixed_9950_cidr_50_other_v4_miss", &mixed, &miss),
    ];
    for (name, rules, r) in cases {
        g.bench_function(format!("trie/{name}"), |b| {
            b.iter(|| black_box(rules).matching(black_box(r), 0).count())
        });
        g.bench_function(format!("linear/{name}"), |b| {
            b.iter(|| black_box(rules).matching_linear(black_box(r), 0).count())
        });
    }
    g.finish();

    // What the proxy's request path runs: the walk plus the per-rule state (hit counters).
    let runtime = RuleRuntime::default();
    let mixed = Arc::new(mixed);
    let mut g = c.benchmark_group("rules/proxy_evaluate");
    for (name, r) in [("v4_hit", &hit), ("v4_miss", &miss)] {
        let key = client_key(r.ip);
        g.bench_function(format!("mixed_9950_cidr_50_other/{name}"), |b| {
            b.iter(|| runtime.evaluate(black_box(&mixed), 1, black_box(r), 0, key))
        });
    }
    g.finish();

    // What every proxy does once per config version.
    let mut g = c.benchmark_group("rules/compile");
    g.sample_size(10);
    let mut docs = cidr_rules(CIDR_RULES - OTHER_RULES);
    docs.extend(other_rules());
    assert!(normalize_rules(&mut docs).is_empty());
    g.bench_function("9950_cidr_50_other", |b| {
        b.iter_batched(
            || docs.clone(),
            |d| CompiledRules::compile(&d),
            BatchSize::LargeInput,
        )
    });
    g.finish();

    // The common case: a config without rules.
    let none = CompiledRules::default();
    c.bench_function("rules/none/is_empty", |b| {
        b.iter(|| black_box(&none).is_empty())
    });
}

criterion_group!(benches, matching);
criterion_main!(benches);
