//! Acknowledgement messages (HL7 v2 chapter 2): original mode AA/AE/AR, enhanced mode
//! CA/CE/CR, an ERR segment with an HL7 table 0357 code and a generic text.
//!
//! The ACK reuses the original message's delimiters, swaps MSH-3/4 with MSH-5/6, echoes
//! MSH-10 in MSA-2 and copies MSH-11, MSH-12, MSH-17 and MSH-18, as the French guide's
//! example ACKs do. Error texts are fixed strings chosen by the engine: no patient data.

use super::message::{Delimiters, Message};

/// MSA-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AckCode {
    AA,
    AE,
    AR,
    CA,
    CE,
    CR,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }
    pub fn parse(s: &str) -> Option<AckCode> {
        Some(match s {
            "AA" => AckCode::AA,
            "AE" => AckCode::AE,
            "AR" => AckCode::AR,
            "CA" => AckCode::CA,
            "CE" => AckCode::CE,
            "CR" => AckCode::CR,
            _ => return None,
        })
    }
    /// The outcome a sender reads: accepted, error (retry), or rejected.
    pub fn outcome(self) -> AckOutcome {
        match self {
            AckCode::AA | AckCode::CA => AckOutcome::Accepted,
            AckCode::AE | AckCode::CE => AckOutcome::Error,
            AckCode::AR | AckCode::CR => AckOutcome::Rejected,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    Accepted,
    Error,
    Rejected,
}

/// What goes in the ERR segment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AckError {
    /// HL7 table 0357 code (100 segment sequence, 101 required field missing, 102 data type,
    /// 103 table value not found, 200 unsupported message type, 201 unsupported event,
    /// 205 duplicate key, 207 application internal error).
    pub code: u16,
    /// A generic, patient-free explanation.
    pub text: String,
    /// Where: segment id and field number, when known.
    pub location: Option<(String, u16)>,
}

/// MSA-1 code for a given outcome, in the mode the message asked for.
pub fn code_for(enhanced: bool, outcome: AckOutcome) -> AckCode {
    match (enhanced, outcome) {
        (false, AckOutcome::Accepted) => AckCode::AA,
        (false, AckOutcome::Error) => AckCode::AE,
        (false, AckOutcome::Rejected) => AckCode::AR,
        (true, AckOutcome::Accepted) => AckCode::CA,
        (true, AckOutcome::Error) => AckCode::CE,
        (true, AckOutcome::Rejected) => AckCode::CR,
    }
}

/// MSH-16: which application acknowledgements the sender wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AppAckType {
    /// AL
    Always,
    /// ER
    OnError,
    /// SU
    OnSuccess,
}

impl AppAckType {
    fn parse(raw: &[u8]) -> Option<AppAckType> {
        match raw {
            b"AL" => Some(AppAckType::Always),
            b"ER" => Some(AppAckType::OnError),
            b"SU" => Some(AppAckType::OnSuccess),
            _ => None,
        }
    }
    pub fn sends(self, outcome: AckOutcome) -> bool {
        match self {
            AppAckType::Always => true,
            AppAckType::OnError => outcome != AckOutcome::Accepted,
            AppAckType::OnSuccess => outcome == AckOutcome::Accepted,
        }
    }
}

/// The application ACK a message asks for once its outcome is final (enhanced mode: MSH-15
/// other than NE, MSH-16 AL/ER/SU). With MSH-15 = NE the application ACK is the immediate
/// answer instead (`AcceptAckType::Immediate`), as HL7 v2 chapter 2 makes NE/AL equal to
/// original mode.
pub fn deferred_app_ack(msg: &Message<'_>) -> Option<AppAckType> {
    let msh15 = msg.msh().field(15).raw();
    let app = AppAckType::parse(msg.msh().field(16).raw())?;
    (msh15 != b"NE").then_some(app)
}

/// Acknowledgement mode requested by a message (MSH-15 accept ack type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptAckType {
    /// MSH-15 and MSH-16 empty: original mode, always answer.
    Original,
    /// MSH-15 = NE with MSH-16 set: answer AA/AE/AR on the connection, as MSH-16 says.
    Immediate(AppAckType),
    Always,
    Never,
    OnError,
    OnSuccess,
}

impl AcceptAckType {
    pub fn of(msg: &Message<'_>) -> AcceptAckType {
        let msh15 = msg.msh().field(15).raw();
        let msh16 = msg.msh().field(16).raw();
        if msh15.is_empty() && msh16.is_empty() {
            return AcceptAckType::Original;
        }
        match msh15 {
            b"NE" => match AppAckType::parse(msh16) {
                Some(app) => AcceptAckType::Immediate(app),
                None => AcceptAckType::Never,
            },
            b"ER" => AcceptAckType::OnError,
            b"SU" => AcceptAckType::OnSuccess,
            // AL, or empty with MSH-16 set: answer always.
            _ => AcceptAckType::Always,
        }
    }
    /// Whether the immediate answer uses the commit codes CA/CE/CR.
    pub fn enhanced(self) -> bool {
        !matches!(self, AcceptAckType::Original | AcceptAckType::Immediate(_))
    }
    /// Whether an ACK with this outcome is sent.
    pub fn sends(self, outcome: AckOutcome) -> bool {
        match self {
            AcceptAckType::Original | AcceptAckType::Always => true,
            AcceptAckType::Immediate(app) => app.sends(outcome),
            AcceptAckType::Never => false,
            AcceptAckType::OnError => outcome != AckOutcome::Accepted,
            AcceptAckType::OnSuccess => outcome == AckOutcome::Accepted,
        }
    }
}

/// The parts of the original message an ACK echoes, raw (already escaped for `delims`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct AckHeader {
    pub delims: Option<Delimiters>,
    #[serde(with = "crate::model::b64")]
    pub sending_app: Vec<u8>,
    #[serde(with = "crate::model::b64")]
    pub sending_facility: Vec<u8>,
    #[serde(with = "crate::model::b64")]
    pub receiving_app: Vec<u8>,
    #[serde(with = "crate::model::b64")]
    pub receiving_facility: Vec<u8>,
    #[serde(with = "crate::model::b64")]
    pub trigger: Vec<u8>,
    #[serde(with = "crate::model::b64")]
    pub control_id: Vec<u8>,
    #[serde(with = "crate::model::b64")]
    pub processing_id: Vec<u8>,
    #[serde(with = "crate::model::b64")]
    pub version: Vec<u8>,
    #[serde(with = "crate::model::b64")]
    pub country: Vec<u8>,
    #[serde(with = "crate::model::b64")]
    pub charset: Vec<u8>,
}

impl AckHeader {
    pub fn of(msg: &Message<'_>) -> AckHeader {
        let msh = msg.msh();
        let f = |n| msh.field(n).raw().to_vec();
        AckHeader {
            delims: Some(*msg.delimiters()),
            sending_app: f(3),
            sending_facility: f(4),
            receiving_app: f(5),
            receiving_facility: f(6),
            trigger: msh.field(9).component(2).raw().to_vec(),
            control_id: f(10),
            processing_id: f(11),
            version: f(12),
            country: f(17),
            charset: msh.field(18).repetition(1).raw().to_vec(),
        }
    }

    /// Best effort from bytes that did not parse: reads what it can of the first line.
    pub fn salvage(bytes: &[u8]) -> AckHeader {
        let bytes = super::message::strip_bom(bytes);
        let Ok(delims) = super::message::read_delimiters(bytes) else {
            return AckHeader::default();
        };
        let line_end = bytes
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(bytes.len());
        let line = &bytes[..line_end];
        let fields: Vec<&[u8]> = line.split(|&b| b == delims.field).collect();
        // fields[0] = "MSH", fields[1] = MSH-2, fields[n-1] = MSH-n.
        let f = |n: usize| fields.get(n - 1).map(|s| s.to_vec()).unwrap_or_default();
        let safe = |v: Vec<u8>| if v.is_ascii() { v } else { Vec::new() };
        let msh9 = f(9);
        let trigger = msh9
            .split(|&b| b == delims.component)
            .nth(1)
            .map(|s| s.to_vec())
            .unwrap_or_default();
        AckHeader {
            delims: Some(delims),
            sending_app: safe(f(3)),
            sending_facility: safe(f(4)),
            receiving_app: safe(f(5)),
            receiving_facility: safe(f(6)),
            trigger: safe(trigger),
            control_id: safe(f(10)),
            processing_id: safe(f(11)),
            version: safe(f(12)),
            country: safe(f(17)),
            charset: Vec::new(),
        }
    }
}

/// Builds an ACK message (segments terminated by `\r`).
pub fn build(
    h: &AckHeader,
    code: AckCode,
    err: Option<&AckError>,
    control_id: &str,
    timestamp: &str,
) -> Vec<u8> {
    let d = h.delims.unwrap_or(Delimiters::standard());
    let fs = d.field;
    let cs = d.component;
    let mut out = Vec::with_capacity(200);
    out.extend_from_slice(b"MSH");
    out.push(fs);
    out.extend_from_slice(&d.encoding_characters());
    for part in [
        &h.receiving_app,
        &h.receiving_facility,
        &h.sending_app,
        &h.sending_facility,
    ] {
        out.push(fs);
        out.extend_from_slice(part);
    }
    out.push(fs);
    out.extend_from_slice(timestamp.as_bytes());
    out.push(fs);
    out.push(fs);
    out.extend_from_slice(b"ACK");
    if !h.trigger.is_empty() {
        out.push(cs);
        out.extend_from_slice(&h.trigger);
        // MSH-9.3 (message structure) exists from v2.3.1 on.
        if !matches!(h.version.as_slice(), b"2.1" | b"2.2" | b"2.3") {
            out.push(cs);
            out.extend_from_slice(b"ACK");
        }
    }
    out.push(fs);
    out.extend_from_slice(control_id.as_bytes());
    out.push(fs);
    if h.processing_id.is_empty() {
        out.push(b'P');
    } else {
        out.extend_from_slice(&h.processing_id);
    }
    out.push(fs);
    if h.version.is_empty() {
        out.extend_from_slice(b"2.5");
    } else {
        out.extend_from_slice(&h.version);
    }
    if !h.country.is_empty() || !h.charset.is_empty() {
        for _ in 13..=17 {
            out.push(fs);
        }
        out.extend_from_slice(&h.country);
        if !h.charset.is_empty() {
            out.push(fs);
            out.extend_from_slice(&h.charset);
        }
    }
    out.push(b'\r');
    out.extend_from_slice(b"MSA");
    out.push(fs);
    out.extend_from_slice(code.as_str().as_bytes());
    out.push(fs);
    out.extend_from_slice(&h.control_id);
    out.push(b'\r');
    if let Some(e) = err {
        let text = super::text::escape(&e.text, &d);
        let old_style = matches!(
            h.version.as_slice(),
            b"2.1" | b"2.2" | b"2.3" | b"2.3.1" | b"2.4"
        );
        out.extend_from_slice(b"ERR");
        out.push(fs);
        if old_style {
            // ERR-1 (CM_ELD): segment^sequence^field^code&text&HL70357
            let sub = d.subcomponent.unwrap_or(b'&');
            if let Some((seg, field)) = &e.location {
                out.extend_from_slice(seg.as_bytes());
                out.push(cs);
                out.push(b'1');
                out.push(cs);
                out.extend_from_slice(field.to_string().as_bytes());
            } else {
                out.push(cs);
                out.push(cs);
            }
            out.push(cs);
            out.extend_from_slice(e.code.to_string().as_bytes());
            out.push(sub);
            out.extend_from_slice(text.as_bytes());
            out.push(sub);
            out.extend_from_slice(b"HL70357");
        } else {
            // v2.5+: ERR-2 location (ERL), ERR-3 code (CWE), ERR-4 severity.
            out.push(fs);
            if let Some((seg, field)) = &e.location {
                out.extend_from_slice(seg.as_bytes());
                out.push(cs);
                out.push(b'1');
                out.push(cs);
                out.extend_from_slice(field.to_string().as_bytes());
            }
            out.push(fs);
            out.extend_from_slice(e.code.to_string().as_bytes());
            out.push(cs);
            out.extend_from_slice(text.as_bytes());
            out.push(cs);
            out.extend_from_slice(b"HL70357");
            out.push(fs);
            out.push(if e.code == 0 { b'I' } else { b'E' });
        }
        out.push(b'\r');
    }
    out
}

/// What a peer's ACK says: MSA-1 and MSA-2. Lenient about everything else in the ACK (some
/// peers put odd values in MSH, such as `ACK` in MSH-10).
pub fn read_peer_ack(bytes: &[u8]) -> Option<(AckCode, String)> {
    let prepared = super::message::prepare(bytes);
    let msg = Message::parse(&prepared).ok()?;
    let msa = msg.segment("MSA")?;
    let code = AckCode::parse(msa.field(1).text().trim())?;
    Some((code, msa.field(2).text().into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_swaps_sender_and_receiver_and_echoes_the_control_id() {
        let raw = b"MSH|^~\\&|SIL-Y|labo|PFI-X|Organisation-X|202106060931||ORU^R01^ORU_R01|015|P|2.5|||||FRA|UNICODE UTF-8|||2.1^CISIS_CDA_HL7_V2\rPID|1";
        let m = Message::parse(raw).unwrap();
        let ack = build(&AckHeader::of(&m), AckCode::AA, None, "016", "202106060931");
        assert_eq!(
            String::from_utf8(ack).unwrap(),
            "MSH|^~\\&|PFI-X|Organisation-X|SIL-Y|labo|202106060931||ACK^R01^ACK|016|P|2.5|||||FRA|UNICODE UTF-8\rMSA|AA|015\r"
        );
    }

    #[test]
    fn nak_carries_an_err_segment_in_the_version_s_shape() {
        let raw = b"MSH|^~\\&|A|B|C|D|x||ORU^R01|9|P|2.5.1\r";
        let m = Message::parse(raw).unwrap();
        let err = AckError {
            code: 200,
            text: "message type not supported | here".into(),
            location: Some(("MSH".into(), 9)),
        };
        let ack = String::from_utf8(build(&AckHeader::of(&m), AckCode::AR, Some(&err), "1", "t"))
            .unwrap();
        assert!(
            ack.ends_with(
                "MSA|AR|9\rERR||MSH^1^9|200^message type not supported \\F\\ here^HL70357|E\r"
            ),
            "{ack}"
        );
        let raw = b"MSH|^~\\&|A|B|C|D|x||ORU^R01|9|P|2.3\r";
        let m = Message::parse(raw).unwrap();
        let ack = String::from_utf8(build(&AckHeader::of(&m), AckCode::AR, Some(&err), "1", "t"))
            .unwrap();
        assert!(
            ack.ends_with("ERR|MSH^1^9^200&message type not supported \\F\\ here&HL70357\r"),
            "{ack}"
        );
    }

    #[test]
    fn salvaged_header_from_a_broken_message() {
        let h = AckHeader::salvage(b"MSH|^~\\&|A|B|C|D|x||ORU^R01|42|P|2.5\rpid|broken");
        assert_eq!(h.control_id, b"42");
        assert_eq!(h.trigger, b"R01");
        assert_eq!(AckHeader::salvage(b"garbage"), AckHeader::default());
    }

    #[test]
    fn enhanced_mode_rules() {
        let m = Message::parse(b"MSH|^~\\&|A|B|C|D|x||ORU^R01|9|P|2.5|||ER|AL\r").unwrap();
        let t = AcceptAckType::of(&m);
        assert_eq!(t, AcceptAckType::OnError);
        assert!(!t.sends(AckOutcome::Accepted));
        assert!(t.sends(AckOutcome::Rejected));
        assert_eq!(code_for(t.enhanced(), AckOutcome::Rejected), AckCode::CR);
        let m = Message::parse(b"MSH|^~\\&|A|B|C|D|x||ORU^R01|9|P|2.5\r").unwrap();
        assert_eq!(AcceptAckType::of(&m), AcceptAckType::Original);
    }

    #[test]
    fn peer_ack_with_odd_msh_is_read() {
        let (code, id) = read_peer_ack(b"MSH|^~\\&|||||||ACK|ACK|P|2.5\rMSA|AA|X1\r").unwrap();
        assert_eq!((code, id.as_str()), (AckCode::AA, "X1"));
        assert!(read_peer_ack(b"MSH|^~\\&|\rMSA|ZZ|1").is_none());
    }
}
