//! MSSanté against a real SMTP server (PyPI aiosmtpd, `tests/py/smtp_server.py`: TLS with
//! a client certificate required). A result reaches the practitioners the policy allows,
//! with the establishment's certificate; Python's `email` and `zipfile`
//! (`tests/py/read_mail.py`) open the mail and find the IHE XDM layout with the CDA byte
//! for byte. Every refusal (off the whitelist, unknown to the directory, not in care,
//! opposition, `MASQUE_PS`, `DESTMSSANTEPS=N`, establishment not enabled) sends nothing to
//! that recipient and is journalled with its reason; a server without TLS or with a
//! certificate from another CA never gets the mail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use labroute::admin::http::ClientError;
use labroute::store::audit::AuditFilter;
use labroute::store::writer::OperatorCommand;
use serde_json::Value as Json;

/// python3 with aiosmtpd, or `None` (said plainly) when absent.
fn python() -> Option<&'static str> {
    let ok = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "SKIPPED: python3 with `aiosmtpd` not found (pip install -r tests/python-requirements.txt)"
        );
    }
    ok.then_some("python3")
}

/// The SMTP server, killed on drop.
struct Smtp {
    child: std::process::Child,
    port: u16,
    out: PathBuf,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Smtp {
    /// `pki`: where `server.pem`/`server.key` are; `ca`: the CA client certificates must
    /// chain to.
    fn start(mode: &str, pki: &Path, ca: &Path, out: PathBuf, extra: &[&str]) -> Smtp {
        let (cert, key) = (pki.join("server.pem"), pki.join("server.key"));
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--mode".as_ref(),
            mode.as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
            "--cert".as_ref(),
            cert.as_os_str(),
            "--key".as_ref(),
            key.as_os_str(),
            "--ca".as_ref(),
            ca.as_os_str(),
        ];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let (child, port) = python_peer("python3", "smtp_server.py", &args);
        Smtp { child, port, out }
    }

    /// The mails received so far: (envelope and TLS facts, the mail as read by Python).
    fn received(&self) -> Vec<(Json, Json)> {
        let mut out = Vec::new();
        for n in 1.. {
            let json = self.out.join(format!("{n}.json"));
            let Ok(text) = std::fs::read_to_string(&json) else {
                break;
            };
            let envelope: Json = serde_json::from_str(&text).expect("envelope JSON");
            let read = Command::new("python3")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/read_mail.py"))
                .arg(self.out.join(format!("{n}.eml")))
                .output()
                .expect("read_mail runs");
            assert!(
                read.status.success(),
                "{}",
                String::from_utf8_lossy(&read.stderr)
            );
            out.push((
                envelope,
                serde_json::from_slice(&read.stdout).expect("mail JSON"),
            ));
        }
        out
    }
}

const CDA: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ClinicalDocument xmlns=\"urn:hl7-org:v3\"><title>CR de biologie (fictif)</title></ClinicalDocument>";
const INS: &str = "248098765432112";

/// A CR-BIO result of ES1 (or ES2): INS and IPP, the CDA in an ED OBX, PRT `RCT`
/// addresses, OBR-16 / OBR-28 RPPS, the MetaDMPMSS flags given.
fn result(
    es: &str,
    ctrl: &str,
    ipp: &str,
    ordering: &[&str],
    copies: &[&str],
    rct: &[&str],
    flags: &[(&str, &str)],
) -> Vec<u8> {
    use base64::Engine;
    let auth = if es == "ES1" {
        "CHNORD-IPP"
    } else {
        "CHSUD-IPP"
    };
    let doc = base64::engine::general_purpose::STANDARD.encode(CDA);
    let xcn = |r: &str| format!("{r}^DOC^A^^^^^^^^^^RPPS");
    let copies: Vec<String> = copies.iter().map(|c| xcn(c)).collect();
    let ordering: Vec<String> = ordering.iter().map(|c| xcn(c)).collect();
    let mut m = format!(
        "MSH|^~\\&|SIL|LAB|DPI||20250301100000||ORU^R01^ORU_R01|{ctrl}|P|2.5|||||FRA|UNICODE UTF-8|||2.1^CISIS_CDA_HL7_V2\r\
PID|||{INS}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS~{ipp}^^^{auth}^PI||FICTIF^CAMILLE||19800101|F||||||||||||||||||||||||VALI\r\
ORC|RE||F-{ctrl}^LAB|||||||||{}\r\
OBR|1||F-{ctrl}^LAB|11502-2^CR d'examens biologiques^LN|||20250301080000||||||||||||||||||F|||{}\r\
OBX|1|ED|11502-2^CR d'examens biologiques^LN||^TEXT^XML^Base64^{doc}||||||F\r",
        ordering.join("~"),
        copies.join("~")
    );
    for a in rct {
        m.push_str(&format!(
            "PRT||UC||RCT^^participation|||||||||||^^X.400^{a}\r"
        ));
    }
    m.push_str(
        "PRT||UC||REPLY^^participation|||||||||||^^X.400^secretariat@ch-nordville.mssante.fr\r",
    );
    for (i, (flag, v)) in flags.iter().enumerate() {
        m.push_str(&format!(
            "OBX|{}|CE|{flag}^{flag}^MetaDMPMSS||{v}^^expandedYes-NoIndicator||||||F\r",
            i + 2
        ));
    }
    m.into_bytes()
}

/// The directory: mailboxes in the FHIR form of the Annuaire Santé export.
fn directory() -> String {
    let meta = "https://interop.esante.gouv.fr/ig/fhir/annuaire/StructureDefinition/as-ext-mailbox-mss-metadata";
    let practitioner = |id: &str, rpps: &str, address: &str| {
        serde_json::json!({ "resource": {
            "resourceType": "Practitioner", "id": id,
            "identifier": [ { "system": "https://rpps.esante.gouv.fr", "value": rpps } ],
            "telecom": [ { "system": "email", "value": address, "extension": [
                { "url": meta, "extension": [
                    { "url": "type", "valueCodeableConcept": { "coding": [ { "code": "PER" } ] } },
                    { "url": "listeRouge", "valueBoolean": false } ] } ] } ]
        }})
    };
    let mut entries = vec![
        practitioner("copy", "10000000001", "dr.copy@medecin.mssante.fr"),
        practitioner(
            "offlist",
            "10000000002",
            "dr.offlist@other-operator.example",
        ),
        practitioner("ordering", "10000000005", "dr.ordering@medecin.mssante.fr"),
        practitioner("standing", "10000000077", "dr.standing@medecin.mssante.fr"),
    ];
    // The ordering provider inside ES1: his mailbox belongs to ES1 (FINESS 590000011).
    entries.push(
        serde_json::json!({ "resource": { "resourceType": "Practitioner", "id": "inside",
        "identifier": [ { "system": "https://rpps.esante.gouv.fr", "value": "10000000009" } ] } }),
    );
    entries.push(
        serde_json::json!({ "resource": { "resourceType": "Organization", "id": "chn",
        "identifier": [ { "system": "https://finess.esante.gouv.fr", "value": "590000011" } ] } }),
    );
    entries.push(serde_json::json!({ "resource": { "resourceType": "PractitionerRole", "id": "r",
        "practitioner": { "reference": "Practitioner/inside" },
        "organization": { "reference": "Organization/chn" },
        "telecom": [ { "system": "email", "value": "dr.inside@ch-nordville.mssante.fr", "extension": [
            { "url": meta, "extension": [
                { "url": "type", "valueCodeableConcept": { "coding": [ { "code": "PER" } ] } } ] } ] } ] } }));
    serde_json::json!({ "resourceType": "Bundle", "type": "collection", "entry": entries })
        .to_string()
}

const WHITELIST: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListeBlanche xmlns="https://listeblanche.mssante.fr/schema">
  <Domaine><Nom>medecin.mssante.fr</Nom></Domaine>
  <Domaine><Nom>ch-nordville.mssante.fr</Nom></Domaine>
  <Domaine><Nom>patient.mssante.fr</Nom></Domaine>
</ListeBlanche>"#;

/// Routes: ES1 mails by MSSanté from its address with its certificate (a standing
/// recipient configured), ES2 does not; `[mssante]` points at the server.
fn with_mssante(r: String, pki: &Path, port: u16, tls: &str, extra: &str) -> String {
    r.replace(
        "record = \"dpi-es1\"\n",
        &format!(
            "record = \"dpi-es1\"\nfiness = [\"590000011\"]\nmssante = {{ cert = \"{}\", key = \"{}\", from = \"labo@ch-nordville.mssante.fr\", recipients = [\"10000000077\"] }}\n",
            pki.join("es1-mss.pem").display(),
            pki.join("es1-mss.key").display()
        ),
    ) + &tls_section(
        &pki.join("ca.pem"),
        &pki.join("server.pem"),
        &pki.join("server.key"),
    ) + &format!(
        "[mssante]\naddress = \"127.0.0.1:{port}\"\ntls = \"{tls}\"\nserver_name = \"localhost\"\nbackoff_initial_ms = 50\nbackoff_max_ms = 100\ntimeout_secs = 10\n{extra}"
    )
}

async fn import(h: &Harness) {
    let mailboxes =
        labroute::mssante::directory::parse_fhir("dir.json", &directory()).expect("directory");
    let domains = labroute::mssante::whitelist::parse("wl.xml", WHITELIST).expect("whitelist");
    for command in [
        OperatorCommand::DirectoryImport {
            source: labroute::mssante::Source::National,
            mailboxes,
        },
        OperatorCommand::WhitelistImport { domains },
    ] {
        h.server
            .store
            .operator(command, &local_operator("ops"))
            .await
            .expect("import");
    }
}

/// The journal's settled MSSanté outcomes: (control id, event, detail).
fn settled(h: &Harness) -> Vec<(String, String, Json)> {
    let store = h.server.store.store();
    let mut out = Vec::new();
    for event in ["delivered", "withheld", "dead"] {
        for e in labroute::store::audit::query(
            store,
            &AuditFilter {
                event: Some(event.into()),
                ..Default::default()
            },
        )
        .expect("journal")
        {
            if e.actor.as_deref() != Some("mssante") {
                continue;
            }
            let seq = e.message.expect("seq");
            let ctrl = store
                .record(seq)
                .expect("record")
                .expect("exists")
                .control_id;
            out.push((ctrl, event.to_owned(), e.detail.clone()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// (recipient, outcome) of one settled message.
fn outcomes(detail: &Json) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = detail["recipients"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                r["recipient"].as_str().unwrap_or("").to_owned(),
                r["outcome"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn results_are_mailed_only_to_whom_the_policy_allows_and_every_refusal_is_journalled() {
    if python().is_none() {
        return;
    }
    let pki = pki_dir("mssante test CA", &["es1-mss"]);
    let smtp = Smtp::start(
        "implicit",
        pki.path(),
        &pki.path().join("ca.pem"),
        pki.path().join("mail"),
        &[],
    );
    let (p, port) = (pki.path().to_path_buf(), smtp.port);
    let h = Harness::start(move |r| with_mssante(r, &p, port, "implicit", "")).await;
    import(&h).await;
    // P-OPP opposed sharing; P-GRANT's care team includes the standing recipient.
    h.server
        .store
        .operator(
            OperatorCommand::SharingOpposition {
                establishment: "ES1".into(),
                authority: "CHNORD-IPP".into(),
                id: "P-OPP".into(),
                opposed: true,
            },
            &local_operator("ops"),
        )
        .await
        .expect("opposition");
    care_grant(&h, "ES1", "CHNORD-IPP", "P-GRANT", "10000000077", true).await;

    let patient_box = format!("{INS}@patient.mssante.fr");
    let msgs = [
        // Copy (whitelisted), copy off the whitelist, ordering provider outside (mailed)
        // and one inside ES1 (not mailed), an address the directory does not know, the
        // patient's mailbox (asked for), the standing recipient (no care link).
        result(
            "ES1",
            "R-OK",
            "P-OK",
            &["10000000005", "10000000009"],
            &["10000000001", "10000000002"],
            &["nobody@medecin.mssante.fr", &patient_box],
            &[("DESTMSSANTEPAT", "Y"), ("ACK_LECTURE_MSS", "Y")],
        ),
        result(
            "ES1",
            "R-MASKED",
            "P-OK",
            &[],
            &["10000000001"],
            &[],
            &[("MASQUE_PS", "Y")],
        ),
        result(
            "ES1",
            "R-NOPS",
            "P-OK",
            &[],
            &["10000000001"],
            &[],
            &[("DESTMSSANTEPS", "N")],
        ),
        result("ES1", "R-OPP", "P-OPP", &[], &["10000000001"], &[], &[]),
        result("ES1", "R-GRANT", "P-GRANT", &[], &[], &[], &[]),
        result("ES2", "R-ES2", "P-ES2", &[], &["10000000001"], &[], &[]),
    ];
    for m in &msgs {
        let acks = send_all(h.sil(), std::slice::from_ref(m))
            .await
            .expect("ACK");
        assert_eq!(msa(&acks[0]).0, "AA");
    }
    assert!(
        eventually(|| settled(&h).len() >= msgs.len()).await,
        "{:?}",
        settled(&h)
    );
    let s = settled(&h);
    let by = |ctrl: &str| {
        s.iter()
            .find(|(c, ..)| c == ctrl)
            .unwrap_or_else(|| panic!("{ctrl} not settled: {s:?}"))
    };
    let (_, event, detail) = by("R-OK");
    assert_eq!(event, "delivered", "{detail}");
    assert_eq!(
        outcomes(detail),
        [
            (
                "nobody@medecin.mssante.fr".to_owned(),
                "not_in_directory".to_owned()
            ),
            ("patient".into(), "sent".into()),
            ("rpps:10000000001".into(), "sent".into()),
            ("rpps:10000000002".into(), "domain_not_whitelisted".into()),
            ("rpps:10000000005".into(), "sent".into()),
            ("rpps:10000000009".into(), "inside_establishment".into()),
            ("rpps:10000000077".into(), "not_in_care".into()),
        ]
    );
    assert!(
        !detail.to_string().contains(INS),
        "a patient's address is never journalled: {detail}"
    );
    for (ctrl, reason) in [
        ("R-MASKED", "masked_from_professionals"),
        ("R-NOPS", "destmssanteps_no"),
        ("R-OPP", "patient_opposed"),
    ] {
        let (_, event, detail) = by(ctrl);
        assert_eq!(event, "withheld", "{ctrl}: {detail}");
        assert_eq!(detail["reason"], "no_authorised_recipient", "{ctrl}");
        assert!(
            outcomes(detail).contains(&("rpps:10000000001".into(), reason.into())),
            "{ctrl}: {detail}"
        );
    }
    let (_, event, detail) = by("R-GRANT");
    assert_eq!(event, "delivered", "{detail}");
    assert_eq!(
        outcomes(detail),
        [("rpps:10000000077".to_owned(), "sent".to_owned())]
    );
    let (_, event, detail) = by("R-ES2");
    assert_eq!(
        (event.as_str(), &detail["reason"]),
        ("withheld", &Json::from("not_enabled"))
    );

    // What the server received: R-OK's three mails (one per recipient: two professionals,
    // the patient) and R-GRANT's, over TLS with ES1's certificate.
    let got = smtp.received();
    assert_eq!(got.len(), 4, "{got:?}");
    let cda_sha = labroute::model::hex(&labroute::model::sha256(CDA.as_bytes()));
    for (envelope, mail) in &got {
        assert_eq!(envelope["tls"], true);
        assert_eq!(
            envelope["peer_cert_san_uris"][0], "urn:labroute:system:es1-mss",
            "{envelope}"
        );
        assert_eq!(envelope["mail_from"], "labo@ch-nordville.mssante.fr");
        assert_eq!(mail["subject"], "Compte rendu de biologie");
        let xdm = &mail["xdm"];
        assert_eq!(xdm["has_index"], true, "{mail}");
        assert_eq!(xdm["has_readme"], true);
        assert_eq!(xdm["metadata_ok"], true);
        assert_eq!(xdm["documents"][0]["name"], "IHE_XDM/SUBSET01/DOC0001.XML");
        assert_eq!(
            xdm["documents"][0]["sha256"],
            cda_sha.as_str(),
            "the CDA, byte for byte"
        );
        assert_eq!(xdm["documents"][0]["uri_in_metadata"], true);
        assert_eq!(
            xdm["metadata_patient_id"],
            format!("{INS}^^^&1.2.250.1.213.1.4.10&ISO").as_str()
        );
    }
    let mut rcpts: Vec<&str> = got
        .iter()
        .map(|(e, _)| {
            let r = e["rcpt_tos"].as_array().expect("rcpt");
            assert_eq!(r.len(), 1, "one recipient per mail: {e}");
            r[0].as_str().unwrap_or("")
        })
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            patient_box.as_str(),
            "dr.copy@medecin.mssante.fr",
            "dr.ordering@medecin.mssante.fr",
            "dr.standing@medecin.mssante.fr",
        ]
    );
    for (e, m) in &got {
        let asked = e["rcpt_tos"][0] != "dr.standing@medecin.mssante.fr";
        assert_eq!(
            m["disposition_notification_to"] == "<labo@ch-nordville.mssante.fr>",
            asked,
            "a read receipt only where asked (R-OK's ACK_LECTURE_MSS): {m}"
        );
    }

    // The record systems get every result regardless.
    assert!(h.es1.wait_for(5, std::time::Duration::from_secs(10)).await);
}

/// The ZAMs the lab (the sender's `application_acks_to`) received, each as its segments.
fn zams(h: &Harness) -> Vec<Vec<String>> {
    h.lab
        .messages()
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .filter(|m| m.contains("|ZAM^"))
        .map(|m| {
            m.split('\r')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// A read receipt as a mail client sends it (RFC 8098, Thunderbird's layout).
fn mdn(message_id: &str, reader: &str, disposition: &str) -> Vec<u8> {
    format!(
        "From: {reader}\r\nTo: labo@ch-nordville.mssante.fr\r\nSubject: =?UTF-8?Q?Accus=C3=A9_de_lecture?=\r\nIn-Reply-To: {message_id}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=disposition-notification;\r\n boundary=\"----=_mdn\"\r\n\r\nThis is a multi-part message in MIME format.\r\n------=_mdn\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nCeci est un accusé de lecture.\r\n\r\n------=_mdn\r\nContent-Type: message/disposition-notification; name=\"MDNPart2.txt\"\r\nContent-Disposition: inline\r\nContent-Transfer-Encoding: 7bit\r\n\r\nReporting-UA: medecin.mssante.fr; Thunderbird 115.0\r\nFinal-Recipient: rfc822;{reader}\r\nOriginal-Message-ID: {message_id}\r\nDisposition: manual-action/MDN-sent-manually; {disposition}\r\n\r\n------=_mdn--\r\n"
    )
    .into_bytes()
}

/// The sender asked for receptions (`ACK_RECEPTION`) and read receipts (`ACK_LECTURE_MSS`):
/// each recipient's mail the server takes comes back as a ZAM^Z02 Y, each recipient not
/// mailed as a ZAM^Z02 N with the reason, each read receipt posted to the admin API as a
/// ZAM^Z03, in the ANS examples' form. One mail per recipient: a server's 550 for one is his
/// alone, and a retry after a 451 does not mail again whoever already got it.
#[tokio::test]
async fn receptions_and_read_receipts_go_back_to_the_sender() {
    if python().is_none() {
        return;
    }
    let pki = pki_dir(
        "mssante test CA",
        &["es1-mss", "operator-es1", "operator-es2"],
    );
    // The ordering provider's mailbox is refused by the server; the second mail is
    // deferred once.
    let smtp = Smtp::start(
        "implicit",
        pki.path(),
        &pki.path().join("ca.pem"),
        pki.path().join("mail"),
        &[
            "--reject-rcpt",
            "dr.ordering@medecin.mssante.fr",
            "--tempfail-at",
            "2",
        ],
    );
    let (p, port) = (pki.path().to_path_buf(), smtp.port);
    let h = Harness::start(move |r| {
        with_mssante(
            r.replacen(
                "[[listener]]\nname = \"dpi\"",
                "application_acks_to = \"sil\"\n[[listener]]\nname = \"dpi\"",
                1,
            ),
            &p,
            port,
            "implicit",
            "",
        ) + &admin_section("operator-es1", &["ES1"])
            + &system_toml("operator-es2", "operator", &["ES2"])
    })
    .await;
    import(&h).await;
    let patient_box = format!("{INS}@patient.mssante.fr");
    let m = result(
        "ES1",
        "R-ACK",
        "P-ACK",
        &["10000000005"],
        &["10000000001", "10000000002"],
        &[&patient_box],
        &[
            ("DESTMSSANTEPAT", "Y"),
            ("ACK_RECEPTION", "Y"),
            ("ACK_LECTURE_MSS", "Y"),
        ],
    );
    let acks = send_all(h.sil(), &[m]).await.expect("ACK");
    assert_eq!(msa(&acks[0]).0, "AA");
    assert!(eventually(|| !settled(&h).is_empty()).await);
    let s = settled(&h);
    assert_eq!(s[0].1, "delivered", "{s:?}");
    assert_eq!(
        outcomes(&s[0].2),
        [
            ("patient".to_owned(), "sent".to_owned()),
            ("rpps:10000000001".into(), "sent".into()),
            ("rpps:10000000002".into(), "domain_not_whitelisted".into()),
            ("rpps:10000000005".into(), "server_refused".into()),
            ("rpps:10000000077".into(), "not_in_care".into()),
        ]
    );
    // Two mails, one recipient each, each once: the retry after the 451 skipped the
    // patient's, which the server had taken.
    let got = smtp.received();
    let mut rcpts: Vec<String> = got
        .iter()
        .map(|(e, _)| {
            let r = e["rcpt_tos"].as_array().expect("rcpt");
            assert_eq!(r.len(), 1, "one recipient per mail: {e}");
            r[0].as_str().unwrap_or("").to_owned()
        })
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [patient_box.clone(), "dr.copy@medecin.mssante.fr".into()]
    );

    // Five ZAM^Z02: Y for the two mails the server took, N with the reason for the others.
    assert!(eventually(|| zams(&h).len() >= 5).await, "{:?}", zams(&h));
    let z = zams(&h);
    assert_eq!(z.len(), 5, "{z:?}");
    for zam in &z {
        assert!(
            zam[0].starts_with("MSH|^~\\&|DPI||SIL|LAB|")
                && zam[0].contains("|ZAM^Z02^ZAM_Z01|")
                && zam[0].ends_with("|2.1^CISIS_CDA_HL7_V2"),
            "{zam:?}"
        );
        assert_eq!(zam[1].split('|').next(), Some("EVN"));
    }
    let line = |obx2: &str| -> Vec<String> {
        z.iter()
            .find(|zam| zam.get(3).is_some_and(|o| o.contains(obx2)))
            .unwrap_or_else(|| panic!("no ZAM with {obx2}: {z:?}"))
            .clone()
    };
    let copy = line("|810000000001|");
    assert_eq!(
        copy[2],
        "OBX|1|CWE|ACK_RECEPTION_MSS^Accusé de réception MSSanté^AckMetierZAM|R-ACK|Y^^expandedYes-NoIndicator||||||F|"
    );
    assert_eq!(
        copy[3],
        "OBX|2|XTN|DESTINATAIRE_MSS^Destinataire MSSanté^AckMetierZAM|810000000001|^^X.400^dr.copy@medecin.mssante.fr||||||F|"
    );
    assert_eq!(copy.len(), 4, "no ERR when received: {copy:?}");
    let patient = line(&format!("^^X.400^{patient_box}|"));
    assert!(patient[2].contains("|R-ACK|Y^"), "{patient:?}");
    for (who, code) in [
        ("|810000000002|", "domain_not_whitelisted"),
        ("|810000000005|", "server_refused"),
        ("|810000000077|", "not_in_care"),
    ] {
        let zam = line(who);
        assert!(
            zam[2].contains("|R-ACK|N^^expandedYes-NoIndicator|"),
            "{zam:?}"
        );
        assert!(
            zam[4].starts_with(&format!(
                "ERR|||207^Application internal error^messageErrorCondition|E|{code}^"
            )) && zam[4].ends_with("^99LABROUTE"),
            "{zam:?}"
        );
    }

    // The copy recipient reads his mail; his client's receipt, as received, is posted to
    // the admin API: the sender gets a ZAM^Z03 naming him.
    let mail_of = |address: &str| {
        got.iter()
            .find(|(e, _)| e["rcpt_tos"][0] == address)
            .map(|(_, m)| m["message_id"].as_str().expect("Message-ID").to_owned())
            .expect("mailed")
    };
    let copy_id = mail_of("dr.copy@medecin.mssante.fr");
    let p = pki.path();
    let client = |who: &str| {
        admin_client(
            &h.server,
            &p.join("ca.pem"),
            &p.join(format!("{who}.pem")),
            &p.join(format!("{who}.key")),
        )
    };
    let receipt = mdn(&copy_id, "dr.copy@medecin.mssante.fr", "displayed");
    // Another establishment's operator may not record it.
    let foreign = client("operator-es2")
        .post_raw("/mssante/mdn", receipt.clone())
        .await;
    assert!(
        matches!(foreign, Err(ClientError::Refused { status: 403, .. })),
        "{foreign:?}"
    );
    let ops = client("operator-es1");
    let answer = ops
        .post_raw("/mssante/mdn", receipt.clone())
        .await
        .expect("recorded");
    assert!(
        answer
            .as_str()
            .is_some_and(|a| a.ends_with("rpps:10000000001: displayed")),
        "{answer}"
    );
    assert!(eventually(|| zams(&h).len() >= 6).await);
    let read = zams(&h)
        .into_iter()
        .find(|zam| zam[0].contains("|ZAM^Z03^ZAM_Z01|"))
        .expect("a ZAM^Z03");
    assert_eq!(
        read[2..],
        [
            "OBX|1|CWE|ACK_LECTURE_MSS^Accusé de lecture^AckMetierZAM|R-ACK|Y^^expandedYes-NoIndicator||||||F|",
            "OBX|2|XTN|LECTEUR_MSS^Lecteur du courriel MSSanté^AckMetierZAM|810000000001|^^X.400^dr.copy@medecin.mssante.fr||||||F|"
        ]
    );
    // The same receipt again: recorded already, no second ZAM. A receipt for a mail
    // labroute did not send, or that is not a read receipt: refused plainly.
    let again = ops
        .post_raw("/mssante/mdn", receipt)
        .await
        .expect("answered");
    assert!(
        again
            .as_str()
            .is_some_and(|a| a.contains("recorded already")),
        "{again}"
    );
    let (seq, _) = labroute::mssante::mdn::ours(&copy_id).expect("labroute's Message-ID");
    let domain = "ch-nordville.mssante.fr";
    let unknown = labroute::mssante::mdn::message_id(999_999, "dr.copy@medecin.mssante.fr", domain);
    let other = labroute::mssante::mdn::message_id(seq, "dr.other@medecin.mssante.fr", domain);
    for (bad, why) in [
        (
            mdn("<abc@elsewhere.fr>", "x@medecin.mssante.fr", "displayed"),
            "did not send",
        ),
        (
            mdn(&unknown, "x@medecin.mssante.fr", "displayed"),
            "does not have",
        ),
        (
            mdn(&other, "x@medecin.mssante.fr", "displayed"),
            "has that Message-ID",
        ),
        (
            mdn(&copy_id, "dr.copy@medecin.mssante.fr", "processed"),
            "not a read receipt",
        ),
    ] {
        match ops.post_raw("/mssante/mdn", bad).await {
            Err(ClientError::Refused {
                status: 400,
                message,
            }) => {
                assert!(message.contains(why), "{message}")
            }
            other => panic!("{why}: {other:?}"),
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(zams(&h).len(), 6, "{:?}", zams(&h));

    // The journal has each mail sent and the read, never the patient's address.
    let journal = labroute::store::audit::query(h.server.store.store(), &AuditFilter::default())
        .expect("journal");
    let events = |name: &str| journal.iter().filter(|e| e.event == name).count();
    assert_eq!(events("mail_sent"), 2);
    assert_eq!(events("mail_read"), 1);
    assert_eq!(events("business_ack"), 6);
    for e in &journal {
        assert!(!e.detail.to_string().contains(INS), "{:?}", e.detail);
    }

    // A correction of the report (same order, OBR-25 C) that names nobody goes to whoever
    // was mailed the original (not to the one the server refused), as an update.
    let original = result(
        "ES1",
        "R-ACK",
        "P-ACK",
        &[],
        &[],
        &[],
        &[("DESTMSSANTEPAT", "Y")],
    );
    let correction = String::from_utf8(original)
        .expect("text")
        .replacen("|R-ACK|P|", "|R-ACK-C|P|", 1)
        .replacen("||F|||", "||C|||", 1);
    let acks = send_all(h.sil(), &[correction.into_bytes()])
        .await
        .expect("ACK");
    assert_eq!(msa(&acks[0]).0, "AA");
    assert!(eventually(|| settled(&h).len() >= 2).await);
    let s = settled(&h);
    assert_eq!((s[1].0.as_str(), s[1].1.as_str()), ("R-ACK-C", "delivered"));
    assert_eq!(
        outcomes(&s[1].2),
        [
            ("patient".to_owned(), "sent".to_owned()),
            ("rpps:10000000001".into(), "sent".into()),
            ("rpps:10000000077".into(), "not_in_care".into()),
        ]
    );
    let got = smtp.received();
    assert_eq!(got.len(), 4, "{got:?}");
    let mut updated: Vec<&str> = got[2..]
        .iter()
        .map(|(e, m)| {
            assert_eq!(
                m["subject"], "Mise à jour : Compte rendu de biologie",
                "{m}"
            );
            e["rcpt_tos"][0].as_str().unwrap_or("")
        })
        .collect();
    updated.sort();
    assert_eq!(
        updated,
        [patient_box.as_str(), "dr.copy@medecin.mssante.fr"]
    );
}

#[tokio::test]
async fn mail_never_goes_in_clear_nor_to_a_server_from_another_ca() {
    if python().is_none() {
        return;
    }
    let pki = pki_dir("mssante test CA", &["es1-mss"]);
    let other = pki_dir("another CA", &[]);
    let ca = pki.path().join("ca.pem");
    // STARTTLS that works, a server offering no TLS, one whose certificate another CA
    // issued (it would accept our client certificate).
    let cases = [
        (
            "starttls",
            Smtp::start("starttls", pki.path(), &ca, pki.path().join("ok"), &[]),
            true,
        ),
        (
            "starttls",
            Smtp::start("plain", pki.path(), &ca, pki.path().join("plain"), &[]),
            false,
        ),
        (
            "implicit",
            Smtp::start("implicit", other.path(), &ca, pki.path().join("other"), &[]),
            false,
        ),
    ];
    for (tls, smtp, delivers) in cases {
        let (p, port) = (pki.path().to_path_buf(), smtp.port);
        let h = Harness::start(move |r| with_mssante(r, &p, port, tls, "max_attempts = 2\n")).await;
        import(&h).await;
        let m = result("ES1", "R-1", "P-1", &[], &["10000000001"], &[], &[]);
        let acks = send_all(h.sil(), &[m]).await.expect("ACK");
        assert_eq!(msa(&acks[0]).0, "AA");
        assert!(
            eventually(|| !settled(&h).is_empty()).await,
            "{tls} settles"
        );
        let s = settled(&h);
        if delivers {
            assert_eq!(s[0].1, "delivered", "{s:?}");
            assert_eq!(smtp.received().len(), 1);
        } else {
            assert_eq!(s[0].1, "dead", "{s:?}");
            let reason = s[0].2["reason"].as_str().unwrap_or("");
            assert!(reason.starts_with("gave up after 2 attempts"), "{reason}");
            assert!(smtp.received().is_empty(), "nothing reached the server");
        }
        h.server.shutdown().await;
    }
}

/// The ANS "LPS MSSanté" examples (`Trans_LPS_CDA_MSSante_*`, MDM with the CDA, PRT `RCT`
/// naming an organisation's mailbox, the LPS mail-body entry): each is routed to the
/// establishment the ANS fixture gives it and mailed to that mailbox; an initial or
/// replacement document arrives byte for byte in the XDM; a deletion arrives as a notice
/// without the document.
#[tokio::test]
async fn the_ans_mssante_examples_go_through() {
    if python().is_none() {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/ansforge");
    if !dir.is_dir() {
        eprintln!(
            "SKIPPED: {} is absent (the shared corpus is not part of the project)",
            dir.display()
        );
        return;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.starts_with("Trans_LPS_CDA_MSSante_") && n.contains("_message")
        })
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        6,
        "the ANS MSSanté examples changed: {files:?}"
    );

    let pki = pki_dir("mssante test CA", &["cha-mss"]);
    let smtp = Smtp::start(
        "starttls",
        pki.path(),
        &pki.path().join("ca.pem"),
        pki.path().join("mail"),
        &[],
    );
    let cha = Receiver::start("127.0.0.1:0", labroute::hl7::ack::AckCode::AA).await;
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ansforge-establishments.toml");
    let text = std::fs::read_to_string(&fixture)
        .expect("fixture")
        .replace(
            "record = \"dpi-cha\"\n",
            &format!(
                "record = \"dpi-cha\"\nmssante = {{ cert = \"{}\", key = \"{}\", from = \"labo@cha.mssante.fr\" }}\n",
                pki.path().join("cha-mss.pem").display(),
                pki.path().join("cha-mss.key").display()
            ),
        );
    let mut network = String::from(
        "[engine]\nidle_timeout_secs = 60\n[[listener]]\nname = \"sil\"\nbind = \"127.0.0.1:0\"\ninsecure = true\n",
    );
    for name in ["sil", "dpi-cha", "dpi-chux"] {
        network.push_str(&destination_toml(name, cha.addr, 100));
    }
    network.push_str(&format!(
        "[mssante]\naddress = \"127.0.0.1:{}\"\ntls = \"starttls\"\nserver_name = \"localhost\"\nca = \"{}\"\nbackoff_initial_ms = 50\nbackoff_max_ms = 100\n",
        smtp.port,
        pki.path().join("ca.pem").display()
    ));
    let cfg = std::sync::Arc::new(
        labroute::config::Config::from_sources(&[
            (fixture, text),
            ("network.toml".into(), network),
        ])
        .unwrap_or_else(|e| panic!("routes:\n{e}")),
    );
    let local =
        labroute::mssante::directory::parse_csv("local.csv", ",dpi@hopitalA.mssante.fr,ORG\n")
            .expect("csv");
    let wl = "<L xmlns='https://listeblanche.mssante.fr/schema'><Domaine><Nom>hopitalA.mssante.fr</Nom></Domaine></L>";
    let domains = labroute::mssante::whitelist::parse("wl.xml", wl).expect("whitelist");

    for (i, path) in files.iter().enumerate() {
        let mailed = i + 1;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_owned();
        // Every example reuses MSH-10 `015`: one store per example.
        let data = tempfile::tempdir().expect("tempdir");
        let server = labroute::server::Server::start(cfg.clone(), data.path().to_path_buf())
            .await
            .expect("server starts");
        for command in [
            OperatorCommand::DirectoryImport {
                source: labroute::mssante::Source::Local,
                mailboxes: local.clone(),
            },
            OperatorCommand::WhitelistImport {
                domains: domains.clone(),
            },
        ] {
            server
                .store
                .operator(command, &local_operator("ops"))
                .await
                .expect("import");
        }
        let raw = std::fs::read(path).expect("example");
        let acks = send_all(server.addr("sil").expect("sil"), &[raw])
            .await
            .expect("ACK");
        assert_eq!(msa(&acks[0]).0, "AA", "{name}");
        let store = server.store.store();
        let journal = |event: &str| {
            labroute::store::audit::query(
                store,
                &AuditFilter {
                    event: Some(event.into()),
                    ..Default::default()
                },
            )
            .expect("journal")
            .into_iter()
            .filter(|e| e.actor.as_deref() == Some("mssante"))
            .collect::<Vec<_>>()
        };
        assert!(
            eventually(|| !journal("delivered").is_empty() || !journal("dead").is_empty()).await,
            "{name}: not settled"
        );
        let delivered = journal("delivered");
        assert_eq!(delivered.len(), 1, "{name}: {:?}", journal("dead"));
        assert_eq!(
            outcomes(&delivered[0].detail),
            [("dpi@hopitala.mssante.fr".to_owned(), "sent".to_owned())],
            "{name}"
        );
        assert!(
            eventually(|| smtp.received().len() == mailed).await,
            "{name}: no mail"
        );
        let n = mailed;
        let read = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/read_mail.py"))
            .arg(smtp.out.join(format!("{n}.eml")))
            .arg("--cda-from-hl7")
            .arg(path)
            .output()
            .expect("read_mail runs");
        assert!(
            read.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&read.stderr)
        );
        let mail: Json = serde_json::from_slice(&read.stdout).expect("mail JSON");
        assert_eq!(mail["to"][0], "dpi@hopitala.mssante.fr", "{name}");
        let body = mail["body_text"].as_str().unwrap_or("").trim().to_owned();
        if name.contains("Suppression") {
            assert!(body.contains("annulé"), "{name}: {body}");
            assert!(
                mail["subject"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Annulation"),
                "{name}: {mail}"
            );
            assert_eq!(
                mail["xdm"],
                Json::Null,
                "{name}: a deletion carries no document"
            );
        } else {
            assert_eq!(body, "Corps du courriel", "{name}: the LPS body entry");
            assert_eq!(
                mail["xdm"]["documents"][0]["sha256"], mail["hl7_cda_sha256"],
                "{name}: the CDA byte for byte"
            );
        }
        server.shutdown().await;
    }
}
