//! The ACK path's CPU work, piece by piece, on a 2-3 KB ORU^R01 (and a 5-OBX one):
//! - `parse_only`: `Message::parse` alone (the whole message checked, segments indexed);
//! - `routing_fields`: parse and read the dozen routing fields (`router::extract`);
//! - `read_tag`: that plus the tenant decision: the figure for the 200k/s target;
//! - `tenant_decision`: the decision alone, on facts read beforehand;
//! - `full_read`: every segment, field, repetition and component, decoded (fields in one
//!   pass, `Segment::fields`); `full_read_by_number`: the same, each field found by its
//!   number (`Segment::field(n)`, from the segment's start each time);
//! - `ack_build`: the ACK for the message;
//! - `hl7_parser_parse_only`: hl7-parser 0.3 parsing the same bytes (no fields read);
//! - `memchr_bound`: the same bytes split into segments and fields with `memchr`, nothing
//!   checked or decoded: the issue's yardstick (read + tag is to take at most twice its
//!   time), measured in the same run as `read_tag` so that the ratio holds whatever the
//!   machine.
//!
//! `cargo bench --bench read_tag`; BENCHMARKS.md has the latest figures.

mod common;

use std::path::PathBuf;

use common::read_everything;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use labroute::config::Config;
use labroute::hl7::Message;
use labroute::hl7::ack::{self, AckCode, AckHeader};
use labroute::router::{MemoryOrders, decide, extract};

/// An ORU^R01 as a French lab sends it: INS and IPP, visit, placer and filler numbers, the
/// ordering provider, and `obx` results with reference ranges and comments.
fn oru(obx: usize) -> Vec<u8> {
    let mut m = String::from(
        "MSH|^~\\&|SIL|LAB|DPI|CHNORD|20250301100000||ORU^R01^ORU_R01|RES-1|P|2.5|||||FRA|UNICODE UTF-8\r\
PID|||100001^^^CHNORD-IPP^PI~279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS||Hélène^Zoé^^^^^L||19800101|F|||12 rue des Écoles^^Lille^^59000^FRA\r\
PV1|1|I|MED^101^1^CHNORD||||10000000001^Médecin^Jean^^^^^^RPPS&1.2.250.1.71.4.2.1&ISO||||||||||||V1234^^^CHNORD-NDA^VN\r\
ORC|RE|PL-1^DPI-CHNORD|F-1^LAB||CM||||20250301080000|||10000000001^Médecin^Jean^^^^^^RPPS\r\
OBR|1|PL-1^DPI-CHNORD|F-1^LAB|GLU^Glucose^L|||20250301080000|||||||||10000000001^Médecin^Jean||||||20250301093000|||F\r",
    );
    for i in 1..=obx {
        m.push_str(&format!(
            "OBX|{i}|NM|2345-7^Glucose à jeun^LN||5.{i}|mmol/L^mmol/L^UCUM|3.9-5.8|N|||F|||20250301080000||BIO^Biologiste^Anne\r\
NTE|{i}|L|Résultat contrôlé \\T\\ validé\r"
        ));
    }
    m.into_bytes()
}

fn bench(c: &mut Criterion) {
    let routes = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("routes");
    let cfg = Config::load(&routes).expect("routes/ validates");
    let orders = MemoryOrders::default();
    let mut g = c.benchmark_group("read_tag");
    for obx in [5, 13] {
        let msg = oru(obx);
        let size = msg.len();
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("parse_only_{size}b"), |b| {
            b.iter(|| Message::parse(&msg).expect("parses").segment_count())
        });
        g.bench_function(format!("routing_fields_{size}b"), |b| {
            b.iter(|| {
                let m = Message::parse(&msg).expect("parses");
                extract(&m).expect("facts")
            })
        });
        g.bench_function(format!("read_tag_{size}b"), |b| {
            b.iter(|| {
                let m = Message::parse(&msg).expect("parses");
                let f = extract(&m).expect("facts");
                decide(&f, &cfg, &orders)
            })
        });
        let m = Message::parse(&msg).expect("parses");
        let facts = extract(&m).expect("facts");
        g.bench_function(format!("tenant_decision_{size}b"), |b| {
            b.iter(|| decide(&facts, &cfg, &orders))
        });
        g.bench_function(format!("full_read_{size}b"), |b| {
            b.iter(|| read_everything(&Message::parse(&msg).expect("parses")))
        });
        g.bench_function(format!("full_read_by_number_{size}b"), |b| {
            b.iter(|| read_by_number(&Message::parse(&msg).expect("parses")))
        });
        g.bench_function(format!("ack_build_{size}b"), |b| {
            b.iter(|| {
                let m = Message::parse(&msg).expect("parses");
                ack::build(
                    &AckHeader::of(&m),
                    AckCode::AA,
                    None,
                    "ACK-1",
                    "20250301100000",
                )
            })
        });
        g.bench_function(format!("memchr_bound_{size}b"), |b| {
            b.iter(|| memchr_split(&msg))
        });
        g.bench_function(format!("hl7_parser_parse_only_{size}b"), |b| {
            let text = String::from_utf8(msg.clone()).expect("utf8");
            b.iter(|| {
                hl7_parser::parse_message(&text)
                    .map(|m| m.segments.len())
                    .unwrap_or(0)
            })
        });
    }
    g.finish();
}

/// The bytes split into segments (`\r`, `\n`) and each segment into fields (`|`) with
/// `memchr`, as issue 8 measured its bound ("splitting a 2.7 KB ORU^R01 into segments and
/// fields with memchr"): the fields' lengths summed so that nothing is optimised away.
fn memchr_split(bytes: &[u8]) -> usize {
    let mut n = 0;
    let mut start = 0;
    for end in memchr::memchr2_iter(b'\r', b'\n', bytes).chain([bytes.len()]) {
        let seg = &bytes[start..end];
        let mut from = 0;
        for sep in memchr::memchr_iter(b'|', seg).chain([seg.len()]) {
            n += sep - from + 1;
            from = sep + 1;
        }
        start = end + 1;
    }
    n
}

/// `read_everything` with each field found by its number: what a reader that knows only
/// `Segment::field(n)` pays (quadratic in a segment's field count).
fn read_by_number(m: &Message<'_>) -> usize {
    let mut n = 0;
    for seg in m.segments() {
        for f in 1..=seg.field_count() {
            for rep in seg.field(f).repetitions() {
                for comp in rep.components() {
                    n += comp.text().len() + 1;
                }
            }
        }
    }
    n
}

criterion_group!(benches, bench);
criterion_main!(benches);
