//! Authorization requests waiting for the user to log in and decide. `GET /authorize`
//! validates a request and puts it, signed, in the login form's hidden `request` field;
//! `POST /authorize` opens it again.
//!
//! The server keeps nothing per pending request, so no flood of anonymous requests can
//! push a real user's form out: a form stays good for ten minutes whatever happens in
//! between. The value is `base64url(JSON) "." base64url(HMAC-SHA256)`, under a 256-bit
//! key kept in the database (so forms survive a restart). The signature is the form's
//! anti-CSRF token: a POST must carry a request this server validated, and what is
//! approved is what was validated, whatever else the POST says. A form can be approved
//! once: approvals are remembered, by the form's random nonce, until the form expires.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rusqlite::{params, Connection, OptionalExtension as _};
use serde::{Deserialize, Serialize};

use crate::crypto::opaque;
use crate::protocol::authentication::Level;
use crate::protocol::scope::ScopeSet;

/// Seconds a user has to log in.
pub const LIFETIME_SECS: i64 = 600;
/// Approvals remembered at most; past this, expired ones and then the oldest go.
const MAX_APPROVED: usize = 100_000;
/// Where the signing key is kept.
const KEY_NAME: &str = "authorize_form_key";
const KEY_BYTES: usize = 32;

/// A validated authorization request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAuthorization {
    pub client_id: String,
    pub redirect_uri: String,
    #[serde(with = "scopes_text")]
    pub scopes: ScopeSet,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
    /// The weakest `acr` of the request's `acr_values` this server supports: the level
    /// the sign-in must reach. `None`: a password will do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// OIDC `max_age`: seconds since the user last signed in for a session to count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<i64>,
    /// OIDC `prompt=login`: sign in again whatever the session.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prompt_login: bool,
    /// RFC 9449 §10: the thumbprint of the DPoP key the code must be redeemed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_jkt: Option<String>,
}

impl PendingAuthorization {
    /// The level the sign-in must reach.
    pub fn required_level(&self) -> Level {
        self.acr
            .as_deref()
            .and_then(Level::from_acr)
            .unwrap_or(Level::Password)
    }
}

/// What a login form carries: the request, when the form expires, and a nonce that
/// tells one form from another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedForm {
    #[serde(flatten)]
    pub authorization: PendingAuthorization,
    /// Unix seconds.
    pub expires_at: i64,
    nonce: String,
}

impl SignedForm {
    /// Tells this form from every other: what a sign-in's later steps are bound to.
    pub fn nonce(&self) -> &str {
        &self.nonce
    }
}

/// Seals and opens login forms, and remembers which were approved.
pub struct LoginForms {
    key: [u8; KEY_BYTES],
    /// Nonce of each approved form, with its expiry.
    approved: Mutex<HashMap<String, i64>>,
}

impl LoginForms {
    /// Loads the signing key from the database, creating it on first use.
    pub fn load(conn: &Connection) -> rusqlite::Result<Self> {
        let stored: Option<Vec<u8>> = conn
            .query_row(
                "SELECT value FROM service_keys WHERE name = ?1",
                [KEY_NAME],
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
                    params![KEY_NAME, key.as_slice()],
                )?;
                key
            }
        };
        Ok(Self {
            key,
            approved: Mutex::new(HashMap::new()),
        })
    }

    /// The form value for `authorization`, good until `now +` [`LIFETIME_SECS`].
    pub fn seal(&self, authorization: PendingAuthorization, now: i64) -> String {
        let form = SignedForm {
            authorization,
            expires_at: now.saturating_add(LIFETIME_SECS),
            nonce: opaque::random(16),
        };
        // Serialising plain strings and integers cannot fail.
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&form).unwrap_or_default());
        let tag = URL_SAFE_NO_PAD.encode(self.tag(payload.as_bytes()));
        format!("{payload}.{tag}")
    }

    /// The form, if `value` is one this server sealed and it has not expired at `now`.
    pub fn open(&self, value: &str, now: i64) -> Option<SignedForm> {
        let (payload, tag) = value.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        if !constant_time_eq(&tag, &self.tag(payload.as_bytes())) {
            return None;
        }
        let form: SignedForm =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        (form.expires_at > now).then_some(form)
    }

    /// Records that `form` was approved; false if it had been already.
    pub fn approve_once(&self, form: &SignedForm, now: i64) -> bool {
        let mut approved = self.approved.lock().unwrap_or_else(PoisonError::into_inner);
        if approved.len() >= MAX_APPROVED {
            approved.retain(|_, expires_at| *expires_at > now);
        }
        if approved.len() >= MAX_APPROVED {
            let oldest = approved
                .iter()
                .min_by_key(|(_, expires_at)| **expires_at)
                .map(|(nonce, _)| nonce.clone());
            if let Some(nonce) = oldest {
                approved.remove(&nonce);
            }
        }
        approved
            .insert(form.nonce.clone(), form.expires_at)
            .is_none()
    }

    fn tag(&self, payload: &[u8]) -> [u8; 32] {
        hmac_sha256::HMAC::mac(payload, self.key)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Scopes as their space-delimited text inside the signed JSON.
mod scopes_text {
    use serde::{Deserialize as _, Deserializer, Serializer};

    use crate::protocol::scope::ScopeSet;

    pub fn serialize<S: Serializer>(scopes: &ScopeSet, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(scopes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ScopeSet, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(client_id: &str) -> PendingAuthorization {
        PendingAuthorization {
            client_id: client_id.to_owned(),
            redirect_uri: "com.example.app:/cb".to_owned(),
            scopes: "read write".parse().expect("scopes"),
            state: Some("xyz".to_owned()),
            code_challenge: None,
            acr: None,
            max_age: None,
            prompt_login: false,
            dpop_jkt: None,
        }
    }

    fn forms() -> (tempfile::TempDir, Connection, LoginForms) {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = crate::storage::db::open(&dir.path().join("store.db")).expect("open");
        let forms = LoginForms::load(&conn).expect("forms");
        (dir, conn, forms)
    }

    #[test]
    fn a_sealed_form_opens_until_it_expires() {
        let (_dir, _conn, forms) = forms();
        let value = forms.seal(request("app"), 1_000);
        let opened = forms.open(&value, 1_000).expect("valid");
        assert_eq!(opened.authorization, request("app"));
        assert_eq!(opened.expires_at, 1_000 + LIFETIME_SECS);
        assert!(forms.open(&value, 1_000 + LIFETIME_SECS - 1).is_some());
        assert!(forms.open(&value, 1_000 + LIFETIME_SECS).is_none());
        assert_ne!(
            value,
            forms.seal(request("app"), 1_000),
            "each form has its nonce"
        );
    }

    #[test]
    fn a_tampered_or_foreign_form_does_not_open() {
        let (_dir, conn, forms) = forms();
        let value = forms.seal(request("app"), 1_000);
        let (payload, tag) = value.split_once('.').expect("two parts");
        // The payload with another client, the original signature.
        let mut json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json");
        json["client_id"] = "evil".into();
        let forged = format!(
            "{}.{tag}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&json).expect("json"))
        );
        assert!(forms.open(&forged, 1_000).is_none());
        for bad in ["", "no-dot", ".", "a.b", &format!("{payload}.")] {
            assert!(forms.open(bad, 1_000).is_none(), "{bad}");
        }
        // The key persists: reloading opens the form; another database's key does not.
        assert!(LoginForms::load(&conn)
            .expect("reload")
            .open(&value, 1_000)
            .is_some());
        let (_other_dir, _other, stranger) = super::tests::forms();
        assert!(stranger.open(&value, 1_000).is_none());
    }

    #[test]
    fn a_form_is_approved_once() {
        let (_dir, _conn, forms) = forms();
        let form = forms
            .open(&forms.seal(request("app"), 1_000), 1_000)
            .expect("valid");
        assert!(forms.approve_once(&form, 1_000));
        assert!(!forms.approve_once(&form, 1_001));
        let other = forms
            .open(&forms.seal(request("app"), 1_000), 1_000)
            .expect("valid");
        assert!(forms.approve_once(&other, 1_000));
    }
}
