//! Peers nobody here wrote: PyPI `hl7`'s `mllp_send` sends to labroute, and PyPI `hl7apy`
//! validates labroute's ACKs (strict). `.ci/run` installs both; outside CI a machine without
//! them says so and skips.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::*;
use labroute::config::Config;
use labroute::hl7::ack::AckCode;
use labroute::server::Server;

fn have_python_peers() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import hl7, hl7apy"])
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new("mllp_send")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "CI must have the Python peers: pip install -r tests/python-requirements.txt"
        );
        eprintln!(
            "SKIPPED: python3 with `hl7` and `hl7apy` not found (pip install -r tests/python-requirements.txt)"
        );
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_send_from_pypi_hl7_is_acknowledged_and_our_acks_validate_with_hl7apy() {
    if !have_python_peers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lab = Receiver::start("127.0.0.1:0", AckCode::AA).await;
    let es1 = Receiver::start("127.0.0.1:0", AckCode::AA).await;
    let es2 = Receiver::start("127.0.0.1:0", AckCode::AA).await;
    let cfg = Config::from_sources(&[(
        "t.toml".into(),
        routes_toml(0, 0, lab.addr, es1.addr, es2.addr, 50),
    )])
    .unwrap();
    let s = Server::start(Arc::new(cfg), dir.path().join("data"))
        .await
        .unwrap();
    let sil = s.addr("sil").unwrap();

    // mllp_send reads the file, frames it, prints the ACK it receives.
    let msg = dir.path().join("r.hl7");
    // `--loose` reads CRLF-terminated segments (a real-world quirk we must accept too).
    let crlf = String::from_utf8(result_by_identifier("ES1", "PY1", "101", "5.0"))
        .unwrap()
        .replace('\r', "\r\n");
    std::fs::write(&msg, crlf).unwrap();
    let out = Command::new("mllp_send")
        .args(["--loose", "-p", &sil.port().to_string(), "-f"])
        .arg(&msg)
        .arg("127.0.0.1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    assert!(
        out.status.success(),
        "mllp_send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("MSA|AA|PY1"), "mllp_send printed: {stdout}");
    assert!(es1.wait_for(1, std::time::Duration::from_secs(10)).await);

    // ACKs of every shape we send, in the versions hl7apy supports, validate strictly.
    let cases: Vec<Vec<u8>> = vec![
        result_by_identifier("ES1", "V1", "101", "5.0"),
        String::from_utf8(result_by_identifier("ES1", "V2", "101", "5.0"))
            .unwrap()
            .replace("|P|2.5|", "|P|2.5.1|")
            .into_bytes(),
        String::from_utf8(result_by_identifier("ES1", "V3", "101", "5.0"))
            .unwrap()
            .replace("|P|2.5|", "|P|2.6|")
            .into_bytes(),
        b"MSH|^~\\&|SIL|LAB|DPI||x||QRY^Q01|V4|P|2.5\r".to_vec(),
        b"MSH|^~\\&|SIL|LAB|DPI||x||ORU^R01|V5|P|2.5\rpid|lower".to_vec(),
        b"MSH|^~\\&|SIL|LAB|DPI||x||ORU^R01|V6|P|2.5|||AL|NE\rPID|||1^^^CHNORD-IPP^PI\r".to_vec(),
    ];
    let acks = send_all(sil, &cases).await.unwrap();
    let mut files = Vec::new();
    for (i, a) in acks.iter().enumerate() {
        let f = dir.path().join(format!("ack{i}.hl7"));
        std::fs::write(&f, a).unwrap();
        files.push(f);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/validate_ack.py");
    let out = Command::new("python3")
        .arg(script)
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hl7apy rejected an ACK: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(msa(&acks[5]).0, "CA", "enhanced mode gets a commit ACK");
    s.shutdown().await;
}
