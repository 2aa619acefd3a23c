//! Load generator (`labroute loadgen`): N MLLP connections (TLS optional), each sending and
//! waiting for every ACK as a lab system does, as fast as the ACKs come or at a fixed total
//! rate; a message mix; ACK latency in an HDR histogram. With receivers, it also stands in
//! for the record systems and measures end to end (sent → delivered) by MSH-10, which the
//! engine keeps (ARCHITECTURE.md, "Invariants").
//!
//! At a fixed rate each send has its planned time, and a latency counts from that time, not
//! from when a late send went out: a stall shows as the latency of every message it held
//! back, not of one (no coordinated omission).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::hl7::Message;
use crate::hl7::ack::{self, AckCode, AckHeader};
use crate::hl7::message::prepare;
use crate::hl7::mllp::{Decoded, Decoder, frame};

/// Which messages to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// ORU^R01 results with this many OBX each.
    Oru { obx: usize },
    /// Lab results as a lab sends them: ORU^R01 with 5 to 30 OBX, and one in 50 a report
    /// carrying its CDA document (about 180 KB of base64 in an ED OBX, as in the ANS
    /// examples).
    Results,
    /// What a record system sends the lab: OML^O21 orders, and ADT^A01 / A08 one in three.
    Orders,
}

impl std::str::FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "results" => Ok(Mix::Results),
            "orders" => Ok(Mix::Orders),
            _ => match s.strip_prefix("oru:") {
                Some(n) => n
                    .parse()
                    .map(|obx| Mix::Oru { obx })
                    .map_err(|_| format!("mix {s:?}: oru:N (OBX per result)")),
                None => Err(format!("mix {s:?}: results, orders or oru:N")),
            },
        }
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mix::Oru { obx } => write!(f, "oru:{obx}"),
            Mix::Results => f.write_str("results"),
            Mix::Orders => f.write_str("orders"),
        }
    }
}

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub to: SocketAddr,
    pub connections: usize,
    /// Messages in all (shared among the connections); with `duration`, an upper bound.
    pub messages: usize,
    /// Send until this much time has passed (or `messages` are sent).
    pub duration: Option<Duration>,
    /// Messages per second in all, spread evenly over the connections; none: as fast as the
    /// ACKs come.
    pub rate: Option<f64>,
    pub mix: Mix,
    /// The establishments' tags, one per establishment, cycled through: PID-3.4 is
    /// `{tag}-IPP`, MSH-4 (orders, ADT) and PV1-3.4 `{tag}`, the placer namespace
    /// `DPI-{tag}` (the example routes' convention: CHNORD is ES1, CHSUD ES2).
    pub establishments: Vec<String>,
    pub ack_timeout: Duration,
    /// Makes control ids unique across runs against the same store.
    pub run_id: String,
    /// MLLP over TLS with a client certificate.
    pub tls: Option<TlsClient>,
    /// Stand in for the record systems on these addresses (plain MLLP on loopback, as the
    /// example routes' destinations): end-to-end latency, delivered, duplicates.
    pub receivers: Vec<SocketAddr>,
    /// How long to wait, after the last ACK, for every accepted message to be delivered.
    pub drain_timeout: Duration,
}

impl LoadSpec {
    /// `messages` ORU^R01 with 5 OBX to `to` over 8 connections, for ES1 and ES2 of the
    /// example routes, as fast as the ACKs come.
    pub fn new(to: SocketAddr, messages: usize) -> LoadSpec {
        LoadSpec {
            to,
            connections: 8,
            messages,
            duration: None,
            rate: None,
            mix: Mix::Oru { obx: 5 },
            establishments: vec!["CHNORD".into(), "CHSUD".into()],
            ack_timeout: Duration::from_secs(30),
            run_id: "LG".into(),
            tls: None,
            receivers: Vec::new(),
            drain_timeout: Duration::from_secs(60),
        }
    }
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

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        write!(
            f,
            "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us)
        )
    }
}

/// End to end, as the stand-in record systems saw it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EndToEnd {
    /// Accepted messages delivered (first deliveries).
    pub delivered: u64,
    /// Deliveries of a message already delivered (at-least-once).
    pub duplicates: u64,
    /// Accepted messages not delivered within the drain timeout.
    pub undelivered: u64,
    /// From the first send to the last first delivery.
    pub elapsed_s: f64,
    pub per_second: f64,
    pub latency: Latency,
}

/// What came back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub mix: String,
    pub connections: usize,
    pub tls: bool,
    /// The rate asked for, if any.
    pub rate: Option<f64>,
    pub sent: u64,
    pub accepted: u64,
    /// ACKs other than AA/CA.
    pub refused: u64,
    /// Sends that got no ACK (connection error or timeout).
    pub failed: u64,
    pub elapsed_s: f64,
    pub per_second: f64,
    pub bytes: u64,
    /// ACK latency.
    pub ack: Latency,
    pub end_to_end: Option<EndToEnd>,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} over {} connection(s){}: {} sent, {} accepted, {} refused, {} failed in \
             {:.2} s: {:.0} msg/s ({:.1} MB/s); ACK latency {}",
            self.mix,
            if self.tls { "MLLP/TLS" } else { "MLLP" },
            self.connections,
            match self.rate {
                Some(r) => format!(" at {r:.0}/s"),
                None => String::new(),
            },
            self.sent,
            self.accepted,
            self.refused,
            self.failed,
            self.elapsed_s,
            self.per_second,
            self.bytes as f64 / self.elapsed_s.max(1e-9) / 1e6,
            self.ack,
        )?;
        if let Some(e) = &self.end_to_end {
            write!(
                f,
                "; end to end {} delivered, {} duplicate(s), {} undelivered, {:.0} msg/s, {}",
                e.delivered, e.duplicates, e.undelivered, e.per_second, e.latency
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error(
        "listen on {0} (as a record system): {1}; stop what already listens there (labroute receive?)"
    )]
    Listen(SocketAddr, std::io::Error),
    #[error("latency histogram: {0}")]
    Histogram(String),
    #[error("load generator: {0}")]
    Internal(String),
    #[error("no establishment to send for")]
    NoEstablishment,
}

/// A generated result (ORU^R01 v2.5, UTF-8, accents) for one patient of `authority`.
pub fn result_message(control_id: &str, authority: &str, patient: u64, obx: usize) -> Vec<u8> {
    let mut m = result_head(control_id, authority, patient);
    for i in 1..=obx {
        m.push_str(&format!(
            "OBX|{i}|NM|GLU^Glucose^L||5.{i}|mmol/L|3.9-5.8|N|||F\r"
        ));
    }
    m.into_bytes()
}

fn result_head(control_id: &str, authority: &str, patient: u64) -> String {
    format!(
        "MSH|^~\\&|SIL|LAB|DPI||20250301100000||ORU^R01^ORU_R01|{control_id}|P|2.5|||||FRA|UNICODE UTF-8\r\
PID|||{patient}^^^{authority}^PI||Hélène^Zoé||19800101|F\r\
OBR|1||F-{control_id}^LAB|GLU^Glucose^L|||20250301090000||||||||||||||||F\r"
    )
}

/// About 180 KB of base64, the size of the ANS example's CDA (a fixed, made-up text).
fn cda_base64() -> &'static str {
    static B64: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    B64.get_or_init(|| {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut x: u32 = 0x2545_f491;
        (0..180_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                ALPHABET[(x % 64) as usize] as char
            })
            .collect()
    })
}

/// A results report carrying its CDA document (OBX-2 ED), as the French CDA-in-HL7 profile
/// sends it.
pub fn report_message(control_id: &str, authority: &str, patient: u64) -> Vec<u8> {
    let mut m = result_head(control_id, authority, patient);
    m.push_str("OBX|1|NM|GLU^Glucose^L||5.2|mmol/L|3.9-5.8|N|||F\r");
    m.push_str("OBX|2|ED|11502-2^CR d'examens biologiques^LN||^TEXT^XML^Base64^");
    m.push_str(cda_base64());
    m.push_str("||||||F\r");
    m.into_bytes()
}

/// An order (OML^O21) from establishment `tag`'s record system.
pub fn order_message(control_id: &str, tag: &str, patient: u64) -> Vec<u8> {
    format!(
        "MSH|^~\\&|DPI|{tag}|SIL|LAB|20250301100000||OML^O21^OML_O21|{control_id}|P|2.5|||||FRA|UNICODE UTF-8\r\
PID|||{patient}^^^{tag}-IPP^PI||Hélène^Zoé||19800101|F\r\
PV1|1|I|MED^101^1^{tag}||||||||||||||||V{patient}^^^{tag}-NDA^VN\r\
ORC|NW|P-{control_id}^DPI-{tag}||||||||||||||||||||||\r\
OBR|1|P-{control_id}^DPI-{tag}||GLU^Glucose^L|||20250301090000\r"
    )
    .into_bytes()
}

/// An admission (A01) or an update (A08) from establishment `tag`'s record system.
pub fn adt_message(control_id: &str, tag: &str, patient: u64, event: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|DPI|{tag}|SIL|LAB|20250301100000||ADT^{event}^ADT_A01|{control_id}|P|2.5|||||FRA|UNICODE UTF-8\r\
EVN||20250301100000\r\
PID|||{patient}^^^{tag}-IPP^PI||Hélène^Zoé||19800101|F\r\
PV1|1|I|MED^101^1^{tag}||||||||||||||||V{patient}^^^{tag}-NDA^VN\r"
    )
    .into_bytes()
}

/// Where message `i` of connection `conn` falls in the mix's cycle. Each connection starts
/// at its own place (a stride of 37, prime to the cycles of 50, 26 and 6): at a fixed rate
/// the connections send in step, and with one index for all, every connection sent its CDA
/// report in the same interval, 32 reports of 180 KB at once every 50 intervals, a burst
/// no lab sends (BENCHMARKS.md). The share of each kind is unchanged.
fn mix_index(conn: usize, i: usize) -> usize {
    i.wrapping_add(conn.wrapping_mul(37))
}

/// Message `i` of the mix's cycle under `mix`, for establishment `tag`.
fn generate(mix: Mix, control_id: &str, tag: &str, patient: u64, i: usize) -> Vec<u8> {
    let authority = format!("{tag}-IPP");
    match mix {
        Mix::Oru { obx } => result_message(control_id, &authority, patient, obx),
        Mix::Results if i % 50 == 49 => report_message(control_id, &authority, patient),
        Mix::Results => result_message(control_id, &authority, patient, 5 + (i * 7) % 26),
        Mix::Orders => match i % 6 {
            2 => adt_message(control_id, tag, patient, "A01"),
            5 => adt_message(control_id, tag, patient, "A08"),
            _ => order_message(control_id, tag, patient),
        },
    }
}

/// Send times of the messages not yet delivered, and what the stand-in record systems saw.
#[derive(Default)]
struct Tracker {
    /// Control id → when it was sent (or planned).
    pending: HashMap<String, Instant>,
    delivered: u64,
    duplicates: u64,
    last_delivery: Option<Instant>,
}

struct Shared {
    tracker: Mutex<Tracker>,
    e2e: Mutex<Histogram<u64>>,
    /// Whether anybody receives (`LoadSpec::receivers`): otherwise nothing is tracked.
    tracking: bool,
}

impl Shared {
    fn sent(&self, id: &str, at: Instant) {
        if self.tracking {
            if let Ok(mut t) = self.tracker.lock() {
                t.pending.insert(id.to_owned(), at);
            }
        }
    }
    fn not_accepted(&self, id: &str) {
        if self.tracking {
            if let Ok(mut t) = self.tracker.lock() {
                t.pending.remove(id);
            }
        }
    }
    fn delivered(&self, id: &str) {
        let now = Instant::now();
        let Ok(mut t) = self.tracker.lock() else {
            return;
        };
        match t.pending.remove(id) {
            Some(at) => {
                t.delivered += 1;
                t.last_delivery = Some(now);
                drop(t);
                if let Ok(mut h) = self.e2e.lock() {
                    let _ = h.record(now.duration_since(at).as_micros().max(1) as u64);
                }
            }
            None => t.duplicates += 1,
        }
    }
}

fn histogram() -> Result<Histogram<u64>, LoadError> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
        .map_err(|e| LoadError::Histogram(e.to_string()))
}

/// Answers AA to every message received on `stream`, as a record system does, until the
/// peer closes. Each frame goes first to `seen`, with its parsed form when it parses;
/// `seen` gives the number for the ACK's own control id (`{prefix}{n}`), or `None` to
/// close the connection without answering. `labroute receive` and the load generator's
/// stand-ins both answer this way.
pub async fn answer_as_record_system<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    prefix: &str,
    mut seen: impl FnMut(&[u8], Option<&Message<'_>>) -> Option<u64>,
) {
    let mut dec = Decoder::new(64 << 20);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut out = Vec::new();
        for u in dec.feed(&buf[..n]) {
            let Decoded::Frame(f) = u else { continue };
            let body = prepare(&f);
            let parsed = Message::parse(&body).ok();
            let Some(i) = seen(&f, parsed.as_ref()) else {
                return;
            };
            let header = parsed
                .as_ref()
                .map(AckHeader::of)
                .unwrap_or_else(|| AckHeader::salvage(&body));
            let a = ack::build(
                &header,
                AckCode::AA,
                None,
                &format!("{prefix}{i}"),
                &crate::time::hl7_timestamp(crate::time::now_ms()),
            );
            out.extend_from_slice(&frame(&a));
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// A stand-in record system: answers AA to every message and tells `shared` its MSH-10.
async fn record_system(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((s, _)) = listener.accept().await else {
            return;
        };
        let _ = s.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            answer_as_record_system(s, "LGR", |_, m| {
                if let Some(m) = m {
                    shared.delivered(&m.text("MSH-10"));
                }
                n += 1;
                Some(n)
            })
            .await
        });
    }
}

struct ConnResult {
    hist: Histogram<u64>,
    sent: u64,
    accepted: u64,
    refused: u64,
    failed: u64,
    bytes: u64,
}

async fn read_ack<S: AsyncRead + Unpin>(
    s: &mut S,
    dec: &mut Decoder,
    buf: &mut [u8],
    timeout: Duration,
) -> Option<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = match tokio::time::timeout_at(deadline, s.read(buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        if let Some(Decoded::Frame(f)) = dec.feed(&buf[..n]).into_iter().next() {
            return Some(f);
        }
    }
}

/// One connection's share of the load.
struct Plan {
    conn: usize,
    count: usize,
    start: Instant,
    until: Option<Instant>,
    /// Time between two sends of this connection, at a fixed rate.
    interval: Option<Duration>,
}

async fn one_connection(
    spec: Arc<LoadSpec>,
    plan: Plan,
    shared: Arc<Shared>,
) -> Result<ConnResult, LoadError> {
    let tcp = TcpStream::connect(spec.to)
        .await
        .map_err(|e| LoadError::Connect(spec.to, e))?;
    let _ = tcp.set_nodelay(true);
    match spec.tls.clone() {
        None => drive(tcp, &spec, plan, &shared).await,
        Some(t) => {
            let s = t
                .connector
                .connect(t.server_name, tcp)
                .await
                .map_err(|e| LoadError::Connect(spec.to, e))?;
            drive(s, &spec, plan, &shared).await
        }
    }
}

async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    spec: &LoadSpec,
    plan: Plan,
    shared: &Shared,
) -> Result<ConnResult, LoadError> {
    let mut hist = histogram()?;
    let (mut sent, mut accepted, mut refused, mut failed, mut bytes) = (0, 0, 0, 0, 0);
    let mut dec = Decoder::new(1 << 20);
    let mut buf = vec![0u8; 16 * 1024];
    let tags = &spec.establishments;
    for i in 0..plan.count {
        let planned = match plan.interval {
            Some(every) => {
                let at = plan.start + every * (i as u32);
                tokio::time::sleep_until(at.into()).await;
                at
            }
            None => Instant::now(),
        };
        if plan.until.is_some_and(|u| planned >= u) {
            break;
        }
        let tag = &tags[(plan.conn + i) % tags.len()];
        let id = format!("{}-{}-{i}", spec.run_id, plan.conn);
        let patient = (plan.conn * 1_000_000 + i % 1000) as u64;
        let framed = frame(&generate(
            spec.mix,
            &id,
            tag,
            patient,
            mix_index(plan.conn, i),
        ));
        shared.sent(&id, planned);
        sent += 1;
        if stream.write_all(&framed).await.is_err() || stream.flush().await.is_err() {
            shared.not_accepted(&id);
            failed += 1;
            break;
        }
        bytes += framed.len() as u64;
        match read_ack(&mut stream, &mut dec, &mut buf, spec.ack_timeout).await {
            Some(ack) => {
                let _ = hist.record(planned.elapsed().as_micros().max(1) as u64);
                let code = Message::parse(&ack)
                    .map(|m| m.text("MSA-1").into_owned())
                    .unwrap_or_default();
                if code == "AA" || code == "CA" {
                    accepted += 1;
                } else {
                    shared.not_accepted(&id);
                    refused += 1;
                }
            }
            None => {
                shared.not_accepted(&id);
                failed += 1;
                break;
            }
        }
    }
    Ok(ConnResult {
        hist,
        sent,
        accepted,
        refused,
        failed,
        bytes,
    })
}

/// Runs the load and reports.
pub async fn run(spec: LoadSpec) -> Result<LoadReport, LoadError> {
    if spec.establishments.is_empty() {
        return Err(LoadError::NoEstablishment);
    }
    let spec = Arc::new(spec);
    let shared = Arc::new(Shared {
        tracker: Mutex::default(),
        e2e: Mutex::new(histogram()?),
        tracking: !spec.receivers.is_empty(),
    });
    let mut record_systems = Vec::new();
    for addr in &spec.receivers {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| LoadError::Listen(*addr, e))?;
        record_systems.push(tokio::spawn(record_system(l, shared.clone())));
    }
    let conns = spec.connections.max(1);
    let start = Instant::now();
    let until = spec.duration.map(|d| start + d);
    let interval = spec
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(conns as f64 / r));
    let mut tasks = Vec::new();
    for conn in 0..conns {
        let plan = Plan {
            conn,
            count: spec.messages / conns + usize::from(conn < spec.messages % conns),
            // Connections at a fixed rate start spread over one interval.
            start: start + interval.map_or(Duration::ZERO, |i| i * conn as u32 / conns as u32),
            until,
            interval,
        };
        tasks.push(tokio::spawn(one_connection(
            spec.clone(),
            plan,
            shared.clone(),
        )));
    }
    let mut hist = histogram()?;
    let (mut sent, mut accepted, mut refused, mut failed, mut bytes) = (0, 0, 0, 0, 0);
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => {
                hist.add(&r.hist)
                    .map_err(|e| LoadError::Histogram(e.to_string()))?;
                sent += r.sent;
                accepted += r.accepted;
                refused += r.refused;
                failed += r.failed;
                bytes += r.bytes;
            }
            Ok(Err(e)) => return Err(e),
            Err(e) => {
                return Err(LoadError::Internal(format!(
                    "a connection's task ended: {e}"
                )));
            }
        }
    }
    let elapsed = start.elapsed();
    let end_to_end = if spec.receivers.is_empty() {
        None
    } else {
        // Wait for every accepted message to be delivered, or for the drain timeout.
        let deadline = Instant::now() + spec.drain_timeout;
        loop {
            let left = shared.tracker.lock().map(|t| t.pending.len()).unwrap_or(0);
            if left == 0 || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Late duplicates of the last deliveries.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for r in &record_systems {
            r.abort();
        }
        let t = shared
            .tracker
            .lock()
            .map_err(|_| LoadError::Internal("delivery tracker poisoned".into()))?;
        let e2e = shared
            .e2e
            .lock()
            .map_err(|_| LoadError::Internal("latency histogram poisoned".into()))?;
        let span = t
            .last_delivery
            .map_or(Duration::ZERO, |l| l.duration_since(start))
            .as_secs_f64();
        Some(EndToEnd {
            delivered: t.delivered,
            duplicates: t.duplicates,
            undelivered: t.pending.len() as u64,
            elapsed_s: span,
            per_second: t.delivered as f64 / span.max(1e-9),
            latency: Latency::of(&e2e),
        })
    };
    Ok(LoadReport {
        mix: spec.mix.to_string(),
        connections: conns,
        tls: spec.tls.is_some(),
        rate: spec.rate,
        sent,
        accepted,
        refused,
        failed,
        elapsed_s: elapsed.as_secs_f64(),
        per_second: accepted as f64 / elapsed.as_secs_f64().max(1e-9),
        bytes,
        ack: Latency::of(&hist),
        end_to_end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mix_generates_messages_that_parse_with_their_control_id() {
        for mix in [Mix::Oru { obx: 3 }, Mix::Results, Mix::Orders] {
            for i in 0..60 {
                let m = generate(mix, &format!("C{i}"), "CHNORD", 7, i);
                let m = Message::parse(&m).expect("parses");
                assert_eq!(m.text("MSH-10"), format!("C{i}"));
            }
        }
        let big = generate(Mix::Results, "C", "CHNORD", 7, 49);
        assert!(big.len() > 180_000, "{}", big.len());
        let kinds: std::collections::BTreeSet<String> = (0..6)
            .map(|i| {
                let m = generate(Mix::Orders, "C", "CHSUD", 7, i);
                Message::parse(&m)
                    .expect("parses")
                    .text("MSH-9.2")
                    .into_owned()
            })
            .collect();
        assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["A01", "A08", "O21"]);
    }

    #[test]
    fn connections_in_step_do_not_send_their_large_reports_together() {
        // 32 connections at a fixed rate send their message i in the same interval: at
        // most one of them a CDA report, and each still one in 50 of its own.
        let report = |c: usize, i: usize| {
            generate(Mix::Results, "C", "CHNORD", 7, mix_index(c, i)).len() > 100_000
        };
        let mut per_conn = [0; 32];
        for i in 0..200 {
            let big: Vec<usize> = (0..32).filter(|&c| report(c, i)).collect();
            assert!(big.len() <= 1, "interval {i}: {big:?}");
            for c in big {
                per_conn[c] += 1;
            }
        }
        assert_eq!(per_conn, [4; 32]);
    }

    #[test]
    fn mixes_read_as_written() {
        for s in ["results", "orders", "oru:12"] {
            assert_eq!(s.parse::<Mix>().expect("mix").to_string(), s);
        }
        assert!("oru:x".parse::<Mix>().is_err());
        assert!("adt".parse::<Mix>().is_err());
    }
}
