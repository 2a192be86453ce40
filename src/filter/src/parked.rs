//! Deciding parked requests: a request held while a key fetch it needs was
//! underway (`Step::Park`) belongs to another HTTP context than the callback
//! that learns the fetch is over. `proxy_set_effective_context` lets this
//! callback act on that request: decide it, edit its headers, resume or answer
//! it, then hand the effective context back.
//!
//! If such a request needs a rate-limit call, the call is made from the
//! current context (the SDK brings answers to the context that made a call)
//! and kept in [`Shared::foreign_calls`] until that context's callback
//! ([`answer_foreign_call`]) finishes the request in its own context again. A
//! context can end before its calls answer (its own request finished first):
//! the root's tick then finishes the orphaned requests ([`expire_foreign_calls`])
//! as failed calls, so none waits for ever.

use super::host::{EnvoyCallouts, EnvoyClock};
use super::limit_call::{dispatch, Received};
use super::root::Shared;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::Context;
use proxy_wasm::types::MapType;
use tollgate_core::credentials::HeaderEdit;
use tollgate_core::decision::{render_denial, Reason};
use tollgate_core::host::Clock;
use tollgate_core::pipeline::{self, PendingLimits, RateLimitAnswer, Step};
use tollgate_core::worker::ParkedRequest;

/// A rate-limit call made for a parked request from another context.
pub struct ForeignCall {
    request: ParkedRequest,
    pending: PendingLimits,
    /// When the root's tick gives up on the answer.
    deadline_ms: u64,
}

/// How long after its own timeout a foreign call's answer is waited for.
const ORPHAN_GRACE_MS: u64 = 1_000;

/// Decides each woken request in its own context, then returns to `current`
/// (the context whose callback this is).
pub fn decide_woken(shared: &Shared, ctx: &dyn Context, current: u32, woken: Vec<ParkedRequest>) {
    if woken.is_empty() {
        return;
    }
    let (clock, callouts) = (EnvoyClock(ctx), EnvoyCallouts(ctx));
    for parked in woken {
        // A request whose stream has ended is gone: nothing to do.
        if hostcalls::set_effective_context(parked.context).is_err() {
            continue;
        }
        let step = pipeline::resume(
            &shared.worker,
            shared.host(&clock, &callouts),
            &parked.view(),
        );
        settle(shared, ctx, parked, step);
    }
    let _ = hostcalls::set_effective_context(current);
}

/// The answer to a call made for another context's request, if `token` is one.
pub fn answer_foreign_call(
    shared: &Shared,
    ctx: &dyn Context,
    current: u32,
    token: u32,
    status: u32,
    size: usize,
) {
    let Some(call) = shared.foreign_calls.borrow_mut().remove(&token) else {
        return;
    };
    // Read while this callback's buffer is the call's.
    let received = Received::read(status, size);
    finish_foreign(shared, ctx, call, received.answer());
    let _ = hostcalls::set_effective_context(current);
}

/// Finishes, as failed calls, the requests whose answers were lost with the
/// context that made their calls. Runs on the root's tick.
pub fn expire_foreign_calls(shared: &Shared, ctx: &dyn Context, current: u32) {
    let now_ms = EnvoyClock(ctx).now().as_millis() as u64;
    let expired: Vec<ForeignCall> = {
        let mut calls = shared.foreign_calls.borrow_mut();
        let tokens: Vec<u32> = calls
            .iter()
            .filter(|(_, c)| c.deadline_ms <= now_ms)
            .map(|(t, _)| *t)
            .collect();
        tokens.iter().filter_map(|t| calls.remove(t)).collect()
    };
    if expired.is_empty() {
        return;
    }
    for call in expired {
        let answer =
            RateLimitAnswer::NotSent("the answer was lost with the context that made the call");
        finish_foreign(shared, ctx, call, answer);
    }
    let _ = hostcalls::set_effective_context(current);
}

/// A request whose stream ended: its calls' answers have nowhere to go.
pub fn forget_foreign_calls(shared: &Shared, context: u32) {
    shared
        .foreign_calls
        .borrow_mut()
        .retain(|_, c| c.request.context != context);
}

fn finish_foreign(
    shared: &Shared,
    ctx: &dyn Context,
    call: ForeignCall,
    answer: RateLimitAnswer<'_>,
) {
    if hostcalls::set_effective_context(call.request.context).is_err() {
        return;
    }
    let (clock, callouts) = (EnvoyClock(ctx), EnvoyCallouts(ctx));
    let step = pipeline::resume_rate_limit(
        &shared.worker,
        shared.host(&clock, &callouts),
        &call.request.view(),
        call.pending,
        answer,
    );
    settle(shared, ctx, call.request, step);
}

/// Applies `step` to `request`, whose context is the effective one.
fn settle(shared: &Shared, ctx: &dyn Context, request: ParkedRequest, step: Step) {
    match step {
        Step::Continue {
            edits,
            identity,
            response_headers,
        } => {
            for edit in edits.iter().chain(identity.iter()) {
                let _ = match edit {
                    HeaderEdit::Remove(name) => {
                        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None)
                    }
                    HeaderEdit::Set(name, value) => {
                        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
                    }
                };
            }
            shared.keep_response_headers(request.context, response_headers);
            let _ = hostcalls::resume_http_request();
        }
        Step::Respond(denial) => {
            let headers: Vec<(&str, &str)> = denial
                .headers
                .iter()
                .map(|(n, v)| (*n, v.as_str()))
                .collect();
            let _ =
                hostcalls::send_http_response(denial.status, headers, Some(denial.body.as_bytes()));
        }
        Step::CallRateLimit(call) => {
            let call = *call;
            match dispatch(ctx, &call) {
                Ok(token) => {
                    log::debug!(
                        "rate-limit call {token} made for parked request {}",
                        request.context
                    );
                    let now_ms = EnvoyClock(ctx).now().as_millis() as u64;
                    let deadline_ms = now_ms + call.timeout.as_millis() as u64 + ORPHAN_GRACE_MS;
                    shared.foreign_calls.borrow_mut().insert(
                        token,
                        ForeignCall {
                            request,
                            pending: call.pending,
                            deadline_ms,
                        },
                    );
                }
                Err(why) => {
                    let (clock, callouts) = (EnvoyClock(ctx), EnvoyCallouts(ctx));
                    let step = pipeline::resume_rate_limit(
                        &shared.worker,
                        shared.host(&clock, &callouts),
                        &request.view(),
                        call.pending,
                        RateLimitAnswer::NotSent(&why),
                    );
                    settle(shared, ctx, request, step);
                }
            }
        }
        // `resume` never asks for another fetch; were it to, the request
        // must not hang.
        Step::Wait { .. } | Step::Park { .. } => {
            let denial = render_denial(
                Reason::KeysUnavailable,
                &shared.worker.settings.realm,
                None,
                1,
            );
            let headers: Vec<(&str, &str)> = denial
                .headers
                .iter()
                .map(|(n, v)| (*n, v.as_str()))
                .collect();
            let _ =
                hostcalls::send_http_response(denial.status, headers, Some(denial.body.as_bytes()));
        }
    }
}
