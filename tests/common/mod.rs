//! Helpers for integration tests: MLLP receivers standing in for record systems, a sender,
//! message builders and a routes file for two establishments on loopback ports.
#![allow(dead_code)]

pub mod fhir;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use labroute::hl7::Message;
use labroute::hl7::ack::{self, AckCode, AckHeader};
use labroute::hl7::mllp::{Decoded, Decoder, frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An MLLP receiver that records every message and answers with `code`.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Vec<Vec<u8>>>>,
    /// TLS receivers: the identity label of each client that completed a handshake.
    pub peers: Arc<Mutex<Vec<String>>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

/// Reads MLLP frames from a stream, one read at a time (test peers).
pub struct FrameReader {
    dec: Decoder,
    buf: Vec<u8>,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader {
            dec: Decoder::new(64 << 20),
            buf: vec![0u8; 65536],
        }
    }
}

impl FrameReader {
    /// The frames the next read completes (maybe none); `None` once the peer closed.
    pub async fn next<S: tokio::io::AsyncRead + Unpin>(
        &mut self,
        s: &mut S,
    ) -> Option<Vec<Vec<u8>>> {
        let n = match s.read(&mut self.buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        Some(
            self.dec
                .feed(&self.buf[..n])
                .into_iter()
                .filter_map(|u| match u {
                    Decoded::Frame(f) => Some(f),
                    Decoded::Oversized { .. } => None,
                })
                .collect(),
        )
    }
}

/// Reads frames, records them, answers each with `code`.
async fn serve_peer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    code: AckCode,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
) {
    let mut reader = FrameReader::default();
    while let Some(frames) = reader.next(&mut s).await {
        for f in frames {
            let prepared = labroute::hl7::message::prepare(&f);
            let m = Message::parse(&prepared).expect("receiver got an unreadable message");
            let a = ack::build(&AckHeader::of(&m), code, None, "R", "20250101");
            got.lock().unwrap().push(f);
            if s.write_all(&frame(&a)).await.is_err() || s.flush().await.is_err() {
                return;
            }
        }
    }
}

impl Receiver {
    pub async fn start(addr: &str, code: AckCode) -> Receiver {
        Receiver::start_inner(addr, code, None).await
    }

    /// An MLLP-over-TLS receiver requiring a client certificate from `files.ca`.
    pub async fn start_tls(addr: &str, code: AckCode, files: &labroute::tls::TlsFiles) -> Receiver {
        let acceptor = tokio_rustls::TlsAcceptor::from(
            labroute::tls::server_config(files).expect("TLS config"),
        );
        Receiver::start_inner(addr, code, Some(acceptor)).await
    }

    async fn start_inner(
        addr: &str,
        code: AckCode,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Receiver {
        let listener = TcpListener::bind(addr).await.expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let got = Arc::new(Mutex::new(Vec::new()));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (g2, p2) = (got.clone(), peers.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let (g3, p3, tls) = (g2.clone(), p2.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve_peer(s, code, g3).await,
                        Some(acceptor) => {
                            let Ok(t) = acceptor.accept(s).await else {
                                return;
                            };
                            let id = t
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(labroute::tls::identity)
                                .map(|i| i.label())
                                .unwrap_or_default();
                            p3.lock().unwrap().push(id);
                            serve_peer(t, code, g3).await
                        }
                    }
                });
            }
        });
        Receiver {
            addr,
            got,
            peers,
            task: Arc::new(task),
        }
    }

    pub fn stop(&self) {
        self.task.abort();
    }

    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Every message received, in order.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.got.lock().unwrap().clone()
    }

    /// MSH-10 of every message received, in order.
    pub fn control_ids(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|m| {
                Message::parse(&labroute::hl7::message::prepare(m))
                    .unwrap()
                    .text("MSH-10")
                    .into_owned()
            })
            .collect()
    }

    pub async fn wait_for(&self, n: usize, within: Duration) -> bool {
        let end = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < end {
            if self.count() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.count() >= n
    }
}

/// A free loopback port (bound then released).
/// Copies the files of `from` (not its subdirectories) into `to`, made if missing: a data
/// directory as a crash or a backup would leave it.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends messages on one connection; returns each ACK.
pub async fn send_all(addr: SocketAddr, msgs: &[Vec<u8>]) -> std::io::Result<Vec<Vec<u8>>> {
    let mut s = TcpStream::connect(addr).await?;
    let mut out = Vec::new();
    for m in msgs {
        s.write_all(&frame(m)).await?;
        out.push(read_frame(&mut s).await?);
    }
    Ok(out)
}

/// Reads one MLLP frame (its payload), within 20 s.
pub async fn read_frame<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Vec<u8>> {
    let mut dec = Decoder::new(1 << 20);
    let mut buf = vec![0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("ACK timeout"))??;
        if n == 0 {
            return Err(std::io::Error::other("closed"));
        }
        if let Some(Decoded::Frame(f)) = dec.feed(&buf[..n]).into_iter().next() {
            return Ok(f);
        }
    }
}

pub fn msa(ack: &[u8]) -> (String, String) {
    let m = Message::parse(ack).expect("ACK parses");
    (m.text("MSA-1").into_owned(), m.text("MSA-2").into_owned())
}

/// An order from an establishment's DPI.
pub fn order(es: &str, ctrl: &str, placer: &str, patient: &str) -> Vec<u8> {
    let (fac, ns, auth) = site(es);
    format!(
        "MSH|^~\\&|DPI|{fac}|SIL|LAB|20250301080000||OML^O21^OML_O21|{ctrl}|P|2.5|||||FRA|UNICODE UTF-8\r\
PID|||{patient}^^^{auth}^PI||TEST^PATIENT\rORC|NW|{placer}^{ns}\rOBR|1|{placer}^{ns}||GLU^Glucose^L\r"
    )
    .into_bytes()
}

/// A result answering a placer order number (no other establishment evidence).
pub fn result_for_order(es: &str, ctrl: &str, placer: &str, value: &str) -> Vec<u8> {
    let (_, ns, _) = site(es);
    format!(
        "MSH|^~\\&|SIL|LAB|DPI||20250301100000||ORU^R01^ORU_R01|{ctrl}|P|2.5|||||FRA|UNICODE UTF-8\r\
PID|||X\rOBR|1|{placer}^{ns}|F{placer}^LAB|GLU^Glucose^L|||||||||||||||||||F\rOBX|1|NM|GLU^Glucose^L||{value}|mmol/L|||||F\r"
    )
    .into_bytes()
}

/// A result identified by the patient's IPP authority only.
pub fn result_by_identifier(es: &str, ctrl: &str, patient: &str, value: &str) -> Vec<u8> {
    let (_, _, auth) = site(es);
    format!(
        "MSH|^~\\&|SIL|LAB|DPI||20250301100000||ORU^R01^ORU_R01|{ctrl}|P|2.5|||||FRA|UNICODE UTF-8\r\
PID|||{patient}^^^{auth}^PI||TEST^PATIENT\rOBR|1|||K^Potassium^L|||||||||||||||||||F\rOBX|1|NM|K^Potassium^L||{value}|mmol/L|||||F\r"
    )
    .into_bytes()
}

fn site(es: &str) -> (&'static str, &'static str, &'static str) {
    match es {
        "ES1" => ("CHNORD", "DPI-CHNORD", "CHNORD-IPP"),
        "ES2" => ("CHSUD", "DPI-CHSUD", "CHSUD-IPP"),
        _ => ("NOWHERE", "DPI-NOWHERE", "NOWHERE-IPP"),
    }
}

/// A routes file: listeners `sil` and `dpi`, destinations `sil`, `dpi-es1`, `dpi-es2`.
pub fn destination_toml(name: &str, address: SocketAddr, backoff_ms: u64) -> String {
    format!(
        "[[destination]]\nname = \"{name}\"\naddress = \"{address}\"\ninsecure = true\n\
backoff_initial_ms = {backoff_ms}\nbackoff_max_ms = {backoff_ms}\nack_timeout_secs = 5\nconnect_timeout_secs = 2\n"
    )
}

pub fn routes_toml(
    sil_port: u16,
    dpi_port: u16,
    lab: SocketAddr,
    es1: SocketAddr,
    es2: SocketAddr,
    backoff_ms: u64,
) -> String {
    let destinations = [("sil", lab), ("dpi-es1", es1), ("dpi-es2", es2)]
        .iter()
        .map(|(n, a)| destination_toml(n, *a, backoff_ms))
        .collect::<String>();
    format!(
        r#"
[engine]
idle_timeout_secs = 60
[[listener]]
name = "sil"
bind = "127.0.0.1:{sil_port}"
insecure = true
[[listener]]
name = "dpi"
bind = "127.0.0.1:{dpi_port}"
insecure = true
{destinations}[routing]
orders_to = ["sil"]
adt_to = ["sil"]
[[establishment]]
id = "ES1"
name = "Nordville"
record = "dpi-es1"
identify.sending_facilities = ["CHNORD"]
identify.placer_namespaces = ["DPI-CHNORD"]
identify.patient_authorities = ["CHNORD-IPP"]
[[establishment]]
id = "ES2"
name = "Sudville"
record = "dpi-es2"
identify.sending_facilities = ["CHSUD"]
identify.placer_namespaces = ["DPI-CHSUD"]
identify.patient_authorities = ["CHSUD-IPP"]
"#
    )
}

/// A running server on `routes_toml` (edited by the test) with three receivers: the lab
/// (`sil`), ES1's and ES2's records.
pub struct Harness {
    pub server: labroute::server::Server,
    pub lab: Receiver,
    pub es1: Receiver,
    pub es2: Receiver,
    pub dir: tempfile::TempDir,
    /// The routes it runs on.
    pub routes: String,
}

impl Harness {
    /// `codes`: what the lab, ES1 and ES2 receivers answer.
    pub async fn start_with(codes: [AckCode; 3], edit: impl FnOnce(String) -> String) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let lab = Receiver::start("127.0.0.1:0", codes[0]).await;
        let es1 = Receiver::start("127.0.0.1:0", codes[1]).await;
        let es2 = Receiver::start("127.0.0.1:0", codes[2]).await;
        let routes = edit(routes_toml(0, 0, lab.addr, es1.addr, es2.addr, 50));
        let cfg = labroute::config::Config::from_sources(&[("t.toml".into(), routes.clone())])
            .unwrap_or_else(|e| panic!("routes:\n{e}"));
        let server = labroute::server::Server::start(Arc::new(cfg), dir.path().to_path_buf())
            .await
            .expect("server starts");
        Harness {
            server,
            lab,
            es1,
            es2,
            dir,
            routes,
        }
    }

    pub async fn start(edit: impl FnOnce(String) -> String) -> Harness {
        Harness::start_with([AckCode::AA; 3], edit).await
    }

    pub fn sil(&self) -> SocketAddr {
        self.server.addr("sil").expect("listener sil")
    }
}

/// The committed development PKI.
pub fn dev_certs() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs")
}

/// A `[tls]` section.
pub fn tls_section(ca: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        ca.display(),
        cert.display(),
        key.display()
    )
}

/// A `[tls]` section with the development CA and server certificate.
pub fn dev_tls_section() -> String {
    let c = dev_certs();
    tls_section(
        &c.join("ca.pem"),
        &c.join("server.pem"),
        &c.join("server.key"),
    )
}

/// `routes_toml` with every listener on TLS (their `insecure = true` removed).
pub fn tls_listeners(routes: &str) -> String {
    routes.replace(
        "bind = \"127.0.0.1:0\"\ninsecure = true\n",
        "bind = \"127.0.0.1:0\"\n",
    )
}

/// Generates a PKI (CA, `server` for `server_names`, one client per system) in `dir`, its
/// dates computed from `now_ms`, 30 days of validity.
pub fn temp_pki(
    dir: &std::path::Path,
    ca_name: &str,
    systems: &[&str],
    server_names: &[&str],
    now_ms: u64,
) {
    labroute::pki::generate(&labroute::pki::PkiSpec {
        out: dir.to_path_buf(),
        systems: systems.iter().map(|s| s.to_string()).collect(),
        practitioners: Vec::new(),
        server_names: server_names.iter().map(|s| s.to_string()).collect(),
        days: 30,
        now_ms,
        force: false,
        ca_name: ca_name.into(),
    })
    .expect("test PKI");
}

/// A temporary directory holding a test PKI ([`temp_pki`]): a CA named `ca_name`, a client
/// certificate for each of `systems`, and a server certificate for `localhost`.
pub fn pki_dir(ca_name: &str, systems: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    temp_pki(
        dir.path(),
        ca_name,
        systems,
        &["localhost"],
        labroute::time::now_ms(),
    );
    dir
}

/// Waits (polling every 50 ms, at most 20 s) until `done` holds; whether it does.
pub async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// An operator's care-team grant (or its withdrawal) for a practitioner, as the host's
/// administrator.
pub async fn care_grant(
    h: &Harness,
    es: &str,
    authority: &str,
    id: &str,
    rpps: &str,
    granted: bool,
) {
    h.server
        .store
        .operator(
            labroute::store::writer::OperatorCommand::CareGrant {
                establishment: es.into(),
                authority: authority.into(),
                id: id.into(),
                rpps: rpps.into(),
                granted,
            },
            &local_operator("ops"),
        )
        .await
        .expect("care grant");
}

/// The host's administrator, as the CLI acts on a stopped instance's store.
pub fn local_operator(name: &str) -> labroute::policy::Operator {
    labroute::policy::Operator {
        name: name.to_owned(),
        scope: labroute::policy::OperatorScope::Instance,
    }
}

/// A `[[system]]` known by the SAN URI `labroute pki init` gives it.
pub fn system_toml(name: &str, role: &str, ests: &[&str]) -> String {
    format!(
        "[[system]]\nname = \"{name}\"\nrole = \"{role}\"\nsan_uri = [\"urn:labroute:system:{name}\"]\nestablishments = {ests:?}\n"
    )
}

/// The example systems: the lab (ES1 and ES2) and each establishment's DPI.
pub fn example_systems() -> String {
    system_toml("sil", "result_producer", &["ES1", "ES2"])
        + &system_toml("dpi-es1", "order_placer", &["ES1"])
        + &system_toml("dpi-es2", "order_placer", &["ES2"])
}

/// An `[admin]` endpoint on a free loopback port, and an operator system allowed `ests`.
pub fn admin_section(operator: &str, ests: &[&str]) -> String {
    "[admin]\nbind = \"127.0.0.1:0\"\n".to_owned() + &system_toml(operator, "operator", ests)
}

/// A TLS client configuration trusting `ca`, presenting the client certificate
/// `(cert, key)` or none.
pub fn client_tls(
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    if let Some((cert, key)) = identity {
        return labroute::tls::client_config(&labroute::tls::TlsFiles {
            ca: ca.to_path_buf(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            min_version: labroute::tls::MinVersion::Tls13,
        })
        .map_err(|e| e.to_string());
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in labroute::tls::load_certs(ca).map_err(|e| e.to_string())? {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    ))
}

/// An HTTPS client of `addr` (its certificate names `localhost`) with this TLS
/// configuration.
pub fn https_client(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> labroute::https::Client {
    labroute::https::Client {
        address: addr.to_string(),
        connector: tokio_rustls::TlsConnector::from(tls),
        server_name: rustls::pki_types::ServerName::try_from("localhost").expect("name"),
    }
}

/// A client of an instance's admin endpoint with this CA and client certificate.
pub fn admin_client(
    server: &labroute::server::Server,
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> labroute::admin::http::AdminClient {
    let c = https_client(
        server.admin.expect("an [admin] endpoint"),
        client_tls(ca, Some((cert, key))).expect("client TLS"),
    );
    labroute::admin::http::AdminClient {
        address: c.address,
        connector: c.connector,
        server_name: c.server_name,
    }
}

/// Sends one frame over TLS with a client certificate (or none); returns the answer's
/// payload.
pub async fn tls_send(
    addr: std::net::SocketAddr,
    client: Option<(&std::path::Path, &std::path::Path, &std::path::Path)>,
    msg: &[u8],
) -> Result<Vec<u8>, String> {
    let cfg = match client {
        Some((ca, cert, key)) => client_tls(ca, Some((cert, key)))?,
        None => client_tls(&dev_certs().join("ca.pem"), None)?,
    };
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut s = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    s.write_all(&frame(msg)).await.map_err(|e| e.to_string())?;
    read_frame(&mut s).await.map_err(|e| format!("read: {e}"))
}

/// Starts a Python test peer (`tests/py/<script>` run by `python` with `args`) and reads
/// the `PORT <n>` line it prints once listening.
pub fn python_peer(
    python: impl AsRef<std::ffi::OsStr>,
    script: &str,
    args: &[&std::ffi::OsStr],
) -> (std::process::Child, u16) {
    use std::io::BufRead;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let mut child = std::process::Command::new(python)
        .arg(path)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{script} starts: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("PORT line");
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{script} said {line:?}"));
    (child, port)
}

/// A real NATS server with JetStream (Debian package `nats-server`, which `.ci/run`
/// installs), on a free loopback port, its storage in `dir`. It stops when dropped, and
/// when the test process ends (it reads its standard input to the end, then is killed).
pub struct Nats {
    pub port: u16,
    child: std::process::Child,
    dir: std::path::PathBuf,
    /// Its command line's options beyond port and store (to start it again).
    args: String,
}

impl Nats {
    /// `None` outside CI when `nats-server` is not installed (the caller says SKIPPED); in
    /// CI its absence fails the test. `tls`: serve TLS with the development PKI and require
    /// a client certificate it issued.
    pub fn start(dir: &std::path::Path, tls: bool) -> Option<Nats> {
        if !Nats::installed() {
            return None;
        }
        let port = free_port();
        let c = dev_certs();
        let tls_args = if tls {
            format!(
                "--tls --tlscert {} --tlskey {} --tlscacert {} --tlsverify",
                c.join("server.pem").display(),
                c.join("server.key").display(),
                c.join("ca.pem").display()
            )
        } else {
            String::new()
        };
        Some(Nats::spawn(dir, port, &tls_args))
    }

    /// Whether `nats-server` is installed; in CI, it must be.
    fn installed() -> bool {
        let found = std::process::Command::new("nats-server")
            .arg("--version")
            .output()
            .is_ok();
        assert!(
            found || std::env::var_os("CI").is_none(),
            "nats-server missing in CI (.ci/run installs the Debian package)"
        );
        found
    }

    /// `n` servers in one JetStream cluster on loopback (`None` as for [`Nats::start`]).
    /// Streams of up to `n` replicas can be made once [`Nats::wait_cluster`] returns.
    pub fn start_cluster(dir: &std::path::Path, n: usize) -> Option<Vec<Nats>> {
        if !Nats::installed() {
            return None;
        }
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let all = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        Some(
            routes
                .iter()
                .enumerate()
                .map(|(i, route)| {
                    let args = format!(
                        "-n n{i} --cluster_name labroute --cluster nats://127.0.0.1:{route} --routes {all}"
                    );
                    Nats::spawn(&dir.join(format!("n{i}")), free_port(), &args)
                })
                .collect(),
        )
    }

    /// Waits until the cluster can make a stream of `replicas` (its leader elected).
    pub async fn wait_cluster(&self, replicas: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(client) = async_nats::connect(format!("127.0.0.1:{}", self.port)).await {
                let js = async_nats::jetstream::new(client);
                let made = js
                    .get_or_create_stream(async_nats::jetstream::stream::Config {
                        name: "READY".into(),
                        subjects: vec!["ready.>".into()],
                        num_replicas: replicas,
                        ..Default::default()
                    })
                    .await;
                if made.is_ok() {
                    let _ = js.delete_stream("READY").await;
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the NATS cluster elected no JetStream leader in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn spawn(dir: &std::path::Path, port: u16, args: &str) -> Nats {
        std::fs::create_dir_all(dir).expect("nats dir");
        let d = dir.display();
        let script = format!(
            "nats-server -js -a 127.0.0.1 -p {port} -sd {d} {args} >{d}/log 2>&1 & pid=$!; echo $pid >{d}/pid; cat >/dev/null; kill $pid 2>/dev/null; wait $pid"
        );
        let child = std::process::Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sh runs nats-server");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen in 10 s: {}",
                std::fs::read_to_string(dir.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nats {
            port,
            child,
            dir: dir.to_owned(),
            args: args.to_owned(),
        }
    }

    /// Stops the server without killing it (SIGSTOP): its connections stay open and nothing
    /// answers on them, as when the network cuts it off. [`Nats::thaw`] resumes it.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = std::fs::read_to_string(self.dir.join("pid")).expect("pid file");
        let _ = std::process::Command::new("kill")
            .args([sig, pid.trim()])
            .status();
    }

    /// Kills the server with SIGKILL and says how to start it again
    /// ([`Nats::start_again`]).
    pub fn kill_for_now(self) -> (std::path::PathBuf, u16, String) {
        let again = (self.dir.clone(), self.port, self.args.clone());
        self.kill();
        again
    }

    /// Starts again a server [`Nats::kill_for_now`] killed.
    pub fn start_again(again: (std::path::PathBuf, u16, String)) -> Nats {
        Nats::spawn(&again.0, again.1, &again.2)
    }

    /// Kills the server with SIGKILL (a machine that dies), then reaps its shell.
    pub fn kill(mut self) {
        let pid = std::fs::read_to_string(self.dir.join("pid")).expect("pid file");
        let _ = std::process::Command::new("kill")
            .args(["-9", pid.trim()])
            .status();
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }

    /// The `[store]` section of a node of stream `stream` on this server.
    pub fn store_section(&self, stream: &str, node: &str, tls: bool) -> String {
        let scheme = if tls { "tls" } else { "nats" };
        format!(
            "[store]\nkind = \"jetstream\"\nservers = [\"{scheme}://127.0.0.1:{}\"]\nstream = \"{stream}\"\nnode = \"{node}\"\n",
            self.port
        )
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The store the tests run on: `LABROUTE_TEST_STORE=jetstream` puts a JetStream log in
/// front of the embedded store, `LABROUTE_TEST_STORE=wal` a write-ahead log (D28)
/// (`.ci/run` runs `tests/spine.rs` and the crash campaign each way). The server, if any,
/// lives as long as the returned guard.
pub fn test_store(data: &std::path::Path) -> (String, Option<Nats>) {
    match std::env::var("LABROUTE_TEST_STORE").as_deref() {
        Ok("jetstream") => {}
        Ok("wal") => {
            return (
                "[store]\nkind = \"embedded\"\nwrite_ahead_log = true\n".to_owned(),
                None,
            );
        }
        _ => return (String::new(), None),
    }
    let nats = Nats::start(&data.join("nats"), false)
        .expect("LABROUTE_TEST_STORE=jetstream needs nats-server (apt install nats-server)");
    (nats.store_section("LABROUTE", "test", false), Some(nats))
}

/// A configuration from routes text (as `routes/test.toml`); a test's own routes are valid.
pub fn config(text: &str) -> Arc<labroute::config::Config> {
    Arc::new(
        labroute::config::Config::from_sources(&[("routes/test.toml".into(), text.to_owned())])
            .unwrap_or_else(|e| panic!("{e}")),
    )
}

/// The three record systems `routes_toml` names: the lab, ES1's and ES2's records.
pub struct Peers {
    pub lab: Receiver,
    pub es1: Receiver,
    pub es2: Receiver,
}

/// Three receivers answering AA.
pub async fn peers() -> Peers {
    Peers {
        lab: Receiver::start("127.0.0.1:0", AckCode::AA).await,
        es1: Receiver::start("127.0.0.1:0", AckCode::AA).await,
        es2: Receiver::start("127.0.0.1:0", AckCode::AA).await,
    }
}
