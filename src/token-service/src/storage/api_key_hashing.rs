//! How API keys become the digests that are stored and published: SHA-256 of the key,
//! or HMAC-SHA256 keyed with a pepper read from `--api-key-pepper-file`.
//!
//! The computation is the filter's own ([`tollgate_contract::key_hashing::KeyHashing`]), so a key
//! created here verifies at the gateway as long as the gateway's `api_keys.pepper`
//! holds the same pepper (or neither has one).

use std::fmt;
use std::path::Path;

use anyhow::{ensure, Context as _};
use tollgate_contract::key_hashing::{KeyHashing, MIN_PEPPER_BYTES};

/// The digest function for API keys. Its `Debug` never shows the pepper.
pub struct KeyHasher(KeyHashing);

impl KeyHasher {
    /// SHA-256 without a pepper file, HMAC-SHA256 with one. The file holds the pepper
    /// (UTF-8, at least 16 bytes); one trailing line ending is ignored.
    pub fn load(pepper_file: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = pepper_file else {
            return Ok(Self(KeyHashing::Sha256));
        };
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading the API-key pepper file {}", path.display()))?;
        let pepper = String::from_utf8(bytes).map_err(|_| {
            anyhow::anyhow!(
                "the API-key pepper in {} must be UTF-8 text (the gateway's `api_keys.pepper.inline_string` is a JSON string)",
                path.display()
            )
        })?;
        let pepper = pepper.strip_suffix('\n').unwrap_or(&pepper);
        let pepper = pepper.strip_suffix('\r').unwrap_or(pepper);
        ensure!(
            pepper.len() >= MIN_PEPPER_BYTES,
            "the API-key pepper in {} is shorter than {MIN_PEPPER_BYTES} bytes",
            path.display()
        );
        Ok(Self(KeyHashing::HmacSha256(pepper.as_bytes().to_vec())))
    }

    /// How digests are computed, as recorded next to each one: `sha256` or `hmac-sha256`.
    pub fn scheme(&self) -> &'static str {
        match self.0 {
            KeyHashing::Sha256 => "sha256",
            KeyHashing::HmacSha256(_) => "hmac-sha256",
        }
    }

    /// The key's digest in lowercase hex, as key sets carry it.
    pub fn digest_hex(&self, key: &str) -> String {
        self.0.digest_hex(key)
    }
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHasher({})", self.scheme())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_without_a_pepper() {
        let hasher = KeyHasher::load(None).expect("no pepper");
        assert_eq!(hasher.scheme(), "sha256");
        assert_eq!(
            hasher.digest_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hmac_with_a_pepper_file_without_its_line_ending() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("pepper");
        std::fs::write(&path, "0123456789abcdef\r\n").expect("write");
        let hasher = KeyHasher::load(Some(&path)).expect("pepper");
        assert_eq!(hasher.scheme(), "hmac-sha256");
        let expected = KeyHashing::HmacSha256(b"0123456789abcdef".to_vec()).digest("tg_live_x");
        let expected: String = expected.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hasher.digest_hex("tg_live_x"), expected);
        assert_eq!(format!("{hasher:?}"), "KeyHasher(hmac-sha256)");

        std::fs::write(&path, "too short\n").expect("write");
        let err = KeyHasher::load(Some(&path)).expect_err("short pepper");
        assert!(err.to_string().contains("shorter than 16 bytes"), "{err}");
        std::fs::write(&path, b"\xff0123456789abcdef").expect("write");
        assert!(KeyHasher::load(Some(&path)).is_err(), "not UTF-8");
        assert!(KeyHasher::load(Some(&dir.path().join("missing"))).is_err());
    }
}
