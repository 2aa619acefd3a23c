//! TLS with rustls (ring provider): the server side of listeners (client certificate
//! required) and a peer's identity from its certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// Lowest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    Tls12,
    Tls13,
}

/// The instance's TLS material (paths resolved).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub min_version: MinVersion,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}: cannot read certificates: {1}")]
    Certs(PathBuf, String),
    #[error("{0}: no certificate in the file")]
    NoCert(PathBuf),
    #[error("{0}: cannot read the private key: {1}")]
    Key(PathBuf, String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static TLS13_AND_12: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

fn versions(min: MinVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    match min {
        MinVersion::Tls13 => &TLS13_ONLY,
        MinVersion::Tls12 => &TLS13_AND_12,
    }
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Certs(path.to_owned(), e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certs(path.to_owned(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(path.to_owned()));
    }
    Ok(certs)
}

/// Reads a PEM private key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key(path.to_owned(), e.to_string()))
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| TlsError::Certs(ca.to_owned(), e.to_string()))?;
    }
    Ok(Arc::new(roots))
}

/// Server configuration for MLLP/TLS listeners: a client certificate issued by `ca` is
/// required.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(files, false)
}

/// [`server_config`] where a client may present no certificate.
fn server_config_open(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(files, true)
}

fn server_config_with(files: &TlsFiles, open: bool) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider());
    let builder = if open {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    let verifier = builder
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(files.min_version))
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// Client configuration for destinations: trusts `ca`, presents the instance's certificate.
pub fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(files.min_version))
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// Who a peer is, from its (verified) certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerIdentity {
    /// SAN URIs.
    pub uris: Vec<String>,
    /// SAN DNS names.
    pub dns: Vec<String>,
    /// SHA-256 of the certificate (DER), lower-case hex.
    pub sha256: String,
}

impl PeerIdentity {
    /// A peer that presented no certificate (allowed only where `TlsListener::open_to`
    /// says so, and only for metrics and health).
    pub fn anonymous() -> PeerIdentity {
        PeerIdentity {
            uris: Vec::new(),
            dns: Vec::new(),
            sha256: String::new(),
        }
    }

    /// Whether this is [`PeerIdentity::anonymous`].
    pub fn is_anonymous(&self) -> bool {
        self.sha256.is_empty()
    }

    /// A short label for logs and records (the first URI, else DNS name, else fingerprint).
    pub fn label(&self) -> String {
        self.uris
            .first()
            .or(self.dns.first())
            .cloned()
            .unwrap_or_else(|| {
                if self.is_anonymous() {
                    "no certificate".to_owned()
                } else {
                    format!("sha256:{}", self.sha256)
                }
            })
    }
}

/// Reads the identity of a peer certificate. `None` if it is not a readable X.509
/// certificate (a verified chain always is).
pub fn identity(cert: &CertificateDer<'_>) -> Option<PeerIdentity> {
    use x509_parser::prelude::*;
    let (_, x) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let mut id = PeerIdentity {
        uris: Vec::new(),
        dns: Vec::new(),
        sha256: crate::model::sha256_hex(cert.as_ref()),
    };
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => id.uris.push((*u).to_owned()),
                GeneralName::DNSName(d) => id.dns.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    Some(id)
}

/// The instance's signing key and the SHA-256 of its certificate (seals of the audit
/// journal).
pub struct InstanceKey {
    pub key: Arc<dyn rustls::sign::SigningKey>,
    pub cert_sha256: String,
}

impl InstanceKey {
    pub fn load(files: &TlsFiles) -> Result<InstanceKey, TlsError> {
        let key = rustls::crypto::ring::sign::any_supported_type(&load_key(&files.key)?)
            .map_err(|e| TlsError::Key(files.key.clone(), e.to_string()))?;
        let certs = load_certs(&files.cert)?;
        let first = certs
            .first()
            .ok_or_else(|| TlsError::NoCert(files.cert.clone()))?;
        Ok(InstanceKey {
            key,
            cert_sha256: crate::model::sha256_hex(first.as_ref()),
        })
    }
}

/// The instance's TLS configurations and signing key, reloadable without a restart (SIGHUP,
/// admin call): new connections and new seals use what was loaded last; open connections
/// keep theirs. A reload swaps everything at once.
pub struct TlsState {
    files: TlsFiles,
    current: std::sync::RwLock<Arc<Loaded>>,
}

/// What one read of the `[tls]` files gives.
struct Loaded {
    server: Arc<ServerConfig>,
    server_open: Arc<ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    not_after: Option<i64>,
    instance_key: Arc<InstanceKey>,
}

impl Loaded {
    fn read(files: &TlsFiles) -> Result<Loaded, TlsError> {
        Ok(Loaded {
            server: server_config(files)?,
            server_open: server_config_open(files)?,
            client: client_config(files)?,
            not_after: not_after(&files.cert),
            instance_key: Arc::new(InstanceKey::load(files)?),
        })
    }
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsState({})", self.files.cert.display())
    }
}

/// Expiry (Unix seconds) of the first certificate of a PEM file.
pub fn not_after(path: &Path) -> Option<i64> {
    use x509_parser::prelude::*;
    let certs = load_certs(path).ok()?;
    let (_, x) = X509Certificate::from_der(certs.first()?.as_ref()).ok()?;
    Some(x.validity().not_after.timestamp())
}

impl TlsState {
    pub fn load(files: &TlsFiles) -> Result<Arc<TlsState>, TlsError> {
        let loaded = Loaded::read(files)?;
        crate::telemetry::set_cert_expiry(loaded.not_after);
        Ok(Arc::new(TlsState {
            files: files.clone(),
            current: std::sync::RwLock::new(Arc::new(loaded)),
        }))
    }

    fn current(&self) -> Arc<Loaded> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The signing key loaded last.
    pub fn instance_key(&self) -> Arc<InstanceKey> {
        self.current().instance_key.clone()
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current().server.clone())
    }

    /// An acceptor for which a client certificate is optional (one given is verified as
    /// always): for the admin endpoint's peers allowed to read metrics and health without
    /// one (`[admin] without_certificate`).
    pub fn acceptor_open(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current().server_open.clone())
    }

    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.current().client.clone())
    }

    /// Expiry of the instance certificate (Unix seconds).
    pub fn cert_not_after(&self) -> Option<i64> {
        self.current().not_after
    }

    /// Reads the files again. On any error the running configuration is kept.
    pub fn reload(&self) -> Result<Option<i64>, TlsError> {
        let loaded = Arc::new(Loaded::read(&self.files)?);
        let expiry = loaded.not_after;
        match self.current.write() {
            Ok(mut g) => *g = loaded,
            Err(p) => *p.into_inner() = loaded,
        }
        crate::telemetry::set_cert_expiry(expiry);
        Ok(expiry)
    }
}
