//! `POST /revoke` (RFC 7009): a client revokes a refresh or access token it holds.
//!
//! Tokens name their own type (refresh tokens start with `tgr_`, access tokens are
//! this service's JWTs), so `token_type_hint` is accepted and not needed. A refresh
//! token revokes its whole family and the access tokens issued in it; an access token
//! has its `jti` put on the revocation feed until it expires. Unknown, expired and
//! foreign tokens get 200, as RFC 7009 §2.2 requires; a valid token issued to another
//! client is refused with `unauthorized_client` (§2.1) and left alone, so a client can
//! neither revoke another's tokens nor believe it revoked one that still works.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::client_auth::{self, Accepts};
use super::form;
use super::{blocking, client_certificate, client_ip, AppState, LogContext};
use crate::protocol::errors::{no_store_headers, OAuthError};
use crate::protocol::{access_token, refresh};
use crate::server::{audit, clock};
use crate::storage::revocation;

const KNOWN_PARAMETERS: &[&str] = &["token", "token_type_hint", "client_id", "client_secret"];

enum Revocation {
    /// Revoked, or nothing to revoke.
    Done,
    /// Valid, but issued to another client.
    NotYours,
}

pub async fn revoke(
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
    let client = match client_auth::authenticate(&state, credentials, ip, Accepts::AnyClient).await
    {
        Ok(client) => client,
        Err(err) => return err.into_response(),
    };
    let client_id = client.client_id;
    let outcome = {
        let state = Arc::clone(&state);
        let client_id = client_id.clone();
        blocking(move || {
            state
                .db
                .transaction(|tx| revoke_token(&state, tx, &client_id, &token))
                .map_err(|err| OAuthError::internal("revoking a token", err))
        })
        .await
    };
    let mut response = match outcome {
        Ok(Revocation::Done) => (StatusCode::OK, no_store_headers()).into_response(),
        Ok(Revocation::NotYours) => {
            audit::Event::new("token.revocation_refused")
                .field("client_id", &client_id)
                .field("client_address", ip)
                .field("reason", "issued_to_another_client")
                .emit();
            OAuthError::unauthorized_client("the token was issued to another client")
                .into_response()
        }
        Err(err) => err.into_response(),
    };
    response.extensions_mut().insert(LogContext {
        client_id,
        token_id: None,
    });
    response
}

/// The event for a revoked token of `kind`: names it by its fingerprint.
fn revoked(kind: &'static str, client_id: &str, token: &str) -> audit::Event {
    audit::Event::new("token.revoked")
        .field("client_id", client_id)
        .field("token_kind", kind)
        .field("token_fingerprint", audit::fingerprint(token))
}

fn revoke_token(
    state: &AppState,
    conn: &rusqlite::Connection,
    client_id: &str,
    token: &str,
) -> anyhow::Result<Revocation> {
    let now = clock::now();
    if token.starts_with(refresh::PREFIX) {
        return Ok(match refresh::find(conn, token)? {
            None => Revocation::Done,
            Some(presented) if presented.family.client_id != client_id => Revocation::NotYours,
            Some(presented) => {
                refresh::revoke_family(conn, presented.family.family_id, now)?;
                revoked("refresh_token", client_id, token)
                    .field("grant_id", presented.family.family_id)
                    .emit();
                Revocation::Done
            }
        });
    }
    let keys = state.keys.current(conn, now)?;
    Ok(
        match access_token::verify(&keys, token, &state.config.issuer, now) {
            None => Revocation::Done,
            Some(verified) if verified.client_id != client_id => Revocation::NotYours,
            Some(verified) => {
                revocation::record(conn, &verified.jti, verified.expires_at)?;
                revoked("access_token", client_id, token)
                    .field("jti", &verified.jti)
                    .emit();
                Revocation::Done
            }
        },
    )
}
