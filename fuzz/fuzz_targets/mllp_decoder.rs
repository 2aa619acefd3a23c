//! The MLLP decoder on any bytes, cut into reads anywhere: it never panics, never yields a
//! frame above its limit, and yields the same units however the bytes are cut.
#![no_main]

use labroute::hl7::mllp::{Decoded, Decoder};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 256;

fn run(chunks: &[&[u8]]) -> Vec<Decoded> {
    let mut d = Decoder::new(LIMIT);
    let mut out = Vec::new();
    for c in chunks {
        out.extend(d.feed(c));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // The first byte says where to cut the rest.
    let Some((&step, bytes)) = data.split_first() else {
        return;
    };
    let whole = run(&[bytes]);
    let step = usize::from(step % 17) + 1;
    let cut: Vec<&[u8]> = bytes.chunks(step).collect();
    let pieces = run(&cut);
    assert_eq!(
        whole, pieces,
        "cutting the input into {step}-byte reads changed the frames"
    );
    for u in &whole {
        match u {
            Decoded::Frame(f) => assert!(f.len() <= LIMIT, "frame above the limit"),
            Decoded::Oversized { len, .. } => assert!(*len > LIMIT, "oversized below the limit"),
        }
    }
});
