//! The routing test cases carried by `routes/` pass (the same check `labroute validate` runs).

use std::path::Path;

use labroute::config::Config;
use labroute::router::tests_runner::run_all;

#[test]
fn shipped_routes_validate_and_their_test_cases_pass() {
    let cfg = Config::load(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("routes")
            .as_path(),
    )
    .unwrap_or_else(|e| panic!("routes/ does not validate:\n{e}"));
    assert!(
        cfg.tests.len() >= 8,
        "routes/ should carry its test cases, found {}",
        cfg.tests.len()
    );
    let failures = run_all(&cfg);
    assert!(
        failures.is_empty(),
        "{}",
        failures
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}
