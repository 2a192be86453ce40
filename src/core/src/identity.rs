//! Who a request is, as far as logs, metrics and the token cache need to know:
//! never a secret. The credential itself is only ever named by its digest.

use sha2::{Digest, Sha256};

/// Who a verified request is (no secrets): what the upstream, the audit
/// events and the rate limits know about the caller.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caller {
    /// The provider's name, or `api_key`.
    pub provider: String,
    pub subject: Option<String>,
    pub client_id: Option<String>,
    /// The API-key consumer.
    pub consumer: Option<String>,
    /// The consumer's tenant, or the token's `tenant` claim.
    pub tenant: Option<String>,
    /// The API key's id (never the key).
    pub api_key_id: Option<String>,
    /// The token's `jti`.
    pub jti: Option<String>,
}

impl Caller {
    /// Who to count failures against: the client, else the consumer, else the subject.
    pub fn principal(&self) -> Option<&str> {
        self.client_id
            .as_deref()
            .or(self.consumer.as_deref())
            .or(self.subject.as_deref())
    }

    /// The optional identity strings, for size accounting.
    pub fn strings(&self) -> impl Iterator<Item = &str> {
        [
            &self.subject,
            &self.client_id,
            &self.consumer,
            &self.tenant,
            &self.api_key_id,
            &self.jti,
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .chain(std::iter::once(self.provider.as_str()))
    }
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
