//! The token service under abuse (issue 10): many guesses at once, floods of
//! anonymous sign-in requests, sockets that idle or trickle their headers. Real binary,
//! real sockets; each test asserts what a user or operator relies on.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

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
        .user(ALICE, PASSWORD, "read:data")
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

/// How long after `started` the server closed `socket` (read returns end of stream or
/// a reset); panics if it is still open after `give_up`.
fn closed_after(socket: &mut TcpStream, started: Instant, give_up: Duration) -> Duration {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let mut buffer = [0u8; 1024];
    loop {
        match socket.read(&mut buffer) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return started.elapsed(),
        }
        assert!(
            started.elapsed() < give_up,
            "the server kept the connection open for {give_up:?}"
        );
    }
}

fn connect(service: &TokenService) -> TcpStream {
    TcpStream::connect(("127.0.0.1", service.port())).expect("connect")
}

/// `GET /healthz` on a fresh connection; the status.
fn healthz(service: &TokenService) -> u16 {
    http_agent()
        .get(service.url("/healthz"))
        .call()
        .expect("GET /healthz")
        .status()
        .as_u16()
}

#[test]
fn idle_and_slow_header_connections_are_closed_within_their_timeouts() {
    let service = TokenService::builder()
        .serve_arg("--keep-alive-timeout", "2")
        .serve_arg("--header-read-timeout", "3")
        .start();
    let slack = Duration::from_millis(1_500);

    // A socket that never sends anything.
    let started = Instant::now();
    let mut idle = connect(&service);
    let after = closed_after(&mut idle, started, Duration::from_secs(20));
    eprintln!("idle socket closed after {after:?} (keep-alive timeout 2 s)");
    assert!(
        after >= Duration::from_millis(1_800) && after <= Duration::from_secs(2) + slack,
        "idle socket closed after {after:?}"
    );

    // Idle between two requests on one connection: the same timeout.
    let mut kept = connect(&service);
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    kept.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut response = [0u8; 512];
    let read = kept.read(&mut response).expect("response");
    assert!(response[..read].starts_with(b"HTTP/1.1 200"));
    let answered = Instant::now();
    let after = closed_after(&mut kept, answered, Duration::from_secs(20));
    eprintln!("kept-alive socket closed {after:?} after its answer (keep-alive timeout 2 s)");
    assert!(
        after <= Duration::from_secs(2) + slack,
        "kept-alive socket closed after {after:?}"
    );

    // Headers one byte every 500 ms: never idle, but the head takes too long.
    let mut slow = connect(&service);
    let started = Instant::now();
    let head =
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed = None;
    for byte in head {
        if slow.write_all(&[*byte]).is_err() {
            closed = Some(started.elapsed());
            break;
        }
        slow.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("read timeout");
        match slow.read(&mut [0u8; 64]) {
            Ok(_) => {
                closed = Some(started.elapsed());
                break;
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                closed = Some(started.elapsed());
                break;
            }
        }
    }
    let after = closed.expect("the slow head was let through to the end");
    eprintln!("slow-header socket closed after {after:?} (header-read timeout 3 s)");
    assert!(
        after >= Duration::from_millis(2_800) && after <= Duration::from_secs(3) + slack,
        "slow-header socket closed after {after:?}"
    );
    assert_eq!(healthz(&service), 200);
}

#[test]
fn healthz_answers_while_hundreds_of_idle_sockets_are_open() {
    let service = TokenService::builder().start();
    let idle: Vec<TcpStream> = (0..300).map(|_| connect(&service)).collect();
    let started = Instant::now();
    assert_eq!(healthz(&service), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(idle);
}

#[test]
fn at_the_connection_cap_new_connections_wait_for_a_slot_and_the_cap_is_logged() {
    let service = TokenService::builder()
        .serve_arg("--max-connections", "100")
        .serve_arg("--keep-alive-timeout", "1")
        .start();
    // 300 idle sockets: 100 are served, 200 wait in the backlog; each is closed one
    // keep-alive timeout after it got its slot.
    let idle: Vec<TcpStream> = (0..300).map(|_| connect(&service)).collect();
    let started = Instant::now();
    assert_eq!(healthz(&service), 200);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        service
            .log()
            .contains("100 connections open, the --max-connections cap"),
        "{}",
        service.log()
    );
    drop(idle);
}

#[test]
fn a_file_limit_too_low_for_the_connection_cap_is_refused_at_start() {
    use std::os::unix::process::CommandExt as _;
    let service = TokenService::builder().create();
    let mut serve = std::process::Command::new(support::artifacts::token_service_binary());
    serve.arg("--db").arg(service.db_path()).args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--max-connections",
        "1000",
    ]);
    // SAFETY: only setrlimit between fork and exec, which is async-signal-safe.
    unsafe {
        serve.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 256,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let output = serve.output().expect("serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "--max-connections 1000 needs 1064 open files, but the limit is 256 (hard 256)"
        ),
        "{stderr}"
    );
}

#[test]
fn a_flood_of_anonymous_authorize_requests_does_not_invalidate_an_open_form() {
    let service = builder().start();
    let pkce = Pkce::new();
    let url = authorize_url(
        &service.base_url(),
        &code_request(APP, APP_REDIRECT, "read:data", "before-the-flood", &pkce),
    );
    let browser = Browser::new();
    let form = browser.get(&url).form();

    // 12,000 anonymous requests, more than the 10,000 forms the server used to hold
    // (it dropped the oldest to make room).
    let flood_pkce = Pkce::new();
    thread::scope(|scope| {
        for worker in 0..4 {
            let service = &service;
            let flood_pkce = &flood_pkce;
            scope.spawn(move || {
                let agent = http_agent();
                for index in 0..3_000 {
                    let state = format!("flood-{worker}-{index}");
                    let url = authorize_url(
                        &service.base_url(),
                        &code_request(APP, APP_REDIRECT, "read:data", &state, flood_pkce),
                    );
                    let mut response = agent.get(&url).call().expect("GET /authorize");
                    assert_eq!(response.status(), 200);
                    let _ = response.body_mut().read_to_string();
                }
            });
        }
    });

    // Alice signs in with the form she opened before the flood.
    let approve = [
        ("username", ALICE),
        ("password", PASSWORD),
        ("decision", "approve"),
    ];
    let params = browser.submit(&form, &approve, &[]).redirect_params();
    assert!(params.contains_key("code"), "{params:?}");
    assert_eq!(params["state"], "before-the-flood");

    // A form is approved once.
    let again = browser.submit(&form, &approve, &[]);
    assert_eq!(again.status, 400, "{}", again.body);
    assert!(
        again.body.contains("expired or was already used"),
        "{}",
        again.body
    );

    // A form whose signed request was changed (another redirect URI) is refused.
    let fresh = browser.get(&url).form();
    let mut forged = fresh;
    for (name, value) in &mut forged.hidden {
        if name == "request" {
            let (payload, tag) = value.split_once('.').expect("payload.tag");
            let mut json: Value = serde_json::from_slice(
                &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                    .expect("base64url"),
            )
            .expect("JSON");
            json["redirect_uri"] = "com.evil.app:/steal".into();
            *value = format!(
                "{}.{tag}",
                base64::Engine::encode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    serde_json::to_vec(&json).expect("JSON"),
                )
            );
        }
    }
    let refused = browser.submit(&forged, &approve, &[]);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("expired or was already used"),
        "{}",
        refused.body
    );
}
