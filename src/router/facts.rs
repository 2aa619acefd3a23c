//! The facts routing needs, read once from a parsed message into owned values.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::hl7::Message;
use crate::hl7::ack::AckError;
use crate::model::MessageClass;

/// An order number (EI): entity identifier and namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRef {
    pub id: String,
    pub namespace: String,
}

impl OrderRef {
    /// Index key: namespace and id, unit-separated.
    pub fn key(&self) -> String {
        // `concat`, not `format!`: on the ACK path, per order number (D27).
        [self.namespace.as_str(), "\u{1f}", self.id.as_str()].concat()
    }
}

/// One identifier value found in the message, with the field it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    pub field: Cow<'static, str>,
    pub value: String,
}

/// What routing reads from a message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Facts {
    pub class: MessageClass,
    pub message_type: String,
    pub trigger: String,
    pub control_id: String,
    pub sending_application: String,
    /// MSH-4.1 and MSH-4.2.
    pub sending_facility: Vec<Found>,
    /// ORC-2 / OBR-2.
    pub placer_orders: Vec<OrderRef>,
    /// ORC-3 / OBR-3.
    pub filler_orders: Vec<OrderRef>,
    /// ORC-2.2/.3 and OBR-2.2/.3.
    pub placer_namespaces: Vec<Found>,
    /// ORC-21.10 (XON organisation identifier: FINESS).
    pub finess: Vec<Found>,
    /// PV1-3.4.1 / PV1-3.4.2.
    pub facilities: Vec<Found>,
    /// PID-3 assigning authorities (CX-4.1 / CX-4.2) of local identifiers (not INS).
    pub patient_authorities: Vec<Found>,
    /// Assigning authorities (CX-4.1 / CX-4.2) of the visit (PV1-19) and account (PID-18)
    /// numbers: in PAM France, the establishment that admitted the patient.
    pub visit_authorities: Vec<Found>,
    /// Key of the patient (the first PID's first local identifier: authority and id), for
    /// per-patient data.
    pub patient_key: Option<String>,
    /// PAM France ZFA segment fields 1..=10 (DMP status, opposition), when present.
    pub zfa: Option<Vec<String>>,
    /// RPPS of the practitioners a result names as taking part in the patient's care
    /// (`access::care_team`).
    #[serde(default)]
    pub care_team: Vec<(String, crate::access::Link)>,
    /// MetaDMPMSS `ACK_RECEPTION` = Y: the sender wants the DMP's outcome as a business
    /// acknowledgement (ZAM^Z01).
    #[serde(default)]
    pub ack_reception: bool,
    /// MetaDMPMSS `ACK_LECTURE_MSS` = Y: the sender wants the MSSanté read receipts
    /// (ZAM^Z03).
    #[serde(default)]
    pub ack_read: bool,
    /// A result's patient identifiers (PID-3, INS included), as FHIR `Patient.identifier`
    /// has them: the results server finds the patient by them. Empty when the message is
    /// about several patients (several PID).
    #[serde(default)]
    pub patient_ids: Vec<PatientId>,
}

/// One identifier of a patient, as the FHIR mapping writes it (`fhir::v2::cx_identifier`):
/// the system is `None` when the assigning authority is a bare namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientId {
    pub system: Option<String>,
    pub value: String,
}

/// A message refused before routing: the ACK's ERR content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub error: AckError,
}

impl Refusal {
    pub fn new(code: u16, text: &str, location: Option<(&str, u16)>) -> Refusal {
        Refusal {
            error: AckError {
                code,
                text: text.to_owned(),
                location: location.map(|(s, f)| (s.to_owned(), f)),
            },
        }
    }
}

/// Most distinct values one kind of evidence (placer orders, patient authorities, patient
/// identifiers, practitioners named...) may have in one message. Real messages have a
/// handful; a message past it is refused (AR 102) rather than read in time that grows with
/// the square of its repetitions.
pub const MAX_DISTINCT: usize = 256;

/// Where a message went past [`MAX_DISTINCT`]: the first field that did.
#[derive(Default)]
struct Overflow(Option<String>);

impl Overflow {
    /// `field` is formatted only when it did not fit (the usual case costs nothing).
    fn note(&mut self, fits: bool, field: std::fmt::Arguments<'_>) {
        if !fits && self.0.is_none() {
            self.0 = Some(field.to_string());
        }
    }
}

/// Adds `item` to `out` unless it is there; false when it is new and `out` is full.
fn push_unique<T: PartialEq>(out: &mut Vec<T>, item: T) -> bool {
    out.contains(&item) || push_new(out, item)
}

/// Adds `item`, known not to be in `out`; false when `out` is full.
fn push_new<T>(out: &mut Vec<T>, item: T) -> bool {
    if out.len() >= MAX_DISTINCT {
        return false;
    }
    out.push(item);
    true
}

fn push_found(out: &mut Vec<Found>, field: &'static str, value: &str) -> bool {
    let value = value.trim();
    // Compared before anything is allocated: ORC and OBR usually repeat each other.
    if value.is_empty() || out.iter().any(|f| f.field == field && f.value == value) {
        return true;
    }
    push_new(
        out,
        Found {
            field: Cow::Borrowed(field),
            value: value.to_owned(),
        },
    )
}

fn is_national_patient_id(id_type: &str, authority_uid: &str) -> bool {
    matches!(id_type, "INS" | "INS-NIR" | "INS-NIA" | "INS-C" | "NH")
        || authority_uid.starts_with("1.2.250.1.213.1.4.")
}

/// A PID-3 identifier (value, CX-4.2 universal id, CX-4.3 its type) as FHIR writes it
/// (`fhir::v2::cx_identifier`: the system `hd_uri` names), from the pieces `extract` has
/// already read.
fn push_patient_id(out: &mut Vec<PatientId>, value: &str, uid: &str, uid_type: &str) -> bool {
    // Control characters (an HL7 hex escape) are kept out: they separate the index's keys.
    if value.is_empty() || value.chars().any(char::is_control) {
        return true;
    }
    let system = if uid.is_empty() {
        None
    } else {
        crate::fhir::v2::hd_uri(uid, uid_type)
    };
    if system.iter().flat_map(|s| s.chars()).any(char::is_control) {
        return true;
    }
    push_unique(
        out,
        PatientId {
            system,
            value: value.to_owned(),
        },
    )
}

/// The assigning authority (CX-4.1, CX-4.2) of a visit or account number field, under the
/// names `names` gives them.
fn push_visit_authority(
    f: &mut Facts,
    field: &crate::hl7::message::Field<'_>,
    names: [&'static str; 2],
) -> bool {
    let [ns, uid] = field.repetition(1).component(4).subcomponents_at([1, 2]);
    push_found(&mut f.visit_authorities, names[0], &ns.text())
        & push_found(&mut f.visit_authorities, names[1], &uid.text())
}

/// Where a message naming too many practitioners is said to be over the limit.
const CARE_FIELDS: &str = "practitioners named (ORC-12, OBR-16, OBR-28, PRT-5)";

/// Built once: building a searcher for each message cost more than the search.
static META_DMP_MSS: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"MetaDMPMSS"));

/// Reads the facts, or refuses the message (unsupported type, missing required field).
pub fn extract(msg: &Message<'_>) -> Result<Facts, Refusal> {
    let msh = msg.msh();
    let [msh3, msh4, msh9, msh10] = msh.fields_at([3, 4, 9, 10]);
    let [msh4_1, msh4_2] = msh4.repetition(1).components_at([1, 2]);
    let [msh9_1, msh9_2] = msh9.repetition(1).components_at([1, 2]);
    let message_type = msh9_1.text().trim().to_owned();
    let trigger = msh9_2.text().trim().to_owned();
    if message_type.is_empty() {
        return Err(Refusal::new(
            101,
            "MSH-9 message type is missing",
            Some(("MSH", 9)),
        ));
    }
    let class = MessageClass::of(&message_type, &trigger).map_err(|code| {
        let text = if code == 200 {
            "message type not supported"
        } else {
            "trigger event not supported"
        };
        Refusal::new(code, text, Some(("MSH", 9)))
    })?;
    let control_id = msh10.text().trim().to_owned();
    if control_id.is_empty() {
        return Err(Refusal::new(
            101,
            "MSH-10 message control id is missing",
            Some(("MSH", 10)),
        ));
    }
    let mut f = Facts {
        class,
        message_type,
        trigger,
        control_id,
        sending_application: msh3.component(1).text().trim().to_owned(),
        sending_facility: Vec::new(),
        placer_orders: Vec::new(),
        filler_orders: Vec::new(),
        placer_namespaces: Vec::new(),
        finess: Vec::new(),
        facilities: Vec::new(),
        patient_authorities: Vec::new(),
        visit_authorities: Vec::new(),
        patient_key: None,
        zfa: None,
        care_team: Vec::new(),
        ack_reception: false,
        ack_read: false,
        patient_ids: Vec::new(),
    };
    push_found(&mut f.sending_facility, "MSH-4.1", &msh4_1.text());
    push_found(&mut f.sending_facility, "MSH-4.2", &msh4_2.text());

    let result = class == MessageClass::Result;
    // MetaDMPMSS flags exist only in the French CDA-in-HL7 profile: one search of the bytes
    // spares every other result a look at each OBX.
    let dmp_meta = matches!(class, MessageClass::Result | MessageClass::Document)
        && META_DMP_MSS.find(msg.bytes()).is_some();
    let mut pids = 0usize;
    let mut over = Overflow::default();
    for seg in msg.segments() {
        match seg.id() {
            b"OBX" if dmp_meta => {
                f.ack_reception |= crate::dmp::flag_in(&seg, "ACK_RECEPTION") == Some(true);
                f.ack_read |= crate::dmp::flag_in(&seg, "ACK_LECTURE_MSS") == Some(true);
            }
            id @ (b"ORC" | b"OBR") => {
                let orc = id == b"ORC";
                let (name, placer_ns) = if orc {
                    ("ORC", ["ORC-2.2", "ORC-2.3"])
                } else {
                    ("OBR", ["OBR-2.2", "OBR-2.3"])
                };
                // One pass over the segment for every field read: ORC-21 (FINESS) and
                // ORC-12 (ordering provider) are ORC's; OBR-16 and OBR-28 (ordering
                // provider, copies to) are OBR's.
                let [f2, f3, f12, f16, f21, f28] = seg.fields_at([2, 3, 12, 16, 21, 28]);
                if result {
                    let fits = if orc {
                        crate::access::add_orc_care(&f12, &mut f.care_team)
                    } else {
                        crate::access::add_obr_care(&f16, &f28, &mut f.care_team)
                    };
                    over.note(fits, format_args!("{CARE_FIELDS}"));
                }
                for (n, field) in [(2usize, f2), (3, f3)] {
                    let [id, ns, uid] = field.repetition(1).components_at([1, 2, 3]);
                    let (id, ns, uid) = (id.text(), ns.text(), uid.text());
                    let (id, ns, uid) = (id.trim(), ns.trim(), uid.trim());
                    if n == 2 {
                        let fits = push_found(&mut f.placer_namespaces, placer_ns[0], ns)
                            & push_found(&mut f.placer_namespaces, placer_ns[1], uid);
                        over.note(fits, format_args!("{name}-2"));
                    }
                    let namespace = if ns.is_empty() { uid } else { ns };
                    let list = if n == 2 {
                        &mut f.placer_orders
                    } else {
                        &mut f.filler_orders
                    };
                    let known = list.iter().any(|o| o.id == id && o.namespace == namespace);
                    if !id.is_empty() && !known {
                        let r = OrderRef {
                            id: id.to_owned(),
                            namespace: namespace.to_owned(),
                        };
                        over.note(push_new(list, r), format_args!("{name}-{n}"));
                    }
                }
                if orc {
                    for rep in f21.repetitions() {
                        let fits =
                            push_found(&mut f.finess, "ORC-21.10", &rep.component(10).text());
                        over.note(fits, format_args!("ORC-21"));
                    }
                }
            }
            b"PV1" => {
                let [f3, f19] = seg.fields_at([3, 19]);
                let [ns, uid] = f3.component(4).subcomponents_at([1, 2]);
                let fits = push_found(&mut f.facilities, "PV1-3.4.1", &ns.text())
                    & push_found(&mut f.facilities, "PV1-3.4.2", &uid.text());
                over.note(fits, format_args!("PV1-3"));
                let fits = push_visit_authority(&mut f, &f19, ["PV1-19.4.1", "PV1-19.4.2"]);
                over.note(fits, format_args!("PV1-19"));
            }
            b"PID" => {
                pids += 1;
                let [f3, f18] = seg.fields_at([3, 18]);
                let fits = push_visit_authority(&mut f, &f18, ["PID-18.4.1", "PID-18.4.2"]);
                over.note(fits, format_args!("PID-18"));
                for rep in f3.repetitions() {
                    let [id, auth, id_type] = rep.components_at([1, 4, 5]);
                    let [ns, uid, uid_type] = auth.subcomponents_at([1, 2, 3]);
                    let (ns, uid, id) = (ns.text(), uid.text(), id.text());
                    if result && pids == 1 {
                        let uid_type = uid_type.text();
                        let fits = push_patient_id(
                            &mut f.patient_ids,
                            id.trim(),
                            uid.trim(),
                            uid_type.trim(),
                        );
                        over.note(fits, format_args!("PID-3"));
                    }
                    let id_type = id_type.text();
                    if is_national_patient_id(id_type.trim(), uid.trim()) {
                        continue;
                    }
                    let fits = push_found(&mut f.patient_authorities, "PID-3.4.1", &ns)
                        & push_found(&mut f.patient_authorities, "PID-3.4.2", &uid);
                    over.note(fits, format_args!("PID-3"));
                    if f.patient_key.is_none() && pids == 1 && !id.trim().is_empty() {
                        let a = if ns.trim().is_empty() {
                            uid.trim()
                        } else {
                            ns.trim()
                        };
                        f.patient_key = Some([a, "\u{1f}", id.trim()].concat());
                    }
                }
            }
            b"PRT" if result => {
                over.note(
                    crate::access::add_care(&seg, &mut f.care_team),
                    format_args!("{CARE_FIELDS}"),
                );
            }
            b"ZFA" => {
                f.zfa = Some((1..=10).map(|n| seg.field(n).text().into_owned()).collect());
            }
            _ => {}
        }
    }
    if let Some(field) = over.0 {
        return Err(Refusal::new(
            102,
            &format!("more than {MAX_DISTINCT} distinct values in {field}: split the message"),
            None,
        ));
    }
    if pids > 1 {
        // A message about several patients (a batch ORU): which practitioner cares for
        // which patient is not known, so none is recorded, and the results server does not
        // index it.
        f.care_team.clear();
        f.patient_ids.clear();
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Link;

    fn facts(pid3: &str) -> Facts {
        let text = format!(
            "MSH|^~\\&|SIL|LAB|DPI|CHN|20250301100000||ORU^R01^ORU_R01|M1|P|2.5|||||FRA|UNICODE UTF-8\r\
PID|||{pid3}\rOBR|1|PL-1^DPI-CHN|F-1^LAB|GLU^Glucose^L\r"
        );
        let bytes = text.into_bytes();
        let msg = Message::parse(&bytes).expect("parses");
        extract(&msg).expect("facts")
    }

    #[test]
    fn patient_identifiers_with_a_control_character_are_left_out() {
        // A hex escape making a C0 control (ASCII), a C1 control (U+0085, non-ASCII), or
        // none; the last one's system is an OID.
        let f = facts(
            "1\\X1F\\2^^^CHN&1.2.3&ISO^PI~Zé\\XC285\\1^^^CHN^PI~279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS",
        );
        assert_eq!(
            f.patient_ids,
            vec![PatientId {
                system: Some("urn:oid:1.2.250.1.213.1.4.8".into()),
                value: "279035121518989".into(),
            }]
        );
        // A control character in an authority that names no URI: no system, the value kept.
        let f = facts("123^^^CHN&1.2\\X1F\\.3&ISO^PI");
        assert_eq!(
            f.patient_ids,
            vec![PatientId {
                system: None,
                value: "123".into(),
            }]
        );
        assert_eq!(f.patient_key.as_deref(), Some("CHN\u{1f}123"));
    }

    #[test]
    fn the_care_team_is_read_from_orc_and_obr_in_their_one_pass() {
        // Fields by number: `fields(&[(12, "x")])` puts "x" in field 12.
        let fields = |at: &[(usize, &str)]| {
            let last = at.iter().map(|(n, _)| *n).max().unwrap_or(0);
            (1..=last)
                .map(|n| at.iter().find(|(k, _)| *k == n).map_or("", |(_, v)| *v))
                .collect::<Vec<_>>()
                .join("|")
        };
        let xcn = |rpps: &str| format!("{rpps}^Name^Given^^^^^^^^^^RPPS");
        let (a, b, c) = (xcn("10000000001"), xcn("10000000002"), xcn("10000000003"));
        let copies = format!("{c}~{a}");
        let text = format!(
            "MSH|^~\\&|SIL|LAB|DPI|CHN|20250301100000||ORU^R01^ORU_R01|M1|P|2.5\r\
PID|||123^^^CHN^PI\rORC|{}\rOBR|{}\r",
            fields(&[(1, "RE"), (2, "PL-1^DPI-CHN"), (3, "F-1^LAB"), (12, &a)]),
            fields(&[
                (1, "1"),
                (2, "PL-1^DPI-CHN"),
                (3, "F-1^LAB"),
                (16, &b),
                (28, &copies)
            ]),
        );
        let msg = Message::parse(text.as_bytes()).expect("parses");
        let f = extract(&msg).expect("facts");
        assert_eq!(
            f.care_team,
            vec![
                ("10000000001".to_owned(), Link::Ordering),
                ("10000000002".to_owned(), Link::Ordering),
                ("10000000003".to_owned(), Link::Copy),
            ]
        );
        assert_eq!(f.care_team, crate::access::care_team(&msg));
    }
}
