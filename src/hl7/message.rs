//! The HL7 v2 reader: zero-copy over the message bytes, lazy field access.
//!
//! `Message::parse` checks the whole message once (MSH, delimiters, segment ids, charset
//! validity) and indexes segment boundaries; fields are split only when asked for.

use std::borrow::Cow;

use memchr::{memchr, memchr2};

use super::text::{self, Charset};

/// The delimiters declared in MSH-1 and MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Delimiters {
    pub field: u8,
    pub component: u8,
    pub repetition: Option<u8>,
    pub escape: Option<u8>,
    pub subcomponent: Option<u8>,
    /// v2.7+ fifth encoding character.
    pub truncation: Option<u8>,
}

impl Delimiters {
    /// `|^~\&`.
    pub const fn standard() -> Self {
        Delimiters {
            field: b'|',
            component: b'^',
            repetition: Some(b'~'),
            escape: Some(b'\\'),
            subcomponent: Some(b'&'),
            truncation: None,
        }
    }

    /// MSH-2 as it should be written back.
    pub fn encoding_characters(&self) -> Vec<u8> {
        let mut v = vec![self.component];
        for c in [
            self.repetition,
            self.escape,
            self.subcomponent,
            self.truncation,
        ] {
            match c {
                Some(c) => v.push(c),
                None => break,
            }
        }
        v
    }
}

/// Why a message was not read, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at byte {position}")]
pub struct ParseError {
    pub kind: ParseErrorKind,
    /// Byte offset in the message (after any byte-order mark).
    pub position: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("message does not start with an MSH segment")]
    NoMsh,
    #[error("MSH-1/MSH-2 do not declare usable delimiters")]
    BadDelimiters,
    #[error("segment id is not three upper-case letters or digits")]
    BadSegmentId,
    #[error("MSH-18 names a character set this engine does not support")]
    UnsupportedCharset,
    #[error("byte is not valid in the declared character set")]
    InvalidText,
    #[error("a second MSH segment inside one message")]
    SecondMsh,
}

impl ParseErrorKind {
    /// HL7 table 0357 code for this error.
    pub fn hl7_code(self) -> u16 {
        match self {
            ParseErrorKind::NoMsh | ParseErrorKind::BadSegmentId | ParseErrorKind::SecondMsh => 100,
            ParseErrorKind::BadDelimiters | ParseErrorKind::InvalidText => 102,
            ParseErrorKind::UnsupportedCharset => 103,
        }
    }
}

/// A parsed message borrowing the bytes it was read from.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    bytes: &'a [u8],
    delims: Delimiters,
    charset: Charset,
    charset_declared: bool,
    /// The whole message as text, when its charset is ASCII or UTF-8 (checked once at
    /// parse): values are sliced from it instead of being checked again one by one.
    valid: Option<&'a str>,
    /// (start, end) of each non-empty segment.
    segments: Vec<(u32, u32)>,
}

/// Strips a UTF-8 byte-order mark, which some senders put before MSH.
pub fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// What the reader should read: the frame without a UTF-8 byte-order mark and, when MSH-2
/// declares a delimiter as a non-ASCII UTF-8 character (the ANS examples write `^˜\&` with
/// U+02DC SMALL TILDE, and use it as the repetition separator), a copy in which every
/// occurrence of that character is replaced by an ASCII delimiter that appears nowhere in the
/// message. The substitution is one-to-one, so nothing is lost or merged; stored and
/// forwarded bytes stay the original. Error positions then refer to the copy. Java engines
/// (HAPI, Mirth) accept such delimiters because they split on UTF-16 characters.
pub fn prepare(frame: &[u8]) -> Cow<'_, [u8]> {
    let bytes = strip_bom(frame);
    if !bytes.starts_with(b"MSH") || bytes.len() < 5 {
        return Cow::Borrowed(bytes);
    }
    let field = bytes[3];
    let rest = &bytes[4..];
    let end = rest
        .iter()
        .position(|&b| b == field || b == b'\r' || b == b'\n')
        .unwrap_or(rest.len());
    let enc = &rest[..end];
    if enc.is_ascii() || !field.is_ascii() {
        return Cow::Borrowed(bytes);
    }
    let Ok(enc) = std::str::from_utf8(enc) else {
        return Cow::Borrowed(bytes);
    };
    // Preferred substitutes per position (the standard character first), then spares.
    const STANDARD: [u8; 5] = [b'^', b'~', b'\\', b'&', b'#'];
    const SPARE: &[u8] = b"!$%*+@`{}=?;";
    let mut used: Vec<u8> = enc.bytes().filter(u8::is_ascii).collect();
    used.push(field);
    let mut out = bytes.to_vec();
    for (i, ch) in enc.chars().enumerate() {
        if ch.is_ascii() {
            continue;
        }
        let mut utf8 = [0u8; 4];
        let pattern = ch.encode_utf8(&mut utf8).as_bytes().to_vec();
        let candidates = STANDARD.get(i).into_iter().chain(SPARE.iter());
        let Some(&sub) = candidates
            .into_iter()
            .find(|c| !used.contains(*c) && memchr(**c, bytes).is_none())
        else {
            return Cow::Borrowed(bytes);
        };
        used.push(sub);
        out = replace_all(&out, &pattern, sub);
    }
    Cow::Owned(out)
}

fn replace_all(hay: &[u8], pattern: &[u8], by: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(pattern) {
            out.push(by);
            i += pattern.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// Reads the delimiters from the start of an MSH segment.
pub fn read_delimiters(bytes: &[u8]) -> Result<Delimiters, ParseError> {
    if !bytes.starts_with(b"MSH") {
        return Err(ParseError {
            kind: ParseErrorKind::NoMsh,
            position: 0,
        });
    }
    let bad = |position| ParseError {
        kind: ParseErrorKind::BadDelimiters,
        position,
    };
    let field = *bytes.get(3).ok_or(bad(3))?;
    if field.is_ascii_alphanumeric()
        || field == b'\r'
        || field == b'\n'
        || field.is_ascii_whitespace()
    {
        return Err(bad(3));
    }
    let rest = &bytes[4..];
    let end = rest
        .iter()
        .position(|&b| b == field || b == b'\r' || b == b'\n')
        .unwrap_or(rest.len());
    let enc = &rest[..end];
    if enc.is_empty() || enc.len() > 5 {
        return Err(bad(4));
    }
    let mut seen = vec![field];
    for (i, &c) in enc.iter().enumerate() {
        if c.is_ascii_alphanumeric()
            || c.is_ascii_whitespace()
            || !c.is_ascii()
            || seen.contains(&c)
        {
            return Err(bad(4 + i));
        }
        seen.push(c);
    }
    Ok(Delimiters {
        field,
        component: enc[0],
        repetition: enc.get(1).copied(),
        escape: enc.get(2).copied(),
        subcomponent: enc.get(3).copied(),
        truncation: enc.get(4).copied(),
    })
}

impl<'a> Message<'a> {
    /// Reads a whole message. Segment terminators may be `\r`, `\n` or `\r\n`; empty lines
    /// are ignored. Anything that cannot be read whole is an error with its byte position.
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>, ParseError> {
        let delims = read_delimiters(bytes)?;
        let mut segments = Vec::with_capacity(16);
        let mut pos = 0usize;
        while pos < bytes.len() {
            let end = memchr2(b'\r', b'\n', &bytes[pos..]).map_or(bytes.len(), |i| pos + i);
            if end > pos {
                let seg = &bytes[pos..end];
                let id_ok = seg.len() >= 3
                    && seg[0].is_ascii_uppercase()
                    && seg[1..3]
                        .iter()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                    && (seg.len() == 3 || seg[3] == delims.field);
                if !id_ok {
                    return Err(ParseError {
                        kind: ParseErrorKind::BadSegmentId,
                        position: pos,
                    });
                }
                if pos > 0 && &seg[..3] == b"MSH" {
                    return Err(ParseError {
                        kind: ParseErrorKind::SecondMsh,
                        position: pos,
                    });
                }
                segments.push((pos as u32, end as u32));
            }
            pos = end + 1;
        }
        let mut msg = Message {
            bytes,
            delims,
            charset: Charset::Ascii,
            charset_declared: false,
            segments,
            valid: None,
        };
        let msh18 = msg.msh().field(18).repetition(1).component(1).raw();
        let declared = Charset::from_msh18(msh18).map_err(|_| ParseError {
            kind: ParseErrorKind::UnsupportedCharset,
            position: offset_in(bytes, msh18),
        })?;
        let invalid = |position| ParseError {
            kind: ParseErrorKind::InvalidText,
            position,
        };
        match declared {
            Some(cs) => {
                msg.valid = match cs {
                    Charset::Ascii => {
                        if let Some(p) = cs.first_invalid(bytes) {
                            return Err(invalid(p));
                        }
                        Some(utf8(bytes).map_err(invalid)?)
                    }
                    Charset::Utf8 => Some(utf8(bytes).map_err(invalid)?),
                    // Every byte is a character; text is ASCII only when the bytes are.
                    Charset::Latin1 | Charset::Latin9 => {
                        bytes.is_ascii().then(|| utf8(bytes).ok()).flatten()
                    }
                };
                msg.charset = cs;
                msg.charset_declared = true;
            }
            // No MSH-18: ASCII by the standard; UTF-8 when the bytes are valid UTF-8, else
            // ISO 8859-1 (what unlabelled French messages are in practice). Recorded in
            // DECISIONS.md.
            None => {
                msg.valid = utf8(bytes).ok();
                msg.charset = match msg.valid {
                    Some(s) if s.is_ascii() => Charset::Ascii,
                    Some(_) => Charset::Utf8,
                    None => Charset::Latin1,
                };
            }
        }
        Ok(msg)
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    pub fn delimiters(&self) -> &Delimiters {
        &self.delims
    }
    pub fn charset(&self) -> Charset {
        self.charset
    }
    /// False when MSH-18 was empty and the charset was inferred.
    pub fn charset_declared(&self) -> bool {
        self.charset_declared
    }

    /// All segments in order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'a>> + '_ {
        self.segments.iter().map(move |&(s, e)| Segment {
            bytes: &self.bytes[s as usize..e as usize],
            delims: self.delims,
            charset: self.charset,
            valid: self.valid,
        })
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The MSH segment (always the first).
    pub fn msh(&self) -> Segment<'a> {
        let (s, e) = self.segments[0];
        Segment {
            bytes: &self.bytes[s as usize..e as usize],
            delims: self.delims,
            charset: self.charset,
            valid: self.valid,
        }
    }

    /// The first segment with this id.
    pub fn segment(&self, id: &str) -> Option<Segment<'a>> {
        self.segments_named(id).next()
    }

    /// Every segment with this id, in order.
    pub fn segments_named<'s>(&'s self, id: &'s str) -> impl Iterator<Item = Segment<'a>> + 's {
        self.segments().filter(move |s| s.id() == id.as_bytes())
    }

    /// Value at a path such as `PID-3`, `PID-3.4`, `PID-3[2].4.1`, `OBX[3]-5`: first match.
    pub fn get(&self, path: &str) -> Option<Value<'a>> {
        let p = Path::parse(path)?;
        let seg = self
            .segments_named(p.segment)
            .nth(p.segment_index.saturating_sub(1))?;
        let field = seg.field(p.field);
        let mut v = field.repetition(p.repetition);
        if let Some(c) = p.component {
            v = v.component(c);
            if let Some(s) = p.subcomponent {
                v = v.subcomponent(s);
            }
        }
        Some(v)
    }

    /// Decoded text at a path; empty when absent.
    pub fn text(&self, path: &str) -> Cow<'a, str> {
        self.get(path)
            .map(|v| v.text())
            .unwrap_or(Cow::Borrowed(""))
    }
}

/// The bytes as text when they are valid UTF-8, else the position of the first invalid
/// byte. The check runs once per message over all of it: SIMD (`simdutf8`, DECISIONS D20)
/// where the standard library's took a fifth of reading and tagging a result.
fn utf8(bytes: &[u8]) -> Result<&str, usize> {
    simdutf8::basic::from_utf8(bytes).map_err(|_| {
        std::str::from_utf8(bytes)
            .err()
            .map_or(0, |e| e.valid_up_to())
    })
}

/// `part` (a slice of the message's bytes) as a slice of the message's text `whole`.
fn slice_of<'a>(whole: &'a str, part: &[u8]) -> Option<&'a str> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    whole.get(start..start.checked_add(part.len())?)
}

fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    let o = outer.as_ptr() as usize;
    let i = inner.as_ptr() as usize;
    if i >= o && i <= o + outer.len() {
        i - o
    } else {
        0
    }
}

/// A parsed path `SEG[n]-F[r].C.S`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path<'p> {
    pub segment: &'p str,
    pub segment_index: usize,
    pub field: usize,
    pub repetition: usize,
    pub component: Option<usize>,
    pub subcomponent: Option<usize>,
}

impl<'p> Path<'p> {
    pub fn parse(s: &'p str) -> Option<Path<'p>> {
        fn idx(s: &str) -> Option<(&str, usize)> {
            match s.find('[') {
                Some(i) => {
                    let n = s[i + 1..].strip_suffix(']')?.parse().ok()?;
                    if n == 0 {
                        return None;
                    }
                    Some((&s[..i], n))
                }
                None => Some((s, 1)),
            }
        }
        let (seg, rest) = s.split_once('-')?;
        let (segment, segment_index) = idx(seg)?;
        if segment.len() != 3 {
            return None;
        }
        let mut parts = rest.split('.');
        let (f, repetition) = idx(parts.next()?)?;
        let field = f.parse().ok().filter(|&n| n > 0)?;
        let component = match parts.next() {
            Some(c) => Some(c.parse().ok().filter(|&n| n > 0)?),
            None => None,
        };
        let subcomponent = match parts.next() {
            Some(c) => Some(c.parse().ok().filter(|&n| n > 0)?),
            None => None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Path {
            segment,
            segment_index,
            field,
            repetition,
            component,
            subcomponent,
        })
    }
}

/// One segment.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    bytes: &'a [u8],
    delims: Delimiters,
    charset: Charset,
    valid: Option<&'a str>,
}

impl<'a> Segment<'a> {
    pub fn id(&self) -> &'a [u8] {
        &self.bytes[..3]
    }
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    fn is_msh(&self) -> bool {
        self.id() == b"MSH"
    }

    /// Field `n` (1-based, HL7 numbering: MSH-1 is the field separator itself).
    pub fn field(&self, n: usize) -> Field<'a> {
        let empty = Field {
            raw: &self.bytes[self.bytes.len()..],
            delims: self.delims,
            charset: self.charset,
            valid: self.valid,
            whole: false,
        };
        if n == 0 {
            return empty;
        }
        if self.is_msh() {
            if n == 1 {
                return Field {
                    raw: &self.bytes[3..4],
                    delims: self.delims,
                    charset: self.charset,
                    valid: self.valid,
                    whole: true,
                };
            }
            if n == 2 {
                let rest = &self.bytes[4..];
                let end = next_sep(rest, self.delims.field).unwrap_or(rest.len());
                return Field {
                    raw: &rest[..end],
                    delims: self.delims,
                    charset: self.charset,
                    valid: self.valid,
                    whole: true,
                };
            }
        }
        let index = if self.is_msh() { n - 1 } else { n };
        match nth_split(self.bytes, self.delims.field, index) {
            Some(raw) => Field {
                raw,
                delims: self.delims,
                charset: self.charset,
                valid: self.valid,
                whole: false,
            },
            None => empty,
        }
    }

    /// Several fields in one pass over the segment: `fields_at([2, 3, 21])` is
    /// `[field(2), field(3), field(21)]`, without reading the segment again for each one.
    /// `wanted` is in increasing order (a number out of order reads as an empty field).
    pub fn fields_at<const K: usize>(&self, wanted: [usize; K]) -> [Field<'a>; K] {
        let mut out = [Field {
            raw: &self.bytes[self.bytes.len()..],
            delims: self.delims,
            charset: self.charset,
            valid: self.valid,
            whole: false,
        }; K];
        if self.is_msh() {
            // MSH-1 and MSH-2 by number; MSH-n (n >= 3) is the piece n - 1 of the split
            // (piece 1 is MSH-2's encoding characters).
            let pieces = pieces_at(
                self.bytes,
                self.delims.field,
                wanted.map(|n| if n >= 3 { n - 1 } else { usize::MAX }),
            );
            let mut last = 0;
            for ((o, n), piece) in out.iter_mut().zip(wanted).zip(pieces) {
                if n < last {
                    continue;
                }
                last = n;
                if n == 1 || n == 2 {
                    *o = self.field(n);
                } else if let Some(raw) = piece {
                    o.raw = raw;
                }
            }
            return out;
        }
        // Field i is the i-th piece (field 0 is the segment id).
        let pieces = pieces_at(
            self.bytes,
            self.delims.field,
            wanted.map(|n| if n == 0 { usize::MAX } else { n }),
        );
        for (o, piece) in out.iter_mut().zip(pieces) {
            if let Some(raw) = piece {
                o.raw = raw;
            }
        }
        out
    }

    /// Every field present, in order, in one pass over the segment: the `n`-th item is
    /// `field(n + 1)` (MSH-1 and MSH-2 included), for `field_count()` items.
    pub fn fields(&self) -> impl Iterator<Item = Field<'a>> + 'a {
        let this = *self;
        // MSH-1 and MSH-2 are not split like the others: taken by number, then the split
        // skips the id and, for MSH, the encoding characters' piece.
        let (head, skip) = if self.is_msh() { (2, 2) } else { (0, 1) };
        let mut pieces = self
            .bytes
            .split(move |b| *b == this.delims.field)
            .skip(skip);
        (1..=head)
            .map(move |n| this.field(n))
            .chain(std::iter::from_fn(move || {
                pieces.next().map(|raw| Field {
                    raw,
                    delims: this.delims,
                    charset: this.charset,
                    valid: this.valid,
                    whole: false,
                })
            }))
    }

    /// Number of fields present (highest field number).
    pub fn field_count(&self) -> usize {
        let n = memchr::memchr_iter(self.delims.field, self.bytes).count();
        if self.is_msh() { n + 1 } else { n }
    }
}

/// The `index`-th (0-based) piece of `bytes` split on `sep`.
fn nth_split(bytes: &[u8], sep: u8, index: usize) -> Option<&[u8]> {
    pieces_at(bytes, sep, [index])[0]
}

/// Several pieces of `bytes` split on `sep`, in one pass: `pieces_at(b, sep, [1, 4])` is
/// `[nth_split(b, sep, 1), nth_split(b, sep, 4)]`. `index` is in increasing order; an
/// index out of order (or `usize::MAX`) gives `None`, as does a piece past the end.
fn pieces_at<const K: usize>(bytes: &[u8], sep: u8, index: [usize; K]) -> [Option<&[u8]>; K] {
    let mut out = [None; K];
    let (mut k, mut i, mut start) = (0, 0, 0);
    while k < K {
        let end = next_sep(&bytes[start..], sep).map(|e| start + e);
        while k < K && (index[k] < i || index[k] == usize::MAX) {
            k += 1;
        }
        while k < K && index[k] == i {
            out[k] = Some(&bytes[start..end.unwrap_or(bytes.len())]);
            k += 1;
        }
        match end {
            Some(e) => (i, start) = (i + 1, e + 1),
            None => break,
        }
    }
    out
}

/// Where `sep` first is in `bytes` (D26).
///
/// Separators are dense in HL7 (a field or component every few bytes): a plain loop finds
/// the next one sooner than `memchr`, whose SIMD set-up is paid again at each call (a
/// quarter of reading and tagging a result went to it). `memchr` takes over past the first
/// bytes, for a long piece (an encapsulated document in OBX-5).
#[inline]
pub(crate) fn next_sep(bytes: &[u8], sep: u8) -> Option<usize> {
    const SHORT: usize = 32;
    let head = &bytes[..bytes.len().min(SHORT)];
    if let Some(i) = head.iter().position(|&b| b == sep) {
        return Some(i);
    }
    if bytes.len() <= SHORT {
        return None;
    }
    memchr(sep, &bytes[SHORT..]).map(|i| i + SHORT)
}

/// One field (all its repetitions).
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    raw: &'a [u8],
    delims: Delimiters,
    charset: Charset,
    valid: Option<&'a str>,
    /// MSH-1 and MSH-2 are not split further.
    whole: bool,
}

impl<'a> Field<'a> {
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Repetition `n` (1-based).
    pub fn repetition(&self, n: usize) -> Value<'a> {
        let raw = match (self.whole, self.delims.repetition) {
            (true, _) | (false, None) => {
                if n == 1 {
                    Some(self.raw)
                } else {
                    None
                }
            }
            (false, Some(rep)) => n.checked_sub(1).and_then(|i| nth_split(self.raw, rep, i)),
        };
        Value {
            raw: raw.unwrap_or(&self.raw[self.raw.len()..]),
            delims: self.delims,
            charset: self.charset,
            valid: self.valid,
            level: if self.whole {
                Level::Opaque
            } else {
                Level::Repetition
            },
        }
    }

    /// Every repetition.
    /// In one scan of the field, whatever the number of repetitions.
    pub fn repetitions(&self) -> impl Iterator<Item = Value<'a>> + '_ {
        let sep = if self.whole {
            None
        } else {
            self.delims.repetition
        };
        let level = if self.whole {
            Level::Opaque
        } else {
            Level::Repetition
        };
        let (delims, charset, valid) = (self.delims, self.charset, self.valid);
        let present = if self.raw.is_empty() { 0 } else { usize::MAX };
        self.raw
            .split(move |b| Some(*b) == sep)
            .take(present)
            .map(move |raw| Value {
                raw,
                delims,
                charset,
                valid,
                level,
            })
    }

    /// Shorthand for the first repetition's component `n`.
    pub fn component(&self, n: usize) -> Value<'a> {
        self.repetition(1).component(n)
    }

    /// Decoded text of the first repetition.
    pub fn text(&self) -> Cow<'a, str> {
        self.repetition(1).text()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Repetition,
    Component,
    Subcomponent,
    Opaque,
}

/// A repetition, component or subcomponent.
#[derive(Debug, Clone, Copy)]
pub struct Value<'a> {
    raw: &'a [u8],
    delims: Delimiters,
    charset: Charset,
    valid: Option<&'a str>,
    level: Level,
}

impl<'a> Value<'a> {
    /// The bytes as they are in the message (escapes not resolved).
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Component `n` (1-based) of a repetition.
    pub fn component(&self, n: usize) -> Value<'a> {
        self.split(
            Level::Repetition,
            Some(self.delims.component),
            n,
            Level::Component,
        )
    }

    /// Every component of a repetition, in one scan (`components()[n - 1]` is
    /// `component(n)`): for readers of many components of one value.
    pub fn components(&self) -> Vec<Value<'a>> {
        match self.level {
            Level::Repetition => self
                .raw
                .split(|b| *b == self.delims.component)
                .map(|raw| Value {
                    raw,
                    delims: self.delims,
                    charset: self.charset,
                    valid: self.valid,
                    level: Level::Component,
                })
                .collect(),
            Level::Opaque => vec![*self],
            Level::Component | Level::Subcomponent => Vec::new(),
        }
    }

    /// Several components of a repetition in one scan: `components_at([1, 4, 5])` is
    /// `[component(1), component(4), component(5)]`. `wanted` is in increasing order (a
    /// number out of order reads as empty).
    pub fn components_at<const K: usize>(&self, wanted: [usize; K]) -> [Value<'a>; K] {
        self.split_at(
            Level::Repetition,
            Some(self.delims.component),
            wanted,
            Level::Component,
        )
    }

    /// Several subcomponents of a component in one scan (see [`Value::components_at`]).
    pub fn subcomponents_at<const K: usize>(&self, wanted: [usize; K]) -> [Value<'a>; K] {
        self.split_at(
            Level::Component,
            self.delims.subcomponent,
            wanted,
            Level::Subcomponent,
        )
    }

    fn split_at<const K: usize>(
        &self,
        from: Level,
        sep: Option<u8>,
        wanted: [usize; K],
        to: Level,
    ) -> [Value<'a>; K] {
        match sep {
            Some(sep) if self.level == from => {
                let pieces = pieces_at(self.raw, sep, wanted.map(|n| n.wrapping_sub(1)));
                pieces.map(|raw| Value {
                    raw: raw.unwrap_or(&self.raw[self.raw.len()..]),
                    delims: self.delims,
                    charset: self.charset,
                    valid: self.valid,
                    level: to,
                })
            }
            // Not split at this level (MSH-1, MSH-2, or no such separator): one by one,
            // an out-of-order number empty as above.
            _ => {
                let mut last = 0;
                wanted.map(|n| {
                    let n = if n < last { 0 } else { n };
                    last = last.max(n);
                    self.split(from, sep, n, to)
                })
            }
        }
    }

    /// Subcomponent `n` (1-based) of a component.
    pub fn subcomponent(&self, n: usize) -> Value<'a> {
        self.split(
            Level::Component,
            self.delims.subcomponent,
            n,
            Level::Subcomponent,
        )
    }

    fn split(&self, from: Level, sep: Option<u8>, n: usize, to: Level) -> Value<'a> {
        let empty = Value {
            raw: &self.raw[self.raw.len()..],
            delims: self.delims,
            charset: self.charset,
            valid: self.valid,
            level: to,
        };
        if self.level != from || n == 0 {
            return if self.level == Level::Opaque && n == 1 {
                *self
            } else {
                empty
            };
        }
        let raw = match sep {
            Some(sep) => nth_split(self.raw, sep, n - 1),
            None => (n == 1).then_some(self.raw),
        };
        match raw {
            Some(raw) => Value {
                raw,
                delims: self.delims,
                charset: self.charset,
                valid: self.valid,
                level: to,
            },
            None => empty,
        }
    }

    /// Text with escapes resolved and the charset decoded. The message was checked whole at
    /// parse time; a `\X..\` escape producing invalid bytes is decoded with replacement
    /// characters rather than dropped.
    pub fn text(&self) -> Cow<'a, str> {
        if let Some(s) = self.valid.and_then(|v| slice_of(v, self.raw)) {
            // Already checked: only escapes can change it.
            if self.level == Level::Opaque || !text::has_escape(self.raw, &self.delims) {
                return Cow::Borrowed(s);
            }
        }
        if self.level == Level::Opaque {
            return String::from_utf8_lossy(self.raw);
        }
        match text::unescape(self.raw, &self.delims) {
            Cow::Borrowed(b) => match self.charset.decode(b) {
                Ok(s) => s,
                Err(_) => String::from_utf8_lossy(b),
            },
            Cow::Owned(v) => match self.charset.decode(&v) {
                Ok(s) => Cow::Owned(s.into_owned()),
                Err(_) => Cow::Owned(String::from_utf8_lossy(&v).into_owned()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORU: &str = "MSH|^~\\&|SIL|LAB|DPI|ES1|20250101120000||ORU^R01^ORU_R01|MSG001|P|2.5|||||FRA|UNICODE UTF-8\r\
PID|||123^^^CHN&1.2.3&ISO^PI~279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS||Müller-Éloïse^Zoé\r\
OBR|1|PL1^DPI-CHN|FL1^LAB\r\
OBX|1|ST|X^y||éé\\S\\é||||||F\r";

    #[test]
    fn fields_at_reads_what_field_reads() {
        let m = Message::parse(ORU.as_bytes()).unwrap();
        for seg in m.segments() {
            let wanted = [0, 1, 2, 3, 5, 9, 10, 18, 40];
            let got = seg.fields_at(wanted);
            for (f, n) in got.iter().zip(wanted) {
                assert_eq!(f.raw(), seg.field(n).raw(), "{:?} field {n}", seg.id());
                assert_eq!(f.text(), seg.field(n).text());
            }
            // Out of order: the late one reads empty, never another field.
            let [a, b] = seg.fields_at([3, 2]);
            assert_eq!(a.raw(), seg.field(3).raw());
            assert!(b.is_empty());
        }
    }

    #[test]
    fn separators_are_found_where_a_byte_by_byte_search_finds_them() {
        let mut rng = fastrand::Rng::with_seed(26);
        // Separators among bytes that differ from them by one bit, or only in the high
        // bit, at every length around the plain loop's 32 bytes.
        let alphabet = [b'|', b'^', b'~', 0xfc, 0x7c, b'}', 0x00, 0xff, b'a'];
        for len in 0..70 {
            for _ in 0..40 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| alphabet[rng.usize(..alphabet.len())])
                    .collect();
                for sep in [b'|', b'^', 0xff, 0x00] {
                    let want: Vec<usize> = (0..len).filter(|&i| bytes[i] == sep).collect();
                    assert_eq!(next_sep(&bytes, sep), want.first().copied());
                    let pieces: Vec<&[u8]> = bytes.split(|&b| b == sep).collect();
                    for (n, piece) in pieces.iter().enumerate() {
                        assert_eq!(nth_split(&bytes, sep, n), Some(*piece));
                    }
                    assert_eq!(nth_split(&bytes, sep, pieces.len()), None);
                }
            }
        }
    }

    #[test]
    fn components_at_and_subcomponents_at_read_what_one_by_one_reads() {
        let m = Message::parse(ORU.as_bytes()).unwrap();
        let wanted = [0, 1, 2, 4, 5, 13, 40];
        for seg in m.segments() {
            for field in seg.fields() {
                for rep in field.repetitions() {
                    let got = rep.components_at(wanted);
                    for (c, n) in got.iter().zip(wanted) {
                        assert_eq!(
                            c.raw(),
                            rep.component(n).raw(),
                            "{:?} component {n}",
                            seg.id()
                        );
                        assert_eq!(c.text(), rep.component(n).text());
                        let subs = c.subcomponents_at([1, 2, 3]);
                        for (s, k) in subs.iter().zip([1, 2, 3]) {
                            assert_eq!(s.raw(), c.subcomponent(k).raw());
                        }
                    }
                    // Out of order: the late one reads empty, never another component.
                    let [a, b] = rep.components_at([4, 1]);
                    assert_eq!(a.raw(), rep.component(4).raw());
                    assert!(b.is_empty());
                }
            }
        }
        // Asked of the wrong level, as one by one: a component has no components.
        let cx = m.get("PID-3.4").unwrap();
        assert!(cx.components_at([1])[0].is_empty());
        assert_eq!(cx.subcomponents_at([2])[0].text(), "1.2.3");
    }

    #[test]
    fn fields_components_repetitions_subcomponents() {
        let m = Message::parse(ORU.as_bytes()).unwrap();
        assert_eq!(m.segment_count(), 4);
        assert_eq!(m.text("MSH-9.1"), "ORU");
        assert_eq!(m.text("MSH-9.2"), "R01");
        assert_eq!(m.text("MSH-10"), "MSG001");
        assert_eq!(m.text("MSH-1"), "|");
        assert_eq!(m.text("MSH-2"), "^~\\&");
        assert_eq!(m.text("PID-3.4.1"), "CHN");
        assert_eq!(m.text("PID-3[2].4.2"), "1.2.250.1.213.1.4.8");
        assert_eq!(m.text("PID-3[2].5"), "INS");
        assert_eq!(m.text("PID-5.1"), "Müller-Éloïse");
        assert_eq!(m.text("OBX-5"), "éé^é");
        assert_eq!(m.text("OBR-2.2"), "DPI-CHN");
        assert_eq!(m.text("PID-99"), "");
        let pid3 = m.segment("PID").expect("PID").field(3).repetition(2);
        let all = pid3.components();
        assert_eq!(all.len(), 5);
        for (i, c) in all.iter().enumerate() {
            assert_eq!(c.raw(), pid3.component(i + 1).raw());
        }
        assert_eq!(m.msh().field(18).text(), "UNICODE UTF-8");
        assert_eq!(m.charset(), Charset::Utf8);
    }

    #[test]
    fn terminators_lf_crlf_and_blank_lines() {
        for sep in ["\n", "\r\n", "\r", "\n\n"] {
            let msg = ORU.replace('\r', sep);
            let m = Message::parse(msg.as_bytes()).unwrap();
            assert_eq!(m.segment_count(), 4, "terminator {sep:?}");
            assert_eq!(m.text("OBX-5"), "éé^é");
        }
    }

    #[test]
    fn v27_five_encoding_characters_do_not_shift_fields() {
        let m = Message::parse(b"MSH|^~\\&#|A|B|C|D|20250101||ORU^R01|X1|P|2.7\rPID|1||id\\P\\1")
            .unwrap();
        assert_eq!(m.delimiters().truncation, Some(b'#'));
        assert_eq!(m.text("MSH-3"), "A");
        assert_eq!(m.text("MSH-10"), "X1");
        assert_eq!(m.text("PID-3"), "id#1");
    }

    #[test]
    fn a_non_ascii_delimiter_is_read_as_that_character() {
        // The ANS examples: U+02DC SMALL TILDE as repetition separator.
        let raw = "MSH|^˜\\&|A|B|C|D|||ORU^R01|1|P|2.5|||||FRA|UNICODE UTF-8\rPID|||1||Zoé˜Léa^Ève";
        let prepared = prepare(raw.as_bytes());
        let m = Message::parse(&prepared).unwrap();
        assert_eq!(m.text("MSH-2"), "^~\\&");
        assert_eq!(m.text("PID-5[1]"), "Zoé");
        assert_eq!(m.text("PID-5[2].1"), "Léa");
        assert_eq!(m.text("PID-5[2].2"), "Ève");
        // A `~` already in the message is data: another substitute is chosen.
        let raw = "MSH|^˜\\&|A|B|C|D|||ORU^R01|1|P|2.5\rPID|||1||a~b˜c";
        let prepared = prepare(raw.as_bytes());
        let m = Message::parse(&prepared).unwrap();
        assert_eq!(m.text("PID-5[1]"), "a~b");
        assert_eq!(m.text("PID-5[2]"), "c");
        // ASCII delimiters and a BOM: borrowed, BOM gone.
        assert!(
            matches!(prepare(b"\xEF\xBB\xBFMSH|^~\\&|A"), Cow::Borrowed(b) if b.starts_with(b"MSH"))
        );
    }

    #[test]
    fn other_delimiters_are_honoured() {
        let m = Message::parse(b"MSH#$*@%#SND|FAC#x\rPID#1##a$b*c$d%e").unwrap();
        assert_eq!(m.text("MSH-3"), "SND|FAC");
        assert_eq!(m.text("PID-3.2"), "b");
        assert_eq!(m.text("PID-3[2].1"), "c");
        assert_eq!(m.text("PID-3[2].2.2"), "e");
    }

    #[test]
    fn latin_charsets_from_msh18() {
        let mut bytes = b"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5|||||FRA|8859/15\rPID|||1||".to_vec();
        bytes.extend_from_slice(&[0x45, 0xE9, 0xA4]);
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.text("PID-5"), "Eé€");
        let mut bytes = b"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5|||||FRA|8859/1\rPID|||1||".to_vec();
        bytes.extend_from_slice(&[0x45, 0xE9, 0xA4]);
        assert_eq!(Message::parse(&bytes).unwrap().text("PID-5"), "Eé¤");
    }

    #[test]
    fn undeclared_charset_is_inferred() {
        let m = Message::parse("MSH|^~\\&|A\rPID|||1||Zoé".as_bytes()).unwrap();
        assert_eq!(m.charset(), Charset::Utf8);
        assert!(!m.charset_declared());
        let m = Message::parse(b"MSH|^~\\&|A\rPID|||1||Zo\xE9").unwrap();
        assert_eq!(m.charset(), Charset::Latin1);
        assert_eq!(m.text("PID-5"), "Zoé");
    }

    #[test]
    fn errors_carry_their_byte_position() {
        let e = Message::parse(b"PID|1").unwrap_err();
        assert_eq!((e.kind, e.position), (ParseErrorKind::NoMsh, 0));
        let e = Message::parse(b"MSH|^~\\&|A\rPID|1\rpid|2").unwrap_err();
        assert_eq!((e.kind, e.position), (ParseErrorKind::BadSegmentId, 17));
        let e = Message::parse(b"MSH|^~\\&|A|||||||||||||||UNICODE UTF-8\rPID|\xE9").unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::InvalidText);
        assert_eq!(e.position, 43);
        let e = Message::parse(b"MSH|^~\\&|A|||||||||||||||KLINGON\r").unwrap_err();
        assert_eq!(
            (e.kind, e.position),
            (ParseErrorKind::UnsupportedCharset, 25)
        );
        let e = Message::parse(b"MSH|^^\\&|A").unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::BadDelimiters);
        let e = Message::parse(b"MSH|^~\\&|A\rMSH|^~\\&|B").unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::SecondMsh);
    }

    #[test]
    fn paths() {
        assert_eq!(
            Path::parse("OBX[2]-5[3].1.2").unwrap(),
            Path {
                segment: "OBX",
                segment_index: 2,
                field: 5,
                repetition: 3,
                component: Some(1),
                subcomponent: Some(2)
            }
        );
        assert!(Path::parse("PID").is_none());
        assert!(Path::parse("PID-0").is_none());
        assert!(Path::parse("PID-3.x").is_none());
    }

    #[test]
    fn fields_in_one_pass_are_field_by_number() {
        for text in [
            "MSH|^~\\&|LAB|FAC|||20250101||ORU^R01|1|P|2.5\rPID|||123^^^X||Doe^J\rOBX|1||a||||||||\rNTE\r",
            "MSH|^~\\&\rZZZ|\r",
        ] {
            let m = Message::parse(text.as_bytes()).unwrap();
            for seg in m.segments() {
                let all: Vec<_> = seg.fields().map(|f| f.raw()).collect();
                let by_number: Vec<_> = (1..=seg.field_count())
                    .map(|n| seg.field(n).raw())
                    .collect();
                assert_eq!(all, by_number, "segment {:?}", seg.id());
            }
        }
    }

    #[test]
    fn segments_named_and_field_count() {
        let m = Message::parse(ORU.as_bytes()).unwrap();
        assert_eq!(m.segments_named("OBX").count(), 1);
        assert_eq!(m.segment("OBR").unwrap().field_count(), 3);
        assert_eq!(m.msh().field_count(), 18);
        assert_eq!(m.segment("PID").unwrap().field(3).repetitions().count(), 2);
    }

    #[test]
    fn repetitions_in_one_scan_are_repetition_n() {
        let m = Message::parse(b"MSH|^~\\&|A|B|C|D|||ORU^R01|1|P|2.5\rPID|||1^^^X~~2^^^Y~|||~|a\r")
            .unwrap();
        for seg in m.segments() {
            for n in 0..=seg.field_count() + 1 {
                let f = seg.field(n);
                let all: Vec<&[u8]> = f.repetitions().map(|v| v.raw()).collect();
                let count = if f.raw().is_empty() { 0 } else { all.len() };
                assert_eq!(all.len(), count);
                for (i, raw) in all.iter().enumerate() {
                    assert_eq!(
                        *raw,
                        f.repetition(i + 1).raw(),
                        "field {n} repetition {}",
                        i + 1
                    );
                    assert_eq!(
                        f.repetitions().nth(i).map(|v| v.text().into_owned()),
                        Some(f.repetition(i + 1).text().into_owned())
                    );
                }
            }
        }
        let pid = m.segment("PID").unwrap();
        assert_eq!(pid.field(3).repetitions().count(), 4);
        assert_eq!(pid.field(6).repetitions().count(), 2);
        assert_eq!(pid.field(4).repetitions().count(), 0);
        assert_eq!(
            m.msh().field(2).repetitions().count(),
            1,
            "MSH-2 is not split"
        );
    }
}
