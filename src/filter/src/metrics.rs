//! Envoy stats: a counter per decision reason and per fetch outcome.
//!
//! Names are `tollgate.decision.<reason>` and `tollgate.<doc>.fetch_<outcome>`
//! (`doc` is `jwks` or `revocations`; `outcome` is `loaded`, `unchanged` or
//! `failed`), the gauge `tollgate.ratelimit.entries`, the counter
//! `tollgate.ratelimit.evictions`, and per remote policy
//! `tollgate.rls.<policy>.<outcome>` (`calls`, then one of `ok`, `over_limit`,
//! `error`, `timeout`; failed calls also `failure_mode_allowed` or
//! `failure_mode_denied`). Envoy lists metrics defined by wasm code under
//! `wasmcustom.`.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use tollgate_core::config::Settings;
use tollgate_core::decision::Reason;
use tollgate_core::host::Metrics;
use tollgate_core::ratelimit::rls::CallOutcome;
use tollgate_core::ratelimit::table::Churn;
use tollgate_core::ratelimit::PolicyId;
use tollgate_core::remote::Completion;
use tollgate_core::worker::DocKind;

pub struct EnvoyMetrics {
    decisions: Vec<(Reason, u32)>,
    fetches: Vec<(DocKind, [u32; 3])>,
    /// Gauge: live rate-limit and brute-force counters in the shared table.
    limit_entries: u32,
    /// Counter: live counters pushed out of a full table slot.
    limit_evictions: u32,
    /// Per policy (by index), for remote ones.
    rls: Vec<Option<RlsCounters>>,
}

/// A remote policy's call counters.
struct RlsCounters {
    calls: u32,
    ok: u32,
    over_limit: u32,
    error: u32,
    timeout: u32,
    failure_mode_allowed: u32,
    failure_mode_denied: u32,
}

fn counter(name: &str) -> u32 {
    hostcalls::define_metric(MetricType::Counter, name).unwrap_or(0)
}

fn bump(id: u32) {
    if id != 0 {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

impl EnvoyMetrics {
    pub fn define(settings: &Settings) -> EnvoyMetrics {
        EnvoyMetrics {
            decisions: Reason::ALL
                .iter()
                .map(|r| (*r, counter(&format!("tollgate.decision.{}", r.as_str()))))
                .collect(),
            fetches: DocKind::ALL
                .iter()
                .map(|k| {
                    let c = |o: &str| counter(&format!("tollgate.{}.fetch_{o}", k.name()));
                    (*k, [c("loaded"), c("unchanged"), c("failed")])
                })
                .collect(),
            limit_entries: hostcalls::define_metric(
                MetricType::Gauge,
                "tollgate.ratelimit.entries",
            )
            .unwrap_or(0),
            limit_evictions: counter("tollgate.ratelimit.evictions"),
            rls: settings
                .rate_limits
                .policies
                .iter()
                .map(|p| {
                    p.rls()?;
                    let c = |outcome: &str| counter(&format!("tollgate.rls.{}.{outcome}", p.name));
                    Some(RlsCounters {
                        calls: c("calls"),
                        ok: c("ok"),
                        over_limit: c("over_limit"),
                        error: c("error"),
                        timeout: c("timeout"),
                        failure_mode_allowed: c("failure_mode_allowed"),
                        failure_mode_denied: c("failure_mode_denied"),
                    })
                })
                .collect(),
        }
    }
}

impl Metrics for EnvoyMetrics {
    fn churn(&self, churn: &Churn) {
        if churn.entries_delta != 0 && self.limit_entries != 0 {
            let _ = hostcalls::increment_metric(self.limit_entries, churn.entries_delta);
        }
        for _ in 0..churn.evicted {
            bump(self.limit_evictions);
        }
    }

    fn rate_limit_call(&self, policy: PolicyId, outcome: &CallOutcome, failure_mode_deny: bool) {
        let Some(Some(c)) = self.rls.get(policy.index()) else {
            return;
        };
        bump(c.calls);
        match outcome {
            CallOutcome::Ok => bump(c.ok),
            CallOutcome::OverLimit => bump(c.over_limit),
            CallOutcome::Failed(failure) => {
                bump(if failure.is_timeout() {
                    c.timeout
                } else {
                    c.error
                });
                bump(if failure_mode_deny {
                    c.failure_mode_denied
                } else {
                    c.failure_mode_allowed
                });
            }
        }
    }

    fn decision(&self, reason: Reason) {
        if let Some((_, id)) = self.decisions.iter().find(|(r, _)| *r == reason) {
            bump(*id);
        }
    }

    fn fetch(&self, kind: DocKind, completion: &Completion) {
        let slot = match completion {
            Completion::Loaded => 0,
            Completion::Unchanged => 1,
            Completion::Failed(_) => 2,
        };
        if let Some(id) = self
            .fetches
            .iter()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, ids)| ids.get(slot))
        {
            bump(*id);
        }
    }
}
