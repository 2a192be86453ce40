//! `POST /token`: the `client_credentials` grant (RFC 6749 §4.4).
//!
//! Cheap checks come first (content type, body size and encoding, grant type, scope
//! syntax) so that malformed requests never cost an Argon2 verification. Client
//! authentication then always costs exactly one verification, known client or not.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest as _, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::client_auth::{self, ClientCredentials};
use super::form::{Form, FormError};
use super::{blocking, AppState, LogContext};
use crate::clients::{self, Client};
use crate::errors::{no_store_headers, OAuthError};
use crate::scope::ScopeSet;
use crate::token::{self, Grant, IssuedToken};
use crate::{clock, secrets};

/// Token requests are a few hundred bytes; anything near this is not one.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// A client that announces a body and does not send it is cut off after this.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
const CLIENT_CREDENTIALS: &str = "client_credentials";
/// Parameters a duplicate error may name; other names are not echoed back.
const KNOWN_PARAMETERS: &[&str] = &["grant_type", "scope", "client_id", "client_secret"];

#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

/// Answers a token request with a token or an RFC 6749 §5.2 error, and tells the access
/// log which client it was for once that client has authenticated.
pub async fn token(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (credentials, requested_scopes) = match parse(request).await {
        Ok(parsed) => parsed,
        Err(err) => return err.into_response(),
    };
    let client = match authenticate(&state, credentials).await {
        Ok(client) => client,
        Err(err) => return err.into_response(),
    };
    let (mut response, token_id) = match issue(&state, &client, requested_scopes).await {
        Ok((issued, scopes)) => {
            let body = TokenResponse {
                access_token: &issued.jwt,
                token_type: "Bearer",
                expires_in: state.config.access_token_ttl,
                scope: (!scopes.is_empty()).then(|| scopes.to_string()),
            };
            let response = (StatusCode::OK, no_store_headers(), Json(body)).into_response();
            (response, Some(issued.jti))
        }
        Err(err) => (err.into_response(), None),
    };
    response.extensions_mut().insert(LogContext {
        client_id: client.client_id,
        token_id,
    });
    response
}

/// Validates the request up to, not including, the secret check.
async fn parse(request: Request) -> Result<(ClientCredentials, Option<ScopeSet>), OAuthError> {
    let headers = request.headers().clone();
    require_form_content_type(&headers)?;
    let form = read_form(request).await?;
    match form.get("grant_type") {
        None => return Err(OAuthError::invalid_request("grant_type is missing")),
        Some(CLIENT_CREDENTIALS) => {}
        Some(_) => return Err(OAuthError::unsupported_grant_type()),
    }
    let requested_scopes = form
        .get("scope")
        .map(str::parse::<ScopeSet>)
        .transpose()
        .map_err(|err| OAuthError::invalid_scope(err.to_string()))?;
    let credentials = client_auth::extract(&headers, &form)?;
    Ok((credentials, requested_scopes))
}

fn require_form_content_type(headers: &HeaderMap) -> Result<(), OAuthError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| {
            essence
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if is_form {
        Ok(())
    } else {
        Err(OAuthError::invalid_request(
            "the request body must be application/x-www-form-urlencoded",
        ))
    }
}

async fn read_form(request: Request) -> Result<Form, OAuthError> {
    let body = tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(request, &()))
        .await
        .map_err(|_| OAuthError::request_timeout())?
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                OAuthError::payload_too_large(MAX_BODY_BYTES)
            } else {
                OAuthError::invalid_request("the request body could not be read")
            }
        })?;
    Form::parse(&body).map_err(|err| match err {
        FormError::Malformed => {
            OAuthError::invalid_request("the request body is not valid form-urlencoded UTF-8")
        }
        FormError::Duplicate(name) if KNOWN_PARAMETERS.contains(&name.as_str()) => {
            OAuthError::invalid_request(format!("parameter {name} is included more than once"))
        }
        FormError::Duplicate(_) => {
            OAuthError::invalid_request("a parameter is included more than once")
        }
    })
}

/// The registered client, if the secret matches. Unknown clients are checked against a
/// dummy hash: same work, same answer as a wrong secret.
async fn authenticate(
    state: &Arc<AppState>,
    credentials: ClientCredentials,
) -> Result<Client, OAuthError> {
    let _permit = state
        .secret_checks
        .acquire()
        .await
        .map_err(|err| OAuthError::internal("secret check limiter closed", err))?;
    let state = Arc::clone(state);
    blocking(move || {
        let client = state
            .db
            .with(|conn| clients::find(conn, &credentials.client_id))
            .map_err(|err| OAuthError::internal("looking up client", err))?;
        let hash = client
            .as_ref()
            .map_or(state.dummy_secret_hash.as_str(), |client| {
                client.secret_hash.as_str()
            });
        let valid = secrets::verify(&credentials.client_secret, hash);
        client
            .filter(|_| valid)
            .ok_or_else(OAuthError::invalid_client)
    })
    .await
}

/// Signs a token for the granted scopes: those requested, or all the client's if it
/// requested none (RFC 6749 §3.3 allows this default).
async fn issue(
    state: &Arc<AppState>,
    client: &Client,
    requested_scopes: Option<ScopeSet>,
) -> Result<(IssuedToken, ScopeSet), OAuthError> {
    let scopes = match requested_scopes {
        None => client.scopes.clone(),
        Some(requested) if requested.is_subset(&client.scopes) => requested,
        Some(_) => {
            return Err(OAuthError::invalid_scope(
                "the requested scope exceeds the scopes allowed for this client",
            ))
        }
    };
    let state = Arc::clone(state);
    let client_id = client.client_id.clone();
    blocking(move || {
        let now = clock::now();
        let keys = state
            .db
            .with(|conn| state.keys.current(conn, now))
            .map_err(|err| OAuthError::internal("loading signing keys", err))?;
        let grant = Grant {
            issuer: &state.config.issuer,
            audience: &state.config.audience,
            subject: &client_id,
            client_id: &client_id,
            scopes: &scopes,
            lifetime_secs: state.config.access_token_ttl,
        };
        let issued = token::issue(keys.signing_key(), &grant, now)
            .map_err(|err| OAuthError::internal("signing access token", err))?;
        Ok((issued, scopes))
    })
    .await
}
