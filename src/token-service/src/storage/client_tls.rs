//! Which clients authenticate with a certificate (RFC 8705 §2), and what it must show.
//! Kept beside `clients`, not in it: most clients have none.

use rusqlite::{params, Connection, OptionalExtension as _};

use crate::protocol::mtls::TlsAuth;

pub fn register(conn: &Connection, client_id: &str, auth: &TlsAuth) -> rusqlite::Result<()> {
    let (parameter, value) = auth.parameter();
    conn.execute(
        "INSERT INTO client_tls_auth (client_id, parameter, value) VALUES (?1, ?2, ?3)",
        params![client_id, parameter, value],
    )?;
    Ok(())
}

/// The client's certificate registration, if it has one.
pub fn find(conn: &Connection, client_id: &str) -> rusqlite::Result<Option<TlsAuth>> {
    let row: Option<(String, String)> = conn
        .prepare_cached("SELECT parameter, value FROM client_tls_auth WHERE client_id = ?1")?
        .query_row([client_id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    Ok(row.and_then(|(parameter, value)| TlsAuth::from_parameter(&parameter, value)))
}
