//! `POST /introspect` (RFC 7662): whether a token is active, for resource servers.
//!
//! Callers authenticate as confidential clients (public clients cannot: introspection
//! would hand anyone a token oracle). Any confidential client may introspect any
//! token. An expired, revoked, rotated, unknown or malformed token is
//! `{"active": false}` and nothing else (§2.2). A sender-constrained access token's
//! answer has its `cnf` (`jkt`, `x5t#S256`), and `token_type` stays `access_token`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::client_auth::{self, Accepts};
use super::form;
use super::{active_access_token, blocking, client_certificate, client_ip, AppState, LogContext};
use crate::protocol::errors::{no_store_headers, OAuthError};
use crate::protocol::refresh;
use crate::server::clock;

const KNOWN_PARAMETERS: &[&str] = &["token", "token_type_hint", "client_id", "client_secret"];

pub async fn introspect(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let ip = client_ip(&state, peer, request.headers());
    let headers = request.headers().clone();
    let parsed = async {
        let form = form::read(request, KNOWN_PARAMETERS).await?;
        let token = form
            .get("token")
            .ok_or_else(|| OAuthError::invalid_request("token is missing"))?
            .to_owned();
        let certificate = client_certificate(&state, peer, &headers)?;
        let credentials = client_auth::extract(&headers, &form)?.with_certificate(certificate);
        Ok::<_, OAuthError>((token, credentials))
    };
    let (token, credentials) = match parsed.await {
        Ok(parsed) => parsed,
        Err(err) => return err.into_response(),
    };
    let client =
        match client_auth::authenticate(&state, credentials, ip, Accepts::ConfidentialOnly).await {
            Ok(client) => client,
            Err(err) => return err.into_response(),
        };
    let answer = {
        let state = Arc::clone(&state);
        blocking(move || {
            state
                .db
                .with(|conn| describe(&state, conn, &token))
                .map_err(|err| OAuthError::internal("introspecting a token", err))
        })
        .await
    };
    let mut response = match answer {
        Ok(body) => (StatusCode::OK, no_store_headers(), Json(body)).into_response(),
        Err(err) => err.into_response(),
    };
    response.extensions_mut().insert(LogContext {
        client_id: client.client_id,
        token_id: None,
    });
    response
}

/// The introspection response for `token` at this moment.
fn describe(state: &AppState, conn: &rusqlite::Connection, token: &str) -> anyhow::Result<Value> {
    let now = clock::now();
    let inactive = json!({ "active": false });
    if token.starts_with(refresh::PREFIX) {
        let Some(presented) = refresh::find(conn, token)? else {
            return Ok(inactive);
        };
        if !presented.is_current() || !presented.family.is_live(now) {
            return Ok(inactive);
        }
        let family = presented.family;
        let mut body = json!({
            "active": true,
            "token_type": "refresh_token",
            "client_id": family.client_id,
            "sub": family.user_id,
            "iss": state.config.issuer,
            "iat": presented.issued_at,
            "exp": family.idle_expires_at,
        });
        if !family.scopes.is_empty() {
            body["scope"] = family.scopes.to_string().into();
        }
        return Ok(body);
    }
    let Some(verified) = active_access_token(state, conn, token, now)? else {
        return Ok(inactive);
    };
    let mut body = json!({
        "active": true,
        "token_type": "access_token",
        "client_id": verified.client_id,
        "sub": verified.subject,
        "aud": verified.audience,
        "iss": verified.issuer,
        "iat": verified.issued_at,
        "exp": verified.expires_at,
        "jti": verified.jti,
    });
    if let Some(scope) = verified.scope {
        body["scope"] = scope.into();
    }
    // RFC 8705 §3.2, RFC 9449 §6.2: the key or certificate the token is bound to.
    if let Some(confirmation) = verified.confirmation {
        body["cnf"] = serde_json::to_value(confirmation)?;
    }
    Ok(body)
}
