//! `identity`: the namespace of the headers that carry verified identity.

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    #[serde(default = "default_header_prefix")]
    pub(super) header_prefix: String,
}

impl Default for RawIdentity {
    fn default() -> Self {
        RawIdentity {
            header_prefix: default_header_prefix(),
        }
    }
}

pub(super) fn default_header_prefix() -> String {
    "x-tollgate-".to_string()
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub header_prefix: String,
    pub subject: String,
    pub client_id: String,
    pub scopes: String,
    pub issuer: String,
    pub provider: String,
    pub consumer: String,
    pub api_key_id: String,
    pub tenant: String,
    /// The thumbprint of the key a DPoP-bound token is bound to.
    pub dpop_jkt: String,
}

impl Identity {
    pub(super) fn new(prefix: &str) -> Identity {
        Identity {
            header_prefix: prefix.to_string(),
            subject: format!("{prefix}subject"),
            client_id: format!("{prefix}client-id"),
            scopes: format!("{prefix}scopes"),
            issuer: format!("{prefix}issuer"),
            provider: format!("{prefix}provider"),
            consumer: format!("{prefix}consumer"),
            api_key_id: format!("{prefix}api-key-id"),
            tenant: format!("{prefix}tenant"),
            dpop_jkt: format!("{prefix}dpop-jkt"),
        }
    }
}
