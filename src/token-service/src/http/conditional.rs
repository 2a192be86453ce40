//! Polled JSON documents (the revocation feed, the API-key set): a strong `ETag` that
//! is a digest of the body, `Cache-Control: no-cache`, and an empty `304` when the
//! poller's `If-None-Match` shows it already has these bytes.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::protocol::errors::OAuthError;

/// Pollers may keep a copy but must revalidate it on every use.
const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");

/// `200 application/json` with `body`, or `304` if the request already holds it.
pub fn json(request_headers: &HeaderMap, body: Vec<u8>) -> Response {
    let tag = format!(
        "\"{}\"",
        URL_SAFE_NO_PAD.encode(&Sha256::digest(&body)[..16])
    );
    let etag = match HeaderValue::from_str(&tag) {
        Ok(etag) => etag,
        Err(err) => return OAuthError::internal("building the ETag", err).into_response(),
    };
    let cache_headers = [(header::ETAG, etag), (header::CACHE_CONTROL, NO_CACHE)];
    if if_none_match(request_headers, &tag) {
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

    #[test]
    fn answers_304_to_its_own_tag() {
        let first = json(&HeaderMap::new(), b"{}".to_vec());
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.headers()[header::CACHE_CONTROL], "no-cache");
        let tag = first.headers()[header::ETAG].clone();
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, tag.clone());
        let again = json(&headers, b"{}".to_vec());
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], tag);
        let changed = json(&headers, b"{\"a\":1}".to_vec());
        assert_eq!(changed.status(), StatusCode::OK);
    }
}
