//! Revocation lists polled from an issuer's feed: the `jti` of access tokens
//! revoked before they expire.
//!
//! Feed format (the token service's `GET /revocations`):
//! `{"revoked":[{"jti":"…","exp":1700000000}, …]}`. Entries that have already
//! expired are kept out: an expired token is refused anyway.

use std::collections::HashSet;
use tollgate_contract::revocation_feed::RevocationFeed;

/// Upper bound on entries kept from one feed, so a runaway feed cannot
/// exhaust a worker's memory.
pub const MAX_ENTRIES: usize = 200_000;

#[derive(Debug, Default)]
pub struct RevocationList {
    jtis: HashSet<String>,
}

impl RevocationList {
    /// Parses a feed document; `now` (seconds) drops entries already expired.
    pub fn parse(body: &[u8], now: u64) -> Result<RevocationList, String> {
        let feed: RevocationFeed =
            serde_json::from_slice(body).map_err(|e| format!("not a revocation feed ({e})"))?;
        if feed.revoked.len() > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} revoked tokens"));
        }
        let jtis = feed
            .revoked
            .into_iter()
            .filter(|e| e.exp.is_none_or(|exp| exp > now))
            .map(|e| e.jti)
            .collect();
        Ok(RevocationList { jtis })
    }

    pub fn contains(&self, jti: &str) -> bool {
        self.jtis.contains(jti)
    }

    pub fn len(&self) -> usize {
        self.jtis.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jtis.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_unexpired_jtis() {
        let body = br#"{"revoked":[{"jti":"a","exp":200},{"jti":"b","exp":50},{"jti":"c"}]}"#;
        let list = RevocationList::parse(body, 100).unwrap();
        assert!(list.contains("a"));
        assert!(!list.contains("b"), "expired entries are dropped");
        assert!(list.contains("c"));
        assert_eq!(list.len(), 2);
        assert!(RevocationList::parse(br#"{"revoked":[]}"#, 0)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn junk_is_an_error() {
        for junk in [
            &b""[..],
            b"[]",
            b"{}",
            b"{\"revoked\":[{\"exp\":1}]}",
            b"<html>",
        ] {
            assert!(RevocationList::parse(junk, 0).is_err());
        }
    }
}
