//! The `tollgate-token-service` library: the OAuth 2.0 authorization server that issues the JWT
//! access tokens Tollgate's Envoy filter verifies and publishes the API-key set it
//! checks, plus the CLI that manages clients, users, signing keys, consumers and API
//! keys in the same SQLite file.

pub mod api_key_hashing;
pub mod api_keys;
pub mod cli;
pub mod client_ip;
pub mod clients;
pub mod clock;
pub mod codes;
pub mod commands;
pub mod config;
pub mod consumers;
pub mod db;
pub mod errors;
pub mod grants;
pub mod http;
pub mod key_set;
pub mod keys;
pub mod keystore;
pub mod opaque;
pub mod pending;
pub mod pkce;
pub mod redirect_uri;
pub mod refresh;
pub mod revocation;
pub mod scope;
pub mod secrets;
pub mod server;
pub mod throttle;
pub mod token;
pub mod users;
