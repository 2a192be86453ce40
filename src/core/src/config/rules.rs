//! `rules`: what a request must match, and what it then requires.

use super::{err, ConfigError, ProviderId};
use crate::claims::ClaimPath;
use crate::policy::{ClaimCheck, PathMatch, Requirement, Rule, SetRequirement};
use crate::ratelimit::PolicyId;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    /// Names the rule in audit events and stats; `rules[<index>]` by default.
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(rename = "match")]
    pub(super) matcher: RawMatch,
    pub(super) requires: RawRequirement,
    #[serde(default)]
    pub(super) rate_limits: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMatch {
    #[serde(default)]
    pub(super) path: Option<String>,
    #[serde(default)]
    pub(super) prefix: Option<String>,
    #[serde(default)]
    pub(super) template: Option<String>,
    #[serde(default)]
    pub(super) methods: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRequirement {
    #[serde(default)]
    pub(super) providers: Option<Vec<String>>,
    #[serde(default)]
    pub(super) scopes: Option<RawNames>,
    #[serde(default)]
    pub(super) roles: Option<RawNames>,
    #[serde(default)]
    pub(super) claims: Vec<RawClaimCheck>,
    #[serde(default)]
    pub(super) allow_anonymous: bool,
    #[serde(default)]
    pub(super) credentials: Option<Vec<CredentialKind>>,
    #[serde(default)]
    pub(super) api_key_in_query: bool,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum CredentialKind {
    Jwt,
    ApiKey,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
/// `{"all_of": [...]}` or `{"any_of": [...]}`, for scopes and roles.
pub(super) struct RawNames {
    #[serde(default)]
    pub(super) all_of: Option<Vec<String>>,
    #[serde(default)]
    pub(super) any_of: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClaimCheck {
    pub(super) name: String,
    #[serde(default)]
    pub(super) equals: Option<Value>,
    #[serde(default)]
    pub(super) contains: Option<Value>,
}

pub(super) fn compile_rule(
    at: &str,
    r: RawRule,
    providers: &[&str],
    policies: &[&str],
) -> Result<Rule, ConfigError> {
    let name = match r.name {
        None => at.to_string(),
        Some(name) if is_rule_name(&name) => name,
        Some(_) => return Err(err(
            format!("{at}.name"),
            "1 to 64 letters, digits, `-` and `_` (it names the rule in stats and audit events)",
        )),
    };
    let mut limits = Vec::with_capacity(r.rate_limits.len());
    for (i, name) in r.rate_limits.iter().enumerate() {
        let id = policies
            .iter()
            .position(|p| p == name)
            .map(PolicyId)
            .ok_or_else(|| {
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
                let id = providers
                    .iter()
                    .position(|p| p == name)
                    .map(ProviderId)
                    .ok_or_else(|| {
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
    let scopes = compile_names(&format!("{at}.requires.scopes"), q.scopes)?;
    let roles = compile_names(&format!("{at}.requires.roles"), q.roles)?;
    let mut claims = Vec::with_capacity(q.claims.len());
    for (i, c) in q.claims.into_iter().enumerate() {
        let field = format!("{at}.requires.claims[{i}]");
        let name = claim_path(&format!("{field}.name"), &c.name)?;
        let check = match (c.equals, c.contains) {
            (Some(v), None) if is_scalar(&v) => ClaimCheck::Equals(name, v),
            (None, Some(v)) if is_scalar(&v) => ClaimCheck::Contains(name, v),
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
    if q.allow_anonymous
        && (scopes.is_some() || roles.is_some() || !claims.is_empty() || provider_ids.is_some())
    {
        return Err(err(
            format!("{at}.requires.allow_anonymous"),
            "an anonymous rule cannot also require providers, scopes, roles or claims",
        ));
    }
    Ok(Rule {
        name,
        path,
        methods,
        limits,
        requirement: Requirement {
            providers: provider_ids,
            scopes,
            roles,
            claims,
            allow_anonymous: q.allow_anonymous,
            accept_jwt: kinds.contains(&CredentialKind::Jwt),
            accept_api_key,
            api_key_in_query: q.api_key_in_query,
        },
    })
}

/// Rule names go into stat names, so no dots (Envoy's name separator).
fn is_rule_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(super) fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

pub(super) fn check_path(field: &str, p: String) -> Result<String, ConfigError> {
    if !p.starts_with('/') || p.contains(['?', '#']) {
        return Err(err(
            field,
            "must start with `/` and contain no query or fragment",
        ));
    }
    crate::path::check_rule_path(&p).map_err(|m| err(field, m))?;
    Ok(p)
}

pub(super) fn check_scopes(field: &str, scopes: Vec<String>) -> Result<Vec<String>, ConfigError> {
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

/// `{"all_of": [...]}` or `{"any_of": [...]}`: exactly one, non-empty names.
fn compile_names(at: &str, raw: Option<RawNames>) -> Result<Option<SetRequirement>, ConfigError> {
    match raw {
        None => Ok(None),
        Some(RawNames {
            all_of: Some(s),
            any_of: None,
        }) => Ok(Some(SetRequirement::AllOf(check_scopes(
            &format!("{at}.all_of"),
            s,
        )?))),
        Some(RawNames {
            all_of: None,
            any_of: Some(s),
        }) => Ok(Some(SetRequirement::AnyOf(check_scopes(
            &format!("{at}.any_of"),
            s,
        )?))),
        Some(_) => Err(err(at, "set exactly one of `all_of` or `any_of`")),
    }
}

/// A claim path (`realm_access.roles`, `"https://example.com/roles"`).
pub(super) fn claim_path(at: &str, text: &str) -> Result<ClaimPath, ConfigError> {
    ClaimPath::parse(text).map_err(|e| err(at, format!("not a claim path ({e})")))
}
