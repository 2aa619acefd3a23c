//! The results server over real HTTPS with mutual TLS: practitioners, each known by the RPPS
//! his client certificate carries (a PKI generated for the test), search `DiagnosticReport`
//! and `Observation` by patient identifier, date and code. Results come in through the real
//! pipeline (MLLP, routing, the store), corrections and deletions included. The table over
//! practitioners × patients × establishments is checked cell by cell; a refused search
//! answers byte for byte what it answered before the patient existed; every answer is a
//! searchset that PyPI `fhir.resources` accepts; every search is journalled without
//! patient data and counted.

mod common;

use common::fhir::{validate_texts, validator};
use common::*;
use labroute::store::audit::AuditFilter;
use serde_json::Value as Json;

const INS_OID: &str = "1.2.250.1.213.1.4.8";
const INS: &str = "279035121518989";

fn rpps(n: u8) -> String {
    format!("1000000000{n}")
}

fn xcn(n: u8) -> String {
    format!("{}^DOC{n}^A^^^^^^^^^^RPPS", rpps(n))
}

/// One report of `es` for `patient` (with the INS when `ins`): filler number `filler`,
/// status `status` (OBR-25 and OBX-11), observed at `when`, one LOINC-coded OBX, naming
/// practitioners in ORC-12, OBR-16, OBR-28 and a PRT.
struct Report<'a> {
    es: &'a str,
    ctrl: &'a str,
    patient: &'a str,
    ins: bool,
    filler: &'a str,
    status: &'a str,
    when: &'a str,
    loinc: &'a str,
    value: &'a str,
    orc12: String,
    obr16: String,
    obr28: String,
    prt: &'a str,
}

impl Report<'_> {
    fn hl7(&self) -> Vec<u8> {
        let auth = if self.es == "ES1" {
            "CHNORD-IPP"
        } else {
            "CHSUD-IPP"
        };
        let ins = if self.ins {
            format!("~{INS}^^^ASIP-SANTE-INS-NIR&{INS_OID}&ISO^NH")
        } else {
            String::new()
        };
        let mut obr = vec![String::new(); 29];
        obr[0] = "OBR".into();
        obr[1] = "1".into();
        obr[3] = format!("{}^LAB", self.filler);
        obr[4] = format!("{}^Test^LN", self.loinc);
        obr[7] = self.when.into();
        obr[16] = self.obr16.clone();
        obr[25] = self.status.into();
        obr[28] = self.obr28.clone();
        let mut m = format!(
            "MSH|^~\\&|SIL|LAB|DPI||20250301100000||ORU^R01^ORU_R01|{}|P|2.5|||||FRA|UNICODE UTF-8\r\
PID|||{}^^^{auth}^PI{ins}||TEST^PATIENT\rORC|RE||{}^LAB|||||||||{}\r{}\r",
            self.ctrl,
            self.patient,
            self.filler,
            self.orc12,
            obr.join("|")
        );
        if !self.prt.is_empty() {
            m.push_str(self.prt);
            m.push('\r');
        }
        m.push_str(&format!(
            "OBX|1|NM|{}^Test^LN||{}|mmol/L|||||{}|||{}\r",
            self.loinc, self.value, self.status, self.when
        ));
        m.into_bytes()
    }
}

fn report<'a>(es: &'a str, ctrl: &'a str, patient: &'a str, filler: &'a str) -> Report<'a> {
    Report {
        es,
        ctrl,
        patient,
        ins: false,
        filler,
        status: "F",
        when: "20250301100000",
        loinc: "2823-3",
        value: "4.1",
        orc12: String::new(),
        obr16: String::new(),
        obr28: String::new(),
        prt: "",
    }
}

/// The results the table is about:
/// - P1 at ES1 (with the INS): F1 (ordered by 1, copy to 2), corrected later; F2 (ordered
///   by 1), another day and test;
/// - P2 at ES1: F4 (PRT recipient 3); F6, deleted later;
/// - P3 at ES2 (the same INS): F5 (OBR-16: 5).
fn results() -> Vec<Vec<u8>> {
    let prt_rct =
        "PRT||UC||RCT^^participation|810000000003^R^C^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS";
    vec![
        Report {
            ins: true,
            orc12: xcn(1),
            obr28: xcn(2),
            ..report("ES1", "R1", "P1", "F1")
        }
        .hl7(),
        Report {
            ins: true,
            orc12: xcn(1),
            when: "20250305081500",
            loinc: "2345-7",
            value: "5.2",
            ..report("ES1", "R2", "P1", "F2")
        }
        .hl7(),
        Report {
            ins: true,
            status: "C",
            value: "4.5",
            ..report("ES1", "R3", "P1", "F1")
        }
        .hl7(),
        Report {
            prt: prt_rct,
            ..report("ES1", "R4", "P2", "F4")
        }
        .hl7(),
        report("ES1", "R6", "P2", "F6").hl7(),
        Report {
            status: "D",
            ..report("ES1", "R7", "P2", "F6")
        }
        .hl7(),
        Report {
            ins: true,
            obr16: xcn(5),
            ..report("ES2", "R5", "P3", "F5")
        }
        .hl7(),
    ]
}

struct World {
    h: Harness,
    pki: tempfile::TempDir,
}

async fn start() -> World {
    let pki = tempfile::tempdir().expect("tempdir");
    labroute::pki::generate(&labroute::pki::PkiSpec {
        out: pki.path().to_path_buf(),
        systems: vec!["sil".into()],
        practitioners: (1..=7).map(rpps).collect(),
        server_names: vec!["localhost".into(), "127.0.0.1".into()],
        days: 30,
        now_ms: labroute::time::now_ms(),
        force: false,
        ca_name: "results test CA".into(),
    })
    .expect("PKI");
    let dir = pki.path().to_path_buf();
    let h = Harness::start(move |r| {
        r.replacen(
            "record = \"dpi-es1\"\n",
            "record = \"dpi-es1\"\nexternal_access = true\n",
            1,
        ) + &tls_section(
            &dir.join("ca.pem"),
            &dir.join("server.pem"),
            &dir.join("server.key"),
        ) + &example_systems()
            + "[fhir]\nbind = \"127.0.0.1:0\"\n"
    })
    .await;
    World { h, pki }
}

impl World {
    fn client(&self, name: &str) -> labroute::https::Client {
        let p = |f: String| self.pki.path().join(f);
        let tls = client_tls(
            &p("ca.pem".into()),
            Some((&p(format!("{name}.pem")), &p(format!("{name}.key")))),
        )
        .expect("client TLS");
        https_client(self.h.server.fhir.expect("a FHIR endpoint"), tls)
    }

    fn practitioner(&self, n: u8) -> labroute::https::Client {
        self.client(&format!("rpps-{}", rpps(n)))
    }
}

/// GET; the status and the body.
async fn get(c: &labroute::https::Client, path: &str) -> (u16, Vec<u8>) {
    let a = c
        .send(http::Method::GET, path, "application/fhir+json", Vec::new())
        .await
        .expect("an answer");
    assert_eq!(a.content_type, "application/fhir+json");
    (a.status, a.body.to_vec())
}

/// The filler numbers of the matched reports, sorted, or "-".
fn fillers(body: &[u8]) -> String {
    let b: Json = serde_json::from_slice(body).expect("JSON");
    assert_eq!(b["resourceType"], "Bundle", "{b}");
    assert_eq!(b["type"], "searchset", "{b}");
    let mut f: Vec<String> = b["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| {
                    e["resource"]["identifier"][0]["value"]
                        .as_str()
                        .unwrap_or("?")
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(b["total"].as_u64(), Some(f.len() as u64), "{b}");
    f.sort();
    if f.is_empty() {
        "-".into()
    } else {
        f.join(",")
    }
}

fn queries() -> Vec<String> {
    vec![
        "/DiagnosticReport?patient.identifier=P1".into(),
        "/DiagnosticReport?patient.identifier=P2".into(),
        "/DiagnosticReport?patient.identifier=P3".into(),
        format!("/DiagnosticReport?patient.identifier=urn:oid:{INS_OID}%7C{INS}"),
        "/DiagnosticReport?patient.identifier=P404".into(),
    ]
}

#[tokio::test]
async fn practitioners_see_exactly_their_patients_results() {
    let w = start().await;
    // What every search answers while no patient exists.
    let mut before = Vec::new();
    for q in queries() {
        before.push(get(&w.practitioner(7), &q).await);
    }
    assert!(before.iter().all(|(s, b)| *s == 200 && fillers(b) == "-"));

    let acks = send_all(w.h.sil(), &results()).await.expect("ACKs");
    assert!(acks.iter().all(|a| msa(a).0 == "AA"), "{acks:?}");
    for (es, auth, id, n) in [
        ("ES1", "CHNORD-IPP", "P2", 4),
        ("ES2", "CHSUD-IPP", "P3", 6),
    ] {
        care_grant(&w.h, es, auth, id, &rpps(n), true).await;
    }

    let mut table = Vec::new();
    let mut answers = Vec::new();
    for n in 1..=7 {
        let mut row = Vec::new();
        for (i, q) in queries().iter().enumerate() {
            let (status, body) = get(&w.practitioner(n), q).await;
            assert_eq!(status, 200);
            let cell = fillers(&body);
            if cell == "-" {
                assert_eq!(
                    (status, &body),
                    (before[i].0, &before[i].1),
                    "practitioner {n}, {q}: a refusal answers as if nothing existed"
                );
            }
            row.push(cell);
            answers.push(String::from_utf8(body).expect("UTF-8"));
        }
        table.push(row.join(" "));
    }
    // P1 at ES1: F1 (its corrected version only) and F2; P2 at ES1: F4 (F6 deleted); P3 is
    // at ES2, closed to outside access, even for the practitioner who ordered it (5) or was
    // granted it (6); the INS finds P1 at ES1 and P3 at ES2, and answers for ES1 only.
    assert_eq!(
        table,
        vec![
            "F1,F2 - - F1,F2 -", // 1: ordered P1's
            "F1,F2 - - F1,F2 -", // 2: copy of P1's
            "- F4 - - -",        // 3: recipient of P2's
            "- F4 - - -",        // 4: granted P2
            "- - - - -",         // 5: ordered P3's, at ES2
            "- - - - -",         // 6: granted P3, at ES2
            "- - - - -",         // 7: named nowhere
        ]
    );

    // A system's certificate is not a practitioner's.
    let (status, body) = get(&w.client("sil"), &queries()[0]).await;
    assert_eq!(status, 403);
    let oo: Json = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(oo["resourceType"], "OperationOutcome");

    // The corrected F1 is the one served, with its Observation and patient included.
    let (_, body) = get(&w.practitioner(1), &queries()[0]).await;
    let b: Json = serde_json::from_slice(&body).expect("JSON");
    let entries = b["entry"].as_array().expect("entries");
    let f1 = entries
        .iter()
        .find(|e| e["resource"]["identifier"][0]["value"] == "F1")
        .expect("F1");
    assert_eq!(f1["resource"]["status"], "corrected");
    let included: Vec<&str> = entries
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .filter_map(|e| e["resource"]["resourceType"].as_str())
        .collect();
    assert!(included.contains(&"Patient"), "{included:?}");
    assert_eq!(included.iter().filter(|t| **t == "Observation").count(), 2);
    let values: Vec<f64> = entries
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Observation")
        .filter_map(|e| e["resource"]["valueQuantity"]["value"].as_f64())
        .collect();
    assert!(
        values.contains(&4.5) && !values.contains(&4.1),
        "{values:?}"
    );

    // Every answer is a valid searchset.
    if let Some(python) = validator() {
        answers.push(String::from_utf8(body).expect("UTF-8"));
        for (i, r) in validate_texts(&python, &answers).iter().enumerate() {
            assert!(r.is_ok(), "answer {i}: {r:?}\n{}", answers[i]);
        }
    }

    // Journalled, with reasons, and without patient data.
    let journal = labroute::store::audit::query(
        w.h.server.store.store(),
        &AuditFilter {
            event: Some("results_search".into()),
            ..Default::default()
        },
    )
    .expect("journal");
    // One entry per establishment a search looked in (the INS: two), one without an
    // establishment for an identifier that names no patient.
    assert_eq!(journal.len(), 5 + 7 * 6 + 1);
    let text = serde_json::to_string(&journal.iter().map(|e| &e.detail).collect::<Vec<_>>())
        .expect("JSON");
    for secret in [INS, "P1", "P2", "P3", "P404", "TEST", "CHNORD-IPP"] {
        assert!(!text.contains(secret), "{secret} in the journal: {text}");
    }
    // Practitioner 1's searches after the results came: P1 served at ES1; P2 not in care;
    // P3 at a closed establishment; the INS served at ES1 and refused at ES2; P404 unknown.
    let p1: Vec<(Option<String>, String)> = journal
        .iter()
        .filter(|e| e.actor.as_deref() == Some(format!("rpps:{}", rpps(1)).as_str()))
        .map(|e| {
            let outcome = match e.detail["why"].as_str() {
                Some(why) => why.to_owned(),
                None => format!("served:{}", e.detail["link"].as_str().unwrap_or("?")),
            };
            (e.establishment.clone(), outcome)
        })
        .collect();
    let es = |e: &str| Some(e.to_owned());
    assert_eq!(
        p1[..6],
        [
            (es("ES1"), "served:ordering".to_owned()),
            (es("ES1"), "not_in_care".to_owned()),
            (es("ES2"), "no_external_access".to_owned()),
            (es("ES1"), "served:ordering".to_owned()),
            (es("ES2"), "no_external_access".to_owned()),
            (None, "unknown_patient".to_owned()),
        ]
    );
    // Counted.
    let metrics = labroute::telemetry::render().expect("metrics");
    for reason in ["not_in_care", "no_external_access", "unknown_patient"] {
        assert!(
            metrics.contains(&format!(
                "labroute_results_access_denied_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {metrics}"
        );
    }
}

#[tokio::test]
async fn searches_filter_by_date_and_code_and_refuse_what_they_cannot_do() {
    let w = start().await;
    let acks = send_all(w.h.sil(), &results()).await.expect("ACKs");
    assert!(acks.iter().all(|a| msa(a).0 == "AA"), "{acks:?}");
    let doctor = w.practitioner(1);
    let p1 = "patient.identifier=P1";
    for (q, want) in [
        (format!("/DiagnosticReport?{p1}&date=2025-03-01"), "F1"),
        (format!("/DiagnosticReport?{p1}&date=ge2025-03-02"), "F2"),
        (format!("/DiagnosticReport?{p1}&date=lt2025-03"), "-"),
        (format!("/DiagnosticReport?{p1}&date=2025"), "F1,F2"),
        (
            format!("/DiagnosticReport?{p1}&date=ge2025-03-05T08:15:00%2B01:00&date=le2025-03-05"),
            "F2",
        ),
        (
            format!("/DiagnosticReport?{p1}&date=2025-03-05T07:15Z"),
            "F2",
        ),
        (
            format!("/DiagnosticReport?{p1}&code=http://loinc.org%7C2823-3"),
            "F1",
        ),
        (
            format!("/DiagnosticReport?{p1}&code=2345-7,2823-3"),
            "F1,F2",
        ),
        (format!("/DiagnosticReport?{p1}&code=other%7C2823-3"), "-"),
        (
            "/DiagnosticReport?subject.identifier=P1&code=2345-7".to_string(),
            "F2",
        ),
    ] {
        let (status, body) = get(&doctor, &q).await;
        assert_eq!((status, fillers(&body).as_str()), (200, want), "{q}");
    }

    // A batch result about two patients names practitioner 1: which patient he cares for
    // is not known, so neither is served to him.
    let batch = String::from_utf8(
        Report {
            orc12: xcn(1),
            ..report("ES1", "B1", "P5", "F7")
        }
        .hl7(),
    )
    .expect("UTF-8")
        + "PID|||P6^^^CHNORD-IPP^PI||OTHER^PATIENT\rORC|RE||F8^LAB\rOBR|1||F8^LAB|2823-3^Test^LN\rOBX|1|NM|2823-3^Test^LN||3.9|mmol/L|||||F\r";
    let acks = send_all(w.h.sil(), &[batch.into_bytes()])
        .await
        .expect("ACK");
    assert_eq!(msa(&acks[0]).0, "AA");
    for who in ["P5", "P6"] {
        let (_, body) = get(
            &doctor,
            &format!("/DiagnosticReport?patient.identifier={who}"),
        )
        .await;
        assert_eq!(fillers(&body), "-", "{who}");
    }

    // Observations: the current one of each report, never one of a replaced version.
    let (status, body) = get(&doctor, &format!("/Observation?{p1}")).await;
    assert_eq!(status, 200);
    let b: Json = serde_json::from_slice(&body).expect("JSON");
    let mut values: Vec<f64> = b["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .filter_map(|e| e["resource"]["valueQuantity"]["value"].as_f64())
        .collect();
    values.sort_by(f64::total_cmp);
    assert_eq!(values, vec![4.5, 5.2]);
    let (_, body) = get(
        &doctor,
        &format!("/Observation?{p1}&code=2345-7&date=2025-03-05"),
    )
    .await;
    let b: Json = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(b["total"], 1);
    if let Some(python) = validator() {
        let r = validate_texts(&python, &[String::from_utf8(body).expect("UTF-8")]);
        assert!(r[0].is_ok(), "{r:?}");
    }

    // What the server cannot do is a 400 that names the parameter, never its value.
    for (q, names) in [
        ("/DiagnosticReport", "patient.identifier"),
        ("/DiagnosticReport?code=2345-7", "patient.identifier"),
        ("/DiagnosticReport?patient.identifier=P1&_count=5", "_count"),
        ("/Observation?patient.identifier=P1&date=yesterday", "date"),
        ("/Observation?patient.identifier=P1&date=2025-02-30", "date"),
        (
            "/Observation?patient.identifier=P1,P2",
            "patient.identifier",
        ),
    ] {
        let (status, body) = get(&doctor, q).await;
        let oo: Json = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(status, 400, "{q}: {oo}");
        let text = oo["issue"][0]["diagnostics"].as_str().unwrap_or("");
        assert!(text.starts_with(names), "{q}: {text}");
        assert!(
            !text.contains("P1") && !text.contains("yesterday"),
            "{text}"
        );
    }
    let a = doctor
        .send(
            http::Method::DELETE,
            "/Observation?patient.identifier=P1",
            "application/fhir+json",
            Vec::new(),
        )
        .await
        .expect("an answer");
    assert_eq!(a.status, 405);
}
