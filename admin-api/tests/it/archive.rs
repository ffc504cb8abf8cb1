//! `watchpost-admin archive`: the stream copied into hourly gzip NDJSON files through a
//! consumer group, surviving a crash mid-way with every entry archived exactly once, and
//! counting entries trimmed before they were archived.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use watchpost_admin::archive::{self, ArchiveMetrics, Archiver};
use watchpost_admin::config::ArchiveConfig;
use watchpost_common::{AccessLogEntry, Keys};

use crate::common::short_id;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("url")
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("Redis must be reachable")
}

fn config(dir: &std::path::Path) -> ArchiveConfig {
    ArchiveConfig {
        dir: dir.display().to_string(),
        batch: 100,
        block_ms: 100,
        metrics_listen: String::new(),
        ..ArchiveConfig::default()
    }
}

/// XADDs `n` entries from `first_ms` on, `step_ms` apart, with explicit ids; returns the ids.
async fn xadd(
    c: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    first_ms: u64,
    step_ms: u64,
    n: u64,
) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let ms = first_ms + i * step_ms;
            let id = format!("{ms}-{i}");
            let e = AccessLogEntry {
                ts: ms,
                path: format!("/p/{i}"),
                request_id: format!("req-{ms}-{i}"),
                status: 200,
                ..AccessLogEntry::default()
            };
            let cmd = pipe.cmd("XADD").arg(keys.access_stream()).arg(&id);
            for (k, v) in e.to_fields() {
                cmd.arg(k).arg(v);
            }
            ids.push(id);
        }
        let _: Vec<String> = pipe.query_async(c).await.expect("XADD");
    }
    ids
}

async fn cleanup(c: &mut redis::aio::MultiplexedConnection, keys: &Keys) {
    let _: () = redis::cmd("DEL")
        .arg(keys.access_stream())
        .query_async(c)
        .await
        .expect("DEL");
}

/// Runs an archiver until `done(metrics)` holds, then stops it gracefully.
async fn archive_until(
    keys: &Keys,
    cfg: &ArchiveConfig,
    metrics: ArchiveMetrics,
    done: impl Fn(&ArchiveMetrics) -> bool,
) -> u64 {
    let archiver = Archiver::new(
        &watchpost_common::RedisTarget::Node(redis_url()),
        keys,
        cfg,
        metrics.clone(),
    )
    .await
    .expect("archiver");
    let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(archiver.run(async move {
        let _ = stop_rx.wait_for(|v| *v).await;
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(&metrics) {
        assert!(Instant::now() < deadline, "archiver did not get there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    task.await.expect("join").expect("archiver")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_way_loses_and_repeats_nothing_and_files_rotate_by_hour() {
    let keys = Keys::new(format!("wpt_arch_{}:", short_id()));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = conn().await;
    // 2000 entries over three hours, from 2026-12-01T03:00Z.
    let start = 1_796_094_000_000u64;
    let ids = xadd(&mut c, &keys, start, 5_000, 2000).await;
    let cfg = config(dir.path());

    // A first archiver is killed (its task dropped at an await point, as a crash) once it has
    // written a part: entries it wrote but did not acknowledge are delivered again later.
    let metrics = ArchiveMetrics::new().expect("metrics");
    let archiver = Archiver::new(
        &watchpost_common::RedisTarget::Node(redis_url()),
        &keys,
        &cfg,
        metrics.clone(),
    )
    .await
    .expect("archiver");
    let task = tokio::spawn(archiver.run(std::future::pending()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while metrics.entries_total.get() < 700 {
        assert!(Instant::now() < deadline, "first archiver too slow");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    task.abort();
    let _ = task.await;
    let first_run = metrics.entries_total.get();
    assert!(first_run < 2000, "killed mid-way ({first_run})");

    // A torn write at the end of the newest file written so far (a crash inside a write).
    let newest = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .max()
        .expect("a file");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .expect("open")
        .write_all(&[0x1f, 0x8b, 0x08, 0x00, 0x01, 0x02])
        .expect("torn bytes");

    // A restarted archiver finishes the job.
    let metrics = ArchiveMetrics::new().expect("metrics");
    // Done once nothing is left to read and the files hold every entry. (Counting the two
    // runs' `entries_total` would not do: the first run may be killed after a write reached
    // the disk but before its counter rose, and the second then only acknowledges those.)
    let archived = dir.path().to_path_buf();
    archive_until(&keys, &cfg, metrics.clone(), move |m| {
        m.lag_entries.get() == 0
            && archive::read_range(&archived, 0, u64::MAX)
                .map(|entries| entries.count() == 2000)
                .unwrap_or(false)
    })
    .await;
    assert_eq!(metrics.lag_entries.get(), 0);
    assert_eq!(metrics.oldest_unarchived_age_seconds.get(), 0);

    // Every entry exactly once, in order, both through the reader and in the raw files.
    let got: Vec<String> = archive::read_range(dir.path(), 0, u64::MAX)
        .expect("read")
        .map(|e| e.id)
        .collect();
    assert_eq!(got, ids);
    // Newest first one member at a time, filtered: the same entries in reverse, past the torn
    // member.
    let newest: Vec<String> = archive::read_matches_newest_first(dir.path(), 0, u64::MAX, |_| true)
        .expect("read")
        .map(|e| e.id)
        .collect();
    assert_eq!(newest, ids.iter().rev().cloned().collect::<Vec<_>>());
    let odd: Vec<String> = archive::read_matches_newest_first(dir.path(), 0, u64::MAX, |e| {
        e.entry.path.ends_with('1') || e.entry.path.ends_with('3')
    })
    .expect("read")
    .map(|e| e.id)
    .collect();
    let want: Vec<String> = ids
        .iter()
        .enumerate()
        .rev()
        .filter(|(i, _)| i % 10 == 1 || i % 10 == 3)
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(odd, want);
    let mut raw_lines = 0;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir.path()).expect("dir") {
        let path = entry.expect("entry").path();
        names.push(
            path.file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned(),
        );
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(&path).expect("open")),
            &mut text,
        )
        .expect("every file is valid gzip after the restart");
        raw_lines += text.lines().count();
    }
    assert_eq!(raw_lines, 2000, "no entry written twice");
    names.sort();
    assert_eq!(
        names,
        [
            "access-2026-12-01T03.ndjson.gz",
            "access-2026-12-01T04.ndjson.gz",
            "access-2026-12-01T05.ndjson.gz",
        ]
    );

    // Ranges: one hour, newest first, with the entries' fields.
    let hour4 = start + 3_600_000;
    let in_hour: Vec<archive::ArchivedEntry> =
        archive::read_range_newest_first(dir.path(), hour4, hour4 + 3_599_999)
            .expect("read")
            .collect();
    assert_eq!(in_hour.len(), 720);
    assert!(in_hour
        .windows(2)
        .all(|w| { archive::StreamId::parse(&w[0].id) > archive::StreamId::parse(&w[1].id) }));
    assert_eq!(in_hour[0].entry.ts, hour4 + 3_595_000);
    assert!(in_hour[0].entry.request_id.starts_with("req-"));
    cleanup(&mut c, &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_trimmed_before_they_were_archived_are_counted() {
    let keys = Keys::new(format!("wpt_arch_{}:", short_id()));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = conn().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let cfg = config(dir.path());
    xadd(&mut c, &keys, now - 60_000, 1, 100).await;
    let metrics = ArchiveMetrics::new().expect("metrics");
    archive_until(&keys, &cfg, metrics.clone(), |m| {
        m.entries_total.get() == 100
    })
    .await;
    assert_eq!(metrics.trimmed_before_archived_total.get(), 0);

    // While the archiver is down, 300 more arrive and the stream is trimmed to its last 50.
    xadd(&mut c, &keys, now - 50_000, 1, 300).await;
    let _: u64 = redis::cmd("XTRIM")
        .arg(keys.access_stream())
        .arg("MAXLEN")
        .arg(50)
        .query_async(&mut c)
        .await
        .expect("XTRIM");
    let metrics = ArchiveMetrics::new().expect("metrics");
    archive_until(&keys, &cfg, metrics.clone(), |m| {
        m.entries_total.get() == 50
    })
    .await;
    assert_eq!(metrics.trimmed_before_archived_total.get(), 250);
    assert_eq!(metrics.gaps_total.get(), 1);
    let all: HashMap<String, ()> = archive::read_range(dir.path(), 0, u64::MAX)
        .expect("read")
        .map(|e| (e.id, ()))
        .collect();
    assert_eq!(all.len(), 150);
    cleanup(&mut c, &keys).await;
}
