//! The HTTP context: one per request. Reads the request, asks the
//! [`Authorizer`], and applies its outcome.

use super::fetch::DocId;
use super::host::{request_headers, EnvoySharedData};
use super::root::{now, Worker};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;
use std::sync::Arc;
use tollgate_core::apikey::KeySet as ApiKeySet;
use tollgate_core::authz::{Authorizer, Outcome, RemoteState, TokenDigest};
use tollgate_core::client_ip;
use tollgate_core::credentials::{HeaderEdit, RequestView};
use tollgate_core::decision::{render_denial, Denial, Reason};
use tollgate_core::jwk::KeySet;
use tollgate_core::ratelimit::{self, table::Churn, Enforcement, LimitCheck};
use tollgate_core::remote::FetchTrigger;
use tollgate_core::revocation::RevocationList;

pub struct TollgateHttp {
    worker: Rc<Worker>,
    /// Set while this request waits for a JWKS refetch it started.
    waiting_for: Option<(u32, usize)>,
    headers: Vec<(String, Vec<u8>)>,
    client_ip: Option<String>,
    /// When the current callback started: one clock read per callback.
    clock: std::time::Duration,
    /// `RateLimit` headers for the response, when configured.
    response_headers: Vec<(&'static str, String)>,
}

/// The worker's remote documents, as the decision logic sees them.
struct WorkerState<'a> {
    worker: &'a Worker,
    now_ms: u64,
    refetch_allowed: bool,
}

impl RemoteState for WorkerState<'_> {
    fn remote_keys(&self, provider: usize) -> Option<Arc<KeySet>> {
        self.worker
            .docs
            .borrow()
            .get(provider)?
            .keys
            .as_ref()?
            .value()
    }

    fn may_refetch(&self, provider: usize) -> bool {
        self.refetch_allowed
            && self
                .worker
                .docs
                .borrow()
                .get(provider)
                .and_then(|d| d.keys.as_ref())
                .is_some_and(|k| k.may_fetch_on_demand(self.now_ms))
    }

    fn api_keys(&self) -> Option<Arc<ApiKeySet>> {
        self.worker.api_keys.borrow().as_ref()?.value()
    }

    fn revocations(&self, provider: usize) -> Option<Arc<RevocationList>> {
        self.worker
            .docs
            .borrow()
            .get(provider)?
            .revocations
            .as_ref()?
            .value()
    }
}

impl TollgateHttp {
    pub fn new(worker: Rc<Worker>) -> TollgateHttp {
        TollgateHttp {
            worker,
            waiting_for: None,
            headers: Vec::new(),
            client_ip: None,
            clock: std::time::Duration::ZERO,
            response_headers: Vec::new(),
        }
    }

    fn decide(&self, refetch_allowed: bool) -> Outcome {
        let header = |name: &str| {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
                .unwrap_or("")
        };
        let req = RequestView {
            method: header(":method"),
            path: header(":path"),
            headers: &self.headers,
            client_ip: self.client_ip.as_deref(),
        };
        let now = self.clock;
        let state = WorkerState {
            worker: &self.worker,
            now_ms: now.as_millis() as u64,
            refetch_allowed,
        };
        Authorizer {
            settings: &self.worker.settings,
            remote: &state,
            verifier: self.worker.verifier.as_ref(),
            cache: &self.worker.token_cache,
            now: now.as_secs(),
        }
        .decide(&req)
    }

    fn deny(&mut self, denial: Denial, token_hash: Option<TokenDigest>) -> Action {
        self.worker.metrics.decision(denial.reason);
        log::debug!(
            "deny reason={} status={} token={} ip={}",
            denial.reason.as_str(),
            denial.status,
            fingerprint(token_hash),
            self.client_ip.as_deref().unwrap_or("-")
        );
        let headers: Vec<(&str, &str)> = denial
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        self.send_http_response(denial.status, headers, Some(denial.body.as_bytes()));
        Action::Pause
    }

    /// A `429` for a locked-out address, decided before any token is looked at.
    fn lockout(&self) -> Option<Denial> {
        let limits = &self.worker.settings.rate_limits;
        let (bf, ip) = (limits.brute_force.as_ref()?, self.client_ip.as_deref()?);
        let left = bf.locked_for(
            &limits.table,
            &EnvoySharedData,
            ip,
            self.clock.as_millis() as u64,
        )?;
        let settings = &self.worker.settings;
        Some(render_denial(
            Reason::LockedOut,
            &settings.realm,
            None,
            left.div_ceil(1000),
        ))
    }

    fn record_failed_authentication(&self) {
        let limits = &self.worker.settings.rate_limits;
        let (Some(bf), Some(ip)) = (limits.brute_force.as_ref(), self.client_ip.as_deref()) else {
            return;
        };
        let mut churn = Churn::default();
        let now_ms = self.clock.as_millis() as u64;
        if bf.record_failure(&limits.table, &EnvoySharedData, ip, now_ms, &mut churn) {
            log::info!(
                "locking out {ip} for {} s after repeated failed authentications",
                bf.lockout_ms / 1000
            );
        }
        self.worker.metrics.churn(&churn);
    }

    /// Counts the request against its policies: a `429` if one refuses.
    fn enforce_limits(&mut self, checks: &[LimitCheck]) -> Option<Denial> {
        if checks.is_empty() {
            return None;
        }
        let limits = &self.worker.settings.rate_limits;
        let mut churn = Churn::default();
        let now_ms = self.clock.as_millis() as u64;
        let result = ratelimit::enforce(
            &limits.table,
            &EnvoySharedData,
            &limits.policies,
            checks,
            now_ms,
            &mut churn,
        );
        self.worker.metrics.churn(&churn);
        match result {
            Enforcement::Limited(policy, verdict) => Some(ratelimit::limited_response(
                &limits.policies[policy],
                &verdict,
            )),
            Enforcement::Allowed(Some((policy, verdict))) if limits.response_headers => {
                self.response_headers =
                    ratelimit::rate_limit_headers(&limits.policies[policy], &verdict).into();
                None
            }
            Enforcement::Allowed(_) => None,
        }
    }

    /// Applies an outcome. Returns the action for the current callback.
    fn apply(&mut self, outcome: Outcome, resume: bool) -> Action {
        match outcome {
            Outcome::Allow {
                reason,
                edits,
                identity,
                caller,
                token_hash,
                limits,
            } => {
                if let Some(denial) = self.enforce_limits(&limits) {
                    return self.deny(denial, token_hash);
                }
                for edit in edits.iter().chain(identity.iter()) {
                    match edit {
                        HeaderEdit::Remove(name) => self.set_http_request_header(name, None),
                        HeaderEdit::Set(name, value) => {
                            self.set_http_request_header(name, Some(value))
                        }
                    }
                }
                self.worker.metrics.decision(reason);
                log::debug!(
                    "allow reason={} token={} subject={:?}",
                    reason.as_str(),
                    fingerprint(token_hash),
                    caller.as_ref().and_then(|c| c.subject.as_deref())
                );
                if resume {
                    self.resume_http_request();
                }
                Action::Continue
            }
            Outcome::Deny { denial, .. }
                if matches!(
                    denial.reason,
                    Reason::KeysUnavailable | Reason::RevocationsUnavailable
                ) && self.worker.sync() =>
            {
                // Another worker loaded them since this one last looked.
                let again = self.decide(false);
                self.apply(again, resume)
            }
            Outcome::Deny { denial, token_hash } => {
                if denial.reason.is_credential_guess() {
                    self.record_failed_authentication();
                }
                self.deny(denial, token_hash)
            }
            Outcome::FetchKeys { provider } => {
                // Another worker may already have the new keys.
                if self.worker.sync() {
                    let again = self.decide(false);
                    return self.apply(again, resume);
                }
                let now_ms = self.clock.as_millis() as u64;
                match self.worker.start_fetch(
                    self,
                    DocId::Keys(provider),
                    FetchTrigger::OnDemand,
                    now_ms,
                ) {
                    Some(token) => {
                        self.waiting_for = Some((token, provider));
                        Action::Pause
                    }
                    None => {
                        let again = self.decide(false);
                        self.apply(again, resume)
                    }
                }
            }
        }
    }
}

/// A credential's fingerprint for a log line, or `-`.
fn fingerprint(digest: Option<TokenDigest>) -> String {
    digest.map_or_else(|| "-".to_string(), |d| d.to_string())
}

impl Context for TollgateHttp {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some((expected, provider)) = self.waiting_for.take() else {
            return;
        };
        if token != expected {
            return;
        }
        self.clock = now(self);
        self.worker.complete_fetch(
            self,
            DocId::Keys(provider),
            body_size,
            self.clock.as_millis() as u64,
        );
        let outcome = self.decide(false);
        self.apply(outcome, true);
    }
}

impl HttpContext for TollgateHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.clock = now(self);
        self.headers = request_headers();
        if self.worker.settings.uses_client_ip {
            let peer = self
                .get_property(vec!["source", "address"])
                .and_then(|b| String::from_utf8(b).ok());
            let xff = self
                .headers
                .iter()
                .find(|(n, _)| n == "x-forwarded-for")
                .map(|(_, v)| v.as_slice());
            let source = self.worker.settings.client_ip;
            self.client_ip = client_ip::resolve(source, peer.as_deref(), xff);
        }
        if let Some(denial) = self.lockout() {
            self.headers = Vec::new();
            return self.deny(denial, None);
        }
        let outcome = self.decide(true);
        let action = self.apply(outcome, false);
        if self.waiting_for.is_none() {
            // Keep nothing from the request longer than needed.
            self.headers = Vec::new();
        }
        action
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            self.set_http_response_header(name, Some(&value));
        }
        Action::Continue
    }
}
