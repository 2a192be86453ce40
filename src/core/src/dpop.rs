//! DPoP proofs (RFC 9449): a token bound to a key pair its client holds, and
//! a fresh proof of possession on every request.
//!
//! [`verify_proof`] makes the checks of RFC 9449 §4.3 that need no state:
//! `typ` is `dpop+jwt`; the algorithm is asymmetric and allowed; the `jwk`
//! header is a public key with no private parts, and the signature verifies
//! under it; `htm` and `htu` are this request's method and URI; `iat` is
//! recent; `ath` is the hash of the access token; and the key's RFC 7638
//! thumbprint is returned for the caller to compare with the token's
//! `cnf.jkt`. Replay (a proof's `jti` used twice) needs shared state, and so
//! does nothing here: see [`replay_key`].

use crate::alg::{Algorithm, KeyFamily};
use crate::crypto::{verify_with_keys, SignatureVerifier};
use crate::host::SharedData;
use crate::jwk::{parse_jwks, KeySource, Strictness};
use crate::jwt::DecodedToken;
use crate::ratelimit::table::{key_hash, Churn, Entry, SlotTable};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Proofs longer than this are refused before any decoding.
pub const MAX_PROOF_BYTES: usize = 8 * 1024;

/// What a proof must satisfy, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofRules {
    /// Asymmetric algorithms only.
    pub algorithms: Vec<Algorithm>,
    /// How far `iat` may be from now, either way, in seconds.
    pub max_age_secs: u64,
}

/// The request a proof must be bound to.
#[derive(Debug, Clone, Copy)]
pub struct ProofTarget<'a> {
    pub method: &'a str,
    /// `scheme://authority/path` of the request, without query or fragment.
    pub htu: &'a str,
    /// The access token presented with the proof.
    pub access_token: &'a str,
}

/// A proof that passed every stateless check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// RFC 7638 thumbprint of the proof's key, base64url.
    pub jkt: String,
    pub jti: String,
    pub iat: u64,
    pub nonce: Option<String>,
}

/// Why a proof was refused: said in `error_description`, never echoing input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofError {
    Malformed,
    WrongType,
    Algorithm,
    Key,
    Signature,
    Method,
    Uri,
    Age,
    TokenHash,
    MissingClaim,
}

impl ProofError {
    pub fn description(self) -> &'static str {
        match self {
            ProofError::Malformed => "the DPoP proof is malformed",
            ProofError::WrongType => "the DPoP proof's typ is not dpop+jwt",
            ProofError::Algorithm => "the DPoP proof's algorithm is not accepted",
            ProofError::Key => "the DPoP proof's jwk is not a usable public key",
            ProofError::Signature => "the DPoP proof's signature is invalid",
            ProofError::Method => "the DPoP proof is for another method",
            ProofError::Uri => "the DPoP proof is for another URI",
            ProofError::Age => "the DPoP proof is too old or from the future",
            ProofError::TokenHash => "the DPoP proof is for another access token",
            ProofError::MissingClaim => "the DPoP proof lacks a required claim",
        }
    }
}

/// Members that only private keys have (RFC 7517, 7518 §6).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Checks a proof against the request and the access token it comes with.
pub fn verify_proof(
    proof: &str,
    target: ProofTarget<'_>,
    rules: &ProofRules,
    verifier: &dyn SignatureVerifier,
    now: u64,
) -> Result<VerifiedProof, ProofError> {
    if proof.is_empty() || proof.len() > MAX_PROOF_BYTES {
        return Err(ProofError::Malformed);
    }
    let mut parts = proof.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProofError::Malformed);
    };
    let b64 = |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|_| ProofError::Malformed);
    let header: Map<String, Value> =
        serde_json::from_slice(&b64(h64)?).map_err(|_| ProofError::Malformed)?;
    let typ = header.get("typ").and_then(Value::as_str);
    if !typ.is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt")) {
        return Err(ProofError::WrongType);
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(Algorithm::from_name)
        .filter(|a| a.family() != KeyFamily::Hmac && rules.algorithms.contains(a))
        .ok_or(ProofError::Algorithm)?;
    let jwk = header
        .get("jwk")
        .and_then(Value::as_object)
        .ok_or(ProofError::Key)?;
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(ProofError::Key);
    }
    let jkt = thumbprint(jwk).ok_or(ProofError::Key)?;
    let keys = json!({ "keys": [Value::Object(jwk.clone())] }).to_string();
    let (keys, _) = parse_jwks(
        keys.as_bytes(),
        KeySource::Remote,
        &[alg],
        Strictness::Strict,
    )
    .map_err(|_| ProofError::Key)?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&b64(p64)?).map_err(|_| ProofError::Malformed)?;
    let decoded = DecodedToken {
        raw: proof,
        signing_input: proof
            .get(..h64.len() + 1 + p64.len())
            .ok_or(ProofError::Malformed)?,
        signature: b64(s64)?,
        alg,
        kid: None,
        typ: typ.map(str::to_string),
        claims,
    };
    verify_with_keys(&decoded, &keys, verifier).map_err(|_| ProofError::Signature)?;
    let claims = &decoded.claims;
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let jti = text("jti")
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or(ProofError::MissingClaim)?;
    let htm = text("htm").ok_or(ProofError::MissingClaim)?;
    let htu = text("htu").ok_or(ProofError::MissingClaim)?;
    let iat = claims
        .get("iat")
        .and_then(Value::as_u64)
        .ok_or(ProofError::MissingClaim)?;
    let ath = text("ath").ok_or(ProofError::MissingClaim)?;
    if htm != target.method {
        return Err(ProofError::Method);
    }
    if !same_uri(htu, target.htu) {
        return Err(ProofError::Uri);
    }
    if now.abs_diff(iat) > rules.max_age_secs {
        return Err(ProofError::Age);
    }
    if ath != token_hash(target.access_token) {
        return Err(ProofError::TokenHash);
    }
    Ok(VerifiedProof {
        jkt,
        jti: jti.to_string(),
        iat,
        nonce: text("nonce").map(str::to_string),
    })
}

/// `ath`: base64url of the SHA-256 of the access token (RFC 9449 §4.2).
pub fn token_hash(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes()))
}

/// The JWK thumbprint of RFC 7638: SHA-256 of the required members, in
/// lexicographic order, without white space; base64url.
pub fn thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let member = |name: &str| jwk.get(name).and_then(Value::as_str);
    let canonical = match member("kty")? {
        "EC" => json!({"crv": member("crv")?, "kty": "EC", "x": member("x")?, "y": member("y")?}),
        "RSA" => json!({"e": member("e")?, "kty": "RSA", "n": member("n")?}),
        "OKP" => json!({"crv": member("crv")?, "kty": "OKP", "x": member("x")?}),
        _ => return None,
    };
    // serde_json writes object members in key order (BTreeMap), no spaces.
    Some(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.to_string().as_bytes())))
}

/// `htu` against the request URI, after RFC 3986 syntax-based normalisation:
/// scheme and host case-insensitive, default ports dropped, an empty path is
/// `/`, query and fragment ignored (RFC 9449 §4.3, check 9).
pub fn same_uri(htu: &str, request: &str) -> bool {
    match (normal_uri(htu), normal_uri(request)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

fn normal_uri(uri: &str) -> Option<(String, String, String)> {
    let without_fragment = uri.split('#').next().unwrap_or_default();
    let without_query = without_fragment.split('?').next().unwrap_or_default();
    let (scheme, rest) = without_query.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let default = if scheme == "https" { ":443" } else { ":80" };
    let authority = authority
        .strip_suffix(default)
        .map_or(authority.clone(), str::to_string);
    Some((scheme, authority, path.to_string()))
}

/// Whether `uri` can be `public_base_uri`: `http(s)://authority`, nothing more.
pub fn base_uri_ok(uri: &str) -> bool {
    let uri = uri.trim_end_matches('/');
    normal_uri(uri).is_some_and(|(_, _, path)| path == "/")
        && !uri.contains(['?', '#'])
        && uri.matches('/').count() == 2
}

/// The server nonce (RFC 9449 §9) of the period `now` falls in: every worker
/// and every Envoy with the same secret derives the same one, so none is
/// stored. It changes every `lifetime` seconds.
pub fn nonce_at(secret: &[u8], lifetime: u64, now: u64) -> String {
    let period = now / lifetime.max(1);
    let mac = hmac_sha256::HMAC::mac(period.to_be_bytes(), secret);
    URL_SAFE_NO_PAD.encode(mac.get(..16).unwrap_or(&mac))
}

/// A proof's nonce is good when it is this period's or the last one's, so a
/// client that just fetched one is not refused at the boundary.
pub fn nonce_ok(secret: &[u8], lifetime: u64, now: u64, nonce: Option<&str>) -> bool {
    let Some(nonce) = nonce else {
        return false;
    };
    nonce == nonce_at(secret, lifetime, now)
        || nonce == nonce_at(secret, lifetime, now.saturating_sub(lifetime.max(1)))
}

/// Remembers a proof's `jti` (per key) in the shared table until its `iat`
/// window ends, across every worker of this Envoy. `false`: already seen, or
/// the table could not be updated (then the proof is refused: a replay must
/// never pass for want of a write).
pub fn remember_jti(
    table: &SlotTable,
    shared: &dyn SharedData,
    proof: &VerifiedProof,
    rules: &ProofRules,
    now_ms: u64,
    churn: &mut Churn,
) -> bool {
    let hash = key_hash(&format!("dpop\0{}\0{}", proof.jkt, proof.jti));
    let until_ms = proof
        .iat
        .saturating_add(rules.max_age_secs)
        .saturating_mul(1000)
        .max(now_ms + 1);
    let result = table.update(shared, hash, now_ms, |entry| match entry {
        Some(seen) => (Some(*seen), false),
        None => (
            Some(Entry {
                hash,
                a: 0,
                b: 0,
                expires_ms: until_ms,
            }),
            true,
        ),
    });
    match result {
        Ok((fresh, c)) => {
            churn.entries_delta += c.entries_delta;
            churn.evicted += c.evicted;
            fresh
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::PureVerifier;
    use jwt_simple::prelude::*;

    const NOW: u64 = 1_800_000_000;
    const HTU: &str = "https://api.example.com/data";

    fn rules() -> ProofRules {
        ProofRules {
            algorithms: vec![Algorithm::ES256, Algorithm::RS256, Algorithm::EdDSA],
            max_age_secs: 60,
        }
    }

    fn es256_jwk(kp: &ES256KeyPair) -> Value {
        crate::jwk::tests::es256_jwk(kp, "x")
            .as_object()
            .map(|o| {
                let mut o = o.clone();
                o.remove("kid");
                o.remove("alg");
                Value::Object(o)
            })
            .unwrap()
    }

    /// A proof signed by `kp` with the given header and claims.
    fn proof(kp: &ES256KeyPair, header: Value, claims: Value) -> String {
        let h64 = URL_SAFE_NO_PAD.encode(header.to_string());
        let p64 = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{h64}.{p64}");
        // jwt-simple cannot put a `jwk` in a header: sign the input raw.
        use p256::ecdsa::signature::Signer;
        let sig: p256::ecdsa::Signature = kp.key_pair().as_ref().sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    fn good_claims(token: &str) -> Value {
        json!({"jti": "e1j3V_bKic8-LAEB", "htm": "GET", "htu": HTU, "iat": NOW, "ath": token_hash(token)})
    }

    fn header(kp: &ES256KeyPair) -> Value {
        json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": es256_jwk(kp)})
    }

    fn target(token: &str) -> ProofTarget<'_> {
        ProofTarget {
            method: "GET",
            htu: HTU,
            access_token: token,
        }
    }

    #[test]
    fn a_good_proof_gives_its_key_thumbprint() {
        let kp = ES256KeyPair::generate();
        let p = proof(&kp, header(&kp), good_claims("at"));
        let v = verify_proof(&p, target("at"), &rules(), &PureVerifier, NOW + 5).unwrap();
        let jwk = es256_jwk(&kp);
        assert_eq!(v.jkt, thumbprint(jwk.as_object().unwrap()).unwrap());
        assert_eq!(v.jti, "e1j3V_bKic8-LAEB");
        // The same URI in another spelling.
        let t = ProofTarget {
            htu: "HTTPS://API.example.com:443/data?x=1",
            ..target("at")
        };
        assert!(verify_proof(&p, t, &rules(), &PureVerifier, NOW).is_ok());
    }

    #[test]
    fn every_check_refuses_its_own_fault() {
        let kp = ES256KeyPair::generate();
        let other = ES256KeyPair::generate();
        let check = |p: &str, t: ProofTarget<'_>, now: u64| {
            verify_proof(p, t, &rules(), &PureVerifier, now)
        };
        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = good_claims("at");
            f(&mut c);
            proof(&kp, header(&kp), c)
        };
        let head = |f: &dyn Fn(&mut Value)| {
            let mut h = header(&kp);
            f(&mut h);
            proof(&kp, h, good_claims("at"))
        };
        let t = target("at");
        assert_eq!(
            check(&head(&|h| h["typ"] = json!("JWT")), t, NOW),
            Err(ProofError::WrongType)
        );
        assert_eq!(
            check(&head(&|h| h["alg"] = json!("HS256")), t, NOW),
            Err(ProofError::Algorithm)
        );
        assert_eq!(
            check(&head(&|h| h["alg"] = json!("none")), t, NOW),
            Err(ProofError::Algorithm)
        );
        assert_eq!(
            check(&head(&|h| h["jwk"]["d"] = json!("c2VjcmV0")), t, NOW),
            Err(ProofError::Key),
            "a jwk holding a private key"
        );
        assert_eq!(
            check(&head(&|h| h["jwk"] = es256_jwk(&other)), t, NOW),
            Err(ProofError::Signature)
        );
        assert_eq!(
            check(&with(&|c| c["htm"] = json!("POST")), t, NOW),
            Err(ProofError::Method)
        );
        assert_eq!(
            check(
                &with(&|c| c["htu"] = json!("https://api.example.com/admin")),
                t,
                NOW
            ),
            Err(ProofError::Uri)
        );
        assert_eq!(check(&with(&|_| {}), t, NOW + 61), Err(ProofError::Age));
        assert_eq!(check(&with(&|_| {}), t, NOW - 61), Err(ProofError::Age));
        assert_eq!(
            check(&with(&|_| {}), target("another"), NOW),
            Err(ProofError::TokenHash)
        );
        assert_eq!(
            check(
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("jti");
                }),
                t,
                NOW
            ),
            Err(ProofError::MissingClaim)
        );
        assert_eq!(check("a.b", t, NOW), Err(ProofError::Malformed));
        assert_eq!(
            check(&"x".repeat(MAX_PROOF_BYTES + 1), t, NOW),
            Err(ProofError::Malformed)
        );
    }

    #[test]
    fn mutated_proofs_never_panic() {
        let kp = ES256KeyPair::generate();
        let p = proof(&kp, header(&kp), good_claims("at"));
        let bytes = p.as_bytes();
        for i in 0..bytes.len() {
            for b in [b'.', b'A', b'-', 0xff, b'"'] {
                let mut m = bytes.to_vec();
                if let Some(x) = m.get_mut(i) {
                    *x = b;
                }
                let m = String::from_utf8_lossy(&m);
                let _ = verify_proof(&m, target("at"), &rules(), &PureVerifier, NOW);
            }
        }
    }

    #[test]
    fn thumbprints_follow_rfc_7638() {
        // The example key of RFC 7638 §3.1 and its thumbprint.
        let jwk = json!({"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"});
        assert_eq!(
            thumbprint(jwk.as_object().unwrap()).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
        assert_eq!(
            thumbprint(json!({"kty": "oct", "k": "x"}).as_object().unwrap()),
            None
        );
    }

    #[test]
    fn a_proof_jti_is_accepted_once_per_key_until_its_window_ends() {
        let shared = crate::host::fakes::FakeShared::default();
        let table = SlotTable {
            slots: 16,
            entries_per_slot: 4,
        };
        let proof = VerifiedProof {
            jkt: "k1".into(),
            jti: "j1".into(),
            iat: NOW,
            nonce: None,
        };
        let mut churn = Churn::default();
        let ms = NOW * 1000;
        assert!(remember_jti(
            &table,
            &shared,
            &proof,
            &rules(),
            ms,
            &mut churn
        ));
        assert!(
            !remember_jti(&table, &shared, &proof, &rules(), ms + 5, &mut churn),
            "replay"
        );
        let other_key = VerifiedProof {
            jkt: "k2".into(),
            ..proof.clone()
        };
        assert!(remember_jti(
            &table,
            &shared,
            &other_key,
            &rules(),
            ms,
            &mut churn
        ));
        // Past its window the proof is too old anyway; the entry is reclaimed.
        assert!(remember_jti(
            &table,
            &shared,
            &proof,
            &rules(),
            ms + 61_000,
            &mut churn
        ));
    }

    #[test]
    fn nonces_rotate_and_the_last_one_still_counts() {
        let secret = b"0123456789abcdef";
        let n = nonce_at(secret, 300, NOW);
        assert!(nonce_ok(secret, 300, NOW, Some(&n)));
        assert!(
            nonce_ok(secret, 300, NOW + 300, Some(&n)),
            "the previous period"
        );
        assert!(!nonce_ok(secret, 300, NOW + 600, Some(&n)), "rotated away");
        assert!(!nonce_ok(secret, 300, NOW, None));
        assert!(!nonce_ok(b"another secret!!", 300, NOW, Some(&n)));
        assert!(base_uri_ok("https://api.example.com"));
        assert!(base_uri_ok("http://127.0.0.1:8080/"));
        assert!(!base_uri_ok("https://api.example.com/v1"));
        assert!(!base_uri_ok("api.example.com"));
    }

    #[test]
    fn uris_compare_after_normalisation() {
        assert!(same_uri(
            "https://a.example/x",
            "https://A.EXAMPLE:443/x?q#f"
        ));
        assert!(same_uri("http://a.example", "http://a.example:80/"));
        assert!(!same_uri("https://a.example/x", "http://a.example/x"));
        assert!(!same_uri("https://a.example/x", "https://a.example/y"));
        assert!(!same_uri("https://a.example:8443/x", "https://a.example/x"));
        assert!(!same_uri("https://user@a.example/x", "https://a.example/x"));
        assert!(!same_uri("a.example/x", "a.example/x"));
    }
}
