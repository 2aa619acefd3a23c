//! The HL7 reader on any bytes: parsing, and reading every segment, field, repetition,
//! component and subcomponent (raw and decoded), never panics; every value read lies inside
//! the message.
#![no_main]

use labroute::hl7::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let prepared = labroute::hl7::message::prepare(data);
    let Ok(m) = Message::parse(&prepared) else {
        return;
    };
    let whole = m.bytes().as_ptr_range();
    let inside = |raw: &[u8]| {
        let r = raw.as_ptr_range();
        assert!(raw.is_empty() || (r.start >= whole.start && r.end <= whole.end));
    };
    let _ = m.charset();
    for seg in m.segments() {
        inside(seg.id());
        for n in 0..=seg.field_count() + 1 {
            let field = seg.field(n);
            inside(field.raw());
            let _ = field.text();
            for rep in field.repetitions().take(64) {
                inside(rep.raw());
                let _ = rep.text();
                for (c, comp) in rep.components().into_iter().enumerate().take(16) {
                    inside(comp.raw());
                    assert_eq!(comp.raw(), rep.component(c + 1).raw());
                    for s in 1..4 {
                        let sub = comp.subcomponent(s);
                        inside(sub.raw());
                        let _ = sub.text();
                    }
                }
            }
        }
    }
    for path in ["MSH-9", "MSH-10", "PID-3[2].4.1", "OBX[2]-5", "ZZZ-999.9.9"] {
        let _ = m.get(path).map(|v| v.text());
    }
    let _ = labroute::router::facts::extract(&m);
});
