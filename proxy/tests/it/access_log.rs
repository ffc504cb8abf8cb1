//! The access-log stream (SPEC §5): every field, typed; flushing on shutdown; surviving a
//! Redis outage without failing a single client request and without losing or duplicating an
//! entry; secrets redacted from the logged query.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use watchpost_common::{AccessLogEntry, Decision, Keys, ACCESS_LOG_FIELDS};
use watchpost_proxy::access_log::{self, append_batch, RedisStatus, WriterConfig, APPEND_SCRIPT};
use watchpost_proxy::metrics::Metrics;

use crate::support::{
    eventually, read_stream, unique_prefix, Origin, OwnRedis, TestProxy, BROWSER,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_is_present_in_order_and_typed() {
    let origin = Origin::start().await;
    let mut p = TestProxy::start("fields", &[origin.addr], "").await;
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let r = p.get("/items/7?sort=asc&x=%20y", BROWSER).await;
    assert_eq!(r.status, 200);
    let id = r.header("x-request-id").expect("request id").to_string();
    let entries = p.wait_entries(1).await;
    let fields = entries.into_iter().next().expect("one entry");
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ACCESS_LOG_FIELDS, "fields in the fixed order");
    let f: HashMap<String, String> = fields.into_iter().collect();
    let ts: u64 = f["ts"].parse().expect("ts is an integer of milliseconds");
    assert!(ts >= before && ts < before + 60_000, "ts {ts} vs {before}");
    assert_eq!(f["method"], "GET");
    assert_eq!(f["host"], "test.local");
    assert_eq!(f["path"], "/items/7");
    assert_eq!(f["query"], "sort=asc&x=%20y");
    assert_eq!(f["status"], "200");
    assert_eq!(f["ip"], "127.0.0.1");
    assert_eq!(f["ip_source"], "peer");
    assert_eq!(f["peer"], "127.0.0.1");
    assert_eq!(f["country"], "");
    let risk = &f["risk"];
    assert!(
        risk.len() == 5 && risk.as_bytes()[1] == b'.' && risk.parse::<f64>().is_ok(),
        "risk with 3 decimals: {risk}"
    );
    assert_eq!(f["reasons"], "");
    assert!(f["ua"].starts_with("Mozilla/5.0"));
    assert_eq!(f["ua_type"], "browser");
    assert_eq!(f["decision"], "allow");
    f["latency_us"]
        .parse::<u64>()
        .expect("latency_us is an integer");
    assert_eq!(f["bytes_out"], "9", "the body was 'origin ok'");
    assert_eq!(f["upstream"], origin.addr.to_string());
    assert_eq!(f["request_id"], id);
    assert_eq!(f["proxy_id"], "test-proxy");
    // The admin API's decoder reads it back.
    let e = AccessLogEntry::from_fields(&f).expect("decodes");
    assert_eq!(e.decision, Decision::Allow);
    assert_eq!(e.status, 200);
    // The per-minute request counter was incremented in the same pipeline.
    let mut redis = p.redis().await;
    let minute = ts / 60_000;
    let n: Option<u64> = redis::cmd("GET")
        .arg(format!("{}gw:req:{minute}", p.prefix))
        .query_async(&mut redis)
        .await
        .expect("GET");
    assert_eq!(n, Some(1));
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{}gw:req:{minute}", p.prefix))
        .query_async(&mut redis)
        .await
        .expect("TTL");
    assert!(ttl > 0, "counters expire");
    let h = p.healthz().await;
    assert_eq!(h["status"], "ok");
    assert_eq!(h["redis"], "up");
    assert_eq!(h["log_written"], 1);
    assert_eq!(h["log_dropped"], 0);
    assert_eq!(h["buffer_depth"], 0);
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_the_buffer() {
    let origin = Origin::start().await;
    // The writer would hold a partial batch for a minute; shutdown must not wait for that.
    let mut p = TestProxy::start(
        "flush",
        &[origin.addr],
        "[access_log]\nflush_interval_ms = 60000\nbatch_max_entries = 100\n",
    )
    .await;
    for _ in 0..5 {
        assert_eq!(p.get("/", BROWSER).await.status, 200);
    }
    assert!(p.entries().await.len() < 5, "entries are still buffered");
    p.shutdown().await;
    assert_eq!(p.entries().await.len(), 5);
    p.cleanup().await;
}

/// Request ids in the stream, with how often each appears.
async fn id_counts(url: &str, key: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for e in read_stream(url, key).await {
        if let Some((_, id)) = e.into_iter().find(|(k, _)| k == "request_id") {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

/// Wait until every id in `ids` is in the stream, then check that each is there exactly once
/// and nothing else is.
async fn assert_exactly_once(url: &str, key: &str, ids: &[String]) {
    let counts = eventually("every entry to arrive", Duration::from_secs(30), || async {
        let c = id_counts(url, key).await;
        ids.iter().all(|id| c.contains_key(id)).then_some(c)
    })
    .await;
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "duplicated entries: {twice:?}");
    assert_eq!(counts.len(), ids.len(), "no entry beyond the ones sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_sent_during_a_redis_outage_all_arrive_exactly_once() {
    let origin = Origin::start().await;
    let mut redis = OwnRedis::start().await;
    // Hundreds of requests from one address: keep the rate signal out of the way.
    let extra = "[risk]\nrate_limit = 1000000.0\n";
    let mut p = TestProxy::start_on("outage", &[origin.addr], &redis.url(), extra).await;
    let key = p.stream_key();

    for _ in 0..20 {
        assert_eq!(p.get("/", BROWSER).await.status, 200);
    }
    eventually("the first entries", Duration::from_secs(10), || async {
        (read_stream(&redis.url(), &key).await.len() == 20).then_some(())
    })
    .await;

    // A 2-second outage with traffic all along: every request succeeds.
    redis.stop();
    let mut ids = Vec::new();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(2) {
        let r = p.get("/", BROWSER).await;
        assert_eq!(r.status, 200, "requests must not fail while Redis is down");
        ids.push(r.header("x-request-id").expect("request id").to_string());
    }
    eventually(
        "health to report Redis down",
        Duration::from_secs(10),
        || async { (p.healthz().await["redis"] == "down").then_some(()) },
    )
    .await;
    let h = p.healthz().await;
    assert!(h["buffer_depth"].as_u64().expect("number") > 0, "{h}");
    assert!(h["buffer_bytes"].as_u64().expect("number") > 0, "{h}");

    // Same port, empty data set: whatever lands now was written after the restart. The
    // entries held during the outage arrive, once each, and so do the ones sent right after.
    redis.restart().await;
    for _ in 0..20 {
        let r = p.get("/", BROWSER).await;
        assert_eq!(r.status, 200);
        ids.push(r.header("x-request-id").expect("request id").to_string());
    }
    assert_exactly_once(&redis.url(), &key, &ids).await;
    assert_eq!(p.metrics().log_dropped.get(), 0, "nothing was dropped");
    eventually(
        "health to report Redis up and the buffer empty",
        Duration::from_secs(10),
        || async {
            let h = p.healthz().await;
            (h["redis"] == "up" && h["buffer_depth"] == 0 && h["buffer_bytes"] == 0).then_some(())
        },
    )
    .await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_and_serves_while_redis_is_down_then_writes_when_it_appears() {
    let origin = Origin::start().await;
    let mut redis = OwnRedis::not_started();
    let mut p = TestProxy::start_on("cold", &[origin.addr], &redis.url(), "").await;
    let h = p.healthz().await;
    assert_eq!(h["redis"], "down");
    assert_eq!(h["config_version"], 0, "the file's [gateway] applies");
    assert_eq!(h["config_source"], "file");
    let mut ids = Vec::new();
    for _ in 0..5 {
        let r = p.get("/", BROWSER).await;
        assert_eq!(r.status, 200);
        ids.push(r.header("x-request-id").expect("request id").to_string());
    }

    redis.restart().await;
    assert_exactly_once(&redis.url(), &p.stream_key(), &ids).await;
    assert_eq!(p.metrics().log_dropped.get(), 0);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_memory_redis_drops_and_counts_the_batch_then_writing_goes_on() {
    let origin = Origin::start().await;
    let redis = OwnRedis::start().await;
    let mut p = TestProxy::start_on("oom", &[origin.addr], &redis.url(), "").await;
    let mut c = p.redis().await;
    let set_maxmemory = |v: &'static str| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(v)
            .clone()
    };
    let _: () = set_maxmemory("1")
        .query_async(&mut c)
        .await
        .expect("CONFIG SET");
    assert_eq!(p.get("/", BROWSER).await.status, 200);
    eventually(
        "the refused batch to be counted",
        Duration::from_secs(10),
        || async { (p.metrics().log_dropped.get() == 1).then_some(()) },
    )
    .await;
    assert_eq!(p.healthz().await["buffer_depth"], 0, "not held for a retry");
    let _: () = set_maxmemory("0")
        .query_async(&mut c)
        .await
        .expect("CONFIG SET");
    let r = p.get("/", BROWSER).await;
    let id = r.header("x-request-id").expect("request id").to_string();
    p.entry_for(&id).await;
    assert_eq!(p.metrics().log_dropped.get(), 1);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_query_parameters_are_redacted_in_the_log_but_not_upstream() {
    let origin = Origin::start().await;
    let mut p = TestProxy::start("redact", &[origin.addr], "").await;
    let query = "page=2&token=abc&API_KEY=k1&%73ig=zz&code=9&keep=%20x";
    let r = p.get(&format!("/cb?{query}"), BROWSER).await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.last().query, query, "the upstream gets the original");
    let id = r.header("x-request-id").expect("request id").to_string();
    let e = p.entry_for(&id).await;
    assert_eq!(
        e["query"],
        "page=2&token=REDACTED&API_KEY=REDACTED&%73ig=REDACTED&code=REDACTED&keep=%20x"
    );
    p.cleanup().await;

    // The list is configurable; an empty one redacts nothing.
    let mut p = TestProxy::start(
        "redact-custom",
        &[origin.addr],
        "[access_log]\nredact_query_params = [\"Session\"]\n",
    )
    .await;
    let r = p.get("/?session=s&token=t", BROWSER).await;
    let id = r.header("x-request-id").expect("request id").to_string();
    assert_eq!(p.entry_for(&id).await["query"], "session=REDACTED&token=t");
    p.cleanup().await;
}

fn writer_config(url: &str, keys: &Keys, proxy_id: &str) -> WriterConfig {
    WriterConfig {
        redis: watchpost_common::RedisTarget::Node(url.to_string()),
        keys: keys.clone(),
        families: Vec::new(),
        proxy_id: proxy_id.to_string(),
        stream_max_len: 1_000_000,
        retention: None,
        max_memory_bytes: None,
        rollup_retention: watchpost_common::rollup::DEFAULT_ROLLUP_RETENTION,
        buffer_bytes: 1 << 20,
        redact_query_params: Vec::new(),
        batch_max_entries: 100,
        flush_interval: Duration::ZERO,
        shutdown_flush: Duration::from_secs(5),
    }
}

fn logged(n: u64) -> AccessLogEntry {
    AccessLogEntry {
        ts: 120_000 + n,
        request_id: format!("req-{n}"),
        proxy_id: "w".into(),
        ..AccessLogEntry::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_is_appended_once() {
    let url = crate::support::redis_url();
    let keys = Keys::new(unique_prefix("seq"));
    let mut c = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must be reachable");
    let script = redis::Script::new(APPEND_SCRIPT);
    let batch = [logged(1), logged(2), logged(3)];
    let append = |seq: u64, batch: Vec<AccessLogEntry>| {
        let (script, keys, mut c) = (script.clone(), keys.clone(), c.clone());
        async move {
            append_batch(&mut c, &script, &keys.access(), "w", seq, 1000, &batch)
                .await
                .expect("script")
        }
    };
    assert_eq!(append(7, batch.to_vec()).await, 3);
    // The reply was lost; the writer sends the same batch again: nothing is added twice.
    assert_eq!(append(7, batch.to_vec()).await, 0);
    // An older sequence is refused as well; the next one is appended.
    assert_eq!(append(6, batch.to_vec()).await, 0);
    assert_eq!(append(8, vec![logged(4)]).await, 1);

    let ids: Vec<String> = read_stream(&url, &keys.access_stream())
        .await
        .into_iter()
        .filter_map(|e| {
            e.into_iter()
                .find(|(k, _)| k == "request_id")
                .map(|(_, v)| v)
        })
        .collect();
    assert_eq!(ids, ["req-1", "req-2", "req-3", "req-4"]);
    let requests: u64 = redis::cmd("GET")
        .arg(keys.requests_in_minute(2))
        .query_async(&mut c)
        .await
        .expect("GET");
    assert_eq!(requests, 4, "counters count each entry once");
    let hwm: u64 = redis::cmd("HGET")
        .arg(keys.access_hwm())
        .arg("w")
        .query_async(&mut c)
        .await
        .expect("HGET");
    assert_eq!(hwm, 8);
    let _: () = redis::cmd("DEL")
        .arg(keys.access_stream())
        .arg(keys.access_hwm())
        .arg(keys.requests_in_minute(2))
        .query_async(&mut c)
        .await
        .expect("DEL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_never_go_back_below_the_high_water_mark() {
    let url = crate::support::redis_url();
    let keys = Keys::new(unique_prefix("hwm"));
    let mut c = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must be reachable");
    let run_writer = |entries: Vec<AccessLogEntry>, bump_to: Option<u64>| {
        let (url, keys) = (url.clone(), keys.clone());
        let mut c = c.clone();
        async move {
            let metrics = Metrics::new().expect("metrics");
            let (sink, writer) = access_log::channel(
                1000,
                writer_config(&url, &keys, "w"),
                metrics.clone(),
                Arc::new(RedisStatus::default()),
            );
            let (stop, stop_rx) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(writer.run(stop_rx));
            let n = entries.len() as u64;
            let mut entries = entries.into_iter();
            // The first entry makes the writer read the mark; then another writer with the
            // same proxy_id moves it far ahead.
            if let Some(first) = entries.next() {
                assert!(sink.push(first));
            }
            eventually("the first entry", Duration::from_secs(10), || async {
                (metrics.log_written.get() == 1).then_some(())
            })
            .await;
            if let Some(to) = bump_to {
                let _: () = redis::cmd("HSET")
                    .arg(keys.access_hwm())
                    .arg("w")
                    .arg(to)
                    .query_async(&mut c)
                    .await
                    .expect("HSET");
            }
            for e in entries {
                assert!(sink.push(e));
            }
            eventually("every entry", Duration::from_secs(10), || async {
                (metrics.log_written.get() == n).then_some(())
            })
            .await;
            let _ = stop.send(true);
            task.await.expect("writer");
            assert_eq!(metrics.log_dropped.get(), 0);
        }
    };
    // A first process, then a restarted one under the same proxy_id: its batches start above
    // the mark the first one left.
    run_writer((0..3).map(logged).collect(), None).await;
    run_writer((3..6).map(logged).collect(), None).await;
    // A mark moved ahead behind the writer's back: fresh batches are renumbered, not lost.
    run_writer((6..9).map(logged).collect(), Some(1_000_000)).await;
    let ids: Vec<String> = read_stream(&url, &keys.access_stream())
        .await
        .into_iter()
        .filter_map(|e| {
            e.into_iter()
                .find(|(k, _)| k == "request_id")
                .map(|(_, v)| v)
        })
        .collect();
    let want: Vec<String> = (0..9).map(|n| format!("req-{n}")).collect();
    assert_eq!(ids, want);
    let hwm: u64 = redis::cmd("HGET")
        .arg(keys.access_hwm())
        .arg("w")
        .query_async(&mut c)
        .await
        .expect("HGET");
    assert!(hwm > 1_000_000, "{hwm}");
    let _: () = redis::cmd("DEL")
        .arg(keys.access_stream())
        .arg(keys.access_hwm())
        .arg(keys.requests_in_minute(2))
        .query_async(&mut c)
        .await
        .expect("DEL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_is_capped_near_stream_max_len() {
    let origin = Origin::start().await;
    let extra = "[access_log]\nstream_max_len = 10\n[risk]\nrate_limit = 1000000.0\n";
    let mut p = TestProxy::start("maxlen", &[origin.addr], extra).await;
    for _ in 0..300 {
        assert_eq!(p.get("/", BROWSER).await.status, 200);
    }
    eventually("every entry written", Duration::from_secs(10), || async {
        (p.metrics().log_written.get() == 300).then_some(())
    })
    .await;
    // `MAXLEN ~` trims whole stream nodes (100 entries by default), never below the cap.
    let len = p.entries().await.len();
    assert!((10..300).contains(&len), "XLEN {len}");
    p.cleanup().await;
}

/// Ids of a stream, oldest first.
async fn stream_ids(c: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<String> {
    let raw: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(c)
        .await
        .expect("XRANGE");
    raw.into_iter().map(|(id, _)| id).collect()
}

/// Every (postings stream, field) of the index, expanded into the ids its postings name.
async fn index_ids(
    c: &mut redis::aio::MultiplexedConnection,
    keys: &watchpost_common::keys::AccessKeys,
) -> HashMap<(String, String), Vec<String>> {
    use watchpost_common::access_index::decode_offsets;
    let registry: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.postings_registry())
        .query_async(c)
        .await
        .expect("SMEMBERS");
    let mut out: HashMap<(String, String), Vec<String>> = HashMap::new();
    for key in registry {
        let postings: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(c)
            .await
            .expect("XRANGE");
        assert!(!postings.is_empty(), "{key} is registered but empty");
        for (base, fields) in postings {
            let (ms, seq) = base.split_once('-').expect("id");
            let seq: u64 = seq.parse().expect("seq");
            for (field, offsets) in fields {
                let offsets = decode_offsets(&offsets).expect("well-formed offsets");
                let ids = out.entry((key.clone(), field)).or_default();
                ids.extend(
                    offsets
                        .iter()
                        .map(|o| format!("{ms}-{}", seq + u64::from(*o))),
                );
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_holds_exactly_each_entrys_id_and_is_swept_with_the_stream() {
    use watchpost_common::access_index::{entry_terms, IndexTerm};
    let url = crate::support::redis_url();
    let keys = Keys::new(unique_prefix("index"));
    let family = keys.access();
    let mut c = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must be reachable");
    let script = redis::Script::new(APPEND_SCRIPT);
    let entry = |n: u64| AccessLogEntry {
        ip: if n % 3 == 0 {
            "::ffff:192.0.2.1".into()
        } else {
            format!("192.0.2.{}", 10 + n % 4)
        },
        country: ["DE", "FR", ""][(n % 3) as usize].into(),
        status: [200, 404, 503][(n % 3) as usize],
        decision: if n % 5 == 0 {
            Decision::Reject
        } else {
            Decision::Allow
        },
        ua_type: "cli".into(),
        risk: (n % 10) as f64 / 10.0,
        ..logged(n)
    };
    let all: Vec<AccessLogEntry> = (0..40).map(entry).collect();
    // Batches of 1 to 9 entries, some in later milliseconds.
    let mut seq = 0u64;
    let mut at = 0usize;
    while at < all.len() {
        let size = (1 + seq as usize * 4 % 9).min(all.len() - at);
        let chunk = &all[at..at + size];
        seq += 1;
        let added = append_batch(&mut c, &script, &family, "w", seq, 1000, chunk)
            .await
            .expect("script");
        assert_eq!(added as usize, chunk.len());
        // A retry of the same batch adds no entry and no posting either.
        let again = append_batch(&mut c, &script, &family, "w", seq, 1000, chunk)
            .await
            .expect("script");
        assert_eq!(again, 0);
        at += size;
        if seq % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let ids = stream_ids(&mut c, &keys.access_stream()).await;
    assert_eq!(ids.len(), all.len());

    // Reference: for every term, the ids of the entries carrying it.
    let reference = |from: usize| {
        let mut want: HashMap<(String, String), Vec<String>> = HashMap::new();
        for (i, e) in all.iter().enumerate().skip(from) {
            let mut terms = Vec::new();
            entry_terms(e, &mut terms);
            for t in terms {
                want.entry((t.key(&family), t.posting_field().to_string()))
                    .or_default()
                    .push(ids[i].clone());
            }
        }
        want
    };
    assert_eq!(index_ids(&mut c, &family).await, reference(0));
    let mapped = IndexTerm::ip("192.0.2.1");
    assert!(
        reference(0).contains_key(&(mapped.key(&family), "192.0.2.1".to_string())),
        "an IPv4-mapped spelling is indexed under the IPv4 address"
    );

    // Trim the stream by id (as an age-based retention would): the sweep trims every postings
    // stream to the first id's millisecond; what is left names the entries from there on.
    let cut = 25;
    let _: u64 = redis::cmd("XTRIM")
        .arg(keys.access_stream())
        .arg("MINID")
        .arg(&ids[cut])
        .query_async(&mut c)
        .await
        .expect("XTRIM");
    access_log::sweep_index(&mut c, &family)
        .await
        .expect("sweep");
    let first_ms = ids[cut].split('-').next().expect("ms").to_string();
    let same_ms = ids
        .iter()
        .position(|id| id.split('-').next() == Some(first_ms.as_str()))
        .expect("first ms");
    assert_eq!(index_ids(&mut c, &family).await, reference(same_ms));

    // An emptied stream leaves no index behind.
    let _: u64 = redis::cmd("XTRIM")
        .arg(keys.access_stream())
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut c)
        .await
        .expect("XTRIM");
    let (deleted, _) = access_log::sweep_index(&mut c, &family)
        .await
        .expect("sweep");
    assert!(deleted > 0);
    assert!(index_ids(&mut c, &family).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_gets_contiguous_ids_and_the_sweep_drops_the_old_index_format() {
    let url = crate::support::redis_url();
    let keys = Keys::new(unique_prefix("contig"));
    let family = keys.access();
    let mut c = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must be reachable");
    // An old-format index, as the previous version wrote it.
    let old_key = family.index("ip", "192.0.2.1");
    let _: () = redis::pipe()
        .cmd("XADD")
        .arg(&old_key)
        .arg("1-1")
        .arg("i")
        .arg("1")
        .ignore()
        .cmd("ZADD")
        .arg(family.index_registry())
        .arg(1)
        .arg(&old_key)
        .ignore()
        .query_async(&mut c)
        .await
        .expect("old index");
    let script = redis::Script::new(APPEND_SCRIPT);
    for (seq, size) in [(1u64, 1usize), (2, 64), (3, 7)] {
        let batch: Vec<AccessLogEntry> = (0..size as u64).map(logged).collect();
        let added = append_batch(&mut c, &script, &family, "w", seq, 1000, &batch)
            .await
            .expect("script");
        assert_eq!(added as usize, size);
    }
    let ids = stream_ids(&mut c, &keys.access_stream()).await;
    assert_eq!(ids.len(), 72);
    let parts: Vec<(u64, u64)> = ids
        .iter()
        .map(|id| {
            let (a, b) = id.split_once('-').expect("id");
            (a.parse().expect("ms"), b.parse().expect("seq"))
        })
        .collect();
    for batch in [&parts[1..65], &parts[65..72]] {
        for w in batch.windows(2) {
            assert_eq!(w[1].0, w[0].0, "one millisecond per batch");
            assert_eq!(w[1].1, w[0].1 + 1, "contiguous sequences");
        }
    }
    access_log::sweep_index(&mut c, &family)
        .await
        .expect("sweep");
    let exists: u64 = redis::cmd("EXISTS")
        .arg(&old_key)
        .arg(family.index_registry())
        .query_async(&mut c)
        .await
        .expect("EXISTS");
    assert_eq!(exists, 0, "the old index and its registry are gone");
}

/// `[access_log] shards = 3`: a proxy alone spreads its batches round-robin over every shard
/// from the shard its `proxy_id` hashes to; each shard's high-water mark sees that proxy's
/// sequences in order; a restarted writer numbers above the highest mark in any shard; the
/// families are registered for the readers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_go_round_robin_over_every_shard_under_one_sequence() {
    let url = crate::support::redis_url();
    let keys = Keys::new(unique_prefix("shards"));
    let families = watchpost_common::keys::access_families(&keys, Some(3));
    assert_eq!(families.len(), 3);
    let mut c = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must be reachable");
    let run_writer = |batches: Vec<Vec<AccessLogEntry>>| {
        let (url, keys, families) = (url.clone(), keys.clone(), families.clone());
        async move {
            let metrics = Metrics::new().expect("metrics");
            let cfg = WriterConfig {
                families,
                batch_max_entries: 5,
                ..writer_config(&url, &keys, "w")
            };
            let (sink, writer) =
                access_log::channel(1000, cfg, metrics.clone(), Arc::new(RedisStatus::default()));
            // Everything is buffered before the writer starts, so it takes exact batches of 5.
            let sent: u64 = batches.iter().map(|b| b.len() as u64).sum();
            for e in batches.into_iter().flatten() {
                assert!(sink.push(e));
            }
            let (stop, stop_rx) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(writer.run(stop_rx));
            eventually("every batch", Duration::from_secs(10), || async {
                (metrics.log_written.get() == sent).then_some(())
            })
            .await;
            let _ = stop.send(true);
            task.await.expect("writer");
        }
    };
    let batch = |k: u64| (5 * k..5 * k + 5).map(logged).collect::<Vec<_>>();
    run_writer((0..6).map(batch).collect()).await;

    let first = access_log::first_shard("w", 3);
    let hwm = |c: &mut redis::aio::MultiplexedConnection, s: usize| {
        let key = families[s].hwm();
        let mut c = c.clone();
        async move {
            redis::cmd("HGET")
                .arg(key)
                .arg("w")
                .query_async::<Option<u64>>(&mut c)
                .await
                .expect("HGET")
        }
    };
    let mut seen = Vec::new();
    for k in 0..3 {
        let s = (first + k) % 3;
        // Batches k and k + 3 (sequences k + 1 and k + 4) went to this shard.
        let ids: Vec<String> = read_stream(&url, &families[s].stream())
            .await
            .into_iter()
            .filter_map(|e| {
                e.into_iter()
                    .find(|(f, _)| f == "request_id")
                    .map(|(_, v)| v)
            })
            .collect();
        let want: Vec<String> = [k, k + 3]
            .iter()
            .flat_map(|b| (5 * b..5 * b + 5).map(|n| format!("req-{n}")))
            .collect();
        assert_eq!(ids, want, "shard {s}");
        assert_eq!(hwm(&mut c, s).await, Some(k as u64 + 4), "shard {s}");
        seen.extend(ids);
    }
    assert_eq!(seen.len(), 30);
    // Nothing under the unsharded names.
    let plain: bool = redis::cmd("EXISTS")
        .arg(keys.access_stream())
        .query_async(&mut c)
        .await
        .expect("EXISTS");
    assert!(!plain);
    // The writer's upkeep task registers the families when it starts.
    eventually("the families registered", Duration::from_secs(10), || {
        let mut c = c.clone();
        let key = keys.access_family_registry();
        async move {
            let mut registered: Vec<String> = redis::cmd("SMEMBERS")
                .arg(key)
                .query_async(&mut c)
                .await
                .expect("SMEMBERS");
            registered.sort();
            (registered == ["0", "1", "2"]).then_some(())
        }
    })
    .await;

    // A restarted writer starts again at its first shard, above every shard's mark.
    run_writer(vec![batch(6)]).await;
    assert_eq!(hwm(&mut c, first).await, Some(7));

    let all: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", keys.prefix()))
        .query_async(&mut c)
        .await
        .expect("KEYS");
    let _: () = redis::cmd("DEL")
        .arg(all)
        .query_async(&mut c)
        .await
        .expect("DEL");
}

/// After `shards` changed, a shard no longer configured is swept, trimmed by `retention`
/// (nothing appends to it any more), and unregistered once empty; the configured ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_shard_is_trimmed_by_retention_then_unregistered() {
    let url = crate::support::redis_url();
    let keys = Keys::new(unique_prefix("retired"));
    let mut c = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must be reachable");
    let script = redis::Script::new(APPEND_SCRIPT);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    // The old layout: the unsharded stream, written (and registered) before the change.
    let old = keys.access();
    let added = append_batch(&mut c, &script, &old, "w", 1, 1000, &[logged(1), logged(2)])
        .await
        .expect("append");
    assert_eq!(added, 2);
    let configured = watchpost_common::keys::access_families(&keys, Some(2));
    access_log::register_families(&mut c, &keys, std::slice::from_ref(&old))
        .await
        .expect("register");
    let members = |c: &mut redis::aio::MultiplexedConnection| {
        let mut c = c.clone();
        let key = keys.access_family_registry();
        async move {
            let mut m: Vec<String> = redis::cmd("SMEMBERS")
                .arg(key)
                .query_async(&mut c)
                .await
                .expect("SMEMBERS");
            m.sort();
            m
        }
    };
    // Within retention: kept, still registered beside the configured shards.
    access_log::sweep_families(&mut c, &keys, &configured, Some(Duration::from_secs(3600)))
        .await
        .expect("sweep");
    assert_eq!(members(&mut c).await, ["-", "0", "1"]);
    let len: u64 = redis::cmd("XLEN")
        .arg(old.stream())
        .query_async(&mut c)
        .await
        .expect("XLEN");
    assert_eq!(len, 2);
    // Past retention: a retention of 1 ms, once the entries are a few milliseconds old.
    let retention = Duration::from_millis(1);
    eventually(
        "the entries to be older than the retention",
        Duration::from_secs(5),
        || async {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_millis() as u64;
            (t > now + 5).then_some(())
        },
    )
    .await;
    access_log::sweep_families(&mut c, &keys, &configured, Some(retention))
        .await
        .expect("sweep");
    assert_eq!(members(&mut c).await, ["0", "1"]);
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}access*", keys.prefix()))
        .query_async(&mut c)
        .await
        .expect("KEYS");
    assert!(
        left.iter().all(|k| *k == keys.access_family_registry()
            || k.contains(":rollup:")
            || k.contains(":{")),
        "the retired stream, its marks and index are gone: {left:?}"
    );
    let all: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", keys.prefix()))
        .query_async(&mut c)
        .await
        .expect("KEYS");
    let _: () = redis::cmd("DEL")
        .arg(all)
        .query_async(&mut c)
        .await
        .expect("DEL");
}
