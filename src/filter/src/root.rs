//! The root context: one per worker VM. Parses the configuration, builds the
//! core's [`Worker`], and runs its periodic work on ticks.

use super::fetch::read_response;
use super::host::{EnvoyCallouts, EnvoyClock, EnvoyForeignFunction, EnvoySharedData, LogAudit};
use super::http::TollgateHttp;
use super::metrics::EnvoyMetrics;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;
use tollgate_core::config;
use tollgate_core::crypto::choose_verifier;
use tollgate_core::host::Host;
use tollgate_core::worker::{DocId, Worker, TICK_LOADING};

/// What the root context shares with its HTTP contexts (same VM, same thread).
pub struct Shared {
    pub worker: Worker,
    pub metrics: EnvoyMetrics,
}

impl Shared {
    /// The host services for a callback running in `ctx`.
    pub fn host<'a>(
        &'a self,
        clock: &'a EnvoyClock<'a>,
        callouts: &'a EnvoyCallouts<'a>,
    ) -> Host<'a> {
        Host {
            clock,
            shared: &EnvoySharedData,
            metrics: &self.metrics,
            callouts,
            audit: &LogAudit,
        }
    }
}

#[derive(Default)]
pub struct TollgateRoot {
    shared: Option<Rc<Shared>>,
    /// In-flight scheduled fetches: callout token → document.
    fetches: HashMap<u32, DocId>,
    tick: Option<Duration>,
}

impl Context for TollgateRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let (Some(id), Some(shared)) = (self.fetches.remove(&token), self.shared.clone()) else {
            return;
        };
        let response = read_response(self, id.kind(), body_size);
        let (clock, callouts) = (EnvoyClock(self), EnvoyCallouts(self));
        shared
            .worker
            .complete_fetch(shared.host(&clock, &callouts), id, &response);
    }
}

impl RootContext for TollgateRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let settings = match config::parse(&raw) {
            Ok(s) => s,
            Err(e) => {
                // Envoy refuses the plugin when this returns false; the line
                // names the offending field.
                log::error!("{e}");
                return false;
            }
        };
        follow_envoy_log_level();
        let verifier = choose_verifier(settings.signature_backend, EnvoyForeignFunction);
        self.shared = Some(Rc::new(Shared {
            worker: Worker::new(settings, verifier),
            metrics: EnvoyMetrics::define(),
        }));
        self.fetches.clear();
        // Fetches start from ticks, not here: at bootstrap Envoy configures
        // plugins before its clusters are up, and a callout started now never
        // completes, holding the fetch claim until it times out.
        self.set_tick_period(TICK_LOADING);
        self.tick = Some(TICK_LOADING);
        true
    }

    fn on_tick(&mut self) {
        follow_envoy_log_level();
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let (clock, callouts) = (EnvoyClock(self), EnvoyCallouts(self));
        let (started, period) = shared.worker.on_tick(shared.host(&clock, &callouts));
        self.fetches.extend(started);
        if self.tick != Some(period) {
            self.set_tick_period(period);
            self.tick = Some(period);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(TollgateHttp::new(shared)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Logs below Envoy's level for the `wasm` component would be formatted and
/// then dropped by the host; asking Envoy keeps them from being built at all,
/// and follows `/logging?wasm=debug` changes within a tick.
fn follow_envoy_log_level() {
    if let Ok(level) = proxy_wasm::hostcalls::get_log_level() {
        proxy_wasm::set_log_level(level);
    }
}
