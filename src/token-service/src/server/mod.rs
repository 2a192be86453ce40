//! Running the service: `serve` settings, startup and shutdown, and what guards the
//! server against its callers (the authentication throttle, the client address it
//! throttles by), plus the clock every part reads.

pub mod client_ip;
pub mod clock;
pub mod config;
mod serve;
pub mod throttle;

pub use serve::run;
