//! The client's TLS certificate as the connection presents it, what a rule may
//! require of it, and certificate-bound access tokens (RFC 8705 §3).
//!
//! Envoy exposes the downstream connection's certificate as properties
//! (`connection.mtls`, `connection.sha256_peer_certificate_digest`,
//! `connection.uri_san_peer_certificate`, `connection.dns_san_peer_certificate`,
//! `connection.subject_peer_certificate`). Only the *first* URI and DNS SAN are
//! exposed: a certificate is judged by those, which can refuse a certificate
//! whose allowed name comes second, never admit one that has no allowed name.
//!
//! The filter reads the properties lazily (through [`ClientCertificateSource`]):
//! only a rule that requires a certificate, or a token that is bound to one,
//! costs the host calls.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::fmt;

/// The Envoy properties read, as `connection.<name>` path segments.
pub const PROPERTY_MTLS: &str = "mtls";
pub const PROPERTY_SHA256: &str = "sha256_peer_certificate_digest";
pub const PROPERTY_URI_SAN: &str = "uri_san_peer_certificate";
pub const PROPERTY_DNS_SAN: &str = "dns_san_peer_certificate";
pub const PROPERTY_SUBJECT: &str = "subject_peer_certificate";

/// SHA-256 of the certificate's DER encoding: what `cnf.x5t#S256` holds.
pub type Thumbprint = [u8; 32];

/// What the connection says about a client certificate: whether there is one
/// (the listener validated it against its trusted CA) and its SHA-256. All the
/// binding check needs, from one host call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertificate {
    /// The host does not expose the connection's properties: every check that
    /// needs the certificate fails closed.
    Unknown,
    /// No certificate: plain HTTP, or TLS without a client certificate.
    Absent,
    Present(Thumbprint),
}

/// The names in a certificate, as far as Envoy exposes them: read only for
/// rules that check or forward them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertificateNames {
    /// The first URI SAN (a SPIFFE ID, for example).
    pub uri_san: Option<String>,
    /// The first DNS SAN.
    pub dns_san: Option<String>,
    /// The subject, in RFC 2253 form (`CN=partner,O=Acme`).
    pub subject: Option<String>,
}

/// Where the pipeline gets the connection's client certificate from, when a
/// decision needs it (the filter reads the host's properties on first use).
pub trait ClientCertificateSource: fmt::Debug {
    fn client_certificate(&self) -> ClientCertificate;
    /// The names of the certificate ([`CertificateNames::default`] without one).
    fn names(&self) -> &CertificateNames;
}

/// A certificate read in full, for a request decided away from its connection
/// (a parked request) and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSnapshot {
    pub certificate: ClientCertificate,
    pub names: CertificateNames,
}

impl CertificateSnapshot {
    pub const UNKNOWN: CertificateSnapshot = CertificateSnapshot {
        certificate: ClientCertificate::Unknown,
        names: CertificateNames {
            uri_san: None,
            dns_san: None,
            subject: None,
        },
    };

    pub const ABSENT: CertificateSnapshot = CertificateSnapshot {
        certificate: ClientCertificate::Absent,
        names: CertificateNames {
            uri_san: None,
            dns_san: None,
            subject: None,
        },
    };

    /// Everything `source` knows (its names only if there is a certificate).
    pub fn of(source: &dyn ClientCertificateSource) -> CertificateSnapshot {
        let certificate = source.client_certificate();
        let names = match certificate {
            ClientCertificate::Present(_) => source.names().clone(),
            ClientCertificate::Unknown | ClientCertificate::Absent => CertificateNames::default(),
        };
        CertificateSnapshot { certificate, names }
    }
}

impl ClientCertificateSource for CertificateSnapshot {
    fn client_certificate(&self) -> ClientCertificate {
        self.certificate
    }

    fn names(&self) -> &CertificateNames {
        &self.names
    }
}

impl ClientCertificate {
    /// From the host's `connection.*` properties; `property` returns a
    /// property's raw bytes (see the `PROPERTY_*` names), `None` if the host has none.
    ///
    /// The digest alone says there is a certificate; without one, `mtls` (a
    /// one-byte boolean: was a certificate presented) tells "none" from "the
    /// host does not say". Anything inconsistent (a broken digest, `mtls` true
    /// without a digest) is [`ClientCertificate::Unknown`], never a certificate.
    pub fn from_properties(property: impl Fn(&str) -> Option<Vec<u8>>) -> ClientCertificate {
        if let Some(hex) = property(PROPERTY_SHA256) {
            return parse_hex_digest(&hex).map_or(ClientCertificate::Unknown, |sha256| {
                ClientCertificate::Present(sha256)
            });
        }
        match property(PROPERTY_MTLS).as_deref() {
            Some([0]) => ClientCertificate::Absent,
            _ => ClientCertificate::Unknown,
        }
    }
}

impl CertificateNames {
    /// From the host's `connection.*` properties (see [`ClientCertificate::from_properties`]).
    /// A name that is not UTF-8 counts as absent.
    pub fn from_properties(property: impl Fn(&str) -> Option<Vec<u8>>) -> CertificateNames {
        let text = |name: &str| {
            property(name)
                .and_then(|v| String::from_utf8(v).ok())
                .filter(|v| !v.is_empty())
        };
        CertificateNames {
            uri_san: text(PROPERTY_URI_SAN),
            dns_san: text(PROPERTY_DNS_SAN),
            subject: text(PROPERTY_SUBJECT),
        }
    }
}

/// 64 hex digits (Envoy gives lower case) into 32 bytes.
fn parse_hex_digest(hex: &[u8]) -> Option<Thumbprint> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Lower-case hex, as Envoy and `openssl x509 -fingerprint -sha256` show it.
pub fn hex(thumbprint: &Thumbprint) -> String {
    thumbprint.iter().map(|b| format!("{b:02x}")).collect()
}

/// A token's `cnf.x5t#S256` (RFC 8705 §3.1): the base64url SHA-256 of the
/// certificate the token is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenBinding {
    /// No `cnf.x5t#S256`: a bearer token.
    Unbound,
    Bound(Thumbprint),
    /// A `cnf.x5t#S256` that is not the base64url encoding of 32 bytes: the
    /// token claims a binding no certificate can satisfy.
    Malformed,
}

impl TokenBinding {
    pub fn of(claims: &serde_json::Map<String, serde_json::Value>) -> TokenBinding {
        let Some(x5t) = claims.get("cnf").and_then(|cnf| cnf.get("x5t#S256")) else {
            return TokenBinding::Unbound;
        };
        x5t.as_str()
            .and_then(|text| URL_SAFE_NO_PAD.decode(text).ok())
            .and_then(|bytes| Thumbprint::try_from(bytes).ok())
            .map_or(TokenBinding::Malformed, TokenBinding::Bound)
    }
}

/// What a rule requires of the client certificate (`requires.client_certificate`):
/// one (validated) certificate, and, for each list that is set, a name in it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertificateRequirement {
    /// The first URI SAN matches one of these.
    pub uri_sans: Vec<NamePattern>,
    /// The first DNS SAN matches one of these (compared case-insensitively).
    pub dns_sans: Vec<NamePattern>,
    /// The RFC 2253 subject matches one of these.
    pub subjects: Vec<NamePattern>,
}

impl CertificateRequirement {
    /// Whether the certificate's names satisfy every list that is set.
    pub fn admits(&self, cert: &CertificateNames) -> bool {
        let dns = cert.dns_san.as_deref().map(str::to_ascii_lowercase);
        matches_any(&self.uri_sans, cert.uri_san.as_deref())
            && matches_any(&self.dns_sans, dns.as_deref())
            && matches_any(&self.subjects, cert.subject.as_deref())
    }
}

fn matches_any(patterns: &[NamePattern], name: Option<&str>) -> bool {
    patterns.is_empty() || name.is_some_and(|n| patterns.iter().any(|p| p.matches(n)))
}

/// A name, or a pattern over its components: URIs split at `/`, DNS names at
/// `.`, subjects at `,`. A component that ends in `*` stands for any
/// non-empty rest of one component (`*.partners.example`,
/// `spiffe://example.org/partner/*`, `CN=*,O=Acme`): a `*` never reaches
/// across a `/`, `.` or `,`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    separator: char,
    components: Vec<Component>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Component {
    Literal(String),
    /// The text before the `*`.
    Prefix(String),
}

/// The kinds of name a pattern is for: each splits at its own separator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Uri,
    Dns,
    Subject,
}

impl NamePattern {
    pub fn parse(kind: NameKind, text: &str) -> Result<NamePattern, String> {
        let separator = match kind {
            NameKind::Uri => '/',
            NameKind::Dns => '.',
            NameKind::Subject => ',',
        };
        let text = match kind {
            NameKind::Dns => text.to_ascii_lowercase(),
            NameKind::Uri | NameKind::Subject => text.to_string(),
        };
        if text.is_empty() || text.chars().any(char::is_control) {
            return Err("must be a non-empty name without control characters".into());
        }
        let components = text
            .split(separator)
            .map(|c| match c.strip_suffix('*') {
                Some(prefix) if prefix.contains('*') => Err(()),
                Some(prefix) => Ok(Component::Prefix(prefix.to_string())),
                None if c.contains('*') => Err(()),
                None => Ok(Component::Literal(c.to_string())),
            })
            .collect::<Result<Vec<_>, ()>>()
            .map_err(|()| {
                format!("a `*` may only end a component (a part between `{separator}`s)")
            })?;
        Ok(NamePattern {
            separator,
            components,
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        let mut parts = name.split(self.separator);
        for component in &self.components {
            let Some(part) = parts.next() else {
                return false;
            };
            let fits = match component {
                Component::Literal(l) => part == l,
                Component::Prefix(p) => part.len() > p.len() && part.starts_with(p.as_str()),
            };
            if !fits {
                return false;
            }
        }
        parts.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn props(list: &'static [(&'static str, &'static [u8])]) -> impl Fn(&str) -> Option<Vec<u8>> {
        move |name| {
            list.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_vec())
        }
    }

    const DIGEST: &[u8] = b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn properties_become_a_certificate_or_fail_closed() {
        let read = |list: &'static [(&'static str, &'static [u8])]| {
            (
                ClientCertificate::from_properties(props(list)),
                CertificateNames::from_properties(props(list)),
            )
        };
        let (cert, names) = read(&[
            ("mtls", &[1]),
            ("sha256_peer_certificate_digest", DIGEST),
            ("uri_san_peer_certificate", b"spiffe://example.org/a"),
            ("dns_san_peer_certificate", b"\xff"),
            ("subject_peer_certificate", b"CN=a,O=Acme"),
        ]);
        let ClientCertificate::Present(sha256) = cert else {
            panic!("expected a certificate, got {cert:?}");
        };
        assert_eq!(sha256[..4], [0x00, 0x11, 0x22, 0x33]);
        assert_eq!(hex(&sha256).as_bytes(), DIGEST);
        assert_eq!(names.uri_san.as_deref(), Some("spiffe://example.org/a"));
        assert_eq!(names.dns_san, None, "not UTF-8: absent");
        assert_eq!(names.subject.as_deref(), Some("CN=a,O=Acme"));

        assert_eq!(read(&[("mtls", &[0])]).0, ClientCertificate::Absent);
        // No properties at all, a value that is not a boolean, a certificate
        // without a digest or with a broken one: unknown, never "absent".
        for broken in [
            &[][..],
            &[("mtls", &b"true"[..])],
            &[("mtls", &[1][..])],
            &[
                ("mtls", &[1]),
                ("sha256_peer_certificate_digest", &b"00ff"[..]),
            ],
            &[
                ("mtls", &[0]),
                ("sha256_peer_certificate_digest", &[b'g'; 64][..]),
            ],
        ] {
            let list: &'static [(&'static str, &'static [u8])] = Box::leak(broken.to_vec().into());
            assert_eq!(read(list).0, ClientCertificate::Unknown, "{broken:?}");
        }
    }

    #[test]
    fn token_binding_reads_cnf_x5t_s256() {
        let thumb = [7u8; 32];
        let claims = |v: serde_json::Value| v.as_object().unwrap().clone();
        let bound = claims(json!({"cnf": {"x5t#S256": URL_SAFE_NO_PAD.encode(thumb)}}));
        assert_eq!(TokenBinding::of(&bound), TokenBinding::Bound(thumb));
        assert_eq!(TokenBinding::of(&claims(json!({}))), TokenBinding::Unbound);
        // Another confirmation method (DPoP's jkt) is not a certificate binding.
        assert_eq!(
            TokenBinding::of(&claims(json!({"cnf": {"jkt": "abc"}}))),
            TokenBinding::Unbound
        );
        for broken in [
            json!({"cnf": {"x5t#S256": 5}}),
            json!({"cnf": {"x5t#S256": "not base64url!"}}),
            json!({"cnf": {"x5t#S256": URL_SAFE_NO_PAD.encode([1u8; 20])}}),
            // Standard base64 with padding is not base64url.
            json!({"cnf": {"x5t#S256": base64::engine::general_purpose::STANDARD.encode([0xfbu8; 32])}}),
        ] {
            assert_eq!(
                TokenBinding::of(&claims(broken.clone())),
                TokenBinding::Malformed,
                "{broken}"
            );
        }
    }

    fn cert(uri: Option<&str>, dns: Option<&str>, subject: Option<&str>) -> CertificateNames {
        CertificateNames {
            uri_san: uri.map(str::to_string),
            dns_san: dns.map(str::to_string),
            subject: subject.map(str::to_string),
        }
    }

    #[test]
    fn patterns_stay_within_one_component() {
        let uri = |p: &str| NamePattern::parse(NameKind::Uri, p).unwrap();
        let p = uri("spiffe://example.org/partner/*");
        assert!(p.matches("spiffe://example.org/partner/acme"));
        assert!(!p.matches("spiffe://example.org/partner/"));
        assert!(!p.matches("spiffe://example.org/partner/acme/extra"));
        assert!(!p.matches("spiffe://example.org.evil/partner/acme"));
        assert!(uri("spiffe://example.org/a").matches("spiffe://example.org/a"));
        assert!(!uri("spiffe://example.org/a").matches("spiffe://example.org/ab"));

        let dns = |p: &str| NamePattern::parse(NameKind::Dns, p).unwrap();
        let p = dns("*.Partners.Example");
        assert!(p.matches("acme.partners.example"));
        assert!(!p.matches("a.b.partners.example"));
        assert!(!p.matches("partners.example"));
        assert!(!p.matches("acme.partners.example.evil"));

        let subject = |p: &str| NamePattern::parse(NameKind::Subject, p).unwrap();
        let p = subject("CN=*,O=Acme");
        assert!(p.matches("CN=partner,O=Acme"));
        assert!(!p.matches("CN=,O=Acme"));
        assert!(!p.matches("CN=x,O=Evil,O=Acme"));
        assert!(!p.matches("CN=partner,O=Acme,C=US"));

        for bad in ["a*b", "*a", "", "a\nb", "**"] {
            assert!(NamePattern::parse(NameKind::Uri, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_list_set_must_admit_the_certificate() {
        let any = CertificateRequirement::default();
        assert!(any.admits(&cert(None, None, None)));
        let req = CertificateRequirement {
            uri_sans: vec![NamePattern::parse(NameKind::Uri, "spiffe://td/partner/*").unwrap()],
            dns_sans: vec![
                NamePattern::parse(NameKind::Dns, "a.example").unwrap(),
                NamePattern::parse(NameKind::Dns, "b.example").unwrap(),
            ],
            subjects: Vec::new(),
        };
        assert!(req.admits(&cert(
            Some("spiffe://td/partner/x"),
            Some("B.example"),
            None
        )));
        assert!(!req.admits(&cert(
            Some("spiffe://td/partner/x"),
            Some("c.example"),
            None
        )));
        assert!(!req.admits(&cert(Some("spiffe://td/other/x"), Some("a.example"), None)));
        assert!(!req.admits(&cert(None, Some("a.example"), None)));
    }
}
