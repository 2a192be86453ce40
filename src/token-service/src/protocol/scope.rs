//! OAuth scopes (RFC 6749 §3.3): parsing, validation and the subset rule.
//!
//! Scopes are stored and sent as one space-delimited string; inside the service they
//! are a sorted set so that duplicates vanish and tokens list them in a stable order.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ValueRef};
use serde::{Serialize, Serializer};

/// The scope the admin API needs. Privileged: never advertised, and a user's token
/// carries it only if the user may hold it.
pub const ADMIN: &str = "tollgate:admin";

/// A set of valid scope tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet(BTreeSet<String>);

/// A scope string containing a character RFC 6749 §3.3 does not allow in a scope token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidScope;

impl fmt::Display for InvalidScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "scopes are space-delimited tokens of printable ASCII without quotes or backslashes",
        )
    }
}

impl std::error::Error for InvalidScope {}

impl ScopeSet {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn is_subset(&self, other: &ScopeSet) -> bool {
        self.0.is_subset(&other.0)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// The scopes in both sets.
    pub fn intersection(&self, other: &ScopeSet) -> ScopeSet {
        ScopeSet(self.0.intersection(&other.0).cloned().collect())
    }

    /// The scopes in either set.
    pub fn union(&self, other: &ScopeSet) -> ScopeSet {
        ScopeSet(self.0.union(&other.0).cloned().collect())
    }

    /// This set less `scopes`.
    pub fn without(&self, scopes: &[&str]) -> ScopeSet {
        ScopeSet(
            self.0
                .iter()
                .filter(|scope| !scopes.contains(&scope.as_str()))
                .cloned()
                .collect(),
        )
    }
}

impl FromStr for ScopeSet {
    type Err = InvalidScope;

    /// Splits on spaces; repeated spaces are tolerated rather than rejected.
    fn from_str(scopes: &str) -> Result<Self, Self::Err> {
        scopes
            .split(' ')
            .filter(|token| !token.is_empty())
            .map(|token| {
                if token.bytes().all(is_scope_char) {
                    Ok(token.to_owned())
                } else {
                    Err(InvalidScope)
                }
            })
            .collect::<Result<_, _>>()
            .map(ScopeSet)
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, scope) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            f.write_str(scope)?;
        }
        Ok(())
    }
}

/// A JSON array of scope tokens, in order.
impl Serialize for ScopeSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

/// Read from the space-delimited TEXT it is stored as.
impl FromSql for ScopeSet {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|err| FromSqlError::Other(Box::new(err)))
    }
}

/// `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`
fn is_scope_char(byte: u8) -> bool {
    matches!(byte, 0x21 | 0x23..=0x5B | 0x5D..=0x7E)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(s: &str) -> ScopeSet {
        s.parse().expect("valid scopes")
    }

    #[test]
    fn parses_sorts_and_deduplicates() {
        assert_eq!(
            scopes("write:data  read:data write:data").to_string(),
            "read:data write:data"
        );
        assert!(scopes("").is_empty());
        assert!(scopes("   ").is_empty());
    }

    #[test]
    fn rejects_characters_outside_scope_token() {
        for bad in ["a\"b", "a\\b", "caf\u{e9}", "tab\there", "new\nline"] {
            assert_eq!(bad.parse::<ScopeSet>(), Err(InvalidScope), "{bad:?}");
        }
    }

    #[test]
    fn subset_rule() {
        let allowed = scopes("read:data write:data");
        assert!(scopes("read:data").is_subset(&allowed));
        assert!(scopes("").is_subset(&allowed));
        assert!(!scopes("read:data admin").is_subset(&allowed));
        assert_eq!(
            scopes("admin read:data").intersection(&allowed),
            scopes("read:data")
        );
        assert_eq!(
            scopes("a b").union(&scopes("b c")).without(&["a"]),
            scopes("b c")
        );
    }
}
