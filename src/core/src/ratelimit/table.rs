//! Counters in proxy-wasm shared data, with bounded memory.
//!
//! Envoy's shared data cannot delete a key (removing only empties its value),
//! has no TTL and cannot list its keys, so one shared key per client would
//! leak forever. Instead, counters live in a fixed table of `slots` shared
//! keys; a counter's key hashes to one slot, and each slot holds at most
//! `entries_per_slot` entries. Every update drops the slot's idle entries,
//! and a sweep on tick walks all slots, so idle counters are reclaimed and
//! memory stays within `slots × entries_per_slot × 32` bytes.
//!
//! Updates are compare-and-swap on the slot, so one Envoy with N workers
//! enforces one limit, not N.

use crate::host::SharedData;
use std::hash::{Hash, Hasher};

/// One counter: a key hash, two values, and when it may be forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub hash: u64,
    pub a: u64,
    pub b: u64,
    pub expires_ms: u64,
}

const ENTRY_BYTES: usize = 32;
const CAS_ATTEMPTS: usize = 16;

/// What an update did to the table, for stats.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Churn {
    /// Entries added minus entries removed.
    pub entries_delta: i64,
    /// Live entries pushed out because the slot was full.
    pub evicted: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTable {
    pub slots: u32,
    pub entries_per_slot: usize,
}

/// The slot could not be updated: other workers kept winning the CAS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contended;

/// A stable 64-bit hash of a counter key (the same in every worker VM).
pub fn key_hash(key: &str) -> u64 {
    // `DefaultHasher::new()` uses fixed keys: every worker VM runs the same
    // module, so every worker maps a key to the same slot.
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

fn decode(bytes: &[u8]) -> Vec<Entry> {
    bytes
        .chunks_exact(ENTRY_BYTES)
        .map(|c| {
            let word = |i: usize| {
                let mut w = [0u8; 8];
                if let Some(bytes) = c.get(i * 8..i * 8 + 8) {
                    w.copy_from_slice(bytes);
                }
                u64::from_le_bytes(w)
            };
            Entry {
                hash: word(0),
                a: word(1),
                b: word(2),
                expires_ms: word(3),
            }
        })
        .collect()
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_BYTES);
    for e in entries {
        for w in [e.hash, e.a, e.b, e.expires_ms] {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    out
}

impl SlotTable {
    fn slot_key(slot: u32) -> String {
        format!("tollgate/rl/{slot}")
    }

    fn slot_of(&self, hash: u64) -> u32 {
        (hash % u64::from(self.slots.max(1))) as u32
    }

    /// The live entry for `hash`, without taking part in any CAS.
    pub fn read(&self, shared: &dyn SharedData, hash: u64, now_ms: u64) -> Option<Entry> {
        let (bytes, _) = shared.get(&Self::slot_key(self.slot_of(hash)))?;
        decode(&bytes)
            .into_iter()
            .find(|e| e.hash == hash && e.expires_ms > now_ms)
    }

    /// Reads, changes and writes back one entry atomically. `change` gets the
    /// live entry (if any) and returns the entry to store (`None` removes it)
    /// and a result. It may run more than once, if other workers race.
    pub fn update<R>(
        &self,
        shared: &dyn SharedData,
        hash: u64,
        now_ms: u64,
        mut change: impl FnMut(Option<&Entry>) -> (Option<Entry>, R),
    ) -> Result<(R, Churn), Contended> {
        let key = Self::slot_key(self.slot_of(hash));
        for _ in 0..CAS_ATTEMPTS {
            let (bytes, cas) = match shared.get(&key) {
                Some((b, c)) => (b, Some(c)),
                None => (Vec::new(), None),
            };
            let before = decode(&bytes);
            let mut entries: Vec<Entry> = before
                .iter()
                .copied()
                .filter(|e| e.expires_ms > now_ms)
                .collect();
            let current = entries.iter().position(|e| e.hash == hash);
            let (next, result) = change(current.and_then(|i| entries.get(i)));
            let mut evicted = 0;
            match (current, next) {
                (Some(i), Some(e)) => {
                    if let Some(slot) = entries.get_mut(i) {
                        *slot = e;
                    }
                }
                (Some(i), None) => {
                    entries.swap_remove(i);
                }
                (None, Some(e)) => {
                    if entries.len() >= self.entries_per_slot.max(1) {
                        // Full of live counters: forget the one closest to expiry.
                        if let Some((i, _)) =
                            entries.iter().enumerate().min_by_key(|(_, e)| e.expires_ms)
                        {
                            entries.swap_remove(i);
                            evicted = 1;
                        }
                    }
                    entries.push(e);
                }
                (None, None) => {}
            }
            if shared.set(&key, &encode(&entries), cas) {
                let churn = Churn {
                    entries_delta: entries.len() as i64 - before.len() as i64,
                    evicted,
                };
                return Ok((result, churn));
            }
        }
        Err(Contended)
    }

    /// Drops expired entries from `count` slots starting at `first`.
    /// Returns the number of entries removed.
    pub fn sweep(&self, shared: &dyn SharedData, first: u32, count: u32, now_ms: u64) -> u64 {
        let mut removed = 0;
        for slot in (first..first.saturating_add(count)).filter(|s| *s < self.slots) {
            let key = Self::slot_key(slot);
            let Some((bytes, cas)) = shared.get(&key) else {
                continue;
            };
            let entries = decode(&bytes);
            let live: Vec<Entry> = entries
                .iter()
                .copied()
                .filter(|e| e.expires_ms > now_ms)
                .collect();
            if live.len() != entries.len() && shared.set(&key, &encode(&live), Some(cas)) {
                removed += (entries.len() - live.len()) as u64;
            }
        }
        removed
    }

    /// Claims the next `count` slots to sweep, round-robin across workers,
    /// through a shared cursor. `None` if another worker moved it first.
    pub fn claim_sweep(&self, shared: &dyn SharedData, count: u32) -> Option<u32> {
        const CURSOR: &str = "tollgate/rl/sweep-cursor";
        let (start, cas) = match shared.get(CURSOR) {
            Some((b, cas)) => {
                let start = std::str::from_utf8(&b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                (start, Some(cas))
            }
            None => (0, None),
        };
        let start = if start >= self.slots { 0 } else { start };
        let next = start.saturating_add(count) % self.slots.max(1);
        shared
            .set(CURSOR, next.to_string().as_bytes(), cas)
            .then_some(start)
    }

    /// Live entries across the whole table (for tests and diagnostics).
    pub fn live_entries(&self, shared: &dyn SharedData, now_ms: u64) -> usize {
        (0..self.slots)
            .filter_map(|s| shared.get(&Self::slot_key(s)))
            .map(|(b, _)| decode(&b).iter().filter(|e| e.expires_ms > now_ms).count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fakes::FakeShared;

    fn table() -> SlotTable {
        SlotTable {
            slots: 64,
            entries_per_slot: 4,
        }
    }

    fn bump(t: &SlotTable, s: &dyn SharedData, key: &str, now: u64, ttl: u64) -> u64 {
        let hash = key_hash(key);
        t.update(s, hash, now, |e| {
            let n = e.map_or(0, |e| e.a) + 1;
            (
                Some(Entry {
                    hash,
                    a: n,
                    b: 0,
                    expires_ms: now + ttl,
                }),
                n,
            )
        })
        .unwrap()
        .0
    }

    #[test]
    fn counts_per_key() {
        let (t, s) = (table(), FakeShared::default());
        assert_eq!(bump(&t, &s, "a", 0, 100), 1);
        assert_eq!(bump(&t, &s, "a", 1, 100), 2);
        assert_eq!(bump(&t, &s, "b", 1, 100), 1);
        assert_eq!(t.read(&s, key_hash("a"), 2).unwrap().a, 2);
        assert!(
            t.read(&s, key_hash("a"), 200).is_none(),
            "expired entries read as absent"
        );
        assert_eq!(bump(&t, &s, "a", 200, 100), 1, "and start afresh");
    }

    #[test]
    fn memory_is_bounded_and_idle_counters_are_reclaimed() {
        let (t, s) = (table(), FakeShared::default());
        let mut evicted = 0;
        for i in 0..5_000 {
            let hash = key_hash(&format!("client-{i}"));
            let (_, churn) = t
                .update(&s, hash, i, |_| {
                    (
                        Some(Entry {
                            hash,
                            a: 1,
                            b: 0,
                            expires_ms: i + 1_000,
                        }),
                        (),
                    )
                })
                .unwrap();
            evicted += churn.evicted;
        }
        let live = t.live_entries(&s, 5_000);
        assert!(live <= 64 * 4, "{live} entries exceed the table bound");
        assert!(evicted > 0, "a full table evicts rather than grows");
        // Shared data holds at most one key per slot (plus the sweep cursor).
        assert!(s.0.borrow().len() <= 64);
        // Once idle, everything is reclaimed by the sweep.
        let mut removed = 0;
        while let Some(first) = t.claim_sweep(&s, 16) {
            removed += t.sweep(&s, first, 16, 10_000);
            if first + 16 >= 64 {
                break;
            }
        }
        assert!(removed > 0);
        assert_eq!(t.live_entries(&s, 10_000), 0);
        assert!(
            s.0.borrow().values().filter(|(v, _)| v.len() > 8).count() == 0,
            "slots are empty"
        );
    }

    #[test]
    fn racing_writers_retry_instead_of_losing_updates() {
        // A shared store whose first CAS always loses, as if another worker won.
        struct Racy {
            inner: FakeShared,
            lost: std::cell::Cell<u32>,
        }
        impl SharedData for Racy {
            fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
                self.inner.get(key)
            }
            fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
                if self.lost.get() < 3 {
                    self.lost.set(self.lost.get() + 1);
                    let hash = key_hash("other");
                    let bytes = encode(&[Entry {
                        hash,
                        a: 9,
                        b: 0,
                        expires_ms: 1_000,
                    }]);
                    let current = self.inner.get(key).map(|(_, c)| c);
                    self.inner.set(key, &bytes, current);
                    return false;
                }
                self.inner.set(key, value, cas)
            }
        }
        let s = Racy {
            inner: FakeShared::default(),
            lost: std::cell::Cell::new(0),
        };
        let t = SlotTable {
            slots: 1,
            entries_per_slot: 4,
        };
        let n = bump(&t, &s, "mine", 0, 1_000);
        assert_eq!(n, 1);
        assert_eq!(
            t.read(&s, key_hash("other"), 1).unwrap().a,
            9,
            "the winner's write survived"
        );
        assert_eq!(t.read(&s, key_hash("mine"), 1).unwrap().a, 1);
    }
}
