//! Claim paths: how rules, headers and limits name a claim, nested or not.
//!
//! A path is claim names separated by `.`, each name bare or in double quotes:
//!
//! * `tenant`: the top-level claim `tenant`;
//! * `realm_access.roles`: `roles` inside the object `realm_access` (Keycloak);
//! * `resource_access."mobile-app".roles`, `resource_access.mobile-app.roles`;
//! * `"https://example.com/roles"`: one claim whose name holds dots (Auth0).
//!
//! Inside quotes, `\"` and `\\` stand for `"` and `\`. Bare names may hold
//! anything but `.`, `"`, `\`, `:`, `/` and white space: a URL-named claim left
//! bare would otherwise be split at its dots and silently never match, so it
//! must be quoted. A path that does not parse is a configuration error.

use serde_json::{Map, Value};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    segments: Vec<String>,
}

impl ClaimPath {
    pub fn parse(text: &str) -> Result<ClaimPath, String> {
        let mut segments = Vec::new();
        let mut chars = text.chars().peekable();
        loop {
            let mut name = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        None => return Err("an unclosed quote".to_string()),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => name.push(c),
                            _ => {
                                return Err(
                                    r#"only \" and \\ are escapes inside quotes"#.to_string()
                                )
                            }
                        },
                        Some(c) => name.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    if matches!(c, '"' | '\\' | ':' | '/') || c.is_whitespace() || c.is_control() {
                        return Err(format!(
                            "{c:?} in a bare claim name: quote the name, as in \"https://example.com/roles\""
                        ));
                    }
                    name.push(c);
                    chars.next();
                }
            }
            if name.is_empty() {
                return Err("an empty claim name".to_string());
            }
            segments.push(name);
            match chars.next() {
                None => return Ok(ClaimPath { segments }),
                Some('.') => {}
                Some(c) => return Err(format!("{c:?} after a quoted name: expected `.`")),
            }
        }
    }

    /// The claim a path names, if the token has it.
    pub fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.segments.split_first()?;
        rest.iter().try_fold(claims.get(first)?, |value, name| {
            value.as_object()?.get(name)
        })
    }

    /// The top-level claim the path starts at: what a cached token must keep.
    pub fn top(&self) -> &str {
        self.segments.first().map_or("", String::as_str)
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            if s.chars()
                .any(|c| matches!(c, '.' | '"' | '\\') || c.is_whitespace())
            {
                write!(f, "\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))?;
            } else {
                f.write_str(s)?;
            }
        }
        Ok(())
    }
}

/// The strings a claim holds: an array of strings, or a space-delimited string
/// (`scope`, and how some issuers write roles).
pub fn string_set(value: &Value) -> Vec<&str> {
    match value {
        Value::String(s) => s.split(' ').filter(|s| !s.is_empty()).collect(),
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(s: &str) -> ClaimPath {
        ClaimPath::parse(s).unwrap()
    }

    #[test]
    fn nested_and_quoted_names() {
        let claims = json!({
            "tenant": "acme",
            "realm_access": {"roles": ["admin", "user"]},
            "resource_access": {"mobile-app": {"roles": ["reader"]}, "a.b": {"roles": ["x"]}},
            "https://example.com/roles": ["editor"],
            "odd\"name": 1
        });
        let claims = claims.as_object().unwrap();
        assert_eq!(path("tenant").lookup(claims), Some(&json!("acme")));
        assert_eq!(
            path("realm_access.roles").lookup(claims),
            Some(&json!(["admin", "user"]))
        );
        assert_eq!(
            path("resource_access.mobile-app.roles").lookup(claims),
            Some(&json!(["reader"]))
        );
        assert_eq!(
            path(r#"resource_access."mobile-app".roles"#).lookup(claims),
            Some(&json!(["reader"]))
        );
        assert_eq!(
            path(r#"resource_access."a.b".roles"#).lookup(claims),
            Some(&json!(["x"]))
        );
        assert_eq!(
            path(r#""https://example.com/roles""#).lookup(claims),
            Some(&json!(["editor"]))
        );
        assert_eq!(path(r#""odd\"name""#).lookup(claims), Some(&json!(1)));
        assert_eq!(path("realm_access.missing").lookup(claims), None);
        assert_eq!(path("tenant.deeper").lookup(claims), None);
        assert_eq!(
            path(r#"resource_access."a.b".roles"#).top(),
            "resource_access"
        );
        for p in [
            "tenant",
            r#"resource_access."a.b".roles"#,
            r#""https://example.com/roles""#,
        ] {
            assert_eq!(path(p).to_string(), p, "round trip");
        }
    }

    #[test]
    fn malformed_paths_are_errors() {
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            r#""open"#,
            r#""a"b"#,
            r#""a\n""#,
            "a b",
            "a\"b",
            "a\\b",
            "https://example.com/roles",
        ] {
            assert!(ClaimPath::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ClaimPath::parse("https://example.com/roles")
            .unwrap_err()
            .contains("quote the name"));
    }

    #[test]
    fn string_sets() {
        assert_eq!(string_set(&json!("a  b")), ["a", "b"]);
        assert_eq!(string_set(&json!(["a", 1, "b"])), ["a", "b"]);
        assert!(string_set(&json!({"a": 1})).is_empty());
    }
}
