//! The API-key set: consumers with the digests of their keys (never a key). The
//! token service serves it at `GET /api-keys`; the gateway reads it inline
//! (`api_keys.key_set`) or polls it (`api_keys.remote_key_set`).
//!
//! ```json
//! {"consumers": [{"id": "partner-a", "tenant": "acme", "scopes": ["read:data"], "plan": "gold",
//!   "keys": [{"id": "k1", "hash": "<64 hex>", "expires_at": 1800000000,
//!             "allowed_cidrs": ["203.0.113.0/24"], "enabled": true}]}]}
//! ```
//!
//! `hash` is [`crate::key_hashing::KeyHashing::digest`] in hex. Unknown fields are
//! refused, so a field one side adds fails loudly on the other.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySetDocument {
    pub consumers: Vec<ConsumerDocument>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerDocument {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// A name in the gateway's `rate_limits.plans`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(default)]
    pub keys: Vec<KeyDocument>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyDocument {
    pub id: String,
    /// The key's digest, 64 hex digits.
    pub hash: String,
    /// Unix seconds; absent: no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Address blocks the key may be used from; empty: any.
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}
