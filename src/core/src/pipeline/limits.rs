//! Stage: rate limits. Which policies count the request, on what value, and
//! the shared-table enforcement once the request is otherwise allowed.

use super::decide::Authorizer;
use super::identity_headers::claim_header_value;
use crate::config::RateLimits;
use crate::credentials::RequestView;
use crate::decision::Denial;
use crate::host::Host;
use crate::identity::Caller;
use crate::policy::Rule;
use crate::ratelimit::table::Churn;
use crate::ratelimit::{self, Enforcement, LimitCheck, LimitKey, LimitState, PolicyId, ValueKind};
use serde_json::{Map, Value};

impl Authorizer<'_> {
    /// The values the rule's rate-limit policies count on. Without a verified
    /// identity (anonymous access), identity-based policies count per client IP.
    /// A policy whose value is missing (no such claim or header) is skipped.
    pub(super) fn limit_checks(
        &self,
        rule: &Rule,
        req: &RequestView<'_>,
        who: Option<(&Caller, &Map<String, Value>)>,
    ) -> Vec<LimitCheck> {
        let ip = || req.client_ip.map(str::to_string);
        rule.limits
            .iter()
            .filter_map(|&policy| {
                let key = &self.settings.rate_limits.policy(policy)?.key;
                let mut kind = ValueKind::PolicyKey;
                let value = match (key, who) {
                    (LimitKey::ClientIp, _) => ip(),
                    (LimitKey::Header(h), _) => req
                        .header_values(h)
                        .next()
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .map(str::to_string),
                    (_, None) => {
                        kind = ValueKind::ClientIp;
                        ip()
                    }
                    (LimitKey::Subject, Some((c, _))) => c.subject.clone(),
                    (LimitKey::ClientId, Some((c, _))) => c.client_id.clone(),
                    (LimitKey::Claim(name), Some((_, claims))) => {
                        name.lookup(claims).and_then(claim_header_value)
                    }
                }?;
                Some(LimitCheck {
                    policy,
                    value,
                    kind,
                })
            })
            .collect()
    }
}

/// The `RateLimit` headers of the most constrained policy that admitted the
/// request so far (only with `response_headers`), local or remote.
#[derive(Debug, Default)]
pub(super) struct TightestLimit(Option<(u64, Vec<(&'static str, String)>)>);

impl TightestLimit {
    /// Keeps `state`'s headers if its policy has fewer requests left.
    pub(super) fn offer(&mut self, name: &str, state: &LimitState) {
        if self.0.as_ref().is_none_or(|(r, _)| state.remaining < *r) {
            self.0 = Some((state.remaining, state.headers(name)));
        }
    }

    pub(super) fn into_headers(self) -> Vec<(&'static str, String)> {
        self.0.map(|(_, h)| h).unwrap_or_default()
    }
}

/// Counts the request against its local policies (after everything else
/// allowed it; remote ones are `remote_limits`'). `Err`: the first policy that
/// refuses, and its `429`. `Ok`: the tightest policy, when `RateLimit` headers
/// are configured on responses.
pub(super) fn enforce(
    limits: &RateLimits,
    host: Host<'_>,
    checks: &[LimitCheck],
    now_ms: u64,
) -> Result<TightestLimit, (PolicyId, Denial)> {
    let mut tightest = TightestLimit::default();
    let local = |c: &&LimitCheck| {
        limits
            .policy(c.policy)
            .is_some_and(|p| p.local_rate().is_some())
    };
    if !checks.iter().any(|c| local(&c)) {
        return Ok(tightest);
    }
    let mut churn = Churn::default();
    let result = ratelimit::enforce(
        &limits.table,
        host.shared,
        &limits.policies,
        checks,
        now_ms,
        &mut churn,
    );
    host.metrics.churn(&churn);
    // Every local policy before the one that refused counted the request.
    let refused = match result {
        Enforcement::Limited(policy, _) => Some(policy),
        Enforcement::Allowed(_) => None,
    };
    for check in checks.iter().filter(local) {
        let limited = Some(check.policy) == refused;
        host.metrics.rate_limit(check.policy, limited);
        if limited {
            break;
        }
    }
    let state = |policy| {
        let p = limits.policy(policy)?;
        Some((p, p.local_rate()?))
    };
    match result {
        Enforcement::Limited(policy, verdict) => match state(policy) {
            Some((p, rate)) => Err((
                policy,
                LimitState::local(rate, &verdict).limited_response(&p.name),
            )),
            None => Ok(tightest),
        },
        Enforcement::Allowed(Some((policy, verdict))) if limits.response_headers => {
            if let Some((p, rate)) = state(policy) {
                tightest.offer(&p.name, &LimitState::local(rate, &verdict));
            }
            Ok(tightest)
        }
        Enforcement::Allowed(_) => Ok(tightest),
    }
}
