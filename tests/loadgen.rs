//! The load generator against a real server: every message acknowledged and delivered to the
//! establishment its identifiers name.

mod common;

use std::time::Duration;

use common::*;
use labroute::loadgen::{LoadSpec, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_messages_are_all_acknowledged_and_delivered_to_their_owner() {
    let h = Harness::start(|r| r).await;
    let (es1, es2) = (&h.es1, &h.es2);
    let report = run(LoadSpec {
        to: h.sil(),
        connections: 4,
        messages: 202,
        authorities: vec!["CHNORD-IPP".into(), "CHSUD-IPP".into()],
        obx: 3,
        ack_timeout: Duration::from_secs(30),
        run_id: "T".into(),
        tls: None,
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
    for _ in 0..400 {
        if es1.count() + es2.count() >= 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((es1.count(), es2.count()), (101, 101));
    let owned_by = |r: &Receiver, auth: &str| {
        r.got
            .lock()
            .expect("lock")
            .iter()
            .all(|m| String::from_utf8_lossy(m).contains(&format!("^^^{auth}^PI")))
    };
    assert!(owned_by(es1, "CHNORD-IPP") && owned_by(es2, "CHSUD-IPP"));
    h.server.shutdown().await;
}
