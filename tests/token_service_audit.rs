//! The token service's audit events and `/metrics`, over real HTTP: after a scripted
//! session (client credentials, a wrong secret, sign-ins, the code flow, code and
//! refresh-token reuse, revocation, a lock-out, admin API changes), exactly the
//! expected events appear in the service's log with the documented fields, the
//! Prometheus figures moved as expected, and no credential used appears anywhere in
//! the log.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use support::http_agent;
use support::oauth::{
    authorize_url, code_request, exchange_code, post_form, refresh, Browser, Pkce,
};
use support::token_service::{basic_authorization, TokenService};

const APP: &str = "mobile";
const APP_REDIRECT: &str = "com.example.mobile:/oauth/callback";
const BACKEND: &str = "backend";
const OPS: &str = "ops";
const ALICE: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";
const WRONG_PASSWORD: &str = "wrong horse battery staple";

/// The events in the log, in order.
fn events(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect()
}

/// `name{labels} value` samples of the `/metrics` text.
fn metrics(service: &TokenService) -> BTreeMap<String, f64> {
    let mut response = http_agent()
        .get(&service.url("/metrics"))
        .call()
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let text = response.body_mut().read_to_string().expect("body");
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').expect("sample");
            (name.to_owned(), value.parse().expect("number"))
        })
        .collect()
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, name: &str) -> f64 {
    after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0)
}

fn string(body: &Value, field: &str) -> String {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {body}"))
        .to_owned()
}

/// Signs in at /authorize; returns the code, or `None` with the page's status when the
/// sign-in is refused.
fn sign_in(service: &TokenService, pkce: &Pkce, password: &str) -> Result<String, u16> {
    let browser = Browser::new();
    let url = authorize_url(
        &service.base_url(),
        &code_request(APP, APP_REDIRECT, "read:data", "st", pkce),
    );
    let login = browser.get(&url);
    assert_eq!(login.status, 200, "{}", login.body);
    let page = browser.submit(
        &login.form(),
        &[
            ("username", ALICE),
            ("password", password),
            ("decision", "approve"),
        ],
        &[],
    );
    if page.status == 303 {
        Ok(page.redirect_params()["code"].clone())
    } else {
        Err(page.status)
    }
}

#[test]
fn a_scripted_session_logs_exactly_the_expected_events_and_metrics_and_no_secret() {
    let mut service = TokenService::builder()
        .public_client(APP, "read:data", &[APP_REDIRECT])
        .client(BACKEND, "read:data")
        .client(OPS, "tollgate:admin")
        .user(ALICE, PASSWORD, "read:data")
        // A lock-out after two failures; reuse detected at once.
        .serve_arg("--throttle-account-failures", "2")
        .serve_arg("--refresh-reuse-grace", "0")
        .start();
    let backend_secret = service.secret(BACKEND).to_owned();
    let ops_secret = service.secret(OPS).to_owned();
    let before = metrics(&service);
    let mut secrets: Vec<String> = vec![
        PASSWORD.into(),
        WRONG_PASSWORD.into(),
        backend_secret.clone(),
        ops_secret.clone(),
    ];

    // 1. client_credentials with the proxy's request id, echoed back.
    let mut response = http_agent()
        .post(&service.token_url())
        .header("x-request-id", "audit-test-1")
        .header(
            "authorization",
            &basic_authorization(BACKEND, &backend_secret),
        )
        .send_form([("grant_type", "client_credentials")])
        .expect("token");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "audit-test-1");
    let body: Value = response.body_mut().read_json().expect("JSON");
    let backend_token = string(&body, "access_token");
    secrets.push(backend_token.clone());

    // 2. A wrong secret.
    let wrong_secret = "not-the-secret-of-backend";
    secrets.push(wrong_secret.into());
    let (status, _) = post_form(
        &service.token_url(),
        &[("grant_type", "client_credentials")],
        Some(&basic_authorization(BACKEND, wrong_secret)),
    );
    assert_eq!(status, 401);

    // 3. A failed sign-in, a good one, the code exchanged, then replayed.
    assert_eq!(sign_in(&service, &Pkce::new(), WRONG_PASSWORD), Err(200));
    let pkce = Pkce::new();
    let code = sign_in(&service, &pkce, PASSWORD).expect("signed in");
    secrets.push(code.clone());
    secrets.push(pkce.verifier.clone());
    let exchange = || {
        exchange_code(
            &service.token_url(),
            APP,
            &code,
            APP_REDIRECT,
            Some(&pkce.verifier),
        )
    };
    let (status, body) = exchange();
    assert_eq!(status, 200, "{body}");
    secrets.push(string(&body, "access_token"));
    secrets.push(string(&body, "refresh_token"));
    let (status, _) = exchange();
    assert_eq!(status, 400);

    // 4. Another sign-in; its refresh token rotated, then the old one replayed.
    let pkce = Pkce::new();
    let code = sign_in(&service, &pkce, PASSWORD).expect("signed in");
    secrets.push(code.clone());
    let (status, body) = exchange_code(
        &service.token_url(),
        APP,
        &code,
        APP_REDIRECT,
        Some(&pkce.verifier),
    );
    assert_eq!(status, 200, "{body}");
    let first_refresh = string(&body, "refresh_token");
    secrets.push(string(&body, "access_token"));
    secrets.push(first_refresh.clone());
    let (status, body) = refresh(&service.token_url(), APP, &first_refresh, None);
    assert_eq!(status, 200, "{body}");
    secrets.push(string(&body, "access_token"));
    secrets.push(string(&body, "refresh_token"));
    let (status, _) = refresh(&service.token_url(), APP, &first_refresh, None);
    assert_eq!(status, 400);

    // 5. The backend revokes its access token.
    let (status, _) = post_form(
        &service.url("/revoke"),
        &[("token", &backend_token)],
        Some(&basic_authorization(BACKEND, &backend_secret)),
    );
    assert_eq!(status, 200);

    // 6. Two wrong passwords, then a lock-out.
    assert_eq!(sign_in(&service, &Pkce::new(), WRONG_PASSWORD), Err(200));
    assert_eq!(sign_in(&service, &Pkce::new(), WRONG_PASSWORD), Err(200));
    assert_eq!(sign_in(&service, &Pkce::new(), WRONG_PASSWORD), Err(429));

    // 7. The admin API: a consumer and an API key.
    let ops_token = service.client_credentials_token(OPS, &ops_secret, None);
    secrets.push(ops_token.clone());
    let admin = |path: &str, body: Value| {
        let mut response = http_agent()
            .post(&service.url(path))
            .header("authorization", &format!("Bearer {ops_token}"))
            .send_json(body)
            .expect("admin call");
        assert_eq!(response.status(), 201);
        response.body_mut().read_json::<Value>().expect("JSON")
    };
    admin("/admin/consumers", json!({ "id": "partner-a" }));
    let key = admin("/admin/api-keys", json!({ "consumer": "partner-a" }));
    let key_id = string(&key, "id");
    secrets.push(string(&key, "api_key"));

    let after = metrics(&service);
    service.stop();
    let log = service.log();
    let events = events(&log);

    let names: Vec<&str> = events
        .iter()
        .map(|event| event["event"].as_str().expect("event name"))
        .collect();
    assert_eq!(
        names,
        [
            "token.issued",
            "client.authentication_failed",
            "token.refused",
            "sign_in.failed",
            "sign_in.succeeded",
            // The sign-in as a whole (acr, amr), after its last step.
            "sign_in.completed",
            "token.issued",
            "authorization_code.reuse_detected",
            "token.refused",
            "sign_in.succeeded",
            // The sign-in as a whole (acr, amr), after its last step.
            "sign_in.completed",
            "token.issued",
            "token.refreshed",
            "refresh_token.reuse_detected",
            "token.refused",
            "token.revoked",
            "sign_in.failed",
            "sign_in.failed",
            "authentication.throttled",
            "token.issued",
            "consumer.created",
            "api_key.created",
        ],
        "{log}"
    );

    // The envelope of every event.
    let mut request_ids = Vec::new();
    for event in &events {
        assert_eq!(event["schema"], "tollgate.token-service.audit", "{event}");
        assert_eq!(event["version"], 1, "{event}");
        assert_eq!(event["source"], "http", "{event}");
        let time = event["time"].as_str().expect("time");
        assert!(
            time.len() == 24 && time.ends_with('Z') && &time[10..11] == "T",
            "RFC 3339 UTC: {time}"
        );
        let request_id = event["request_id"].as_str().expect("request id");
        assert!(!request_id.is_empty());
        request_ids.push(request_id);
    }
    assert_eq!(request_ids[0], "audit-test-1", "the proxy's id is kept");
    assert_eq!(
        request_ids[1], request_ids[2],
        "one request, one id for its events"
    );
    assert_ne!(request_ids[2], request_ids[3]);

    // The fields of each kind.
    let find = |index: usize| &events[index];
    let issued = find(0);
    assert_eq!(issued["client_id"], BACKEND);
    assert_eq!(issued["client_address"], "127.0.0.1");
    assert_eq!(issued["grant_type"], "client_credentials");
    assert_eq!(issued["token_type"], "Bearer");
    assert_eq!(issued["scope"], "read:data");
    assert_eq!(issued["refresh_token_issued"], false);
    let jti = issued["jti"].as_str().expect("jti");
    let failed_auth = find(1);
    assert_eq!(failed_auth["client_id"], BACKEND);
    assert_eq!(failed_auth["client_address"], "127.0.0.1");
    let refused = find(2);
    assert_eq!(refused["error"], "invalid_client");
    assert_eq!(refused["grant_type"], "client_credentials");
    assert_eq!(refused["client_id"], BACKEND);
    let failed_sign_in = find(3);
    assert_eq!(failed_sign_in["username"], ALICE);
    assert_eq!(failed_sign_in["client_id"], APP);
    assert_eq!(failed_sign_in["client_address"], "127.0.0.1");
    assert_eq!(failed_sign_in["reason"], "bad_credentials");
    let signed_in = find(4);
    assert_eq!(signed_in["username"], ALICE);
    assert_eq!(signed_in["client_id"], APP);
    assert_eq!(signed_in["client_address"], "127.0.0.1");
    assert!(signed_in["user_id"].is_string());
    assert_eq!(find(6)["grant_type"], "authorization_code");
    assert_eq!(find(6)["refresh_token_issued"], true);
    let code_reuse = find(7);
    assert_eq!(code_reuse["client_id"], APP);
    assert_eq!(code_reuse["action"], "grant_revoked");
    assert!(code_reuse["grant_id"].is_i64());
    assert!(code_reuse["code_fingerprint"]
        .as_str()
        .is_some_and(|print| print.starts_with("sha256:") && print.len() == 23));
    assert_eq!(find(8)["error"], "invalid_grant");
    assert_eq!(find(12)["grant_type"], "refresh_token");
    let refresh_reuse = find(13);
    assert_eq!(refresh_reuse["client_id"], APP);
    assert_eq!(refresh_reuse["action"], "grant_revoked");
    assert!(refresh_reuse["token_fingerprint"].is_string());
    assert_eq!(find(14)["error"], "invalid_grant");
    let revoked = find(15);
    assert_eq!(revoked["client_id"], BACKEND);
    assert_eq!(revoked["token_kind"], "access_token");
    assert_eq!(revoked["jti"], jti);
    let throttled = find(18);
    assert_eq!(throttled["account"], "user");
    assert_eq!(throttled["username"], ALICE);
    assert_eq!(throttled["client_address"], "127.0.0.1");
    assert!(throttled["retry_after"]
        .as_u64()
        .is_some_and(|secs| secs >= 1));
    let consumer = find(20);
    assert_eq!(consumer["consumer_id"], "partner-a");
    assert_eq!(consumer["actor"], OPS);
    let api_key = find(21);
    assert_eq!(api_key["api_key_id"], key_id.as_str());
    assert_eq!(api_key["consumer_id"], "partner-a");
    assert_eq!(api_key["actor"], OPS);

    // The metrics moved by exactly what the session did.
    for (name, expected) in [
        (
            r#"tollgate_token_service_tokens_issued_total{grant_type="client_credentials"}"#,
            2.0,
        ),
        (
            r#"tollgate_token_service_tokens_issued_total{grant_type="authorization_code"}"#,
            2.0,
        ),
        (
            r#"tollgate_token_service_tokens_issued_total{grant_type="refresh_token"}"#,
            1.0,
        ),
        (
            r#"tollgate_token_service_requests_total{endpoint="/token",status="200"}"#,
            5.0,
        ),
        (
            r#"tollgate_token_service_requests_total{endpoint="/token",status="401"}"#,
            1.0,
        ),
        (
            r#"tollgate_token_service_requests_total{endpoint="/token",status="400"}"#,
            2.0,
        ),
        (
            r#"tollgate_token_service_requests_total{endpoint="/revoke",status="200"}"#,
            1.0,
        ),
        (
            r#"tollgate_token_service_requests_total{endpoint="/authorize",status="429"}"#,
            1.0,
        ),
        (
            r#"tollgate_token_service_requests_total{endpoint="/admin/consumers",status="201"}"#,
            1.0,
        ),
        (
            r#"tollgate_token_service_requests_total{endpoint="/metrics",status="200"}"#,
            1.0,
        ),
        (
            r#"tollgate_token_service_throttled_total{account="user"}"#,
            1.0,
        ),
        (
            r#"tollgate_token_service_sign_ins_total{outcome="failed"}"#,
            3.0,
        ),
        (
            r#"tollgate_token_service_sign_ins_total{outcome="succeeded"}"#,
            2.0,
        ),
        ("tollgate_token_service_refresh_token_reuse_total", 1.0),
        ("tollgate_token_service_code_reuse_total", 1.0),
    ] {
        assert_eq!(delta(&before, &after, name), expected, "{name}\n{after:#?}");
    }
    assert_eq!(after["tollgate_token_service_hash_queue_waiting"], 0.0);
    assert_eq!(after["tollgate_token_service_hash_queue_in_flight"], 0.0);
    assert!(after["tollgate_token_service_hash_queue_slots"] >= 1.0);

    // No credential used in the session appears anywhere in the service's log.
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "{secret} is in the log");
    }
}
