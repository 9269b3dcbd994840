//! Replays the fuzz inputs committed under `fuzz/` (the hand-written seeds, every crasher a run
//! found, and the minimized inputs that reach what the seeds miss) through the same property
//! checks the fuzz targets run, so `cargo test` keeps them passing
//! without a nightly toolchain. `make fuzz` explores further; docs/fuzzing.md.

// Test code: a panic is how a test fails.
#![allow(
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used
)]

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// Runs `check` on every file of `fuzz/{seeds,regressions,minimized}/<target>`.
fn replay(target: &str, check: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = 0;
    let mut failed = Vec::new();
    for dir in ["seeds", "regressions", "minimized"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            inputs += 1;
            if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    println!("{target}: {inputs} inputs");
    assert!(inputs > 0, "no committed inputs for {target}");
    assert!(failed.is_empty(), "{target} fails on: {failed:#?}");
}

#[test]
fn config_load_inputs() {
    replay("config_load", checks::config_load);
}

#[test]
fn metadata_pairs_inputs() {
    replay("metadata_pairs", checks::metadata_pairs);
}

#[test]
fn sts_response_inputs() {
    replay("sts_response", checks::sts_response);
}

#[test]
fn form_encode_inputs() {
    replay("form_encode", checks::form_encode);
}

#[test]
fn header_checks_inputs() {
    replay("header_checks", checks::header_checks);
}

#[test]
fn cache_entry_inputs() {
    replay("cache_entry", checks::cache_entry);
}

#[test]
fn typed_metadata_inputs() {
    replay("typed_metadata", checks::typed_metadata);
}

#[test]
fn providers_summary_inputs() {
    replay("providers_summary", checks::providers_summary);
}

#[test]
fn mcp_answers_inputs() {
    replay("mcp_answers", checks::mcp_answers);
}

// ---- Bugs the fuzzers found, pinned by name as well as by their inputs above.

/// config_load: an unknown field's name went into the problem's JSON path unquoted, so a name
/// with a line break could forge a log line (`fuzz/regressions/config_load/unknown-field-with-cr`).
#[test]
fn unknown_field_names_are_quoted_in_problem_paths() {
    let json = br#"{"outgoingAuth":{"source":"inline","x\n[V-00] ok":1},"bad\rkey":{}}"#;
    let problems = outgoing_auth::core::validate::load(json, &|_| None).unwrap_err();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [r#"$["bad\rkey"]"#, r#"outgoingAuth["x\n[V-00] ok"]"#]
    );
    for p in &problems {
        let line = p.to_string();
        assert!(!line.contains(['\n', '\r']), "{line:?}");
    }
    // Plain names keep the dotted form.
    let problems =
        outgoing_auth::core::validate::load(br#"{"outgoingAuth":{"defualt":{}}}"#, &|_| None)
            .unwrap_err();
    assert_eq!(problems.problems()[0].path, "outgoingAuth.defualt");
}
