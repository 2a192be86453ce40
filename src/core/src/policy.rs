//! Access rules: which requests need what. An ordered list, first match wins.
//!
//! Paths are matched as Envoy hands them over after its own normalisation
//! (`normalize_path`, `merge_slashes`), with the query string removed.

use crate::config::ProviderId;
use crate::decision::Reason;
use crate::ratelimit::PolicyId;
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// `/users/*/orders`: `*` stands for exactly one non-empty segment.
    Template(Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Any,
}

impl PathMatch {
    pub fn template(t: &str) -> Result<PathMatch, String> {
        let segments = t
            .split('/')
            .skip(1)
            .map(|s| match s {
                "*" => Ok(Segment::Any),
                s if s.contains('*') => {
                    Err("`*` must stand alone for one whole path segment".to_string())
                }
                s => Ok(Segment::Literal(s.to_string())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PathMatch::Template(segments))
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Template(segments) => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let mut parts = rest.split('/');
                for seg in segments {
                    match (seg, parts.next()) {
                        (Segment::Any, Some(p)) if !p.is_empty() => {}
                        (Segment::Literal(l), Some(p)) if l == p => {}
                        _ => return false,
                    }
                }
                parts.next().is_none()
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// The configured name, else `rules[<index>]`.
    pub name: String,
    pub path: PathMatch,
    /// Empty: any method.
    pub methods: Vec<String>,
    /// Rate-limit policies (indexes into `RateLimits::policies`).
    pub limits: Vec<PolicyId>,
    pub requirement: Requirement,
}

impl Rule {
    pub fn matches(&self, method: &str, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && self.path.matches(path)
    }
}

/// The first rule that matches `method` and `path` (path without query), with
/// its index.
pub fn find_rule<'a>(rules: &'a [Rule], method: &str, path: &str) -> Option<(usize, &'a Rule)> {
    rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.matches(method, path))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeRequirement {
    AllOf(Vec<String>),
    AnyOf(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClaimCheck {
    /// The claim equals the value.
    Equals(String, Value),
    /// The claim is an array holding the value, or a space-delimited string
    /// listing it, or the value itself.
    Contains(String, Value),
}

#[derive(Debug, Clone)]
pub struct Requirement {
    /// Indexes into `Settings::providers`; `None` accepts any provider.
    pub providers: Option<Vec<ProviderId>>,
    pub scopes: Option<ScopeRequirement>,
    pub claims: Vec<ClaimCheck>,
    pub allow_anonymous: bool,
    pub accept_jwt: bool,
    pub accept_api_key: bool,
    /// Read API keys from the query string too (`api_keys.query_param`).
    pub api_key_in_query: bool,
}

impl Default for Requirement {
    fn default() -> Self {
        Requirement {
            providers: None,
            scopes: None,
            claims: Vec::new(),
            allow_anonymous: false,
            accept_jwt: true,
            accept_api_key: false,
            api_key_in_query: false,
        }
    }
}

impl Requirement {
    pub fn accepts_provider(&self, id: ProviderId) -> bool {
        self.providers.as_ref().is_none_or(|ids| ids.contains(&id))
    }

    /// The `scope` value of a 403 challenge: what the client should ask for.
    pub fn needed_scope(&self) -> Option<String> {
        match &self.scopes {
            Some(ScopeRequirement::AllOf(s)) | Some(ScopeRequirement::AnyOf(s)) => {
                Some(s.join(" "))
            }
            None => None,
        }
    }

    /// Least-privilege check on a verified identity.
    pub fn authorize(&self, scopes: &[&str], claims: &Map<String, Value>) -> Result<(), Reason> {
        let scopes_ok = match &self.scopes {
            None => true,
            Some(ScopeRequirement::AllOf(need)) => {
                need.iter().all(|n| scopes.contains(&n.as_str()))
            }
            Some(ScopeRequirement::AnyOf(need)) => {
                need.iter().any(|n| scopes.contains(&n.as_str()))
            }
        };
        if !scopes_ok {
            return Err(Reason::InsufficientScope);
        }
        if self.claims.iter().all(|c| claim_satisfies(c, claims)) {
            Ok(())
        } else {
            Err(Reason::ClaimMismatch)
        }
    }
}

fn claim_satisfies(check: &ClaimCheck, claims: &Map<String, Value>) -> bool {
    match check {
        ClaimCheck::Equals(name, want) => claims.get(name) == Some(want),
        ClaimCheck::Contains(name, want) => match claims.get(name) {
            Some(Value::Array(items)) => items.contains(want),
            Some(Value::String(s)) => match want {
                Value::String(w) => s.split(' ').any(|part| part == w),
                _ => false,
            },
            Some(v) => v == want,
            None => false,
        },
    }
}

/// The token's scopes, from the first of `claim_names` it carries: a
/// space-delimited string (`scope`, RFC 8693/9068) or an array (`scp`).
pub fn scopes_of<'a>(claims: &'a Map<String, Value>, claim_names: &[String]) -> Vec<&'a str> {
    for name in claim_names {
        match claims.get(name) {
            Some(Value::String(s)) => return s.split(' ').filter(|s| !s.is_empty()).collect(),
            Some(Value::Array(items)) => return items.iter().filter_map(Value::as_str).collect(),
            _ => {}
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(path: PathMatch, methods: &[&str]) -> Rule {
        Rule {
            name: "r".into(),
            path,
            methods: methods.iter().map(|m| m.to_string()).collect(),
            limits: Vec::new(),
            requirement: Requirement::default(),
        }
    }

    #[test]
    fn path_matching() {
        let exact = PathMatch::Exact("/data".into());
        assert!(exact.matches("/data"));
        assert!(!exact.matches("/data/"));
        assert!(!exact.matches("/datax"));
        let prefix = PathMatch::Prefix("/admin/".into());
        assert!(prefix.matches("/admin/users"));
        assert!(!prefix.matches("/admin"));
        let t = PathMatch::template("/users/*/orders").unwrap();
        assert!(t.matches("/users/42/orders"));
        assert!(!t.matches("/users//orders"));
        assert!(!t.matches("/users/42/orders/1"));
        assert!(!t.matches("/users/42"));
        assert!(PathMatch::template("/a/b*").is_err());
    }

    #[test]
    fn first_match_wins_and_methods_filter() {
        let rules = vec![
            rule(PathMatch::Exact("/data".into()), &["POST"]),
            rule(PathMatch::Prefix("/".into()), &[]),
        ];
        assert_eq!(find_rule(&rules, "POST", "/data").unwrap().0, 0);
        assert_eq!(find_rule(&rules, "GET", "/data").unwrap().0, 1);
        assert!(find_rule(&rules[..1], "GET", "/data").is_none());
    }

    #[test]
    fn scopes_from_string_or_array() {
        let names = vec!["scope".to_string(), "scp".to_string()];
        let c = json!({"scope": "read:data  write:data"});
        assert_eq!(
            scopes_of(c.as_object().unwrap(), &names),
            vec!["read:data", "write:data"]
        );
        let c = json!({"scp": ["a", 1, "b"]});
        assert_eq!(scopes_of(c.as_object().unwrap(), &names), vec!["a", "b"]);
        let c = json!({"scope": 5});
        assert!(scopes_of(c.as_object().unwrap(), &names).is_empty());
    }

    #[test]
    fn scope_requirements() {
        let claims = Map::new();
        let all = Requirement {
            scopes: Some(ScopeRequirement::AllOf(vec!["a".into(), "b".into()])),
            ..Default::default()
        };
        assert_eq!(all.authorize(&["a", "b", "c"], &claims), Ok(()));
        assert_eq!(
            all.authorize(&["a"], &claims),
            Err(Reason::InsufficientScope)
        );
        assert_eq!(all.needed_scope().as_deref(), Some("a b"));
        let any = Requirement {
            scopes: Some(ScopeRequirement::AnyOf(vec!["a".into(), "b".into()])),
            ..Default::default()
        };
        assert_eq!(any.authorize(&["b"], &claims), Ok(()));
        assert_eq!(any.authorize(&[], &claims), Err(Reason::InsufficientScope));
    }

    #[test]
    fn claim_requirements() {
        let claims =
            json!({"tenant": "acme", "roles": ["admin", "dev"], "groups": "ops sre", "level": 3});
        let claims = claims.as_object().unwrap();
        let req = |c: ClaimCheck| Requirement {
            claims: vec![c],
            ..Default::default()
        };
        let ok = |c| req(c).authorize(&[], claims).is_ok();
        assert!(ok(ClaimCheck::Equals("tenant".into(), json!("acme"))));
        assert!(!ok(ClaimCheck::Equals("tenant".into(), json!("other"))));
        assert!(!ok(ClaimCheck::Equals("missing".into(), json!("acme"))));
        assert!(ok(ClaimCheck::Equals("level".into(), json!(3))));
        assert!(ok(ClaimCheck::Contains("roles".into(), json!("admin"))));
        assert!(!ok(ClaimCheck::Contains("roles".into(), json!("root"))));
        assert!(ok(ClaimCheck::Contains("groups".into(), json!("sre"))));
        assert!(!ok(ClaimCheck::Contains("groups".into(), json!("op"))));
        assert_eq!(
            req(ClaimCheck::Equals("tenant".into(), json!("x"))).authorize(&[], claims),
            Err(Reason::ClaimMismatch)
        );
    }

    #[test]
    fn provider_restriction() {
        let open = Requirement::default();
        assert!(open.accepts_provider(ProviderId(3)));
        let only = Requirement {
            providers: Some(vec![ProviderId(1)]),
            ..Default::default()
        };
        assert!(only.accepts_provider(ProviderId(1)));
        assert!(!only.accepts_provider(ProviderId(0)));
    }
}
