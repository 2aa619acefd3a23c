//! Counters of this process since it started (no patient data: counts only), shown by
//! `labroute status` and exported to Prometheus (`telemetry`).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! counters {
    ($($name:ident: $doc:literal),* $(,)?) => {
        /// Process-wide counters.
        #[derive(Debug, Default)]
        pub struct Stats { $(#[doc = $doc] pub $name: AtomicU64,)* }

        /// A copy of the counters at one moment.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
        pub struct Snapshot { $(#[doc = $doc] pub $name: u64,)* }

        impl Stats {
            pub const fn new() -> Stats {
                Stats { $($name: AtomicU64::new(0),)* }
            }
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl Snapshot {
            /// (name, value) of every counter.
            pub fn pairs(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }

        /// (name, description) of every counter.
        pub const DESCRIPTIONS: &[(&str, &str)] = &[$((stringify!($name), $doc),)*];
    };
}

counters! {
    connections_accepted: "MLLP connections accepted",
    connections_refused: "MLLP connections closed at once: connection limit reached",
    connections_refused_per_peer: "MLLP connections closed at once: the peer address holds max_connections_per_peer",
    frames_timed_out: "MLLP connections closed because a frame begun did not end within frame_timeout_secs (never acknowledged)",
    frames_truncated: "MLLP connections the peer closed inside a frame: the partial frame dropped, never acknowledged",
    connections_idle_closed: "MLLP connections closed by the idle timeout",
    tls_handshakes_failed: "TLS handshakes refused or timed out (no or bad client certificate, old version, plain TCP)",
    fhir_requests_refused: "FHIR endpoint requests refused before a Bundle was read (path, method, media type)",
    bytes_skipped: "bytes received outside an MLLP frame, skipped",
    frames_oversized: "frames above max_frame_bytes, answered AR 104, not stored",
    messages_accepted: "messages stored and routed",
    messages_quarantined: "messages stored in quarantine",
    messages_duplicate: "retransmissions answered with their original ACK",
    messages_rejected: "messages refused (AR/CR) and kept for review",
    messages_store_failed: "messages not stored (AE/CE, the sender retries)",
    refused_unknown_system: "messages refused: the sender's certificate names no configured system",
    refused_role: "messages refused: the sending system's role may not send that type",
    refused_establishment: "messages refused: the sending system may not speak for the owning establishment",
    deliveries: "messages accepted by a destination",
    delivery_retries: "delivery attempts that will be retried",
    dead_letters: "messages dead-lettered",
    withheld: "messages a destination's rule withheld (the DMP gate), journalled with the reason",
    refused_by_policy: "deliveries the delivery policy refused (no permit): dead-lettered",
    destination_identity_refused: "connections to a destination whose certificate names another system than its configured one: not used",
}

/// The counters of this process.
pub static STATS: Stats = Stats::new();

/// Adds `n` to a counter.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}
