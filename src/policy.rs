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

/// Who runs an operator command, and within what.
#[derive(Debug, Clone, PartialEq, Eq)]
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
