//! Differential comparison of our HL7 reader with `hl7-parser` (an independent reader), at
//! every level it parses: segment, field, repetition, component, subcomponent (raw bytes),
//! and decoded text where its escape decoding is known correct.
//!
//! Known defects of hl7-parser 0.3, measured here and recorded in DECISIONS.md (D4); the
//! comparison allows for exactly these, nothing else:
//! - with a five-character MSH-2 (`^~\&#`, v2.7+), it reads the fifth character as MSH-3
//!   and shifts every later MSH field by one: we compare our MSH-n with its MSH-(n+1);
//! - its escape decoder panics on non-ASCII text next to an escape (byte vs char index) and
//!   decodes only `\F\ \S\ \T\ \R\ \E\ \X0A\ \X0D\`: decoded text is compared for ASCII
//!   values whose escapes are all of the first five kinds;
//! - a segment that is a bare id (`PID` with no field) silently ends its reading: generated
//!   messages give every segment a field.
#![allow(dead_code)]

pub mod generate;

use labroute::hl7::Message;

/// One disagreement, with its location.
#[derive(Debug)]
pub struct Disagreement {
    pub path: String,
    pub ours: String,
    pub theirs: String,
}

/// What one comparison covered.
#[derive(Debug, Default)]
pub struct Compared {
    pub values: usize,
    pub decoded: usize,
    /// Escaped values with non-ASCII text, where its decoder panics: compared raw only.
    pub skipped_non_ascii: usize,
    pub disagreements: Vec<Disagreement>,
}

fn simple_escapes_only(raw: &str, esc: char) -> bool {
    let mut parts = raw.split(esc);
    parts.next();
    // Between escape characters: the escape body, then ordinary text, alternately.
    let mut inside = true;
    for p in parts {
        if inside && !matches!(p, "F" | "S" | "T" | "R" | "E") {
            return false;
        }
        inside = !inside;
    }
    true
}

/// Compares `ours` (already parsed from `text`) with hl7-parser's reading of `text`.
/// `None`: hl7-parser could not read the message at all.
pub fn compare(ours: &Message<'_>, text: &str) -> Option<Compared> {
    let theirs = hl7_parser::Message::parse_with_lenient_newlines(text, true).ok()?;
    let mut out = Compared::default();
    let seps = theirs.separators;
    let ours_segments: Vec<_> = ours.segments().collect();
    let theirs_segments: Vec<_> = theirs.segments().filter(|s| !s.name.is_empty()).collect();
    if ours_segments.len() != theirs_segments.len() {
        out.disagreements.push(Disagreement {
            path: "segment count".into(),
            ours: ours_segments.len().to_string(),
            theirs: theirs_segments.len().to_string(),
        });
        return Some(out);
    }
    let five_char_msh2 = ours.delimiters().truncation.is_some();
    let differ = |out: &mut Compared, path: String, a: &[u8], b: &str| {
        out.values += 1;
        if a != b.as_bytes() {
            out.disagreements.push(Disagreement {
                path,
                ours: String::from_utf8_lossy(a).into_owned(),
                theirs: b.to_owned(),
            });
        }
    };
    for (i, (o, t)) in ours_segments.iter().zip(&theirs_segments).enumerate() {
        let name = String::from_utf8_lossy(o.id()).into_owned();
        if name != t.name {
            differ(&mut out, format!("segment {i} id"), o.id(), t.name);
            continue;
        }
        let is_msh = name == "MSH";
        for (fi, tf) in t.fields.iter().enumerate() {
            let their_n = fi + 1;
            let n = match (is_msh, five_char_msh2) {
                (true, _) if their_n <= 2 => continue,
                (true, true) if their_n == 3 => continue,
                (true, true) => their_n - 1,
                _ => their_n,
            };
            let of = o.field(n);
            let fpath = format!("{name}[{i}]-{n}");
            differ(&mut out, fpath.clone(), of.raw(), tf.raw_value());
            for (ri, tr) in tf.repeats.iter().enumerate() {
                let orr = of.repetition(ri + 1);
                let rpath = format!("{fpath}[{}]", ri + 1);
                differ(&mut out, rpath.clone(), orr.raw(), tr.raw_value());
                for (ci, tc) in tr.components.iter().enumerate() {
                    let oc = orr.component(ci + 1);
                    let cpath = format!("{rpath}.{}", ci + 1);
                    differ(&mut out, cpath.clone(), oc.raw(), tc.raw_value());
                    for (si, ts) in tc.subcomponents.iter().enumerate() {
                        let os = oc.subcomponent(si + 1);
                        let spath = format!("{cpath}.{}", si + 1);
                        differ(&mut out, spath.clone(), os.raw(), ts.raw_value());
                        if !ts.raw_value().contains(seps.escape) {
                            continue;
                        }
                        if !simple_escapes_only(ts.raw_value(), seps.escape) {
                            continue;
                        }
                        if !ts.raw_value().is_ascii() {
                            // Its decoder panics on non-ASCII text next to an escape.
                            out.skipped_non_ascii += 1;
                            continue;
                        }
                        out.decoded += 1;
                        let theirs_text = ts.display(&seps).to_string();
                        let mine = os.text();
                        if mine != theirs_text {
                            out.disagreements.push(Disagreement {
                                path: format!("{spath} (decoded)"),
                                ours: mine.into_owned(),
                                theirs: theirs_text,
                            });
                        }
                    }
                }
            }
        }
    }
    Some(out)
}

/// Compares `ours` with a parse tree from PyPI `hl7` (`tests/py/dump_hl7.py`): nested lists
/// of strings, a segment being its id then its fields, each level split only where the text
/// has that separator. Every node's text, rebuilt with the separators, must equal our raw
/// value at the same place.
pub fn compare_tree(ours: &Message<'_>, tree: &serde_json::Value) -> Compared {
    let d = ours.delimiters();
    let seps = [
        d.repetition.map(char::from),
        Some(char::from(d.component)),
        d.subcomponent.map(char::from),
    ];
    fn join(node: &serde_json::Value, level: usize, seps: &[Option<char>; 3]) -> String {
        match node {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(children) => {
                let sep = seps
                    .get(level)
                    .copied()
                    .flatten()
                    .map(String::from)
                    .unwrap_or_default();
                children
                    .iter()
                    .map(|c| join(c, level + 1, seps))
                    .collect::<Vec<_>>()
                    .join(&sep)
            }
            other => other.to_string(),
        }
    }
    fn children(node: &serde_json::Value) -> &[serde_json::Value] {
        node.as_array().map(Vec::as_slice).unwrap_or_default()
    }
    let mut out = Compared::default();
    let segments: Vec<_> = ours.segments().collect();
    let theirs = children(tree);
    if segments.len() != theirs.len() {
        out.disagreements.push(Disagreement {
            path: "segment count".into(),
            ours: segments.len().to_string(),
            theirs: theirs.len().to_string(),
        });
        return out;
    }
    let check = |out: &mut Compared, path: String, ours: &[u8], theirs: String| {
        out.values += 1;
        if ours != theirs.as_bytes() {
            out.disagreements.push(Disagreement {
                path,
                ours: String::from_utf8_lossy(ours).into_owned(),
                theirs,
            });
        }
    };
    for (i, (seg, t)) in segments.iter().zip(theirs).enumerate() {
        let name = String::from_utf8_lossy(seg.id()).into_owned();
        let fields = children(t);
        let id = fields
            .first()
            .map(|f| join(f, 0, &seps))
            .unwrap_or_default();
        check(&mut out, format!("segment {i} id"), seg.id(), id);
        for (n, tf) in fields.iter().enumerate().skip(1) {
            let of = seg.field(n);
            let fpath = format!("{name}[{i}]-{n}");
            check(&mut out, fpath.clone(), of.raw(), join(tf, 0, &seps));
            if name == "MSH" && n <= 2 {
                continue;
            }
            for (r, tr) in children(tf).iter().enumerate() {
                let or = of.repetition(r + 1);
                let rpath = format!("{fpath}[{}]", r + 1);
                check(&mut out, rpath.clone(), or.raw(), join(tr, 1, &seps));
                for (c, tc) in children(tr).iter().enumerate() {
                    let oc = or.component(c + 1);
                    let cpath = format!("{rpath}.{}", c + 1);
                    check(&mut out, cpath.clone(), oc.raw(), join(tc, 2, &seps));
                    for (s, ts) in children(tc).iter().enumerate() {
                        let os = oc.subcomponent(s + 1);
                        check(
                            &mut out,
                            format!("{cpath}.{}", s + 1),
                            os.raw(),
                            join(ts, 3, &seps),
                        );
                    }
                }
            }
        }
    }
    out
}
