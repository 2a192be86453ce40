//! The whole sample stack for end-to-end tests: sample API, token service and
//! Envoy with Tollgate, on free loopback ports, plus a test issuer whose
//! private keys the tests hold (to mint tokens the token service never would:
//! expired, future `nbf`, wrong audience, …).

use super::envoy::{Envoy, EnvoyConfig, StackPorts};
use super::process::ChildProcess;
use super::token_service::{TokenService, TokenServiceBuilder};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

pub const TEST_ISSUER: &str = "https://test-issuer.tollgate.local";
pub const AUDIENCE: &str = "tollgate-sample-api";

pub fn start_sample_api(port: u16) -> ChildProcess {
    let mut command = Command::new(super::artifacts::sample_api_binary());
    command.args(["--listen", &format!("127.0.0.1:{port}")]);
    let mut process = ChildProcess::spawn("sample-api", command).expect("spawning sample-api");
    process
        .wait_for_http(
            &format!("http://127.0.0.1:{port}/healthz"),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("sample-api did not start: {e}"));
    process
}

/// Keys of the test issuer, one per family Tollgate supports.
pub struct TestKeys {
    pub es256: ES256KeyPair,
    pub rs256: RS256KeyPair,
    pub ps256: PS256KeyPair,
    pub eddsa: Ed25519KeyPair,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl TestKeys {
    pub fn generate() -> TestKeys {
        TestKeys {
            es256: ES256KeyPair::generate().with_key_id("test-es256"),
            rs256: RS256KeyPair::generate(2048)
                .unwrap()
                .with_key_id("test-rs256"),
            ps256: PS256KeyPair::generate(2048)
                .unwrap()
                .with_key_id("test-ps256"),
            eddsa: Ed25519KeyPair::generate().with_key_id("test-eddsa"),
        }
    }

    pub fn jwks(&self) -> Value {
        let point = self.es256.public_key().public_key().to_bytes_uncompressed();
        let rsa = self.rs256.public_key().to_components();
        let pss = self.ps256.public_key().to_components();
        json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "test-es256", "alg": "ES256",
             "x": b64(&point[1..33]), "y": b64(&point[33..65])},
            {"kty": "RSA", "kid": "test-rs256", "alg": "RS256", "n": b64(&rsa.n), "e": b64(&rsa.e)},
            {"kty": "RSA", "kid": "test-ps256", "alg": "PS256", "n": b64(&pss.n), "e": b64(&pss.e)},
            {"kty": "OKP", "crv": "Ed25519", "kid": "test-eddsa", "alg": "EdDSA",
             "x": b64(&self.eddsa.public_key().to_bytes())},
        ]})
    }
}

/// Claims for a test token: sensible defaults, overridden by `extra`
/// (a `null` value removes the claim).
pub fn claims(issuer: &str, extra: Value) -> JWTClaims<serde_json::Map<String, Value>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut c = json!({
        "iss": issuer, "aud": AUDIENCE, "sub": "test-user", "client_id": "test-client",
        "scope": "read:data", "iat": now, "exp": now + 300, "jti": format!("jti-{now}")
    });
    for (k, v) in extra.as_object().expect("extra claims are an object") {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    serde_json::from_value(c).expect("claims")
}

/// A token with any header and claims and an arbitrary signature: for tokens
/// no library would sign (`alg: none`, garbage).
pub fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

/// A change a test makes to the plugin configuration before Envoy starts.
type PluginConfigEdit = Box<dyn FnOnce(&mut Value)>;
/// A change a test makes to the Envoy bootstrap (filters) before Envoy starts.
type EnvoyConfigEdit = Box<dyn FnOnce(&mut EnvoyConfig)>;

pub struct StackBuilder {
    tokens: TokenServiceBuilder,
    configure: Vec<PluginConfigEdit>,
    envoy_edits: Vec<EnvoyConfigEdit>,
    concurrency: u32,
    start_token_service: bool,
    hcm_safeguards: bool,
}

pub struct Stack {
    pub envoy: Envoy,
    pub tokens: TokenService,
    pub keys: TestKeys,
    pub ports: StackPorts,
    _api: ChildProcess,
}

impl Stack {
    /// The sample stack with two clients (`mobile-app`: read:data write:data,
    /// `reader`: read:data) and the test issuer added as provider `test`.
    pub fn builder() -> StackBuilder {
        StackBuilder {
            tokens: TokenService::builder()
                .client("mobile-app", "read:data write:data")
                .client("reader", "read:data")
                .client("operator", "read:data admin"),
            configure: Vec::new(),
            envoy_edits: Vec::new(),
            concurrency: 2,
            start_token_service: true,
            hcm_safeguards: true,
        }
    }

    pub fn start() -> Stack {
        Stack::builder().start()
    }

    pub fn token(&self, client: &str, scope: Option<&str>) -> String {
        self.tokens
            .client_credentials_token(client, self.tokens.secret(client), scope)
    }
}

impl StackBuilder {
    /// Changes the token service's settings (add public clients, users, flags).
    pub fn token_service(
        mut self,
        f: impl FnOnce(TokenServiceBuilder) -> TokenServiceBuilder,
    ) -> Self {
        self.tokens = f(self.tokens);
        self
    }

    /// Changes the plugin configuration before Envoy starts.
    pub fn plugin_config(mut self, f: impl FnOnce(&mut Value) + 'static) -> Self {
        self.configure.push(Box::new(f));
        self
    }

    /// Changes the Envoy bootstrap before Envoy starts (e.g. a filter before
    /// Tollgate, as `support::geoip::add_geoip` adds).
    pub fn envoy_config(mut self, f: impl FnOnce(&mut EnvoyConfig) + 'static) -> Self {
        self.envoy_edits.push(Box::new(f));
        self
    }

    /// Starts Envoy while the token service is still down (its port reserved).
    pub fn token_service_down(mut self) -> Self {
        self.start_token_service = false;
        self
    }

    /// Runs Envoy without the connection manager's path normalisation and
    /// underscore refusal ([`EnvoyConfig::without_hcm_safeguards`]).
    pub fn without_hcm_safeguards(mut self) -> Self {
        self.hcm_safeguards = false;
        self
    }

    pub fn start(self) -> Stack {
        let ports = StackPorts::free();
        let keys = TestKeys::generate();
        let api = start_sample_api(ports.sample_api);
        let mut tokens = self
            .tokens
            .port(ports.token_service)
            .issuer(&ports.issuer())
            .create();
        if self.start_token_service {
            tokens.start();
        }
        let mut config = EnvoyConfig::sample(ports);
        let mut plugin = config.plugin_config();
        plugin["providers"]["test"] = json!({
            "issuer": TEST_ISSUER,
            "audiences": [AUDIENCE],
            "local_jwks": {"inline_string": keys.jwks().to_string()},
        });
        for f in self.configure {
            f(&mut plugin);
        }
        config.set_plugin_config(&plugin);
        for f in self.envoy_edits {
            f(&mut config);
        }
        if !self.hcm_safeguards {
            config.without_hcm_safeguards();
        }
        let envoy = Envoy::try_start(&config, self.concurrency)
            .unwrap_or_else(|log| panic!("Envoy did not start:\n{log}"));
        if self.start_token_service {
            // Envoy is ready before the first fetches land (documented 503 window).
            let mut wanted = vec!["signing key(s) for provider `tollgate`"];
            if plugin["providers"]["tollgate"]
                .get("revocation_feed")
                .is_some()
            {
                wanted.push("loaded revocation list for provider `tollgate`");
            }
            if plugin.pointer("/api_keys/remote_key_set").is_some() {
                wanted.push("loaded API key set");
            }
            for line in wanted {
                assert!(
                    envoy.wait_for_log(line, Duration::from_secs(10)),
                    "never logged `{line}`:\n{}",
                    envoy.log()
                );
            }
            // Only the worker that fetched logs; the others pick the documents up on
            // their next tick (every 200 ms while loading). Until then a public route
            // treats a good token as no token (a cold CI run saw `anonymous`).
            std::thread::sleep(Duration::from_millis(450));
        }
        Stack {
            envoy,
            tokens,
            keys,
            ports,
            _api: api,
        }
    }
}
