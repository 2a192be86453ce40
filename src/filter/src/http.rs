//! The HTTP context: one per request. Reads the request, runs the core's
//! pipeline, and maps each [`Step`] to host calls.

use super::fetch::read_response;
use super::host::{request_headers, ConnectionCertificate, EnvoyCallouts, EnvoyClock};
use super::limit_call::{dispatch, Received};
use super::parked::{answer_foreign_call, decide_woken, forget_foreign_calls};
use super::root::Shared;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;
use tollgate_core::client_cert::CertificateSnapshot;
use tollgate_core::client_ip;
use tollgate_core::credentials::{HeaderEdit, RequestView};
use tollgate_core::pipeline::{self, PendingLimits, RateLimitAnswer, Step};
use tollgate_core::worker::{DocId, ParkedRequest, Worker};

pub struct TollgateHttp {
    context_id: u32,
    shared: Rc<Shared>,
    /// Set while this request waits for a document fetch it started.
    waiting_for: Option<(u32, DocId)>,
    /// Set while this request waits for a rate-limit call: its token, and
    /// what the pipeline needs back.
    limit_call: Option<(u32, PendingLimits)>,
    /// When the pipeline first saw the request, once it waits.
    received_us: u64,
    headers: Vec<(String, Vec<u8>)>,
    client_ip: Option<String>,
    client_cert: ConnectionCertificate,
    /// `RateLimit` headers for the response, when configured.
    response_headers: Vec<(&'static str, String)>,
}

impl TollgateHttp {
    pub fn new(context_id: u32, shared: Rc<Shared>) -> TollgateHttp {
        TollgateHttp {
            context_id,
            shared,
            waiting_for: None,
            limit_call: None,
            received_us: 0,
            headers: Vec::new(),
            client_ip: None,
            client_cert: ConnectionCertificate::default(),
            response_headers: Vec::new(),
        }
    }

    /// The client's address, as `client_ip` in the configuration defines it
    /// (the peer, or the trusted hop's `X-Forwarded-For` entry): one property read.
    fn resolve_client_ip(&mut self) {
        let peer = self
            .get_property(vec!["source", "address"])
            .and_then(|b| String::from_utf8(b).ok());
        let xff = self
            .headers
            .iter()
            .find(|(n, _)| n == "x-forwarded-for")
            .map(|(_, v)| v.as_slice());
        let source = self.shared.worker.settings.client_ip;
        self.client_ip = client_ip::resolve(source, peer.as_deref(), xff);
    }

    /// Before a request is held for a fetch: the key set it will be decided on
    /// may bind keys to addresses, so it needs its own, looked up while its
    /// context is the current one.
    fn resolve_client_ip_before_holding(&mut self) {
        if self.client_ip.is_none() && self.shared.worker.fetches_api_keys() {
            self.resolve_client_ip();
        }
    }

    /// Whether the request is held for a callout of its own.
    fn waiting(&self) -> bool {
        self.waiting_for.is_some() || self.limit_call.is_some()
    }

    /// Runs `stage` (the pipeline's entry or one of its resumptions) on this request.
    fn run(
        &self,
        stage: impl FnOnce(&Worker, tollgate_core::host::Host<'_>, &RequestView<'_>) -> Step,
    ) -> Step {
        let header = |name: &str| {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
                .unwrap_or("")
        };
        let req = RequestView {
            method: header(":method"),
            path: header(":path"),
            headers: &self.headers,
            client_ip: self.client_ip.as_deref(),
            client_cert: Some(&self.client_cert),
            received_us: self.received_us,
        };
        let (clock, callouts) = (EnvoyClock(self), EnvoyCallouts(self));
        stage(
            &self.shared.worker,
            self.shared.host(&clock, &callouts),
            &req,
        )
    }

    /// Maps a step to host calls. Returns the action for the current callback.
    fn apply(&mut self, step: Step, resumed: bool) -> Action {
        match step {
            Step::Continue {
                edits,
                identity,
                response_headers,
            } => {
                for edit in edits.iter().chain(identity.iter()) {
                    match edit {
                        HeaderEdit::Remove(name) => self.set_http_request_header(name, None),
                        HeaderEdit::Set(name, value) => {
                            self.set_http_request_header(name, Some(value))
                        }
                    }
                }
                self.response_headers = response_headers;
                if resumed {
                    self.resume_http_request();
                }
                Action::Continue
            }
            Step::Respond(denial) => {
                let headers: Vec<(&str, &str)> = denial
                    .headers
                    .iter()
                    .map(|(n, v)| (*n, v.as_str()))
                    .collect();
                self.send_http_response(denial.status, headers, Some(denial.body.as_bytes()));
                Action::Pause
            }
            Step::Wait {
                token,
                doc,
                received_us,
            } => {
                self.resolve_client_ip_before_holding();
                self.waiting_for = Some((token, doc));
                self.received_us = received_us;
                Action::Pause
            }
            Step::CallRateLimit(call) => {
                let call = *call;
                match dispatch(self, &call) {
                    Ok(token) => {
                        self.limit_call = Some((token, call.pending));
                        Action::Pause
                    }
                    Err(why) => {
                        let step = self.run(|worker, host, req| {
                            let answer = RateLimitAnswer::NotSent(&why);
                            pipeline::resume_rate_limit(worker, host, req, call.pending, answer)
                        });
                        self.apply(step, resumed)
                    }
                }
            }
            Step::Park { doc, received_us } => {
                self.resolve_client_ip_before_holding();
                self.shared.worker.park(ParkedRequest {
                    context: self.context_id,
                    doc,
                    received_us,
                    headers: std::mem::take(&mut self.headers),
                    client_ip: self.client_ip.take(),
                    client_cert: CertificateSnapshot::of(&self.client_cert),
                });
                Action::Pause
            }
        }
    }
}

impl Context for TollgateHttp {
    fn on_done(&mut self) -> bool {
        // A parked request whose client went away.
        self.shared.worker.forget_parked(self.context_id);
        forget_foreign_calls(&self.shared, self.context_id);
        self.shared.take_response_headers(self.context_id);
        true
    }

    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some((expected, doc)) = self.waiting_for.take() else {
            return;
        };
        if token != expected {
            return;
        }
        let response = read_response(self, doc.kind(), body_size);
        let (clock, callouts) = (EnvoyClock(self), EnvoyCallouts(self));
        let woken =
            self.shared
                .worker
                .complete_fetch(self.shared.host(&clock, &callouts), doc, &response);
        decide_woken(&self.shared, self, self.context_id, woken);
        let step = self.run(pipeline::resume);
        self.apply(step, true);
        if !self.waiting() {
            self.headers = Vec::new();
        }
    }

    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        let pending = match self.limit_call.take() {
            Some((expected, pending)) if expected == token => pending,
            other => {
                // A call this context made for a parked request.
                self.limit_call = other;
                answer_foreign_call(&self.shared, self, self.context_id, token, status, size);
                return;
            }
        };
        let received = Received::read(status, size);
        let step = self.run(|worker, host, req| {
            pipeline::resume_rate_limit(worker, host, req, pending, received.answer())
        });
        self.apply(step, true);
        if !self.waiting() {
            self.headers = Vec::new();
        }
    }
}

impl HttpContext for TollgateHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.headers = request_headers();
        if self.shared.worker.needs_client_ip() {
            self.resolve_client_ip();
        }
        let step = self.run(pipeline::on_request);
        let action = self.apply(step, false);
        if !self.waiting() {
            // Keep nothing from the request longer than needed.
            self.headers = Vec::new();
        }
        action
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut headers = std::mem::take(&mut self.response_headers);
        headers.extend(self.shared.take_response_headers(self.context_id));
        for (name, value) in headers {
            self.set_http_response_header(name, Some(&value));
        }
        Action::Continue
    }
}
