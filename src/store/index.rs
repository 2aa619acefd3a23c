//! Index writes kept off the ACK path (DECISIONS D22).
//!
//! The indexes keyed by values in no order (the results server's `RESULTS`, `PATIENT_IDS`,
//! `CARE_LINKS`; the writer's own `DEDUP` and `ORDERS`) have each insert dirty its own
//! B-tree leaf, which redb writes again at every durable commit. The writer does not insert them in the
//! transaction that acknowledges a message; it appends what to insert to `PENDING_INDEX`
//! (one sequential key per message) and applies the pending entries behind, many messages
//! in one transaction, in order:
//!
//! - when no request has come to the writer for a few milliseconds (not merely an empty
//!   queue after a batch: under load that lasts an instant), when enough have piled up, or
//!   when a reader asked ([`IndexProgress::barrier`]);
//! - a crash between the acknowledging commit and the application leaves the entries
//!   pending (they are removed in the transaction that applies them): opening the store
//!   applies them, and every write here gives the same table whether applied once or
//!   twice (an insert of a fixed value, or an insert only when the key is absent, in
//!   message order: first link wins).
//!
//! The writer reads `DEDUP` and `ORDERS` itself (a duplicate, the order a result answers):
//! what it appended and has not applied yet it finds in its [`Overlay`], looked at before
//! the tables.
//!
//! Readers of the results indexes call [`IndexProgress::barrier`] first: it returns once every
//! message acknowledged before the call is indexed, so that what a sender was told is
//! stored is also what the results server and the MSSanté recipients see.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::{CARE_LINKS, DEDUP, ORDERS, PATIENT_IDS, RESULTS, StoreError, db_err};

/// Pending number (`META` key [`PENDING_COUNTER`]) → the index writes of one message.
pub(crate) const PENDING_INDEX: TableDefinition<u64, &[u8]> = TableDefinition::new("pending_index");
/// `META` key of the last pending number given.
pub(crate) const PENDING_COUNTER: &str = "index_pending_seq";

/// Applied at once when this many messages' index writes wait (under a load that never
/// leaves the writer idle).
pub(crate) const APPLY_AT: u64 = 512;

/// How long a reader waits for the indexes before it is answered `IndexBehind`.
const BARRIER_WAIT: Duration = Duration::from_secs(10);

const OP_RESULT: u8 = 1;
const OP_PATIENT_ID: u8 = 2;
const OP_CARE_LINK: u8 = 3;
const OP_DEDUP: u8 = 4;
const OP_ORDER: u8 = 5;

/// The index writes of one message, encoded as they are appended: per write a kind byte,
/// then the key and the value, each preceded by its length (u32, big-endian).
#[derive(Default)]
pub(crate) struct Writes(Vec<u8>);

impl Writes {
    fn push(&mut self, op: u8, key: &str, value: &[u8]) {
        self.0.push(op);
        for part in [key.as_bytes(), value] {
            // Keys and values here are a few hundred bytes at most (HL7 identifiers).
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            self.0.extend_from_slice(&len.to_be_bytes());
            self.0.extend_from_slice(&part[..len as usize]);
        }
    }
    /// `RESULTS[key] = seq`.
    pub fn result(&mut self, key: &str, seq: u64) {
        self.push(OP_RESULT, key, &seq.to_be_bytes());
    }
    /// `PATIENT_IDS[key] = seq` unless the key is there.
    pub fn patient_id(&mut self, key: &str, seq: u64) {
        self.push(OP_PATIENT_ID, key, &seq.to_be_bytes());
    }
    /// `CARE_LINKS[key] = link` (encoded) unless the key is there.
    pub fn care_link(&mut self, key: &str, link: &[u8]) {
        self.push(OP_CARE_LINK, key, link);
    }
    /// `DEDUP[key] = value` (the writer looked first: the key is new).
    pub fn dedup(&mut self, key: &str, value: &[u8]) {
        self.push(OP_DEDUP, key, value);
    }
    /// `ORDERS[key] = owner` unless the key is there (the first owner stays).
    pub fn order(&mut self, key: &str, owner: &str) {
        self.push(OP_ORDER, key, owner.as_bytes());
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// One length-prefixed part of an entry.
fn take<'b>(from: &mut &'b [u8]) -> Option<&'b [u8]> {
    let (len, rest) = from.split_at_checked(4)?;
    let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
    let (part, rest) = rest.split_at_checked(len)?;
    *from = rest;
    Some(part)
}

/// One decoded write: kind, key, value.
fn next_write<'b>(b: &mut &'b [u8]) -> Option<(u8, &'b str, &'b [u8])> {
    let (&op, mut rest) = b.split_first()?;
    let key = take(&mut rest)?;
    let value = take(&mut rest)?;
    *b = rest;
    Some((op, std::str::from_utf8(key).ok()?, value))
}

/// Applies every pending entry in `txn` and removes them. Returns how many messages' writes
/// were applied. An entry that does not decode (it was written by this module: never, short
/// of a damaged file) is logged, kept out of the indexes, and removed.
///
/// The writes are applied table by table in key order (D27): a batch's random keys then
/// walk each B-tree once from left to right instead of jumping between leaves. The sort is
/// stable, so two writes of one key keep the order of their messages: the first stays
/// where the first wins (patient identifiers, care links, orders), the last where the last
/// wins (a results entry written again).
pub(crate) fn apply_pending(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let mut pending = txn.open_table(PENDING_INDEX).map_err(db_err)?;
    let mut entries: Vec<(u64, Vec<u8>)> = Vec::new();
    for item in pending.iter().map_err(db_err)? {
        let (k, v) = item.map_err(db_err)?;
        entries.push((k.value(), v.value().to_vec()));
    }
    let mut writes: Vec<(u8, &str, &[u8], u64)> = Vec::with_capacity(entries.len() * 4);
    for (number, bytes) in &entries {
        let mut b = bytes.as_slice();
        while !b.is_empty() {
            let Some((op, key, value)) = next_write(&mut b) else {
                tracing::error!(
                    pending = number,
                    "a pending index entry does not decode; its remaining writes are dropped"
                );
                break;
            };
            writes.push((op, key, value, *number));
        }
    }
    writes.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut results = txn.open_table(RESULTS).map_err(db_err)?;
    let mut ids = txn.open_table(PATIENT_IDS).map_err(db_err)?;
    let mut care = txn.open_table(CARE_LINKS).map_err(db_err)?;
    let mut dedup = txn.open_table(DEDUP).map_err(db_err)?;
    let mut orders = txn.open_table(ORDERS).map_err(db_err)?;
    for (op, key, value, number) in writes {
        // The message number of a results entry or a patient identifier.
        let seq = || value.try_into().map(u64::from_be_bytes).unwrap_or_default();
        match op {
            OP_RESULT => {
                results.insert(key, seq()).map_err(db_err)?;
            }
            OP_PATIENT_ID => {
                if ids.get(key).map_err(db_err)?.is_none() {
                    ids.insert(key, seq()).map_err(db_err)?;
                }
            }
            OP_CARE_LINK => {
                if care.get(key).map_err(db_err)?.is_none() {
                    care.insert(key, value).map_err(db_err)?;
                }
            }
            OP_DEDUP => {
                dedup.insert(key, value).map_err(db_err)?;
            }
            OP_ORDER => {
                if orders.get(key).map_err(db_err)?.is_none() {
                    let owner = std::str::from_utf8(value).unwrap_or_default();
                    orders.insert(key, owner).map_err(db_err)?;
                }
            }
            other => {
                tracing::error!(
                    pending = number,
                    kind = other,
                    "unknown pending index write"
                );
            }
        }
    }
    // Every entry read above is applied: the table is emptied in one walk.
    pending.retain(|_, _| false).map_err(db_err)?;
    Ok(entries.len() as u64)
}

/// What the writer appended to `DEDUP` and `ORDERS` and has not applied yet, with the
/// pending number of the entry that carries it. Kept by the writer thread only.
#[derive(Default)]
pub(crate) struct Overlay {
    dedup: HashMap<String, (u64, Vec<u8>)>,
    orders: HashMap<String, (u64, String)>,
}

impl Overlay {
    pub fn dedup(&self, key: &str) -> Option<&[u8]> {
        self.dedup.get(key).map(|(_, v)| v.as_slice())
    }
    pub fn order(&self, key: &str) -> Option<&str> {
        self.orders.get(key).map(|(_, v)| v.as_str())
    }
    pub fn add_dedup(&mut self, pending: u64, key: String, value: Vec<u8>) {
        self.dedup.insert(key, (pending, value));
    }
    pub fn add_order(&mut self, pending: u64, key: String, owner: String) {
        self.orders.entry(key).or_insert((pending, owner));
    }
    /// Entries up to `pending` are in the tables now.
    pub fn applied(&mut self, pending: u64) {
        self.dedup.retain(|_, (p, _)| *p > pending);
        self.orders.retain(|_, (p, _)| *p > pending);
    }
    /// A batch failed: what it added (after `committed`) was never written.
    pub fn forget_after(&mut self, committed: u64) {
        self.dedup.retain(|_, (p, _)| *p <= committed);
        self.orders.retain(|_, (p, _)| *p <= committed);
    }
    #[cfg(test)]
    fn len(&self) -> usize {
        self.dedup.len() + self.orders.len()
    }
}

/// How far the indexes are behind the acknowledged messages, shared by the writer and the
/// readers. Pending numbers only grow (the counter is kept in `META`).
#[derive(Default)]
pub(crate) struct IndexProgress {
    /// The last pending number committed (its message acknowledged).
    committed: AtomicU64,
    /// Every pending number up to this one is in the indexes.
    applied: AtomicU64,
    /// A reader waits: apply at the end of the current batch.
    wanted: AtomicBool,
    lock: Mutex<()>,
    done: Condvar,
}

impl IndexProgress {
    /// The writer committed pending entries up to `n`.
    pub fn committed(&self, n: u64) {
        self.committed.fetch_max(n, Ordering::AcqRel);
    }

    /// Pending entries up to `n` are applied (or there were none up to `n`).
    pub fn applied(&self, n: u64) {
        self.applied.fetch_max(n, Ordering::AcqRel);
        let _g = self.lock.lock();
        self.done.notify_all();
    }

    pub fn last_committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Whether entries committed wait to be applied.
    pub fn behind(&self) -> bool {
        self.committed.load(Ordering::Acquire) > self.applied.load(Ordering::Acquire)
    }

    /// Whether the writer should apply now: entries wait and the writer is idle, a reader
    /// asked, or many wait.
    pub fn should_apply(&self, idle: bool) -> bool {
        let (c, a) = (
            self.committed.load(Ordering::Acquire),
            self.applied.load(Ordering::Acquire),
        );
        c > a && (idle || c - a >= APPLY_AT || self.wanted.swap(false, Ordering::AcqRel))
    }

    /// Returns once every message acknowledged before the call is in the indexes; after
    /// `BARRIER_WAIT`, `IndexBehind` (the writer is stuck: the store is unavailable).
    pub fn barrier(&self) -> Result<(), StoreError> {
        let target = self.committed.load(Ordering::Acquire);
        if self.applied.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        self.wanted.store(true, Ordering::Release);
        let deadline = Instant::now() + BARRIER_WAIT;
        let mut g = match self.lock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        while self.applied.load(Ordering::Acquire) < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::IndexBehind);
            }
            // Asked again at each wake-up: the writer may have applied an earlier batch.
            self.wanted.store(true, Ordering::Release);
            g = match self
                .done
                .wait_timeout(g, left.min(Duration::from_millis(50)))
            {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_decode_as_they_were_encoded() {
        let mut w = Writes::default();
        w.result("ES1\u{1e}pk\u{1e}00000000000000000007", 7);
        w.patient_id("123\u{1e}\u{1e}ES1\u{1e}pk", 7);
        w.care_link("ES1\u{1e}pk\u{1e}10003", b"{\"link\":\"prescriber\"}");
        let mut b = w.as_bytes();
        let mut got = Vec::new();
        while let Some(x) = next_write(&mut b) {
            got.push(x);
        }
        assert!(b.is_empty());
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0],
            (
                OP_RESULT,
                "ES1\u{1e}pk\u{1e}00000000000000000007",
                &7u64.to_be_bytes()[..]
            )
        );
        assert_eq!(got[1].0, OP_PATIENT_ID);
        assert_eq!(
            got[2],
            (
                OP_CARE_LINK,
                "ES1\u{1e}pk\u{1e}10003",
                &b"{\"link\":\"prescriber\"}"[..]
            )
        );
        // Truncated: nothing half-read.
        let mut short = &w.as_bytes()[..10];
        assert_eq!(next_write(&mut short), None);
    }

    #[test]
    fn the_overlay_keeps_what_is_not_applied_and_forgets_a_failed_batch() {
        let mut o = Overlay::default();
        o.add_dedup(1, "a".into(), vec![1]);
        o.add_order(1, "P\u{1f}1".into(), "ES1".into());
        o.add_order(2, "P\u{1f}1".into(), "ES2".into());
        assert_eq!(o.order("P\u{1f}1"), Some("ES1"), "the first owner stays");
        o.add_dedup(3, "b".into(), vec![3]);
        o.forget_after(2);
        assert_eq!(o.dedup("b"), None);
        assert_eq!(o.dedup("a"), Some(&[1u8][..]));
        o.applied(1);
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn the_barrier_waits_for_what_was_committed_before_it() {
        let p = std::sync::Arc::new(IndexProgress::default());
        p.barrier().unwrap();
        p.committed(3);
        assert!(p.should_apply(true));
        assert!(!p.should_apply(false), "neither idle, nor many, nor asked");
        let p2 = p.clone();
        let waiter = std::thread::spawn(move || p2.barrier());
        // The waiter asks; the writer sees it at the end of its batch.
        while !p.should_apply(false) {
            std::thread::yield_now();
        }
        p.applied(3);
        waiter.join().unwrap().unwrap();
        assert!(!p.should_apply(true), "nothing left");
    }
}
