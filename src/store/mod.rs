//! The durable store: messages, tenant decisions, outbox queues, quarantine, dead letters,
//! order index, patient data and the operator log, in one redb file.
//!
//! Every change goes through one writer thread (`writer`), which commits the requests waiting
//! at that moment in one transaction (group commit: one fsync for many ACKs) and answers each
//! request only after the commit returned. Readers (`Store`) use redb snapshots and never block
//! the writer.

pub mod audit;
pub(crate) mod index;
pub(crate) mod lease;
pub(crate) mod log;
pub mod records;
pub(crate) mod trim;
mod tx;
pub(crate) mod wal;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

pub use records::*;
pub use writer::{StoreHandle, WriterConfig};

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
pub(crate) const RAW: TableDefinition<u64, &[u8]> = TableDefinition::new("raw");
pub(crate) const ACKS: TableDefinition<u64, &[u8]> = TableDefinition::new("acks");
/// sender key → seq (8 bytes BE) + SHA-256 of the content (32 bytes).
pub(crate) const DEDUP: TableDefinition<&str, &[u8]> = TableDefinition::new("dedup");
/// destination \0 enqueue-seq BE → OutboxEntry.
pub(crate) const OUTBOX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("outbox");
/// destination \0 seq BE → DeadLetter.
pub(crate) const DEAD: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dead");
/// destination \0 seq BE → delivery time (ms).
pub(crate) const DELIVERED: TableDefinition<&[u8], u64> = TableDefinition::new("delivered");
pub(crate) const QUARANTINE: TableDefinition<u64, &[u8]> = TableDefinition::new("quarantine");
/// "P\x1f" or "F\x1f" + order key → establishment id.
pub(crate) const ORDERS: TableDefinition<&str, &str> = TableDefinition::new("orders");
/// establishment \x1f patient key → PatientAdmin.
pub(crate) const PATIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("patients");
pub(crate) const OPLOG: TableDefinition<u64, &[u8]> = TableDefinition::new("oplog");
/// `dmp_document_key` → DmpDocument: what labroute published to the DMP and is current there.
pub(crate) const DMP_DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("dmp_docs");
/// `care_key` → CareLink: a practitioner a result named in a patient's care (first one kept).
pub(crate) const CARE_LINKS: TableDefinition<&str, &[u8]> = TableDefinition::new("care_links");
/// `care_key` → CareGrant: access granted by an operator.
pub(crate) const CARE_GRANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("care_grants");
/// `result_key` → seq: a result (ORU/OUL) routed or released to an establishment, by patient.
pub(crate) const RESULTS: TableDefinition<&str, u64> = TableDefinition::new("results");
/// `patient_id_key` → seq of the first result that gave it: which patient of which
/// establishment a result's patient identifier names.
pub(crate) const PATIENT_IDS: TableDefinition<&str, u64> = TableDefinition::new("patient_ids");
/// `mss_key(source, address)` → Mailbox: the MSSanté directory (national and local).
pub(crate) const MSS_DIRECTORY: TableDefinition<&str, &[u8]> =
    TableDefinition::new("mss_directory");
/// `rpps \x1f source \x1f address` → (): a practitioner's mailboxes.
pub(crate) const MSS_BY_RPPS: TableDefinition<&str, ()> = TableDefinition::new("mss_by_rpps");
/// Domain → import time (ms): the trust space's whitelist.
pub(crate) const MSS_WHITELIST: TableDefinition<&str, u64> = TableDefinition::new("mss_whitelist");
/// `mss_sent_key(seq, address)` → SentMail: each mail the MSSanté sender handed over.
pub(crate) const MSS_SENT: TableDefinition<&[u8], &[u8]> = TableDefinition::new("mss_sent");

/// On a JetStream log (D24): `"digest"` → the 32 bytes of the routes in force (their
/// [`crate::config::RoutesDigest`]), `"sources"` → their files (JSON), as of `META` `log_seq`.
pub(crate) const ROUTES_IN_FORCE: TableDefinition<&str, &[u8]> =
    TableDefinition::new("routes_in_force");

/// `mss_report_key` + address → ReportRecipient: who was mailed a version of a report.
pub(crate) const MSS_REPORTS: TableDefinition<&str, &[u8]> = TableDefinition::new("mss_reports");

/// The key of one mail sent for a message: its seq (BE), then the address.
pub(crate) fn mss_sent_key(seq: u64, address: &str) -> Vec<u8> {
    let mut k = seq.to_be_bytes().to_vec();
    k.extend_from_slice(address.as_bytes());
    k
}

/// `META` keys of the writer's per-destination counts: messages waiting, dead letters.
pub(crate) const DEPTH_PREFIX: &str = "depth\u{1f}";
pub(crate) const DEAD_PREFIX: &str = "dead\u{1f}";
/// Set once the counts above were made from the tables (stores from before they existed).
pub(crate) const COUNTS_MADE: &str = "queue_counts_made";

/// The directory key of an address from one source.
pub(crate) fn mss_key(source: crate::mssante::Source, address: &str) -> String {
    format!("{}\u{1f}{address}", source.as_str())
}

/// redb's page cache. Its default, 1 GiB, let a stalled destination's backlog grow the
/// process with the file (RSS tracked the file size: DECISIONS D18).
const STORE_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// File name of the store inside the data directory.
pub const STORE_FILE: &str = "labroute.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the store {path}: {source}. The file is kept as it is; restore it from a backup or move it aside to start empty"
    )]
    Open {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error(
        "the store {0} is in use by another labroute process: stop it, or point --data at another directory (operator commands reach a running instance through its [admin] endpoint)"
    )]
    InUse(PathBuf),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Db(Box<redb::Error>),
    #[error("store record {0} is unreadable: {1}")]
    Record(String, String),
    #[error("store commit failed: {0}")]
    Commit(String),
    #[error("the store writer has stopped")]
    Closed,
    /// The JetStream log (`[store] kind = "jetstream"`): unreachable, or an entry refused.
    #[error("JetStream log: {0}")]
    Log(String),
    /// The write-ahead log in front of the embedded store (D28): unwritable, or damaged.
    #[error("write-ahead log: {0}")]
    Wal(String),
    #[error(
        "the results indexes did not catch up with the acknowledged messages within 10 s: the store writer is stuck; its errors are in the log (disk full or I/O error: free space or check the device)"
    )]
    IndexBehind,
    #[error(
        "the store {0} could not be written (disk full or I/O error): messages are answered AE until it reopens; free space on its filesystem or check the device"
    )]
    Unavailable(PathBuf),
}

/// Opens (or creates) the store file and its tables. A file that is not a valid store is an
/// error naming the file: it is never reset silently.
fn open_file(path: &Path) -> Result<Database, StoreError> {
    let db = Database::builder()
        .set_cache_size(STORE_CACHE_BYTES)
        .create(path)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(path.to_owned()),
            e => StoreError::Open {
                path: path.to_owned(),
                source: Box::new(e.into()),
            },
        })?;
    let txn = db.begin_write().map_err(db_err)?;
    {
        txn.open_table(META).map_err(db_err)?;
        txn.open_table(RECORDS).map_err(db_err)?;
        txn.open_table(RAW).map_err(db_err)?;
        txn.open_table(ACKS).map_err(db_err)?;
        txn.open_table(DEDUP).map_err(db_err)?;
        txn.open_table(OUTBOX).map_err(db_err)?;
        txn.open_table(DEAD).map_err(db_err)?;
        txn.open_table(DELIVERED).map_err(db_err)?;
        txn.open_table(QUARANTINE).map_err(db_err)?;
        txn.open_table(ORDERS).map_err(db_err)?;
        txn.open_table(PATIENTS).map_err(db_err)?;
        txn.open_table(OPLOG).map_err(db_err)?;
        txn.open_table(DMP_DOCS).map_err(db_err)?;
        txn.open_table(CARE_LINKS).map_err(db_err)?;
        txn.open_table(CARE_GRANTS).map_err(db_err)?;
        txn.open_table(RESULTS).map_err(db_err)?;
        txn.open_table(PATIENT_IDS).map_err(db_err)?;
        txn.open_table(MSS_DIRECTORY).map_err(db_err)?;
        txn.open_table(MSS_BY_RPPS).map_err(db_err)?;
        txn.open_table(MSS_WHITELIST).map_err(db_err)?;
        txn.open_table(MSS_SENT).map_err(db_err)?;
        txn.open_table(MSS_REPORTS).map_err(db_err)?;
        txn.open_table(index::PENDING_INDEX).map_err(db_err)?;
        // Index writes a crash left pending (D22): applied before anything reads.
        let n = index::apply_pending(&txn)?;
        if n > 0 {
            tracing::info!(messages = n, "pending index writes applied at open");
        }
    }
    txn.commit().map_err(db_err)?;
    Ok(db)
}

impl StoreError {
    /// An error after which redb refuses every operation until the file is reopened (a
    /// write that failed: disk full, I/O error), or the store already waiting for that.
    pub fn needs_reopen(&self) -> bool {
        match self {
            StoreError::Db(e) => matches!(
                **e,
                redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed
            ),
            StoreError::Unavailable(_) => true,
            _ => false,
        }
    }
}

pub(crate) fn db_err<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(Box::new(e.into()))
}

pub(crate) fn queue_key(dest: &str, n: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(dest.len() + 9);
    k.extend_from_slice(dest.as_bytes());
    k.push(0);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

pub(crate) fn split_queue_key(k: &[u8]) -> Option<(&str, u64)> {
    let (dest, n) = k.split_at_checked(k.len().checked_sub(9)?)?;
    if n[0] != 0 {
        return None;
    }
    let n = u64::from_be_bytes(n[1..].try_into().ok()?);
    Some((std::str::from_utf8(dest).ok()?, n))
}

/// Read access to the store (snapshots).
///
/// The redb file behind it can be closed and opened again ([`Store::reopen`]): after a
/// failed write (disk full, I/O error) redb refuses every later operation until the file is
/// reopened, and the writer does so once it can. Until then reads and writes answer
/// [`StoreError::Unavailable`].
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    db: std::sync::RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    index: index::IndexProgress,
}

impl Store {
    /// Opens (or creates) the store in `data_dir`. A file that is not a valid store is an error
    /// naming the file: it is never reset silently.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(STORE_FILE);
        let db = Arc::new(open_file(&path)?);
        Ok(Store {
            shared: Arc::new(Shared {
                db: std::sync::RwLock::new(Some(db)),
                path,
                index: index::IndexProgress::default(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// How far the indexes written behind the ACK path are behind it (D22).
    pub(crate) fn index(&self) -> &index::IndexProgress {
        &self.shared.index
    }

    /// The open database, unless it is being reopened.
    fn database(&self) -> Result<Arc<Database>, StoreError> {
        let slot = match self.shared.db.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        slot.clone()
            .ok_or_else(|| StoreError::Unavailable(self.shared.path.clone()))
    }

    /// Puts `db` in place of the open database.
    fn set_database(&self, db: Option<Database>) {
        let mut slot = match self.shared.db.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *slot = db.map(Arc::new);
    }

    /// A read snapshot.
    pub(crate) fn read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.database()?.begin_read().map_err(db_err)
    }

    /// The write transaction (only the writer thread writes).
    pub(crate) fn write(&self) -> Result<redb::WriteTransaction, StoreError> {
        self.database()?.begin_write().map_err(db_err)
    }

    /// The last JetStream log entry this store applied (0: none; D23).
    pub fn log_position(&self) -> Result<u64, StoreError> {
        self.position(log::POSITION)
    }

    /// The data directory.
    pub(crate) fn dir(&self) -> &Path {
        self.shared.path.parent().unwrap_or(Path::new("."))
    }

    /// The last entry of a log (`META` key `key`: the JetStream log's or the write-ahead
    /// log's) this store applied; 0: none.
    pub(crate) fn position(&self, key: &str) -> Result<u64, StoreError> {
        let txn = self.read()?;
        let t = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(db_err(e)),
        };
        Ok(t.get(key).map_err(db_err)?.map_or(0, |v| v.value()))
    }

    /// The routes under which this store applied its JetStream log, as of
    /// [`Store::log_position`] (D24): their digest and their files. `None`: no entry
    /// putting routes in force applied yet (an empty store, or one from before D24).
    #[allow(clippy::type_complexity)]
    pub fn routes_in_force(
        &self,
    ) -> Result<
        Option<(
            crate::config::RoutesDigest,
            Vec<(std::path::PathBuf, String)>,
        )>,
        StoreError,
    > {
        let txn = self.read()?;
        let t = match txn.open_table(ROUTES_IN_FORCE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        let Some(digest) = t.get("digest").map_err(db_err)? else {
            return Ok(None);
        };
        let digest: [u8; 32] = digest.value().try_into().map_err(|_| {
            StoreError::Record("routes_in_force".into(), "a digest is 32 bytes".into())
        })?;
        let sources = match t.get("sources").map_err(db_err)? {
            Some(v) => serde_json::from_slice(v.value())
                .map_err(|e| StoreError::Record("routes_in_force".into(), e.to_string()))?,
            None => Vec::new(),
        };
        Ok(Some((crate::config::RoutesDigest(digest), sources)))
    }

    /// Closes the file and opens it again (redb then checks it, and repairs what an
    /// interrupted commit left). Fails while another user still holds the old handle (a
    /// read in progress) or the file cannot be opened (the disk still full): the store
    /// stays unavailable and the writer tries again later.
    pub(crate) fn reopen(&self) -> Result<(), StoreError> {
        // Dropping the handle closes the file once no read snapshot holds it any more.
        self.set_database(None);
        // Opened without the lock: a repair may take a while, and readers get
        // `Unavailable` meanwhile rather than waiting.
        self.set_database(Some(open_file(&self.shared.path)?));
        Ok(())
    }

    /// Up to `limit` outbox entries of a destination after `after` (an enqueue number).
    pub fn outbox_after(
        &self,
        dest: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(OUTBOX).map_err(db_err)?;
        let start = queue_key(dest, after.map_or(0, |a| a.saturating_add(1)));
        let end = queue_key(dest, u64::MAX);
        let mut out = Vec::new();
        for item in t.range(start.as_slice()..=end.as_slice()).map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let Some((_, n)) = split_queue_key(k.value()) else {
                continue;
            };
            out.push((n, decode(v.value())?));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Number of undelivered entries of a destination and the enqueue time of the oldest.
    pub fn queue_stats(&self, dest: &str) -> Result<(u64, Option<u64>), StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(OUTBOX).map_err(db_err)?;
        let start = queue_key(dest, 0);
        let end = queue_key(dest, u64::MAX);
        let mut n = 0;
        let mut oldest = None;
        for item in t.range(start.as_slice()..=end.as_slice()).map_err(db_err)? {
            let (_, v) = item.map_err(db_err)?;
            if oldest.is_none() {
                let e: OutboxEntry = decode(v.value())?;
                oldest = Some(e.enqueued_at_ms);
            }
            n += 1;
        }
        Ok((n, oldest))
    }

    /// When the oldest entry waiting for a destination was queued (one key read).
    pub fn oldest_enqueued(&self, dest: &str) -> Result<Option<u64>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(OUTBOX).map_err(db_err)?;
        let start = queue_key(dest, 0);
        let end = queue_key(dest, u64::MAX);
        let first = t
            .range(start.as_slice()..=end.as_slice())
            .map_err(db_err)?
            .next();
        match first {
            Some(item) => {
                let (_, v) = item.map_err(db_err)?;
                let e: OutboxEntry = decode(v.value())?;
                Ok(Some(e.enqueued_at_ms))
            }
            None => Ok(None),
        }
    }

    /// Messages waiting for each destination and dead letters held for each, as the writer
    /// keeps them (`META`), by destination name.
    pub fn queue_counts(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(META).map_err(db_err)?;
        let mut by: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        for (prefix, dead) in [(DEPTH_PREFIX, false), (DEAD_PREFIX, true)] {
            let end = format!("{}\u{20}", prefix.trim_end_matches('\u{1f}'));
            for item in t.range(prefix..end.as_str()).map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                let e = by.entry(k.value()[prefix.len()..].to_owned()).or_default();
                if dead {
                    e.1 = v.value();
                } else {
                    e.0 = v.value();
                }
            }
        }
        Ok(by.into_iter().map(|(d, (q, x))| (d, q, x)).collect())
    }

    pub fn raw(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(RAW).map_err(db_err)?;
        Ok(t.get(seq).map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    pub fn record(&self, seq: u64) -> Result<Option<MessageRecord>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(RECORDS).map_err(db_err)?;
        match t.get(seq).map_err(db_err)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Every quarantined message, oldest first.
    pub fn quarantine(&self) -> Result<Vec<(MessageRecord, QuarantineEntry)>, StoreError> {
        let txn = self.read()?;
        let q = txn.open_table(QUARANTINE).map_err(db_err)?;
        let r = txn.open_table(RECORDS).map_err(db_err)?;
        let mut out = Vec::new();
        for item in q.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let entry: QuarantineEntry = decode(v.value())?;
            if let Some(rec) = r.get(k.value()).map_err(db_err)? {
                out.push((decode(rec.value())?, entry));
            }
        }
        Ok(out)
    }

    /// Every dead letter: (destination, entry).
    pub fn dead_letters(&self) -> Result<Vec<(String, DeadLetter)>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(DEAD).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            if let Some((dest, _)) = split_queue_key(k.value()) {
                out.push((dest.to_owned(), decode(v.value())?));
            }
        }
        Ok(out)
    }

    /// Delivery time of a message to a destination, if delivered.
    pub fn delivered_at(&self, dest: &str, seq: u64) -> Result<Option<u64>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(DELIVERED).map_err(db_err)?;
        Ok(t.get(queue_key(dest, seq).as_slice())
            .map_err(db_err)?
            .map(|v| v.value()))
    }

    /// The operator log, oldest first.
    pub fn operator_log(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(OPLOG).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (_, v) = item.map_err(db_err)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// Patient administration data recorded from ADT (ZFA), by establishment and patient key.
    pub fn patient(
        &self,
        establishment: &str,
        patient_key: &str,
    ) -> Result<Option<PatientAdmin>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(PATIENTS).map_err(db_err)?;
        let key = patient_admin_key(establishment, patient_key);
        match t.get(key.as_str()).map_err(db_err)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// The mailbox an address is (the national directory's entry first, else the local
    /// one's).
    pub fn mailbox(&self, address: &str) -> Result<Option<crate::mssante::Mailbox>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(MSS_DIRECTORY).map_err(db_err)?;
        for source in [
            crate::mssante::Source::National,
            crate::mssante::Source::Local,
        ] {
            if let Some(v) = t.get(mss_key(source, address).as_str()).map_err(db_err)? {
                return Ok(Some(decode(v.value())?));
            }
        }
        Ok(None)
    }

    /// A practitioner's mailboxes, from both directories.
    pub fn mailboxes_of(&self, rpps: &str) -> Result<Vec<crate::mssante::Mailbox>, StoreError> {
        let txn = self.read()?;
        let by = txn.open_table(MSS_BY_RPPS).map_err(db_err)?;
        let dir = txn.open_table(MSS_DIRECTORY).map_err(db_err)?;
        let start = format!("{rpps}\u{1f}");
        let end = format!("{rpps}\u{20}");
        let mut out = Vec::new();
        for item in by.range(start.as_str()..end.as_str()).map_err(db_err)? {
            let (k, _) = item.map_err(db_err)?;
            let Some((source, address)) = k.value()[start.len()..].split_once('\u{1f}') else {
                continue;
            };
            let key = format!("{source}\u{1f}{address}");
            if let Some(v) = dir.get(key.as_str()).map_err(db_err)? {
                out.push(decode(v.value())?);
            }
        }
        Ok(out)
    }

    /// Whether a domain is on the trust space's whitelist.
    pub fn whitelisted(&self, domain: &str) -> Result<bool, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(MSS_WHITELIST).map_err(db_err)?;
        Ok(t.get(domain).map_err(db_err)?.is_some())
    }

    /// Whether the MSSanté directory (either source) and the whitelist hold anything:
    /// without both, nobody could be mailed.
    pub fn mssante_ready(&self) -> Result<bool, StoreError> {
        let txn = self.read()?;
        let dir = txn.open_table(MSS_DIRECTORY).map_err(db_err)?;
        let wl = txn.open_table(MSS_WHITELIST).map_err(db_err)?;
        Ok(dir.first().map_err(db_err)?.is_some() && wl.first().map_err(db_err)?.is_some())
    }

    /// The mails the MSSanté sender handed over for one message.
    pub fn mails_sent(&self, seq: u64) -> Result<Vec<SentMail>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(MSS_SENT).map_err(db_err)?;
        let (start, end) = (seq.to_be_bytes(), seq.saturating_add(1).to_be_bytes());
        let mut out = Vec::new();
        for item in t.range(start.as_slice()..end.as_slice()).map_err(db_err)? {
            let (_, v) = item.map_err(db_err)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// Who was mailed a version of a report (`mss_report_key`).
    pub fn report_recipients(&self, report: &str) -> Result<Vec<ReportRecipient>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(MSS_REPORTS).map_err(db_err)?;
        let end = format!("{}\u{20}", report.trim_end_matches('\u{1f}'));
        let mut out = Vec::new();
        for item in t.range(report..end.as_str()).map_err(db_err)? {
            let (_, v) = item.map_err(db_err)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// Sizes of the MSSanté directory (national, local) and whitelist.
    pub fn mssante_counts(&self) -> Result<(u64, u64, u64), StoreError> {
        let txn = self.read()?;
        let dir = txn.open_table(MSS_DIRECTORY).map_err(db_err)?;
        let count = |source: crate::mssante::Source| -> Result<u64, StoreError> {
            let start = format!("{}\u{1f}", source.as_str());
            let end = format!("{}\u{20}", source.as_str());
            Ok(dir
                .range(start.as_str()..end.as_str())
                .map_err(db_err)?
                .count() as u64)
        };
        let wl = txn
            .open_table(MSS_WHITELIST)
            .map_err(db_err)?
            .len()
            .map_err(db_err)?;
        Ok((
            count(crate::mssante::Source::National)?,
            count(crate::mssante::Source::Local)?,
            wl,
        ))
    }

    /// The documents of one report (`dmp::Lineage` key) that labroute published to the DMP
    /// and are current there, by their place in the report.
    pub fn dmp_documents(
        &self,
        establishment: &str,
        order: &str,
    ) -> Result<Vec<(usize, DmpDocument)>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(DMP_DOCS).map_err(db_err)?;
        let prefix = dmp_order_key(establishment, order);
        let mut out = Vec::new();
        for item in t.range(prefix.as_str()..).map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let Some(n) = k.value().strip_prefix(prefix.as_str()) else {
                break;
            };
            let n = n
                .parse()
                .map_err(|_| StoreError::Record("dmp_docs key".into(), k.value().to_owned()))?;
            out.push((n, decode(v.value())?));
        }
        Ok(out)
    }

    /// Why `rpps` takes part in the care of the patient `patient_key` of `establishment`:
    /// a grant first, else the first result that named him; `None` when nothing does.
    pub fn care_link(
        &self,
        establishment: &str,
        patient_key: &str,
        rpps: &str,
    ) -> Result<Option<crate::access::Link>, StoreError> {
        self.index().barrier()?;
        let txn = self.read()?;
        let key = care_key(establishment, patient_key, rpps);
        if txn
            .open_table(CARE_GRANTS)
            .map_err(db_err)?
            .get(key.as_str())
            .map_err(db_err)?
            .is_some()
        {
            return Ok(Some(crate::access::Link::Grant));
        }
        match txn
            .open_table(CARE_LINKS)
            .map_err(db_err)?
            .get(key.as_str())
            .map_err(db_err)?
        {
            Some(v) => Ok(Some(decode::<CareLink>(v.value())?.link)),
            None => Ok(None),
        }
    }

    /// The patients (establishment, patient key) whose results carry the identifier `value`,
    /// of the given system (`Some(None)`: with no system; `None`: any system).
    pub fn patients_by_identifier(
        &self,
        system: Option<Option<&str>>,
        value: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.index().barrier()?;
        let txn = self.read()?;
        let t = txn.open_table(PATIENT_IDS).map_err(db_err)?;
        let prefix = format!("{value}\u{1e}");
        let mut out: Vec<(String, String)> = Vec::new();
        for item in t.range(prefix.as_str()..).map_err(db_err)? {
            let (k, _) = item.map_err(db_err)?;
            let Some(rest) = k.value().strip_prefix(prefix.as_str()) else {
                break;
            };
            // Values never hold the separator (the writer's come from HL7 text, searches
            // refuse control characters); a key that does not split is skipped, never shown.
            let mut parts = rest.splitn(3, '\u{1e}');
            let (Some(sys), Some(est), Some(pk)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let wanted = match system {
                None => true,
                Some(None) => sys.is_empty(),
                Some(Some(s)) => sys == s,
            };
            let p = (est.to_owned(), pk.to_owned());
            if wanted && !out.contains(&p) {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// The results routed or released to `establishment` for the patient `patient_key`, by
    /// message number, newest first.
    pub fn results_of(
        &self,
        establishment: &str,
        patient_key: &str,
    ) -> Result<Vec<u64>, StoreError> {
        self.index().barrier()?;
        let txn = self.read()?;
        let t = txn.open_table(RESULTS).map_err(db_err)?;
        let prefix = result_key_prefix(establishment, patient_key);
        let mut out = Vec::new();
        for item in t.range(prefix.as_str()..).map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            if !k.value().starts_with(prefix.as_str()) {
                break;
            }
            out.push(v.value());
        }
        out.reverse();
        Ok(out)
    }

    /// Counts for status output.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        let txn = self.read()?;
        Ok(Counts {
            messages: txn
                .open_table(RECORDS)
                .map_err(db_err)?
                .len()
                .map_err(db_err)?,
            outbox: txn
                .open_table(OUTBOX)
                .map_err(db_err)?
                .len()
                .map_err(db_err)?,
            quarantine: txn
                .open_table(QUARANTINE)
                .map_err(db_err)?
                .len()
                .map_err(db_err)?,
            dead: txn
                .open_table(DEAD)
                .map_err(db_err)?
                .len()
                .map_err(db_err)?,
            delivered: txn
                .open_table(DELIVERED)
                .map_err(db_err)?
                .len()
                .map_err(db_err)?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub messages: u64,
    pub outbox: u64,
    pub quarantine: u64,
    pub dead: u64,
    pub delivered: u64,
}

pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b)
        .map_err(|e| StoreError::Record(std::any::type_name::<T>().to_owned(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_in_use_says_so_instead_of_suggesting_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).err().unwrap();
        assert!(matches!(err, StoreError::InUse(_)), "{err}");
        assert!(
            err.to_string()
                .contains("in use by another labroute process")
        );
    }

    #[test]
    fn a_file_that_is_not_a_store_is_an_error_naming_it_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(STORE_FILE);
        std::fs::write(
            &file,
            b"this is not a redb file, but it is long enough to have a header",
        )
        .unwrap();
        let before = std::fs::read(&file).unwrap();
        let err = Store::open(dir.path()).err().unwrap();
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
        assert_eq!(std::fs::read(&file).unwrap(), before, "no silent reset");
    }

    /// What a crash leaves pending (it struck before the entries were applied) is in
    /// the indexes once the store is open again, applied in order (first link wins), and
    /// applying it twice changes nothing.
    #[test]
    fn index_writes_left_pending_are_applied_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let key = records::care_key("ES1", "pk", "10003");
        {
            let store = Store::open(dir.path()).unwrap();
            let txn = store.write().unwrap();
            {
                let mut p = txn.open_table(index::PENDING_INDEX).unwrap();
                for (n, seq) in [(1u64, 7u64), (2, 8)] {
                    let mut w = index::Writes::default();
                    w.result(&records::result_key("ES1", "pk", seq), seq);
                    w.patient_id(&records::patient_id_key("123", None, "ES1", "pk"), seq);
                    let link = CareLink {
                        link: crate::access::Link::Ordering,
                        seq,
                        at_ms: seq,
                    };
                    w.care_link(&key, &encode(&link));
                    // Two owners claim one order: the first one's stays (D27 sorts the
                    // writes by key; the sort keeps the messages' order within a key).
                    w.order("DPI\u{1f}PL-1", if n == 1 { "ES1" } else { "ES2" });
                    p.insert(n, w.as_bytes()).unwrap();
                }
            }
            txn.commit().unwrap();
            // The store is dropped as a crash would leave it: entries pending.
        }
        for _ in 0..2 {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.results_of("ES1", "pk").unwrap(), vec![8, 7]);
            assert_eq!(
                store.patients_by_identifier(None, "123").unwrap(),
                vec![("ES1".to_owned(), "pk".to_owned())]
            );
            let txn = store.read().unwrap();
            let first = txn
                .open_table(CARE_LINKS)
                .unwrap()
                .get(key.as_str())
                .unwrap()
                .map(|v| decode::<CareLink>(v.value()).unwrap().seq);
            assert_eq!(first, Some(7), "the first link is kept");
            let owner = txn
                .open_table(ORDERS)
                .unwrap()
                .get("DPI\u{1f}PL-1")
                .unwrap()
                .map(|v| v.value().to_owned());
            assert_eq!(owner.as_deref(), Some("ES1"), "the first owner is kept");
            let left = txn.open_table(index::PENDING_INDEX).unwrap().len().unwrap();
            assert_eq!(left, 0);
        }
    }
}
