use super::*;
use crate::alg::Algorithm;
use crate::apikey::KeyHashing;
use crate::ratelimit::{LimitKey, PolicyId};
use serde_json::{json, Value};

fn remote_provider() -> Value {
    json!({
        "issuer": "https://idp.example",
        "audiences": ["api"],
        "remote_jwks": {"http_uri": {"uri": "http://idp/.well-known/jwks.json", "cluster": "idp"}}
    })
}

fn base() -> Value {
    json!({
        "providers": {"idp": remote_provider()},
        "rules": [
            {"match": {"path": "/data", "methods": ["GET"]},
             "requires": {"scopes": {"all_of": ["read:data"]}}},
            {"match": {"prefix": "/public/"}, "requires": {"allow_anonymous": true}}
        ]
    })
}

fn parse_value(v: &Value) -> Result<Settings, ConfigError> {
    parse(v.to_string().as_bytes())
}

fn error_at(v: Value) -> ConfigError {
    parse_value(&v).expect_err("config should be rejected")
}

#[test]
fn minimal_config_compiles_with_defaults() {
    let s = parse_value(&base()).unwrap();
    let p = &s.providers[0];
    assert_eq!(p.claim_rules.clock_skew_secs, 60);
    assert!(!p.algorithms.contains(&Algorithm::HS256));
    assert_eq!(
        p.locations,
        vec![
            TokenLocation::Header {
                name: "authorization".into(),
                value_prefix: Some("Bearer ".into())
            },
            // Tokens bound to a key come with the DPoP scheme (RFC 9449).
            TokenLocation::Header {
                name: "authorization".into(),
                value_prefix: Some("DPoP ".into())
            }
        ]
    );
    match &p.keys {
        ProviderKeys::Remote(r) => {
            assert_eq!(r.endpoint.authority, "idp");
            assert_eq!(r.endpoint.path, "/.well-known/jwks.json");
            assert_eq!(r.endpoint.timeout_ms, 5_000);
            assert_eq!(r.policy.refresh_ms, 300_000);
            assert_eq!(r.policy.retry_ms, 1_000);
            assert_eq!(r.policy.on_demand_ms, 10_000);
        }
        other => panic!("{other:?}"),
    }
    assert!(!s.allow_unmatched);
    assert_eq!(s.identity.subject, "x-tollgate-subject");
    assert_eq!(s.realm, "tollgate");
}

#[test]
fn unknown_fields_are_named() {
    let mut v = base();
    v["providers"]["idp"]["audience"] = json!("api");
    let e = error_at(v);
    assert_eq!(e.field, "providers.idp.audience");
    assert!(e.message.contains("unknown field `audience`"), "{e}");

    let mut v = base();
    v["rules"][0]["match"]["regex"] = json!(".*");
    assert_eq!(error_at(v).field, "rules[0].match.regex");
}

#[test]
fn bad_algorithms_are_named() {
    let mut v = base();
    v["providers"]["idp"]["algorithms"] = json!(["ES256", "none"]);
    let e = error_at(v);
    assert_eq!(e.field, "providers.idp.algorithms[1]");
    assert!(e.message.contains("never accepted"), "{e}");

    let mut v = base();
    v["providers"]["idp"]["algorithms"] = json!(["RS256", "HS256"]);
    let e = error_at(v);
    assert_eq!(e.field, "providers.idp.algorithms[1]");
    assert!(e.message.contains("shared secret"), "{e}");
}

#[test]
fn missing_keys_are_refused() {
    let mut v = base();
    v["providers"]["idp"]
        .as_object_mut()
        .unwrap()
        .remove("remote_jwks");
    let e = error_at(v);
    assert_eq!(e.field, "providers.idp");
    assert!(e.message.contains("missing keys"), "{e}");
    assert!(e
        .to_string()
        .starts_with("invalid tollgate configuration at `providers.idp`"));
}

#[test]
fn bad_values_are_named() {
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"remote_jwks": {"http_uri": {"uri": "idp/jwks", "cluster": "idp"}}}),
            "providers.idp.remote_jwks.http_uri.uri",
        ),
        (
            json!({"remote_jwks": {"http_uri": {"uri": "http://idp/j", "cluster": "idp"}, "cache_duration": "5m"}}),
            "providers.idp.remote_jwks.cache_duration",
        ),
        (
            json!({"clock_skew_seconds": -1}),
            "providers.idp.clock_skew_seconds",
        ),
        (
            json!({"claim_to_headers": [{"header_name": "Host", "claim_name": "t"}]}),
            "providers.idp.claim_to_headers[0].header_name",
        ),
        (
            json!({"from_headers": [{"name": "bad header"}]}),
            "providers.idp.from_headers[0].name",
        ),
        (
            json!({"local_jwks": {"inline_string": "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\"}]}"}, "remote_jwks": null}),
            "providers.idp.local_jwks.inline_string.keys[0]",
        ),
    ];
    for (patch, field) in cases {
        let mut v = base();
        for (k, val) in patch.as_object().unwrap() {
            if val.is_null() {
                v["providers"]["idp"].as_object_mut().unwrap().remove(k);
            } else {
                v["providers"]["idp"][k] = val.clone();
            }
        }
        assert_eq!(error_at(v).field, field);
    }
}

#[test]
fn rule_errors_are_named() {
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"match": {"path": "/a", "prefix": "/b"}, "requires": {}}),
            "rules[0].match",
        ),
        (
            json!({"match": {"path": "a"}, "requires": {}}),
            "rules[0].match.path",
        ),
        (
            json!({"match": {"path": "/a", "methods": ["get"]}, "requires": {}}),
            "rules[0].match.methods[0]",
        ),
        (
            json!({"match": {"path": "/a"}, "requires": {"providers": ["nope"]}}),
            "rules[0].requires.providers[0]",
        ),
        (
            json!({"match": {"path": "/a"}, "requires": {"scopes": {"all_of": ["a"], "any_of": ["b"]}}}),
            "rules[0].requires.scopes",
        ),
        (
            json!({"match": {"path": "/a"}, "requires": {"scopes": {"all_of": ["a b"]}}}),
            "rules[0].requires.scopes.all_of[0]",
        ),
        (
            json!({"match": {"path": "/a"}, "requires": {"claims": [{"name": "t"}]}}),
            "rules[0].requires.claims[0]",
        ),
        (
            json!({"match": {"path": "/a"}, "requires": {"claims": [{"name": "https://x.example/roles", "contains": "a"}]}}),
            "rules[0].requires.claims[0].name",
        ),
        (
            json!({"match": {"path": "/a"}, "requires": {"claims": [{"name": "a..b", "equals": "a"}]}}),
            "rules[0].requires.claims[0].name",
        ),
        (
            json!({"match": {"path": "/a"}, "requires": {"roles": {"all_of": ["a"], "any_of": ["b"]}}}),
            "rules[0].requires.roles",
        ),
        (
            json!({"match": {"path": "/a"}, "requires": {"roles": {"any_of": []}}}),
            "rules[0].requires.roles.any_of",
        ),
        (
            json!({"match": {"path": "/a"}, "requires": {"allow_anonymous": true, "roles": {"any_of": ["a"]}}}),
            "rules[0].requires.allow_anonymous",
        ),
        (
            json!({"match": {"path": "/a"}, "requires": {"allow_anonymous": true, "scopes": {"any_of": ["x"]}}}),
            "rules[0].requires.allow_anonymous",
        ),
        (
            json!({"match": {"template": "/a/**/b"}, "requires": {}}),
            "rules[0].match.template",
        ),
    ];
    for (rule, field) in cases {
        let mut v = base();
        v["rules"] = json!([rule]);
        assert_eq!(error_at(v).field, field);
    }
}

#[test]
fn revocation_feed_compiles_and_names_bad_fields() {
    let mut v = base();
    v["providers"]["idp"]["revocation_feed"] =
        json!({"http_uri": {"uri": "http://ts/revocations", "cluster": "ts"}});
    let s = parse_value(&v).unwrap();
    let feed = s.providers[0].revocation_feed.as_ref().unwrap();
    assert_eq!(feed.endpoint.path, "/revocations");
    assert_eq!(
        (feed.policy.refresh_ms, feed.policy.retry_ms),
        (5_000, 5_000)
    );
    v["providers"]["idp"]["revocation_feed"]["poll_interval"] = json!("fast");
    assert_eq!(
        error_at(v.clone()).field,
        "providers.idp.revocation_feed.poll_interval"
    );
    v["providers"]["idp"]["revocation_feed"] = json!({"http_uri": {"uri": "/r", "cluster": "ts"}});
    assert_eq!(
        error_at(v).field,
        "providers.idp.revocation_feed.http_uri.uri"
    );
}

#[test]
fn rate_limits_compile_and_name_bad_fields() {
    let mut v = base();
    v["rate_limits"] = json!({
        "policies": {
            "per-client": {"limit": 10, "window": "1s", "key": "client_id"},
            "tenant": {"limit": 1000, "window": "86400s", "burst": 50, "key": {"claim": "tenant"}}
        },
        "brute_force": {"max_failures": 10, "window": "60s", "lockout": "300s"}
    });
    v["rules"][0]["rate_limits"] = json!(["per-client", "tenant"]);
    let s = parse_value(&v).unwrap();
    let p = &s.rate_limits.policies;
    assert_eq!(p[0].name, "per-client");
    assert_eq!(
        p[0].local_rate()
            .map(|r| (r.limit, r.window_ms, r.burst))
            .unwrap(),
        (10, 1_000, 10)
    );
    assert_eq!(
        p[1].key,
        LimitKey::Claim(crate::claims::ClaimPath::parse("tenant").unwrap())
    );
    assert_eq!(s.rules[0].limits, vec![PolicyId(0), PolicyId(1)]);
    assert_eq!(s.rate_limits.brute_force.unwrap().lockout_ms, 300_000);
    assert_eq!(s.client_ip, ClientIpSource::Peer);

    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"policies": {"p": {"limit": 0, "window": "1s", "key": "subject"}}}),
            "rate_limits.policies.p.limit",
        ),
        (
            json!({"policies": {"p": {"limit": 1, "window": "0s", "key": "subject"}}}),
            "rate_limits.policies.p.window",
        ),
        (
            json!({"policies": {"p": {"limit": 1, "window": "1s", "key": "user"}}}),
            "rate_limits.policies.p.key",
        ),
        (
            json!({"policies": {"p": {"limit": 1, "window": "1s", "burst": 0, "key": "subject"}}}),
            "rate_limits.policies.p.burst",
        ),
        (
            json!({"brute_force": {"max_failures": 3, "window": "1m", "lockout": "1s"}}),
            "rate_limits.brute_force.window",
        ),
        (
            json!({"table": {"slots": 0, "entries_per_slot": 4}}),
            "rate_limits.table.slots",
        ),
    ];
    for (rl, field) in cases {
        let mut v = base();
        v["rate_limits"] = rl;
        assert_eq!(error_at(v).field, field);
    }
    let mut v = base();
    v["rules"][0]["rate_limits"] = json!(["nope"]);
    assert_eq!(error_at(v).field, "rules[0].rate_limits[0]");
    let mut v = base();
    v["client_ip"] = json!({"from": "x_forwarded_for"});
    assert_eq!(error_at(v.clone()).field, "client_ip.trusted_hops");
    v["client_ip"] = json!({"from": "x_forwarded_for", "trusted_hops": 1});
    assert_eq!(
        parse_value(&v).unwrap().client_ip,
        ClientIpSource::XForwardedFor { trusted_hops: 1 }
    );
}

#[test]
fn remote_policies_name_their_rate_limit_service() {
    use crate::ratelimit::{Declared, RlsBackend};
    let mut v = base();
    v["rate_limits"] = json!({"policies": {
        "fleet": {"key": "client_id", "backend": {"rls": {
            "cluster": "rate_limit_service", "domain": "tollgate"}}},
        "daily": {"key": {"claim": "tenant"}, "limit": 100000, "window": "86400s",
            "backend": {"rls": {"cluster": "rls", "domain": "quotas", "timeout": "0.25s",
                                "failure_mode_deny": true}}}
    }});
    let s = parse_value(&v).unwrap();
    let p = &s.rate_limits.policies;
    assert_eq!(
        p[1].rls(),
        Some(&RlsBackend {
            cluster: "rate_limit_service".into(),
            domain: "tollgate".into(),
            timeout_ms: 20,
            failure_mode_deny: false,
            declared: None,
        })
    );
    assert_eq!(p[1].local_rate(), None);
    assert_eq!(
        p[0].rls()
            .map(|r| (r.timeout_ms, r.failure_mode_deny, r.declared)),
        Some((
            250,
            true,
            Some(Declared {
                limit: 100_000,
                window_ms: 86_400_000
            })
        ))
    );

    let rls = |extra: Value| {
        let mut policy =
            json!({"key": "subject", "backend": {"rls": {"cluster": "c", "domain": "d"}}});
        for (k, v) in extra.as_object().unwrap() {
            if k == "rls" {
                for (k, v) in v.as_object().unwrap() {
                    policy["backend"]["rls"][k] = v.clone();
                }
            } else {
                policy[k] = v.clone();
            }
        }
        json!({"policies": {"p": policy}})
    };
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            rls(json!({"rls": {"cluster": ""}})),
            "rate_limits.policies.p.backend.rls.cluster",
            "cluster",
        ),
        (
            rls(json!({"rls": {"domain": ""}})),
            "rate_limits.policies.p.backend.rls.domain",
            "empty",
        ),
        (
            rls(json!({"rls": {"timeout": "61s"}})),
            "rate_limits.policies.p.backend.rls.timeout",
            "60s",
        ),
        (
            rls(json!({"rls": {"timeout": "0s"}})),
            "rate_limits.policies.p.backend.rls.timeout",
            "at least",
        ),
        (
            rls(json!({"rls": {"failure_mode": "open"}})),
            "rate_limits.policies.p.backend.rls.failure_mode",
            "failure_mode_deny",
        ),
        (
            rls(json!({"burst": 5})),
            "rate_limits.policies.p.burst",
            "service",
        ),
        (
            rls(json!({"limit": 5})),
            "rate_limits.policies.p.window",
            "both",
        ),
        (
            rls(json!({"window": "1s"})),
            "rate_limits.policies.p.limit",
            "both",
        ),
        (
            json!({"policies": {"p": {"key": "subject", "backend": {"redis": {}}}}}),
            "rate_limits.policies.p.backend",
            "unknown variant",
        ),
        (
            json!({"policies": {"p": {"key": "subject", "backend": {"rls": {"cluster": "c"}}}}}),
            "rate_limits.policies.p.backend.rls",
            "domain",
        ),
        (
            json!({"policies": {"p": {"key": "subject", "window": "1s"}}}),
            "rate_limits.policies.p.limit",
            "counted locally",
        ),
    ];
    for (rl, field, words) in cases {
        let mut v = base();
        v["rate_limits"] = rl.clone();
        let e = error_at(v);
        assert_eq!(e.field, field, "{rl}: {e}");
        assert!(e.message.contains(words), "{rl}: {e}");
    }
}

#[test]
fn api_keys_configuration_is_checked() {
    let set = |plan: &str| {
        json!({"consumers": [{"id": "c", "plan": plan, "keys": [{"id": "k", "hash": "a".repeat(64)}]}]})
            .to_string()
    };
    let mut v = base();
    v["api_keys"] = json!({"key_set": {"inline_string": set("gold")}, "pepper": {"inline_string": "0123456789abcdef"}});
    v["rate_limits"] = json!({"policies": {"p": {"limit": 1, "window": "1s", "key": "client_id"}}, "plans": {"gold": ["p"]}});
    v["rules"][0]["requires"]["credentials"] = json!(["api_key"]);
    let s = parse_value(&v).unwrap();
    let k = s.api_keys.as_ref().unwrap();
    assert_eq!(
        k.headers,
        vec![TokenLocation::Header {
            name: "x-api-key".to_string(),
            value_prefix: None
        }]
    );
    assert_eq!(k.bearer.as_ref().map(|(_, p)| p.as_str()), Some("tg_"));
    assert!(matches!(k.hashing, KeyHashing::HmacSha256(_)));
    assert!(s.rules[0].requirement.accept_api_key && !s.rules[0].requirement.accept_jwt);
    assert!(s
        .strip_locations
        .contains(&TokenLocation::Query("api_key".into())));

    type Edit<'a> = Box<dyn Fn(&mut Value) + 'a>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|v| v["api_keys"]["key_set"]["inline_string"] = json!(set("platinum"))),
            "api_keys.key_set.inline_string.consumers[0].plan",
        ),
        (
            Box::new(|v| {
                v["api_keys"]["key_set"]["inline_string"] = json!("{\"consumers\":[{\"id\":\"c\",\"keys\":[{\"id\":\"k\",\"hash\":\"tg_live_plaintext\"}]}]}")
            }),
            "api_keys.key_set.inline_string.consumers[0].keys[0].hash",
        ),
        (
            Box::new(|v| v["api_keys"]["pepper"]["inline_string"] = json!("short")),
            "api_keys.pepper.inline_string",
        ),
        (
            Box::new(|v| v["api_keys"]["bearer_prefix"] = json!("ey.")),
            "api_keys.bearer_prefix",
        ),
        (
            Box::new(|v| v["api_keys"]["from_headers"] = json!(["Authorization"])),
            "api_keys.from_headers[0]",
        ),
        (
            Box::new(|v| v["rules"][1]["requires"]["api_key_in_query"] = json!(true)),
            "rules[1].requires.api_key_in_query",
        ),
        (
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("api_keys");
            }),
            "rules[0].requires.credentials",
        ),
    ];
    for (edit, field) in cases {
        let mut w = v.clone();
        edit(&mut w);
        assert_eq!(error_at(w).field, field);
    }
}

#[test]
fn duplicate_issuers_are_refused() {
    let mut v = base();
    v["providers"]["other"] = remote_provider();
    let e = error_at(v);
    assert!(
        e.field.ends_with(".issuer") && e.message.contains("already used"),
        "{e}"
    );
}

#[test]
fn non_json_and_wrong_types_are_errors() {
    assert!(parse(b"not json").is_err());
    assert!(parse(b"").is_err());
    assert_eq!(
        parse(b"{\"providers\": [], \"rules\": []}")
            .unwrap_err()
            .field,
        "providers"
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration_ms("5s"), Ok(5000));
    assert_eq!(parse_duration_ms("0.25s"), Ok(250));
    assert_eq!(parse_duration_ms("1.000000001s"), Ok(1000));
    for bad in [
        "5",
        "s",
        "-1s",
        "1.s",
        "5m",
        "1e3s",
        "99999999999999999999s",
    ] {
        assert!(parse_duration_ms(bad).is_err(), "{bad}");
    }
}

#[test]
fn hmac_provider_defaults_to_hs_algorithms() {
    let secret =
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, [9u8; 32]);
    let mut v = base();
    v["providers"]["idp"] = json!({
        "issuer": "hs",
        "local_jwks": {"inline_string": json!({"keys":[{"kty":"oct","k":secret}]}).to_string()}
    });
    let s = parse_value(&v).unwrap();
    assert!(s.providers[0].algorithms.iter().all(|a| a.is_hmac()));
}

#[test]
fn claim_paths_are_checked_where_providers_name_them() {
    for (field, value, at) in [
        ("role_claims", json!([]), "providers.idp.role_claims"),
        (
            "role_claims",
            json!(["realm_access..roles"]),
            "providers.idp.role_claims[0]",
        ),
        (
            "scope_claims",
            json!(["\"open"]),
            "providers.idp.scope_claims[0]",
        ),
        (
            "client_id_claims",
            json!(["a b"]),
            "providers.idp.client_id_claims[0]",
        ),
        (
            "claim_to_headers",
            json!([{"claim_name": "https://example.com/tenant", "header_name": "x-tenant"}]),
            "providers.idp.claim_to_headers[0].claim_name",
        ),
    ] {
        let mut v = base();
        v["providers"]["idp"][field] = value;
        assert_eq!(error_at(v).field, at, "{field}");
    }
    let mut v = base();
    v["providers"]["idp"]["role_claims"] =
        json!(["realm_access.roles", "resource_access.\"my.app\".roles"]);
    v["providers"]["idp"]["claim_to_headers"] =
        json!([{"claim_name": "\"https://example.com/tenant\"", "header_name": "x-tenant"}]);
    let s = parse_value(&v).unwrap();
    let p = &s.providers[0];
    assert_eq!(p.role_claims.len(), 2);
    assert_eq!(p.claim_to_headers[0].0.top(), "https://example.com/tenant");
    assert_eq!(p.client_id_claims.len(), 2, "client_id, then azp");
}

#[test]
fn token_cache_fields_default_one_by_one() {
    let mut v = base();
    v["token_cache"] = json!({"max_entries": 0});
    assert_eq!(parse_value(&v).unwrap().token_cache, (0, 16 << 20), "off");
    v["token_cache"] = json!({"max_bytes": 1024});
    assert_eq!(parse_value(&v).unwrap().token_cache, (10_000, 1024));
}

#[test]
fn client_certificate_requirements_compile_and_name_bad_fields() {
    let mut v = base();
    v["rules"] = json!([
        {"match": {"prefix": "/partner/"}, "requires": {
            "client_certificate": {"uri_sans": ["spiffe://td/partner/*"], "dns_sans": ["A.Example"]},
            "certificate_bound_token": true}},
        {"match": {"prefix": "/any/"}, "requires": {"client_certificate": {}}},
        {"match": {"prefix": "/mtls-only/"}, "requires": {"allow_anonymous": true, "client_certificate": {}}}
    ]);
    let s = parse_value(&v).unwrap();
    let partner = &s.rules[0].requirement;
    assert!(partner.certificate_bound_token);
    let needed = partner.client_certificate.as_ref().unwrap();
    assert_eq!((needed.uri_sans.len(), needed.dns_sans.len()), (1, 1));
    assert!(needed.subjects.is_empty());
    assert_eq!(
        s.rules[1].requirement.client_certificate,
        Some(Default::default())
    );
    assert!(!s.rules[1].requirement.certificate_bound_token);
    assert_eq!(s.identity.client_cert_uri, "x-tollgate-client-cert-uri");

    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"client_certificate": {"uri_sans": ["spiffe://td/a*b"]}}),
            "rules[0].requires.client_certificate.uri_sans[0]",
            "may only end a component",
        ),
        (
            json!({"client_certificate": {"dns_sans": []}}),
            "rules[0].requires.client_certificate.dns_sans",
            "at least one name",
        ),
        (
            json!({"client_certificate": {"subjects": [""]}}),
            "rules[0].requires.client_certificate.subjects[0]",
            "non-empty",
        ),
        (
            json!({"client_certificate": {"san": ["x"]}}),
            "rules[0].requires.client_certificate",
            "unknown field",
        ),
        (
            json!({"certificate_bound_token": true, "credentials": ["jwt", "api_key"]}),
            "rules[0].requires.certificate_bound_token",
            "only tokens can be certificate-bound",
        ),
        (
            json!({"certificate_bound_token": true, "allow_anonymous": true}),
            "rules[0].requires.certificate_bound_token",
            "only tokens can be certificate-bound",
        ),
    ];
    for (requires, field, message) in cases {
        let mut v = base();
        v["api_keys"] = json!({"key_set": {"inline_string": "{\"consumers\": []}"}});
        v["rules"] = json!([{"match": {"prefix": "/a/"}, "requires": requires}]);
        let e = error_at(v);
        assert!(
            e.field.starts_with(field) && e.message.contains(message),
            "{requires}: {e}"
        );
    }
}

#[test]
fn dpop_settings_are_checked() {
    for (value, at) in [
        (
            json!({"algorithms": ["RS256"]}),
            "providers.idp.dpop.algorithms[0]",
        ),
        (json!({"algorithms": []}), "providers.idp.dpop.algorithms"),
        (
            json!({"public_base_uri": "https://api.example.com/v1"}),
            "providers.idp.dpop.public_base_uri",
        ),
        (
            json!({"nonce": {"secret": {"inline_string": "short"}}}),
            "providers.idp.dpop.nonce.secret.inline_string",
        ),
        (json!({"max_age": "soon"}), "providers.idp.dpop.max_age"),
    ] {
        let mut v = base();
        v["providers"]["idp"]["dpop"] = value;
        assert_eq!(error_at(v).field, at);
    }
    let mut v = base();
    v["providers"]["idp"]["dpop"] = json!({"required": true, "max_age": "30s",
        "nonce": {"secret": {"inline_string": "0123456789abcdef"}, "lifetime": "120s"}});
    let s = parse_value(&v).unwrap();
    let d = &s.providers[0].dpop;
    assert!(d.required);
    assert_eq!(d.proof.max_age_secs, 30);
    assert_eq!(d.nonce.as_ref().map(|(_, l)| *l), Some(120));
    assert!(
        s.strip_locations
            .iter()
            .any(|l| matches!(l, TokenLocation::Header { name, .. } if name == "dpop")),
        "proofs never reach the upstream"
    );
}

#[test]
fn rules_are_named_by_their_place_unless_named_and_names_are_unique() {
    let mut c = base();
    c["rules"][0]["name"] = json!("read-data");
    let s = parse_value(&c).unwrap();
    let names: Vec<&str> = s.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["read-data", "rules[1]"]);
    for (bad, message) in [
        (json!("has.dot"), "letters, digits"),
        (json!(""), "letters, digits"),
        (json!("x".repeat(65)), "letters, digits"),
    ] {
        let mut c = base();
        c["rules"][0]["name"] = bad;
        let e = error_at(c);
        assert_eq!(e.field, "rules[0].name");
        assert!(e.message.contains(message), "{e}");
    }
    let mut c = base();
    c["rules"][0]["name"] = json!("same");
    c["rules"][1]["name"] = json!("same");
    let e = error_at(c);
    assert_eq!(e.field, "rules[1].name");
    assert!(e.message.contains("earlier rule"), "{e}");
}

#[test]
fn audit_and_anomaly_settings_are_checked() {
    let s = parse_value(&base()).unwrap();
    assert_eq!(s.audit.allow_sample_rate, 1.0);
    assert!(!s.anomalies.any());
    assert!(!s.uses_client_ip);
    let mut c = base();
    c["audit"] = json!({"allow_sample_rate": 0.1});
    c["anomalies"] = json!({
        "shared_credential": {"max_addresses": 3, "window": "300s", "suspend": "600s"},
        "failure_spike": {"max_failures": 20, "window": "60s"}
    });
    let s = parse_value(&c).unwrap();
    assert_eq!(s.audit.allow_sample_rate, 0.1);
    let shared = s.anomalies.shared_credential.unwrap();
    assert_eq!(
        (shared.max_addresses, shared.window_ms, shared.suspend_ms),
        (3, 300_000, Some(600_000))
    );
    assert_eq!(s.anomalies.failure_spike.unwrap().suspend_ms, None);
    assert!(s.uses_client_ip, "addresses are what the signal counts");
    for (edit, field) in [
        (
            json!({"audit": {"allow_sample_rate": 1.5}}),
            "audit.allow_sample_rate",
        ),
        (
            json!({"anomalies": {"shared_credential": {"max_addresses": 0, "window": "60s"}}}),
            "anomalies.shared_credential.max_addresses",
        ),
        (
            json!({"anomalies": {"failure_spike": {"max_failures": 5, "window": "0s"}}}),
            "anomalies.failure_spike.window",
        ),
        (
            json!({"anomalies": {"failure_spike": {"max_failures": 5, "window": "60s", "suspend": "soon"}}}),
            "anomalies.failure_spike.suspend",
        ),
        (json!({"anomalies": {"replay": {}}}), "anomalies"),
    ] {
        let mut c = base();
        for (k, v) in edit.as_object().unwrap() {
            c[k] = v.clone();
        }
        let e = error_at(c);
        assert!(e.field.starts_with(field), "{field}: {e}");
    }
}

#[test]
fn the_client_address_is_looked_up_only_when_a_decision_can_need_it() {
    let uses = |edit: &dyn Fn(&mut Value)| {
        let mut c = base();
        edit(&mut c);
        parse_value(&c).unwrap().uses_client_ip
    };
    let policy =
        |key: Value| json!({"policies": {"p": {"key": key, "limit": 10, "window": "60s"}}});
    let key_set = |cidrs: Value| {
        json!({"consumers": [{"id": "c", "scopes": [], "keys": [
            {"id": "k", "hash": "ab".repeat(32), "allowed_cidrs": cidrs}]}]})
        .to_string()
    };
    // Identity-keyed policies on a rule that needs a credential: never the address.
    assert!(!uses(&|c| {
        c["rate_limits"] = policy(json!("client_id"));
        c["rules"][0]["rate_limits"] = json!(["p"]);
    }));
    assert!(!uses(&|c| {
        c["rate_limits"] = policy(json!({"header": "x-app"}));
        c["rules"][1]["rate_limits"] = json!(["p"]);
    }));
    // Anonymous callers count per address; an address-keyed policy always does.
    assert!(uses(&|c| {
        c["rate_limits"] = policy(json!("client_id"));
        c["rules"][1]["rate_limits"] = json!(["p"]);
    }));
    assert!(uses(&|c| {
        c["rate_limits"] = policy(json!("client_ip"));
        c["rules"][0]["rate_limits"] = json!(["p"]);
    }));
    assert!(uses(&|c| {
        c["rate_limits"] =
            json!({"brute_force": {"max_failures": 5, "window": "60s", "lockout": "60s"}});
    }));
    // API keys: only when one may be bound to address blocks.
    assert!(!uses(&|c| {
        c["api_keys"] = json!({"key_set": {"inline_string": key_set(json!([]))}});
    }));
    assert!(uses(&|c| {
        c["api_keys"] = json!({"key_set": {"inline_string": key_set(json!(["10.0.0.0/8"]))}});
    }));
    // A fetched key set is judged when it loads (the worker's `needs_client_ip`).
    assert!(!uses(&|c| {
        c["api_keys"] = json!({"remote_key_set": {
            "http_uri": {"uri": "http://ts/keys", "cluster": "ts"}}});
    }));
}
