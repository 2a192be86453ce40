//! Redirection endpoints (RFC 6749 §3.1.2): which URIs a client may register, how a
//! requested URI is matched against them, and how the authorization response is
//! appended to one.
//!
//! Matching is exact string comparison (RFC 9700 §2.1), with the one exception the BCP
//! requires for native apps: a loopback IP literal registered without a port matches
//! any port (RFC 8252 §7.3), since the app listens on an ephemeral one.

use crate::http::form::encode_component;

/// Longest accepted redirect URI.
const MAX_LEN: usize = 2000;
/// Schemes that run or embed content in the browser instead of reaching an app.
const FORBIDDEN_SCHEMES: &[&str] = &["javascript", "data", "vbscript", "file", "about", "blob"];
/// Hosts an `http` redirect URI may name (RFC 8252 §7.3, §8.3).
const LOOPBACK_HOSTS: &[&str] = &["127.0.0.1", "[::1]", "localhost"];
/// Loopback hosts whose port may vary at request time: IP literals only, as RFC 8252
/// §7.3 recommends.
const PORT_AGNOSTIC_HOSTS: &[&str] = &["127.0.0.1", "[::1]"];

/// Checks a redirect URI before it is registered: an absolute URI without fragment;
/// `https`, `http` on a loopback host, or a private-use scheme in reverse-domain form
/// (RFC 8252 §7.1, e.g. `com.example.app:/callback`).
pub fn validate(uri: &str) -> Result<(), String> {
    if uri.is_empty() || uri.len() > MAX_LEN {
        return Err(format!("a redirect URI is 1 to {MAX_LEN} characters long"));
    }
    if !uri.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err("a redirect URI is printable ASCII without spaces".to_owned());
    }
    if uri.contains('#') {
        return Err("a redirect URI must not have a fragment (RFC 6749 §3.1.2)".to_owned());
    }
    let (scheme, rest) = uri
        .split_once(':')
        .filter(|(scheme, _)| is_scheme(scheme))
        .ok_or("a redirect URI must be absolute, with a scheme")?;
    let scheme = scheme.to_ascii_lowercase();
    if FORBIDDEN_SCHEMES.contains(&scheme.as_str()) {
        return Err(format!("the {scheme}: scheme cannot be a redirect URI"));
    }
    match scheme.as_str() {
        "https" => match authority(rest) {
            Some((host, _)) if !host.is_empty() => Ok(()),
            _ => Err("an https redirect URI needs a host".to_owned()),
        },
        "http" => match authority(rest) {
            Some((host, _)) if LOOPBACK_HOSTS.contains(&host.to_ascii_lowercase().as_str()) => {
                Ok(())
            }
            _ => Err(
                "http redirect URIs are only allowed on a loopback host (127.0.0.1, [::1], localhost)"
                    .to_owned(),
            ),
        },
        _ if !scheme.contains('.') => Err(
            "a private-use scheme must be a reverse domain name, e.g. com.example.app:/callback"
                .to_owned(),
        ),
        _ if rest.is_empty() => Err("a redirect URI needs a path after the scheme".to_owned()),
        _ => Ok(()),
    }
}

/// Whether `requested` names the registered redirect URI `registered`.
pub fn matches(registered: &str, requested: &str) -> bool {
    registered == requested
        || without_loopback_port(requested).is_some_and(|stripped| stripped == registered)
}

/// `redirect_uri` with `params` added to its query, keeping any query it already has
/// (RFC 6749 §3.1.2).
pub fn with_params(redirect_uri: &str, params: &[(&str, &str)]) -> String {
    let mut uri = redirect_uri.to_owned();
    let mut separator = match redirect_uri.find('?') {
        None => "?",
        Some(_) if redirect_uri.ends_with(['?', '&']) => "",
        Some(_) => "&",
    };
    for (name, value) in params {
        uri.push_str(separator);
        uri.push_str(name);
        uri.push('=');
        uri.push_str(&encode_component(value));
        separator = "&";
    }
    uri
}

/// RFC 3986 §3.1: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_scheme(scheme: &str) -> bool {
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'-' | b'.'))
}

/// Host and port of `//authority/...`, the part after `scheme:`.
fn authority(hier_part: &str) -> Option<(&str, Option<&str>)> {
    let rest = hier_part.strip_prefix("//")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.contains('@') {
        // Userinfo in a redirect URI only serves to disguise the real host.
        return None;
    }
    let host_end = if authority.starts_with('[') {
        authority.find(']')? + 1
    } else {
        authority.find(':').unwrap_or(authority.len())
    };
    let (host, port) = authority.split_at(host_end);
    match port.strip_prefix(':') {
        None if port.is_empty() => Some((host, None)),
        // A TCP port: 1 to 65535 (port 0 cannot be connected to).
        Some(port)
            if port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u16>().is_ok_and(|n| n != 0) =>
        {
            Some((host, Some(port)))
        }
        _ => None,
    }
}

/// `http://127.0.0.1:PORT/rest` without `:PORT`, for loopback IP literals.
fn without_loopback_port(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix("http://")?;
    let (host, port) = authority(&uri["http:".len()..])?;
    let port = port?;
    if !PORT_AGNOSTIC_HOSTS.contains(&host) {
        return None;
    }
    let after = &rest[host.len() + 1 + port.len()..];
    Some(format!("http://{host}{after}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_web_native_and_loopback_uris() {
        for good in [
            "https://app.example.com/callback",
            "https://app.example.com:8443/cb?tenant=a",
            "com.example.app:/callback",
            "com.example.app://oauth/callback",
            "http://127.0.0.1/callback",
            "http://127.0.0.1:8765/callback",
            "http://[::1]/cb",
            "http://localhost:3000/cb",
        ] {
            assert_eq!(validate(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn refuses_dangerous_or_ambiguous_uris() {
        for bad in [
            "",
            "/relative/callback",
            "https://app.example.com/cb#frag",
            "https:///no-host",
            "https://user@evil.example/cb",
            "http://app.example.com/cb",
            "http://127.0.0.1.evil.example/cb",
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:text/html,hi",
            "file:///etc/passwd",
            "myapp:/callback",
            "com.example.app:",
            "https://app.example.com/with space",
            "1http://x",
            "http://127.0.0.1:0/cb",
            "http://127.0.0.1:65536/cb",
            "http://[::1]:99999/cb",
            "https://app.example.com:0/cb",
            "http://localhost:123456789012345678901234567890/cb",
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
        assert!(validate(&format!("https://a.example/{}", "x".repeat(MAX_LEN))).is_err());
    }

    #[test]
    fn matching_is_exact_except_loopback_ports() {
        let web = "https://app.example.com/callback";
        assert!(matches(web, web));
        for other in [
            "https://app.example.com/callback/",
            "https://app.example.com/Callback",
            "https://app.example.com/callback?x=1",
            "https://app.example.com:443/callback",
            "HTTPS://app.example.com/callback",
        ] {
            assert!(!matches(web, other), "{other}");
        }

        assert!(matches("http://127.0.0.1/cb", "http://127.0.0.1:53123/cb"));
        assert!(matches("http://[::1]/cb", "http://[::1]:8080/cb"));
        assert!(!matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:53123/other"
        ));
        assert!(
            !matches("http://127.0.0.1:1000/cb", "http://127.0.0.1:2000/cb"),
            "a registered port is exact"
        );
        assert!(
            !matches("http://localhost/cb", "http://localhost:8080/cb"),
            "only IP literals are port-agnostic"
        );
        assert!(!matches("http://127.0.0.1/cb", "http://127.0.0.1:/cb"));
        for port in ["0", "65536", "99999", "4294967297"] {
            let requested = format!("http://127.0.0.1:{port}/cb");
            assert!(!matches("http://127.0.0.1/cb", &requested), "{requested}");
        }
        assert!(matches("http://127.0.0.1/cb", "http://127.0.0.1:65535/cb"));
    }

    #[test]
    fn parameters_are_appended_and_encoded() {
        assert_eq!(
            with_params(
                "com.example.app:/cb",
                &[("code", "abc"), ("state", "x y&z")]
            ),
            "com.example.app:/cb?code=abc&state=x%20y%26z"
        );
        assert_eq!(
            with_params("https://a.example/cb?tenant=1", &[("code", "c")]),
            "https://a.example/cb?tenant=1&code=c"
        );
        assert_eq!(
            with_params("https://a.example/cb?", &[("code", "c")]),
            "https://a.example/cb?code=c"
        );
    }
}
