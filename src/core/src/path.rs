//! The path rules are matched on, whatever the HTTP connection manager's
//! `normalize_path` and `merge_slashes` say.
//!
//! A path's normal form: escapes of unreserved characters decoded (RFC 3986
//! §6.2.2.2) and other escapes upper-cased, `;` parameters cut from every
//! segment (as Tomcat, Jetty and Spring do: `..;` is `..`), repeated slashes
//! merged, and `.` and `..` segments removed (RFC 3986 §5.2.4). Rules match
//! the normal form.
//!
//! Upstreams apply some of those steps and not others, so one raw path can
//! mean several paths. A request is refused (`400 ambiguous_path`) when any
//! reading of it (the raw path, or the path after any combination of the
//! steps) selects another rule than its normal form does, and whenever it
//! holds what has no agreed reading at all: an encoded slash or backslash
//! (`%2F`, `%5C`), a backslash, an encoded `%` (`%25`, which a decoder that
//! runs twice turns into another escape), a malformed escape, or a control
//! character, raw or encoded. A path already in normal form costs one scan.

use crate::decision::Reason;
use crate::policy::{self, Rule};
use std::borrow::Cow;

/// A set of normalisation steps, one bit each.
#[derive(Clone, Copy)]
struct Steps(u8);

impl Steps {
    const DECODE: u8 = 1;
    const PARAMS: u8 = 2;
    const MERGE: u8 = 4;
    const DOTS: u8 = 8;
    const ALL: Steps = Steps(15);

    fn has(self, step: u8) -> bool {
        self.0 & step != 0
    }
}

/// The first rule matching `method` and the raw path (query removed), if
/// every reading of the path agrees on it.
pub fn find_rule<'r>(
    rules: &'r [Rule],
    method: &str,
    raw: &str,
) -> Result<Option<(usize, &'r Rule)>, Reason> {
    refuse_unreadable(raw)?;
    if is_normal(raw) {
        return Ok(policy::find_rule(rules, method, raw));
    }
    let chosen = policy::find_rule(rules, method, &normalize_with(raw, Steps::ALL));
    for steps in 0..Steps::ALL.0 {
        let reading = normalize_with(raw, Steps(steps));
        let other = policy::find_rule(rules, method, &reading);
        let same = match (other, chosen) {
            (Some((a, _)), Some((b, _))) => a == b,
            (None, None) => true,
            _ => false,
        };
        if !same {
            return Err(Reason::AmbiguousPath);
        }
    }
    Ok(chosen)
}

/// The normal form of a path, or `Err` if it has no agreed reading.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, Reason> {
    refuse_unreadable(raw)?;
    Ok(normalize_with(raw, Steps::ALL))
}

/// Rule paths are written in normal form, the form requests are matched in.
pub fn check_rule_path(p: &str) -> Result<(), String> {
    match normalize(p) {
        Ok(normal) if normal == p => Ok(()),
        Ok(normal) => Err(format!(
            "write it in normal form, `{normal}`: requests are matched on their normalised path"
        )),
        Err(_) => Err(
            "holds an encoded slash, backslash or `%`, a malformed escape or a control character: requests with those are refused".to_string(),
        ),
    }
}

fn refuse_unreadable(raw: &str) -> Result<(), Reason> {
    let bytes = raw.as_bytes();
    if bytes.is_empty() {
        return Err(Reason::AmbiguousPath);
    }
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let refused = match b {
            b'%' => match escape(bytes.get(i + 1..i + 3)) {
                Some(decoded) => matches!(decoded, b'/' | b'\\' | b'%') || is_control(decoded),
                None => true,
            },
            b'\\' => true,
            other => is_control(other),
        };
        if refused {
            return Err(Reason::AmbiguousPath);
        }
        i += if b == b'%' { 3 } else { 1 };
    }
    Ok(())
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Whether the path is its own normal form, decided without allocating.
fn is_normal(raw: &str) -> bool {
    raw.starts_with('/')
        && !raw.contains(['%', ';'])
        && !raw.contains("//")
        && !raw.contains("/./")
        && !raw.contains("/../")
        && !raw.ends_with("/.")
        && !raw.ends_with("/..")
}

/// The path after `steps`; a path not starting with `/` reads as if it did.
fn normalize_with(raw: &str, steps: Steps) -> Cow<'_, str> {
    let body = raw.strip_prefix('/').unwrap_or(raw);
    let count = body.split('/').count();
    let mut kept: Vec<Cow<'_, str>> = Vec::with_capacity(count);
    for (i, segment) in body.split('/').enumerate() {
        let last = i + 1 == count;
        let mut segment = if steps.has(Steps::DECODE) {
            decode_unreserved(segment)
        } else {
            Cow::Borrowed(segment)
        };
        if steps.has(Steps::PARAMS) {
            if let Some(at) = segment.find(';') {
                segment = Cow::Owned(segment.get(..at).unwrap_or_default().to_string());
            }
        }
        if steps.has(Steps::DOTS) && (segment == "." || segment == "..") {
            if segment == ".." {
                kept.pop();
            }
            if last {
                kept.push(Cow::Borrowed(""));
            }
            continue;
        }
        if steps.has(Steps::MERGE) && segment.is_empty() && !last {
            continue;
        }
        kept.push(segment);
    }
    let mut path = String::with_capacity(raw.len() + 1);
    for segment in &kept {
        path.push('/');
        path.push_str(segment);
    }
    if path == raw {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(path)
    }
}

/// Decodes escapes of unreserved characters and upper-cases the others.
fn decode_unreserved(segment: &str) -> Cow<'_, str> {
    if !segment.contains('%') {
        return Cow::Borrowed(segment);
    }
    let mut out = String::with_capacity(segment.len());
    let mut rest = segment;
    while let Some(at) = rest.find('%') {
        out.push_str(rest.get(..at).unwrap_or_default());
        let after = rest.get(at + 1..).unwrap_or_default();
        match (escape(after.as_bytes().get(..2)), after.get(2..)) {
            (Some(b), Some(tail)) => {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                    out.push(char::from(b));
                } else {
                    out.push('%');
                    out.push_str(&after.get(..2).unwrap_or_default().to_ascii_uppercase());
                }
                rest = tail;
            }
            // Malformed: kept as it is (refused before matching anyway).
            _ => {
                out.push('%');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The byte two hex digits stand for.
fn escape(hex: Option<&[u8]>) -> Option<u8> {
    let [hi, lo] = hex? else { return None };
    let digit = |h: &u8| char::from(*h).to_digit(16);
    Some((digit(hi)? * 16 + digit(lo)?) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PathMatch, Requirement};

    fn normal(raw: &str) -> String {
        normalize(raw)
            .unwrap_or_else(|_| panic!("{raw} refused"))
            .into_owned()
    }

    /// The cases of Envoy's own normaliser (test/common/http/path_utility_test.cc:
    /// `normalize_path` and `merge_slashes`), with the same results except
    /// where noted.
    #[test]
    fn envoy_normalize_path_cases() {
        for (raw, expected) in [
            ("/xyz", "/xyz"),
            ("/x/y/z", "/x/y/z"),
            ("/a/b/../c", "/a/c"),
            ("/a/b/./c", "/a/b/c"),
            ("a/b/../c", "/a/c"),
            ("/a/b/../../../../c", "/c"),
            ("/a/b/%2E%2E/c", "/a/c"),
            ("/a/b/%2e%2e/c", "/a/c"),
            ("/a/b/%2E./c", "/a/c"),
            ("/a/b/%2E/c", "/a/b/c"),
            ("..", "/"),
            ("/../a/b", "/a/b"),
            ("/./a/b", "/a/b"),
            ("/A/B/C", "/A/B/C"),
            // Envoy keeps escapes as sent; here they are upper-cased (RFC 3986 §6.2.2.1).
            ("/%c0%af", "/%C0%AF"),
        ] {
            assert_eq!(normal(raw), expected, "{raw}");
        }
        // Envoy refuses these too.
        for raw in [
            "/xyz/.%00../abc",
            "/xyz/%00.%00./abc",
            "/xyz/AAAAA%%0000/abc",
        ] {
            assert_eq!(normalize(raw), Err(Reason::AmbiguousPath), "{raw}");
        }
        // Envoy turns `\` into `/` and keeps `%5c`, `%25` and `%2F`
        // (`path_with_escaped_slashes_action` decides on the last): upstreams
        // read them in different ways, so they are refused here.
        for raw in ["/a/..\\c", "/%5c%25", "/a/%2F%2f/c", "/a%5Cb", "/100%25"] {
            assert_eq!(normalize(raw), Err(Reason::AmbiguousPath), "{raw}");
        }
    }

    #[test]
    fn envoy_merge_slashes_cases() {
        for (raw, expected) in [
            ("a//b/c", "/a/b/c"),
            ("/a//b/c/", "/a/b/c/"),
            ("a//b/c/", "/a/b/c/"),
            ("/a", "/a"),
            ("//a/b/c", "/a/b/c"),
            ("/a//b/c", "/a/b/c"),
            ("/a/b/c//", "/a/b/c/"),
            ("/a///b/c", "/a/b/c"),
            ("/a////b/c", "/a/b/c"),
            ("/", "/"),
        ] {
            assert_eq!(normal(raw), expected, "{raw}");
        }
        assert_eq!(normalize(""), Err(Reason::AmbiguousPath));
    }

    #[test]
    fn parameters_escapes_and_controls() {
        for (raw, expected) in [
            ("/public/..;/admin/x", "/admin/x"),
            ("/admin;jsessionid=1/x", "/admin/x"),
            ("/a/;x/b", "/a/b"),
            ("/%61dmin/%7Euser", "/admin/~user"),
            ("/a/%3b/b", "/a/%3B/b"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/café", "/café"),
        ] {
            assert_eq!(normal(raw), expected, "{raw}");
        }
        for raw in [
            "/a%", "/a%2", "/a%zz", "/a\tb", "/a%0Ab", "/a%7f", "/a\u{7f}",
        ] {
            assert_eq!(normalize(raw), Err(Reason::AmbiguousPath), "{raw:?}");
        }
    }

    fn rules() -> Vec<Rule> {
        [
            PathMatch::Prefix("/admin/".into()),
            PathMatch::Prefix("/public/".into()),
            PathMatch::Exact("/data".into()),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, path)| Rule {
            name: format!("rules[{i}]"),
            path,
            methods: Vec::new(),
            limits: Vec::new(),
            requirement: Requirement::default(),
        })
        .collect()
    }

    fn rule_index(rules: &[Rule], raw: &str) -> Result<Option<usize>, Reason> {
        find_rule(rules, "GET", raw).map(|r| r.map(|(i, _)| i))
    }

    /// Defect: without `normalize_path` and `merge_slashes` on the HTTP
    /// connection manager, these matched the anonymous `/public/` rule.
    #[test]
    fn traversal_out_of_a_rule_is_refused() {
        let rules = rules();
        for raw in [
            "/public/../admin/x",
            "/public/%2e%2e/admin/x",
            "/public/%2E%2E/admin/x",
            "/public/..;/admin/x",
            "/public/.%2e/admin/x",
            "/public//../admin/x",
            "/public/x/../../admin/x",
            "//admin/x",
            "/admin;x/y",
            "/public/../data",
            "/public/%2F../admin/x",
            "/public/..%5cadmin/x",
        ] {
            let matched = rule_index(&rules, raw);
            assert!(
                matched == Err(Reason::AmbiguousPath) || matched == Ok(Some(0)),
                "{raw} matched {matched:?}"
            );
            assert_ne!(matched, Ok(Some(1)), "{raw} reached the public rule");
        }
        assert_eq!(
            rule_index(&rules, "/public/../admin/x"),
            Err(Reason::AmbiguousPath)
        );
        assert_eq!(rule_index(&rules, "/data/"), Ok(None));
    }

    #[test]
    fn readings_that_agree_are_allowed() {
        let rules = rules();
        for (raw, rule) in [
            ("/public/a/../b", Some(1)),
            ("/public/./a", Some(1)),
            ("/public//a", Some(1)),
            ("/public/%61", Some(1)),
            ("/admin/a/../b", Some(0)),
            ("/data", Some(2)),
            ("/other/../elsewhere", None),
        ] {
            assert_eq!(rule_index(&rules, raw), Ok(rule), "{raw}");
        }
    }

    #[test]
    fn rule_paths_must_be_normal() {
        let config = |prefix: &str| {
            serde_json::json!({
                "providers": {"p": {"issuer": "i", "remote_jwks": {"http_uri": {"uri": "http://idp/jwks", "cluster": "idp"}}}},
                "rules": [{"match": {"prefix": prefix}, "requires": {}}]
            })
            .to_string()
        };
        for ok in ["/", "/public/", "/a/b", "/caf%C3%A9/"] {
            assert!(crate::config::parse(config(ok).as_bytes()).is_ok(), "{ok}");
        }
        for (bad, says) in [
            ("/a/../b", "`/b`"),
            ("/a//b/", "`/a/b/`"),
            ("/a;v=1/", "`/a/`"),
            ("/%61/", "`/a/`"),
            ("/a%2Fb", "encoded slash"),
        ] {
            let e = crate::config::parse(config(bad).as_bytes()).unwrap_err();
            assert_eq!(e.field, "rules[0].match.prefix", "{bad}");
            assert!(e.message.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(normalize("/a/b/c"), Ok(Cow::Borrowed(_))));
        assert!(is_normal("/a/b.c/..d/"));
        assert!(!is_normal("/a/./b"));
    }
}
