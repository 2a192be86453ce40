//! Signing-key persistence and rotation, and the server's cache of the current key set.
//!
//! Exactly one key is active: it signs new tokens. Rotation retires it, erasing its
//! private half, and keeps its public JWK published until every token it signed has
//! expired: `retired_at + longest access-token TTL + clock-skew leeway`. The server
//! records its TTL here at start so that the CLI, which rotates, knows it. The server
//! reloads the key set only when `PRAGMA data_version` shows that another connection
//! (the CLI) committed a change, so a rotation takes effect without a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use rusqlite::{params, Connection, OptionalExtension as _, TransactionBehavior};
use serde_json::Value;

use crate::crypto::signing_keys::{Algorithm, SigningKey, VerifyingKey};

/// Verifiers commonly accept tokens up to a minute past `exp`.
const CLOCK_SKEW_LEEWAY_SECS: i64 = 60;
/// Publication window assumed when no server has recorded its TTL yet.
const DEFAULT_ACCESS_TOKEN_TTL_SECS: i64 = 900;
const TTL_SETTING: &str = "max_access_token_ttl";

/// A stored key as `keys list` shows it.
pub struct KeyInfo {
    pub kid: String,
    pub alg: Algorithm,
    pub created_at: i64,
    pub retired_at: Option<i64>,
    pub publish_until: Option<i64>,
}

/// What [`rotate`] did.
pub struct Rotation {
    pub new_kid: String,
    pub alg: Algorithm,
    /// The key that was active before, and until when it stays published.
    pub retired: Option<(String, i64)>,
    /// Retired keys whose publication window had ended, now deleted.
    pub pruned: usize,
}

/// Records the server's access-token TTL. Keeps the largest value ever recorded: a
/// retired key then stays published long enough even for tokens issued before a
/// restart with a shorter TTL.
pub fn record_access_token_ttl(conn: &Connection, ttl_secs: u64) -> anyhow::Result<()> {
    conn.execute(
        "INSERT INTO settings (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
        params![TTL_SETTING, i64::try_from(ttl_secs)?],
    )?;
    Ok(())
}

fn longest_access_token_ttl(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT value FROM settings WHERE name = ?1",
        [TTL_SETTING],
        |row| row.get(0),
    )
    .optional()
    .map(|ttl| ttl.unwrap_or(DEFAULT_ACCESS_TOKEN_TTL_SECS))
}

/// The algorithm of the active key, if there is one.
pub fn active_algorithm(conn: &Connection) -> anyhow::Result<Option<Algorithm>> {
    let alg: Option<String> = conn
        .query_row(
            "SELECT alg FROM signing_keys WHERE retired_at IS NULL",
            [],
            |row| row.get(0),
        )
        .optional()?;
    alg.as_deref().map(Algorithm::from_jws_name).transpose()
}

/// Generates and stores an `alg` key if there is no active key; returns its `kid`.
pub fn ensure_active(
    conn: &mut Connection,
    alg: Algorithm,
    now: i64,
) -> anyhow::Result<Option<String>> {
    if active_algorithm(conn)?.is_some() {
        return Ok(None);
    }
    // Generate outside the write transaction: RSA generation can take a while.
    let key = SigningKey::generate(alg)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if active_algorithm(&tx)?.is_some() {
        // Another process created one meanwhile.
        return Ok(None);
    }
    insert(&tx, &key, now)?;
    tx.commit()?;
    Ok(Some(key.kid().to_owned()))
}

/// Makes a new key the active one and retires the previous one. Without `alg`, the new
/// key keeps the algorithm of the active key (ES256 if there is none), so a rotation
/// never changes what verifiers must support unless asked to.
pub fn rotate(conn: &mut Connection, alg: Option<Algorithm>, now: i64) -> anyhow::Result<Rotation> {
    let alg = match alg {
        Some(alg) => alg,
        None => active_algorithm(conn)?.unwrap_or(Algorithm::Es256),
    };
    let key = SigningKey::generate(alg)?;

    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let publish_until = now + longest_access_token_ttl(&tx)? + CLOCK_SKEW_LEEWAY_SECS;
    let retiring: Option<String> = tx
        .query_row(
            "SELECT kid FROM signing_keys WHERE retired_at IS NULL",
            [],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(kid) = &retiring {
        tx.execute(
            "UPDATE signing_keys
             SET retired_at = ?2, publish_until = ?3, private_key_der = NULL
             WHERE kid = ?1",
            params![kid, now, publish_until],
        )?;
    }
    let pruned = tx.execute("DELETE FROM signing_keys WHERE publish_until <= ?1", [now])?;
    insert(&tx, &key, now)?;
    tx.commit()?;

    Ok(Rotation {
        new_kid: key.kid().to_owned(),
        alg,
        retired: retiring.map(|kid| (kid, publish_until)),
        pruned,
    })
}

/// All stored keys, newest first.
pub fn list(conn: &Connection) -> anyhow::Result<Vec<KeyInfo>> {
    let mut statement = conn.prepare(
        "SELECT kid, alg, created_at, retired_at, publish_until
         FROM signing_keys ORDER BY created_at DESC, retired_at IS NULL DESC, kid",
    )?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
        ))
    })?;
    rows.map(|row| {
        let (kid, alg, created_at, retired_at, publish_until) = row?;
        Ok(KeyInfo {
            alg: Algorithm::from_jws_name(&alg)?,
            kid,
            created_at,
            retired_at,
            publish_until,
        })
    })
    .collect()
}

fn insert(conn: &Connection, key: &SigningKey, now: i64) -> anyhow::Result<()> {
    conn.execute(
        "INSERT INTO signing_keys (kid, alg, private_key_der, public_jwk, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            key.kid(),
            key.alg().as_str(),
            key.to_der()?,
            key.public_jwk(),
            now
        ],
    )?;
    Ok(())
}

/// The active signing key and every public key verifiers may still need.
pub struct KeySet {
    signing_key: SigningKey,
    /// Public JWKs, newest first, with the end of their publication window.
    published: Vec<(Value, Option<i64>)>,
    /// The same public keys by `kid`, to check tokens presented back to the service.
    verifying: HashMap<String, VerifyingKey>,
}

impl KeySet {
    fn load(conn: &Connection, now: i64) -> anyhow::Result<Self> {
        let (kid, alg, der): (String, String, Vec<u8>) = conn
            .query_row(
                "SELECT kid, alg, private_key_der FROM signing_keys WHERE retired_at IS NULL",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?
            .context("the database has no active signing key")?;
        let signing_key = SigningKey::from_der(Algorithm::from_jws_name(&alg)?, &der, &kid)?;

        let mut statement = conn.prepare(
            "SELECT kid, alg, public_jwk, publish_until FROM signing_keys
             WHERE publish_until IS NULL OR publish_until > ?1
             ORDER BY created_at DESC, retired_at IS NULL DESC, kid",
        )?;
        let rows = statement.query_map([now], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<i64>>(3)?,
            ))
        })?;
        let mut published = Vec::new();
        let mut verifying = HashMap::new();
        for row in rows {
            let (kid, alg, jwk_text, publish_until) = row?;
            let alg = Algorithm::from_jws_name(&alg)?;
            let key = VerifyingKey::from_jwk(alg, &jwk_text)
                .with_context(|| format!("stored public JWK of key {kid}"))?;
            let jwk: Value = serde_json::from_str(&jwk_text).context("stored public JWK")?;
            published.push((jwk, publish_until));
            verifying.insert(kid, key);
        }
        Ok(Self {
            signing_key,
            published,
            verifying,
        })
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// The public key `kid`, if it is still published (or was when the set loaded:
    /// a key past its window only signed tokens that have expired).
    pub fn verifying_key(&self, kid: &str) -> Option<&VerifyingKey> {
        self.verifying.get(kid)
    }

    /// The JWK Set document (RFC 7517 §5) as of `now`.
    pub fn jwks(&self, now: i64) -> Value {
        let keys: Vec<&Value> = self
            .published
            .iter()
            .filter(|(_, publish_until)| publish_until.is_none_or(|until| until > now))
            .map(|(jwk, _)| jwk)
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

/// The server's parsed key set, reloaded only after another connection commits.
#[derive(Default)]
pub struct KeyCache(Mutex<Option<(i64, Arc<KeySet>)>>);

impl KeyCache {
    pub fn current(&self, conn: &Connection, now: i64) -> anyhow::Result<Arc<KeySet>> {
        let data_version: i64 = conn.query_row("PRAGMA data_version", [], |row| row.get(0))?;
        let mut cached = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((version, keys)) = cached.as_ref() {
            if *version == data_version {
                return Ok(Arc::clone(keys));
            }
        }
        let keys = Arc::new(KeySet::load(conn, now)?);
        *cached = Some((data_version, Arc::clone(&keys)));
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kids(jwks: &Value) -> Vec<String> {
        jwks["keys"]
            .as_array()
            .expect("keys array")
            .iter()
            .map(|jwk| jwk["kid"].as_str().expect("kid").to_owned())
            .collect()
    }

    #[test]
    fn rotation_retires_publishes_and_prunes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("store.db");
        let mut conn = crate::storage::db::open(&path).expect("open");
        record_access_token_ttl(&conn, 300).expect("ttl");
        record_access_token_ttl(&conn, 120).expect("shorter ttl is ignored");

        let first = ensure_active(&mut conn, Algorithm::EdDsa, 1_000)
            .expect("ensure")
            .expect("generated");
        assert_eq!(
            ensure_active(&mut conn, Algorithm::Es256, 1_000).expect("ensure"),
            None
        );

        let rotation = rotate(&mut conn, None, 2_000).expect("rotate");
        assert_eq!(
            rotation.alg,
            Algorithm::EdDsa,
            "rotation keeps the algorithm"
        );
        assert_eq!(rotation.retired, Some((first.clone(), 2_000 + 300 + 60)));

        // A second connection sees the change through data_version.
        let server = crate::storage::db::open(&path).expect("server connection");
        let cache = KeyCache::default();
        let keys = cache.current(&server, 2_001).expect("keys");
        assert_eq!(keys.signing_key().kid(), rotation.new_kid);
        assert_eq!(
            kids(&keys.jwks(2_001)),
            [rotation.new_kid.clone(), first.clone()]
        );
        assert_eq!(
            kids(&keys.jwks(2_360)),
            std::slice::from_ref(&rotation.new_kid)
        );

        let again = rotate(&mut conn, Some(Algorithm::Es256), 2_400).expect("rotate again");
        assert_eq!(again.pruned, 1, "the first key's window has ended");
        let keys = cache.current(&server, 2_401).expect("reloaded");
        assert_eq!(keys.signing_key().kid(), again.new_kid);
        assert_eq!(keys.signing_key().alg(), Algorithm::Es256);
        assert_eq!(
            kids(&keys.jwks(2_401)),
            [again.new_kid.clone(), rotation.new_kid.clone()]
        );

        let listed: Vec<_> = list(&conn)
            .expect("list")
            .into_iter()
            .map(|k| k.kid)
            .collect();
        assert_eq!(listed, [again.new_kid, rotation.new_kid]);
    }
}
