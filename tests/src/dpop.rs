//! A DPoP key pair (RFC 9449) as a client holds it: makes ES256 proofs for a request,
//! and deliberately broken ones for negative tests.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use rand::RngCore as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

pub struct DpopKey {
    key: SigningKey,
    /// The public JWK (`kty`, `crv`, `x`, `y`).
    pub jwk: Value,
    /// RFC 7638 thumbprint: what `cnf.jkt` and `dpop_jkt` hold.
    pub jkt: String,
}

impl Default for DpopKey {
    fn default() -> DpopKey {
        DpopKey::generate()
    }
}

impl DpopKey {
    pub fn generate() -> DpopKey {
        let key = loop {
            let mut scalar = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut scalar);
            if let Ok(key) = SigningKey::from_slice(&scalar) {
                break key;
            }
        };
        let point = key.verifying_key().to_sec1_point(false);
        let bytes = point.as_bytes();
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&bytes[1..33]),
            URL_SAFE_NO_PAD.encode(&bytes[33..65]),
        );
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        DpopKey {
            key,
            jwk: json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}),
            jkt: URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())),
        }
    }

    /// The usual header: `typ: dpop+jwt`, `alg: ES256`, this key's `jwk`.
    pub fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk})
    }

    /// The usual claims for `htm` `htu` now, with a fresh `jti`.
    pub fn claims(htm: &str, htu: &str) -> Value {
        let mut jti = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut jti);
        json!({"jti": URL_SAFE_NO_PAD.encode(jti), "htm": htm, "htu": htu, "iat": now()})
    }

    /// A valid proof for `htm` `htu`.
    pub fn proof(&self, htm: &str, htu: &str) -> String {
        self.sign(&self.header(), &DpopKey::claims(htm, htu))
    }

    /// A valid proof carrying the server `nonce`.
    pub fn proof_with_nonce(&self, htm: &str, htu: &str, nonce: &str) -> String {
        let mut claims = DpopKey::claims(htm, htu);
        claims["nonce"] = nonce.into();
        self.sign(&self.header(), &claims)
    }

    /// Any header and claims, signed with ES256 under this key.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", encode_json(header), encode_json(claims));
        let signature: Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    /// The private scalar as a JWK `d` member, for proofs that leak it.
    pub fn private_d(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.to_bytes())
    }
}

pub fn encode_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}
