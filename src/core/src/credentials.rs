//! Finding bearer credentials in a request, and removing every trace of them
//! before the request goes upstream.

use crate::names;

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
    /// When the pipeline first saw the request (µs since the Unix epoch);
    /// `pipeline::on_request` sets it, `Step::Wait` and `Step::Park` hand it back.
    pub received_us: u64,
}

impl RequestView<'_> {
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

/// Edits that empty every given location, whatever it holds: a credential
/// location is Tollgate's, so nothing in it reaches the upstream, a token that
/// failed to parse no more than a valid one. Each location is matched under
/// every spelling an upstream would take for it ([`names`]):
///
/// * a header: every header of that name, any value (another scheme such as
///   `Basic`, a tab after `Bearer`, bytes that are not UTF-8);
/// * a query parameter: every parameter whose percent-decoded name is that
///   name, any value (broken escapes too), with `&` or `;` as separator;
/// * a cookie: every cookie whose decoded name is that name.
pub fn strip<'l, L>(req: &RequestView<'_>, locations: L) -> Vec<HeaderEdit>
where
    L: Iterator<Item = &'l TokenLocation> + Clone,
{
    let mut edits = Vec::new();
    for (name, _) in req.headers {
        let located = locations.clone().any(|loc| match loc {
            TokenLocation::Header { name: n, .. } => names::same(name.as_bytes(), n.as_bytes()),
            _ => false,
        });
        if located && !name.starts_with(':') {
            push_remove(&mut edits, name);
        }
    }
    let params = || {
        locations.clone().filter_map(|loc| match loc {
            TokenLocation::Query(p) => Some(p.as_str()),
            _ => None,
        })
    };
    if let Some(query) = req.query().filter(|_| params().next().is_some()) {
        if let Some(kept) =
            without_params(query, |name| params().any(|p| names::same_param(name, p)))
        {
            let path = req.path_without_query();
            edits.push(HeaderEdit::Set(
                ":path".to_string(),
                if kept.is_empty() {
                    path.to_string()
                } else {
                    format!("{path}?{kept}")
                },
            ));
        }
    }
    let cookies = || {
        locations.clone().filter_map(|loc| match loc {
            TokenLocation::Cookie(c) => Some(c.as_str()),
            _ => None,
        })
    };
    if cookies().next().is_some() {
        let mut removed = false;
        let mut kept: Vec<&[u8]> = Vec::new();
        for pair in req
            .header_values("cookie")
            .flat_map(|h| h.split(|b| *b == b';'))
            .map(<[u8]>::trim_ascii)
            .filter(|pair| !pair.is_empty())
        {
            let name = pair
                .split(|b| *b == b'=')
                .next()
                .unwrap_or(pair)
                .trim_ascii();
            if cookies().any(|c| names::same_param(name, c)) {
                removed = true;
            } else {
                kept.push(pair);
            }
        }
        if removed {
            edits.push(if kept.is_empty() {
                HeaderEdit::Remove("cookie".to_string())
            } else {
                HeaderEdit::Set(
                    "cookie".to_string(),
                    String::from_utf8_lossy(&kept.join(&b"; "[..])).into_owned(),
                )
            });
        }
    }
    edits
}

/// Adds a removal of `name` unless one is already there.
pub fn push_remove(edits: &mut Vec<HeaderEdit>, name: &str) {
    if !edits
        .iter()
        .any(|e| matches!(e, HeaderEdit::Remove(n) if n == name))
    {
        edits.push(HeaderEdit::Remove(name.to_string()));
    }
}

/// The query without the parameters whose raw name `drop` picks, each kept
/// parameter byte for byte with the separator before it; `None` if none is dropped.
fn without_params(query: &str, drop: impl Fn(&[u8]) -> bool) -> Option<String> {
    let mut kept = String::with_capacity(query.len());
    let mut dropped = false;
    let mut separator = "&";
    for piece in query.split_inclusive(['&', ';']) {
        let pair = piece.strip_suffix(['&', ';']).unwrap_or(piece);
        let name = pair.split('=').next().unwrap_or(pair);
        if drop(name.as_bytes()) {
            dropped = true;
        } else if !pair.is_empty() {
            if !kept.is_empty() {
                kept.push_str(separator);
            }
            kept.push_str(pair);
        }
        separator = piece
            .get(pair.len()..)
            .filter(|s| !s.is_empty())
            .unwrap_or("&");
    }
    dropped.then_some(kept)
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
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let mut digit = || char::from(bytes.next()?).to_digit(16);
            let (hi, lo) = (digit()?, digit()?);
            out.push((hi * 16 + lo) as u8);
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
                received_us: 0,
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
                received_us: 0,
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
            received_us: 0,
        };
        assert_eq!(find_token(&req, &locs), Some(("tok1".into(), 1)));
        assert_eq!(
            strip(&req, locs.iter()),
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
            received_us: 0,
        };
        assert_eq!(
            strip(&req, locs.iter()),
            vec![
                HeaderEdit::Set(":path".into(), "/x".into()),
                HeaderEdit::Remove("cookie".into()),
            ]
        );
    }

    fn view<'a>(path: &'a str, headers: &'a [(String, Vec<u8>)]) -> RequestView<'a> {
        RequestView {
            method: "GET",
            path,
            headers,
            client_ip: Some("192.0.2.1"),
            received_us: 0,
        }
    }

    /// Defect: `Bearer<TAB>jwt`, trailing junk, non-UTF-8 and other schemes
    /// went upstream untouched because only parseable tokens were stripped.
    #[test]
    fn a_credential_header_is_removed_whatever_it_holds() {
        for value in [
            &b"Bearer t"[..],
            b"Bearer\teyJ.eyJ.sig",
            b"Bearer eyJ.eyJ.sig junk",
            b"Bearer eyJ.eyJ.sig\xff\xfe",
            b"Basic dTpw",
            b"Digest username=\"u\"",
            b"",
        ] {
            let h = headers(&[("authorization", value), ("accept", b"*/*")]);
            assert_eq!(
                strip(&view("/", &h), [bearer()].iter()),
                vec![HeaderEdit::Remove("authorization".into())],
                "{}",
                String::from_utf8_lossy(value)
            );
        }
        // Look-alike names an upstream folds onto the configured one.
        let key = TokenLocation::Header {
            name: "x-api-key".into(),
            value_prefix: None,
        };
        let h = headers(&[
            ("x_api_key", b"k1"),
            ("x-api_key", b"k2"),
            ("x-api-key", b"k3"),
            ("x-api-keys", b"other"),
        ]);
        assert_eq!(
            strip(&view("/", &h), [key].iter()),
            vec![
                HeaderEdit::Remove("x_api_key".into()),
                HeaderEdit::Remove("x-api_key".into()),
                HeaderEdit::Remove("x-api-key".into()),
            ]
        );
        assert!(strip(&view("/", &headers(&[("accept", b"x")])), [bearer()].iter()).is_empty());
    }

    #[test]
    fn every_spelling_of_a_credential_parameter_is_removed_whatever_its_value() {
        let locs = [TokenLocation::Query("access_token".into())];
        let stripped = |path: &str| -> Option<String> {
            strip(&view(path, &[]), locs.iter())
                .into_iter()
                .find_map(|e| match e {
                    HeaderEdit::Set(n, v) if n == ":path" => Some(v),
                    _ => None,
                })
        };
        for (path, upstream) in [
            ("/x?access_token=t", "/x"),
            ("/x?a=1&ACCESS_TOKEN=t&b=2", "/x?a=1&b=2"),
            ("/x?access%5Ftoken=t&b=2", "/x?b=2"),
            ("/x?access%255Ftoken=t", "/x"),
            ("/x?Access-Token=t&access.token=u&access+token=v", "/x"),
            ("/x?access_token=%zz.eyJ&access_token=%", "/x"),
            ("/x?access_token", "/x"),
            ("/x?a=1;access_token=t;b=2", "/x?a=1;b=2"),
            ("/x?access_token=t&a=1&&b=2#frag", "/x?a=1&b=2"),
        ] {
            assert_eq!(stripped(path).as_deref(), Some(upstream), "{path}");
        }
        for path in [
            "/x",
            "/x?",
            "/x?a=access_token",
            "/x?access_tokens=1",
            "/access_token?x=1",
        ] {
            assert_eq!(stripped(path), None, "{path}");
        }
        // Reading stays strict: only the exact name is a token.
        let req = view("/x?ACCESS_TOKEN=abc", &[]);
        assert_eq!(find_token(&req, &locs), None);
    }

    #[test]
    fn every_spelling_of_a_credential_cookie_is_removed() {
        let locs = [TokenLocation::Cookie("tg_at".into())];
        let h = headers(&[
            ("cookie", b"theme=dark; TG_AT=a; tg%5Fat=b"),
            ("cookie", b"tg-at=\xff; tg_at=; lang=en"),
        ]);
        assert_eq!(
            strip(&view("/", &h), locs.iter()),
            vec![HeaderEdit::Set(
                "cookie".into(),
                "theme=dark; lang=en".into()
            )]
        );
        let h = headers(&[("cookie", b"theme=dark")]);
        assert!(strip(&view("/", &h), locs.iter()).is_empty());
    }

    #[test]
    fn broken_percent_escapes_are_not_tokens() {
        let locs = vec![TokenLocation::Query("t".into())];
        for path in ["/?t=%", "/?t=%zz", "/?t=%ff", "/?t=", "/?t=%+1"] {
            let req = RequestView {
                method: "GET",
                path,
                headers: &[],
                client_ip: Some("192.0.2.1"),
                received_us: 0,
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
            received_us: 0,
        };
        assert_eq!(req.path_without_query(), "/a/b");
        assert_eq!(req.query(), Some("x=1"));
    }
}
