//! Stages: JWT verification (fresh, or from the worker's token cache), the
//! per-request checks for both (the validity window, the certificate binding),
//! and revocation.

use super::decide::{unavailable, Authenticated, Authorizer, Failure, ProofUse};
use super::identity_headers::first_string;
use crate::client_cert::{ClientCertificate, TokenBinding};
use crate::config::{ProviderId, ProviderKeys, DPOP_SCHEME};
use crate::credentials::{RequestView, TokenLocation};
use crate::crypto::verify_with_keys;
use crate::decision::{render_dpop_denial, Reason};
use crate::dpop::{nonce_at, nonce_ok, verify_proof, ProofTarget};
use crate::identity::{Caller, TokenDigest};
use crate::jwt::{check_validity_window, decode};
use crate::policy::{roles_of, scopes_of, Requirement, Rule};
use crate::token_cache::{CacheKey, VerifiedToken};
use serde_json::Value;
use std::sync::Arc;

impl Authorizer<'_> {
    /// A JWT through verification, the validity window, revocation and the
    /// rule's policy, device binding and step-up.
    pub(super) fn authenticate(
        &self,
        token: &str,
        location: &TokenLocation,
        rule: &Rule,
        req: &RequestView<'_>,
    ) -> Result<Authenticated, Failure> {
        let requirement = &rule.requirement;
        let key = self.cache.borrow().key(token);
        let verified = self.verified_token(token, key, location, requirement)?;
        if let Err(reason) = self.check_window(&verified) {
            self.cache.borrow_mut().remove(key);
            return Err(reason.into());
        }
        check_certificate_binding(verified.binding, requirement, req)
            .map_err(|r| Failure::from(r).of(&verified.caller))?;
        self.check_revocation(&verified, key)
            .map_err(|f| f.of(&verified.caller))?;
        let proof = self.check_binding(&verified, token, location, req)?;
        let scopes: Vec<&str> = verified.scopes.iter().map(String::as_str).collect();
        let roles: Vec<&str> = verified.roles.iter().map(String::as_str).collect();
        if !requirement.allow_anonymous {
            let refused = |r| Failure::from(r).of(&verified.caller);
            requirement
                .authorize(&scopes, &roles, &verified.claims)
                .map_err(refused)?;
            // Stages: the device the token is bound to, then the sign-in's
            // strength (last: a user steps up only when nothing else refuses).
            requirement
                .context
                .check_token(req, &verified.claims)
                .map_err(refused)?;
            if let Some(step_up) = &requirement.step_up {
                step_up.check(&verified.claims, self.now).map_err(refused)?;
            }
        }
        Ok(Authenticated {
            limits: self.limit_checks(rule, req, Some((&verified.caller, &verified.claims))),
            identity: Arc::clone(&verified.identity),
            caller: Arc::clone(&verified.caller),
            digest: verified.digest,
            proof,
        })
    }

    /// Stage: sender constraint (RFC 9449). A token bound to a key (`cnf.jkt`)
    /// needs the DPoP scheme and a proof made with that key for this request;
    /// a token sent with the DPoP scheme must be bound. Runs on cache hits too.
    fn check_binding(
        &self,
        verified: &VerifiedToken,
        token: &str,
        location: &TokenLocation,
        req: &RequestView<'_>,
    ) -> Result<Option<ProofUse>, Failure> {
        let Some(p) = self.settings.provider(verified.provider) else {
            return Err(Reason::ProviderNotAllowed.into());
        };
        let dpop = &p.dpop;
        let deny = |reason: Reason, description: &str, nonce: Option<String>| {
            Failure::Rendered(render_dpop_denial(
                reason,
                &dpop.proof.algorithms,
                description,
                nonce,
            ))
        };
        let as_dpop = matches!(location, TokenLocation::Header { value_prefix: Some(s), .. }
            if s.eq_ignore_ascii_case(DPOP_SCHEME));
        let jkt = match (&verified.jkt, as_dpop) {
            (None, false) if dpop.required => {
                let r = Reason::DpopRequired;
                return Err(deny(r, r.description(), None));
            }
            (None, false) => return Ok(None),
            (Some(_), false) => {
                let r = Reason::DpopBoundTokenAsBearer;
                return Err(deny(r, r.description(), None));
            }
            (None, true) => {
                let r = Reason::DpopRequired;
                return Err(deny(r, "the access token is not DPoP-bound", None));
            }
            (Some(jkt), true) => jkt,
        };
        let mut proofs = req.header_values("dpop");
        let (Some(raw), None) = (proofs.next(), proofs.next()) else {
            let r = Reason::DpopProofInvalid;
            return Err(deny(r, "send exactly one DPoP proof header", None));
        };
        let raw = std::str::from_utf8(raw).unwrap_or_default();
        let htu = htu(dpop.public_base_uri.as_deref(), req);
        let target = ProofTarget {
            method: req.method,
            htu: &htu,
            access_token: token,
        };
        let proof = verify_proof(raw, target, &dpop.proof, self.verifier, self.now)
            .map_err(|e| deny(Reason::DpopProofInvalid, e.description(), None))?;
        if &proof.jkt != jkt {
            let r = Reason::DpopKeyMismatch;
            return Err(deny(r, r.description(), None));
        }
        if let Some((secret, lifetime)) = &dpop.nonce {
            if !nonce_ok(secret, *lifetime, self.now, proof.nonce.as_deref()) {
                let r = Reason::DpopNonceRequired;
                let nonce = nonce_at(secret, *lifetime, self.now);
                return Err(deny(r, r.description(), Some(nonce)));
            }
        }
        Ok(Some(ProofUse {
            proof,
            rules: dpop.proof.clone(),
        }))
    }

    /// The token's verification: from the cache when the provider's keys are
    /// still the ones that verified it, else in full (and then cached).
    fn verified_token(
        &self,
        token: &str,
        key: CacheKey,
        location: &TokenLocation,
        requirement: &Requirement,
    ) -> Result<Arc<VerifiedToken>, Failure> {
        let cached = self.cache.borrow().get(key, token);
        let usable = cached.filter(|v| self.same_keys(v));
        self.cache.borrow().count(usable.is_some());
        match usable {
            Some(v) => {
                self.check_provider(v.provider, location, requirement)?;
                Ok(v)
            }
            None => {
                let v = Arc::new(self.verify(token, location, requirement)?);
                self.cache.borrow_mut().insert(key, token, v.clone());
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
    fn check_revocation(&self, verified: &VerifiedToken, key: CacheKey) -> Result<(), Failure> {
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
            .caller
            .jti
            .as_deref()
            .is_some_and(|jti| list.contains(jti))
        {
            self.cache.borrow_mut().remove(key);
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
        let nbf = number("nbf");
        let caller = Caller {
            provider: p.name.clone(),
            subject: claim("sub"),
            client_id: first_string(&p.client_id_claims, &decoded.claims).map(str::to_string),
            tenant: claim("tenant"),
            jti: claim("jti"),
            ..Caller::default()
        };
        let roles = roles_of(&decoded.claims, &p.role_claims);
        let jkt = decoded
            .claims
            .get("cnf")
            .and_then(|cnf| cnf.get("jkt"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let scopes: Vec<String> = scopes.into_iter().map(str::to_string).collect();
        let binding = TokenBinding::of(&decoded.claims);
        let mut claims = decoded.claims;
        claims.retain(|name, _| s.retained_claims.contains(name));
        Ok(VerifiedToken {
            provider,
            keys,
            exp,
            nbf,
            caller: Arc::new(caller),
            scopes,
            roles,
            jkt,
            identity: identity.into(),
            claims,
            binding,
            digest: TokenDigest::of(token),
        })
    }
}

/// The request URI a proof's `htu` must name: `public_base_uri` (or the
/// request's `:scheme` and `:authority`) and the path, without the query.
fn htu(public_base_uri: Option<&str>, req: &RequestView<'_>) -> String {
    let header = |name: &'static str| {
        req.header_values(name)
            .next()
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or_default()
    };
    let path = req.path_without_query();
    match public_base_uri {
        Some(base) => format!("{base}{path}"),
        None => format!("{}://{}{path}", header(":scheme"), header(":authority")),
    }
}

/// A certificate-bound token (`cnf.x5t#S256`, RFC 8705 §3) is good only on a
/// connection with that certificate, fresh or cached; a rule with
/// `certificate_bound_token` takes no other token.
fn check_certificate_binding(
    binding: TokenBinding,
    requirement: &Requirement,
    req: &RequestView<'_>,
) -> Result<(), Reason> {
    let thumbprint = match binding {
        TokenBinding::Unbound if requirement.certificate_bound_token => {
            return Err(Reason::TokenNotBound)
        }
        TokenBinding::Unbound => return Ok(()),
        TokenBinding::Malformed => return Err(Reason::CertificateBindingMismatch),
        TokenBinding::Bound(thumbprint) => thumbprint,
    };
    match req.client_certificate() {
        ClientCertificate::Present(sha256) if sha256 == thumbprint => Ok(()),
        ClientCertificate::Present(_) => Err(Reason::CertificateBindingMismatch),
        ClientCertificate::Absent => Err(Reason::BoundTokenWithoutCertificate),
        ClientCertificate::Unknown => Err(Reason::ClientCertificateUnavailable),
    }
}
