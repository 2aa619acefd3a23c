//! Small domain types shared by every stage.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

macro_rules! name_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(s: &str) -> Self {
                $name(Arc::from(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A member establishment (the tenant), as configured in `routes/` (e.g. `ES1`).
    EstablishmentId
);
name_type!(
    /// A configured destination (e.g. `dpi-es1`).
    DestinationName
);
name_type!(
    /// A configured listener (e.g. `sil`).
    ListenerName
);

/// What a message is, for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MessageClass {
    /// ORM^O01, OML^O21/O33/O35: from an order placer to the lab.
    Order,
    /// ORU^R01, OUL^R22: from the lab to the owning establishment's record.
    Result,
    /// MDM^T02/T04/T10: a document (the French CDA transmission profile).
    Document,
    /// ADT (A01/A04/A08/A28/A31/A40 and movements): patient administration.
    Admin,
}

impl MessageClass {
    /// Classifies MSH-9.1 / MSH-9.2. `Err(code)` gives the HL7 table 0357 code: 200 for an
    /// unknown message type, 201 for an unsupported event of a known type.
    pub fn of(message_type: &str, trigger: &str) -> Result<MessageClass, u16> {
        let class = match message_type {
            "ORM" | "OML" => MessageClass::Order,
            "ORU" | "OUL" => MessageClass::Result,
            "MDM" => MessageClass::Document,
            "ADT" => MessageClass::Admin,
            _ => return Err(200),
        };
        let ok = match class {
            MessageClass::Order => matches!(
                (message_type, trigger),
                ("ORM", "O01") | ("OML", "O21" | "O33" | "O35")
            ),
            MessageClass::Result => {
                matches!((message_type, trigger), ("ORU", "R01") | ("OUL", "R22"))
            }
            MessageClass::Document => matches!(trigger, "T02" | "T04" | "T10"),
            // The list (A01/A04/A08/A28/A31/A40) plus the movements a DPI sends on the
            // same interface (transfer, discharge, cancellations), so they are not refused.
            MessageClass::Admin => matches!(
                trigger,
                "A01"
                    | "A02"
                    | "A03"
                    | "A04"
                    | "A05"
                    | "A06"
                    | "A07"
                    | "A08"
                    | "A11"
                    | "A12"
                    | "A13"
                    | "A28"
                    | "A31"
                    | "A40"
            ),
        };
        if ok { Ok(class) } else { Err(201) }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MessageClass::Order => "order",
            MessageClass::Result => "result",
            MessageClass::Document => "document",
            MessageClass::Admin => "admin",
        }
    }
}

/// Lower-case hex of bytes (digests, fingerprints).
/// Bytes as base64 in serde's text formats (`#[serde(with = "crate::model::b64")]`): an
/// HL7 message in a JSON log entry is a string, not an array of numbers.
pub mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes, and a `+` as a space when `plus_is_space` (as HTML forms send it;
/// FHIR searches keep it, so that a zone offset `+01:00` is one); `None` for a bad escape
/// or bytes that are not UTF-8.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else if b[i] == b'+' && plus_is_space {
            out.push(b' ');
            i += 1;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// SHA-256 of bytes.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Lower-case hex SHA-256 of bytes (message content, a certificate's DER).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha256(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("a%7Cb+c%2B", false).as_deref(),
            Some("a|b+c+")
        );
        assert_eq!(
            percent_decode("a%7Cb+c%2B", true).as_deref(),
            Some("a|b c+")
        );
        assert_eq!(percent_decode("%C3%A9", false).as_deref(), Some("é"));
        for bad in ["%", "%7", "%+1", "%ZZ", "%FF"] {
            assert_eq!(percent_decode(bad, true), None, "{bad}");
        }
    }

    #[test]
    fn classes() {
        assert_eq!(MessageClass::of("OML", "O33"), Ok(MessageClass::Order));
        assert_eq!(MessageClass::of("OUL", "R22"), Ok(MessageClass::Result));
        assert_eq!(MessageClass::of("ORU", "R30"), Err(201));
        assert_eq!(MessageClass::of("QBP", "Q11"), Err(200));
        assert_eq!(MessageClass::of("ADT", "A40"), Ok(MessageClass::Admin));
        assert_eq!(MessageClass::of("ADT", "A03"), Ok(MessageClass::Admin));
        assert_eq!(MessageClass::of("ADT", "A99"), Err(201));
    }

    #[test]
    fn hex_is_lower_case_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
