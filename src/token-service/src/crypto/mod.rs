//! Cryptographic building blocks: signing keys and JWS, Argon2id secrets and
//! passwords, and the random opaque values (codes, refresh tokens, ids) with the digest
//! they are stored under.

pub mod opaque;
pub mod sealed;
pub mod secrets;
pub mod signing_keys;
