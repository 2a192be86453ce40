//! Signing keys: generation, the DER form they are stored in, public JWK export, JWS
//! signing, and verification of the service's own tokens with the public half.
//!
//! jwt-simple (pure Rust) does the cryptography. A key's `kid` is its RFC 7638 JWK
//! thumbprint: derived from the key itself, so it cannot collide by accident and is
//! checked again whenever a key is loaded.

use std::fmt;

use anyhow::{ensure, Context as _};
use clap::ValueEnum;
use jwt_simple::prelude::{
    ECDSAP256KeyPairLike as _, ECDSAP256PublicKeyLike as _, ES256KeyPair, ES256PublicKey,
    Ed25519KeyPair, Ed25519PublicKey, EdDSAKeyPairLike as _, EdDSAPublicKeyLike as _,
    HeaderOptions, JWTClaims, RS256KeyPair, RS256PublicKey, RSAKeyPairLike as _,
    RSAPublicKeyLike as _, VerificationOptions,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// RSA keys are generated at 2048 bits, the RFC 7518 minimum for RS256.
const RSA_MODULUS_BITS: usize = 2048;

/// JWS algorithms the service can sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256: small keys and tokens, widely supported.
    #[value(name = "ES256")]
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys: for verifiers without EC support.
    #[value(name = "RS256")]
    Rs256,
    /// Ed25519.
    #[value(name = "EdDSA")]
    EdDsa,
}

impl Algorithm {
    /// The JWS `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Es256 => "ES256",
            Algorithm::Rs256 => "RS256",
            Algorithm::EdDsa => "EdDSA",
        }
    }

    pub fn from_jws_name(name: &str) -> anyhow::Result<Self> {
        Self::from_str(name, false).map_err(|_| anyhow::anyhow!("unsupported algorithm {name:?}"))
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A private signing key with its `kid`.
pub struct SigningKey {
    kid: String,
    pair: KeyPair,
}

enum KeyPair {
    Es256(ES256KeyPair),
    // Boxed: an RSA key pair is about twice the size of the others.
    Rs256(Box<RS256KeyPair>),
    EdDsa(Ed25519KeyPair),
}

impl SigningKey {
    /// A fresh key; RSA generation takes noticeably longer than the others.
    pub fn generate(alg: Algorithm) -> anyhow::Result<Self> {
        let pair = match alg {
            Algorithm::Es256 => KeyPair::Es256(ES256KeyPair::generate()),
            Algorithm::Rs256 => KeyPair::Rs256(Box::new(
                RS256KeyPair::generate(RSA_MODULUS_BITS).context("generating RSA key")?,
            )),
            Algorithm::EdDsa => KeyPair::EdDsa(Ed25519KeyPair::generate()),
        };
        Ok(Self::with_thumbprint_kid(pair))
    }

    /// Loads a stored key and checks that it still matches its `kid`.
    pub fn from_der(alg: Algorithm, der: &[u8], kid: &str) -> anyhow::Result<Self> {
        let pair = match alg {
            Algorithm::Es256 => KeyPair::Es256(ES256KeyPair::from_der(der)?),
            Algorithm::Rs256 => KeyPair::Rs256(Box::new(RS256KeyPair::from_der(der)?)),
            Algorithm::EdDsa => KeyPair::EdDsa(Ed25519KeyPair::from_der(der)?),
        };
        let key = Self::with_thumbprint_kid(pair);
        ensure!(key.kid == kid, "stored key {kid} does not match its key id");
        Ok(key)
    }

    fn with_thumbprint_kid(pair: KeyPair) -> Self {
        let (kid, pair) = match pair {
            KeyPair::Es256(key) => {
                let kid = key.jwk_thumbprint();
                (kid.clone(), KeyPair::Es256(key.with_key_id(&kid)))
            }
            KeyPair::Rs256(key) => {
                let kid = key.jwk_thumbprint();
                (kid.clone(), KeyPair::Rs256(Box::new(key.with_key_id(&kid))))
            }
            KeyPair::EdDsa(key) => {
                let kid = key.jwk_thumbprint();
                (kid.clone(), KeyPair::EdDsa(key.with_key_id(&kid)))
            }
        };
        Self { kid, pair }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> Algorithm {
        match self.pair {
            KeyPair::Es256(_) => Algorithm::Es256,
            KeyPair::Rs256(_) => Algorithm::Rs256,
            KeyPair::EdDsa(_) => Algorithm::EdDsa,
        }
    }

    /// Private key as DER: PKCS#8 for ES256 and EdDSA, PKCS#1 for RS256.
    pub fn to_der(&self) -> anyhow::Result<Vec<u8>> {
        match &self.pair {
            KeyPair::Es256(key) => key.to_der(),
            KeyPair::Rs256(key) => key.to_der(),
            KeyPair::EdDsa(key) => Ok(key.to_der()),
        }
    }

    /// Public JWK with `kty`, `alg`, `use: "sig"`, `kid` and the key parameters.
    pub fn public_jwk(&self) -> String {
        match &self.pair {
            KeyPair::Es256(key) => key.public_key().to_jwk(),
            KeyPair::Rs256(key) => key.public_key().to_jwk(),
            KeyPair::EdDsa(key) => key.public_key().to_jwk(),
        }
    }

    /// Compact JWS over `claims`; the header carries `alg`, `kid` and the `typ` from `options`.
    pub fn sign<C: Serialize>(
        &self,
        claims: JWTClaims<C>,
        options: &HeaderOptions,
    ) -> anyhow::Result<String> {
        match &self.pair {
            KeyPair::Es256(key) => key.sign_with_options(claims, options),
            KeyPair::Rs256(key) => key.sign_with_options(claims, options),
            KeyPair::EdDsa(key) => key.sign_with_options(claims, options),
        }
    }
}

/// The public half of a signing key, published or not yet expired: checks tokens this
/// service issued (at `/revoke` and `/introspect`).
pub enum VerifyingKey {
    Es256(ES256PublicKey),
    // Boxed: an RSA public key is much larger than the others.
    Rs256(Box<RS256PublicKey>),
    EdDsa(Ed25519PublicKey),
}

impl VerifyingKey {
    /// Parses a public JWK as [`SigningKey::public_jwk`] wrote it.
    pub fn from_jwk(alg: Algorithm, jwk: &str) -> anyhow::Result<Self> {
        Ok(match alg {
            Algorithm::Es256 => VerifyingKey::Es256(ES256PublicKey::from_jwk(jwk)?),
            Algorithm::Rs256 => VerifyingKey::Rs256(Box::new(RS256PublicKey::from_jwk(jwk)?)),
            Algorithm::EdDsa => VerifyingKey::EdDsa(Ed25519PublicKey::from_jwk(jwk)?),
        })
    }

    /// Checks the signature (the header's `alg` must be this key's) and `options`.
    pub fn verify<C: Serialize + DeserializeOwned>(
        &self,
        token: &str,
        options: VerificationOptions,
    ) -> anyhow::Result<JWTClaims<C>> {
        match self {
            VerifyingKey::Es256(key) => key.verify_token(token, Some(options)),
            VerifyingKey::Rs256(key) => key.verify_token(token, Some(options)),
            VerifyingKey::EdDsa(key) => key.verify_token(token, Some(options)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwt_simple::prelude::{Claims, Duration, NoCustomClaims};
    use serde_json::Value;

    #[test]
    fn der_round_trip_keeps_kid_and_public_jwk() {
        for alg in [Algorithm::Es256, Algorithm::EdDsa, Algorithm::Rs256] {
            let key = SigningKey::generate(alg).expect("generate");
            let der = key.to_der().expect("der");
            let loaded = SigningKey::from_der(alg, &der, key.kid()).expect("load");
            assert_eq!(loaded.kid(), key.kid());
            assert_eq!(loaded.alg(), alg);
            assert_eq!(loaded.public_jwk(), key.public_jwk());

            let jwk: Value = serde_json::from_str(&key.public_jwk()).expect("jwk json");
            assert_eq!(jwk["alg"], alg.as_str());
            assert_eq!(jwk["use"], "sig");
            assert_eq!(jwk["kid"], key.kid());
            assert!(
                jwk.get("d").is_none(),
                "public JWK must not carry the private key"
            );
        }
    }

    #[test]
    fn public_jwk_verifies_what_the_key_signs() {
        for alg in [Algorithm::Es256, Algorithm::EdDsa, Algorithm::Rs256] {
            let key = SigningKey::generate(alg).expect("generate");
            let other = SigningKey::generate(alg).expect("generate");
            let claims = Claims::create(Duration::from_secs(60));
            let token = key.sign(claims, &HeaderOptions::default()).expect("sign");
            let verifying = VerifyingKey::from_jwk(alg, &key.public_jwk()).expect("jwk");
            let verified: JWTClaims<NoCustomClaims> = verifying
                .verify(&token, VerificationOptions::default())
                .expect("verifies");
            assert!(verified.expires_at.is_some());
            let stranger = VerifyingKey::from_jwk(alg, &other.public_jwk()).expect("jwk");
            assert!(stranger
                .verify::<NoCustomClaims>(&token, VerificationOptions::default())
                .is_err());
        }
    }

    #[test]
    fn rejects_a_key_stored_under_another_kid() {
        let key = SigningKey::generate(Algorithm::Es256).expect("generate");
        let der = key.to_der().expect("der");
        assert!(SigningKey::from_der(Algorithm::Es256, &der, "not-the-kid").is_err());
    }

    #[test]
    fn algorithm_names_round_trip() {
        for alg in [Algorithm::Es256, Algorithm::Rs256, Algorithm::EdDsa] {
            assert_eq!(Algorithm::from_jws_name(alg.as_str()).expect("parse"), alg);
        }
        assert!(Algorithm::from_jws_name("HS256").is_err());
    }
}
