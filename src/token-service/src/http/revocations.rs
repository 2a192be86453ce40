//! `GET /revocations`: the revocation feed the gateway polls.
//!
//! `{"revoked":[{"jti":"…","exp":1700000000},…]}`: the revoked access tokens that have
//! not expired, sorted by `jti` so that the same set is always the same bytes. A
//! strong `ETag` (a digest of the body) lets a poller send `If-None-Match` and get an
//! empty `304` while nothing changed. Unauthenticated: a `jti` grants nothing, and the
//! gateway reaches this over an internal cluster (it is not routed publicly).

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use tollgate_contract::revocation_feed::RevocationFeed;

use super::{blocking, conditional, AppState};
use crate::protocol::errors::OAuthError;
use crate::server::clock;
use crate::storage::revocation;

pub async fn feed(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let revoked = blocking(move || {
        state
            .db
            .with(|conn| revocation::unexpired(conn, clock::now()))
            .map_err(|err| OAuthError::internal("listing revoked tokens", err))
    })
    .await;
    match revoked.and_then(|revoked| {
        serde_json::to_vec(&RevocationFeed { revoked })
            .map_err(|err| OAuthError::internal("encoding the revocation feed", err))
    }) {
        Ok(body) => conditional::json(&headers, body),
        Err(err) => err.into_response(),
    }
}
