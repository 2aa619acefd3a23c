//! The audit journal: append-only, in the store, written in the same transaction as the
//! change it records. Each entry is stored as `SHA-256(body) ‖ body` (body: JSON carrying
//! the previous entry's hash), and the store keeps the head (last sequence number and the
//! first 8 bytes of the last hash, in `META`), so `verify` finds any altered, deleted,
//! inserted, reordered or truncated entry and names the first bad one. Every `seal_every` entries (and when the writer stops) the head is
//! sealed: signed with the instance's TLS key, so that rewriting the whole chain, which a
//! person with the file could do, no longer matches the seals.

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{META, Store, StoreError, db_err};

/// seq → SHA-256(body) (32 bytes) ‖ body (JSON `AuditEntry`).
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// "head" → SHA-256 of the last entry's body: where stores written before 2026-11-25 keep
/// the head; since, it is `HEAD_KEY` in `META` (one table fewer written per commit).
pub const AUDIT_HEAD: TableDefinition<&str, &[u8]> = TableDefinition::new("audit_head");
/// In `META`: the first 8 bytes (big-endian) of the last entry's hash. With `audit_seq`,
/// what `verify` checks the end of the chain against (a removed or rewritten last entry).
pub const HEAD_KEY: &str = "audit_head";

/// The part of a hash kept in `META` as the head.
pub fn head_prefix(hash: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(b)
}
/// entry seq → JSON `Seal` of the head at that entry.
pub const AUDIT_SEALS: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_seals");

/// A signed checkpoint of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    pub upto: u64,
    /// Hex SHA-256 of entry `upto`'s body.
    pub head: String,
    pub at_ms: u64,
    /// rustls signature scheme name.
    pub scheme: String,
    /// Hex signature of `seal_message(upto, head)`.
    pub signature: String,
    /// Hex SHA-256 of the certificate whose key signed.
    pub cert_sha256: String,
}

fn seal_message(upto: u64, head: &[u8]) -> Vec<u8> {
    let mut m = b"labroute audit seal\0".to_vec();
    m.extend_from_slice(&upto.to_be_bytes());
    m.extend_from_slice(head);
    m
}

const SCHEMES: [rustls::SignatureScheme; 4] = [
    rustls::SignatureScheme::ECDSA_NISTP256_SHA256,
    rustls::SignatureScheme::ECDSA_NISTP384_SHA384,
    rustls::SignatureScheme::ED25519,
    rustls::SignatureScheme::RSA_PSS_SHA256,
];

fn verifier_for(
    scheme: &str,
) -> Option<&'static dyn rustls::pki_types::SignatureVerificationAlgorithm> {
    Some(match scheme {
        "ECDSA_NISTP256_SHA256" => webpki::ring::ECDSA_P256_SHA256,
        "ECDSA_NISTP384_SHA384" => webpki::ring::ECDSA_P384_SHA384,
        "ED25519" => webpki::ring::ED25519,
        "RSA_PSS_SHA256" => webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        _ => return None,
    })
}

/// Signs seals with the instance's key.
pub struct Sealer {
    /// The instance's key, as last (re)loaded: a seal after a certificate reload is signed
    /// with the new key and names the new certificate.
    tls: std::sync::Arc<crate::tls::TlsState>,
    /// Entries between two seals.
    pub every: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer(every {})", self.every)
    }
}

impl Sealer {
    pub fn new(tls: std::sync::Arc<crate::tls::TlsState>, every: u64) -> Sealer {
        Sealer {
            tls,
            every: every.max(1),
        }
    }

    fn seal(&self, upto: u64, head: &[u8; 32], now_ms: u64) -> Result<Seal, StoreError> {
        let key = self.tls.instance_key();
        let signer = key
            .key
            .choose_scheme(&SCHEMES)
            .ok_or_else(|| StoreError::Commit("the instance key cannot sign seals".into()))?;
        let sig = signer
            .sign(&seal_message(upto, head))
            .map_err(|e| StoreError::Commit(format!("sealing the audit journal: {e}")))?;
        Ok(Seal {
            upto,
            head: hex(head),
            at_ms: now_ms,
            scheme: format!("{:?}", signer.scheme()),
            signature: hex(&sig),
            cert_sha256: key.cert_sha256.clone(),
        })
    }
}

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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEvent {
    pub event: std::borrow::Cow<'static, str>,
    pub message: Option<u64>,
    pub establishment: Option<String>,
    pub actor: Option<String>,
    pub detail: serde_json::Value,
}

use crate::model::hex;

/// The journal's position, kept by the writer between batches.
#[derive(Debug, Default, Clone)]
pub(crate) struct Chain {
    pub seq: u64,
    pub head: [u8; 32],
    /// Last sealed entry.
    pub sealed: u64,
}

impl Chain {
    pub fn load(tx: &mut super::tx::Tx<'_>) -> Result<Chain, StoreError> {
        let meta = tx.cold().open_table(META).map_err(db_err)?;
        let seq = meta
            .get("audit_seq")
            .map_err(db_err)?
            .map_or(0, |v| v.value());
        let sealed = meta
            .get("audit_sealed")
            .map_err(db_err)?
            .map_or(0, |v| v.value());
        drop(meta);
        // The head is the last entry's hash, stored with it.
        let mut head = [0u8; 32];
        if seq > 0 {
            if let Some(v) = tx.audit()?.get(seq).map_err(db_err)? {
                if let Some(h) = v.value().get(..32) {
                    head.copy_from_slice(h);
                }
            }
        }
        Ok(Chain { seq, head, sealed })
    }

    /// Seals the head when `every` entries passed since the last seal (or, with `force`,
    /// when any did).
    pub fn maybe_seal(
        &mut self,
        txn: &WriteTransaction,
        sealer: &Sealer,
        now_ms: u64,
        force: bool,
    ) -> Result<(), StoreError> {
        let due = self.seq >= self.sealed + sealer.every || (force && self.seq > self.sealed);
        if !due {
            return Ok(());
        }
        let seal = sealer.seal(self.seq, &self.head, now_ms)?;
        let json = serde_json::to_vec(&seal)
            .map_err(|e| StoreError::Record("Seal".into(), e.to_string()))?;
        txn.open_table(AUDIT_SEALS)
            .map_err(db_err)?
            .insert(self.seq, json.as_slice())
            .map_err(db_err)?;
        self.sealed = self.seq;
        Ok(())
    }

    pub fn save(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        meta.insert("audit_seq", self.seq).map_err(db_err)?;
        meta.insert("audit_sealed", self.sealed).map_err(db_err)?;
        meta.insert(HEAD_KEY, head_prefix(&self.head))
            .map_err(db_err)?;
        Ok(())
    }

    /// Appends one entry (in the caller's transaction).
    pub(crate) fn append(
        &mut self,
        tx: &mut super::tx::Tx<'_>,
        now_ms: u64,
        e: AuditEvent,
    ) -> Result<(), StoreError> {
        let entry = AuditEntry {
            seq: self.seq + 1,
            prev: hex(&self.head),
            at_ms: now_ms,
            event: e.event.into_owned(),
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
        tx.audit()?
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
    /// Seals whose signature was checked against the certificate given, and matched.
    pub seals_verified: u64,
    /// Seals made with another certificate (a renewed one): their content still matched.
    pub seals_other_certificate: u64,
    /// The first bad entry and what is wrong with it; `None`: the journal is intact.
    pub first_bad: Option<(u64, String)>,
}

/// Checks the whole journal, and its seals against `cert` (the instance certificate).
pub fn verify(
    store: &Store,
    cert: Option<&rustls::pki_types::CertificateDer<'_>>,
) -> Result<Verification, StoreError> {
    let txn = store.read()?;
    let meta = txn.open_table(META).map_err(db_err)?;
    let head_seq = meta
        .get("audit_seq")
        .map_err(db_err)?
        .map_or(0, |v| v.value());
    // A store written before `HEAD_KEY` keeps the whole hash in `AUDIT_HEAD`: its first 8
    // bytes are what is compared.
    let kept_head = match meta.get(HEAD_KEY).map_err(db_err)?.map(|v| v.value()) {
        Some(kept) => kept,
        None => match txn.open_table(AUDIT_HEAD) {
            Ok(t) => t
                .get("head")
                .map_err(db_err)?
                .and_then(|v| v.value().get(..32)?.try_into().ok())
                .map_or(0, |h: [u8; 32]| head_prefix(&h)),
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(db_err(e)),
        },
    };
    drop(meta);
    let bad = |seq: u64, why: String, n: u64| {
        Ok(Verification {
            entries: n,
            seals_verified: 0,
            seals_other_certificate: 0,
            first_bad: Some((seq, why)),
        })
    };
    let seals: Vec<Seal> = match txn.open_table(AUDIT_SEALS) {
        Ok(t) => {
            let mut v = Vec::new();
            for item in t.iter().map_err(db_err)? {
                let (k, val) = item.map_err(db_err)?;
                match serde_json::from_slice::<Seal>(val.value()) {
                    Ok(s) => v.push(s),
                    Err(_) => return bad(k.value(), "its seal is unreadable".into(), 0),
                }
            }
            v
        }
        Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
        Err(e) => return Err(db_err(e)),
    };
    let sealed_at: std::collections::HashSet<u64> = seals.iter().map(|s| s.upto).collect();
    let mut sealed_hashes = std::collections::HashMap::new();
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
            if sealed_at.contains(&key) {
                sealed_hashes.insert(key, hash);
            }
            expected += 1;
        }
    }
    let count = expected - 1;
    if count != head_seq {
        return bad(
            count + 1,
            format!("missing: the journal ends at {count} but its head says {head_seq}"),
            count,
        );
    }
    if head_prefix(&prev) != kept_head {
        return bad(
            count.max(1),
            "the journal ends here but the head the store keeps names another entry: this one rewritten, or one after it removed".into(),
            count.saturating_sub(1),
        );
    }
    let (mut verified, mut other) = (0, 0);
    let cert_hash = cert.map(|c| crate::model::sha256_hex(c.as_ref()));
    let ee = cert.and_then(|c| webpki::EndEntityCert::try_from(c).ok());
    for s in &seals {
        let Some(h) = sealed_hashes.get(&s.upto) else {
            return bad(
                s.upto,
                "sealed, but the journal no longer has it".into(),
                count,
            );
        };
        if s.head != hex(h) {
            return bad(
                s.upto,
                "differs from what was sealed: the journal was rewritten".into(),
                count,
            );
        }
        match (&ee, cert_hash.as_deref() == Some(s.cert_sha256.as_str())) {
            (Some(ee), true) => {
                let sig = unhex(&s.signature);
                let ok = verifier_for(&s.scheme).is_some_and(|alg| {
                    ee.verify_signature(alg, &seal_message(s.upto, h), &sig)
                        .is_ok()
                });
                if !ok {
                    return bad(s.upto, "its seal's signature is invalid".into(), count);
                }
                verified += 1;
            }
            _ => other += 1,
        }
    }
    Ok(Verification {
        entries: count,
        seals_verified: verified,
        seals_other_certificate: other,
        first_bad: None,
    })
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| s.get(2 * i..2 * i + 2))
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect()
}

/// Entries matching a filter, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditFilter {
    /// Only these establishments (empty: all).
    pub establishments: Vec<String>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub event: Option<String>,
}

pub fn query(store: &Store, f: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
    let txn = store.read()?;
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
