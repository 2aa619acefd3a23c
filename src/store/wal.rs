//! The write-ahead log in front of the embedded store (`[store] write_ahead_log = true`,
//! DECISIONS D28).
//!
//! Without it, every group commit is a durable redb commit: about eight tables' copy-on-write
//! pages written and synced per batch (33.6 KB written per 4.7 KB message, BENCHMARKS.md).
//! With it, the requests of a batch are first appended to a log file and synced (one
//! sequential write), then applied to redb in a **non-durable** commit (kept in redb's write
//! buffer, no file write), and answered. redb is made durable behind, by a durable commit at
//! most every [`CHECKPOINT`] (and by every index application, D22), which also writes each
//! page once however many batches changed it.
//!
//! - **Durability**: a request is answered only after its log entry is synced, and is
//!   applied (visible to readers: delivery, the results server) only after that too.
//! - **Recovery**: redb comes back at its last durable commit, which holds the position of
//!   the last entry it applied ([`POSITION`]); the entries after it are applied again, in
//!   order, with the time each carries, before anything is accepted. The writer is
//!   deterministic over its requests and their times (as on a JetStream log, D23), so
//!   this gives the store the answers were computed on.
//! - **Routes**: a reload is committed durably (its entries before are never applied again),
//!   and records the routes it puts in force; entries after it are applied again under those.
//! - **Space**: the log is cut in segments of [`SEGMENT_BYTES`]; a segment whose entries are
//!   all durable in redb is deleted when the next one starts.
//!
//! A record: its payload's length (u32, little-endian), the payload's CRC-32, the payload
//! (an [`Entry`] as JSON). A torn record at the end of the last segment (a crash during
//! the write it was answered for never came back) is cut off at start; anything else that
//! does not read is an error naming the file: never skipped silently.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use super::StoreError;
use super::writer::{Op, Request};

/// `META` key: the last log entry the store applied.
pub(crate) const POSITION: &str = "wal_seq";

/// A segment is closed, and a new one started, once it holds this many bytes.
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;

/// redb is made durable at least this often under load (bounding what a start applies
/// again) and whenever the writer is idle.
pub(crate) const CHECKPOINT: std::time::Duration = std::time::Duration::from_secs(1);

/// A record larger than this is damage, not a request (the largest MLLP frame is far less).
const MAX_RECORD: usize = 1 << 30;

const HEADER: usize = 8;

/// The directory of the segments, in the data directory.
pub(crate) const DIR: &str = "wal";

/// One request as logged.
#[derive(serde::Deserialize)]
pub(super) struct Entry {
    pub n: u64,
    pub at: u64,
    pub request: Request,
}

#[derive(serde::Serialize)]
struct EntryRef<'a> {
    n: u64,
    at: u64,
    request: &'a Request,
}

/// What the log's syncer and the writer share.
#[derive(Debug)]
pub(crate) struct Shared {
    dir: PathBuf,
    /// The last entry synced in the log.
    synced: AtomicU64,
    /// The last entry durable in redb (segments all below it may go).
    durable: AtomicU64,
    /// Set once the writer has applied, at start, what the log held after the store's
    /// position (or failed to): the syncer starts after it.
    started: tokio::sync::watch::Sender<Option<Result<(), String>>>,
}

impl Shared {
    pub(crate) fn durable(&self, n: u64) {
        self.durable.fetch_max(n, Ordering::AcqRel);
    }

    pub(crate) fn synced(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn started(&self) -> tokio::sync::watch::Receiver<Option<Result<(), String>>> {
        self.started.subscribe()
    }

    /// The writer applied the log at start (said once; later catch-ups change nothing).
    pub(crate) fn caught_up(&self, r: Result<(), String>) {
        self.started.send_if_modified(|s| {
            let first = s.is_none();
            if first {
                *s = Some(r);
            }
            first
        });
    }
}

fn io_err(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Wal(format!("{}: {e}", path.display()))
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.log")
}

/// The segments, by their first entry.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(dir, e)),
    };
    for ent in rd {
        let ent = ent.map_err(|e| io_err(dir, e))?;
        let name = ent.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((first, ent.path()));
    }
    out.sort_unstable();
    Ok(out)
}

/// A segment's entries, and how many of its bytes are whole records (less than its length:
/// a torn tail).
fn read_segment(path: &Path) -> Result<(Vec<Entry>, u64, u64), StoreError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io_err(path, e))?;
    let mut entries = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at >= HEADER {
        let len =
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let start = at + HEADER;
        if len == 0 || len > MAX_RECORD || bytes.len() - start < len {
            break;
        }
        let payload = &bytes[start..start + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        let entry: Entry = serde_json::from_slice(payload).map_err(|e| {
            StoreError::Wal(format!(
                "{}: the entry at byte {at} has a valid checksum and does not read ({e}): written by another version?",
                path.display()
            ))
        })?;
        entries.push(entry);
        at = start + len;
    }
    Ok((entries, at as u64, bytes.len() as u64))
}

/// Appends records to the current segment and syncs them.
pub(crate) struct Appender {
    shared: Arc<Shared>,
    file: File,
    path: PathBuf,
    /// Bytes of whole, synced records in the current segment.
    len: u64,
    /// The next entry's number.
    next: u64,
    /// Earlier segments: their path and last entry.
    older: Vec<(PathBuf, u64)>,
    /// A failed write could not be cut off: nothing is appended until it is.
    poisoned: bool,
}

/// Reads the log at start: the entries after `committed` (the store's position), in order,
/// and the appender that goes on after the last one. A torn record at the end of the last
/// segment is cut off.
pub(super) fn recover(
    data_dir: &Path,
    committed: u64,
) -> Result<(Vec<Entry>, Appender), StoreError> {
    let dir = data_dir.join(DIR);
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let segs = segments(&dir)?;
    let mut replay = Vec::new();
    let mut older = Vec::new();
    let mut last = committed;
    let count = segs.len();
    for (i, (first, path)) in segs.into_iter().enumerate() {
        let (entries, whole, size) = read_segment(&path)?;
        if whole < size {
            if i + 1 < count {
                return Err(StoreError::Wal(format!(
                    "{}: bytes {whole}..{size} do not read as log records, and later segments follow: the log is damaged",
                    path.display()
                )));
            }
            tracing::warn!(
                file = %path.display(),
                cut = size - whole,
                "the write-ahead log ends with a record cut by a stop during its write (never answered): cutting it off"
            );
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| {
                    f.set_len(whole)?;
                    f.sync_all()
                })
                .map_err(|e| io_err(&path, e))?;
        }
        let mut seg_last = first.saturating_sub(1);
        for e in entries {
            if e.n != seg_last + 1 {
                return Err(StoreError::Wal(format!(
                    "{}: entry {} follows entry {seg_last}: the log is damaged",
                    path.display(),
                    e.n
                )));
            }
            seg_last = e.n;
            if e.n > committed {
                if e.n != last + 1 {
                    return Err(StoreError::Wal(format!(
                        "{}: the store applied the log up to entry {committed}, and the log goes on at entry {}: entries are missing",
                        path.display(),
                        e.n
                    )));
                }
                last = e.n;
                replay.push(e);
            }
        }
        older.push((path, seg_last));
    }
    let next = last + 1;
    let shared = Arc::new(Shared {
        dir: dir.clone(),
        synced: AtomicU64::new(last),
        durable: AtomicU64::new(committed),
        started: tokio::sync::watch::channel(None).0,
    });
    let (file, path) = create_segment(&dir, next)?;
    // Segments redb holds durably go now (a start makes a new segment, so restarts with
    // little traffic between them would otherwise pile them up); the new one is never
    // among the older.
    older.retain(|(p, seg_last)| {
        if *p == path {
            return false;
        }
        if *seg_last > committed {
            return true;
        }
        std::fs::remove_file(p)
            .inspect_err(|e| tracing::warn!(file = %p.display(), error = %e, "cannot delete a write-ahead log segment redb holds durably"))
            .is_err()
    });
    Ok((
        replay,
        Appender {
            shared,
            file,
            path,
            len: 0,
            next,
            older,
            poisoned: false,
        },
    ))
}

/// How many entries a write-ahead log left in `data_dir` holds past the store's position
/// `committed` (read only): a store opened without the log must not start over them, they
/// are acknowledged messages redb may not hold.
/// Only the newest segment holding an entry is read (entries number on across segments): a
/// start does not decode the whole log.
pub(crate) fn unapplied(data_dir: &Path, committed: u64) -> Result<u64, StoreError> {
    for (_, path) in segments(&data_dir.join(DIR))?.into_iter().rev() {
        let (entries, _, _) = read_segment(&path)?;
        if let Some(e) = entries.last() {
            return Ok(e.n.saturating_sub(committed));
        }
    }
    Ok(0)
}

/// A new, empty segment whose first entry will be `first`, its name made durable.
fn create_segment(dir: &Path, first: u64) -> Result<(File, PathBuf), StoreError> {
    let path = dir.join(segment_name(first));
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))?;
    Ok((file, path))
}

impl Appender {
    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Appends `records` (entries `self.next` to `last`) and syncs them. On failure the
    /// segment is cut back to its last synced record, so that the log never holds a
    /// record that was not answered as stored followed by ones that were.
    fn append(&mut self, records: &[u8], last: u64) -> Result<(), StoreError> {
        if self.poisoned {
            self.undo()?;
        }
        if self.len >= SEGMENT_BYTES {
            self.rotate()?;
        }
        let written = self
            .file
            .write_all(records)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let e = io_err(&self.path, e);
            self.poisoned = true;
            let _ = self.undo();
            return Err(e);
        }
        self.len += records.len() as u64;
        self.next = last + 1;
        self.shared.synced.store(last, Ordering::Release);
        Ok(())
    }

    fn undo(&mut self) -> Result<(), StoreError> {
        use std::io::{Seek, SeekFrom};
        self.file
            .set_len(self.len)
            .and_then(|()| self.file.seek(SeekFrom::Start(self.len)).map(|_| ()))
            .and_then(|()| self.file.sync_all())
            .map_err(|e| io_err(&self.path, e))?;
        self.poisoned = false;
        Ok(())
    }

    /// Starts the next segment; deletes the earlier ones redb holds durably.
    fn rotate(&mut self) -> Result<(), StoreError> {
        let (file, path) = create_segment(&self.shared.dir, self.next)?;
        let done = std::mem::replace(&mut self.path, path);
        self.file = file;
        self.len = 0;
        self.older.push((done, self.next - 1));
        let durable = self.shared.durable.load(Ordering::Acquire);
        self.older.retain(|(path, last)| {
            if *last > durable {
                return true;
            }
            match std::fs::remove_file(path) {
                Ok(()) => false,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot delete a write-ahead log segment redb holds durably; trying again at the next one");
                    true
                }
            }
        });
        Ok(())
    }
}

/// Appends one entry's record to `buf`.
fn frame(buf: &mut Vec<u8>, n: u64, at: u64, request: &Request) {
    let head = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    // The requests are plain data: serialising them to a vector cannot fail (a `Reconfigure`
    // is never logged).
    let _ = serde_json::to_writer(&mut *buf, &EntryRef { n, at, request });
    let payload = &buf[head + HEADER..];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(payload);
    buf[head..head + 4].copy_from_slice(&len.to_le_bytes());
    buf[head + 4..head + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// The syncer thread: takes the requests in batches, gives each its number and time, appends
/// and syncs them, then hands them to the writer. A batch whose write fails is answered
/// with the error (the sender sends again) and goes no further.
pub(super) fn run(
    mut rx: mpsc::Receiver<Op>,
    writer: mpsc::Sender<Op>,
    mut log: Appender,
    max_batch: usize,
) {
    let mut buf = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        buf.clear();
        let mut n = log.next;
        for op in &mut batch {
            // A reload is not logged: the writer commits it durably, with the routes it
            // puts in force, so no entry before it is applied again.
            if matches!(op.request, Request::Reconfigure(_)) {
                continue;
            }
            let at = crate::time::now_ms();
            frame(&mut buf, n, at, &op.request);
            op.at = Some(at);
            op.log = Some(n);
            n += 1;
        }
        if n > log.next {
            let started = std::time::Instant::now();
            if let Err(e) = log.append(&buf, n - 1) {
                metrics::counter!(crate::telemetry::names::STORE_ERRORS).increment(1);
                tracing::error!(error = %e, batch = batch.len(), "cannot write the write-ahead log; the batch is answered with errors");
                let e = e.to_string();
                for op in batch {
                    op.reply.fail(&e);
                }
                continue;
            }
            metrics::histogram!(crate::telemetry::names::WAL_SYNC)
                .record(started.elapsed().as_secs_f64());
        }
        for op in batch {
            if writer.blocking_send(op).is_err() {
                return;
            }
        }
    }
}

/// The entries after `after` up to `upto` (synced), read from the segments: what the writer
/// applies again after a failed batch.
pub(super) fn read_range(dir: &Path, after: u64, upto: u64) -> Result<Vec<Entry>, StoreError> {
    let mut out = Vec::new();
    let segs = segments(dir)?;
    for (i, (first, path)) in segs.iter().enumerate() {
        // A segment whose successor starts at or before `after` holds nothing wanted.
        if segs.get(i + 1).is_some_and(|(next, _)| *next <= after + 1) || *first > upto {
            continue;
        }
        let (entries, _, _) = read_segment(path)?;
        out.extend(entries.into_iter().filter(|e| e.n > after && e.n <= upto));
    }
    if out.first().is_some_and(|e| e.n != after + 1)
        || out.len() as u64 != upto.saturating_sub(after)
    {
        return Err(StoreError::Wal(format!(
            "{}: entries {}..={upto} are not all in the log",
            dir.display(),
            after + 1
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::audit::AuditEvent;

    fn request(i: u64) -> Request {
        Request::Audit(AuditEvent {
            event: "test".into(),
            message: Some(i),
            establishment: None,
            actor: None,
            detail: serde_json::Value::Null,
        })
    }

    fn write(log: &mut Appender, from: u64, to: u64) {
        let mut buf = Vec::new();
        for n in from..=to {
            frame(&mut buf, n, 1000 + n, &request(n));
        }
        log.append(&buf, to).unwrap();
    }

    fn numbers(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.n).collect()
    }

    #[test]
    fn entries_after_the_stores_position_come_back_in_order_with_their_time() {
        let dir = tempfile::tempdir().unwrap();
        let (replay, mut log) = recover(dir.path(), 0).unwrap();
        assert!(replay.is_empty());
        write(&mut log, 1, 3);
        write(&mut log, 4, 5);
        drop(log);
        let (replay, log) = recover(dir.path(), 2).unwrap();
        assert_eq!(numbers(&replay), [3, 4, 5]);
        assert_eq!(replay[0].at, 1003);
        assert!(matches!(replay[0].request, Request::Audit(_)));
        assert_eq!(log.next, 6);
        // Up to date: nothing to apply, numbering goes on.
        drop(log);
        let (replay, log) = recover(dir.path(), 5).unwrap();
        assert!(replay.is_empty());
        assert_eq!(log.next, 6);
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_damage_before_the_end_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut log) = recover(dir.path(), 0).unwrap();
        write(&mut log, 1, 2);
        let path = log.path.clone();
        drop(log);
        // A third record whose write stopped half-way.
        let mut buf = Vec::new();
        frame(&mut buf, 3, 1003, &request(3));
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&buf[..buf.len() / 2]).unwrap();
        drop(f);
        let (replay, mut log) = recover(dir.path(), 0).unwrap();
        assert_eq!(numbers(&replay), [1, 2]);
        assert_eq!(log.next, 3);
        write(&mut log, 3, 3);
        drop(log);
        let (replay, _) = recover(dir.path(), 0).unwrap();
        assert_eq!(numbers(&replay), [1, 2, 3]);
        // A flipped byte inside the first segment, which later segments follow.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 2] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
        let err = recover(dir.path(), 0).err().unwrap().to_string();
        assert!(
            err.contains(path.to_str().unwrap()) && err.contains("damaged"),
            "{err}"
        );
    }

    #[test]
    fn a_log_missing_entries_after_the_stores_position_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // Entries 1..9 gone (the segment removed), the log going on at 10.
        let (_, mut log) = recover(dir.path(), 0).unwrap();
        let wal = dir.path().join(DIR);
        for (_, p) in segments(&wal).unwrap() {
            std::fs::remove_file(p).unwrap();
        }
        let (file, path) = create_segment(&wal, 10).unwrap();
        (log.file, log.path, log.next) = (file, path, 10);
        write(&mut log, 10, 11);
        drop(log);
        let err = recover(dir.path(), 0).err().unwrap().to_string();
        assert!(err.contains("entries are missing"), "{err}");
        // A store that holds up to 9 takes the log from 10 on.
        let (replay, _) = recover(dir.path(), 9).unwrap();
        assert_eq!(numbers(&replay), [10, 11]);
    }

    #[test]
    fn segments_redb_holds_durably_are_deleted_at_the_next_rotation_and_read_range_spans_them() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut log) = recover(dir.path(), 0).unwrap();
        let wal = dir.path().join(DIR);
        write(&mut log, 1, 2);
        log.len = SEGMENT_BYTES; // as if full
        write(&mut log, 3, 4);
        log.len = SEGMENT_BYTES;
        assert_eq!(numbers(&read_range(&wal, 1, 4).unwrap()), [2, 3, 4]);
        // Durable up to 2: the first segment goes at the next rotation, not the second.
        log.shared.durable(2);
        write(&mut log, 5, 5);
        let firsts: Vec<u64> = segments(&wal)
            .unwrap()
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(firsts, [3, 5]);
        assert_eq!(numbers(&read_range(&wal, 2, 5).unwrap()), [3, 4, 5]);
        let err = read_range(&wal, 0, 5).err().unwrap().to_string();
        assert!(err.contains("not all in the log"), "{err}");
    }
}
