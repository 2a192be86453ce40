//! The fleet sample for end-to-end tests: one Redis, one rate-limit backend, the
//! sample API and N Envoys running `envoy/fleet/envoy.yaml`, each on its own ports.
//! Tollgate's remote policy `fleet-per-client` asks the backend (or, with
//! [`FleetBuilder::native`], Envoy's native `ratelimit` filter after Tollgate does).
//! Tokens come from the stack's test issuer, whose keys the tests hold.

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
/// The remote policy every fleet applies (unless native): one counter per client id.
pub const FLEET_POLICY: &str = "fleet-per-client";

/// The native path (the phase-1 sample): Envoy's `ratelimit` filter after Tollgate,
/// the descriptor built from the identity header Tollgate set, its 429 given a JSON
/// body by a `local_reply_config` mapper.
const NATIVE_FILTER: &str = r#"          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: tollgate
              failure_mode_deny: false
              timeout: 0.25s
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              enable_retry_after_header: true
              rate_limit_service:
                transport_api_version: V3
                grpc_service:
                  envoy_grpc: { cluster_name: rate_limit_service }
"#;
const NATIVE_ROUTE_LIMITS: &str = r#"                  cluster: sample_api
                  rate_limits:
                  - actions:
                    - generic_key: { descriptor_key: policy, descriptor_value: fleet-per-client }
                    - request_headers: { header_name: x-tollgate-client-id, descriptor_key: client_id }
"#;
const NATIVE_LOCAL_REPLY: &str = r#"          path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT
          local_reply_config:
            mappers:
            - filter:
                response_flag_filter: { flags: [RL] }
              headers_to_add:
              - header: { key: cache-control, value: no-store }
                append_action: OVERWRITE_IF_EXISTS_OR_ADD
              body_format_override:
                json_format:
                  error: rate_limited
                  error_description: "fleet-wide rate limit exceeded"
"#;

type ConfigEdit = Box<dyn Fn(&mut EnvoyConfig)>;
type PluginEdit = Box<dyn FnOnce(&mut Value)>;

pub struct FleetBuilder {
    backend: RlsBackendBuilder,
    envoys: usize,
    local_limits: Option<Value>,
    native: bool,
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
            native: false,
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

    /// The fleet-wide limit on the native path instead: no remote policy in
    /// Tollgate; Envoy's `ratelimit` filter after it asks the backend.
    pub fn native(mut self) -> Self {
        self.native = true;
        self
    }

    /// Changes the plugin configuration (the test issuer as provider `test`, one
    /// rule for every path requiring read:data, and unless native the remote
    /// policy [`FLEET_POLICY`] at `rate_limits.policies`, failing open with a
    /// 0.25 s timeout), after `local_limits`.
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
        let mut rate_limits = self.local_limits.clone().unwrap_or(json!({"policies": {}}));
        let mut names: Vec<String> = rate_limits["policies"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        if !self.native {
            rate_limits["policies"][FLEET_POLICY] = json!({
                "key": "client_id",
                "backend": {"rls": {"cluster": "rate_limit_service", "domain": DOMAIN,
                                    "timeout": "0.25s"}},
            });
            names.push(FLEET_POLICY.to_string());
        }
        if !names.is_empty() {
            plugin["rules"][0]["rate_limits"] = json!(names);
            plugin["rate_limits"] = rate_limits;
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
                if self.native {
                    native_ratelimit(&mut config);
                }
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

/// Adds the cluster `rate_limit_service` (HTTP/2 to the backend's gRPC port) to a
/// bootstrap that lacks it, such as the sample stack's.
pub fn add_rls_cluster(config: &mut EnvoyConfig, grpc_port: u16) {
    let cluster = format!(
        "  clusters:
  - name: rate_limit_service
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: rate_limit_service
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {grpc_port} }}
"
    );
    config.replace("  clusters:\n", &cluster);
}

/// Puts Envoy's `ratelimit` filter after Tollgate, with the route's descriptor.
fn native_ratelimit(config: &mut EnvoyConfig) {
    let router = "          - name: envoy.filters.http.router\n";
    for (anchor, with) in [
        (router, format!("{NATIVE_FILTER}{router}")),
        (
            "                  cluster: sample_api\n",
            NATIVE_ROUTE_LIMITS.to_string(),
        ),
        (
            "          path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT\n",
            NATIVE_LOCAL_REPLY.to_string(),
        ),
    ] {
        assert_eq!(
            config.yaml().matches(anchor).count(),
            1,
            "{anchor:?} in {FLEET_SAMPLE}"
        );
        config.replace(anchor, &with);
    }
}
