//! Tagging a message with its owning establishment, and choosing its destinations.
//!
//! Pure: the order index is behind a trait, so `labroute validate` runs the same code as the
//! server. Never guesses: no evidence, or evidence naming two establishments, is quarantine.

pub mod facts;
pub mod tests_runner;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use facts::{Facts, Found, OrderRef, Refusal, extract};

use crate::config::{Config, IdKind};
use crate::model::{DestinationName, EstablishmentId, MessageClass};

/// Which rule produced a piece of evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rule {
    /// The result answers an order whose owner is known (placer number).
    OrderPlacer,
    /// The result answers an order whose owner is known (filler number).
    OrderFiller,
    /// A configured identifier.
    Identifier(IdKind),
}

/// One piece of evidence: which field, which value, which rule, which establishment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub rule: Rule,
    /// Where the value was read (`PID-3.4.1`...): a constant, not allocated per message.
    pub field: std::borrow::Cow<'static, str>,
    pub value: String,
    /// `None`: the value was examined and matched no establishment.
    pub establishment: Option<EstablishmentId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuarantineReason {
    /// Nothing in the message names a configured establishment.
    NoEvidence,
    /// The evidence names more than one establishment.
    Conflict,
}

impl QuarantineReason {
    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineReason::NoEvidence => "no_evidence",
            QuarantineReason::Conflict => "conflict",
        }
    }
}

/// The tenant decision, stored with the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    Owned {
        establishment: EstablishmentId,
        evidence: Vec<Evidence>,
    },
    Quarantined {
        reason: QuarantineReason,
        evidence: Vec<Evidence>,
    },
}

impl Decision {
    pub fn establishment(&self) -> Option<&EstablishmentId> {
        match self {
            Decision::Owned { establishment, .. } => Some(establishment),
            Decision::Quarantined { .. } => None,
        }
    }
    pub fn evidence(&self) -> &[Evidence] {
        match self {
            Decision::Owned { evidence, .. } | Decision::Quarantined { evidence, .. } => evidence,
        }
    }
}

/// Who owns an order, by index key (`OrderRef::key`).
pub trait OrderIndex {
    fn placer_owner(&self, key: &str) -> Option<EstablishmentId>;
    fn filler_owner(&self, key: &str) -> Option<EstablishmentId>;
}

/// An in-memory order index (routing tests, `validate`).
#[derive(Debug, Default)]
pub struct MemoryOrders {
    placer: HashMap<String, EstablishmentId>,
    filler: HashMap<String, EstablishmentId>,
}

impl MemoryOrders {
    pub fn record(&mut self, facts: &Facts, owner: &EstablishmentId) {
        for o in &facts.placer_orders {
            self.placer.entry(o.key()).or_insert_with(|| owner.clone());
        }
        for o in &facts.filler_orders {
            self.filler.entry(o.key()).or_insert_with(|| owner.clone());
        }
    }
}

impl OrderIndex for MemoryOrders {
    fn placer_owner(&self, key: &str) -> Option<EstablishmentId> {
        self.placer.get(key).cloned()
    }
    fn filler_owner(&self, key: &str) -> Option<EstablishmentId> {
        self.filler.get(key).cloned()
    }
}

/// The identifier rules that apply to a class of message, in the order the evidence lists
/// them. MSH-4 names the placer only for messages the placer sends (orders, patient
/// administration): a result's MSH-4 is the lab.
fn identifier_sources(facts: &Facts) -> impl Iterator<Item = (IdKind, &Found)> {
    fn tagged(kind: IdKind, list: &[Found]) -> impl Iterator<Item = (IdKind, &Found)> {
        list.iter().map(move |f| (kind, f))
    }
    let msh4: &[Found] = if matches!(facts.class, MessageClass::Order | MessageClass::Admin) {
        &facts.sending_facility
    } else {
        &[]
    };
    tagged(IdKind::SendingFacility, msh4)
        // MSH-4.2 may carry the placer's FINESS.
        .chain(tagged(IdKind::Finess, msh4).filter(|(_, f)| f.field == "MSH-4.2"))
        .chain(tagged(IdKind::PlacerNamespace, &facts.placer_namespaces))
        .chain(tagged(IdKind::Finess, &facts.finess))
        .chain(tagged(IdKind::Facility, &facts.facilities))
        .chain(tagged(IdKind::PatientAuthority, &facts.patient_authorities))
        .chain(tagged(IdKind::VisitAuthority, &facts.visit_authorities))
}

/// Decides the owning establishment.
pub fn decide(facts: &Facts, cfg: &Config, orders: &dyn OrderIndex) -> Decision {
    let sources = identifier_sources(facts);
    // Sized once (the vector grown push by push was a tenth of the decision): every source
    // and every order number at most.
    let mut evidence = Vec::with_capacity(
        facts.placer_orders.len()
            + facts.filler_orders.len()
            + sources.size_hint().1.unwrap_or_default(),
    );
    if matches!(facts.class, MessageClass::Result | MessageClass::Document) {
        for (list, rule, field) in [
            (&facts.placer_orders, Rule::OrderPlacer, "ORC-2/OBR-2"),
            (&facts.filler_orders, Rule::OrderFiller, "ORC-3/OBR-3"),
        ] {
            for o in list {
                let owner = if rule == Rule::OrderPlacer {
                    orders.placer_owner(&o.key())
                } else {
                    orders.filler_owner(&o.key())
                };
                if owner.is_some() {
                    evidence.push(Evidence {
                        rule,
                        field: std::borrow::Cow::Borrowed(field),
                        value: [o.namespace.as_str(), "/", o.id.as_str()].concat(),
                        establishment: owner,
                    });
                }
            }
        }
    }
    for (kind, found) in sources {
        evidence.push(Evidence {
            rule: Rule::Identifier(kind),
            field: found.field.clone(),
            value: found.value.clone(),
            establishment: cfg.identify(kind, &found.value).cloned(),
        });
    }
    let (first, more) = {
        let mut owners = evidence.iter().filter_map(|e| e.establishment.as_ref());
        let first = owners.next().cloned();
        let more = first.as_ref().is_some_and(|f| owners.any(|e| e != f));
        (first, more)
    };
    match (first, more) {
        (None, _) => Decision::Quarantined {
            reason: QuarantineReason::NoEvidence,
            evidence,
        },
        (Some(establishment), false) => Decision::Owned {
            establishment,
            evidence,
        },
        (Some(_), true) => Decision::Quarantined {
            reason: QuarantineReason::Conflict,
            evidence,
        },
    }
}

/// Destinations of a message owned by `owner`.
pub fn destinations(
    class: MessageClass,
    owner: &EstablishmentId,
    cfg: &Config,
) -> Vec<DestinationName> {
    match class {
        MessageClass::Order => cfg.routing.orders_to.clone(),
        MessageClass::Admin => cfg.routing.adt_to.clone(),
        MessageClass::Result | MessageClass::Document => {
            let mut d: Vec<DestinationName> = cfg
                .establishment(owner)
                .map(|e| vec![e.record.clone()])
                .unwrap_or_default();
            // The DMP feed sees every result when `[dmp]` is set; its gate (at send time,
            // journalled) withholds those of establishments that do not enable it.
            if cfg
                .destinations
                .iter()
                .any(|x| x.name.as_str() == crate::config::DMP_DESTINATION)
            {
                d.push(DestinationName::new(crate::config::DMP_DESTINATION));
            }
            // Likewise MSSanté: its recipients are decided at send time, journalled, and
            // those of establishments that do not mail withheld.
            if cfg
                .destinations
                .iter()
                .any(|x| x.name.as_str() == crate::mssante::DESTINATION)
            {
                d.push(DestinationName::new(crate::mssante::DESTINATION));
            }
            d
        }
    }
}
