//! The crash campaign (RELIABILITY.md): load over MLLP from several connections while the
//! built binary is killed with SIGKILL at random points (receiving, committing, delivering,
//! retrying), restarted, killed again. The record systems (in this process, so they outlive
//! every kill) answer AE now and then, so that retries are always under way.
//!
//! At the end: acknowledged messages lost = 0, delivered to a wrong establishment = 0, each
//! connection's (hence each patient's) first deliveries in order; duplicate deliveries
//! (at-least-once: a receiver drops them by MSH-10) counted and reported; and how many kills
//! landed with a message being received or committed, delivered, or owed a retry.
//!
//! Short form in CI (5 kills). Long form: `LABROUTE_KILLS=50 cargo test --release --test
//! crash -- --nocapture`; `LABROUTE_CRASH_SEED` replays a run's kill points.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use labroute::hl7::Message;
use labroute::hl7::ack::{self, AckCode, AckHeader};
use labroute::hl7::mllp::frame;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// What a flaky record system saw: (MSH-10, its answer) in order.
type Log = Arc<Mutex<Vec<(String, AckCode)>>>;

/// What was under way when a kill landed, counted across the kills.
#[derive(Default)]
struct Phases {
    /// Messages written by a sender whose ACK had not come back (being received or
    /// committed).
    sending: AtomicUsize,
    /// Messages a record system had read and not yet answered (being delivered).
    delivering: AtomicUsize,
}

/// A record system that answers AE to about one message in `ae_one_in` the first time it
/// sees it (so the engine retries), AA otherwise, after `delay`.
async fn flaky_receiver(ae_one_in: u64, delay: Duration, phases: Arc<Phases>) -> (SocketAddr, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let l2 = log.clone();
    tokio::spawn(async move {
        let mut n = 0u64;
        let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (log, seen, phases) = (l2.clone(), seen.clone(), phases.clone());
            n += 1;
            let salt = n;
            tokio::spawn(async move {
                let mut reader = FrameReader::default();
                let mut k = salt;
                while let Some(frames) = reader.next(&mut s).await {
                    for f in frames {
                        phases.delivering.fetch_add(1, Ordering::SeqCst);
                        let _done = Decrement(&phases.delivering);
                        let prepared = labroute::hl7::message::prepare(&f);
                        let Ok(m) = Message::parse(&prepared) else {
                            return;
                        };
                        let ctrl = m.text("MSH-10").into_owned();
                        k = k
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let first = seen.lock().unwrap().insert(ctrl.clone());
                        let code = if first && (k >> 33) % ae_one_in == 0 {
                            AckCode::AE
                        } else {
                            AckCode::AA
                        };
                        tokio::time::sleep(delay).await;
                        log.lock().unwrap().push((ctrl, code));
                        let a = ack::build(&AckHeader::of(&m), code, None, "R", "20250101");
                        if s.write_all(&frame(&a)).await.is_err() || s.flush().await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, log)
}

/// Takes one off a gauge when dropped (however the scope ends).
struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// MSH-10 of the messages a receiver answered AE and no receiver has taken since: retries
/// owed.
fn retries_owed(logs: &[&Log]) -> usize {
    let mut refused = HashSet::new();
    let mut taken = HashSet::new();
    for log in logs {
        for (m, c) in log.lock().unwrap().iter() {
            if *c == AckCode::AE {
                refused.insert(m.clone());
            } else {
                taken.insert(m.clone());
            }
        }
    }
    refused.difference(&taken).count()
}

/// MSH-10 of the messages a receiver took (answered AA), in order.
fn taken(log: &Log) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(_, c)| *c == AckCode::AA)
        .map(|(m, _)| m.clone())
        .collect()
}

fn spawn_bin(routes: &Path, data: &Path) -> Child {
    spawn_serve(routes, data, "error", Stdio::null())
}

/// [`spawn_bin`] with its log (info and up) appended to `log`.
fn spawn_bin_logged(routes: &Path, data: &Path, log: &Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    spawn_serve(routes, data, "info", file.into())
}

fn spawn_serve(routes: &Path, data: &Path, level: &str, stderr: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_labroute"))
        .args(["serve", "--routes"])
        .arg(routes)
        .arg("--data")
        .arg(data)
        .env("LABROUTE_LOG", level)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn labroute")
}

async fn wait_port(port: u16) {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("port {port} never opened");
}

/// A node process killed when the test ends, however it ends (a failed assertion leaves
/// no labroute running).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for a node's port; a node that exits or does not listen within 60 s fails the
/// test with its log.
async fn wait_node(port: u16, child: &mut Child, log: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "node on port {port} did not start ({exited:?}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A small PRNG (xorshift) for the kill points: a seed replays a campaign.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// Waits (up to 120 s) until every acknowledged message has reached its receiver, then
/// calls `stop` (kills what still runs) and checks: none lost, none misrouted (even numbers
/// are ES1's, odd ones ES2's), and each connection's first deliveries in the order it sent
/// them. The number of duplicate deliveries.
async fn delivered_once_each(
    acked: &[(String, String)],
    log1: &Log,
    log2: &Log,
    seed: u64,
    stop: impl FnOnce(),
) -> usize {
    let want = |es: &str| -> Vec<String> {
        acked
            .iter()
            .filter(|(e, _)| e == es)
            .map(|(_, c)| c.clone())
            .collect()
    };
    let (want1, want2) = (want("ES1"), want("ES2"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let missing = loop {
        let got1: HashSet<String> = taken(log1).into_iter().collect();
        let got2: HashSet<String> = taken(log2).into_iter().collect();
        let missing = want1.iter().filter(|c| !got1.contains(*c)).count()
            + want2.iter().filter(|c| !got2.contains(*c)).count();
        if missing == 0 || tokio::time::Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop();
    assert_eq!(
        missing, 0,
        "acknowledged messages never delivered (seed {seed})"
    );

    // Nothing misrouted: even numbers are ES1's, odd ones ES2's.
    let (got1, got2) = (taken(log1), taken(log2));
    let number = |c: &String| c[1..].parse::<usize>().unwrap();
    let misrouted = got1.iter().filter(|c| number(c) % 2 == 1).count()
        + got2.iter().filter(|c| number(c) % 2 == 0).count();
    assert_eq!(
        misrouted, 0,
        "messages delivered to the wrong establishment"
    );

    // Each connection sent one message after the other: at each receiver, the first
    // deliveries of one connection's messages (hence of each of its patients) keep that
    // order.
    let mut first_seen = HashMap::new();
    for got in [&got1, &got2] {
        let mut last: HashMap<usize, usize> = HashMap::new();
        for c in got.iter() {
            if first_seen.insert(c.clone(), ()).is_some() {
                continue;
            }
            let i = number(c);
            if let Some(prev) = last.insert(i / PER_CONNECTION, i) {
                assert!(
                    prev < i,
                    "order broken: K{prev} delivered before K{i} was first delivered (seed {seed})"
                );
            }
        }
    }
    got1.len() + got2.len() - first_seen.len()
}

/// `CONNECTIONS` connections to `port`, each sending its own patients' results (numbered
/// from `first + c * PER_CONNECTION`) one after the other until its connection fails or a
/// message is not accepted (`resend`: a message answered AE is sent again, as a sender
/// does); what was accepted (AA) goes to `acked`.
fn send_results(
    port: u16,
    first: usize,
    acked: &Arc<Mutex<Vec<(String, String)>>>,
    phases: &Arc<Phases>,
    resend: bool,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CONNECTIONS)
        .map(|c| {
            let (acked, phases) = (acked.clone(), phases.clone());
            let start = first + c * PER_CONNECTION;
            tokio::spawn(async move {
                let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                    return;
                };
                let mut i = start;
                while i < start + PER_CONNECTION {
                    let es = if i % 2 == 0 { "ES1" } else { "ES2" };
                    let ctrl = format!("K{i}");
                    let patient = format!("{}", c * 10 + i % 5);
                    let m = result_by_identifier(es, &ctrl, &patient, "1");
                    phases.sending.fetch_add(1, Ordering::SeqCst);
                    let _answered = Decrement(&phases.sending);
                    if s.write_all(&frame(&m)).await.is_err() {
                        return;
                    }
                    match read_frame(&mut s).await {
                        Ok(a) if msa(&a).0 == "AA" => {
                            acked.lock().unwrap().push((es.to_owned(), ctrl));
                            i += 1;
                        }
                        Ok(a) if resend && msa(&a).0 == "AE" => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect()
}

/// Messages per connection and round: more than any round can send.
const PER_CONNECTION: usize = 100_000;
const CONNECTIONS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_and_misroutes_nothing() {
    let kills: usize = std::env::var("LABROUTE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let seed: u64 = std::env::var("LABROUTE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    eprintln!("crash campaign: {kills} kills, LABROUTE_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let lab = Receiver::start("127.0.0.1:0", AckCode::AA).await;
    let phases: Arc<Phases> = Arc::default();
    let (es1, log1) = flaky_receiver(7, Duration::from_millis(1), phases.clone()).await;
    let (es2, log2) = flaky_receiver(5, Duration::from_millis(2), phases.clone()).await;
    // Kills that landed with a message being received or committed, one being delivered,
    // a retry owed, acknowledged messages not yet delivered.
    let (mut while_receiving, mut while_delivering, mut while_retry_owed, mut while_backlog) =
        (0, 0, 0, 0);
    let (sil_port, dpi_port) = (free_port(), free_port());
    let routes = dir.path().join("routes");
    std::fs::create_dir_all(&routes).unwrap();
    let data = dir.path().join("data");
    // The embedded store, or a JetStream log in front of it (`LABROUTE_TEST_STORE`): its
    // NATS server runs in this process's shadow and outlives every kill.
    let (store, _nats) = test_store(dir.path());
    std::fs::write(
        routes.join("gcs.toml"),
        format!(
            "{}\n{store}",
            routes_toml(sil_port, dpi_port, lab.addr, es1, es2, 20)
        ),
    )
    .unwrap();
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut next = 0usize;
    for round in 0..kills {
        let mut child = spawn_bin(&routes, &data);
        wait_port(sil_port).await;
        // Each connection sends its own patients' results, one after the other, until the
        // kill cuts it.
        let senders = send_results(sil_port, next, &acked, &phases, false);
        // Early kills land in recovery and the first commits; later ones in steady load,
        // with deliveries and retries (AE) in flight.
        let after = rng.between(50, 1500);
        tokio::time::sleep(Duration::from_millis(after)).await;
        // What is under way now, just before the kill (the counts move on for the few
        // microseconds between this look and the signal).
        while_receiving += usize::from(phases.sending.load(Ordering::SeqCst) > 0);
        while_delivering += usize::from(phases.delivering.load(Ordering::SeqCst) > 0);
        while_retry_owed += usize::from(retries_owed(&[&log1, &log2]) > 0);
        let taken_now = taken(&log1).len() + taken(&log2).len();
        while_backlog += usize::from(acked.lock().unwrap().len() > taken_now);
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        for s in senders {
            let _ = s.await;
        }
        if round % 10 == 9 {
            eprintln!(
                "  {} kills, {} acknowledged so far",
                round + 1,
                acked.lock().unwrap().len()
            );
        }
        next += CONNECTIONS * PER_CONNECTION;
    }
    // Restart once more and let it deliver everything.
    let mut child = spawn_bin(&routes, &data);
    wait_port(sil_port).await;
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "the load should have been acknowledged before the kills ({} acked)",
        acked.len()
    );
    let duplicates = delivered_once_each(&acked, &log1, &log2, seed, || {
        let _ = child.kill();
        let _ = child.wait();
    })
    .await;
    let refused_first = [&log1, &log2]
        .iter()
        .map(|l| {
            l.lock()
                .unwrap()
                .iter()
                .filter(|(_, c)| *c == AckCode::AE)
                .count()
        })
        .sum::<usize>();
    eprintln!(
        "crash campaign: {kills} SIGKILLs (seed {seed}), {} acknowledged, 0 lost, 0 misrouted, \
         order kept, {duplicates} duplicate deliveries, {refused_first} AE answers retried",
        acked.len()
    );
    eprintln!(
        "  kills landing with a message being received or committed: {while_receiving}, \
         being delivered: {while_delivering}, a retry owed: {while_retry_owed}, \
         acknowledged messages not yet delivered: {while_backlog} (of {kills})"
    );
}

/// Issue 9's failure test: two labroute nodes on a three-server JetStream cluster (the log
/// kept in three copies), both under load; one node and one NATS server are killed with
/// SIGKILL mid-load. The surviving node takes over the dead one's destinations once its
/// leases lapse, and everything either node acknowledged is delivered: none lost, none
/// misrouted, each connection's order kept (RELIABILITY.md).
/// The cluster campaigns' setting: three NATS servers in one JetStream cluster, two nodes
/// (a, b) on them with three replicas, ES1's and ES2's record systems answering AE now and
/// then.
struct ClusterRig {
    _dir: tempfile::TempDir,
    nats: Vec<Nats>,
    _lab: Receiver,
    phases: Arc<Phases>,
    log1: Log,
    log2: Log,
    ports: [u16; 2],
    nodes: [Killed; 2],
    logs: [PathBuf; 2],
    seed: u64,
    rng: Rng,
    /// One campaign at a time (three servers and two nodes each, on 2 cores; ports chosen
    /// free before use, which two rigs starting together could both pick). Last: released
    /// once the rig's servers and nodes are gone.
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl ClusterRig {
    async fn start() -> Option<ClusterRig> {
        static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let serial = SERIAL.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let Some(nats) = Nats::start_cluster(&dir.path().join("nats"), 3) else {
            eprintln!("SKIPPED: nats-server is not installed (apt install nats-server)");
            return None;
        };
        nats[0].wait_cluster(3).await;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        let lab = Receiver::start("127.0.0.1:0", AckCode::AA).await;
        let phases: Arc<Phases> = Arc::default();
        let (es1, log1) = flaky_receiver(7, Duration::from_millis(1), phases.clone()).await;
        let (es2, log2) = flaky_receiver(5, Duration::from_millis(2), phases.clone()).await;
        let servers = nats
            .iter()
            .map(|n| format!("\"nats://127.0.0.1:{}\"", n.port))
            .collect::<Vec<_>>()
            .join(", ");
        // Two nodes: their own ports, data and name; the same stream, three replicas.
        let node = |name: &str| {
            let (sil, dpi) = (free_port(), free_port());
            let routes = dir.path().join(name).join("routes");
            std::fs::create_dir_all(&routes).unwrap();
            std::fs::write(
                routes.join("gcs.toml"),
                format!(
                    "{}\n[store]\nkind = \"jetstream\"\nservers = [{servers}]\nreplicas = 3\nnode = \"{name}\"\n",
                    routes_toml(sil, dpi, lab.addr, es1, es2, 20)
                ),
            )
            .unwrap();
            let log = dir.path().join(format!("{name}.log"));
            let child = Killed(spawn_bin_logged(
                &routes,
                &dir.path().join(name).join("data"),
                &log,
            ));
            (sil, child, log)
        };
        let (a_port, mut a, a_log) = node("a");
        let (b_port, mut b, b_log) = node("b");
        wait_node(a_port, &mut a.0, &a_log).await;
        wait_node(b_port, &mut b.0, &b_log).await;
        Some(ClusterRig {
            _dir: dir,
            nats,
            _lab: lab,
            phases,
            log1,
            log2,
            ports: [a_port, b_port],
            nodes: [a, b],
            logs: [a_log, b_log],
            seed,
            rng: Rng(seed),
            _serial: serial,
        })
    }

    /// Load on both nodes (their senders send again what is answered AE); returns once
    /// more than 20 messages are acknowledged (a loaded CI machine makes the first
    /// replicated publishes slow), then at a random point up to a second later.
    async fn load(
        &mut self,
        acked: &Arc<Mutex<Vec<(String, String)>>>,
    ) -> [Vec<tokio::task::JoinHandle<()>>; 2] {
        let to_a = send_results(self.ports[0], 0, acked, &self.phases, true);
        let to_b = send_results(
            self.ports[1],
            CONNECTIONS * PER_CONNECTION,
            acked,
            &self.phases,
            true,
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while acked.lock().unwrap().len() <= 20 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(self.rng.between(100, 1000))).await;
        [to_a, to_b]
    }

    /// Every acknowledged message delivered once to its establishment, in order; the
    /// nodes stopped. The duplicate deliveries.
    async fn check(&mut self, acked: &[(String, String)]) -> usize {
        let waited = std::time::Instant::now();
        let (nodes, logs) = (&mut self.nodes, &self.logs);
        let duplicates = delivered_once_each(acked, &self.log1, &self.log2, self.seed, || {
            for n in nodes.iter_mut() {
                let _ = n.0.kill();
                let _ = n.0.wait();
            }
            if std::env::var_os("LABROUTE_SHOW_LOGS").is_some() {
                for log in logs {
                    eprintln!(
                        "--- {}\n{}",
                        log.display(),
                        std::fs::read_to_string(log).unwrap_or_default()
                    );
                }
            }
        })
        .await;
        eprintln!(
            "  every acknowledged message delivered {:.1} s after the load ended",
            waited.elapsed().as_secs_f64()
        );
        duplicates
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_and_a_nats_server_killed_mid_load_lose_and_misroute_nothing() {
    let Some(mut rig) = ClusterRig::start().await else {
        return;
    };
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let [to_a, to_b] = rig.load(&acked).await;
    let killed_server = (rig.rng.next() % 3) as usize;
    let before = acked.lock().unwrap().len();
    rig.nodes[0].0.kill().expect("SIGKILL node a");
    let _ = rig.nodes[0].0.wait();
    rig.nats.remove(killed_server).kill();
    for s in to_a {
        let _ = s.await;
    }
    // Node b goes on taking messages on the two servers left (its senders send again what
    // it answers AE while the cluster elects new leaders, which can take seconds).
    tokio::time::sleep(Duration::from_secs(15)).await;
    for s in to_b {
        s.abort();
    }
    let acked = acked.lock().unwrap().clone();
    let after = acked.len() - before;
    assert!(before > 20, "load acknowledged before the kills ({before})");
    let duplicates = rig.check(&acked).await;
    eprintln!(
        "cluster campaign (seed {}): node a and NATS server n{killed_server} killed with SIGKILL; \
         {} acknowledged ({after} after the kills, by node b), 0 lost, 0 misrouted, order kept, \
         {duplicates} duplicate deliveries",
        rig.seed,
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_cluster_losing_its_quorum_stops_acknowledgements_and_loses_nothing() {
    let Some(mut rig) = ClusterRig::start().await else {
        return;
    };
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let [to_a, to_b] = rig.load(&acked).await;
    // Two servers of three die: no quorum, no publish can be acknowledged.
    let kept = (rig.rng.next() % 3) as usize;
    let mut gone = Vec::new();
    for i in (0..3).rev() {
        if i != kept {
            gone.push(rig.nats.remove(i).kill_for_now());
        }
    }
    let before = acked.lock().unwrap().len();
    // What was in flight at the kills may still be acknowledged; then nothing is.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let in_flight = acked.lock().unwrap().len() - before;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = acked.lock().unwrap().len() - before - in_flight;
    assert_eq!(during, 0, "no acknowledgement without a quorum");
    // The servers come back: the nodes acknowledge again, without a restart.
    for again in gone {
        rig.nats.push(Nats::start_again(again));
    }
    let back = acked.lock().unwrap().len();
    let restarted = tokio::time::Instant::now();
    let deadline = restarted + Duration::from_secs(60);
    while acked.lock().unwrap().len() < back + 50 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed = restarted.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for s in to_a.into_iter().chain(to_b) {
        s.abort();
    }
    let acked = acked.lock().unwrap().clone();
    let after = acked.len() - back;
    assert!(before > 20, "load acknowledged before the kills ({before})");
    assert!(
        after >= 50,
        "acknowledgements resume once the servers are back ({after})"
    );
    let duplicates = rig.check(&acked).await;
    eprintln!(
        "quorum campaign (seed {}): NATS servers other than n{kept} killed with SIGKILL for 12 s; \
         {} acknowledged ({in_flight} in flight at the kills, 0 without a quorum, {after} after, \
         the first 50 in {:.1} s), 0 lost, 0 misrouted, order kept, {duplicates} duplicate deliveries",
        rig.seed,
        acked.len(),
        resumed.as_secs_f64()
    );
}

/// The ports among `ports` that process `pid` holds established TCP connections to (read
/// from /proc: its sockets' inodes, then /proc/net/tcp).
fn connected_ports(pid: u32, ports: &[u16]) -> Vec<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()
                .and_then(|s| s.strip_prefix("socket:["))
                .map(|s| s.trim_end_matches(']').to_owned())
        })
        .collect();
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    tcp.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // remote address, state (01: established), inode
            if f.len() < 10 || f[3] != "01" || !inodes.contains(f[9]) {
                return None;
            }
            let port = u16::from_str_radix(f[2].split(':').nth(1)?, 16).ok()?;
            ports.contains(&port).then_some(port)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_nats_server_stops_answering_goes_on_through_another() {
    let Some(mut rig) = ClusterRig::start().await else {
        return;
    };
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let [to_a, to_b] = rig.load(&acked).await;
    // The server node a is connected to stops answering (SIGSTOP: its connections stay
    // open, as when the network cuts it off) for 25 s.
    let ports: Vec<u16> = rig.nats.iter().map(|n| n.port).collect();
    let on = connected_ports(rig.nodes[0].0.id(), &ports);
    let frozen = rig
        .nats
        .iter()
        .position(|n| on.contains(&n.port))
        .expect("node a is connected to one of the servers");
    rig.nats[frozen].freeze();
    let by_a = |acked: &Arc<Mutex<Vec<(String, String)>>>| {
        acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, c)| c[1..].parse::<usize>().unwrap() < CONNECTIONS * PER_CONNECTION)
            .count()
    };
    tokio::time::sleep(Duration::from_secs(15)).await;
    let mark = by_a(&acked);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = by_a(&acked) - mark;
    rig.nats[frozen].thaw();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for s in to_a.into_iter().chain(to_b) {
        s.abort();
    }
    assert!(
        during > 0,
        "node a acknowledges again through another server while its own is frozen"
    );
    let acked = acked.lock().unwrap().clone();
    let duplicates = rig.check(&acked).await;
    eprintln!(
        "frozen-server campaign (seed {}): node a's server n{frozen} stopped (SIGSTOP) for 25 s; \
         {} acknowledged, {during} by node a between 15 and 25 s into the freeze, 0 lost, \
         0 misrouted, order kept, {duplicates} duplicate deliveries",
        rig.seed,
        acked.len()
    );
}
