//! Rate limits, quotas and brute-force protection, counted per verified
//! identity in shared data so that all Envoy workers enforce one limit.
//!
//! * [`gcra`]: the rate math, one number per key.
//! * [`table`]: bounded, CAS-updated counter storage in shared data.
//! * this module: named policies, what they count on, enforcement, and the
//!   `429` response with `Retry-After` and the IETF `RateLimit` headers
//!   (draft-ietf-httpapi-ratelimit-headers).
//! * [`bruteforce`]: failed-authentication lock-out per client IP.
//!
//! Counting is behind the small [`table::SlotTable`] API so that a fleet-wide
//! backend (Envoy's RLS v3 protocol) can replace the local counters for chosen
//! policies later; see the README's rate-limit design section.

pub mod bruteforce;
pub mod gcra;
pub mod table;

use crate::claims::ClaimPath;
use crate::decision::{Denial, Reason};
use crate::host::SharedData;
use gcra::{Rate, Verdict};
use table::{key_hash, Churn, Entry, SlotTable};

/// What a policy counts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The verified `sub`.
    Subject,
    /// The verified client id (`client_id`, else `azp`).
    ClientId,
    /// A verified claim, such as a tenant.
    Claim(ClaimPath),
    /// A request header (lower-case name).
    Header(String),
    /// The client's address (see `client_ip` in the configuration).
    ClientIp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub rate: Rate,
    pub key: LimitKey,
}

/// A policy's place in `RateLimits::policies`. Only the configuration makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyId(pub(crate) usize);

impl PolicyId {
    /// The policy's place in `RateLimits::policies`.
    pub fn index(self) -> usize {
        self.0
    }
}

/// One policy applied to one request: the policy and the counted value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitCheck {
    pub policy: PolicyId,
    pub value: String,
}

/// The outcome of enforcing a request's policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    /// Allowed. The most constrained policy, for optional `RateLimit` headers.
    Allowed(Option<(PolicyId, Verdict)>),
    /// Refused by this policy.
    Limited(PolicyId, Verdict),
}

/// Applies `checks` in order. Each allowed check consumes from its counter;
/// the first refusal stops (earlier checks have already counted the request,
/// as with Envoy's own descriptors). `Contended` storage fails open: a limit
/// must never take the API down.
pub fn enforce(
    table: &SlotTable,
    shared: &dyn SharedData,
    policies: &[Policy],
    checks: &[LimitCheck],
    now_ms: u64,
    churn: &mut Churn,
) -> Enforcement {
    let mut tightest: Option<(PolicyId, Verdict)> = None;
    for check in checks {
        let Some(policy) = policies.get(check.policy.0) else {
            continue;
        };
        let hash = key_hash(&format!("p\0{}\0{}", policy.name, check.value));
        let result = table.update(shared, hash, now_ms, |entry| {
            let verdict = policy.rate.check(entry.map(|e| e.a), now_ms);
            let next = Entry {
                hash,
                a: verdict.tat_ms,
                b: 0,
                // Once the TAT has passed, the entry is as good as a fresh one.
                expires_ms: verdict.tat_ms.max(now_ms + 1),
            };
            (verdict.allowed.then_some(next).or(entry.copied()), verdict)
        });
        let verdict = match result {
            Ok((verdict, c)) => {
                churn.entries_delta += c.entries_delta;
                churn.evicted += c.evicted;
                verdict
            }
            Err(table::Contended) => continue,
        };
        if !verdict.allowed {
            return Enforcement::Limited(check.policy, verdict);
        }
        let tighter = tightest.is_none_or(|(_, t)| verdict.remaining < t.remaining);
        if tighter {
            tightest = Some((check.policy, verdict));
        }
    }
    Enforcement::Allowed(tightest)
}

fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// `RateLimit-Policy` and `RateLimit` header values for one policy.
pub fn rate_limit_headers(policy: &Policy, verdict: &Verdict) -> [(&'static str, String); 2] {
    let name = &policy.name;
    [
        (
            "ratelimit-policy",
            format!(
                "\"{name}\";q={};w={}",
                policy.rate.limit,
                ceil_secs(policy.rate.window_ms).max(1)
            ),
        ),
        (
            "ratelimit",
            format!(
                "\"{name}\";r={};t={}",
                verdict.remaining,
                ceil_secs(verdict.reset_ms)
            ),
        ),
    ]
}

/// The `429` for a request a policy refused. `RateLimit`'s `t` and
/// `Retry-After` agree: both say when the next request is admitted (the
/// bucket refills continuously, so that is before it is full again).
pub fn limited_response(policy: &Policy, verdict: &Verdict) -> Denial {
    let retry_after = ceil_secs(verdict.retry_after_ms).max(1);
    let refused = Verdict {
        reset_ms: retry_after * 1000,
        ..*verdict
    };
    let mut headers: Vec<(&'static str, String)> = rate_limit_headers(policy, &refused).into();
    headers.push(("retry-after", retry_after.to_string()));
    headers.push(("content-type", "application/json".to_string()));
    headers.push(("cache-control", "no-store".to_string()));
    Denial {
        reason: Reason::RateLimited,
        status: 429,
        headers,
        body: serde_json::json!({
            "error": "rate_limited",
            "error_description": Reason::RateLimited.description(),
        })
        .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fakes::FakeShared;

    fn policies() -> Vec<Policy> {
        vec![
            Policy {
                name: "per-client".into(),
                rate: Rate {
                    limit: 2,
                    window_ms: 1_000,
                    burst: 2,
                },
                key: LimitKey::ClientId,
            },
            Policy {
                name: "tenant-quota".into(),
                rate: Rate {
                    limit: 3,
                    window_ms: 60_000,
                    burst: 3,
                },
                key: LimitKey::Claim(ClaimPath::parse("tenant").unwrap()),
            },
        ]
    }

    fn run(s: &FakeShared, client: &str, tenant: &str, now: u64) -> Enforcement {
        let table = SlotTable {
            slots: 16,
            entries_per_slot: 8,
        };
        let checks = vec![
            LimitCheck {
                policy: PolicyId(0),
                value: client.into(),
            },
            LimitCheck {
                policy: PolicyId(1),
                value: tenant.into(),
            },
        ];
        enforce(&table, s, &policies(), &checks, now, &mut Churn::default())
    }

    #[test]
    fn per_client_limit_and_shared_tenant_quota() {
        let s = FakeShared::default();
        assert!(matches!(run(&s, "a", "acme", 0), Enforcement::Allowed(_)));
        assert!(matches!(run(&s, "a", "acme", 0), Enforcement::Allowed(_)));
        // Client a is out of its per-second budget.
        assert!(matches!(
            run(&s, "a", "acme", 0),
            Enforcement::Limited(PolicyId(0), _)
        ));
        // Client b shares the tenant's quota: one left, then the quota refuses.
        assert!(matches!(run(&s, "b", "acme", 0), Enforcement::Allowed(_)));
        match run(&s, "b", "acme", 0) {
            Enforcement::Limited(PolicyId(1), v) => assert_eq!(v.retry_after_ms, 20_000),
            other => panic!("{other:?}"),
        }
        // Another tenant is unaffected.
        assert!(matches!(run(&s, "c", "other", 0), Enforcement::Allowed(_)));
    }

    #[test]
    fn allowed_reports_the_tightest_policy() {
        let s = FakeShared::default();
        match run(&s, "a", "acme", 0) {
            Enforcement::Allowed(Some((policy, v))) => {
                assert_eq!(policy, PolicyId(0));
                assert_eq!(v.remaining, 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn response_headers() {
        let p = &policies()[0];
        let v = Verdict {
            allowed: false,
            tat_ms: 0,
            remaining: 0,
            // The whole burst is back in 2 s; the next request in 0.4 s.
            reset_ms: 2_000,
            retry_after_ms: 400,
        };
        let d = limited_response(p, &v);
        assert_eq!(d.status, 429);
        let h = |n: &str| {
            d.headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(h("retry-after").as_deref(), Some("1"));
        assert_eq!(
            h("ratelimit-policy").as_deref(),
            Some("\"per-client\";q=2;w=1")
        );
        assert_eq!(
            h("ratelimit").as_deref(),
            Some("\"per-client\";r=0;t=1"),
            "t agrees with Retry-After on a 429"
        );
        let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body["error"], "rate_limited");
    }
}
