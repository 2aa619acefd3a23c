//! HL7 v2: MLLP framing, the message reader, text decoding and acknowledgements.
//!
//! Pure code: no I/O, no logging, no allocation beyond what a caller asks for. Fuzzed.

pub mod ack;
pub mod message;
pub mod mllp;
pub mod text;
pub mod zam;

pub use message::{Delimiters, Field, Message, ParseError, ParseErrorKind, Segment, Value};
pub use text::Charset;
