//! DPoP proofs at the token endpoint (RFC 9449 §4.3, §5, §8).
//!
//! A proof is a compact JWS with `typ: dpop+jwt`, an ES256 signature, and the public
//! key in its `jwk` header. jwt-simple cannot read a `jwk` header, so the signature is
//! checked here with `p256` over the JWS signing input.
//!
//! `htu` must name the token endpoint as clients reach it: the issuer's `/token` (the
//! `token_endpoint` of the metadata) or its mTLS alias. It is never taken from the
//! request's `Host` or `X-Forwarded-*` headers, which a client behind a proxy
//! controls. Replay (`jti` used twice) is caught in the database, see
//! [`record_use`]; the optional server nonce is stateless, see [`Nonces`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use rusqlite::{params, Connection};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::crypto::opaque;
use crate::protocol::errors::OAuthError;

/// What `dpop_signing_alg_values_supported` advertises: asymmetric only.
pub const SIGNING_ALGS: &[&str] = &["ES256"];
/// The proof's `typ` (RFC 9449 §4.2).
const PROOF_TYPE: &str = "dpop+jwt";
/// A proof is a few hundred bytes; anything this long is not one.
const MAX_PROOF_BYTES: usize = 4_096;
const MAX_JTI_BYTES: usize = 256;
/// A proof may be dated this far ahead of the server's clock.
const MAX_CLOCK_AHEAD_SECS: i64 = 5;
/// JWK members that only private (or symmetric) keys have (RFC 7518 §6).
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// How proofs are checked.
pub struct ProofRules<'a> {
    /// Normalised URLs `htu` may name (see [`normalize_htu`]).
    pub token_endpoints: &'a [String],
    /// `iat` may be at most this many seconds old.
    pub max_age_secs: i64,
    /// When set, proofs must carry a current server nonce.
    pub nonces: Option<&'a Nonces>,
}

/// A proof whose signature, claims and freshness checked out. Its `jti` still has to
/// be recorded ([`record_use`]) before it counts.
#[derive(Debug, Clone)]
pub struct Proof {
    /// RFC 7638 thumbprint of the proof key: the token's `cnf.jkt`.
    pub jkt: String,
    pub jti: String,
    pub iat: i64,
}

#[derive(Deserialize)]
struct Header {
    typ: Option<String>,
    alg: Option<String>,
    jwk: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct Claims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<i64>,
    nonce: Option<String>,
}

/// Checks a proof sent with a `method` request to the token endpoint at `now`.
pub fn verify(
    proof: &str,
    method: &str,
    rules: &ProofRules<'_>,
    now: i64,
) -> Result<Proof, OAuthError> {
    let invalid = OAuthError::invalid_dpop_proof;
    if proof.len() > MAX_PROOF_BYTES {
        return Err(invalid("the DPoP proof is too long"));
    }
    let mut segments = proof.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(invalid("the DPoP proof is not a compact JWS"));
    };
    let header: Header =
        decode_json(header_b64).ok_or_else(|| invalid("the DPoP proof header is malformed"))?;
    if header.typ.as_deref() != Some(PROOF_TYPE) {
        return Err(invalid("the DPoP proof's typ must be dpop+jwt"));
    }
    match header.alg.as_deref() {
        Some(alg) if SIGNING_ALGS.contains(&alg) => {}
        _ => return Err(invalid("the DPoP proof's alg is not supported (ES256)")),
    }
    let jwk = header
        .jwk
        .ok_or_else(|| invalid("the DPoP proof has no jwk header"))?;
    if PRIVATE_MEMBERS
        .iter()
        .any(|member| jwk.contains_key(*member))
    {
        return Err(invalid("the DPoP proof's jwk holds a private key"));
    }
    let key = PublicKey::from_jwk(&jwk)
        .ok_or_else(|| invalid("the DPoP proof's jwk is not a P-256 public key"))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .ok()
        .and_then(|bytes| p256::ecdsa::Signature::from_slice(&bytes).ok())
        .ok_or_else(|| invalid("the DPoP proof's signature is malformed"))?;
    let signing_input = &proof[..header_b64.len() + 1 + payload_b64.len()];
    key.verifying_key
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| invalid("the DPoP proof's signature does not verify under its jwk"))?;

    let claims: Claims =
        decode_json(payload_b64).ok_or_else(|| invalid("the DPoP proof's claims are malformed"))?;
    let jti = claims
        .jti
        .filter(|jti| !jti.is_empty() && jti.len() <= MAX_JTI_BYTES)
        .ok_or_else(|| invalid("the DPoP proof needs a jti"))?;
    if claims.htm.as_deref() != Some(method) {
        return Err(invalid("the DPoP proof's htm is not this request's method"));
    }
    let htu = claims
        .htu
        .as_deref()
        .and_then(normalize_htu)
        .ok_or_else(|| invalid("the DPoP proof's htu is missing or not a URL"))?;
    if !rules.token_endpoints.contains(&htu) {
        return Err(invalid("the DPoP proof's htu is not this token endpoint"));
    }
    let iat = claims
        .iat
        .ok_or_else(|| invalid("the DPoP proof needs an iat"))?;
    if iat > now.saturating_add(MAX_CLOCK_AHEAD_SECS) {
        return Err(invalid("the DPoP proof's iat is in the future"));
    }
    if iat < now.saturating_sub(rules.max_age_secs) {
        return Err(invalid("the DPoP proof is too old (iat)"));
    }
    if let Some(nonces) = rules.nonces {
        if !claims
            .nonce
            .as_deref()
            .is_some_and(|nonce| nonces.is_current(nonce, now))
        {
            return Err(OAuthError::use_dpop_nonce(nonces.issue(now)));
        }
    }
    Ok(Proof {
        jkt: key.thumbprint,
        jti,
        iat,
    })
}

/// Whether `jkt` looks like a JWK SHA-256 thumbprint (`dpop_jkt`, RFC 9449 §10):
/// 43 base64url characters.
pub fn is_thumbprint(jkt: &str) -> bool {
    jkt.len() == 43
        && jkt
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_'))
}

/// Records the proof's `jti` as used; `false` if it was used before (a replay). Uses
/// are remembered until the proof could no longer pass the `iat` check, keyed by the
/// key's thumbprint too, so one client cannot burn another's `jti`s.
pub fn record_use(
    conn: &Connection,
    proof: &Proof,
    max_age_secs: i64,
    now: i64,
) -> rusqlite::Result<bool> {
    conn.execute("DELETE FROM dpop_proofs WHERE expires_at <= ?1", [now])?;
    let digest = opaque::digest(&format!("{}.{}", proof.jkt, proof.jti));
    let expires_at = proof
        .iat
        .max(now)
        .saturating_add(max_age_secs)
        .saturating_add(MAX_CLOCK_AHEAD_SECS);
    let inserted = conn.execute(
        "INSERT INTO dpop_proofs (proof_hash, expires_at) VALUES (?1, ?2)
         ON CONFLICT (proof_hash) DO NOTHING",
        params![digest, expires_at],
    )?;
    Ok(inserted == 1)
}

/// `scheme://authority/path` of a URL, lowercased where URLs are case-insensitive,
/// without default port, query or fragment (RFC 9449 §4.3 point 9, RFC 3986 §6.2).
pub fn normalize_htu(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    let path = if path.is_empty() { "/" } else { path };
    Some(format!("{scheme}://{authority}{path}"))
}

/// A P-256 public key from a JWK, with its RFC 7638 thumbprint.
struct PublicKey {
    verifying_key: p256::ecdsa::VerifyingKey,
    thumbprint: String,
}

impl PublicKey {
    fn from_jwk(jwk: &Map<String, Value>) -> Option<PublicKey> {
        let member = |name: &str| jwk.get(name).and_then(Value::as_str);
        if member("kty")? != "EC" || member("crv")? != "P-256" {
            return None;
        }
        let (x, y) = (member("x")?, member("y")?);
        let x_bytes = URL_SAFE_NO_PAD.decode(x).ok()?;
        let y_bytes = URL_SAFE_NO_PAD.decode(y).ok()?;
        if x_bytes.len() != 32 || y_bytes.len() != 32 {
            return None;
        }
        let mut sec1 = Vec::with_capacity(65);
        sec1.push(0x04);
        sec1.extend_from_slice(&x_bytes);
        sec1.extend_from_slice(&y_bytes);
        let verifying_key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).ok()?;
        // RFC 7638 §3.2: the required members only, in lexical order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        Some(PublicKey {
            verifying_key,
            thumbprint: URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())),
        })
    }
}

fn decode_json<T: for<'de> Deserialize<'de>>(segment: &str) -> Option<T> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).ok()?).ok()
}

/// Server nonces (RFC 9449 §8), stateless: a nonce names a time slot and carries an
/// HMAC of it under a key kept in the database, so every instance of the service
/// accepts it. It is valid during its slot and the next one, then rotates.
pub struct Nonces {
    key: [u8; 32],
    slot_secs: i64,
}

impl Nonces {
    pub fn new(key: [u8; 32], slot_secs: i64) -> Nonces {
        Nonces {
            key,
            slot_secs: slot_secs.max(1),
        }
    }

    /// The nonce to hand out at `now`.
    pub fn issue(&self, now: i64) -> String {
        self.for_slot(now.div_euclid(self.slot_secs))
    }

    fn is_current(&self, nonce: &str, now: i64) -> bool {
        let slot = now.div_euclid(self.slot_secs);
        [slot, slot - 1].into_iter().any(|slot| {
            let expected = self.for_slot(slot);
            expected.len() == nonce.len()
                && expected
                    .bytes()
                    .zip(nonce.bytes())
                    .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                    == 0
        })
    }

    fn for_slot(&self, slot: i64) -> String {
        let tag = hmac_sha256::HMAC::mac(slot.to_be_bytes(), self.key);
        format!("{slot}.{}", URL_SAFE_NO_PAD.encode(tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htu_normalisation() {
        assert_eq!(
            normalize_htu("HTTPS://Auth.Example:443/token?x=1#f").as_deref(),
            Some("https://auth.example/token")
        );
        assert_eq!(
            normalize_htu("http://127.0.0.1:8080/token").as_deref(),
            Some("http://127.0.0.1:8080/token")
        );
        assert_eq!(normalize_htu("http://h:80").as_deref(), Some("http://h/"));
        for bad in ["/token", "ftp://h/token", "https:///token", "https://u@h/t"] {
            assert_eq!(normalize_htu(bad), None, "{bad}");
        }
    }

    #[test]
    fn nonces_rotate_after_two_slots() {
        let nonces = Nonces::new([7; 32], 60);
        let nonce = nonces.issue(1_000);
        assert!(nonces.is_current(&nonce, 1_000));
        assert!(
            nonces.is_current(&nonce, 1_079),
            "the next slot still accepts it"
        );
        assert!(!nonces.is_current(&nonce, 1_080));
        assert!(!Nonces::new([8; 32], 60).is_current(&nonce, 1_000));
        assert!(!nonces.is_current("16.AAAA", 1_000));
    }

    #[test]
    fn thumbprint_matches_rfc_9449_example() {
        // The proof key of RFC 9449 §4.2 and its `jkt` from §6.1.
        let jwk: Map<String, Value> = serde_json::from_str(
            r#"{"kty":"EC","crv":"P-256",
                "x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
                "y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA"}"#,
        )
        .expect("jwk");
        let key = PublicKey::from_jwk(&jwk).expect("P-256 key");
        assert_eq!(
            key.thumbprint,
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
        );
        let mut off_curve = jwk.clone();
        off_curve.insert("y".into(), Value::from(URL_SAFE_NO_PAD.encode([1u8; 32])));
        assert!(PublicKey::from_jwk(&off_curve).is_none());
    }
}
