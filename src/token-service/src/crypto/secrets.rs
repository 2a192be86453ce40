//! Client secrets and user passwords: generation, Argon2id hashing and verification.
//!
//! Only the PHC-format hash is stored, so a leaked database does not leak usable
//! credentials. Verification always runs one Argon2 computation, even for an unknown
//! client or user (against a dummy hash), so timing does not reveal which exist.
//!
//! The server verifies through a [`Verifier`]: a few checks at a time, each in one of
//! as many Argon2 work areas allocated once and reused. Allocating the ~19 MiB area per
//! check, on whichever blocking thread ran it, left freed areas cached in the
//! allocator's per-thread arenas: resident memory grew to most of a gigabyte under a
//! burst of logins.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use anyhow::anyhow;
use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, Block, Params};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::RngCore as _;
use tokio::sync::Semaphore;

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

/// Verifies secrets against stored hashes with bounded memory and CPU: at most
/// `parallelism` checks run at once, each in a reused work area.
pub struct Verifier {
    permits: Semaphore,
    slots: usize,
    /// Checks waiting for a permit (the hash queue, in the metrics).
    waiting: AtomicUsize,
    /// Work areas not in use; never more than there are permits.
    areas: Mutex<Vec<Vec<Block>>>,
    /// A hash of a random, discarded secret: verifying against it costs the same as a
    /// real check and never succeeds.
    dummy_hash: String,
}

impl Verifier {
    pub fn new(parallelism: usize) -> anyhow::Result<Self> {
        Ok(Self {
            permits: Semaphore::new(parallelism),
            slots: parallelism,
            waiting: AtomicUsize::new(0),
            areas: Mutex::new(Vec::with_capacity(parallelism)),
            dummy_hash: hash(&generate())?,
        })
    }

    /// Whether `secret` matches the PHC string `phc`; `None` (no such client or user)
    /// costs the same and never matches. Waits for a free slot, then hashes on a
    /// blocking thread.
    pub async fn verify(&self, secret: String, phc: Option<String>) -> anyhow::Result<bool> {
        let _permit = {
            self.waiting.fetch_add(1, Ordering::Relaxed);
            let _waited = Waiting(&self.waiting);
            self.permits.acquire().await?
        };
        let mut area = self
            .areas
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy_hash.clone());
        let (matches, area) = tokio::task::spawn_blocking(move || {
            let matches = verify_in(secret.as_bytes(), &phc, &mut area);
            (matches, area)
        })
        .await?;
        self.areas
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(area);
        Ok(known && matches)
    }
}

/// How many checks wait for a slot and how many run, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepth {
    pub waiting: usize,
    pub in_flight: usize,
    pub slots: usize,
}

impl Verifier {
    pub fn queue_depth(&self) -> QueueDepth {
        QueueDepth {
            waiting: self.waiting.load(Ordering::Relaxed),
            in_flight: self.slots.saturating_sub(self.permits.available_permits()),
            slots: self.slots,
        }
    }
}

/// Leaves the queue when dropped: acquired, failed or cancelled.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether `secret` matches the PHC string `phc`, whose parameters (variant, version,
/// costs, salt) say how to hash it; computed in `area`, grown to the hash's memory
/// cost if it is smaller.
fn verify_in(secret: &[u8], phc: &str, area: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        argon2::Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let version = match parsed.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    if area.len() < params.block_count() {
        area.resize(params.block_count(), Block::default());
    }
    let mut computed = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(secret, salt, &mut computed, area.as_mut_slice())
        .is_ok()
        // `Output` compares in constant time.
        && Output::new(&computed).is_ok_and(|computed| computed == expected)
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
        let mut area = Vec::new();
        assert!(verify_in(secret.as_bytes(), &phc, &mut area));
        assert!(!verify_in(b"wrong", &phc, &mut area));
        assert!(!verify_in(secret.as_bytes(), "not a phc string", &mut area));
    }

    #[tokio::test]
    async fn the_verifier_agrees_with_argon2_and_reuses_its_areas() {
        let verifier = Verifier::new(2).expect("verifier");
        let secret = generate();
        let phc = hash(&secret).expect("hash");
        for _ in 0..3 {
            assert!(verifier
                .verify(secret.clone(), Some(phc.clone()))
                .await
                .expect("verify"));
            assert!(!verifier
                .verify("wrong".to_owned(), Some(phc.clone()))
                .await
                .expect("verify"));
        }
        // Unknown accounts never match, not even with the dummy hash's own secret.
        assert!(!verifier.verify(secret, None).await.expect("verify"));
        assert!(!verifier
            .verify("x".to_owned(), Some("not a phc string".to_owned()))
            .await
            .expect("verify"));
        // Sequential checks share one area, of the default cost (19 MiB).
        let areas = verifier.areas.lock().expect("lock");
        assert_eq!(areas.len(), 1);
        assert_eq!(areas[0].len(), Params::DEFAULT_M_COST as usize);

        // Other costs and variants (argon2i, other memory) verify too.
        let params = Params::new(8_192, 1, 1, None).expect("params");
        let salt = SaltString::generate(&mut OsRng);
        let other = Argon2::new(argon2::Algorithm::Argon2i, argon2::Version::V0x13, params)
            .hash_password(b"pw", &salt)
            .expect("hash")
            .to_string();
        let mut area = Vec::new();
        assert!(verify_in(b"pw", &other, &mut area));
        assert!(!verify_in(b"px", &other, &mut area));
    }
}
