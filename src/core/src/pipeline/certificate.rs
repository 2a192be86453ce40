//! Stage: the client certificate a rule requires (mutual TLS), checked before
//! any credential, and the certificate's identity as headers for the upstream.
//! (The binding of tokens to the certificate is checked with the token, in
//! `verify`.)

use super::decide::Authorizer;
use super::identity_headers::header_safe;
use crate::client_cert::{hex, ClientCertificate};
use crate::credentials::{HeaderEdit, RequestView};
use crate::decision::Reason;
use crate::policy::Requirement;

impl Authorizer<'_> {
    /// The rule's `client_certificate` requirement. On rules that require a
    /// certificate or certificate-bound tokens, returns the headers that
    /// forward the certificate's identity (`<prefix>client-cert-*`).
    pub(super) fn check_client_certificate(
        &self,
        requirement: &Requirement,
        req: &RequestView<'_>,
    ) -> Result<Vec<HeaderEdit>, Reason> {
        let needed = requirement.client_certificate.as_ref();
        if needed.is_none() && !requirement.certificate_bound_token {
            return Ok(Vec::new());
        }
        let sha256 = match (req.client_certificate(), needed) {
            (ClientCertificate::Present(sha256), _) => sha256,
            // Bound tokens without a certificate are refused by the binding check.
            (_, None) => return Ok(Vec::new()),
            (ClientCertificate::Absent, Some(_)) => return Err(Reason::ClientCertificateRequired),
            (ClientCertificate::Unknown, Some(_)) => {
                return Err(Reason::ClientCertificateUnavailable)
            }
        };
        let names = req.client_certificate_names();
        if needed.is_some_and(|n| !n.admits(names)) {
            return Err(Reason::ClientCertificateNotAllowed);
        }
        let id = &self.settings.identity;
        let mut edits = vec![HeaderEdit::Set(id.client_cert_sha256.clone(), hex(&sha256))];
        for (name, value) in [
            (&id.client_cert_uri, &names.uri_san),
            (&id.client_cert_dns, &names.dns_san),
            (&id.client_cert_subject, &names.subject),
        ] {
            match value {
                Some(v) if header_safe(v) => edits.push(HeaderEdit::Set(name.clone(), v.clone())),
                // The identity cannot be forwarded as it is: never forward
                // the request without it.
                Some(_) => return Err(Reason::ClientCertificateNotAllowed),
                None => {}
            }
        }
        Ok(edits)
    }
}

#[cfg(test)]
mod tests {
    //! Client certificates and certificate-bound tokens through the whole
    //! decision, fresh and cached.

    use super::super::decide::Outcome;
    use super::super::RemoteState;
    use super::*;
    use crate::apikey::KeySet as ApiKeySet;
    use crate::client_cert::{
        CertificateNames, CertificateSnapshot, ClientCertificateSource, Thumbprint,
    };
    use crate::config::{parse, ProviderId, Settings};
    use crate::crypto::{PureVerifier, SignatureVerifier};
    use crate::jwk::{KeySet, VerificationKey};
    use crate::jwt::DecodedToken;
    use crate::revocation::RevocationList;
    use crate::token_cache::TokenCache;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use jwt_simple::prelude::*;
    use serde_json::json;
    use std::cell::{Cell, RefCell};
    use std::sync::Arc;

    const NOW: u64 = 1_800_000_000;
    const PARTNER: Thumbprint = [0xaa; 32];
    const OTHER: Thumbprint = [0xbb; 32];

    struct NoRemote;

    impl RemoteState for NoRemote {
        fn remote_keys(&self, _: ProviderId) -> Option<Arc<KeySet>> {
            None
        }
        fn may_refetch(&self, _: ProviderId, _: Option<&str>) -> bool {
            false
        }
        fn revocations(&self, _: ProviderId) -> Option<Arc<RevocationList>> {
            None
        }
        fn api_keys(&self) -> Option<Arc<ApiKeySet>> {
            None
        }
    }

    struct Counting<'a>(&'a Cell<usize>);

    impl SignatureVerifier for Counting<'_> {
        fn verify(&self, token: &DecodedToken<'_>, key: &VerificationKey) -> bool {
            self.0.set(self.0.get() + 1);
            PureVerifier.verify(token, key)
        }
    }

    struct Fixture {
        settings: Settings,
        key: ES256KeyPair,
        cache: RefCell<TokenCache>,
        verifications: Cell<usize>,
    }

    fn fixture() -> Fixture {
        let key = ES256KeyPair::generate().with_key_id("k1");
        let jwks = json!({"keys": [crate::jwk::tests::es256_jwk(&key, "k1")]}).to_string();
        let config = json!({
            "providers": {"local": {"issuer": "https://issuer.test", "local_jwks": {"inline_string": jwks}}},
            "rules": [
                {"match": {"prefix": "/partner/"}, "requires": {"client_certificate": {
                    "uri_sans": ["spiffe://tollgate.test/partner/*"],
                    "dns_sans": ["partner.acme.test", "*.partners.test"]}}},
                {"match": {"prefix": "/subject/"}, "requires": {"client_certificate": {
                    "subjects": ["CN=*,O=Acme"]}}},
                {"match": {"prefix": "/bound/"}, "requires": {"certificate_bound_token": true}},
                {"match": {"prefix": "/mtls-only/"}, "requires": {
                    "allow_anonymous": true, "client_certificate": {}}},
                {"match": {"prefix": "/"}, "requires": {}}
            ]
        });
        Fixture {
            settings: parse(config.to_string().as_bytes()).unwrap(),
            key,
            cache: RefCell::new(TokenCache::new(100, 1 << 20)),
            verifications: Cell::new(0),
        }
    }

    fn present(sha256: Thumbprint, uri: &str, dns: &str, subject: &str) -> CertificateSnapshot {
        CertificateSnapshot {
            certificate: ClientCertificate::Present(sha256),
            names: CertificateNames {
                uri_san: Some(uri.into()),
                dns_san: Some(dns.into()),
                subject: Some(subject.into()),
            },
        }
    }

    fn partner(sha256: Thumbprint) -> CertificateSnapshot {
        present(
            sha256,
            "spiffe://tollgate.test/partner/acme",
            "Partner.Acme.test",
            "CN=partner,O=Acme",
        )
    }

    impl Fixture {
        fn token(&self, extra: serde_json::Value) -> String {
            let mut claims = json!({"iss": "https://issuer.test", "sub": "user-1",
                "exp": NOW + 300, "iat": NOW});
            for (k, v) in extra.as_object().unwrap() {
                claims[k] = v.clone();
            }
            let claims: JWTClaims<serde_json::Map<String, serde_json::Value>> =
                serde_json::from_value(claims).unwrap();
            self.key.sign(claims).unwrap()
        }

        fn bound_token(&self, to: Thumbprint) -> String {
            self.token(json!({"cnf": {"x5t#S256": URL_SAFE_NO_PAD.encode(to)}}))
        }

        fn decide(
            &self,
            path: &str,
            headers: &[(&str, &str)],
            cert: Option<&CertificateSnapshot>,
        ) -> Outcome {
            let headers: Vec<(String, Vec<u8>)> = headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect();
            let req = RequestView {
                method: "GET",
                path,
                headers: &headers,
                client_ip: Some("192.0.2.1"),
                received_us: 0,
                client_cert: cert.map(|c| c as &dyn ClientCertificateSource),
            };
            Authorizer {
                settings: &self.settings,
                remote: &NoRemote,
                verifier: &Counting(&self.verifications),
                cache: &self.cache,
                now: NOW,
            }
            .decide(&req)
        }

        fn with_token(
            &self,
            path: &str,
            token: &str,
            cert: Option<&CertificateSnapshot>,
        ) -> Outcome {
            self.decide(path, &[("authorization", &format!("Bearer {token}"))], cert)
        }
    }

    fn refused(o: &Outcome) -> (u32, Reason, String) {
        match o {
            Outcome::Deny { denial, .. } => {
                let challenge = denial
                    .headers
                    .iter()
                    .find(|(n, _)| *n == "www-authenticate")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                (denial.status, denial.reason, challenge)
            }
            other => panic!("expected a denial, got {other:?}"),
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
    fn a_rule_requiring_a_certificate_refuses_requests_without_one_before_the_token() {
        let f = fixture();
        let token = f.token(json!({}));
        let (status, reason, challenge) =
            refused(&f.with_token("/partner/x", &token, Some(&CertificateSnapshot::ABSENT)));
        assert_eq!((status, reason), (401, Reason::ClientCertificateRequired));
        assert!(
            challenge.contains("error=\"invalid_request\"")
                && challenge.contains("requires a client certificate (mutual TLS)"),
            "{challenge}"
        );
        assert_eq!(f.verifications.get(), 0, "the token was not even looked at");
        // A host that does not expose the connection: refused, never skipped.
        for cert in [None, Some(&CertificateSnapshot::UNKNOWN)] {
            let (status, reason, _) = refused(&f.with_token("/partner/x", &token, cert));
            assert_eq!(
                (status, reason),
                (500, Reason::ClientCertificateUnavailable)
            );
        }
    }

    #[test]
    fn the_certificate_identity_must_be_allowed_and_is_forwarded() {
        let f = fixture();
        let token = f.token(json!({}));
        let good = partner(PARTNER);
        let o = f.decide(
            "/partner/x",
            &[
                ("authorization", &format!("Bearer {token}")),
                (
                    "x-tollgate-client-cert-uri",
                    "spiffe://tollgate.test/partner/admin",
                ),
                ("x-tollgate-client-cert-sha256", "00"),
            ],
            Some(&good),
        );
        assert_eq!(o.reason(), Some(Reason::Authenticated));
        let Outcome::Allow { edits, .. } = &o else {
            panic!("expected allow, got {o:?}");
        };
        // The client's copies go first, then the certificate's values are set.
        let removed = edits
            .iter()
            .position(|e| *e == HeaderEdit::Remove("x-tollgate-client-cert-uri".into()))
            .expect("the spoofed header is purged");
        let set_at = edits
            .iter()
            .position(|e| matches!(e, HeaderEdit::Set(n, _) if n == "x-tollgate-client-cert-uri"))
            .unwrap();
        assert!(removed < set_at);
        assert_eq!(
            set(&o, "x-tollgate-client-cert-uri").as_deref(),
            Some("spiffe://tollgate.test/partner/acme")
        );
        assert_eq!(
            set(&o, "x-tollgate-client-cert-dns").as_deref(),
            Some("Partner.Acme.test")
        );
        assert_eq!(
            set(&o, "x-tollgate-client-cert-subject").as_deref(),
            Some("CN=partner,O=Acme")
        );
        assert_eq!(
            set(&o, "x-tollgate-client-cert-sha256"),
            Some("aa".repeat(32))
        );
        assert_eq!(set(&o, "x-tollgate-subject").as_deref(), Some("user-1"));

        let outsider = |uri: &str, dns: &str, subject: &str| present(OTHER, uri, dns, subject);
        for (path, cert) in [
            (
                "/partner/x",
                outsider(
                    "spiffe://tollgate.test/partner/acme",
                    "evil.test",
                    "CN=x,O=Acme",
                ),
            ),
            (
                "/partner/x",
                outsider(
                    "spiffe://other.test/partner/acme",
                    "partner.acme.test",
                    "CN=x,O=Acme",
                ),
            ),
            (
                "/subject/x",
                outsider(
                    "spiffe://tollgate.test/partner/acme",
                    "a.partners.test",
                    "CN=x,O=Evil",
                ),
            ),
            (
                "/partner/x",
                outsider(
                    "spiffe://tollgate.test/partner/a\r\nx: 1",
                    "b.partners.test",
                    "CN=x",
                ),
            ),
        ] {
            let (status, reason, _) = refused(&f.with_token(path, &token, Some(&cert)));
            assert_eq!(
                (status, reason),
                (403, Reason::ClientCertificateNotAllowed),
                "{cert:?}"
            );
        }
        let o = f.with_token(
            "/subject/x",
            &token,
            Some(&outsider("urn:x", "x.test", "CN=svc,O=Acme")),
        );
        assert_eq!(o.reason(), Some(Reason::Authenticated));
        // A certificate alone opens an mTLS-only route; its identity is forwarded.
        let o = f.decide("/mtls-only/x", &[], Some(&good));
        assert_eq!(o.reason(), Some(Reason::Anonymous));
        assert_eq!(
            set(&o, "x-tollgate-client-cert-sha256"),
            Some("aa".repeat(32))
        );
        let (status, reason, _) =
            refused(&f.decide("/mtls-only/x", &[], Some(&CertificateSnapshot::ABSENT)));
        assert_eq!((status, reason), (401, Reason::ClientCertificateRequired));
    }

    #[test]
    fn a_bound_token_needs_its_own_certificate_fresh_and_cached() {
        let f = fixture();
        let token = f.bound_token(PARTNER);
        let good = partner(PARTNER);
        let other = partner(OTHER);
        // Any route: the binding is the token's, not the rule's.
        for _ in 0..2 {
            let o = f.with_token("/anything", &token, Some(&good));
            assert_eq!(o.reason(), Some(Reason::Authenticated));
        }
        assert_eq!(
            f.verifications.get(),
            1,
            "the second request was a cache hit"
        );
        let cases = [
            (Some(&other), 401, Reason::CertificateBindingMismatch),
            (
                Some(&CertificateSnapshot::ABSENT),
                401,
                Reason::BoundTokenWithoutCertificate,
            ),
            (
                Some(&CertificateSnapshot::UNKNOWN),
                500,
                Reason::ClientCertificateUnavailable,
            ),
            (None, 500, Reason::ClientCertificateUnavailable),
        ];
        for (cert, status, reason) in cases {
            let (s, r, challenge) = refused(&f.with_token("/anything", &token, cert));
            assert_eq!((s, r), (status, reason), "{cert:?}");
            if status == 401 {
                assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
            }
        }
        assert_eq!(
            f.verifications.get(),
            1,
            "every refusal above came from the cached verification"
        );
        // A fresh verification on the wrong connection is refused the same way.
        let fresh = f.bound_token(PARTNER);
        let (_, reason, _) = refused(&f.with_token("/anything", &fresh, Some(&other)));
        assert_eq!(reason, Reason::CertificateBindingMismatch);
        // A binding that is not a SHA-256 thumbprint matches no certificate.
        for cnf in [json!({"x5t#S256": "AAAA"}), json!({"x5t#S256": 1})] {
            let broken = f.token(json!({ "cnf": cnf }));
            let (_, reason, _) = refused(&f.with_token("/anything", &broken, Some(&good)));
            assert_eq!(reason, Reason::CertificateBindingMismatch, "{cnf}");
        }
    }

    #[test]
    fn a_rule_can_require_every_token_to_be_bound() {
        let f = fixture();
        let good = partner(PARTNER);
        let bearer = f.token(json!({}));
        let (status, reason, challenge) = refused(&f.with_token("/bound/x", &bearer, Some(&good)));
        assert_eq!((status, reason), (401, Reason::TokenNotBound));
        assert!(challenge.contains("error=\"invalid_token\""));
        // The same bearer token elsewhere, with no certificate property read at all.
        let o = f.with_token("/elsewhere", &bearer, None);
        assert_eq!(o.reason(), Some(Reason::Authenticated));
        assert_eq!(set(&o, "x-tollgate-client-cert-sha256"), None);

        let bound = f.bound_token(PARTNER);
        let o = f.with_token("/bound/x", &bound, Some(&good));
        assert_eq!(o.reason(), Some(Reason::Authenticated));
        assert_eq!(
            set(&o, "x-tollgate-client-cert-sha256"),
            Some("aa".repeat(32))
        );
        let (_, reason, _) =
            refused(&f.with_token("/bound/x", &bound, Some(&CertificateSnapshot::ABSENT)));
        assert_eq!(reason, Reason::BoundTokenWithoutCertificate);
    }
}
