//! MLLP listener: accepts connections (bounded by a semaphore), reads frames, answers each in
//! order once its outcome is durable.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::accept::{TlsListener, next_connection};
use crate::hl7::mllp::{Decoded, Decoder, frame};
use crate::ingest::{Handled, Origin, count_and_log, handle_frame, oversized_ack};
use crate::stats::{self, STATS};
use crate::store::StoreHandle;

/// Limits that apply to every connection.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_frame: usize,
    pub idle_timeout: Duration,
    /// A frame begun must end within this long.
    pub frame_timeout: Duration,
}

/// Who may open one more connection, over every MLLP listener of an instance: at most
/// `max_connections` in all, and `max_connections_per_peer` from one address.
#[derive(Debug)]
pub struct Admission {
    /// One permit per connection (the server waits for all of them back to drain).
    total: Arc<Semaphore>,
    per_peer: usize,
    held: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// A connection's places in [`Admission`], given back on drop.
#[derive(Debug)]
pub struct Admitted {
    _permit: tokio::sync::OwnedSemaphorePermit,
    admission: Arc<Admission>,
    ip: std::net::IpAddr,
}

/// Why a connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` reached.
    Total,
    /// The address holds `max_connections_per_peer`.
    PerPeer,
}

impl Admission {
    pub fn new(total: Arc<Semaphore>, per_peer: usize) -> Admission {
        Admission {
            total,
            per_peer,
            held: Default::default(),
        }
    }

    fn held(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, usize>> {
        match self.held.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Places for one more connection from `ip`, or why not.
    pub fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Result<Admitted, Refused> {
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Total)?;
        let mut held = self.held();
        let n = held.entry(ip).or_insert(0);
        if *n >= self.per_peer {
            return Err(Refused::PerPeer);
        }
        *n += 1;
        Ok(Admitted {
            _permit: permit,
            admission: self.clone(),
            ip,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut held = self.admission.held();
        if let Some(n) = held.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// Runs a listener until `shutdown` turns true. With `tls`, every connection must complete
/// a TLS handshake with a client certificate issued by the configured CA.
pub async fn run_listener(
    listener: TcpListener,
    name: String,
    limits: ConnLimits,
    admission: Arc<Admission>,
    store: StoreHandle,
    tls: Option<TlsListener>,
    mut shutdown: watch::Receiver<bool>,
) {
    while let Some((stream, peer)) = next_connection(&listener, &name, &mut shutdown).await {
        let admitted = match admission.admit(peer.ip()) {
            Ok(a) => a,
            Err(Refused::Total) => {
                stats::add(&STATS.connections_refused, 1);
                tracing::warn!(listener = %name, peer = %peer, "connection limit reached; connection refused");
                continue;
            }
            Err(Refused::PerPeer) => {
                stats::add(&STATS.connections_refused_per_peer, 1);
                tracing::warn!(listener = %name, peer = %peer, limit = admission.per_peer, "per-peer connection limit reached; connection refused");
                continue;
            }
        };
        stats::add(&STATS.connections_accepted, 1);
        let mut origin = Origin {
            listener: name.clone(),
            peer: peer.to_string(),
            identity: None,
        };
        let store = store.clone();
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            match tls {
                None => serve_connection(stream, origin, limits, store, shutdown).await,
                Some(tls) => {
                    let Some((tls_stream, identity)) = tls
                        .handshake(stream, &store, &origin.listener, &origin.peer)
                        .await
                    else {
                        return;
                    };
                    origin.identity = Some(identity);
                    tracing::debug!(listener = %origin.listener, peer = %origin.peer, identity = %origin.identity.as_ref().map(|i| i.label()).unwrap_or_default(), "TLS peer");
                    serve_connection(tls_stream, origin, limits, store, shutdown).await
                }
            }
            drop(admitted);
        });
    }
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    origin: Origin,
    limits: ConnLimits,
    store: StoreHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut decoder = Decoder::new(limits.max_frame);
    let mut buf = vec![0u8; 64 * 1024];
    let mut answered = false;
    tracing::debug!(listener = %origin.listener, peer = %origin.peer, "connection opened");
    // When the frame being received began (its deadline is `frame_timeout` later).
    let mut frame_began: Option<tokio::time::Instant> = None;
    loop {
        let wait = match frame_began {
            Some(t) => (t + limits.frame_timeout)
                .saturating_duration_since(tokio::time::Instant::now())
                .min(limits.idle_timeout),
            None => limits.idle_timeout,
        };
        let read = tokio::select! {
            r = tokio::time::timeout(wait, stream.read(&mut buf)) => r,
            _ = shutdown.changed() => break,
        };
        let n = match read {
            Err(_) if frame_began.is_some_and(|t| t.elapsed() >= limits.frame_timeout) => {
                stats::add(&STATS.frames_timed_out, 1);
                tracing::warn!(listener = %origin.listener, peer = %origin.peer, secs = limits.frame_timeout.as_secs(), "frame not ended in time; closing (never acknowledged)");
                return;
            }
            Err(_) => {
                stats::add(&STATS.connections_idle_closed, 1);
                tracing::debug!(listener = %origin.listener, peer = %origin.peer, "idle timeout; closing");
                break;
            }
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::debug!(listener = %origin.listener, error = %e, "read failed; closing");
                break;
            }
        };
        let units = decoder.feed(&buf[..n]);
        frame_began = match (decoder.is_idle(), frame_began) {
            (true, _) => None,
            // Still inside the frame begun earlier, or (with frames completed by this read)
            // a new one: the clock restarts only when this read ended a frame.
            (false, Some(t)) if units.is_empty() => Some(t),
            (false, _) => Some(tokio::time::Instant::now()),
        };
        let skipped = decoder.take_skipped();
        if skipped > 0 {
            stats::add(&STATS.bytes_skipped, skipped);
            tracing::warn!(listener = %origin.listener, peer = %origin.peer, bytes = skipped, "bytes outside an MLLP frame skipped");
        }
        for unit in units {
            let received = std::time::Instant::now();
            let (ack, handled) = match unit {
                Decoded::Frame(f) => handle_frame(f, &origin, &store).await,
                Decoded::Oversized { head, len } => {
                    tracing::warn!(listener = %origin.listener, peer = %origin.peer, bytes = len, limit = limits.max_frame, "oversized frame refused");
                    crate::ingest::count(&origin.listener, "other".into(), &Handled::Oversized);
                    (
                        Some(oversized_ack(&head, len, limits.max_frame)),
                        Handled::Oversized,
                    )
                }
            };
            count_and_log(&origin, &handled);
            if let Some(ack) = ack {
                if let Err(e) = stream.write_all(&frame(&ack)).await {
                    tracing::debug!(listener = %origin.listener, error = %e, "cannot write ACK; closing");
                    return;
                }
                answered = true;
                metrics::histogram!(crate::telemetry::names::ACK_LATENCY, "listener" => origin.listener.clone())
                    .record(received.elapsed().as_secs_f64());
            }
        }
        // TLS buffers what `write_all` accepted: push the ACKs out before reading again.
        if answered {
            answered = false;
            if let Err(e) = stream.flush().await {
                tracing::debug!(listener = %origin.listener, error = %e, "cannot write ACK; closing");
                return;
            }
        }
    }
    if !decoder.is_idle() {
        stats::add(&STATS.frames_truncated, 1);
        tracing::warn!(listener = %origin.listener, peer = %origin.peer, "connection closed inside a frame; partial frame dropped (never acknowledged)");
    }
}
