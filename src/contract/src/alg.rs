//! JWS algorithms Tollgate accepts, and the one place that maps names to them.
//!
//! `none` is deliberately not representable: a token or a config that names it
//! is rejected before any key is looked at.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// The kind of key an algorithm needs. A key is only ever used with
/// algorithms of its own family, which is what rules out alg confusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl Algorithm {
    pub const ALL: [Algorithm; 12] = [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    /// Parses a JWS `alg` value. Case-sensitive, as RFC 7515 requires.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    pub fn family(self) -> KeyFamily {
        match self {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => KeyFamily::Hmac,
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => KeyFamily::Rsa,
            Algorithm::ES256 => KeyFamily::EcP256,
            Algorithm::ES384 => KeyFamily::EcP384,
            Algorithm::EdDSA => KeyFamily::Ed25519,
        }
    }

    pub fn is_hmac(self) -> bool {
        self.family() == KeyFamily::Hmac
    }

    /// The hash name Envoy's `verify_signature` expects, for the algorithms
    /// BoringSSL can check there (RSA PKCS#1 v1.5 and ECDSA). `None` for the rest.
    pub fn host_hash(self) -> Option<&'static str> {
        match self {
            Algorithm::RS256 | Algorithm::ES256 => Some("sha256"),
            Algorithm::RS384 | Algorithm::ES384 => Some("sha384"),
            Algorithm::RS512 => Some("sha512"),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<String> for Algorithm {
    type Error = String;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        if name.eq_ignore_ascii_case("none") {
            return Err("the `none` algorithm is never accepted".to_string());
        }
        Algorithm::from_name(&name).ok_or_else(|| {
            let known: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
            format!(
                "unknown algorithm `{name}`, expected one of {}",
                known.join(", ")
            )
        })
    }
}

impl<'de> serde::Deserialize<'de> for Algorithm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Algorithm::try_from(name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for alg in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(alg.name()), Some(alg));
        }
    }

    #[test]
    fn none_and_unknown_are_rejected_with_a_reason() {
        assert!(Algorithm::try_from("none".to_string())
            .unwrap_err()
            .contains("never accepted"));
        assert!(Algorithm::try_from("NONE".to_string()).is_err());
        assert!(Algorithm::try_from("HS257".to_string())
            .unwrap_err()
            .contains("unknown algorithm `HS257`"));
        assert_eq!(
            Algorithm::from_name("es256"),
            None,
            "alg names are case-sensitive"
        );
    }

    #[test]
    fn only_rsa_pkcs1_and_ecdsa_go_to_the_host() {
        assert_eq!(Algorithm::ES256.host_hash(), Some("sha256"));
        assert_eq!(Algorithm::RS512.host_hash(), Some("sha512"));
        assert_eq!(Algorithm::PS256.host_hash(), None);
        assert_eq!(Algorithm::EdDSA.host_hash(), None);
        assert_eq!(Algorithm::HS256.host_hash(), None);
    }
}
