//! Envoy stats: a counter per decision reason and per fetch outcome.
//!
//! Names are `tollgate.decision.<reason>` and `tollgate.<doc>.fetch_<outcome>`
//! (`doc` is `jwks` or `revocations`; `outcome` is `loaded`, `unchanged` or
//! `failed`), the gauge `tollgate.ratelimit.entries` and the counter
//! `tollgate.ratelimit.evictions`. Envoy lists metrics defined by wasm code
//! under `wasmcustom.`.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use tollgate_core::decision::Reason;
use tollgate_core::host::Metrics;
use tollgate_core::ratelimit::table::Churn;
use tollgate_core::remote::Completion;
use tollgate_core::worker::DocKind;

pub struct EnvoyMetrics {
    decisions: Vec<(Reason, u32)>,
    fetches: Vec<(DocKind, [u32; 3])>,
    /// Gauge: live rate-limit and brute-force counters in the shared table.
    limit_entries: u32,
    /// Counter: live counters pushed out of a full table slot.
    limit_evictions: u32,
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
    pub fn define() -> EnvoyMetrics {
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
