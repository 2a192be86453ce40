//! Fleet-wide limits through Envoy's rate-limit service protocol (RLS v3): Tollgate's
//! remote policy `fleet-per-client` asks tollgate-rls-backend (Limitador, counters in
//! a real Redis) with [("policy", name), ("client_id", id)], several Envoys sharing
//! the one limit; and, for comparison, the native path (Envoy's `ratelimit` filter
//! after Tollgate, on the identity header Tollgate set).

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::envoy::counter;
use support::fleet::{add_rls_cluster, Fleet, DOMAIN, FLEET_POLICY};
use support::redis::Redis;
use support::rls::RlsBackend;
use support::stack::Stack;

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

/// The native filter's stats, in `stats` (an Envoy's `/stats`).
fn ratelimit_stat(stats: &str, name: &str) -> u64 {
    counter(stats, &format!("cluster.sample_api.ratelimit.{name}"))
}

/// Tollgate's stats of a remote policy's calls.
fn rls_stat(stats: &str, policy: &str, name: &str) -> u64 {
    counter(stats, &format!("tollgate.rls.{name}.{policy}"))
}

fn decisions(stats: &str, reason: &str) -> u64 {
    counter(stats, &format!("tollgate.decision.{reason}"))
}

/// A second remote policy on the same backend, under its own prefix: `strict`
/// (per client id, failing closed) on `/strict/`.
fn strict_rule(c: &mut Value, backend: Value) {
    c["rate_limits"]["policies"]["strict"] =
        json!({"key": "client_id", "backend": {"rls": backend}});
    let rule = json!({"match": {"prefix": "/strict/"}, "requires": {"scopes": {"all_of": ["read:data"]}},
                      "rate_limits": ["strict"]});
    c["rules"].as_array_mut().unwrap().insert(0, rule);
}

/// Limitador's limits: `fleet-per-client` with `max` a minute, and `strict` with 100.
fn fleet_and_strict_limits(max: u64) -> String {
    format!(
        "{}- namespace: {DOMAIN}\n  name: strict\n  max_value: 100\n  seconds: 60\n  \
         conditions: [\"descriptors[0].policy == 'strict'\"]\n  \
         variables: [\"descriptors[0].client_id\"]\n",
        per_client_limits(max)
    )
}

fn json_error(reply: &Reply) -> String {
    let body: Value =
        serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {:?}", reply.body));
    body["error"].as_str().unwrap_or_default().to_string()
}

/// One client spread over two Envoys is held to the one limit: exactly, when its
/// requests do not overlap; within the number of requests in flight, when they do
/// (Limitador's Redis storage reads, then increments). Both Envoys refuse with
/// Tollgate's 429.
#[test]
fn two_envoys_share_one_remote_limit() {
    const LIMIT: usize = 20;
    let fleet = Fleet::builder(&per_client_limits(LIMIT as u64), 2).start();
    let urls: Vec<String> = fleet.envoys.iter().map(|e| e.url("/data")).collect();

    let agent = support::http_agent();
    let alice = fleet.token("alice");
    let replies: Vec<Reply> = (0..50).map(|i| get(&agent, &urls[i % 2], &alice)).collect();
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        admitted, LIMIT,
        "sequential, alternating Envoys: {statuses:?}"
    );
    assert!(statuses[LIMIT..].iter().all(|s| *s == 429), "{statuses:?}");
    // Both Envoys refused some, each with Tollgate's own 429.
    for (i, envoy) in fleet.envoys.iter().enumerate() {
        let stats = envoy.settled_stats();
        assert_eq!(
            rls_stat(&stats, FLEET_POLICY, "over_limit"),
            15,
            "{}",
            envoy.stats()
        );
        assert_eq!(rls_stat(&stats, FLEET_POLICY, "calls"), 25);
        assert_eq!(decisions(&stats, "rate_limited"), 15);
        let refused = &replies[LIMIT + i];
        assert_eq!(
            refused.header("ratelimit-policy"),
            Some("\"fleet-per-client\";q=20;w=60")
        );
        assert!(refused.header("retry-after").is_some());
        assert_eq!(json_error(refused), "rate_limited");
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

/// A local policy (4 a minute, checked first) and the remote one (2 a minute) on
/// one rule: the remote limit refuses the third and fourth requests, the local one
/// the fifth, without a call to the backend. The remote 429 carries Retry-After,
/// RateLimit and RateLimit-Policy from the service's answer, like the local one.
#[test]
fn local_and_remote_policies_on_one_rule() {
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

    // Allowed: the tightest policy's headers (the remote one, 1 left of 2).
    assert_eq!(
        replies[0].header("ratelimit-policy"),
        Some("\"fleet-per-client\";q=2;w=60")
    );
    assert!(replies[0]
        .header("ratelimit")
        .unwrap()
        .starts_with("\"fleet-per-client\";r=1;t="));

    // The remote policy's 429.
    let remote = &replies[2];
    eprintln!("remote 429: {:?} {:?}", remote.headers, remote.body);
    assert_eq!(
        remote.header("ratelimit-policy"),
        Some("\"fleet-per-client\";q=2;w=60")
    );
    let ratelimit = remote.header("ratelimit").unwrap();
    let reset: u64 = ratelimit
        .strip_prefix("\"fleet-per-client\";r=0;t=")
        .unwrap_or_else(|| panic!("{ratelimit}"))
        .parse()
        .unwrap();
    assert!((1..=60).contains(&reset), "reset {reset}");
    assert_eq!(
        remote.header("retry-after"),
        Some(reset.to_string().as_str())
    );
    assert_eq!(remote.header("content-type"), Some("application/json"));
    assert_eq!(remote.header("cache-control"), Some("no-store"));
    assert_eq!(remote.header("x-envoy-ratelimited"), None);
    assert_eq!(json_error(remote), "rate_limited");

    // The local policy's 429: the same fields.
    let local = &replies[4];
    eprintln!("local 429: {:?} {:?}", local.headers, local.body);
    assert_eq!(local.header("ratelimit-policy"), Some("\"local\";q=4;w=60"));
    assert!(local
        .header("ratelimit")
        .unwrap()
        .starts_with("\"local\";r=0;t="));
    assert!(local.header("retry-after").is_some());
    assert_eq!(json_error(local), "rate_limited");
    let names = |r: &Reply| -> Vec<String> { r.headers.iter().map(|(n, _)| n.clone()).collect() };
    let shape = |r: &Reply| -> Vec<String> {
        names(r)
            .into_iter()
            .filter(|n| n != "date" && n != "server" && n != "content-length")
            .collect()
    };
    assert_eq!(shape(remote), shape(local));

    // Request 5 never reached the backend: its own counts say so.
    let stats = fleet.backend.stats();
    assert_eq!(
        (stats["calls"].as_u64(), stats["over_limit"].as_u64()),
        (Some(4), Some(2)),
        "{stats}"
    );
    let stats = envoy.settled_stats();
    assert_eq!(rls_stat(&stats, FLEET_POLICY, "calls"), 4);
    assert_eq!(decisions(&stats, "rate_limited"), 3);
}

/// The backend stopped: `fleet-per-client` fails open (the request goes on, counted
/// in `failure_mode_allowed`), `strict` fails closed (503, reason
/// rate_limit_service_unavailable).
#[test]
fn failure_modes_with_the_backend_stopped() {
    let mut fleet = Fleet::builder(&fleet_and_strict_limits(100), 1)
        .plugin_config(|c| {
            strict_rule(
                c,
                json!({"cluster": "rate_limit_service", "domain": DOMAIN,
                       "timeout": "0.25s", "failure_mode_deny": true}),
            )
        })
        .start();
    let (agent, token) = (support::http_agent(), fleet.token("dave"));
    let envoy_url = |p: &str| fleet.envoys[0].url(p);
    let (open, strict) = (envoy_url("/data"), envoy_url("/strict/x"));
    assert_eq!(get(&agent, &open, &token).status, 200);
    assert_eq!(get(&agent, &strict, &token).status, 200);
    fleet.backend.stop();

    let reply = get(&agent, &open, &token);
    assert_eq!(reply.status, 200);
    let reply = get(&agent, &strict, &token);
    eprintln!(
        "fail-closed: {} {:?} {:?}",
        reply.status, reply.headers, reply.body
    );
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(json_error(&reply), "temporarily_unavailable");

    let stats = fleet.envoys[0].settled_stats();
    assert_eq!(rls_stat(&stats, FLEET_POLICY, "error"), 1);
    assert_eq!(rls_stat(&stats, FLEET_POLICY, "failure_mode_allowed"), 1);
    assert_eq!(rls_stat(&stats, "strict", "error"), 1);
    assert_eq!(rls_stat(&stats, "strict", "failure_mode_denied"), 1);
    assert_eq!(rls_stat(&stats, "strict", "failure_mode_allowed"), 0);
    assert_eq!(decisions(&stats, "rate_limit_service_unavailable"), 1);
    assert_eq!(decisions(&stats, "authenticated"), 3);
}

/// A backend slower than the policies' timeouts: failing open, the request goes on
/// after the timeout (0.25 s), not after the backend's answer (2 s); failing
/// closed (0.1 s), it is refused as soon as the timeout passes.
#[test]
fn a_slow_backend_hits_the_timeout() {
    let fleet = Fleet::builder(&fleet_and_strict_limits(100), 1)
        .backend(|b| b.delay(Duration::from_secs(2)))
        .plugin_config(|c| {
            strict_rule(
                c,
                json!({"cluster": "rate_limit_service", "domain": DOMAIN,
                       "timeout": "0.1s", "failure_mode_deny": true}),
            )
        })
        .start();
    let (agent, token) = (support::http_agent(), fleet.token("erin"));
    let envoy = &fleet.envoys[0];
    for (path, status, timeout) in [("/data", 200, 250), ("/strict/x", 503, 100)] {
        let started = Instant::now();
        let reply = get(&agent, &envoy.url(path), &token);
        let took = started.elapsed();
        eprintln!("{path}: {} after {took:?}", reply.status);
        assert_eq!(reply.status, status, "{path}");
        // Envoy's timer may fire a few ms before the client's clock says the
        // timeout passed (CI saw 98.6 ms for 0.1 s).
        let slack = Duration::from_millis(10);
        assert!(
            took + slack >= Duration::from_millis(timeout) && took < Duration::from_millis(1500),
            "{path} took {took:?}"
        );
    }
    let stats = envoy.settled_stats();
    assert_eq!(rls_stat(&stats, FLEET_POLICY, "timeout"), 1);
    assert_eq!(rls_stat(&stats, FLEET_POLICY, "failure_mode_allowed"), 1);
    assert_eq!(rls_stat(&stats, "strict", "timeout"), 1);
    assert_eq!(rls_stat(&stats, "strict", "failure_mode_denied"), 1);
    assert!(stat(&fleet.backend, "calls") >= 1);
}

/// A limit the backend cannot evaluate for a request (its condition reads a second
/// descriptor; Tollgate sends one) makes it answer INTERNAL: a failed call, let
/// through. A policy naming a cluster Envoy does not have fails the same way,
/// without harming the filter.
#[test]
fn service_errors_and_unknown_clusters_are_failed_calls() {
    let limits = format!(
        "- namespace: {DOMAIN}\n  max_value: 1\n  seconds: 60\n  \
         conditions: [\"descriptors[1].policy == 'fleet-per-client'\"]\n  variables: []\n"
    );
    let fleet = Fleet::builder(&limits, 1)
        .plugin_config(|c| {
            strict_rule(
                c,
                json!({"cluster": "no_such_cluster", "domain": DOMAIN, "failure_mode_deny": true}),
            )
        })
        .start();
    let (agent, token) = (support::http_agent(), fleet.token("frank"));
    let envoy = &fleet.envoys[0];
    for _ in 0..2 {
        assert_eq!(get(&agent, &envoy.url("/data"), &token).status, 200);
    }
    // Tollgate may give up (0.25 s) before the backend has answered: wait for it.
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
    // An error answer, or no answer in time (the first evaluation can be slow).
    let stats = envoy.settled_stats();
    let failed =
        rls_stat(&stats, FLEET_POLICY, "error") + rls_stat(&stats, FLEET_POLICY, "timeout");
    assert_eq!(failed, 2, "{}", envoy.stats());
    assert_eq!(rls_stat(&stats, FLEET_POLICY, "failure_mode_allowed"), 2);

    for _ in 0..2 {
        let reply = get(&agent, &envoy.url("/strict/x"), &token);
        assert_eq!(reply.status, 503, "{:?}", reply.body);
    }
    let stats = envoy.settled_stats();
    assert_eq!(rls_stat(&stats, "strict", "error"), 2);
    let log = envoy.log();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("policy=strict"))
        .collect();
    eprintln!("{failures:#?}");
    assert_eq!(failures.len(), 2, "{log}");
    assert!(failures
        .iter()
        .all(|l| l.contains("reason=rate_limit_service_unavailable")));
    // The filter is alive and well.
    assert_eq!(get(&agent, &envoy.url("/data"), &token).status, 200);
    assert!(!envoy.log().contains("panicked"), "{}", envoy.log());
}

/// Requests with a rotated key wait behind one JWKS fetch (parked, then decided in
/// the callback of the request that fetched): each still makes its remote call, and
/// is answered when it returns. The sample stack (remote JWKS from the token service)
/// with the remote policy on `GET /data`.
#[test]
fn requests_parked_behind_a_key_rotation_make_their_remote_calls() {
    let redis = Redis::start();
    let backend = RlsBackend::builder(&per_client_limits(1000)).start(&redis);
    let grpc_port = backend.grpc_port;
    let stack = Stack::builder()
        .envoy_config(move |c| add_rls_cluster(c, grpc_port))
        .plugin_config(|c| {
            let limits = c["rate_limits"].as_object_mut().unwrap();
            // A failure here would trip the lock-out.
            limits.remove("brute_force");
            limits["policies"][FLEET_POLICY] = json!({"key": "client_id",
                "backend": {"rls": {"cluster": "rate_limit_service", "domain": DOMAIN,
                                    "timeout": "1s", "failure_mode_deny": true}}});
            for rule in c["rules"].as_array_mut().unwrap() {
                if rule["match"]["path"] == "/data" && rule["match"]["methods"][0] == "GET" {
                    rule["rate_limits"] = json!(["per-client", FLEET_POLICY]);
                }
            }
        })
        .start();
    let agent = support::http_agent();
    let url = stack.envoy.url("/data");
    let old = stack.token("reader", None);
    assert_eq!(get(&agent, &url, &old).status, 200);
    // Whether a request parks depends on it arriving while the fetch is underway:
    // rotate again (up to three times) until one did.
    let mut requests = 1;
    let mut foreign = 0;
    for _ in 0..3 {
        stack.tokens.rotate_keys(None);
        let new = stack.token("reader", None);
        let statuses: Vec<u16> = std::thread::scope(|s| {
            let calls: Vec<_> = (0..24)
                .map(|_| s.spawn(|| get(&support::http_agent(), &url, &new).status))
                .collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        requests += statuses.len() as u64;
        assert!(
            statuses.iter().all(|s| *s == 200),
            "every request with the new key is served: {statuses:?}\n{}",
            stack.envoy.log()
        );
        foreign = stack.envoy.log().matches("made for parked request").count();
        if foreign > 0 {
            break;
        }
    }
    let stats = backend.stats();
    assert_eq!(
        (stats["calls"].as_u64(), stats["ok"].as_u64()),
        (Some(requests), Some(requests)),
        "one call per request: {stats}"
    );
    let stats = stack.envoy.settled_stats();
    assert_eq!(rls_stat(&stats, FLEET_POLICY, "ok"), requests);
    eprintln!("{foreign} remote calls made for parked requests from another context");
    assert!(
        foreign > 0,
        "no request was parked in three rotations: the test missed its point\n{}",
        stack.envoy.log()
    );
}

/// The native path, for comparison (README): Envoy's `ratelimit` filter after
/// Tollgate, one local policy in Tollgate (`response_headers` on). The native 429
/// lacks the fleet policy's RateLimit headers and carries the local policy's
/// instead; Tollgate's own 429 is unchanged; a request Tollgate refuses never
/// reaches the native filter.
#[test]
fn native_path_for_comparison() {
    let fleet = Fleet::builder(&per_client_limits(2), 1)
        .native()
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

    // The native filter's 429, with the local_reply_config mapper.
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
    assert_eq!(json_error(native), "rate_limited");
    // What the native path cannot give: the RateLimit headers of the fleet policy.
    assert_eq!(
        native.header("ratelimit-policy"),
        Some("\"local\";q=4;w=60")
    );
    assert!(native
        .header("ratelimit")
        .unwrap()
        .starts_with("\"local\";r=1;"));

    let stats = fleet.backend.stats();
    assert_eq!(
        (stats["calls"].as_u64(), stats["over_limit"].as_u64()),
        (Some(4), Some(2)),
        "{stats}"
    );
    let stats = envoy.settled_stats();
    assert_eq!(ratelimit_stat(&stats, "over_limit"), 2);
    assert_eq!(rls_stat(&stats, FLEET_POLICY, "calls"), 0);
}
