//! Read receipts: the Message Disposition Notifications (RFC 8098) a recipient's mail
//! client sends back to the `Disposition-Notification-To` address, posted to the admin API
//! (`POST /mssante/mdn`, or `labroute mssante mdn FILE`) by whoever reads that mailbox.
//!
//! Each mail labroute sends has its own Message-ID, `<labroute.{seq}.{tag}@{domain}>`
//! (`message_id`): the MDN's `Original-Message-ID` names the message and the recipient it
//! was for, which the writer checks against the mails it recorded as sent.

use mailparse::MailHeaderMap;

/// The Message-ID of the mail of message `seq` to `address`, stable across retries (a
/// resent mail is the same mail): the tag is the first 16 hex digits of SHA-256 of the
/// address, so the address itself never shows.
pub fn message_id(seq: u64, address: &str, domain: &str) -> String {
    format!("<labroute.{seq}.{}@{domain}>", tag(address))
}

/// The tag of an address in its mail's Message-ID.
pub fn tag(address: &str) -> String {
    crate::model::hex(&crate::model::sha256(address.as_bytes())[..8])
}

/// The message and tag of one of labroute's Message-IDs; `None` for another one.
pub fn ours(message_id: &str) -> Option<(u64, String)> {
    let inner = message_id.trim().strip_prefix('<')?.strip_suffix('>')?;
    let (local, _domain) = inner.split_once('@')?;
    let rest = local.strip_prefix("labroute.")?;
    let (seq, tag) = rest.split_once('.')?;
    let tag_ok = tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit());
    if !tag_ok {
        return None;
    }
    Some((seq.parse().ok()?, tag.to_ascii_lowercase()))
}

/// What a read receipt says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mdn {
    /// `Original-Message-ID`: the mail it answers.
    pub original_message_id: String,
    /// `Final-Recipient`, when given (informative: the Message-ID says whose mail it was).
    pub final_recipient: Option<String>,
    /// `displayed` (read) or `deleted` (discarded unread).
    pub disposition: Disposition,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    Displayed,
    Deleted,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Displayed => "displayed",
            Disposition::Deleted => "deleted",
        }
    }
    pub fn from_name(name: &str) -> Option<Disposition> {
        match name.trim().to_ascii_lowercase().as_str() {
            "displayed" => Some(Disposition::Displayed),
            "deleted" => Some(Disposition::Deleted),
            _ => None,
        }
    }
}

/// Why a posted mail is not a read receipt labroute can use. Texts name fields, never
/// their values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MdnError {
    #[error("not a readable mail: {0}")]
    Unreadable(String),
    #[error("not a disposition notification: no message/disposition-notification part (RFC 8098)")]
    NoReport,
    #[error("the notification has no Original-Message-ID")]
    NoMessageId,
    #[error("the notification has no Disposition")]
    NoDisposition,
    /// `processed`, `dispatched`: not about reading.
    #[error("the disposition is {0:?}, not a read receipt (displayed or deleted)")]
    NotRead(String),
}

/// Reads an MDN from a whole mail (RFC 5322, as received).
pub fn parse(raw: &[u8]) -> Result<Mdn, MdnError> {
    let mail = mailparse::parse_mail(raw).map_err(|e| MdnError::Unreadable(e.to_string()))?;
    let part = find_report(&mail).ok_or(MdnError::NoReport)?;
    let body = part
        .get_body_raw()
        .map_err(|e| MdnError::Unreadable(e.to_string()))?;
    let (fields, _) =
        mailparse::parse_headers(&body).map_err(|e| MdnError::Unreadable(e.to_string()))?;
    // RFC 8098 §3.2.5 says Original-Message-ID SHOULD be there; a client that leaves it
    // out usually threads the report (In-Reply-To, References).
    let original_message_id = fields
        .get_first_value("Original-Message-ID")
        .or_else(|| mail.headers.get_first_value("In-Reply-To"))
        .or_else(|| {
            mail.headers
                .get_first_value("References")
                .and_then(|r| r.split_whitespace().last().map(str::to_owned))
        })
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or(MdnError::NoMessageId)?;
    let final_recipient = fields.get_first_value("Final-Recipient").and_then(|v| {
        let (kind, addr) = v.split_once(';')?;
        kind.trim()
            .eq_ignore_ascii_case("rfc822")
            .then(|| super::normalise_address(addr.trim()))?
    });
    let disposition = fields
        .get_first_value("Disposition")
        .ok_or(MdnError::NoDisposition)?;
    // `action-mode/sending-mode; type[/modifier]`.
    let kind = disposition
        .split_once(';')
        .map(|(_, t)| t)
        .unwrap_or(&disposition)
        .split('/')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let disposition = Disposition::from_name(&kind).ok_or(MdnError::NotRead(kind))?;
    Ok(Mdn {
        original_message_id,
        final_recipient,
        disposition,
    })
}

fn find_report<'a>(m: &'a mailparse::ParsedMail<'a>) -> Option<&'a mailparse::ParsedMail<'a>> {
    if m.ctype
        .mimetype
        .eq_ignore_ascii_case("message/disposition-notification")
    {
        return Some(m);
    }
    m.subparts.iter().find_map(find_report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mdn(fields: &str) -> Vec<u8> {
        format!(
            "From: dr.copy@medecin.mssante.fr\r\nTo: labo@ch-nordville.mssante.fr\r\nSubject: Lu : Compte rendu\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=disposition-notification; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nLe courriel a été lu.\r\n--b1\r\nContent-Type: message/disposition-notification\r\n\r\n{fields}--b1--\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn a_read_receipt_names_the_mail_and_its_disposition() {
        let id = message_id(42, "dr.copy@medecin.mssante.fr", "ch-nordville.mssante.fr");
        assert_eq!(
            ours(&id),
            Some((42, tag("dr.copy@medecin.mssante.fr"))),
            "{id}"
        );
        assert!(!id.contains("dr.copy"), "the address never shows: {id}");
        let m = parse(&mdn(&format!(
            "Reporting-UA: Thunderbird\r\nFinal-Recipient: rfc822; Dr.Copy@medecin.mssante.fr\r\nOriginal-Message-ID: {id}\r\nDisposition: manual-action/MDN-sent-manually; displayed\r\n"
        )))
        .expect("an MDN");
        assert_eq!(m.original_message_id, id);
        assert_eq!(
            m.final_recipient.as_deref(),
            Some("dr.copy@medecin.mssante.fr")
        );
        assert_eq!(m.disposition, Disposition::Displayed);
        let deleted = parse(&mdn(&format!(
            "Original-Message-ID: {id}\r\nDisposition: automatic-action/MDN-sent-automatically; deleted\r\n"
        )))
        .expect("an MDN");
        assert_eq!(deleted.disposition, Disposition::Deleted);
        assert_eq!(deleted.final_recipient, None);
    }

    #[test]
    fn what_is_not_a_read_receipt_is_refused_plainly() {
        assert_eq!(
            parse(b"From: a@b.fr\r\nSubject: hello\r\n\r\nbody\r\n"),
            Err(MdnError::NoReport)
        );
        assert_eq!(
            parse(&mdn(
                "Disposition: manual-action/MDN-sent-manually; displayed\r\n"
            )),
            Err(MdnError::NoMessageId)
        );
        assert_eq!(
            parse(&mdn("Original-Message-ID: <x@y>\r\n")),
            Err(MdnError::NoDisposition)
        );
        assert_eq!(
            parse(&mdn(
                "Original-Message-ID: <x@y>\r\nDisposition: automatic-action/MDN-sent-automatically; processed\r\n"
            )),
            Err(MdnError::NotRead("processed".into()))
        );
        for other in [
            "<x@y>",
            "<labroute.1@d>",
            "<labroute.x.0123456789abcdef@d>",
            "<labroute.1.short@d>",
            "labroute.1.0123456789abcdef@d",
        ] {
            assert_eq!(ours(other), None, "{other}");
        }
    }
}
