//! OAuth 2.0 itself: what a grant may yield and when a request must be refused.
//! Authorization codes, PKCE, the pending login forms of `/authorize`, redirect-URI
//! rules, refresh-token families, scopes, RFC 9068 access tokens, sender-constrained
//! tokens (DPoP proofs, certificate binding), and the RFC 6749 §5.2 error answers. The HTTP handlers in [`crate::http`] only parse and call in here.

pub mod access_token;
pub mod authentication;
pub mod codes;
pub mod dpop;
pub mod errors;
pub mod grants;
pub mod mtls;
pub mod pending;
pub mod pkce;
pub mod redirect_uri;
pub mod refresh;
pub mod scope;
