//! Wire types for `routes/*.toml`, exactly as written. Never used past validation.

use serde::Deserialize;
use toml::Spanned;

pub type S = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub engine: Option<Spanned<RawEngine>>,
    pub store: Option<Spanned<RawStore>>,
    #[serde(default)]
    pub listener: Vec<Spanned<RawListener>>,
    #[serde(default)]
    pub destination: Vec<Spanned<RawDestination>>,
    #[serde(default)]
    pub establishment: Vec<Spanned<RawEstablishment>>,
    pub routing: Option<Spanned<RawRouting>>,
    pub tls: Option<Spanned<RawTls>>,
    pub admin: Option<Spanned<RawAdmin>>,
    pub fhir: Option<Spanned<RawFhir>>,
    pub dmp: Option<Spanned<RawDmp>>,
    pub mssante: Option<Spanned<RawMssante>>,
    #[serde(default)]
    pub system: Vec<Spanned<RawSystem>>,
    #[serde(default)]
    pub test: Vec<Spanned<RawTest>>,
}

/// A peer system, recognised by its TLS client certificate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSystem {
    pub name: S,
    /// "order_placer" (a DPI), "result_producer" (the lab, a middleware), "record_receiver",
    /// "operator", "monitor".
    pub role: S,
    /// Certificate SAN URIs that identify it.
    #[serde(default)]
    pub san_uri: Vec<S>,
    /// Certificate SAN DNS names that identify it.
    #[serde(default)]
    pub san_dns: Vec<S>,
    /// SHA-256 fingerprints (hex, colons allowed) of certificates that identify it.
    #[serde(default)]
    pub sha256: Vec<S>,
    /// Establishment ids it may speak for.
    pub establishments: Vec<S>,
}

/// The admin endpoint (HTTPS, operator certificates).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `IP:port` to bind.
    pub bind: S,
    /// IP addresses that may read `/metrics`, `/healthz` and `/readyz` without a client
    /// certificate (a Prometheus or a probe that has none).
    #[serde(default)]
    pub without_certificate: Vec<S>,
}

/// The DMP feed: an IHE MHD Document Recipient (ITI-65, ANS PDSm) over HTTPS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDmp {
    /// `https://host:port/path`: the Bundle is POSTed there.
    pub url: S,
    /// Name the DMP's certificate must carry; default: the URL's host.
    pub server_name: Option<S>,
    /// PEM bundle of the CAs that issue the DMP's server certificate; default `[tls].ca`.
    pub ca: Option<S>,
    pub connect_timeout_secs: Option<Spanned<u64>>,
    /// Longest wait for the answer.
    pub timeout_secs: Option<Spanned<u64>>,
    pub max_attempts: Option<Spanned<u64>>,
    pub max_age_secs: Option<Spanned<u64>>,
    pub backoff_initial_ms: Option<Spanned<u64>>,
    pub backoff_max_ms: Option<Spanned<u64>>,
}

/// MSSanté: the operator's SMTP server (the establishments' certificates and addresses are
/// theirs: `establishment.mssante`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMssante {
    /// `host:port` of the operator's SMTP server.
    pub address: S,
    /// `implicit` (TLS from the first byte, port 465) or `starttls` (STARTTLS required,
    /// never a plaintext fallback).
    pub tls: S,
    /// Name the server's certificate must carry; default: the address's host.
    pub server_name: Option<S>,
    /// PEM bundle of the CAs that issue the server's certificate; default `[tls].ca`.
    pub ca: Option<S>,
    /// Subject of every mail (no patient data); default "Compte rendu de biologie".
    pub subject: Option<S>,
    /// Body when the message carries no `CORPSMAIL_PS` / `CORPSMAIL_PATIENT` text.
    pub body: Option<S>,
    pub connect_timeout_secs: Option<Spanned<u64>>,
    /// Longest wait for each SMTP answer.
    pub timeout_secs: Option<Spanned<u64>>,
    pub max_attempts: Option<Spanned<u64>>,
    pub max_age_secs: Option<Spanned<u64>>,
    pub backoff_initial_ms: Option<Spanned<u64>>,
    pub backoff_max_ms: Option<Spanned<u64>>,
}

/// An establishment's mail: present means enabled.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEstablishmentMssante {
    /// The establishment's client certificate toward the SMTP server (PEM).
    pub cert: S,
    pub key: S,
    /// Its sending address (`From`).
    pub from: S,
    /// Standing recipients (RPPS or addresses): candidates for every result, mailed only
    /// where the patient's care links them.
    #[serde(default)]
    pub recipients: Vec<S>,
}

/// An establishment's DMP feed: present means enabled.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEstablishmentDmp {
    /// The establishment's client certificate toward the DMP (PEM), relative to the file.
    pub cert: S,
    pub key: S,
}

/// FHIR: the HTTPS endpoint (mutual TLS, the systems' certificates) and the zone of HL7
/// times.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFhir {
    /// `IP:port` of the FHIR endpoint; none: no endpoint.
    pub bind: Option<S>,
    /// Zone of HL7 times that carry none: "Europe/Paris" (default), "UTC", "+04:00".
    pub zone: Option<S>,
}

/// The instance's TLS material; paths are relative to the routes file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM bundle of the CAs that issue peers' certificates.
    pub ca: S,
    /// PEM certificate (chain) of this instance.
    pub cert: S,
    /// PEM private key of this instance.
    pub key: S,
    /// "1.3" (default) or "1.2".
    pub min_version: Option<S>,
}

/// Where accepted messages are kept: the embedded store (one machine), or a NATS JetStream
/// cluster's replicated log in front of it (several nodes; DECISIONS D23).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// "embedded" (the default) or "jetstream".
    pub kind: S,
    /// Embedded: requests are appended to a write-ahead log and synced before they are
    /// applied, and the store is made durable behind (D28). Default false.
    pub write_ahead_log: Option<Spanned<bool>>,
    /// JetStream: the servers, `tls://host:port` (the instance's `[tls]` material,
    /// mutually authenticated), or `nats://127.0.0.1:port` on loopback only.
    #[serde(default)]
    pub servers: Vec<S>,
    /// JetStream: the log stream's name (the nodes of one instance share it).
    pub stream: Option<S>,
    /// JetStream: copies of the log the cluster keeps (1, 3 or 5).
    pub replicas: Option<Spanned<u64>>,
    /// JetStream: this node's name, unique among the instance's nodes.
    pub node: Option<S>,
    /// JetStream: a node that has not said how far it applied the log for this long no
    /// longer holds the log's entries back (D25); it comes back from a copy of another
    /// node's data directory.
    pub forget_node_after_hours: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEngine {
    /// Largest MLLP frame accepted, in bytes.
    pub max_frame_bytes: Option<Spanned<u64>>,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout_secs: Option<Spanned<u64>>,
    /// Concurrent inbound connections over all listeners.
    pub max_connections: Option<Spanned<u64>>,
    /// Concurrent inbound connections from one peer address.
    pub max_connections_per_peer: Option<Spanned<u64>>,
    /// A frame begun must end within this long, or the connection is closed.
    pub frame_timeout_secs: Option<Spanned<u64>>,
    /// Most messages committed in one group commit.
    pub group_commit_max: Option<Spanned<u64>>,
    /// Audit entries between two signed seals of the journal.
    pub audit_seal_every: Option<Spanned<u64>>,
    /// On SIGTERM, how long in-flight work may take before the process exits anyway.
    pub drain_secs: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: S,
    /// `IP:port` to bind.
    pub bind: S,
    /// Plain TCP. Only allowed on a loopback address.
    #[serde(default)]
    pub insecure: bool,
    /// Destination that receives the application ACKs (MSH-16) of messages received here.
    pub application_acks_to: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDestination {
    pub name: S,
    /// `host:port` of the MLLP receiver.
    pub address: S,
    #[serde(default)]
    pub insecure: bool,
    pub connect_timeout_secs: Option<Spanned<u64>>,
    pub ack_timeout_secs: Option<Spanned<u64>>,
    pub max_attempts: Option<Spanned<u64>>,
    pub max_age_secs: Option<Spanned<u64>>,
    pub backoff_initial_ms: Option<Spanned<u64>>,
    pub backoff_max_ms: Option<Spanned<u64>>,
    /// false: one connection per message (for receivers that mishandle a second message on
    /// a connection, such as npm node-hl7-server 2.5).
    pub keep_connection_open: Option<bool>,
    /// Name the destination's certificate must carry (TLS); default: the address's host.
    pub server_name: Option<S>,
    /// The `[[system]]` the destination's certificate must name (TLS): it receives only
    /// what that system's establishments own.
    pub system: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEstablishment {
    pub id: S,
    pub name: S,
    #[serde(default)]
    pub finess: Vec<S>,
    /// Destination name of this establishment's patient record system.
    pub record: S,
    /// Feed the DMP (needs `[dmp]`), with the establishment's certificate.
    pub dmp: Option<Spanned<RawEstablishmentDmp>>,
    /// Mail results by MSSanté (needs `[mssante]`), from this address, with this certificate.
    pub mssante: Option<Spanned<RawEstablishmentMssante>>,
    /// Practitioners outside the establishment who take part in a patient's care may read
    /// that patient's results (the results server).
    #[serde(default)]
    pub external_access: bool,
    #[serde(default)]
    pub identify: RawIdentify,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentify {
    #[serde(default)]
    pub sending_facilities: Vec<S>,
    #[serde(default)]
    pub placer_namespaces: Vec<S>,
    #[serde(default)]
    pub patient_authorities: Vec<S>,
    /// Assigning authority of the visit (PV1-19.4) and account (PID-18.4) numbers.
    #[serde(default)]
    pub visit_authorities: Vec<S>,
    #[serde(default)]
    pub facilities: Vec<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    #[serde(default)]
    pub orders_to: Vec<S>,
    #[serde(default)]
    pub adt_to: Vec<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTest {
    pub name: S,
    /// Messages accepted first (orders a result answers), outcome not checked.
    #[serde(default)]
    pub before: Vec<String>,
    pub input: Option<S>,
    /// Path relative to the routes file.
    pub input_file: Option<S>,
    pub expect: Spanned<RawExpect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpect {
    pub establishment: Option<S>,
    /// `no_evidence` or `conflict`.
    pub quarantine: Option<S>,
    pub destinations: Option<Vec<S>>,
    /// The message is refused (AR) with this HL7 table 0357 code.
    pub rejected: Option<Spanned<u64>>,
}
