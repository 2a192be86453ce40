//! Deciding parked requests: a request held while a key fetch it needs was
//! underway (`Step::Park`) belongs to another HTTP context than the callback
//! that learns the fetch is over. `proxy_set_effective_context` lets this
//! callback act on that request: decide it, edit its headers, resume or answer
//! it, then hand the effective context back.

use super::host::{EnvoyCallouts, EnvoyClock};
use super::root::Shared;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::Context;
use proxy_wasm::types::MapType;
use tollgate_core::credentials::HeaderEdit;
use tollgate_core::decision::{render_denial, Reason};
use tollgate_core::pipeline::{self, Step};
use tollgate_core::worker::ParkedRequest;

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
        match pipeline::resume(
            &shared.worker,
            shared.host(&clock, &callouts),
            &parked.view(),
        ) {
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
                shared.keep_response_headers(parked.context, response_headers);
                let _ = hostcalls::resume_http_request();
            }
            Step::Respond(denial) => {
                let headers: Vec<(&str, &str)> = denial
                    .headers
                    .iter()
                    .map(|(n, v)| (*n, v.as_str()))
                    .collect();
                let _ = hostcalls::send_http_response(
                    denial.status,
                    headers,
                    Some(denial.body.as_bytes()),
                );
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
                let _ = hostcalls::send_http_response(
                    denial.status,
                    headers,
                    Some(denial.body.as_bytes()),
                );
            }
        }
    }
    let _ = hostcalls::set_effective_context(current);
}
