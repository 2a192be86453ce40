//! Stages: JWT verification (fresh, or from the worker's token cache), the
//! validity window (one check for both), and revocation.

use super::decide::{unavailable, Authenticated, Authorizer, Failure};
use super::upstream::first_string;
use crate::config::{ProviderId, ProviderKeys};
use crate::credentials::{RequestView, TokenLocation};
use crate::crypto::verify_with_keys;
use crate::decision::Reason;
use crate::identity::{Caller, TokenDigest};
use crate::jwt::{check_validity_window, decode};
use crate::policy::{roles_of, scopes_of, Requirement, Rule};
use crate::token_cache::VerifiedToken;
use serde_json::Value;
use std::sync::Arc;

impl Authorizer<'_> {
    /// A JWT through verification, the validity window, revocation and the
    /// rule's policy, device binding and step-up.
    pub(super) fn authenticate(
        &self,
        token: &str,
        hash: &TokenDigest,
        location: &TokenLocation,
        rule: &Rule,
        req: &RequestView<'_>,
    ) -> Result<Authenticated, Failure> {
        let requirement = &rule.requirement;
        let verified = self.verified_token(token, hash, location, requirement)?;
        if let Err(reason) = self.check_window(&verified) {
            self.cache.borrow_mut().remove(&hash.0);
            return Err(reason.into());
        }
        self.check_revocation(&verified, hash)?;
        let scopes: Vec<&str> = verified.scopes.iter().map(String::as_str).collect();
        let roles: Vec<&str> = verified.roles.iter().map(String::as_str).collect();
        if !requirement.allow_anonymous {
            requirement.authorize(&scopes, &roles, &verified.claims)?;
            // Stages: the device the token is bound to, then the sign-in's
            // strength (last: a user steps up only when nothing else refuses).
            requirement.context.check_token(req, &verified.claims)?;
            if let Some(step_up) = &requirement.step_up {
                step_up.check(&verified.claims, self.now)?;
            }
        }
        Ok(Authenticated {
            limits: self.limit_checks(rule, req, Some((&verified.caller, &verified.claims))),
            identity: Arc::clone(&verified.identity),
            caller: verified.caller.clone(),
        })
    }

    /// The token's verification: from the cache when the provider's keys are
    /// still the ones that verified it, else in full (and then cached).
    fn verified_token(
        &self,
        token: &str,
        hash: &TokenDigest,
        location: &TokenLocation,
        requirement: &Requirement,
    ) -> Result<Arc<VerifiedToken>, Failure> {
        let cached = self.cache.borrow().get(&hash.0);
        match cached.filter(|v| self.same_keys(v)) {
            Some(v) => {
                self.check_provider(v.provider, location, requirement)?;
                Ok(v)
            }
            None => {
                let v = Arc::new(self.verify(token, location, requirement)?);
                self.cache.borrow_mut().insert(hash.0, v.clone());
                Ok(v)
            }
        }
    }

    /// `exp`/`nbf` against this request's clock, for fresh and cached tokens alike.
    fn check_window(&self, verified: &VerifiedToken) -> Result<(), Reason> {
        let skew = self
            .settings
            .provider(verified.provider)
            .map_or(0, |p| p.claim_rules.clock_skew_secs);
        check_validity_window(verified.exp, verified.nbf, skew, self.now)
    }

    /// Stage: a token whose `jti` is on its provider's revocation feed is refused.
    fn check_revocation(
        &self,
        verified: &VerifiedToken,
        hash: &TokenDigest,
    ) -> Result<(), Failure> {
        let Some(feed) = self
            .settings
            .provider(verified.provider)
            .and_then(|p| p.revocation_feed.as_ref())
        else {
            return Ok(());
        };
        let list = self
            .remote
            .revocations(verified.provider)
            .ok_or_else(|| unavailable(Reason::RevocationsUnavailable, feed))?;
        if verified
            .jti
            .as_deref()
            .is_some_and(|jti| list.contains(jti))
        {
            self.cache.borrow_mut().remove(&hash.0);
            return Err(Reason::Revoked.into());
        }
        Ok(())
    }

    /// Whether a cached verification still stands on the provider's current keys.
    pub(super) fn same_keys(&self, v: &VerifiedToken) -> bool {
        let current = match self.settings.provider(v.provider).map(|p| &p.keys) {
            Some(ProviderKeys::Local(keys)) => Some(keys.clone()),
            Some(ProviderKeys::Remote(_)) => self.remote.remote_keys(v.provider),
            None => None,
        };
        current.is_some_and(|keys| Arc::ptr_eq(&keys, &v.keys))
    }

    /// A provider's tokens count only on rules that accept the provider, and
    /// only where that provider reads them.
    pub(super) fn check_provider(
        &self,
        provider: ProviderId,
        location: &TokenLocation,
        requirement: &Requirement,
    ) -> Result<(), Reason> {
        let reads_there = self
            .settings
            .provider(provider)
            .is_some_and(|p| p.locations.contains(location));
        if requirement.accepts_provider(provider) && reads_there {
            Ok(())
        } else {
            Err(Reason::ProviderNotAllowed)
        }
    }

    /// Full verification: cheap checks first, then the signature, then the
    /// claims. What it establishes does not depend on the request, so it is cached.
    pub(super) fn verify(
        &self,
        token: &str,
        location: &TokenLocation,
        requirement: &Requirement,
    ) -> Result<VerifiedToken, Failure> {
        let s = self.settings;
        let decoded = decode(token)?;
        let issuer = decoded.issuer().ok_or(Reason::UnknownIssuer)?;
        let (provider, p) = s
            .providers_by_id()
            .find(|(_, p)| p.issuer == issuer)
            .ok_or(Reason::UnknownIssuer)?;
        self.check_provider(provider, location, requirement)?;
        if !p.algorithms.contains(&decoded.alg) {
            return Err(Reason::UnsupportedAlgorithm.into());
        }
        let keys = match &p.keys {
            ProviderKeys::Local(keys) => keys.clone(),
            ProviderKeys::Remote(src) => self
                .remote
                .remote_keys(provider)
                .ok_or_else(|| unavailable(Reason::KeysUnavailable, src))?,
        };
        match verify_with_keys(&decoded, &keys, self.verifier) {
            Err(Reason::UnknownKey)
                if matches!(p.keys, ProviderKeys::Remote(_))
                    && self.remote.may_refetch(provider, decoded.kid.as_deref()) =>
            {
                return Err(Failure::FetchKeys(provider, decoded.kid.clone()));
            }
            other => other?,
        }
        decoded.validate_claims(&p.claim_rules, self.now)?;
        let scopes = scopes_of(&decoded.claims, &p.scope_claims);
        let identity = self.identity_headers(p, &decoded, &scopes)?;
        let claim = |name: &str| {
            decoded
                .claims
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let number = |name: &str| decoded.claims.get(name).and_then(Value::as_u64);
        let exp = number("exp").ok_or(Reason::MissingClaim)?;
        let (nbf, jti) = (number("nbf"), claim("jti"));
        let caller = Caller {
            provider: p.name.clone(),
            subject: claim("sub"),
            client_id: first_string(&p.client_id_claims, &decoded.claims).map(str::to_string),
        };
        let roles = roles_of(&decoded.claims, &p.role_claims);
        let scopes: Vec<String> = scopes.into_iter().map(str::to_string).collect();
        let mut claims = decoded.claims;
        claims.retain(|name, _| s.retained_claims.contains(name));
        Ok(VerifiedToken {
            provider,
            keys,
            exp,
            nbf,
            jti,
            caller,
            scopes,
            roles,
            identity: identity.into(),
            claims,
        })
    }
}
