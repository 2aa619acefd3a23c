//! The DMP feed's gate: whether a result may be published to the national shared record,
//! and if not, why (`Withheld`, a fixed set of reasons that become the audit entry's reason
//! and the metric's label, never patient data).
//!
//! Feed only when all hold (checked in this order, the first failure is the reason):
//! the establishment enables the feed; the message's `DESTDMP` flag (MetaDMPMSS OBX) is not
//! `N`; the patient's identity is qualified (PID-32 `VALI` and an INS in PID-3); the patient
//! has not opposed (PAM France `ZFA-9` = `IO` from the latest ADT, or an opposition recorded
//! through the admin API); the DMP is not known to be closed or missing (`ZFA-1` `FERME` or
//! `INEXISTANT`).

use crate::hl7::Message;
use crate::hl7::message::Segment;

/// OIDs of the INS (NIR, NIA, and the test and demonstration ranges).
pub const INS_OIDS: [&str; 4] = [
    "1.2.250.1.213.1.4.8",
    "1.2.250.1.213.1.4.9",
    "1.2.250.1.213.1.4.10",
    "1.2.250.1.213.1.4.11",
];

/// Why a result is not published to the DMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withheld {
    NotEnabled,
    DestDmpNo,
    IdentityNotQualified,
    Opposition,
    DmpClosed,
}

impl Withheld {
    /// The reason's name (audit, metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Withheld::NotEnabled => "not_enabled",
            Withheld::DestDmpNo => "destdmp_no",
            Withheld::IdentityNotQualified => "identity_not_qualified",
            Withheld::Opposition => "opposition",
            Withheld::DmpClosed => "dmp_closed",
        }
    }
}

impl Withheld {
    const ALL: [Withheld; 5] = [
        Withheld::NotEnabled,
        Withheld::DestDmpNo,
        Withheld::IdentityNotQualified,
        Withheld::Opposition,
        Withheld::DmpClosed,
    ];

    /// The reason named `as_str` (a settled outcome keeps the name).
    pub fn from_name(name: &str) -> Option<Withheld> {
        Withheld::ALL.into_iter().find(|w| w.as_str() == name)
    }
}

impl std::fmt::Display for Withheld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the gate reads besides the message.
#[derive(Debug, Clone, Default)]
pub struct PatientState<'a> {
    /// The latest PAM France ZFA fields (1-based: `zfa[0]` is ZFA-1) recorded for this
    /// patient in this establishment.
    pub zfa: Option<&'a [String]>,
    /// An opposition recorded through the admin API.
    pub opposed: bool,
}

/// A MetaDMPMSS flag of the message (`DESTDMP`, `MASQUE_PS` …): `Some(true)` for `Y`,
/// `Some(false)` for `N`, `None` when absent.
pub fn flag(msg: &Message<'_>, name: &str) -> Option<bool> {
    msg.segments_named("OBX").find_map(|s| flag_in(&s, name))
}

/// [`flag`] for one OBX: `None` when it is not that flag.
pub fn flag_in(obx: &Segment<'_>, name: &str) -> Option<bool> {
    let code = obx.field(3);
    // Plain ASCII names: the raw bytes decide without unescaping (every result's OBX passes
    // here, in `router::extract`).
    (code.component(1).raw() == name.as_bytes() && code.component(3).raw() == b"MetaDMPMSS")
        .then(|| obx.field(5).component(1).text().eq_ignore_ascii_case("Y"))
}

/// The INS of PID-3 (value, OID), when it carries one.
pub fn ins(msg: &Message<'_>) -> Option<(String, String)> {
    let pid = msg.segments_named("PID").next()?;
    pid.field(3).repetitions().find_map(|r| {
        let oid = r.component(4).subcomponent(2).text();
        let value = r.component(1).text();
        (!value.is_empty() && INS_OIDS.contains(&oid.as_ref()))
            .then(|| (value.into_owned(), oid.into_owned()))
    })
}

/// The INS as the DMP register keeps it (`OID|value`).
pub fn ins_key(msg: &Message<'_>) -> Option<String> {
    ins(msg).map(|(value, oid)| format!("{oid}|{value}"))
}

/// Whether PID-3 carries an INS and PID-32 says the identity is qualified (`VALI`).
pub fn identity_qualified(msg: &Message<'_>) -> bool {
    let vali = msg.segments_named("PID").next().is_some_and(|pid| {
        pid.field(32)
            .repetitions()
            .any(|r| r.component(1).text() == "VALI")
    });
    vali && ins(msg).is_some()
}

/// Whether an OBX carries a document (ED, and not a mail body: MetaDMPMSS metadata such as
/// `CORPSMAIL_PS`, or the LPS MSSanté profile's `XDM/1.0/DDM` entry).
pub fn is_document(obx: &Segment<'_>) -> bool {
    obx.field(2).text() == "ED"
        && obx.field(3).component(3).text() != "MetaDMPMSS"
        && !is_lps_mail_body(obx)
}

/// The LPS MSSanté profile's mail body: an ED OBX whose OBX-3.2 is `XDM/1.0/DDM+<subject>`.
pub fn is_lps_mail_body(obx: &Segment<'_>) -> bool {
    obx.field(3).component(2).text().starts_with("XDM/1.0/DDM")
}

/// A later version of something published before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amendment {
    /// Status `C`: replaces the published version.
    Correction,
    /// Status `D`: takes it back.
    Deletion,
}

impl Amendment {
    pub fn as_str(self) -> &'static str {
        match self {
            Amendment::Correction => "correction",
            Amendment::Deletion => "deletion",
        }
    }
}

/// The amendment a message is, when the report or a document in it has status `C` or `D`
/// (OBR-25, OBX-11 of an ED document).
pub fn amendment(msg: &Message<'_>) -> Option<Amendment> {
    let status = |s: &str| match s {
        "C" => Some(Amendment::Correction),
        "D" => Some(Amendment::Deletion),
        _ => None,
    };
    let obr = msg
        .segments_named("OBR")
        .find_map(|o| status(&o.field(25).text()));
    obr.or_else(|| {
        msg.segments_named("OBX")
            .filter(is_document)
            .find_map(|o| status(&o.field(11).text()))
    })
}

/// Which report a message's documents are versions of, for the DMP register
/// (`store::DmpDocument`): `current` is where this message's documents are registered,
/// `previous` where the version they replace or delete is looked up, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    pub current: String,
    pub previous: Vec<String>,
}

/// The lineage of a message: for an MDM (CDA-in-HL7 document), the unique document number
/// TXA-12, whose replacement (T10) names the replaced one in TXA-13 and whose deletion names
/// the deleted one in TXA-12 (TXA-13 when it is not known under TXA-12); for a result, its
/// order (`order`: the filler number, else the placer number), every version of the report
/// sharing it. `None` when the message names neither.
pub fn lineage(msg: &Message<'_>, order: Option<String>) -> Option<Lineage> {
    let is_mdm = msg.msh().field(9).component(1).text() == "MDM";
    if !is_mdm {
        let o = order?;
        return Some(Lineage {
            current: o.clone(),
            previous: vec![o],
        });
    }
    let txa = msg.segments_named("TXA").next()?;
    let ei = |n: usize| {
        let f = txa.field(n);
        let id = f.component(1).text().trim().to_owned();
        (!id.is_empty()).then(|| format!("TXA\u{1f}{}\u{1f}{id}", f.component(2).text().trim()))
    };
    let (current, parent) = (ei(12)?, ei(13));
    let previous = if amendment(msg) == Some(Amendment::Deletion) {
        std::iter::once(current.clone()).chain(parent).collect()
    } else {
        parent
            .into_iter()
            .chain(std::iter::once(current.clone()))
            .collect()
    };
    Some(Lineage { current, previous })
}

/// [`lineage`] of a message whose routing facts are `facts`: the report's order is its
/// filler number, else its placer number (what a later version of the report names).
pub fn report_lineage(msg: &Message<'_>, facts: Option<&crate::router::Facts>) -> Option<Lineage> {
    let order = facts.and_then(|f| {
        f.filler_orders
            .first()
            .or(f.placer_orders.first())
            .map(|o| o.key())
    });
    lineage(msg, order)
}

/// The DMP's outcome as a business acknowledgement states it: accepted, or refused with the
/// ERR-5 code (table DMPERRORCODE) and its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reception {
    Accepted,
    Refused {
        code: &'static str,
        text: &'static str,
    },
}

impl Reception {
    /// For a withheld result; `None` for `DESTDMP=N` (the sender did not ask for the DMP:
    /// nothing to acknowledge).
    pub fn of_withheld(reason: Withheld) -> Option<Reception> {
        let refused = |code, text| Some(Reception::Refused { code, text });
        match reason {
            // The ANS example's code.
            Withheld::DmpClosed => refused("DMPClosed", "DMP fermé"),
            // Ours, in the same form (the profile's examples show no others).
            Withheld::Opposition => refused("PatientOpposition", "Opposition du patient"),
            Withheld::IdentityNotQualified => {
                refused("IdentityNotQualified", "Identité du patient non qualifiée")
            }
            Withheld::NotEnabled => refused("DMPFeedNotEnabled", "Alimentation du DMP non activée"),
            Withheld::DestDmpNo => None,
        }
    }

    /// A dead letter: the DMP refused the document, or could not be reached in time.
    pub const DEAD: Reception = Reception::Refused {
        code: "DMPNotDelivered",
        text: "Document non transmis au DMP",
    };
}

/// The business acknowledgement `ZAM^Z01` of the French CDA-in-HL7 profile (ANS
/// `…_Message_metier_reception_DMP.hl7`): the DMP's outcome for the message `h` describes,
/// sent back to its sender (`hl7::zam`).
pub fn reception_ack(
    h: &crate::hl7::ack::AckHeader,
    profile: &[u8],
    outcome: Reception,
    control_id: &str,
    timestamp: &str,
) -> Vec<u8> {
    use crate::hl7::zam;
    let error = match outcome {
        Reception::Accepted => None,
        Reception::Refused { code, text } => Some(zam::Error {
            code,
            text,
            system: "DMPERRORCODE",
        }),
    };
    zam::write(
        h,
        profile,
        &zam::Zam {
            trigger: "Z01",
            code: "ACK_RECEPTION_DMP",
            label: "Accusé de réception DMP",
            yes: outcome == Reception::Accepted,
            items: &[],
            error,
        },
        control_id,
        timestamp,
    )
}

/// The gate for a deletion: only the establishment's switch.
pub fn gate_deletion(enabled: bool) -> Result<(), Withheld> {
    if enabled {
        Ok(())
    } else {
        Err(Withheld::NotEnabled)
    }
}

/// The gate: `Ok` to publish, else the first reason not to.
pub fn gate(msg: &Message<'_>, enabled: bool, patient: &PatientState<'_>) -> Result<(), Withheld> {
    if !enabled {
        return Err(Withheld::NotEnabled);
    }
    if flag(msg, "DESTDMP") == Some(false) {
        return Err(Withheld::DestDmpNo);
    }
    if !identity_qualified(msg) {
        return Err(Withheld::IdentityNotQualified);
    }
    let zfa = |n: usize| {
        patient
            .zfa
            .and_then(|z| z.get(n - 1))
            .map(|s| s.trim().to_ascii_uppercase())
    };
    if patient.opposed || zfa(9).as_deref() == Some("IO") {
        return Err(Withheld::Opposition);
    }
    if matches!(zfa(1).as_deref(), Some("FERME" | "INEXISTANT")) {
        return Err(Withheld::DmpClosed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUALIFIED: &str = "MSH|^~\\&|SIL|LAB|DPI||20250301||ORU^R01^ORU_R01|1|P|2.5\r\
PID|||279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS~100001^^^CHNORD-IPP^PI||TEST^A|||||||||||||||||||||||||||VALI\r\
OBR|1|||11502-2^CR^LN\r\
OBX|1|CE|DESTDMP^Destinataire DMP^MetaDMPMSS||Y^^expandedYes-NoIndicator||||||F\r";

    fn with(edit: impl Fn(&str) -> String) -> Vec<u8> {
        edit(QUALIFIED).into_bytes()
    }

    #[test]
    fn lineage_follows_txa_for_documents_and_the_order_for_results() {
        let mdm = |trigger: &str, txa12: &str, txa13: &str, status: &str| {
            format!(
                "MSH|^~\\&|RIS|ORG|PFI|X|2021||MDM^{trigger}^MDM_T02|1|P|2.6\rTXA|1|18748-4|TEXT|2022||||||||{txa12}|{txa13}\rOBX|1|ED|18748-4^CR^LN||^text^XML^Base64^QQ==||||||{status}\r"
            )
        };
        let key = |id: &str| format!("TXA\u{1f}ORG\u{1f}{id}");
        let cases = [
            (mdm("T02", "D1^ORG", "", "F"), key("D1"), vec![key("D1")]),
            (
                mdm("T10", "D2^ORG", "D1^ORG", "C"),
                key("D2"),
                vec![key("D1"), key("D2")],
            ),
            (
                mdm("T04", "D2^ORG", "D1^ORG", "D"),
                key("D2"),
                vec![key("D2"), key("D1")],
            ),
        ];
        for (raw, current, previous) in cases {
            let m = Message::parse(raw.as_bytes()).expect("parses");
            assert_eq!(
                lineage(&m, Some("ignored".into())),
                Some(Lineage { current, previous }),
                "{raw}"
            );
        }
        let oru = Message::parse(b"MSH|^~\\&|A|B|C|D|2021||ORU^R01|1|P|2.5\rOBR|1||F1^LAB\r")
            .expect("parses");
        assert_eq!(
            lineage(&oru, Some("LAB\u{1f}F1".into())),
            Some(Lineage {
                current: "LAB\u{1f}F1".into(),
                previous: vec!["LAB\u{1f}F1".into()]
            })
        );
        assert_eq!(lineage(&oru, None), None);
    }

    /// The ZAM has the ANS example's form: the original's control id in OBX-4, the sender
    /// and receiver swapped, the ERR of a refusal.
    #[test]
    fn the_business_ack_has_the_profile_form() {
        let orig = b"MSH|^~\\&|SIL-Y|labo|PFI-X|Organisation-X|202106060931||ORU^R01^ORU_R01|015|P|2.5|||||FRA|UNICODE UTF-8|||2.1^CISIS_CDA_HL7_V2\r";
        let m = Message::parse(orig).expect("parses");
        let h = crate::hl7::ack::AckHeader::of(&m);
        let zam = reception_ack(
            &h,
            b"2.1^CISIS_CDA_HL7_V2",
            Reception::of_withheld(Withheld::DmpClosed).expect("acknowledged"),
            "017",
            "202106060933",
        );
        assert_eq!(
            String::from_utf8(zam).expect("utf8"),
            "MSH|^~\\&|PFI-X|Organisation-X|SIL-Y|labo|202106060933||ZAM^Z01^ZAM_Z01|017|P|2.6|||||FRA|UNICODE UTF-8|||2.1^CISIS_CDA_HL7_V2\r\
EVN||202106060933\r\
OBX|1|CWE|ACK_RECEPTION_DMP^Accusé de réception DMP^AckMetierZAM|015|N^^expandedYes-NoIndicator||||||F|\r\
ERR|||207^Application internal error^messageErrorCondition|E|DMPClosed^DMP fermé^DMPERRORCODE\r"
        );
        let ok = reception_ack(
            &h,
            b"2.0^CISIS_CDA_HL7_V2",
            Reception::Accepted,
            "18",
            "2021",
        );
        let ok = String::from_utf8(ok).expect("utf8");
        assert!(ok.contains("|015|Y^^HL70136||||||F|\r"), "{ok}");
        assert!(!ok.contains("ERR"), "{ok}");
        // An ISO 8859-1 original gets its ZAM in ISO 8859-1, accents and sender included.
        let latin = b"MSH|^~\\&|SIL-\xc9|labo|PFI-X|Organisation-X|202106060931||ORU^R01^ORU_R01|015|P|2.5|||||FRA|8859/1|||2.1^CISIS_CDA_HL7_V2\r";
        let m = Message::parse(latin).expect("parses");
        let zam = reception_ack(
            &crate::hl7::ack::AckHeader::of(&m),
            b"2.1^CISIS_CDA_HL7_V2",
            Reception::Accepted,
            "019",
            "2021",
        );
        assert!(std::str::from_utf8(&zam).is_err(), "not UTF-8");
        let text = crate::hl7::text::Charset::Latin1
            .decode(&zam)
            .expect("ISO 8859-1");
        assert!(
            text.contains("|SIL-\u{c9}|labo|2021||ZAM^Z01^ZAM_Z01|019|P|2.6|||||FRA|8859/1|"),
            "{text}"
        );
        assert!(text.contains("Accus\u{e9} de r\u{e9}ception DMP"), "{text}");
        assert_eq!(Reception::of_withheld(Withheld::DestDmpNo), None);
        for w in Withheld::ALL {
            assert_eq!(Withheld::from_name(w.as_str()), Some(w));
        }
    }

    /// Every condition, alone, withholds with its own reason; all together, it is sent.
    #[test]
    fn each_condition_has_its_reason() {
        let zfa = |one: &str, nine: &str| -> Vec<String> {
            let mut z = vec![String::new(); 10];
            z[0] = one.into();
            z[8] = nine.into();
            z
        };
        let active = zfa("ACTIF", "INO");
        let opposed = zfa("ACTIF", "IO");
        let closed = zfa("FERME", "INO");
        let missing = zfa("INEXISTANT", "");
        let ok = with(|m| m.to_owned());
        let no_flag = with(|m| m.replace("Y^^expandedYes", "N^^expandedYes"));
        let no_vali = with(|m| m.replace("|VALI\r", "|PROV\r"));
        let no_ins = with(|m| m.replace("1.2.250.1.213.1.4.8", "1.2.250.1.999"));
        let no_destdmp_obx = with(|m| m.replace("DESTDMP^", "OTHER^"));
        type Case<'a> = (
            &'a [u8],
            bool,
            Option<&'a [String]>,
            bool,
            Result<(), Withheld>,
        );
        let cases: Vec<Case<'_>> = vec![
            (&ok, true, Some(&active), false, Ok(())),
            (&ok, true, None, false, Ok(())),
            (&no_destdmp_obx, true, None, false, Ok(())),
            (&ok, false, Some(&active), false, Err(Withheld::NotEnabled)),
            (
                &no_flag,
                true,
                Some(&active),
                false,
                Err(Withheld::DestDmpNo),
            ),
            (
                &no_vali,
                true,
                Some(&active),
                false,
                Err(Withheld::IdentityNotQualified),
            ),
            (
                &no_ins,
                true,
                Some(&active),
                false,
                Err(Withheld::IdentityNotQualified),
            ),
            (&ok, true, Some(&opposed), false, Err(Withheld::Opposition)),
            (&ok, true, Some(&active), true, Err(Withheld::Opposition)),
            (&ok, true, Some(&closed), false, Err(Withheld::DmpClosed)),
            (&ok, true, Some(&missing), false, Err(Withheld::DmpClosed)),
        ];
        for (i, (raw, enabled, zfa, opposed, want)) in cases.into_iter().enumerate() {
            let msg = Message::parse(raw).expect("parses");
            let state = PatientState { zfa, opposed };
            assert_eq!(gate(&msg, enabled, &state), want, "case {i}");
        }
    }
}
