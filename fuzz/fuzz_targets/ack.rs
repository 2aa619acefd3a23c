//! ACK generation for any bytes received: from a message that parses (its header) or one
//! that does not (what can be salvaged of its first line), every ACK code, with and
//! without an ERR. The ACK always parses with our reader, is an ACK, carries the code, and
//! answers the received control id when there was a readable one.
#![no_main]

use labroute::hl7::Message;
use labroute::hl7::ack::{self, AckCode, AckError, AckHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let prepared = labroute::hl7::message::prepare(data);
    let header = match Message::parse(&prepared) {
        Ok(m) => AckHeader::of(&m),
        Err(_) => AckHeader::salvage(data),
    };
    let err = AckError {
        code: 102,
        text: "data type error".into(),
        location: Some(("PID".into(), 3)),
    };
    for code in [
        AckCode::AA,
        AckCode::AE,
        AckCode::AR,
        AckCode::CA,
        AckCode::CE,
        AckCode::CR,
    ] {
        for e in [None, Some(&err)] {
            let a = ack::build(&header, code, e, "ACK1", "20250101120000");
            let m = match Message::parse(&a) {
                Ok(m) => m,
                Err(e) => panic!(
                    "our ACK does not parse: {e}\n{:?}",
                    String::from_utf8_lossy(&a)
                ),
            };
            assert_eq!(m.text("MSH-9.1"), "ACK");
            assert_eq!(m.text("MSH-10"), "ACK1");
            let msa = m.segment("MSA").expect("an ACK has an MSA");
            assert_eq!(msa.field(1).raw(), code.as_str().as_bytes());
            assert_eq!(msa.field(2).raw(), header.control_id.as_slice());
            assert_eq!(m.segment("ERR").is_some(), e.is_some());
        }
    }
    let nak = labroute::ingest::oversized_ack(data, data.len() + 1, data.len());
    assert!(
        Message::parse(&nak).is_ok(),
        "the oversized NAK does not parse"
    );
});
