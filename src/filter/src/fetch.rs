//! Reading a document fetch's answer in the callback that reports it.

use proxy_wasm::traits::Context;
use tollgate_core::worker::{DocKind, FetchResponse};

pub fn read_response(ctx: &dyn Context, kind: DocKind, body_size: usize) -> FetchResponse {
    let header = |name: &str| {
        ctx.get_http_call_response_header_bytes(name)
            .and_then(|v| String::from_utf8(v).ok())
    };
    match header(":status").as_deref() {
        Some("200") if body_size > kind.max_bytes() => {
            FetchResponse::Failed(format!("document larger than {} bytes", kind.max_bytes()))
        }
        Some("200") => FetchResponse::Body(
            ctx.get_http_call_response_body(0, body_size)
                .unwrap_or_default(),
            header("etag"),
        ),
        Some("304") => FetchResponse::NotModified,
        Some(status) => FetchResponse::Failed(format!("HTTP status {status}")),
        None => FetchResponse::Failed("no response (timeout or connection failure)".to_string()),
    }
}
