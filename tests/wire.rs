//! Real-world quirks on the listening side, over real sockets: a UTF-8 BOM before MSH, LF and
//! CRLF terminators, the v2.7 five-character encoding field, bytes between frames, an
//! oversized frame, an idle connection, and the connection limit.

mod common;

use std::time::Duration;

use common::*;
use labroute::hl7::Message;
use labroute::hl7::mllp::frame;
use labroute::stats::STATS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn setup(engine: &str) -> Harness {
    let engine = engine.to_owned();
    Harness::start(move |r| {
        r.replace(
            "[engine]\nidle_timeout_secs = 60\n",
            &format!("[engine]\n{engine}\n"),
        )
    })
    .await
}

fn ack_text(a: &[u8]) -> String {
    String::from_utf8_lossy(a).replace('\r', "\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bom_lf_crlf_and_the_five_character_encoding_field_are_read_and_forwarded_unchanged() {
    let s = setup("idle_timeout_secs = 60").await;
    let base = String::from_utf8(result_by_identifier("ES1", "Q0", "100001", "4.2")).expect("utf8");
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(base.replace("|Q0|", "|Q-BOM|").as_bytes());
    let lf = base
        .replace("|Q0|", "|Q-LF|")
        .replace('\r', "\n")
        .into_bytes();
    let crlf = base
        .replace("|Q0|", "|Q-CRLF|")
        .replace('\r', "\r\n")
        .into_bytes();
    let v27 = base
        .replace("MSH|^~\\&|", "MSH|^~\\&#|")
        .replace("|Q0|P|2.5|", "|Q-V27|P|2.7|")
        .into_bytes();
    let sent = vec![bom, lf, crlf, v27];
    let acks = send_all(s.sil(), &sent).await.expect("acks");
    let ids = ["Q-BOM", "Q-LF", "Q-CRLF", "Q-V27"];
    for (a, id) in acks.iter().zip(ids) {
        assert_eq!(msa(a), ("AA".to_owned(), id.to_owned()), "{}", ack_text(a));
    }
    let v27_ack = Message::parse(&acks[3]).expect("ack parses");
    assert_eq!(
        v27_ack.text("MSH-2"),
        "^~\\&#",
        "the ACK keeps the sender's delimiters"
    );
    assert_eq!(v27_ack.text("MSH-12"), "2.7");
    assert!(s.es1.wait_for(4, Duration::from_secs(20)).await);
    assert_eq!(
        *s.es1.got.lock().expect("lock"),
        sent,
        "forwarded byte for byte, in order"
    );
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_between_frames_are_skipped_and_every_frame_is_answered_in_order() {
    let s = setup("idle_timeout_secs = 60").await;
    let skipped_before = STATS.snapshot().bytes_skipped;
    let mut wire = b"noise before\r\n".to_vec();
    wire.extend(frame(&result_by_identifier("ES1", "G1", "100001", "1")));
    wire.extend(b"\x00\x00 between \x1c\r");
    wire.extend(frame(&result_by_identifier("ES1", "G2", "100001", "2")));
    let mut c = TcpStream::connect(s.sil()).await.expect("connect");
    c.write_all(&wire).await.expect("write");
    let a1 = read_frame(&mut c).await.expect("first ACK");
    let a2 = read_frame(&mut c).await.expect("second ACK");
    assert_eq!(msa(&a1), ("AA".to_owned(), "G1".to_owned()));
    assert_eq!(msa(&a2), ("AA".to_owned(), "G2".to_owned()));
    // Counted (other tests of this binary may add to the same process-wide counter).
    assert!(STATS.snapshot().bytes_skipped >= skipped_before + 27);
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_gets_ar_104_and_the_connection_goes_on() {
    let s = setup("idle_timeout_secs = 60\nmax_frame_bytes = 4096").await;
    let oversized_before = STATS.snapshot().frames_oversized;
    let mut big =
        String::from_utf8(result_by_identifier("ES1", "BIG", "100001", "1")).expect("utf8");
    big.push_str(&format!("NTE|1||{}\r", "x".repeat(10_000)));
    let acks = send_all(
        s.sil(),
        &[
            big.into_bytes(),
            result_by_identifier("ES1", "SMALL", "100001", "2"),
        ],
    )
    .await
    .expect("acks");
    let t = ack_text(&acks[0]);
    assert_eq!(msa(&acks[0]), ("AR".to_owned(), "BIG".to_owned()), "{t}");
    assert!(t.contains("|104^message of "), "{t}");
    assert!(t.contains("exceeds the 4096-byte limit"), "{t}");
    assert_eq!(msa(&acks[1]), ("AA".to_owned(), "SMALL".to_owned()));
    assert!(s.es1.wait_for(1, Duration::from_secs(20)).await);
    assert_eq!(s.es1.control_ids(), ["SMALL"]);
    assert!(STATS.snapshot().frames_oversized > oversized_before);
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_timeout() {
    let s = setup("idle_timeout_secs = 1").await;
    let idle_before = STATS.snapshot().connections_idle_closed;
    let mut c = TcpStream::connect(s.sil()).await.expect("connect");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .expect("closed well before 10 s");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(STATS.snapshot().connections_idle_closed > idle_before);
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_and_a_freed_slot_is_reused() {
    let s = setup("idle_timeout_secs = 60\nmax_connections = 2").await;
    let refused_before = STATS.snapshot().connections_refused;
    let addr = s.sil();
    let mut held = Vec::new();
    for i in 0..2 {
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(&frame(&result_by_identifier(
            "ES1",
            &format!("C{i}"),
            "1",
            "1",
        )))
        .await
        .expect("write");
        assert_eq!(msa(&read_frame(&mut c).await.expect("ack")).0, "AA");
        held.push(c);
    }
    let mut third = TcpStream::connect(addr).await.expect("the kernel accepts");
    let _ = third
        .write_all(&frame(&result_by_identifier("ES1", "C3", "1", "1")))
        .await;
    assert!(
        read_frame(&mut third).await.is_err(),
        "a third connection is closed without an answer"
    );
    assert!(STATS.snapshot().connections_refused > refused_before);
    drop(held.pop());
    let mut answered = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(a) = send_all(addr, &[result_by_identifier("ES1", "C4", "1", "1")]).await {
            answered = msa(&a[0]).0 == "AA";
            break;
        }
    }
    assert!(answered, "a freed slot serves a new connection");
    drop(held);
    s.server.shutdown().await;
}
