//! `rate_limits`: policies, plans, brute-force lock-out and the shared table.

use super::fields::{duration_ms, is_header_name, parse_duration_ms};
use super::rules::claim_path;
use super::{err, ConfigError};
use crate::ratelimit::bruteforce::BruteForce;
use crate::ratelimit::gcra::Rate;
use crate::ratelimit::table::SlotTable;
use crate::ratelimit::{Backend, Declared, LimitKey, Policy, PolicyId, RlsBackend};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimits {
    #[serde(default)]
    pub(super) policies: BTreeMap<String, RawPolicy>,
    #[serde(default)]
    pub(super) brute_force: Option<RawBruteForce>,
    #[serde(default)]
    pub(super) response_headers: bool,
    #[serde(default)]
    pub(super) table: Option<RawTable>,
    #[serde(default)]
    pub(super) plans: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    #[serde(default)]
    pub(super) limit: Option<u64>,
    #[serde(default)]
    pub(super) window: Option<String>,
    #[serde(default)]
    pub(super) burst: Option<u64>,
    pub(super) key: RawLimitKey,
    /// Absent: counted locally. `{"rls": {...}}`: by a rate-limit service.
    #[serde(default)]
    pub(super) backend: Option<RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(super) enum RawBackend {
    Rls(RawRls),
}

/// Names as in Envoy's `envoy.filters.http.ratelimit` where it has them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRls {
    pub(super) cluster: String,
    pub(super) domain: String,
    #[serde(default)]
    pub(super) timeout: Option<String>,
    #[serde(default)]
    pub(super) failure_mode_deny: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(super) enum RawLimitKey {
    Subject,
    ClientId,
    ClientIp,
    Claim(String),
    Header(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBruteForce {
    pub(super) max_failures: u64,
    pub(super) window: String,
    pub(super) lockout: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTable {
    pub(super) slots: u32,
    pub(super) entries_per_slot: usize,
}

#[derive(Debug, Clone)]
pub struct RateLimits {
    pub policies: Vec<Policy>,
    pub brute_force: Option<BruteForce>,
    /// Send `RateLimit` headers on allowed responses too.
    pub response_headers: bool,
    pub table: SlotTable,
    /// Consumer plans: extra policies for an API-key consumer with that plan.
    pub plans: Vec<(String, Vec<PolicyId>)>,
}

impl RateLimits {
    pub fn policy(&self, id: PolicyId) -> Option<&Policy> {
        self.policies.get(id.0)
    }
}

/// Largest limit and burst, and longest window: keeps the rate math far from overflow.
pub(super) const MAX_LIMIT: u64 = 1_000_000_000;
pub(super) const MAX_WINDOW_MS: u64 = 366 * 86_400_000;
/// Longest wait for a rate-limit service's answer.
const MAX_RLS_TIMEOUT_MS: u64 = 60_000;

pub(super) fn compile_rate_limits(raw: Option<RawRateLimits>) -> Result<RateLimits, ConfigError> {
    let raw = raw.unwrap_or(RawRateLimits {
        policies: BTreeMap::new(),
        brute_force: None,
        response_headers: false,
        table: None,
        plans: BTreeMap::new(),
    });
    let mut policies = Vec::with_capacity(raw.policies.len());
    for (name, p) in raw.policies {
        let at = |f: &str| format!("rate_limits.policies.{name}.{f}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(err(
                format!("rate_limits.policies.{name}"),
                "policy names use letters, digits, `-`, `_` and `.`",
            ));
        }
        let limit = match p.limit {
            Some(limit) if limit == 0 || limit > MAX_LIMIT => {
                return Err(err(
                    at("limit"),
                    format!("must be between 1 and {MAX_LIMIT}"),
                ))
            }
            limit => limit,
        };
        let window_ms = match &p.window {
            None => None,
            Some(w) => {
                let ms = parse_duration_ms(w).map_err(|m| err(at("window"), m))?;
                if ms == 0 || ms > MAX_WINDOW_MS {
                    return Err(err(
                        at("window"),
                        "must be more than 0s and at most 366 days",
                    ));
                }
                Some(ms)
            }
        };
        let backend = match p.backend {
            None => {
                let (Some(limit), Some(window_ms)) = (limit, window_ms) else {
                    let missing = if limit.is_none() { "limit" } else { "window" };
                    return Err(err(
                        at(missing),
                        "required (a policy without `backend` is counted locally)",
                    ));
                };
                let burst = p.burst.unwrap_or(limit);
                if burst == 0 || burst > MAX_LIMIT {
                    return Err(err(
                        at("burst"),
                        format!("must be between 1 and {MAX_LIMIT}"),
                    ));
                }
                Backend::Local(Rate {
                    limit,
                    window_ms,
                    burst,
                })
            }
            Some(RawBackend::Rls(rls)) => {
                let at = |f: &str| at(&format!("backend.rls.{f}"));
                if p.burst.is_some() {
                    return Err(err(
                        format!("rate_limits.policies.{name}.burst"),
                        "a remote policy's limits are the rate-limit service's",
                    ));
                }
                let declared = match (limit, window_ms) {
                    (Some(limit), Some(window_ms)) => Some(Declared { limit, window_ms }),
                    (None, None) => None,
                    (Some(_), None) => {
                        return Err(err(
                            format!("rate_limits.policies.{name}.window"),
                            "required with `limit` (both describe the service's limit)",
                        ))
                    }
                    (None, Some(_)) => {
                        return Err(err(
                            format!("rate_limits.policies.{name}.limit"),
                            "required with `window` (both describe the service's limit)",
                        ))
                    }
                };
                if rls.cluster.is_empty() {
                    return Err(err(at("cluster"), "must name an Envoy cluster"));
                }
                if rls.domain.is_empty() {
                    return Err(err(at("domain"), "must not be empty"));
                }
                let timeout_ms = duration_ms(&at("timeout"), &rls.timeout, 20, 1)?;
                if timeout_ms > MAX_RLS_TIMEOUT_MS {
                    return Err(err(at("timeout"), "must be at most 60s"));
                }
                Backend::Rls(RlsBackend {
                    cluster: rls.cluster,
                    domain: rls.domain,
                    timeout_ms,
                    failure_mode_deny: rls.failure_mode_deny,
                    declared,
                })
            }
        };
        let key = match p.key {
            RawLimitKey::Subject => LimitKey::Subject,
            RawLimitKey::ClientId => LimitKey::ClientId,
            RawLimitKey::ClientIp => LimitKey::ClientIp,
            RawLimitKey::Claim(c) => LimitKey::Claim(claim_path(&at("key.claim"), &c)?),
            RawLimitKey::Header(h) if !is_header_name(&h.to_ascii_lowercase()) => {
                return Err(err(at("key.header"), "not a valid header name"))
            }
            RawLimitKey::Header(h) => LimitKey::Header(h.to_ascii_lowercase()),
        };
        policies.push(Policy { name, key, backend });
    }
    let brute_force = match raw.brute_force {
        None => None,
        Some(b) => {
            let at = |f: &str| format!("rate_limits.brute_force.{f}");
            if b.max_failures == 0 || b.max_failures > MAX_LIMIT {
                return Err(err(
                    at("max_failures"),
                    format!("must be between 1 and {MAX_LIMIT}"),
                ));
            }
            let window_ms = duration_ms(&at("window"), &Some(b.window), 0, 1)?;
            let lockout_ms = duration_ms(&at("lockout"), &Some(b.lockout), 0, 1)?;
            if window_ms > MAX_WINDOW_MS || lockout_ms > MAX_WINDOW_MS {
                return Err(err(at("window"), "durations are at most 366 days"));
            }
            Some(BruteForce {
                max_failures: b.max_failures,
                window_ms,
                lockout_ms,
            })
        }
    };
    let table = match raw.table {
        None => SlotTable {
            slots: 8192,
            entries_per_slot: 16,
        },
        Some(t) => {
            if t.slots == 0 || t.slots > 1 << 20 {
                return Err(err(
                    "rate_limits.table.slots",
                    "must be between 1 and 1048576",
                ));
            }
            if t.entries_per_slot == 0 || t.entries_per_slot > 256 {
                return Err(err(
                    "rate_limits.table.entries_per_slot",
                    "must be between 1 and 256",
                ));
            }
            SlotTable {
                slots: t.slots,
                entries_per_slot: t.entries_per_slot,
            }
        }
    };
    let mut plans = Vec::with_capacity(raw.plans.len());
    for (plan, names) in raw.plans {
        let ids = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                policies
                    .iter()
                    .position(|p| p.name == *n)
                    .map(PolicyId)
                    .ok_or_else(|| {
                        err(
                            format!("rate_limits.plans.{plan}[{i}]"),
                            format!("unknown rate-limit policy `{n}`"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        plans.push((plan, ids));
    }
    Ok(RateLimits {
        policies,
        brute_force,
        response_headers: raw.response_headers,
        table,
        plans,
    })
}
