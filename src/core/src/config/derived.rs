//! Indices the request path needs, derived once from the compiled sections so
//! that no request recomputes them.

use super::{ApiKeySource, ApiKeys, Provider, RateLimits};
use crate::credentials::TokenLocation;
use crate::policy::{ClaimCheck, Rule};
use crate::ratelimit::LimitKey;

/// Every place any provider reads tokens from, deduplicated, in config order.
pub(super) fn token_locations(providers: &[Provider]) -> Vec<TokenLocation> {
    let mut locations: Vec<TokenLocation> = Vec::new();
    for loc in providers.iter().flat_map(|p| p.locations.iter()) {
        if !locations.contains(loc) {
            locations.push(loc.clone());
        }
    }
    locations
}

/// Every place a credential is removed from before the upstream: the token
/// locations plus the API-key headers, bearer and query parameter.
pub(super) fn strip_locations(
    token_locations: &[TokenLocation],
    api_keys: Option<&ApiKeys>,
) -> Vec<TokenLocation> {
    let mut locations = token_locations.to_vec();
    // DPoP proofs (RFC 9449) are credentials too: never forwarded.
    locations.push(TokenLocation::Header {
        name: "dpop".to_string(),
        value_prefix: None,
    });
    if let Some(k) = api_keys {
        let bearer = k.bearer.iter().map(|(location, _)| location);
        for loc in k.headers.iter().chain(bearer).chain([&k.query]) {
            if !locations.contains(loc) {
                locations.push(loc.clone());
            }
        }
    }
    locations
}

/// The claims any decision after verification reads: cached tokens keep only
/// these (identity headers are computed once, at verification).
/// The top-level claims that hold them are kept whole.
pub(super) fn retained_claims(rules: &[Rule], rate_limits: &RateLimits) -> Vec<String> {
    let mut retained: Vec<String> = Vec::new();
    let checked = rules
        .iter()
        .flat_map(|r| &r.requirement.claims)
        .map(|c| match c {
            ClaimCheck::Equals(path, _) | ClaimCheck::Contains(path, _) => path,
        });
    let counted = rate_limits.policies.iter().filter_map(|p| match &p.key {
        LimitKey::Claim(path) => Some(path),
        _ => None,
    });
    let bound = rules
        .iter()
        .filter_map(|r| r.requirement.context.device_binding.as_ref())
        .map(|d| &d.claim);
    let step_up = rules
        .iter()
        .filter_map(|r| r.requirement.step_up.as_ref())
        .flat_map(|s| s.claim_paths());
    for path in checked.chain(counted).chain(bound).chain(step_up) {
        if !retained.iter().any(|r| r == path.top()) {
            retained.push(path.top().to_string());
        }
    }
    retained
}

/// Whether a decision can need the client address (a host call per request,
/// about 0.7 µs): lock-outs, policies counting per address (keyed on it, or
/// identity-keyed on a rule anonymous callers pass, who count per address),
/// inline API keys bound to address blocks, client-address conditions. A
/// fetched key set is judged when it loads ([`crate::worker::Worker::needs_client_ip`]).
pub(super) fn uses_client_ip(
    rules: &[Rule],
    rate_limits: &RateLimits,
    api_keys: Option<&ApiKeys>,
) -> bool {
    let counts_per_address = |rule: &Rule| {
        rule.limits.iter().any(|&id| {
            rate_limits.policy(id).is_some_and(|p| match p.key {
                LimitKey::ClientIp => true,
                LimitKey::Header(_) => false,
                _ => rule.requirement.allow_anonymous,
            })
        })
    };
    let address_bound_keys = api_keys.is_some_and(|k| match &k.key_set {
        ApiKeySource::Local(set) => set.binds_addresses(),
        ApiKeySource::Remote(_) => false,
    });
    rate_limits.brute_force.is_some()
        || address_bound_keys
        || rules
            .iter()
            .any(|r| counts_per_address(r) || r.requirement.context.uses_client_address())
}
