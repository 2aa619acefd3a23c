//! A real Prometheus (Debian package `prometheus`, which `.ci/run` installs) scrapes a
//! running instance's `/metrics` over HTTPS with a `monitor` system's client certificate,
//! loads `ops/prometheus/alerts.yml`, and its PromQL answers the counts the test's traffic
//! implies. In a test binary of its own: the metrics recorder is per process.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use labroute::hl7::ack::AckCode;
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The Prometheus server, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &Path, admin: std::net::SocketAddr, pki: &Path) -> Prometheus {
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/prometheus/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: labroute\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n      cert_file: {cert}\n      key_file: {key}\n      server_name: localhost\n    static_configs:\n      - targets: ['{admin}']\n",
            rules = rules.display(),
            ca = pki.join("ca.pem").display(),
            cert = pki.join("prometheus.pem").display(),
            key = pki.join("prometheus.key").display(),
        );
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).expect("config");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        Prometheus { child, port }
    }

    /// GET `path` on Prometheus's HTTP API; the JSON answer.
    async fn get(&self, path: &str) -> Option<Json> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out);
        let (_, body) = text.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    }

    /// The value of an instant PromQL query that returns one sample.
    async fn scalar(&self, query: &str) -> Option<f64> {
        let v = self
            .get(&format!(
                "/api/v1/query?query={}",
                labroute::model::percent_encode(query)
            ))
            .await?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits (at most 60 s: Prometheus starts, then scrapes every second) until `query`
    /// answers `want`; the last answer.
    async fn until(&self, query: &str, want: f64) -> Option<f64> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.scalar(query).await;
            if got == Some(want) || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test]
async fn prometheus_scrapes_the_instance_and_its_queries_count_the_traffic() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        // CI installs it: missing there is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "prometheus missing in CI (.ci/run installs the Debian package)"
        );
        eprintln!("SKIPPED: prometheus not found (Debian package prometheus; .ci/run installs it)");
        return;
    }
    let pki = pki_dir("prometheus test CA", &["prometheus", "operator"]);
    let p = pki.path().to_path_buf();
    // ES2's record answers AR: its results become dead letters.
    let h = Harness::start_with([AckCode::AA, AckCode::AA, AckCode::AR], move |r| {
        r + &tls_section(
            &p.join("ca.pem"),
            &p.join("server.pem"),
            &p.join("server.key"),
        ) + &admin_section("operator", &["ES1", "ES2"])
            + &system_toml("prometheus", "monitor", &[])
    })
    .await;
    let mut msgs: Vec<Vec<u8>> = (0..4)
        .map(|i| result_by_identifier("ES1", &format!("R{i}"), &format!("P{i}"), "4.2"))
        .collect();
    msgs.push(result_by_identifier("ES2", "R-ES2-1", "Q1", "1"));
    msgs.push(result_by_identifier("ES2", "R-ES2-2", "Q2", "2"));
    msgs.push(b"MSH|^~\\&|SIL|LAB|DPI||2025||ZZZ^Z99|U1|P|2.5\r".to_vec());
    let acks = send_all(h.sil(), &msgs).await.expect("ACKs");
    assert_eq!(acks.len(), 7);
    assert!(h.es1.wait_for(4, Duration::from_secs(10)).await);

    let dir = tempfile::tempdir().expect("tempdir");
    let prom = Prometheus::start(dir.path(), h.server.admin.expect("admin"), pki.path());
    assert_eq!(prom.until(r#"up{job="labroute"}"#, 1.0).await, Some(1.0));
    for (query, want) in [
        (
            r#"sum(labroute_messages_total{listener="sil",establishment="ES1",type="ORU^R01",outcome="accepted"})"#,
            4.0,
        ),
        (
            r#"sum(labroute_messages_total{establishment="ES2",outcome="accepted"})"#,
            2.0,
        ),
        (
            r#"sum(labroute_refusals_total{reason="unsupported_type"})"#,
            1.0,
        ),
        (
            r#"sum(labroute_delivery_attempts_total{destination="dpi-es1",outcome="delivered"})"#,
            4.0,
        ),
        (r#"labroute_dead_letters_held{destination="dpi-es2"}"#, 2.0),
        (r#"labroute_queue_depth{destination="dpi-es1"}"#, 0.0),
        (
            r#"sum(labroute_refusals_total{reason="cross_tenant"})"#,
            0.0,
        ),
        // Every ACK measured, in a real histogram.
        (
            r#"sum(labroute_ack_latency_seconds_count{listener="sil"})"#,
            7.0,
        ),
        (
            r#"sum(labroute_ack_latency_seconds_bucket{listener="sil",le="+Inf"})"#,
            7.0,
        ),
    ] {
        assert_eq!(prom.until(query, want).await, Some(want), "{query}");
    }
    // The alerting rules loaded and evaluate without error.
    let rules = prom.get("/api/v1/rules").await.expect("rules");
    let group = &rules["data"]["groups"][0];
    assert_eq!(group["name"], "labroute", "{rules}");
    let loaded: Vec<&Json> = group["rules"].as_array().expect("rules").iter().collect();
    assert_eq!(loaded.len(), 7, "{rules}");
    for r in loaded {
        assert_eq!(r["health"], "ok", "{r}");
    }
}
