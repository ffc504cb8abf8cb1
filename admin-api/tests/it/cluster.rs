//! Redis Cluster: a fleet of three proxies and two admin API instances on one 3-master cluster
//! (started by `deploy/redis-cluster.sh` on free loopback ports, stopped when the test ends)
//! and one PostgreSQL database. The gateway config reaches every proxy, admin rate limits are
//! shared, the SSE tail of either admin shows traffic through any proxy, paginated queries find
//! every request exactly once, and a master killed mid-load loses nothing the proxies took.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::oneshot;
use watchpost_admin::state::AppState;
use watchpost_proxy::{RunningProxy, Settings, StopOn};

use crate::common::{json_of, TestAdmin, TestApp};
use crate::end_to_end::{eventually, free_port, proxy_config_version, start_origin};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/redis-cluster.sh");

/// Three masters on `base`, `base + 1`, `base + 2` (cluster bus on +10000), stopped on drop.
struct Cluster {
    base: u16,
    dir: tempfile::TempDir,
    aof: bool,
}

impl Cluster {
    /// `aof`: every write is fsynced to an append-only file, so a master killed with `-9`
    /// comes back with every write it acknowledged.
    fn start(aof: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = free_base();
        let cluster = Self { base, dir, aof };
        cluster.run("start");
        cluster
    }

    fn run(&self, what: &str) {
        let out = Command::new("bash")
            .arg(SCRIPT)
            .arg(what)
            .arg(self.base.to_string())
            .arg(self.dir.path())
            .env("WATCHPOST_CLUSTER_AOF", if self.aof { "1" } else { "0" })
            .output()
            .expect("run deploy/redis-cluster.sh (needs bash, redis-server, redis-cli)");
        assert!(
            out.status.success(),
            "redis-cluster.sh {what} {} failed: {}{}",
            self.base,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ports(&self) -> [u16; 3] {
        [self.base, self.base + 1, self.base + 2]
    }

    fn nodes(&self) -> Vec<String> {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The master that owns `key`'s slot (the others answer `MOVED`).
    fn owner_of(&self, key: &str) -> u16 {
        for port in self.ports() {
            let out = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "type", key])
                .output()
                .expect("redis-cli");
            let text = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && !text.contains("MOVED") {
                return port;
            }
        }
        panic!("no master owns {key}");
    }

    /// `kill -9` of one master.
    fn kill(&self, port: u16) {
        let pid_file = self.dir.path().join(port.to_string()).join("redis.pid");
        let pid = std::fs::read_to_string(&pid_file).expect("pid file");
        let status = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .arg("stop")
            .arg(self.base.to_string())
            .arg(self.dir.path())
            .output();
    }
}

/// A base port whose three ports and their cluster-bus ports (+10000) are free, below the
/// kernel's ephemeral range.
fn free_base() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..500 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let base = 21_000 + (h.finish() % 1_700) as u16 * 3;
        let free = (0..3).all(|i| {
            std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", base + i + 10_000)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no free ports for a cluster");
}

/// A second admin API server on the same config (database, cluster, key prefix) as `app`.
struct SecondAdmin {
    base_url: String,
    client: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

impl SecondAdmin {
    async fn start(app: &TestApp) -> Self {
        let state = AppState::new(app.config.clone()).expect("second admin state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = watchpost_admin::server::serve(listener, state, async {
                let _ = rx.await;
            })
            .await;
        });
        Self {
            base_url: format!("http://{addr}"),
            client: reqwest::Client::new(),
            _stop: tx,
        }
    }
}

/// Either admin instance, as the tests address them.
#[derive(Clone, Copy)]
enum Via<'a> {
    First(&'a TestApp),
    Second(&'a SecondAdmin),
}

impl Via<'_> {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        match self {
            Via::First(app) => app.client.request(method, app.url(path)),
            Via::Second(s) => s.client.request(method, format!("{}{path}", s.base_url)),
        }
    }

    async fn get_json(&self, admin: &TestAdmin, path: &str) -> (u16, Value) {
        json_of(
            self.request(reqwest::Method::GET, path)
                .bearer_auth(&admin.key)
                .send()
                .await
                .expect("GET"),
        )
        .await
    }
}

async fn start_proxy(nodes: &[String], prefix: &str, origin: SocketAddr, id: &str) -> RunningProxy {
    let nodes = nodes
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\nupstreams = [\"{origin}\"]\n\
         health_listen = \"127.0.0.1:0\"\nproxy_id = \"{id}\"\nthreads = 1\n\
         work_stealing = true\n\
         grace_period_secs = 0\nshutdown_timeout_secs = 1\nconnect_timeout_ms = 1000\n\
         health_check_interval_ms = 200\n\
         [redis]\ncluster_nodes = [{nodes}]\nkey_prefix = \"{prefix}\"\n\
         [access_log]\nflush_interval_ms = 20\n\
         [gateway]\nrisk_reject_threshold = 1.0\n",
        port = free_port(),
    );
    let settings = Settings::load_str(&text, None, &[]).expect("proxy config is valid");
    tokio::task::spawn_blocking(move || watchpost_proxy::start(settings, StopOn::Handle))
        .await
        .expect("start task")
        .expect("the proxy starts")
}

async fn start_fleet(cluster: &Cluster, app: &TestApp) -> Vec<RunningProxy> {
    let origin = start_origin().await;
    let mut proxies = Vec::new();
    for i in 0..3 {
        proxies.push(
            start_proxy(
                &cluster.nodes(),
                &app.key_prefix,
                origin,
                &format!("cluster-proxy-{i}"),
            )
            .await,
        );
    }
    proxies
}

async fn cluster_app(cluster: &Cluster, per_minute: u64) -> TestApp {
    let nodes = cluster.nodes();
    TestApp::builder()
        .configure(move |c| {
            c.redis.cluster_nodes = nodes;
            c.admin.rate_limit_per_minute = per_minute;
            c.admin.rate_limit_per_hour = 1_000_000;
        })
        .spawn()
        .await
}

/// GET `path` through proxy `p`; the status.
async fn through(http: &reqwest::Client, p: &RunningProxy, path: &str) -> u16 {
    http.get(format!("http://{}{path}", p.listen_addr()))
        .header("User-Agent", "curl/8.5.0")
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Every entry, newest first, through `via`'s paginated list (`limit` per page).
async fn walk(via: Via<'_>, admin: &TestAdmin, limit: u32) -> Vec<Value> {
    match try_walk(via, admin, limit).await {
        Ok(items) => items,
        Err(page) => panic!("a page failed: {page}"),
    }
}

/// [`walk`], or the first page that was not a 200 (e.g. a 503 while the admin's cluster
/// connection is still finding a restarted master).
async fn try_walk(via: Via<'_>, admin: &TestAdmin, limit: u32) -> Result<Vec<Value>, Value> {
    let mut out = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..10_000 {
        let mut url = format!("/api/admin/access-log?limit={limit}");
        if let Some(b) = &before {
            url.push_str(&format!("&before={b}"));
        }
        let (status, page) = via.get_json(admin, &url).await;
        if status != 200 {
            return Err(page);
        }
        out.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => before = Some(c.to_string()),
            None => return Ok(out),
        }
    }
    panic!("the walk does not end");
}

/// Positions as (ms, seq, shard), for ordering: the log is sharded, so ids repeat across
/// shards and entries are ordered by (id, shard).
fn id_key(v: &Value) -> (u64, u64, u16) {
    let id = v["id"].as_str().expect("id");
    let (ms, seq) = id.split_once('-').expect("stream id");
    let shard = v["shard"]
        .as_str()
        .expect("a sharded entry names its shard")
        .parse()
        .expect("shard number");
    (
        ms.parse().expect("id ms"),
        seq.parse().expect("id seq"),
        shard,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_a_cluster_shares_config_tail_and_access_log() {
    let cluster = Cluster::start(false);
    let app = cluster_app(&cluster, 1_000_000).await;
    let admin = app.create_admin().await;
    let second = SecondAdmin::start(&app).await;
    let vias = [Via::First(&app), Via::Second(&second)];
    let proxies = start_fleet(&cluster, &app).await;
    let http = reqwest::Client::new();

    // The access log is split into 16 shards (the default on a cluster), each family under
    // its own hash tag, `{0}` … `{15}`, so that the shards spread over the masters.
    let streams: Vec<String> = (0..16)
        .map(|n| format!("{}access:{{{n}}}", app.key_prefix))
        .collect();

    // A PUT through either admin reaches every proxy within 1 s.
    let mut version = 0u64;
    for (n, via) in vias.iter().enumerate() {
        let (status, body) = json_of(
            via.request(reqwest::Method::PUT, "/api/admin/gateway/config")
                .bearer_auth(&admin.key)
                .json(&json!({"ip_mode": "direct", "trusted_cidrs": [],
                              "risk_reject_threshold": 0.9 - n as f64 / 10.0,
                              "version": version}))
                .send()
                .await
                .expect("PUT"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        version = body["version"].as_u64().expect("version");
        let put_at = Instant::now();
        for p in &proxies {
            let health = p.health_addr();
            let http = &http;
            eventually(
                "the new config version on every proxy",
                Duration::from_secs(1).saturating_sub(put_at.elapsed()),
                || async move {
                    (proxy_config_version(http, health).await == version).then_some(())
                },
            )
            .await;
        }
        eprintln!(
            "cluster: config version {version} (PUT via admin {}) on all 3 proxies after {} ms",
            n + 1,
            put_at.elapsed().as_millis()
        );
    }

    // The tail of each admin sees requests through every proxy.
    for (n, via) in vias.iter().enumerate() {
        let mut tail = via
            .request(reqwest::Method::GET, "/api/admin/access-log/tail")
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("tail");
        assert_eq!(tail.status(), 200);
        let marker = format!("/tail-{n}-{}", ulid::Ulid::new());
        let mut wanted: HashSet<String> = (0..3).map(|i| format!("{marker}/{i}")).collect();
        let paths: Vec<String> = (0..3).map(|i| format!("{marker}/{i}")).collect();
        let senders = proxies
            .iter()
            .zip(&paths)
            .map(|(p, path)| through(&http, p, path));
        // Sent once the tail is open (it starts at the stream's newest entry).
        tokio::time::sleep(Duration::from_millis(100)).await;
        for status in futures::future::join_all(senders).await {
            assert_eq!(status, 200);
        }
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            while !wanted.is_empty() {
                let Some(chunk) = tail.chunk().await.expect("read the tail") else {
                    break;
                };
                text.push_str(&String::from_utf8_lossy(&chunk));
                wanted.retain(|path| !text.contains(path.as_str()));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("admin {} tail missed {wanted:?}", n + 1));
        assert!(
            wanted.is_empty(),
            "admin {} tail ended early: {text}",
            n + 1
        );
    }

    // N requests spread over the proxies: each found exactly once, newest first, by a
    // paginated walk through either admin.
    const N: usize = 90;
    let run = ulid::Ulid::new().to_string();
    for chunk in (0..N).collect::<Vec<_>>().chunks(15) {
        let sends = chunk.iter().map(|i| {
            let p = &proxies[i % proxies.len()];
            let path = format!("/n/{run}/{i}");
            let http = &http;
            async move { through(http, p, &path).await }
        });
        for status in futures::future::join_all(sends).await {
            assert_eq!(status, 200);
        }
    }
    let expected: HashSet<String> = (0..N).map(|i| format!("/n/{run}/{i}")).collect();
    for via in vias {
        let items = eventually(
            "every request in the access log",
            Duration::from_secs(15),
            || async {
                let items = walk(via, &admin, 7).await;
                let seen = items
                    .iter()
                    .filter(|v| {
                        v["path"]
                            .as_str()
                            .is_some_and(|p| p.starts_with(&format!("/n/{run}/")))
                    })
                    .count();
                (seen >= N).then_some(items)
            },
        )
        .await;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for item in &items {
            let path = item["path"].as_str().expect("path").to_string();
            if expected.contains(&path) {
                *counts.entry(path).or_default() += 1;
            }
        }
        assert_eq!(counts.len(), N, "every request found");
        assert!(
            counts.values().all(|&c| c == 1),
            "each exactly once: {counts:?}"
        );
        let keys: Vec<(u64, u64, u16)> = items.iter().map(id_key).collect();
        assert!(
            keys.windows(2).all(|w| w[0] > w[1]),
            "(id, shard) strictly descending"
        );
        let proxies_seen: HashSet<&str> = items
            .iter()
            .filter_map(|v| v["proxy_id"].as_str())
            .collect();
        assert_eq!(proxies_seen.len(), 3, "{proxies_seen:?}");
    }

    // Rule hits: every proxy counts its own (one slot per rule on the cluster), either admin
    // reads the sum.
    let (status, rule) = json_of(
        Via::First(&app)
            .request(reqwest::Method::POST, "/api/admin/gateway/rules")
            .bearer_auth(&admin.key)
            .json(
                &json!({"action": "log_only", "match": {"path_prefixes": ["/ruled"]},
                          "reason": "cluster"}),
            )
            .send()
            .await
            .expect("POST rule"),
    )
    .await;
    assert_eq!(status, 201, "{rule}");
    let rule_id = rule["id"].as_str().expect("rule id").to_string();
    let rule_version = rule["version"].as_u64().expect("rule version");
    for p in &proxies {
        let health = p.health_addr();
        let http = &http;
        eventually("the rule on every proxy", Duration::from_secs(5), || async move {
            (proxy_config_version(http, health).await >= rule_version).then_some(())
        })
        .await;
    }
    for i in 0..6 {
        assert_eq!(
            through(&http, &proxies[i % 3], &format!("/ruled/{i}")).await,
            200
        );
    }
    for via in vias {
        let path = format!("/api/admin/gateway/rules/{rule_id}");
        eventually("six rule hits", Duration::from_secs(10), || async {
            let (status, one) = via.get_json(&admin, &path).await;
            assert_eq!(status, 200, "{one}");
            (one["hits_last_hour"] == 6 && one["last_hit_at"].is_string()).then_some(())
        })
        .await;
    }

    // Each shard's stream is on the master owning its slot, and the shards holding entries
    // are spread over more than one master.
    let mut total = 0usize;
    let mut owners = HashSet::new();
    for stream in &streams {
        let owner = cluster.owner_of(stream);
        let out = Command::new("redis-cli")
            .args(["-p", &owner.to_string(), "xlen", stream])
            .output()
            .expect("redis-cli");
        let len: usize = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("XLEN");
        if len > 0 {
            owners.insert(owner);
        }
        total += len;
    }
    assert!(total >= N + 12, "XLEN summed over the shards: {total}");
    assert!(owners.len() > 1, "the shards' masters: {owners:?}");

    for p in proxies {
        p.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rate_limits_are_shared_across_instances_on_a_cluster() {
    let cluster = Cluster::start(false);
    let app = cluster_app(&cluster, 6).await;
    let second = SecondAdmin::start(&app).await;
    let vias = [Via::First(&app), Via::Second(&second)];
    let minute = || chrono::Utc::now().timestamp() / 60;
    // A fresh actor per attempt; an attempt that straddles a minute boundary (the window
    // restarts) is done again.
    for _ in 0..3 {
        let admin = app.create_admin().await;
        let started = minute();
        let mut statuses = Vec::new();
        for i in 0..10 {
            let (status, _) = vias[i % 2].get_json(&admin, "/api/admin/users").await;
            statuses.push(status);
        }
        if minute() != started {
            continue;
        }
        // Six requests in the minute between both instances, then 429 from either: one count.
        let mut want = vec![200u16; 6];
        want.extend([429; 4]);
        assert_eq!(statuses, want);
        return;
    }
    panic!("three attempts straddled a minute boundary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_load_loses_nothing_the_proxies_took() {
    let cluster = Cluster::start(true);
    let app = cluster_app(&cluster, 1_000_000).await;
    let admin = app.create_admin().await;
    let proxies = start_fleet(&cluster, &app).await;
    let http = reqwest::Client::new();
    // The master of shard 0 (every proxy's batches reach it in turn).
    let stream = format!("{}access:{{0}}", app.key_prefix);
    let owner = cluster.owner_of(&stream);

    let run = ulid::Ulid::new().to_string();
    let mut next = 0usize;
    let mut sent: Vec<String> = Vec::new();
    // Load, kill shard 0's master, load while it is down, restart it, load again.
    sent.extend(load(&http, &proxies, &run, &mut next, Duration::from_millis(500)).await);
    cluster.kill(owner);
    let killed = Instant::now();
    sent.extend(
        load(
            &http,
            &proxies,
            &run,
            &mut next,
            Duration::from_millis(1500),
        )
        .await,
    );
    cluster.run("start");
    let down = killed.elapsed();
    sent.extend(load(&http, &proxies, &run, &mut next, Duration::from_millis(500)).await);
    eprintln!(
        "cluster: {} requests, master {owner} down for {} ms",
        sent.len(),
        down.as_millis()
    );

    // Writing resumes by itself: every request the proxies took is in the stream, unless a
    // proxy counted it as dropped (its buffer bound).
    let dropped = || {
        proxies
            .iter()
            .map(|p| p.metrics().log_dropped.get())
            .sum::<u64>()
    };
    let want: HashSet<&str> = sent.iter().map(String::as_str).collect();
    let found = eventually(
        "the access log to hold every request but the dropped ones",
        Duration::from_secs(30),
        || async {
            // Right after the restart the admin may answer 503 until its connection finds
            // the master again: that is "not yet", not a failure.
            let Ok(items) = try_walk(Via::First(&app), &admin, 500).await else {
                return None;
            };
            let found: HashSet<String> = items
                .iter()
                .filter_map(|v| v["path"].as_str())
                .filter(|p| want.contains(p))
                .map(str::to_string)
                .collect();
            (found.len() as u64 + dropped() >= want.len() as u64).then_some(found)
        },
    )
    .await;
    let missing = want.len() - found.len();
    eprintln!(
        "cluster: {missing} of {} entries missing, {} counted as dropped",
        want.len(),
        dropped()
    );
    assert!(missing as u64 <= dropped(), "lost beyond the drops counted");
    // The buffer (100,000 entries) held the outage: nothing was dropped.
    assert_eq!(dropped(), 0);
    // Each request exactly once (retried batches are not written twice).
    let items = walk(Via::First(&app), &admin, 500).await;
    let mut paths: Vec<&str> = items
        .iter()
        .filter_map(|v| v["path"].as_str())
        .filter(|p| want.contains(p))
        .collect();
    let n = paths.len();
    paths.sort_unstable();
    paths.dedup();
    assert_eq!(paths.len(), n, "an entry written twice");
    for p in proxies {
        p.shutdown();
    }
}

/// Sends requests, ten at a time spread over the proxies, for `d`; every one must be served.
/// Returns their paths.
async fn load(
    http: &reqwest::Client,
    proxies: &[RunningProxy],
    run: &str,
    next: &mut usize,
    d: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + d;
    let mut sent = Vec::new();
    while Instant::now() < deadline {
        let paths: Vec<(usize, String)> = (*next..*next + 10)
            .map(|i| (i, format!("/load/{run}/{i}")))
            .collect();
        *next += 10;
        let sends = paths
            .iter()
            .map(|(i, path)| through(http, &proxies[i % proxies.len()], path));
        for ((_, path), status) in paths.iter().zip(futures::future::join_all(sends).await) {
            assert_eq!(status, 200, "{path}: the proxies keep serving");
            sent.push(path.clone());
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archiver_archives_every_shard_of_a_cluster_and_the_export_reads_them() {
    let cluster = Cluster::start(false);
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = cluster.nodes();
    let archive_dir = dir.path().display().to_string();
    let app = TestApp::builder()
        .configure(move |c| {
            c.redis.cluster_nodes = nodes;
            c.admin.rate_limit_per_minute = 1_000_000;
            c.admin.rate_limit_per_hour = 1_000_000;
            c.archive.dir = archive_dir;
            c.archive.batch = 20;
            c.archive.block_ms = 100;
            c.archive.metrics_listen = String::new();
        })
        .spawn()
        .await;
    let admin = app.create_admin().await;
    let target = app.config.redis.target();
    let keys = target.keys(app.key_prefix.clone());
    // 16 shards by default on a cluster, spread over the masters; the same ids in each.
    let families = watchpost_common::keys::access_families(&keys, None);
    assert_eq!(families.len(), 16);
    let mut con = target
        .connect(watchpost_common::ConnOptions {
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(5),
            retries: 3,
            max_delay: Duration::from_secs(1),
        })
        .await
        .expect("cluster connection");
    let base = crate::access_log::now_ms() - 3 * 3_600_000;
    let mut written: BTreeMap<(u64, u64, u16), String> = BTreeMap::new();
    for (s, family) in families.iter().enumerate() {
        // One pipeline per shard: its keys share the shard's hash tag (one slot).
        let mut pipe = redis::pipe();
        for i in 0..30u64 {
            let (ms, seq) = (base + i * 1_000, i % 2);
            let mut e = crate::access_log::synthetic(i);
            e.ts = ms;
            e.request_id = format!("c-{s}-{i}");
            crate::common::xadd_indexed_in(&mut pipe, family, &format!("{ms}-{seq}"), &e);
            written.insert((ms, seq, s as u16), e.request_id);
        }
        let () = pipe.query_async(&mut con).await.expect("XADD pipeline");
    }

    let metrics = watchpost_admin::archive::ArchiveMetrics::new().expect("metrics");
    let archiver = watchpost_admin::archive::Archiver::sharded(
        &target,
        &keys,
        None,
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
    while metrics.entries_total.get() < written.len() as u64 || metrics.lag_entries.get() != 0 {
        assert!(Instant::now() < deadline, "the archiver did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    task.await.expect("join").expect("archiver");
    assert_eq!(metrics.entries_total.get(), written.len() as u64);
    for s in 0..16u16 {
        let got: Vec<String> = watchpost_admin::archive::read_range(
            dir.path().join(format!("shard-{s}")),
            0,
            u64::MAX,
        )
        .expect("read")
        .map(|e| e.entry.request_id)
        .collect();
        let want: Vec<String> = written
            .iter()
            .filter(|(p, _)| p.2 == s)
            .map(|(_, r)| r.clone())
            .collect();
        assert_eq!(got, want, "shard {s}");
        assert_eq!(metrics.entries_total.shard(&s.to_string()).get(), 30);
    }

    // Every stream trimmed to its newest 10: the export has every entry once, in (id, shard)
    // order, the older ones from each shard's archive.
    for family in &families {
        let _: u64 = redis::cmd("XTRIM")
            .arg(family.stream())
            .arg("MAXLEN")
            .arg(10)
            .query_async(&mut con)
            .await
            .expect("XTRIM");
    }
    let body = app
        .get("/api/admin/access-log/export")
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("body");
    let mut lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let trailer = lines.pop().expect("trailer");
    assert_eq!(trailer["export"], "end", "{trailer}");
    assert_eq!(trailer["count"], written.len());
    let got: Vec<((u64, u64, u16), String)> = lines
        .iter()
        .map(|v| {
            (
                id_key(v),
                v["request_id"].as_str().expect("rid").to_string(),
            )
        })
        .collect();
    let want: Vec<((u64, u64, u16), String)> =
        written.iter().rev().map(|(p, r)| (*p, r.clone())).collect();
    assert_eq!(got, want);
}
