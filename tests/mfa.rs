//! Multi-factor sign-in at the token service, over real HTTP: an authenticator app
//! enrolled on the account pages with the code computed here (RFC 6238), step-up with
//! `acr_values`, `max_age` and `prompt=login`, the `acr`/`amr`/`auth_time` claims and
//! their survival on refresh, replayed codes, removal taking effect at once, throttled
//! second factors, the factor-reset commands, and the CLI's refusal to create a
//! database by accident. (Passkeys run in a real browser: tests/browser/.)

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use sha1::{Digest as _, Sha1};
use support::oauth::{
    authorize_url, code_request, exchange_code, post_form, query_params, refresh, LoginForm, Pkce,
};
use support::token_service::{TokenService, TokenServiceBuilder};

const APP: &str = "mobile";
const APP_REDIRECT: &str = "com.example.mobile:/oauth/callback";
const ALICE: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";
const PWD: &str = "urn:tollgate:acr:pwd";
const MFA: &str = "urn:tollgate:acr:mfa";

fn builder() -> TokenServiceBuilder {
    TokenService::builder()
        .public_client(APP, "read:data", &[APP_REDIRECT])
        .user(ALICE, PASSWORD, "read:data")
}

/// A browser with a cookie jar of one: the service's session cookie.
struct Browser {
    agent: ureq::Agent,
    cookie: std::cell::RefCell<Option<String>>,
}

struct Page {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: String,
}

impl Page {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    fn form(&self) -> LoginForm {
        LoginForm::parse(&self.body)
    }

    fn redirect(&self) -> HashMap<String, String> {
        assert_eq!(self.status, 303, "expected a redirect: {}", self.body);
        query_params(&self.header("location"))
    }
}

impl Browser {
    fn new() -> Self {
        Self {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(0)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .into(),
            cookie: Default::default(),
        }
    }

    fn keep(&self, response: ureq::http::Response<ureq::Body>) -> Page {
        let mut response = response;
        for value in response.headers().get_all("set-cookie") {
            let pair = value
                .to_str()
                .expect("ascii")
                .split(';')
                .next()
                .unwrap_or("");
            let (name, value) = pair.split_once('=').expect("cookie pair");
            assert_eq!(name, "tollgate_session");
            *self.cookie.borrow_mut() = (!value.is_empty()).then(|| pair.to_owned());
        }
        Page {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    fn get(&self, url: &str) -> Page {
        let mut request = self.agent.get(url);
        if let Some(cookie) = self.cookie.borrow().clone() {
            request = request.header("Cookie", cookie);
        }
        self.keep(request.call().expect("GET"))
    }

    fn submit(&self, form: &LoginForm, fields: &[(&str, &str)]) -> Page {
        let mut request = self.agent.post(&form.action);
        if let Some(cookie) = self.cookie.borrow().clone() {
            request = request.header("Cookie", cookie);
        }
        let pairs: Vec<(&str, &str)> = form
            .hidden
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .chain(fields.iter().copied())
            .collect();
        self.keep(request.send_form(pairs).expect("POST"))
    }
}

/// RFC 6238 (HMAC-SHA1, 6 digits, 30-second steps) for `secret` (base32) at `unix`.
fn totp(secret: &str, unix: u64) -> String {
    let key = base32_decode(secret);
    let counter = (unix / 30).to_be_bytes();
    let mac = hmac_sha1(&key, &counter);
    let offset = usize::from(mac[19] & 0x0f);
    let binary = u32::from_be_bytes([
        mac[offset] & 0x7f,
        mac[offset + 1],
        mac[offset + 2],
        mac[offset + 3],
    ]);
    format!("{:06}", binary % 1_000_000)
}

fn hmac_sha1(key: &[u8], message: &[u8]) -> [u8; 20] {
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<_>>();
    let inner = Sha1::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha1::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut buffer, mut bits, mut out) = (0u32, 0, Vec::new());
    for byte in text.bytes().filter(|byte| *byte != b'=') {
        let value = ALPHABET
            .iter()
            .position(|c| *c == byte.to_ascii_uppercase())
            .expect("base32") as u32;
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("JWT payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

fn amr(claims: &Value) -> Vec<String> {
    claims["amr"]
        .as_array()
        .unwrap_or_else(|| panic!("no amr in {claims}"))
        .iter()
        .map(|value| value.as_str().expect("string").to_owned())
        .collect()
}

/// The authorization URL for the app, with extra parameters; and its PKCE.
fn authorize(service: &TokenService, extra: &[(&str, &str)]) -> (String, Pkce) {
    let pkce = Pkce::new();
    let mut params = code_request(APP, APP_REDIRECT, "read:data", "st", &pkce);
    params.extend_from_slice(extra);
    (authorize_url(&service.base_url(), &params), pkce)
}

/// Exchanges the code in `redirect` for tokens.
fn tokens(service: &TokenService, redirect: &HashMap<String, String>, pkce: &Pkce) -> Value {
    let code = redirect
        .get("code")
        .unwrap_or_else(|| panic!("no code: {redirect:?}"));
    let (status, body) = exchange_code(
        &service.token_url(),
        APP,
        code,
        APP_REDIRECT,
        Some(&pkce.verifier),
    );
    assert_eq!(status, 200, "{body}");
    body
}

fn password_step(browser: &Browser, page: &Page) -> Page {
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("name=\"password\""), "{}", page.body);
    browser.submit(
        &page.form(),
        &[
            ("username", ALICE),
            ("password", PASSWORD),
            ("decision", "approve"),
        ],
    )
}

/// Signs in on the account pages (password only: no factor yet) and sets up the
/// authenticator app there, with the code computed here. Returns its secret.
fn enrol_totp(service: &TokenService, browser: &Browser) -> String {
    let sign_in = browser.get(&service.url("/account"));
    assert_eq!(sign_in.status, 200);
    assert!(
        sign_in.body.contains("Sign in to your account"),
        "{}",
        sign_in.body
    );
    let signed_in = browser.submit(
        &sign_in.form(),
        &[("username", ALICE), ("password", PASSWORD)],
    );
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    let account = browser.get(&service.url("/account"));
    assert!(
        account.body.contains("Signed in as <strong>alice</strong>"),
        "{}",
        account.body
    );
    assert!(account.body.contains("Set up an authenticator app"));

    let enrolment = browser.get(&service.url("/account/totp/new"));
    assert_eq!(enrolment.status, 200, "{}", enrolment.body);
    assert!(
        enrolment.body.contains("<svg"),
        "QR code inline: {}",
        enrolment.body
    );
    let secret = enrolment
        .body
        .split("id=\"totp-key\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("the key shown for typing in")
        .to_owned();
    let form = enrolment.form();
    let wrong = browser.submit(&form, &[("label", "Phone"), ("otp", "000000")]);
    assert_eq!(wrong.status, 400);
    assert!(wrong.body.contains("role=\"alert\""));
    let done = browser.submit(&form, &[("label", "Phone"), ("otp", &totp(&secret, now()))]);
    assert_eq!(done.status, 303, "{}", done.body);
    let account = browser.get(&service.url("/account?done=totp-added"));
    assert!(account.body.contains("Authenticator app turned on."));
    assert!(
        account.body.contains("<strong>Phone</strong>"),
        "{}",
        account.body
    );
    assert!(service.log().contains("\"event\":\"user.factor_added\""));
    secret
}

#[test]
fn totp_enrolment_step_up_replay_and_refresh() {
    let service = builder().start();
    let metadata = support::http_agent()
        .get(&service.url("/.well-known/oauth-authorization-server"))
        .call()
        .expect("metadata")
        .body_mut()
        .read_json::<Value>()
        .expect("JSON");
    assert_eq!(
        metadata["acr_values_supported"],
        serde_json::json!([PWD, MFA, "urn:tollgate:acr:phr"])
    );

    let browser = Browser::new();
    let secret = enrol_totp(&service, &browser);

    // A password-only sign-in states just that.
    let fresh = Browser::new();
    let (url, pkce) = authorize(&service, &[]);
    let approved = password_step(&fresh, &fresh.get(&url));
    let weak = claims(
        tokens(&service, &approved.redirect(), &pkce)["access_token"]
            .as_str()
            .expect("jwt"),
    );
    assert_eq!(weak["acr"], PWD);
    assert_eq!(amr(&weak), ["pwd"]);
    let password_time = weak["auth_time"].as_i64().expect("auth_time");
    assert!((password_time - now() as i64).abs() <= 5);

    // Step-up: the session has the password, so only the code is asked for.
    let (url, pkce) = authorize(&service, &[("acr_values", MFA)]);
    let step = fresh.get(&url);
    assert_eq!(step.status, 200, "{}", step.body);
    assert!(!step.body.contains("name=\"password\""), "{}", step.body);
    assert!(step.body.contains("autocomplete=\"one-time-code\""));
    // The next step's code (the current one confirmed the enrolment).
    let code = totp(&secret, now() + 30);
    let approved = fresh.submit(&step.form(), &[("otp", &code), ("decision", "approve")]);
    let strong = tokens(&service, &approved.redirect(), &pkce);
    let strong_claims = claims(strong["access_token"].as_str().expect("jwt"));
    assert_eq!(strong_claims["acr"], MFA);
    assert_eq!(amr(&strong_claims), ["mfa", "otp", "pwd"]);
    let auth_time = strong_claims["auth_time"].as_i64().expect("auth_time");

    // Replaying the code within its step is refused, even with the password again.
    let (url, _) = authorize(&service, &[("acr_values", MFA), ("prompt", "login")]);
    let again = password_step(&fresh, &fresh.get(&url));
    assert_eq!(again.status, 200, "{}", again.body);
    let replayed = fresh.submit(&again.form(), &[("otp", &code), ("decision", "approve")]);
    assert_eq!(replayed.status, 200, "{}", replayed.body);
    assert!(replayed.body.contains("did not work"), "{}", replayed.body);
    assert!(service
        .log()
        .contains("\"event\":\"second_factor.replayed\""));

    // A refreshed token keeps the original sign-in.
    std::thread::sleep(Duration::from_millis(1100));
    let (status, refreshed) = refresh(
        &service.token_url(),
        APP,
        strong["refresh_token"].as_str().expect("refresh token"),
        None,
    );
    assert_eq!(status, 200, "{refreshed}");
    let refreshed = claims(refreshed["access_token"].as_str().expect("jwt"));
    assert_eq!(refreshed["auth_time"].as_i64(), Some(auth_time));
    assert_eq!(refreshed["acr"], MFA);
    assert_eq!(amr(&refreshed), ["mfa", "otp", "pwd"]);
    assert!(refreshed["iat"].as_i64() > strong_claims["iat"].as_i64());
    // Audit lines are JSON with a timestamp and request id, never a secret or code.
    let log = service.log();
    for line in log.lines().filter(|line| line.contains("\"audit\"")) {
        let event: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("JSON: {line}"));
        assert!(
            event["timestamp"].is_string() && event["request_id"].is_string(),
            "{line}"
        );
    }
    assert!(!log.contains(&secret) && !log.contains(&code) && !log.contains(PASSWORD));
}

#[test]
fn max_age_and_prompt_login_force_a_new_sign_in() {
    let service = builder().start();
    let browser = Browser::new();
    let (url, _) = authorize(&service, &[]);
    let approved = password_step(&browser, &browser.get(&url));
    approved.redirect();

    // The session stands in for the password: consent only.
    let (url, pkce) = authorize(&service, &[]);
    let consent = browser.get(&url);
    assert!(
        consent.body.contains("Signed in as <strong>alice</strong>"),
        "{}",
        consent.body
    );
    assert!(!consent.body.contains("name=\"password\""));
    // A form fetched by someone else (no session, so no consent value), posted with
    // the user's cookie (cross-site request forgery), does not approve.
    let (forged_url, _) = authorize(&service, &[]);
    let forged = Browser::new().get(&forged_url).form();
    assert!(forged.hidden.iter().all(|(name, _)| name != "consent"));
    let refused = browser.submit(&forged, &[("decision", "approve")]);
    assert_eq!(refused.status, 200, "{}", refused.body);
    assert!(
        refused.body.contains("Sign in to continue."),
        "{}",
        refused.body
    );
    let first = browser.submit(&consent.form(), &[("decision", "approve")]);
    let first = claims(
        tokens(&service, &first.redirect(), &pkce)["access_token"]
            .as_str()
            .expect("jwt"),
    );

    std::thread::sleep(Duration::from_millis(2100));
    for extra in [[("max_age", "1")], [("prompt", "login")]] {
        let (url, _) = authorize(&service, &extra);
        let page = browser.get(&url);
        assert!(
            page.body.contains("name=\"password\""),
            "{extra:?}: {}",
            page.body
        );
        // Approving without credentials, as the session, is refused too.
        let refused = browser.submit(&page.form(), &[("decision", "approve")]);
        assert_eq!(refused.status, 200);
        assert!(
            refused.body.contains("Sign in to continue."),
            "{}",
            refused.body
        );
    }
    // A new sign-in has a new auth_time.
    let (url, pkce) = authorize(&service, &[("max_age", "1")]);
    let approved = password_step(&browser, &browser.get(&url));
    let second = claims(
        tokens(&service, &approved.redirect(), &pkce)["access_token"]
            .as_str()
            .expect("jwt"),
    );
    assert!(second["auth_time"].as_i64() > first["auth_time"].as_i64());

    // prompt=none cannot be met without interaction; bad values are refused.
    for (extra, error) in [
        (("prompt", "none"), "consent_required"),
        (("max_age", "soon"), "invalid_request"),
        (("prompt", "sometimes"), "invalid_request"),
    ] {
        let (url, _) = authorize(&service, &[extra]);
        let page = browser.get(&url);
        assert_eq!(page.redirect()["error"], error, "{extra:?}");
    }
}

#[test]
fn unmet_requirements_fail_and_never_yield_a_weaker_token() {
    let service = builder().start();
    // Alice has no second factor: a request for one fails after the password.
    let browser = Browser::new();
    let (url, _) = authorize(&service, &[("acr_values", MFA)]);
    let refused = password_step(&browser, &browser.get(&url));
    let params = refused.redirect();
    assert_eq!(params["error"], "unmet_authentication_requirements");
    assert_eq!(params["state"], "st");
    assert!(!params.contains_key("code"));
    // Unknown levels only: refused before anything is asked.
    let (url, _) = authorize(&service, &[("acr_values", "urn:example:gold")]);
    assert_eq!(
        Browser::new().get(&url).redirect()["error"],
        "unmet_authentication_requirements"
    );
}

#[test]
fn removing_a_factor_takes_effect_at_once_and_operators_can_reset() {
    let mut service = builder().start();
    let secret = enrol_totp(&service, &Browser::new());

    // With the account pages, once signed in with the code: remove the app.
    let account_browser = Browser::new();
    let sign_in = account_browser.get(&service.url("/account"));
    let second = account_browser.submit(
        &sign_in.form(),
        &[("username", ALICE), ("password", PASSWORD)],
    );
    assert!(
        second.body.contains("autocomplete=\"one-time-code\""),
        "{}",
        second.body
    );
    let done = account_browser.submit(&second.form(), &[("otp", &totp(&secret, now() + 30))]);
    assert_eq!(done.status, 303, "{}", done.body);
    let account = account_browser.get(&service.url("/account"));
    let remove_form =
        LoginForm::parse(&account.body[account.body.find("<li>").expect("a factor listed")..]);
    assert!(remove_form.action.ends_with("/account/factors/remove"));
    // Without the session's anti-CSRF value, nothing happens.
    let forged = LoginForm {
        hidden: remove_form
            .hidden
            .iter()
            .filter(|(name, _)| name != "csrf")
            .cloned()
            .collect(),
        ..LoginForm::parse(&account.body[account.body.find("<li>").expect("li")..])
    };
    assert_eq!(
        account_browser
            .submit(&forged, &[("csrf", "forged")])
            .status,
        403
    );
    let removed = account_browser.submit(&remove_form, &[]);
    assert_eq!(removed.status, 303);
    assert!(service.log().contains("\"event\":\"user.factor_removed\""));

    // At once: the session that used it no longer counts it, and nothing else can
    // reach the level.
    let (url, _) = authorize(&service, &[("acr_values", MFA)]);
    let page = account_browser.get(&url);
    assert_eq!(
        page.redirect()["error"],
        "unmet_authentication_requirements"
    );

    // Operators: the CLI and the admin API reset a user's factors, with audit lines.
    let out = service.cli(&["users", "add-totp", "--username", ALICE]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = service.cli(&["users", "factors", "--username", ALICE]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("totp"));
    let reset = service.cli(&["users", "reset-factors", "--username", ALICE]);
    assert!(String::from_utf8_lossy(&reset.stdout).contains("removed 1 second factor"));
    assert!(String::from_utf8_lossy(&reset.stderr).contains("\"event\":\"user.factors_reset\""));
    service.cli(&["users", "add-totp", "--username", ALICE]);
    let admin_secret = service.add_client("ops", "tollgate:admin");
    let token = service.client_credentials_token("ops", &admin_secret, Some("tollgate:admin"));
    let mut response = support::http_agent()
        .delete(&service.url("/admin/users/alice/factors"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .expect("DELETE");
    assert_eq!(response.status(), 200);
    let body: Value = response.body_mut().read_json().expect("JSON");
    assert_eq!(body["removed_factors"], 1);
    let (status, _) = post_form(&service.url("/admin/users/alice/factors"), &[], None);
    assert_eq!(status, 405);
}

#[test]
fn second_factor_failures_are_throttled_like_passwords() {
    let service = builder()
        .serve_arg("--throttle-account-failures", "3")
        .start();
    let browser = Browser::new();
    enrol_totp(&service, &browser);
    // The password is right; the codes are not. A known password does not reset
    // the count of wrong codes.
    let wrong =
        |step: &Page| browser.submit(&step.form(), &[("otp", "000000"), ("decision", "approve")]);
    let (url, _) = authorize(&service, &[("acr_values", MFA), ("prompt", "login")]);
    let step = password_step(&browser, &browser.get(&url));
    let step = wrong(&step);
    assert_eq!(step.status, 200);
    assert!(step.body.contains("did not work"), "{}", step.body);
    assert_eq!(wrong(&step).status, 200);
    // Signing in with the password again starts no new count.
    let (url, _) = authorize(&service, &[("acr_values", MFA), ("prompt", "login")]);
    let step = password_step(&browser, &browser.get(&url));
    assert_eq!(step.status, 200, "{}", step.body);
    assert_eq!(wrong(&step).status, 200);
    let blocked = wrong(&step);
    assert_eq!(blocked.status, 429, "{}", blocked.body);
    assert!(
        blocked
            .header("retry-after")
            .parse::<u64>()
            .expect("Retry-After")
            >= 1
    );
    assert!(
        blocked.body.contains("Too many failed attempts"),
        "{}",
        blocked.body
    );
}

#[test]
fn management_commands_refuse_a_missing_database_unless_told_to_create_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("typo.db");
    let run = |args: &[&str]| {
        std::process::Command::new(support::artifacts::token_service_binary())
            .current_dir(dir.path())
            .env_remove("TOLLGATE_DB")
            .arg("--db")
            .arg(&path)
            .args(args)
            .output()
            .expect("CLI")
    };
    let refused = run(&["users", "list"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!("database {} does not exist", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("--create"), "{stderr}");
    assert!(!path.exists(), "nothing created");
    assert!(run(&["--create", "users", "list"]).status.success());
    assert!(path.exists());
    assert!(run(&["users", "list"]).status.success());
}
