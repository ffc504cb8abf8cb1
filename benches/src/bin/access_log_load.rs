//! `watchpost-access-log-load`: fills an access-log stream through the proxy's own append
//! script (`watchpost_proxy::access_log::append_batch_with`, index and rollups included; the
//! rollups left out with `--no-rollups`), or through the same script with no postings
//! (`--no-index`, the stream alone), in batches of `--batch` (512, the writer's
//! `batch_max_entries`, which it fills at max load), and reports what Redis
//! spent: `{"entries":…,"seconds":…,"script_usec_per_entry":…,"redis_cpu_usec_per_entry":…,
//! "used_memory_delta":…}`. `script_usec_per_entry` is `INFO commandstats` time inside
//! `EVALSHA`/`EVAL`; `redis_cpu_usec_per_entry` is the server's `used_cpu_user + used_cpu_sys`
//! (parsing and networking included); both over the whole run, so give it a Redis of its own.
//!
//! `--shards N` writes the batches round-robin over N access-log shards (as the proxy's writer
//! does with `[access_log] shards`) and registers them, so an admin reads them all.
//!
//! `--cluster-nodes redis://…,redis://…` writes to a Redis Cluster instead (the access-log
//! family under its hash tag, through the binaries' cluster connection) and reports the CPU of
//! every listed master: `"redis_cpu_usec_per_entry_by_node":[…]` (list them all).
//!
//! `--mode xrevrange`: times `XREVRANGE <stream> + - COUNT 50` `--requests` times on one
//! connection and prints `{"p50_ms":…,"p99_ms":…}`: the raw floor the API figures are put
//! beside.
//!
//! Entry `i`: IP `198.51.100.10` in 1 of 10 entries, `198.51.100.77` in 1 of 10,000, the rest
//! among ~100,000 addresses; seven countries; 1 % rejected bots at risk 0.95 (status 403),
//! 5 % 404; a ULID request id each.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use watchpost_common::keys::{access_families, AccessKeys, MINUTE_COUNTER_TTL_SECS};
use watchpost_common::{AccessLogEntry, ConnOptions, Decision, RedisTarget, ACCESS_LOG_FIELDS};
use watchpost_proxy::access_log::{
    append_batch_with, register_families, AppendLimits, APPEND_SCRIPT,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Load,
    Xrevrange,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum, default_value_t = Mode::Load)]
    mode: Mode,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[arg(long)]
    key_prefix: String,
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// The stream alone: the same script, no postings (and no rollups).
    #[arg(long)]
    no_index: bool,
    /// The index without the per-minute rollups the writer also adds (to measure each apart).
    #[arg(long)]
    no_rollups: bool,
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Access-log shards (`[access_log] shards`): batches go round-robin over the shards'
    /// families, as a proxy's writer sends them, and the families are registered. Unset: the
    /// binaries' default (1 on a node, 16 on a cluster).
    #[arg(long)]
    shards: Option<u16>,
    /// A Redis Cluster's masters, comma-separated (wins over `--redis-url`).
    #[arg(long, value_delimiter = ',')]
    cluster_nodes: Vec<String>,
}

fn entry(i: u64, base_ms: u64) -> AccessLogEntry {
    let rare = i % 100 == 0;
    let h = (i * 7919) % 100_000;
    let ip = if i % 10 == 3 {
        "198.51.100.10".to_string()
    } else if i % 10_000 == 4321 {
        "198.51.100.77".to_string()
    } else {
        format!("10.{}.{}.{}", h / 65536, (h / 256) % 256, h % 256)
    };
    AccessLogEntry {
        ts: base_ms + i / 20,
        method: if i % 5 == 0 { "POST" } else { "GET" }.into(),
        host: "app.example".into(),
        path: format!("/api/items/{}", i % 500),
        query: String::new(),
        status: if rare {
            403
        } else if i % 20 == 0 {
            404
        } else {
            200
        },
        ip: ip.clone(),
        ip_source: "peer".into(),
        peer: ip,
        country: ["DE", "US", "FR", "JP", "BR", "IN", "GB"][(i % 7) as usize].into(),
        risk: if rare { 0.95 } else { (i % 37) as f64 / 100.0 },
        reasons: if rare {
            vec!["ua_bot".into(), "rate".into()]
        } else {
            vec![]
        },
        ua: if rare {
            "Mozilla/5.0 (compatible; Googlebot/2.1)"
        } else {
            "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0"
        }
        .into(),
        ua_type: if rare { "bot" } else { "browser" }.into(),
        decision: if rare {
            Decision::Reject
        } else {
            Decision::Allow
        },
        latency_us: 200 + i % 900,
        bytes_out: if rare { 90 } else { 1500 + i % 300 },
        upstream: if rare {
            String::new()
        } else {
            "127.0.0.1:3000".into()
        },
        request_id: ulid::Ulid::new().to_string(),
        proxy_id: "bench".into(),
        rule: String::new(),
        proto: "http/1.1".into(),
    }
}

/// The append script's call with no index references (the stream and counters alone).
fn plain_invocation<'a>(
    script: &'a redis::Script,
    keys: &AccessKeys,
    seq: u64,
    batch: &[AccessLogEntry],
) -> redis::ScriptInvocation<'a> {
    let mut minutes: BTreeMap<u64, u64> = BTreeMap::new();
    for e in batch {
        *minutes.entry(e.ts / 60_000).or_default() += 1;
    }
    let mut inv = script.prepare_invoke();
    inv.key(keys.stream()).key(keys.hwm());
    for m in minutes.keys() {
        inv.key(keys.requests_in_minute(*m));
    }
    inv.key(keys.postings_registry());
    inv.arg("bench")
        .arg(seq)
        .arg(10_000_000u64)
        .arg(MINUTE_COUNTER_TTL_SECS)
        .arg(ACCESS_LOG_FIELDS.len());
    for f in ACCESS_LOG_FIELDS {
        inv.arg(f);
    }
    for n in minutes.values() {
        inv.arg(*n);
    }
    let mut scratch = String::new();
    for e in batch {
        e.write_fields(&mut scratch, |_, v| {
            inv.arg(v);
        });
    }
    // No postings (none, an empty block); the retention and rollup trailer with no rollups and
    // no MINID: the stream (and its per-minute counters) alone.
    inv.arg(0).arg(0);
    inv.arg(0).arg(1).arg(1).arg(0).arg(4);
    inv
}

fn info_field(info: &str, name: &str) -> f64 {
    info.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn script_usec(info: &str) -> f64 {
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| l.split(',').find_map(|p| p.strip_prefix("usec=")))
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}

async fn info(con: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<String> {
    Ok(redis::cmd("INFO")
        .arg("everything")
        .query_async(con)
        .await?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let target = RedisTarget::from_config(&args.redis_url, &args.cluster_nodes);
    let keys = target.keys(args.key_prefix.clone());
    let mut con = target
        .connect(ConnOptions {
            connect_timeout: std::time::Duration::from_secs(2),
            response_timeout: std::time::Duration::from_secs(10),
            retries: 3,
            max_delay: std::time::Duration::from_secs(1),
        })
        .await
        .context("Redis must be reachable")?;
    // `INFO` of every node, each on its own connection.
    let mut nodes = Vec::new();
    for url in target.pubsub_urls() {
        nodes.push(
            redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection()
                .await
                .with_context(|| format!("{url} must be reachable"))?,
        );
    }
    match args.mode {
        Mode::Xrevrange => {
            let mut times = Vec::with_capacity(args.requests);
            for _ in 0..args.requests {
                let t = Instant::now();
                let _: redis::Value = redis::cmd("XREVRANGE")
                    .arg(keys.access_stream())
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(50)
                    .query_async(&mut con)
                    .await?;
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            times.sort_by(f64::total_cmp);
            let at = |p: usize| times[((times.len() * p).div_ceil(100)).max(1) - 1];
            println!("{{\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}", at(50), at(99));
        }
        Mode::Load => {
            let script = redis::Script::new(APPEND_SCRIPT);
            let families = access_families(&keys, args.shards);
            register_families(&mut con, &keys, &families).await?;
            let mut before = Vec::new();
            for n in &mut nodes {
                before.push(info(n).await?);
            }
            let base_ms = 1_764_547_200_000;
            let start = Instant::now();
            let mut batch = Vec::with_capacity(args.batch);
            let mut seq = 0;
            let mut i = 0;
            while i < args.entries {
                batch.clear();
                while batch.len() < args.batch && i < args.entries {
                    batch.push(entry(i, base_ms));
                    i += 1;
                }
                seq += 1;
                // Round-robin over the shards, one batch each, as the writer does.
                let family = &families[(seq as usize - 1) % families.len()];
                let n: u64 = if args.no_index {
                    plain_invocation(&script, family, seq, &batch)
                        .invoke_async(&mut con)
                        .await?
                } else {
                    let limits = AppendLimits {
                        rollups: !args.no_rollups,
                        ..AppendLimits::max_len(10_000_000)
                    };
                    append_batch_with(&mut con, &script, family, "bench", seq, limits, &batch)
                        .await?
                };
                anyhow::ensure!(n as usize == batch.len(), "batch {seq} added {n}");
            }
            let seconds = start.elapsed().as_secs_f64();
            let mut after = Vec::new();
            for n in &mut nodes {
                after.push(info(n).await?);
            }
            let cpu = |s: &str| info_field(s, "used_cpu_user") + info_field(s, "used_cpu_sys");
            let n = args.entries as f64;
            let by_node: Vec<f64> = before
                .iter()
                .zip(&after)
                .map(|(b, a)| (cpu(a) - cpu(b)) * 1e6 / n)
                .collect();
            let sum = |f: &dyn Fn(&str) -> f64| {
                before
                    .iter()
                    .zip(&after)
                    .map(|(b, a)| f(a) - f(b))
                    .sum::<f64>()
            };
            println!(
                "{{\"entries\":{},\"index\":{},\"rollups\":{},\"cluster\":{},\"shards\":{},\"seconds\":{:.2},\"script_usec_per_entry\":{:.2},\"redis_cpu_usec_per_entry\":{:.2},\"redis_cpu_usec_per_entry_by_node\":[{}],\"used_memory_delta\":{}}}",
                args.entries,
                !args.no_index,
                !args.no_index && !args.no_rollups,
                target.is_cluster(),
                families.len(),
                seconds,
                sum(&script_usec) / n,
                by_node.iter().sum::<f64>(),
                by_node
                    .iter()
                    .map(|c| format!("{c:.2}"))
                    .collect::<Vec<_>>()
                    .join(","),
                sum(&|s: &str| info_field(s, "used_memory")),
            );
        }
    }
    Ok(())
}
