//! The proxy-wasm adapter: everything that talks to Envoy. It gathers inputs,
//! calls the plain decision logic, and applies the result. No policy here.

mod host;
mod http;
mod root;

pub use root::TollgateRoot;
