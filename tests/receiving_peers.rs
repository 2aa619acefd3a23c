//! Record systems nobody here wrote, as destinations: PyPI hl7apy's `MLLPServer` (closes the
//! connection after every message) and npm `node-hl7-server` (puts `ACK` in MSH-10 of its
//! ACKs). `.ci/run` installs both; outside CI a machine without them says so and skips.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use labroute::config::Config;
use labroute::hl7::ack::AckCode;
use labroute::server::Server;
use labroute::store::Store;

/// A peer process, killed on drop.
struct Peer {
    child: Child,
    addr: std::net::SocketAddr,
    out: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program args… PORT OUT_DIR` and waits for its "listening PORT" line. A port
/// from `free_port` may be taken by another test before the peer binds it, so a peer that
/// did not start is started again on another port, three times in all, before it counts
/// as missing.
fn spawn_peer(what: &str, program: &str, args: &[&str], install: &str) -> Option<Peer> {
    let mut why = String::new();
    for _ in 0..3 {
        match try_spawn_peer(program, args) {
            Ok(peer) => return Some(peer),
            Err(e) => why = e,
        }
    }
    assert!(
        std::env::var("CI").is_err(),
        "CI must have {what}: {install} ({why})"
    );
    eprintln!("SKIPPED: {what} not available: {why} ({install})");
    None
}

fn try_spawn_peer(program: &str, args: &[&str]) -> Result<Peer, String> {
    let out = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let child = Command::new(program)
        .args(args)
        .arg(port.to_string())
        .arg(out.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = child.map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(line) if line.starts_with("listening") => Ok(Peer {
            child,
            addr: format!("127.0.0.1:{port}").parse().expect("addr"),
            out,
        }),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("did not start on port {port}: {other:?}"))
        }
    }
}

fn received(dir: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect()
}

/// Sends five ES1 results through labroute to `peer` as ES1's record system (with extra
/// settings for that destination); checks all are recorded as delivered, nothing left or
/// dead. Returns the MSH-10 of every message the peer recorded, in order (`A+B` when what
/// it recorded holds two MSH segments).
async fn five_results_reach(peer: &Peer, settings: &str) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let lab = Receiver::start("127.0.0.1:0", AckCode::AA).await;
    let es2 = Receiver::start("127.0.0.1:0", AckCode::AA).await;
    let routes = routes_toml(0, 0, lab.addr, peer.addr, es2.addr, 50).replace(
        "name = \"dpi-es1\"\n",
        &format!("name = \"dpi-es1\"\n{settings}\n"),
    );
    let cfg = Config::from_sources(&[("t.toml".into(), routes)]).expect("routes");
    let server = Server::start(Arc::new(cfg), dir.path().to_path_buf())
        .await
        .expect("starts");
    let ids = ids();
    let msgs: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| result_by_identifier("ES1", id, "100001", "4.2"))
        .collect();
    let acks = send_all(server.addr("sil").expect("sil"), &msgs)
        .await
        .expect("acks");
    assert!(acks.iter().all(|a| msa(a).0 == "AA"));
    let store = server.store.clone();
    for _ in 0..400 {
        if store.store().counts().expect("counts").delivered >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(store);
    server.shutdown().await;
    let counts = Store::open(dir.path())
        .expect("store")
        .counts()
        .expect("counts");
    assert_eq!((counts.delivered, counts.outbox, counts.dead), (5, 0, 0));
    received(peer.out.path())
        .iter()
        .map(|m| {
            // One id per MSH segment the peer put in what it took for one message.
            m.replace('\n', "\r")
                .split('\r')
                .filter(|s| s.starts_with("MSH"))
                .map(|s| s.split('|').nth(9).unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect()
}

fn ids() -> Vec<String> {
    (1..=5).map(|i| format!("PEER-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_system_that_closes_after_every_message_gets_each_once_in_order() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/mllp_receiver.py");
    let Some(peer) = spawn_peer(
        "PyPI hl7apy",
        "python3",
        &[script],
        "pip install -r tests/python-requirements.txt",
    ) else {
        return;
    };
    let got = five_results_reach(&peer, "").await;
    assert_eq!(got, ids(), "each once, in order");
}

fn node_peer() -> Option<Peer> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node/dpi_server.js");
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node/node_modules");
    if !Path::new(modules).is_dir() && std::env::var("CI").is_err() {
        eprintln!("SKIPPED: npm node-hl7-server not installed (npm ci --prefix tests/node)");
        return None;
    }
    spawn_peer(
        "npm node-hl7-server",
        "node",
        &[script],
        "npm ci --prefix tests/node",
    )
}

/// node-hl7-server 2.5 answers with `ACK` in MSH-10 and never clears its read buffer, so a
/// second message on a connection is read together with the first: one connection per
/// message is the setting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_system_whose_acks_carry_ack_in_msh10_is_understood() {
    let Some(peer) = node_peer() else {
        return;
    };
    let got = five_results_reach(&peer, "keep_connection_open = false").await;
    assert_eq!(got, ids(), "each once, in order");
}

/// With the connection kept open, that peer acknowledges a second message with the first
/// one's control id (MSA-2): labroute must not count that as delivered; it reconnects and
/// sends again until the ACK answers the message it sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_answering_another_message_is_not_taken_as_delivery() {
    let Some(peer) = node_peer() else {
        return;
    };
    let got = five_results_reach(&peer, "").await;
    for id in ids() {
        assert!(
            got.contains(&id),
            "{id} never reached the peer on its own: {got:?}"
        );
    }
    // The peer's defect shows as messages it read twice (glued to the next one).
    assert!(got.len() > 5, "the peer's defect did not show: {got:?}");
}
