//! The MSSanté business acknowledgements a sender asks for (`ACK_RECEPTION`,
//! `ACK_LECTURE_MSS`), in the form of the ANS examples (`…_Message_metier_reception_MSS`,
//! `…_lecture_MSS`): one `ZAM^Z02` per recipient when the SMTP server took his mail (Y) or
//! when he was not mailed (N, the reason in ERR), one `ZAM^Z03` per read receipt (MDN).

use crate::hl7::ack::AckHeader;
use crate::hl7::zam::{self, Item, Zam};

/// The coding system of labroute's own reasons in a ZAM's ERR-5 (HL7 local: `99…`).
pub const REASONS: &str = "99LABROUTE";

/// Who a receipt is about, as the sender knows him.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Who {
    pub address: Option<String>,
    pub rpps: Option<String>,
}

impl Who {
    /// His national identifier as the profile writes it in OBX-4 (IDNPS: `8` + RPPS).
    fn idnps(&self) -> String {
        self.rpps
            .as_deref()
            .map(|r| format!("8{r}"))
            .unwrap_or_default()
    }
}

/// One receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// The SMTP server took his mail (250).
    Received(Who),
    /// Not mailed: an outcome name (`policy::MailRefusal`, `server_refused`).
    Refused(Who, String),
    /// The mail could not be handed over at all (a dead letter).
    NotDelivered,
    /// His read receipt: displayed (Y) or deleted unread (N).
    Read(Who, bool),
}

impl Receipt {
    /// `ZAM^Z02` or `ZAM^Z03`.
    pub fn message_type(&self) -> &'static str {
        match self {
            Receipt::Read(..) => "ZAM^Z03",
            _ => "ZAM^Z02",
        }
    }
}

/// The text an outcome name stands for, for the sender.
pub fn reason_text(outcome: &str) -> &'static str {
    match outcome {
        SERVER_REFUSED => "Refusé par le serveur de messagerie",
        NOT_DELIVERED => "Courriel non transmis",
        other => crate::policy::MailRefusal::from_name(other)
            .map(|r| r.text())
            .unwrap_or("Non transmis"),
    }
}

/// The outcome of a recipient the SMTP server refused (5xx).
pub const SERVER_REFUSED: &str = "server_refused";
/// The outcome of a mail that could not be handed over (a dead letter).
pub const NOT_DELIVERED: &str = "not_delivered";

/// The ZAM for `receipt`, answering the message `h` describes (its MSH-21 `profile`).
pub fn zam(
    h: &AckHeader,
    profile: &[u8],
    receipt: &Receipt,
    control_id: &str,
    timestamp: &str,
) -> Vec<u8> {
    let (who, yes, reason) = match receipt {
        Receipt::Received(w) => (Some(w), true, None),
        Receipt::Refused(w, r) => (Some(w), false, Some(r.as_str())),
        Receipt::NotDelivered => (None, false, Some(NOT_DELIVERED)),
        Receipt::Read(w, displayed) => (Some(w), *displayed, None),
    };
    let read = matches!(receipt, Receipt::Read(..));
    let id = who.map(Who::idnps).unwrap_or_default();
    let items: Vec<Item<'_>> = who
        .map(|w| Item {
            code: if read {
                "LECTEUR_MSS"
            } else {
                "DESTINATAIRE_MSS"
            },
            label: if read {
                "Lecteur du courriel MSSanté"
            } else {
                "Destinataire MSSanté"
            },
            id: &id,
            mailbox: w.address.as_deref().unwrap_or(""),
        })
        .into_iter()
        .collect();
    let (trigger, code, label) = if read {
        ("Z03", "ACK_LECTURE_MSS", "Accusé de lecture")
    } else {
        ("Z02", "ACK_RECEPTION_MSS", "Accusé de réception MSSanté")
    };
    zam::write(
        h,
        profile,
        &Zam {
            trigger,
            code,
            label,
            yes,
            items: &items,
            error: reason.map(|r| zam::Error {
                code: r,
                text: reason_text(r),
                system: REASONS,
            }),
        },
        control_id,
        timestamp,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::Message;

    #[test]
    fn each_receipt_has_its_form() {
        let orig = b"MSH|^~\\&|SIL-Y|labo|PFI-X|Organisation-X|2021||ORU^R01^ORU_R01|015|P|2.5|||||FRA|UNICODE UTF-8|||2.1^CISIS_CDA_HL7_V2\r";
        let h = AckHeader::of(&Message::parse(orig).expect("parses"));
        let p = b"2.1^CISIS_CDA_HL7_V2";
        let who = Who {
            address: Some("dr.copy@medecin.mssante.fr".into()),
            rpps: Some("10000000001".into()),
        };
        let text = |r: &Receipt| String::from_utf8(zam(&h, p, r, "LRZ1", "2021")).expect("utf8");
        let ok = text(&Receipt::Received(who.clone()));
        assert!(ok.contains("|ZAM^Z02^ZAM_Z01|LRZ1|"), "{ok}");
        assert!(ok.contains("|015|Y^^expandedYes-NoIndicator|"), "{ok}");
        assert!(
            ok.contains("DESTINATAIRE_MSS^Destinataire MSSanté^AckMetierZAM|810000000001|^^X.400^dr.copy@medecin.mssante.fr|"),
            "{ok}"
        );
        assert!(!ok.contains("ERR"), "{ok}");
        let no = text(&Receipt::Refused(
            Who {
                address: None,
                rpps: Some("10000000002".into()),
            },
            "domain_not_whitelisted".into(),
        ));
        assert!(no.contains("|015|N^^expandedYes-NoIndicator|"), "{no}");
        assert!(no.contains("|810000000002|^^X.400^|"), "{no}");
        assert!(
            no.ends_with("|E|domain_not_whitelisted^Domaine hors de l'espace de confiance MSSanté^99LABROUTE\r"),
            "{no}"
        );
        let dead = text(&Receipt::NotDelivered);
        assert!(!dead.contains("OBX|2"), "{dead}");
        assert!(dead.contains("|E|not_delivered^"), "{dead}");
        let read = text(&Receipt::Read(who.clone(), true));
        assert!(read.contains("|ZAM^Z03^ZAM_Z01|"), "{read}");
        assert!(
            read.contains("ACK_LECTURE_MSS^Accusé de lecture^AckMetierZAM|015|Y^"),
            "{read}"
        );
        assert!(read.contains("LECTEUR_MSS^"), "{read}");
        let unread = text(&Receipt::Read(who, false));
        assert!(unread.contains("|015|N^"), "{unread}");
    }
}
