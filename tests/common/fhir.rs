//! The FHIR validator nobody here wrote: PyPI `fhir.resources` 6.4.0 (FHIR 4.0.1) in
//! `.venv/fhir`, which `.ci/run` creates. Outside CI, tests that need it say SKIPPED when it
//! is absent; in CI its absence fails them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value as Json;

/// The validator's Python, or `None` (outside CI) when it is not installed.
pub fn validator() -> Option<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/fhir/bin/python");
    let ok = Command::new(&python)
        .args([
            "-c",
            "import fhir.resources; assert fhir.resources.__fhir_version__ == '4.0.1'",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "CI must have the FHIR validator in .venv/fhir (see .ci/run)"
        );
        eprintln!(
            "SKIPPED: {} with fhir.resources 6.4.0 not found (python3 -m venv .venv/fhir && \
             .venv/fhir/bin/pip install -r tests/fhir-requirements.txt)",
            python.display()
        );
        return None;
    }
    Some(python)
}

/// Validates JSON files in one run: file → resource counts, or the validator's complaint.
pub fn validate(
    python: &Path,
    files: &[PathBuf],
) -> HashMap<PathBuf, Result<HashMap<String, usize>, String>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/validate_fhir.py");
    let mut out = HashMap::new();
    for chunk in files.chunks(200) {
        let run = Command::new(python)
            .arg(&script)
            .args(chunk)
            .output()
            .expect("run the validator");
        assert!(
            run.status.success(),
            "validator crashed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        for line in String::from_utf8_lossy(&run.stdout).lines() {
            let v: Json = serde_json::from_str(line).expect("validator output is JSON");
            let file = PathBuf::from(v["file"].as_str().expect("file"));
            let r = if v["ok"] == Json::Bool(true) {
                let counts = v["counts"]
                    .as_object()
                    .expect("counts")
                    .iter()
                    .map(|(k, n)| (k.clone(), n.as_u64().expect("count") as usize))
                    .collect();
                Ok(counts)
            } else {
                Err(v["error"].as_str().unwrap_or("").to_string())
            };
            out.insert(file, r);
        }
    }
    assert_eq!(
        out.len(),
        files.len(),
        "the validator answered for every file"
    );
    out
}

/// Validates JSON texts (written to a temporary directory): each one's resource counts or
/// the validator's complaint, in order.
pub fn validate_texts(
    python: &Path,
    texts: &[String],
) -> Vec<Result<HashMap<String, usize>, String>> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let files: Vec<PathBuf> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let p = tmp.path().join(format!("r{i}.json"));
            std::fs::write(&p, t).expect("write");
            p
        })
        .collect();
    let mut out = validate(python, &files);
    files
        .iter()
        .map(|f| out.remove(f).expect("an answer per file"))
        .collect()
}
