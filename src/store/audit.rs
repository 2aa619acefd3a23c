//! The audit journal: append-only, in the store, written in the same transaction as the
//! change it records. Each entry is stored as `SHA-256(body) ‖ body` (body: JSON carrying
//! the previous entry's hash), and the store keeps the head (last sequence number and hash),
//! so `verify` finds any altered, deleted, inserted, reordered or truncated entry and names
//! the first bad one. Signed checkpoints are a later slice (see the issue notes).

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{META, Store, StoreError, db_err};

/// seq → SHA-256(body) (32 bytes) ‖ body (JSON `AuditEntry`).
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// "head" → SHA-256 of the last entry's body.
pub const AUDIT_HEAD: TableDefinition<&str, &[u8]> = TableDefinition::new("audit_head");

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    /// Hex SHA-256 of the previous entry's body (zeros for the first).
    pub prev: String,
    pub at_ms: u64,
    /// received, refused, duplicate, delivered, retry, dead, application_ack, operator.
    pub event: String,
    /// The message it is about.
    pub message: Option<u64>,
    pub establishment: Option<String>,
    /// Sending system, destination or operator.
    pub actor: Option<String>,
    pub detail: serde_json::Value,
}

/// What an event says, before it is chained.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub event: &'static str,
    pub message: Option<u64>,
    pub establishment: Option<String>,
    pub actor: Option<String>,
    pub detail: serde_json::Value,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The journal's position, kept by the writer between batches.
#[derive(Debug, Default, Clone)]
pub(crate) struct Chain {
    pub seq: u64,
    pub head: [u8; 32],
}

impl Chain {
    pub fn load(txn: &WriteTransaction) -> Result<Chain, StoreError> {
        let seq = txn
            .open_table(META)
            .map_err(db_err)?
            .get("audit_seq")
            .map_err(db_err)?
            .map_or(0, |v| v.value());
        let mut head = [0u8; 32];
        if let Some(h) = txn
            .open_table(AUDIT_HEAD)
            .map_err(db_err)?
            .get("head")
            .map_err(db_err)?
        {
            if h.value().len() == 32 {
                head.copy_from_slice(h.value());
            }
        }
        Ok(Chain { seq, head })
    }

    pub fn save(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        txn.open_table(META)
            .map_err(db_err)?
            .insert("audit_seq", self.seq)
            .map_err(db_err)?;
        txn.open_table(AUDIT_HEAD)
            .map_err(db_err)?
            .insert("head", self.head.as_slice())
            .map_err(db_err)?;
        Ok(())
    }

    /// Appends one entry (in the caller's transaction).
    pub fn append(
        &mut self,
        txn: &WriteTransaction,
        now_ms: u64,
        e: AuditEvent,
    ) -> Result<(), StoreError> {
        let entry = AuditEntry {
            seq: self.seq + 1,
            prev: hex(&self.head),
            at_ms: now_ms,
            event: e.event.to_owned(),
            message: e.message,
            establishment: e.establishment,
            actor: e.actor,
            detail: e.detail,
        };
        let body = serde_json::to_vec(&entry)
            .map_err(|err| StoreError::Record("AuditEntry".into(), err.to_string()))?;
        let hash: [u8; 32] = Sha256::digest(&body).into();
        let mut value = Vec::with_capacity(32 + body.len());
        value.extend_from_slice(&hash);
        value.extend_from_slice(&body);
        txn.open_table(AUDIT)
            .map_err(db_err)?
            .insert(entry.seq, value.as_slice())
            .map_err(db_err)?;
        self.seq = entry.seq;
        self.head = hash;
        Ok(())
    }
}

/// The result of `verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub entries: u64,
    /// The first bad entry and what is wrong with it; `None`: the journal is intact.
    pub first_bad: Option<(u64, String)>,
}

/// Checks the whole journal.
pub fn verify(store: &Store) -> Result<Verification, StoreError> {
    let txn = store.db().begin_read().map_err(db_err)?;
    let head_seq = txn
        .open_table(META)
        .map_err(db_err)?
        .get("audit_seq")
        .map_err(db_err)?
        .map_or(0, |v| v.value());
    let head_hash = match txn.open_table(AUDIT_HEAD) {
        Ok(t) => t
            .get("head")
            .map_err(db_err)?
            .map(|v| v.value().to_vec())
            .unwrap_or_else(|| vec![0; 32]),
        Err(redb::TableError::TableDoesNotExist(_)) => vec![0; 32],
        Err(e) => return Err(db_err(e)),
    };
    let bad = |seq: u64, why: String, n: u64| {
        Ok(Verification {
            entries: n,
            first_bad: Some((seq, why)),
        })
    };
    let table = match txn.open_table(AUDIT) {
        Ok(t) => Some(t),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(db_err(e)),
    };
    let mut expected = 1u64;
    let mut prev = [0u8; 32];
    if let Some(t) = table {
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let key = k.value();
            let value = v.value();
            if key != expected {
                return bad(
                    expected,
                    format!("missing (the next entry present is {key})"),
                    expected - 1,
                );
            }
            if value.len() < 32 {
                return bad(key, "truncated".into(), key - 1);
            }
            let (stored, body) = value.split_at(32);
            let hash: [u8; 32] = Sha256::digest(body).into();
            if stored != hash {
                return bad(
                    key,
                    "altered: its content does not match its hash".into(),
                    key - 1,
                );
            }
            let Ok(entry) = serde_json::from_slice::<AuditEntry>(body) else {
                return bad(key, "unreadable".into(), key - 1);
            };
            if entry.seq != key {
                return bad(
                    key,
                    format!("out of place: it is entry {} (reordered)", entry.seq),
                    key - 1,
                );
            }
            if entry.prev != hex(&prev) {
                return bad(
                    key,
                    "chain broken: it does not follow the entry before it".into(),
                    key - 1,
                );
            }
            prev = hash;
            expected += 1;
        }
    }
    let count = expected - 1;
    if count != head_seq || prev.as_slice() != head_hash.as_slice() {
        return bad(
            count + 1,
            format!("missing: the journal ends at {count} but its head says {head_seq}"),
            count,
        );
    }
    Ok(Verification {
        entries: count,
        first_bad: None,
    })
}

/// Entries matching a filter, in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditFilter {
    /// Only these establishments (empty: all).
    pub establishments: Vec<String>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub event: Option<String>,
}

pub fn query(store: &Store, f: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
    let txn = store.db().begin_read().map_err(db_err)?;
    let t = match txn.open_table(AUDIT) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(db_err(e)),
    };
    let mut out = Vec::new();
    for item in t.iter().map_err(db_err)? {
        let (_, v) = item.map_err(db_err)?;
        let Some(body) = v.value().get(32..) else {
            continue;
        };
        let Ok(e) = serde_json::from_slice::<AuditEntry>(body) else {
            continue;
        };
        let est_ok = f.establishments.is_empty()
            || e.establishment
                .as_ref()
                .is_some_and(|x| f.establishments.contains(x));
        let time_ok =
            f.from_ms.is_none_or(|t| e.at_ms >= t) && f.to_ms.is_none_or(|t| e.at_ms <= t);
        let event_ok = f.event.as_ref().is_none_or(|x| &e.event == x);
        if est_ok && time_ok && event_ok {
            out.push(e);
        }
    }
    Ok(out)
}
