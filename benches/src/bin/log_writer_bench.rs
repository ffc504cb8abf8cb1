//! `watchpost-log-writer-bench`: how fast the proxy's access-log writer drains into Redis.
//!
//! It runs the proxy's own pipeline (`watchpost_proxy::access_log::channel` and
//! `LogWriter::run` on a one-thread tokio runtime, as the proxy's control runtime is), pushes
//! `--entries` realistic entries through `LogSink::push` from a plain thread (as the request
//! path does), and times from the first push until the writer's `access_log_written_total`
//! reaches the count. The buffer holds every entry, so nothing is dropped and the writer always
//! finds full batches: the figure is its drain rate, pipelines of `batch_max_entries` XADDs
//! (plus the per-minute counters) back to back on one connection.
//!
//! ```sh
//! watchpost-log-writer-bench --redis-url redis://127.0.0.1:6379 --key-prefix bench:lw: \
//!     --entries 200000
//! ```
//!
//! Prints one line of JSON: `{"entries":…,"seconds":…,"entries_per_sec":…,"dropped":…}`. It
//! writes `<prefix>access` and `<prefix>gw:req:<minute>` and deletes neither: give it a
//! scratch prefix (or a scratch Redis) and clean up afterwards.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use tokio::sync::watch;
use watchpost_common::{AccessLogEntry, Decision, Keys};
use watchpost_proxy::access_log::{self, RedisStatus, WriterConfig};
use watchpost_proxy::metrics::Metrics;

/// Drain rate of the access-log writer against a real Redis.
#[derive(Debug, Parser)]
#[command(name = "watchpost-log-writer-bench")]
struct Args {
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
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    if args.entries == 0 {
        bail!("--entries must be at least 1");
    }
    let metrics = Metrics::new().context("metrics registry")?;
    let status = Arc::new(RedisStatus::default());
    let cfg = WriterConfig {
        redis_url: args.redis_url.clone(),
        keys: Keys::new(args.key_prefix.clone()),
        stream_max_len: args.stream_max_len,
        batch_max_entries: args.batch_max_entries,
        flush_interval: Duration::from_millis(args.flush_interval_ms),
        shutdown_flush: Duration::from_secs(5),
    };
    // Room for every entry: a push never fails, so the time measured is the writer's.
    let (sink, writer) = access_log::channel(args.entries, cfg, metrics.clone(), status.clone());

    // Build the entries first: the proxy builds them on the request path, not in the writer.
    let ts0 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock before 1970")?
        .as_millis() as u64;
    let entries: Vec<AccessLogEntry> = (0..args.entries as u64).map(|n| entry(n, ts0)).collect();

    // Like the proxy's control runtime: one worker thread, the writer one task on it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-writer")
        .enable_all()
        .build()
        .context("tokio runtime")?;
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
