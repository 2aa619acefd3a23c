//! HL7 v2 data types to FHIR R4 data types (the v2-to-FHIR IG's data type maps).
//!
//! Functions take decoded values (`hl7::message::Value`) and return fhirbolt types, or an
//! error naming the component. Nothing here reads more than the value it is given.

use base64::Engine as _;

use super::r4::types::{
    Address, Attachment, Base64Binary, CodeableConcept, Coding, ContactPoint, Extension,
    ExtensionValue, HumanName, Identifier, Period, Quantity, Reference,
};
use super::{At, MapError, Zone};
use crate::hl7::message::Value;

/// Extension carrying a v2 coding system name that has no FHIR URI (local tables,
/// `99zzz`, `L`, French tables such as `MetaDMPMSS`): the name is kept, never dropped.
pub const EXT_V2_CODING_SYSTEM: &str = "urn:labroute:fhir:v2-coding-system";
/// Units (OBX-6) that a Quantity cannot carry as a code (no known system).
pub const EXT_V2_UNITS: &str = "urn:labroute:fhir:v2-units";
/// The R5 `Observation.valueAttachment` carried in R4 (cross-version extension).
pub const EXT_VALUE_ATTACHMENT: &str =
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Observation.value";

pub const V2_TABLE: &str = "http://terminology.hl7.org/CodeSystem/v2-";

/// The code system URI of HL7 v2 table `table` (`0203` → `…/CodeSystem/v2-0203`).
pub fn table_uri(table: &str) -> String {
    let mut s = String::with_capacity(V2_TABLE.len() + table.len());
    s.push_str(V2_TABLE);
    s.push_str(table);
    s
}

pub fn text(v: Value<'_>) -> Option<String> {
    let t = v.text();
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

pub fn code(c: impl Into<String>) -> super::r4::types::Code {
    c.into().into()
}

/// `1.2.250.1.213.1.4.8`-shaped (what `urn:oid:` accepts).
pub fn is_oid(s: &str) -> bool {
    let mut arcs = s.split('.');
    let first_ok = matches!(arcs.next(), Some("0" | "1" | "2"));
    let mut n = 0;
    for arc in arcs {
        n += 1;
        let ok = !arc.is_empty()
            && arc.bytes().all(|b| b.is_ascii_digit())
            && (arc == "0" || !arc.starts_with('0'));
        if !ok {
            return false;
        }
    }
    first_ok && n >= 1
}

fn is_uri(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://") || s.starts_with("urn:"))
        && !s.bytes().any(|b| b.is_ascii_whitespace())
}

/// A v2 coding system name (CWE.3) and optional OID (CWE.14) as a FHIR system URI, or, when
/// none is known, an extension that keeps the name.
pub fn coding_system(name: Option<&str>, oid: Option<&str>) -> (Option<String>, Option<Extension>) {
    if let Some(oid) = oid.filter(|o| is_oid(o)) {
        return (Some(format!("urn:oid:{oid}")), None);
    }
    let Some(name) = name else {
        return (None, None);
    };
    let known = match name {
        "LN" | "LOINC" => Some("http://loinc.org".to_string()),
        "SCT" | "SNOMED-CT" | "SNM" => Some("http://snomed.info/sct".to_string()),
        "UCUM" => Some("http://unitsofmeasure.org".to_string()),
        "I10" | "ICD10" => Some("http://hl7.org/fhir/sid/icd-10".to_string()),
        "I9CDX" => Some("http://hl7.org/fhir/sid/icd-9-cm".to_string()),
        "CPT" | "C4" => Some("http://www.ama-assn.org/go/cpt".to_string()),
        "NDC" => Some("http://hl7.org/fhir/sid/ndc".to_string()),
        "CVX" => Some("http://hl7.org/fhir/sid/cvx".to_string()),
        "ISO3166_1" | "ISO3166" => Some("urn:iso:std:iso:3166".to_string()),
        "ISO+" => Some("urn:iso:std:iso:11073:10101".to_string()),
        _ if name.len() == 7
            && name.starts_with("HL7")
            && name[3..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            Some(table_uri(&name[3..]))
        }
        _ if is_oid(name) => Some(format!("urn:oid:{name}")),
        _ if is_uri(name) => Some(name.to_string()),
        _ => None,
    };
    match known {
        Some(uri) => (Some(uri), None),
        None => (
            None,
            Some(Extension {
                url: EXT_V2_CODING_SYSTEM.into(),
                value: Some(ExtensionValue::String(name.into())),
                ..Default::default()
            }),
        ),
    }
}

fn coding_from(
    code_v: Option<String>,
    display: Option<String>,
    system: (Option<String>, Option<Extension>),
    version: Option<String>,
) -> Option<Coding> {
    if code_v.is_none() && display.is_none() {
        return None;
    }
    let (system, ext) = system;
    Some(Coding {
        extension: ext.into_iter().collect(),
        system: system.map(Into::into),
        version: version.map(Into::into),
        code: code_v.map(code),
        display: display.map(Into::into),
        ..Default::default()
    })
}

/// CWE / CE / CNE / CF (identifier, text, system, alternate triplet, versions, original text,
/// OIDs) → CodeableConcept. `None` when the value is empty.
pub fn codeable_concept(v: Value<'_>) -> Option<CodeableConcept> {
    if v.is_empty() {
        return None;
    }
    let parts = v.components();
    let c = |n: usize| parts.get(n - 1).and_then(|p| text(*p));
    let id = c(1);
    let display = c(2);
    let original = c(9);
    let mut coding = Vec::new();
    // A text with no code is the concept's text, not a coding without a code.
    let mut cc_text = original;
    if id.is_some() {
        let sys = coding_system(c(3).as_deref(), c(14).as_deref());
        coding.extend(coding_from(id, display, sys, c(7)));
    } else if let Some(d) = display {
        if cc_text.is_none() {
            cc_text = Some(d);
        } else {
            let sys = coding_system(c(3).as_deref(), c(14).as_deref());
            coding.extend(coding_from(None, Some(d), sys, c(7)));
        }
    }
    let alt = coding_from(
        c(4),
        c(5),
        coding_system(c(6).as_deref(), c(17).as_deref()),
        c(8),
    );
    coding.extend(alt);
    let second_alt = coding_from(
        c(10),
        c(11),
        coding_system(c(12).as_deref(), c(20).as_deref()),
        c(13),
    );
    coding.extend(second_alt);
    if coding.is_empty() && cc_text.is_none() {
        return None;
    }
    Some(CodeableConcept {
        coding,
        text: cc_text.map(Into::into),
        ..Default::default()
    })
}

/// One code of one code system.
pub fn concept(system: impl Into<String>, code_v: impl Into<String>) -> CodeableConcept {
    CodeableConcept {
        coding: vec![Coding {
            system: Some(system.into().into()),
            code: Some(code(code_v)),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A code from a v2 table (ID / IS) as a CodeableConcept of that table's code system.
pub fn table_concept(table: &str, v: Value<'_>) -> Option<CodeableConcept> {
    Some(concept(table_uri(table), text(v.component(1))?))
}

/// The identifier system an HD's universal id (and its type) names, when it is a URI.
pub fn hd_uri(id: &str, ty: &str) -> Option<String> {
    // `concat`, not `format!`: on the ACK path, for each patient identifier (D27).
    if is_oid(id) {
        Some(["urn:oid:", id].concat())
    } else if ty.eq_ignore_ascii_case("UUID") {
        Some(format!("urn:uuid:{}", id.to_ascii_lowercase()))
    } else if is_uri(id) {
        Some(id.to_owned())
    } else {
        None
    }
}

/// HD (namespace, universal id, universal id type) → an identifier system, or an assigner
/// for a namespace that is not a URI.
pub fn hd_system(
    hd_ns: Option<String>,
    hd_id: Option<String>,
    hd_type: Option<String>,
) -> (Option<String>, Option<Reference>) {
    if let Some(id) = &hd_id {
        let system = hd_uri(id, hd_type.as_deref().unwrap_or(""));
        if let Some(system) = system {
            // The namespace (`CHN` in `CHN&1.2.3&ISO`) is kept as the assigner's name:
            // routing rules may name either.
            let assigner = hd_ns.map(|ns| Reference {
                display: Some(ns.into()),
                ..Default::default()
            });
            return (Some(system), assigner);
        }
    }
    if hd_ns.is_none() && hd_id.is_none() {
        return (None, None);
    }
    // A named authority with no URI: kept as the assigner (namespace as display, the id it
    // gave, such as a FINESS number, as the assigner's identifier).
    let assigner = Reference {
        identifier: hd_id.map(|id| {
            Box::new(Identifier {
                value: Some(id.into()),
                ..Default::default()
            })
        }),
        display: hd_ns.map(Into::into),
        ..Default::default()
    };
    (None, Some(assigner))
}

fn type_concept(table: &str, c: Option<String>) -> Option<Box<CodeableConcept>> {
    c.map(|c| Box::new(concept(table_uri(table), c)))
}

/// CX → Identifier (value, assigning authority, type, effective/expiry dates).
pub fn cx_identifier(v: Value<'_>, zone: Zone, at: At<'_>) -> Result<Option<Identifier>, MapError> {
    let Some(value) = text(v.component(1)) else {
        return Ok(None);
    };
    let auth = v.component(4);
    let (system, assigner) = hd_system(
        text(auth.subcomponent(1)),
        text(auth.subcomponent(2)),
        text(auth.subcomponent(3)),
    );
    let start = date_time_opt(v.component(7), zone, at, 7)?;
    let end = date_time_opt(v.component(8), zone, at, 8)?;
    Ok(Some(Identifier {
        r#type: type_concept("0203", text(v.component(5))),
        system: system.map(Into::into),
        value: Some(value.into()),
        period: period(start, end),
        assigner: assigner.map(Box::new),
        ..Default::default()
    }))
}

/// EI (entity id, namespace, universal id, type) → Identifier with a type (PLAC, FILL …).
pub fn ei_identifier(v: Value<'_>, id_type: Option<&str>) -> Option<Identifier> {
    let value = text(v.component(1))?;
    let (system, assigner) = hd_system(
        text(v.component(2)),
        text(v.component(3)),
        text(v.component(4)),
    );
    Some(Identifier {
        r#type: type_concept("0203", id_type.map(str::to_string)),
        system: system.map(Into::into),
        value: Some(value.into()),
        assigner: assigner.map(Box::new),
        ..Default::default()
    })
}

/// A practitioner named in XCN (ORC-12, OBR-16, OBR-28, OBX-16, PRT-5) or, with `cnn`, in
/// CNN subcomponents (OBR-32).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Person {
    pub id: Option<String>,
    pub system: Option<String>,
    pub id_type: Option<String>,
    pub family: Option<String>,
    pub given: Vec<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
}

impl Person {
    pub fn is_empty(&self) -> bool {
        self.id.is_none() && self.family.is_none() && self.given.is_empty()
    }

    pub fn xcn(v: Value<'_>) -> Person {
        let c = |n| text(v.component(n));
        let auth = v.component(9);
        let (system, _) = hd_system(
            text(auth.subcomponent(1)),
            text(auth.subcomponent(2)),
            text(auth.subcomponent(3)),
        );
        Person {
            id: c(1),
            system,
            id_type: c(13),
            family: text(v.component(2).subcomponent(1)),
            given: [c(3), c(4)].into_iter().flatten().collect(),
            suffix: c(5),
            prefix: c(6),
        }
    }

    /// CNN in one component (subcomponents: id, family, given, second given, suffix, prefix,
    /// degree, source table, namespace, universal id, id type).
    pub fn cnn(v: Value<'_>) -> Person {
        let s = |n| text(v.subcomponent(n));
        let system = match s(10) {
            Some(oid) if is_oid(&oid) => Some(format!("urn:oid:{oid}")),
            _ => None,
        };
        Person {
            id: s(1),
            system,
            id_type: None,
            family: s(2),
            given: [s(3), s(4)].into_iter().flatten().collect(),
            suffix: s(5),
            prefix: s(6),
        }
    }

    pub fn identifier(&self) -> Option<Identifier> {
        let id = self.id.clone()?;
        Some(Identifier {
            r#type: type_concept("0203", self.id_type.clone()),
            system: self.system.clone().map(Into::into),
            value: Some(id.into()),
            ..Default::default()
        })
    }

    pub fn name(&self) -> Option<HumanName> {
        if self.family.is_none() && self.given.is_empty() {
            return None;
        }
        Some(HumanName {
            family: self.family.clone().map(Into::into),
            given: self.given.iter().map(|g| g.clone().into()).collect(),
            prefix: self.prefix.iter().map(|p| p.clone().into()).collect(),
            suffix: self.suffix.iter().map(|p| p.clone().into()).collect(),
            ..Default::default()
        })
    }
}

/// XPN → HumanName (family, given, second given, suffix, prefix, name type).
pub fn xpn_name(v: Value<'_>) -> Option<HumanName> {
    let c = |n| text(v.component(n));
    let family = text(v.component(1).subcomponent(1));
    let given: Vec<String> = [c(2), c(3)].into_iter().flatten().collect();
    if family.is_none() && given.is_empty() {
        return None;
    }
    let name_use = match c(7).as_deref() {
        Some("L") => Some("official"),
        Some("D") => Some("usual"),
        Some("M") => Some("maiden"),
        Some("N") => Some("nickname"),
        Some("A") => Some("usual"),
        Some("S") => Some("anonymous"),
        Some("T") => Some("temp"),
        Some("B") | Some("C") | Some("BAD") => Some("old"),
        _ => None,
    };
    Some(HumanName {
        r#use: name_use.map(code),
        family: family.map(Into::into),
        given: given.into_iter().map(Into::into).collect(),
        suffix: c(4).into_iter().map(Into::into).collect(),
        prefix: c(5).into_iter().map(Into::into).collect(),
        ..Default::default()
    })
}

/// XAD → Address, with its v2 type (XAD.7) returned for the caller (`BDL` is a birth
/// place, `BR` a residence at birth, …).
pub fn xad_address(v: Value<'_>) -> Option<(Address, Option<String>)> {
    let c = |n| text(v.component(n));
    let line: Vec<String> = [text(v.component(1).subcomponent(1)), c(2)]
        .into_iter()
        .flatten()
        .collect();
    let addr_type = c(7);
    let address = Address {
        r#use: match addr_type.as_deref() {
            Some("H") => Some(code("home")),
            Some("B") | Some("O") => Some(code("work")),
            Some("C") => Some(code("temp")),
            Some("BA") => Some(code("old")),
            _ => None,
        },
        line: line.into_iter().map(Into::into).collect(),
        city: c(3).map(Into::into),
        state: c(4).map(Into::into),
        postal_code: c(5).map(Into::into),
        country: c(6).map(Into::into),
        district: c(9).map(Into::into),
        ..Default::default()
    };
    let empty = address.line.is_empty()
        && address.city.is_none()
        && address.state.is_none()
        && address.postal_code.is_none()
        && address.country.is_none()
        && address.district.is_none();
    (!empty).then_some((address, addr_type))
}

/// XTN → ContactPoint (v2.5 components: number, use, equipment, email; v2.7 adds the
/// unformatted number in XTN.12).
pub fn xtn_contact(v: Value<'_>) -> Option<ContactPoint> {
    let c = |n| text(v.component(n));
    let equipment = c(3);
    let (system, value) = match equipment.as_deref() {
        Some("Internet") | Some("X.400") => ("email", c(4).or_else(|| c(1))),
        Some("FX") => ("fax", c(12).or_else(|| c(1))),
        Some("BP") => ("pager", c(12).or_else(|| c(1))),
        _ => match c(4) {
            Some(mail) if c(1).is_none() && c(12).is_none() => ("email", Some(mail)),
            _ => ("phone", c(12).or_else(|| c(1))),
        },
    };
    let value = value?;
    let contact_use = match c(2).as_deref() {
        Some("PRN") | Some("ORN") | Some("VHN") => Some("home"),
        Some("WPN") => Some("work"),
        Some("PRS") => Some("mobile"),
        _ if equipment.as_deref() == Some("CP") => Some("mobile"),
        _ => None,
    };
    Some(ContactPoint {
        system: Some(code(system)),
        value: Some(value.into()),
        r#use: contact_use.map(code),
        ..Default::default()
    })
}

pub fn period(start: Option<String>, end: Option<String>) -> Option<Box<Period>> {
    (start.is_some() || end.is_some()).then(|| {
        Box::new(Period {
            start: start.map(Into::into),
            end: end.map(Into::into),
            ..Default::default()
        })
    })
}

/// NM → FHIR decimal text (keeps the precision: `5.0` stays `5.0`), or `None` when it is
/// not a number.
pub fn decimal(s: &str) -> Option<String> {
    let s = s.trim();
    let (neg, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || !frac.is_none_or(all_digits) {
        return None;
    }
    if int.is_empty() && frac.is_none_or(str::is_empty) {
        return None;
    }
    let int = int.trim_start_matches('0');
    let mut out = String::with_capacity(s.len() + 1);
    if neg {
        out.push('-');
    }
    out.push_str(if int.is_empty() { "0" } else { int });
    if let Some(f) = frac.filter(|f| !f.is_empty()) {
        out.push('.');
        out.push_str(f);
    }
    if out == "-0" || (out.starts_with("-0.") && out[3..].bytes().all(|b| b == b'0')) {
        out.remove(0);
    }
    Some(out)
}

/// A quantity with OBX-6 units: a code only with a known system (a code without a system
/// means nothing), the v2 units kept in an extension otherwise.
pub fn quantity(value: String, comparator: Option<&str>, units: Value<'_>) -> Quantity {
    let unit_code = text(units.component(1));
    let unit_text = text(units.component(2));
    let (system, _) = coding_system(
        text(units.component(3)).as_deref(),
        text(units.component(14)).as_deref(),
    );
    let mut q = Quantity {
        value: Some(value.into()),
        comparator: comparator.map(code),
        ..Default::default()
    };
    match system {
        Some(system) if unit_code.is_some() => {
            q.unit = unit_text.or_else(|| unit_code.clone()).map(Into::into);
            q.system = Some(system.into());
            q.code = unit_code.map(code);
        }
        _ => {
            q.unit = unit_text
                .clone()
                .or_else(|| unit_code.clone())
                .map(Into::into);
            if unit_code.is_some() && unit_text.is_some() {
                if let Some(cc) = codeable_concept(units) {
                    q.extension.push(Extension {
                        url: EXT_V2_UNITS.into(),
                        value: Some(ExtensionValue::CodeableConcept(Box::new(cc))),
                        ..Default::default()
                    });
                }
            }
        }
    }
    q
}

/// Base64 as senders write it: padding optional (the bytes are the same either way).
const LENIENT_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// ED (source, type of data, subtype, encoding, data) → the bytes it carries and their MIME
/// type.
pub fn ed_bytes(v: Value<'_>, at: At<'_>) -> Result<(Vec<u8>, Option<String>), MapError> {
    let c = |n| text(v.component(n));
    let data = v.component(5);
    let encoding = c(4).unwrap_or_default();
    let bytes: Vec<u8> = match encoding.to_ascii_uppercase().as_str() {
        "BASE64" => {
            let raw: Vec<u8> = data
                .text()
                .bytes()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            LENIENT_BASE64
                .decode(&raw)
                .map_err(|_| at.err_component(5, "ED data is not valid base64"))?
        }
        "HEX" => {
            let raw: Vec<u8> = data
                .text()
                .bytes()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            if raw.len() % 2 != 0 {
                return Err(at.err_component(5, "ED data is not valid hexadecimal"));
            }
            raw.chunks(2)
                .map(|p| {
                    std::str::from_utf8(p)
                        .ok()
                        .and_then(|s| u8::from_str_radix(s, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| at.err_component(5, "ED data is not valid hexadecimal"))?
        }
        "A" | "" => data.text().into_owned().into_bytes(),
        _ => return Err(at.err_component(4, "ED encoding is not A, Hex or Base64")),
    };
    Ok((bytes, mime_type(c(2).as_deref(), c(3).as_deref())))
}

/// ED → Attachment with base64 data.
/// Standard base64 (FHIR `base64Binary`).
pub(crate) fn base64_of(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

pub fn ed_attachment(v: Value<'_>, at: At<'_>) -> Result<Attachment, MapError> {
    let (bytes, mime) = ed_bytes(v, at)?;
    Ok(Attachment {
        content_type: mime.map(code),
        data: Some(Base64Binary::from(base64_of(&bytes))),
        size: u32::try_from(bytes.len()).ok().map(Into::into),
        ..Default::default()
    })
}

/// ED type of data (table 0191) and subtype (table 0291) → a MIME type.
pub fn mime_type(kind: Option<&str>, subtype: Option<&str>) -> Option<String> {
    let sub = subtype?.to_ascii_lowercase();
    let sub = match sub.as_str() {
        "pdf" => return Some("application/pdf".into()),
        "jpeg" | "jpg" => return Some("image/jpeg".into()),
        "png" => return Some("image/png".into()),
        "tiff" => return Some("image/tiff".into()),
        "gif" => return Some("image/gif".into()),
        "rtf" => return Some("application/rtf".into()),
        "html" => return Some("text/html".into()),
        "dicom" => return Some("application/dicom".into()),
        "octet-stream" => return Some("application/octet-stream".into()),
        "postscript" => return Some("application/postscript".into()),
        "x-hl7-cda-level-one" => return Some("application/x-hl7-cda-level-one+xml".into()),
        s if s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            && !s.is_empty() =>
        {
            s.to_string()
        }
        _ => return None,
    };
    let main = match kind.map(str::to_ascii_uppercase).as_deref() {
        Some("TEXT") | Some("TX") | Some("FT") => "text",
        Some("IM") | Some("IMAGE") => "image",
        Some("AU") | Some("AUDIO") => "audio",
        Some("VIDEO") => "video",
        Some("MULTIPART") => "multipart",
        _ => "application",
    };
    Some(format!("{main}/{sub}"))
}

/// A parsed DTM: `YYYY[MM[DD[HH[MM[SS[.S…]]]]]][+/-ZZZZ]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dtm {
    pub year: u16,
    pub month: Option<u8>,
    pub day: Option<u8>,
    pub hour: Option<u8>,
    pub minute: Option<u8>,
    pub second: Option<u8>,
    pub fraction: Option<String>,
    /// Minutes east of UTC, when the value said.
    pub offset: Option<i16>,
}

impl Dtm {
    pub fn parse(s: &str) -> Option<Dtm> {
        let s = s.trim();
        let (body, offset) = match s
            .char_indices()
            .skip(4)
            .find(|(_, c)| *c == '+' || *c == '-')
        {
            Some((i, c)) => {
                let z = &s[i + 1..];
                if z.len() != 4 || !z.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let h: i16 = z[..2].parse().ok()?;
                let m: i16 = z[2..].parse().ok()?;
                if h > 14 || m > 59 {
                    return None;
                }
                let sign = if c == '-' { -1 } else { 1 };
                (&s[..i], Some(sign * (h * 60 + m)))
            }
            None => (s, None),
        };
        let (digits, fraction) = match body.split_once('.') {
            Some((d, f)) => {
                if f.is_empty() || f.len() > 4 || !f.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                (d, Some(f.to_string()))
            }
            None => (body, None),
        };
        if !digits.bytes().all(|b| b.is_ascii_digit())
            || ![4, 6, 8, 10, 12, 14].contains(&digits.len())
        {
            return None;
        }
        if fraction.is_some() && digits.len() != 14 {
            return None;
        }
        let part =
            |from: usize| -> Option<u8> { digits.get(from..from + 2).and_then(|p| p.parse().ok()) };
        let d = Dtm {
            year: digits[..4].parse().ok()?,
            month: part(4),
            day: part(6),
            hour: part(8),
            minute: part(10),
            second: part(12),
            fraction,
            offset,
        };
        let valid = d.month.is_none_or(|m| (1..=12).contains(&m))
            && d.day
                .is_none_or(|day| day >= 1 && day <= days_in_month(d.year, d.month.unwrap_or(1)))
            && d.hour.is_none_or(|h| h <= 23)
            && d.minute.is_none_or(|m| m <= 59)
            && d.second.is_none_or(|s| s <= 59);
        valid.then_some(d)
    }

    /// FHIR `date` (the date part, at the precision given).
    pub fn date(&self) -> String {
        let mut s = format!("{:04}", self.year);
        if let Some(m) = self.month {
            s.push_str(&format!("-{m:02}"));
            if let Some(d) = self.day {
                s.push_str(&format!("-{d:02}"));
            }
        }
        s
    }

    /// FHIR `dateTime`: a date alone, or a full time with seconds and a zone (FHIR requires
    /// both once there is a time; missing minutes and seconds are zero, a missing zone is
    /// the configured one).
    pub fn date_time(&self, zone: Zone) -> String {
        let (Some(month), Some(day), Some(hour)) = (self.month, self.day, self.hour) else {
            return self.date();
        };
        let minute = self.minute.unwrap_or(0);
        let second = self.second.unwrap_or(0);
        let offset = self
            .offset
            .unwrap_or_else(|| zone_offset(zone, self.year, month, day, hour));
        let mut s = format!(
            "{:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}",
            self.year
        );
        if let Some(f) = &self.fraction {
            s.push('.');
            s.push_str(f);
        }
        if offset == 0 {
            s.push('Z');
        } else {
            let sign = if offset < 0 { '-' } else { '+' };
            let a = offset.unsigned_abs();
            s.push_str(&format!("{sign}{:02}:{:02}", a / 60, a % 60));
        }
        s
    }

    /// FHIR `instant` (needs a time).
    pub fn instant(&self, zone: Zone) -> Option<String> {
        self.hour.map(|_| self.date_time(zone))
    }
}

pub(crate) fn is_leap(y: u16) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

pub(crate) fn days_in_month(y: u16, m: u8) -> u8 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Day of week, 0 = Sunday (Sakamoto).
fn weekday(y: u16, m: u8, d: u8) -> u8 {
    const T: [u16; 12] = [0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4];
    let y = if m < 3 { y - 1 } else { y } as u32;
    let r = y + y / 4 - y / 100 + y / 400 + T[(m - 1) as usize] as u32 + d as u32;
    (r % 7) as u8
}

fn last_sunday(y: u16, m: u8) -> u8 {
    let last = days_in_month(y, m);
    last - weekday(y, m, last)
}

/// The offset of a local wall-clock time in `zone`.
pub fn zone_offset(zone: Zone, y: u16, m: u8, d: u8, h: u8) -> i16 {
    match zone {
        Zone::Fixed(o) => o,
        Zone::EuropeParis => {
            let summer = match m {
                4..=9 => true,
                3 => {
                    let ls = last_sunday(y, 3);
                    d > ls || (d == ls && h >= 2)
                }
                10 => {
                    let ls = last_sunday(y, 10);
                    d < ls || (d == ls && h < 3)
                }
                _ => false,
            };
            if summer { 120 } else { 60 }
        }
    }
}

/// A DTM held in one component (or a TS whose parts are subcomponents) as a FHIR dateTime;
/// `None` when empty, an error naming the component when malformed.
pub fn date_time_opt(
    v: Value<'_>,
    zone: Zone,
    at: At<'_>,
    component: usize,
) -> Result<Option<String>, MapError> {
    let Some(t) = text(v.subcomponent(1)).or_else(|| text(v)) else {
        return Ok(None);
    };
    let t = t.split(['^', '&']).next().unwrap_or("");
    Dtm::parse(t)
        .map(|d| Some(d.date_time(zone)))
        .ok_or_else(|| {
            at.err_component(
                component,
                "not a valid date/time (YYYY[MM[DD[HH[MM[SS]]]]][+/-ZZZZ])",
            )
        })
}

/// A field holding a TS/DTM: its first component.
pub fn field_dtm(v: Value<'_>, at: At<'_>) -> Result<Option<Dtm>, MapError> {
    let Some(t) = text(v.component(1)) else {
        return Ok(None);
    };
    Dtm::parse(&t)
        .map(Some)
        .ok_or_else(|| at.err("not a valid date/time (YYYY[MM[DD[HH[MM[SS]]]]][+/-ZZZZ])"))
}

/// Deterministic ids: the same message always maps to the same resource ids.
pub fn uuid(seed: &[u8; 32], kind: &str, n: usize) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(seed);
    h.update(kind.as_bytes());
    h.update((n as u64).to_be_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    // RFC 9562 version 8 (custom, here SHA-256 of the message and the resource's place),
    // variant 10.
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = crate::model::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_precision_and_become_json_numbers() {
        assert_eq!(decimal("5").as_deref(), Some("5"));
        assert_eq!(decimal("5.0").as_deref(), Some("5.0"));
        assert_eq!(decimal("+007.10").as_deref(), Some("7.10"));
        assert_eq!(decimal("-.5").as_deref(), Some("-0.5"));
        assert_eq!(decimal("12.").as_deref(), Some("12"));
        assert_eq!(decimal("-0").as_deref(), Some("0"));
        assert_eq!(decimal(" 3.2 ").as_deref(), Some("3.2"));
        for bad in ["", ".", "-", "1e3", "<5", "1,5", "1.2.3", "abc", "--1"] {
            assert_eq!(decimal(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps_follow_the_zone_rules() {
        let z = Zone::EuropeParis;
        let dt = |s: &str| Dtm::parse(s).map(|d| d.date_time(z));
        assert_eq!(dt("2021").as_deref(), Some("2021"));
        assert_eq!(dt("202106").as_deref(), Some("2021-06"));
        assert_eq!(dt("20210606").as_deref(), Some("2021-06-06"));
        assert_eq!(
            dt("2021060609").as_deref(),
            Some("2021-06-06T09:00:00+02:00")
        );
        assert_eq!(
            dt("202101060931").as_deref(),
            Some("2021-01-06T09:31:00+01:00")
        );
        assert_eq!(
            dt("20210106093112.25-0500").as_deref(),
            Some("2021-01-06T09:31:12.25-05:00")
        );
        assert_eq!(
            dt("20210106093112+0000").as_deref(),
            Some("2021-01-06T09:31:12Z")
        );
        // 2025: last Sunday of March is the 30th, of October the 26th.
        assert_eq!(
            dt("202503300159").as_deref(),
            Some("2025-03-30T01:59:00+01:00")
        );
        assert_eq!(
            dt("202503300300").as_deref(),
            Some("2025-03-30T03:00:00+02:00")
        );
        assert_eq!(
            dt("202510260259").as_deref(),
            Some("2025-10-26T02:59:00+02:00")
        );
        assert_eq!(
            dt("202510260300").as_deref(),
            Some("2025-10-26T03:00:00+01:00")
        );
        assert_eq!(
            Dtm::parse("202501010000")
                .map(|d| d.date_time(Zone::Fixed(240)))
                .as_deref(),
            Some("2025-01-01T00:00:00+04:00")
        );
        for bad in [
            "20211",
            "20211301",
            "20210230",
            "2021010125",
            "20210101+01",
            "abcd",
            "20210101.5",
        ] {
            assert_eq!(Dtm::parse(bad), None, "{bad}");
        }
        assert_eq!(
            Dtm::parse("20240229").map(|d| d.date()).as_deref(),
            Some("2024-02-29")
        );
        assert_eq!(Zone::parse("-03:00"), Some(Zone::Fixed(-180)));
        assert_eq!(Zone::parse("+0400"), Some(Zone::Fixed(240)));
        assert_eq!(Zone::parse("Mars/Olympus"), None);
    }

    #[test]
    fn oids_and_coding_systems() {
        assert!(is_oid("1.2.250.1.213.1.4.8"));
        assert!(!is_oid("1204567809"));
        assert!(!is_oid("1.02.3"));
        assert!(!is_oid("3.1"));
        assert_eq!(
            coding_system(Some("LN"), None).0.as_deref(),
            Some("http://loinc.org")
        );
        assert_eq!(
            coding_system(Some("HL70078"), None).0.as_deref(),
            Some("http://terminology.hl7.org/CodeSystem/v2-0078")
        );
        let (sys, ext) = coding_system(Some("MetaDMPMSS"), None);
        assert_eq!(sys, None);
        assert!(
            matches!(ext.and_then(|e| e.value), Some(ExtensionValue::String(s)) if s.value.as_deref() == Some("MetaDMPMSS"))
        );
        assert_eq!(
            coding_system(Some("L"), Some("1.2.3.4")).0.as_deref(),
            Some("urn:oid:1.2.3.4")
        );
    }

    #[test]
    fn mime_types() {
        assert_eq!(
            mime_type(Some("TEXT"), Some("XML")).as_deref(),
            Some("text/xml")
        );
        assert_eq!(
            mime_type(Some("AP"), Some("PDF")).as_deref(),
            Some("application/pdf")
        );
        assert_eq!(
            mime_type(Some("BINARY"), Some("JPEG")).as_deref(),
            Some("image/jpeg")
        );
        assert_eq!(mime_type(Some("TEXT"), None), None);
    }
}
