//! Verified-token cache, one per worker: a token seen again skips signature
//! checking and JSON parsing. Bounded in entries and bytes.
//!
//! Looked up by a keyed hash of the token (SipHash under the worker's random
//! key, computed once per request), and a hit compares the whole token: no
//! collision, made or chance, can hand one token another's verification (it is
//! a miss). A hit runs no SHA-256 over the token, which costs about 2 µs per
//! request in the wasm VM: the token's SHA-256 fingerprint is computed once, on
//! verification, and kept in the entry.
//!
//! An entry is only a shortcut for "this provider's keys verified this
//! token": whoever reads it still checks that the provider's keys are the
//! same ones (a rotation or refetch makes every entry of that provider stale),
//! that the token is within `exp`/`nbf`, and that its `jti` is not revoked.

use crate::client_cert::TokenBinding;
use crate::config::ProviderId;
use crate::credentials::HeaderEdit;
use crate::identity::{Caller, TokenDigest};
use crate::jwk::KeySet;
use serde_json::{Map, Value};
use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;

/// What verification established about a token, ready for authorization.
#[derive(Debug)]
pub struct VerifiedToken {
    pub provider: ProviderId,
    /// The key set that verified the signature.
    pub keys: Arc<KeySet>,
    pub exp: u64,
    pub nbf: Option<u64>,
    pub claims: Map<String, Value>,
    pub scopes: Vec<String>,
    /// Roles, from the provider's `role_claims`.
    pub roles: Vec<String>,
    /// The key thumbprint a DPoP-bound token is bound to (`cnf.jkt`).
    pub jkt: Option<String>,
    pub caller: Arc<Caller>,
    /// Identity headers for the upstream, computed once.
    pub identity: Arc<[HeaderEdit]>,
    /// `cnf.x5t#S256`: checked against each request's connection.
    pub binding: TokenBinding,
    /// The token's SHA-256: its fingerprint in audit events and signals.
    pub digest: TokenDigest,
}

impl VerifiedToken {
    /// The memory an entry holds, for the byte bound: every heap block with the
    /// allocator's bookkeeping, and the cache's own slots for it. Counted from
    /// the real layouts, so that Envoy's RSS stays within the bound (the bench's
    /// memory run checks it).
    fn footprint(&self, token_len: usize) -> usize {
        let strings = self
            .caller
            .strings()
            .chain(self.jkt.iter().map(String::as_str))
            .chain(self.scopes.iter().map(String::as_str))
            .chain(self.roles.iter().map(String::as_str));
        let mut bytes = heap(token_len)
            + heap(arc_block(size_of::<VerifiedToken>()))
            + heap(arc_block(size_of::<Caller>()))
            + strings.map(|s| heap(s.len())).sum::<usize>()
            + heap(self.scopes.len() * size_of::<String>())
            + heap(self.roles.len() * size_of::<String>())
            + heap(arc_block(self.identity.len() * size_of::<HeaderEdit>()))
            + CACHE_SLOTS;
        for edit in self.identity.iter() {
            bytes += match edit {
                HeaderEdit::Set(n, v) => heap(n.len()) + heap(v.len()),
                HeaderEdit::Remove(n) => heap(n.len()),
            };
        }
        bytes += map_heap(&self.claims);
        bytes * FRAGMENTATION.0 / FRAGMENTATION.1
    }
}

/// Long-lived entries interleave with each request's short-lived blocks, so
/// the allocator cannot pack them: the bench's memory run measured Envoy's RSS
/// growing 1.18x the blocks counted here (at 4 and 16 MiB bounds), so count 1.25x.
const FRAGMENTATION: (usize, usize) = (5, 4);

/// An `Arc`'s heap block: two reference counts, then the value.
const fn arc_block(value: usize) -> usize {
    2 * size_of::<usize>() + value
}

/// dlmalloc's per-block bookkeeping and alignment, rounded up.
const ALLOC_OVERHEAD: usize = 16;

/// A B-tree leaf of `String` keys and `Value`s (capacity 11), with its header.
const BTREE_NODE: usize = 11 * (size_of::<String>() + size_of::<Value>()) + 4 * size_of::<usize>();

/// Per entry, the cache's hash-map bucket (and control byte), doubled because
/// the table grows by doubling, and four eviction-queue slots: the queue may
/// hold twice as many keys as entries before it is compacted, and it too
/// grows by doubling.
const CACHE_SLOTS: usize = 2 * (size_of::<(CacheKey, Entry)>() + 1) + 4 * size_of::<CacheKey>();

/// Where a token's entry is looked up: its keyed hash ([`TokenCache::key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(u64);

/// A cached verification, with the token it is for (compared on every hit) and
/// its footprint.
#[derive(Debug)]
struct Entry {
    token: Box<str>,
    verified: Arc<VerifiedToken>,
    size: usize,
}

/// The heap cost of a block of `len` bytes (none for an empty string or vector).
fn heap(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        (len + ALLOC_OVERHEAD).next_multiple_of(8)
    }
}

/// What a claim value holds on the heap, beyond its inline `Value`.
fn value_heap(v: &Value) -> usize {
    match v {
        Value::String(s) => heap(s.len()),
        Value::Array(a) => {
            heap(a.len() * size_of::<Value>()) + a.iter().map(value_heap).sum::<usize>()
        }
        Value::Object(o) => map_heap(o),
        _ => 0,
    }
}

/// What a JSON object holds on the heap: serde_json's map is a B-tree, one node
/// per up to 11 entries, plus its keys and values.
fn map_heap(map: &Map<String, Value>) -> usize {
    map.len().div_ceil(11) * heap(BTREE_NODE)
        + map
            .iter()
            .map(|(k, v)| heap(k.len()) + value_heap(v))
            .sum::<usize>()
}

pub struct TokenCache {
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    /// The random key of [`Self::key`], this worker's own.
    hasher: RandomState,
    entries: HashMap<CacheKey, Entry>,
    /// Insertion order, for eviction; may hold keys already removed.
    order: VecDeque<CacheKey>,
    /// Lookups since the last [`Self::take_counts`]: (hits, misses).
    counts: Cell<(u64, u64)>,
}

impl TokenCache {
    pub fn new(max_entries: usize, max_bytes: usize) -> TokenCache {
        TokenCache {
            max_entries,
            max_bytes,
            bytes: 0,
            hasher: RandomState::new(),
            entries: HashMap::new(),
            order: VecDeque::new(),
            counts: Cell::new((0, 0)),
        }
    }

    /// Counts a lookup: `hit` when the entry was found and still usable.
    pub fn count(&self, hit: bool) {
        let (hits, misses) = self.counts.get();
        self.counts.set(if hit {
            (hits + 1, misses)
        } else {
            (hits, misses + 1)
        });
    }

    /// The (hits, misses) counted since the last call.
    pub fn take_counts(&self) -> (u64, u64) {
        self.counts.replace((0, 0))
    }

    /// Where `token` is looked up, inserted and removed: one pass over it.
    pub fn key(&self, token: &str) -> CacheKey {
        CacheKey(self.hasher.hash_one(token))
    }

    /// The verification of exactly `token`, if cached.
    pub fn get(&self, key: CacheKey, token: &str) -> Option<Arc<VerifiedToken>> {
        self.entries
            .get(&key)
            .filter(|e| *e.token == *token)
            .map(|e| e.verified.clone())
    }

    pub fn remove(&mut self, key: CacheKey) {
        if let Some(e) = self.entries.remove(&key) {
            self.bytes -= e.size;
        }
    }

    /// Adds `token`'s verification (replacing whatever `key` held), evicting the
    /// oldest entries to stay within both bounds.
    pub fn insert(&mut self, key: CacheKey, token: &str, verified: Arc<VerifiedToken>) {
        let size = verified.footprint(token.len());
        if self.max_entries == 0 || size > self.max_bytes {
            return;
        }
        self.remove(key);
        while self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.remove(oldest);
        }
        let entry = Entry {
            token: token.into(),
            verified,
            size,
        };
        self.entries.insert(key, entry);
        self.bytes += size;
        self.order.push_back(key);
        // Keep the order queue from growing with keys already gone: compact
        // it once they outnumber the live ones.
        if self.order.len() > 2 * self.entries.len().max(16) {
            let entries = &self.entries;
            self.order.retain(|k| entries.contains_key(k));
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
            provider: ProviderId(0),
            keys: Arc::new(KeySet::default()),
            exp: n as u64,
            nbf: None,
            claims,
            scopes: vec![],
            roles: vec![],
            jkt: None,
            caller: Arc::new(Caller {
                provider: "p".into(),
                ..Caller::default()
            }),
            identity: Arc::new([]),
            binding: TokenBinding::Unbound,
            digest: TokenDigest::of(&name(n)),
        })
    }

    fn name(n: usize) -> String {
        format!("token-{n}")
    }

    #[test]
    fn bounded_by_entries_oldest_first() {
        let mut c = TokenCache::new(3, 1 << 20);
        for n in 0..5 {
            put(&mut c, n, 10);
        }
        assert_eq!(c.len(), 3);
        assert!(get(&c, 0).is_none() && get(&c, 1).is_none());
        assert_eq!(get(&c, 4).unwrap().exp, 4);
    }

    fn put(c: &mut TokenCache, n: usize, claim_bytes: usize) {
        c.insert(c.key(&name(n)), &name(n), token(n, claim_bytes));
    }

    fn get(c: &TokenCache, n: usize) -> Option<Arc<VerifiedToken>> {
        c.get(c.key(&name(n)), &name(n))
    }

    #[test]
    fn a_hit_takes_the_whole_token() {
        let mut c = TokenCache::new(10, 1 << 20);
        let t = "header.payload.signature";
        c.insert(c.key(t), t, token(1, 10));
        assert!(c.get(c.key(t), t).is_some());
        for other in ["header.payload.signatur", "header.payload.signaturE", ""] {
            assert!(c.get(c.key(other), other).is_none(), "{other:?}");
            // Even under the same key (a collision), another token is a miss.
            assert!(c.get(c.key(t), other).is_none(), "{other:?}");
        }
    }

    #[test]
    fn each_worker_hashes_under_its_own_key() {
        let (a, b) = (TokenCache::new(1, 1), TokenCache::new(1, 1));
        let t = "header.payload.signature";
        assert_eq!(a.key(t), a.key(t));
        assert_ne!(a.key(t), b.key(t));
    }

    #[test]
    fn bounded_by_bytes() {
        let mut c = TokenCache::new(1_000, 10_000);
        for n in 0..100 {
            put(&mut c, n, 1_000);
        }
        assert!(c.bytes() <= 10_000, "{} bytes", c.bytes());
        assert!(c.len() < 10);
        // An entry larger than the whole cache is not kept.
        put(&mut c, 500, 20_000);
        assert!(get(&c, 500).is_none());
    }

    #[test]
    fn many_distinct_tokens_stay_within_bounds() {
        let mut c = TokenCache::new(100, 1 << 20);
        for n in 0..100_000 {
            put(&mut c, n, 50);
        }
        assert_eq!(c.len(), 100);
        assert!(c.order.len() <= 200);
    }

    #[test]
    fn disabled_cache_keeps_nothing_and_remove_works() {
        let mut c = TokenCache::new(0, 1 << 20);
        put(&mut c, 1, 1);
        assert!(c.is_empty());
        let mut c = TokenCache::new(10, 1 << 20);
        put(&mut c, 1, 1);
        c.remove(c.key(&name(1)));
        assert!(c.is_empty() && c.bytes() == 0);
    }
}
