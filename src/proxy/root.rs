//! The root context: one per worker VM. Parses the configuration, picks the
//! signature backend, and keeps remote JWKS loaded (see `jwks_sync`).

use super::host::{EnvoyForeignFunction, EnvoySharedData};
use super::http::TollgateHttp;
use crate::alg::Algorithm;
use crate::config::{self, ProviderKeys, Settings, SignatureBackend};
use crate::crypto::{HostVerifier, PureVerifier, SignatureVerifier};
use crate::jwk::{parse_jwks, KeySource, Strictness};
use crate::jwks_sync::{FetchTrigger, RemoteKeys};
use crate::jwt::decode;
use jwt_simple::prelude::*;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

/// Largest JWKS document accepted from a key endpoint.
pub const MAX_JWKS_BYTES: usize = 512 * 1024;

/// Tick while some remote keys are still missing, and once all are loaded.
const TICK_LOADING: Duration = Duration::from_millis(200);
const TICK_STEADY: Duration = Duration::from_secs(1);

/// What the root context shares with its HTTP contexts (same VM, same thread).
pub struct Worker {
    pub settings: Settings,
    pub verifier: Box<dyn SignatureVerifier>,
    /// Indexed like `settings.providers`; `None` for local providers.
    pub remote: RefCell<Vec<Option<RemoteKeys>>>,
}

impl Worker {
    /// Starts a JWKS fetch for `provider` if this worker wins the claim.
    /// Returns the callout token; the caller routes the response back to
    /// `complete_fetch`.
    pub fn start_fetch(
        &self,
        ctx: &dyn Context,
        provider: usize,
        trigger: FetchTrigger,
        now_ms: u64,
    ) -> Option<u32> {
        let mut remote = self.remote.borrow_mut();
        let keys = remote.get_mut(provider)?.as_mut()?;
        if !keys.try_claim_fetch(&EnvoySharedData, now_ms, trigger) {
            return None;
        }
        let src = keys.source.clone();
        let headers = vec![
            (":method", "GET"),
            (":path", src.path.as_str()),
            (":authority", src.authority.as_str()),
            ("accept", "application/json"),
        ];
        match ctx.dispatch_http_call(
            &src.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(src.timeout_ms),
        ) {
            Ok(token) => Some(token),
            Err(status) => {
                let err = format!("cannot call cluster `{}`: {status:?}", src.cluster);
                log::warn!(
                    "JWKS fetch for provider `{}` failed: {err}",
                    self.settings.providers[provider].name
                );
                let _ = keys.complete_fetch(&EnvoySharedData, now_ms, Err(err));
                None
            }
        }
    }

    /// Feeds a JWKS response into the key cache and the shared copy.
    pub fn complete_fetch(
        &self,
        ctx: &dyn Context,
        provider: usize,
        body_size: usize,
        now_ms: u64,
    ) {
        let status = ctx
            .get_http_call_response_header_bytes(":status")
            .and_then(|s| String::from_utf8(s).ok())
            .unwrap_or_default();
        let result = if status != "200" {
            Err(if status.is_empty() {
                "no response (timeout or connection failure)".to_string()
            } else {
                format!("HTTP status {status}")
            })
        } else if body_size > MAX_JWKS_BYTES {
            Err(format!("document larger than {MAX_JWKS_BYTES} bytes"))
        } else {
            Ok(ctx
                .get_http_call_response_body(0, body_size)
                .unwrap_or_default())
        };
        let name = &self.settings.providers[provider].name;
        let mut remote = self.remote.borrow_mut();
        let Some(Some(keys)) = remote.get_mut(provider) else {
            return;
        };
        let outcome = match &result {
            Ok(body) => keys.complete_fetch(&EnvoySharedData, now_ms, Ok(body.as_slice())),
            Err(e) => keys.complete_fetch(&EnvoySharedData, now_ms, Err(e.clone())),
        };
        match outcome {
            Ok(count) => {
                log::info!("loaded {count} signing key(s) for provider `{name}`")
            }
            Err(e) => {
                log::warn!("JWKS fetch for provider `{name}` failed, keeping last good keys: {e}")
            }
        }
    }

    /// Picks up key sets other workers fetched. True if any changed.
    pub fn sync_keys(&self) -> bool {
        let mut changed = false;
        for keys in self.remote.borrow_mut().iter_mut().flatten() {
            changed |= keys.sync(&EnvoySharedData);
        }
        changed
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
    /// In-flight scheduled fetches: callout token → provider.
    fetches: HashMap<u32, usize>,
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
        if let (Some(provider), Some(worker)) = (self.fetches.remove(&token), self.worker.clone()) {
            worker.complete_fetch(self, provider, body_size, now(self).as_millis() as u64);
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
        let verifier = choose_verifier(settings.signature_backend);
        let remote = settings
            .providers
            .iter()
            .map(|p| match &p.keys {
                ProviderKeys::Remote(r) => Some(RemoteKeys::new(r.clone(), p.algorithms.clone())),
                ProviderKeys::Local(_) => None,
            })
            .collect();
        self.worker = Some(Rc::new(Worker {
            settings,
            verifier,
            remote: RefCell::new(remote),
        }));
        self.fetches.clear();
        // Fetch from worker ticks only: Envoy also configures a VM on the main
        // thread, and a callout started there would hold the fetch claim
        // without ever completing.
        self.set_tick_period(TICK_LOADING);
        self.tick = Some(TICK_LOADING);
        true
    }

    fn on_tick(&mut self) {
        follow_envoy_log_level();
        let Some(worker) = self.worker.clone() else {
            return;
        };
        worker.sync_keys();
        let now_ms = now(self).as_millis() as u64;
        let count = worker.settings.providers.len();
        for provider in 0..count {
            if let Some(token) = worker.start_fetch(self, provider, FetchTrigger::Scheduled, now_ms)
            {
                self.fetches.insert(token, provider);
            }
        }
        let loading = worker
            .remote
            .borrow()
            .iter()
            .flatten()
            .any(|k| k.keys().is_none());
        let period = if loading { TICK_LOADING } else { TICK_STEADY };
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
