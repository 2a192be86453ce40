//! Documents fetched through an Envoy cluster (JWKS, revocation lists): one
//! copy per Envoy process, fetched by one worker at a time.
//!
//! Every worker VM has its own root context and its own `on_tick`, but proxy-wasm
//! shared data is process-wide. So the fetched document lives in shared data,
//! and a small schedule entry, updated with compare-and-swap, acts as a lease:
//! a worker fetches only if it wins the CAS. Workers pick up new documents on
//! their next tick (or at once, when a request needs it), re-parsing only when
//! the entry's CAS version changed. A failed fetch never replaces a good document.
//!
//! Shared-data layout, per endpoint (`<base>` = `tollgate/<kind>/<cluster>/<authority><path>`):
//! * `<base>/doc`: `<fetched_at_ms>\n<etag>\n<body>`: the last good document.
//! * `<base>/schedule`: `<next_fetch_ms> <last_attempt_ms> <on_demand_tat_ms> <in_flight>
//!   <last_on_demand_ms>`.
//! * `<base>/failures`: `<last_reported_ms> <failures_since>` while fetches
//!   keep failing, so that the whole Envoy reports a failing document once a
//!   minute, not every retry on every worker.
//!
//! On-demand fetches (a token names a key the worker does not have) are
//! rate-limited process-wide: at least [`ON_DEMAND_MIN_GAP_MS`] apart (but not
//! from a scheduled fetch, which cannot have seen a key published after it), and at
//! most [`ON_DEMAND_BURST`] per `on_demand_ms` (a GCRA over the schedule entry).
//! So a key rotation right after a scheduled fetch is fetched at once, and a
//! flood of random `kid`s costs a bounded number of fetches.

use crate::host::SharedData;
use std::sync::Arc;

/// A document whose fetches keep failing is reported at most this often.
pub const FAILURE_REPORT_INTERVAL_MS: u64 = 60_000;

/// Least time between two fetch attempts that requests asked for.
pub const ON_DEMAND_MIN_GAP_MS: u64 = 1_000;
/// On-demand fetches allowed at once within one `on_demand_ms`.
pub const ON_DEMAND_BURST: u64 = 3;

/// Where a document is fetched from. Durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
}

/// When to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchPolicy {
    /// After a successful fetch.
    pub refresh_ms: u64,
    /// After a failed fetch.
    pub retry_ms: u64,
    /// Minimum spacing of fetches a request asks for (unknown `kid`).
    pub on_demand_ms: u64,
}

impl FetchPolicy {
    /// The spacing of on-demand fetches once a burst is spent.
    pub fn on_demand_spacing_ms(&self) -> u64 {
        self.on_demand_ms / ON_DEMAND_BURST
    }
}

/// Why a worker wants to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchTrigger {
    /// Start-up, refresh, or retry after a failure.
    Scheduled,
    /// A request needs something the current document lacks.
    OnDemand,
}

/// What came back from the endpoint.
#[derive(Debug)]
pub enum FetchResult<'a> {
    Body {
        body: &'a [u8],
        etag: Option<&'a str>,
    },
    /// 304: the document did not change.
    NotModified,
    Failed(String),
}

/// The outcome of a completed fetch, for logs and stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    Loaded,
    Unchanged,
    Failed(String),
}

/// Parses a document body; gets the time (ms since the epoch) for documents that
/// drop expired entries.
type Parser<T> = Box<dyn Fn(&[u8], u64) -> Result<T, String>>;

/// One worker's view of one remote document.
pub struct RemoteDoc<T> {
    pub endpoint: Endpoint,
    pub policy: FetchPolicy,
    base: String,
    parse: Parser<T>,
    value: Option<Arc<T>>,
    loaded_version: Option<u32>,
    fetched_at_ms: u64,
    etag: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Schedule {
    next_fetch_ms: u64,
    last_attempt_ms: u64,
    /// GCRA arrival time of on-demand fetches.
    on_demand_tat_ms: u64,
    /// A worker claimed a fetch and has not recorded its outcome yet.
    in_flight: bool,
    last_on_demand_ms: u64,
}

impl Schedule {
    fn parse(bytes: &[u8]) -> Option<Schedule> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut numbers = text.split(' ').map(str::parse::<u64>);
        Some(Schedule {
            next_fetch_ms: numbers.next()?.ok()?,
            last_attempt_ms: numbers.next()?.ok()?,
            on_demand_tat_ms: numbers.next().and_then(Result::ok).unwrap_or(0),
            in_flight: numbers.next().and_then(Result::ok) == Some(1),
            last_on_demand_ms: numbers.next().and_then(Result::ok).unwrap_or(0),
        })
    }

    fn encode(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.next_fetch_ms,
            self.last_attempt_ms,
            self.on_demand_tat_ms,
            u8::from(self.in_flight),
            self.last_on_demand_ms
        )
    }
}

struct StoredDoc<'a> {
    fetched_at_ms: u64,
    etag: Option<&'a str>,
    body: &'a [u8],
}

impl<'a> StoredDoc<'a> {
    fn decode(bytes: &'a [u8]) -> Option<StoredDoc<'a>> {
        let mut parts = bytes.splitn(3, |b| *b == b'\n');
        let fetched_at_ms = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let etag = std::str::from_utf8(parts.next()?).ok()?;
        Some(StoredDoc {
            fetched_at_ms,
            etag: (!etag.is_empty()).then_some(etag),
            body: parts.next()?,
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = format!("{}\n{}\n", self.fetched_at_ms, self.etag.unwrap_or("")).into_bytes();
        out.extend_from_slice(self.body);
        out
    }
}

impl<T> RemoteDoc<T> {
    /// `kind` separates document types in shared data (`jwks`, `revocations`).
    pub fn new(
        kind: &str,
        endpoint: Endpoint,
        policy: FetchPolicy,
        parse: impl Fn(&[u8], u64) -> Result<T, String> + 'static,
    ) -> RemoteDoc<T> {
        let base = format!(
            "tollgate/{kind}/{}/{}{}",
            endpoint.cluster, endpoint.authority, endpoint.path
        );
        RemoteDoc {
            endpoint,
            policy,
            base,
            parse: Box::new(parse),
            value: None,
            loaded_version: None,
            fetched_at_ms: 0,
            etag: None,
        }
    }

    fn doc_key(&self) -> String {
        format!("{}/doc", self.base)
    }

    fn schedule_key(&self) -> String {
        format!("{}/schedule", self.base)
    }

    fn failures_key(&self) -> String {
        format!("{}/failures", self.base)
    }

    /// Counts a failed fetch. `Some(n)`: report it now, with the `n` failures
    /// (this one included) since the last report; `None`: stay quiet.
    pub fn failure_to_report(&self, shared: &dyn SharedData, now_ms: u64) -> Option<u64> {
        let key = self.failures_key();
        for _ in 0..8 {
            let (reported_ms, count, cas) = match shared.get(&key) {
                Some((bytes, cas)) => {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    let mut n = text.split(' ').map(|n| n.parse::<u64>().unwrap_or(0));
                    (n.next().unwrap_or(0), n.next().unwrap_or(0), Some(cas))
                }
                None => (0, 0, None),
            };
            let due = reported_ms == 0
                || now_ms.saturating_sub(reported_ms) >= FAILURE_REPORT_INTERVAL_MS;
            let next = if due {
                format!("{} 0", now_ms.max(1))
            } else {
                format!("{reported_ms} {}", count + 1)
            };
            if shared.set(&key, next.as_bytes(), cas) {
                return due.then_some(count + 1);
            }
        }
        None
    }

    /// A fetch succeeded: the next failure starts a new streak (reported at once).
    pub fn failures_over(&self, shared: &dyn SharedData) {
        let key = self.failures_key();
        if shared.get(&key).is_some_and(|(bytes, _)| !bytes.is_empty()) {
            shared.set(&key, b"", None);
        }
    }

    pub fn value(&self) -> Option<Arc<T>> {
        self.value.clone()
    }

    /// The held document, borrowed (no reference count touched).
    pub fn held(&self) -> Option<&T> {
        self.value.as_deref()
    }

    /// When the held document was fetched (ms since the epoch), if one is held.
    pub fn fetched_at(&self) -> Option<u64> {
        self.value.as_ref().map(|_| self.fetched_at_ms)
    }

    /// The ETag of the held document, for `If-None-Match`.
    pub fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }

    /// Loads the shared document if it changed since this worker last parsed it.
    /// Returns true when the value changed.
    pub fn sync(&mut self, shared: &dyn SharedData, now_ms: u64) -> bool {
        let Some((bytes, version)) = shared.get(&self.doc_key()) else {
            return false;
        };
        if self.loaded_version == Some(version) {
            return false;
        }
        let Some(doc) = StoredDoc::decode(&bytes) else {
            return false;
        };
        match (self.parse)(doc.body, now_ms) {
            Ok(value) => {
                self.value = Some(Arc::new(value));
                self.loaded_version = Some(version);
                self.fetched_at_ms = doc.fetched_at_ms;
                self.etag = doc.etag.map(str::to_string);
                true
            }
            Err(_) => false,
        }
    }

    /// Whether some worker of this Envoy is fetching the document now (it
    /// claimed a fetch less than the fetch timeout ago and has not finished).
    pub fn fetch_underway(&self, shared: &dyn SharedData, now_ms: u64) -> bool {
        shared
            .get(&self.schedule_key())
            .and_then(|(bytes, _)| Schedule::parse(&bytes))
            .is_some_and(|s| {
                s.in_flight && now_ms.saturating_sub(s.last_attempt_ms) <= self.endpoint.timeout_ms
            })
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
        let spacing = self.policy.on_demand_spacing_ms();
        let tat = current.map_or(0, |s| s.on_demand_tat_ms);
        let due = match (trigger, current) {
            (_, None) => true,
            (FetchTrigger::Scheduled, Some(s)) => now_ms >= s.next_fetch_ms,
            (FetchTrigger::OnDemand, Some(s)) => {
                !(s.in_flight
                    && now_ms.saturating_sub(s.last_attempt_ms) <= self.endpoint.timeout_ms)
                    && now_ms.saturating_sub(s.last_on_demand_ms) >= ON_DEMAND_MIN_GAP_MS
                    && tat.saturating_sub(now_ms) <= spacing * (ON_DEMAND_BURST - 1)
            }
        };
        if !due {
            return false;
        }
        let last_on_demand = current.map_or(0, |s| s.last_on_demand_ms);
        let (on_demand_tat_ms, last_on_demand_ms) = match trigger {
            FetchTrigger::OnDemand => (tat.max(now_ms).saturating_add(spacing), now_ms),
            FetchTrigger::Scheduled => (tat, last_on_demand),
        };
        let claimed = Schedule {
            next_fetch_ms: now_ms + self.endpoint.timeout_ms + 1_000,
            last_attempt_ms: now_ms,
            on_demand_tat_ms,
            in_flight: true,
            last_on_demand_ms,
        };
        shared.set(&key, claimed.encode().as_bytes(), cas)
    }

    /// Records the outcome of a fetch this worker made. A usable document is
    /// published for every worker; anything else keeps the last good one and
    /// schedules a retry.
    pub fn complete_fetch(
        &mut self,
        shared: &dyn SharedData,
        now_ms: u64,
        result: FetchResult<'_>,
    ) -> Completion {
        let completion = match result {
            FetchResult::NotModified if self.value.is_some() => Completion::Unchanged,
            FetchResult::NotModified => Completion::Failed("304 without a document".into()),
            FetchResult::Failed(e) => Completion::Failed(e),
            FetchResult::Body { body, etag } => match (self.parse)(body, now_ms) {
                Ok(value) => {
                    let doc = StoredDoc {
                        fetched_at_ms: now_ms,
                        etag: etag.filter(|e| !e.contains('\n')),
                        body,
                    };
                    shared.set(&self.doc_key(), &doc.encode(), None);
                    self.value = Some(Arc::new(value));
                    self.fetched_at_ms = now_ms;
                    self.etag = doc.etag.map(str::to_string);
                    // Re-read the version so the next sync does not parse again.
                    self.loaded_version = shared.get(&self.doc_key()).map(|(_, v)| v);
                    Completion::Loaded
                }
                Err(e) => Completion::Failed(e),
            },
        };
        let next_fetch_ms = match completion {
            Completion::Failed(_) => now_ms + self.policy.retry_ms,
            _ => now_ms + self.policy.refresh_ms,
        };
        let previous = shared
            .get(&self.schedule_key())
            .and_then(|(bytes, _)| Schedule::parse(&bytes));
        let schedule = Schedule {
            next_fetch_ms,
            last_attempt_ms: now_ms,
            on_demand_tat_ms: previous.map_or(0, |s| s.on_demand_tat_ms),
            in_flight: false,
            last_on_demand_ms: previous.map_or(0, |s| s.last_on_demand_ms),
        };
        shared.set(&self.schedule_key(), schedule.encode().as_bytes(), None);
        completion
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fakes::FakeShared;

    /// A document of numbers, one per line: enough to exercise the machinery.
    fn worker() -> RemoteDoc<Vec<u32>> {
        RemoteDoc::new(
            "test",
            Endpoint {
                cluster: "idp".into(),
                authority: "idp".into(),
                path: "/doc".into(),
                timeout_ms: 1_000,
            },
            FetchPolicy {
                refresh_ms: 300_000,
                retry_ms: 2_000,
                on_demand_ms: 10_000,
            },
            |body, _now| {
                let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
                let v: Vec<u32> = text
                    .lines()
                    .map(|l| l.parse().map_err(|_| format!("bad line {l:?}")))
                    .collect::<Result<_, _>>()?;
                if v.is_empty() {
                    Err("empty".into())
                } else {
                    Ok(v)
                }
            },
        )
    }

    fn body(b: &[u8]) -> FetchResult<'_> {
        FetchResult::Body {
            body: b,
            etag: None,
        }
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
        let etagged = FetchResult::Body {
            body: b"1\n2",
            etag: Some("\"v1\""),
        };
        assert_eq!(a.complete_fetch(&shared, 5, etagged), Completion::Loaded);
        assert_eq!(*a.value().unwrap(), vec![1, 2]);
        assert!(!a.sync(&shared, 0), "the fetching worker already has it");
        assert!(b.value().is_none());
        assert!(b.sync(&shared, 0));
        assert_eq!(*b.value().unwrap(), vec![1, 2]);
        assert_eq!(b.etag(), Some("\"v1\""));
        assert!(!b.sync(&shared, 0), "unchanged documents are not re-parsed");
        // Next scheduled fetch only after the refresh interval.
        assert!(!b.try_claim_fetch(&shared, 299_000, FetchTrigger::Scheduled));
        assert!(b.try_claim_fetch(&shared, 300_005, FetchTrigger::Scheduled));
        assert_eq!(
            b.complete_fetch(&shared, 300_005, FetchResult::NotModified),
            Completion::Unchanged
        );
        assert!(!a.try_claim_fetch(&shared, 300_006, FetchTrigger::Scheduled));
    }

    #[test]
    fn failures_keep_the_last_good_document_and_back_off() {
        let shared = FakeShared::default();
        let mut a = worker();
        assert!(matches!(
            a.complete_fetch(&shared, 0, FetchResult::NotModified),
            Completion::Failed(_)
        ));
        a.complete_fetch(&shared, 0, body(b"7"));
        assert!(a.try_claim_fetch(&shared, 300_000, FetchTrigger::Scheduled));
        for bad in [
            FetchResult::Failed("503".into()),
            body(b""),
            body(b"<html>"),
        ] {
            assert!(matches!(
                a.complete_fetch(&shared, 300_000, bad),
                Completion::Failed(_)
            ));
        }
        assert_eq!(*a.value().unwrap(), vec![7]);
        let mut b = worker();
        assert!(b.sync(&shared, 0));
        assert_eq!(
            *b.value().unwrap(),
            vec![7],
            "a failed fetch never replaces a good document"
        );
        assert!(!a.try_claim_fetch(&shared, 301_000, FetchTrigger::Scheduled));
        assert!(a.try_claim_fetch(&shared, 302_000, FetchTrigger::Scheduled));
    }

    #[test]
    fn on_demand_fetches_follow_a_recent_fetch_but_stay_bounded() {
        let shared = FakeShared::default();
        let mut a = worker();
        let b = worker();
        a.try_claim_fetch(&shared, 0, FetchTrigger::Scheduled);
        a.complete_fetch(&shared, 0, body(b"1"));
        // A rotation right after a scheduled fetch is fetched at once...
        assert!(a.try_claim_fetch(&shared, 1_000, FetchTrigger::OnDemand));
        // ...once: while that fetch is underway, nobody starts another.
        assert!(!b.try_claim_fetch(&shared, 1_050, FetchTrigger::OnDemand));
        a.complete_fetch(&shared, 1_100, body(b"1\n2"));
        // ...but requests cannot make the workers fetch in a loop: at least
        // a second apart, and a burst of three per `on_demand_ms` (10 s), for
        // the whole process.
        assert!(!b.try_claim_fetch(&shared, 1_500, FetchTrigger::OnDemand));
        assert!(b.try_claim_fetch(&shared, 2_100, FetchTrigger::OnDemand));
        b.try_claim_fetch(&shared, 2_100, FetchTrigger::Scheduled);
        let mut fetched = 2;
        for t in (3_200..13_000).step_by(1_100) {
            if a.try_claim_fetch(&shared, t, FetchTrigger::OnDemand) {
                a.complete_fetch(&shared, t, FetchResult::Failed("no such kid".into()));
                fetched += 1;
            }
        }
        // The burst of 3, then one per 10 s / 3: from 1.0 s to 12.1 s, 3 + 3.
        assert_eq!(fetched, 6, "on-demand fetches from 1 s to 12.1 s");
    }

    #[test]
    fn a_failing_document_is_reported_once_a_minute_by_the_whole_envoy() {
        let shared = FakeShared::default();
        let (a, b) = (worker(), worker());
        assert_eq!(a.failure_to_report(&shared, 1_000), Some(1));
        // Retries every second, on either worker: quiet for a minute.
        for t in 1..60 {
            let w = if t % 2 == 0 { &a } else { &b };
            assert_eq!(w.failure_to_report(&shared, 1_000 + t * 1_000), None);
        }
        assert_eq!(b.failure_to_report(&shared, 61_000), Some(60));
        // A success ends the streak: the next failure is reported at once.
        a.failures_over(&shared);
        assert_eq!(a.failure_to_report(&shared, 62_000), Some(1));
    }

    #[test]
    fn corrupt_shared_entries_are_ignored() {
        let shared = FakeShared::default();
        let mut a = worker();
        shared.set("tollgate/test/idp/idp/doc/doc", b"junk", None);
        shared.set(&a.doc_key(), b"no newline", None);
        assert!(!a.sync(&shared, 0));
        shared.set(&a.schedule_key(), b"garbage", None);
        assert!(a.try_claim_fetch(&shared, 0, FetchTrigger::Scheduled));
    }
}
