//! Registered OAuth clients: the `clients` table and their redirect URIs.
//!
//! Confidential clients hold a secret (RFC 6749 §2.1). Public clients (native mobile
//! and desktop apps) cannot keep one: they authenticate with their client id alone
//! (`token_endpoint_auth_method` `none`) and must use PKCE.

use anyhow::{bail, Context as _};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension as _, Row, ToSql};

use crate::protocol::refresh;
use crate::protocol::scope::{self, ScopeSet};
use crate::storage::issued_tokens;

/// Scopes never advertised in the public metadata: the admin API's.
pub const PRIVILEGED_SCOPES: &[&str] = &[scope::ADMIN];
/// Longest accepted client id; ids travel in headers, logs and tokens.
const MAX_CLIENT_ID_LEN: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientType {
    /// Authenticates with a client secret (RFC 6749 §2.1).
    Confidential,
    /// Holds no secret; PKCE is mandatory for it.
    Public,
}

impl ClientType {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientType::Confidential => "confidential",
            ClientType::Public => "public",
        }
    }
}

impl ToSql for ClientType {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl FromSql for ClientType {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "confidential" => Ok(ClientType::Confidential),
            "public" => Ok(ClientType::Public),
            other => Err(FromSqlError::Other(
                format!("client type {other:?} is not supported by this version").into(),
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    pub client_id: String,
    pub client_type: ClientType,
    /// Argon2id PHC string of the client secret; `None` for public clients.
    pub secret_hash: Option<String>,
    /// Scopes the client may request.
    pub scopes: ScopeSet,
    /// What a request without `scope` gets: a subset of `scopes`.
    pub default_scopes: ScopeSet,
    pub created_at: i64,
    /// When the client was disabled; it cannot authenticate until enabled again.
    pub disabled_at: Option<i64>,
}

/// Client ids are 1 to 128 RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`):
/// nothing a client library must percent-encode for HTTP Basic (RFC 6749 §2.3.1),
/// which many get wrong, nor for a URL query.
pub fn validate_client_id(client_id: &str) -> Result<(), String> {
    if client_id.is_empty() || client_id.len() > MAX_CLIENT_ID_LEN {
        return Err(format!(
            "client id must be 1 to {MAX_CLIENT_ID_LEN} characters long"
        ));
    }
    if !client_id
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~'))
    {
        return Err(
            "client id may contain only ASCII letters, digits and - . _ ~ (nothing that needs \
             percent-encoding)"
                .to_owned(),
        );
    }
    Ok(())
}

/// Registers `client` with its redirect URIs (already validated).
pub fn insert(conn: &Connection, client: &Client, redirect_uris: &[String]) -> anyhow::Result<()> {
    if !client.default_scopes.is_subset(&client.scopes) {
        bail!("the default scopes must be among the client's scopes");
    }
    let tx = conn.unchecked_transaction()?;
    let inserted = tx.execute(
        "INSERT INTO clients
             (client_id, client_type, secret_hash, scopes, default_scopes, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (client_id) DO NOTHING",
        params![
            client.client_id,
            client.client_type,
            client.secret_hash,
            client.scopes.to_string(),
            client.default_scopes.to_string(),
            client.created_at
        ],
    )?;
    if inserted == 0 {
        bail!("client {} already exists", client.client_id);
    }
    for redirect_uri in redirect_uris {
        tx.execute(
            "INSERT INTO client_redirect_uris (client_id, redirect_uri) VALUES (?1, ?2)
             ON CONFLICT DO NOTHING",
            params![client.client_id, redirect_uri],
        )
        .with_context(|| format!("registering redirect URI {redirect_uri}"))?;
    }
    tx.commit()?;
    Ok(())
}

/// The client's registered redirect URIs, in lexical order.
pub fn redirect_uris(conn: &Connection, client_id: &str) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached(
        "SELECT redirect_uri FROM client_redirect_uris WHERE client_id = ?1 ORDER BY redirect_uri",
    )?
    .query_map([client_id], |row| row.get(0))?
    .collect()
}

/// The client `client_id`, unless it is unknown or disabled: a disabled client is
/// treated as unknown everywhere it would authenticate.
pub fn find(conn: &Connection, client_id: &str) -> rusqlite::Result<Option<Client>> {
    conn.prepare_cached(
        "SELECT client_id, client_type, secret_hash, scopes, default_scopes, created_at,
                disabled_at
         FROM clients WHERE client_id = ?1 AND disabled_at IS NULL",
    )?
    .query_row([client_id], from_row)
    .optional()
}

/// Every client, disabled ones included.
pub fn list(conn: &Connection) -> rusqlite::Result<Vec<Client>> {
    conn.prepare(
        "SELECT client_id, client_type, secret_hash, scopes, default_scopes, created_at,
                disabled_at
         FROM clients ORDER BY client_id",
    )?
    .query_map([], from_row)?
    .collect()
}

/// Removes a client, its redirect URIs and its grants; every unexpired access token
/// issued to it (through its users' grants or `client_credentials`) goes on the
/// revocation feed. Returns whether a client was removed.
pub fn remove(conn: &Connection, client_id: &str, now: i64) -> rusqlite::Result<bool> {
    let tx = conn.unchecked_transaction()?;
    issued_tokens::revoke_of_client(&tx, client_id, now)?;
    let removed = tx.execute("DELETE FROM clients WHERE client_id = ?1", [client_id])?;
    tx.commit()?;
    Ok(removed > 0)
}

/// Disables a client: it cannot authenticate any more, its grants are revoked and every
/// unexpired access token issued to it goes on the revocation feed. Enabling it again
/// lets it authenticate; what was revoked stays revoked. `None` if there is no such
/// client.
pub fn set_enabled(
    conn: &Connection,
    client_id: &str,
    enabled: bool,
    now: i64,
) -> rusqlite::Result<Option<()>> {
    let tx = conn.unchecked_transaction()?;
    let found = if enabled {
        tx.execute(
            "UPDATE clients SET disabled_at = NULL WHERE client_id = ?1",
            [client_id],
        )?
    } else {
        tx.execute(
            "UPDATE clients SET disabled_at = coalesce(disabled_at, ?2) WHERE client_id = ?1",
            params![client_id, now],
        )?
    };
    if found == 0 {
        return Ok(None);
    }
    if !enabled {
        refresh::revoke_families_of_client(&tx, client_id, now)?;
        issued_tokens::revoke_of_client(&tx, client_id, now)?;
    }
    tx.commit()?;
    Ok(Some(()))
}

/// The scopes this server grants that anyone may know about: the union of every
/// client's allowed scopes, without [`PRIVILEGED_SCOPES`].
pub fn public_scopes(conn: &Connection) -> rusqlite::Result<ScopeSet> {
    let mut all = ScopeSet::default();
    let mut statement = conn.prepare_cached("SELECT scopes FROM clients")?;
    for scopes in statement.query_map([], |row| row.get::<_, ScopeSet>(0))? {
        all = all.union(&scopes?);
    }
    Ok(all.without(PRIVILEGED_SCOPES))
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<Client> {
    Ok(Client {
        client_id: row.get(0)?,
        client_type: row.get(1)?,
        secret_hash: row.get(2)?,
        scopes: row.get(3)?,
        default_scopes: row.get(4)?,
        created_at: row.get(5)?,
        disabled_at: row.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(client_id: &str, scopes: &str) -> Client {
        Client {
            client_id: client_id.to_owned(),
            client_type: ClientType::Confidential,
            secret_hash: Some("$argon2id$placeholder".to_owned()),
            scopes: scopes.parse().expect("scopes"),
            default_scopes: ScopeSet::default(),
            created_at: 1_700_000_000,
            disabled_at: None,
        }
    }

    #[test]
    fn insert_find_list_remove() {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = crate::storage::db::open(&dir.path().join("store.db")).expect("open");
        insert(&conn, &client("b-app", "read"), &[]).expect("insert b");
        let uris = [
            "https://a.example/cb".to_owned(),
            "com.a.app:/cb".to_owned(),
        ];
        insert(&conn, &client("a-app", "write read"), &uris).expect("insert a");
        let err = insert(&conn, &client("a-app", ""), &[]).expect_err("duplicate");
        assert!(err.to_string().contains("already exists"));

        let found = find(&conn, "a-app").expect("find").expect("present");
        assert_eq!(found.scopes.to_string(), "read write");
        assert_eq!(found.client_type, ClientType::Confidential);
        assert!(find(&conn, "nobody").expect("find").is_none());

        insert(&conn, &client("ops", "read tollgate:admin"), &[]).expect("insert ops");
        assert_eq!(
            public_scopes(&conn).expect("public scopes").to_string(),
            "read write",
            "the admin scope is never advertised"
        );
        let defaults_outside = Client {
            default_scopes: "write".parse().expect("scopes"),
            ..client("narrow", "read")
        };
        assert!(insert(&conn, &defaults_outside, &[]).is_err());
        let ids: Vec<_> = list(&conn)
            .expect("list")
            .into_iter()
            .map(|c| c.client_id)
            .collect();
        assert_eq!(ids, ["a-app", "b-app", "ops"]);

        assert_eq!(
            redirect_uris(&conn, "a-app").expect("uris"),
            ["com.a.app:/cb", "https://a.example/cb"]
        );
        assert!(redirect_uris(&conn, "b-app").expect("uris").is_empty());

        let public = Client {
            client_type: ClientType::Public,
            secret_hash: None,
            ..client("spa", "read")
        };
        insert(&conn, &public, &["https://spa.example/cb".to_owned()]).expect("public");
        let found = find(&conn, "spa").expect("find").expect("present");
        assert_eq!(found.client_type, ClientType::Public);
        assert!(found.secret_hash.is_none());

        assert!(remove(&conn, "a-app", 0).expect("remove"));
        assert!(!remove(&conn, "a-app", 0).expect("remove again"));
        assert!(redirect_uris(&conn, "a-app").expect("uris").is_empty());
    }

    #[test]
    fn removing_or_disabling_a_client_revokes_all_its_live_access_tokens() {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = crate::storage::db::open(&dir.path().join("store.db")).expect("open");
        let revoked = |conn: &Connection| -> Vec<String> {
            conn.prepare("SELECT jti FROM revoked_access_tokens ORDER BY jti")
                .expect("prepare")
                .query_map([], |row| row.get(0))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows")
        };
        insert(&conn, &client("svc", "read"), &[]).expect("svc");
        insert(&conn, &client("other", "read"), &[]).expect("other");
        // client_credentials tokens: no grant, only the client.
        issued_tokens::record(&conn, "svc-live", "svc", None, 2_000).expect("record");
        issued_tokens::record(&conn, "svc-expired", "svc", None, 900).expect("record");
        issued_tokens::record(&conn, "other-live", "other", None, 2_000).expect("record");

        assert_eq!(
            set_enabled(&conn, "svc", false, 1_000).expect("disable"),
            Some(())
        );
        assert!(find(&conn, "svc").expect("find").is_none(), "disabled");
        assert_eq!(revoked(&conn), ["svc-live"]);
        let listed = list(&conn).expect("list");
        assert_eq!(listed[1].client_id, "svc");
        assert_eq!(listed[1].disabled_at, Some(1_000));
        assert_eq!(
            set_enabled(&conn, "svc", true, 1_010).expect("enable"),
            Some(())
        );
        assert!(find(&conn, "svc").expect("find").is_some(), "enabled again");
        assert_eq!(
            set_enabled(&conn, "nobody", false, 1_000).expect("disable"),
            None
        );

        assert!(remove(&conn, "other", 1_020).expect("remove"));
        assert_eq!(revoked(&conn), ["other-live", "svc-live"]);
    }

    #[test]
    fn client_id_rules() {
        for good in ["mobile-app", "svc.billing_v2~eu", "A1"] {
            assert_eq!(validate_client_id(good), Ok(()), "{good}");
        }
        for bad in ["svc:billing", "a@b", "a+b", "a%20b", "a/b", "a&b"] {
            assert!(validate_client_id(bad).is_err(), "{bad}");
        }
        assert!(validate_client_id("").is_err());
        assert!(validate_client_id("has space").is_err());
        assert!(validate_client_id("caf\u{e9}").is_err());
        assert!(validate_client_id(&"x".repeat(129)).is_err());
    }
}
