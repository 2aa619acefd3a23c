//! One received frame to one ACK. This is the only place that turns ingest errors into
//! acknowledgements (see the AE-vs-AR table in ARCHITECTURE.md).

use crate::hl7::ack::{self, AcceptAckType, AckError, AckHeader, AckOutcome};
use crate::hl7::message::prepare;
use crate::hl7::{Message, ParseError};
use crate::router;
use crate::store::StoreHandle;
use crate::store::writer::{IngestReply, IngestRequest, RejectRequest};
use crate::time::{hl7_timestamp, now_ms};

/// Where a frame came from.
#[derive(Debug, Clone)]
pub struct Origin {
    pub listener: String,
    pub peer: String,
    /// The peer's certificate identity, on a TLS listener.
    pub identity: Option<crate::tls::PeerIdentity>,
}

/// What happened to a frame, for counting and logging (never message content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Accepted {
        seq: u64,
        establishment: Option<String>,
    },
    Quarantined {
        seq: u64,
    },
    Duplicate {
        seq: u64,
    },
    Rejected {
        seq: u64,
        /// HL7 table 0357 error code.
        code: u16,
        /// What was wrong (names fields, never values).
        text: String,
    },
    /// Not stored (store unavailable): answered AE so the sender retries.
    StoreFailed,
    /// Too large to store: answered AR.
    Oversized,
}

fn parse_error_text(e: &ParseError) -> String {
    format!(
        "message could not be read: {} (byte {})",
        e.kind, e.position
    )
}

/// AE with code 207, built without the store (used when the store fails).
fn store_failure_ack(header: &AckHeader, enhanced: bool) -> Vec<u8> {
    let err = AckError {
        code: 207,
        text: "message not stored: temporary failure, send it again".into(),
        location: None,
    };
    let code = ack::code_for(enhanced, AckOutcome::Error);
    let now = now_ms();
    ack::build(
        header,
        code,
        Some(&err),
        &format!("LRT{now}"),
        &hl7_timestamp(now),
    )
}

/// Handles one frame. Returns the ACK to send (`None` when the sender asked for none).
pub async fn handle_frame(
    frame: Vec<u8>,
    origin: &Origin,
    store: &StoreHandle,
) -> (Option<Vec<u8>>, Handled) {
    handle_message(frame, None, origin, store).await
}

/// [`handle_frame`] for a message made here (a FHIR Bundle's HL7 twin), with the
/// fingerprint that tells its retransmissions (see `IngestRequest::fingerprint`).
pub async fn handle_message(
    frame: Vec<u8>,
    fingerprint: Option<[u8; 32]>,
    origin: &Origin,
    store: &StoreHandle,
) -> (Option<Vec<u8>>, Handled) {
    let body = prepare(&frame);
    let parsed = Message::parse(&body);
    let (header, accept) = match &parsed {
        Ok(m) => (AckHeader::of(m), AcceptAckType::of(m)),
        Err(_) => (AckHeader::salvage(&body), AcceptAckType::Original),
    };
    let enhanced = accept.enhanced();
    let app_ack = parsed.as_ref().ok().and_then(ack::deferred_app_ack);
    let type_label = match &parsed {
        Ok(m) => crate::telemetry::type_label(&m.text("MSH-9.1"), &m.text("MSH-9.2")),
        Err(_) => "other".to_owned(),
    };
    let facts = match &parsed {
        Ok(m) => {
            router::extract(m).map_err(|r| (r.error, m.text("MSH-10").into_owned(), type_of(m)))
        }
        Err(e) => Err((
            AckError {
                code: e.kind.hl7_code(),
                text: parse_error_text(e),
                location: None,
            },
            String::from_utf8_lossy(&header.control_id).into_owned(),
            String::new(),
        )),
    };
    let result = match facts {
        Ok(facts) => {
            let digest = crate::model::sha256(&frame);
            let req = IngestRequest {
                listener: origin.listener.clone(),
                peer: origin.peer.clone(),
                raw: frame,
                facts,
                header: header.clone(),
                enhanced,
                app_ack,
                identity: origin.identity.clone(),
                fingerprint,
                digest,
            };
            store.ingest(req).await
        }
        Err((error, control_id, message_type)) => {
            let req = RejectRequest {
                listener: origin.listener.clone(),
                peer: origin.peer.clone(),
                raw: frame,
                control_id,
                message_type,
                error,
                header: header.clone(),
                enhanced,
                decision: None,
                sender: origin.identity.as_ref().map(|i| i.label()),
            };
            store.reject(req).await
        }
    };
    match result {
        Ok(reply) => {
            let (ack, handled, outcome) = match reply {
                IngestReply::Accepted {
                    seq,
                    ack,
                    establishment,
                    quarantined,
                    ..
                } => {
                    let h = if quarantined {
                        Handled::Quarantined { seq }
                    } else {
                        Handled::Accepted {
                            seq,
                            establishment: establishment.map(|e| e.to_string()),
                        }
                    };
                    (ack, h, AckOutcome::Accepted)
                }
                IngestReply::Duplicate { seq, ack } => {
                    (ack, Handled::Duplicate { seq }, AckOutcome::Accepted)
                }
                IngestReply::Rejected {
                    seq,
                    ack,
                    error_code,
                    text,
                    ..
                } => (
                    ack,
                    Handled::Rejected {
                        seq,
                        code: error_code,
                        text,
                    },
                    AckOutcome::Rejected,
                ),
            };
            count(&origin.listener, type_label, &handled);
            (accept.sends(outcome).then_some(ack), handled)
        }
        Err(e) => {
            tracing::error!(listener = %origin.listener, error = %e, "message not stored; answered AE");
            count(&origin.listener, type_label, &Handled::StoreFailed);
            (
                accept
                    .sends(AckOutcome::Error)
                    .then(|| store_failure_ack(&header, enhanced)),
                Handled::StoreFailed,
            )
        }
    }
}

/// Counts a message for Prometheus: by listener, owning establishment, type (one this
/// engine takes, else `other`) and outcome; a refusal for the message's own fault also by
/// reason (refusals of the sender, code 207, are counted where they are decided:
/// `store::writer`).
pub fn count(listener: &str, type_label: String, h: &Handled) {
    use crate::telemetry::names;
    let (outcome, establishment) = match h {
        Handled::Accepted { establishment, .. } => (
            "accepted",
            establishment.clone().unwrap_or_else(|| "none".into()),
        ),
        Handled::Quarantined { .. } => ("quarantined", "none".into()),
        Handled::Duplicate { .. } => ("duplicate", "none".into()),
        Handled::Rejected { .. } => ("rejected", "none".into()),
        Handled::StoreFailed => ("store_failed", "none".into()),
        Handled::Oversized => ("oversized", "none".into()),
    };
    metrics::counter!(names::MESSAGES,
        "listener" => listener.to_owned(),
        "establishment" => establishment,
        "type" => type_label,
        "outcome" => outcome)
    .increment(1);
    let reason = match h {
        Handled::Rejected { code: 207, .. } => None,
        Handled::Rejected { code: 101, .. } => Some("missing_field"),
        Handled::Rejected {
            code: 102 | 103, ..
        } => Some("invalid_value"),
        Handled::Rejected {
            code: 200 | 201, ..
        } => Some("unsupported_type"),
        Handled::Rejected { .. } => Some("unreadable"),
        Handled::Oversized => Some("oversized"),
        _ => None,
    };
    if let Some(reason) = reason {
        metrics::counter!(names::REFUSALS, "listener" => listener.to_owned(), "reason" => reason)
            .increment(1);
    }
}

/// Counts what happened to a message and logs it (numbers and names, never content).
pub fn count_and_log(o: &Origin, h: &Handled) {
    use crate::stats::{self, STATS};
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
            tracing::info!(listener = %o.listener, seq, "retransmission; original answer replayed")
        }
        Handled::Rejected { seq, code, .. } => {
            tracing::warn!(listener = %o.listener, seq, code, "rejected, kept for review")
        }
        Handled::StoreFailed => {
            tracing::error!(listener = %o.listener, "not stored; the sender is told to retry")
        }
        Handled::Oversized => {}
    }
}

fn type_of(m: &Message<'_>) -> String {
    format!("{}^{}", m.text("MSH-9.1"), m.text("MSH-9.2"))
}

/// AR for a frame over the size limit (it is not stored: the limit protects the store).
pub fn oversized_ack(head: &[u8], len: usize, limit: usize) -> Vec<u8> {
    let header = AckHeader::salvage(head);
    let err = AckError {
        code: 104,
        text: format!("message of {len} bytes exceeds the {limit}-byte limit"),
        location: None,
    };
    let now = now_ms();
    ack::build(
        &header,
        ack::AckCode::AR,
        Some(&err),
        &format!("LRT{now}"),
        &hl7_timestamp(now),
    )
}
