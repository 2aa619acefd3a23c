//! An IHE XDM package (`IHE_XDM.ZIP`) for a structured document sent over MSSanté.
//!
//! IHE XDM, Cross-Enterprise Document Media Interchange (IHE ITI TF-1 §16), carries a
//! submission set on media: the Portable Media Creator's transaction ITI-32 "Distribute
//! Document Set on Media" (ITI TF-2b §3.32), here with its "ZIP over E-mail" option. The
//! metadata are XDS metadata (ITI TF-3 §4.1, §4.2; UUIDs of Table 4.2.5-1) in ebRIM 3.0. The
//! French secure health messaging, MSSanté, requires a structured (CDA) document to travel as
//! such an archive, attached as `IHE_XDM.ZIP` next to its human-readable rendering (ANS, CI-SIS
//! "Volet Partage de documents de santé", and the ANS HL7 v2 guide "Transmission de documents
//! CDA en HL7 v2 / courriel MSSanté").
//!
//! The archive holds:
//!
//! ```text
//! INDEX.HTM                       index of the content (no script, only titles and links)
//! README.TXT                      who made it and how it is laid out
//! IHE_XDM/SUBSET01/METADATA.XML   lcm:SubmitObjectsRequest: DocumentEntries, SubmissionSet,
//!                                 HasMember associations
//! IHE_XDM/SUBSET01/DOC0001.XML    the documents, byte for byte (DOC0002.PDF, …)
//! ```
//!
//! The French value sets are those of the DMP feed (`crate::fhir::mhd`): class `10` Compte
//! rendu (TRE_A03), facility type `SA01` (TRE_R02), practice setting `ETABLISSEMENT`
//! (TRE_A01), confidentiality N/R/V (TRE_A08), format `urn:ihe:lab:xd-lab:2008` (TRE_A11) for a
//! CDA. The submission set's contentTypeCode is `26` "Analyses médicales biologiques" of
//! TRE_R209-TypeActivite, the terminology the CI-SIS binds contentTypeCode to (JDV_J03/J59).
//!
//! Everything is deterministic: entry UUIDs are derived from the submission's uniqueId, the ZIP
//! dates from its submission time, so the same submission gives the same bytes (a retried mail
//! is identical). Nothing here can panic or fail: an archive is always produced.

use std::io::Write;

use flate2::Compression;
use flate2::write::DeflateEncoder;
use sha2::{Digest, Sha256};

/// One document of the submission set.
#[derive(Debug, Clone)]
pub struct Document<'a> {
    pub bytes: &'a [u8],
    pub mime: &'a str,
    /// XDS uniqueId (an OID, or OID^extension).
    pub unique_id: &'a str,
    pub title: &'a str,
    /// LOINC code and display of typeCode (11502-2, "CR d'examens biologiques").
    pub type_code: (&'a str, &'a str),
    /// HL7 DTM (YYYYMMDDHHMMSS, UTC), or "" when unknown.
    pub creation_time: &'a str,
    /// N, R or V (HL7 Confidentiality).
    pub confidentiality: &'a str,
}

/// Who sends, to whom, about whom.
#[derive(Debug, Clone)]
pub struct Submission<'a> {
    pub documents: Vec<Document<'a>>,
    /// XDS patientId in CX form (`value^^^&OID&ISO`), e.g. the INS; "" when none.
    pub patient_id: &'a str,
    /// The submission set's uniqueId and sourceId (OIDs).
    pub unique_id: &'a str,
    pub source_id: &'a str,
    /// HL7 DTM, UTC.
    pub submission_time: &'a str,
    /// Author institution: name and FINESS (sent as the French XON
    /// `name^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^1<finess>`).
    pub institution: (&'a str, &'a str),
    /// Recipients' e-mail addresses (intendedRecipient).
    pub recipients: &'a [String],
    /// Names the software in README.TXT.
    pub vendor: &'a str,
}

/// The IHE_XDM.ZIP bytes.
pub fn package(s: &Submission<'_>) -> Vec<u8> {
    let files: Vec<DocFile> = s
        .documents
        .iter()
        .enumerate()
        .map(|(n, d)| DocFile::of(n, d))
        .collect();
    let metadata = metadata(s, &files);
    let index = index_htm(s, &files);
    let readme = readme_txt(s, &files);
    let (time, date) = dos_date_time(s.submission_time);
    let mut zip = Zip::new(time, date);
    zip.file("INDEX.HTM", index.as_bytes());
    zip.file("README.TXT", readme.as_bytes());
    zip.dir("IHE_XDM/");
    zip.dir("IHE_XDM/SUBSET01/");
    zip.file(&format!("{SUBSET}/METADATA.XML"), metadata.as_bytes());
    for (f, d) in files.iter().zip(&s.documents) {
        zip.file(&format!("{SUBSET}/{}", f.name), d.bytes);
    }
    zip.finish()
}

/// The submission set's directory (one submission set per package).
const SUBSET: &str = "IHE_XDM/SUBSET01";

// ebRIM 3.0 (OASIS regrep) namespaces and identifiers.
const LCM_NS: &str = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0";
const RIM_NS: &str = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0";
const OBJ_CLASSIFICATION: &str =
    "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Classification";
const OBJ_EXTERNAL_ID: &str =
    "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:ExternalIdentifier";
const OBJ_PACKAGE: &str =
    "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:RegistryPackage";
const OBJ_ASSOCIATION: &str =
    "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Association";
const APPROVED: &str = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved";
const HAS_MEMBER: &str = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember";

// XDS UUIDs (ITI TF-3 Table 4.2.5-1). DocumentEntry:
/// objectType of a stable DocumentEntry.
const DE_OBJECT_TYPE: &str = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1";
const DE_AUTHOR: &str = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d";
const DE_CLASS: &str = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a";
const DE_CONFIDENTIALITY: &str = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f";
const DE_FORMAT: &str = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d";
const DE_FACILITY: &str = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1";
const DE_PRACTICE: &str = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead";
const DE_TYPE: &str = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983";
const DE_PATIENT_ID: &str = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427";
const DE_UNIQUE_ID: &str = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab";
/// ClassificationNode marking a DocumentEntry with limited metadata (no patientId).
const DE_LIMITED: &str = "urn:uuid:ab9b591b-83ab-4d03-8f5d-f93b1fb92e85";
// SubmissionSet:
const SS_NODE: &str = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd";
const SS_AUTHOR: &str = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d";
const SS_CONTENT_TYPE: &str = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500";
const SS_UNIQUE_ID: &str = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8";
const SS_SOURCE_ID: &str = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832";
const SS_PATIENT_ID: &str = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446";
/// ClassificationNode marking a SubmissionSet with limited metadata (no patientId).
const SS_LIMITED: &str = "urn:uuid:5003a9db-8d8d-49e6-bf0c-990e34ac7707";

// Code systems (OIDs).
const LOINC_OID: &str = "2.16.840.1.113883.6.1";
/// TRE_A08 HL7Confidentiality.
const CONFIDENTIALITY_OID: &str = "2.16.840.1.113883.5.25";
/// FINESS identifiers (XON assigning authority).
const FINESS_OID: &str = "1.2.250.1.71.4.2.2";

/// A coded value: code, display name, coding scheme (OID).
struct Coded<'a> {
    code: &'a str,
    display: &'a str,
    scheme: &'a str,
}

/// TRE_A03-ClasseDocument (JDV_J57 ClassCode-DMP): 10 "Compte rendu".
const CLASS: Coded<'static> = Coded {
    code: "10",
    display: "Compte rendu",
    scheme: "1.2.250.1.213.1.1.4.1",
};
/// TRE_R02-SecteurActivite: SA01.
const FACILITY: Coded<'static> = Coded {
    code: "SA01",
    display: "Etablissement public de santé",
    scheme: "1.2.250.1.71.4.2.4",
};
/// TRE_A01-CadreExercice: ETABLISSEMENT.
const PRACTICE: Coded<'static> = Coded {
    code: "ETABLISSEMENT",
    display: "Etablissement de santé",
    scheme: "1.2.250.1.213.1.1.4.9",
};
/// TRE_A11-IheFormatCode, for a CDA lab report (IHE XD-LAB).
const FORMAT_CDA: Coded<'static> = Coded {
    code: "urn:ihe:lab:xd-lab:2008",
    display: "CR-BIO",
    scheme: "1.3.6.1.4.1.19376.1.2.3",
};
/// IHE formatCode for any other document: its MIME type says all.
const FORMAT_MIME: Coded<'static> = Coded {
    code: "urn:ihe:iti:xds:2017:mimeTypeSufficient",
    display: "mimeType Sufficient",
    scheme: "1.3.6.1.4.1.19376.1.2.3",
};
/// TRE_R209-TypeActivite (JDV_J03 / JDV_J59 contentTypeCode): 26.
const CONTENT_TYPE: Coded<'static> = Coded {
    code: "26",
    display: "Analyses médicales biologiques",
    scheme: "1.2.250.1.213.2.2",
};
/// typeCode when the caller gives none.
const DEFAULT_TYPE: (&str, &str) = ("11502-2", "CR d'examens biologiques");

/// A document's place in the archive.
struct DocFile {
    /// `DOC0001.XML`, relative to SUBSET01 (the metadata's URI slot).
    name: String,
    /// The MIME type without parameters, lower case.
    mime: String,
    cda: bool,
    /// SHA-1 of the bytes, lower-case hex.
    hash: String,
}

impl DocFile {
    fn of(n: usize, d: &Document<'_>) -> DocFile {
        let mime = normalize_mime(d.mime);
        let ext = extension(&mime);
        let sha1: [u8; 20] = {
            use sha1::Digest;
            sha1::Sha1::digest(d.bytes).into()
        };
        DocFile {
            name: format!("DOC{:04}.{ext}", n + 1),
            cda: ext == "XML",
            mime,
            hash: hex(&sha1),
        }
    }
}

/// `text/xml; charset=UTF-8` → `text/xml`; "" → `application/octet-stream`.
fn normalize_mime(mime: &str) -> String {
    let m = mime.split(';').next().unwrap_or("").trim();
    if m.is_empty() {
        "application/octet-stream".to_string()
    } else {
        m.to_ascii_lowercase()
    }
}

fn extension(mime: &str) -> &'static str {
    match mime {
        "text/xml" | "application/xml" => "XML",
        "application/pdf" => "PDF",
        "text/plain" => "TXT",
        _ => "BIN",
    }
}

// ---------------------------------------------------------------------------------------------
// METADATA.XML

/// Indented XML lines.
struct Xml(String);

impl Xml {
    fn line(&mut self, depth: usize, text: &str) {
        for _ in 0..depth {
            self.0.push_str("  ");
        }
        self.0.push_str(text);
        self.0.push('\n');
    }
}

fn slot(x: &mut Xml, depth: usize, name: &str, values: &[&str]) {
    x.line(depth, &format!("<rim:Slot name=\"{}\">", esc(name)));
    x.line(depth + 1, "<rim:ValueList>");
    for v in values {
        x.line(depth + 2, &format!("<rim:Value>{}</rim:Value>", esc(v)));
    }
    x.line(depth + 1, "</rim:ValueList>");
    x.line(depth, "</rim:Slot>");
}

fn name(x: &mut Xml, depth: usize, text: &str, lang: Option<&str>) {
    x.line(depth, "<rim:Name>");
    let lang = lang
        .map(|l| format!(" xml:lang=\"{}\" charset=\"UTF-8\"", esc(l)))
        .unwrap_or_default();
    x.line(
        depth + 1,
        &format!("<rim:LocalizedString{lang} value=\"{}\"/>", esc(text)),
    );
    x.line(depth, "</rim:Name>");
}

/// A coded classification (`classificationScheme`, `nodeRepresentation`, codingScheme slot,
/// display name).
fn classification(x: &mut Xml, depth: usize, scheme: &str, object: &str, id: &str, c: &Coded<'_>) {
    x.line(
        depth,
        &format!(
            "<rim:Classification classificationScheme=\"{scheme}\" classifiedObject=\"{object}\" \
             id=\"{id}\" nodeRepresentation=\"{}\" objectType=\"{OBJ_CLASSIFICATION}\">",
            esc(c.code)
        ),
    );
    slot(x, depth + 1, "codingScheme", &[c.scheme]);
    if !c.display.is_empty() {
        name(x, depth + 1, c.display, None);
    }
    x.line(depth, "</rim:Classification>");
}

/// An author classification (empty nodeRepresentation) carrying the author institution.
fn author(x: &mut Xml, depth: usize, scheme: &str, object: &str, id: &str, institution: &str) {
    x.line(
        depth,
        &format!(
            "<rim:Classification classificationScheme=\"{scheme}\" classifiedObject=\"{object}\" \
             id=\"{id}\" nodeRepresentation=\"\" objectType=\"{OBJ_CLASSIFICATION}\">"
        ),
    );
    slot(x, depth + 1, "authorInstitution", &[institution]);
    x.line(depth, "</rim:Classification>");
}

/// A classification by node (the submission set marker, limited metadata).
fn node(x: &mut Xml, depth: usize, node: &str, object: &str, id: &str) {
    x.line(
        depth,
        &format!(
            "<rim:Classification classificationNode=\"{node}\" classifiedObject=\"{object}\" \
             id=\"{id}\" objectType=\"{OBJ_CLASSIFICATION}\"/>"
        ),
    );
}

fn external_id(
    x: &mut Xml,
    depth: usize,
    scheme: &str,
    object: &str,
    id: &str,
    value: &str,
    label: &str,
) {
    x.line(
        depth,
        &format!(
            "<rim:ExternalIdentifier id=\"{id}\" identificationScheme=\"{scheme}\" \
             objectType=\"{OBJ_EXTERNAL_ID}\" registryObject=\"{object}\" value=\"{}\">",
            esc(value)
        ),
    );
    name(x, depth + 1, label, None);
    x.line(depth, "</rim:ExternalIdentifier>");
}

/// The author institution as an XON (French form with the FINESS), None when unnamed.
fn xon(name: &str, finess: &str) -> Option<String> {
    let (name, finess) = (name.trim(), finess.trim());
    let label = if name.is_empty() { finess } else { name };
    if label.is_empty() {
        None
    } else if finess.is_empty() {
        Some(hl7(label))
    } else {
        Some(format!(
            "{}^^^^^&{FINESS_OID}&ISO^IDNST^^^1{}",
            hl7(label),
            hl7(finess)
        ))
    }
}

/// The HL7 confidentiality code ("" is N) with its TRE_A08 display.
fn confidentiality(c: &str) -> Coded<'_> {
    let code = c.trim();
    let (code, display) = match code {
        "" | "N" => ("N", "Normal"),
        "R" => ("R", "Restreint"),
        "V" => ("V", "Très restreint"),
        other => (other, other),
    };
    Coded {
        code,
        display,
        scheme: CONFIDENTIALITY_OID,
    }
}

/// The LOINC typeCode, 11502-2 when none is given.
fn type_code<'a>(t: (&'a str, &'a str)) -> (&'a str, &'a str) {
    let code = t.0.trim();
    if code.is_empty() {
        DEFAULT_TYPE
    } else {
        (code, t.1.trim())
    }
}

/// The lcm:SubmitObjectsRequest of the submission set.
fn metadata(s: &Submission<'_>, files: &[DocFile]) -> String {
    let seed = s.unique_id;
    let id = |kind: &str, n: usize| format!("urn:uuid:{}", uuid_string(&uuid_bytes(seed, kind, n)));
    let patient = s.patient_id.trim();
    let institution = xon(s.institution.0, s.institution.1);
    let ss = id("SubmissionSet", 0);
    let mut x = Xml(String::with_capacity(
        files.len().saturating_mul(6144).saturating_add(4096),
    ));
    x.0.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.line(
        0,
        &format!("<lcm:SubmitObjectsRequest xmlns:lcm=\"{LCM_NS}\" xmlns:rim=\"{RIM_NS}\">"),
    );
    x.line(1, "<rim:RegistryObjectList>");

    for (n, (d, f)) in s.documents.iter().zip(files).enumerate() {
        let de = id("DocumentEntry", n);
        x.line(
            2,
            &format!(
                "<rim:ExtrinsicObject id=\"{de}\" mimeType=\"{}\" objectType=\"{DE_OBJECT_TYPE}\" \
                 status=\"{APPROVED}\">",
                esc(&f.mime)
            ),
        );
        let creation = d.creation_time.trim();
        if !creation.is_empty() {
            slot(&mut x, 3, "creationTime", &[creation]);
        }
        slot(&mut x, 3, "hash", &[f.hash.as_str()]);
        slot(&mut x, 3, "languageCode", &["fr-FR"]);
        let size = d.bytes.len().to_string();
        slot(&mut x, 3, "size", &[size.as_str()]);
        if !patient.is_empty() {
            slot(&mut x, 3, "sourcePatientId", &[patient]);
        }
        slot(&mut x, 3, "URI", &[f.name.as_str()]);
        if !d.title.trim().is_empty() {
            name(&mut x, 3, d.title, Some("fr-FR"));
        }
        if let Some(inst) = &institution {
            author(
                &mut x,
                3,
                DE_AUTHOR,
                &de,
                &id("DocumentEntry.author", n),
                inst,
            );
        }
        classification(
            &mut x,
            3,
            DE_CLASS,
            &de,
            &id("DocumentEntry.classCode", n),
            &CLASS,
        );
        let conf = confidentiality(d.confidentiality);
        let conf_id = id("DocumentEntry.confidentialityCode", n);
        classification(&mut x, 3, DE_CONFIDENTIALITY, &de, &conf_id, &conf);
        let format = if f.cda { &FORMAT_CDA } else { &FORMAT_MIME };
        classification(
            &mut x,
            3,
            DE_FORMAT,
            &de,
            &id("DocumentEntry.formatCode", n),
            format,
        );
        let facility_id = id("DocumentEntry.healthcareFacilityTypeCode", n);
        classification(&mut x, 3, DE_FACILITY, &de, &facility_id, &FACILITY);
        let practice_id = id("DocumentEntry.practiceSettingCode", n);
        classification(&mut x, 3, DE_PRACTICE, &de, &practice_id, &PRACTICE);
        let (code, display) = type_code(d.type_code);
        let typ = Coded {
            code,
            display,
            scheme: LOINC_OID,
        };
        classification(
            &mut x,
            3,
            DE_TYPE,
            &de,
            &id("DocumentEntry.typeCode", n),
            &typ,
        );
        if patient.is_empty() {
            node(
                &mut x,
                3,
                DE_LIMITED,
                &de,
                &id("DocumentEntry.limitedMetadata", n),
            );
        } else {
            let pid = id("DocumentEntry.patientId", n);
            external_id(
                &mut x,
                3,
                DE_PATIENT_ID,
                &de,
                &pid,
                patient,
                "XDSDocumentEntry.patientId",
            );
        }
        let unique = match d.unique_id.trim() {
            "" => oid_of(seed, "DocumentEntry.uniqueId", n),
            u => u.to_string(),
        };
        let uid = id("DocumentEntry.uniqueId", n);
        external_id(
            &mut x,
            3,
            DE_UNIQUE_ID,
            &de,
            &uid,
            &unique,
            "XDSDocumentEntry.uniqueId",
        );
        x.line(2, "</rim:ExtrinsicObject>");
    }

    x.line(
        2,
        &format!(
            "<rim:RegistryPackage id=\"{ss}\" objectType=\"{OBJ_PACKAGE}\" status=\"{APPROVED}\">"
        ),
    );
    // intendedRecipient (ITI TF-3 §4.2.3.3): XON|XCN|XTN; an e-mail address is the XTN alone.
    let recipients: Vec<String> = s
        .recipients
        .iter()
        .map(|r| r.trim())
        .filter(|r| !r.is_empty())
        .map(|r| format!("||^^Internet^{}", hl7(r)))
        .collect();
    if !recipients.is_empty() {
        let values: Vec<&str> = recipients.iter().map(String::as_str).collect();
        slot(&mut x, 3, "intendedRecipient", &values);
    }
    let submitted = s.submission_time.trim();
    if !submitted.is_empty() {
        slot(&mut x, 3, "submissionTime", &[submitted]);
    }
    if let Some(inst) = &institution {
        author(
            &mut x,
            3,
            SS_AUTHOR,
            &ss,
            &id("SubmissionSet.author", 0),
            inst,
        );
    }
    let content_id = id("SubmissionSet.contentTypeCode", 0);
    classification(&mut x, 3, SS_CONTENT_TYPE, &ss, &content_id, &CONTENT_TYPE);
    if patient.is_empty() {
        node(
            &mut x,
            3,
            SS_LIMITED,
            &ss,
            &id("SubmissionSet.limitedMetadata", 0),
        );
    } else {
        let pid = id("SubmissionSet.patientId", 0);
        external_id(
            &mut x,
            3,
            SS_PATIENT_ID,
            &ss,
            &pid,
            patient,
            "XDSSubmissionSet.patientId",
        );
    }
    let source = match s.source_id.trim() {
        "" => oid_of(seed, "SubmissionSet.sourceId", 0),
        v => v.to_string(),
    };
    let sid = id("SubmissionSet.sourceId", 0);
    external_id(
        &mut x,
        3,
        SS_SOURCE_ID,
        &ss,
        &sid,
        &source,
        "XDSSubmissionSet.sourceId",
    );
    let unique = match s.unique_id.trim() {
        "" => oid_of(seed, "SubmissionSet.uniqueId", 0),
        v => v.to_string(),
    };
    let uid = id("SubmissionSet.uniqueId", 0);
    external_id(
        &mut x,
        3,
        SS_UNIQUE_ID,
        &ss,
        &uid,
        &unique,
        "XDSSubmissionSet.uniqueId",
    );
    x.line(2, "</rim:RegistryPackage>");
    node(
        &mut x,
        2,
        SS_NODE,
        &ss,
        &id("SubmissionSet.classification", 0),
    );

    for n in 0..files.len() {
        x.line(
            2,
            &format!(
                "<rim:Association associationType=\"{HAS_MEMBER}\" id=\"{}\" \
                 objectType=\"{OBJ_ASSOCIATION}\" sourceObject=\"{ss}\" targetObject=\"{}\">",
                id("Association", n),
                id("DocumentEntry", n)
            ),
        );
        slot(&mut x, 3, "SubmissionSetStatus", &["Original"]);
        x.line(2, "</rim:Association>");
    }

    x.line(1, "</rim:RegistryObjectList>");
    x.line(0, "</lcm:SubmitObjectsRequest>");
    x.0
}

// ---------------------------------------------------------------------------------------------
// INDEX.HTM, README.TXT

fn index_htm(s: &Submission<'_>, files: &[DocFile]) -> String {
    let mut h = String::with_capacity(files.len().saturating_mul(256).saturating_add(1024));
    h.push_str("<!DOCTYPE html>\n<html lang=\"fr\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<title>IHE XDM</title>\n</head>\n<body>\n");
    h.push_str("<h1>Documents (IHE XDM)</h1>\n");
    let institution = plain(s.institution.0);
    if !institution.trim().is_empty() {
        h.push_str(&format!("<p>Émetteur : {}</p>\n", html(institution.trim())));
    }
    h.push_str("<p><a href=\"README.TXT\">README.TXT</a></p>\n");
    h.push_str("<h2>SUBSET01</h2>\n<ul>\n");
    for (d, f) in s.documents.iter().zip(files) {
        let label = if d.title.trim().is_empty() {
            f.name.as_str()
        } else {
            d.title
        };
        h.push_str(&format!(
            "<li><a href=\"{SUBSET}/{}\">{}</a> ({})</li>\n",
            f.name,
            html(label),
            html(&f.mime)
        ));
    }
    h.push_str("</ul>\n");
    h.push_str(&format!(
        "<p><a href=\"{SUBSET}/METADATA.XML\">METADATA.XML</a></p>\n"
    ));
    h.push_str("</body>\n</html>\n");
    h
}

fn readme_txt(s: &Submission<'_>, files: &[DocFile]) -> String {
    fn crlf(t: &mut String, text: &str) {
        t.push_str(text);
        t.push_str("\r\n");
    }
    let mut t = String::with_capacity(files.len().saturating_mul(96).saturating_add(1024));
    crlf(
        &mut t,
        "IHE XDM - Cross-Enterprise Document Media Interchange (IHE ITI TF-1 16)",
    );
    crlf(
        &mut t,
        "Distribute Document Set on Media [ITI-32], option ZIP over e-mail (MSSante).",
    );
    crlf(&mut t, "");
    crlf(
        &mut t,
        &format!("Logiciel / Software: {}", plain(s.vendor).trim()),
    );
    let (name, finess) = (plain(s.institution.0), plain(s.institution.1));
    let (name, finess) = (name.trim(), finess.trim());
    if !name.is_empty() || !finess.is_empty() {
        let finess = if finess.is_empty() {
            String::new()
        } else {
            format!(" (FINESS {finess})")
        };
        crlf(
            &mut t,
            &format!("Etablissement / Institution: {name}{finess}"),
        );
    }
    crlf(&mut t, "");
    crlf(&mut t, "Contenu / Layout:");
    crlf(
        &mut t,
        "  README.TXT                     ce fichier / this file",
    );
    crlf(
        &mut t,
        "  INDEX.HTM                      index des documents / index",
    );
    crlf(
        &mut t,
        &format!("  {SUBSET}/METADATA.XML  metadonnees XDS (ebRIM 3.0)"),
    );
    for (n, f) in files.iter().enumerate() {
        crlf(
            &mut t,
            &format!(
                "  {SUBSET}/{}   document {} ({})",
                f.name,
                n + 1,
                plain(&f.mime)
            ),
        );
    }
    t
}

// ---------------------------------------------------------------------------------------------
// Text helpers

/// XML text and attribute escaping (`'` as `&apos;`); characters XML 1.0 forbids become
/// U+FFFD.
fn esc(s: &str) -> String {
    escape(s, "&apos;")
}

/// HTML escaping (`'` as `&#39;`, which HTML 4 also knows).
fn html(s: &str) -> String {
    escape(s, "&#39;")
}

fn escape(s: &str, apos: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str(apos),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// HL7 v2 escaping of a component's text (the XON, XTN values carry free text).
fn hl7(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\E\\"),
            '|' => out.push_str("\\F\\"),
            '^' => out.push_str("\\S\\"),
            '&' => out.push_str("\\T\\"),
            '~' => out.push_str("\\R\\"),
            c => out.push(c),
        }
    }
    out
}

/// Control characters out of a line of plain text.
fn plain(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn push_hex(out: &mut String, b: u8) {
    out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
    out.push(char::from_digit(u32::from(b & 0x0f), 16).unwrap_or('0'));
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        push_hex(&mut out, b);
    }
    out
}

/// A UUID (RFC 9562 version-4 layout, variant 10) from SHA-256 of the seed (the submission's
/// uniqueId), the object's kind and its index: the same submission, the same ids.
fn uuid_bytes(seed: &str, kind: &str, n: usize) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"labroute:xdm:");
    for part in [seed.as_bytes(), kind.as_bytes()] {
        h.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        h.update(part);
    }
    h.update(u64::try_from(n).unwrap_or(u64::MAX).to_be_bytes());
    let d: [u8; 32] = h.finalize().into();
    let mut b = [0u8; 16];
    for (to, from) in b.iter_mut().zip(d.iter()) {
        *to = *from;
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
fn uuid_string(b: &[u8; 16]) -> String {
    let mut out = String::with_capacity(36);
    for (i, &byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        push_hex(&mut out, byte);
    }
    out
}

/// An OID under `2.25` (ISO/IEC 9834-8: from a UUID), for an identifier the caller left
/// empty.
fn oid_of(seed: &str, kind: &str, n: usize) -> String {
    format!("2.25.{}", u128::from_be_bytes(uuid_bytes(seed, kind, n)))
}

// ---------------------------------------------------------------------------------------------
// ZIP (APPNOTE 6.3: local headers, central directory, end of central directory; no ZIP64)

/// MS-DOS time and date of an HL7 DTM (`YYYYMMDD[HH[MM[SS]]]`); 1980-01-01 00:00 when it
/// cannot be read or falls outside the DOS range.
fn dos_date_time(dtm: &str) -> (u16, u16) {
    const EPOCH: (u16, u16) = (0, (1 << 5) | 1);
    let b = dtm.trim().as_bytes();
    let num = |from: usize, len: usize| -> Option<u16> {
        let digits = b.get(from..from + len)?;
        let mut n: u16 = 0;
        for &c in digits {
            if !c.is_ascii_digit() {
                return None;
            }
            n = n * 10 + u16::from(c - b'0');
        }
        Some(n)
    };
    let (Some(year), Some(month), Some(day)) = (num(0, 4), num(4, 2), num(6, 2)) else {
        return EPOCH;
    };
    if !(1980..=2107).contains(&year) || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return EPOCH;
    }
    let hour = num(8, 2).unwrap_or(0);
    let minute = num(10, 2).unwrap_or(0);
    let second = num(12, 2).unwrap_or(0);
    let time = if hour > 23 || minute > 59 || second > 59 {
        0
    } else {
        (hour << 11) | (minute << 5) | (second / 2)
    };
    (time, ((year - 1980) << 9) | (month << 5) | day)
}

/// Raw DEFLATE, None if the encoder reports an error.
fn deflate(data: &[u8]) -> Option<Vec<u8>> {
    let mut enc = DeflateEncoder::new(
        Vec::with_capacity(data.len() / 2 + 64),
        Compression::default(),
    );
    enc.write_all(data).ok()?;
    enc.finish().ok()
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn u32_sat(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn u16_sat(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// A ZIP archive written in one pass into memory.
struct Zip {
    out: Vec<u8>,
    central: Vec<u8>,
    entries: usize,
    time: u16,
    date: u16,
}

impl Zip {
    fn new(time: u16, date: u16) -> Zip {
        Zip {
            out: Vec::new(),
            central: Vec::new(),
            entries: 0,
            time,
            date,
        }
    }

    fn dir(&mut self, name: &str) {
        self.push(name, &[], true);
    }

    fn file(&mut self, name: &str, data: &[u8]) {
        self.push(name, data, false);
    }

    fn push(&mut self, name: &str, data: &[u8], dir: bool) {
        let crc = crc32fast::hash(data);
        // DEFLATE (8) when it helps, else STORED (0), as when the encoder fails.
        let deflated = if dir || data.is_empty() {
            None
        } else {
            deflate(data).filter(|c| c.len() < data.len())
        };
        let (method, body): (u16, &[u8]) = match &deflated {
            Some(c) => (8, c.as_slice()),
            None => (0, data),
        };
        let version: u16 = if method == 8 { 20 } else { 10 };
        let name = name.as_bytes();
        let offset = u32_sat(self.out.len());
        let (csize, usize_) = (u32_sat(body.len()), u32_sat(data.len()));

        let o = &mut self.out;
        put32(o, 0x0403_4b50);
        put16(o, version);
        put16(o, 0); // general purpose flags: names are ASCII, sizes known
        put16(o, method);
        put16(o, self.time);
        put16(o, self.date);
        put32(o, crc);
        put32(o, csize);
        put32(o, usize_);
        put16(o, u16_sat(name.len()));
        put16(o, 0); // extra field length
        o.extend_from_slice(name);
        o.extend_from_slice(body);

        let c = &mut self.central;
        put32(c, 0x0201_4b50);
        put16(c, 20); // made by: MS-DOS, APPNOTE 2.0
        put16(c, version);
        put16(c, 0);
        put16(c, method);
        put16(c, self.time);
        put16(c, self.date);
        put32(c, crc);
        put32(c, csize);
        put32(c, usize_);
        put16(c, u16_sat(name.len()));
        put16(c, 0); // extra field length
        put16(c, 0); // comment length
        put16(c, 0); // disk number start
        put16(c, 0); // internal attributes
        put32(c, if dir { 0x10 } else { 0 }); // external attributes: MS-DOS directory bit
        put32(c, offset);
        c.extend_from_slice(name);

        self.entries += 1;
    }

    fn finish(mut self) -> Vec<u8> {
        let offset = u32_sat(self.out.len());
        let size = u32_sat(self.central.len());
        let entries = u16_sat(self.entries);
        self.out.extend_from_slice(&self.central);
        let o = &mut self.out;
        put32(o, 0x0605_4b50);
        put16(o, 0); // this disk
        put16(o, 0); // disk with the central directory
        put16(o, entries);
        put16(o, entries);
        put32(o, size);
        put32(o, offset);
        put16(o, 0); // comment length
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// An entry read back from the archive.
    struct Entry {
        name: String,
        method: u16,
        time: u16,
        date: u16,
        data: Vec<u8>,
    }

    fn le16(z: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([z[at], z[at + 1]])
    }

    fn le32(z: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([z[at], z[at + 1], z[at + 2], z[at + 3]])
    }

    /// A tiny ZIP reader: walks the central directory, checks each local header against it,
    /// inflates and checks the CRC.
    fn unzip(z: &[u8]) -> Vec<Entry> {
        assert!(z.len() >= 22, "no end of central directory");
        let eocd = z.len() - 22;
        assert_eq!(
            le32(z, eocd),
            0x0605_4b50,
            "end of central directory signature"
        );
        let count = usize::from(le16(z, eocd + 10));
        assert_eq!(le16(z, eocd + 8), le16(z, eocd + 10));
        let cd_size = le32(z, eocd + 12) as usize;
        let cd_offset = le32(z, eocd + 16) as usize;
        assert_eq!(
            cd_offset + cd_size,
            eocd,
            "central directory ends where EOCD starts"
        );
        let mut p = cd_offset;
        let mut out = Vec::new();
        for _ in 0..count {
            assert_eq!(
                le32(z, p),
                0x0201_4b50,
                "central directory header signature"
            );
            let method = le16(z, p + 10);
            let time = le16(z, p + 12);
            let date = le16(z, p + 14);
            let crc = le32(z, p + 16);
            let csize = le32(z, p + 20) as usize;
            let size = le32(z, p + 24) as usize;
            let name_len = usize::from(le16(z, p + 28));
            let extra_len = usize::from(le16(z, p + 30));
            let comment_len = usize::from(le16(z, p + 32));
            let local = le32(z, p + 42) as usize;
            let name = String::from_utf8(z[p + 46..p + 46 + name_len].to_vec()).expect("name");

            assert_eq!(le32(z, local), 0x0403_4b50, "local header signature");
            assert_eq!(le16(z, local + 8), method);
            assert_eq!(le32(z, local + 14), crc);
            assert_eq!(le32(z, local + 18) as usize, csize);
            assert_eq!(le32(z, local + 22) as usize, size);
            let local_name = usize::from(le16(z, local + 26));
            let local_extra = usize::from(le16(z, local + 28));
            assert_eq!(&z[local + 30..local + 30 + local_name], name.as_bytes());
            let start = local + 30 + local_name + local_extra;
            let raw = &z[start..start + csize];
            let data = match method {
                0 => raw.to_vec(),
                8 => {
                    let mut d = Vec::new();
                    flate2::read::DeflateDecoder::new(raw)
                        .read_to_end(&mut d)
                        .expect("inflates");
                    d
                }
                m => panic!("unexpected method {m}"),
            };
            assert_eq!(data.len(), size, "{name}: size");
            assert_eq!(crc32fast::hash(&data), crc, "{name}: CRC-32");
            out.push(Entry {
                name,
                method,
                time,
                date,
                data,
            });
            p += 46 + name_len + extra_len + comment_len;
        }
        assert_eq!(p, eocd);
        out
    }

    fn entry<'a>(entries: &'a [Entry], name: &str) -> &'a Entry {
        entries
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    }

    fn cda() -> Vec<u8> {
        let mut s = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ClinicalDocument xmlns=\"urn:hl7-org:v3\">\n",
        );
        for i in 0..200 {
            s.push_str(&format!(
                "  <observation n=\"{i}\"><value>Hémoglobine 13.{i} g/dL</value></observation>\n"
            ));
        }
        s.push_str("</ClinicalDocument>\n");
        s.into_bytes()
    }

    const TITLE: &str = "Résultats <&>\"'";
    const PATIENT: &str = "1234567890123^^^&1.2.250.1.213.1.4.8&ISO";
    const PDF: &[u8] = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n%%EOF\n";

    fn document<'a>(bytes: &'a [u8], mime: &'a str, unique_id: &'a str) -> Document<'a> {
        Document {
            bytes,
            mime,
            unique_id,
            title: TITLE,
            type_code: ("11502-2", "CR d'examens biologiques"),
            creation_time: "20240315101500",
            confidentiality: "N",
        }
    }

    fn submission<'a>(
        documents: Vec<Document<'a>>,
        patient_id: &'a str,
        recipients: &'a [String],
    ) -> Submission<'a> {
        Submission {
            documents,
            patient_id,
            unique_id: "1.2.250.1.999.1.1.7898.1.42",
            source_id: "1.2.250.1.999.1.1.7898",
            submission_time: "20240315103000",
            institution: ("CHU de Test", "750000001"),
            recipients,
            vendor: "labroute test",
        }
    }

    fn recipients() -> Vec<String> {
        vec!["dr.test@chu-test.mssante.fr".to_string()]
    }

    #[test]
    fn round_trip() {
        let cda = cda();
        let to = recipients();
        let s = submission(
            vec![
                document(&cda, "text/xml", "1.2.250.1.999.1.1.7898.2.1"),
                document(
                    PDF,
                    "application/pdf; name=cr.pdf",
                    "1.2.250.1.999.1.1.7898.2.2",
                ),
            ],
            PATIENT,
            &to,
        );
        let zip = package(&s);
        let entries = unzip(&zip);
        for name in [
            "INDEX.HTM",
            "README.TXT",
            "IHE_XDM/SUBSET01/METADATA.XML",
            "IHE_XDM/SUBSET01/DOC0001.XML",
            "IHE_XDM/SUBSET01/DOC0002.PDF",
        ] {
            entry(&entries, name);
        }
        let doc = entry(&entries, "IHE_XDM/SUBSET01/DOC0001.XML");
        assert_eq!(doc.data, cda, "the CDA byte for byte");
        assert_eq!(doc.method, 8, "a repetitive CDA is deflated");
        assert_eq!(entry(&entries, "IHE_XDM/SUBSET01/DOC0002.PDF").data, PDF);
        // 2024-03-15 10:30:00
        assert_eq!(doc.time, (10 << 11) | (30 << 5));
        assert_eq!(doc.date, (44 << 9) | (3 << 5) | 15);
        let index = String::from_utf8(entry(&entries, "INDEX.HTM").data.clone()).expect("utf8");
        assert!(index.contains("href=\"IHE_XDM/SUBSET01/DOC0001.XML\""));
        assert!(index.contains("R\u{e9}sultats &lt;&amp;&gt;&quot;&#39;"));
        assert!(!index.contains("<script"));
        let readme = String::from_utf8(entry(&entries, "README.TXT").data.clone()).expect("utf8");
        assert!(readme.contains("labroute test"));
    }

    #[test]
    fn metadata_content() {
        let cda = cda();
        let to = recipients();
        let s = submission(
            vec![document(&cda, "text/xml", "1.2.250.1.999.1.1.7898.2.1")],
            PATIENT,
            &to,
        );
        let entries = unzip(&package(&s));
        let xml = String::from_utf8(
            entry(&entries, "IHE_XDM/SUBSET01/METADATA.XML")
                .data
                .clone(),
        )
        .expect("utf8");
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
        // DocumentEntry.patientId, escaped.
        assert!(
            xml.contains("identificationScheme=\"urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427\"")
        );
        assert!(xml.contains("value=\"1234567890123^^^&amp;1.2.250.1.213.1.4.8&amp;ISO\""));
        assert!(
            xml.contains("identificationScheme=\"urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446\"")
        );
        // URI slot.
        assert!(xml.contains("<rim:Slot name=\"URI\">"));
        assert!(xml.contains("<rim:Value>DOC0001.XML</rim:Value>"));
        // SHA-1 of the document, lower-case hex.
        let sha1: [u8; 20] = {
            use sha1::Digest;
            sha1::Sha1::digest(&cda).into()
        };
        assert!(xml.contains(&format!("<rim:Value>{}</rim:Value>", hex(&sha1))));
        assert!(xml.contains(&format!("<rim:Value>{}</rim:Value>", cda.len())));
        // The title, escaped.
        assert!(xml.contains("value=\"R\u{e9}sultats &lt;&amp;&gt;&quot;&apos;\""));
        assert!(!xml.contains("<&>"));
        // Submission set.
        assert!(xml.contains("<rim:Value>||^^Internet^dr.test@chu-test.mssante.fr</rim:Value>"));
        assert!(
            xml.contains("classificationNode=\"urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd\"")
        );
        assert!(xml.contains("CHU de Test^^^^^&amp;1.2.250.1.71.4.2.2&amp;ISO^IDNST^^^1750000001"));
        assert!(xml.contains("nodeRepresentation=\"urn:ihe:lab:xd-lab:2008\""));
        assert!(xml.contains("<rim:Value>Original</rim:Value>"));
        assert!(!xml.contains("limitedMetadata"));
        assert!(!xml.contains(DE_LIMITED));
    }

    #[test]
    fn deterministic() {
        let cda = cda();
        let to = recipients();
        let s = submission(
            vec![document(&cda, "text/xml", "1.2.250.1.999.1.1.7898.2.1")],
            PATIENT,
            &to,
        );
        assert_eq!(package(&s), package(&s));
        let mut other = s.clone();
        other.unique_id = "1.2.250.1.999.1.1.7898.1.43";
        assert_ne!(package(&s), package(&other));
    }

    #[test]
    fn without_patient_the_metadata_are_limited() {
        let to: Vec<String> = Vec::new();
        let s = submission(vec![document(b"text", "text/plain", "")], "", &to);
        let entries = unzip(&package(&s));
        let xml = String::from_utf8(
            entry(&entries, "IHE_XDM/SUBSET01/METADATA.XML")
                .data
                .clone(),
        )
        .expect("utf8");
        assert!(xml.contains(DE_LIMITED));
        assert!(xml.contains(SS_LIMITED));
        assert!(!xml.contains(DE_PATIENT_ID));
        assert!(!xml.contains("intendedRecipient"));
        assert!(xml.contains("nodeRepresentation=\"urn:ihe:iti:xds:2017:mimeTypeSufficient\""));
        // An empty document uniqueId is replaced by a 2.25 OID.
        assert!(xml.contains("value=\"2.25."));
        entry(&entries, "IHE_XDM/SUBSET01/DOC0001.TXT");
    }

    #[test]
    fn dos_dates() {
        assert_eq!(
            dos_date_time("20240315103000"),
            ((10 << 11) | (30 << 5), (44 << 9) | (3 << 5) | 15)
        );
        assert_eq!(dos_date_time("20240315"), (0, (44 << 9) | (3 << 5) | 15));
        assert_eq!(
            dos_date_time("20240315103001+0100").0,
            (10 << 11) | (30 << 5)
        );
        for bad in ["", "2024", "19700101000000", "20241301", "2024-03-15", "x"] {
            assert_eq!(dos_date_time(bad), (0, (1 << 5) | 1), "{bad}");
        }
    }

    #[test]
    fn escaping() {
        assert_eq!(
            esc("a<b>&\"'\u{1}\n"),
            "a&lt;b&gt;&amp;&quot;&apos;\u{FFFD}&#10;"
        );
        assert_eq!(hl7("a^b|c&d~e\\f"), "a\\S\\b\\F\\c\\T\\d\\R\\e\\E\\f");
        let id = uuid_string(&uuid_bytes("seed", "kind", 0));
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
    }
}
