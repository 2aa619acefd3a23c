//! The single writer: group commit of every change, replies only after the commit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use redb::ReadableTable;

use super::tx::Tx;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::*;
use crate::config::Config;
use crate::hl7::ack::{self, AckCode, AckError, AckHeader, AckOutcome, AppAckType};
use crate::model::{DestinationName, EstablishmentId, MessageClass};
use crate::router::{self, Decision, Facts, OrderIndex};
use crate::time::{hl7_timestamp, now_ms};

/// A message that parsed and classified, to be stored and routed.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct IngestRequest {
    pub listener: String,
    pub peer: String,
    #[serde(with = "crate::model::b64")]
    pub raw: Vec<u8>,
    pub facts: Facts,
    pub header: AckHeader,
    pub enhanced: bool,
    /// MSH-16, when the sender wants an application ACK once the outcome is final.
    pub app_ack: Option<AppAckType>,
    /// The peer's certificate identity (TLS listeners).
    pub identity: Option<crate::tls::PeerIdentity>,
    /// What tells a retransmission from a different message under the same control id;
    /// `None`: the SHA-256 of `raw`. A FHIR Bundle's HL7 twin carries its receipt time
    /// when the Bundle has no timestamp, so its fingerprint leaves that time out.
    pub fingerprint: Option<[u8; 32]>,
    /// The SHA-256 of `raw`, computed by the sender's task (off the writer thread).
    pub digest: [u8; 32],
}

/// A message refused before routing, to be kept for review.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct RejectRequest {
    pub listener: String,
    pub peer: String,
    #[serde(with = "crate::model::b64")]
    pub raw: Vec<u8>,
    pub control_id: String,
    pub message_type: String,
    pub error: AckError,
    pub header: AckHeader,
    pub enhanced: bool,
    /// The tenant decision, when the refusal came after it (kept for review).
    pub decision: Option<Decision>,
    pub sender: Option<String>,
}

impl RejectRequest {
    /// Refuses a message that was read (and perhaps decided) after all.
    fn from_ingest(
        req: IngestRequest,
        error: AckError,
        decision: Option<Decision>,
        sender: Option<String>,
    ) -> RejectRequest {
        RejectRequest {
            listener: req.listener,
            peer: req.peer,
            raw: req.raw,
            control_id: req.facts.control_id.clone(),
            message_type: format!("{}^{}", req.facts.message_type, req.facts.trigger),
            error,
            header: req.header,
            enhanced: req.enhanced,
            decision,
            sender,
        }
    }
}

/// What became of an ingested message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestReply {
    /// Stored (routed or quarantined): the ACK to send.
    Accepted {
        seq: u64,
        ack: Vec<u8>,
        code: AckCode,
        establishment: Option<EstablishmentId>,
        quarantined: bool,
    },
    /// Same sender, control id and content as an earlier message: its original ACK.
    Duplicate { seq: u64, ack: Vec<u8> },
    /// Stored as rejected, with the HL7 table 0357 error code and the error's text (which
    /// names fields, never their values).
    Rejected {
        seq: u64,
        ack: Vec<u8>,
        code: AckCode,
        error_code: u16,
        text: String,
    },
}

/// Outcome of one delivery attempt, reported by a destination worker.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum DeliveryUpdate {
    /// Accepted by the destination; for the DMP, the changes to its document register.
    Delivered {
        dmp: Vec<DmpChange>,
        /// For MSSanté: each candidate recipient and what became of him.
        mail: Vec<MailOutcome>,
    },
    Retry {
        attempts: u32,
        next_attempt_ms: u64,
        error: String,
    },
    Dead {
        attempts: u32,
        reason: String,
    },
    /// Not sent, by a rule of the destination (the DMP gate): settled, journalled with the
    /// reason, not a dead letter.
    Withheld {
        reason: String,
        /// For MSSanté: each candidate recipient and why he was not mailed.
        mail: Vec<MailOutcome>,
    },
}

/// One MSSanté recipient's outcome, as the journal keeps it: `recipient` is the RPPS
/// (`rpps:…`), an address, or `patient` (a patient's address holds his INS: never kept);
/// `outcome` is `sent` or a `policy::MailRefusal` name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MailOutcome {
    pub recipient: String,
    /// ordering, copy, recipient, standing.
    pub named: String,
    pub outcome: String,
    /// Who he is for the sender's business acknowledgement (not journalled: a patient's
    /// address holds his INS; `journal_mail` leaves it out).
    #[serde(default)]
    pub who: crate::mssante::receipts::Who,
}

/// Mail outcomes as the journal keeps them: without `who`.
fn journal_mail(mail: &[MailOutcome]) -> serde_json::Value {
    mail.iter()
        .map(|m| {
            serde_json::json!({ "recipient": m.recipient, "named": m.named, "outcome": m.outcome })
        })
        .collect()
}

/// Operator commands that change the store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OperatorCommand {
    Release {
        seq: u64,
        establishment: String,
    },
    Discard {
        seq: u64,
        reason: String,
    },
    RetryDead {
        destination: String,
        seq: u64,
    },
    /// A patient's opposition to the DMP feed, recorded (or lifted) in one establishment,
    /// the patient named by a local identifier (PID-3: assigning authority and id), as the
    /// DMP gate reads it.
    DmpOpposition {
        establishment: String,
        authority: String,
        id: String,
        opposed: bool,
    },
    /// A patient's opposition to sharing his results outside the establishment (MSSanté
    /// to professionals, the results server), recorded or lifted in one establishment.
    SharingOpposition {
        establishment: String,
        authority: String,
        id: String,
        opposed: bool,
    },
    /// Replaces the MSSanté directory entries of one source (the whole instance's).
    DirectoryImport {
        source: crate::mssante::Source,
        mailboxes: Vec<crate::mssante::Mailbox>,
    },
    /// Replaces the trust space's whitelist (the whole instance's).
    WhitelistImport {
        domains: Vec<String>,
    },
    /// A read receipt (MDN) for one mail the MSSanté sender sent: its Message-ID
    /// (`mssante::mdn::message_id`) and what the recipient did.
    MailRead {
        message_id: String,
        disposition: crate::mssante::mdn::Disposition,
    },
    /// Access to a patient's results granted to (or withdrawn from) a practitioner outside
    /// the establishment, known by his RPPS: a care-team member the results do not name.
    CareGrant {
        establishment: String,
        authority: String,
        id: String,
        rpps: String,
        granted: bool,
    },
}

impl OperatorCommand {
    /// The command as the journal keeps it: a patient appears only as `patient_ref`.
    pub fn journal(&self) -> serde_json::Value {
        match self {
            OperatorCommand::DmpOpposition {
                establishment,
                authority,
                id,
                opposed,
            }
            | OperatorCommand::SharingOpposition {
                establishment,
                authority,
                id,
                opposed,
            } => {
                let name = match self {
                    OperatorCommand::DmpOpposition { .. } => "DmpOpposition",
                    _ => "SharingOpposition",
                };
                serde_json::json!({ name: {
                    "establishment": establishment,
                    "patient": patient_ref(establishment, &patient_key(authority, id)),
                    "opposed": opposed,
                }})
            }
            OperatorCommand::CareGrant {
                establishment,
                authority,
                id,
                rpps,
                granted,
            } => serde_json::json!({ "CareGrant": {
                "establishment": establishment,
                "patient": patient_ref(establishment, &patient_key(authority, id)),
                "rpps": rpps,
                "granted": granted,
            }}),
            // A directory is not journalled entry by entry: its size is.
            OperatorCommand::DirectoryImport { source, mailboxes } => serde_json::json!({
                "DirectoryImport": { "source": source, "mailboxes": mailboxes.len() }
            }),
            OperatorCommand::WhitelistImport { domains } => serde_json::json!({
                "WhitelistImport": { "domains": domains.len() }
            }),
            other => serde_json::to_value(other).unwrap_or_default(),
        }
    }
}

/// The patient key the DMP gate and the PATIENTS table use (`router::Facts::patient_key`).
pub fn patient_key(authority: &str, id: &str) -> String {
    format!("{}\u{1f}{}", authority.trim(), id.trim())
}

/// A patient as the journal names one: the first 16 hex digits of SHA-256 of establishment
/// and patient key. Not an identifier anyone reads; someone who has the identifier can find
/// the entries.
pub fn patient_ref(establishment: &str, key: &str) -> String {
    let h = crate::model::sha256(format!("{establishment}\u{1f}{key}").as_bytes());
    crate::model::hex(&h[..8])
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OperatorError {
    #[error("message {0} is not in quarantine")]
    NotQuarantined(u64),
    #[error("no establishment has id {0:?}")]
    UnknownEstablishment(String),
    #[error("no dead letter for message {1} on destination {0:?}")]
    NotDead(String, u64),
    /// The message implicates an establishment outside the operator's scope (or the target
    /// establishment is outside it). Audited.
    #[error("message {seq} is not within your establishments ({scope})")]
    Forbidden { seq: u64, scope: String },
    /// An establishment outside the operator's scope. Audited.
    #[error("establishment {establishment} is not within your establishments ({scope})")]
    OutOfScope {
        establishment: String,
        scope: String,
    },
    /// A release to an establishment the sending system may not speak for.
    #[error("message {seq} was sent by system {system:?}, which may not speak for {establishment}")]
    SenderNotFor {
        seq: u64,
        system: String,
        establishment: String,
    },
    /// A command whose arguments are wrong.
    #[error("{0}")]
    Invalid(String),
    /// A whole-instance action asked by an operator not allowed every establishment.
    /// Audited.
    #[error("{action} concerns every establishment; yours are {scope}")]
    NeedsInstance { action: String, scope: String },
    #[error("{0}")]
    Store(String),
}

/// What a request asks the writer to do. Serialised as a JetStream log entry (D23), all but
/// `Reconfigure`: on a log, a reload is published as `Routes` (D24).
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) enum Request {
    Ingest(Box<IngestRequest>),
    Reject(Box<RejectRequest>),
    Delivery {
        dest: String,
        n: u64,
        seq: u64,
        update: DeliveryUpdate,
    },
    Operator {
        cmd: OperatorCommand,
        operator: crate::policy::Operator,
    },
    /// An event with no message to store (a refused TLS handshake).
    Audit(super::audit::AuditEvent),
    /// The MSSanté sender handed one recipient's mail to the SMTP server.
    MailSent {
        seq: u64,
        mail: SentMail,
    },
    /// Put a new configuration in force (a reload), moving what it reroutes.
    #[serde(skip)]
    Reconfigure(Arc<Config>),
    /// On a JetStream log (D24): put in force, from this entry on, the routes with this
    /// digest: those in force already, or those a reload staged on this node. A node with
    /// neither stops applying the log here (it would decide differently from the others).
    Routes {
        digest: crate::config::RoutesDigest,
    },
}

/// Routes read by a reload (or at a node's start) for the writer to put in force when the
/// log entry naming their digest comes (D24). Shared by the handle, the log's publisher and
/// the writer.
#[derive(Clone, Default)]
pub(crate) struct Staged(Arc<(std::sync::Mutex<Option<Arc<Config>>>, std::sync::Condvar)>);

impl Staged {
    pub(crate) fn put(&self, cfg: Arc<Config>) {
        let (slot, staged) = &*self.0;
        match slot.lock() {
            Ok(mut g) => *g = Some(cfg),
            Err(p) => *p.into_inner() = Some(cfg),
        }
        staged.notify_all();
    }

    pub(crate) fn get(&self) -> Option<Arc<Config>> {
        match self.0.0.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Waits up to `limit` for routes to be staged.
    fn wait(&self, limit: std::time::Duration) {
        let (slot, staged) = &*self.0;
        let guard = match slot.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let _ = staged.wait_timeout(guard, limit);
    }
}

/// Where a batch of log entries must stop (D24): the first `Routes` entry whose routes are
/// neither those in force (after the batch's earlier entries) nor the staged ones. Its index
/// in the batch, its position in the log, the digest it names and the one in force.
fn routes_gate(
    batch: &[Op],
    current: &Config,
    staged: Option<&Arc<Config>>,
) -> Option<(
    usize,
    u64,
    crate::config::RoutesDigest,
    crate::config::RoutesDigest,
)> {
    let mut in_force = None;
    let mut staged_digest = None;
    for (i, op) in batch.iter().enumerate() {
        let (Request::Routes { digest }, Some(n)) = (&op.request, op.log) else {
            continue;
        };
        let now = *in_force.get_or_insert_with(|| current.routing_digest());
        if *digest == now {
            continue;
        }
        let ready = staged
            .map(|s| *staged_digest.get_or_insert_with(|| s.routing_digest()))
            .is_some_and(|d| d == *digest);
        if ready {
            in_force = Some(*digest);
            continue;
        }
        return Some((i, n, *digest, now));
    }
    None
}

/// Where the answer to a request goes, once the batch is committed (or has failed).
pub(super) enum Reply {
    Ingest(oneshot::Sender<Result<IngestReply, StoreError>>),
    Unit(oneshot::Sender<Result<(), StoreError>>),
    Operator(oneshot::Sender<Result<String, OperatorError>>),
    /// Nobody here waits: a log entry another node (or an earlier run) wrote.
    Nobody,
}

/// A request's result inside a transaction, sent only after the commit.
enum Answer {
    Ingest(IngestReply),
    Unit,
    Operator(Result<String, OperatorError>),
}

impl Reply {
    fn answer(self, a: Answer) {
        // A requester that went away (connection closed) no longer needs its answer.
        match (self, a) {
            (Reply::Ingest(tx), Answer::Ingest(r)) => {
                let _ = tx.send(Ok(r));
            }
            (Reply::Unit(tx), Answer::Unit) => {
                let _ = tx.send(Ok(()));
            }
            (Reply::Operator(tx), Answer::Operator(r)) => {
                let _ = tx.send(r);
            }
            (Reply::Nobody, _) => {}
            (reply, _) => reply.fail("internal: answer does not match its request"),
        }
    }

    pub(super) fn fail(self, e: &str) {
        match self {
            Reply::Ingest(tx) => {
                let _ = tx.send(Err(StoreError::Commit(e.to_owned())));
            }
            Reply::Unit(tx) => {
                let _ = tx.send(Err(StoreError::Commit(e.to_owned())));
            }
            Reply::Operator(tx) => {
                let _ = tx.send(Err(OperatorError::Store(e.to_owned())));
            }
            Reply::Nobody => {}
        }
    }
}

pub(super) struct Op {
    pub(super) request: Request,
    pub(super) reply: Reply,
    /// The request's time, when it was fixed before the writer took it (a replicated log's
    /// entry); `None`: when the writer applies it.
    pub(super) at: Option<u64>,
    /// Its position in the JetStream log (D23); `None`: not logged (the embedded store, or
    /// a node's own `Reconfigure`).
    pub(super) log: Option<u64>,
}

/// Wakes destination workers when their queue changes: one `Notify` per destination name,
/// made on first use (a destination a reload adds gets one too).
#[derive(Default)]
pub struct Notifiers {
    map: std::sync::Mutex<HashMap<String, Arc<Notify>>>,
}

impl Notifiers {
    pub fn new(dests: impl IntoIterator<Item = DestinationName>) -> Self {
        Notifiers {
            map: std::sync::Mutex::new(
                dests
                    .into_iter()
                    .map(|d| (d.as_str().to_owned(), Arc::new(Notify::new())))
                    .collect(),
            ),
        }
    }
    pub fn get(&self, dest: &str) -> Arc<Notify> {
        let mut map = match self.map.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.entry(dest.to_owned()).or_default().clone()
    }
}

/// The configuration in force, replaced whole by a reload (`Server::reload`): every reader
/// takes the current one for what it is doing and keeps it to the end of that.
#[derive(Clone)]
pub struct ConfigCell {
    cell: Arc<std::sync::RwLock<Arc<Config>>>,
    /// Counts replacements: on a JetStream log, routes another node put in force replace
    /// this node's too (D24), and its destination workers follow.
    replaced: Arc<watch::Sender<u64>>,
}

impl ConfigCell {
    pub fn new(cfg: Arc<Config>) -> ConfigCell {
        ConfigCell {
            cell: Arc::new(std::sync::RwLock::new(cfg)),
            replaced: Arc::new(watch::channel(0).0),
        }
    }
    pub fn current(&self) -> Arc<Config> {
        match self.cell.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
    pub fn replace(&self, cfg: Arc<Config>) {
        match self.cell.write() {
            Ok(mut g) => *g = cfg,
            Err(p) => *p.into_inner() = cfg,
        }
        self.replaced.send_modify(|n| *n += 1);
    }
    /// Changes when the configuration is replaced.
    pub fn replacements(&self) -> watch::Receiver<u64> {
        self.replaced.subscribe()
    }
}

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub max_batch: usize,
    /// Seals the audit journal (none: no `[tls]` key to sign with).
    pub sealer: Option<Arc<super::audit::Sealer>>,
}

/// Async handle to the writer thread.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Op>,
    store: Store,
    notifiers: Arc<Notifiers>,
    closed: watch::Receiver<bool>,
    cfg: ConfigCell,
    /// The JetStream log and its leases (`[store] kind = "jetstream"`).
    cluster: Option<Arc<super::log::Cluster>>,
}

impl StoreHandle {
    /// The JetStream log this node applies, if it runs on one.
    pub(crate) fn cluster(&self) -> Option<&Arc<super::log::Cluster>> {
        self.cluster.as_ref()
    }

    /// Starts the writer thread. It stops when every handle is dropped.
    pub fn start(store: Store, cfg: Arc<Config>, wc: WriterConfig) -> StoreHandle {
        StoreHandle::spawn(store, cfg, wc, None, Staged::default(), None)
    }

    /// Starts the store `[store]` configures: the embedded one alone, or with the JetStream
    /// log in front (D23), connected before this returns.
    pub async fn open(
        store: Store,
        cfg: Arc<Config>,
        wc: WriterConfig,
    ) -> Result<StoreHandle, StoreError> {
        if !matches!(cfg.store, crate::config::StoreKind::EmbeddedWal) {
            // A write-ahead log left by a run with it on (D28) may hold acknowledged
            // messages redb lost with its non-durable commits.
            let left = super::wal::unapplied(store.dir(), store.position(super::wal::POSITION)?)?;
            if left > 0 {
                return Err(StoreError::Wal(format!(
                    "{} holds {left} entries this store has not applied (acknowledged messages): start once with [store] write_ahead_log = true, which applies them, then turn it off",
                    store.dir().join(super::wal::DIR).display()
                )));
            }
        }
        let js = match &cfg.store {
            crate::config::StoreKind::Embedded => return Ok(StoreHandle::start(store, cfg, wc)),
            crate::config::StoreKind::EmbeddedWal => {
                return StoreHandle::open_wal(store, cfg, wc).await;
            }
            crate::config::StoreKind::JetStream(js) => js,
        };
        let mut log = super::log::Log::connect(js, cfg.tls.as_ref()).await?;
        let committed = store.log_position()?;
        let last = log.check(committed).await?;
        // The routes the store applied the log under (D24): the writer goes on under them
        // up to the entry that puts this node's own in force (published below).
        let own = cfg.routing_digest();
        let in_force = store.routes_in_force()?;
        let start_cfg = match &in_force {
            Some((digest, sources)) if *digest != own => {
                let before = Config::from_sources(sources)
                    .ok()
                    .filter(|c| c.routing_digest() == *digest)
                    .ok_or_else(|| StoreError::Log(format!(
                        "this store applied the log under routes {digest}, and this node now has routes {own}; those cannot be read back from the store (their files are gone, or another version reads them differently). Start this node with the routes in force in the cluster, then reload"
                    )))?;
                tracing::warn!(
                    in_force = %digest,
                    own = %own,
                    "this node's routes differ from those its store applied the log under: it applies the log under those, then puts its own in force for the whole cluster (every node must have them: the others stop until reloaded with them)"
                );
                Arc::new(before)
            }
            _ => cfg.clone(),
        };
        let (track, position) = super::log::Track::new(committed);
        let depth = wc.max_batch.max(16) * 4;
        let staged = Staged::default();
        staged.put(cfg.clone());
        let writer = StoreHandle::spawn(store, start_cfg, wc, Some(track), staged.clone(), None);
        let (tx, rx) = mpsc::channel(depth);
        let mut caught_up = position.clone();
        let cluster = log.run(rx, writer.tx.clone(), position, staged);
        let handle = StoreHandle {
            tx,
            cluster: Some(cluster),
            ..writer
        };
        // Nothing is accepted or delivered before the log as it stood is applied: a
        // delivery it records as done is not made again.
        if last > committed {
            tracing::info!(
                entries = last - committed,
                "applying the JetStream log before starting"
            );
        }
        let reached = caught_up
            .wait_for(|p| p.committed >= last || p.halted.is_some())
            .await
            .map_err(|_| StoreError::Closed)?
            .halted;
        if let Some((at, wanted)) = reached {
            return Err(halted_at_start(at, wanted, own));
        }
        // This node's routes in force from here on, for every node (a first start on an
        // empty store, or a restart on changed files).
        if in_force.map(|(d, _)| d) != Some(own) {
            let mut halted = caught_up.clone();
            tokio::select! {
                r = handle.routes_at_start(cfg) => { r?; }
                h = halted.wait_for(|p| p.halted.is_some()) => {
                    if let Some((at, wanted)) = h.map_err(|_| StoreError::Closed)?.halted {
                        return Err(halted_at_start(at, wanted, own));
                    }
                }
            }
        }
        Ok(handle)
    }

    /// The embedded store with its write-ahead log (D28): the entries after the store's
    /// durable position are applied again, in order, under the routes in force when they
    /// were written, before anything is accepted; then the syncer thread takes requests.
    async fn open_wal(
        store: Store,
        cfg: Arc<Config>,
        wc: WriterConfig,
    ) -> Result<StoreHandle, StoreError> {
        let committed = store.position(super::wal::POSITION)?;
        let (replay, appender) = super::wal::recover(store.dir(), committed)?;
        let own = cfg.routing_digest();
        let in_force = store.routes_in_force()?;
        // The entries after the last reload were applied under the routes it put in force.
        let start_cfg = match &in_force {
            Some((digest, sources)) if *digest != own && !replay.is_empty() => {
                let before = Config::from_sources(sources)
                    .ok()
                    .filter(|c| c.routing_digest() == *digest)
                    .ok_or_else(|| StoreError::Wal(format!(
                        "{} entries of the write-ahead log were applied under routes {digest}, and the routes now are {own}; those cannot be read back from the store. Start with the routes in force before the stop, then reload",
                        replay.len()
                    )))?;
                tracing::warn!(in_force = %digest, own = %own, "the routes changed while stopped: the write-ahead log is applied under those it was written under, then these are put in force");
                Arc::new(before)
            }
            _ => cfg.clone(),
        };
        let (track, _) = super::log::Track::new(committed);
        let shared = appender.shared();
        let mut started = shared.started();
        let max_batch = wc.max_batch.max(1);
        let depth = max_batch.max(16) * 4;
        let writer = StoreHandle::spawn(
            store,
            start_cfg,
            wc,
            Some(track),
            Staged::default(),
            Some(shared),
        );
        // The writer applies them first thing (`catch_up`); the syncer starts after, so that
        // nothing is accepted before.
        let caught_up = started
            .wait_for(|s| s.is_some())
            .await
            .map_err(|_| StoreError::Closed)?
            .clone();
        if let Some(Err(e)) = caught_up {
            return Err(StoreError::Wal(format!(
                "cannot apply the write-ahead log ({} entries after the store's position): {e}",
                replay.len()
            )));
        }
        let (tx, rx) = mpsc::channel(depth);
        let to_writer = writer.tx.clone();
        std::thread::Builder::new()
            .name("labroute-wal".into())
            .spawn(move || super::wal::run(rx, to_writer, appender, max_batch))
            .map_err(|e| StoreError::Wal(format!("cannot start the log's thread: {e}")))?;
        let handle = StoreHandle { tx, ..writer };
        // These routes in force, recorded (a first start, or files changed while stopped).
        if in_force.map(|(d, _)| d) != Some(own) {
            handle.reconfigure(cfg).await?;
        }
        Ok(handle)
    }

    /// Publishes this node's routes at start, tried for up to 30 s like the stream itself
    /// (`log::ensure_stream`): a cluster just formed, or electing leaders, refuses publishes
    /// for a while. A `Routes` entry published twice is harmless: the second puts in force
    /// what is already in force.
    async fn routes_at_start(&self, cfg: Arc<Config>) -> Result<String, StoreError> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match self.reconfigure(cfg.clone()).await {
                Err(StoreError::Commit(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::info!(error = %e, "the routes could not be put in force yet; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                r => return r,
            }
        }
    }

    fn spawn(
        store: Store,
        cfg: Arc<Config>,
        wc: WriterConfig,
        log: Option<super::log::Track>,
        staged: Staged,
        wal: Option<Arc<super::wal::Shared>>,
    ) -> StoreHandle {
        let (tx, rx) = mpsc::channel(wc.max_batch.max(16) * 4);
        let notifiers = Arc::new(Notifiers::new(
            cfg.destinations.iter().map(|d| d.name.clone()),
        ));
        let n2 = notifiers.clone();
        let s2 = store.clone();
        let cfg = ConfigCell::new(cfg);
        let cfg2 = cfg.clone();
        let (closed_tx, closed) = watch::channel(false);
        std::thread::Builder::new()
            .name("labroute-writer".into())
            .spawn(move || {
                run(
                    s2,
                    cfg2,
                    rx,
                    wc.max_batch.max(1),
                    wc.sealer,
                    n2,
                    log,
                    staged,
                    wal,
                );
                // `run` dropped its store: the database is closed once no handle is left.
                let _ = closed_tx.send(true);
            })
            .map(|_| ())
            .unwrap_or_else(
                |e| tracing::error!(error = %e, "cannot start the store writer thread"),
            );
        StoreHandle {
            tx,
            store,
            notifiers,
            closed,
            cfg,
            cluster: None,
        }
    }

    /// The configuration in force (the writer takes it for each batch).
    pub fn config(&self) -> Arc<Config> {
        self.cfg.current()
    }

    /// Changes each time the configuration in force is replaced (a reload here, or on a
    /// JetStream log routes another node put in force, D24).
    pub fn config_replacements(&self) -> watch::Receiver<u64> {
        self.cfg.replacements()
    }

    /// On a JetStream log: purges now the entries every known node has applied (D25; each
    /// node does it every 30 s). How many went.
    pub async fn trim_log(&self) -> Result<u64, StoreError> {
        match &self.cluster {
            Some(c) => c.trim().await,
            None => Ok(0),
        }
    }

    /// On a JetStream log, the entry this node's writer stopped at and the digest of the
    /// routes it puts in force, which this node does not have (D24).
    pub fn halted(&self) -> Option<(u64, crate::config::RoutesDigest)> {
        self.cluster.as_ref().and_then(|c| c.halted())
    }

    /// Puts a new configuration in force (`crate::reload`, which validated it and stopped
    /// the destination workers): in one transaction, the messages queued for an
    /// establishment's old record destination move to its new one; the writer uses the new
    /// configuration from the next request on. What moved.
    pub async fn reconfigure(&self, cfg: Arc<Config>) -> Result<String, StoreError> {
        // A node stopped at an entry putting other routes in force would never get to this
        // reload's entry (D24).
        if let Some((at, wanted)) = self.cluster.as_ref().and_then(|c| c.halted()) {
            let these = cfg.routing_digest();
            if these != wanted {
                return Err(StoreError::Log(format!(
                    "this node stopped applying the log at entry {at}, which puts in force routes {wanted}; these routes are {these}. Reload it with the routes in force in the cluster"
                )));
            }
        }
        let rx = self
            .submit(Request::Reconfigure(cfg), Reply::Operator)
            .await?;
        match rx.await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(StoreError::Commit(e.to_string())),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Resolves once the writer thread has stopped, which it does when every handle is
    /// dropped. Take it, drop the handles, then await it to know the store is closed.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closed.clone();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether the writer thread has stopped (nothing can be stored any more).
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }
    pub fn notifier(&self, dest: &str) -> Arc<Notify> {
        self.notifiers.get(dest)
    }

    /// Queues a request for the writer; what resolves once it is durable.
    async fn submit<T>(
        &self,
        request: Request,
        reply: impl FnOnce(oneshot::Sender<T>) -> Reply,
    ) -> Result<oneshot::Receiver<T>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Op {
                request,
                reply: reply(tx),
                at: None,
                log: None,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(rx)
    }

    pub async fn ingest(&self, req: IngestRequest) -> Result<IngestReply, StoreError> {
        let rx = self
            .submit(Request::Ingest(Box::new(req)), Reply::Ingest)
            .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub async fn reject(&self, req: RejectRequest) -> Result<IngestReply, StoreError> {
        let rx = self
            .submit(Request::Reject(Box::new(req)), Reply::Ingest)
            .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Records a delivery outcome; resolves once it is durable.
    pub async fn delivery(
        &self,
        dest: &str,
        n: u64,
        seq: u64,
        update: DeliveryUpdate,
    ) -> Result<(), StoreError> {
        self.delivery_queued(dest, n, seq, update)
            .await?
            .await
            .map_err(|_| StoreError::Closed)?
    }

    /// Queues a delivery outcome (in order with every later request) and returns what
    /// resolves once it is durable, so that a worker can go on meanwhile.
    pub async fn delivery_queued(
        &self,
        dest: &str,
        n: u64,
        seq: u64,
        update: DeliveryUpdate,
    ) -> Result<oneshot::Receiver<Result<(), StoreError>>, StoreError> {
        let request = Request::Delivery {
            dest: dest.to_owned(),
            n,
            seq,
            update,
        };
        self.submit(request, Reply::Unit).await
    }

    /// Records that the MSSanté sender handed message `seq`'s mail for one recipient to the
    /// SMTP server (a retry skips him; his reception is acknowledged to the sender when it
    /// asked); resolves once it is durable.
    pub async fn mail_sent(&self, seq: u64, mail: SentMail) -> Result<(), StoreError> {
        let rx = self
            .submit(Request::MailSent { seq, mail }, Reply::Unit)
            .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Records an event in the audit journal; resolves once it is durable.
    pub async fn audit(&self, event: super::audit::AuditEvent) -> Result<(), StoreError> {
        let rx = self.submit(Request::Audit(event), Reply::Unit).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs an operator command. The operator's scope is checked inside the transaction that
    /// reads the message, so the check and the change see the same record.
    pub async fn operator(
        &self,
        cmd: OperatorCommand,
        operator: &crate::policy::Operator,
    ) -> Result<String, OperatorError> {
        let closed = || OperatorError::Store(StoreError::Closed.to_string());
        let request = Request::Operator {
            cmd,
            operator: operator.clone(),
        };
        let rx = self
            .submit(request, Reply::Operator)
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

/// How often a broken store is reopened while it keeps failing.
const REOPEN_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// No request for this long while index writes are pending: the writer is idle and applies
/// them. Not zero: under load the queue is empty for the instant between a batch's answers
/// and the requests they set off, and applying then cost a synced commit for a few dozen
/// messages (BENCHMARKS.md).
const IDLE: std::time::Duration = std::time::Duration::from_millis(5);

#[allow(clippy::too_many_arguments)]
fn run(
    store: Store,
    cfg: ConfigCell,
    mut rx: mpsc::Receiver<Op>,
    max_batch: usize,
    sealer: Option<Arc<super::audit::Sealer>>,
    notifiers: Arc<Notifiers>,
    mut log: Option<super::log::Track>,
    staged: Staged,
    wal: Option<Arc<super::wal::Shared>>,
) {
    let mut wal = wal.map(|shared| Wal {
        shared,
        last_durable: std::time::Instant::now(),
        dirty: false,
        replay: true,
    });
    // The store's position in its log: the JetStream one (D23) or the write-ahead log (D28).
    let position_key = match wal {
        Some(_) => super::wal::POSITION,
        None => super::log::POSITION,
    };
    let mut seqs = Sequences::default();
    // Load the counters at once (a store from before the queue counts gets them now, not
    // at its first write): an empty batch.
    let mut touched = BTreeSet::new();
    if let Err(e) = apply(
        &store,
        cfg.current(),
        None,
        Vec::new(),
        &mut seqs,
        None,
        &mut touched,
        None,
        position_key,
        true,
    ) {
        tracing::error!(error = %e, "cannot load the store's counters; the first batch will retry");
        seqs = Sequences::default();
    }
    // Set after a failed write that left the file needing a reopen: when to try next.
    let mut broken: Option<std::time::Instant> = None;
    // Waits for the next request with a time limit while index writes are pending: when
    // none comes for `IDLE`, the writer is idle and applies them.
    let timer = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .inspect_err(|e| tracing::warn!(error = %e, "no timer for the writer: pending index writes are applied after every batch that leaves it idle"))
        .ok();
    // How long the next idle wait lasts (longer after a failed application).
    let mut idle = IDLE;
    // Log entries taken from the queue and not applied yet: after a `Routes` entry this node
    // cannot put in force (D24), that entry and those after it.
    let mut held: std::collections::VecDeque<Op> = std::collections::VecDeque::new();
    loop {
        // At start, and after a failed batch, the write-ahead log is applied from the store's
        // position before anything else (D28).
        catch_up(
            &store,
            &cfg,
            &mut seqs,
            sealer.as_deref(),
            &mut log,
            &mut wal,
            &broken,
            &notifiers,
        );
        let first = match (held.pop_front(), &timer) {
            (Some(op), _) => op,
            (None, timer) => match timer {
                Some(rt) if store.index().behind() || wal.as_ref().is_some_and(|w| w.dirty) => {
                    // The timer is made inside the runtime it belongs to.
                    match rt.block_on(async { tokio::time::timeout(idle, rx.recv()).await }) {
                        Ok(Some(op)) => op,
                        Ok(None) => break,
                        Err(_) => {
                            // Idle: the index writes applied, or the store made durable (D28).
                            let ok = if store.index().behind() {
                                apply_index_now(&store, &mut seqs, &mut broken)
                            } else {
                                checkpoint(&store, &mut broken)
                            };
                            idle = if ok { IDLE } else { REOPEN_EVERY };
                            if ok && let (Some(w), Some(t)) = (&mut wal, &log) {
                                w.durable(t.committed());
                            }
                            continue;
                        }
                    }
                }
                _ => match rx.blocking_recv() {
                    Some(op) => op,
                    None => break,
                },
            },
        };
        if let Some(at) = broken {
            if std::time::Instant::now() >= at {
                match store.reopen() {
                    Ok(()) => {
                        tracing::warn!("store reopened after a write failure; accepting again");
                        broken = None;
                        if let Some(w) = &mut wal {
                            w.replay = true;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "store still cannot be reopened");
                        broken = Some(std::time::Instant::now() + REOPEN_EVERY);
                    }
                }
            }
        }
        // The store reopened: it may have lost non-durable commits (D28).
        catch_up(
            &store,
            &cfg,
            &mut seqs,
            sealer.as_deref(),
            &mut log,
            &mut wal,
            &broken,
            &notifiers,
        );
        let mut batch = vec![first];
        // Stopped at a `Routes` entry (D24): nothing more is taken from the queue (the log's
        // reader waits), so what waits is bounded by the queue, not by the log.
        let halted = log.as_ref().is_some_and(|t| t.halted());
        while batch.len() < max_batch {
            if let Some(op) = held.pop_front() {
                batch.push(op);
                continue;
            }
            if halted {
                break;
            }
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        // Log entries are applied once each, in the log's order (D23).
        let (mut batch, mut log_seq) = match &mut log {
            Some(track) => track.admit(batch),
            None => (batch, None),
        };
        // Only a log carries `Routes` entries: the embedded store's batches skip the lock.
        let staged_now = log.as_ref().and_then(|_| staged.get());
        if let Some(track) = &mut log
            && let Some((i, at, wanted, have)) =
                routes_gate(&batch, &cfg.current(), staged_now.as_ref())
        {
            // Applied up to the entry before; that entry and the rest wait for the routes.
            let rest = batch.split_off(i);
            for op in rest.into_iter().rev() {
                held.push_front(op);
            }
            log_seq = batch.iter().filter_map(|op| op.log).next_back();
            if batch.is_empty() {
                track.halt(at, wanted, have);
                staged.wait(std::time::Duration::from_secs(1));
                if rx.is_closed() {
                    for op in held.drain(..) {
                        op.reply.fail("the node stopped");
                    }
                    break;
                }
                continue;
            }
        }
        if batch.is_empty() {
            continue;
        }
        let size = batch.len();
        let (requests, replies): (Vec<(Option<u64>, Request)>, Vec<Reply>) = batch
            .into_iter()
            .map(|op| ((op.at, op.request), op.reply))
            .unzip();
        let mut touched = BTreeSet::new();
        let started = std::time::Instant::now();
        // On the write-ahead log, a batch is made durable only at a checkpoint, or when it
        // puts routes in force (entries before a reload are never applied again).
        let durable = wal.as_ref().is_none_or(|w| {
            w.last_durable.elapsed() >= super::wal::CHECKPOINT
                || requests
                    .iter()
                    .any(|(_, r)| matches!(r, Request::Reconfigure(_)))
        });
        let result = match broken {
            // Answered at once, without touching the file: senders get a negative
            // acknowledgement and send again.
            Some(_) => Err(StoreError::Unavailable(store.path().to_owned())),
            None => apply(
                &store,
                cfg.current(),
                staged_now.as_ref(),
                requests,
                &mut seqs,
                sealer.as_deref(),
                &mut touched,
                log_seq,
                position_key,
                durable,
            ),
        };
        if let Some(track) = &mut log {
            track.settled(log_seq, result.is_ok());
        }
        match result {
            Ok((answers, reconfigured)) => {
                if let Some(new) = reconfigured {
                    cfg.replace(new);
                }
                if let (Some(w), Some(t)) = (&mut wal, &log) {
                    if durable {
                        w.durable(t.committed());
                    } else {
                        w.dirty = true;
                    }
                }
                seqs.changed.clear();
                metrics::histogram!(crate::telemetry::names::STORE_COMMIT)
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!(crate::telemetry::names::STORE_BATCH).record(size as f64);
                // Before any answer: a reader the answer sets off must find this batch's index
                // writes behind its barrier.
                store.index().committed(seqs.pending);
                for (reply, answer) in replies.into_iter().zip(answers) {
                    reply.answer(answer);
                }
                for d in touched {
                    notifiers.get(&d).notify_one();
                }
                // Without a timer, idle is an empty queue right after the batch.
                if store.index().should_apply(timer.is_none() && rx.is_empty()) {
                    let ok = apply_index_now(&store, &mut seqs, &mut broken);
                    idle = if ok { IDLE } else { REOPEN_EVERY };
                    if ok && let (Some(w), Some(t)) = (&mut wal, &log) {
                        w.durable(t.committed());
                    }
                }
            }
            Err(e) => {
                metrics::counter!(crate::telemetry::names::STORE_ERRORS).increment(1);
                tracing::error!(error = %e, batch = size, "store commit failed; the batch is answered with errors");
                if e.needs_reopen() && broken.is_none() {
                    // redb refuses everything after a failed write until the file is
                    // reopened; the next batch tries (and the one after, every
                    // REOPEN_EVERY, until space or the device is back).
                    broken = Some(std::time::Instant::now());
                }
                // The counters may have moved inside the aborted transaction: reload them.
                // The overlay keeps what committed batches appended and are not applied
                // yet, and forgets what this one added.
                let mut overlay = std::mem::take(&mut seqs.overlay);
                overlay.forget_after(store.index().last_committed());
                seqs = Sequences::default();
                seqs.overlay = overlay;
                let e = e.to_string();
                for reply in replies {
                    reply.fail(&e);
                }
                // The batch's entries are in the write-ahead log: they are applied again
                // from it (their senders, answered with the error, find them stored).
                if let Some(w) = &mut wal {
                    w.replay = true;
                }
            }
        }
    }
    // Every handle is gone: what is pending is applied now rather than at the next open.
    if store.index().behind() {
        apply_index_now(&store, &mut seqs, &mut broken);
    } else if wal.as_ref().is_some_and(|w| w.dirty) {
        checkpoint(&store, &mut broken);
    }
    if let Some(sealer) = &sealer {
        if let Err(e) = final_seal(&store, sealer) {
            tracing::error!(error = %e, "cannot seal the audit journal at shutdown");
        }
    }
}

/// Applies the pending index writes now (a durable commit); a failure leaves them pending
/// (and the file to reopen when redb needs it). Whether it succeeded: after a failure the
/// next idle wait lasts `REOPEN_EVERY` (no error logged every `IDLE`).
fn apply_index_now(
    store: &Store,
    seqs: &mut Sequences,
    broken: &mut Option<std::time::Instant>,
) -> bool {
    if broken.is_some() {
        return false;
    }
    match apply_index(store, seqs.pending) {
        Ok(()) => {
            seqs.overlay.applied(seqs.pending);
            true
        }
        Err(e) => {
            metrics::counter!(crate::telemetry::names::STORE_ERRORS).increment(1);
            tracing::error!(error = %e, "cannot apply the pending index writes; they stay pending");
            if e.needs_reopen() {
                *broken = Some(std::time::Instant::now());
            }
            false
        }
    }
}

/// The write-ahead log's side of the writer (D28).
struct Wal {
    shared: Arc<super::wal::Shared>,
    last_durable: std::time::Instant,
    /// Batches committed non-durably since the last durable commit.
    dirty: bool,
    /// A batch failed: the log is applied again from the store's position.
    replay: bool,
}

impl Wal {
    /// A durable commit holds every entry up to `n`.
    fn durable(&mut self, n: u64) {
        self.shared.durable(n);
        self.last_durable = std::time::Instant::now();
        self.dirty = false;
    }
}

/// Makes the store durable (the non-durable commits before included): an empty durable
/// commit. Whether it succeeded.
fn checkpoint(store: &Store, broken: &mut Option<std::time::Instant>) -> bool {
    if broken.is_some() {
        return false;
    }
    match store.write().and_then(|t| t.commit().map_err(db_err)) {
        Ok(()) => true,
        Err(e) => {
            metrics::counter!(crate::telemetry::names::STORE_ERRORS).increment(1);
            tracing::error!(error = %e, "cannot make the store durable; the write-ahead log keeps what it holds");
            if e.needs_reopen() {
                *broken = Some(std::time::Instant::now());
            }
            false
        }
    }
}

/// Applies the write-ahead log again from the store's position when the writer needs it (at
/// start, after a failed batch, after a reopen: D28). A failure is logged and counted, and
/// said to whoever waits for the position (the start).
#[allow(clippy::too_many_arguments)]
fn catch_up(
    store: &Store,
    cfg: &ConfigCell,
    seqs: &mut Sequences,
    sealer: Option<&super::audit::Sealer>,
    log: &mut Option<super::log::Track>,
    wal: &mut Option<Wal>,
    broken: &Option<std::time::Instant>,
    notifiers: &Notifiers,
) {
    let (Some(w), Some(track)) = (wal, log) else {
        return;
    };
    if !w.replay || broken.is_some() {
        return;
    }
    match replay_wal(store, cfg, seqs, sealer, track, &w.shared, notifiers) {
        Ok(()) => {
            w.replay = false;
            w.durable(track.committed());
            w.shared.caught_up(Ok(()));
        }
        Err(e) => {
            metrics::counter!(crate::telemetry::names::STORE_ERRORS).increment(1);
            tracing::error!(error = %e, "cannot apply the write-ahead log; trying again at the next request");
            *seqs = Sequences::default();
            track.settled(None, false);
            w.shared.caught_up(Err(e.to_string()));
        }
    }
}

/// Applies the write-ahead log's entries from the store's position up to the last one
/// synced, in one durable commit. When that fails for a reason other than the file (an entry
/// the writer refuses: its batch was answered with the error), they are applied one by one
/// and the failing ones skipped, logged and counted, so that one entry cannot stop the store.
fn replay_wal(
    store: &Store,
    cfg: &ConfigCell,
    seqs: &mut Sequences,
    sealer: Option<&super::audit::Sealer>,
    track: &mut super::log::Track,
    shared: &super::wal::Shared,
    notifiers: &Notifiers,
) -> Result<(), StoreError> {
    let from = store.position(super::wal::POSITION)?;
    track.reset(from);
    let upto = shared.synced();
    if upto <= from {
        return Ok(());
    }
    tracing::info!(
        entries = upto - from,
        "applying the write-ahead log from the store's position"
    );
    let entries = super::wal::read_range(shared.dir(), from, upto)?;
    let apply_some =
        |entries: Vec<super::wal::Entry>, seqs: &mut Sequences, track: &mut super::log::Track| {
            let last = entries.last().map_or(from, |e| e.n);
            let requests = entries
                .into_iter()
                .map(|e| (Some(e.at), e.request))
                .collect();
            let mut touched = BTreeSet::new();
            *seqs = Sequences::default();
            let (_, reconfigured) = apply(
                store,
                cfg.current(),
                None,
                requests,
                seqs,
                sealer,
                &mut touched,
                Some(last),
                super::wal::POSITION,
                true,
            )?;
            if let Some(new) = reconfigured {
                cfg.replace(new);
            }
            seqs.changed.clear();
            store.index().committed(seqs.pending);
            track.settled(Some(last), true);
            for d in touched {
                notifiers.get(&d).notify_one();
            }
            Ok::<(), StoreError>(())
        };
    match apply_some(entries, seqs, track) {
        Err(e) if !e.needs_reopen() => {
            tracing::warn!(error = %e, "applying the write-ahead log failed; applying its entries one by one");
        }
        r => return r,
    }
    for entry in super::wal::read_range(shared.dir(), from, upto)? {
        let n = entry.n;
        match apply_some(vec![entry], seqs, track) {
            Err(e) if !e.needs_reopen() => {
                metrics::counter!(crate::telemetry::names::STORE_ERRORS).increment(1);
                tracing::error!(entry = n, error = %e, "a write-ahead log entry cannot be applied: skipped (its sender was answered with this error)");
                // Past it for good.
                let txn = store.write()?;
                txn.open_table(META)
                    .map_err(db_err)?
                    .insert(super::wal::POSITION, n)
                    .map_err(db_err)?;
                txn.commit().map_err(db_err)?;
                track.settled(Some(n), true);
            }
            r => r?,
        }
    }
    Ok(())
}

/// Sequence counters, cached between batches (reloaded after a failed commit).
#[derive(Default)]
struct Sequences {
    loaded: bool,
    message: u64,
    enqueue: u64,
    oplog: u64,
    /// The last pending index entry's number (D22).
    pending: u64,
    /// `DEDUP` and `ORDERS` entries not applied yet (kept across a failed batch: see `run`).
    overlay: super::index::Overlay,
    audit: super::audit::Chain,
    /// Per-destination counts kept in `META` (`DEPTH_PREFIX`, `DEAD_PREFIX` + name): what
    /// `/metrics` shows without walking the queues.
    counts: BTreeMap<String, u64>,
    /// The counts this batch changed.
    changed: BTreeSet<String>,
}

impl Sequences {
    fn load(&mut self, tx: &mut Tx<'_>) -> Result<(), StoreError> {
        if !self.loaded {
            let t = tx.cold().open_table(META).map_err(db_err)?;
            let get = |k: &str| -> Result<u64, StoreError> {
                Ok(t.get(k).map_err(db_err)?.map_or(0, |v| v.value()))
            };
            self.message = get("message_seq")?;
            self.enqueue = get("enqueue_seq")?;
            self.oplog = get("oplog_seq")?;
            self.pending = get(super::index::PENDING_COUNTER)?;
            let made = t.get(COUNTS_MADE).map_err(db_err)?.is_some();
            self.counts.clear();
            self.changed.clear();
            if made {
                for prefix in [DEPTH_PREFIX, DEAD_PREFIX] {
                    let end = format!("{}\u{20}", prefix.trim_end_matches('\u{1f}'));
                    for item in t.range(prefix..end.as_str()).map_err(db_err)? {
                        let (k, v) = item.map_err(db_err)?;
                        self.counts.insert(k.value().to_owned(), v.value());
                    }
                }
            }
            drop(t);
            if !made {
                self.make_counts(tx)?;
            }
            self.audit = super::audit::Chain::load(tx)?;
            self.loaded = true;
        }
        Ok(())
    }

    /// Counts the queues and dead letters from their tables (a store from before the
    /// counts existed; once).
    fn make_counts(&mut self, tx: &mut Tx<'_>) -> Result<(), StoreError> {
        self.count_keys(DEPTH_PREFIX, &*tx.outbox()?)?;
        self.count_keys(DEAD_PREFIX, &tx.cold().open_table(DEAD).map_err(db_err)?)?;
        tx.cold()
            .open_table(META)
            .map_err(db_err)?
            .insert(COUNTS_MADE, 1)
            .map_err(db_err)?;
        Ok(())
    }

    /// Counts a queue table's entries per destination.
    fn count_keys(
        &mut self,
        prefix: &str,
        t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    ) -> Result<(), StoreError> {
        for item in t.iter().map_err(db_err)? {
            let (k, _) = item.map_err(db_err)?;
            if let Some((dest, _)) = split_queue_key(k.value()) {
                let key = format!("{prefix}{dest}");
                *self.counts.entry(key.clone()).or_default() += 1;
                self.changed.insert(key);
            }
        }
        Ok(())
    }

    /// Adds `delta` to a destination's count (`DEPTH_PREFIX` or `DEAD_PREFIX`).
    fn bump(&mut self, prefix: &str, dest: &str, delta: i64) {
        let key = format!("{prefix}{dest}");
        let v = self.counts.entry(key.clone()).or_default();
        *v = v.saturating_add_signed(delta);
        self.changed.insert(key);
    }

    fn save(&self, tx: &mut Tx<'_>) -> Result<(), StoreError> {
        let mut t = tx.cold().open_table(META).map_err(db_err)?;
        t.insert("message_seq", self.message).map_err(db_err)?;
        t.insert("enqueue_seq", self.enqueue).map_err(db_err)?;
        t.insert("oplog_seq", self.oplog).map_err(db_err)?;
        t.insert(super::index::PENDING_COUNTER, self.pending)
            .map_err(db_err)?;
        for k in &self.changed {
            let v = self.counts.get(k).copied().unwrap_or(0);
            t.insert(k.as_str(), v).map_err(db_err)?;
        }
        drop(t);
        self.audit.save(tx.cold())?;
        Ok(())
    }
}

/// Appends an audit entry in this transaction.
fn audit(
    tx: &mut Tx<'_>,
    seqs: &mut Sequences,
    event: &'static str,
    message: Option<u64>,
    establishment: Option<String>,
    actor: Option<String>,
    detail: serde_json::Value,
) -> Result<(), StoreError> {
    let now = tx.now;
    seqs.audit.append(
        tx,
        now,
        super::audit::AuditEvent {
            event: event.into(),
            message,
            establishment,
            actor,
            detail,
        },
    )
}

/// The audit entry of a stored message (received or refused): who sent what, its content
/// hash, the decision with its evidence, and where it goes or why it was refused.
fn audit_message(
    tx: &mut Tx<'_>,
    seqs: &mut Sequences,
    event: &'static str,
    rec: &MessageRecord,
) -> Result<(), StoreError> {
    let mut detail = serde_json::json!({
        "listener": rec.listener,
        "peer": rec.peer,
        "type": rec.message_type,
        "control_id": rec.control_id,
        "sha256": rec.sha256,
        "decision": rec.decision,
    });
    match &rec.rejection {
        Some(r) => {
            detail["code"] = r.code.into();
            detail["reason"] = r.text.clone().into();
        }
        None => detail["destinations"] = serde_json::json!(rec.destinations),
    }
    audit(
        tx,
        seqs,
        event,
        Some(rec.seq),
        rec.establishment().map(|e| e.to_string()),
        rec.sender.clone(),
        detail,
    )
}

/// Order lookups inside the write transaction: what is not applied yet (this batch's
/// earlier orders among them), then the table.
struct TxnOrders<'a, 't> {
    table: &'a redb::Table<'t, &'static str, &'static str>,
    overlay: &'a super::index::Overlay,
}

impl TxnOrders<'_, '_> {
    fn lookup(&self, prefix: &str, key: &str) -> Option<EstablishmentId> {
        let k = format!("{prefix}\u{1f}{key}");
        if let Some(owner) = self.overlay.order(&k) {
            return Some(EstablishmentId::new(owner));
        }
        self.table
            .get(k.as_str())
            .ok()
            .flatten()
            .map(|v| EstablishmentId::new(v.value()))
    }
}

impl OrderIndex for TxnOrders<'_, '_> {
    fn placer_owner(&self, key: &str) -> Option<EstablishmentId> {
        self.lookup("P", key)
    }
    fn filler_owner(&self, key: &str) -> Option<EstablishmentId> {
        self.lookup("F", key)
    }
}

/// Applies a batch in one transaction and commits it. All or nothing: on any error the
/// transaction is dropped (aborted) and every request of the batch gets that error.
/// Applies a batch in one transaction. The answers, and the configuration a
/// `Reconfigure` in it put in force (the requests after it in the batch already use it).
#[allow(clippy::too_many_arguments)]
fn apply(
    store: &Store,
    cfg: Arc<Config>,
    staged: Option<&Arc<Config>>,
    requests: Vec<(Option<u64>, Request)>,
    seqs: &mut Sequences,
    sealer: Option<&super::audit::Sealer>,
    touched: &mut BTreeSet<String>,
    log_seq: Option<u64>,
    position_key: &str,
    durable: bool,
) -> Result<(Vec<Answer>, Option<Arc<Config>>), StoreError> {
    let mut txn = store.write()?;
    if !durable {
        txn.set_durability(redb::Durability::None)
            .map_err(|e| StoreError::Commit(e.to_string()))?;
    }
    let mut tx = Tx::new(&txn);
    seqs.load(&mut tx)?;
    let mut answers = Vec::with_capacity(requests.len());
    let mut cfg = cfg;
    let mut reconfigured = None;
    for (at, request) in requests {
        tx.now = at.unwrap_or_else(now_ms);
        let cfg_now: &Config = &cfg.clone();
        answers.push(match request {
            Request::Reconfigure(new) => {
                let moved = reroute(&mut tx, seqs, cfg_now, &new, touched)?;
                // Recorded: a write-ahead log's entries after this are applied again under
                // these routes (D28).
                routes_in_force(tx.cold(), &new)?;
                cfg = new.clone();
                reconfigured = Some(new);
                Answer::Operator(Ok(format!(
                    "{moved} queued message(s) moved to their establishment's new record destination"
                )))
            }
            Request::Routes { digest } => {
                let answer = if digest == cfg_now.routing_digest() {
                    format!("routes {digest} already in force")
                } else {
                    // `routes_gate` let this entry through: they are staged.
                    let new = staged
                        .filter(|s| s.routing_digest() == digest)
                        .cloned()
                        .ok_or_else(|| {
                            StoreError::Log(format!("routes {digest} are not staged on this node"))
                        })?;
                    let moved = reroute(&mut tx, seqs, cfg_now, &new, touched)?;
                    cfg = new.clone();
                    reconfigured = Some(new);
                    format!(
                        "routes {digest} in force: {moved} queued message(s) moved to their establishment's new record destination"
                    )
                };
                routes_in_force(tx.cold(), &cfg)?;
                Answer::Operator(Ok(answer))
            }
            Request::Ingest(req) => Answer::Ingest(ingest(&mut tx, cfg_now, seqs, *req, touched)?),
            Request::Reject(req) => Answer::Ingest(reject(&mut tx, seqs, *req)?),
            Request::Delivery {
                dest,
                n,
                seq,
                update,
            } => {
                delivery(&mut tx, seqs, &dest, n, seq, &update, touched)?;
                Answer::Unit
            }
            Request::Operator { cmd, operator } => {
                Answer::Operator(operate(&mut tx, cfg_now, seqs, &cmd, &operator, touched)?)
            }
            Request::Audit(e) => {
                let now = tx.now;
                seqs.audit.append(&mut tx, now, e)?;
                Answer::Unit
            }
            Request::MailSent { seq, mail } => {
                mail_sent(&mut tx, seqs, seq, mail, touched)?;
                Answer::Unit
            }
        });
    }
    if let Some(sealer) = sealer {
        seqs.audit.maybe_seal(tx.cold(), sealer, now_ms(), false)?;
    }
    seqs.save(&mut tx)?;
    if let Some(n) = log_seq {
        // In the transaction that applied it: a restart reads the log from the next one.
        tx.cold()
            .open_table(META)
            .map_err(db_err)?
            .insert(position_key, n)
            .map_err(db_err)?;
    }
    // The hot tables write their roots back before the commit.
    drop(tx);
    let started = std::time::Instant::now();
    txn.commit().map_err(db_err)?;
    metrics::histogram!(crate::telemetry::names::STORE_SYNC)
        .record(started.elapsed().as_secs_f64());
    Ok((answers, reconfigured))
}

/// Records the routes the store applies the log under from here on (D24): read back at a
/// restart on changed files.
fn routes_in_force(txn: &redb::WriteTransaction, cfg: &Config) -> Result<(), StoreError> {
    let mut t = txn.open_table(super::ROUTES_IN_FORCE).map_err(db_err)?;
    t.insert("digest", cfg.routing_digest().0.as_slice())
        .map_err(db_err)?;
    let sources = serde_json::to_vec(&cfg.sources)
        .map_err(|e| StoreError::Commit(format!("the routes' files: {e}")))?;
    t.insert("sources", sources.as_slice()).map_err(db_err)?;
    Ok(())
}

/// Why a node stopped while applying the log at its start (D24).
fn halted_at_start(
    at: u64,
    wanted: crate::config::RoutesDigest,
    own: crate::config::RoutesDigest,
) -> StoreError {
    StoreError::Log(format!(
        "log entry {at} puts in force routes {wanted}, and this node has routes {own}: applying the log under other routes than the other nodes would decide differently from them. Start it with the routes in force in the cluster, or from a copy of another node's data directory"
    ))
}

/// A reload moved an establishment's record to another destination: its messages queued
/// for the old one move to the new one, in order, in the transaction that puts the new
/// configuration in force (so that no message routed by the new one goes before them).
/// Their wait counts from when they were first queued. Other queued messages stay where
/// they are (a destination the new routes no longer allow dead-letters them with the
/// policy's reason). How many moved.
fn reroute(
    tx: &mut Tx<'_>,
    seqs: &mut Sequences,
    old: &Config,
    new: &Config,
    touched: &mut BTreeSet<String>,
) -> Result<usize, StoreError> {
    // (establishment, old record destination, new one): a destination several
    // establishments share keeps the messages of those that did not move.
    let moves: Vec<(String, String, String)> = old
        .establishments
        .iter()
        .filter_map(|e| {
            let now = new.establishment_by_name(e.id.as_str())?;
            (now.record != e.record && new.destination(&now.record).is_some()).then(|| {
                (
                    e.id.to_string(),
                    e.record.to_string(),
                    now.record.to_string(),
                )
            })
        })
        .collect();
    let mut moved = 0;
    for (establishment, from, to) in moves {
        let entries = {
            let t = tx.outbox()?;
            let (start, end) = (queue_key(&from, 0), queue_key(&from, u64::MAX));
            let mut v = Vec::new();
            for item in t.range(start.as_slice()..=end.as_slice()).map_err(db_err)? {
                let (k, e) = item.map_err(db_err)?;
                v.push((k.value().to_vec(), decode::<OutboxEntry>(e.value())?));
            }
            v
        };
        for (key, entry) in entries {
            let Some(mut rec) = load_record(tx, entry.seq)? else {
                continue;
            };
            // Only what this establishment owns: an answer to a sender keeps its
            // destination, and so does another establishment's message.
            let owned = rec.answers.is_none()
                && rec.establishment().map(|e| e.as_str()) == Some(establishment.as_str());
            if !owned {
                continue;
            }
            tx.outbox()?.remove(key.as_slice()).map_err(db_err)?;
            seqs.bump(DEPTH_PREFIX, &from, -1);
            seqs.enqueue += 1;
            let e = OutboxEntry {
                attempts: 0,
                next_attempt_ms: 0,
                last_error: None,
                ..entry
            };
            tx.outbox()?
                .insert(
                    queue_key(&to, seqs.enqueue).as_slice(),
                    encode(&e).as_slice(),
                )
                .map_err(db_err)?;
            seqs.bump(DEPTH_PREFIX, &to, 1);
            for d in rec.destinations.iter_mut().filter(|d| d.as_str() == from) {
                *d = DestinationName::new(&to);
            }
            tx.records()?
                .insert(rec.seq, encode(&rec).as_slice())
                .map_err(db_err)?;
            audit(
                tx,
                seqs,
                "rerouted",
                Some(rec.seq),
                rec.establishment().map(|e| e.to_string()),
                Some(to.clone()),
                serde_json::json!({ "from": from, "to": to, "why": "routes reloaded" }),
            )?;
            touched.insert(to.clone());
            moved += 1;
        }
    }
    Ok(moved)
}

/// Seals what is left of the journal when the writer stops.
fn final_seal(store: &Store, sealer: &super::audit::Sealer) -> Result<(), StoreError> {
    let txn = store.write()?;
    let mut tx = Tx::new(&txn);
    let mut seqs = Sequences::default();
    seqs.load(&mut tx)?;
    seqs.audit.maybe_seal(&txn, sealer, now_ms(), true)?;
    seqs.save(&mut tx)?;
    drop(tx);
    txn.commit().map_err(db_err)
}

fn ack_for(
    header: &AckHeader,
    enhanced: bool,
    outcome: AckOutcome,
    err: Option<&AckError>,
    seq: u64,
    now: u64,
) -> (Vec<u8>, AckCode) {
    let code = ack::code_for(enhanced, outcome);
    (
        ack::build(header, code, err, &format!("LR{seq}"), &hl7_timestamp(now)),
        code,
    )
}

fn dedup_key(listener: &str, sender: Option<&str>, facts: &Facts) -> String {
    let fac: Vec<&str> = facts
        .sending_facility
        .iter()
        .map(|f| f.value.as_str())
        .collect();
    format!(
        "{listener}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
        sender.unwrap_or(""),
        facts.sending_application,
        fac.join("^"),
        facts.control_id
    )
}

fn enqueue(
    tx: &mut Tx<'_>,
    seqs: &mut Sequences,
    dest: &str,
    seq: u64,
    patient: Option<String>,
    now: u64,
) -> Result<(), StoreError> {
    seqs.enqueue += 1;
    let e = OutboxEntry {
        seq,
        enqueued_at_ms: now,
        attempts: 0,
        next_attempt_ms: 0,
        last_error: None,
        patient,
    };
    let t = tx.outbox()?;
    t.insert(
        queue_key(dest, seqs.enqueue).as_slice(),
        encode(&e).as_slice(),
    )
    .map_err(db_err)?;
    seqs.bump(DEPTH_PREFIX, dest, 1);
    Ok(())
}

fn record_orders(
    tx: &mut Tx<'_>,
    seqs: &mut Sequences,
    writes: &mut super::index::Writes,
    facts: &Facts,
    owner: &EstablishmentId,
) -> Result<(), StoreError> {
    let t = tx.orders()?;
    // The number the message's pending entry will have.
    let pending = seqs.pending + 1;
    for (prefix, list) in [("P", &facts.placer_orders), ("F", &facts.filler_orders)] {
        for o in list {
            let k = format!("{prefix}\u{1f}{}", o.key());
            if seqs.overlay.order(&k).is_none() && t.get(k.as_str()).map_err(db_err)?.is_none() {
                writes.order(&k, owner.as_str());
                seqs.overlay
                    .add_order(pending, k, owner.as_str().to_owned());
            }
        }
    }
    Ok(())
}

/// Appends a message's index writes as one pending entry (none when there are none).
fn push_pending(
    tx: &mut Tx<'_>,
    seqs: &mut Sequences,
    writes: super::index::Writes,
) -> Result<(), StoreError> {
    if !writes.is_empty() {
        seqs.pending += 1;
        tx.pending_index()?
            .insert(seqs.pending, writes.as_bytes())
            .map_err(db_err)?;
    }
    Ok(())
}

fn ingest(
    tx: &mut Tx<'_>,
    cfg: &Config,
    seqs: &mut Sequences,
    req: IngestRequest,
    touched: &mut BTreeSet<String>,
) -> Result<IngestReply, StoreError> {
    let now = tx.now;
    // Who sent it (TLS listeners): a configured system, allowed this kind of message.
    let system = match &req.identity {
        None => None,
        Some(id) => match cfg.system_of(id) {
            Some(s) if s.role.may_send(req.facts.class) => Some(s),
            Some(s) => {
                let text = format!(
                    "refused: a system with role {} may not send this type of message",
                    s.role.as_str()
                );
                let name = s.name.clone();
                return refuse(tx, seqs, req, Refused::Role, text, None, Some(name));
            }
            None => {
                let label = id.label();
                return refuse(
                    tx,
                    seqs,
                    req,
                    Refused::UnknownSystem,
                    "refused: the sender's certificate names no configured system".into(),
                    None,
                    Some(label),
                );
            }
        },
    };
    let sender_name = system.map(|s| s.name.clone());
    let digest = req.digest;
    let fingerprint = req.fingerprint.unwrap_or(digest);
    let dkey = dedup_key(&req.listener, sender_name.as_deref(), &req.facts);
    {
        let prior = match seqs.overlay.dedup(&dkey) {
            Some(v) => Some(v.to_vec()),
            None => tx
                .dedup()?
                .get(dkey.as_str())
                .map_err(db_err)?
                .map(|v| v.value().to_vec()),
        };
        if let Some(prior) = prior {
            let prior_seq = prior
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if prior.get(8..40) == Some(&fingerprint[..]) {
                let ack = tx
                    .acks()?
                    .get(prior_seq)
                    .map_err(db_err)?
                    .map(|v| v.value().to_vec())
                    .unwrap_or_default();
                audit(
                    tx,
                    seqs,
                    "duplicate",
                    Some(prior_seq),
                    None,
                    sender_name,
                    serde_json::json!({
                        "listener": req.listener,
                        "control_id": req.facts.control_id,
                    }),
                )?;
                return Ok(IngestReply::Duplicate {
                    seq: prior_seq,
                    ack,
                });
            }
            let error = AckError {
                code: 205,
                text: "message control id already used by this sender for a different message"
                    .into(),
                location: Some(("MSH".into(), 10)),
            };
            let r = RejectRequest::from_ingest(req, error, None, sender_name.clone());
            // Same sender and control id, different content: refused (205), kept.
            return reject(tx, seqs, r);
        }
    }
    let decision = router::decide(
        &req.facts,
        cfg,
        &TxnOrders {
            table: tx.orders()?,
            overlay: &seqs.overlay,
        },
    );
    if let (Some(sys), Some(owner)) = (system, decision.establishment()) {
        if !sys.speaks_for(owner) {
            return refuse(
                tx,
                seqs,
                req,
                Refused::Establishment,
                "refused: the sending system may not speak for this message's establishment".into(),
                Some(decision),
                sender_name,
            );
        }
    }
    seqs.message += 1;
    let seq = seqs.message;
    let (status, dests) = match &decision {
        Decision::Owned { establishment, .. } => (
            RecordStatus::Routed,
            router::destinations(req.facts.class, establishment, cfg),
        ),
        Decision::Quarantined { .. } => (RecordStatus::Quarantined, Vec::new()),
    };
    let (ack, code) = ack_for(
        &req.header,
        req.enhanced,
        AckOutcome::Accepted,
        None,
        seq,
        now,
    );
    // This message's writes to the indexes kept off the ACK path (D22): one pending entry.
    let mut writes = super::index::Writes::default();
    match &decision {
        Decision::Owned { establishment, .. } => {
            record_orders(tx, seqs, &mut writes, &req.facts, establishment)?;
            for d in &dests {
                enqueue(
                    tx,
                    seqs,
                    d.as_str(),
                    seq,
                    req.facts.patient_key.clone(),
                    now,
                )?;
                touched.insert(d.as_str().to_owned());
            }
            record_result(&mut writes, &req.facts, establishment, seq, now);
            if let (Some(zfa), Some(pk)) = (&req.facts.zfa, &req.facts.patient_key) {
                let mut t = tx.cold().open_table(PATIENTS).map_err(db_err)?;
                let k = patient_admin_key(establishment.as_str(), pk);
                // An opposition recorded by an operator outlives the next ADT.
                let (opposition, sharing_opposition) = match t.get(k.as_str()).map_err(db_err)? {
                    Some(v) => {
                        let before = decode::<PatientAdmin>(v.value())?;
                        (before.opposition, before.sharing_opposition)
                    }
                    None => (None, None),
                };
                let p = PatientAdmin {
                    updated_at_ms: now,
                    from_seq: seq,
                    zfa: zfa.clone(),
                    opposition,
                    sharing_opposition,
                };
                t.insert(k.as_str(), encode(&p).as_slice())
                    .map_err(db_err)?;
            }
        }
        Decision::Quarantined { reason, .. } => {
            let mut q = tx.cold().open_table(QUARANTINE).map_err(db_err)?;
            q.insert(
                seq,
                encode(&QuarantineEntry {
                    reason: *reason,
                    at_ms: now,
                })
                .as_slice(),
            )
            .map_err(db_err)?;
        }
    }
    let establishment = decision.establishment().cloned();
    let quarantined = establishment.is_none();
    let pending = req.app_ack.and_then(|mode| {
        let to = cfg
            .listener(&req.listener)
            .and_then(|l| l.application_acks_to.clone());
        if to.is_none() {
            tracing::warn!(listener = %req.listener, "application ACK asked for (MSH-16) but the listener has no application_acks_to: none will be sent");
        }
        to.map(|to| PendingAppAck { mode, to })
    });
    let (business_ack, mail_acks) = answer_debts(cfg, &req.listener, &req.facts, &dests);
    let no_destination = !quarantined && dests.is_empty();
    let mut rec = MessageRecord {
        seq,
        received_at_ms: now,
        listener: req.listener,
        peer: req.peer,
        control_id: req.facts.control_id.clone(),
        message_type: format!("{}^{}", req.facts.message_type, req.facts.trigger),
        class: Some(req.facts.class),
        sha256: crate::model::hex(&digest),
        status,
        decision: Some(decision),
        rejection: None,
        destinations: dests,
        app_ack: pending,
        sender: sender_name,
        answers: None,
        business_ack,
        mail_acks,
    };
    store_message(tx, &rec, &req.raw, &ack)?;
    audit_message(tx, seqs, "received", &rec)?;
    if no_destination {
        app_ack(tx, seqs, &mut rec, AckOutcome::Accepted, None, touched)?;
    }
    let mut dv = Vec::with_capacity(40);
    dv.extend_from_slice(&seq.to_be_bytes());
    dv.extend_from_slice(&fingerprint);
    writes.dedup(&dkey, &dv);
    seqs.overlay.add_dedup(seqs.pending + 1, dkey, dv);
    push_pending(tx, seqs, writes)?;
    Ok(IngestReply::Accepted {
        seq,
        ack,
        code,
        establishment,
        quarantined,
    })
}

/// Writes a received message: its record, its bytes and the ACK it was answered with.
/// The business acknowledgements a message's sender asked for and where they go (the
/// listener's `application_acks_to`): the DMP's reception (`ACK_RECEPTION`, ZAM^Z01), the
/// MSSanté receptions (`ACK_RECEPTION`, ZAM^Z02) and read receipts (`ACK_LECTURE_MSS`,
/// ZAM^Z03), each only when the message goes to that destination.
fn answer_debts(
    cfg: &Config,
    listener: &str,
    facts: &Facts,
    dests: &[DestinationName],
) -> (Option<DestinationName>, Option<MailAcks>) {
    let goes = |name: &str| dests.iter().any(|d| d.as_str() == name);
    let dmp = facts.ack_reception && goes(crate::config::DMP_DESTINATION);
    let mail = (facts.ack_reception || facts.ack_read) && goes(crate::mssante::DESTINATION);
    if !dmp && !mail {
        return (None, None);
    }
    let to = cfg
        .listener(listener)
        .and_then(|l| l.application_acks_to.clone());
    if to.is_none() {
        tracing::warn!(%listener, "business acknowledgements asked for (ACK_RECEPTION, ACK_LECTURE_MSS) but the listener has no application_acks_to: none will be sent");
    }
    let mail_acks = to.clone().filter(|_| mail).map(|to| MailAcks {
        to,
        reception: facts.ack_reception,
        read: facts.ack_read,
    });
    (to.filter(|_| dmp), mail_acks)
}

fn store_message(
    tx: &mut Tx<'_>,
    rec: &MessageRecord,
    raw: &[u8],
    ack: &[u8],
) -> Result<(), StoreError> {
    let seq = rec.seq;
    tx.records()?
        .insert(seq, encode(rec).as_slice())
        .map_err(db_err)?;
    tx.raw()?.insert(seq, raw).map_err(db_err)?;
    tx.acks()?.insert(seq, ack).map_err(db_err)?;
    Ok(())
}

/// Why a message from an identified peer was refused.
#[derive(Debug, Clone, Copy)]
enum Refused {
    UnknownSystem,
    Role,
    Establishment,
}

/// Refuses a message from an identified peer: AR/CR with code 207, stored as rejected with
/// the decision (when there was one) for review, counted by reason.
#[allow(clippy::too_many_arguments)]
fn refuse(
    tx: &mut Tx<'_>,
    seqs: &mut Sequences,
    req: IngestRequest,
    why: Refused,
    text: String,
    decision: Option<Decision>,
    sender: Option<String>,
) -> Result<IngestReply, StoreError> {
    use crate::stats::{STATS, add};
    add(
        match why {
            Refused::UnknownSystem => &STATS.refused_unknown_system,
            Refused::Role => &STATS.refused_role,
            Refused::Establishment => &STATS.refused_establishment,
        },
        1,
    );
    tracing::warn!(listener = %req.listener, sender = sender.as_deref().unwrap_or("-"), reason = ?why, "message refused: sender not authorised");
    let reason = match why {
        Refused::UnknownSystem => "unknown_system",
        Refused::Role => "role",
        Refused::Establishment => "cross_tenant",
    };
    metrics::counter!(crate::telemetry::names::REFUSALS, "listener" => req.listener.clone(), "reason" => reason)
        .increment(1);
    let error = AckError {
        code: 207,
        text,
        location: None,
    };
    reject(
        tx,
        seqs,
        RejectRequest::from_ingest(req, error, decision, sender),
    )
}

fn reject(
    tx: &mut Tx<'_>,
    seqs: &mut Sequences,
    req: RejectRequest,
) -> Result<IngestReply, StoreError> {
    let now = tx.now;
    seqs.message += 1;
    let seq = seqs.message;
    let (ack, code) = ack_for(
        &req.header,
        req.enhanced,
        AckOutcome::Rejected,
        Some(&req.error),
        seq,
        now,
    );
    let error_code = req.error.code;
    let text = req.error.text.clone();
    let rec = MessageRecord {
        seq,
        received_at_ms: now,
        listener: req.listener,
        peer: req.peer,
        control_id: req.control_id,
        message_type: req.message_type,
        class: None,
        sha256: crate::model::sha256_hex(&req.raw),
        status: RecordStatus::Rejected,
        decision: req.decision,
        rejection: Some(req.error),
        destinations: Vec::new(),
        app_ack: None,
        sender: req.sender,
        answers: None,
        business_ack: None,
        mail_acks: None,
    };
    store_message(tx, &rec, &req.raw, &ack)?;
    audit_message(tx, seqs, "refused", &rec)?;
    Ok(IngestReply::Rejected {
        seq,
        ack,
        code,
        error_code,
        text,
    })
}

/// Records what the results server reads of a message owned by `establishment`: the
/// practitioners it names in the patient's care (`access`; the first link per practitioner is
/// kept), and for a result, its place in the patient's results and the patient's
/// identifiers. Appended as one pending entry, indexed behind the ACK path (D22).
fn record_result(
    writes: &mut super::index::Writes,
    facts: &Facts,
    establishment: &EstablishmentId,
    seq: u64,
    now: u64,
) {
    let Some(pk) = &facts.patient_key else {
        return;
    };
    let est = establishment.as_str();
    for (rpps, link) in &facts.care_team {
        let v = CareLink {
            link: *link,
            seq,
            at_ms: now,
        };
        writes.care_link(&care_key(est, pk, rpps), &encode(&v));
    }
    if facts.class == MessageClass::Result && !facts.patient_ids.is_empty() {
        writes.result(&result_key(est, pk, seq), seq);
        for id in &facts.patient_ids {
            writes.patient_id(
                &patient_id_key(&id.value, id.system.as_deref(), est, pk),
                seq,
            );
        }
    }
}

/// Applies the pending index writes (D22) in a transaction of their own. It is synced like
/// any other (one fdatasync for up to `APPLY_AT` messages under load; measured no slower
/// than an unsynced one, BENCHMARKS.md); a crash before it leaves the entries pending,
/// applied at open.
fn apply_index(store: &Store, upto: u64) -> Result<(), StoreError> {
    let txn = store.write()?;
    let started = std::time::Instant::now();
    let n = super::index::apply_pending(&txn)?;
    txn.commit().map_err(db_err)?;
    metrics::histogram!(crate::telemetry::names::STORE_INDEX)
        .record(started.elapsed().as_secs_f64());
    metrics::histogram!(crate::telemetry::names::STORE_INDEX_BATCH).record(n as f64);
    store.index().applied(upto);
    Ok(())
}

/// Applies a DMP delivery's changes to the document register; the journal's detail: what
/// was published, replaced or deleted (our document ids, no patient data).
fn dmp_register(tx: &mut Tx<'_>, changes: &[DmpChange]) -> Result<serde_json::Value, StoreError> {
    let mut t = tx.cold().open_table(DMP_DOCS).map_err(db_err)?;
    let mut detail = Vec::new();
    for c in changes {
        let prev = c.from.as_deref().unwrap_or(&c.key);
        let before: Option<DmpDocument> = match t.get(prev).map_err(db_err)? {
            Some(v) => Some(decode(v.value())?),
            None => None,
        };
        if c.from.is_some() {
            t.remove(prev).map_err(db_err)?;
        }
        let before = before.map(|d| d.master_id);
        match &c.doc {
            Some(doc) => {
                t.insert(c.key.as_str(), encode(doc).as_slice())
                    .map_err(db_err)?;
                detail.push(match before {
                    Some(old) => serde_json::json!({ "replaced": old, "by": doc.master_id }),
                    None => serde_json::json!({ "published": doc.master_id }),
                });
            }
            None => {
                t.remove(c.key.as_str()).map_err(db_err)?;
                detail.push(serde_json::json!({ "deleted": before }));
            }
        }
    }
    Ok(serde_json::json!({ "documents": detail }))
}

fn delivery(
    tx: &mut Tx<'_>,
    seqs: &mut Sequences,
    dest: &str,
    n: u64,
    seq: u64,
    update: &DeliveryUpdate,
    touched: &mut BTreeSet<String>,
) -> Result<(), StoreError> {
    let now = tx.now;
    let key = queue_key(dest, n);
    let Some(current) = tx
        .outbox()?
        .get(key.as_slice())
        .map_err(db_err)?
        .map(|v| v.value().to_vec())
    else {
        // Already settled (e.g. by an earlier run): nothing to do.
        return Ok(());
    };
    let (event, detail) = match update {
        DeliveryUpdate::Delivered { dmp, mail } if dmp.is_empty() && mail.is_empty() => {
            ("delivered", serde_json::json!({}))
        }
        DeliveryUpdate::Delivered { dmp, mail } if dmp.is_empty() => (
            "delivered",
            serde_json::json!({ "recipients": journal_mail(mail) }),
        ),
        DeliveryUpdate::Delivered { dmp, .. } => ("delivered", dmp_register(tx, dmp)?),
        DeliveryUpdate::Retry {
            attempts, error, ..
        } => (
            "retry",
            serde_json::json!({ "attempts": attempts, "error": error }),
        ),
        DeliveryUpdate::Dead { attempts, reason } => (
            "dead",
            serde_json::json!({ "attempts": attempts, "reason": reason }),
        ),
        DeliveryUpdate::Withheld { reason, mail } if mail.is_empty() => {
            ("withheld", serde_json::json!({ "reason": reason }))
        }
        DeliveryUpdate::Withheld { reason, mail } => (
            "withheld",
            serde_json::json!({ "reason": reason, "recipients": journal_mail(mail) }),
        ),
    };
    // One read of the record serves the audit entry and the application ACK below.
    let record = load_record(tx, seq)?;
    // The DMP feed is not the receiving application: its outcome goes back as a business
    // acknowledgement, never into the application ACK (MSH-16).
    let for_app_ack =
        |d: &str| d != crate::config::DMP_DESTINATION && d != crate::mssante::DESTINATION;
    let reception = match update {
        _ if dest != crate::config::DMP_DESTINATION => None,
        DeliveryUpdate::Delivered { .. } => Some(Some(crate::dmp::Reception::Accepted)),
        DeliveryUpdate::Withheld { reason, .. } => Some(
            crate::dmp::Withheld::from_name(reason).and_then(crate::dmp::Reception::of_withheld),
        ),
        DeliveryUpdate::Dead { .. } => Some(Some(crate::dmp::Reception::DEAD)),
        DeliveryUpdate::Retry { .. } => None,
    };
    let owes_zam = reception.and(
        record
            .as_ref()
            .filter(|r| r.business_ack.is_some())
            .cloned(),
    );
    let mail_record = record
        .as_ref()
        .filter(|_| dest == crate::mssante::DESTINATION)
        .cloned();
    audit(
        tx,
        seqs,
        event,
        Some(seq),
        record
            .as_ref()
            .and_then(|r| r.establishment().map(|e| e.to_string())),
        Some(dest.to_owned()),
        detail,
    )?;
    match update {
        DeliveryUpdate::Delivered { .. } => {
            tx.outbox()?.remove(key.as_slice()).map_err(db_err)?;
            seqs.bump(DEPTH_PREFIX, dest, -1);
            tx.delivered()?
                .insert(queue_key(dest, seq).as_slice(), now)
                .map_err(db_err)?;
            if let Some(mut rec) = record.filter(|r| r.app_ack.is_some() && for_app_ack(dest)) {
                let delivered = tx.delivered()?;
                let mut all = true;
                for d in rec.destinations.iter().filter(|d| for_app_ack(d.as_str())) {
                    all &= delivered
                        .get(queue_key(d.as_str(), seq).as_slice())
                        .map_err(db_err)?
                        .is_some();
                }
                if all {
                    app_ack(tx, seqs, &mut rec, AckOutcome::Accepted, None, touched)?;
                }
            }
        }
        DeliveryUpdate::Retry {
            attempts,
            next_attempt_ms,
            error,
        } => {
            let mut e: OutboxEntry = decode(&current)?;
            e.attempts = *attempts;
            e.next_attempt_ms = *next_attempt_ms;
            e.last_error = Some(error.clone());
            tx.outbox()?
                .insert(key.as_slice(), encode(&e).as_slice())
                .map_err(db_err)?;
        }
        DeliveryUpdate::Withheld { .. } => {
            tx.outbox()?.remove(key.as_slice()).map_err(db_err)?;
            seqs.bump(DEPTH_PREFIX, dest, -1);
        }
        DeliveryUpdate::Dead { attempts, reason } => {
            tx.outbox()?.remove(key.as_slice()).map_err(db_err)?;
            seqs.bump(DEPTH_PREFIX, dest, -1);
            let d = DeadLetter {
                seq,
                reason: reason.clone(),
                at_ms: now,
                attempts: *attempts,
            };
            let before = tx
                .cold()
                .open_table(DEAD)
                .map_err(db_err)?
                .insert(queue_key(dest, seq).as_slice(), encode(&d).as_slice())
                .map_err(db_err)?
                .is_some();
            if !before {
                seqs.bump(DEAD_PREFIX, dest, 1);
            }
            touched.insert(dest.to_owned());
            if let Some(mut rec) = record.filter(|r| r.app_ack.is_some() && for_app_ack(dest)) {
                let err = AckError {
                    code: 207,
                    text: "not delivered: a destination did not accept it; held as a dead letter"
                        .into(),
                    location: None,
                };
                app_ack(tx, seqs, &mut rec, AckOutcome::Error, Some(err), touched)?;
            }
        }
    }
    if let (Some(rec), Some(outcome)) = (owes_zam, reception) {
        let dead = matches!(update, DeliveryUpdate::Dead { .. });
        business_ack(tx, seqs, rec, outcome, dead, touched)?;
    }
    // The MSSanté receptions: a mail handed over was acknowledged when it was (`mail_sent`);
    // here each recipient who was not mailed, or the whole mail when it is a dead letter.
    if let Some(rec) = mail_record.filter(|r| r.mail_acks.as_ref().is_some_and(|a| a.reception)) {
        use crate::mssante::receipts::Receipt;
        let receipts: Vec<Receipt> = match update {
            DeliveryUpdate::Delivered { mail, .. } | DeliveryUpdate::Withheld { mail, .. } => mail
                .iter()
                .filter(|o| o.outcome != "sent")
                .map(|o| Receipt::Refused(o.who.clone(), o.outcome.clone()))
                .collect(),
            DeliveryUpdate::Dead { .. } => vec![Receipt::NotDelivered],
            DeliveryUpdate::Retry { .. } => Vec::new(),
        };
        for r in &receipts {
            mail_receipt(tx, seqs, &rec, r, None, touched)?;
        }
    }
    Ok(())
}

/// Records one mail handed to the SMTP server (once: a mail recorded already is not
/// acknowledged again), journals it, and sends its ZAM^Z02 when the sender asked.
fn mail_sent(
    tx: &mut Tx<'_>,
    seqs: &mut Sequences,
    seq: u64,
    mut mail: SentMail,
    touched: &mut BTreeSet<String>,
) -> Result<(), StoreError> {
    let key = mss_sent_key(seq, &mail.address);
    let mut t = tx.cold().open_table(MSS_SENT).map_err(db_err)?;
    if t.get(key.as_slice()).map_err(db_err)?.is_some() {
        return Ok(());
    }
    mail.at_ms = tx.now;
    t.insert(key.as_slice(), encode(&mail).as_slice())
        .map_err(db_err)?;
    drop(t);
    if let Some(report) = &mail.report {
        let r = ReportRecipient {
            address: mail.address.clone(),
            rpps: mail.rpps.clone(),
            patient: mail.patient,
        };
        tx.cold()
            .open_table(MSS_REPORTS)
            .map_err(db_err)?
            .insert(
                format!("{report}{}", mail.address).as_str(),
                encode(&r).as_slice(),
            )
            .map_err(db_err)?;
    }
    let rec = load_record(tx, seq)?;
    audit(
        tx,
        seqs,
        "mail_sent",
        Some(seq),
        rec.as_ref()
            .and_then(|r| r.establishment().map(|e| e.to_string())),
        Some(crate::mssante::DESTINATION.to_owned()),
        serde_json::json!({ "recipient": mail.label() }),
    )?;
    if let Some(rec) = rec.filter(|r| r.mail_acks.as_ref().is_some_and(|a| a.reception)) {
        let receipt = crate::mssante::receipts::Receipt::Received(who_of(&mail));
        mail_receipt(tx, seqs, &rec, &receipt, None, touched)?;
    }
    Ok(())
}

fn who_of(mail: &SentMail) -> crate::mssante::receipts::Who {
    crate::mssante::receipts::Who {
        address: Some(mail.address.clone()),
        rpps: mail.rpps.clone(),
    }
}

/// Queues one MSSanté business acknowledgement (ZAM^Z02 or ZAM^Z03) to where the record's
/// sender asked for them, and journals it (the outcome name, never an address).
fn mail_receipt(
    tx: &mut Tx<'_>,
    seqs: &mut Sequences,
    rec: &MessageRecord,
    receipt: &crate::mssante::receipts::Receipt,
    actor: Option<String>,
    touched: &mut BTreeSet<String>,
) -> Result<(), StoreError> {
    use crate::mssante::receipts::{self, Receipt};
    let Some(acks) = rec.mail_acks.as_ref() else {
        return Ok(());
    };
    let seq = queue_answer(
        tx,
        seqs,
        rec,
        &acks.to,
        Answering::BusinessAck(receipt.message_type()),
        |header, profile, control_id, now| {
            receipts::zam(header, profile, receipt, control_id, &hl7_timestamp(now))
        },
        touched,
    )?;
    let code = match receipt {
        Receipt::Received(_) => "Y",
        Receipt::Read(_, true) => "Y",
        Receipt::Read(_, false) => "N",
        Receipt::Refused(_, r) => r.as_str(),
        Receipt::NotDelivered => receipts::NOT_DELIVERED,
    };
    audit(
        tx,
        seqs,
        "business_ack",
        Some(rec.seq),
        rec.establishment().map(|e| e.to_string()),
        Some(actor.unwrap_or_else(|| acks.to.to_string())),
        serde_json::json!({ "type": receipt.message_type(), "code": code, "zam_seq": seq }),
    )?;
    Ok(())
}

/// Sends the DMP business acknowledgement (ZAM^Z01) a record owes (`outcome`; `None`: the
/// sender did not ask for the DMP, nothing to acknowledge), stored as a message of its own
/// and queued like an application ACK. A dead letter's leaves the debt open: an operator's
/// retry that gets the document published acknowledges it again.
fn business_ack(
    tx: &mut Tx<'_>,
    seqs: &mut Sequences,
    mut rec: MessageRecord,
    outcome: Option<crate::dmp::Reception>,
    keep: bool,
    touched: &mut BTreeSet<String>,
) -> Result<(), StoreError> {
    let Some(to) = rec.business_ack.clone() else {
        return Ok(());
    };
    if let Some(outcome) = outcome {
        let seq = queue_answer(
            tx,
            seqs,
            &rec,
            &to,
            Answering::BusinessAck("ZAM^Z01"),
            |header, profile, control_id, now| {
                crate::dmp::reception_ack(header, profile, outcome, control_id, &hl7_timestamp(now))
            },
            touched,
        )?;
        let code = match outcome {
            crate::dmp::Reception::Accepted => "Y",
            crate::dmp::Reception::Refused { code, .. } => code,
        };
        audit(
            tx,
            seqs,
            "business_ack",
            Some(rec.seq),
            rec.establishment().map(|e| e.to_string()),
            Some(to.to_string()),
            serde_json::json!({ "code": code, "zam_seq": seq }),
        )?;
    }
    if !keep {
        rec.business_ack = None;
        tx.records()?
            .insert(rec.seq, encode(&rec).as_slice())
            .map_err(db_err)?;
    }
    Ok(())
}

/// What labroute answers a stored message with.
#[derive(Clone, Copy)]
enum Answering {
    /// The MSH-16 application ACK.
    AppAck,
    /// A business acknowledgement of the French profile, by its message type (ZAM^Z01 the
    /// DMP's, ZAM^Z02 and ZAM^Z03 MSSanté's).
    BusinessAck(&'static str),
}

/// Builds (`build`: from the original's header, its MSH-21, the answer's control id and the
/// time) an answer to `original`, stores it as a message of its own and queues it to `to`;
/// returns its sequence number.
fn queue_answer(
    tx: &mut Tx<'_>,
    seqs: &mut Sequences,
    original: &MessageRecord,
    to: &DestinationName,
    kind: Answering,
    build: impl FnOnce(&AckHeader, &[u8], &str, u64) -> Vec<u8>,
    touched: &mut BTreeSet<String>,
) -> Result<u64, StoreError> {
    let now = tx.now;
    let raw = tx
        .raw()?
        .get(original.seq)
        .map_err(db_err)?
        .map(|v| v.value().to_vec())
        .unwrap_or_default();
    let prepared = crate::hl7::message::prepare(&raw);
    let (header, profile) = match crate::hl7::Message::parse(&prepared) {
        Ok(m) => (
            AckHeader::of(&m),
            m.msh().field(21).repetition(1).raw().to_vec(),
        ),
        Err(_) => (AckHeader::salvage(&prepared), Vec::new()),
    };
    seqs.message += 1;
    let seq = seqs.message;
    let (prefix, message_type, peer) = match kind {
        Answering::AppAck => ("LRA", "ACK", "application ACK"),
        Answering::BusinessAck(t) => ("LRZ", t, "business acknowledgement"),
    };
    let control_id = format!("{prefix}{seq}");
    let bytes = build(&header, &profile, &control_id, now);
    let answer = MessageRecord {
        seq,
        received_at_ms: now,
        listener: String::new(),
        peer: format!("{peer} of message {}", original.seq),
        control_id,
        message_type: message_type.into(),
        class: None,
        sha256: crate::model::sha256_hex(&bytes),
        status: RecordStatus::Routed,
        decision: None,
        rejection: None,
        destinations: vec![to.clone()],
        app_ack: None,
        sender: None,
        answers: Some(original.seq),
        business_ack: None,
        mail_acks: None,
    };
    store_message(tx, &answer, &bytes, &[])?;
    enqueue(tx, seqs, to.as_str(), seq, None, now)?;
    touched.insert(to.as_str().to_owned());
    Ok(seq)
}

/// Sends the application ACK a record owes, if its MSH-16 asks for this outcome: built from
/// the original message's header, stored as a message of its own and queued to the
/// listener's `application_acks_to`. An AA settles the debt; AE leaves it open (an operator
/// may still get the message delivered).
fn app_ack(
    tx: &mut Tx<'_>,
    seqs: &mut Sequences,
    rec: &mut MessageRecord,
    outcome: AckOutcome,
    err: Option<AckError>,
    touched: &mut BTreeSet<String>,
) -> Result<(), StoreError> {
    let Some(pending) = rec.app_ack.clone() else {
        return Ok(());
    };
    if pending.mode.sends(outcome) {
        let code = ack::code_for(false, outcome);
        let seq = queue_answer(
            tx,
            seqs,
            rec,
            &pending.to,
            Answering::AppAck,
            |header, _, control_id, now| {
                ack::build(header, code, err.as_ref(), control_id, &hl7_timestamp(now))
            },
            touched,
        )?;
        audit(
            tx,
            seqs,
            "application_ack",
            Some(rec.seq),
            rec.establishment().map(|e| e.to_string()),
            Some(pending.to.to_string()),
            serde_json::json!({ "code": code.as_str(), "ack_seq": seq }),
        )?;
    }
    if outcome != AckOutcome::Error {
        rec.app_ack = None;
        tx.records()?
            .insert(rec.seq, encode(&*rec).as_slice())
            .map_err(db_err)?;
    }
    Ok(())
}

fn log_operator(
    tx: &mut Tx<'_>,
    seqs: &mut Sequences,
    operator: &str,
    action: &str,
    seq: u64,
    detail: String,
) -> Result<(), StoreError> {
    seqs.oplog += 1;
    let r = OperatorRecord {
        at_ms: tx.now,
        operator: operator.to_owned(),
        action: action.to_owned(),
        seq,
        detail,
    };
    tx.cold()
        .open_table(OPLOG)
        .map_err(db_err)?
        .insert(seqs.oplog, encode(&r).as_slice())
        .map_err(db_err)?;
    let establishment =
        load_record(tx, seq)?.and_then(|rec| rec.establishment().map(|e| e.to_string()));
    audit(
        tx,
        seqs,
        "operator",
        Some(seq),
        establishment,
        Some(r.operator),
        serde_json::json!({ "action": r.action, "detail": r.detail }),
    )?;
    Ok(())
}

/// The record of a message that is in quarantine, `None` when it is not.
fn load_quarantined(tx: &mut Tx<'_>, seq: u64) -> Result<Option<MessageRecord>, StoreError> {
    let in_q = tx
        .cold()
        .open_table(QUARANTINE)
        .map_err(db_err)?
        .get(seq)
        .map_err(db_err)?
        .is_some();
    if in_q { load_record(tx, seq) } else { Ok(None) }
}

fn load_record(tx: &mut Tx<'_>, seq: u64) -> Result<Option<MessageRecord>, StoreError> {
    let t = tx.records()?;
    let v = t.get(seq).map_err(db_err)?.map(|v| v.value().to_vec());
    v.map(|b| decode(&b)).transpose()
}

/// An operator command refused for scope: audited in the same transaction.
fn forbidden(
    tx: &mut Tx<'_>,
    seqs: &mut Sequences,
    who: &crate::policy::Operator,
    cmd: &OperatorCommand,
    seq: u64,
) -> Result<Result<String, OperatorError>, StoreError> {
    let err = OperatorError::Forbidden {
        seq,
        scope: who.scope.describe(),
    };
    refused(tx, seqs, who, cmd, Some(seq), err)
}

/// An operator command refused (scope, or a release the sender may not speak for):
/// audited in the same transaction.
fn refused<T>(
    tx: &mut Tx<'_>,
    seqs: &mut Sequences,
    who: &crate::policy::Operator,
    cmd: &OperatorCommand,
    seq: Option<u64>,
    err: OperatorError,
) -> Result<Result<T, OperatorError>, StoreError> {
    audit(
        tx,
        seqs,
        "operator_refused",
        seq,
        None,
        Some(who.name.clone()),
        serde_json::json!({ "command": cmd.journal(), "scope": who.scope, "reason": err.to_string() }),
    )?;
    Ok(Err(err))
}

/// The establishment a patient-level command names, if the operator's scope covers it (a
/// refusal is journalled).
fn in_scope<'c>(
    tx: &mut Tx<'_>,
    cfg: &'c Config,
    seqs: &mut Sequences,
    cmd: &OperatorCommand,
    who: &crate::policy::Operator,
    establishment: &str,
) -> Result<Result<&'c crate::config::Establishment, OperatorError>, StoreError> {
    let Some(est) = cfg.establishment_by_name(establishment) else {
        return Ok(Err(OperatorError::UnknownEstablishment(
            establishment.to_owned(),
        )));
    };
    if !who.scope.covers(&est.id) {
        let err = OperatorError::OutOfScope {
            establishment: establishment.to_owned(),
            scope: who.scope.describe(),
        };
        return refused(tx, seqs, who, cmd, None, err);
    }
    Ok(Ok(est))
}

fn operate(
    tx: &mut Tx<'_>,
    cfg: &Config,
    seqs: &mut Sequences,
    cmd: &OperatorCommand,
    who: &crate::policy::Operator,
    touched: &mut BTreeSet<String>,
) -> Result<Result<String, OperatorError>, StoreError> {
    let now = tx.now;
    let operator = who.name.as_str();
    match cmd {
        OperatorCommand::Release { seq, establishment } => {
            let Some(mut rec) = load_quarantined(tx, *seq)? else {
                return Ok(Err(OperatorError::NotQuarantined(*seq)));
            };
            let Some(est) = cfg.establishment_by_name(establishment) else {
                return Ok(Err(OperatorError::UnknownEstablishment(
                    establishment.clone(),
                )));
            };
            if !who.scope.sees(&rec, cfg) || !who.scope.covers(&est.id) {
                return forbidden(tx, seqs, who, cmd, *seq);
            }
            // A system never speaks for another establishment, not even through quarantine.
            if let Some(sys) = rec.sender.as_deref().and_then(|n| cfg.system(n)) {
                if !sys.speaks_for(&est.id) {
                    let err = OperatorError::SenderNotFor {
                        seq: *seq,
                        system: sys.name.clone(),
                        establishment: est.id.to_string(),
                    };
                    return refused(tx, seqs, who, cmd, Some(*seq), err);
                }
            }
            let Some(class) = rec.class else {
                return Ok(Err(OperatorError::NotQuarantined(*seq)));
            };
            let raw = tx
                .raw()?
                .get(*seq)
                .map_err(db_err)?
                .map(|v| v.value().to_vec())
                .unwrap_or_default();
            let facts = crate::hl7::Message::parse(&crate::hl7::message::prepare(&raw))
                .ok()
                .and_then(|m| router::extract(&m).ok());
            let dests = router::destinations(class, &est.id, cfg);
            for d in &dests {
                enqueue(
                    tx,
                    seqs,
                    d.as_str(),
                    *seq,
                    facts.as_ref().and_then(|f| f.patient_key.clone()),
                    now,
                )?;
                touched.insert(d.as_str().to_owned());
            }
            if let Some(f) = &facts {
                let mut writes = super::index::Writes::default();
                record_orders(tx, seqs, &mut writes, f, &est.id)?;
                record_result(&mut writes, f, &est.id, *seq, now);
                push_pending(tx, seqs, writes)?;
            }
            tx.cold()
                .open_table(QUARANTINE)
                .map_err(db_err)?
                .remove(*seq)
                .map_err(db_err)?;
            let evidence = rec
                .decision
                .as_ref()
                .map(|d| d.evidence().to_vec())
                .unwrap_or_default();
            rec.decision = Some(Decision::Owned {
                establishment: est.id.clone(),
                evidence,
            });
            rec.status = RecordStatus::Released;
            if let Some(f) = &facts {
                (rec.business_ack, rec.mail_acks) = answer_debts(cfg, &rec.listener, f, &dests);
            }
            rec.destinations = dests.clone();
            tx.records()?
                .insert(*seq, encode(&rec).as_slice())
                .map_err(db_err)?;
            if dests.is_empty() {
                app_ack(tx, seqs, &mut rec, AckOutcome::Accepted, None, touched)?;
            }
            let names: Vec<&str> = dests.iter().map(|d| d.as_str()).collect();
            let detail = format!("released to {} -> {}", est.id, names.join(","));
            log_operator(
                tx,
                seqs,
                operator,
                "quarantine.release",
                *seq,
                detail.clone(),
            )?;
            Ok(Ok(detail))
        }
        OperatorCommand::Discard { seq, reason } => {
            let Some(mut rec) = load_quarantined(tx, *seq)? else {
                return Ok(Err(OperatorError::NotQuarantined(*seq)));
            };
            if !who.scope.sees(&rec, cfg) {
                return forbidden(tx, seqs, who, cmd, *seq);
            }
            tx.cold()
                .open_table(QUARANTINE)
                .map_err(db_err)?
                .remove(*seq)
                .map_err(db_err)?;
            rec.status = RecordStatus::Discarded;
            tx.records()?
                .insert(*seq, encode(&rec).as_slice())
                .map_err(db_err)?;
            let err = AckError {
                code: 207,
                text: "not delivered: its establishment could not be established; discarded by an operator".into(),
                location: None,
            };
            app_ack(tx, seqs, &mut rec, AckOutcome::Rejected, Some(err), touched)?;
            log_operator(
                tx,
                seqs,
                operator,
                "quarantine.discard",
                *seq,
                format!("discarded: {reason}"),
            )?;
            Ok(Ok(format!(
                "message {seq} discarded (its bytes stay in the store)"
            )))
        }
        OperatorCommand::RetryDead { destination, seq } => {
            let key = queue_key(destination, *seq);
            let visible = load_record(tx, *seq)?.is_some_and(|r| who.scope.sees(&r, cfg));
            let dead = tx
                .cold()
                .open_table(DEAD)
                .map_err(db_err)?
                .get(key.as_slice())
                .map_err(db_err)?
                .is_some();
            if dead && !visible {
                return forbidden(tx, seqs, who, cmd, *seq);
            }
            let existed = tx
                .cold()
                .open_table(DEAD)
                .map_err(db_err)?
                .remove(key.as_slice())
                .map_err(db_err)?
                .is_some();
            if !existed {
                return Ok(Err(OperatorError::NotDead(destination.clone(), *seq)));
            }
            seqs.bump(DEAD_PREFIX, destination, -1);
            enqueue(tx, seqs, destination, *seq, None, now)?;
            touched.insert(destination.clone());
            log_operator(
                tx,
                seqs,
                operator,
                "dead.retry",
                *seq,
                format!("requeued to {destination}"),
            )?;
            Ok(Ok(format!("message {seq} requeued to {destination}")))
        }
        OperatorCommand::MailRead {
            message_id,
            disposition,
        } => {
            let Some((seq, tag)) = crate::mssante::mdn::ours(message_id) else {
                return Ok(Err(OperatorError::Invalid(
                    "the read receipt answers a mail labroute did not send (its Original-Message-ID is not one of labroute's)".into(),
                )));
            };
            let Some(rec) = load_record(tx, seq)? else {
                return Ok(Err(OperatorError::Invalid(format!(
                    "the read receipt answers message {seq}, which this instance does not have"
                ))));
            };
            if !who.scope.sees(&rec, cfg) {
                return forbidden(tx, seqs, who, cmd, seq);
            }
            let (start, end) = (seq.to_be_bytes(), seq.saturating_add(1).to_be_bytes());
            let mut t = tx.cold().open_table(MSS_SENT).map_err(db_err)?;
            let mut found = None;
            for item in t.range(start.as_slice()..end.as_slice()).map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                let m: SentMail = decode(v.value())?;
                if crate::mssante::mdn::tag(&m.address) == tag {
                    found = Some((k.value().to_vec(), m));
                    break;
                }
            }
            let Some((key, mut mail)) = found else {
                return Ok(Err(OperatorError::Invalid(format!(
                    "no mail of message {seq} has that Message-ID"
                ))));
            };
            if mail.read.is_some() {
                return Ok(Ok(format!(
                    "the read receipt of message {seq} for {} was recorded already",
                    mail.label()
                )));
            }
            let displayed = *disposition == crate::mssante::mdn::Disposition::Displayed;
            mail.read = Some((displayed, now));
            t.insert(key.as_slice(), encode(&mail).as_slice())
                .map_err(db_err)?;
            drop(t);
            audit(
                tx,
                seqs,
                "mail_read",
                Some(seq),
                rec.establishment().map(|e| e.to_string()),
                Some(operator.to_owned()),
                serde_json::json!({ "recipient": mail.label(), "disposition": disposition.as_str() }),
            )?;
            if rec.mail_acks.as_ref().is_some_and(|a| a.read) {
                let receipt = crate::mssante::receipts::Receipt::Read(who_of(&mail), displayed);
                mail_receipt(tx, seqs, &rec, &receipt, Some(operator.to_owned()), touched)?;
            }
            Ok(Ok(format!(
                "read receipt of message {seq} for {}: {}",
                mail.label(),
                disposition.as_str()
            )))
        }
        OperatorCommand::CareGrant {
            establishment,
            authority,
            id,
            rpps,
            granted,
        } => {
            let est = match in_scope(tx, cfg, seqs, cmd, who, establishment)? {
                Ok(e) => e,
                Err(refusal) => return Ok(Err(refusal)),
            };
            let rpps = rpps.trim();
            if !crate::access::is_rpps(rpps) {
                return Ok(Err(OperatorError::Invalid("an RPPS is 11 digits".into())));
            }
            let pk = patient_key(authority, id);
            let key = care_key(est.id.as_str(), &pk, rpps);
            let mut t = tx.cold().open_table(CARE_GRANTS).map_err(db_err)?;
            if *granted {
                let g = CareGrant {
                    operator: operator.to_owned(),
                    at_ms: now,
                };
                t.insert(key.as_str(), encode(&g).as_slice())
                    .map_err(db_err)?;
            } else {
                t.remove(key.as_str()).map_err(db_err)?;
            }
            drop(t);
            audit(
                tx,
                seqs,
                "operator",
                None,
                Some(est.id.to_string()),
                Some(operator.to_owned()),
                serde_json::json!({
                    "action": if *granted { "access.grant" } else { "access.revoke" },
                    "patient": patient_ref(est.id.as_str(), &pk),
                    "rpps": rpps,
                }),
            )?;
            Ok(Ok(if *granted {
                format!(
                    "practitioner {rpps} may read this patient's results in {}",
                    est.id
                )
            } else {
                format!(
                    "grant withdrawn: practitioner {rpps} reads this patient's results in {} only if a result names him",
                    est.id
                )
            }))
        }
        OperatorCommand::DirectoryImport { source, mailboxes } => {
            if !who.scope.is_instance() {
                let err = OperatorError::NeedsInstance {
                    action: "a directory import".into(),
                    scope: who.scope.describe(),
                };
                return refused(tx, seqs, who, cmd, None, err);
            }
            // Everything checked before anything changes: an import applies whole or not.
            let mut valid: Vec<crate::mssante::Mailbox> = Vec::with_capacity(mailboxes.len());
            let mut seen = std::collections::HashSet::new();
            for m in mailboxes {
                let Some(address) = crate::mssante::normalise_address(&m.address) else {
                    return Ok(Err(OperatorError::Invalid(
                        "an entry's address is not an e-mail address".into(),
                    )));
                };
                if !seen.insert(address.clone()) {
                    return Ok(Err(OperatorError::Invalid(
                        "an address appears twice".into(),
                    )));
                }
                if m.rpps
                    .as_deref()
                    .is_some_and(|r| !crate::access::is_rpps(r))
                {
                    return Ok(Err(OperatorError::Invalid("an RPPS is 11 digits".into())));
                }
                valid.push(crate::mssante::Mailbox {
                    address,
                    ..m.clone()
                });
            }
            let prefix = format!("{}\u{1f}", source.as_str());
            let end = format!("{}\u{20}", source.as_str());
            let mut dir = tx.cold().open_table(MSS_DIRECTORY).map_err(db_err)?;
            let mut by = tx.cold().open_table(MSS_BY_RPPS).map_err(db_err)?;
            // Out with this source's entries (and their RPPS index), in with the new ones.
            let old: Vec<(String, Option<String>)> = dir
                .range(prefix.as_str()..end.as_str())
                .map_err(db_err)?
                .map(|item| {
                    let (k, v) = item.map_err(db_err)?;
                    let m: crate::mssante::Mailbox = decode(v.value())?;
                    Ok((k.value().to_owned(), m.rpps))
                })
                .collect::<Result<_, StoreError>>()?;
            let removed = old.len();
            for (k, rpps) in old {
                dir.remove(k.as_str()).map_err(db_err)?;
                if let Some(r) = rpps {
                    by.remove(format!("{r}\u{1f}{k}").as_str())
                        .map_err(db_err)?;
                }
            }
            let mut added = 0usize;
            for m in valid {
                let k = crate::store::mss_key(*source, &m.address);
                if dir
                    .insert(k.as_str(), encode(&m).as_slice())
                    .map_err(db_err)?
                    .is_none()
                {
                    added += 1;
                }
                if let Some(r) = m.rpps.as_deref() {
                    by.insert(format!("{r}\u{1f}{k}").as_str(), ())
                        .map_err(db_err)?;
                }
            }
            drop((dir, by));
            audit(
                tx,
                seqs,
                "operator",
                None,
                None,
                Some(operator.to_owned()),
                serde_json::json!({
                    "action": "mssante.directory_import",
                    "source": source,
                    "removed": removed,
                    "mailboxes": added,
                }),
            )?;
            Ok(Ok(format!(
                "{} directory: {added} mailboxes (replacing {removed})",
                source.as_str()
            )))
        }
        OperatorCommand::WhitelistImport { domains } => {
            if !who.scope.is_instance() {
                let err = OperatorError::NeedsInstance {
                    action: "a whitelist import".into(),
                    scope: who.scope.describe(),
                };
                return refused(tx, seqs, who, cmd, None, err);
            }
            let Some(valid) = domains
                .iter()
                .map(|d| crate::mssante::normalise_domain(d))
                .collect::<Option<Vec<String>>>()
                .filter(|v| !v.is_empty())
            else {
                return Ok(Err(OperatorError::Invalid(
                    "a whitelist entry is not a domain name, or there is none".into(),
                )));
            };
            let mut t = tx.cold().open_table(MSS_WHITELIST).map_err(db_err)?;
            let removed = t.len().map_err(db_err)?;
            t.retain(|_, _| false).map_err(db_err)?;
            for d in valid {
                t.insert(d.as_str(), now).map_err(db_err)?;
            }
            let count = t.len().map_err(db_err)?;
            drop(t);
            audit(
                tx,
                seqs,
                "operator",
                None,
                None,
                Some(operator.to_owned()),
                serde_json::json!({
                    "action": "mssante.whitelist_import",
                    "removed": removed,
                    "domains": count,
                }),
            )?;
            Ok(Ok(format!(
                "whitelist: {count} domains (replacing {removed})"
            )))
        }
        OperatorCommand::DmpOpposition {
            establishment,
            authority,
            id,
            opposed,
        }
        | OperatorCommand::SharingOpposition {
            establishment,
            authority,
            id,
            opposed,
        } => {
            // The same record, two oppositions: to the DMP feed, and to sharing outside the
            // establishment (MSSanté to professionals, the results server).
            let sharing = matches!(cmd, OperatorCommand::SharingOpposition { .. });
            let est = match in_scope(tx, cfg, seqs, cmd, who, establishment)? {
                Ok(e) => e,
                Err(refusal) => return Ok(Err(refusal)),
            };
            let pk = patient_key(authority, id);
            let key = patient_admin_key(est.id.as_str(), &pk);
            let mut t = tx.cold().open_table(PATIENTS).map_err(db_err)?;
            let mut p: PatientAdmin = match t.get(key.as_str()).map_err(db_err)? {
                Some(v) => decode(v.value())?,
                None => PatientAdmin {
                    updated_at_ms: now,
                    from_seq: 0,
                    zfa: Vec::new(),
                    opposition: None,
                    sharing_opposition: None,
                },
            };
            let recorded = opposed.then(|| OperatorOpposition {
                at_ms: now,
                operator: operator.to_owned(),
            });
            if sharing {
                p.sharing_opposition = recorded;
            } else {
                p.opposition = recorded;
            }
            let zfa_opposes = !sharing && p.zfa.get(8).is_some_and(|v| v == "IO");
            t.insert(key.as_str(), encode(&p).as_slice())
                .map_err(db_err)?;
            drop(t);
            let action = match (sharing, opposed) {
                (false, true) => "dmp.opposition",
                (false, false) => "dmp.opposition_lifted",
                (true, true) => "sharing.opposition",
                (true, false) => "sharing.opposition_lifted",
            };
            audit(
                tx,
                seqs,
                "operator",
                None,
                Some(est.id.to_string()),
                Some(operator.to_owned()),
                serde_json::json!({
                    "action": action,
                    "patient": patient_ref(est.id.as_str(), &pk),
                }),
            )?;
            let e = &est.id;
            Ok(Ok(match (sharing, opposed, zfa_opposes) {
                (true, true, _) => format!(
                    "opposition recorded for this patient of {e}: results are no longer mailed to professionals nor served to practitioners outside it"
                ),
                (true, false, _) => format!(
                    "opposition lifted for this patient of {e}: practitioners in his care outside it receive his results again"
                ),
                (false, true, _) => format!(
                    "opposition recorded for this patient of {e}: results are no longer published to the DMP"
                ),
                (false, false, false) => format!(
                    "opposition lifted for this patient of {e}: results are published to the DMP again"
                ),
                (false, false, true) => format!(
                    "opposition recorded through labroute lifted for this patient of {e}; the latest ADT from the patient record system still says opposition (ZFA-9 IO), so results stay withheld"
                ),
            }))
        }
    }
}
