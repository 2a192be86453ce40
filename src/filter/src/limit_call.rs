//! Rate-limit service calls: starting the one a [`Step::CallRateLimit`] asks
//! for, and reading its answer in the callback that reports it.
//!
//! [`Step::CallRateLimit`]: tollgate_core::pipeline::Step::CallRateLimit

use proxy_wasm::hostcalls;
use proxy_wasm::traits::Context;
use proxy_wasm::types::BufferType;
use tollgate_core::pipeline::{RateLimitAnswer, RateLimitCall};
use tollgate_core::ratelimit::rls::{MAX_RESPONSE_BYTES, METHOD, SERVICE};

/// Starts the call through `ctx`'s `dispatch_grpc_call`, so that the SDK
/// brings the answer back to that context.
pub fn dispatch(ctx: &dyn Context, call: &RateLimitCall) -> Result<u32, String> {
    ctx.dispatch_grpc_call(
        &call.cluster,
        SERVICE,
        METHOD,
        vec![],
        Some(&call.message),
        call.timeout,
    )
    .map_err(|status| {
        format!(
            "the host refused the call to cluster `{}`: {status:?}",
            call.cluster
        )
    })
}

/// A call's answer, read while the callback that reports it runs.
pub enum Received {
    Message(Vec<u8>),
    Status(u32),
}

impl Received {
    /// Reads the answer of the call whose callback this is. An answer larger
    /// than the core reads is cut one byte past that, so the core refuses it.
    pub fn read(status: u32, size: usize) -> Received {
        if status != 0 {
            return Received::Status(status);
        }
        let wanted = size.min(MAX_RESPONSE_BYTES + 1);
        match hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, wanted) {
            Ok(bytes) => Received::Message(bytes.unwrap_or_default()),
            // No readable message: UNKNOWN, as gRPC names it.
            Err(_) => Received::Status(2),
        }
    }

    pub fn answer(&self) -> RateLimitAnswer<'_> {
        match self {
            Received::Message(bytes) => RateLimitAnswer::Message(bytes),
            Received::Status(code) => RateLimitAnswer::Status(*code),
        }
    }
}
