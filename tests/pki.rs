//! The development PKI: generated certificates verify with `openssl verify` (a tool nobody
//! here wrote), carry explicit validity dates and the system's SAN URI, and a certificate
//! from another CA does not verify against ours.

use std::process::Command;

use labroute::pki::{PkiSpec, generate, system_uri};
use labroute::time::now_ms;

fn spec(dir: &std::path::Path, ca_name: &str) -> PkiSpec {
    PkiSpec {
        out: dir.to_path_buf(),
        systems: vec!["sil".into(), "dpi-es1".into()],
        practitioners: vec!["10000000001".into()],
        server_names: vec!["localhost".into(), "127.0.0.1".into()],
        days: 30,
        now_ms: now_ms(),
        force: false,
        ca_name: ca_name.into(),
    }
}

fn openssl(args: &[&str]) -> (bool, String) {
    match Command::new("openssl").args(args).output() {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => panic!("openssl is needed (Debian package openssl): {e}"),
    }
}

#[test]
fn generated_certificates_verify_carry_dates_and_identity_and_refuse_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = generate(&spec(dir.path(), "test CA")).expect("generates");
    assert_eq!(files.len(), 10);
    let p = |f: &str| dir.path().join(f).display().to_string();
    for leaf in [
        "server.pem",
        "sil.pem",
        "dpi-es1.pem",
        "rpps-10000000001.pem",
    ] {
        let (ok, out) = openssl(&["verify", "-CAfile", &p("ca.pem"), &p(leaf)]);
        assert!(ok, "{leaf}: {out}");
    }
    let (_, text) = openssl(&[
        "x509",
        "-in",
        &p("dpi-es1.pem"),
        "-noout",
        "-dates",
        "-ext",
        "subjectAltName,extendedKeyUsage",
    ]);
    assert!(
        text.contains(&format!("URI:{}", system_uri("dpi-es1"))),
        "{text}"
    );
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    let year = |field: &str| {
        text.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().rev().nth(1))
            .and_then(|y| y.parse::<i64>().ok())
            .expect("a year")
    };
    let this_year = labroute::time::ymd(now_ms()).0;
    assert!(
        year("notBefore") >= this_year - 1 && year("notAfter") <= this_year + 1,
        "{text}"
    );

    let (_, server) = openssl(&[
        "x509",
        "-in",
        &p("server.pem"),
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    assert!(
        server.contains("DNS:localhost") && server.contains("IP Address:127.0.0.1"),
        "{server}"
    );

    // A practitioner's certificate names him by his RPPS, and is a client certificate only.
    let (_, practitioner) = openssl(&[
        "x509",
        "-in",
        &p("rpps-10000000001.pem"),
        "-noout",
        "-ext",
        "subjectAltName,extendedKeyUsage",
    ]);
    assert!(
        practitioner.contains("URI:urn:labroute:rpps:10000000001")
            && practitioner.contains("TLS Web Client Authentication")
            && !practitioner.contains("TLS Web Server Authentication"),
        "{practitioner}"
    );
    let der = labroute::tls::load_certs(&dir.path().join("rpps-10000000001.pem")).expect("PEM");
    let id = labroute::tls::identity(&der[0]).expect("identity");
    assert_eq!(
        labroute::access::practitioner(&id).as_deref(),
        Some("10000000001")
    );
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut bad = spec(scratch.path(), "test CA");
    bad.practitioners = vec!["1234".into()];
    assert!(
        generate(&bad)
            .expect_err("not an RPPS")
            .to_string()
            .contains("RPPS")
    );

    // Another CA's certificate does not verify against ours.
    let other = tempfile::tempdir().expect("tempdir");
    generate(&spec(other.path(), "foreign CA")).expect("generates");
    let foreign = other.path().join("sil.pem").display().to_string();
    let (ok, _) = openssl(&["verify", "-CAfile", &p("ca.pem"), &foreign]);
    assert!(!ok, "a foreign certificate verified");

    // An existing PKI is not overwritten by accident.
    let err = generate(&spec(dir.path(), "test CA")).expect_err("refuses");
    assert!(err.to_string().contains("--force"), "{err}");
}

#[test]
fn the_committed_development_pki_verifies() {
    let certs = concat!(env!("CARGO_MANIFEST_DIR"), "/certs");
    for leaf in ["server", "sil", "dpi-es1", "dpi-es2", "operator"] {
        let (ok, out) = openssl(&[
            "verify",
            "-CAfile",
            &format!("{certs}/ca.pem"),
            &format!("{certs}/{leaf}.pem"),
        ]);
        assert!(ok, "certs/{leaf}.pem: {out}");
    }
}
