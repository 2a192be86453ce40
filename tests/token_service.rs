//! End-to-end tests of `tollgate-token-service`: the real binary over loopback HTTP,
//! its CLI on a real SQLite file. They assert what clients and operators rely on:
//! statuses, headers, bodies, tokens that verify against the published JWKS.

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::{
    ECDSAP256PublicKeyLike as _, ES256PublicKey, Ed25519PublicKey, EdDSAPublicKeyLike as _,
    JWTClaims, RS256PublicKey, RSAPublicKeyLike as _, VerificationOptions,
};
use serde::Deserialize;
use serde_json::{json, Value};
use support::http_agent;
use support::token_service::{basic_authorization, TokenService};

const FORM: &str = "application/x-www-form-urlencoded";

/// The RFC 9068 claims beyond the registered ones.
#[derive(Deserialize)]
struct AccessTokenClaims {
    client_id: String,
    scope: Option<String>,
}

/// A request that must fail: label, headers, body, expected status and error code.
type ErrorCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [u8], u16, &'a str);

/// A response reduced to what the assertions need.
struct Answer {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    /// An RFC 6749 §5.2 error: the status, the code, a description, never cacheable.
    fn assert_error(&self, status: u16, error: &str, case: &str) {
        assert_eq!(self.status, status, "{case}: {}", self.body);
        assert_eq!(self.body["error"], error, "{case}: {}", self.body);
        assert!(
            self.body["error_description"].is_string(),
            "{case}: {}",
            self.body
        );
        assert_eq!(self.header("content-type"), "application/json", "{case}");
        assert_eq!(self.header("cache-control"), "no-store", "{case}");
    }
}

fn answer(mut response: ureq::http::Response<ureq::Body>) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.body_mut().read_to_string().expect("response body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("status {status}: body is not JSON ({err}): {text:?}"));
    Answer {
        status,
        headers,
        body,
    }
}

/// POST /token with the given headers and raw body.
fn post_token(service: &TokenService, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut request = http_agent().post(service.token_url());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    answer(request.send(body).expect("POST /token"))
}

fn get(service: &TokenService, path: &str) -> Answer {
    answer(http_agent().get(service.url(path)).call().expect("GET"))
}

fn decode_segment(segment: &str) -> Value {
    let bytes = URL_SAFE_NO_PAD.decode(segment).expect("base64url segment");
    serde_json::from_slice(&bytes).expect("JSON segment")
}

/// The JOSE header and the claims of a compact JWT, unverified.
fn decode_jwt(token: &str) -> (Value, Value) {
    let segments: Vec<&str> = token.split('.').collect();
    assert_eq!(segments.len(), 3, "a JWS has three segments: {token}");
    (decode_segment(segments[0]), decode_segment(segments[1]))
}

fn kid_of(token: &str) -> String {
    decode_jwt(token).0["kid"]
        .as_str()
        .expect("kid in header")
        .to_owned()
}

fn jwks_kids(jwks: &Value) -> HashSet<String> {
    jwks["keys"]
        .as_array()
        .expect("keys array")
        .iter()
        .map(|jwk| jwk["kid"].as_str().expect("kid").to_owned())
        .collect()
}

/// Verifies `token` as a relying party would: the key picked from the JWKS by `kid`,
/// the signature, `typ`, issuer, audience and lifetime.
fn verify(service: &TokenService, token: &str) -> JWTClaims<AccessTokenClaims> {
    let (header, _) = decode_jwt(token);
    let kid = header["kid"].as_str().expect("kid");
    let jwks = service.jwks();
    let jwk = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|jwk| jwk["kid"] == kid)
        .unwrap_or_else(|| panic!("kid {kid} is not published in {jwks}"))
        .to_string();
    let options = VerificationOptions {
        required_signature_type: Some("at+jwt".to_owned()),
        allowed_issuers: Some(HashSet::from([service.issuer()])),
        allowed_audiences: Some(HashSet::from([service.audience().to_owned()])),
        ..VerificationOptions::default()
    };
    let verified =
        match header["alg"].as_str().expect("alg") {
            "ES256" => ES256PublicKey::from_jwk(&jwk)
                .and_then(|key| key.verify_token(token, Some(options))),
            "RS256" => RS256PublicKey::from_jwk(&jwk)
                .and_then(|key| key.verify_token(token, Some(options))),
            "EdDSA" => Ed25519PublicKey::from_jwk(&jwk)
                .and_then(|key| key.verify_token(token, Some(options))),
            other => panic!("unexpected alg {other}"),
        };
    verified.unwrap_or_else(|err| panic!("token does not verify against the JWKS: {err}"))
}

#[test]
fn client_credentials_with_basic_auth_issues_an_rfc_9068_access_token() {
    let service = TokenService::builder()
        .client("mobile-app", "read:data write:data")
        .start();
    let secret = service.secret("mobile-app");
    let reply = answer(service.request_token("mobile-app", secret, Some("read:data")));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.header("cache-control"), "no-store");
    assert_eq!(reply.header("pragma"), "no-cache");
    assert_eq!(reply.body["token_type"], "Bearer");
    assert_eq!(reply.body["expires_in"], 900);
    assert_eq!(reply.body["scope"], "read:data");
    let token = reply.body["access_token"].as_str().expect("access_token");

    let (header, claims) = decode_jwt(token);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "ES256");
    assert_eq!(jwks_kids(&service.jwks()), HashSet::from([kid_of(token)]));
    assert_eq!(claims["iss"], service.issuer());
    assert_eq!(claims["sub"], "mobile-app");
    assert_eq!(claims["aud"], "tollgate-sample-api");
    assert_eq!(claims["client_id"], "mobile-app");
    assert_eq!(claims["scope"], "read:data");
    let issued_at = claims["iat"].as_u64().expect("iat");
    assert_eq!(claims["exp"].as_u64().expect("exp"), issued_at + 900);
    assert!(
        claims["jti"].as_str().is_some_and(|jti| jti.len() >= 16),
        "{claims}"
    );

    let verified = verify(&service, token);
    assert_eq!(verified.custom.client_id, "mobile-app");
    assert_eq!(verified.custom.scope.as_deref(), Some("read:data"));

    let again = service.client_credentials_token("mobile-app", secret, Some("read:data"));
    assert_ne!(
        decode_jwt(&again).1["jti"],
        claims["jti"],
        "every token has its own jti"
    );
}

#[test]
fn client_secret_post_without_scope_grants_the_default_scopes() {
    // The harness makes a client's default scopes all it may ask for.
    let service = TokenService::builder()
        .client("svc.billing", "write:data read:data")
        .audience("billing-api")
        .access_token_ttl(120)
        .start();
    let body = format!(
        "grant_type=client_credentials&client_id=svc.billing&client_secret={}",
        service.secret("svc.billing")
    );
    let reply = post_token(&service, &[("Content-Type", FORM)], body.as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["scope"], "read:data write:data");
    assert_eq!(reply.body["expires_in"], 120);

    let claims = verify(
        &service,
        reply.body["access_token"].as_str().expect("token"),
    );
    assert_eq!(claims.subject.as_deref(), Some("svc.billing"));
    assert_eq!(claims.custom.scope.as_deref(), Some("read:data write:data"));
    let lifetime = claims.expires_at.expect("exp") - claims.issued_at.expect("iat");
    assert_eq!(lifetime.as_secs(), 120);
}

#[test]
fn wrong_secret_and_unknown_client_get_the_same_answer_in_similar_time() {
    let service = TokenService::builder()
        .client("mobile-app", "read:data")
        .start();
    // The first verification warms up the service; time the later ones.
    answer(service.request_token("mobile-app", "warm-up", None));

    let timed = |client_id: &str| {
        let started = Instant::now();
        let reply = answer(service.request_token(client_id, "not-the-secret", None));
        (reply, started.elapsed())
    };
    let (wrong_secret, wrong_secret_time) = timed("mobile-app");
    let (unknown_client, unknown_client_time) = timed("no-such-client");

    for (reply, case) in [
        (&wrong_secret, "wrong secret"),
        (&unknown_client, "unknown client"),
    ] {
        reply.assert_error(401, "invalid_client", case);
        assert_eq!(
            reply.header("www-authenticate"),
            r#"Basic realm="tollgate""#,
            "{case}"
        );
    }
    assert_eq!(wrong_secret.body, unknown_client.body);
    // Without the dummy Argon2 check an unknown client would answer orders of magnitude
    // faster; the factor leaves room for scheduling noise.
    assert!(
        unknown_client_time * 4 >= wrong_secret_time,
        "unknown client {unknown_client_time:?} vs wrong secret {wrong_secret_time:?}"
    );
}

#[test]
fn malformed_token_requests_get_clean_json_errors() {
    let service = TokenService::builder()
        .client("mobile-app", "read:data")
        .start();
    let secret = service.secret("mobile-app");
    let basic = basic_authorization("mobile-app", secret);
    let with_basic = [("Content-Type", FORM), ("Authorization", basic.as_str())];
    let with_json = [
        ("Content-Type", "application/json"),
        ("Authorization", basic.as_str()),
    ];
    let basic_only = [("Authorization", basic.as_str())];
    let huge = format!(
        "grant_type=client_credentials&pad={}",
        "a".repeat(32 * 1024)
    );
    let both_methods =
        format!("grant_type=client_credentials&client_id=mobile-app&client_secret={secret}");

    let cases: Vec<ErrorCase> = vec![
        (
            "unsupported grant",
            &with_basic,
            b"grant_type=password&username=a&password=b",
            400,
            "unsupported_grant_type",
        ),
        (
            "missing grant_type",
            &with_basic,
            b"scope=read%3Adata",
            400,
            "invalid_request",
        ),
        (
            "empty grant_type",
            &with_basic,
            b"grant_type=",
            400,
            "invalid_request",
        ),
        (
            "scope not allowed",
            &with_basic,
            b"grant_type=client_credentials&scope=read%3Adata+admin",
            400,
            "invalid_scope",
        ),
        (
            "invalid scope characters",
            &with_basic,
            b"grant_type=client_credentials&scope=%22quoted%22",
            400,
            "invalid_scope",
        ),
        (
            "JSON content type",
            &with_json,
            br#"{"grant_type":"client_credentials"}"#,
            400,
            "invalid_request",
        ),
        (
            "no content type",
            &basic_only,
            b"grant_type=client_credentials",
            400,
            "invalid_request",
        ),
        (
            "bad percent escape",
            &with_basic,
            b"grant_type=client_credentials&scope=%zz",
            400,
            "invalid_request",
        ),
        (
            "invalid UTF-8",
            &with_basic,
            b"grant_type=client_credentials&scope=\xff\xfe",
            400,
            "invalid_request",
        ),
        (
            "duplicate grant_type",
            &with_basic,
            b"grant_type=client_credentials&grant_type=client_credentials",
            400,
            "invalid_request",
        ),
        (
            "duplicate scope",
            &with_basic,
            b"grant_type=client_credentials&scope=read%3Adata&scope=read%3Adata",
            400,
            "invalid_request",
        ),
        (
            "basic and client_secret at once",
            &with_basic,
            both_methods.as_bytes(),
            400,
            "invalid_request",
        ),
        (
            "no client authentication",
            &[("Content-Type", FORM)],
            b"grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        (
            "client_id without secret",
            &[("Content-Type", FORM)],
            b"grant_type=client_credentials&client_id=mobile-app",
            401,
            "invalid_client",
        ),
        (
            "bearer instead of basic",
            &[("Content-Type", FORM), ("Authorization", "Bearer abc")],
            b"grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        (
            "basic without colon",
            &[
                ("Content-Type", FORM),
                ("Authorization", "Basic bW9iaWxlLWFwcA=="),
            ],
            b"grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        (
            "body over 16 KiB",
            &with_basic,
            huge.as_bytes(),
            413,
            "invalid_request",
        ),
    ];
    for (case, headers, body, status, error) in cases {
        let reply = post_token(&service, headers, body);
        reply.assert_error(status, error, case);
        if status == 401 {
            assert_eq!(
                reply.header("www-authenticate"),
                r#"Basic realm="tollgate""#,
                "{case}"
            );
        }
    }

    // None of that disturbed the service.
    service.client_credentials_token("mobile-app", secret, None);
}

#[test]
fn a_body_that_never_arrives_times_out_instead_of_hanging() {
    let service = TokenService::builder().start();
    let mut stream = TcpStream::connect(("127.0.0.1", service.port())).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    // Announces 100 bytes, sends 11, then waits.
    stream
        .write_all(
            b"POST /token HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n\
              grant_type=",
        )
        .expect("send partial request");
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    while !response.ends_with(b"}") {
        match stream
            .read(&mut chunk)
            .expect("the service answers within 30 s")
        {
            0 => break,
            read => response.extend_from_slice(&chunk[..read]),
        }
    }
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(
        response.contains(r#""error":"invalid_request""#),
        "{response}"
    );
}

#[test]
fn unknown_paths_and_wrong_methods_are_json_errors() {
    let service = TokenService::builder().start();
    get(&service, "/nope").assert_error(404, "not_found", "unknown path");
    get(&service, "/token").assert_error(405, "method_not_allowed", "GET /token");
    let delete = answer(
        http_agent()
            .delete(service.jwks_url())
            .call()
            .expect("DELETE"),
    );
    delete.assert_error(405, "method_not_allowed", "DELETE jwks");
    assert_eq!(delete.header("allow"), "GET,HEAD");
}

#[test]
fn discovery_documents_jwks_and_health_describe_the_service() {
    let service = TokenService::builder()
        .client("reader", "read:data")
        .client("writer", "write:data read:data")
        .issuer("https://auth.example.test")
        .start();

    let health = get(&service, "/healthz");
    assert_eq!(health.status, 200);
    assert_eq!(health.body, json!({ "status": "ok" }));

    let expected = json!({
        "issuer": "https://auth.example.test",
        "authorization_endpoint": "https://auth.example.test/authorize",
        "token_endpoint": "https://auth.example.test/token",
        "jwks_uri": "https://auth.example.test/.well-known/jwks.json",
        "revocation_endpoint": "https://auth.example.test/revoke",
        "introspection_endpoint": "https://auth.example.test/introspect",
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none", "tls_client_auth", "self_signed_tls_client_auth"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none", "tls_client_auth", "self_signed_tls_client_auth"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "tls_client_auth", "self_signed_tls_client_auth"],
        "authorization_response_iss_parameter_supported": true,
        "acr_values_supported": ["urn:tollgate:acr:pwd", "urn:tollgate:acr:mfa", "urn:tollgate:acr:phr"],
        "dpop_signing_alg_values_supported": ["ES256"],
        "tls_client_certificate_bound_access_tokens": true,
        "scopes_supported": ["read:data", "write:data"],
    });
    let metadata = get(&service, "/.well-known/oauth-authorization-server");
    assert_eq!(metadata.status, 200);
    assert_eq!(metadata.header("content-type"), "application/json");
    assert_eq!(metadata.body, expected);
    // Not an OpenID Provider: no OIDC discovery document that would promise one.
    let oidc = get(&service, "/.well-known/openid-configuration");
    assert_eq!(
        (oidc.status, &oidc.body["error"]),
        (404, &json!("not_found"))
    );

    let jwks = get(&service, "/.well-known/jwks.json");
    assert_eq!(jwks.status, 200);
    assert!(jwks.header("cache-control").contains("max-age"));
    let keys = jwks.body["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1);
    let jwk = &keys[0];
    assert_eq!(jwk["kty"], "EC");
    assert_eq!(jwk["crv"], "P-256");
    assert_eq!(jwk["alg"], "ES256");
    assert_eq!(jwk["use"], "sig");
    assert!(
        jwk["kid"].is_string() && jwk["x"].is_string() && jwk["y"].is_string(),
        "{jwk}"
    );
    assert!(
        jwk.get("d").is_none(),
        "the private key must never be published: {jwk}"
    );

    let token = service.client_credentials_token("reader", service.secret("reader"), None);
    assert_eq!(
        verify(&service, &token).issuer.as_deref(),
        Some("https://auth.example.test")
    );
}

#[test]
fn keys_rotated_by_the_cli_take_effect_without_restart() {
    let service = TokenService::builder()
        .client("mobile-app", "read:data")
        .start();
    let secret = service.secret("mobile-app");
    let before = service.client_credentials_token("mobile-app", secret, None);
    let old_kid = kid_of(&before);

    let new_kid = service.rotate_keys(None);
    assert_ne!(new_kid, old_kid);

    let after = service.client_credentials_token("mobile-app", secret, None);
    assert_eq!(
        kid_of(&after),
        new_kid,
        "new tokens are signed with the new key"
    );
    assert_eq!(
        decode_jwt(&after).0["alg"],
        "ES256",
        "rotation keeps the algorithm"
    );
    assert_eq!(
        jwks_kids(&service.jwks()),
        HashSet::from([old_kid.clone(), new_kid.clone()])
    );
    verify(&service, &before);
    verify(&service, &after);

    let listed = service.cli(&["keys", "list"]);
    assert!(listed.status.success());
    let listed = String::from_utf8_lossy(&listed.stdout);
    let status_of = |kid: &str| {
        listed
            .lines()
            .find(|line| line.starts_with(kid))
            .and_then(|line| line.split_whitespace().nth(2))
            .unwrap_or_else(|| panic!("{kid} not in keys list:\n{listed}"))
            .to_owned()
    };
    assert_eq!(status_of(&new_kid), "active");
    assert_eq!(status_of(&old_kid), "published");

    let switched = service.rotate_keys(Some("EdDSA"));
    let token = service.client_credentials_token("mobile-app", secret, None);
    assert_eq!(kid_of(&token), switched);
    assert_eq!(decode_jwt(&token).0["alg"], "EdDSA");
    assert_eq!(jwks_kids(&service.jwks()).len(), 3);
    verify(&service, &token);
}

#[test]
fn restart_keeps_signing_keys_and_clients() {
    let mut service = TokenService::builder()
        .client("mobile-app", "read:data")
        .start();
    let secret = service.secret("mobile-app").to_owned();
    let before = service.client_credentials_token("mobile-app", &secret, None);

    service.restart();

    let after = service.client_credentials_token("mobile-app", &secret, None);
    assert_eq!(kid_of(&after), kid_of(&before));
    verify(&service, &before);
    assert!(
        !service.log().contains("generated"),
        "no new key on restart:\n{}",
        service.log()
    );
}

#[test]
fn rs256_can_be_selected() {
    let service = TokenService::builder()
        .client("mobile-app", "read:data")
        .alg("RS256")
        .start();
    let token = service.client_credentials_token("mobile-app", service.secret("mobile-app"), None);
    assert_eq!(decode_jwt(&token).0["alg"], "RS256");
    let jwks = service.jwks();
    let jwk = &jwks["keys"][0];
    assert_eq!(jwk["kty"], "RSA");
    assert_eq!(jwk["alg"], "RS256");
    assert_eq!(jwk["e"], "AQAB");
    let modulus = URL_SAFE_NO_PAD
        .decode(jwk["n"].as_str().expect("n"))
        .expect("n base64url");
    assert_eq!(modulus.len() * 8, 2048);
    verify(&service, &token);
}

#[test]
fn eddsa_can_be_selected() {
    let service = TokenService::builder()
        .client("mobile-app", "read:data")
        .alg("EdDSA")
        .start();
    let token = service.client_credentials_token("mobile-app", service.secret("mobile-app"), None);
    assert_eq!(decode_jwt(&token).0["alg"], "EdDSA");
    let jwks = service.jwks();
    let jwk = &jwks["keys"][0];
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["crv"], "Ed25519");
    assert_eq!(jwk["alg"], "EdDSA");
    verify(&service, &token);
}

#[test]
fn secrets_stay_out_of_the_database_and_the_log() {
    let mut service = TokenService::builder()
        .client("mobile-app", "read:data")
        .start();
    let secret = service.secret("mobile-app").to_owned();
    let late_secret = service.add_client("late-app", "read:data");

    let basic_token = service.client_credentials_token("mobile-app", &secret, None);
    let post_body =
        format!("grant_type=client_credentials&client_id=late-app&client_secret={late_secret}");
    let post_reply = post_token(&service, &[("Content-Type", FORM)], post_body.as_bytes());
    assert_eq!(post_reply.status, 200, "{}", post_reply.body);
    let post_token_value = post_reply.body["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let wrong = "definitely-not-the-secret";
    answer(service.request_token("mobile-app", wrong, None)).assert_error(
        401,
        "invalid_client",
        "wrong",
    );

    let log = service.log();
    assert!(
        log.contains("POST /token 200"),
        "requests are logged:\n{log}"
    );
    assert!(
        log.contains("client_id=late-app"),
        "clients are named:\n{log}"
    );
    let basic = basic_authorization("mobile-app", &secret);
    for (what, needle) in [
        ("secret", secret.as_str()),
        ("late secret", late_secret.as_str()),
        ("wrong secret", wrong),
        ("basic credentials", basic.trim_start_matches("Basic ")),
        ("token", basic_token.as_str()),
        ("posted token", post_token_value.as_str()),
        (
            "token signature",
            basic_token.rsplit('.').next().expect("signature"),
        ),
    ] {
        assert!(!log.contains(needle), "the log contains the {what}:\n{log}");
    }

    // Stop first so that SQLite checkpoints the WAL into the main file, then check every
    // file SQLite may have written.
    assert!(service.stop().success());
    let db = service.db_path().clone();
    let mut stored = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", db.display());
        if let Ok(bytes) = std::fs::read(&path) {
            stored.extend(bytes);
        }
    }
    let stored = String::from_utf8_lossy(&stored);
    assert!(
        stored.contains("$argon2id$"),
        "secrets are stored as Argon2id hashes"
    );
    for needle in [&secret, &late_secret] {
        assert!(
            !stored.contains(needle.as_str()),
            "the database holds a plaintext secret"
        );
    }
}

#[test]
fn cli_lists_and_removes_clients() {
    let service = TokenService::builder()
        .client("mobile-app", "read:data write:data")
        .client("batch-job", "")
        .start();
    let listed = service.cli(&["clients", "list"]);
    assert!(listed.status.success());
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("mobile-app") && listed.contains("batch-job"),
        "{listed}"
    );
    assert!(
        listed.contains("confidential") && listed.contains("read:data write:data"),
        "{listed}"
    );
    assert!(
        !listed.contains(service.secret("mobile-app")),
        "list never shows secrets"
    );

    // A client with no scopes gets a token without a scope claim.
    let token = service.client_credentials_token("batch-job", service.secret("batch-job"), None);
    assert!(verify(&service, &token).custom.scope.is_none());

    let duplicate = service.cli(&["clients", "add", "--id", "mobile-app"]);
    assert!(!duplicate.status.success(), "adding an existing id fails");

    let removed = service.cli(&["clients", "remove", "--id", "mobile-app"]);
    assert!(removed.status.success());
    answer(service.request_token("mobile-app", service.secret("mobile-app"), None)).assert_error(
        401,
        "invalid_client",
        "removed client",
    );
    let missing = service.cli(&["clients", "remove", "--id", "mobile-app"]);
    assert!(!missing.status.success(), "removing an unknown id fails");

    // Only RFC 3986 unreserved characters: nothing HTTP Basic needs to percent-encode.
    for bad in [
        "has space",
        "svc:billing",
        "ops@example",
        "a+b",
        "caf\u{e9}",
    ] {
        let refused = service.cli(&["clients", "add", "--id", bad]);
        assert!(!refused.status.success(), "{bad} accepted");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("client id may contain only ASCII letters, digits and - . _ ~"),
            "{stderr}"
        );
    }
    let fine = service.cli(&["clients", "add", "--id", "svc.billing_v2~eu"]);
    assert!(
        fine.status.success(),
        "{}",
        String::from_utf8_lossy(&fine.stderr)
    );
}

#[test]
fn removing_or_disabling_a_client_revokes_its_client_credentials_tokens() {
    let service = TokenService::builder()
        .client("batch", "read:data")
        .client("batch-2", "read:data")
        .client("gateway", "")
        .start();
    let introspect = |token: &str| -> Value {
        let mut response = http_agent()
            .post(service.url("/introspect"))
            .header(
                "Authorization",
                basic_authorization("gateway", service.secret("gateway")),
            )
            .send_form([("token", token)])
            .expect("POST /introspect");
        assert_eq!(response.status(), 200);
        response.body_mut().read_json().expect("JSON")
    };
    let feed = || -> Value {
        let mut response = http_agent()
            .get(service.url("/revocations"))
            .call()
            .expect("GET /revocations");
        response.body_mut().read_json().expect("JSON")
    };
    let jti = |token: &str| decode_jwt(token).1["jti"].clone();

    let first = service.client_credentials_token("batch", service.secret("batch"), None);
    let second = service.client_credentials_token("batch", service.secret("batch"), None);
    let other = service.client_credentials_token("batch-2", service.secret("batch-2"), None);
    assert_eq!(introspect(&first)["active"], true);

    let removed = service.cli(&["clients", "remove", "--id", "batch"]);
    assert!(removed.status.success(), "{removed:?}");
    for token in [&first, &second] {
        assert_eq!(introspect(token), json!({"active": false}));
    }
    let listed: Vec<Value> = feed()["revoked"]
        .as_array()
        .expect("revoked")
        .iter()
        .map(|entry| entry["jti"].clone())
        .collect();
    let mut expected = vec![jti(&first), jti(&second)];
    expected.sort_by_key(|value| value.as_str().unwrap_or_default().to_owned());
    assert_eq!(listed, expected);
    assert_eq!(
        introspect(&other)["active"],
        true,
        "other clients are untouched"
    );

    let disabled = service.cli(&["clients", "disable", "--id", "batch-2"]);
    assert!(disabled.status.success(), "{disabled:?}");
    assert_eq!(introspect(&other), json!({"active": false}));
    answer(service.request_token("batch-2", service.secret("batch-2"), None)).assert_error(
        401,
        "invalid_client",
        "disabled client",
    );
    let listed = String::from_utf8_lossy(&service.cli(&["clients", "list"]).stdout).into_owned();
    assert!(
        listed
            .lines()
            .any(|line| line.starts_with("batch-2") && line.contains(" disabled ")),
        "{listed}"
    );
    let enabled = service.cli(&["clients", "enable", "--id", "batch-2"]);
    assert!(enabled.status.success(), "{enabled:?}");
    let fresh = service.client_credentials_token("batch-2", service.secret("batch-2"), None);
    assert_eq!(introspect(&fresh)["active"], true);
    assert_eq!(
        introspect(&other),
        json!({"active": false}),
        "stays revoked"
    );
}

#[test]
fn sigterm_stops_the_service_gracefully() {
    let mut service = TokenService::builder().start();
    let status = service.stop();
    assert!(status.success(), "exit status {status}");
    let log = service.log();
    assert!(log.contains("SIGTERM received"), "{log}");
    let refused = http_agent()
        .get(service.url("/healthz"))
        .config()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .call();
    assert!(refused.is_err(), "nothing listens after shutdown");
}
