//! Authorization codes (RFC 6749 §4.1.2, §10.5): 256 random bits, stored as SHA-256
//! digests, valid for 60 seconds, bound to the client, redirect URI, scope, user and
//! PKCE challenge of the authorization request.
//!
//! A redeemed code is kept, pointing at the family it started, until that family is
//! pruned: presenting it again is a replay and revokes the family.

use rusqlite::{params, Connection, OptionalExtension as _};

use crate::crypto::opaque;
use crate::protocol::scope::ScopeSet;

/// RFC 6749 §4.1.2 recommends at most ten minutes; a redirect and one token request
/// need seconds.
const LIFETIME_SECS: i64 = 60;
const CODE_BYTES: usize = 32;

/// What a new code is bound to.
pub struct NewCode<'a> {
    pub client_id: &'a str,
    pub user_id: &'a str,
    pub redirect_uri: &'a str,
    pub scopes: &'a ScopeSet,
    pub code_challenge: Option<&'a str>,
    /// `dpop_jkt` of the request (RFC 9449 §10): the key the code must be redeemed with.
    pub dpop_jkt: Option<&'a str>,
}

/// A stored code.
#[derive(Debug)]
pub struct StoredCode {
    pub client_id: String,
    pub user_id: String,
    pub redirect_uri: String,
    pub scopes: ScopeSet,
    pub code_challenge: Option<String>,
    pub dpop_jkt: Option<String>,
    pub expires_at: i64,
    /// The family the code started, once redeemed.
    pub family_id: Option<i64>,
}

/// Stores a new code and returns it.
pub fn issue(conn: &Connection, new: &NewCode<'_>, now: i64) -> rusqlite::Result<String> {
    let code = opaque::random(CODE_BYTES);
    conn.prepare_cached(
        "INSERT INTO authorization_codes
             (code_hash, client_id, user_id, redirect_uri, scopes, code_challenge, expires_at,
              dpop_jkt)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        opaque::digest(&code),
        new.client_id,
        new.user_id,
        new.redirect_uri,
        new.scopes.to_string(),
        new.code_challenge,
        now + LIFETIME_SECS,
        new.dpop_jkt
    ])?;
    Ok(code)
}

pub fn find(conn: &Connection, code: &str) -> rusqlite::Result<Option<StoredCode>> {
    let row = conn
        .prepare_cached(
            "SELECT client_id, user_id, redirect_uri, scopes, code_challenge, expires_at, family_id,
                    dpop_jkt
             FROM authorization_codes WHERE code_hash = ?1",
        )?
        .query_row([opaque::digest(code)], |row| {
            Ok((
                StoredCode {
                    client_id: row.get(0)?,
                    user_id: row.get(1)?,
                    redirect_uri: row.get(2)?,
                    scopes: ScopeSet::default(),
                    code_challenge: row.get(4)?,
                    expires_at: row.get(5)?,
                    family_id: row.get(6)?,
                    dpop_jkt: row.get(7)?,
                },
                row.get::<_, String>(3)?,
            ))
        })
        .optional()?;
    row.map(|(mut stored, scopes)| {
        stored.scopes = scopes.parse().map_err(|err| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(err))
        })?;
        Ok(stored)
    })
    .transpose()
}

/// Marks the code used, by the family it started.
pub fn mark_redeemed(conn: &Connection, code: &str, family_id: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE authorization_codes SET family_id = ?2 WHERE code_hash = ?1",
        params![opaque::digest(code), family_id],
    )?;
    Ok(())
}

/// Deletes expired codes that were never redeemed (redeemed ones go with their family).
pub fn prune(conn: &Connection, now: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM authorization_codes WHERE family_id IS NULL AND expires_at <= ?1",
        [now],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::refresh::{self, Lifetimes};
    use crate::storage::clients::{self, Client, ClientType};
    use crate::storage::users::{self, User};

    #[test]
    fn issue_find_redeem_prune() {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = crate::storage::db::open(&dir.path().join("store.db")).expect("open");
        let client = Client {
            client_id: "app".to_owned(),
            client_type: ClientType::Public,
            secret_hash: None,
            scopes: "read".parse().expect("scopes"),
            default_scopes: ScopeSet::default(),
            created_at: 0,
            disabled_at: None,
        };
        clients::insert(&conn, &client, &[]).expect("client");
        let user = User {
            user_id: "u1".to_owned(),
            username: "alice".to_owned(),
            password_hash: "$argon2id$placeholder".to_owned(),
            scopes: ScopeSet::default(),
            created_at: 0,
        };
        users::insert(&conn, &user).expect("user");

        let scopes: ScopeSet = "read".parse().expect("scopes");
        let new = NewCode {
            client_id: "app",
            user_id: "u1",
            redirect_uri: "com.example.app:/cb",
            scopes: &scopes,
            code_challenge: Some("challenge"),
            dpop_jkt: Some("jkt"),
        };
        let code = issue(&conn, &new, 1_000).expect("issue");
        let unused = issue(&conn, &new, 1_000).expect("issue");
        assert_ne!(code, unused);
        assert!(code.len() >= 43);

        let stored = find(&conn, &code).expect("find").expect("known");
        assert_eq!(stored.client_id, "app");
        assert_eq!(stored.redirect_uri, "com.example.app:/cb");
        assert_eq!(stored.scopes, scopes);
        assert_eq!(stored.code_challenge.as_deref(), Some("challenge"));
        assert_eq!(stored.dpop_jkt.as_deref(), Some("jkt"));
        assert_eq!(stored.expires_at, 1_000 + LIFETIME_SECS);
        assert_eq!(stored.family_id, None);
        assert!(find(&conn, "unknown").expect("find").is_none());

        let lifetimes = Lifetimes {
            idle: 100,
            absolute: 100,
        };
        let (family_id, _) =
            refresh::start_family(&conn, "app", "u1", &scopes, lifetimes, 1_010).expect("family");
        mark_redeemed(&conn, &code, family_id).expect("redeem");
        assert_eq!(
            find(&conn, &code).expect("find").expect("known").family_id,
            Some(family_id)
        );

        assert_eq!(
            prune(&conn, 2_000).expect("prune"),
            1,
            "only the unused code"
        );
        assert!(find(&conn, &unused).expect("find").is_none());
        assert!(find(&conn, &code).expect("find").is_some());
    }
}
