//! Runs the rate-limit backend (`tollgate-rls-backend`: Envoy's RLS v3 over
//! Limitador, counters in a [`Redis`]) on free loopback ports, and reads its own
//! counters: what it answered (`/stats`) and what Limitador counts (`/counters`).

use super::process::{free_port, ChildProcess};
use super::redis::Redis;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

pub struct RlsBackendBuilder {
    limits: String,
    delay: Duration,
    rate_limit_headers: bool,
}

pub struct RlsBackend {
    pub process: ChildProcess,
    /// The RLS gRPC port (Envoy's rate-limit cluster points here).
    pub grpc_port: u16,
    pub admin_port: u16,
    _limits: tempfile::NamedTempFile,
}

impl RlsBackend {
    /// A backend with `limits` in Limitador's format (YAML or JSON).
    pub fn builder(limits: &str) -> RlsBackendBuilder {
        RlsBackendBuilder {
            limits: limits.to_owned(),
            delay: Duration::ZERO,
            rate_limit_headers: false,
        }
    }

    /// Calls answered so far: `{"calls", "ok", "over_limit", "errors"}`.
    pub fn stats(&self) -> Value {
        self.admin_json("/stats")
    }

    /// Limitador's live counters of `namespace` (the RLS domain).
    pub fn counters(&self, namespace: &str) -> Value {
        self.admin_json(&format!("/counters/{namespace}"))
    }

    fn admin_json(&self, path: &str) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        let mut response = super::http_agent()
            .get(&url)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let body = response.body_mut().read_to_string().unwrap_or_default();
        assert_eq!(response.status(), 200, "GET {url}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
    }

    /// Stops the backend (SIGTERM): Envoy's calls then fail to connect.
    pub fn stop(&mut self) {
        let _ = self.process.terminate(Duration::from_secs(5));
    }
}

impl RlsBackendBuilder {
    /// Waits this long before every answer (a slow backend).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Also answer with Limitador's X-RateLimit-* headers in response_headers_to_add.
    pub fn rate_limit_headers(mut self) -> Self {
        self.rate_limit_headers = true;
        self
    }

    /// Starts the backend against `redis` and waits until it is ready; retries on
    /// other ports if the ones picked were taken meanwhile.
    pub fn start(self, redis: &Redis) -> RlsBackend {
        let limits = tempfile::Builder::new()
            .prefix("limits-")
            .suffix(".yaml")
            .tempfile()
            .expect("creating the limits file");
        std::fs::write(limits.path(), &self.limits).expect("writing the limits file");
        let mut last = String::new();
        for _ in 0..3 {
            let (grpc_port, admin_port) = (free_port(), free_port());
            let mut command = Command::new(super::artifacts::rls_backend_binary());
            command
                .arg("--limits")
                .arg(limits.path())
                .args(["--redis", &redis.url()])
                .args(["--listen", &format!("127.0.0.1:{grpc_port}")])
                .args(["--admin", &format!("127.0.0.1:{admin_port}")])
                .args(["--delay-ms", &self.delay.as_millis().to_string()]);
            if self.rate_limit_headers {
                command.args(["--rate-limit-headers", "draft-version-03"]);
            }
            let mut process =
                ChildProcess::spawn("rls-backend", command).expect("spawning the RLS backend");
            let ready = format!("http://127.0.0.1:{admin_port}/healthz");
            match process.wait_for_http(&ready, Duration::from_secs(30)) {
                Ok(()) => {
                    return RlsBackend {
                        process,
                        grpc_port,
                        admin_port,
                        _limits: limits,
                    }
                }
                Err(err) => last = err,
            }
        }
        panic!("the RLS backend did not start:\n{last}")
    }
}
