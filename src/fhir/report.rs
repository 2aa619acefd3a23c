//! ORU^R01 and OUL^R22 → a FHIR R4 message Bundle.
//!
//! One walk over the segments, keeping the v2 group context (the patient, the visit, the
//! order, the specimen, what an NTE annotates). Every OBX becomes exactly one Observation,
//! wherever it stands: under an OBR (a result), after an SPM (an observation on the
//! specimen, which v2.5 ORU^R01 places after the results and OUL^R22 before the OBR),
//! and the count is checked before the Bundle is returned.

use std::collections::HashMap;

use super::r4::Resource;
use super::r4::resources::{
    Bundle, BundleEntry, DiagnosticReport, DiagnosticReportEffective, Encounter, EncounterLocation,
    MessageHeader, MessageHeaderDestination, MessageHeaderEvent, MessageHeaderSource, Observation,
    ObservationEffective, ObservationReferenceRange, ObservationValue, Organization, Patient,
    PatientDeceased, Practitioner, ServiceRequest, Specimen, SpecimenCollection,
    SpecimenCollectionCollected,
};
use super::r4::types::{
    Annotation, AnnotationAuthor, CodeableConcept, Coding, Extension, ExtensionValue, Identifier,
    Markdown, Meta, Period, Quantity, Range, Ratio, Reference,
};
use super::v2::{self, Dtm, Person, code, text};
use super::{At, MapError, Zone};
use crate::hl7::message::{Message, Segment, Value};

/// The Bundle and what the caller checks it against.
#[derive(Debug)]
pub struct Mapped {
    pub bundle: Resource,
    /// Observations in the Bundle (always equal to the message's OBX count).
    pub observations: usize,
    pub reports: usize,
}

/// Extension on ServiceRequest: a result copy recipient (OBR-28).
pub const EXT_RESULT_COPIES_TO: &str = "urn:labroute:fhir:v2-result-copies-to";
/// Extension on ServiceRequest: an ordering provider in OBR-16 other than ORC-12.
pub const EXT_OBR_ORDERING_PROVIDER: &str = "urn:labroute:fhir:v2-obr-ordering-provider";
/// Extension on Patient: a note on the patient (NTE after PID).
pub const EXT_PATIENT_NOTE: &str = "urn:labroute:fhir:v2-patient-note";
/// Extension on MessageHeader: a note on the whole message (NTE before any PID).
pub const EXT_MESSAGE_NOTE: &str = "urn:labroute:fhir:v2-message-note";
/// Extension on DiagnosticReport: OBR-22 given as a date only (`issued` is an instant).
pub const EXT_OBR_22_DATE: &str = "urn:labroute:fhir:v2-obr-22-date";
const DATA_ABSENT: &str = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";
const BIRTH_PLACE: &str = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace";
const MOTHERS_MAIDEN_NAME: &str =
    "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName";
const NULL_FLAVOR: &str = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor";

/// Maps an ORU^R01 or OUL^R22 to a message Bundle.
pub fn map_result(msg: &Message<'_>, zone: Zone) -> Result<Mapped, MapError> {
    let msh = msg.msh();
    let kind = msh.field(9);
    let (k1, k2) = (kind.component(1).text(), kind.component(2).text());
    let oul = match (k1.as_ref(), k2.as_ref()) {
        ("ORU", "R01") => false,
        ("OUL", "R22") => true,
        _ => {
            return Err(At {
                segment: "MSH",
                occurrence: 1,
                field: 9,
            }
            .err("only ORU^R01 and OUL^R22 map to a result Bundle"));
        }
    };
    let seed = crate::model::sha256(msg.bytes());
    let mut b = Builder {
        zone,
        seed,
        oul,
        ..Default::default()
    };
    let mut occurrences: HashMap<[u8; 3], usize> = HashMap::new();
    let mut obx_count = 0usize;
    for seg in msg.segments() {
        let id: [u8; 3] = match seg.id().try_into() {
            Ok(id) => id,
            Err(_) => continue,
        };
        let n = occurrences.entry(id).or_insert(0);
        *n += 1;
        let occurrence = *n;
        let Ok(name) = std::str::from_utf8(&id) else {
            continue;
        };
        let cx = Cx {
            seg,
            name,
            occurrence,
        };
        match &id {
            b"PID" => b.pid(cx)?,
            b"PV1" => b.pv1(cx)?,
            b"ORC" => b.pending_orc = Some((seg, occurrence)),
            b"OBR" => b.obr(cx)?,
            b"OBX" => {
                obx_count += 1;
                b.obx(cx)?
            }
            b"SPM" => b.spm(cx)?,
            b"NTE" => b.nte(cx)?,
            _ => {}
        }
    }
    if b.observations.len() != obx_count {
        return Err(MapError {
            segment: "OBX".into(),
            occurrence: obx_count,
            field: None,
            component: None,
            problem: "internal: an OBX did not become an Observation".into(),
        });
    }
    b.bundle(msg)
}

#[derive(Clone, Copy)]
struct Cx<'m, 's> {
    seg: Segment<'m>,
    name: &'s str,
    occurrence: usize,
}

impl<'m> Cx<'m, '_> {
    fn at(&self, field: usize) -> At<'_> {
        At {
            segment: self.name,
            occurrence: self.occurrence,
            field,
        }
    }
    fn f(&self, n: usize) -> Value<'m> {
        self.seg.field(n).repetition(1)
    }
    fn reps(&self, n: usize) -> Vec<Value<'m>> {
        self.seg.field(n).repetitions().collect()
    }
    fn text(&self, n: usize) -> Option<String> {
        text(self.f(n).component(1))
    }
}

struct Entry<T> {
    url: String,
    res: T,
}

#[derive(Clone, Copy, Default)]
enum NoteTarget {
    /// Before any PID: a note on the message (OUL^R22's NTE after MSH).
    #[default]
    Message,
    Patient(usize),
    Request(usize),
    Observation(usize),
    Specimen(usize),
}

#[derive(Default)]
struct Builder<'m> {
    zone: Zone,
    seed: [u8; 32],
    oul: bool,
    patients: Vec<Entry<Patient>>,
    encounters: Vec<Entry<Encounter>>,
    practitioners: Vec<Entry<Practitioner>>,
    organizations: Vec<Entry<Organization>>,
    requests: Vec<Entry<ServiceRequest>>,
    specimens: Vec<Entry<Specimen>>,
    reports: Vec<Entry<DiagnosticReport>>,
    observations: Vec<Entry<Observation>>,
    people: HashMap<Person, String>,
    orgs: HashMap<(Option<String>, Option<String>), String>,
    patient: Option<String>,
    encounter: Option<String>,
    /// Index into `requests` and `reports` (one of each per OBR).
    order: Option<usize>,
    specimen: Option<usize>,
    specimen_observations: HashMap<usize, Vec<String>>,
    /// The ORC waiting for its OBR, with its occurrence (for errors).
    pending_orc: Option<(Segment<'m>, usize)>,
    note: NoteTarget,
    message_notes: Vec<Annotation>,
}

fn reference(url: &str) -> Reference {
    Reference {
        reference: Some(url.to_string().into()),
        ..Default::default()
    }
}

fn boxed_ref(url: &str) -> Box<Reference> {
    Box::new(reference(url))
}

fn absent_reference() -> Reference {
    Reference {
        extension: vec![Extension {
            url: DATA_ABSENT.into(),
            value: Some(ExtensionValue::Code(code("unknown"))),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn null_concept() -> CodeableConcept {
    v2::concept(NULL_FLAVOR, "UNK")
}

/// An application (HD) as a URI: `urn:oid:` / URI from HD.2, else a
/// `urn:labroute:application:` name. For identifier systems.
fn app_uri(hd: Value<'_>) -> String {
    let (system, _) = v2::hd_system(
        text(hd.component(1)),
        text(hd.component(2)),
        text(hd.component(3)),
    );
    system.unwrap_or_else(|| {
        format!(
            "urn:labroute:application:{}",
            crate::model::percent_encode(&app_name(hd))
        )
    })
}

/// An application (HD) as the URL MessageHeader endpoints require: an HL7 v2 application is
/// reached over MLLP, so `mllp:` and its name (HD.1, else HD.2).
fn app_url(hd: Value<'_>) -> String {
    format!("mllp:{}", crate::model::percent_encode(&app_name(hd)))
}

fn app_name(hd: Value<'_>) -> String {
    text(hd.component(1))
        .or_else(|| text(hd.component(2)))
        .unwrap_or_else(|| "unknown".into())
}

impl<'m> Builder<'m> {
    fn next_id(&self, kind: &str, n: usize) -> (String, String) {
        let id = v2::uuid(&self.seed, kind, n);
        (format!("urn:uuid:{id}"), id)
    }

    fn practitioner(&mut self, p: Person) -> Option<String> {
        if p.is_empty() {
            return None;
        }
        if let Some(url) = self.people.get(&p) {
            return Some(url.clone());
        }
        let (url, id) = self.next_id("Practitioner", self.practitioners.len());
        let res = Practitioner {
            id: Some(id.clone().into()),
            identifier: p.identifier().into_iter().collect(),
            name: p.name().into_iter().collect(),
            ..Default::default()
        };
        self.practitioners.push(Entry {
            url: url.clone(),
            res,
        });
        self.people.insert(p, url.clone());
        Some(url)
    }

    /// XON (name, …, assigning authority, …, organization identifier) → Organization.
    fn organization(&mut self, v: Value<'_>) -> Option<String> {
        let name = text(v.component(1));
        let ident = text(v.component(10)).or_else(|| text(v.component(3)));
        if name.is_none() && ident.is_none() {
            return None;
        }
        let key = (name.clone(), ident.clone());
        if let Some(url) = self.orgs.get(&key) {
            return Some(url.clone());
        }
        let auth = v.component(6);
        let (system, assigner) = v2::hd_system(
            text(auth.subcomponent(1)),
            text(auth.subcomponent(2)),
            text(auth.subcomponent(3)),
        );
        let (url, id) = self.next_id("Organization", self.organizations.len());
        let res = Organization {
            id: Some(id.clone().into()),
            identifier: ident
                .map(|i| Identifier {
                    system: system.map(Into::into),
                    value: Some(i.into()),
                    assigner: assigner.map(Box::new),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            name: name.map(Into::into),
            ..Default::default()
        };
        self.organizations.push(Entry {
            url: url.clone(),
            res,
        });
        self.orgs.insert(key, url.clone());
        Some(url)
    }

    fn pid(&mut self, s: Cx<'m, '_>) -> Result<(), MapError> {
        let zone = self.zone;
        let mut p = Patient::default();
        for field in [2, 3, 4] {
            for rep in s.reps(field) {
                if let Some(i) = v2::cx_identifier(rep, zone, s.at(field))? {
                    p.identifier.push(i);
                }
            }
        }
        p.name = s.reps(5).into_iter().filter_map(v2::xpn_name).collect();
        if let Some(family) = text(s.f(6).component(1).subcomponent(1)) {
            p.extension.push(Extension {
                url: MOTHERS_MAIDEN_NAME.into(),
                value: Some(ExtensionValue::String(family.into())),
                ..Default::default()
            });
        }
        if let Some(d) = v2::field_dtm(s.f(7), s.at(7))? {
            p.birth_date = Some(d.date().into());
        }
        p.gender = match s.text(8).as_deref() {
            None => None,
            Some("M") => Some(code("male")),
            Some("F") => Some(code("female")),
            Some("O") | Some("A") => Some(code("other")),
            Some("U") | Some("N") => Some(code("unknown")),
            Some(_) => return Err(s.at(8).err("administrative sex is not in table 0001")),
        };
        for rep in s.reps(11) {
            if let Some((addr, ty)) = v2::xad_address(rep) {
                if ty.as_deref() == Some("BDL") || ty.as_deref() == Some("N") {
                    p.extension.push(Extension {
                        url: BIRTH_PLACE.into(),
                        value: Some(ExtensionValue::Address(Box::new(addr))),
                        ..Default::default()
                    });
                } else {
                    p.address.push(addr);
                }
            }
        }
        for field in [13, 14] {
            for rep in s.reps(field) {
                if let Some(mut c) = v2::xtn_contact(rep) {
                    if field == 14 && c.r#use.is_none() {
                        c.r#use = Some(code("work"));
                    }
                    p.telecom.push(c);
                }
            }
        }
        if let Some(d) = v2::field_dtm(s.f(29), s.at(29))? {
            p.deceased = Some(PatientDeceased::DateTime(d.date_time(zone).into()));
        } else {
            match s.text(30).as_deref() {
                Some("Y") => p.deceased = Some(PatientDeceased::Boolean(true.into())),
                Some("N") => p.deceased = Some(PatientDeceased::Boolean(false.into())),
                None => {}
                Some(_) => return Err(s.at(30).err("death indicator is not Y or N")),
            }
        }
        let reliability: Vec<Coding> = s
            .reps(32)
            .into_iter()
            .filter_map(|r| text(r.component(1)))
            .map(|c| Coding {
                system: Some(v2::table_uri("0445").into()),
                code: Some(code(c)),
                ..Default::default()
            })
            .collect();
        if !reliability.is_empty() {
            p.meta = Some(Box::new(Meta {
                tag: reliability,
                ..Default::default()
            }));
        }
        let (url, id) = self.next_id("Patient", self.patients.len());
        p.id = Some(id.clone().into());
        self.patients.push(Entry {
            url: url.clone(),
            res: p,
        });
        self.patient = Some(url);
        self.encounter = None;
        self.order = None;
        self.specimen = None;
        self.pending_orc = None;
        self.note = NoteTarget::Patient(self.patients.len() - 1);
        Ok(())
    }

    fn pv1(&mut self, s: Cx<'m, '_>) -> Result<(), MapError> {
        let zone = self.zone;
        let class = match s.text(2) {
            Some(c) => Coding {
                system: Some(v2::table_uri("0004").into()),
                code: Some(code(c)),
                ..Default::default()
            },
            None => Coding {
                system: Some(NULL_FLAVOR.into()),
                code: Some(code("UNK")),
                ..Default::default()
            },
        };
        let start = v2::field_dtm(s.f(44), s.at(44))?.map(|d| d.date_time(zone));
        let end = v2::field_dtm(s.f(45), s.at(45))?.map(|d| d.date_time(zone));
        let status = if end.is_some() {
            "finished"
        } else if start.is_some() {
            "in-progress"
        } else {
            "unknown"
        };
        let mut e = Encounter {
            status: code(status),
            class: Box::new(class),
            subject: self.patient.as_deref().map(boxed_ref),
            period: v2::period(start, end),
            ..Default::default()
        };
        if let Some(i) = v2::cx_identifier(s.f(19), zone, s.at(19))? {
            e.identifier.push(i);
        }
        let loc = s.f(3);
        let parts: Vec<String> = (1..=4).filter_map(|n| text(loc.component(n))).collect();
        if !parts.is_empty() {
            e.location.push(EncounterLocation {
                location: Box::new(Reference {
                    display: Some(parts.join(" / ").into()),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let (url, id) = self.next_id("Encounter", self.encounters.len());
        e.id = Some(id.clone().into());
        self.encounters.push(Entry {
            url: url.clone(),
            res: e,
        });
        self.encounter = Some(url);
        Ok(())
    }

    fn obr(&mut self, s: Cx<'m, '_>) -> Result<(), MapError> {
        let zone = self.zone;
        let pending = self.pending_orc.take();
        let orc = pending.map(|(o, _)| o);
        let orc_occurrence = pending.map(|(_, n)| n).unwrap_or(0);
        let orc_f = |n: usize| orc.map(|o| o.field(n).repetition(1));
        let orc_at = |field| At {
            segment: "ORC",
            occurrence: orc_occurrence,
            field,
        };
        // ORU^R01's PATIENT group is optional (specimens from no patient); FHIR's
        // ServiceRequest.subject is not, so it says why it is absent.
        let subject = match &self.patient {
            Some(p) => reference(p),
            None => absent_reference(),
        };
        let n = self.requests.len();
        let (sr_url, sr_id) = self.next_id("ServiceRequest", n);
        let (dr_url, dr_id) = self.next_id("DiagnosticReport", n);

        let placer_orc = orc_f(2).and_then(|v| v2::ei_identifier(v, Some("PLAC")));
        let placer_obr = v2::ei_identifier(s.f(2), Some("PLAC"));
        let filler_orc = orc_f(3).and_then(|v| v2::ei_identifier(v, Some("FILL")));
        let filler_obr = v2::ei_identifier(s.f(3), Some("FILL"));
        let mut sr_ids: Vec<Identifier> = Vec::new();
        for i in [
            placer_orc,
            placer_obr,
            filler_orc.clone(),
            filler_obr.clone(),
        ]
        .into_iter()
        .flatten()
        {
            if !sr_ids.contains(&i) {
                sr_ids.push(i);
            }
        }
        let code_cc = v2::codeable_concept(s.f(4));
        let status = match orc_f(5).and_then(|v| text(v.component(1))).as_deref() {
            Some("A") | Some("IP") | Some("SC") => "active",
            Some("CA") | Some("DC") | Some("RP") => "revoked",
            Some("CM") => "completed",
            Some("ER") => "entered-in-error",
            Some("HD") => "on-hold",
            Some(_) => return Err(orc_at(5).err("order status is not in table 0038")),
            None => match orc_f(1).and_then(|v| text(v.component(1))).as_deref() {
                Some("NW") | Some("RE") | Some("SC") | Some("XO") => "active",
                Some("CA") | Some("OC") | Some("DC") | Some("OD") => "revoked",
                Some("HD") | Some("OH") => "on-hold",
                _ => "unknown",
            },
        };
        let mut sr = ServiceRequest {
            id: Some(sr_id.clone().into()),
            identifier: sr_ids,
            requisition: orc_f(4)
                .and_then(|v| v2::ei_identifier(v, None))
                .map(Box::new),
            status: code(status),
            intent: code("order"),
            code: code_cc.clone().map(Box::new),
            subject: Box::new(subject),
            encounter: self.encounter.as_deref().map(boxed_ref),
            ..Default::default()
        };
        if let Some(v) = orc_f(9) {
            if let Some(d) = v2::field_dtm(v, orc_at(9))? {
                sr.authored_on = Some(d.date_time(zone).into());
            }
        }
        let orc_requester = orc.map(|o| Person::xcn(o.field(12).repetition(1)));
        let obr_requester = Person::xcn(s.f(16));
        let requester = match orc_requester.filter(|p| !p.is_empty()) {
            Some(p) => {
                if !obr_requester.is_empty() && obr_requester != p {
                    if let Some(url) = self.practitioner(obr_requester) {
                        sr.extension.push(Extension {
                            url: EXT_OBR_ORDERING_PROVIDER.into(),
                            value: Some(ExtensionValue::Reference(boxed_ref(&url))),
                            ..Default::default()
                        });
                    }
                }
                self.practitioner(p)
            }
            None => self.practitioner(obr_requester),
        };
        sr.requester = requester.as_deref().map(boxed_ref);
        for rep in s.reps(28) {
            if let Some(url) = self.practitioner(Person::xcn(rep)) {
                sr.extension.push(Extension {
                    url: EXT_RESULT_COPIES_TO.into(),
                    value: Some(ExtensionValue::Reference(boxed_ref(&url))),
                    ..Default::default()
                });
            }
        }

        let status_dr = match s.text(25).as_deref() {
            None | Some("Y") | Some("Z") => "unknown",
            Some("O") | Some("I") | Some("S") => "registered",
            Some("A") | Some("R") | Some("M") => "partial",
            Some("P") => "preliminary",
            Some("C") => "corrected",
            Some("F") => "final",
            Some("X") => "cancelled",
            Some("D") => "entered-in-error",
            Some(_) => return Err(s.at(25).err("result status is not in table 0123")),
        };
        let start = v2::field_dtm(s.f(7), s.at(7))?;
        let end = v2::field_dtm(s.f(8), s.at(8))?;
        let effective = match (start, end) {
            (Some(a), None) => Some(DiagnosticReportEffective::DateTime(
                a.date_time(zone).into(),
            )),
            (a, Some(b)) => Some(DiagnosticReportEffective::Period(Box::new(Period {
                start: a.map(|a| a.date_time(zone).into()),
                end: Some(b.date_time(zone).into()),
                ..Default::default()
            }))),
            (None, None) => None,
        };
        // `issued` is an instant; a date alone is kept whole in an extension instead.
        let mut dr_extension = Vec::new();
        let issued = match v2::field_dtm(s.f(22), s.at(22))? {
            Some(d) => match d.instant(zone) {
                Some(i) => Some(i.into()),
                None => {
                    dr_extension.push(Extension {
                        url: EXT_OBR_22_DATE.into(),
                        value: Some(ExtensionValue::DateTime(d.date().into())),
                        ..Default::default()
                    });
                    None
                }
            },
            None => None,
        };
        let mut interpreters = Vec::new();
        for rep in s.reps(32) {
            if let Some(url) = self.practitioner(Person::cnn(rep.component(1))) {
                interpreters.push(reference(&url));
            }
        }
        let dr = DiagnosticReport {
            id: Some(dr_id.clone().into()),
            extension: dr_extension,
            identifier: filler_obr.or(filler_orc).into_iter().collect(),
            based_on: vec![reference(&sr_url)],
            status: code(status_dr),
            category: v2::table_concept("0074", s.f(24)).into_iter().collect(),
            code: Box::new(code_cc.unwrap_or_else(null_concept)),
            subject: self.patient.as_deref().map(boxed_ref),
            encounter: self.encounter.as_deref().map(boxed_ref),
            effective,
            issued,
            results_interpreter: interpreters,
            ..Default::default()
        };
        self.requests.push(Entry {
            url: sr_url,
            res: sr,
        });
        self.reports.push(Entry {
            url: dr_url,
            res: dr,
        });
        self.order = Some(n);
        if self.oul {
            // OUL^R22: the OBR belongs to the SPM before it, with that specimen's OBX.
            if let Some(sp) = self.specimen {
                self.link_specimen(n, sp);
                if let Some(spec_obs) = self.specimen_observations.get(&sp) {
                    self.reports[n]
                        .res
                        .result
                        .extend(spec_obs.iter().map(|u| reference(u)));
                }
            }
        } else {
            self.specimen = None;
        }
        self.note = NoteTarget::Request(n);
        Ok(())
    }

    fn link_specimen(&mut self, order: usize, sp: usize) {
        let url = self.specimens[sp].url.clone();
        self.reports[order].res.specimen.push(reference(&url));
        self.requests[order].res.specimen.push(reference(&url));
        let sr_url = self.requests[order].url.clone();
        let req = &mut self.specimens[sp].res.request;
        if !req
            .iter()
            .any(|r| r.reference.as_ref().and_then(|x| x.value.as_deref()) == Some(&sr_url))
        {
            req.push(reference(&sr_url));
        }
    }

    fn spm(&mut self, s: Cx<'m, '_>) -> Result<(), MapError> {
        let zone = self.zone;
        let mut sp = Specimen {
            subject: self.patient.as_deref().map(boxed_ref),
            r#type: v2::codeable_concept(s.f(4)).map(Box::new),
            ..Default::default()
        };
        let eip = s.f(2);
        for (n, ty) in [(1, "PLAC"), (2, "FILL")] {
            let ei = eip.component(n);
            if let Some(value) = text(ei.subcomponent(1)) {
                let (system, assigner) = v2::hd_system(
                    text(ei.subcomponent(2)),
                    text(ei.subcomponent(3)),
                    text(ei.subcomponent(4)),
                );
                sp.identifier.push(Identifier {
                    r#type: Some(Box::new(v2::concept(v2::table_uri("0203"), ty))),
                    system: system.map(Into::into),
                    value: Some(value.into()),
                    assigner: assigner.map(Box::new),
                    ..Default::default()
                });
            }
        }
        let range = s.f(17);
        let start = v2::date_time_opt(range.component(1), zone, s.at(17), 1)?;
        let end = v2::date_time_opt(range.component(2), zone, s.at(17), 2)?;
        let collected = match (start, end) {
            (Some(a), None) => Some(SpecimenCollectionCollected::DateTime(a.into())),
            (a, Some(b)) => Some(SpecimenCollectionCollected::Period(Box::new(Period {
                start: a.map(Into::into),
                end: Some(b.into()),
                ..Default::default()
            }))),
            (None, None) => None,
        };
        let quantity = match text(s.f(12).component(1)) {
            Some(q) => {
                let value = v2::decimal(&q).ok_or_else(|| {
                    s.at(12)
                        .err_component(1, "collection amount is not a number")
                })?;
                let units = text(s.f(12).component(2).subcomponent(2))
                    .or_else(|| text(s.f(12).component(2).subcomponent(1)));
                Some(Box::new(Quantity {
                    value: Some(value.into()),
                    unit: units.map(Into::into),
                    ..Default::default()
                }))
            }
            None => None,
        };
        let collection = SpecimenCollection {
            collected,
            quantity,
            method: v2::codeable_concept(s.f(7)).map(Box::new),
            body_site: v2::codeable_concept(s.f(8)).map(Box::new),
            ..Default::default()
        };
        if collection.collected.is_some()
            || collection.quantity.is_some()
            || collection.method.is_some()
            || collection.body_site.is_some()
        {
            sp.collection = Some(collection);
        }
        if let Some(d) = v2::field_dtm(s.f(18), s.at(18))? {
            sp.received_time = Some(d.date_time(zone).into());
        }
        sp.condition = s
            .reps(24)
            .into_iter()
            .filter_map(v2::codeable_concept)
            .collect();
        let rejected: Vec<CodeableConcept> = s
            .reps(21)
            .into_iter()
            .filter_map(v2::codeable_concept)
            .collect();
        sp.status = if !rejected.is_empty() {
            sp.condition.extend(rejected);
            Some(code("unsatisfactory"))
        } else {
            match s.text(20).as_deref() {
                Some("Y") => Some(code("available")),
                Some("N") => Some(code("unavailable")),
                _ => None,
            }
        };
        if let Some(t) = text(s.f(14)) {
            sp.note.push(annotation(t));
        }
        let n = self.specimens.len();
        let (url, id) = self.next_id("Specimen", n);
        sp.id = Some(id.clone().into());
        self.specimens.push(Entry { url, res: sp });
        self.specimen = Some(n);
        if self.oul {
            // A new specimen group: the OBRs that follow belong to it.
            self.order = None;
        } else if let Some(order) = self.order {
            self.link_specimen(order, n);
        }
        self.note = NoteTarget::Specimen(n);
        Ok(())
    }

    fn obx(&mut self, s: Cx<'m, '_>) -> Result<(), MapError> {
        let zone = self.zone;
        // An empty OBX-3 says nothing: FHIR's mandatory code says "unknown".
        let code_cc = v2::codeable_concept(s.f(3)).unwrap_or_else(null_concept);
        let status = match s.text(11).as_deref() {
            None => "unknown",
            Some("C") => "corrected",
            Some("D") | Some("W") => "entered-in-error",
            Some("F") | Some("U") | Some("N") => "final",
            Some("I") | Some("O") => "registered",
            Some("P") | Some("R") | Some("S") => "preliminary",
            Some("A") => "amended",
            Some("X") => "cancelled",
            Some(_) => return Err(s.at(11).err("result status is not in table 0085")),
        };
        let mut o = Observation {
            status: code(status),
            code: Box::new(code_cc),
            subject: self.patient.as_deref().map(boxed_ref),
            encounter: self.encounter.as_deref().map(boxed_ref),
            ..Default::default()
        };
        let (value, value_ext) = observation_value(&s, zone)?;
        o.value = value;
        o.extension.extend(value_ext);
        if o.value.is_none() && o.extension.is_empty() && s.text(11).as_deref() == Some("N") {
            o.data_absent_reason = Some(Box::new(v2::concept(
                "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                "not-asked",
            )));
        }
        if let Some(range) = text(s.f(7)) {
            o.reference_range.push(reference_range(range, s.f(6)));
        }
        for rep in s.reps(8) {
            let cc = if text(rep.component(3)).is_some() {
                v2::codeable_concept(rep)
            } else {
                v2::table_concept("0078", rep)
            };
            o.interpretation.extend(cc);
        }
        if let Some(d) = v2::field_dtm(s.f(14), s.at(14))? {
            o.effective = Some(ObservationEffective::DateTime(d.date_time(zone).into()));
        }
        o.method = v2::codeable_concept(s.f(17)).map(Box::new);
        for rep in s.reps(16) {
            if let Some(url) = self.practitioner(Person::xcn(rep)) {
                o.performer.push(reference(&url));
            }
        }
        if let Some(url) = self.organization(s.f(23)) {
            o.performer.push(reference(&url));
        }
        if let Some(i) = v2::ei_identifier(s.f(21), None) {
            o.identifier.push(i);
        }
        let n = self.observations.len();
        let (url, id) = self.next_id("Observation", n);
        o.id = Some(id.clone().into());
        if let Some(sp) = self.specimen {
            o.specimen = Some(boxed_ref(&self.specimens[sp].url));
        }
        match self.order {
            Some(order) => {
                o.based_on.push(reference(&self.requests[order].url));
                self.reports[order].res.result.push(reference(&url));
            }
            None => {
                if let Some(sp) = self.specimen {
                    self.specimen_observations
                        .entry(sp)
                        .or_default()
                        .push(url.clone());
                }
            }
        }
        self.observations.push(Entry { url, res: o });
        self.note = NoteTarget::Observation(n);
        Ok(())
    }

    fn nte(&mut self, s: Cx<'m, '_>) -> Result<(), MapError> {
        let lines: Vec<String> = s
            .reps(3)
            .into_iter()
            .map(|r| r.text().into_owned())
            .collect();
        let body = lines.join("\n");
        if body.trim().is_empty() {
            return Ok(());
        }
        let mut a = annotation(body);
        if let Some(url) = self.practitioner(Person::xcn(s.f(5))) {
            a.author = Some(AnnotationAuthor::Reference(boxed_ref(&url)));
        }
        match self.note {
            NoteTarget::Message => self.message_notes.push(a),
            NoteTarget::Patient(i) => self.patients[i].res.extension.push(Extension {
                url: EXT_PATIENT_NOTE.into(),
                value: Some(ExtensionValue::Annotation(Box::new(a))),
                ..Default::default()
            }),
            NoteTarget::Request(i) => self.requests[i].res.note.push(a),
            NoteTarget::Observation(i) => self.observations[i].res.note.push(a),
            NoteTarget::Specimen(i) => self.specimens[i].res.note.push(a),
        }
        Ok(())
    }

    fn bundle(mut self, msg: &Message<'_>) -> Result<Mapped, MapError> {
        let zone = self.zone;
        let msh = msg.msh();
        let at = |field| At {
            segment: "MSH",
            occurrence: 1,
            field,
        };
        let event = text(msh.field(9).component(2)).unwrap_or_default();
        let source_endpoint = app_url(msh.field(3).repetition(1));
        let source_uri = app_uri(msh.field(3).repetition(1));
        let mut header = MessageHeader {
            event: MessageHeaderEvent::Coding(Box::new(Coding {
                system: Some(v2::table_uri("0003").into()),
                code: Some(code(event)),
                ..Default::default()
            })),
            source: MessageHeaderSource {
                name: text(msh.field(3).component(1)).map(Into::into),
                endpoint: source_endpoint.into(),
                ..Default::default()
            },
            focus: self.reports.iter().map(|r| reference(&r.url)).collect(),
            extension: std::mem::take(&mut self.message_notes)
                .into_iter()
                .map(|a| Extension {
                    url: EXT_MESSAGE_NOTE.into(),
                    value: Some(ExtensionValue::Annotation(Box::new(a))),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        if !msh.field(5).is_empty() {
            header.destination.push(MessageHeaderDestination {
                name: text(msh.field(5).component(1)).map(Into::into),
                endpoint: app_url(msh.field(5).repetition(1)).into(),
                ..Default::default()
            });
        }
        if let Some(sender) = text(msh.field(4).component(1)) {
            header.sender = Some(Box::new(Reference {
                display: Some(sender.into()),
                ..Default::default()
            }));
        }
        let (header_url, header_id) = self.next_id("MessageHeader", 0);
        header.id = Some(header_id.into());
        let timestamp = match v2::field_dtm(msh.field(7).repetition(1), at(7))? {
            Some(d) => d.instant(zone).map(Into::into),
            None => None,
        };
        let (_, bundle_id) = self.next_id("Bundle", 0);
        let mut entries = vec![BundleEntry {
            full_url: Some(header_url.into()),
            resource: Some(Resource::MessageHeader(Box::new(header))),
            ..Default::default()
        }];
        fn push<T>(
            entries: &mut Vec<BundleEntry>,
            list: Vec<Entry<T>>,
            wrap: fn(Box<T>) -> Resource,
        ) {
            for e in list {
                entries.push(BundleEntry {
                    full_url: Some(e.url.into()),
                    resource: Some(wrap(Box::new(e.res))),
                    ..Default::default()
                });
            }
        }
        let observations = self.observations.len();
        let reports = self.reports.len();
        push(&mut entries, self.patients, Resource::Patient);
        push(&mut entries, self.encounters, Resource::Encounter);
        push(&mut entries, self.practitioners, Resource::Practitioner);
        push(&mut entries, self.organizations, Resource::Organization);
        push(&mut entries, self.requests, Resource::ServiceRequest);
        push(&mut entries, self.specimens, Resource::Specimen);
        push(&mut entries, self.reports, Resource::DiagnosticReport);
        push(&mut entries, self.observations, Resource::Observation);
        let bundle = Bundle {
            id: Some(bundle_id.into()),
            identifier: text(msh.field(10).component(1)).map(|c| {
                Box::new(Identifier {
                    system: Some(source_uri.into()),
                    value: Some(c.into()),
                    ..Default::default()
                })
            }),
            r#type: code("message"),
            timestamp,
            entry: entries,
            ..Default::default()
        };
        Ok(Mapped {
            bundle: Resource::Bundle(Box::new(bundle)),
            observations,
            reports,
        })
    }
}

fn annotation(text: String) -> Annotation {
    Annotation {
        text: Markdown::from(text),
        ..Default::default()
    }
}

/// OBX-7 as FHIR: the text always; low/high too when it reads `a-b`, `<b`, `>a`.
fn reference_range(range: String, units: Value<'_>) -> ObservationReferenceRange {
    let q = |v: &str| v2::decimal(v).map(|d| Box::new(v2::quantity(d, None, units)));
    let t = range.trim();
    let (low, high) = if let Some(rest) = t.strip_prefix('<').map(|r| r.trim_start_matches('=')) {
        (None, q(rest))
    } else if let Some(rest) = t.strip_prefix('>').map(|r| r.trim_start_matches('=')) {
        (q(rest), None)
    } else {
        // `a-b`, where a may be negative: split at a '-' that follows a digit.
        let split = t
            .char_indices()
            .skip(1)
            .find(|(i, c)| *c == '-' && t[..*i].trim_end().ends_with(|p: char| p.is_ascii_digit()))
            .map(|(i, _)| i);
        match split {
            Some(i) => match (q(&t[..i]), q(&t[i + 1..])) {
                (Some(l), Some(h)) => (Some(l), Some(h)),
                _ => (None, None),
            },
            None => (None, None),
        }
    };
    ObservationReferenceRange {
        low,
        high,
        text: Some(range.into()),
        ..Default::default()
    }
}

/// OBX-2 / OBX-5 → value[x] (or the attachment extension for ED).
fn observation_value(
    s: &Cx<'_, '_>,
    zone: Zone,
) -> Result<(Option<ObservationValue>, Option<Extension>), MapError> {
    let reps: Vec<Value<'_>> = s.reps(5).into_iter().filter(|r| !r.is_empty()).collect();
    if reps.is_empty() {
        return Ok((None, None));
    }
    let Some(vt) = s.text(2) else {
        return Err(s.at(2).err("a value with no value type"));
    };
    let at = s.at(5);
    let single = || -> Result<Value<'_>, MapError> {
        match reps.as_slice() {
            [one] => Ok(*one),
            _ => Err(at.err("this value type does not repeat in one Observation")),
        }
    };
    let value = match vt.as_str() {
        "ST" | "TX" | "FT" => {
            let joined: Vec<String> = reps.iter().map(|r| r.text().into_owned()).collect();
            ObservationValue::String(joined.join("\n").into())
        }
        "NM" => {
            let v = single()?;
            let d = v2::decimal(&v.text()).ok_or_else(|| at.err("not a number (value type NM)"))?;
            ObservationValue::Quantity(Box::new(v2::quantity(d, None, s.f(6))))
        }
        "SN" => structured_numeric(single()?, s),
        "VR" => {
            // The IG's reading of a value range: its two ends joined by a hyphen.
            let v = single()?;
            let ends: Vec<String> = (1..=2).filter_map(|n| text(v.component(n))).collect();
            ObservationValue::String(ends.join("-").into())
        }
        "CWE" | "CE" | "CNE" | "CF" => {
            let cc = v2::codeable_concept(single()?).ok_or_else(|| at.err("a coded value with no code or text"))?;
            ObservationValue::CodeableConcept(Box::new(cc))
        }
        "ID" | "IS" => {
            let v = single()?;
            let c = text(v).ok_or_else(|| at.err("an empty code"))?;
            ObservationValue::CodeableConcept(Box::new(CodeableConcept {
                coding: vec![Coding {
                    code: Some(code(c)),
                    ..Default::default()
                }],
                ..Default::default()
            }))
        }
        "DT" | "DTM" | "TS" => {
            let v = single()?;
            let d = Dtm::parse(&text(v.component(1)).unwrap_or_default())
                .ok_or_else(|| at.err("not a valid date/time"))?;
            ObservationValue::DateTime(d.date_time(zone).into())
        }
        "TM" => {
            let v = single()?;
            let t = text(v.component(1)).unwrap_or_default();
            let t = t.split(['+', '-']).next().unwrap_or("");
            let (hms, frac) = match t.split_once('.') {
                Some((a, b)) => (a, Some(b)),
                None => (t, None),
            };
            let ok = [2, 4, 6].contains(&hms.len()) && hms.bytes().all(|b| b.is_ascii_digit());
            if !ok || frac.is_some_and(|f| f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit())) {
                return Err(at.err("not a valid time (HH[MM[SS[.S]]])"));
            }
            let p = |i: usize| hms.get(i..i + 2).unwrap_or("00");
            let (h, m, sec) = (p(0), p(2), p(4));
            if h > "23" || m > "59" || sec > "59" {
                return Err(at.err("not a valid time (HH[MM[SS[.S]]])"));
            }
            let mut out = format!("{h}:{m}:{sec}");
            if let Some(f) = frac {
                out.push('.');
                out.push_str(f);
            }
            ObservationValue::Time(out.into())
        }
        "NR" => {
            let v = single()?;
            let low = text(v.component(1));
            let high = text(v.component(2));
            let num = |x: Option<String>| -> Result<Option<Box<Quantity>>, MapError> {
                match x {
                    Some(x) => v2::decimal(&x)
                        .map(|d| Some(Box::new(v2::quantity(d, None, s.f(6)))))
                        .ok_or_else(|| at.err("a range bound is not a number (value type NR)")),
                    None => Ok(None),
                }
            };
            ObservationValue::Range(Box::new(Range {
                low: num(low)?,
                high: num(high)?,
                ..Default::default()
            }))
        }
        "DR" => {
            let v = single()?;
            let start = v2::date_time_opt(v.component(1), zone, at, 1)?;
            let end = v2::date_time_opt(v.component(2), zone, at, 2)?;
            ObservationValue::Period(Box::new(Period {
                start: start.map(Into::into),
                end: end.map(Into::into),
                ..Default::default()
            }))
        }
        "ED" => {
            let att = v2::ed_attachment(single()?, at)?;
            return Ok((
                None,
                Some(Extension {
                    url: v2::EXT_VALUE_ATTACHMENT.into(),
                    value: Some(ExtensionValue::Attachment(Box::new(att))),
                    ..Default::default()
                }),
            ));
        }
        _ => return Err(s.at(2).err("value type not mapped to FHIR (NM, SN, CWE/CE/CNE/CF, ST/TX/FT, DT/DTM/TS, TM, ID/IS, NR, DR, ED are)")),
    };
    Ok((Some(value), None))
}

/// SN: comparator, number, separator/suffix, number. The forms FHIR has a type for become
/// Quantity (with comparator), Range or Ratio; any other form is kept as the text it reads
/// as (components in order, as the IG does), never dropped.
fn structured_numeric(v: Value<'_>, s: &Cx<'_, '_>) -> ObservationValue {
    let c = |n| text(v.component(n));
    let (comparator, sep) = (c(1), c(3));
    let (n1, n2) = (
        c(2).and_then(|x| v2::decimal(&x)),
        c(4).and_then(|x| v2::decimal(&x)),
    );
    let numbers_ok = c(2).is_some() == n1.is_some() && c(4).is_some() == n2.is_some();
    let units = s.f(6);
    let q = |d: String| Box::new(v2::quantity(d, None, units));
    let structured = match (comparator.as_deref(), n1, sep.as_deref(), n2) {
        _ if !numbers_ok => None,
        (None | Some("="), Some(n1), None, None) => Some(ObservationValue::Quantity(Box::new(
            v2::quantity(n1, None, units),
        ))),
        (Some(x @ ("<" | "<=" | ">" | ">=")), Some(n1), None, None) => Some(
            ObservationValue::Quantity(Box::new(v2::quantity(n1, Some(x), units))),
        ),
        (None, Some(n1), Some("-"), Some(n2)) => Some(ObservationValue::Range(Box::new(Range {
            low: Some(q(n1)),
            high: Some(q(n2)),
            ..Default::default()
        }))),
        (None, Some(n1), Some(":" | "/"), Some(n2)) => {
            Some(ObservationValue::Ratio(Box::new(Ratio {
                numerator: Some(Box::new(Quantity {
                    value: Some(n1.into()),
                    ..Default::default()
                })),
                denominator: Some(Box::new(Quantity {
                    value: Some(n2.into()),
                    ..Default::default()
                })),
                ..Default::default()
            })))
        }
        _ => None,
    };
    structured.unwrap_or_else(|| {
        let parts: Vec<String> = (1..=4).filter_map(c).collect();
        ObservationValue::String(parts.concat().into())
    })
}
