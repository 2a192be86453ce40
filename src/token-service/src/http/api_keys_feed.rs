//! `GET /api-keys`: the API-key set the gateway polls (`api_keys.remote_key_set`).
//!
//! The document is [`crate::storage::key_set`]'s: consumers and the digests of their keys, never
//! a key. Like the revocation feed it carries a strong `ETag` and answers `304` to a
//! matching `If-None-Match`, so polling every few seconds costs one indexed query and
//! no transfer while nothing changes. Unauthenticated, for the gateway's internal
//! cluster only: the sample Envoy configuration does not route it publicly.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::{blocking, conditional, AppState};
use crate::protocol::errors::OAuthError;
use crate::storage::key_set;

pub async fn feed(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let body = blocking(move || {
        let set = state
            .db
            .with(key_set::load)
            .map_err(|err| OAuthError::internal("loading the API-key set", err))?;
        serde_json::to_vec(&set)
            .map_err(|err| OAuthError::internal("encoding the API-key set", err))
    })
    .await;
    match body {
        Ok(body) => conditional::json(&headers, body),
        Err(err) => err.into_response(),
    }
}
