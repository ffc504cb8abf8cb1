//! `watchpost-admin archive` on a sharded access log (`[access_log] shards = 3`, one Redis):
//! every shard archived on its own into `shard-<n>/`, exactly once across a crash, and the
//! export continuing into each shard's archive below its stream, merged by (id, shard).

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use watchpost_admin::archive::{self, ArchiveMetrics, Archiver};
use watchpost_common::{AccessKeys, AccessLogEntry, Keys};

use crate::access_log::{now_ms, redis_con, synthetic};
use crate::common::{TestAdmin, TestApp};

const SHARDS: u16 = 3;
/// Entries per shard (shard 1 holds every other one).
const PER_SHARD: u64 = 600;

/// A position as the API names it: (ms, seq, shard).
type Pos = (u64, u64, u16);

fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("ms-seq");
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

/// Every entry written: position → (request id, entry).
type Model = BTreeMap<Pos, (String, AccessLogEntry)>;

/// Writes colliding ids into the three shards: entry `i` of every shard has the id
/// `<base + i * 15 s>-<i % 3>` (shard 1 only every other `i`), so the log spans 2.5 hours of
/// hourly files and most ids exist in several shards.
async fn seed(app: &TestApp, families: &[AccessKeys]) -> Model {
    let base = now_ms() - 4 * 3_600_000;
    let mut model = Model::new();
    let mut con = redis_con(app).await;
    let mut n = 0u64;
    for (s, family) in families.iter().enumerate() {
        let mut pipe = redis::pipe();
        for i in 0..PER_SHARD {
            if s == 1 && i % 2 == 1 {
                continue;
            }
            let (ms, seq) = (base + i * 15_000, i % 3);
            let mut e = synthetic(n);
            n += 1;
            e.ts = ms;
            e.request_id = format!("arch-{s}-{i}");
            crate::common::xadd_indexed_in(&mut pipe, family, &format!("{ms}-{seq}"), &e);
            model.insert((ms, seq, s as u16), (e.request_id.clone(), e));
        }
        let () = pipe.query_async(&mut con).await.expect("XADD pipeline");
    }
    model
}

/// Every line of every archive file in `dir` (not deduplicated): (id, request id).
fn raw_lines(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir).expect("dir") {
        let path = item.expect("item").path();
        if path.is_dir() {
            continue;
        }
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(std::fs::File::open(&path).expect("open"))
            .read_to_string(&mut text)
            .expect("gzip");
        for line in text.lines().filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_str(line).expect("JSON line");
            out.push((
                v["id"].as_str().expect("id").to_string(),
                v["request_id"].as_str().expect("rid").to_string(),
            ));
        }
    }
    out
}

async fn export(app: &TestApp, admin: &TestAdmin, query: &str) -> (Vec<(Pos, String)>, Value) {
    let body = app
        .get(&format!("/api/admin/access-log/export?{query}"))
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
    let items = lines
        .iter()
        .map(|i| {
            let (ms, seq) = parse_id(i["id"].as_str().expect("id"));
            let shard: u16 = i["shard"]
                .as_str()
                .expect("a sharded line names its shard")
                .parse()
                .expect("shard number");
            (
                (ms, seq, shard),
                i["request_id"].as_str().expect("rid").to_string(),
            )
        })
        .collect();
    (items, trailer)
}

/// The model's matches, newest first by (id, shard).
fn want(model: &Model, keep: impl Fn(&Pos, &AccessLogEntry) -> bool) -> Vec<(Pos, String)> {
    model
        .iter()
        .rev()
        .filter(|(p, (_, e))| keep(p, e))
        .map(|(p, (r, _))| (*p, r.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shard_is_archived_once_across_a_crash_and_exported_below_the_streams() {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive_dir = dir.path().display().to_string();
    let app = TestApp::builder()
        .configure(move |c| {
            c.admin.rate_limit_per_minute = 1_000_000;
            c.admin.rate_limit_per_hour = 1_000_000;
            c.access_log.shards = Some(u64::from(SHARDS));
            c.archive.dir = archive_dir;
            c.archive.batch = 40;
            c.archive.block_ms = 100;
            c.archive.metrics_listen = String::new();
        })
        .spawn()
        .await;
    let admin = app.create_admin().await;
    let keys = Keys::new(app.key_prefix.clone());
    let families = watchpost_common::keys::access_families(&keys, Some(SHARDS));
    assert_eq!(families.len(), usize::from(SHARDS));
    let model = seed(&app, &families).await;
    let target = app.config.redis.target();

    // A first archiver is killed (its task dropped at an await point, as a crash) once it has
    // written a part of the log.
    let metrics = ArchiveMetrics::new().expect("metrics");
    let archiver = Archiver::sharded(
        &target,
        &keys,
        Some(SHARDS),
        &app.config.archive,
        metrics.clone(),
    )
    .await
    .expect("archiver");
    let dirs: Vec<_> = (0..SHARDS)
        .map(|s| dir.path().join(format!("shard-{s}")))
        .collect();
    assert_eq!(archiver.dirs(), dirs, "one directory per shard");
    let task = tokio::spawn(archiver.run(std::future::pending()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics.entries_total.get() < 400 {
        assert!(Instant::now() < deadline, "first archiver too slow");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    task.abort();
    let _ = task.await;
    let first_run = metrics.entries_total.get();
    assert!(
        first_run < model.len() as u64,
        "killed mid-way ({first_run})"
    );

    // A restarted archiver finishes the job: done once nothing is left to read in any shard
    // and every shard's files hold its entries.
    let metrics = ArchiveMetrics::new().expect("metrics");
    let archiver = Archiver::sharded(
        &target,
        &keys,
        Some(SHARDS),
        &app.config.archive,
        metrics.clone(),
    )
    .await
    .expect("archiver");
    let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(archiver.run(async move {
        let _ = stop_rx.wait_for(|v| *v).await;
    }));
    let per_shard = |s: u16| model.keys().filter(|p| p.2 == s).count();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = metrics.lag_entries.get() == 0
            && (0..SHARDS).all(|s| {
                metrics.lag_entries.shard(&s.to_string()).get() == 0
                    && archive::read_range(&dirs[usize::from(s)], 0, u64::MAX)
                        .expect("read")
                        .count()
                        == per_shard(s)
            });
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the archiver did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    task.await.expect("join").expect("archiver");
    assert_eq!(metrics.oldest_unarchived_age_seconds.get(), 0);
    assert_eq!(metrics.trimmed_before_archived_total.get(), 0);
    let rendered = metrics.render();
    for s in 0..SHARDS {
        assert!(
            rendered.contains(&format!("watchpost_archive_lag_entries{{shard=\"{s}\"}} 0")),
            "per-shard lag: {rendered}"
        );
    }

    // Each shard's files hold exactly its entries, each once (raw lines, not deduplicated),
    // in hourly files of its own directory only; the top directory holds no file.
    assert!(
        !archive::has_files(dir.path()).expect("dir"),
        "no file outside the shard directories"
    );
    for s in 0..SHARDS {
        let mut got = raw_lines(&dirs[usize::from(s)]);
        got.sort();
        let mut expected: Vec<(String, String)> = model
            .iter()
            .filter(|(p, _)| p.2 == s)
            .map(|(p, (r, _))| (format!("{}-{}", p.0, p.1), r.clone()))
            .collect();
        expected.sort();
        assert_eq!(got.len(), expected.len(), "shard {s}: each entry once");
        assert_eq!(got, expected, "shard {s}: its own entries only");
        let files = std::fs::read_dir(&dirs[usize::from(s)])
            .expect("dir")
            .count();
        assert!(files >= 3, "shard {s}: hourly files ({files})");
    }

    // The streams are trimmed, each at its own point: shard 0 keeps its newest 200, shard 1
    // its newest 100, shard 2 nothing. Most of the log is then only in the archive.
    let mut con = redis_con(&app).await;
    let first_kept = |s: u16, keep: usize| {
        let ids: Vec<&Pos> = model.keys().filter(|p| p.2 == s).collect();
        let p = ids[ids.len() - keep];
        format!("{}-{}", p.0, p.1)
    };
    for (s, keep) in [(0u16, 200usize), (1, 100)] {
        let _: u64 = redis::cmd("XTRIM")
            .arg(families[usize::from(s)].stream())
            .arg("MINID")
            .arg(first_kept(s, keep))
            .query_async(&mut con)
            .await
            .expect("XTRIM");
    }
    let _: u64 = redis::cmd("XTRIM")
        .arg(families[2].stream())
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut con)
        .await
        .expect("XTRIM");
    let lengths: Vec<u64> = {
        let mut v = Vec::new();
        for f in &families {
            v.push(
                redis::cmd("XLEN")
                    .arg(f.stream())
                    .query_async(&mut con)
                    .await
                    .expect("XLEN"),
            );
        }
        v
    };
    assert_eq!(lengths, vec![200, 100, 0]);

    // Everything: each entry once, newest first by (id, shard), ids colliding across shards
    // all present, the count including the archived ones.
    let (got, trailer) = export(&app, &admin, "").await;
    assert_eq!(trailer["export"], "end");
    assert_eq!(trailer["count"], model.len());
    let expected = want(&model, |_, _| true);
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
    let rids: HashSet<&String> = got.iter().map(|(_, r)| r).collect();
    assert_eq!(rids.len(), got.len(), "an entry was exported twice");
    let colliding = got
        .windows(2)
        .filter(|w| (w[0].0 .0, w[0].0 .1) == (w[1].0 .0, w[1].0 .1))
        .count();
    assert!(colliding > 300, "ids repeated across shards ({colliding})");

    // Filters (an indexed one and a checked one) and a time range across every trim point.
    let ms: Vec<u64> = model.keys().map(|p| p.0).collect();
    let (from, to) = (ms[ms.len() / 10], ms[ms.len() * 19 / 20]);
    let (got, trailer) = export(
        &app,
        &admin,
        &format!("status=404&method=GET&from={from}&to={to}"),
    )
    .await;
    let expected = want(&model, |p, e| {
        p.0 >= from && p.0 < to && e.status == 404 && e.method == "GET"
    });
    assert!(expected.len() > 30, "archived and stream matches");
    assert_eq!(got, expected);
    assert_eq!(trailer["count"], expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_of_a_shard_no_longer_configured_is_still_exported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive_dir = dir.path().display().to_string();
    let app = TestApp::builder()
        .configure(move |c| {
            c.admin.rate_limit_per_minute = 1_000_000;
            c.admin.rate_limit_per_hour = 1_000_000;
            // `shards` went down from 3 to 2: shard 2 is no longer configured.
            c.access_log.shards = Some(2);
            c.archive.dir = archive_dir;
            c.archive.batch = 100;
            c.archive.block_ms = 100;
            c.archive.metrics_listen = String::new();
        })
        .spawn()
        .await;
    let admin = app.create_admin().await;
    let keys = Keys::new(app.key_prefix.clone());
    // Shards 0 to 2 were written while three were configured (and registered, as the proxies
    // do); `shards` is now 2 and the archiver archives the configured shards and shard 2, still
    // registered, into its own directory.
    let all = watchpost_common::keys::access_families(&keys, Some(3));
    let model = seed(&app, &all).await;
    let mut con = redis_con(&app).await;
    let _: u64 = redis::cmd("SADD")
        .arg(keys.access_family_registry())
        .arg(&["0", "1", "2"][..])
        .query_async(&mut con)
        .await
        .expect("SADD");
    let metrics = ArchiveMetrics::new().expect("metrics");
    let archiver = Archiver::sharded(
        &app.config.redis.target(),
        &keys,
        Some(2),
        &app.config.archive,
        metrics.clone(),
    )
    .await
    .expect("archiver");
    let dirs: Vec<_> = (0..3)
        .map(|s| dir.path().join(format!("shard-{s}")))
        .collect();
    assert_eq!(
        archiver.dirs(),
        dirs,
        "the registered shard is archived too"
    );
    let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(archiver.run(async move {
        let _ = stop_rx.wait_for(|v| *v).await;
    }));
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics.entries_total.get() < model.len() as u64 {
        assert!(Instant::now() < deadline, "the archiver did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Then shard 2's stream is gone (trimmed away; the proxies delete and unregister it): the
    // archiver is done with it and goes on with the others.
    let _: u64 = redis::cmd("DEL")
        .arg(all[2].stream())
        .query_async(&mut con)
        .await
        .expect("DEL");
    let _: u64 = redis::cmd("SREM")
        .arg(keys.access_family_registry())
        .arg("2")
        .query_async(&mut con)
        .await
        .expect("SREM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop.send(true);
    let archived = task.await.expect("join").expect("archiver");
    assert_eq!(archived, model.len() as u64);
    // The others keep their newest 50.
    for f in &all[..2] {
        let _: u64 = redis::cmd("XTRIM")
            .arg(f.stream())
            .arg("MAXLEN")
            .arg(50)
            .query_async(&mut con)
            .await
            .expect("XTRIM");
    }

    // The export (of a two-shard configuration, shard 2 neither configured nor registered)
    // still has shard 2, from its `shard-2/` directory, merged by (id, shard).
    let (got, trailer) = export(&app, &admin, "").await;
    assert_eq!(trailer["export"], "end");
    assert_eq!(trailer["count"], model.len());
    assert_eq!(got, want(&model, |_, _| true));
    assert!(got.iter().any(|(p, _)| p.2 == 2), "shard 2 exported");
}
