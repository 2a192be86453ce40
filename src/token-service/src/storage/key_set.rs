//! The API-key set the gateway polls: `tollgate_contract::api_key_set`, the very
//! types the filter parses, filled from the database.
//!
//! Consumers are sorted by id and their keys by id, so the same set is always the same
//! bytes. Disabled and expired keys are listed too, so that the gateway can tell them
//! apart from unknown keys in its statistics.

use rusqlite::Connection;
use tollgate_contract::api_key_set::{ConsumerDocument, KeyDocument, KeySetDocument};

use crate::protocol::scope::ScopeSet;

/// Every consumer with every one of its keys, in one query.
pub fn load(conn: &Connection) -> rusqlite::Result<KeySetDocument> {
    let mut statement = conn.prepare_cached(
        "SELECT c.id, c.tenant, c.scopes, c.plan,
                k.id, k.digest, k.expires_at, k.allowed_cidrs, k.enabled
         FROM consumers c LEFT JOIN api_keys k ON k.consumer_id = c.id
         ORDER BY c.id, k.id",
    )?;
    let mut rows = statement.query([])?;
    let mut set = KeySetDocument::default();
    while let Some(row) = rows.next()? {
        let consumer_id: String = row.get(0)?;
        if set
            .consumers
            .last()
            .is_none_or(|last| last.id != consumer_id)
        {
            let scopes: ScopeSet = row.get(2)?;
            set.consumers.push(ConsumerDocument {
                id: consumer_id,
                tenant: row.get(1)?,
                scopes: scopes.iter().map(str::to_owned).collect(),
                plan: row.get(3)?,
                keys: Vec::new(),
            });
        }
        let Some(key_id) = row.get::<_, Option<String>>(4)? else {
            continue;
        };
        let cidrs: String = row.get(7)?;
        let key = KeyDocument {
            id: key_id,
            hash: row.get(5)?,
            expires_at: row
                .get::<_, Option<i64>>(6)?
                .and_then(|at| u64::try_from(at).ok()),
            allowed_cidrs: cidrs.split_whitespace().map(str::to_owned).collect(),
            enabled: row.get(8)?,
        };
        if let Some(consumer) = set.consumers.last_mut() {
            consumer.keys.push(key);
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::api_key_hashing::KeyHasher;
    use crate::storage::api_keys::{self, Restrictions};
    use crate::storage::consumers::{self, Consumer};
    use tollgate_contract::key_hashing::KeyHashing;
    use tollgate_core::apikey::KeySet as FilterKeySet;

    #[test]
    fn the_filter_parses_and_verifies_the_set() {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = crate::storage::db::open(&dir.path().join("store.db")).expect("open");
        for (id, tenant, plan) in [
            ("b-script", None, None),
            ("a-partner", Some("acme"), Some("gold")),
        ] {
            let consumer = Consumer {
                id: id.to_owned(),
                tenant: tenant.map(str::to_owned),
                scopes: "write:data read:data".parse().expect("scopes"),
                plan: plan.map(str::to_owned),
                created_at: 1_000,
            };
            assert!(consumers::insert(&conn, &consumer).expect("insert"));
        }
        let hasher = KeyHasher::load(None).expect("hasher");
        let restricted = Restrictions {
            expires_at: Some(5_000),
            allowed_cidrs: vec!["203.0.113.0/24".to_owned()],
        };
        let key = api_keys::create(&conn, &hasher, "a-partner", &restricted, 2_000)
            .expect("create")
            .expect("created");
        let disabled =
            api_keys::create(&conn, &hasher, "a-partner", &Restrictions::default(), 2_000)
                .expect("create")
                .expect("created");
        api_keys::set_enabled(&conn, &disabled.key.id, false).expect("disable");

        let document = serde_json::to_value(load(&conn).expect("load")).expect("json");
        assert_eq!(document["consumers"][0]["id"], "a-partner");
        assert_eq!(
            document["consumers"][0]["scopes"],
            serde_json::json!(["read:data", "write:data"])
        );
        assert_eq!(document["consumers"][1]["id"], "b-script");
        assert!(document["consumers"][1].get("tenant").is_none());
        assert_eq!(document["consumers"][1]["keys"], serde_json::json!([]));

        let set =
            FilterKeySet::parse(document.to_string().as_bytes()).expect("the filter's parser");
        assert_eq!(set.len(), 2);
        let (consumer, entry) = set
            .verify(
                &KeyHashing::Sha256,
                &key.plaintext,
                Some("203.0.113.9"),
                4_999,
            )
            .expect("valid");
        assert_eq!(
            (consumer.id.as_str(), entry.id.as_str()),
            ("a-partner", key.key.id.as_str())
        );
        assert_eq!(consumer.plan.as_deref(), Some("gold"));
        assert!(set
            .verify(
                &KeyHashing::Sha256,
                &key.plaintext,
                Some("203.0.113.9"),
                5_000
            )
            .is_err());
        assert!(set
            .verify(
                &KeyHashing::Sha256,
                &key.plaintext,
                Some("198.51.100.1"),
                3_000
            )
            .is_err());
        assert!(set
            .verify(&KeyHashing::Sha256, &disabled.plaintext, None, 3_000)
            .is_err());
    }
}
