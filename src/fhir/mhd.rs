//! A result → an IHE MHD ITI-65 "Provide Document Bundle" as ANS PDSm profiles it, for the
//! DMP feed (DECISIONS D13): a transaction Bundle with a SubmissionSet `List`, and per
//! document a `DocumentReference` and its `Binary`.
//!
//! The documents are the message's ED OBX (the CDA the French CDA-in-HL7 profile carries,
//! `OBX|n|ED|11502-2^…^LN||^TEXT^XML^Base64^…`), MetaDMPMSS metadata excepted; a result that
//! carries none is published as its FHIR report (the v2-to-FHIR Bundle, `report`).

use super::r4::Resource;
use super::r4::resources::{
    Binary, Bundle, BundleEntry, BundleEntryRequest, DocumentReference, DocumentReferenceContent,
    DocumentReferenceContext, DocumentReferenceRelatesTo, List, ListEntry, Organization, Patient,
};
use super::r4::types::{
    Attachment, CodeableConcept, Coding, Extension, ExtensionValue, Identifier, Meta, Period,
    Reference,
};
use super::v2::{self, Dtm, base64_of, code};
use super::{At, MapError, Zone};
use crate::hl7::Message;

const PDSM: &str = "https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/";
const MHD_EXT: &str = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/";
const RFC3986: &str = "urn:ietf:rfc:3986";
const LOINC: &str = "http://loinc.org";
/// TRE_A07 StatutVisibiliteDocument (OID 1.2.250.1.213.1.1.4.13).
pub const VISIBILITY: &str = "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument";
/// TRE_A08 HL7Confidentiality (N, R, V).
pub const CONFIDENTIALITY: &str =
    "https://mos.esante.gouv.fr/NOS/TRE_A08-HL7Confidentiality/FHIR/TRE-A08-HL7Confidentiality";
const FORMAT: &str =
    "https://mos.esante.gouv.fr/NOS/TRE_A11-IheFormatCode/FHIR/TRE-A11-IheFormatCode";
const CLASS: &str =
    "https://mos.esante.gouv.fr/NOS/TRE_A03-ClasseDocument/FHIR/TRE-A03-ClasseDocument";
const SECTOR: &str =
    "https://mos.esante.gouv.fr/NOS/TRE_R02-SecteurActivite/FHIR/TRE-R02-SecteurActivite";
const PRACTICE: &str =
    "https://mos.esante.gouv.fr/NOS/TRE_A01-CadreExercice/FHIR/TRE-A01-CadreExercice";
/// OID of FINESS identifiers.
const FINESS_OID: &str = "urn:oid:1.2.250.1.71.4.2.2";

/// MetaDMPMSS flags → TRE_A07 visibility codes (the HL7 flag `INVISIBLE_REP_LEGAUX` is the
/// A07 code `INVISIBLE_REPRESENTANTS_LEGAUX`).
pub const VISIBILITY_FLAGS: [(&str, &str); 3] = [
    ("MASQUE_PS", "MASQUE_PS"),
    ("INVISIBLE_PATIENT", "INVISIBLE_PATIENT"),
    ("INVISIBLE_REP_LEGAUX", "INVISIBLE_REPRESENTANTS_LEGAUX"),
];

/// Who publishes: the owning establishment.
#[derive(Debug, Clone)]
pub struct Publisher<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub finess: Option<&'a str>,
}

/// The Bundle to POST, as JSON.
#[derive(Debug)]
pub struct Provide {
    pub json: String,
    /// Per document (in the report's order): its masterIdentifier.
    pub master_ids: Vec<String>,
}

impl Provide {
    /// The Bundle entry of the `n`th document's DocumentReference: the transaction-response
    /// answers entry by entry, in the same order (List first, then DocumentReference and
    /// Binary per document).
    pub fn reference_entry(n: usize) -> usize {
        1 + 2 * n
    }
}

/// A document already published that the `n`th document of this report replaces.
#[derive(Debug, Clone)]
pub struct Replaces<'a> {
    pub n: usize,
    /// Its masterIdentifier.
    pub master_id: &'a str,
    /// Where the DMP put it (`DocumentReference/<id>`), when known.
    pub location: Option<&'a str>,
}

/// One document to publish.
/// A document a message carries (an ED OBX that `dmp::is_document` accepts).
pub(crate) struct Document {
    pub(crate) bytes: Vec<u8>,
    pub(crate) mime: String,
    /// LOINC type (OBX-3.1 when coded in LN, else 11502-2).
    pub(crate) type_code: String,
    pub(crate) type_display: String,
    pub(crate) cda: bool,
    /// OBX-14 (HL7 DTM), or empty.
    pub(crate) created: String,
}

/// An OID under `2.25` (ISO/IEC 9834-8: from a UUID): an XDS uniqueId for what we create.
pub(crate) fn oid_of(uuid: &str) -> String {
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    let n = u128::from_str_radix(&hex, 16).unwrap_or(0);
    format!("urn:oid:2.25.{n}")
}

fn uri_identifier(use_: &str, value: String) -> Identifier {
    Identifier {
        r#use: Some(code(use_)),
        system: Some(RFC3986.into()),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn coding(system: &str, c: &str, display: Option<&str>) -> Coding {
    Coding {
        system: Some(system.into()),
        code: Some(code(c)),
        display: display.map(Into::into),
        ..Default::default()
    }
}

fn concept(system: &str, c: &str, display: Option<&str>) -> CodeableConcept {
    CodeableConcept {
        coding: vec![coding(system, c, display)],
        ..Default::default()
    }
}

fn local(id: &str) -> Box<Reference> {
    Box::new(Reference {
        reference: Some(format!("#{id}").into()),
        ..Default::default()
    })
}

fn meta(profile: &str) -> Option<Box<Meta>> {
    Some(Box::new(Meta {
        profile: vec![format!("{PDSM}{profile}").into()],
        ..Default::default()
    }))
}

/// The patient as the DocumentReference's `sourcePatientInfo` (contained): INS, name,
/// birth date, sex.
fn patient(msg: &Message<'_>, ins_id: &Identifier) -> Patient {
    let mut p = Patient {
        id: Some("patient".into()),
        identifier: vec![ins_id.clone()],
        ..Default::default()
    };
    if let Some(pid) = msg.segments_named("PID").next() {
        p.name = pid
            .field(5)
            .repetitions()
            .filter_map(v2::xpn_name)
            .collect();
        p.birth_date = Dtm::parse(&pid.field(7).text()).map(|d| d.date().into());
        p.gender = match pid.field(8).text().as_ref() {
            "M" => Some(code("male")),
            "F" => Some(code("female")),
            "O" | "A" => Some(code("other")),
            "U" => Some(code("unknown")),
            _ => None,
        };
    }
    p
}

/// The ED OBX that are documents (MetaDMPMSS metadata, such as the mail bodies, are not).
pub(crate) fn documents(msg: &Message<'_>) -> Result<Vec<Document>, MapError> {
    let mut out = Vec::new();
    for (i, obx) in msg.segments_named("OBX").enumerate() {
        if !crate::dmp::is_document(&obx) {
            continue;
        }
        let id = obx.field(3);
        let at = At {
            segment: "OBX",
            occurrence: i + 1,
            field: 5,
        };
        let (bytes, mime) = v2::ed_bytes(obx.field(5).repetition(1), at)?;
        let mime = mime.unwrap_or_else(|| "application/octet-stream".into());
        let cda = mime == "text/xml" || mime == "application/xml";
        let loinc = id.component(3).text() == "LN";
        out.push(Document {
            bytes,
            mime,
            type_code: if loinc {
                id.component(1).text().into_owned()
            } else {
                "11502-2".into()
            },
            type_display: if loinc {
                id.component(2).text().into_owned()
            } else {
                "CR d'examens biologiques".into()
            },
            cda,
            created: obx.field(14).component(1).text().into_owned(),
        });
    }
    Ok(out)
}

/// Builds the ITI-65 Bundle for a stored message (`msg`, read from `raw`; its store
/// sequence `seq`); a document that `replaces` names is published as the new version of
/// that one (`relatesTo` `replaces`, ITI-65 / PDSm "remplacement").
pub fn provide_bundle(
    msg: &Message<'_>,
    raw: &[u8],
    seq: u64,
    publisher: &Publisher<'_>,
    replaces: &[Replaces<'_>],
    zone: Zone,
    now_ms: u64,
) -> Result<Provide, MapError> {
    let mut seed = crate::model::sha256(raw);
    seed[..8].copy_from_slice(&seq.to_be_bytes());
    let id = |kind: &str, n: usize| v2::uuid(&seed, kind, n);
    let (ins_value, ins_oid) = crate::dmp::ins(msg).ok_or_else(|| {
        At {
            segment: "PID",
            occurrence: 1,
            field: 3,
        }
        .err("no INS to publish under")
    })?;
    let ins_id = Identifier {
        system: Some(format!("urn:oid:{ins_oid}").into()),
        value: Some(ins_value.into()),
        ..Default::default()
    };
    let subject = Box::new(Reference {
        identifier: Some(Box::new(ins_id.clone())),
        ..Default::default()
    });
    let now = crate::time::rfc3339(now_ms);
    let org = Organization {
        id: Some("org".into()),
        name: Some(publisher.name.into()),
        identifier: publisher
            .finess
            .map(|f| Identifier {
                system: Some(FINESS_OID.into()),
                value: Some(f.into()),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let mut docs = documents(msg)?;
    if docs.is_empty() {
        let mapped = super::map_result(msg, zone)?;
        let json = super::json::to_json(&mapped.bundle)
            .map_err(|_| whole("the FHIR report could not be written"))?;
        docs.push(Document {
            bytes: json.into_bytes(),
            mime: "application/fhir+json".into(),
            type_code: "11502-2".into(),
            type_display: "CR d'examens biologiques".into(),
            cda: false,
            created: String::new(),
        });
    }
    let mut labels = Vec::new();
    for (flag, a07) in VISIBILITY_FLAGS {
        if crate::dmp::flag(msg, flag) == Some(true) {
            labels.push(concept(VISIBILITY, a07, None));
        }
    }
    labels.push(concept(CONFIDENTIALITY, "N", Some("Normal")));
    let period_start = msg
        .segments_named("OBR")
        .next()
        .and_then(|obr| Dtm::parse(&obr.field(7).text()))
        .map(|d| d.date_time(zone))
        .unwrap_or_else(|| now.clone());
    let list_url = format!("urn:uuid:{}", id("List", 0));
    let mut entries = Vec::new();
    let mut list_entries = Vec::new();
    let mut doc_entries = Vec::new();
    let mut master_ids = Vec::new();
    let source_patient = patient(msg, &ins_id);
    for (n, d) in docs.iter().enumerate() {
        let master_id = oid_of(&id("Document", n));
        let dr_uuid = id("DocumentReference", n);
        let bin_url = format!("urn:uuid:{}", id("Binary", n));
        let dr_url = format!("urn:uuid:{dr_uuid}");
        let sha1: [u8; 20] = {
            use sha1::Digest;
            sha1::Sha1::digest(&d.bytes).into()
        };
        let dr = DocumentReference {
            meta: meta("pdsm-comprehensive-document-reference"),
            contained: vec![
                Resource::Patient(Box::new(source_patient.clone())),
                Resource::Organization(Box::new(org.clone())),
            ],
            master_identifier: Some(Box::new(uri_identifier("usual", master_id.clone()))),
            relates_to: replaces
                .iter()
                .filter(|r| r.n == n)
                .map(|r| DocumentReferenceRelatesTo {
                    code: code("replaces"),
                    target: Box::new(Reference {
                        reference: r.location.map(Into::into),
                        identifier: Some(Box::new(Identifier {
                            system: Some(RFC3986.into()),
                            value: Some(r.master_id.into()),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            identifier: vec![uri_identifier("official", dr_url.clone())],
            status: code("current"),
            r#type: Some(Box::new(concept(
                LOINC,
                &d.type_code,
                Some(&d.type_display)
                    .filter(|s| !s.is_empty())
                    .map(|s| s.as_str()),
            ))),
            category: vec![concept(CLASS, "10", Some("Compte rendu"))],
            subject: Some(subject.clone()),
            date: Some(now.clone().into()),
            author: vec![*local("org")],
            security_label: labels.clone(),
            content: vec![DocumentReferenceContent {
                attachment: Box::new(Attachment {
                    content_type: Some(code(d.mime.as_str())),
                    language: Some(code("fr-FR")),
                    url: Some(bin_url.clone().into()),
                    size: u32::try_from(d.bytes.len()).ok().map(Into::into),
                    hash: Some(base64_of(&sha1).into()),
                    title: Some(d.type_display.clone().into()),
                    creation: Some(now.clone().into()),
                    ..Default::default()
                }),
                format: d
                    .cda
                    .then(|| Box::new(coding(FORMAT, "urn:ihe:lab:xd-lab:2008", Some("CR-BIO")))),
                ..Default::default()
            }],
            context: Some(DocumentReferenceContext {
                period: Some(Box::new(Period {
                    start: Some(period_start.clone().into()),
                    ..Default::default()
                })),
                facility_type: Some(Box::new(concept(SECTOR, "SA01", None))),
                practice_setting: Some(Box::new(concept(PRACTICE, "ETABLISSEMENT", None))),
                source_patient_info: Some(local("patient")),
                ..Default::default()
            }),
            ..Default::default()
        };
        master_ids.push(master_id);
        list_entries.push(ListEntry {
            item: Box::new(Reference {
                reference: Some(dr_url.clone().into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        doc_entries.push(entry(
            dr_url,
            Resource::DocumentReference(Box::new(dr)),
            "DocumentReference",
        ));
        doc_entries.push(entry(
            bin_url,
            Resource::Binary(Box::new(Binary {
                content_type: code(d.mime.as_str()),
                data: Some(base64_of(&d.bytes).into()),
                ..Default::default()
            })),
            "Binary",
        ));
    }
    let list = List {
        meta: meta("pdsm-submissionset-comprehensive"),
        contained: vec![Resource::Organization(Box::new(org))],
        extension: vec![
            Extension {
                url: format!("{MHD_EXT}ihe-sourceId"),
                value: Some(ExtensionValue::Identifier(Box::new(Identifier {
                    value: Some(source_oid(publisher.id).into()),
                    ..Default::default()
                }))),
                ..Default::default()
            },
            Extension {
                url: format!("{MHD_EXT}ihe-designationType"),
                value: Some(ExtensionValue::CodeableConcept(Box::new(concept(
                    LOINC,
                    "11502-2",
                    Some("CR d'examens biologiques"),
                )))),
                ..Default::default()
            },
        ],
        identifier: vec![
            uri_identifier("usual", oid_of(&id("SubmissionSet", 0))),
            uri_identifier("official", list_url.clone()),
        ],
        status: code("current"),
        mode: code("working"),
        code: Some(Box::new(concept(
            "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes",
            "submissionset",
            Some("SubmissionSet as a FHIR List"),
        ))),
        subject: Some(subject),
        date: Some(now.into()),
        source: Some(Box::new(Reference {
            extension: vec![Extension {
                url: format!("{MHD_EXT}ihe-authorOrg"),
                value: Some(ExtensionValue::Reference(local("org"))),
                ..Default::default()
            }],
            ..Default::default()
        })),
        entry: list_entries,
        ..Default::default()
    };
    entries.push(entry(list_url, Resource::List(Box::new(list)), "List"));
    entries.extend(doc_entries);
    let bundle = Bundle {
        meta: meta("pdsm-comprehensive-provide-document-bundle"),
        r#type: code("transaction"),
        entry: entries,
        ..Default::default()
    };
    let json = super::json::to_json(&Resource::Bundle(Box::new(bundle)))
        .map_err(|_| whole("the Bundle could not be written"))?;
    Ok(Provide { json, master_ids })
}

/// The PDSm extension marking a deleted DocumentReference (logical deletion).
pub const IS_DELETED: &str =
    "https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/pdsm-ext-is-deleted";

/// The path of a conditional PATCH of the DocumentReference whose identifier (here: our
/// masterIdentifier) is `master_id`, under the DMP's base path.
pub fn conditional_path(base: &str, master_id: &str) -> String {
    format!(
        "{}/DocumentReference?identifier={}",
        base.trim_end_matches('/'),
        crate::model::percent_encode(&format!("{RFC3986}|{master_id}"))
    )
}

/// The body of a PDSm deletion (flux 03, "suppression logique"): a FHIRPath Patch
/// (`Parameters`) that sets the status to `superseded` and adds `pdsm-ext-is-deleted` = true.
pub fn deletion_patch() -> String {
    serde_json::json!({
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "operation",
                "part": [
                    { "name": "type", "valueCode": "replace" },
                    { "name": "path", "valueString": "DocumentReference.status" },
                    { "name": "value", "valueCode": "superseded" }
                ]
            },
            {
                "name": "operation",
                "part": [
                    { "name": "type", "valueCode": "add" },
                    { "name": "path", "valueString": "DocumentReference" },
                    { "name": "name", "valueString": "extension" },
                    {
                        "name": "value",
                        "part": [
                            { "name": "url", "valueUri": IS_DELETED },
                            { "name": "value", "valueBoolean": true }
                        ]
                    }
                ]
            }
        ]
    })
    .to_string()
}

fn entry(url: String, resource: Resource, ty: &str) -> BundleEntry {
    BundleEntry {
        full_url: Some(url.into()),
        resource: Some(resource),
        request: Some(BundleEntryRequest {
            method: code("POST"),
            url: ty.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A problem with the message as a whole (reported at MSH).
fn whole(problem: &'static str) -> MapError {
    MapError {
        segment: "MSH".into(),
        occurrence: 1,
        field: None,
        component: None,
        problem: problem.into(),
    }
}

/// The SubmissionSet's sourceId: an OID under `2.25` derived from the establishment id, the
/// same for every submission of that establishment.
pub(crate) fn source_oid(establishment: &str) -> String {
    oid_of(&v2::uuid(
        &crate::model::sha256(b"labroute:dmp:source"),
        establishment,
        0,
    ))
}
