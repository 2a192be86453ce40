//! Resource owners who log in at `/authorize`: the `users` table.
//!
//! Passwords are stored as Argon2id hashes only. A user's `user_id` is opaque and never
//! reused, and it is the `sub` of the user's tokens: a later account that takes a
//! removed user's name does not inherit their identity at the APIs. Each user has the
//! scopes they may hold: whatever a client asks for, a user's token carries no others.

use anyhow::bail;
use rusqlite::{params, Connection, OptionalExtension as _, Row};

use crate::crypto::opaque;
use crate::protocol::scope::ScopeSet;

const MAX_USERNAME_LEN: usize = 64;
/// NIST SP 800-63B §5.1.1.2: at least 8 characters.
const MIN_PASSWORD_CHARS: usize = 8;
/// Bounds the Argon2 input; far beyond any passphrase.
const MAX_PASSWORD_BYTES: usize = 1024;

#[derive(Debug, Clone)]
pub struct User {
    pub user_id: String,
    pub username: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Scopes the user may hold.
    pub scopes: ScopeSet,
    pub created_at: i64,
}

/// A fresh opaque user id (96 random bits).
pub fn new_user_id() -> String {
    opaque::random(12)
}

/// Usernames are 1 to 64 ASCII letters, digits and `.` `_` `@` `+` `-`; they are
/// compared exactly (case matters).
pub fn validate_username(username: &str) -> Result<(), String> {
    if username.is_empty() || username.len() > MAX_USERNAME_LEN {
        return Err(format!(
            "a username is 1 to {MAX_USERNAME_LEN} characters long"
        ));
    }
    if !username.bytes().all(|byte| {
        byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'@' | b'+' | b'-')
    }) {
        return Err("a username may contain ASCII letters, digits and . _ @ + - only".to_owned());
    }
    Ok(())
}

pub fn validate_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "the password must be at least {MIN_PASSWORD_CHARS} characters long"
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "the password must be at most {MAX_PASSWORD_BYTES} bytes long"
        ));
    }
    Ok(())
}

pub fn insert(conn: &Connection, user: &User) -> anyhow::Result<()> {
    let inserted = conn.execute(
        "INSERT INTO users (user_id, username, password_hash, scopes, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT DO NOTHING",
        params![
            user.user_id,
            user.username,
            user.password_hash,
            user.scopes.to_string(),
            user.created_at
        ],
    )?;
    if inserted == 0 {
        bail!("user {} already exists", user.username);
    }
    Ok(())
}

const COLUMNS: &str = "user_id, username, password_hash, scopes, created_at";

pub fn find_by_username(conn: &Connection, username: &str) -> rusqlite::Result<Option<User>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM users WHERE username = ?1"))?
        .query_row([username], from_row)
        .optional()
}

/// The scopes the user `user_id` may hold now; `None` if there is no such user.
pub fn scopes_of(conn: &Connection, user_id: &str) -> rusqlite::Result<Option<ScopeSet>> {
    conn.prepare_cached("SELECT scopes FROM users WHERE user_id = ?1")?
        .query_row([user_id], |row| row.get(0))
        .optional()
}

pub fn list(conn: &Connection) -> rusqlite::Result<Vec<User>> {
    conn.prepare(&format!("SELECT {COLUMNS} FROM users ORDER BY username"))?
        .query_map([], from_row)?
        .collect()
}

/// Replaces the scopes `username` may hold; false if there is no such user. Tokens
/// issued before keep their scopes until they expire; refreshes from then on are
/// narrowed to the new set.
pub fn set_scopes(conn: &Connection, username: &str, scopes: &ScopeSet) -> rusqlite::Result<bool> {
    conn.execute(
        "UPDATE users SET scopes = ?2 WHERE username = ?1",
        params![username, scopes.to_string()],
    )
    .map(|updated| updated > 0)
}

/// Removes a user and their grants; the access tokens issued from those grants are
/// recorded as revoked. Returns whether a user was removed.
pub fn remove(conn: &Connection, username: &str, now: i64) -> rusqlite::Result<bool> {
    let tx = conn.unchecked_transaction()?;
    let user_id: Option<String> = tx
        .query_row(
            "SELECT user_id FROM users WHERE username = ?1",
            [username],
            |row| row.get(0),
        )
        .optional()?;
    let Some(user_id) = user_id else {
        return Ok(false);
    };
    crate::storage::issued_tokens::revoke_of_user(&tx, &user_id, now)?;
    tx.execute("DELETE FROM users WHERE user_id = ?1", [&user_id])?;
    tx.commit()?;
    Ok(true)
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        user_id: row.get(0)?,
        username: row.get(1)?,
        password_hash: row.get(2)?,
        scopes: row.get(3)?,
        created_at: row.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(username: &str) -> User {
        User {
            user_id: new_user_id(),
            username: username.to_owned(),
            password_hash: "$argon2id$placeholder".to_owned(),
            scopes: "read".parse().expect("scopes"),
            created_at: 1_700_000_000,
        }
    }

    #[test]
    fn insert_find_list_remove() {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = crate::storage::db::open(&dir.path().join("store.db")).expect("open");
        let alice = user("alice");
        insert(&conn, &alice).expect("insert alice");
        insert(&conn, &user("bob")).expect("insert bob");
        assert!(insert(&conn, &user("alice"))
            .expect_err("duplicate")
            .to_string()
            .contains("already exists"));

        let found = find_by_username(&conn, "alice")
            .expect("find")
            .expect("present");
        assert_eq!(found.user_id, alice.user_id);
        assert_eq!(found.scopes.to_string(), "read");
        let wider: ScopeSet = "read write".parse().expect("scopes");
        assert!(set_scopes(&conn, "alice", &wider).expect("set"));
        assert!(!set_scopes(&conn, "nobody", &wider).expect("set"));
        assert_eq!(
            scopes_of(&conn, &alice.user_id).expect("scopes"),
            Some(wider)
        );
        assert_eq!(scopes_of(&conn, "no-such-id").expect("scopes"), None);
        assert!(find_by_username(&conn, "Alice").expect("find").is_none());
        let names: Vec<_> = list(&conn)
            .expect("list")
            .into_iter()
            .map(|u| u.username)
            .collect();
        assert_eq!(names, ["alice", "bob"]);

        assert!(remove(&conn, "alice", 0).expect("remove"));
        assert!(!remove(&conn, "alice", 0).expect("remove again"));
        assert!(find_by_username(&conn, "alice").expect("find").is_none());
    }

    #[test]
    fn username_and_password_rules() {
        for good in ["alice", "a.b_c@example.com", "x+y-z", "A1"] {
            assert_eq!(validate_username(good), Ok(()), "{good}");
        }
        for bad in ["", "has space", "caf\u{e9}", "a/b", "<script>"] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
        assert!(validate_username(&"a".repeat(65)).is_err());

        assert!(validate_password("correct horse").is_ok());
        assert!(validate_password("\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}").is_ok());
        assert!(validate_password("short").is_err());
        assert!(validate_password(&"p".repeat(1025)).is_err());
    }
}
