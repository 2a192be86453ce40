//! Runs real Envoy (from the project's `.venv`) with the Tollgate filter, on the
//! sample configuration `envoy/envoy.yaml` with test ports and, where a test
//! needs it, a changed plugin configuration.
//!
//! The sample file is the single source: tests change ports, the wasm path
//! and the plugin JSON, never routes or filters, so they exercise what users run.

pub use super::artifacts::{envoy_binary, repo_path, wasm_path};
use super::process::{free_port, ChildProcess};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const SAMPLE: &str = "envoy/envoy.yaml";
const SAMPLE_WASM: &str = "target/wasm32-wasip1/release/tollgate.wasm";
const PLUGIN_CONFIG_MARKER: &str = "\"@type\": type.googleapis.com/google.protobuf.StringValue";
/// The sample's access log; each test Envoy writes its own file instead.
const SAMPLE_ACCESS_LOG: &str = "path: .run/access.log";

/// Ports of one sample stack.
#[derive(Debug, Clone, Copy)]
pub struct StackPorts {
    pub listener: u16,
    pub admin: u16,
    pub token_service: u16,
    pub sample_api: u16,
}

impl StackPorts {
    pub fn free() -> StackPorts {
        StackPorts {
            listener: free_port(),
            admin: free_port(),
            token_service: free_port(),
            sample_api: free_port(),
        }
    }

    /// The issuer of the sample config: Envoy's public address.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.listener)
    }
}

/// The sample bootstrap with test ports.
#[derive(Clone)]
pub struct EnvoyConfig {
    yaml: String,
    pub ports: StackPorts,
}

impl EnvoyConfig {
    pub fn sample(ports: StackPorts) -> EnvoyConfig {
        EnvoyConfig::from_file(SAMPLE, ports)
    }

    /// Another bootstrap of the repository laid out like the sample (same ports),
    /// e.g. the fleet sample `envoy/fleet/envoy.yaml`.
    pub fn from_file(path: &str, ports: StackPorts) -> EnvoyConfig {
        let text = std::fs::read_to_string(repo_path(path))
            .unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let yaml = text
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", ports.listener))
            .replace(
                "port_value: 8080",
                &format!("port_value: {}", ports.listener),
            )
            .replace("port_value: 9901", &format!("port_value: {}", ports.admin))
            .replace(
                "port_value: 9000",
                &format!("port_value: {}", ports.token_service),
            )
            .replace(
                "port_value: 9100",
                &format!("port_value: {}", ports.sample_api),
            )
            .replace(SAMPLE_WASM, &wasm_path().display().to_string());
        EnvoyConfig { yaml, ports }
    }

    /// Lines of the plugin configuration's `value: |` block: (start, end) indexes.
    fn plugin_block(&self) -> (usize, usize, usize) {
        let lines: Vec<&str> = self.yaml.lines().collect();
        let marker = lines
            .iter()
            .position(|l| l.contains(PLUGIN_CONFIG_MARKER))
            .expect("plugin configuration in envoy.yaml");
        let value = marker + 1;
        assert!(
            lines[value].trim() == "value: |",
            "expected `value: |` after the @type line"
        );
        let start = value + 1;
        let indent = lines[start].len() - lines[start].trim_start().len();
        let end = (start..lines.len())
            .find(|&i| {
                let l = lines[i];
                !l.trim().is_empty() && l.len() - l.trim_start().len() < indent
            })
            .unwrap_or(lines.len());
        (start, end, indent)
    }

    /// The plugin configuration JSON.
    pub fn plugin_config(&self) -> Value {
        let (start, end, _) = self.plugin_block();
        let json: Vec<&str> = self.yaml.lines().collect::<Vec<_>>()[start..end].to_vec();
        serde_json::from_str(&json.join("\n")).expect("plugin configuration is JSON")
    }

    /// Replaces the plugin configuration with `config` (any text, valid or not).
    pub fn set_plugin_config_text(&mut self, config: &str) {
        let (start, end, indent) = self.plugin_block();
        let pad = " ".repeat(indent);
        let mut lines: Vec<String> = self.yaml.lines().map(str::to_string).collect();
        let replacement: Vec<String> = config.lines().map(|l| format!("{pad}{l}")).collect();
        lines.splice(start..end, replacement);
        self.yaml = lines.join("\n") + "\n";
    }

    pub fn set_plugin_config(&mut self, config: &Value) {
        self.set_plugin_config_text(&serde_json::to_string_pretty(config).unwrap());
    }

    /// Replaces text of the bootstrap outside the plugin configuration, e.g. a
    /// cluster's `port_value`; panics if `from` is not there.
    pub fn replace(&mut self, from: &str, to: &str) {
        assert!(self.yaml.contains(from), "`{from}` not in the Envoy config");
        self.yaml = self.yaml.replace(from, to);
    }

    pub fn yaml(&self) -> &str {
        &self.yaml
    }

    /// Removes the HTTP connection manager settings that clean paths and header
    /// names before Tollgate sees them, to show that Tollgate's safety does not
    /// depend on them.
    pub fn without_hcm_safeguards(&mut self) {
        let lines = self.yaml.lines().count();
        let kept: Vec<&str> = self
            .yaml
            .lines()
            .filter(|l| !HCM_SAFEGUARDS.iter().any(|s| l.trim_start().starts_with(s)))
            .collect();
        assert_eq!(
            lines - kept.len(),
            HCM_SAFEGUARDS.len(),
            "envoy/envoy.yaml no longer sets every one of {HCM_SAFEGUARDS:?}"
        );
        self.yaml = kept.join("\n") + "\n";
    }
}

/// The sample's HTTP connection manager settings that normalise paths and
/// refuse header names with underscores.
const HCM_SAFEGUARDS: [&str; 5] = [
    "normalize_path:",
    "merge_slashes:",
    "path_with_escaped_slashes_action:",
    "common_http_protocol_options:",
    "headers_with_underscores_action:",
];

pub struct Envoy {
    pub process: ChildProcess,
    pub ports: StackPorts,
    _config: tempfile::NamedTempFile,
    access_log: tempfile::NamedTempFile,
}

impl Envoy {
    /// Starts Envoy and waits until it is ready; `Err` carries the log when it
    /// refuses the configuration or does not become ready.
    pub fn try_start(config: &EnvoyConfig, concurrency: u32) -> Result<Envoy, String> {
        let file = tempfile::Builder::new()
            .prefix("envoy-")
            .suffix(".yaml")
            .tempfile()
            .map_err(|e| e.to_string())?;
        let access_log = tempfile::Builder::new()
            .prefix("envoy-access-")
            .suffix(".log")
            .tempfile()
            .map_err(|e| e.to_string())?;
        let yaml = config.yaml().replace(
            SAMPLE_ACCESS_LOG,
            &format!("path: {}", access_log.path().display()),
        );
        std::fs::write(file.path(), yaml).map_err(|e| e.to_string())?;
        let mut command = Command::new(envoy_binary());
        command
            .arg("-c")
            .arg(file.path())
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--disable-hot-restart", "--log-level", "info"])
            .args(["--component-log-level", "wasm:debug"])
            // Access-log lines reach the file at once (Envoy's default is 10 s).
            .args(["--file-flush-interval-msec", "100"]);
        let mut process = ChildProcess::spawn("envoy", command).map_err(|e| e.to_string())?;
        let ready = format!("http://127.0.0.1:{}/ready", config.ports.admin);
        process.wait_for_http(&ready, Duration::from_secs(60))?;
        Ok(Envoy {
            process,
            ports: config.ports,
            _config: file,
            access_log,
        })
    }

    pub fn start(config: &EnvoyConfig) -> Envoy {
        Envoy::try_start(config, 2).unwrap_or_else(|log| panic!("Envoy did not start:\n{log}"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.listener)
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The access log written so far (one JSON object a line).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.access_log.path()).unwrap_or_default()
    }

    /// The access log's lines, parsed.
    pub fn access_log_lines(&self) -> Vec<Value> {
        self.access_log()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Waits until the access log has a line for `request_id` (Envoy writes
    /// it once the response is sent, and flushes its log file every second).
    pub fn access_log_line(&self, request_id: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .access_log_lines()
                .into_iter()
                .filter(|l| l["request_id"] == request_id)
                .collect::<Vec<_>>();
            match found.len() {
                0 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                0 => return None,
                1 => return found.into_iter().next(),
                n => panic!("{n} access log lines for request {request_id}"),
            }
        }
    }

    /// Envoy's stats in Prometheus text format.
    pub fn prometheus(&self) -> String {
        let url = format!("http://127.0.0.1:{}/stats/prometheus", self.ports.admin);
        super::http_agent()
            .get(&url)
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default()
    }

    /// [`Self::stats`] once the filter's counters for the requests made so far
    /// have reached Envoy: it adds them up in the VM and hands them over on
    /// each tick, at least once a second.
    pub fn settled_stats(&self) -> String {
        std::thread::sleep(Duration::from_millis(1_200));
        self.stats()
    }

    /// Envoy's stats, as `name: value` lines.
    pub fn stats(&self) -> String {
        let url = format!("http://127.0.0.1:{}/stats", self.ports.admin);
        super::http_agent()
            .get(&url)
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default()
    }

    /// Waits until Envoy's log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

/// The value of a counter in `/stats` output, matched by name suffix (Envoy
/// lists counters defined by wasm code under a `wasmcustom.` prefix). 0 if absent.
pub fn counter(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .find(|(n, _)| *n == name || n.ends_with(&format!(".{name}")))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}
