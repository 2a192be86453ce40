//! Opaque random values (authorization codes, refresh tokens, token ids, login-form
//! nonces, keys) and the SHA-256 digest that codes and refresh tokens are stored under.
//!
//! Storing only the digest means a leaked database yields nothing a client could
//! present. SHA-256 without salt or stretching is enough: the values are random and
//! at least 128 bits long, so there is nothing to guess.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

/// `bytes` random bytes from the OS, base64url without padding.
pub fn random(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buffer);
    URL_SAFE_NO_PAD.encode(buffer)
}

/// `N` random bytes from the OS, e.g. a key.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buffer = [0u8; N];
    OsRng.fill_bytes(&mut buffer);
    buffer
}

/// The SHA-256 digest a code or refresh token is stored and looked up by.
pub fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_values_are_base64url_and_distinct() {
        let (first, second) = (random(32), random(32));
        assert_eq!(first.len(), 43);
        assert_ne!(first, second);
        assert!(first
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }

    #[test]
    fn digest_is_sha256() {
        assert_eq!(
            digest("abc")[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "FIPS 180-2 test vector"
        );
    }
}
