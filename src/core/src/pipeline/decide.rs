//! Who the caller is and whether the rule lets them in: the credential stages
//! (extraction, verification fresh or cached, revocation, policy) for one rule,
//! ending in allow (with the header edits for the upstream and the limits to
//! enforce), deny (with the response), or "fetch keys first".

use super::extract::Credential;
use super::RemoteState;
use crate::config::{ProviderId, RemoteSource, Settings};
use crate::credentials::{HeaderEdit, RequestView};
use crate::crypto::SignatureVerifier;
use crate::decision::{render_denial, Denial, Reason};
use crate::dpop::{ProofRules, VerifiedProof};
use crate::identity::{Caller, TokenDigest};
use crate::ratelimit::LimitCheck;
use crate::token_cache::TokenCache;
use crate::{path, upstream};
use std::cell::RefCell;
use std::sync::Arc;

#[derive(Debug)]
pub enum Outcome {
    Allow {
        reason: Reason,
        /// The index of the rule that matched (`None`: no rule, `unmatched: allow`).
        rule: Option<usize>,
        /// Credentials and client-sent identity headers to remove.
        edits: Vec<HeaderEdit>,
        /// The verified identity to set, shared with the token cache.
        identity: Arc<[HeaderEdit]>,
        caller: Option<Arc<Caller>>,
        token_hash: Option<TokenDigest>,
        /// Rate-limit policies to enforce, with the values they count on.
        limits: Vec<LimitCheck>,
        /// A DPoP proof whose `jti` must be used once.
        proof: Option<ProofUse>,
    },
    Deny {
        denial: Denial,
        rule: Option<usize>,
        token_hash: Option<TokenDigest>,
        /// Who was refused, when the credential was good but not enough.
        caller: Option<Arc<Caller>>,
    },
    /// The token names a key (`kid`) the provider does not have; refetch its
    /// JWKS and decide again (with `may_refetch` then false).
    FetchKeys {
        provider: ProviderId,
        kid: Option<String>,
    },
}

impl Outcome {
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Outcome::Allow { reason, .. } => Some(*reason),
            Outcome::Deny { denial, .. } => Some(denial.reason),
            Outcome::FetchKeys { .. } => None,
        }
    }
}

/// The credential stages for one request, over one worker's state.
pub struct Authorizer<'a> {
    pub settings: &'a Settings,
    pub remote: &'a dyn RemoteState,
    pub verifier: &'a dyn SignatureVerifier,
    pub cache: &'a RefCell<TokenCache>,
    /// Seconds since the Unix epoch.
    pub now: u64,
}

impl Authorizer<'_> {
    pub fn decide(&self, req: &RequestView<'_>) -> Outcome {
        let s = self.settings;
        let mut edits = upstream::purge(req, s);
        let (index, rule) = match upstream::method_for_rules(req, s.method_override)
            .and_then(|method| path::find_rule(&s.rules, &method, req.path_without_query()))
        {
            Ok(Some(found)) => found,
            Ok(None) if s.allow_unmatched => return allow_anonymous(None, edits, Vec::new(), None),
            Ok(None) => return self.deny(None, Reason::NoMatchingRule, None, None),
            Err(reason) => return self.deny(None, reason, None, None),
        };
        let at = Some(index);
        let requirement = &rule.requirement;
        // Stage: context conditions on the request alone, before any credential work.
        let country_header = s.country_header.as_deref();
        if let Err(reason) = requirement
            .context
            .check_request(req, country_header, self.now)
        {
            return self.deny(at, reason, requirement.needed(reason), None);
        }
        match self.check_client_certificate(requirement, req) {
            Ok(certificate_identity) => edits.extend(certificate_identity),
            Err(reason) => return self.deny(at, reason, None, None),
        }
        let anonymous_limits = || self.limit_checks(rule, req, None);
        let locations = self.locations_for(requirement);
        let Some(credential) = self.find_credential(req, requirement, &locations) else {
            return if requirement.allow_anonymous {
                allow_anonymous(at, edits, anonymous_limits(), None)
            } else {
                self.deny(at, Reason::MissingCredentials, None, None)
            };
        };
        let (result, credential_text) = match &credential {
            Credential::Jwt(token, location) => {
                let Some(location) = locations.get(*location) else {
                    let hash = TokenDigest::of(token);
                    return self.deny(at, Reason::MissingCredentials, None, Some(hash));
                };
                (self.authenticate(token, location, rule, req), token)
            }
            Credential::ApiKey(key) => (self.authenticate_api_key(key, rule, req), key),
        };
        // A refused credential's fingerprint (an accepted one's comes with it).
        let hash = match &result {
            Ok(authenticated) => authenticated.digest,
            Err(_) => TokenDigest::of(credential_text),
        };
        match result {
            Ok(Authenticated {
                caller,
                identity,
                limits,
                proof,
                digest: _,
            }) => {
                let reason = if requirement.allow_anonymous {
                    Reason::Anonymous
                } else {
                    Reason::Authenticated
                };
                Outcome::Allow {
                    reason,
                    rule: at,
                    edits,
                    identity,
                    caller: Some(caller),
                    token_hash: Some(hash),
                    limits,
                    proof,
                }
            }
            Err(Failure::FetchKeys(provider, kid)) => Outcome::FetchKeys { provider, kid },
            // Public routes ignore bad credentials; they are still stripped.
            Err(
                Failure::Denied(_)
                | Failure::Rendered(_)
                | Failure::Refused(..)
                | Failure::Unavailable(..),
            ) if requirement.allow_anonymous => {
                allow_anonymous(at, edits, anonymous_limits(), Some(hash))
            }
            Err(Failure::Unavailable(reason, retry_after)) => Outcome::Deny {
                denial: render_denial(reason, &self.settings.realm, None, retry_after),
                rule: at,
                token_hash: Some(hash),
                caller: None,
            },
            Err(Failure::Rendered(denial)) => Outcome::Deny {
                denial,
                rule: at,
                token_hash: Some(hash),
                caller: None,
            },
            Err(Failure::Denied(reason)) => {
                self.deny(at, reason, requirement.needed(reason), Some(hash))
            }
            Err(Failure::Refused(reason, caller)) => {
                let mut outcome = self.deny(at, reason, requirement.needed(reason), Some(hash));
                if let Outcome::Deny { caller: who, .. } = &mut outcome {
                    *who = Some(caller);
                }
                outcome
            }
        }
    }

    fn deny(
        &self,
        rule: Option<usize>,
        reason: Reason,
        needed: Option<String>,
        token_hash: Option<TokenDigest>,
    ) -> Outcome {
        Outcome::Deny {
            denial: render_denial(reason, &self.settings.realm, needed.as_deref(), 0),
            rule,
            token_hash,
            caller: None,
        }
    }
}

pub(super) struct Authenticated {
    pub caller: Arc<Caller>,
    /// The credential's SHA-256, its fingerprint.
    pub digest: TokenDigest,
    pub identity: Arc<[HeaderEdit]>,
    pub limits: Vec<LimitCheck>,
    /// A DPoP proof that passed every stateless check: its `jti` is still to
    /// be recorded once (shared state, in the pipeline).
    pub proof: Option<ProofUse>,
}

/// A proof to record, and what to refuse it with if it was seen before.
#[derive(Debug)]
pub struct ProofUse {
    pub proof: VerifiedProof,
    pub rules: ProofRules,
}

pub(super) enum Failure {
    Denied(Reason),
    /// A denial rendered where its details are known (DPoP challenges).
    Rendered(Denial),
    /// A good credential that the rule refuses (scopes, claims) or that was
    /// revoked: the caller is known.
    Refused(Reason, Arc<Caller>),
    FetchKeys(ProviderId, Option<String>),
    /// A document the decision needs has not loaded: 503, retry after these seconds.
    Unavailable(Reason, u64),
}

/// The failure for a remote document that has not loaded yet.
pub(super) fn unavailable(reason: Reason, source: &RemoteSource) -> Failure {
    Failure::Unavailable(reason, source.policy.retry_ms.div_ceil(1000))
}

impl From<Reason> for Failure {
    fn from(r: Reason) -> Self {
        Failure::Denied(r)
    }
}

impl Failure {
    /// A denial of a credential already verified names its caller.
    pub(super) fn of(self, caller: &Arc<Caller>) -> Failure {
        match self {
            Failure::Denied(r) => Failure::Refused(r, Arc::clone(caller)),
            other => other,
        }
    }
}

fn allow_anonymous(
    rule: Option<usize>,
    edits: Vec<HeaderEdit>,
    limits: Vec<LimitCheck>,
    token_hash: Option<TokenDigest>,
) -> Outcome {
    Outcome::Allow {
        reason: Reason::Anonymous,
        rule,
        edits,
        identity: Arc::new([]),
        caller: None,
        token_hash,
        limits,
        proof: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apikey::KeySet as ApiKeySet;
    use crate::config::parse;
    use crate::crypto::PureVerifier;
    use crate::jwk::KeySet;
    use crate::jwt::DecodedToken;
    use crate::revocation::RevocationList;
    use jwt_simple::prelude::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    struct Keys(Option<Arc<KeySet>>, bool);

    /// Remote state with a revocation list (or none loaded yet).
    struct Feed(Option<Arc<RevocationList>>);

    impl RemoteState for Feed {
        fn remote_keys(&self, _provider: ProviderId) -> Option<Arc<KeySet>> {
            None
        }
        fn may_refetch(&self, _provider: ProviderId, _kid: Option<&str>) -> bool {
            false
        }
        fn revocations(&self, _provider: ProviderId) -> Option<Arc<RevocationList>> {
            self.0.clone()
        }
        fn api_keys(&self) -> Option<Arc<ApiKeySet>> {
            None
        }
    }

    impl RemoteState for Keys {
        fn remote_keys(&self, _provider: ProviderId) -> Option<Arc<KeySet>> {
            self.0.clone()
        }
        fn may_refetch(&self, _provider: ProviderId, _kid: Option<&str>) -> bool {
            self.1
        }
        fn revocations(&self, _provider: ProviderId) -> Option<Arc<RevocationList>> {
            None
        }
        fn api_keys(&self) -> Option<Arc<ApiKeySet>> {
            None
        }
    }

    struct Fixture {
        settings: Settings,
        key: ES256KeyPair,
        cache: RefCell<TokenCache>,
        verifications: std::cell::Cell<usize>,
    }

    /// The pure verifier, counting its calls.
    struct Counting<'a>(&'a std::cell::Cell<usize>);

    impl SignatureVerifier for Counting<'_> {
        fn verify(&self, token: &DecodedToken<'_>, key: &crate::jwk::VerificationKey) -> bool {
            self.0.set(self.0.get() + 1);
            PureVerifier.verify(token, key)
        }
    }

    fn fixture() -> Fixture {
        fixture_with(|_| {})
    }

    fn fixture_with(edit: impl FnOnce(&mut serde_json::Value)) -> Fixture {
        let key = ES256KeyPair::generate().with_key_id("k1");
        let jwks = json!({"keys": [crate::jwk::tests::es256_jwk(&key, "k1")]}).to_string();
        let config = json!({
            "realm": "api",
            "providers": {
                "local": {
                    "issuer": "https://issuer.test",
                    "audiences": ["api"],
                    "local_jwks": {"inline_string": jwks},
                    "from_params": ["access_token"],
                    "claim_to_headers": [{"claim_name": "tenant", "header_name": "x-tenant"}],
                    "forward_payload_header": "x-tollgate-payload"
                },
                "remote": {
                    "issuer": "https://remote.test",
                    "remote_jwks": {"http_uri": {"uri": "http://idp/jwks", "cluster": "idp"}}
                }
            },
            "rules": [
                {"match": {"path": "/data", "methods": ["POST"]}, "requires": {"scopes": {"all_of": ["write:data"]}}},
                {"match": {"path": "/data"}, "requires": {"scopes": {"all_of": ["read:data"]}}},
                {"match": {"prefix": "/admin/"}, "requires": {"providers": ["local"], "claims": [{"name": "roles", "contains": "admin"}]}},
                {"match": {"prefix": "/public/"}, "requires": {"allow_anonymous": true}},
                {"match": {"prefix": "/remote/"}, "requires": {"providers": ["remote"]}}
            ]
        });
        let mut config = config;
        edit(&mut config);
        Fixture {
            settings: parse(config.to_string().as_bytes()).unwrap(),
            key,
            cache: RefCell::new(TokenCache::new(100, 1 << 20)),
            verifications: std::cell::Cell::new(0),
        }
    }

    impl Fixture {
        fn token(&self, extra: serde_json::Value) -> String {
            let mut claims = json!({"iss": "https://issuer.test", "aud": "api", "sub": "user-1",
                "client_id": "mobile-app", "scope": "read:data", "exp": NOW + 300, "iat": NOW});
            for (k, v) in extra.as_object().unwrap() {
                if v.is_null() {
                    claims.as_object_mut().unwrap().remove(k);
                } else {
                    claims[k] = v.clone();
                }
            }
            let claims: JWTClaims<serde_json::Map<String, serde_json::Value>> =
                serde_json::from_value(claims).unwrap();
            self.key.sign(claims).unwrap()
        }

        fn decide_with(
            &self,
            keys: &dyn RemoteState,
            method: &str,
            path: &str,
            headers: &[(&str, &str)],
        ) -> Outcome {
            let headers: Vec<(String, Vec<u8>)> = headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect();
            let req = RequestView {
                method,
                path,
                headers: &headers,
                client_ip: Some("192.0.2.1"),
                client_cert: None,
                received_us: 0,
            };
            Authorizer {
                settings: &self.settings,
                remote: keys,
                verifier: &Counting(&self.verifications),
                cache: &self.cache,
                now: NOW,
            }
            .decide(&req)
        }

        fn decide(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Outcome {
            self.decide_with(&Keys(None, false), method, path, headers)
        }
    }

    fn denial(o: &Outcome) -> &Denial {
        match o {
            Outcome::Deny { denial, .. } => denial,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    fn edits(o: &Outcome) -> &[HeaderEdit] {
        match o {
            Outcome::Allow { edits, .. } => edits,
            other => panic!("expected allow, got {other:?}"),
        }
    }

    fn set(o: &Outcome, name: &str) -> Option<String> {
        let Outcome::Allow {
            edits, identity, ..
        } = o
        else {
            panic!("expected allow, got {o:?}");
        };
        edits.iter().chain(identity.iter()).find_map(|e| match e {
            HeaderEdit::Set(n, v) if n == name => Some(v.clone()),
            _ => None,
        })
    }

    #[test]
    fn valid_token_is_allowed_stripped_and_identity_forwarded() {
        let f = fixture();
        let t = f.token(json!({"tenant": "acme"}));
        let o = f.decide(
            "GET",
            "/data?x=1",
            &[("authorization", &format!("Bearer {t}"))],
        );
        assert_eq!(o.reason(), Some(Reason::Authenticated));
        assert!(edits(&o).contains(&HeaderEdit::Remove("authorization".into())));
        assert_eq!(set(&o, "x-tollgate-subject").as_deref(), Some("user-1"));
        assert_eq!(
            set(&o, "x-tollgate-client-id").as_deref(),
            Some("mobile-app")
        );
        assert_eq!(set(&o, "x-tollgate-scopes").as_deref(), Some("read:data"));
        assert_eq!(
            set(&o, "x-tollgate-issuer").as_deref(),
            Some("https://issuer.test")
        );
        assert_eq!(set(&o, "x-tenant").as_deref(), Some("acme"));
        let payload = set(&o, "x-tollgate-payload").unwrap();
        let decoded: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(decoded["sub"], "user-1");
        match &o {
            Outcome::Allow {
                caller: Some(c),
                token_hash: Some(h),
                ..
            } => {
                assert_eq!(c.subject.as_deref(), Some("user-1"));
                assert_eq!(h, &TokenDigest::of(&t));
                assert!(!t.contains(&h.to_string()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn spoofed_identity_headers_are_removed_even_when_denied_upstream_never_sees_them() {
        let f = fixture();
        let t = f.token(json!({}));
        let o = f.decide(
            "GET",
            "/data",
            &[
                ("authorization", &format!("Bearer {t}")),
                ("x-tollgate-subject", "admin"),
                ("x-tollgate-role", "root"),
                ("x-tenant", "evil"),
            ],
        );
        let e = edits(&o);
        for h in ["x-tollgate-subject", "x-tollgate-role", "x-tenant"] {
            assert!(e.contains(&HeaderEdit::Remove(h.into())), "{h} not removed");
        }
        assert_eq!(set(&o, "x-tollgate-subject").as_deref(), Some("user-1"));
        assert_eq!(set(&o, "x-tenant"), None, "token has no tenant claim");
    }

    #[test]
    fn identity_claims_with_control_characters_refuse_the_token() {
        let f = fixture();
        for extra in [
            json!({"sub": "admin\r\nx-injected: 1"}),
            json!({"sub": "admin\u{0}"}),
            json!({"client_id": "app\u{7f}"}),
            json!({"scope": "read:data\nwrite:data"}),
            json!({"tenant": "acme\r"}),
        ] {
            let token = f.token(extra.clone());
            for _ in 0..2 {
                let o = f.decide(
                    "GET",
                    "/data",
                    &[("authorization", &format!("Bearer {token}"))],
                );
                let d = denial(&o);
                assert_eq!(
                    (d.status, d.reason),
                    (401, Reason::UnsafeIdentityClaim),
                    "{extra}"
                );
            }
        }
        // Empty claims are absent, not unsafe.
        let token = f.token(json!({"client_id": ""}));
        let o = f.decide(
            "GET",
            "/data",
            &[("authorization", &format!("Bearer {token}"))],
        );
        assert_eq!(set(&o, "x-tollgate-subject").as_deref(), Some("user-1"));
        assert_eq!(set(&o, "x-tollgate-client-id"), None);
    }

    #[test]
    fn missing_and_invalid_tokens() {
        let f = fixture();
        let o = f.decide("GET", "/data", &[]);
        let d = denial(&o);
        assert_eq!((d.status, d.reason), (401, Reason::MissingCredentials));
        let cases: Vec<(String, Reason)> = vec![
            ("not-a-jwt".into(), Reason::MalformedToken),
            (f.token(json!({"exp": NOW - 3600})), Reason::Expired),
            (f.token(json!({"nbf": NOW + 3600})), Reason::NotYetValid),
            (
                f.token(json!({"iss": "https://evil.test"})),
                Reason::UnknownIssuer,
            ),
            (f.token(json!({"aud": "other"})), Reason::AudienceMismatch),
            (f.token(json!({"exp": null})), Reason::MissingClaim),
            (
                {
                    let t = f.token(json!({}));
                    let (head, _) = t.rsplit_once('.').unwrap();
                    format!("{head}.{}", "A".repeat(86))
                },
                Reason::BadSignature,
            ),
        ];
        for (token, reason) in cases {
            let o = f.decide(
                "GET",
                "/data",
                &[("authorization", &format!("Bearer {token}"))],
            );
            let d = denial(&o);
            assert_eq!((d.status, d.reason), (401, reason), "{reason:?}");
            assert!(d
                .headers
                .iter()
                .any(|(n, v)| *n == "www-authenticate" && v.contains("error=\"invalid_token\"")));
            assert!(!d.body.contains(&token));
        }
    }

    #[test]
    fn scope_and_claim_checks() {
        let f = fixture();
        let t = f.token(json!({}));
        let o = f.decide(
            "POST",
            "/data",
            &[("authorization", &format!("Bearer {t}"))],
        );
        let d = denial(&o);
        assert_eq!((d.status, d.reason), (403, Reason::InsufficientScope));
        assert!(d
            .headers
            .iter()
            .any(|(_, v)| v.contains("scope=\"write:data\"")));
        let admin = f.token(json!({"roles": ["admin"]}));
        let o = f.decide(
            "GET",
            "/admin/users",
            &[("authorization", &format!("Bearer {admin}"))],
        );
        assert_eq!(o.reason(), Some(Reason::Authenticated));
        let o = f.decide(
            "GET",
            "/admin/users",
            &[("authorization", &format!("Bearer {t}"))],
        );
        assert_eq!(denial(&o).reason, Reason::ClaimMismatch);
    }

    #[test]
    fn cached_tokens_keep_only_the_claims_decisions_read() {
        let f = fixture();
        let admin =
            f.token(json!({"roles": ["admin"], "tenant": "acme", "bulky": "x".repeat(500)}));
        let bearer = format!("Bearer {admin}");
        for _ in 0..2 {
            let o = f.decide("GET", "/admin/users", &[("authorization", &bearer)]);
            assert_eq!(o.reason(), Some(Reason::Authenticated));
            // Computed at verification, so still forwarded from the cache.
            assert_eq!(set(&o, "x-tenant").as_deref(), Some("acme"));
        }
        assert_eq!(
            f.verifications.get(),
            1,
            "the second decision used the cache"
        );
        let cached = {
            let cache = f.cache.borrow();
            cache.get(cache.key(&admin), &admin).unwrap()
        };
        let kept: Vec<&String> = cached.claims.keys().collect();
        assert_eq!(kept, ["roles"]);
    }

    #[test]
    fn unmatched_requests_are_denied() {
        let f = fixture();
        let o = f.decide("GET", "/elsewhere", &[]);
        assert_eq!(
            (denial(&o).status, denial(&o).reason),
            (403, Reason::NoMatchingRule)
        );
    }

    #[test]
    fn public_routes_allow_anonymous_and_still_strip() {
        let f = fixture();
        let o = f.decide("GET", "/public/x", &[]);
        assert_eq!(o.reason(), Some(Reason::Anonymous));
        let o = f.decide(
            "GET",
            "/public/x?access_token=garbage&y=2",
            &[("x-tollgate-subject", "spoof")],
        );
        assert_eq!(o.reason(), Some(Reason::Anonymous));
        assert_eq!(set(&o, ":path").as_deref(), Some("/public/x?y=2"));
        assert!(edits(&o).contains(&HeaderEdit::Remove("x-tollgate-subject".into())));
        assert_eq!(set(&o, "x-tollgate-subject"), None);
    }

    #[test]
    fn remote_provider_keys_unavailable_then_unknown_kid_asks_for_a_fetch() {
        let f = fixture();
        let other = ES256KeyPair::generate().with_key_id("new");
        let claims = JWTClaims {
            issued_at: None,
            expires_at: Some(UnixTimeStamp::from_secs(NOW + 60)),
            invalid_before: None,
            issuer: Some("https://remote.test".into()),
            subject: Some("s".into()),
            audiences: None,
            jwt_id: None,
            nonce: None,
            custom: NoCustomClaims {},
        };
        let token = other.sign(claims).unwrap();
        let h = format!("Bearer {token}");
        let o = f.decide_with(
            &Keys(None, true),
            "GET",
            "/remote/x",
            &[("authorization", &h)],
        );
        let d = denial(&o);
        assert_eq!((d.status, d.reason), (503, Reason::KeysUnavailable));
        assert!(d
            .headers
            .iter()
            .any(|(n, v)| *n == "retry-after" && v == "1"));
        let old_keys = Arc::new(
            crate::jwk::parse_jwks(
                json!({"keys":[crate::jwk::tests::es256_jwk(&f.key, "k1")]})
                    .to_string()
                    .as_bytes(),
                crate::jwk::KeySource::Remote,
                &crate::alg::Algorithm::ALL,
                crate::jwk::Strictness::Lenient,
            )
            .unwrap()
            .0,
        );
        let o = f.decide_with(
            &Keys(Some(old_keys.clone()), true),
            "GET",
            "/remote/x",
            &[("authorization", &h)],
        );
        assert!(
            matches!(
                o,
                Outcome::FetchKeys {
                    provider: ProviderId(1),
                    ..
                }
            ),
            "{o:?}"
        );
        let o = f.decide_with(
            &Keys(Some(old_keys), false),
            "GET",
            "/remote/x",
            &[("authorization", &h)],
        );
        assert_eq!(denial(&o).reason, Reason::UnknownKey);
    }

    #[test]
    fn revoked_tokens_are_refused_and_a_missing_list_is_503() {
        let f = fixture_with(|c| {
            c["providers"]["local"]["revocation_feed"] = json!({
                "http_uri": {"uri": "http://idp/revocations", "cluster": "idp"},
                "poll_interval": "2s"
            });
        });
        let t = f.token(json!({"jti": "revoked-1"}));
        let other = f.token(json!({"jti": "fine-1"}));
        let no_jti = f.token(json!({"jti": null}));
        let list = RevocationList::parse(
            format!(
                r#"{{"revoked":[{{"jti":"revoked-1","exp":{}}}]}}"#,
                NOW + 60
            )
            .as_bytes(),
            NOW,
        )
        .unwrap();
        let loaded = Feed(Some(Arc::new(list)));
        let auth = |t: &str| format!("Bearer {t}");
        let o = f.decide_with(&loaded, "GET", "/data", &[("authorization", &auth(&t))]);
        let d = denial(&o);
        assert_eq!((d.status, d.reason), (401, Reason::Revoked));
        assert!(d
            .headers
            .iter()
            .any(|(_, v)| v.contains("has been revoked")));
        for ok in [&other, &no_jti] {
            let o = f.decide_with(&loaded, "GET", "/data", &[("authorization", &auth(ok))]);
            assert_eq!(o.reason(), Some(Reason::Authenticated));
        }
        let o = f.decide_with(
            &Feed(None),
            "GET",
            "/data",
            &[("authorization", &auth(&other))],
        );
        let d = denial(&o);
        assert_eq!((d.status, d.reason), (503, Reason::RevocationsUnavailable));
        assert!(d
            .headers
            .iter()
            .any(|(n, v)| *n == "retry-after" && v == "2"));
        // Bad tokens are judged before the list: no 503 for garbage.
        let o = f.decide_with(
            &Feed(None),
            "GET",
            "/data",
            &[("authorization", "Bearer x.y.z")],
        );
        assert_eq!(denial(&o).reason, Reason::MalformedToken);
    }

    #[test]
    fn rate_limit_keys_come_from_the_verified_identity() {
        let f = fixture_with(|c| {
            c["rate_limits"] = json!({"policies": {
                "sub": {"limit": 1, "window": "1s", "key": "subject"},
                "client": {"limit": 1, "window": "1s", "key": "client_id"},
                "tenant": {"limit": 1, "window": "1s", "key": {"claim": "tenant"}},
                "hdr": {"limit": 1, "window": "1s", "key": {"header": "x-app"}},
                "ip": {"limit": 1, "window": "1s", "key": "client_ip"}
            }});
            let all = json!(["client", "hdr", "ip", "sub", "tenant"]);
            c["rules"][1]["rate_limits"] = all.clone();
            c["rules"][3]["rate_limits"] = all;
        });
        let names: Vec<&str> = f
            .settings
            .rate_limits
            .policies
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        let values = |o: &Outcome| -> Vec<(String, String)> {
            match o {
                Outcome::Allow { limits, .. } => limits
                    .iter()
                    .map(|c| (names[c.policy.0].to_string(), c.value.clone()))
                    .collect(),
                other => panic!("{other:?}"),
            }
        };
        let t = f.token(json!({"tenant": "acme"}));
        let o = f.decide(
            "GET",
            "/data",
            &[("authorization", &format!("Bearer {t}")), ("x-app", "ios")],
        );
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            values(&o),
            vec![
                pair("client", "mobile-app"),
                pair("hdr", "ios"),
                pair("ip", "192.0.2.1"),
                pair("sub", "user-1"),
                pair("tenant", "acme"),
            ]
        );
        // No tenant claim, no header: those policies do not apply.
        let t = f.token(json!({}));
        let o = f.decide("GET", "/data", &[("authorization", &format!("Bearer {t}"))]);
        let applied: Vec<String> = values(&o).into_iter().map(|(p, _)| p).collect();
        assert_eq!(applied, vec!["client", "ip", "sub"]);
        // Anonymous: identity-based policies count per client IP.
        let o = f.decide("GET", "/public/x", &[]);
        assert_eq!(
            values(&o),
            vec![
                pair("client", "192.0.2.1"),
                pair("ip", "192.0.2.1"),
                pair("sub", "192.0.2.1"),
                pair("tenant", "192.0.2.1")
            ]
        );
        // ... and say so in their descriptors: ("client_ip", …), not ("subject", …).
        let Outcome::Allow { limits, .. } = &o else {
            panic!("{o:?}")
        };
        let keys: Vec<String> = limits
            .iter()
            .map(|c| f.settings.rate_limits.policies[c.policy.0].descriptor_key(c.kind))
            .collect();
        assert_eq!(keys, ["client_ip"; 4]);
    }

    fn sha256_hex(key: &str) -> String {
        hmac_sha256::Hash::hash(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn api_key_fixture() -> Fixture {
        fixture_with(|c| {
            let set = json!({"consumers": [
                {"id": "partner-a", "tenant": "acme", "scopes": ["read:data"], "plan": "gold", "keys": [
                    {"id": "k-live", "hash": sha256_hex("tg_live_good")},
                    {"id": "k-off", "hash": sha256_hex("tg_live_off"), "enabled": false},
                    {"id": "k-old", "hash": sha256_hex("tg_live_old"), "expires_at": NOW - 1},
                    {"id": "k-net", "hash": sha256_hex("tg_live_net"), "allowed_cidrs": ["198.51.100.0/24"]}
                ]}
            ]});
            c["api_keys"] = json!({"key_set": {"inline_string": set.to_string()}});
            c["rate_limits"] = json!({
                "policies": {"gold-tier": {"limit": 100, "window": "1s", "key": "client_id"}},
                "plans": {"gold": ["gold-tier"]}
            });
            c["rules"][0]["requires"]["credentials"] = json!(["jwt", "api_key"]);
            c["rules"][1]["requires"]["credentials"] = json!(["jwt", "api_key"]);
            c["rules"][1]["requires"]["api_key_in_query"] = json!(true);
        })
    }

    #[test]
    fn api_keys_authenticate_consumers_like_tokens() {
        let f = api_key_fixture();
        for headers in [
            vec![("x-api-key", "tg_live_good")],
            vec![("authorization", "Bearer tg_live_good")],
        ] {
            let o = f.decide("GET", "/data", &headers);
            assert_eq!(o.reason(), Some(Reason::Authenticated), "{headers:?}");
            assert_eq!(set(&o, "x-tollgate-subject").as_deref(), Some("partner-a"));
            assert_eq!(set(&o, "x-tollgate-consumer").as_deref(), Some("partner-a"));
            assert_eq!(set(&o, "x-tollgate-api-key-id").as_deref(), Some("k-live"));
            assert_eq!(set(&o, "x-tollgate-tenant").as_deref(), Some("acme"));
            assert_eq!(set(&o, "x-tollgate-scopes").as_deref(), Some("read:data"));
            assert_eq!(set(&o, "x-tollgate-provider").as_deref(), Some("api_key"));
            let (name, _) = headers[0];
            assert!(
                edits(&o).contains(&HeaderEdit::Remove(name.into())),
                "{name} not stripped"
            );
            // The consumer's plan adds its policies, counted per consumer.
            match &o {
                Outcome::Allow { limits, .. } => {
                    assert_eq!(
                        limits,
                        &vec![LimitCheck {
                            policy: crate::ratelimit::PolicyId(0),
                            value: "partner-a".into(),
                            kind: crate::ratelimit::ValueKind::Consumer,
                        }]
                    )
                }
                other => panic!("{other:?}"),
            }
        }
        // The query string only where the rule allows it, and always stripped.
        let o = f.decide("GET", "/data?x=1&api_key=tg_live_good", &[]);
        assert_eq!(o.reason(), Some(Reason::Authenticated));
        assert_eq!(set(&o, ":path").as_deref(), Some("/data?x=1"));
        let o = f.decide("POST", "/data?api_key=tg_live_good", &[]);
        assert_eq!(denial(&o).reason, Reason::MissingCredentials);
    }

    #[test]
    fn bad_api_keys_all_look_the_same_to_the_caller() {
        let f = api_key_fixture();
        let mut bodies = std::collections::HashSet::new();
        for (key, reason) in [
            ("tg_live_wrong", Reason::ApiKeyUnknown),
            ("tg_live_off", Reason::ApiKeyDisabled),
            ("tg_live_old", Reason::ApiKeyExpired),
            ("tg_live_net", Reason::ApiKeyAddressNotAllowed),
        ] {
            let o = f.decide("GET", "/data", &[("x-api-key", key)]);
            let d = denial(&o);
            assert_eq!((d.status, d.reason), (401, reason));
            assert!(!d.body.contains(key));
            bodies.insert((d.body.clone(), d.headers.clone()));
        }
        assert_eq!(
            bodies.len(),
            1,
            "responses differ between failure reasons: {bodies:?}"
        );
    }

    #[test]
    fn api_key_scopes_are_enforced() {
        let f = api_key_fixture();
        let o = f.decide("POST", "/data", &[("x-api-key", "tg_live_good")]);
        let d = denial(&o);
        assert_eq!((d.status, d.reason), (403, Reason::InsufficientScope));
        // Rules that do not accept keys ignore the key header entirely.
        let o = f.decide("GET", "/admin/x", &[("x-api-key", "tg_live_good")]);
        assert_eq!(denial(&o).reason, Reason::MissingCredentials);
    }

    #[test]
    fn verified_tokens_are_cached_but_still_checked() {
        let f = fixture_with(|c| {
            c["providers"]["local"]["revocation_feed"] = json!({
                "http_uri": {"uri": "http://idp/revocations", "cluster": "idp"}
            });
        });
        let empty = Feed(Some(Arc::new(
            RevocationList::parse(br#"{"revoked":[]}"#, NOW).unwrap(),
        )));
        let t = f.token(json!({"jti": "j1", "exp": NOW + 61, "tenant": "acme"}));
        let auth = [("authorization", format!("Bearer {t}"))];
        let h: Vec<(&str, &str)> = auth.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let first = f.decide_with(&empty, "GET", "/data", &h);
        assert_eq!(first.reason(), Some(Reason::Authenticated));
        assert_eq!(f.verifications.get(), 1);
        let again = f.decide_with(&empty, "GET", "/data", &h);
        assert_eq!(again.reason(), Some(Reason::Authenticated));
        assert_eq!(
            f.verifications.get(),
            1,
            "a cache hit verified the signature again"
        );
        assert_eq!(
            set(&again, "x-tenant").as_deref(),
            Some("acme"),
            "identity comes from the cache"
        );
        // Scope rules still apply on a hit.
        let post = f.decide_with(&empty, "POST", "/data", &h);
        assert_eq!(denial(&post).reason, Reason::InsufficientScope);
        // A revocation after caching is obeyed.
        let revoked = Feed(Some(Arc::new(
            RevocationList::parse(
                format!(r#"{{"revoked":[{{"jti":"j1","exp":{}}}]}}"#, NOW + 99).as_bytes(),
                NOW,
            )
            .unwrap(),
        )));
        assert_eq!(
            denial(&f.decide_with(&revoked, "GET", "/data", &h)).reason,
            Reason::Revoked
        );
        assert_eq!(f.cache.borrow().len(), 0, "revoked tokens leave the cache");
        // Expiry is judged on every hit.
        f.decide_with(&empty, "GET", "/data", &h);
        let later = Authorizer {
            settings: &f.settings,
            remote: &empty,
            verifier: &PureVerifier,
            cache: &f.cache,
            now: NOW + 200,
        };
        let headers: Vec<(String, Vec<u8>)> =
            vec![("authorization".into(), auth[0].1.clone().into_bytes())];
        let req = RequestView {
            method: "GET",
            path: "/data",
            headers: &headers,
            client_ip: None,
            client_cert: None,
            received_us: 0,
        };
        assert_eq!(later.decide(&req).reason(), Some(Reason::Expired));
    }

    #[test]
    fn a_key_rotation_makes_cached_entries_stale() {
        let f = fixture();
        let other = ES256KeyPair::generate().with_key_id("new");
        let claims: JWTClaims<serde_json::Map<String, serde_json::Value>> = serde_json::from_value(
            json!({"iss": "https://remote.test", "sub": "s", "exp": NOW + 60}),
        )
        .unwrap();
        let token = other.sign(claims).unwrap();
        let keyset = |kp: &ES256KeyPair| {
            Arc::new(
                crate::jwk::parse_jwks(
                    json!({"keys":[crate::jwk::tests::es256_jwk(kp, "new")]})
                        .to_string()
                        .as_bytes(),
                    crate::jwk::KeySource::Remote,
                    &crate::alg::Algorithm::ALL,
                    crate::jwk::Strictness::Lenient,
                )
                .unwrap()
                .0,
            )
        };
        let h = format!("Bearer {token}");
        let before = Keys(Some(keyset(&other)), false);
        assert_eq!(
            f.decide_with(&before, "GET", "/remote/x", &[("authorization", &h)])
                .reason(),
            Some(Reason::Authenticated)
        );
        assert_eq!(
            f.decide_with(&before, "GET", "/remote/x", &[("authorization", &h)])
                .reason(),
            Some(Reason::Authenticated)
        );
        assert_eq!(f.verifications.get(), 1);
        // New key material under the same kid: the cached verification no longer counts.
        let rotated = Keys(Some(keyset(&ES256KeyPair::generate())), false);
        let o = f.decide_with(&rotated, "GET", "/remote/x", &[("authorization", &h)]);
        assert_eq!(denial(&o).reason, Reason::BadSignature);
        assert_eq!(f.verifications.get(), 2);
    }

    /// Hostile input must never panic (a panic kills the VM): mutate valid
    /// tokens byte by byte and feed them through the whole decision.
    #[test]
    fn mutated_tokens_never_panic() {
        let f = fixture();
        let valid = f.token(json!({"roles": ["admin"], "tenant": "acme"}));
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"AZaz09-_.=+/ \"{}[]:,\x00\xff";
        for _ in 0..3_000 {
            let mut bytes = valid.clone().into_bytes();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[i] = alphabet[(next() as usize) % alphabet.len()],
                    1 => {
                        bytes.remove(i);
                    }
                    _ => bytes.insert(i, alphabet[(next() as usize) % alphabet.len()]),
                }
            }
            let token = String::from_utf8_lossy(&bytes).into_owned();
            let header = format!("Bearer {token}");
            let o = f.decide("GET", "/admin/x", &[("authorization", &header)]);
            assert!(o.reason().is_some());
        }
    }

    #[test]
    fn provider_restriction_applies() {
        let f = fixture();
        let t = f.token(json!({}));
        let o = f.decide(
            "GET",
            "/remote/x",
            &[("authorization", &format!("Bearer {t}"))],
        );
        assert_eq!(denial(&o).reason, Reason::ProviderNotAllowed);
        // Only `local` reads ?access_token=; a `remote` token there does not count.
        let remote = f.token(json!({"iss": "https://remote.test"}));
        let o = f.decide("GET", &format!("/data?access_token={remote}"), &[]);
        assert_eq!(denial(&o).reason, Reason::ProviderNotAllowed);
        let o = f.decide("GET", &format!("/data?access_token={t}"), &[]);
        assert_eq!(o.reason(), Some(Reason::Authenticated));
    }
}
