//! MSSanté, the French secure health messaging: who may receive a result by mail and at
//! which address (issue 5, DECISIONS D15).
//!
//! - `directory`: the national directory's mailboxes (the FHIR export of the Annuaire Santé,
//!   `mailbox-mss` extension) and a local CSV, imported by `labroute directory import`;
//! - `whitelist`: the trust space's domains (`labroute whitelist import`);
//! - `recipients`: who a message names (PRT `RCT`, OBR-28 copies, the ordering provider) and
//!   the establishment's standing recipients; `policy::mail_permit` decides each one;
//! - `xdm`: the `IHE_XDM.ZIP` attachment; `mail`: the MIME message;
//! - `receipts`: the business acknowledgements (ZAM^Z02 reception, ZAM^Z03 read) the sender
//!   asked for; `mdn`: the read receipts (RFC 8098) they are made from.
//!
//! The sender is `sinks::mssante` (SMTP over TLS with the establishment's certificate).

pub mod directory;
pub mod mail;
pub mod mdn;
pub mod receipts;
pub mod recipients;
pub mod whitelist;
pub mod xdm;

use serde::{Deserialize, Serialize};

/// The destination name of the MSSanté sender (`[mssante]`): its outbox, retries, dead
/// letters.
pub const DESTINATION: &str = "mssante";

/// The domain of patients' mailboxes (`DESTMSSANTEPAT`).
pub const PATIENT_DOMAIN: &str = "patient.mssante.fr";

/// Mailbox types of the national directory (TRE_R257 TypeBAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BoxType {
    /// A person's own mailbox.
    #[serde(rename = "PER")]
    Personal,
    /// A practice's.
    #[serde(rename = "CAB")]
    Practice,
    /// A service or team of an organisation.
    #[serde(rename = "ORG")]
    Organisational,
    /// Software.
    #[serde(rename = "APP")]
    Application,
}

impl BoxType {
    pub fn from_code(code: &str) -> Option<BoxType> {
        match code.trim() {
            "PER" => Some(BoxType::Personal),
            "CAB" => Some(BoxType::Practice),
            "ORG" => Some(BoxType::Organisational),
            "APP" => Some(BoxType::Application),
            _ => None,
        }
    }
    pub fn code(self) -> &'static str {
        match self {
            BoxType::Personal => "PER",
            BoxType::Practice => "CAB",
            BoxType::Organisational => "ORG",
            BoxType::Application => "APP",
        }
    }
}

/// Where a directory entry comes from: the national directory's export, or the local CSV
/// (practitioners not in it). Each import replaces the entries of its own source only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    National,
    Local,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::National => "national",
            Source::Local => "local",
        }
    }
}

/// One mailbox of the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    /// Lower case.
    pub address: String,
    pub kind: BoxType,
    /// "Liste rouge": the holder did not want it published. It receives what names it by
    /// address; an RPPS is never resolved to it.
    #[serde(default)]
    pub unlisted: bool,
    /// The practitioner it belongs to, when the directory says.
    #[serde(default)]
    pub rpps: Option<String>,
    /// FINESS of the organisations it is attached to (9 digits).
    #[serde(default)]
    pub finess: Vec<String>,
}

/// An e-mail address as the directory and the whitelist compare them: trimmed, lower case,
/// one `@` with something on each side, no space or control character, no angle bracket
/// (it must not be able to inject an SMTP command or a header). `None` otherwise.
pub fn normalise_address(s: &str) -> Option<String> {
    let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let (local, domain) = s.split_once('@')?;
    let ok = !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b',' | b';' | b'"'))
        // What the mail builder and the SMTP envelope take (no comments, no empty labels).
        && s.parse::<lettre::Address>().is_ok()
        && !s.contains(['(', ')'])
        && !domain.split('.').any(str::is_empty);
    ok.then_some(s)
}

/// The domain of a normalised address.
pub fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

/// A whitelist domain as compared: trimmed, lower case, no trailing dot; `None` when it
/// cannot be a domain.
pub fn normalise_domain(s: &str) -> Option<String> {
    let d = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.contains('.')
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then_some(d)
}

/// An import file that cannot be read: where and why (never the file's values).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {at}{problem}")]
pub struct ImportError {
    pub file: String,
    /// `line N: ` or `entry N: ` or empty.
    pub at: String,
    pub problem: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised_or_refused() {
        assert_eq!(
            normalise_address(" Dr.Who@Medecin.MSSante.fr. ").as_deref(),
            Some("dr.who@medecin.mssante.fr")
        );
        for bad in [
            "",
            "nobody",
            "@x.fr",
            "a@",
            "a@b@c.fr",
            "a b@c.fr",
            "a@c.fr>\r\nRCPT TO:<x@y.fr",
            "a@localhost",
            "<a@b.fr>",
            "a(b)@x.fr",
            "a@x..fr",
        ] {
            assert_eq!(normalise_address(bad), None, "{bad:?}");
        }
        assert_eq!(domain_of("a@b.fr"), "b.fr");
        assert_eq!(
            normalise_domain("Medecin.MSSante.fr.").as_deref(),
            Some("medecin.mssante.fr")
        );
        assert_eq!(normalise_domain("bad domain"), None);
    }
}
