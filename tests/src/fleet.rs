//! The fleet sample for end-to-end tests: one Redis, one rate-limit backend, the
//! sample API and N Envoys running `envoy/fleet/envoy.yaml` (Tollgate, then Envoy's
//! native `ratelimit` filter calling the backend), each on its own ports. Tokens
//! come from the stack's test issuer, whose keys the tests hold.

use super::envoy::{Envoy, EnvoyConfig, StackPorts};
use super::process::{free_port, ChildProcess};
use super::redis::Redis;
use super::rls::{RlsBackend, RlsBackendBuilder};
use super::stack::{claims, start_sample_api, TestKeys, AUDIENCE, TEST_ISSUER};
use jwt_simple::prelude::*;
use serde_json::{json, Value};

pub const FLEET_SAMPLE: &str = "envoy/fleet/envoy.yaml";
/// The RLS domain of the fleet sample (Limitador's namespace).
pub const DOMAIN: &str = "tollgate";
/// The RLS cluster's port in the fleet sample.
const SAMPLE_RLS_PORT: &str = "port_value: 8181";

type ConfigEdit = Box<dyn Fn(&mut EnvoyConfig)>;
type PluginEdit = Box<dyn FnOnce(&mut Value)>;

pub struct FleetBuilder {
    backend: RlsBackendBuilder,
    envoys: usize,
    local_limits: Option<Value>,
    edits: Vec<ConfigEdit>,
    plugin_edits: Vec<PluginEdit>,
}

pub struct Fleet {
    pub envoys: Vec<Envoy>,
    pub backend: RlsBackend,
    pub keys: TestKeys,
    pub redis: Redis,
    _api: ChildProcess,
}

impl Fleet {
    /// `envoys` gateways sharing a backend with `limits` (Limitador's format).
    pub fn builder(limits: &str, envoys: usize) -> FleetBuilder {
        FleetBuilder {
            backend: RlsBackend::builder(limits),
            envoys,
            local_limits: None,
            edits: Vec::new(),
            plugin_edits: Vec::new(),
        }
    }

    /// A token of the test issuer for `client` (as `client_id` and `sub`) with read:data.
    pub fn token(&self, client: &str) -> String {
        let c = claims(TEST_ISSUER, json!({"client_id": client, "sub": client}));
        self.keys.es256.sign(c).expect("signing a test token")
    }
}

impl FleetBuilder {
    /// Changes the backend (a delay, rate-limit headers).
    pub fn backend(mut self, f: impl FnOnce(RlsBackendBuilder) -> RlsBackendBuilder) -> Self {
        self.backend = f(self.backend);
        self
    }

    /// Tollgate's own (local) `rate_limits` section; its policies apply to every
    /// request, before the fleet-wide limit.
    pub fn local_limits(mut self, rate_limits: Value) -> Self {
        self.local_limits = Some(rate_limits);
        self
    }

    /// Changes the plugin configuration (the test issuer as provider `test`, one
    /// rule for every path requiring read:data), after `local_limits`.
    pub fn plugin_config(mut self, f: impl FnOnce(&mut Value) + 'static) -> Self {
        self.plugin_edits.push(Box::new(f));
        self
    }

    /// Changes every Envoy's bootstrap (outside the plugin configuration).
    pub fn envoy_config(mut self, f: impl Fn(&mut EnvoyConfig) + 'static) -> Self {
        self.edits.push(Box::new(f));
        self
    }

    pub fn start(self) -> Fleet {
        let redis = Redis::start();
        let backend = self.backend.start(&redis);
        let keys = TestKeys::generate();
        let sample_api = free_port();
        let api = start_sample_api(sample_api);
        let mut plugin = json!({
            "realm": "tollgate-fleet",
            "providers": {"test": {
                "issuer": TEST_ISSUER,
                "audiences": [AUDIENCE],
                "local_jwks": {"inline_string": keys.jwks().to_string()},
            }},
            "rules": [{
                "match": {"prefix": "/"},
                "requires": {"scopes": {"all_of": ["read:data"]}},
            }],
        });
        if let Some(local) = &self.local_limits {
            let names: Vec<&String> = local["policies"]
                .as_object()
                .map(|p| p.keys().collect())
                .unwrap_or_default();
            plugin["rules"][0]["rate_limits"] = json!(names);
            plugin["rate_limits"] = local.clone();
        }
        for edit in self.plugin_edits {
            edit(&mut plugin);
        }
        let envoys = (0..self.envoys)
            .map(|_| {
                let ports = StackPorts {
                    sample_api,
                    ..StackPorts::free()
                };
                let mut config = EnvoyConfig::from_file(FLEET_SAMPLE, ports);
                config.replace(
                    SAMPLE_RLS_PORT,
                    &format!("port_value: {}", backend.grpc_port),
                );
                for edit in &self.edits {
                    edit(&mut config);
                }
                config.set_plugin_config(&plugin);
                Envoy::start(&config)
            })
            .collect();
        Fleet {
            envoys,
            backend,
            keys,
            redis,
            _api: api,
        }
    }
}
