//! End-to-end: context conditions (client address, country from Envoy's geoip
//! filter, time windows, request headers, device binding) and step-up
//! authentication (RFC 9470) through real Envoy, with tokens the tests mint
//! (any claims, signed by the stack's test issuer).

use jwt_simple::prelude::*;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};
use support::envoy::counter;
use support::from_address::{request, Response};
use support::geoip::{add_geoip, CountryDatabase, COUNTRY_HEADER};
use support::stack::{claims, Stack, TEST_ISSUER};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token of the stack's test issuer with these claims on top of the defaults.
fn token(stack: &Stack, extra: Value) -> String {
    stack.keys.es256.sign(claims(TEST_ISSUER, extra)).unwrap()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Puts `rules` before the sample's own (the first match wins).
fn prepend_rules(config: &mut Value, rules: Value) {
    let sample = config["rules"].as_array().unwrap().clone();
    let mut all = rules.as_array().unwrap().clone();
    all.extend(sample);
    config["rules"] = Value::Array(all);
}

/// `HH:MM` of a minute of the day.
fn hhmm(minute: u64) -> String {
    format!("{:02}:{:02}", (minute % 1440) / 60, minute % 60)
}

/// A refusal by Tollgate (not the upstream): its status, JSON error and reason.
fn assert_refused(r: &Response, status: u16, error: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    assert_eq!(r.json()["error"], error, "{what}: {}", r.body);
}

/// What the sample API received: it echoes the request's headers.
fn upstream_headers(r: &Response, what: &str) -> Value {
    assert_eq!(r.status, 200, "{what}: {}", r.body);
    r.json()["headers"].clone()
}

/// Waits (stats reach Envoy on each worker's next tick) until Envoy has counted
/// at least `at_least` decisions for `reason`.
fn assert_counted(stack: &Stack, reason: &str, at_least: u64) {
    let name = format!("tollgate.decision.{reason}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let n = counter(&stack.envoy.stats(), &name);
        if n >= at_least {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} = {n}, expected at least {at_least}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn each_condition_allows_when_it_holds_and_refuses_with_its_reason_when_not() {
    // Asia/Kolkata is UTC+05:30 all year: the window open now runs from half
    // an hour ago to half an hour from now there; the closed one starts in two hours.
    let kolkata = (now() / 60 + 330) % 1440;
    let (open_from, open_to) = (hhmm(kolkata + 1410), hhmm(kolkata + 30));
    let (closed_from, closed_to) = (hhmm(kolkata + 120), hhmm(kolkata + 180));
    let window =
        |from: &str, to: &str| json!([{"time_zone": "Asia/Kolkata", "from": from, "to": to}]);
    let rules = json!([
        {"match": {"prefix": "/ctx/office"},
         "requires": {"context": {"client_address": {"allow": ["127.0.0.2/32"]}}}},
        {"match": {"prefix": "/ctx/not-3"},
         "requires": {"context": {"client_address": {"deny": ["127.0.0.3"]}}}},
        {"match": {"prefix": "/ctx/open-now"},
         "requires": {"context": {"time_windows": window(&open_from, &open_to)}}},
        {"match": {"prefix": "/ctx/closed-now"},
         "requires": {"context": {"time_windows": window(&closed_from, &closed_to)}}},
        {"match": {"prefix": "/ctx/app"},
         "requires": {"context": {"headers": [
            {"name": "x-app-version", "min_version": "2.4.0"},
            {"name": "x-platform", "one_of": ["ios", "android"]}]}}},
        {"match": {"prefix": "/ctx/device"},
         "requires": {"context": {"device_binding": {"claim": "device_id", "header": "x-device-id"}}}},
        {"match": {"prefix": "/ctx/any-device"},
         "requires": {"context": {"device_binding": {"claim": "device_id"}}}}
    ]);
    let stack = Stack::builder()
        .plugin_config(move |c| {
            // The address is the entry Envoy (use_remote_address) appended to
            // X-Forwarded-For: the client's own entries are not trusted.
            c["client_ip"] = json!({"from": "x_forwarded_for", "trusted_hops": 1});
            prepend_rules(c, rules);
        })
        .start();
    let port = stack.ports.listener;
    let user = bearer(&token(&stack, json!({"device_id": "phone-42"})));
    let send = |from: &str, path: &str, extra: &[(&str, &str)]| {
        let mut headers = vec![("authorization", user.as_str())];
        headers.extend_from_slice(extra);
        request(from, port, "GET", path, &headers)
    };

    // Client address: an allow list, and a deny list.
    let h = upstream_headers(&send("127.0.0.2", "/ctx/office", &[]), "allowed address");
    assert_eq!(h["x-tollgate-subject"], "test-user");
    let r = send("127.0.0.3", "/ctx/office", &[]);
    assert_refused(&r, 403, "access_denied", "address not in the allow list");
    assert_eq!(
        r.json()["error_description"],
        "requests from this address are not allowed here"
    );
    assert_eq!(r.header("www-authenticate"), None);
    let r = send(
        "127.0.0.3",
        "/ctx/office",
        &[("x-forwarded-for", "127.0.0.2")],
    );
    assert_refused(&r, 403, "access_denied", "a spoofed X-Forwarded-For");
    let r = request("127.0.0.3", port, "GET", "/ctx/office", &[]);
    assert_refused(
        &r,
        403,
        "access_denied",
        "no token: the address decides first",
    );
    assert_eq!(
        upstream_headers(&send("127.0.0.2", "/ctx/not-3", &[]), "deny list")["x-tollgate-subject"],
        "test-user"
    );
    assert_refused(
        &send("127.0.0.3", "/ctx/not-3", &[]),
        403,
        "access_denied",
        "denied address",
    );

    // Time windows, in a named zone.
    upstream_headers(
        &send("127.0.0.2", "/ctx/open-now", &[]),
        "inside the window",
    );
    let r = send("127.0.0.2", "/ctx/closed-now", &[]);
    assert_refused(&r, 403, "access_denied", "outside the window");
    assert_eq!(
        r.json()["error_description"],
        format!(
            "this resource is not available at this time (mon-sun {closed_from}-{closed_to} Asia/Kolkata)"
        )
    );

    // Request headers: a minimum app version (compared as a version) and a set.
    let app = |version: Option<&str>, platform: &str| {
        let mut h = vec![("x-platform", platform)];
        if let Some(v) = version {
            h.push(("x-app-version", v));
        }
        send("127.0.0.2", "/ctx/app", &h)
    };
    let h = upstream_headers(&app(Some("2.10.0"), "ios"), "2.10.0 is newer than 2.4.0");
    assert_eq!(h["x-app-version"], "2.10.0");
    for outdated in [Some("2.3.12"), Some("2.4.0-beta.1"), Some("two"), None] {
        let r = app(outdated, "ios");
        assert_refused(&r, 403, "access_denied", &format!("version {outdated:?}"));
        assert_eq!(
            r.json()["error_description"],
            "the client version is missing or too old: update it (x-app-version: 2.4.0 or later)"
        );
    }
    let r = app(Some("3.0"), "web");
    assert_refused(&r, 403, "access_denied", "platform not in the set");
    assert_eq!(
        r.json()["error_description"],
        "the request lacks an attribute this resource requires (x-platform: one of ios, android)"
    );

    // Device binding: the token's device_id against the request's x-device-id.
    upstream_headers(
        &send("127.0.0.2", "/ctx/device", &[("x-device-id", "phone-42")]),
        "the bound device",
    );
    let r = send("127.0.0.2", "/ctx/device", &[("x-device-id", "phone-7")]);
    assert_refused(&r, 403, "access_denied", "another device");
    assert_eq!(
        r.json()["error_description"],
        "the access token is not bound to this device"
    );
    assert_refused(
        &send("127.0.0.2", "/ctx/device", &[]),
        403,
        "access_denied",
        "no device header",
    );
    upstream_headers(&send("127.0.0.2", "/ctx/any-device", &[]), "a device claim");
    let unbound = bearer(&token(&stack, json!({})));
    let r = request(
        "127.0.0.2",
        port,
        "GET",
        "/ctx/any-device",
        &[("authorization", &unbound)],
    );
    assert_refused(&r, 403, "access_denied", "a token without a device claim");

    // Each refusal was counted under its own reason.
    for (reason, at_least) in [
        ("address_not_allowed", 4),
        ("outside_time_window", 1),
        ("version_too_old", 4),
        ("attribute_mismatch", 1),
        ("device_mismatch", 3),
    ] {
        assert_counted(&stack, reason, at_least);
    }
}

#[test]
fn step_up_challenges_are_exactly_rfc_9470() {
    let rules = json!([
        {"match": {"prefix": "/ctx/acr"},
         "requires": {"step_up": {"acr": ["urn:acme:gold"]}}},
        {"match": {"prefix": "/ctx/recent"},
         "requires": {"step_up": {"max_age": "300s"}}},
        {"match": {"prefix": "/ctx/both"},
         "requires": {"step_up": {"acr": ["urn:acme:gold", "urn:acme:platinum"], "max_age": "60s"}}},
        {"match": {"prefix": "/ctx/mfa"},
         "requires": {"step_up": {"amr": {"any_of": ["mfa", "hwk"]}, "max_age": "300s"}}}
    ]);
    let stack = Stack::builder()
        .plugin_config(move |c| prepend_rules(c, rules))
        .start();
    let port = stack.ports.listener;
    let t = now();
    let send = |path: &str, extra: Value| {
        let auth = bearer(&token(&stack, extra));
        request("127.0.0.1", port, "GET", path, &[("authorization", &auth)])
    };
    let challenge = |params: &str| {
        let mut c =
            "Bearer realm=\"tollgate-sample\", error=\"insufficient_user_authentication\", \
                     error_description=\"a stronger or more recent authentication is required\""
                .to_string();
        if !params.is_empty() {
            c.push_str(", ");
            c.push_str(params);
        }
        c
    };
    let refused = |r: &Response, params: &str, what: &str| {
        assert_refused(r, 401, "insufficient_user_authentication", what);
        assert_eq!(
            r.header("www-authenticate"),
            Some(challenge(params).as_str()),
            "{what}"
        );
    };

    // acr in a set.
    upstream_headers(&send("/ctx/acr", json!({"acr": "urn:acme:gold"})), "gold");
    refused(
        &send("/ctx/acr", json!({"acr": "urn:acme:silver"})),
        "acr_values=\"urn:acme:gold\"",
        "silver",
    );
    refused(
        &send("/ctx/acr", json!({})),
        "acr_values=\"urn:acme:gold\"",
        "no acr",
    );

    // auth_time no older than max_age.
    upstream_headers(&send("/ctx/recent", json!({"auth_time": t - 60})), "recent");
    refused(
        &send("/ctx/recent", json!({"auth_time": t - 600})),
        "max_age=\"300\"",
        "ten minutes old",
    );
    refused(
        &send("/ctx/recent", json!({})),
        "max_age=\"300\"",
        "no auth_time",
    );

    // Both: the challenge names both, whichever the token missed.
    let both = "acr_values=\"urn:acme:gold urn:acme:platinum\", max_age=\"60\"";
    upstream_headers(
        &send(
            "/ctx/both",
            json!({"acr": "urn:acme:platinum", "auth_time": t - 5}),
        ),
        "platinum, just now",
    );
    refused(
        &send(
            "/ctx/both",
            json!({"acr": "urn:acme:gold", "auth_time": t - 120}),
        ),
        both,
        "gold, but two minutes old",
    );
    refused(
        &send(
            "/ctx/both",
            json!({"acr": "urn:acme:bronze", "auth_time": t}),
        ),
        both,
        "just now, but bronze",
    );

    // amr holding a second factor, within five minutes: RFC 9470 has no amr
    // parameter, so the challenge carries max_age only.
    upstream_headers(
        &send(
            "/ctx/mfa",
            json!({"amr": ["pwd", "mfa"], "auth_time": t - 30}),
        ),
        "a second factor",
    );
    refused(
        &send("/ctx/mfa", json!({"amr": ["pwd"], "auth_time": t - 30})),
        "max_age=\"300\"",
        "password only",
    );

    assert_counted(&stack, "insufficient_user_authentication", 7);
}

/// 127.0.0.2 is in France and 127.0.0.3 in the United States, according to a
/// country database written for the test; 127.0.0.4 is in none.
fn countries() -> CountryDatabase {
    CountryDatabase::write(&[("127.0.0.2/32", "FR"), ("127.0.0.3/32", "US")])
}

fn geoip_stack(database: &CountryDatabase, strip_client_copies: bool) -> Stack {
    let path = database.path();
    Stack::builder()
        .envoy_config(move |c| add_geoip(c, &path, strip_client_copies))
        .plugin_config(|c| {
            c["geoip"] = json!({"country_header": COUNTRY_HEADER});
            prepend_rules(
                c,
                json!([
                    {"match": {"prefix": "/ctx/eu"},
                     "requires": {"context": {"country": {"allow": ["FR", "DE"]}}}},
                    {"match": {"prefix": "/ctx/not-us"},
                     "requires": {"context": {"country": {"deny": ["US"], "allow_unknown": true}}}}
                ]),
            );
        })
        .start()
}

#[test]
fn countries_come_from_envoys_geoip_filter_and_never_from_the_client() {
    let db = countries();
    let stack = geoip_stack(&db, true);
    let port = stack.ports.listener;
    let user = bearer(&token(&stack, json!({})));
    let send = |from: &str, path: &str, spoof: Option<&str>| {
        let mut headers = vec![("authorization", user.as_str())];
        if let Some(country) = spoof {
            headers.push((COUNTRY_HEADER, country));
        }
        request(from, port, "GET", path, &headers)
    };

    let h = upstream_headers(&send("127.0.0.2", "/ctx/eu", None), "from France");
    assert_eq!(h[COUNTRY_HEADER], "FR", "the geoip filter's header");
    let r = send("127.0.0.3", "/ctx/eu", None);
    assert_refused(&r, 403, "access_denied", "from the United States");
    assert_eq!(
        r.json()["error_description"],
        "requests from this country are not allowed here"
    );
    // Spoofed: the geoip filter overwrites the copy of an address it knows,
    // and the early mutation removes the copy of an address it does not.
    assert_refused(
        &send("127.0.0.3", "/ctx/eu", Some("FR")),
        403,
        "access_denied",
        "US client claiming FR",
    );
    assert_refused(
        &send("127.0.0.4", "/ctx/eu", Some("DE")),
        403,
        "access_denied",
        "unknown address claiming DE",
    );
    assert_refused(
        &send("127.0.0.4", "/ctx/eu", None),
        403,
        "access_denied",
        "unknown country",
    );
    // A deny list that lets unknown countries through.
    upstream_headers(
        &send("127.0.0.2", "/ctx/not-us", None),
        "France, not the US",
    );
    upstream_headers(&send("127.0.0.4", "/ctx/not-us", None), "unknown, allowed");
    assert_refused(
        &send("127.0.0.3", "/ctx/not-us", Some("FR")),
        403,
        "access_denied",
        "US client claiming FR on the deny-list route",
    );
    assert_counted(&stack, "country_not_allowed", 5);
}

/// Why the README's geoip set-up removes the client's copy first: Envoy's geoip
/// filter leaves the header alone for an address its database has no entry
/// for, so without that step a client there could name its own country.
#[test]
fn without_the_early_header_mutation_an_unknown_address_could_name_its_country() {
    let db = countries();
    let stack = geoip_stack(&db, false);
    let port = stack.ports.listener;
    let user = bearer(&token(&stack, json!({})));
    let send = |from: &str, country: &str| {
        request(
            from,
            port,
            "GET",
            "/ctx/eu",
            &[("authorization", &user), (COUNTRY_HEADER, country)],
        )
    };
    assert_refused(
        &send("127.0.0.3", "FR"),
        403,
        "access_denied",
        "known address: overwritten",
    );
    let h = upstream_headers(&send("127.0.0.4", "DE"), "the client's own copy survives");
    assert_eq!(h[COUNTRY_HEADER], "DE");
}

/// Whether the sample's back-office window (Monday to Friday, 08:00 to 20:00 in
/// Europe/Paris) is open at `unix`: central European time is UTC+1, and UTC+2
/// from the last Sunday of March to the last Sunday of October, 01:00 UTC.
fn paris_office_hours(unix: u64) -> bool {
    let days = (unix / 86_400) as i64;
    let (year, _, _) = civil(days);
    let last_sunday = |month: i64| {
        let end = days_from_civil(year, month + 1, 1) - 1;
        end - (end + 4).rem_euclid(7) // 1970-01-01 was a Thursday (Sunday = 0 at +4).
    };
    let summer_start = last_sunday(3) * 86_400 + 3_600;
    let summer_end = last_sunday(10) * 86_400 + 3_600;
    let unix = unix as i64;
    let offset = if (summer_start..summer_end).contains(&unix) {
        7_200
    } else {
        3_600
    };
    let local = unix + offset;
    let weekday = (local.div_euclid(86_400) + 3).rem_euclid(7); // Monday = 0
    let minute = local.rem_euclid(86_400) / 60;
    weekday < 5 && (8 * 60..20 * 60).contains(&minute)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let (y, m) = if m > 12 { (y + 1, m - 12) } else { (y, m) };
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[test]
fn the_paris_rule_of_this_test_is_right() {
    // Monday 2025-06-02 07:30 UTC = 09:30 CEST; 18:30 UTC = 20:30 CEST.
    assert!(paris_office_hours(1_748_849_400));
    assert!(!paris_office_hours(1_748_849_400 + 11 * 3_600));
    // Monday 2025-12-01 18:30 UTC = 19:30 CET; Saturday 2025-12-06 10:00 UTC.
    assert!(paris_office_hours(1_764_613_800));
    assert!(!paris_office_hours(1_765_015_200));
    // The change: Sunday 2025-03-30 01:00 UTC. Monday 31st 06:30 UTC is 08:30
    // CEST (open); Friday 28th 06:30 UTC was 07:30 CET (closed).
    assert!(paris_office_hours(1_743_402_600));
    assert!(!paris_office_hours(1_743_143_400));
}

/// The sample stack's own routes refuse as the README shows with curl: an
/// outdated app version, the back-office from another address (and outside
/// office hours), DELETE /data without a recent second factor.
#[test]
fn the_sample_routes_refuse_as_the_readme_shows() {
    let stack = Stack::start();
    let port = stack.ports.listener;
    let reader = bearer(&stack.token("reader", Some("read:data")));
    let app = |version: &str| {
        request(
            "127.0.0.1",
            port,
            "GET",
            "/app/feed",
            &[("authorization", &reader), ("x-app-version", version)],
        )
    };
    upstream_headers(&app("2.4.0"), "the current app");
    let r = app("2.3.9");
    assert_refused(&r, 403, "access_denied", "an outdated app");
    assert_eq!(
        r.json()["error_description"],
        "the client version is missing or too old: update it (x-app-version: 2.4.0 or later)"
    );

    let operator = bearer(&stack.token("operator", Some("read:data admin")));
    let back_office = |from: &str| {
        request(
            from,
            port,
            "GET",
            "/back-office/report",
            &[("authorization", &operator)],
        )
    };
    let r = back_office("127.0.0.2");
    assert_refused(&r, 403, "access_denied", "back-office from another address");
    assert_eq!(
        r.json()["error_description"],
        "requests from this address are not allowed here"
    );
    let before = paris_office_hours(now());
    let r = back_office("127.0.0.1");
    if before == paris_office_hours(now()) {
        if before {
            upstream_headers(&r, "back-office in office hours");
        } else {
            assert_refused(&r, 403, "access_denied", "back-office outside office hours");
            assert_eq!(
                r.json()["error_description"],
                "this resource is not available at this time (mon-fri 08:00-20:00 Europe/Paris)"
            );
        }
    }

    let backend = bearer(&stack.token("mobile-app", Some("read:data write:data")));
    let r = request(
        "127.0.0.1",
        port,
        "DELETE",
        "/data",
        &[("authorization", &backend)],
    );
    assert_refused(
        &r,
        401,
        "insufficient_user_authentication",
        "no second factor",
    );
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            "Bearer realm=\"tollgate-sample\", error=\"insufficient_user_authentication\", \
             error_description=\"a stronger or more recent authentication is required\", \
             max_age=\"300\""
        )
    );
    // A user who signed in with a second factor two minutes ago (a token of
    // the test issuer, as any IdP that sets amr and auth_time would issue).
    let stepped_up = bearer(&token(
        &stack,
        json!({"scope": "read:data write:data", "amr": ["pwd", "mfa"], "auth_time": now() - 120}),
    ));
    let r = request(
        "127.0.0.1",
        port,
        "DELETE",
        "/data",
        &[("authorization", &stepped_up)],
    );
    assert_eq!(
        upstream_headers(&r, "stepped up")["x-tollgate-subject"],
        "test-user"
    );
}

/// A bad zone, CIDR, version or country code stops Envoy from loading the
/// plugin, and its log names the field.
#[test]
fn invalid_conditions_stop_the_plugin_from_loading_naming_the_field() {
    use support::envoy::{Envoy, EnvoyConfig, StackPorts};
    let sample = EnvoyConfig::sample(StackPorts::free());
    let good = sample.plugin_config();
    let cases = [
        (
            json!({"time_windows": [{"time_zone": "Europe/Pariss", "from": "08:00", "to": "20:00"}]}),
            "at `rules[0].requires.context.time_windows[0].time_zone`: unknown time zone `Europe/Pariss`",
        ),
        (
            json!({"client_address": {"allow": ["10.0.0.0/33"]}}),
            "at `rules[0].requires.context.client_address.allow[0]`: \"10.0.0.0/33\" is not an IP address or CIDR range",
        ),
        (
            json!({"headers": [{"name": "x-app-version", "min_version": "2.x"}]}),
            "at `rules[0].requires.context.headers[0].min_version`: `2.x` is not a version",
        ),
        (
            json!({"country": {"allow": ["UK"]}}),
            "at `rules[0].requires.context.country.allow[0]`: `UK` is not a country code",
        ),
    ];
    for (context, expected) in cases {
        let mut config = good.clone();
        config["geoip"] = json!({"country_header": COUNTRY_HEADER});
        config["rules"][0]["requires"]["context"] = context;
        let mut cfg = sample.clone();
        cfg.set_plugin_config(&config);
        match Envoy::try_start(&cfg, 1) {
            Ok(envoy) => panic!("Envoy accepted a bad config ({expected}):\n{}", envoy.log()),
            Err(log) => assert!(
                log.contains(&format!("invalid tollgate configuration {expected}")),
                "the log does not name the field ({expected}):\n{log}"
            ),
        }
    }
}
