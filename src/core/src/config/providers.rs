//! `providers`: issuers, their keys (inline or a remote JWKS), where their
//! tokens are read, claim rules, identity headers and the revocation feed.

use super::fields::{
    compile_endpoint, duration_ms, is_forwardable_header, is_header_name, parse_duration_ms,
    RawHttpUri,
};
use super::rules::claim_path;
use super::{err, ConfigError};
use crate::alg::Algorithm;
use crate::claims::ClaimPath;
use crate::credentials::TokenLocation;
use crate::dpop::ProofRules;
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
    pub(super) role_claims: Option<Vec<String>>,
    #[serde(default)]
    pub(super) client_id_claims: Option<Vec<String>>,
    #[serde(default)]
    pub(super) claim_to_headers: Vec<RawClaimToHeader>,
    #[serde(default)]
    pub(super) forward_payload_header: Option<String>,
    #[serde(default)]
    pub(super) revocation_feed: Option<RawRevocationFeed>,
    #[serde(default)]
    pub(super) dpop: Option<RawDpop>,
}

/// `dpop`: how this provider's DPoP-bound tokens (RFC 9449) are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDpop {
    #[serde(default)]
    pub(super) required: bool,
    #[serde(default)]
    pub(super) algorithms: Option<Vec<String>>,
    #[serde(default)]
    pub(super) max_age: Option<String>,
    #[serde(default)]
    pub(super) public_base_uri: Option<String>,
    #[serde(default)]
    pub(super) nonce: Option<RawDpopNonce>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDpopNonce {
    pub(super) secret: RawInlineString,
    #[serde(default)]
    pub(super) lifetime: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInlineString {
    pub(super) inline_string: String,
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
    /// Where scopes are read: the first of these the token has.
    pub scope_claims: Vec<ClaimPath>,
    /// Where roles are read: every one of these the token has.
    pub role_claims: Vec<ClaimPath>,
    /// Where the client id is read: the first of these the token has.
    pub client_id_claims: Vec<ClaimPath>,
    pub claim_to_headers: Vec<(ClaimPath, String)>,
    pub forward_payload_header: Option<String>,
    pub revocation_feed: Option<RemoteSource>,
    /// How DPoP-bound tokens are checked. Every provider has it: a token bound
    /// to a key (`cnf.jkt`) is never accepted without its proof.
    pub dpop: Dpop,
}

/// DPoP settings of a provider (`dpop`).
#[derive(Debug, Clone)]
pub struct Dpop {
    /// Refuse this provider's tokens unless they are DPoP-bound.
    pub required: bool,
    pub proof: ProofRules,
    /// `scheme://authority` proofs' `htu` name, when Envoy is behind another
    /// proxy; else the request's `:scheme` and `:authority`.
    pub public_base_uri: Option<String>,
    /// Server nonces (RFC 9449 §9): (secret, lifetime in seconds).
    pub nonce: Option<(Vec<u8>, u64)>,
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
    // A provider that reads `Authorization: Bearer` also reads the DPoP
    // scheme (RFC 9449 §7.1): the binding decides which one a token needs.
    let reads_bearer = locations.iter().any(|l| {
        matches!(l, TokenLocation::Header { name, value_prefix: Some(p) }
            if name == "authorization" && p.eq_ignore_ascii_case("bearer "))
    });
    if reads_bearer {
        locations.push(TokenLocation::Header {
            name: "authorization".to_string(),
            value_prefix: Some(DPOP_SCHEME.to_string()),
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
    let paths = |field: &str, raw: Option<Vec<String>>, default: &[&str]| {
        let raw = raw.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
        if raw.is_empty() {
            return Err(err(at(field), "list at least one claim"));
        }
        raw.iter()
            .enumerate()
            .map(|(i, p)| claim_path(&at(&format!("{field}[{i}]")), p))
            .collect::<Result<Vec<_>, _>>()
    };
    let scope_claims = paths("scope_claims", p.scope_claims, &["scope", "scp"])?;
    let role_claims = paths("role_claims", p.role_claims, &["roles"])?;
    let client_id_claims = paths(
        "client_id_claims",
        p.client_id_claims,
        &["client_id", "azp"],
    )?;
    let mut claim_to_headers = Vec::new();
    for (i, c) in p.claim_to_headers.into_iter().enumerate() {
        let header = c.header_name.to_ascii_lowercase();
        if !is_forwardable_header(&header) {
            return Err(err(
                format!("providers.{name}.claim_to_headers[{i}].header_name"),
                "not a valid, forwardable header name",
            ));
        }
        let claim = claim_path(
            &format!("providers.{name}.claim_to_headers[{i}].claim_name"),
            &c.claim_name,
        )?;
        claim_to_headers.push((claim, header));
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
        role_claims,
        client_id_claims,
        claim_to_headers,
        forward_payload_header,
        revocation_feed: p
            .revocation_feed
            .map(|f| compile_revocation_feed(name, f))
            .transpose()?,
        dpop: compile_dpop(name, p.dpop)?,
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

/// The `Authorization` scheme of DPoP-bound tokens.
pub const DPOP_SCHEME: &str = "DPoP ";

fn compile_dpop(name: &str, raw: Option<RawDpop>) -> Result<Dpop, ConfigError> {
    let at = |field: &str| format!("providers.{name}.dpop.{field}");
    let raw = raw.unwrap_or(RawDpop {
        required: false,
        algorithms: None,
        max_age: None,
        public_base_uri: None,
        nonce: None,
    });
    let names = raw.algorithms.unwrap_or_else(|| vec!["ES256".to_string()]);
    if names.is_empty() {
        return Err(err(at("algorithms"), "list at least one algorithm"));
    }
    let mut algorithms = Vec::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        match Algorithm::from_name(n) {
            Some(a @ (Algorithm::ES256 | Algorithm::ES384)) => algorithms.push(a),
            _ => {
                return Err(err(
                    at(&format!("algorithms[{i}]")),
                    "DPoP proofs are checked for ES256 and ES384",
                ))
            }
        }
    }
    let max_age_secs = duration_ms(&at("max_age"), &raw.max_age, 60_000, 1_000)? / 1000;
    let public_base_uri = match raw.public_base_uri {
        Some(u) if crate::dpop::base_uri_ok(&u) => Some(u.trim_end_matches('/').to_string()),
        Some(_) => {
            return Err(err(
                at("public_base_uri"),
                "an absolute http(s) URI without path, query or fragment, such as https://api.example.com",
            ))
        }
        None => None,
    };
    let nonce = match raw.nonce {
        None => None,
        Some(n) if n.secret.inline_string.len() < 16 => {
            return Err(err(at("nonce.secret.inline_string"), "at least 16 bytes"))
        }
        Some(n) => Some((
            n.secret.inline_string.into_bytes(),
            duration_ms(&at("nonce.lifetime"), &n.lifetime, 300_000, 1_000)? / 1000,
        )),
    };
    Ok(Dpop {
        required: raw.required,
        proof: ProofRules {
            algorithms,
            max_age_secs,
        },
        public_base_uri,
        nonce,
    })
}
