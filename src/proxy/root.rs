//! The root context: one per worker VM. Parses the configuration, picks the
//! signature backend, and keeps remote documents (JWKS, revocation lists)
//! loaded (see `crate::remote`).

use super::fetch::{self, DocKind, ProviderDocs};
use super::host::{EnvoyForeignFunction, EnvoySharedData};
use super::http::TollgateHttp;
use super::metrics::Metrics;
use crate::alg::Algorithm;
use crate::config::{self, ProviderKeys, Settings, SignatureBackend};
use crate::crypto::{HostVerifier, PureVerifier, SignatureVerifier};
use crate::jwk::{parse_jwks, KeySource, Strictness};
use crate::jwt::decode;
use crate::ratelimit::table::Churn;
use crate::remote::{Completion, FetchTrigger, RemoteDoc};
use crate::revocation::RevocationList;
use jwt_simple::prelude::*;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

/// Tick while some remote documents are still missing, and once all are loaded.
const TICK_LOADING: Duration = Duration::from_millis(200);
const TICK_STEADY: Duration = Duration::from_secs(1);

/// Rate-limit table slots swept per tick (per worker): the default 8192-slot
/// table is swept every 16 s by one worker, faster by several.
const SWEEP_SLOTS_PER_TICK: u32 = 512;

/// What the root context shares with its HTTP contexts (same VM, same thread).
pub struct Worker {
    pub settings: Settings,
    pub verifier: Box<dyn SignatureVerifier>,
    pub metrics: Metrics,
    /// Indexed like `settings.providers`.
    pub docs: RefCell<Vec<ProviderDocs>>,
}

impl Worker {
    fn new(settings: Settings) -> Worker {
        let docs = settings
            .providers
            .iter()
            .map(|p| ProviderDocs {
                keys: match &p.keys {
                    ProviderKeys::Remote(src) => {
                        let algorithms = p.algorithms.clone();
                        Some(RemoteDoc::new(
                            "jwks",
                            src.endpoint.clone(),
                            src.policy,
                            move |body| {
                                parse_jwks(
                                    body,
                                    KeySource::Remote,
                                    &algorithms,
                                    Strictness::Lenient,
                                )
                                .map(|(set, _)| set)
                                .map_err(|e| format!("unusable JWKS: {e}"))
                            },
                        ))
                    }
                    ProviderKeys::Local(_) => None,
                },
                revocations: p.revocation_feed.as_ref().map(|src| {
                    RemoteDoc::new("revocations", src.endpoint.clone(), src.policy, |body| {
                        let now = proxy_wasm::hostcalls::get_current_time()
                            .ok()
                            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                            .unwrap_or_default();
                        RevocationList::parse(body, now.as_secs())
                    })
                }),
            })
            .collect();
        Worker {
            verifier: choose_verifier(settings.signature_backend),
            settings,
            metrics: Metrics::define(),
            docs: RefCell::new(docs),
        }
    }

    /// Starts a fetch of one provider document if this worker wins the claim.
    /// Returns the callout token; the response goes back to `complete_fetch`.
    pub fn start_fetch(
        &self,
        ctx: &dyn Context,
        provider: usize,
        kind: DocKind,
        trigger: FetchTrigger,
        now_ms: u64,
    ) -> Option<u32> {
        let mut docs = self.docs.borrow_mut();
        let docs = docs.get_mut(provider)?;
        let started = match kind {
            DocKind::Keys => fetch::start(ctx, docs.keys.as_mut()?, trigger, now_ms),
            DocKind::Revocations => fetch::start(ctx, docs.revocations.as_mut()?, trigger, now_ms),
        };
        started.unwrap_or_else(|err| {
            self.report(provider, kind, &Completion::Failed(err));
            None
        })
    }

    /// Feeds a callout's answer into the document cache and the shared copy.
    pub fn complete_fetch(
        &self,
        ctx: &dyn Context,
        provider: usize,
        kind: DocKind,
        body_size: usize,
        now_ms: u64,
    ) {
        let response = fetch::read_response(ctx, kind, body_size);
        let completion = {
            let mut docs = self.docs.borrow_mut();
            let Some(docs) = docs.get_mut(provider) else {
                return;
            };
            let shared = &EnvoySharedData;
            let result = response.as_result();
            match kind {
                DocKind::Keys => docs
                    .keys
                    .as_mut()
                    .map(|d| d.complete_fetch(shared, now_ms, result)),
                DocKind::Revocations => docs
                    .revocations
                    .as_mut()
                    .map(|d| d.complete_fetch(shared, now_ms, result)),
            }
        };
        if let Some(completion) = completion {
            self.report(provider, kind, &completion);
        }
    }

    fn report(&self, provider: usize, kind: DocKind, completion: &Completion) {
        self.metrics.fetch(kind, completion);
        let name = &self.settings.providers[provider].name;
        let what = kind.name();
        match completion {
            Completion::Loaded => {
                let docs = self.docs.borrow();
                match kind {
                    DocKind::Keys => {
                        let n = docs[provider]
                            .keys
                            .as_ref()
                            .and_then(|d| d.value())
                            .map_or(0, |k| k.keys.len());
                        log::info!("loaded {n} signing key(s) for provider `{name}`");
                    }
                    DocKind::Revocations => {
                        let n = docs[provider]
                            .revocations
                            .as_ref()
                            .and_then(|d| d.value())
                            .map_or(0, |l| l.len());
                        log::info!(
                            "loaded revocation list for provider `{name}`: {n} revoked token(s)"
                        );
                    }
                }
            }
            Completion::Unchanged => log::debug!("{what} for provider `{name}` unchanged"),
            Completion::Failed(e) => {
                log::warn!(
                    "{what} fetch for provider `{name}` failed, keeping the last good copy: {e}"
                )
            }
        }
    }

    /// Picks up documents other workers fetched. True if any changed.
    pub fn sync(&self) -> bool {
        let mut changed = false;
        for docs in self.docs.borrow_mut().iter_mut() {
            if let Some(d) = docs.keys.as_mut() {
                changed |= d.sync(&EnvoySharedData);
            }
            if let Some(d) = docs.revocations.as_mut() {
                changed |= d.sync(&EnvoySharedData);
            }
        }
        changed
    }

    fn loading(&self) -> bool {
        self.docs.borrow().iter().any(|d| {
            d.keys.as_ref().is_some_and(|k| k.value().is_none())
                || d.revocations.as_ref().is_some_and(|r| r.value().is_none())
        })
    }
}

pub fn now(ctx: &dyn Context) -> Duration {
    ctx.get_current_time()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[derive(Default)]
pub struct TollgateRoot {
    worker: Option<Rc<Worker>>,
    /// In-flight scheduled fetches: callout token → provider and document.
    fetches: HashMap<u32, (usize, DocKind)>,
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
        if let (Some((provider, kind)), Some(worker)) =
            (self.fetches.remove(&token), self.worker.clone())
        {
            worker.complete_fetch(
                self,
                provider,
                kind,
                body_size,
                now(self).as_millis() as u64,
            );
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
        self.worker = Some(Rc::new(Worker::new(settings)));
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
        let Some(worker) = self.worker.clone() else {
            return;
        };
        worker.sync();
        let now_ms = now(self).as_millis() as u64;
        for provider in 0..worker.settings.providers.len() {
            for kind in DocKind::ALL {
                if let Some(token) =
                    worker.start_fetch(self, provider, kind, FetchTrigger::Scheduled, now_ms)
                {
                    self.fetches.insert(token, (provider, kind));
                }
            }
        }
        let limits = &worker.settings.rate_limits;
        if !limits.policies.is_empty() || limits.brute_force.is_some() {
            // Reclaims idle counters; workers take turns through a shared cursor.
            if let Some(first) = limits
                .table
                .claim_sweep(&EnvoySharedData, SWEEP_SLOTS_PER_TICK)
            {
                let removed =
                    limits
                        .table
                        .sweep(&EnvoySharedData, first, SWEEP_SLOTS_PER_TICK, now_ms);
                worker.metrics.churn(&Churn {
                    entries_delta: -(removed as i64),
                    evicted: 0,
                });
            }
        }
        let period = if worker.loading() {
            TICK_LOADING
        } else {
            TICK_STEADY
        };
        if self.tick != Some(period) {
            self.set_tick_period(period);
            self.tick = Some(period);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.clone()?;
        Some(Box::new(TollgateHttp::new(worker)))
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

/// Uses Envoy's `verify_signature` when it is there and agrees with the pure
/// backend on a token signed here and now; otherwise verifies in the VM.
fn choose_verifier(backend: SignatureBackend) -> Box<dyn SignatureVerifier> {
    if backend == SignatureBackend::PureRust {
        log::info!("signatures verified in pure Rust (signature_backend: pure_rust)");
        return Box::new(PureVerifier);
    }
    let host = HostVerifier {
        host: EnvoyForeignFunction,
    };
    match host_self_test(&host) {
        Ok(()) => {
            log::info!("RS*/ES* signatures verified by Envoy's BoringSSL (verify_signature)");
            Box::new(host)
        }
        Err(why) => {
            log::warn!("host verify_signature unusable ({why}); verifying in pure Rust");
            Box::new(PureVerifier)
        }
    }
}

fn host_self_test(host: &HostVerifier<EnvoyForeignFunction>) -> Result<(), String> {
    let key = ES256KeyPair::generate().with_key_id("self-test");
    let token = key
        .sign(Claims::create(jwt_simple::prelude::Duration::from_mins(1)))
        .map_err(|e| e.to_string())?;
    let point = key.public_key().public_key().to_bytes_uncompressed();
    let (x, y) = (
        point.get(1..33).unwrap_or_default(),
        point.get(33..65).unwrap_or_default(),
    );
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "self-test",
        "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)}]});
    let (set, _) = parse_jwks(
        jwks.to_string().as_bytes(),
        KeySource::Remote,
        &[Algorithm::ES256],
        Strictness::Strict,
    )
    .map_err(|e| e.to_string())?;
    let decoded = decode(&token).map_err(|r| r.as_str().to_string())?;
    let forged = {
        let mut sig = decoded.signature.clone();
        if let Some(b) = sig.last_mut() {
            *b ^= 1;
        }
        sig
    };
    let key = set.keys.first().ok_or("no self-test key")?;
    if !host.verify(&decoded, key) {
        return Err("it is missing or rejected a valid ES256 signature".to_string());
    }
    let tampered = crate::jwt::DecodedToken {
        signature: forged,
        ..decoded
    };
    if host.verify(&tampered, key) {
        return Err("accepted a forged ES256 signature".to_string());
    }
    Ok(())
}
