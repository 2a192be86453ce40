//! Replays the fuzz seeds and every input a fuzz target ever crashed on
//! (src/core/fuzz/seeds/<target>/, src/core/fuzz/regressions/<target>/)
//! through the targets' own code, so `make test` keeps each crash fixed.
//! `make fuzz` runs the targets themselves.

// Test code: the exercise functions assert what the targets must hold.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../fuzz/src/exercise.rs"]
mod exercise;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for kind in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let input = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| run(&input)).is_err() {
                panic!("fuzz target `{target}` fails on {}", path.display());
            }
            count += 1;
        }
    }
    assert!(count > 0, "no seeds for fuzz target `{target}`");
}

#[test]
fn jwt() {
    replay("jwt", exercise::jwt);
}

#[test]
fn jwks() {
    replay("jwks", exercise::jwks);
}

#[test]
fn config() {
    replay("config", exercise::config);
}

#[test]
fn api_keys() {
    replay("api_keys", exercise::api_keys);
}

#[test]
fn revocations() {
    replay("revocations", exercise::revocations);
}

#[test]
fn rls_response() {
    replay("rls_response", exercise::rls_response);
}

#[test]
fn path() {
    replay("path", exercise::path);
}

#[test]
fn request() {
    replay("request", exercise::request);
}
