//! Our HL7 reader against hl7-parser 0.3 on the same messages, for `benches/compare/run.sh`,
//! which adds the PyPI `hl7` and `hl7apy` parsers and prints the ratios (BENCHMARKS.md).
//!
//!   compare --write DIR   writes the messages: generated ORU^R01 of 5, 25 and 60 OBX, and
//!                         the corpus's (`../shared/corpus`, when present) that both readers
//!                         here take; segments end with CR
//!   compare --dir DIR [--secs S]
//!                         times each reader over every `*.hl7` in DIR for S seconds (3),
//!                         one JSON line per reader
//!
//! Under `cargo test` (no `--bench`) it runs a smoke pass on the generated messages only.
//! Readers: `labroute_routing` (parse and read the routing fields, what the ACK path does),
//! `labroute_full` (parse and decode every component of every field), `hl7_parser` (its
//! `parse_message`, which builds every field and component).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use labroute::hl7::Message;
use labroute::hl7::message::prepare;

fn generated() -> Vec<(String, Vec<u8>)> {
    [5, 25, 60]
        .iter()
        .map(|&obx| {
            let mut m = String::from(
                "MSH|^~\\&|SIL|LAB|DPI|CHNORD|20250301100000||ORU^R01^ORU_R01|RES-1|P|2.5|||||FRA|UNICODE UTF-8\r\
PID|||100001^^^CHNORD-IPP^PI~279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS||Hélène^Zoé^^^^^L||19800101|F\r\
PV1|1|I|MED^101^1^CHNORD||||||||||||||||V1234^^^CHNORD-NDA^VN\r\
ORC|RE|PL-1^DPI-CHNORD|F-1^LAB\rOBR|1|PL-1^DPI-CHNORD|F-1^LAB|GLU^Glucose^L|||20250301080000||||||||||||||||F\r",
            );
            for i in 1..=obx {
                m.push_str(&format!(
                    "OBX|{i}|NM|2345-7^Glucose à jeun^LN||5.{i}|mmol/L^mmol/L^UCUM|3.9-5.8|N|||F|||20250301080000||BIO^Biologiste^Anne\r"
                ));
            }
            (format!("generated_oru_{obx}_obx.hl7"), m.into_bytes())
        })
        .collect()
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(p.extension().and_then(|x| x.to_str()), Some("hl7" | "er7")) {
                if let Ok(bytes) = std::fs::read(&p) {
                    let name = p
                        .strip_prefix(&root)
                        .unwrap_or(&p)
                        .to_string_lossy()
                        .replace('/', "_");
                    out.push((name, bytes));
                }
            }
        }
    }
    if out.is_empty() {
        eprintln!(
            "compare: {} is absent: generated messages only",
            root.display()
        );
    }
    out.sort();
    out
}

/// One message with CR segment ends, no blank segments (what every reader takes).
fn normalise(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes)
        .replace("\r\n", "\r")
        .replace('\n', "\r");
    let segs: Vec<&str> = text.split('\r').filter(|s| !s.trim().is_empty()).collect();
    let mut out = segs.join("\r");
    out.push('\r');
    out.into_bytes()
}

fn routing(msg: &[u8]) -> usize {
    let Ok(m) = Message::parse(msg) else { return 0 };
    labroute::router::extract(&m)
        .map_or(1, |f| f.control_id.len() + f.patient_authorities.len() + 1)
}

fn full(msg: &[u8]) -> usize {
    Message::parse(msg).map_or(0, |m| common::read_everything(&m))
}

fn hl7_parser(text: &str) -> usize {
    // It panics on some inputs (DECISIONS D3): a panic is a message it cannot read.
    std::panic::catch_unwind(|| hl7_parser::parse_message(text).map_or(0, |m| m.segments.len()))
        .unwrap_or(0)
}

/// Messages per second and bytes per second of `f` over `msgs` for about `secs`.
fn time<T>(
    msgs: &[T],
    secs: f64,
    size: impl Fn(&T) -> usize,
    f: impl Fn(&T) -> usize,
) -> (f64, f64, usize) {
    let bytes: usize = msgs.iter().map(&size).sum();
    let start = Instant::now();
    let (mut rounds, mut sink) = (0usize, 0usize);
    while start.elapsed() < Duration::from_secs_f64(secs) || rounds == 0 {
        for m in msgs {
            sink = sink.wrapping_add(std::hint::black_box(f(std::hint::black_box(m))));
        }
        rounds += 1;
    }
    let s = start.elapsed().as_secs_f64();
    (
        (rounds * msgs.len()) as f64 / s,
        (rounds * bytes) as f64 / s,
        sink,
    )
}

fn run(msgs: &[(String, Vec<u8>)], secs: f64) {
    let raw: Vec<Vec<u8>> = msgs.iter().map(|(_, m)| m.clone()).collect();
    let texts: Vec<String> = raw
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    let report = |reader: &str, (per_s, bytes_s, _): (f64, f64, usize)| {
        println!(
            "{{\"reader\":\"{reader}\",\"messages\":{},\"per_second\":{per_s:.0},\"mb_per_second\":{:.2}}}",
            msgs.len(),
            bytes_s / 1e6
        );
    };
    report(
        "labroute_routing",
        time(&raw, secs, |m| m.len(), |m| routing(&prepare(m))),
    );
    report(
        "labroute_full",
        time(&raw, secs, |m| m.len(), |m| full(&prepare(m))),
    );
    report(
        "hl7_parser",
        time(&texts, secs, |m| m.len(), |m| hl7_parser(m)),
    );
}

/// The messages both readers here take: each reads it, and hl7-parser neither fails nor
/// panics on it.
fn both_take(msgs: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    std::panic::set_hook(Box::new(|_| {}));
    let kept: Vec<_> = msgs
        .into_iter()
        .map(|(n, m)| (n, normalise(&m)))
        .filter(|(_, m)| {
            full(&prepare(m)) > 0 && std::str::from_utf8(m).is_ok_and(|t| hl7_parser(t) > 0)
        })
        .collect();
    let _ = std::panic::take_hook();
    kept
}

fn read_dir(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "hl7"))
                .filter_map(|p| {
                    Some((
                        p.file_name()?.to_string_lossy().into_owned(),
                        std::fs::read(&p).ok()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(dir) = arg("--write") {
        let dir = PathBuf::from(dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!("compare: {}: {e}", dir.display());
            std::process::exit(2);
        }
        let all: Vec<_> = generated().into_iter().chain(corpus()).collect();
        let total = all.len();
        let kept = both_take(all);
        for (name, m) in &kept {
            let name = if name.ends_with(".hl7") {
                name.clone()
            } else {
                format!("{name}.hl7")
            };
            if let Err(e) = std::fs::write(dir.join(name), m) {
                eprintln!("compare: {}: {e}", dir.display());
                std::process::exit(2);
            }
        }
        eprintln!(
            "compare: {} of {total} messages taken by both readers here, written to {}",
            kept.len(),
            dir.display()
        );
    } else if let Some(dir) = arg("--dir") {
        let secs = arg("--secs").and_then(|s| s.parse().ok()).unwrap_or(3.0);
        let msgs = read_dir(Path::new(&dir));
        if msgs.is_empty() {
            eprintln!("compare: no *.hl7 in {dir}");
            std::process::exit(2);
        }
        run(&msgs, secs);
    } else if !args.iter().any(|a| a == "--bench") {
        // `cargo test`: a smoke pass.
        run(&both_take(generated()), 0.01);
    } else {
        eprintln!("usage: compare --write DIR | --dir DIR [--secs S] (benches/compare/run.sh)");
    }
}
