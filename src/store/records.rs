//! What the store keeps, as serialised records.

use serde::{Deserialize, Serialize};

use crate::hl7::ack::{AckError, AppAckType};
use crate::model::{DestinationName, EstablishmentId, MessageClass};
use crate::router::{Decision, QuarantineReason};

/// Where a stored message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordStatus {
    /// Owned and queued to its destinations.
    Routed,
    /// Held: its owner could not be established.
    Quarantined,
    /// Released from quarantine by an operator to a named establishment.
    Released,
    /// Discarded from quarantine by an operator (the bytes are kept).
    Discarded,
    /// Refused with AR (unreadable, unsupported, control id reused); kept for review.
    Rejected,
}

/// One received message (its bytes are in the `raw` table under the same sequence number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub seq: u64,
    pub received_at_ms: u64,
    pub listener: String,
    pub peer: String,
    pub control_id: String,
    pub message_type: String,
    pub class: Option<MessageClass>,
    pub sha256: String,
    pub status: RecordStatus,
    pub decision: Option<Decision>,
    pub rejection: Option<AckError>,
    pub destinations: Vec<DestinationName>,
    /// An application ACK (MSH-16) still owed to the sender, and where it goes.
    #[serde(default)]
    pub app_ack: Option<PendingAppAck>,
    /// The configured system that sent it (TLS listeners), or its certificate identity when
    /// it matched no system.
    #[serde(default)]
    pub sender: Option<String>,
    /// For an application ACK (or a business acknowledgement): the message it answers.
    #[serde(default)]
    pub answers: Option<u64>,
    /// A DMP business acknowledgement (ZAM^Z01) owed to the sender once the DMP's outcome is
    /// known, and where it goes (the listener's `application_acks_to`).
    #[serde(default)]
    pub business_ack: Option<DestinationName>,
    /// MSSanté business acknowledgements the sender asked for (ZAM^Z02 for each
    /// recipient's reception or refusal, ZAM^Z03 for each read receipt), and where they go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_acks: Option<MailAcks>,
}

/// The MSSanté acknowledgements a message's sender asked for (`ACK_RECEPTION`,
/// `ACK_LECTURE_MSS`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailAcks {
    pub to: DestinationName,
    pub reception: bool,
    pub read: bool,
}

/// One mail the MSSanté sender handed to the SMTP server (250) for one recipient of one
/// message: what its read receipt (MDN) is matched with, and what a retry skips.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentMail {
    pub address: String,
    /// The recipient's RPPS, when known.
    #[serde(default)]
    pub rpps: Option<String>,
    /// The patient's own mailbox (its address holds his INS: never journalled).
    #[serde(default)]
    pub patient: bool,
    pub at_ms: u64,
    /// The read receipt, once one came: displayed (Y) or deleted unread (N), and when.
    #[serde(default)]
    pub read: Option<(bool, u64)>,
    /// The report it was a version of (`mss_report_key`): who gets its amendments.
    #[serde(default)]
    pub report: Option<String>,
}

/// Someone mailed a version of a report (`MSS_REPORTS`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRecipient {
    pub address: String,
    pub rpps: Option<String>,
    pub patient: bool,
}

/// The key of a report (`dmp::lineage`: its order, or its document number) in one
/// establishment, for the MSSanté recipients of its versions.
pub fn mss_report_key(establishment: &str, lineage: &str) -> String {
    format!("{establishment}\u{1f}{lineage}\u{1f}")
}

impl SentMail {
    /// How the journal names the recipient: his RPPS, else his address; `patient` for the
    /// patient's mailbox.
    pub fn label(&self) -> String {
        if self.patient {
            "patient".into()
        } else if let Some(r) = &self.rpps {
            format!("rpps:{r}")
        } else {
            self.address.clone()
        }
    }
}

/// An application ACK the sender asked for, sent once the message's outcome is final:
/// AA when every destination accepted it, AE when one dead-lettered it (an AA follows if an
/// operator's retry then delivers it), AR when an operator discarded it from quarantine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAppAck {
    pub mode: AppAckType,
    pub to: DestinationName,
}

impl MessageRecord {
    pub fn establishment(&self) -> Option<&EstablishmentId> {
        self.decision.as_ref().and_then(|d| d.establishment())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub seq: u64,
    pub enqueued_at_ms: u64,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    pub last_error: Option<String>,
    /// Patient key, for per-patient ordering.
    pub patient: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub seq: u64,
    pub reason: String,
    pub at_ms: u64,
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    pub reason: QuarantineReason,
    pub at_ms: u64,
}

/// ADT data kept per patient and establishment (PAM France ZFA: DMP status, opposition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientAdmin {
    pub updated_at_ms: u64,
    /// The ADT the ZFA came from (0: none yet, only an operator's opposition).
    pub from_seq: u64,
    pub zfa: Vec<String>,
    /// An opposition to the DMP feed recorded by an operator (`labroute dmp oppose`).
    #[serde(default)]
    pub opposition: Option<OperatorOpposition>,
    /// The patient's opposition to sharing his results outside the establishment
    /// (MSSanté to professionals, the results server), recorded by an operator
    /// (`labroute mssante oppose`).
    #[serde(default)]
    pub sharing_opposition: Option<OperatorOpposition>,
}

/// Who recorded an opposition, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorOpposition {
    pub at_ms: u64,
    pub operator: String,
}

/// An operator action, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorRecord {
    pub at_ms: u64,
    pub operator: String,
    pub action: String,
    pub seq: u64,
    pub detail: String,
}

/// A document labroute published to the DMP and that is current there, kept so that a later
/// version of the same report replaces it (`relatesTo`) and a deletion names it. Keyed by
/// establishment, order and the document's place in the report (`dmp_document_key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmpDocument {
    /// The DocumentReference's masterIdentifier (`urn:oid:2.25.…`, ours).
    pub master_id: String,
    /// Where the DMP put it (`DocumentReference/<id>`), when its answer said.
    pub location: Option<String>,
    /// The patient's INS it was published under: a later version must name the same.
    pub ins: String,
    /// The message it came from.
    pub seq: u64,
    pub at_ms: u64,
}

/// A change to the DMP document register, made with a delivery's outcome: the document now
/// current under `key`, or `None` when it was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmpChange {
    pub key: String,
    pub doc: Option<DmpDocument>,
    /// The key the replaced version was registered under, when not `key` (an MDM
    /// replacement has a new document number): that entry goes.
    #[serde(default)]
    pub from: Option<String>,
}

/// The register key of a report's documents: establishment and the report's lineage key
/// (`dmp::Lineage`); `dmp_document_key` adds the document's place.
pub fn dmp_order_key(establishment: &str, order: &str) -> String {
    format!("{establishment}\u{1e}{order}\u{1e}")
}

/// The register key of the `n`th document (from 0) of an order's report.
pub fn dmp_document_key(establishment: &str, order: &str, n: usize) -> String {
    format!("{}{n:04}", dmp_order_key(establishment, order))
}

/// A practitioner a result named in a patient's care.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CareLink {
    pub link: crate::access::Link,
    /// The result that named him first.
    pub seq: u64,
    pub at_ms: u64,
}

/// Access to a patient's results granted to a practitioner by an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CareGrant {
    pub operator: String,
    pub at_ms: u64,
}

/// Key of the PATIENTS table: establishment, patient key (`router::Facts::patient_key`).
pub fn patient_admin_key(establishment: &str, patient_key: &str) -> String {
    format!("{establishment}\u{1f}{patient_key}")
}

/// Key of the care tables: establishment, patient key, RPPS.
pub fn care_key(establishment: &str, patient_key: &str, rpps: &str) -> String {
    format!("{establishment}\u{1e}{patient_key}\u{1e}{rpps}")
}

/// Prefix of the RESULTS keys of one patient of one establishment.
pub fn result_key_prefix(establishment: &str, patient_key: &str) -> String {
    format!("{establishment}\u{1e}{patient_key}\u{1e}")
}

/// Key of the RESULTS table: establishment, patient key, message number (sorts by number).
pub fn result_key(establishment: &str, patient_key: &str, seq: u64) -> String {
    format!("{}{seq:020}", result_key_prefix(establishment, patient_key))
}

/// Key of the PATIENT_IDS table: identifier value, system (empty when none), establishment,
/// patient key.
pub fn patient_id_key(
    value: &str,
    system: Option<&str>,
    establishment: &str,
    patient_key: &str,
) -> String {
    format!(
        "{value}\u{1e}{}\u{1e}{establishment}\u{1e}{patient_key}",
        system.unwrap_or("")
    )
}
