//! Exports: every match in a range, newest first, streamed in constant memory (one chunk of
//! [`super::query::CHUNK`] entries at a time) as NDJSON or CSV, ending with a trailer that
//! states how many entries were written.
//!
//! Trailers: NDJSON ends with `{"export":"end","count":N}`; CSV with a row `#count,N`. A failure
//! mid-export (Redis gone) ends the body with `{"export":"error","count":N,"error":{…}}` /
//! `#error,<message>` instead, so a cut export is never mistaken for a complete one.
//!
//! The body is produced only as fast as the client reads it; when the client closes the
//! connection, the server drops the body and no further chunk is read from Redis
//! (`access_log_exports_open` falls, `access_log_export_entries_read_total` stops rising).
//! While one chunk is rendered and handed to the connection, the next one is read from Redis
//! (and the archive) on a task of its own (at most one chunk ahead, so memory stays flat;
//! stopped when the export ends early).
//!
//! An export outlives the request that authenticated it, so, like the live tail, it checks the
//! caller's credential again every [`RECHECK_INTERVAL`]
//! ([`crate::auth::admin_credential_withdrawn`]). The check runs on a task of its own next to
//! the task that reads Redis, not in the body the client pulls: a client that stops reading
//! does not stop it. Once the credential is revoked (or the user disabled or no longer a
//! platform admin), reading stops at once, chunks produced but not yet taken by the connection
//! are dropped, and the body ends with the error trailer (`UNAUTHORIZED` / `FORBIDDEN`, the
//! count being the entries the body held before it).
//!
//! Entries older than the stream (trimmed away) can come from an [`OlderEntries`] source (the
//! archive); the export asks it, for each shard once that shard's stream is exhausted, for the
//! shard's matches below the oldest id its stream still had, and merges them with the other
//! shards by (id, shard) like the streams ([`MergedWalk::continue_into`]).

use std::sync::Arc;

use axum::body::Bytes;
use futures::stream::{BoxStream, StreamExt};
use watchpost_common::keys::AccessKeys;
use watchpost_common::{Keys, ACCESS_LOG_FIELDS};

use crate::auth::{admin_credential_withdrawn, Principal};
use crate::error::ApiError;
use crate::metrics::OpenTail;
use crate::state::AppState;

use super::query::{Bounds, CHUNK};
use super::shards::MergedWalk;
use super::tail::RECHECK_INTERVAL;
use super::{Filters, Item, StreamId};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "ndjson" => Some(Format::Ndjson),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
        }
    }
}

/// A source of entries older than the stream holds (the archive), read newest first, one
/// shard's family at a time.
pub trait OlderEntries: Send + Sync {
    /// Chunks of `family`'s matches within `bounds` (exclusive ids; `bounds.below` is at most
    /// the oldest id the family's stream still had), newest first.
    fn matches(
        &self,
        family: &AccessKeys,
        bounds: Bounds,
        filters: Filters,
    ) -> BoxStream<'static, Result<Vec<Item>, ApiError>>;
}

/// The archive (`[archive] dir`, written by `watchpost-admin archive`) as the source of
/// entries older than the stream: each family's own directory
/// ([`crate::archive::family_dir`]). Files are read on a blocking thread, newest hour first;
/// chunks of [`CHUNK`] matches go through a channel of two, so reading stays just ahead of the
/// client and stops when the export is dropped. Memory holds, per shard, one gzip member of a
/// file (see [`crate::archive::read_matches_newest_first`]) and two chunks.
pub struct ArchivedEntries {
    dir: std::path::PathBuf,
    /// The configured families (`[access_log] shards`), which decide the directories.
    configured: Vec<AccessKeys>,
}

impl ArchivedEntries {
    pub fn new(dir: impl Into<std::path::PathBuf>, configured: Vec<AccessKeys>) -> Self {
        Self {
            dir: dir.into(),
            configured,
        }
    }

    /// Adds to `families` (the families the export reads) those only the archive still has:
    /// the shard of every `shard-<n>` directory, and, on a single node, the unsharded family
    /// when `dir` itself holds files no read family owns. A shard no longer configured nor
    /// registered is thus still exported from its archive. Kept in merged order.
    pub fn add_archived_families(&self, keys: &Keys, families: &mut Vec<AccessKeys>) {
        let base = self.dir.as_path();
        match crate::archive::shard_dirs(base) {
            Ok(shards) => {
                for n in shards {
                    let f = keys.access_shard(n);
                    if !families.contains(&f) {
                        families.push(f);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(dir = %base.display(), error = %e, "access log: archive unreadable");
            }
        }
        let owned = families
            .iter()
            .any(|f| crate::archive::family_dir(base, f, &self.configured) == base);
        if !owned && crate::archive::has_files(base).unwrap_or(false) {
            if let Some(f) = keys.access_family("-") {
                families.push(f);
            }
        }
        families.sort_by_key(super::shards::rank);
    }
}

impl OlderEntries for ArchivedEntries {
    fn matches(
        &self,
        family: &AccessKeys,
        bounds: Bounds,
        filters: Filters,
    ) -> BoxStream<'static, Result<Vec<Item>, ApiError>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<Item>, ApiError>>(2);
        let dir = crate::archive::family_dir(&self.dir, family, &self.configured);
        tokio::task::spawn_blocking(move || {
            let from_ms = bounds.above.map_or(0, |a| a.ms);
            let to_ms = bounds.below.map_or(u64::MAX, |b| b.ms);
            let keep = |e: &crate::archive::ArchivedEntry| {
                StreamId::parse(&e.id).is_some_and(|id| {
                    bounds.above.is_none_or(|a| id > a) && bounds.below.is_none_or(|b| id < b)
                }) && filters.matches(&e.entry)
            };
            let entries = match crate::archive::read_matches_newest_first(
                &dir, from_ms, to_ms, keep,
            ) {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "access log: archive unreadable");
                    let _ = tx.blocking_send(Err(ApiError::internal("the archive is unreadable")));
                    return;
                }
            };
            let mut chunk = Vec::with_capacity(CHUNK);
            for e in entries {
                chunk.push(Item {
                    id: e.id,
                    shard: None,
                    entry: e.entry,
                });
                if chunk.len() == CHUNK
                    && tx
                        .blocking_send(Ok(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK))))
                        .is_err()
                {
                    // The export was dropped (client gone): stop reading.
                    return;
                }
            }
            if !chunk.is_empty() {
                let _ = tx.blocking_send(Ok(chunk));
            }
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
            .boxed()
    }
}

enum Phase {
    /// The CSV header (if any) is next; the walk has not started.
    Header(Box<MergedWalk>),
    Stream(Box<MergedWalk>),
    /// The walk's next chunk being read on a task of its own, while the chunk before it is
    /// rendered and sent.
    Reading(ReadAhead),
    Trailer,
    Finished,
}

/// What a read-ahead task gives back: the walk, the entries it examined, the chunk.
type ReadDone = (Box<MergedWalk>, usize, Result<Vec<Item>, ApiError>);

/// A chunk read on a task of its own; dropping it (the client went away, the credential was
/// withdrawn) stops the read.
struct ReadAhead(tokio::task::JoinHandle<ReadDone>);

impl ReadAhead {
    fn start(state: AppState, mut walk: Box<MergedWalk>) -> Self {
        Self(tokio::spawn(async move {
            let before = walk.scanned;
            let got = walk.next(&state, CHUNK).await;
            let scanned = walk.scanned - before;
            (walk, scanned, got)
        }))
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Export {
    state: AppState,
    format: Format,
    phase: Phase,
    count: u64,
    _open: OpenTail,
}

/// A part of the body and the number of entries in it.
struct Piece {
    bytes: Bytes,
    entries: u64,
}

impl Piece {
    /// Header or trailer text: no entries.
    fn text(bytes: Bytes) -> Self {
        Self { bytes, entries: 0 }
    }
}

/// The export body of `principal`'s request: a stream of byte chunks. `walk` (every shard,
/// merged by id) was planned over the export's bounds and filters; with `older`, each shard
/// continues below its stream with its older entries. Reading and the credential
/// re-check run on a task of their own (see the module's documentation); the body takes chunks
/// from it one at a time.
pub fn body(
    state: AppState,
    principal: Principal,
    walk: MergedWalk,
    format: Format,
    older: Option<Arc<dyn OlderEntries>>,
) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    let pieces = pieces(state.clone(), walk, format, older);
    guarded(state, principal, format, pieces)
}

/// Runs `pieces` on a task of its own, a chunk ahead of the connection at most, ending it when
/// `principal`'s credential is withdrawn whether or not the client reads; the returned body
/// then ends with the error trailer.
fn guarded(
    state: AppState,
    principal: Principal,
    format: Format,
    mut pieces: BoxStream<'static, Piece>,
) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Piece>(1);
    let (cut_tx, cut_rx) = tokio::sync::oneshot::channel::<ApiError>();
    tokio::spawn(async move {
        let pump = async {
            while let Some(piece) = pieces.next().await {
                if tx.send(piece).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            biased;
            e = admin_credential_withdrawn(&state, &principal, RECHECK_INTERVAL) => {
                tracing::info!(user_id = %principal.user_id, "access log: export cut, credential withdrawn");
                let _ = cut_tx.send(e);
            }
            // Client gone: the body (and with it the receiver) was dropped.
            () = tx.closed() => {}
            () = pump => {}
        }
        // Dropping `pieces` here ends the reading (and `access_log_exports_open` falls).
    });
    struct Reader {
        rx: tokio::sync::mpsc::Receiver<Piece>,
        /// `None` once the reading task ended without a cut.
        cut: Option<tokio::sync::oneshot::Receiver<ApiError>>,
        /// Entries in the chunks handed to the connection.
        delivered: u64,
        format: Format,
        ended: bool,
    }
    let reader = Reader {
        rx,
        cut: Some(cut_rx),
        delivered: 0,
        format,
        ended: false,
    };
    futures::stream::unfold(reader, |mut r| async move {
        if r.ended {
            return None;
        }
        loop {
            let next = match r.cut.as_mut() {
                // A cut wins over chunks already produced: nothing produced before it reaches
                // the client after it.
                Some(cut) => tokio::select! {
                    biased;
                    withdrawn = cut => match withdrawn {
                        Ok(e) => {
                            r.ended = true;
                            let trailer = error_trailer(r.format, r.delivered, &e);
                            return Some((Ok(trailer), r));
                        }
                        Err(_) => {
                            r.cut = None;
                            continue;
                        }
                    },
                    piece = r.rx.recv() => piece,
                },
                None => r.rx.recv().await,
            };
            let piece = next?;
            r.delivered += piece.entries;
            return Some((Ok(piece.bytes), r));
        }
    })
    .boxed()
}

/// The export's chunks, read as the consumer asks for them.
fn pieces(
    state: AppState,
    mut walk: MergedWalk,
    format: Format,
    older: Option<Arc<dyn OlderEntries>>,
) -> BoxStream<'static, Piece> {
    let open = OpenTail::open(&state.metrics().exports_open);
    if let Some(src) = older {
        // Each shard continues into its own older entries below its stream.
        walk.continue_into(src);
    }
    let export = Export {
        state,
        format,
        phase: Phase::Header(Box::new(walk)),
        count: 0,
        _open: open,
    };
    futures::stream::unfold(export, |mut ex| async move {
        loop {
            match std::mem::replace(&mut ex.phase, Phase::Finished) {
                Phase::Header(w) => {
                    ex.phase = Phase::Stream(w);
                    if ex.format == Format::Csv {
                        return Some((Piece::text(Bytes::from(csv_header())), ex));
                    }
                }
                Phase::Stream(w) => {
                    if w.is_done() {
                        ex.phase = Phase::Trailer;
                        continue;
                    }
                    ex.phase = Phase::Reading(ReadAhead::start(ex.state.clone(), w));
                }
                Phase::Reading(mut read) => {
                    let (w, scanned, got) = match (&mut read.0).await {
                        Ok(done) => done,
                        Err(e) => {
                            tracing::error!(error = %e, "access log: export read task failed");
                            let e = ApiError::internal("the export's read failed");
                            return Some((Piece::text(ex.error(&e)), ex));
                        }
                    };
                    ex.state
                        .metrics()
                        .export_entries_read
                        .inc_by(scanned as u64);
                    match got {
                        Ok(items) => {
                            if items.is_empty() {
                                ex.phase = Phase::Stream(w);
                                continue;
                            }
                            // The next chunk is read while this one is rendered and sent.
                            ex.phase = if w.is_done() {
                                Phase::Stream(w)
                            } else {
                                Phase::Reading(ReadAhead::start(ex.state.clone(), w))
                            };
                            let chunk = ex.render(&items);
                            return Some((chunk, ex));
                        }
                        Err(e) => return Some((Piece::text(ex.error(&e)), ex)),
                    }
                }
                Phase::Trailer => {
                    let end = match ex.format {
                        Format::Ndjson => {
                            format!("{{\"export\":\"end\",\"count\":{}}}\n", ex.count)
                        }
                        Format::Csv => format!("#count,{}\r\n", ex.count),
                    };
                    return Some((Piece::text(Bytes::from(end)), ex));
                }
                Phase::Finished => return None,
            }
        }
    })
    .boxed()
}

impl Export {
    fn render(&mut self, items: &[Item]) -> Piece {
        // Entries are ~500 bytes in either format: one allocation per chunk, not per entry.
        let capacity = items.len() * 640;
        let bytes = match self.format {
            Format::Ndjson => {
                let mut out = Vec::with_capacity(capacity);
                for item in items {
                    // An Item always serializes (strings and numbers only).
                    if serde_json::to_writer(&mut out, item).is_ok() {
                        out.push(b'\n');
                    }
                }
                out
            }
            Format::Csv => {
                let mut out = String::with_capacity(capacity);
                let mut scratch = String::new();
                for item in items {
                    csv_row(&mut out, &mut scratch, item);
                }
                out.into_bytes()
            }
        };
        self.count += items.len() as u64;
        Piece {
            bytes: Bytes::from(bytes),
            entries: items.len() as u64,
        }
    }

    /// The trailer of a failed export; the stream ends after it.
    fn error(&mut self, e: &ApiError) -> Bytes {
        self.phase = Phase::Finished;
        tracing::warn!(error = %e.public_message(), count = self.count, "access log: export failed");
        error_trailer(self.format, self.count, e)
    }
}

/// The trailer of an export cut short after `count` entries: by a failure, or by the caller's
/// credential being withdrawn.
fn error_trailer(format: Format, count: u64, e: &ApiError) -> Bytes {
    let text = match format {
        Format::Ndjson => {
            let v = serde_json::json!({
                "export": "error",
                "count": count,
                "error": { "code": e.code(), "message": e.public_message() },
            });
            format!("{v}\n")
        }
        Format::Csv => {
            let mut row = String::from("#error,");
            push_csv_field(&mut row, &e.public_message());
            row.push_str("\r\n");
            row
        }
    };
    Bytes::from(text)
}

/// `id` and the entry fields, in stream order.
fn csv_header() -> String {
    let mut out = String::from("id");
    for f in ACCESS_LOG_FIELDS {
        out.push(',');
        out.push_str(f);
    }
    out.push_str("\r\n");
    out
}

fn csv_row(out: &mut String, scratch: &mut String, item: &Item) {
    push_csv_field(out, &item.id);
    item.entry.write_fields(scratch, |_, value| {
        out.push(',');
        push_csv_field(out, value);
    });
    out.push_str("\r\n");
}

/// RFC 4180: a field with a comma, a quote, a line break or a leading `#` (the trailer's
/// marker) or surrounding space is quoted, quotes doubled.
pub fn push_csv_field(out: &mut String, value: &str) {
    let needs = value.is_empty()
        || value.starts_with('#')
        || value.starts_with(' ')
        || value.ends_with(' ')
        || value
            .bytes()
            .any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'));
    if !needs || value.is_empty() {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        let cases = [
            ("plain", "plain"),
            ("", ""),
            ("a,b", "\"a,b\""),
            ("say \"hi\"", "\"say \"\"hi\"\"\""),
            ("line\nbreak", "\"line\nbreak\""),
            ("cr\rx", "\"cr\rx\""),
            ("#count,1", "\"#count,1\""),
            (" pad", "\" pad\""),
        ];
        for (raw, want) in cases {
            let mut s = String::new();
            push_csv_field(&mut s, raw);
            assert_eq!(s, want, "{raw:?}");
        }
    }
}
