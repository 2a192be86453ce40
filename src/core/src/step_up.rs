//! Step-up authentication (RFC 9470): a rule can require that the sign-in
//! behind a token was strong enough (`acr` one of a set, `amr` holding
//! methods) and recent enough (`auth_time` within `max_age`). A token that
//! falls short gets `401` with `error="insufficient_user_authentication"`; the
//! challenge carries `acr_values` and `max_age` (RFC 9470 §3), so the client
//! knows what to ask its authorization server for. RFC 9470 has no parameter
//! for `amr`: authorization servers take methods as `acr_values`, so a rule
//! that needs a method should also name the `acr` that yields it.
//!
//! The claims are RFC 9068's (`acr`, `amr`, `auth_time`) unless the rule names
//! others, so tokens from any issuer that sets them work.

use crate::claims::{string_set, ClaimPath};
use crate::decision::Reason;
use crate::policy::SetRequirement;
use serde_json::{Map, Value};

#[derive(Debug, Clone)]
pub struct StepUp {
    /// Accepted `acr` values, in order of preference; empty: any.
    pub acr: Vec<String>,
    /// Seconds since `auth_time`, at most.
    pub max_age: Option<u64>,
    pub amr: Option<SetRequirement>,
    pub acr_claim: ClaimPath,
    pub amr_claim: ClaimPath,
    pub auth_time_claim: ClaimPath,
}

impl StepUp {
    /// Whether the token's authentication meets the rule, at `now` (seconds).
    pub fn check(&self, claims: &Map<String, Value>, now: u64) -> Result<(), Reason> {
        let acr_ok = self.acr.is_empty()
            || match self.acr_claim.lookup(claims) {
                Some(Value::String(acr)) => self.acr.iter().any(|a| a == acr),
                Some(Value::Array(acrs)) => acrs
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|acr| self.acr.iter().any(|a| a == acr)),
                _ => false,
            };
        let recent = self.max_age.is_none_or(|max_age| {
            self.auth_time_claim
                .lookup(claims)
                .and_then(auth_time)
                .is_some_and(|at| now.saturating_sub(at) <= max_age)
        });
        let methods = self.amr.as_ref().is_none_or(|need| {
            let have = self.amr_claim.lookup(claims).map(string_set);
            need.satisfied_by(&have.unwrap_or_default())
        });
        if acr_ok && recent && methods {
            Ok(())
        } else {
            Err(Reason::InsufficientUserAuthentication)
        }
    }

    /// The challenge's auth-params after `error` and `error_description`:
    /// `acr_values="gold silver", max_age="300"` (RFC 9470 §3; quoted as in its
    /// examples). Everything the rule needs, whichever part the token missed,
    /// so that one new sign-in satisfies it. Values are checked at load to need
    /// no escaping.
    pub fn challenge_params(&self) -> String {
        let mut params = Vec::with_capacity(2);
        if !self.acr.is_empty() {
            params.push(format!("acr_values=\"{}\"", self.acr.join(" ")));
        }
        if let Some(max_age) = self.max_age {
            params.push(format!("max_age=\"{max_age}\""));
        }
        params.join(", ")
    }

    /// The claims the check reads (a cached token must keep them).
    pub fn claim_paths(&self) -> [&ClaimPath; 3] {
        [&self.acr_claim, &self.amr_claim, &self.auth_time_claim]
    }
}

/// `auth_time`: seconds since the epoch (a whole or fractional JSON number).
fn auth_time(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn step_up(acr: &[&str], max_age: Option<u64>, amr: Option<SetRequirement>) -> StepUp {
        StepUp {
            acr: acr.iter().map(|a| a.to_string()).collect(),
            max_age,
            amr,
            acr_claim: ClaimPath::parse("acr").unwrap(),
            amr_claim: ClaimPath::parse("amr").unwrap(),
            auth_time_claim: ClaimPath::parse("auth_time").unwrap(),
        }
    }

    fn check(s: &StepUp, claims: Value) -> Result<(), Reason> {
        s.check(claims.as_object().unwrap(), NOW)
    }

    #[test]
    fn acr_in_the_set() {
        let s = step_up(&["gold", "platinum"], None, None);
        assert_eq!(check(&s, json!({"acr": "gold"})), Ok(()));
        assert_eq!(check(&s, json!({"acr": ["x", "platinum"]})), Ok(()));
        for bad in [json!({"acr": "silver"}), json!({}), json!({"acr": 2})] {
            assert_eq!(check(&s, bad), Err(Reason::InsufficientUserAuthentication));
        }
        assert_eq!(s.challenge_params(), "acr_values=\"gold platinum\"");
    }

    #[test]
    fn auth_time_within_max_age() {
        let s = step_up(&[], Some(300), None);
        assert_eq!(check(&s, json!({"auth_time": NOW - 300})), Ok(()));
        assert_eq!(check(&s, json!({"auth_time": NOW as f64 - 12.5})), Ok(()));
        assert_eq!(
            check(&s, json!({"auth_time": NOW - 301})),
            Err(Reason::InsufficientUserAuthentication)
        );
        assert_eq!(
            check(&s, json!({})),
            Err(Reason::InsufficientUserAuthentication)
        );
        assert_eq!(
            check(&s, json!({"auth_time": "recently"})),
            Err(Reason::InsufficientUserAuthentication)
        );
        assert_eq!(s.challenge_params(), "max_age=\"300\"");
    }

    #[test]
    fn amr_holding_methods() {
        let s = step_up(
            &[],
            None,
            Some(SetRequirement::AnyOf(vec!["mfa".into(), "hwk".into()])),
        );
        assert_eq!(check(&s, json!({"amr": ["pwd", "hwk"]})), Ok(()));
        assert_eq!(check(&s, json!({"amr": "pwd mfa"})), Ok(()));
        assert_eq!(
            check(&s, json!({"amr": ["pwd"]})),
            Err(Reason::InsufficientUserAuthentication)
        );
        assert_eq!(s.challenge_params(), "");
    }

    #[test]
    fn the_challenge_names_everything_the_rule_needs() {
        let s = step_up(&["urn:acme:loa:2"], Some(60), None);
        // Recent enough but the wrong acr: both parameters all the same.
        assert_eq!(
            check(&s, json!({"acr": "urn:acme:loa:1", "auth_time": NOW})),
            Err(Reason::InsufficientUserAuthentication)
        );
        assert_eq!(
            s.challenge_params(),
            "acr_values=\"urn:acme:loa:2\", max_age=\"60\""
        );
        assert_eq!(
            check(&s, json!({"acr": "urn:acme:loa:2", "auth_time": NOW - 10})),
            Ok(())
        );
    }
}
