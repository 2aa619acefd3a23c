//! HTTPS with mutual TLS, shared by the admin endpoint and the FHIR endpoint: the serving
//! loop (connection limit, handshake, HTTP/1.1 with a header timeout, graceful shutdown) and
//! a small client (the CLI, tests).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::sources::accept::{TlsListener, next_connection};
use crate::store::StoreHandle;
use crate::tls::PeerIdentity;

/// Longest wait for a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is at the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// `IP:port`.
    pub address: String,
    /// What its client certificate says.
    pub identity: PeerIdentity,
}

/// Serves HTTPS on `listener` until `shutdown` turns true: at most `max_connections` at
/// once (the others are closed at once), each after a mutual TLS handshake, each request
/// answered by `handle`.
pub async fn serve<H, F>(
    listener: TcpListener,
    name: &'static str,
    max_connections: usize,
    store: StoreHandle,
    tls: TlsListener,
    mut shutdown: watch::Receiver<bool>,
    handle: H,
) where
    H: Fn(Request<Incoming>, Arc<Peer>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    while let Some((stream, peer)) = next_connection(&listener, name, &mut shutdown).await {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(listener = name, %peer, "connection limit reached; connection refused");
            continue;
        };
        let store = store.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        let handle = handle.clone();
        tokio::spawn(async move {
            connection(stream, peer, name, store, tls, shutdown, handle).await;
            drop(permit);
        });
    }
}

async fn connection<H, F>(
    stream: TcpStream,
    peer: SocketAddr,
    name: &'static str,
    store: StoreHandle,
    tls: TlsListener,
    mut shutdown: watch::Receiver<bool>,
    handle: H,
) where
    H: Fn(Request<Incoming>, Arc<Peer>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let address = peer.to_string();
    let Some((stream, identity)) = tls.handshake(stream, &store, name, &address).await else {
        return;
    };
    let peer = Arc::new(Peer { address, identity });
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let fut = handle(req, peer.clone());
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(listener = name, error = %e, "HTTPS connection ended with an error");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

/// A response with this status, content type and body.
pub fn response(
    status: http::StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

/// Why an HTTPS call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens there: no instance runs.
    #[error("cannot connect to {0}: {1}")]
    NotRunning(String, std::io::Error),
    #[error("TLS with {0} failed: {1}")]
    Tls(String, std::io::Error),
    #[error("HTTP failed: {0}")]
    Http(String),
    /// The endpoint answered with an error.
    #[error("{message} (HTTP {status})")]
    Refused { status: u16, message: String },
}

/// One answer: status, content type, body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Bytes,
}

/// An HTTPS client with a client certificate (one connection per call).
#[derive(Clone)]
pub struct Client {
    pub address: String,
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl Client {
    /// Sends one request.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Answer, ClientError> {
        let tcp = TcpStream::connect(&self.address)
            .await
            .map_err(|e| ClientError::NotRunning(self.address.clone(), e))?;
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| ClientError::Tls(self.address.clone(), e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.address.as_str())
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        Ok(Answer {
            status,
            content_type,
            body,
        })
    }
}
