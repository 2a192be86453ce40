//! Tollgate's decision logic, free of proxy-wasm (the compiler keeps it so: this
//! crate does not depend on it). The filter crate maps host calls onto the traits
//! here; tests use the fakes.

pub mod anomaly;
pub mod apikey;
pub mod audit;
pub mod claims;
pub mod client_ip;
pub mod config;
pub mod credentials;
pub mod crypto;
pub mod decision;
pub mod dpop;
pub mod host;
pub mod identity;
pub mod jwk;
pub mod jwt;
pub mod names;
pub mod path;
pub mod pipeline;
pub mod policy;
pub mod ratelimit;
pub mod remote;
pub mod revocation;
pub mod token_cache;
pub mod upstream;
pub mod worker;

pub use tollgate_contract::alg;
