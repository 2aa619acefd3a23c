//! Load generator: N connections each sending results over MLLP and waiting for each ACK, as a
//! lab system does; reports messages/s and ACK latency percentiles. `labroute loadgen`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::hl7::Message;
use crate::hl7::mllp::{Decoded, Decoder, frame};

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub to: SocketAddr,
    pub connections: usize,
    pub messages: usize,
    /// PID-3 assigning authorities to cycle through (one per establishment, say).
    pub authorities: Vec<String>,
    /// OBX segments per result.
    pub obx: usize,
    pub ack_timeout: Duration,
    /// Makes control ids unique across runs against the same store.
    pub run_id: String,
    /// MLLP over TLS with a client certificate.
    pub tls: Option<TlsClient>,
}

/// What a TLS connection needs.
#[derive(Clone)]
pub struct TlsClient {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsClient({:?})", self.server_name)
    }
}

/// What came back.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub sent: u64,
    pub accepted: u64,
    /// ACKs other than AA/CA.
    pub refused: u64,
    /// Sends that got no ACK (connection error or timeout).
    pub failed: u64,
    pub elapsed: Duration,
    pub bytes: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl LoadReport {
    pub fn per_second(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sent, {} accepted, {} refused, {} failed in {:.2} s: {:.0} msg/s ({:.1} MB/s); \
             ACK latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.sent,
            self.accepted,
            self.refused,
            self.failed,
            self.elapsed.as_secs_f64(),
            self.per_second(),
            self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e6,
            self.p50_us as f64 / 1000.0,
            self.p99_us as f64 / 1000.0,
            self.max_us as f64 / 1000.0,
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("latency histogram: {0}")]
    Histogram(String),
}

/// A generated result (ORU^R01 v2.5, UTF-8, accents) for one patient of `authority`.
pub fn result_message(control_id: &str, authority: &str, patient: u64, obx: usize) -> Vec<u8> {
    let mut m = format!(
        "MSH|^~\\&|SIL|LAB|DPI||20250301100000||ORU^R01^ORU_R01|{control_id}|P|2.5|||||FRA|UNICODE UTF-8\r\
PID|||{patient}^^^{authority}^PI||Hélène^Zoé||19800101|F\r\
OBR|1||F-{control_id}^LAB|GLU^Glucose^L|||20250301090000||||||||||||||||F\r"
    );
    for i in 1..=obx {
        m.push_str(&format!(
            "OBX|{i}|NM|GLU^Glucose^L||5.{i}|mmol/L|3.9-5.8|N|||F\r"
        ));
    }
    m.into_bytes()
}

struct ConnResult {
    hist: Histogram<u64>,
    accepted: u64,
    refused: u64,
    failed: u64,
    bytes: u64,
}

async fn read_ack<S: AsyncRead + Unpin>(s: &mut S, timeout: Duration) -> Option<Vec<u8>> {
    let mut dec = Decoder::new(1 << 20);
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        if let Some(Decoded::Frame(f)) = dec.feed(&buf[..n]).into_iter().next() {
            return Some(f);
        }
    }
}

async fn one_connection(
    spec: LoadSpec,
    conn: usize,
    count: usize,
) -> Result<ConnResult, LoadError> {
    let hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| LoadError::Histogram(e.to_string()))?;
    let tcp = TcpStream::connect(spec.to)
        .await
        .map_err(|e| LoadError::Connect(spec.to, e))?;
    let _ = tcp.set_nodelay(true);
    match spec.tls.clone() {
        None => drive(tcp, &spec, conn, count, hist).await,
        Some(t) => {
            let s = t
                .connector
                .connect(t.server_name, tcp)
                .await
                .map_err(|e| LoadError::Connect(spec.to, e))?;
            drive(s, &spec, conn, count, hist).await
        }
    }
}

async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    spec: &LoadSpec,
    conn: usize,
    count: usize,
    mut hist: Histogram<u64>,
) -> Result<ConnResult, LoadError> {
    let (mut accepted, mut refused, mut failed, mut bytes) = (0, 0, 0, 0);
    for i in 0..count {
        let authority = &spec.authorities[(conn + i) % spec.authorities.len().max(1)];
        let id = format!("{}-{conn}-{i}", spec.run_id);
        let msg = result_message(&id, authority, (conn * 1_000_000 + i) as u64, spec.obx);
        let framed = frame(&msg);
        let start = Instant::now();
        if stream.write_all(&framed).await.is_err() || stream.flush().await.is_err() {
            failed += (count - i) as u64;
            break;
        }
        bytes += framed.len() as u64;
        match read_ack(&mut stream, spec.ack_timeout).await {
            Some(ack) => {
                let _ = hist.record(start.elapsed().as_micros().max(1) as u64);
                let code = Message::parse(&ack)
                    .map(|m| m.text("MSA-1").into_owned())
                    .unwrap_or_default();
                if code == "AA" || code == "CA" {
                    accepted += 1;
                } else {
                    refused += 1;
                }
            }
            None => {
                failed += (count - i) as u64;
                break;
            }
        }
    }
    Ok(ConnResult {
        hist,
        accepted,
        refused,
        failed,
        bytes,
    })
}

/// Runs the load and reports.
pub async fn run(spec: LoadSpec) -> Result<LoadReport, LoadError> {
    let conns = spec.connections.max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let count = spec.messages / conns + usize::from(c < spec.messages % conns);
        tasks.push(tokio::spawn(one_connection(spec.clone(), c, count)));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| LoadError::Histogram(e.to_string()))?;
    let (mut accepted, mut refused, mut failed, mut bytes) = (0, 0, 0, 0);
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => {
                hist.add(&r.hist)
                    .map_err(|e| LoadError::Histogram(e.to_string()))?;
                accepted += r.accepted;
                refused += r.refused;
                failed += r.failed;
                bytes += r.bytes;
            }
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(LoadError::Histogram(format!("worker ended: {e}"))),
        }
    }
    Ok(LoadReport {
        sent: accepted + refused,
        accepted,
        refused,
        failed,
        elapsed: start.elapsed(),
        bytes,
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        max_us: hist.max(),
    })
}
