//! Peer faults (RELIABILITY.md): ES2's record system misbehaves in each of the ways
//! (down, accepts and never answers, AE, AR, closes mid-frame, slow at one message a
//! second) while ES1's is healthy. Each fault is handled as the spine says (retry with
//! backoff, or dead letter for AR), ES1's results flow meanwhile (one stalled establishment
//! never holds back another), and once the fault ends ES2 gets every message it was owed,
//! in order.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use labroute::hl7::Message;
use labroute::hl7::ack::{self, AckCode, AckHeader};
use labroute::hl7::mllp::frame;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The application is down behind its port: every connection closed at once (nothing
    /// listening at all is `tests/spine.rs`, a receiver down then back).
    Down,
    /// Accepts, reads, never answers.
    Silent,
    Ae,
    Ar,
    /// Answers with half an ACK frame, then closes.
    CloseMidFrame,
    /// AA, one message a second.
    Slow,
    Healthy,
}

/// A record system whose behaviour the test switches; what it took (answered AA), in order.
#[derive(Clone)]
struct Faulty {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    took: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<usize>>,
}

impl Faulty {
    async fn start() -> Faulty {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let f = Faulty {
            addr: listener.local_addr().unwrap(),
            mode: Arc::new(Mutex::new(Mode::Healthy)),
            took: Arc::default(),
            seen: Arc::default(),
        };
        let f2 = f.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                if f2.mode() == Mode::Down {
                    drop(s);
                    continue;
                }
                tokio::spawn(f2.clone().serve(s));
            }
        });
        f
    }

    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }

    fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    fn took(&self) -> Vec<String> {
        self.took.lock().unwrap().clone()
    }

    async fn serve(self, mut s: tokio::net::TcpStream) {
        let mut reader = FrameReader::default();
        while let Some(frames) = reader.next(&mut s).await {
            for fr in frames {
                *self.seen.lock().unwrap() += 1;
                let prepared = labroute::hl7::message::prepare(&fr);
                let Ok(m) = Message::parse(&prepared) else {
                    return;
                };
                let ctrl = m.text("MSH-10").into_owned();
                let code = match self.mode() {
                    Mode::Down => return,
                    Mode::Silent => {
                        // Hold the connection open, answer nothing.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    Mode::Ae => AckCode::AE,
                    Mode::Ar => AckCode::AR,
                    Mode::CloseMidFrame => {
                        let a = ack::build(&AckHeader::of(&m), AckCode::AA, None, "R", "1");
                        let f = frame(&a);
                        let _ = s.write_all(&f[..f.len() / 2]).await;
                        return;
                    }
                    Mode::Slow => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        AckCode::AA
                    }
                    Mode::Healthy => AckCode::AA,
                };
                if code == AckCode::AA {
                    self.took.lock().unwrap().push(ctrl);
                }
                let a = ack::build(&AckHeader::of(&m), code, None, "R", "1");
                if s.write_all(&frame(&a)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Sends one result per control id for `es`'s patient; each must be accepted.
async fn send_accepted(sil: SocketAddr, es: &str, ids: &[String]) {
    let msgs: Vec<Vec<u8>> = ids
        .iter()
        .map(|c| result_by_identifier(es, c, "100001", "1"))
        .collect();
    for a in send_all(sil, &msgs).await.unwrap() {
        assert_eq!(msa(&a).0, "AA");
    }
}

fn short_ack_timeout(routes: String) -> String {
    // Answers are waited for 2 s (a silent peer), retried every 100 ms at most.
    routes
        .replace("ack_timeout_secs = 5", "ack_timeout_secs = 2")
        .replace("backoff_max_ms = 50", "backoff_max_ms = 100")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_peer_fault_is_retried_or_dead_lettered_and_never_holds_back_another_establishment() {
    let es2 = Faulty::start().await;
    let lab = Receiver::start("127.0.0.1:0", AckCode::AA).await;
    let es1 = Receiver::start("127.0.0.1:0", AckCode::AA).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = short_ack_timeout(routes_toml(0, 0, lab.addr, es1.addr, es2.addr, 50));
    let cfg = labroute::config::Config::from_sources(&[("t.toml".into(), routes)]).unwrap();
    let server = labroute::server::Server::start(Arc::new(cfg), dir.path().to_owned())
        .await
        .unwrap();
    let sil = server.addr("sil").unwrap();
    let mut es1_sent = Vec::new();
    let mut es2_owed = Vec::new();
    let mut report = Vec::new();

    for (k, mode) in [
        Mode::Down,
        Mode::Silent,
        Mode::Ae,
        Mode::CloseMidFrame,
        Mode::Slow,
        Mode::Ar,
    ]
    .into_iter()
    .enumerate()
    {
        es2.set(mode);
        let seen_before = *es2.seen.lock().unwrap();
        let took_before = es2.took().len();
        // Three results for ES2, then twenty for ES1.
        let mine: Vec<String> = (0..3).map(|i| format!("F{k}-{i}")).collect();
        send_accepted(sil, "ES2", &mine).await;
        let theirs: Vec<String> = (0..20).map(|i| format!("H{k}-{i:02}")).collect();
        send_accepted(sil, "ES1", &theirs).await;
        es1_sent.extend(theirs);
        // ES1's record gets all of its results while ES2's is at fault.
        let want = es1_sent.len();
        assert!(
            eventually(|| es1.count() >= want).await,
            "{mode:?}: ES1 got {} of {want} while ES2's record was at fault",
            es1.count()
        );
        let took_during = es2.took().len() - took_before;
        if mode == Mode::Ar {
            // Refused: dead letters with the peer's reason, nothing taken.
            assert!(
                eventually(|| {
                    server
                        .store
                        .store()
                        .dead_letters()
                        .map(|d| d.len() >= 3)
                        .unwrap_or(false)
                })
                .await,
                "AR: three dead letters"
            );
            let dead = server.store.store().dead_letters().unwrap();
            assert!(
                dead.iter()
                    .all(|(d, l)| d == "dpi-es2" && l.reason.contains("AR"))
            );
            report.push(format!(
                "{mode:?}: 3 dead letters with the peer's reason, ES1 unaffected"
            ));
        } else {
            if mode != Mode::Slow && mode != Mode::Down {
                assert!(
                    eventually(|| *es2.seen.lock().unwrap() > seen_before).await,
                    "{mode:?}: the engine tried"
                );
            }
            es2_owed.extend(mine);
            es2.set(Mode::Healthy);
            let owed = es2_owed.len();
            assert!(
                eventually(|| es2.took().len() >= owed).await,
                "{mode:?}: ES2 got {} of {owed} once back",
                es2.took().len()
            );
            let attempts = *es2.seen.lock().unwrap() - seen_before;
            report.push(format!(
                "{mode:?}: ES1's 20 delivered meanwhile; ES2 took {took_during} during the fault, all 3 after ({attempts} attempts)"
            ));
        }
    }
    // Every owed message delivered, in order; some more than once is allowed
    // (at-least-once), never out of order for their first delivery.
    let took = es2.took();
    let mut first: Vec<String> = Vec::new();
    for c in &took {
        if !first.contains(c) {
            first.push(c.clone());
        }
    }
    assert_eq!(first, es2_owed, "ES2's first deliveries in the order sent");
    assert_eq!(es1.control_ids(), es1_sent, "ES1's in order, each once");
    for r in &report {
        eprintln!("peer fault: {r}");
    }
    server.shutdown().await;
}
