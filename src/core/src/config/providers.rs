//! `providers`: issuers, their keys (inline or a remote JWKS), where their
//! tokens are read, claim rules, identity headers and the revocation feed.

use super::fields::{
    compile_endpoint, duration_ms, is_forwardable_header, is_header_name, parse_duration_ms,
    RawHttpUri,
};
use super::{err, ConfigError};
use crate::alg::Algorithm;
use crate::credentials::TokenLocation;
use crate::jwk::{parse_jwks, KeySet, KeySource, Strictness};
use crate::jwt::ClaimRules;
use crate::remote::{Endpoint, FetchPolicy};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    pub(super) issuer: String,
    #[serde(default)]
    pub(super) audiences: Vec<String>,
    #[serde(default)]
    pub(super) algorithms: Option<Vec<Algorithm>>,
    #[serde(default)]
    pub(super) remote_jwks: Option<RawRemoteJwks>,
    #[serde(default)]
    pub(super) local_jwks: Option<RawLocalJwks>,
    #[serde(default)]
    pub(super) from_headers: Option<Vec<RawHeaderSource>>,
    #[serde(default)]
    pub(super) from_params: Vec<String>,
    #[serde(default)]
    pub(super) from_cookies: Vec<String>,
    #[serde(default = "default_clock_skew")]
    pub(super) clock_skew_seconds: u64,
    #[serde(default)]
    pub(super) max_lifetime: Option<String>,
    #[serde(default)]
    pub(super) required_typ: Option<String>,
    #[serde(default)]
    pub(super) scope_claims: Option<Vec<String>>,
    #[serde(default)]
    pub(super) claim_to_headers: Vec<RawClaimToHeader>,
    #[serde(default)]
    pub(super) forward_payload_header: Option<String>,
    #[serde(default)]
    pub(super) revocation_feed: Option<RawRevocationFeed>,
}

pub(super) fn default_clock_skew() -> u64 {
    60
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRemoteJwks {
    pub(super) http_uri: RawHttpUri,
    #[serde(default)]
    pub(super) cache_duration: Option<String>,
    #[serde(default)]
    pub(super) failed_refetch_duration: Option<String>,
    #[serde(default)]
    pub(super) unknown_kid_refetch_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRevocationFeed {
    pub(super) http_uri: RawHttpUri,
    #[serde(default)]
    pub(super) poll_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLocalJwks {
    pub(super) inline_string: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaderSource {
    pub(super) name: String,
    #[serde(default)]
    pub(super) value_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClaimToHeader {
    pub(super) header_name: String,
    pub(super) claim_name: String,
}

/// A provider's place in `Settings::providers`. Only the configuration makes
/// them, so a lookup by id finds its provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProviderId(pub(crate) usize);

impl ProviderId {
    /// The provider's place in `Settings::providers`.
    pub fn index(self) -> usize {
        self.0
    }
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

pub(super) fn compile_provider(name: &str, p: RawProvider) -> Result<Provider, ConfigError> {
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
pub(super) fn local_jwks_has_secret(inline: &str) -> bool {
    serde_json::from_str::<Value>(inline)
        .ok()
        .and_then(|v| v.get("keys").and_then(Value::as_array).cloned())
        .is_some_and(|keys| {
            keys.iter()
                .any(|k| k.get("kty").and_then(Value::as_str) == Some("oct"))
        })
}

pub(super) fn compile_remote_jwks(
    name: &str,
    r: RawRemoteJwks,
) -> Result<RemoteSource, ConfigError> {
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

pub(super) fn compile_revocation_feed(
    name: &str,
    r: RawRevocationFeed,
) -> Result<RemoteSource, ConfigError> {
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
