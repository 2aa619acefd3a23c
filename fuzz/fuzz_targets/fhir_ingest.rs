//! FHIR ingest on any body: a Bundle becomes an HL7 v2 twin or a list of issues, never a
//! panic; a twin always parses with our reader and carries the control id reported.
#![no_main]

use labroute::hl7::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match labroute::fhir::inbound::to_v2(data, "fuzz-sender", "20250101120000") {
        Ok(inbound) => {
            let m = match Message::parse(&inbound.v2) {
                Ok(m) => m,
                Err(e) => panic!("the v2 twin does not parse: {e}"),
            };
            assert_eq!(m.text("MSH-10"), inbound.control_id.as_str());
        }
        Err(issues) => assert!(!issues.is_empty(), "refused without an issue"),
    }
});
