//! HL7 v2 → FHIR R4, following the HL7 v2-to-FHIR IG (DECISIONS D10).
//!
//! The typed R4 model comes from fhirbolt through `labroute-fhir-json`, the one crate that
//! compiles fhirbolt's serde code; this module only builds values and calls its plain
//! functions, so editing the mapping rebuilds in seconds.
//!
//! - `v2`: data types (CWE, CX, XCN, XPN, XAD, DTM, NM, ED …) to FHIR data types.
//! - `report`: ORU^R01 / OUL^R22 to a message Bundle (Patient, Encounter, ServiceRequest,
//!   Specimen, DiagnosticReport, one Observation per OBX).
//!
//! A message the mapping cannot express fully is a [`MapError`] naming the segment, its
//! occurrence and the field; the error never carries a value from the message.

use std::borrow::Cow;
use std::fmt;

pub use labroute_fhir_json as json;
pub use labroute_fhir_json::r4;

pub mod inbound;
pub mod mhd;
pub mod report;
pub mod search;
pub mod v2;

pub use report::{Mapped, map_result};

/// The FHIR endpoint's CapabilityStatement (`GET /metadata`), as JSON: transactions of
/// orders and results, results searches, mutual TLS. `date`: when this instance started (FHIR dateTime).
pub fn capability_json(date: &str) -> Result<String, ToJsonError> {
    use r4::resources::{
        CapabilityStatement, CapabilityStatementRest, CapabilityStatementRestInteraction,
        CapabilityStatementRestResource, CapabilityStatementRestResourceInteraction,
        CapabilityStatementRestResourceSearchParam, CapabilityStatementRestSecurity,
        CapabilityStatementSoftware,
    };
    let param = |name: &str, kind: &str, doc: &str| CapabilityStatementRestResourceSearchParam {
        name: name.into(),
        r#type: kind.into(),
        documentation: Some(doc.into()),
        ..Default::default()
    };
    let searched = |kind: search::Kind| CapabilityStatementRestResource {
        r#type: kind.as_str().into(),
        interaction: vec![CapabilityStatementRestResourceInteraction {
            code: "search-type".into(),
            ..Default::default()
        }],
        search_param: vec![
            param(
                "patient.identifier",
                "token",
                "required: the patient, by an identifier of his (INS, or an establishment's IPP)",
            ),
            param(
                "date",
                "date",
                "effective[x]; prefixes eq, ne, gt, lt, ge, le",
            ),
            param("code", "token", "the code (LOINC or local), system|code"),
        ],
        ..Default::default()
    };
    let cs = CapabilityStatement {
        status: "active".into(),
        date: date.into(),
        kind: "instance".into(),
        fhir_version: "4.0.1".into(),
        format: vec!["application/fhir+json".into()],
        software: Some(CapabilityStatementSoftware {
            name: "labroute".into(),
            version: Some(env!("CARGO_PKG_VERSION").into()),
            ..Default::default()
        }),
        rest: vec![CapabilityStatementRest {
            mode: "server".into(),
            documentation: Some(
                "POST [base] a transaction Bundle: an order (Patient, ServiceRequest, Specimen) \
                 or a result (Patient, DiagnosticReport, its Observations). It is acknowledged \
                 once stored and routed like its HL7 v2 twin (OML^O33, ORU^R01). \
                 GET [base]/DiagnosticReport or [base]/Observation?patient.identifier=…: \
                 the results a practitioner may read."
                    .into(),
            ),
            security: Some(CapabilityStatementRestSecurity {
                description: Some(
                    "Mutual TLS. Transactions: the client certificate names a configured \
                     system, which speaks only for its own establishments. Searches: the \
                     client certificate names a practitioner (RPPS), who sees the results of \
                     the patients he takes part in caring for, in the establishments open to \
                     external access; any other search finds nothing."
                        .into(),
                ),
                ..Default::default()
            }),
            interaction: vec![CapabilityStatementRestInteraction {
                code: "transaction".into(),
                ..Default::default()
            }],
            resource: vec![
                searched(search::Kind::DiagnosticReport),
                searched(search::Kind::Observation),
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    json::to_json(&r4::Resource::CapabilityStatement(Box::new(cs)))
        .map_err(|e| ToJsonError::Json(e.to_string()))
}

/// The time zone of HL7 timestamps that carry none (FHIR wants one as soon as a time is
/// given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Zone {
    /// Metropolitan France: UTC+1, UTC+2 from the last Sunday of March to the last Sunday
    /// of October (the EU rule, in force since 1996).
    #[default]
    EuropeParis,
    /// A fixed offset from UTC in minutes (overseas departments: Réunion +240, Guadeloupe
    /// and Martinique −240, Guyane −180, Mayotte +180 …).
    Fixed(i16),
}

impl Zone {
    /// `Europe/Paris`, `UTC`, or a fixed offset `+04:00` / `-0300`.
    pub fn parse(s: &str) -> Option<Zone> {
        match s {
            "Europe/Paris" => return Some(Zone::EuropeParis),
            "UTC" | "Z" => return Some(Zone::Fixed(0)),
            _ => {}
        }
        let (sign, rest) = match s.as_bytes().first()? {
            b'+' => (1i16, &s[1..]),
            b'-' => (-1i16, &s[1..]),
            _ => return None,
        };
        let digits: String = rest.chars().filter(|c| *c != ':').collect();
        if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let h: i16 = digits[..2].parse().ok()?;
        let m: i16 = digits[2..].parse().ok()?;
        (h <= 14 && m < 60).then_some(Zone::Fixed(sign * (h * 60 + m)))
    }
}

/// Where in the message the mapping stopped, and why. Never holds a value of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapError {
    /// Segment id (`OBX`).
    pub segment: String,
    /// 1-based occurrence of that segment id in the message.
    pub occurrence: usize,
    /// Field number, when the problem is in one field.
    pub field: Option<usize>,
    /// Component, when the problem is in one component.
    pub component: Option<usize>,
    pub problem: Cow<'static, str>,
}

impl MapError {
    /// `OBX[3]-5.2`, the HL7 location of the problem.
    pub fn location(&self) -> String {
        let mut s = format!("{}[{}]", self.segment, self.occurrence);
        if let Some(f) = self.field {
            s.push_str(&format!("-{f}"));
            if let Some(c) = self.component {
                s.push_str(&format!(".{c}"));
            }
        }
        s
    }
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), self.problem)
    }
}

impl std::error::Error for MapError {}

/// A field's place, to build errors from.
#[derive(Debug, Clone, Copy)]
pub struct At<'s> {
    pub segment: &'s str,
    pub occurrence: usize,
    pub field: usize,
}

impl At<'_> {
    pub fn err(self, problem: impl Into<Cow<'static, str>>) -> MapError {
        MapError {
            segment: self.segment.to_string(),
            occurrence: self.occurrence,
            field: Some(self.field),
            component: None,
            problem: problem.into(),
        }
    }
    pub fn err_component(
        self,
        component: usize,
        problem: impl Into<Cow<'static, str>>,
    ) -> MapError {
        MapError {
            component: Some(component),
            ..self.err(problem)
        }
    }
}

/// The mapping of one message, as FHIR JSON.
pub fn result_bundle_json(bytes: &[u8], zone: Zone, pretty: bool) -> Result<String, ToJsonError> {
    let msg = crate::hl7::message::Message::parse(bytes).map_err(ToJsonError::Parse)?;
    let mapped = map_result(&msg, zone).map_err(ToJsonError::Map)?;
    let json = if pretty {
        labroute_fhir_json::to_json_pretty(&mapped.bundle)
    } else {
        labroute_fhir_json::to_json(&mapped.bundle)
    };
    json.map_err(|e| ToJsonError::Json(e.to_string()))
}

/// Why a message did not become FHIR JSON.
#[derive(Debug, thiserror::Error)]
pub enum ToJsonError {
    #[error("not an HL7 v2 message: {0}")]
    Parse(crate::hl7::message::ParseError),
    #[error("{0}")]
    Map(MapError),
    #[error("FHIR serialisation failed: {0}")]
    Json(String),
}
