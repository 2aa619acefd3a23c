//! The JetStream log in front of the embedded store (`[store] kind = "jetstream"`, D23),
//! against a real `nats-server` (Debian package, installed by `.ci/run`): every change goes
//! through the stream, a second node reading the same stream builds the same store, a
//! restart reads on from where it stopped, a stream that cannot be the store's log is
//! refused, and the log runs over mutually authenticated TLS. The spine's tests also run on
//! this store (`LABROUTE_TEST_STORE=jetstream`, in `.ci/run`).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use labroute::config::Config;
use labroute::server::Server;
use labroute::store::Store;
use labroute::store::audit::{AuditFilter, query};

fn routes(p: &Peers, store: &str) -> String {
    format!(
        "{}\n{store}",
        routes_toml(0, 0, p.lab.addr, p.es1.addr, p.es2.addr, 50)
    )
}

/// Stream `name`'s info, read by a client of our own (not the engine's).
async fn stream_info(nats: &Nats, name: &str) -> async_nats::jetstream::stream::Info {
    let client = async_nats::connect(format!("127.0.0.1:{}", nats.port))
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(name).await.expect("the stream exists");
    s.info().await.expect("stream info").clone()
}

/// The stream's first and last entries. Entries every node applied are purged after 30 s
/// (D25): the last entry, not the number held, is where a node that applied it all is.
async fn stream_bounds(nats: &Nats, stream: &str) -> (u64, u64) {
    let state = stream_info(nats, stream).await.state;
    (state.first_sequence, state.last_sequence)
}

/// Node `name` on stream `LOG` of `nats`, its store in `dir`.
async fn node(p: &Peers, nats: &Nats, name: &str, dir: &Path) -> Server {
    start_node(p, nats, "LOG", name, dir)
        .await
        .unwrap_or_else(|e| panic!("node {name} starts: {e}"))
}

/// Node `name` on stream `stream` of `nats`, its store in `dir`, or why it did not start.
async fn start_node(
    p: &Peers,
    nats: &Nats,
    stream: &str,
    name: &str,
    dir: &Path,
) -> Result<Server, labroute::server::ServeError> {
    Server::start(
        config(&routes(p, &nats.store_section(stream, name, false))),
        dir.to_owned(),
    )
    .await
}

/// A NATS server in its own directory, and the record systems; `None` (SKIPPED said)
/// without nats-server.
async fn setup(tls: bool) -> Option<(tempfile::TempDir, Nats, Peers)> {
    let dir = tempfile::tempdir().unwrap();
    let nats = nats_or_skip(dir.path(), tls)?;
    Some((dir, nats, peers().await))
}

fn nats_or_skip(dir: &Path, tls: bool) -> Option<Nats> {
    let n = Nats::start(dir, tls);
    if n.is_none() {
        eprintln!("SKIPPED: nats-server is not installed (apt install nats-server)");
    }
    n
}

fn results(n: usize, prefix: &str) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let es = if i % 2 == 0 { "ES1" } else { "ES2" };
            result_by_identifier(
                es,
                &format!("{prefix}{i:02}"),
                &format!("{}", 100 + i % 3),
                "1",
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_reading_the_log_builds_the_same_store() {
    let Some((_nats_dir, nats, p)) = setup(false).await else {
        return;
    };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(&p, &nats, "a", a_dir.path()).await;
    let acks = send_all(a.addr("sil").unwrap(), &results(10, "R"))
        .await
        .unwrap();
    assert!(
        acks.iter().all(|a| msa(a).0 == "AA"),
        "every message accepted"
    );
    assert!(p.es1.wait_for(5, Duration::from_secs(10)).await);
    assert!(p.es2.wait_for(5, Duration::from_secs(10)).await);
    // The deliveries recorded: the queues are empty.
    assert!(
        eventually(|| a
            .store
            .store()
            .counts()
            .is_ok_and(|c| c.outbox == 0 && c.delivered == 10))
        .await
    );
    // Ten messages and ten delivery outcomes went through the stream.
    assert!(stream_bounds(&nats, "LOG").await.1 >= 20);

    // Node b, on the same stream with an empty store, applies the whole log.
    let b = node(&p, &nats, "b", b_dir.path()).await;
    assert!(
        eventually(|| b
            .store
            .store()
            .counts()
            .is_ok_and(|c| c.messages == 10 && c.delivered == 10 && c.outbox == 0))
        .await,
        "node b has every message, each delivered"
    );
    // What b knows is delivered, it does not deliver again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.es1.count() + p.es2.count(), 10);
    a.shutdown().await;
    b.shutdown().await;

    let (sa, sb) = (
        Store::open(a_dir.path()).unwrap(),
        Store::open(b_dir.path()).unwrap(),
    );
    assert_eq!(sa.log_position().unwrap(), sb.log_position().unwrap());
    let (ja, jb) = (
        query(&sa, &AuditFilter::default()).unwrap(),
        query(&sb, &AuditFilter::default()).unwrap(),
    );
    assert!(ja.len() >= 20, "{} journal entries", ja.len());
    assert_eq!(
        ja, jb,
        "the same journal, entry for entry (times and hashes included)"
    );
    for seq in 1..=10 {
        assert_eq!(sa.record(seq).unwrap(), sb.record(seq).unwrap());
        assert_eq!(sa.raw(seq).unwrap(), sb.raw(seq).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reads_on_from_where_it_stopped() {
    let Some((_nats_dir, nats, p)) = setup(false).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = node(&p, &nats, "a", dir.path()).await;
    send_all(s.addr("sil").unwrap(), &results(4, "A"))
        .await
        .unwrap();
    assert!(eventually(|| s.store.store().counts().is_ok_and(|c| c.delivered == 4)).await);
    s.shutdown().await;
    let before = Store::open(dir.path()).unwrap().log_position().unwrap();
    assert!(before >= 8, "position {before}");

    // Restarted with a shorter memory of stopped nodes (D25): the bucket takes it.
    let section = nats.store_section("LOG", "a", false) + "forget_node_after_hours = 2\n";
    let s = Server::start(config(&routes(&p, &section)), dir.path().to_owned())
        .await
        .expect("restarts");
    let kept = stream_info(&nats, "KV_LOG_NODES").await.config.max_age;
    assert_eq!(kept, Duration::from_secs(2 * 3600));
    send_all(s.addr("sil").unwrap(), &results(4, "B"))
        .await
        .unwrap();
    assert!(eventually(|| s.store.store().counts().is_ok_and(|c| c.delivered == 8)).await);
    assert_eq!(
        s.store.store().counts().unwrap().messages,
        8,
        "nothing applied twice"
    );
    s.shutdown().await;
    let mut ids = p.es1.control_ids();
    ids.extend(p.es2.control_ids());
    ids.sort();
    let want: Vec<String> = ["A00", "A01", "A02", "A03", "B00", "B01", "B02", "B03"]
        .map(String::from)
        .to_vec();
    assert_eq!(ids, want, "each delivered once");
    assert_eq!(
        Store::open(dir.path()).unwrap().log_position().unwrap(),
        stream_bounds(&nats, "LOG").await.1,
        "every entry applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_cannot_be_the_stores_log_is_refused_at_start() {
    let Some((_nats_dir, nats, p)) = setup(false).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = start_node(&p, &nats, "FIRST", "a", dir.path())
        .await
        .unwrap();
    send_all(s.addr("sil").unwrap(), &results(2, "X"))
        .await
        .unwrap();
    s.shutdown().await;
    // The same store on a new, empty stream: its entries would be numbered from 1 again
    // and skipped as applied. Refused, with what to do.
    let err = start_node(&p, &nats, "OTHER", "a", dir.path())
        .await
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(text.contains("stream OTHER ends at entry 0"), "{text}");
    assert!(text.contains("empty data directory"), "{text}");
    // No server there: a clear error naming it.
    let port = free_port();
    let err = Server::start(
        config(&routes(
            &p,
            &format!(
                "[store]\nkind = \"jetstream\"\nservers = [\"nats://127.0.0.1:{port}\"]\nnode = \"a\"\n"
            ),
        )),
        tempfile::tempdir().unwrap().path().to_owned(),
    )
    .await
    .err()
    .expect("refused");
    assert!(
        err.to_string().contains(&format!(
            "cannot connect to JetStream (nats://127.0.0.1:{port})"
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_runs_over_mutually_authenticated_tls() {
    let Some((_nats_dir, nats, p)) = setup(true).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n{}",
        routes(&p, &nats.store_section("LOG", "a", true)),
        dev_tls_section()
    );
    let s = Server::start(config(&text), dir.path().to_owned())
        .await
        .expect("starts over TLS");
    let acks = send_all(s.addr("sil").unwrap(), &results(2, "T"))
        .await
        .unwrap();
    assert!(acks.iter().all(|a| msa(a).0 == "AA"));
    assert!(p.es1.wait_for(1, Duration::from_secs(10)).await);
    s.shutdown().await;

    // tls:// needs the instance's [tls]: a configuration error naming the field.
    let err = Config::from_sources(&[(
        "routes/test.toml".into(),
        routes(&p, &nats.store_section("LOG", "a", true)),
    )])
    .expect_err("refused");
    assert!(err.to_string().contains("store.servers"), "{err}");
    // Plain nats:// only on loopback.
    let err = Config::from_sources(&[(
        "routes/test.toml".into(),
        routes(
            &p,
            "[store]\nkind = \"jetstream\"\nservers = [\"nats://10.0.0.1:4222\"]\nnode = \"a\"\n",
        ),
    )])
    .expect_err("refused");
    assert!(
        err.to_string().contains("only on a loopback address"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_each_message_once_and_in_order_and_take_over_a_stopped_ones_destinations()
 {
    let Some((_nats_dir, nats, p)) = setup(false).await else {
        return;
    };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(&p, &nats, "a", a_dir.path()).await;
    let b = node(&p, &nats, "b", b_dir.path()).await;
    // Both nodes take messages at once; each destination is delivered by one of them.
    let (for_a, for_b) = (results(10, "A"), results(10, "B"));
    let (ra, rb) = tokio::join!(
        send_all(a.addr("sil").unwrap(), &for_a),
        send_all(b.addr("sil").unwrap(), &for_b),
    );
    for ack in ra.unwrap().iter().chain(rb.unwrap().iter()) {
        assert_eq!(msa(ack).0, "AA");
    }
    assert!(p.es1.wait_for(10, Duration::from_secs(15)).await);
    assert!(p.es2.wait_for(10, Duration::from_secs(15)).await);
    // Time for a second delivery, if any were made.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = |r: &Receiver| {
        let mut ids = r.control_ids();
        let all = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), all, "no message delivered twice: {ids:?}");
        all
    };
    assert_eq!(delivered(&p.es1) + delivered(&p.es2), 20);
    // Each sender's messages arrive in the order they were sent (FIFO per destination).
    for r in [&p.es1, &p.es2] {
        for prefix in ["A", "B"] {
            let ids: Vec<String> = r
                .control_ids()
                .into_iter()
                .filter(|c| c.starts_with(prefix))
                .collect();
            let mut sorted = ids.clone();
            sorted.sort();
            assert_eq!(ids, sorted, "in order");
        }
    }

    // Node a stops (its leases given up): node b delivers what comes next, whichever
    // node held the destinations.
    a.shutdown().await;
    let acks = send_all(b.addr("sil").unwrap(), &results(6, "C"))
        .await
        .unwrap();
    assert!(acks.iter().all(|a| msa(a).0 == "AA"));
    assert!(p.es1.wait_for(13, Duration::from_secs(20)).await);
    assert!(p.es2.wait_for(13, Duration::from_secs(20)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(delivered(&p.es1) + delivered(&p.es2), 26);
    b.shutdown().await;
}

/// Routes where ES1's patient authority `CHNORD-IPP` names ES2 instead (D24's tests: a
/// reload that changes where a result goes).
fn moved_authority(text: &str) -> String {
    text.replace(
        r#"identify.patient_authorities = ["CHNORD-IPP"]"#,
        r#"identify.patient_authorities = ["CHNORD-OLD"]"#,
    )
    .replace(
        r#"identify.patient_authorities = ["CHSUD-IPP"]"#,
        r#"identify.patient_authorities = ["CHSUD-IPP", "CHNORD-IPP"]"#,
    )
}

/// Results identified by ES1's patient authority (ES1's under `routes`, ES2's under
/// `moved_authority`).
fn chnord_results(n: usize, prefix: &str) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            result_by_identifier(
                "ES1",
                &format!("{prefix}{i:02}"),
                &format!("{prefix}{i}"),
                "1",
            )
        })
        .collect()
}

/// Waits until every node has applied the whole stream and has nothing left to deliver
/// (then nothing more is published, and the stores can be compared once closed).
async fn settled(nats: &Nats, nodes: &[&Server]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let last = stream_bounds(nats, "LOG").await.1;
        let done = nodes.iter().all(|n| {
            n.store.store().log_position().unwrap() == last
                && n.store.store().counts().is_ok_and(|c| c.outbox == 0)
        });
        if done {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nodes did not settle"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Both stores, closed, hold the same journal and the same position.
fn same_stores(a: &Path, b: &Path) {
    let (sa, sb) = (Store::open(a).unwrap(), Store::open(b).unwrap());
    assert_eq!(sa.log_position().unwrap(), sb.log_position().unwrap());
    let (ja, jb) = (
        query(&sa, &AuditFilter::default()).unwrap(),
        query(&sb, &AuditFilter::default()).unwrap(),
    );
    assert_eq!(ja, jb, "the same journal, entry for entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_puts_the_routes_in_force_on_every_node_at_the_same_entry_and_a_node_without_them_stops()
 {
    let Some((_nats_dir, nats, p)) = setup(false).await else {
        return;
    };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Both nodes have an admin endpoint whose probes this host reads without a
    // certificate (its address per node, outside the routes' digest; its operator system
    // in it, as every system).
    let admin = dev_tls_section()
        + &admin_section("operator", &["ES1", "ES2"]).replacen(
            "bind = \"127.0.0.1:0\"\n",
            "bind = \"127.0.0.1:0\"\nwithout_certificate = [\"127.0.0.1\"]\n",
            1,
        );
    let with_admin = |name: &str, edit: &dyn Fn(String) -> String| {
        config(&(edit(routes(&p, &nats.store_section("LOG", name, false))) + &admin))
    };
    let b_routes = |edit: &dyn Fn(String) -> String| with_admin("b", edit);
    let a = Server::start(with_admin("a", &|r| r), a_dir.path().to_owned())
        .await
        .expect("node a starts");
    let b = Server::start(b_routes(&|r| r), b_dir.path().to_owned())
        .await
        .expect("node b starts");
    let readyz = async |s: &Server| {
        let tls = client_tls(&dev_certs().join("ca.pem"), None).expect("client TLS");
        let a = https_client(s.admin.expect("admin"), tls)
            .send(http::Method::GET, "/readyz", "text/plain", Vec::new())
            .await
            .expect("answered");
        (a.status, String::from_utf8_lossy(&a.body).into_owned())
    };
    assert_eq!(readyz(&b).await.0, 200);
    let before = send_all(a.addr("sil").unwrap(), &chnord_results(2, "A"))
        .await
        .unwrap();
    assert!(before.iter().all(|a| msa(a).0 == "AA"));
    assert!(p.es1.wait_for(2, Duration::from_secs(15)).await);

    // Node a reloads routes that send ES1's authority to ES2. Node b does not have them:
    // it stops applying the log at that entry rather than decide differently.
    let new_routes = with_admin("a", &|r| moved_authority(&r));
    let summary = a
        .reload(Some((*new_routes).clone()))
        .await
        .expect("node a reloads");
    assert!(summary.contains("in force"), "{summary}");
    assert!(
        eventually(|| b.store.halted().is_some()).await,
        "node b stops at the entry"
    );
    // Node a goes on under the new routes; node b's destinations are taken over by node a.
    let after = send_all(a.addr("sil").unwrap(), &chnord_results(2, "B"))
        .await
        .unwrap();
    assert!(after.iter().all(|a| msa(a).0 == "AA"));
    assert!(
        p.es2.wait_for(2, Duration::from_secs(30)).await,
        "the results routed by the new routes are delivered to ES2 while node b is stopped"
    );
    assert_eq!(p.es1.count(), 2, "nothing more for ES1");
    let b_messages = b.store.store().counts().unwrap().messages;
    assert_eq!(b_messages, 2, "node b applied nothing past the entry");
    // Its probe says so: not ready, with the entry and the routes it needs.
    let (status, body) = readyz(&b).await;
    assert_eq!(status, 503, "{body}");
    let wanted = a.store.config().routing_digest().to_string();
    assert!(body.contains("\"stopped\":\"at entry"), "{body}");
    assert!(body.contains(&wanted), "{body}");

    // Node b reloaded with other routes: refused, saying which are in force.
    let other = b_routes(&|r| r.replace("Sudville", "Sudville-2"));
    let err = b.reload(Some((*other).clone())).await.expect_err("refused");
    assert!(err.contains("stopped applying the log at entry"), "{err}");
    // With the routes in force (its own node name and listeners): it goes on.
    let same = b_routes(&|r| moved_authority(&r));
    b.reload(Some((*same).clone()))
        .await
        .expect("node b reloads");
    assert!(b.store.halted().is_none());
    assert_eq!(readyz(&b).await.0, 200);
    assert!(
        eventually(|| b.store.store().counts().is_ok_and(|c| c.messages == 4)).await,
        "node b applies what it had stopped at"
    );
    let cfg = b.store.config();
    assert_eq!(cfg.routing_digest(), a.store.config().routing_digest());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.es1.count() + p.es2.count(), 4, "each delivered once");
    settled(&nats, &[&a, &b]).await;
    a.shutdown().await;
    b.shutdown().await;
    same_stores(a_dir.path(), b_dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_on_changed_routes_applies_what_it_missed_under_the_old_ones_then_puts_its_own_in_force()
 {
    let Some((_nats_dir, nats, p)) = setup(false).await else {
        return;
    };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(&p, &nats, "a", a_dir.path()).await;
    let b = node(&p, &nats, "b", b_dir.path()).await;
    b.shutdown().await;
    // While b is stopped, a routes two results to ES1 under the routes in force.
    send_all(a.addr("sil").unwrap(), &chnord_results(2, "A"))
        .await
        .unwrap();
    assert!(p.es1.wait_for(2, Duration::from_secs(15)).await);

    // b restarts on changed routes: it applies a's entries under the routes its store
    // applied the log under (ES1, as a did), then puts its own in force for every node.
    let changed = moved_authority(&routes(&p, &nats.store_section("LOG", "b", false)));
    let b = Server::start(config(&changed), b_dir.path().to_owned())
        .await
        .expect("node b starts on changed routes");
    for seq in 1..=2 {
        let decided = |s: &Server| {
            let r = s.store.store().record(seq).unwrap().expect("stored");
            let to: Vec<String> = r
                .destinations
                .iter()
                .map(|d| d.as_str().to_owned())
                .collect();
            (format!("{:?}", r.decision), to)
        };
        let (ra, rb) = (decided(&a), decided(&b));
        assert_eq!(ra, rb, "message {seq} decided the same on both nodes");
        assert_eq!(ra.1, ["dpi-es1"], "under the routes in force when it came");
    }
    // Node a does not have b's routes: it stops; reloaded with them, it goes on.
    assert!(
        eventually(|| a.store.halted().is_some()).await,
        "node a stops"
    );
    let same = moved_authority(&routes(&p, &nats.store_section("LOG", "a", false)));
    a.reload(Some((*config(&same)).clone()))
        .await
        .expect("node a reloads");
    send_all(b.addr("sil").unwrap(), &chnord_results(2, "B"))
        .await
        .unwrap();
    assert!(
        p.es2.wait_for(2, Duration::from_secs(30)).await,
        "routed to ES2 under b's routes"
    );
    assert!(eventually(|| a.store.store().counts().is_ok_and(|c| c.messages == 4)).await);
    settled(&nats, &[&a, &b]).await;
    a.shutdown().await;
    b.shutdown().await;
    same_stores(a_dir.path(), b_dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_keeps_only_what_a_known_node_has_not_applied_and_a_node_comes_back_from_a_copy() {
    let Some((_nats_dir, nats, p)) = setup(false).await else {
        return;
    };
    let (a_dir, b_dir, c_dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let a = node(&p, &nats, "a", a_dir.path()).await;
    let b = node(&p, &nats, "b", b_dir.path()).await;
    send_all(a.addr("sil").unwrap(), &results(10, "A"))
        .await
        .unwrap();
    let applied_all = |s: &Server, n: u64| {
        s.store
            .store()
            .counts()
            .is_ok_and(|c| c.delivered == n && c.outbox == 0)
    };
    assert!(eventually(|| applied_all(&a, 10) && applied_all(&b, 10)).await);
    let (_, last) = stream_bounds(&nats, "LOG").await;
    assert!(
        eventually(|| a.store.store().log_position().unwrap() == last
            && b.store.store().log_position().unwrap() == last)
        .await
    );
    // Both nodes say where they are; what both applied goes.
    b.store.trim_log().await.expect("b trims");
    let purged = a.store.trim_log().await.expect("a trims");
    assert_eq!(purged, last, "every entry both nodes applied is purged");
    assert_eq!(stream_bounds(&nats, "LOG").await.0, last + 1);

    // b stops: what it has not applied is kept for it.
    b.shutdown().await;
    let b_at = Store::open(b_dir.path()).unwrap().log_position().unwrap();
    send_all(a.addr("sil").unwrap(), &results(4, "B"))
        .await
        .unwrap();
    assert!(eventually(|| applied_all(&a, 14)).await);
    a.store.trim_log().await.expect("a trims");
    let (first, last) = stream_bounds(&nats, "LOG").await;
    assert!(
        first <= b_at + 1,
        "entries after b's position {b_at} kept (first {first})"
    );
    assert!(last > b_at);

    // A new node on an empty store cannot read the entries already purged: refused,
    // saying to start from a copy.
    let err = start_node(&p, &nats, "LOG", "c", tempfile::tempdir().unwrap().path())
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("from a copy of another node's data directory"),
        "{err}"
    );
    // From a copy of b's (stopped) directory, it applies the rest and has what a has.
    common::copy_dir(b_dir.path(), c_dir.path());
    let c = node(&p, &nats, "c", c_dir.path()).await;
    assert!(
        eventually(|| applied_all(&c, 14)).await,
        "node c applies what b had not"
    );
    settled(&nats, &[&a, &c]).await;
    a.shutdown().await;
    c.shutdown().await;
    same_stores(a_dir.path(), c_dir.path());
}
