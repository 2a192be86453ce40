//! Shared harness for the integration tests: real binaries, real sockets, loopback only.
//!

pub mod artifacts;
pub mod dpop;
pub mod envoy;
pub mod fleet;
pub mod oauth;
pub mod process;
pub mod redis;
pub mod rls;
pub mod stack;
pub mod token_service;

use std::time::Duration;

/// An HTTP client for assertions on any status: 4xx and 5xx are answers, not errors.
pub fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}
