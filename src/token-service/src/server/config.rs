//! `serve` settings: command-line flags with environment-variable equivalents.
//!
//! Values are validated while parsing so that a misconfigured server refuses to start
//! instead of issuing tokens verifiers will reject.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::crypto::signing_keys::Algorithm;
use crate::protocol::dpop;
use crate::protocol::refresh::Lifetimes;
use crate::server::client_ip::TrustedProxies;
use crate::server::connections;
use crate::server::throttle::Limits;

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "TOLLGATE_LISTEN", default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,

    /// Issuer identifier: the `iss` of every token and the base URL of the endpoints
    /// advertised in the discovery documents (http or https, no query or fragment).
    #[arg(
        long,
        env = "TOLLGATE_ISSUER",
        default_value = "http://127.0.0.1:8080",
        value_parser = parse_issuer
    )]
    pub issuer: String,

    /// The `aud` of every access token: the API the tokens are for.
    #[arg(
        long,
        env = "TOLLGATE_AUDIENCE",
        default_value = "tollgate-sample-api",
        value_parser = parse_audience
    )]
    pub audience: String,

    /// Access-token lifetime in seconds.
    #[arg(
        long,
        env = "TOLLGATE_ACCESS_TOKEN_TTL",
        default_value_t = 900,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub access_token_ttl: u64,

    /// Algorithm of the signing key generated on first start (when the database has no
    /// active key); use `keys rotate --alg` to change the algorithm later.
    #[arg(long, env = "TOLLGATE_ALG", value_enum, default_value_t = Algorithm::Es256)]
    pub alg: Algorithm,

    /// Refresh-token idle lifetime in seconds: a refresh token unused this long stops
    /// working (each refresh issues a new one). Default 14 days.
    #[arg(
        long,
        env = "TOLLGATE_REFRESH_IDLE_TTL",
        default_value_t = 1_209_600,
        value_parser = clap::value_parser!(u64).range(1..=31_536_000)
    )]
    pub refresh_idle_ttl: u64,

    /// Refresh-token absolute lifetime in seconds, from the user's login; refreshing
    /// never extends it. Default 90 days.
    #[arg(
        long,
        env = "TOLLGATE_REFRESH_ABSOLUTE_TTL",
        default_value_t = 7_776_000,
        value_parser = clap::value_parser!(u64).range(1..=31_536_000)
    )]
    pub refresh_absolute_ttl: u64,

    /// Seconds after a refresh during which the refresh token it used may be exchanged
    /// again, for a client that lost the response or retried: the retry gets new
    /// tokens and the grant lives on. Outside it (and once the new token was used),
    /// presenting a used token revokes the grant. 0 turns retries off.
    #[arg(
        long,
        env = "TOLLGATE_REFRESH_REUSE_GRACE",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(0..=60)
    )]
    pub refresh_reuse_grace: u64,

    /// Peers whose X-Forwarded-For is believed (comma-separated CIDR ranges; empty for
    /// none). The client address is the right-most X-Forwarded-For entry that is not one
    /// of them.
    #[arg(
        long,
        env = "TOLLGATE_TRUSTED_PROXIES",
        default_value = "127.0.0.1/32,::1/128"
    )]
    pub trusted_proxies: TrustedProxies,

    /// Failed authentications per client id (or username) and client address before
    /// answers become 429; attempts past half of it are delayed.
    #[arg(
        long,
        env = "TOLLGATE_THROTTLE_ACCOUNT_FAILURES",
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub throttle_account_failures: u32,

    /// Failed authentications per client address, whatever the account, before 429.
    #[arg(
        long,
        env = "TOLLGATE_THROTTLE_IP_FAILURES",
        default_value_t = 50,
        value_parser = clap::value_parser!(u32).range(1..=100_000)
    )]
    pub throttle_ip_failures: u32,

    /// Seconds over which a full failure count drains: with the defaults, one more
    /// attempt every 90 s per account and address once blocked.
    #[arg(
        long,
        env = "TOLLGATE_THROTTLE_WINDOW",
        default_value_t = 900,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub throttle_window: u64,

    /// Seconds a client has to send a request's whole head (request line and headers)
    /// once its first byte arrived; slower connections are closed.
    #[arg(
        long,
        env = "TOLLGATE_HEADER_READ_TIMEOUT",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=300)
    )]
    pub header_read_timeout: u64,

    /// Seconds a connection may stay open with no request being handled and no byte
    /// sent either way: before its first request, between requests, or stalled.
    #[arg(
        long,
        env = "TOLLGATE_KEEP_ALIVE_TIMEOUT",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=3_600)
    )]
    pub keep_alive_timeout: u64,

    /// Most connections open at once; at the cap, new ones wait until one closes (and
    /// the server logs it). The file-descriptor limit is raised to fit, or `serve`
    /// refuses to start.
    #[arg(
        long,
        env = "TOLLGATE_MAX_CONNECTIONS",
        default_value_t = 1_024,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub max_connections: u32,

    /// How old (`iat`) a DPoP proof may be, seconds; its `jti` is remembered as long.
    #[arg(
        long,
        env = "TOLLGATE_DPOP_PROOF_MAX_AGE",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=600)
    )]
    pub dpop_proof_max_age: u64,

    /// Require a server nonce in DPoP proofs (RFC 9449 §8): `--dpop-nonce` or
    /// `--dpop-nonce true|false`.
    #[arg(
        long,
        env = "TOLLGATE_DPOP_NONCE",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub dpop_nonce: bool,

    /// Seconds between nonce rotations; a nonce is accepted for up to twice as long.
    #[arg(
        long,
        env = "TOLLGATE_DPOP_NONCE_ROTATION",
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(10..=86_400)
    )]
    pub dpop_nonce_rotation: u64,

    /// Base URL of the mutual-TLS listener that forwards to this service (e.g.
    /// https://auth.example.com:8443): advertised as `mtls_endpoint_aliases` and
    /// accepted as a DPoP `htu`.
    #[arg(long, env = "TOLLGATE_MTLS_ENDPOINT_BASE", value_parser = parse_issuer)]
    pub mtls_endpoint_base: Option<String>,
}

impl ServeConfig {
    /// Absolute URL of an endpoint of this server, e.g. `endpoint("/token")`.
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.issuer.trim_end_matches('/'))
    }

    /// `path` on the mutual-TLS listener, if there is one.
    pub fn mtls_endpoint(&self, path: &str) -> Option<String> {
        self.mtls_endpoint_base
            .as_ref()
            .map(|base| format!("{}{path}", base.trim_end_matches('/')))
    }

    /// The token endpoint's URLs as clients reach them (the metadata's
    /// `token_endpoint` and its mTLS alias), normalised for comparing a DPoP `htu`.
    pub fn token_endpoint_urls(&self) -> Vec<String> {
        std::iter::once(self.endpoint("/token"))
            .chain(self.mtls_endpoint("/token"))
            .filter_map(|url| dpop::normalize_htu(&url))
            .collect()
    }

    pub fn dpop_proof_max_age(&self) -> i64 {
        i64::try_from(self.dpop_proof_max_age).unwrap_or(60)
    }

    pub fn refresh_lifetimes(&self) -> Lifetimes {
        // Both are bounded by the value parsers, far below i64::MAX.
        let seconds = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        Lifetimes {
            idle: seconds(self.refresh_idle_ttl),
            absolute: seconds(self.refresh_absolute_ttl),
        }
    }

    pub fn connection_limits(&self) -> connections::Limits {
        connections::Limits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout),
            keep_alive_timeout: Duration::from_secs(self.keep_alive_timeout),
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
        }
    }

    /// [`Self::refresh_reuse_grace`] in seconds.
    pub fn refresh_reuse_grace(&self) -> i64 {
        // Bounded by the value parser.
        i64::try_from(self.refresh_reuse_grace).unwrap_or(0)
    }

    pub fn throttle_limits(&self) -> Limits {
        Limits {
            account_failures: self.throttle_account_failures,
            address_failures: self.throttle_ip_failures,
            window: Duration::from_secs(self.throttle_window),
        }
    }
}

/// RFC 8414 §2: an http(s) URL with a host and no query or fragment.
fn parse_issuer(issuer: &str) -> Result<String, String> {
    let rest = issuer
        .strip_prefix("https://")
        .or_else(|| issuer.strip_prefix("http://"))
        .ok_or("the issuer must be an http:// or https:// URL")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("the issuer URL needs a host".to_owned());
    }
    if issuer.contains(['?', '#']) {
        return Err("the issuer URL must not have a query or fragment".to_owned());
    }
    if !issuer.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err("the issuer URL must be printable ASCII without spaces".to_owned());
    }
    Ok(issuer.to_owned())
}

fn parse_audience(audience: &str) -> Result<String, String> {
    if audience.is_empty() || !audience.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err("the audience must be non-empty printable ASCII without spaces".to_owned());
    }
    Ok(audience.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `serve`'s flags on their own.
    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        config: ServeConfig,
    }

    impl ServeConfig {
        fn parse_from<'a>(args: impl IntoIterator<Item = &'a str>) -> ServeConfig {
            Serve::parse_from(args).config
        }
    }

    #[test]
    fn defaults() {
        let config = ServeConfig::parse_from(["serve"]);
        assert_eq!(config.refresh_lifetimes().idle, 14 * 86_400);
        assert_eq!(config.refresh_lifetimes().absolute, 90 * 86_400);
        assert_eq!(config.refresh_reuse_grace(), 10);
        assert_eq!(config.trusted_proxies.to_string(), "127.0.0.1/32,::1/128");
        let limits = config.throttle_limits();
        assert_eq!((limits.account_failures, limits.address_failures), (10, 50));
        assert_eq!(limits.window, Duration::from_secs(900));
        let connections = config.connection_limits();
        assert_eq!(connections.header_read_timeout, Duration::from_secs(10));
        assert_eq!(connections.keep_alive_timeout, Duration::from_secs(60));
        assert_eq!(connections.max_connections, 1_024);
        assert_eq!(config.dpop_proof_max_age(), 60);
        assert!(!config.dpop_nonce);
        assert_eq!(config.mtls_endpoint("/token"), None);
        assert_eq!(
            config.token_endpoint_urls(),
            ["http://127.0.0.1:8080/token"]
        );
        let none = ServeConfig::parse_from(["serve", "--trusted-proxies", ""]);
        assert_eq!(none.trusted_proxies, TrustedProxies::default());
    }

    #[test]
    fn issuer_rules() {
        assert!(parse_issuer("https://auth.example.com").is_ok());
        assert!(parse_issuer("http://127.0.0.1:8080/tenant").is_ok());
        for bad in [
            "auth.example.com",
            "ftp://auth.example.com",
            "https://",
            "https:///path",
            "https://auth.example.com?x=1",
            "https://auth.example.com#frag",
            "https://auth example.com",
        ] {
            assert!(parse_issuer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_join_without_double_slash() {
        let mut config =
            ServeConfig::parse_from(["serve", "--issuer", "https://auth.example.com/"]);
        assert_eq!(config.endpoint("/token"), "https://auth.example.com/token");
        config.issuer = "https://auth.example.com/tenant".to_owned();
        assert_eq!(
            config.endpoint("/.well-known/jwks.json"),
            "https://auth.example.com/tenant/.well-known/jwks.json"
        );
        config.mtls_endpoint_base = Some("https://MTLS.example.com:443/".to_owned());
        assert_eq!(
            config.token_endpoint_urls(),
            [
                "https://auth.example.com/tenant/token",
                "https://mtls.example.com/token"
            ]
        );
    }
}
