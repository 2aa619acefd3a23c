//! The admin endpoint: HTTPS with mutual TLS. The client certificate must name a configured
//! system whose role is `operator`; its establishments are the caller's scope. JSON in and
//! out; errors are `{"error": "..."}` with the status of [`AdminError::status`].
//!
//! | method | path | request |
//! |---|---|---|
//! | GET | `/status` | counts, counters since start, certificate expiry |
//! | GET | `/quarantine` | quarantined messages in scope |
//! | GET | `/quarantine/{seq}` | one message, with its bytes (journalled as a read) |
//! | POST | `/quarantine/{seq}/release` | body `{"establishment": "ES1"}` |
//! | POST | `/quarantine/{seq}/discard` | body `{"reason": "..."}` |
//! | GET | `/dead` | dead letters in scope |
//! | POST | `/dead/{destination}/{seq}/retry` | queue a dead letter again |
//! | GET | `/operator-log` | operator actions in scope |
//! | GET | `/audit?establishment=ES1&from_ms=&to_ms=&event=` | journal entries in scope |
//! | GET | `/audit/verify` | checks the journal's chain and seals |
//! | POST | `/access/grant` | `{"establishment", "authority", "id", "rpps", "granted"}` |
//! | POST | `/dmp/opposition` | `{"establishment", "authority", "id", "opposed"}` |
//! | POST | `/mssante/opposition` | `{"establishment", "authority", "id", "opposed"}` |
//! | POST | `/mssante/directory` | `{"source": "national" \| "local", "mailboxes"}` (whole-instance operators) |
//! | POST | `/mssante/whitelist` | `{"domains"}` (whole-instance operators) |
//! | POST | `/mssante/mdn` | a read receipt: the mail (RFC 8098) or `{"message_id", "disposition"}` |
//! | POST | `/reload` | reads the routes again, validated whole first (whole-instance operators) |
//! | POST | `/reload-tls` | reads certificates and keys again (whole-instance operators) |
//! | GET | `/metrics` | Prometheus text; operators and `monitor` systems |

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{AdminError, AdminRequest, execute};
use crate::https::Peer;
use crate::model::percent_encode;
use crate::policy::{Operator, OperatorScope};
use crate::sources::accept::TlsListener;
use crate::store::StoreHandle;
use crate::store::audit::AuditFilter;
use crate::store::writer::OperatorCommand;
use crate::tls::PeerIdentity;

/// Largest request body.
const MAX_BODY: usize = 64 * 1024;
/// Largest body of an operator's directory or whitelist import (the national MSSanté
/// directory's mailboxes, as the CLI sends them).
const MAX_IMPORT_BODY: usize = 512 * 1024 * 1024;
/// Concurrent admin connections.
const MAX_CONNECTIONS: usize = 32;
/// Name the refused handshakes and the journal give this endpoint.
pub const LISTENER: &str = "admin";

impl AdminRequest {
    /// The method, path (with query) and JSON body that carry this request.
    pub fn to_http(&self) -> (Method, String, Option<Value>) {
        match self {
            AdminRequest::Status => (Method::GET, "/status".into(), None),
            AdminRequest::QuarantineList => (Method::GET, "/quarantine".into(), None),
            AdminRequest::QuarantineShow { seq } => {
                (Method::GET, format!("/quarantine/{seq}"), None)
            }
            AdminRequest::DeadList => (Method::GET, "/dead".into(), None),
            AdminRequest::OperatorLog => (Method::GET, "/operator-log".into(), None),
            AdminRequest::AuditVerify => (Method::GET, "/audit/verify".into(), None),
            AdminRequest::ReloadTls => (Method::POST, "/reload-tls".into(), None),
            AdminRequest::ReloadRoutes => (Method::POST, "/reload".into(), None),
            AdminRequest::AuditQuery { filter } => {
                let mut q: Vec<String> = filter
                    .establishments
                    .iter()
                    .map(|e| format!("establishment={}", percent_encode(e)))
                    .collect();
                if let Some(t) = filter.from_ms {
                    q.push(format!("from_ms={t}"));
                }
                if let Some(t) = filter.to_ms {
                    q.push(format!("to_ms={t}"));
                }
                if let Some(e) = &filter.event {
                    q.push(format!("event={}", percent_encode(e)));
                }
                let path = if q.is_empty() {
                    "/audit".to_owned()
                } else {
                    format!("/audit?{}", q.join("&"))
                };
                (Method::GET, path, None)
            }
            AdminRequest::Command { command } => match command {
                OperatorCommand::Release { seq, establishment } => (
                    Method::POST,
                    format!("/quarantine/{seq}/release"),
                    Some(json!({ "establishment": establishment })),
                ),
                OperatorCommand::Discard { seq, reason } => (
                    Method::POST,
                    format!("/quarantine/{seq}/discard"),
                    Some(json!({ "reason": reason })),
                ),
                OperatorCommand::RetryDead { destination, seq } => (
                    Method::POST,
                    format!("/dead/{}/{seq}/retry", percent_encode(destination)),
                    None,
                ),
                OperatorCommand::CareGrant {
                    establishment,
                    authority,
                    id,
                    rpps,
                    granted,
                } => (
                    Method::POST,
                    "/access/grant".into(),
                    Some(json!({
                        "establishment": establishment,
                        "authority": authority,
                        "id": id,
                        "rpps": rpps,
                        "granted": granted,
                    })),
                ),
                OperatorCommand::SharingOpposition {
                    establishment,
                    authority,
                    id,
                    opposed,
                } => (
                    Method::POST,
                    "/mssante/opposition".into(),
                    Some(json!({
                        "establishment": establishment,
                        "authority": authority,
                        "id": id,
                        "opposed": opposed,
                    })),
                ),
                OperatorCommand::DirectoryImport { source, mailboxes } => (
                    Method::POST,
                    "/mssante/directory".into(),
                    Some(json!({ "source": source, "mailboxes": mailboxes })),
                ),
                OperatorCommand::MailRead {
                    message_id,
                    disposition,
                } => (
                    Method::POST,
                    "/mssante/mdn".into(),
                    Some(json!({ "message_id": message_id, "disposition": disposition })),
                ),
                OperatorCommand::WhitelistImport { domains } => (
                    Method::POST,
                    "/mssante/whitelist".into(),
                    Some(json!({ "domains": domains })),
                ),
                OperatorCommand::DmpOpposition {
                    establishment,
                    authority,
                    id,
                    opposed,
                } => (
                    Method::POST,
                    "/dmp/opposition".into(),
                    Some(json!({
                        "establishment": establishment,
                        "authority": authority,
                        "id": id,
                        "opposed": opposed,
                    })),
                ),
            },
        }
    }

    /// Reads a request from its method, path, query and body.
    pub fn from_http(
        method: &Method,
        path: &str,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<AdminRequest, AdminError> {
        let segs: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .map(decode)
            .collect::<Result<_, _>>()?;
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let get = method == Method::GET;
        let post = method == Method::POST;
        let seq = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| AdminError::BadRequest(format!("{s:?} is not a message number")))
        };
        // The body, read once, when a command needs it.
        let json = std::cell::OnceCell::new();
        let member = |name: &str| -> Result<Option<Value>, AdminError> {
            json.get_or_init(|| serde_json::from_slice::<Value>(body).map_err(|e| e.to_string()))
                .as_ref()
                .map(|v| v.get(name).cloned())
                .map_err(|e| AdminError::BadRequest(format!("the body must be a JSON object: {e}")))
        };
        let field = |name: &str| -> Result<String, AdminError> {
            member(name)?
                .as_ref()
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
                .map(str::to_owned)
                .ok_or_else(|| {
                    AdminError::BadRequest(format!("the body needs a non-empty string {name:?}"))
                })
        };
        let flag = |name: &str| -> Result<bool, AdminError> {
            member(name)?
                .as_ref()
                .and_then(Value::as_bool)
                .ok_or_else(|| AdminError::BadRequest(format!("the body needs a boolean {name:?}")))
        };
        let wrong = || AdminError::MethodNotAllowed(format!("{method} is not allowed on {path}"));
        let req = match segs.as_slice() {
            ["status"] if get => AdminRequest::Status,
            ["quarantine"] if get => AdminRequest::QuarantineList,
            ["quarantine", n] if get => AdminRequest::QuarantineShow { seq: seq(n)? },
            ["quarantine", n, "release"] if post => AdminRequest::Command {
                command: OperatorCommand::Release {
                    seq: seq(n)?,
                    establishment: field("establishment")?,
                },
            },
            ["quarantine", n, "discard"] if post => AdminRequest::Command {
                command: OperatorCommand::Discard {
                    seq: seq(n)?,
                    reason: field("reason")?,
                },
            },
            ["dead"] if get => AdminRequest::DeadList,
            ["dead", d, n, "retry"] if post => AdminRequest::Command {
                command: OperatorCommand::RetryDead {
                    destination: (*d).to_owned(),
                    seq: seq(n)?,
                },
            },
            ["operator-log"] if get => AdminRequest::OperatorLog,
            ["audit", "verify"] if get => AdminRequest::AuditVerify,
            ["audit"] if get => AdminRequest::AuditQuery {
                filter: audit_filter(query.unwrap_or(""))?,
            },
            ["reload-tls"] if post => AdminRequest::ReloadTls,
            ["reload"] if post => AdminRequest::ReloadRoutes,
            ["access", "grant"] if post => AdminRequest::Command {
                command: OperatorCommand::CareGrant {
                    establishment: field("establishment")?,
                    authority: field("authority")?,
                    id: field("id")?,
                    rpps: field("rpps")?,
                    granted: flag("granted")?,
                },
            },
            ["dmp", "opposition"] if post => AdminRequest::Command {
                command: OperatorCommand::DmpOpposition {
                    establishment: field("establishment")?,
                    authority: field("authority")?,
                    id: field("id")?,
                    opposed: flag("opposed")?,
                },
            },
            ["mssante", "opposition"] if post => AdminRequest::Command {
                command: OperatorCommand::SharingOpposition {
                    establishment: field("establishment")?,
                    authority: field("authority")?,
                    id: field("id")?,
                    opposed: flag("opposed")?,
                },
            },
            ["mssante", "directory"] if post => AdminRequest::Command {
                command: OperatorCommand::DirectoryImport {
                    source: member("source")?
                        .and_then(|v| serde_json::from_value(v).ok())
                        .ok_or_else(|| {
                            AdminError::BadRequest(
                                "the body needs \"source\": \"national\" or \"local\"".into(),
                            )
                        })?,
                    mailboxes: member("mailboxes")?
                        .and_then(|v| serde_json::from_value(v).ok())
                        .ok_or_else(|| {
                            AdminError::BadRequest("the body needs a list \"mailboxes\"".into())
                        })?,
                },
            },
            // A JSON object, or the read receipt itself as received (RFC 8098), as a mail
            // gateway posts it.
            ["mssante", "mdn"] if post => {
                let (message_id, disposition) = if body.first() == Some(&b'{') {
                    let disposition = field("disposition")?;
                    (
                        field("message_id")?,
                        crate::mssante::mdn::Disposition::from_name(&disposition).ok_or_else(
                            || {
                                AdminError::BadRequest(
                                    "\"disposition\" is \"displayed\" or \"deleted\"".into(),
                                )
                            },
                        )?,
                    )
                } else {
                    let mdn = crate::mssante::mdn::parse(body)
                        .map_err(|e| AdminError::BadRequest(e.to_string()))?;
                    (mdn.original_message_id, mdn.disposition)
                };
                AdminRequest::Command {
                    command: OperatorCommand::MailRead {
                        message_id,
                        disposition,
                    },
                }
            }
            ["mssante", "whitelist"] if post => AdminRequest::Command {
                command: OperatorCommand::WhitelistImport {
                    domains: member("domains")?
                        .and_then(|v| serde_json::from_value(v).ok())
                        .ok_or_else(|| {
                            AdminError::BadRequest("the body needs a list \"domains\"".into())
                        })?,
                },
            },
            ["status"]
            | ["mssante", "opposition" | "directory" | "whitelist" | "mdn"]
            | ["quarantine"]
            | ["quarantine", _]
            | ["quarantine", _, "release" | "discard"]
            | ["dead"]
            | ["dead", _, _, "retry"]
            | ["operator-log"]
            | ["audit"]
            | ["audit", "verify"]
            | ["reload-tls"]
            | ["reload"]
            | ["dmp", "opposition"]
            | ["access", "grant"] => return Err(wrong()),
            _ => return Err(AdminError::NotFound(format!("no such path: {path}"))),
        };
        Ok(req)
    }
}

fn audit_filter(query: &str) -> Result<AuditFilter, AdminError> {
    let mut f = AuditFilter::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v)?;
        let ms = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| AdminError::BadRequest(format!("{k}: {v:?} is not Unix milliseconds")))
        };
        match k {
            "establishment" => f.establishments.push(v),
            "from_ms" => f.from_ms = Some(ms(&v)?),
            "to_ms" => f.to_ms = Some(ms(&v)?),
            "event" => f.event = Some(v),
            other => {
                return Err(AdminError::BadRequest(format!(
                    "unknown query parameter {other:?} (establishment, from_ms, to_ms, event)"
                )));
            }
        }
    }
    Ok(f)
}

/// Decodes `%XX` (and `+` as a space, as forms send it).
fn decode(s: &str) -> Result<String, AdminError> {
    crate::model::percent_decode(s, true)
        .ok_or_else(|| AdminError::BadRequest(format!("{s:?} is not well percent-encoded")))
}

/// Who is calling: an operator, or a monitor (metrics only).
#[derive(Debug, Clone)]
enum Caller {
    Operator(Operator),
    Monitor(String),
    /// A peer allowed without a certificate (`[admin] without_certificate`) that gave
    /// none: metrics and health only.
    Anonymous,
}

/// Ready when the store answers a read and its writer runs (the MLLP listeners are bound
/// before the admin endpoint starts): 200, else 503, with each check.
fn readiness(store: &StoreHandle) -> (StatusCode, Value) {
    let read = store
        .store()
        .counts()
        .map(|_| ())
        .map_err(|e| e.to_string());
    let writer = !store.is_closed();
    // On JetStream (D23): nothing is acknowledged without the log.
    let log = store.cluster().map(|c| c.state());
    let ready = read.is_ok() && writer && log.is_none_or(|(up, _, halted)| up && halted.is_none());
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "ready": ready,
        "store": read.err().unwrap_or_else(|| "ok".into()),
        "writer": if writer { "ok" } else { "stopped" },
        "config": "loaded",
    });
    if let Some((up, applied, halted)) = log {
        body["log"] = json!({
            "connection": if up { "connected" } else { "disconnected: messages are answered with errors until it is back" },
            "applied": applied,
        });
        // D24: stopped at an entry putting in force routes this node does not have.
        if let Some((at, wanted)) = halted {
            body["log"]["stopped"] = json!(format!(
                "at entry {at}, which puts in force routes {wanted}; this node has {}: reload it with the routes in force in the cluster",
                store.config().routing_digest()
            ));
        }
    }
    (status, body)
}

/// Who is calling, from the client certificate's identity.
fn caller(store: &StoreHandle, id: &PeerIdentity) -> Result<Caller, String> {
    if id.is_anonymous() {
        return Ok(Caller::Anonymous);
    }
    let cfg = store.config();
    let sys = cfg
        .system_of(id)
        .ok_or_else(|| format!("certificate {} names no configured system", id.label()))?;
    match sys.role {
        crate::config::Role::Operator => Ok(Caller::Operator(Operator {
            name: sys.name.clone(),
            scope: OperatorScope::of_system(sys, &cfg),
        })),
        crate::config::Role::Monitor => Ok(Caller::Monitor(sys.name.clone())),
        other => Err(format!(
            "system {:?} has role {}, not operator or monitor",
            sys.name,
            other.as_str()
        )),
    }
}

/// Serves the admin endpoint until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    store: StoreHandle,
    tls: TlsListener,
    shutdown: watch::Receiver<bool>,
    reloader: crate::reload::Reloader,
) {
    let live = Arc::new(super::Live {
        tls: tls.state.clone(),
        reloader,
    });
    let handler_store = store.clone();
    let state = live;
    crate::https::serve(
        listener,
        LISTENER,
        MAX_CONNECTIONS,
        store,
        tls,
        shutdown,
        move |req: Request<Incoming>, peer: Arc<Peer>| {
            let store = handler_store.clone();
            let state = state.clone();
            async move {
                let who = caller(&store, &peer.identity);
                respond(req, &store, &state, &who, &peer.address).await
            }
        },
    )
    .await;
}

async fn respond(
    req: Request<Incoming>,
    store: &StoreHandle,
    live: &super::Live,
    who: &Result<Caller, String>,
    peer: &str,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    // Health: any peer that got this far (a certificate of ours, or an address allowed
    // without one).
    if method == Method::GET && path == "/healthz" {
        return json_response(StatusCode::OK, &json!({ "status": "alive" }));
    }
    if method == Method::GET && path == "/readyz" {
        let (status, body) = readiness(store);
        return json_response(status, &body);
    }
    if path == "/metrics" && method == Method::GET && who.is_ok() {
        crate::telemetry::refresh(store.store(), &store.config());
        return match crate::telemetry::render() {
            Some(text) => crate::https::response(StatusCode::OK, "text/plain; version=0.0.4", text),
            None => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "error": "no metrics recorder in this process" }),
            ),
        };
    }
    // A peer without a certificate gets nothing else, and no journal entry (an address
    // allowed for metrics must not be able to fill the journal).
    if matches!(who, Ok(Caller::Anonymous)) {
        return json_response(
            StatusCode::FORBIDDEN,
            &json!({ "error": "no client certificate: only /metrics, /healthz and /readyz are open to this address" }),
        );
    }
    let who = match who {
        Ok(Caller::Operator(o)) => Ok(o),
        Ok(Caller::Monitor(name)) => Err(format!(
            "system {name:?} has role monitor: it may read /metrics only"
        )),
        Ok(Caller::Anonymous) => Err("no client certificate".to_owned()),
        Err(e) => Err(e.clone()),
    };
    // Only an operator of the whole instance may import: only his body may be that large.
    let importer = matches!(&who, Ok(o) if o.scope.is_instance());
    let limit = if importer && matches!(path.as_str(), "/mssante/directory" | "/mssante/whitelist")
    {
        MAX_IMPORT_BODY
    } else {
        MAX_BODY
    };
    let result = async {
        let body = Limited::new(req.into_body(), limit)
            .collect()
            .await
            .map_err(|_| {
                AdminError::BadRequest(format!("the body is unreadable or over {limit} bytes"))
            })?
            .to_bytes();
        let who = match &who {
            Ok(w) => *w,
            Err(why) => {
                let event = crate::store::audit::AuditEvent {
                    event: "operator_refused".into(),
                    message: None,
                    establishment: None,
                    actor: Some(peer.to_owned()),
                    detail: json!({ "request": format!("{method} {path}"), "why": why }),
                };
                if let Err(e) = store.audit(event).await {
                    tracing::error!(error = %e, "cannot audit a refused admin request");
                }
                tracing::warn!(%peer, %path, why = %why, "admin request refused: not an operator");
                return Err(AdminError::Forbidden(format!(
                    "the admin endpoint needs an operator certificate: {why}"
                )));
            }
        };
        let req = AdminRequest::from_http(&method, &path, query.as_deref(), &body)?;
        tracing::info!(operator = %who.name, %method, %path, "admin request");
        execute(req, store, Some(live), who).await
    }
    .await;
    let (status, body) = match result {
        Ok(v) => (StatusCode::OK, v),
        Err(e) => (
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            json!({ "error": e.to_string() }),
        ),
    };
    json_response(status, &body)
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    crate::https::response(status, "application/json", bytes)
}

pub use crate::https::ClientError;

/// The admin endpoint's answer: its JSON, or its error.
fn answer(status: u16, bytes: &[u8]) -> Result<Value, ClientError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| ClientError::Http(format!("the answer is not JSON: {e}")))?;
    if status == 200 {
        Ok(v)
    } else {
        Err(ClientError::Refused {
            status,
            message: v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no error message")
                .to_owned(),
        })
    }
}

/// A client of the admin endpoint (the CLI, tests).
#[derive(Clone)]
pub struct AdminClient {
    pub address: String,
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl AdminClient {
    /// Runs one request; the JSON answer, or the endpoint's error.
    pub async fn call(&self, req: &AdminRequest) -> Result<Value, ClientError> {
        let (method, path, body) = req.to_http();
        let body = body
            .map(|b| serde_json::to_vec(&b).unwrap_or_default())
            .unwrap_or_default();
        let (status, bytes) = self.send(method, &path, body).await?;
        answer(status, &bytes)
    }

    /// POSTs `body` as it is (a read receipt mail to `/mssante/mdn`, as a mail gateway
    /// does); the JSON answer, or the endpoint's error.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> Result<Value, ClientError> {
        let (status, bytes) = self.send(Method::POST, path, body).await?;
        answer(status, &bytes)
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let (status, bytes) = self.send(Method::GET, "/metrics", Vec::new()).await?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status == 200 {
            Ok(text)
        } else {
            Err(ClientError::Refused {
                status,
                message: text,
            })
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), ClientError> {
        let client = crate::https::Client {
            address: self.address.clone(),
            connector: self.connector.clone(),
            server_name: self.server_name.clone(),
        };
        let answer = client.send(method, path, "application/json", body).await?;
        Ok((answer.status, answer.body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_survives_its_http_form() {
        let reqs = [
            AdminRequest::Status,
            AdminRequest::QuarantineList,
            AdminRequest::QuarantineShow { seq: 42 },
            AdminRequest::DeadList,
            AdminRequest::OperatorLog,
            AdminRequest::AuditVerify,
            AdminRequest::ReloadTls,
            AdminRequest::AuditQuery {
                filter: AuditFilter::default(),
            },
            AdminRequest::AuditQuery {
                filter: AuditFilter {
                    establishments: vec!["ES1".into(), "ÉS 2&x".into()],
                    from_ms: Some(1),
                    to_ms: Some(2),
                    event: Some("operator".into()),
                },
            },
            AdminRequest::Command {
                command: OperatorCommand::Release {
                    seq: 7,
                    establishment: "ES1".into(),
                },
            },
            AdminRequest::Command {
                command: OperatorCommand::Discard {
                    seq: 8,
                    reason: "test message, «doublon»".into(),
                },
            },
            AdminRequest::Command {
                command: OperatorCommand::RetryDead {
                    destination: "dpi-es1".into(),
                    seq: 9,
                },
            },
            AdminRequest::Command {
                command: OperatorCommand::DmpOpposition {
                    establishment: "ES1".into(),
                    authority: "CHNORD-IPP".into(),
                    id: "P/1 2".into(),
                    opposed: false,
                },
            },
            AdminRequest::Command {
                command: OperatorCommand::CareGrant {
                    establishment: "ES1".into(),
                    authority: "CHNORD-IPP".into(),
                    id: "P1".into(),
                    rpps: "10000000001".into(),
                    granted: true,
                },
            },
        ];
        for r in reqs {
            let (m, target, body) = r.to_http();
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (target.as_str(), None),
            };
            let body = body.map(|b| b.to_string()).unwrap_or_default();
            assert_eq!(
                AdminRequest::from_http(&m, path, query, body.as_bytes()),
                Ok(r.clone()),
                "{target}"
            );
        }
    }

    #[test]
    fn bad_requests_get_the_right_status() {
        let cases: [(Method, &str, Option<&str>, &str, u16); 10] = [
            (Method::GET, "/nope", None, "", 404),
            (Method::DELETE, "/status", None, "", 405),
            (Method::GET, "/quarantine/1/release", None, "", 405),
            (Method::GET, "/quarantine/x", None, "", 400),
            (Method::POST, "/quarantine/1/release", None, "{}", 400),
            (Method::POST, "/quarantine/1/release", None, "not json", 400),
            (Method::GET, "/audit", Some("from_ms=yesterday"), "", 400),
            (Method::GET, "/audit", Some("patient=1"), "", 400),
            (Method::GET, "/dmp/opposition", None, "", 405),
            (
                Method::POST,
                "/dmp/opposition",
                None,
                r#"{"establishment":"ES1","authority":"A","id":"1"}"#,
                400,
            ),
        ];
        for (m, p, q, b, status) in cases {
            let r = AdminRequest::from_http(&m, p, q, b.as_bytes());
            assert_eq!(r.map_err(|e| e.status()), Err(status), "{m} {p}");
        }
    }
}
