//! Routing configuration: `routes/*.toml` parsed into raw types (`raw`), then validated into
//! the typed `Config` below. Validation is pure and reports **every** error at once, each with
//! its file, line and field.

pub mod raw;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::model::{DestinationName, EstablishmentId, ListenerName};
use raw::*;

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0: about the whole file or configuration, no place in it.
        if self.line == 0 {
            return write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.field,
                self.message
            );
        }
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.field,
            self.message
        )
    }
}

/// Every problem found in a configuration.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} configuration error(s):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Where accepted messages are kept (`[store]`, DECISIONS D23).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreKind {
    /// The embedded store alone (one machine).
    #[default]
    Embedded,
    /// The embedded store with a write-ahead log in front (`write_ahead_log = true`, D28).
    EmbeddedWal,
    /// Every change goes through a JetStream stream first; each node applies the stream, in
    /// its order, to its own embedded store.
    JetStream(JetStreamStore),
}

/// The JetStream log (`[store] kind = "jetstream"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamStore {
    /// `tls://…` or `nats://127.0.0.1:…` (loopback only).
    pub servers: Vec<String>,
    pub stream: String,
    pub replicas: usize,
    /// This node's name: the prefix of its requests' ids.
    pub node: String,
    /// How long a node that stopped saying how far it applied the log holds the log's
    /// entries back (D25).
    pub forget_node_after: Duration,
}

/// Engine-wide limits.
#[derive(Debug, Clone)]
pub struct Engine {
    pub max_frame_bytes: usize,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Connections one peer address may hold at once (a host opening connections and
    /// sending nothing cannot take every slot).
    pub max_connections_per_peer: usize,
    /// Longest a frame may take to arrive once begun (a start byte with no end, sent a byte
    /// at a time, does not hold a connection for ever).
    pub frame_timeout: Duration,
    pub group_commit_max: usize,
    pub audit_seal_every: u64,
    /// Shutdown (SIGTERM): the longest in-flight work may take (connections answered,
    /// deliveries recorded, the store synced) before the process exits anyway.
    pub drain: Duration,
}

impl Default for Engine {
    fn default() -> Self {
        Engine {
            // The French CDA-in-HL7 examples reach 820 KB; a CDA with images can be several MB.
            max_frame_bytes: 16 * 1024 * 1024,
            idle_timeout: Duration::from_secs(300),
            max_connections: 256,
            max_connections_per_peer: 64,
            // A 16 MB frame at 2 Mbit/s.
            frame_timeout: Duration::from_secs(120),
            group_commit_max: 512,
            audit_seal_every: 1000,
            drain: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: ListenerName,
    pub bind: SocketAddr,
    pub insecure: bool,
    /// Where the application ACKs (MSH-16) of messages received here go.
    pub application_acks_to: Option<DestinationName>,
}

/// The name of the DMP feed's destination (`[dmp]`): its outbox, retries and dead letters.
pub const DMP_DESTINATION: &str = "dmp";

/// How a destination is reached.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DestinationKind {
    /// HL7 v2 over MLLP (TCP or TLS).
    #[default]
    Mllp,
    /// The DMP: IHE MHD ITI-65 over HTTPS, POSTed to `path`, each establishment with its own
    /// client certificate; `ca` verifies the server (default `[tls].ca`).
    Dmp { path: String, ca: Option<PathBuf> },
    /// MSSanté: SMTP over TLS (implicit, or STARTTLS required), each establishment with its
    /// own client certificate; `ca` verifies the server (default `[tls].ca`).
    Mssante {
        starttls: bool,
        ca: Option<PathBuf>,
        subject: String,
        body: String,
    },
}

#[derive(Debug, Clone)]
pub struct Destination {
    pub name: DestinationName,
    pub kind: DestinationKind,
    pub address: String,
    pub connect_timeout: Duration,
    pub ack_timeout: Duration,
    pub max_attempts: u32,
    pub max_age: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// false: close after each ACK and open a new connection for the next message.
    pub keep_connection_open: bool,
    /// TLS with the instance's certificate as client certificate.
    pub tls: bool,
    /// Name the destination's certificate must carry.
    pub server_name: Option<String>,
    /// The system the destination's certificate must name.
    pub system: Option<String>,
}

/// The admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub bind: SocketAddr,
    /// Peers that may read `/metrics`, `/healthz` and `/readyz` without a client
    /// certificate; every other path, and every other peer, needs one.
    pub without_certificate: Vec<std::net::IpAddr>,
}

/// The FHIR endpoint and mapping settings (`[fhir]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fhir {
    /// Where the HTTPS FHIR endpoint listens; `None`: no endpoint.
    pub bind: Option<SocketAddr>,
    /// Zone of HL7 times that carry none.
    pub zone: crate::fhir::Zone,
}

/// Listener names the journal gives the HTTPS endpoints (a `[[listener]]` may not take them).
pub const RESERVED_LISTENER_NAMES: [&str; 2] = ["admin", "fhir"];

/// What a peer system does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// A DPI: sends orders and patient administration.
    OrderPlacer,
    /// The lab system or a middleware: sends results and documents.
    ResultProducer,
    /// A person at the admin endpoint: sends no messages.
    Operator,
    /// A metrics scraper (Prometheus): may read `/metrics` on the admin endpoint, nothing else.
    Monitor,
    /// A system that only receives (a results interface of a DPI): sends no messages.
    RecordReceiver,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::OrderPlacer => "order_placer",
            Role::ResultProducer => "result_producer",
            Role::Operator => "operator",
            Role::Monitor => "monitor",
            Role::RecordReceiver => "record_receiver",
        }
    }
    /// Whether a system in this role may send a message of this class.
    pub fn may_send(self, class: crate::model::MessageClass) -> bool {
        use crate::model::MessageClass as C;
        match self {
            Role::OrderPlacer => matches!(class, C::Order | C::Admin),
            Role::ResultProducer => matches!(class, C::Result | C::Document),
            Role::Operator | Role::Monitor | Role::RecordReceiver => false,
        }
    }
}

/// A peer system and what it may speak for.
#[derive(Debug, Clone)]
pub struct System {
    pub name: String,
    pub role: Role,
    pub san_uris: Vec<String>,
    pub san_dns: Vec<String>,
    /// Lower-case hex, no colons.
    pub sha256: Vec<String>,
    pub establishments: Vec<EstablishmentId>,
}

impl System {
    pub fn matches(&self, id: &crate::tls::PeerIdentity) -> bool {
        id.uris.iter().any(|u| self.san_uris.contains(u))
            || id.dns.iter().any(|d| self.san_dns.contains(d))
            || self.sha256.contains(&id.sha256)
    }
    pub fn speaks_for(&self, e: &EstablishmentId) -> bool {
        self.establishments.contains(e)
    }
}

/// The identifiers' hash (D27): the tenant decision looks up about ten values a message, and
/// those lookups were about 40 % of its time in a profile, most of it SipHash (the
/// standard hash, twice per lookup). foldhash is already built for hashbrown and
/// serde_json. Its keys are the configured identifiers only (a message's values are looked
/// up, never inserted), so a sender cannot fill the table with colliding keys: the flooding
/// SipHash guards against cannot happen.
pub type IdHash = foldhash::fast::RandomState;

/// Which configured identifier a value matched.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum IdKind {
    SendingFacility,
    PlacerNamespace,
    PatientAuthority,
    VisitAuthority,
    Facility,
    Finess,
}

impl IdKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdKind::SendingFacility => "sending_facilities",
            IdKind::PlacerNamespace => "placer_namespaces",
            IdKind::PatientAuthority => "patient_authorities",
            IdKind::VisitAuthority => "visit_authorities",
            IdKind::Facility => "facilities",
            IdKind::Finess => "finess",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Establishment {
    pub id: EstablishmentId,
    pub name: String,
    pub finess: Vec<String>,
    pub record: DestinationName,
    /// Its DMP feed (enabled when set): the client certificate it publishes with.
    pub dmp: Option<EstablishmentDmp>,
    /// Whether practitioners from outside who take part in a patient's care may read that
    /// patient's results (`access`).
    pub external_access: bool,
    /// Mails results by MSSanté.
    pub mssante: Option<EstablishmentMssante>,
}

/// An establishment's MSSanté sending.
#[derive(Debug, Clone)]
pub struct EstablishmentMssante {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `From` (normalised).
    pub from: String,
    /// Standing recipients (RPPS or addresses), as written.
    pub recipients: Vec<String>,
}

/// An establishment's DMP client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EstablishmentDmp {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct Routing {
    pub orders_to: Vec<DestinationName>,
    pub adt_to: Vec<DestinationName>,
}

/// Expected outcome of a routing test case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Establishment(EstablishmentId),
    Quarantine(String),
    Rejected(u16),
}

/// A routing test case carried by a routes file.
#[derive(Debug, Clone)]
pub struct RouteTest {
    pub name: String,
    pub file: PathBuf,
    pub line: usize,
    pub before: Vec<Vec<u8>>,
    pub input: Vec<u8>,
    pub expected: Expected,
    pub destinations: Option<Vec<DestinationName>>,
}

/// The validated configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub engine: Engine,
    /// `[store]`: where accepted messages are kept.
    pub store: StoreKind,
    pub listeners: Vec<Listener>,
    pub destinations: Vec<Destination>,
    /// The instance's TLS material (`[tls]`), required by TLS listeners.
    pub tls: Option<crate::tls::TlsFiles>,
    /// The admin endpoint (`[admin]`): HTTPS for operator certificates.
    pub admin: Option<Admin>,
    /// `[fhir]`: the FHIR endpoint and the mapping's zone.
    pub fhir: Fhir,
    /// Peer systems, recognised by their certificates (`[[system]]`).
    pub systems: Vec<System>,
    pub establishments: Vec<Establishment>,
    pub routing: Routing,
    pub tests: Vec<RouteTest>,
    /// kind → value → the one establishment that value identifies (looked up by `&str`:
    /// the tenant decision makes a dozen lookups per message).
    pub identifiers: HashMap<IdKind, HashMap<String, EstablishmentId, IdHash>, IdHash>,
    /// The files this configuration was read from (name, text), in order: a JetStream node
    /// keeps those of the routes in force in its store, to apply the log under them after a
    /// restart on changed files (D24).
    pub sources: Vec<(PathBuf, String)>,
}

/// What identifies the part of a configuration that the store's writer decides with
/// (establishments and their identifiers, systems, destinations, routing, each listener's
/// name and options): two nodes applying the same log entries under configurations with the
/// same digest build the same store (D24). Per node, and so left out: the addresses bound,
/// `[tls]`, `[admin]`, `[fhir]`, `[engine]`, `[store]` and the routing test cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoutesDigest(pub [u8; 32]);

impl std::fmt::Display for RoutesDigest {
    /// The first 12 hex digits, as operators compare them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::model::hex(&self.0[..6]))
    }
}

impl serde::Serialize for RoutesDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::model::hex(&self.0))
    }
}

impl<'de> serde::Deserialize<'de> for RoutesDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        RoutesDigest::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("a routes digest is 64 hex digits"))
    }
}

impl RoutesDigest {
    pub fn from_hex(text: &str) -> Option<RoutesDigest> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let s = std::str::from_utf8(pair).ok()?;
            out[i] = u8::from_str_radix(s, 16).ok()?;
        }
        Some(RoutesDigest(out))
    }
}

impl Config {
    /// The digest of what the writer decides with ([`RoutesDigest`]). The rendering hashed is
    /// the configuration's own (`Debug`) for the fields concerned: lists in file order, and
    /// the identifiers (a `HashMap`) sorted.
    pub fn routing_digest(&self) -> RoutesDigest {
        let listeners: Vec<_> = self
            .listeners
            .iter()
            .map(|l| (&l.name, l.insecure, &l.application_acks_to))
            .collect();
        let mut identifiers: Vec<(&IdKind, &String, &EstablishmentId)> = self
            .identifiers
            .iter()
            .flat_map(|(kind, values)| values.iter().map(move |(v, e)| (kind, v, e)))
            .collect();
        identifiers.sort();
        let rendering = format!(
            "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
            self.establishments,
            identifiers,
            self.systems,
            self.destinations,
            self.routing,
            listeners
        );
        RoutesDigest(crate::model::sha256(rendering.as_bytes()))
    }

    pub fn establishment(&self, id: &EstablishmentId) -> Option<&Establishment> {
        self.establishments.iter().find(|e| &e.id == id)
    }
    pub fn establishment_by_name(&self, id: &str) -> Option<&Establishment> {
        self.establishments.iter().find(|e| e.id.as_str() == id)
    }
    /// The system a certificate identifies (the first that matches; validation makes
    /// matches unique).
    pub fn system_of(&self, id: &crate::tls::PeerIdentity) -> Option<&System> {
        self.systems.iter().find(|s| s.matches(id))
    }
    /// The system with this name.
    pub fn system(&self, name: &str) -> Option<&System> {
        self.systems.iter().find(|s| s.name == name)
    }
    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name.as_str() == name)
    }
    pub fn destination(&self, name: &DestinationName) -> Option<&Destination> {
        self.destinations.iter().find(|d| &d.name == name)
    }
    pub fn identify(&self, kind: IdKind, value: &str) -> Option<&EstablishmentId> {
        if value.is_empty() {
            return None;
        }
        self.identifiers.get(&kind)?.get(value)
    }

    /// Loads a routes directory (every `*.toml`, in name order) or a single file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let files = if path.is_dir() {
            let mut files: Vec<PathBuf> = match std::fs::read_dir(path) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect(),
                Err(e) => return Err(ConfigErrors(vec![io_error(path, &e)])),
            };
            files.sort();
            if files.is_empty() {
                return Err(ConfigErrors(vec![ConfigError {
                    file: path.to_owned(),
                    line: 0,
                    field: "-".into(),
                    message: "no *.toml file in this directory".into(),
                }]));
            }
            files
        } else {
            vec![path.to_owned()]
        };
        let mut sources = Vec::new();
        let mut errors = Vec::new();
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(text) => sources.push((f, text)),
                Err(e) => errors.push(io_error(&f, &e)),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Config::from_sources(&sources)
    }

    /// Parses and validates (file name, text) pairs. Pure apart from reading `input_file`s.
    pub fn from_sources(sources: &[(PathBuf, String)]) -> Result<Config, ConfigErrors> {
        let mut v = Validator {
            dir: sources
                .first()
                .and_then(|(f, _)| f.parent())
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("routes"), Path::to_owned),
            ..Validator::default()
        };
        let mut parsed = Vec::new();
        for (file, text) in sources {
            match toml::from_str::<RawFile>(text) {
                Ok(raw) => parsed.push((file.clone(), text.as_str(), raw)),
                Err(e) => {
                    let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
                    // The span names the key when the error is about one (duplicate key,
                    // unknown field).
                    let key = e
                        .span()
                        .and_then(|s| text.get(s))
                        .map(str::trim)
                        .filter(|k| {
                            !k.is_empty()
                                && k.len() <= 64
                                && k.bytes()
                                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
                        });
                    v.errors.push(ConfigError {
                        file: file.clone(),
                        line,
                        field: key.unwrap_or("-").to_owned(),
                        message: e.message().trim().to_owned(),
                    });
                }
            }
        }
        for (file, text, raw) in &parsed {
            v.file(file, text, raw);
        }
        let mut cfg = v.finish()?;
        cfg.sources = sources.to_vec();
        Ok(cfg)
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> ConfigError {
    ConfigError {
        file: path.to_owned(),
        line: 0,
        field: "-".into(),
        message: format!("cannot read: {e}"),
    }
}

/// 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A test case read but not yet checked: file, line, name, before, input, expectation, destinations.
type PendingTest = (
    PathBuf,
    usize,
    String,
    Vec<String>,
    Option<Vec<u8>>,
    Option<(String, String)>,
    Option<Vec<(usize, String)>>,
);

#[derive(Default)]
struct Validator {
    errors: Vec<ConfigError>,
    /// Where the routes files are (named by errors about the whole configuration).
    dir: PathBuf,
    cfg: Config,
    /// Sections that may appear once (`engine`, `routing`, `tls`, `admin`, `fhir`, `dmp`),
    /// with where they were first set.
    seen: HashMap<&'static str, (PathBuf, usize)>,
    /// Names with where they were first defined.
    listener_names: BTreeMap<String, (PathBuf, usize)>,
    destination_names: BTreeMap<String, (PathBuf, usize)>,
    establishment_ids: BTreeMap<String, (PathBuf, usize)>,
    identifier_sites: HashMap<(IdKind, String), (EstablishmentId, PathBuf, usize)>,
    /// References to check once every file is read: (file, line, field, name).
    destination_refs: Vec<(PathBuf, usize, String, String)>,
    /// TLS listeners, which need `[tls]` (checked once every file is read).
    tls_users: Vec<(PathBuf, usize, String)>,
    /// Where `[dmp]` leaves its CA to `[tls]` (checked once every file is read).
    dmp_ca_from_tls: Option<(PathBuf, usize)>,
    /// Establishments that feed the DMP: (file, line, field), checked against `[dmp]`.
    dmp_users: Vec<(PathBuf, usize, String)>,
    /// Where `[mssante]` leaves its CA to `[tls]`.
    mssante_ca_from_tls: Option<(PathBuf, usize)>,
    /// Establishments that mail by MSSanté: (file, line, field), checked against `[mssante]`.
    mssante_users: Vec<(PathBuf, usize, String)>,
    /// Where `[fhir] bind` is set (it needs `[tls]`).
    fhir_bind_at: Option<(PathBuf, usize)>,
    /// "kind=value" of each system's certificate matcher → the system.
    system_matchers: HashMap<String, String>,
    establishment_refs: Vec<(PathBuf, usize, String, String)>,
    /// (file, line, field, destination, system) of destinations known by their certificate.
    destination_systems: Vec<(PathBuf, usize, String, String, String)>,
    raw_tests: Vec<PendingTest>,
}

/// The timing fields of a destination, as written.
struct TimingFields<'a> {
    connect: &'a Option<Spanned<u64>>,
    answer: &'a Option<Spanned<u64>>,
    attempts: &'a Option<Spanned<u64>>,
    age: &'a Option<Spanned<u64>>,
    backoff_initial: &'a Option<Spanned<u64>>,
    backoff_max: &'a Option<Spanned<u64>>,
}

/// A destination's timing, validated.
struct Timing {
    connect: Duration,
    answer: Duration,
    max_attempts: u32,
    max_age: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
}

/// `https://host[:port]/path` → (host, port, path); IPv6 hosts in brackets.
fn split_https_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("https://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && (h.starts_with('[') == h.ends_with(']')) => {
            (h, p.parse::<u16>().ok().filter(|p| *p > 0)?)
        }
        _ => (authority, 443),
    };
    let host = host.trim_matches(['[', ']']);
    if host.is_empty() || path.contains(char::is_whitespace) {
        return None;
    }
    Some((host.to_owned(), port, path.to_owned()))
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn line<T>(&self, s: &Spanned<T>) -> usize {
        line_of(self.text, s.span().start)
    }
    /// A path written in this file, relative to the file's directory.
    fn path(&self, relative: &str) -> PathBuf {
        self.file.parent().unwrap_or(Path::new(".")).join(relative)
    }
}

impl Validator {
    /// Records that section `[name]` starts at `line`; false (and an error) when an earlier
    /// file or place already set it.
    fn first(&mut self, cx: &Ctx<'_>, line: usize, name: &'static str) -> bool {
        if let Some((f, l)) = self.seen.get(name) {
            let msg = format!("[{name}] is already set in {}:{l}", f.display());
            self.err(cx, line, name, msg);
            return false;
        }
        self.seen.insert(name, (cx.file.to_owned(), line));
        true
    }

    fn err(
        &mut self,
        cx: &Ctx<'_>,
        line: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.errors.push(ConfigError {
            file: cx.file.to_owned(),
            line,
            field: field.into(),
            message: message.into(),
        });
    }

    fn positive(
        &mut self,
        cx: &Ctx<'_>,
        v: &Option<Spanned<u64>>,
        field: &str,
        default: u64,
        max: u64,
    ) -> u64 {
        match v {
            None => default,
            Some(s) => {
                let n = *s.get_ref();
                if n == 0 || n > max {
                    self.err(
                        cx,
                        cx.line(s),
                        field,
                        format!("must be between 1 and {max}, got {n}"),
                    );
                    default
                } else {
                    n
                }
            }
        }
    }

    fn name(&mut self, cx: &Ctx<'_>, s: &S, field: &str) -> bool {
        let n = s.get_ref();
        let ok = !n.is_empty()
            && n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !ok {
            self.err(
                cx,
                cx.line(s),
                field,
                format!("{n:?} is not a valid name: use 1 to 64 letters, digits, '-', '_' or '.'"),
            );
        }
        ok
    }

    fn file(&mut self, file: &Path, text: &str, raw: &RawFile) {
        let cx = Ctx { file, text };
        if let Some(e) = &raw.engine {
            let line = cx.line(e);
            if self.first(&cx, line, "engine") {
                let e = e.get_ref();
                let d = Engine::default();
                self.cfg.engine = Engine {
                    max_frame_bytes: self.positive(
                        &cx,
                        &e.max_frame_bytes,
                        "engine.max_frame_bytes",
                        d.max_frame_bytes as u64,
                        1 << 30,
                    ) as usize,
                    idle_timeout: Duration::from_secs(self.positive(
                        &cx,
                        &e.idle_timeout_secs,
                        "engine.idle_timeout_secs",
                        d.idle_timeout.as_secs(),
                        86_400,
                    )),
                    max_connections: self.positive(
                        &cx,
                        &e.max_connections,
                        "engine.max_connections",
                        d.max_connections as u64,
                        65_536,
                    ) as usize,
                    max_connections_per_peer: self.positive(
                        &cx,
                        &e.max_connections_per_peer,
                        "engine.max_connections_per_peer",
                        d.max_connections_per_peer as u64,
                        65_536,
                    ) as usize,
                    frame_timeout: Duration::from_secs(self.positive(
                        &cx,
                        &e.frame_timeout_secs,
                        "engine.frame_timeout_secs",
                        d.frame_timeout.as_secs(),
                        86_400,
                    )),
                    group_commit_max: self.positive(
                        &cx,
                        &e.group_commit_max,
                        "engine.group_commit_max",
                        d.group_commit_max as u64,
                        65_536,
                    ) as usize,
                    audit_seal_every: self.positive(
                        &cx,
                        &e.audit_seal_every,
                        "engine.audit_seal_every",
                        d.audit_seal_every,
                        1_000_000,
                    ),
                    drain: Duration::from_secs(self.positive(
                        &cx,
                        &e.drain_secs,
                        "engine.drain_secs",
                        d.drain.as_secs(),
                        3_600,
                    )),
                };
            }
        }
        if let Some(st) = &raw.store {
            self.store(&cx, st);
        }
        if let Some(t) = &raw.tls {
            self.tls(&cx, t);
        }
        if let Some(a) = &raw.admin {
            self.admin(&cx, a);
        }
        if let Some(f) = &raw.fhir {
            self.fhir(&cx, f);
        }
        if let Some(d) = &raw.dmp {
            self.dmp(&cx, d);
        }
        if let Some(m) = &raw.mssante {
            self.mssante(&cx, m);
        }
        for (i, l) in raw.listener.iter().enumerate() {
            self.listener(&cx, i, l);
        }
        for (i, s) in raw.system.iter().enumerate() {
            self.system(&cx, i, s);
        }
        for (i, d) in raw.destination.iter().enumerate() {
            self.destination(&cx, i, d);
        }
        for (i, e) in raw.establishment.iter().enumerate() {
            self.establishment(&cx, i, e);
        }
        if let Some(r) = &raw.routing {
            let line = cx.line(r);
            if self.first(&cx, line, "routing") {
                for (field, list, out) in [
                    ("routing.orders_to", &r.get_ref().orders_to, 0),
                    ("routing.adt_to", &r.get_ref().adt_to, 1),
                ] {
                    for d in list {
                        self.destination_refs.push((
                            file.to_owned(),
                            cx.line(d),
                            field.to_owned(),
                            d.get_ref().clone(),
                        ));
                        let name = DestinationName::new(d.get_ref());
                        if out == 0 {
                            self.cfg.routing.orders_to.push(name);
                        } else {
                            self.cfg.routing.adt_to.push(name);
                        }
                    }
                }
            }
        }
        for (i, t) in raw.test.iter().enumerate() {
            self.test(&cx, i, t);
        }
    }

    fn listener(&mut self, cx: &Ctx<'_>, i: usize, l: &Spanned<RawListener>) {
        let line = cx.line(l);
        let l = l.get_ref();
        let field = |f: &str| format!("listener[{i}].{f}");
        if self.name(cx, &l.name, &field("name")) {
            if RESERVED_LISTENER_NAMES.contains(&l.name.get_ref().as_str()) {
                let msg = format!(
                    "{:?} is the name of an HTTPS endpoint in the journal; choose another",
                    l.name.get_ref()
                );
                self.err(cx, cx.line(&l.name), field("name"), msg);
            } else if let Some((f, at)) = self.listener_names.get(l.name.get_ref()) {
                let msg = format!(
                    "listener {:?} is already defined at {}:{at}",
                    l.name.get_ref(),
                    f.display()
                );
                self.err(cx, cx.line(&l.name), field("name"), msg);
            } else {
                self.listener_names
                    .insert(l.name.get_ref().clone(), (cx.file.to_owned(), line));
            }
        }
        match l.bind.get_ref().parse::<SocketAddr>() {
            Ok(addr) => {
                if !l.insecure {
                    self.tls_users
                        .push((cx.file.to_owned(), cx.line(&l.bind), field("bind")));
                } else if !addr.ip().is_loopback() {
                    self.err(
                        cx,
                        cx.line(&l.bind),
                        field("bind"),
                        format!(
                            "an insecure (plain TCP) listener must bind a loopback address, not {}",
                            addr.ip()
                        ),
                    );
                }
                if let Some(d) = &l.application_acks_to {
                    self.destination_refs.push((
                        cx.file.to_owned(),
                        cx.line(d),
                        field("application_acks_to"),
                        d.get_ref().clone(),
                    ));
                }
                self.cfg.listeners.push(Listener {
                    name: ListenerName::new(l.name.get_ref()),
                    bind: addr,
                    insecure: l.insecure,
                    application_acks_to: l
                        .application_acks_to
                        .as_ref()
                        .map(|d| DestinationName::new(d.get_ref())),
                });
            }
            Err(_) => self.err(
                cx,
                cx.line(&l.bind),
                field("bind"),
                format!("{:?} is not an IP:port address", l.bind.get_ref()),
            ),
        }
    }

    fn destination(&mut self, cx: &Ctx<'_>, i: usize, d: &Spanned<RawDestination>) {
        let line = cx.line(d);
        let d = d.get_ref();
        let field = |f: &str| format!("destination[{i}].{f}");
        if self.name(cx, &d.name, &field("name")) {
            if let Some((f, at)) = self.destination_names.get(d.name.get_ref()) {
                let msg = format!(
                    "destination {:?} is already defined at {}:{at}",
                    d.name.get_ref(),
                    f.display()
                );
                self.err(cx, cx.line(&d.name), field("name"), msg);
            } else {
                self.destination_names
                    .insert(d.name.get_ref().clone(), (cx.file.to_owned(), line));
            }
        }
        let addr = d.address.get_ref();
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                let loopback = host == "localhost"
                    || host
                        .trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if !d.insecure {
                    self.tls_users.push((
                        cx.file.to_owned(),
                        cx.line(&d.address),
                        field("address"),
                    ));
                    let name = d
                        .server_name
                        .as_ref()
                        .map_or(host.trim_matches(['[', ']']), |n| n.get_ref().as_str());
                    if rustls::pki_types::ServerName::try_from(name).is_err() {
                        let at = d
                            .server_name
                            .as_ref()
                            .map_or(cx.line(&d.address), |n| cx.line(n));
                        self.err(
                            cx,
                            at,
                            field("server_name"),
                            format!("{name:?} is not a DNS name or IP address"),
                        );
                    }
                } else if !loopback {
                    self.err(
                        cx,
                        cx.line(&d.address),
                        field("address"),
                        format!(
                            "an insecure (plain TCP) destination must be on loopback, not {host}"
                        ),
                    );
                }
            }
            _ => self.err(
                cx,
                cx.line(&d.address),
                field("address"),
                format!("{addr:?} is not a host:port address"),
            ),
        }
        let t = self.timing(
            cx,
            line,
            TimingFields {
                connect: &d.connect_timeout_secs,
                answer: &d.ack_timeout_secs,
                attempts: &d.max_attempts,
                age: &d.max_age_secs,
                backoff_initial: &d.backoff_initial_ms,
                backoff_max: &d.backoff_max_ms,
            },
            &field(""),
            "ack_timeout_secs",
        );
        self.cfg.destinations.push(Destination {
            name: DestinationName::new(d.name.get_ref()),
            kind: DestinationKind::Mllp,
            address: addr.clone(),
            connect_timeout: t.connect,
            ack_timeout: t.answer,
            max_attempts: t.max_attempts,
            max_age: t.max_age,
            backoff_initial: t.backoff_initial,
            backoff_max: t.backoff_max,
            keep_connection_open: d.keep_connection_open.unwrap_or(true),
            tls: !d.insecure,
            server_name: d
                .server_name
                .as_ref()
                .map(|n| n.get_ref().clone())
                .or_else(|| {
                    addr.rsplit_once(':')
                        .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
                }),
            system: d.system.as_ref().map(|n| n.get_ref().clone()),
        });
        if let Some(sys) = &d.system {
            if d.insecure {
                self.err(
                    cx,
                    cx.line(sys),
                    field("system"),
                    "a destination known by its certificate needs TLS: remove `insecure = true`",
                );
            }
            self.destination_systems.push((
                cx.file.to_owned(),
                cx.line(sys),
                field("system"),
                d.name.get_ref().clone(),
                sys.get_ref().clone(),
            ));
        }
    }

    /// Timeouts, attempts, age and backoff of a destination (`prefix` names its fields,
    /// `answer_field` its answer timeout).
    fn timing(
        &mut self,
        cx: &Ctx<'_>,
        line: usize,
        f: TimingFields<'_>,
        prefix: &str,
        answer_field: &str,
    ) -> Timing {
        let name = |n: &str| format!("{prefix}{n}");
        let connect = self.positive(cx, f.connect, &name("connect_timeout_secs"), 10, 3600);
        let answer = self.positive(cx, f.answer, &name(answer_field), 30, 3600);
        let attempts = self.positive(cx, f.attempts, &name("max_attempts"), 1000, 1_000_000);
        let age = self.positive(cx, f.age, &name("max_age_secs"), 7 * 86_400, 365 * 86_400);
        let b0 = self.positive(
            cx,
            f.backoff_initial,
            &name("backoff_initial_ms"),
            500,
            3_600_000,
        );
        let b1 = self.positive(
            cx,
            f.backoff_max,
            &name("backoff_max_ms"),
            60_000,
            3_600_000,
        );
        if b1 < b0 {
            self.err(
                cx,
                line,
                name("backoff_max_ms"),
                format!("must be at least backoff_initial_ms ({b0})"),
            );
        }
        Timing {
            connect: Duration::from_secs(connect),
            answer: Duration::from_secs(answer),
            max_attempts: attempts as u32,
            max_age: Duration::from_secs(age),
            backoff_initial: Duration::from_millis(b0),
            backoff_max: Duration::from_millis(b1.max(b0)),
        }
    }

    fn dmp(&mut self, cx: &Ctx<'_>, d: &Spanned<RawDmp>) {
        let line = cx.line(d);
        if !self.first(cx, line, "dmp") {
            return;
        }
        if let Some((f, at)) = self.destination_names.get(DMP_DESTINATION) {
            let msg = format!(
                "[dmp] is the destination {DMP_DESTINATION:?}, already defined at {}:{at}",
                f.display()
            );
            self.err(cx, line, "dmp", msg);
            return;
        }
        self.destination_names
            .insert(DMP_DESTINATION.to_owned(), (cx.file.to_owned(), line));
        let d = d.get_ref();
        let url = d.url.get_ref();
        let Some((host, port, path)) = split_https_url(url) else {
            self.err(
                cx,
                cx.line(&d.url),
                "dmp.url",
                format!("{url:?} is not an https://host[:port]/path URL"),
            );
            return;
        };
        let (server_name, ca) =
            self.peer_trust(cx, "dmp", &host, cx.line(&d.url), &d.server_name, &d.ca);
        let t = self.timing(
            cx,
            line,
            TimingFields {
                connect: &d.connect_timeout_secs,
                answer: &d.timeout_secs,
                attempts: &d.max_attempts,
                age: &d.max_age_secs,
                backoff_initial: &d.backoff_initial_ms,
                backoff_max: &d.backoff_max_ms,
            },
            "dmp.",
            "timeout_secs",
        );
        if ca.is_none() {
            self.dmp_ca_from_tls = Some((cx.file.to_owned(), cx.line(&d.url)));
        }
        self.cfg.destinations.push(Destination {
            name: DestinationName::new(DMP_DESTINATION),
            kind: DestinationKind::Dmp { path, ca },
            address: format!("{host}:{port}"),
            connect_timeout: t.connect,
            ack_timeout: t.answer,
            max_attempts: t.max_attempts,
            max_age: t.max_age,
            backoff_initial: t.backoff_initial,
            backoff_max: t.backoff_max,
            keep_connection_open: false,
            tls: true,
            server_name: Some(server_name),
            system: None,
        });
    }

    /// The name a sender's peer certificate must carry (`server_name`, default the
    /// address's host) and the CA that verifies it (`ca`), checked; `prefix` names the
    /// section (`dmp`, `mssante`), `at` the line errors point to without those fields.
    fn peer_trust(
        &mut self,
        cx: &Ctx<'_>,
        prefix: &str,
        host: &str,
        at: usize,
        server_name: &Option<S>,
        ca: &Option<S>,
    ) -> (String, Option<PathBuf>) {
        let name = server_name
            .as_ref()
            .map_or_else(|| host.to_owned(), |n| n.get_ref().clone());
        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
            let line = server_name.as_ref().map_or(at, |n| cx.line(n));
            self.err(
                cx,
                line,
                format!("{prefix}.server_name"),
                format!("{name:?} is not a DNS name or IP address"),
            );
        }
        let ca = ca.as_ref().map(|c| {
            let path = cx.path(c.get_ref());
            if let Err(e) = crate::tls::load_certs(&path) {
                self.err(cx, cx.line(c), format!("{prefix}.ca"), e.to_string());
            }
            path
        });
        (name, ca)
    }

    /// A client certificate and key (PEM, relative to the file), checked; `field` names
    /// them (`establishment[0].dmp`).
    fn client_pair(&mut self, cx: &Ctx<'_>, field: &str, cert: &S, key: &S) -> (PathBuf, PathBuf) {
        let (c, k) = (cx.path(cert.get_ref()), cx.path(key.get_ref()));
        if let Err(err) = crate::tls::load_certs(&c) {
            self.err(cx, cx.line(cert), format!("{field}.cert"), err.to_string());
        }
        if let Err(err) = crate::tls::load_key(&k) {
            self.err(cx, cx.line(key), format!("{field}.key"), err.to_string());
        }
        (c, k)
    }

    fn mssante(&mut self, cx: &Ctx<'_>, m: &Spanned<RawMssante>) {
        let name = crate::mssante::DESTINATION;
        let line = cx.line(m);
        if !self.first(cx, line, "mssante") {
            return;
        }
        if let Some((f, at)) = self.destination_names.get(name) {
            let msg = format!(
                "[mssante] is the destination {name:?}, already defined at {}:{at}",
                f.display()
            );
            self.err(cx, line, "mssante", msg);
            return;
        }
        self.destination_names
            .insert(name.to_owned(), (cx.file.to_owned(), line));
        let m = m.get_ref();
        let address = m.address.get_ref().trim();
        let host = match address.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0) => {
                h.trim_start_matches('[').trim_end_matches(']').to_owned()
            }
            _ => {
                self.err(
                    cx,
                    cx.line(&m.address),
                    "mssante.address",
                    format!("{address:?} is not host:port"),
                );
                return;
            }
        };
        let starttls = match m.tls.get_ref().as_str() {
            "implicit" => false,
            "starttls" => true,
            other => {
                self.err(
                    cx,
                    cx.line(&m.tls),
                    "mssante.tls",
                    format!("{other:?}: expected \"implicit\" (TLS from the first byte) or \"starttls\" (STARTTLS required); mail never goes in clear"),
                );
                false
            }
        };
        let (server_name, ca) = self.peer_trust(
            cx,
            "mssante",
            &host,
            cx.line(&m.address),
            &m.server_name,
            &m.ca,
        );
        if ca.is_none() {
            self.mssante_ca_from_tls = Some((cx.file.to_owned(), cx.line(&m.address)));
        }
        let text = |v: &Option<S>, default: &str| {
            v.as_ref()
                .map_or_else(|| default.to_owned(), |s| s.get_ref().clone())
        };
        let subject = text(&m.subject, "Compte rendu de biologie");
        if subject.chars().any(char::is_control) {
            let at = m.subject.as_ref().map_or(line, |s| cx.line(s));
            self.err(cx, at, "mssante.subject", "one line, no control character");
        }
        let body = text(
            &m.body,
            "Bonjour,\r\n\r\nVeuillez trouver ci-joint un compte rendu de biologie.\r\n",
        );
        let t = self.timing(
            cx,
            line,
            TimingFields {
                connect: &m.connect_timeout_secs,
                answer: &m.timeout_secs,
                attempts: &m.max_attempts,
                age: &m.max_age_secs,
                backoff_initial: &m.backoff_initial_ms,
                backoff_max: &m.backoff_max_ms,
            },
            "mssante.",
            "timeout_secs",
        );
        self.cfg.destinations.push(Destination {
            name: DestinationName::new(name),
            kind: DestinationKind::Mssante {
                starttls,
                ca,
                subject,
                body,
            },
            address: address.to_owned(),
            connect_timeout: t.connect,
            ack_timeout: t.answer,
            max_attempts: t.max_attempts,
            max_age: t.max_age,
            backoff_initial: t.backoff_initial,
            backoff_max: t.backoff_max,
            keep_connection_open: false,
            tls: true,
            server_name: Some(server_name),
            system: None,
        });
    }

    fn establishment(&mut self, cx: &Ctx<'_>, i: usize, e: &Spanned<RawEstablishment>) {
        let line = cx.line(e);
        let e = e.get_ref();
        let field = |f: &str| format!("establishment[{i}].{f}");
        if self.name(cx, &e.id, &field("id")) {
            if let Some((f, at)) = self.establishment_ids.get(e.id.get_ref()) {
                let msg = format!(
                    "establishment {:?} is already defined at {}:{at}",
                    e.id.get_ref(),
                    f.display()
                );
                self.err(cx, cx.line(&e.id), field("id"), msg);
            } else {
                self.establishment_ids
                    .insert(e.id.get_ref().clone(), (cx.file.to_owned(), line));
            }
        }
        if e.name.get_ref().trim().is_empty() {
            self.err(cx, cx.line(&e.name), field("name"), "must not be empty");
        }
        let id = EstablishmentId::new(e.id.get_ref());
        for f in &e.finess {
            if !is_finess(f.get_ref()) {
                self.err(cx, cx.line(f), field("finess"), format!("{:?} is not a FINESS number (9 characters: département digits or 2A/2B, then 7 digits)", f.get_ref()));
            }
        }
        self.destination_refs.push((
            cx.file.to_owned(),
            cx.line(&e.record),
            field("record"),
            e.record.get_ref().clone(),
        ));
        let ident = &e.identify;
        let groups: [(IdKind, &Vec<S>, String); 6] = [
            (
                IdKind::SendingFacility,
                &ident.sending_facilities,
                field("identify.sending_facilities"),
            ),
            (
                IdKind::PlacerNamespace,
                &ident.placer_namespaces,
                field("identify.placer_namespaces"),
            ),
            (
                IdKind::PatientAuthority,
                &ident.patient_authorities,
                field("identify.patient_authorities"),
            ),
            (
                IdKind::VisitAuthority,
                &ident.visit_authorities,
                field("identify.visit_authorities"),
            ),
            (
                IdKind::Facility,
                &ident.facilities,
                field("identify.facilities"),
            ),
            (IdKind::Finess, &e.finess, field("finess")),
        ];
        for (kind, values, fname) in groups {
            for v in values {
                let value = v.get_ref().trim().to_owned();
                if value.is_empty() {
                    self.err(cx, cx.line(v), &fname, "an identifier must not be empty");
                    continue;
                }
                let key = (kind, value.clone());
                if let Some((other, f, at)) = self.identifier_sites.get(&key) {
                    let msg = if *other == id {
                        format!("{value:?} is listed twice (first at {}:{at})", f.display())
                    } else {
                        format!(
                            "{value:?} already identifies establishment {other} ({}:{at}); one identifier must name one establishment",
                            f.display()
                        )
                    };
                    self.err(cx, cx.line(v), &fname, msg);
                    continue;
                }
                self.identifier_sites
                    .insert(key, (id.clone(), cx.file.to_owned(), cx.line(v)));
                self.cfg
                    .identifiers
                    .entry(kind)
                    .or_default()
                    .insert(value.clone(), id.clone());
            }
        }
        let has_any = !ident.sending_facilities.is_empty()
            || !ident.placer_namespaces.is_empty()
            || !ident.patient_authorities.is_empty()
            || !ident.visit_authorities.is_empty()
            || !ident.facilities.is_empty()
            || !e.finess.is_empty();
        if !has_any {
            self.err(
                cx,
                line,
                field("identify"),
                "no identifier: nothing could ever be tagged to this establishment",
            );
        }
        let dmp = e.dmp.as_ref().map(|d| {
            self.dmp_users
                .push((cx.file.to_owned(), cx.line(d), field("dmp")));
            let d = d.get_ref();
            let (cert, key) = self.client_pair(cx, &field("dmp"), &d.cert, &d.key);
            EstablishmentDmp { cert, key }
        });
        let mssante = e.mssante.as_ref().map(|m| {
            self.mssante_users
                .push((cx.file.to_owned(), cx.line(m), field("mssante")));
            let m = m.get_ref();
            let (cert, key) = self.client_pair(cx, &field("mssante"), &m.cert, &m.key);
            let from = crate::mssante::normalise_address(m.from.get_ref()).unwrap_or_else(|| {
                self.err(
                    cx,
                    cx.line(&m.from),
                    field("mssante.from"),
                    "not an e-mail address",
                );
                String::new()
            });
            for (j, r) in m.recipients.iter().enumerate() {
                let v = r.get_ref().trim();
                if !crate::access::is_rpps(v) && crate::mssante::normalise_address(v).is_none() {
                    self.err(
                        cx,
                        cx.line(r),
                        field(&format!("mssante.recipients[{j}]")),
                        "neither an RPPS (11 digits) nor an e-mail address",
                    );
                }
            }
            EstablishmentMssante {
                cert,
                key,
                from,
                recipients: m
                    .recipients
                    .iter()
                    .map(|r| r.get_ref().trim().to_owned())
                    .collect(),
            }
        });
        self.cfg.establishments.push(Establishment {
            id,
            name: e.name.get_ref().clone(),
            finess: e.finess.iter().map(|f| f.get_ref().clone()).collect(),
            record: DestinationName::new(e.record.get_ref()),
            dmp,
            external_access: e.external_access,
            mssante,
        });
    }

    fn test(&mut self, cx: &Ctx<'_>, i: usize, t: &Spanned<RawTest>) {
        let line = cx.line(t);
        let t = t.get_ref();
        let field = |f: &str| format!("test[{i}].{f}");
        let input = match (&t.input, &t.input_file) {
            (Some(s), None) => Some(s.get_ref().as_bytes().to_vec()),
            (None, Some(p)) => match std::fs::read(cx.path(p.get_ref())) {
                Ok(b) => Some(b),
                Err(e) => {
                    self.err(
                        cx,
                        cx.line(p),
                        field("input_file"),
                        format!("cannot read {:?}: {e}", p.get_ref()),
                    );
                    None
                }
            },
            _ => {
                self.err(
                    cx,
                    line,
                    field("input"),
                    "set exactly one of `input` and `input_file`",
                );
                None
            }
        };
        let ex = t.expect.get_ref();
        let expected = match (&ex.establishment, &ex.quarantine, &ex.rejected) {
            (Some(e), None, None) => {
                self.establishment_refs.push((
                    cx.file.to_owned(),
                    cx.line(e),
                    field("expect.establishment"),
                    e.get_ref().clone(),
                ));
                Some(("establishment".to_owned(), e.get_ref().clone()))
            }
            (None, Some(q), None) => {
                if !matches!(q.get_ref().as_str(), "no_evidence" | "conflict") {
                    self.err(
                        cx,
                        cx.line(q),
                        field("expect.quarantine"),
                        "must be \"no_evidence\" or \"conflict\"",
                    );
                }
                Some(("quarantine".to_owned(), q.get_ref().clone()))
            }
            (None, None, Some(r)) => Some(("rejected".to_owned(), r.get_ref().to_string())),
            _ => {
                self.err(
                    cx,
                    cx.line(&t.expect),
                    field("expect"),
                    "set exactly one of `establishment`, `quarantine` and `rejected`",
                );
                None
            }
        };
        let dests = ex.destinations.as_ref().map(|ds| {
            ds.iter()
                .map(|d| {
                    self.destination_refs.push((
                        cx.file.to_owned(),
                        cx.line(d),
                        field("expect.destinations"),
                        d.get_ref().clone(),
                    ));
                    (cx.line(d), d.get_ref().clone())
                })
                .collect()
        });
        self.raw_tests.push((
            cx.file.to_owned(),
            line,
            t.name.get_ref().clone(),
            t.before.clone(),
            input,
            expected,
            dests,
        ));
    }

    fn system(&mut self, cx: &Ctx<'_>, i: usize, s: &Spanned<RawSystem>) {
        let line = cx.line(s);
        let s = s.get_ref();
        let field = |f: &str| format!("system[{i}].{f}");
        if !self.name(cx, &s.name, &field("name")) {
            return;
        }
        if self.cfg.systems.iter().any(|o| &o.name == s.name.get_ref()) {
            let msg = format!("system {:?} is defined twice", s.name.get_ref());
            self.err(cx, cx.line(&s.name), field("name"), msg);
        }
        let role = match s.role.get_ref().as_str() {
            "order_placer" => Role::OrderPlacer,
            "result_producer" => Role::ResultProducer,
            "operator" => Role::Operator,
            "monitor" => Role::Monitor,
            "record_receiver" => Role::RecordReceiver,
            other => {
                self.err(
                    cx,
                    cx.line(&s.role),
                    field("role"),
                    format!(
                        "{other:?}: one of \"order_placer\", \"result_producer\", \"record_receiver\", \"operator\", \"monitor\""
                    ),
                );
                Role::Operator
            }
        };
        let mut sha256 = Vec::new();
        for f in &s.sha256 {
            let hex: String = f
                .get_ref()
                .chars()
                .filter(|c| *c != ':')
                .collect::<String>()
                .to_ascii_lowercase();
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                self.err(
                    cx,
                    cx.line(f),
                    field("sha256"),
                    "a SHA-256 fingerprint is 64 hex digits (colons allowed)",
                );
            }
            sha256.push(hex);
        }
        let sys = System {
            name: s.name.get_ref().clone(),
            role,
            san_uris: s.san_uri.iter().map(|v| v.get_ref().clone()).collect(),
            san_dns: s.san_dns.iter().map(|v| v.get_ref().clone()).collect(),
            sha256,
            establishments: s
                .establishments
                .iter()
                .map(|e| EstablishmentId::new(e.get_ref()))
                .collect(),
        };
        if sys.san_uris.is_empty() && sys.san_dns.is_empty() && sys.sha256.is_empty() {
            self.err(cx, line, field("san_uri"), "no san_uri, san_dns or sha256: no certificate could ever be this system (CN alone is not accepted)");
        }
        for (list, name) in [
            (&s.san_uri, "san_uri"),
            (&s.san_dns, "san_dns"),
            (&s.sha256, "sha256"),
        ] {
            for v in list {
                let value = if name == "sha256" {
                    v.get_ref().to_ascii_lowercase().replace(':', "")
                } else {
                    v.get_ref().clone()
                };
                let key = format!("{name}={value}");
                if let Some(other) = self.system_matchers.get(&key) {
                    let msg = format!(
                        "{:?} already identifies system {other:?}: one certificate must name one system",
                        v.get_ref()
                    );
                    self.err(cx, cx.line(v), field(name), msg);
                } else {
                    self.system_matchers.insert(key, sys.name.clone());
                }
            }
        }
        for e in &s.establishments {
            self.establishment_refs.push((
                cx.file.to_owned(),
                cx.line(e),
                field("establishments"),
                e.get_ref().clone(),
            ));
        }
        self.cfg.systems.push(sys);
    }

    fn store(&mut self, cx: &Ctx<'_>, st: &Spanned<raw::RawStore>) {
        let line = cx.line(st);
        if !self.first(cx, line, "store") {
            return;
        }
        let st = st.get_ref();
        match st.kind.get_ref().as_str() {
            "embedded" => {
                for (set, field) in [
                    (!st.servers.is_empty(), "store.servers"),
                    (st.stream.is_some(), "store.stream"),
                    (st.replicas.is_some(), "store.replicas"),
                    (st.node.is_some(), "store.node"),
                    (
                        st.forget_node_after_hours.is_some(),
                        "store.forget_node_after_hours",
                    ),
                ] {
                    if set {
                        self.err(cx, line, field, "only for kind = \"jetstream\"");
                    }
                }
                if st.write_ahead_log.as_ref().is_some_and(|w| *w.get_ref()) {
                    self.cfg.store = StoreKind::EmbeddedWal;
                }
            }
            "jetstream" => {
                if let Some(w) = &st.write_ahead_log {
                    self.err(
                        cx,
                        cx.line(w),
                        "store.write_ahead_log",
                        "only for kind = \"embedded\" (the JetStream stream is the log)",
                    );
                }
                if st.servers.is_empty() {
                    self.err(
                        cx,
                        line,
                        "store.servers",
                        "at least one server: \"tls://host:4222\"",
                    );
                }
                let mut servers = Vec::new();
                for s in &st.servers {
                    match jetstream_server(s.get_ref()) {
                        Ok(()) => servers.push(s.get_ref().clone()),
                        Err(m) => self.err(cx, cx.line(s), "store.servers", m),
                    }
                    if s.get_ref().starts_with("tls://") {
                        self.tls_users.push((
                            cx.file.to_owned(),
                            cx.line(s),
                            "store.servers".into(),
                        ));
                    }
                }
                let stream = match &st.stream {
                    Some(s) if self.name(cx, s, "store.stream") => s.get_ref().clone(),
                    Some(_) => String::new(),
                    None => "LABROUTE".to_owned(),
                };
                if stream.contains('.') {
                    let at = st.stream.as_ref().map_or(line, |s| cx.line(s));
                    self.err(cx, at, "store.stream", "a stream name has no '.'");
                }
                let replicas = match &st.replicas {
                    None => 1,
                    Some(r) => match *r.get_ref() {
                        n @ (1 | 3 | 5) => n as usize,
                        n => {
                            self.err(
                                cx,
                                cx.line(r),
                                "store.replicas",
                                format!("1, 3 or 5 (a JetStream cluster's quorum), got {n}"),
                            );
                            1
                        }
                    },
                };
                let node = match &st.node {
                    Some(n) if self.name(cx, n, "store.node") => n.get_ref().clone(),
                    Some(_) => String::new(),
                    None => {
                        self.err(
                            cx,
                            line,
                            "store.node",
                            "required: this node's name, unique among the instance's nodes",
                        );
                        String::new()
                    }
                };
                let hours = match &st.forget_node_after_hours {
                    None => 24,
                    Some(h) => match *h.get_ref() {
                        n @ 1..=8760 => n,
                        n => {
                            self.err(
                                cx,
                                cx.line(h),
                                "store.forget_node_after_hours",
                                format!("1 to 8760 (a year), got {n}"),
                            );
                            24
                        }
                    },
                };
                self.cfg.store = StoreKind::JetStream(JetStreamStore {
                    servers,
                    stream,
                    replicas,
                    node,
                    forget_node_after: Duration::from_secs(hours * 3600),
                });
            }
            other => {
                let at = cx.line(&st.kind);
                self.err(
                    cx,
                    at,
                    "store.kind",
                    format!("{other:?}: \"embedded\" or \"jetstream\""),
                );
            }
        }
    }

    fn tls(&mut self, cx: &Ctx<'_>, t: &Spanned<RawTls>) {
        let line = cx.line(t);
        if !self.first(cx, line, "tls") {
            return;
        }
        let t = t.get_ref();
        let min_version = match t.min_version.as_ref().map(|v| v.get_ref().as_str()) {
            None | Some("1.3") => crate::tls::MinVersion::Tls13,
            Some("1.2") => crate::tls::MinVersion::Tls12,
            Some(other) => {
                let at = t.min_version.as_ref().map_or(line, |v| cx.line(v));
                self.err(
                    cx,
                    at,
                    "tls.min_version",
                    format!("{other:?}: TLS 1.3 (\"1.3\") or 1.2 (\"1.2\"), nothing older"),
                );
                crate::tls::MinVersion::Tls13
            }
        };
        let files = crate::tls::TlsFiles {
            ca: cx.path(t.ca.get_ref()),
            cert: cx.path(t.cert.get_ref()),
            key: cx.path(t.key.get_ref()),
            min_version,
        };
        // Load everything now: a bad file is a configuration error, not a failure at start.
        let mut ok = true;
        for (path, f, name) in [
            (&files.ca, &t.ca, "tls.ca"),
            (&files.cert, &t.cert, "tls.cert"),
        ] {
            if let Err(e) = crate::tls::load_certs(path) {
                self.err(cx, cx.line(f), name, e.to_string());
                ok = false;
            }
        }
        if let Err(e) = crate::tls::load_key(&files.key) {
            self.err(cx, cx.line(&t.key), "tls.key", e.to_string());
            ok = false;
        }
        if ok {
            if let Err(e) = crate::tls::server_config(&files) {
                self.err(cx, line, "tls", e.to_string());
            }
        }
        self.cfg.tls = Some(files);
    }

    fn admin(&mut self, cx: &Ctx<'_>, a: &Spanned<RawAdmin>) {
        let line = cx.line(a);
        if !self.first(cx, line, "admin") {
            return;
        }
        let a = a.get_ref();
        let mut open = Vec::new();
        for ip in &a.without_certificate {
            match ip.get_ref().trim().parse::<std::net::IpAddr>() {
                Ok(v) => open.push(v),
                Err(_) => self.err(
                    cx,
                    cx.line(ip),
                    "admin.without_certificate",
                    format!("{:?} is not an IP address", ip.get_ref()),
                ),
            }
        }
        match a.bind.get_ref().parse::<SocketAddr>() {
            Ok(bind) => {
                self.cfg.admin = Some(Admin {
                    bind,
                    without_certificate: open,
                })
            }
            Err(_) => self.err(
                cx,
                cx.line(&a.bind),
                "admin.bind",
                format!("{:?} is not an IP:port address", a.bind.get_ref()),
            ),
        }
    }

    fn fhir(&mut self, cx: &Ctx<'_>, f: &Spanned<RawFhir>) {
        let line = cx.line(f);
        if !self.first(cx, line, "fhir") {
            return;
        }
        let f = f.get_ref();
        if let Some(bind) = &f.bind {
            match bind.get_ref().parse::<SocketAddr>() {
                Ok(addr) => {
                    self.cfg.fhir.bind = Some(addr);
                    self.fhir_bind_at = Some((cx.file.to_owned(), cx.line(bind)));
                }
                Err(_) => self.err(
                    cx,
                    cx.line(bind),
                    "fhir.bind",
                    format!("{:?} is not an IP:port address", bind.get_ref()),
                ),
            }
        }
        if let Some(zone) = &f.zone {
            match crate::fhir::Zone::parse(zone.get_ref()) {
                Some(z) => self.cfg.fhir.zone = z,
                None => self.err(
                    cx,
                    cx.line(zone),
                    "fhir.zone",
                    format!(
                        "{:?} is not a zone: \"Europe/Paris\", \"UTC\" or an offset such as \"+04:00\"",
                        zone.get_ref()
                    ),
                ),
            }
        }
    }

    fn finish(mut self) -> Result<Config, ConfigErrors> {
        if !self.seen.contains_key("dmp") {
            for (file, line, field) in std::mem::take(&mut self.dmp_users) {
                self.errors.push(ConfigError {
                    file,
                    line,
                    field,
                    message: "feeding the DMP needs a [dmp] section (its url)".into(),
                });
            }
        }
        if !self.seen.contains_key("mssante") {
            for (file, line, field) in std::mem::take(&mut self.mssante_users) {
                self.errors.push(ConfigError {
                    file,
                    line,
                    field,
                    message: "mailing by MSSanté needs a [mssante] section (the SMTP server)"
                        .into(),
                });
            }
        }
        // The HTTPS endpoints know their clients by certificate: no plain-TCP form.
        let endpoints = [
            (
                self.fhir_bind_at.as_ref(),
                "fhir.bind",
                "the FHIR endpoint needs a [tls] section: its clients are known by their certificates, so it has no plain-TCP form",
            ),
            (
                self.dmp_ca_from_tls.as_ref(),
                "dmp.ca",
                "the DMP's server certificate is verified against a CA: set [dmp] ca, or a [tls] section (its ca is used)",
            ),
            (
                self.mssante_ca_from_tls.as_ref(),
                "mssante.ca",
                "the SMTP server's certificate is verified against a CA: set [mssante] ca, or a [tls] section (its ca is used)",
            ),
            (
                self.seen.get("admin"),
                "admin",
                "the admin endpoint needs a [tls] section: operators are known by their certificates, so it has no plain-TCP form",
            ),
        ];
        if !self.seen.contains_key("tls") {
            for (at, field, message) in endpoints {
                if let Some((file, line)) = at {
                    self.errors.push(ConfigError {
                        file: file.clone(),
                        line: *line,
                        field: field.into(),
                        message: message.into(),
                    });
                }
            }
            for (file, line, field) in std::mem::take(&mut self.tls_users) {
                // What to do instead differs: a JetStream server is named by its scheme.
                let message = if field == "store.servers" {
                    "tls:// needs a [tls] section (ca, cert, key: this node's client certificate); or use nats:// on a loopback address"
                } else {
                    "TLS needs a [tls] section (ca, cert, key); or set `insecure = true` on a loopback address"
                };
                self.errors.push(ConfigError {
                    file,
                    line,
                    field,
                    message: message.into(),
                });
            }
        }
        for (file, line, field, name) in std::mem::take(&mut self.destination_refs) {
            if !self.destination_names.contains_key(&name) {
                self.errors.push(ConfigError {
                    file,
                    line,
                    field,
                    message: format!("no destination is named {name:?}"),
                });
            }
        }
        for (file, line, field, name) in std::mem::take(&mut self.establishment_refs) {
            if !self.establishment_ids.contains_key(&name) {
                self.errors.push(ConfigError {
                    file,
                    line,
                    field,
                    message: format!("no establishment has id {name:?}"),
                });
            }
        }
        for (file, line, field, dest, system) in std::mem::take(&mut self.destination_systems) {
            let Some(sys) = self.cfg.system(&system) else {
                self.errors.push(ConfigError {
                    file,
                    line,
                    field,
                    message: format!("no [[system]] is named {system:?}"),
                });
                continue;
            };
            let d = DestinationName::new(&dest);
            let lab =
                self.cfg.routing.orders_to.contains(&d) || self.cfg.routing.adt_to.contains(&d);
            let must: Vec<&EstablishmentId> = self
                .cfg
                .establishments
                .iter()
                .filter(|e| lab || e.record == d)
                .map(|e| &e.id)
                .collect();
            let missing: Vec<&str> = must
                .iter()
                .filter(|e| !sys.speaks_for(e))
                .map(|e| e.as_str())
                .collect();
            if !missing.is_empty() {
                self.errors.push(ConfigError {
                    file,
                    line,
                    field,
                    message: format!(
                        "system {system:?} does not speak for {} but destination {dest:?} receives their messages ({})",
                        missing.join(", "),
                        if lab { "orders or ADT of every establishment" } else { "their record" }
                    ),
                });
            }
        }
        if self.cfg.listeners.is_empty() && self.errors.is_empty() {
            self.errors.push(ConfigError {
                file: self.dir.clone(),
                line: 0,
                field: "listener".into(),
                message: "no [[listener]] is configured".into(),
            });
        }
        for (file, line, name, before, input, expected, dests) in
            std::mem::take(&mut self.raw_tests)
        {
            let (Some(input), Some((kind, value))) = (input, expected) else {
                continue;
            };
            let expected = match kind.as_str() {
                "establishment" => Expected::Establishment(EstablishmentId::new(&value)),
                "quarantine" => Expected::Quarantine(value),
                _ => Expected::Rejected(value.parse().unwrap_or(0)),
            };
            self.cfg.tests.push(RouteTest {
                name,
                file,
                line,
                before: before.into_iter().map(String::into_bytes).collect(),
                input,
                expected,
                destinations: dests.map(|d| {
                    d.into_iter()
                        .map(|(_, n)| DestinationName::new(&n))
                        .collect()
                }),
            });
        }
        if self.errors.is_empty() {
            Ok(self.cfg)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

/// FINESS: 9 characters, the first two a département (digits, or 2A/2B for Corsica).
pub fn is_finess(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 9
        && (b[..2].iter().all(u8::is_ascii_digit) || b[..2] == *b"2A" || b[..2] == *b"2B")
        && b[2..].iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests;

/// A JetStream server address: `tls://host:port`, or `nats://` on loopback only (D9).
fn jetstream_server(url: &str) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?}: write tls://host:port"))?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{url:?}: the port is missing"))?;
    port.parse::<u16>()
        .map_err(|_| format!("{url:?}: {port:?} is not a port"))?;
    match scheme {
        "tls" if !host.is_empty() => Ok(()),
        "nats" => match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            Ok(ip) if ip.is_loopback() => Ok(()),
            _ => Err(format!(
                "{url:?}: plain nats:// only on a loopback address; use tls://"
            )),
        },
        _ => Err(format!("{url:?}: write tls://host:port")),
    }
}
