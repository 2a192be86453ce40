//! How an API key becomes the digest that key sets store: SHA-256 of the key, or
//! HMAC-SHA256 keyed with a pepper. The token service computes it when a key is
//! created; the gateway computes it for each presented key.

use std::fmt;

/// Pepper length both sides insist on.
pub const MIN_PEPPER_BYTES: usize = 16;

/// How keys are turned into the digests stored in key sets. `Debug` never shows
/// the pepper.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyHashing {
    Sha256,
    /// HMAC-SHA256 keyed with a secret pepper: a leaked key set cannot be
    /// brute-forced offline without the pepper too.
    HmacSha256(Vec<u8>),
}

impl fmt::Debug for KeyHashing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyHashing::Sha256 => "Sha256",
            KeyHashing::HmacSha256(_) => "HmacSha256(<pepper>)",
        })
    }
}

impl KeyHashing {
    pub fn digest(&self, key: &str) -> [u8; 32] {
        match self {
            KeyHashing::Sha256 => hmac_sha256::Hash::hash(key.as_bytes()),
            KeyHashing::HmacSha256(pepper) => hmac_sha256::HMAC::mac(key.as_bytes(), pepper),
        }
    }

    /// [`Self::digest`], for a key whose SHA-256 the caller already has.
    pub fn digest_from_sha256(&self, key: &str, sha256: &[u8; 32]) -> [u8; 32] {
        match self {
            KeyHashing::Sha256 => *sha256,
            KeyHashing::HmacSha256(_) => self.digest(key),
        }
    }

    /// The digest as key sets write it: 64 lower-case hex digits.
    pub fn digest_hex(&self, key: &str) -> String {
        to_hex(&self.digest(key))
    }
}

pub fn to_hex(digest: &[u8; 32]) -> String {
    use fmt::Write as _;
    digest.iter().fold(String::with_capacity(64), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Parses 64 hex digits (either case) into a digest.
pub fn from_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_and_hmac_digests_round_trip_through_hex() {
        let sha = KeyHashing::Sha256.digest_hex("tg_live_x");
        assert_eq!(sha.len(), 64);
        assert_eq!(from_hex(&sha), Some(KeyHashing::Sha256.digest("tg_live_x")));
        let peppered = KeyHashing::HmacSha256(b"0123456789abcdef".to_vec());
        assert_ne!(peppered.digest_hex("tg_live_x"), sha);
        assert!(!format!("{peppered:?}").contains("0123"));
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex(&"é".repeat(32)), None);
    }
}
