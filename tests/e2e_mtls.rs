//! End-to-end over real TLS: the sample stack's HTTPS listener (client
//! certificates from the sample CA, optional at the handshake), rules that
//! require a certificate and its identity, and certificate-bound tokens
//! (RFC 8705) checked against the connection by real Envoy 1.40 properties.

use jwt_simple::prelude::*;
use serde_json::{json, Value};
use support::stack::{claims, Stack, TEST_ISSUER};
use tollgate_sample_ca::Issued;

struct Reply {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The request headers the sample API received.
    fn upstream(&self) -> Value {
        assert_eq!(
            self.status, 200,
            "expected the upstream's echo: {}",
            self.body
        );
        self.json()["headers"].clone()
    }

    /// A refusal with this status, JSON `error` and a description containing `text`.
    fn assert_refused(&self, status: u16, error: &str, text: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        let body = self.json();
        assert_eq!(body["error"], error, "{}", self.body);
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(description.contains(text), "{description:?} lacks {text:?}");
        if status == 401 {
            let challenge = self.header("www-authenticate");
            assert!(
                challenge.contains(&format!("error=\"{error}\"")) && challenge.contains(text),
                "WWW-Authenticate: {challenge:?}"
            );
        }
    }
}

fn call(agent: &ureq::Agent, url: &str, headers: &[(&str, &str)]) -> Result<Reply, ureq::Error> {
    let mut req = ureq::http::Request::builder().method("GET").uri(url);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let mut resp = agent.run(req.body(()).expect("request"))?;
    Ok(Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.body_mut().read_to_string().unwrap_or_default(),
    })
}

/// Over HTTPS, presenting `cert` (or none).
fn https(stack: &Stack, cert: Option<&Issued>, path: &str, headers: &[(&str, &str)]) -> Reply {
    let url = stack.envoy.tls_url(path);
    call(&stack.envoy.pki.agent(cert), &url, headers).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Over the plain-HTTP listener.
fn http(stack: &Stack, path: &str, headers: &[(&str, &str)]) -> Reply {
    let url = stack.envoy.url(path);
    call(&support::http_agent(), &url, headers).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A test-issuer token, bound to `cert` when given.
fn token(stack: &Stack, bound_to: Option<&Issued>, sub: &str) -> String {
    let mut extra = json!({"sub": sub, "jti": format!("jti-{sub}")});
    if let Some(cert) = bound_to {
        extra["cnf"] = json!({"x5t#S256": cert.x5t_s256()});
    }
    stack.keys.es256.sign(claims(TEST_ISSUER, extra)).unwrap()
}

/// The sample stack plus two test rules: certificate-bound tokens only, and a
/// DNS SAN allow-list.
fn stack() -> Stack {
    Stack::builder()
        .plugin_config(|plugin| {
            let rules = plugin["rules"].as_array_mut().unwrap();
            rules.insert(
                0,
                json!({"match": {"prefix": "/bound/"},
                       "requires": {"certificate_bound_token": true}}),
            );
            rules.insert(
                0,
                json!({"match": {"prefix": "/allowlist/"},
                       "requires": {"client_certificate": {"dns_sans": ["acme.partners.tollgate.local"]}}}),
            );
        })
        .start()
}

#[test]
fn certificate_bound_tokens_work_only_with_their_certificate() {
    let stack = stack();
    let pki = &stack.envoy.pki;
    let (acme, globex) = (pki.client("partner-acme"), pki.client("partner-globex"));
    let bound = token(&stack, Some(acme), "acme-service");
    let auth = bearer(&bound);

    // Its own certificate: 200, on a route that does not ask for binding too.
    for _ in 0..2 {
        let reply = https(&stack, Some(acme), "/data", &[("authorization", &auth)]);
        let upstream = reply.upstream();
        assert_eq!(upstream["x-tollgate-subject"], "acme-service");
        assert!(upstream.get("authorization").is_none());
    }
    // Where the rule requires binding, the certificate's identity is forwarded,
    // as real Envoy reports it.
    let upstream = https(&stack, Some(acme), "/bound/x", &[("authorization", &auth)]).upstream();
    assert_eq!(
        upstream["x-tollgate-client-cert-sha256"],
        hex(&acme.sha256())
    );
    assert_eq!(
        upstream["x-tollgate-client-cert-uri"],
        "spiffe://tollgate.local/partner/acme"
    );
    assert_eq!(
        upstream["x-tollgate-client-cert-dns"],
        "acme.partners.tollgate.local"
    );
    assert_eq!(
        upstream["x-tollgate-client-cert-subject"],
        "CN=acme,O=Tollgate Partners"
    );

    // Another valid certificate of the same CA: 401 invalid_token, from the
    // cached verification as from a fresh one.
    https(&stack, Some(globex), "/data", &[("authorization", &auth)]).assert_refused(
        401,
        "invalid_token",
        "bound to another client certificate",
    );
    let fresh = bearer(&token(&stack, Some(acme), "acme-batch"));
    https(&stack, Some(globex), "/data", &[("authorization", &fresh)]).assert_refused(
        401,
        "invalid_token",
        "bound to another client certificate",
    );
    // No certificate, over HTTPS or plain HTTP: 401 invalid_token.
    for reply in [
        https(&stack, None, "/data", &[("authorization", &auth)]),
        http(&stack, "/data", &[("authorization", &auth)]),
    ] {
        reply.assert_refused(401, "invalid_token", "none was presented");
    }

    // A bearer token keeps working where binding is not required, with or
    // without a certificate, over either listener.
    let unbound = bearer(&token(&stack, None, "bearer-user"));
    for reply in [
        https(&stack, None, "/data", &[("authorization", &unbound)]),
        https(
            &stack,
            Some(globex),
            "/data",
            &[("authorization", &unbound)],
        ),
        http(&stack, "/data", &[("authorization", &unbound)]),
    ] {
        assert_eq!(reply.upstream()["x-tollgate-subject"], "bearer-user");
    }
    // ... and is refused where it is.
    https(
        &stack,
        Some(acme),
        "/bound/x",
        &[("authorization", &unbound)],
    )
    .assert_refused(
        401,
        "invalid_token",
        "requires an access token bound to the client certificate",
    );

    let stats = stack.envoy.settled_stats();
    for (name, at_least) in [
        ("tollgate.decision.certificate_binding_mismatch", 2),
        ("tollgate.decision.bound_token_without_certificate", 2),
        ("tollgate.decision.token_not_bound", 1),
    ] {
        let n = support::envoy::counter(&stats, name);
        assert!(n >= at_least, "{name} = {n}");
    }
    assert_eq!(
        support::envoy::counter(&stats, "tollgate.decision.client_certificate_unavailable"),
        0,
        "Envoy exposes the connection's properties"
    );
}

#[test]
fn routes_can_require_a_certificate_and_its_identity() {
    let stack = stack();
    let pki = &stack.envoy.pki;
    let (acme, globex) = (pki.client("partner-acme"), pki.client("partner-globex"));
    let contractor = pki.client("contractor-initech");
    let auth = bearer(&token(&stack, None, "partner-user"));
    let with_token = [("authorization", auth.as_str())];

    // The sample rule: /partner/ wants a partner's SPIFFE ID and a token.
    let upstream = https(&stack, Some(acme), "/partner/orders", &with_token).upstream();
    assert_eq!(upstream["x-tollgate-subject"], "partner-user");
    assert_eq!(
        upstream["x-tollgate-client-cert-uri"],
        "spiffe://tollgate.local/partner/acme"
    );
    // No certificate, on either listener: refused, saying why.
    for reply in [
        https(&stack, None, "/partner/orders", &with_token),
        http(&stack, "/partner/orders", &with_token),
    ] {
        reply.assert_refused(
            401,
            "invalid_request",
            "requires a client certificate (mutual TLS)",
        );
    }
    // A certificate of the same CA naming no partner.
    https(&stack, Some(contractor), "/partner/orders", &with_token).assert_refused(
        403,
        "access_denied",
        "client certificate is not allowed",
    );
    // A DNS SAN outside the allow-list (a partner, but not the listed one).
    https(&stack, Some(globex), "/allowlist/x", &with_token).assert_refused(
        403,
        "access_denied",
        "client certificate is not allowed",
    );
    let upstream = https(&stack, Some(acme), "/allowlist/x", &with_token).upstream();
    assert_eq!(
        upstream["x-tollgate-client-cert-dns"],
        "acme.partners.tollgate.local"
    );
    // A certificate from a CA the listener does not trust never gets that far.
    let url = stack.envoy.tls_url("/partner/orders");
    let stranger = call(&pki.agent(Some(&pki.stranger)), &url, &with_token);
    assert!(
        stranger.is_err(),
        "the handshake should fail: {:?}",
        stranger.map(|r| r.status)
    );
}

#[test]
fn client_sent_certificate_headers_are_ignored_and_purged() {
    let stack = stack();
    let pki = &stack.envoy.pki;
    let acme = pki.client("partner-acme");
    let contractor = pki.client("contractor-initech");
    let auth = bearer(&token(&stack, None, "spoofer"));
    let spoofed_xfcc = "Hash=00;URI=spiffe://tollgate.local/partner/admin";
    let spoofed = [
        ("authorization", auth.as_str()),
        ("x-forwarded-client-cert", spoofed_xfcc),
        (
            "x-tollgate-client-cert-uri",
            "spiffe://tollgate.local/partner/admin",
        ),
        ("x-tollgate-client-cert-sha256", "00"),
        ("x-tollgate-client-cert-subject", "CN=admin"),
    ];
    // With a real certificate: the upstream sees its identity, not the client's,
    // and only the x-forwarded-client-cert Envoy wrote (SANITIZE_SET).
    let upstream = https(&stack, Some(acme), "/partner/orders", &spoofed).upstream();
    assert_eq!(
        upstream["x-tollgate-client-cert-uri"],
        "spiffe://tollgate.local/partner/acme"
    );
    assert_eq!(
        upstream["x-tollgate-client-cert-sha256"],
        hex(&acme.sha256())
    );
    assert_eq!(
        upstream["x-tollgate-client-cert-subject"],
        "CN=acme,O=Tollgate Partners"
    );
    assert_envoys_xfcc(&upstream, acme);
    // A header does not stand in for a certificate...
    https(&stack, None, "/partner/orders", &spoofed).assert_refused(
        401,
        "invalid_request",
        "requires a client certificate",
    );
    // ... nor for a different one.
    https(&stack, Some(contractor), "/partner/orders", &spoofed).assert_refused(
        403,
        "access_denied",
        "not allowed",
    );
    // On routes that check no certificate, and over plain HTTP, the copies are
    // purged all the same.
    for (reply, with_certificate) in [
        (https(&stack, None, "/data", &spoofed), false),
        (https(&stack, Some(acme), "/data", &spoofed), true),
        (http(&stack, "/data", &spoofed), false),
    ] {
        let upstream = reply.upstream();
        if with_certificate {
            assert_envoys_xfcc(&upstream, acme);
        } else {
            assert!(
                upstream.get("x-forwarded-client-cert").is_none(),
                "{upstream}"
            );
        }
        for name in [
            "x-tollgate-client-cert-uri",
            "x-tollgate-client-cert-sha256",
            "x-tollgate-client-cert-subject",
        ] {
            assert!(
                upstream.get(name).is_none(),
                "{name} reached the upstream: {upstream}"
            );
        }
        assert_eq!(upstream["x-tollgate-subject"], "spoofer");
    }
}

/// The upstream's `x-forwarded-client-cert` is the one Envoy wrote for `cert`
/// (its hash and SPIFFE ID), with nothing of the client's spoofed copy.
fn assert_envoys_xfcc(upstream: &Value, cert: &Issued) {
    let xfcc = upstream["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.contains(&format!("Hash={}", hex(&cert.sha256())))
            && xfcc.contains("URI=spiffe://tollgate.local/partner/acme")
            && !xfcc.contains("partner/admin")
            && !xfcc.contains("Hash=00;"),
        "x-forwarded-client-cert: {xfcc:?}"
    );
}

#[test]
fn the_token_service_binds_tokens_to_the_certificate_envoy_saw() {
    let stack = stack();
    let pki = &stack.envoy.pki;
    let (acme, globex) = (pki.client("partner-acme"), pki.client("partner-globex"));
    // A tls_client_auth client: it authenticates with its certificate, no secret.
    let added = stack.tokens.cli(&[
        "clients",
        "add",
        "--id",
        "partner-acme",
        "--scopes",
        "read:data",
        "--tls-san-uri",
        "spiffe://tollgate.local/partner/acme",
    ]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "partner-acme"),
        ("scope", "read:data"),
    ];
    // Through the HTTPS listener with its certificate: Envoy's
    // x-forwarded-client-cert tells the token service which one.
    let mut answer = pki
        .agent(Some(acme))
        .post(stack.envoy.tls_url("/token"))
        .send_form(form)
        .expect("POST /token over mTLS");
    let body: Value = serde_json::from_str(&answer.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(answer.status().as_u16(), 200, "{body}");
    let token = body["access_token"]
        .as_str()
        .expect("an access token")
        .to_string();
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["cnf"]["x5t#S256"], acme.x5t_s256());

    // The gateway takes it with that certificate only.
    let auth = bearer(&token);
    let upstream = https(
        &stack,
        Some(acme),
        "/partner/orders",
        &[("authorization", &auth)],
    )
    .upstream();
    assert_eq!(upstream["x-tollgate-client-id"], "partner-acme");
    https(
        &stack,
        Some(globex),
        "/partner/orders",
        &[("authorization", &auth)],
    )
    .assert_refused(401, "invalid_token", "bound to another client certificate");
    http(&stack, "/data", &[("authorization", &auth)]).assert_refused(
        401,
        "invalid_token",
        "none was presented",
    );
    // Without the certificate the client cannot authenticate at all, and a
    // forged x-forwarded-client-cert from the client changes nothing.
    let forged = format!(
        "Hash={};URI=spiffe://tollgate.local/partner/acme",
        hex(&acme.sha256())
    );
    let refused = support::http_agent()
        .post(stack.envoy.url("/token"))
        .header("x-forwarded-client-cert", &forged)
        .send_form(form)
        .expect("POST /token over plain HTTP");
    assert_eq!(refused.status().as_u16(), 401);
}
