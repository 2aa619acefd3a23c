//! Business acknowledgements (`ZAM`) of the French CDA-in-HL7 profile (ANS
//! `…_Message_metier_*.hl7`): `ZAM^Z01` the DMP's reception, `ZAM^Z02` an MSSanté
//! recipient's reception, `ZAM^Z03` his read receipt. Each answers one message: sender and
//! receiver swapped, the original's control id in OBX-1's OBX-4, its MSH-21 profile (which
//! also picks the coding-system names: 2.0 HL7 table numbers), written in its charset
//! (MSH-18: UTF-8, ISO 8859-1 or -15; another one gets ASCII texts).

use super::ack::AckHeader;
use super::message::Delimiters;
use super::text::{Charset, encode, escape};

/// What one OBX after the first carries.
pub struct Item<'a> {
    /// OBX-3.1 and OBX-3.2 (`DESTINATAIRE_MSS`, "Destinataire MSSanté").
    pub code: &'a str,
    pub label: &'a str,
    /// OBX-4: who it is about (a practitioner's IDNPS), may be empty.
    pub id: &'a str,
    /// OBX-5, an XTN: the mailbox (`^^X.400^address`), may be empty.
    pub mailbox: &'a str,
}

/// An ERR: the error's code, text and coding system.
pub struct Error<'a> {
    pub code: &'a str,
    pub text: &'a str,
    pub system: &'a str,
}

/// One business acknowledgement.
pub struct Zam<'a> {
    /// `Z01`, `Z02`, `Z03`.
    pub trigger: &'a str,
    /// OBX-1's OBX-3.1 and OBX-3.2 (`ACK_RECEPTION_DMP`, "Accusé de réception DMP").
    pub code: &'a str,
    pub label: &'a str,
    /// OBX-1's OBX-5: Y or N.
    pub yes: bool,
    pub items: &'a [Item<'a>],
    pub error: Option<Error<'a>>,
}

/// Writes `zam` as the answer to the message `h` describes. `profile` is the original's
/// MSH-21 (`2.1^CISIS_CDA_HL7_V2`).
pub fn write(
    h: &AckHeader,
    profile: &[u8],
    zam: &Zam<'_>,
    control_id: &str,
    timestamp: &str,
) -> Vec<u8> {
    let d = h.delims.unwrap_or(Delimiters::standard());
    let (fs, cs) = (d.field as char, d.component as char);
    let utf8 = h.charset.is_empty() || h.charset == b"UNICODE UTF-8";
    // The original's charset (ASCII when labroute cannot write it): the ZAM is written in it.
    let charset_of = match Charset::from_msh18(&h.charset) {
        Ok(Some(c)) => c,
        Ok(None) => Charset::Utf8,
        Err(_) => Charset::Ascii,
    };
    // A text of ours: kept when the charset has it, else its accents dropped; escaped.
    let text = |t: &str| -> String {
        let t = if encode(charset_of, t).is_some() {
            t.to_owned()
        } else {
            t.chars()
                .map(|c| match c {
                    'é' | 'è' | 'ê' => 'e',
                    'à' => 'a',
                    c if c.is_ascii() => c,
                    _ => '?',
                })
                .collect()
        };
        escape(&t, &d)
    };
    // A field of the original, as it was (already escaped).
    let s = |b: &[u8]| match charset_of.decode(b) {
        Ok(t) => t.into_owned(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    };
    let v20 = profile.starts_with(b"2.0");
    let (yes_no, condition) = if v20 {
        ("HL70136", "HL70357")
    } else {
        ("expandedYes-NoIndicator", "messageErrorCondition")
    };
    let charset = if utf8 {
        "UNICODE UTF-8".to_owned()
    } else {
        s(&h.charset)
    };
    let country = if h.country.is_empty() {
        "FRA".to_owned()
    } else {
        s(&h.country)
    };
    let mut out = format!(
        "MSH{fs}{enc}{fs}{ra}{fs}{rf}{fs}{sa}{fs}{sf}{fs}{timestamp}{fs}{fs}ZAM{cs}{trigger}{cs}ZAM_Z01{fs}{control_id}{fs}{pid}{fs}2.6{fs}{fs}{fs}{fs}{fs}{country}{fs}{charset}{fs}{fs}{fs}{profile}\r\
EVN{fs}{fs}{timestamp}\r\
OBX{fs}1{fs}CWE{fs}{code}{cs}{label}{cs}AckMetierZAM{fs}{original}{fs}{yn}{cs}{cs}{yes_no}{fs}{fs}{fs}{fs}{fs}{fs}F{fs}\r",
        enc = s(&d.encoding_characters()),
        ra = s(&h.receiving_app),
        rf = s(&h.receiving_facility),
        sa = s(&h.sending_app),
        sf = s(&h.sending_facility),
        pid = if h.processing_id.is_empty() {
            "P".to_owned()
        } else {
            s(&h.processing_id)
        },
        trigger = zam.trigger,
        profile = s(profile),
        code = text(zam.code),
        label = text(zam.label),
        original = s(&h.control_id),
        yn = if zam.yes { "Y" } else { "N" },
    );
    for (n, item) in zam.items.iter().enumerate() {
        out.push_str(&format!(
            "OBX{fs}{n}{fs}XTN{fs}{code}{cs}{label}{cs}AckMetierZAM{fs}{id}{fs}{cs}{cs}X.400{cs}{mailbox}{fs}{fs}{fs}{fs}{fs}{fs}F{fs}\r",
            n = n + 2,
            code = text(item.code),
            label = text(item.label),
            id = text(item.id),
            mailbox = text(item.mailbox),
        ));
    }
    if let Some(e) = &zam.error {
        out.push_str(&format!(
            "ERR{fs}{fs}{fs}207{cs}Application internal error{cs}{condition}{fs}E{fs}{code}{cs}{t}{cs}{system}\r",
            code = text(e.code),
            t = text(e.text),
            system = text(e.system),
        ));
    }
    encode(charset_of, &out).unwrap_or_else(|| out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::Message;

    /// The ANS examples' form for an MSSanté reception and read receipt, byte for byte
    /// (`…_Message_metier_reception_MSS.hl7`, `…_lecture_MSS.hl7`, version 2.1).
    #[test]
    fn mssante_receipts_have_the_profile_form() {
        let orig = b"MSH|^~\\&|SIL-Y|labo|PFI-X|Organisation-X|202106060931||ORU^R01^ORU_R01|015|P|2.5|||||FRA|UNICODE UTF-8|||2.1^CISIS_CDA_HL7_V2\r";
        let m = Message::parse(orig).expect("parses");
        let h = AckHeader::of(&m);
        let item = |code, label| Item {
            code,
            label,
            id: "801234567897",
            mailbox: "adam.hoda@test-ci-sis.mssante.fr",
        };
        let z02 = write(
            &h,
            b"2.1^CISIS_CDA_HL7_V2",
            &Zam {
                trigger: "Z02",
                code: "ACK_RECEPTION_MSS",
                label: "Accusé de réception MSSanté",
                yes: true,
                items: &[item("DESTINATAIRE_MSS", "Destinataire MSSanté")],
                error: None,
            },
            "018",
            "202106060934",
        );
        assert_eq!(
            String::from_utf8(z02).expect("utf8"),
            "MSH|^~\\&|PFI-X|Organisation-X|SIL-Y|labo|202106060934||ZAM^Z02^ZAM_Z01|018|P|2.6|||||FRA|UNICODE UTF-8|||2.1^CISIS_CDA_HL7_V2\r\
EVN||202106060934\r\
OBX|1|CWE|ACK_RECEPTION_MSS^Accusé de réception MSSanté^AckMetierZAM|015|Y^^expandedYes-NoIndicator||||||F|\r\
OBX|2|XTN|DESTINATAIRE_MSS^Destinataire MSSanté^AckMetierZAM|801234567897|^^X.400^adam.hoda@test-ci-sis.mssante.fr||||||F|\r"
        );
        let z03 = write(
            &h,
            b"2.0^CISIS_CDA_HL7_V2",
            &Zam {
                trigger: "Z03",
                code: "ACK_LECTURE_MSS",
                label: "Accusé de lecture",
                yes: true,
                items: &[item("LECTEUR_MSS", "Lecteur du courriel MSSanté")],
                error: None,
            },
            "019",
            "202106070933",
        );
        let z03 = String::from_utf8(z03).expect("utf8");
        assert!(z03.contains("|ZAM^Z03^ZAM_Z01|019|"), "{z03}");
        assert!(
            z03.contains("OBX|1|CWE|ACK_LECTURE_MSS^Accusé de lecture^AckMetierZAM|015|Y^^HL70136||||||F|\rOBX|2|XTN|LECTEUR_MSS^Lecteur du courriel MSSanté^AckMetierZAM|801234567897|^^X.400^adam.hoda@test-ci-sis.mssante.fr||||||F|\r"),
            "{z03}"
        );
        // A refusal: N and an ERR; an address with a delimiter in it is escaped.
        let odd = write(
            &h,
            b"2.1^CISIS_CDA_HL7_V2",
            &Zam {
                trigger: "Z02",
                code: "ACK_RECEPTION_MSS",
                label: "Accusé de réception MSSanté",
                yes: false,
                items: &[Item {
                    code: "DESTINATAIRE_MSS",
                    label: "Destinataire MSSanté",
                    id: "",
                    mailbox: "a&b|c@x.fr",
                }],
                error: Some(Error {
                    code: "not_in_directory",
                    text: "Destinataire absent de l'annuaire",
                    system: "99LABROUTE",
                }),
            },
            "020",
            "2021",
        );
        let odd = String::from_utf8(odd).expect("utf8");
        assert!(odd.contains("||^^X.400^a\\T\\b\\F\\c@x.fr|"), "{odd}");
        assert!(
            odd.ends_with("ERR|||207^Application internal error^messageErrorCondition|E|not_in_directory^Destinataire absent de l'annuaire^99LABROUTE\r"),
            "{odd}"
        );
    }
}
