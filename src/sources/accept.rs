//! What every TLS-capable listener shares (MLLP, the admin endpoint): the accept loop's
//! next connection, the handshake with its timeout, and refused handshakes counted, logged
//! and journalled at a bounded rate.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

use crate::stats::{self, STATS};
use crate::store::StoreHandle;
use crate::tls::PeerIdentity;

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The next accepted connection; `None` once `shutdown` turns true. Accept errors (out of
/// file descriptors, say) are logged and retried after a short pause.
pub async fn next_connection(
    listener: &TcpListener,
    name: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, std::net::SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return None,
        };
        match accepted {
            Ok(x) => return Some(x),
            Err(e) => {
                tracing::warn!(listener = %name, error = %e, "accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What a TLS listener needs: the instance's TLS state and its refusal limiter.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub state: Arc<crate::tls::TlsState>,
    pub refusals: Arc<RefusalLimiter>,
    /// Peers whose certificate is optional ([`PeerIdentity::anonymous`] when they give
    /// none): the admin endpoint's `without_certificate`; empty everywhere else.
    pub open_to: Arc<[std::net::IpAddr]>,
}

impl TlsListener {
    /// Completes the handshake (client certificate required) within [`HANDSHAKE_TIMEOUT`];
    /// the stream and the identity its certificate carries. A failure is refused and
    /// journalled ([`refused_handshake`]) and gives `None`; so does a certificate verified
    /// but unreadable (x509-parser refusing what webpki accepted): without an identity the
    /// sender checks could not run.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        store: &StoreHandle,
        listener: &str,
        peer: &str,
    ) -> Option<(TlsStream<TcpStream>, PeerIdentity)> {
        let open = !self.open_to.is_empty()
            && peer
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|a| self.open_to.contains(&a.ip()));
        let acceptor = if open {
            self.state.acceptor_open()
        } else {
            self.state.acceptor()
        };
        let error = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(s)) => {
                let certs = s.get_ref().1.peer_certificates();
                if open && certs.is_none_or(|c| c.is_empty()) {
                    return Some((s, PeerIdentity::anonymous()));
                }
                let identity = certs.and_then(|c| c.first()).and_then(crate::tls::identity);
                match identity {
                    Some(id) => return Some((s, id)),
                    None => "client certificate verified but unreadable: no identity".to_owned(),
                }
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        refused_handshake(store, &self.refusals, listener, peer, error).await;
        None
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

/// A refused handshake's reason, a fixed word for the metric (the error text, from rustls,
/// goes to the log and the journal).
pub fn handshake_reason(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("timed out") {
        "timeout"
    } else if e.contains("no certificates") || e.contains("nocertificatespresented") {
        "no_certificate"
    } else if e.contains("unknownissuer") || e.contains("unknown issuer") {
        "unknown_ca"
    } else if e.contains("expired") {
        "expired"
    } else if e.contains("certificate") {
        "bad_certificate"
    } else if e.contains("version") || e.contains("incompatible") {
        "protocol_version"
    } else if e.contains("corrupt message") || e.contains("invalidcontenttype") {
        "not_tls"
    } else {
        "other"
    }
}

/// A TLS handshake refused (no or bad certificate, old version, plain TCP): counted, logged
/// and audited (no message exists to store), the log and journal at most once per kind and
/// interval ([`RefusalLimiter`]).
pub(crate) async fn refused_handshake(
    store: &StoreHandle,
    limiter: &RefusalLimiter,
    listener: &str,
    peer: &str,
    error: String,
) {
    stats::add(&STATS.tls_handshakes_failed, 1);
    metrics::counter!(crate::telemetry::names::TLS_HANDSHAKE_FAILURES,
        "listener" => listener.to_owned(),
        "reason" => handshake_reason(&error))
    .increment(1);
    let ip = peer
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| peer.to_owned());
    let Some(suppressed) = limiter.admit(listener, &ip, &error) else {
        return;
    };
    tracing::warn!(%listener, %peer, error = %error, suppressed, "TLS handshake refused");
    let event = crate::store::audit::AuditEvent {
        event: "tls_refused".into(),
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

#[cfg(test)]
mod reason_tests {
    use super::handshake_reason;

    /// rustls 0.23's texts for the refusals the TLS tests provoke, each to its word.
    #[test]
    fn refusals_have_fixed_reasons() {
        for (text, reason) in [
            ("peer sent no certificates", "no_certificate"),
            ("invalid peer certificate: UnknownIssuer", "unknown_ca"),
            (
                "invalid peer certificate: certificate expired: verification time 1, but certificate is not valid after 0",
                "expired",
            ),
            ("invalid peer certificate: BadEncoding", "bad_certificate"),
            (
                "client certificate verified but unreadable: no identity",
                "bad_certificate",
            ),
            ("peer is incompatible: Tls12NotOffered", "protocol_version"),
            (
                "received corrupt message of type InvalidContentType",
                "not_tls",
            ),
            ("timed out", "timeout"),
            ("connection reset by peer", "other"),
        ] {
            assert_eq!(handshake_reason(text), reason, "{text}");
        }
    }
}
