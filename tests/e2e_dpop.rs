//! DPoP (RFC 9449) at the gateway, through real Envoy with two workers: tokens
//! bound to a key the client holds (`cnf.jkt`), a fresh proof per request.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::dpop::{now, DpopKey};
use support::stack::{claims, Stack, TEST_ISSUER};

/// A proof for this request and token: the harness's proof plus `ath` and
/// any extra or changed claims.
fn make_proof(key: &DpopKey, method: &str, htu: &str, token: &str, extra: Value) -> String {
    let mut c = DpopKey::claims(method, htu);
    c["ath"] = json!(URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes())));
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    key.sign(&key.header(), &c)
}

struct Reply {
    status: u16,
    www: Option<String>,
    nonce: Option<String>,
    body: Value,
}

fn call(stack: &Stack, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let agent = support::http_agent();
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(stack.envoy.url(path));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let mut resp = agent.run(req.body(()).unwrap()).unwrap();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (www, nonce) = (header("www-authenticate"), header("dpop-nonce"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    Reply {
        status,
        www,
        nonce,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

fn bound_token(stack: &Stack, key: &DpopKey) -> String {
    stack
        .keys
        .es256
        .sign(claims(TEST_ISSUER, json!({"cnf": {"jkt": key.jkt}})))
        .unwrap()
}

fn start(nonce: bool) -> Stack {
    Stack::builder()
        .plugin_config(move |c| {
            c["rate_limits"].as_object_mut().unwrap().remove("brute_force");
            if nonce {
                c["providers"]["test"]["dpop"] = json!({"nonce": {
                    "secret": {"inline_string": "a-nonce-secret-of-32-bytes-long!"}, "lifetime": "300s"}});
            }
        })
        .start()
}

#[test]
fn bound_tokens_need_a_fresh_proof_made_with_their_key() {
    let stack = start(false);
    let key = DpopKey::generate();
    let token = bound_token(&stack, &key);
    let htu = stack.envoy.url("/data");
    let dpop_auth = format!("DPoP {token}");

    // A valid proof: 200; the upstream sees the key thumbprint, never the proof.
    let proof = make_proof(&key, "GET", &htu, &token, json!({}));
    let r = call(
        &stack,
        "GET",
        "/data?x=1",
        &[("authorization", &dpop_auth), ("dpop", &proof)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = &r.body["headers"];
    assert_eq!(seen["x-tollgate-dpop-jkt"], key.jkt.as_str());
    assert!(seen.get("dpop").is_none() && seen.get("authorization").is_none());

    // The same proof again (whichever worker takes it): refused.
    let r = call(
        &stack,
        "GET",
        "/data",
        &[("authorization", &dpop_auth), ("dpop", &proof)],
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"], "invalid_dpop_proof");
    assert!(r
        .www
        .as_deref()
        .unwrap()
        .starts_with("DPoP algs=\"ES256\", error=\"invalid_dpop_proof\""));
    // Cached tokens are checked as strictly: a fresh proof passes again.
    let proof = make_proof(&key, "GET", &htu, &token, json!({}));
    assert_eq!(
        call(
            &stack,
            "GET",
            "/data",
            &[("authorization", &dpop_auth), ("dpop", &proof)]
        )
        .status,
        200
    );

    let other = DpopKey::generate();
    let refused = [
        (
            "another method",
            make_proof(&key, "POST", &htu, &token, json!({})),
        ),
        (
            "another URL",
            make_proof(&key, "GET", &stack.envoy.url("/admin/x"), &token, json!({})),
        ),
        (
            "an old iat",
            make_proof(&key, "GET", &htu, &token, json!({"iat": now() - 600})),
        ),
        (
            "a wrong ath",
            make_proof(&key, "GET", &htu, "another-token", json!({})),
        ),
        (
            "another key",
            make_proof(&other, "GET", &htu, &token, json!({})),
        ),
        ("a private key in jwk", {
            let mut header = key.header();
            header["jwk"]["d"] = json!(key.private_d());
            let mut c = DpopKey::claims("GET", &htu);
            c["ath"] = json!(URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes())));
            key.sign(&header, &c)
        }),
        (
            "alg none",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD
                    .encode(json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk}).to_string()),
                URL_SAFE_NO_PAD.encode(
                    json!({"jti": "j-none", "htm": "GET", "htu": htu, "iat": now()}).to_string()
                )
            ),
        ),
        (
            "HS256",
            key.sign(
                &json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": key.jwk}),
                &DpopKey::claims("GET", &htu),
            ),
        ),
    ];
    for (what, proof) in refused {
        let r = call(
            &stack,
            "GET",
            "/data",
            &[("authorization", &dpop_auth), ("dpop", &proof)],
        );
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert!(
            r.www
                .as_deref()
                .is_some_and(|w| w.starts_with("DPoP algs=\"ES256\"")),
            "{what}: {:?}",
            r.www
        );
    }

    // The bound token as a plain Bearer token: refused.
    let r = call(
        &stack,
        "GET",
        "/data",
        &[("authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"], "invalid_token");
    assert!(r.www.unwrap().contains("DPoP-bound"));
    // An unbound token keeps working as Bearer, and not as DPoP.
    let plain = stack
        .keys
        .es256
        .sign(claims(TEST_ISSUER, json!({})))
        .unwrap();
    assert_eq!(
        call(
            &stack,
            "GET",
            "/data",
            &[("authorization", &format!("Bearer {plain}"))]
        )
        .status,
        200
    );
    let proof = make_proof(&key, "GET", &htu, &plain, json!({}));
    assert_eq!(
        call(
            &stack,
            "GET",
            "/data",
            &[
                ("authorization", &format!("DPoP {plain}")),
                ("dpop", &proof)
            ]
        )
        .status,
        401
    );
    // Counters reach Envoy once a second.
    let stats = stack.envoy.settled_stats();
    assert!(support::envoy::counter(&stats, "tollgate.decision.dpop_proof_replayed") >= 1);
}

#[test]
fn a_server_nonce_is_asked_for_then_accepted() {
    let stack = start(true);
    let key = DpopKey::generate();
    let token = bound_token(&stack, &key);
    let htu = stack.envoy.url("/data");
    let auth = format!("DPoP {token}");
    let proof = make_proof(&key, "GET", &htu, &token, json!({}));
    let r = call(
        &stack,
        "GET",
        "/data",
        &[("authorization", &auth), ("dpop", &proof)],
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"], "use_dpop_nonce");
    assert!(r.www.unwrap().contains("error=\"use_dpop_nonce\""));
    let nonce = r.nonce.expect("a DPoP-Nonce header");
    let proof = make_proof(&key, "GET", &htu, &token, json!({"nonce": nonce}));
    let r = call(
        &stack,
        "GET",
        "/data",
        &[("authorization", &auth), ("dpop", &proof)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The mobile app end to end: `tollgate-dpop-app` signs in through Envoy with
/// code + PKCE and `dpop_jkt`, gets a DPoP-bound token from the token service,
/// and calls the API through the gateway with a fresh proof: 200.
#[test]
fn the_sample_app_signs_in_and_calls_the_api_with_dpop_through_envoy() {
    let stack = Stack::builder()
        .token_service(|t| {
            t.public_client("dpop-app", "read:data", &["http://127.0.0.1/callback"])
                .user("alice", "correct horse battery", "read:data")
        })
        .start();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate-dpop-app"))
        .args(["--issuer", &stack.ports.issuer(), "--client-id", "dpop-app"])
        .args(["--username", "alice", "--password", "correct horse battery"])
        .args(["--api", &stack.envoy.url("/data")])
        .output()
        .expect("running tollgate-dpop-app");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("with the DPoP token and a proof: 200"),
        "{stdout}"
    );
}
