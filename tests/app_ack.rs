//! Enhanced acknowledgement mode: the commit ACK (CA) on the connection once the message is
//! durable, then the application ACK (MSH-16) as a message of its own to the listener's
//! `application_acks_to` once the outcome is final; MSH-15 = NE with MSH-16 = AL answers
//! AA on the connection, as original mode does.

mod common;

use std::time::Duration;

use common::*;
use labroute::hl7::Message;
use labroute::hl7::ack::AckCode;
use labroute::store::writer::OperatorCommand;

fn with_modes(msg: Vec<u8>, msh15: &str, msh16: &str) -> Vec<u8> {
    String::from_utf8(msg)
        .expect("utf8")
        .replace("|P|2.5|||||FRA|", &format!("|P|2.5|||{msh15}|{msh16}|FRA|"))
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_acks_follow_the_final_outcome_as_msh16_asks() {
    let h = Harness::start_with([AckCode::AA, AckCode::AA, AckCode::AR], |r| {
        r.replacen(
            "[[listener]]\nname = \"dpi\"",
            "application_acks_to = \"sil\"\n[[listener]]\nname = \"dpi\"",
            1,
        )
    })
    .await;
    let (server, lab) = (&h.server, &h.lab);
    let msgs = vec![
        // delivered to ES1: CA now, AA later
        with_modes(result_by_identifier("ES1", "A1", "100001", "1"), "AL", "AL"),
        // delivered, but only errors asked for: CA, no application ACK
        with_modes(result_by_identifier("ES1", "A2", "100001", "2"), "AL", "ER"),
        // no owner: CA, held; discarded by an operator below: AR
        with_modes(result_by_identifier("XX", "A3", "1", "3"), "AL", "AL"),
        // NE/AL is original mode: AA on the connection, nothing later
        with_modes(result_by_identifier("ES1", "A4", "100001", "4"), "NE", "AL"),
        // ES2's record answers AR: dead letter, AE
        with_modes(result_by_identifier("ES2", "A5", "200002", "5"), "AL", "AL"),
    ];
    let acks = send_all(h.sil(), &msgs).await.expect("acks");
    let got: Vec<(String, String)> = acks.iter().map(|a| msa(a)).collect();
    let want = [
        ("CA", "A1"),
        ("CA", "A2"),
        ("CA", "A3"),
        ("AA", "A4"),
        ("CA", "A5"),
    ];
    assert_eq!(
        got,
        want.map(|(c, i)| (c.to_owned(), i.to_owned())),
        "immediate answers"
    );

    let quarantined = server.store.store().quarantine().expect("quarantine");
    assert_eq!(quarantined.len(), 1);
    server
        .store
        .operator(
            OperatorCommand::Discard {
                seq: quarantined[0].0.seq,
                reason: "test".into(),
            },
            &common::local_operator("tester"),
        )
        .await
        .expect("discard");

    assert!(
        lab.wait_for(3, Duration::from_secs(20)).await,
        "3 application ACKs"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut app: Vec<(String, String, String)> = lab
        .got
        .lock()
        .expect("lock")
        .iter()
        .map(|m| {
            let m = Message::parse(m).expect("parses");
            (
                m.text("MSA-1").into_owned(),
                m.text("MSA-2").into_owned(),
                m.text("ERR-3.1").into_owned(),
            )
        })
        .collect();
    app.sort();
    assert_eq!(
        app,
        [
            ("AA".into(), "A1".into(), "".into()),
            ("AE".into(), "A5".into(), "207".into()),
            ("AR".into(), "A3".into(), "207".into()),
        ],
        "one application ACK per final outcome asked for"
    );
    let first = Message::parse(&lab.got.lock().expect("lock")[0])
        .expect("parses")
        .text("MSH-9")
        .into_owned();
    assert!(first.starts_with("ACK^R01"), "{first}");
    h.server.shutdown().await;
}
