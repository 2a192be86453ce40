//! One function per fuzz target. Each must return normally for every input:
//! a panic is a crash, whether it comes from the code under test or from an
//! invariant checked here. `make test` replays the seeds and every past crash
//! through these same functions (src/core/tests/fuzz_regressions.rs).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::*;
use std::sync::OnceLock;
use tollgate_core::alg::Algorithm;
use tollgate_core::apikey::{KeyHashing, KeySet as ApiKeySet};
use tollgate_core::config::{self, Settings};
use tollgate_core::credentials::{find_token, HeaderEdit, RequestView};
use tollgate_core::crypto::{verify_with_keys, PureVerifier};
use tollgate_core::jwk::{parse_jwks, KeySet, KeySource, Strictness};
use tollgate_core::jwt::{decode, ClaimRules};
use tollgate_core::policy::{PathMatch, Segment};
use tollgate_core::ratelimit::rls::{self, Code};
use tollgate_core::ratelimit::Declared;
use tollgate_core::revocation::RevocationList;
use tollgate_core::upstream::{self, MethodOverride};
use tollgate_core::{names, path};

const NOW: u64 = 1_800_000_000;

/// Token decoding, claim validation and signature dispatch.
pub fn jwt(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(token) = decode(raw) else {
        return;
    };
    assert!(raw.starts_with(token.signing_input));
    let _ = token.issuer();
    let rules = ClaimRules {
        audiences: vec!["api".to_string()],
        clock_skew_secs: 60,
        max_lifetime_secs: Some(3600),
        required_typ: Some("at+jwt".to_string()),
    };
    let _ = token.validate_claims(&rules, NOW);
    for keys in key_sets() {
        let _ = verify_with_keys(&token, keys, &PureVerifier);
    }
}

/// Key sets to check fuzzed signatures against: an EC key (with and without
/// `kid`) and an HMAC secret.
fn key_sets() -> &'static [KeySet] {
    static SETS: OnceLock<Vec<KeySet>> = OnceLock::new();
    SETS.get_or_init(|| {
        let point = ES256KeyPair::generate()
            .public_key()
            .public_key()
            .to_bytes_uncompressed();
        let (x, y) = point.get(1..).unwrap_or_default().split_at(32);
        let ec = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
             "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)},
            {"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)},
        ]});
        let oct = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "h1", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode([7u8; 32])}
        ]});
        let hmac = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        [
            (ec, KeySource::Remote, &Algorithm::ALL[..]),
            (oct, KeySource::Local, &hmac[..]),
        ]
        .into_iter()
        .map(|(doc, source, algs)| {
            parse_jwks(doc.to_string().as_bytes(), source, algs, Strictness::Strict)
                .expect("fuzz key sets parse")
                .0
        })
        .collect()
    })
}

/// JWKS documents, as an operator writes them and as they are fetched.
pub fn jwks(data: &[u8]) {
    for source in [KeySource::Local, KeySource::Remote] {
        for strictness in [Strictness::Strict, Strictness::Lenient] {
            if let Ok((set, _)) = parse_jwks(data, source, &Algorithm::ALL, strictness) {
                let _ = set.has_kid("k1");
                for alg in Algorithm::ALL {
                    let _ = set.candidates(alg, None).count();
                }
            }
        }
    }
}

/// The plugin configuration: refused with an error, or compiled into rules
/// whose paths are all in normal form.
pub fn config(data: &[u8]) {
    let Ok(settings) = config::parse(data) else {
        return;
    };
    for rule in &settings.rules {
        let written = match &rule.path {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p.clone(),
            PathMatch::Template(segments) => segments
                .iter()
                .map(|s| match s {
                    Segment::Literal(l) => format!("/{l}"),
                    Segment::Any => "/*".to_string(),
                })
                .collect(),
        };
        assert_eq!(path::normalize(&written).as_deref(), Ok(written.as_str()));
    }
}

/// API-key sets.
pub fn api_keys(data: &[u8]) {
    if let Ok(set) = ApiKeySet::parse(data) {
        let _ = set.len();
        for hashing in [
            KeyHashing::Sha256,
            KeyHashing::HmacSha256(b"pepper-16-bytes!".to_vec()),
        ] {
            let _ = set.verify(&hashing, "tg_live_key", Some("192.0.2.1"), NOW);
            let _ = set.verify(&hashing, "tg_live_key", Some("2001:db8::1"), NOW);
            let _ = set.verify(&hashing, "tg_live_key", None, NOW);
        }
    }
}

/// Revocation feeds.
pub fn revocations(data: &[u8]) {
    if let Ok(list) = RevocationList::parse(data, NOW) {
        let _ = list.contains("jti-1");
    }
}

/// A rate-limit service's answer (`RateLimitResponse`), and the `429` made
/// from it: an over-limit answer always has a state, with nothing remaining
/// and a `Retry-After` of at least a second.
pub fn rls_response(data: &[u8]) {
    let Ok(response) = rls::decode_response(data) else {
        return;
    };
    let declared = Declared {
        limit: 100,
        window_ms: 60_000,
    };
    for declared in [None, Some(declared)] {
        let state = response.limit_state(declared);
        if response.overall_code == Code::OverLimit {
            let state = state.expect("an over-limit answer has a state");
            assert_eq!(state.remaining, 0);
            let denial = state.limited_response("p");
            let retry = denial.headers.iter().find(|(n, _)| *n == "retry-after");
            let secs: u64 = retry.expect("Retry-After").1.parse().expect("a number");
            assert!(secs >= 1);
        } else if let Some(state) = state {
            let _ = state.headers("p");
        }
    }
}

/// Path normalisation and rule matching: the normal form is a fixed point,
/// and a path that selects a rule has a normal form.
pub fn path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let normal = path::normalize(raw);
    if let Ok(normal) = &normal {
        assert!(normal.starts_with('/'), "{raw:?} -> {normal:?}");
        assert_eq!(
            path::normalize(normal).as_deref(),
            Ok(normal.as_ref()),
            "{raw:?}"
        );
        assert_eq!(path::check_rule_path(normal), Ok(()), "{raw:?}");
    }
    let settings = request_settings();
    for method in ["GET", "POST"] {
        if path::find_rule(&settings.rules, method, raw).is_ok() {
            assert!(normal.is_ok(), "{raw:?} matched without a normal form");
        }
    }
}

/// A request: method line, path line, then `name: value` header lines. What
/// the upstream would receive is purged (credentials, identity look-alikes,
/// method overrides), so purging it again changes nothing.
pub fn request(data: &[u8]) {
    let mut lines = data.split(|b| *b == b'\n');
    let method = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let raw_path = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let headers: Vec<(String, Vec<u8>)> = lines
        .filter_map(|line| {
            let at = line.iter().position(|b| *b == b':')?;
            let (name, value) = line.split_at(at);
            let value = value.get(1..).unwrap_or_default().trim_ascii();
            Some((
                String::from_utf8_lossy(name).to_ascii_lowercase(),
                value.to_vec(),
            ))
        })
        .collect();
    let settings = request_settings();
    let req = RequestView {
        method: &method,
        path: &raw_path,
        headers: &headers,
        client_ip: Some("192.0.2.1"),
        received_us: 0,
        client_cert: None,
    };
    if let Some((token, _)) = find_token(&req, &settings.token_locations) {
        let _ = decode(&token);
    }
    let _ = upstream::method_for_rules(&req, MethodOverride::Authorize);
    let _ = path::find_rule(&settings.rules, &method, req.path_without_query());
    let edits = upstream::purge(&req, settings);

    // The request as the upstream gets it (Envoy removes headers by name,
    // case-insensitively), purged again.
    let mut upstream_path = raw_path.clone();
    let mut upstream_headers = headers.clone();
    for edit in &edits {
        match edit {
            HeaderEdit::Remove(name) => {
                upstream_headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name))
            }
            HeaderEdit::Set(name, value) if name == ":path" => upstream_path.clone_from(value),
            HeaderEdit::Set(name, value) => {
                upstream_headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                upstream_headers.push((name.clone(), value.clone().into_bytes()));
            }
        }
    }
    let again = RequestView {
        path: &upstream_path,
        headers: &upstream_headers,
        ..req
    };
    let left = upstream::purge(&again, settings);
    assert!(
        left.is_empty(),
        "{edits:?} left {left:?} in {upstream_path:?} {upstream_headers:?}"
    );
    for (name, _) in &upstream_headers {
        assert!(
            !names::starts_with(name.as_bytes(), b"x-tollgate-"),
            "{name} reached the upstream"
        );
    }
}

/// A configuration with every kind of credential location, claim headers
/// and rules of each kind.
fn request_settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let config = serde_json::json!({
            "providers": {
                "p": {
                    "issuer": "https://issuer.test",
                    "remote_jwks": {"http_uri": {"uri": "http://idp/jwks", "cluster": "idp"}},
                    "from_headers": [{"name": "Authorization", "value_prefix": "Bearer "}, {"name": "X-Token"}],
                    "from_params": ["access_token"],
                    "from_cookies": ["tg_at"],
                    "claim_to_headers": [{"claim_name": "tenant", "header_name": "x-tenant"}],
                    "forward_payload_header": "x-jwt-payload"
                }
            },
            "api_keys": {"key_set": {"inline_string": r#"{"consumers":[]}"#}},
            "rules": [
                {"match": {"prefix": "/admin/"}, "requires": {}},
                {"match": {"template": "/users/*/orders"}, "requires": {}},
                {"match": {"path": "/data", "methods": ["GET"]}, "requires": {"credentials": ["jwt", "api_key"]}},
                {"match": {"prefix": "/public/"}, "requires": {"allow_anonymous": true}}
            ]
        });
        config::parse(config.to_string().as_bytes()).expect("fuzz configuration parses")
    })
}
