//! The token service under abuse (issue 10): many guesses at once, floods of
//! anonymous sign-in requests, sockets that idle or trickle their headers. Real binary,
//! real sockets; each test asserts what a user or operator relies on.

use std::collections::BTreeMap;
use std::sync::Barrier;
use std::thread;

use serde_json::Value;
use support::http_agent;
use support::oauth::{authorize_url, code_request, Browser, LoginForm, Pkce};
use support::token_service::{basic_authorization, TokenService, TokenServiceBuilder};

const APP: &str = "mobile";
const APP_REDIRECT: &str = "com.example.mobile:/oauth/callback";
const ALICE: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";
/// Every guess comes from here (X-Forwarded-For, trusted from loopback).
const ATTACKER: &str = "203.0.113.66";
/// The service's default `--throttle-account-failures`.
const ACCOUNT_LIMIT: usize = 10;

fn builder() -> TokenServiceBuilder {
    TokenService::builder()
        .public_client(APP, "read:data", &[APP_REDIRECT])
        .client("victim", "read:data")
        .user(ALICE, PASSWORD)
}

/// Runs `attempt` on `count` threads released at the same instant; returns how many
/// answers had each status.
fn all_at_once(count: usize, attempt: impl Fn(usize) -> u16 + Sync) -> BTreeMap<u16, usize> {
    let start = Barrier::new(count);
    let statuses: Vec<u16> = thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .map(|index| {
                let (start, attempt) = (&start, &attempt);
                scope.spawn(move || {
                    start.wait();
                    attempt(index)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("attempt thread"))
            .collect()
    });
    let mut counts = BTreeMap::new();
    for status in statuses {
        *counts.entry(status).or_default() += 1;
    }
    counts
}

#[test]
fn concurrent_wrong_secrets_and_passwords_are_checked_at_most_the_limit() {
    let service = builder().start();

    // Many good requests at once from one address are not mistaken for guessing:
    // twice the limit in flight, all answered with tokens.
    let secret = service.secret("victim").to_owned();
    let good = all_at_once(2 * ACCOUNT_LIMIT, |_| {
        service
            .request_token("victim", &secret, None)
            .status()
            .as_u16()
    });
    assert_eq!(
        good,
        BTreeMap::from([(200, 2 * ACCOUNT_LIMIT)]),
        "good secrets"
    );

    // 50 wrong client secrets at once: 10 are checked (401), the other 40 are refused
    // before any hashing (429). Before the fix every one of them was checked.
    let secrets = all_at_once(50, |index| {
        let mut response = http_agent()
            .post(service.token_url())
            .header(
                "Authorization",
                basic_authorization("victim", &format!("guess-{index}")),
            )
            .header("X-Forwarded-For", ATTACKER)
            .send_form([("grant_type", "client_credentials")])
            .expect("POST /token");
        let status = response.status().as_u16();
        let body: Value = response.body_mut().read_json().expect("JSON error");
        let expected = match status {
            401 => "invalid_client",
            429 => "too_many_requests",
            other => panic!("unexpected {other}: {body}"),
        };
        assert_eq!(body["error"], expected);
        status
    });
    assert_eq!(
        secrets,
        BTreeMap::from([(401, ACCOUNT_LIMIT), (429, 50 - ACCOUNT_LIMIT)]),
        "wrong secrets"
    );

    // 50 wrong passwords for Alice at once, each on its own sign-in form.
    let url = authorize_url(
        &service.base_url(),
        &code_request(APP, APP_REDIRECT, "read:data", "s", &Pkce::new()),
    );
    let forms: Vec<LoginForm> = (0..50).map(|_| Browser::new().get(&url).form()).collect();
    let passwords = all_at_once(50, |index| {
        let page = Browser::new().submit(
            &forms[index],
            &[
                ("username", ALICE),
                ("password", &format!("wrong-password-{index}")),
                ("decision", "approve"),
            ],
            &[("X-Forwarded-For", ATTACKER)],
        );
        match page.status {
            200 => assert!(page.body.contains("incorrect"), "{}", page.body),
            429 => assert!(
                page.body.contains("Too many failed sign-in attempts")
                    && page.header("retry-after").parse::<u64>().is_ok(),
                "{}",
                page.body
            ),
            other => panic!("unexpected {other}: {}", page.body),
        }
        page.status
    });
    assert_eq!(
        passwords,
        BTreeMap::from([(200, ACCOUNT_LIMIT), (429, 50 - ACCOUNT_LIMIT)]),
        "wrong passwords"
    );

    // The lock-out is bounded: one drain step of the account bucket (900 s / 10).
    let mut response = http_agent()
        .post(service.token_url())
        .header("Authorization", basic_authorization("victim", "again"))
        .header("X-Forwarded-For", ATTACKER)
        .send_form([("grant_type", "client_credentials")])
        .expect("POST /token");
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .expect("Retry-After seconds");
    assert!((1..=90).contains(&retry_after), "{retry_after}");
    let _ = response.body_mut().read_to_string();
}
