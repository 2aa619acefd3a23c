//! `labroute`: the command line. Thin: everything is in the library.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use labroute::admin::http::{AdminClient, ClientError};
use labroute::admin::{self, AdminRequest};
use labroute::config::Config;
use labroute::hl7::ack::{self, AckCode};
use labroute::hl7::mllp::{Decoded, Decoder, frame};
use labroute::router::tests_runner::run_all;
use labroute::server::Server;
use labroute::store::writer::OperatorCommand;
use labroute::store::{Store, StoreHandle, WriterConfig};
use labroute::time::now_ms;

#[derive(Parser)]
#[command(
    name = "labroute",
    version,
    about = "Routes lab orders and results (HL7 v2 over MLLP) to the establishment that owns them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine.
    Serve {
        /// Routes directory (every *.toml) or file.
        #[arg(long, default_value = "routes")]
        routes: PathBuf,
        /// Data directory (the store).
        #[arg(long, default_value = "data")]
        data: PathBuf,
    },
    /// Check a routes directory and run its test cases.
    Validate {
        #[arg(default_value = "routes")]
        routes: PathBuf,
    },
    /// Send HL7 files over MLLP and print each ACK.
    Send {
        files: Vec<PathBuf>,
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// An MLLP receiver that stores each message in a directory and answers AA.
    Receive {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Quarantined messages.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Dead letters.
    Dead {
        #[command(subcommand)]
        action: DeadAction,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Map an ORU^R01 / OUL^R22 file to a FHIR R4 message Bundle (HL7 v2-to-FHIR IG) and
    /// print it; a message the mapping cannot express fully is an error naming the segment
    /// and field.
    Fhir {
        file: PathBuf,
        /// Time zone of timestamps that carry none: Europe/Paris, UTC, or +HH:MM. Default:
        /// `[fhir] zone` of the routes, else Europe/Paris.
        #[arg(long)]
        zone: Option<String>,
        /// Routes whose `[fhir] zone` is the default (when they load).
        #[arg(long, default_value = "routes")]
        routes: PathBuf,
        /// One line instead of indented JSON.
        #[arg(long)]
        compact: bool,
    },
    /// Store counts, counters since start, certificate expiry.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Load generator: messages over N MLLP connections, each waiting for every ACK, as
    /// fast as the ACKs come or at --rate; prints one summary line (--json: as JSON) with
    /// messages/s and ACK latency p50/p99/p99.9/max. With --receive it also stands in for
    /// the record systems and measures end to end (sent → delivered).
    Loadgen {
        #[arg(long, default_value = "127.0.0.1:2575")]
        to: String,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Messages in all (with --duration, at most this many).
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        /// Send for this many seconds (then --messages is only an upper bound).
        #[arg(long)]
        duration: Option<u64>,
        /// Messages per second in all; default: as fast as the ACKs come.
        #[arg(long)]
        rate: Option<f64>,
        /// results (ORU with 5-30 OBX, one in 50 carrying a 180 KB CDA), orders (OML^O21,
        /// ADT^A01/A08; for the dpi listener) or oru:N (ORU with N OBX).
        #[arg(long, default_value = "oru:5")]
        mix: labroute::loadgen::Mix,
        /// Establishment tags to cycle through: PID-3.4 TAG-IPP, MSH-4 TAG, placer
        /// namespace DPI-TAG (the example routes: CHNORD is ES1, CHSUD is ES2).
        #[arg(long, value_delimiter = ',', default_value = "CHNORD,CHSUD")]
        establishments: Vec<String>,
        /// Stand in for the record systems on these addresses (plain MLLP; the example
        /// routes' dpi-es1 and dpi-es2 are 127.0.0.1:2676,127.0.0.1:2677).
        #[arg(long, value_delimiter = ',')]
        receive: Vec<String>,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Development PKI (for development and tests only; see certs/README.md).
    Pki {
        #[command(subcommand)]
        action: PkiAction,
    },
    /// Makes the running instance read its TLS certificates and keys again (as SIGHUP does).
    ReloadTls {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Makes the running instance read its routes again (as SIGHUP does): validated whole
    /// first (errors name file, line and field; the routing test cases must pass); a refused
    /// one leaves the running routes in force. No connection is closed.
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The audit journal.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// A patient's opposition to the DMP feed, recorded or lifted in one establishment (on
    /// top of what the patient record system says in ZFA-9).
    Dmp {
        #[command(subcommand)]
        action: DmpAction,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Results access for practitioners outside the establishment: grant or withdraw
    /// access to a patient's results (a care-team member the results do not name).
    Access {
        #[command(subcommand)]
        action: AccessAction,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// MSSanté: a patient's opposition to sharing outside the establishment.
    Mssante {
        #[command(subcommand)]
        action: MssanteAction,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The MSSanté directory: `import` replaces the national entries (the Annuaire Santé's
    /// FHIR export: Bundle or NDJSON) or, with `--local`, the local ones (CSV
    /// `rpps,address[,type[,finess]]`).
    Directory {
        #[command(subcommand)]
        action: ImportAction,
        /// The file is the local CSV.
        #[arg(long, global = true)]
        local: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The MSSanté trust space's whitelist: `import` replaces it (its XML,
    /// `//Domaine/Nom`).
    Whitelist {
        #[command(subcommand)]
        action: ImportAction,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The operator log.
    Oplog {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Operator commands: through a running instance's admin endpoint (HTTPS, with an operator
/// certificate) when the routes configure one and it answers; else on the store directly,
/// as the host's administrator.
#[derive(clap::Args)]
struct AdminArgs {
    /// Data directory of the instance.
    #[arg(long, default_value = "data", global = true)]
    data: PathBuf,
    /// Its routes (for the admin address and the CA).
    #[arg(long, default_value = "routes", global = true)]
    routes: PathBuf,
    /// Operator certificate (PEM) for the admin endpoint.
    #[arg(long, env = "LABROUTE_CERT", global = true)]
    cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "LABROUTE_KEY", global = true)]
    key: Option<PathBuf>,
    /// Name the instance's certificate must carry (default: the admin address's IP).
    #[arg(long, global = true)]
    server_name: Option<String>,
}

/// MLLP over TLS for client commands (send, loadgen).
#[derive(clap::Args)]
struct TlsArgs {
    /// Client certificate (PEM): MLLP over TLS; with --key and --ca.
    #[arg(long, requires_all = ["key", "ca"])]
    cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// CA bundle that issued the server's certificate (PEM).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Name the server's certificate must carry.
    #[arg(long, default_value = "localhost")]
    server_name: String,
}

impl TlsArgs {
    fn client(self) -> Result<Option<labroute::loadgen::TlsClient>> {
        let (Some(cert), Some(key), Some(ca)) = (self.cert, self.key, self.ca) else {
            return Ok(None);
        };
        let files = labroute::tls::TlsFiles {
            ca,
            cert,
            key,
            min_version: labroute::tls::MinVersion::Tls12,
        };
        Ok(Some(labroute::loadgen::TlsClient {
            connector: tokio_rustls::TlsConnector::from(labroute::tls::client_config(&files)?),
            server_name: rustls::pki_types::ServerName::try_from(self.server_name)
                .context("--server-name")?,
        }))
    }
}

#[derive(Subcommand)]
enum AuditAction {
    /// Checks the hash chain; names the first altered, missing or reordered entry (exit 1).
    Verify,
    /// Entries by establishment, time window (Unix ms) and event.
    Query {
        #[arg(long = "establishment")]
        establishments: Vec<String>,
        #[arg(long)]
        from_ms: Option<u64>,
        #[arg(long)]
        to_ms: Option<u64>,
        #[arg(long)]
        event: Option<String>,
    },
}

#[derive(Subcommand)]
enum PkiAction {
    /// Generates a CA, the server certificate and one client certificate per system.
    Init {
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Systems that get a client certificate (SAN URI urn:labroute:system:<name>).
        #[arg(long = "system", default_values = ["sil", "dpi-es1", "dpi-es2", "operator"])]
        systems: Vec<String>,
        /// Practitioners (RPPS) that get a client certificate for the results server (SAN
        /// URI urn:labroute:rpps:<RPPS>).
        #[arg(long = "practitioner", default_values = ["10000000001"])]
        practitioners: Vec<String>,
        /// DNS names and IP addresses of the server certificate.
        #[arg(long = "server-name", default_values = ["localhost", "127.0.0.1"])]
        server_names: Vec<String>,
        /// Validity of the certificates in days (the CA: ten times as long).
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Replace an existing PKI.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum QuarantineAction {
    List,
    Show {
        seq: u64,
    },
    /// Release to a named establishment (routes it to that establishment's destinations).
    Release {
        seq: u64,
        #[arg(long)]
        to: String,
    },
    /// Discard (the bytes stay in the store).
    Discard {
        seq: u64,
        #[arg(long)]
        reason: String,
    },
}

/// The patient, by a local identifier of the establishment (PID-3: id and assigning
/// authority, as the messages carry it).
#[derive(clap::Args)]
struct PatientArgs {
    #[arg(long)]
    establishment: String,
    /// Assigning authority (PID-3.4), e.g. CHNORD-IPP.
    #[arg(long)]
    authority: String,
    /// The patient's identifier under it (PID-3.1).
    #[arg(long)]
    id: String,
}

#[derive(Subcommand)]
enum AccessAction {
    /// Let the practitioner read the patient's results.
    Grant {
        #[command(flatten)]
        patient: PatientArgs,
        /// The practitioner's RPPS (11 digits).
        #[arg(long)]
        rpps: String,
    },
    /// Withdraw a grant.
    Revoke {
        #[command(flatten)]
        patient: PatientArgs,
        #[arg(long)]
        rpps: String,
    },
}

#[derive(Subcommand)]
enum DmpAction {
    /// Record that the patient opposes the DMP feed: results are withheld from it.
    Oppose {
        #[command(flatten)]
        patient: PatientArgs,
    },
    /// Lift an opposition recorded with `oppose`.
    Lift {
        #[command(flatten)]
        patient: PatientArgs,
    },
}

#[derive(Subcommand)]
enum MssanteAction {
    /// Record that the patient opposes sharing his results outside the establishment: no
    /// mail to professionals, nothing served to practitioners outside.
    Oppose {
        #[command(flatten)]
        patient: PatientArgs,
    },
    /// Lift an opposition recorded with `oppose`.
    Lift {
        #[command(flatten)]
        patient: PatientArgs,
    },
    /// Record a read receipt: FILE is the notification mail (RFC 8098) as received in the
    /// establishment's mailbox. The sender gets a ZAM^Z03 when it asked (ACK_LECTURE_MSS).
    Mdn { file: PathBuf },
}

#[derive(Subcommand)]
enum ImportAction {
    /// Read the file and replace what the instance holds (all or nothing).
    Import { file: PathBuf },
}

#[derive(Subcommand)]
enum DeadAction {
    List,
    /// Queue a dead letter again.
    Retry {
        destination: String,
        seq: u64,
    },
}

fn local_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LABROUTE_LOG")
        .unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // One JSON object per line for a log collector; text otherwise.
    if std::env::var("LABROUTE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cli))
}

fn load(routes: &Path) -> Result<Config> {
    Config::load(routes).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { routes, data } => serve(&routes, &data).await,
        Command::Validate { routes } => {
            let cfg = load(&routes)?;
            let failures = run_all(&cfg);
            for f in &failures {
                eprintln!("FAIL {f}");
            }
            println!(
                "{}: {} establishment(s), {} listener(s), {} destination(s); routes digest {} (the same on every node of a JetStream instance, D24); {} routing test(s): {} passed, {} failed",
                routes.display(),
                cfg.establishments.len(),
                cfg.listeners.len(),
                cfg.destinations.len(),
                cfg.routing_digest(),
                cfg.tests.len(),
                cfg.tests.len() - failures.len(),
                failures.len()
            );
            if failures.is_empty() {
                Ok(())
            } else {
                bail!("routing tests failed")
            }
        }
        Command::Send {
            files,
            to,
            timeout_secs,
            tls,
        } => {
            send(
                &files,
                &to,
                Duration::from_secs(timeout_secs),
                tls.client()?,
            )
            .await
        }
        Command::Receive { listen, out } => receive(&listen, &out).await,
        Command::Quarantine { action, admin } => {
            let req = match action {
                QuarantineAction::List => AdminRequest::QuarantineList,
                QuarantineAction::Show { seq } => AdminRequest::QuarantineShow { seq },
                QuarantineAction::Release { seq, to } => AdminRequest::Command {
                    command: OperatorCommand::Release {
                        seq,
                        establishment: to,
                    },
                },
                QuarantineAction::Discard { seq, reason } => AdminRequest::Command {
                    command: OperatorCommand::Discard { seq, reason },
                },
            };
            admin_call(&admin, req).await
        }
        Command::Dead { action, admin } => {
            let req = match action {
                DeadAction::List => AdminRequest::DeadList,
                DeadAction::Retry { destination, seq } => AdminRequest::Command {
                    command: OperatorCommand::RetryDead { destination, seq },
                },
            };
            admin_call(&admin, req).await
        }
        Command::Dmp { action, admin } => {
            let (p, opposed) = match action {
                DmpAction::Oppose { patient } => (patient, true),
                DmpAction::Lift { patient } => (patient, false),
            };
            let command = OperatorCommand::DmpOpposition {
                establishment: p.establishment,
                authority: p.authority,
                id: p.id,
                opposed,
            };
            admin_call(&admin, AdminRequest::Command { command }).await
        }
        Command::Mssante { action, admin } => {
            let command = match action {
                MssanteAction::Mdn { file } => {
                    let raw = std::fs::read(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    let mdn = labroute::mssante::mdn::parse(&raw)
                        .with_context(|| format!("{}", file.display()))?;
                    OperatorCommand::MailRead {
                        message_id: mdn.original_message_id,
                        disposition: mdn.disposition,
                    }
                }
                MssanteAction::Oppose { patient: p } => OperatorCommand::SharingOpposition {
                    establishment: p.establishment,
                    authority: p.authority,
                    id: p.id,
                    opposed: true,
                },
                MssanteAction::Lift { patient: p } => OperatorCommand::SharingOpposition {
                    establishment: p.establishment,
                    authority: p.authority,
                    id: p.id,
                    opposed: false,
                },
            };
            admin_call(&admin, AdminRequest::Command { command }).await
        }
        Command::Directory {
            action: ImportAction::Import { file },
            local,
            admin,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let name = file.display().to_string();
            let (source, mailboxes) = if local {
                let m = labroute::mssante::directory::parse_csv(&name, &text)?;
                (labroute::mssante::Source::Local, m)
            } else {
                let m = labroute::mssante::directory::parse_fhir(&name, &text)?;
                (labroute::mssante::Source::National, m)
            };
            let command = OperatorCommand::DirectoryImport { source, mailboxes };
            admin_call(&admin, AdminRequest::Command { command }).await
        }
        Command::Whitelist {
            action: ImportAction::Import { file },
            admin,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let domains = labroute::mssante::whitelist::parse(&file.display().to_string(), &text)?;
            let command = OperatorCommand::WhitelistImport { domains };
            admin_call(&admin, AdminRequest::Command { command }).await
        }
        Command::Access { action, admin } => {
            let (p, rpps, granted) = match action {
                AccessAction::Grant { patient, rpps } => (patient, rpps, true),
                AccessAction::Revoke { patient, rpps } => (patient, rpps, false),
            };
            let command = OperatorCommand::CareGrant {
                establishment: p.establishment,
                authority: p.authority,
                id: p.id,
                rpps,
                granted,
            };
            admin_call(&admin, AdminRequest::Command { command }).await
        }
        Command::Status { admin } => admin_call(&admin, AdminRequest::Status).await,
        Command::Oplog { admin } => admin_call(&admin, AdminRequest::OperatorLog).await,
        Command::ReloadTls { admin } => admin_call(&admin, AdminRequest::ReloadTls).await,
        Command::Reload { admin } => admin_call(&admin, AdminRequest::ReloadRoutes).await,
        Command::Audit { action, admin } => match action {
            AuditAction::Verify => {
                let v = admin_value(&admin, AdminRequest::AuditVerify).await?;
                match v.get("first_bad").filter(|b| !b.is_null()) {
                    None => {
                        println!(
                            "audit journal intact: {} entries, {} signed seals verified, {} sealed with another certificate",
                            v.get("entries").cloned().unwrap_or_default(),
                            v.get("seals_verified").cloned().unwrap_or_default(),
                            v.get("seals_other_certificate")
                                .cloned()
                                .unwrap_or_default()
                        );
                        Ok(())
                    }
                    Some(b) => bail!(
                        "audit journal NOT intact: entry {} is {}",
                        b.get(0).cloned().unwrap_or_default(),
                        b.get(1).and_then(|x| x.as_str()).unwrap_or_default()
                    ),
                }
            }
            AuditAction::Query {
                establishments,
                from_ms,
                to_ms,
                event,
            } => {
                let filter = labroute::store::audit::AuditFilter {
                    establishments,
                    from_ms,
                    to_ms,
                    event,
                };
                admin_call(&admin, AdminRequest::AuditQuery { filter }).await
            }
        },
        Command::Fhir {
            file,
            zone,
            routes,
            compact,
        } => {
            let zone = match zone {
                Some(z) => labroute::fhir::Zone::parse(&z).ok_or_else(|| {
                    anyhow::anyhow!("--zone {z}: expected Europe/Paris, UTC or +HH:MM")
                })?,
                None => Config::load(&routes)
                    .map(|c| c.fhir.zone)
                    .unwrap_or(labroute::fhir::Zone::EuropeParis),
            };
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let frame = labroute::hl7::message::prepare(&bytes);
            match labroute::fhir::result_bundle_json(&frame, zone, !compact) {
                Ok(json) => {
                    println!("{json}");
                    Ok(())
                }
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    std::process::exit(2);
                }
            }
        }
        Command::Pki {
            action:
                PkiAction::Init {
                    out,
                    systems,
                    practitioners,
                    server_names,
                    days,
                    force,
                },
        } => {
            let files = labroute::pki::generate(&labroute::pki::PkiSpec {
                out,
                systems,
                practitioners,
                server_names,
                days,
                now_ms: now_ms(),
                force,
                ca_name: "labroute development CA".into(),
            })?;
            for f in files {
                println!("{}", f.display());
            }
            Ok(())
        }
        Command::Loadgen {
            to,
            connections,
            messages,
            duration,
            rate,
            mix,
            establishments,
            receive,
            json,
            tls,
        } => {
            let tls = tls.client()?;
            let hint = if tls.is_none() {
                NO_ACK_PLAIN
            } else {
                NO_ACK_TLS
            };
            let resolve = |a: String| async move {
                tokio::net::lookup_host(&a)
                    .await
                    .with_context(|| format!("resolving {a}"))?
                    .next()
                    .with_context(|| format!("{a} resolves to no address"))
            };
            let mut receivers = Vec::new();
            for r in receive {
                receivers.push(resolve(r).await?);
            }
            let spec = labroute::loadgen::LoadSpec {
                connections,
                duration: duration.map(Duration::from_secs),
                rate,
                mix,
                establishments,
                run_id: format!("LG{}", now_ms()),
                tls,
                receivers,
                ..labroute::loadgen::LoadSpec::new(resolve(to).await?, messages)
            };
            let report = labroute::loadgen::run(spec).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report}");
            }
            let undelivered = report.end_to_end.as_ref().map_or(0, |e| e.undelivered);
            if report.failed > 0 || report.refused > 0 || undelivered > 0 {
                anyhow::bail!(
                    "{} refused, {} without an ACK{}, {undelivered} accepted but not delivered{}",
                    report.refused,
                    report.failed,
                    if report.failed > 0 {
                        format!(" ({hint})")
                    } else {
                        String::new()
                    },
                    if undelivered > 0 {
                        " (are the routes' record destinations the --receive addresses? \
                         `labroute status` shows what waits where)"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
    }
}

/// What to say when a plain-TCP client gets no ACK.
const NO_ACK_PLAIN: &str =
    "no ACK: if the listener uses TLS (the default routes do), pass --cert, --key and --ca";
/// What to say when a TLS client gets no ACK.
const NO_ACK_TLS: &str =
    "no ACK: the server may have refused this client certificate (see its log)";

async fn serve(routes: &Path, data: &Path) -> Result<()> {
    let cfg = Arc::new(load(routes)?);
    let server = Server::start_with(cfg.clone(), data.to_owned(), Some(routes.to_owned())).await?;
    tracing::info!(routes = %routes.display(), data = %data.display(), establishments = cfg.establishments.len(), "labroute started");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                // The routes (validated whole first; refused, the running ones stay), then
                // the certificates; in a task of its own, so that a SIGTERM meanwhile is
                // heard at once.
                let (reloader, tls) = (server.reloader.clone(), server.tls.clone());
                tokio::spawn(async move {
                    match reloader.reload(labroute::reload::Source::Disk).await {
                        Ok(summary) => tracing::info!(%summary, "SIGHUP: routes reloaded"),
                        Err(e) => tracing::error!(error = %e, "SIGHUP: routes not reloaded"),
                    }
                    if let Some(t) = tls {
                        match t.reload() {
                            Ok(_) => tracing::info!("SIGHUP: TLS certificates and keys reloaded"),
                            Err(e) => tracing::error!(error = %e, "SIGHUP: TLS reload failed; the previous certificates stay in use"),
                        }
                    }
                });
            }
        }
    }
    tracing::info!(
        drain_secs = cfg.engine.drain.as_secs(),
        "shutting down: no new connections; in-flight messages finish"
    );
    if server.shutdown().await {
        tracing::info!("stopped: every connection answered, the store synced and closed");
    } else {
        // Nothing acknowledged is lost (an ACK follows its commit); a sender cut off
        // before its ACK sends the message again.
        tracing::warn!("stopped at the end of the drain with work still in flight");
    }
    Ok(())
}

/// Runs an admin request on the running instance's admin endpoint or, when the routes
/// configure none or nothing answers there, directly on the store as the host's
/// administrator (the store is locked while an instance runs, so this cannot race one).
async fn admin_value(a: &AdminArgs, req: AdminRequest) -> Result<serde_json::Value> {
    let cfg = Arc::new(load(&a.routes)?);
    if let (Some(endpoint), Some(tls)) = (&cfg.admin, &cfg.tls) {
        let ip = if endpoint.bind.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            endpoint.bind.ip()
        };
        let address = std::net::SocketAddr::new(ip, endpoint.bind.port()).to_string();
        let server_name = match &a.server_name {
            Some(n) => {
                rustls::pki_types::ServerName::try_from(n.clone()).context("--server-name")?
            }
            None => rustls::pki_types::ServerName::IpAddress(ip.into()),
        };
        let client = match (&a.cert, &a.key) {
            (Some(cert), Some(key)) => {
                let files = labroute::tls::TlsFiles {
                    ca: tls.ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                    min_version: tls.min_version,
                };
                Some(AdminClient {
                    address: address.clone(),
                    connector: tokio_rustls::TlsConnector::from(labroute::tls::client_config(
                        &files,
                    )?),
                    server_name,
                })
            }
            _ => None,
        };
        match client {
            Some(c) => match c.call(&req).await {
                Ok(v) => return Ok(v),
                Err(ClientError::NotRunning(..)) => {}
                Err(e) => bail!("{e}"),
            },
            None => {
                if TcpStream::connect(&address).await.is_ok() {
                    bail!(
                        "an instance runs with its admin endpoint on {address}: pass an operator certificate with --cert and --key (or LABROUTE_CERT and LABROUTE_KEY); the development one is certs/operator.pem"
                    );
                }
            }
        }
    }
    // Never create a store here: a command run from the wrong directory would show an empty
    // one instead of saying where the data is.
    if !a.data.join(labroute::store::STORE_FILE).is_file() {
        bail!(
            "no store in {}: pass --data with the instance's data directory (and --routes with its routes)",
            a.data.display()
        );
    }
    let store = Store::open(&a.data).map_err(|e| match e {
        labroute::store::StoreError::InUse(_) if cfg.admin.is_none() => {
            anyhow::anyhow!("{e}; these routes configure no [admin] endpoint")
        }
        e => e.into(),
    })?;
    // On JetStream, a command goes through the log like a running node's (D23).
    let handle = StoreHandle::open(
        store,
        cfg,
        WriterConfig {
            max_batch: 16,
            sealer: None,
        },
    )
    .await?;
    let who = labroute::policy::Operator {
        name: format!("local:{}", local_user()),
        scope: labroute::policy::OperatorScope::Instance,
    };
    let status = matches!(req, AdminRequest::Status);
    let mut v = admin::execute(req, &handle, None, &who).await?;
    // This process's counters say nothing about an instance: say none runs.
    if let (true, serde_json::Value::Object(o)) = (status, &mut v) {
        o.remove("since_start");
        o.remove("tls_cert_not_after_unix");
        o.insert(
            "instance".into(),
            "not running (store read directly)".into(),
        );
    }
    Ok(v)
}

/// Runs an admin request and prints its value.
async fn admin_call(a: &AdminArgs, req: AdminRequest) -> Result<()> {
    match admin_value(a, req).await? {
        serde_json::Value::String(s) => println!("{s}"),
        other => println!("{}", serde_json::to_string_pretty(&other)?),
    }
    Ok(())
}

async fn read_frame<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let mut dec = Decoder::new(16 * 1024 * 1024);
    let mut buf = vec![0u8; 8192];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .context("no ACK before the timeout")??;
        if n == 0 {
            bail!("peer closed the connection before answering");
        }
        if let Some(u) = dec.feed(&buf[..n]).into_iter().next() {
            return match u {
                Decoded::Frame(f) => Ok(f),
                Decoded::Oversized { .. } => bail!("answer too large"),
            };
        }
    }
}

async fn send(
    files: &[PathBuf],
    to: &str,
    timeout: Duration,
    tls: Option<labroute::loadgen::TlsClient>,
) -> Result<()> {
    if files.is_empty() {
        bail!("no file to send");
    }
    let tcp = TcpStream::connect(to)
        .await
        .with_context(|| format!("cannot connect to {to}"))?;
    match tls {
        None => send_over(tcp, files, timeout, NO_ACK_PLAIN).await,
        Some(t) => {
            let s = t
                .connector
                .connect(t.server_name, tcp)
                .await
                .with_context(|| format!("TLS handshake with {to}"))?;
            send_over(s, files, timeout, NO_ACK_TLS).await
        }
    }
}

async fn send_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    files: &[PathBuf],
    timeout: Duration,
    hint: &'static str,
) -> Result<()> {
    let mut all_ok = true;
    for f in files {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        stream.write_all(&frame(&bytes)).await?;
        stream.flush().await?;
        let ack = read_frame(&mut stream, timeout).await.context(hint)?;
        let code = ack::read_peer_ack(&ack).map(|(c, _)| c);
        if !matches!(code, Some(AckCode::AA | AckCode::CA)) {
            all_ok = false;
        }
        println!(
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&ack)
                .trim_end()
                .replace('\r', "\n    ")
        );
    }
    if all_ok {
        Ok(())
    } else {
        bail!("at least one message was not accepted")
    }
}

async fn receive(listen: &str, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("receiving on {}", listener.local_addr()?);
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let out = out.to_owned();
        let counter = counter.clone();
        tokio::spawn(labroute::loadgen::answer_as_record_system(
            stream,
            "RCV",
            move |f, _| {
                let i = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                std::fs::write(out.join(format!("{i:08}.hl7")), f).ok()?;
                Some(i)
            },
        ));
    }
}
