//! The admin endpoint over real HTTPS with client certificates: an operator sees and acts
//! only within the establishments its certificate is allowed; a system that is not an
//! operator, a client without a certificate and one from another CA are refused; every
//! refusal and every action is in the audit journal under the certificate's identity.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use labroute::admin::AdminRequest;
use labroute::admin::http::{AdminClient, ClientError};
use labroute::store::audit::AuditFilter;
use labroute::store::writer::OperatorCommand;
use serde_json::Value;

fn systems() -> String {
    system_toml("sil", "result_producer", &["ES1", "ES2"])
        + &system_toml("dpi-es1", "order_placer", &["ES1"])
        + &system_toml("operator-es2", "operator", &["ES2"])
        + &system_toml("prometheus", "monitor", &[])
        + &system_toml("operator-gcs", "operator", &["ES1", "ES2"])
}

struct Setup {
    h: Harness,
    pki: tempfile::TempDir,
}

impl Setup {
    fn client(&self, system: &str) -> AdminClient {
        let p = self.pki.path();
        admin_client(
            &self.h.server,
            &p.join("ca.pem"),
            &p.join(format!("{system}.pem")),
            &p.join(format!("{system}.key")),
        )
    }
    async fn send(&self, system: &str, msg: &[u8]) -> String {
        let p = self.pki.path();
        let ack = tls_send(
            self.h.sil(),
            Some((
                &p.join("ca.pem"),
                &p.join(format!("{system}.pem")),
                &p.join(format!("{system}.key")),
            )),
            msg,
        )
        .await
        .expect("ACK");
        msa(&ack).0
    }
}

async fn setup() -> Setup {
    let pki = pki_dir(
        "admin test CA",
        &[
            "sil",
            "dpi-es1",
            "operator-es1",
            "operator-es2",
            "operator-gcs",
            "intruder",
            "prometheus",
        ],
    );
    let p = pki.path().to_path_buf();
    let h = Harness::start(move |r| {
        tls_listeners(&r)
            + &tls_section(
                &p.join("ca.pem"),
                &p.join("server.pem"),
                &p.join("server.key"),
            )
            + &systems()
            + &admin_section("operator-es1", &["ES1"])
    })
    .await;
    Setup { h, pki }
}

fn seqs(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("a list")
        .iter()
        .filter_map(|x| x["seq"].as_u64())
        .collect()
}

fn status(r: &Result<Value, ClientError>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(ClientError::Refused { status, .. }) => *status,
        Err(e) => panic!("no HTTP answer: {e}"),
    }
}

/// Quarantined messages implicating ES1 only, ES1 and ES2, or no establishment; each
/// operator sees exactly those within its certificate's establishments, and acts on no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sees_and_acts_only_within_its_establishments() {
    let s = setup().await;
    // Routed ES1 and ES2 results; an ES1 order that names no establishment (sent by ES1's
    // DPI, so it can only be ES1's); a result in conflict between ES1 and ES2; a result
    // that names none, sent by the lab that serves both.
    assert_eq!(
        s.send("sil", &result_by_identifier("ES1", "R1", "100001", "1"))
            .await,
        "AA"
    );
    assert_eq!(
        s.send("sil", &result_by_identifier("ES2", "R2", "200002", "2"))
            .await,
        "AA"
    );
    assert_eq!(
        s.send("dpi-es1", &order("X", "Q-ES1", "P-1", "1")).await,
        "AA"
    );
    let conflict = b"MSH|^~\\&|SIL|LAB|||20250301100000||ORU^R01^ORU_R01|Q-BOTH|P|2.5\r\
PID|||1^^^CHSUD-IPP^PI\rOBR|1|P-1^DPI-CHNORD||K^Potassium^L\rOBX|1|NM|K^Potassium^L||4.1|mmol/L|||||F\r";
    assert_eq!(s.send("sil", conflict).await, "AA");
    assert_eq!(
        s.send("sil", &result_by_identifier("X", "Q-NONE", "3", "3"))
            .await,
        "AA"
    );
    assert!(s.h.es1.wait_for(1, Duration::from_secs(20)).await);
    assert!(s.h.es2.wait_for(1, Duration::from_secs(20)).await);

    let q = s.h.server.store.store().quarantine().expect("quarantine");
    let by_ctrl = |c: &str| {
        q.iter()
            .find(|(r, _)| r.control_id == c)
            .map(|(r, _)| r.seq)
            .expect("quarantined")
    };
    let (q_es1, q_both, q_none) = (by_ctrl("Q-ES1"), by_ctrl("Q-BOTH"), by_ctrl("Q-NONE"));

    let es1 = s.client("operator-es1");
    let es2 = s.client("operator-es2");
    let gcs = s.client("operator-gcs");
    let list = |c: AdminClient| async move {
        seqs(
            &c.call(&AdminRequest::QuarantineList)
                .await
                .expect("quarantine list"),
        )
    };
    assert_eq!(list(es1.clone()).await, vec![q_es1]);
    assert_eq!(list(es2.clone()).await, Vec::<u64>::new());
    let mut all = list(gcs.clone()).await;
    all.sort();
    let mut want = vec![q_es1, q_both, q_none];
    want.sort();
    assert_eq!(all, want);

    // Reading or acting on a message outside its scope: 403, whatever the request.
    for seq in [q_both, q_none] {
        let show = es1.call(&AdminRequest::QuarantineShow { seq }).await;
        assert_eq!(status(&show), 403, "{show:?}");
        let release = es1
            .call(&AdminRequest::Command {
                command: OperatorCommand::Release {
                    seq,
                    establishment: "ES1".into(),
                },
            })
            .await;
        assert_eq!(status(&release), 403, "{release:?}");
        let discard = es1
            .call(&AdminRequest::Command {
                command: OperatorCommand::Discard {
                    seq,
                    reason: "not mine".into(),
                },
            })
            .await;
        assert_eq!(status(&discard), 403, "{discard:?}");
    }
    // Its own message, to another establishment: 403.
    let to_es2 = es1
        .call(&AdminRequest::Command {
            command: OperatorCommand::Release {
                seq: q_es1,
                establishment: "ES2".into(),
            },
        })
        .await;
    assert_eq!(status(&to_es2), 403, "{to_es2:?}");
    // ES2's operator cannot touch ES1's message either.
    let other = es2.call(&AdminRequest::QuarantineShow { seq: q_es1 }).await;
    assert_eq!(status(&other), 403);

    // Not even the whole-instance operator releases ES1's DPI's order to ES2.
    let foreign = gcs
        .call(&AdminRequest::Command {
            command: OperatorCommand::Release {
                seq: q_es1,
                establishment: "ES2".into(),
            },
        })
        .await;
    assert_eq!(status(&foreign), 403, "{foreign:?}");

    // Its own message, to its own establishment: released, and the order reaches the lab.
    let shown = es1
        .call(&AdminRequest::QuarantineShow { seq: q_es1 })
        .await
        .expect("show");
    assert!(shown["message"].as_str().unwrap_or("").contains("Q-ES1"));
    let lab_before = s.h.lab.count();
    es1.call(&AdminRequest::Command {
        command: OperatorCommand::Release {
            seq: q_es1,
            establishment: "ES1".into(),
        },
    })
    .await
    .expect("release");
    assert!(
        s.h.lab
            .wait_for(lab_before + 1, Duration::from_secs(20))
            .await
    );
    assert_eq!(s.h.es2.count(), 1, "nothing more reached ES2");

    // The whole-instance operator releases the conflict to ES2.
    gcs.call(&AdminRequest::Command {
        command: OperatorCommand::Release {
            seq: q_both,
            establishment: "ES2".into(),
        },
    })
    .await
    .expect("release by the GCS operator");
    assert!(s.h.es2.wait_for(2, Duration::from_secs(20)).await);

    // The operator log names the certificate's system, and each operator sees its own part.
    let log = gcs.call(&AdminRequest::OperatorLog).await.expect("log");
    let who: Vec<(&str, u64)> = log
        .as_array()
        .expect("list")
        .iter()
        .map(|e| {
            (
                e["operator"].as_str().unwrap_or(""),
                e["seq"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(who, vec![("operator-es1", q_es1), ("operator-gcs", q_both)]);
    let es1_log = es1.call(&AdminRequest::OperatorLog).await.expect("log");
    assert_eq!(seqs(&es1_log), vec![q_es1]);

    // Whole-instance actions are refused to an establishment's operator.
    let reload = es1.call(&AdminRequest::ReloadTls).await;
    assert_eq!(status(&reload), 403);
    assert!(gcs.call(&AdminRequest::ReloadTls).await.is_ok());

    // The journal: ES1's operator reads only ES1's entries; asking for ES2's is refused.
    let mine = es1
        .call(&AdminRequest::AuditQuery {
            filter: AuditFilter::default(),
        })
        .await
        .expect("audit query");
    let mine = mine.as_array().expect("entries");
    assert!(!mine.is_empty());
    assert!(mine.iter().all(|e| e["establishment"] == "ES1"), "{mine:?}");
    let theirs = es1
        .call(&AdminRequest::AuditQuery {
            filter: AuditFilter {
                establishments: vec!["ES2".into()],
                ..Default::default()
            },
        })
        .await;
    assert_eq!(status(&theirs), 403);
    let verify = es1.call(&AdminRequest::AuditVerify).await.expect("verify");
    assert!(verify["first_bad"].is_null(), "{verify}");

    // Every refusal above is journalled under the certificate's system.
    let refused = labroute::store::audit::query(
        s.h.server.store.store(),
        &AuditFilter {
            event: Some("operator_refused".into()),
            ..Default::default()
        },
    )
    .expect("journal");
    let by = |name: &str| {
        refused
            .iter()
            .filter(|e| e.actor.as_deref() == Some(name))
            .count()
    };
    assert_eq!(by("operator-es1"), 2 * 3 + 1 + 1 + 1, "{refused:#?}");
    assert_eq!(by("operator-es2"), 1);
    assert_eq!(by("operator-gcs"), 1);
    let reads = labroute::store::audit::query(
        s.h.server.store.store(),
        &AuditFilter {
            event: Some("operator".into()),
            ..Default::default()
        },
    )
    .expect("journal");
    assert!(
        reads
            .iter()
            .any(|e| e.actor.as_deref() == Some("operator-es1")
                && e.detail["action"] == "message.read"
                && e.message == Some(q_es1))
    );
    s.h.server.shutdown().await;
}

/// Only an operator certificate from the instance's CA opens the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_operators_no_certificate_and_other_cas_are_refused() {
    let s = setup().await;
    // A system that exists but is not an operator: answered 403, journalled.
    let dpi = s.client("dpi-es1");
    let r = dpi.call(&AdminRequest::Status).await;
    assert_eq!(status(&r), 403, "{r:?}");
    // A certificate from our CA naming no configured system: 403.
    let r = s.client("intruder").call(&AdminRequest::Status).await;
    assert_eq!(status(&r), 403, "{r:?}");
    // The operator's own certificate opens it.
    let st = s.client("operator-gcs").call(&AdminRequest::Status).await;
    assert_eq!(st.expect("status")["operator"], "operator-gcs");

    // Another CA's operator certificate: the handshake fails.
    let other = pki_dir("another CA", &["operator-gcs"]);
    let foreign = admin_client(
        &s.h.server,
        &s.pki.path().join("ca.pem"),
        &other.path().join("operator-gcs.pem"),
        &other.path().join("operator-gcs.key"),
    );
    let r = foreign.call(&AdminRequest::Status).await;
    assert!(
        matches!(r, Err(ClientError::Tls(..) | ClientError::Http(_))),
        "{r:?}"
    );

    // No client certificate: TLS 1.3 fails at the first read, so the request gets no answer.
    let r = no_certificate(
        s.h.server.admin.expect("admin"),
        &s.pki.path().join("ca.pem"),
    )
    .await;
    assert!(r.is_err(), "{r:?}");

    // Plain HTTP on the HTTPS port: no answer.
    let r = plain_http(s.h.server.admin.expect("admin")).await;
    assert!(!r.contains("HTTP/"), "plain HTTP was answered: {r}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let journal = labroute::store::audit::query(s.h.server.store.store(), &AuditFilter::default())
        .expect("journal");
    assert!(
        journal.iter().any(|e| e.event == "operator_refused"
            && e.detail["why"]
                .as_str()
                .unwrap_or("")
                .contains("not operator")),
        "the DPI's attempt is journalled"
    );
    assert!(
        journal.iter().any(|e| e.event == "operator_refused"
            && e.detail["why"]
                .as_str()
                .unwrap_or("")
                .contains("names no configured system")),
        "the unknown certificate's attempt is journalled"
    );
    let tls_refused = journal
        .iter()
        .filter(|e| e.event == "tls_refused" && e.detail["listener"] == "admin")
        .count();
    assert!(
        tls_refused >= 3,
        "other CA, no certificate, plain HTTP: {tls_refused}"
    );
    s.h.server.shutdown().await;
}

async fn no_certificate(addr: std::net::SocketAddr, ca: &Path) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = client_tls(ca, None)?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut s = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /status HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    if out.is_empty() {
        Err("closed without an answer".into())
    } else {
        Ok(out)
    }
}

async fn plain_http(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let _ = s
        .write_all(b"GET /status HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// `/metrics` answers a monitor system and operators, with the certificate's expiry and the
/// process counters; a monitor may read nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_for_monitors_with_the_certificate_expiry() {
    let s = setup().await;
    assert_eq!(
        s.send("sil", &result_by_identifier("ES1", "M1", "100001", "1"))
            .await,
        "AA"
    );
    let prom = s.client("prometheus");
    let text = prom.metrics().await.expect("metrics");
    let expiry = labroute::tls::not_after(&s.pki.path().join("server.pem")).expect("expiry");
    let line = text
        .lines()
        .find(|l| l.starts_with("labroute_tls_certificate_expiry_timestamp_seconds "))
        .unwrap_or_else(|| panic!("no expiry gauge in:\n{text}"));
    let value: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a number");
    // The recorder is per process and the tests of this file run side by side, each with a
    // PKI made the same minute: the gauge holds the certificate loaded last.
    assert!((value as i64 - expiry).abs() <= 120, "{line} vs {expiry}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("labroute_messages_accepted_total ")),
        "{text}"
    );
    assert!(text.contains("# TYPE labroute_messages_accepted_total counter"));
    assert!(s.client("operator-es1").metrics().await.is_ok());
    let r = prom.call(&AdminRequest::Status).await;
    assert_eq!(status(&r), 403, "{r:?}");
    let r = s.client("dpi-es1").metrics().await;
    assert!(
        matches!(r, Err(ClientError::Refused { status: 403, .. })),
        "{r:?}"
    );
    s.h.server.shutdown().await;
}
