//! Running the service: `serve` settings, startup and shutdown, and what guards the
//! server against its callers (connection limits and timeouts, the authentication
//! throttle, the client address it throttles by), plus the clock every part reads, the
//! audit events and the metrics.

pub mod audit;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod connections;
pub mod metrics;
mod serve;
pub mod throttle;

pub use serve::run;
