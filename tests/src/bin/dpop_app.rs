//! Plays the sample stack's mobile app with DPoP (RFC 9449), end to end:
//!
//! 1. makes a P-256 key pair (a real app keeps it in its secure enclave);
//! 2. reads the issuer's metadata, signs in through `/authorize` with PKCE and
//!    `dpop_jkt` (the code is bound to the key), filling in the form itself;
//! 3. redeems the code with a DPoP proof: a `DPoP` token whose `cnf.jkt` is the key's
//!    thumbprint, and a refresh token bound to the key;
//! 4. refreshes with a fresh proof (answering a `use_dpop_nonce` challenge if the
//!    service asks for nonces);
//! 5. with `--api URL`, calls the API: `Authorization: DPoP <token>` and a proof with
//!    `htm`, `htu` and `ath` (the gateway must be configured to verify DPoP).
//!
//! Tokens are never printed: only claims and fingerprints.
//!
//! ```sh
//! cargo run -p tollgate-e2e --bin tollgate-dpop-app -- --issuer http://127.0.0.1:8080 \
//!   --username alice --password "$DEMO_PASSWORD" [--api http://127.0.0.1:8080/api/data]
//! ```

use std::collections::HashMap;
use std::process::ExitCode;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use support::dpop::DpopKey;
use support::http_agent;
use support::oauth::{authorize_url, code_request, Browser, Pkce};

const USAGE: &str = "usage: tollgate-dpop-app --issuer URL --username NAME --password PASSWORD \
    [--client-id mobile-app] [--redirect-uri http://127.0.0.1/callback] [--scope read:data] \
    [--api URL]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("dpop-app: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let arg = |name: &str, default: &str| {
        args.get(name)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    };
    let required = |name: &str| {
        args.get(name)
            .cloned()
            .ok_or_else(|| format!("--{name} is required\n{USAGE}"))
    };
    let issuer = required("issuer")?;
    let (username, password) = (required("username")?, required("password")?);
    let client_id = arg("client-id", "mobile-app");
    let redirect_uri = arg("redirect-uri", "http://127.0.0.1/callback");
    let scope = arg("scope", "read:data");

    let metadata: Value = get_json(&format!(
        "{}/.well-known/oauth-authorization-server",
        issuer.trim_end_matches('/')
    ))?;
    let token_endpoint = text(&metadata, "token_endpoint")?;
    let authorization_endpoint = text(&metadata, "authorization_endpoint")?;
    let algs = &metadata["dpop_signing_alg_values_supported"];
    if !algs
        .as_array()
        .is_some_and(|algs| algs.iter().any(|alg| alg == "ES256"))
    {
        return Err(format!(
            "the issuer does not accept ES256 DPoP proofs ({algs})"
        ));
    }

    let key = DpopKey::generate();
    println!("1. DPoP key made; thumbprint (jkt) {}", key.jkt);

    let pkce = Pkce::new();
    let mut params = code_request(&client_id, &redirect_uri, &scope, "dpop-demo", &pkce);
    params.push(("dpop_jkt", &key.jkt));
    let base = authorization_endpoint
        .strip_suffix("/authorize")
        .ok_or("authorization_endpoint does not end in /authorize")?;
    let redirect = Browser::new().log_in(&authorize_url(base, &params), &username, &password);
    if redirect.get("state").map(String::as_str) != Some("dpop-demo") {
        return Err(format!("no code came back: {redirect:?}"));
    }
    let code = redirect.get("code").ok_or("no code in the redirect")?;
    println!("2. signed in as {username}; code bound to the key (dpop_jkt)");

    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", client_id.as_str()),
        ("code", code.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("code_verifier", pkce.verifier.as_str()),
    ];
    let tokens = token_request(&key, &token_endpoint, &form)?;
    let access_token = text(&tokens, "access_token")?;
    report("3. code redeemed", &tokens, &access_token, &key)?;

    let refresh_token = text(&tokens, "refresh_token")?;
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", client_id.as_str()),
        ("refresh_token", refresh_token.as_str()),
    ];
    let tokens = token_request(&key, &token_endpoint, &form)?;
    let access_token = text(&tokens, "access_token")?;
    report(
        "4. refreshed with the same key",
        &tokens,
        &access_token,
        &key,
    )?;

    if let Some(api) = args.get("api") {
        let htu = api.split(['?', '#']).next().unwrap_or(api);
        let mut claims = DpopKey::claims("GET", htu);
        claims["ath"] = URL_SAFE_NO_PAD
            .encode(Sha256::digest(access_token.as_bytes()))
            .into();
        let proof = key.sign(&key.header(), &claims);
        let mut response = http_agent()
            .get(api)
            .header("Authorization", &format!("DPoP {access_token}"))
            .header("DPoP", &proof)
            .call()
            .map_err(|err| format!("calling {api}: {err}"))?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        println!("5. GET {api} with the DPoP token and a proof: {status}");
        println!("   {}", body.trim());
        if status != 200 {
            return Err(format!("the API answered {status}"));
        }
    }
    Ok(())
}

/// A token request with a fresh proof; answers one `use_dpop_nonce` challenge.
fn token_request(
    key: &DpopKey,
    token_endpoint: &str,
    form: &[(&str, &str)],
) -> Result<Value, String> {
    let mut nonce: Option<String> = None;
    for _ in 0..2 {
        let proof = match &nonce {
            Some(nonce) => key.proof_with_nonce("POST", token_endpoint, nonce),
            None => key.proof("POST", token_endpoint),
        };
        let mut response = http_agent()
            .post(token_endpoint)
            .header("DPoP", &proof)
            .send_form(form.iter().copied())
            .map_err(|err| format!("POST {token_endpoint}: {err}"))?;
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get("dpop-nonce")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body: Value = response
            .body_mut()
            .read_json()
            .map_err(|err| format!("token response: {err}"))?;
        match (status, challenge) {
            (200, _) => return Ok(body),
            (400, Some(challenge)) if body["error"] == "use_dpop_nonce" => {
                println!("   the service asked for a nonce; retrying with it");
                nonce = Some(challenge);
            }
            _ => return Err(format!("token request refused ({status}): {body}")),
        }
    }
    Err("the service kept asking for a nonce".to_owned())
}

fn report(step: &str, tokens: &Value, access_token: &str, key: &DpopKey) -> Result<(), String> {
    let payload = access_token
        .split('.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
        .ok_or("the access token is not a JWT")?;
    let jkt = &payload["cnf"]["jkt"];
    println!(
        "{step}: token_type {}, cnf.jkt {jkt}, scope {}, token fingerprint {}",
        tokens["token_type"],
        tokens["scope"],
        &hex(&Sha256::digest(access_token.as_bytes()))[..16]
    );
    if tokens["token_type"] != "DPoP" || jkt.as_str() != Some(key.jkt.as_str()) {
        return Err("the token is not bound to this key".to_owned());
    }
    Ok(())
}

fn get_json(url: &str) -> Result<Value, String> {
    http_agent()
        .get(url)
        .call()
        .map_err(|err| format!("GET {url}: {err}"))?
        .body_mut()
        .read_json()
        .map_err(|err| format!("GET {url}: {err}"))
}

fn text(value: &Value, field: &str) -> Result<String, String> {
    value[field]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no {field} in {value}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn parse_args() -> Result<HashMap<String, String>, String> {
    let mut args = HashMap::new();
    let mut rest = std::env::args().skip(1);
    while let Some(flag) = rest.next() {
        let name = flag
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected {flag}\n{USAGE}"))?;
        let value = rest
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        args.insert(name.to_owned(), value);
    }
    Ok(args)
}
