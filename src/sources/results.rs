//! The results server: FHIR searches (`GET /DiagnosticReport`, `GET /Observation` by
//! `patient.identifier`, `date`, `code`) on the FHIR endpoint, for a practitioner whose
//! client certificate names him by his RPPS (`access::practitioner`).
//!
//! He sees the results of a patient only in the establishments where `access::decide` says
//! yes. Everything else (no such patient, an establishment closed to outside access, a
//! patient he does not care for) answers exactly like a patient with no result: the same
//! empty searchset, status 200. Every search is journalled (`results_search`, one entry per
//! establishment looked in: who, served or refused and why, the patient as `patient_ref`)
//! before the answer leaves, and counted (`labroute_results_searches_total`,
//! `labroute_results_access_denied_total`).
//!
//! | request | status |
//! |---|---|
//! | a search | 200, a searchset Bundle (possibly empty) |
//! | a certificate that names no practitioner | 403 OperationOutcome |
//! | a parameter missing, malformed or not supported | 400 OperationOutcome naming it |
//! | store or journal unavailable | 503 OperationOutcome, `Retry-After` |

use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;

use crate::access::{self, Denial, Link};
use crate::config::Config;
use crate::fhir::Zone;
use crate::fhir::search::{self, Kind, Query};
use crate::https::Peer;
use crate::store::audit::AuditEvent;
use crate::store::writer::patient_ref;
use crate::store::{Store, StoreError, StoreHandle};
use crate::telemetry::names;

use super::fhir::{LISTENER, fhir_response, refused};

/// What a search found, before it is filtered.
#[derive(Debug, Default)]
struct Gathered {
    /// Result Bundles (JSON) of the patients he may see, newest message first.
    bundles: Vec<serde_json::Value>,
    /// (establishment, patient_ref, link) that answered.
    served: Vec<(String, String, Link)>,
    /// (establishment and patient_ref when known, why not).
    denied: Vec<(Option<(String, String)>, Denial)>,
    /// Stored results that did not map (logged; never expected: they mapped at ingest
    /// when a FHIR destination took them, and the mapping is deterministic).
    unmapped: Vec<u64>,
}

/// Answers a search.
pub async fn search(
    kind: Kind,
    query: Option<&str>,
    host: Option<&str>,
    store: &StoreHandle,
    peer: &Peer,
) -> Response<Full<Bytes>> {
    let Some(rpps) = access::practitioner(&peer.identity) else {
        return refused(
            StatusCode::FORBIDDEN,
            "forbidden",
            "searching results needs a practitioner's client certificate: one whose SAN URI is urn:labroute:rpps:<RPPS>",
            peer,
        );
    };
    let cfg = store.config().clone();
    let zone = cfg.fhir.zone;
    let q = match search::parse(kind, query, zone) {
        Ok(q) => q,
        Err(e) => {
            return refused(StatusCode::BAD_REQUEST, "invalid", &e.to_string(), peer);
        }
    };
    // Built from the request alone: the same for every answer to the same request.
    let base = host.map(|h| format!("https://{h}/")).unwrap_or_default();
    let self_url = match query {
        Some(qs) => format!("{base}{}?{qs}", kind.as_str()),
        None => format!("{base}{}", kind.as_str()),
    };
    let reader = store.store().clone();
    let job = {
        let (q, rpps) = (q.clone(), rpps.clone());
        tokio::task::spawn_blocking(move || gather(&reader, &cfg, &rpps, &q, zone))
    };
    let gathered = match job.await {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => {
            tracing::error!(listener = LISTENER, error = %e, "results search: store unreadable");
            return unavailable();
        }
        Err(e) => {
            tracing::error!(listener = LISTENER, error = %e, "results search failed");
            return unavailable();
        }
    };
    let found = search::select(&q, &gathered.bundles, zone);
    let matches = found.iter().filter(|f| f.matched).count();
    let answer = search::searchset(&self_url, found);
    for event in journal(kind, &rpps, peer, &gathered, matches) {
        if let Err(e) = store.audit(event).await {
            tracing::error!(listener = LISTENER, error = %e, "results search not journalled: not answered");
            return unavailable();
        }
    }
    for (_, d) in &gathered.denied {
        metrics::counter!(names::RESULTS_DENIED, "reason" => d.as_str()).increment(1);
    }
    let outcome = if gathered.served.is_empty() {
        "nothing_served"
    } else {
        "served"
    };
    metrics::counter!(names::RESULTS_SEARCHES, "outcome" => outcome).increment(1);
    for seq in &gathered.unmapped {
        tracing::error!(
            listener = LISTENER,
            seq,
            "a stored result does not map to FHIR: left out of a search"
        );
    }
    tracing::info!(
        listener = LISTENER,
        peer = %peer.address,
        rpps = %rpps,
        resource = kind.as_str(),
        establishments = gathered.served.len(),
        denied = gathered.denied.len(),
        matches,
        "results search"
    );
    fhir_response(StatusCode::OK, answer.to_string())
}

/// The patients the identifier names, the decision for each, and the results of those he
/// may see, mapped.
fn gather(
    store: &Store,
    cfg: &Config,
    rpps: &str,
    q: &Query,
    zone: Zone,
) -> Result<Gathered, StoreError> {
    let mut g = Gathered::default();
    let mut bundles: Vec<(u64, serde_json::Value)> = Vec::new();
    let system = q.patient.system.as_ref().map(|s| s.as_deref());
    let patients = store.patients_by_identifier(system, &q.patient.code)?;
    if patients.is_empty() {
        g.denied.push((None, Denial::UnknownPatient));
    }
    for (est, pk) in patients {
        let pref = patient_ref(&est, &pk);
        match access::decide(store, cfg, rpps, &est, &pk)? {
            Err(d) => g.denied.push((Some((est, pref)), d)),
            Ok(link) => {
                for seq in store.results_of(&est, &pk)? {
                    let Some(raw) = store.raw(seq)? else {
                        g.unmapped.push(seq);
                        continue;
                    };
                    let bytes = crate::hl7::message::prepare(&raw);
                    match crate::fhir::result_bundle_json(&bytes, zone, false)
                        .ok()
                        .and_then(|j| serde_json::from_str(&j).ok())
                    {
                        Some(b) => bundles.push((seq, b)),
                        None => g.unmapped.push(seq),
                    }
                }
                g.served.push((est, pref, link));
            }
        }
    }
    bundles.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
    g.bundles = bundles.into_iter().map(|(_, b)| b).collect();
    Ok(g)
}

/// The journal entries of a search, one per establishment it looked in (so that each
/// establishment's audit query finds the searches of its patients), or one without an
/// establishment when the identifier named no patient. No patient data: a patient is a
/// `patient_ref`.
fn journal(kind: Kind, rpps: &str, peer: &Peer, g: &Gathered, matches: usize) -> Vec<AuditEvent> {
    let entry = |establishment: Option<&String>, detail: serde_json::Value| {
        let mut d = serde_json::json!({
            "listener": LISTENER,
            "peer": peer.address,
            "resource": kind.as_str(),
            "matches": matches,
        });
        if let (Some(d), serde_json::Value::Object(more)) = (d.as_object_mut(), detail) {
            d.extend(more);
        }
        AuditEvent {
            event: "results_search".into(),
            message: None,
            establishment: establishment.cloned(),
            actor: Some(format!("rpps:{rpps}")),
            detail: d,
        }
    };
    let served = g.served.iter().map(|(est, pref, link)| {
        entry(
            Some(est),
            serde_json::json!({ "patient_ref": pref, "served": true, "link": link.as_str() }),
        )
    });
    let denied = g.denied.iter().map(|(at, why)| {
        entry(
            at.as_ref().map(|(e, _)| e),
            serde_json::json!({
                "patient_ref": at.as_ref().map(|(_, p)| p),
                "served": false,
                "why": why.as_str(),
            }),
        )
    });
    served.chain(denied).collect()
}

fn unavailable() -> Response<Full<Bytes>> {
    super::fhir::unavailable("the results cannot be searched now: try again")
}
