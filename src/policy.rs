//! The one place that decides whether a stored message may go to a destination, and what an
//! operator may see and act on. A sink sends only with a [`Permit`], and only [`permit`]
//! makes one: cross-tenant delivery needs a permit this function refuses to make. An operator
//! acts through an [`OperatorScope`], and [`OperatorScope::sees`] is the one test of whether
//! a stored message is within it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::config::{Config, System};
use crate::model::{DestinationName, EstablishmentId};
use crate::store::{MessageRecord, RecordStatus};

/// Leave to send one stored message to one destination. Its fields are private: no other
/// module can make one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    seq: u64,
    destination: DestinationName,
    /// MSH-10 of the message, which the peer's MSA-2 must echo.
    control_id: String,
    /// False for our application ACKs, which are not acknowledged.
    expects_answer: bool,
}

impl Permit {
    pub fn seq(&self) -> u64 {
        self.seq
    }
    pub fn destination(&self) -> &DestinationName {
        &self.destination
    }
    pub fn control_id(&self) -> &str {
        &self.control_id
    }
    pub fn expects_answer(&self) -> bool {
        self.expects_answer
    }
}

/// Why no permit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("message {0} has no owning establishment (quarantined, refused or discarded)")]
    NotOwned(u64),
    #[error(
        "message {seq} belongs to {establishment}; {destination} is not one of its destinations"
    )]
    NotItsDestination {
        seq: u64,
        establishment: String,
        destination: String,
    },
    #[error(
        "message {seq} is an application ACK; {destination} is not where its sender's listener sends them"
    )]
    NotItsSender { seq: u64, destination: String },
    #[error(
        "message {seq} belongs to {establishment}; the system receiving for {destination} does not speak for it"
    )]
    RecipientNotForTenant {
        seq: u64,
        establishment: String,
        destination: String,
    },
}

/// Checks (message tenant, destination, recipient) and makes the permit:
/// - an owned message (routed, or released by an operator) may go only to the destinations
///   routing gives its class and owner: a result to its owner's record, orders and ADT to
///   the configured lab destinations; and when the destination is known by its certificate
///   (`system`), only if that system speaks for the owner;
/// - an application ACK (`answers` = the message it answers) only to the
///   `application_acks_to` of the listener that message came in on.
pub fn permit(
    rec: &MessageRecord,
    destination: &DestinationName,
    cfg: &Config,
    answered: Option<&MessageRecord>,
) -> Result<Permit, Denied> {
    let ok = || {
        Ok(Permit {
            seq: rec.seq,
            destination: destination.clone(),
            control_id: rec.control_id.clone(),
            // An ACK is not answered; a business acknowledgement (ZAM) is a message like
            // any other.
            expects_answer: rec.answers.is_none() || rec.message_type != "ACK",
        })
    };
    if rec.answers.is_some() {
        let allowed = answered
            .filter(|a| Some(a.seq) == rec.answers)
            .and_then(|a| cfg.listener(&a.listener))
            .and_then(|l| l.application_acks_to.as_ref());
        return if allowed == Some(destination) {
            ok()
        } else {
            Err(Denied::NotItsSender {
                seq: rec.seq,
                destination: destination.to_string(),
            })
        };
    }
    let owned = matches!(rec.status, RecordStatus::Routed | RecordStatus::Released);
    let (Some(owner), Some(class), true) = (rec.establishment(), rec.class, owned) else {
        return Err(Denied::NotOwned(rec.seq));
    };
    if crate::router::destinations(class, owner, cfg).contains(destination) {
        let recipient = cfg
            .destination(destination)
            .and_then(|d| d.system.as_ref())
            .map(|n| cfg.system(n));
        match recipient {
            // No system configured: the destination is known by its address (and name).
            None => ok(),
            Some(Some(sys)) if sys.speaks_for(owner) => ok(),
            Some(_) => Err(Denied::RecipientNotForTenant {
                seq: rec.seq,
                establishment: owner.to_string(),
                destination: destination.to_string(),
            }),
        }
    } else {
        Err(Denied::NotItsDestination {
            seq: rec.seq,
            establishment: owner.to_string(),
            destination: destination.to_string(),
        })
    }
}

/// Leave to mail one stored message to one MSSanté address. Only [`mail_permit`] makes
/// one, from a message [`Permit`] for the MSSanté destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailPermit {
    seq: u64,
    address: String,
    patient: bool,
    rpps: Option<String>,
}

impl MailPermit {
    pub fn seq(&self) -> u64 {
        self.seq
    }
    pub fn address(&self) -> &str {
        &self.address
    }
    /// The patient's own mailbox (its own mail, its own body).
    pub fn patient(&self) -> bool {
        self.patient
    }
    /// The practitioner's RPPS (the message's, else the directory's).
    pub fn rpps(&self) -> Option<&str> {
        self.rpps.as_deref()
    }
}

/// Why a candidate recipient is not mailed (journalled and counted by this name; the
/// sender hears it in its business acknowledgement when it asked for one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MailRefusal {
    /// `DESTMSSANTEPS` = N: the sender asked for no professional.
    #[error("destmssanteps_no")]
    NotForProfessionals,
    /// `MASQUE_PS` = Y: the document is hidden from professionals.
    #[error("masked_from_professionals")]
    Masked,
    /// A patient's mailbox without `DESTMSSANTEPAT` = Y.
    #[error("patient_not_asked")]
    PatientNotAsked,
    /// `INVISIBLE_PATIENT` = Y: not for the patient's eyes.
    #[error("invisible_to_patient")]
    InvisibleToPatient,
    /// A patient's mailbox that is not this patient's (its local part is not his INS).
    #[error("not_this_patient")]
    NotThisPatient,
    /// Not an address.
    #[error("bad_address")]
    BadAddress,
    /// Neither the national directory nor the local one knows the address (or, for an
    /// RPPS, any listed mailbox of his).
    #[error("not_in_directory")]
    NotInDirectory,
    /// The directory gives the address to another practitioner than the message names.
    #[error("address_of_another_practitioner")]
    AddressOfAnother,
    /// The address's domain is not on the trust space's whitelist.
    #[error("domain_not_whitelisted")]
    NotWhitelisted,
    /// Nothing links him to this patient's care (a standing recipient with no care link
    /// or grant).
    #[error("not_in_care")]
    NotInCare,
    /// The patient opposed sharing outside the establishment.
    #[error("patient_opposed")]
    Opposed,
    /// The establishment does not mail by MSSanté (`mssante` not set).
    #[error("not_enabled")]
    NotEnabled,
    /// The ordering provider works in the establishment: he reads the result in its record.
    #[error("inside_establishment")]
    Inside,
}

impl MailRefusal {
    /// The refusal a journal name stands for.
    pub fn from_name(name: &str) -> Option<MailRefusal> {
        MailRefusal::ALL.into_iter().find(|r| r.to_string() == name)
    }

    /// What the sender reads in its business acknowledgement (ZAM^Z02 ERR-5.2).
    pub fn text(self) -> &'static str {
        match self {
            MailRefusal::NotForProfessionals => {
                "Envoi aux professionnels non demandé (DESTMSSANTEPS)"
            }
            MailRefusal::Masked => "Document masqué aux professionnels (MASQUE_PS)",
            MailRefusal::PatientNotAsked => "Envoi au patient non demandé (DESTMSSANTEPAT)",
            MailRefusal::InvisibleToPatient => "Document invisible au patient (INVISIBLE_PATIENT)",
            MailRefusal::NotThisPatient => "Boîte aux lettres d'un autre patient",
            MailRefusal::BadAddress => "Adresse MSSanté illisible",
            MailRefusal::NotInDirectory => "Destinataire absent de l'annuaire",
            MailRefusal::AddressOfAnother => "Adresse d'un autre professionnel dans l'annuaire",
            MailRefusal::NotWhitelisted => "Domaine hors de l'espace de confiance MSSanté",
            MailRefusal::NotInCare => "Destinataire hors de l'équipe de soins du patient",
            MailRefusal::Opposed => "Opposition du patient au partage",
            MailRefusal::NotEnabled => "Messagerie sécurisée non activée pour l'établissement",
            MailRefusal::Inside => "Prescripteur de l'établissement : résultat dans le dossier",
        }
    }

    /// Every name, for metrics and documentation.
    pub const ALL: [MailRefusal; 13] = [
        MailRefusal::NotForProfessionals,
        MailRefusal::Masked,
        MailRefusal::PatientNotAsked,
        MailRefusal::InvisibleToPatient,
        MailRefusal::NotThisPatient,
        MailRefusal::BadAddress,
        MailRefusal::NotInDirectory,
        MailRefusal::AddressOfAnother,
        MailRefusal::NotWhitelisted,
        MailRefusal::NotInCare,
        MailRefusal::Opposed,
        MailRefusal::NotEnabled,
        MailRefusal::Inside,
    ];
}

/// What `mail_permit` reads besides the candidate: the message's flags and patient, the
/// owning establishment, and the directory, whitelist and care links (the store).
pub struct MailCase<'a> {
    /// MetaDMPMSS flags: `DESTMSSANTEPS`, `DESTMSSANTEPAT`, `MASQUE_PS`, `INVISIBLE_PATIENT`.
    pub dest_ps: Option<bool>,
    pub dest_patient: Option<bool>,
    pub masked: Option<bool>,
    pub invisible_patient: Option<bool>,
    /// The patient's INS (PID-3), only when his identity is qualified (PID-32 `VALI`): a
    /// provisional identity never opens a patient's mailbox.
    pub ins: Option<&'a str>,
    /// `router::Facts::patient_key`.
    pub patient_key: Option<&'a str>,
    /// The patient's opposition to sharing outside the establishment.
    pub opposed: bool,
    pub establishment: &'a crate::config::Establishment,
}

/// The directory, the whitelist and the care links, as `mail_permit` reads them.
pub trait MailLookup {
    type Error;
    /// The mailbox an address is, in either directory.
    fn mailbox(&self, address: &str) -> Result<Option<crate::mssante::Mailbox>, Self::Error>;
    /// A practitioner's mailboxes.
    fn mailboxes_of(&self, rpps: &str) -> Result<Vec<crate::mssante::Mailbox>, Self::Error>;
    fn whitelisted(&self, domain: &str) -> Result<bool, Self::Error>;
    fn care_link(
        &self,
        establishment: &str,
        patient_key: &str,
        rpps: &str,
    ) -> Result<Option<crate::access::Link>, Self::Error>;
}

/// Decides one candidate recipient of a message the MSSanté destination holds a
/// [`Permit`] for:
/// - the document's flags: never a professional when `DESTMSSANTEPS` = N or `MASQUE_PS`
///   = Y; the patient's own mailbox only when `DESTMSSANTEPAT` = Y and not
///   `INVISIBLE_PATIENT`, and only his (its local part is his INS);
/// - the address: the one the message gives, which the directory must know (and give to
///   the same practitioner), else the practitioner's listed mailbox (personal first);
/// - its domain on the whitelist;
/// - in the patient's care: named by the message (ordering provider, copy, recipient), or
///   a care link or grant recorded for this patient in this establishment; and the patient
///   has not opposed sharing.
///
/// An ordering provider whose mailboxes all belong to the establishment (by FINESS) is not
/// mailed: he reads the result in its record.
pub fn mail_permit<L: MailLookup>(
    permit: &Permit,
    candidate: &crate::mssante::recipients::Candidate,
    case: &MailCase<'_>,
    lookup: &L,
) -> Result<Result<MailPermit, MailRefusal>, L::Error> {
    use crate::mssante::domain_of;
    if permit.destination.as_str() != crate::mssante::DESTINATION {
        return Ok(Err(MailRefusal::NotEnabled));
    }
    if case.establishment.mssante.is_none() {
        return Ok(Err(MailRefusal::NotEnabled));
    }
    if candidate.bad_address {
        return Ok(Err(MailRefusal::BadAddress));
    }
    let ok = |address: String, patient: bool, rpps: Option<String>| {
        Ok(Ok(MailPermit {
            seq: permit.seq,
            address,
            patient,
            rpps,
        }))
    };
    if candidate.patient {
        let Some(address) = candidate.address.clone() else {
            return Ok(Err(MailRefusal::BadAddress));
        };
        if case.dest_patient != Some(true) {
            return Ok(Err(MailRefusal::PatientNotAsked));
        }
        if case.invisible_patient == Some(true) {
            return Ok(Err(MailRefusal::InvisibleToPatient));
        }
        let local = address.rsplit_once('@').map_or("", |(l, _)| l);
        if case.ins.is_none_or(|ins| !ins.eq_ignore_ascii_case(local)) {
            return Ok(Err(MailRefusal::NotThisPatient));
        }
        if !lookup.whitelisted(domain_of(&address))? {
            return Ok(Err(MailRefusal::NotWhitelisted));
        }
        return ok(address, true, None);
    }
    if case.dest_ps == Some(false) {
        return Ok(Err(MailRefusal::NotForProfessionals));
    }
    if case.masked == Some(true) {
        return Ok(Err(MailRefusal::Masked));
    }
    // The address, and the practitioner it belongs to.
    let (address, mailboxes) = match (&candidate.address, &candidate.rpps) {
        (Some(a), rpps) => {
            let Some(m) = lookup.mailbox(a)? else {
                return Ok(Err(MailRefusal::NotInDirectory));
            };
            if let (Some(want), Some(has)) = (rpps, &m.rpps)
                && want != has
            {
                return Ok(Err(MailRefusal::AddressOfAnother));
            }
            (a.clone(), vec![m])
        }
        (None, Some(rpps)) => {
            let mut listed: Vec<_> = lookup
                .mailboxes_of(rpps)?
                .into_iter()
                .filter(|m| !m.unlisted)
                .collect();
            listed.retain(|m| m.rpps.as_deref() == Some(rpps.as_str()));
            listed.sort_by(|a, b| (a.kind, &a.address).cmp(&(b.kind, &b.address)));
            let Some(first) = listed.first() else {
                return Ok(Err(MailRefusal::NotInDirectory));
            };
            (first.address.clone(), listed)
        }
        (None, None) => return Ok(Err(MailRefusal::BadAddress)),
    };
    let rpps = candidate
        .rpps
        .clone()
        .or_else(|| mailboxes.first().and_then(|m| m.rpps.clone()));
    if candidate.named == crate::mssante::recipients::Named::Ordering {
        let own = &case.establishment.finess;
        // Any mailbox of his attached to the establishment says he works there (a
        // practitioner's own mailbox usually carries no FINESS).
        let inside = mailboxes
            .iter()
            .any(|m| m.finess.iter().any(|f| own.contains(f)));
        if inside {
            return Ok(Err(MailRefusal::Inside));
        }
    }
    if !lookup.whitelisted(domain_of(&address))? {
        return Ok(Err(MailRefusal::NotWhitelisted));
    }
    let in_care = match candidate.named.care() {
        Some(_) => true,
        None => match (rpps.as_deref(), case.patient_key) {
            (Some(r), Some(pk)) => lookup
                .care_link(case.establishment.id.as_str(), pk, r)?
                .is_some(),
            _ => false,
        },
    };
    if !in_care {
        return Ok(Err(MailRefusal::NotInCare));
    }
    if case.opposed {
        return Ok(Err(MailRefusal::Opposed));
    }
    ok(address, false, rpps)
}

/// Who runs an operator command, and within what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    /// The operator system's name (from its certificate), or `local:<user>` at the store.
    pub name: String,
    pub scope: OperatorScope,
}

/// What an operator may see and act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperatorScope {
    /// Every establishment, and what belongs to none (refused handshakes, messages that name
    /// no establishment): an operator certificate allowed every configured establishment, or
    /// the host's administrator working on the store of a stopped instance.
    Instance,
    /// Only these establishments.
    Establishments(BTreeSet<EstablishmentId>),
}

impl OperatorScope {
    /// The scope of an operator system: the whole instance when its certificate is allowed
    /// every configured establishment, else its establishments.
    pub fn of_system(system: &System, cfg: &Config) -> OperatorScope {
        let set: BTreeSet<EstablishmentId> = system.establishments.iter().cloned().collect();
        if !cfg.establishments.is_empty() && cfg.establishments.iter().all(|e| set.contains(&e.id))
        {
            OperatorScope::Instance
        } else {
            OperatorScope::Establishments(set)
        }
    }

    pub fn is_instance(&self) -> bool {
        matches!(self, OperatorScope::Instance)
    }

    pub fn covers(&self, e: &EstablishmentId) -> bool {
        match self {
            OperatorScope::Instance => true,
            OperatorScope::Establishments(set) => set.contains(e),
        }
    }

    /// Whether a stored message is within the scope: every establishment it could belong to
    /// ([`implicated`]) is covered. A message that implicates none belongs to the instance.
    pub fn sees(&self, rec: &MessageRecord, cfg: &Config) -> bool {
        match self {
            OperatorScope::Instance => true,
            OperatorScope::Establishments(set) => {
                let imp = implicated(rec, cfg);
                !imp.is_empty() && imp.is_subset(set)
            }
        }
    }

    /// For messages: the establishments, or "instance".
    pub fn describe(&self) -> String {
        match self {
            OperatorScope::Instance => "the whole instance".into(),
            OperatorScope::Establishments(set) => {
                let v: Vec<&str> = set.iter().map(|e| e.as_str()).collect();
                v.join(", ")
            }
        }
    }
}

/// The establishments a stored message could belong to. An owned message (routed or
/// released): its owner. Any other (quarantined, refused, discarded): every establishment its
/// evidence names, its owner if one was resolved, and every establishment its sending system
/// speaks for, so that a message in doubt between ES1 and ES2 is seen by neither ES1's nor
/// ES2's operator alone.
pub fn implicated(rec: &MessageRecord, cfg: &Config) -> BTreeSet<EstablishmentId> {
    let mut out = BTreeSet::new();
    let owner = rec.establishment().cloned();
    if matches!(rec.status, RecordStatus::Routed | RecordStatus::Released) {
        if let Some(o) = owner {
            out.insert(o);
            return out;
        }
    }
    out.extend(owner);
    if let Some(d) = &rec.decision {
        out.extend(d.evidence().iter().filter_map(|e| e.establishment.clone()));
    }
    if let Some(sys) = rec.sender.as_ref().and_then(|s| cfg.system(s)) {
        out.extend(sys.establishments.iter().cloned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EstablishmentId, MessageClass};
    use crate::router::{Decision, QuarantineReason};

    const ROUTES: &str = r#"
[[listener]]
name = "sil"
bind = "127.0.0.1:2575"
insecure = true
application_acks_to = "sil"
[[destination]]
name = "sil"
address = "127.0.0.1:3000"
insecure = true
[[destination]]
name = "dpi-es1"
address = "127.0.0.1:3001"
insecure = true
[[destination]]
name = "dpi-es2"
address = "127.0.0.1:3002"
insecure = true
[routing]
orders_to = ["sil"]
adt_to = ["sil"]
[[establishment]]
id = "ES1"
name = "Nord"
record = "dpi-es1"
identify.placer_namespaces = ["N"]
[[establishment]]
id = "ES2"
name = "Sud"
record = "dpi-es2"
identify.placer_namespaces = ["S"]
"#;

    fn cfg() -> Config {
        Config::from_sources(&[("t.toml".into(), ROUTES.to_owned())]).expect("routes")
    }

    fn record(
        seq: u64,
        class: MessageClass,
        owner: Option<&str>,
        status: RecordStatus,
    ) -> MessageRecord {
        MessageRecord {
            seq,
            received_at_ms: 0,
            listener: "sil".into(),
            peer: String::new(),
            control_id: format!("C{seq}"),
            message_type: "ORU^R01".into(),
            class: Some(class),
            sha256: String::new(),
            status,
            decision: Some(match owner {
                Some(o) => Decision::Owned {
                    establishment: EstablishmentId::new(o),
                    evidence: vec![],
                },
                None => Decision::Quarantined {
                    reason: QuarantineReason::NoEvidence,
                    evidence: vec![],
                },
            }),
            rejection: None,
            destinations: vec![],
            app_ack: None,
            sender: None,
            answers: None,
            business_ack: None,
            mail_acks: None,
        }
    }

    fn d(n: &str) -> DestinationName {
        DestinationName::new(n)
    }

    #[test]
    fn a_permit_only_for_the_owner_s_destinations() {
        let cfg = cfg();
        let result = record(1, MessageClass::Result, Some("ES1"), RecordStatus::Routed);
        assert_eq!(
            permit(&result, &d("dpi-es1"), &cfg, None).map(|p| p.seq()),
            Ok(1)
        );
        for other in ["dpi-es2", "sil"] {
            assert!(matches!(
                permit(&result, &d(other), &cfg, None),
                Err(Denied::NotItsDestination { .. })
            ));
        }
        let order = record(2, MessageClass::Order, Some("ES2"), RecordStatus::Released);
        assert!(permit(&order, &d("sil"), &cfg, None).is_ok());
        assert!(permit(&order, &d("dpi-es2"), &cfg, None).is_err());
        for status in [
            RecordStatus::Quarantined,
            RecordStatus::Rejected,
            RecordStatus::Discarded,
        ] {
            let r = record(3, MessageClass::Result, Some("ES1"), status);
            assert_eq!(
                permit(&r, &d("dpi-es1"), &cfg, None),
                Err(Denied::NotOwned(3))
            );
        }
        let held = record(4, MessageClass::Result, None, RecordStatus::Routed);
        assert_eq!(
            permit(&held, &d("dpi-es1"), &cfg, None),
            Err(Denied::NotOwned(4))
        );
    }

    #[test]
    fn an_application_ack_only_to_its_sender_s_listener_destination() {
        let cfg = cfg();
        let answered = record(5, MessageClass::Result, Some("ES1"), RecordStatus::Routed);
        let mut ack = record(6, MessageClass::Result, None, RecordStatus::Routed);
        ack.class = None;
        ack.decision = None;
        ack.answers = Some(5);
        assert!(permit(&ack, &d("sil"), &cfg, Some(&answered)).is_ok());
        assert!(permit(&ack, &d("dpi-es1"), &cfg, Some(&answered)).is_err());
        assert!(permit(&ack, &d("sil"), &cfg, None).is_err());
        let wrong = record(7, MessageClass::Result, Some("ES1"), RecordStatus::Routed);
        assert!(permit(&ack, &d("sil"), &cfg, Some(&wrong)).is_err());
    }

    #[test]
    fn an_operator_scope_covers_a_message_only_if_it_covers_every_establishment_it_implicates() {
        use crate::router::{Evidence, Rule};
        let cfg = cfg();
        let es1 = OperatorScope::Establishments([EstablishmentId::new("ES1")].into());
        let ev = |e: &str| Evidence {
            rule: Rule::OrderPlacer,
            field: "OBR-2".into(),
            value: "x".into(),
            establishment: Some(EstablishmentId::new(e)),
        };
        // Owned: its owner only, whatever the sender speaks for.
        let mut owned = record(1, MessageClass::Result, Some("ES1"), RecordStatus::Routed);
        owned.sender = Some("lab".into());
        assert!(es1.sees(&owned, &cfg));
        let es2_owned = record(2, MessageClass::Result, Some("ES2"), RecordStatus::Released);
        assert!(!es1.sees(&es2_owned, &cfg));
        // A conflict between ES1 and ES2: neither alone.
        let mut conflict = record(3, MessageClass::Result, None, RecordStatus::Quarantined);
        conflict.decision = Some(Decision::Quarantined {
            reason: QuarantineReason::Conflict,
            evidence: vec![ev("ES1"), ev("ES2")],
        });
        assert!(!es1.sees(&conflict, &cfg));
        assert!(OperatorScope::Instance.sees(&conflict, &cfg));
        // No evidence, no known sender: the instance's only.
        let none = record(4, MessageClass::Result, None, RecordStatus::Quarantined);
        assert!(implicated(&none, &cfg).is_empty());
        assert!(!es1.sees(&none, &cfg));
        // A refused message: its resolved owner and its sender's establishments.
        let mut refused = record(5, MessageClass::Result, Some("ES1"), RecordStatus::Rejected);
        refused.decision = Some(Decision::Owned {
            establishment: EstablishmentId::new("ES1"),
            evidence: vec![ev("ES1")],
        });
        assert!(es1.sees(&refused, &cfg));
        refused.decision = Some(Decision::Owned {
            establishment: EstablishmentId::new("ES2"),
            evidence: vec![ev("ES2")],
        });
        assert!(!es1.sees(&refused, &cfg));
    }

    #[test]
    fn a_permit_only_for_a_recipient_system_that_speaks_for_the_owner() {
        // Validation refuses such a configuration; the permit refuses it again at send time.
        let mut cfg = cfg();
        cfg.systems.push(System {
            name: "dpi".into(),
            role: crate::config::Role::RecordReceiver,
            san_uris: vec![],
            san_dns: vec![],
            sha256: vec![],
            establishments: vec![EstablishmentId::new("ES2")],
        });
        if let Some(d) = cfg
            .destinations
            .iter_mut()
            .find(|d| d.name == self::d("dpi-es1"))
        {
            d.system = Some("dpi".into());
        }
        let result = record(1, MessageClass::Result, Some("ES1"), RecordStatus::Routed);
        assert!(matches!(
            permit(&result, &d("dpi-es1"), &cfg, None),
            Err(Denied::RecipientNotForTenant { .. })
        ));
        cfg.systems[0]
            .establishments
            .push(EstablishmentId::new("ES1"));
        assert!(permit(&result, &d("dpi-es1"), &cfg, None).is_ok());
    }
}
