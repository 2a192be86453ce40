//! Sender-constrained tokens from the token service, over real HTTP against the real
//! binary: DPoP (RFC 9449) for every grant, with replay, proof, nonce and key-binding
//! checks; certificate-bound tokens (RFC 8705) for clients that authenticate with the
//! client certificate a trusted hop forwards in `x-forwarded-client-cert`; and what
//! discovery and introspection say about both.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use socket2::{Domain, Socket, Type};
use support::dpop::{self, DpopKey};
use support::http_agent;
use support::oauth::{authorize_url, code_request, Browser, Pkce};
use support::token_service::{basic_authorization, form_urlencode, TokenService};

const APP: &str = "mobile";
const APP_REDIRECT: &str = "com.example.mobile:/oauth/callback";
const SERVICE: &str = "backend";
const ALICE: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";

struct Answer {
    status: u16,
    nonce: Option<String>,
    body: Value,
}

/// POSTs a form with extra headers.
fn post(url: &str, form: &[(&str, &str)], headers: &[(&str, &str)]) -> Answer {
    let mut request = http_agent().post(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.send_form(form.iter().copied()).expect("POST");
    let status = response.status().as_u16();
    let nonce = response
        .headers()
        .get("dpop-nonce")
        .map(|value| value.to_str().expect("ASCII").to_owned());
    let text = response.body_mut().read_to_string().expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{status} {err}: {text}"));
    Answer {
        status,
        nonce,
        body,
    }
}

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("JWT payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

fn access_token(answer: &Answer) -> String {
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

fn assert_dpop_bound(answer: &Answer, key: &DpopKey) {
    let token = access_token(answer);
    assert_eq!(answer.body["token_type"], "DPoP", "{}", answer.body);
    assert_eq!(claims(&token)["cnf"], json!({ "jkt": key.jkt }));
}

fn assert_refused(answer: &Answer, error: &str, why: &str) {
    assert_eq!(answer.status, 400, "{why}: {}", answer.body);
    assert_eq!(answer.body["error"], error, "{why}: {}", answer.body);
    assert!(answer.body.get("access_token").is_none(), "{why}");
}

fn client_credentials(service: &TokenService, proof: &str) -> Answer {
    post(
        &service.token_url(),
        &[("grant_type", "client_credentials")],
        &[
            (
                "Authorization",
                &basic_authorization(SERVICE, service.secret(SERVICE)),
            ),
            ("DPoP", proof),
        ],
    )
}

/// Logs Alice in for the mobile app, asking for a code bound to `dpop_jkt`.
fn app_code(service: &TokenService, pkce: &Pkce, dpop_jkt: &str) -> String {
    let mut params = code_request(APP, APP_REDIRECT, "read:data", "st", pkce);
    params.push(("dpop_jkt", dpop_jkt));
    let url = authorize_url(&service.base_url(), &params);
    Browser::new().log_in(&url, ALICE, PASSWORD)["code"].clone()
}

fn redeem(service: &TokenService, code: &str, pkce: &Pkce, proof: Option<&str>) -> Answer {
    let headers: Vec<(&str, &str)> = proof.map(|proof| ("DPoP", proof)).into_iter().collect();
    post(
        &service.token_url(),
        &[
            ("grant_type", "authorization_code"),
            ("client_id", APP),
            ("code", code),
            ("redirect_uri", APP_REDIRECT),
            ("code_verifier", &pkce.verifier),
        ],
        &headers,
    )
}

fn refresh(service: &TokenService, refresh_token: &str, proof: Option<&str>) -> Answer {
    let headers: Vec<(&str, &str)> = proof.map(|proof| ("DPoP", proof)).into_iter().collect();
    post(
        &service.token_url(),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", APP),
            ("refresh_token", refresh_token),
        ],
        &headers,
    )
}

fn dpop_service() -> TokenService {
    TokenService::builder()
        .public_client(APP, "read:data", &[APP_REDIRECT])
        .client(SERVICE, "read:data")
        .user(ALICE, PASSWORD, "read:data")
        .start()
}

#[test]
fn every_grant_issues_dpop_tokens_bound_to_the_proof_key() {
    let service = dpop_service();
    let htu = service.token_url();
    let key = DpopKey::generate();

    // client_credentials
    let answer = client_credentials(&service, &key.proof("POST", &htu));
    assert_dpop_bound(&answer, &key);

    // authorization_code with dpop_jkt, then refresh with the same key
    let pkce = Pkce::new();
    let code = app_code(&service, &pkce, &key.jkt);
    let answer = redeem(&service, &code, &pkce, Some(&key.proof("POST", &htu)));
    assert_dpop_bound(&answer, &key);
    let refresh_token = answer.body["refresh_token"]
        .as_str()
        .expect("rt")
        .to_owned();
    let answer = refresh(&service, &refresh_token, Some(&key.proof("POST", &htu)));
    assert_dpop_bound(&answer, &key);
    let refresh_token = answer.body["refresh_token"]
        .as_str()
        .expect("rt")
        .to_owned();

    // The public client's refresh token is bound to the key: another key, or none, fails
    // and burns nothing.
    let thief = DpopKey::generate();
    let stolen = refresh(&service, &refresh_token, Some(&thief.proof("POST", &htu)));
    assert_refused(&stolen, "invalid_grant", "a refresh with another key");
    let bare = refresh(&service, &refresh_token, None);
    assert_refused(
        &bare,
        "invalid_dpop_proof",
        "a bound refresh without a proof",
    );
    let answer = refresh(&service, &refresh_token, Some(&key.proof("POST", &htu)));
    assert_dpop_bound(&answer, &key);

    // Without a proof, tokens stay Bearer tokens without cnf.
    let answer = post(
        &service.token_url(),
        &[("grant_type", "client_credentials")],
        &[(
            "Authorization",
            &basic_authorization(SERVICE, service.secret(SERVICE)),
        )],
    );
    assert_eq!(answer.body["token_type"], "Bearer");
    assert!(claims(&access_token(&answer)).get("cnf").is_none());
}

#[test]
fn a_code_bound_by_dpop_jkt_is_redeemed_only_with_that_key() {
    let service = dpop_service();
    let htu = service.token_url();
    let key = DpopKey::generate();
    let pkce = Pkce::new();
    let code = app_code(&service, &pkce, &key.jkt);

    let other = DpopKey::generate();
    let answer = redeem(&service, &code, &pkce, Some(&other.proof("POST", &htu)));
    assert_refused(
        &answer,
        "invalid_grant",
        "a proof by another key than dpop_jkt",
    );
    let answer = redeem(&service, &code, &pkce, None);
    assert_refused(
        &answer,
        "invalid_dpop_proof",
        "no proof for a dpop_jkt code",
    );
    // Neither attempt used the code up.
    let answer = redeem(&service, &code, &pkce, Some(&key.proof("POST", &htu)));
    assert_dpop_bound(&answer, &key);

    // A malformed dpop_jkt goes back to the app as invalid_request.
    let mut params = code_request(APP, APP_REDIRECT, "read:data", "st", &pkce);
    params.push(("dpop_jkt", "not-a-thumbprint"));
    let page = Browser::new().get(&authorize_url(&service.base_url(), &params));
    let redirect = page.redirect_params();
    assert_eq!(redirect["error"], "invalid_request");
}

#[test]
fn replayed_and_malformed_proofs_are_refused() {
    let service = dpop_service();
    let htu = service.token_url();
    let key = DpopKey::generate();

    let proof = key.proof("POST", &htu);
    assert_dpop_bound(&client_credentials(&service, &proof), &key);
    assert_refused(
        &client_credentials(&service, &proof),
        "invalid_dpop_proof",
        "the same proof (jti) again",
    );

    let other = DpopKey::generate();
    let claims = || DpopKey::claims("POST", &htu);
    let with = |changes: Value| {
        let mut claims = claims();
        for (name, value) in changes.as_object().expect("object") {
            claims[name] = value.clone();
        }
        key.sign(&key.header(), &claims)
    };
    let header_with = |changes: Value| {
        let mut header = key.header();
        for (name, value) in changes.as_object().expect("object") {
            header[name] = value.clone();
        }
        key.sign(&header, &claims())
    };
    let mut leaky_jwk = key.jwk.clone();
    leaky_jwk["d"] = key.private_d().into();
    let hs256 = {
        let header = json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": key.jwk});
        let input = format!(
            "{}.{}",
            dpop::encode_json(&header),
            dpop::encode_json(&claims())
        );
        let mac = hmac_sha256::HMAC::mac(input.as_bytes(), b"guessable");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac))
    };
    let none = format!(
        "{}.{}.",
        dpop::encode_json(&json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk})),
        dpop::encode_json(&claims())
    );
    let cases: Vec<(&str, String)> = vec![
        ("another method", with(json!({"htm": "GET"}))),
        (
            "another URL",
            with(json!({"htu": service.url("/introspect")})),
        ),
        (
            "another host",
            with(json!({"htu": "https://elsewhere.example/token"})),
        ),
        ("an old iat", with(json!({"iat": dpop::now() - 300}))),
        (
            "an iat in the future",
            with(json!({"iat": dpop::now() + 300})),
        ),
        ("no jti", {
            let mut claims = claims();
            claims.as_object_mut().expect("object").remove("jti");
            key.sign(&key.header(), &claims)
        }),
        (
            "a signature by another key",
            other.sign(&key.header(), &claims()),
        ),
        (
            "a jwk with the private key",
            header_with(json!({"jwk": leaky_jwk})),
        ),
        ("typ JWT", header_with(json!({"typ": "JWT"}))),
        ("no jwk", {
            let mut header = key.header();
            header.as_object_mut().expect("object").remove("jwk");
            key.sign(&header, &claims())
        }),
        ("alg none", none),
        ("alg HS256", hs256),
        ("not a JWS", "garbage".to_owned()),
    ];
    for (why, proof) in cases {
        assert_refused(
            &client_credentials(&service, &proof),
            "invalid_dpop_proof",
            why,
        );
    }
    // A proof does not count as used when it was refused for being malformed, but a
    // valid fresh one still works afterwards.
    assert_dpop_bound(
        &client_credentials(&service, &key.proof("POST", &htu)),
        &key,
    );
}

/// Behind Envoy the service is reached at a loopback address, but clients sign the
/// public token endpoint: `htu` must be the issuer's `/token`, never the address the
/// request happened to arrive on.
#[test]
fn htu_is_the_public_token_endpoint_and_nonces_are_challenged() {
    let public = "https://auth.example.com";
    let service = TokenService::builder()
        .issuer(public)
        .client(SERVICE, "read:data")
        .serve_arg("--dpop-nonce", "true")
        .start();
    let key = DpopKey::generate();
    let public_token = format!("{public}/token");

    // No nonce yet: 400 use_dpop_nonce with a DPoP-Nonce header.
    let challenge = client_credentials(&service, &key.proof("POST", &public_token));
    assert_refused(&challenge, "use_dpop_nonce", "a proof without the nonce");
    let nonce = challenge.nonce.expect("DPoP-Nonce header");

    // Retried with the nonce: bound token.
    let answer = client_credentials(
        &service,
        &key.proof_with_nonce("POST", &public_token, &nonce),
    );
    assert_dpop_bound(&answer, &key);
    // The same URL written differently is the same htu.
    let answer = client_credentials(
        &service,
        &key.proof_with_nonce("POST", "HTTPS://Auth.Example.com:443/token?x=1", &nonce),
    );
    assert_dpop_bound(&answer, &key);

    // A made-up nonce is challenged again, with a fresh one.
    let answer = client_credentials(
        &service,
        &key.proof_with_nonce("POST", &public_token, "0.AAAA"),
    );
    assert_refused(&answer, "use_dpop_nonce", "a made-up nonce");
    assert!(answer.nonce.is_some());

    // The URL the request really reached is not the token endpoint clients know.
    let answer = client_credentials(
        &service,
        &key.proof_with_nonce("POST", &service.token_url(), &nonce),
    );
    assert_refused(&answer, "invalid_dpop_proof", "htu of the internal address");

    let metadata: Value = http_agent()
        .get(&service.url("/.well-known/oauth-authorization-server"))
        .call()
        .expect("metadata")
        .body_mut()
        .read_json()
        .expect("JSON");
    assert_eq!(
        metadata["dpop_signing_alg_values_supported"],
        json!(["ES256"])
    );
    assert_eq!(metadata["token_endpoint"], public_token);
}

// ---- mutual TLS (RFC 8705) ----

const PARTNER: &str = "partner";
const PARTNER_URI: &str = "spiffe://example.org/partner";
const SELF_SIGNED: &str = "device";
const MTLS_BASE: &str = "https://mtls.auth.example.com:8443";

/// What Envoy forwards for a certificate whose DER is `der` (`Hash` is its SHA-256 in
/// hex), with the given SAN URI and subject.
fn xfcc(der: &[u8], uri: &str, subject: &str) -> String {
    let hash: String = Sha256::digest(der)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!(r#"By=spiffe://example.org/envoy;Hash={hash};Subject="{subject}";URI={uri}"#)
}

/// POSTs a form over a connection from a chosen loopback source address.
fn post_from(source: &str, port: u16, path: &str, form: &str, headers: &[(&str, &str)]) -> Answer {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let from: SocketAddr = format!("{source}:0").parse().expect("address");
    socket.bind(&from.into()).expect("bind");
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    socket.connect(&to.into()).expect("connect");
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        form.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(form);
    stream.write_all(request.as_bytes()).expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Answer {
        status,
        nonce: None,
        body: serde_json::from_str(body).unwrap_or_else(|err| panic!("{err}: {response}")),
    }
}

fn certificate_token(service: &TokenService, source: &str, client_id: &str, xfcc: &str) -> Answer {
    let form = format!(
        "grant_type=client_credentials&client_id={}",
        form_urlencode(client_id)
    );
    post_from(
        source,
        service.port(),
        "/token",
        &form,
        &[("x-forwarded-client-cert", xfcc)],
    )
}

#[test]
fn certificate_bound_tokens_from_a_trusted_hop_only() {
    let device_der = b"device certificate DER".as_slice();
    let device_hex: String = Sha256::digest(device_der)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    // Only 127.0.0.1 (where Envoy would run) is a trusted hop.
    let mut service = TokenService::builder()
        .serve_arg("--trusted-proxies", "127.0.0.1/32")
        .serve_arg("--mtls-endpoint-base", MTLS_BASE)
        .client("gateway", "")
        .create();
    for args in [
        vec![
            "clients",
            "add",
            "--id",
            PARTNER,
            "--scopes",
            "read:data",
            "--tls-san-uri",
            PARTNER_URI,
        ],
        vec![
            "clients",
            "add",
            "--id",
            SELF_SIGNED,
            "--scopes",
            "read:data",
            "--tls-thumbprint",
            &device_hex,
        ],
    ] {
        let output = service.cli(&args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}");
        assert!(!stdout.contains("client_secret"), "no secret: {stdout}");
        assert!(stdout.contains("token_endpoint_auth_method: "), "{stdout}");
    }
    let refused = service.cli(&[
        "clients",
        "add",
        "--id",
        "both",
        "--public",
        "--redirect-uri",
        APP_REDIRECT,
        "--tls-san-dns",
        "x.example",
    ]);
    assert!(
        !refused.status.success(),
        "a public client with a certificate"
    );
    service.start();

    let partner_der = b"partner certificate DER".as_slice();
    let partner_xfcc = xfcc(partner_der, PARTNER_URI, "CN=partner,O=Example");
    let expected = URL_SAFE_NO_PAD.encode(Sha256::digest(partner_der));

    // tls_client_auth through the trusted hop: a bound Bearer token.
    let answer = certificate_token(&service, "127.0.0.1", PARTNER, &partner_xfcc);
    let token = access_token(&answer);
    assert_eq!(answer.body["token_type"], "Bearer");
    assert_eq!(claims(&token)["cnf"], json!({ "x5t#S256": expected }));

    // self_signed_tls_client_auth: the registered thumbprint.
    let device_xfcc = xfcc(device_der, "spiffe://example.org/device", "CN=device");
    let answer = certificate_token(&service, "127.0.0.1", SELF_SIGNED, &device_xfcc);
    assert_eq!(
        claims(&access_token(&answer))["cnf"]["x5t#S256"],
        URL_SAFE_NO_PAD.encode(Sha256::digest(device_der))
    );

    // A certificate that does not show the registered identity.
    let wrong = xfcc(partner_der, "spiffe://example.org/other", "CN=partner");
    let answer = certificate_token(&service, "127.0.0.1", PARTNER, &wrong);
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(answer.body["error"], "invalid_client");
    let answer = certificate_token(&service, "127.0.0.1", SELF_SIGNED, &partner_xfcc);
    assert_eq!(answer.body["error"], "invalid_client");

    // The same header from an untrusted peer is ignored: no certificate, no client.
    let answer = certificate_token(&service, "127.0.0.2", PARTNER, &partner_xfcc);
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(answer.body["error"], "invalid_client");

    // Introspection (by a confidential client) returns cnf.
    let introspected = post(
        &service.url("/introspect"),
        &[("token", &token)],
        &[(
            "Authorization",
            &basic_authorization("gateway", service.secret("gateway")),
        )],
    );
    assert_eq!(introspected.body["active"], true, "{}", introspected.body);
    assert_eq!(introspected.body["token_type"], "access_token");
    assert_eq!(introspected.body["cnf"], json!({ "x5t#S256": expected }));

    // Discovery.
    let metadata: Value = http_agent()
        .get(&service.url("/.well-known/oauth-authorization-server"))
        .call()
        .expect("metadata")
        .body_mut()
        .read_json()
        .expect("JSON");
    assert_eq!(metadata["tls_client_certificate_bound_access_tokens"], true);
    assert_eq!(
        metadata["mtls_endpoint_aliases"],
        json!({
            "token_endpoint": format!("{MTLS_BASE}/token"),
            "revocation_endpoint": format!("{MTLS_BASE}/revoke"),
            "introspection_endpoint": format!("{MTLS_BASE}/introspect"),
        })
    );
    for method in ["tls_client_auth", "self_signed_tls_client_auth"] {
        assert!(
            metadata["token_endpoint_auth_methods_supported"]
                .as_array()
                .expect("array")
                .contains(&json!(method)),
            "{method}"
        );
    }

    // The clients list names how each client authenticates.
    let list = service.cli(&["clients", "list"]);
    let stdout = String::from_utf8_lossy(&list.stdout);
    assert!(stdout.contains(PARTNER_URI), "{stdout}");
}

#[test]
fn introspection_returns_the_dpop_binding() {
    let mut service = dpop_service();
    let gateway_secret = service.add_client("gateway", "");
    let key = DpopKey::generate();
    let token = access_token(&client_credentials(
        &service,
        &key.proof("POST", &service.token_url()),
    ));
    let introspected = post(
        &service.url("/introspect"),
        &[("token", &token)],
        &[(
            "Authorization",
            &basic_authorization("gateway", &gateway_secret),
        )],
    );
    assert_eq!(introspected.body["active"], true, "{}", introspected.body);
    assert_eq!(introspected.body["cnf"], json!({ "jkt": key.jkt }));
}

/// The sample DPoP client (`tollgate-dpop-app`) runs the code flow with `dpop_jkt`,
/// answers the nonce challenge and refreshes with its key.
#[test]
fn the_sample_dpop_app_gets_bound_tokens() {
    let service = TokenService::builder()
        .public_client("mobile-app", "read:data", &["http://127.0.0.1/callback"])
        .user(ALICE, PASSWORD, "read:data")
        .serve_arg("--dpop-nonce", "true")
        .start();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate-dpop-app"))
        .args(["--issuer", &service.base_url()])
        .args(["--username", ALICE, "--password", PASSWORD])
        .output()
        .expect("running tollgate-dpop-app");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("asked for a nonce"), "{stdout}");
    assert!(
        stdout.contains("4. refreshed with the same key: token_type \"DPoP\""),
        "{stdout}"
    );
}
