//! The root context: one per worker VM. Parses the configuration, picks the
//! signature backend, and keeps remote documents (JWKS, revocation lists)
//! loaded (see `crate::remote`).

use super::fetch::{self, DocId, ProviderDocs};
use super::host::{EnvoyForeignFunction, EnvoySharedData};
use super::http::TollgateHttp;
use super::metrics::Metrics;
use jwt_simple::prelude::*;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};
use tollgate_core::alg::Algorithm;
use tollgate_core::apikey::KeySet as ApiKeySet;
use tollgate_core::config::{self, ApiKeySource, ProviderKeys, Settings, SignatureBackend};
use tollgate_core::crypto::{HostVerifier, PureVerifier, SignatureVerifier};
use tollgate_core::jwk::{parse_jwks, KeySource, Strictness};
use tollgate_core::jwt::decode;
use tollgate_core::ratelimit::table::Churn;
use tollgate_core::remote::{Completion, FetchTrigger, RemoteDoc};
use tollgate_core::revocation::RevocationList;
use tollgate_core::token_cache::TokenCache;

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
    /// The API-key set, when it is fetched rather than inline.
    pub api_keys: RefCell<Option<RemoteDoc<ApiKeySet>>>,
    pub token_cache: RefCell<TokenCache>,
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
        let api_keys = match settings.api_keys.as_ref().map(|k| &k.key_set) {
            Some(ApiKeySource::Remote(src)) => Some(RemoteDoc::new(
                "api_keys",
                src.endpoint.clone(),
                src.policy,
                |body| ApiKeySet::parse(body).map_err(|e| format!("unusable API key set: {e}")),
            )),
            _ => None,
        };
        let (entries, bytes) = settings.token_cache;
        Worker {
            token_cache: RefCell::new(TokenCache::new(entries, bytes)),
            verifier: choose_verifier(settings.signature_backend),
            settings,
            metrics: Metrics::define(),
            docs: RefCell::new(docs),
            api_keys: RefCell::new(api_keys),
        }
    }

    /// Every remote document this worker keeps.
    pub fn doc_ids(&self) -> Vec<DocId> {
        let docs = self.docs.borrow();
        let mut ids = Vec::new();
        for (p, d) in docs.iter().enumerate() {
            if d.keys.is_some() {
                ids.push(DocId::Keys(p));
            }
            if d.revocations.is_some() {
                ids.push(DocId::Revocations(p));
            }
        }
        if self.api_keys.borrow().is_some() {
            ids.push(DocId::ApiKeys);
        }
        ids
    }

    /// Runs `f` on a document, whatever its type.
    fn with_doc<R>(&self, id: DocId, f: impl FnOnce(&mut dyn AnyDoc) -> R) -> Option<R> {
        match id {
            DocId::Keys(p) => Some(f(self.docs.borrow_mut().get_mut(p)?.keys.as_mut()?)),
            DocId::Revocations(p) => Some(f(self
                .docs
                .borrow_mut()
                .get_mut(p)?
                .revocations
                .as_mut()?)),
            DocId::ApiKeys => Some(f(self.api_keys.borrow_mut().as_mut()?)),
        }
    }

    /// Starts fetching a document if this worker wins the claim. Returns the
    /// callout token; the response goes back to `complete_fetch`.
    pub fn start_fetch(
        &self,
        ctx: &dyn Context,
        id: DocId,
        trigger: FetchTrigger,
        now_ms: u64,
    ) -> Option<u32> {
        let started = self.with_doc(id, |doc| doc.start(ctx, trigger, now_ms))?;
        started.unwrap_or_else(|err| {
            self.report(id, &Completion::Failed(err));
            None
        })
    }

    /// Feeds a callout's answer into the document cache and the shared copy.
    pub fn complete_fetch(&self, ctx: &dyn Context, id: DocId, body_size: usize, now_ms: u64) {
        let response = fetch::read_response(ctx, id.kind(), body_size);
        if let Some(completion) = self.with_doc(id, |doc| doc.complete(&response, now_ms)) {
            self.report(id, &completion);
        }
    }

    fn report(&self, id: DocId, completion: &Completion) {
        self.metrics.fetch(id.kind(), completion);
        let what = match id {
            DocId::Keys(p) => format!(
                "jwks fetch for provider `{}`",
                self.settings.providers[p].name
            ),
            DocId::Revocations(p) => {
                format!(
                    "revocations fetch for provider `{}`",
                    self.settings.providers[p].name
                )
            }
            DocId::ApiKeys => "api_keys fetch".to_string(),
        };
        match completion {
            Completion::Loaded => {
                let size = self.with_doc(id, |doc| doc.size()).flatten().unwrap_or(0);
                match id {
                    DocId::Keys(p) => log::info!(
                        "loaded {size} signing key(s) for provider `{}`",
                        self.settings.providers[p].name
                    ),
                    DocId::Revocations(p) => log::info!(
                        "loaded revocation list for provider `{}`: {size} revoked token(s)",
                        self.settings.providers[p].name
                    ),
                    DocId::ApiKeys => log::info!("loaded API key set: {size} key(s)"),
                }
            }
            Completion::Unchanged => log::debug!("{what}: unchanged"),
            Completion::Failed(e) => {
                log::warn!("{what} failed, keeping the last good copy: {e}")
            }
        }
    }

    /// Picks up documents other workers fetched. True if any changed.
    pub fn sync(&self) -> bool {
        let mut changed = false;
        for id in self.doc_ids() {
            changed |= self.with_doc(id, |doc| doc.sync()).unwrap_or(false);
        }
        changed
    }

    fn loading(&self) -> bool {
        self.doc_ids().into_iter().any(|id| {
            self.with_doc(id, |doc| doc.size().is_none())
                .unwrap_or(false)
        })
    }
}

/// What the worker does with any remote document, whatever it parses into.
trait AnyDoc {
    fn start(
        &mut self,
        ctx: &dyn Context,
        trigger: FetchTrigger,
        now_ms: u64,
    ) -> Result<Option<u32>, String>;
    fn complete(&mut self, response: &fetch::Response, now_ms: u64) -> Completion;
    fn sync(&mut self) -> bool;
    /// Entries in the loaded document, `None` before one loads.
    fn size(&self) -> Option<usize>;
}

/// Documents that can say how many entries they hold, for logs.
trait Countable {
    fn entries(&self) -> usize;
}

impl Countable for tollgate_core::jwk::KeySet {
    fn entries(&self) -> usize {
        self.keys.len()
    }
}

impl Countable for RevocationList {
    fn entries(&self) -> usize {
        self.len()
    }
}

impl Countable for ApiKeySet {
    fn entries(&self) -> usize {
        self.len()
    }
}

impl<T: Countable> AnyDoc for RemoteDoc<T> {
    fn start(
        &mut self,
        ctx: &dyn Context,
        trigger: FetchTrigger,
        now_ms: u64,
    ) -> Result<Option<u32>, String> {
        fetch::start(ctx, self, trigger, now_ms)
    }

    fn complete(&mut self, response: &fetch::Response, now_ms: u64) -> Completion {
        self.complete_fetch(&EnvoySharedData, now_ms, response.as_result())
    }

    fn sync(&mut self) -> bool {
        RemoteDoc::sync(self, &EnvoySharedData)
    }

    fn size(&self) -> Option<usize> {
        self.value().map(|v| v.entries())
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
        if let (Some(id), Some(worker)) = (self.fetches.remove(&token), self.worker.clone()) {
            worker.complete_fetch(self, id, body_size, now(self).as_millis() as u64);
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
        for id in worker.doc_ids() {
            if let Some(token) = worker.start_fetch(self, id, FetchTrigger::Scheduled, now_ms) {
                self.fetches.insert(token, id);
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
    let tampered = tollgate_core::jwt::DecodedToken {
        signature: forged,
        ..decoded
    };
    if host.verify(&tampered, key) {
        return Err("accepted a forged ES256 signature".to_string());
    }
    Ok(())
}
