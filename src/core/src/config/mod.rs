//! The plugin configuration: the JSON operators write, read into typed structs,
//! validated, and compiled into [`Settings`] the request path uses as-is.
//!
//! Field names follow Envoy's `jwt_authn` where a counterpart exists
//! (`providers`, `issuer`, `audiences`, `remote_jwks.http_uri`, `local_jwks.inline_string`,
//! `from_headers`, `from_params`, `from_cookies`, `clock_skew_seconds`,
//! `max_lifetime`, `claim_to_headers`, `forward_payload_header`), and durations
//! use protobuf JSON form (`"300s"`, `"1.5s"`). Anything unknown or wrong is an
//! error that names the field, and the plugin refuses to start.

use crate::anomaly::Anomalies;
use crate::credentials::TokenLocation;
use crate::policy::Rule;
use crate::upstream::MethodOverride;
use api_keys::{compile_api_keys, RawApiKeys};
use audit::{compile_anomalies, compile_audit, RawAnomalies, RawAudit};
use fields::is_header_name;
use identity_headers::RawIdentity;
use providers::{compile_provider, RawProvider};
use rate_limits::{compile_rate_limits, RawRateLimits};
use rules::{compile_rule, RawRule};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

mod api_keys;
mod audit;
mod derived;
mod fields;
mod identity_headers;
mod providers;
mod rate_limits;
mod rules;
#[cfg(test)]
mod tests;

pub use api_keys::{ApiKeySource, ApiKeys};
pub use audit::Audit;
pub use fields::parse_duration_ms;
pub use identity_headers::Identity;
pub use providers::{Dpop, Provider, ProviderId, ProviderKeys, RemoteSource, DPOP_SCHEME};
pub use rate_limits::RateLimits;

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
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    anomalies: RawAnomalies,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenCache {
    #[serde(default = "default_cache_entries")]
    max_entries: usize,
    #[serde(default = "default_cache_bytes")]
    max_bytes: usize,
}

fn default_cache_entries() -> usize {
    10_000
}

fn default_cache_bytes() -> usize {
    16 << 20
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
    pub audit: Audit,
    pub anomalies: Anomalies,
}

impl Settings {
    pub fn provider(&self, id: ProviderId) -> Option<&Provider> {
        self.providers.get(id.0)
    }

    /// Every provider with its id, in configuration order.
    pub fn providers_by_id(&self) -> impl Iterator<Item = (ProviderId, &Provider)> {
        self.providers
            .iter()
            .enumerate()
            .map(|(i, p)| (ProviderId(i), p))
    }

    /// The provider of a name, for tests and logs.
    pub fn provider_named(&self, name: &str) -> Option<ProviderId> {
        self.providers_by_id()
            .find(|(_, p)| p.name == name)
            .map(|(id, _)| id)
    }
}

/// How the client address is found: the TCP peer, or the address
/// `trusted_hops` entries from the right of `X-Forwarded-For` (the entries
/// that trusted proxies, such as this Envoy with `use_remote_address`, appended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpSource {
    Peer,
    XForwardedFor { trusted_hops: u32 },
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
    let token_locations = derived::token_locations(&providers);
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
    for (i, rule) in rules.iter().enumerate() {
        if rules.iter().take(i).any(|r| r.name == rule.name) {
            return Err(err(
                format!("rules[{i}].name"),
                format!("`{}` names an earlier rule too", rule.name),
            ));
        }
    }
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
    let strip_locations = derived::strip_locations(&token_locations, api_keys.as_ref());
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
    let retained_claims = derived::retained_claims(&rules, &rate_limits);
    let audit = compile_audit(raw.audit)?;
    let anomalies = compile_anomalies(raw.anomalies)?;
    let uses_client_ip =
        derived::uses_client_ip(&rate_limits, api_keys.as_ref()) || anomalies.uses_client_ip();
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
            .map_or((default_cache_entries(), default_cache_bytes()), |c| {
                (c.max_entries, c.max_bytes)
            }),
        method_override: raw.method_override,
        audit,
        anomalies,
    })
}
