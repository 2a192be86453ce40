//! Finding bearer credentials in a request, and removing every trace of them
//! before the request goes upstream.

use crate::client_cert::{CertificateNames, ClientCertificate, ClientCertificateSource};

/// One place a provider reads tokens from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// A header (lower-case name). With a prefix such as `Bearer `, the value
    /// must start with it, compared case-insensitively (RFC 9110 §11.1).
    Header {
        name: String,
        value_prefix: Option<String>,
    },
    /// A query parameter.
    Query(String),
    /// A cookie.
    Cookie(String),
}

/// What the filter needs to know about a request, independent of proxy-wasm.
#[derive(Debug, Clone)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// `:path` as received, query string included.
    pub path: &'a str,
    /// Lower-case names and raw values, as Envoy holds them.
    pub headers: &'a [(String, Vec<u8>)],
    /// The client's address, as `client_ip` in the configuration defines it.
    pub client_ip: Option<&'a str>,
    /// The connection's client certificate, read when a decision needs it;
    /// `None`: the host exposes none ([`ClientCertificate::Unknown`]).
    pub client_cert: Option<&'a dyn ClientCertificateSource>,
}

/// The names a view without a certificate source answers.
static NO_NAMES: CertificateNames = CertificateNames {
    uri_san: None,
    dns_san: None,
    subject: None,
};

impl RequestView<'_> {
    /// The connection's client certificate (reads the host on first use).
    pub fn client_certificate(&self) -> ClientCertificate {
        self.client_cert
            .map_or(ClientCertificate::Unknown, |source| {
                source.client_certificate()
            })
    }

    /// The names in the connection's client certificate (read on first use).
    pub fn client_certificate_names(&self) -> &CertificateNames {
        self.client_cert.map_or(&NO_NAMES, |source| source.names())
    }

    pub fn path_without_query(&self) -> &str {
        self.path.split(['?', '#']).next().unwrap_or(self.path)
    }

    pub fn query(&self) -> Option<&str> {
        self.path
            .split_once('?')
            .map(|(_, q)| q.split('#').next().unwrap_or(q))
    }

    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// A change to the upstream request's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    Remove(String),
    Set(String, String),
}

/// The first token found, trying `locations` in order.
pub fn find_token(req: &RequestView<'_>, locations: &[TokenLocation]) -> Option<(String, usize)> {
    locations
        .iter()
        .enumerate()
        .find_map(|(i, loc)| token_at(req, loc).map(|t| (t, i)))
}

fn token_at(req: &RequestView<'_>, loc: &TokenLocation) -> Option<String> {
    match loc {
        TokenLocation::Header { name, value_prefix } => req.header_values(name).find_map(|raw| {
            let value = std::str::from_utf8(raw).ok()?.trim();
            let token = match value_prefix {
                Some(prefix) => {
                    let head = value.get(..prefix.len())?;
                    if !head.eq_ignore_ascii_case(prefix) {
                        return None;
                    }
                    value[prefix.len()..].trim_start()
                }
                None => value,
            };
            (!token.is_empty()).then(|| token.to_string())
        }),
        TokenLocation::Query(param) => query_pairs(req.query()?)
            .find(|(k, _)| k == param)
            .and_then(|(_, v)| percent_decode(v))
            .filter(|v| !v.is_empty()),
        TokenLocation::Cookie(name) => req.header_values("cookie").find_map(|raw| {
            let header = std::str::from_utf8(raw).ok()?;
            cookie_pairs(header)
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim_matches('"').to_string())
                .filter(|v| !v.is_empty())
        }),
    }
}

/// Edits that remove credentials from every configured location that holds
/// one, not only the one the token was read from: nothing that looks like a
/// credential of ours reaches the upstream.
pub fn strip_credentials(req: &RequestView<'_>, locations: &[TokenLocation]) -> Vec<HeaderEdit> {
    let mut edits = Vec::new();
    let mut query_params: Vec<&str> = Vec::new();
    let mut cookies: Vec<&str> = Vec::new();
    for loc in locations {
        if token_at(req, loc).is_none() {
            continue;
        }
        match loc {
            TokenLocation::Header { name, .. } => {
                let edit = HeaderEdit::Remove(name.clone());
                if !edits.contains(&edit) {
                    edits.push(edit);
                }
            }
            TokenLocation::Query(p) => query_params.push(p),
            TokenLocation::Cookie(c) => cookies.push(c),
        }
    }
    if !query_params.is_empty() {
        let path = req.path_without_query();
        let kept: Vec<&str> = req
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|pair| {
                let key = pair.split('=').next().unwrap_or("");
                !pair.is_empty() && !query_params.contains(&key)
            })
            .collect();
        let new_path = if kept.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", kept.join("&"))
        };
        edits.push(HeaderEdit::Set(":path".to_string(), new_path));
    }
    if !cookies.is_empty() {
        let kept: Vec<String> = req
            .header_values("cookie")
            .filter_map(|raw| std::str::from_utf8(raw).ok())
            .flat_map(|h| h.split(';'))
            .map(str::trim)
            .filter(|c| {
                let name = c.split('=').next().unwrap_or("").trim();
                !c.is_empty() && !cookies.contains(&name)
            })
            .map(str::to_string)
            .collect();
        edits.push(if kept.is_empty() {
            HeaderEdit::Remove("cookie".to_string())
        } else {
            HeaderEdit::Set("cookie".to_string(), kept.join("; "))
        });
    }
    edits
}

fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

fn cookie_pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header
        .split(';')
        .filter_map(|c| c.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
}

/// Decodes `%XX` escapes; `None` for broken escapes or non-UTF-8 results.
fn percent_decode(s: &str) -> Option<String> {
    let mut bytes = s.bytes();
    let mut out = Vec::with_capacity(s.len());
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect()
    }

    fn bearer() -> TokenLocation {
        TokenLocation::Header {
            name: "authorization".into(),
            value_prefix: Some("Bearer ".into()),
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for value in ["Bearer abc", "bearer abc", "BEARER   abc", "  Bearer abc  "] {
            let h = headers(&[("authorization", value.as_bytes())]);
            let req = RequestView {
                method: "GET",
                path: "/",
                headers: &h,
                client_ip: Some("192.0.2.1"),
                client_cert: None,
            };
            assert_eq!(
                find_token(&req, &[bearer()]),
                Some(("abc".into(), 0)),
                "{value}"
            );
        }
        for value in [
            &b"Basic abc"[..],
            b"Bearer",
            b"Bearer ",
            b"Bearer \xff\xfe",
            b"Bear",
        ] {
            let h = headers(&[("authorization", value)]);
            let req = RequestView {
                method: "GET",
                path: "/",
                headers: &h,
                client_ip: Some("192.0.2.1"),
                client_cert: None,
            };
            assert_eq!(find_token(&req, &[bearer()]), None);
        }
    }

    #[test]
    fn query_and_cookie_tokens_are_found_and_stripped() {
        let locs = vec![
            bearer(),
            TokenLocation::Query("access_token".into()),
            TokenLocation::Cookie("at".into()),
        ];
        let h = headers(&[("cookie", b"theme=dark; at=tok2; lang=en")]);
        let req = RequestView {
            method: "GET",
            path: "/x?a=1&access_token=tok%31&b=2",
            headers: &h,
            client_ip: Some("192.0.2.1"),
            client_cert: None,
        };
        assert_eq!(find_token(&req, &locs), Some(("tok1".into(), 1)));
        assert_eq!(
            strip_credentials(&req, &locs),
            vec![
                HeaderEdit::Set(":path".into(), "/x?a=1&b=2".into()),
                HeaderEdit::Set("cookie".into(), "theme=dark; lang=en".into()),
            ]
        );
        let only = headers(&[("cookie", b"at=tok2")]);
        let req = RequestView {
            method: "GET",
            path: "/x?access_token=t",
            headers: &only,
            client_ip: Some("192.0.2.1"),
            client_cert: None,
        };
        assert_eq!(
            strip_credentials(&req, &locs),
            vec![
                HeaderEdit::Set(":path".into(), "/x".into()),
                HeaderEdit::Remove("cookie".into()),
            ]
        );
    }

    #[test]
    fn header_credentials_are_removed_and_other_schemes_left_alone() {
        let h = headers(&[("authorization", b"Bearer t")]);
        let req = RequestView {
            method: "GET",
            path: "/",
            headers: &h,
            client_ip: Some("192.0.2.1"),
            client_cert: None,
        };
        assert_eq!(
            strip_credentials(&req, &[bearer()]),
            vec![HeaderEdit::Remove("authorization".into())]
        );
        let h = headers(&[("authorization", b"Basic dTpw")]);
        let req = RequestView {
            method: "GET",
            path: "/",
            headers: &h,
            client_ip: Some("192.0.2.1"),
            client_cert: None,
        };
        assert!(strip_credentials(&req, &[bearer()]).is_empty());
    }

    #[test]
    fn broken_percent_escapes_are_not_tokens() {
        let locs = vec![TokenLocation::Query("t".into())];
        for path in ["/?t=%", "/?t=%zz", "/?t=%ff", "/?t="] {
            let req = RequestView {
                method: "GET",
                path,
                headers: &[],
                client_ip: Some("192.0.2.1"),
                client_cert: None,
            };
            assert_eq!(find_token(&req, &locs), None, "{path}");
        }
    }

    #[test]
    fn path_helpers() {
        let req = RequestView {
            method: "GET",
            path: "/a/b?x=1#f",
            headers: &[],
            client_ip: Some("192.0.2.1"),
            client_cert: None,
        };
        assert_eq!(req.path_without_query(), "/a/b");
        assert_eq!(req.query(), Some("x=1"));
    }
}
