//! Signature checking, with two interchangeable backends.
//!
//! * [`PureVerifier`]: jwt-simple in pure Rust, inside the wasm VM. Handles
//!   every algorithm.
//! * [`HostVerifier`]: RSA PKCS#1 v1.5 and ECDSA go to Envoy's
//!   `verify_signature` foreign function (BoringSSL, native speed); the rest
//!   (PS*, EdDSA, HS*) falls through to the pure backend.
//!
//! Both see exactly the same inputs and must agree on every token; the e2e
//! suite runs one corpus through both.

use crate::alg::Algorithm;
use crate::config::SignatureBackend;
use crate::decision::Reason;
use crate::host::ForeignFunction;
use crate::jwk::KeySet;
use crate::jwk::{parse_jwks, KeySource, Strictness};
use crate::jwk::{PureKey, VerificationKey};
use crate::jwt::{decode, DecodedToken};
use jwt_simple::prelude::*;
use p256::ecdsa::signature::Verifier as _;

pub trait SignatureVerifier {
    /// True when `token`'s signature was made by `key` with `token.alg`.
    fn verify(&self, token: &DecodedToken<'_>, key: &VerificationKey) -> bool;
}

/// Checks the signature against the keys that may have made it. With a
/// `kid`, only that key is tried; without one, each key of the right family.
pub fn verify_with_keys(
    token: &DecodedToken<'_>,
    keys: &KeySet,
    verifier: &dyn SignatureVerifier,
) -> Result<(), Reason> {
    let mut tried = false;
    for key in keys.candidates(token.alg, token.kid.as_deref()) {
        tried = true;
        if verifier.verify(token, key) {
            return Ok(());
        }
    }
    if tried {
        Err(Reason::BadSignature)
    } else {
        Err(Reason::UnknownKey)
    }
}

pub struct PureVerifier;

impl SignatureVerifier for PureVerifier {
    fn verify(&self, token: &DecodedToken<'_>, key: &VerificationKey) -> bool {
        let Some(pure) = key.pure_key(token.alg) else {
            return false;
        };
        // jwt-simple verifies whole tokens. Claims are judged separately (and
        // identically for both backends) by `DecodedToken::validate_claims`,
        // so its own time checks are neutralised: time is pinned to 0 with no
        // tolerance, which passes any `exp`, and future `iat`/`nbf` are accepted.
        let options = VerificationOptions {
            accept_future: true,
            time_tolerance: None,
            artificial_time: Some(UnixTimeStamp::from_secs(0)),
            max_token_length: None,
            ..Default::default()
        };
        let raw = token.raw;
        let o = Some(options);
        let result = match pure {
            PureKey::HS256(k) => k.verify_token::<NoCustomClaims>(raw, o).map(drop),
            PureKey::HS384(k) => k.verify_token::<NoCustomClaims>(raw, o).map(drop),
            PureKey::HS512(k) => k.verify_token::<NoCustomClaims>(raw, o).map(drop),
            PureKey::RS256(k) => k.verify_token::<NoCustomClaims>(raw, o).map(drop),
            PureKey::RS384(k) => k.verify_token::<NoCustomClaims>(raw, o).map(drop),
            PureKey::RS512(k) => k.verify_token::<NoCustomClaims>(raw, o).map(drop),
            PureKey::PS256(k) => k.verify_token::<NoCustomClaims>(raw, o).map(drop),
            PureKey::PS384(k) => k.verify_token::<NoCustomClaims>(raw, o).map(drop),
            PureKey::PS512(k) => k.verify_token::<NoCustomClaims>(raw, o).map(drop),
            // ECDSA over the signing input: one parse less, and any JWS header.
            PureKey::ES256(k) => {
                return p256::ecdsa::Signature::from_slice(&token.signature).is_ok_and(|sig| {
                    k.public_key()
                        .as_ref()
                        .verify(token.signing_input.as_bytes(), &sig)
                        .is_ok()
                })
            }
            PureKey::ES384(k) => {
                return p384::ecdsa::Signature::from_slice(&token.signature).is_ok_and(|sig| {
                    k.public_key()
                        .as_ref()
                        .verify(token.signing_input.as_bytes(), &sig)
                        .is_ok()
                })
            }
            PureKey::EdDSA(k) => k.verify_token::<NoCustomClaims>(raw, o).map(drop),
        };
        result.is_ok()
    }
}

pub const VERIFY_SIGNATURE: &str = "verify_signature";

pub struct HostVerifier<F: ForeignFunction> {
    pub host: F,
}

impl<F: ForeignFunction> SignatureVerifier for HostVerifier<F> {
    fn verify(&self, token: &DecodedToken<'_>, key: &VerificationKey) -> bool {
        let (Some(hash), Some(spki)) = (token.alg.host_hash(), key.spki_der.as_deref()) else {
            return PureVerifier.verify(token, key);
        };
        if !key.allows(token.alg) {
            return false;
        }
        let signature = match token.alg {
            Algorithm::ES256 => ecdsa_raw_to_der(&token.signature, 32),
            Algorithm::ES384 => ecdsa_raw_to_der(&token.signature, 48),
            _ => Some(token.signature.clone()),
        };
        let Some(signature) = signature else {
            return false;
        };
        let args =
            encode_verify_signature_args(hash, spki, &signature, token.signing_input.as_bytes());
        match self.host.call(VERIFY_SIGNATURE, &args) {
            Ok(reply) => decode_verify_signature_result(&reply),
            Err(err) => {
                log::debug!("verify_signature call failed: {err}");
                false
            }
        }
    }
}

/// Uses the host's `verify_signature` when it is there and agrees with the pure
/// backend on a token signed here and now; otherwise verifies in the VM.
pub fn choose_verifier<F: ForeignFunction + 'static>(
    backend: SignatureBackend,
    host: F,
) -> Box<dyn SignatureVerifier> {
    if backend == SignatureBackend::PureRust {
        log::info!("signatures verified in pure Rust (signature_backend: pure_rust)");
        return Box::new(PureVerifier);
    }
    let host = HostVerifier { host };
    match host_self_test(&host) {
        Ok(()) => {
            log::info!("RS*/ES* signatures verified by Envoy's BoringSSL (verify_signature)");
            Box::new(host)
        }
        Err(why) => {
            log::warn!("host verify_signature unusable ({why}); verifying in pure Rust");
            Box::new(PureVerifier)
        }
    }
}

/// Signs an ES256 token in the VM, then asks the host to verify it and to
/// reject a forgery of it.
fn host_self_test<F: ForeignFunction>(host: &HostVerifier<F>) -> Result<(), String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let key = ES256KeyPair::generate().with_key_id("self-test");
    let token = key
        .sign(Claims::create(jwt_simple::prelude::Duration::from_mins(1)))
        .map_err(|e| e.to_string())?;
    let point = key.public_key().public_key().to_bytes_uncompressed();
    let (x, y) = (
        point.get(1..33).unwrap_or_default(),
        point.get(33..65).unwrap_or_default(),
    );
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "self-test",
        "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)}]});
    let (set, _) = parse_jwks(
        jwks.to_string().as_bytes(),
        KeySource::Remote,
        &[Algorithm::ES256],
        Strictness::Strict,
    )
    .map_err(|e| e.to_string())?;
    let decoded = decode(&token).map_err(|r| r.as_str().to_string())?;
    let key = set.keys.first().ok_or("no self-test key")?;
    if !host.verify(&decoded, key) {
        return Err("it is missing or rejected a valid ES256 signature".to_string());
    }
    let mut forged = decoded.signature.clone();
    if let Some(b) = forged.last_mut() {
        *b ^= 1;
    }
    let tampered = DecodedToken {
        signature: forged,
        ..decoded
    };
    if host.verify(&tampered, key) {
        return Err("accepted a forged ES256 signature".to_string());
    }
    Ok(())
}

/// JWS ECDSA signatures are fixed-width `r || s` (RFC 7518 §3.4); BoringSSL
/// wants an ASN.1 `SEQUENCE { INTEGER r, INTEGER s }`. `None` if the width is wrong.
pub fn ecdsa_raw_to_der(raw: &[u8], width: usize) -> Option<Vec<u8>> {
    if raw.len() != 2 * width {
        return None;
    }
    let integer = |bytes: &[u8]| -> Vec<u8> {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        let trimmed = bytes.get(start..).unwrap_or_default();
        let mut out = Vec::with_capacity(trimmed.len() + 3);
        out.push(0x02);
        let pad = trimmed.first().is_none_or(|b| b & 0x80 != 0);
        out.push((trimmed.len() + usize::from(pad)) as u8);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(trimmed);
        out
    };
    let (r, s) = raw.split_at_checked(width)?;
    let (r, s) = (integer(r), integer(s));
    let len = r.len() + s.len();
    let mut der = Vec::with_capacity(len + 3);
    der.push(0x30);
    if len >= 0x80 {
        der.push(0x81);
    }
    der.push(len as u8);
    der.extend_from_slice(&r);
    der.extend_from_slice(&s);
    Some(der)
}

// The protobuf messages of Envoy's source/extensions/common/wasm/ext/verify_signature.proto.
// Four fields in, two out: written by hand rather than pulling prost and its
// runtime into the .wasm for them.
//   VerifySignatureArguments { string hash_function = 1; bytes public_key = 2;
//                              bytes signature = 3; bytes text = 4; }
//   VerifySignatureResult    { bool result = 1; string error = 2; }

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

pub fn encode_verify_signature_args(
    hash: &str,
    spki_der: &[u8],
    signature: &[u8],
    text: &[u8],
) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(hash.len() + spki_der.len() + signature.len() + text.len() + 16);
    put_bytes_field(&mut out, 1, hash.as_bytes());
    put_bytes_field(&mut out, 2, spki_der);
    put_bytes_field(&mut out, 3, signature);
    put_bytes_field(&mut out, 4, text);
    out
}

/// Reads `VerifySignatureResult.result`; anything unreadable counts as false.
pub fn decode_verify_signature_result(msg: &[u8]) -> bool {
    let mut i = 0;
    let mut result = false;
    let varint = |i: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *msg.get(*i)?;
            *i += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    };
    while i < msg.len() {
        let Some(tag) = varint(&mut i) else {
            return false;
        };
        match (tag >> 3, tag & 7) {
            (1, 0) => match varint(&mut i) {
                Some(v) => result = v != 0,
                None => return false,
            },
            (_, 0) => {
                if varint(&mut i).is_none() {
                    return false;
                }
            }
            (_, 2) => {
                let Some(len) = varint(&mut i) else {
                    return false;
                };
                i = match usize::try_from(len).ok().and_then(|l| i.checked_add(l)) {
                    Some(end) if end <= msg.len() => end,
                    _ => return false,
                };
            }
            _ => return false,
        }
    }
    result
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::jwk::{parse_jwks, KeySource, Strictness};
    use crate::jwt::decode;

    /// Stands in for Envoy's `verify_signature`: decodes the protobuf the way
    /// Envoy does and checks with p256/RSA from jwt-simple's dependency tree,
    /// so the encoding, the DER conversion and the SPKI are all exercised.
    struct FakeEnvoy;

    fn read_fields(mut msg: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let mut fields = vec![];
        let varint = |m: &mut &[u8]| {
            let mut v = 0u64;
            let mut shift = 0;
            loop {
                let b = m[0];
                *m = &m[1..];
                v |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    return v;
                }
            }
        };
        while !msg.is_empty() {
            let tag = varint(&mut msg);
            let len = varint(&mut msg) as usize;
            fields.push((tag >> 3, msg[..len].to_vec()));
            msg = &msg[len..];
        }
        fields
    }

    impl ForeignFunction for FakeEnvoy {
        fn call(&self, name: &str, args: &[u8]) -> Result<Vec<u8>, String> {
            assert_eq!(name, VERIFY_SIGNATURE);
            let f = read_fields(args);
            let hash = String::from_utf8(f[0].1.clone()).unwrap();
            let (spki, sig, text) = (&f[1].1, &f[2].1, &f[3].1);
            let ok = if hash == "sha256" && sig[0] == 0x30 {
                use p256::ecdsa::signature::Verifier;
                use p256::pkcs8::DecodePublicKey;
                let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki).unwrap();
                let sig = p256::ecdsa::Signature::from_der(sig).map_err(|e| e.to_string())?;
                key.verify(text, &sig).is_ok()
            } else {
                let key = RS256PublicKey::from_der(spki).unwrap();
                let tok = format!(
                    "{}.{}",
                    std::str::from_utf8(text).unwrap(),
                    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig)
                );
                key.verify_token::<NoCustomClaims>(&tok, None).is_ok()
            };
            Ok(if ok {
                vec![0x08, 0x01]
            } else {
                vec![0x08, 0x00, 0x12, 0x03, b'b', b'a', b'd']
            })
        }
    }

    fn keyset_for(jwk: serde_json::Value) -> crate::jwk::KeySet {
        let doc = serde_json::json!({ "keys": [jwk] }).to_string();
        parse_jwks(
            doc.as_bytes(),
            KeySource::Local,
            &Algorithm::ALL,
            Strictness::Strict,
        )
        .unwrap()
        .0
    }

    #[test]
    fn der_conversion_handles_high_bits_and_leading_zeros() {
        let mut raw = [0u8; 64];
        raw[0] = 0x80; // r needs a 0x00 pad
        raw[33] = 0x01; // s has a leading zero byte to trim
        let der = ecdsa_raw_to_der(&raw, 32).unwrap();
        let sig = p256::ecdsa::Signature::from_der(&der);
        // The value is not a valid scalar pair for every input, but the framing must parse.
        assert_eq!(der[0], 0x30);
        assert_eq!(&der[2..5], &[0x02, 33, 0x00]);
        drop(sig);
        assert!(ecdsa_raw_to_der(&raw[..63], 32).is_none());
    }

    #[test]
    fn result_decoding_is_total() {
        assert!(decode_verify_signature_result(&[0x08, 0x01]));
        assert!(decode_verify_signature_result(&[0x12, 0x00, 0x08, 0x01]));
        assert!(!decode_verify_signature_result(&[
            0x08, 0x00, 0x12, 0x01, b'x'
        ]));
        assert!(!decode_verify_signature_result(&[]));
        assert!(!decode_verify_signature_result(&[0x08]));
        assert!(!decode_verify_signature_result(&[
            0x12, 0xff, 0xff, 0xff, 0xff, 0x0f
        ]));
        assert!(!decode_verify_signature_result(&[0xff; 12]));
    }

    #[test]
    fn host_and_pure_backends_agree_on_es256_and_rs256() {
        let ec = ES256KeyPair::generate().with_key_id("ec");
        let rsa = RS256KeyPair::generate(2048).unwrap().with_key_id("rsa");
        let claims = || Claims::create(Duration::from_mins(5));
        let cases = [
            (
                keyset_for(crate::jwk::tests::es256_jwk(&ec, "ec")),
                ec.sign(claims()).unwrap(),
            ),
            (
                keyset_for({
                    let c = rsa.public_key().to_components();
                    let e = |b: &[u8]| {
                        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b)
                    };
                    serde_json::json!({"kty":"RSA","kid":"rsa","alg":"RS256","n":e(&c.n),"e":e(&c.e)})
                }),
                rsa.sign(claims()).unwrap(),
            ),
        ];
        let host = HostVerifier { host: FakeEnvoy };
        for (keys, good) in cases {
            let mut bad = good.clone();
            let flip = bad.len() - 5;
            let c = if &bad[flip..flip + 1] == "A" {
                "B"
            } else {
                "A"
            };
            bad.replace_range(flip..flip + 1, c);
            for (raw, expect) in [(good.as_str(), true), (bad.as_str(), false)] {
                let t = decode(raw).unwrap();
                let key = &keys.keys[0];
                assert_eq!(PureVerifier.verify(&t, key), expect);
                assert_eq!(host.verify(&t, key), expect);
            }
        }
    }
}
