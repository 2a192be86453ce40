//! Proof Key for Code Exchange (RFC 7636), `S256` only: `plain` offers no protection
//! against an intercepted authorization request and is refused (RFC 9700 §2.1.1).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// The only `code_challenge_method` accepted.
pub const S256: &str = "S256";

/// A `code_challenge` for S256: BASE64URL(SHA-256(verifier)), 43 characters.
pub fn is_valid_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_'))
}

/// Whether `verifier` is well-formed (RFC 7636 §4.1: 43 to 128 unreserved characters)
/// and hashes to `challenge`. The comparison need not be constant-time: the challenge
/// travelled through the browser and is no secret, and matching it requires a SHA-256
/// preimage.
pub fn verify(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~'));
    well_formed && URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) == challenge
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7636 Appendix B.
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn rfc_7636_example() {
        assert!(is_valid_challenge(CHALLENGE));
        assert!(verify(VERIFIER, CHALLENGE));
    }

    #[test]
    fn rejects_wrong_or_malformed_verifiers_and_challenges() {
        assert!(!verify(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXl",
            CHALLENGE
        ));
        assert!(!verify(CHALLENGE, CHALLENGE));
        assert!(!verify("short", CHALLENGE));
        assert!(!verify(&"a".repeat(129), CHALLENGE));
        assert!(!verify(&format!("{VERIFIER} "), CHALLENGE));
        assert!(!is_valid_challenge(VERIFIER.trim_end_matches('k')));
        assert!(!is_valid_challenge(&CHALLENGE.replace('-', "+")));
    }
}
