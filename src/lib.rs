//! Tollgate: API authentication, authorization and abuse protection for Envoy,
//! as a proxy-wasm HTTP filter.
//!
//! Decision logic lives in plain modules that never touch proxy-wasm and are
//! tested on the host; `proxy` is the thin adapter Envoy talks to.

pub mod alg;
pub mod apikey;
pub mod authz;
pub mod client_ip;
pub mod config;
pub mod credentials;
pub mod crypto;
pub mod decision;
pub mod jwk;
pub mod jwt;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod remote;
pub mod revocation;
pub mod token_cache;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(proxy::TollgateRoot::default())
    });
}}
