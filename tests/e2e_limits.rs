//! End-to-end rate limits, quotas and brute-force protection, through real
//! Envoy running two workers: limits must hold across workers.

use jwt_simple::prelude::*;
use serde_json::{json, Value};
use socket2::{Domain, Socket, Type};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::envoy::counter;
use support::stack::{claims, Stack, TEST_ISSUER};

/// Replaces the sample's rate-limit section and every rule's policies.
fn set_rate_limits(c: &mut Value, rate_limits: Value) {
    c["rate_limits"] = rate_limits;
    for rule in c["rules"].as_array_mut().unwrap() {
        rule.as_object_mut().unwrap().remove("rate_limits");
    }
}

/// Sets the rate-limit section and attaches `limits` to the `GET /data` and
/// `/public/*` rules of the sample configuration (and to no other rule).
fn with_limits(c: &mut Value, rate_limits: Value, limits: &[&str]) {
    set_rate_limits(c, rate_limits);
    for rule in c["rules"].as_array_mut().unwrap() {
        let m = &rule["match"];
        let get_data =
            m["path"] == "/data" && m["methods"].as_array().unwrap().contains(&json!("GET"));
        if get_data || m["prefix"] == "/public/" {
            rule["rate_limits"] = json!(limits);
        }
    }
}

fn token(stack: &Stack, client: &str, tenant: &str) -> String {
    let c = claims(
        TEST_ISSUER,
        json!({"client_id": client, "sub": client, "tenant": tenant}),
    );
    stack.keys.es256.sign(c).unwrap()
}

struct Reply {
    status: u16,
    headers: ureq::http::HeaderMap,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn get(agent: &ureq::Agent, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = agent.get(url);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let mut resp = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let _ = resp.body_mut().read_to_string();
    Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
    }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn twice_the_limit_across_two_workers_gets_the_limit() {
    let stack = Stack::builder()
        .plugin_config(|c| {
            with_limits(
                c,
                json!({"policies": {"per-client": {"limit": 20, "window": "1s", "burst": 5, "key": "client_id"}}}),
                &["per-client"],
            )
        })
        .start();
    let token = token(&stack, "busy-client", "acme");
    let url = stack.envoy.url("/data");
    // 40 requests/s for 5 s, open loop, over 8 connections (spread over both workers).
    let (threads, interval, total) = (8u32, Duration::from_millis(25), 200u32);
    let start = Instant::now() + Duration::from_millis(200);
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (url, auth) = (url.clone(), bearer(&token));
            std::thread::spawn(move || {
                let agent = support::http_agent();
                let mut ok = 0;
                for k in (i..total).step_by(threads as usize) {
                    let at = start + interval * k;
                    if let Some(wait) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let r = get(&agent, &url, &[("authorization", &auth)]);
                    match r.status {
                        200 => ok += 1,
                        429 => {}
                        other => panic!("unexpected status {other}"),
                    }
                }
                ok
            })
        })
        .collect();
    let ok: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let elapsed = start.elapsed().as_secs_f64();
    // The burst, plus 20/s over the run; a per-worker limit would admit about twice that.
    let expected = 5.0 + 20.0 * elapsed;
    let error = (f64::from(ok) - expected).abs() / expected;
    eprintln!(
        "admitted {ok} of {total} in {elapsed:.2}s at 40/s; expected {expected:.1}; error {:.1}%",
        error * 100.0
    );
    assert!(
        error <= 0.05,
        "{ok} requests admitted in {elapsed:.2}s, expected {expected:.0} (±5%)"
    );
    let stats = stack.envoy.settled_stats();
    assert_eq!(
        u64::from(ok),
        counter(&stats, "tollgate.decision.authenticated")
    );
    assert_eq!(
        u64::from(total - ok),
        counter(&stats, "tollgate.decision.rate_limited")
    );
}

#[test]
fn limited_responses_say_when_to_retry_and_recover() {
    let stack = Stack::builder()
        .plugin_config(|c| {
            with_limits(
                c,
                json!({
                    "policies": {"per-client": {"limit": 2, "window": "2s", "key": "client_id"}},
                    "response_headers": true
                }),
                &["per-client"],
            )
        })
        .start();
    let agent = support::http_agent();
    let auth = bearer(&token(&stack, "c1", "acme"));
    let url = stack.envoy.url("/data");
    let first = get(&agent, &url, &[("authorization", &auth)]);
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("ratelimit-policy"),
        Some("\"per-client\";q=2;w=2")
    );
    assert_eq!(first.header("ratelimit"), Some("\"per-client\";r=1;t=1"));
    assert_eq!(get(&agent, &url, &[("authorization", &auth)]).status, 200);
    let limited = get(&agent, &url, &[("authorization", &auth)]);
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(
        limited.header("ratelimit-policy"),
        Some("\"per-client\";q=2;w=2")
    );
    assert_eq!(
        limited.header("ratelimit"),
        Some("\"per-client\";r=0;t=1"),
        "t agrees with Retry-After"
    );
    assert_eq!(limited.header("content-type"), Some("application/json"));
    // Another client has its own budget.
    let other = bearer(&token(&stack, "c2", "acme"));
    assert_eq!(get(&agent, &url, &[("authorization", &other)]).status, 200);
    std::thread::sleep(Duration::from_millis(1_050));
    assert_eq!(
        get(&agent, &url, &[("authorization", &auth)]).status,
        200,
        "no recovery after Retry-After"
    );
}

#[test]
fn a_tenant_quota_is_shared_by_its_clients() {
    let stack = Stack::builder()
        .plugin_config(|c| {
            with_limits(
                c,
                json!({"policies": {
                    "per-client": {"limit": 100, "window": "1s", "key": "client_id"},
                    "tenant-quota": {"limit": 5, "window": "3600s", "key": {"claim": "tenant"}}
                }}),
                &["per-client", "tenant-quota"],
            )
        })
        .start();
    let agent = support::http_agent();
    let url = stack.envoy.url("/data");
    let (a, b) = (
        bearer(&token(&stack, "a", "acme")),
        bearer(&token(&stack, "b", "acme")),
    );
    for auth in [&a, &a, &a, &b, &b] {
        assert_eq!(get(&agent, &url, &[("authorization", auth)]).status, 200);
    }
    for auth in [&a, &b] {
        let r = get(&agent, &url, &[("authorization", auth)]);
        assert_eq!(
            r.status, 429,
            "the tenant's quota is spent for all its clients"
        );
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"tenant-quota\";q=5;w=3600")
        );
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(
            (700..=721).contains(&retry),
            "one request frees every 720 s: {retry}"
        );
    }
    let c = bearer(&token(&stack, "c", "globex"));
    assert_eq!(
        get(&agent, &url, &[("authorization", &c)]).status,
        200,
        "other tenants are unaffected"
    );
}

/// GET over a connection from a chosen loopback source address.
fn get_from(source: &str, port: u16, path: &str, authorization: &str) -> (u16, String) {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    sock.bind(&from.into()).unwrap();
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    sock.connect(&to.into()).unwrap();
    let mut stream: TcpStream = sock.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: api\r\nAuthorization: {authorization}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

#[test]
fn brute_force_locks_out_one_address_only() {
    let stack = Stack::builder()
        .plugin_config(|c| {
            set_rate_limits(
                c,
                json!({"brute_force": {"max_failures": 5, "window": "60s", "lockout": "30s"}}),
            );
        })
        .start();
    let port = stack.ports.listener;
    let good = bearer(&token(&stack, "good", "acme"));
    let forged = bearer(&format!("{}x", token(&stack, "attacker", "acme")));
    for i in 1..=5 {
        let (status, _) = get_from("127.0.0.2", port, "/data", &forged);
        assert_eq!(status, 401, "failure {i} of max_failures 5 is still judged");
    }
    let (status, reply) = get_from("127.0.0.2", port, "/data", &good);
    assert_eq!(status, 429, "locked out, even with a good token:\n{reply}");
    let lower = reply.to_ascii_lowercase();
    assert!(
        lower.contains("retry-after: 30") || lower.contains("retry-after: 29"),
        "{reply}"
    );
    assert!(reply.contains("\"error\":\"rate_limited\""), "{reply}");
    let (status, reply) = get_from("127.0.0.3", port, "/data", &good);
    assert_eq!(status, 200, "another address is unaffected:\n{reply}");
    let stats = stack.envoy.settled_stats();
    assert!(counter(&stats, "tollgate.decision.locked_out") >= 1);
    assert!(stack.envoy.log().contains("locking out 127.0.0.2"));
}

#[test]
fn idle_counters_are_reclaimed_and_memory_is_bounded() {
    let stack = Stack::builder()
        .plugin_config(|c| {
            with_limits(
                c,
                json!({
                    "policies": {"per-caller": {"limit": 1, "window": "8s", "key": {"header": "x-caller"}}},
                    "table": {"slots": 64, "entries_per_slot": 32}
                }),
                &["per-caller"],
            )
        })
        .start();
    let url = stack.envoy.url("/public/ping");
    let send = |from: u32, to: u32| {
        let handles: Vec<_> = (0..4u32)
            .map(|t| {
                let url = url.clone();
                std::thread::spawn(move || {
                    let agent = support::http_agent();
                    for i in (from + t..to).step_by(4) {
                        let key = format!("caller-{i}");
                        assert_eq!(get(&agent, &url, &[("x-caller", &key)]).status, 200);
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
    };
    let bound = 64 * 32;
    send(0, 3_000);
    let stats = stack.envoy.settled_stats();
    let live = counter(&stats, "tollgate.ratelimit.entries");
    assert!(
        live > 0 && live <= bound,
        "{live} live counters (bound {bound})"
    );
    assert!(
        counter(&stats, "tollgate.ratelimit.evictions") > 0,
        "3000 keys in a 2048-entry table must evict"
    );
    // Once idle (a counter lives one 8 s window), every counter is reclaimed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while counter(&stack.envoy.stats(), "tollgate.ratelimit.entries") > 0
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        counter(&stack.envoy.stats(), "tollgate.ratelimit.entries"),
        0,
        "idle counters were not reclaimed"
    );
    // And a new wave of keys fits in the same bound again.
    send(3_000, 5_000);
    assert!(counter(&stack.envoy.stats(), "tollgate.ratelimit.entries") <= bound);
}
