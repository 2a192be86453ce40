//! Remote JWKS: one copy per Envoy process, fetched by one worker at a time.
//!
//! Every worker VM has its own root context and its own `on_tick`, but proxy-wasm
//! shared data is process-wide. So the fetched document lives in shared data,
//! and a small schedule entry, updated with compare-and-swap, acts as a lease:
//! a worker fetches only if it wins the CAS. Workers pick up new documents on
//! their next tick (or at once, on an unknown `kid`), re-parsing only when the
//! entry's CAS version changed. A failed fetch never replaces good keys.
//!
//! Shared-data layout, per key source (`RemoteJwks::shared_key`):
//! * `<base>/doc`: `<fetched_at_ms>\n<JWKS JSON>`: the last good document.
//! * `<base>/schedule`: `<next_fetch_ms> <last_attempt_ms>`.

use crate::alg::Algorithm;
use crate::config::RemoteJwks;
use crate::jwk::{parse_jwks, KeySet, KeySource, Strictness};
use std::sync::Arc;

/// Process-wide key/value storage with CAS (proxy-wasm shared data).
pub trait SharedData {
    /// The value and its CAS version, if the key exists.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Stores `value` if the entry is still at version `cas` (`None`: unconditionally).
    /// False when another writer got there first.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// Why a worker wants to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchTrigger {
    /// Start-up, cache expiry, or retry after a failure.
    Scheduled,
    /// A token named a `kid` the current keys lack.
    UnknownKid,
}

/// One worker's view of one remote key source.
pub struct RemoteKeys {
    pub source: RemoteJwks,
    algorithms: Vec<Algorithm>,
    keys: Option<Arc<KeySet>>,
    loaded_version: Option<u32>,
    fetched_at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Schedule {
    next_fetch_ms: u64,
    last_attempt_ms: u64,
}

impl Schedule {
    fn parse(bytes: &[u8]) -> Option<Schedule> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (next, last) = text.split_once(' ')?;
        Some(Schedule {
            next_fetch_ms: next.parse().ok()?,
            last_attempt_ms: last.parse().ok()?,
        })
    }

    fn encode(&self) -> String {
        format!("{} {}", self.next_fetch_ms, self.last_attempt_ms)
    }
}

impl RemoteKeys {
    pub fn new(source: RemoteJwks, algorithms: Vec<Algorithm>) -> RemoteKeys {
        RemoteKeys {
            source,
            algorithms,
            keys: None,
            loaded_version: None,
            fetched_at_ms: 0,
        }
    }

    fn doc_key(&self) -> String {
        format!("{}/doc", self.source.shared_key())
    }

    fn schedule_key(&self) -> String {
        format!("{}/schedule", self.source.shared_key())
    }

    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.keys.clone()
    }

    /// Whether an unknown `kid` may cause a refetch, judged on this worker's
    /// copy (cheap); `try_claim_fetch` makes the binding, process-wide decision.
    pub fn may_refetch(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.fetched_at_ms) >= self.source.unknown_kid_refetch_ms
    }

    /// Loads the shared document if it changed since this worker last parsed it.
    /// Returns true when the keys changed.
    pub fn sync(&mut self, shared: &dyn SharedData) -> bool {
        let Some((bytes, version)) = shared.get(&self.doc_key()) else {
            return false;
        };
        if self.loaded_version == Some(version) {
            return false;
        }
        let Some((fetched_at, json)) = split_doc(&bytes) else {
            return false;
        };
        match parse_jwks(
            json,
            KeySource::Remote,
            &self.algorithms,
            Strictness::Lenient,
        ) {
            Ok((set, _)) => {
                self.keys = Some(Arc::new(set));
                self.loaded_version = Some(version);
                self.fetched_at_ms = fetched_at;
                true
            }
            Err(_) => false,
        }
    }

    /// Tries to become the one worker that fetches now. On success the
    /// schedule is pushed out by the fetch timeout, so nobody else starts one.
    pub fn try_claim_fetch(
        &self,
        shared: &dyn SharedData,
        now_ms: u64,
        trigger: FetchTrigger,
    ) -> bool {
        let key = self.schedule_key();
        let (current, cas) = match shared.get(&key) {
            Some((bytes, cas)) => (Schedule::parse(&bytes), Some(cas)),
            None => (None, None),
        };
        let due = match (trigger, current) {
            (_, None) => true,
            (FetchTrigger::Scheduled, Some(s)) => now_ms >= s.next_fetch_ms,
            (FetchTrigger::UnknownKid, Some(s)) => {
                self.may_refetch(now_ms)
                    && now_ms.saturating_sub(s.last_attempt_ms)
                        >= self.source.unknown_kid_refetch_ms
            }
        };
        if !due {
            return false;
        }
        let claimed = Schedule {
            next_fetch_ms: now_ms + self.source.timeout_ms + 1_000,
            last_attempt_ms: now_ms,
        };
        shared.set(&key, claimed.encode().as_bytes(), cas)
    }

    /// Records the outcome of a fetch this worker made. A usable document is
    /// published for every worker; anything else keeps the last good keys and
    /// schedules a retry. Returns the error text of a failed fetch.
    pub fn complete_fetch(
        &mut self,
        shared: &dyn SharedData,
        now_ms: u64,
        result: Result<&[u8], String>,
    ) -> Result<usize, String> {
        let parsed = result.and_then(|body| {
            parse_jwks(
                body,
                KeySource::Remote,
                &self.algorithms,
                Strictness::Lenient,
            )
            .map(|(set, _)| (set, body))
            .map_err(|e| format!("unusable JWKS: {e}"))
        });
        let (next_fetch_ms, outcome) = match parsed {
            Ok((set, body)) => {
                let count = set.keys.len();
                let mut doc = format!("{now_ms}\n").into_bytes();
                doc.extend_from_slice(body);
                shared.set(&self.doc_key(), &doc, None);
                self.keys = Some(Arc::new(set));
                self.fetched_at_ms = now_ms;
                // The version is re-read so the next sync does not parse again.
                self.loaded_version = shared.get(&self.doc_key()).map(|(_, v)| v);
                (now_ms + self.source.cache_duration_ms, Ok(count))
            }
            Err(e) => (now_ms + self.source.failed_refetch_ms, Err(e)),
        };
        let schedule = Schedule {
            next_fetch_ms,
            last_attempt_ms: now_ms,
        };
        shared.set(&self.schedule_key(), schedule.encode().as_bytes(), None);
        outcome
    }
}

fn split_doc(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let nl = bytes.iter().position(|b| *b == b'\n')?;
    let fetched_at = std::str::from_utf8(&bytes[..nl]).ok()?.parse().ok()?;
    Some((fetched_at, &bytes[nl + 1..]))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// In-memory shared data with Envoy's CAS semantics.
    #[derive(Default)]
    pub struct FakeShared(RefCell<HashMap<String, (Vec<u8>, u32)>>);

    impl SharedData for FakeShared {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.0.borrow().get(key).cloned()
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
            let mut map = self.0.borrow_mut();
            let current = map.get(key).map(|(_, v)| *v);
            if cas.is_some() && cas != current {
                return false;
            }
            let next = current.unwrap_or(0) + 1;
            map.insert(key.to_string(), (value.to_vec(), next));
            true
        }
    }

    fn source() -> RemoteJwks {
        RemoteJwks {
            cluster: "idp".into(),
            authority: "idp".into(),
            path: "/jwks".into(),
            timeout_ms: 1_000,
            cache_duration_ms: 300_000,
            failed_refetch_ms: 2_000,
            unknown_kid_refetch_ms: 10_000,
        }
    }

    fn jwks(kid: &str) -> Vec<u8> {
        use jwt_simple::prelude::*;
        let kp = ES256KeyPair::generate();
        serde_json::to_vec(&serde_json::json!({"keys": [crate::jwk::tests::es256_jwk(&kp, kid)]}))
            .unwrap()
    }

    fn worker() -> RemoteKeys {
        RemoteKeys::new(source(), Algorithm::ALL.to_vec())
    }

    #[test]
    fn only_one_worker_wins_the_fetch() {
        let shared = FakeShared::default();
        let (a, b) = (worker(), worker());
        assert!(a.try_claim_fetch(&shared, 1_000, FetchTrigger::Scheduled));
        assert!(!b.try_claim_fetch(&shared, 1_001, FetchTrigger::Scheduled));
        // The claim expires after the fetch timeout, so a lost response cannot wedge fetching.
        assert!(b.try_claim_fetch(&shared, 1_000 + 2_001, FetchTrigger::Scheduled));
    }

    #[test]
    fn a_fetched_document_reaches_every_worker_once() {
        let shared = FakeShared::default();
        let (mut a, mut b) = (worker(), worker());
        assert!(a.try_claim_fetch(&shared, 0, FetchTrigger::Scheduled));
        assert_eq!(a.complete_fetch(&shared, 5, Ok(&jwks("k1"))), Ok(1));
        assert!(a.keys().unwrap().has_kid("k1"));
        assert!(!a.sync(&shared), "the fetching worker already has it");
        assert!(b.keys().is_none());
        assert!(b.sync(&shared));
        assert!(b.keys().unwrap().has_kid("k1"));
        assert!(!b.sync(&shared), "unchanged documents are not re-parsed");
        // Next scheduled fetch only after the cache duration.
        assert!(!b.try_claim_fetch(&shared, 299_000, FetchTrigger::Scheduled));
        assert!(b.try_claim_fetch(&shared, 300_005, FetchTrigger::Scheduled));
    }

    #[test]
    fn failures_keep_the_last_good_keys_and_back_off() {
        let shared = FakeShared::default();
        let mut a = worker();
        a.try_claim_fetch(&shared, 0, FetchTrigger::Scheduled);
        a.complete_fetch(&shared, 0, Ok(&jwks("k1"))).unwrap();
        assert!(a.try_claim_fetch(&shared, 300_000, FetchTrigger::Scheduled));
        assert!(a
            .complete_fetch(&shared, 300_000, Err("503".into()))
            .is_err());
        assert!(a
            .complete_fetch(&shared, 300_000, Ok(b"{\"keys\":[]}"))
            .is_err());
        assert!(a.complete_fetch(&shared, 300_000, Ok(b"<html>")).is_err());
        assert!(a.keys().unwrap().has_kid("k1"));
        let mut b = worker();
        assert!(b.sync(&shared));
        assert!(
            b.keys().unwrap().has_kid("k1"),
            "a failed fetch never replaces good keys"
        );
        assert!(!a.try_claim_fetch(&shared, 301_000, FetchTrigger::Scheduled));
        assert!(a.try_claim_fetch(&shared, 302_000, FetchTrigger::Scheduled));
    }

    #[test]
    fn unknown_kid_refetches_are_rate_limited() {
        let shared = FakeShared::default();
        let mut a = worker();
        a.try_claim_fetch(&shared, 0, FetchTrigger::Scheduled);
        a.complete_fetch(&shared, 0, Ok(&jwks("k1"))).unwrap();
        assert!(!a.may_refetch(9_999));
        assert!(!a.try_claim_fetch(&shared, 9_999, FetchTrigger::UnknownKid));
        assert!(a.try_claim_fetch(&shared, 10_000, FetchTrigger::UnknownKid));
        // A failed refetch does not reset fetched_at, but the attempt time still throttles.
        a.complete_fetch(&shared, 10_000, Err("down".into()))
            .unwrap_err();
        assert!(!a.try_claim_fetch(&shared, 15_000, FetchTrigger::UnknownKid));
        assert!(a.try_claim_fetch(&shared, 20_000, FetchTrigger::UnknownKid));
    }
}
