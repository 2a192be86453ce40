//! Envoy stats: a counter per decision reason and per fetch outcome.
//!
//! Names are `tollgate.decision.<reason>` and `tollgate.<doc>.fetch_<outcome>`
//! (`doc` is `jwks` or `revocations`; `outcome` is `loaded`, `unchanged` or
//! `failed`). Envoy lists counters defined by wasm code under `wasmcustom.`.

use super::fetch::DocKind;
use crate::decision::Reason;
use crate::remote::Completion;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

pub struct Metrics {
    decisions: Vec<(Reason, u32)>,
    fetches: Vec<(DocKind, [u32; 3])>,
}

fn counter(name: &str) -> u32 {
    hostcalls::define_metric(MetricType::Counter, name).unwrap_or(0)
}

fn bump(id: u32) {
    if id != 0 {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

impl Metrics {
    pub fn define() -> Metrics {
        Metrics {
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
        }
    }

    pub fn decision(&self, reason: Reason) {
        if let Some((_, id)) = self.decisions.iter().find(|(r, _)| *r == reason) {
            bump(*id);
        }
    }

    pub fn fetch(&self, kind: DocKind, completion: &Completion) {
        let slot = match completion {
            Completion::Loaded => 0,
            Completion::Unchanged => 1,
            Completion::Failed(_) => 2,
        };
        if let Some((_, ids)) = self.fetches.iter().find(|(k, _)| *k == kind) {
            bump(ids[slot]);
        }
    }
}
