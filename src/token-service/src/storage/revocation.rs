//! Revoked access tokens: the `revoked_access_tokens` table behind `/introspect`'s
//! answers and the gateway's revocation feed.
//!
//! An access token is a self-contained JWT, so revoking one means telling verifiers
//! its `jti` until it expires. Rows are kept only until then: the feed stays as short
//! as the number of revoked tokens still alive.

use rusqlite::{params, Connection, OptionalExtension as _};
use tollgate_contract::revocation_feed::RevokedToken;

/// Records the access token `jti` as revoked until it expires.
pub fn record(conn: &Connection, jti: &str, expires_at: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO revoked_access_tokens (jti, expires_at) VALUES (?1, ?2)
         ON CONFLICT DO NOTHING",
    )?
    .execute(params![jti, expires_at])?;
    Ok(())
}

pub fn is_revoked(conn: &Connection, jti: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM revoked_access_tokens WHERE jti = ?1")?
        .query_row([jti], |_| Ok(()))
        .optional()
        .map(|found| found.is_some())
}

/// Revoked tokens that have not expired at `now`, ordered by `jti` (one indexed query).
pub fn unexpired(conn: &Connection, now: i64) -> rusqlite::Result<Vec<RevokedToken>> {
    conn.prepare_cached(
        "SELECT jti, expires_at FROM revoked_access_tokens WHERE expires_at > ?1 ORDER BY jti",
    )?
    .query_map([now], |row| {
        Ok(RevokedToken {
            jti: row.get(0)?,
            exp: u64::try_from(row.get::<_, i64>(1)?).ok(),
        })
    })?
    .collect()
}

/// Forgets tokens that have expired: verifiers refuse them anyway.
pub fn prune(conn: &Connection, now: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM revoked_access_tokens WHERE expires_at <= ?1",
        [now],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_unexpired_revocations_in_jti_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = crate::storage::db::open(&dir.path().join("store.db")).expect("open");
        record(&conn, "b", 2_000).expect("record");
        record(&conn, "a", 1_500).expect("record");
        record(&conn, "old", 900).expect("record");
        record(&conn, "a", 1_500).expect("recording twice is harmless");

        assert!(is_revoked(&conn, "a").expect("lookup"));
        assert!(!is_revoked(&conn, "c").expect("lookup"));
        let listed = unexpired(&conn, 1_000).expect("list");
        let expected = [
            RevokedToken {
                jti: "a".to_owned(),
                exp: Some(1_500),
            },
            RevokedToken {
                jti: "b".to_owned(),
                exp: Some(2_000),
            },
        ];
        assert_eq!(listed, expected);

        assert_eq!(prune(&conn, 1_500).expect("prune"), 2);
        assert_eq!(unexpired(&conn, 1_000).expect("list").len(), 1);
    }
}
