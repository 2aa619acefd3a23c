//! HL7 v2 → FHIR R4 Bundle: the mapping alone, and mapping + JSON (what a DMP feed or a
//! FHIR subscriber pays per result), against reading the message alone; the DMP's ITI-65
//! Bundle; and the way in: a posted transaction Bundle to its HL7 v2 twin.
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
        let posted = transaction(&msg);
        g.bench_function(format!("in_to_v2_{obx}_obx"), |b| {
            b.iter(|| {
                fhir::inbound::to_v2(&posted, "sil", "20250301100000")
                    .expect("twin")
                    .v2
                    .len()
            })
        });
        let publisher = fhir::mhd::Publisher {
            id: "ES1",
            name: "CH Nordville",
            finess: Some("590000011"),
        };
        g.bench_function(format!("dmp_provide_bundle_{obx}_obx"), |b| {
            b.iter(|| {
                let m = Message::parse(&msg).expect("parses");
                fhir::mhd::provide_bundle(&m, &msg, 1, &publisher, &[], Zone::EuropeParis, 0)
                    .expect("bundle")
                    .json
                    .len()
            })
        });
    }
    g.finish();
}

/// The result's Bundle as a client would post it: a transaction, without MessageHeader.
fn transaction(msg: &[u8]) -> Vec<u8> {
    let m = Message::parse(msg).expect("parses");
    let mapped = fhir::map_result(&m, Zone::EuropeParis).expect("maps");
    let json = fhir::json::to_json(&mapped.bundle).expect("json");
    let mut b: serde_json::Value = serde_json::from_str(&json).expect("json");
    b["type"] = "transaction".into();
    if let Some(entries) = b["entry"].as_array_mut() {
        entries.retain(|e| e["resource"]["resourceType"] != "MessageHeader");
        for e in entries.iter_mut() {
            let ty = e["resource"]["resourceType"].clone();
            e["request"] = serde_json::json!({"method": "POST", "url": ty});
        }
    }
    b.to_string().into_bytes()
}

criterion_group!(benches, bench);
criterion_main!(benches);
