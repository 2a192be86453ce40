//! End-to-end audit trail, stats and anomaly signals through real Envoy: the
//! access log holds one JSON line per request with Tollgate's decision event,
//! no log holds a credential, the Prometheus figures follow what happened, and
//! a token replayed from several addresses raises the signal.

use jwt_simple::prelude::*;
use serde_json::{json, Value};
use socket2::{Domain, Socket, Type};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::stack::{claims, Stack, TEST_ISSUER};

const PARTNER_KEY: &str = "tg_live_YXVkaXQgdGVzdCBrZXkgZm9yIHBhcnRuZXIgYQ";

fn sha256_hex(key: &str) -> String {
    hmac_sha256::Hash::hash(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The fingerprint Tollgate logs for a credential: 16 hex digits of its SHA-256.
fn fingerprint(credential: &str) -> String {
    sha256_hex(credential)[..16].to_string()
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn request_id(&self) -> String {
        self.header("x-request-id")
            .unwrap_or_else(|| panic!("no x-request-id in the response:\n{}", self.head))
            .to_string()
    }
}

/// One HTTP/1.1 request from a chosen loopback address.
fn send(port: u16, from: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&local.into()).unwrap();
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    sock.connect(&to.into()).unwrap();
    let mut stream: TcpStream = sock.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n");
    for (n, v) in headers {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str("Content-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// The token with one character of its signature changed: well-formed, forged.
fn tamper(token: &str) -> String {
    let (head, sig) = token.rsplit_once('.').unwrap();
    let mut sig: Vec<char> = sig.chars().collect();
    let i = sig.len() / 2;
    sig[i] = if sig[i] == 'A' { 'B' } else { 'A' };
    format!("{head}.{}", sig.into_iter().collect::<String>())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A token of the test issuer for `client` (also its subject).
fn token_for(stack: &Stack, client: &str, scope: &str) -> String {
    let c = claims(
        TEST_ISSUER,
        json!({"client_id": client, "sub": client, "scope": scope, "tenant": "acme"}),
    );
    stack.keys.es256.sign(c).unwrap()
}

/// The sample with an inline API key for `partner-a` accepted on `/data`, and
/// `rate_limits` instead of the sample's.
fn audit_stack(rate_limits: Value, anomalies: Value) -> Stack {
    Stack::builder()
        .plugin_config(move |c| {
            let set = json!({"consumers": [
                {"id": "partner-a", "tenant": "acme", "scopes": ["read:data"], "keys": [
                    {"id": "live", "hash": sha256_hex(PARTNER_KEY)}]}
            ]});
            c["api_keys"] = json!({"key_set": {"inline_string": set.to_string()}});
            // Rules keep only the policies `rate_limits` defines.
            let defined = rate_limits
                .pointer("/policies")
                .cloned()
                .unwrap_or(json!({}));
            for rule in c["rules"].as_array_mut().unwrap() {
                if let Some(list) = rule.get_mut("rate_limits").and_then(Value::as_array_mut) {
                    list.retain(|p| defined.get(p.as_str().unwrap()).is_some());
                }
            }
            c["rate_limits"] = rate_limits;
            c["anomalies"] = anomalies;
        })
        .start()
}

/// The access log line of a reply, and its decision event (`None` when the
/// request had none).
fn line_of(stack: &Stack, reply: &Reply) -> (Value, Option<Value>) {
    let id = reply.request_id();
    let line = stack
        .envoy
        .access_log_line(&id, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no access log line for {id}:\n{}", stack.envoy.access_log()));
    let event = match &line["tollgate"] {
        Value::Null => None,
        t => {
            assert_eq!(
                t["@type"], "type.googleapis.com/google.protobuf.Struct",
                "{line}"
            );
            Some(t["value"].clone())
        }
    };
    (line, event)
}

/// Checks the fields every event has, and returns the event.
fn event_of(stack: &Stack, reply: &Reply, decision: &str, reason: &str) -> Value {
    let (line, event) = line_of(stack, reply);
    let e = event.unwrap_or_else(|| panic!("no decision event: {line}"));
    assert_eq!(e["v"], 1, "{e}");
    assert_eq!(e["decision"], decision, "{e}");
    assert_eq!(e["reason"], reason, "{e}");
    assert_eq!(e["request_id"], line["request_id"], "{e}");
    assert_eq!(e["method"], line["method"], "{e}");
    assert_eq!(line["status"], reply.status, "{line}");
    let time = e["time"].as_str().unwrap_or_default();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.starts_with("20"),
        "{e}"
    );
    assert!(e["decision_us"].as_u64().is_some(), "{e}");
    if decision == "deny" {
        assert_eq!(e["status"], reply.status, "{e}");
    } else {
        assert!(e.get("status").is_none(), "{e}");
    }
    e
}

#[test]
fn every_kind_of_decision_leaves_one_event_with_its_fields() {
    let stack = audit_stack(
        json!({
            "policies": {"per-client": {"limit": 2, "window": "60s", "key": "client_id"}},
            "brute_force": {"max_failures": 3, "window": "60s", "lockout": "30s"}
        }),
        json!({}),
    );
    let port = stack.ports.listener;
    let reader = stack.token("reader", None);

    // Allowed, with a token: every identity field, the query left out.
    let r = send(
        port,
        "127.0.0.2",
        "GET",
        "/data?note=query-value-1",
        &[("authorization", &bearer(&reader))],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let e = event_of(&stack, &r, "allow", "authenticated");
    assert_eq!(e["rule"], "read-data");
    assert_eq!(e["path"], "/data");
    assert_eq!(e["client_ip"], "127.0.0.2");
    assert_eq!(e["provider"], "tollgate");
    assert_eq!(e["subject"], "reader");
    assert_eq!(e["client_id"], "reader");
    assert!(e["jti"].as_str().is_some_and(|j| !j.is_empty()), "{e}");
    assert_eq!(e["credential"], fingerprint(&reader));
    let (line, _) = line_of(&stack, &r);
    assert_eq!(line["path"], "/data", "the access log drops the query");
    assert_eq!(line["client_address"], "127.0.0.2");

    // Allowed, with an API key: its id, consumer and tenant.
    let r = send(
        port,
        "127.0.0.2",
        "GET",
        "/data",
        &[("x-api-key", PARTNER_KEY)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let e = event_of(&stack, &r, "allow", "authenticated");
    assert_eq!(e["provider"], "api_key");
    assert_eq!(e["api_key_id"], "live");
    assert_eq!(e["consumer"], "partner-a");
    assert_eq!(e["tenant"], "acme");
    assert_eq!(e["credential"], fingerprint(PARTNER_KEY));
    assert!(e.get("jti").is_none(), "{e}");

    // Anonymous access to a public route.
    let r = send(port, "127.0.0.2", "GET", "/public/ping", &[]);
    assert_eq!(r.status, 200);
    let e = event_of(&stack, &r, "allow", "anonymous");
    assert_eq!(e["rule"], "public");
    assert!(e.get("subject").is_none() && e.get("credential").is_none());

    // No credential.
    let r = send(port, "127.0.0.2", "GET", "/data", &[]);
    assert_eq!(r.status, 401);
    let e = event_of(&stack, &r, "deny", "missing_credentials");
    assert_eq!(e["rule"], "read-data");

    // A forged token: its fingerprint, no identity.
    let forged = tamper(&token_for(&stack, "mallory", "read:data"));
    let r = send(
        port,
        "127.0.0.3",
        "GET",
        "/data",
        &[("authorization", &bearer(&forged))],
    );
    assert_eq!(r.status, 401);
    let e = event_of(&stack, &r, "deny", "bad_signature");
    assert_eq!(e["credential"], fingerprint(&forged));
    assert!(e.get("subject").is_none(), "{e}");

    // A good token without the scope: who was refused.
    let r = send(
        port,
        "127.0.0.2",
        "POST",
        "/data",
        &[("authorization", &bearer(&reader))],
    );
    assert_eq!(r.status, 403);
    let e = event_of(&stack, &r, "deny", "insufficient_scope");
    assert_eq!(e["rule"], "write-data");
    assert_eq!(e["subject"], "reader");

    // No rule.
    let r = send(port, "127.0.0.2", "GET", "/elsewhere?x=1", &[]);
    assert_eq!(r.status, 403);
    let e = event_of(&stack, &r, "deny", "no_matching_rule");
    assert!(e.get("rule").is_none(), "{e}");
    assert_eq!(e["path"], "/elsewhere");

    // Rate limited: the policy.
    let limited = token_for(&stack, "limited-client", "read:data");
    for _ in 0..2 {
        let r = send(
            port,
            "127.0.0.2",
            "GET",
            "/data",
            &[("authorization", &bearer(&limited))],
        );
        assert_eq!(r.status, 200);
    }
    let r = send(
        port,
        "127.0.0.2",
        "GET",
        "/data",
        &[("authorization", &bearer(&limited))],
    );
    assert_eq!(r.status, 429);
    let e = event_of(&stack, &r, "deny", "rate_limited");
    assert_eq!(e["policy"], "per-client");
    assert_eq!(e["client_id"], "limited-client");

    // Locked out, after guessing from one address.
    for _ in 0..4 {
        send(
            port,
            "127.0.0.9",
            "GET",
            "/data",
            &[("authorization", "Bearer not-a-token")],
        );
    }
    let r = send(
        port,
        "127.0.0.9",
        "GET",
        "/data",
        &[("authorization", &bearer(&reader))],
    );
    assert_eq!(r.status, 429);
    let e = event_of(&stack, &r, "deny", "locked_out");
    assert_eq!(e["client_ip"], "127.0.0.9");

    // A route Tollgate is off for still gets its access-log line, without an event.
    let r = send(port, "127.0.0.2", "GET", "/.well-known/jwks.json", &[]);
    assert_eq!(r.status, 200);
    let (line, event) = line_of(&stack, &r);
    assert!(event.is_none(), "{line}");
    assert_eq!(line["upstream_cluster"], "token_service");

    // One line per request, each with one event at most.
    let lines = stack.envoy.access_log_lines();
    let ids: std::collections::HashSet<&str> = lines
        .iter()
        .map(|l| l["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), lines.len(), "one line per request");
}

#[test]
fn allowed_requests_can_be_sampled_but_denials_never_are() {
    let stack = Stack::builder()
        .plugin_config(|c| c["audit"] = json!({"allow_sample_rate": 0.25}))
        .start();
    let port = stack.ports.listener;
    let reader = stack.token("reader", None);
    let mut allowed = Vec::new();
    for _ in 0..8 {
        let r = send(
            port,
            "127.0.0.2",
            "GET",
            "/data",
            &[("authorization", &bearer(&reader))],
        );
        assert_eq!(r.status, 200);
        allowed.push(r);
    }
    let denied: Vec<Reply> = (0..4)
        .map(|_| send(port, "127.0.0.2", "GET", "/data", &[]))
        .collect();
    // Each worker keeps one allowed request in four, evenly: at most one more
    // per worker than the exact share.
    let with_event = allowed
        .iter()
        .filter(|r| line_of(&stack, r).1.is_some())
        .count();
    assert!(
        (1..=4).contains(&with_event),
        "{with_event} of 8 allows kept"
    );
    for r in &denied {
        event_of(&stack, r, "deny", "missing_credentials");
    }
}

/// Every token, key and secret a session used, and where it must not appear.
#[test]
fn no_token_key_or_secret_reaches_any_log() {
    let mut stack = audit_stack(
        json!({"brute_force": {"max_failures": 50, "window": "60s", "lockout": "30s"}}),
        json!({"shared_credential": {"max_addresses": 1, "window": "60s"}}),
    );
    let port = stack.ports.listener;
    let secret = stack.tokens.secret("mobile-app").to_string();
    let basic = support::token_service::basic_authorization("mobile-app", &secret);
    // A token through Envoy (the client secret crosses Envoy), then used every way.
    let reply = send(
        port,
        "127.0.0.2",
        "POST",
        "/token?grant_type=client_credentials",
        &[("authorization", &basic)],
    );
    assert!(reply.status == 400 || reply.status == 200, "{}", reply.body);
    let token = stack.token("mobile-app", Some("read:data"));
    let reader = stack.token("reader", None);
    let forged = tamper(&reader);
    let local = token_for(&stack, "local-client", "read:data");
    // (path and query, header): every place a credential can be.
    let uses = [
        ("/data".to_string(), ("authorization", bearer(&token))),
        ("/data".to_string(), ("authorization", bearer(&reader))),
        ("/data".to_string(), ("authorization", bearer(&forged))),
        ("/data".to_string(), ("authorization", bearer(&local))),
        ("/data".to_string(), ("x-api-key", PARTNER_KEY.to_string())),
        ("/data".to_string(), ("authorization", bearer(PARTNER_KEY))),
        (
            format!("/public/x?access_token={token}&api_key={PARTNER_KEY}"),
            ("x-note", "none".to_string()),
        ),
        ("/data".to_string(), ("cookie", format!("session={token}"))),
        (
            "/admin/users".to_string(),
            ("authorization", bearer(&token)),
        ),
    ];
    for from in ["127.0.0.2", "127.0.0.3"] {
        for (path, (name, value)) in &uses {
            send(port, from, "GET", path, &[(name, value)]);
        }
    }
    // Revocation and key rotation paths log too.
    stack.tokens.rotate_keys(None);
    let fresh = stack.token("reader", None);
    send(
        port,
        "127.0.0.2",
        "GET",
        "/data",
        &[("authorization", &bearer(&fresh))],
    );
    std::thread::sleep(Duration::from_millis(1500));
    stack.tokens.stop();

    let logs = [
        ("Envoy log", stack.envoy.log()),
        ("access log", stack.envoy.access_log()),
        ("token service log", stack.tokens.log()),
    ];
    assert!(logs[1].1.lines().count() >= 18, "{}", logs[1].1);
    assert!(
        logs[0].1.contains("anomaly signal:"),
        "the session raised a signal"
    );
    let secrets = [
        ("client secret", secret.as_str()),
        ("basic authorization", basic.as_str()),
        ("mobile-app token", token.as_str()),
        ("reader token", reader.as_str()),
        ("forged token", forged.as_str()),
        ("test issuer token", local.as_str()),
        ("rotated-key token", fresh.as_str()),
        ("API key", PARTNER_KEY),
    ];
    for (log_name, log) in &logs {
        for (what, value) in secrets {
            assert!(!log.contains(value), "the {what} is in the {log_name}");
            // Any long piece of it (the signature, the key's random part).
            let tail = &value[value.len() - 24..];
            assert!(
                !log.contains(tail),
                "part of the {what} is in the {log_name}"
            );
        }
    }
}

fn prometheus_value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Polls Prometheus until `ok` holds (counters reach Envoy on the filter's
/// next tick, histograms on Envoy's next stats flush).
fn prometheus_until(stack: &Stack, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let text = stack.envoy.prometheus();
        if ok(&text) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn prometheus_figures_follow_a_scripted_sequence() {
    let stack = audit_stack(
        json!({"policies": {"per-client": {"limit": 3, "window": "60s", "key": "client_id"}}}),
        json!({}),
    );
    let port = stack.ports.listener;
    let reader = stack.token("reader", None);
    let get = |headers: &[(&str, &str)]| send(port, "127.0.0.2", "GET", "/data", headers).status;
    // 3 allowed (one miss, two cache hits), 1 limited, 2 missing, 1 forged, 1 API key.
    let auth = bearer(&reader);
    let statuses: Vec<u16> = (0..4).map(|_| get(&[("authorization", &auth)])).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(get(&[]), 401);
    assert_eq!(get(&[]), 401);
    assert_eq!(get(&[("authorization", &bearer(&tamper(&reader)))]), 401);
    assert_eq!(get(&[("x-api-key", PARTNER_KEY)]), 200);
    let wanted = [
        ("tollgate_decision{reason=\"authenticated\"}", 4),
        ("tollgate_decision{reason=\"missing_credentials\"}", 2),
        ("tollgate_decision{reason=\"bad_signature\"}", 1),
        ("tollgate_decision{reason=\"rate_limited\"}", 1),
        (
            "tollgate_rule_decision{reason=\"authenticated\",rule=\"read-data\"}",
            4,
        ),
        (
            "tollgate_rule_decision{reason=\"rate_limited\",rule=\"read-data\"}",
            1,
        ),
        ("tollgate_ratelimit_allowed{policy=\"per-client\"}", 4),
        ("tollgate_ratelimit_limited{policy=\"per-client\"}", 1),
        ("tollgate_decision_time_us_count{}", 8),
    ];
    let text = prometheus_until(&stack, |t| {
        wanted.iter().all(|(s, n)| prometheus_value(t, s) == *n)
    });
    for (series, n) in wanted {
        assert_eq!(prometheus_value(&text, series), n, "{series}\n{text}");
    }
    // Five token lookups (the API key has none): the reader's token misses
    // once per worker (two), then hits; the forged one misses.
    let (hits, misses) = (
        prometheus_value(&text, "tollgate_token_cache_hits{}"),
        prometheus_value(&text, "tollgate_token_cache_misses{}"),
    );
    assert!(
        hits + misses == 5 && (2..=3).contains(&misses),
        "hits {hits}, misses {misses}\n{text}"
    );
    // Ages of the last good copies, as gauges, young.
    for series in [
        "tollgate_jwks_age_seconds{provider=\"tollgate\"}",
        "tollgate_revocations_age_seconds{provider=\"tollgate\"}",
    ] {
        assert!(text.contains(series), "{series} missing\n{text}");
        assert!(prometheus_value(&text, series) < 30, "{series}\n{text}");
    }
    assert!(text.contains("tollgate_jwks_fetch_failed{} 0"), "{text}");
    assert!(
        text.contains("tollgate_decision_time_us_bucket{le=\"+Inf\"} 8"),
        "{text}"
    );
}

#[test]
fn one_token_replayed_from_many_addresses_raises_the_signal_and_suspends_it() {
    let stack = audit_stack(
        json!({}),
        json!({
            "shared_credential": {"max_addresses": 2, "window": "60s", "suspend": "30s"},
            "failure_spike": {"max_failures": 3, "window": "60s"}
        }),
    );
    let port = stack.ports.listener;
    let stolen = stack.token("reader", None);
    let other = stack.token("mobile-app", Some("read:data"));
    let use_from = |ip: &str, token: &str| {
        send(
            port,
            ip,
            "GET",
            "/data",
            &[("authorization", &bearer(token))],
        )
    };
    // The owner from one address, many times; then from a second: fine.
    for _ in 0..5 {
        assert_eq!(use_from("127.0.0.2", &stolen).status, 200);
    }
    assert_eq!(use_from("127.0.0.3", &stolen).status, 200);
    // A third address: the signal, and the token is suspended at once.
    let r = use_from("127.0.0.4", &stolen);
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("suspended"), "{}", r.body);
    let e = event_of(&stack, &r, "deny", "credential_suspended");
    assert_eq!(e["signals"], json!(["shared_credential"]));
    assert_eq!(e["credential"], fingerprint(&stolen));
    // Everywhere (the other worker within its next tick), the original
    // address included; other tokens are unaffected.
    std::thread::sleep(Duration::from_millis(1200));
    for ip in ["127.0.0.2", "127.0.0.5"] {
        let r = use_from(ip, &stolen);
        assert_eq!(r.status, 401, "from {ip}: {}", r.body);
        let e = event_of(&stack, &r, "deny", "credential_suspended");
        assert!(e.get("signals").is_none(), "one signal per window: {e}");
    }
    assert_eq!(use_from("127.0.0.2", &other).status, 200);
    assert!(stack
        .envoy
        .wait_for_log("anomaly signal:", Duration::from_secs(2)));
    let warning = stack
        .envoy
        .log()
        .lines()
        .find(|l| l.contains("anomaly signal:"))
        .unwrap()
        .to_string();
    let json: Value =
        serde_json::from_str(warning.split_once("anomaly signal: ").unwrap().1).unwrap();
    assert_eq!(json["signals"], json!(["shared_credential"]));
    assert_eq!(json["client_ip"], "127.0.0.4");

    // A client refused again and again: a failure spike (no action configured).
    let mut spiked = None;
    for _ in 0..5 {
        let r = send(
            port,
            "127.0.0.6",
            "POST",
            "/data",
            &[("authorization", &bearer(&other))],
        );
        assert_eq!(r.status, 403);
        let e = event_of(&stack, &r, "deny", "insufficient_scope");
        if e.get("signals").is_some() {
            assert!(spiked.is_none(), "one signal per window");
            assert_eq!(e["signals"], json!(["failure_spike"]));
            spiked = Some(e);
        }
    }
    assert_eq!(spiked.unwrap()["client_id"], "mobile-app");
    assert_eq!(use_from("127.0.0.6", &other).status, 200, "signal only");

    let text = prometheus_until(&stack, |t| {
        prometheus_value(t, "tollgate_anomaly{signal=\"failure_spike\"}") == 1
    });
    assert_eq!(
        prometheus_value(&text, "tollgate_anomaly{signal=\"shared_credential\"}"),
        1,
        "{text}"
    );
    assert_eq!(
        prometheus_value(&text, "tollgate_anomaly{signal=\"failure_spike\"}"),
        1
    );
    assert_eq!(prometheus_value(&text, "tollgate_anomaly_suspensions{}"), 1);
}

#[test]
fn the_log_prefix_names_plugin_filter_and_vm_once() {
    let stack = Stack::start();
    let reader = stack.token("reader", None);
    send(
        stack.ports.listener,
        "127.0.0.2",
        "GET",
        "/data",
        &[("authorization", &bearer(&reader))],
    );
    assert!(stack.envoy.wait_for_log(
        "wasm log public tollgate gateway: allow reason=authenticated",
        Duration::from_secs(5)
    ));
    let log = stack.envoy.log();
    assert!(log.contains(" tollgate gateway: loaded"), "{log}");
    assert!(!log.contains("tollgate tollgate"), "{log}");
}

#[test]
fn a_cluster_envoy_does_not_have_is_named_once_and_counted() {
    let stack = Stack::builder()
        .token_service_down()
        .plugin_config(|c| {
            c["providers"]["tollgate"]["remote_jwks"]["http_uri"]["cluster"] =
                json!("token_servic");
        })
        .start();
    let needle = "`providers.tollgate.remote_jwks.http_uri.cluster` names cluster `token_servic`, which is not defined in Envoy";
    assert!(
        stack.envoy.wait_for_log(needle, Duration::from_secs(5)),
        "{}",
        stack.envoy.log()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(stack.envoy.log().matches(needle).count(), 1, "logged once");
    let stats = stack.envoy.stats();
    assert!(
        support::envoy::counter(&stats, "tollgate.fetch.unknown_cluster") >= 2,
        "retries are counted:\n{stats}"
    );
}

#[test]
fn fetches_failing_from_the_start_are_reported_once_without_a_last_good_copy() {
    let stack = Stack::builder().token_service_down().start();
    // The key set and the revocation list fail too; each fetch retries every second.
    std::thread::sleep(Duration::from_secs(4));
    let log = stack.envoy.log();
    let jwks = "jwks fetch for provider `tollgate` failed, and no copy has loaded yet";
    assert_eq!(log.matches(jwks).count(), 1, "{log}");
    assert!(
        !log.contains("keeping the last good copy"),
        "no copy ever loaded:\n{log}"
    );
    assert!(
        support::envoy::counter(&stack.envoy.stats(), "tollgate.jwks.fetch_failed") >= 3,
        "every failure is still counted"
    );
    // An API-key caller waiting for the key set hears about the key set.
    let r = send(
        stack.ports.listener,
        "127.0.0.2",
        "GET",
        "/data",
        &[("x-api-key", PARTNER_KEY)],
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.body.contains("the API key set is not available yet"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("token"), "{}", r.body);
    let e = event_of(&stack, &r, "deny", "api_keys_unavailable");
    assert_eq!(e["rule"], "read-data");
}
