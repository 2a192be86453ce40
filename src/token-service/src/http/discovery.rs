//! Public, unauthenticated documents: the JWK Set, the authorization-server metadata
//! (RFC 8414) and the health check. This is not an OpenID Provider (no ID tokens, no
//! userinfo), so there is no `openid-configuration`. They advertise only what this
//! server really supports; the gateway's revocation feed is not a standard endpoint
//! and is not listed.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{blocking, AppState};
use crate::protocol::authentication;
use crate::protocol::dpop;
use crate::protocol::errors::{no_store_headers, OAuthError};
use crate::protocol::mtls::{SELF_SIGNED_TLS_CLIENT_AUTH, TLS_CLIENT_AUTH};
use crate::server::clock;
use crate::storage::clients;

/// Short enough that verifiers see a rotation's new key within a minute.
const PUBLIC_CACHE: HeaderValue = HeaderValue::from_static("public, max-age=60");

pub async fn jwks(State(state): State<Arc<AppState>>) -> Result<Response, OAuthError> {
    let document = blocking(move || {
        let now = clock::now();
        let keys = state
            .db
            .with(|conn| state.keys.current(conn, now))
            .map_err(|err| OAuthError::internal("loading signing keys", err))?;
        Ok(keys.jwks(now))
    })
    .await?;
    Ok(public_json(document))
}

pub async fn metadata(State(state): State<Arc<AppState>>) -> Result<Response, OAuthError> {
    let scopes = {
        let state = Arc::clone(&state);
        blocking(move || {
            state
                .db
                .with(clients::public_scopes)
                .map_err(|err| OAuthError::internal("listing scopes", err))
        })
        .await?
    };
    let config = &state.config;
    let mut document = json!({
        "issuer": config.issuer,
        "authorization_endpoint": config.endpoint("/authorize"),
        "token_endpoint": config.endpoint("/token"),
        "jwks_uri": config.endpoint("/.well-known/jwks.json"),
        "revocation_endpoint": config.endpoint("/revoke"),
        "introspection_endpoint": config.endpoint("/introspect"),
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none", TLS_CLIENT_AUTH, SELF_SIGNED_TLS_CLIENT_AUTH],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none", TLS_CLIENT_AUTH, SELF_SIGNED_TLS_CLIENT_AUTH],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", TLS_CLIENT_AUTH, SELF_SIGNED_TLS_CLIENT_AUTH],
        "authorization_response_iss_parameter_supported": true,
        // RFC 9470 §6: the levels `acr_values` may ask for, weakest first.
        "acr_values_supported": authentication::ACR_VALUES,
        "dpop_signing_alg_values_supported": dpop::SIGNING_ALGS,
        "tls_client_certificate_bound_access_tokens": true,
    });
    // RFC 8705 §5: where clients reach these endpoints with a client certificate.
    if config.mtls_endpoint_base.is_some() {
        let alias = |path: &str| config.mtls_endpoint(path);
        document["mtls_endpoint_aliases"] = json!({
            "token_endpoint": alias("/token"),
            "revocation_endpoint": alias("/revoke"),
            "introspection_endpoint": alias("/introspect"),
        });
    }
    if !scopes.is_empty() {
        document["scopes_supported"] = scopes.iter().collect::<Vec<_>>().into();
    }
    Ok(public_json(document))
}

/// 200 when the database answers and holds an active signing key, i.e. when the
/// server can issue tokens; 503 otherwise.
pub async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let ready = blocking(move || {
        state
            .db
            .with(|conn| state.keys.current(conn, clock::now()))
            .map_err(|err| OAuthError::internal("health check", err))
    })
    .await
    .is_ok();
    let (status, word) = if ready {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    (status, no_store_headers(), Json(json!({ "status": word }))).into_response()
}

fn public_json(document: Value) -> Response {
    ([(header::CACHE_CONTROL, PUBLIC_CACHE)], Json(document)).into_response()
}
