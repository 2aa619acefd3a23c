//! The mailboxes of the national MSSanté directory, from the FHIR export of the Annuaire
//! Santé (ANS IG `as-mailbox-mss`: an `email` ContactPoint of a Practitioner,
//! PractitionerRole or Organization carrying the extension `as-ext-mailbox-mss-metadata`,
//! whose sub-extensions give the mailbox type `type` (PER, ORG, APP, CAB) and the unlisted
//! flag `listeRouge`), and from a local CSV for practitioners not in it.
//!
//! The export is read as a Bundle (`entry[].resource`), as NDJSON (one resource per line),
//! or as one resource. A PractitionerRole's mailbox belongs to the Practitioner it names
//! (its RPPS) and to the Organization it names (its FINESS).

use std::collections::HashMap;

use serde_json::Value;

use super::{BoxType, ImportError, Mailbox, normalise_address};

/// Identifier systems of the RPPS: the RPPS itself (11 digits), and the national
/// professional identifier IDNPS (OID 1.2.250.1.71.4.2.1: `8` + RPPS).
const RPPS_SYSTEM: &str = "https://rpps.esante.gouv.fr";
const IDNPS_SYSTEM: &str = "urn:oid:1.2.250.1.71.4.2.1";
/// FINESS: the system, and the IDNST OID (`1` + FINESS).
const FINESS_SYSTEM: &str = "https://finess.esante.gouv.fr";
const IDNST_SYSTEM: &str = "urn:oid:1.2.250.1.71.4.2.2";
/// The mailbox metadata extension (the end of its canonical URL).
const MSS_METADATA: &str = "as-ext-mailbox-mss-metadata";
/// The e-mail type extension's code for MSSanté (TRE_R256).
const MSSANTE_EMAIL_TYPE: &str = "MSSANTE";

/// The mailboxes of an export (each address once: the first entry that names it, merged
/// with the RPPS and FINESS of the others).
pub fn parse_fhir(file: &str, text: &str) -> Result<Vec<Mailbox>, ImportError> {
    let err = |at: String, problem: String| ImportError {
        file: file.to_owned(),
        at,
        problem,
    };
    let mut resources: Vec<(String, Value)> = Vec::new();
    let trimmed = text.trim_start();
    match serde_json::from_str::<Value>(trimmed) {
        Ok(v) if v.get("resourceType").and_then(Value::as_str) == Some("Bundle") => {
            let entries = v
                .get("entry")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (i, e) in entries.into_iter().enumerate() {
                if let Some(r) = e.get("resource") {
                    resources.push((format!("entry {}: ", i + 1), r.clone()));
                }
            }
        }
        Ok(v) if v.get("resourceType").is_some() => resources.push((String::new(), v)),
        Ok(_) => {
            return Err(err(
                String::new(),
                "not a FHIR resource (no resourceType)".into(),
            ));
        }
        // NDJSON: one resource per line.
        Err(_) => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(line).map_err(|e| {
                    err(
                        format!("line {}: ", i + 1),
                        format!("not JSON (column {})", e.column()),
                    )
                })?;
                resources.push((format!("line {}: ", i + 1), v));
            }
        }
    }
    // References first: Practitioner → RPPS, Organization → FINESS.
    let mut rpps_of: HashMap<String, String> = HashMap::new();
    let mut finess_of: HashMap<String, String> = HashMap::new();
    for (_, r) in &resources {
        let (Some(ty), Some(id)) = (
            r.get("resourceType").and_then(Value::as_str),
            r.get("id").and_then(Value::as_str),
        ) else {
            continue;
        };
        match ty {
            "Practitioner" => {
                if let Some(rpps) = rpps(r) {
                    rpps_of.insert(format!("Practitioner/{id}"), rpps);
                }
            }
            "Organization" => {
                if let Some(f) = finess(r) {
                    finess_of.insert(format!("Organization/{id}"), f);
                }
            }
            _ => {}
        }
    }
    let reference = |r: &Value, field: &str| -> Option<String> {
        let s = r.get(field)?.get("reference")?.as_str()?;
        // Absolute references keep their last two segments.
        let mut parts = s.rsplit('/');
        let id = parts.next()?;
        let ty = parts.next()?;
        Some(format!("{ty}/{id}"))
    };
    let mut out: Vec<Mailbox> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (at, r) in &resources {
        let ty = r.get("resourceType").and_then(Value::as_str).unwrap_or("");
        let (owner_rpps, owner_finess, default_kind) = match ty {
            "Practitioner" => (rpps(r), None, BoxType::Personal),
            "PractitionerRole" => (
                reference(r, "practitioner").and_then(|p| rpps_of.get(&p).cloned()),
                reference(r, "organization").and_then(|o| finess_of.get(&o).cloned()),
                BoxType::Personal,
            ),
            "Organization" => (None, finess(r), BoxType::Organisational),
            _ => continue,
        };
        let telecoms = r
            .get("telecom")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (j, t) in telecoms.iter().enumerate() {
            let Some(meta) = mailbox_meta(t) else {
                continue;
            };
            let value = t.get("value").and_then(Value::as_str).unwrap_or("");
            let Some(address) = normalise_address(value) else {
                return Err(err(
                    at.clone(),
                    format!("{ty}.telecom[{j}].value is not an e-mail address"),
                ));
            };
            let kind = meta.kind.unwrap_or(default_kind);
            match index.get(&address) {
                Some(&k) => {
                    let m = &mut out[k];
                    if m.rpps.is_none() {
                        m.rpps = owner_rpps.clone();
                    }
                    if let Some(f) = &owner_finess
                        && !m.finess.contains(f)
                    {
                        m.finess.push(f.clone());
                    }
                    m.unlisted |= meta.unlisted;
                }
                None => {
                    index.insert(address.clone(), out.len());
                    out.push(Mailbox {
                        address,
                        kind,
                        unlisted: meta.unlisted,
                        rpps: owner_rpps.clone(),
                        finess: owner_finess.iter().cloned().collect(),
                    });
                }
            }
        }
    }
    if out.is_empty() {
        return Err(err(
            String::new(),
            "no MSSanté mailbox (telecom with the mailbox-mss extension): not a directory export"
                .into(),
        ));
    }
    Ok(out)
}

struct Meta {
    kind: Option<BoxType>,
    unlisted: bool,
}

/// Whether a ContactPoint is an MSSanté mailbox, and its metadata.
fn mailbox_meta(t: &Value) -> Option<Meta> {
    if t.get("system").and_then(Value::as_str) != Some("email") {
        return None;
    }
    let exts = t.get("extension").and_then(Value::as_array)?;
    let mut mss = false;
    let mut meta = Meta {
        kind: None,
        unlisted: false,
    };
    for e in exts {
        let url = e.get("url").and_then(Value::as_str).unwrap_or("");
        if url.ends_with(MSS_METADATA) {
            mss = true;
            for sub in e
                .get("extension")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                match sub.get("url").and_then(Value::as_str) {
                    Some("type") => {
                        meta.kind = sub
                            .pointer("/valueCodeableConcept/coding")
                            .and_then(Value::as_array)
                            .and_then(|c| {
                                c.iter().find_map(|c| {
                                    c.get("code")
                                        .and_then(Value::as_str)
                                        .and_then(BoxType::from_code)
                                })
                            });
                    }
                    Some("listeRouge") => {
                        meta.unlisted = sub
                            .get("valueBoolean")
                            .and_then(Value::as_bool)
                            .unwrap_or(false);
                    }
                    _ => {}
                }
            }
        } else if e.pointer("/valueCoding/code").and_then(Value::as_str) == Some(MSSANTE_EMAIL_TYPE)
        {
            mss = true;
        }
    }
    mss.then_some(meta)
}

/// A Practitioner's RPPS (11 digits), from its RPPS or IDNPS identifier.
fn rpps(r: &Value) -> Option<String> {
    identifiers(r).find_map(|(system, value)| match system {
        RPPS_SYSTEM if crate::access::is_rpps(value) => Some(value.to_owned()),
        IDNPS_SYSTEM => value
            .strip_prefix('8')
            .filter(|v| crate::access::is_rpps(v))
            .map(str::to_owned),
        _ => None,
    })
}

/// An Organization's FINESS (9 characters), from its FINESS or IDNST identifier.
fn finess(r: &Value) -> Option<String> {
    let ok = |v: &str| v.len() == 9 && v.bytes().all(|b| b.is_ascii_alphanumeric());
    identifiers(r).find_map(|(system, value)| match system {
        FINESS_SYSTEM if ok(value) => Some(value.to_owned()),
        IDNST_SYSTEM => value.strip_prefix('1').filter(|v| ok(v)).map(str::to_owned),
        _ => None,
    })
}

fn identifiers(r: &Value) -> impl Iterator<Item = (&str, &str)> {
    r.get("identifier")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|i| Some((i.get("system")?.as_str()?, i.get("value")?.as_str()?.trim())))
}

/// The local CSV: `rpps,address[,type[,finess]]` per line (type PER by default; `#` starts
/// a comment; a first line starting with `rpps` is a header). The RPPS may be empty for an
/// organisational mailbox.
pub fn parse_csv(file: &str, text: &str) -> Result<Vec<Mailbox>, ImportError> {
    let mut out: Vec<Mailbox> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (i == 0 && line.starts_with("rpps")) {
            continue;
        }
        let err = |problem: &str| ImportError {
            file: file.to_owned(),
            at: format!("line {}: ", i + 1),
            problem: problem.to_owned(),
        };
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        if cols.len() < 2 || cols.len() > 4 {
            return Err(err("expected rpps,address[,type[,finess]]"));
        }
        let rpps = match cols[0] {
            "" => None,
            r if crate::access::is_rpps(r) => Some(r.to_owned()),
            _ => return Err(err("the RPPS is 11 digits (or empty)")),
        };
        let address = normalise_address(cols[1]).ok_or_else(|| err("not an e-mail address"))?;
        let kind = match cols.get(2) {
            None | Some(&"") => BoxType::Personal,
            Some(t) => BoxType::from_code(t).ok_or_else(|| err("type is PER, CAB, ORG or APP"))?,
        };
        let finess = match cols.get(3) {
            None | Some(&"") => Vec::new(),
            Some(f) if f.len() == 9 && f.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                vec![(*f).to_owned()]
            }
            Some(_) => return Err(err("a FINESS is 9 characters")),
        };
        if out.iter().any(|m| m.address == address) {
            return Err(err("this address is already on an earlier line"));
        }
        out.push(Mailbox {
            address,
            kind,
            unlisted: false,
            rpps,
            finess,
        });
    }
    if out.is_empty() {
        return Err(ImportError {
            file: file.to_owned(),
            at: String::new(),
            problem: "no mailbox".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = "https://interop.esante.gouv.fr/ig/fhir/annuaire/StructureDefinition/as-ext-mailbox-mss-metadata";

    fn mailbox(address: &str, kind: &str, unlisted: bool) -> Value {
        serde_json::json!({
            "system": "email",
            "value": address,
            "extension": [
                { "url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-contact-point-email-type",
                  "valueCoding": { "code": "MSSANTE" } },
                { "url": META, "extension": [
                    { "url": "type", "valueCodeableConcept": { "coding": [ { "code": kind } ] } },
                    { "url": "listeRouge", "valueBoolean": unlisted }
                ] }
            ]
        })
    }

    #[test]
    fn a_bundle_of_practitioners_roles_and_organisations() {
        let bundle = serde_json::json!({
            "resourceType": "Bundle", "type": "searchset",
            "entry": [
                { "resource": { "resourceType": "Practitioner", "id": "p1",
                    "identifier": [ { "system": "urn:oid:1.2.250.1.71.4.2.1", "value": "810003456789" } ],
                    "telecom": [ mailbox("Jean.Dupont@medecin.mssante.fr", "PER", false),
                                 { "system": "phone", "value": "0102030405" } ] } },
                { "resource": { "resourceType": "Organization", "id": "o1",
                    "identifier": [ { "system": "urn:oid:1.2.250.1.71.4.2.2", "value": "1590000011" } ],
                    "telecom": [ mailbox("labo@ch-nordville.mssante.fr", "ORG", false) ] } },
                { "resource": { "resourceType": "PractitionerRole", "id": "r1",
                    "practitioner": { "reference": "Practitioner/p1" },
                    "organization": { "reference": "https://x/fhir/Organization/o1" },
                    "telecom": [ mailbox("j.dupont@ch-nordville.mssante.fr", "PER", true) ] } }
            ]
        });
        let got = parse_fhir("dir.json", &bundle.to_string()).expect("parses");
        assert_eq!(
            got,
            [
                Mailbox {
                    address: "jean.dupont@medecin.mssante.fr".into(),
                    kind: BoxType::Personal,
                    unlisted: false,
                    rpps: Some("10003456789".into()),
                    finess: vec![],
                },
                Mailbox {
                    address: "labo@ch-nordville.mssante.fr".into(),
                    kind: BoxType::Organisational,
                    unlisted: false,
                    rpps: None,
                    finess: vec!["590000011".into()],
                },
                Mailbox {
                    address: "j.dupont@ch-nordville.mssante.fr".into(),
                    kind: BoxType::Personal,
                    unlisted: true,
                    rpps: Some("10003456789".into()),
                    finess: vec!["590000011".into()],
                },
            ]
        );
        // The same as NDJSON.
        let ndjson: String = bundle["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| format!("{}\n", e["resource"]))
            .collect();
        assert_eq!(parse_fhir("dir.ndjson", &ndjson).expect("ndjson"), got);
    }

    #[test]
    fn bad_exports_name_the_place_never_the_value() {
        let e = parse_fhir("d.ndjson", "{\"resourceType\":\"Practitioner\"}\n{oops\n")
            .expect_err("bad line");
        assert_eq!(e.at, "line 2: ");
        let r = serde_json::json!({ "resourceType": "Practitioner", "id": "x",
            "telecom": [ mailbox("secret name", "PER", false) ] });
        let e = parse_fhir("d.json", &r.to_string()).expect_err("bad address");
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(e.problem.contains("telecom[0]"), "{e}");
        let e = parse_fhir("d.json", "{\"resourceType\":\"Bundle\"}").expect_err("empty");
        assert!(e.problem.contains("no MSSanté mailbox"), "{e}");
    }

    #[test]
    fn the_local_csv() {
        let csv = "rpps,address,type,finess\n# a comment\n10000000001,dr.a@medecin.mssante.fr\n,secretariat@cab.mssante.fr,CAB,130000022\n";
        let got = parse_csv("local.csv", csv).expect("parses");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].rpps.as_deref(), Some("10000000001"));
        assert_eq!(got[1].kind, BoxType::Practice);
        assert_eq!(got[1].finess, ["130000022"]);
        let e = parse_csv("local.csv", "123,x@y.fr\n").expect_err("bad rpps");
        assert_eq!(
            e.to_string(),
            "local.csv: line 1: the RPPS is 11 digits (or empty)"
        );
        assert!(parse_csv("local.csv", ",a@b.fr,XYZ\n").is_err());
    }
}
