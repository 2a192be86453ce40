//! API keys: hashed, scoped, per consumer.
//!
//! Nothing here ever holds a plaintext key: key sets (inline or fetched from
//! the token service) carry only each key's SHA-256, or its HMAC-SHA256 under
//! a configured pepper. A presented key is hashed once and looked up by its
//! digest, so lookup time does not depend on how much of a stored key an
//! attacker's guess matches (and a digest match reveals nothing of the key).
//!
//! The key-set document is `tollgate_contract::api_key_set`.

use crate::credentials::HeaderEdit;
use crate::decision::Reason;
use crate::identity::Caller;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use tollgate_contract::api_key_set::KeySetDocument;
pub use tollgate_contract::cidr::Cidr;
use tollgate_contract::key_hashing::from_hex;
pub use tollgate_contract::key_hashing::KeyHashing;

#[derive(Debug, Clone)]
pub struct Consumer {
    pub id: String,
    pub tenant: Option<String>,
    pub scopes: Vec<String>,
    pub plan: Option<String>,
}

#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub id: String,
    pub consumer: usize,
    pub expires_at: Option<u64>,
    pub allowed_cidrs: Vec<Cidr>,
    pub enabled: bool,
    /// What the key stands for, built on its first use (see [`KeyIdentity`]).
    pub identity: OnceLock<Arc<KeyIdentity>>,
}

/// What a valid key stands for: the caller, the claims rules read, and the
/// identity headers. The same for every request with the key, so it is built
/// once, on the key's first use, and kept with the key set. A key set belongs
/// to one worker, whose settings (and so header names) never change.
#[derive(Debug)]
pub struct KeyIdentity {
    pub caller: Arc<Caller>,
    pub claims: Map<String, Value>,
    pub headers: Arc<[HeaderEdit]>,
}

/// A parsed key set, indexed by digest.
#[derive(Debug, Default)]
pub struct KeySet {
    pub consumers: Vec<Consumer>,
    by_digest: HashMap<[u8; 32], KeyEntry>,
    /// Whether any key is bound to address blocks (`allowed_cidrs`).
    binds_addresses: bool,
}

/// The key set's problem, with the JSON path of the culprit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySetError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for KeySetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl KeySet {
    pub fn parse(json: &[u8]) -> Result<KeySet, KeySetError> {
        let de = &mut serde_json::Deserializer::from_slice(json);
        let raw: KeySetDocument =
            serde_path_to_error::deserialize(de).map_err(|e| KeySetError {
                path: e.path().to_string(),
                message: e.into_inner().to_string(),
            })?;
        let mut set = KeySet::default();
        for (c, consumer) in raw.consumers.into_iter().enumerate() {
            let at = |f: &str| format!("consumers[{c}].{f}");
            let bad = |path: String, message: &str| KeySetError {
                path,
                message: message.to_string(),
            };
            if consumer.id.is_empty() || consumer.id.chars().any(|ch| ch.is_control()) {
                return Err(bad(
                    at("id"),
                    "consumer ids are non-empty, without control characters",
                ));
            }
            if consumer
                .tenant
                .as_deref()
                .is_some_and(|t| t.is_empty() || t.chars().any(|ch| ch.is_control()))
            {
                return Err(bad(
                    at("tenant"),
                    "must be non-empty, without control characters",
                ));
            }
            let index = set.consumers.len();
            for (k, key) in consumer.keys.into_iter().enumerate() {
                let at = |f: &str| format!("consumers[{c}].keys[{k}].{f}");
                let digest = from_hex(&key.hash).ok_or_else(|| {
                    bad(
                        at("hash"),
                        "must be 64 hex digits (a SHA-256 or HMAC-SHA256 digest)",
                    )
                })?;
                let allowed_cidrs = key
                    .allowed_cidrs
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        Cidr::parse(c).ok_or_else(|| {
                            bad(
                                at(&format!("allowed_cidrs[{i}]")),
                                "not an address block such as 203.0.113.0/24",
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let entry = KeyEntry {
                    id: key.id,
                    consumer: index,
                    expires_at: key.expires_at,
                    allowed_cidrs,
                    enabled: key.enabled,
                    identity: OnceLock::new(),
                };
                set.binds_addresses |= !entry.allowed_cidrs.is_empty();
                if set.by_digest.insert(digest, entry).is_some() {
                    return Err(bad(at("hash"), "the same key is listed twice"));
                }
            }
            set.consumers.push(Consumer {
                id: consumer.id,
                tenant: consumer.tenant,
                scopes: consumer.scopes,
                plan: consumer.plan,
            });
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Whether any key is bound to address blocks (`allowed_cidrs`): then
    /// requests need their client address looked up.
    pub fn binds_addresses(&self) -> bool {
        self.binds_addresses
    }

    /// Checks a presented key. The reasons differ for logs and metrics; the
    /// client sees one description for all of them (see `Reason`), so a
    /// caller without a valid key learns nothing about the keys that exist.
    pub fn verify(
        &self,
        hashing: &KeyHashing,
        key: &str,
        client_ip: Option<&str>,
        now: u64,
    ) -> Result<(&Consumer, &KeyEntry), Reason> {
        self.verify_digest(&hashing.digest(key), client_ip, now)
    }

    /// [`Self::verify`] for a key whose digest is already computed.
    pub fn verify_digest(
        &self,
        digest: &[u8; 32],
        client_ip: Option<&str>,
        now: u64,
    ) -> Result<(&Consumer, &KeyEntry), Reason> {
        let entry = self.by_digest.get(digest).ok_or(Reason::ApiKeyUnknown)?;
        if !entry.enabled {
            return Err(Reason::ApiKeyDisabled);
        }
        if entry.expires_at.is_some_and(|exp| now >= exp) {
            return Err(Reason::ApiKeyExpired);
        }
        if !entry.allowed_cidrs.is_empty() {
            let ip = client_ip.and_then(|ip| ip.parse::<IpAddr>().ok());
            if !ip.is_some_and(|ip| entry.allowed_cidrs.iter().any(|c| c.contains(ip))) {
                return Err(Reason::ApiKeyAddressNotAllowed);
            }
        }
        let consumer = self
            .consumers
            .get(entry.consumer)
            .ok_or(Reason::ApiKeyUnknown)?;
        Ok((consumer, entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hex(d: [u8; 32]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn set(hashing: &KeyHashing) -> KeySet {
        let h = |k: &str| hex(hashing.digest(k));
        let doc = json!({"consumers": [
            {"id": "partner-a", "tenant": "acme", "scopes": ["read:data"], "plan": "gold", "keys": [
                {"id": "live", "hash": h("tg_live_good")},
                {"id": "old", "hash": h("tg_live_old"), "enabled": false},
                {"id": "expired", "hash": h("tg_live_expired"), "expires_at": 1_000},
                {"id": "office", "hash": h("tg_live_office"), "allowed_cidrs": ["203.0.113.0/24", "2001:db8::/32"]}
            ]},
            {"id": "script", "keys": [{"id": "k", "hash": h("tg_live_script")}]}
        ]});
        KeySet::parse(doc.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn verifies_keys_and_tells_reasons_apart() {
        for hashing in [
            KeyHashing::Sha256,
            KeyHashing::HmacSha256(b"pepper".to_vec()),
        ] {
            let s = set(&hashing);
            let (c, k) = s.verify(&hashing, "tg_live_good", None, 2_000).unwrap();
            assert_eq!((c.id.as_str(), k.id.as_str()), ("partner-a", "live"));
            assert_eq!(c.tenant.as_deref(), Some("acme"));
            assert_eq!(
                s.verify(&hashing, "tg_live_nope", None, 0).unwrap_err(),
                Reason::ApiKeyUnknown
            );
            assert_eq!(
                s.verify(&hashing, "tg_live_old", None, 0).unwrap_err(),
                Reason::ApiKeyDisabled
            );
            assert_eq!(
                s.verify(&hashing, "tg_live_expired", None, 999)
                    .map(|(c, _)| c.id.clone()),
                Ok("partner-a".into())
            );
            assert_eq!(
                s.verify(&hashing, "tg_live_expired", None, 1_000)
                    .unwrap_err(),
                Reason::ApiKeyExpired
            );
            assert!(s
                .verify(&hashing, "tg_live_office", Some("203.0.113.7"), 0)
                .is_ok());
            assert!(s
                .verify(&hashing, "tg_live_office", Some("2001:db8::1"), 0)
                .is_ok());
            for ip in [Some("198.51.100.1"), Some("junk"), None] {
                assert_eq!(
                    s.verify(&hashing, "tg_live_office", ip, 0).unwrap_err(),
                    Reason::ApiKeyAddressNotAllowed
                );
            }
        }
    }

    #[test]
    fn the_pepper_matters() {
        let s = set(&KeyHashing::HmacSha256(b"pepper".to_vec()));
        let other = KeyHashing::HmacSha256(b"other".to_vec());
        assert_eq!(
            s.verify(&other, "tg_live_good", None, 0).unwrap_err(),
            Reason::ApiKeyUnknown
        );
        assert_eq!(
            s.verify(&KeyHashing::Sha256, "tg_live_good", None, 0)
                .unwrap_err(),
            Reason::ApiKeyUnknown
        );
    }

    #[test]
    fn bad_key_sets_name_the_field() {
        let cases = [
            (
                json!({"consumers": [{"id": "a", "keys": [{"id": "k", "hash": "abc"}]}]}),
                "consumers[0].keys[0].hash",
            ),
            (
                json!({"consumers": [{"id": "a", "keys": [{"id": "k", "hash": "0".repeat(64), "allowed_cidrs": ["10.0.0.0/33"]}]}]}),
                "consumers[0].keys[0].allowed_cidrs[0]",
            ),
            (
                json!({"consumers": [{"id": "", "keys": []}]}),
                "consumers[0].id",
            ),
            (
                json!({"consumers": [{"id": "a", "key": []}]}),
                "consumers[0].key",
            ),
            (
                json!({"consumers": [{"id": "a", "keys": [{"id": "k", "hash": "0".repeat(64)}, {"id": "j", "hash": "0".repeat(64)}]}]}),
                "consumers[0].keys[1].hash",
            ),
        ];
        for (doc, path) in cases {
            let e = KeySet::parse(doc.to_string().as_bytes()).unwrap_err();
            assert_eq!(e.path, path, "{e}");
        }
        assert!(KeySet::parse(b"plaintext").is_err());
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(
            c.contains("::ffff:10.1.0.9".parse().unwrap()),
            "v4-mapped v6"
        );
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("192.0.2.1")
            .unwrap()
            .contains("192.0.2.1".parse().unwrap()));
        assert!(!Cidr::parse("192.0.2.1")
            .unwrap()
            .contains("192.0.2.2".parse().unwrap()));
        assert!(Cidr::parse("2001:db8::/129").is_none());
        assert!(!Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn debug_output_never_shows_the_pepper() {
        assert_eq!(
            format!("{:?}", KeyHashing::HmacSha256(b"s3cret".to_vec())),
            "HmacSha256(<pepper>)"
        );
    }
}
