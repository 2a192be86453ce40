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
//! * [`rls`]: the fleet-wide backend, Envoy's rate-limit service protocol, for
//!   policies that name one (counted by the service, not in the table).

pub mod bruteforce;
pub mod gcra;
pub mod rls;
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
    pub key: LimitKey,
    pub backend: Backend,
}

/// Where a policy's requests are counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// In this Envoy's shared table, at this rate.
    Local(Rate),
    /// By a rate-limit service (RLS v3) the whole fleet shares.
    Rls(RlsBackend),
}

/// A rate-limit service reached through an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlsBackend {
    pub cluster: String,
    pub domain: String,
    pub timeout_ms: u64,
    /// A failed call (unreachable, error, timeout, unreadable answer) refuses
    /// the request instead of letting it through.
    pub failure_mode_deny: bool,
    /// The limit as configured in the service, for the `429` headers when the
    /// service's answer does not state it.
    pub declared: Option<Declared>,
}

/// A remote policy's `limit` per `window`, as the operator states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declared {
    pub limit: u64,
    pub window_ms: u64,
}

impl Policy {
    /// The rate of a local policy.
    pub fn local_rate(&self) -> Option<&Rate> {
        match &self.backend {
            Backend::Local(rate) => Some(rate),
            Backend::Rls(_) => None,
        }
    }

    pub fn rls(&self) -> Option<&RlsBackend> {
        match &self.backend {
            Backend::Rls(rls) => Some(rls),
            Backend::Local(_) => None,
        }
    }

    /// The key of the descriptor entry that carries a check's value:
    /// `subject`, `client_id`, `client_ip`, `consumer`, the claim path or the
    /// header name.
    pub fn descriptor_key(&self, kind: ValueKind) -> String {
        match (kind, &self.key) {
            (ValueKind::Consumer, _) => "consumer".to_string(),
            (ValueKind::ClientIp, _) | (ValueKind::PolicyKey, LimitKey::ClientIp) => {
                "client_ip".to_string()
            }
            (ValueKind::PolicyKey, LimitKey::Subject) => "subject".to_string(),
            (ValueKind::PolicyKey, LimitKey::ClientId) => "client_id".to_string(),
            (ValueKind::PolicyKey, LimitKey::Claim(path)) => path.to_string(),
            (ValueKind::PolicyKey, LimitKey::Header(name)) => name.clone(),
        }
    }
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
    pub kind: ValueKind,
}

/// What a check's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// What the policy's `key` names.
    PolicyKey,
    /// The client's address, standing in for an identity on anonymous access.
    ClientIp,
    /// An API-key consumer, counted by its plan's policies.
    Consumer,
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
/// must never take the API down. Checks of remote policies are skipped.
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
        let Some((policy, rate)) = policies
            .get(check.policy.0)
            .and_then(|p| Some((p, p.local_rate()?)))
        else {
            continue;
        };
        let hash = key_hash(&format!("p\0{}\0{}", policy.name, check.value));
        let result = table.update(shared, hash, now_ms, |entry| {
            let verdict = rate.check(entry.map(|e| e.a), now_ms);
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

/// What the `RateLimit` headers say about one policy, local or remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitState {
    /// `limit` per `window` seconds, for `RateLimit-Policy` (omitted when unknown).
    pub quota: Option<(u64, u64)>,
    pub remaining: u64,
    /// Seconds until the whole quota is back.
    pub reset_secs: u64,
    /// Seconds until the next request is admitted (`Retry-After` on a `429`).
    pub retry_after_secs: u64,
}

impl LimitState {
    /// A local policy's state after `verdict`.
    pub fn local(rate: &Rate, verdict: &Verdict) -> LimitState {
        LimitState {
            quota: Some((rate.limit, ceil_secs(rate.window_ms).max(1))),
            remaining: verdict.remaining,
            reset_secs: ceil_secs(verdict.reset_ms),
            retry_after_secs: ceil_secs(verdict.retry_after_ms),
        }
    }

    /// `RateLimit-Policy` (when the quota is known) and `RateLimit` header values.
    pub fn headers(&self, name: &str) -> Vec<(&'static str, String)> {
        let mut headers = Vec::with_capacity(2);
        if let Some((limit, window)) = self.quota {
            headers.push((
                "ratelimit-policy",
                format!("\"{name}\";q={limit};w={window}"),
            ));
        }
        headers.push((
            "ratelimit",
            format!("\"{name}\";r={};t={}", self.remaining, self.reset_secs),
        ));
        headers
    }

    /// The `429` for a request this policy refused. `RateLimit`'s `t` and
    /// `Retry-After` agree: both say when the next request is admitted (a local
    /// bucket refills continuously, so that is before it is full again).
    pub fn limited_response(&self, name: &str) -> Denial {
        let retry_after = self.retry_after_secs.max(1);
        let refused = LimitState {
            reset_secs: retry_after,
            ..self.clone()
        };
        let mut headers = refused.headers(name);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fakes::FakeShared;

    fn policies() -> Vec<Policy> {
        vec![
            Policy {
                name: "per-client".into(),
                backend: Backend::Local(Rate {
                    limit: 2,
                    window_ms: 1_000,
                    burst: 2,
                }),
                key: LimitKey::ClientId,
            },
            Policy {
                name: "tenant-quota".into(),
                backend: Backend::Local(Rate {
                    limit: 3,
                    window_ms: 60_000,
                    burst: 3,
                }),
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
                kind: ValueKind::PolicyKey,
            },
            LimitCheck {
                policy: PolicyId(1),
                value: tenant.into(),
                kind: ValueKind::PolicyKey,
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
        let d = LimitState::local(p.local_rate().unwrap(), &v).limited_response(&p.name);
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

    #[test]
    fn descriptor_keys_name_what_is_counted() {
        let mut p = policies().remove(1);
        assert_eq!(p.descriptor_key(ValueKind::PolicyKey), "tenant");
        assert_eq!(p.descriptor_key(ValueKind::ClientIp), "client_ip");
        assert_eq!(p.descriptor_key(ValueKind::Consumer), "consumer");
        p.key = LimitKey::Claim(ClaimPath::parse("realm_access.\"a.b\"").unwrap());
        assert_eq!(
            p.descriptor_key(ValueKind::PolicyKey),
            "realm_access.\"a.b\""
        );
        p.key = LimitKey::Header("x-app".into());
        assert_eq!(p.descriptor_key(ValueKind::PolicyKey), "x-app");
        p.key = LimitKey::Subject;
        assert_eq!(p.descriptor_key(ValueKind::PolicyKey), "subject");
    }

    #[test]
    fn an_unknown_quota_leaves_out_ratelimit_policy() {
        let state = LimitState {
            quota: None,
            remaining: 0,
            reset_secs: 30,
            retry_after_secs: 0,
        };
        let d = state.limited_response("fleet");
        let names: Vec<&str> = d.headers.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            ["ratelimit", "retry-after", "content-type", "cache-control"]
        );
        assert_eq!(d.headers[1].1, "1", "Retry-After is at least 1");
    }
}
