//! A sharded access log (`[access_log] shards = 3`) on one Redis: three writers append in the
//! same milliseconds, so stream ids collide across shards, and every reader of the admin API
//! merges the shards by (id, shard), exactly.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;
use watchpost_common::{AccessKeys, AccessLogEntry, Keys};
use watchpost_proxy::access_log::{append_batch, APPEND_SCRIPT};

use crate::access_log::{get_json, now_ms, open_tail, read_entries, redis_con, synthetic};
use crate::common::{assert_error, TestAdmin, TestApp};

const SHARDS: u16 = 3;

async fn spawn_sharded() -> TestApp {
    TestApp::builder()
        .configure(|c| {
            c.admin.rate_limit_per_minute = 1_000_000;
            c.admin.rate_limit_per_hour = 1_000_000;
            c.admin.access_log_tail_block_ms = 300;
            c.admin.access_log_tail_heartbeat_secs = 1;
            c.access_log.shards = Some(u64::from(SHARDS));
        })
        .spawn()
        .await
}

fn families(app: &TestApp) -> Vec<AccessKeys> {
    watchpost_common::keys::access_families(&Keys::new(app.key_prefix.clone()), Some(SHARDS))
}

/// XADDs `entries` into one shard under explicit ids, each as a one-entry batch with its
/// postings, as the append script lays them out.
async fn xadd_shard(app: &TestApp, family: &AccessKeys, entries: &[(String, AccessLogEntry)]) {
    let mut con = redis_con(app).await;
    for chunk in entries.chunks(1000) {
        let mut pipe = redis::pipe();
        for (id, e) in chunk {
            crate::common::xadd_indexed_in(&mut pipe, family, id, e);
        }
        let () = pipe.query_async(&mut con).await.expect("XADD pipeline");
    }
}

/// A position as the API names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Pos {
    ms: u64,
    seq: u64,
    shard: u16,
}

fn pos_of(item: &Value) -> Pos {
    let id = item["id"].as_str().expect("id");
    let (ms, seq) = id.split_once('-').expect("ms-seq");
    Pos {
        ms: ms.parse().expect("ms"),
        seq: seq.parse().expect("seq"),
        shard: item["shard"]
            .as_str()
            .expect("a sharded item names its shard")
            .parse()
            .expect("shard number"),
    }
}

/// Follows `next_cursor` from the first page of `query`; returns every item's position and
/// request id in visit order.
async fn walk(app: &TestApp, admin: &TestAdmin, query: &str) -> Vec<(Pos, String)> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let path = match &cursor {
            None => format!("/api/admin/access-log?{query}"),
            Some(c) => format!("/api/admin/access-log?{query}&before={c}"),
        };
        let (mut status, mut page) = get_json(app, admin, &path).await;
        // A loaded machine can hold a Redis reply past the admin's 1 s command timeout (503,
        // nothing changed): the same page is asked again, as a client would.
        for _ in 0..3 {
            if status != 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            (status, page) = get_json(app, admin, &path).await;
        }
        assert_eq!(status, 200, "{page}");
        for item in page["items"].as_array().expect("items") {
            out.push((
                pos_of(item),
                item["request_id"].as_str().expect("rid").to_string(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert!(c.contains('~'), "a sharded cursor carries the shard: {c}");
                cursor = Some(c.to_string());
            }
            None => return out,
        }
    }
    panic!("the walk did not end");
}

#[track_caller]
fn assert_newest_first_once(got: &[(Pos, String)]) {
    for pair in got.windows(2) {
        assert!(
            pair[0].0 > pair[1].0,
            "not in (id, shard) order, newest first: {:?} then {:?}",
            pair[0].0,
            pair[1].0
        );
    }
    let rids: HashSet<&String> = got.iter().map(|(_, r)| r).collect();
    assert_eq!(rids.len(), got.len(), "an entry was returned twice");
}

/// The model: every entry written, by request id, with its shard and id.
struct Written {
    by_rid: HashMap<String, (Pos, AccessLogEntry)>,
}

impl Written {
    fn matching(&self, f: impl Fn(&AccessLogEntry) -> bool) -> Vec<(Pos, String)> {
        let mut v: Vec<(Pos, String)> = self
            .by_rid
            .iter()
            .filter(|(_, (_, e))| f(e))
            .map(|(r, (p, _))| (p.clone(), r.clone()))
            .collect();
        v.sort_by(|a, b| b.0.cmp(&a.0));
        v
    }
}

/// Three writers, one per shard, write the same ids (three milliseconds a minute ago, twelve
/// sequences each), then three "proxies" append through the real script concurrently.
async fn seed(app: &TestApp) -> Written {
    let fams = families(app);
    let base = now_ms() - 60_000;
    let mut by_rid = HashMap::new();
    let mut n = 0u64;
    for (s, family) in fams.iter().enumerate() {
        let mut entries = Vec::new();
        for ms in 0..3u64 {
            for seq in 0..12u64 {
                let mut e = synthetic(n);
                e.request_id = format!("fixed-{s}-{ms}-{seq}");
                n += 1;
                let id = format!("{}-{seq}", base + ms);
                by_rid.insert(
                    e.request_id.clone(),
                    (
                        Pos {
                            ms: base + ms,
                            seq,
                            shard: s as u16,
                        },
                        e.clone(),
                    ),
                );
                entries.push((id, e));
            }
        }
        xadd_shard(app, family, &entries).await;
    }
    // The proxies' path: the append script, three writers at once, one shard each.
    let script = redis::Script::new(APPEND_SCRIPT);
    let writes = fams.iter().enumerate().map(|(s, family)| {
        let script = script.clone();
        let batch: Vec<AccessLogEntry> = (0..20u64)
            .map(|i| {
                let mut e = synthetic(1000 + i);
                e.request_id = format!("live-{s}-{i}");
                e.proxy_id = format!("p{s}").into();
                e.ts = now_ms();
                e
            })
            .collect();
        async move {
            let mut con = redis_con(app).await;
            let added = append_batch(
                &mut con,
                &script,
                family,
                &format!("p{s}"),
                1,
                1_000_000,
                &batch,
            )
            .await
            .expect("append");
            assert_eq!(added, 20);
            batch
        }
    });
    let batches = futures::future::join_all(writes).await;
    // Their ids, read back per shard.
    let mut con = redis_con(app).await;
    for (s, (family, batch)) in fams.iter().zip(batches).enumerate() {
        let ids: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(family.stream())
            .arg(format!("{}", base + 10))
            .arg("+")
            .query_async(&mut con)
            .await
            .expect("XRANGE");
        assert_eq!(ids.len(), batch.len());
        for ((id, fields), e) in ids.into_iter().zip(batch) {
            assert_eq!(fields["request_id"], e.request_id);
            let (ms, seq) = id.split_once('-').expect("id");
            let pos = Pos {
                ms: ms.parse().expect("ms"),
                seq: seq.parse().expect("seq"),
                shard: s as u16,
            };
            by_rid.insert(e.request_id.clone(), (pos, e));
        }
    }
    // Settled: the reads below only return entries older than Redis's current millisecond.
    tokio::time::sleep(Duration::from_millis(5)).await;
    Written { by_rid }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_ids_across_shards_are_paged_exactly_once_in_id_shard_order() {
    let app = spawn_sharded().await;
    let admin = app.create_admin().await;
    let written = seed(&app).await;
    let total = written.by_rid.len();
    assert_eq!(total, 3 * 36 + 60);

    // Every entry once, in (id, shard) order, through small pages.
    let got = walk(&app, &admin, "limit=7").await;
    assert_newest_first_once(&got);
    assert_eq!(got, written.matching(|_| true));

    // Filters: indexed (country), unindexed (method), both.
    for (query, f) in [
        (
            "limit=4&country=FR",
            Box::new(|e: &AccessLogEntry| e.country == "FR")
                as Box<dyn Fn(&AccessLogEntry) -> bool>,
        ),
        ("limit=5&method=POST", Box::new(|e| e.method == "POST")),
        (
            "limit=3&method=GET&status=404",
            Box::new(|e| e.method == "GET" && e.status == 404),
        ),
    ] {
        let got = walk(&app, &admin, query).await;
        assert_newest_first_once(&got);
        let want = written.matching(f);
        assert!(!want.is_empty(), "{query}: the model must have matches");
        assert_eq!(got, want, "{query}");
    }

    // since=<id>~<shard>: exactly the positions above it.
    let fixed = written.by_rid["fixed-1-1-5"].0.clone();
    let since = format!("{}-{}~{}", fixed.ms, fixed.seq, fixed.shard);
    let got = walk(&app, &admin, &format!("limit=6&since={since}")).await;
    assert_eq!(got, written.matching_above(&fixed));
    // A bare id means the same id in every shard.
    let got = walk(
        &app,
        &admin,
        &format!("limit=6&since={}-{}", fixed.ms, fixed.seq),
    )
    .await;
    assert!(got
        .iter()
        .all(|(p, _)| (p.ms, p.seq) > (fixed.ms, fixed.seq)));
    assert_eq!(
        got.len(),
        written
            .by_rid
            .values()
            .filter(|(p, _)| (p.ms, p.seq) > (fixed.ms, fixed.seq))
            .count()
    );

    // A malformed cursor is a 400 and changes nothing.
    for bad in ["1-1~", "1-1~256", "1-1~x", "~1"] {
        let (status, body) =
            get_json(&app, &admin, &format!("/api/admin/access-log?before={bad}")).await;
        assert_error(status, &body, 400, "BAD_REQUEST");
    }
}

impl Written {
    fn matching_above(&self, p: &Pos) -> Vec<(Pos, String)> {
        let mut v = self.matching(|_| true);
        v.retain(|(q, _)| q > p);
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_arriving_while_paging_are_neither_skipped_nor_repeated() {
    let app = spawn_sharded().await;
    let admin = app.create_admin().await;
    let written = seed(&app).await;
    // Writers keep appending to every shard (ids of now, colliding whenever two land in the
    // same millisecond) while the walk runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (fams, stop) = (families(&app), stop.clone());
        let url = app.config.redis.url.clone();
        tokio::spawn(async move {
            let mut con = redis::Client::open(url.as_str())
                .expect("url")
                .get_multiplexed_async_connection()
                .await
                .expect("Redis must be reachable");
            let script = redis::Script::new(APPEND_SCRIPT);
            let mut seq = 10u64;
            let mut added = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seq += 1;
                for (s, family) in fams.iter().enumerate() {
                    let mut e = synthetic(seq);
                    e.request_id = format!("late-{s}-{seq}");
                    added += append_batch(
                        &mut con,
                        &script,
                        family,
                        &format!("p{s}"),
                        seq,
                        1_000_000,
                        &[e],
                    )
                    .await
                    .expect("append");
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            added
        })
    };
    let got = walk(&app, &admin, "limit=5").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let late = writer.await.expect("writer");
    assert!(late > 0, "entries must arrive while paging");
    assert_newest_first_once(&got);
    // The walk saw exactly the entries that existed when it began: every seeded one, and none
    // of those that arrived later (each sorts above its first page).
    let seeded: Vec<(Pos, String)> = got
        .iter()
        .filter(|(_, r)| !r.starts_with("late-"))
        .cloned()
        .collect();
    assert_eq!(seeded, written.matching(|_| true));

    // A since-poll from the newest position seen gets every later entry exactly once.
    let (first, _) = got.first().cloned().expect("items");
    let since = format!("{}-{}~{}", first.ms, first.seq, first.shard);
    let newer = walk(&app, &admin, &format!("limit=50&since={since}")).await;
    assert_newest_first_once(&newer);
    let all_late = walk(&app, &admin, "limit=500")
        .await
        .into_iter()
        .filter(|(p, _)| *p > first)
        .collect::<Vec<_>>();
    assert_eq!(newer, all_late);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_export_summary_stats_and_tail_read_every_shard() {
    let app = spawn_sharded().await;
    let admin = app.create_admin().await;
    let written = seed(&app).await;
    let total = written.by_rid.len();

    // By id: a bare id held by three shards is ambiguous; with its shard it is exact.
    let fixed = written.by_rid["fixed-2-0-3"].0.clone();
    let bare = format!("{}-{}", fixed.ms, fixed.seq);
    let (status, body) = get_json(&app, &admin, &format!("/api/admin/access-log/{bare}")).await;
    assert_error(status, &body, 409, "CONFLICT");
    let (status, item) = get_json(&app, &admin, &format!("/api/admin/access-log/{bare}~2")).await;
    assert_eq!(status, 200, "{item}");
    assert_eq!(item["request_id"], "fixed-2-0-3");
    assert_eq!(item["shard"], "2");
    let (status, _) = get_json(&app, &admin, &format!("/api/admin/access-log/{bare}~7")).await;
    assert_eq!(status, 404);

    // By request id, in whichever shard holds it.
    for rid in ["fixed-0-2-11", "live-1-7", "live-2-19"] {
        let (status, item) = get_json(
            &app,
            &admin,
            &format!("/api/admin/access-log/by-request-id/{rid}"),
        )
        .await;
        assert_eq!(status, 200, "{rid}: {item}");
        assert_eq!(item["request_id"], rid);
        assert_eq!(
            item["shard"],
            written.by_rid[rid].0.shard.to_string(),
            "{rid}"
        );
    }

    // Export: every shard, merged, once each.
    let body = app
        .get("/api/admin/access-log/export")
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("body");
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let (trailer, items) = lines.split_last().expect("trailer");
    assert_eq!(trailer["export"], "end");
    assert_eq!(trailer["count"], total);
    let exported: Vec<(Pos, String)> = items
        .iter()
        .map(|i| {
            (
                pos_of(i),
                i["request_id"].as_str().expect("rid").to_string(),
            )
        })
        .collect();
    assert_eq!(exported, written.matching(|_| true));

    // Summary: the window's totals over every shard.
    let (status, s) = get_json(&app, &admin, "/api/admin/access-log/summary?window=15m").await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["scanned"], total);
    let rejects = written
        .by_rid
        .values()
        .filter(|(_, e)| e.decision == watchpost_common::Decision::Reject)
        .count();
    assert_eq!(s["by_decision"]["reject"], rejects);

    // Stats: the per-minute counters the script wrote in each shard, summed.
    let (status, stats) = get_json(&app, &admin, "/api/admin/stats").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["gateway"]["requests_last_hour"], 60, "{stats}");

    // Tail: new entries from every shard, in (id, shard) order, with resumable ids.
    let mut tail = open_tail(&app, &admin, "").await;
    let script = redis::Script::new(APPEND_SCRIPT);
    let mut con = redis_con(&app).await;
    for (s, family) in families(&app).iter().enumerate() {
        let mut e = synthetic(5000 + s as u64);
        e.request_id = format!("tail-{s}");
        let added = append_batch(
            &mut con,
            &script,
            family,
            &format!("p{s}"),
            2,
            1_000_000,
            &[e],
        )
        .await
        .expect("append");
        assert_eq!(added, 1);
    }
    let mut buf = String::new();
    let events = read_entries(&mut tail, &mut buf, 3).await;
    let mut shards_seen = HashSet::new();
    let mut last: Option<Pos> = None;
    for ev in &events {
        let data: Value = serde_json::from_str(&ev.data).expect("data");
        let pos = pos_of(&data);
        assert_eq!(ev.id, format!("{}-{}~{}", pos.ms, pos.seq, pos.shard));
        assert_eq!(data["request_id"], format!("tail-{}", pos.shard));
        assert!(last.as_ref().is_none_or(|l| *l < pos), "tail order");
        last = Some(pos.clone());
        shards_seen.insert(pos.shard);
    }
    assert_eq!(shards_seen.len(), 3, "the tail reads every shard");
    drop(tail);
    // Resuming after the first event yields the other two.
    let mut resumed = open_tail(&app, &admin, &format!("since={}", events[0].id)).await;
    let mut buf = String::new();
    let again = read_entries(&mut resumed, &mut buf, 2).await;
    assert_eq!(
        again.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        events[1..].iter().map(|e| e.id.clone()).collect::<Vec<_>>()
    );
}

/// Pages filtered only by unindexed fields stop at the scan budget in each shard: the merged
/// page stays exact (short pages, never a skipped entry) across shards whose budgets run out
/// at different ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgeted_pages_stay_exact_across_shards() {
    let app = TestApp::builder()
        .configure(|c| {
            c.admin.rate_limit_per_minute = 1_000_000;
            c.admin.rate_limit_per_hour = 1_000_000;
            c.admin.access_log_scan_budget = 501;
            c.access_log.shards = Some(u64::from(SHARDS));
        })
        .spawn()
        .await;
    let admin = app.create_admin().await;
    let base = now_ms() - 120_000;
    let mut by_rid = HashMap::new();
    for (s, family) in families(&app).iter().enumerate() {
        let mut entries = Vec::new();
        // Shards of different lengths and densities, over the same ids.
        for i in 0..(1000 + 150 * s as u64) {
            let mut e = synthetic(i);
            e.request_id = format!("b-{s}-{i}");
            if i % (37 + 20 * s as u64) == 0 {
                e.host = "rare.test".into();
            }
            let (ms, seq) = (base + i / 12, i % 12);
            by_rid.insert(
                e.request_id.clone(),
                (
                    Pos {
                        ms,
                        seq,
                        shard: s as u16,
                    },
                    e.clone(),
                ),
            );
            entries.push((format!("{ms}-{seq}"), e));
        }
        xadd_shard(&app, family, &entries).await;
    }
    let written = Written { by_rid };
    for (query, f) in [
        (
            "limit=20&host=rare.test",
            Box::new(|e: &AccessLogEntry| e.host == "rare.test")
                as Box<dyn Fn(&AccessLogEntry) -> bool>,
        ),
        ("limit=50&method=POST", Box::new(|e| e.method == "POST")),
    ] {
        let got = walk(&app, &admin, query).await;
        assert_newest_first_once(&got);
        assert_eq!(got, written.matching(f), "{query}");
    }
}

/// After `shards` went from 1 to 3, the entries of the unsharded stream (registered by the
/// proxies that wrote it) are still read, merged in order under the shard `-`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_a_retired_layout_stay_readable() {
    let app = spawn_sharded().await;
    let admin = app.create_admin().await;
    let keys = Keys::new(app.key_prefix.clone());
    let base = now_ms() - 30_000;
    let old: Vec<(String, AccessLogEntry)> = (0..4u64)
        .map(|i| {
            let mut e = synthetic(i);
            e.request_id = format!("old-{i}");
            (format!("{}-{i}", base), e)
        })
        .collect();
    xadd_shard(&app, &keys.access(), &old).await;
    let new: Vec<(String, AccessLogEntry)> = (0..4u64)
        .map(|i| {
            let mut e = synthetic(i);
            e.request_id = format!("new-{i}");
            (format!("{}-{i}", base), e)
        })
        .collect();
    xadd_shard(&app, &families(&app)[1], &new).await;
    // Not registered: only the configured shards are read.
    let got = walk(&app, &admin, "limit=3").await;
    assert_eq!(got.len(), 4);
    let mut con = redis_con(&app).await;
    let _: () = redis::cmd("SADD")
        .arg(keys.access_family_registry())
        .arg("-")
        .query_async(&mut con)
        .await
        .expect("SADD");
    let (status, page) = get_json(&app, &admin, "/api/admin/access-log?limit=3").await;
    assert_eq!(status, 200);
    let shards: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["shard"].as_str().expect("shard"))
        .collect();
    // Same ids: shard `-` sorts before shard 0, so shard 1's entry comes first, newest first.
    assert_eq!(shards, ["1", "-", "1"]);
    let mut seen = Vec::new();
    let mut cursor = None::<String>;
    loop {
        let path = match &cursor {
            None => "/api/admin/access-log?limit=3".to_string(),
            Some(c) => format!("/api/admin/access-log?limit=3&before={c}"),
        };
        let (status, page) = get_json(&app, &admin, &path).await;
        assert_eq!(status, 200, "{page}");
        for i in page["items"].as_array().expect("items") {
            seen.push(i["request_id"].as_str().expect("rid").to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["new-3", "old-3", "new-2", "old-2", "new-1", "old-1", "new-0", "old-0"]
    );
    let (status, item) = get_json(&app, &admin, &format!("/api/admin/access-log/{base}-2~-")).await;
    assert_eq!(status, 200, "{item}");
    assert_eq!(item["request_id"], "old-2");
}

/// Batches land whole in one shard, so the newest entries are usually all in one shard: a page
/// reads a small share of every shard first and then the rest of the page from the shards whose
/// entries could still belong to it. Whatever shard holds them, every page but the last is
/// full, and the walk is the model's order exactly, unfiltered and with an indexed filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_full_when_the_newest_entries_sit_in_one_shard() {
    let app = spawn_sharded().await;
    let admin = app.create_admin().await;
    let fams = families(&app);
    let base = now_ms() - 60_000;
    let mut written = Written {
        by_rid: HashMap::new(),
    };
    let mut n = 0u64;
    // Shard 1 holds the newest 130 entries, shard 0 the 130 before them, shard 2 the oldest
    // 130; and every shard holds 5 entries of one shared millisecond below all of them.
    for (s, ms_offset, count) in [(1usize, 20u64, 130u64), (0, 10, 130), (2, 0, 130)] {
        let mut entries = Vec::new();
        for seq in 0..count {
            let mut e = synthetic(n);
            e.request_id = format!("clump-{s}-{seq}");
            n += 1;
            let (ms, seq) = (base + ms_offset, seq);
            written.by_rid.insert(
                e.request_id.clone(),
                (
                    Pos {
                        ms,
                        seq,
                        shard: s as u16,
                    },
                    e.clone(),
                ),
            );
            entries.push((format!("{ms}-{seq}"), e));
        }
        for seq in 0..5u64 {
            let mut e = synthetic(n);
            e.request_id = format!("shared-{s}-{seq}");
            n += 1;
            let ms = base - 5;
            written.by_rid.insert(
                e.request_id.clone(),
                (
                    Pos {
                        ms,
                        seq,
                        shard: s as u16,
                    },
                    e.clone(),
                ),
            );
            entries.push((format!("{ms}-{seq}"), e));
        }
        entries.sort_by_key(|(id, _)| {
            let (ms, seq) = id.split_once('-').expect("id");
            (
                ms.parse::<u64>().expect("ms"),
                seq.parse::<u64>().expect("seq"),
            )
        });
        xadd_shard(&app, &fams[s], &entries).await;
    }
    for limit in [1u32, 7, 50, 200] {
        let got = walk(&app, &admin, &format!("limit={limit}")).await;
        assert_newest_first_once(&got);
        assert_eq!(got, written.matching(|_| true), "limit={limit}");
        // Every page but the last is full: the walk took ceil(total / limit) pages.
        let mut pages = 0usize;
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                None => format!("/api/admin/access-log?limit={limit}"),
                Some(c) => format!("/api/admin/access-log?limit={limit}&before={c}"),
            };
            let (status, page) = get_json(&app, &admin, &path).await;
            assert_eq!(status, 200, "{page}");
            let items = page["items"].as_array().expect("items").len();
            pages += 1;
            match page["next_cursor"].as_str() {
                Some(c) => {
                    assert_eq!(items, limit as usize, "a page before the last is full");
                    cursor = Some(c.to_string());
                }
                None => break,
            }
        }
        assert_eq!(pages, got.len().div_ceil(limit as usize).max(1));
    }
    // An indexed filter: status 404 is every tenth synthetic entry.
    let got = walk(&app, &admin, "limit=9&status=404").await;
    assert_newest_first_once(&got);
    assert_eq!(got, written.matching(|e| e.status == 404));
    assert!(got.len() > 30, "the filter matches in every shard");
}
