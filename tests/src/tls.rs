//! The sample stack over HTTPS: a fresh sample PKI for each Envoy (the same
//! certificates `make run` makes, from `src/sample-ca`), and HTTPS clients
//! with or without a client certificate.

use std::sync::Arc;
use std::time::Duration;
use tollgate_sample_ca::{write_sample, DemoClient, Issued, SampleCa};
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};

/// The sample CA's files (`ca.pem`, `server.pem`/`.key`, the demo clients) in a
/// directory of their own, and a client certificate from a CA nobody trusts.
pub struct SamplePki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    clients: Vec<(&'static DemoClient, Issued)>,
    /// Names like a partner's, from another CA: the listener refuses it at the handshake.
    pub stranger: Issued,
}

impl SamplePki {
    pub fn generate() -> SamplePki {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-tls-")
            .tempdir()
            .expect("a temporary directory");
        let clients = write_sample(dir.path()).expect("the sample certificates");
        let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).expect("ca.pem");
        let stranger = SampleCa::new("Somebody else's CA")
            .and_then(|ca| ca.demo_client(&tollgate_sample_ca::DEMO_CLIENTS[0]))
            .expect("a stranger's certificate");
        SamplePki {
            dir,
            ca_pem,
            clients,
            stranger,
        }
    }

    /// A demo client's certificate by file name (`partner-acme`, `partner-globex`,
    /// `contractor-initech`).
    pub fn client(&self, file: &str) -> &Issued {
        self.clients
            .iter()
            .find(|(c, _)| c.file == file)
            .map(|(_, issued)| issued)
            .unwrap_or_else(|| panic!("no demo client `{file}`"))
    }

    /// An HTTPS client that trusts the sample CA and presents `cert`, if any.
    /// 4xx and 5xx are answers, not errors.
    pub fn agent(&self, cert: Option<&Issued>) -> ureq::Agent {
        let ca = Certificate::from_pem(self.ca_pem.as_bytes()).expect("the CA certificate");
        let client_cert = cert.map(|c| {
            let chain = Certificate::from_pem(c.cert_pem.as_bytes()).expect("a certificate");
            let key = PrivateKey::from_pem(c.key_pem.as_bytes()).expect("a private key");
            ClientCert::new_with_certs(&[chain], key)
        });
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::Specific(Arc::new(vec![ca])))
            .client_cert(client_cert)
            .build();
        ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into()
    }
}
