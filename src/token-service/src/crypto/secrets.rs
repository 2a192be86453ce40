//! Client secrets: generation, Argon2id hashing and verification.
//!
//! Only the PHC-format hash is stored, so a leaked database does not leak usable
//! credentials. Verification always runs one Argon2 computation, even for an unknown
//! client (against [`dummy_hash`]), so timing does not reveal which client ids exist.

use anyhow::anyhow;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::RngCore as _;

/// 256 bits of entropy, far beyond what online guessing could cover.
const SECRET_BYTES: usize = 32;

/// A new random client secret, base64url without padding (43 characters).
pub fn generate() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Argon2id (v19, OWASP-recommended default cost) PHC string for `secret`.
pub fn hash(secret: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| anyhow!("hashing client secret: {err}"))
}

/// Whether `secret` matches the PHC string `phc`; the cost parameters come from `phc`.
pub fn verify(secret: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A hash of a random, discarded secret: verifying against it costs the same as a real
/// check and never succeeds.
pub fn dummy_hash() -> anyhow::Result<String> {
    hash(&generate())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_long_and_distinct() {
        let (first, second) = (generate(), generate());
        assert_eq!(first.len(), 43);
        assert_ne!(first, second);
    }

    #[test]
    fn hash_round_trip() {
        let secret = generate();
        let phc = hash(&secret).expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$"));
        assert!(!phc.contains(&secret));
        assert!(verify(&secret, &phc));
        assert!(!verify("wrong", &phc));
        assert!(!verify(&secret, "not a phc string"));
    }
}
