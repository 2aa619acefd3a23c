//! Development PKI: a CA, the instance's server certificate and one client certificate per
//! system, with explicit validity dates. For development and tests only: production plugs in
//! certificates from a real PKI (the French health PKI, IGC-Santé) in the same files.
//!
//! A system's identity is the SAN URI `urn:labroute:system:<name>` of its certificate; a
//! practitioner's, the SAN URI `urn:labroute:rpps:<RPPS>`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// The SAN URI that names a system.
pub fn system_uri(name: &str) -> String {
    format!("urn:labroute:system:{name}")
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct PkiSpec {
    pub out: PathBuf,
    /// One client certificate each (`<name>.pem`, `<name>.key`).
    pub systems: Vec<String>,
    /// Practitioners, by RPPS: one client certificate each (`rpps-<RPPS>.pem`, `.key`), the
    /// SAN URI `urn:labroute:rpps:<RPPS>` (`access::practitioner`).
    pub practitioners: Vec<String>,
    /// DNS names and IP addresses of the server certificate.
    pub server_names: Vec<String>,
    /// Leaf validity in days from yesterday (the CA gets ten times as long).
    pub days: u32,
    /// Unix time in milliseconds the dates are computed from.
    pub now_ms: u64,
    /// Replace existing files.
    pub force: bool,
    /// Common name of the CA (tests make a second, foreign CA).
    pub ca_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0} already exists: pass --force to replace the development PKI")]
    Exists(PathBuf),
    #[error("writing {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0:?} is not a valid system name (letters, digits, '-', '_', '.')")]
    BadName(String),
    #[error("{0:?} is not an RPPS number (11 digits)")]
    BadRpps(String),
}

fn ymd(ms: u64) -> (i32, u8, u8) {
    let (y, m, d) = crate::time::ymd(ms);
    (y as i32, m as u8, d as u8)
}

fn serial(seed: &str, now_ms: u64) -> SerialNumber {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(seed.as_bytes());
    h.update(now_ms.to_be_bytes());
    let mut b = h.finalize()[..16].to_vec();
    b[0] &= 0x7f; // positive
    SerialNumber::from(b)
}

fn params(spec: &PkiSpec, cn: &str, days: u32) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    let day = 86_400_000u64;
    let (y, m, d) = ymd(spec.now_ms.saturating_sub(day));
    p.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd(spec.now_ms + u64::from(days) * day);
    p.not_after = rcgen::date_time_ymd(y, m, d);
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::OrganizationName,
        "labroute development PKI (not for production)",
    );
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.serial_number = Some(serial(cn, spec.now_ms));
    Ok(p)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Generates the PKI; returns the files written.
pub fn generate(spec: &PkiSpec) -> Result<Vec<PathBuf>, PkiError> {
    for s in &spec.systems {
        if !valid_name(s) || s == "ca" || s == "server" {
            return Err(PkiError::BadName(s.clone()));
        }
    }
    if let Some(r) = spec
        .practitioners
        .iter()
        .find(|r| !crate::access::is_rpps(r))
    {
        return Err(PkiError::BadRpps(r.clone()));
    }
    let ca_file = spec.out.join("ca.pem");
    if ca_file.exists() && !spec.force {
        return Err(PkiError::Exists(ca_file));
    }
    std::fs::create_dir_all(&spec.out).map_err(|e| PkiError::Write(spec.out.clone(), e))?;
    let mut written = Vec::new();
    let mut write = |name: String, text: String| -> Result<(), PkiError> {
        let path = spec.out.join(name);
        std::fs::write(&path, text).map_err(|e| PkiError::Write(path.clone(), e))?;
        written.push(path);
        Ok(())
    };

    let ca_key = KeyPair::generate()?;
    let mut ca = params(spec, &spec.ca_name, spec.days.saturating_mul(10))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    write("ca.pem".into(), ca_cert.pem())?;
    write("ca.key".into(), ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |cn: &str,
                sans: Vec<SanType>,
                eku: &[ExtendedKeyUsagePurpose]|
     -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut p = params(spec, cn, spec.days)?;
        p.subject_alt_names = sans;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = eku.to_vec();
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };

    let mut sans = vec![SanType::URI("urn:labroute:instance".try_into()?)];
    for n in &spec.server_names {
        sans.push(match n.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(n.as_str().try_into()?),
        });
    }
    // The instance is a TLS server to its peers and a TLS client to its destinations.
    let (cert, key) = leaf(
        "labroute",
        sans,
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    write("server.pem".into(), cert)?;
    write("server.key".into(), key)?;
    // A system's certificate is its identity both ways: as a client (a DPI sending orders)
    // and as a server (the same DPI receiving results), so it also carries the host names.
    for s in &spec.systems {
        let mut sans = vec![SanType::URI(system_uri(s).try_into()?)];
        for n in &spec.server_names {
            sans.push(match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.as_str().try_into()?),
            });
        }
        let (cert, key) = leaf(
            s,
            sans,
            &[
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ],
        )?;
        write(format!("{s}.pem"), cert)?;
        write(format!("{s}.key"), key)?;
    }
    // A practitioner is a person at a workstation: a client only.
    for r in &spec.practitioners {
        let sans = vec![SanType::URI(
            crate::access::practitioner_uri(r).as_str().try_into()?,
        )];
        let (cert, key) = leaf(
            &format!("RPPS {r}"),
            sans,
            &[ExtendedKeyUsagePurpose::ClientAuth],
        )?;
        write(format!("rpps-{r}.pem"), cert)?;
        write(format!("rpps-{r}.key"), key)?;
    }
    Ok(written)
}

/// Whether a directory holds a generated PKI.
pub fn exists(dir: &Path) -> bool {
    dir.join("ca.pem").is_file()
}
