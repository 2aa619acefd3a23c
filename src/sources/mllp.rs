//! MLLP listener: accepts connections (bounded by a semaphore), reads frames, answers each in
//! order once its outcome is durable.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::hl7::mllp::{Decoded, Decoder, frame};
use crate::ingest::{Handled, Origin, handle_frame, oversized_ack};
use crate::stats::{self, STATS};
use crate::store::StoreHandle;

/// Limits that apply to every connection.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_frame: usize,
    pub idle_timeout: Duration,
}

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a TLS listener needs: the instance's TLS state and its refusal limiter.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub state: Arc<crate::tls::TlsState>,
    pub refusals: Arc<RefusalLimiter>,
}

/// Runs a listener until `shutdown` turns true. With `tls`, every connection must complete
/// a TLS handshake with a client certificate issued by the configured CA.
pub async fn run_listener(
    listener: TcpListener,
    name: String,
    limits: ConnLimits,
    slots: Arc<Semaphore>,
    store: StoreHandle,
    tls: Option<TlsListener>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(listener = %name, error = %e, "accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            stats::add(&STATS.connections_refused, 1);
            tracing::warn!(listener = %name, peer = %peer, "connection limit reached; connection refused");
            drop(stream);
            continue;
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
                Some(TlsListener { state, refusals }) => {
                    let acceptor = state.acceptor();
                    let tls_stream = match tokio::time::timeout(
                        HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            refused_handshake(
                                &store,
                                &refusals,
                                &origin.listener,
                                &origin.peer,
                                e.to_string(),
                            )
                            .await;
                            return;
                        }
                        Err(_) => {
                            refused_handshake(
                                &store,
                                &refusals,
                                &origin.listener,
                                &origin.peer,
                                "timed out".into(),
                            )
                            .await;
                            return;
                        }
                    };
                    origin.identity = tls_stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(crate::tls::identity);
                    // Verified but unreadable (x509-parser refused what webpki accepted):
                    // without an identity the sender checks could not run, so no session.
                    if origin.identity.is_none() {
                        refused_handshake(
                            &store,
                            &refusals,
                            &origin.listener,
                            &origin.peer,
                            "client certificate verified but unreadable: no identity".into(),
                        )
                        .await;
                        return;
                    }
                    tracing::debug!(listener = %origin.listener, peer = %origin.peer, identity = %origin.identity.as_ref().map(|i| i.label()).unwrap_or_default(), "TLS peer");
                    serve_connection(tls_stream, origin, limits, store, shutdown).await
                }
            }
            drop(permit);
        });
    }
}

/// How often one kind of refused handshake (same listener, peer address and error) is
/// journalled and logged; the ones in between are counted and reported with the next entry.
pub const REFUSAL_JOURNAL_INTERVAL: Duration = Duration::from_secs(60);
/// Kinds tracked at once; beyond, the oldest window is forgotten (journalled again).
const REFUSAL_KINDS: usize = 4096;

/// (listener, peer IP, error).
type RefusalKind = (String, String, String);

/// Keeps a peer that fails its handshake in a loop (a scanner, a client with a broken
/// certificate) from writing, and syncing, one journal entry per attempt: one entry per kind
/// and interval, with the number suppressed since the previous one. Every attempt is
/// counted in `tls_handshakes_failed`. One per instance.
#[derive(Debug, Default)]
pub struct RefusalLimiter {
    /// (listener, peer IP, error) → (start of the window, refusals suppressed in it).
    seen: std::sync::Mutex<std::collections::HashMap<RefusalKind, (std::time::Instant, u64)>>,
}

impl RefusalLimiter {
    /// `Some(suppressed since the last entry)` when this refusal is to be journalled.
    pub fn admit(&self, listener: &str, peer_ip: &str, error: &str) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut seen = match self.seen.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let key = (listener.to_owned(), peer_ip.to_owned(), error.to_owned());
        match seen.get_mut(&key) {
            Some((start, suppressed)) if now.duration_since(*start) < REFUSAL_JOURNAL_INTERVAL => {
                *suppressed += 1;
                None
            }
            Some((start, suppressed)) => {
                let n = *suppressed;
                *start = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                if seen.len() >= REFUSAL_KINDS {
                    seen.retain(|_, (start, _)| {
                        now.duration_since(*start) < REFUSAL_JOURNAL_INTERVAL
                    });
                    if seen.len() >= REFUSAL_KINDS {
                        seen.clear();
                    }
                }
                seen.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// A TLS handshake refused (no or bad certificate, old version, plain TCP): counted, logged
/// and audited (no message exists to store), the log and journal at most once per kind and
/// interval ([`RefusalLimiter`]). Also used by the admin endpoint.
pub(crate) async fn refused_handshake(
    store: &StoreHandle,
    limiter: &RefusalLimiter,
    listener: &str,
    peer: &str,
    error: String,
) {
    stats::add(&STATS.tls_handshakes_failed, 1);
    let ip = peer
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| peer.to_owned());
    let Some(suppressed) = limiter.admit(listener, &ip, &error) else {
        return;
    };
    tracing::warn!(%listener, %peer, error = %error, suppressed, "TLS handshake refused");
    let event = crate::store::audit::AuditEvent {
        event: "tls_refused",
        message: None,
        establishment: None,
        actor: Some(peer.to_owned()),
        detail: serde_json::json!({
            "listener": listener,
            "error": error,
            "suppressed_since_last": suppressed,
        }),
    };
    if let Err(e) = store.audit(event).await {
        tracing::error!(error = %e, "cannot audit a refused TLS handshake");
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
    loop {
        let read = tokio::select! {
            r = tokio::time::timeout(limits.idle_timeout, stream.read(&mut buf)) => r,
            _ = shutdown.changed() => break,
        };
        let n = match read {
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
        let skipped = decoder.take_skipped();
        if skipped > 0 {
            stats::add(&STATS.bytes_skipped, skipped);
            tracing::warn!(listener = %origin.listener, peer = %origin.peer, bytes = skipped, "bytes outside an MLLP frame skipped");
        }
        for unit in units {
            let (ack, handled) = match unit {
                Decoded::Frame(f) => handle_frame(f, &origin, &store).await,
                Decoded::Oversized { head, len } => {
                    tracing::warn!(listener = %origin.listener, peer = %origin.peer, bytes = len, limit = limits.max_frame, "oversized frame refused");
                    (
                        Some(oversized_ack(&head, len, limits.max_frame)),
                        Handled::Oversized,
                    )
                }
            };
            log_handled(&origin, &handled);
            if let Some(ack) = ack {
                if let Err(e) = stream.write_all(&frame(&ack)).await {
                    tracing::debug!(listener = %origin.listener, error = %e, "cannot write ACK; closing");
                    return;
                }
                answered = true;
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
        tracing::warn!(listener = %origin.listener, peer = %origin.peer, "connection closed inside a frame; partial frame dropped (never acknowledged)");
    }
}

fn log_handled(o: &Origin, h: &Handled) {
    let counter = match h {
        Handled::Accepted { .. } => &STATS.messages_accepted,
        Handled::Quarantined { .. } => &STATS.messages_quarantined,
        Handled::Duplicate { .. } => &STATS.messages_duplicate,
        Handled::Rejected { .. } => &STATS.messages_rejected,
        Handled::StoreFailed => &STATS.messages_store_failed,
        Handled::Oversized => &STATS.frames_oversized,
    };
    stats::add(counter, 1);
    match h {
        Handled::Accepted { seq, establishment } => {
            tracing::info!(listener = %o.listener, seq, establishment = establishment.as_deref().unwrap_or("-"), "accepted")
        }
        Handled::Quarantined { seq } => {
            tracing::warn!(listener = %o.listener, seq, "accepted into quarantine")
        }
        Handled::Duplicate { seq } => {
            tracing::info!(listener = %o.listener, seq, "retransmission; original ACK replayed")
        }
        Handled::Rejected { seq, code } => {
            tracing::warn!(listener = %o.listener, seq, code, "rejected (AR), kept for review")
        }
        Handled::StoreFailed => tracing::error!(listener = %o.listener, "not stored (AE)"),
        Handled::Oversized => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_journal_entry_per_kind_and_interval() {
        let l = RefusalLimiter::default();
        assert_eq!(l.admit("sil", "10.0.0.1", "no certificate"), Some(0));
        for _ in 0..5 {
            assert_eq!(l.admit("sil", "10.0.0.1", "no certificate"), None);
        }
        assert_eq!(l.admit("sil", "10.0.0.2", "no certificate"), Some(0));
        assert_eq!(l.admit("sil", "10.0.0.1", "expired"), Some(0));
        assert_eq!(l.admit("dpi", "10.0.0.1", "no certificate"), Some(0));
    }
}
