//! Character sets (MSH-18) and escape sequences: from raw field bytes to text.
//!
//! Escape decoding works on bytes first, then the result is decoded with the message's
//! character set, so that a `\Xhh\` sequence producing part of a multi-byte character, or an
//! escape right next to an accented letter, is decoded correctly.

use std::borrow::Cow;

use super::message::Delimiters;

/// MSH-18 names a character set the reader does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsupportedCharset;

/// The character sets the reader decodes (HL7 table 0211).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Ascii,
    Utf8,
    Latin1,
    Latin9,
}

impl Charset {
    /// Reads MSH-18's first repetition. `None` when the value is not supported.
    /// An empty MSH-18 is `Ok(None)`: the caller infers (see `Message::parse`).
    pub fn from_msh18(value: &[u8]) -> Result<Option<Charset>, UnsupportedCharset> {
        let v = value.trim_ascii();
        if v.is_empty() {
            return Ok(None);
        }
        let upper = v.to_ascii_uppercase();
        let cs = match upper.as_slice() {
            b"ASCII" => Charset::Ascii,
            b"UNICODE UTF-8" | b"UTF-8" | b"UTF8" | b"UNICODE" => Charset::Utf8,
            b"8859/1" | b"ISO-8859-1" | b"ISO IR100" => Charset::Latin1,
            b"8859/15" | b"ISO-8859-15" => Charset::Latin9,
            _ => return Err(UnsupportedCharset),
        };
        Ok(Some(cs))
    }

    /// The MSH-18 spelling of this charset.
    pub fn hl7_name(self) -> &'static str {
        match self {
            Charset::Ascii => "ASCII",
            Charset::Utf8 => "UNICODE UTF-8",
            Charset::Latin1 => "8859/1",
            Charset::Latin9 => "8859/15",
        }
    }

    /// Position of the first byte that is not valid in this charset, if any.
    pub fn first_invalid(self, bytes: &[u8]) -> Option<usize> {
        match self {
            Charset::Ascii => bytes.iter().position(|b| !b.is_ascii()),
            Charset::Utf8 => std::str::from_utf8(bytes).err().map(|e| e.valid_up_to()),
            Charset::Latin1 | Charset::Latin9 => None,
        }
    }

    /// Decodes bytes in this charset. Invalid bytes are an error with their position.
    pub fn decode(self, bytes: &[u8]) -> Result<Cow<'_, str>, usize> {
        match self {
            Charset::Ascii if !bytes.is_ascii() => Err(self.first_invalid(bytes).unwrap_or(0)),
            Charset::Ascii | Charset::Utf8 => std::str::from_utf8(bytes)
                .map(Cow::Borrowed)
                .map_err(|e| e.valid_up_to()),
            Charset::Latin1 | Charset::Latin9 => {
                if bytes.is_ascii() {
                    return std::str::from_utf8(bytes)
                        .map(Cow::Borrowed)
                        .map_err(|e| e.valid_up_to());
                }
                Ok(Cow::Owned(
                    bytes.iter().map(|&b| latin_char(self, b)).collect(),
                ))
            }
        }
    }
}

fn latin_char(cs: Charset, b: u8) -> char {
    if cs == Charset::Latin9 {
        let c = match b {
            0xA4 => Some('\u{20AC}'),
            0xA6 => Some('\u{0160}'),
            0xA8 => Some('\u{0161}'),
            0xB4 => Some('\u{017D}'),
            0xB8 => Some('\u{017E}'),
            0xBC => Some('\u{0152}'),
            0xBD => Some('\u{0153}'),
            0xBE => Some('\u{0178}'),
            _ => None,
        };
        if let Some(c) = c {
            return c;
        }
    }
    char::from(b)
}

/// Encodes text in a charset; `None` if a character has no encoding there.
pub fn encode(cs: Charset, text: &str) -> Option<Vec<u8>> {
    match cs {
        Charset::Utf8 => Some(text.as_bytes().to_vec()),
        Charset::Ascii => text.is_ascii().then(|| text.as_bytes().to_vec()),
        Charset::Latin1 | Charset::Latin9 => text
            .chars()
            .map(|c| (0u8..=255).find(|&b| latin_char(cs, b) == c))
            .collect(),
    }
}

/// True when `raw` holds the escape character (and may need [`unescape`]).
pub fn has_escape(raw: &[u8], d: &Delimiters) -> bool {
    d.escape
        .is_some_and(|esc| super::message::next_sep(raw, esc).is_some())
}

/// Resolves escape sequences in raw field bytes (no charset decoding yet).
///
/// - `\F\ \S\ \T\ \R\ \E\ \P\` give back the delimiter they stand for;
/// - `\Xhh…\` gives the bytes (in the message's charset);
/// - `\.br\` is a line break, `\.sp\` / `\.spN\` N line breaks;
/// - `\H\ \N\` (highlighting) and the other formatting commands (`\.in\ \.ti\ \.sk\ \.ce\
///   \.fi\ \.nf\`) carry no characters and are removed;
/// - anything else (unknown or unterminated) is kept literally: nothing is dropped.
pub fn unescape<'a>(raw: &'a [u8], d: &Delimiters) -> Cow<'a, [u8]> {
    let Some(esc) = d.escape else {
        return Cow::Borrowed(raw);
    };
    if memchr::memchr(esc, raw).is_none() {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != esc {
            out.push(b);
            i += 1;
            continue;
        }
        let Some(len) = memchr::memchr(esc, &raw[i + 1..]) else {
            out.extend_from_slice(&raw[i..]);
            break;
        };
        let seq = &raw[i + 1..i + 1 + len];
        if apply_escape(seq, d, &mut out) {
            i += len + 2;
        } else {
            // Not an escape we know: keep the escape character and go on after it.
            out.push(b);
            i += 1;
        }
    }
    Cow::Owned(out)
}

fn apply_escape(seq: &[u8], d: &Delimiters, out: &mut Vec<u8>) -> bool {
    match seq {
        b"F" => out.push(d.field),
        b"S" => out.push(d.component),
        b"T" => match d.subcomponent {
            Some(c) => out.push(c),
            None => return false,
        },
        b"R" => match d.repetition {
            Some(c) => out.push(c),
            None => return false,
        },
        b"E" => match d.escape {
            Some(c) => out.push(c),
            None => return false,
        },
        b"P" => match d.truncation {
            Some(c) => out.push(c),
            None => return false,
        },
        b"H" | b"N" => {}
        b".br" => out.push(b'\n'),
        [b'X', hex @ ..] if !hex.is_empty() && hex.len() % 2 == 0 => {
            let start = out.len();
            for pair in hex.chunks(2) {
                match (hex_val(pair[0]), hex_val(pair[1])) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => {
                        out.truncate(start);
                        return false;
                    }
                }
            }
        }
        [b'.', b's', b'p', n @ ..] => {
            let count = if n.is_empty() {
                1
            } else {
                match std::str::from_utf8(n)
                    .ok()
                    .and_then(|s| s.trim().parse::<usize>().ok())
                {
                    Some(c) if c <= 100 => c,
                    _ => return false,
                }
            };
            out.extend(std::iter::repeat_n(b'\n', count));
        }
        [b'.', cmd @ ..]
            if cmd.starts_with(b"in")
                || cmd.starts_with(b"ti")
                || cmd.starts_with(b"sk")
                || cmd == b"ce"
                || cmd == b"fi"
                || cmd == b"nf" => {}
        _ => return false,
    }
    true
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Escapes text so that it can be placed in a field (the reverse of `unescape`).
pub fn escape(text: &str, d: &Delimiters) -> String {
    let Some(esc) = d.escape else {
        return text.to_owned();
    };
    let esc = esc as char;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let code = if c == d.field as char {
            Some("F")
        } else if c == d.component as char {
            Some("S")
        } else if Some(c) == d.subcomponent.map(char::from) {
            Some("T")
        } else if Some(c) == d.repetition.map(char::from) {
            Some("R")
        } else if c == esc {
            Some("E")
        } else if Some(c) == d.truncation.map(char::from) {
            Some("P")
        } else if c == '\n' {
            Some(".br")
        } else {
            None
        };
        match code {
            Some(code) => {
                out.push(esc);
                out.push_str(code);
                out.push(esc);
            }
            None if c == '\r' => {}
            None => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> Delimiters {
        Delimiters::standard()
    }

    fn text(raw: &[u8], cs: Charset) -> String {
        let u = unescape(raw, &d());
        cs.decode(&u)
            .map(|c| c.into_owned())
            .unwrap_or_else(|p| format!("<invalid at {p}>"))
    }

    #[test]
    fn accents_next_to_escapes_that_panic_hl7_parser() {
        assert_eq!(text("éé\\S\\é".as_bytes(), Charset::Utf8), "éé^é");
        assert_eq!(text("Weiß\\F\\x".as_bytes(), Charset::Utf8), "Weiß|x");
        assert_eq!(
            text("Hélène\\T\\Zoé\\R\\Ève\\E\\".as_bytes(), Charset::Utf8),
            "Hélène&Zoé~Ève\\"
        );
    }

    #[test]
    fn hex_escapes_are_bytes_in_the_message_charset() {
        // é in UTF-8 is C3 A9; in Latin-1 it is E9.
        assert_eq!(text(b"caf\\XC3A9\\", Charset::Utf8), "café");
        assert_eq!(text(b"caf\\XE9\\", Charset::Latin1), "café");
        assert_eq!(text(b"a\\X0D0A\\b", Charset::Ascii), "a\r\nb");
        assert_eq!(text(b"\\XA4\\", Charset::Latin9), "€");
    }

    #[test]
    fn formatting_commands() {
        assert_eq!(
            text(b"l1\\.br\\l2\\.sp2\\l3", Charset::Ascii),
            "l1\nl2\n\nl3"
        );
        assert_eq!(text(b"\\H\\bold\\N\\", Charset::Ascii), "bold");
        assert_eq!(text(b"\\.in+4\\x\\.ce\\", Charset::Ascii), "x");
    }

    #[test]
    fn unknown_or_unterminated_escapes_are_kept_literally() {
        assert_eq!(text(b"C:\\dir", Charset::Ascii), "C:\\dir");
        assert_eq!(text(b"\\Q\\x", Charset::Ascii), "\\Q\\x");
        assert_eq!(text(b"\\XZZ\\", Charset::Ascii), "\\XZZ\\");
    }

    #[test]
    fn latin_charsets_decode_every_byte() {
        assert_eq!(Charset::Latin1.decode(&[0x45, 0xE9, 0xA4]).unwrap(), "Eé¤");
        assert_eq!(
            Charset::Latin9.decode(&[0x45, 0xE9, 0xA4, 0xBD]).unwrap(),
            "Eé€œ"
        );
        assert_eq!(Charset::Utf8.decode(&[0x41, 0xE9]).unwrap_err(), 1);
        assert_eq!(Charset::Ascii.decode(&[0x41, 0xE9]).unwrap_err(), 1);
    }

    #[test]
    fn escape_is_the_inverse_of_unescape() {
        let s = "Dupont|Jean^Zoé&co~x\\y\nfin";
        let e = escape(s, &d());
        assert_eq!(text(e.as_bytes(), Charset::Utf8), s);
    }

    #[test]
    fn msh18_names() {
        assert_eq!(
            Charset::from_msh18(b"UNICODE UTF-8"),
            Ok(Some(Charset::Utf8))
        );
        assert_eq!(Charset::from_msh18(b"8859/15"), Ok(Some(Charset::Latin9)));
        assert_eq!(Charset::from_msh18(b""), Ok(None));
        assert_eq!(Charset::from_msh18(b"EBCDIC"), Err(UnsupportedCharset));
        assert_eq!(encode(Charset::Latin9, "€é"), Some(vec![0xA4, 0xE9]));
        assert_eq!(encode(Charset::Ascii, "é"), None);
    }
}
