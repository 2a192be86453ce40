//! Mints everything `make bench` sends: one ES256, RS256 (2048) and Ed25519
//! key, their JWKS, a warm token, pools of distinct tokens per algorithm, and
//! ES256 tokens with bad signatures.
//!
//! Usage: tollgate-bench-tokens OUT_DIR ISSUER AUDIENCE ES256 RS256 EDDSA INVALID
//! (the last four are pool sizes). Writes OUT_DIR/{jwks.json, warm.txt,
//! es256.txt, rs256.txt, eddsa.txt, invalid.txt, manifest.json}, one token a line.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::*;
use serde_json::json;
use std::io::Write;
use std::path::Path;

const LIFETIME_DAYS: u64 = 30;

#[derive(Serialize, Deserialize)]
struct Extra {
    client_id: String,
    scope: String,
    /// DPoP binding (RFC 9449): the thumbprint of the app's key.
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf: Option<serde_json::Value>,
}

struct Minter {
    issuer: String,
    audience: String,
}

impl Minter {
    /// Claims for token `n` of a pool: a distinct `sub` and `jti`, so every
    /// token is its own cache entry.
    fn claims(&self, pool: &str, n: usize) -> JWTClaims<Extra> {
        let extra = Extra {
            client_id: "bench-client".into(),
            scope: "read:data".into(),
            cnf: None,
        };
        Claims::with_custom_claims(extra, Duration::from_days(LIFETIME_DAYS))
            .with_issuer(&self.issuer)
            .with_audience(&self.audience)
            .with_subject(format!("{pool}-user-{n}"))
            .with_jwt_id(format!("{pool}-{n}"))
    }
}

/// `count` tokens from `sign`, on every core.
fn pool(count: usize, sign: impl Fn(usize) -> String + Sync) -> Vec<String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = count.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|start| {
                let sign = &sign;
                s.spawn(move || {
                    (start..(start + chunk).min(count))
                        .map(sign)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

fn write_lines(dir: &Path, name: &str, lines: &[String]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(name)).unwrap());
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

/// `dpop OUT_DIR ISSUER AUDIENCE HTU COUNT`: a DPoP-bound token and COUNT
/// fresh proofs for it (one per request: each `jti` is single-use), with the
/// issuer's JWKS, written anew for every run (proofs carry `iat`).
fn mint_dpop(args: &[String]) {
    use p256::ecdsa::signature::Signer;
    use sha2::{Digest, Sha256};
    let [out, issuer, audience, htu, count] = args else {
        eprintln!("usage: tollgate-bench-tokens dpop OUT_DIR ISSUER AUDIENCE HTU COUNT");
        std::process::exit(2);
    };
    let count: usize = count.parse().expect("COUNT is a number");
    let dir = Path::new(out);
    std::fs::create_dir_all(dir).unwrap();
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let issuer_key = ES256KeyPair::generate().with_key_id("bench-dpop-issuer");
    let point = issuer_key.public_key().public_key().to_bytes_uncompressed();
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "bench-dpop-issuer", "alg": "ES256",
        "use": "sig", "x": b64(&point[1..33]), "y": b64(&point[33..65])}]});
    std::fs::write(dir.join("dpop_jwks.json"), jwks.to_string()).unwrap();
    let app = ES256KeyPair::generate();
    let app_point = app.public_key().public_key().to_bytes_uncompressed();
    let (x, y) = (b64(&app_point[1..33]), b64(&app_point[33..65]));
    let jkt = b64(&Sha256::digest(
        format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#).as_bytes(),
    ));
    let m = Minter {
        issuer: issuer.clone(),
        audience: audience.clone(),
    };
    let mut claims = m.claims("dpop", 0);
    claims.custom.cnf = Some(json!({"jkt": jkt}));
    let token = issuer_key.sign(claims).unwrap();
    write_lines(dir, "dpop_token.txt", &[token.clone()]);
    let header = b64(json!({"typ": "dpop+jwt", "alg": "ES256",
        "jwk": {"kty": "EC", "crv": "P-256", "x": x, "y": y}}).to_string().as_bytes());
    let ath = b64(&Sha256::digest(token.as_bytes()));
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let proofs = pool(count, |n| {
        let body = json!({"jti": format!("bench-{n}"), "htm": "GET", "htu": htu, "iat": iat, "ath": ath});
        let input = format!("{header}.{}", b64(body.to_string().as_bytes()));
        let sig: p256::ecdsa::Signature = app.key_pair().as_ref().sign(input.as_bytes());
        format!("{input}.{}", b64(&sig.to_bytes()))
    });
    write_lines(dir, "dpop_proofs.txt", &proofs);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("dpop") {
        return mint_dpop(&args[1..]);
    }
    let [out, issuer, audience, es, rs, ed, bad] = args.as_slice() else {
        eprintln!("usage: tollgate-bench-tokens OUT_DIR ISSUER AUDIENCE ES256 RS256 EDDSA INVALID");
        std::process::exit(2);
    };
    let count = |s: &String| s.parse::<usize>().expect("pool sizes are numbers");
    let dir = Path::new(out);
    std::fs::create_dir_all(dir).unwrap();
    let m = Minter {
        issuer: issuer.clone(),
        audience: audience.clone(),
    };

    let es256 = ES256KeyPair::generate().with_key_id("bench-es256");
    let rs256 = RS256KeyPair::generate(2048)
        .unwrap()
        .with_key_id("bench-rs256");
    let eddsa = Ed25519KeyPair::generate().with_key_id("bench-eddsa");
    // Same kid as the real key, other private key: well-formed, bad signature.
    let forger = ES256KeyPair::generate().with_key_id("bench-es256");

    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let point = es256.public_key().public_key().to_bytes_uncompressed();
    let rsa = rs256.public_key().to_components();
    let jwks = json!({"keys": [
        {"kty": "EC", "crv": "P-256", "kid": "bench-es256", "alg": "ES256", "use": "sig",
         "x": b64(&point[1..33]), "y": b64(&point[33..65])},
        {"kty": "RSA", "kid": "bench-rs256", "alg": "RS256", "use": "sig",
         "n": b64(&rsa.n), "e": b64(&rsa.e)},
        {"kty": "OKP", "crv": "Ed25519", "kid": "bench-eddsa", "alg": "EdDSA", "use": "sig",
         "x": b64(&eddsa.public_key().to_bytes())},
    ]});
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).unwrap();

    let warm = es256.sign(m.claims("warm", 0)).unwrap();
    write_lines(dir, "warm.txt", &[warm]);
    write_lines(
        dir,
        "es256.txt",
        &pool(count(es), |n| es256.sign(m.claims("es256", n)).unwrap()),
    );
    write_lines(
        dir,
        "rs256.txt",
        &pool(count(rs), |n| rs256.sign(m.claims("rs256", n)).unwrap()),
    );
    write_lines(
        dir,
        "eddsa.txt",
        &pool(count(ed), |n| eddsa.sign(m.claims("eddsa", n)).unwrap()),
    );
    write_lines(
        dir,
        "invalid.txt",
        &pool(count(bad), |n| forger.sign(m.claims("forged", n)).unwrap()),
    );

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let manifest = json!({
        "issuer": issuer, "audience": audience,
        "es256": count(es), "rs256": count(rs), "eddsa": count(ed), "invalid": count(bad),
        "expires_at": now + LIFETIME_DAYS * 86_400,
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
}
