//! FHIR R4 transaction Bundle → HL7 v2, so that a FHIR order or result takes the same
//! pipeline as its HL7 twin (tenant resolution, authorisation, durable commit, routing,
//! delivery to v2 record systems).
//!
//! - an order (Patient + ServiceRequest, optional Specimen, Encounter) → OML^O33;
//! - a result (Patient + DiagnosticReport + its Observations) → ORU^R01, one OBX per
//!   Observation.
//!
//! What cannot be carried is an [`Issue`] naming the element by FHIRPath
//! (`Bundle.entry[3].resource.valueSampledData`), never its value; the HTTP layer answers it
//! as an OperationOutcome.

use std::borrow::Cow;

use super::r4::Resource;
use super::r4::resources::{
    DiagnosticReport, DiagnosticReportEffective, Encounter, Observation, ObservationEffective,
    ObservationValue, OperationOutcome, OperationOutcomeIssue, Patient, PatientDeceased,
    ServiceRequest, Specimen, SpecimenCollectionCollected,
};
use super::r4::types::{CodeableConcept, Identifier, Quantity, Reference};
use crate::hl7::message::Delimiters;
use crate::hl7::text::escape;

/// One problem with a posted resource: an OperationOutcome issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// FHIR issue type (`invalid`, `required`, `value`, `structure`, `not-supported`).
    pub code: &'static str,
    /// FHIRPath of the element.
    pub expression: String,
    pub diagnostics: Cow<'static, str>,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.expression, self.diagnostics)
    }
}

fn issue(
    code: &'static str,
    expression: impl Into<String>,
    diagnostics: impl Into<Cow<'static, str>>,
) -> Issue {
    Issue {
        code,
        expression: expression.into(),
        diagnostics: diagnostics.into(),
    }
}

/// What a posted Bundle carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Order,
    Result,
}

/// The v2 message made from a Bundle.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub kind: Kind,
    pub v2: Vec<u8>,
    pub control_id: String,
    /// Tells a retransmission of this Bundle from another one under the same identifier:
    /// the SHA-256 of the twin without its receipt time (MSH-7 is `Bundle.timestamp` when
    /// there is one, else the time of receipt).
    pub fingerprint: [u8; 32],
}

/// An OperationOutcome for these issues (severity error), as JSON.
pub fn outcome_json(issues: &[Issue]) -> String {
    let oo = OperationOutcome {
        issue: issues
            .iter()
            .map(|i| OperationOutcomeIssue {
                severity: "error".into(),
                code: i.code.into(),
                diagnostics: Some(i.diagnostics.to_string().into()),
                expression: vec![i.expression.clone().into()],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    outcome_resource_json(oo)
}

/// An OperationOutcome with one issue that names no element (`severity`: `information`,
/// `warning`, `error`; `code`: a FHIR issue type), as JSON.
pub fn outcome_one(severity: &str, code: &str, diagnostics: &str) -> String {
    outcome_resource_json(OperationOutcome {
        issue: vec![OperationOutcomeIssue {
            severity: severity.into(),
            code: code.into(),
            diagnostics: Some(diagnostics.into()),
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn outcome_resource_json(oo: OperationOutcome) -> String {
    super::json::to_json(&Resource::OperationOutcome(Box::new(oo)))
        .unwrap_or_else(|_| r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception"}]}"#.into())
}

macro_rules! pv {
    ($e:expr) => {
        $e.as_ref().and_then(|p| p.value.as_deref())
    };
}

const D: Delimiters = Delimiters::standard();

fn esc(s: &str) -> String {
    escape(s, &D)
}

/// Parts (already escaped) joined by `sep`, trailing empties dropped.
fn join_trimmed(parts: &[String], sep: &str) -> String {
    let n = parts
        .iter()
        .rposition(|p| !p.is_empty())
        .map_or(0, |i| i + 1);
    parts[..n].join(sep)
}

/// Components joined by `^`.
fn comps(parts: &[String]) -> String {
    join_trimmed(parts, "^")
}

struct Seg(Vec<String>);

impl Seg {
    fn new(id: &str) -> Seg {
        Seg(vec![id.to_string()])
    }
    fn set(&mut self, n: usize, v: String) {
        if self.0.len() <= n {
            self.0.resize(n + 1, String::new());
        }
        self.0[n] = v;
    }
    fn line(&self) -> String {
        let n = self
            .0
            .iter()
            .rposition(|p| !p.is_empty())
            .map_or(1, |i| i + 1);
        self.0[..n].join("|")
    }
}

/// FHIR date / dateTime / instant → DTM.
fn dtm(s: &str) -> Option<String> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut out: String = date.chars().filter(|c| *c != '-').collect();
    if ![4, 6, 8].contains(&out.len()) || !out.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if let Some(t) = time {
        let (clock, zone) = match t.find(['+', '-', 'Z']) {
            Some(i) => (&t[..i], &t[i..]),
            None => (t, ""),
        };
        let (hms, frac) = match clock.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (clock, None),
        };
        let hms: String = hms.chars().filter(|c| *c != ':').collect();
        if hms.len() != 6 || !hms.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        out.push_str(&hms);
        if let Some(f) = frac {
            // DTM carries at most four fraction digits.
            out.push('.');
            out.push_str(&f[..f.len().min(4)]);
        }
        match zone {
            "" => {}
            "Z" => out.push_str("+0000"),
            z => out.push_str(&z.replace(':', "")),
        }
    }
    Some(out)
}

fn system_name(system: Option<&str>) -> Option<String> {
    let s = system?;
    Some(match s {
        "http://loinc.org" => "LN".into(),
        "http://snomed.info/sct" => "SCT".into(),
        "http://unitsofmeasure.org" => "UCUM".into(),
        "http://hl7.org/fhir/sid/icd-10" => "I10".into(),
        _ => match s.strip_prefix(super::v2::V2_TABLE) {
            Some(table) => format!("HL7{table}"),
            None => s.strip_prefix("urn:oid:").unwrap_or(s).to_string(),
        },
    })
}

/// CodeableConcept → CWE (first coding, second coding as the alternate, text as the
/// original text).
fn cwe(cc: &CodeableConcept) -> String {
    let coding = |i: usize| -> [String; 3] {
        match cc.coding.get(i) {
            Some(c) => {
                let sys = pv!(c.system).map(str::to_string).or_else(|| {
                    c.extension
                        .iter()
                        .find(|e| e.url == super::v2::EXT_V2_CODING_SYSTEM)
                        .and_then(|e| match &e.value {
                            Some(super::r4::types::ExtensionValue::String(s)) => s.value.clone(),
                            _ => None,
                        })
                });
                [
                    esc(pv!(c.code).unwrap_or("")),
                    esc(pv!(c.display).unwrap_or("")),
                    esc(&system_name(sys.as_deref()).unwrap_or_default()),
                ]
            }
            None => [String::new(), String::new(), String::new()],
        }
    };
    let [a1, a2, a3] = coding(0);
    let [b1, b2, b3] = coding(1);
    let text = esc(pv!(cc.text).unwrap_or(""));
    comps(&[a1, a2, a3, b1, b2, b3, String::new(), String::new(), text])
}

/// An identifier's assigning authority as HD parts (namespace, universal id, its type),
/// escaped: from the system URI (`urn:oid:` → ISO, `urn:uuid:` → UUID, any other URI) and the
/// assigner (its name; its identifier when there is no system).
fn authority(i: &Identifier) -> [String; 3] {
    let ns = i
        .assigner
        .as_ref()
        .and_then(|a| pv!(a.display))
        .unwrap_or("");
    let (uid, ty) = match pv!(i.system) {
        Some(s) => match (s.strip_prefix("urn:oid:"), s.strip_prefix("urn:uuid:")) {
            (Some(oid), _) => (oid, "ISO"),
            (_, Some(uuid)) => (uuid, "UUID"),
            _ => (s, "URI"),
        },
        None => (
            i.assigner
                .as_ref()
                .and_then(|a| a.identifier.as_ref())
                .and_then(|i| pv!(i.value))
                .unwrap_or(""),
            "",
        ),
    };
    [esc(ns), esc(uid), ty.to_string()]
}

/// Identifier → CX (value, assigning authority in subcomponents, type).
fn cx(i: &Identifier) -> Option<String> {
    let value = pv!(i.value)?;
    let ty = i
        .r#type
        .as_ref()
        .and_then(|t| t.coding.first())
        .and_then(|c| pv!(c.code))
        .unwrap_or("");
    let auth = join_trimmed(&authority(i), "&");
    Some(comps(&[
        esc(value),
        String::new(),
        String::new(),
        auth,
        esc(ty),
    ]))
}

/// Identifier → EI (entity id, then the authority's namespace, universal id, type).
fn ei(i: &Identifier) -> Option<String> {
    let value = pv!(i.value)?;
    let [ns, uid, ty] = authority(i);
    Some(comps(&[esc(value), ns, uid, ty]))
}

fn id_of_type<'a>(ids: &'a [Identifier], ty: &str) -> Option<&'a Identifier> {
    ids.iter().find(|i| {
        i.r#type
            .as_ref()
            .is_some_and(|t| t.coding.iter().any(|c| pv!(c.code) == Some(ty)))
    })
}

/// A quantity's value as written (decimal text), empty when absent.
fn quantity_value(q: &Option<Box<Quantity>>) -> String {
    q.as_ref()
        .and_then(|q| pv!(q.value))
        .unwrap_or("")
        .to_string()
}

fn quantity_units(q: &Quantity) -> String {
    let code = pv!(q.code).or(pv!(q.unit)).unwrap_or("");
    let unit = pv!(q.unit).unwrap_or(code);
    let sys = system_name(pv!(q.system)).unwrap_or_default();
    comps(&[esc(code), esc(unit), esc(&sys)])
}

struct Entries<'b> {
    resources: Vec<(&'b Resource, Option<&'b str>)>,
}

impl<'b> Entries<'b> {
    /// Index of the entry a reference points at (fullUrl, or `Type/id`).
    fn resolve(&self, r: &Reference) -> Option<usize> {
        let target = pv!(r.reference)?;
        self.resources.iter().position(|(res, full)| {
            *full == Some(target) || {
                let (ty, id) = target.split_once('/').unwrap_or(("", ""));
                resource_type(res) == ty && res.id().and_then(|i| i.value.as_deref()) == Some(id)
            }
        })
    }
}

fn resource_type(r: &Resource) -> &'static str {
    match r {
        Resource::Patient(_) => "Patient",
        Resource::ServiceRequest(_) => "ServiceRequest",
        Resource::DiagnosticReport(_) => "DiagnosticReport",
        Resource::Observation(_) => "Observation",
        Resource::Specimen(_) => "Specimen",
        Resource::Encounter(_) => "Encounter",
        Resource::Practitioner(_) => "Practitioner",
        Resource::Organization(_) => "Organization",
        _ => "other",
    }
}

fn entry_path(i: usize) -> String {
    format!("Bundle.entry[{i}].resource")
}

/// Reads a posted transaction Bundle and writes its HL7 v2 twin. `sender` (the system its
/// certificate names) becomes MSH-3; MSH-7 is `Bundle.timestamp`, or `now` without one.
pub fn to_v2(body: &[u8], sender: &str, now: &str) -> Result<Inbound, Vec<Issue>> {
    let resource = super::json::from_json(body).map_err(|e| {
        vec![match e {
            super::json::Error::EmptyArray(path) => issue(
                "structure",
                path,
                "an empty array is not allowed in FHIR JSON",
            ),
            super::json::Error::Unreadable(_) => {
                issue("structure", "Bundle", "not a FHIR R4 resource in JSON")
            }
        }]
    })?;
    let Resource::Bundle(bundle) = resource else {
        return Err(vec![issue(
            "invalid",
            "Bundle",
            "a transaction Bundle is expected",
        )]);
    };
    if pv!(Some(&bundle.r#type)) != Some("transaction") {
        return Err(vec![issue(
            "value",
            "Bundle.type",
            "a transaction Bundle is expected",
        )]);
    }
    let mut issues = Vec::new();
    let mut entries = Entries {
        resources: Vec::new(),
    };
    for (i, e) in bundle.entry.iter().enumerate() {
        match &e.resource {
            Some(r) => entries.resources.push((r, pv!(e.full_url))),
            None => issues.push(issue(
                "required",
                format!("Bundle.entry[{i}].resource"),
                "an entry with no resource",
            )),
        }
    }
    if !issues.is_empty() {
        return Err(issues);
    }
    let of = |ty: &str| -> Vec<usize> {
        entries
            .resources
            .iter()
            .enumerate()
            .filter(|(_, (r, _))| resource_type(r) == ty)
            .map(|(i, _)| i)
            .collect()
    };
    let patients = of("Patient");
    let &[patient_i] = patients.as_slice() else {
        return Err(vec![issue(
            "required",
            "Bundle.entry",
            "exactly one Patient is expected",
        )]);
    };
    let Resource::Patient(patient) = entries.resources[patient_i].0 else {
        return Err(vec![issue(
            "structure",
            entry_path(patient_i),
            "not a Patient",
        )]);
    };
    let reports = of("DiagnosticReport");
    let requests = of("ServiceRequest");
    let kind = if !reports.is_empty() {
        Kind::Result
    } else if !requests.is_empty() {
        Kind::Order
    } else {
        return Err(vec![issue(
            "required",
            "Bundle.entry",
            "an order (ServiceRequest) or a result (DiagnosticReport) is expected",
        )]);
    };
    let control_id = bundle
        .identifier
        .as_ref()
        .and_then(|i| pv!(i.value))
        .map(str::to_string)
        .or_else(|| bundle.id.as_ref().and_then(|i| i.value.clone()))
        .unwrap_or_else(|| format!("F{}", &crate::model::sha256_hex(body)[..19]));
    if control_id.len() > 199 {
        return Err(vec![issue(
            "value",
            "Bundle.identifier.value",
            "longer than MSH-10 allows (199)",
        )]);
    }
    let mut segs = Vec::new();
    let message_type = match kind {
        Kind::Order => "OML^O33^OML_O33",
        Kind::Result => "ORU^R01^ORU_R01",
    };
    // MSH goes in last: the fingerprint leaves MSH-7 out when it is the receipt time.
    let sent = bundle
        .timestamp
        .as_ref()
        .and_then(|t| t.value.as_deref())
        .and_then(dtm);
    let msh = |time: &str| {
        format!(
            "MSH|^~\\&|{}||LABROUTE||{time}||{message_type}|{}|P|2.5|||||FRA|UNICODE UTF-8",
            esc(sender),
            esc(&control_id)
        )
    };
    segs.push(pid(patient, patient_i, &mut issues));
    if let Some(&enc_i) = of("Encounter").first() {
        if let Resource::Encounter(e) = entries.resources[enc_i].0 {
            segs.push(pv1(e));
        }
    }
    match kind {
        Kind::Order => {
            if let Some(&sp_i) = of("Specimen").first() {
                if let Resource::Specimen(sp) = entries.resources[sp_i].0 {
                    segs.push(spm(sp, sp_i, &mut issues));
                }
            }
            for (n, &i) in requests.iter().enumerate() {
                if let Resource::ServiceRequest(sr) = entries.resources[i].0 {
                    order_segments(sr, i, n + 1, "NW", &mut segs, &mut issues);
                }
            }
        }
        Kind::Result => {
            let mut used = vec![false; entries.resources.len()];
            let mut obx_n = 0;
            for (n, &i) in reports.iter().enumerate() {
                let Resource::DiagnosticReport(dr) = entries.resources[i].0 else {
                    continue;
                };
                let sr = dr
                    .based_on
                    .first()
                    .and_then(|r| entries.resolve(r))
                    .and_then(|j| match entries.resources[j].0 {
                        Resource::ServiceRequest(sr) => Some(sr.as_ref()),
                        _ => None,
                    });
                result_order(dr, sr, i, n + 1, &mut segs, &mut issues);
                for (k, r) in dr.result.iter().enumerate() {
                    let path = format!("{}.result[{k}]", entry_path(i));
                    match entries.resolve(r).map(|j| (j, entries.resources[j].0)) {
                        Some((j, Resource::Observation(o))) => {
                            used[j] = true;
                            obx_n += 1;
                            segs.extend(obx(o, j, obx_n, &mut issues));
                        }
                        _ => issues.push(issue(
                            "not-found",
                            path,
                            "a result must be an Observation in this Bundle",
                        )),
                    }
                }
            }
            for i in of("Observation") {
                if !used[i] {
                    issues.push(issue(
                        "business-rule",
                        entry_path(i),
                        "an Observation that no DiagnosticReport.result names would be lost",
                    ));
                }
            }
        }
    }
    if !issues.is_empty() {
        return Err(issues);
    }
    let mut body = segs.join("\r");
    body.push('\r');
    let fingerprint: [u8; 32] = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(msh(sent.as_deref().unwrap_or("")).as_bytes());
        h.update(b"\r");
        h.update(body.as_bytes());
        h.finalize().into()
    };
    let v2 = format!("{}\r{body}", msh(sent.as_deref().unwrap_or(now)));
    Ok(Inbound {
        kind,
        v2: v2.into_bytes(),
        control_id,
        fingerprint,
    })
}

fn pid(p: &Patient, i: usize, issues: &mut Vec<Issue>) -> String {
    let mut s = Seg::new("PID");
    s.set(1, "1".into());
    let ids: Vec<String> = p.identifier.iter().filter_map(cx).collect();
    if ids.is_empty() {
        issues.push(issue(
            "required",
            format!("{}.identifier", entry_path(i)),
            "the patient needs an identifier",
        ));
    }
    s.set(3, ids.join("~"));
    let names: Vec<String> = p
        .name
        .iter()
        .map(|n| {
            let ty = match pv!(n.r#use) {
                Some("official") => "L",
                Some("usual") => "D",
                Some("maiden") => "M",
                Some("nickname") => "N",
                Some("anonymous") => "S",
                Some("temp") => "T",
                _ => "",
            };
            let given: Vec<&str> = n.given.iter().filter_map(|g| g.value.as_deref()).collect();
            comps(&[
                esc(pv!(n.family).unwrap_or("")),
                esc(given.first().copied().unwrap_or("")),
                esc(&given.get(1..).map(|g| g.join(" ")).unwrap_or_default()),
                esc(&n
                    .suffix
                    .iter()
                    .filter_map(|x| x.value.clone())
                    .collect::<Vec<_>>()
                    .join(" ")),
                esc(&n
                    .prefix
                    .iter()
                    .filter_map(|x| x.value.clone())
                    .collect::<Vec<_>>()
                    .join(" ")),
                String::new(),
                ty.into(),
            ])
        })
        .collect();
    s.set(5, names.join("~"));
    if let Some(b) = pv!(p.birth_date) {
        match dtm(b) {
            Some(d) => s.set(7, d),
            None => issues.push(issue(
                "value",
                format!("{}.birthDate", entry_path(i)),
                "not a date",
            )),
        }
    }
    s.set(
        8,
        match pv!(p.gender) {
            Some("male") => "M",
            Some("female") => "F",
            Some("other") => "O",
            Some("unknown") => "U",
            _ => "",
        }
        .into(),
    );
    let addresses: Vec<String> = p
        .address
        .iter()
        .map(|a| {
            let lines: Vec<&str> = a.line.iter().filter_map(|l| l.value.as_deref()).collect();
            comps(&[
                esc(lines.first().copied().unwrap_or("")),
                esc(&lines.get(1..).map(|l| l.join(" ")).unwrap_or_default()),
                esc(pv!(a.city).unwrap_or("")),
                esc(pv!(a.state).unwrap_or("")),
                esc(pv!(a.postal_code).unwrap_or("")),
                esc(pv!(a.country).unwrap_or("")),
                match pv!(a.r#use) {
                    Some("home") => "H",
                    Some("work") => "B",
                    Some("temp") => "C",
                    _ => "",
                }
                .into(),
            ])
        })
        .collect();
    s.set(11, addresses.join("~"));
    match &p.deceased {
        Some(PatientDeceased::DateTime(d)) => {
            if let Some(d) = d.value.as_deref().and_then(dtm) {
                s.set(29, d);
            }
            s.set(30, "Y".into());
        }
        Some(PatientDeceased::Boolean(b)) => {
            s.set(30, if b.value == Some(true) { "Y" } else { "N" }.into())
        }
        _ => {}
    }
    let reliability: Vec<&str> = p
        .meta
        .iter()
        .flat_map(|m| m.tag.iter())
        .filter(|c| pv!(c.system) == Some("http://terminology.hl7.org/CodeSystem/v2-0445"))
        .filter_map(|c| pv!(c.code))
        .collect();
    s.set(
        32,
        reliability
            .iter()
            .map(|r| esc(r))
            .collect::<Vec<_>>()
            .join("~"),
    );
    s.line()
}

fn pv1(e: &Encounter) -> String {
    let mut s = Seg::new("PV1");
    s.set(1, "1".into());
    s.set(2, esc(pv!(e.class.code).unwrap_or("U")));
    if let Some(v) = e.identifier.first().and_then(cx) {
        s.set(19, v);
    }
    s.line()
}

fn spm(sp: &Specimen, i: usize, issues: &mut Vec<Issue>) -> String {
    let mut s = Seg::new("SPM");
    s.set(1, "1".into());
    let eip = |ty: &str| -> String {
        id_of_type(&sp.identifier, ty)
            .and_then(ei)
            .map(|e| e.replace('^', "&"))
            .unwrap_or_default()
    };
    let (placer, filler) = (eip("PLAC"), eip("FILL"));
    let (placer, filler) = if placer.is_empty() && filler.is_empty() {
        (
            sp.identifier
                .first()
                .and_then(ei)
                .map(|e| e.replace('^', "&"))
                .unwrap_or_default(),
            String::new(),
        )
    } else {
        (placer, filler)
    };
    s.set(2, comps(&[placer, filler]));
    if let Some(t) = &sp.r#type {
        s.set(4, cwe(t));
    }
    if let Some(c) = &sp.collection {
        match &c.collected {
            Some(SpecimenCollectionCollected::DateTime(d)) => {
                match d.value.as_deref().and_then(dtm) {
                    Some(d) => s.set(17, d),
                    None => issues.push(issue(
                        "value",
                        format!("{}.collection.collectedDateTime", entry_path(i)),
                        "not a dateTime",
                    )),
                }
            }
            Some(SpecimenCollectionCollected::Period(p)) => {
                let a = pv!(p.start).and_then(dtm).unwrap_or_default();
                let b = pv!(p.end).and_then(dtm).unwrap_or_default();
                s.set(17, comps(&[a, b]));
            }
            _ => {}
        }
    }
    if let Some(d) = pv!(sp.received_time).and_then(dtm) {
        s.set(18, d);
    }
    s.line()
}

fn order_segments(
    sr: &ServiceRequest,
    i: usize,
    n: usize,
    control: &str,
    segs: &mut Vec<String>,
    issues: &mut Vec<Issue>,
) {
    let placer = id_of_type(&sr.identifier, "PLAC")
        .or_else(|| {
            sr.identifier
                .iter()
                .find(|i| id_of_type(std::slice::from_ref(*i), "FILL").is_none())
        })
        .and_then(ei);
    let filler = id_of_type(&sr.identifier, "FILL")
        .and_then(ei)
        .unwrap_or_default();
    let Some(placer) = placer else {
        issues.push(issue(
            "required",
            format!("{}.identifier", entry_path(i)),
            "a placer order number (identifier of type PLAC) is required",
        ));
        return;
    };
    let Some(code) = sr.code.as_ref().map(|c| cwe(c)).filter(|c| !c.is_empty()) else {
        issues.push(issue(
            "required",
            format!("{}.code", entry_path(i)),
            "what is ordered (code) is required",
        ));
        return;
    };
    let mut orc = Seg::new("ORC");
    orc.set(1, control.into());
    orc.set(2, placer.clone());
    orc.set(3, filler.clone());
    if let Some(d) = pv!(sr.authored_on).and_then(dtm) {
        orc.set(9, d);
    }
    segs.push(orc.line());
    let mut obr = Seg::new("OBR");
    obr.set(1, n.to_string());
    obr.set(2, placer);
    obr.set(3, filler);
    obr.set(4, code);
    segs.push(obr.line());
    for note in &sr.note {
        if let Some(t) = note.text.value.as_deref() {
            segs.push(format!("NTE|1|L|{}", esc(t)));
        }
    }
}

fn result_order(
    dr: &DiagnosticReport,
    sr: Option<&ServiceRequest>,
    i: usize,
    n: usize,
    segs: &mut Vec<String>,
    issues: &mut Vec<Issue>,
) {
    let placer = sr
        .and_then(|sr| id_of_type(&sr.identifier, "PLAC").or(sr.identifier.first()))
        .and_then(ei)
        .unwrap_or_default();
    let filler = id_of_type(&dr.identifier, "FILL")
        .or(dr.identifier.first())
        .and_then(ei)
        .unwrap_or_default();
    if placer.is_empty() && filler.is_empty() {
        issues.push(issue(
            "required",
            format!("{}.identifier", entry_path(i)),
            "a filler order number (identifier) or a basedOn ServiceRequest with a placer number is required",
        ));
    }
    let mut orc = Seg::new("ORC");
    orc.set(1, "RE".into());
    orc.set(2, placer.clone());
    orc.set(3, filler.clone());
    segs.push(orc.line());
    let mut obr = Seg::new("OBR");
    obr.set(1, n.to_string());
    obr.set(2, placer);
    obr.set(3, filler);
    obr.set(4, cwe(&dr.code));
    match &dr.effective {
        Some(DiagnosticReportEffective::DateTime(d)) => {
            if let Some(d) = d.value.as_deref().and_then(dtm) {
                obr.set(7, d);
            }
        }
        Some(DiagnosticReportEffective::Period(p)) => {
            if let Some(a) = pv!(p.start).and_then(dtm) {
                obr.set(7, a);
            }
            if let Some(b) = pv!(p.end).and_then(dtm) {
                obr.set(8, b);
            }
        }
        _ => {}
    }
    if let Some(d) = pv!(dr.issued).and_then(dtm) {
        obr.set(22, d);
    }
    let status = match dr.status.value.as_deref() {
        Some("registered") => "I",
        Some("partial") => "A",
        Some("preliminary") => "P",
        Some("final") => "F",
        Some("amended") | Some("corrected") | Some("appended") => "C",
        Some("cancelled") => "X",
        Some("entered-in-error") => "D",
        _ => "",
    };
    obr.set(25, status.into());
    segs.push(obr.line());
}

fn obx(o: &Observation, i: usize, n: usize, issues: &mut Vec<Issue>) -> Vec<String> {
    let path = entry_path(i);
    let mut s = Seg::new("OBX");
    s.set(1, n.to_string());
    s.set(3, cwe(&o.code));
    let (vt, value, units) = match &o.value {
        None => {
            let att = o
                .extension
                .iter()
                .find(|e| e.url == super::v2::EXT_VALUE_ATTACHMENT);
            match att.and_then(|e| e.value.as_ref()) {
                Some(super::r4::types::ExtensionValue::Attachment(a)) => {
                    let mime = pv!(a.content_type).unwrap_or("application/octet-stream");
                    let (main, sub) = mime.split_once('/').unwrap_or(("application", mime));
                    let kind = match main {
                        "text" => "TEXT",
                        "image" => "IM",
                        "audio" => "AU",
                        _ => "AP",
                    };
                    let data = pv!(a.data).unwrap_or("");
                    (
                        "ED",
                        comps(&[
                            String::new(),
                            kind.into(),
                            esc(&sub.to_ascii_uppercase()),
                            "Base64".into(),
                            esc(data),
                        ]),
                        String::new(),
                    )
                }
                _ => ("", String::new(), String::new()),
            }
        }
        Some(ObservationValue::Quantity(q)) => {
            let v = pv!(q.value).unwrap_or("").to_string();
            match pv!(q.comparator) {
                Some(c) => ("SN", comps(&[esc(c), v]), quantity_units(q)),
                None => ("NM", v, quantity_units(q)),
            }
        }
        Some(ObservationValue::CodeableConcept(cc)) => ("CWE", cwe(cc), String::new()),
        Some(ObservationValue::String(t)) => {
            let t = t.value.as_deref().unwrap_or("");
            if t.contains('\n') {
                let lines: Vec<String> = t.split('\n').map(esc).collect();
                ("TX", lines.join("~"), String::new())
            } else {
                ("ST", esc(t), String::new())
            }
        }
        Some(ObservationValue::Boolean(b)) => (
            "ID",
            if b.value == Some(true) { "Y" } else { "N" }.into(),
            String::new(),
        ),
        Some(ObservationValue::Integer(v)) => (
            "NM",
            v.value.map(|v| v.to_string()).unwrap_or_default(),
            String::new(),
        ),
        Some(ObservationValue::DateTime(d)) => match d.value.as_deref().and_then(dtm) {
            Some(d) => ("DTM", d, String::new()),
            None => {
                issues.push(issue(
                    "value",
                    format!("{path}.valueDateTime"),
                    "not a dateTime",
                ));
                ("", String::new(), String::new())
            }
        },
        Some(ObservationValue::Time(t)) => (
            "TM",
            t.value.as_deref().unwrap_or("").replace(':', ""),
            String::new(),
        ),
        Some(ObservationValue::Range(r)) => {
            let lo = quantity_value(&r.low);
            let hi = quantity_value(&r.high);
            let units = r
                .low
                .as_ref()
                .or(r.high.as_ref())
                .map(|q| quantity_units(q))
                .unwrap_or_default();
            ("SN", comps(&[String::new(), lo, "-".into(), hi]), units)
        }
        Some(ObservationValue::Ratio(r)) => {
            let a = quantity_value(&r.numerator);
            let b = quantity_value(&r.denominator);
            (
                "SN",
                comps(&[String::new(), a, ":".into(), b]),
                String::new(),
            )
        }
        Some(ObservationValue::Period(p)) => {
            let a = pv!(p.start).and_then(dtm).unwrap_or_default();
            let b = pv!(p.end).and_then(dtm).unwrap_or_default();
            ("DR", comps(&[a, b]), String::new())
        }
        Some(ObservationValue::SampledData(_)) | Some(ObservationValue::Invalid) => {
            issues.push(issue(
                "not-supported",
                format!("{path}.valueSampledData"),
                "sampled data has no HL7 v2 result form here",
            ));
            ("", String::new(), String::new())
        }
    };
    s.set(2, vt.into());
    s.set(5, value);
    s.set(6, units);
    if let Some(r) = o.reference_range.first() {
        s.set(7, esc(pv!(r.text).unwrap_or("")));
    }
    let interp: Vec<String> = o
        .interpretation
        .iter()
        .filter_map(|c| c.coding.first().and_then(|c| pv!(c.code)))
        .map(esc)
        .collect();
    s.set(8, interp.join("~"));
    let status = match o.status.value.as_deref() {
        Some("registered") => "I",
        Some("preliminary") => "P",
        Some("final") => "F",
        Some("amended") => "A",
        Some("corrected") => "C",
        Some("cancelled") => "X",
        Some("entered-in-error") => "W",
        _ => "",
    };
    s.set(11, status.into());
    match &o.effective {
        Some(ObservationEffective::DateTime(d)) => {
            if let Some(d) = d.value.as_deref().and_then(dtm) {
                s.set(14, d);
            }
        }
        Some(ObservationEffective::Instant(d)) => {
            if let Some(d) = d.value.as_deref().and_then(dtm) {
                s.set(14, d);
            }
        }
        _ => {}
    }
    let mut out = vec![s.line()];
    for note in &o.note {
        if let Some(t) = note.text.value.as_deref() {
            let lines: Vec<String> = t.split('\n').map(esc).collect();
            out.push(format!("NTE|1|L|{}", lines.join("~")));
        }
    }
    out
}
