//! The process as an operator runs it (`labroute serve`, the built binary):
//!
//! - no patient data, proven: the project's messages and the shared corpus go through a
//!   live instance logging at `debug` in JSON, and no patient name, identifier, birth date
//!   or result value from any of them appears in its logs or in `/metrics`;
//! - SIGTERM drains: under load from several connections the process stops accepting,
//!   answers what it took, syncs, and exits 0 within `[engine] drain_secs`; every message
//!   it acknowledged is in the store afterwards.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http::Method;
use labroute::hl7::Message;
use labroute::hl7::ack::AckCode;
use labroute::hl7::message::prepare;
use labroute::hl7::mllp::frame;

/// `labroute serve` on a routes directory, killed on drop if still running.
struct Instance {
    child: Child,
    log: PathBuf,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Instance {
    fn start(dir: &Path, routes: &str, ready_at: std::net::SocketAddr) -> Instance {
        let routes_dir = dir.join("routes");
        std::fs::create_dir_all(&routes_dir).expect("routes dir");
        std::fs::write(routes_dir.join("routes.toml"), routes).expect("routes");
        let log = dir.join("labroute.log");
        let child = Command::new(env!("CARGO_BIN_EXE_labroute"))
            .args(["serve", "--routes"])
            .arg(&routes_dir)
            .arg("--data")
            .arg(dir.join("data"))
            .env("LABROUTE_LOG", "debug")
            .env("LABROUTE_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("labroute serve starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(ready_at).is_err() {
            assert!(
                Instant::now() < deadline,
                "labroute did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Instance { child, log }
    }

    /// SIGTERM; the exit status and how long it took. Waits off the test's runtime, which
    /// keeps serving the in-process receivers the instance delivers to while it drains.
    async fn terminate(mut self) -> (std::process::ExitStatus, Duration) {
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let ok = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status()
                .expect("kill runs");
            assert!(ok.success());
            let status = self.child.wait().expect("exits");
            (status, started.elapsed())
        })
        .await
        .expect("waited")
    }
}

/// Listeners `sil` and `dpi` (plain MLLP, loopback), destinations to in-process receivers,
/// the admin endpoint (metrics without a certificate from this host), the development PKI.
fn routes(
    sil: u16,
    dpi: u16,
    admin: u16,
    dests: &[(&str, std::net::SocketAddr)],
    establishments: &str,
    engine: &str,
) -> String {
    let destinations: String = dests
        .iter()
        .map(|(n, a)| destination_toml(n, *a, 50))
        .collect();
    format!(
        "[engine]\nidle_timeout_secs = 60\n{engine}\n[[listener]]\nname = \"sil\"\nbind = \"127.0.0.1:{sil}\"\ninsecure = true\n[[listener]]\nname = \"dpi\"\nbind = \"127.0.0.1:{dpi}\"\ninsecure = true\n{destinations}{establishments}\n{tls}[admin]\nbind = \"127.0.0.1:{admin}\"\nwithout_certificate = [\"127.0.0.1\"]\n",
        tls = dev_tls_section(),
    )
}

/// What a message says of its patient: identifiers (PID-3), names (PID-5, NK1-2), birth
/// date (PID-7) and result values (OBX-5, not the encapsulated documents): the words the
/// logs and metrics must never hold. Short ones (a one-letter flag, a two-digit value)
/// are left out: they would match anything.
fn patient_data(raw: &[u8]) -> Vec<String> {
    let prepared = prepare(raw);
    let Ok(m) = Message::parse(&prepared) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut push = |s: String, min: usize| {
        let s = s.trim().to_owned();
        if s.chars().count() >= min && s.len() <= 80 && !out.contains(&s) {
            out.push(s);
        }
    };
    for pid in m.segments_named("PID") {
        for r in pid.field(3).repetitions() {
            push(r.component(1).text().into_owned(), 5);
        }
        for r in pid.field(5).repetitions() {
            push(r.component(1).text().into_owned(), 4);
            push(r.component(2).text().into_owned(), 4);
        }
        let birth = pid.field(7).component(1).text().into_owned();
        push(birth.chars().take(8).collect(), 8);
    }
    for nk1 in m.segments_named("NK1") {
        push(nk1.field(2).component(1).text().into_owned(), 4);
    }
    for obx in m.segments_named("OBX") {
        if matches!(obx.field(2).text().as_ref(), "ED" | "RP") {
            continue;
        }
        for r in obx.field(5).repetitions() {
            push(r.text().into_owned(), 4);
        }
    }
    out
}

/// Whether `needle` occurs in `hay` as a whole word (not inside a longer run of letters
/// and digits).
fn has_word(hay: &str, needle: &str) -> bool {
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    hay.match_indices(needle).any(|(at, _)| {
        !word(hay[..at].chars().next_back()) && !word(hay[at + needle.len()..].chars().next())
    })
}

/// The project's own messages: results and an order with names, identifiers, a birth
/// date and values, for the ANS examples' establishments (CHU-X by MSH-4, CHA by placer).
fn own_messages() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for (i, (family, given, ipp, birth, value)) in [
        ("DUPONTEL", "MARGUERITE", "IPP884211", "19470312", "5.873"),
        (
            "ABDELKRIM",
            "YASMINA",
            "IPP884212",
            "20010930",
            "POSITIF FAIBLE",
        ),
        ("LEFEUVRE", "ANTOINETTE", "IPP884213", "19881127", "147.25"),
    ]
    .iter()
    .enumerate()
    {
        v.push(format!(
            "MSH|^~\\&|SIL|CHU-X|DPI|CHU-X|20250301100000||ORU^R01^ORU_R01|PRIV{i}|P|2.5|||||FRA|UNICODE UTF-8\r\
PID|||{ipp}^^^CHU-X^PI||{family}^{given}||{birth}|F\r\
OBR|1|||K^Potassium^L|||20250301080000|||||||||||||||||F\r\
OBX|1|ST|K^Potassium^L||{value}|mmol/L|||||F\r"
        ).into_bytes());
    }
    v.push(
        "MSH|^~\\&|DPI|CHA|SIL|LAB|20250301080000||OML^O21^OML_O21|PRIV-O|P|2.5|||||FRA|UNICODE UTF-8\r\
PID|||IPP990417^^^CHA-IPP^PI||VANDENBERGHE^CLOTHILDE||19550707|F\r\
ORC|NW|CMD77^Nephro\rOBR|1|CMD77^Nephro||GLU^Glucose^L\r"
            .as_bytes()
            .to_vec(),
    );
    v
}

fn corpus_messages() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    if !root.is_dir() {
        eprintln!(
            "SKIPPED (corpus part): {} is absent; the project's own messages still run",
            root.display()
        );
        return Vec::new();
    }
    let mut files = Vec::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("corpus dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "hl7") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).expect("corpus file"))
        .collect()
}

#[tokio::test]
async fn no_patient_data_reaches_the_logs_or_the_metrics() {
    let fixture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ansforge-establishments.toml"),
    )
    .expect("fixture");
    let mut receivers = Vec::new();
    for name in ["sil", "dpi-cha", "dpi-chux"] {
        receivers.push((name, Receiver::start("127.0.0.1:0", AckCode::AA).await));
    }
    let dests: Vec<(&str, std::net::SocketAddr)> =
        receivers.iter().map(|(n, r)| (*n, r.addr)).collect();
    let (sil, dpi, admin) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let text = routes(sil, dpi, admin, &dests, &fixture, "");
    let instance = Instance::start(
        dir.path(),
        &text,
        format!("127.0.0.1:{sil}").parse().expect("addr"),
    );
    let log = instance.log.clone();

    let mut messages = own_messages();
    messages.extend(corpus_messages());
    let mut secrets: Vec<String> = Vec::new();
    for m in &messages {
        for s in patient_data(m) {
            if !secrets.contains(&s) {
                secrets.push(s);
            }
        }
    }
    assert!(secrets.len() >= 15, "{secrets:?}");
    // One connection per message; each is answered, except where MSH-15 asks for no ACK
    // (`NE`, the CDC examples).
    for m in &messages {
        use tokio::io::AsyncWriteExt;
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", sil))
            .await
            .expect("connects");
        c.write_all(&frame(m)).await.expect("sent");
        let prepared = prepare(m);
        let silent = Message::parse(&prepared).is_ok_and(|p| p.text("MSH-15") == "NE");
        if !silent {
            let ack = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut c)).await;
            assert!(
                matches!(ack, Ok(Ok(_))),
                "no ACK for {}",
                String::from_utf8_lossy(&m[..m.len().min(120)])
            );
        }
    }
    // Every message answered; wait until every queue is empty, so that the deliveries
    // were logged too.
    let tls = client_tls(&dev_certs().join("ca.pem"), None).expect("client TLS");
    let c = https_client(format!("127.0.0.1:{admin}").parse().expect("addr"), tls);
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let m = c
            .send(Method::GET, "/metrics", "text/plain", Vec::new())
            .await
            .expect("metrics");
        assert_eq!(m.status, 200);
        let metrics = String::from_utf8_lossy(&m.body).into_owned();
        let waiting: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("labroute_queue_depth{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        if waiting == 0.0 && metrics.contains("labroute_queue_depth{") {
            break metrics;
        }
        assert!(Instant::now() < deadline, "queues not drained:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(metrics.contains("labroute_messages_total"), "{metrics}");

    let (status, _) = instance.terminate().await;
    assert!(status.success(), "{status}");
    let logs = std::fs::read_to_string(&log).expect("logs");
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a JSON line: {e}: {l}")))
        .collect();
    assert!(
        lines.iter().filter(|l| l["level"] == "DEBUG").count() > 0
            && lines.iter().filter(|l| l["message"] == "accepted").count() > 0,
        "the logs said what happened:\n{logs}"
    );
    // What a label could carry: each series' name and label values, without the samples'
    // values and the histograms' bucket bounds (numbers a result value may equal).
    let series: String = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series))
        .map(|series| {
            series
                .split(['{', '}', ','])
                .filter(|p| !p.starts_with("le="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    for s in &secrets {
        if has_word(&logs, s) {
            found.push(format!("log: {s}"));
        }
        if has_word(&series, s) {
            found.push(format!("metrics: {s}"));
        }
    }
    assert!(
        found.is_empty(),
        "patient data leaked ({} messages, {} words checked): {found:?}",
        messages.len(),
        secrets.len()
    );
}

#[tokio::test]
async fn sigterm_drains_and_every_acknowledged_message_is_kept() {
    let record = Receiver::start("127.0.0.1:0", AckCode::AA).await;
    let lab = Receiver::start("127.0.0.1:0", AckCode::AA).await;
    let (sil, dpi, admin) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let establishments = "[routing]\norders_to = [\"sil\"]\nadt_to = [\"sil\"]\n[[establishment]]\nid = \"ES1\"\nname = \"Nordville\"\nrecord = \"dpi-es1\"\nidentify.sending_facilities = [\"CHNORD\"]\nidentify.patient_authorities = [\"CHNORD-IPP\"]\n";
    let text = routes(
        sil,
        dpi,
        admin,
        &[("sil", lab.addr), ("dpi-es1", record.addr)],
        establishments,
        "drain_secs = 10",
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{sil}").parse().expect("addr");
    let instance = Instance::start(dir.path(), &text, addr);

    // Four connections send results one after another, each keeping the control ids it was
    // answered AA for, until the connection is closed.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut senders = Vec::new();
    for c in 0..4 {
        let acked = acked.clone();
        senders.push(tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                return;
            };
            for i in 0.. {
                let ctrl = format!("D{c}-{i}");
                let m = format!(
                    "MSH|^~\\&|SIL|CHNORD|DPI||20250301100000||ORU^R01^ORU_R01|{ctrl}|P|2.5\rPID|||{c}{i}^^^CHNORD-IPP^PI\rOBR|1|||K^Potassium^L\rOBX|1|NM|K^Potassium^L||4|mmol/L|||||F\r"
                );
                if s.write_all(&frame(m.as_bytes())).await.is_err() {
                    return;
                }
                match read_frame(&mut s).await {
                    Ok(ack) if msa(&ack).0 == "AA" => acked.lock().expect("lock").push(ctrl),
                    _ => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = acked.lock().expect("lock").len();
    assert!(before > 20, "traffic flowing: {before}");
    let (status, took) = instance.terminate().await;
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(15), "drained in {took:?}");
    for s in senders {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    // Nothing accepted after the end: the listener is closed.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    let acked = acked.lock().expect("lock").clone();
    let store = labroute::store::Store::open(&dir.path().join("data")).expect("store reopens");
    let n = store.counts().expect("counts").messages;
    let mut stored = std::collections::HashSet::new();
    for seq in 1..=n + 16 {
        if let Some(r) = store.record(seq).expect("record") {
            stored.insert(r.control_id);
        }
    }
    let lost: Vec<&String> = acked.iter().filter(|c| !stored.contains(*c)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged lost: {lost:?}",
        lost.len(),
        acked.len()
    );
}

/// The control id (MSH-10) of a message.
fn control_id(m: &[u8]) -> String {
    let prepared = prepare(m);
    Message::parse(&prepared)
        .map(|p| p.text("MSH-10").into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn routes_reload_under_load_refusing_a_bad_one_dropping_no_connection_and_no_message() {
    // ES1's record destination answers AE: its results wait (retried) until a reload moves
    // ES1's record to the new destination, which takes them.
    let old = Receiver::start("127.0.0.1:0", AckCode::AE).await;
    let new = Receiver::start("127.0.0.1:0", AckCode::AA).await;
    let lab = Receiver::start("127.0.0.1:0", AckCode::AA).await;
    let (sil, dpi, admin) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let establishment = |record: &str| {
        format!(
            "[routing]\norders_to = [\"sil\"]\nadt_to = [\"sil\"]\n[[establishment]]\nid = \"ES1\"\nname = \"Nordville\"\nrecord = \"{record}\"\nidentify.sending_facilities = [\"CHNORD\"]\nidentify.patient_authorities = [\"CHNORD-IPP\"]\n{}",
            system_toml("operator", "operator", &["ES1"])
        )
    };
    let dests = [
        ("sil", lab.addr),
        ("dpi-es1", old.addr),
        ("dpi-es1-new", new.addr),
    ];
    let v1 = routes(sil, dpi, admin, &dests, &establishment("dpi-es1"), "");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{sil}").parse().expect("addr");
    let instance = Instance::start(dir.path(), &v1, addr);
    let routes_file = dir.path().join("routes/routes.toml");

    // Two connections send all along; each stops at its first failure.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut senders = Vec::new();
    for c in 0..2 {
        let (stop, acked) = (stop.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok::<u32, String>(i);
                }
                let ctrl = format!("L{c}-{i}");
                let m = format!(
                    "MSH|^~\\&|SIL|CHNORD|DPI||20250301100000||ORU^R01^ORU_R01|{ctrl}|P|2.5\rPID|||{c}{i}^^^CHNORD-IPP^PI\rOBR|1|||K^Potassium^L\rOBX|1|NM|K^Potassium^L||4|mmol/L|||||F\r"
                );
                s.write_all(&frame(m.as_bytes())).await.map_err(|e| format!("{ctrl}: {e}"))?;
                let ack = read_frame(&mut s).await.map_err(|e| format!("{ctrl}: {e}"))?;
                if msa(&ack).0 != "AA" {
                    return Err(format!("{ctrl}: {}", msa(&ack).0));
                }
                acked.lock().expect("lock").push(ctrl);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(0)
        }));
    }
    let certs = dev_certs();
    let operator = labroute::admin::http::AdminClient {
        address: format!("127.0.0.1:{admin}"),
        connector: tokio_rustls::TlsConnector::from(
            client_tls(
                &certs.join("ca.pem"),
                Some((&certs.join("operator.pem"), &certs.join("operator.key"))),
            )
            .expect("client TLS"),
        ),
        server_name: rustls::pki_types::ServerName::try_from("localhost").expect("name"),
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A bad routes file (a record destination that does not exist): refused with the file,
    // line and field; the running routes stay.
    std::fs::write(
        &routes_file,
        v1.replace("record = \"dpi-es1\"", "record = \"dpi-nowhere\""),
    )
    .expect("write");
    match operator
        .call(&labroute::admin::AdminRequest::ReloadRoutes)
        .await
    {
        Err(labroute::admin::http::ClientError::Refused {
            status: 409,
            message,
        }) => assert!(
            message.contains("routes.toml") && message.contains("record"),
            "{message}"
        ),
        other => panic!("a bad routes file was not refused: {other:?}"),
    }
    let waiting = || async {
        operator
            .call(&labroute::admin::AdminRequest::Status)
            .await
            .ok()
            .and_then(|v| {
                v["destinations"]
                    .as_array()?
                    .iter()
                    .find(|d| d["destination"] == "dpi-es1")?["waiting"]
                    .as_u64()
            })
            .unwrap_or(0)
    };
    let before = waiting().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = waiting().await;
    assert!(
        after > before,
        "the running routes still queue ES1's results for dpi-es1: {before} then {after}"
    );

    // A good one that moves ES1's record to another destination, by SIGHUP.
    std::fs::write(
        &routes_file,
        routes(sil, dpi, admin, &dests, &establishment("dpi-es1-new"), ""),
    )
    .expect("write");
    let hup = Command::new("kill")
        .args(["-HUP", &instance.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(hup.success());
    assert!(
        eventually(|| new.count() > after as usize).await,
        "the new record destination receives after the reload"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        let sent = s.await.expect("sender");
        assert!(
            sent.is_ok(),
            "a connection failed during the reloads: {sent:?}"
        );
    }
    let acked = acked.lock().expect("lock").clone();
    // Every acknowledged message reaches one of the two record destinations.
    // Every acknowledged message reaches the new record destination: those queued for the
    // old one moved there by the reload, in order.
    let received = || -> std::collections::HashSet<String> {
        new.messages().iter().map(|m| control_id(m)).collect()
    };
    let delivered = eventually(|| {
        let got = received();
        acked.iter().all(|c| got.contains(c))
    })
    .await;
    if !delivered {
        let got = received();
        let missing: Vec<&String> = acked.iter().filter(|c| !got.contains(*c)).collect();
        let status = operator
            .call(&labroute::admin::AdminRequest::Status)
            .await
            .map(|v| v["destinations"].clone());
        panic!(
            "{} acknowledged, {} delivered; missing {missing:?}; {status:?}",
            acked.len(),
            got.len()
        );
    }
    // In order: each connection's results reach the new destination in the order sent (the
    // moved ones first), each counted at its first delivery.
    let ids: Vec<String> = new.messages().iter().map(|m| control_id(m)).collect();
    for c in 0..2 {
        let mut seen = std::collections::HashSet::new();
        let order: Vec<u32> = ids
            .iter()
            .filter_map(|id| id.strip_prefix(&format!("L{c}-"))?.parse().ok())
            .filter(|i| seen.insert(*i))
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "connection {c} out of order: {order:?}"
        );
    }
    let journal = operator
        .call(&labroute::admin::AdminRequest::AuditQuery {
            filter: labroute::store::audit::AuditFilter {
                event: Some("rerouted".into()),
                ..Default::default()
            },
        })
        .await
        .expect("journal");
    let rerouted = journal.as_array().map(Vec::len).unwrap_or(0);
    assert!(
        rerouted as u64 >= after,
        "{rerouted} rerouted, {after} were waiting"
    );
    let log = instance.log.clone();
    let (status, _) = instance.terminate().await;
    assert!(status.success());
    let logs = std::fs::read_to_string(log).expect("logs");
    assert!(
        logs.contains("routes not reloaded"),
        "the refusal is logged"
    );
    assert!(
        logs.contains("SIGHUP: routes reloaded"),
        "the reload is logged"
    );
}
