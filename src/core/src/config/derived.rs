//! Indices the request path needs, derived once from the compiled sections so
//! that no request recomputes them.

use super::{ApiKeys, Provider, RateLimits};
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
    for path in checked.chain(counted) {
        if !retained.iter().any(|r| r == path.top()) {
            retained.push(path.top().to_string());
        }
    }
    retained
}

/// Lock-outs, rate limits (anonymous callers count per address) and API-key
/// CIDRs need the client address; without them, it is never looked up.
pub(super) fn uses_client_ip(rate_limits: &RateLimits, api_keys: Option<&ApiKeys>) -> bool {
    rate_limits.brute_force.is_some() || !rate_limits.policies.is_empty() || api_keys.is_some()
}
