//! The load generator against a real server, over MLLP with TLS and client certificates:
//! every message acknowledged and delivered to the establishment its identifiers name, and
//! the audit journal of the run verifies, seals included, with `labroute audit verify`. The
//! generator as the record systems (end to end), the message mixes, a fixed rate.

mod common;

use std::time::Duration;

use common::*;
use labroute::config::Config;
use labroute::hl7::ack::AckCode;
use labroute::loadgen::{LoadSpec, Mix, TlsClient, run};
use labroute::server::Server;

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
        connections: 4,
        mix: Mix::Oru { obx: 3 },
        run_id: "T".into(),
        tls: Some(TlsClient {
            connector: tokio_rustls::TlsConnector::from(tls),
            server_name: rustls::pki_types::ServerName::try_from("localhost").expect("name"),
        }),
        ..LoadSpec::new(h.sil(), 202)
    })
    .await
    .expect("load runs");
    assert_eq!(
        (report.accepted, report.refused, report.failed),
        (202, 0, 0),
        "{report}"
    );
    assert!(
        report.ack.p50_us > 0
            && report.ack.p99_us >= report.ack.p50_us
            && report.ack.p999_us >= report.ack.p99_us
            && report.ack.max_us >= report.ack.p999_us,
        "{report}"
    );
    assert!(report.end_to_end.is_none(), "{report}");
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

/// A server on the test routes (plain listeners) whose ES1 and ES2 records are the load
/// generator's own receivers, on `es1` and `es2`.
async fn server_delivering_to(
    es1: std::net::SocketAddr,
    es2: std::net::SocketAddr,
) -> (Server, Receiver, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let lab = Receiver::start("127.0.0.1:0", AckCode::AA).await;
    let cfg = Config::from_sources(&[("t.toml".into(), routes_toml(0, 0, lab.addr, es1, es2, 20))])
        .expect("routes");
    let server = Server::start(std::sync::Arc::new(cfg), dir.path().to_path_buf())
        .await
        .expect("starts");
    (server, lab, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_the_record_systems_it_sees_every_accepted_result_delivered_once() {
    let es1: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let es2: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let (server, _lab, _dir) = server_delivering_to(es1, es2).await;
    // Two connections of 60: the 50th message of each carries a 180 KB CDA document.
    let report = run(LoadSpec {
        connections: 2,
        mix: Mix::Results,
        receivers: vec![es1, es2],
        drain_timeout: Duration::from_secs(30),
        run_id: "E".into(),
        ..LoadSpec::new(server.addr("sil").expect("sil"), 120)
    })
    .await
    .expect("load runs");
    let e = report.end_to_end.clone().expect("end to end");
    assert_eq!(
        (report.accepted, report.refused, report.failed),
        (120, 0, 0),
        "{report}"
    );
    assert!(report.bytes > 2 * 180_000, "{report}");
    assert_eq!(
        (e.delivered, e.duplicates, e.undelivered),
        (120, 0, 0),
        "{report}"
    );
    assert!(
        e.latency.p50_us > 0 && e.latency.max_us >= e.latency.p99_us,
        "{report}"
    );
    assert!(
        report.to_string().contains("end to end 120 delivered"),
        "{report}"
    );
    let json: serde_json::Value = serde_json::to_value(&report).expect("json");
    assert_eq!(json["end_to_end"]["delivered"], 120);
    assert_eq!(json["mix"], "results");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_and_admissions_reach_the_lab() {
    let h = Harness::start(|r| r).await;
    let report = run(LoadSpec {
        connections: 3,
        mix: Mix::Orders,
        run_id: "O".into(),
        ..LoadSpec::new(h.server.addr("dpi").expect("dpi"), 60)
    })
    .await
    .expect("load runs");
    assert_eq!(
        (report.accepted, report.refused, report.failed),
        (60, 0, 0),
        "{report}"
    );
    assert!(h.lab.wait_for(60, Duration::from_secs(20)).await);
    let types: std::collections::BTreeSet<String> = h
        .lab
        .got
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|m| {
            let m = labroute::hl7::Message::parse(m).ok()?;
            Some(m.text("MSH-9.2").into_owned())
        })
        .collect();
    assert_eq!(types.into_iter().collect::<Vec<_>>(), ["A01", "A08", "O21"]);
    h.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_fixed_rate_it_sends_what_the_rate_and_duration_allow() {
    let h = Harness::start(|r| r).await;
    // 40 messages a second for one second over 4 connections: ten planned sends each,
    // however late the machine runs them (the plan, not the clock, counts).
    let report = run(LoadSpec {
        connections: 4,
        rate: Some(40.0),
        duration: Some(Duration::from_secs(1)),
        run_id: "R".into(),
        ..LoadSpec::new(h.sil(), 1000)
    })
    .await
    .expect("load runs");
    assert_eq!((report.sent, report.accepted), (40, 40), "{report}");
    assert!(report.to_string().contains("at 40/s"), "{report}");
    h.server.shutdown().await;
}
