//! Differential: messages generated from the fuzzer's bytes (random delimiters, terminators,
//! French text next to escapes) read by our reader and by hl7-parser must agree at every
//! level where hl7-parser is correct (tests/oracle), and our decoded text must be what the
//! generator encoded.
#![no_main]

#[path = "../../tests/oracle/mod.rs"]
mod oracle;

use labroute::hl7::Message;
use libfuzzer_sys::fuzz_target;
use oracle::generate::{Pick, check_truth, generate};

/// The fuzzer's bytes as the generator's choices (zeros once they run out).
struct Bytes<'a>(arbitrary::Unstructured<'a>);

impl Pick for Bytes<'_> {
    fn below(&mut self, n: usize) -> usize {
        self.0.choose_index(n).unwrap_or(0)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut pick = Bytes(arbitrary::Unstructured::new(data));
    let (msg, truth) = generate(&mut pick);
    let ours = match Message::parse(msg.as_bytes()) {
        Ok(m) => m,
        Err(e) => panic!("a generated message does not parse: {e}\n{msg:?}"),
    };
    if let Some(c) = oracle::compare(&ours, &msg) {
        assert!(c.disagreements.is_empty(), "{:?}\n{msg:?}", c.disagreements);
    }
    if let Err(e) = check_truth(&ours, &truth) {
        panic!("{e}\n{msg:?}");
    }
});
