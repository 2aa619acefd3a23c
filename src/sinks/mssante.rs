//! The MSSanté sender: mails a result to the practitioners (and, when the sender asks, the
//! patient) that `policy::mail_permit` allows, over SMTP with TLS (implicit, or STARTTLS
//! required: never in clear) and the owning establishment's client certificate, the server
//! verified against the configured CAs. It runs in the common destination worker
//! (`sinks::mllp::run_destination`: FIFO, retries with backoff, dead letters, durable
//! outcomes); what differs is here:
//!
//! - recipients are decided at send time (directory, whitelist, care links and oppositions
//!   as they are then); each candidate's outcome is journalled with the delivery, a refusal
//!   by its reason; a result nobody may receive is *withheld*, not a dead letter;
//! - one mail per recipient (nobody learns another's address; a server's refusal is one
//!   recipient's), each with a Message-ID stable across retries (`mssante::mdn::message_id`:
//!   a resent mail is the same mail, and a read receipt names its mail); each mail the
//!   server takes is recorded durably before the next (`StoreHandle::mail_sent`, which also
//!   acknowledges it to the sender as a ZAM^Z02 when asked), and a retry skips those;
//! - 4xx answers are retried with backoff; a 5xx refuses that recipient (`server_refused`),
//!   and the message is a dead letter when the server refused every one; only the status
//!   code is kept (a server's text may quote an address, and a patient's address holds his
//!   INS).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use lettre::transport::smtp::client::{
    Certificate, CertificateStore, Identity, Tls, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::dmp::Stamp;
use crate::config::{Config, Destination, DestinationKind, Establishment};
use crate::dmp::Amendment;
use crate::hl7::Message;
use crate::mssante::receipts::{self, Who};
use crate::mssante::recipients::{self, Candidate};
use crate::mssante::{mail, mdn, xdm};
use crate::policy::{self, MailCase, MailPermit, Permit};
use crate::sinks::mllp::PeerAnswer;
use crate::store::writer::MailOutcome;
use crate::store::{SentMail, Store, StoreError, StoreHandle, mss_report_key};

type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// The MSSanté destination's sender.
pub struct MssanteSink {
    dest: Destination,
    cfg: Arc<Config>,
    store: StoreHandle,
    /// One SMTP transport per establishment (its certificate), made again when one of its
    /// files changed (a renewed certificate).
    transports: HashMap<String, (Stamp, Transport)>,
}

impl crate::policy::MailLookup for Store {
    type Error = StoreError;
    fn mailbox(&self, address: &str) -> Result<Option<crate::mssante::Mailbox>, StoreError> {
        Store::mailbox(self, address)
    }
    fn mailboxes_of(&self, rpps: &str) -> Result<Vec<crate::mssante::Mailbox>, StoreError> {
        Store::mailboxes_of(self, rpps)
    }
    fn whitelisted(&self, domain: &str) -> Result<bool, StoreError> {
        Store::whitelisted(self, domain)
    }
    fn care_link(
        &self,
        establishment: &str,
        patient_key: &str,
        rpps: &str,
    ) -> Result<Option<crate::access::Link>, StoreError> {
        Store::care_link(self, establishment, patient_key, rpps)
    }
}

/// Counts each candidate's outcome (`sent` or a `policy::MailRefusal` name: fixed labels).
pub fn count(outcomes: &[MailOutcome]) {
    for o in outcomes {
        metrics::counter!(crate::telemetry::names::MSSANTE_RECIPIENTS, "outcome" => o.outcome.clone())
            .increment(1);
    }
}

impl MssanteSink {
    pub fn new(dest: Destination, cfg: Arc<Config>, store: StoreHandle) -> MssanteSink {
        MssanteSink {
            dest,
            cfg,
            store,
            transports: HashMap::new(),
        }
    }

    fn ca(&self) -> Option<PathBuf> {
        match &self.dest.kind {
            DestinationKind::Mssante { ca: Some(ca), .. } => Some(ca.clone()),
            _ => self.cfg.tls.as_ref().map(|t| t.ca.clone()),
        }
    }

    fn transport(&mut self, est: &Establishment) -> Result<Transport, String> {
        let m = est
            .mssante
            .as_ref()
            .ok_or_else(|| format!("establishment {} does not mail by MSSanté", est.id))?;
        let ca = self
            .ca()
            .ok_or("no CA to verify the SMTP server with ([mssante] ca or [tls] ca)")?;
        let stamp = Stamp::of(&[&ca, &m.cert, &m.key]);
        let cached = self.transports.get(est.id.as_str());
        if let Some((s, t)) = cached
            && *s == stamp
        {
            return Ok(t.clone());
        }
        match self.make_transport(&ca, m) {
            Ok(t) => {
                if cached.is_some() {
                    tracing::info!(destination = %self.dest.name, establishment = %est.id, "MSSanté client certificate reloaded");
                }
                self.transports
                    .insert(est.id.to_string(), (stamp, t.clone()));
                Ok(t)
            }
            // A renewal half-written: the certificate that worked stays in use.
            Err(e) => match cached {
                Some((_, t)) => {
                    tracing::warn!(destination = %self.dest.name, establishment = %est.id, error = %e, "the MSSanté client certificate changed but does not load: the previous one stays in use");
                    Ok(t.clone())
                }
                None => Err(e),
            },
        }
    }

    fn make_transport(
        &self,
        ca: &std::path::Path,
        m: &crate::config::EstablishmentMssante,
    ) -> Result<Transport, String> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let (ca_pem, key_pem) = (read(ca)?, read(&m.key)?);
        // lettre 0.11's `Identity::from_pem` keeps the certificate bytes it is given as
        // the DER of a one-certificate chain (rustls back end): it is given the leaf's DER
        // (DECISIONS D15: the chain's intermediates are not sent).
        let leaf = crate::tls::load_certs(&m.cert)
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
            .ok_or_else(|| format!("{}: no certificate", m.cert.display()))?;
        let server_name = self.dest.server_name.clone().unwrap_or_default();
        let min = match self.cfg.tls.as_ref().map(|t| t.min_version) {
            Some(crate::tls::MinVersion::Tls12) => {
                lettre::transport::smtp::client::TlsVersion::Tlsv12
            }
            _ => lettre::transport::smtp::client::TlsVersion::Tlsv13,
        };
        let params = TlsParameters::builder(server_name)
            .certificate_store(CertificateStore::None)
            .add_root_certificate(Certificate::from_pem(&ca_pem).map_err(|e| e.to_string())?)
            .identify_with(Identity::from_pem(leaf.as_ref(), &key_pem).map_err(|e| e.to_string())?)
            .set_min_tls_version(min)
            .build_rustls()
            .map_err(|e| e.to_string())?;
        let starttls = matches!(
            self.dest.kind,
            DestinationKind::Mssante { starttls: true, .. }
        );
        let tls = if starttls {
            Tls::Required(params)
        } else {
            Tls::Wrapper(params)
        };
        let (host, port) = self
            .dest
            .address
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .ok_or("the SMTP address is not host:port")?;
        let hello = crate::mssante::domain_of(&m.from).to_owned();
        Ok(Transport::builder_dangerous(host)
            .port(port)
            .tls(tls)
            .timeout(Some(self.dest.ack_timeout))
            .hello_name(ClientId::Domain(hello))
            .build())
    }

    /// One attempt for one stored message.
    pub async fn send(&mut self, permit: &Permit, raw: &[u8]) -> PeerAnswer {
        let store = self.store.store();
        let rec = match store.record(permit.seq()) {
            Ok(Some(r)) => r,
            Ok(None) => return PeerAnswer::Rejected("message record missing".into()),
            Err(e) => return PeerAnswer::Error(e.to_string()),
        };
        let cfg = Arc::clone(&self.cfg);
        let Some(est) = rec
            .establishment()
            .and_then(|e| cfg.establishment_by_name(e.as_str()))
        else {
            return PeerAnswer::Rejected("owning establishment not configured".into());
        };
        let Some(mss) = est.mssante.as_ref() else {
            return PeerAnswer::MailWithheld("not_enabled", Vec::new());
        };
        let prepared = crate::hl7::message::prepare(raw);
        let Ok(msg) = Message::parse(&prepared) else {
            return PeerAnswer::Rejected("stored message unreadable".into());
        };
        let mut candidates = recipients::from_message(&msg);
        for s in recipients::standing(&mss.recipients) {
            let dup = candidates.iter().any(|c| {
                (s.rpps.is_some() && c.rpps == s.rpps)
                    || (s.address.is_some() && c.address == s.address)
            });
            if !dup {
                candidates.push(s);
            }
        }
        // The report this message is a version of; an amendment also goes to whoever was
        // mailed an earlier version (the policy decides him again).
        let facts = crate::router::extract(&msg).ok();
        let lineage = crate::dmp::report_lineage(&msg, facts.as_ref());
        if crate::dmp::amendment(&msg).is_some() {
            for key in lineage.iter().flat_map(|l| &l.previous) {
                let earlier = match store.report_recipients(&mss_report_key(est.id.as_str(), key)) {
                    Ok(r) => r,
                    Err(e) => return PeerAnswer::Error(e.to_string()),
                };
                for r in earlier {
                    let dup = candidates.iter().any(|c| {
                        c.address.as_deref() == Some(r.address.as_str())
                            || (r.rpps.is_some() && c.rpps == r.rpps)
                    });
                    if !dup {
                        candidates.push(Candidate {
                            named: recipients::Named::Earlier,
                            rpps: r.rpps,
                            address: Some(r.address),
                            bad_address: false,
                            patient: r.patient,
                        });
                    }
                }
            }
        }
        let report = lineage.map(|l| mss_report_key(est.id.as_str(), &l.current));
        if candidates.is_empty() {
            return PeerAnswer::MailWithheld("no_recipient", Vec::new());
        }
        // Without the directory or the whitelist nobody could be mailed: an instance started
        // before its first import waits (retries) instead of withholding for good.
        match store.mssante_ready() {
            Ok(false) => {
                return PeerAnswer::Error(
                    "the MSSanté directory or whitelist is empty: import them".into(),
                );
            }
            Ok(true) => {}
            Err(e) => return PeerAnswer::Error(e.to_string()),
        }
        // The patient's opposition is read by his key (his local identifier, else his INS
        // under its OID: `labroute mssante oppose --authority <OID> --id <INS>`); a result
        // whose patient has neither is not mailed (an opposition could not be seen).
        let patient_key = facts
            .as_ref()
            .and_then(|f| f.patient_key.clone())
            .or_else(|| {
                crate::dmp::ins(&msg)
                    .map(|(value, oid)| crate::store::writer::patient_key(&oid, &value))
            });
        let Some(patient_key) = patient_key else {
            return PeerAnswer::MailWithheld("no_patient_key", Vec::new());
        };
        let opposed = match store.patient(est.id.as_str(), &patient_key) {
            Ok(p) => p.is_some_and(|p| p.sharing_opposition.is_some()),
            Err(e) => return PeerAnswer::Error(e.to_string()),
        };
        let ins = crate::dmp::identity_qualified(&msg)
            .then(|| crate::dmp::ins(&msg).map(|(v, _)| v))
            .flatten();
        let flag = |name: &str| crate::dmp::flag(&msg, name).or_else(|| loose_flag(&msg, name));
        let case = MailCase {
            dest_ps: flag("DESTMSSANTEPS"),
            dest_patient: flag("DESTMSSANTEPAT"),
            masked: flag("MASQUE_PS"),
            invisible_patient: flag("INVISIBLE_PATIENT"),
            ins: ins.as_deref(),
            patient_key: Some(patient_key.as_str()),
            opposed,
            establishment: est,
        };
        let seq = permit.seq();
        // Mails an earlier attempt handed over: not sent again.
        let already = match store.mails_sent(seq) {
            Ok(m) => m,
            Err(e) => return PeerAnswer::Error(e.to_string()),
        };
        let mut outcomes: Vec<MailOutcome> = Vec::new();
        let mut permits: Vec<MailPermit> = Vec::new();
        for c in &candidates {
            let decision = match policy::mail_permit(permit, c, &case, store) {
                Ok(d) => d,
                Err(e) => return PeerAnswer::Error(e.to_string()),
            };
            let outcome = match decision {
                Ok(p) => {
                    let who = Who {
                        address: Some(p.address().to_owned()),
                        rpps: p.rpps().map(str::to_owned),
                    };
                    if !permits.iter().any(|q| q.address() == p.address()) {
                        permits.push(p);
                    }
                    outcome_of(c, "sent".into(), who)
                }
                Err(r) => {
                    let who = Who {
                        address: c.address.clone(),
                        rpps: c.rpps.clone(),
                    };
                    outcome_of(c, r.to_string(), who)
                }
            };
            outcomes.push(outcome);
        }
        if permits.is_empty() {
            return PeerAnswer::MailWithheld("no_authorised_recipient", outcomes);
        }
        // A document that cannot be read is the sender's error: never mailed without it.
        let docs = match crate::fhir::mhd::documents(&msg) {
            Ok(d) => d,
            Err(e) => return PeerAnswer::Rejected(e.to_string()),
        };
        let content = Content::of(&msg, docs, &rec.sha256, rec.received_at_ms, est);
        let transport = match self.transport(est) {
            Ok(t) => t,
            Err(e) => return PeerAnswer::Error(e),
        };
        // One mail per recipient: no recipient learns another's address (an RPPS may
        // resolve to a mailbox its owner keeps unlisted from the others), a server's refusal
        // of one recipient is his alone, and each read receipt names its mail.
        let domain = crate::mssante::domain_of(&mss.from).to_owned();
        let mut refused = None;
        for p in &permits {
            if already.iter().any(|m| m.address == p.address()) {
                continue;
            }
            let group = if p.patient() { "patient" } else { "ps" };
            let to = [p.address().to_owned()];
            let message_id = mdn::message_id(seq, p.address(), &domain);
            let m = match content.mail(&self.dest, mss, &msg, group, &to, message_id) {
                Ok(m) => m,
                Err(e) => return PeerAnswer::Rejected(e.to_string()),
            };
            match transport.send(m).await {
                Ok(_) => {
                    let sent = SentMail {
                        address: p.address().to_owned(),
                        rpps: p.rpps().map(str::to_owned),
                        patient: p.patient(),
                        at_ms: 0,
                        read: None,
                        report: report.clone(),
                    };
                    // Durable before the next one: a retry after a crash skips him.
                    if let Err(e) = self.store.mail_sent(seq, sent).await {
                        return PeerAnswer::Error(e.to_string());
                    }
                }
                // This recipient refused by the server (5xx): his outcome, not the others'.
                Err(e) if e.is_permanent() => {
                    for o in outcomes
                        .iter_mut()
                        .filter(|o| o.who.address.as_deref() == Some(p.address()))
                    {
                        o.outcome = receipts::SERVER_REFUSED.into();
                    }
                    refused = Some(classify(&e));
                }
                Err(e) => return classify(&e),
            }
        }
        // Nobody's mail taken: the server refused them all, a dead letter.
        match refused {
            Some(answer) if !outcomes.iter().any(|o| o.outcome == "sent") => answer,
            _ => PeerAnswer::Mailed(outcomes),
        }
    }
}

fn outcome_of(c: &Candidate, outcome: String, who: Who) -> MailOutcome {
    MailOutcome {
        recipient: c.label(),
        named: c.named.as_str().to_owned(),
        outcome,
        who,
    }
}

/// A lettre error as the worker reads it: 4xx retried, 5xx a dead letter; the status code
/// only (the server's text may quote an address).
fn classify(e: &lettre::transport::smtp::Error) -> PeerAnswer {
    match e.status() {
        Some(code) if e.is_permanent() => {
            PeerAnswer::Rejected(format!("the SMTP server refused the mail ({code})"))
        }
        Some(code) => PeerAnswer::Error(format!("the SMTP server deferred the mail ({code})")),
        // Fixed texts: lettre's own may quote the server's answer.
        None if e.is_tls() => PeerAnswer::Error("TLS with the SMTP server failed".into()),
        None if e.is_timeout() => {
            PeerAnswer::Error("the SMTP server did not answer in time".into())
        }
        None if e.is_response() => {
            PeerAnswer::Error("the SMTP server's answer could not be read".into())
        }
        None => PeerAnswer::Error("SMTP connection failed".into()),
    }
}

/// A flag written the LPS way (OBX-3.1 the name, no coding system: the ANS "LPS MSSanté"
/// examples).
fn loose_flag(msg: &Message<'_>, name: &str) -> Option<bool> {
    msg.segments_named("OBX").find_map(|o| {
        (o.field(3).component(1).text() == name)
            .then(|| o.field(5).component(1).text().eq_ignore_ascii_case("Y"))
    })
}

/// An ED OBX that carries a mail body: `CORPSMAIL_PS` / `CORPSMAIL_PATIENT` (MetaDMPMSS),
/// or the LPS profile's `XDM/1.0/DDM` entry.
fn body_of(msg: &Message<'_>, name: &str) -> Option<String> {
    msg.segments_named("OBX").find_map(|o| {
        let id = o.field(3);
        let named = (id.component(1).text() == name && id.component(3).text() == "MetaDMPMSS")
            || (name == "CORPSMAIL_PS" && crate::dmp::is_lps_mail_body(&o));
        if !named || o.field(2).text() != "ED" {
            return None;
        }
        let at = crate::fhir::At {
            segment: "OBX",
            occurrence: 1,
            field: 5,
        };
        let (bytes, _) = crate::fhir::v2::ed_bytes(o.field(5).repetition(1), at).ok()?;
        String::from_utf8(bytes)
            .ok()
            .filter(|s| !s.trim().is_empty())
    })
}

/// What every mail of one message carries.
struct Content {
    docs: Vec<crate::fhir::mhd::Document>,
    /// A text rendering of the results, when the message carries no document.
    text: Option<Vec<u8>>,
    amendment: Option<Amendment>,
    patient_id: String,
    submission_seed: String,
    /// When labroute received the message: the submission time, the same on every retry.
    submitted: String,
    source_id: String,
    institution: (String, String),
    reply_to: Option<String>,
    read_receipt: bool,
}

impl Content {
    fn of(
        msg: &Message<'_>,
        docs: Vec<crate::fhir::mhd::Document>,
        sha256: &str,
        received_ms: u64,
        est: &Establishment,
    ) -> Content {
        let text = docs.is_empty().then(|| rendering(msg));
        let patient_id = crate::dmp::ins(msg)
            .map(|(v, oid)| format!("{v}^^^&{oid}&ISO"))
            .unwrap_or_default();
        let reply_to = msg
            .segments_named("PRT")
            .filter(|p| p.field(4).component(1).text() == "REPLY")
            .flat_map(|p| {
                p.field(15)
                    .repetitions()
                    .filter(|x| x.component(3).text().eq_ignore_ascii_case("X.400"))
                    .filter_map(|x| crate::mssante::normalise_address(&x.component(4).text()))
                    .collect::<Vec<_>>()
            })
            .next();
        let read_receipt = crate::dmp::flag(msg, "ACK_LECTURE_MSS")
            .or_else(|| loose_flag(msg, "ACK_LECTURE"))
            .unwrap_or(false);
        let source = crate::fhir::mhd::source_oid(est.id.as_str());
        Content {
            docs,
            text,
            amendment: crate::dmp::amendment(msg),
            patient_id,
            submission_seed: sha256.to_owned(),
            submitted: crate::time::hl7_timestamp(received_ms)
                .trim_end_matches("+0000")
                .to_owned(),
            source_id: source.trim_start_matches("urn:oid:").to_owned(),
            institution: (
                est.name.clone(),
                est.finess.first().cloned().unwrap_or_default(),
            ),
            reply_to,
            read_receipt,
        }
    }

    fn oid(&self, kind: &str, n: usize) -> String {
        let seed = crate::model::sha256(self.submission_seed.as_bytes());
        crate::fhir::mhd::oid_of(&crate::fhir::v2::uuid(&seed, kind, n))
            .trim_start_matches("urn:oid:")
            .to_owned()
    }

    fn mail(
        &self,
        dest: &Destination,
        mss: &crate::config::EstablishmentMssante,
        msg: &Message<'_>,
        group: &str,
        to: &[String],
        message_id: String,
    ) -> Result<lettre::Message, mail::MailError> {
        let (subject, default_body) = match &dest.kind {
            DestinationKind::Mssante { subject, body, .. } => (subject.as_str(), body.as_str()),
            _ => ("Compte rendu de biologie", ""),
        };
        let subject = match self.amendment {
            Some(Amendment::Correction) => format!("Mise à jour : {subject}"),
            Some(Amendment::Deletion) => format!("Annulation : {subject}"),
            None => subject.to_owned(),
        };
        let deletion = self.amendment == Some(Amendment::Deletion);
        let body = if deletion {
            "Bonjour,\r\n\r\nLe compte rendu transmis précédemment sous la même référence est annulé : ne le prenez plus en compte.\r\n".to_owned()
        } else {
            let name = if group == "patient" {
                "CORPSMAIL_PATIENT"
            } else {
                "CORPSMAIL_PS"
            };
            body_of(msg, name).unwrap_or_else(|| default_body.to_owned())
        };
        let submission_id = self.oid("submission", 0);
        let docs: Vec<xdm::Document<'_>> = if deletion {
            Vec::new()
        } else if self.docs.is_empty() {
            self.text
                .iter()
                .map(|t| xdm::Document {
                    bytes: t,
                    mime: "text/plain",
                    unique_id: "",
                    title: "Résultats de biologie",
                    type_code: ("11502-2", "CR d'examens biologiques"),
                    creation_time: "",
                    confidentiality: "N",
                })
                .collect()
        } else {
            self.docs
                .iter()
                .map(|d| xdm::Document {
                    bytes: &d.bytes,
                    mime: &d.mime,
                    unique_id: "",
                    title: &d.type_display,
                    type_code: (&d.type_code, &d.type_display),
                    creation_time: &d.created,
                    confidentiality: "N",
                })
                .collect()
        };
        let doc_ids: Vec<String> = (0..docs.len()).map(|n| self.oid("document", n)).collect();
        let docs: Vec<xdm::Document<'_>> = docs
            .into_iter()
            .zip(&doc_ids)
            .map(|(d, id)| xdm::Document { unique_id: id, ..d })
            .collect();
        let xdm = (!docs.is_empty()).then(|| {
            xdm::package(&xdm::Submission {
                documents: docs,
                patient_id: &self.patient_id,
                unique_id: &submission_id,
                source_id: &self.source_id,
                submission_time: &self.submitted,
                institution: (&self.institution.0, &self.institution.1),
                recipients: to,
                vendor: concat!("labroute ", env!("CARGO_PKG_VERSION")),
            })
        });
        let mut renderings = Vec::new();
        if !deletion {
            for (i, d) in self.docs.iter().enumerate() {
                if d.mime == "application/pdf" {
                    renderings.push((
                        format!("CR{:02}.PDF", i + 1),
                        d.mime.clone(),
                        d.bytes.clone(),
                    ));
                }
            }
        }
        mail::build(&mail::Mail {
            from: &mss.from,
            to,
            reply_to: self.reply_to.as_deref(),
            subject: &subject,
            body: &body,
            message_id,
            read_receipt: self.read_receipt,
            xdm,
            renderings,
        })
    }
}

/// The results as text, for a message that carries no document: the patient (name, birth
/// date, INS), then one line per observation. Only ever inside the mail, never in its
/// subject, a log or the journal.
fn rendering(msg: &Message<'_>) -> Vec<u8> {
    let mut out = String::from("Résultats de biologie\r\n\r\n");
    if let Some(pid) = msg.segments_named("PID").next() {
        let name = pid.field(5);
        out.push_str(&format!(
            "Patient : {} {}\r\nNé(e) le : {}\r\n",
            name.component(1).text(),
            name.component(2).text(),
            pid.field(7).component(1).text()
        ));
        if let Some((ins, _)) = crate::dmp::ins(msg) {
            out.push_str(&format!("INS : {ins}\r\n"));
        }
        out.push_str("\r\n");
    }
    for o in msg.segments_named("OBX") {
        let id = o.field(3);
        if id.component(3).text() == "MetaDMPMSS" || o.field(2).text() == "ED" {
            continue;
        }
        let label = match id.component(2).text() {
            l if l.is_empty() => id.component(1).text(),
            l => l,
        };
        let value: Vec<String> = o
            .field(5)
            .repetitions()
            .map(|r| r.text().replace('^', " ").trim().to_owned())
            .collect();
        out.push_str(&format!(
            "{label} : {} {}",
            value.join(", "),
            o.field(6).component(1).text()
        ));
        let range = o.field(7).text();
        if !range.is_empty() {
            out.push_str(&format!(" ({range})"));
        }
        let flag = o.field(8).text();
        if !flag.is_empty() {
            out.push_str(&format!(" [{flag}]"));
        }
        out.push_str("\r\n");
    }
    out.into_bytes()
}
