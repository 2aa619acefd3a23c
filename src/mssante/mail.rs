//! The MIME message of a result mailed by MSSanté: a text body, the `IHE_XDM.ZIP`
//! attachment (the structured document), a rendering (PDF or text) when there is one, and
//! `Disposition-Notification-To` when the sender asked for a read receipt (RFC 8098).

use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Attachment, MultiPart, SinglePart};

/// What to mail.
pub struct Mail<'a> {
    pub from: &'a str,
    pub to: &'a [String],
    pub reply_to: Option<&'a str>,
    /// One line, no patient data (the configuration's).
    pub subject: &'a str,
    pub body: &'a str,
    /// Stable across retries (`mdn::message_id`): a resent mail is the same mail, which
    /// the receiver can recognise, and its read receipt names it.
    pub message_id: String,
    /// Ask for a read receipt (MDN) at the `From` address.
    pub read_receipt: bool,
    /// `IHE_XDM.ZIP`.
    pub xdm: Option<Vec<u8>>,
    /// Other attachments: (file name, MIME type, bytes).
    pub renderings: Vec<(String, String, Vec<u8>)>,
}

/// Why a mail could not be built (an address or type the builder refuses).
#[derive(Debug, thiserror::Error)]
#[error("mail not built: {0}")]
pub struct MailError(String);

/// The `Disposition-Notification-To` header (RFC 8098 §2.1).
#[derive(Clone)]
struct DispositionNotificationTo(String);

impl Header for DispositionNotificationTo {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Disposition-Notification-To")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(DispositionNotificationTo(s.to_owned()))
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// The message (its envelope: `From` and every `To`).
pub fn build(m: &Mail<'_>) -> Result<lettre::Message, MailError> {
    let parse = |a: &str| {
        a.parse::<lettre::message::Mailbox>()
            .map_err(|e| MailError(e.to_string()))
    };
    let mut b = lettre::Message::builder()
        .from(parse(m.from)?)
        .subject(m.subject)
        .message_id(Some(m.message_id.clone()))
        .user_agent(concat!("labroute/", env!("CARGO_PKG_VERSION")).to_owned());
    for t in m.to {
        b = b.to(parse(t)?);
    }
    if let Some(r) = m.reply_to {
        b = b.reply_to(parse(r)?);
    }
    if m.read_receipt {
        b = b.header(DispositionNotificationTo(format!("<{}>", m.from)));
    }
    let mut parts = MultiPart::mixed().singlepart(SinglePart::plain(m.body.to_owned()));
    let zip = ContentType::parse("application/zip").map_err(|e| MailError(e.to_string()))?;
    if let Some(x) = &m.xdm {
        parts = parts.singlepart(Attachment::new("IHE_XDM.ZIP".into()).body(x.clone(), zip));
    }
    for (name, mime, bytes) in &m.renderings {
        let ct = ContentType::parse(mime).map_err(|e| MailError(e.to_string()))?;
        parts = parts.singlepart(Attachment::new(name.clone()).body(bytes.clone(), ct));
    }
    b.multipart(parts).map_err(|e| MailError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mail_with_its_attachments_and_receipt() {
        let to = vec!["dr.a@medecin.mssante.fr".to_owned()];
        let m = Mail {
            from: "labo@ch-nord.mssante.fr",
            to: &to,
            reply_to: Some("secretariat@ch-nord.mssante.fr"),
            subject: "Compte rendu de biologie",
            body: "Bonjour",
            message_id: "<labroute.7.ps@ch-nord.mssante.fr>".into(),
            read_receipt: true,
            xdm: Some(b"PK\x03\x04zip".to_vec()),
            renderings: vec![(
                "RESULTATS.TXT".into(),
                "text/plain; charset=utf-8".into(),
                b"x".to_vec(),
            )],
        };
        let msg = build(&m).expect("builds");
        let text = String::from_utf8_lossy(&msg.formatted()).into_owned();
        for want in [
            "Disposition-Notification-To: <labo@ch-nord.mssante.fr>",
            "Message-ID: <labroute.7.ps@ch-nord.mssante.fr>",
            "filename=\"IHE_XDM.ZIP\"",
            "Content-Type: application/zip",
            "Reply-To: secretariat@ch-nord.mssante.fr",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
        assert_eq!(msg.envelope().to().len(), 1);
        // A header cannot be injected through an address.
        let bad = vec!["a@b.fr\r\nBcc: x@y.fr".to_owned()];
        assert!(build(&Mail { to: &bad, ..m }).is_err());
    }
}
