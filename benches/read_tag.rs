//! Read + tag: parse a message, extract routing facts and decide its establishment.
//! `cargo bench --bench read_tag`

use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use labroute::config::Config;
use labroute::hl7::Message;
use labroute::router::{MemoryOrders, decide, extract};

fn oru(obx: usize) -> Vec<u8> {
    let mut m = String::from(
        "MSH|^~\\&|SIL|LAB|DPI|CHNORD|20250301100000||ORU^R01^ORU_R01|RES-1|P|2.5|||||FRA|UNICODE UTF-8\r\
PID|||100001^^^CHNORD-IPP^PI~279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS||Hélène^Zoé||19800101|F\r\
PV1|1|I|MED^101^1^CHNORD\rORC|RE|PL-1^DPI-CHNORD|F-1^LAB\rOBR|1|PL-1^DPI-CHNORD|F-1^LAB|GLU^Glucose^L|||||||||||||||||||F\r",
    );
    for i in 1..=obx {
        m.push_str(&format!(
            "OBX|{i}|NM|GLU^Glucose^L||5.{i}|mmol/L|3.9-5.8|N|||F\r"
        ));
    }
    m.into_bytes()
}

fn bench(c: &mut Criterion) {
    let routes = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("routes");
    let cfg = Config::load(&routes).expect("routes/ validates");
    let orders = MemoryOrders::default();
    let mut g = c.benchmark_group("read_tag");
    for obx in [5, 30] {
        let msg = oru(obx);
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_function(format!("labroute_oru_{obx}_obx"), |b| {
            b.iter(|| {
                let m = Message::parse(&msg).expect("parses");
                let f = extract(&m).expect("facts");
                decide(&f, &cfg, &orders)
            })
        });
        g.bench_function(format!("hl7_parser_oru_{obx}_obx_parse_only"), |b| {
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

criterion_group!(benches, bench);
criterion_main!(benches);
