//! Generated messages read by our reader and by `hl7-parser`: the structure must agree at
//! every level, and our decoded text must equal what the generator encoded (ground truth),
//! French accents next to escapes included. Runs without the shared corpus.

mod oracle;

use oracle::generate::{Pick, check_truth, generate};

use labroute::hl7::Message;

/// The seeded PRNG as the generator's source of choices.
struct Seeded(fastrand::Rng);

impl Pick for Seeded {
    fn below(&mut self, n: usize) -> usize {
        self.0.usize(0..n)
    }
}

#[test]
fn generated_messages_agree_with_hl7_parser_and_decode_to_what_was_encoded() {
    let seed = 0x1ab_2025;
    let mut rng = Seeded(fastrand::Rng::with_seed(seed));
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
        checked += check_truth(&ours, &truth)
            .unwrap_or_else(|e| panic!("seed {seed} message {i}: {e}\n{msg:?}"));
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
