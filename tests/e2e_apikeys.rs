//! End-to-end API keys through real Envoy: hashed key sets, consumer identity
//! upstream, stripping from headers and the query string, one 401 for every
//! kind of bad key, and scope enforcement.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::stack::Stack;

fn sha256_hex(key: &str) -> String {
    hmac_sha256::Hash::hash(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const GOOD: &str = "tg_live_Q2hvb3NlIGEgbG9uZyByYW5kb20ga2V5IGhlcmU";
const WRITER: &str = "tg_live_d3JpdGVyIGtleSBmb3IgdGhlIHNhbXBsZSBzdGFjaw";

/// The sample stack with an inline key set and `/data` accepting keys too.
fn stack() -> Stack {
    Stack::builder()
        .plugin_config(|c| {
            let set = json!({"consumers": [
                {"id": "partner-a", "tenant": "acme", "scopes": ["read:data"], "keys": [
                    {"id": "live", "hash": sha256_hex(GOOD)},
                    {"id": "disabled", "hash": sha256_hex("tg_live_disabled_key_value_0000000"), "enabled": false},
                    {"id": "expired", "hash": sha256_hex("tg_live_expired_key_value_00000000"), "expires_at": 1_000_000},
                    {"id": "office-only", "hash": sha256_hex("tg_live_office_key_value_000000000"), "allowed_cidrs": ["203.0.113.0/24"]}
                ]},
                {"id": "batch-writer", "scopes": ["read:data", "write:data"], "keys": [{"id": "w1", "hash": sha256_hex(WRITER)}]}
            ]});
            c["api_keys"] = json!({"key_set": {"inline_string": set.to_string()}});
            for rule in c["rules"].as_array_mut().unwrap() {
                // DELETE /data needs a user's step-up: tokens only.
                if rule["match"]["path"] == "/data" && rule["requires"].get("step_up").is_none() {
                    rule["requires"]["credentials"] = json!(["jwt", "api_key"]);
                    rule["requires"]["api_key_in_query"] = json!(true);
                }
            }
        })
        .start()
}

struct Reply {
    status: u16,
    body: String,
    www_authenticate: Option<String>,
}

fn call(method: &str, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let mut resp = support::http_agent().run(req.body(()).unwrap()).unwrap();
    Reply {
        status: resp.status().as_u16(),
        www_authenticate: resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: resp.body_mut().read_to_string().unwrap_or_default(),
    }
}

#[test]
fn a_valid_key_reaches_the_api_as_its_consumer_and_is_stripped() {
    let stack = stack();
    for headers in [
        vec![("x-api-key", GOOD)],
        vec![("authorization", &*format!("Bearer {GOOD}"))],
    ] {
        let r = call("GET", &stack.envoy.url("/data"), &headers);
        assert_eq!(r.status, 200, "{}", r.body);
        let echo: Value = serde_json::from_str(&r.body).unwrap();
        let h = &echo["headers"];
        assert!(
            h.get("x-api-key").is_none() && h.get("authorization").is_none(),
            "{h}"
        );
        assert!(!r.body.contains(GOOD), "the key reached the upstream");
        assert_eq!(h["x-tollgate-subject"], "partner-a");
        assert_eq!(h["x-tollgate-consumer"], "partner-a");
        assert_eq!(h["x-tollgate-api-key-id"], "live");
        assert_eq!(h["x-tollgate-tenant"], "acme");
        assert_eq!(h["x-tollgate-scopes"], "read:data");
    }
    // In the query string, where the rule allows it: read, then stripped.
    let r = call(
        "GET",
        &stack.envoy.url(&format!("/data?page=2&api_key={GOOD}")),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let echo: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(echo["query"], "page=2");
    assert!(!r.body.contains(GOOD));
    // Never in a log line.
    assert!(!stack.envoy.log().contains(GOOD), "the key was logged");
}

#[test]
fn wrong_disabled_expired_and_foreign_address_keys_get_one_answer() {
    let stack = stack();
    let mut answers = std::collections::HashSet::new();
    for key in [
        "tg_live_not_a_key_at_all_0000000000",
        "tg_live_disabled_key_value_0000000",
        "tg_live_expired_key_value_00000000",
        "tg_live_office_key_value_000000000",
    ] {
        let r = call("GET", &stack.envoy.url("/data"), &[("x-api-key", key)]);
        assert_eq!(r.status, 401, "{key}: {}", r.body);
        assert!(!r.body.contains(key));
        answers.insert((r.body, r.www_authenticate));
    }
    assert_eq!(
        answers.len(),
        1,
        "the answers tell bad keys apart: {answers:?}"
    );
    let (body, challenge) = answers.into_iter().next().unwrap();
    assert_eq!(
        body,
        r#"{"error":"invalid_token","error_description":"the API key is not valid"}"#
    );
    assert!(challenge.unwrap().contains("error=\"invalid_token\""));
    // The reasons are told apart where operators look: stats.
    let stats = stack.envoy.settled_stats();
    for reason in [
        "api_key_unknown",
        "api_key_disabled",
        "api_key_expired",
        "api_key_address_not_allowed",
    ] {
        assert_eq!(
            support::envoy::counter(&stats, &format!("tollgate.decision.{reason}")),
            1,
            "{reason}"
        );
    }
}

#[test]
fn scopes_apply_to_keys_as_to_tokens() {
    let stack = stack();
    let r = call("POST", &stack.envoy.url("/data"), &[("x-api-key", GOOD)]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.www_authenticate.unwrap().contains("scope=\"write:data\""));
    let r = call("POST", &stack.envoy.url("/data"), &[("x-api-key", WRITER)]);
    assert_eq!(r.status, 200, "{}", r.body);
    // Routes that take only tokens ignore keys (and still strip them).
    let r = call(
        "GET",
        &stack.envoy.url("/admin/users"),
        &[("x-api-key", WRITER)],
    );
    assert_eq!(r.status, 401);
}

fn key_set_loads(stack: &Stack) -> usize {
    stack.envoy.log().matches("loaded API key set").count()
}

/// Waits until Envoy loads a key set newer than the `before`-th; how long that took.
/// (Polling `/data` with a key that is not live yet would count as failed
/// authentications and trip the brute-force lock-out.)
fn next_key_set_load(stack: &Stack, before: usize, within: Duration) -> Duration {
    let started = Instant::now();
    while key_set_loads(stack) <= before {
        assert!(
            started.elapsed() < within,
            "no new key set after {within:?}:\n{}",
            stack.envoy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

fn status_with_key(stack: &Stack, key: &str) -> u16 {
    call("GET", &stack.envoy.url("/data"), &[("x-api-key", key)]).status
}

/// Other workers pick up a key set one worker fetched on their next tick (1 s).
fn let_workers_sync() {
    std::thread::sleep(Duration::from_millis(1200));
}

/// An admin-API call to the token service with the operator's token.
fn admin(stack: &Stack, token: &str, method: &str, path: &str, body: Value) -> Value {
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(stack.tokens.url(path))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .unwrap();
    let mut resp = support::http_agent().run(req).unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {text}"
    );
    serde_json::from_str(&text).unwrap()
}

#[test]
fn keys_managed_by_the_token_service_rotate_through_polling_without_restart() {
    // The sample configuration as shipped: `/data` takes keys from the token
    // service's key set, polled every 2 s.
    let stack = Stack::builder()
        .token_service(|t| t.client("key-admin", "tollgate:admin"))
        .start();
    let poll = Duration::from_secs(2);
    let operator = stack.token("key-admin", None);
    let loads = key_set_loads(&stack);
    admin(
        &stack,
        &operator,
        "POST",
        "/admin/consumers",
        json!({"id": "partner-b", "tenant": "beta", "scopes": "read:data"}),
    );
    let old = admin(
        &stack,
        &operator,
        "POST",
        "/admin/api-keys",
        json!({"consumer": "partner-b"}),
    );
    let old_key = old["api_key"].as_str().unwrap().to_owned();
    let old_id = old["id"].as_str().unwrap().to_owned();
    let within = poll + Duration::from_secs(1);

    let appeared = next_key_set_load(&stack, loads, within);
    let_workers_sync();
    let r = call("GET", &stack.envoy.url("/data"), &[("x-api-key", &old_key)]);
    assert_eq!(r.status, 200, "{}", r.body);
    let echo: Value = serde_json::from_str(&r.body).unwrap();
    let h = &echo["headers"];
    assert_eq!(h["x-tollgate-consumer"], "partner-b", "{h}");
    assert_eq!(h["x-tollgate-tenant"], "beta", "{h}");
    assert_eq!(h["x-tollgate-api-key-id"], old_id.as_str(), "{h}");
    assert!(
        h.get("x-api-key").is_none(),
        "the key reached the upstream: {h}"
    );

    // Rotate: a new key for the same consumer; both work until the old one is disabled.
    let loads = key_set_loads(&stack);
    let new = admin(
        &stack,
        &operator,
        "POST",
        &format!("/admin/api-keys/{old_id}/rotate"),
        json!({}),
    );
    let new_key = new["api_key"].as_str().unwrap().to_owned();
    next_key_set_load(&stack, loads, within);
    let_workers_sync();
    for _ in 0..4 {
        assert_eq!(status_with_key(&stack, &new_key), 200);
        assert_eq!(status_with_key(&stack, &old_key), 200);
    }

    let loads = key_set_loads(&stack);
    admin(
        &stack,
        &operator,
        "POST",
        &format!("/admin/api-keys/{old_id}/disable"),
        json!({}),
    );
    let refused = next_key_set_load(&stack, loads, within);
    let_workers_sync();
    for _ in 0..4 {
        assert_eq!(status_with_key(&stack, &old_key), 401);
        assert_eq!(status_with_key(&stack, &new_key), 200);
    }
    eprintln!("key set with the new key loaded after {appeared:?}, with the disabled key after {refused:?}");

    for key in [&old_key, &new_key] {
        let random = key.strip_prefix("tg_live_").unwrap();
        assert!(
            !stack.envoy.log().contains(random),
            "a key is in Envoy's log"
        );
        assert!(
            !stack.tokens.log().contains(random),
            "a key is in the service's log"
        );
    }
}

/// With nothing else in the configuration needing the client address, a fetched
/// key set decides whether requests look it up: once the token service publishes
/// a key bound to 127.0.0.2, that key works from there and nowhere else, and the
/// decision event names the address it was judged by.
#[test]
fn a_fetched_key_bound_to_an_address_is_judged_by_the_callers_address() {
    let stack = Stack::builder()
        .token_service(|t| t.client("key-admin", "tollgate:admin"))
        .plugin_config(|c| {
            // No lock-outs, signals, per-address limits or address conditions.
            let c = c.as_object_mut().unwrap();
            c.remove("anomalies");
            c["rate_limits"]
                .as_object_mut()
                .unwrap()
                .remove("brute_force");
            for rule in c["rules"].as_array_mut().unwrap() {
                let rule = rule.as_object_mut().unwrap();
                if rule["requires"].get("allow_anonymous").is_some() {
                    rule.remove("rate_limits");
                }
                if let Some(context) = rule["requires"].get_mut("context") {
                    context.as_object_mut().unwrap().remove("client_address");
                }
            }
        })
        .start();
    let within = Duration::from_secs(3);
    let operator = stack.token("key-admin", None);
    let loads = key_set_loads(&stack);
    admin(
        &stack,
        &operator,
        "POST",
        "/admin/consumers",
        json!({"id": "partner-c", "scopes": "read:data"}),
    );
    let bound = admin(
        &stack,
        &operator,
        "POST",
        "/admin/api-keys",
        json!({"consumer": "partner-c", "allowed_cidrs": ["127.0.0.2/32"]}),
    );
    let bound = bound["api_key"].as_str().unwrap().to_owned();
    next_key_set_load(&stack, loads, within);
    let_workers_sync();
    let port = stack.ports.listener;
    let from = |source: &str| {
        let r =
            support::from_address::request(source, port, "GET", "/data", &[("x-api-key", &bound)]);
        let id = r.header("x-request-id").expect("x-request-id").to_string();
        (r, id)
    };
    let (allowed, allowed_id) = from("127.0.0.2");
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(
        allowed.json()["headers"]["x-tollgate-consumer"],
        "partner-c"
    );
    let (refused, refused_id) = from("127.0.0.3");
    assert_eq!(refused.status, 401, "{}", refused.body);
    let stats = stack.envoy.settled_stats();
    assert_eq!(
        support::envoy::counter(&stats, "tollgate.decision.api_key_address_not_allowed"),
        1
    );
    let event = |id: &str| {
        let line = stack
            .envoy
            .access_log_line(id, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no access-log line for {id}"));
        line["tollgate"]["value"].clone()
    };
    assert_eq!(event(&allowed_id)["client_ip"], "127.0.0.2");
    assert_eq!(event(&refused_id)["client_ip"], "127.0.0.3");
}
