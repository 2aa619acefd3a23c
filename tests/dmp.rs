//! The DMP feed against a real HTTPS receiver (`tests/py/mhd_receiver.py`: client
//! certificate required, every Bundle validated by PyPI `fhir.resources`): a result is
//! published when everything allows it, with the establishment's certificate and its
//! confidentiality flags as security labels; for each reason not to (opposition, unqualified
//! identity, closed DMP, `DESTDMP=N`, establishment not enabled) it is not sent, and the
//! reason is journalled and counted. The establishment's own record gets every result
//! regardless.

mod common;

use std::path::Path;
use std::time::Duration;

use common::fhir::validator;
use common::*;
use labroute::store::audit::AuditFilter;
use serde_json::Value as Json;

/// The receiver, killed on drop.
struct Recipient {
    child: std::process::Child,
    port: u16,
    out: std::path::PathBuf,
}

impl Drop for Recipient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Recipient {
    fn start(python: &Path, pki: &Path, out: std::path::PathBuf) -> Recipient {
        let (ca, cert, key) = (
            pki.join("ca.pem"),
            pki.join("server.pem"),
            pki.join("server.key"),
        );
        let (child, port) = python_peer(
            python,
            "mhd_receiver.py",
            &[
                "--ca".as_ref(),
                ca.as_os_str(),
                "--cert".as_ref(),
                cert.as_os_str(),
                "--key".as_ref(),
                key.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
            ],
        );
        Recipient { child, port, out }
    }

    fn received(&self) -> Vec<Json> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    }
}

const CDA: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ClinicalDocument xmlns=\"urn:hl7-org:v3\"><title>CR de biologie (fictif)</title></ClinicalDocument>";

/// A CR-BIO result for ES1 (or ES2) in the French CDA-in-HL7 form: INS and IPP, PID-32,
/// the CDA in an ED OBX, the MetaDMPMSS flags given.
fn cr_bio(es: &str, ctrl: &str, ipp: &str, pid32: &str, flags: &[(&str, &str)]) -> Vec<u8> {
    use base64::Engine;
    let auth = if es == "ES1" {
        "CHNORD-IPP"
    } else {
        "CHSUD-IPP"
    };
    let mut pid = vec![String::new(); 33];
    pid[0] = "PID".into();
    pid[3] = format!(
        "248098765432112^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS~{ipp}^^^{auth}^PI"
    );
    pid[5] = "FICTIF^CAMILLE^^^^^L".into();
    pid[7] = "19800101".into();
    pid[8] = "F".into();
    pid[32] = pid32.into();
    let doc = base64::engine::general_purpose::STANDARD.encode(CDA);
    let mut m = format!(
        "MSH|^~\\&|SIL|LAB|DPI||20250301100000||ORU^R01^ORU_R01|{ctrl}|P|2.5|||||FRA|UNICODE UTF-8|||2.1^CISIS_CDA_HL7_V2\r{}\r\
OBR|1||F-{ctrl}^LAB|11502-2^CR d'examens biologiques^LN|||20250301080000||||||||||||||||||F\r\
OBX|1|ED|11502-2^CR d'examens biologiques^LN||^TEXT^XML^Base64^{doc}||||||F\r",
        pid.join("|")
    );
    for (i, (flag, v)) in flags.iter().enumerate() {
        m.push_str(&format!(
            "OBX|{}|CE|{flag}^{flag}^MetaDMPMSS||{v}^^expandedYes-NoIndicator||||||F\r",
            i + 2
        ));
    }
    m.into_bytes()
}

/// `cr_bio`'s message as a later version of report `of` (OBR-3 `F-<of>`), with report
/// status `status` (OBR-25) and, for `D`, each document's status (OBX-11) too.
fn version_of(m: Vec<u8>, ctrl: &str, of: &str, status: &str) -> Vec<u8> {
    let mut m = String::from_utf8(m)
        .expect("utf8")
        .replace(&format!("|F-{ctrl}^LAB|"), &format!("|F-{of}^LAB|"))
        .replace("||F\rOBX|1|ED", &format!("||{status}\rOBX|1|ED"));
    if status == "D" {
        m = m.replacen("||||||F\r", "||||||D\r", 1);
    }
    m.into_bytes()
}

/// Patient administration from ES1's DPI with a ZFA (DMP status, opposition).
fn adt(ctrl: &str, ipp: &str, zfa1: &str, zfa9: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|DPI|CHNORD|SIL|LAB|20250301070000||ADT^A31^ADT_A05|{ctrl}|P|2.5|||||FRA|UNICODE UTF-8\r\
EVN|A31|20250301070000\rPID|||{ipp}^^^CHNORD-IPP^PI||FICTIF^CAMILLE\rPV1|1|N\r\
ZFA|{zfa1}|20240101|||||||{zfa9}|20240101\r"
    )
    .into_bytes()
}

/// An instance whose ES1 feeds the DMP (the receiver), ES2 not; application ACKs of the
/// `sil` listener go to the lab.
struct Setup {
    h: Harness,
    recipient: Recipient,
    pki: tempfile::TempDir,
}

async fn setup(python: &Path) -> Setup {
    let pki = pki_dir("dmp test CA", &["es1-dmp", "es2-dmp"]);
    let recipient = Recipient::start(python, pki.path(), pki.path().join("received.jsonl"));
    let p = pki.path().to_path_buf();
    let port = recipient.port;
    let h = Harness::start(move |r| {
        r.replacen(
            "[[listener]]\nname = \"dpi\"",
            "application_acks_to = \"sil\"\n[[listener]]\nname = \"dpi\"",
            1,
        )
        .replace(
            "record = \"dpi-es1\"\n",
            &format!(
                "record = \"dpi-es1\"\ndmp = {{ cert = \"{}\", key = \"{}\" }}\n",
                p.join("es1-dmp.pem").display(),
                p.join("es1-dmp.key").display()
            ),
        ) + &tls_section(
            &p.join("ca.pem"),
            &p.join("server.pem"),
            &p.join("server.key"),
        ) + &format!(
            "[dmp]\nurl = \"https://127.0.0.1:{port}/fhir\"\nserver_name = \"localhost\"\nbackoff_initial_ms = 50\nbackoff_max_ms = 100\n"
        )
    })
    .await;
    Setup { h, recipient, pki }
}

#[tokio::test]
async fn results_reach_the_dmp_only_when_allowed_and_every_withholding_is_journalled() {
    let Some(python) = validator() else {
        return;
    };
    let Setup {
        h,
        recipient,
        pki: _pki,
    } = setup(&python).await;

    let flags_yes = [("DESTDMP", "Y"), ("MASQUE_PS", "N")];
    let msgs: Vec<(&str, Vec<u8>)> = vec![
        ("ADT-OPP", adt("ADT-OPP", "P-OPP", "ACTIF", "IO")),
        ("ADT-CLOSED", adt("ADT-CLOSED", "P-CLOSED", "FERME", "INO")),
        ("ADT-OK", adt("ADT-OK", "P-OK", "ACTIF", "INO")),
        (
            "R-OK",
            cr_bio(
                "ES1",
                "R-OK",
                "P-OK",
                "VALI",
                &[("DESTDMP", "Y"), ("ACK_RECEPTION", "Y")],
            ),
        ),
        (
            "R-MASKED",
            cr_bio(
                "ES1",
                "R-MASKED",
                "P-OK",
                "VALI",
                &[("DESTDMP", "Y"), ("MASQUE_PS", "Y")],
            ),
        ),
        ("R-OPP", cr_bio("ES1", "R-OPP", "P-OPP", "VALI", &flags_yes)),
        (
            "R-CLOSED",
            cr_bio(
                "ES1",
                "R-CLOSED",
                "P-CLOSED",
                "VALI",
                &[("DESTDMP", "Y"), ("ACK_RECEPTION", "Y")],
            ),
        ),
        (
            "R-PROV",
            cr_bio("ES1", "R-PROV", "P-OK", "PROV", &flags_yes),
        ),
        (
            "R-NODMP",
            cr_bio(
                "ES1",
                "R-NODMP",
                "P-OK",
                "VALI",
                &[("DESTDMP", "N"), ("ACK_RECEPTION", "Y")],
            ),
        ),
        ("R-ES2", cr_bio("ES2", "R-ES2", "P-ES2", "VALI", &flags_yes)),
    ];
    for (ctrl, m) in &msgs {
        let acks = send_all(h.sil(), std::slice::from_ref(m))
            .await
            .expect("ACK");
        assert_eq!(msa(&acks[0]).0, "AA", "{ctrl}");
    }

    // Every result settles at the DMP destination: delivered or withheld.
    let store = h.server.store.store();
    let settled = |event: &str| {
        labroute::store::audit::query(
            store,
            &AuditFilter {
                event: Some(event.into()),
                ..Default::default()
            },
        )
        .expect("journal")
        .into_iter()
        .filter(|e| e.actor.as_deref() == Some("dmp"))
        .collect::<Vec<_>>()
    };
    eventually(|| settled("delivered").len() + settled("withheld").len() >= 7).await;
    let control_of = |seq: u64| {
        store
            .record(seq)
            .expect("record")
            .expect("exists")
            .control_id
    };
    let mut delivered: Vec<String> = settled("delivered")
        .iter()
        .map(|e| control_of(e.message.expect("seq")))
        .collect();
    delivered.sort();
    assert_eq!(delivered, ["R-MASKED", "R-OK"]);
    let mut withheld: Vec<(String, String)> = settled("withheld")
        .iter()
        .map(|e| {
            (
                control_of(e.message.expect("seq")),
                e.detail["reason"].as_str().expect("reason").to_owned(),
            )
        })
        .collect();
    withheld.sort();
    assert_eq!(
        withheld,
        [
            ("R-CLOSED".to_owned(), "dmp_closed".to_owned()),
            ("R-ES2".into(), "not_enabled".into()),
            ("R-NODMP".into(), "destdmp_no".into()),
            ("R-OPP".into(), "opposition".into()),
            ("R-PROV".into(), "identity_not_qualified".into()),
        ]
    );
    assert!(settled("dead").is_empty(), "{:?}", settled("dead"));

    // What the receiver got: valid ITI-65 Bundles, sent with ES1's certificate.
    let got = recipient.received();
    assert_eq!(got.len(), 2, "{got:?}");
    for g in &got {
        assert_eq!(g["ok"], true, "{g}");
        assert_eq!(g["client"][0], "urn:labroute:system:es1-dmp", "{g}");
        assert_eq!(g["path"], "/fhir");
        assert_eq!(g["formats"][0], "text/xml", "the CDA is the document: {g}");
        assert!(
            g["profiles"].as_array().expect("profiles").iter().any(|p| p
                .as_str()
                .unwrap_or("")
                .ends_with("pdsm-comprehensive-document-reference")),
            "{g}"
        );
    }
    let labels: Vec<Vec<&str>> = got
        .iter()
        .map(|g| {
            g["labels"]
                .as_array()
                .expect("labels")
                .iter()
                .filter_map(Json::as_str)
                .collect()
        })
        .collect();
    assert!(labels.contains(&vec!["N"]), "{labels:?}");
    assert!(labels.contains(&vec!["MASQUE_PS", "N"]), "{labels:?}");

    // The record systems get every result: the DMP gate is the DMP's alone.
    assert!(h.es1.wait_for(6, Duration::from_secs(10)).await);
    assert!(h.es2.wait_for(1, Duration::from_secs(10)).await);

    // The senders that asked (ACK_RECEPTION=Y) get the DMP's outcome as a ZAM^Z01, in the
    // ANS example's form; not R-NODMP, which did not ask for the DMP.
    // (The lab also gets the three ADTs.)
    assert!(h.lab.wait_for(5, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut zams: Vec<Vec<String>> = h
        .lab
        .messages()
        .iter()
        .filter(|m| !m.windows(5).any(|w| w == b"|ADT^"))
        .map(|m| {
            String::from_utf8_lossy(m)
                .split('\r')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect();
    zams.sort_by_key(|z| z[2].clone());
    assert_eq!(zams.len(), 2, "{zams:?}");
    for z in &zams {
        assert!(
            z[0].contains("|ZAM^Z01^ZAM_Z01|") && z[0].ends_with("|2.1^CISIS_CDA_HL7_V2"),
            "{z:?}"
        );
        assert!(
            z[0].starts_with("MSH|^~\\&|DPI||SIL|LAB|"),
            "sender and receiver swapped: {z:?}"
        );
        assert_eq!(z[1].split('|').next(), Some("EVN"));
    }
    assert_eq!(
        zams[0][2],
        "OBX|1|CWE|ACK_RECEPTION_DMP^Accusé de réception DMP^AckMetierZAM|R-CLOSED|N^^expandedYes-NoIndicator||||||F|"
    );
    assert_eq!(
        zams[0][3],
        "ERR|||207^Application internal error^messageErrorCondition|E|DMPClosed^DMP fermé^DMPERRORCODE"
    );
    assert_eq!(
        zams[1][2],
        "OBX|1|CWE|ACK_RECEPTION_DMP^Accusé de réception DMP^AckMetierZAM|R-OK|Y^^expandedYes-NoIndicator||||||F|"
    );
    assert_eq!(zams[1].len(), 3, "no ERR when accepted: {:?}", zams[1]);

    // Counted by reason, for Prometheus.
    let text = labroute::telemetry::render().expect("metrics");
    for reason in [
        "opposition",
        "identity_not_qualified",
        "dmp_closed",
        "destdmp_no",
        "not_enabled",
    ] {
        assert!(
            text.contains(&format!(
                "labroute_dmp_withheld_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {text}"
        );
    }
}

/// A result the DMP feed cannot take (a correction of a report labroute never published) is
/// a dead letter at the DMP; the sender's application ACK (MSH-16) speaks for its record system only: AA once
/// ES1's record has it, no AE for the DMP.
#[tokio::test]
async fn a_dmp_dead_letter_leaves_the_application_ack_to_the_record_system() {
    let Some(python) = validator() else {
        return;
    };
    let Setup { h, pki: _pki, .. } = setup(&python).await;
    let correction =
        String::from_utf8(cr_bio("ES1", "R-CORR", "P-OK", "VALI", &[("DESTDMP", "Y")]))
            .expect("utf8")
            .replace("|P|2.5|||||FRA|", "|P|2.5|||AL|AL|FRA|")
            .replace("||F\rOBX|1|ED", "||C\rOBX|1|ED")
            .into_bytes();
    let acks = send_all(h.sil(), &[correction]).await.expect("ACK");
    assert_eq!(msa(&acks[0]).0, "CA");
    let store = h.server.store.store();
    eventually(|| !store.dead_letters().expect("dead").is_empty()).await;
    let dead = store.dead_letters().expect("dead");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "dmp");
    assert!(dead[0].1.reason.contains("nothing to replace"), "{dead:?}");
    assert!(h.es1.wait_for(1, Duration::from_secs(10)).await);
    assert!(h.lab.wait_for(1, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got: Vec<(String, String)> = h.lab.messages().iter().map(|m| msa(m)).collect();
    assert_eq!(got, [("AA".to_owned(), "R-CORR".to_owned())]);
}

/// A report's life in the DMP: published, replaced by its correction (`relatesTo` naming the
/// DocumentReference the DMP created, which the receiver then marks superseded), deleted
/// (PDSm logical deletion of the current version). A correction naming another patient is
/// not sent. Every step is journalled with our document identifiers; the register follows.
#[tokio::test]
async fn a_report_is_published_replaced_and_deleted_in_the_dmp() {
    let Some(python) = validator() else {
        return;
    };
    let Setup {
        h,
        recipient,
        pki: _pki,
    } = setup(&python).await;
    let flags = [("DESTDMP", "Y")];
    let store = h.server.store.store();
    let delivered = || {
        labroute::store::audit::query(
            store,
            &AuditFilter {
                event: Some("delivered".into()),
                ..Default::default()
            },
        )
        .expect("journal")
        .into_iter()
        .filter(|e| e.actor.as_deref() == Some("dmp"))
        .map(|e| e.detail)
        .collect::<Vec<_>>()
    };
    let send_and_settle = |m: Vec<u8>, n: usize| {
        let h = &h;
        let delivered = &delivered;
        async move {
            let acks = send_all(h.sil(), &[m]).await.expect("ACK");
            assert_eq!(msa(&acks[0]).0, "AA");
            eventually(|| delivered().len() + store.dead_letters().expect("dead").len() >= n).await;
        }
    };
    send_and_settle(adt("ADT-1", "P-OK", "ACTIF", "INO"), 0).await;

    // 1. Published.
    send_and_settle(cr_bio("ES1", "V1", "P-OK", "VALI", &flags), 1).await;
    let registered = store
        .dmp_documents("ES1", "LAB\u{1f}F-V1")
        .expect("register");
    assert_eq!(
        registered.len(),
        1,
        "{registered:?} {:?} {:?}",
        delivered(),
        recipient.received()
    );
    let v1 = registered[0].1.clone();
    assert_eq!(v1.location.as_deref(), Some("DocumentReference/2"));

    // 2. The correction replaces it: relatesTo names the DMP's DocumentReference.
    let v2 = version_of(cr_bio("ES1", "V2", "P-OK", "VALI", &flags), "V2", "V1", "C");
    send_and_settle(v2, 2).await;
    let got = recipient.received();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1]["ok"], true, "{}", got[1]);
    assert_eq!(got[1]["replaced"][0], "DocumentReference/2", "{}", got[1]);
    let registered = store
        .dmp_documents("ES1", "LAB\u{1f}F-V1")
        .expect("register");
    assert_eq!(registered.len(), 1);
    let v2 = registered[0].1.clone();
    assert_ne!(v2.master_id, v1.master_id);
    assert_eq!(got[1]["masters"][0], v2.master_id.as_str());

    // 3. A "correction" naming another patient is a dead letter, not sent.
    let other = String::from_utf8(version_of(
        cr_bio("ES1", "V3", "P-OK", "VALI", &flags),
        "V3",
        "V1",
        "C",
    ))
    .expect("utf8")
    .replace("248098765432112", "180017512345612")
    .into_bytes();
    send_and_settle(other, 3).await;
    let dead = store.dead_letters().expect("dead");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].1.reason.contains("another patient"), "{dead:?}");
    assert_eq!(recipient.received().len(), 2);

    // 4. The deletion deletes the current version (the correction), by our identifier.
    let del = version_of(cr_bio("ES1", "V4", "P-OK", "VALI", &flags), "V4", "V1", "D");
    send_and_settle(del, 4).await;
    let got = recipient.received();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[2]["kind"], "patch", "{}", got[2]);
    assert_eq!(got[2]["ok"], true, "{}", got[2]);
    assert_eq!(got[2]["master"], v2.master_id.as_str());
    assert_eq!(got[2]["path"], "/fhir/DocumentReference");
    assert!(
        store
            .dmp_documents("ES1", "LAB\u{1f}F-V1")
            .expect("register")
            .is_empty()
    );

    // The journal tells the story with our identifiers.
    let details = delivered();
    assert_eq!(details.len(), 3, "{details:?}");
    assert_eq!(
        details[0]["documents"][0]["published"],
        v1.master_id.as_str()
    );
    assert_eq!(
        details[1]["documents"][0]["replaced"],
        v1.master_id.as_str()
    );
    assert_eq!(details[1]["documents"][0]["by"], v2.master_id.as_str());
    assert_eq!(details[2]["documents"][0]["deleted"], v2.master_id.as_str());
}

/// An opposition recorded by an operator withholds the patient's results from the DMP, even
/// after an ADT whose ZFA-9 says "no opposition", until it is lifted; an operator outside the
/// establishment is refused, and the journal names the patient only by a reference.
#[tokio::test]
async fn an_operator_opposition_withholds_until_lifted() {
    use labroute::store::writer::{OperatorCommand, OperatorError, patient_ref};
    let Some(python) = validator() else {
        return;
    };
    let Setup {
        h,
        recipient,
        pki: _pki,
    } = setup(&python).await;
    let store = h.server.store.store();
    let flags = [("DESTDMP", "Y")];
    let opposition = |opposed| OperatorCommand::DmpOpposition {
        establishment: "ES1".into(),
        authority: "CHNORD-IPP".into(),
        id: "P-OK".into(),
        opposed,
    };
    let journal = || -> Vec<(String, Json)> {
        labroute::store::audit::query(store, &AuditFilter::default())
            .expect("journal")
            .into_iter()
            .filter(|e| e.actor.as_deref() == Some("dmp"))
            .map(|e| (e.event, e.detail))
            .collect()
    };
    let settled = |n: usize| async move {
        eventually(|| journal().len() >= n).await;
        journal()
    };

    // Out of scope: refused and journalled, without the patient's identifier.
    let es2_only = labroute::policy::Operator {
        name: "ops-es2".into(),
        scope: labroute::policy::OperatorScope::Establishments(
            [labroute::model::EstablishmentId::new("ES2")].into(),
        ),
    };
    let refused = h.server.store.operator(opposition(true), &es2_only).await;
    assert!(
        matches!(refused, Err(OperatorError::OutOfScope { .. })),
        "{refused:?}"
    );
    let ops = h
        .server
        .store
        .operator(opposition(true), &local_operator("ops"))
        .await
        .expect("recorded");
    assert!(ops.contains("no longer published"), "{ops}");
    let journal = serde_json::to_string(
        &labroute::store::audit::query(store, &AuditFilter::default()).expect("journal"),
    )
    .expect("json");
    assert!(!journal.contains("P-OK"), "{journal}");
    let pref = patient_ref("ES1", "CHNORD-IPP\u{1f}P-OK");
    assert_eq!(
        journal.matches(&pref).count(),
        2,
        "refusal and action: {journal}"
    );

    // Withheld, even after the DPI says "no opposition".
    let sil = h.sil();
    let send = |m: Vec<u8>| async move {
        let acks = send_all(sil, &[m]).await.expect("ACK");
        assert_eq!(msa(&acks[0]).0, "AA");
    };
    send(cr_bio("ES1", "O-1", "P-OK", "VALI", &flags)).await;
    send(adt("ADT-INO", "P-OK", "ACTIF", "INO")).await;
    send(cr_bio("ES1", "O-2", "P-OK", "VALI", &flags)).await;
    let got = settled(2).await;
    assert_eq!(
        got,
        [
            (
                "withheld".to_owned(),
                serde_json::json!({"reason": "opposition"})
            ),
            (
                "withheld".to_owned(),
                serde_json::json!({"reason": "opposition"})
            ),
        ]
    );

    // Lifted: published again.
    h.server
        .store
        .operator(opposition(false), &local_operator("ops"))
        .await
        .expect("lifted");
    send(cr_bio("ES1", "O-3", "P-OK", "VALI", &flags)).await;
    let got = settled(3).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[2].0, "delivered", "{got:?}");
    assert_eq!(recipient.received().len(), 1);
}

/// A CDA-in-HL7 document (MDM) for ES1's patient P-OK: `trigger` T02 (new), T10
/// (replacement: TXA-13 names the replaced document), T04 with `D` (deletion).
fn mdm(ctrl: &str, trigger: &str, txa12: &str, txa13: &str, status: &str) -> Vec<u8> {
    let oru =
        String::from_utf8(cr_bio("ES1", ctrl, "P-OK", "VALI", &[("DESTDMP", "Y")])).expect("utf8");
    let pid = oru.split('\r').nth(1).expect("PID").to_owned();
    let obx = oru
        .split('\r')
        .find(|s| s.starts_with("OBX|1|ED"))
        .expect("ED")
        .replace(
            "11502-2^CR d'examens biologiques^LN",
            "11502-2^CR de biologie^LN",
        )
        .replace("||||||F", &format!("||||||{status}"));
    format!(
        "MSH|^~\\&|SIL|LAB|DPI||20250301100000||MDM^{trigger}^MDM_T02|{ctrl}|P|2.6|||||FRA|UNICODE UTF-8|||2.1^CISIS_CDA_HL7_V2\r\
EVN||20250301100000\r{pid}\rPV1|1|N\r\
TXA|1|11502-2|TEXT|20250301100000||||||||{txa12}^LAB|{txa13}||||LA\r{obx}\r\
OBX|2|CWE|DESTDMP^Destinataire DMP^MetaDMPMSS||Y^^HL70136||||||F\r"
    )
    .into_bytes()
}

/// A document's versions follow its TXA numbers: T10 replaces the document TXA-13 names (the
/// register moves to the new number), T04 `D` deletes the one TXA-12 names.
#[tokio::test]
async fn a_document_is_replaced_and_deleted_by_its_txa_numbers() {
    let Some(python) = validator() else {
        return;
    };
    let Setup {
        h,
        recipient,
        pki: _pki,
    } = setup(&python).await;
    let store = h.server.store.store();
    let sil = h.sil();
    let step = |m: Vec<u8>, n: usize| async move {
        let acks = send_all(sil, &[m]).await.expect("ACK");
        assert_eq!(
            msa(&acks[0]).0,
            "AA",
            "{:?}",
            String::from_utf8_lossy(&acks[0])
        );
        eventually(|| dmp_outcomes(store) >= n).await;
    };
    step(adt("ADT-1", "P-OK", "ACTIF", "INO"), 0).await;
    step(mdm("M1", "T02", "DOC-1", "", "F"), 1).await;
    step(mdm("M2", "T10", "DOC-2", "DOC-1^LAB", "C"), 2).await;
    let registered = |id: &str| {
        store
            .dmp_documents("ES1", &format!("TXA\u{1f}LAB\u{1f}{id}"))
            .expect("register")
            .len()
    };
    assert_eq!((registered("DOC-1"), registered("DOC-2")), (0, 1));
    step(mdm("M3", "T04", "DOC-2", "DOC-1^LAB", "D"), 3).await;
    let got = recipient.received();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|g| g["ok"] == true), "{got:?}");
    assert_eq!(got[1]["replaced"][0], "DocumentReference/2", "{}", got[1]);
    assert_eq!(got[2]["kind"], "patch");
    assert_eq!(
        got[2]["master"], got[1]["masters"][0],
        "the current version is deleted"
    );
    assert_eq!((registered("DOC-1"), registered("DOC-2")), (0, 0));
    assert!(store.dead_letters().expect("dead").is_empty());
}

/// DMP outcomes (delivered, dead) journalled so far.
fn dmp_outcomes(store: &labroute::store::Store) -> usize {
    labroute::store::audit::query(store, &AuditFilter::default())
        .expect("journal")
        .into_iter()
        .filter(|e| {
            e.actor.as_deref() == Some("dmp") && (e.event == "delivered" || e.event == "dead")
        })
        .count()
}

/// An establishment's DMP client certificate renewed on disk is used from the next
/// delivery on, without a restart (the receiver records the client certificate's SAN URI).
#[tokio::test]
async fn a_renewed_dmp_certificate_is_used_without_a_restart() {
    let Some(python) = validator() else {
        return;
    };
    let Setup { h, recipient, pki } = setup(&python).await;
    let store = h.server.store.store();
    let published = |n: usize| async move {
        eventually(|| dmp_outcomes(store) >= n).await;
        dmp_outcomes(store)
    };
    let flags = [("DESTDMP", "Y")];
    let acks = send_all(h.sil(), &[cr_bio("ES1", "R-OLD", "P-OK", "VALI", &flags)])
        .await
        .expect("ACK");
    assert_eq!(msa(&acks[0]).0, "AA");
    assert_eq!(published(1).await, 1);
    // The renewal: new files in place of the old (here, another certificate of the CA).
    for ext in ["pem", "key"] {
        std::fs::copy(
            pki.path().join(format!("es2-dmp.{ext}")),
            pki.path().join(format!("es1-dmp.{ext}")),
        )
        .expect("renew");
    }
    let acks = send_all(h.sil(), &[cr_bio("ES1", "R-NEW", "P-NEW", "VALI", &flags)])
        .await
        .expect("ACK");
    assert_eq!(msa(&acks[0]).0, "AA");
    assert_eq!(published(2).await, 2);
    let clients: Vec<Json> = recipient
        .received()
        .iter()
        .filter(|r| r["kind"] == "provide")
        .map(|r| r["client"].clone())
        .collect();
    assert_eq!(
        clients,
        [
            serde_json::json!(["urn:labroute:system:es1-dmp"]),
            serde_json::json!(["urn:labroute:system:es2-dmp"])
        ]
    );
}
