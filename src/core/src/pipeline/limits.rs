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
use crate::ratelimit::{self, Enforcement, LimitCheck, LimitKey, PolicyId};
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
                let value = match (key, who) {
                    (LimitKey::ClientIp, _) => ip(),
                    (LimitKey::Header(h), _) => req
                        .header_values(h)
                        .next()
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .map(str::to_string),
                    (_, None) => ip(),
                    (LimitKey::Subject, Some((c, _))) => c.subject.clone(),
                    (LimitKey::ClientId, Some((c, _))) => c.client_id.clone(),
                    (LimitKey::Claim(name), Some((_, claims))) => {
                        name.lookup(claims).and_then(claim_header_value)
                    }
                }?;
                Some(LimitCheck { policy, value })
            })
            .collect()
    }
}

/// Counts the request against its policies (after everything else allowed it).
/// `Err`: the first policy that refuses, and its `429`. `Ok`: the `RateLimit`
/// headers for the response, when configured.
pub(super) fn enforce(
    limits: &RateLimits,
    host: Host<'_>,
    checks: &[LimitCheck],
    now_ms: u64,
) -> Result<Vec<(&'static str, String)>, (PolicyId, Denial)> {
    if checks.is_empty() {
        return Ok(Vec::new());
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
    // Every policy before the one that refused counted the request.
    let refused = match result {
        Enforcement::Limited(policy, _) => Some(policy),
        Enforcement::Allowed(_) => None,
    };
    for check in checks {
        let limited = Some(check.policy) == refused;
        host.metrics.rate_limit(check.policy, limited);
        if limited {
            break;
        }
    }
    match result {
        Enforcement::Limited(policy, verdict) => match limits.policy(policy) {
            Some(p) => Err((policy, ratelimit::limited_response(p, &verdict))),
            None => Ok(Vec::new()),
        },
        Enforcement::Allowed(Some((policy, verdict))) if limits.response_headers => Ok(limits
            .policy(policy)
            .map(|p| ratelimit::rate_limit_headers(p, &verdict).into())
            .unwrap_or_default()),
        Enforcement::Allowed(_) => Ok(Vec::new()),
    }
}
