//! The proxy-wasm adapter: everything that talks to Envoy. It gathers inputs,
//! calls the plain decision logic, and applies the result. No policy here.

mod fetch;
mod host;
mod http;
mod metrics;
mod root;

pub use root::TollgateRoot;
