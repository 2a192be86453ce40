//! JSON error responses in the shape of RFC 6749 §5.2.
//!
//! Every failure, the token endpoint's, the admin API's and the router's (404, 405,
//! 413), answers with `{"error", "error_description"}` and `Cache-Control: no-store`, so
//! clients can parse any error the same way. A 401 names the scheme to use: `Basic` for
//! client authentication, `Bearer` (RFC 6750 §3) for the admin API's access tokens.
//! Internal failures are logged and answered with a generic `server_error` that never
//! carries internal details.

use std::borrow::Cow;
use std::fmt::Display;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    /// RFC 9449 §5: the DPoP proof is missing, malformed, or does not check out.
    InvalidDpopProof,
    /// RFC 9449 §8: the proof must carry the nonce sent in `DPoP-Nonce`.
    UseDpopNonce,
    TooManyRequests,
    /// RFC 6750 §3.1: the request carried no access token.
    Unauthorized,
    InvalidToken,
    InsufficientScope,
    NotFound,
    MethodNotAllowed,
    Conflict,
    ServerError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::UnauthorizedClient => "unauthorized_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::InvalidDpopProof => "invalid_dpop_proof",
            ErrorCode::UseDpopNonce => "use_dpop_nonce",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::InsufficientScope => "insufficient_scope",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::ServerError => "server_error",
        }
    }
}

/// The `WWW-Authenticate` challenge of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Challenge {
    None,
    /// Client authentication (RFC 6749 §2.3.1).
    Basic,
    /// An access token (RFC 6750 §3), with the error code unless none was presented,
    /// and the scope that is needed.
    Bearer {
        with_error: bool,
        scope: Option<&'static str>,
    },
}

/// An error answer. Descriptions are fixed text, never echoed request data or secrets.
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    code: ErrorCode,
    description: Cow<'static, str>,
    /// `Retry-After` seconds, for 429.
    retry_after: Option<u64>,
    challenge: Challenge,
    /// `DPoP-Nonce` to send (RFC 9449 §8).
    dpop_nonce: Option<String>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    error_description: &'a str,
}

impl OAuthError {
    fn new(status: StatusCode, code: ErrorCode, description: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            code,
            description: description.into(),
            retry_after: None,
            challenge: Challenge::None,
            dpop_nonce: None,
        }
    }

    pub fn invalid_dpop_proof(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidDpopProof,
            description,
        )
    }

    /// RFC 9449 §8.1: a 400 `use_dpop_nonce` with the nonce to put in the next proof.
    pub fn use_dpop_nonce(nonce: String) -> Self {
        let mut err = Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::UseDpopNonce,
            "the DPoP proof must carry the server nonce sent in DPoP-Nonce",
        );
        err.dpop_nonce = Some(nonce);
        err
    }

    pub fn invalid_request(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            description,
        )
    }

    /// Client authentication failed. One description for every cause, so that an
    /// unknown client and a wrong secret look the same.
    pub fn invalid_client() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidClient,
            "client authentication failed",
        )
        .with_challenge(Challenge::Basic)
    }

    /// No bearer access token was presented (RFC 6750 §3.1: no error code in the
    /// challenge).
    pub fn token_required(description: &'static str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            description,
        )
        .with_challenge(Challenge::Bearer {
            with_error: false,
            scope: None,
        })
    }

    /// The bearer access token is malformed, expired, revoked, or not this service's.
    /// One description for every cause.
    pub fn invalid_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidToken,
            "the access token is invalid, expired or revoked",
        )
        .with_challenge(Challenge::Bearer {
            with_error: true,
            scope: None,
        })
    }

    /// The access token is valid but lacks `scope` (RFC 6750 §3.1).
    pub fn insufficient_scope(scope: &'static str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            ErrorCode::InsufficientScope,
            "the access token lacks the scope this endpoint requires",
        )
        .with_challenge(Challenge::Bearer {
            with_error: true,
            scope: Some(scope),
        })
    }

    fn with_challenge(mut self, challenge: Challenge) -> Self {
        self.challenge = challenge;
        self
    }

    /// The authorization code or refresh token is invalid, expired, revoked, already
    /// used, or was issued to another client (RFC 6749 §5.2).
    pub fn invalid_grant(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidGrant,
            description,
        )
    }

    pub fn unauthorized_client(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::UnauthorizedClient,
            description,
        )
    }

    pub fn unsupported_grant_type() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::UnsupportedGrantType,
            "supported grants: authorization_code, refresh_token, client_credentials",
        )
    }

    /// Too many failed authentications from this client id or address: 429 with
    /// `Retry-After`. Not an RFC 6749 code: clients act on the status and the header.
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        let mut err = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyRequests,
            "too many failed authentication attempts; retry later",
        );
        err.retry_after = Some(retry_after_secs);
        err
    }

    pub fn invalid_scope(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidScope,
            description,
        )
    }

    pub fn payload_too_large(limit_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::InvalidRequest,
            format!("request body exceeds {limit_bytes} bytes"),
        )
    }

    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::InvalidRequest,
            "request body not received in time",
        )
    }

    pub fn not_found() -> Self {
        Self::no_such("no such endpoint")
    }

    /// A 404 for a resource that does not exist, such as an API key id.
    pub fn no_such(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, description)
    }

    /// The request conflicts with what is stored, such as an id that is taken.
    pub fn conflict(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, description)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
            "method not allowed on this endpoint",
        )
    }

    /// Logs `err` with `context` and hides both from the client.
    pub fn internal(context: &str, err: impl Display) -> Self {
        eprintln!("error: {context}: {err:#}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::ServerError,
            "internal error",
        )
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The `error_description`: never a credential, so audit events may carry it.
    pub fn description(&self) -> &str {
        &self.description
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.as_str(),
            error_description: &self.description,
        };
        let mut response = (self.status, no_store_headers(), Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(nonce) = self
            .dpop_nonce
            .and_then(|nonce| HeaderValue::try_from(nonce).ok())
        {
            response.headers_mut().insert(DPOP_NONCE, nonce);
        }
        // RFC 6749 §5.2 / RFC 9110 §15.5.2: a 401 names the scheme to use.
        let challenge = match self.challenge {
            Challenge::None => None,
            Challenge::Basic => Some(format!(r#"Basic realm="{REALM}""#)),
            Challenge::Bearer { with_error, scope } => {
                let mut value = format!(r#"Bearer realm="{REALM}""#);
                if with_error {
                    value.push_str(&format!(
                        r#", error="{}", error_description="{}""#,
                        self.code.as_str(),
                        self.description
                    ));
                }
                if let Some(scope) = scope {
                    value.push_str(&format!(r#", scope="{scope}""#));
                }
                Some(value)
            }
        };
        if let Some(value) = challenge.and_then(|value| HeaderValue::try_from(value).ok()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// RFC 9449 §8: the header that carries a server nonce.
pub const DPOP_NONCE: header::HeaderName = header::HeaderName::from_static("dpop-nonce");

/// The protection space of every challenge this service sends.
const REALM: &str = "tollgate";

/// `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 §5.1): responses that
/// carry tokens or concern credentials must not be cached.
pub fn no_store_headers() -> [(header::HeaderName, HeaderValue); 2] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::PRAGMA, HeaderValue::from_static("no-cache")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_client_carries_the_basic_challenge() {
        let response = OAuthError::invalid_client().into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            r#"Basic realm="tollgate""#
        );
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn too_many_requests_says_when_to_retry() {
        let response = OAuthError::too_many_requests(42).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "42");
        assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn bearer_challenges_follow_rfc_6750() {
        let missing = OAuthError::token_required("an access token is required").into_response();
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            missing.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="tollgate""#
        );
        let invalid = OAuthError::invalid_token().into_response();
        assert_eq!(
            invalid.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="tollgate", error="invalid_token", error_description="the access token is invalid, expired or revoked""#
        );
        let scope = OAuthError::insufficient_scope("tollgate:admin").into_response();
        assert_eq!(scope.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            scope.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="tollgate", error="insufficient_scope", error_description="the access token lacks the scope this endpoint requires", scope="tollgate:admin""#
        );
    }

    #[test]
    fn other_errors_have_no_challenge() {
        let response = OAuthError::invalid_scope("nope").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
    }
}
