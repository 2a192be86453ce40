//! Context conditions and step-up through the whole pipeline, on a fake host
//! whose clock the tests set: time windows across a DST change, what is
//! checked before the credential, and tokens re-judged by the clock of each
//! request even when their verification is cached.

use crate::config::parse;
use crate::credentials::{HeaderEdit, RequestView};
use crate::crypto::PureVerifier;
use crate::decision::Reason;
use crate::host::fakes::FakeHost;
use crate::jwk::tests::es256_jwk;
use crate::pipeline::{on_request, Step};
use crate::worker::Worker;
use jwt_simple::prelude::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Monday 2025-06-02 07:30 UTC: 09:30 in Paris (summer time, UTC+2).
const JUNE_MONDAY_0930_PARIS: u64 = 1_748_849_400;
/// Monday 2025-12-01 07:30 UTC: 08:30 in Paris (winter time, UTC+1).
const DECEMBER_MONDAY_0830_PARIS: u64 = 1_764_574_200;

struct Fixture {
    worker: Worker,
    key: ES256KeyPair,
}

fn fixture(rules: Value) -> Fixture {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let jwks = json!({"keys": [es256_jwk(&key, "k1")]}).to_string();
    let config = json!({
        "realm": "api",
        "providers": {"local": {"issuer": "https://issuer.test",
                                "local_jwks": {"inline_string": jwks}}},
        "geoip": {"country_header": "x-geo-country"},
        "rules": rules
    });
    Fixture {
        worker: Worker::new(
            parse(config.to_string().as_bytes()).unwrap(),
            Box::new(PureVerifier),
        ),
        key,
    }
}

impl Fixture {
    /// A token issued at `now` with these extra claims.
    fn token(&self, now: u64, extra: Value) -> String {
        let mut claims = json!({"iss": "https://issuer.test", "sub": "alice",
                                "iat": now, "exp": now + 3600});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let claims: JWTClaims<serde_json::Map<String, Value>> =
            serde_json::from_value(claims).unwrap();
        self.key.sign(claims).unwrap()
    }

    fn send(&self, host: &FakeHost, method: &str, ip: &str, headers: &[(&str, &str)]) -> Step {
        let headers: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        let req = RequestView {
            method,
            path: "/back-office/report",
            headers: &headers,
            client_ip: Some(ip),
            received_us: 0,
            client_cert: None,
        };
        on_request(&self.worker, host.host(), &req)
    }
}

fn status(step: &Step) -> u32 {
    match step {
        Step::Continue { .. } => 200,
        Step::Respond(d) => d.status,
        Step::Wait { .. } | Step::Park { .. } | Step::CallRateLimit(_) => 0,
    }
}

fn reason(host: &FakeHost) -> Reason {
    *host.metrics.decisions.borrow().last().unwrap()
}

fn header<'s>(step: &'s Step, name: &str) -> Option<&'s str> {
    match step {
        Step::Respond(d) => d
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str()),
        _ => None,
    }
}

fn body(step: &Step) -> Value {
    match step {
        Step::Respond(d) => serde_json::from_str(&d.body).unwrap(),
        _ => Value::Null,
    }
}

fn back_office() -> Value {
    json!([{"match": {"prefix": "/back-office/"}, "requires": {"context": {
        "client_address": {"allow": ["10.0.0.0/8"], "deny": ["10.6.0.0/16"]},
        "time_windows": [{"time_zone": "Europe/Paris",
                          "days": ["mon", "tue", "wed", "thu", "fri"],
                          "from": "08:00", "to": "20:00"}]
    }}}])
}

#[test]
fn office_hours_follow_paris_clocks_across_dst_with_the_injected_clock() {
    let f = fixture(back_office());
    let host = FakeHost::at_secs(JUNE_MONDAY_0930_PARIS);
    let bearer = |now| format!("Bearer {}", f.token(now, json!({})));
    let auth = bearer(JUNE_MONDAY_0930_PARIS);
    let step = f.send(&host, "GET", "10.1.2.3", &[("authorization", &auth)]);
    assert_eq!(status(&step), 200);
    // 18:30 UTC in June is 20:30 in Paris: closed.
    host.clock
        .as_ref()
        .unwrap()
        .advance(Duration::from_secs(11 * 3600));
    let step = f.send(&host, "GET", "10.1.2.3", &[("authorization", &auth)]);
    assert_eq!(status(&step), 403);
    assert_eq!(reason(&host), Reason::OutsideTimeWindow);
    assert_eq!(body(&step)["error"], "access_denied");
    assert_eq!(
        body(&step)["error_description"],
        "this resource is not available at this time (mon-fri 08:00-20:00 Europe/Paris)"
    );
    assert_eq!(header(&step, "www-authenticate"), None);
    // The same 18:30 UTC in December is 19:30 in Paris: open.
    let december = FakeHost::at_secs(DECEMBER_MONDAY_0830_PARIS + 11 * 3600);
    let auth = bearer(DECEMBER_MONDAY_0830_PARIS + 11 * 3600);
    let step = f.send(&december, "GET", "10.1.2.3", &[("authorization", &auth)]);
    assert_eq!(status(&step), 200);
    // And 07:30 UTC in December is 08:30 in Paris, 06:30 UTC is 07:30: closed.
    let early = FakeHost::at_secs(DECEMBER_MONDAY_0830_PARIS - 3600);
    let step = f.send(&early, "GET", "10.1.2.3", &[("authorization", &auth)]);
    assert_eq!(status(&step), 403);
    assert_eq!(reason(&early), Reason::OutsideTimeWindow);
}

#[test]
fn request_conditions_refuse_before_the_credential_is_looked_at() {
    let f = fixture(back_office());
    let host = FakeHost::at_secs(JUNE_MONDAY_0930_PARIS);
    for ip in ["192.0.2.1", "10.6.1.1"] {
        // No token at all: the address decides first (403, not 401).
        let step = f.send(&host, "GET", ip, &[]);
        assert_eq!(status(&step), 403, "{ip}");
        assert_eq!(reason(&host), Reason::AddressNotAllowed);
        assert_eq!(
            body(&step)["error_description"],
            "requests from this address are not allowed here"
        );
    }
    // From an allowed address, the missing credential is the next refusal.
    let step = f.send(&host, "GET", "10.1.2.3", &[]);
    assert_eq!(status(&step), 401);
    assert_eq!(reason(&host), Reason::MissingCredentials);
}

#[test]
fn versions_countries_and_devices() {
    let f = fixture(json!([
        {"match": {"prefix": "/back-office/"}, "requires": {"context": {
            "country": {"allow": ["FR", "DE"]},
            "headers": [{"name": "x-app-version", "min_version": "2.4.0"}],
            "device_binding": {"claim": "device_id", "header": "x-device-id"}
        }}}
    ]));
    let host = FakeHost::at_secs(JUNE_MONDAY_0930_PARIS);
    let auth = format!(
        "Bearer {}",
        f.token(JUNE_MONDAY_0930_PARIS, json!({"device_id": "dev-1"}))
    );
    let send = |h: &[(&str, &str)]| {
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend_from_slice(h);
        f.send(&host, "GET", "203.0.113.7", &headers)
    };
    let good = [
        ("x-geo-country", "FR"),
        ("x-app-version", "2.10.0"),
        ("x-device-id", "dev-1"),
    ];
    let step = send(&good);
    assert_eq!(status(&step), 200);
    let Step::Continue { identity, .. } = &step else {
        panic!()
    };
    assert!(identity.contains(&HeaderEdit::Set(
        "x-tollgate-subject".into(),
        "alice".into()
    )));

    let with = |name: &str, value: &str| {
        let mut h: Vec<(&str, &str)> = good.iter().filter(|(n, _)| *n != name).copied().collect();
        h.push((name, value));
        h.into_iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    };
    let send_owned = |h: Vec<(String, String)>| {
        let h: Vec<(&str, &str)> = h.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        send(&h)
    };
    let step = send_owned(with("x-app-version", "2.3.12"));
    assert_eq!((status(&step), reason(&host)), (403, Reason::VersionTooOld));
    assert_eq!(
        body(&step)["error_description"],
        "the client version is missing or too old: update it (x-app-version: 2.4.0 or later)"
    );
    let step = send_owned(with("x-geo-country", "US"));
    assert_eq!(
        (status(&step), reason(&host)),
        (403, Reason::CountryNotAllowed)
    );
    let step = send_owned(with("x-device-id", "dev-2"));
    assert_eq!(
        (status(&step), reason(&host)),
        (403, Reason::DeviceMismatch)
    );
}

#[test]
fn step_up_challenges_are_rfc_9470_and_judged_by_each_request_clock() {
    let f = fixture(json!([
        {"match": {"prefix": "/back-office/"}, "requires": {"step_up": {
            "acr": ["urn:acme:mfa", "urn:acme:hwk"], "max_age": "300s",
            "amr": {"any_of": ["mfa", "hwk"]}}}}
    ]));
    let now = JUNE_MONDAY_0930_PARIS;
    let host = FakeHost::at_secs(now);
    let send = |token: &str| {
        let auth = format!("Bearer {token}");
        f.send(&host, "DELETE", "203.0.113.7", &[("authorization", &auth)])
    };
    let strong = f.token(
        now,
        json!({"acr": "urn:acme:mfa", "amr": ["pwd", "mfa"], "auth_time": now - 60}),
    );
    assert_eq!(status(&send(&strong)), 200);
    let challenge = "Bearer realm=\"api\", error=\"insufficient_user_authentication\", \
        error_description=\"a stronger or more recent authentication is required\", \
        acr_values=\"urn:acme:mfa urn:acme:hwk\", max_age=\"300\"";
    for weak in [
        json!({"acr": "urn:acme:pwd", "amr": ["mfa"], "auth_time": now - 60}),
        json!({"acr": "urn:acme:mfa", "amr": ["pwd"], "auth_time": now - 60}),
        json!({"acr": "urn:acme:mfa", "amr": ["mfa"], "auth_time": now - 301}),
        json!({"acr": "urn:acme:mfa", "amr": ["mfa"]}),
    ] {
        let step = send(&f.token(now, weak.clone()));
        assert_eq!(status(&step), 401, "{weak}");
        assert_eq!(reason(&host), Reason::InsufficientUserAuthentication);
        assert_eq!(header(&step, "www-authenticate"), Some(challenge), "{weak}");
        assert_eq!(body(&step)["error"], "insufficient_user_authentication");
    }
    // The strong token, cached since its first use, ages out with the clock:
    // 241 s later its sign-in is 301 s old.
    host.clock
        .as_ref()
        .unwrap()
        .advance(Duration::from_secs(241));
    let step = send(&strong);
    assert_eq!(status(&step), 401);
    assert_eq!(header(&step, "www-authenticate"), Some(challenge));
}
