//! `watchpost-admin-flood-bench`: admin GET latency idle and during an anonymous sign-in flood.
//!
//! Against a running watchpost-admin it measures, for `--seconds` each:
//!
//! 1. **idle**: admin GETs (`--get-path`, with `--admin-key`) at a fixed `--get-rate`;
//! 2. **flood**: the same GETs while `--flood-clients` clients post wrong passwords for
//!    unknown accounts to `POST /api/auth/sessions` back to back, each on its own connection.
//!
//! GETs are sent on a fixed schedule, each in its own task, and timed from the moment it was
//! due, so a stalled server cannot hide its tail by slowing the sender (no coordinated
//! omission). Prints one line of JSON: p50/p99/max of both phases, the p99 ratio, and the
//! flood's answers by status.
//!
//! ```sh
//! watchpost-admin-flood-bench --base-url http://127.0.0.1:18710 --admin-key wpk_… \
//!     --seconds 20 --flood-clients 48
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

/// Admin GET latency idle and during a sign-in flood.
#[derive(Debug, Parser)]
#[command(name = "watchpost-admin-flood-bench")]
struct Args {
    /// The admin API, e.g. `http://127.0.0.1:18710`.
    #[arg(long)]
    base_url: String,
    /// A platform admin's API key.
    #[arg(long)]
    admin_key: String,
    /// The measured admin GET.
    #[arg(long, default_value = "/api/admin/users?limit=20")]
    get_path: String,
    /// Admin GETs per second in both phases.
    #[arg(long, default_value_t = 20)]
    get_rate: u32,
    /// Seconds of each phase.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Concurrent flooding clients.
    #[arg(long, default_value_t = 48)]
    flood_clients: usize,
}

#[derive(Debug, Clone, Copy)]
struct Summary {
    count: usize,
    errors: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Summary {
    fn json(&self) -> String {
        format!(
            r#"{{"gets":{},"errors":{},"p50_ms":{:.2},"p99_ms":{:.2},"max_ms":{:.2}}}"#,
            self.count, self.errors, self.p50_ms, self.p99_ms, self.max_ms
        )
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Admin GETs at the fixed rate for the given time.
async fn measure_gets(client: &reqwest::Client, args: &Args) -> anyhow::Result<Summary> {
    let url = format!("{}{}", args.base_url, args.get_path);
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.get_rate.max(1)));
    let total = args.seconds * u64::from(args.get_rate);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let (client, url, key) = (client.clone(), url.clone(), args.admin_key.clone());
        tasks.push(tokio::spawn(async move {
            let ok = match client.get(url).bearer_auth(key).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            (due.elapsed().as_secs_f64() * 1000.0, ok)
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut errors = 0;
    for t in tasks {
        let (ms, ok) = t.await.context("GET task")?;
        latencies.push(ms);
        errors += usize::from(!ok);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(Summary {
        count: latencies.len(),
        errors,
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        max_ms: latencies.last().copied().unwrap_or_default(),
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let probe = client
        .get(format!("{}{}", args.base_url, args.get_path))
        .bearer_auth(&args.admin_key)
        .send()
        .await
        .context("admin API unreachable")?;
    if !probe.status().is_success() {
        bail!("GET {} answered {}", args.get_path, probe.status());
    }

    let idle = measure_gets(&client, &args).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let statuses: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut flooders = Vec::new();
    for n in 0..args.flood_clients {
        let (stop, statuses) = (stop.clone(), statuses.clone());
        let url = format!("{}/api/auth/sessions", args.base_url);
        // One client (connection pool) per flooder: 48 connections, as 48 attackers would.
        let flooder = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        flooders.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let body = format!(
                    r#"{{"email":"flood-{n}-{i}@example.com","password":"not the password"}}"#
                );
                let status = match flooder
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) => {
                        let s = r.status().as_u16().to_string();
                        let _ = r.bytes().await;
                        s
                    }
                    Err(_) => "error".to_string(),
                };
                if let Ok(mut map) = statuses.lock() {
                    *map.entry(status).or_default() += 1;
                }
            }
        }));
    }
    let flood_started = Instant::now();
    let flood = measure_gets(&client, &args).await?;
    let flood_secs = flood_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        let _ = f.await;
    }
    let statuses = statuses.lock().map(|m| m.clone()).unwrap_or_default();
    let sign_ins: u64 = statuses.values().sum();
    let statuses_json = statuses
        .iter()
        .map(|(k, v)| format!(r#""{k}":{v}"#))
        .collect::<Vec<_>>()
        .join(",");
    let ratio = if idle.p99_ms > 0.0 {
        flood.p99_ms / idle.p99_ms
    } else {
        0.0
    };
    println!(
        r#"{{"idle":{},"flood":{},"p99_ratio":{:.2},"flood_clients":{},"sign_ins_per_sec":{:.0},"sign_in_statuses":{{{}}}}}"#,
        idle.json(),
        flood.json(),
        ratio,
        args.flood_clients,
        sign_ins as f64 / flood_secs,
        statuses_json
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("watchpost-admin-flood-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("watchpost-admin-flood-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
