//! Who a result could be mailed to: what the message names (PRT `RCT` with its MSSanté
//! address in PRT-15, OBR-28 copies, the ordering provider in ORC-12 / OBR-16) and the
//! establishment's standing recipients. Each candidate is then decided by
//! `policy::mail_permit`; nothing here says yes.

use crate::hl7::{Message, Segment};

/// How a candidate came to be one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Named {
    /// PRT with participation `RCT` (the French CDA-in-HL7 profile).
    Recipient,
    /// OBR-28.
    Copy,
    /// ORC-12 / OBR-16: mailed only when he works outside the establishment.
    Ordering,
    /// The establishment's configuration (`mssante.recipients`).
    Standing,
    /// Mailed an earlier version of the report this one corrects or deletes: he gets the
    /// amendment too (`StoreHandle::mail_sent` keeps who got each report).
    Earlier,
}

impl Named {
    pub fn as_str(self) -> &'static str {
        match self {
            Named::Recipient => "recipient",
            Named::Copy => "copy",
            Named::Ordering => "ordering",
            Named::Standing => "standing",
            Named::Earlier => "earlier",
        }
    }
    /// The care link a message naming him establishes (`None`: the configuration names
    /// him, which says nothing of this patient's care).
    pub fn care(self) -> Option<crate::access::Link> {
        match self {
            Named::Recipient => Some(crate::access::Link::Recipient),
            Named::Copy => Some(crate::access::Link::Copy),
            Named::Ordering => Some(crate::access::Link::Ordering),
            Named::Standing => None,
            // A message named him for this report before.
            Named::Earlier => Some(crate::access::Link::Recipient),
        }
    }
}

/// One candidate recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub named: Named,
    pub rpps: Option<String>,
    /// The address the message (or configuration) gives, normalised.
    pub address: Option<String>,
    /// The message gave an address that is not one (refused, never guessed).
    pub bad_address: bool,
    /// A patient's mailbox (`@patient.mssante.fr`).
    pub patient: bool,
}

impl Candidate {
    /// How the journal names him: the RPPS, else the address; a patient's mailbox (its
    /// local part is the patient's INS) only as `patient`.
    pub fn label(&self) -> String {
        if self.patient {
            return "patient".into();
        }
        match (&self.rpps, &self.address) {
            (Some(r), _) => format!("rpps:{r}"),
            (None, Some(a)) => a.clone(),
            (None, None) => "unreadable address".into(),
        }
    }
}

/// The candidates a message names, each once (by RPPS, else by address), the first naming
/// kept: PRT `RCT` first, then OBR-28, then the ordering provider.
pub fn from_message(msg: &Message<'_>) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for seg in msg.segments() {
        match seg.id() {
            b"PRT" if seg.field(4).component(1).text() == "RCT" => prt(&seg, &mut out),
            b"OBR" => {
                for x in seg.field(28).repetitions() {
                    push_rpps(&mut out, crate::access::rpps_of(&x), Named::Copy);
                }
                for x in seg.field(16).repetitions() {
                    push_rpps(&mut out, crate::access::rpps_of(&x), Named::Ordering);
                }
            }
            b"ORC" => {
                for x in seg.field(12).repetitions() {
                    push_rpps(&mut out, crate::access::rpps_of(&x), Named::Ordering);
                }
            }
            _ => {}
        }
    }
    // A copy or recipient outranks the same practitioner as ordering provider (he is
    // mailed even inside the establishment, since the message asks for it).
    out.sort_by_key(|c| c.named);
    let mut seen: Vec<String> = Vec::new();
    out.retain(|c| {
        let key = c
            .rpps
            .clone()
            .or_else(|| c.address.clone())
            .unwrap_or_default();
        // An unreadable address is kept (refused later) but never hides another naming.
        if c.bad_address || key.is_empty() || !seen.contains(&key) {
            if !c.bad_address {
                seen.push(key);
            }
            true
        } else {
            false
        }
    });
    out
}

/// The standing recipients of an establishment's configuration: RPPS or addresses.
pub fn standing(configured: &[String]) -> Vec<Candidate> {
    configured
        .iter()
        .map(|s| {
            let s = s.trim();
            if crate::access::is_rpps(s) {
                Candidate {
                    named: Named::Standing,
                    rpps: Some(s.to_owned()),
                    address: None,
                    bad_address: false,
                    patient: false,
                }
            } else {
                let address = super::normalise_address(s);
                Candidate {
                    named: Named::Standing,
                    rpps: None,
                    bad_address: address.is_none(),
                    patient: address
                        .as_deref()
                        .is_some_and(|a| super::domain_of(a) == super::PATIENT_DOMAIN),
                    address,
                }
            }
        })
        .collect()
}

fn push_rpps(out: &mut Vec<Candidate>, rpps: Option<String>, named: Named) {
    if let Some(r) = rpps {
        out.push(Candidate {
            named,
            rpps: Some(r),
            address: None,
            bad_address: false,
            patient: false,
        });
    }
}

/// A PRT `RCT`: PRT-5 (a practitioner, or the patient by his INS), PRT-8 (an
/// organisation), PRT-15 (XTN with `X.400` in XTN-3: the MSSanté address in XTN-4).
fn prt(seg: &Segment<'_>, out: &mut Vec<Candidate>) {
    let rpps = seg
        .field(5)
        .repetitions()
        .find_map(|x| crate::access::rpps_of(&x));
    let addresses: Vec<String> = seg
        .field(15)
        .repetitions()
        .filter(|x| x.component(3).text().eq_ignore_ascii_case("X.400"))
        .map(|x| x.component(4).text().into_owned())
        .collect();
    if addresses.is_empty() {
        push_rpps(out, rpps, Named::Recipient);
        return;
    }
    // The patient himself: PRT-5 typed INS (XCN-13), or the patients' domain.
    let ins_typed = seg
        .field(5)
        .repetitions()
        .any(|x| x.component(13).text() == "INS");
    for raw in addresses {
        let address = super::normalise_address(&raw);
        let patient = ins_typed
            || address
                .as_deref()
                .is_some_and(|a| super::domain_of(a) == super::PATIENT_DOMAIN);
        out.push(Candidate {
            named: Named::Recipient,
            rpps: if patient { None } else { rpps.clone() },
            bad_address: address.is_none(),
            address,
            patient,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_ans_example_names() {
        // The PRT of the ANS example (ORU, CDA-in-HL7 v2.1), an OBR-28 copy and an ORC-12.
        let raw = "MSH|^~\\&|SIL|labo|PFI|X|2021||ORU^R01^ORU_R01|1|P|2.5\r\
ORC|NW|1^X||||||||||10000000009^ORD^A^^^^^^^^^^RPPS\r\
OBR|1|1^X||11502-2^CR^LN||||||||||||10000000009^ORD^A^^^^^^^^^^RPPS||||||||||||10000000003^CC^C^^^^^^^^^^RPPS\r\
PRT||UC||SB^^participation|801234567866^DIAZ^Thierry^^^^^^ASIP-SANTE- PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS\r\
PRT||UC||RCT^^participation|801234567897^Hoda^Adam^^^^^^ASIP-SANTE- PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS||||||||||^^X.400^adam.hoda@test-ci-sis.mssante.fr\r\
PRT||UC||RCT^^participation|279035121518989^PAT^D^^^^^^1.2.250.1.213.1.4.10^L^^^INS||||||||||^^X.400^279035121518989@patient.mssante.fr\r\
PRT||UC||RCT||||Organisation-Y^^^^^120456789^UF^^^3435|||||||^^X.400^dpi@hopitalA.mssante.fr\r\
PRT||UC||RCT|||||||||||^^X.400^not an address\r\
PRT||UC||REPLY^^participation|||||||||||^^X.400^adam.hoda@test-ci-sis.mssante.fr\r";
        let m = Message::parse(raw.as_bytes()).expect("parses");
        let got: Vec<(Named, String, bool)> = from_message(&m)
            .into_iter()
            .map(|c| (c.named, c.label(), c.bad_address))
            .collect();
        assert_eq!(
            got,
            [
                (Named::Recipient, "rpps:01234567897".into(), false),
                (Named::Recipient, "patient".into(), false),
                (Named::Recipient, "dpi@hopitala.mssante.fr".into(), false),
                (Named::Recipient, "unreadable address".into(), true),
                (Named::Copy, "rpps:10000000003".into(), false),
                (Named::Ordering, "rpps:10000000009".into(), false),
            ]
        );
        let first = &from_message(&m)[0];
        assert_eq!(
            first.address.as_deref(),
            Some("adam.hoda@test-ci-sis.mssante.fr")
        );
    }

    #[test]
    fn standing_recipients() {
        let got = standing(&[
            "10000000001".into(),
            "Labo@CH-Sud.mssante.fr".into(),
            "junk".into(),
        ]);
        assert_eq!(got[0].rpps.as_deref(), Some("10000000001"));
        assert_eq!(got[1].address.as_deref(), Some("labo@ch-sud.mssante.fr"));
        assert!(got[2].bad_address);
    }
}
