//! API keys: generation, restrictions and the `api_keys` table.
//!
//! A key is `tg_live_` and 256 random bits in base64url: the prefix lets secret
//! scanners find leaked keys and lets the gateway tell a key from a JWT (it never
//! contains a `.`). Only its digest is stored ([`KeyHasher`]) and the key is shown once,
//! when created. Its id (`ak_` and 12 hex digits) names it everywhere else: lists,
//! logs, the gateway's `x-tollgate-api-key-id`. A consumer may hold several live keys,
//! which makes rotation possible without downtime: create a new key, move the caller
//! over, disable the old one.

use std::fmt;

use anyhow::Context as _;
use rand::rngs::OsRng;
use rand::RngCore as _;
use rusqlite::{params, Connection, OptionalExtension as _, Row, Transaction, TransactionBehavior};
use serde::Serialize;
use tollgate_contract::cidr::Cidr;

use crate::crypto::opaque;
use crate::storage::api_key_hashing::KeyHasher;

/// What secret scanners look for.
pub const KEY_PREFIX: &str = "tg_live_";
/// 256 bits: far beyond any guessing, so an unsalted digest is enough.
const KEY_BYTES: usize = 32;
const ID_PREFIX: &str = "ak_";
/// 48 random bits: ids are not secrets, they only have to be distinct.
const ID_BYTES: usize = 6;

/// A stored key, without anything derived from its plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKey {
    pub id: String,
    #[serde(rename = "consumer")]
    pub consumer_id: String,
    pub expires_at: Option<i64>,
    pub allowed_cidrs: Vec<String>,
    pub enabled: bool,
    pub created_at: i64,
}

impl ApiKey {
    /// `enabled`, `disabled` or `expired`, as of `now`.
    pub fn state(&self, now: i64) -> &'static str {
        if !self.enabled {
            "disabled"
        } else if self.expires_at.is_some_and(|at| at <= now) {
            "expired"
        } else {
            "enabled"
        }
    }
}

/// A key just created: the only moment its plaintext exists. Deliberately not `Debug`.
pub struct NewKey {
    pub key: ApiKey,
    pub plaintext: String,
}

/// Limits on a new key.
#[derive(Debug, Clone, Default)]
pub struct Restrictions {
    /// Unix seconds; must be in the future.
    pub expires_at: Option<i64>,
    /// Address blocks the key may be used from (validated by [`parse_cidr`]); empty: any.
    pub allowed_cidrs: Vec<String>,
}

/// Why a key operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    NoSuchConsumer,
    NoSuchKey,
    ExpiryInPast,
    /// The stored keys were hashed another way (with or without a pepper).
    OtherHashing {
        stored: String,
    },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::NoSuchConsumer => f.write_str("no such consumer"),
            Refused::NoSuchKey => f.write_str("no such API key"),
            Refused::ExpiryInPast => f.write_str("the expiry time has already passed"),
            Refused::OtherHashing { stored } if stored == "sha256" => f.write_str(
                "the stored API keys are plain SHA-256 digests: create keys without a pepper file, \
                 or delete every key before introducing one",
            ),
            Refused::OtherHashing { .. } => f.write_str(
                "the stored API keys are HMAC-SHA256 digests under a pepper: pass the same \
                 --api-key-pepper-file (or TOLLGATE_API_KEY_PEPPER_FILE)",
            ),
        }
    }
}

impl std::error::Error for Refused {}

/// An address block as the gateway accepts it (`203.0.113.0/24`, `2001:db8::/32`, or a
/// bare address), kept as written.
pub fn parse_cidr(text: &str) -> Result<String, String> {
    match Cidr::parse(text) {
        Some(_) => Ok(text.to_owned()),
        None => Err(format!(
            "{text:?} is not an address block such as 203.0.113.0/24 or 2001:db8::/32"
        )),
    }
}

/// Creates a key for `consumer_id`; its plaintext is in the result and nowhere else.
pub fn create(
    conn: &Connection,
    hasher: &KeyHasher,
    consumer_id: &str,
    restrictions: &Restrictions,
    now: i64,
) -> anyhow::Result<Result<NewKey, Refused>> {
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let exists = tx
        .query_row(
            "SELECT 1 FROM consumers WHERE id = ?1",
            [consumer_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !exists {
        return Ok(Err(Refused::NoSuchConsumer));
    }
    let created = insert(&tx, hasher, consumer_id, restrictions, now)?;
    tx.commit()?;
    Ok(created)
}

/// Creates a key for the same consumer as key `id`, with the same allowed addresses and
/// the same lifetime (counted from now), and disables the old key if asked to.
pub fn rotate(
    conn: &Connection,
    hasher: &KeyHasher,
    id: &str,
    disable_old: bool,
    now: i64,
) -> anyhow::Result<Result<NewKey, Refused>> {
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let Some(old) = find(&tx, id)? else {
        return Ok(Err(Refused::NoSuchKey));
    };
    let restrictions = Restrictions {
        expires_at: old
            .expires_at
            .map(|expires_at| now.saturating_add(expires_at - old.created_at)),
        allowed_cidrs: old.allowed_cidrs,
    };
    let created = insert(&tx, hasher, &old.consumer_id, &restrictions, now)?;
    if created.is_ok() && disable_old {
        tx.execute("UPDATE api_keys SET enabled = 0 WHERE id = ?1", [id])?;
    }
    tx.commit()?;
    Ok(created)
}

fn insert(
    tx: &Transaction<'_>,
    hasher: &KeyHasher,
    consumer_id: &str,
    restrictions: &Restrictions,
    now: i64,
) -> anyhow::Result<Result<NewKey, Refused>> {
    if restrictions.expires_at.is_some_and(|at| at <= now) {
        return Ok(Err(Refused::ExpiryInPast));
    }
    let stored: Option<String> = tx
        .query_row(
            "SELECT hashing FROM api_keys WHERE hashing <> ?1 LIMIT 1",
            [hasher.scheme()],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(stored) = stored {
        return Ok(Err(Refused::OtherHashing { stored }));
    }
    let plaintext = format!("{KEY_PREFIX}{}", opaque::random(KEY_BYTES));
    let key = ApiKey {
        id: new_id(),
        consumer_id: consumer_id.to_owned(),
        expires_at: restrictions.expires_at,
        allowed_cidrs: restrictions.allowed_cidrs.clone(),
        enabled: true,
        created_at: now,
    };
    tx.execute(
        "INSERT INTO api_keys
           (id, consumer_id, digest, hashing, expires_at, allowed_cidrs, enabled, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7)",
        params![
            key.id,
            key.consumer_id,
            hasher.digest_hex(&plaintext),
            hasher.scheme(),
            key.expires_at,
            key.allowed_cidrs.join(" "),
            key.created_at
        ],
    )
    .context("storing the new API key")?;
    Ok(Ok(NewKey { key, plaintext }))
}

fn new_id() -> String {
    let mut bytes = [0u8; ID_BYTES];
    OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{ID_PREFIX}{hex}")
}

const COLUMNS: &str = "id, consumer_id, expires_at, allowed_cidrs, enabled, created_at";

pub fn find(conn: &Connection, id: &str) -> rusqlite::Result<Option<ApiKey>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM api_keys WHERE id = ?1"))?
        .query_row([id], from_row)
        .optional()
}

/// Keys, of one consumer or all, by consumer then age.
pub fn list(conn: &Connection, consumer_id: Option<&str>) -> rusqlite::Result<Vec<ApiKey>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM api_keys WHERE ?1 IS NULL OR consumer_id = ?1
         ORDER BY consumer_id, created_at, id"
    ))?
    .query_map([consumer_id], from_row)?
    .collect()
}

/// Enables or disables key `id`; the updated key, or `None` if there is none.
pub fn set_enabled(conn: &Connection, id: &str, enabled: bool) -> rusqlite::Result<Option<ApiKey>> {
    conn.execute(
        "UPDATE api_keys SET enabled = ?2 WHERE id = ?1",
        params![id, enabled],
    )?;
    find(conn, id)
}

/// Deletes key `id`; whether there was one.
pub fn delete(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    Ok(conn.execute("DELETE FROM api_keys WHERE id = ?1", [id])? > 0)
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<ApiKey> {
    let cidrs: String = row.get(3)?;
    Ok(ApiKey {
        id: row.get(0)?,
        consumer_id: row.get(1)?,
        expires_at: row.get(2)?,
        allowed_cidrs: cidrs.split_whitespace().map(str::to_owned).collect(),
        enabled: row.get(4)?,
        created_at: row.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::consumers::{self, Consumer};

    fn store() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = crate::storage::db::open(&dir.path().join("store.db")).expect("open");
        let consumer = Consumer {
            id: "partner-a".to_owned(),
            tenant: None,
            scopes: "read:data".parse().expect("scopes"),
            plan: None,
            created_at: 1_000,
        };
        assert!(consumers::insert(&conn, &consumer).expect("consumer"));
        (dir, conn)
    }

    #[test]
    fn keys_are_prefixed_high_entropy_and_stored_as_digests() {
        let (_dir, conn) = store();
        let hasher = KeyHasher::load(None).expect("hasher");
        let new = create(&conn, &hasher, "partner-a", &Restrictions::default(), 2_000)
            .expect("create")
            .expect("created");
        let random = new.plaintext.strip_prefix(KEY_PREFIX).expect("prefix");
        assert_eq!(random.len(), 43, "256 bits in unpadded base64url");
        assert!(random
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert!(new.key.id.starts_with(ID_PREFIX) && new.key.id.len() == 15);
        let digest: String = conn
            .query_row("SELECT digest FROM api_keys", [], |row| row.get(0))
            .expect("digest");
        assert_eq!(digest, hasher.digest_hex(&new.plaintext));
        assert_eq!(find(&conn, &new.key.id).expect("find"), Some(new.key));
    }

    #[test]
    fn refusals() {
        let (_dir, conn) = store();
        let sha = KeyHasher::load(None).expect("hasher");
        let none = Restrictions::default();
        let refused = |result: anyhow::Result<Result<NewKey, Refused>>| {
            result.expect("no internal error").err().expect("refused")
        };
        assert_eq!(
            refused(create(&conn, &sha, "nobody", &none, 2_000)),
            Refused::NoSuchConsumer
        );
        let past = Restrictions {
            expires_at: Some(2_000),
            ..Restrictions::default()
        };
        assert_eq!(
            refused(create(&conn, &sha, "partner-a", &past, 2_000)),
            Refused::ExpiryInPast
        );
        assert_eq!(
            refused(rotate(&conn, &sha, "ak_000000000000", false, 2_000)),
            Refused::NoSuchKey
        );
        create(&conn, &sha, "partner-a", &none, 2_000)
            .expect("create")
            .expect("created");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("pepper");
        std::fs::write(&path, "0123456789abcdef").expect("pepper");
        let peppered = KeyHasher::load(Some(&path)).expect("hasher");
        let other = refused(create(&conn, &peppered, "partner-a", &none, 2_000));
        assert_eq!(
            other,
            Refused::OtherHashing {
                stored: "sha256".to_owned()
            }
        );
        assert!(other.to_string().contains("without a pepper file"));
    }

    #[test]
    fn rotation_keeps_consumer_addresses_and_lifetime() {
        let (_dir, conn) = store();
        let hasher = KeyHasher::load(None).expect("hasher");
        let restrictions = Restrictions {
            expires_at: Some(2_000 + 3_600),
            allowed_cidrs: vec!["203.0.113.0/24".to_owned(), "2001:db8::/32".to_owned()],
        };
        let old = create(&conn, &hasher, "partner-a", &restrictions, 2_000)
            .expect("create")
            .expect("created");
        let new = rotate(&conn, &hasher, &old.key.id, false, 5_000)
            .expect("rotate")
            .expect("rotated");
        assert_ne!(new.plaintext, old.plaintext);
        assert_eq!(new.key.consumer_id, "partner-a");
        assert_eq!(new.key.allowed_cidrs, restrictions.allowed_cidrs);
        assert_eq!(new.key.expires_at, Some(5_000 + 3_600));
        assert!(
            find(&conn, &old.key.id)
                .expect("find")
                .expect("old")
                .enabled
        );

        let newest = rotate(&conn, &hasher, &new.key.id, true, 6_000)
            .expect("rotate")
            .expect("rotated");
        let listed = list(&conn, Some("partner-a")).expect("list");
        let states: Vec<_> = listed
            .iter()
            .map(|key| (key.id.clone(), key.state(6_000)))
            .collect();
        assert_eq!(
            states,
            [
                // Created at 2 000 for an hour.
                (old.key.id.clone(), "expired"),
                (new.key.id.clone(), "disabled"),
                (newest.key.id.clone(), "enabled"),
            ]
        );
        assert_eq!(list(&conn, Some("nobody")).expect("list"), []);
        assert_eq!(list(&conn, None).expect("list").len(), 3);
    }

    #[test]
    fn enable_disable_delete_and_states() {
        let (_dir, conn) = store();
        let hasher = KeyHasher::load(None).expect("hasher");
        let restrictions = Restrictions {
            expires_at: Some(3_000),
            ..Restrictions::default()
        };
        let new = create(&conn, &hasher, "partner-a", &restrictions, 2_000)
            .expect("create")
            .expect("created");
        let id = new.key.id;
        let disabled = set_enabled(&conn, &id, false)
            .expect("disable")
            .expect("key");
        assert_eq!(disabled.state(2_500), "disabled");
        let enabled = set_enabled(&conn, &id, true).expect("enable").expect("key");
        assert_eq!(
            (enabled.state(2_999), enabled.state(3_000)),
            ("enabled", "expired")
        );
        assert_eq!(
            set_enabled(&conn, "ak_missing", true).expect("update"),
            None
        );
        assert!(delete(&conn, &id).expect("delete"));
        assert!(!delete(&conn, &id).expect("delete again"));
        assert_eq!(
            consumers::remove(&conn, "partner-a").expect("remove"),
            Some(0)
        );
    }

    #[test]
    fn removing_a_consumer_removes_its_keys() {
        let (_dir, conn) = store();
        let hasher = KeyHasher::load(None).expect("hasher");
        for _ in 0..2 {
            create(&conn, &hasher, "partner-a", &Restrictions::default(), 2_000)
                .expect("create")
                .expect("created");
        }
        assert_eq!(
            consumers::remove(&conn, "partner-a").expect("remove"),
            Some(2)
        );
        assert_eq!(list(&conn, None).expect("list"), []);
    }

    #[test]
    fn cidrs_use_the_gateway_syntax() {
        for good in [
            "203.0.113.0/24",
            "2001:db8::/32",
            "192.0.2.1",
            "::1",
            "0.0.0.0/0",
        ] {
            assert_eq!(parse_cidr(good).as_deref(), Ok(good));
        }
        for bad in [
            "203.0.113.0/33",
            "2001:db8::/129",
            "example.com",
            "",
            "10.0.0.0/8 ",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad:?}");
        }
    }
}
