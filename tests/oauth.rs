//! The token service's OAuth 2.0 surface beyond client_credentials, over real HTTP:
//! authorization code + PKCE with the login page, refresh-token rotation and reuse
//! detection, revocation (RFC 7009), introspection (RFC 7662), the gateway's
//! revocation feed, brute-force throttling, and the users/clients CLI.

use std::collections::HashMap;
use std::thread;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use support::http_agent;
use support::oauth::{
    authorize_url, code_request, exchange_code, post_form, query_params, refresh, Browser, Pkce,
};
use support::token_service::{basic_authorization, TokenService, TokenServiceBuilder};

/// The public (mobile) client and its redirect URI: a private-use scheme.
const APP: &str = "mobile";
const APP_REDIRECT: &str = "com.example.mobile:/oauth/callback";
/// A confidential web client that may skip PKCE.
const WEB: &str = "web";
const WEB_REDIRECT: &str = "https://web.example/callback";
/// A resource server that introspects tokens.
const GATEWAY: &str = "gateway";
const ALICE: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";

fn builder() -> TokenServiceBuilder {
    TokenService::builder()
        .public_client(
            APP,
            "read:data write:data",
            &[APP_REDIRECT, "http://127.0.0.1/cb"],
        )
        .client_with_redirects(WEB, "read:data", &[WEB_REDIRECT])
        .client(GATEWAY, "")
        .user(ALICE, PASSWORD, "read:data write:data")
}

/// Logs Alice in for the mobile app; returns the code, after checking `state` and `iss`.
fn app_code(service: &TokenService, pkce: &Pkce, scope: &str) -> String {
    let url = authorize_url(
        &service.base_url(),
        &code_request(APP, APP_REDIRECT, scope, "st-1", pkce),
    );
    let params = Browser::new().log_in(&url, ALICE, PASSWORD);
    assert_eq!(params["state"], "st-1");
    assert_eq!(params["iss"], service.issuer());
    params["code"].clone()
}

/// Access and refresh token for the mobile app, through the code flow.
fn app_tokens(service: &TokenService, scope: &str) -> (String, String) {
    let pkce = Pkce::new();
    let code = app_code(service, &pkce, scope);
    let (status, body) = exchange_code(
        &service.token_url(),
        APP,
        &code,
        APP_REDIRECT,
        Some(&pkce.verifier),
    );
    assert_eq!(status, 200, "{body}");
    (
        string(&body, "access_token"),
        string(&body, "refresh_token"),
    )
}

fn string(body: &Value, field: &str) -> String {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {body}"))
        .to_owned()
}

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("JWT payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

fn introspect(service: &TokenService, token: &str) -> Value {
    let basic = basic_authorization(GATEWAY, service.secret(GATEWAY));
    let (status, body) = post_form(
        &service.url("/introspect"),
        &[("token", token)],
        Some(&basic),
    );
    assert_eq!(status, 200, "{body}");
    body
}

fn assert_inactive(service: &TokenService, token: &str, what: &str) {
    assert_eq!(
        introspect(service, token),
        json!({"active": false}),
        "{what}"
    );
}

fn assert_invalid_grant(reply: (u16, Value), what: &str) {
    assert_eq!(reply.0, 400, "{what}: {}", reply.1);
    assert_eq!(reply.1["error"], "invalid_grant", "{what}: {}", reply.1);
}

/// The revocation feed's status, ETag and body.
fn feed(
    service: &TokenService,
    if_none_match: Option<&str>,
) -> (u16, HashMap<String, String>, String) {
    let mut request = http_agent().get(service.url("/revocations"));
    if let Some(tag) = if_none_match {
        request = request.header("If-None-Match", tag);
    }
    let mut response = request.call().expect("GET /revocations");
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                value.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let status = response.status().as_u16();
    (
        status,
        headers,
        response.body_mut().read_to_string().expect("body"),
    )
}

fn revoked_jtis(service: &TokenService) -> Vec<String> {
    let (status, _, body) = feed(service, None);
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).expect("feed JSON");
    body["revoked"]
        .as_array()
        .expect("revoked array")
        .iter()
        .map(|entry| entry["jti"].as_str().expect("jti").to_owned())
        .collect()
}

#[test]
fn code_flow_with_pkce_logs_in_issues_user_tokens_and_rotates_refresh_tokens() {
    let service = builder().start();
    let browser = Browser::new();
    let pkce = Pkce::new();
    let url = authorize_url(
        &service.base_url(),
        &code_request(APP, APP_REDIRECT, "read:data write:data", "xyz 1/2", &pkce),
    );

    // The login and consent page: accessible, uncacheable, unframeable.
    let login = browser.get(&url);
    assert_eq!(login.status, 200, "{}", login.body);
    assert_eq!(login.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(login.header("cache-control"), "no-store");
    assert_eq!(login.header("x-frame-options"), "DENY");
    assert!(login
        .header("content-security-policy")
        .contains("frame-ancestors 'none'"));
    for needle in [
        "<html lang=\"en\">",
        "<title>",
        "<label for=\"username\">Username</label>",
        "<label for=\"password\">Password</label>",
        "autocomplete=\"current-password\"",
        // Permissions described in words, with their codes.
        "<li><strong>View your data</strong><code>read:data</code></li>",
        "<li><strong>Create, change and delete your data</strong><code>write:data</code></li>",
        "<strong>mobile</strong>",
        ">Approve</button>",
        ">Deny</button>",
    ] {
        assert!(
            login.body.contains(needle),
            "{needle} missing from:\n{}",
            login.body
        );
    }
    let form = login.form();
    assert_eq!(form.action, service.url("/authorize"));
    assert!(
        form.hidden
            .iter()
            .any(|(name, value)| name == "request" && value.len() >= 100),
        "anti-CSRF field: {:?}",
        form.hidden
    );

    // A wrong password re-renders the page with a generic error, same request.
    let wrong = browser.submit(
        &form,
        &[
            ("username", ALICE),
            ("password", "wrong password"),
            ("decision", "approve"),
        ],
        &[],
    );
    assert_eq!(wrong.status, 200);
    assert!(wrong.body.contains("role=\"alert\""), "{}", wrong.body);
    assert!(wrong
        .body
        .contains("The username or password is incorrect."));
    assert!(
        !wrong.body.contains("wrong password"),
        "the password is never echoed"
    );
    let unknown = browser.submit(
        &wrong.form(),
        &[
            ("username", "mallory"),
            ("password", "wrong password"),
            ("decision", "approve"),
        ],
        &[],
    );
    assert!(unknown
        .body
        .contains("The username or password is incorrect."));

    // The right password: 303 to the app's redirect URI with code, state and iss.
    let approved = browser.submit(
        &unknown.form(),
        &[
            ("username", ALICE),
            ("password", PASSWORD),
            ("decision", "approve"),
        ],
        &[],
    );
    assert_eq!(approved.status, 303, "{}", approved.body);
    let location = approved.header("location").to_owned();
    assert!(
        location.starts_with(&format!("{APP_REDIRECT}?code=")),
        "{location}"
    );
    assert_eq!(approved.header("cache-control"), "no-store");
    let params = approved.redirect_params();
    assert_eq!(params["state"], "xyz 1/2");
    assert_eq!(params["iss"], service.issuer());
    let code = &params["code"];
    assert!(code.len() >= 43, "at least 256 bits: {code}");

    // The form cannot be submitted twice.
    let again = browser.submit(
        &form,
        &[
            ("username", ALICE),
            ("password", PASSWORD),
            ("decision", "approve"),
        ],
        &[],
    );
    assert_eq!(again.status, 400);
    assert!(again.header("content-type").starts_with("text/html"));

    let (status, body) = exchange_code(
        &service.token_url(),
        APP,
        code,
        APP_REDIRECT,
        Some(&pkce.verifier),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["scope"], "read:data write:data");
    let access = string(&body, "access_token");
    let refresh_token = string(&body, "refresh_token");
    assert!(
        refresh_token.starts_with("tgr_") && refresh_token.len() >= 4 + 43,
        "{refresh_token}"
    );
    let access_claims = claims(&access);
    let alice = service.user_id(ALICE);
    assert_eq!(access_claims["sub"], alice);
    assert_eq!(access_claims["client_id"], APP);
    assert_eq!(access_claims["scope"], "read:data write:data");

    // Refresh: a new pair; the scope may narrow.
    let (status, body) = refresh(&service.token_url(), APP, &refresh_token, Some("read:data"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "read:data");
    let second_refresh = string(&body, "refresh_token");
    assert_ne!(second_refresh, refresh_token, "rotated");
    let narrowed = claims(&string(&body, "access_token"));
    assert_eq!(narrowed["sub"], alice);
    assert_eq!(narrowed["scope"], "read:data");

    // Never wider than granted; the scope originally granted is still available.
    let (status, body) = refresh(
        &service.token_url(),
        APP,
        &second_refresh,
        Some("read:data admin"),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope")),
        "{body}"
    );
    let (status, body) = refresh(&service.token_url(), APP, &second_refresh, None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "read:data write:data");

    // Nothing secret reached the log.
    let log = service.log();
    assert!(
        log.contains("GET /authorize 200") && log.contains("POST /token 200"),
        "{log}"
    );
    for (what, needle) in [
        ("code", code.as_str()),
        ("verifier", pkce.verifier.as_str()),
        ("password", PASSWORD),
        ("refresh token", refresh_token.as_str()),
        ("access token", access.as_str()),
    ] {
        assert!(!log.contains(needle), "the log contains the {what}:\n{log}");
    }
}

#[test]
fn deny_sends_access_denied_with_state() {
    let service = builder().start();
    let browser = Browser::new();
    let pkce = Pkce::new();
    let url = authorize_url(
        &service.base_url(),
        &code_request(APP, APP_REDIRECT, "read:data", "s-9", &pkce),
    );
    let login = browser.get(&url);
    let denied = browser.submit(&login.form(), &[("decision", "deny")], &[]);
    let params = denied.redirect_params();
    assert_eq!(params["error"], "access_denied");
    assert_eq!(params["state"], "s-9");
    assert_eq!(params["iss"], service.issuer());
    assert!(!params.contains_key("code"));
}

#[test]
fn authorize_shows_untrusted_requests_an_error_page_and_redirects_the_rest() {
    let service = builder().start();
    let browser = Browser::new();
    let pkce = Pkce::new();
    let base = service.base_url();

    // Unknown client, unregistered or missing redirect URI: an error page, no redirect.
    for (what, params) in [
        (
            "unknown client",
            code_request("nobody", APP_REDIRECT, "read:data", "s", &pkce),
        ),
        (
            "unregistered redirect",
            code_request(APP, "com.example.mobile:/evil", "read:data", "s", &pkce),
        ),
        (
            "prefix of a registered redirect",
            code_request(APP, "com.example.mobile:/oauth", "read:data", "s", &pkce),
        ),
        (
            "another client's redirect",
            code_request(APP, WEB_REDIRECT, "read:data", "s", &pkce),
        ),
        (
            "no redirect_uri",
            vec![("response_type", "code"), ("client_id", APP)],
        ),
        (
            "no client_id",
            vec![("response_type", "code"), ("redirect_uri", APP_REDIRECT)],
        ),
    ] {
        let page = browser.get(&authorize_url(&base, &params));
        assert_eq!(page.status, 400, "{what}: {}", page.body);
        assert!(page.headers.get("location").is_none(), "{what}");
        assert!(
            page.header("content-type").starts_with("text/html"),
            "{what}"
        );
        assert!(page.body.contains("role=\"alert\""), "{what}");
    }
    let repeated = format!(
        "{}&client_id=web",
        authorize_url(
            &base,
            &code_request(APP, APP_REDIRECT, "read:data", "s", &pkce)
        )
    );
    assert_eq!(browser.get(&repeated).status, 400, "repeated client_id");

    // A loopback redirect URI registered without a port accepts any port (RFC 8252).
    let loopback = browser.get(&authorize_url(
        &base,
        &code_request(APP, "http://127.0.0.1:53124/cb", "read:data", "s", &pkce),
    ));
    assert_eq!(loopback.status, 200, "{}", loopback.body);

    // Everything else goes back to the client, with state and iss.
    let redirected = |what: &str, params: &[(&str, &str)], error: &str| {
        let page = browser.get(&authorize_url(&base, params));
        assert_eq!(page.status, 303, "{what}: {}", page.body);
        assert!(page.header("location").starts_with(APP_REDIRECT), "{what}");
        let query = query_params(page.header("location"));
        assert_eq!(query["error"], error, "{what}");
        assert!(query.contains_key("error_description"), "{what}");
        assert_eq!(query["state"], "s", "{what}");
        assert_eq!(query["iss"], service.issuer(), "{what}");
    };
    let mut params = code_request(APP, APP_REDIRECT, "read:data", "s", &pkce);
    params[0] = ("response_type", "token");
    redirected("implicit grant", &params, "unsupported_response_type");
    let mut params = code_request(APP, APP_REDIRECT, "read:data admin", "s", &pkce);
    redirected("scope beyond the client's", &params, "invalid_scope");
    params = code_request(APP, APP_REDIRECT, "read:data", "s", &pkce);
    params.truncate(5);
    redirected("public client without PKCE", &params, "invalid_request");
    params = code_request(APP, APP_REDIRECT, "read:data", "s", &pkce);
    params[6] = ("code_challenge_method", "plain");
    redirected("plain PKCE", &params, "invalid_request");
    params = code_request(APP, APP_REDIRECT, "read:data", "s", &pkce);
    params.pop();
    redirected(
        "challenge without method (plain by default)",
        &params,
        "invalid_request",
    );
    params = code_request(APP, APP_REDIRECT, "read:data", "s", &pkce);
    params[5] = ("code_challenge", "too-short");
    redirected("malformed challenge", &params, "invalid_request");
}

#[test]
fn pkce_failures_and_binding_mismatches_are_invalid_grant() {
    let service = builder().start();
    let token_url = service.token_url();
    let pkce = Pkce::new();
    let code = app_code(&service, &pkce, "read:data");

    let other = Pkce::new();
    assert_invalid_grant(
        exchange_code(&token_url, APP, &code, APP_REDIRECT, Some(&other.verifier)),
        "wrong verifier",
    );
    assert_invalid_grant(
        exchange_code(&token_url, APP, &code, APP_REDIRECT, None),
        "missing verifier",
    );
    assert_invalid_grant(
        exchange_code(
            &token_url,
            APP,
            &code,
            "http://127.0.0.1/cb",
            Some(&pkce.verifier),
        ),
        "another redirect_uri",
    );
    let web_basic = basic_authorization(WEB, service.secret(WEB));
    assert_invalid_grant(
        post_form(
            &token_url,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", APP_REDIRECT),
                ("code_verifier", &pkce.verifier),
            ],
            Some(&web_basic),
        ),
        "another client",
    );
    let (status, body) = exchange_code(&token_url, APP, &code, APP_REDIRECT, Some(&pkce.verifier));
    assert_eq!(status, 200, "failed attempts do not burn the code: {body}");

    // A confidential client may skip PKCE, but a verifier without a challenge in the
    // authorization request is a downgrade and is refused.
    let browser = Browser::new();
    let without_pkce = authorize_url(
        &service.base_url(),
        &[
            ("response_type", "code"),
            ("client_id", WEB),
            ("redirect_uri", WEB_REDIRECT),
            ("state", "w"),
        ],
    );
    let web_code =
        |browser: &Browser| browser.log_in(&without_pkce, ALICE, PASSWORD)["code"].clone();
    let code = web_code(&browser);
    let form = |code: &str, verifier: Option<&str>| {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", WEB_REDIRECT),
        ];
        if let Some(verifier) = verifier {
            form.push(("code_verifier", verifier));
        }
        post_form(&token_url, &form, Some(&web_basic))
    };
    let (status, body) = form(&code, Some(&pkce.verifier));
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("no code_challenge"),
        "{body}"
    );
    let (status, body) = form(&code, None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(claims(&string(&body, "access_token"))["client_id"], WEB);

    // Unknown and malformed codes.
    assert_invalid_grant(
        exchange_code(
            &token_url,
            APP,
            "nonsense",
            APP_REDIRECT,
            Some(&pkce.verifier),
        ),
        "unknown code",
    );
    let (status, body) = post_form(
        &token_url,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", APP),
            ("redirect_uri", APP_REDIRECT),
        ],
        None,
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "missing code: {body}"
    );
}

#[test]
fn a_replayed_code_is_refused_and_revokes_the_tokens_issued_from_it() {
    let service = builder().start();
    let token_url = service.token_url();
    let pkce = Pkce::new();
    let code = app_code(&service, &pkce, "read:data");
    let (status, body) = exchange_code(&token_url, APP, &code, APP_REDIRECT, Some(&pkce.verifier));
    assert_eq!(status, 200, "{body}");
    let access = string(&body, "access_token");
    let refresh_token = string(&body, "refresh_token");
    assert_eq!(introspect(&service, &access)["active"], true);

    let (status, body) = exchange_code(&token_url, APP, &code, APP_REDIRECT, Some(&pkce.verifier));
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );

    assert_invalid_grant(
        refresh(&token_url, APP, &refresh_token, None),
        "refresh after replay",
    );
    assert_inactive(&service, &access, "access token from a replayed code");
    assert_inactive(
        &service,
        &refresh_token,
        "refresh token from a replayed code",
    );
    let jti = claims(&access)["jti"].as_str().expect("jti").to_owned();
    assert_eq!(revoked_jtis(&service), [jti], "the gateway learns of it");
    assert!(service
        .log()
        .contains(r#""event":"authorization_code.reuse_detected""#));
}

#[test]
fn refresh_token_reuse_revokes_the_whole_family() {
    let service = builder().start();
    let token_url = service.token_url();
    let (first_access, first_refresh) = app_tokens(&service, "read:data");
    let (status, body) = refresh(&token_url, APP, &first_refresh, None);
    assert_eq!(status, 200, "{body}");
    let second_refresh = string(&body, "refresh_token");
    let second_access = string(&body, "access_token");
    let (status, body) = refresh(&token_url, APP, &second_refresh, None);
    assert_eq!(status, 200, "{body}");
    let third_refresh = string(&body, "refresh_token");
    let third_access = string(&body, "access_token");
    assert_eq!(introspect(&service, &third_refresh)["active"], true);
    assert_inactive(&service, &second_refresh, "a rotated refresh token");

    // A concurrent grant of the same user is another family and survives.
    let (other_access, other_refresh) = app_tokens(&service, "read:data");

    // An attacker replays the first refresh token.
    let (status, body) = refresh(&token_url, APP, &first_refresh, None);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );

    // The legitimate holder's descendants stop working everywhere.
    assert_invalid_grant(
        refresh(&token_url, APP, &third_refresh, None),
        "descendant at /token",
    );
    for (what, token) in [
        ("latest refresh token", &third_refresh),
        ("first access token", &first_access),
        ("second access token", &second_access),
        ("latest access token", &third_access),
    ] {
        assert_inactive(&service, token, what);
    }
    let mut expected: Vec<String> = [&first_access, &second_access, &third_access]
        .iter()
        .map(|token| claims(token)["jti"].as_str().expect("jti").to_owned())
        .collect();
    expected.sort();
    assert_eq!(revoked_jtis(&service), expected);

    assert_eq!(introspect(&service, &other_access)["active"], true);
    let (status, _) = refresh(&token_url, APP, &other_refresh, None);
    assert_eq!(status, 200, "other families are untouched");
    assert!(service
        .log()
        .contains(r#""event":"refresh_token.reuse_detected""#));
}

#[test]
fn a_retried_refresh_keeps_the_session_through_20_duplicated_rounds() {
    // A client sends each refresh twice at once (a retry after a lost response, or two
    // tabs), and keeps whichever answer it read: alternately the first and the second.
    let service = builder().start();
    let token_url = service.token_url();
    let (_, mut refresh_token) = app_tokens(&service, "read:data");
    let mut access = String::new();
    for round in 0..20 {
        let replies: Vec<(u16, Value)> = thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let (token_url, refresh_token) = (&token_url, &refresh_token);
                    scope.spawn(move || refresh(token_url, APP, refresh_token, None))
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("refresh thread"))
                .collect()
        });
        for (status, body) in &replies {
            assert_eq!(*status, 200, "round {round}: {body}");
        }
        let (_, kept) = &replies[round % 2];
        refresh_token = string(kept, "refresh_token");
        access = string(kept, "access_token");
    }
    // The session survived: its latest tokens work, nothing was revoked.
    assert_eq!(introspect(&service, &refresh_token)["active"], true);
    assert_eq!(introspect(&service, &access)["active"], true);
    assert!(revoked_jtis(&service).is_empty());
    let (status, body) = refresh(&token_url, APP, &refresh_token, None);
    assert_eq!(status, 200, "{body}");
    assert!(!service
        .log()
        .contains(r#""event":"refresh_token.reuse_detected""#));
}

#[test]
fn reuse_outside_the_grace_window_still_revokes_the_family() {
    let service = builder().serve_arg("--refresh-reuse-grace", "1").start();
    let token_url = service.token_url();
    let (first_access, first_refresh) = app_tokens(&service, "read:data");
    let (status, body) = refresh(&token_url, APP, &first_refresh, None);
    assert_eq!(status, 200, "{body}");
    let (second_access, second_refresh) = (
        string(&body, "access_token"),
        string(&body, "refresh_token"),
    );

    // Two seconds later the first token is presented again: reuse, not a retry.
    thread::sleep(Duration::from_millis(2_100));
    assert_invalid_grant(refresh(&token_url, APP, &first_refresh, None), "reuse");
    assert_invalid_grant(
        refresh(&token_url, APP, &second_refresh, None),
        "the family is revoked",
    );
    for (what, token) in [
        ("first access token", &first_access),
        ("second access token", &second_access),
        ("second refresh token", &second_refresh),
    ] {
        assert_inactive(&service, token, what);
    }
    assert!(service
        .log()
        .contains(r#""event":"refresh_token.reuse_detected""#));

    // Within the window, but after the new token was used: reuse as well.
    let (_, first_refresh) = app_tokens(&service, "read:data");
    let (_, body) = refresh(&token_url, APP, &first_refresh, None);
    let second_refresh = string(&body, "refresh_token");
    let (status, body) = refresh(&token_url, APP, &second_refresh, None);
    assert_eq!(status, 200, "{body}");
    let third_refresh = string(&body, "refresh_token");
    assert_invalid_grant(
        refresh(&token_url, APP, &first_refresh, None),
        "two generations old",
    );
    assert_invalid_grant(
        refresh(&token_url, APP, &third_refresh, None),
        "the family is revoked",
    );
}

#[test]
fn refresh_tokens_are_bound_to_their_client() {
    let service = builder().start();
    let (_, refresh_token) = app_tokens(&service, "read:data");
    let web_basic = basic_authorization(WEB, service.secret(WEB));
    assert_invalid_grant(
        post_form(
            &service.token_url(),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh_token),
            ],
            Some(&web_basic),
        ),
        "another client",
    );
    let (status, body) = refresh(&service.token_url(), APP, &refresh_token, None);
    assert_eq!(status, 200, "the owner's token still works: {body}");
    // A public client cannot use client_credentials.
    let (status, body) = post_form(
        &service.token_url(),
        &[("grant_type", "client_credentials"), ("client_id", APP)],
        None,
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{body}"
    );
}

#[test]
fn refresh_tokens_expire_when_idle_and_at_their_absolute_lifetime() {
    let idle = builder().serve_arg("--refresh-idle-ttl", "1").start();
    let (_, refresh_token) = app_tokens(&idle, "read:data");
    thread::sleep(Duration::from_millis(2_100));
    assert_invalid_grant(
        refresh(&idle.token_url(), APP, &refresh_token, None),
        "idle",
    );
    assert_inactive(&idle, &refresh_token, "idle refresh token");

    let absolute = builder().serve_arg("--refresh-absolute-ttl", "2").start();
    let (_, refresh_token) = app_tokens(&absolute, "read:data");
    let (status, body) = refresh(&absolute.token_url(), APP, &refresh_token, None);
    assert_eq!(status, 200, "{body}");
    let rotated = string(&body, "refresh_token");
    let introspected = introspect(&absolute, &rotated);
    assert_eq!(introspected["active"], true);
    let exp = introspected["exp"].as_i64().expect("exp");
    let iat = introspected["iat"].as_i64().expect("iat");
    assert!(
        exp - iat <= 2,
        "rotation does not extend the absolute lifetime: {introspected}"
    );
    thread::sleep(Duration::from_millis(3_100));
    assert_invalid_grant(
        refresh(&absolute.token_url(), APP, &rotated, None),
        "absolute",
    );
}

#[test]
fn introspection_needs_a_confidential_client_and_tells_only_active_tokens_apart() {
    let service = builder()
        .client("svc", "read:data")
        .access_token_ttl(2)
        .start();
    let url = service.url("/introspect");
    let token = service.client_credentials_token("svc", service.secret("svc"), None);

    for (what, authorization, form) in [
        (
            "no client authentication",
            None,
            vec![("token", token.as_str())],
        ),
        (
            "public client",
            None,
            vec![("token", token.as_str()), ("client_id", APP)],
        ),
        (
            "wrong secret",
            Some(basic_authorization(GATEWAY, "wrong")),
            vec![("token", token.as_str())],
        ),
    ] {
        let (status, body) = post_form(&url, &form, authorization.as_deref());
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{what}: {body}"
        );
    }

    let active = introspect(&service, &token);
    let token_claims = claims(&token);
    assert_eq!(
        active,
        json!({
            "active": true,
            "token_type": "access_token",
            "client_id": "svc",
            "sub": "svc",
            "aud": "tollgate-sample-api",
            "iss": service.issuer(),
            "scope": "read:data",
            "iat": token_claims["iat"],
            "exp": token_claims["exp"],
            "jti": token_claims["jti"],
        })
    );

    let (_, refresh_token) = app_tokens(&service, "read:data");
    let active_refresh = introspect(&service, &refresh_token);
    assert_eq!(active_refresh["active"], true);
    assert_eq!(active_refresh["token_type"], "refresh_token");
    assert_eq!(active_refresh["client_id"], APP);
    assert_eq!(active_refresh["sub"], service.user_id(ALICE));
    assert_eq!(active_refresh["scope"], "read:data");

    let (head, signature) = token.rsplit_once('.').expect("JWS");
    let forged = format!("{head}.{}", signature.chars().rev().collect::<String>());
    for (what, probe) in [
        (
            "unknown refresh token",
            "tgr_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ),
        ("malformed", "not a token"),
        ("forged signature", forged.as_str()),
    ] {
        assert_inactive(&service, probe, what);
    }
    thread::sleep(Duration::from_millis(3_100));
    assert_inactive(&service, &token, "expired access token");
}

#[test]
fn revocation_revokes_access_and_refresh_tokens_of_the_calling_client_only() {
    let service = builder().client("svc", "read:data").start();
    let url = service.url("/revoke");
    let svc_basic = basic_authorization("svc", service.secret("svc"));
    let token = service.client_credentials_token("svc", service.secret("svc"), None);
    let other = service.client_credentials_token("svc", service.secret("svc"), None);

    // Another client cannot revoke it, and is told so.
    let web_basic = basic_authorization(WEB, service.secret(WEB));
    let (status, body) = post_form(&url, &[("token", &token)], Some(&web_basic));
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{body}"
    );
    assert_eq!(introspect(&service, &token)["active"], true);

    let (status, body) = post_form(
        &url,
        &[("token", &token), ("token_type_hint", "access_token")],
        Some(&svc_basic),
    );
    assert_eq!((status, &body), (200, &Value::Null), "empty 200");
    assert_inactive(&service, &token, "revoked access token");
    assert_eq!(
        introspect(&service, &other)["active"],
        true,
        "only that token"
    );
    let jti = claims(&token)["jti"].as_str().expect("jti").to_owned();
    assert_eq!(revoked_jtis(&service), [jti]);

    // Revoking again, unknown and malformed tokens: 200 (RFC 7009 §2.2).
    for probe in [token.as_str(), "tgr_unknown", "garbage"] {
        let (status, _) = post_form(&url, &[("token", probe)], Some(&svc_basic));
        assert_eq!(status, 200, "{probe}");
    }

    // A public client revokes its refresh token with its client id alone; the grant
    // goes with it, even with a misleading hint.
    let (access, refresh_token) = app_tokens(&service, "read:data");
    let (status, _) = post_form(
        &url,
        &[
            ("token", &refresh_token),
            ("token_type_hint", "access_token"),
            ("client_id", APP),
        ],
        None,
    );
    assert_eq!(status, 200);
    assert_invalid_grant(
        refresh(&service.token_url(), APP, &refresh_token, None),
        "revoked refresh token",
    );
    assert_inactive(&service, &access, "access token of a revoked grant");

    // Malformed requests.
    let (status, body) = post_form(
        &url,
        &[("token_type_hint", "access_token")],
        Some(&svc_basic),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    let (status, body) = post_form(&url, &[("token", &other)], None);
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
}

#[test]
fn the_revocation_feed_is_small_cacheable_and_forgets_expired_tokens() {
    let service = builder()
        .client("svc", "read:data")
        .access_token_ttl(4)
        .start();
    let (status, headers, body) = feed(&service, None);
    assert_eq!(status, 200);
    assert_eq!(body, r#"{"revoked":[]}"#);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["cache-control"], "no-cache");
    let empty_tag = headers["etag"].clone();
    assert!(
        empty_tag.starts_with('"') && empty_tag.ends_with('"'),
        "strong ETag: {empty_tag}"
    );

    let (status, headers, body) = feed(&service, Some(&empty_tag));
    assert_eq!((status, body.as_str()), (304, ""));
    assert_eq!(headers["etag"], empty_tag);

    let svc_basic = basic_authorization("svc", service.secret("svc"));
    let mut tokens: Vec<(String, i64)> = Vec::new();
    for _ in 0..3 {
        let token = service.client_credentials_token("svc", service.secret("svc"), None);
        let (status, _) = post_form(
            &service.url("/revoke"),
            &[("token", &token)],
            Some(&svc_basic),
        );
        assert_eq!(status, 200);
        let token_claims = claims(&token);
        tokens.push((
            token_claims["jti"].as_str().expect("jti").to_owned(),
            token_claims["exp"].as_i64().expect("exp"),
        ));
    }
    tokens.sort();
    let (status, headers, body) = feed(&service, Some(&empty_tag));
    assert_eq!(status, 200, "changed since the empty feed");
    let expected: Vec<Value> = tokens
        .iter()
        .map(|(jti, exp)| json!({"jti": jti, "exp": exp}))
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON"),
        json!({ "revoked": expected })
    );
    let tag = headers["etag"].clone();
    assert_ne!(tag, empty_tag);
    assert_eq!(feed(&service, Some(&format!("\"other\", {tag}"))).0, 304);
    assert_eq!(
        feed(&service, None).2,
        body,
        "stable bytes for the same set"
    );

    thread::sleep(Duration::from_millis(4_100));
    let (status, headers, body) = feed(&service, Some(&tag));
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"revoked":[]}"#),
        "expired tokens leave the feed"
    );
    assert_eq!(headers["etag"], empty_tag);
}

/// POST /token with a wrong or right secret from `ip` (through X-Forwarded-For, which
/// the service trusts from loopback); returns status, Retry-After and the time taken.
fn attempt(
    service: &TokenService,
    client_id: &str,
    secret: &str,
    ip: &str,
) -> (u16, Option<u64>, Value, Duration) {
    let started = Instant::now();
    let mut response = http_agent()
        .post(service.token_url())
        .header("Authorization", basic_authorization(client_id, secret))
        .header("X-Forwarded-For", ip)
        .send_form([("grant_type", "client_credentials")])
        .expect("POST /token");
    let elapsed = started.elapsed();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().expect("ascii").parse().expect("seconds"));
    let status = response.status().as_u16();
    let body = response.body_mut().read_json().expect("JSON");
    (status, retry_after, body, elapsed)
}

#[test]
fn brute_force_on_token_is_slowed_then_refused_without_locking_out_good_clients() {
    let service = builder()
        .client("victim", "read:data")
        .client("bystander", "read:data")
        .serve_arg("--throttle-account-failures", "4")
        .start();
    let victim_secret = service.secret("victim").to_owned();
    let attacker = "203.0.113.5";

    let mut times = Vec::new();
    for _ in 0..4 {
        let (status, retry_after, body, elapsed) = attempt(&service, "victim", "guess", attacker);
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{body}"
        );
        assert!(retry_after.is_none());
        times.push(elapsed);
    }
    assert!(
        times[2] >= Duration::from_millis(250),
        "third failure delayed: {times:?}"
    );
    assert!(
        times[3] >= Duration::from_millis(500),
        "fourth failure delayed more: {times:?}"
    );

    // Blocked: 429 with Retry-After, even with the right secret (it is not checked).
    for secret in ["guess", victim_secret.as_str()] {
        let (status, retry_after, body, _) = attempt(&service, "victim", secret, attacker);
        assert_eq!(status, 429, "{body}");
        assert_eq!(body["error"], "too_many_requests");
        assert!(body["error_description"].is_string());
        let retry_after = retry_after.expect("Retry-After");
        assert!((1..=900).contains(&retry_after), "{retry_after}");
    }

    // The real client elsewhere, and another client at the attacker's address, are fine.
    let (status, _, body, _) = attempt(&service, "victim", &victim_secret, "198.51.100.7");
    assert_eq!(status, 200, "{body}");
    let bystander_secret = service.secret("bystander").to_owned();
    let (status, _, body, _) = attempt(&service, "bystander", &bystander_secret, attacker);
    assert_eq!(status, 200, "{body}");

    // X-Forwarded-For from an untrusted peer is ignored: the direct peer (loopback,
    // trusted here) is what counts, so an attacker cannot pick a fresh address per try.
    let (status, _, _, _) = attempt(
        &service,
        "victim",
        "guess",
        &format!("192.0.2.1, {attacker}"),
    );
    assert_eq!(status, 429, "only the right-most untrusted entry counts");
}

#[test]
fn failures_across_many_client_ids_block_the_address() {
    let service = builder()
        .client("bystander", "read:data")
        .serve_arg("--throttle-ip-failures", "4")
        .start();
    let attacker = "203.0.113.9";
    for index in 0..4 {
        let (status, _, body, _) = attempt(&service, &format!("guess-{index}"), "x", attacker);
        assert_eq!(status, 401, "{body}");
    }
    let (status, retry_after, _, _) = attempt(&service, "guess-new", "x", attacker);
    assert_eq!(status, 429);
    assert!(retry_after.is_some());
    let secret = service.secret("bystander").to_owned();
    let (status, _, body, _) = attempt(&service, "bystander", &secret, "198.51.100.20");
    assert_eq!(status, 200, "other addresses are unaffected: {body}");
}

#[test]
fn failed_logins_are_throttled_per_user_and_address() {
    let service = builder()
        .serve_arg("--throttle-account-failures", "2")
        .start();
    let browser = Browser::new();
    let pkce = Pkce::new();
    let url = authorize_url(
        &service.base_url(),
        &code_request(APP, APP_REDIRECT, "read:data", "s", &pkce),
    );
    let attacker = [("X-Forwarded-For", "203.0.113.5")];
    let mut form = browser.get(&url).form();
    for _ in 0..2 {
        let page = browser.submit(
            &form,
            &[
                ("username", ALICE),
                ("password", "guess-guess"),
                ("decision", "approve"),
            ],
            &attacker,
        );
        assert_eq!(page.status, 200);
        assert!(page.body.contains("incorrect"));
        form = page.form();
    }
    let blocked = browser.submit(
        &form,
        &[
            ("username", ALICE),
            ("password", PASSWORD),
            ("decision", "approve"),
        ],
        &attacker,
    );
    assert_eq!(blocked.status, 429, "{}", blocked.body);
    assert!(
        blocked
            .header("retry-after")
            .parse::<u64>()
            .expect("seconds")
            >= 1
    );
    assert!(
        blocked.body.contains("Too many failed sign-in attempts"),
        "{}",
        blocked.body
    );

    // Alice herself, from her own address, logs in with the same form.
    let alice = [("X-Forwarded-For", "198.51.100.7")];
    let approved = browser.submit(
        &blocked.form(),
        &[
            ("username", ALICE),
            ("password", PASSWORD),
            ("decision", "approve"),
        ],
        &alice,
    );
    assert!(approved.redirect_params().contains_key("code"));
}

#[test]
fn cli_manages_users_and_public_clients() {
    let mut service = builder().start();
    let listed = service.cli(&["users", "list"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains(ALICE) && listed.contains(service.user_id(ALICE)),
        "{listed}"
    );
    assert!(!listed.contains("argon2"), "no hashes: {listed}");

    let bob = service.add_user("bob", "another long password", "read:data");
    assert_ne!(bob, service.user_id(ALICE));
    for (what, args, stdin_password) in [
        (
            "duplicate user",
            vec!["users", "add", "--username", "bob"],
            "another long password",
        ),
        (
            "short password",
            vec!["users", "add", "--username", "carol"],
            "short",
        ),
        (
            "bad username",
            vec!["users", "add", "--username", "car ol"],
            "a long password",
        ),
    ] {
        let output = cli_with_stdin(&service, &args, stdin_password);
        assert!(!output.status.success(), "{what} must fail");
    }
    let help = service.cli(&["users", "add", "--help"]);
    assert!(
        !String::from_utf8_lossy(&help.stdout).contains("--password"),
        "no password flag"
    );

    let clients = service.cli(&["clients", "list"]);
    let clients = String::from_utf8_lossy(&clients.stdout).into_owned();
    assert!(
        clients.contains("public") && clients.contains(APP_REDIRECT),
        "{clients}"
    );
    for (what, args) in [
        (
            "public client without redirect URI",
            vec!["clients", "add", "--id", "spa", "--public"],
        ),
        (
            "http redirect off loopback",
            vec![
                "clients",
                "add",
                "--id",
                "spa",
                "--public",
                "--redirect-uri",
                "http://spa.example/cb",
            ],
        ),
        (
            "fragment",
            vec![
                "clients",
                "add",
                "--id",
                "spa",
                "--public",
                "--redirect-uri",
                "https://spa.example/cb#x",
            ],
        ),
        (
            "javascript",
            vec![
                "clients",
                "add",
                "--id",
                "spa",
                "--public",
                "--redirect-uri",
                "javascript:alert(1)",
            ],
        ),
    ] {
        assert!(!service.cli(&args).status.success(), "{what} must fail");
    }
    let public = service.cli(&[
        "clients",
        "add",
        "--id",
        "spa",
        "--public",
        "--redirect-uri",
        "https://spa.example/cb",
    ]);
    let public = String::from_utf8_lossy(&public.stdout).into_owned();
    assert!(
        public.contains("client_type: public") && !public.contains("client_secret"),
        "{public}"
    );

    // Removing a user ends their grants and revokes their access tokens at once.
    let (access, refresh_token) = app_tokens(&service, "read:data");
    assert!(service
        .cli(&["users", "remove", "--username", ALICE])
        .status
        .success());
    assert_invalid_grant(
        refresh(&service.token_url(), APP, &refresh_token, None),
        "removed user",
    );
    assert_inactive(&service, &access, "removed user's access token");
    assert!(!service
        .cli(&["users", "remove", "--username", ALICE])
        .status
        .success());
}

fn cli_with_stdin(service: &TokenService, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(support::artifacts::token_service_binary())
        .arg("--db")
        .arg(service.db_path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("CLI");
    // A command refused before it reads its input closes the pipe: not an error here.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{stdin}\n").as_bytes());
    child.wait_with_output().expect("output")
}

#[test]
fn loopback_redirect_uris_with_impossible_ports_are_refused() {
    let mut service = builder().start();
    for port in ["0", "65536", "99999"] {
        let uri = format!("http://127.0.0.1:{port}/cb");
        let refused = service.cli(&[
            "clients",
            "add",
            "--id",
            "desktop",
            "--public",
            "--redirect-uri",
            &uri,
        ]);
        assert!(!refused.status.success(), "{uri} registered");
    }
    service.register_client(&support::token_service::ClientSpec {
        client_id: "desktop".to_owned(),
        scopes: "read:data".to_owned(),
        public: true,
        redirect_uris: vec!["http://127.0.0.1/cb".to_owned()],
    });
    // A registration without a port matches any real port at request time, never 0
    // or one past 65535: the user sees an error page and is not redirected.
    let pkce = Pkce::new();
    let browser = Browser::new();
    for (port, status) in [
        ("0", 400),
        ("65536", 400),
        ("4294967297", 400),
        ("53123", 200),
    ] {
        let redirect = format!("http://127.0.0.1:{port}/cb");
        let page = browser.get(&authorize_url(
            &service.base_url(),
            &code_request("desktop", &redirect, "read:data", "s", &pkce),
        ));
        assert_eq!(page.status, status, "port {port}: {}", page.body);
        if status == 400 {
            assert!(
                page.body.contains("The redirect_uri is not registered"),
                "{}",
                page.body
            );
        }
    }
}
