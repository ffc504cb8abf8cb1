//! `watchpost-log-writer-bench`: the proxy's access-log writer against a real Redis, in three
//! modes.
//!
//! `--mode writer` (the default): how fast the writer drains. It runs the proxy's own pipeline
//! (`watchpost_proxy::access_log::channel` and `LogWriter::run` on a one-thread tokio runtime,
//! as the proxy's control runtime is), pushes `--entries` realistic entries through
//! `LogSink::push` from a plain thread (as the request path does), and times from the first
//! push until the writer's `access_log_written_total` reaches the count. The buffer holds every
//! entry, so nothing is dropped and the writer always finds full batches: the figure is its
//! drain rate, exactly-once script calls of `batch_max_entries` entries back to back on one
//! connection. Prints `{"entries":…,"seconds":…,"entries_per_sec":…,"dropped":…}`.
//!
//! `--mode raw`: what the exactly-once script costs. The same batches are sent back to back on
//! one connection, in turn as the plain pipeline the writer used before (`XADD` per entry
//! plus the minute counters), as the script without the per-minute rollups, and as the
//! script with them (as the proxy sends it); `--rounds` of each. Prints one JSON line per
//! round and method, with the Redis server's CPU per entry (`INFO cpu` before and after: run
//! it against a Redis of its own for that figure to mean anything).
//!
//! `--mode outage`: nothing lost, nothing twice, the buffer within its bound. The bench starts
//! its own `redis-server` on `--redis-port` (append-only file, `appendfsync always`, so what
//! Redis applied survives a kill), pushes entries at `--rate` per second through the proxy's
//! writer, kills Redis with SIGKILL for `--outage-secs` (replies in flight are lost), restarts
//! it on the same data, keeps pushing for `--after-secs`, waits until every entry is written or
//! counted as dropped, and then reads the whole stream back and counts each request id. Prints
//! `{"outage_secs":…,"pushed":…,"in_stream":…,"duplicated":…,"dropped":…,"missing":…,
//! "max_buffer_entries":…,"max_buffer_bytes":…,…}`.
//!
//! ```sh
//! watchpost-log-writer-bench --redis-url redis://127.0.0.1:6379 --key-prefix bench:lw: \
//!     --entries 200000
//! watchpost-log-writer-bench --mode raw --key-prefix bench:raw: --entries 100000 --rounds 3
//! watchpost-log-writer-bench --mode outage --redis-port 6399 --rate 5000 --outage-secs 2
//! ```
//!
//! `writer` and `raw` write `<prefix>access`, `<prefix>access:hwm` and
//! `<prefix>gw:req:<minute>` and delete none of them: give them a scratch prefix (or a scratch
//! Redis) and clean up afterwards. `outage` uses only its own Redis and removes its data
//! directory at the end.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use tokio::sync::watch;
use watchpost_common::keys::MINUTE_COUNTER_TTL_SECS;
use watchpost_common::{AccessLogEntry, Decision, Keys};
use watchpost_proxy::access_log::{
    self, append_batch_with, AppendLimits, RedisStatus, WriterConfig, APPEND_SCRIPT,
};
use watchpost_proxy::metrics::Metrics;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Drain rate of the proxy's writer.
    Writer,
    /// Plain pipeline against the exactly-once script, same batches.
    Raw,
    /// Entries written, duplicated and dropped across a Redis outage.
    Outage,
}

/// The proxy's access-log writer against a real Redis.
#[derive(Debug, Parser)]
#[command(name = "watchpost-log-writer-bench")]
struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Writer)]
    mode: Mode,
    /// Redis to write to.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Key prefix (`[redis] key_prefix`); the stream is `<prefix>access`.
    #[arg(long, default_value = "bench:log-writer:")]
    key_prefix: String,
    /// Entries to write.
    #[arg(long, default_value_t = 200_000)]
    entries: usize,
    /// `[access_log] batch_max_entries`.
    #[arg(long, default_value_t = 512)]
    batch_max_entries: usize,
    /// `[access_log] stream_max_len`.
    #[arg(long, default_value_t = 1_000_000)]
    stream_max_len: u64,
    /// `[access_log] flush_interval_ms`.
    #[arg(long, default_value_t = 2)]
    flush_interval_ms: u64,
    /// Give up when the writer has not written every entry after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// `raw`: rounds of each method.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// `outage`: port of the bench's own redis-server.
    #[arg(long, default_value_t = 6399)]
    redis_port: u16,
    /// `outage`: entries pushed per second.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// `outage`: seconds of traffic before Redis is killed.
    #[arg(long, default_value_t = 2)]
    before_secs: u64,
    /// `outage`: seconds Redis stays down.
    #[arg(long, default_value_t = 2)]
    outage_secs: u64,
    /// `outage`: seconds of traffic after Redis is back.
    #[arg(long, default_value_t = 3)]
    after_secs: u64,
    /// `outage`: `[access_log] buffer_entries`.
    #[arg(long, default_value_t = 100_000)]
    buffer_entries: usize,
    /// `outage`: `[access_log] buffer_bytes`.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    buffer_bytes: usize,
}

const COUNTRIES: [&str; 8] = ["US", "DE", "FR", "GB", "JP", "BR", "IN", "NL"];
const PATHS: [&str; 6] = [
    "/",
    "/products",
    "/products/",
    "/api/cart",
    "/static/app.js",
    "/search",
];
const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                  Chrome/124.0 Safari/537.36";
/// First octets of public IPv4 space (no private, loopback, shared or reserved block).
const FIRST_OCTETS: [u8; 12] = [23, 31, 45, 62, 77, 81, 91, 104, 142, 151, 185, 212];
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A ULID-shaped id (26 Crockford base-32 characters) from a time and a counter.
fn request_id(ts_ms: u64, n: u64) -> String {
    // 48 bits of time, then 80 bits mixed from the counter (a multiplicative hash).
    let low = (u128::from(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) << 16) | u128::from(n as u16);
    let v = (u128::from(ts_ms) << 80) | (low & ((1u128 << 80) - 1));
    (0..26)
        .map(|i| char::from(CROCKFORD[((v >> (125 - 5 * i)) & 31) as usize]))
        .collect()
}

/// What the proxy would log for the `n`-th request of a browser-heavy mix.
fn entry(n: u64, ts0: u64) -> AccessLogEntry {
    let ts = ts0 + n / 50;
    let path = PATHS[(n % PATHS.len() as u64) as usize];
    let path = if path.ends_with('/') && path.len() > 1 {
        format!("{path}{}", n % 997)
    } else {
        path.to_string()
    };
    let query = if n % 3 == 0 {
        format!("page={}&sort=price", n % 20)
    } else {
        String::new()
    };
    let (status, bytes_out) = if n % 50 == 0 {
        (404, 180)
    } else {
        (200, 1_200 + n % 4_000)
    };
    AccessLogEntry {
        ts,
        method: if n % 10 == 0 { "POST" } else { "GET" }.into(),
        host: "shop.example.com".into(),
        path,
        query,
        status,
        // Public-looking IPv4 clients spread over many /16s.
        ip: format!(
            "{}.{}.{}.{}",
            FIRST_OCTETS[(n % FIRST_OCTETS.len() as u64) as usize],
            (n / 7) % 256,
            (n / 13) % 256,
            1 + n % 254
        ),
        ip_source: "x-forwarded-for".into(),
        peer: "10.0.0.2".into(),
        country: COUNTRIES[(n % COUNTRIES.len() as u64) as usize].into(),
        risk: if n % 25 == 0 { 0.28 } else { 0.0 },
        reasons: if n % 25 == 0 {
            vec!["rate".into()]
        } else {
            Vec::new()
        },
        ua: UA.into(),
        ua_type: "browser".into(),
        decision: Decision::Allow,
        latency_us: 300 + n % 5_000,
        bytes_out,
        upstream: "10.0.1.5:3000".into(),
        request_id: request_id(ts, n),
        proxy_id: "proxy-1".into(),
        rule: String::new(),
        proto: "http/1.1".into(),
    }
}

/// The writer's settings for a run.
fn writer_config(args: &Args, redis_url: &str, buffer_bytes: usize) -> WriterConfig {
    WriterConfig {
        redis: watchpost_common::RedisTarget::Node(redis_url.to_string()),
        keys: Keys::new(args.key_prefix.clone()),
        families: Vec::new(),
        proxy_id: "bench".into(),
        stream_max_len: args.stream_max_len,
        retention: None,
        max_memory_bytes: None,
        rollup_retention: watchpost_common::rollup::DEFAULT_ROLLUP_RETENTION,
        buffer_bytes,
        redact_query_params: Vec::new(),
        batch_max_entries: args.batch_max_entries,
        flush_interval: Duration::from_millis(args.flush_interval_ms),
        shutdown_flush: Duration::from_secs(5),
    }
}

/// Like the proxy's control runtime: one worker thread, the writer one task on it.
fn writer_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-writer")
        .enable_all()
        .build()
        .context("tokio runtime")
}

fn now_ms() -> anyhow::Result<u64> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock before 1970")?
        .as_millis() as u64)
}

fn run(args: &Args) -> anyhow::Result<()> {
    match args.mode {
        Mode::Writer => run_writer(args),
        Mode::Raw => run_raw(args),
        Mode::Outage => run_outage(args),
    }
}

fn run_writer(args: &Args) -> anyhow::Result<()> {
    if args.entries == 0 {
        bail!("--entries must be at least 1");
    }
    let metrics = Metrics::new().context("metrics registry")?;
    let status = Arc::new(RedisStatus::default());
    let cfg = writer_config(args, &args.redis_url, args.entries * 4096);
    // Room for every entry: a push never fails, so the time measured is the writer's.
    let (sink, writer) = access_log::channel(args.entries, cfg, metrics.clone(), status.clone());

    // Build the entries first: the proxy builds them on the request path, not in the writer.
    let ts0 = now_ms()?;
    let entries: Vec<AccessLogEntry> = (0..args.entries as u64).map(|n| entry(n, ts0)).collect();

    let rt = writer_runtime()?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let writer_task = rt.spawn(writer.run(shutdown_rx));

    // Connect before timing: one warm-up entry, written and acknowledged.
    if !sink.push(entry(args.entries as u64, ts0)) {
        bail!("the buffer refused the warm-up entry");
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    while metrics.log_written.get() < 1 {
        if Instant::now() > deadline || metrics.log_dropped.get() > 0 {
            bail!(
                "the writer could not write to {} (dropped {})",
                args.redis_url,
                metrics.log_dropped.get()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }

    let target = args.entries as u64 + 1;
    let start = Instant::now();
    for e in entries {
        if !sink.push(e) {
            bail!("the buffer was full: it should hold every entry");
        }
    }
    while metrics.log_written.get() < target {
        if metrics.log_written.get() + metrics.log_dropped.get() >= target {
            bail!(
                "the writer dropped {} entries (Redis refused or failed a batch)",
                metrics.log_dropped.get()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "timed out: {} of {} entries written",
                metrics.log_written.get() - 1,
                args.entries
            );
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let seconds = start.elapsed().as_secs_f64();

    let _ = shutdown_tx.send(true);
    rt.block_on(writer_task).context("writer task")?;
    println!(
        "{{\"entries\":{},\"seconds\":{:.4},\"entries_per_sec\":{:.0},\"batch_max_entries\":{},\"dropped\":{}}}",
        args.entries,
        seconds,
        args.entries as f64 / seconds,
        args.batch_max_entries,
        metrics.log_dropped.get()
    );
    Ok(())
}

/// The pipeline the writer sent before batches became exactly-once: an `XADD` per entry, then
/// `INCRBY` + `EXPIRE` of the per-minute counters. Kept here only as the baseline of `raw`.
fn plain_pipeline(keys: &Keys, max_len: u64, batch: &[AccessLogEntry]) -> redis::Pipeline {
    let stream = keys.access_stream();
    let mut pipe = redis::pipe();
    let mut minutes: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut scratch = String::new();
    for entry in batch {
        let cmd = pipe
            .cmd("XADD")
            .arg(&stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(max_len)
            .arg("*");
        entry.write_fields(&mut scratch, |field, value| {
            cmd.arg(field).arg(value);
        });
        cmd.ignore();
        let counts = minutes.entry(entry.ts / 60_000).or_default();
        counts.0 += 1;
        if entry.decision == Decision::Reject {
            counts.1 += 1;
        }
    }
    for (minute, (requests, rejects)) in minutes {
        for (key, n) in [
            (keys.requests_in_minute(minute), requests),
            (keys.rejects_in_minute(minute), rejects),
        ] {
            if n > 0 {
                pipe.cmd("INCRBY").arg(&key).arg(n).ignore();
                pipe.cmd("EXPIRE")
                    .arg(&key)
                    .arg(MINUTE_COUNTER_TTL_SECS)
                    .ignore();
            }
        }
    }
    pipe
}

fn run_raw(args: &Args) -> anyhow::Result<()> {
    if args.entries == 0 || args.rounds == 0 {
        bail!("--entries and --rounds must be at least 1");
    }
    let ts0 = now_ms()?;
    let entries: Vec<AccessLogEntry> = (0..args.entries as u64).map(|n| entry(n, ts0)).collect();
    let batches: Vec<&[AccessLogEntry]> = entries.chunks(args.batch_max_entries.max(1)).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async {
        let client = redis::Client::open(args.redis_url.as_str()).context("redis url")?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .context("connect to Redis")?;
        let script = redis::Script::new(APPEND_SCRIPT);
        for round in 1..=args.rounds {
            for method in ["pipeline", "script-no-rollups", "script"] {
                let keys = Keys::new(format!("{}{method}:{round}:", args.key_prefix));
                let cpu_before = redis_cpu_secs(&mut conn).await?;
                let start = Instant::now();
                for (i, batch) in batches.iter().enumerate() {
                    if method == "pipeline" {
                        plain_pipeline(&keys, args.stream_max_len, batch)
                            .query_async::<()>(&mut conn)
                            .await
                            .context("pipeline")?;
                    } else {
                        let limits = AppendLimits {
                            rollups: method == "script",
                            ..AppendLimits::max_len(args.stream_max_len)
                        };
                        let added = append_batch_with(
                            &mut conn,
                            &script,
                            &keys.access(),
                            "bench",
                            i as u64 + 1,
                            limits,
                            batch,
                        )
                        .await
                        .context("script")?;
                        if added != batch.len() as u64 {
                            bail!("the script added {added} of {} entries", batch.len());
                        }
                    }
                }
                let seconds = start.elapsed().as_secs_f64();
                let cpu_us_per_entry =
                    (redis_cpu_secs(&mut conn).await? - cpu_before) * 1e6 / args.entries as f64;
                let len: u64 = redis::cmd("XLEN")
                    .arg(keys.access_stream())
                    .query_async(&mut conn)
                    .await
                    .context("XLEN")?;
                if len != args.entries as u64 {
                    bail!("{method} left {len} entries, expected {}", args.entries);
                }
                let mut del = redis::cmd("DEL");
                del.arg(keys.access_stream()).arg(keys.access_hwm());
                for m in (ts0 / 60_000)..=((ts0 + args.entries as u64) / 60_000 + 1) {
                    del.arg(keys.requests_in_minute(m))
                        .arg(keys.rejects_in_minute(m))
                        .arg(keys.access_rollup(m))
                        .arg(keys.access_rollup_ips(m))
                        .arg(keys.access_rollup_paths(m));
                }
                del.query_async::<()>(&mut conn).await.context("DEL")?;
                println!(
                    "{{\"mode\":\"raw\",\"method\":\"{method}\",\"round\":{round},\"entries\":{},\"seconds\":{seconds:.4},\"entries_per_sec\":{:.0},\"redis_cpu_us_per_entry\":{cpu_us_per_entry:.2},\"batch_max_entries\":{}}}",
                    args.entries,
                    args.entries as f64 / seconds,
                    args.batch_max_entries
                );
            }
        }
        Ok(())
    })
}

/// CPU seconds the Redis server has used (`INFO cpu`: `used_cpu_user + used_cpu_sys`); on a
/// Redis of its own the difference over a run is that run's server-side cost.
async fn redis_cpu_secs(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(conn)
        .await
        .context("INFO cpu")?;
    let mut total = 0.0;
    for line in info.lines() {
        if let Some((k, v)) = line.trim().split_once(':') {
            if k == "used_cpu_user" || k == "used_cpu_sys" {
                total += v.parse::<f64>().context("INFO cpu value")?;
            }
        }
    }
    Ok(total)
}

/// The bench's own redis-server, with an append-only file fsynced before every reply.
struct OwnRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnRedis {
    fn start(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start redis-server (is it installed?)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = redis::Client::open(self.url().as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ok.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("redis-server on port {} did not answer", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_outage(args: &Args) -> anyhow::Result<()> {
    if args.rate == 0 {
        bail!("--rate must be at least 1");
    }
    let dir = std::env::temp_dir().join(format!("wp-log-outage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("data directory")?;
    let mut redis = OwnRedis {
        port: args.redis_port,
        dir,
        child: None,
    };
    redis.start()?;
    let url = redis.url();

    let metrics = Metrics::new().context("metrics registry")?;
    let status = Arc::new(RedisStatus::default());
    let (sink, writer) = access_log::channel(
        args.buffer_entries,
        writer_config(args, &url, args.buffer_bytes),
        metrics.clone(),
        status,
    );
    let rt = writer_runtime()?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let writer_task = rt.spawn(writer.run(shutdown_rx));

    // The producer pushes at a steady rate, as requests would arrive, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let ts0 = now_ms()?;
    let producer = {
        let (sink, stop, rate) = (sink.clone(), stop.clone(), args.rate);
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut pushed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                while pushed < due {
                    sink.push(entry(pushed, ts0));
                    pushed += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            pushed
        })
    };
    // A sampler keeps the largest buffer seen.
    let sampler = {
        let (sink, stop) = (sink.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut entries, mut bytes) = (0usize, 0usize);
            while !stop.load(Ordering::Relaxed) {
                entries = entries.max(sink.depth());
                bytes = bytes.max(sink.bytes());
                std::thread::sleep(Duration::from_millis(5));
            }
            (entries, bytes)
        })
    };

    std::thread::sleep(Duration::from_secs(args.before_secs));
    redis.kill();
    std::thread::sleep(Duration::from_secs(args.outage_secs));
    redis.start()?;
    let restarted = Instant::now();
    std::thread::sleep(Duration::from_secs(args.after_secs));
    stop.store(true, Ordering::Relaxed);
    let pushed = producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))?;
    let (max_entries, max_bytes) = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    while metrics.log_written.get() + metrics.log_dropped.get() < pushed {
        if Instant::now() > deadline {
            bail!(
                "timed out: {} written, {} dropped of {pushed}",
                metrics.log_written.get(),
                metrics.log_dropped.get()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let drained_secs = restarted.elapsed().as_secs_f64();
    let _ = shutdown_tx.send(true);
    rt.block_on(writer_task).context("writer task")?;

    // Every request id in the stream, counted.
    let mut conn = redis::Client::open(url.as_str())
        .context("redis url")?
        .get_connection()
        .context("connect to Redis")?;
    let stream = Keys::new(args.key_prefix.clone()).access_stream();
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut from = "-".to_string();
    loop {
        let page: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(&stream)
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(10_000)
            .query(&mut conn)
            .context("XRANGE")?;
        let Some((last, _)) = page.last() else { break };
        from = format!("({last}");
        for (_, flat) in &page {
            if let Some(id) = flat
                .chunks(2)
                .find(|kv| kv[0] == "request_id")
                .and_then(|kv| kv.get(1))
            {
                *counts.entry(id.clone()).or_insert(0) += 1;
            }
        }
    }
    let in_stream = counts.len() as u64;
    let duplicated: u64 = counts.values().map(|n| n - 1).sum();
    let dropped = metrics.log_dropped.get();
    println!(
        "{{\"mode\":\"outage\",\"rate\":{},\"before_secs\":{},\"outage_secs\":{},\"after_secs\":{},\"pushed\":{pushed},\"written\":{},\"in_stream\":{in_stream},\"duplicated\":{duplicated},\"dropped\":{dropped},\"missing\":{},\"max_buffer_entries\":{max_entries},\"buffer_entries\":{},\"max_buffer_bytes\":{max_bytes},\"buffer_bytes\":{},\"drained_secs_after_restart\":{drained_secs:.2}}}",
        args.rate,
        args.before_secs,
        args.outage_secs,
        args.after_secs,
        metrics.log_written.get(),
        pushed.saturating_sub(in_stream + dropped),
        args.buffer_entries,
        args.buffer_bytes,
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("watchpost-log-writer-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_ulid_shaped_and_distinct() {
        let a = request_id(1_700_000_000_000, 1);
        let b = request_id(1_700_000_000_000, 2);
        assert_eq!(a.len(), 26);
        assert!(a.bytes().all(|c| CROCKFORD.contains(&c)), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn entries_vary_and_clients_are_public_ipv4() {
        let a = entry(1, 0);
        let b = entry(2, 0);
        assert_ne!(a.ip, b.ip);
        assert_ne!(a.path, b.path);
        assert_ne!(a.request_id, b.request_id);
        for n in 0..1_000 {
            let ip: std::net::Ipv4Addr = entry(n, 0).ip.parse().expect("an IPv4 address");
            assert!(
                !ip.is_private() && !ip.is_loopback() && !ip.is_unspecified(),
                "{ip}"
            );
        }
        assert_eq!(entry(0, 0).reasons, vec!["rate".to_string()]);
        assert_eq!(entry(0, 0).query, "page=0&sort=price");
    }
}
