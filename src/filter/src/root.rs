//! The root context: one per worker VM. Parses the configuration, builds the
//! core's [`Worker`], and runs its periodic work on ticks.

use super::fetch::read_response;
use super::host::{
    declare_audit_property, EnvoyCallouts, EnvoyClock, EnvoyForeignFunction, EnvoySharedData,
    FilterStateAudit,
};
use super::http::TollgateHttp;
use super::metrics::EnvoyMetrics;
use super::parked::{answer_foreign_call, decide_woken, expire_foreign_calls, ForeignCall};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::RefCell;
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
    audit: FilterStateAudit,
    /// `RateLimit` headers for the responses of requests decided in another
    /// context's callback (parked requests), by context id.
    response_headers: RefCell<HashMap<u32, Vec<(&'static str, String)>>>,
    /// Rate-limit calls made for parked requests from another context's
    /// callback, by call token (see `parked`).
    pub foreign_calls: RefCell<HashMap<u32, ForeignCall>>,
}

impl Shared {
    pub fn keep_response_headers(&self, context: u32, headers: Vec<(&'static str, String)>) {
        if !headers.is_empty() {
            self.response_headers.borrow_mut().insert(context, headers);
        }
    }

    pub fn take_response_headers(&self, context: u32) -> Vec<(&'static str, String)> {
        self.response_headers
            .borrow_mut()
            .remove(&context)
            .unwrap_or_default()
    }

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
            audit: &self.audit,
        }
    }
}

pub struct TollgateRoot {
    context_id: u32,
    shared: Option<Rc<Shared>>,
    /// In-flight scheduled fetches: callout token → document.
    fetches: HashMap<u32, DocId>,
    tick: Option<Duration>,
}

impl TollgateRoot {
    pub fn new(context_id: u32) -> TollgateRoot {
        TollgateRoot {
            context_id,
            shared: None,
            fetches: HashMap::new(),
            tick: None,
        }
    }
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
        let woken = shared
            .worker
            .complete_fetch(shared.host(&clock, &callouts), id, &response);
        decide_woken(&shared, self, self.context_id, woken);
    }

    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        if let Some(shared) = self.shared.clone() {
            answer_foreign_call(&shared, self, self.context_id, token, status, size);
        }
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
            metrics: EnvoyMetrics::define(&settings),
            audit: FilterStateAudit(declare_audit_property()),
            worker: Worker::new(settings, verifier),
            response_headers: RefCell::new(HashMap::new()),
            foreign_calls: RefCell::new(HashMap::new()),
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
        let tick = shared.worker.on_tick(shared.host(&clock, &callouts));
        self.fetches.extend(tick.started);
        decide_woken(&shared, self, self.context_id, tick.woken);
        expire_foreign_calls(&shared, self, self.context_id);
        shared.metrics.flush();
        let period = tick.period;
        if self.tick != Some(period) {
            self.set_tick_period(period);
            self.tick = Some(period);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(TollgateHttp::new(context_id, shared)))
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
