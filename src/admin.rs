//! Operator commands: quarantine and dead letters. Served by a running instance on a Unix
//! socket in the data directory (file permissions are the access control); when no instance
//! runs, the CLI opens the store itself. Both paths run `execute`, and every change is
//! recorded in the operator log.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::store::StoreHandle;
use crate::store::writer::OperatorCommand;
use crate::time::rfc3339;

/// File name of the admin socket inside the data directory.
pub const ADMIN_SOCKET: &str = "admin.sock";

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    AuditQuery {
        filter: crate::store::audit::AuditFilter,
    },
    Command {
        command: OperatorCommand,
        operator: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminResponse {
    Ok(Value),
    Error(String),
}

/// Runs one request against the store.
pub async fn execute(
    req: AdminRequest,
    store: &StoreHandle,
    tls: Option<&crate::tls::TlsState>,
) -> AdminResponse {
    let s = store.store();
    let r: Result<Value, String> = match req {
        AdminRequest::ReloadTls => match tls {
            None => Err("no running instance with a [tls] section to reload".into()),
            Some(t) => t
                .reload()
                .map(|exp| json!({ "reloaded": true, "cert_not_after_unix": exp }))
                .map_err(|e| format!("reload failed, the previous certificates stay in use: {e}")),
        },
        AdminRequest::AuditVerify => {
            let cert = store
                .config()
                .tls
                .as_ref()
                .and_then(|t| crate::tls::load_certs(&t.cert).ok())
                .and_then(|c| c.into_iter().next());
            crate::store::audit::verify(s, cert.as_ref())
                .map(|v| json!(v))
                .map_err(|e| e.to_string())
        }
        AdminRequest::AuditQuery { filter } => crate::store::audit::query(s, &filter)
            .map(|v| json!(v))
            .map_err(|e| e.to_string()),
        AdminRequest::Status => s
            .counts()
            .map(|c| {
                json!({
                    "store": c,
                    "since_start": crate::stats::STATS.snapshot(),
                    "tls_cert_not_after_unix": tls.and_then(|t| t.cert_not_after()),
                })
            })
            .map_err(|e| e.to_string()),
        AdminRequest::QuarantineList => s
            .quarantine()
            .map(|items| {
                json!(items
                    .iter()
                    .map(|(r, q)| json!({
                        "seq": r.seq,
                        "received": rfc3339(r.received_at_ms),
                        "listener": r.listener,
                        "type": r.message_type,
                        "reason": q.reason.as_str(),
                    }))
                    .collect::<Vec<_>>())
            })
            .map_err(|e| e.to_string()),
        AdminRequest::QuarantineShow { seq } => match (s.record(seq), s.raw(seq)) {
            (Ok(Some(rec)), Ok(raw)) => Ok(json!({
                "record": rec,
                "received": rfc3339(rec.received_at_ms),
                "message": raw.map(|b| String::from_utf8_lossy(&b).replace('\r', "\n")),
            })),
            (Ok(None), _) => Err(format!("no message {seq}")),
            (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
        },
        AdminRequest::DeadList => s
            .dead_letters()
            .map(|items| {
                json!(items
                    .iter()
                    .map(|(d, e)| json!({"destination": d, "seq": e.seq, "at": rfc3339(e.at_ms), "attempts": e.attempts, "reason": e.reason}))
                    .collect::<Vec<_>>())
            })
            .map_err(|e| e.to_string()),
        AdminRequest::OperatorLog => s
            .operator_log()
            .map(|items| {
                json!(items
                    .iter()
                    .map(|r| json!({"at": rfc3339(r.at_ms), "operator": r.operator, "action": r.action, "seq": r.seq, "detail": r.detail}))
                    .collect::<Vec<_>>())
            })
            .map_err(|e| e.to_string()),
        AdminRequest::Command { command, operator } => store.operator(command, &operator).await.map(Value::String).map_err(|e| e.to_string()),
    };
    match r {
        Ok(v) => AdminResponse::Ok(v),
        Err(e) => AdminResponse::Error(e),
    }
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_SOCKET)
}

/// Serves the admin socket (one JSON request line, one JSON response line per connection).
pub async fn serve(
    path: PathBuf,
    store: StoreHandle,
    tls: Option<std::sync::Arc<crate::tls::TlsState>>,
) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let store = store.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(r).take(1 << 20);
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let resp = match serde_json::from_str::<AdminRequest>(&line) {
                Ok(req) => execute(req, &store, tls.as_deref()).await,
                Err(e) => AdminResponse::Error(format!("bad request: {e}")),
            };
            let mut out = serde_json::to_vec(&resp).unwrap_or_default();
            out.push(b'\n');
            let _ = w.write_all(&out).await;
        });
    }
}

/// Sends a request to a running instance. `Ok(None)` when no instance listens.
pub async fn request(
    data_dir: &Path,
    req: &AdminRequest,
) -> std::io::Result<Option<AdminResponse>> {
    let path = socket_path(data_dir);
    let mut stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    let mut resp = String::new();
    BufReader::new(stream).read_line(&mut resp).await?;
    serde_json::from_str(&resp)
        .map(Some)
        .map_err(std::io::Error::other)
}
