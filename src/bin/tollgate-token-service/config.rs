//! `serve` settings: command-line flags with environment-variable equivalents.
//!
//! Values are validated while parsing so that a misconfigured server refuses to start
//! instead of issuing tokens verifiers will reject.

use std::net::SocketAddr;

use clap::Args;

use crate::keys::Algorithm;

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
}

impl ServeConfig {
    /// Absolute URL of an endpoint of this server, e.g. `endpoint("/token")`.
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.issuer.trim_end_matches('/'))
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
        let mut config = ServeConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            issuer: "https://auth.example.com/".to_owned(),
            audience: "api".to_owned(),
            access_token_ttl: 900,
            alg: Algorithm::Es256,
        };
        assert_eq!(config.endpoint("/token"), "https://auth.example.com/token");
        config.issuer = "https://auth.example.com/tenant".to_owned();
        assert_eq!(
            config.endpoint("/.well-known/jwks.json"),
            "https://auth.example.com/tenant/.well-known/jwks.json"
        );
    }
}
