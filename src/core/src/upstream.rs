//! What the client may not hand the upstream: the edits that remove
//! credentials, identity look-alikes and method overrides from a request
//! before it goes upstream, on every route, allowed or not.
//!
//! Identity headers are the verified identity only when the client cannot
//! send them: every client header in the identity namespace (`x-tollgate-*`)
//! or named by a `claim_to_headers` / `forward_payload_header` is removed,
//! under every spelling an upstream reads as that name ([`names`]).
//!
//! Method overrides (`X-HTTP-Method-Override`, `X-HTTP-Method`,
//! `X-Method-Override`, the `_method` query parameter) make frameworks such
//! as Symfony, Laravel, Rails or Express run another method than the one the
//! rules authorised. `method_override: "strip"` (the default) removes them;
//! `"authorize"` keeps them and matches rules on the method they name.

use crate::config::Settings;
use crate::credentials::{push_remove, strip, HeaderEdit, RequestView, TokenLocation};
use crate::decision::Reason;
use crate::names;
use serde::Deserialize;
use std::borrow::Cow;
use std::sync::LazyLock;

/// What to do with a client's method override (`method_override`).
#[derive(Deserialize, Default, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MethodOverride {
    /// Remove every override: the upstream runs the method the rules saw.
    #[default]
    Strip,
    /// Forward overrides, and match rules on the method they name.
    Authorize,
}

/// The override headers frameworks read, and Symfony's `_method` parameter.
const OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];
const OVERRIDE_PARAM: &str = "_method";

static OVERRIDE_LOCATIONS: LazyLock<Vec<TokenLocation>> = LazyLock::new(|| {
    let headers = OVERRIDE_HEADERS.iter().map(|name| TokenLocation::Header {
        name: name.to_string(),
        value_prefix: None,
    });
    headers
        .chain([TokenLocation::Query(OVERRIDE_PARAM.to_string())])
        .collect()
});

/// The edits that take out of the request everything the client may not hand
/// the upstream: credentials, identity headers and (by default) method overrides.
pub fn purge(req: &RequestView<'_>, s: &Settings) -> Vec<HeaderEdit> {
    let overrides: &[TokenLocation] = match s.method_override {
        MethodOverride::Strip => OVERRIDE_LOCATIONS.as_slice(),
        MethodOverride::Authorize => &[],
    };
    let mut edits = strip(req, s.strip_locations.iter().chain(overrides));
    for (name, _) in req.headers {
        if names_identity(name.as_bytes(), s) {
            push_remove(&mut edits, name);
        }
    }
    edits
}

/// Whether an upstream would read `name` as one of the identity headers.
fn names_identity(name: &[u8], s: &Settings) -> bool {
    names::starts_with(name, s.identity.header_prefix.as_bytes())
        || s.providers.iter().any(|p| {
            p.claim_to_headers
                .iter()
                .map(|(_, header)| header)
                .chain(&p.forward_payload_header)
                .any(|header| names::same(name, header.as_bytes()))
        })
}

/// The method rules are matched on: the request's, or with
/// `method_override: "authorize"` the one its overrides name (upper-cased, as
/// frameworks do). Overrides that disagree, or that are not a method token,
/// are refused: the upstream's choice among them cannot be known.
pub fn method_for_rules<'r>(
    req: &RequestView<'r>,
    mode: MethodOverride,
) -> Result<Cow<'r, str>, Reason> {
    if mode == MethodOverride::Strip {
        return Ok(Cow::Borrowed(req.method));
    }
    let headers = req
        .headers
        .iter()
        .filter(|(name, _)| {
            OVERRIDE_HEADERS
                .iter()
                .any(|o| names::same(name.as_bytes(), o.as_bytes()))
        })
        .map(|(_, value)| Cow::Borrowed(value.as_slice()));
    let params = req
        .query()
        .into_iter()
        .flat_map(|q| q.split(['&', ';']))
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .filter(|(name, _)| names::same_param(name.as_bytes(), OVERRIDE_PARAM))
        .map(|(_, value)| names::decoded(value.as_bytes()));
    let mut named: Option<String> = None;
    for value in headers.chain(params) {
        let method = value.trim_ascii();
        if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
            return Err(Reason::AmbiguousMethodOverride);
        }
        let method = String::from_utf8_lossy(method).to_ascii_uppercase();
        match &named {
            Some(seen) if *seen != method => return Err(Reason::AmbiguousMethodOverride),
            Some(_) => {}
            None => named = Some(method),
        }
    }
    Ok(named.map_or(Cow::Borrowed(req.method), Cow::Owned))
}

/// RFC 9110 `tchar`: what a method name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use serde_json::json;

    fn settings(edit: impl FnOnce(&mut serde_json::Value)) -> Settings {
        let mut config = json!({
            "providers": {
                "p": {
                    "issuer": "https://issuer.test",
                    "remote_jwks": {"http_uri": {"uri": "http://idp/jwks", "cluster": "idp"}},
                    "from_params": ["access_token"],
                    "claim_to_headers": [{"claim_name": "tenant", "header_name": "x-tenant"}],
                    "forward_payload_header": "x-jwt-payload"
                }
            },
            "rules": [{"match": {"prefix": "/"}, "requires": {}}]
        });
        edit(&mut config);
        parse(config.to_string().as_bytes()).unwrap()
    }

    fn headers(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn view<'a>(method: &'a str, path: &'a str, h: &'a [(String, Vec<u8>)]) -> RequestView<'a> {
        RequestView {
            method,
            path,
            headers: h,
            client_ip: None,
            received_us: 0,
        }
    }

    fn removed(edits: &[HeaderEdit]) -> Vec<&str> {
        edits
            .iter()
            .filter_map(|e| match e {
                HeaderEdit::Remove(n) => Some(n.as_str()),
                HeaderEdit::Set(..) => None,
            })
            .collect()
    }

    /// Defect: `x_tollgate_subject: admin` reached the upstream next to the
    /// real `x-tollgate-subject`, and CGI/WSGI upstreams read both as one.
    #[test]
    fn identity_look_alikes_are_removed_under_every_spelling() {
        let s = settings(|_| {});
        let h = headers(&[
            ("x_tollgate_subject", "admin"),
            ("x_tollgate-subject", "admin"),
            ("x-tollgate_scopes", "admin"),
            ("x.tollgate.tenant", "evil"),
            ("x-tollgate-subject", "admin"),
            ("x_tenant", "evil"),
            ("x-tenant", "evil"),
            ("x-jwt_payload", "e30"),
            ("x-tollgatex", "kept"),
            ("x-tenants", "kept"),
            ("accept", "kept"),
        ]);
        assert_eq!(
            removed(&purge(&view("GET", "/", &h), &s)),
            [
                "x_tollgate_subject",
                "x_tollgate-subject",
                "x-tollgate_scopes",
                "x.tollgate.tenant",
                "x-tollgate-subject",
                "x_tenant",
                "x-tenant",
                "x-jwt_payload",
            ]
        );
        // A custom prefix is folded the same way.
        let s = settings(|c| c["identity"] = json!({"header_prefix": "X-Auth-"}));
        let h = headers(&[("x_auth_user", "admin"), ("x-tollgate-subject", "kept")]);
        assert_eq!(removed(&purge(&view("GET", "/", &h), &s)), ["x_auth_user"]);
    }

    /// Defect: override headers reached the upstream while the filter had
    /// authorised the real method.
    #[test]
    fn method_overrides_are_stripped_by_default() {
        let s = settings(|_| {});
        assert_eq!(s.method_override, MethodOverride::Strip);
        let h = headers(&[
            ("x-http-method-override", "DELETE"),
            ("x-http-method", "DELETE"),
            ("x-method-override", "DELETE"),
            ("x_http_method_override", "DELETE"),
            ("accept", "kept"),
        ]);
        let edits = purge(&view("POST", "/a?_method=DELETE&x=1&_METHOD=PUT", &h), &s);
        assert_eq!(
            removed(&edits),
            [
                "x-http-method-override",
                "x-http-method",
                "x-method-override",
                "x_http_method_override"
            ]
        );
        assert!(edits.contains(&HeaderEdit::Set(":path".into(), "/a?x=1".into())));
        let req = view("POST", "/a?_method=DELETE", &h);
        assert_eq!(method_for_rules(&req, s.method_override).unwrap(), "POST");
    }

    #[test]
    fn authorize_matches_rules_on_the_overriding_method() {
        let s = settings(|c| c["method_override"] = json!("authorize"));
        let h = headers(&[("x-http-method-override", " delete ")]);
        let req = view("POST", "/a", &h);
        assert!(removed(&purge(&req, &s)).is_empty(), "forwarded");
        assert_eq!(method_for_rules(&req, s.method_override).unwrap(), "DELETE");
        let req = view("POST", "/a?_method=Delete", &h);
        assert_eq!(method_for_rules(&req, s.method_override).unwrap(), "DELETE");
        let req = view("POST", "/a?x=1", &[]);
        assert_eq!(method_for_rules(&req, s.method_override).unwrap(), "POST");
        for (headers_sent, path) in [
            (
                vec![
                    ("x-http-method-override", "DELETE"),
                    ("x-http-method", "PUT"),
                ],
                "/a",
            ),
            (vec![("x-http-method-override", "DELETE")], "/a?_method=PUT"),
            (vec![("x-http-method-override", "PUT, DELETE")], "/a"),
            (vec![("x-http-method-override", "")], "/a"),
            (vec![], "/a?_method=%00"),
        ] {
            let h = headers(&headers_sent);
            let req = view("POST", path, &h);
            assert_eq!(
                method_for_rules(&req, s.method_override),
                Err(Reason::AmbiguousMethodOverride),
                "{headers_sent:?} {path}"
            );
        }
    }

    #[test]
    fn unknown_method_override_setting_is_refused() {
        let mut config = json!({
            "providers": {"p": {"issuer": "i", "remote_jwks": {"http_uri": {"uri": "http://idp/jwks", "cluster": "idp"}}}},
            "rules": [],
            "method_override": "allow"
        });
        let e = parse(config.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field, "method_override");
        assert!(e.message.contains("`strip`"), "{e}");
        config["method_override"] = json!("strip");
        assert!(parse(config.to_string().as_bytes()).is_ok());
    }
}
