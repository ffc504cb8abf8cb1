//! Retention by age and memory, and the per-minute rollups, written by the real log writer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use watchpost_common::rollup::{self, MinuteRollup};
use watchpost_common::{AccessLogEntry, Decision, Keys};
use watchpost_proxy::access_log::{
    self, append_batch_with, AppendLimits, RedisStatus, WriterConfig, APPEND_SCRIPT,
};
use watchpost_proxy::metrics::Metrics;

use crate::support::{eventually, read_stream, redis_url, unique_prefix};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

fn config(keys: &Keys) -> WriterConfig {
    WriterConfig {
        redis: watchpost_common::RedisTarget::Node(redis_url()),
        keys: keys.clone(),
        families: Vec::new(),
        proxy_id: "r".into(),
        stream_max_len: 1_000_000,
        retention: None,
        max_memory_bytes: None,
        rollup_retention: Duration::from_secs(3600),
        buffer_bytes: 64 << 20,
        redact_query_params: Vec::new(),
        batch_max_entries: 100,
        flush_interval: Duration::ZERO,
        shutdown_flush: Duration::from_secs(5),
    }
}

async fn conn() -> redis::aio::MultiplexedConnection {
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    redis::Client::open(redis_url())
        .expect("url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("Redis must be reachable")
}

/// A varied entry: `n` picks the decision, status, country, UA type, risk, IP and path.
fn varied(ts: u64, n: u64) -> AccessLogEntry {
    const COUNTRIES: [&str; 4] = ["DE", "US", "", "FR"];
    const UAS: [&str; 3] = ["browser", "cli", "bot"];
    const DECISIONS: [Decision; 3] = [Decision::Allow, Decision::Reject, Decision::Flag];
    AccessLogEntry {
        ts,
        method: if n % 5 == 0 { "POST" } else { "GET" }.into(),
        path: format!("/p/{}", n % 13),
        status: [200, 204, 301, 404, 403, 502, 99][(n % 7) as usize],
        ip: format!("10.0.{}.{}", n % 3, n % 29),
        country: COUNTRIES[(n % 4) as usize].into(),
        ua_type: UAS[(n % 3) as usize].into(),
        risk: (n % 11) as f64 / 10.0,
        decision: DECISIONS[(n % 3) as usize],
        request_id: format!("req-{n}"),
        proxy_id: "r".into(),
        ..AccessLogEntry::default()
    }
}

/// Write `entries` through a real writer and wait until every one is written.
async fn write_all(cfg: WriterConfig, entries: Vec<AccessLogEntry>) {
    let metrics = Metrics::new().expect("metrics");
    let (sink, writer) = access_log::channel(
        entries.len().max(1),
        cfg,
        metrics.clone(),
        Arc::new(RedisStatus::default()),
    );
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(writer.run(stop_rx));
    let n = entries.len() as u64;
    for e in entries {
        assert!(sink.push(e));
    }
    eventually("every entry written", Duration::from_secs(30), || async {
        (metrics.log_written.get() == n).then_some(())
    })
    .await;
    let _ = stop.send(true);
    task.await.expect("writer");
    assert_eq!(metrics.log_dropped.get(), 0);
}

async fn read_rollup(
    c: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    m: u64,
) -> MinuteRollup {
    let counts: BTreeMap<String, u64> = redis::cmd("HGETALL")
        .arg(keys.access_rollup(m))
        .query_async(c)
        .await
        .expect("HGETALL");
    let zset = |key: String| {
        let mut c = c.clone();
        async move {
            let pairs: Vec<(String, u64)> = redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut c)
                .await
                .expect("ZRANGE");
            pairs.into_iter().collect::<BTreeMap<_, _>>()
        }
    };
    MinuteRollup {
        counts,
        ips: zset(keys.access_rollup_ips(m)).await,
        paths: zset(keys.access_rollup_paths(m)).await,
    }
}

async fn delete_prefix(c: &mut redis::aio::MultiplexedConnection, keys: &Keys) {
    let found: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", keys.prefix()))
        .query_async(c)
        .await
        .expect("KEYS");
    for k in found {
        let _: () = redis::cmd("DEL").arg(k).query_async(c).await.expect("DEL");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_equal_counts_computed_from_the_stream() {
    let keys = Keys::new(unique_prefix("rollup"));
    let mut c = conn().await;
    // Five minutes of entries, in order, some minutes busier than others.
    let base = (now_ms() / 60_000 - 10) * 60_000;
    let entries: Vec<AccessLogEntry> = (0..1500u64).map(|n| varied(base + n * n / 10, n)).collect();
    write_all(config(&keys), entries).await;

    // A batch sent twice under one sequence (a lost reply) is counted once.
    let script = redis::Script::new(APPEND_SCRIPT);
    let retried = vec![varied(base + 5, 9_001), varied(base + 6, 9_002)];
    let limits = AppendLimits {
        rollup_ttl_secs: 3600,
        ..AppendLimits::max_len(1_000_000)
    };
    for _ in 0..2 {
        append_batch_with(
            &mut c,
            &script,
            &keys.access(),
            "again",
            1,
            limits,
            &retried,
        )
        .await
        .expect("script");
    }

    let stream: Vec<AccessLogEntry> = read_stream(&redis_url(), &keys.access_stream())
        .await
        .into_iter()
        .map(|f| {
            let map: HashMap<String, String> = f.into_iter().collect();
            AccessLogEntry::from_fields(&map).expect("entry")
        })
        .collect();
    assert_eq!(stream.len(), 1502);
    let want = rollup::aggregate(&stream);
    assert!(want.len() >= 4, "{} minutes", want.len());
    for (minute, expected) in &want {
        let got = read_rollup(&mut c, &keys, *minute).await;
        assert_eq!(&got, expected, "minute {minute}");
        let ttl: i64 = redis::cmd("TTL")
            .arg(keys.access_rollup(*minute))
            .query_async(&mut c)
            .await
            .expect("TTL");
        assert!(ttl > 0 && ttl <= 3600, "ttl {ttl}");
    }
    delete_prefix(&mut c, &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_lists_stay_bounded() {
    let keys = Keys::new(unique_prefix("topk"));
    let mut c = conn().await;
    let script = redis::Script::new(APPEND_SCRIPT);
    let ts = (now_ms() / 60_000) * 60_000;
    let limits = AppendLimits {
        top_keep: 5,
        ..AppendLimits::max_len(1_000_000)
    };
    // One frequent IP, and 40 that are seen once.
    let mut batch: Vec<AccessLogEntry> = (0..40u64)
        .map(|n| AccessLogEntry {
            ts,
            ip: format!("192.0.2.{n}"),
            ..AccessLogEntry::default()
        })
        .collect();
    batch.extend((0..20).map(|_| AccessLogEntry {
        ts,
        ip: "198.51.100.1".into(),
        ..AccessLogEntry::default()
    }));
    append_batch_with(&mut c, &script, &keys.access(), "t", 1, limits, &batch)
        .await
        .expect("script");
    let got = read_rollup(&mut c, &keys, ts / 60_000).await;
    assert!(got.ips.len() <= 10, "{} members", got.ips.len());
    assert_eq!(got.ips.get("198.51.100.1"), Some(&20));
    assert_eq!(got.counts["n"], 60, "the counts stay exact");
    delete_prefix(&mut c, &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_entries_older_than_it() {
    let keys = Keys::new(unique_prefix("minid"));
    let mut c = conn().await;
    let now = now_ms();
    let old_start = now - 3 * 3600 * 1000;
    // 500 entries from three hours ago, written before the retention applied.
    for n in 0..500u64 {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(keys.access_stream())
            .arg(format!("{}-0", old_start + n));
        for (k, v) in varied(old_start + n, n).to_fields() {
            cmd.arg(k).arg(v);
        }
        let _: String = cmd.query_async(&mut c).await.expect("XADD");
    }
    let cfg = WriterConfig {
        retention: Some(Duration::from_secs(3600)),
        ..config(&keys)
    };
    write_all(cfg, (0..50).map(|n| varied(now, n)).collect()).await;
    let ids: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(keys.access_stream())
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .expect("XRANGE");
    let cutoff = now - 3600 * 1000;
    let old = ids
        .iter()
        .filter(|(id, _)| {
            id.split('-')
                .next()
                .and_then(|ms| ms.parse::<u64>().ok())
                .unwrap_or(0)
                < cutoff
        })
        .count();
    // `MINID ~` removes whole stream nodes: at most the one node shared with newer entries
    // keeps old entries (a node holds at most 100).
    assert!(old <= 100, "{old} old entries left");
    assert_eq!(ids.len() - old, 50, "every new entry kept");
    delete_prefix(&mut c, &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_memory_bounds_the_stream() {
    let keys = Keys::new(unique_prefix("mem"));
    let mut c = conn().await;
    let max = 256 * 1024;
    let cfg = WriterConfig {
        max_memory_bytes: Some(max),
        ..config(&keys)
    };
    let now = now_ms();
    write_all(cfg, (0..6000).map(|n| varied(now, n)).collect()).await;
    let len: u64 = redis::cmd("XLEN")
        .arg(keys.access_stream())
        .query_async(&mut c)
        .await
        .expect("XLEN");
    let bytes: u64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(keys.access_stream())
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut c)
        .await
        .expect("MEMORY USAGE");
    assert!(len < 6000, "trimmed by memory: {len} entries");
    // `MAXLEN ~` leaves up to a node (100 entries) above the bound.
    assert!(bytes <= max + max / 4, "{bytes} bytes for {len} entries");
    delete_prefix(&mut c, &keys).await;
}

#[test]
fn the_memory_bound_turns_into_a_length() {
    assert_eq!(access_log::memory_max_len(1000, 100_000, 200.0), 500);
    assert_eq!(access_log::memory_max_len(100, 100_000, 200.0), 100);
    assert_eq!(access_log::memory_max_len(100, 10, 200.0), 1);
    assert_eq!(access_log::memory_max_len(100, 10, 0.0), 100);
    assert_eq!(access_log::memory_max_len(100, 10, f64::NAN), 100);
}
