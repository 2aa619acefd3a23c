//! MLLP over TLS with client certificates, over real handshakes: a client with a certificate
//! from our CA (rustls, and `openssl s_client`, a client nobody here wrote) gets its ACK; no
//! certificate, another CA's certificate, plain TCP on the TLS port, and TLS 1.2 or 1.1 where
//! 1.3 is required are refused, counted, and nothing is delivered.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use labroute::hl7::ack::AckCode;
use labroute::hl7::mllp::frame;
use labroute::stats::STATS;
use labroute::tls::{MinVersion, TlsFiles};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn setup() -> Harness {
    Harness::start(|r| {
        tls_listeners(&r).replace("idle_timeout_secs = 60", "idle_timeout_secs = 2")
            + &dev_tls_section()
            + &example_systems()
    })
    .await
}

fn s_client(port: u16, args: &[&str], msg: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-quiet",
            "-ign_eof",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is needed (Debian package openssl)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&frame(msg))
        .expect("write");
    let out = child.wait_with_output().expect("openssl ends");
    String::from_utf8_lossy(&out.stdout).replace('\r', "\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_with_a_certificate_from_our_ca_over_tls13_are_answered() {
    let s = setup().await;
    let addr = s.sil();
    let c = dev_certs();
    let (ca, cert, key) = (c.join("ca.pem"), c.join("sil.pem"), c.join("sil.key"));

    // rustls client with the SIL's certificate.
    let ack = tls_send(
        addr,
        Some((&ca, &cert, &key)),
        &result_by_identifier("ES1", "T1", "100001", "1"),
    )
    .await
    .expect("answered");
    assert_eq!(msa(&ack), ("AA".into(), "T1".into()));

    // openssl s_client with the same certificate, carrying one MLLP frame.
    let p = |f: &str| c.join(f).display().to_string();
    let out = s_client(
        addr.port(),
        &[
            "-cert",
            &p("sil.pem"),
            "-key",
            &p("sil.key"),
            "-CAfile",
            &p("ca.pem"),
        ],
        &result_by_identifier("ES1", "T2", "100001", "2"),
    );
    assert!(out.contains("MSA|AA|T2"), "s_client got: {out}");
    assert!(s.es1.wait_for(2, Duration::from_secs(20)).await);

    let failed_before = STATS.snapshot().tls_handshakes_failed;
    // No client certificate: the TLS 1.3 handshake "succeeds" for the client; the refusal
    // shows on the first read.
    let r = tls_send(
        addr,
        None,
        &result_by_identifier("ES1", "X1", "100001", "1"),
    )
    .await;
    assert!(r.is_err(), "{r:?}");
    let out = s_client(
        addr.port(),
        &["-CAfile", &p("ca.pem")],
        &result_by_identifier("ES1", "X2", "100001", "1"),
    );
    assert!(!out.contains("MSA|"), "{out}");

    // A certificate from another CA.
    let other = pki_dir("foreign CA", &["sil"]);
    let r = tls_send(
        addr,
        Some((
            &ca,
            &other.path().join("sil.pem"),
            &other.path().join("sil.key"),
        )),
        &result_by_identifier("ES1", "X3", "100001", "1"),
    )
    .await;
    assert!(r.is_err(), "{r:?}");

    // Plain TCP on the TLS port: no MLLP answer.
    let mut plain = TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(&frame(&result_by_identifier("ES1", "X4", "100001", "1")))
        .await
        .expect("write");
    assert!(read_frame(&mut plain).await.is_err(), "plain TCP answered");

    // TLS 1.2 (and 1.1) where 1.3 is required, even with a good certificate.
    for version in ["-tls1_2", "-tls1_1"] {
        let out = s_client(
            addr.port(),
            &[
                version,
                "-cipher",
                "DEFAULT@SECLEVEL=0",
                "-cert",
                &p("sil.pem"),
                "-key",
                &p("sil.key"),
                "-CAfile",
                &p("ca.pem"),
            ],
            &result_by_identifier("ES1", "X5", "100001", "1"),
        );
        assert!(!out.contains("MSA|"), "{version}: {out}");
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        STATS.snapshot().tls_handshakes_failed >= failed_before + 5,
        "refusals counted"
    );
    assert_eq!(
        s.es1.control_ids(),
        ["T1", "T2"],
        "nothing refused was delivered"
    );
    s.server.shutdown().await;
}

fn client(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let c = dev_certs();
    (
        c.join("ca.pem"),
        c.join(format!("{name}.pem")),
        c.join(format!("{name}.key")),
    )
}

async fn send_as(addr: std::net::SocketAddr, system: &str, msg: &[u8]) -> (String, String, String) {
    let (ca, cert, key) = client(system);
    let ack = tls_send(addr, Some((&ca, &cert, &key)), msg)
        .await
        .unwrap_or_else(|e| panic!("{system}: {e}"));
    let m = labroute::hl7::Message::parse(&ack).expect("ACK parses");
    (
        m.text("MSA-1").into_owned(),
        m.text("MSA-2").into_owned(),
        m.text("ERR-3.1").into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_system_speaks_only_for_its_own_establishments_whatever_msh4_says() {
    let s = setup().await;
    let (sil, dpi) = (s.sil(), s.server.addr("dpi").expect("dpi"));
    let before = STATS.snapshot();
    let aa = |id: &str| ("AA".to_owned(), id.to_owned(), String::new());
    let refused = |id: &str| ("AR".to_owned(), id.to_owned(), "207".to_owned());

    // ES1's DPI: its own order passes.
    assert_eq!(
        send_as(dpi, "dpi-es1", &order("ES1", "O1", "P1", "100001")).await,
        aa("O1")
    );
    // ES1's DPI claiming to be ES2 (MSH-4, placer namespace, IPP authority): refused.
    assert_eq!(
        send_as(dpi, "dpi-es1", &order("ES2", "O2", "P2", "200002")).await,
        refused("O2")
    );
    // ES1's DPI may not send results at all (role), not even for ES1.
    assert_eq!(
        send_as(
            dpi,
            "dpi-es1",
            &result_by_identifier("ES1", "R1", "100001", "1")
        )
        .await,
        refused("R1")
    );
    // A certificate from our CA that names no configured system.
    assert_eq!(
        send_as(
            sil,
            "operator",
            &result_by_identifier("ES1", "R2", "100001", "1")
        )
        .await,
        refused("R2")
    );
    // The lab speaks for both.
    assert_eq!(
        send_as(
            sil,
            "sil",
            &result_by_identifier("ES2", "R3", "200002", "3")
        )
        .await,
        aa("R3")
    );

    assert!(s.lab.wait_for(1, Duration::from_secs(20)).await);
    assert!(s.es2.wait_for(1, Duration::from_secs(20)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.lab.control_ids(),
        ["O1"],
        "only the authorised order reached the lab"
    );
    assert_eq!(s.es2.control_ids(), ["R3"]);
    assert_eq!(s.es1.count(), 0);
    let after = STATS.snapshot();
    assert!(after.refused_establishment > before.refused_establishment);
    assert!(after.refused_role > before.refused_role);
    assert!(after.refused_unknown_system > before.refused_unknown_system);

    // The refused order is kept for review with its decision and sender.
    let store = s.server.store.store();
    let refused_order = (1..=10)
        .filter_map(|n| store.record(n).ok().flatten())
        .find(|r| r.control_id == "O2")
        .expect("O2 stored");
    assert_eq!(
        refused_order.status,
        labroute::store::RecordStatus::Rejected
    );
    assert_eq!(refused_order.sender.as_deref(), Some("dpi-es1"));
    assert_eq!(
        refused_order
            .decision
            .as_ref()
            .and_then(|d| d.establishment())
            .map(|e| e.as_str()),
        Some("ES2")
    );
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_destinations_get_messages_only_when_their_certificate_verifies() {
    let c = dev_certs();
    let ours = TlsFiles {
        ca: c.join("ca.pem"),
        cert: c.join("server.pem"),
        key: c.join("server.key"),
        min_version: MinVersion::Tls13,
    };
    // ES1's record system: a certificate from our CA; it requires ours as client.
    let es1 = Receiver::start_tls("127.0.0.1:0", AckCode::AA, &ours).await;
    // ES2's "record system": a certificate from another CA.
    let other = tempfile::tempdir().expect("tempdir");
    temp_pki(
        other.path(),
        "foreign CA",
        &[],
        &["127.0.0.1"],
        labroute::time::now_ms(),
    );
    let es2 = Receiver::start_tls(
        "127.0.0.1:0",
        AckCode::AA,
        &TlsFiles {
            ca: c.join("ca.pem"),
            cert: other.path().join("server.pem"),
            key: other.path().join("server.key"),
            min_version: MinVersion::Tls13,
        },
    )
    .await;
    let (e1, e2) = (es1.addr, es2.addr);
    let h = Harness::start(move |r| {
        let (a1, a2) = (h_es(&r, 1), h_es(&r, 2));
        r.replace(
            &format!("address = \"{a1}\"\ninsecure = true"),
            &format!("address = \"{e1}\""),
        )
        .replace(
            &format!("address = \"{a2}\"\ninsecure = true"),
            &format!("address = \"{e2}\""),
        ) + &dev_tls_section()
    })
    .await;
    let acks = send_all(
        h.sil(),
        &[
            result_by_identifier("ES1", "D1", "100001", "1"),
            result_by_identifier("ES2", "D2", "200002", "2"),
        ],
    )
    .await
    .expect("acks");
    assert!(acks.iter().all(|a| msa(a).0 == "AA"));
    assert!(es1.wait_for(1, Duration::from_secs(20)).await);
    assert_eq!(es1.control_ids(), ["D1"]);
    assert_eq!(
        *es1.peers.lock().expect("lock"),
        ["urn:labroute:instance"],
        "the instance presents its certificate"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        es2.count(),
        0,
        "nothing sent to a peer whose certificate fails"
    );
    let waiting = h
        .server
        .store
        .store()
        .outbox_after("dpi-es2", None, 10)
        .expect("outbox");
    assert_eq!(waiting.len(), 1);
    let err = waiting[0].1.last_error.clone().unwrap_or_default();
    assert!(err.contains("TLS"), "{err}");
    h.server.shutdown().await;
}

/// A destination known by its certificate (`system`): ES1's record system, presenting the
/// dpi-es1 certificate, gets ES1's results; a peer at ES2's record address presenting ES1's
/// certificate (swapped addresses, a port taken over) gets nothing of ES2's, though its
/// certificate is valid and carries the right host name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_known_by_its_certificate_gets_messages_only_if_it_is_that_system() {
    let pki = tempfile::tempdir().expect("tempdir");
    temp_pki(
        pki.path(),
        "destinations CA",
        &["dpi-es1", "dpi-es2"],
        &["localhost", "127.0.0.1"],
        labroute::time::now_ms(),
    );
    let p = pki.path().to_path_buf();
    let as_system = |name: &str| TlsFiles {
        ca: p.join("ca.pem"),
        cert: p.join(format!("{name}.pem")),
        key: p.join(format!("{name}.key")),
        min_version: MinVersion::Tls13,
    };
    let es1 = Receiver::start_tls("127.0.0.1:0", AckCode::AA, &as_system("dpi-es1")).await;
    let imposter = Receiver::start_tls("127.0.0.1:0", AckCode::AA, &as_system("dpi-es1")).await;
    let (e1, e2) = (es1.addr, imposter.addr);
    let tls = tls_section(
        &p.join("ca.pem"),
        &p.join("server.pem"),
        &p.join("server.key"),
    );
    let before = STATS.snapshot().destination_identity_refused;
    let h = Harness::start(move |r| {
        let (a1, a2) = (h_es(&r, 1), h_es(&r, 2));
        r.replace(
            &format!("address = \"{a1}\"\ninsecure = true"),
            &format!("address = \"{e1}\"\nsystem = \"dpi-es1\""),
        )
        .replace(
            &format!("address = \"{a2}\"\ninsecure = true"),
            &format!("address = \"{e2}\"\nsystem = \"dpi-es2\""),
        ) + &tls
            + &example_systems()
    })
    .await;
    let acks = send_all(
        h.sil(),
        &[
            result_by_identifier("ES1", "S1", "100001", "1"),
            result_by_identifier("ES2", "S2", "200002", "2"),
        ],
    )
    .await
    .expect("acks");
    assert!(acks.iter().all(|a| msa(a).0 == "AA"));
    assert!(es1.wait_for(1, Duration::from_secs(20)).await);
    assert_eq!(es1.control_ids(), ["S1"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(imposter.count(), 0, "ES2's result reached another system");
    let waiting = h
        .server
        .store
        .store()
        .outbox_after("dpi-es2", None, 10)
        .expect("outbox");
    assert_eq!(waiting.len(), 1, "ES2's result waits for ES2's system");
    let err = waiting[0].1.last_error.clone().unwrap_or_default();
    assert!(err.contains("does not name system \"dpi-es2\""), "{err}");
    assert!(STATS.snapshot().destination_identity_refused > before);
    h.server.shutdown().await;
}

/// The address the harness gave destination `dpi-es<n>` (its own receiver).
fn h_es(routes: &str, n: u8) -> String {
    let key = format!("name = \"dpi-es{n}\"\naddress = \"");
    let start = routes.find(&key).map(|i| i + key.len()).unwrap_or(0);
    routes[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Every sender system × claimed establishment × message kind, over real TLS: the exact
/// answer and where it ends up (lab, ES1's record, ES2's record, or nowhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_sender_by_claimed_establishment_by_destination() {
    let s = setup().await;
    let (sil, dpi) = (s.sil(), s.server.addr("dpi").expect("dpi"));
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Outcome {
        Delivered(&'static str),
        Held,
        Refused,
    }
    let speaks_for = |sender: &str| -> Option<(&[&str], bool)> {
        // (establishments, is the lab)
        match sender {
            "sil" => Some((&["ES1", "ES2"], true)),
            "dpi-es1" => Some((&["ES1"], false)),
            "dpi-es2" => Some((&["ES2"], false)),
            _ => None,
        }
    };
    let mut expected = Vec::new();
    let mut n = 0;
    for sender in ["sil", "dpi-es1", "dpi-es2", "operator"] {
        for claim in ["ES1", "ES2", "none"] {
            for kind in ["order", "result"] {
                n += 1;
                let id = format!("M{n}");
                let es = if claim == "none" { "XX" } else { claim };
                let msg = match kind {
                    "order" => order(es, &id, &format!("P{n}"), "100001"),
                    _ => result_by_identifier(es, &id, "100001", "1"),
                };
                let want = match speaks_for(sender) {
                    None => Outcome::Refused,
                    Some((ests, is_lab)) => {
                        let role_ok = (kind == "result") == is_lab;
                        if !role_ok {
                            Outcome::Refused
                        } else if claim == "none" {
                            Outcome::Held
                        } else if !ests.contains(&claim) {
                            Outcome::Refused
                        } else if kind == "order" {
                            Outcome::Delivered("lab")
                        } else if claim == "ES1" {
                            Outcome::Delivered("es1")
                        } else {
                            Outcome::Delivered("es2")
                        }
                    }
                };
                let to = if kind == "order" { dpi } else { sil };
                let (code, msa2, err) = send_as(to, sender, &msg).await;
                assert_eq!(msa2, id);
                let got_code = if want == Outcome::Refused { "AR" } else { "AA" };
                assert_eq!(
                    (code.as_str(), err.as_str()),
                    (got_code, if want == Outcome::Refused { "207" } else { "" }),
                    "{sender} × {claim} × {kind}"
                );
                expected.push((id, want));
            }
        }
    }
    let want_at = |place: &str| -> Vec<String> {
        expected
            .iter()
            .filter(|(_, w)| {
                *w == Outcome::Delivered(match place {
                    "lab" => "lab",
                    "es1" => "es1",
                    _ => "es2",
                })
            })
            .map(|(id, _)| id.clone())
            .collect()
    };
    for (place, rx) in [("lab", &s.lab), ("es1", &s.es1), ("es2", &s.es2)] {
        let want = want_at(place);
        assert!(
            rx.wait_for(want.len(), Duration::from_secs(20)).await,
            "{place}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (place, rx) in [("lab", &s.lab), ("es1", &s.es1), ("es2", &s.es2)] {
        assert_eq!(rx.control_ids(), want_at(place), "delivered to {place}");
    }
    let held = expected.iter().filter(|(_, w)| *w == Outcome::Held).count();
    assert_eq!(
        s.server
            .store
            .store()
            .quarantine()
            .expect("quarantine")
            .len(),
        held
    );
    let refused = expected
        .iter()
        .filter(|(_, w)| *w == Outcome::Refused)
        .count();
    assert!(refused >= 12, "the matrix has refusals: {refused}");
    s.server.shutdown().await;
}

/// A client certificate from a CA the server trusts, but expired: refused at the handshake,
/// counted, audited, nothing delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_is_refused_and_audited() {
    let day = 86_400_000u64;
    let old = tempfile::tempdir().expect("tempdir");
    // Issued 100 days ago for 30 days: the leaves expired 70 days ago, their CA is valid.
    temp_pki(
        old.path(),
        "second CA",
        &["sil"],
        &["localhost"],
        labroute::time::now_ms() - 100 * day,
    );
    let c = dev_certs();
    let bundle = old.path().join("bundle.pem");
    std::fs::write(
        &bundle,
        std::fs::read_to_string(c.join("ca.pem")).expect("ca")
            + &std::fs::read_to_string(old.path().join("ca.pem")).expect("old ca"),
    )
    .expect("bundle");
    let tls = tls_section(&bundle, &c.join("server.pem"), &c.join("server.key"));
    let h = Harness::start(move |r| tls_listeners(&r) + &tls + &example_systems()).await;
    let before = STATS.snapshot().tls_handshakes_failed;
    // The expired certificate names system "sil", which is configured: only expiry refuses it.
    let r = tls_send(
        h.sil(),
        Some((
            &c.join("ca.pem"),
            &old.path().join("sil.pem"),
            &old.path().join("sil.key"),
        )),
        &result_by_identifier("ES1", "EXP", "100001", "1"),
    )
    .await;
    assert!(r.is_err(), "{r:?}");
    // The valid certificate still works on the same server.
    assert_eq!(
        send_as(
            h.sil(),
            "sil",
            &result_by_identifier("ES1", "OK1", "100001", "1")
        )
        .await,
        ("AA".into(), "OK1".into(), String::new())
    );
    assert!(h.es1.wait_for(1, Duration::from_secs(20)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.es1.control_ids(), ["OK1"]);
    assert!(STATS.snapshot().tls_handshakes_failed > before);
    let refused = labroute::store::audit::query(
        h.server.store.store(),
        &labroute::store::audit::AuditFilter {
            event: Some("tls_refused".into()),
            ..Default::default()
        },
    )
    .expect("audit query");
    assert!(
        refused.iter().any(|e| e.detail["error"]
            .as_str()
            .unwrap_or_default()
            .contains("xpired")),
        "{refused:?}"
    );
    h.server.shutdown().await;
}

/// New certificate files are taken without a restart (admin call; SIGHUP runs the same
/// reload), and a broken file leaves the running certificates in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_without_a_restart_and_a_bad_file_changes_nothing() {
    let c = dev_certs();
    let live = tempfile::tempdir().expect("tempdir");
    for f in ["server.pem", "server.key"] {
        std::fs::copy(c.join(f), live.path().join(f)).expect("copy");
    }
    let next = pki_dir("next CA", &["sil"]);
    let bundle = live.path().join("ca-bundle.pem");
    std::fs::write(
        &bundle,
        std::fs::read_to_string(c.join("ca.pem")).expect("ca")
            + &std::fs::read_to_string(next.path().join("ca.pem")).expect("next ca"),
    )
    .expect("bundle");
    let l = live.path();
    let tls = tls_section(&bundle, &l.join("server.pem"), &l.join("server.key"));
    // A seal every 2 journal entries: seals before and after the reload.
    let h = Harness::start(move |r| {
        tls_listeners(&r).replace("[engine]\n", "[engine]\naudit_seal_every = 2\n")
            + &tls
            + &example_systems()
            + &admin_section("operator", &["ES1", "ES2"])
    })
    .await;
    let admin = admin_client(
        &h.server,
        &bundle,
        &c.join("operator.pem"),
        &c.join("operator.key"),
    );
    let next_client = (
        next.path().join("ca.pem"),
        next.path().join("sil.pem"),
        next.path().join("sil.key"),
    );
    let try_next = |id: &'static str| {
        let (ca, cert, key) = next_client.clone();
        let addr = h.sil();
        async move {
            tls_send(
                addr,
                Some((&ca, &cert, &key)),
                &result_by_identifier("ES1", id, "100001", "1"),
            )
            .await
        }
    };
    // A client that trusts only the next CA does not accept the current server certificate.
    assert!(try_next("N1").await.is_err());
    // The current one serves the example lab system (journal entries sealed with it).
    let ack = tls_send(
        h.sil(),
        Some((&c.join("ca.pem"), &c.join("sil.pem"), &c.join("sil.key"))),
        &result_by_identifier("ES1", "O1", "100001", "1"),
    )
    .await
    .expect("served with the current certificate");
    assert!(String::from_utf8_lossy(&ack).contains("MSA|AA|O1"));

    // The next certificate is put in place and reloaded through the admin endpoint.
    for f in ["server.pem", "server.key"] {
        std::fs::copy(next.path().join(f), live.path().join(f)).expect("copy");
    }
    let r = admin.call(&labroute::admin::AdminRequest::ReloadTls).await;
    assert!(r.is_ok(), "{r:?}");
    let ack = try_next("N2").await.expect("the new certificate is served");
    assert!(String::from_utf8_lossy(&ack).contains("MSA|AA|N2"));

    // A broken key: the reload fails and says so; the running certificates stay.
    std::fs::write(live.path().join("server.key"), "not a key").expect("write");
    let r = admin.call(&labroute::admin::AdminRequest::ReloadTls).await;
    assert!(
        matches!(r, Err(labroute::admin::http::ClientError::Refused { status: 503, ref message }) if message.contains("previous certificates stay")),
        "{r:?}"
    );
    let ack = try_next("N3").await.expect("still served");
    assert!(String::from_utf8_lossy(&ack).contains("MSA|AA|N3"));
    let expiry = h.server.tls.as_ref().and_then(|t| t.cert_not_after());
    assert!(expiry.is_some_and(|e| e > 0));
    h.server.shutdown().await;

    // Seals after the reload are signed with the new key: they verify against the new
    // certificate; the earlier ones are counted as made with another certificate.
    let store = labroute::store::Store::open(h.dir.path()).expect("store");
    let new_cert = labroute::tls::load_certs(&next.path().join("server.pem")).expect("cert");
    let v = labroute::store::audit::verify(&store, new_cert.first()).expect("verify");
    assert_eq!(v.first_bad, None);
    assert!(v.seals_verified >= 1, "{v:?}");
    assert!(v.seals_other_certificate >= 1, "{v:?}");
}

/// A peer failing its handshake in a loop is counted every time but journalled once per
/// kind and minute, so it cannot fill the journal (nor sync the store once per attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_failing_in_a_loop_is_counted_each_time_and_journalled_once() {
    let h = setup().await;
    let before = STATS.snapshot().tls_handshakes_failed;
    for _ in 0..20 {
        let mut plain = TcpStream::connect(h.sil()).await.expect("connect");
        plain
            .write_all(&frame(b"MSH|^~\\&|SIL|LAB|||x||ORU^R01|P|P|2.5\r"))
            .await
            .expect("write");
        assert!(read_frame(&mut plain).await.is_err(), "plain TCP answered");
    }
    // Counted by the refused connection's task, which may end after the client saw the
    // connection close.
    assert!(eventually(|| STATS.snapshot().tls_handshakes_failed >= before + 20).await);
    let refused = || {
        labroute::store::audit::query(
            h.server.store.store(),
            &labroute::store::audit::AuditFilter {
                event: Some("tls_refused".into()),
                ..Default::default()
            },
        )
        .expect("audit query")
    };
    // The journal entry is written by the first refused connection's task (a commit, slow
    // on a loaded machine); no other follows.
    assert!(eventually(|| !refused().is_empty()).await, "journalled");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = refused();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0].detail["listener"], "sil");
    h.server.shutdown().await;
}
