//! Who outside an establishment may read a patient's results (the results server, issue 4
//! item 4): a practitioner, known by the RPPS his certificate carries, who takes part in
//! the patient's care: the result's ordering provider (ORC-12, OBR-16), a copy recipient
//! (OBR-28, PRT with role `RCT`), or one an operator granted access to (`grant`); and only in
//! an establishment whose routes allow external access. The answer is a yes or a no and
//! nothing else: a "no" never says whether the patient or the result exists.

use serde::{Deserialize, Serialize};

use crate::hl7::{Field, Message, Segment, Value};

/// OID of the national health professional identifiers (RPPS/ADELI, "IDNPS").
pub const IDNPS_OID: &str = "1.2.250.1.71.4.2.1";

/// Why a practitioner takes part in a patient's care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// ORC-12 / OBR-16.
    Ordering,
    /// OBR-28.
    Copy,
    /// PRT with participation `RCT`.
    Recipient,
    /// Granted by an operator.
    Grant,
}

impl Link {
    pub fn as_str(self) -> &'static str {
        match self {
            Link::Ordering => "ordering",
            Link::Copy => "copy",
            Link::Recipient => "recipient",
            Link::Grant => "grant",
        }
    }
}

/// The RPPS (11 digits) of an XCN, when it is a national health professional identifier:
/// id type (XCN-13) `RPPS`, or `IDNPS` / assigning authority (XCN-9.2) the IDNPS OID, where
/// an IDNPS of 12 characters is `8` + RPPS.
pub fn rpps_of(xcn: &Value<'_>) -> Option<String> {
    let [id, authority, id_type] = xcn.components_at([1, 9, 13]);
    let id_type = id_type.text();
    let national = id_type == "RPPS"
        || id_type == "IDNPS"
        || authority.subcomponent(2).text().trim() == IDNPS_OID;
    if !national {
        return None;
    }
    let id = id.text();
    let id = id.trim();
    let rpps = match id.strip_prefix('8') {
        Some(r) if id.len() == 12 && id_type != "RPPS" => r,
        _ => id,
    };
    is_rpps(rpps).then(|| rpps.to_owned())
}

/// Whether `s` has the form of an RPPS: 11 digits.
pub fn is_rpps(s: &str) -> bool {
    s.len() == 11 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The practitioners a result names as taking part in the patient's care, each once with
/// the first reason found.
pub fn care_team(msg: &Message<'_>) -> Vec<(String, Link)> {
    let mut out = Vec::new();
    for seg in msg.segments() {
        // A message naming more practitioners than that was refused at ingest.
        let _ = add_care(&seg, &mut out);
    }
    out
}

/// [`care_team`] for one segment (ORC-12; OBR-16, OBR-28; PRT-5 of an `RCT`), added to `out`
/// unless already there: `router::extract` reads it in its one pass over the message.
/// False when a practitioner was left out because `out` holds
/// [`crate::router::facts::MAX_DISTINCT`] already.
pub fn add_care(seg: &Segment<'_>, out: &mut Vec<(String, Link)>) -> bool {
    match seg.id() {
        b"ORC" => add_orc_care(&seg.field(12), out),
        b"OBR" => {
            let [f16, f28] = seg.fields_at([16, 28]);
            add_obr_care(&f16, &f28, out)
        }
        b"PRT" if seg.field(4).component(1).text() == "RCT" => {
            add_named(&seg.field(5), Link::Recipient, out)
        }
        _ => true,
    }
}

/// [`add_care`] for an ORC whose field 12 the caller has read (`router::extract` reads an
/// ORC's fields in one pass).
pub fn add_orc_care(orc12: &Field<'_>, out: &mut Vec<(String, Link)>) -> bool {
    add_named(orc12, Link::Ordering, out)
}

/// [`add_care`] for an OBR whose fields 16 and 28 the caller has read.
pub fn add_obr_care(obr16: &Field<'_>, obr28: &Field<'_>, out: &mut Vec<(String, Link)>) -> bool {
    add_named(obr16, Link::Ordering, out) & add_named(obr28, Link::Copy, out)
}

/// The practitioners an XCN field (ORC-12, OBR-16...) names, each added to `out` with
/// `link` unless already there; false when one was left out because `out` is full.
fn add_named(field: &Field<'_>, link: Link, out: &mut Vec<(String, Link)>) -> bool {
    let mut fits = true;
    for xcn in field.repetitions() {
        if let Some(r) = rpps_of(&xcn)
            && !out.iter().any(|(o, _)| *o == r)
        {
            if out.len() >= crate::router::facts::MAX_DISTINCT {
                fits = false;
            } else {
                out.push((r, link));
            }
        }
    }
    fits
}

/// The SAN URI that names a practitioner in a client certificate (the development PKI's
/// form, `labroute pki init --practitioner`).
pub fn practitioner_uri(rpps: &str) -> String {
    format!("{PRACTITIONER_URI}{rpps}")
}

const PRACTITIONER_URI: &str = "urn:labroute:rpps:";

/// The RPPS a client certificate names (its SAN URI `urn:labroute:rpps:<11 digits>`), when
/// it names exactly one: a certificate that names two practitioners names none.
pub fn practitioner(identity: &crate::tls::PeerIdentity) -> Option<String> {
    let mut found = identity
        .uris
        .iter()
        .filter_map(|u| u.strip_prefix(PRACTITIONER_URI));
    let first = found.next()?;
    (found.next().is_none() && is_rpps(first)).then(|| first.to_owned())
}

/// Why not (for the journal and the metric; the practitioner is told nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No result of any establishment carries the identifier searched.
    UnknownPatient,
    /// No such establishment.
    UnknownEstablishment,
    /// Its routes do not allow external access.
    NotOpen,
    /// Nothing links the practitioner to the patient there.
    NotInCare,
    /// The patient opposed sharing outside the establishment (`labroute mssante oppose`).
    Opposed,
}

impl Denial {
    pub fn as_str(self) -> &'static str {
        match self {
            Denial::UnknownPatient => "unknown_patient",
            Denial::UnknownEstablishment => "unknown_establishment",
            Denial::NotOpen => "no_external_access",
            Denial::NotInCare => "not_in_care",
            Denial::Opposed => "patient_opposed",
        }
    }
}

/// Whether the practitioner `rpps` may read the results of the patient `patient_key`
/// (`router::Facts::patient_key`) of `establishment`, and why.
pub fn decide(
    store: &crate::store::Store,
    cfg: &crate::config::Config,
    rpps: &str,
    establishment: &str,
    patient_key: &str,
) -> Result<Result<Link, Denial>, crate::store::StoreError> {
    let Some(est) = cfg.establishment_by_name(establishment) else {
        return Ok(Err(Denial::UnknownEstablishment));
    };
    if !est.external_access {
        return Ok(Err(Denial::NotOpen));
    }
    let link = store.care_link(est.id.as_str(), patient_key, rpps)?;
    let Some(link) = link else {
        return Ok(Err(Denial::NotInCare));
    };
    let opposed = store
        .patient(est.id.as_str(), patient_key)?
        .is_some_and(|p| p.sharing_opposition.is_some());
    Ok(if opposed {
        Err(Denial::Opposed)
    } else {
        Ok(link)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpps_from_the_national_identifier_forms() {
        let cases: [(&[u8], Option<&str>); 6] = [
            // The ANS examples' PRT-5: IDNPS = 8 + RPPS.
            (
                b"801234567897^Hoda^Adam^^^^^^ASIP-SANTE- PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
                Some("01234567897"),
            ),
            (b"10101010101^DOC^A^^^^^^^^^^RPPS", Some("10101010101")),
            // By the OID alone.
            (
                b"810101010101^DOC^A^^^^^^&1.2.250.1.71.4.2.1&ISO",
                Some("10101010101"),
            ),
            // A local id is not an RPPS.
            (b"R854^NURSE^JANET^^^^^^^D^^^EI", None),
            (b"12345^DOC^A^^^^^^^^^^RPPS", None),
            (b"", None),
        ];
        for (xcn, want) in cases {
            let raw = [
                b"MSH|^~\\&|A|B|C|D|2021||ORU^R01|1|P|2.5\rORC|RE|||||||||||".as_slice(),
                xcn,
                b"\r",
            ]
            .concat();
            let m = Message::parse(&raw).expect("parses");
            let orc = m.segments_named("ORC").next().expect("ORC");
            assert_eq!(
                rpps_of(&orc.field(12).repetition(1)).as_deref(),
                want,
                "{}",
                String::from_utf8_lossy(xcn)
            );
        }
    }

    #[test]
    fn the_care_team_of_a_result() {
        let mut obr = vec![""; 29];
        obr[0] = "OBR";
        obr[1] = "1";
        obr[16] = "10000000002^ORD^B^^^^^^^^^^RPPS";
        obr[25] = "F";
        obr[28] = "10000000003^CC^C^^^^^^^^^^RPPS~10000000001^ORD^A^^^^^^^^^^RPPS";
        let raw = format!(
            "MSH|^~\\&|A|B|C|D|2021||ORU^R01|1|P|2.5\r\
ORC|RE|||||||||||10000000001^ORD^A^^^^^^^^^^RPPS\r{}\r\
PRT||UC||RCT^^participation|810000000004^R^D^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS\r\
PRT||UC||SB^^participation|810000000005^S^E^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS\r",
            obr.join("|")
        );
        let m = Message::parse(raw.as_bytes()).expect("parses");
        assert_eq!(
            care_team(&m),
            [
                ("10000000001".to_owned(), Link::Ordering),
                ("10000000002".into(), Link::Ordering),
                ("10000000003".into(), Link::Copy),
                ("10000000004".into(), Link::Recipient),
            ]
        );
    }
}
