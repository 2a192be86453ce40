//! Access tokens issued and not yet expired, by client and grant: the
//! `issued_access_tokens` table. A JWT cannot be recalled, so revoking a grant, a user
//! or a client means finding the access tokens issued to it here and putting them on
//! the revocation feed ([`crate::storage::revocation`]) until they expire.

use rusqlite::{params, Connection};

/// Records an access token issued to `client_id`, within the refresh-token family
/// `family_id` if a user's grant issued it.
pub fn record(
    conn: &Connection,
    jti: &str,
    client_id: &str,
    family_id: Option<i64>,
    expires_at: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO issued_access_tokens (jti, client_id, family_id, expires_at)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![jti, client_id, family_id, expires_at])?;
    Ok(())
}

/// Puts the family's unexpired access tokens on the revocation feed.
pub fn revoke_of_family(conn: &Connection, family_id: i64, now: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO revoked_access_tokens (jti, expires_at)
         SELECT jti, expires_at FROM issued_access_tokens
         WHERE family_id = ?1 AND expires_at > ?2
         ON CONFLICT DO NOTHING",
        params![family_id, now],
    )?;
    Ok(())
}

/// Puts every unexpired access token of the client on the revocation feed: those of
/// its users' grants and its own `client_credentials` tokens.
pub fn revoke_of_client(conn: &Connection, client_id: &str, now: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO revoked_access_tokens (jti, expires_at)
         SELECT jti, expires_at FROM issued_access_tokens
         WHERE client_id = ?1 AND expires_at > ?2
         ON CONFLICT DO NOTHING",
        params![client_id, now],
    )?;
    Ok(())
}

/// Puts the unexpired access tokens of every grant of the user on the revocation feed.
pub fn revoke_of_user(conn: &Connection, user_id: &str, now: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO revoked_access_tokens (jti, expires_at)
         SELECT a.jti, a.expires_at FROM issued_access_tokens a
         JOIN token_families f USING (family_id)
         WHERE f.user_id = ?1 AND a.expires_at > ?2
         ON CONFLICT DO NOTHING",
        params![user_id, now],
    )?;
    Ok(())
}

/// Forgets tokens that have expired: verifiers refuse them anyway.
pub fn prune(conn: &Connection, now: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM issued_access_tokens WHERE expires_at <= ?1",
        [now],
    )
}
