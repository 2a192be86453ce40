//! Launches `tollgate-token-service` for tests: a private temporary database, clients
//! and users registered through the real CLI, `serve` on a free loopback port, and
//! helpers to get tokens and drive the CLI while the server runs.
//!
//! ```ignore
//! let service = TokenService::builder().client("mobile-app", "read:data").start();
//! let token = service.client_credentials_token("mobile-app", service.secret("mobile-app"), None);
//! ```

use super::artifacts::token_service_binary as binary;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;
use tempfile::TempDir;

use super::http_agent;
use super::process::{free_port, ChildProcess};

/// How long `serve` may take to answer `/healthz` (an RS256 key is generated first,
/// which takes seconds in a debug build).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at starting on a fresh port when another process took a chosen free one.
const START_ATTEMPTS: usize = 3;

/// Settings for [`TokenService`]; defaults match the service's own.
#[derive(Clone)]
pub struct TokenServiceBuilder {
    port: Option<u16>,
    issuer: Option<String>,
    audience: String,
    access_token_ttl: u64,
    alg: String,
    clients: Vec<ClientSpec>,
    /// Username, password and the scopes the user may hold.
    users: Vec<(String, String, String)>,
    serve_args: Vec<(String, String)>,
}

/// A client to register: `clients add` arguments. `--default-scopes` is `scopes` too,
/// so that a request without `scope` gets every scope the client may ask for.
#[derive(Clone)]
pub struct ClientSpec {
    pub client_id: String,
    pub scopes: String,
    pub public: bool,
    pub redirect_uris: Vec<String>,
}

impl TokenServiceBuilder {
    /// Listen on this loopback port instead of a free one chosen at [`Self::create`]
    /// (for configurations, like Envoy's, that must name the port beforehand).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The `iss` of tokens; defaults to the service's own base URL.
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.issuer = Some(issuer.to_owned());
        self
    }

    pub fn audience(mut self, audience: &str) -> Self {
        self.audience = audience.to_owned();
        self
    }

    pub fn access_token_ttl(mut self, seconds: u64) -> Self {
        self.access_token_ttl = seconds;
        self
    }

    /// `ES256`, `RS256` or `EdDSA`.
    pub fn alg(mut self, alg: &str) -> Self {
        self.alg = alg.to_owned();
        self
    }

    /// Registers a confidential client (through the CLI) before the server starts.
    pub fn client(self, client_id: &str, scopes: &str) -> Self {
        self.client_with_redirects(client_id, scopes, &[])
    }

    /// A confidential client that may also use the authorization code flow.
    pub fn client_with_redirects(mut self, client_id: &str, scopes: &str, uris: &[&str]) -> Self {
        self.clients
            .push(ClientSpec::new(client_id, scopes, false, uris));
        self
    }

    /// A public client (no secret, PKCE mandatory) with its redirect URIs.
    pub fn public_client(mut self, client_id: &str, scopes: &str, uris: &[&str]) -> Self {
        self.clients
            .push(ClientSpec::new(client_id, scopes, true, uris));
        self
    }

    /// Adds a user (through the CLI, password on stdin) who may hold `scopes`, before
    /// the server starts.
    pub fn user(mut self, username: &str, password: &str, scopes: &str) -> Self {
        self.users
            .push((username.to_owned(), password.to_owned(), scopes.to_owned()));
        self
    }

    /// An extra `serve` flag, e.g. `serve_arg("--refresh-idle-ttl", "1")`.
    pub fn serve_arg(mut self, flag: &str, value: &str) -> Self {
        self.serve_args.push((flag.to_owned(), value.to_owned()));
        self
    }

    /// Creates the database and registers the clients, without starting the server:
    /// call [`TokenService::start`] when it should come up.
    pub fn create(self) -> TokenService {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-token-service-")
            .tempdir()
            .expect("creating a temporary directory");
        let mut service = TokenService {
            db_path: dir.path().join("tollgate.db"),
            _dir: dir,
            port: self.port.unwrap_or_else(free_port),
            settings: self,
            process: None,
            secrets: HashMap::new(),
            user_ids: HashMap::new(),
            agent: http_agent(),
        };
        // Management commands refuse a missing database unless told to create it.
        successful(
            &service.cli(&["--create", "keys", "list"]),
            "keys list --create",
        );
        for client in service.settings.clients.clone() {
            service.register_client(&client);
        }
        for (username, password, scopes) in service.settings.users.clone() {
            service.add_user(&username, &password, &scopes);
        }
        service
    }

    /// [`Self::create`], then [`TokenService::start`].
    pub fn start(self) -> TokenService {
        let mut service = self.create();
        service.start();
        service
    }
}

/// A token service with its own database, and its server process once started.
pub struct TokenService {
    db_path: PathBuf,
    settings: TokenServiceBuilder,
    port: u16,
    process: Option<ChildProcess>,
    secrets: HashMap<String, String>,
    user_ids: HashMap<String, String>,
    agent: ureq::Agent,
    // Last: removed after the process is gone.
    _dir: TempDir,
}

impl TokenService {
    pub fn builder() -> TokenServiceBuilder {
        TokenServiceBuilder {
            port: None,
            issuer: None,
            audience: "tollgate-sample-api".to_owned(),
            access_token_ttl: 900,
            alg: "ES256".to_owned(),
            clients: Vec::new(),
            users: Vec::new(),
            serve_args: Vec::new(),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Absolute URL of `path` on the service.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    pub fn token_url(&self) -> String {
        self.url("/token")
    }

    pub fn jwks_url(&self) -> String {
        self.url("/.well-known/jwks.json")
    }

    pub fn issuer(&self) -> String {
        self.settings
            .issuer
            .clone()
            .unwrap_or_else(|| self.base_url())
    }

    pub fn audience(&self) -> &str {
        &self.settings.audience
    }

    pub fn access_token_ttl(&self) -> u64 {
        self.settings.access_token_ttl
    }

    pub fn db_path(&self) -> &PathBuf {
        &self.db_path
    }

    /// The secret printed when `client_id` was added.
    pub fn secret(&self, client_id: &str) -> &str {
        self.secrets
            .get(client_id)
            .unwrap_or_else(|| panic!("no client {client_id} was added through this harness"))
    }

    /// Runs the CLI against this service's database, e.g. `cli(&["keys", "list"])`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .arg("--db")
            .arg(&self.db_path)
            .args(args)
            .output()
            .expect("running the tollgate-token-service CLI")
    }

    /// The user id (`sub`) printed when `username` was added.
    pub fn user_id(&self, username: &str) -> &str {
        self.user_ids
            .get(username)
            .unwrap_or_else(|| panic!("no user {username} was added through this harness"))
    }

    /// Registers a confidential client through the CLI and returns its secret.
    pub fn add_client(&mut self, client_id: &str, scopes: &str) -> String {
        self.register_client(&ClientSpec::new(client_id, scopes, false, &[]))
            .expect("a confidential client has a secret")
    }

    /// `clients add` with the spec's flags; returns the secret, if the client has one.
    pub fn register_client(&mut self, client: &ClientSpec) -> Option<String> {
        let mut args = vec!["clients", "add", "--id", &client.client_id];
        args.extend(["--scopes", &client.scopes]);
        args.extend(["--default-scopes", &client.scopes]);
        if client.public {
            args.push("--public");
        }
        for uri in &client.redirect_uris {
            args.extend(["--redirect-uri", uri]);
        }
        let stdout = successful(&self.cli(&args), "clients add");
        let secret = stdout
            .lines()
            .find_map(|line| line.strip_prefix("client_secret: "))
            .map(str::to_owned);
        assert_eq!(
            secret.is_none(),
            client.public,
            "only confidential clients get a secret:\n{stdout}"
        );
        if let Some(secret) = &secret {
            self.secrets
                .insert(client.client_id.clone(), secret.clone());
        }
        secret
    }

    /// `users add` with the password on standard input and the scopes the user may
    /// hold; returns the user id.
    pub fn add_user(&mut self, username: &str, password: &str, scopes: &str) -> String {
        let mut child = Command::new(binary())
            .arg("--db")
            .arg(&self.db_path)
            .args(["users", "add", "--username", username, "--scopes", scopes])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running users add");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{password}\n").as_bytes())
            .expect("writing the password");
        let output = child.wait_with_output().expect("users add output");
        let stdout = successful(&output, "users add");
        let user_id = stdout
            .lines()
            .find_map(|line| line.strip_prefix("user_id: "))
            .unwrap_or_else(|| panic!("no user_id line in:\n{stdout}"))
            .to_owned();
        self.user_ids.insert(username.to_owned(), user_id.clone());
        user_id
    }

    /// `keys rotate` through the CLI (optionally with `--alg`); returns the new `kid`.
    pub fn rotate_keys(&self, alg: Option<&str>) -> String {
        let mut args = vec!["keys", "rotate"];
        args.extend(alg.iter().flat_map(|alg| ["--alg", alg]));
        let stdout = successful(&self.cli(&args), "keys rotate");
        stdout
            .lines()
            .find_map(|line| line.strip_prefix("active key: "))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no active key line in:\n{stdout}"))
            .to_owned()
    }

    /// POSTs a `client_credentials` request with HTTP Basic client authentication
    /// (RFC 6749 §2.3.1 encoding) and returns the response.
    pub fn request_token(
        &self,
        client_id: &str,
        secret: &str,
        scope: Option<&str>,
    ) -> ureq::http::Response<ureq::Body> {
        let mut body = String::from("grant_type=client_credentials");
        if let Some(scope) = scope {
            body.push_str("&scope=");
            body.push_str(&form_urlencode(scope));
        }
        self.agent
            .post(self.token_url())
            .header("Authorization", basic_authorization(client_id, secret))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(body)
            .expect("POST /token")
    }

    /// An access token for the client; panics with the error response otherwise.
    pub fn client_credentials_token(
        &self,
        client_id: &str,
        secret: &str,
        scope: Option<&str>,
    ) -> String {
        let mut response = self.request_token(client_id, secret, scope);
        let status = response.status();
        let body: Value = response
            .body_mut()
            .read_json()
            .expect("token response JSON");
        assert_eq!(status, 200, "token request failed: {body}");
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {body}"))
            .to_owned()
    }

    /// The current JWK Set.
    pub fn jwks(&self) -> Value {
        let mut response = self.agent.get(self.jwks_url()).call().expect("GET JWKS");
        assert_eq!(response.status(), 200);
        response.body_mut().read_json().expect("JWKS JSON")
    }

    /// The output (stdout and stderr) of the current or last-stopped server process.
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(ChildProcess::log)
            .unwrap_or_default()
    }

    /// SIGTERM, then wait for a graceful exit; returns how the process exited. The log
    /// stays readable until the next start.
    pub fn stop(&mut self) -> ExitStatus {
        let process = self
            .process
            .as_mut()
            .expect("the service was never started");
        process
            .terminate(STOP_TIMEOUT)
            .unwrap_or_else(|err| panic!("stopping the service: {err}\n{}", process.log()))
    }

    /// Starts `serve` and waits until `/healthz` answers; panics with the service's log
    /// if it does not. If a free port chosen by the harness was taken meanwhile, moves
    /// to another one (a port fixed with [`TokenServiceBuilder::port`] never moves).
    pub fn start(&mut self) {
        assert!(!self.is_running(), "the token service is already running");
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match self.try_start() {
                Ok(()) => return,
                Err(StartError::PortTaken(err)) if self.settings.port.is_none() => {
                    failures.push(err);
                    self.port = free_port();
                }
                Err(StartError::PortTaken(err) | StartError::Failed(err)) => {
                    panic!("the token service did not start: {err}")
                }
            }
        }
        panic!(
            "no free port for the token service:\n{}",
            failures.join("\n\n")
        );
    }

    /// Whether the server process is up.
    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|process| process.exit_status().is_none())
    }

    /// Stops the service and starts it again on the same port and database.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(status.success(), "the service exited with {status}");
        if let Err(StartError::PortTaken(err) | StartError::Failed(err)) = self.try_start() {
            panic!("restarting the service: {err}");
        }
    }

    fn try_start(&mut self) -> Result<(), StartError> {
        let port = self.port;
        let mut command = Command::new(binary());
        command
            .arg("--db")
            .arg(&self.db_path)
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--issuer", &self.issuer()])
            .args(["--audience", &self.settings.audience])
            .args([
                "--access-token-ttl",
                &self.settings.access_token_ttl.to_string(),
            ])
            .args(["--alg", &self.settings.alg]);
        for (flag, value) in &self.settings.serve_args {
            command.args([flag, value]);
        }
        let mut process = ChildProcess::spawn("tollgate-token-service", command)
            .map_err(|err| StartError::Failed(format!("spawning {}: {err}", binary().display())))?;
        match process.wait_for_http(&self.url("/healthz"), READY_TIMEOUT) {
            Ok(()) => {
                self.process = Some(process);
                Ok(())
            }
            // Another process took the port between free_port() and bind().
            Err(err) if process.log().contains("Address already in use") => {
                Err(StartError::PortTaken(err))
            }
            Err(err) => Err(StartError::Failed(err)),
        }
    }
}

impl ClientSpec {
    fn new(client_id: &str, scopes: &str, public: bool, redirect_uris: &[&str]) -> Self {
        Self {
            client_id: client_id.to_owned(),
            scopes: scopes.to_owned(),
            public,
            redirect_uris: redirect_uris.iter().map(|uri| (*uri).to_owned()).collect(),
        }
    }
}

enum StartError {
    PortTaken(String),
    Failed(String),
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
pub fn basic_authorization(client_id: &str, secret: &str) -> String {
    let credentials = format!("{}:{}", form_urlencode(client_id), form_urlencode(secret));
    format!("Basic {}", STANDARD.encode(credentials))
}

/// application/x-www-form-urlencoded encoding of one value.
pub fn form_urlencode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                encoded.push(char::from(byte));
            }
            b' ' => encoded.push('+'),
            _ => {
                // Writing to a String cannot fail.
                let _ = write!(encoded, "%{byte:02X}");
            }
        }
    }
    encoded
}

fn successful(output: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed with {}:\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
