//! `api_keys`: where keys are read, how they are hashed, and the key set.

use super::fields::{compile_endpoint, duration_ms, is_header_name};
use super::providers::{RawLocalJwks, RawRevocationFeed, RemoteSource};
use super::rate_limits::RateLimits;
use super::{err, ConfigError};
use crate::apikey::{KeyHashing, KeySet as ApiKeySet};
use crate::credentials::TokenLocation;
use crate::remote::FetchPolicy;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApiKeys {
    #[serde(default)]
    pub(super) from_headers: Option<Vec<String>>,
    #[serde(default)]
    pub(super) bearer_prefix: Option<String>,
    #[serde(default)]
    pub(super) query_param: Option<String>,
    #[serde(default)]
    pub(super) pepper: Option<RawLocalJwks>,
    #[serde(default)]
    pub(super) key_set: Option<RawLocalJwks>,
    #[serde(default)]
    pub(super) remote_key_set: Option<RawRevocationFeed>,
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

pub(super) fn compile_api_keys(
    raw: RawApiKeys,
    limits: &RateLimits,
) -> Result<ApiKeys, ConfigError> {
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
