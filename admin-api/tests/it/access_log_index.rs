//! The access-log index through the API: entries written by the proxy's own append script,
//! pages compared with a reference computed here from `XRANGE` over the same stream, for random
//! filter combinations and time ranges, while new entries arrive, and after trimming; lookups
//! by id and request id; NDJSON/CSV exports and their cancellation.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::Value;
use watchpost_common::{AccessLogEntry, Decision, Keys};
use watchpost_proxy::access_log::{append_batch, sweep_index, APPEND_SCRIPT};

use crate::common::{assert_error, json_of, TestAdmin, TestApp};

const RULE: &str = "rul_01JDX3Q7Z5R8KX4W2M9T6V1B0C";
const HOSTILE_UA: &str = "evil, \"quoted\"\r\nnext line,#x";

async fn spawn_app() -> TestApp {
    TestApp::builder()
        .configure(|c| {
            c.admin.rate_limit_per_minute = 1_000_000;
            c.admin.rate_limit_per_hour = 1_000_000;
            // Chunks of 1,000 entries on a loaded test machine (debug build, several exports
            // sharing one connection) can take over the default second: these tests check
            // results, not latency. Redis being down is tested elsewhere.
            c.admin.redis_timeout_ms = 20_000;
        })
        .spawn()
        .await
}

async fn redis_con(app: &TestApp) -> redis::aio::MultiplexedConnection {
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    redis::Client::open(app.config.redis.url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("Redis must be reachable")
}

/// Entry number `i`, with independent-ish distributions over every filterable field.
fn entry(i: u64) -> AccessLogEntry {
    let ip = if i % 10 == 3 {
        "198.51.100.10".to_string()
    } else if i % 53 == 5 {
        "::ffff:198.51.100.20".to_string()
    } else if i % 97 == 11 {
        "2001:db8::7".to_string()
    } else {
        format!("10.0.{}.{}", (i / 7) % 3, (i * 13) % 100)
    };
    AccessLogEntry {
        ts: 1_000 + i,
        method: if i % 3 == 0 { "POST" } else { "GET" }.into(),
        host: if i % 4 == 0 { "B.test" } else { "a.test" }.into(),
        path: format!("/p/{}/x", i % 6),
        query: if i % 29 == 0 {
            "q=a,b".into()
        } else {
            String::new()
        },
        status: [200, 200, 404, 403, 500, 302, 201][((i * 3) % 7) as usize],
        ip,
        ip_source: "peer".into(),
        peer: "10.0.0.1".into(),
        country: ["DE", "FR", "US", "", "DE", "JP", "DE"][(i % 7) as usize].into(),
        risk: (i % 13) as f64 / 12.0,
        reasons: if i % 13 > 8 {
            vec!["ua_bot".into(), "rate".into()]
        } else {
            vec![]
        },
        ua: if i % 17 == 0 {
            HOSTILE_UA.into()
        } else {
            "Mozilla/5.0".into()
        },
        ua_type: ["browser", "bot", "cli", "library", "browser"][(i % 5) as usize].into(),
        decision: match i % 11 {
            0 => Decision::Reject,
            1 => Decision::Flag,
            _ => Decision::Allow,
        },
        latency_us: i,
        bytes_out: 10,
        upstream: String::new(),
        request_id: ulid::Ulid::new().to_string(),
        proxy_id: "p1".into(),
        rule: if i % 19 == 0 {
            RULE.into()
        } else {
            String::new()
        },
        proto: "h2".into(),
    }
}

/// Batch sizes the writes cycle through (the batch sequence picks one): single entries, small
/// and large batches, so that postings hold one offset, sparse offsets and long runs.
const BATCH_SIZES: [usize; 7] = [250, 1, 37, 512, 2, 64, 9];

/// Appends entries `range` through the proxy's script, in batches of [`BATCH_SIZES`], now and
/// then a millisecond apart.
async fn write(
    con: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    seq: &mut u64,
    range: std::ops::Range<u64>,
) {
    let script = redis::Script::new(APPEND_SCRIPT);
    let all: Vec<AccessLogEntry> = range.map(entry).collect();
    let mut at = 0;
    while at < all.len() {
        let size = BATCH_SIZES[(*seq % BATCH_SIZES.len() as u64) as usize].min(all.len() - at);
        let batch = &all[at..at + size];
        *seq += 1;
        let n = append_batch(con, &script, &keys.access(), "p1", *seq, 10_000_000, batch)
            .await
            .expect("append");
        assert_eq!(n as usize, batch.len());
        at += size;
        if *seq % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

type Raw = (String, HashMap<String, String>);

async fn snapshot(con: &mut redis::aio::MultiplexedConnection, keys: &Keys) -> Vec<Raw> {
    redis::cmd("XRANGE")
        .arg(keys.access_stream())
        .arg("-")
        .arg("+")
        .query_async(con)
        .await
        .expect("XRANGE")
}

fn id_parts(id: &str) -> (u64, u64) {
    let (a, b) = id.split_once('-').expect("id");
    (a.parse().expect("ms"), b.parse().expect("seq"))
}

/// One random query.
#[derive(Debug, Clone, Default)]
struct Q {
    ip: Option<&'static str>,
    country: Option<&'static str>,
    status: Option<&'static str>,
    decision: Option<&'static str>,
    ua_type: Option<&'static str>,
    risk_min: Option<&'static str>,
    host: Option<&'static str>,
    path_prefix: Option<&'static str>,
    method: Option<&'static str>,
    rule: Option<&'static str>,
    /// Positions (0..=1000, per mille of the snapshot) of `from` and `to`.
    from: Option<u16>,
    to: Option<u16>,
    limit: usize,
}

fn pick(values: &'static [&'static str]) -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        3 => Just(None),
        1 => proptest::sample::select(values).prop_map(Some),
    ]
}

fn query_strategy() -> impl Strategy<Value = Q> {
    (
        (
            pick(&[
                "198.51.100.10",
                "198.51.100.20",
                "2001:DB8::7",
                "10.0.1.13",
                "203.0.113.1",
            ]),
            pick(&["de", "FR", "jp", "ZZ"]),
            pick(&["200", "404", "2xx", "4XX", "5xx", "302", "418"]),
            pick(&["allow", "reject", "flag"]),
            pick(&["bot", "cli", "browser", "empty"]),
            pick(&["0.5", "0.8", "0.9", "0.3", "1"]),
        ),
        (
            pick(&["a.test", "b.TEST"]),
            pick(&["/p/1", "/p/", "/q"]),
            pick(&["post", "GET"]),
            pick(&[RULE]),
            proptest::option::of(0u16..=1000),
            proptest::option::of(0u16..=1000),
            1usize..=120,
        ),
    )
        .prop_map(
            |(
                (ip, country, status, decision, ua_type, risk_min),
                (host, path_prefix, method, rule, from, to, limit),
            )| Q {
                ip,
                country,
                status,
                decision,
                ua_type,
                risk_min,
                host,
                path_prefix,
                method,
                rule,
                from,
                to,
                limit,
            },
        )
}

impl Q {
    fn time(snap: &[Raw], at: u16) -> u64 {
        let first = id_parts(&snap[0].0).0;
        let last = id_parts(&snap[snap.len() - 1].0).0;
        first + (last - first) * u64::from(at) / 1000
    }

    fn params(&self, snap: &[Raw]) -> String {
        let mut out = vec![format!("limit={}", self.limit)];
        let mut add = |k: &str, v: Option<&str>| {
            if let Some(v) = v {
                out.push(format!("{k}={}", urlencode(v)));
            }
        };
        add("ip", self.ip);
        add("country", self.country);
        add("status", self.status);
        add("decision", self.decision);
        add("ua_type", self.ua_type);
        add("risk_min", self.risk_min);
        add("host", self.host);
        add("path_prefix", self.path_prefix);
        add("method", self.method);
        add("rule", self.rule);
        if let Some(f) = self.from {
            out.push(format!("from={}", Self::time(snap, f)));
        }
        if let Some(t) = self.to {
            // RFC 3339 for `to`, milliseconds for `from`: both forms are exercised.
            let ms = Self::time(snap, t);
            let t = chrono::DateTime::from_timestamp_millis(ms as i64).expect("time");
            out.push(format!(
                "to={}",
                urlencode(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            ));
        }
        out.join("&")
    }

    /// Whether a filter is served by an index. Values so common that a scan finds a page at
    /// once are not indexed: `decision=allow`, the class `2xx` and exact 2xx statuses.
    fn indexed(&self) -> bool {
        self.ip.is_some()
            || self.country.is_some()
            || self.status.is_some_and(|s| !s.starts_with('2'))
            || self.decision.is_some_and(|d| d != "allow")
            || self.ua_type.is_some()
            || self.rule.is_some()
            || self
                .risk_min
                .is_some_and(|r| r.parse::<f64>().unwrap_or(0.0) >= 0.5)
    }

    /// The reference: an independent reading of the filter semantics over raw fields.
    fn matches(&self, snap: &[Raw], (id, f): &Raw) -> bool {
        let ms = id_parts(id).0;
        let field = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
        let canon = |ip: &str| -> String {
            ip.parse::<std::net::IpAddr>()
                .map(|a| a.to_canonical().to_string())
                .unwrap_or_else(|_| ip.to_string())
        };
        self.from.is_none_or(|at| ms >= Self::time(snap, at))
            && self.to.is_none_or(|at| ms < Self::time(snap, at))
            && self.ip.is_none_or(|ip| canon(field("ip")) == canon(ip))
            && self
                .country
                .is_none_or(|c| field("country").eq_ignore_ascii_case(c))
            && self.status.is_none_or(|s| {
                let st = field("status");
                let s = s.to_ascii_lowercase();
                match s.strip_suffix("xx") {
                    Some(class) => st.starts_with(class),
                    None => st == s,
                }
            })
            && self.decision.is_none_or(|d| field("decision") == d)
            && self.ua_type.is_none_or(|t| field("ua_type") == t)
            && self.risk_min.is_none_or(|r| {
                field("risk").parse::<f64>().expect("risk") >= r.parse::<f64>().expect("r")
            })
            && self
                .host
                .is_none_or(|h| field("host").eq_ignore_ascii_case(h))
            && self
                .path_prefix
                .is_none_or(|p| field("path").starts_with(p))
            && self
                .method
                .is_none_or(|m| field("method").eq_ignore_ascii_case(m))
            && self.rule.is_none_or(|r| field("rule") == r)
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn get_json(app: &TestApp, admin: &TestAdmin, path: &str) -> (u16, Value) {
    json_of(
        app.get(path)
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("request"),
    )
    .await
}

/// Follows the cursor; returns every id. `during` runs after the first page.
async fn walk(
    app: &TestApp,
    admin: &TestAdmin,
    params: &str,
    limit: usize,
    must_be_full: bool,
    mut during: impl FnMut() -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut before: Option<String> = None;
    for call in 0.. {
        let mut url = format!("/api/admin/access-log?{params}");
        if let Some(b) = &before {
            url.push_str(&format!("&before={b}"));
        }
        let (status, page) = get_json(app, admin, &url).await;
        assert_eq!(status, 200, "{url}: {page}");
        let items = page["items"].as_array().expect("items");
        ids.extend(
            items
                .iter()
                .map(|i| i["id"].as_str().expect("id").to_string()),
        );
        if call == 0 {
            if let Some(f) = during() {
                f.await;
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => {
                if must_be_full {
                    assert_eq!(items.len(), limit, "{url}: an indexed page is full");
                }
                before = Some(c.to_string());
            }
            None => break,
        }
        assert!(call < 5_000, "walk does not end");
    }
    ids
}

fn check_cases(
    rt: &tokio::runtime::Runtime,
    app: &TestApp,
    admin: &TestAdmin,
    keys: &Keys,
    seq: &std::sync::Arc<tokio::sync::Mutex<(u64, u64)>>,
    cases: u32,
    arrivals: bool,
) {
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&query_strategy(), |q| {
        rt.block_on(async {
            let mut con = redis_con(app).await;
            let snap = snapshot(&mut con, keys).await;
            let params = q.params(&snap);
            let want: Vec<String> = snap
                .iter()
                .rev()
                .filter(|r| q.matches(&snap, r))
                .map(|(id, _)| id.clone())
                .collect();
            let (keys2, seq2, con2) = (keys.clone(), seq.clone(), con.clone());
            let got = walk(app, admin, &params, q.limit, q.indexed(), move || {
                if !arrivals {
                    return None;
                }
                let (keys, seq, mut con) = (keys2.clone(), seq2.clone(), con2.clone());
                Some(Box::pin(async move {
                    // New entries arrive between pages: newer than the walk, never in it.
                    let mut s = seq.lock().await;
                    let (mut batch_seq, next) = *s;
                    write(&mut con, &keys, &mut batch_seq, next..next + 40).await;
                    *s = (batch_seq, next + 40);
                }))
            })
            .await;
            prop_assert_eq!(got.len(), want.len(), "{}", params);
            prop_assert!(got == want, "{}: ids differ", params);
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn indexed_pages_are_exact_for_random_filters_and_ranges_while_entries_arrive_and_after_trimming() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (app, admin) = rt.block_on(async {
        let app = spawn_app().await;
        let admin = app.create_admin().await;
        (app, admin)
    });
    let keys = Keys::new(app.key_prefix.clone());
    const N: u64 = 4_000;
    let seq = std::sync::Arc::new(tokio::sync::Mutex::new((0u64, N)));
    rt.block_on(async {
        let mut con = redis_con(&app).await;
        let mut s = seq.lock().await;
        // Spread over a few milliseconds at least: several ids per millisecond and many ms.
        for part in 0..8 {
            let mut batch_seq = s.0;
            write(
                &mut con,
                &keys,
                &mut batch_seq,
                part * (N / 8)..(part + 1) * (N / 8),
            )
            .await;
            s.0 = batch_seq;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });

    check_cases(&rt, &app, &admin, &keys, &seq, 40, true);

    // Trim the oldest half by id (as age retention does). Before the sweep the index still
    // holds members of trimmed entries: they are skipped. After it, they are gone.
    rt.block_on(async {
        let mut con = redis_con(&app).await;
        let snap = snapshot(&mut con, &keys).await;
        let mid = snap[snap.len() / 2].0.clone();
        let _: u64 = redis::cmd("XTRIM")
            .arg(keys.access_stream())
            .arg("MINID")
            .arg(&mid)
            .query_async(&mut con)
            .await
            .expect("XTRIM");
    });
    check_cases(&rt, &app, &admin, &keys, &seq, 10, false);
    rt.block_on(async {
        let mut con = redis_con(&app).await;
        sweep_index(&mut con, &keys.access()).await.expect("sweep");
        let snap = snapshot(&mut con, &keys).await;
        let first_ms = id_parts(&snap[0].0).0;
        let index_keys: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys.access().postings_registry())
            .query_async(&mut con)
            .await
            .expect("SMEMBERS");
        assert!(!index_keys.is_empty());
        for k in index_keys {
            let oldest: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
                .arg(&k)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut con)
                .await
                .expect("XRANGE");
            if let Some((id, _)) = oldest.first() {
                assert!(
                    id_parts(id).0 >= first_ms,
                    "{k} keeps {id} older than the stream's first millisecond"
                );
            }
        }
    });
    check_cases(&rt, &app, &admin, &keys, &seq, 10, true);

    // Trim by count to a length that cuts a batch in two (as MAXLEN does): the entries below
    // the cut are skipped whether or not the sweep has run.
    rt.block_on(async {
        let mut con = redis_con(&app).await;
        let len: u64 = redis::cmd("XLEN")
            .arg(keys.access_stream())
            .query_async(&mut con)
            .await
            .expect("XLEN");
        let _: u64 = redis::cmd("XTRIM")
            .arg(keys.access_stream())
            .arg("MAXLEN")
            .arg(len * 2 / 3 + 3)
            .query_async(&mut con)
            .await
            .expect("XTRIM");
    });
    check_cases(&rt, &app, &admin, &keys, &seq, 8, false);
    rt.block_on(async {
        let mut con = redis_con(&app).await;
        sweep_index(&mut con, &keys.access()).await.expect("sweep");
    });
    check_cases(&rt, &app, &admin, &keys, &seq, 8, true);
    rt.block_on(async move { drop(app) });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ips_of_one_bucket_never_mix() {
    use watchpost_common::access_index::{canonical_ip, ip_bucket};
    let app = spawn_app().await;
    let admin = app.create_admin().await;
    let keys = Keys::new(app.key_prefix.clone());
    let mut con = redis_con(&app).await;
    // Two addresses that share a bucket (the hash is fixed, so this always finds a pair).
    let a = "203.0.113.7".to_string();
    let b = (0..=255u32)
        .flat_map(|x| (0..=255u32).map(move |y| format!("10.9.{x}.{y}")))
        .find(|ip| ip_bucket(&canonical_ip(ip)) == ip_bucket(&a))
        .expect("a colliding address");
    let script = redis::Script::new(APPEND_SCRIPT);
    let mut seq = 0;
    for round in 0..6u64 {
        let batch: Vec<AccessLogEntry> = (0..40u64)
            .map(|i| AccessLogEntry {
                ip: if (i + round) % 3 == 0 {
                    a.clone()
                } else {
                    b.clone()
                },
                ..entry(round * 40 + i)
            })
            .collect();
        seq += 1;
        append_batch(
            &mut con,
            &script,
            &keys.access(),
            "p1",
            seq,
            10_000_000,
            &batch,
        )
        .await
        .expect("append");
    }
    let snap = snapshot(&mut con, &keys).await;
    for ip in [&a, &b] {
        let want: Vec<String> = snap
            .iter()
            .rev()
            .filter(|(_, f)| f["ip"] == *ip)
            .map(|(id, _)| id.clone())
            .collect();
        assert!(!want.is_empty());
        let got = walk(&app, &admin, &format!("ip={ip}&limit=7"), 7, true, || None).await;
        assert_eq!(got, want, "{ip}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_entry_by_id_and_by_request_id() {
    let app = spawn_app().await;
    let admin = app.create_admin().await;
    let keys = Keys::new(app.key_prefix.clone());
    let mut con = redis_con(&app).await;
    let mut seq = 0;
    write(&mut con, &keys, &mut seq, 0..3000).await;
    let snap = snapshot(&mut con, &keys).await;
    let (id, fields) = &snap[1234];

    let (status, item) = get_json(&app, &admin, &format!("/api/admin/access-log/{id}")).await;
    assert_eq!(status, 200, "{item}");
    assert_eq!(item["id"], id.as_str());
    assert_eq!(item["request_id"], fields["request_id"].as_str());

    let rid = &fields["request_id"];
    let (status, item) = get_json(
        &app,
        &admin,
        &format!("/api/admin/access-log/by-request-id/{rid}"),
    )
    .await;
    assert_eq!(status, 200, "{item}");
    assert_eq!(item["id"], id.as_str());
    let (status, page) = get_json(
        &app,
        &admin,
        &format!("/api/admin/access-log?request_id={rid}"),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["items"][0]["id"], id.as_str());
    // With another filter that the entry fails: nothing.
    let other = if fields["method"] == "GET" {
        "post"
    } else {
        "get"
    };
    let (_, page) = get_json(
        &app,
        &admin,
        &format!("/api/admin/access-log?request_id={rid}&method={other}"),
    )
    .await;
    assert_eq!(page["items"], serde_json::json!([]));

    let (ms, s) = id_parts(id);
    for missing in [format!("{ms}-{}", s + 100_000), "1-0".to_string()] {
        let (status, body) =
            get_json(&app, &admin, &format!("/api/admin/access-log/{missing}")).await;
        assert_error(status, &body, 404, "NOT_FOUND");
    }
    let unknown = ulid::Ulid::new().to_string();
    let (status, body) = get_json(
        &app,
        &admin,
        &format!("/api/admin/access-log/by-request-id/{unknown}"),
    )
    .await;
    assert_error(status, &body, 404, "NOT_FOUND");
    let (status, body) = get_json(
        &app,
        &admin,
        "/api/admin/access-log/by-request-id/not-a-ulid",
    )
    .await;
    assert_error(status, &body, 404, "NOT_FOUND");
    for bad in ["abc", "1-2-3", "-1", "1-x"] {
        let (status, body) = get_json(&app, &admin, &format!("/api/admin/access-log/{bad}")).await;
        assert_error(status, &body, 400, "BAD_REQUEST");
    }
    for bad in [
        "format=xml",
        "from=soon",
        "ip=1.2.3",
        "limit=5",
        "status=9xx",
    ] {
        let (status, body) =
            get_json(&app, &admin, &format!("/api/admin/access-log/export?{bad}")).await;
        assert_error(status, &body, 400, "BAD_REQUEST");
    }
}

/// Parses RFC 4180 CSV (quoted fields may hold commas, quotes and line breaks).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            ',' => row.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            c => field.push(c),
        }
    }
    assert!(
        field.is_empty() && row.is_empty(),
        "CSV ends with a line break"
    );
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_write_every_match_with_a_count_in_ndjson_and_csv() {
    let app = spawn_app().await;
    let admin = app.create_admin().await;
    let keys = Keys::new(app.key_prefix.clone());
    let mut con = redis_con(&app).await;
    let mut seq = 0;
    write(&mut con, &keys, &mut seq, 0..3000).await;
    let snap = snapshot(&mut con, &keys).await;

    // NDJSON, indexed filter and a time range.
    let from = id_parts(&snap[500].0).0;
    let to = id_parts(&snap[2500].0).0;
    let want: Vec<&str> = snap
        .iter()
        .rev()
        .filter(|(id, f)| {
            let ms = id_parts(id).0;
            ms >= from && ms < to && f["country"] == "FR"
        })
        .map(|(id, _)| id.as_str())
        .collect();
    let text = app
        .get(&format!(
            "/api/admin/access-log/export?country=fr&from={from}&to={to}"
        ))
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("body");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let (trailer, items) = lines.split_last().expect("a trailer");
    assert_eq!(trailer["export"], "end");
    assert_eq!(trailer["count"], want.len());
    let got: Vec<&str> = items
        .iter()
        .map(|i| i["id"].as_str().expect("id"))
        .collect();
    assert_eq!(got, want);

    // CSV, everything: hostile values come back intact.
    let response = app
        .get("/api/admin/access-log/export?format=csv")
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("export");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/csv"));
    let rows = parse_csv(&response.text().await.expect("body"));
    assert_eq!(rows[0][0], "id");
    assert_eq!(
        rows[0][1..],
        watchpost_common::ACCESS_LOG_FIELDS.map(String::from)
    );
    let last = rows.last().expect("trailer");
    assert_eq!(last, &vec!["#count".to_string(), snap.len().to_string()]);
    let body = &rows[1..rows.len() - 1];
    assert_eq!(body.len(), snap.len());
    let ua_col = 1 + watchpost_common::ACCESS_LOG_FIELDS
        .iter()
        .position(|f| *f == "ua")
        .expect("ua");
    for (row, (id, f)) in body.iter().zip(snap.iter().rev()) {
        assert_eq!(&row[0], id);
        assert_eq!(row.len(), 1 + watchpost_common::ACCESS_LOG_FIELDS.len());
        assert_eq!(row[ua_col], f["ua"]);
    }
    assert!(body.iter().any(|r| r[ua_col] == HOSTILE_UA));
}

async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app
        .get("/metrics")
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics");
    text.lines()
        .find_map(|l| {
            l.strip_prefix(&format!("watchpost_admin_{name} "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("{name} missing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_an_export_stops_the_server_reading() {
    let app = spawn_app().await;
    let admin = app.create_admin().await;
    let keys = Keys::new(app.key_prefix.clone());
    let mut con = redis_con(&app).await;
    let mut seq = 0;
    const N: u64 = 60_000;
    write(&mut con, &keys, &mut seq, 0..N).await;

    let mut response = app
        .get("/api/admin/access-log/export")
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("export");
    assert_eq!(response.status(), 200);
    let first = response
        .chunk()
        .await
        .expect("read")
        .expect("a first chunk");
    assert!(!first.is_empty());
    assert_eq!(metric(&app, "access_log_exports_open").await, 1.0);
    drop(response);

    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&app, "access_log_exports_open").await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the export kept running after the client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let read = metric(&app, "access_log_export_entries_read_total").await;
    assert!(
        read < N as f64,
        "read {read} of {N}: the export stopped early"
    );
    assert_eq!(
        metric(&app, "access_log_export_entries_read_total").await,
        read,
        "nothing is read once the export is closed"
    );
}

/// Export NDJSON lines: the items' ids and the trailer.
async fn export_ids(app: &TestApp, admin: &TestAdmin, query: &str) -> (Vec<String>, Value) {
    let response = app
        .get(&format!("/api/admin/access-log/export?{query}"))
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("export");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let mut lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let trailer = lines.pop().expect("a trailer");
    let ids = lines
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_string())
        .collect();
    (ids, trailer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_continue_into_the_archive_below_the_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive_dir = dir.path().display().to_string();
    let app = TestApp::builder()
        .configure(move |c| {
            c.admin.rate_limit_per_minute = 1_000_000;
            c.admin.rate_limit_per_hour = 1_000_000;
            c.archive.dir = archive_dir;
            c.archive.batch = 250;
            c.archive.block_ms = 100;
            c.archive.metrics_listen = String::new();
        })
        .spawn()
        .await;
    let admin = app.create_admin().await;
    let keys = Keys::new(app.key_prefix.clone());
    let mut con = redis_con(&app).await;
    let mut seq = 0;
    write(&mut con, &keys, &mut seq, 0..3000).await;
    let snap = snapshot(&mut con, &keys).await;
    assert_eq!(snap.len(), 3000);

    // Archive everything, then trim the stream to its newest 1000 entries: 2000 entries are
    // only in the archive, the newest 1000 in both (and must come out once).
    let metrics = watchpost_admin::archive::ArchiveMetrics::new().expect("metrics");
    let archiver = watchpost_admin::archive::Archiver::new(
        &app.config.redis.target(),
        &keys,
        &app.config.archive,
        metrics.clone(),
    )
    .await
    .expect("archiver");
    let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(archiver.run(async move {
        let _ = stop_rx.wait_for(|v| *v).await;
    }));
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics.entries_total.get() < 3000 {
        assert!(
            Instant::now() < deadline,
            "the archiver did not archive everything"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    task.await.expect("join").expect("archiver");
    let _: u64 = redis::cmd("XTRIM")
        .arg(keys.access_stream())
        .arg("MINID")
        .arg(&snap[2000].0)
        .query_async(&mut con)
        .await
        .expect("XTRIM");
    let left = snapshot(&mut con, &keys).await;
    assert_eq!(left.len(), 1000);
    assert_eq!(left[0].0, snap[2000].0);

    // Everything: each entry once, newest first, the count including the archived ones.
    let (ids, trailer) = export_ids(&app, &admin, "").await;
    let want: Vec<&str> = snap.iter().rev().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), want.len());
    assert_eq!(ids, want);
    assert_eq!(trailer["export"], "end");
    assert_eq!(trailer["count"], 3000);

    // Filters (an indexed one and a checked one) and a time range across the trim point.
    let from = id_parts(&snap[300].0).0;
    let to = id_parts(&snap[2700].0).0;
    let want: Vec<&str> = snap
        .iter()
        .rev()
        .filter(|(id, f)| {
            let ms = id_parts(id).0;
            ms >= from && ms < to && f["country"] == "FR" && f["method"] == "GET"
        })
        .map(|(id, _)| id.as_str())
        .collect();
    assert!(
        want.len() > 100,
        "the reference has archived and stream matches"
    );
    let (ids, trailer) = export_ids(
        &app,
        &admin,
        &format!("country=fr&method=GET&from={from}&to={to}"),
    )
    .await;
    assert_eq!(ids, want);
    assert_eq!(trailer["count"], want.len());

    // A range entirely below the stream comes from the archive alone.
    let to_old = id_parts(&snap[1000].0).0;
    let want: Vec<&str> = snap
        .iter()
        .rev()
        .filter(|(id, f)| id_parts(id).0 < to_old && f["status"] == "404")
        .map(|(id, _)| id.as_str())
        .collect();
    assert!(!want.is_empty());
    let (ids, trailer) = export_ids(&app, &admin, &format!("status=404&to={to_old}")).await;
    assert_eq!(ids, want);
    assert_eq!(trailer["count"], want.len());
}

/// An export read over a plain HTTP/1.1 connection whose receive buffer is small and fixed
/// (no autotuning): while the test does not read, the server is held back by TCP within a few
/// MiB, as with a client that stops reading.
struct RawExport {
    stream: tokio::net::TcpStream,
    /// Bytes read so far after the response head.
    body: Vec<u8>,
}

/// Opens an export as `token` and reads the response head (200), then leaves the body unread.
async fn open_export_as(app: &TestApp, token: &str, query: &str) -> RawExport {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr: std::net::SocketAddr = app
        .base_url
        .trim_start_matches("http://")
        .parse()
        .expect("base url is an address");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    let mut stream = socket.connect(addr).await.expect("connect");
    let request = format!(
        "GET /api/admin/access-log/export?{query} HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let split = loop {
        let n = stream.read(&mut buf).await.expect("read the head");
        assert!(n > 0, "connection closed before the response head");
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let text = String::from_utf8_lossy(&head[..split]).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    RawExport {
        stream,
        body: head[split..].to_vec(),
    }
}

/// Reads the rest of the export and decodes the chunked body; panics unless it ends with the
/// last (empty) chunk.
async fn read_rest(mut export: RawExport) -> String {
    use tokio::io::AsyncReadExt;
    export
        .stream
        .read_to_end(&mut export.body)
        .await
        .expect("read the body");
    let raw = export.body;
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let line_end = raw[at..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| at + p)
            .expect("a chunk size line: the body was cut off");
        let size_text = std::str::from_utf8(&raw[at..line_end]).expect("size");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("hex chunk size");
        at = line_end + 2;
        if size == 0 {
            break;
        }
        out.extend_from_slice(&raw[at..at + size]);
        at += size + 2;
    }
    String::from_utf8(out).expect("UTF-8 body")
}

/// Checks an NDJSON export cut by a withdrawn credential: whole entry lines, then an error
/// trailer with `code` whose count is the number of entries written, fewer than `total`.
#[track_caller]
fn assert_ndjson_cut(text: &str, code: &str, total: u64, case: &str) {
    let mut lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{case}: {e}: {l:?}")))
        .collect();
    let trailer = lines.pop().unwrap_or_else(|| panic!("{case}: empty body"));
    assert_eq!(trailer["export"], "error", "{case}: {trailer}");
    assert_eq!(trailer["error"]["code"], code, "{case}: {trailer}");
    assert_eq!(trailer["count"], lines.len(), "{case}: {trailer}");
    assert!(
        (lines.len() as u64) < total,
        "{case}: the export was written in full ({total}) before it was cut"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["id"].is_string() && l.get("export").is_none()),
        "{case}: only entries before the trailer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_ends_when_its_credential_is_withdrawn_even_while_the_client_is_not_reading() {
    let app = spawn_app().await;
    let boss = app.create_admin().await;
    let key_revoked = app.create_admin().await;
    let disabled = app.create_admin().await;
    let demoted = app.create_admin().await;
    let session_admin = app.create_user().await;
    app.db()
        .await
        .execute(
            "UPDATE users SET role = 'platform_admin' WHERE id = $1",
            &[&session_admin.id],
        )
        .await
        .expect("promote");
    let keys = Keys::new(app.key_prefix.clone());
    let mut con = redis_con(&app).await;
    let mut seq = 0;
    // Several times what the connection's buffers hold: an unread export stalls.
    const N: u64 = 40_000;
    write(&mut con, &keys, &mut seq, 0..N).await;

    let control = open_export_as(&app, &boss.key, "").await;
    let exports = [
        open_export_as(&app, &key_revoked.key, "format=csv").await,
        open_export_as(&app, &disabled.key, "").await,
        open_export_as(&app, &demoted.key, "").await,
        open_export_as(&app, &session_admin.token, "").await,
    ];
    let open = metric(&app, "access_log_exports_open").await;
    if open != 5.0 {
        for r in exports {
            let t = read_rest(r).await;
            eprintln!(
                "DEBUG {} lines, last {:?}",
                t.lines().count(),
                t.lines().last()
            );
        }
        panic!("open {open}");
    }

    // Revoke the key through the API, disable one user, demote another, sign a session out.
    let key_id: String = app
        .db()
        .await
        .query_one(
            "SELECT id FROM api_keys WHERE user_id = $1",
            &[&key_revoked.id],
        )
        .await
        .expect("key id")
        .get(0);
    let response = app
        .delete(&format!("/api/admin/api-keys/{key_id}"))
        .bearer_auth(&boss.key)
        .send()
        .await
        .expect("revoke");
    assert_eq!(response.status(), 204);
    for (user, change) in [
        (&disabled.id, serde_json::json!({"status": "disabled"})),
        (&demoted.id, serde_json::json!({"role": "user"})),
    ] {
        let response = app
            .patch(&format!("/api/admin/users/{user}"))
            .bearer_auth(&boss.key)
            .json(&change)
            .send()
            .await
            .expect("patch");
        assert_eq!(response.status(), 200, "{change}");
    }
    let response = app
        .delete("/api/auth/sessions/current")
        .bearer_auth(&session_admin.token)
        .send()
        .await
        .expect("sign out");
    assert_eq!(response.status(), 204);

    // Nobody reads: the server must end the four exports on its own; the control goes on.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&app, "access_log_exports_open").await != 1.0 {
        assert!(
            Instant::now() < deadline,
            "exports of withdrawn credentials stayed open while their clients did not read"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let [csv, a, b, c] = exports;
    let csv = read_rest(csv).await;
    let rows = parse_csv(&csv);
    let (last, entries) = rows.split_last().expect("rows");
    assert_eq!(last[0], "#error", "API key revoked: {last:?}");
    assert!(
        entries.len() > 1 && (entries.len() as u64) <= N,
        "API key revoked: header and some entries, not all: {}",
        entries.len()
    );
    assert!(entries[1..].iter().all(|r| !r[0].starts_with('#')));
    assert_ndjson_cut(&read_rest(a).await, "UNAUTHORIZED", N, "user disabled");
    assert_ndjson_cut(&read_rest(b).await, "FORBIDDEN", N, "user demoted");
    assert_ndjson_cut(&read_rest(c).await, "UNAUTHORIZED", N, "session revoked");

    // The export whose credential still holds is complete.
    let text = read_rest(control).await;
    let trailer: Value =
        serde_json::from_str(text.lines().last().expect("a trailer")).expect("JSON trailer");
    assert_eq!(trailer["export"], "end");
    assert_eq!(trailer["count"], N);
    assert_eq!(text.lines().count() as u64, N + 1);
}
