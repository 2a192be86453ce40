//! The `tollgate-token-service` library: the OAuth 2.0 authorization server that issues the JWT
//! access tokens Tollgate's Envoy filter verifies and publishes the API-key set it
//! checks, plus the CLI that manages clients, users, signing keys, consumers and API
//! keys in the same SQLite file.
//!
//! | folder | job |
//! |---|---|
//! | [`cli`] | the command line: parsing, dispatch, the management commands |
//! | [`server`] | `serve`: settings, startup, shutdown, throttling, client addresses, clock |
//! | [`http`] | routes and handlers: parse a request, call the protocol, answer |
//! | [`protocol`] | OAuth 2.0 rules: codes, PKCE, grants, refresh families, scopes, tokens, errors |
//! | [`storage`] | the SQLite store: schema, clients, users, keys, revocations, API keys |
//! | [`crypto`] | signing keys, Argon2id secrets, random opaque values |
//!
//! [`router`] and [`AppState`] serve the HTTP API in-process (the handlers read the
//! peer address, so serve it with `into_make_service_with_connect_info::<SocketAddr>`).

pub mod cli;
pub mod crypto;
pub mod http;
pub mod protocol;
pub mod server;
pub mod storage;

pub use http::{router, AppState};
