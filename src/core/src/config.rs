//! The plugin configuration: the JSON operators write, read into typed structs,
//! validated, and compiled into [`Settings`] the request path uses as-is.
//!
//! Field names follow Envoy's `jwt_authn` where a counterpart exists
//! (`providers`, `issuer`, `audiences`, `remote_jwks.http_uri`, `local_jwks.inline_string`,
//! `from_headers`, `from_params`, `from_cookies`, `clock_skew_seconds`,
//! `max_lifetime`, `claim_to_headers`, `forward_payload_header`), and durations
//! use protobuf JSON form (`"300s"`, `"1.5s"`). Anything unknown or wrong is an
//! error that names the field, and the plugin refuses to start.

use crate::alg::Algorithm;
use crate::apikey::{KeyHashing, KeySet as ApiKeySet};
use crate::credentials::TokenLocation;
use crate::jwk::{parse_jwks, KeySet, KeySource, Strictness};
use crate::jwt::ClaimRules;
use crate::policy::{ClaimCheck, PathMatch, Requirement, Rule, ScopeRequirement};
use crate::ratelimit::bruteforce::BruteForce;
use crate::ratelimit::gcra::Rate;
use crate::ratelimit::table::SlotTable;
use crate::ratelimit::{LimitKey, Policy};
use crate::remote::{Endpoint, FetchPolicy};
use crate::upstream::MethodOverride;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A configuration error, with the JSON path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() || self.field == "." {
            write!(f, "invalid tollgate configuration: {}", self.message)
        } else {
            write!(
                f,
                "invalid tollgate configuration at `{}`: {}",
                self.field, self.message
            )
        }
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------- raw schema

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    providers: BTreeMap<String, RawProvider>,
    rules: Vec<RawRule>,
    #[serde(default)]
    unmatched: Unmatched,
    #[serde(default)]
    realm: Option<String>,
    #[serde(default)]
    identity: RawIdentity,
    #[serde(default)]
    signature_backend: SignatureBackend,
    #[serde(default)]
    rate_limits: Option<RawRateLimits>,
    #[serde(default)]
    client_ip: RawClientIp,
    #[serde(default)]
    api_keys: Option<RawApiKeys>,
    #[serde(default)]
    token_cache: Option<RawTokenCache>,
    #[serde(default)]
    method_override: MethodOverride,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenCache {
    max_entries: usize,
    max_bytes: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKeys {
    #[serde(default)]
    from_headers: Option<Vec<String>>,
    #[serde(default)]
    bearer_prefix: Option<String>,
    #[serde(default)]
    query_param: Option<String>,
    #[serde(default)]
    pepper: Option<RawLocalJwks>,
    #[serde(default)]
    key_set: Option<RawLocalJwks>,
    #[serde(default)]
    remote_key_set: Option<RawRevocationFeed>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimits {
    #[serde(default)]
    policies: BTreeMap<String, RawPolicy>,
    #[serde(default)]
    brute_force: Option<RawBruteForce>,
    #[serde(default)]
    response_headers: bool,
    #[serde(default)]
    table: Option<RawTable>,
    #[serde(default)]
    plans: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    limit: u64,
    window: String,
    #[serde(default)]
    burst: Option<u64>,
    key: RawLimitKey,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum RawLimitKey {
    Subject,
    ClientId,
    ClientIp,
    Claim(String),
    Header(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBruteForce {
    max_failures: u64,
    window: String,
    lockout: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    slots: u32,
    entries_per_slot: usize,
}

/// Where the client's address comes from.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawClientIp {
    #[serde(default)]
    from: ClientIpFrom,
    #[serde(default)]
    trusted_hops: u32,
}

#[derive(Deserialize, Default, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum ClientIpFrom {
    #[default]
    Peer,
    XForwardedFor,
}

/// What happens to a request no rule matches.
#[derive(Deserialize, Default, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Unmatched {
    #[default]
    Deny,
    Allow,
}

/// Which code checks signatures; `auto` uses Envoy's BoringSSL when present.
#[derive(Deserialize, Default, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SignatureBackend {
    #[default]
    Auto,
    PureRust,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    issuer: String,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    algorithms: Option<Vec<Algorithm>>,
    #[serde(default)]
    remote_jwks: Option<RawRemoteJwks>,
    #[serde(default)]
    local_jwks: Option<RawLocalJwks>,
    #[serde(default)]
    from_headers: Option<Vec<RawHeaderSource>>,
    #[serde(default)]
    from_params: Vec<String>,
    #[serde(default)]
    from_cookies: Vec<String>,
    #[serde(default = "default_clock_skew")]
    clock_skew_seconds: u64,
    #[serde(default)]
    max_lifetime: Option<String>,
    #[serde(default)]
    required_typ: Option<String>,
    #[serde(default)]
    scope_claims: Option<Vec<String>>,
    #[serde(default)]
    claim_to_headers: Vec<RawClaimToHeader>,
    #[serde(default)]
    forward_payload_header: Option<String>,
    #[serde(default)]
    revocation_feed: Option<RawRevocationFeed>,
}

fn default_clock_skew() -> u64 {
    60
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemoteJwks {
    http_uri: RawHttpUri,
    #[serde(default)]
    cache_duration: Option<String>,
    #[serde(default)]
    failed_refetch_duration: Option<String>,
    #[serde(default)]
    unknown_kid_refetch_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevocationFeed {
    http_uri: RawHttpUri,
    #[serde(default)]
    poll_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpUri {
    uri: String,
    cluster: String,
    #[serde(default)]
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocalJwks {
    inline_string: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderSource {
    name: String,
    #[serde(default)]
    value_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaimToHeader {
    header_name: String,
    claim_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(rename = "match")]
    matcher: RawMatch,
    requires: RawRequirement,
    #[serde(default)]
    rate_limits: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequirement {
    #[serde(default)]
    providers: Option<Vec<String>>,
    #[serde(default)]
    scopes: Option<RawScopes>,
    #[serde(default)]
    claims: Vec<RawClaimCheck>,
    #[serde(default)]
    allow_anonymous: bool,
    #[serde(default)]
    credentials: Option<Vec<CredentialKind>>,
    #[serde(default)]
    api_key_in_query: bool,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum CredentialKind {
    Jwt,
    ApiKey,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScopes {
    #[serde(default)]
    all_of: Option<Vec<String>>,
    #[serde(default)]
    any_of: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaimCheck {
    name: String,
    #[serde(default)]
    equals: Option<Value>,
    #[serde(default)]
    contains: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    #[serde(default = "default_header_prefix")]
    header_prefix: String,
}

impl Default for RawIdentity {
    fn default() -> Self {
        RawIdentity {
            header_prefix: default_header_prefix(),
        }
    }
}

fn default_header_prefix() -> String {
    "x-tollgate-".to_string()
}

// ---------------------------------------------------------- compiled settings

/// The validated configuration, ready for the request path.
#[derive(Debug)]
pub struct Settings {
    pub providers: Vec<Provider>,
    pub rules: Vec<Rule>,
    pub allow_unmatched: bool,
    pub realm: String,
    pub identity: Identity,
    pub signature_backend: SignatureBackend,
    /// Every place any provider reads tokens from, deduplicated, in config order.
    pub token_locations: Vec<TokenLocation>,
    /// Every place a credential is removed from before the upstream: the
    /// token locations plus the API-key headers, bearer and query parameter.
    pub strip_locations: Vec<TokenLocation>,
    pub rate_limits: RateLimits,
    pub client_ip: ClientIpSource,
    /// Whether any decision needs the client address.
    pub uses_client_ip: bool,
    /// Claims that rules or rate-limit keys read after verification.
    pub retained_claims: Vec<String>,
    pub api_keys: Option<ApiKeys>,
    /// Verified-token cache bounds, per worker: (entries, bytes). 0 entries disables it.
    pub token_cache: (usize, usize),
    pub method_override: MethodOverride,
}

/// API-key authentication: where keys are read, how they are hashed, and
/// where the key set comes from.
#[derive(Debug)]
pub struct ApiKeys {
    /// The key headers; then `Authorization: Bearer <key>` when the value has
    /// `bearer_prefix`; then the query parameter, on rules that allow it.
    pub headers: Vec<TokenLocation>,
    pub bearer: Option<(TokenLocation, String)>,
    pub query: TokenLocation,
    pub hashing: KeyHashing,
    pub key_set: ApiKeySource,
}

#[derive(Debug)]
pub enum ApiKeySource {
    Local(Arc<ApiKeySet>),
    Remote(RemoteSource),
}

#[derive(Debug, Clone)]
pub struct RateLimits {
    pub policies: Vec<Policy>,
    pub brute_force: Option<BruteForce>,
    /// Send `RateLimit` headers on allowed responses too.
    pub response_headers: bool,
    pub table: SlotTable,
    /// Consumer plans: extra policies for an API-key consumer with that plan.
    pub plans: Vec<(String, Vec<usize>)>,
}

/// How the client address is found: the TCP peer, or the address
/// `trusted_hops` entries from the right of `X-Forwarded-For` (the entries
/// that trusted proxies, such as this Envoy with `use_remote_address`, appended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpSource {
    Peer,
    XForwardedFor { trusted_hops: u32 },
}

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub issuer: String,
    pub algorithms: Vec<Algorithm>,
    pub claim_rules: ClaimRules,
    pub keys: ProviderKeys,
    pub locations: Vec<TokenLocation>,
    pub scope_claims: Vec<String>,
    pub claim_to_headers: Vec<(String, String)>,
    pub forward_payload_header: Option<String>,
    pub revocation_feed: Option<RemoteSource>,
}

#[derive(Debug)]
pub enum ProviderKeys {
    Local(Arc<KeySet>),
    Remote(RemoteSource),
}

/// A document fetched through an Envoy cluster, and when to fetch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSource {
    pub endpoint: Endpoint,
    pub policy: FetchPolicy,
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub header_prefix: String,
    pub subject: String,
    pub client_id: String,
    pub scopes: String,
    pub issuer: String,
    pub provider: String,
    pub consumer: String,
    pub api_key_id: String,
    pub tenant: String,
}

impl Identity {
    fn new(prefix: &str) -> Identity {
        Identity {
            header_prefix: prefix.to_string(),
            subject: format!("{prefix}subject"),
            client_id: format!("{prefix}client-id"),
            scopes: format!("{prefix}scopes"),
            issuer: format!("{prefix}issuer"),
            provider: format!("{prefix}provider"),
            consumer: format!("{prefix}consumer"),
            api_key_id: format!("{prefix}api-key-id"),
            tenant: format!("{prefix}tenant"),
        }
    }
}

// ---------------------------------------------------------------- validation

/// Parses and validates a plugin configuration.
pub fn parse(json: &[u8]) -> Result<Settings, ConfigError> {
    let de = &mut serde_json::Deserializer::from_slice(json);
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        err(path, e.into_inner().to_string())
    })?;
    compile(raw)
}

fn compile(raw: RawConfig) -> Result<Settings, ConfigError> {
    if raw.providers.is_empty() {
        return Err(err("providers", "at least one provider is required"));
    }
    let identity_prefix = raw.identity.header_prefix.to_ascii_lowercase();
    if identity_prefix.len() < 2 || !is_header_name(identity_prefix.trim_end_matches('-')) {
        return Err(err(
            "identity.header_prefix",
            "must be a header-name prefix such as `x-tollgate-`",
        ));
    }
    let mut providers = Vec::with_capacity(raw.providers.len());
    for (name, p) in raw.providers {
        let provider = compile_provider(&name, p)?;
        if let Some(other) = providers
            .iter()
            .find(|o: &&Provider| o.issuer == provider.issuer)
        {
            return Err(err(
                format!("providers.{name}.issuer"),
                format!("issuer is already used by provider `{}`", other.name),
            ));
        }
        providers.push(provider);
    }
    let mut token_locations: Vec<TokenLocation> = Vec::new();
    for loc in providers.iter().flat_map(|p| p.locations.iter()) {
        if !token_locations.contains(loc) {
            token_locations.push(loc.clone());
        }
    }
    let names: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
    let rate_limits = compile_rate_limits(raw.rate_limits)?;
    let policy_names: Vec<&str> = rate_limits
        .policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    let rules = raw
        .rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| compile_rule(&format!("rules[{i}]"), r, &names, &policy_names))
        .collect::<Result<Vec<_>, _>>()?;
    let client_ip =
        match raw.client_ip.from {
            ClientIpFrom::Peer if raw.client_ip.trusted_hops > 0 => {
                return Err(err(
                    "client_ip.trusted_hops",
                    "only meaningful with `from: \"x_forwarded_for\"`",
                ))
            }
            ClientIpFrom::Peer => ClientIpSource::Peer,
            ClientIpFrom::XForwardedFor if raw.client_ip.trusted_hops == 0 => return Err(err(
                "client_ip.trusted_hops",
                "must be at least 1: the number of X-Forwarded-For entries your own proxies append",
            )),
            ClientIpFrom::XForwardedFor => ClientIpSource::XForwardedFor {
                trusted_hops: raw.client_ip.trusted_hops,
            },
        };
    let api_keys = raw
        .api_keys
        .map(|k| compile_api_keys(k, &rate_limits))
        .transpose()?;
    if api_keys.is_none() {
        if let Some(i) = rules.iter().position(|r| r.requirement.accept_api_key) {
            return Err(err(
                format!("rules[{i}].requires.credentials"),
                "accepts `api_key`, but no top-level `api_keys` section is configured",
            ));
        }
    }
    let mut strip_locations = token_locations.clone();
    if let Some(k) = &api_keys {
        let bearer = k.bearer.iter().map(|(location, _)| location);
        let extra = k.headers.iter().chain(bearer).chain([&k.query]);
        for loc in extra.cloned().collect::<Vec<_>>() {
            if !strip_locations.contains(&loc) {
                strip_locations.push(loc);
            }
        }
    }
    let realm = raw.realm.unwrap_or_else(|| "tollgate".to_string());
    if realm
        .chars()
        .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        return Err(err(
            "realm",
            "must not contain quotes, backslashes or control characters",
        ));
    }
    // The claims any decision after verification reads: cached tokens keep
    // only these (identity headers are computed once, at verification).
    let mut retained_claims: Vec<String> = Vec::new();
    let checked = rules
        .iter()
        .flat_map(|r| &r.requirement.claims)
        .map(|c| match c {
            ClaimCheck::Equals(name, _) | ClaimCheck::Contains(name, _) => name,
        });
    let counted = rate_limits.policies.iter().filter_map(|p| match &p.key {
        LimitKey::Claim(name) => Some(name),
        _ => None,
    });
    for name in checked.chain(counted) {
        if !retained_claims.contains(name) {
            retained_claims.push(name.clone());
        }
    }
    // Lock-outs, rate limits (anonymous callers count per address) and API-key
    // CIDRs need the client address; without them, it is never looked up.
    let uses_client_ip =
        rate_limits.brute_force.is_some() || !rate_limits.policies.is_empty() || api_keys.is_some();
    Ok(Settings {
        providers,
        rules,
        retained_claims,
        uses_client_ip,
        allow_unmatched: raw.unmatched == Unmatched::Allow,
        realm,
        identity: Identity::new(&identity_prefix),
        signature_backend: raw.signature_backend,
        token_locations,
        strip_locations,
        rate_limits,
        client_ip,
        api_keys,
        token_cache: raw
            .token_cache
            .map_or((10_000, 16 << 20), |c| (c.max_entries, c.max_bytes)),
        method_override: raw.method_override,
    })
}

fn compile_provider(name: &str, p: RawProvider) -> Result<Provider, ConfigError> {
    let at = |field: &str| format!("providers.{name}.{field}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(err(
            format!("providers.{name}"),
            "provider names use letters, digits, `-`, `_` and `.`",
        ));
    }
    if p.issuer.is_empty() {
        return Err(err(at("issuer"), "must not be empty"));
    }
    if p.audiences.iter().any(String::is_empty) {
        return Err(err(at("audiences"), "audiences must not be empty strings"));
    }
    let hmac_keys = match &p.local_jwks {
        Some(local) => local_jwks_has_secret(&local.inline_string),
        None => false,
    };
    let algorithms = match p.algorithms {
        Some(list) if list.is_empty() => return Err(err(at("algorithms"), "must not be empty")),
        Some(list) => list,
        None if hmac_keys => vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        None => Algorithm::ALL
            .into_iter()
            .filter(|a| !a.is_hmac())
            .collect(),
    };
    // A provider is either symmetric or asymmetric, never both: that is what
    // stops a public key being replayed as an HMAC secret.
    if let Some((i, alg)) = algorithms
        .iter()
        .enumerate()
        .find(|(_, a)| a.is_hmac() != hmac_keys)
    {
        let message = if hmac_keys {
            format!("{alg} cannot be used with a shared-secret (`oct`) key set; only HS256/384/512")
        } else {
            format!(
                "{alg} needs a shared secret: put an `oct` key in `local_jwks` of its own provider"
            )
        };
        return Err(err(format!("providers.{name}.algorithms[{i}]"), message));
    }
    let keys = match (p.remote_jwks, p.local_jwks) {
        (Some(_), Some(_)) => {
            return Err(err(
                format!("providers.{name}"),
                "set either `remote_jwks` or `local_jwks`, not both",
            ))
        }
        (None, None) => {
            return Err(err(
                format!("providers.{name}"),
                "missing keys: set `remote_jwks` or `local_jwks`",
            ))
        }
        (None, Some(local)) => {
            let (set, _) = parse_jwks(
                local.inline_string.as_bytes(),
                KeySource::Local,
                &algorithms,
                Strictness::Strict,
            )
            .map_err(|e| {
                let field = if e.path.is_empty() {
                    at("local_jwks.inline_string")
                } else {
                    format!("providers.{name}.local_jwks.inline_string.{}", e.path)
                };
                err(field, e.message)
            })?;
            ProviderKeys::Local(Arc::new(set))
        }
        (Some(remote), None) => ProviderKeys::Remote(compile_remote_jwks(name, remote)?),
    };
    let max_lifetime_secs = match &p.max_lifetime {
        Some(d) => Some(parse_duration_ms(d).map_err(|m| err(at("max_lifetime"), m))? / 1000),
        None => None,
    };
    let required_typ = match p.required_typ {
        Some(t) if t.trim().is_empty() => return Err(err(at("required_typ"), "must not be empty")),
        Some(t) => {
            let t = t.to_ascii_lowercase();
            Some(t.strip_prefix("application/").unwrap_or(&t).to_string())
        }
        None => None,
    };
    let mut locations = Vec::new();
    let headers = p.from_headers.unwrap_or_else(|| {
        vec![RawHeaderSource {
            name: "authorization".to_string(),
            value_prefix: Some("Bearer ".to_string()),
        }]
    });
    for (i, h) in headers.into_iter().enumerate() {
        let name_lc = h.name.to_ascii_lowercase();
        if !is_header_name(&name_lc) {
            return Err(err(
                format!("providers.{name}.from_headers[{i}].name"),
                "not a valid header name",
            ));
        }
        locations.push(TokenLocation::Header {
            name: name_lc,
            value_prefix: h.value_prefix.filter(|p| !p.is_empty()),
        });
    }
    for (i, param) in p.from_params.into_iter().enumerate() {
        if param.is_empty() || param.contains(['&', '=', '#']) {
            return Err(err(
                format!("providers.{name}.from_params[{i}]"),
                "not a valid query parameter name",
            ));
        }
        locations.push(TokenLocation::Query(param));
    }
    for (i, cookie) in p.from_cookies.into_iter().enumerate() {
        if cookie.is_empty() || !is_header_name(&cookie.to_ascii_lowercase()) {
            return Err(err(
                format!("providers.{name}.from_cookies[{i}]"),
                "not a valid cookie name",
            ));
        }
        locations.push(TokenLocation::Cookie(cookie));
    }
    let scope_claims = p
        .scope_claims
        .unwrap_or_else(|| vec!["scope".to_string(), "scp".to_string()]);
    if scope_claims.is_empty() || scope_claims.iter().any(String::is_empty) {
        return Err(err(
            at("scope_claims"),
            "list at least one non-empty claim name",
        ));
    }
    let mut claim_to_headers = Vec::new();
    for (i, c) in p.claim_to_headers.into_iter().enumerate() {
        let header = c.header_name.to_ascii_lowercase();
        if !is_forwardable_header(&header) {
            return Err(err(
                format!("providers.{name}.claim_to_headers[{i}].header_name"),
                "not a valid, forwardable header name",
            ));
        }
        if c.claim_name.is_empty() {
            return Err(err(
                format!("providers.{name}.claim_to_headers[{i}].claim_name"),
                "must not be empty",
            ));
        }
        claim_to_headers.push((c.claim_name, header));
    }
    let forward_payload_header = match p.forward_payload_header {
        Some(h) if !is_forwardable_header(&h.to_ascii_lowercase()) => {
            return Err(err(
                at("forward_payload_header"),
                "not a valid, forwardable header name",
            ))
        }
        other => other.map(|h| h.to_ascii_lowercase()),
    };
    Ok(Provider {
        name: name.to_string(),
        issuer: p.issuer,
        algorithms,
        claim_rules: ClaimRules {
            audiences: p.audiences,
            clock_skew_secs: p.clock_skew_seconds,
            max_lifetime_secs,
            required_typ,
        },
        keys,
        locations,
        scope_claims,
        claim_to_headers,
        forward_payload_header,
        revocation_feed: p
            .revocation_feed
            .map(|f| compile_revocation_feed(name, f))
            .transpose()?,
    })
}

/// Whether an inline JWKS holds symmetric keys (decides the provider's kind).
fn local_jwks_has_secret(inline: &str) -> bool {
    serde_json::from_str::<Value>(inline)
        .ok()
        .and_then(|v| v.get("keys").and_then(Value::as_array).cloned())
        .is_some_and(|keys| {
            keys.iter()
                .any(|k| k.get("kty").and_then(Value::as_str) == Some("oct"))
        })
}

/// Reads a duration field, with a default and a floor.
fn duration_ms(
    field: &str,
    v: &Option<String>,
    default_ms: u64,
    min_ms: u64,
) -> Result<u64, ConfigError> {
    let ms = match v {
        Some(s) => parse_duration_ms(s).map_err(|m| err(field, m))?,
        None => default_ms,
    };
    if ms < min_ms {
        return Err(err(field, format!("must be at least {min_ms}ms")));
    }
    Ok(ms)
}

fn compile_endpoint(at: &str, u: RawHttpUri, example: &str) -> Result<Endpoint, ConfigError> {
    let (authority, path) = split_http_uri(&u.uri).ok_or_else(|| {
        err(
            format!("{at}.http_uri.uri"),
            format!("must be an absolute http(s) URL such as `{example}`"),
        )
    })?;
    if u.cluster.is_empty() {
        return Err(err(
            format!("{at}.http_uri.cluster"),
            "must name an Envoy cluster",
        ));
    }
    Ok(Endpoint {
        cluster: u.cluster,
        authority,
        path,
        timeout_ms: duration_ms(&format!("{at}.http_uri.timeout"), &u.timeout, 5_000, 10)?,
    })
}

fn compile_remote_jwks(name: &str, r: RawRemoteJwks) -> Result<RemoteSource, ConfigError> {
    let at = format!("providers.{name}.remote_jwks");
    let field = |f: &str| format!("{at}.{f}");
    Ok(RemoteSource {
        endpoint: compile_endpoint(&at, r.http_uri, "http://idp/.well-known/jwks.json")?,
        policy: FetchPolicy {
            refresh_ms: duration_ms(&field("cache_duration"), &r.cache_duration, 300_000, 1_000)?,
            retry_ms: duration_ms(
                &field("failed_refetch_duration"),
                &r.failed_refetch_duration,
                1_000,
                100,
            )?,
            on_demand_ms: duration_ms(
                &field("unknown_kid_refetch_interval"),
                &r.unknown_kid_refetch_interval,
                10_000,
                0,
            )?,
        },
    })
}

fn compile_revocation_feed(name: &str, r: RawRevocationFeed) -> Result<RemoteSource, ConfigError> {
    let at = format!("providers.{name}.revocation_feed");
    let poll = duration_ms(&format!("{at}.poll_interval"), &r.poll_interval, 5_000, 100)?;
    Ok(RemoteSource {
        endpoint: compile_endpoint(&at, r.http_uri, "http://idp/revocations")?,
        // An outage is retried at the same pace; nothing asks for a fetch on demand.
        policy: FetchPolicy {
            refresh_ms: poll,
            retry_ms: poll,
            on_demand_ms: u64::MAX,
        },
    })
}

/// Largest limit and burst, and longest window: keeps the rate math far from overflow.
const MAX_LIMIT: u64 = 1_000_000_000;
const MAX_WINDOW_MS: u64 = 366 * 86_400_000;

fn compile_rate_limits(raw: Option<RawRateLimits>) -> Result<RateLimits, ConfigError> {
    let raw = raw.unwrap_or(RawRateLimits {
        policies: BTreeMap::new(),
        brute_force: None,
        response_headers: false,
        table: None,
        plans: BTreeMap::new(),
    });
    let mut policies = Vec::with_capacity(raw.policies.len());
    for (name, p) in raw.policies {
        let at = |f: &str| format!("rate_limits.policies.{name}.{f}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(err(
                format!("rate_limits.policies.{name}"),
                "policy names use letters, digits, `-`, `_` and `.`",
            ));
        }
        if p.limit == 0 || p.limit > MAX_LIMIT {
            return Err(err(
                at("limit"),
                format!("must be between 1 and {MAX_LIMIT}"),
            ));
        }
        let window_ms = parse_duration_ms(&p.window).map_err(|m| err(at("window"), m))?;
        if window_ms == 0 || window_ms > MAX_WINDOW_MS {
            return Err(err(
                at("window"),
                "must be more than 0s and at most 366 days",
            ));
        }
        let burst = p.burst.unwrap_or(p.limit);
        if burst == 0 || burst > MAX_LIMIT {
            return Err(err(
                at("burst"),
                format!("must be between 1 and {MAX_LIMIT}"),
            ));
        }
        let key = match p.key {
            RawLimitKey::Subject => LimitKey::Subject,
            RawLimitKey::ClientId => LimitKey::ClientId,
            RawLimitKey::ClientIp => LimitKey::ClientIp,
            RawLimitKey::Claim(c) if c.is_empty() => {
                return Err(err(at("key.claim"), "must not be empty"))
            }
            RawLimitKey::Claim(c) => LimitKey::Claim(c),
            RawLimitKey::Header(h) if !is_header_name(&h.to_ascii_lowercase()) => {
                return Err(err(at("key.header"), "not a valid header name"))
            }
            RawLimitKey::Header(h) => LimitKey::Header(h.to_ascii_lowercase()),
        };
        policies.push(Policy {
            name,
            rate: Rate {
                limit: p.limit,
                window_ms,
                burst,
            },
            key,
        });
    }
    let brute_force = match raw.brute_force {
        None => None,
        Some(b) => {
            let at = |f: &str| format!("rate_limits.brute_force.{f}");
            if b.max_failures == 0 || b.max_failures > MAX_LIMIT {
                return Err(err(
                    at("max_failures"),
                    format!("must be between 1 and {MAX_LIMIT}"),
                ));
            }
            let window_ms = duration_ms(&at("window"), &Some(b.window), 0, 1)?;
            let lockout_ms = duration_ms(&at("lockout"), &Some(b.lockout), 0, 1)?;
            if window_ms > MAX_WINDOW_MS || lockout_ms > MAX_WINDOW_MS {
                return Err(err(at("window"), "durations are at most 366 days"));
            }
            Some(BruteForce {
                max_failures: b.max_failures,
                window_ms,
                lockout_ms,
            })
        }
    };
    let table = match raw.table {
        None => SlotTable {
            slots: 8192,
            entries_per_slot: 16,
        },
        Some(t) => {
            if t.slots == 0 || t.slots > 1 << 20 {
                return Err(err(
                    "rate_limits.table.slots",
                    "must be between 1 and 1048576",
                ));
            }
            if t.entries_per_slot == 0 || t.entries_per_slot > 256 {
                return Err(err(
                    "rate_limits.table.entries_per_slot",
                    "must be between 1 and 256",
                ));
            }
            SlotTable {
                slots: t.slots,
                entries_per_slot: t.entries_per_slot,
            }
        }
    };
    let mut plans = Vec::with_capacity(raw.plans.len());
    for (plan, names) in raw.plans {
        let ids = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                policies.iter().position(|p| p.name == *n).ok_or_else(|| {
                    err(
                        format!("rate_limits.plans.{plan}[{i}]"),
                        format!("unknown rate-limit policy `{n}`"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        plans.push((plan, ids));
    }
    Ok(RateLimits {
        policies,
        brute_force,
        response_headers: raw.response_headers,
        table,
        plans,
    })
}

fn compile_api_keys(raw: RawApiKeys, limits: &RateLimits) -> Result<ApiKeys, ConfigError> {
    let header_names = raw
        .from_headers
        .unwrap_or_else(|| vec!["x-api-key".to_string()]);
    let mut names = Vec::with_capacity(header_names.len());
    for (i, h) in header_names.iter().enumerate() {
        let h = h.to_ascii_lowercase();
        if !is_header_name(&h) || h == "authorization" {
            return Err(err(
                format!("api_keys.from_headers[{i}]"),
                "a header name other than Authorization (use `bearer_prefix` for that)",
            ));
        }
        names.push(h);
    }
    let bearer_prefix = match raw.bearer_prefix {
        None => Some("tg_".to_string()),
        Some(p) if p.is_empty() => None,
        Some(p) if p.contains('.') || p.chars().any(|c| c.is_whitespace()) => {
            return Err(err(
                "api_keys.bearer_prefix",
                "must not contain dots or spaces, so keys never look like JWTs",
            ))
        }
        Some(p) => Some(p),
    };
    let query_param = raw.query_param.unwrap_or_else(|| "api_key".to_string());
    if query_param.is_empty() || query_param.contains(['&', '=', '#']) {
        return Err(err(
            "api_keys.query_param",
            "not a valid query parameter name",
        ));
    }
    let hashing = match raw.pepper {
        None => KeyHashing::Sha256,
        Some(p) if p.inline_string.len() < 16 => {
            return Err(err(
                "api_keys.pepper.inline_string",
                "use at least 16 characters of secret",
            ))
        }
        Some(p) => KeyHashing::HmacSha256(p.inline_string.into_bytes()),
    };
    let key_set = match (raw.key_set, raw.remote_key_set) {
        (Some(local), None) => {
            let set = ApiKeySet::parse(local.inline_string.as_bytes()).map_err(|e| {
                let field = if e.path.is_empty() {
                    "api_keys.key_set.inline_string".to_string()
                } else {
                    format!("api_keys.key_set.inline_string.{}", e.path)
                };
                err(field, e.message)
            })?;
            if let Some((i, c)) = set.consumers.iter().enumerate().find(|(_, c)| {
                c.plan
                    .as_ref()
                    .is_some_and(|p| !limits.plans.iter().any(|(name, _)| name == p))
            }) {
                return Err(err(
                    format!("api_keys.key_set.inline_string.consumers[{i}].plan"),
                    format!(
                        "unknown plan `{}` (define it under `rate_limits.plans`)",
                        c.plan.as_deref().unwrap_or("")
                    ),
                ));
            }
            ApiKeySource::Local(Arc::new(set))
        }
        (None, Some(remote)) => {
            let at = "api_keys.remote_key_set";
            let poll = duration_ms(
                &format!("{at}.poll_interval"),
                &remote.poll_interval,
                10_000,
                100,
            )?;
            ApiKeySource::Remote(RemoteSource {
                endpoint: compile_endpoint(at, remote.http_uri, "http://token-service/api-keys")?,
                policy: FetchPolicy {
                    refresh_ms: poll,
                    retry_ms: poll,
                    on_demand_ms: u64::MAX,
                },
            })
        }
        _ => {
            return Err(err(
                "api_keys",
                "set exactly one of `key_set` and `remote_key_set`",
            ))
        }
    };
    Ok(ApiKeys {
        headers: names
            .into_iter()
            .map(|name| TokenLocation::Header {
                name,
                value_prefix: None,
            })
            .collect(),
        bearer: bearer_prefix.map(|prefix| {
            let location = TokenLocation::Header {
                name: "authorization".to_string(),
                value_prefix: Some("Bearer ".to_string()),
            };
            (location, prefix)
        }),
        query: TokenLocation::Query(query_param),
        hashing,
        key_set,
    })
}

fn compile_rule(
    at: &str,
    r: RawRule,
    providers: &[&str],
    policies: &[&str],
) -> Result<Rule, ConfigError> {
    let mut limits = Vec::with_capacity(r.rate_limits.len());
    for (i, name) in r.rate_limits.iter().enumerate() {
        let id = policies.iter().position(|p| p == name).ok_or_else(|| {
            err(
                format!("{at}.rate_limits[{i}]"),
                format!(
                    "unknown rate-limit policy `{name}` (define it under `rate_limits.policies`)"
                ),
            )
        })?;
        limits.push(id);
    }
    let m = r.matcher;
    let path = match (m.path, m.prefix, m.template) {
        (Some(p), None, None) => PathMatch::Exact(check_path(&format!("{at}.match.path"), p)?),
        (None, Some(p), None) => PathMatch::Prefix(check_path(&format!("{at}.match.prefix"), p)?),
        (None, None, Some(t)) => {
            let t = check_path(&format!("{at}.match.template"), t)?;
            PathMatch::template(&t).map_err(|m| err(format!("{at}.match.template"), m))?
        }
        _ => {
            return Err(err(
                format!("{at}.match"),
                "set exactly one of `path`, `prefix` or `template`",
            ))
        }
    };
    let mut methods = Vec::with_capacity(m.methods.len());
    for (i, method) in m.methods.into_iter().enumerate() {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(err(
                format!("{at}.match.methods[{i}]"),
                "methods are upper-case HTTP method names such as `GET`",
            ));
        }
        methods.push(method);
    }
    let q = r.requires;
    let provider_ids = match q.providers {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(err(format!("{at}.requires.providers"), "must not be empty"))
        }
        Some(list) => {
            let mut ids = Vec::with_capacity(list.len());
            for (i, name) in list.iter().enumerate() {
                let id = providers.iter().position(|p| p == name).ok_or_else(|| {
                    err(
                        format!("{at}.requires.providers[{i}]"),
                        format!("unknown provider `{name}`"),
                    )
                })?;
                ids.push(id);
            }
            Some(ids)
        }
    };
    let scopes = match q.scopes {
        None => None,
        Some(RawScopes {
            all_of: Some(s),
            any_of: None,
        }) => Some(ScopeRequirement::AllOf(check_scopes(
            &format!("{at}.requires.scopes.all_of"),
            s,
        )?)),
        Some(RawScopes {
            all_of: None,
            any_of: Some(s),
        }) => Some(ScopeRequirement::AnyOf(check_scopes(
            &format!("{at}.requires.scopes.any_of"),
            s,
        )?)),
        Some(_) => {
            return Err(err(
                format!("{at}.requires.scopes"),
                "set exactly one of `all_of` or `any_of`",
            ))
        }
    };
    let mut claims = Vec::with_capacity(q.claims.len());
    for (i, c) in q.claims.into_iter().enumerate() {
        let field = format!("{at}.requires.claims[{i}]");
        if c.name.is_empty() {
            return Err(err(format!("{field}.name"), "must not be empty"));
        }
        let check = match (c.equals, c.contains) {
            (Some(v), None) if is_scalar(&v) => ClaimCheck::Equals(c.name, v),
            (None, Some(v)) if is_scalar(&v) => ClaimCheck::Contains(c.name, v),
            (Some(_), None) | (None, Some(_)) => {
                return Err(err(
                    field,
                    "the expected value must be a string, number or boolean",
                ))
            }
            _ => return Err(err(field, "set exactly one of `equals` or `contains`")),
        };
        claims.push(check);
    }
    let kinds = q.credentials.unwrap_or_else(|| vec![CredentialKind::Jwt]);
    if kinds.is_empty() {
        return Err(err(
            format!("{at}.requires.credentials"),
            "list `jwt`, `api_key` or both",
        ));
    }
    let accept_api_key = kinds.contains(&CredentialKind::ApiKey);
    if q.api_key_in_query && !accept_api_key {
        return Err(err(
            format!("{at}.requires.api_key_in_query"),
            "only meaningful when `credentials` includes `api_key`",
        ));
    }
    if q.allow_anonymous && (scopes.is_some() || !claims.is_empty() || provider_ids.is_some()) {
        return Err(err(
            format!("{at}.requires.allow_anonymous"),
            "an anonymous rule cannot also require providers, scopes or claims",
        ));
    }
    Ok(Rule {
        path,
        methods,
        limits,
        requirement: Requirement {
            providers: provider_ids,
            scopes,
            claims,
            allow_anonymous: q.allow_anonymous,
            accept_jwt: kinds.contains(&CredentialKind::Jwt),
            accept_api_key,
            api_key_in_query: q.api_key_in_query,
        },
    })
}

fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

fn check_path(field: &str, p: String) -> Result<String, ConfigError> {
    if !p.starts_with('/') || p.contains(['?', '#']) {
        return Err(err(
            field,
            "must start with `/` and contain no query or fragment",
        ));
    }
    crate::path::check_rule_path(&p).map_err(|m| err(field, m))?;
    Ok(p)
}

fn check_scopes(field: &str, scopes: Vec<String>) -> Result<Vec<String>, ConfigError> {
    if scopes.is_empty() {
        return Err(err(field, "list at least one scope"));
    }
    for (i, s) in scopes.iter().enumerate() {
        // RFC 6749 §3.3 scope-token: printable ASCII, no space, `"` or `\`.
        if s.is_empty()
            || !s
                .bytes()
                .all(|b| b > 0x20 && b < 0x7f && b != b'"' && b != b'\\')
        {
            return Err(err(format!("{field}[{i}]"), "not a valid scope token"));
        }
    }
    Ok(scopes)
}

/// RFC 9110 token characters, lower-case only (Envoy lower-cases header names).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

/// Header names Tollgate may set on the upstream request.
fn is_forwardable_header(name: &str) -> bool {
    const RESERVED: [&str; 8] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
        "authorization",
        "cookie",
    ];
    is_header_name(name) && !RESERVED.contains(&name)
}

/// Splits `http://authority/path` into authority and path (default `/`).
fn split_http_uri(uri: &str) -> Option<(String, String)> {
    let rest = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains(['@', ' ']) || path.contains(['#', ' ']) {
        return None;
    }
    Some((authority.to_string(), path.to_string()))
}

/// Parses a protobuf JSON duration (`"5s"`, `"0.250s"`) into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a duration such as \"5s\" or \"0.5s\"");
    let digits = s.strip_suffix('s').ok_or_else(bad)?;
    let (whole, frac) = match digits.split_once('.') {
        Some((w, f)) => (w, f),
        None => (digits, ""),
    };
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 9
        || (digits.contains('.') && frac.is_empty())
    {
        return Err(bad());
    }
    let secs: u64 = whole.parse().map_err(|_| bad())?;
    let mut millis_str = frac.chars().take(3).collect::<String>();
    while millis_str.len() < 3 {
        millis_str.push('0');
    }
    let millis: u64 = millis_str.parse().map_err(|_| bad())?;
    secs.checked_mul(1000)
        .and_then(|ms| ms.checked_add(millis))
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn remote_provider() -> Value {
        json!({
            "issuer": "https://idp.example",
            "audiences": ["api"],
            "remote_jwks": {"http_uri": {"uri": "http://idp/.well-known/jwks.json", "cluster": "idp"}}
        })
    }

    fn base() -> Value {
        json!({
            "providers": {"idp": remote_provider()},
            "rules": [
                {"match": {"path": "/data", "methods": ["GET"]},
                 "requires": {"scopes": {"all_of": ["read:data"]}}},
                {"match": {"prefix": "/public/"}, "requires": {"allow_anonymous": true}}
            ]
        })
    }

    fn parse_value(v: &Value) -> Result<Settings, ConfigError> {
        parse(v.to_string().as_bytes())
    }

    fn error_at(v: Value) -> ConfigError {
        parse_value(&v).expect_err("config should be rejected")
    }

    #[test]
    fn minimal_config_compiles_with_defaults() {
        let s = parse_value(&base()).unwrap();
        let p = &s.providers[0];
        assert_eq!(p.claim_rules.clock_skew_secs, 60);
        assert!(!p.algorithms.contains(&Algorithm::HS256));
        assert_eq!(
            p.locations,
            vec![TokenLocation::Header {
                name: "authorization".into(),
                value_prefix: Some("Bearer ".into())
            }]
        );
        match &p.keys {
            ProviderKeys::Remote(r) => {
                assert_eq!(r.endpoint.authority, "idp");
                assert_eq!(r.endpoint.path, "/.well-known/jwks.json");
                assert_eq!(r.endpoint.timeout_ms, 5_000);
                assert_eq!(r.policy.refresh_ms, 300_000);
                assert_eq!(r.policy.retry_ms, 1_000);
                assert_eq!(r.policy.on_demand_ms, 10_000);
            }
            other => panic!("{other:?}"),
        }
        assert!(!s.allow_unmatched);
        assert_eq!(s.identity.subject, "x-tollgate-subject");
        assert_eq!(s.realm, "tollgate");
    }

    #[test]
    fn unknown_fields_are_named() {
        let mut v = base();
        v["providers"]["idp"]["audience"] = json!("api");
        let e = error_at(v);
        assert_eq!(e.field, "providers.idp.audience");
        assert!(e.message.contains("unknown field `audience`"), "{e}");

        let mut v = base();
        v["rules"][0]["match"]["regex"] = json!(".*");
        assert_eq!(error_at(v).field, "rules[0].match.regex");
    }

    #[test]
    fn bad_algorithms_are_named() {
        let mut v = base();
        v["providers"]["idp"]["algorithms"] = json!(["ES256", "none"]);
        let e = error_at(v);
        assert_eq!(e.field, "providers.idp.algorithms[1]");
        assert!(e.message.contains("never accepted"), "{e}");

        let mut v = base();
        v["providers"]["idp"]["algorithms"] = json!(["RS256", "HS256"]);
        let e = error_at(v);
        assert_eq!(e.field, "providers.idp.algorithms[1]");
        assert!(e.message.contains("shared secret"), "{e}");
    }

    #[test]
    fn missing_keys_are_refused() {
        let mut v = base();
        v["providers"]["idp"]
            .as_object_mut()
            .unwrap()
            .remove("remote_jwks");
        let e = error_at(v);
        assert_eq!(e.field, "providers.idp");
        assert!(e.message.contains("missing keys"), "{e}");
        assert!(e
            .to_string()
            .starts_with("invalid tollgate configuration at `providers.idp`"));
    }

    #[test]
    fn bad_values_are_named() {
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"remote_jwks": {"http_uri": {"uri": "idp/jwks", "cluster": "idp"}}}),
                "providers.idp.remote_jwks.http_uri.uri",
            ),
            (
                json!({"remote_jwks": {"http_uri": {"uri": "http://idp/j", "cluster": "idp"}, "cache_duration": "5m"}}),
                "providers.idp.remote_jwks.cache_duration",
            ),
            (
                json!({"clock_skew_seconds": -1}),
                "providers.idp.clock_skew_seconds",
            ),
            (
                json!({"claim_to_headers": [{"header_name": "Host", "claim_name": "t"}]}),
                "providers.idp.claim_to_headers[0].header_name",
            ),
            (
                json!({"from_headers": [{"name": "bad header"}]}),
                "providers.idp.from_headers[0].name",
            ),
            (
                json!({"local_jwks": {"inline_string": "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\"}]}"}, "remote_jwks": null}),
                "providers.idp.local_jwks.inline_string.keys[0]",
            ),
        ];
        for (patch, field) in cases {
            let mut v = base();
            for (k, val) in patch.as_object().unwrap() {
                if val.is_null() {
                    v["providers"]["idp"].as_object_mut().unwrap().remove(k);
                } else {
                    v["providers"]["idp"][k] = val.clone();
                }
            }
            assert_eq!(error_at(v).field, field);
        }
    }

    #[test]
    fn rule_errors_are_named() {
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"match": {"path": "/a", "prefix": "/b"}, "requires": {}}),
                "rules[0].match",
            ),
            (
                json!({"match": {"path": "a"}, "requires": {}}),
                "rules[0].match.path",
            ),
            (
                json!({"match": {"path": "/a", "methods": ["get"]}, "requires": {}}),
                "rules[0].match.methods[0]",
            ),
            (
                json!({"match": {"path": "/a"}, "requires": {"providers": ["nope"]}}),
                "rules[0].requires.providers[0]",
            ),
            (
                json!({"match": {"path": "/a"}, "requires": {"scopes": {"all_of": ["a"], "any_of": ["b"]}}}),
                "rules[0].requires.scopes",
            ),
            (
                json!({"match": {"path": "/a"}, "requires": {"scopes": {"all_of": ["a b"]}}}),
                "rules[0].requires.scopes.all_of[0]",
            ),
            (
                json!({"match": {"path": "/a"}, "requires": {"claims": [{"name": "t"}]}}),
                "rules[0].requires.claims[0]",
            ),
            (
                json!({"match": {"path": "/a"}, "requires": {"allow_anonymous": true, "scopes": {"any_of": ["x"]}}}),
                "rules[0].requires.allow_anonymous",
            ),
            (
                json!({"match": {"template": "/a/**/b"}, "requires": {}}),
                "rules[0].match.template",
            ),
        ];
        for (rule, field) in cases {
            let mut v = base();
            v["rules"] = json!([rule]);
            assert_eq!(error_at(v).field, field);
        }
    }

    #[test]
    fn revocation_feed_compiles_and_names_bad_fields() {
        let mut v = base();
        v["providers"]["idp"]["revocation_feed"] =
            json!({"http_uri": {"uri": "http://ts/revocations", "cluster": "ts"}});
        let s = parse_value(&v).unwrap();
        let feed = s.providers[0].revocation_feed.as_ref().unwrap();
        assert_eq!(feed.endpoint.path, "/revocations");
        assert_eq!(
            (feed.policy.refresh_ms, feed.policy.retry_ms),
            (5_000, 5_000)
        );
        v["providers"]["idp"]["revocation_feed"]["poll_interval"] = json!("fast");
        assert_eq!(
            error_at(v.clone()).field,
            "providers.idp.revocation_feed.poll_interval"
        );
        v["providers"]["idp"]["revocation_feed"] =
            json!({"http_uri": {"uri": "/r", "cluster": "ts"}});
        assert_eq!(
            error_at(v).field,
            "providers.idp.revocation_feed.http_uri.uri"
        );
    }

    #[test]
    fn rate_limits_compile_and_name_bad_fields() {
        let mut v = base();
        v["rate_limits"] = json!({
            "policies": {
                "per-client": {"limit": 10, "window": "1s", "key": "client_id"},
                "tenant": {"limit": 1000, "window": "86400s", "burst": 50, "key": {"claim": "tenant"}}
            },
            "brute_force": {"max_failures": 10, "window": "60s", "lockout": "300s"}
        });
        v["rules"][0]["rate_limits"] = json!(["per-client", "tenant"]);
        let s = parse_value(&v).unwrap();
        let p = &s.rate_limits.policies;
        assert_eq!(p[0].name, "per-client");
        assert_eq!(
            (p[0].rate.limit, p[0].rate.window_ms, p[0].rate.burst),
            (10, 1_000, 10)
        );
        assert_eq!(p[1].key, LimitKey::Claim("tenant".into()));
        assert_eq!(s.rules[0].limits, vec![0, 1]);
        assert_eq!(s.rate_limits.brute_force.unwrap().lockout_ms, 300_000);
        assert_eq!(s.client_ip, ClientIpSource::Peer);

        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"policies": {"p": {"limit": 0, "window": "1s", "key": "subject"}}}),
                "rate_limits.policies.p.limit",
            ),
            (
                json!({"policies": {"p": {"limit": 1, "window": "0s", "key": "subject"}}}),
                "rate_limits.policies.p.window",
            ),
            (
                json!({"policies": {"p": {"limit": 1, "window": "1s", "key": "user"}}}),
                "rate_limits.policies.p.key",
            ),
            (
                json!({"policies": {"p": {"limit": 1, "window": "1s", "burst": 0, "key": "subject"}}}),
                "rate_limits.policies.p.burst",
            ),
            (
                json!({"brute_force": {"max_failures": 3, "window": "1m", "lockout": "1s"}}),
                "rate_limits.brute_force.window",
            ),
            (
                json!({"table": {"slots": 0, "entries_per_slot": 4}}),
                "rate_limits.table.slots",
            ),
        ];
        for (rl, field) in cases {
            let mut v = base();
            v["rate_limits"] = rl;
            assert_eq!(error_at(v).field, field);
        }
        let mut v = base();
        v["rules"][0]["rate_limits"] = json!(["nope"]);
        assert_eq!(error_at(v).field, "rules[0].rate_limits[0]");
        let mut v = base();
        v["client_ip"] = json!({"from": "x_forwarded_for"});
        assert_eq!(error_at(v.clone()).field, "client_ip.trusted_hops");
        v["client_ip"] = json!({"from": "x_forwarded_for", "trusted_hops": 1});
        assert_eq!(
            parse_value(&v).unwrap().client_ip,
            ClientIpSource::XForwardedFor { trusted_hops: 1 }
        );
    }

    #[test]
    fn api_keys_configuration_is_checked() {
        let set = |plan: &str| {
            json!({"consumers": [{"id": "c", "plan": plan, "keys": [{"id": "k", "hash": "a".repeat(64)}]}]})
                .to_string()
        };
        let mut v = base();
        v["api_keys"] = json!({"key_set": {"inline_string": set("gold")}, "pepper": {"inline_string": "0123456789abcdef"}});
        v["rate_limits"] = json!({"policies": {"p": {"limit": 1, "window": "1s", "key": "client_id"}}, "plans": {"gold": ["p"]}});
        v["rules"][0]["requires"]["credentials"] = json!(["api_key"]);
        let s = parse_value(&v).unwrap();
        let k = s.api_keys.as_ref().unwrap();
        assert_eq!(
            k.headers,
            vec![TokenLocation::Header {
                name: "x-api-key".to_string(),
                value_prefix: None
            }]
        );
        assert_eq!(k.bearer.as_ref().map(|(_, p)| p.as_str()), Some("tg_"));
        assert!(matches!(k.hashing, KeyHashing::HmacSha256(_)));
        assert!(s.rules[0].requirement.accept_api_key && !s.rules[0].requirement.accept_jwt);
        assert!(s
            .strip_locations
            .contains(&TokenLocation::Query("api_key".into())));

        type Edit<'a> = Box<dyn Fn(&mut Value) + 'a>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|v| v["api_keys"]["key_set"]["inline_string"] = json!(set("platinum"))),
                "api_keys.key_set.inline_string.consumers[0].plan",
            ),
            (
                Box::new(|v| {
                    v["api_keys"]["key_set"]["inline_string"] = json!("{\"consumers\":[{\"id\":\"c\",\"keys\":[{\"id\":\"k\",\"hash\":\"tg_live_plaintext\"}]}]}")
                }),
                "api_keys.key_set.inline_string.consumers[0].keys[0].hash",
            ),
            (
                Box::new(|v| v["api_keys"]["pepper"]["inline_string"] = json!("short")),
                "api_keys.pepper.inline_string",
            ),
            (
                Box::new(|v| v["api_keys"]["bearer_prefix"] = json!("ey.")),
                "api_keys.bearer_prefix",
            ),
            (
                Box::new(|v| v["api_keys"]["from_headers"] = json!(["Authorization"])),
                "api_keys.from_headers[0]",
            ),
            (
                Box::new(|v| v["rules"][1]["requires"]["api_key_in_query"] = json!(true)),
                "rules[1].requires.api_key_in_query",
            ),
            (
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("api_keys");
                }),
                "rules[0].requires.credentials",
            ),
        ];
        for (edit, field) in cases {
            let mut w = v.clone();
            edit(&mut w);
            assert_eq!(error_at(w).field, field);
        }
    }

    #[test]
    fn duplicate_issuers_are_refused() {
        let mut v = base();
        v["providers"]["other"] = remote_provider();
        let e = error_at(v);
        assert!(
            e.field.ends_with(".issuer") && e.message.contains("already used"),
            "{e}"
        );
    }

    #[test]
    fn non_json_and_wrong_types_are_errors() {
        assert!(parse(b"not json").is_err());
        assert!(parse(b"").is_err());
        assert_eq!(
            parse(b"{\"providers\": [], \"rules\": []}")
                .unwrap_err()
                .field,
            "providers"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("5s"), Ok(5000));
        assert_eq!(parse_duration_ms("0.25s"), Ok(250));
        assert_eq!(parse_duration_ms("1.000000001s"), Ok(1000));
        for bad in [
            "5",
            "s",
            "-1s",
            "1.s",
            "5m",
            "1e3s",
            "99999999999999999999s",
        ] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hmac_provider_defaults_to_hs_algorithms() {
        let secret =
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, [9u8; 32]);
        let mut v = base();
        v["providers"]["idp"] = json!({
            "issuer": "hs",
            "local_jwks": {"inline_string": json!({"keys":[{"kty":"oct","k":secret}]}).to_string()}
        });
        let s = parse_value(&v).unwrap();
        assert!(s.providers[0].algorithms.iter().all(|a| a.is_hmac()));
    }
}
