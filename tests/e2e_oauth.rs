//! End-to-end: a native app signs a user in with the authorization code flow and PKCE,
//! through real Envoy (which routes `/authorize`, `/token`, `/revoke` and discovery to
//! the token service), calls the API behind Tollgate, refreshes and calls again; and
//! revocations reach the gateway through the token service's revocation feed.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::oauth::{
    authorize_url, code_request, exchange_code, post_form, refresh, Browser, Pkce,
};
use support::stack::Stack;

const APP: &str = "notes-app";
/// A private-use scheme: the redirect goes to the app, never followed by the browser.
const REDIRECT: &str = "com.example.notes:/oauth/callback";
const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";

fn stack() -> Stack {
    Stack::builder()
        .token_service(|tokens| {
            tokens
                .public_client(APP, "read:data write:data", &[REDIRECT])
                .user(USER, PASSWORD, "read:data write:data")
                // No retry window: a replayed refresh token is reuse at once.
                .serve_arg("--refresh-reuse-grace", "0")
        })
        .start()
}

/// GET `path` through Envoy with a bearer token: status and JSON body.
fn call_api(stack: &Stack, method: &str, path: &str, token: &str) -> (u16, Value) {
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(stack.envoy.url(path))
        .header("Authorization", format!("Bearer {token}"))
        .body(())
        .expect("request");
    let mut response = support::http_agent().run(request).expect("API call");
    let status = response.status().as_u16();
    let body = response.body_mut().read_json().unwrap_or(Value::Null);
    (status, body)
}

fn string(body: &Value, field: &str) -> String {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {body}"))
        .to_owned()
}

/// Logs the user in through Envoy and redeems the code: access and refresh token.
fn sign_in(stack: &Stack) -> (String, String) {
    let pkce = Pkce::new();
    let url = authorize_url(
        &stack.envoy.url(""),
        &code_request(APP, REDIRECT, "read:data write:data", "st", &pkce),
    );
    let params = Browser::new().log_in(&url, USER, PASSWORD);
    let (status, body) = exchange_code(
        &stack.envoy.url("/token"),
        APP,
        &params["code"],
        REDIRECT,
        Some(&pkce.verifier),
    );
    assert_eq!(status, 200, "{body}");
    (
        string(&body, "access_token"),
        string(&body, "refresh_token"),
    )
}

#[test]
fn a_native_app_signs_in_calls_the_api_refreshes_and_calls_again() {
    let stack = stack();
    let base = stack.envoy.url("");
    let user_id = stack.tokens.user_id(USER).to_owned();

    // The app discovers the endpoints through the gateway.
    let mut metadata = support::http_agent()
        .get(stack.envoy.url("/.well-known/oauth-authorization-server"))
        .call()
        .expect("discovery");
    assert_eq!(metadata.status(), 200);
    let metadata: Value = metadata.body_mut().read_json().expect("metadata JSON");
    assert_eq!(
        metadata["authorization_endpoint"],
        format!("{base}/authorize")
    );
    assert_eq!(metadata["token_endpoint"], format!("{base}/token"));
    assert_eq!(
        metadata["code_challenge_methods_supported"],
        json!(["S256"])
    );

    // The browser opens the authorization URL: the login page, served through Envoy.
    let browser = Browser::new();
    let pkce = Pkce::new();
    let url = authorize_url(
        &base,
        &code_request(APP, REDIRECT, "read:data write:data", "state-42", &pkce),
    );
    let login = browser.get(&url);
    assert_eq!(login.status, 200, "{}", login.body);
    assert_eq!(login.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(login.header("x-frame-options"), "DENY");
    let form = login.form();
    assert_eq!(
        form.action,
        format!("{base}/authorize"),
        "the form posts through Envoy"
    );

    // The user logs in and approves; the browser hands the redirect to the app.
    let approved = browser.submit(
        &form,
        &[
            ("username", USER),
            ("password", PASSWORD),
            ("decision", "approve"),
        ],
        &[],
    );
    assert_eq!(approved.status, 303, "{}", approved.body);
    assert!(approved.header("location").starts_with(REDIRECT));
    let params = approved.redirect_params();
    assert_eq!(params["state"], "state-42");
    assert_eq!(params["iss"], base);

    // The app redeems the code with its verifier.
    let token_url = metadata["token_endpoint"].as_str().expect("token endpoint");
    let (status, body) = exchange_code(
        token_url,
        APP,
        &params["code"],
        REDIRECT,
        Some(&pkce.verifier),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    let access = string(&body, "access_token");
    let refresh_token = string(&body, "refresh_token");

    // The API sees the user, not the credential.
    let (status, echo) = call_api(&stack, "GET", "/data", &access);
    assert_eq!(status, 200, "{echo}");
    let headers = &echo["headers"];
    assert!(headers.get("authorization").is_none(), "{headers}");
    assert_eq!(headers["x-tollgate-subject"], user_id.as_str());
    assert_eq!(headers["x-tollgate-client-id"], APP);
    assert_eq!(headers["x-tollgate-scopes"], "read:data write:data");
    assert_eq!(headers["x-tollgate-issuer"], base);

    // Refresh (narrowed to read-only) and call again with the new token.
    let (status, body) = refresh(token_url, APP, &refresh_token, Some("read:data"));
    assert_eq!(status, 200, "{body}");
    let read_only = string(&body, "access_token");
    let rotated = string(&body, "refresh_token");
    assert_ne!(rotated, refresh_token);
    let (status, echo) = call_api(&stack, "GET", "/data", &read_only);
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["headers"]["x-tollgate-subject"], user_id.as_str());
    assert_eq!(echo["headers"]["x-tollgate-scopes"], "read:data");
    let (status, body) = call_api(&stack, "POST", "/data", &read_only);
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("insufficient_scope"))
    );

    // The rotated-away refresh token is dead at the gateway's token endpoint too.
    let (status, body) = refresh(token_url, APP, &refresh_token, None);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
}

#[test]
fn revoked_tokens_are_refused_at_the_gateway_through_the_revocation_feed() {
    let stack = Stack::builder()
        .token_service(|tokens| {
            tokens
                .public_client(APP, "read:data write:data", &[REDIRECT])
                .user(USER, PASSWORD, "read:data write:data")
                // No retry window: a replayed refresh token is reuse at once.
                .serve_arg("--refresh-reuse-grace", "0")
        })
        .plugin_config(|config| {
            config["providers"]["tollgate"]["revocation_feed"] = json!({
                "http_uri": {
                    "uri": "http://token-service/revocations",
                    "cluster": "token_service",
                    "timeout": "2s"
                },
                "poll_interval": "0.2s"
            });
        })
        .start();
    let loaded = |count: usize| {
        let line =
            format!("loaded revocation list for provider `tollgate`: {count} revoked token(s)");
        assert!(
            stack.envoy.wait_for_log(&line, Duration::from_secs(10)),
            "no `{line}`:\n{}",
            stack.envoy.log()
        );
    };
    loaded(0);

    // The app revokes an access token (RFC 7009, client id alone as a public client).
    let (access, _) = sign_in(&stack);
    assert_status_soon(&stack, &access, 200);
    let (status, _) = post_form(
        &stack.envoy.url("/revoke"),
        &[("token", &access), ("client_id", APP)],
        None,
    );
    assert_eq!(status, 200);
    loaded(1);
    assert_status_soon(&stack, &access, 401);

    // A stolen refresh token is replayed: the whole grant is revoked, and the
    // legitimate app's latest access token stops working at the gateway.
    let (_, stolen) = sign_in(&stack);
    let token_url = stack.envoy.url("/token");
    let (status, body) = refresh(&token_url, APP, &stolen, None);
    assert_eq!(status, 200, "{body}");
    let latest = string(&body, "access_token");
    assert_status_soon(&stack, &latest, 200);
    let (status, _) = refresh(&token_url, APP, &stolen, None);
    assert_eq!(status, 400, "reuse is refused");
    // The revoked family held two access tokens: the first and the latest.
    loaded(3);
    assert_status_soon(&stack, &latest, 401);
}

/// `GET /data` with `token` answers `expected` within a few seconds: each Envoy worker
/// takes up a newly loaded revocation list on its next tick, so a worker may answer
/// from the previous list (or, before its first, 503) for a moment.
fn assert_status_soon(stack: &Stack, token: &str, expected: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = call_api(stack, "GET", "/data", token);
        if status == expected {
            if expected == 401 {
                assert_eq!(body["error"], "invalid_token", "{body}");
            }
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {status} instead of {expected}: {body}\n{}",
            stack.envoy.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The promise, measured: after `/revoke` answers, Envoy refuses the
/// token within the sample's poll interval (2 s) plus one second, on every
/// worker (each request opens a new connection, so both workers answer).
#[test]
fn a_revoked_access_token_is_refused_within_the_poll_interval_plus_one_second() {
    let stack = stack();
    let (access, _) = sign_in(&stack);
    assert_eq!(call_api(&stack, "GET", "/data", &access).0, 200);
    let (status, _) = post_form(
        &stack.envoy.url("/revoke"),
        &[("token", &access), ("client_id", APP)],
        None,
    );
    assert_eq!(status, 200);
    let revoked_at = Instant::now();
    let poll = Duration::from_secs(2);
    let mut last_accepted = Duration::ZERO;
    while revoked_at.elapsed() < poll + Duration::from_secs(2) {
        match call_api(&stack, "GET", "/data", &access) {
            (200, _) => last_accepted = revoked_at.elapsed(),
            (401, body) => assert_eq!(
                body["error_description"],
                "the access token has been revoked"
            ),
            (status, body) => panic!("unexpected {status}: {body}"),
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    eprintln!(
        "revoked token last accepted {last_accepted:?} after /revoke (poll interval {poll:?})"
    );
    assert!(
        last_accepted <= poll + Duration::from_secs(1),
        "still accepted {last_accepted:?} after revocation"
    );
}

/// Calls `GET /data` with `token` (each call on a new connection, so every Envoy
/// worker answers) until it has been refused as revoked 8 times in a row, and returns
/// when it was last accepted after `since`. Before its first revocation list a worker
/// may answer 503. Few calls: the sample's brute-force guard counts each 401.
fn last_accepted(stack: &Stack, token: &str, since: Instant) -> Duration {
    let mut last = Duration::ZERO;
    let mut refused_in_a_row = 0;
    while refused_in_a_row < 8 {
        match call_api(stack, "GET", "/data", token) {
            (200, _) => {
                last = since.elapsed();
                refused_in_a_row = 0;
            }
            (401, body) => {
                assert_eq!(body["error"], "invalid_token", "{body}");
                assert_eq!(
                    body["error_description"], "the access token has been revoked",
                    "{body}"
                );
                refused_in_a_row += 1;
            }
            (503, _) => refused_in_a_row = 0,
            (status, body) => panic!("unexpected {status}: {body}"),
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "still accepted after 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    last
}

/// Removing or disabling a client revokes its `client_credentials` tokens too: the
/// gateway refuses them within the sample's poll interval (2 s) plus one second.
#[test]
fn removing_or_disabling_a_client_revokes_its_tokens_at_the_gateway_within_one_poll() {
    let stack = Stack::start();
    let poll = Duration::from_secs(2);

    let reader = stack.token("reader", Some("read:data"));
    assert_eq!(call_api(&stack, "GET", "/data", &reader).0, 200);
    let removed = stack.tokens.cli(&["clients", "remove", "--id", "reader"]);
    assert!(removed.status.success(), "{removed:?}");
    let last = last_accepted(&stack, &reader, Instant::now());
    eprintln!("removed client's token last accepted {last:?} after `clients remove`");
    assert!(last <= poll + Duration::from_secs(1), "{last:?}");

    let app = stack.token("mobile-app", Some("read:data"));
    assert_eq!(call_api(&stack, "GET", "/data", &app).0, 200);
    let disabled = stack
        .tokens
        .cli(&["clients", "disable", "--id", "mobile-app"]);
    assert!(disabled.status.success(), "{disabled:?}");
    let last = last_accepted(&stack, &app, Instant::now());
    eprintln!("disabled client's token last accepted {last:?} after `clients disable`");
    assert!(last <= poll + Duration::from_secs(1), "{last:?}");
    let secret = stack.tokens.secret("mobile-app").to_owned();
    let refused = stack
        .tokens
        .request_token("mobile-app", &secret, Some("read:data"));
    assert_eq!(
        refused.status(),
        401,
        "a disabled client cannot authenticate"
    );

    // Enabled again, it gets working tokens; the revoked one stays revoked.
    let enabled = stack
        .tokens
        .cli(&["clients", "enable", "--id", "mobile-app"]);
    assert!(enabled.status.success(), "{enabled:?}");
    let fresh = stack.token("mobile-app", Some("read:data"));
    assert_eq!(call_api(&stack, "GET", "/data", &fresh).0, 200);
    assert_eq!(call_api(&stack, "GET", "/data", &app).0, 401);
}
