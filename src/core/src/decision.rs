//! What the filter decided about a request, and why.
//!
//! Every outcome carries a stable, machine-readable [`Reason`]; audit events
//! and metrics key on it, and HTTP responses are rendered from it, so a
//! reason's status code and RFC 6750 error are defined exactly once, here.

use crate::alg::Algorithm;

/// Why a request was allowed or denied. `as_str` values are a public contract
/// (logs, metrics, dashboards): never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    // Allowed.
    Authenticated,
    Anonymous,
    // 400 invalid_request: the request means different things to different readers.
    AmbiguousPath,
    AmbiguousMethodOverride,
    // 401, no error code (RFC 6750 §3.1: the client sent no credentials).
    MissingCredentials,
    // 401 invalid_token.
    MalformedToken,
    UnsupportedAlgorithm,
    UnknownIssuer,
    ProviderNotAllowed,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    LifetimeTooLong,
    AudienceMismatch,
    WrongTokenType,
    MissingClaim,
    /// An identity claim (`sub`, `client_id`, scopes, a `claim_to_headers`
    /// claim) holds control characters: it cannot be forwarded, and the
    /// upstream must never see an authenticated request without its identity.
    UnsafeIdentityClaim,
    Revoked,
    // 401 with a `DPoP` challenge (RFC 9449 §7.1).
    DpopProofInvalid,
    DpopProofReplayed,
    DpopKeyMismatch,
    DpopNonceRequired,
    DpopBoundTokenAsBearer,
    DpopRequired,
    /// An anomaly signal suspended this credential for a while (`anomalies`).
    CredentialSuspended,
    // 401 invalid_token, one description for all: see `Reason::description`.
    ApiKeyUnknown,
    ApiKeyDisabled,
    ApiKeyExpired,
    ApiKeyAddressNotAllowed,
    // 403.
    InsufficientScope,
    /// The rule needs roles (`requires.roles`) the caller lacks.
    MissingRole,
    ClaimMismatch,
    NoMatchingRule,
    // 403, context conditions (`requires.context`).
    AddressNotAllowed,
    CountryNotAllowed,
    OutsideTimeWindow,
    /// A request header the rule requires is missing or does not match.
    AttributeMismatch,
    /// A version header (`min_version`) is missing or older than the rule's.
    VersionTooOld,
    /// The token's device claim is missing or does not match the request.
    DeviceMismatch,
    // 401 insufficient_user_authentication (RFC 9470 step-up).
    InsufficientUserAuthentication,
    // 429.
    RateLimited,
    LockedOut,
    // 503: keys (or the revocation list) for the token's issuer, or the API-key
    // set, are not loaded yet.
    KeysUnavailable,
    RevocationsUnavailable,
    ApiKeysUnavailable,
    // Client certificates (mutual TLS) and certificate-bound tokens (RFC 8705).
    /// 401: the rule requires a client certificate and the connection has none.
    ClientCertificateRequired,
    /// 403: the certificate's identity (SAN, subject) is not one the rule allows.
    ClientCertificateNotAllowed,
    /// 401 invalid_token: the token's `cnf.x5t#S256` is not this connection's certificate.
    CertificateBindingMismatch,
    /// 401 invalid_token: a certificate-bound token on a connection without a certificate.
    BoundTokenWithoutCertificate,
    /// 401 invalid_token: the rule requires certificate-bound tokens; this one is a bearer token.
    TokenNotBound,
    /// 500: a check needs the client certificate, and the host does not expose
    /// the connection's properties. Fails closed.
    ClientCertificateUnavailable,
    /// A remote policy's rate-limit service could not answer (unreachable,
    /// an error, a timeout, an unreadable answer) and the policy fails closed.
    RateLimitServiceUnavailable,
}

impl Reason {
    pub const ALL: [Reason; 54] = [
        Reason::Authenticated,
        Reason::Anonymous,
        Reason::AmbiguousPath,
        Reason::AmbiguousMethodOverride,
        Reason::MissingCredentials,
        Reason::MalformedToken,
        Reason::UnsupportedAlgorithm,
        Reason::UnknownIssuer,
        Reason::ProviderNotAllowed,
        Reason::UnknownKey,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::IssuedInFuture,
        Reason::LifetimeTooLong,
        Reason::AudienceMismatch,
        Reason::WrongTokenType,
        Reason::MissingClaim,
        Reason::UnsafeIdentityClaim,
        Reason::Revoked,
        Reason::DpopProofInvalid,
        Reason::DpopProofReplayed,
        Reason::DpopKeyMismatch,
        Reason::DpopNonceRequired,
        Reason::DpopBoundTokenAsBearer,
        Reason::DpopRequired,
        Reason::CredentialSuspended,
        Reason::ApiKeyUnknown,
        Reason::ApiKeyDisabled,
        Reason::ApiKeyExpired,
        Reason::ApiKeyAddressNotAllowed,
        Reason::InsufficientScope,
        Reason::MissingRole,
        Reason::ClaimMismatch,
        Reason::NoMatchingRule,
        Reason::AddressNotAllowed,
        Reason::CountryNotAllowed,
        Reason::OutsideTimeWindow,
        Reason::AttributeMismatch,
        Reason::VersionTooOld,
        Reason::DeviceMismatch,
        Reason::InsufficientUserAuthentication,
        Reason::RateLimited,
        Reason::LockedOut,
        Reason::KeysUnavailable,
        Reason::RevocationsUnavailable,
        Reason::ApiKeysUnavailable,
        Reason::ClientCertificateRequired,
        Reason::ClientCertificateNotAllowed,
        Reason::CertificateBindingMismatch,
        Reason::BoundTokenWithoutCertificate,
        Reason::TokenNotBound,
        Reason::ClientCertificateUnavailable,
        Reason::RateLimitServiceUnavailable,
    ];

    /// The reason's place in [`Reason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Authenticated => "authenticated",
            Reason::Anonymous => "anonymous",
            Reason::AmbiguousPath => "ambiguous_path",
            Reason::AmbiguousMethodOverride => "ambiguous_method_override",
            Reason::MissingCredentials => "missing_credentials",
            Reason::MalformedToken => "malformed_token",
            Reason::UnsupportedAlgorithm => "unsupported_algorithm",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::ProviderNotAllowed => "provider_not_allowed",
            Reason::UnknownKey => "unknown_key",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuedInFuture => "issued_in_future",
            Reason::LifetimeTooLong => "lifetime_too_long",
            Reason::AudienceMismatch => "audience_mismatch",
            Reason::WrongTokenType => "wrong_token_type",
            Reason::MissingClaim => "missing_claim",
            Reason::UnsafeIdentityClaim => "unsafe_identity_claim",
            Reason::Revoked => "revoked",
            Reason::DpopProofInvalid => "dpop_proof_invalid",
            Reason::DpopProofReplayed => "dpop_proof_replayed",
            Reason::DpopKeyMismatch => "dpop_key_mismatch",
            Reason::DpopNonceRequired => "dpop_nonce_required",
            Reason::DpopBoundTokenAsBearer => "dpop_bound_token_as_bearer",
            Reason::DpopRequired => "dpop_required",
            Reason::CredentialSuspended => "credential_suspended",
            Reason::ApiKeyUnknown => "api_key_unknown",
            Reason::ApiKeyDisabled => "api_key_disabled",
            Reason::ApiKeyExpired => "api_key_expired",
            Reason::ApiKeyAddressNotAllowed => "api_key_address_not_allowed",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::MissingRole => "missing_role",
            Reason::ClaimMismatch => "claim_mismatch",
            Reason::NoMatchingRule => "no_matching_rule",
            Reason::AddressNotAllowed => "address_not_allowed",
            Reason::CountryNotAllowed => "country_not_allowed",
            Reason::OutsideTimeWindow => "outside_time_window",
            Reason::AttributeMismatch => "attribute_mismatch",
            Reason::VersionTooOld => "version_too_old",
            Reason::DeviceMismatch => "device_mismatch",
            Reason::InsufficientUserAuthentication => "insufficient_user_authentication",
            Reason::RateLimited => "rate_limited",
            Reason::LockedOut => "locked_out",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::RevocationsUnavailable => "revocations_unavailable",
            Reason::ApiKeysUnavailable => "api_keys_unavailable",
            Reason::ClientCertificateRequired => "client_certificate_required",
            Reason::ClientCertificateNotAllowed => "client_certificate_not_allowed",
            Reason::CertificateBindingMismatch => "certificate_binding_mismatch",
            Reason::BoundTokenWithoutCertificate => "bound_token_without_certificate",
            Reason::TokenNotBound => "token_not_bound",
            Reason::ClientCertificateUnavailable => "client_certificate_unavailable",
            Reason::RateLimitServiceUnavailable => "rate_limit_service_unavailable",
        }
    }

    /// Failures that look like guessing a credential, which brute-force
    /// protection counts. Expired, revoked or out-of-scope credentials are
    /// genuine (their signature or digest matched): a legitimate client may
    /// still hold one, and must not lock its own address out by retrying.
    pub fn is_credential_guess(self) -> bool {
        matches!(
            self,
            Reason::MalformedToken
                | Reason::UnsupportedAlgorithm
                | Reason::UnknownIssuer
                | Reason::UnknownKey
                | Reason::BadSignature
                | Reason::ApiKeyUnknown
        )
    }

    /// A context condition on the request or device refused it (403).
    pub fn is_context(self) -> bool {
        matches!(
            self,
            Reason::AddressNotAllowed
                | Reason::CountryNotAllowed
                | Reason::OutsideTimeWindow
                | Reason::AttributeMismatch
                | Reason::VersionTooOld
                | Reason::DeviceMismatch
        )
    }

    pub fn is_allow(self) -> bool {
        matches!(self, Reason::Authenticated | Reason::Anonymous)
    }

    pub fn status(self) -> u32 {
        match self {
            Reason::Authenticated | Reason::Anonymous => 200,
            Reason::AmbiguousPath | Reason::AmbiguousMethodOverride => 400,
            Reason::InsufficientScope
            | Reason::MissingRole
            | Reason::ClaimMismatch
            | Reason::NoMatchingRule
            | Reason::ClientCertificateNotAllowed => 403,
            r if r.is_context() => 403,
            Reason::RateLimited | Reason::LockedOut => 429,
            Reason::KeysUnavailable
            | Reason::RevocationsUnavailable
            | Reason::ApiKeysUnavailable
            | Reason::RateLimitServiceUnavailable => 503,
            Reason::ClientCertificateUnavailable => 500,
            _ => 401,
        }
    }

    /// The `error` value of the JSON body and, where RFC 6750 defines one, of
    /// `WWW-Authenticate`.
    fn error_code(self) -> Option<&'static str> {
        match self {
            Reason::Authenticated | Reason::Anonymous => None,
            Reason::AmbiguousPath | Reason::AmbiguousMethodOverride => Some("invalid_request"),
            Reason::MissingCredentials => Some("unauthorized"),
            Reason::InsufficientScope | Reason::ClaimMismatch => Some("insufficient_scope"),
            Reason::NoMatchingRule | Reason::MissingRole | Reason::ClientCertificateNotAllowed => {
                Some("access_denied")
            }
            Reason::ClientCertificateRequired => Some("invalid_request"),
            Reason::ClientCertificateUnavailable => Some("server_error"),
            r if r.is_context() => Some("access_denied"),
            Reason::InsufficientUserAuthentication => Some("insufficient_user_authentication"),
            Reason::RateLimited | Reason::LockedOut => Some("rate_limited"),
            Reason::KeysUnavailable
            | Reason::RevocationsUnavailable
            | Reason::ApiKeysUnavailable
            | Reason::RateLimitServiceUnavailable => Some("temporarily_unavailable"),
            _ => Some("invalid_token"),
        }
    }

    /// Fixed, human-readable text. Never built from request input, so no
    /// error can echo a token back. API-key failures share one text: telling
    /// an unauthenticated caller that a key exists but is disabled, expired
    /// or bound to other addresses would help someone holding a stolen key.
    pub fn description(self) -> &'static str {
        match self {
            Reason::Authenticated => "authenticated",
            Reason::Anonymous => "anonymous access allowed",
            Reason::AmbiguousPath => {
                "the request path is ambiguous (encoded slash or backslash, malformed or double escape, or dot-segments and parameters that change its meaning)"
            }
            Reason::AmbiguousMethodOverride => {
                "the request's method overrides are invalid or disagree"
            }
            Reason::MissingCredentials => "authentication required",
            Reason::MalformedToken => "the access token is malformed",
            Reason::UnsupportedAlgorithm => "the token's signing algorithm is not accepted",
            Reason::UnknownIssuer => "the token's issuer is not trusted",
            Reason::ProviderNotAllowed => "the token's issuer is not accepted for this resource",
            Reason::UnknownKey => "the token was signed with an unknown key",
            Reason::BadSignature => "the token signature is invalid",
            Reason::Expired => "the access token expired",
            Reason::NotYetValid => "the access token is not valid yet",
            Reason::IssuedInFuture => "the access token was issued in the future",
            Reason::LifetimeTooLong => "the access token lifetime exceeds the allowed maximum",
            Reason::AudienceMismatch => "the access token is not meant for this audience",
            Reason::WrongTokenType => "the token is not an access token of the required type",
            Reason::MissingClaim => "the access token lacks a required claim",
            Reason::UnsafeIdentityClaim => {
                "the access token carries an identity claim that cannot be forwarded"
            }
            Reason::Revoked => "the access token has been revoked",
            Reason::DpopProofInvalid => "the DPoP proof is not valid",
            Reason::DpopProofReplayed => "the DPoP proof was already used",
            Reason::DpopKeyMismatch => "the DPoP proof's key is not the one the token is bound to",
            Reason::DpopNonceRequired => "the DPoP proof must carry the server's nonce",
            Reason::DpopBoundTokenAsBearer => {
                "the access token is DPoP-bound: present it with the DPoP scheme and a proof"
            }
            Reason::DpopRequired => "this resource requires a DPoP-bound access token",
            Reason::CredentialSuspended => "the credential is suspended for a while, get a new one",
            Reason::ApiKeyUnknown
            | Reason::ApiKeyDisabled
            | Reason::ApiKeyExpired
            | Reason::ApiKeyAddressNotAllowed => "the API key is not valid",
            Reason::InsufficientScope => "the access token lacks the required scope",
            Reason::MissingRole => "the caller lacks a role this resource requires",
            Reason::ClaimMismatch => "the access token does not carry the required claims",
            Reason::NoMatchingRule => "no access rule allows this request",
            Reason::AddressNotAllowed => "requests from this address are not allowed here",
            Reason::CountryNotAllowed => "requests from this country are not allowed here",
            Reason::OutsideTimeWindow => "this resource is not available at this time",
            Reason::AttributeMismatch => "the request lacks an attribute this resource requires",
            Reason::VersionTooOld => "the client version is missing or too old: update it",
            Reason::DeviceMismatch => "the access token is not bound to this device",
            Reason::InsufficientUserAuthentication => {
                "a stronger or more recent authentication is required"
            }
            Reason::RateLimited => "rate limit exceeded, retry later",
            Reason::LockedOut => "too many failed authentications from this address, retry later",
            Reason::KeysUnavailable => "token signing keys are not available yet, retry shortly",
            Reason::RevocationsUnavailable => {
                "the token revocation list is not available yet, retry shortly"
            }
            Reason::ApiKeysUnavailable => "the API key set is not available yet, retry shortly",
            Reason::ClientCertificateRequired => {
                "this resource requires a client certificate (mutual TLS)"
            }
            Reason::ClientCertificateNotAllowed => {
                "the client certificate is not allowed for this resource"
            }
            Reason::CertificateBindingMismatch => {
                "the access token is bound to another client certificate"
            }
            Reason::BoundTokenWithoutCertificate => {
                "the access token is bound to a client certificate, and none was presented"
            }
            Reason::TokenNotBound => {
                "this resource requires an access token bound to the client certificate"
            }
            Reason::ClientCertificateUnavailable => {
                "the gateway cannot see this connection's client certificate"
            }
            Reason::RateLimitServiceUnavailable => {
                "the rate-limit service is not available, retry shortly"
            }
        }
    }
}

/// A denial, rendered: status, headers and a small JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// Renders `reason` as an HTTP response.
///
/// * 401 carries `WWW-Authenticate: Bearer realm="…"`, plus `error` and
///   `error_description` when credentials were presented (RFC 6750 §3).
/// * 403 for scopes names the needed scope in `scope="…"`; 403 for roles, time
///   windows and headers names what the rule needs in the description
///   (`needed`: what the rule needs, never what the request holds).
/// * 401 for step-up (RFC 9470) carries `error="insufficient_user_authentication"`
///   and, as `needed`, the rule's `acr_values` / `max_age` auth-params.
/// * 503 carries `Retry-After`.
pub fn render_denial(
    reason: Reason,
    realm: &str,
    needed: Option<&str>,
    retry_after_secs: u64,
) -> Denial {
    let status = reason.status();
    let error = reason.error_code().unwrap_or("access_denied");
    let description = reason.description();
    let mut headers: Vec<(&'static str, String)> = Vec::with_capacity(3);
    let mut challenge = format!("Bearer realm=\"{}\"", quote_safe(realm));
    match reason {
        Reason::MissingCredentials => {}
        Reason::InsufficientScope | Reason::ClaimMismatch => {
            challenge.push_str(&format!(
                ", error=\"insufficient_scope\", error_description=\"{description}\""
            ));
            if let Some(scope) = needed.filter(|_| reason == Reason::InsufficientScope) {
                challenge.push_str(&format!(", scope=\"{}\"", quote_safe(scope)));
            }
        }
        Reason::InsufficientUserAuthentication => {
            challenge.push_str(&format!(
                ", error=\"insufficient_user_authentication\", error_description=\"{description}\""
            ));
            if let Some(params) = needed.filter(|p| !p.is_empty()) {
                challenge.push_str(", ");
                challenge.push_str(params);
            }
        }
        _ if status == 401 => {
            challenge.push_str(&format!(
                ", error=\"{error}\", error_description=\"{description}\""
            ));
        }
        _ => {}
    }
    if status == 401 || matches!(reason, Reason::InsufficientScope | Reason::ClaimMismatch) {
        headers.push(("www-authenticate", challenge));
    }
    if status == 503 || status == 429 {
        headers.push(("retry-after", retry_after_secs.max(1).to_string()));
    }
    headers.push(("content-type", "application/json".to_string()));
    headers.push(("cache-control", "no-store".to_string()));
    let body = match (reason, needed) {
        (
            Reason::MissingRole
            | Reason::OutsideTimeWindow
            | Reason::AttributeMismatch
            | Reason::VersionTooOld,
            Some(needed),
        ) => serde_json::json!({
            "error": error, "error_description": format!("{description} ({needed})")
        }),
        _ => serde_json::json!({ "error": error, "error_description": description }),
    }
    .to_string();
    Denial {
        reason,
        status,
        headers,
        body,
    }
}

/// Keeps a value inside a quoted-string: drops `"`, `\` and control characters.
fn quote_safe(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

/// A `401` with a `DPoP` challenge (RFC 9449 §7.1): `algs` names the proof
/// algorithms accepted; `error` is `use_dpop_nonce` (with the `DPoP-Nonce`
/// header), `invalid_dpop_proof`, or `invalid_token` for the token itself.
pub fn render_dpop_denial(
    reason: Reason,
    algs: &[Algorithm],
    description: &str,
    nonce: Option<String>,
) -> Denial {
    let error = match reason {
        Reason::DpopNonceRequired => "use_dpop_nonce",
        Reason::DpopBoundTokenAsBearer | Reason::DpopRequired => "invalid_token",
        _ => "invalid_dpop_proof",
    };
    let algs: Vec<&str> = algs.iter().map(|a| a.name()).collect();
    let mut headers: Vec<(&'static str, String)> = vec![(
        "www-authenticate",
        format!(
            "DPoP algs=\"{}\", error=\"{error}\", error_description=\"{}\"",
            algs.join(" "),
            quote_safe(description)
        ),
    )];
    if let Some(nonce) = nonce {
        headers.push(("dpop-nonce", nonce));
    }
    headers.push(("content-type", "application/json".to_string()));
    headers.push(("cache-control", "no-store".to_string()));
    Denial {
        reason,
        status: 401,
        headers,
        body: serde_json::json!({ "error": error, "error_description": description }).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(d: &'a Denial, name: &str) -> Option<&'a str> {
        d.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn reason_codes_are_unique_snake_case() {
        let codes: std::collections::HashSet<&str> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(codes.len(), Reason::ALL.len());
        assert!(codes
            .iter()
            .all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    }

    #[test]
    fn index_is_the_place_in_all() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
    }

    #[test]
    fn only_guess_like_failures_count_as_brute_force() {
        assert!(Reason::BadSignature.is_credential_guess());
        assert!(Reason::ApiKeyUnknown.is_credential_guess());
        for genuine in [
            Reason::Expired,
            Reason::Revoked,
            Reason::ApiKeyExpired,
            Reason::MissingCredentials,
        ] {
            assert!(!genuine.is_credential_guess(), "{genuine:?}");
        }
    }

    #[test]
    fn missing_credentials_is_a_bare_challenge() {
        let d = render_denial(Reason::MissingCredentials, "tollgate", None, 0);
        assert_eq!(d.status, 401);
        assert_eq!(
            header(&d, "www-authenticate"),
            Some("Bearer realm=\"tollgate\"")
        );
        let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body["error"], "unauthorized");
    }

    #[test]
    fn invalid_token_carries_rfc6750_error() {
        let d = render_denial(Reason::Expired, "api", None, 0);
        assert_eq!(d.status, 401);
        assert_eq!(
            header(&d, "www-authenticate"),
            Some("Bearer realm=\"api\", error=\"invalid_token\", error_description=\"the access token expired\"")
        );
        let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert_eq!(body["error_description"], "the access token expired");
    }

    #[test]
    fn insufficient_scope_names_the_scope() {
        let d = render_denial(Reason::InsufficientScope, "api", Some("write:data"), 0);
        assert_eq!(d.status, 403);
        assert!(header(&d, "www-authenticate")
            .unwrap()
            .ends_with("error=\"insufficient_scope\", error_description=\"the access token lacks the required scope\", scope=\"write:data\""));
    }

    #[test]
    fn keys_unavailable_is_503_with_retry_after() {
        let d = render_denial(Reason::KeysUnavailable, "api", None, 0);
        assert_eq!(d.status, 503);
        assert_eq!(header(&d, "retry-after"), Some("1"));
        assert_eq!(header(&d, "www-authenticate"), None);
    }

    #[test]
    fn step_up_is_an_rfc_9470_challenge() {
        let d = render_denial(
            Reason::InsufficientUserAuthentication,
            "api",
            Some("acr_values=\"gold\", max_age=\"300\""),
            0,
        );
        assert_eq!(d.status, 401);
        assert_eq!(
            header(&d, "www-authenticate"),
            Some("Bearer realm=\"api\", error=\"insufficient_user_authentication\", error_description=\"a stronger or more recent authentication is required\", acr_values=\"gold\", max_age=\"300\"")
        );
        let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body["error"], "insufficient_user_authentication");
        // An amr-only rule has no RFC 9470 parameter to add.
        let d = render_denial(Reason::InsufficientUserAuthentication, "api", Some(""), 0);
        assert!(header(&d, "www-authenticate").unwrap().ends_with(
            "error_description=\"a stronger or more recent authentication is required\""
        ));
    }

    #[test]
    fn context_refusals_are_403_access_denied_naming_what_is_needed() {
        for reason in Reason::ALL.into_iter().filter(|r| r.is_context()) {
            let d = render_denial(reason, "api", None, 0);
            assert_eq!(d.status, 403, "{reason:?}");
            assert_eq!(header(&d, "www-authenticate"), None, "{reason:?}");
            let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
            assert_eq!(body["error"], "access_denied");
            assert!(!reason.is_credential_guess());
        }
        let d = render_denial(
            Reason::VersionTooOld,
            "api",
            Some("x-app-version: 2.4.0 or later"),
            0,
        );
        let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(
            body["error_description"],
            "the client version is missing or too old: update it (x-app-version: 2.4.0 or later)"
        );
    }

    #[test]
    fn ambiguous_requests_are_400_invalid_request_without_challenge() {
        for reason in [Reason::AmbiguousPath, Reason::AmbiguousMethodOverride] {
            let d = render_denial(reason, "api", None, 0);
            assert_eq!(d.status, 400);
            assert_eq!(header(&d, "www-authenticate"), None);
            let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
            assert_eq!(body["error"], "invalid_request");
        }
    }

    #[test]
    fn an_api_key_caller_waiting_for_the_key_set_hears_about_api_keys() {
        let d = render_denial(Reason::ApiKeysUnavailable, "api", None, 2);
        assert_eq!(d.status, 503);
        assert_eq!(header(&d, "retry-after"), Some("2"));
        let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body["error"], "temporarily_unavailable");
        assert_eq!(
            body["error_description"],
            "the API key set is not available yet, retry shortly"
        );
        assert!(!d.body.contains("token"), "{}", d.body);
    }

    #[test]
    fn a_rate_limit_service_outage_is_503_not_429() {
        let d = render_denial(Reason::RateLimitServiceUnavailable, "api", None, 1);
        assert_eq!(d.status, 503);
        assert_eq!(header(&d, "retry-after"), Some("1"));
        assert_eq!(header(&d, "www-authenticate"), None);
        let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body["error"], "temporarily_unavailable");
        assert_eq!(
            Reason::RateLimitServiceUnavailable.as_str(),
            "rate_limit_service_unavailable"
        );
    }

    #[test]
    fn realm_cannot_break_out_of_its_quotes() {
        let d = render_denial(Reason::MissingCredentials, "a\"b\\c\r\n", None, 0);
        assert_eq!(header(&d, "www-authenticate"), Some("Bearer realm=\"abc\""));
    }
}
