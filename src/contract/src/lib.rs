//! What the token service (the issuer) and the gateway (the filter) must agree on,
//! written once and used by both: the documents the gateway polls (revocation feed,
//! API-key set), how API keys are hashed, address ranges, and JWS algorithm names.
//! Builds for wasm: no I/O, no host calls.

pub mod alg;
pub mod api_key_set;
pub mod cidr;
pub mod key_hashing;
pub mod revocation_feed;
