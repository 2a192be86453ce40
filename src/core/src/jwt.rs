//! JWS compact tokens: decoding, signature dispatch and claim validation.
//!
//! The order is fixed and cheap-first: size and shape, header (`alg`, untrusted
//! key references), then the issuer picks the provider, then the signature,
//! and only a token with a valid signature has its claims judged.

use crate::alg::Algorithm;
use crate::decision::Reason;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A structurally valid token whose signature has not been checked yet.
#[derive(Debug)]
pub struct DecodedToken<'a> {
    pub raw: &'a str,
    /// `base64url(header) "." base64url(payload)`: the bytes that were signed.
    pub signing_input: &'a str,
    pub signature: Vec<u8>,
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub typ: Option<String>,
    pub claims: Map<String, Value>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    crit: Option<Vec<String>>,
    // Key references a token could use to bring its own key. They are never
    // followed; a token carrying one is refused outright.
    #[serde(default)]
    jwk: Option<Value>,
    #[serde(default)]
    jku: Option<Value>,
    #[serde(default)]
    x5u: Option<Value>,
}

/// Splits and decodes a compact JWS. Any failure is `MalformedToken`, except
/// an algorithm Tollgate never accepts (`none`, unknown names).
pub fn decode(raw: &str) -> Result<DecodedToken<'_>, Reason> {
    if raw.is_empty() || raw.len() > MAX_TOKEN_BYTES {
        return Err(Reason::MalformedToken);
    }
    let mut parts = raw.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reason::MalformedToken);
    };
    let b64 = |s: &str| {
        URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| Reason::MalformedToken)
    };
    let header: Header = serde_json::from_slice(&b64(h64)?).map_err(|_| Reason::MalformedToken)?;
    let alg = Algorithm::from_name(&header.alg).ok_or(Reason::UnsupportedAlgorithm)?;
    if header.crit.is_some_and(|c| !c.is_empty())
        || header.jwk.is_some()
        || header.jku.is_some()
        || header.x5u.is_some()
    {
        return Err(Reason::MalformedToken);
    }
    if let Some(typ) = &header.typ {
        // RFC 7519 §5.1: a JWT's typ is "JWT" or a "+jwt" media type.
        let t = typ.to_ascii_lowercase();
        if t != "jwt" && !t.ends_with("+jwt") {
            return Err(Reason::WrongTokenType);
        }
    }
    let claims: Map<String, Value> =
        serde_json::from_slice(&b64(p64)?).map_err(|_| Reason::MalformedToken)?;
    check_registered_claim_types(&claims)?;
    let signature = b64(s64)?;
    Ok(DecodedToken {
        raw,
        signing_input: &raw[..h64.len() + 1 + p64.len()],
        signature,
        alg,
        kid: header.kid,
        typ: header.typ,
        claims,
    })
}

/// Registered claims must have their RFC 7519 types; numeric dates must be
/// non-negative integers. A token that bends these is malformed, whichever
/// signature backend looks at it.
fn check_registered_claim_types(claims: &Map<String, Value>) -> Result<(), Reason> {
    for name in ["iss", "sub", "jti", "nonce"] {
        if claims.get(name).is_some_and(|v| !v.is_string()) {
            return Err(Reason::MalformedToken);
        }
    }
    for name in ["exp", "nbf", "iat"] {
        if claims.get(name).is_some_and(|v| v.as_u64().is_none()) {
            return Err(Reason::MalformedToken);
        }
    }
    match claims.get("aud") {
        None | Some(Value::String(_)) => Ok(()),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => Ok(()),
        Some(_) => Err(Reason::MalformedToken),
    }
}

impl DecodedToken<'_> {
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    fn numeric(&self, name: &str) -> Option<u64> {
        self.claims.get(name).and_then(Value::as_u64)
    }

    /// Validates the claims that do not change with the clock (`iat`, lifetime,
    /// audience, type) for one provider. `exp` must be present; the validity
    /// window is [`check_validity_window`], per request.
    pub fn validate_claims(&self, rules: &ClaimRules, now: u64) -> Result<(), Reason> {
        let skew = rules.clock_skew_secs;
        let exp = self.numeric("exp").ok_or(Reason::MissingClaim)?;
        let iat = self.numeric("iat");
        if iat.is_some_and(|iat| iat > now.saturating_add(skew)) {
            return Err(Reason::IssuedInFuture);
        }
        if let Some(max) = rules.max_lifetime_secs {
            // Judge the lifetime the issuer claims and the time left from now,
            // so a forged-looking `iat` cannot stretch a long-lived token.
            let issued = iat.ok_or(Reason::MissingClaim)?;
            if exp.saturating_sub(issued) > max
                || exp.saturating_sub(now) > max.saturating_add(skew)
            {
                return Err(Reason::LifetimeTooLong);
            }
        }
        if !rules.audiences.is_empty() {
            let matches = match self.claims.get("aud") {
                Some(Value::String(aud)) => rules.audiences.iter().any(|a| a == aud),
                Some(Value::Array(auds)) => auds
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|aud| rules.audiences.iter().any(|a| a == aud)),
                _ => false,
            };
            if !matches {
                return Err(Reason::AudienceMismatch);
            }
        }
        if let Some(required) = &rules.required_typ {
            let typ = self.typ.as_deref().unwrap_or("").to_ascii_lowercase();
            let bare = typ.strip_prefix("application/").unwrap_or(&typ);
            if bare != required.as_str() {
                return Err(Reason::WrongTokenType);
            }
        }
        Ok(())
    }
}

/// `exp` and `nbf` against the clock: the one check for fresh and cached tokens
/// alike, since a cached verification says nothing about time.
pub fn check_validity_window(
    exp: u64,
    nbf: Option<u64>,
    skew: u64,
    now: u64,
) -> Result<(), Reason> {
    if now >= exp.saturating_add(skew) {
        return Err(Reason::Expired);
    }
    if nbf.is_some_and(|nbf| now.saturating_add(skew) < nbf) {
        return Err(Reason::NotYetValid);
    }
    Ok(())
}

/// A provider's claim requirements.
#[derive(Debug, Clone, Default)]
pub struct ClaimRules {
    pub audiences: Vec<String>,
    pub clock_skew_secs: u64,
    pub max_lifetime_secs: Option<u64>,
    /// Lowercase, without an `application/` prefix (e.g. `at+jwt`).
    pub required_typ: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token(header: Value, claims: Value) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(b"sig")
        )
    }

    const NOW: u64 = 1_700_000_000;

    fn rules() -> ClaimRules {
        ClaimRules {
            audiences: vec!["api".into()],
            clock_skew_secs: 60,
            max_lifetime_secs: None,
            required_typ: None,
        }
    }

    /// What verification judges of the claims: the validity window first, as the
    /// pipeline does, then the rest.
    fn validate(claims: Value, rules: &ClaimRules) -> Result<(), Reason> {
        let raw = token(json!({"alg":"ES256"}), claims);
        let decoded = decode(&raw)?;
        let exp = decoded.numeric("exp").ok_or(Reason::MissingClaim)?;
        check_validity_window(exp, decoded.numeric("nbf"), rules.clock_skew_secs, NOW)?;
        decoded.validate_claims(rules, NOW)
    }

    #[test]
    fn shape_errors_are_malformed() {
        for raw in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &"a".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert_eq!(
                decode(raw).unwrap_err(),
                Reason::MalformedToken,
                "{raw:.20}"
            );
        }
        let not_json = format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("nope"));
        assert_eq!(decode(&not_json).unwrap_err(), Reason::MalformedToken);
        let array_claims = token(json!({"alg":"ES256"}), json!([1]));
        assert_eq!(decode(&array_claims).unwrap_err(), Reason::MalformedToken);
    }

    #[test]
    fn none_and_unknown_algorithms_are_refused() {
        for alg in ["none", "None", "HS1", ""] {
            let raw = token(json!({"alg": alg}), json!({"exp": NOW + 60}));
            assert_eq!(
                decode(&raw).unwrap_err(),
                Reason::UnsupportedAlgorithm,
                "{alg}"
            );
        }
    }

    #[test]
    fn embedded_key_references_and_crit_are_refused() {
        for extra in [
            json!({"jwk": {"kty":"oct","k":"AAAA"}}),
            json!({"jku": "https://evil.example/jwks"}),
            json!({"x5u": "https://evil.example/cert"}),
            json!({"crit": ["exp"]}),
        ] {
            let mut h = json!({"alg":"ES256"});
            h.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            assert_eq!(
                decode(&token(h, json!({}))).unwrap_err(),
                Reason::MalformedToken
            );
        }
    }

    #[test]
    fn registered_claims_must_have_their_types() {
        for claims in [
            json!({"exp": "tomorrow"}),
            json!({"exp": 1.5}),
            json!({"exp": -1}),
            json!({"iss": 7}),
            json!({"aud": 7}),
            json!({"aud": ["a", 7]}),
            json!({"sub": {"x":1}}),
        ] {
            let raw = token(json!({"alg":"ES256"}), claims.clone());
            assert_eq!(
                decode(&raw).unwrap_err(),
                Reason::MalformedToken,
                "{claims}"
            );
        }
    }

    #[test]
    fn exp_is_required_and_enforced_with_skew() {
        assert_eq!(
            validate(json!({"aud":"api"}), &rules()),
            Err(Reason::MissingClaim)
        );
        assert_eq!(
            validate(json!({"aud":"api","exp": NOW - 61}), &rules()),
            Err(Reason::Expired)
        );
        assert_eq!(
            validate(json!({"aud":"api","exp": NOW - 59}), &rules()),
            Ok(())
        );
    }

    #[test]
    fn nbf_and_iat_in_the_future_are_refused() {
        let exp = NOW + 600;
        assert_eq!(
            validate(json!({"aud":"api","exp":exp,"nbf": NOW + 120}), &rules()),
            Err(Reason::NotYetValid)
        );
        assert_eq!(
            validate(json!({"aud":"api","exp":exp,"nbf": NOW + 30}), &rules()),
            Ok(())
        );
        assert_eq!(
            validate(json!({"aud":"api","exp":exp,"iat": NOW + 120}), &rules()),
            Err(Reason::IssuedInFuture)
        );
    }

    #[test]
    fn audience_string_or_array() {
        assert_eq!(
            validate(json!({"aud":"api","exp":NOW+60}), &rules()),
            Ok(())
        );
        assert_eq!(
            validate(json!({"aud":["x","api"],"exp":NOW+60}), &rules()),
            Ok(())
        );
        assert_eq!(
            validate(json!({"aud":["x"],"exp":NOW+60}), &rules()),
            Err(Reason::AudienceMismatch)
        );
        assert_eq!(
            validate(json!({"exp":NOW+60}), &rules()),
            Err(Reason::AudienceMismatch)
        );
        let open = ClaimRules {
            audiences: vec![],
            ..rules()
        };
        assert_eq!(validate(json!({"exp":NOW+60}), &open), Ok(()));
    }

    #[test]
    fn max_lifetime_counts_from_iat_and_from_now() {
        let r = ClaimRules {
            max_lifetime_secs: Some(3600),
            ..rules()
        };
        assert_eq!(
            validate(json!({"aud":"api","iat":NOW,"exp":NOW+3600}), &r),
            Ok(())
        );
        assert_eq!(
            validate(json!({"aud":"api","iat":NOW,"exp":NOW+3601}), &r),
            Err(Reason::LifetimeTooLong)
        );
        assert_eq!(
            validate(json!({"aud":"api","iat":NOW+50,"exp":NOW+50+3600*24}), &r),
            Err(Reason::LifetimeTooLong)
        );
        assert_eq!(
            validate(json!({"aud":"api","exp":NOW+60}), &r),
            Err(Reason::MissingClaim)
        );
    }

    #[test]
    fn typ_is_checked_when_required() {
        let r = ClaimRules {
            required_typ: Some("at+jwt".into()),
            ..rules()
        };
        let claims = json!({"aud":"api","exp":NOW+60});
        for (typ, ok) in [
            ("at+jwt", true),
            ("AT+JWT", true),
            ("application/at+jwt", true),
            ("JWT", false),
        ] {
            let raw = token(json!({"alg":"ES256","typ":typ}), claims.clone());
            let res = decode(&raw).unwrap().validate_claims(&r, NOW);
            assert_eq!(res.is_ok(), ok, "{typ}");
        }
        let raw = token(json!({"alg":"ES256"}), claims.clone());
        assert_eq!(
            decode(&raw).unwrap().validate_claims(&r, NOW),
            Err(Reason::WrongTokenType)
        );
        let raw = token(json!({"alg":"ES256","typ":"dpop"}), claims);
        assert_eq!(decode(&raw).unwrap_err(), Reason::WrongTokenType);
    }
}
