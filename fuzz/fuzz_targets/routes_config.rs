//! The routes configuration reader on any text: never panics; every error of a refusal names
//! the file and a line inside it, or (line 0) the file or the routes directory as a whole.
#![no_main]

use labroute::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count().max(1);
    match Config::from_sources(&[("routes/fuzz.toml".into(), text.to_owned())]) {
        Ok(cfg) => {
            let _ = labroute::router::tests_runner::run_all(&cfg);
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "a refusal without an error");
            for e in &errors.0 {
                match e.file.to_str() {
                    Some("routes/fuzz.toml") => {
                        assert!(e.line <= lines + 1, "line {} of {lines}: {e}", e.line)
                    }
                    Some("routes") => assert_eq!(e.line, 0, "{e}"),
                    _ => panic!("an error naming neither the file nor its directory: {e}"),
                }
            }
        }
    }
});
