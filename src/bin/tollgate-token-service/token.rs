//! Access-token issuance in the JWT profile of RFC 9068.
//!
//! Header: `typ: at+jwt`, `alg`, `kid`. Claims: `iss`, `sub`, `aud`, `exp`, `iat`,
//! `nbf`, `jti`, `client_id` and, when any scope is granted, `scope`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::{Claims, Duration, HeaderOptions, UnixTimeStamp};
use rand::rngs::OsRng;
use rand::RngCore as _;
use serde::Serialize;

use crate::keys::SigningKey;
use crate::scope::ScopeSet;

/// RFC 9068 §2.1 media type of the header's `typ`.
const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// What a token is issued for.
pub struct Grant<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    /// The resource owner; the client itself for `client_credentials`.
    pub subject: &'a str,
    pub client_id: &'a str,
    pub scopes: &'a ScopeSet,
    pub lifetime_secs: u64,
}

/// A signed access token.
pub struct IssuedToken {
    pub jwt: String,
    /// The token's `jti`: safe to log, unlike the token.
    pub jti: String,
}

#[derive(Serialize)]
struct AccessTokenClaims<'a> {
    client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

/// Signs an access token for `grant`, issued at `now` (Unix seconds).
pub fn issue(key: &SigningKey, grant: &Grant<'_>, now: i64) -> anyhow::Result<IssuedToken> {
    let jti = random_token_id();
    let issued_at = UnixTimeStamp::from_secs(u64::try_from(now)?);
    let mut claims = Claims::with_custom_claims(
        AccessTokenClaims {
            client_id: grant.client_id,
            scope: (!grant.scopes.is_empty()).then(|| grant.scopes.to_string()),
        },
        Duration::from_secs(grant.lifetime_secs),
    )
    .with_issuer(grant.issuer)
    .with_subject(grant.subject)
    .with_audience(grant.audience)
    .with_jwt_id(&jti);
    // Pin every timestamp to `now`, so that `exp - iat` is exactly the advertised lifetime.
    claims.issued_at = Some(issued_at);
    claims.invalid_before = Some(issued_at);
    claims.expires_at = Some(issued_at + Duration::from_secs(grant.lifetime_secs));

    let options = HeaderOptions {
        signature_type: Some(ACCESS_TOKEN_TYPE.to_owned()),
        ..HeaderOptions::default()
    };
    let jwt = key.sign(claims, &options)?;
    Ok(IssuedToken { jwt, jti })
}

/// 128 random bits, base64url.
fn random_token_id() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Algorithm;
    use serde_json::Value;

    fn decode_segment(segment: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).expect("base64url")).expect("json")
    }

    #[test]
    fn claims_and_header_follow_rfc_9068() {
        let key = SigningKey::generate(Algorithm::Es256).expect("key");
        let scopes: ScopeSet = "write:data read:data".parse().expect("scopes");
        let grant = Grant {
            issuer: "https://auth.example",
            audience: "api",
            subject: "svc",
            client_id: "svc",
            scopes: &scopes,
            lifetime_secs: 900,
        };
        let token = issue(&key, &grant, 1_700_000_000).expect("issue");
        let segments: Vec<&str> = token.jwt.split('.').collect();
        assert_eq!(segments.len(), 3);

        let header = decode_segment(segments[0]);
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], key.kid());

        let claims = decode_segment(segments[1]);
        assert_eq!(claims["iss"], "https://auth.example");
        assert_eq!(claims["sub"], "svc");
        assert_eq!(claims["aud"], "api");
        assert_eq!(claims["client_id"], "svc");
        assert_eq!(claims["scope"], "read:data write:data");
        assert_eq!(claims["iat"], 1_700_000_000);
        assert_eq!(claims["nbf"], 1_700_000_000);
        assert_eq!(claims["exp"], 1_700_000_900);
        assert_eq!(claims["jti"], token.jti.as_str());
    }

    #[test]
    fn omits_scope_when_none_is_granted() {
        let key = SigningKey::generate(Algorithm::EdDsa).expect("key");
        let scopes = ScopeSet::default();
        let grant = Grant {
            issuer: "https://auth.example",
            audience: "api",
            subject: "svc",
            client_id: "svc",
            scopes: &scopes,
            lifetime_secs: 60,
        };
        let first = issue(&key, &grant, 1_700_000_000).expect("issue");
        let second = issue(&key, &grant, 1_700_000_000).expect("issue");
        let claims = decode_segment(first.jwt.split('.').nth(1).expect("payload"));
        assert!(claims.get("scope").is_none());
        assert_ne!(first.jti, second.jti);
    }
}
