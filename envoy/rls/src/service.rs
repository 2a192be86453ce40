//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` over Limitador.
//!
//! The request's `domain` is Limitador's namespace; its descriptors are bound, in
//! order, as the CEL list `descriptors` (each a key -> value map), so a limit reads
//! `descriptors[0].policy`. All limits of the namespace whose conditions hold are
//! checked and, if none is exceeded, all of them counted, atomically per request
//! as far as Limitador's Redis storage goes (it reads, then increments: requests in
//! flight at the same moment can overshoot a limit by at most their number).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use limitador::counter::Counter;
use limitador::errors::LimitadorError;
use limitador::limit::Context;
use limitador::AsyncRateLimiter;
use serde::Serialize;
use tonic::{Request, Response, Status};

/// How the backend answers, besides the verdict.
pub struct Options {
    /// Slept before every answer: makes a slow backend for timeout tests.
    pub delay: Duration,
    /// Also send Limitador's `X-RateLimit-Limit`/`-Remaining`/`-Reset` headers
    /// (draft-polli-ratelimit-headers-03) in `response_headers_to_add`.
    pub rate_limit_headers: bool,
}

/// What the backend has answered since it started, for tests and the admin endpoint.
#[derive(Default, Serialize)]
pub struct Stats {
    /// ShouldRateLimit calls received. Each ends in one of the three below, even
    /// when the caller gave up waiting.
    pub calls: AtomicU64,
    pub ok: AtomicU64,
    pub over_limit: AtomicU64,
    /// Calls answered with a gRPC error (bad request, counter storage down).
    pub errors: AtomicU64,
}

pub struct Backend {
    pub limiter: AsyncRateLimiter,
    pub stats: Stats,
    options: Options,
}

impl Backend {
    pub fn new(limiter: AsyncRateLimiter, options: Options) -> Backend {
        Backend {
            limiter,
            stats: Stats::default(),
            options,
        }
    }

    async fn answer(&self, request: RateLimitRequest) -> Result<RateLimitResponse, Status> {
        if request.domain.is_empty() {
            return Err(Status::invalid_argument("the rate limit domain is empty"));
        }
        if request.descriptors.is_empty() {
            return Err(Status::invalid_argument("the descriptor list is empty"));
        }
        let descriptors: Vec<HashMap<String, String>> = request
            .descriptors
            .iter()
            .map(|d| {
                d.entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect()
            })
            .collect();
        let mut context = Context::default();
        context.list_binding("descriptors".to_owned(), descriptors);
        // The field is optional in the protocol and means 1 when unset.
        let hits = u64::from(request.hits_addend.max(1));

        let mut result = self
            .limiter
            .check_rate_limited_and_update(&request.domain.clone().into(), &context, hits)
            .await
            .map_err(|err| match err {
                LimitadorError::StorageError(_) => Status::unavailable(err.to_string()),
                LimitadorError::InterpreterError(_) => Status::internal(err.to_string()),
            })?;

        let code = if result.limited {
            Code::OverLimit
        } else {
            Code::Ok
        };
        // Limitador checks the descriptors together, not one by one: each status
        // reports the most constrained counter of the request.
        let status = status(code, result.counters.iter().min_by_key(|c| remaining(c)));
        let response_headers_to_add = if self.options.rate_limit_headers {
            let mut headers: Vec<HeaderValue> = result
                .response_header()
                .into_iter()
                .map(|(key, value)| HeaderValue {
                    key,
                    value,
                    ..HeaderValue::default()
                })
                .collect();
            headers.sort_by(|a, b| a.key.cmp(&b.key));
            headers
        } else {
            Vec::new()
        };
        Ok(RateLimitResponse {
            overall_code: code.into(),
            statuses: vec![status; request.descriptors.len()],
            response_headers_to_add,
            ..RateLimitResponse::default()
        })
    }
}

fn remaining(counter: &Counter) -> u64 {
    counter.remaining().unwrap_or(counter.max_value())
}

/// A descriptor's status from the counter that decided it (none: no limit applies).
fn status(code: Code, counter: Option<&Counter>) -> DescriptorStatus {
    let Some(counter) = counter else {
        return DescriptorStatus {
            code: code.into(),
            ..DescriptorStatus::default()
        };
    };
    let limit = counter.limit();
    DescriptorStatus {
        code: code.into(),
        // The protocol states a limit as requests per calendar unit; Limitador's
        // windows are any number of seconds. Only whole units can be stated.
        current_limit: unit_of(limit.seconds()).map(|unit| RateLimit {
            name: limit.name().unwrap_or_default().to_owned(),
            requests_per_unit: u32::try_from(limit.max_value()).unwrap_or(u32::MAX),
            unit: unit.into(),
        }),
        limit_remaining: u32::try_from(remaining(counter)).unwrap_or(u32::MAX),
        duration_until_reset: counter.expires_in().map(|d| ProtoDuration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        }),
        quota: None,
    }
}

fn unit_of(seconds: u64) -> Option<Unit> {
    match seconds {
        1 => Some(Unit::Second),
        60 => Some(Unit::Minute),
        3_600 => Some(Unit::Hour),
        86_400 => Some(Unit::Day),
        604_800 => Some(Unit::Week),
        _ => None,
    }
}

/// The gRPC face of a [`Backend`] shared with the admin endpoint.
pub struct RlsService(pub Arc<Backend>);

#[tonic::async_trait]
impl RateLimitService for RlsService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        // In a task of its own: a call Envoy gives up on (its timeout) still runs to
        // the end and is counted, as it would be by any server.
        let backend = Arc::clone(&self.0);
        let request = request.into_inner();
        let call = tokio::spawn(async move {
            backend.stats.calls.fetch_add(1, Ordering::Relaxed);
            if !backend.options.delay.is_zero() {
                tokio::time::sleep(backend.options.delay).await;
            }
            // Limitador panics on a condition that fails to evaluate (say, it
            // indexes a descriptor the request lacks): answer INTERNAL for it.
            let answering = Arc::clone(&backend);
            let answer = tokio::spawn(async move { answering.answer(request).await })
                .await
                .unwrap_or_else(|err| {
                    Err(Status::internal(format!("limit evaluation failed: {err}")))
                });
            let stats = &backend.stats;
            let counted = match &answer {
                Ok(r) if r.overall_code == i32::from(Code::OverLimit) => &stats.over_limit,
                Ok(_) => &stats.ok,
                Err(_) => &stats.errors,
            };
            counted.fetch_add(1, Ordering::Relaxed);
            answer
        });
        let answer = call
            .await
            .unwrap_or_else(|err| Err(Status::internal(err.to_string())));
        answer.map(Response::new)
    }
}
