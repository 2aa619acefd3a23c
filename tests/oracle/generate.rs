//! Generated HL7 messages with the decoded value of every subcomponent (the ground truth):
//! random delimiters, segment terminators, French accents next to escapes. Shared by
//! `tests/differential.rs` (a seeded PRNG) and the `hl7_differential` fuzz target (the
//! fuzzer's bytes).

use labroute::hl7::Message;

/// A source of choices.
pub trait Pick {
    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize;
}

struct Delims {
    field: char,
    component: char,
    repetition: char,
    escape: char,
    subcomponent: char,
}

const DELIM_SETS: [[char; 5]; 3] = [
    ['|', '^', '~', '\\', '&'],
    ['|', '^', '~', '\\', '&'],
    ['#', '$', '*', '@', '%'],
];

const WORDS: [&str; 12] = [
    "Zoé",
    "Hélène",
    "ÉLOÏSE",
    "garçon",
    "Weiß",
    "crème brûlée",
    "5.4",
    "mmol/L",
    "N",
    "a b",
    "œuvre",
    "x",
];

/// One subcomponent: (encoded, decoded).
fn text(rng: &mut impl Pick, d: &Delims) -> (String, String) {
    let mut enc = String::new();
    let mut dec = String::new();
    for _ in 0..rng.below(4) {
        if rng.below(3) == 0 {
            let (code, ch) = match rng.below(5) {
                0 => ('F', d.field),
                1 => ('S', d.component),
                2 => ('T', d.subcomponent),
                3 => ('R', d.repetition),
                _ => ('E', d.escape),
            };
            enc.push(d.escape);
            enc.push(code);
            enc.push(d.escape);
            dec.push(ch);
        } else {
            let w = WORDS[rng.below(WORDS.len())];
            enc.push_str(w);
            dec.push_str(w);
        }
    }
    (enc, dec)
}

/// A generated message and the decoded value of every subcomponent, by path.
pub fn generate(rng: &mut impl Pick) -> (String, Vec<(String, String)>) {
    let set = DELIM_SETS[rng.below(DELIM_SETS.len())];
    let d = Delims {
        field: set[0],
        component: set[1],
        repetition: set[2],
        escape: set[3],
        subcomponent: set[4],
    };
    let f = d.field;
    let term = ["\r", "\n", "\r\n"][rng.below(3)];
    let mut msg = format!(
        "MSH{f}{}{}{}{}{f}GEN{f}LAB{f}DPI{f}ES1{f}20250101{f}{f}ORU{c}R01{f}C{n}{f}P{f}2.5{f}{f}{f}{f}{f}FRA{f}UNICODE UTF-8",
        d.component,
        d.repetition,
        d.escape,
        d.subcomponent,
        c = d.component,
        n = rng.below(1 << 30),
    );
    let mut truth = Vec::new();
    let ids = ["PID", "OBR", "OBX", "NTE", "ZZ1"];
    for s in 0..1 + rng.below(5) {
        let id = ids[rng.below(ids.len())];
        msg.push_str(term);
        msg.push_str(id);
        // At least one field: hl7-parser silently drops a bare segment id and all after it.
        for fi in 1..=1 + rng.below(7) {
            msg.push(f);
            for r in 1..=1 + rng.below(2) {
                if r > 1 {
                    msg.push(d.repetition);
                }
                for c in 1..=1 + rng.below(3) {
                    if c > 1 {
                        msg.push(d.component);
                    }
                    for sc in 1..=1 + rng.below(2) {
                        if sc > 1 {
                            msg.push(d.subcomponent);
                        }
                        let (enc, dec) = text(rng, &d);
                        msg.push_str(&enc);
                        truth.push((format!("{s}:{id}-{fi}[{r}].{c}.{sc}"), dec));
                    }
                }
            }
        }
    }
    msg.push_str(term);
    (msg, truth)
}

/// Checks every generated subcomponent's decoded text against the truth: how many.
pub fn check_truth(ours: &Message<'_>, truth: &[(String, String)]) -> Result<usize, String> {
    let segments: Vec<_> = ours.segments().collect();
    let n = |x: &str| x.parse::<usize>().map_err(|e| format!("{x}: {e}"));
    for (path, want) in truth {
        let bad = || format!("bad path {path}");
        let (s, rest) = path.split_once(':').ok_or_else(bad)?;
        let (_, rest) = rest.split_once('-').ok_or_else(bad)?;
        let (field, rest) = rest.split_once('[').ok_or_else(bad)?;
        let (rep, rest) = rest.split_once("].").ok_or_else(bad)?;
        let (comp, sub) = rest.split_once('.').ok_or_else(bad)?;
        let seg = segments
            .get(n(s)? + 1)
            .ok_or_else(|| format!("{path}: segment missing"))?;
        let got = seg
            .field(n(field)?)
            .repetition(n(rep)?)
            .component(n(comp)?)
            .subcomponent(n(sub)?)
            .text();
        if got != *want {
            return Err(format!("{path}: read {got:?}, encoded {want:?}"));
        }
    }
    Ok(truth.len())
}
