//! Runs the routing test cases that routes files carry (`[[test]]`), for `labroute validate`
//! and `cargo test`.

use super::{Decision, MemoryOrders, decide, destinations, extract};
use crate::config::{Config, Expected, RouteTest};
use crate::hl7::Message;
use crate::hl7::message::prepare;

/// What a message comes to, as far as routing goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Rejected(u16),
    Decided(Box<Decision>, Vec<crate::model::DestinationName>),
}

/// Routes one message against a config and an order index, recording owned orders.
pub fn route(bytes: &[u8], cfg: &Config, orders: &mut MemoryOrders) -> Outcome {
    let prepared = prepare(bytes);
    let msg = match Message::parse(&prepared) {
        Ok(m) => m,
        Err(e) => return Outcome::Rejected(e.kind.hl7_code()),
    };
    let facts = match extract(&msg) {
        Ok(f) => f,
        Err(r) => return Outcome::Rejected(r.error.code),
    };
    let decision = decide(&facts, cfg, orders);
    let dests = match decision.establishment() {
        Some(owner) => {
            orders.record(&facts, owner);
            destinations(facts.class, owner, cfg)
        }
        None => Vec::new(),
    };
    Outcome::Decided(Box::new(decision), dests)
}

/// A failed routing test: where it is and what differed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub test: String,
    pub location: String,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: test {:?}: {}",
            self.location, self.test, self.message
        )
    }
}

/// Runs one test case.
pub fn run_one(t: &RouteTest, cfg: &Config) -> Result<(), Failure> {
    let fail = |message: String| Failure {
        test: t.name.clone(),
        location: format!("{}:{}", t.file.display(), t.line),
        message,
    };
    let mut orders = MemoryOrders::default();
    for (i, b) in t.before.iter().enumerate() {
        if let Outcome::Rejected(code) = route(b, cfg, &mut orders) {
            return Err(fail(format!(
                "`before` message {i} was rejected with code {code}"
            )));
        }
    }
    let got = route(&t.input, cfg, &mut orders);
    let describe = |o: &Outcome| match o {
        Outcome::Rejected(c) => format!("rejected with code {c}"),
        Outcome::Decided(d, _) => match d.as_ref() {
            Decision::Owned { establishment, .. } => format!("establishment {establishment}"),
            Decision::Quarantined { reason, .. } => format!("quarantine ({})", reason.as_str()),
        },
    };
    let ok = match (&t.expected, &got) {
        (Expected::Rejected(c), Outcome::Rejected(g)) => c == g,
        (Expected::Establishment(e), Outcome::Decided(d, _)) => d.establishment() == Some(e),
        (Expected::Quarantine(q), Outcome::Decided(d, _)) => {
            matches!(d.as_ref(), Decision::Quarantined { reason, .. } if reason.as_str() == q)
        }
        _ => false,
    };
    if !ok {
        let want = match &t.expected {
            Expected::Rejected(c) => format!("rejected with code {c}"),
            Expected::Establishment(e) => format!("establishment {e}"),
            Expected::Quarantine(q) => format!("quarantine ({q})"),
        };
        return Err(fail(format!("expected {want}, got {}", describe(&got))));
    }
    if let (Some(want), Outcome::Decided(_, got)) = (&t.destinations, &got) {
        let mut w: Vec<&str> = want.iter().map(|d| d.as_str()).collect();
        let mut g: Vec<&str> = got.iter().map(|d| d.as_str()).collect();
        w.sort_unstable();
        g.sort_unstable();
        if w != g {
            return Err(fail(format!("expected destinations {w:?}, got {g:?}")));
        }
    }
    Ok(())
}

/// Runs every test case of a config; returns the failures.
pub fn run_all(cfg: &Config) -> Vec<Failure> {
    cfg.tests
        .iter()
        .filter_map(|t| run_one(t, cfg).err())
        .collect()
}
