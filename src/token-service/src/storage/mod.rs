//! The SQLite store and what lives in it: the schema and its migrations, clients,
//! users, signing keys, issued and revoked access tokens, and API-key consumers and keys with the
//! key-set document the gateway polls.

pub mod api_key_hashing;
pub mod api_keys;
pub mod client_tls;
pub mod clients;
pub mod consumers;
pub mod db;
pub mod factors;
pub mod issued_tokens;
pub mod key_set;
pub mod keystore;
pub mod revocation;
pub mod users;
