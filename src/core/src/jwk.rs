//! JSON Web Key Sets (RFC 7517) turned into ready-to-use verification keys.
//!
//! All parsing and key construction happens here, once per key set, so the
//! request path only looks keys up. Each key records the algorithms it may be
//! used with: its family (RSA, P-256, …), narrowed by its own `alg` and by the
//! provider's allow-list. That binding is what prevents algorithm confusion,
//! e.g. an RSA public key being accepted as an HMAC secret.

use crate::alg::{Algorithm, KeyFamily};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::*;
use serde::Deserialize;
use std::fmt;

/// Where a key set came from decides whether symmetric keys may be in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// Operator-supplied (`local_jwks`): may hold `oct` secrets for HS*.
    Local,
    /// Fetched over the network: `oct` keys are ignored, never trusted.
    Remote,
}

/// A public key (or, for HS*, a shared secret) built for each algorithm it allows.
pub struct VerificationKey {
    pub kid: Option<String>,
    pub family: KeyFamily,
    /// SubjectPublicKeyInfo DER, for Envoy's `verify_signature` (RSA and EC only).
    pub spki_der: Option<Vec<u8>>,
    keys: Vec<(Algorithm, PureKey)>,
}

/// jwt-simple key objects, one per permitted algorithm.
pub enum PureKey {
    HS256(HS256Key),
    HS384(HS384Key),
    HS512(HS512Key),
    RS256(RS256PublicKey),
    RS384(RS384PublicKey),
    RS512(RS512PublicKey),
    PS256(PS256PublicKey),
    PS384(PS384PublicKey),
    PS512(PS512PublicKey),
    ES256(ES256PublicKey),
    ES384(ES384PublicKey),
    EdDSA(Ed25519PublicKey),
}

impl VerificationKey {
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.keys.iter().any(|(a, _)| *a == alg)
    }

    pub fn pure_key(&self, alg: Algorithm) -> Option<&PureKey> {
        self.keys.iter().find(|(a, _)| *a == alg).map(|(_, k)| k)
    }

    pub fn algorithms(&self) -> impl Iterator<Item = Algorithm> + '_ {
        self.keys.iter().map(|(a, _)| *a)
    }
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material: HMAC secrets live here too.
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("algorithms", &self.algorithms().collect::<Vec<_>>())
            .finish()
    }
}

/// The usable keys of one JWKS document.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<VerificationKey>,
}

/// Upper bound on keys kept from one document; a token without `kid` is tried
/// against each candidate, so this also bounds the work one token can cause.
pub const MAX_KEYS: usize = 32;

impl KeySet {
    /// Keys a token signed with `alg` (and naming `kid`, if it does) may be checked against.
    pub fn candidates<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a VerificationKey> + 'a {
        self.keys.iter().filter(move |k| {
            k.allows(alg)
                && match kid {
                    Some(kid) => k.kid.as_deref() == Some(kid),
                    None => true,
                }
        })
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// A JWKS that could not be used, with the JSON path of the culprit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[derive(Deserialize)]
struct JwksDoc {
    keys: Vec<serde_json::Value>,
}

/// Fields of one JWK that matter here; everything else is ignored (RFC 7517 §4).
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    k: Option<String>,
}

/// How strictly to treat keys that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// Operator config: any unusable key is an error, so typos surface at load time.
    Strict,
    /// Fetched documents: skip what cannot be used (other services may publish
    /// encryption keys or curves we do not support), as RFC 7517 §5 allows.
    Lenient,
}

/// Parses a JWKS document. `allowed` is the provider's algorithm allow-list.
///
/// Returns the usable keys and, in lenient mode, a note per skipped key.
pub fn parse_jwks(
    json: &[u8],
    source: KeySource,
    allowed: &[Algorithm],
    strictness: Strictness,
) -> Result<(KeySet, Vec<JwksError>), JwksError> {
    let doc: JwksDoc = serde_json::from_slice(json).map_err(|e| JwksError {
        path: String::new(),
        message: format!("not a JWKS document ({e})"),
    })?;
    let mut set = KeySet::default();
    let mut skipped = Vec::new();
    for (i, value) in doc.keys.into_iter().enumerate() {
        let path = format!("keys[{i}]");
        let built = serde_json::from_value::<RawJwk>(value)
            .map_err(|e| e.to_string())
            .and_then(|raw| build_key(raw, source, allowed));
        match built {
            Ok(Some(key)) => {
                if set.keys.len() >= MAX_KEYS {
                    let err = JwksError {
                        path,
                        message: format!("more than {MAX_KEYS} keys"),
                    };
                    match strictness {
                        Strictness::Strict => return Err(err),
                        Strictness::Lenient => {
                            skipped.push(err);
                            break;
                        }
                    }
                }
                set.keys.push(key);
            }
            Ok(None) => {}
            Err(message) => {
                let err = JwksError { path, message };
                match strictness {
                    Strictness::Strict => return Err(err),
                    Strictness::Lenient => skipped.push(err),
                }
            }
        }
    }
    if set.keys.is_empty() {
        return Err(JwksError {
            path: "keys".to_string(),
            message: "no usable signing key".to_string(),
        });
    }
    Ok((set, skipped))
}

/// `Ok(None)` for keys that are legitimately not for us (encryption keys,
/// remote secrets, algorithms the provider does not allow).
fn build_key(
    raw: RawJwk,
    source: KeySource,
    allowed: &[Algorithm],
) -> Result<Option<VerificationKey>, String> {
    if raw.use_.as_deref().is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let family = match (raw.kty.as_str(), raw.crv.as_deref()) {
        ("RSA", _) => KeyFamily::Rsa,
        ("EC", Some("P-256")) => KeyFamily::EcP256,
        ("EC", Some("P-384")) => KeyFamily::EcP384,
        ("EC", crv) => return Err(format!("unsupported EC curve {crv:?}")),
        ("OKP", Some("Ed25519")) => KeyFamily::Ed25519,
        ("OKP", crv) => return Err(format!("unsupported OKP curve {crv:?}")),
        ("oct", _) if source == KeySource::Remote => return Ok(None),
        ("oct", _) => KeyFamily::Hmac,
        (kty, _) => return Err(format!("unsupported key type `{kty}`")),
    };
    let own_alg = match raw.alg.as_deref() {
        None => None,
        Some(name) => match Algorithm::from_name(name) {
            Some(alg) if alg.family() == family => Some(alg),
            Some(alg) => return Err(format!("`alg` {alg} does not fit a {} key", raw.kty)),
            None => return Err(format!("unsupported `alg` `{name}`")),
        },
    };
    let algs: Vec<Algorithm> = allowed
        .iter()
        .copied()
        .filter(|a| a.family() == family && own_alg.is_none_or(|own| own == *a))
        .collect();
    if algs.is_empty() {
        return Ok(None);
    }
    let field = |name: &str, v: &Option<String>| -> Result<Vec<u8>, String> {
        let s = v.as_deref().ok_or_else(|| format!("missing `{name}`"))?;
        URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| format!("`{name}` is not base64url"))
    };
    fn bad<E>(what: &'static str) -> impl Fn(E) -> String {
        move |_| format!("invalid {what} key")
    }
    let mut keys = Vec::with_capacity(algs.len());
    let mut spki_der = None;
    match family {
        KeyFamily::Rsa => {
            let (n, e) = (field("n", &raw.n)?, field("e", &raw.e)?);
            if n.len() < 256 {
                return Err("RSA modulus shorter than 2048 bits".to_string());
            }
            let base = RS256PublicKey::from_components(&n, &e).map_err(bad("RSA"))?;
            spki_der = Some(base.to_der().map_err(bad("RSA"))?);
            for alg in &algs {
                let key = match alg {
                    Algorithm::RS256 => PureKey::RS256(base.clone()),
                    Algorithm::RS384 => {
                        PureKey::RS384(RS384PublicKey::from_components(&n, &e).map_err(bad("RSA"))?)
                    }
                    Algorithm::RS512 => {
                        PureKey::RS512(RS512PublicKey::from_components(&n, &e).map_err(bad("RSA"))?)
                    }
                    Algorithm::PS256 => {
                        PureKey::PS256(PS256PublicKey::from_components(&n, &e).map_err(bad("RSA"))?)
                    }
                    Algorithm::PS384 => {
                        PureKey::PS384(PS384PublicKey::from_components(&n, &e).map_err(bad("RSA"))?)
                    }
                    Algorithm::PS512 => {
                        PureKey::PS512(PS512PublicKey::from_components(&n, &e).map_err(bad("RSA"))?)
                    }
                    _ => continue,
                };
                keys.push((*alg, key));
            }
        }
        KeyFamily::EcP256 | KeyFamily::EcP384 => {
            let (x, y) = (field("x", &raw.x)?, field("y", &raw.y)?);
            let width = if family == KeyFamily::EcP256 { 32 } else { 48 };
            if x.len() != width || y.len() != width {
                return Err("EC coordinates have the wrong length".to_string());
            }
            let mut point = Vec::with_capacity(1 + 2 * width);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            if family == KeyFamily::EcP256 {
                let key = ES256PublicKey::from_bytes(&point).map_err(bad("P-256"))?;
                spki_der = Some(key.to_der().map_err(bad("P-256"))?);
                keys.push((Algorithm::ES256, PureKey::ES256(key)));
            } else {
                let key = ES384PublicKey::from_bytes(&point).map_err(bad("P-384"))?;
                spki_der = Some(key.to_der().map_err(bad("P-384"))?);
                keys.push((Algorithm::ES384, PureKey::ES384(key)));
            }
        }
        KeyFamily::Ed25519 => {
            let x = field("x", &raw.x)?;
            let key = Ed25519PublicKey::from_bytes(&x).map_err(bad("Ed25519"))?;
            keys.push((Algorithm::EdDSA, PureKey::EdDSA(key)));
        }
        KeyFamily::Hmac => {
            let k = field("k", &raw.k)?;
            if k.len() < 32 {
                return Err("HMAC secret shorter than 256 bits".to_string());
            }
            for alg in &algs {
                let key = match alg {
                    Algorithm::HS256 => PureKey::HS256(HS256Key::from_bytes(&k)),
                    Algorithm::HS384 => PureKey::HS384(HS384Key::from_bytes(&k)),
                    Algorithm::HS512 => PureKey::HS512(HS512Key::from_bytes(&k)),
                    _ => continue,
                };
                keys.push((*alg, key));
            }
        }
    }
    Ok(Some(VerificationKey {
        kid: raw.kid,
        family,
        spki_der,
        keys,
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn es256_jwk(kp: &ES256KeyPair, kid: &str) -> serde_json::Value {
        let point = kp.public_key().public_key().to_bytes_uncompressed();
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    fn doc(keys: Vec<serde_json::Value>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap()
    }

    #[test]
    fn ec_key_is_bound_to_es256_and_gets_spki() {
        let kp = ES256KeyPair::generate();
        let (set, skipped) = parse_jwks(
            &doc(vec![es256_jwk(&kp, "k1")]),
            KeySource::Remote,
            &Algorithm::ALL,
            Strictness::Lenient,
        )
        .unwrap();
        assert!(skipped.is_empty());
        let key = &set.keys[0];
        assert_eq!(key.algorithms().collect::<Vec<_>>(), vec![Algorithm::ES256]);
        assert!(!key.allows(Algorithm::HS256));
        assert_eq!(
            key.spki_der.as_deref(),
            Some(&kp.public_key().to_der().unwrap()[..])
        );
        assert_eq!(set.candidates(Algorithm::ES256, Some("k1")).count(), 1);
        assert_eq!(set.candidates(Algorithm::ES256, Some("k2")).count(), 0);
        assert_eq!(set.candidates(Algorithm::HS256, Some("k1")).count(), 0);
    }

    #[test]
    fn remote_secrets_are_never_trusted() {
        let oct = serde_json::json!({"kty":"oct","k":URL_SAFE_NO_PAD.encode([7u8;32]),"kid":"s"});
        let err = parse_jwks(
            &doc(vec![oct]),
            KeySource::Remote,
            &Algorithm::ALL,
            Strictness::Lenient,
        )
        .unwrap_err();
        assert_eq!(err.message, "no usable signing key");
    }

    #[test]
    fn local_secret_only_serves_hmac() {
        let oct = serde_json::json!({"kty":"oct","k":URL_SAFE_NO_PAD.encode([7u8;32]),"kid":"s"});
        let (set, _) = parse_jwks(
            &doc(vec![oct]),
            KeySource::Local,
            &[Algorithm::HS256, Algorithm::RS256],
            Strictness::Strict,
        )
        .unwrap();
        assert_eq!(
            set.keys[0].algorithms().collect::<Vec<_>>(),
            vec![Algorithm::HS256]
        );
    }

    #[test]
    fn rsa_key_with_alg_allows_only_that_alg() {
        let kp = RS256KeyPair::generate(2048).unwrap();
        let c = kp.public_key().to_components();
        let jwk = serde_json::json!({"kty":"RSA","alg":"PS256","kid":"r",
            "n":URL_SAFE_NO_PAD.encode(&c.n),"e":URL_SAFE_NO_PAD.encode(&c.e)});
        let (set, _) = parse_jwks(
            &doc(vec![jwk]),
            KeySource::Remote,
            &Algorithm::ALL,
            Strictness::Lenient,
        )
        .unwrap();
        assert_eq!(
            set.keys[0].algorithms().collect::<Vec<_>>(),
            vec![Algorithm::PS256]
        );
    }

    #[test]
    fn strict_mode_names_the_bad_key_lenient_mode_skips_it() {
        let kp = ES256KeyPair::generate();
        let bad = serde_json::json!({"kty":"EC","crv":"P-256","x":"!!","y":"AA"});
        let json = doc(vec![es256_jwk(&kp, "good"), bad]);
        let err =
            parse_jwks(&json, KeySource::Local, &Algorithm::ALL, Strictness::Strict).unwrap_err();
        assert_eq!(err.path, "keys[1]");
        assert!(err.message.contains("base64url"), "{err}");
        let (set, skipped) = parse_jwks(
            &json,
            KeySource::Remote,
            &Algorithm::ALL,
            Strictness::Lenient,
        )
        .unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(skipped.len(), 1);
    }

    #[test]
    fn garbage_documents_are_errors_not_panics() {
        for junk in [
            &b""[..],
            b"[]",
            b"{\"keys\":{}}",
            b"{\"keys\":[1,2]}",
            b"\xff\xfe",
        ] {
            assert!(parse_jwks(
                junk,
                KeySource::Remote,
                &Algorithm::ALL,
                Strictness::Lenient
            )
            .is_err());
        }
    }

    #[test]
    fn mismatched_own_alg_is_rejected() {
        let kp = ES256KeyPair::generate();
        let mut jwk = es256_jwk(&kp, "k");
        jwk["alg"] = "RS256".into();
        let err = parse_jwks(
            &doc(vec![jwk]),
            KeySource::Local,
            &Algorithm::ALL,
            Strictness::Strict,
        )
        .unwrap_err();
        assert!(err.message.contains("does not fit"), "{err}");
    }
}
