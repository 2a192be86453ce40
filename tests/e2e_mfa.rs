//! End-to-end step-up through real Envoy: a route whose rule needs a multi-factor
//! sign-in (`/transfers`: `amr` contains `mfa`) refuses alice's password-only token and
//! accepts the token she gets by signing in again with `acr_values` and the code of
//! her authenticator app (computed here, RFC 6238).
//!
//! The gateway's RFC 9470 challenge (`insufficient_user_authentication`) is being
//! built separately; until it lands, the rule is a `requires.claims` rule and the
//! refusal is its `403`. The token side (acr/amr/auth_time) is what it will check.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use sha1::{Digest as _, Sha1};
use support::oauth::{authorize_url, code_request, exchange_code, Browser, Pkce};
use support::stack::Stack;

const APP: &str = "notes-app";
const REDIRECT: &str = "com.example.notes:/oauth/callback";
const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";
const MFA: &str = "urn:tollgate:acr:mfa";

fn totp(secret: &str, unix: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut buffer, mut bits, mut key) = (0u32, 0, Vec::new());
    for byte in secret.bytes().filter(|byte| *byte != b'=') {
        let value = ALPHABET.iter().position(|c| *c == byte).expect("base32") as u32;
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            key.push((buffer >> bits) as u8);
        }
    }
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(&key);
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<_>>();
    let inner = Sha1::new()
        .chain_update(pad(0x36))
        .chain_update((unix / 30).to_be_bytes())
        .finalize();
    let mac: [u8; 20] = Sha1::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into();
    let offset = usize::from(mac[19] & 0x0f);
    let binary = u32::from_be_bytes([
        mac[offset] & 0x7f,
        mac[offset + 1],
        mac[offset + 2],
        mac[offset + 3],
    ]);
    format!("{:06}", binary % 1_000_000)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn call(stack: &Stack, path: &str, token: &str) -> (u16, String) {
    let mut response = support::http_agent()
        .post(&stack.envoy.url(path))
        .header("Authorization", &format!("Bearer {token}"))
        .send("{}")
        .expect("API call");
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let _ = response.body_mut().read_to_string();
    (response.status().as_u16(), challenge)
}

fn redeem(stack: &Stack, code: &str, pkce: &Pkce) -> String {
    let (status, body) = exchange_code(
        &stack.envoy.url("/token"),
        APP,
        code,
        REDIRECT,
        Some(&pkce.verifier),
    );
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().expect("token").to_owned()
}

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("JSON")
}

#[test]
fn the_step_up_route_refuses_a_password_token_and_accepts_one_after_the_second_factor() {
    let stack = Stack::builder()
        .token_service(|tokens| {
            tokens
                .public_client(APP, "read:data write:data", &[REDIRECT])
                .user(USER, PASSWORD, "read:data write:data")
        })
        .start();
    let out = stack.tokens.cli(&["users", "add-totp", "--username", USER]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("totp_secret: ").map(str::to_owned))
        .expect("the secret, printed once");

    // 1. Password only: the everyday route works, the step-up route does not.
    let pkce = Pkce::new();
    let url = authorize_url(
        &stack.envoy.url(""),
        &code_request(APP, REDIRECT, "read:data write:data", "st", &pkce),
    );
    let params = Browser::new().log_in(&url, USER, PASSWORD);
    let weak = redeem(&stack, &params["code"], &pkce);
    assert_eq!(claims(&weak)["amr"], serde_json::json!(["pwd"]));
    assert_eq!(call(&stack, "/data", &weak).0, 200);
    let (status, challenge) = call(&stack, "/transfers", &weak);
    assert_eq!(status, 403, "{challenge}");
    assert!(challenge.starts_with("Bearer"), "{challenge}");

    // 2. Sign in again asking for the multi-factor level: password, then the code.
    let pkce = Pkce::new();
    let mut request = code_request(APP, REDIRECT, "read:data write:data", "st2", &pkce);
    request.push(("acr_values", MFA));
    let browser = Browser::new();
    let login = browser.get(&authorize_url(&stack.envoy.url(""), &request));
    let step = browser.submit(
        &login.form(),
        &[
            ("username", USER),
            ("password", PASSWORD),
            ("decision", "approve"),
        ],
        &[],
    );
    assert_eq!(step.status, 200, "{}", step.body);
    assert!(step.body.contains("one-time-code"), "{}", step.body);
    let code = totp(&secret, now());
    let done = browser.submit(
        &step.form(),
        &[("otp", code.as_str()), ("decision", "approve")],
        &[],
    );
    let strong = redeem(&stack, &done.redirect_params()["code"], &pkce);
    let strong_claims = claims(&strong);
    assert_eq!(strong_claims["acr"], MFA);
    assert_eq!(
        strong_claims["amr"],
        serde_json::json!(["mfa", "otp", "pwd"])
    );

    // 3. The step-up route now answers.
    assert_eq!(call(&stack, "/transfers", &strong).0, 200);
}
