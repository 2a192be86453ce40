//! How a user signed in, as tokens state it: `auth_time`, `amr` (RFC 8176 method
//! references) and `acr` (the level those methods reach).
//!
//! Levels, weakest first:
//! - [`Level::Password`] `urn:tollgate:acr:pwd`: a password alone.
//! - [`Level::MultiFactor`] `urn:tollgate:acr:mfa`: a password and a one-time code.
//! - [`Level::PhishingResistant`] `urn:tollgate:acr:phr`: a passkey (WebAuthn, user
//!   verified), alone or after the password.
//!
//! The authentication is recorded with the authorization code and the refresh-token
//! family it starts, so a refreshed token states the original sign-in: step-up cannot
//! be refreshed into existence.

use rusqlite::{params, Connection, OptionalExtension as _};
use serde::{Deserialize, Serialize};

use crate::crypto::opaque;

/// The `acr` values of [`Level`], weakest first (what discovery advertises).
pub const ACR_VALUES: [&str; 3] = [
    Level::Password.acr(),
    Level::MultiFactor.acr(),
    Level::PhishingResistant.acr(),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Password,
    MultiFactor,
    PhishingResistant,
}

impl Level {
    pub const fn acr(self) -> &'static str {
        match self {
            Self::Password => "urn:tollgate:acr:pwd",
            Self::MultiFactor => "urn:tollgate:acr:mfa",
            Self::PhishingResistant => "urn:tollgate:acr:phr",
        }
    }

    pub fn from_acr(value: &str) -> Option<Self> {
        [Self::Password, Self::MultiFactor, Self::PhishingResistant]
            .into_iter()
            .find(|level| level.acr() == value)
    }
}

/// One way a user proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Password (`pwd`).
    Pwd,
    /// Time-based one-time code from an authenticator app (`otp`).
    Otp,
    /// Passkey: a hardware-secured key, user verified (`hwk`).
    Hwk,
}

/// A completed sign-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authentication {
    /// Unix seconds of the sign-in.
    pub auth_time: i64,
    /// Methods used, sorted, no duplicates.
    pub methods: Vec<Method>,
}

impl Authentication {
    pub fn new(auth_time: i64, mut methods: Vec<Method>) -> Self {
        methods.sort();
        methods.dedup();
        Self { auth_time, methods }
    }

    pub fn level(&self) -> Level {
        if self.methods.contains(&Method::Hwk) {
            Level::PhishingResistant
        } else if self.methods.contains(&Method::Otp) && self.methods.contains(&Method::Pwd) {
            Level::MultiFactor
        } else {
            Level::Password
        }
    }

    pub fn acr(&self) -> &'static str {
        self.level().acr()
    }

    /// RFC 8176 values: the methods, plus `mfa` when the sign-in was multi-factor (a
    /// user-verified passkey is: possession and a PIN or biometric).
    pub fn amr(&self) -> Vec<&'static str> {
        let mut amr: Vec<&'static str> = self
            .methods
            .iter()
            .map(|method| match method {
                Method::Pwd => "pwd",
                Method::Otp => "otp",
                Method::Hwk => "hwk",
            })
            .collect();
        if self.level() > Level::Password {
            amr.push("mfa");
        }
        amr.sort_unstable();
        amr
    }
}

/// Records how the user of `code` signed in.
pub fn record_for_code(
    conn: &Connection,
    code: &str,
    authentication: &Authentication,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE authorization_codes SET authentication = ?2 WHERE code_hash = ?1",
        params![opaque::digest(code), to_text(authentication)],
    )?;
    Ok(())
}

pub fn of_code(conn: &Connection, code: &str) -> rusqlite::Result<Option<Authentication>> {
    let text: Option<Option<String>> = conn
        .query_row(
            "SELECT authentication FROM authorization_codes WHERE code_hash = ?1",
            [opaque::digest(code)],
            |row| row.get(0),
        )
        .optional()?;
    Ok(text.flatten().and_then(|text| from_text(&text)))
}

pub fn record_for_family(
    conn: &Connection,
    family_id: i64,
    authentication: &Authentication,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE token_families SET authentication = ?2 WHERE family_id = ?1",
        params![family_id, to_text(authentication)],
    )?;
    Ok(())
}

pub fn of_family(conn: &Connection, family_id: i64) -> rusqlite::Result<Option<Authentication>> {
    let text: Option<Option<String>> = conn
        .query_row(
            "SELECT authentication FROM token_families WHERE family_id = ?1",
            [family_id],
            |row| row.get(0),
        )
        .optional()?;
    Ok(text.flatten().and_then(|text| from_text(&text)))
}

fn to_text(authentication: &Authentication) -> String {
    // Integers and unit variants always serialise.
    serde_json::to_string(authentication).unwrap_or_default()
}

fn from_text(text: &str) -> Option<Authentication> {
    serde_json::from_str(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_method_references() {
        let password = Authentication::new(1, vec![Method::Pwd]);
        assert_eq!(password.level(), Level::Password);
        assert_eq!(password.amr(), ["pwd"]);
        let totp = Authentication::new(1, vec![Method::Otp, Method::Pwd, Method::Otp]);
        assert_eq!(totp.acr(), "urn:tollgate:acr:mfa");
        assert_eq!(totp.amr(), ["mfa", "otp", "pwd"]);
        let passkey = Authentication::new(1, vec![Method::Hwk]);
        assert_eq!(passkey.acr(), "urn:tollgate:acr:phr");
        assert_eq!(passkey.amr(), ["hwk", "mfa"]);
        // A one-time code alone is not a second factor of anything.
        assert_eq!(
            Authentication::new(1, vec![Method::Otp]).level(),
            Level::Password
        );
        assert!(Level::Password < Level::MultiFactor);
        assert!(Level::MultiFactor < Level::PhishingResistant);
        for acr in ACR_VALUES {
            assert_eq!(Level::from_acr(acr).map(Level::acr), Some(acr));
        }
        assert_eq!(Level::from_acr("urn:other"), None);
    }
}
