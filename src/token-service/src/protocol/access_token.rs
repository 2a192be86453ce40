//! Access tokens in the JWT profile of RFC 9068: issuing them, and verifying the ones
//! presented back to `/revoke` and `/introspect`.
//!
//! Header: `typ: at+jwt`, `alg`, `kid`. Claims: `iss`, `sub`, `aud`, `exp`, `iat`,
//! `nbf`, `jti`, `client_id`, when any scope is granted, `scope`, and for a
//! sender-constrained token `cnf` (RFC 7800) with `jkt` (DPoP, RFC 9449 §6) and/or
//! `x5t#S256` (mutual TLS, RFC 8705 §3.1); for a user's token, how they signed in:
//! `auth_time`, `acr`, `amr` (RFC 9470 §3).

use std::collections::HashSet;

use jwt_simple::prelude::{
    Audiences, Claims, Duration, HeaderOptions, Token, UnixTimeStamp, VerificationOptions,
};
use serde::{Deserialize, Serialize};

use crate::crypto::opaque;
use crate::crypto::signing_keys::SigningKey;
use crate::protocol::authentication::Authentication;
use crate::protocol::scope::ScopeSet;
use crate::storage::keystore::KeySet;

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
    /// How the user signed in; `None` for `client_credentials` (and grants from before
    /// sign-ins were recorded).
    pub authentication: Option<&'a Authentication>,
    /// The key or certificate the token is bound to; `None`: a bearer token.
    pub confirmation: Option<&'a Confirmation>,
}

/// The `cnf` claim of a sender-constrained token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// RFC 7638 thumbprint of the DPoP key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
    /// base64url SHA-256 of the client certificate's DER.
    #[serde(rename = "x5t#S256", default, skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
}

impl Confirmation {
    pub fn is_empty(&self) -> bool {
        self.jkt.is_none() && self.x5t_s256.is_none()
    }
}

/// A signed access token.
pub struct IssuedToken {
    pub jwt: String,
    /// The token's `jti`: safe to log, unlike the token.
    pub jti: String,
    /// Its `exp`, Unix seconds.
    pub expires_at: i64,
}

#[derive(Serialize, Deserialize)]
struct AccessTokenClaims {
    client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    acr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    amr: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cnf: Option<Confirmation>,
}

/// The claims of a valid, unexpired access token this service issued.
#[derive(Debug)]
pub struct VerifiedToken {
    pub jti: String,
    pub issuer: String,
    pub subject: String,
    pub audience: String,
    pub client_id: String,
    pub scope: Option<String>,
    pub confirmation: Option<Confirmation>,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// Signs an access token for `grant`, issued at `now` (Unix seconds).
pub fn issue(key: &SigningKey, grant: &Grant<'_>, now: i64) -> anyhow::Result<IssuedToken> {
    // 128 random bits.
    let jti = opaque::random(16);
    let issued_at = UnixTimeStamp::from_secs(u64::try_from(now)?);
    let mut claims = Claims::with_custom_claims(
        AccessTokenClaims {
            client_id: grant.client_id.to_owned(),
            scope: (!grant.scopes.is_empty()).then(|| grant.scopes.to_string()),
            auth_time: grant.authentication.map(|signed_in| signed_in.auth_time),
            acr: grant
                .authentication
                .map(|signed_in| signed_in.acr().to_owned()),
            amr: grant
                .authentication
                .map(|signed_in| signed_in.amr().into_iter().map(str::to_owned).collect()),
            cnf: grant
                .confirmation
                .filter(|confirmation| !confirmation.is_empty())
                .cloned(),
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
    let expires_at = now.saturating_add(i64::try_from(grant.lifetime_secs)?);
    Ok(IssuedToken {
        jwt,
        jti,
        expires_at,
    })
}

/// The token's claims if it is an access token this service signed for `issuer` with
/// one of `keys`, and it has not expired at `now`. Says nothing about revocation.
pub fn verify(keys: &KeySet, jwt: &str, issuer: &str, now: i64) -> Option<VerifiedToken> {
    let metadata = Token::decode_metadata(jwt).ok()?;
    let key = keys.verifying_key(metadata.key_id()?)?;
    let options = VerificationOptions {
        required_signature_type: Some(ACCESS_TOKEN_TYPE.to_owned()),
        allowed_issuers: Some(HashSet::from([issuer.to_owned()])),
        // `exp` is checked below, exactly and in whole seconds as it was issued; this
        // only keeps the library's coarse clock from calling a token issued this very
        // second "from the future".
        time_tolerance: Some(Duration::from_secs(60)),
        ..VerificationOptions::default()
    };
    let claims = key.verify::<AccessTokenClaims>(jwt, options).ok()?;
    let expires_at = i64::try_from(claims.expires_at?.as_secs()).ok()?;
    if expires_at <= now {
        return None;
    }
    let audience = match claims.audiences? {
        Audiences::AsString(audience) => audience,
        Audiences::AsSet(_) => return None,
    };
    Some(VerifiedToken {
        jti: claims.jwt_id?,
        issuer: claims.issuer?,
        subject: claims.subject?,
        audience,
        client_id: claims.custom.client_id,
        scope: claims.custom.scope,
        confirmation: claims.custom.cnf,
        issued_at: i64::try_from(claims.issued_at?.as_secs()).ok()?,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::signing_keys::Algorithm;
    use crate::storage::keystore::{self, KeyCache};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
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
            authentication: None,
            confirmation: None,
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
        assert!(claims.get("cnf").is_none(), "a bearer token");
        assert_eq!(token.expires_at, 1_700_000_900);

        let confirmation = Confirmation {
            jkt: Some("key-thumbprint".to_owned()),
            x5t_s256: Some("cert-thumbprint".to_owned()),
        };
        let bound = Grant {
            confirmation: Some(&confirmation),
            ..grant
        };
        let token = issue(&key, &bound, 1_700_000_000).expect("issue");
        let claims = decode_segment(token.jwt.split('.').nth(1).expect("payload"));
        assert_eq!(
            claims["cnf"],
            serde_json::json!({"jkt": "key-thumbprint", "x5t#S256": "cert-thumbprint"})
        );
    }

    #[test]
    fn verifies_its_own_unexpired_tokens_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut conn = crate::storage::db::open(&dir.path().join("store.db")).expect("open");
        let now = crate::server::clock::now();
        keystore::ensure_active(&mut conn, Algorithm::Es256, now).expect("key");
        let keys = KeyCache::default().current(&conn, now).expect("keys");
        let scopes: ScopeSet = "read".parse().expect("scopes");
        let grant = Grant {
            issuer: "https://auth.example",
            audience: "api",
            subject: "user-1",
            client_id: "app",
            scopes: &scopes,
            lifetime_secs: 60,
            authentication: None,
            confirmation: None,
        };
        let token = issue(keys.signing_key(), &grant, now).expect("issue");

        let verified = verify(&keys, &token.jwt, "https://auth.example", now).expect("valid");
        assert_eq!(verified.jti, token.jti);
        assert_eq!(verified.subject, "user-1");
        assert_eq!(verified.client_id, "app");
        assert_eq!(verified.audience, "api");
        assert_eq!(verified.scope.as_deref(), Some("read"));
        assert_eq!(verified.issued_at, now);
        assert_eq!(verified.expires_at, now + 60);

        assert!(verify(&keys, &token.jwt, "https://other.example", now).is_none());
        assert!(verify(&keys, &token.jwt, "https://auth.example", now + 60).is_none());
        let (head, signature) = token.jwt.rsplit_once('.').expect("jws");
        let forged = format!("{head}.{}", signature.chars().rev().collect::<String>());
        assert!(verify(&keys, &forged, "https://auth.example", now).is_none());
        assert!(verify(&keys, "not a token", "https://auth.example", now).is_none());

        let stranger = SigningKey::generate(Algorithm::Es256).expect("key");
        let foreign = issue(&stranger, &grant, now).expect("issue");
        assert!(verify(&keys, &foreign.jwt, "https://auth.example", now).is_none());
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
            authentication: None,
            confirmation: None,
        };
        let first = issue(&key, &grant, 1_700_000_000).expect("issue");
        let second = issue(&key, &grant, 1_700_000_000).expect("issue");
        let claims = decode_segment(first.jwt.split('.').nth(1).expect("payload"));
        assert!(claims.get("scope").is_none());
        assert_ne!(first.jti, second.jti);
    }
}
