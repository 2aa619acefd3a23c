//! Generated messages read by our reader and by `hl7-parser`: the structure must agree at
//! every level, and our decoded text must equal what the generator encoded (ground truth),
//! French accents next to escapes included. Runs without the shared corpus.

mod oracle;

use labroute::hl7::Message;

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
fn text(rng: &mut fastrand::Rng, d: &Delims) -> (String, String) {
    let mut enc = String::new();
    let mut dec = String::new();
    for _ in 0..rng.usize(0..4) {
        if rng.u8(0..3) == 0 {
            let (code, ch) = match rng.u8(0..5) {
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
            let w = WORDS[rng.usize(0..WORDS.len())];
            enc.push_str(w);
            dec.push_str(w);
        }
    }
    (enc, dec)
}

/// A generated message and the decoded value of every subcomponent, by path.
fn generate(rng: &mut fastrand::Rng) -> (String, Vec<(String, String)>) {
    let set = DELIM_SETS[rng.usize(0..DELIM_SETS.len())];
    let d = Delims {
        field: set[0],
        component: set[1],
        repetition: set[2],
        escape: set[3],
        subcomponent: set[4],
    };
    let f = d.field;
    let term = ["\r", "\n", "\r\n"][rng.usize(0..3)];
    let mut msg = format!(
        "MSH{f}{}{}{}{}{f}GEN{f}LAB{f}DPI{f}ES1{f}20250101{f}{f}ORU{c}R01{f}C{n}{f}P{f}2.5{f}{f}{f}{f}{f}FRA{f}UNICODE UTF-8",
        d.component,
        d.repetition,
        d.escape,
        d.subcomponent,
        c = d.component,
        n = rng.u32(..),
    );
    let mut truth = Vec::new();
    let ids = ["PID", "OBR", "OBX", "NTE", "ZZ1"];
    for s in 0..rng.usize(1..6) {
        let id = ids[rng.usize(0..ids.len())];
        msg.push_str(term);
        msg.push_str(id);
        // At least one field: hl7-parser silently drops a bare segment id and all after it.
        for fi in 1..=rng.usize(1..8) {
            msg.push(f);
            for r in 1..=rng.usize(1..3) {
                if r > 1 {
                    msg.push(d.repetition);
                }
                for c in 1..=rng.usize(1..4) {
                    if c > 1 {
                        msg.push(d.component);
                    }
                    for sc in 1..=rng.usize(1..3) {
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

#[test]
fn generated_messages_agree_with_hl7_parser_and_decode_to_what_was_encoded() {
    let seed = 0x1ab_2025;
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut values, mut checked) = (0, 0);
    for i in 0..2000 {
        let (msg, truth) = generate(&mut rng);
        let ours = Message::parse(msg.as_bytes())
            .unwrap_or_else(|e| panic!("seed {seed} message {i}: {e}\n{msg:?}"));
        let c = oracle::compare(&ours, &msg)
            .unwrap_or_else(|| panic!("seed {seed} message {i}: hl7-parser cannot read\n{msg:?}"));
        assert!(
            c.disagreements.is_empty(),
            "seed {seed} message {i}: {:?}\n{msg:?}",
            c.disagreements
        );
        values += c.values;
        let segments: Vec<_> = ours.segments().collect();
        for (path, want) in truth {
            let (s, rest) = path.split_once(':').expect("path");
            let s: usize = s.parse().expect("segment index");
            let (_, rest) = rest.split_once('-').expect("field");
            let (field, rest) = rest.split_once('[').expect("rep");
            let (rep, rest) = rest.split_once("].").expect("comp");
            let (comp, sub) = rest.split_once('.').expect("sub");
            let n = |x: &str| x.parse::<usize>().expect("number");
            let got = segments[s + 1]
                .field(n(field))
                .repetition(n(rep))
                .component(n(comp))
                .subcomponent(n(sub))
                .text();
            assert_eq!(got, want, "seed {seed} message {i} at {path}\n{msg:?}");
            checked += 1;
        }
    }
    assert!(values > 50_000 && checked > 20_000, "{values} {checked}");
}

#[test]
fn the_comparison_notices_a_difference() {
    let a = "MSH|^~\\&|A|B\rPID|1||x^y&z~w\r";
    let b = "MSH|^~\\&|A|B\rPID|1||x^q&z~w\r";
    let ours = Message::parse(a.as_bytes()).expect("parses");
    let c = oracle::compare(&ours, b).expect("oracle reads");
    let paths: Vec<_> = c.disagreements.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "PID[1]-3",
            "PID[1]-3[1]",
            "PID[1]-3[1].2",
            "PID[1]-3[1].2.1"
        ]
    );
}

#[test]
fn the_tree_comparison_notices_a_difference() {
    let ours = Message::parse(b"MSH|^~\\&|A\rPID|1||x^y&z~w\r").expect("parses");
    let agree = serde_json::json!([
        [["MSH"], ["|"], ["^~\\&"], ["A"]],
        [["PID"], ["1"], [""], [[["x"], ["y", "z"]], ["w"]]]
    ]);
    let c = oracle::compare_tree(&ours, &agree);
    assert!(c.disagreements.is_empty(), "{:?}", c.disagreements);
    assert!(c.values >= 10);
    let differ = serde_json::json!([
        [["MSH"], ["|"], ["^~\\&"], ["A"]],
        [["PID"], ["1"], [""], [[["x"], ["q", "z"]], ["w"]]]
    ]);
    let c = oracle::compare_tree(&ours, &differ);
    let paths: Vec<_> = c.disagreements.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "PID[1]-3",
            "PID[1]-3[1]",
            "PID[1]-3[1].2",
            "PID[1]-3[1].2.1"
        ]
    );
}
