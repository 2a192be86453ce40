//! Tollgate's Envoy filter: the proxy-wasm glue around `tollgate_core`.
//!
//! Everything that talks to Envoy is here, and nothing else: it reads the request,
//! runs the core's pipeline, and maps the steps the core returns (answer, edit
//! headers, fetch a document, call the rate-limit service, wait) to host calls. No policy lives in this crate.

mod fetch;
mod host;
mod http;
mod limit_call;
mod metrics;
mod parked;
mod root;

pub use root::TollgateRoot;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(TollgateRoot::new(context_id))
    });
}}
