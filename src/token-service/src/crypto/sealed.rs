//! Values handed to the browser and taken back unchanged: signed JSON,
//! `base64url(JSON) "." base64url(HMAC-SHA256)`, under a 256-bit key kept in the
//! database (so they survive a restart). Used for the session cookie, sign-in
//! progress between factors and pending enrolments; each kind under its own key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rusqlite::{params, Connection, OptionalExtension as _};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::crypto::opaque;

const KEY_BYTES: usize = 32;

pub struct Sealer {
    key: [u8; KEY_BYTES],
}

impl Sealer {
    /// Loads the key `name` from the database, creating it on first use.
    pub fn load(conn: &Connection, name: &str) -> rusqlite::Result<Self> {
        let stored: Option<Vec<u8>> = conn
            .query_row(
                "SELECT value FROM service_keys WHERE name = ?1",
                [name],
                |row| row.get(0),
            )
            .optional()?;
        let key = match stored.and_then(|bytes| <[u8; KEY_BYTES]>::try_from(bytes).ok()) {
            Some(key) => key,
            None => {
                let key = opaque::random_bytes::<KEY_BYTES>();
                conn.execute(
                    "INSERT INTO service_keys (name, value) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    params![name, key.as_slice()],
                )?;
                key
            }
        };
        Ok(Self { key })
    }

    pub fn seal<T: Serialize>(&self, value: &T) -> String {
        // The sealed types hold strings, integers and enums only: serialising cannot fail.
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap_or_default());
        let tag = URL_SAFE_NO_PAD.encode(self.tag(payload.as_bytes()));
        format!("{payload}.{tag}")
    }

    /// The value, if `sealed` is one this sealer made.
    pub fn open<T: DeserializeOwned>(&self, sealed: &str) -> Option<T> {
        let (payload, tag) = sealed.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        if !constant_time_eq(&tag, &self.tag(payload.as_bytes())) {
            return None;
        }
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }

    /// A MAC of `text` under this key, base64url: binds a form to a session.
    pub fn mac(&self, text: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.tag(text.as_bytes()))
    }

    fn tag(&self, payload: &[u8]) -> [u8; 32] {
        hmac_sha256::HMAC::mac(payload, self.key)
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_unchanged_and_under_their_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = crate::storage::db::open(&dir.path().join("store.db")).expect("open");
        let sessions = Sealer::load(&conn, "a").expect("key");
        let other = Sealer::load(&conn, "b").expect("key");
        let sealed = sessions.seal(&("alice", 7));
        assert_eq!(
            sessions.open::<(String, i64)>(&sealed),
            Some(("alice".to_owned(), 7))
        );
        assert_eq!(other.open::<(String, i64)>(&sealed), None);
        let reloaded = Sealer::load(&conn, "a").expect("key");
        assert!(reloaded.open::<(String, i64)>(&sealed).is_some());
        let (payload, _) = sealed.split_once('.').expect("dot");
        let forged = format!("{payload}.{}", other.mac(payload));
        assert_eq!(sessions.open::<(String, i64)>(&forged), None);
        for bad in ["", ".", "x.y", "no-dot"] {
            assert_eq!(sessions.open::<(String, i64)>(bad), None);
        }
    }
}
