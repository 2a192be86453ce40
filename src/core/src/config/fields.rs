//! Field readers every section uses: durations, endpoints, header names.

use super::{err, ConfigError};
use crate::remote::Endpoint;
use serde::Deserialize;

/// Reads a duration field, with a default and a floor.
pub(super) fn duration_ms(
    field: &str,
    v: &Option<String>,
    default_ms: u64,
    min_ms: u64,
) -> Result<u64, ConfigError> {
    let ms = match v {
        Some(s) => parse_duration_ms(s).map_err(|m| err(field, m))?,
        None => default_ms,
    };
    if ms < min_ms {
        return Err(err(field, format!("must be at least {min_ms}ms")));
    }
    Ok(ms)
}

pub(super) fn compile_endpoint(
    at: &str,
    u: RawHttpUri,
    example: &str,
) -> Result<Endpoint, ConfigError> {
    let (authority, path) = split_http_uri(&u.uri).ok_or_else(|| {
        err(
            format!("{at}.http_uri.uri"),
            format!("must be an absolute http(s) URL such as `{example}`"),
        )
    })?;
    if u.cluster.is_empty() {
        return Err(err(
            format!("{at}.http_uri.cluster"),
            "must name an Envoy cluster",
        ));
    }
    Ok(Endpoint {
        cluster: u.cluster,
        authority,
        path,
        timeout_ms: duration_ms(&format!("{at}.http_uri.timeout"), &u.timeout, 5_000, 10)?,
    })
}

/// RFC 9110 token characters, lower-case only (Envoy lower-cases header names).
pub(super) fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

/// Header names Tollgate may set on the upstream request.
pub(super) fn is_forwardable_header(name: &str) -> bool {
    const RESERVED: [&str; 8] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
        "authorization",
        "cookie",
    ];
    is_header_name(name) && !RESERVED.contains(&name)
}

/// Splits `http://authority/path` into authority and path (default `/`).
pub(super) fn split_http_uri(uri: &str) -> Option<(String, String)> {
    let rest = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains(['@', ' ']) || path.contains(['#', ' ']) {
        return None;
    }
    Some((authority.to_string(), path.to_string()))
}

/// Parses a protobuf JSON duration (`"5s"`, `"0.250s"`) into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a duration such as \"5s\" or \"0.5s\"");
    let digits = s.strip_suffix('s').ok_or_else(bad)?;
    let (whole, frac) = match digits.split_once('.') {
        Some((w, f)) => (w, f),
        None => (digits, ""),
    };
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 9
        || (digits.contains('.') && frac.is_empty())
    {
        return Err(bad());
    }
    let secs: u64 = whole.parse().map_err(|_| bad())?;
    let mut millis_str = frac.chars().take(3).collect::<String>();
    while millis_str.len() < 3 {
        millis_str.push('0');
    }
    let millis: u64 = millis_str.parse().map_err(|_| bad())?;
    secs.checked_mul(1000)
        .and_then(|ms| ms.checked_add(millis))
        .ok_or_else(bad)
}

/// `http_uri`: where a document is fetched, as in `jwt_authn`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttpUri {
    pub(super) uri: String,
    pub(super) cluster: String,
    #[serde(default)]
    pub(super) timeout: Option<String>,
}
