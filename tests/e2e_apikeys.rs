//! End-to-end API keys through real Envoy: hashed key sets, consumer identity
//! upstream, stripping from headers and the query string, one 401 for every
//! kind of bad key, and scope enforcement.

mod support;

use serde_json::{json, Value};
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
                if rule["match"]["path"] == "/data" {
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
    let stats = stack.envoy.stats();
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
