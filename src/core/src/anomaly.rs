//! Anomaly signals: heuristics, not proofs, that flag abnormal use.
//!
//! * **shared credential**: one credential (token or API key, named by its
//!   digest) used from more than `max_addresses` client addresses within
//!   `window`. A stolen token replayed from elsewhere looks like this; so does a
//!   legitimate client behind a pool of NAT addresses, hence a threshold.
//! * **failure spike**: more than `max_failures` refusals of one identified
//!   client or consumer (scope or claim refusals, revocations, rate limits)
//!   within `window`: a misbehaving or probing client.
//!
//! Each raises at most one signal per `window` per credential or client, which
//! the pipeline counts and puts in the request's audit event; with `suspend`
//! configured, the credential is then refused (`credential_suspended`) for that
//! long, on every worker.
//!
//! Counting uses the rate-limit table in shared data (bounded the same way, see
//! `ratelimit::table`), so every worker of an Envoy contributes to one count. A
//! worker remembers the (credential, address) pair it last recorded, so the
//! common case, a credential used again from the same address, costs no shared
//! data access. Suspensions live in one small shared list that workers read on
//! tick (and the worker that suspends knows at once).

use crate::host::SharedData;
use crate::identity::TokenDigest;
use crate::ratelimit::gcra::Rate;
use crate::ratelimit::table::{key_hash, Churn, Entry, SlotTable};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// A heuristic signal. `as_str` values are a public contract (stats, events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    SharedCredential,
    FailureSpike,
}

impl Signal {
    pub const ALL: [Signal; 2] = [Signal::SharedCredential, Signal::FailureSpike];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::SharedCredential => "shared_credential",
            Signal::FailureSpike => "failure_spike",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedCredential {
    pub max_addresses: u64,
    pub window_ms: u64,
    pub suspend_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureSpike {
    pub max_failures: u64,
    pub window_ms: u64,
    pub suspend_ms: Option<u64>,
}

/// The configured signals (`anomalies`); both off by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Anomalies {
    pub shared_credential: Option<SharedCredential>,
    pub failure_spike: Option<FailureSpike>,
}

impl Anomalies {
    pub fn uses_client_ip(&self) -> bool {
        self.shared_credential.is_some()
    }

    pub fn any(&self) -> bool {
        self.shared_credential.is_some() || self.failure_spike.is_some()
    }

    fn suspends(&self) -> bool {
        self.shared_credential
            .is_some_and(|s| s.suspend_ms.is_some())
            || self.failure_spike.is_some_and(|s| s.suspend_ms.is_some())
    }
}

/// Pairs a worker remembers; past this, it forgets them all (they are only a
/// shortcut: forgetting costs one shared-data update per pair seen again).
const SEEN_MAX: usize = 4096;
/// Suspended credentials kept; past this, the one that ends first is dropped.
const SUSPENDED_MAX: usize = 1024;
const SUSPENDED_KEY: &str = "tollgate/anomaly/suspended";

fn credential_key(credential: &TokenDigest) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(credential.0.get(..8).unwrap_or(&[0; 8]));
    u64::from_le_bytes(head)
}

/// Where signals are counted: the rate-limit table in shared data.
#[derive(Clone, Copy)]
pub struct Store<'a> {
    pub table: &'a SlotTable,
    pub shared: &'a dyn SharedData,
}

/// One worker's part of the anomaly signals.
#[derive(Default)]
pub struct Watch {
    /// Credential → (address hash, until when the pair needs no new record).
    seen: RefCell<HashMap<u64, (u64, u64)>>,
    /// Suspended credentials and until when, as last read from shared data.
    suspended: RefCell<Vec<(u64, u64)>>,
    suspended_version: Cell<Option<u32>>,
}

impl Watch {
    /// Whether this credential is suspended now.
    pub fn is_suspended(&self, credential: &TokenDigest, now_ms: u64) -> bool {
        let key = credential_key(credential);
        self.suspended
            .borrow()
            .iter()
            .any(|(k, until)| *k == key && *until > now_ms)
    }

    /// Picks up suspensions other workers made (on tick).
    pub fn sync(&self, anomalies: &Anomalies, shared: &dyn SharedData) {
        if !anomalies.suspends() {
            return;
        }
        let Some((bytes, version)) = shared.get(SUSPENDED_KEY) else {
            return;
        };
        if self.suspended_version.get() == Some(version) {
            return;
        }
        *self.suspended.borrow_mut() = decode_suspended(&bytes);
        self.suspended_version.set(Some(version));
    }

    /// Suspends a credential until `until_ms`, for every worker.
    pub fn suspend(
        &self,
        shared: &dyn SharedData,
        credential: &TokenDigest,
        until_ms: u64,
        now_ms: u64,
    ) {
        let key = credential_key(credential);
        for _ in 0..16 {
            let (mut list, cas) = match shared.get(SUSPENDED_KEY) {
                Some((bytes, cas)) => (decode_suspended(&bytes), Some(cas)),
                None => (Vec::new(), None),
            };
            list.retain(|(k, until)| *until > now_ms && *k != key);
            if list.len() >= SUSPENDED_MAX {
                if let Some(i) = (0..list.len()).min_by_key(|&i| list.get(i).map(|e| e.1)) {
                    list.swap_remove(i);
                }
            }
            list.push((key, until_ms));
            if shared.set(SUSPENDED_KEY, &encode_suspended(&list), cas) {
                self.suspended_version.set(None);
                *self.suspended.borrow_mut() = list;
                return;
            }
        }
    }

    /// Records a use of `credential` from `address`. True when this use raises
    /// the shared-credential signal.
    pub fn observe_use(
        &self,
        config: &SharedCredential,
        store: Store<'_>,
        credential: &TokenDigest,
        address: &str,
        now_ms: u64,
        churn: &mut Churn,
    ) -> bool {
        let cred = credential_key(credential);
        let addr = key_hash(address);
        if let Some(&(seen, until)) = self.seen.borrow().get(&cred) {
            if seen == addr && now_ms < until {
                return false;
            }
        }
        let pair = key_hash(&format!("sc\0{cred:016x}\0{address}"));
        let recorded = store.table.update(store.shared, pair, now_ms, |entry| {
            let next = Entry {
                hash: pair,
                a: 0,
                b: 0,
                expires_ms: now_ms.saturating_add(config.window_ms),
            };
            (Some(next), entry.is_none())
        });
        let new_address = match recorded {
            Ok((new, c)) => {
                add(churn, c);
                new
            }
            Err(_) => false,
        };
        {
            let mut seen = self.seen.borrow_mut();
            if seen.len() >= SEEN_MAX {
                seen.clear();
            }
            seen.insert(cred, (addr, now_ms.saturating_add(config.window_ms / 2)));
        }
        if !new_address {
            return false;
        }
        let rate = Rate {
            limit: config.max_addresses,
            window_ms: config.window_ms,
            burst: config.max_addresses,
        };
        count_event(
            store,
            key_hash(&format!("sc\0{cred:016x}")),
            rate,
            now_ms,
            churn,
        )
    }

    /// Records a refusal of `principal` (a client or consumer). True when it
    /// raises the failure-spike signal.
    pub fn observe_failure(
        &self,
        config: &FailureSpike,
        store: Store<'_>,
        principal: &str,
        now_ms: u64,
        churn: &mut Churn,
    ) -> bool {
        let rate = Rate {
            limit: config.max_failures,
            window_ms: config.window_ms,
            burst: config.max_failures,
        };
        count_event(
            store,
            key_hash(&format!("fs\0{principal}")),
            rate,
            now_ms,
            churn,
        )
    }
}

fn add(churn: &mut Churn, c: Churn) {
    churn.entries_delta += c.entries_delta;
    churn.evicted += c.evicted;
}

/// Counts one event against `rate` (a GCRA in the entry's `a`). Past the rate,
/// raises a signal, at most once per window (the entry's `b` holds until when
/// the last one stands).
fn count_event(store: Store<'_>, hash: u64, rate: Rate, now_ms: u64, churn: &mut Churn) -> bool {
    let result = store.table.update(store.shared, hash, now_ms, |entry| {
        let verdict = rate.check(entry.map(|e| e.a), now_ms);
        let signalled_until = entry.map_or(0, |e| e.b);
        let raise = !verdict.allowed && signalled_until <= now_ms;
        let b = if raise {
            now_ms.saturating_add(rate.window_ms)
        } else {
            signalled_until
        };
        let next = Entry {
            hash,
            a: verdict.tat_ms,
            b,
            expires_ms: verdict.tat_ms.max(b).max(now_ms + 1),
        };
        (Some(next), raise)
    });
    match result {
        Ok((raised, c)) => {
            add(churn, c);
            raised
        }
        Err(_) => false,
    }
}

fn decode_suspended(bytes: &[u8]) -> Vec<(u64, u64)> {
    bytes
        .chunks_exact(16)
        .map(|c| {
            let word = |i: usize| {
                let mut w = [0u8; 8];
                if let Some(b) = c.get(i..i + 8) {
                    w.copy_from_slice(b);
                }
                u64::from_le_bytes(w)
            };
            (word(0), word(8))
        })
        .collect()
}

fn encode_suspended(list: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len() * 16);
    for (k, until) in list {
        out.extend_from_slice(&k.to_le_bytes());
        out.extend_from_slice(&until.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fakes::FakeShared;

    fn table() -> SlotTable {
        SlotTable {
            slots: 64,
            entries_per_slot: 16,
        }
    }

    const SHARED: SharedCredential = SharedCredential {
        max_addresses: 3,
        window_ms: 60_000,
        suspend_ms: Some(30_000),
    };

    #[test]
    fn a_credential_from_more_addresses_than_allowed_raises_one_signal_per_window() {
        let (t, s) = (table(), FakeShared::default());
        let (a, b) = (Watch::default(), Watch::default());
        let token = TokenDigest::of("token");
        let mut churn = Churn::default();
        let mut raised = Vec::new();
        // The same address again and again, on two workers: one address.
        for i in 0..10 {
            let w = if i % 2 == 0 { &a } else { &b };
            raised.push(w.observe_use(
                &SHARED,
                Store {
                    table: &t,
                    shared: &s,
                },
                &token,
                "10.0.0.1",
                i,
                &mut churn,
            ));
        }
        assert!(raised.iter().all(|r| !r));
        // Two more addresses are within the threshold of three; the fourth is not.
        for (i, ip) in ["10.0.0.2", "10.0.0.3"].iter().enumerate() {
            assert!(!a.observe_use(
                &SHARED,
                Store {
                    table: &t,
                    shared: &s
                },
                &token,
                ip,
                100 + i as u64,
                &mut churn
            ));
        }
        assert!(b.observe_use(
            &SHARED,
            Store {
                table: &t,
                shared: &s
            },
            &token,
            "10.0.0.4",
            200,
            &mut churn
        ));
        // Once per window, however many more addresses.
        assert!(!a.observe_use(
            &SHARED,
            Store {
                table: &t,
                shared: &s
            },
            &token,
            "10.0.0.5",
            300,
            &mut churn
        ));
        // Another credential is counted on its own.
        let other = TokenDigest::of("other");
        for ip in ["10.0.0.2", "10.0.0.3", "10.0.0.4"] {
            assert!(!a.observe_use(
                &SHARED,
                Store {
                    table: &t,
                    shared: &s
                },
                &other,
                ip,
                400,
                &mut churn
            ));
        }
        // After the window, the signal can be raised again.
        let later = 200 + 60_000;
        let mut again = false;
        for i in 0..8 {
            again |= a.observe_use(
                &SHARED,
                Store {
                    table: &t,
                    shared: &s,
                },
                &token,
                &format!("10.1.0.{i}"),
                later + i,
                &mut churn,
            );
        }
        assert!(again);
        assert!(t.live_entries(&s, 400) <= 64 * 16);
    }

    #[test]
    fn a_failure_spike_is_one_signal_per_window_per_principal() {
        let (t, s, w) = (table(), FakeShared::default(), Watch::default());
        let spike = FailureSpike {
            max_failures: 5,
            window_ms: 60_000,
            suspend_ms: None,
        };
        let mut churn = Churn::default();
        let raised: Vec<bool> = (0..8)
            .map(|i| {
                w.observe_failure(
                    &spike,
                    Store {
                        table: &t,
                        shared: &s,
                    },
                    "partner-a",
                    i,
                    &mut churn,
                )
            })
            .collect();
        assert_eq!(
            raised,
            [false, false, false, false, false, true, false, false]
        );
        assert!(!w.observe_failure(
            &spike,
            Store {
                table: &t,
                shared: &s
            },
            "partner-b",
            10,
            &mut churn
        ));
    }

    #[test]
    fn suspensions_reach_every_worker_on_sync_and_end() {
        let s = FakeShared::default();
        let (a, b) = (Watch::default(), Watch::default());
        let config = Anomalies {
            shared_credential: Some(SHARED),
            failure_spike: None,
        };
        let token = TokenDigest::of("token");
        a.suspend(&s, &token, 30_000, 0);
        assert!(
            a.is_suspended(&token, 1),
            "the suspending worker knows at once"
        );
        assert!(!b.is_suspended(&token, 1));
        b.sync(&config, &s);
        assert!(b.is_suspended(&token, 1), "the others on their next tick");
        assert!(!b.is_suspended(&TokenDigest::of("other"), 1));
        assert!(!b.is_suspended(&token, 30_000), "until it ends");
    }
}
