//! HL7 v2 → FHIR R4 Bundle: the mapping alone, and mapping + JSON (what a DMP feed or a
//! FHIR subscriber pays per result), against reading the message alone.
//! `cargo bench --bench fhir`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use labroute::fhir::{self, Zone};
use labroute::hl7::Message;

fn oru(obx: usize) -> Vec<u8> {
    let mut m = String::from(
        "MSH|^~\\&|SIL|LAB|DPI|CHNORD|20250301100000||ORU^R01^ORU_R01|RES-1|P|2.5|||||FRA|UNICODE UTF-8\r\
PID|||100001^^^CHNORD&1.2.250.1.999.1&ISO^PI~279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS||Hélène^Zoé||19800101|F\r\
PV1|1|I|MED^101^1^CHNORD\rORC|RE|PL-1^DPI-CHNORD|F-1^LAB\rOBR|1|PL-1^DPI-CHNORD|F-1^LAB|GLU^Glucose^L|||202503010800|||||||||||||||202503010930|||F\r",
    );
    for i in 1..=obx {
        m.push_str(&format!(
            "OBX|{i}|NM|2345-7^Glucose^LN||5.{i}|mmol/L^mmol/L^UCUM|3.9-5.8|N|||F|||202503010800\r"
        ));
    }
    m.into_bytes()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("fhir");
    for obx in [5, 30] {
        let msg = oru(obx);
        g.throughput(Throughput::Elements(obx as u64));
        g.bench_function(format!("read_only_{obx}_obx"), |b| {
            b.iter(|| Message::parse(&msg).expect("parses").segment_count())
        });
        g.bench_function(format!("map_{obx}_obx"), |b| {
            b.iter(|| {
                let m = Message::parse(&msg).expect("parses");
                fhir::map_result(&m, Zone::EuropeParis)
                    .expect("maps")
                    .observations
            })
        });
        g.bench_function(format!("map_and_json_{obx}_obx"), |b| {
            b.iter(|| {
                let m = Message::parse(&msg).expect("parses");
                let mapped = fhir::map_result(&m, Zone::EuropeParis).expect("maps");
                fhir::json::to_json(&mapped.bundle).expect("json").len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
