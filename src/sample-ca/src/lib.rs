//! The sample stack's certificate authority. `make run` and the tests make a
//! fresh CA at set-up, with it the HTTPS listener's certificate and the demo
//! clients' certificates; nothing of it is committed, and nothing of it belongs
//! in production (use your own PKI: see the README's "HTTPS and mutual TLS").
//!
//! Everything is ECDSA P-256. Client certificates carry the names the sample
//! configuration's rules check: a SPIFFE ID as URI SAN, a DNS SAN, and a subject.

use anyhow::{Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use time::{Duration, OffsetDateTime};

/// How long the sample certificates are valid: long enough for any demo.
const VALIDITY_DAYS: i64 = 30;

/// A demo client: its file name and the names in its certificate.
pub struct DemoClient {
    /// `<dir>/<file>.pem` and `<dir>/<file>.key`.
    pub file: &'static str,
    pub common_name: &'static str,
    pub organization: &'static str,
    pub uri_san: &'static str,
    pub dns_san: &'static str,
}

/// The demo clients. The sample configuration lets `spiffe://tollgate.local/partner/*`
/// in to `/partner/`; the contractor's certificate is from the same CA but
/// names no partner.
pub const DEMO_CLIENTS: [DemoClient; 3] = [
    DemoClient {
        file: "partner-acme",
        common_name: "acme",
        organization: "Tollgate Partners",
        uri_san: "spiffe://tollgate.local/partner/acme",
        dns_san: "acme.partners.tollgate.local",
    },
    DemoClient {
        file: "partner-globex",
        common_name: "globex",
        organization: "Tollgate Partners",
        uri_san: "spiffe://tollgate.local/partner/globex",
        dns_san: "globex.partners.tollgate.local",
    },
    DemoClient {
        file: "contractor-initech",
        common_name: "initech",
        organization: "Tollgate Contractors",
        uri_san: "spiffe://tollgate.local/contractor/initech",
        dns_san: "initech.contractors.example",
    },
];

/// A certificate and its private key.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Issued {
    /// SHA-256 of the DER certificate: what Envoy shows as
    /// `connection.sha256_peer_certificate_digest`.
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.der).into()
    }

    /// The `cnf.x5t#S256` value a token bound to this certificate carries (RFC 8705 §3.1).
    pub fn x5t_s256(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.sha256())
    }

    /// Writes `<dir>/<name>.pem` and `<dir>/<name>.key` (the key readable by its owner only).
    pub fn write(&self, dir: &Path, name: &str) -> Result<()> {
        write_file(&dir.join(format!("{name}.pem")), &self.cert_pem, 0o644)?;
        write_file(&dir.join(format!("{name}.key")), &self.key_pem, 0o600)
    }
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // Written afresh: a leftover file's mode is not inherited.
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// A certificate authority made on the spot.
pub struct SampleCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl SampleCa {
    pub fn new(name: &str) -> Result<SampleCa> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name_of(name, "Tollgate sample");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(SampleCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (PEM): what Envoy trusts for client certificates and
    /// clients trust for the server.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The HTTPS listener's certificate: `localhost`, 127.0.0.1 and ::1.
    pub fn server(&self) -> Result<Issued> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name_of("localhost", "Tollgate sample");
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress("::1".parse()?),
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate with this subject (`CN=<cn>,O=<organization>`) and SANs.
    pub fn client(
        &self,
        common_name: &str,
        organization: &str,
        uri_san: Option<&str>,
        dns_san: Option<&str>,
    ) -> Result<Issued> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name_of(common_name, organization);
        if let Some(uri) = uri_san {
            params.subject_alt_names.push(SanType::URI(uri.try_into()?));
        }
        if let Some(dns) = dns_san {
            params
                .subject_alt_names
                .push(SanType::DnsName(dns.try_into()?));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    pub fn demo_client(&self, client: &DemoClient) -> Result<Issued> {
        self.client(
            client.common_name,
            client.organization,
            Some(client.uri_san),
            Some(client.dns_san),
        )
    }

    fn issue(&self, mut params: CertificateParams) -> Result<Issued> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        })
    }
}

fn name_of(common_name: &str, organization: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, organization);
    name.push(DnType::CommonName, common_name);
    name
}

fn set_validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(VALIDITY_DAYS);
}

/// The sample set in `dir`: `ca.pem`, `server.pem`/`server.key`, and each demo
/// client's `<file>.pem`/`<file>.key`. Returns the clients' certificates.
pub fn write_sample(dir: &Path) -> Result<Vec<(&'static DemoClient, Issued)>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = SampleCa::new("Tollgate sample CA")?;
    write_file(&dir.join("ca.pem"), ca.cert_pem(), 0o644)?;
    ca.server()?.write(dir, "server")?;
    let mut clients = Vec::with_capacity(DEMO_CLIENTS.len());
    for client in &DEMO_CLIENTS {
        let issued = ca.demo_client(client)?;
        issued.write(dir, client.file)?;
        clients.push((client, issued));
    }
    Ok(clients)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_set_is_written_with_private_keys_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sample-ca-test-{}", std::process::id()));
        let clients = write_sample(&dir).unwrap();
        assert_eq!(clients.len(), DEMO_CLIENTS.len());
        for name in ["ca.pem", "server.pem", "partner-acme.pem"] {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{name}");
        }
        let mode = std::fs::metadata(dir.join("partner-acme.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Each client has its own certificate, so its own thumbprint.
        assert_ne!(clients[0].1.x5t_s256(), clients[1].1.x5t_s256());
        assert_eq!(clients[0].1.x5t_s256().len(), 43);
        // Written again: fresh certificates, same files.
        let again = write_sample(&dir).unwrap();
        assert_ne!(again[0].1.x5t_s256(), clients[0].1.x5t_s256());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
