//! Verified-token cache, one per worker: a token seen again skips signature
//! checking and JSON parsing. Bounded in entries and bytes, keyed by the
//! token's SHA-256.
//!
//! An entry is only a shortcut for "this provider's keys verified this
//! token": whoever reads it still checks that the provider's keys are the
//! same ones (a rotation or refetch makes every entry of that provider stale),
//! that the token is within `exp`/`nbf`, and that its `jti` is not revoked.

use crate::authz::Caller;
use crate::credentials::HeaderEdit;
use crate::jwk::KeySet;
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// What verification established about a token, ready for authorization.
#[derive(Debug)]
pub struct VerifiedToken {
    pub provider: usize,
    /// The key set that verified the signature.
    pub keys: Arc<KeySet>,
    pub exp: u64,
    pub nbf: Option<u64>,
    pub jti: Option<String>,
    pub claims: Map<String, Value>,
    pub scopes: Vec<String>,
    pub caller: Caller,
    /// Identity headers for the upstream, computed once.
    pub identity: Vec<HeaderEdit>,
}

impl VerifiedToken {
    /// A rough memory footprint, for the byte bound.
    fn footprint(&self) -> usize {
        let claims: usize = self
            .claims
            .iter()
            .map(|(k, v)| k.len() + value_size(v))
            .sum();
        let identity: usize = self
            .identity
            .iter()
            .map(|e| match e {
                HeaderEdit::Set(n, v) => n.len() + v.len(),
                HeaderEdit::Remove(n) => n.len(),
            })
            .sum();
        256 + claims + identity + self.scopes.iter().map(String::len).sum::<usize>()
    }
}

fn value_size(v: &Value) -> usize {
    match v {
        Value::String(s) => 24 + s.len(),
        Value::Array(a) => 24 + a.iter().map(value_size).sum::<usize>(),
        Value::Object(o) => {
            48 + o
                .iter()
                .map(|(k, v)| k.len() + value_size(v))
                .sum::<usize>()
        }
        _ => 16,
    }
}

pub struct TokenCache {
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    entries: HashMap<[u8; 32], (Arc<VerifiedToken>, usize)>,
    /// Insertion order, for eviction; may hold digests already removed.
    order: VecDeque<[u8; 32]>,
}

impl TokenCache {
    pub fn new(max_entries: usize, max_bytes: usize) -> TokenCache {
        TokenCache {
            max_entries,
            max_bytes,
            bytes: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn get(&self, digest: &[u8; 32]) -> Option<Arc<VerifiedToken>> {
        self.entries.get(digest).map(|(v, _)| v.clone())
    }

    pub fn remove(&mut self, digest: &[u8; 32]) {
        if let Some((_, size)) = self.entries.remove(digest) {
            self.bytes -= size;
        }
    }

    /// Adds an entry, evicting the oldest ones to stay within both bounds.
    pub fn insert(&mut self, digest: [u8; 32], token: Arc<VerifiedToken>) {
        let size = token.footprint();
        if self.max_entries == 0 || size > self.max_bytes {
            return;
        }
        self.remove(&digest);
        while self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.remove(&oldest);
        }
        self.entries.insert(digest, (token, size));
        self.bytes += size;
        self.order.push_back(digest);
        // Keep the order queue from growing with digests already gone.
        if self.order.len() > 2 * self.max_entries.max(16) {
            let entries = &self.entries;
            self.order.retain(|d| entries.contains_key(d));
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: usize, claim_bytes: usize) -> Arc<VerifiedToken> {
        let mut claims = Map::new();
        claims.insert("sub".into(), Value::from("x".repeat(claim_bytes)));
        Arc::new(VerifiedToken {
            provider: 0,
            keys: Arc::new(KeySet::default()),
            exp: n as u64,
            nbf: None,
            jti: None,
            claims,
            scopes: vec![],
            caller: Caller {
                provider: "p".into(),
                subject: None,
                client_id: None,
            },
            identity: vec![],
        })
    }

    fn digest(n: usize) -> [u8; 32] {
        let mut d = [0u8; 32];
        d[..8].copy_from_slice(&(n as u64).to_le_bytes());
        d
    }

    #[test]
    fn bounded_by_entries_oldest_first() {
        let mut c = TokenCache::new(3, 1 << 20);
        for n in 0..5 {
            c.insert(digest(n), token(n, 10));
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(&digest(0)).is_none() && c.get(&digest(1)).is_none());
        assert_eq!(c.get(&digest(4)).unwrap().exp, 4);
    }

    #[test]
    fn bounded_by_bytes() {
        let mut c = TokenCache::new(1_000, 10_000);
        for n in 0..100 {
            c.insert(digest(n), token(n, 1_000));
        }
        assert!(c.bytes() <= 10_000, "{} bytes", c.bytes());
        assert!(c.len() < 10);
        // An entry larger than the whole cache is not kept.
        c.insert(digest(500), token(500, 20_000));
        assert!(c.get(&digest(500)).is_none());
    }

    #[test]
    fn many_distinct_tokens_stay_within_bounds() {
        let mut c = TokenCache::new(100, 1 << 20);
        for n in 0..100_000 {
            c.insert(digest(n), token(n, 50));
        }
        assert_eq!(c.len(), 100);
        assert!(c.order.len() <= 200);
    }

    #[test]
    fn disabled_cache_keeps_nothing_and_remove_works() {
        let mut c = TokenCache::new(0, 1 << 20);
        c.insert(digest(1), token(1, 1));
        assert!(c.is_empty());
        let mut c = TokenCache::new(10, 1 << 20);
        c.insert(digest(1), token(1, 1));
        c.remove(&digest(1));
        assert!(c.is_empty() && c.bytes() == 0);
    }
}
