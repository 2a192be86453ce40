//! Access rules: which requests need what. An ordered list, first match wins.
//!
//! Paths are matched in normal form, query removed (`path::find_rule`), not
//! as the HTTP connection manager happens to hand them over.

use crate::claims::{string_set, ClaimPath};
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

/// What a rule needs of a set of names (scopes, roles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetRequirement {
    AllOf(Vec<String>),
    AnyOf(Vec<String>),
}

impl SetRequirement {
    pub fn satisfied_by(&self, have: &[&str]) -> bool {
        match self {
            SetRequirement::AllOf(need) => need.iter().all(|n| have.contains(&n.as_str())),
            SetRequirement::AnyOf(need) => need.iter().any(|n| have.contains(&n.as_str())),
        }
    }

    /// The names, space-separated (a 403's `scope`).
    pub fn names(&self) -> String {
        match self {
            SetRequirement::AllOf(s) | SetRequirement::AnyOf(s) => s.join(" "),
        }
    }

    /// For a person: "all of: a, b" or "one of: a, b".
    pub fn describe(&self) -> String {
        match self {
            SetRequirement::AllOf(s) => format!("all of: {}", s.join(", ")),
            SetRequirement::AnyOf(s) => format!("one of: {}", s.join(", ")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClaimCheck {
    /// The claim equals the value.
    Equals(ClaimPath, Value),
    /// The claim is an array holding the value, or a space-delimited string
    /// listing it, or the value itself.
    Contains(ClaimPath, Value),
}

#[derive(Debug, Clone)]
pub struct Requirement {
    /// Indexes into `Settings::providers`; `None` accepts any provider.
    pub providers: Option<Vec<ProviderId>>,
    pub scopes: Option<SetRequirement>,
    /// Roles, from the provider's `role_claims`.
    pub roles: Option<SetRequirement>,
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
            roles: None,
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

    /// What a 403 for `reason` names: the scopes to ask for, or the roles the
    /// rule needs (never what the token holds).
    pub fn needed(&self, reason: Reason) -> Option<String> {
        match reason {
            Reason::InsufficientScope => self.scopes.as_ref().map(SetRequirement::names),
            Reason::MissingRole => self.roles.as_ref().map(SetRequirement::describe),
            _ => None,
        }
    }

    /// Least-privilege check on a verified identity.
    pub fn authorize(
        &self,
        scopes: &[&str],
        roles: &[&str],
        claims: &Map<String, Value>,
    ) -> Result<(), Reason> {
        if self
            .scopes
            .as_ref()
            .is_some_and(|need| !need.satisfied_by(scopes))
        {
            return Err(Reason::InsufficientScope);
        }
        if self
            .roles
            .as_ref()
            .is_some_and(|need| !need.satisfied_by(roles))
        {
            return Err(Reason::MissingRole);
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
        ClaimCheck::Equals(path, want) => path.lookup(claims) == Some(want),
        ClaimCheck::Contains(path, want) => match path.lookup(claims) {
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

/// The token's scopes, from the first of `paths` it carries: a
/// space-delimited string (`scope`, RFC 8693/9068) or an array (`scp`).
pub fn scopes_of<'a>(claims: &'a Map<String, Value>, paths: &[ClaimPath]) -> Vec<&'a str> {
    paths
        .iter()
        .filter_map(|p| p.lookup(claims))
        .find(|v| v.is_string() || v.is_array())
        .map(string_set)
        .unwrap_or_default()
}

/// The token's roles: every value under every one of `paths` it carries
/// (realm and client roles together, say), without repeats.
pub fn roles_of(claims: &Map<String, Value>, paths: &[ClaimPath]) -> Vec<String> {
    let mut roles: Vec<String> = Vec::new();
    for role in paths
        .iter()
        .filter_map(|p| p.lookup(claims))
        .flat_map(string_set)
    {
        if !roles.iter().any(|r| r == role) {
            roles.push(role.to_string());
        }
    }
    roles
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

    fn paths(names: &[&str]) -> Vec<ClaimPath> {
        names.iter().map(|n| ClaimPath::parse(n).unwrap()).collect()
    }

    fn path(name: &str) -> ClaimPath {
        ClaimPath::parse(name).unwrap()
    }

    #[test]
    fn scopes_from_string_or_array() {
        let names = paths(&["scope", "scp"]);
        let c = json!({"scope": "read:data  write:data"});
        assert_eq!(
            scopes_of(c.as_object().unwrap(), &names),
            vec!["read:data", "write:data"]
        );
        let c = json!({"scp": ["a", 1, "b"]});
        assert_eq!(scopes_of(c.as_object().unwrap(), &names), vec!["a", "b"]);
        let c = json!({"scope": 5});
        assert!(scopes_of(c.as_object().unwrap(), &names).is_empty());
        // Entra ID: `scp` is a space-delimited string.
        let c = json!({"scp": "Data.Read Data.Write"});
        assert_eq!(
            scopes_of(c.as_object().unwrap(), &names),
            vec!["Data.Read", "Data.Write"]
        );
    }

    #[test]
    fn roles_from_every_listed_claim() {
        let c = json!({"realm_access": {"roles": ["admin", "user"]},
                       "resource_access": {"app": {"roles": ["user", "editor"]}}});
        let roles = roles_of(
            c.as_object().unwrap(),
            &paths(&["realm_access.roles", "resource_access.app.roles", "roles"]),
        );
        assert_eq!(roles, ["admin", "user", "editor"]);
    }

    #[test]
    fn scope_and_role_requirements() {
        let claims = Map::new();
        let all = Requirement {
            scopes: Some(SetRequirement::AllOf(vec!["a".into(), "b".into()])),
            ..Default::default()
        };
        assert_eq!(all.authorize(&["a", "b", "c"], &[], &claims), Ok(()));
        assert_eq!(
            all.authorize(&["a"], &[], &claims),
            Err(Reason::InsufficientScope)
        );
        assert_eq!(
            all.needed(Reason::InsufficientScope).as_deref(),
            Some("a b")
        );
        let any = Requirement {
            scopes: Some(SetRequirement::AnyOf(vec!["a".into(), "b".into()])),
            ..Default::default()
        };
        assert_eq!(any.authorize(&["b"], &[], &claims), Ok(()));
        assert_eq!(
            any.authorize(&[], &[], &claims),
            Err(Reason::InsufficientScope)
        );
        let admin = Requirement {
            roles: Some(SetRequirement::AnyOf(vec!["admin".into(), "owner".into()])),
            ..Default::default()
        };
        assert_eq!(admin.authorize(&[], &["owner"], &claims), Ok(()));
        assert_eq!(
            admin.authorize(&["admin"], &["user"], &claims),
            Err(Reason::MissingRole)
        );
        assert_eq!(
            admin.needed(Reason::MissingRole).as_deref(),
            Some("one of: admin, owner")
        );
    }

    #[test]
    fn claim_requirements() {
        let claims = json!({"tenant": "acme", "roles": ["admin", "dev"], "groups": "ops sre",
                            "level": 3, "org": {"unit": "sales"}});
        let claims = claims.as_object().unwrap();
        let req = |c: ClaimCheck| Requirement {
            claims: vec![c],
            ..Default::default()
        };
        let ok = |c| req(c).authorize(&[], &[], claims).is_ok();
        assert!(ok(ClaimCheck::Equals(path("tenant"), json!("acme"))));
        assert!(!ok(ClaimCheck::Equals(path("tenant"), json!("other"))));
        assert!(!ok(ClaimCheck::Equals(path("missing"), json!("acme"))));
        assert!(ok(ClaimCheck::Equals(path("level"), json!(3))));
        assert!(ok(ClaimCheck::Contains(path("roles"), json!("admin"))));
        assert!(!ok(ClaimCheck::Contains(path("roles"), json!("root"))));
        assert!(ok(ClaimCheck::Contains(path("groups"), json!("sre"))));
        assert!(!ok(ClaimCheck::Contains(path("groups"), json!("op"))));
        assert!(ok(ClaimCheck::Equals(path("org.unit"), json!("sales"))));
        assert_eq!(
            req(ClaimCheck::Equals(path("tenant"), json!("x"))).authorize(&[], &[], claims),
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
