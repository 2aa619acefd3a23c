//! What several benches share.

use labroute::hl7::Message;

/// Reads every component of every field repetition of every segment, decoded, as a reader
/// that builds the whole tree does; the bytes seen, so that nothing is optimised away.
pub fn read_everything(m: &Message<'_>) -> usize {
    let mut n = 0;
    for seg in m.segments() {
        for field in seg.fields() {
            for rep in field.repetitions() {
                for comp in rep.components() {
                    n += comp.text().len() + 1;
                }
            }
        }
    }
    n
}
