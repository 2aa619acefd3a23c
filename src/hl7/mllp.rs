//! MLLP framing: `0x0B <message> 0x1C 0x0D`. Pure and incremental; no I/O.
//!
//! The decoder is fed whatever the socket returned and yields complete frames. It never holds
//! more than `max_frame` bytes of one frame: a longer frame is discarded as it streams in (its
//! first bytes are kept so the caller can still answer with a NAK naming the message).

use memchr::{memchr, memmem};

/// Start-of-block byte.
pub const START: u8 = 0x0B;
/// End-of-block byte, followed by a carriage return.
pub const END: [u8; 2] = [0x1C, 0x0D];
/// How many leading bytes of an oversized frame are kept for the NAK.
const OVERSIZED_HEAD: usize = 4096;

/// Wraps a message in an MLLP frame.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(START);
    out.extend_from_slice(message);
    out.extend_from_slice(&END);
    out
}

/// One unit the decoder produces.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A complete frame's content (without the framing bytes).
    Frame(Vec<u8>),
    /// A frame longer than the limit: its first bytes and its total length.
    Oversized { head: Vec<u8>, len: usize },
}

#[derive(Debug)]
enum State {
    /// Looking for a start byte; everything else is skipped.
    Between,
    /// Inside a frame; `scanned` bytes of `buf` are known not to hold the end marker.
    InFrame { scanned: usize },
    /// Inside a frame that passed the limit: discarding until the end marker.
    Discarding {
        head: Vec<u8>,
        len: usize,
        pending_1c: bool,
    },
}

/// Incremental MLLP decoder with a bounded frame size.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    state: State,
    max_frame: usize,
    skipped: u64,
}

impl Decoder {
    pub fn new(max_frame: usize) -> Self {
        Decoder {
            buf: Vec::new(),
            state: State::Between,
            max_frame,
            skipped: 0,
        }
    }

    /// How much of an oversized frame is kept: the same however the frame was cut into
    /// reads (it is longer than `max_frame` either way).
    fn head_len(&self) -> usize {
        OVERSIZED_HEAD.min(self.max_frame)
    }

    /// Bytes seen outside any frame since the last call (and resets the count).
    pub fn take_skipped(&mut self) -> u64 {
        std::mem::take(&mut self.skipped)
    }

    /// True when no partial frame is buffered.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Between) && self.buf.is_empty()
    }

    /// Feeds bytes and returns every unit they complete, in order. A start byte inside a
    /// frame means the sender abandoned it: what came before is skipped, a new frame
    /// begins. The units are the same however the bytes are cut into calls.
    pub fn feed(&mut self, mut input: &[u8]) -> Vec<Decoded> {
        let mut out = Vec::new();
        loop {
            if let State::Between = self.state {
                match memchr(START, input) {
                    Some(i) => {
                        self.skipped += i as u64;
                        input = &input[i + 1..];
                        self.begin();
                    }
                    None => {
                        self.skipped += input.len() as u64;
                        return out;
                    }
                }
                continue;
            }
            // Inside a frame: the bytes up to the next start byte.
            let (now, rest) = match memchr(START, input) {
                Some(i) => (&input[..i], Some(&input[i + 1..])),
                None => (input, None),
            };
            self.in_frame(now, &mut out);
            let Some(rest) = rest else {
                return out;
            };
            // A start byte: after a frame that ended, the next one; inside one, it abandons
            // it (skipped with the start byte that began it).
            self.skipped += match &self.state {
                State::Between => 0,
                State::InFrame { .. } => self.buf.len() as u64 + 1,
                State::Discarding { len, .. } => *len as u64 + 1,
            };
            self.begin();
            input = rest;
        }
    }

    fn begin(&mut self) {
        self.buf.clear();
        self.state = State::InFrame { scanned: 0 };
    }

    /// Bytes of a frame (no start byte among them): completes it, or keeps it, or discards
    /// it past the limit. Bytes after its end are skipped.
    fn in_frame(&mut self, input: &[u8], out: &mut Vec<Decoded>) {
        match &mut self.state {
            State::Between => self.skipped += input.len() as u64,
            State::InFrame { scanned } => {
                // Rescan one byte back so an end marker split across reads is found.
                let from = scanned.saturating_sub(1);
                self.buf.extend_from_slice(input);
                if let Some(i) = memmem::find(&self.buf[from..], &END) {
                    let end = from + i;
                    self.skipped += (self.buf.len() - end - 2) as u64;
                    self.buf.truncate(end);
                    let frame = std::mem::take(&mut self.buf);
                    if frame.len() > self.max_frame {
                        let head = frame[..self.head_len()].to_vec();
                        out.push(Decoded::Oversized {
                            head,
                            len: frame.len(),
                        });
                    } else {
                        out.push(Decoded::Frame(frame));
                    }
                    self.state = State::Between;
                } else if self.buf.len()
                    > self.max_frame + usize::from(self.buf.last() == Some(&END[0]))
                {
                    // (A last byte 0x1C may begin the end marker of a frame of exactly the
                    // limit: kept until the next byte tells.)
                    let head = self.buf[..self.head_len()].to_vec();
                    let len = self.buf.len();
                    let pending_1c = self.buf.last() == Some(&END[0]);
                    self.buf = Vec::new();
                    self.state = State::Discarding {
                        head,
                        len,
                        pending_1c,
                    };
                } else {
                    *scanned = self.buf.len();
                }
            }
            State::Discarding {
                head,
                len,
                pending_1c,
            } => {
                if input.is_empty() {
                    return;
                }
                let ended_at = if *pending_1c && input[0] == END[1] {
                    *len -= 1;
                    Some(1)
                } else {
                    memmem::find(input, &END).map(|i| {
                        *len += i;
                        i + 2
                    })
                };
                match ended_at {
                    Some(after) => {
                        out.push(Decoded::Oversized {
                            head: std::mem::take(head),
                            len: *len,
                        });
                        self.skipped += (input.len() - after) as u64;
                        self.state = State::Between;
                    }
                    None => {
                        *len += input.len();
                        *pending_1c = input.last() == Some(&END[0]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(d: Vec<Decoded>) -> Vec<Vec<u8>> {
        d.into_iter()
            .map(|x| match x {
                Decoded::Frame(f) => f,
                Decoded::Oversized { .. } => b"<oversized>".to_vec(),
            })
            .collect()
    }

    #[test]
    fn one_frame_in_one_read() {
        let mut d = Decoder::new(100);
        assert_eq!(
            frames(d.feed(b"\x0bMSH|x\x1c\x0d")),
            vec![b"MSH|x".to_vec()]
        );
        assert!(d.is_idle());
    }

    #[test]
    fn frame_split_at_every_byte_including_the_end_marker() {
        let input = b"junk\x0bMSH|a\rPID|1\x1c\x0d\x0bMSH|b\x1c\x0d";
        let mut d = Decoder::new(100);
        let mut got = Vec::new();
        for b in input.iter() {
            got.extend(frames(d.feed(std::slice::from_ref(b))));
        }
        assert_eq!(got, vec![b"MSH|a\rPID|1".to_vec(), b"MSH|b".to_vec()]);
        assert_eq!(d.take_skipped(), 4);
    }

    #[test]
    fn two_frames_in_one_read_and_bytes_between_are_counted() {
        let mut d = Decoder::new(100);
        let got = frames(d.feed(b"\x0bA\x1c\x0d\r\n\x0bB\x1c\x0d"));
        assert_eq!(got, vec![b"A".to_vec(), b"B".to_vec()]);
        assert_eq!(d.take_skipped(), 2);
    }

    #[test]
    fn oversized_frame_is_reported_once_with_its_length_then_decoding_resumes() {
        let mut d = Decoder::new(10);
        let mut got = d.feed(b"\x0bMSH|0123456789");
        assert!(got.is_empty());
        got.extend(d.feed(b"abcdef\x1c"));
        got.extend(d.feed(b"\x0d\x0bOK\x1c\x0d"));
        assert_eq!(got.len(), 2);
        match &got[0] {
            Decoded::Oversized { head, len } => {
                assert!(head.starts_with(b"MSH|"));
                assert_eq!(*len, 20);
            }
            other => panic!("expected oversized, got {other:?}"),
        }
        assert_eq!(got[1], Decoded::Frame(b"OK".to_vec()));
    }

    #[test]
    fn start_byte_inside_a_frame_restarts_it() {
        let mut d = Decoder::new(100);
        assert_eq!(
            frames(d.feed(b"\x0bLOST\x0bKEPT\x1c\x0d")),
            vec![b"KEPT".to_vec()]
        );
        assert_eq!(d.take_skipped(), 5);
    }

    #[test]
    fn frame_round_trips() {
        let mut d = Decoder::new(100);
        assert_eq!(frames(d.feed(&frame(b"MSH|z"))), vec![b"MSH|z".to_vec()]);
    }

    /// What a decoder with a 256-byte limit yields for `input` read `step` bytes at a time,
    /// and the bytes it skipped.
    fn in_reads(input: &[u8], step: usize) -> (Vec<Decoded>, u64) {
        let mut d = Decoder::new(256);
        let got = input.chunks(step).flat_map(|c| d.feed(c)).collect();
        (got, d.take_skipped())
    }

    /// Found by the `mllp_decoder` fuzz target: with a limit under 4 KiB, the head kept of
    /// an oversized frame depended on where the reads were cut.
    #[test]
    fn an_oversized_frame_keeps_the_same_head_however_it_is_cut() {
        let mut input = vec![START];
        input
            .extend_from_slice(b"MSH|^~\\&#|||||20230501102531-0400||ORU^R01^ORU_R01|12345||2.5.1");
        input.extend(std::iter::repeat_n(b'|', 200));
        input.extend_from_slice(&END);
        let whole = Decoder::new(256).feed(&input);
        for step in 1..=17 {
            assert_eq!(in_reads(&input, step).0, whole, "reads of {step} bytes");
        }
        let [Decoded::Oversized { head, len }] = whole.as_slice() else {
            panic!("{whole:?}");
        };
        assert_eq!((head.len(), *len), (256, input.len() - 3));
    }

    /// Found by the `mllp_decoder` fuzz target: a start byte inside a frame already past
    /// the limit was ignored when the frame arrived in several reads, and honoured when it
    /// arrived in one.
    #[test]
    fn a_start_byte_inside_an_oversized_frame_abandons_it_however_it_is_cut() {
        let mut input = vec![START];
        input.extend(std::iter::repeat_n(b'x', 300));
        input.push(START);
        input.extend_from_slice(b"MSH|KEPT");
        input.extend_from_slice(&END);
        for step in 1..=input.len() {
            let (got, skipped) = in_reads(&input, step);
            assert_eq!(
                got,
                vec![Decoded::Frame(b"MSH|KEPT".to_vec())],
                "reads of {step}"
            );
            assert_eq!(skipped, 301, "reads of {step}");
        }
    }

    /// Found by the `mllp_decoder` fuzz target in CI: a frame of exactly the limit, read a
    /// byte at a time, was taken for an oversized one when its end marker's first byte
    /// arrived alone.
    #[test]
    fn a_frame_of_exactly_the_limit_is_a_frame_however_it_is_cut() {
        let mut input = vec![START];
        input.extend(std::iter::repeat_n(b'x', 256));
        input.extend_from_slice(&END);
        for step in 1..=input.len() {
            let got = in_reads(&input, step).0;
            assert_eq!(
                got,
                vec![Decoded::Frame(vec![b'x'; 256])],
                "reads of {step}"
            );
        }
        // One byte more is oversized, however it is cut.
        input.insert(1, b'y');
        for step in 1..=input.len() {
            let got = in_reads(&input, step).0;
            assert!(
                matches!(got.as_slice(), [Decoded::Oversized { len: 257, .. }]),
                "reads of {step}: {got:?}"
            );
        }
    }
}
