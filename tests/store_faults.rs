//! Store faults (RELIABILITY.md): a full disk and a store file that is not a store.
//!
//! The full-disk test mounts a small tmpfs (it needs root, as in CI; elsewhere it says so and
//! stops), puts the data directory on it and fills it: the engine answers AE with ERR 207
//! instead of acknowledging, keeps serving, and accepts again once space returns; every
//! message it acknowledged is delivered.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use labroute::hl7::ack::AckCode;

/// A tmpfs mounted for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros to `path` until the filesystem refuses: how many bytes it took.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler file");
    let block = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&block) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    // Small writes too, down to the last page.
    let small = [0u8; 512];
    while let Ok(n) = f.write(&small) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    let _ = f.sync_all();
    written
}

/// A result with a large OBX, so that storing it needs new pages.
fn bulky(ctrl: &str, i: usize) -> Vec<u8> {
    let es = if i % 2 == 0 { "ES1" } else { "ES2" };
    let mut m = result_by_identifier(es, ctrl, &format!("P{i}"), "4.2");
    m.extend_from_slice(b"NTE|1||");
    m.extend(std::iter::repeat_n(b'x', 32 * 1024));
    m.extend_from_slice(b"\r");
    m
}

async fn send(addr: std::net::SocketAddr, m: &[u8]) -> (String, Vec<u8>) {
    let acks = send_all(addr, &[m.to_vec()])
        .await
        .expect("the engine answers");
    let ack = acks.into_iter().next().unwrap_or_default();
    (msa(&ack).0, ack)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gets_ae_207_and_the_engine_accepts_again_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    let tmpfs = match Tmpfs::mount(&mnt, "6m") {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "SKIPPED: the full-disk test mounts a tmpfs, which needs root (CI runs as root): {e}"
            );
            return;
        }
    };
    let lab = Receiver::start("127.0.0.1:0", AckCode::AA).await;
    let es1 = Receiver::start("127.0.0.1:0", AckCode::AA).await;
    let es2 = Receiver::start("127.0.0.1:0", AckCode::AA).await;
    let routes = routes_toml(0, 0, lab.addr, es1.addr, es2.addr, 50);
    let cfg = labroute::config::Config::from_sources(&[("t.toml".into(), routes)]).unwrap();
    let server = labroute::server::Server::start(Arc::new(cfg), tmpfs.0.join("data"))
        .await
        .expect("server starts on the tmpfs");
    let sil = server.addr("sil").unwrap();

    // Before: accepted and delivered.
    let mut acked = Vec::new();
    for i in 0..4 {
        let ctrl = format!("B{i}");
        let (code, _) = send(sil, &bulky(&ctrl, i)).await;
        assert_eq!(code, "AA");
        acked.push(ctrl);
    }

    // Full: every message is answered, never AA once the store cannot write it.
    let filler = tmpfs.0.join("filler");
    let filled = fill(&filler);
    assert!(filled > 0, "the filler wrote nothing");
    let mut refused = Vec::new();
    for i in 4..40 {
        let ctrl = format!("F{i}");
        let (code, ack) = send(sil, &bulky(&ctrl, i)).await;
        match code.as_str() {
            "AA" => acked.push(ctrl),
            "AE" => {
                let text = String::from_utf8_lossy(&ack).into_owned();
                assert!(
                    text.contains("ERR|"),
                    "an AE carries an ERR segment: {text}"
                );
                assert!(
                    text.contains("207"),
                    "the ERR says 207 (application error): {text}"
                );
                refused.push((ctrl, i));
            }
            other => panic!("a full disk answered {other}"),
        }
    }
    assert!(
        !refused.is_empty(),
        "36 messages of 32 KB each on a full 6 MB tmpfs were all acknowledged"
    );
    // Still serving: the admin-free way to tell is another connection answered at once.
    let (code, _) = send(sil, &bulky("F-again", 1)).await;
    assert_eq!(code, "AE", "still full, still refused");

    // Space returns: the refused messages, sent again, are accepted.
    std::fs::remove_file(&filler).unwrap();
    for (ctrl, i) in &refused {
        let mut code = String::new();
        for _ in 0..50 {
            code = send(sil, &bulky(ctrl, *i)).await.0;
            if code == "AA" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(code, "AA", "{ctrl} is accepted once space returned");
        acked.push(ctrl.clone());
    }

    // Nothing acknowledged is lost: every one reaches its establishment's record.
    let want = acked.len();
    assert!(
        eventually(|| es1.count() + es2.count() >= want).await,
        "{} of {want} acknowledged messages delivered",
        es1.count() + es2.count()
    );
    let mut got: Vec<String> = es1.control_ids();
    got.extend(es2.control_ids());
    for c in &acked {
        assert!(got.contains(c), "{c} was acknowledged and never delivered");
    }
    eprintln!(
        "full disk: {} acknowledged, {} refused with AE 207 while full, then accepted; 0 lost",
        acked.len() - refused.len(),
        refused.len()
    );
    server.shutdown().await;
    drop(tmpfs);
}

/// Runs `labroute serve` on `data` and returns its exit status and standard error, or
/// `None` if it was still running after a few seconds (then killed).
fn serve_once(data: &Path) -> Option<(std::process::ExitStatus, String)> {
    let routes = tempfile::tempdir().unwrap();
    std::fs::write(
        routes.path().join("r.toml"),
        routes_toml(
            0,
            0,
            "127.0.0.1:9".parse().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
            50,
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_labroute"))
        .args(["serve", "--routes"])
        .arg(routes.path())
        .arg("--data")
        .arg(data)
        .env("LABROUTE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return Some((status, err));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A store file with some messages in it (made by an instance, then closed).
async fn a_store_with_messages(data: &Path) -> PathBuf {
    let lab = Receiver::start("127.0.0.1:0", AckCode::AA).await;
    let es = Receiver::start("127.0.0.1:0", AckCode::AA).await;
    let routes = routes_toml(0, 0, lab.addr, es.addr, es.addr, 50);
    let cfg = labroute::config::Config::from_sources(&[("t.toml".into(), routes)]).unwrap();
    let server = labroute::server::Server::start(Arc::new(cfg), data.to_owned())
        .await
        .unwrap();
    let sil = server.addr("sil").unwrap();
    for i in 0..20 {
        assert_eq!(send(sil, &bulky(&format!("S{i}"), i)).await.0, "AA");
    }
    server.shutdown().await;
    data.join(labroute::store::STORE_FILE)
}

fn assert_refused_naming_the_file(data: &Path, file: &Path, what: &str) {
    let before = std::fs::read(file).unwrap();
    let Some((status, err)) = serve_once(data) else {
        panic!("labroute served on a {what} store file instead of refusing it");
    };
    assert!(!status.success(), "{what}: exit {status}");
    assert!(
        err.contains(&file.display().to_string()),
        "{what}: the error names the file: {err}"
    );
    assert!(
        err.contains("restore it from a backup"),
        "{what}: the error says what to do: {err}"
    );
    assert_eq!(
        std::fs::read(file).unwrap(),
        before,
        "{what}: the file is left as it was (no silent reset)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_file_of_garbage_is_refused_with_its_name_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let file = data.join(labroute::store::STORE_FILE);
    std::fs::write(
        &file,
        b"this is not a redb file, whatever it was".repeat(200),
    )
    .unwrap();
    assert_refused_naming_the_file(&data, &file, "garbage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_store_file_is_refused_with_its_name_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = a_store_with_messages(&data).await;
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len / 3).unwrap();
    drop(f);
    assert_refused_naming_the_file(&data, &file, "truncated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_file_with_a_damaged_header_is_refused_with_its_name_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = a_store_with_messages(&data).await;
    let mut bytes = std::fs::read(&file).unwrap();
    for b in bytes.iter_mut().take(64).skip(9) {
        *b ^= 0x5a;
    }
    std::fs::write(&file, &bytes).unwrap();
    assert_refused_naming_the_file(&data, &file, "damaged header");
}
