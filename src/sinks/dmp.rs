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
use crate::hl7::Message;
use crate::https::Client;
use crate::policy::Permit;
use crate::sinks::mllp::PeerAnswer;
use crate::store::StoreHandle;

/// The DMP destination's sender.
pub struct DmpSink {
    dest: Destination,
    path: String,
    cfg: Arc<Config>,
    store: StoreHandle,
    /// One HTTPS client per establishment (its certificate), made at first use.
    clients: HashMap<String, Client>,
}

impl DmpSink {
    pub fn new(dest: Destination, cfg: Arc<Config>, store: StoreHandle) -> DmpSink {
        let path = match &dest.kind {
            DestinationKind::Dmp { path, .. } => path.clone(),
            DestinationKind::Mllp => "/".into(),
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
        if let Some(c) = self.clients.get(establishment) {
            return Ok(c.clone());
        }
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
        let config = crate::tls::client_config(&files).map_err(|e| e.to_string())?;
        let name = self.dest.server_name.clone().unwrap_or_default();
        let client = Client {
            address: self.dest.address.clone(),
            connector: tokio_rustls::TlsConnector::from(config),
            server_name: rustls::pki_types::ServerName::try_from(name)
                .map_err(|e| e.to_string())?,
        };
        self.clients
            .insert(establishment.to_owned(), client.clone());
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
        let est = self.cfg.establishment_by_name(&owner);
        let prepared = crate::hl7::message::prepare(raw);
        let Ok(msg) = Message::parse(&prepared) else {
            return PeerAnswer::Rejected("stored message unreadable".into());
        };
        // The patient key from the message itself, not the outbox entry's (an operator's
        // retry of a dead letter queues it without one): the gate must see the ZFA.
        let patient_key = crate::router::extract(&msg)
            .ok()
            .and_then(|f| f.patient_key);
        let admin = match &patient_key {
            Some(k) => match store.patient(&owner, k) {
                Ok(p) => p,
                Err(e) => return PeerAnswer::Error(e.to_string()),
            },
            None => None,
        };
        let state = crate::dmp::PatientState {
            zfa: admin.as_ref().map(|a| a.zfa.as_slice()),
            // Oppositions recorded through the admin API: not yet (ZFA-9 only).
            opposed: false,
        };
        let enabled = est.is_some_and(|e| e.dmp.is_some());
        if let Err(w) = crate::dmp::gate(&msg, enabled, &state) {
            return PeerAnswer::Withheld(w.as_str());
        }
        if let Some(status) = crate::dmp::amendment(&msg) {
            return PeerAnswer::Rejected(format!(
                "a {status} to the DMP (replacement or deletion of a published document) is not supported yet; publish it by hand"
            ));
        }
        let Some(est) = est else {
            return PeerAnswer::Rejected("owning establishment not configured".into());
        };
        let publisher = crate::fhir::mhd::Publisher {
            id: est.id.as_str(),
            name: &est.name,
            finess: est.finess.first().map(String::as_str),
        };
        let bundle = match crate::fhir::mhd::provide_bundle(
            &msg,
            &prepared,
            permit.seq(),
            &publisher,
            self.cfg.fhir.zone,
            crate::time::now_ms(),
        ) {
            Ok(b) => b,
            Err(e) => return PeerAnswer::Rejected(format!("cannot build the DMP submission: {e}")),
        };
        let client = match self.client(&owner) {
            Ok(c) => c,
            Err(e) => return PeerAnswer::Error(e),
        };
        let sent = tokio::time::timeout(
            self.dest.ack_timeout + self.dest.connect_timeout,
            client.send(
                http::Method::POST,
                &self.path,
                crate::sources::fhir::FHIR_JSON,
                bundle.json.into_bytes(),
            ),
        )
        .await;
        match sent {
            Err(_) => PeerAnswer::Error(format!(
                "no answer within {:?}",
                self.dest.ack_timeout + self.dest.connect_timeout
            )),
            Ok(Err(e)) => PeerAnswer::Error(e.to_string()),
            Ok(Ok(a)) if (200..300).contains(&a.status) => PeerAnswer::Accepted,
            Ok(Ok(a)) if a.status == 408 || a.status == 429 || a.status >= 500 => {
                PeerAnswer::Error(format!("DMP answered HTTP {}", a.status))
            }
            Ok(Ok(a)) => PeerAnswer::Rejected(format!(
                "DMP refused the submission: HTTP {}{}",
                a.status,
                issue_codes(&a.body)
            )),
        }
    }
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
