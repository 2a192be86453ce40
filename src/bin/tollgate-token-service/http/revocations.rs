//! `GET /revocations`: the revocation feed the gateway polls.
//!
//! `{"revoked":[{"jti":"…","exp":1700000000},…]}`: the revoked access tokens that have
//! not expired, sorted by `jti` so that the same set is always the same bytes. A
//! strong `ETag` (a digest of the body) lets a poller send `If-None-Match` and get an
//! empty `304` while nothing changed. Unauthenticated: a `jti` grants nothing, and the
//! gateway reaches this over an internal cluster (it is not routed publicly).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::{blocking, AppState};
use crate::clock;
use crate::errors::OAuthError;
use crate::revocation::{self, Revoked};

/// Pollers may keep a copy but must revalidate it on every use.
const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");

#[derive(Serialize)]
struct Feed {
    revoked: Vec<Revoked>,
}

pub async fn feed(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let revoked = blocking(move || {
        state
            .db
            .with(|conn| revocation::unexpired(conn, clock::now()))
            .map_err(|err| OAuthError::internal("listing revoked tokens", err))
    })
    .await;
    let body = match revoked.and_then(|revoked| {
        serde_json::to_vec(&Feed { revoked })
            .map_err(|err| OAuthError::internal("encoding the revocation feed", err))
    }) {
        Ok(body) => body,
        Err(err) => return err.into_response(),
    };
    let tag = format!(
        "\"{}\"",
        URL_SAFE_NO_PAD.encode(&Sha256::digest(&body)[..16])
    );
    let etag = match HeaderValue::from_str(&tag) {
        Ok(etag) => etag,
        Err(err) => return OAuthError::internal("building the ETag", err).into_response(),
    };
    let cache_headers = [(header::ETAG, etag), (header::CACHE_CONTROL, NO_CACHE)];
    if if_none_match(&headers, &tag) {
        return (StatusCode::NOT_MODIFIED, cache_headers).into_response();
    }
    (
        StatusCode::OK,
        cache_headers,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// RFC 9110 §13.1.2: `*`, or any listed tag equal to ours under weak comparison.
fn if_none_match(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                header::IF_NONE_MATCH,
                HeaderValue::from_str(value).expect("header"),
            );
        }
        headers
    }

    #[test]
    fn if_none_match_forms() {
        let tag = "\"abc\"";
        assert!(if_none_match(&with(&["\"abc\""]), tag));
        assert!(if_none_match(&with(&["W/\"abc\""]), tag));
        assert!(if_none_match(&with(&["\"x\", \"abc\""]), tag));
        assert!(if_none_match(&with(&["\"x\"", "\"abc\""]), tag));
        assert!(if_none_match(&with(&["*"]), tag));
        assert!(!if_none_match(&with(&["\"abcd\""]), tag));
        assert!(!if_none_match(&with(&["abc"]), tag));
        assert!(!if_none_match(&HeaderMap::new(), tag));
    }
}
