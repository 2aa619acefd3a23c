//! The DMP feed: publishes a result to the national shared record as an IHE MHD ITI-65
//! transaction (ANS PDSm, `fhir::mhd`), over HTTPS with the owning establishment's client
//! certificate. It runs in the common destination worker (`sinks::mllp::run_destination`:
//! FIFO, retries with backoff, dead letters, durable outcomes); what differs is here:
//!
//! - the gate (`dmp::gate`) is checked at send time, against the latest patient
//!   administration data (ZFA): a result it stops is *withheld* (journalled with
//!   its reason, counted by reason), not sent and not a dead letter;
//! - 2xx is delivered; 408, 429 and 5xx (and network failures) are retried; any other
//!   answer is a dead letter with the status and the OperationOutcome's issue codes (never
//!   its diagnostics, which may quote the document).

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, Destination, DestinationKind};
use crate::dmp::Amendment;
use crate::fhir::mhd::{Provide, Replaces};
use crate::hl7::Message;
use crate::https::Client;
use crate::policy::Permit;
use crate::sinks::mllp::PeerAnswer;
use crate::store::{DmpChange, DmpDocument, StoreHandle};

/// Where a report's documents are registered: this version's key, and the key its
/// previous version was found under.
struct Register {
    establishment: String,
    current: String,
    previous: Option<String>,
    /// The INS the documents are published under (`dmp::ins_key`).
    ins: String,
}

/// When the files of a client certificate last changed (modification time and size of
/// each; `None` for one that cannot be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp(Vec<Option<(std::time::SystemTime, u64)>>);

impl Stamp {
    pub(crate) fn of(files: &[&std::path::Path]) -> Stamp {
        Stamp(
            files
                .iter()
                .map(|f| {
                    let m = std::fs::metadata(f).ok()?;
                    Some((m.modified().ok()?, m.len()))
                })
                .collect(),
        )
    }
}

/// The DMP destination's sender.
pub struct DmpSink {
    dest: Destination,
    path: String,
    cfg: Arc<Config>,
    store: StoreHandle,
    /// One HTTPS client per establishment (its certificate), made at first use and made
    /// again when one of its files changed (a renewed certificate).
    clients: HashMap<String, (Stamp, Client)>,
}

impl DmpSink {
    pub fn new(dest: Destination, cfg: Arc<Config>, store: StoreHandle) -> DmpSink {
        let path = match &dest.kind {
            DestinationKind::Dmp { path, .. } => path.clone(),
            DestinationKind::Mllp | DestinationKind::Mssante { .. } => "/".into(),
        };
        DmpSink {
            dest,
            path,
            cfg,
            store,
            clients: HashMap::new(),
        }
    }

    fn client(&mut self, establishment: &str) -> Result<Client, String> {
        let est = self
            .cfg
            .establishment_by_name(establishment)
            .and_then(|e| e.dmp.as_ref())
            .ok_or_else(|| format!("establishment {establishment} has no DMP certificate"))?;
        let ca = match &self.dest.kind {
            DestinationKind::Dmp { ca: Some(ca), .. } => ca.clone(),
            _ => self
                .cfg
                .tls
                .as_ref()
                .map(|t| t.ca.clone())
                .ok_or("no CA to verify the DMP with ([dmp] ca or [tls] ca)")?,
        };
        let stamp = Stamp::of(&[&ca, &est.cert, &est.key]);
        let cached = self.clients.get(establishment);
        if let Some((s, c)) = cached
            && *s == stamp
        {
            return Ok(c.clone());
        }
        let files = crate::tls::TlsFiles {
            ca,
            cert: est.cert.clone(),
            key: est.key.clone(),
            min_version: self
                .cfg
                .tls
                .as_ref()
                .map(|t| t.min_version)
                .unwrap_or(crate::tls::MinVersion::Tls13),
        };
        let config = match crate::tls::client_config(&files) {
            Ok(c) => c,
            // A renewal half-written, or a bad file: the certificate that worked stays in use
            // until the files read again.
            Err(e) => match cached {
                Some((_, c)) => {
                    tracing::warn!(destination = %self.dest.name, establishment, error = %e, "the DMP client certificate changed but does not load: the previous one stays in use");
                    return Ok(c.clone());
                }
                None => return Err(e.to_string()),
            },
        };
        let name = self.dest.server_name.clone().unwrap_or_default();
        let client = Client {
            address: self.dest.address.clone(),
            connector: tokio_rustls::TlsConnector::from(config),
            server_name: rustls::pki_types::ServerName::try_from(name)
                .map_err(|e| e.to_string())?,
        };
        if cached.is_some() {
            tracing::info!(destination = %self.dest.name, establishment, "DMP client certificate reloaded");
        }
        self.clients
            .insert(establishment.to_owned(), (stamp, client.clone()));
        Ok(client)
    }

    /// One attempt for one stored message.
    pub async fn send(&mut self, permit: &Permit, raw: &[u8]) -> PeerAnswer {
        let store = self.store.store();
        let rec = match store.record(permit.seq()) {
            Ok(Some(r)) => r,
            Ok(None) => return PeerAnswer::Rejected("message record missing".into()),
            Err(e) => return PeerAnswer::Error(e.to_string()),
        };
        let Some(owner) = rec.establishment().map(|e| e.to_string()) else {
            return PeerAnswer::Rejected("message has no owning establishment".into());
        };
        let cfg = Arc::clone(&self.cfg);
        let est = cfg.establishment_by_name(&owner);
        let prepared = crate::hl7::message::prepare(raw);
        let Ok(msg) = Message::parse(&prepared) else {
            return PeerAnswer::Rejected("stored message unreadable".into());
        };
        // The patient key from the message itself, not the outbox entry's (an operator's
        // retry of a dead letter queues it without one): the gate must see the ZFA.
        let facts = crate::router::extract(&msg).ok();
        let patient_key = facts.as_ref().and_then(|f| f.patient_key.clone());
        let admin = match &patient_key {
            Some(k) => match store.patient(&owner, k) {
                Ok(p) => p,
                Err(e) => return PeerAnswer::Error(e.to_string()),
            },
            None => None,
        };
        let state = crate::dmp::PatientState {
            zfa: admin.as_ref().map(|a| a.zfa.as_slice()),
            opposed: admin.as_ref().is_some_and(|a| a.opposition.is_some()),
        };
        let enabled = est.is_some_and(|e| e.dmp.is_some());
        let amendment = crate::dmp::amendment(&msg);
        // A deletion takes back what was published (a wrong patient, a wrong report): only
        // the establishment's own switch stops it, not the patient-side gates.
        let gate = if amendment == Some(Amendment::Deletion) {
            crate::dmp::gate_deletion(enabled)
        } else {
            crate::dmp::gate(&msg, enabled, &state)
        };
        if let Err(w) = gate {
            return PeerAnswer::Withheld(w.as_str());
        }
        let Some(est) = est else {
            return PeerAnswer::Rejected("owning establishment not configured".into());
        };
        // The report's order (filler number, else placer), or for a document its TXA
        // numbers: what a later version names.
        let lineage = crate::dmp::report_lineage(&msg, facts.as_ref());
        let mut found = None;
        for key in lineage.iter().flat_map(|l| &l.previous) {
            match store.dmp_documents(&owner, key) {
                Ok(p) if p.is_empty() => {}
                Ok(p) => {
                    found = Some((key.clone(), p));
                    break;
                }
                Err(e) => return PeerAnswer::Error(e.to_string()),
            }
        }
        let (previous, published) = found.unzip();
        let published = published.unwrap_or_default();
        if let Some(kind) = amendment
            && published.is_empty()
        {
            return PeerAnswer::Rejected(format!(
                "a {} for the DMP, but labroute published no earlier version of this report there (no order or document number, or published before or by another path): nothing to {}; settle it in the DMP by hand",
                kind.as_str(),
                match kind {
                    Amendment::Deletion => "delete",
                    Amendment::Correction => "replace",
                }
            ));
        }
        let ins = crate::dmp::ins_key(&msg);
        if published.iter().any(|(_, d)| Some(&d.ins) != ins.as_ref()) {
            return PeerAnswer::Rejected(
                "the report names another patient (INS) than the version published to the DMP: not replaced or deleted; settle it in the DMP by hand".into(),
            );
        }
        let client = match self.client(&owner) {
            Ok(c) => c,
            Err(e) => return PeerAnswer::Error(e),
        };
        let register = lineage.map(|l| Register {
            establishment: owner.clone(),
            current: l.current,
            previous,
            ins: ins.unwrap_or_default(),
        });
        match (amendment, register) {
            (Some(Amendment::Deletion), Some(r)) => self.delete(&client, &r, &published).await,
            (_, r) => {
                self.provide(
                    &client,
                    permit,
                    &msg,
                    &prepared,
                    est,
                    r.as_ref(),
                    &published,
                )
                .await
            }
        }
    }

    /// Publishes the report's documents (ITI-65), each as the new version of the one
    /// `published` holds at its place; registered when the report has a lineage.
    #[allow(clippy::too_many_arguments)]
    async fn provide(
        &self,
        client: &Client,
        permit: &Permit,
        msg: &Message<'_>,
        raw: &[u8],
        est: &crate::config::Establishment,
        register: Option<&Register>,
        published: &[(usize, DmpDocument)],
    ) -> PeerAnswer {
        let publisher = crate::fhir::mhd::Publisher {
            id: est.id.as_str(),
            name: &est.name,
            finess: est.finess.first().map(String::as_str),
        };
        let replaces: Vec<Replaces<'_>> = published
            .iter()
            .map(|(n, d)| Replaces {
                n: *n,
                master_id: &d.master_id,
                location: d.location.as_deref(),
            })
            .collect();
        let now = crate::time::now_ms();
        let bundle = match crate::fhir::mhd::provide_bundle(
            msg,
            raw,
            permit.seq(),
            &publisher,
            &replaces,
            self.cfg.fhir.zone,
            now,
        ) {
            Ok(b) => b,
            Err(e) => return PeerAnswer::Rejected(format!("cannot build the DMP submission: {e}")),
        };
        let answer = match self
            .exchange(
                client,
                http::Method::POST,
                self.path.clone(),
                bundle.json.into_bytes(),
            )
            .await
        {
            Ok(a) if (200..300).contains(&a.status) => a,
            Ok(a) => return refused(&a),
            Err(e) => return e,
        };
        let Some(r) = register else {
            return PeerAnswer::Published(Vec::new());
        };
        let locations = locations(&answer.body);
        let changes: Vec<DmpChange> = bundle
            .master_ids
            .into_iter()
            .enumerate()
            .map(|(n, master_id)| DmpChange {
                key: crate::store::dmp_document_key(&r.establishment, &r.current, n),
                from: r
                    .previous
                    .as_ref()
                    .filter(|p| **p != r.current && published.iter().any(|(m, _)| *m == n))
                    .map(|p| crate::store::dmp_document_key(&r.establishment, p, n)),
                doc: Some(DmpDocument {
                    master_id,
                    location: locations
                        .get(Provide::reference_entry(n))
                        .cloned()
                        .flatten(),
                    ins: r.ins.clone(),
                    seq: permit.seq(),
                    at_ms: now,
                }),
            })
            .collect();
        PeerAnswer::Published(changes)
    }

    /// Deletes the order's published documents (PDSm logical deletion: a conditional PATCH
    /// by our identifier per document). One the DMP no longer finds (404: deleted by an
    /// earlier attempt of this same message) counts as deleted.
    async fn delete(
        &self,
        client: &Client,
        register: &Register,
        published: &[(usize, DmpDocument)],
    ) -> PeerAnswer {
        let Some(key) = &register.previous else {
            return PeerAnswer::Published(Vec::new());
        };
        let body = crate::fhir::mhd::deletion_patch();
        let mut changes = Vec::new();
        for (n, doc) in published {
            let path = crate::fhir::mhd::conditional_path(&self.path, &doc.master_id);
            match self
                .exchange(client, http::Method::PATCH, path, body.clone().into_bytes())
                .await
            {
                Ok(a) if (200..300).contains(&a.status) || a.status == 404 => {}
                Ok(a) => return refused(&a),
                Err(e) => return e,
            }
            changes.push(DmpChange {
                key: crate::store::dmp_document_key(&register.establishment, key, *n),
                doc: None,
                from: None,
            });
        }
        PeerAnswer::Published(changes)
    }

    /// One request to the DMP: its final answer, or the PeerAnswer to retry with (no
    /// answer, 408, 429, 5xx).
    async fn exchange(
        &self,
        client: &Client,
        method: http::Method,
        path: String,
        body: Vec<u8>,
    ) -> Result<crate::https::Answer, PeerAnswer> {
        let limit = self.dest.ack_timeout + self.dest.connect_timeout;
        let sent = tokio::time::timeout(
            limit,
            client.send(method, &path, crate::sources::fhir::FHIR_JSON, body),
        )
        .await;
        match sent {
            Err(_) => Err(PeerAnswer::Error(format!("no answer within {limit:?}"))),
            Ok(Err(e)) => Err(PeerAnswer::Error(e.to_string())),
            Ok(Ok(a)) if a.status == 408 || a.status == 429 || a.status >= 500 => {
                Err(PeerAnswer::Error(format!("DMP answered HTTP {}", a.status)))
            }
            Ok(Ok(a)) => Ok(a),
        }
    }
}

/// A final refusal: a dead letter naming the status and the OperationOutcome's issue codes.
fn refused(a: &crate::https::Answer) -> PeerAnswer {
    PeerAnswer::Rejected(format!(
        "DMP refused the request: HTTP {}{}",
        a.status,
        issue_codes(&a.body)
    ))
}

/// The `response.location` of each entry of a transaction-response Bundle, without its
/// version (`DocumentReference/12/_history/1` → `DocumentReference/12`).
fn locations(body: &[u8]) -> Vec<Option<String>> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    v["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    e["response"]["location"].as_str().map(|l| {
                        let l = l.split("/_history/").next().unwrap_or(l);
                        // An absolute URL keeps only its last two segments.
                        let parts: Vec<&str> = l.rsplitn(3, '/').collect();
                        match parts.as_slice() {
                            [id, ty, ..] => format!("{ty}/{id}"),
                            _ => l.to_owned(),
                        }
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// ` (issue codes: invalid, required)` from an OperationOutcome, or nothing.
fn issue_codes(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::new();
    };
    let codes: Vec<&str> = v["issue"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["code"].as_str()).collect())
        .unwrap_or_default();
    if codes.is_empty() {
        String::new()
    } else {
        format!(" (issue codes: {})", codes.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_drop_the_version_and_the_base() {
        let body = br#"{"resourceType":"Bundle","type":"transaction-response","entry":[
            {"response":{"status":"201 Created","location":"List/1"}},
            {"response":{"status":"201 Created","location":"DocumentReference/12/_history/1"}},
            {"response":{"status":"201 Created","location":"https://dmp.example/fhir/Binary/7/_history/2"}},
            {"response":{"status":"201 Created"}}]}"#;
        assert_eq!(
            locations(body),
            [
                Some("List/1".to_owned()),
                Some("DocumentReference/12".into()),
                Some("Binary/7".into()),
                None
            ]
        );
        assert!(locations(b"not json").is_empty());
    }

    #[test]
    fn a_deletion_names_the_document_by_our_identifier() {
        assert_eq!(
            crate::fhir::mhd::conditional_path("/fhir/", "urn:oid:2.25.42"),
            "/fhir/DocumentReference?identifier=urn%3Aietf%3Arfc%3A3986%7Curn%3Aoid%3A2.25.42"
        );
    }
}
