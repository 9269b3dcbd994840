//! Replays the fuzz corpora committed under `fuzz/` (the seeds, and every crasher a run found)
//! through the same property checks the fuzz targets run, so `cargo test` keeps them passing
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

/// Runs `check` on every file of `fuzz/seeds/<target>` and `fuzz/regressions/<target>`.
fn replay(target: &str, check: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = 0;
    let mut failed = Vec::new();
    for dir in ["seeds", "regressions"] {
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
