//! Stage: remote limits. Once the local policies have admitted a request, each
//! of its remote policies is one `ShouldRateLimit` call to the policy's
//! rate-limit service, in rule order, one at a time: the pipeline returns
//! [`Step::CallRateLimit`], the filter makes the call and hands the answer to
//! [`resume_rate_limit`]. As with local policies, each policy that admits the
//! request has counted it, and the first that refuses answers (later ones are
//! not asked). One descriptor per call: `[("policy", <name>), (<key>, <value>)]`.

use super::{admit, refuse, Admitted, Step};
use crate::config::RateLimits;
use crate::credentials::RequestView;
use crate::decision::{render_denial, Reason};
use crate::host::{Host, RateLimitFailureRecord};
use crate::ratelimit::rls::{self, CallFailure, CallOutcome, Code};
use crate::ratelimit::{LimitCheck, LimitState, Policy, RlsBackend};
use crate::worker::Worker;
use std::time::Duration;

/// A call the filter makes for the pipeline: gRPC
/// `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` ([`rls::SERVICE`],
/// [`rls::METHOD`]) with `message` on `cluster`, within `timeout`.
#[derive(Debug)]
pub struct RateLimitCall {
    pub cluster: String,
    pub message: Vec<u8>,
    pub timeout: Duration,
    /// Give it back to [`resume_rate_limit`] with the answer.
    pub pending: PendingLimits,
}

/// A request waiting for a rate-limit service: what the earlier stages
/// decided, the call underway and the remote checks still to make.
#[derive(Debug)]
pub struct PendingLimits {
    admitted: Admitted,
    check: LimitCheck,
    /// The checks after this one, last first.
    rest: Vec<LimitCheck>,
    started_ms: u64,
    /// The request's `received_us`, for the decision's latency.
    received_us: u64,
}

/// What became of a [`RateLimitCall`].
#[derive(Debug, Clone, Copy)]
pub enum RateLimitAnswer<'a> {
    /// gRPC status 0 and this message.
    Message(&'a [u8]),
    /// A non-zero gRPC status (the call failed, timed out, or the service
    /// answered an error).
    Status(u32),
    /// The host would not start the call, or lost it.
    NotSent(&'a str),
}

/// gRPC `DEADLINE_EXCEEDED`.
const DEADLINE_EXCEEDED: u32 = 4;

/// The first remote check, or the request's admission if there is none.
pub(super) fn start(
    worker: &Worker,
    host: Host<'_>,
    req: &RequestView<'_>,
    admitted: Admitted,
    checks: Vec<LimitCheck>,
    now_ms: u64,
) -> Step {
    let limits = &worker.settings.rate_limits;
    let mut rest: Vec<LimitCheck> = checks
        .into_iter()
        .filter(|c| limits.policy(c.policy).is_some_and(|p| p.rls().is_some()))
        .collect();
    rest.reverse();
    next(worker, host, req, admitted, rest, now_ms)
}

fn next(
    worker: &Worker,
    host: Host<'_>,
    req: &RequestView<'_>,
    admitted: Admitted,
    mut rest: Vec<LimitCheck>,
    now_ms: u64,
) -> Step {
    let limits = &worker.settings.rate_limits;
    while let Some(check) = rest.pop() {
        let Some((policy, rls)) = remote(limits, &check) else {
            continue;
        };
        let key = policy.descriptor_key(check.kind);
        let message = rls::encode_request(
            &rls.domain,
            &[("policy", &policy.name), (&key, &check.value)],
        );
        return Step::CallRateLimit(Box::new(RateLimitCall {
            cluster: rls.cluster.clone(),
            message,
            timeout: Duration::from_millis(rls.timeout_ms),
            pending: PendingLimits {
                admitted,
                check,
                rest,
                started_ms: now_ms,
                received_us: req.received_us,
            },
        }));
    }
    admit(worker, host, req, admitted)
}

fn remote<'a>(limits: &'a RateLimits, check: &LimitCheck) -> Option<(&'a Policy, &'a RlsBackend)> {
    let policy = limits.policy(check.policy)?;
    Some((policy, policy.rls()?))
}

/// A [`Step::CallRateLimit`] is over: the service's verdict (or the policy's
/// failure mode) decides, then the next remote policy is asked.
pub fn resume_rate_limit(
    worker: &Worker,
    host: Host<'_>,
    req: &RequestView<'_>,
    pending: PendingLimits,
    answer: RateLimitAnswer<'_>,
) -> Step {
    let now_ms = host.clock.now().as_millis() as u64;
    let limits = &worker.settings.rate_limits;
    let PendingLimits {
        mut admitted,
        check,
        rest,
        started_ms,
        received_us,
    } = pending;
    let req = &RequestView {
        received_us,
        ..req.clone()
    };
    let Some((policy, rls)) = remote(limits, &check) else {
        return next(worker, host, req, admitted, rest, now_ms);
    };
    let timed_out =
        now_ms.saturating_sub(started_ms) + timer_slack_ms(rls.timeout_ms) >= rls.timeout_ms;
    let response = match answer {
        RateLimitAnswer::Message(bytes) => {
            rls::decode_response(bytes).map_err(CallFailure::BadResponse)
        }
        RateLimitAnswer::Status(DEADLINE_EXCEEDED) => Err(CallFailure::Timeout),
        // Envoy reports a call it gave up on as UNAVAILABLE or INTERNAL.
        RateLimitAnswer::Status(_) if timed_out => Err(CallFailure::Timeout),
        RateLimitAnswer::Status(code) => Err(CallFailure::Status(code)),
        RateLimitAnswer::NotSent(why) => Err(CallFailure::NotSent(why.to_string())),
    };
    let outcome = match &response {
        Ok(r) if r.overall_code == Code::OverLimit => CallOutcome::OverLimit,
        Ok(_) => CallOutcome::Ok,
        Err(failure) => CallOutcome::Failed(failure.clone()),
    };
    host.metrics
        .rate_limit_call(check.policy, &outcome, rls.failure_mode_deny);
    let refused = match &outcome {
        CallOutcome::Ok => false,
        CallOutcome::OverLimit => true,
        CallOutcome::Failed(_) => rls.failure_mode_deny,
    };
    host.metrics.rate_limit(check.policy, refused);
    match (response, outcome) {
        (Ok(r), CallOutcome::OverLimit) => {
            // Over limit: the state is always known (`remaining` 0).
            let state = r.limit_state(rls.declared).unwrap_or(LimitState {
                quota: None,
                remaining: 0,
                reset_secs: 1,
                retry_after_secs: 1,
            });
            let denial = state.limited_response(&policy.name);
            refuse(worker, host, req, denial, check.policy, admitted, now_ms)
        }
        (Ok(r), _) => {
            if limits.response_headers {
                if let Some(state) = r.limit_state(rls.declared) {
                    admitted.tightest.offer(&policy.name, &state);
                }
            }
            next(worker, host, req, admitted, rest, now_ms)
        }
        (Err(failure), _) => {
            host.audit.rate_limit_failure(&RateLimitFailureRecord {
                policy: &policy.name,
                failure: &failure,
                failure_mode_deny: rls.failure_mode_deny,
                method: req.method,
                client_ip: req.client_ip,
                caller: admitted.caller.as_deref(),
            });
            if rls.failure_mode_deny {
                let denial = render_denial(
                    Reason::RateLimitServiceUnavailable,
                    &worker.settings.realm,
                    None,
                    1,
                );
                refuse(worker, host, req, denial, check.policy, admitted, now_ms)
            } else {
                next(worker, host, req, admitted, rest, now_ms)
            }
        }
    }
}

/// How early, by the filter's clock, Envoy's timer may seem to fire: it runs on the
/// event loop's monotonic clock, the filter reads the system clock, and either can
/// be a few milliseconds off the other on a busy host. A failure this close to the
/// deadline is the timeout, not a refused connection (those fail at once).
fn timer_slack_ms(timeout_ms: u64) -> u64 {
    (timeout_ms / 10).clamp(1, 10)
}

#[cfg(test)]
mod tests {
    //! Remote policies against the fake host: the call the filter is asked to
    //! make, and what each answer, failure and time-out leads to.

    use super::*;
    use crate::config::parse;
    use crate::credentials::HeaderEdit;
    use crate::crypto::PureVerifier;
    use crate::decision::Denial;
    use crate::host::fakes::{Audited, AuditedFailure, FakeHost};
    use crate::jwk::tests::es256_jwk;
    use crate::pipeline::{on_request, resume};
    use crate::ratelimit::rls::tests::response;
    use crate::ratelimit::PolicyId;
    use jwt_simple::prelude::*;
    use serde_json::{json, Value};

    const NOW: u64 = 1_800_000_000;
    const OK: u64 = 1;
    const OVER_LIMIT: u64 = 2;
    const MINUTE: u64 = 2;

    struct Fixture {
        worker: Worker,
        key: ES256KeyPair,
        host: FakeHost,
    }

    /// Policies `local` (client_id, 3 a minute) and `fleet` (client_id, remote),
    /// both on /data; `edit` changes the configuration.
    fn fixture(edit: impl FnOnce(&mut Value)) -> Fixture {
        let key = ES256KeyPair::generate().with_key_id("k");
        let jwks = json!({"keys": [es256_jwk(&key, "k")]}).to_string();
        let mut config = json!({
            "providers": {"idp": {"issuer": "https://idp.test", "local_jwks": {"inline_string": jwks}}},
            "rate_limits": {"policies": {
                "local": {"limit": 3, "window": "60s", "key": "client_id"},
                "fleet": {"key": "client_id", "backend": {"rls": {
                    "cluster": "rate_limit_service", "domain": "tollgate", "timeout": "0.05s"}}}
            }},
            "rules": [
                {"match": {"prefix": "/data"}, "requires": {}, "rate_limits": ["local", "fleet"]},
                {"match": {"prefix": "/public"}, "requires": {"allow_anonymous": true},
                 "rate_limits": ["fleet"]}
            ]
        });
        edit(&mut config);
        Fixture {
            worker: Worker::new(
                parse(config.to_string().as_bytes()).unwrap(),
                Box::new(PureVerifier),
            ),
            key,
            host: FakeHost::at_secs(NOW),
        }
    }

    impl Fixture {
        fn headers(&self, client: &str) -> Vec<(String, Vec<u8>)> {
            let mut claims = Claims::with_custom_claims(
                json!({"client_id": client}),
                jwt_simple::prelude::Duration::from_secs(300),
            )
            .with_issuer("https://idp.test")
            .with_subject(client);
            claims.issued_at = Some(UnixTimeStamp::from_secs(NOW));
            claims.expires_at = Some(UnixTimeStamp::from_secs(NOW + 300));
            let token = self.key.sign(claims).unwrap();
            vec![(
                "authorization".to_string(),
                format!("Bearer {token}").into_bytes(),
            )]
        }

        fn send(&self, path: &str, headers: &[(String, Vec<u8>)]) -> Step {
            on_request(&self.worker, self.host.host(), &view(path, headers))
        }

        fn answer(
            &self,
            path: &str,
            headers: &[(String, Vec<u8>)],
            call: RateLimitCall,
            answer: RateLimitAnswer<'_>,
        ) -> Step {
            let req = view(path, headers);
            resume_rate_limit(&self.worker, self.host.host(), &req, call.pending, answer)
        }

        fn policy(&self, name: &str) -> PolicyId {
            let p = &self.worker.settings.rate_limits.policies;
            PolicyId(p.iter().position(|p| p.name == name).unwrap())
        }
    }

    fn view<'a>(path: &'a str, headers: &'a [(String, Vec<u8>)]) -> RequestView<'a> {
        RequestView {
            method: "GET",
            path,
            headers,
            client_ip: Some("192.0.2.7"),
            received_us: 0,
            client_cert: None,
        }
    }

    fn call(step: Step) -> RateLimitCall {
        match step {
            Step::CallRateLimit(call) => *call,
            other => panic!("expected a rate-limit call, got {other:?}"),
        }
    }

    fn denial(step: Step) -> Denial {
        match step {
            Step::Respond(denial) => denial,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    fn header<'a>(d: &'a Denial, name: &str) -> Option<&'a str> {
        d.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn is_continue(step: &Step) -> bool {
        matches!(step, Step::Continue { .. })
    }

    #[test]
    fn a_remote_policy_asks_its_service_with_one_descriptor() {
        let f = fixture(|_| {});
        let h = f.headers("app-1");
        let c = call(f.send("/data", &h));
        assert_eq!(c.cluster, "rate_limit_service");
        assert_eq!(c.timeout, std::time::Duration::from_millis(50));
        assert_eq!(
            c.message,
            rls::encode_request("tollgate", &[("policy", "fleet"), ("client_id", "app-1")])
        );
        assert!(
            f.host.metrics.decisions.borrow().is_empty(),
            "nothing decided while the service is asked"
        );
        let ok = response(OK, Some((1, 10, MINUTE, 6, (30, 0))), &[]);
        let step = f.answer("/data", &h, c, RateLimitAnswer::Message(&ok));
        let Step::Continue {
            identity,
            response_headers,
            ..
        } = &step
        else {
            panic!("{step:?}")
        };
        assert!(identity.contains(&HeaderEdit::Set(
            "x-tollgate-client-id".into(),
            "app-1".into()
        )));
        assert!(response_headers.is_empty(), "response_headers is off");
        assert_eq!(*f.host.metrics.decisions.borrow(), [Reason::Authenticated]);
        assert_eq!(
            *f.host.metrics.rate_limit_calls.borrow(),
            [(f.policy("fleet"), CallOutcome::Ok, false)]
        );
    }

    #[test]
    fn over_limit_is_the_same_429_as_a_local_limit() {
        let f = fixture(|_| {});
        let h = f.headers("app-1");
        let c = call(f.send("/data", &h));
        let over = response(OVER_LIMIT, Some((2, 10, MINUTE, 0, (41, 200_000_000))), &[]);
        let d = denial(f.answer("/data", &h, c, RateLimitAnswer::Message(&over)));
        assert_eq!((d.status, d.reason), (429, Reason::RateLimited));
        assert_eq!(header(&d, "retry-after"), Some("42"));
        assert_eq!(header(&d, "ratelimit-policy"), Some("\"fleet\";q=10;w=60"));
        assert_eq!(header(&d, "ratelimit"), Some("\"fleet\";r=0;t=42"));
        assert_eq!(header(&d, "cache-control"), Some("no-store"));
        let body: Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body["error"], "rate_limited");
        // The decision's event names the policy that refused.
        let event = f.host.audit.events().pop().unwrap();
        assert_eq!(
            (&event["reason"], &event["policy"], &event["subject"]),
            (&json!("rate_limited"), &json!("fleet"), &json!("app-1"))
        );
        assert_eq!(
            *f.host.metrics.limits.borrow(),
            [(f.policy("local"), false), (f.policy("fleet"), true)]
        );
        // The local policy's 429 has the same fields.
        let f = fixture(|c| c["rules"][0]["rate_limits"] = json!(["local"]));
        let h = f.headers("app-1");
        for _ in 0..3 {
            assert!(is_continue(&f.send("/data", &h)));
        }
        let local = denial(f.send("/data", &h));
        let names = |d: &Denial| d.headers.iter().map(|(n, _)| *n).collect::<Vec<_>>();
        assert_eq!(names(&local), names(&d));
        assert_eq!(local.body, d.body);
        // The decision and the call are both on record.
        assert_eq!(
            f.host.audit.0.borrow().last().map(|a| a.reason),
            Some(Reason::RateLimited)
        );
    }

    #[test]
    fn a_request_the_local_limit_refuses_makes_no_remote_call() {
        let f = fixture(|_| {});
        let h = f.headers("app-1");
        let ok = response(OK, Some((1, 100, MINUTE, 99, (30, 0))), &[]);
        for _ in 0..3 {
            let c = call(f.send("/data", &h));
            assert!(is_continue(&f.answer(
                "/data",
                &h,
                c,
                RateLimitAnswer::Message(&ok)
            )));
        }
        let d = denial(f.send("/data", &h));
        assert_eq!(header(&d, "ratelimit-policy"), Some("\"local\";q=3;w=60"));
        assert_eq!(f.host.metrics.rate_limit_calls.borrow().len(), 3);
    }

    #[test]
    fn failure_mode_open_lets_the_request_through_and_says_why() {
        let f = fixture(|_| {});
        let h = f.headers("app-1");
        let c = call(f.send("/data", &h));
        // gRPC UNAVAILABLE: the service is down.
        assert!(is_continue(&f.answer(
            "/data",
            &h,
            c,
            RateLimitAnswer::Status(14)
        )));
        assert_eq!(*f.host.metrics.decisions.borrow(), [Reason::Authenticated]);
        let failure = CallFailure::Status(14);
        assert_eq!(
            *f.host.metrics.rate_limit_calls.borrow(),
            [(
                f.policy("fleet"),
                CallOutcome::Failed(failure.clone()),
                false
            )]
        );
        assert_eq!(
            *f.host.audit.2.borrow(),
            [AuditedFailure {
                policy: "fleet".into(),
                failure,
                failure_mode_deny: false,
                subject: Some("app-1".into()),
            }]
        );
    }

    #[test]
    fn failure_mode_deny_answers_503_with_its_own_reason() {
        let f = fixture(|c| {
            c["rate_limits"]["policies"]["fleet"]["backend"]["rls"]["failure_mode_deny"] =
                json!(true)
        });
        for (i, answer) in [
            RateLimitAnswer::Status(14),
            RateLimitAnswer::Status(13),
            RateLimitAnswer::NotSent("cluster not found"),
            RateLimitAnswer::Message(b"\x0a\xff"),
        ]
        .into_iter()
        .enumerate()
        {
            let h = f.headers(&format!("app-{i}"));
            let c = call(f.send("/data", &h));
            let d = denial(f.answer("/data", &h, c, answer));
            assert_eq!(
                (d.status, d.reason),
                (503, Reason::RateLimitServiceUnavailable)
            );
            assert_eq!(header(&d, "retry-after"), Some("1"));
            let body: Value = serde_json::from_str(&d.body).unwrap();
            assert_eq!(body["error"], "temporarily_unavailable");
        }
        let failures: Vec<CallFailure> = f
            .host
            .audit
            .2
            .borrow()
            .iter()
            .map(|a| a.failure.clone())
            .collect();
        assert_eq!(
            failures,
            [
                CallFailure::Status(14),
                CallFailure::Status(13),
                CallFailure::NotSent("cluster not found".into()),
                CallFailure::BadResponse(rls::DecodeError::Truncated),
            ]
        );
        assert!(f.host.audit.2.borrow().iter().all(|a| a.failure_mode_deny));
        assert_eq!(
            f.host.audit.0.borrow().last(),
            Some(&Audited {
                reason: Reason::RateLimitServiceUnavailable,
                status: Some(503),
                subject: Some("app-3".into())
            })
        );
    }

    #[test]
    fn a_call_that_outlives_its_timeout_is_a_timeout() {
        let f = fixture(|_| {});
        let h = f.headers("app-1");
        let c = call(f.send("/data", &h));
        assert!(is_continue(&f.answer(
            "/data",
            &h,
            c,
            RateLimitAnswer::Status(4)
        )));
        // Envoy may report a call it gave up on as UNAVAILABLE: the clock tells,
        // allowing for its timer firing a little early by the filter's clock (0.05 s
        // timeout: 5 ms).
        for (subject, after_ms) in [("app-2", 50), ("app-3", 46), ("app-4", 44)] {
            let h = f.headers(subject);
            let c = call(f.send("/data", &h));
            f.host
                .clock
                .as_ref()
                .unwrap()
                .advance(std::time::Duration::from_millis(after_ms));
            assert!(is_continue(&f.answer(
                "/data",
                &h,
                c,
                RateLimitAnswer::Status(14)
            )));
        }
        let outcomes: Vec<CallOutcome> = f
            .host
            .metrics
            .rate_limit_calls
            .borrow()
            .iter()
            .map(|(_, o, _)| o.clone())
            .collect();
        assert_eq!(
            outcomes,
            [
                CallOutcome::Failed(CallFailure::Timeout),
                CallOutcome::Failed(CallFailure::Timeout),
                CallOutcome::Failed(CallFailure::Timeout),
                CallOutcome::Failed(CallFailure::Status(14))
            ]
        );
    }

    #[test]
    fn several_remote_policies_are_asked_in_turn_until_one_refuses() {
        let f = fixture(|c| {
            c["rate_limits"]["policies"]["tenant-daily"] = json!({"key": {"claim": "client_id"},
                "limit": 1000, "window": "86400s",
                "backend": {"rls": {"cluster": "other_rls", "domain": "quotas"}}});
            c["rules"][0]["rate_limits"] = json!(["fleet", "tenant-daily"]);
        });
        let h = f.headers("app-1");
        let ok = response(OK, Some((1, 10, MINUTE, 9, (30, 0))), &[]);
        let first = call(f.send("/data", &h));
        let second = call(f.answer("/data", &h, first, RateLimitAnswer::Message(&ok)));
        assert_eq!(second.cluster, "other_rls");
        assert_eq!(
            second.timeout,
            std::time::Duration::from_millis(20),
            "Envoy's default"
        );
        assert_eq!(
            second.message,
            rls::encode_request(
                "quotas",
                &[("policy", "tenant-daily"), ("client_id", "app-1")]
            )
        );
        // Limitador without statuses: the declared limit fills the headers.
        let bare = response(OVER_LIMIT, None, &[]);
        let d = denial(f.answer("/data", &h, second, RateLimitAnswer::Message(&bare)));
        assert_eq!(
            header(&d, "ratelimit-policy"),
            Some("\"tenant-daily\";q=1000;w=86400")
        );
        assert_eq!(header(&d, "retry-after"), Some("86400"));
        // The first refusal stops: the second policy is not asked.
        let over = response(OVER_LIMIT, Some((2, 10, MINUTE, 0, (5, 0))), &[]);
        let first = call(f.send("/data", &h));
        let d = denial(f.answer("/data", &h, first, RateLimitAnswer::Message(&over)));
        assert_eq!(header(&d, "ratelimit"), Some("\"fleet\";r=0;t=5"));
        assert_eq!(f.host.metrics.rate_limit_calls.borrow().len(), 3);
    }

    #[test]
    fn response_headers_name_the_tightest_policy_local_or_remote() {
        let f = fixture(|c| c["rate_limits"]["response_headers"] = json!(true));
        let h = f.headers("app-1");
        let answer = |remaining: u32| {
            let c = call(f.send("/data", &h));
            let ok = response(OK, Some((1, 10, MINUTE, remaining, (30, 0))), &[]);
            match f.answer("/data", &h, c, RateLimitAnswer::Message(&ok)) {
                Step::Continue {
                    response_headers, ..
                } => response_headers,
                other => panic!("{other:?}"),
            }
        };
        // local: 2 of 3 left; fleet: 1 left.
        let headers = answer(1);
        assert!(headers.contains(&("ratelimit", "\"fleet\";r=1;t=30".to_string())));
        // local: 1 left; fleet: 8 left.
        let headers = answer(8);
        assert!(
            headers
                .iter()
                .any(|(n, v)| *n == "ratelimit" && v.starts_with("\"local\";r=1;")),
            "{headers:?}"
        );
    }

    #[test]
    fn anonymous_requests_are_counted_per_client_ip() {
        let f = fixture(|_| {});
        let c = call(f.send("/public/x", &[]));
        assert_eq!(
            c.message,
            rls::encode_request(
                "tollgate",
                &[("policy", "fleet"), ("client_ip", "192.0.2.7")]
            )
        );
    }

    #[test]
    fn a_key_refetch_and_a_rate_limit_call_chain() {
        // `resume` (after a key fetch) reaches the remote limits like `on_request`.
        let f = fixture(|_| {});
        let h = f.headers("app-1");
        let step = resume(&f.worker, f.host.host(), &view("/data", &h));
        assert!(matches!(step, Step::CallRateLimit(_)), "{step:?}");
    }
}
