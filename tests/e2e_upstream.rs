//! End-to-end: what reaches the upstream when a client tries to hand it more
//! than its verified identity: look-alikes of identity headers, credential
//! variants, method overrides, and paths that read differently to different
//! stacks. Real Envoy, the real token service and the sample API (which echoes
//! what it received).
//!
//! Most stacks here run with an HTTP connection manager that neither
//! normalises paths nor refuses header names with underscores, to show that
//! Tollgate's own rules hold without them. Requests go out byte for byte over
//! TCP, so no client library tidies a path or a header on the way.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::envoy::counter;
use support::stack::Stack;

struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    /// What the sample API received.
    fn upstream(&self) -> Value {
        assert_eq!(
            self.status, 200,
            "the upstream did not answer: {}",
            self.body
        );
        self.json()
    }
}

/// Sends one HTTP/1.1 request exactly as given.
fn send(stack: &Stack, method: &str, target: &str, headers: &[(&str, &[u8])]) -> Reply {
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n").into_bytes();
    for (name, value) in headers {
        request.extend_from_slice(name.as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    let mut stream = TcpStream::connect(("127.0.0.1", stack.ports.listener)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(&request).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {target}: no HTTP response: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {target}: no status in {head:?}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Reply {
        status,
        body: if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// A header name as CGI, WSGI or PHP read it: `x_tollgate_subject` and
/// `X-Tollgate.Subject` are both `x-tollgate-subject`.
fn as_upstream_reads(name: &str) -> String {
    name.to_ascii_lowercase().replace(['_', '.'], "-")
}

/// Rate limits out of the way: these tests send bursts from one address.
fn roomy_limits(c: &mut Value) {
    for policy in ["per-client", "per-ip"] {
        c["rate_limits"]["policies"][policy] =
            json!({"limit": 10000, "window": "1s", "key": "client_ip"});
    }
}

#[test]
fn identity_look_alikes_never_reach_the_upstream() {
    let stack = Stack::builder()
        .without_hcm_safeguards()
        .plugin_config(|c| {
            roomy_limits(c);
            let p = &mut c["providers"]["tollgate"];
            p["claim_to_headers"]
                .as_array_mut()
                .unwrap()
                .push(json!({"claim_name": "tenant", "header_name": "x-tenant"}));
            p["forward_payload_header"] = json!("x-jwt-payload");
        })
        .start();
    let token = stack.token("reader", None);
    let bearer = format!("Bearer {token}");
    let spoofs: [(&str, &[u8]); 8] = [
        ("x_tollgate_subject", b"spoofed"),
        ("X_TOLLGATE-Subject", b"spoofed"),
        ("x-tollgate_scopes", b"spoofed"),
        ("x.tollgate.tenant", b"spoofed"),
        ("X-Tollgate-Client_Id", b"spoofed"),
        ("x_tenant", b"spoofed"),
        ("X-Tenant", b"spoofed"),
        ("x_jwt.payload", b"spoofed"),
    ];
    let owned = |name: &str| {
        let name = as_upstream_reads(name);
        name.starts_with("x-tollgate-") || name == "x-tenant" || name == "x-jwt-payload"
    };
    for (path, authorization) in [
        ("/data", Some(bearer.as_bytes())),
        ("/public/info", Some(bearer.as_bytes())),
        ("/public/info", None),
    ] {
        let mut headers = spoofs.to_vec();
        headers.extend(authorization.map(|a| ("authorization", a)));
        let echo = send(&stack, "GET", path, &headers).upstream();
        let received = echo["headers"].as_object().unwrap();
        for (name, value) in received.iter().filter(|(n, _)| owned(n)) {
            assert_ne!(value, "spoofed", "{path}: `{name}` reached the upstream");
            assert_eq!(
                name.as_str(),
                as_upstream_reads(name),
                "{path}: a look-alike `{name}` reached the upstream"
            );
        }
        if authorization.is_some() {
            assert_eq!(received["x-tollgate-subject"], "reader", "{path}");
            assert_eq!(received["x-tollgate-scopes"], "read:data", "{path}");
            assert!(received["x-jwt-payload"].is_string(), "{path}");
        } else {
            assert!(!received.keys().any(|n| owned(n)), "{path}: {received:?}");
        }
    }
}

#[test]
fn the_sample_connection_manager_refuses_header_names_with_underscores() {
    let stack = Stack::start();
    let token = stack.token("reader", None);
    let bearer = format!("Bearer {token}");
    let r = send(
        &stack,
        "GET",
        "/data",
        &[
            ("authorization", bearer.as_bytes()),
            ("x_tollgate_subject", b"spoofed"),
        ],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(!r.body.contains("spoofed"));
    // Exactly this name: clusters have a counter of the same suffix.
    let rejected = stack
        .envoy
        .stats()
        .lines()
        .find_map(|l| l.strip_prefix("http1.requests_rejected_with_underscores_in_headers: "))
        .map(|v| v.trim().to_string());
    assert_eq!(rejected.as_deref(), Some("1"));
    // With the connection manager normalising too, traversal lands on the
    // protected rule (Envoy's normal form) or is refused (Tollgate's): never public.
    for path in [
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/public/..;/admin/x",
    ] {
        let r = send(&stack, "GET", path, &[]);
        assert!(
            matches!(r.status, 400 | 401),
            "{path}: {} {}",
            r.status,
            r.body
        );
    }
    let echo = send(
        &stack,
        "GET",
        "/data",
        &[("authorization", bearer.as_bytes())],
    )
    .upstream();
    assert_eq!(echo["headers"]["x-tollgate-subject"], "reader");
}

#[test]
fn credential_variants_never_reach_the_upstream() {
    let stack = Stack::builder()
        .without_hcm_safeguards()
        .plugin_config(|c| {
            roomy_limits(c);
            let p = &mut c["providers"]["tollgate"];
            p["from_params"] = json!(["access_token"]);
            p["from_cookies"] = json!(["tg_at"]);
        })
        .start();
    let t = stack.token("reader", None);
    let signature = t.rsplit('.').next().unwrap().to_string();
    let tab = format!("Bearer\t{t}");
    let junk = format!("Bearer {t} junk");
    let mut non_utf8 = format!("Bearer {t}").into_bytes();
    non_utf8.extend_from_slice(b"\xff\xfe");
    let cookies = format!("theme=dark; TG_AT={t}; tg%5Fat={t}");
    // (path and query, raw headers, what the upstream must show)
    type Case<'a> = (String, Vec<(&'a str, &'a [u8])>, Value);
    let cases: Vec<Case> = vec![
        // Authenticated by the query parameter; every other spelling goes.
        (
            format!(
                "/data?access_token={t}&ACCESS_TOKEN={t}&access%5Ftoken={t}&Access-Token={t}&x=1;access_token={t}"
            ),
            vec![("authorization", tab.as_bytes()), ("cookie", cookies.as_bytes())],
            json!("x=1"),
        ),
        // Another scheme in Authorization.
        (
            format!("/data?access_token={t}"),
            vec![("authorization", b"Basic dTpw")],
            Value::Null,
        ),
        // A value with broken escapes, trailing junk after a bearer token.
        (
            format!("/public/x?access_token=%zz{t}&y=2"),
            vec![("authorization", junk.as_bytes())],
            json!("y=2"),
        ),
        // Bytes that are not UTF-8, and a look-alike of the API-key header.
        (
            "/public/x".to_string(),
            vec![
                ("authorization", non_utf8.as_slice()),
                ("x_api_key", b"tg_live_notakey"),
            ],
            Value::Null,
        ),
    ];
    for (target, headers, query) in cases {
        let r = send(&stack, "GET", &target, &headers);
        let echo = r.upstream();
        assert!(
            !r.body.contains(&signature),
            "{target}: a token went upstream: {}",
            r.body
        );
        let received = echo["headers"].as_object().unwrap();
        assert!(
            received.get("authorization").is_none(),
            "{target}: {received:?}"
        );
        assert!(
            !received.keys().any(|n| as_upstream_reads(n) == "x-api-key"),
            "{target}: {received:?}"
        );
        assert_eq!(echo["query"], query, "{target}");
        if let Some(cookie) = received.get("cookie") {
            assert_eq!(cookie, "theme=dark", "{target}");
        }
    }
}

#[test]
fn method_overrides_are_stripped_by_default() {
    let stack = Stack::builder()
        .without_hcm_safeguards()
        .plugin_config(roomy_limits)
        .start();
    let bearer = format!("Bearer {}", stack.token("reader", None));
    let echo = send(
        &stack,
        "GET",
        "/data?_method=DELETE&x=1",
        &[
            ("authorization", bearer.as_bytes()),
            ("X-HTTP-Method-Override", b"DELETE"),
            ("X-HTTP-Method", b"DELETE"),
            ("X-Method-Override", b"DELETE"),
            ("x_http_method_override", b"DELETE"),
        ],
    )
    .upstream();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["query"], "x=1");
    let received = echo["headers"].as_object().unwrap();
    let overrides = [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ];
    assert!(
        !received
            .keys()
            .any(|n| overrides.contains(&as_upstream_reads(n).as_str())),
        "an override reached the upstream: {received:?}"
    );
}

#[test]
fn method_override_authorize_matches_rules_on_the_overriding_method() {
    let stack = Stack::builder()
        .plugin_config(|c| {
            roomy_limits(c);
            c["method_override"] = json!("authorize");
        })
        .start();
    let reader = format!("Bearer {}", stack.token("reader", None));
    let writer = format!("Bearer {}", stack.token("mobile-app", None));
    // POST overridden to GET: the GET rule (read:data) applies, and the upstream
    // gets the override it is meant to honour.
    let echo = send(
        &stack,
        "POST",
        "/data",
        &[
            ("authorization", reader.as_bytes()),
            ("x-http-method-override", b"GET"),
            ("content-length", b"0"),
        ],
    )
    .upstream();
    assert_eq!(echo["headers"]["x-http-method-override"], "GET");
    // GET overridden to DELETE needs write:data.
    let delete = |bearer: &str| {
        send(
            &stack,
            "GET",
            "/data?_method=delete",
            &[("authorization", bearer.as_bytes())],
        )
    };
    let r = delete(&reader);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "insufficient_scope");
    assert_eq!(delete(&writer).status, 200);
    // Overrides that disagree: the upstream's pick cannot be known.
    let r = send(
        &stack,
        "POST",
        "/data?_method=GET",
        &[
            ("authorization", writer.as_bytes()),
            ("x-http-method-override", b"DELETE"),
            ("content-length", b"0"),
        ],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "invalid_request");
    assert_eq!(
        counter(
            &stack.envoy.settled_stats(),
            "tollgate.decision.ambiguous_method_override"
        ),
        1
    );
}

#[test]
fn paths_are_matched_in_normal_form_without_the_connection_managers_help() {
    let stack = Stack::builder()
        .without_hcm_safeguards()
        .plugin_config(roomy_limits)
        .start();
    // Proof that Envoy hands the raw path over: nothing normalised it.
    let echo = send(&stack, "GET", "/public/a/./b/../c", &[]).upstream();
    assert_eq!(echo["path"], "/public/a/./b/../c");
    let refused = [
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/public/..;/admin/x",
        "/public/.%2E/admin/x",
        "/public//../admin/x",
        "/public/%2F..%2Fadmin/x",
        "/public/%252e%252e/admin/x",
        "//data",
    ];
    for path in refused {
        let r = send(&stack, "GET", path, &[]);
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        let body = r.json();
        assert_eq!(body["error"], "invalid_request", "{path}");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("path is ambiguous"),
            "{path}: {body}"
        );
    }
    assert_eq!(
        counter(
            &stack.envoy.settled_stats(),
            "tollgate.decision.ambiguous_path"
        ),
        refused.len() as u64
    );
    // Readings that agree pass; a normal form under a protected rule needs its credential.
    assert_eq!(send(&stack, "GET", "/public/%61/../b", &[]).status, 200);
    let r = send(&stack, "GET", "/admin/x/../y", &[]);
    assert_eq!(r.status, 401, "{}", r.body);
}
