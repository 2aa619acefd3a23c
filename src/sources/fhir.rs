//! The FHIR endpoint: HTTPS with mutual TLS, the same system identities as the MLLP
//! listeners. A `POST` of a transaction Bundle (`application/fhir+json`) is turned into its
//! HL7 v2 twin (`fhir::inbound`) and takes the MLLP pipeline from there
//! (`ingest::handle_message`): sender authorisation, tenant resolution, durable commit
//! before the answer, routing. The twin is what is stored and delivered; a Bundle that
//! cannot become one is stored as rejected, verbatim, for review.
//!
//! | outcome | status | body |
//! |---|---|---|
//! | stored and routed | 201 | OperationOutcome (information): message number, establishment |
//! | stored in quarantine | 202 | OperationOutcome (information) |
//! | retransmission (same identifier, same content) | 200 | OperationOutcome (information) |
//! | not JSON, not a FHIR resource | 400 | OperationOutcome |
//! | sender not allowed (role, establishment, unknown system) | 403 | OperationOutcome |
//! | identifier reused for other content | 409 | OperationOutcome |
//! | over `engine.max_frame_bytes` (not stored) | 413 | OperationOutcome |
//! | not `application/fhir+json` | 415 | OperationOutcome |
//! | a Bundle the twin cannot carry, or that cannot be routed | 422 | OperationOutcome naming the elements |
//! | store unavailable (not stored; send again) | 503 | OperationOutcome, `Retry-After` |
//!
//! `GET /metadata` answers the CapabilityStatement. No answer carries a value from the
//! Bundle: issues name elements by FHIRPath. `GET /DiagnosticReport` and `GET /Observation`
//! are the results server's searches, for practitioners (`sources::results`).

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::fhir::inbound::{self, Issue, outcome_json, outcome_one};
use crate::fhir::search::Kind;
use crate::hl7::ack::{AckError, AckHeader};
use crate::https::Peer;
use crate::ingest::{Handled, Origin, count_and_log, handle_message};
use crate::sources::accept::TlsListener;
use crate::stats::{self, STATS};
use crate::store::StoreHandle;
use crate::store::writer::{IngestReply, RejectRequest};
use crate::time::{hl7_timestamp, now_ms, rfc3339};

/// The name the journal and the records give this endpoint.
pub const LISTENER: &str = "fhir";
/// Concurrent connections.
const MAX_CONNECTIONS: usize = 64;
/// The media type of FHIR JSON.
pub const FHIR_JSON: &str = "application/fhir+json";
/// Seconds a client is asked to wait before sending again after a store failure.
const RETRY_AFTER_SECS: &str = "5";

/// Serves the FHIR endpoint until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    store: StoreHandle,
    tls: TlsListener,
    shutdown: watch::Receiver<bool>,
) {
    let started = rfc3339(now_ms());
    let capability: Arc<str> = match crate::fhir::capability_json(&started) {
        Ok(c) => c.into(),
        Err(e) => {
            tracing::error!(error = %e, "cannot write the CapabilityStatement");
            outcome_one("error", "exception", "no CapabilityStatement").into()
        }
    };
    let handler_store = store.clone();
    crate::https::serve(
        listener,
        LISTENER,
        MAX_CONNECTIONS,
        store,
        tls,
        shutdown,
        move |req: Request<Incoming>, peer: Arc<Peer>| {
            let store = handler_store.clone();
            let capability = capability.clone();
            async move { respond(req, &store, &peer, &capability).await }
        },
    )
    .await;
}

pub(super) fn fhir_response(status: StatusCode, json: impl Into<Bytes>) -> Response<Full<Bytes>> {
    crate::https::response(status, FHIR_JSON, json)
}

/// An answer that is not about a Bundle (wrong path, method, media type, a search's
/// certificate or parameters): counted, logged.
pub(super) fn refused(
    status: StatusCode,
    code: &str,
    text: &str,
    peer: &Peer,
) -> Response<Full<Bytes>> {
    stats::add(&STATS.fhir_requests_refused, 1);
    tracing::warn!(listener = LISTENER, peer = %peer.address, status = status.as_u16(), why = text, "FHIR request refused");
    fhir_response(status, outcome_one("error", code, text))
}

async fn respond(
    req: Request<Incoming>,
    store: &StoreHandle,
    peer: &Peer,
    capability: &str,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let method = req.method().clone();
    match (path.as_str(), method) {
        ("/metadata", Method::GET) => fhir_response(
            StatusCode::OK,
            Bytes::copy_from_slice(capability.as_bytes()),
        ),
        ("", Method::POST) => post(req, store, peer).await,
        (p, m) if let Some(kind) = Kind::of_path(p) => match m {
            Method::GET => {
                let host = req
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok());
                super::results::search(kind, req.uri().query(), host, store, peer).await
            }
            m => refused(
                StatusCode::METHOD_NOT_ALLOWED,
                "not-supported",
                &format!("{m} is not supported here: results are searched with GET"),
                peer,
            ),
        },
        ("/metadata" | "", m) => refused(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            &format!(
                "{m} is not supported here: POST a transaction Bundle to the base, GET /metadata"
            ),
            peer,
        ),
        _ => refused(
            StatusCode::NOT_FOUND,
            "not-found",
            "no such path: POST a transaction Bundle to the base, or GET /DiagnosticReport or /Observation to search results",
            peer,
        ),
    }
}

/// Whether a Content-Type names FHIR JSON (`application/fhir+json`, or `application/json`
/// which FHIR servers also take), with any parameters.
fn is_fhir_json(content_type: Option<&http::HeaderValue>) -> bool {
    let Some(v) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media = v.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case(FHIR_JSON) || media.eq_ignore_ascii_case("application/json")
}

async fn post(req: Request<Incoming>, store: &StoreHandle, peer: &Peer) -> Response<Full<Bytes>> {
    if !is_fhir_json(req.headers().get(http::header::CONTENT_TYPE)) {
        return refused(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "the body must be application/fhir+json",
            peer,
        );
    }
    let cfg = store.config();
    let limit = cfg.engine.max_frame_bytes;
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            stats::add(&STATS.frames_oversized, 1);
            tracing::warn!(listener = LISTENER, peer = %peer.address, limit, "oversized FHIR request refused (not stored)");
            return fhir_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                outcome_one(
                    "error",
                    "too-long",
                    &format!("the body exceeds the {limit}-byte limit; it was not stored"),
                ),
            );
        }
        Err(e) => {
            tracing::debug!(listener = LISTENER, peer = %peer.address, error = %e, "FHIR request body unreadable");
            return refused(
                StatusCode::BAD_REQUEST,
                "incomplete",
                "the body could not be read",
                peer,
            );
        }
    };
    let origin = Origin {
        listener: LISTENER.to_owned(),
        peer: peer.address.clone(),
        identity: Some(peer.identity.clone()),
    };
    let sender = match cfg.system_of(&peer.identity) {
        Some(s) => s.name.clone(),
        None => peer.identity.label(),
    };
    let handled = match inbound::to_v2(&body, &sender, &hl7_timestamp(now_ms())) {
        Ok(twin) => {
            handle_message(twin.v2, Some(twin.fingerprint), &origin, store)
                .await
                .1
        }
        Err(issues) => {
            return refuse_bundle(Vec::from(body), &issues, &origin, &sender, store).await;
        }
    };
    count_and_log(&origin, &handled);
    answer(&handled)
}

/// The answer to a Bundle that became a twin, by what became of the twin.
fn answer(h: &Handled) -> Response<Full<Bytes>> {
    let info = |status, text: String| {
        fhir_response(status, outcome_one("information", "informational", &text))
    };
    let error = |status, code, text: &str| fhir_response(status, outcome_one("error", code, text));
    match h {
        Handled::Accepted { seq, establishment } => info(
            StatusCode::CREATED,
            format!(
                "stored as message {seq} for {} and routed",
                establishment.as_deref().unwrap_or("-")
            ),
        ),
        Handled::Quarantined { seq } => info(
            StatusCode::ACCEPTED,
            format!(
                "stored as message {seq} and held in quarantine: the owning establishment could not be determined; an operator will review it"
            ),
        ),
        Handled::Duplicate { seq } => info(
            StatusCode::OK,
            format!("already received as message {seq}; not routed again"),
        ),
        Handled::Rejected { seq, code, text } => {
            let (status, kind) = match code {
                207 => (StatusCode::FORBIDDEN, "forbidden"),
                205 => (StatusCode::CONFLICT, "duplicate"),
                200 => (StatusCode::UNPROCESSABLE_ENTITY, "not-supported"),
                _ => (StatusCode::UNPROCESSABLE_ENTITY, "processing"),
            };
            error(
                status,
                kind,
                &format!("{text} (kept for review as message {seq})"),
            )
        }
        Handled::StoreFailed | Handled::Oversized => {
            unavailable("not stored: temporary failure, send it again")
        }
    }
}

/// 503 with `Retry-After`: the store (or the journal) cannot be used now.
pub(super) fn unavailable(text: &str) -> Response<Full<Bytes>> {
    let mut r = fhir_response(
        StatusCode::SERVICE_UNAVAILABLE,
        outcome_one("error", "transient", text),
    );
    r.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static(RETRY_AFTER_SECS),
    );
    r
}

/// A Bundle that cannot become an HL7 v2 twin: stored verbatim as rejected (for review),
/// answered 400 when it cannot be read as FHIR JSON (issue type `structure`), else 422,
/// with the issues.
async fn refuse_bundle(
    body: Vec<u8>,
    issues: &[Issue],
    origin: &Origin,
    sender: &str,
    store: &StoreHandle,
) -> Response<Full<Bytes>> {
    let unreadable = issues.iter().any(|i| i.code == "structure");
    let text: Vec<String> = issues.iter().map(Issue::to_string).collect();
    let req = RejectRequest {
        listener: origin.listener.clone(),
        peer: origin.peer.clone(),
        raw: body,
        control_id: String::new(),
        message_type: "FHIR Bundle".into(),
        error: AckError {
            code: if issues.iter().all(|i| i.code == "required") {
                101
            } else {
                102
            },
            text: format!("FHIR: {}", text.join("; ")),
            location: None,
        },
        header: AckHeader::default(),
        enhanced: false,
        decision: None,
        sender: Some(sender.to_owned()),
    };
    let handled = match store.reject(req).await {
        Ok(IngestReply::Rejected {
            seq,
            error_code,
            text,
            ..
        }) => Handled::Rejected {
            seq,
            code: error_code,
            text,
        },
        Ok(_) | Err(_) => Handled::StoreFailed,
    };
    count_and_log(origin, &handled);
    match handled {
        Handled::Rejected { .. } => {
            let status = if unreadable {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            fhir_response(status, outcome_json(issues))
        }
        other => answer(&other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhir_json_media_types() {
        let v = |s: &'static str| http::HeaderValue::from_static(s);
        assert!(is_fhir_json(Some(&v("application/fhir+json"))));
        assert!(is_fhir_json(Some(&v(
            "application/fhir+json; charset=utf-8"
        ))));
        assert!(is_fhir_json(Some(&v("Application/JSON"))));
        assert!(!is_fhir_json(Some(&v("application/fhir+xml"))));
        assert!(!is_fhir_json(Some(&v("text/plain"))));
        assert!(!is_fhir_json(None));
    }

    #[test]
    fn every_outcome_has_its_status() {
        let cases = [
            (
                Handled::Accepted {
                    seq: 1,
                    establishment: Some("ES1".into()),
                },
                201,
            ),
            (Handled::Quarantined { seq: 2 }, 202),
            (Handled::Duplicate { seq: 3 }, 200),
            (
                Handled::Rejected {
                    seq: 4,
                    code: 207,
                    text: "refused".into(),
                },
                403,
            ),
            (
                Handled::Rejected {
                    seq: 5,
                    code: 205,
                    text: "reused".into(),
                },
                409,
            ),
            (
                Handled::Rejected {
                    seq: 6,
                    code: 101,
                    text: "missing".into(),
                },
                422,
            ),
            (Handled::StoreFailed, 503),
        ];
        for (h, status) in cases {
            assert_eq!(answer(&h).status().as_u16(), status, "{h:?}");
        }
    }
}
