//! Fleet-wide limits through Envoy's rate-limit service protocol (RLS v3), on the
//! native path: Tollgate authenticates and forwards the verified identity, Envoy's
//! `ratelimit` filter after it asks tollgate-rls-backend (Limitador, counters in a
//! real Redis) with [("policy", name), ("client_id", id)]. Several Envoys share the
//! one limit.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::envoy::counter;
use support::fleet::{Fleet, DOMAIN};

/// `fleet-per-client` of the fleet sample, with the given limit per minute.
fn per_client_limits(max: u64) -> String {
    format!(
        "- namespace: {DOMAIN}\n  name: fleet-per-client\n  max_value: {max}\n  seconds: 60\n  \
         conditions: [\"descriptors[0].policy == 'fleet-per-client'\"]\n  \
         variables: [\"descriptors[0].client_id\"]\n"
    )
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn get(agent: &ureq::Agent, url: &str, token: &str) -> Reply {
    let mut resp = agent
        .get(url)
        .header("authorization", &format!("Bearer {token}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    let mut headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    headers.sort();
    Reply {
        status: resp.status().as_u16(),
        headers,
        body,
    }
}

fn stat(backend: &support::rls::RlsBackend, name: &str) -> u64 {
    backend.stats()[name].as_u64().unwrap()
}

fn ratelimit_stat(envoy: &support::envoy::Envoy, name: &str) -> u64 {
    counter(
        &envoy.stats(),
        &format!("cluster.sample_api.ratelimit.{name}"),
    )
}

/// One client spread over two Envoys is held to the one limit: exactly, when its
/// requests do not overlap; within the number of requests in flight, when they do
/// (Limitador's Redis storage reads, then increments).
#[test]
fn two_envoys_share_one_limit() {
    const LIMIT: usize = 20;
    let fleet = Fleet::builder(&per_client_limits(LIMIT as u64), 2).start();
    let urls: Vec<String> = fleet.envoys.iter().map(|e| e.url("/data")).collect();

    let agent = support::http_agent();
    let alice = fleet.token("alice");
    let statuses: Vec<u16> = (0..50)
        .map(|i| get(&agent, &urls[i % 2], &alice).status)
        .collect();
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        admitted, LIMIT,
        "sequential, alternating Envoys: {statuses:?}"
    );
    assert!(statuses[LIMIT..].iter().all(|s| *s == 429), "{statuses:?}");
    // Both Envoys refused some: the limit is the fleet's, not each process's.
    for envoy in &fleet.envoys {
        assert!(ratelimit_stat(envoy, "over_limit") > 0, "{}", envoy.stats());
    }

    // 8 clients in parallel, 4 on each Envoy, 10 requests each.
    const THREADS: usize = 8;
    let bob = fleet.token("bob");
    let admitted: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (url, bob) = (&urls[t % 2], &bob);
                s.spawn(move || {
                    let agent = support::http_agent();
                    (0..10)
                        .filter(|_| {
                            let status = get(&agent, url, bob).status;
                            assert!(status == 200 || status == 429, "status {status}");
                            status == 200
                        })
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    eprintln!(
        "fleet accuracy: {admitted} admitted of 80 concurrent requests for a limit of {LIMIT}"
    );
    assert!(
        (LIMIT..LIMIT + THREADS).contains(&admitted),
        "admitted {admitted} for a limit of {LIMIT} with {THREADS} requests in flight"
    );

    let stats = fleet.backend.stats();
    assert_eq!(stats["calls"], 130, "{stats}");
    assert_eq!(stats["errors"], 0, "{stats}");
    assert_eq!(
        stats["ok"].as_u64().unwrap() as usize,
        LIMIT + admitted,
        "{stats}"
    );
    // Limitador's own counters: one per client id, both used up.
    let counters = fleet.backend.counters(DOMAIN);
    let counters = counters.as_array().unwrap();
    assert_eq!(counters.len(), 2, "{counters:?}");
    for c in counters {
        assert_eq!(c["remaining"], 0, "{c}");
        assert_eq!(c["limit"]["name"], "fleet-per-client", "{c}");
    }
}

/// What a client sees from each refusal on one rule with a local policy (Tollgate,
/// checked first, `response_headers` on) and the fleet-wide one (the native filter):
/// the remote limit (2) refuses the third and fourth requests, the local one (4) the
/// fifth, without a call to the backend.
#[test]
fn native_and_local_refusals_and_no_remote_call_after_a_local_one() {
    let fleet = Fleet::builder(&per_client_limits(2), 1)
        .local_limits(
            json!({"policies": {"local": {"limit": 4, "window": "60s", "key": "subject"}},
                   "response_headers": true}),
        )
        .start();
    let envoy = &fleet.envoys[0];
    let (agent, url, token) = (
        support::http_agent(),
        envoy.url("/data"),
        fleet.token("carol"),
    );
    let replies: Vec<Reply> = (0..5).map(|_| get(&agent, &url, &token)).collect();
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 429, 429, 429]);

    // The native filter's 429, with the sample's local_reply_config mapper.
    let native = &replies[2];
    eprintln!("native 429: {:?} {:?}", native.headers, native.body);
    assert_eq!(native.header("x-envoy-ratelimited"), Some("true"));
    assert_eq!(
        native.header("x-ratelimit-limit"),
        Some("2, 2;w=60;name=\"fleet-per-client\"")
    );
    assert_eq!(native.header("x-ratelimit-remaining"), Some("0"));
    let reset: u64 = native.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!((1..=60).contains(&reset), "reset {reset}");
    assert_eq!(
        native.header("retry-after"),
        Some(reset.to_string().as_str())
    );
    assert_eq!(native.header("content-type"), Some("application/json"));
    assert_eq!(native.header("cache-control"), Some("no-store"));
    let body: Value = serde_json::from_str(&native.body).unwrap();
    assert_eq!(body["error"], "rate_limited");
    // What the native path cannot give: the RateLimit headers of the fleet policy.
    // Tollgate, having admitted the request before the native filter ran, put its
    // local policy's on it: a 429 that says one request remains.
    assert_eq!(
        native.header("ratelimit-policy"),
        Some("\"local\";q=4;w=60")
    );
    assert!(native
        .header("ratelimit")
        .unwrap()
        .starts_with("\"local\";r=1;"));

    // Tollgate's own 429.
    let local = &replies[4];
    eprintln!("local 429: {:?} {:?}", local.headers, local.body);
    assert_eq!(local.header("x-envoy-ratelimited"), None);
    assert!(local.header("retry-after").is_some());
    assert_eq!(local.header("ratelimit-policy"), Some("\"local\";q=4;w=60"));
    assert!(local
        .header("ratelimit")
        .unwrap()
        .starts_with("\"local\";r=0;t="));
    let body: Value = serde_json::from_str(&local.body).unwrap();
    assert_eq!(body["error"], "rate_limited");

    // Request 5 never reached the backend.
    let stats = fleet.backend.stats();
    assert_eq!(
        (stats["calls"].as_u64(), stats["over_limit"].as_u64()),
        (Some(4), Some(2)),
        "{stats}"
    );
    assert_eq!(ratelimit_stat(envoy, "over_limit"), 2);
}

fn fail_closed(config: &mut support::envoy::EnvoyConfig) {
    config.replace("failure_mode_deny: false", "failure_mode_deny: true");
}

/// The backend stopped: the sample fails open (Envoy's default), a
/// `failure_mode_deny: true` variant answers 500.
#[test]
fn native_failure_modes_with_the_backend_stopped() {
    let mut open = Fleet::builder(&per_client_limits(100), 1).start();
    let mut closed = Fleet::builder(&per_client_limits(100), 1)
        .envoy_config(fail_closed)
        .start();
    let agent = support::http_agent();
    for fleet in [&mut open, &mut closed] {
        let url = fleet.envoys[0].url("/data");
        assert_eq!(get(&agent, &url, &fleet.token("dave")).status, 200);
        fleet.backend.stop();
    }

    let reply = get(&agent, &open.envoys[0].url("/data"), &open.token("dave"));
    assert_eq!(reply.status, 200);
    assert_eq!(ratelimit_stat(&open.envoys[0], "error"), 1);
    assert_eq!(ratelimit_stat(&open.envoys[0], "failure_mode_allowed"), 1);

    let reply = get(
        &agent,
        &closed.envoys[0].url("/data"),
        &closed.token("dave"),
    );
    eprintln!(
        "fail-closed: {} {:?} {:?}",
        reply.status, reply.headers, reply.body
    );
    assert_eq!(reply.status, 500);
    assert_eq!(ratelimit_stat(&closed.envoys[0], "error"), 1);
    assert_eq!(ratelimit_stat(&closed.envoys[0], "failure_mode_allowed"), 0);
}

/// A backend slower than the filter's timeout (0.25 s in the sample) counts as
/// failed: failing open, the request goes on after the timeout, not after the
/// backend's answer.
#[test]
fn native_slow_backend_hits_the_timeout() {
    let fleet = Fleet::builder(&per_client_limits(100), 1)
        .backend(|b| b.delay(Duration::from_secs(2)))
        .start();
    let (agent, url, token) = (
        support::http_agent(),
        fleet.envoys[0].url("/data"),
        fleet.token("erin"),
    );
    let started = Instant::now();
    let reply = get(&agent, &url, &token);
    let took = started.elapsed();
    assert_eq!(reply.status, 200);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
    assert_eq!(ratelimit_stat(&fleet.envoys[0], "error"), 1);
    assert_eq!(ratelimit_stat(&fleet.envoys[0], "failure_mode_allowed"), 1);
    assert!(stat(&fleet.backend, "calls") >= 1);
}

/// A limit whose condition cannot be evaluated for a request (it reads a second
/// descriptor; Envoy sends one) makes the backend answer an error, which the
/// sample lets through, and the backend goes on answering.
#[test]
fn a_limit_the_backend_cannot_evaluate_is_an_error_answer() {
    let limits = format!(
        "- namespace: {DOMAIN}\n  max_value: 1\n  seconds: 60\n  \
         conditions: [\"descriptors[1].policy == 'fleet-per-client'\"]\n  variables: []\n"
    );
    let fleet = Fleet::builder(&limits, 1).start();
    let (agent, url, token) = (
        support::http_agent(),
        fleet.envoys[0].url("/data"),
        fleet.token("frank"),
    );
    for _ in 0..2 {
        assert_eq!(get(&agent, &url, &token).status, 200);
    }
    // Envoy may give up (0.25 s) before the backend has answered: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&fleet.backend, "errors") < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = fleet.backend.stats();
    assert_eq!(
        (stats["calls"].as_u64(), stats["errors"].as_u64()),
        (Some(2), Some(2)),
        "{stats}"
    );
    assert_eq!(ratelimit_stat(&fleet.envoys[0], "error"), 2);
    assert_eq!(ratelimit_stat(&fleet.envoys[0], "failure_mode_allowed"), 2);
}
