//! The revocation feed: access tokens revoked before they expire, by `jti`. The
//! token service serves it at `GET /revocations`; the gateway polls it through a
//! provider's `revocation_feed`.
//!
//! ```json
//! {"revoked":[{"jti":"…","exp":1700000000}]}
//! ```

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationFeed {
    pub revoked: Vec<RevokedToken>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedToken {
    pub jti: String,
    /// When the token expires anyway (Unix seconds): the gateway drops the entry then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
}
