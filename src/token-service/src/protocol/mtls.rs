//! Mutual-TLS client authentication and certificate-bound tokens (RFC 8705).
//!
//! TLS ends at Envoy, which forwards the client certificate's details in
//! `x-forwarded-client-cert` (XFCC). The service believes that header only from a
//! peer in `--trusted-proxies`, and only its right-most element: the one the trusted
//! hop wrote about the connection it accepted (Envoy's `SANITIZE_SET` leaves only that
//! one; `APPEND_FORWARD` appends it after whatever the client sent). The binding is
//! `cnf.x5t#S256`: the base64url SHA-256 of the certificate's DER, which Envoy sends
//! as hex in `Hash`.
//!
//! A client registered for `tls_client_auth` (§2.1) names the identity its CA-issued
//! certificate must carry: the subject DN (as Envoy renders it, RFC 2253), a DNS SAN or
//! a URI SAN. One registered for `self_signed_tls_client_auth` (§2.2) names the
//! certificate's SHA-256 thumbprint.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// The header Envoy forwards the client certificate in.
pub const XFCC: &str = "x-forwarded-client-cert";
/// Client authentication methods (RFC 8705 §2.1.1, §2.2.1).
pub const TLS_CLIENT_AUTH: &str = "tls_client_auth";
pub const SELF_SIGNED_TLS_CLIENT_AUTH: &str = "self_signed_tls_client_auth";

/// The client certificate of the connection, as the trusted hop described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    pub sha256: [u8; 32],
    pub subject: Option<String>,
    pub uris: Vec<String>,
    pub dns: Vec<String>,
}

impl ClientCertificate {
    /// The `cnf.x5t#S256` a token bound to this certificate carries.
    pub fn thumbprint(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.sha256)
    }

    /// The right-most element of an XFCC header value; `None` if it is malformed or has
    /// no `Hash`.
    pub fn from_xfcc(value: &str) -> Option<ClientCertificate> {
        let element = split_unquoted(value, ',').into_iter().last()?;
        let mut certificate = ClientCertificate {
            sha256: [0; 32],
            subject: None,
            uris: Vec::new(),
            dns: Vec::new(),
        };
        let mut hash = None;
        for pair in split_unquoted(element, ';') {
            let (key, raw) = pair.split_once('=')?;
            let value = unquote(raw.trim())?;
            match key.trim().to_ascii_lowercase().as_str() {
                "hash" => hash = Some(decode_hex(&value)?),
                "subject" => certificate.subject = Some(value),
                "uri" => certificate.uris.push(value),
                "dns" => certificate.dns.push(value),
                _ => {}
            }
        }
        certificate.sha256 = hash?;
        Some(certificate)
    }
}

/// How a client proves itself with its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsAuth {
    /// `tls_client_auth` with `tls_client_auth_subject_dn`.
    SubjectDn(String),
    /// `tls_client_auth` with `tls_client_auth_san_dns`.
    SanDns(String),
    /// `tls_client_auth` with `tls_client_auth_san_uri`.
    SanUri(String),
    /// `self_signed_tls_client_auth`: the certificate's `x5t#S256`.
    SelfSigned(String),
}

impl TlsAuth {
    /// The registration's stored form: RFC 8705 §2.1.2 metadata name, or `x5t#S256`.
    pub fn parameter(&self) -> (&'static str, &str) {
        match self {
            TlsAuth::SubjectDn(dn) => ("tls_client_auth_subject_dn", dn),
            TlsAuth::SanDns(name) => ("tls_client_auth_san_dns", name),
            TlsAuth::SanUri(uri) => ("tls_client_auth_san_uri", uri),
            TlsAuth::SelfSigned(thumbprint) => ("x5t#S256", thumbprint),
        }
    }

    pub fn from_parameter(name: &str, value: String) -> Option<TlsAuth> {
        Some(match name {
            "tls_client_auth_subject_dn" => TlsAuth::SubjectDn(value),
            "tls_client_auth_san_dns" => TlsAuth::SanDns(value),
            "tls_client_auth_san_uri" => TlsAuth::SanUri(value),
            "x5t#S256" => TlsAuth::SelfSigned(value),
            _ => return None,
        })
    }

    pub fn method(&self) -> &'static str {
        match self {
            TlsAuth::SelfSigned(_) => SELF_SIGNED_TLS_CLIENT_AUTH,
            _ => TLS_CLIENT_AUTH,
        }
    }

    /// Whether `certificate` proves this registration. Exact, case-sensitive matches
    /// (RFC 8705 §2.1.2 leaves DN comparison to the server; exact is the safe choice).
    pub fn matches(&self, certificate: &ClientCertificate) -> bool {
        match self {
            TlsAuth::SubjectDn(dn) => certificate.subject.as_deref() == Some(dn.as_str()),
            TlsAuth::SanDns(name) => certificate.dns.iter().any(|dns| dns == name),
            TlsAuth::SanUri(uri) => certificate.uris.iter().any(|san| san == uri),
            TlsAuth::SelfSigned(thumbprint) => certificate.thumbprint() == *thumbprint,
        }
    }
}

impl fmt::Display for TlsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, value) = self.parameter();
        write!(f, "{} ({name} {value})", self.method())
    }
}

/// A certificate thumbprint for `self_signed_tls_client_auth`: the base64url SHA-256
/// of a PEM certificate's DER, or a thumbprint given as base64url or hex.
pub fn thumbprint_of(input: &str) -> Result<String, String> {
    let input = input.trim();
    if input.contains("-----BEGIN CERTIFICATE-----") {
        let body: String = input
            .lines()
            .skip_while(|line| !line.starts_with("-----BEGIN CERTIFICATE-----"))
            .skip(1)
            .take_while(|line| !line.starts_with("-----END CERTIFICATE-----"))
            .map(str::trim)
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|err| format!("the PEM certificate is not valid base64: {err}"))?;
        use sha2::Digest as _;
        return Ok(URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der)));
    }
    if let Some(bytes) = decode_hex(&input.replace(':', "")) {
        return Ok(URL_SAFE_NO_PAD.encode(bytes));
    }
    match URL_SAFE_NO_PAD.decode(input) {
        Ok(bytes) if bytes.len() == 32 => Ok(input.to_owned()),
        _ => Err(
            "expected a PEM certificate, or its SHA-256 as hex or base64url (43 characters)"
                .to_owned(),
        ),
    }
}

/// Splits on `separator` outside double quotes (XFCC quotes values holding `,;=`).
fn split_unquoted(value: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (at, ch) in value.char_indices() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ if ch == separator && !quoted => {
                parts.push(&value[start..at]);
                start = at + ch.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

fn unquote(value: &str) -> Option<String> {
    let Some(inner) = value.strip_prefix('"') else {
        return Some(value.to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(ch) = chars.next() {
        out.push(if ch == '\\' { chars.next()? } else { ch });
    }
    Some(out)
}

fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "a4b9d9b7b1e4c2f1d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d";

    #[test]
    fn reads_the_right_most_element() {
        let header = format!(
            r#"Hash={};Subject="CN=evil";URI=spiffe://evil,By=spiffe://envoy;Hash={HASH};Subject="CN=partner,O=Example \"Co\"";URI=spiffe://example.org/partner;DNS=partner.example;DNS=alt.example"#,
            "0".repeat(64)
        );
        let certificate = ClientCertificate::from_xfcc(&header).expect("parsed");
        assert_eq!(hex_of(&certificate.sha256), HASH);
        assert_eq!(
            certificate.subject.as_deref(),
            Some(r#"CN=partner,O=Example "Co""#)
        );
        assert_eq!(certificate.uris, ["spiffe://example.org/partner"]);
        assert_eq!(certificate.dns, ["partner.example", "alt.example"]);
        assert!(TlsAuth::SanDns("alt.example".into()).matches(&certificate));
        assert!(!TlsAuth::SubjectDn("CN=evil".into()).matches(&certificate));
        assert!(TlsAuth::SelfSigned(certificate.thumbprint()).matches(&certificate));
    }

    #[test]
    fn malformed_headers_give_nothing() {
        for bad in [
            "",
            "Subject=\"CN=x\"",
            "Hash=abc",
            &format!("Hash=\"{HASH}"),
            &format!("Hash={HASH};novalue"),
        ] {
            assert_eq!(ClientCertificate::from_xfcc(bad), None, "{bad}");
        }
    }

    #[test]
    fn thumbprints_from_hex_base64url_or_pem() {
        let from_hex = thumbprint_of(HASH).expect("hex");
        assert_eq!(from_hex.len(), 43);
        assert_eq!(thumbprint_of(&from_hex).expect("base64url"), from_hex);
        let pem = "-----BEGIN CERTIFICATE-----\nAAEC\nAwQ=\n-----END CERTIFICATE-----\n";
        use sha2::Digest as _;
        assert_eq!(
            thumbprint_of(pem).expect("pem"),
            URL_SAFE_NO_PAD.encode(sha2::Sha256::digest([0, 1, 2, 3, 4]))
        );
        assert!(thumbprint_of("not a thumbprint").is_err());
    }

    fn hex_of(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}
