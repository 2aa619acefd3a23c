//! The routing spine over real sockets: two establishments, order correlation, identifier
//! routing, quarantine and release, retransmissions, a receiver that is down then back. The
//! SIGKILL campaign is `tests/crash.rs`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use labroute::admin::{AdminRequest, execute};
use labroute::hl7::ack::AckCode;
use labroute::server::Server;
use labroute::store::writer::OperatorCommand;

async fn start(p: &Peers, data: &Path) -> (Server, Option<Nats>) {
    serve(
        routes_toml(0, 0, p.lab.addr, p.es1.addr, p.es2.addr, 50),
        data,
    )
    .await
}

/// A server on `routes`, on the store `LABROUTE_TEST_STORE` names (the embedded one, or a
/// JetStream log in front of it), and the NATS server it then needs.
async fn serve(routes: String, data: &Path) -> (Server, Option<Nats>) {
    let (store, nats) = test_store(data);
    let cfg = config(&format!("{routes}\n{store}"));
    let s = Server::start(cfg, data.to_owned())
        .await
        .expect("server starts");
    (s, nats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_result_reaches_only_its_owning_establishment() {
    let dir = tempfile::tempdir().unwrap();
    let p = peers().await;
    let (s, _nats) = start(&p, dir.path()).await;
    let dpi = s.addr("dpi").unwrap();
    let sil = s.addr("sil").unwrap();

    let acks = send_all(
        dpi,
        &[
            order("ES1", "O1", "P1", "101"),
            order("ES2", "O2", "P2", "202"),
        ],
    )
    .await
    .unwrap();
    assert!(acks.iter().all(|a| msa(a).0 == "AA"));
    let acks = send_all(
        sil,
        &[
            result_for_order("ES1", "R1", "P1", "5.1"),
            result_for_order("ES2", "R2", "P2", "5.2"),
            result_by_identifier("ES1", "R3", "101", "4.0"),
            result_by_identifier("ES2", "R4", "202", "4.1"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        acks.iter().map(|a| msa(a)).collect::<Vec<_>>(),
        vec![
            ("AA".into(), "R1".into()),
            ("AA".into(), "R2".into()),
            ("AA".into(), "R3".into()),
            ("AA".into(), "R4".into())
        ]
    );
    assert!(p.es1.wait_for(2, Duration::from_secs(10)).await);
    assert!(p.es2.wait_for(2, Duration::from_secs(10)).await);
    assert!(p.lab.wait_for(2, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.es1.control_ids(), vec!["R1", "R3"]);
    assert_eq!(p.es2.control_ids(), vec!["R2", "R4"]);
    assert_eq!(p.lab.control_ids(), vec!["O1", "O2"]);
    // Forwarded byte for byte.
    assert_eq!(
        p.es1.got.lock().unwrap()[0],
        result_for_order("ES1", "R1", "P1", "5.1")
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_conflicting_results_are_held_until_an_operator_releases_them() {
    let dir = tempfile::tempdir().unwrap();
    let p = peers().await;
    let (s, _nats) = start(&p, dir.path()).await;
    send_all(s.addr("dpi").unwrap(), &[order("ES1", "O1", "P1", "101")])
        .await
        .unwrap();
    // Unknown: no evidence. Conflict: the ES1 order, but an ES2 patient authority.
    let conflict = String::from_utf8(result_for_order("ES1", "RC", "P1", "1"))
        .unwrap()
        .replace("PID|||X", "PID|||202^^^CHSUD-IPP^PI")
        .into_bytes();
    let acks = send_all(
        s.addr("sil").unwrap(),
        &[result_by_identifier("ES9", "RU", "1", "1"), conflict],
    )
    .await
    .unwrap();
    assert!(
        acks.iter().all(|a| msa(a).0 == "AA"),
        "quarantined messages are accepted (stored), not refused"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        p.es1.count() + p.es2.count(),
        0,
        "nothing quarantined reaches anyone"
    );

    let Ok(list) = execute(
        AdminRequest::QuarantineList,
        &s.store,
        None,
        &common::local_operator("alice"),
    )
    .await
    else {
        panic!()
    };
    let list = list.as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    let reasons: Vec<&str> = list.iter().map(|q| q["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, vec!["no_evidence", "conflict"]);
    let conflict_seq = list[1]["seq"].as_u64().unwrap();
    let Ok(shown) = execute(
        AdminRequest::QuarantineShow { seq: conflict_seq },
        &s.store,
        None,
        &common::local_operator("alice"),
    )
    .await
    else {
        panic!()
    };
    let evidence = shown["record"]["decision"]["Quarantined"]["evidence"]
        .as_array()
        .unwrap();
    assert!(
        evidence
            .iter()
            .any(|e| e["establishment"] == "ES1" && e["rule"] == "OrderPlacer")
    );
    assert!(
        evidence
            .iter()
            .any(|e| e["establishment"] == "ES2" && e["field"] == "PID-3.4.1")
    );

    let cmd = OperatorCommand::Release {
        seq: conflict_seq,
        establishment: "ES2".into(),
    };
    let r = execute(
        AdminRequest::Command { command: cmd },
        &s.store,
        None,
        &common::local_operator("alice"),
    )
    .await;
    assert!(r.is_ok(), "{r:?}");
    assert!(p.es2.wait_for(1, Duration::from_secs(10)).await);
    assert_eq!(p.es2.control_ids(), vec!["RC"]);
    assert_eq!(p.es1.count(), 0);
    // Releasing to an unknown establishment, or twice, is refused.
    let again = OperatorCommand::Release {
        seq: conflict_seq,
        establishment: "ES1".into(),
    };
    let r = execute(
        AdminRequest::Command { command: again },
        &s.store,
        None,
        &common::local_operator("alice"),
    )
    .await;
    assert!(
        matches!(r, Err(labroute::admin::AdminError::Conflict(_))),
        "{r:?}"
    );
    let log = s.store.store().operator_log().unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0].operator.as_str(), log[0].action.as_str(), log[0].seq),
        ("alice", "quarantine.release", conflict_seq)
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retransmission_gets_the_original_ack_and_is_not_delivered_twice() {
    let dir = tempfile::tempdir().unwrap();
    let p = peers().await;
    let (s, _nats) = start(&p, dir.path()).await;
    let sil = s.addr("sil").unwrap();
    let m = result_by_identifier("ES1", "DUP1", "101", "4.2");
    let first = send_all(sil, std::slice::from_ref(&m)).await.unwrap();
    let again = send_all(sil, &[m.clone(), m.clone()]).await.unwrap();
    assert_eq!(first[0], again[0], "the original ACK, byte for byte");
    assert_eq!(first[0], again[1]);
    // Same control id, other content: AR 205, kept for review, not routed.
    let other = result_by_identifier("ES1", "DUP1", "101", "9.9");
    let r = send_all(sil, &[other]).await.unwrap();
    assert_eq!(msa(&r[0]).0, "AR");
    assert!(String::from_utf8_lossy(&r[0]).contains("|205^"));
    assert!(p.es1.wait_for(1, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(p.es1.control_ids(), vec!["DUP1"]);
    assert_eq!(
        s.store.store().counts().unwrap().messages,
        2,
        "the reused control id is stored for review"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_while_gets_everything_in_order_when_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = peers().await;
    let es1_port = free_port();
    let es1_addr: std::net::SocketAddr = format!("127.0.0.1:{es1_port}").parse().unwrap();
    let (s, _nats) = serve(
        routes_toml(0, 0, p.lab.addr, es1_addr, p.es2.addr, 50),
        dir.path(),
    )
    .await;
    let msgs: Vec<Vec<u8>> = (0..20)
        .map(|i| result_by_identifier("ES1", &format!("D{i:02}"), &format!("{}", 100 + i % 3), "1"))
        .collect();
    let acks = send_all(s.addr("sil").unwrap(), &msgs).await.unwrap();
    assert!(acks.iter().all(|a| msa(a).0 == "AA"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (queued, _) = s.store.store().queue_stats("dpi-es1").unwrap();
    assert_eq!(queued, 20, "held while the receiver is down");
    let es1 = Receiver::start(&format!("127.0.0.1:{es1_port}"), AckCode::AA).await;
    assert!(
        es1.wait_for(20, Duration::from_secs(20)).await,
        "got {}",
        es1.count()
    );
    let want: Vec<String> = (0..20).map(|i| format!("D{i:02}")).collect();
    assert_eq!(es1.control_ids(), want, "FIFO, so per-patient order holds");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_ar_is_dead_lettered_with_its_reason_and_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let p = peers().await;
    let refusing = Receiver::start("127.0.0.1:0", AckCode::AR).await;
    let (s, _nats) = serve(
        routes_toml(0, 0, p.lab.addr, refusing.addr, p.es2.addr, 50),
        dir.path(),
    )
    .await;
    send_all(
        s.addr("sil").unwrap(),
        &[
            result_by_identifier("ES1", "AR1", "101", "1"),
            result_by_identifier("ES1", "AR2", "101", "1"),
        ],
    )
    .await
    .unwrap();
    assert!(refusing.wait_for(2, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dead = s.store.store().dead_letters().unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead[0].1.reason.contains("AR"));
    let cmd = OperatorCommand::RetryDead {
        destination: "dpi-es1".into(),
        seq: dead[0].1.seq,
    };
    let r = execute(
        AdminRequest::Command { command: cmd },
        &s.store,
        None,
        &common::local_operator("bob"),
    )
    .await;
    assert!(r.is_ok(), "{r:?}");
    assert!(refusing.wait_for(3, Duration::from_secs(10)).await);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_and_unsupported_messages_get_a_nak_with_err_and_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let p = peers().await;
    let (s, _nats) = start(&p, dir.path()).await;
    let sil = s.addr("sil").unwrap();
    let acks = send_all(
        sil,
        &[
            b"MSH|^~\\&|SIL|LAB|DPI||x||ORU^R01|B1|P|2.5\rpid|lower".to_vec(),
            b"MSH|^~\\&|SIL|LAB|DPI||x||QRY^Q01|B2|P|2.5\r".to_vec(),
            b"MSH|^~\\&|SIL|LAB|DPI||x||ORU^R01||P|2.5\r".to_vec(),
            b"garbage without MSH".to_vec(),
        ],
    )
    .await
    .unwrap();
    let text: Vec<String> = acks
        .iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(
        text[0].contains("MSA|AR|B1\rERR||")
            && text[0].contains("|100^message could not be read: segment id"),
        "{}",
        text[0]
    );
    assert!(text[0].contains("(byte 42)"), "{}", text[0]);
    assert!(
        text[1].contains("MSA|AR|B2\rERR||MSH^1^9|200^"),
        "{}",
        text[1]
    );
    assert!(text[2].contains("ERR||MSH^1^10|101^"), "{}", text[2]);
    assert!(text[3].contains("MSA|AR|"), "{}", text[3]);
    assert_eq!(
        s.store.store().counts().unwrap().messages,
        4,
        "every refused message is kept"
    );
    s.shutdown().await;
}
