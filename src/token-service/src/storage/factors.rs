//! Users' second factors: one authenticator app (TOTP, RFC 6238) and any number of
//! passkeys (WebAuthn), in `user_factors`.
//!
//! TOTP seeds are stored as they are (the database file already holds the private
//! signing keys and is readable by its owner only). A code is accepted for the
//! current 30-second step or the one either side (clock drift), and only for a step
//! later than the last one accepted: checking and recording the step is one UPDATE,
//! so a code cannot be used twice, even by two requests at once.

use anyhow::{bail, Context as _};
use rusqlite::{params, Connection, OptionalExtension as _};
use totp_rs::{Algorithm, Secret, TOTP};
use webauthn_rs::prelude::Passkey;

use crate::crypto::opaque;

/// RFC 6238 defaults every authenticator app supports.
const TOTP_DIGITS: usize = 6;
const TOTP_STEP_SECS: u64 = 30;
/// 160-bit seeds (RFC 4226 §4 recommends it).
const TOTP_SEED_BYTES: usize = 20;
const MAX_LABEL_CHARS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Totp,
    Passkey,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Totp => "totp",
            Self::Passkey => "passkey",
        }
    }
}

/// A factor as listed to its user and to operators: never its secret.
#[derive(Debug, Clone)]
pub struct Factor {
    pub factor_id: String,
    pub kind: Kind,
    pub label: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// A new TOTP seed, base32 (what authenticator apps take).
pub fn new_totp_seed() -> String {
    Secret::Raw(opaque::random_bytes::<TOTP_SEED_BYTES>().to_vec())
        .to_encoded()
        .to_string()
}

/// The TOTP generator for `seed`, labelled for the app as `issuer:username`.
pub fn totp(seed: &str, issuer: &str, username: &str) -> anyhow::Result<TOTP> {
    let bytes = Secret::Encoded(seed.to_owned())
        .to_bytes()
        .map_err(|err| anyhow::anyhow!("TOTP seed is not base32: {err:?}"))?;
    // totp-rs refuses ':' in the account name (it separates issuer and account).
    TOTP::new(
        Algorithm::SHA1,
        TOTP_DIGITS,
        1,
        TOTP_STEP_SECS,
        bytes,
        Some(issuer.replace(':', " ")),
        username.to_owned(),
    )
    .context("building the TOTP generator")
}

/// The time step a `code` is valid for at `now` (this step or one either side).
pub fn matching_step(totp: &TOTP, code: &str, now: i64) -> Option<i64> {
    if code.len() != TOTP_DIGITS || !code.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let step = now.div_euclid(TOTP_STEP_SECS as i64);
    [step - 1, step, step + 1].into_iter().find(|candidate| {
        u64::try_from(*candidate)
            .map(|candidate| {
                let expected = totp.generate(candidate * TOTP_STEP_SECS);
                constant_time_eq(expected.as_bytes(), code.as_bytes())
            })
            .unwrap_or(false)
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

pub fn validate_label(label: &str) -> Result<String, String> {
    let label = label.trim();
    if label.is_empty() || label.chars().count() > MAX_LABEL_CHARS {
        return Err(format!("a name is 1 to {MAX_LABEL_CHARS} characters long"));
    }
    if label.chars().any(char::is_control) {
        return Err("a name cannot contain control characters".to_owned());
    }
    Ok(label.to_owned())
}

/// Enrols the user's authenticator app; fails if they already have one.
pub fn add_totp(
    conn: &Connection,
    user_id: &str,
    label: &str,
    seed: &str,
    confirmed_step: i64,
    now: i64,
) -> anyhow::Result<String> {
    let factor_id = format!("totp_{}", opaque::random(9));
    let inserted = conn.execute(
        "INSERT INTO user_factors
             (factor_id, user_id, kind, label, secret, created_at, totp_last_step)
         VALUES (?1, ?2, 'totp', ?3, ?4, ?5, ?6)
         ON CONFLICT DO NOTHING",
        params![factor_id, user_id, label, seed, now, confirmed_step],
    )?;
    if inserted == 0 {
        bail!("an authenticator app is already set up; remove it first");
    }
    Ok(factor_id)
}

/// The user's TOTP factor: its id and seed.
pub fn totp_of(conn: &Connection, user_id: &str) -> rusqlite::Result<Option<(String, String)>> {
    conn.query_row(
        "SELECT factor_id, secret FROM user_factors WHERE user_id = ?1 AND kind = 'totp'",
        [user_id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .optional()
}

/// Records that the code of `step` was used; false if that step (or a later one) was
/// used already, or the factor is gone.
pub fn use_totp_step(
    conn: &Connection,
    factor_id: &str,
    step: i64,
    now: i64,
) -> rusqlite::Result<bool> {
    conn.execute(
        "UPDATE user_factors SET totp_last_step = ?2, last_used_at = ?3
         WHERE factor_id = ?1 AND kind = 'totp'
           AND (totp_last_step IS NULL OR totp_last_step < ?2)",
        params![factor_id, step, now],
    )
    .map(|updated| updated == 1)
}

pub fn add_passkey(
    conn: &Connection,
    user_id: &str,
    label: &str,
    passkey: &Passkey,
    now: i64,
) -> anyhow::Result<String> {
    let factor_id = format!("pk_{}", opaque::random(9));
    conn.execute(
        "INSERT INTO user_factors (factor_id, user_id, kind, label, secret, created_at)
         VALUES (?1, ?2, 'passkey', ?3, ?4, ?5)",
        params![
            factor_id,
            user_id,
            label,
            serde_json::to_string(passkey)?,
            now
        ],
    )?;
    Ok(factor_id)
}

/// The user's passkeys, with their factor ids.
pub fn passkeys_of(conn: &Connection, user_id: &str) -> anyhow::Result<Vec<(String, Passkey)>> {
    let mut statement = conn.prepare_cached(
        "SELECT factor_id, secret FROM user_factors
         WHERE user_id = ?1 AND kind = 'passkey' ORDER BY created_at, factor_id",
    )?;
    let rows = statement.query_map([user_id], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })?;
    let mut passkeys = Vec::new();
    for row in rows {
        let (factor_id, json) = row?;
        let passkey = serde_json::from_str(&json)
            .with_context(|| format!("stored passkey {factor_id} is unreadable"))?;
        passkeys.push((factor_id, passkey));
    }
    Ok(passkeys)
}

/// Stores a passkey's updated signature counter after a sign-in.
pub fn update_passkey(
    conn: &Connection,
    factor_id: &str,
    passkey: &Passkey,
    now: i64,
) -> anyhow::Result<()> {
    conn.execute(
        "UPDATE user_factors SET secret = ?2, last_used_at = ?3
         WHERE factor_id = ?1 AND kind = 'passkey'",
        params![factor_id, serde_json::to_string(passkey)?, now],
    )?;
    Ok(())
}

pub fn list(conn: &Connection, user_id: &str) -> rusqlite::Result<Vec<Factor>> {
    conn.prepare_cached(
        "SELECT factor_id, kind, label, created_at, last_used_at FROM user_factors
         WHERE user_id = ?1 ORDER BY kind DESC, created_at, factor_id",
    )?
    .query_map([user_id], |row| {
        let kind: String = row.get(1)?;
        Ok(Factor {
            factor_id: row.get(0)?,
            kind: if kind == "totp" {
                Kind::Totp
            } else {
                Kind::Passkey
            },
            label: row.get(2)?,
            created_at: row.get(3)?,
            last_used_at: row.get(4)?,
        })
    })?
    .collect()
}

/// Whether each of `factor_ids` still belongs to `user_id`.
pub fn all_exist(
    conn: &Connection,
    user_id: &str,
    factor_ids: &[String],
) -> rusqlite::Result<bool> {
    for factor_id in factor_ids {
        let found: Option<i64> = conn
            .query_row(
                "SELECT 1 FROM user_factors WHERE factor_id = ?1 AND user_id = ?2",
                params![factor_id, user_id],
                |row| row.get(0),
            )
            .optional()?;
        if found.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Removes one of the user's factors; false if they have no such factor.
pub fn remove(conn: &Connection, user_id: &str, factor_id: &str) -> rusqlite::Result<bool> {
    conn.execute(
        "DELETE FROM user_factors WHERE factor_id = ?1 AND user_id = ?2",
        params![factor_id, user_id],
    )
    .map(|removed| removed == 1)
}

/// Removes every factor of the user; returns how many.
pub fn reset(conn: &Connection, user_id: &str) -> rusqlite::Result<usize> {
    conn.execute("DELETE FROM user_factors WHERE user_id = ?1", [user_id])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::users::{self, User};

    fn store() -> (tempfile::TempDir, Connection, String) {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = crate::storage::db::open(&dir.path().join("store.db")).expect("open");
        let user = User {
            user_id: users::new_user_id(),
            username: "alice".to_owned(),
            password_hash: "$argon2id$placeholder".to_owned(),
            scopes: "read".parse().expect("scopes"),
            created_at: 0,
        };
        users::insert(&conn, &user).expect("insert");
        (dir, conn, user.user_id)
    }

    #[test]
    fn a_totp_code_is_accepted_once_per_step() {
        let (_dir, conn, user_id) = store();
        let seed = new_totp_seed();
        let totp = totp(&seed, "http://issuer:8080", "alice").expect("totp");
        let now = 1_700_000_000;
        let code = totp.generate(now as u64);
        let step = matching_step(&totp, &code, now).expect("valid now");
        assert_eq!(matching_step(&totp, &code, now + 30), Some(step), "drift");
        assert_eq!(matching_step(&totp, &code, now + 90), None, "too late");
        assert_eq!(matching_step(&totp, "12345", now), None);
        assert_eq!(matching_step(&totp, "abcdef", now), None);

        let factor_id = add_totp(&conn, &user_id, "Phone", &seed, step - 1, now).expect("add");
        assert!(
            add_totp(&conn, &user_id, "Other", &seed, 0, now).is_err(),
            "one app"
        );
        assert_eq!(
            totp_of(&conn, &user_id).expect("find"),
            Some((factor_id.clone(), seed))
        );
        assert!(use_totp_step(&conn, &factor_id, step, now).expect("use"));
        assert!(!use_totp_step(&conn, &factor_id, step, now).expect("replay"));
        assert!(!use_totp_step(&conn, &factor_id, step - 1, now).expect("older"));
        assert!(use_totp_step(&conn, &factor_id, step + 1, now).expect("next"));

        assert_eq!(list(&conn, &user_id).expect("list").len(), 1);
        assert!(all_exist(&conn, &user_id, std::slice::from_ref(&factor_id)).expect("exist"));
        assert!(remove(&conn, &user_id, &factor_id).expect("remove"));
        assert!(!all_exist(&conn, &user_id, std::slice::from_ref(&factor_id)).expect("exist"));
        assert!(!use_totp_step(&conn, &factor_id, step + 2, now).expect("removed"));
        assert_eq!(reset(&conn, &user_id).expect("reset"), 0);
    }

    #[test]
    fn labels() {
        assert_eq!(validate_label("  My phone "), Ok("My phone".to_owned()));
        assert!(validate_label("").is_err());
        assert!(validate_label("a\nb").is_err());
        assert!(validate_label(&"x".repeat(65)).is_err());
    }
}
