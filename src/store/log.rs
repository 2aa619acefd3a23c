//! The JetStream log in front of the embedded store (`[store] kind = "jetstream"`, D23).
//!
//! Every change a node is asked for (a message to store, a delivery outcome, an operator
//! command, an audit event) is published to one JetStream stream first. The request is
//! answered only once JetStream has acknowledged the publish (after its replicas have it)
//! **and** this node's writer has applied it. Each node reads the whole stream, in its
//! order, and applies every entry to its own embedded store with the same writer the
//! embedded mode uses: the same requests in the same order, with the time each entry
//! carries, give the same store on every node. JetStream orders and replicates; nothing
//! here does.
//!
//! - **Exactly once per node**: the writer keeps the position of the last entry it applied
//!   (`META` [`POSITION`]) in the transaction that applied it, and reads on from there.
//! - **A failed batch** (disk full, I/O error) is read again from the log: the writer tells
//!   the reader through [`Position`], and skips what arrives out of order meanwhile.
//! - **Duplicates**: a publish carries its request's id as `Nats-Msg-Id`, so a publish sent
//!   twice within the stream's window is stored once. A message the sender sends again is
//!   a new request; the writer's own deduplication answers it with the original ACK, as in
//!   the embedded mode.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use super::StoreError;
use super::writer::{Op, Reply, Request, Staged};
use crate::config::JetStreamStore;

/// `META` key: the last log entry this store applied.
pub(crate) const POSITION: &str = "log_seq";

/// How long a publish may wait for JetStream's acknowledgement (then the sender is answered
/// AE and sends again; a cluster electing a new leader after a server died takes seconds).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait before sending again a publish no server took (see `acknowledged`).
const NO_RESPONDERS_PAUSE: Duration = Duration::from_millis(200);
/// An entry this node published and has not read back after this long: the reader's
/// consumer is made again (its server may have died; the client's own recovery can take a
/// minute while the cluster elects new leaders).
const STALLED: Duration = Duration::from_secs(2);
/// How often the client pings its server (see `Log::connect`).
const PING: Duration = Duration::from_secs(2);
/// Nothing read for this long: the consumer is made again anyway.
const QUIET: Duration = Duration::from_secs(15);

/// A log entry: a request, who asked (`id`: node name and a counter), and its time.
#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    id: String,
    at: u64,
    request: Request,
}

/// Where the writer is in the log, for the reader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Position {
    /// The last entry committed.
    pub committed: u64,
    /// Failed batches so far: when it moves, the reader reads again from `committed + 1`.
    pub rewinds: u64,
    /// The writer stopped at this entry, which puts in force routes (this digest) this node
    /// does not have (D24); it goes on once they are staged (a reload with them).
    pub halted: Option<(u64, crate::config::RoutesDigest)>,
}

/// The writer's side: admits entries in order, reports what it committed.
pub(crate) struct Track {
    pos: Position,
    tx: watch::Sender<Position>,
}

impl Track {
    pub(crate) fn new(committed: u64) -> (Track, watch::Receiver<Position>) {
        let pos = Position {
            committed,
            rewinds: 0,
            halted: None,
        };
        let (tx, rx) = watch::channel(pos);
        (Track { pos, tx }, rx)
    }

    /// Keeps the batch's requests that come next in the log (and those not logged); an
    /// entry already applied (read again after a rewind) is dropped, one past a gap
    /// (arriving while the reader rewinds) is answered with an error (its sender sends
    /// again). The batch, and the position of its last entry.
    pub(super) fn admit(&mut self, batch: Vec<Op>) -> (Vec<Op>, Option<u64>) {
        let mut next = self.pos.committed + 1;
        let mut last = None;
        let mut kept = Vec::with_capacity(batch.len());
        for op in batch {
            match op.log {
                None => kept.push(op),
                Some(n) if n == next => {
                    next += 1;
                    last = Some(n);
                    kept.push(op);
                }
                Some(n) if n < next => op.reply.fail("already applied"),
                Some(_) => op
                    .reply
                    .fail("the store is reading its log again after a failed write; send again"),
            }
        }
        (kept, last)
    }

    /// After the batch: committed up to `applied` (its last entry, if it had any), or
    /// failed (the reader reads again from the last committed entry).
    pub(crate) fn settled(&mut self, applied: Option<u64>, ok: bool) {
        if ok {
            if let Some(n) = applied {
                self.pos.committed = n;
                if self.pos.halted.is_some_and(|(at, _)| at <= n) {
                    self.pos.halted = None;
                    metrics::gauge!(crate::telemetry::names::LOG_HALTED).set(0.0);
                    tracing::info!(entry = n, "the routes are in force: applying the log again");
                }
            }
        } else {
            self.pos.rewinds += 1;
        }
        metrics::gauge!(crate::telemetry::names::LOG_APPLIED).set(self.pos.committed as f64);
        self.tx.send_replace(self.pos);
    }
}

impl Track {
    /// The last entry committed.
    pub(crate) fn committed(&self) -> u64 {
        self.pos.committed
    }

    /// The store was reopened at entry `committed` (it may have lost non-durable commits,
    /// D28): entries are admitted from the next one on.
    pub(crate) fn reset(&mut self, committed: u64) {
        self.pos.committed = committed;
        self.tx.send_replace(self.pos);
    }

    /// Whether the writer is stopped at a `Routes` entry (D24).
    pub(crate) fn halted(&self) -> bool {
        self.pos.halted.is_some()
    }

    /// The writer stops before entry `at`: it puts in force routes (`wanted`) this node does
    /// not have. Said once per entry.
    pub(crate) fn halt(
        &mut self,
        at: u64,
        wanted: crate::config::RoutesDigest,
        have: crate::config::RoutesDigest,
    ) {
        if self.pos.halted == Some((at, wanted)) {
            return;
        }
        tracing::error!(
            entry = at,
            wanted = %wanted,
            have = %have,
            "log entry {at} puts in force routes {wanted}, and this node has {have}: it stops applying the log (and answers nothing) until it is reloaded with the routes in force in the cluster; a node started from a routes directory reads it again every 2 s"
        );
        metrics::gauge!(crate::telemetry::names::LOG_HALTED).set(1.0);
        self.pos.halted = Some((at, wanted));
        self.tx.send_replace(self.pos);
    }
}

/// Requests published by this node, waiting for the writer: id → where the answer goes.
type Waiters = Arc<std::sync::Mutex<HashMap<String, Reply>>>;

fn take(waiters: &Waiters, id: &str) -> Option<Reply> {
    match waiters.lock() {
        Ok(mut w) => w.remove(id),
        Err(p) => p.into_inner().remove(id),
    }
}

fn put(waiters: &Waiters, id: String, reply: Reply) {
    match waiters.lock() {
        Ok(mut w) => w.insert(id, reply),
        Err(p) => p.into_inner().insert(id, reply),
    };
}

/// The log's stream, connected and made if absent.
pub(crate) struct Log {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    name: String,
    node: String,
    leases: super::lease::Leases,
    positions: super::trim::Positions,
}

/// What the rest of a node needs of the log: where its store stands, and the leases.
pub(crate) struct Cluster {
    client: async_nats::Client,
    stream: jetstream::stream::Stream,
    position: watch::Receiver<Position>,
    pub(crate) leases: super::lease::Leases,
    positions: super::trim::Positions,
}

impl Cluster {
    /// For readiness: whether the connection is up, the last entry applied, and where the
    /// writer stopped if it did (D24).
    pub(crate) fn state(&self) -> (bool, u64, Option<(u64, crate::config::RoutesDigest)>) {
        let up = matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        );
        let pos = *self.position.borrow();
        (up, pos.committed, pos.halted)
    }

    /// The entry the writer stopped at, and the routes it puts in force (D24).
    pub(crate) fn halted(&self) -> Option<(u64, crate::config::RoutesDigest)> {
        self.position.borrow().halted
    }

    /// Purges now the log's entries every known node has applied (D25; done every 30 s
    /// anyway). How many went.
    pub(crate) async fn trim(&self) -> Result<u64, StoreError> {
        let at = self.position.borrow().committed;
        self.positions.report(at).await?;
        super::trim::trim_once(&self.positions, &self.stream).await
    }

    /// Resolves once this node has applied the log up to its end as it stands now.
    pub(crate) async fn caught_up(&self) -> Result<(), StoreError> {
        let mut stream = self.stream.clone();
        let last = stream
            .info()
            .await
            .map_err(|e| StoreError::Log(format!("cannot read the stream: {e}")))?
            .state
            .last_sequence;
        self.position
            .clone()
            .wait_for(|p| p.committed >= last)
            .await
            .map(|_| ())
            .map_err(|_| StoreError::Closed)
    }
}

impl Log {
    /// Connects to the servers (TLS with the instance's material, else plain on loopback)
    /// and gets or makes the stream.
    pub(crate) async fn connect(
        cfg: &JetStreamStore,
        tls: Option<&crate::tls::TlsFiles>,
    ) -> Result<Log, StoreError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Log(format!("{what} ({}): {e}", cfg.servers.join(", ")))
        };
        let mut opts = async_nats::ConnectOptions::new()
            .name(format!("labroute {}", cfg.node))
            .connection_timeout(Duration::from_secs(5))
            // A server that stops answering (frozen, or cut off by the network) is left for
            // another after three unanswered pings: about 6 s, not the client's default
            // 2 minutes, during which every request on this node was answered AE.
            .ping_interval(PING);
        if cfg.servers.iter().any(|s| s.starts_with("tls://")) {
            let files = tls.ok_or_else(|| {
                StoreError::Log("tls:// servers need the instance's [tls] material".into())
            })?;
            let client = crate::tls::client_config(files).map_err(|e| fail("TLS", &e))?;
            opts = opts.require_tls(true).tls_client_config((*client).clone());
        }
        let client = opts
            .connect(cfg.servers.as_slice())
            .await
            .map_err(|e| fail("cannot connect to JetStream", &e))?;
        let js = jetstream::new(client.clone());
        let stream = ensure_stream(
            &js,
            jetstream::stream::Config {
                name: cfg.stream.clone(),
                subjects: vec![format!("{}.>", cfg.stream)],
                storage: jetstream::stream::StorageType::File,
                num_replicas: cfg.replicas,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| fail(&format!("cannot open the stream {}", cfg.stream), &e))?;
        let leases = super::lease::Leases::open(&js, &cfg.stream, cfg.replicas, &cfg.node).await?;
        let positions = super::trim::Positions::open(
            &js,
            &cfg.stream,
            cfg.replicas,
            &cfg.node,
            cfg.forget_node_after,
        )
        .await?;
        Ok(Log {
            client,
            js,
            stream,
            name: cfg.stream.clone(),
            node: cfg.node.clone(),
            leases,
            positions,
        })
    }

    /// Refuses a stream that cannot be this store's log: one that ends before what the
    /// store has applied (another stream, or one deleted and made again), or one whose
    /// first entry comes after entries the store has not applied (they are gone).
    /// The stream's last entry now: what a node applies before it accepts or delivers.
    pub(crate) async fn check(&mut self, committed: u64) -> Result<u64, StoreError> {
        let name = self.name.clone();
        let state = &self
            .stream
            .info()
            .await
            .map_err(|e| StoreError::Log(format!("cannot read the stream {name}: {e}")))?
            .state;
        if committed > state.last_sequence {
            return Err(StoreError::Log(format!(
                "this store has applied the log up to entry {committed}, but the stream {name} ends at entry {}: it is another stream, or it was deleted and made again. Point [store] at the stream this store came from, or start this node on an empty data directory",
                state.last_sequence
            )));
        }
        if state.first_sequence > committed + 1 {
            return Err(StoreError::Log(format!(
                "the stream {name} now begins at entry {}, but this store has applied it only up to entry {committed}: the entries between were purged once every node known then had applied them (D25). Start this node from a copy of another node's data directory (stop that node, copy its directory, start both)",
                state.first_sequence
            )));
        }
        // From now on this node holds back the entries it has not applied. A bucket just
        // made on a cluster takes a moment to take writes; the reporter tries again every
        // 5 s anyway.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Err(e) = self.positions.report(committed).await {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(error = %e, "cannot report this node's position yet");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(state.last_sequence)
    }

    /// Starts the publisher and the reader. `rx`: what the node's handles ask; `writer`:
    /// the writer's queue; `committed`: where the writer is.
    pub(super) fn run(
        self,
        rx: mpsc::Receiver<Op>,
        writer: mpsc::Sender<Op>,
        position: watch::Receiver<Position>,
        staged: Staged,
    ) -> Arc<Cluster> {
        let cluster = Arc::new(Cluster {
            client: self.client.clone(),
            stream: self.stream.clone(),
            position: position.clone(),
            leases: self.leases.clone(),
            positions: self.positions.clone(),
        });
        let waiters: Waiters = Arc::default();
        let published = Arc::new(AtomicU64::new(0));
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(super::trim::run(
            self.positions.clone(),
            self.stream.clone(),
            position.clone(),
            stop.clone(),
        ));
        let reader = Reader {
            stream: self.stream.clone(),
            writer: writer.clone(),
            waiters: waiters.clone(),
            position,
            published: published.clone(),
            stop,
        };
        tokio::spawn(reader.run());
        tokio::spawn(publish(self, rx, waiters, published, stop_tx, staged));
        cluster
    }

    fn subject(&self, request: &Request) -> String {
        let kind = match request {
            Request::Ingest(_) => "ingest".to_owned(),
            Request::Reject(_) => "reject".to_owned(),
            Request::Delivery { dest, .. } => format!("delivery.{dest}"),
            Request::Operator { .. } => "operator".to_owned(),
            Request::Audit(_) => "audit".to_owned(),
            Request::MailSent { .. } => "mail".to_owned(),
            Request::Reconfigure(_) | Request::Routes { .. } => "routes".to_owned(),
        };
        format!("{}.{kind}", self.name)
    }
}

/// Gets the stream, or makes it. Tried for up to 30 s: nodes starting together race to
/// make it, and a cluster electing its leaders (or a busy one making a replicated stream)
/// answers with errors or not at all meanwhile.
pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    config: jetstream::stream::Config,
) -> Result<jetstream::stream::Stream, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match js.get_or_create_stream(config.clone()).await {
            Ok(s) => return Ok(s),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.to_string()),
            Err(e) => {
                tracing::info!(stream = %config.name, error = %e, "the stream is not available yet; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Gets (or makes) the key-value bucket `bucket`, a key's value gone `max_age` after its
/// last write (the leases, the nodes' positions). Its stream is made as the key-value
/// convention has it (`KV_<bucket>`): `create_key_value` first asks for the account's
/// details, which the client cannot read from nats-server 2.9 (Debian's). A bucket made
/// with another `max_age` gets this one.
pub(crate) async fn bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    max_age: Duration,
) -> Result<jetstream::kv::Store, StoreError> {
    let config = jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: replicas,
        ..Default::default()
    };
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Log(format!("cannot {what} the bucket {bucket}: {e}"))
    };
    let mut made = ensure_stream(js, config.clone())
        .await
        .map_err(|e| fail("make", &e))?;
    let age = made
        .info()
        .await
        .map_err(|e| fail("read", &e))?
        .config
        .max_age;
    if age != max_age {
        js.update_stream(&config)
            .await
            .map_err(|e| fail("update", &e))?;
    }
    js.get_key_value(bucket).await.map_err(|e| fail("open", &e))
}

/// Publishes each request, in the order asked; its answer waits for the writer.
async fn publish(
    log: Log,
    mut rx: mpsc::Receiver<Op>,
    waiters: Waiters,
    published: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    staged: Staged,
) {
    let run = fastrand::u64(..);
    let mut n = 0u64;
    while let Some(op) = rx.recv().await {
        let request = match op.request {
            // A reload (D24): its routes wait on this node for the entry that puts them in
            // force on every node, at the same place in the log.
            Request::Reconfigure(cfg) => {
                let digest = cfg.routing_digest();
                staged.put(cfg);
                Request::Routes { digest }
            }
            other => other,
        };
        n += 1;
        let id = format!("{}-{run:016x}-{n}", log.node);
        let entry = Entry {
            id: id.clone(),
            at: crate::time::now_ms(),
            request,
        };
        // Made once: sending again (`acknowledged`) clones it without copying.
        let subject = async_nats::Subject::from(log.subject(&entry.request));
        let payload = match serde_json::to_vec(&entry) {
            Ok(p) => p,
            Err(e) => {
                op.reply.fail(&format!("cannot write the log entry: {e}"));
                continue;
            }
        };
        put(&waiters, id.clone(), op.reply);
        let payload = bytes::Bytes::from(payload);
        let sent = send(&log.js, &subject, &payload, &id).await;
        let waiters = waiters.clone();
        let published = published.clone();
        match sent {
            // The acknowledgement is awaited apart: the next publish goes out meanwhile.
            Ok(ack) => {
                let js = log.js.clone();
                tokio::spawn(async move {
                    match acknowledged(&js, ack, &subject, &payload, &id).await {
                        Ok(sequence) => {
                            published.fetch_max(sequence, Ordering::Relaxed);
                        }
                        Err(e) => unpublished(&waiters, &id, &e),
                    }
                });
            }
            Err(e) => unpublished(&waiters, &id, &e),
        }
    }
    let _ = stop.send(true);
}

/// Sends one log entry, its request id as `Nats-Msg-Id` (the stream stores an id once
/// within its window, so sending again is safe); the acknowledgement is awaited apart.
async fn send(
    js: &jetstream::Context,
    subject: &async_nats::Subject,
    payload: &bytes::Bytes,
    id: &str,
) -> Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError> {
    js.send_publish(
        subject.clone(),
        jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(id),
    )
    .await
}

/// Waits up to [`PUBLISH_TIMEOUT`] for the publish's acknowledgement; returns the entry's
/// sequence in the stream. "No responders" (the stream's subjects not yet known to this
/// node's server: a cluster just formed, or electing the stream's leader) means no server
/// took the entry, so it is sent again, with the same id, until the time is up (a clean
/// clone's cluster campaign failed at start on one such answer).
async fn acknowledged(
    js: &jetstream::Context,
    mut ack: jetstream::context::PublishAckFuture,
    subject: &async_nats::Subject,
    payload: &bytes::Bytes,
    id: &str,
) -> Result<u64, String> {
    let deadline = tokio::time::Instant::now() + PUBLISH_TIMEOUT;
    loop {
        let answer = tokio::time::timeout_at(deadline, ack.into_future()).await;
        match answer {
            Ok(Ok(ack)) => return Ok(ack.sequence),
            Ok(Err(e))
                if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound
                    && tokio::time::Instant::now() + NO_RESPONDERS_PAUSE < deadline =>
            {
                tokio::time::sleep(NO_RESPONDERS_PAUSE).await;
                ack = send(js, subject, payload, id)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => {
                return Err(format!(
                    "no acknowledgement in {} s",
                    PUBLISH_TIMEOUT.as_secs()
                ));
            }
        }
    }
}

/// A publish JetStream did not acknowledge: its requester gets an error (a sender gets a
/// negative acknowledgement and sends again).
fn unpublished(waiters: &Waiters, id: &str, e: &dyn std::fmt::Display) {
    metrics::counter!(crate::telemetry::names::STORE_ERRORS).increment(1);
    tracing::error!(error = %e, "JetStream did not acknowledge a log entry");
    if let Some(reply) = take(waiters, id) {
        reply.fail(&format!("JetStream did not acknowledge the log entry: {e}"));
    }
}

/// Reads the log from the writer's position and hands each entry to the writer.
struct Reader {
    stream: jetstream::stream::Stream,
    writer: mpsc::Sender<Op>,
    waiters: Waiters,
    position: watch::Receiver<Position>,
    /// The last entry this node published (what to apply before stopping).
    published: Arc<AtomicU64>,
    stop: watch::Receiver<bool>,
}

impl Reader {
    async fn run(mut self) {
        loop {
            let pos = *self.position.borrow_and_update();
            if *self.stop.borrow() && self.may_stop(&pos) {
                return;
            }
            match self.read_from(pos).await {
                Ok(Stop::Done) => return,
                Ok(Stop::Rewind) => {}
                Err(e) => {
                    metrics::counter!(crate::telemetry::names::STORE_ERRORS).increment(1);
                    tracing::error!(error = %e, "cannot read the JetStream log; reading again in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Reads from `pos.committed + 1` until the writer fails a batch (read again), the
    /// node stops, or the consumer fails.
    async fn read_from(&mut self, pos: Position) -> Result<Stop, StoreError> {
        let consumer = self
            .stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: pos.committed + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| StoreError::Log(format!("cannot read the log: {e}")))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| StoreError::Log(format!("cannot read the log: {e}")))?;
        let mut read_at = tokio::time::Instant::now();
        // The last entry read (handed to the writer, perhaps not applied yet).
        let mut last_read = pos.committed;
        let mut watchdog = tokio::time::interval(STALLED);
        loop {
            tokio::select! {
                _ = watchdog.tick() => {
                    let idle = read_at.elapsed();
                    // An entry this node published exists that this reader has not seen.
                    let waiting = self.published.load(Ordering::Relaxed) > last_read;
                    if (waiting && idle >= STALLED) || idle >= QUIET {
                        if waiting {
                            tracing::warn!("the JetStream log's reader is stalled; reading again");
                        }
                        return Ok(Stop::Rewind);
                    }
                }
                changed = self.position.changed() => {
                    if changed.is_err() {
                        return Ok(Stop::Done);
                    }
                    let now = *self.position.borrow();
                    if now.rewinds != pos.rewinds {
                        // Give a failing disk a moment before reading again.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        return Ok(Stop::Rewind);
                    }
                    if *self.stop.borrow() && self.may_stop(&now) {
                        return Ok(Stop::Done);
                    }
                }
                _ = self.stop.changed() => {
                    if *self.stop.borrow() {
                        let now = *self.position.borrow();
                        if self.may_stop(&now) {
                            return Ok(Stop::Done);
                        }
                    }
                }
                next = messages.next() => {
                    let Some(message) = next else {
                        return Err(StoreError::Log("the log's consumer ended".into()));
                    };
                    read_at = tokio::time::Instant::now();
                    let message = message
                        .map_err(|e| StoreError::Log(format!("cannot read the log: {e}")))?;
                    let info = message
                        .info()
                        .map_err(|e| StoreError::Log(format!("a log entry without its position: {e}")))?;
                    let seq = info.stream_sequence;
                    if seq > last_read + 1 {
                        // Purged (D25) while this node was forgotten: it cannot go on.
                        return Err(StoreError::Log(format!(
                            "log entries {} to {} were purged before this node applied them (it had not reported its position for [store] forget_node_after_hours); start it from a copy of another node's data directory",
                            last_read + 1,
                            seq - 1
                        )));
                    }
                    last_read = seq;
                    metrics::gauge!(crate::telemetry::names::LOG_PENDING).set(info.pending as f64);
                    // An entry this version cannot read stops the reader: skipping it
                    // would lose a change (an older node reading a newer one's entries).
                    let entry: Entry = serde_json::from_slice(&message.payload).map_err(|e| {
                        StoreError::Log(format!("log entry {seq} is unreadable: {e}"))
                    })?;
                    let reply = take(&self.waiters, &entry.id).unwrap_or(Reply::Nobody);
                    let op = Op {
                        request: entry.request,
                        reply,
                        at: Some(entry.at),
                        log: Some(seq),
                    };
                    // A writer stopped at a `Routes` entry (D24) takes nothing more: the
                    // node stopping then does not wait for it.
                    let stopped = stopped_while_halted(self.stop.clone(), self.position.clone());
                    tokio::select! {
                        sent = self.writer.send(op) => if sent.is_err() {
                            return Ok(Stop::Done);
                        },
                        _ = stopped => return Ok(Stop::Done),
                    }
                }
            }
        }
    }

    /// Whether the node stopping may stop reading: what it published is applied, or its
    /// writer is stopped at a `Routes` entry (D24) and will apply nothing more.
    fn may_stop(&self, pos: &Position) -> bool {
        pos.committed >= self.published.load(Ordering::Relaxed) || pos.halted.is_some()
    }
}

/// Resolves once the node is stopping while its writer is halted (D24).
async fn stopped_while_halted(
    mut stop: watch::Receiver<bool>,
    mut position: watch::Receiver<Position>,
) {
    let _ = stop.wait_for(|s| *s).await;
    let _ = position.wait_for(|p| p.halted.is_some()).await;
}

enum Stop {
    Done,
    Rewind,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn op(log: Option<u64>) -> (Op, oneshot::Receiver<Result<(), StoreError>>) {
        let (tx, rx) = oneshot::channel();
        let request = Request::Audit(crate::store::audit::AuditEvent {
            event: "test".into(),
            message: None,
            establishment: None,
            actor: None,
            detail: serde_json::Value::Null,
        });
        let op = Op {
            request,
            reply: Reply::Unit(tx),
            at: Some(1),
            log,
        };
        (op, rx)
    }

    #[test]
    fn entries_are_applied_once_each_in_the_logs_order_and_a_failure_reads_again() {
        let (mut track, position) = Track::new(5);
        let (applied, mut applied_rx) = op(Some(5));
        let (six, _) = op(Some(6));
        let (seven, _) = op(Some(7));
        let (after_gap, mut gap_rx) = op(Some(9));
        let (local, _) = op(None);
        let (kept, last) = track.admit(vec![applied, six, seven, after_gap, local]);
        let logs: Vec<Option<u64>> = kept.iter().map(|o| o.log).collect();
        assert_eq!(logs, vec![Some(6), Some(7), None]);
        assert_eq!(last, Some(7));
        // What is not applied is answered with an error, not dropped silently.
        assert!(matches!(applied_rx.try_recv(), Ok(Err(_))));
        assert!(matches!(gap_rx.try_recv(), Ok(Err(_))));

        track.settled(last, true);
        assert_eq!(
            *position.borrow(),
            Position {
                committed: 7,
                rewinds: 0,
                halted: None,
            }
        );
        // A failed batch: the position stays, the reader is told to read again.
        let (eight, _) = op(Some(8));
        let (kept, last) = track.admit(vec![eight]);
        assert_eq!((kept.len(), last), (1, Some(8)));
        track.settled(last, false);
        assert_eq!(
            *position.borrow(),
            Position {
                committed: 7,
                rewinds: 1,
                halted: None,
            }
        );
        let (eight, _) = op(Some(8));
        assert_eq!(track.admit(vec![eight]).1, Some(8), "8 is next again");
    }

    /// A nats-server for one test (JetStream on, loopback), stopped on drop; `None` when
    /// it is not installed (CI installs it, and says so when it is missing).
    struct Server {
        child: std::process::Child,
        port: u16,
        _dir: tempfile::TempDir,
    }

    impl Server {
        fn start() -> Option<Server> {
            let found = std::process::Command::new("nats-server")
                .arg("--version")
                .output()
                .is_ok();
            assert!(
                found || std::env::var_os("CI").is_none(),
                "nats-server missing in CI (.ci/run installs the Debian package)"
            );
            if !found {
                eprintln!("SKIPPED: nats-server is not installed (apt install nats-server)");
                return None;
            }
            let dir = tempfile::tempdir().ok()?;
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .ok()?
                .port();
            let child = std::process::Command::new("nats-server")
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(dir.path())
                .stderr(std::process::Stdio::null())
                .spawn()
                .ok()?;
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "nats-server did not listen"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(Server {
                child,
                port,
                _dir: dir,
            })
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// "No responders" (no stream takes the subject yet, as on a cluster that has just made
    /// it) is sent again until the stream takes it; an entry no stream ever takes is
    /// answered with an error once the time is up. A clean clone's cluster campaign failed
    /// at start on one such answer, when each publish was tried once.
    #[tokio::test]
    async fn a_publish_no_server_took_is_sent_again_until_the_stream_takes_it() {
        let Some(server) = Server::start() else {
            return;
        };
        let client = async_nats::connect(format!("127.0.0.1:{}", server.port))
            .await
            .unwrap();
        let js = jetstream::new(client);
        let payload = bytes::Bytes::from_static(b"entry");
        let late = async_nats::Subject::from("late.routes");
        let ack = send(&js, &late, &payload, "n-1").await.unwrap();
        let maker = js.clone();
        let made = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            maker
                .create_stream(jetstream::stream::Config {
                    name: "LATE".into(),
                    subjects: vec!["late.>".into()],
                    ..Default::default()
                })
                .await
                .map(|_| ())
        });
        let sequence = acknowledged(&js, ack, &late, &payload, "n-1").await;
        made.await.unwrap().unwrap();
        assert_eq!(sequence, Ok(1), "taken once, as the stream's first entry");

        let nowhere = async_nats::Subject::from("nowhere.x");
        let ack = send(&js, &nowhere, &payload, "n-2").await.unwrap();
        let refused = acknowledged(&js, ack, &nowhere, &payload, "n-2").await;
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("no stream")),
            "{refused:?}"
        );
    }
}
