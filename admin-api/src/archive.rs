//! `watchpost-admin archive`: history that outlives the access-log stream.
//!
//! The archiver reads the stream through a consumer group (`[archive] group`, created at the
//! start of the stream when missing) and appends every entry, as one JSON line
//! ([`ArchivedEntry`]: the stream id and the entry's fields), to the gzip file of the UTC hour
//! of its stream id: `<dir>/access-YYYY-MM-DDTHH.ndjson.gz`. Each round writes the round's
//! entries of one hour as one complete gzip member (a file is a concatenation of members, which
//! any gzip reader reads as one stream), `fsync`s the file (and the directory when the file is
//! new), and only then acknowledges the entries (`XACK`).
//!
//! Delivery: the stream is read at least once; the files hold every entry exactly once.
//! After a crash, entries delivered but not acknowledged are read again (the archiver first
//! re-reads its own pending entries, under the same `[archive] consumer` name). Before
//! appending to a file the archiver opens for the first time, it reads it back: a torn last
//! member (a crash in the middle of a write) is cut off, and the highest id in the file is
//! remembered so that entries already on disk are acknowledged without being written again.
//! [`read_range`] also skips any repeated id.
//!
//! Entries trimmed from the stream before they were archived are detected and counted: before
//! each read of new entries, the stream's `entries-added` less its length is the number of
//! entries ever removed; when that exceeds the group's `entries-read`, the difference was
//! trimmed before the group read it (`watchpost_archive_trimmed_before_archived_total`).
//! Pending entries trimmed before they were written come back without fields and are counted
//! the same way.
//!
//! Shards (`[access_log] shards`): every stream of the log is archived on its own, through a
//! consumer group of the same name on each, each with its own connection, files and
//! acknowledgements, all concurrently (one future per stream in the archiver's task: a shard
//! whose read blocks, lags or fails on Redis holds up no other; the shards' writes and fsyncs
//! take turns). A shard no longer configured but still registered is archived until its
//! stream is gone. Ids repeat across shards, so
//! each shard's files live in a directory of its own ([`family_dir`]): `<dir>/shard-<n>/`;
//! the unsharded stream, and the only stream of a one-shard log, keep `<dir>` itself (the
//! layout of a one-shard archive is unchanged). A file therefore never mixes shards.
//!
//! Metrics (on `[archive] metrics_listen`, `GET /metrics`), each per shard (label `shard`):
//! entries behind (the group's lag plus its pending entries), the age of the oldest entry not
//! yet archived, entries and files written, trimmed entries and gaps.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::write::GzEncoder;
use flate2::Compression;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use watchpost_common::keys::AccessKeys;
use watchpost_common::{AccessLogEntry, Keys};
use watchpost_common::{ConnOptions, RedisConn, RedisTarget};

use crate::config::ArchiveConfig;
use crate::StartupError;

/// One archived line: the stream id, then the entry's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchivedEntry {
    /// The entry's stream id (`<ms>-<seq>`).
    pub id: String,
    #[serde(flatten)]
    pub entry: AccessLogEntry,
}

/// A stream id, ordered like Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// Parses `<ms>-<seq>` (or `<ms>`).
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-').unwrap_or((text, "0"));
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The hour (ms since the epoch, a multiple of 3 600 000) holding `ms`.
fn hour_of(ms: u64) -> u64 {
    ms - ms % 3_600_000
}

/// `access-YYYY-MM-DDTHH.ndjson.gz` for the UTC hour holding `ms`.
pub fn file_name(ms: u64) -> String {
    let secs = i64::try_from(hour_of(ms) / 1000).unwrap_or(i64::MAX);
    let hour = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
    format!("access-{}.ndjson.gz", hour.format("%Y-%m-%dT%H"))
}

/// The hour (ms) a file name stands for, or `None` for any other name.
pub fn hour_of_file(name: &str) -> Option<u64> {
    let stamp = name.strip_prefix("access-")?.strip_suffix(".ndjson.gz")?;
    let t = chrono::NaiveDateTime::parse_from_str(&format!("{stamp}:00:00"), "%Y-%m-%dT%H:%M:%S")
        .ok()?;
    u64::try_from(t.and_utc().timestamp_millis()).ok()
}

/// A reader that counts the bytes consumed from it (to find where a gzip member ends).
struct Counting<R> {
    inner: R,
    consumed: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counting<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.consumed += amt as u64;
        self.inner.consume(amt);
    }
}

/// Reads an archive file one gzip member at a time.
struct Members {
    reader: Option<Counting<BufReader<File>>>,
    /// End offset of the last complete, readable member.
    good_end: u64,
    path: PathBuf,
}

impl Members {
    fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            reader: Some(Counting {
                inner: BufReader::with_capacity(64 * 1024, File::open(path)?),
                consumed: 0,
            }),
            good_end: 0,
            path: path.to_path_buf(),
        })
    }

    /// The next member's entries; `None` at the end of the file or at a torn or unreadable
    /// member (everything after it is ignored; `good_end` is where it starts).
    fn next_member(&mut self) -> Option<Vec<ArchivedEntry>> {
        let mut reader = self.reader.take()?;
        match reader.fill_buf() {
            Ok([]) => return None,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "archive: read failed");
                return None;
            }
        }
        let mut decoder = flate2::bufread::GzDecoder::new(reader);
        let mut text = Vec::new();
        if let Err(e) = decoder.read_to_end(&mut text) {
            tracing::warn!(
                path = %self.path.display(),
                offset = self.good_end,
                error = %e,
                "archive: torn or unreadable gzip member; the rest of the file is ignored"
            );
            return None;
        }
        let mut entries = Vec::new();
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<ArchivedEntry>(line) {
                Ok(e) => entries.push(e),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "archive: unreadable line");
                    return None;
                }
            }
        }
        let reader = decoder.into_inner();
        self.good_end = reader.consumed;
        self.reader = Some(reader);
        Some(entries)
    }
}

/// Entries of the archive in `dir` whose stream id is within `from_ms ..= to_ms`, oldest
/// first, each id once (a repeated id is skipped). Files are read one gzip member at a time,
/// so memory stays flat. Unreadable files or members end that file's contribution (logged).
pub fn read_range(
    dir: impl AsRef<Path>,
    from_ms: u64,
    to_ms: u64,
) -> io::Result<impl Iterator<Item = ArchivedEntry>> {
    let files = files_in_range(dir.as_ref(), from_ms, to_ms)?;
    Ok(RangeReader {
        files: files.into(),
        current: None,
        pending: VecDeque::new(),
        last: None,
        from_ms,
        to_ms,
    })
}

/// [`read_range`] newest first: the files are taken newest hour first and each hour's
/// matching entries are held in memory and given back newest first (memory holds one hour's
/// matches).
pub fn read_range_newest_first(
    dir: impl AsRef<Path>,
    from_ms: u64,
    to_ms: u64,
) -> io::Result<impl Iterator<Item = ArchivedEntry>> {
    let mut files = files_in_range(dir.as_ref(), from_ms, to_ms)?;
    files.reverse();
    Ok(files.into_iter().flat_map(move |path| {
        let mut hour: Vec<ArchivedEntry> = RangeReader {
            files: VecDeque::from([path]),
            current: None,
            pending: VecDeque::new(),
            last: None,
            from_ms,
            to_ms,
        }
        .collect();
        hour.reverse();
        hour
    }))
}

/// [`read_range_newest_first`] keeping only the entries `keep` accepts, in constant memory:
/// each file is read twice, first to find where its gzip members start (and, for each, the
/// highest id before it, so that a repeated id is skipped exactly as [`read_range`] skips it),
/// then one member at a time from the last, each member's kept entries given back newest
/// first. Memory holds one member (one archiver round of one hour). A missing `dir` is an empty
/// archive.
pub fn read_matches_newest_first<F>(
    dir: impl AsRef<Path>,
    from_ms: u64,
    to_ms: u64,
    keep: F,
) -> io::Result<impl Iterator<Item = ArchivedEntry>>
where
    F: Fn(&ArchivedEntry) -> bool,
{
    let mut files = match files_in_range(dir.as_ref(), from_ms, to_ms) {
        Ok(files) => files,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    files.reverse();
    let keep = std::rc::Rc::new(keep);
    Ok(files.into_iter().flat_map(move |path| {
        let mut members = member_starts(&path);
        members.reverse();
        let path2 = path.clone();
        let keep = keep.clone();
        members.into_iter().flat_map(move |(offset, max_before)| {
            let mut last = max_before;
            let mut kept: Vec<ArchivedEntry> = read_member_at(&path2, offset)
                .into_iter()
                .filter(|e| {
                    let Some(id) = StreamId::parse(&e.id) else {
                        return false;
                    };
                    if last.is_some_and(|l| id <= l) {
                        return false;
                    }
                    last = Some(id);
                    id.ms >= from_ms && id.ms <= to_ms && keep(e)
                })
                .collect();
            kept.reverse();
            kept
        })
    }))
}

/// The start offset of each readable gzip member of `path`, with the highest stream id of the
/// members before it. Stops at a torn or unreadable member, as [`read_range`] does.
fn member_starts(path: &Path) -> Vec<(u64, Option<StreamId>)> {
    let mut out = Vec::new();
    let mut members = match Members::open(path) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "archive: cannot open");
            return out;
        }
    };
    let mut max: Option<StreamId> = None;
    loop {
        let start = members.good_end;
        let Some(entries) = members.next_member() else {
            break;
        };
        out.push((start, max));
        let top = entries.iter().filter_map(|e| StreamId::parse(&e.id)).max();
        max = max.max(top);
    }
    out
}

/// The entries of the gzip member starting at `offset` of `path` (empty when unreadable).
fn read_member_at(path: &Path, offset: u64) -> Vec<ArchivedEntry> {
    use std::io::{Seek, SeekFrom};
    let read = || -> io::Result<Option<Vec<ArchivedEntry>>> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut members = Members {
            reader: Some(Counting {
                inner: BufReader::with_capacity(64 * 1024, file),
                consumed: offset,
            }),
            good_end: offset,
            path: path.to_path_buf(),
        };
        Ok(members.next_member())
    };
    match read() {
        Ok(Some(entries)) => entries,
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "archive: cannot read a member");
            Vec::new()
        }
    }
}

/// Archive files whose hour meets `from_ms ..= to_ms`, oldest first.
fn files_in_range(dir: &Path, from_ms: u64, to_ms: u64) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<(u64, PathBuf)> = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        let Some(hour) = name.to_str().and_then(hour_of_file) else {
            continue;
        };
        if hour <= to_ms && hour.saturating_add(3_599_999) >= from_ms {
            files.push((hour, item.path()));
        }
    }
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

struct RangeReader {
    files: VecDeque<PathBuf>,
    current: Option<Members>,
    pending: VecDeque<ArchivedEntry>,
    last: Option<StreamId>,
    from_ms: u64,
    to_ms: u64,
}

impl Iterator for RangeReader {
    type Item = ArchivedEntry;

    fn next(&mut self) -> Option<ArchivedEntry> {
        loop {
            while let Some(e) = self.pending.pop_front() {
                let Some(id) = StreamId::parse(&e.id) else {
                    continue;
                };
                if self.last.is_some_and(|last| id <= last) {
                    continue;
                }
                self.last = Some(id);
                if id.ms >= self.from_ms && id.ms <= self.to_ms {
                    return Some(e);
                }
            }
            match self.current.as_mut().map(Members::next_member) {
                Some(Some(entries)) => self.pending.extend(entries),
                _ => {
                    let path = self.files.pop_front()?;
                    self.current = match Members::open(&path) {
                        Ok(m) => Some(m),
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "archive: cannot open");
                            None
                        }
                    };
                }
            }
        }
    }
}

/// A gauge with one series per shard (label `shard`: the family's label, `-` for the
/// unsharded stream). [`ShardGauge::get`] combines the shards' values: the sum for counts of
/// entries, the largest for ages.
#[derive(Clone)]
pub struct ShardGauge {
    vec: IntGaugeVec,
    max: bool,
    children: Arc<Mutex<BTreeMap<String, IntGauge>>>,
}

impl ShardGauge {
    /// The series of shard `label`.
    pub fn shard(&self, label: &str) -> IntGauge {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children
            .entry(label.to_string())
            .or_insert_with(|| self.vec.with_label_values(&[label]))
            .clone()
    }

    /// Every shard's value combined: the sum (entries) or the largest (ages).
    pub fn get(&self) -> i64 {
        let children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        let values = children.values().map(IntGauge::get);
        if self.max {
            values.max().unwrap_or(0)
        } else {
            values.sum()
        }
    }
}

/// A counter with one series per shard (label `shard`); [`ShardCounter::get`] is the sum.
#[derive(Clone)]
pub struct ShardCounter {
    vec: IntCounterVec,
    children: Arc<Mutex<BTreeMap<String, IntCounter>>>,
}

impl ShardCounter {
    /// The series of shard `label`.
    pub fn shard(&self, label: &str) -> IntCounter {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children
            .entry(label.to_string())
            .or_insert_with(|| self.vec.with_label_values(&[label]))
            .clone()
    }

    /// The sum over shards.
    pub fn get(&self) -> u64 {
        let children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children.values().map(IntCounter::get).sum()
    }
}

/// The archiver's metrics (`watchpost_archive_*`), each with a `shard` label (the family's
/// label: `-` for the unsharded stream, else the shard number), so that an alert names the
/// shard that is behind.
#[derive(Clone)]
pub struct ArchiveMetrics {
    registry: Registry,
    /// Entries not yet archived: the group's lag plus its pending entries.
    pub lag_entries: ShardGauge,
    /// Seconds since the oldest entry not yet archived was added (0 when none).
    pub oldest_unarchived_age_seconds: ShardGauge,
    /// Entries written to the archive.
    pub entries_total: ShardCounter,
    /// Archive files created.
    pub files_total: ShardCounter,
    /// Entries trimmed from the stream before they were archived.
    pub trimmed_before_archived_total: ShardCounter,
    /// Times a trim was seen to overtake the archiver (whether or not it could be counted).
    pub gaps_total: ShardCounter,
}

impl ArchiveMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("watchpost_archive".into()), None)?;
        let gauge = |name: &str, help: &str, max: bool| -> Result<ShardGauge, prometheus::Error> {
            let vec = IntGaugeVec::new(Opts::new(name, help), &["shard"])?;
            registry.register(Box::new(vec.clone()))?;
            Ok(ShardGauge {
                vec,
                max,
                children: Arc::default(),
            })
        };
        let counter = |name: &str, help: &str| -> Result<ShardCounter, prometheus::Error> {
            let vec = IntCounterVec::new(Opts::new(name, help), &["shard"])?;
            registry.register(Box::new(vec.clone()))?;
            Ok(ShardCounter {
                vec,
                children: Arc::default(),
            })
        };
        Ok(Self {
            lag_entries: gauge(
                "lag_entries",
                "Access-log entries not yet archived (group lag plus pending), per shard.",
                false,
            )?,
            oldest_unarchived_age_seconds: gauge(
                "oldest_unarchived_age_seconds",
                "Age of the oldest access-log entry not yet archived, per shard.",
                true,
            )?,
            entries_total: counter("entries_total", "Access-log entries archived.")?,
            files_total: counter("files_total", "Archive files created.")?,
            trimmed_before_archived_total: counter(
                "trimmed_before_archived_total",
                "Access-log entries trimmed from the stream before they were archived.",
            )?,
            gaps_total: counter(
                "gaps_total",
                "Times the stream's trimming overtook the archiver.",
            )?,
            registry,
        })
    }

    /// The series of one shard.
    fn for_shard(&self, label: &str) -> ShardMetrics {
        ShardMetrics {
            lag_entries: self.lag_entries.shard(label),
            oldest_unarchived_age_seconds: self.oldest_unarchived_age_seconds.shard(label),
            entries_total: self.entries_total.shard(label),
            files_total: self.files_total.shard(label),
            trimmed_before_archived_total: self.trimmed_before_archived_total.shard(label),
            gaps_total: self.gaps_total.shard(label),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

/// One shard's series of [`ArchiveMetrics`].
struct ShardMetrics {
    lag_entries: IntGauge,
    oldest_unarchived_age_seconds: IntGauge,
    entries_total: IntCounter,
    files_total: IntCounter,
    trimmed_before_archived_total: IntCounter,
    gaps_total: IntCounter,
}

/// An archive file open for appending.
struct OpenFile {
    file: File,
    /// Highest id on disk in this file: entries up to it are already archived.
    max_id: Option<StreamId>,
}

/// The archiver: one [`ShardArchiver`] per archived stream, run concurrently.
pub struct Archiver {
    shards: Vec<ShardArchiver>,
}

/// The archiver of one stream (one shard's family): its own connection, consumer group,
/// directory and open files.
pub struct ShardArchiver {
    con: RedisConn,
    stream: String,
    /// The family's label (`-` unsharded, else the shard number): the metrics' `shard`.
    label: String,
    /// Not configured (a shard still registered after `shards` changed): done with once its
    /// stream is gone.
    retired: bool,
    cfg: ArchiveConfig,
    dir: PathBuf,
    files: HashMap<u64, OpenFile>,
    metrics: ShardMetrics,
}

/// The directory of `family`'s archive under `base`: `base` itself for the unsharded family
/// and for the only family of a one-shard log (so a one-shard archive keeps its layout),
/// `base/shard-<n>` for shard `n` otherwise. `configured` is the configured families
/// ([`watchpost_common::keys::access_families`]).
pub fn family_dir(base: &Path, family: &AccessKeys, configured: &[AccessKeys]) -> PathBuf {
    match family.shard() {
        None => base.to_path_buf(),
        Some(_) if configured.len() == 1 && configured[0] == *family => base.to_path_buf(),
        Some(n) => base.join(format!("shard-{n}")),
    }
}

/// The shard numbers of the `shard-<n>` directories under `base` (none when it is missing).
pub fn shard_dirs(base: &Path) -> io::Result<Vec<u16>> {
    let items = match std::fs::read_dir(base) {
        Ok(items) => items,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for item in items {
        let item = item?;
        let name = item.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("shard-"))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u16>().ok())
        else {
            continue;
        };
        if n < watchpost_common::keys::MAX_ACCESS_SHARDS && item.file_type()?.is_dir() {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// True when `base` itself holds archive files (`access-….ndjson.gz`).
pub fn has_files(base: &Path) -> io::Result<bool> {
    match files_in_range(base, 0, u64::MAX) {
        Ok(files) => Ok(!files.is_empty()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// One delivered stream entry: its id and fields (`None` when trimmed while pending).
type Delivered = (String, Option<HashMap<String, String>>);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn redis_err(e: redis::RedisError) -> StartupError {
    StartupError::Redis(e.to_string())
}

/// A connection of the archiver's (each shard has its own: a blocking `XREADGROUP` on one
/// shard must not hold up the others' commands).
async fn connect(redis: &RedisTarget, cfg: &ArchiveConfig) -> Result<RedisConn, StartupError> {
    Ok(match redis {
        RedisTarget::Node(url) => {
            let client = redis::Client::open(url.as_str()).map_err(redis_err)?;
            RedisConn::Node(ConnectionManager::new(client).await.map_err(redis_err)?)
        }
        RedisTarget::Cluster(_) => redis
            .connect(ConnOptions {
                connect_timeout: Duration::from_secs(1),
                // `XREADGROUP … BLOCK` holds a reply for up to `block_ms`.
                response_timeout: Duration::from_millis(cfg.block_ms) + Duration::from_secs(2),
                retries: 3,
                max_delay: Duration::from_secs(1),
            })
            .await
            .map_err(redis_err)?,
    })
}

impl Archiver {
    /// The archiver of the unsharded stream ([`Keys::access`]), into `[archive] dir` itself.
    pub async fn new(
        redis: &RedisTarget,
        keys: &Keys,
        cfg: &ArchiveConfig,
        metrics: ArchiveMetrics,
    ) -> Result<Self, StartupError> {
        let family = [keys.access()];
        Self::for_families(redis, &family, &family, cfg, metrics).await
    }

    /// The archiver of a log of `shards` shards (`[access_log] shards`): every configured
    /// family, and every family still registered by the proxies (shards no longer configured,
    /// until their streams are gone), each into its [`family_dir`].
    pub async fn sharded(
        redis: &RedisTarget,
        keys: &Keys,
        shards: Option<u16>,
        cfg: &ArchiveConfig,
        metrics: ArchiveMetrics,
    ) -> Result<Self, StartupError> {
        let configured = watchpost_common::keys::access_families(keys, shards);
        let mut con = connect(redis, cfg).await?;
        let registered: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys.access_family_registry())
            .query_async(&mut con)
            .await
            .map_err(redis_err)?;
        let mut families = configured.clone();
        for label in registered {
            if let Some(f) = keys.access_family(&label) {
                if !families.contains(&f) {
                    families.push(f);
                }
            }
        }
        families.sort_by_key(|f| f.shard().map_or(0, |s| u32::from(s) + 1));
        Self::for_families(redis, &families, &configured, cfg, metrics).await
    }

    /// The archiver of `families`, each into its [`family_dir`] (`configured`: the configured
    /// families), through the consumer group `[archive] group` of each stream (created at the
    /// stream's start when missing).
    pub async fn for_families(
        redis: &RedisTarget,
        families: &[AccessKeys],
        configured: &[AccessKeys],
        cfg: &ArchiveConfig,
        metrics: ArchiveMetrics,
    ) -> Result<Self, StartupError> {
        if cfg.dir.is_empty() {
            return Err(StartupError::Config(
                "[archive] dir: required by `archive` (the directory of the archive files)".into(),
            ));
        }
        let base = PathBuf::from(&cfg.dir);
        let mut shards = Vec::with_capacity(families.len());
        for family in families {
            let dir = family_dir(&base, family, configured);
            std::fs::create_dir_all(&dir)?;
            let mut con = connect(redis, cfg).await?;
            let stream = family.stream();
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream)
                .arg(&cfg.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut con)
                .await;
            let label = family.label();
            match created {
                Ok(()) => {
                    tracing::info!(group = %cfg.group, shard = %label, "archive: consumer group created")
                }
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(redis_err(e)),
            }
            shards.push(ShardArchiver {
                con,
                stream,
                metrics: metrics.for_shard(&label),
                retired: !configured.contains(family),
                label,
                cfg: cfg.clone(),
                dir,
                files: HashMap::new(),
            });
        }
        Ok(Self { shards })
    }

    /// The directories written, one per stream archived.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.shards.iter().map(|s| s.dir.clone()).collect()
    }

    /// Archives every stream concurrently (each read, written and acknowledged on its own)
    /// until `shutdown` resolves; each stream's round in progress is finished (written,
    /// synced, acknowledged) first. Returns the entries archived. A failure other than Redis's
    /// (the disk) stops every stream: what was not acknowledged is read again on restart.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<u64, StartupError> {
        let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
        let runs = self.shards.into_iter().map(|s| s.run(shutdown.clone()));
        let archived = futures::future::try_join_all(runs).await?;
        Ok(archived.into_iter().sum())
    }
}

impl ShardArchiver {
    /// Archives until `shutdown` resolves; the round in progress is finished (written, synced,
    /// acknowledged) first. Returns the entries archived.
    async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<u64, StartupError> {
        tokio::pin!(shutdown);
        let mut archived = 0u64;
        // Our own pending entries first (delivered before a crash, never acknowledged).
        let mut backlog = true;
        loop {
            let round = async {
                if !backlog {
                    self.check_gap().await?;
                }
                let got = self.read(if backlog { "0" } else { ">" }).await?;
                if backlog && got.is_empty() {
                    backlog = false;
                }
                let n = self.archive(got).await?;
                self.update_lag().await?;
                Ok::<u64, StartupError>(n)
            };
            // A round ends within `[archive] block_ms` when nothing is new; shutdown is checked
            // between rounds, so the round in progress always completes (written, synced,
            // acknowledged).
            match round.await {
                Ok(n) => archived += n,
                Err(StartupError::Redis(e)) if self.retired && e.contains("NOGROUP") => {
                    // A shard no longer configured whose stream the proxies deleted once it was
                    // empty (and unregistered): nothing is left to archive.
                    tracing::info!(shard = %self.label, "archive: retired shard's stream is gone; done with it");
                    break;
                }
                Err(StartupError::Redis(e)) => {
                    tracing::warn!(error = %e, shard = %self.label, "archive: Redis failed; retrying");
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Err(e) => return Err(e),
            }
            if futures::FutureExt::now_or_never(&mut shutdown).is_some() {
                break;
            }
        }
        tracing::info!(archived, shard = %self.label, "archive: stopped");
        Ok(archived)
    }

    /// One `XREADGROUP` of at most `[archive] batch` entries after `from` (`0`: own pending,
    /// `>`: new).
    async fn read(&mut self, from: &str) -> Result<Vec<Delivered>, StartupError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.cfg.group)
            .arg(&self.cfg.consumer)
            .arg("COUNT")
            .arg(self.cfg.batch);
        if from == ">" {
            cmd.arg("BLOCK").arg(self.cfg.block_ms);
        }
        cmd.arg("STREAMS").arg(&self.stream).arg(from);
        let reply: redis::Value = cmd.query_async(&mut self.con).await.map_err(redis_err)?;
        Ok(decode_group_reply(reply))
    }

    /// Writes, syncs and acknowledges one round; returns the entries newly written.
    async fn archive(&mut self, got: Vec<Delivered>) -> Result<u64, StartupError> {
        if got.is_empty() {
            return Ok(0);
        }
        let mut ack: Vec<String> = Vec::with_capacity(got.len());
        let mut per_hour: BTreeMap<u64, Vec<ArchivedEntry>> = BTreeMap::new();
        let mut trimmed = 0u64;
        for (id, fields) in got {
            let Some(sid) = StreamId::parse(&id) else {
                ack.push(id);
                continue;
            };
            match fields {
                None => trimmed += 1,
                Some(fields) => match AccessLogEntry::from_fields(&fields) {
                    Ok(entry) => per_hour
                        .entry(hour_of(sid.ms))
                        .or_default()
                        .push(ArchivedEntry {
                            id: id.clone(),
                            entry,
                        }),
                    Err(e) => {
                        tracing::warn!(stream.id = %id, error = %e, "archive: skipping unreadable entry");
                    }
                },
            }
            ack.push(id);
        }
        if trimmed > 0 {
            tracing::warn!(
                trimmed,
                "archive: pending entries were trimmed before they were archived"
            );
            self.metrics.trimmed_before_archived_total.inc_by(trimmed);
            self.metrics.gaps_total.inc();
        }
        let mut written = 0u64;
        for (hour, entries) in per_hour {
            written += self.append(hour, entries)?;
        }
        // Everything is on disk: acknowledge.
        for chunk in ack.chunks(1000) {
            let _: u64 = redis::cmd("XACK")
                .arg(&self.stream)
                .arg(&self.cfg.group)
                .arg(chunk)
                .query_async(&mut self.con)
                .await
                .map_err(redis_err)?;
        }
        self.metrics.entries_total.inc_by(written);
        Ok(written)
    }

    /// Appends the entries of one hour (ids ascending) as one gzip member and syncs the file.
    fn append(&mut self, hour: u64, entries: Vec<ArchivedEntry>) -> Result<u64, StartupError> {
        if !self.files.contains_key(&hour) {
            let opened = self.open(hour)?;
            self.files.insert(hour, opened);
        }
        // Only the current and the previous hour stay open.
        let newest = self.files.keys().max().copied().unwrap_or(hour);
        self.files
            .retain(|h, _| *h == hour || *h + 3_600_000 >= newest);
        let Some(file) = self.files.get_mut(&hour) else {
            return Ok(0);
        };
        let mut gz = GzEncoder::new(Vec::with_capacity(64 * 1024), Compression::fast());
        let mut n = 0u64;
        let mut max = file.max_id;
        for e in &entries {
            let Some(id) = StreamId::parse(&e.id) else {
                continue;
            };
            if max.is_some_and(|m| id <= m) {
                // Already on disk (written before a crash, not acknowledged).
                continue;
            }
            serde_json::to_writer(&mut gz, e).map_err(|e| StartupError::Io(e.into()))?;
            gz.write_all(b"\n")?;
            max = Some(id);
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        let bytes = gz.finish()?;
        file.file.write_all(&bytes)?;
        file.file.sync_data()?;
        file.max_id = max;
        Ok(n)
    }

    /// Opens an hour's file for appending: an existing one is read back first (a torn last
    /// member is cut off; its highest id is remembered); a new one is created and the
    /// directory synced.
    fn open(&mut self, hour: u64) -> Result<OpenFile, StartupError> {
        let path = self.dir.join(file_name(hour));
        if path.exists() {
            let mut members = Members::open(&path)?;
            let mut max_id = None;
            while let Some(entries) = members.next_member() {
                for e in entries {
                    if let Some(id) = StreamId::parse(&e.id) {
                        max_id = max_id.max(Some(id));
                    }
                }
            }
            let file = OpenOptions::new().append(true).open(&path)?;
            let len = file.metadata()?.len();
            if len > members.good_end {
                tracing::warn!(
                    path = %path.display(),
                    cut = len - members.good_end,
                    "archive: cutting off a torn end (its entries are archived again)"
                );
                file.set_len(members.good_end)?;
                file.sync_all()?;
            }
            Ok(OpenFile { file, max_id })
        } else {
            let file = OpenOptions::new().append(true).create(true).open(&path)?;
            File::open(&self.dir)?.sync_all()?;
            self.metrics.files_total.inc();
            Ok(OpenFile { file, max_id: None })
        }
    }

    /// Counts entries trimmed from the stream before the group read them (see the module
    /// docs).
    async fn check_gap(&mut self) -> Result<(), StartupError> {
        let Some((stream, group)) = self.info().await? else {
            return Ok(());
        };
        let first = stream.first_id;
        let last_delivered = group.last_delivered;
        if let (Some(first), Some(last)) = (first, last_delivered) {
            if first > last && !(last.ms == 0 && last.seq == 0 && stream.removed == 0) {
                let lost = group
                    .entries_read
                    .map(|read| stream.removed.saturating_sub(read));
                match lost {
                    Some(0) => return Ok(()),
                    Some(n) => self.metrics.trimmed_before_archived_total.inc_by(n),
                    None => {}
                }
                self.metrics.gaps_total.inc();
                tracing::warn!(
                    last_archived = %last,
                    stream_first = %first,
                    lost = ?lost,
                    "archive: entries were trimmed from the stream before they were archived"
                );
            }
        }
        Ok(())
    }

    /// Updates the lag gauges.
    async fn update_lag(&mut self) -> Result<(), StartupError> {
        let Some((_, group)) = self.info().await? else {
            return Ok(());
        };
        let lag = group.lag.unwrap_or(0) + group.pending;
        self.metrics
            .lag_entries
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
        // The oldest unarchived entry: the oldest pending one, else the first undelivered.
        let oldest = if group.pending > 0 {
            let summary: (u64, Option<String>, Option<String>, redis::Value) =
                redis::cmd("XPENDING")
                    .arg(&self.stream)
                    .arg(&self.cfg.group)
                    .query_async(&mut self.con)
                    .await
                    .map_err(redis_err)?;
            summary.1.as_deref().and_then(StreamId::parse)
        } else {
            let after = group
                .last_delivered
                .map_or("-".to_string(), |id| format!("({id}"));
            let next: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
                .arg(&self.stream)
                .arg(after)
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut self.con)
                .await
                .map_err(redis_err)?;
            next.first().and_then(|(id, _)| StreamId::parse(id))
        };
        let age = oldest.map_or(0, |id| now_ms().saturating_sub(id.ms) / 1000);
        self.metrics
            .oldest_unarchived_age_seconds
            .set(i64::try_from(age).unwrap_or(i64::MAX));
        Ok(())
    }

    /// `XINFO STREAM` and this group's `XINFO GROUPS` row.
    async fn info(&mut self) -> Result<Option<(StreamInfo, GroupInfo)>, StartupError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XINFO")
            .arg("STREAM")
            .arg(&self.stream)
            .cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.stream);
        let reply: Result<(redis::Value, redis::Value), _> = pipe.query_async(&mut self.con).await;
        let (s, g) = match reply {
            Ok(r) => r,
            Err(e) if e.code() == Some("ERR") => return Ok(None),
            Err(e) => return Err(redis_err(e)),
        };
        let s = flat_map(s);
        let stream = StreamInfo {
            removed: int(s.get("entries-added")).saturating_sub(int(s.get("length"))),
            first_id: match s.get("first-entry") {
                Some(redis::Value::Array(e)) => {
                    e.first().and_then(text).and_then(|t| StreamId::parse(&t))
                }
                _ => None,
            },
        };
        let groups = match g {
            redis::Value::Array(items) => items,
            _ => Vec::new(),
        };
        for item in groups {
            let m = flat_map(item);
            if m.get("name").and_then(text).as_deref() == Some(self.cfg.group.as_str()) {
                let group = GroupInfo {
                    last_delivered: m
                        .get("last-delivered-id")
                        .and_then(text)
                        .and_then(|t| StreamId::parse(&t)),
                    entries_read: m.get("entries-read").and_then(opt_int),
                    lag: m.get("lag").and_then(opt_int),
                    pending: int(m.get("pending")),
                };
                return Ok(Some((stream, group)));
            }
        }
        Ok(None)
    }
}

struct StreamInfo {
    /// Entries ever removed (trimmed or deleted): `entries-added - length`.
    removed: u64,
    first_id: Option<StreamId>,
}

struct GroupInfo {
    last_delivered: Option<StreamId>,
    entries_read: Option<u64>,
    lag: Option<u64>,
    pending: u64,
}

fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn opt_int(v: &redis::Value) -> Option<u64> {
    match v {
        redis::Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)?.parse().ok(),
    }
}

fn int(v: Option<&redis::Value>) -> u64 {
    v.and_then(opt_int).unwrap_or(0)
}

/// A flat `[key, value, …]` reply (RESP2) or a map (RESP3) as a map.
fn flat_map(v: redis::Value) -> HashMap<String, redis::Value> {
    match v {
        redis::Value::Array(items) => {
            let mut out = HashMap::new();
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let Some(k) = text(&k) {
                    out.insert(k, v);
                }
            }
            out
        }
        redis::Value::Map(pairs) => pairs
            .into_iter()
            .filter_map(|(k, v)| Some((text(&k)?, v)))
            .collect(),
        _ => HashMap::new(),
    }
}

/// The entries of a one-stream `XREADGROUP` reply; an entry trimmed while pending has no
/// fields (`None`).
fn decode_group_reply(reply: redis::Value) -> Vec<Delivered> {
    use redis::Value;
    let streams = match reply {
        Value::Array(s) => s,
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for s in streams {
        let Value::Array(mut parts) = s else { continue };
        if parts.len() < 2 {
            continue;
        }
        let Value::Array(entries) = parts.swap_remove(1) else {
            continue;
        };
        for e in entries {
            let Value::Array(mut pair) = e else { continue };
            if pair.len() < 2 {
                continue;
            }
            let fields = pair.pop();
            let Some(id) = pair.pop().as_ref().and_then(text) else {
                continue;
            };
            let fields = match fields {
                Some(Value::Array(flat)) => {
                    let mut map = HashMap::new();
                    let mut it = flat.iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        if let (Some(k), Some(v)) = (text(k), text(v)) {
                            map.insert(k, v);
                        }
                    }
                    Some(map)
                }
                Some(Value::Map(pairs)) => Some(
                    pairs
                        .iter()
                        .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
                        .collect(),
                ),
                _ => None,
            };
            out.push((id, fields));
        }
    }
    out
}

/// Serves the archiver's metrics on `addr` until `shutdown` resolves.
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: ArchiveMetrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    use axum::{routing::get, Router};
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move { m.render() }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "archive: metrics listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_hours() {
        // 2026-12-01T03:25:00Z
        let ms = 1_796_095_500_000;
        assert_eq!(file_name(ms), "access-2026-12-01T03.ndjson.gz");
        assert_eq!(hour_of_file(&file_name(ms)), Some(hour_of(ms)));
        assert_eq!(hour_of_file("access-2026-12-01T03.ndjson"), None);
        assert_eq!(hour_of_file("other.gz"), None);
    }

    #[test]
    fn ids_order_like_redis() {
        let a = StreamId::parse("5-10").expect("id");
        let b = StreamId::parse("10-1").expect("id");
        assert!(a < b);
        assert_eq!(StreamId::parse("7"), Some(StreamId { ms: 7, seq: 0 }));
        assert_eq!(StreamId::parse("x-1"), None);
    }
}
