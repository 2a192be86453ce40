//! Envoy stats behind the core's `Metrics` trait (names in the README, "Envoy
//! stats"). Envoy lists metrics defined by wasm code under `wasmcustom.`, and
//! `/stats/prometheus` without that prefix; the sample's `stats_tags` turn the
//! name parts after a fixed stem (reason, rule, policy, provider, signal) into
//! labels. Remote policies' calls: `tollgate.rls.<outcome>.<policy>`.
//!
//! Counters and gauge deltas are added up in the VM and handed to Envoy once
//! per tick (at most a second later): a host call costs about a microsecond,
//! and a request touches several counters. Only the decision-time histogram is
//! recorded per request, since Envoy keeps its buckets.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::cell::RefCell;
use tollgate_core::anomaly::Signal;
use tollgate_core::config::Settings;
use tollgate_core::decision::Reason;
use tollgate_core::host::Metrics;
use tollgate_core::ratelimit::rls::CallOutcome;
use tollgate_core::ratelimit::table::Churn;
use tollgate_core::ratelimit::PolicyId;
use tollgate_core::remote::Completion;
use tollgate_core::worker::{DocId, DocKind};

/// A remote policy's call counters, `tollgate.rls.<outcome>.<policy>`: every
/// call, then how it ended, then (failed ones) what its failure mode did.
const RLS_OUTCOMES: [&str; 7] = [
    "calls",
    "ok",
    "over_limit",
    "error",
    "timeout",
    "failure_mode_allowed",
    "failure_mode_denied",
];

fn define(kind: MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(kind, name).ok()
}

/// Counters and gauges whose changes wait for the next flush.
#[derive(Default)]
struct Pending {
    ids: Vec<u32>,
    deltas: Vec<i64>,
}

impl Pending {
    /// A local slot for a metric; `None` when Envoy refused to define it.
    fn slot(&mut self, kind: MetricType, name: &str) -> Option<usize> {
        let id = define(kind, name)?;
        self.ids.push(id);
        self.deltas.push(0);
        Some(self.ids.len() - 1)
    }

    fn add(&mut self, slot: Option<usize>, delta: i64) {
        if let Some(d) = slot.and_then(|s| self.deltas.get_mut(s)) {
            *d += delta;
        }
    }
}

pub struct EnvoyMetrics {
    pending: RefCell<Pending>,
    /// By `Reason::ALL` position.
    decisions: Vec<Option<usize>>,
    /// By rule, then reason: the slot, defined on first use (most pairs never
    /// occur); `None` until then.
    rule_decisions: RefCell<Vec<Option<Option<usize>>>>,
    rule_names: Vec<String>,
    /// By `DocKind::ALL` position: loaded, unchanged, failed.
    fetches: Vec<[Option<usize>; 3]>,
    limit_entries: Option<usize>,
    limit_evictions: Option<usize>,
    /// By policy: admitted, refused.
    limits: Vec<[Option<usize>; 2]>,
    /// By policy, for remote ones: `RLS_OUTCOMES`.
    rls: Vec<Option<[Option<usize>; 7]>>,
    /// By `Signal::ALL` position.
    signals: Vec<Option<usize>>,
    suspended: Option<usize>,
    cache: [Option<usize>; 2],
    unknown_cluster: Option<usize>,
    decision_time: Option<u32>,
    /// Age gauges, defined once their document first loads (no series before:
    /// an age of 0 would read as fresh).
    ages: RefCell<Vec<(DocId, Option<u32>)>>,
    provider_names: Vec<String>,
}

impl EnvoyMetrics {
    pub fn define(settings: &Settings) -> EnvoyMetrics {
        let mut p = Pending::default();
        let counter = |p: &mut Pending, name: &str| p.slot(MetricType::Counter, name);
        let decisions = Reason::ALL
            .iter()
            .map(|r| counter(&mut p, &format!("tollgate.decision.{}", r.as_str())))
            .collect();
        let fetches = DocKind::ALL
            .iter()
            .map(|k| {
                let mut c = |o: &str| counter(&mut p, &format!("tollgate.{}.fetch_{o}", k.name()));
                [c("loaded"), c("unchanged"), c("failed")]
            })
            .collect();
        let limit_entries = p.slot(MetricType::Gauge, "tollgate.ratelimit.entries");
        let limit_evictions = counter(&mut p, "tollgate.ratelimit.evictions");
        let limits = settings
            .rate_limits
            .policies
            .iter()
            .map(|policy| {
                [
                    counter(
                        &mut p,
                        &format!("tollgate.ratelimit.allowed.{}", policy.name),
                    ),
                    counter(
                        &mut p,
                        &format!("tollgate.ratelimit.limited.{}", policy.name),
                    ),
                ]
            })
            .collect();
        let rls = settings
            .rate_limits
            .policies
            .iter()
            .map(|policy| {
                policy.rls()?;
                Some(RLS_OUTCOMES.map(|outcome| {
                    counter(&mut p, &format!("tollgate.rls.{outcome}.{}", policy.name))
                }))
            })
            .collect();
        let signals = Signal::ALL
            .iter()
            .map(|s| counter(&mut p, &format!("tollgate.anomaly.{}", s.as_str())))
            .collect();
        let suspended = counter(&mut p, "tollgate.anomaly_suspensions");
        let cache = [
            counter(&mut p, "tollgate.token_cache.hits"),
            counter(&mut p, "tollgate.token_cache.misses"),
        ];
        let unknown_cluster = counter(&mut p, "tollgate.fetch.unknown_cluster");
        EnvoyMetrics {
            decisions,
            rule_decisions: RefCell::new(vec![None; settings.rules.len() * Reason::ALL.len()]),
            rule_names: settings.rules.iter().map(|r| r.name.clone()).collect(),
            fetches,
            limit_entries,
            limit_evictions,
            limits,
            rls,
            signals,
            suspended,
            cache,
            unknown_cluster,
            decision_time: define(MetricType::Histogram, "tollgate.decision_time_us"),
            ages: RefCell::new(Vec::new()),
            provider_names: settings.providers.iter().map(|p| p.name.clone()).collect(),
            pending: RefCell::new(p),
        }
    }

    /// Hands the changes since the last flush to Envoy (on tick).
    pub fn flush(&self) {
        let mut p = self.pending.borrow_mut();
        let Pending { ids, deltas } = &mut *p;
        for (id, delta) in ids.iter().zip(deltas.iter_mut()) {
            if *delta != 0 {
                let _ = hostcalls::increment_metric(*id, *delta);
                *delta = 0;
            }
        }
    }

    fn add(&self, slot: Option<usize>, delta: i64) {
        self.pending.borrow_mut().add(slot, delta);
    }

    fn rule_slot(&self, rule: usize, reason: Reason) -> Option<usize> {
        let at = rule * Reason::ALL.len() + reason.index();
        if let Some(Some(slot)) = self.rule_decisions.borrow().get(at) {
            return *slot;
        }
        let slot = self.rule_names.get(rule).and_then(|name| {
            self.pending.borrow_mut().slot(
                MetricType::Counter,
                &format!("tollgate.rule_decision.{}.{name}", reason.as_str()),
            )
        });
        if let Some(entry) = self.rule_decisions.borrow_mut().get_mut(at) {
            *entry = Some(slot);
        }
        slot
    }

    fn age_gauge(&self, doc: DocId) -> Option<u32> {
        if let Some((_, id)) = self.ages.borrow().iter().find(|(d, _)| *d == doc) {
            return *id;
        }
        let provider = |p: tollgate_core::config::ProviderId| {
            self.provider_names
                .get(p.index())
                .map_or("?", String::as_str)
                .to_string()
        };
        let name = match doc {
            DocId::Keys(p) => format!("tollgate.jwks.age_seconds.{}", provider(p)),
            DocId::Revocations(p) => format!("tollgate.revocations.age_seconds.{}", provider(p)),
            DocId::ApiKeys => "tollgate.api_keys.age_seconds".to_string(),
        };
        let id = define(MetricType::Gauge, &name);
        self.ages.borrow_mut().push((doc, id));
        id
    }
}

impl Metrics for EnvoyMetrics {
    fn decision(&self, reason: Reason, rule: Option<usize>, latency_us: u64) {
        self.add(self.decisions.get(reason.index()).copied().flatten(), 1);
        if let Some(rule) = rule {
            let slot = self.rule_slot(rule, reason);
            self.add(slot, 1);
        }
        if let Some(id) = self.decision_time {
            let _ = hostcalls::record_metric(id, latency_us);
        }
    }

    fn fetch(&self, kind: DocKind, completion: &Completion) {
        let outcome = match completion {
            Completion::Loaded => 0,
            Completion::Unchanged => 1,
            Completion::Failed(_) => 2,
        };
        let at = DocKind::ALL.iter().position(|k| *k == kind);
        let slot = at
            .and_then(|i| self.fetches.get(i))
            .and_then(|slots| slots.get(outcome).copied().flatten());
        self.add(slot, 1);
    }

    fn churn(&self, churn: &Churn) {
        self.add(self.limit_entries, churn.entries_delta);
        self.add(self.limit_evictions, churn.evicted as i64);
    }

    fn rate_limit(&self, policy: PolicyId, limited: bool) {
        let slot = self
            .limits
            .get(policy.index())
            .and_then(|s| s.get(usize::from(limited)).copied().flatten());
        self.add(slot, 1);
    }

    fn rate_limit_call(&self, policy: PolicyId, outcome: &CallOutcome, failure_mode_deny: bool) {
        let Some(Some([calls, ok, over_limit, error, timeout, allowed, denied])) =
            self.rls.get(policy.index()).copied()
        else {
            return;
        };
        self.add(calls, 1);
        match outcome {
            CallOutcome::Ok => self.add(ok, 1),
            CallOutcome::OverLimit => self.add(over_limit, 1),
            CallOutcome::Failed(failure) => {
                self.add(if failure.is_timeout() { timeout } else { error }, 1);
                self.add(if failure_mode_deny { denied } else { allowed }, 1);
            }
        }
    }

    fn signal(&self, signal: Signal, suspended: bool) {
        let at = Signal::ALL.iter().position(|s| *s == signal);
        self.add(at.and_then(|i| self.signals.get(i).copied().flatten()), 1);
        if suspended {
            self.add(self.suspended, 1);
        }
    }

    fn token_cache(&self, hits: u64, misses: u64) {
        let [hit, miss] = self.cache;
        self.add(hit, hits as i64);
        self.add(miss, misses as i64);
    }

    fn document_age(&self, doc: DocId, age_ms: u64) {
        if let Some(id) = self.age_gauge(doc) {
            let _ = hostcalls::record_metric(id, age_ms / 1000);
        }
    }

    fn unknown_cluster(&self) {
        self.add(self.unknown_cluster, 1);
    }
}
