//! Who a request is, as far as logs, metrics and the token cache need to know:
//! never a secret. The credential itself is only ever named by its digest.

use sha2::{Digest, Sha256};

/// Who a verified request is (no secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub provider: String,
    pub subject: Option<String>,
    pub client_id: Option<String>,
}

/// SHA-256 of a presented credential, computed once per request: the token
/// cache's key, the API-key lookup's key (unless peppered) and, shortened, the
/// fingerprint logs show. Never log the credential itself.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenDigest(pub [u8; 32]);

impl TokenDigest {
    pub fn of(credential: &str) -> TokenDigest {
        TokenDigest(Sha256::digest(credential.as_bytes()).into())
    }
}

/// The fingerprint: the first 16 hex digits, not reversible.
impl std::fmt::Display for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().take(8).try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenDigest({self})")
    }
}
