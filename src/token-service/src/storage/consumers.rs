//! API-key consumers: the `consumers` table.
//!
//! A consumer is a caller that authenticates with API keys instead of OAuth (a partner,
//! a script, a device): an id, an optional tenant, the scopes every one of its keys
//! carries, and an optional rate-limit plan. The gateway forwards the id and tenant
//! upstream as the caller's verified identity. Removing a consumer removes its keys.

use rusqlite::{params, Connection, Row};
use serde::Serialize;

use crate::protocol::scope::ScopeSet;

/// Longest id, tenant or plan name; they travel in headers and logs.
const MAX_NAME_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Consumer {
    pub id: String,
    pub tenant: Option<String>,
    pub scopes: ScopeSet,
    pub plan: Option<String>,
    pub created_at: i64,
}

/// Ids, tenants and plans are 1 to 128 characters of printable ASCII without spaces.
pub fn validate_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("a {what} is 1 to {MAX_NAME_LEN} characters long"));
    }
    if !name.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(format!("a {what} is printable ASCII without spaces"));
    }
    Ok(())
}

/// Adds `consumer`; `false` if one with its id exists already.
pub fn insert(conn: &Connection, consumer: &Consumer) -> rusqlite::Result<bool> {
    let inserted = conn.execute(
        "INSERT INTO consumers (id, tenant, scopes, plan, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO NOTHING",
        params![
            consumer.id,
            consumer.tenant,
            consumer.scopes.to_string(),
            consumer.plan,
            consumer.created_at
        ],
    )?;
    Ok(inserted > 0)
}

/// Every consumer, by id.
pub fn list(conn: &Connection) -> rusqlite::Result<Vec<Consumer>> {
    conn.prepare_cached("SELECT id, tenant, scopes, plan, created_at FROM consumers ORDER BY id")?
        .query_map([], from_row)?
        .collect()
}

/// Removes a consumer and its keys; the number of keys removed with it, or `None` if
/// there was no such consumer.
pub fn remove(conn: &Connection, id: &str) -> rusqlite::Result<Option<usize>> {
    let tx = conn.unchecked_transaction()?;
    let keys: usize = tx.query_row(
        "SELECT count(*) FROM api_keys WHERE consumer_id = ?1",
        [id],
        |row| row.get(0),
    )?;
    let removed = tx.execute("DELETE FROM consumers WHERE id = ?1", [id])?;
    tx.commit()?;
    Ok((removed > 0).then_some(keys))
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<Consumer> {
    Ok(Consumer {
        id: row.get(0)?,
        tenant: row.get(1)?,
        scopes: row.get(2)?,
        plan: row.get(3)?,
        created_at: row.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(id: &str) -> Consumer {
        Consumer {
            id: id.to_owned(),
            tenant: Some("acme".to_owned()),
            scopes: "read:data".parse().expect("scopes"),
            plan: None,
            created_at: 1_700_000_000,
        }
    }

    #[test]
    fn insert_find_list_remove() {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = crate::storage::db::open(&dir.path().join("store.db")).expect("open");
        assert!(insert(&conn, &consumer("b")).expect("insert b"));
        assert!(insert(&conn, &consumer("a")).expect("insert a"));
        assert!(!insert(&conn, &consumer("a")).expect("duplicate"));
        assert_eq!(list(&conn).expect("list"), [consumer("a"), consumer("b")]);
        assert_eq!(remove(&conn, "a").expect("remove"), Some(0));
        assert_eq!(remove(&conn, "a").expect("remove again"), None);
    }

    #[test]
    fn names() {
        assert!(validate_name("consumer id", "partner-a").is_ok());
        for bad in ["", "has space", "tab\t", "caf\u{e9}", &"x".repeat(129)] {
            assert!(validate_name("consumer id", bad).is_err(), "{bad:?}");
        }
    }
}
