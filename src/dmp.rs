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
    msg.segments_named("OBX")
        .find(|s| {
            let code = s.field(3);
            code.component(1).text() == name && code.component(3).text() == "MetaDMPMSS"
        })
        .map(|s| s.field(5).component(1).text().eq_ignore_ascii_case("Y"))
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

/// Whether PID-3 carries an INS and PID-32 says the identity is qualified (`VALI`).
pub fn identity_qualified(msg: &Message<'_>) -> bool {
    let vali = msg.segments_named("PID").next().is_some_and(|pid| {
        pid.field(32)
            .repetitions()
            .any(|r| r.component(1).text() == "VALI")
    });
    vali && ins(msg).is_some()
}

/// Whether an OBX carries a document (ED, and not MetaDMPMSS metadata such as a mail body).
pub fn is_document(obx: &Segment<'_>) -> bool {
    obx.field(2).text() == "ED" && obx.field(3).component(3).text() != "MetaDMPMSS"
}

/// `Some("correction")` or `Some("deletion")` when the report or a document in it has
/// status `C` or `D` (OBR-25, OBX-11 of an ED document): it amends something published
/// before.
pub fn amendment(msg: &Message<'_>) -> Option<&'static str> {
    let status = |s: &str| match s {
        "C" => Some("correction"),
        "D" => Some("deletion"),
        _ => None,
    };
    let obr = msg
        .segments_named("OBR")
        .find_map(|o| status(&o.field(25).text()));
    obr.or_else(|| {
        msg.segments_named("OBX")
            .filter(|o| o.field(2).text() == "ED" && o.field(3).component(3).text() != "MetaDMPMSS")
            .find_map(|o| status(&o.field(11).text()))
    })
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
