//! One worker's state: the settings, the signature backend, the token cache,
//! and the remote documents (JWKS, revocation lists, the API-key set), with the
//! fetch cycle that keeps them loaded. Each Envoy worker runs its own VM, so
//! each has one `Worker`; documents are shared between workers through shared
//! data (see `remote`).

use crate::anomaly::Watch;
use crate::apikey::KeySet as ApiKeySet;
use crate::client_cert::CertificateSnapshot;
use crate::config::{ApiKeySource, ProviderId, ProviderKeys, Settings};
use crate::credentials::RequestView;
use crate::crypto::SignatureVerifier;
use crate::host::{CalloutError, Host, SharedData};
use crate::jwk::{parse_jwks, KeySet, KeySource, Strictness};
use crate::pipeline::{Authorizer, Outcome, RemoteState};
use crate::ratelimit::table::Churn;
use crate::remote::{Completion, FetchPolicy, FetchResult, FetchTrigger, RemoteDoc};
use crate::revocation::RevocationList;
use crate::token_cache::TokenCache;
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Duration;

/// Tick while some remote documents are still missing, and once all are loaded.
pub const TICK_LOADING: Duration = Duration::from_millis(200);
pub const TICK_STEADY: Duration = Duration::from_secs(1);

/// Rate-limit table slots swept per tick (per worker): the default 8192-slot
/// table is swept every 16 s by one worker, faster by several.
const SWEEP_SLOTS_PER_TICK: u32 = 512;

/// Requests one worker holds while a key fetch they wait for is underway;
/// past this, requests with unknown keys are decided at once (`401`).
pub const MAX_PARKED: usize = 256;

/// Unknown `kid`s remembered per worker, so that a `kid` a fetch did not
/// find is refused at once instead of fetching again.
const KIDS_REMEMBERED: usize = 64;

/// A request held until a document fetch ends (see [`Step::Park`]): what the
/// pipeline needs to decide it again, owned.
///
/// [`Step::Park`]: crate::pipeline::Step::Park
#[derive(Debug)]
pub struct ParkedRequest {
    /// The host's id for the request's context.
    pub context: u32,
    pub doc: DocId,
    /// From `Step::Park`.
    pub received_us: u64,
    pub headers: Vec<(String, Vec<u8>)>,
    pub client_ip: Option<String>,
    /// Read before parking: another context decides the request later.
    pub client_cert: CertificateSnapshot,
}

impl ParkedRequest {
    pub fn view(&self) -> RequestView<'_> {
        let header = |name: &str| {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
                .unwrap_or("")
        };
        RequestView {
            method: header(":method"),
            path: header(":path"),
            headers: &self.headers,
            client_ip: self.client_ip.as_deref(),
            client_cert: Some(&self.client_cert),
            received_us: self.received_us,
        }
    }
}

/// What a tick did: fetches started (with their callout tokens), requests to
/// decide again, and the tick period to use next.
pub struct Tick {
    pub started: Vec<(u32, DocId)>,
    pub woken: Vec<ParkedRequest>,
    pub period: Duration,
}

/// The kinds of remote document, for stats and size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    Keys,
    Revocations,
    ApiKeys,
}

impl DocKind {
    pub const ALL: [DocKind; 3] = [DocKind::Keys, DocKind::Revocations, DocKind::ApiKeys];

    pub fn name(self) -> &'static str {
        match self {
            DocKind::Keys => "jwks",
            DocKind::Revocations => "revocations",
            DocKind::ApiKeys => "api_keys",
        }
    }

    /// Largest document accepted.
    pub fn max_bytes(self) -> usize {
        match self {
            DocKind::Keys => 512 * 1024,
            DocKind::Revocations | DocKind::ApiKeys => 16 * 1024 * 1024,
        }
    }
}

/// One remote document of this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocId {
    /// A provider's JWKS.
    Keys(ProviderId),
    /// A provider's revocation list.
    Revocations(ProviderId),
    /// The API-key set.
    ApiKeys,
}

impl DocId {
    pub fn kind(self) -> DocKind {
        match self {
            DocId::Keys(_) => DocKind::Keys,
            DocId::Revocations(_) => DocKind::Revocations,
            DocId::ApiKeys => DocKind::ApiKeys,
        }
    }
}

/// A callout's answer, as the host read it.
#[derive(Debug)]
pub enum FetchResponse {
    Body(Vec<u8>, Option<String>),
    NotModified,
    Failed(String),
}

impl FetchResponse {
    fn as_result(&self) -> FetchResult<'_> {
        match self {
            FetchResponse::Body(body, etag) => FetchResult::Body {
                body,
                etag: etag.as_deref(),
            },
            FetchResponse::NotModified => FetchResult::NotModified,
            FetchResponse::Failed(e) => FetchResult::Failed(e.clone()),
        }
    }
}

/// The remote documents of one provider on this worker.
#[derive(Default)]
struct ProviderDocs {
    keys: Option<RemoteDoc<KeySet>>,
    revocations: Option<RemoteDoc<RevocationList>>,
}

pub struct Worker {
    pub settings: Settings,
    verifier: Box<dyn SignatureVerifier>,
    /// Indexed like `settings.providers`.
    docs: RefCell<Vec<ProviderDocs>>,
    /// The API-key set, when it is fetched rather than inline.
    api_keys: RefCell<Option<RemoteDoc<ApiKeySet>>>,
    token_cache: RefCell<TokenCache>,
    /// `kid`s that started a key fetch, per provider, with when.
    kids_fetched: RefCell<Vec<(ProviderId, String, u64)>>,
    parked: RefCell<Vec<ParkedRequest>>,
    /// This worker's part of the anomaly signals.
    pub(crate) watch: Watch,
    /// Allowed requests owed an audit event (`audit.allow_sample_rate`).
    sampled: Cell<f64>,
}

impl Worker {
    pub fn new(settings: Settings, verifier: Box<dyn SignatureVerifier>) -> Worker {
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
                            move |body, _now_ms| {
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
                    RemoteDoc::new(
                        "revocations",
                        src.endpoint.clone(),
                        src.policy,
                        |body, now_ms| RevocationList::parse(body, now_ms / 1000),
                    )
                }),
            })
            .collect();
        let api_keys = match settings.api_keys.as_ref().map(|k| &k.key_set) {
            Some(ApiKeySource::Remote(src)) => Some(RemoteDoc::new(
                "api_keys",
                src.endpoint.clone(),
                src.policy,
                |body, _now_ms| {
                    ApiKeySet::parse(body).map_err(|e| format!("unusable API key set: {e}"))
                },
            )),
            _ => None,
        };
        let (entries, bytes) = settings.token_cache;
        Worker {
            token_cache: RefCell::new(TokenCache::new(entries, bytes)),
            verifier,
            settings,
            docs: RefCell::new(docs),
            api_keys: RefCell::new(api_keys),
            kids_fetched: RefCell::new(Vec::new()),
            parked: RefCell::new(Vec::new()),
            watch: Watch::default(),
            sampled: Cell::new(0.0),
        }
    }

    /// Whether this allowed request gets an audit event: exactly
    /// `allow_sample_rate` of them do, evenly spread.
    pub(crate) fn sample_allow(&self) -> bool {
        let rate = self.settings.audit.allow_sample_rate;
        if rate >= 1.0 {
            return true;
        }
        let owed = self.sampled.get() + rate;
        let take = owed >= 1.0;
        self.sampled.set(if take { owed - 1.0 } else { owed });
        take
    }

    /// Remembers that `kid` started (or waits for) a fetch of the provider's keys.
    pub(crate) fn note_kid_fetched(&self, provider: ProviderId, kid: Option<&str>, now_ms: u64) {
        let mut kids = self.kids_fetched.borrow_mut();
        let kid = kid.unwrap_or_default();
        kids.retain(|(p, k, _)| !(*p == provider && k == kid));
        if kids.len() >= KIDS_REMEMBERED {
            kids.remove(0);
        }
        kids.push((provider, kid.to_string(), now_ms));
    }

    /// Whether an unknown `kid` may still ask for a key fetch: one that a fetch
    /// already looked for within `unknown_kid_refetch_interval` may not, unless
    /// that fetch is still underway (then the request waits for it).
    fn may_refetch_for(
        &self,
        provider: ProviderId,
        kid: Option<&str>,
        shared: &dyn SharedData,
        now_ms: u64,
    ) -> bool {
        let docs = self.docs.borrow();
        let Some(keys) = docs.get(provider.0).and_then(|d| d.keys.as_ref()) else {
            return false;
        };
        let kid = kid.unwrap_or_default();
        let tried = self.kids_fetched.borrow().iter().any(|(p, k, at)| {
            *p == provider && k == kid && now_ms.saturating_sub(*at) < keys.policy.on_demand_ms
        });
        // A `kid` noted for a fetch still underway, or still to come (requests are
        // held for it), has not been looked for yet.
        !tried
            || keys.fetch_underway(shared, now_ms)
            || self.holds_requests_for(DocId::Keys(provider))
    }

    /// Whether requests are held for a fetch of `id`.
    fn holds_requests_for(&self, id: DocId) -> bool {
        self.parked.borrow().iter().any(|p| p.doc == id)
    }

    /// Whether some worker is fetching this document now.
    pub(crate) fn fetch_underway(&self, shared: &dyn SharedData, id: DocId, now_ms: u64) -> bool {
        self.with_doc(id, |doc| doc.underway(shared, now_ms))
            .unwrap_or(false)
    }

    /// Whether requests need their client address looked up (a host call): a
    /// decision can need it ([`Settings::uses_client_ip`]), or the fetched API-key
    /// set binds keys to address blocks.
    pub fn needs_client_ip(&self) -> bool {
        self.settings.uses_client_ip
            || self
                .api_keys
                .borrow()
                .as_ref()
                .and_then(RemoteDoc::held)
                .is_some_and(ApiKeySet::binds_addresses)
    }

    /// Whether an API-key set is fetched: a request held for a fetch may then be
    /// decided on a key set that binds addresses, so its address is looked up
    /// before it waits.
    pub fn fetches_api_keys(&self) -> bool {
        self.api_keys.borrow().is_some()
    }

    /// Whether another request may be parked.
    pub(crate) fn may_park(&self) -> bool {
        self.parked.borrow().len() < MAX_PARKED
    }

    /// Holds a request until its document's fetch ends.
    pub fn park(&self, request: ParkedRequest) {
        self.parked.borrow_mut().push(request);
    }

    /// Drops a parked request whose stream ended.
    pub fn forget_parked(&self, context: u32) {
        self.parked.borrow_mut().retain(|p| p.context != context);
    }

    fn take_parked(&self, pick: impl Fn(&ParkedRequest) -> bool) -> Vec<ParkedRequest> {
        let mut parked = self.parked.borrow_mut();
        let (woken, kept): (Vec<_>, Vec<_>) = parked.drain(..).partition(|p| pick(p));
        *parked = kept;
        woken
    }

    /// The credential stages for one request, on this worker's current state.
    pub fn authorize(
        &self,
        req: &RequestView<'_>,
        shared: &dyn SharedData,
        now_ms: u64,
        refetch_allowed: bool,
    ) -> Outcome {
        let view = WorkerView {
            worker: self,
            shared,
            now_ms,
            refetch_allowed,
        };
        Authorizer {
            settings: &self.settings,
            remote: &view,
            verifier: self.verifier.as_ref(),
            cache: &self.token_cache,
            now: now_ms / 1000,
        }
        .decide(req)
    }

    /// Every remote document this worker keeps.
    pub fn doc_ids(&self) -> Vec<DocId> {
        let docs = self.docs.borrow();
        let mut ids = Vec::new();
        for (p, d) in docs.iter().enumerate() {
            if d.keys.is_some() {
                ids.push(DocId::Keys(ProviderId(p)));
            }
            if d.revocations.is_some() {
                ids.push(DocId::Revocations(ProviderId(p)));
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
            DocId::Keys(p) => Some(f(self.docs.borrow_mut().get_mut(p.0)?.keys.as_mut()?)),
            DocId::Revocations(p) => Some(f(self
                .docs
                .borrow_mut()
                .get_mut(p.0)?
                .revocations
                .as_mut()?)),
            DocId::ApiKeys => Some(f(self.api_keys.borrow_mut().as_mut()?)),
        }
    }

    /// Starts fetching a document if this worker wins the claim. Returns the
    /// callout token; the answer goes to [`Self::complete_fetch`].
    pub fn start_fetch(
        &self,
        host: Host<'_>,
        id: DocId,
        trigger: FetchTrigger,
        now_ms: u64,
    ) -> Option<u32> {
        let started = self.with_doc(id, |doc| doc.start(host, trigger, now_ms))?;
        started.unwrap_or_else(|(err, message)| {
            if err == CalloutError::UnknownCluster {
                self.unknown_cluster(host, id);
            }
            self.report(host, id, &Completion::Failed(message), now_ms);
            None
        })
    }

    /// A fetch whose cluster Envoy does not have: counted every time, logged
    /// once per Envoy and cluster, naming the field to fix.
    fn unknown_cluster(&self, host: Host<'_>, id: DocId) {
        host.metrics.unknown_cluster();
        let Some(cluster) = self.with_doc(id, |doc| doc.cluster().to_string()) else {
            return;
        };
        let flag = format!("tollgate/unknown-cluster/{cluster}");
        if host.shared.get(&flag).is_some() || !host.shared.set(&flag, b"1", None) {
            return;
        }
        let provider = |p: ProviderId| self.settings.provider(p).map_or("?", |p| p.name.as_str());
        let field = match id {
            DocId::Keys(p) => format!("providers.{}.remote_jwks.http_uri.cluster", provider(p)),
            DocId::Revocations(p) => {
                format!("providers.{}.revocation_feed.http_uri.cluster", provider(p))
            }
            DocId::ApiKeys => "api_keys.remote_key_set.http_uri.cluster".to_string(),
        };
        log::error!(
            "`{field}` names cluster `{cluster}`, which is not defined in Envoy: \
             nothing can be fetched from it until it is (requests that need it get 503)"
        );
    }

    /// Feeds a callout's answer into the document and the shared copy. Returns
    /// the requests parked for it, to decide again now.
    pub fn complete_fetch(
        &self,
        host: Host<'_>,
        id: DocId,
        response: &FetchResponse,
    ) -> Vec<ParkedRequest> {
        let now_ms = host.clock.now().as_millis() as u64;
        if let Some(completion) = self.with_doc(id, |doc| {
            doc.complete(host.shared, response.as_result(), now_ms)
        }) {
            self.report(host, id, &completion, now_ms);
        }
        self.take_parked(|p| p.doc == id)
    }

    fn report(&self, host: Host<'_>, id: DocId, completion: &Completion, now_ms: u64) {
        host.metrics.fetch(id.kind(), completion);
        let provider = |p: ProviderId| self.settings.provider(p).map_or("?", |p| p.name.as_str());
        let what = match id {
            DocId::Keys(p) => format!("jwks fetch for provider `{}`", provider(p)),
            DocId::Revocations(p) => format!("revocations fetch for provider `{}`", provider(p)),
            DocId::ApiKeys => "api_keys fetch".to_string(),
        };
        if !matches!(completion, Completion::Failed(_)) {
            self.with_doc(id, |doc| doc.failures_over(host.shared));
        }
        match completion {
            Completion::Loaded => {
                let size = self.with_doc(id, |doc| doc.size()).flatten().unwrap_or(0);
                match id {
                    DocId::Keys(p) => {
                        log::info!(
                            "loaded {size} signing key(s) for provider `{}`",
                            provider(p)
                        )
                    }
                    DocId::Revocations(p) => log::info!(
                        "loaded revocation list for provider `{}`: {size} revoked token(s)",
                        provider(p)
                    ),
                    DocId::ApiKeys => log::info!("loaded API key set: {size} key(s)"),
                }
            }
            Completion::Unchanged => log::debug!("{what}: unchanged"),
            Completion::Failed(e) => {
                // The first failure of a streak, then one line a minute.
                let Some(count) = self
                    .with_doc(id, |doc| doc.failure_to_report(host.shared, now_ms))
                    .flatten()
                else {
                    return;
                };
                let since = if count > 1 {
                    format!(" ({count} failures since the last report)")
                } else {
                    String::new()
                };
                match self.with_doc(id, |doc| doc.loaded_at_ms()).flatten() {
                    Some(at) => log::warn!(
                        "{what} failed, keeping the last good copy (fetched {} s ago){since}: {e}",
                        now_ms.saturating_sub(at) / 1000
                    ),
                    None => log::warn!(
                        "{what} failed, and no copy has loaded yet: requests that need it get 503{since}: {e}"
                    ),
                }
            }
        }
    }

    /// Picks up documents other workers fetched. Returns the ones that changed.
    pub fn sync(&self, shared: &dyn SharedData, now_ms: u64) -> Vec<DocId> {
        self.doc_ids()
            .into_iter()
            .filter(|&id| {
                self.with_doc(id, |doc| doc.sync(shared, now_ms))
                    .unwrap_or(false)
            })
            .collect()
    }

    /// How long a request may stay parked for a document with no fetch
    /// underway: until the on-demand budget allows the next fetch (a tick starts
    /// it), and a tick more. Past that it is decided with what the worker has.
    fn longest_park_ms(&self, id: DocId) -> u64 {
        let spacing = self
            .with_doc(id, |doc| doc.policy().on_demand_spacing_ms())
            .unwrap_or(0);
        spacing + 2 * TICK_STEADY.as_millis() as u64
    }

    fn loading(&self) -> bool {
        self.doc_ids().into_iter().any(|id| {
            self.with_doc(id, |doc| doc.size().is_none())
                .unwrap_or(false)
        })
    }

    /// The periodic work: pick up documents other workers fetched, start the
    /// fetches that are due (returned with their callout tokens), and sweep a
    /// share of the rate-limit table. Returns the tick period to use next.
    pub fn on_tick(&self, host: Host<'_>) -> Tick {
        let now_ms = host.clock.now().as_millis() as u64;
        let changed = self.sync(host.shared, now_ms);
        // Requests parked for a document no worker is fetching (the on-demand
        // budget was spent when they came, or the fetch they waited for ended
        // without what they need): a fetch on demand as soon as the budget allows.
        let mut started: Vec<(u32, DocId)> = Vec::new();
        let mut waiting: Vec<DocId> = Vec::new();
        for p in self.parked.borrow().iter() {
            if !waiting.contains(&p.doc) {
                waiting.push(p.doc);
            }
        }
        for id in waiting {
            if !changed.contains(&id) && !self.fetch_underway(host.shared, id, now_ms) {
                if let Some(token) = self.start_fetch(host, id, FetchTrigger::OnDemand, now_ms) {
                    started.push((token, id));
                }
            }
        }
        // Parked requests are decided with what the worker has now once their
        // document changed, or once they have waited as long as a fetch can take
        // to be allowed.
        let woken = self.take_parked(|p| {
            changed.contains(&p.doc)
                || (!self.fetch_underway(host.shared, p.doc, now_ms)
                    && (now_ms * 1000).saturating_sub(p.received_us)
                        > self.longest_park_ms(p.doc) * 1000)
        });
        started.extend(self.doc_ids().into_iter().filter_map(|id| {
            self.start_fetch(host, id, FetchTrigger::Scheduled, now_ms)
                .map(|token| (token, id))
        }));
        self.watch.sync(&self.settings.anomalies, host.shared);
        let (hits, misses) = self.token_cache.borrow().take_counts();
        if hits + misses > 0 {
            host.metrics.token_cache(hits, misses);
        }
        for id in self.doc_ids() {
            if let Some(at) = self.with_doc(id, |doc| doc.loaded_at_ms()).flatten() {
                host.metrics.document_age(id, now_ms.saturating_sub(at));
            }
        }
        let limits = &self.settings.rate_limits;
        if !limits.policies.is_empty()
            || limits.brute_force.is_some()
            || self.settings.anomalies.any()
        {
            // Reclaims idle counters; workers take turns through a shared cursor.
            if let Some(first) = limits.table.claim_sweep(host.shared, SWEEP_SLOTS_PER_TICK) {
                let removed = limits
                    .table
                    .sweep(host.shared, first, SWEEP_SLOTS_PER_TICK, now_ms);
                host.metrics.churn(&Churn {
                    entries_delta: -(removed as i64),
                    evicted: 0,
                });
            }
        }
        let period = if self.loading() {
            TICK_LOADING
        } else {
            TICK_STEADY
        };
        Tick {
            started,
            woken,
            period,
        }
    }
}

/// The worker's remote documents, as one request's decision sees them.
struct WorkerView<'a> {
    worker: &'a Worker,
    shared: &'a dyn SharedData,
    now_ms: u64,
    refetch_allowed: bool,
}

impl RemoteState for WorkerView<'_> {
    fn remote_keys(&self, provider: ProviderId) -> Option<Arc<KeySet>> {
        self.worker
            .docs
            .borrow()
            .get(provider.0)?
            .keys
            .as_ref()?
            .value()
    }

    fn may_refetch(&self, provider: ProviderId, kid: Option<&str>) -> bool {
        self.refetch_allowed
            && self
                .worker
                .may_refetch_for(provider, kid, self.shared, self.now_ms)
    }

    fn api_keys(&self) -> Option<Arc<ApiKeySet>> {
        self.worker.api_keys.borrow().as_ref()?.value()
    }

    fn revocations(&self, provider: ProviderId) -> Option<Arc<RevocationList>> {
        self.worker
            .docs
            .borrow()
            .get(provider.0)?
            .revocations
            .as_ref()?
            .value()
    }
}

/// What the worker does with any remote document, whatever it parses into.
trait AnyDoc {
    fn start(
        &mut self,
        host: Host<'_>,
        trigger: FetchTrigger,
        now_ms: u64,
    ) -> Result<Option<u32>, (CalloutError, String)>;
    fn complete(
        &mut self,
        shared: &dyn SharedData,
        result: FetchResult<'_>,
        now_ms: u64,
    ) -> Completion;
    fn sync(&mut self, shared: &dyn SharedData, now_ms: u64) -> bool;
    fn underway(&self, shared: &dyn SharedData, now_ms: u64) -> bool;
    fn policy(&self) -> FetchPolicy;
    /// Entries in the loaded document, `None` before one loads.
    fn size(&self) -> Option<usize>;
    /// When the loaded document was fetched, `None` before one loads.
    fn loaded_at_ms(&self) -> Option<u64>;
    fn cluster(&self) -> &str;
    fn failure_to_report(&self, shared: &dyn SharedData, now_ms: u64) -> Option<u64>;
    fn failures_over(&self, shared: &dyn SharedData);
}

/// Documents that can say how many entries they hold, for logs.
trait Countable {
    fn entries(&self) -> usize;
}

impl Countable for KeySet {
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
    /// Claims the fetch and dispatches it. `Ok(None)`: another worker has it, or
    /// it is not due. `Err`: the dispatch itself failed (already recorded).
    fn start(
        &mut self,
        host: Host<'_>,
        trigger: FetchTrigger,
        now_ms: u64,
    ) -> Result<Option<u32>, (CalloutError, String)> {
        if !self.try_claim_fetch(host.shared, now_ms, trigger) {
            return Ok(None);
        }
        match host.callouts.get(&self.endpoint, self.etag()) {
            Ok(token) => Ok(Some(token)),
            Err(err) => {
                let message = match &err {
                    CalloutError::UnknownCluster => {
                        format!("Envoy has no cluster `{}`", self.endpoint.cluster)
                    }
                    CalloutError::Failed(e) => {
                        format!("cannot call cluster `{}`: {e}", self.endpoint.cluster)
                    }
                };
                self.complete_fetch(host.shared, now_ms, FetchResult::Failed(message.clone()));
                Err((err, message))
            }
        }
    }

    fn complete(
        &mut self,
        shared: &dyn SharedData,
        result: FetchResult<'_>,
        now_ms: u64,
    ) -> Completion {
        self.complete_fetch(shared, now_ms, result)
    }

    fn sync(&mut self, shared: &dyn SharedData, now_ms: u64) -> bool {
        RemoteDoc::sync(self, shared, now_ms)
    }

    fn underway(&self, shared: &dyn SharedData, now_ms: u64) -> bool {
        self.fetch_underway(shared, now_ms)
    }

    fn policy(&self) -> FetchPolicy {
        self.policy
    }

    fn size(&self) -> Option<usize> {
        self.value().map(|v| v.entries())
    }

    fn loaded_at_ms(&self) -> Option<u64> {
        self.fetched_at()
    }

    fn cluster(&self) -> &str {
        &self.endpoint.cluster
    }

    fn failure_to_report(&self, shared: &dyn SharedData, now_ms: u64) -> Option<u64> {
        RemoteDoc::failure_to_report(self, shared, now_ms)
    }

    fn failures_over(&self, shared: &dyn SharedData) {
        RemoteDoc::failures_over(self, shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::crypto::PureVerifier;
    use crate::host::fakes::FakeHost;
    use crate::jwk::tests::es256_jwk;
    use jwt_simple::prelude::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn worker() -> Worker {
        let config = json!({
            "providers": {"idp": {"issuer": "https://idp.test",
                "remote_jwks": {"http_uri": {"uri": "http://idp/jwks", "cluster": "idp"}}}},
            "rules": [{"match": {"prefix": "/"}, "requires": {}}]
        });
        Worker::new(
            parse(config.to_string().as_bytes()).unwrap(),
            Box::new(PureVerifier),
        )
    }

    #[test]
    fn a_fetched_key_set_that_binds_addresses_makes_requests_need_theirs() {
        let jwks = json!({"keys": [es256_jwk(&ES256KeyPair::generate(), "k")]}).to_string();
        let config = json!({
            "providers": {"idp": {"issuer": "https://idp.test",
                "local_jwks": {"inline_string": jwks}}},
            "api_keys": {"remote_key_set": {"http_uri": {"uri": "http://ts/keys", "cluster": "ts"}}},
            "rules": [{"match": {"prefix": "/"}, "requires": {"credentials": ["api_key"]}}]
        });
        let w = Worker::new(
            parse(config.to_string().as_bytes()).unwrap(),
            Box::new(PureVerifier),
        );
        let host = FakeHost::at_secs(NOW);
        assert!(w.fetches_api_keys());
        assert!(!w.needs_client_ip(), "no key set yet: nothing to judge");
        let (_, doc) = w.on_tick(host.host()).started[0];
        let load = |cidrs: serde_json::Value| {
            let set = json!({"consumers": [{"id": "c", "scopes": [], "keys": [
                {"id": "k", "hash": "ab".repeat(32), "allowed_cidrs": cidrs}]}]});
            let body = FetchResponse::Body(set.to_string().into_bytes(), None);
            w.complete_fetch(host.host(), doc, &body);
        };
        load(json!([]));
        assert!(!w.needs_client_ip(), "no key is bound to addresses");
        load(json!(["203.0.113.0/24"]));
        assert!(w.needs_client_ip());
        load(json!([]));
        assert!(!w.needs_client_ip());
    }

    #[test]
    fn document_ages_are_reported_on_tick_once_a_copy_loaded() {
        let (w, host) = (worker(), FakeHost::at_secs(NOW));
        let tick = w.on_tick(host.host());
        assert!(
            host.metrics.ages.borrow().is_empty(),
            "no age before a copy"
        );
        let (_, doc) = tick.started[0];
        let key = ES256KeyPair::generate();
        let jwks = json!({"keys": [es256_jwk(&key, "k")]}).to_string();
        w.complete_fetch(
            host.host(),
            doc,
            &FetchResponse::Body(jwks.into_bytes(), None),
        );
        host.clock
            .as_ref()
            .unwrap()
            .advance(std::time::Duration::from_secs(5));
        w.on_tick(host.host());
        assert_eq!(*host.metrics.ages.borrow(), [(doc, 5_000)]);
    }

    #[test]
    fn a_cluster_envoy_does_not_have_is_counted_each_time_and_flagged_once() {
        let (w, host) = (worker(), FakeHost::at_secs(NOW));
        *host.callouts.refuse.borrow_mut() = Some(CalloutError::UnknownCluster);
        for _ in 0..3 {
            w.on_tick(host.host());
            host.clock
                .as_ref()
                .unwrap()
                .advance(std::time::Duration::from_secs(2));
        }
        assert_eq!(host.metrics.unknown_clusters.get(), 3, "every attempt");
        assert!(
            host.shared.get("tollgate/unknown-cluster/idp").is_some(),
            "the one-line-per-Envoy flag"
        );
        let failed = host
            .metrics
            .fetches
            .borrow()
            .iter()
            .filter(|(_, c)| matches!(c, Completion::Failed(e) if e.contains("no cluster `idp`")))
            .count();
        assert_eq!(failed, 3);
    }

    #[test]
    fn token_cache_lookups_are_reported_on_tick() {
        let (w, host) = (worker(), FakeHost::at_secs(NOW));
        w.token_cache.borrow().count(true);
        w.token_cache.borrow().count(false);
        w.token_cache.borrow().count(true);
        w.on_tick(host.host());
        w.on_tick(host.host());
        assert_eq!(host.metrics.cache.get(), (2, 1));
    }
}
