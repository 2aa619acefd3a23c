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

    /// Bytes seen outside any frame since the last call (and resets the count).
    pub fn take_skipped(&mut self) -> u64 {
        std::mem::take(&mut self.skipped)
    }

    /// True when no partial frame is buffered.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Between) && self.buf.is_empty()
    }

    /// Feeds bytes and returns every unit they complete, in order.
    pub fn feed(&mut self, mut input: &[u8]) -> Vec<Decoded> {
        let mut out = Vec::new();
        loop {
            match &mut self.state {
                State::Between => match memchr(START, input) {
                    Some(i) => {
                        self.skipped += i as u64;
                        input = &input[i + 1..];
                        self.buf.clear();
                        self.state = State::InFrame { scanned: 0 };
                    }
                    None => {
                        self.skipped += input.len() as u64;
                        return out;
                    }
                },
                State::InFrame { scanned } => {
                    // Rescan one byte back so an end marker split across reads is found.
                    let from = scanned.saturating_sub(1);
                    self.buf.extend_from_slice(input);
                    if let Some(i) = memmem::find(&self.buf[from..], &END) {
                        let end = from + i;
                        let rest = self.buf.split_off(end + 2);
                        self.buf.truncate(end);
                        let frame = std::mem::take(&mut self.buf);
                        // A start byte inside a frame means the sender abandoned the previous
                        // one: keep only what follows the last start byte.
                        let frame = match memchr::memrchr(START, &frame) {
                            Some(s) => {
                                self.skipped += (s + 1) as u64;
                                frame[s + 1..].to_vec()
                            }
                            None => frame,
                        };
                        if frame.len() > self.max_frame {
                            let head = frame[..OVERSIZED_HEAD.min(frame.len())].to_vec();
                            out.push(Decoded::Oversized {
                                head,
                                len: frame.len(),
                            });
                        } else {
                            out.push(Decoded::Frame(frame));
                        }
                        self.state = State::Between;
                        self.buf = rest;
                        if !self.buf.is_empty() {
                            let pending = std::mem::take(&mut self.buf);
                            let mut more = self.feed(&pending);
                            out.append(&mut more);
                        }
                        return out;
                    }
                    if self.buf.len() > self.max_frame {
                        let head = self.buf[..OVERSIZED_HEAD.min(self.buf.len())].to_vec();
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
                    return out;
                }
                State::Discarding {
                    head,
                    len,
                    pending_1c,
                } => {
                    if input.is_empty() {
                        return out;
                    }
                    if *pending_1c && input[0] == END[1] {
                        let head = std::mem::take(head);
                        let len = *len - 1;
                        out.push(Decoded::Oversized { head, len });
                        input = &input[1..];
                        self.state = State::Between;
                        continue;
                    }
                    match memmem::find(input, &END) {
                        Some(i) => {
                            let head = std::mem::take(head);
                            let len = *len + i;
                            out.push(Decoded::Oversized { head, len });
                            input = &input[i + 2..];
                            self.state = State::Between;
                        }
                        None => {
                            *len += input.len();
                            *pending_1c = input.last() == Some(&END[0]);
                            return out;
                        }
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
}
