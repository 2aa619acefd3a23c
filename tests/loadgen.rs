//! The load generator against a real server, over MLLP with TLS and client certificates:
//! every message acknowledged and delivered to the establishment its identifiers name, and
//! the audit journal of the run verifies, seals included, with `labroute audit verify`.

mod common;

use std::time::Duration;

use common::*;
use labroute::loadgen::{LoadSpec, TlsClient, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_messages_are_all_acknowledged_and_delivered_to_their_owner() {
    let h = Harness::start(|r| {
        tls_listeners(&r).replace("[engine]\n", "[engine]\naudit_seal_every = 50\n")
            + &dev_tls_section()
            + &system_toml("sil", "result_producer", &["ES1", "ES2"])
    })
    .await;
    let c = dev_certs();
    let tls = labroute::tls::client_config(&labroute::tls::TlsFiles {
        ca: c.join("ca.pem"),
        cert: c.join("sil.pem"),
        key: c.join("sil.key"),
        min_version: labroute::tls::MinVersion::Tls13,
    })
    .expect("client TLS");
    let (es1, es2) = (&h.es1, &h.es2);
    let report = run(LoadSpec {
        to: h.sil(),
        connections: 4,
        messages: 202,
        authorities: vec!["CHNORD-IPP".into(), "CHSUD-IPP".into()],
        obx: 3,
        ack_timeout: Duration::from_secs(30),
        run_id: "T".into(),
        tls: Some(TlsClient {
            connector: tokio_rustls::TlsConnector::from(tls),
            server_name: rustls::pki_types::ServerName::try_from("localhost").expect("name"),
        }),
    })
    .await
    .expect("load runs");
    assert_eq!(
        (report.accepted, report.refused, report.failed),
        (202, 0, 0),
        "{report}"
    );
    assert!(
        report.p50_us > 0 && report.p99_us >= report.p50_us,
        "{report}"
    );
    assert!(es1.wait_for(101, Duration::from_secs(20)).await);
    assert!(es2.wait_for(101, Duration::from_secs(20)).await);
    assert_eq!((es1.count(), es2.count()), (101, 101));
    let owned_by = |r: &Receiver, auth: &str| {
        r.got
            .lock()
            .expect("lock")
            .iter()
            .all(|m| String::from_utf8_lossy(m).contains(&format!("^^^{auth}^PI")))
    };
    assert!(owned_by(es1, "CHNORD-IPP") && owned_by(es2, "CHSUD-IPP"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let data = h.dir.path().to_path_buf();
    let routes = h.routes.clone();
    h.server.shutdown().await;

    // The journal of the run: intact, and sealed with the instance's key.
    let routes_file = data.join("routes.toml");
    std::fs::write(&routes_file, routes).expect("routes");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_labroute"))
        .args(["audit", "verify", "--data"])
        .arg(&data)
        .arg("--routes")
        .arg(&routes_file)
        .output()
        .expect("labroute runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 202 receipts and 202 deliveries at least; a seal every 50 entries.
    let n = |label: &str| -> u64 {
        text.split(label)
            .next()
            .and_then(|t| t.rsplit(' ').find(|w| !w.is_empty()))
            .and_then(|w| w.parse().ok())
            .unwrap_or(0)
    };
    assert!(n(" entries") >= 404, "{text}");
    assert!(n(" signed seals verified") >= 8, "{text}");
}
