//! FHIR ingest over real HTTPS with mutual TLS (the committed development PKI): a FHIR order
//! and a FHIR result are routed like their HL7 twins, to the same destinations, after the
//! same sender checks; a retransmission is not delivered twice; what cannot be carried or is
//! not allowed is answered with an OperationOutcome that names elements, never values, and
//! is kept and journalled. Answers are checked by PyPI `fhir.resources` (see
//! `common::fhir`), and one order is posted by curl, a client nobody here wrote.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::fhir::{validate_texts, validator};
use common::*;
use labroute::hl7::Message;
use labroute::store::audit::AuditFilter;
use serde_json::{Value as Json, json};

const WAIT: Duration = Duration::from_secs(10);

async fn start() -> Harness {
    Harness::start(|r| {
        tls_listeners(&r).replace("[engine]\n", "[engine]\nmax_frame_bytes = 200000\n")
            + &dev_tls_section()
            + &example_systems()
            + "[fhir]\nbind = \"127.0.0.1:0\"\n"
    })
    .await
}

fn client(h: &Harness, system: &str) -> labroute::https::Client {
    let c = dev_certs();
    let tls = client_tls(
        &c.join("ca.pem"),
        Some((
            &c.join(format!("{system}.pem")),
            &c.join(format!("{system}.key")),
        )),
    )
    .expect("client TLS");
    https_client(h.server.fhir.expect("a FHIR endpoint"), tls)
}

/// Posts a body; the status and the answer (an OperationOutcome, checked to be one).
async fn post(c: &labroute::https::Client, body: &[u8]) -> (u16, Json) {
    post_as(c, "application/fhir+json", body).await
}

async fn post_as(c: &labroute::https::Client, media: &str, body: &[u8]) -> (u16, Json) {
    let a = c
        .send(http::Method::POST, "/", media, body.to_vec())
        .await
        .expect("an answer");
    assert_eq!(a.content_type, "application/fhir+json");
    let v: Json = serde_json::from_slice(&a.body).expect("JSON");
    assert_eq!(v["resourceType"], "OperationOutcome", "{v}");
    (a.status, v)
}

fn diagnostics(oo: &Json) -> String {
    oo["issue"]
        .as_array()
        .expect("issues")
        .iter()
        .map(|i| i["diagnostics"].as_str().unwrap_or("").to_owned())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn patient(authority: &str, ipp: &str) -> Json {
    json!({"fullUrl": "urn:uuid:0d3c1b52-0000-4000-8000-000000000001",
           "resource": {"resourceType": "Patient",
                        "identifier": [{"value": ipp, "assigner": {"display": authority},
                                        "type": {"coding": [{"code": "PI"}]}}],
                        "name": [{"family": "SECRET-NAME", "given": ["Ana"]}],
                        "birthDate": "1990-05-06", "gender": "female"},
           "request": {"method": "POST", "url": "Patient"}})
}

fn service_request(placer: &str, namespace: &str) -> Json {
    json!({"fullUrl": "urn:uuid:0d3c1b52-0000-4000-8000-000000000002",
           "resource": {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                        "identifier": [{"type": {"coding": [{"code": "PLAC"}]}, "value": placer,
                                        "assigner": {"display": namespace}}],
                        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
                        "subject": {"reference": "urn:uuid:0d3c1b52-0000-4000-8000-000000000001"}},
           "request": {"method": "POST", "url": "ServiceRequest"}})
}

/// An order from an establishment's DPI (its IPP authority and placer namespace).
fn order(id: &str, authority: &str, namespace: &str, placer: &str) -> Json {
    json!({"resourceType": "Bundle", "type": "transaction",
           "identifier": {"value": id},
           "entry": [patient(authority, "IPP-1"), service_request(placer, namespace)]})
}

/// A result answering a placer order, with no other establishment evidence.
fn result(id: &str, namespace: &str, placer: &str, value: f64) -> Json {
    json!({"resourceType": "Bundle", "type": "transaction",
    "identifier": {"value": id},
    "timestamp": "2025-03-01T10:00:00+01:00",
    "entry": [
        patient("", "X"),
        service_request(placer, namespace),
        {"fullUrl": "urn:uuid:0d3c1b52-0000-4000-8000-000000000003",
         "resource": {"resourceType": "DiagnosticReport", "status": "final",
                      "identifier": [{"type": {"coding": [{"code": "FILL"}]}, "value": format!("F{placer}"), "assigner": {"display": "LAB"}}],
                      "basedOn": [{"reference": "urn:uuid:0d3c1b52-0000-4000-8000-000000000002"}],
                      "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                      "subject": {"reference": "urn:uuid:0d3c1b52-0000-4000-8000-000000000001"},
                      "result": [{"reference": "urn:uuid:0d3c1b52-0000-4000-8000-000000000004"}]},
         "request": {"method": "POST", "url": "DiagnosticReport"}},
        {"fullUrl": "urn:uuid:0d3c1b52-0000-4000-8000-000000000004",
         "resource": {"resourceType": "Observation", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                      "subject": {"reference": "urn:uuid:0d3c1b52-0000-4000-8000-000000000001"},
                      "valueQuantity": {"value": value, "unit": "mmol/L"}},
         "request": {"method": "POST", "url": "Observation"}}
    ]})
}

fn bytes(j: &Json) -> Vec<u8> {
    j.to_string().into_bytes()
}

#[tokio::test]
async fn a_fhir_order_and_result_are_routed_like_their_hl7_twins_once() {
    let h = start().await;
    let dpi = client(&h, "dpi-es1");
    let sil = client(&h, "sil");

    let (status, oo) = post(
        &dpi,
        &bytes(&order("FO-1", "CHNORD-IPP", "DPI-CHNORD", "CMD-1")),
    )
    .await;
    assert_eq!(status, 201, "{oo}");
    assert!(diagnostics(&oo).contains("for ES1"), "{oo}");
    assert!(h.lab.wait_for(1, WAIT).await, "the order reaches the lab");
    let got = h.lab.messages();
    let m = Message::parse(&got[0]).expect("the lab gets HL7 v2");
    assert_eq!(m.text("MSH-9.2"), "O33");
    assert_eq!(
        m.text("MSH-3"),
        "dpi-es1",
        "the sender is the certificate's system"
    );
    assert_eq!(m.text("ORC-2"), "CMD-1^DPI-CHNORD");

    // The result answers the order by its placer number only, as its HL7 twin would.
    let res = bytes(&result("FR-1", "DPI-CHNORD", "CMD-1", 5.4));
    let (status, oo) = post(&sil, &res).await;
    assert_eq!(status, 201, "{oo}");
    assert!(diagnostics(&oo).contains("for ES1"), "{oo}");
    assert!(
        h.es1.wait_for(1, WAIT).await,
        "the result reaches ES1's record"
    );
    let got = h.es1.messages();
    let m = Message::parse(&got[0]).expect("ES1 gets HL7 v2");
    assert_eq!(m.text("MSH-9"), "ORU^R01^ORU_R01");
    assert_eq!(m.text("MSH-7"), "20250301100000+0100", "Bundle.timestamp");
    assert_eq!(m.text("OBX-5"), "5.4");
    // The same result over MLLP goes where the FHIR one went.
    let ack = tls_send(
        h.sil(),
        Some((
            &dev_certs().join("ca.pem"),
            &dev_certs().join("sil.pem"),
            &dev_certs().join("sil.key"),
        )),
        &result_for_order("ES1", "HL7-R-1", "CMD-1", "5.4"),
    )
    .await
    .expect("ACK");
    assert_eq!(msa(&ack).0, "AA");
    assert!(
        h.es1.wait_for(2, WAIT).await,
        "the HL7 twin reaches ES1 too"
    );

    // A retransmission is answered 200 and not delivered again; the same identifier with
    // other content is refused.
    let (status, oo) = post(&sil, &res).await;
    assert_eq!(status, 200, "{oo}");
    assert!(diagnostics(&oo).contains("already received"), "{oo}");
    let (status, oo) = post(&sil, &bytes(&result("FR-1", "DPI-CHNORD", "CMD-1", 9.9))).await;
    assert_eq!(status, 409, "{oo}");
    // A later message on the same queue arrives after anything sent before it.
    let (status, _) = post(&sil, &bytes(&result("FR-2", "DPI-CHNORD", "CMD-1", 6.1))).await;
    assert_eq!(status, 201);
    assert!(h.es1.wait_for(3, WAIT).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.es1.count(), 3, "the retransmission was not delivered");
    assert_eq!(h.es2.count(), 0, "nothing reached ES2");
    assert_eq!(h.lab.count(), 1);

    // A result nothing identifies is held, not guessed.
    let (status, oo) = post(&sil, &bytes(&result("FR-3", "ELSEWHERE", "CMD-9", 1.0))).await;
    assert_eq!(status, 202, "{oo}");
    assert_eq!(
        h.server.store.store().counts().expect("counts").quarantine,
        1
    );
}

#[tokio::test]
async fn what_is_not_allowed_or_cannot_be_carried_is_refused_kept_and_journalled() {
    let h = start().await;
    let dpi2 = client(&h, "dpi-es2");
    let dpi1 = client(&h, "dpi-es1");
    let mut answers = Vec::new();

    // ES2's DPI may not order for ES1; a DPI may not send results.
    let (status, oo) = post(
        &dpi2,
        &bytes(&order("FO-X", "CHNORD-IPP", "DPI-CHNORD", "CMD-X")),
    )
    .await;
    assert_eq!(status, 403, "{oo}");
    answers.push(oo);
    let (status, oo) = post(&dpi1, &bytes(&result("FR-X", "DPI-CHNORD", "CMD-X", 1.0))).await;
    assert_eq!(status, 403, "{oo}");
    answers.push(oo);

    // An Observation no report names would be lost: 422 naming it, never its value.
    let mut lost = result("FR-L", "DPI-CHNORD", "CMD-1", 1.0);
    lost["entry"][2]["resource"]
        .as_object_mut()
        .expect("report")
        .remove("result");
    let (status, oo) = post(&dpi1, &bytes(&lost)).await;
    assert_eq!(status, 422, "{oo}");
    assert_eq!(
        oo["issue"][0]["expression"][0], "Bundle.entry[3].resource",
        "{oo}"
    );
    answers.push(oo);
    // An empty array is not FHIR JSON (and fhirbolt's reader panics on one): 400 naming it.
    lost["entry"][2]["resource"]["result"] = json!([]);
    let (status, oo) = post(&dpi1, &bytes(&lost)).await;
    assert_eq!(status, 400, "{oo}");
    assert_eq!(
        oo["issue"][0]["expression"][0], "Bundle.entry[2].resource.result",
        "{oo}"
    );
    answers.push(oo);
    let (status, oo) = post(&dpi1, b"{not json").await;
    assert_eq!(status, 400, "{oo}");
    answers.push(oo);
    let (status, oo) = post_as(&dpi1, "text/plain", b"MSH|^~\\&|").await;
    assert_eq!(status, 415, "{oo}");
    let big = vec![b' '; 300_000];
    let (status, oo) = post(&dpi1, &big).await;
    assert_eq!(status, 413, "{oo}");
    answers.push(oo);
    for a in &answers {
        assert!(!a.to_string().contains("SECRET"), "{a}");
    }
    let a = dpi1
        .send(
            http::Method::DELETE,
            "/",
            "application/fhir+json",
            Vec::new(),
        )
        .await
        .expect("answer");
    assert_eq!(a.status, 405);
    let a = dpi1
        .send(
            http::Method::GET,
            "/Patient",
            "application/fhir+json",
            Vec::new(),
        )
        .await
        .expect("answer");
    assert_eq!(a.status, 404);
    assert_eq!(h.lab.count() + h.es1.count() + h.es2.count(), 0);

    // Each refused Bundle is stored and journalled under the certificate's system.
    let store = h.server.store.store();
    let refused = labroute::store::audit::query(
        store,
        &AuditFilter {
            event: Some("refused".into()),
            ..Default::default()
        },
    )
    .expect("journal");
    let from_fhir: Vec<_> = refused
        .iter()
        .filter(|e| e.detail["listener"] == "fhir")
        .collect();
    assert_eq!(from_fhir.len(), 5, "{refused:?}");
    let actors: Vec<_> = from_fhir
        .iter()
        .filter_map(|e| e.actor.as_deref())
        .collect();
    assert_eq!(
        actors,
        ["dpi-es2", "dpi-es1", "dpi-es1", "dpi-es1", "dpi-es1"]
    );
    for e in &from_fhir {
        let seq = e.message.expect("a message");
        assert!(store.raw(seq).expect("read").is_some(), "kept for review");
    }

    // A client without a certificate gets no session.
    let c = dev_certs();
    let anonymous = tls_send_no_cert(h.server.fhir.expect("fhir"), &c.join("ca.pem")).await;
    assert!(anonymous.is_err());

    // fhir.resources accepts every OperationOutcome and the CapabilityStatement.
    let cap = dpi1
        .send(
            http::Method::GET,
            "/metadata",
            "application/fhir+json",
            Vec::new(),
        )
        .await
        .expect("answer");
    assert_eq!(cap.status, 200);
    let Some(python) = validator() else {
        return;
    };
    let mut texts: Vec<String> = answers.iter().map(Json::to_string).collect();
    texts.push(String::from_utf8_lossy(&cap.body).into_owned());
    for (i, r) in validate_texts(&python, &texts).into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("{}: rejected: {e}", texts[i]));
    }
}

/// A TLS client with the right CA but no client certificate: an HTTP request's answer.
async fn tls_send_no_cert(addr: std::net::SocketAddr, ca: &std::path::Path) -> Result<u16, String> {
    let c = https_client(addr, client_tls(ca, None)?);
    c.send(
        http::Method::GET,
        "/metadata",
        "application/fhir+json",
        Vec::new(),
    )
    .await
    .map(|a| a.status)
    .map_err(|e| e.to_string())
}

/// curl (Debian), a client nobody here wrote, posts an order with its client certificate.
#[tokio::test]
async fn curl_posts_an_order_over_mutual_tls() {
    let curl = std::process::Command::new("curl").arg("--version").output();
    if !curl.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var("CI").is_err(),
            "CI must have curl (see .ci/run)"
        );
        eprintln!("SKIPPED: curl not found");
        return;
    }
    let h = start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let body: PathBuf = dir.path().join("order.json");
    std::fs::write(
        &body,
        bytes(&order("FO-C", "CHSUD-IPP", "DPI-CHSUD", "CMD-C")),
    )
    .expect("write");
    let c = dev_certs();
    let url = format!("https://localhost:{}/", h.server.fhir.expect("fhir").port());
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
    ])
    .arg("--cacert")
    .arg(c.join("ca.pem"))
    .arg("--cert")
    .arg(c.join("dpi-es2.pem"))
    .arg("--key")
    .arg(c.join("dpi-es2.key"))
    .args(["-H", "Content-Type: application/fhir+json"])
    .arg("--data-binary")
    .arg(format!("@{}", body.display()))
    .arg(&url);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let (json, code) = text.rsplit_once('\n').expect("body and status");
    assert_eq!(
        code,
        "201",
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(json.contains("for ES2"), "{json}");
    assert!(h.lab.wait_for(1, WAIT).await);
}
