//! What each fuzz target does with its input, shared with the replay of seeds
//! and past crashes in `make test` (src/core/tests/fuzz_regressions.rs).

pub mod exercise;
