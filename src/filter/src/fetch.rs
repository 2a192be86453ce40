//! Fetching remote documents (JWKS, revocation lists) through Envoy clusters
//! with `dispatch_http_call`, on behalf of `crate::remote::RemoteDoc`.

use super::host::EnvoySharedData;
use proxy_wasm::traits::Context;
use std::time::Duration;
use tollgate_core::jwk::KeySet;
use tollgate_core::remote::{FetchResult, FetchTrigger, RemoteDoc};
use tollgate_core::revocation::RevocationList;

/// The kinds of remote document, for stats and size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    Keys,
    Revocations,
    ApiKeys,
}

impl DocKind {
    pub const ALL: [DocKind; 3] = [DocKind::Keys, DocKind::Revocations, DocKind::ApiKeys];

    pub fn name(self) -> &'static str {
        match self {
            DocKind::Keys => "jwks",
            DocKind::Revocations => "revocations",
            DocKind::ApiKeys => "api_keys",
        }
    }

    /// Largest document accepted.
    fn max_bytes(self) -> usize {
        match self {
            DocKind::Keys => 512 * 1024,
            DocKind::Revocations | DocKind::ApiKeys => 16 * 1024 * 1024,
        }
    }
}

/// One remote document of this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocId {
    /// A provider's JWKS.
    Keys(usize),
    /// A provider's revocation list.
    Revocations(usize),
    /// The API-key set.
    ApiKeys,
}

impl DocId {
    pub fn kind(self) -> DocKind {
        match self {
            DocId::Keys(_) => DocKind::Keys,
            DocId::Revocations(_) => DocKind::Revocations,
            DocId::ApiKeys => DocKind::ApiKeys,
        }
    }
}

/// The remote documents of one provider on this worker.
#[derive(Default)]
pub struct ProviderDocs {
    pub keys: Option<RemoteDoc<KeySet>>,
    pub revocations: Option<RemoteDoc<RevocationList>>,
}

/// A callout's answer, owned.
pub enum Response {
    Body(Vec<u8>, Option<String>),
    NotModified,
    Failed(String),
}

impl Response {
    pub fn as_result(&self) -> FetchResult<'_> {
        match self {
            Response::Body(body, etag) => FetchResult::Body {
                body,
                etag: etag.as_deref(),
            },
            Response::NotModified => FetchResult::NotModified,
            Response::Failed(e) => FetchResult::Failed(e.clone()),
        }
    }
}

/// Claims the fetch and dispatches it. `Ok(None)`: another worker has it, or
/// it is not due. `Err`: the dispatch itself failed (already recorded).
pub fn start<T>(
    ctx: &dyn Context,
    doc: &mut RemoteDoc<T>,
    trigger: FetchTrigger,
    now_ms: u64,
) -> Result<Option<u32>, String> {
    if !doc.try_claim_fetch(&EnvoySharedData, now_ms, trigger) {
        return Ok(None);
    }
    let e = doc.endpoint.clone();
    let mut headers = vec![
        (":method", "GET"),
        (":path", e.path.as_str()),
        (":authority", e.authority.as_str()),
        ("accept", "application/json"),
    ];
    let etag = doc.etag().map(str::to_string);
    if let Some(etag) = &etag {
        headers.push(("if-none-match", etag.as_str()));
    }
    match ctx.dispatch_http_call(
        &e.cluster,
        headers,
        None,
        vec![],
        Duration::from_millis(e.timeout_ms),
    ) {
        Ok(token) => Ok(Some(token)),
        Err(status) => {
            let err = format!("cannot call cluster `{}`: {status:?}", e.cluster);
            doc.complete_fetch(&EnvoySharedData, now_ms, FetchResult::Failed(err.clone()));
            Err(err)
        }
    }
}

/// Reads the answer to a callout, in the callback that reports it.
pub fn read_response(ctx: &dyn Context, kind: DocKind, body_size: usize) -> Response {
    let header = |name: &str| {
        ctx.get_http_call_response_header_bytes(name)
            .and_then(|v| String::from_utf8(v).ok())
    };
    match header(":status").as_deref() {
        Some("200") if body_size > kind.max_bytes() => {
            Response::Failed(format!("document larger than {} bytes", kind.max_bytes()))
        }
        Some("200") => Response::Body(
            ctx.get_http_call_response_body(0, body_size)
                .unwrap_or_default(),
            header("etag"),
        ),
        Some("304") => Response::NotModified,
        Some(status) => Response::Failed(format!("HTTP status {status}")),
        None => Response::Failed("no response (timeout or connection failure)".to_string()),
    }
}
