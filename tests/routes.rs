//! The routing test cases carried by `routes/` pass (the same check `labroute validate` runs).

use std::path::Path;

use labroute::config::Config;
use labroute::router::tests_runner::run_all;

#[test]
fn shipped_routes_validate_and_their_test_cases_pass() {
    let cfg = Config::load(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("routes")
            .as_path(),
    )
    .unwrap_or_else(|e| panic!("routes/ does not validate:\n{e}"));
    assert!(
        cfg.tests.len() >= 8,
        "routes/ should carry its test cases, found {}",
        cfg.tests.len()
    );
    let failures = run_all(&cfg);
    assert!(
        failures.is_empty(),
        "{}",
        failures
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The README's first command on the embedded defaults: `serve` with routes/ and certs/
/// answers a result sent by the example lab system over TLS with its certificate, and
/// refuses the same client without one; its admin endpoint answers `labroute status` and
/// curl (an HTTPS client nobody here wrote) with the operator certificate, and neither
/// without one (this host may read only metrics and health without a certificate); its
/// FHIR endpoint answers curl with a DPI's certificate.
#[test]
fn the_default_run_serves_mllp_over_tls_with_the_development_pki() {
    if std::net::TcpListener::bind("127.0.0.1:2575").is_err() {
        eprintln!("SKIPPED: port 2575 is in use (an instance running here?)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = tempfile::tempdir().expect("tempdir");
    let bin = env!("CARGO_BIN_EXE_labroute");
    let mut serve = std::process::Command::new(bin)
        .current_dir(root)
        .args(["serve", "--data"])
        .arg(data.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("serve starts");
    let mut up = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect("127.0.0.1:2575").is_ok()
            && std::net::TcpStream::connect("127.0.0.1:2580").is_ok()
            && std::net::TcpStream::connect("127.0.0.1:2581").is_ok()
        {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let msg = data.path().join("result.hl7");
    std::fs::write(
        &msg,
        "MSH|^~\\&|SIL|LAB|DPI||20250301100000||ORU^R01^ORU_R01|README-1|P|2.5\rPID|||100001^^^CHNORD-IPP^PI\rORC|RE|||||||||||10000000001^DOC^A^^^^^^^^^^RPPS\rOBR|1|||K^Potassium^L|||20250301093000\rOBX|1|NM|K^Potassium^L||4.1|mmol/L|||||F\r",
    )
    .expect("write");
    let send = |tls: bool| {
        let mut c = std::process::Command::new(bin);
        c.current_dir(root)
            .arg("send")
            .arg(&msg)
            .args(["--to", "127.0.0.1:2575"]);
        if tls {
            c.args([
                "--cert",
                "certs/sil.pem",
                "--key",
                "certs/sil.key",
                "--ca",
                "certs/ca.pem",
            ]);
        }
        c.output().expect("send runs")
    };
    let with_cert = send(true);
    let without = send(false);
    let status = |cert: bool| {
        let mut c = std::process::Command::new(bin);
        c.current_dir(root)
            .arg("status")
            .arg("--data")
            .arg(data.path())
            .env_remove("LABROUTE_CERT")
            .env_remove("LABROUTE_KEY");
        if cert {
            c.env("LABROUTE_CERT", "certs/operator.pem")
                .env("LABROUTE_KEY", "certs/operator.key");
        }
        c.output().expect("status runs")
    };
    let status_ok = status(true);
    let status_no_cert = status(false);
    let curl = |system: Option<&str>, url: &str| {
        let mut c = std::process::Command::new("curl");
        c.current_dir(root)
            .args(["-sS", "--max-time", "10", "--cacert", "certs/ca.pem"]);
        if let Some(s) = system {
            c.arg("--cert")
                .arg(format!("certs/{s}.pem"))
                .arg("--key")
                .arg(format!("certs/{s}.key"));
        }
        c.arg(url).output()
    };
    let curl_ok = curl(Some("operator"), "https://127.0.0.1:2580/status");
    // The defaults let this host read metrics and health without a certificate
    // (`without_certificate`), nothing else.
    let curl_no_cert = std::process::Command::new("curl")
        .current_dir(root)
        .args(["-sS", "--max-time", "10", "--cacert", "certs/ca.pem"])
        .args(["-w", "\n%{http_code}", "https://127.0.0.1:2580/status"])
        .output();
    let curl_health = curl(None, "https://127.0.0.1:2580/healthz");
    let curl_fhir = curl(Some("dpi-es1"), "https://127.0.0.1:2581/metadata");
    // The README's FHIR example, as written there.
    let curl_order = std::process::Command::new("curl")
        .current_dir(root)
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--cacert",
            "certs/ca.pem",
        ])
        .args(["--cert", "certs/dpi-es1.pem", "--key", "certs/dpi-es1.key"])
        .args(["-H", "Content-Type: application/fhir+json"])
        .args(["--data-binary", "@tests/fixtures/fhir/order_bundle.json"])
        .arg("https://127.0.0.1:2581/")
        .output();
    // The README's results search, as written there (a patient with no result), and the
    // same search for the result sent above, which names that practitioner (ORC-12).
    let search = |query: &str| {
        std::process::Command::new("curl")
            .current_dir(root)
            .args(["-sS", "--max-time", "10", "--cacert", "certs/ca.pem"])
            .args([
                "--cert",
                "certs/rpps-10000000001.pem",
                "--key",
                "certs/rpps-10000000001.key",
            ])
            .arg(format!("https://127.0.0.1:2581/DiagnosticReport?{query}"))
            .output()
    };
    let curl_search = search("patient.identifier=123456&date=ge2025-01-01");
    let curl_found = search("patient.identifier=100001&date=ge2025-01-01");
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(up, "serve did not listen on 127.0.0.1:2575");
    let out = String::from_utf8_lossy(&with_cert.stdout);
    assert!(
        with_cert.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&with_cert.stderr)
    );
    assert!(out.contains("MSA|AA|README-1"), "{out}");
    assert!(
        !without.status.success(),
        "plain TCP to the TLS listener was answered"
    );

    let out = String::from_utf8_lossy(&status_ok.stdout);
    assert!(
        status_ok.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&status_ok.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("status is JSON");
    assert_eq!(v["operator"], "operator", "{v}");
    assert_eq!(v["since_start"]["messages_accepted"], 1, "{v}");
    let err = String::from_utf8_lossy(&status_no_cert.stderr);
    assert!(!status_no_cert.status.success());
    assert!(err.contains("--cert"), "{err}");
    match (
        curl_ok,
        curl_no_cert,
        curl_fhir,
        curl_order,
        curl_search,
        curl_found,
    ) {
        (Ok(ok), Ok(no), Ok(fhir), Ok(order), Ok(search), Ok(found)) => {
            for (answer, total) in [(search, 0), (found, 1)] {
                let body = String::from_utf8_lossy(&answer.stdout);
                let v: serde_json::Value = serde_json::from_str(&body).expect("a searchset");
                assert_eq!(
                    (&v["type"], &v["total"]),
                    (&serde_json::json!("searchset"), &serde_json::json!(total)),
                    "{v}"
                );
            }
            let text = String::from_utf8_lossy(&order.stdout);
            assert!(
                text.ends_with("\n201") && text.contains("for ES1"),
                "the README's FHIR order: {text}"
            );
            let body = String::from_utf8_lossy(&fhir.stdout);
            assert!(fhir.status.success(), "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("curl gets JSON");
            assert_eq!(v["resourceType"], "CapabilityStatement", "{v}");
            let body = String::from_utf8_lossy(&ok.stdout);
            assert!(ok.status.success(), "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("curl gets JSON");
            assert_eq!(v["operator"], "operator");
            let text = String::from_utf8_lossy(&no.stdout);
            assert!(
                text.ends_with("\n403") && text.contains("only /metrics, /healthz and /readyz"),
                "curl without a certificate: {text}"
            );
            let health = curl_health.expect("curl runs");
            assert_eq!(
                String::from_utf8_lossy(&health.stdout),
                "{\"status\":\"alive\"}"
            );
        }
        _ => eprintln!("SKIPPED (curl part): curl is not installed (.ci/run installs it)"),
    }
}

/// `labroute fhir` reads times without a zone in the routes' `[fhir] zone` unless `--zone`
/// says otherwise (Europe/Paris when the routes do not load).
#[test]
fn the_fhir_command_takes_its_zone_from_the_routes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = env!("CARGO_BIN_EXE_labroute");
    let fixture = root.join("tests/fixtures/fhir/oru_bio_fr.hl7");
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = std::fs::read_to_string(root.join("routes/gcs.toml"))
        .expect("shipped routes")
        .replace("zone = \"Europe/Paris\"", "zone = \"UTC\"");
    assert!(
        routes.contains("zone = \"UTC\""),
        "the shipped routes have [fhir]"
    );
    // The shipped routes name the development PKI as ../certs: the copy sits beside a link
    // to it.
    std::fs::create_dir(dir.path().join("routes")).expect("mkdir");
    std::fs::write(dir.path().join("routes/gcs.toml"), routes).expect("write");
    std::os::unix::fs::symlink(root.join("certs"), dir.path().join("certs")).expect("link");
    let routes = dir.path().join("routes");
    let effective = |args: &[&str], routes: &Path| -> String {
        let out = std::process::Command::new(bin)
            .arg("fhir")
            .arg(&fixture)
            .arg("--routes")
            .arg(routes)
            .args(args)
            .arg("--compact")
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf8");
        let at = text
            .find("\"effectiveDateTime\":\"")
            .expect("effectiveDateTime")
            + 21;
        text[at..].split('"').next().unwrap_or_default().to_owned()
    };
    assert_eq!(effective(&[], &routes), "2025-03-14T08:15:00Z");
    assert_eq!(
        effective(&["--zone", "+04:00"], &routes),
        "2025-03-14T08:15:00+04:00"
    );
    assert_eq!(
        effective(&[], &dir.path().join("missing")),
        "2025-03-14T08:15:00+01:00"
    );
}
