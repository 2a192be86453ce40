//! What the core needs from its host (Envoy, through the filter crate), as
//! traits: the clock, process-wide shared data, metrics, foreign functions,
//! HTTP callouts and the audit sink. The filter implements them with proxy-wasm
//! host calls; `fakes` implements them in memory for the core's own tests.

use crate::anomaly::Signal;
use crate::decision::Reason;
use crate::identity::{Caller, TokenDigest};
use crate::ratelimit::rls::{CallFailure, CallOutcome};
use crate::ratelimit::table::Churn;
use crate::ratelimit::PolicyId;
use crate::remote::{Completion, Endpoint};
use crate::worker::{DocId, DocKind};
use std::time::Duration;

/// Wall-clock time since the Unix epoch. Read once per host callback.
pub trait Clock {
    fn now(&self) -> Duration;
}

/// Process-wide key/value storage with CAS (proxy-wasm shared data).
pub trait SharedData {
    /// The value and its CAS version, if the key exists.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Stores `value` if the entry is still at version `cas` (`None`: unconditionally).
    /// False when another writer got there first.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// The proxy-wasm foreign-function call (Envoy's `verify_signature`).
pub trait ForeignFunction {
    /// `Err` when the host has no such function or refused the arguments.
    fn call(&self, name: &str, args: &[u8]) -> Result<Vec<u8>, String>;
}

/// Envoy stats (names in the README's "Envoy stats").
pub trait Metrics {
    /// One decision: by reason, by rule (its index), and the time it took.
    fn decision(&self, reason: Reason, rule: Option<usize>, latency_us: u64);
    fn fetch(&self, kind: DocKind, completion: &Completion);
    /// Live counters added to or dropped from the shared rate-limit table.
    fn churn(&self, churn: &Churn);
    /// A rate-limit policy admitted (`limited` false) or refused a request.
    fn rate_limit(&self, policy: PolicyId, limited: bool);
    /// A call to a remote policy's rate-limit service ended; a failed one was
    /// let through (`failure_mode_deny` false) or refused.
    fn rate_limit_call(&self, policy: PolicyId, outcome: &CallOutcome, failure_mode_deny: bool);
    /// An anomaly signal was raised; `suspended`: its credential is now refused.
    fn signal(&self, signal: Signal, suspended: bool);
    /// Token-cache lookups since the last report.
    fn token_cache(&self, hits: u64, misses: u64);
    /// Age of the last good copy of a document (set on tick, once one loaded).
    fn document_age(&self, doc: DocId, age_ms: u64);
    /// A fetch could not start: its cluster is not defined in Envoy.
    fn unknown_cluster(&self);
}

/// Why a callout could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutError {
    /// Envoy has no cluster of that name.
    UnknownCluster,
    Failed(String),
}

/// HTTP callouts through an Envoy cluster.
pub trait Callouts {
    /// Starts `GET endpoint` (with `If-None-Match: etag`). The answer comes back
    /// to the caller's context under the returned token.
    fn get(&self, endpoint: &Endpoint, etag: Option<&str>) -> Result<u32, CalloutError>;
}

/// One decision, as the audit sink receives it: what a SIEM may see, never a
/// credential. The event's fields (`audit`) are made from it.
#[derive(Debug, Clone, Copy)]
pub struct DecisionRecord<'a> {
    /// When the decision was made, microseconds since the Unix epoch.
    pub time_us: u64,
    /// From the request's headers to the decision, waits for keys included.
    pub latency_us: u64,
    pub reason: Reason,
    /// The status Tollgate answered; `None` when it let the request through.
    pub status: Option<u32>,
    /// The name of the rule that matched.
    pub rule: Option<&'a str>,
    pub method: &'a str,
    /// Without its query.
    pub path: &'a str,
    pub request_id: Option<&'a str>,
    pub client_ip: Option<&'a str>,
    pub caller: Option<&'a Caller>,
    pub fingerprint: Option<TokenDigest>,
    /// The rate-limit policy that refused the request.
    pub policy: Option<&'a str>,
    /// Anomaly signals this request raised.
    pub signals: &'a [Signal],
}

/// A remote policy's call that gave no verdict: the request was let through
/// (`failure_mode_deny` false) or refused, for reason
/// `rate_limit_service_unavailable`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitFailureRecord<'a> {
    pub policy: &'a str,
    pub failure: &'a CallFailure,
    pub failure_mode_deny: bool,
    pub method: &'a str,
    pub client_ip: Option<&'a str>,
    pub caller: Option<&'a Caller>,
}

/// Where decisions go.
pub trait AuditSink {
    fn decision(&self, record: &DecisionRecord<'_>);
    /// A remote policy's call failed (the decision that follows is recorded too).
    fn rate_limit_failure(&self, record: &RateLimitFailureRecord<'_>);
}

/// The host services one callback works with.
#[derive(Clone, Copy)]
pub struct Host<'a> {
    pub clock: &'a dyn Clock,
    pub shared: &'a dyn SharedData,
    pub metrics: &'a dyn Metrics,
    pub callouts: &'a dyn Callouts,
    pub audit: &'a dyn AuditSink,
}

#[cfg(test)]
pub mod fakes {
    //! In-memory hosts for unit tests, with Envoy's semantics where they matter
    //! (shared-data CAS versions).

    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    /// In-memory shared data with Envoy's CAS semantics.
    #[derive(Default)]
    pub struct FakeShared(pub RefCell<HashMap<String, (Vec<u8>, u32)>>);

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
            map.insert(key.to_string(), (value.to_vec(), current.unwrap_or(0) + 1));
            true
        }
    }

    pub struct FakeClock(pub Cell<Duration>);

    impl FakeClock {
        pub fn at_secs(secs: u64) -> FakeClock {
            FakeClock(Cell::new(Duration::from_secs(secs)))
        }

        pub fn advance(&self, by: Duration) {
            self.0.set(self.0.get() + by);
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Duration {
            self.0.get()
        }
    }

    /// Counts what the core reports.
    #[derive(Default)]
    pub struct FakeMetrics {
        pub decisions: RefCell<Vec<Reason>>,
        /// (rule index, reason) of each decision.
        pub rules: RefCell<Vec<(Option<usize>, Reason)>>,
        pub fetches: RefCell<Vec<(DocKind, Completion)>>,
        pub entries: Cell<i64>,
        pub limits: RefCell<Vec<(PolicyId, bool)>>,
        pub signals: RefCell<Vec<(Signal, bool)>>,
        pub cache: Cell<(u64, u64)>,
        pub ages: RefCell<Vec<(DocId, u64)>>,
        pub unknown_clusters: Cell<u64>,
        pub rate_limit_calls: RefCell<Vec<(PolicyId, CallOutcome, bool)>>,
    }

    impl Metrics for FakeMetrics {
        fn decision(&self, reason: Reason, rule: Option<usize>, _latency_us: u64) {
            self.decisions.borrow_mut().push(reason);
            self.rules.borrow_mut().push((rule, reason));
        }
        fn fetch(&self, kind: DocKind, completion: &Completion) {
            self.fetches.borrow_mut().push((kind, completion.clone()));
        }
        fn churn(&self, churn: &Churn) {
            self.entries.set(self.entries.get() + churn.entries_delta);
        }
        fn rate_limit(&self, policy: PolicyId, limited: bool) {
            self.limits.borrow_mut().push((policy, limited));
        }
        fn signal(&self, signal: Signal, suspended: bool) {
            self.signals.borrow_mut().push((signal, suspended));
        }
        fn token_cache(&self, hits: u64, misses: u64) {
            let (h, m) = self.cache.get();
            self.cache.set((h + hits, m + misses));
        }
        fn document_age(&self, doc: DocId, age_ms: u64) {
            self.ages.borrow_mut().push((doc, age_ms));
        }
        fn unknown_cluster(&self) {
            self.unknown_clusters.set(self.unknown_clusters.get() + 1);
        }
        fn rate_limit_call(&self, policy: PolicyId, outcome: &CallOutcome, deny: bool) {
            self.rate_limit_calls
                .borrow_mut()
                .push((policy, outcome.clone(), deny));
        }
    }

    /// Records callouts; answers with increasing tokens, or fails when told to.
    #[derive(Default)]
    pub struct FakeCallouts {
        pub started: RefCell<Vec<(Endpoint, Option<String>)>>,
        pub refuse: RefCell<Option<CalloutError>>,
    }

    impl Callouts for FakeCallouts {
        fn get(&self, endpoint: &Endpoint, etag: Option<&str>) -> Result<u32, CalloutError> {
            if let Some(e) = self.refuse.borrow().clone() {
                return Err(e);
            }
            let mut started = self.started.borrow_mut();
            started.push((endpoint.clone(), etag.map(str::to_string)));
            Ok(started.len() as u32)
        }
    }

    /// A decision as the fake audit sink keeps it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Audited {
        pub reason: Reason,
        pub status: Option<u32>,
        pub subject: Option<String>,
    }

    /// A failed rate-limit call as the fake audit sink keeps it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct AuditedFailure {
        pub policy: String,
        pub failure: CallFailure,
        pub failure_mode_deny: bool,
        pub subject: Option<String>,
    }

    /// Keeps each decision, its event as JSON, and each failed rate-limit call.
    #[derive(Default)]
    pub struct FakeAudit(
        pub RefCell<Vec<Audited>>,
        pub RefCell<Vec<serde_json::Value>>,
        pub RefCell<Vec<AuditedFailure>>,
    );

    impl AuditSink for FakeAudit {
        fn decision(&self, record: &DecisionRecord<'_>) {
            self.0.borrow_mut().push(Audited {
                reason: record.reason,
                status: record.status,
                subject: record.caller.and_then(|c| c.subject.clone()),
            });
            let event =
                serde_json::from_str(&crate::audit::to_json(record)).expect("the event is JSON");
            self.1.borrow_mut().push(event);
        }
        fn rate_limit_failure(&self, record: &RateLimitFailureRecord<'_>) {
            self.2.borrow_mut().push(AuditedFailure {
                policy: record.policy.to_string(),
                failure: record.failure.clone(),
                failure_mode_deny: record.failure_mode_deny,
                subject: record.caller.and_then(|c| c.subject.clone()),
            });
        }
    }

    impl FakeAudit {
        pub fn events(&self) -> Vec<serde_json::Value> {
            self.1.borrow().clone()
        }
    }

    /// Every fake, owned, lending out a [`Host`].
    #[derive(Default)]
    pub struct FakeHost {
        pub clock: Option<FakeClock>,
        pub shared: FakeShared,
        pub metrics: FakeMetrics,
        pub callouts: FakeCallouts,
        pub audit: FakeAudit,
    }

    impl FakeHost {
        pub fn at_secs(secs: u64) -> FakeHost {
            FakeHost {
                clock: Some(FakeClock::at_secs(secs)),
                ..FakeHost::default()
            }
        }

        pub fn host(&self) -> Host<'_> {
            Host {
                clock: self
                    .clock
                    .as_ref()
                    .expect("FakeHost::at_secs sets the clock"),
                shared: &self.shared,
                metrics: &self.metrics,
                callouts: &self.callouts,
                audit: &self.audit,
            }
        }
    }
}
