//! End-to-end: real Envoy with the Tollgate filter, the real token service and
//! the sample API, over loopback. Each test starts its own stack on free ports.

use jwt_simple::prelude::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use support::envoy::{Envoy, EnvoyConfig, StackPorts};
use support::stack::{claims, raw_token, Stack, AUDIENCE, TEST_ISSUER};

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

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The request headers the sample API received.
    fn upstream_headers(&self) -> Value {
        assert_eq!(
            self.status, 200,
            "expected the upstream to answer: {}",
            self.body
        );
        self.json()["headers"].clone()
    }
}

fn call(method: &str, url: &str, headers: &[(&str, &str)]) -> Reply {
    let agent = support::http_agent();
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let mut resp = agent
        .run(req.body(()).expect("request"))
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.body_mut().read_to_string().unwrap_or_default(),
    }
}

fn get_with(stack: &Stack, path: &str, token: &str) -> Reply {
    call(
        "GET",
        &stack.envoy.url(path),
        &[("authorization", &format!("Bearer {token}"))],
    )
}

fn assert_invalid_token(r: &Reply, token: &str, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.body);
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer realm=\"tollgate-sample\"")
            && challenge.contains("error=\"invalid_token\"")
            && challenge.contains("error_description=\""),
        "{what}: WWW-Authenticate was {challenge:?}"
    );
    assert_eq!(r.json()["error"], "invalid_token", "{what}");
    assert!(
        !r.body.contains(token),
        "{what}: the error echoes the token"
    );
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Flips one character in the middle of the signature.
fn tamper(token: &str) -> String {
    let (head, sig) = token.rsplit_once('.').unwrap();
    let mut sig: Vec<char> = sig.chars().collect();
    let i = sig.len() / 2;
    sig[i] = if sig[i] == 'A' { 'B' } else { 'A' };
    format!("{head}.{}", sig.into_iter().collect::<String>())
}

#[test]
fn client_credentials_token_reaches_data_with_identity_and_without_credential() {
    let stack = Stack::start();
    // The walkthrough: the token comes from POST /token through Envoy.
    let secret = stack.tokens.secret("mobile-app").to_string();
    let resp = call(
        "POST",
        &stack.envoy.url("/token?grant_type=client_credentials"),
        &[],
    );
    assert_eq!(
        resp.status, 400,
        "the token endpoint wants a form body: {}",
        resp.body
    );
    let mut form = support::http_agent()
        .post(stack.envoy.url("/token"))
        .send_form([
            ("grant_type", "client_credentials"),
            ("client_id", "mobile-app"),
            ("client_secret", secret.as_str()),
            ("scope", "read:data"),
        ])
        .expect("POST /token through Envoy");
    assert_eq!(form.status().as_u16(), 200);
    let body: Value = serde_json::from_str(&form.body_mut().read_to_string().unwrap()).unwrap();
    let token = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();

    let r = get_with(&stack, "/data?page=2", &token);
    assert_eq!(r.status, 200, "{}", r.body);
    let stats = stack.envoy.settled_stats();
    assert!(
        support::envoy::counter(&stats, "tollgate.decision.authenticated") >= 1,
        "{stats}"
    );
    let echo = r.json();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/data");
    let h = &echo["headers"];
    assert!(
        h.get("authorization").is_none(),
        "the credential reached the upstream: {h}"
    );
    assert_eq!(h["x-tollgate-subject"], "mobile-app");
    assert_eq!(h["x-tollgate-client-id"], "mobile-app");
    assert_eq!(h["x-tollgate-scopes"], "read:data");
    assert_eq!(h["x-tollgate-issuer"], stack.ports.issuer());
    assert_eq!(h["x-tollgate-provider"], "tollgate");

    // Logs name decisions and a token fingerprint, never the token.
    assert!(stack
        .envoy
        .wait_for_log("allow reason=authenticated", Duration::from_secs(5)));
    let log = stack.envoy.log();
    assert!(!log.contains(&token), "the token was logged");
    assert!(
        !log.contains(token.rsplit('.').next().unwrap()),
        "the signature was logged"
    );
}

#[test]
fn invalid_tokens_get_401_invalid_token() {
    let stack = Stack::builder()
        .plugin_config(|c| {
            c["providers"]["tollgate"]["remote_jwks"]["unknown_kid_refetch_interval"] = json!("0s");
        })
        .start();
    let issuer = stack.ports.issuer();

    // No token at all: a bare challenge, no error code (RFC 6750 §3.1).
    let r = call("GET", &stack.envoy.url("/data"), &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"tollgate-sample\"")
    );
    assert_eq!(r.json()["error"], "unauthorized");

    let k = &stack.keys;
    let real = stack.token("mobile-app", Some("read:data"));
    let jwks = stack.tokens.jwks();
    let real_kid = jwks["keys"][0]["kid"].as_str().unwrap().to_string();
    let ec_point = {
        use base64::Engine;
        let d = |f: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwks["keys"][0][f].as_str().unwrap())
                .unwrap()
        };
        [vec![4u8], d("x"), d("y")].concat()
    };
    let ec_pem = ES256PublicKey::from_bytes(&ec_point)
        .unwrap()
        .to_pem()
        .unwrap();
    let rsa_pem = k.rs256.public_key().to_pem().unwrap();
    let at = |extra: Value| claims(&issuer, extra);
    let test = |extra: Value| claims(TEST_ISSUER, extra);
    let t = now();

    let cases: Vec<(&str, String)> = vec![
        ("malformed", "not.a.jwt-at-all".to_string()),
        ("three garbage segments", "e30.e30.e30".to_string()),
        ("bad signature", tamper(&real)),
        (
            "expired",
            k.es256
                .sign(test(json!({"iat": t - 7200, "exp": t - 3600})))
                .unwrap(),
        ),
        (
            "nbf in the future",
            k.es256.sign(test(json!({"nbf": t + 3600}))).unwrap(),
        ),
        (
            "wrong iss",
            k.es256
                .sign(claims("https://evil.example", json!({})))
                .unwrap(),
        ),
        (
            "wrong aud",
            k.es256.sign(test(json!({"aud": "another-api"}))).unwrap(),
        ),
        ("no exp", k.es256.sign(test(json!({"exp": null}))).unwrap()),
        (
            "alg none",
            raw_token(
                &json!({"alg": "none", "typ": "JWT"}),
                &json!({"iss": issuer, "aud": AUDIENCE, "exp": t + 300, "scope": "read:data"}),
                b"",
            ),
        ),
        (
            "HS256 with the EC public key as secret",
            HS256Key::from_bytes(ec_pem.as_bytes())
                .with_key_id(&real_kid)
                .authenticate(at(json!({})))
                .unwrap(),
        ),
        (
            "HS256 with the RSA public key as secret",
            HS256Key::from_bytes(rsa_pem.as_bytes())
                .with_key_id("test-rs256")
                .authenticate(test(json!({})))
                .unwrap(),
        ),
        (
            "unknown kid",
            ES256KeyPair::generate()
                .with_key_id("no-such-kid")
                .sign(at(json!({})))
                .unwrap(),
        ),
        (
            "another key claiming the real kid",
            ES256KeyPair::generate()
                .with_key_id(&real_kid)
                .sign(at(json!({})))
                .unwrap(),
        ),
    ];
    for (what, token) in &cases {
        assert_invalid_token(&get_with(&stack, "/data", token), token, what);
    }
    // The filter survived every one of them.
    assert_eq!(get_with(&stack, "/data", &real).status, 200);
}

#[test]
fn missing_scope_gets_403_insufficient_scope() {
    let stack = Stack::start();
    let reader = stack.token("reader", None);
    let r = call(
        "POST",
        &stack.envoy.url("/data"),
        &[("authorization", &format!("Bearer {reader}"))],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\"write:data\""), "{challenge}");
    assert_eq!(r.json()["error"], "insufficient_scope");

    // Least privilege both ways: the writer may POST, the reader may GET.
    let writer = stack.token("mobile-app", Some("write:data"));
    let r = call(
        "POST",
        &stack.envoy.url("/data"),
        &[("authorization", &format!("Bearer {writer}"))],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        get_with(&stack, "/data", &writer).status,
        403,
        "write:data alone cannot read"
    );
    assert_eq!(get_with(&stack, "/data", &reader).status, 200);

    // /admin/* needs the `admin` scope.
    assert_eq!(get_with(&stack, "/admin/users", &reader).status, 403);
    let operator = stack.token("operator", Some("admin"));
    assert_eq!(get_with(&stack, "/admin/users", &operator).status, 200);
}

#[test]
fn client_sent_identity_headers_never_reach_the_upstream() {
    let stack = Stack::start();
    let token = stack.token("reader", None);
    let spoof = [
        ("authorization", format!("Bearer {token}")),
        ("x-tollgate-subject", "admin".to_string()),
        ("X-Tollgate-Scopes", "admin write:data".to_string()),
        ("x-tollgate-tenant", "someone-else".to_string()),
        ("x-tollgate-anything", "x".to_string()),
    ];
    let headers: Vec<(&str, &str)> = spoof.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let h = call("GET", &stack.envoy.url("/data"), &headers).upstream_headers();
    assert_eq!(h["x-tollgate-subject"], "reader");
    assert_eq!(h["x-tollgate-scopes"], "read:data");
    assert!(h.get("x-tollgate-tenant").is_none(), "{h}");
    assert!(h.get("x-tollgate-anything").is_none(), "{h}");

    // Anonymous routes strip them too, and forward no identity.
    let h = call("GET", &stack.envoy.url("/public/info"), &headers[1..]).upstream_headers();
    let leaked: Vec<&String> = h
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("x-tollgate-"))
        .collect();
    assert!(
        leaked.is_empty(),
        "identity headers reached an anonymous route: {leaked:?}"
    );
}

#[test]
fn public_unmatched_and_normalised_paths() {
    let stack = Stack::start();
    assert_eq!(
        call("GET", &stack.envoy.url("/public/hello"), &[]).status,
        200
    );
    let r = call("GET", &stack.envoy.url("/elsewhere"), &[]);
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "access_denied");
    // Envoy normalises before Tollgate matches: these all mean /data.
    for path in [
        "/public/../data",
        "//data",
        "/./data",
        "/public/%2e%2e/data",
    ] {
        let r = call("GET", &stack.envoy.url(path), &[]);
        assert_eq!(
            r.status, 401,
            "{path} slipped past the /data rule: {}",
            r.body
        );
    }
}

#[test]
fn key_rotation_is_picked_up_without_restart_and_old_tokens_keep_working() {
    let stack = Stack::builder()
        .plugin_config(|c| {
            c["providers"]["tollgate"]["remote_jwks"]["unknown_kid_refetch_interval"] = json!("1s");
        })
        .start();
    let old = stack.token("reader", None);
    assert_eq!(get_with(&stack, "/data", &old).status, 200);
    let new_kid = stack.tokens.rotate_keys(None);
    std::thread::sleep(Duration::from_millis(1100));
    let new = stack.token("reader", None);
    let header: Value = {
        use base64::Engine;
        let h = new.split('.').next().unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(
        header["kid"],
        new_kid.as_str(),
        "the service signs with the new key"
    );
    let r = get_with(&stack, "/data", &new);
    assert_eq!(r.status, 200, "new key not picked up: {}", r.body);
    assert_eq!(
        get_with(&stack, "/data", &old).status,
        200,
        "old tokens stay valid until they expire"
    );
    assert!(
        stack.envoy.log().contains("loaded 2 signing key(s)"),
        "refetch not logged"
    );
}

#[test]
fn jwks_unreachable_at_start_answers_503_then_recovers() {
    let mut stack = Stack::builder().token_service_down().start();
    // Any token for the remote issuer: keys are not there to judge it.
    let token = ES256KeyPair::generate()
        .with_key_id("k")
        .sign(claims(&stack.ports.issuer(), json!({})))
        .unwrap();
    let r = get_with(&stack, "/data", &token);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    assert!(r.header("www-authenticate").is_none());
    // Tokens of issuers whose keys are local are unaffected.
    let local = stack
        .keys
        .es256
        .sign(claims(TEST_ISSUER, json!({})))
        .unwrap();
    assert_eq!(get_with(&stack, "/data", &local).status, 200);
    assert!(stack.envoy.wait_for_log(
        "jwks fetch for provider `tollgate` failed, and no copy has loaded yet",
        Duration::from_secs(5)
    ));

    stack.tokens.start();
    let good = stack.token("reader", None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = 0;
    while Instant::now() < deadline {
        last = get_with(&stack, "/data", &good).status;
        if last == 200 {
            break;
        }
        assert_eq!(last, 503, "only 503 is acceptable while keys load");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        last, 200,
        "keys never loaded after the token service came up"
    );
}

#[test]
fn bad_plugin_configuration_is_refused_naming_the_field() {
    let ports = StackPorts::free();
    let sample = EnvoyConfig::sample(ports);
    let good = sample.plugin_config();
    let cases: Vec<(Value, &str)> = vec![
        (
            {
                let mut c = good.clone();
                c["providers"]["tollgate"]["audience"] = json!("x");
                c
            },
            "at `providers.tollgate.audience`: unknown field `audience`",
        ),
        (
            {
                let mut c = good.clone();
                c["providers"]["tollgate"]["algorithms"] = json!(["ES256", "none"]);
                c
            },
            "at `providers.tollgate.algorithms[1]`: the `none` algorithm is never accepted",
        ),
        (
            {
                let mut c = good.clone();
                c["providers"]["tollgate"]
                    .as_object_mut()
                    .unwrap()
                    .remove("remote_jwks");
                c
            },
            "at `providers.tollgate`: missing keys",
        ),
        (
            {
                let mut c = good.clone();
                c["rules"][0]["requires"]["scopes"] = json!({"all": ["x"]});
                c
            },
            "at `rules[0].requires.scopes.all`",
        ),
    ];
    for (config, expected) in cases {
        let mut cfg = sample.clone();
        cfg.set_plugin_config(&config);
        match Envoy::try_start(&cfg, 1) {
            Ok(envoy) => panic!("Envoy accepted a bad config ({expected}):\n{}", envoy.log()),
            Err(log) => assert!(
                log.contains(&format!("invalid tollgate configuration {expected}")),
                "log does not name the field ({expected}):\n{log}"
            ),
        }
    }
}

#[test]
fn host_and_pure_rust_backends_agree_on_every_token() {
    let stack = Stack::start();
    // A second Envoy in front of the same services, verifying only in pure Rust.
    let ports = StackPorts {
        listener: support::process::free_port(),
        tls_listener: support::process::free_port(),
        admin: support::process::free_port(),
        ..stack.ports
    };
    let mut config = EnvoyConfig::sample(ports);
    let mut plugin = config.plugin_config();
    plugin["providers"]["tollgate"]["issuer"] = json!(stack.ports.issuer());
    plugin["providers"]["test"] = json!({
        "issuer": TEST_ISSUER, "audiences": [AUDIENCE],
        "local_jwks": {"inline_string": stack.keys.jwks().to_string()},
    });
    plugin["signature_backend"] = json!("pure_rust");
    config.set_plugin_config(&plugin);
    let pure = Envoy::start(&config);
    assert!(stack.envoy.log().contains("verified by Envoy's BoringSSL"));
    assert!(pure.wait_for_log("verified in pure Rust", Duration::from_secs(5)));
    // The new Envoy answers 503 until its first fetch of the token service's keys.
    let reader = stack.token("reader", None);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while call(
        "GET",
        &pure.url("/data"),
        &[("authorization", &format!("Bearer {reader}"))],
    )
    .status
        == 503
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }

    let k = &stack.keys;
    let c = || claims(TEST_ISSUER, json!({}));
    let mut corpus: Vec<(String, u16)> = Vec::new();
    for token in [
        stack.token("reader", None),
        k.es256.sign(c()).unwrap(),
        k.rs256.sign(c()).unwrap(),
        k.ps256.sign(c()).unwrap(),
        k.eddsa.sign(c()).unwrap(),
    ] {
        corpus.push((tamper(&token), 401));
        let (head, _) = token.rsplit_once('.').unwrap();
        corpus.push((format!("{head}."), 401));
        corpus.push((token, 200));
    }
    // A signature of the right shape but from another key of the same kind.
    corpus.push((
        ES256KeyPair::generate()
            .with_key_id("test-es256")
            .sign(c())
            .unwrap(),
        401,
    ));
    corpus.push((
        RS256KeyPair::generate(2048)
            .unwrap()
            .with_key_id("test-rs256")
            .sign(c())
            .unwrap(),
        401,
    ));
    for (token, expected) in &corpus {
        let host = get_with(&stack, "/data", token).status;
        let pure = call(
            "GET",
            &pure.url("/data"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .status;
        assert_eq!(
            (host, pure),
            (*expected, *expected),
            "backends disagree or are wrong on {token:.60}…"
        );
    }
}

#[test]
fn hostile_requests_get_answers_and_never_kill_the_vm() {
    let stack = Stack::start();
    let raw = |request: &[u8]| -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", stack.ports.listener)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    let non_utf8 = raw(b"GET /data HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xfd\r\nX-Tollgate-Subject: \xc3\x28\r\nConnection: close\r\n\r\n");
    assert!(non_utf8.starts_with("HTTP/1.1 401"), "{non_utf8}");
    let long = "a".repeat(6_000); // 18 KB: over the filter's 16 KiB limit, under Envoy's 60 KiB
    let r = get_with(&stack, "/data", &format!("{long}.{long}.{long}"));
    assert_eq!(r.status, 401);
    let two_headers = raw(format!(
        "GET /data HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer junk\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        stack.token("reader", None)
    ).as_bytes());
    assert!(two_headers.starts_with("HTTP/1.1 "), "{two_headers}");
    for junk in [
        "Bearer",
        "Bearer ....",
        "Bearer e30.e30.",
        "Basic Zm9vOmJhcg==",
        "Bearer a.b.c",
    ] {
        let r = call("GET", &stack.envoy.url("/data"), &[("authorization", junk)]);
        assert_eq!(r.status, 401, "{junk:?}");
    }
    // Still alive, still deciding.
    let good = stack.token("reader", None);
    assert_eq!(get_with(&stack, "/data", &good).status, 200);
    assert!(
        !stack.envoy.log().contains("panicked"),
        "{}",
        stack.envoy.log()
    );
}

#[test]
fn query_and_cookie_tokens_are_read_and_stripped() {
    let stack = Stack::builder()
        .plugin_config(|c| {
            let p = &mut c["providers"]["tollgate"];
            p["from_params"] = json!(["access_token"]);
            p["from_cookies"] = json!(["tg_at"]);
        })
        .start();
    let token = stack.token("reader", None);
    let r = call(
        "GET",
        &stack
            .envoy
            .url(&format!("/data?x=1&access_token={token}&y=2")),
        &[],
    );
    let echo = r.json();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(echo["query"], "x=1&y=2");
    assert!(!r.body.contains(&token));
    let r = call(
        "GET",
        &stack.envoy.url("/data"),
        &[("cookie", &format!("theme=dark; tg_at={token}"))],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["headers"]["cookie"], "theme=dark");
}

#[test]
fn failed_refreshes_keep_the_last_good_keys() {
    let mut stack = Stack::builder()
        .plugin_config(|c| {
            c["providers"]["tollgate"]["remote_jwks"]["cache_duration"] = json!("1s");
        })
        .start();
    let token = stack.token("reader", None);
    assert_eq!(get_with(&stack, "/data", &token).status, 200);
    stack.tokens.stop();
    assert!(
        stack.envoy.wait_for_log(
            "jwks fetch for provider `tollgate` failed, keeping the last good copy",
            Duration::from_secs(10)
        ),
        "no refresh was attempted:\n{}",
        stack.envoy.log()
    );
    let stats = stack.envoy.settled_stats();
    let failed = support::envoy::counter(&stats, "tollgate.jwks.fetch_failed");
    assert!(failed >= 1, "fetch failures are not counted:\n{stats}");
    assert!(support::envoy::counter(&stats, "tollgate.jwks.fetch_loaded") >= 1);
    for _ in 0..5 {
        assert_eq!(
            get_with(&stack, "/data", &token).status,
            200,
            "lost the keys after a failed refresh"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The JWKS fetches Envoy made so far, whatever their outcome.
fn jwks_fetches(stack: &Stack) -> u64 {
    let stats = stack.envoy.settled_stats();
    ["loaded", "unchanged", "failed"]
        .iter()
        .map(|o| support::envoy::counter(&stats, &format!("tollgate.jwks.fetch_{o}")))
        .sum()
}

/// The `iss` of a token the stack's token service issued.
fn issuer_of(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["iss"].as_str().unwrap().to_string()
}

#[test]
fn a_key_rotation_right_after_a_fetch_fails_no_request() {
    // The sample's own settings (unknown_kid_refetch_interval 5s), without the
    // lock-out, which a failure here would trip.
    let stack = Stack::builder()
        .plugin_config(|c| {
            c["rate_limits"]
                .as_object_mut()
                .unwrap()
                .remove("brute_force");
        })
        .start();
    let old = stack.token("reader", None);
    assert_eq!(get_with(&stack, "/data", &old).status, 200);
    let fetches = jwks_fetches(&stack);
    // The issuer rotates at once, and its first new tokens arrive together,
    // on both workers.
    stack.tokens.rotate_keys(None);
    let new = stack.token("reader", None);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..24)
            .map(|_| s.spawn(|| get_with(&stack, "/data", &new).status))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every request with the new key is served: {statuses:?}\n{}",
        stack.envoy.log()
    );
    let more = jwks_fetches(&stack) - fetches;
    assert!(
        (1..=2).contains(&more),
        "{more} JWKS fetches for one rotation: requests wait behind one fetch"
    );
    assert_eq!(get_with(&stack, "/data", &old).status, 200);
}

#[test]
fn a_flood_of_random_kids_costs_a_bounded_number_of_fetches_and_a_rotation_inside_it_fails_no_request(
) {
    // Without the lock-out, which would stop the flood first.
    let stack = Stack::builder()
        .plugin_config(|c| {
            c["rate_limits"]
                .as_object_mut()
                .unwrap()
                .remove("brute_force");
        })
        .start();
    let good = stack.token("reader", None);
    assert_eq!(get_with(&stack, "/data", &good).status, 200);
    let issuer = issuer_of(&good);
    let fetches = jwks_fetches(&stack);
    let started = Instant::now();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (flood, new_key_status) = std::thread::scope(|s| {
        // Eight senders of random kids, each its own new kid every request.
        let senders: Vec<_> = (0..8)
            .map(|t| {
                let (stack, issuer, stop) = (&stack, &issuer, &stop);
                s.spawn(move || {
                    let mut statuses = Vec::new();
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) || i < 4 {
                        let kid = format!("random-{t}-{i}");
                        let key = ES256KeyPair::generate().with_key_id(&kid);
                        let token = key.sign(claims(issuer, json!({}))).unwrap();
                        let r = get_with(stack, "/data", &token);
                        assert!(
                            r.body.contains("unknown_key") || r.body.contains("invalid_token"),
                            "{}",
                            r.body
                        );
                        statuses.push(r.status);
                        i += 1;
                    }
                    statuses
                })
            })
            .collect();
        // The flood has spent the on-demand budget; the issuer rotates now.
        std::thread::sleep(Duration::from_secs(3));
        stack.tokens.rotate_keys(None);
        let new = stack.token("reader", None);
        let new_key_status = get_with(&stack, "/data", &new).status;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let flood: Vec<u16> = senders
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        (flood, new_key_status)
    });
    assert_eq!(
        new_key_status, 200,
        "the first token of a key published during the flood is served"
    );
    assert!(
        flood.len() >= 32 && flood.iter().all(|s| *s == 401),
        "{flood:?}"
    );
    let elapsed = started.elapsed().as_secs();
    let more = jwks_fetches(&stack) - fetches;
    // Process-wide: a burst of 3, then one per interval / 3 (5 s / 3).
    let bound = 3 + elapsed * 3 / 5 + 1;
    assert!(
        more <= bound,
        "{more} JWKS fetches for {} random kids in {elapsed} s (bound {bound})",
        flood.len()
    );
    assert_eq!(get_with(&stack, "/data", &good).status, 200);
}
