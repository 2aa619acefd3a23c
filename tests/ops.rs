//! Operations: what Prometheus and the probes read from a running instance. `/metrics`
//! (real histograms, queue depth and oldest age per destination, dead letters, refusals,
//! store commits) reflects the test's traffic, carries no patient data, and is readable
//! without a client certificate only from the addresses `[admin] without_certificate`
//! lists; `/healthz` and `/readyz` answer probes.

mod common;

use common::*;
use http::Method;
use labroute::hl7::ack::AckCode;
use serde_json::json;

/// One sample of the exposition text: the value of `name` whose labels include every
/// `labels` pair (`None` when there is none).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = match series.split_once('{') {
            Some((m, r)) => (m, r.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            return None;
        }
        let has = |k: &str, v: &str| rest.split(',').any(|p| p == format!("{k}=\"{v}\""));
        labels
            .iter()
            .all(|(k, v)| has(k, v))
            .then(|| value.parse().ok())?
    })
}

/// The metric names each file of `ops/` reads (its PromQL expressions).
fn ops_metric_names() -> Vec<(String, Vec<String>)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ops");
    let mut out = Vec::new();
    for file in ["prometheus/alerts.yml", "grafana/labroute.json"] {
        let text = std::fs::read_to_string(root.join(file)).expect("ops file");
        let mut names: Vec<String> = Vec::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("labroute_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
            rest = &tail[end..];
        }
        assert!(!names.is_empty(), "{file} reads no labroute metric");
        out.push((file.to_owned(), names));
    }
    out
}

/// `promtool check rules` and `promtool test rules` (Debian `prometheus`): the rules are
/// valid, and each incident fires one alert that resolves once (ops/prometheus/alerts_test.yml).
#[test]
fn alerting_rules_pass_promtool() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/prometheus");
    let Ok(out) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    else {
        // CI installs it: missing there is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool missing in CI (.ci/run installs the Debian package prometheus)"
        );
        eprintln!("SKIPPED: promtool not found (Debian package prometheus; .ci/run installs it)");
        return;
    };
    assert!(out.status.success());
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The routes with the development PKI and an admin endpoint whose metrics and health this
/// host may read without a certificate. The receivers the tests start answer: the lab AE
/// (orders wait), ES1 AA, ES2 AR (dead letters).
fn with_open_admin(routes: String) -> String {
    routes
        + &dev_tls_section()
        + &admin_section("operator", &["ES1", "ES2"]).replacen(
            "bind = \"127.0.0.1:0\"\n",
            "bind = \"127.0.0.1:0\"\nwithout_certificate = [\"127.0.0.1\"]\n",
            1,
        )
}

/// GET `path` on the admin endpoint with no client certificate.
async fn anonymous(h: &Harness, path: &str) -> (u16, String) {
    let tls = client_tls(&dev_certs().join("ca.pem"), None).expect("client TLS");
    let c = https_client(h.server.admin.expect("admin"), tls);
    let a = c
        .send(Method::GET, path, "text/plain", Vec::new())
        .await
        .expect("answered");
    (a.status, String::from_utf8_lossy(&a.body).into_owned())
}

#[tokio::test]
async fn metrics_and_probes_reflect_the_traffic_without_patient_data() {
    let h = Harness::start_with([AckCode::AE, AckCode::AA, AckCode::AR], with_open_admin).await;
    let patients = ["PSECRET1", "PSECRET2", "PSECRET3"];
    let results: Vec<Vec<u8>> = (0..3)
        .map(|i| result_by_identifier("ES1", &format!("R{i}"), patients[i], "4.271"))
        .chain([result_by_identifier("ES2", "R-ES2", "PSECRET9", "9.913")])
        .collect();
    let acks = send_all(h.sil(), &results).await.expect("ACKs");
    assert!(acks.iter().all(|a| msa(a).0 == "AA"), "{acks:?}");
    let unreadable = send_all(
        h.sil(),
        &[b"MSH|^~\\&|SIL|LAB|DPI||2025||ZZZ^Z99|U1|P|2.5\r".to_vec()],
    )
    .await
    .expect("NAK");
    assert_eq!(msa(&unreadable[0]).0, "AR");
    let dpi = h.server.addr("dpi").expect("dpi");
    let acks = send_all(dpi, &[order("ES1", "O1", "PL1", "PSECRET4")])
        .await
        .expect("ACK");
    assert_eq!(msa(&acks[0]).0, "AA");
    assert!(h.es1.wait_for(3, std::time::Duration::from_secs(10)).await);

    // The dead letter for ES2 and the waiting order show in the gauges.
    let mut text = String::new();
    for _ in 0..100 {
        let (status, t) = anonymous(&h, "/metrics").await;
        assert_eq!(status, 200, "{t}");
        text = t;
        let dead = sample(
            &text,
            "labroute_dead_letters_held",
            &[("destination", "dpi-es2")],
        );
        let age = sample(
            &text,
            "labroute_queue_oldest_age_seconds",
            &[("destination", "sil")],
        );
        let retried = sample(
            &text,
            "labroute_delivery_attempts_total",
            &[("destination", "sil"), ("outcome", "retry")],
        );
        if dead == Some(1.0) && age.is_some_and(|a| a > 0.0) && retried.is_some_and(|r| r >= 1.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let at_least = |name: &str, labels: &[(&str, &str)], min: f64| {
        let v = sample(&text, name, labels);
        assert!(
            v.is_some_and(|v| v >= min),
            "{name}{labels:?} = {v:?}, expected at least {min}:\n{text}"
        );
    };
    at_least(
        "labroute_messages_total",
        &[
            ("listener", "sil"),
            ("establishment", "ES1"),
            ("type", "ORU^R01"),
            ("outcome", "accepted"),
        ],
        3.0,
    );
    at_least(
        "labroute_messages_total",
        &[
            ("listener", "sil"),
            ("type", "other"),
            ("outcome", "rejected"),
        ],
        1.0,
    );
    at_least(
        "labroute_refusals_total",
        &[("listener", "sil"), ("reason", "unsupported_type")],
        1.0,
    );
    at_least(
        "labroute_delivery_attempts_total",
        &[("destination", "dpi-es1"), ("outcome", "delivered")],
        3.0,
    );
    at_least(
        "labroute_delivery_attempts_total",
        &[("destination", "dpi-es2"), ("outcome", "dead")],
        1.0,
    );
    at_least(
        "labroute_delivery_attempts_total",
        &[("destination", "sil"), ("outcome", "retry")],
        1.0,
    );
    at_least("labroute_queue_depth", &[("destination", "sil")], 1.0);
    at_least(
        "labroute_queue_oldest_age_seconds",
        &[("destination", "sil")],
        0.001,
    );
    assert_eq!(
        sample(&text, "labroute_queue_depth", &[("destination", "dpi-es1")]),
        Some(0.0),
        "{text}"
    );
    at_least(
        "labroute_dead_letters_held",
        &[("destination", "dpi-es2")],
        1.0,
    );
    assert_eq!(sample(&text, "labroute_quarantine_size", &[]), Some(0.0));
    // Real histograms: buckets, a count and a sum.
    at_least(
        "labroute_ack_latency_seconds_bucket",
        &[("listener", "sil"), ("le", "+Inf")],
        5.0,
    );
    at_least(
        "labroute_ack_latency_seconds_count",
        &[("listener", "sil")],
        5.0,
    );
    at_least(
        "labroute_delivery_latency_seconds_bucket",
        &[("destination", "dpi-es1"), ("le", "+Inf")],
        3.0,
    );
    at_least(
        "labroute_store_commit_seconds_bucket",
        &[("le", "+Inf")],
        1.0,
    );
    at_least("labroute_store_sync_seconds_bucket", &[("le", "+Inf")], 1.0);
    at_least("labroute_store_batch_size_bucket", &[("le", "1")], 0.0);
    assert!(
        !text.contains("quantile="),
        "histograms, not summaries:\n{text}"
    );
    // Every metric the dashboard and the alerting rules read is one this instance exports.
    let series: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for (file, names) in ops_metric_names() {
        for name in names {
            assert!(
                series.contains(name.as_str()),
                "{file} reads {name}, which the instance does not export:\n{text}"
            );
        }
    }
    // No patient data: no identifier, no result value.
    for secret in patients
        .iter()
        .chain(&["PSECRET4", "PSECRET9", "4.271", "9.913"])
    {
        assert!(!text.contains(secret), "{secret} in /metrics");
    }

    // Probes answer without a certificate; nothing else does.
    let (status, body) = anonymous(&h, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "{\"status\":\"alive\"}"));
    let (status, body) = anonymous(&h, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(ready["ready"], true, "{body}");
    let (status, body) = anonymous(&h, "/status").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("only /metrics, /healthz and /readyz"),
        "{body}"
    );

    // `labroute status`: queues, oldest ages and dead letters, per destination and per
    // establishment.
    let certs = dev_certs();
    let ops = admin_client(
        &h.server,
        &certs.join("ca.pem"),
        &certs.join("operator.pem"),
        &certs.join("operator.key"),
    );
    let status = ops
        .call(&labroute::admin::AdminRequest::Status)
        .await
        .expect("status");
    let dest = |name: &str| {
        status["destinations"]
            .as_array()
            .and_then(|d| d.iter().find(|x| x["destination"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {status}"))
    };
    assert!(dest("sil")["waiting"].as_u64() >= Some(1), "{status}");
    assert!(dest("sil")["oldest_waiting_secs"].is_u64(), "{status}");
    assert_eq!(dest("dpi-es2")["dead_letters"], 1, "{status}");
    assert_eq!(dest("dpi-es2")["establishment"], "ES2", "{status}");
    let es2 = status["establishments"]
        .as_array()
        .and_then(|e| e.iter().find(|x| x["establishment"] == "ES2"))
        .cloned()
        .expect("ES2");
    assert_eq!(es2["dead_letters"], 1, "{status}");
    assert_eq!(
        (&es2["record"], &es2["record_waiting"], &es2["quarantined"]),
        (&json!("dpi-es2"), &json!(0), &json!(0)),
        "{status}"
    );
}

/// Without `without_certificate`, a client with no certificate is refused at the
/// handshake, metrics included (the default).
#[tokio::test]
async fn metrics_need_a_certificate_unless_the_address_is_listed() {
    let h =
        Harness::start(|r| r + &dev_tls_section() + &admin_section("operator", &["ES1", "ES2"]))
            .await;
    let tls = client_tls(&dev_certs().join("ca.pem"), None).expect("client TLS");
    let c = https_client(h.server.admin.expect("admin"), tls);
    let r = c
        .send(Method::GET, "/metrics", "text/plain", Vec::new())
        .await;
    assert!(r.is_err(), "{:?}", r.map(|a| a.status));
}

/// The queue and dead-letter counts the gauges show are the store's: a restart finds them
/// as they were.
#[tokio::test]
async fn queue_counts_survive_a_restart() {
    let h = Harness::start_with([AckCode::AE, AckCode::AA, AckCode::AR], with_open_admin).await;
    send_all(
        h.sil(),
        &[
            result_by_identifier("ES2", "R1", "P1", "1"),
            result_by_identifier("ES2", "R2", "P2", "2"),
        ],
    )
    .await
    .expect("ACKs");
    let dpi = h.server.addr("dpi").expect("dpi");
    send_all(
        dpi,
        &[
            order("ES1", "O1", "PL1", "P3"),
            order("ES1", "O2", "PL2", "P4"),
        ],
    )
    .await
    .expect("ACKs");
    let store = h.server.store.clone();
    assert!(
        eventually(|| store.store().dead_letters().is_ok_and(|d| d.len() == 2)).await,
        "two dead letters"
    );
    drop(store);
    let Harness {
        server,
        dir,
        routes,
        ..
    } = h;
    server.shutdown().await;
    let cfg = labroute::config::Config::from_sources(&[("t.toml".into(), routes)]).expect("routes");
    let server =
        labroute::server::Server::start(std::sync::Arc::new(cfg), dir.path().to_path_buf())
            .await
            .expect("restarts");
    let counts = server.store.store().queue_counts().expect("counts");
    let of = |d: &str| {
        counts
            .iter()
            .find(|(n, ..)| n == d)
            .map(|(_, q, x)| (*q, *x))
            .unwrap_or_default()
    };
    assert_eq!(of("dpi-es2"), (0, 2), "{counts:?}");
    assert_eq!(of("sil"), (2, 0), "{counts:?}");
    server.shutdown().await;
}

/// A reload is validated whole first: a change only a restart can make, or routes whose own
/// test cases fail, is refused and the running routes stay; a good one is put in force.
#[tokio::test]
async fn a_reload_is_refused_unless_it_can_be_put_in_force_whole() {
    let h = Harness::start(|r| r).await;
    let parse = |text: &str| {
        labroute::config::Config::from_sources(&[("t.toml".into(), text.to_owned())])
            .expect("routes parse")
    };
    let moved = h.routes.replacen(
        "name = \"sil\"\nbind = \"127.0.0.1:0\"",
        "name = \"sil\"\nbind = \"127.0.0.1:1\"",
        1,
    );
    assert_ne!(moved, h.routes);
    let why = h
        .server
        .reload(Some(parse(&moved)))
        .await
        .expect_err("refused");
    assert!(
        why.contains("restart") && why.contains("[[listener]]"),
        "{why}"
    );
    let failing = h.routes.clone()
        + "[[test]]\nname = \"wrong on purpose\"\ninput = '''\nMSH|^~\\&|DPI|CHNORD|SIL|LAB|20250301080000||OML^O21^OML_O21|T1|P|2.5\nPID|||1^^^CHNORD-IPP^PI\nORC|NW|PL-1^DPI-CHNORD\nOBR|1|PL-1^DPI-CHNORD||GLU^Glucose^L\n'''\nexpect.establishment = \"ES2\"\n";
    let why = h
        .server
        .reload(Some(parse(&failing)))
        .await
        .expect_err("refused");
    assert!(why.contains("routing test case"), "{why}");
    // The running routes still route ES1's result to its record.
    let acks = send_all(h.sil(), &[result_by_identifier("ES1", "R1", "P1", "1")])
        .await
        .expect("ACK");
    assert_eq!(msa(&acks[0]).0, "AA");
    assert!(h.es1.wait_for(1, std::time::Duration::from_secs(10)).await);
    // A good reload (ES2 now also identified by another patient authority).
    let good = h.routes.replacen(
        "identify.patient_authorities = [\"CHSUD-IPP\"]",
        "identify.patient_authorities = [\"CHSUD-IPP\", \"CHSUD-NEW\"]",
        1,
    );
    assert_ne!(good, h.routes);
    let summary = h.server.reload(Some(parse(&good))).await.expect("reloaded");
    assert!(summary.starts_with("routes reloaded"), "{summary}");
    let m = result_by_identifier("ES2", "R2", "P2", "2");
    let m = String::from_utf8(m)
        .expect("text")
        .replacen("CHSUD-IPP", "CHSUD-NEW", 1);
    let acks = send_all(h.sil(), &[m.into_bytes()]).await.expect("ACK");
    assert_eq!(msa(&acks[0]).0, "AA");
    assert!(
        h.es2.wait_for(1, std::time::Duration::from_secs(10)).await,
        "routed by the new routes"
    );
}

/// A reload that moves one establishment's record leaves another establishment's messages
/// where they wait, even on a record destination both shared; the counts `/metrics` shows
/// stay those of the tables.
#[tokio::test]
async fn a_reload_moves_only_the_moved_establishments_queue() {
    // ES1 and ES2 share the record destination dpi-es1, which answers AE (messages wait).
    let h = Harness::start_with([AckCode::AA, AckCode::AE, AckCode::AA], |r| {
        r.replacen("record = \"dpi-es2\"", "record = \"dpi-es1\"", 1)
    })
    .await;
    let msgs = [
        result_by_identifier("ES1", "A1", "P1", "1"),
        result_by_identifier("ES2", "B1", "Q1", "2"),
        result_by_identifier("ES1", "A2", "P2", "3"),
        result_by_identifier("ES2", "B2", "Q2", "4"),
    ];
    let acks = send_all(h.sil(), &msgs).await.expect("ACKs");
    assert!(acks.iter().all(|a| msa(a).0 == "AA"));
    let store = h.server.store.store();
    let queued = |dest: &str| -> Vec<String> {
        store
            .outbox_after(dest, None, 100)
            .expect("outbox")
            .iter()
            .map(|(_, e)| {
                store
                    .record(e.seq)
                    .expect("record")
                    .expect("exists")
                    .control_id
            })
            .collect()
    };
    assert!(eventually(|| queued("dpi-es1").len() == 4).await);
    // ES1 moves to dpi-es2; ES2 stays on dpi-es1.
    let moved = h
        .routes
        .replacen("record = \"dpi-es1\"", "record = \"dpi-es2\"", 1);
    let cfg = labroute::config::Config::from_sources(&[("t.toml".into(), moved)]).expect("routes");
    assert_eq!(
        cfg.establishment_by_name("ES1")
            .map(|e| e.record.to_string()),
        Some("dpi-es2".into())
    );
    let summary = h.server.reload(Some(cfg)).await.expect("reloaded");
    assert!(summary.contains("2 queued message(s) moved"), "{summary}");
    assert!(h.es2.wait_for(2, std::time::Duration::from_secs(10)).await);
    assert_eq!(h.es2.control_ids(), ["A1", "A2"], "ES1's, in order");
    assert_eq!(queued("dpi-es1"), ["B1", "B2"], "ES2's stay");
    let counts = store.queue_counts().expect("counts");
    for dest in ["dpi-es1", "dpi-es2", "sil"] {
        let kept = counts
            .iter()
            .find(|(n, ..)| n == dest)
            .map_or(0, |(_, q, _)| *q);
        assert_eq!(
            kept,
            store.queue_stats(dest).expect("stats").0,
            "{dest}: {counts:?}"
        );
    }
}
