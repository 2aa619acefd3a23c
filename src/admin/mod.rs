//! Operator commands: status, quarantine, dead letters, the operator log and the audit
//! journal. A running instance serves them over HTTPS with mutual TLS ([`http`]): the caller
//! is the operator system its certificate names, and sees and acts only within that
//! system's establishments ([`crate::policy::OperatorScope`]). When no instance runs, the CLI
//! opens the store itself and acts as the host's administrator. Both paths run [`execute`];
//! every change and every refusal is in the audit journal.

pub mod http;

use serde_json::{Value, json};

use crate::policy::{Operator, OperatorScope};
use crate::store::StoreHandle;
use crate::store::audit::{AuditEvent, AuditFilter};
use crate::store::writer::{OperatorCommand, OperatorError};
use crate::time::rfc3339;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    Status,
    QuarantineList,
    QuarantineShow {
        seq: u64,
    },
    DeadList,
    OperatorLog,
    AuditVerify,
    /// Reads the TLS certificates and keys again.
    ReloadTls,
    /// Read the routes again and put them in force (`crate::reload`).
    ReloadRoutes,
    AuditQuery {
        filter: AuditFilter,
    },
    Command {
        command: OperatorCommand,
    },
}

/// Why a request was not carried out; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// 400: the request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 403: outside the caller's scope, or the caller is not an operator.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such path or message.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists with another method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: the message is not in the state the command needs.
    #[error("{0}")]
    Conflict(String),
    /// 503: the instance cannot do it now.
    #[error("{0}")]
    Unavailable(String),
    /// 500: the store failed.
    #[error("{0}")]
    Store(String),
}

impl AdminError {
    pub fn status(&self) -> u16 {
        match self {
            AdminError::BadRequest(_) => 400,
            AdminError::Forbidden(_) => 403,
            AdminError::NotFound(_) => 404,
            AdminError::MethodNotAllowed(_) => 405,
            AdminError::Conflict(_) => 409,
            AdminError::Unavailable(_) => 503,
            AdminError::Store(_) => 500,
        }
    }
}

impl From<OperatorError> for AdminError {
    fn from(e: OperatorError) -> Self {
        let m = e.to_string();
        match e {
            OperatorError::NotQuarantined(_) | OperatorError::NotDead(..) => {
                AdminError::Conflict(m)
            }
            OperatorError::UnknownEstablishment(_) | OperatorError::Invalid(_) => {
                AdminError::BadRequest(m)
            }
            OperatorError::Forbidden { .. }
            | OperatorError::SenderNotFor { .. }
            | OperatorError::OutOfScope { .. }
            | OperatorError::NeedsInstance { .. } => AdminError::Forbidden(m),
            OperatorError::Store(_) => AdminError::Store(m),
        }
    }
}

/// What `status` shows of the queues, within the operator's scope: each destination (an
/// establishment's record destination to the operators of that establishment; a shared
/// one, the lab's, the DMP feed, MSSanté, to whole-instance operators) with its waiting
/// messages, the age of the oldest and its dead letters; each establishment with its record
/// destination's waiting messages and oldest age, its dead letters (on every destination)
/// and the quarantined messages whose evidence names it.
fn queues(
    s: &crate::store::Store,
    cfg: &crate::config::Config,
    scope: &OperatorScope,
) -> Result<(Value, Value), crate::store::StoreError> {
    let now = crate::time::now_ms();
    let counts = s.queue_counts()?;
    // A destination is an establishment's own when it is the record of that one only; one
    // that several share is shown to whole-instance operators only.
    let owner_of = |dest: &str| {
        let mut owners = cfg
            .establishments
            .iter()
            .filter(|e| e.record.as_str() == dest);
        match (owners.next(), owners.next()) {
            (Some(e), None) => Some(e),
            _ => None,
        }
    };
    let mut destinations = Vec::new();
    for d in &cfg.destinations {
        let owner = owner_of(d.name.as_str());
        let visible = match owner {
            Some(e) => scope.covers(&e.id),
            None => scope.is_instance(),
        };
        if !visible {
            continue;
        }
        let (waiting, dead) = counts
            .iter()
            .find(|(n, ..)| n == d.name.as_str())
            .map_or((0, 0), |(_, q, x)| (*q, *x));
        let oldest = s.oldest_enqueued(d.name.as_str())?;
        destinations.push(json!({
            "destination": d.name.as_str(),
            "establishment": owner.map(|e| e.id.as_str()),
            "waiting": waiting,
            "oldest_waiting_secs": oldest.map(|t| now.saturating_sub(t) / 1000),
            "dead_letters": dead,
        }));
    }
    // Dead letters by owning establishment (a message with no owner: the instance's).
    let mut dead_by: std::collections::BTreeMap<String, u64> = Default::default();
    for (_, d) in s.dead_letters()? {
        let owner = s
            .record(d.seq)?
            .and_then(|r| r.establishment().map(|e| e.to_string()))
            .unwrap_or_else(|| "none".into());
        *dead_by.entry(owner).or_default() += 1;
    }
    // Quarantined messages by the establishments their evidence implicates.
    let mut quarantined_by: std::collections::BTreeMap<String, u64> = Default::default();
    for (rec, _) in s.quarantine()? {
        for e in crate::policy::implicated(&rec, cfg) {
            *quarantined_by.entry(e.to_string()).or_default() += 1;
        }
    }
    let mut establishments = Vec::new();
    for e in cfg.establishments.iter().filter(|e| scope.covers(&e.id)) {
        let record = destinations
            .iter()
            .find(|d| d["destination"] == e.record.as_str())
            .cloned()
            .unwrap_or(Value::Null);
        establishments.push(json!({
            "establishment": e.id.as_str(),
            "record": e.record.as_str(),
            "record_waiting": record["waiting"],
            "record_oldest_waiting_secs": record["oldest_waiting_secs"],
            "dead_letters": dead_by.get(e.id.as_str()).copied().unwrap_or(0),
            "quarantined": quarantined_by.get(e.id.as_str()).copied().unwrap_or(0),
        }));
    }
    Ok((json!(destinations), json!(establishments)))
}

fn store_err(e: impl std::fmt::Display) -> AdminError {
    AdminError::Store(e.to_string())
}

/// Journals a request refused for scope, then returns the refusal.
async fn refuse(
    store: &StoreHandle,
    who: &Operator,
    what: &str,
    message: Option<u64>,
) -> AdminError {
    let event = AuditEvent {
        event: "operator_refused".into(),
        message,
        establishment: None,
        actor: Some(who.name.clone()),
        detail: json!({ "request": what, "scope": who.scope }),
    };
    if let Err(e) = store.audit(event).await {
        tracing::error!(error = %e, "cannot audit a refused operator request");
    }
    AdminError::Forbidden(format!(
        "{what} is not within your establishments ({})",
        who.scope.describe()
    ))
}

/// Runs one request for one operator.
/// What a running instance lends the admin endpoint: its certificates and its reloader.
pub struct Live {
    pub tls: std::sync::Arc<crate::tls::TlsState>,
    pub reloader: crate::reload::Reloader,
}

pub async fn execute(
    req: AdminRequest,
    store: &StoreHandle,
    live: Option<&Live>,
    who: &Operator,
) -> Result<Value, AdminError> {
    let tls = live.map(|l| l.tls.as_ref());
    let s = store.store();
    let current = store.config();
    let cfg = current.as_ref();
    let sees = |seq: u64| -> bool {
        matches!(who.scope, OperatorScope::Instance)
            || s.record(seq)
                .ok()
                .flatten()
                .is_some_and(|r| who.scope.sees(&r, cfg))
    };
    match req {
        AdminRequest::ReloadRoutes => {
            if !who.scope.is_instance() {
                return Err(refuse(store, who, "reloading the routes", None).await);
            }
            let live = live.ok_or_else(|| {
                AdminError::Unavailable("no running instance to reload".into())
            })?;
            audit_action(store, who, "routes.reload", None).await;
            match live.reloader.reload(crate::reload::Source::Disk).await {
                Ok(summary) => Ok(json!({ "reloaded": true, "summary": summary })),
                Err(why) => Err(AdminError::Conflict(why)),
            }
        }
        AdminRequest::ReloadTls => {
            if !who.scope.is_instance() {
                return Err(refuse(store, who, "reloading the instance's certificates", None).await);
            }
            let t = tls.ok_or_else(|| {
                AdminError::Unavailable("no running instance with a [tls] section to reload".into())
            })?;
            let exp = t.reload().map_err(|e| {
                AdminError::Unavailable(format!(
                    "reload failed, the previous certificates stay in use: {e}"
                ))
            })?;
            audit_action(store, who, "tls.reload", None).await;
            Ok(json!({ "reloaded": true, "cert_not_after_unix": exp }))
        }
        AdminRequest::AuditVerify => {
            let cert = cfg
                .tls
                .as_ref()
                .and_then(|t| crate::tls::load_certs(&t.cert).ok())
                .and_then(|c| c.into_iter().next());
            crate::store::audit::verify(s, cert.as_ref())
                .map(|v| json!(v))
                .map_err(store_err)
        }
        AdminRequest::AuditQuery { mut filter } => {
            if let OperatorScope::Establishments(mine) = &who.scope {
                let asked = std::mem::take(&mut filter.establishments);
                let outside: Vec<&String> = asked
                    .iter()
                    .filter(|e| !mine.iter().any(|m| m.as_str() == e.as_str()))
                    .collect();
                if !outside.is_empty() {
                    let what = format!("the audit journal of {outside:?}");
                    return Err(refuse(store, who, &what, None).await);
                }
                filter.establishments = if asked.is_empty() {
                    mine.iter().map(|e| e.to_string()).collect()
                } else {
                    asked
                };
                if filter.establishments.is_empty() {
                    return Ok(json!([]));
                }
            }
            crate::store::audit::query(s, &filter)
                .map(|v| json!(v))
                .map_err(store_err)
        }
        AdminRequest::Status => s
            .counts()
            .and_then(|c| Ok((c, s.mssante_counts()?, queues(s, cfg, &who.scope)?)))
            .map(|(c, (national, local, whitelist), (destinations, establishments))| {
                json!({
                    "destinations": destinations,
                    "establishments": establishments,
                    "store": c,
                    "mssante": {
                        "directory": { "national": national, "local": local },
                        "whitelist": whitelist,
                    },
                    "since_start": crate::stats::STATS.snapshot(),
                    "tls_cert_not_after_unix": tls.and_then(|t| t.cert_not_after()),
                    "operator": who.name,
                    "scope": who.scope.describe(),
                })
            })
            .map_err(store_err),
        AdminRequest::QuarantineList => s
            .quarantine()
            .map(|items| {
                json!(items
                    .iter()
                    .filter(|(r, _)| who.scope.sees(r, cfg))
                    .map(|(r, q)| json!({
                        "seq": r.seq,
                        "received": rfc3339(r.received_at_ms),
                        "listener": r.listener,
                        "type": r.message_type,
                        "reason": q.reason.as_str(),
                        "implicated": crate::policy::implicated(r, cfg),
                    }))
                    .collect::<Vec<_>>())
            })
            .map_err(store_err),
        AdminRequest::QuarantineShow { seq } => {
            let rec = s
                .record(seq)
                .map_err(store_err)?
                .ok_or_else(|| AdminError::NotFound(format!("no message {seq}")))?;
            if !who.scope.sees(&rec, cfg) {
                return Err(refuse(store, who, &format!("message {seq}"), Some(seq)).await);
            }
            let raw = s.raw(seq).map_err(store_err)?;
            // Reading a message shows patient data: the journal says who read it.
            audit_action(store, who, "message.read", Some(&rec)).await;
            Ok(json!({
                "record": rec,
                "received": rfc3339(rec.received_at_ms),
                "message": raw.map(|b| String::from_utf8_lossy(&b).replace('\r', "\n")),
            }))
        }
        AdminRequest::DeadList => s
            .dead_letters()
            .map(|items| {
                json!(items
                    .iter()
                    .filter(|(_, e)| sees(e.seq))
                    .map(|(d, e)| json!({"destination": d, "seq": e.seq, "at": rfc3339(e.at_ms), "attempts": e.attempts, "reason": e.reason}))
                    .collect::<Vec<_>>())
            })
            .map_err(store_err),
        AdminRequest::OperatorLog => s
            .operator_log()
            .map(|items| {
                json!(items
                    .iter()
                    .filter(|r| sees(r.seq))
                    .map(|r| json!({"at": rfc3339(r.at_ms), "operator": r.operator, "action": r.action, "seq": r.seq, "detail": r.detail}))
                    .collect::<Vec<_>>())
            })
            .map_err(store_err),
        AdminRequest::Command { command } => store
            .operator(command, who)
            .await
            .map(Value::String)
            .map_err(AdminError::from),
    }
}

/// Journals an operator action that the writer does not journal itself (reads, reloads).
async fn audit_action(
    store: &StoreHandle,
    who: &Operator,
    action: &str,
    rec: Option<&crate::store::MessageRecord>,
) {
    let event = AuditEvent {
        event: "operator".into(),
        message: rec.map(|r| r.seq),
        establishment: rec.and_then(|r| r.establishment().map(|e| e.to_string())),
        actor: Some(who.name.clone()),
        detail: json!({ "action": action }),
    };
    if let Err(e) = store.audit(event).await {
        tracing::error!(error = %e, action, "cannot audit an operator action");
    }
}
