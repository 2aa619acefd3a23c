//! MLLP destination worker: one per destination, FIFO (so per patient too), waits for the
//! peer's ACK, retries with exponential backoff and jitter, dead-letters on AR or when the
//! attempts or age run out. Its state is in the store, so a restart resumes where it stopped.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::{Config, Destination};
use crate::hl7::ack::{AckOutcome, read_peer_ack};
use crate::hl7::mllp::{Decoded, Decoder, frame};
use crate::policy::{self, Permit};
use crate::stats::{self, STATS};
use crate::store::writer::DeliveryUpdate;
use crate::store::{OutboxEntry, StoreHandle};
use crate::time::now_ms;

/// Largest ACK frame accepted from a peer.
const MAX_ACK_FRAME: usize = 1024 * 1024;

/// Why an attempt did not deliver.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("connect to {0} failed: {1}")]
    Connect(String, String),
    #[error("connect to {0} timed out")]
    ConnectTimeout(String),
    #[error("send failed: {0}")]
    Send(String),
    #[error("no ACK within {0:?}")]
    AckTimeout(Duration),
    #[error("peer closed the connection before its ACK")]
    ClosedBeforeAck,
    #[error("peer answered with something that is not an HL7 ACK")]
    BadAck,
    #[error("peer ACK frame exceeds {MAX_ACK_FRAME} bytes")]
    AckTooLarge,
    #[error("peer ACK answers another message (MSA-2 is not this message's MSH-10)")]
    AckMismatch,
    #[error("the permit is for another destination")]
    WrongPermit,
}

/// Peer's answer to a delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAnswer {
    Accepted,
    /// AE/CE: try again later.
    Error(String),
    /// AR/CR: never accepted.
    Rejected(String),
    /// Not to be sent, by rule (the DMP gate): settled as withheld with this reason.
    Withheld(&'static str),
    /// Accepted by the DMP, with the changes to its document register.
    Published(Vec<crate::store::DmpChange>),
    /// Mailed by MSSanté (SMTP 250) to some candidates; what became of each.
    Mailed(Vec<crate::store::writer::MailOutcome>),
    /// Mailed to nobody, by rule: the reason, and what became of each candidate.
    MailWithheld(&'static str, Vec<crate::store::writer::MailOutcome>),
}

/// How a destination is reached: MLLP, the DMP's HTTPS, or MSSanté's SMTP.
pub enum Transport {
    Mllp(Box<Connection>),
    Dmp(Box<super::dmp::DmpSink>),
    Mssante(Box<super::mssante::MssanteSink>),
}

impl Transport {
    async fn send(&mut self, permit: &Permit, raw: &[u8]) -> Result<PeerAnswer, AttemptError> {
        match self {
            Transport::Mllp(c) => c.send(permit, raw).await,
            Transport::Dmp(d) => Ok(d.send(permit, raw).await),
            Transport::Mssante(m) => Ok(m.send(permit, raw).await),
        }
    }
}

/// An open connection: plain TCP (loopback only) or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }
    /// True when the peer closed the connection or left bytes we did not ask for (a peer
    /// that closes after each message; a stray reply): either way, start afresh. Peeks, so
    /// nothing is consumed.
    fn stale(&self) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut b = [0u8; 1];
        let mut rb = tokio::io::ReadBuf::new(&mut b);
        self.tcp().poll_peek(&mut cx, &mut rb).is_ready()
    }
}

/// A connection to one destination, reopened when needed.
pub struct Connection {
    dest: Destination,
    tls: Option<std::sync::Arc<crate::tls::TlsState>>,
    /// The system the peer's certificate must name (`destination.system`).
    expected: Option<crate::config::System>,
    stream: Option<Stream>,
}

impl Connection {
    /// `tls`: the connector for a TLS destination (the instance's client certificate).
    /// `expected`: the system the peer's certificate must name.
    pub fn new(
        dest: Destination,
        tls: Option<std::sync::Arc<crate::tls::TlsState>>,
        expected: Option<crate::config::System>,
    ) -> Self {
        Connection {
            dest,
            tls,
            expected,
            stream: None,
        }
    }

    async fn connect(&self) -> Result<Stream, AttemptError> {
        let addr = self.dest.address.clone();
        let timeout = self.dest.connect_timeout;
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(&addr)).await {
            Err(_) => return Err(AttemptError::ConnectTimeout(addr)),
            Ok(Err(e)) => return Err(AttemptError::Connect(addr, e.to_string())),
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        if !self.dest.tls {
            return Ok(Stream::Plain(tcp));
        }
        let Some(state) = &self.tls else {
            return Err(AttemptError::Connect(addr, "TLS is not configured".into()));
        };
        let name = self.dest.server_name.clone().unwrap_or_default();
        let server_name = rustls::pki_types::ServerName::try_from(name)
            .map_err(|e| AttemptError::Connect(addr.clone(), e.to_string()))?;
        let connector = state.connector();
        match tokio::time::timeout(timeout, connector.connect(server_name, tcp)).await {
            Err(_) => Err(AttemptError::ConnectTimeout(addr)),
            Ok(Err(e)) => Err(AttemptError::Connect(addr, format!("TLS: {e}"))),
            Ok(Ok(s)) => {
                if let Some(sys) = &self.expected {
                    let id = s
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(crate::tls::identity);
                    if !id.as_ref().is_some_and(|i| sys.matches(i)) {
                        crate::stats::add(&crate::stats::STATS.destination_identity_refused, 1);
                        let label = id.map(|i| i.label()).unwrap_or_else(|| "unreadable".into());
                        tracing::warn!(destination = %self.dest.name, peer = %label, expected = %sys.name, "destination's certificate names another system; not sending");
                        return Err(AttemptError::Connect(
                            addr,
                            format!(
                                "TLS: the peer's certificate ({label}) does not name system {:?}",
                                sys.name
                            ),
                        ));
                    }
                }
                Ok(Stream::Tls(Box::new(s)))
            }
        }
    }

    /// Sends one message, under its permit, and waits for the peer's ACK, which must answer
    /// it (MSA-2 equal to its MSH-10). On any error the connection is dropped: the next
    /// attempt starts afresh.
    pub async fn send(
        &mut self,
        permit: &Permit,
        message: &[u8],
    ) -> Result<PeerAnswer, AttemptError> {
        if permit.destination() != &self.dest.name {
            return Err(AttemptError::WrongPermit);
        }
        let r = self.try_send(permit, message).await;
        if r.is_err() || !self.dest.keep_connection_open {
            self.stream = None;
        }
        r
    }

    async fn try_send(
        &mut self,
        permit: &Permit,
        message: &[u8],
    ) -> Result<PeerAnswer, AttemptError> {
        // A peer that closes after each message (some do) must not make us write into a dead
        // socket and count that as a failed delivery: check first, reconnect if closed.
        if self.stream.as_ref().is_some_and(Stream::stale) {
            self.stream = None;
        }
        if self.stream.is_none() {
            self.stream = Some(self.connect().await?);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(AttemptError::ClosedBeforeAck);
        };
        stream
            .write_all(&frame(message))
            .await
            .map_err(|e| AttemptError::Send(e.to_string()))?;
        if !permit.expects_answer() {
            // An (application) ACK is not acknowledged (HL7 v2 chapter 2). Some peers reply
            // anyway: closing here keeps such a reply from being read as the next message's.
            self.stream = None;
            return Ok(PeerAnswer::Accepted);
        }
        let mut dec = Decoder::new(MAX_ACK_FRAME);
        let mut buf = vec![0u8; 8192];
        let deadline = tokio::time::Instant::now() + self.dest.ack_timeout;
        loop {
            let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Err(_) => return Err(AttemptError::AckTimeout(self.dest.ack_timeout)),
                Ok(Err(_)) | Ok(Ok(0)) => return Err(AttemptError::ClosedBeforeAck),
                Ok(Ok(n)) => n,
            };
            if let Some(unit) = dec.feed(&buf[..n]).into_iter().next() {
                let Decoded::Frame(ack) = unit else {
                    return Err(AttemptError::AckTooLarge);
                };
                let (code, msa2) = read_peer_ack(&ack).ok_or(AttemptError::BadAck)?;
                if permit.control_id() != msa2.trim() {
                    return Err(AttemptError::AckMismatch);
                }
                return Ok(match code.outcome() {
                    AckOutcome::Accepted => PeerAnswer::Accepted,
                    AckOutcome::Error => {
                        PeerAnswer::Error(format!("peer answered {}", code.as_str()))
                    }
                    AckOutcome::Rejected => {
                        PeerAnswer::Rejected(format!("peer answered {}", code.as_str()))
                    }
                });
            }
        }
    }
}

/// Backoff before attempt `attempts + 1`: initial × 2^(attempts-1), capped, with jitter in
/// [50 %, 100 %] so that many queues do not retry in step.
pub fn backoff(dest: &Destination, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let base = dest
        .backoff_initial
        .saturating_mul(1u32 << exp)
        .min(dest.backoff_max);
    let ms = base.as_millis() as u64;
    Duration::from_millis(ms / 2 + fastrand::u64(0..=ms / 2))
}

/// Delivered marks not yet known durable. The worker sends the next message while they
/// commit (with other writes, in one group commit), instead of waiting one sync per message.
/// A mark lost in a crash means that message is sent again after restart: at-least-once, and
/// the receiver knows the repeat by its MSH-10.
struct PendingMarks {
    dest: String,
    marks: std::collections::VecDeque<(u64, PendingMark)>,
}

type PendingMark = tokio::sync::oneshot::Receiver<Result<(), crate::store::StoreError>>;

/// Marks in flight per destination before the worker waits for the oldest.
const MAX_PENDING_MARKS: usize = 256;

impl PendingMarks {
    async fn settle_one(&mut self) {
        if let Some((seq, rx)) = self.marks.pop_front() {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(destination = %self.dest, seq, error = %e, "delivered mark not recorded; the message will be sent again after a restart")
                }
                Err(_) => {
                    tracing::error!(destination = %self.dest, seq, "store closed before the delivered mark was recorded; the message will be sent again after a restart")
                }
            }
        }
    }
    async fn settle_all(&mut self) {
        while !self.marks.is_empty() {
            self.settle_one().await;
        }
    }
}

/// Runs the worker of one destination until shutdown.
pub async fn run_destination(
    dest: Destination,
    cfg: std::sync::Arc<Config>,
    store: StoreHandle,
    tls: Option<std::sync::Arc<crate::tls::TlsState>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = dest.name.as_str().to_owned();
    let notify = store.notifier(&name);
    let mut conn = match dest.kind {
        crate::config::DestinationKind::Mllp => {
            let expected = dest.system.as_ref().and_then(|n| cfg.system(n)).cloned();
            Transport::Mllp(Box::new(Connection::new(dest.clone(), tls, expected)))
        }
        crate::config::DestinationKind::Dmp { .. } => Transport::Dmp(Box::new(
            super::dmp::DmpSink::new(dest.clone(), cfg.clone(), store.clone()),
        )),
        crate::config::DestinationKind::Mssante { .. } => Transport::Mssante(Box::new(
            super::mssante::MssanteSink::new(dest.clone(), cfg.clone(), store.clone()),
        )),
    };
    let mut cursor: Option<u64> = None;
    let mut pending = PendingMarks {
        dest: name.clone(),
        marks: Default::default(),
    };
    loop {
        if *shutdown.borrow() {
            pending.settle_all().await;
            return;
        }
        let batch = match store.store().outbox_after(&name, cursor, 64) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(destination = %name, error = %e, "cannot read the outbox; retrying");
                if sleep_or_shutdown(Duration::from_secs(1), &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        if batch.is_empty() {
            pending.settle_all().await;
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.changed() => return,
            }
            continue;
        }
        for (n, entry) in batch {
            if !deliver_one(
                &dest,
                &cfg,
                &store,
                &mut conn,
                n,
                entry,
                &mut pending,
                &mut shutdown,
            )
            .await
            {
                pending.settle_all().await;
                return;
            }
            cursor = Some(n);
        }
    }
}

/// Delivers one entry until it is delivered or dead. Returns false on shutdown.
#[allow(clippy::too_many_arguments)]
async fn deliver_one(
    dest: &Destination,
    cfg: &Config,
    store: &StoreHandle,
    conn: &mut Transport,
    n: u64,
    mut entry: OutboxEntry,
    pending: &mut PendingMarks,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let name = dest.name.as_str();
    loop {
        let now = now_ms();
        if entry.next_attempt_ms > now
            && sleep_or_shutdown(Duration::from_millis(entry.next_attempt_ms - now), shutdown).await
        {
            return false;
        }
        let update = if now_ms().saturating_sub(entry.enqueued_at_ms)
            > dest.max_age.as_millis() as u64
        {
            DeliveryUpdate::Dead {
                attempts: entry.attempts,
                reason: format!("not delivered within max_age ({:?})", dest.max_age),
            }
        } else {
            match (
                store.store().raw(entry.seq),
                permit_for(store, &dest.name, cfg, entry.seq),
            ) {
                (_, Err(denied)) => {
                    stats::add(&STATS.refused_by_policy, 1);
                    metrics::counter!(crate::telemetry::names::POLICY_REFUSALS, "destination" => name.to_owned())
                            .increment(1);
                    DeliveryUpdate::Dead {
                        attempts: entry.attempts,
                        reason: format!("refused by the delivery policy: {denied}"),
                    }
                }
                (Ok(Some(raw)), Ok(permit)) => {
                    let attempts = entry.attempts + 1;
                    match conn.send(&permit, &raw).await {
                        Ok(PeerAnswer::Accepted) => DeliveryUpdate::Delivered {
                            dmp: Vec::new(),
                            mail: Vec::new(),
                        },
                        Ok(PeerAnswer::Published(dmp)) => DeliveryUpdate::Delivered {
                            dmp,
                            mail: Vec::new(),
                        },
                        Ok(PeerAnswer::Mailed(mail)) => {
                            super::mssante::count(&mail);
                            DeliveryUpdate::Delivered {
                                dmp: Vec::new(),
                                mail,
                            }
                        }
                        Ok(PeerAnswer::MailWithheld(reason, mail)) => {
                            super::mssante::count(&mail);
                            metrics::counter!(
                                crate::telemetry::names::MSSANTE_WITHHELD,
                                "reason" => reason
                            )
                            .increment(1);
                            DeliveryUpdate::Withheld {
                                reason: reason.to_owned(),
                                mail,
                            }
                        }
                        Ok(PeerAnswer::Rejected(r)) => DeliveryUpdate::Dead {
                            attempts,
                            reason: r,
                        },
                        Ok(PeerAnswer::Error(e)) => retry_or_dead(dest, attempts, e),
                        Ok(PeerAnswer::Withheld(reason)) => {
                            metrics::counter!(
                                crate::telemetry::names::DMP_WITHHELD,
                                "reason" => reason
                            )
                            .increment(1);
                            DeliveryUpdate::Withheld {
                                reason: reason.to_owned(),
                                mail: Vec::new(),
                            }
                        }
                        Err(e) => retry_or_dead(dest, attempts, e.to_string()),
                    }
                }
                (Ok(None), _) => DeliveryUpdate::Dead {
                    attempts: entry.attempts,
                    reason: "message bytes missing from the store".into(),
                },
                (Err(e), _) => retry_or_dead(dest, entry.attempts + 1, e.to_string()),
            }
        };
        // Persist the outcome (a restart resumes from the store): a delivered mark commits
        // while the next message goes out; any other outcome is durable before going on.
        let queued = matches!(update, DeliveryUpdate::Delivered { .. });
        if !queued {
            pending.settle_all().await;
        }
        loop {
            let r = match store
                .delivery_queued(name, n, entry.seq, update.clone())
                .await
            {
                Ok(rx) if queued => {
                    pending.marks.push_back((entry.seq, rx));
                    if pending.marks.len() > MAX_PENDING_MARKS {
                        pending.settle_one().await;
                    }
                    Ok(())
                }
                Ok(rx) => rx.await.unwrap_or(Err(crate::store::StoreError::Closed)),
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(destination = %name, error = %e, "cannot record a delivery outcome; retrying");
                    if sleep_or_shutdown(Duration::from_secs(1), shutdown).await {
                        return false;
                    }
                }
            }
        }
        let (counter, outcome) = match &update {
            DeliveryUpdate::Delivered { .. } => (&STATS.deliveries, "delivered"),
            DeliveryUpdate::Retry { .. } => (&STATS.delivery_retries, "retry"),
            DeliveryUpdate::Dead { .. } => (&STATS.dead_letters, "dead"),
            DeliveryUpdate::Withheld { .. } => (&STATS.withheld, "withheld"),
        };
        stats::add(counter, 1);
        use crate::telemetry::names;
        metrics::counter!(names::DELIVERY_ATTEMPTS, "destination" => name.to_owned(), "outcome" => outcome)
            .increment(1);
        if matches!(update, DeliveryUpdate::Delivered { .. }) {
            let waited = now_ms().saturating_sub(entry.enqueued_at_ms);
            metrics::histogram!(names::DELIVERY_LATENCY, "destination" => name.to_owned())
                .record(waited as f64 / 1000.0);
        }
        match update {
            DeliveryUpdate::Delivered { .. } => {
                tracing::debug!(destination = %name, seq = entry.seq, "delivered");
                return true;
            }
            DeliveryUpdate::Dead { reason, .. } => {
                tracing::warn!(destination = %name, seq = entry.seq, reason = %reason, "dead letter");
                return true;
            }
            DeliveryUpdate::Withheld { reason, .. } => {
                tracing::info!(destination = %name, seq = entry.seq, reason = %reason, "withheld by rule; not sent");
                return true;
            }
            DeliveryUpdate::Retry {
                attempts,
                next_attempt_ms,
                error,
            } => {
                tracing::warn!(destination = %name, seq = entry.seq, attempts, error = %error, "delivery failed; will retry");
                entry.attempts = attempts;
                entry.next_attempt_ms = next_attempt_ms;
            }
        }
    }
}

/// The permit for one outbox entry, from its stored record (and, for an application ACK,
/// the record of the message it answers).
fn permit_for(
    store: &StoreHandle,
    dest: &crate::model::DestinationName,
    cfg: &Config,
    seq: u64,
) -> Result<Permit, String> {
    let rec = store
        .store()
        .record(seq)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("message {seq} has no record"))?;
    let answered = match rec.answers {
        Some(a) => store.store().record(a).map_err(|e| e.to_string())?,
        None => None,
    };
    policy::permit(&rec, dest, cfg, answered.as_ref()).map_err(|d| d.to_string())
}

fn retry_or_dead(dest: &Destination, attempts: u32, error: String) -> DeliveryUpdate {
    if attempts >= dest.max_attempts {
        DeliveryUpdate::Dead {
            attempts,
            reason: format!("gave up after {attempts} attempts: {error}"),
        }
    } else {
        DeliveryUpdate::Retry {
            attempts,
            next_attempt_ms: now_ms() + backoff(dest, attempts).as_millis() as u64,
            error,
        }
    }
}

/// Sleeps; true if shutdown was asked meanwhile.
async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}
